#!/usr/bin/env python3
"""CPU speed of the FID feature extractor: `ddpm fid` against pytorch-fid, same machine, same
threads, same images, same network (pytorch-fid's InceptionV3 with scripts/fid_goldens.py's
seeded random weights; speed does not depend on the values).

    cargo build --release
    ~/.cache/ddpm/pyref/bin/python scripts/fid_speed.py [--images 100] [--batch 50] [--threads N]

Rows (images/s, higher is better; each engine runs in its own process, one after another):

  ddpm fid         `ddpm --threads N fid FOLDER --save-stats … --batch-size B --json`: its own
                   count of the feature pass (decoded images → resize → Inception → pool3; the
                   images are decoded and checked before it, outside the count)
  pytorch-fid      `fid_score.get_activations(files, model, B, 2048, "cpu", num_workers=0)`
                   after one warm-up batch: PIL decoding, ToTensor, the model (resize inside)
  torch forward    the model alone on a ready (B, 3, 32, 32) batch, after warm-up: an upper
                   bound for pytorch-fid's pipeline

torch runs with torch.set_num_threads(N) (and N interop threads); ddpm with --threads N. The
images are 32×32 RGB PNGs (CIFAR-sized), resized to 299×299 by both. Timings on a shared
machine vary from run to run: --repeats R runs each engine R times, alternating (ddpm, then
pytorch-fid, R times over), and reports every run and the median ratio of the pairs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_images(d, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        px = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        f = d / f"{i:05d}.png"
        Image.fromarray(px, "RGB").save(f)
        files.append(str(f))
    return files


def run_ddpm(ddpm, folder, weights, batch, threads, tmp):
    cmd = [str(ddpm), "--threads", str(threads), "fid", str(folder), "--inception", str(weights),
           "--save-stats", str(tmp / "speed_stats.npz"), "--batch-size", str(batch), "--json",
           "--quiet"]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    return report["samples"]["images_per_s"]


TORCH_CHILD = """
import json, sys, time, torch
sys.path.insert(0, SCRIPTS)
torch.set_num_threads(THREADS); torch.set_num_interop_threads(THREADS)
import fid_goldens
from pytorch_fid import fid_score
model = fid_goldens.fid_model(fid_goldens.random_state_dict())
files = FILES
fid_score.get_activations(files[:BATCH], model, BATCH, 2048, "cpu", 0)  # warm-up
x = torch.rand(BATCH, 3, 32, 32)
with torch.no_grad():
    model(x)
print("ready", flush=True)
for line in sys.stdin:  # one measurement per line the parent sends
    t = time.perf_counter()
    fid_score.get_activations(files, model, BATCH, 2048, "cpu", 0)
    pfid = len(files) / (time.perf_counter() - t)
    with torch.no_grad():
        n, t = 0, time.perf_counter()
        while n < len(files):
            model(x)
            n += BATCH
        fwd = n / (time.perf_counter() - t)
    print(json.dumps({"pytorch_fid": pfid, "forward": fwd}), flush=True)
"""


def start_torch(files, batch, threads):
    """pytorch-fid in a child process (thread settings start clean), set up and warmed up,
    measuring once per line it is sent, so its runs interleave with ddpm's."""
    code = (TORCH_CHILD.replace("SCRIPTS", repr(str(Path(__file__).resolve().parent)))
            .replace("THREADS", str(threads)).replace("FILES", repr(files))
            .replace("BATCH", str(batch)))
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "ready", "the torch child did not start"
    return child


def measure_torch(child):
    child.stdin.write("go\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ddpm", type=Path, default=ROOT / "target" / "release" / "ddpm")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()

    import torch
    import fid_goldens
    import convert_fid_inception as conv

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        files = make_images(folder, a.images)
        weights = tmp / "random_inception.safetensors"
        conv.save(conv.convert_state_dict(fid_goldens.random_state_dict()), weights, "fid_speed")
        child = start_torch(files, a.batch, a.threads)
        ddpm_rates, torch_rates = [], {"pytorch_fid": [], "forward": []}
        for _ in range(a.repeats):  # interleaved, so both see the same machine load
            ddpm_rates.append(run_ddpm(a.ddpm, folder, weights, a.batch, a.threads, tmp))
            r = measure_torch(child)
            for k in torch_rates:
                torch_rates[k].append(r[k])
        child.stdin.close()
        child.wait()
    fmt = lambda rates: ", ".join(f"{r:.2f}" for r in rates)
    print(f"\n{a.images} images of 32×32 → 299×299, batch {a.batch}, {a.threads} threads, "
          f"torch {torch.__version__}, CPU: {cpu_name()}\n")
    print("| engine | images/s |")
    print("|---|---|")
    print(f"| ddpm fid | {fmt(ddpm_rates)} |")
    print(f"| pytorch-fid (get_activations) | {fmt(torch_rates['pytorch_fid'])} |")
    print(f"| torch forward alone | {fmt(torch_rates['forward'])} |")
    ratios = sorted(d / t for d, t in zip(ddpm_rates, torch_rates["pytorch_fid"]))
    print(f"\nddpm / pytorch-fid, run by run: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {ratios[len(ratios) // 2]:.2f})")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
