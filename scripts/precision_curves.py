#!/usr/bin/env python3
"""The issue's precision check, on a GPU: train the `tiny` preset for 2,000 steps in fp32, bf16
and fp16 (with loss scaling) on the same data and seed, and compare the loss curves.

    python3 scripts/precision_curves.py --ddpm bundle/bin/ddpm --out $OUT/precision

Each run is `ddpm train --model tiny --data synthetic --steps 2000 --seed 0 --precision P
--device cuda`, writing its own run directory. The runs draw the same t, ε, dropout masks and
batches (they come from counter-based Philox streams, independent of the precision), so their
curves differ only by rounding. The comparison reads each run's log.csv (one row per 10 steps,
the mean loss of the window), smooths it over 5 rows (50 steps) and reports, per reduced
precision against fp32:

  band    the largest |loss_p − loss_fp32| / loss_fp32 over the windows after the first 10 % of
          the run (the first steps move fastest and are the least comparable);
  final   the same for the mean of the last 10 % of the windows;
  nan     whether any logged loss or gradient norm was not finite;
  skipped the steps the run skipped (fp16: loss-scale overflows at the start are expected).

It exits 1 when a run failed, a curve has a non-finite value, or the band exceeds --band
(default 0.10: bf16 keeps 8 significant bits, and after hundreds of steps the weights of two runs
differ by more than rounding; 10 % of a window mean is the stated band). The table goes to
stdout and to OUT/precision.md.

Only the Python standard library is needed; nothing here runs in CI (it needs a GPU).
"""
import argparse
import csv
import math
import os
import shutil
import subprocess
import sys


def read_log(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "step": int(r["step"]),
                    "loss": float(r["loss"]),
                    "grad_norm": float(r.get("grad_norm") or "nan"),
                    "skipped": int(float(r.get("skipped") or 0)),
                }
            )
    return rows


def smooth(rows, k):
    """Each row's loss replaced by the mean over it and the k − 1 rows before it."""
    out = []
    for i, r in enumerate(rows):
        window = rows[max(0, i - k + 1): i + 1]
        out.append(dict(r, loss=sum(w["loss"] for w in window) / len(window)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ddpm", default="bundle/bin/ddpm" if os.path.exists("bundle/bin/ddpm") else "target/release/ddpm")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "precision"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--smooth", type=int, default=5, help="rows (of 10 steps) in the moving average")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--band", type=float, default=0.10)
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    runs, failed = {}, []
    for p in a.precisions.split(","):
        run_dir = os.path.join(a.out, f"tiny-{p}")
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time
        cmd = [
            a.ddpm, "train", "--model", "tiny", "--data", "synthetic",
            "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--seed", "0",
            "--sample-every", "0", "--checkpoint-every", "0",
            "--precision", p, "--device", a.device, "--out", run_dir, "--quiet",
        ]
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
            print(f"{p}: FAILED: {msg}", flush=True)
            failed.append(p)
            continue
        runs[p] = smooth(read_log(os.path.join(run_dir, "log.csv")), a.smooth)

    lines = [
        f"# tiny preset, {a.steps} steps, batch {a.batch_size}, seed 0: loss curves against fp32",
        "",
        "| precision | band (max rel. diff of window losses) | final (last 10 %) | non-finite | skipped steps |",
        "|---|---|---|---|---|",
    ]
    bad = bool(failed)
    base = runs.get("fp32")
    for p, rows in runs.items():
        nonfinite = any(not math.isfinite(r["loss"]) or not math.isfinite(r["grad_norm"]) for r in rows)
        skipped = max((r["skipped"] for r in rows), default=0)
        band = final = float("nan")
        if base is not None and p != "fp32":
            ref = {r["step"]: r["loss"] for r in base}
            pairs = [(r["loss"], ref[r["step"]]) for r in rows if r["step"] in ref]
            start = len(pairs) // 10
            tail = pairs[start:]
            if tail:
                band = max(abs(x - y) / abs(y) for x, y in tail)
                last = pairs[-max(1, len(pairs) // 10):]
                mx = sum(x for x, _ in last) / len(last)
                my = sum(y for _, y in last) / len(last)
                final = abs(mx - my) / abs(my)
            if not (band <= a.band):
                bad = True
        bad |= nonfinite
        fmt = lambda v: "—" if math.isnan(v) else f"{100 * v:.2f} %"
        lines.append(f"| {p} | {fmt(band)} | {fmt(final)} | {'YES' if nonfinite else 'no'} | {skipped} |")
    for p in failed:
        lines.append(f"| {p} | run failed | | | |")
    lines.append("")
    lines.append(f"Stated band: {100 * a.band:.0f} % of the fp32 window-mean loss after the first 10 % of the run.")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "precision.md"), "w") as f:
        f.write(text + "\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
