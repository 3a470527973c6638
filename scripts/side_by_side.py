#!/usr/bin/env python3
"""ddpm against PyTorch on the same device, in one run: Markdown tables of images/s, ratios, FLOP
rates and peak memory.

Each row of the table is one workload (a preset, an optional image size and channel count, a
batch size, a task and a precision), run by up to three engines, one after another, each in its
own child process of this one, on the same device (a GPU, or the CPU with the same thread count):

  ddpm      `ddpm bench train|sample ... --json` (the binary from --ddpm; default bundle/bin/ddpm
            when it exists, else target/release/ddpm). Its stdout is the result, one JSON object
            on one line (its other lines go to stderr); the last stdout line starting with `{`
            is read, so older builds that printed their report lines first still parse.
  eager     scripts/pytorch_reference.py --mode eager: the same UNet in plain PyTorch (autocast
            for bf16/fp16; fp32 is plain fp32, TF32 off).
  compile   scripts/pytorch_reference.py --mode compile: the same, through torch.compile (on the
            CPU, inductor's C++ backend: it needs a C++ compiler).

Both engines time the same work (see pytorch_reference.py's docstring): a training step is
forward, backward, grad-norm clip, AdamW and an fp32 EMA on a random batch; sampling is one batch
through DDIM with 50 steps. Throughput is images/s after warm-up; ratios are ddpm's images/s
over PyTorch's (above 1: ddpm is faster). The model FLOPs are counted by pytorch_reference.py
from the layer shapes (3 forwards per training step, S forwards per DDIM-S image), the same count
for every engine; the achieved FLOP rate is shown as MFU over the device's dense peak on a GPU,
and as GFLOP/s on the CPU (with MFU too when --peak-gflops gives the CPU's fp32 FMA peak).

GPU rows (the default set with --device cuda):

  cifar10-train-bf16   ddpm-cifar10, batch 128, training step, bf16
  small-train-bf16     cifar10-small (ch 64), batch 64, training step, bf16
  cifar10-sample-bf16  ddpm-cifar10, batch 256, DDIM-50 sampling, bf16
  cifar10-train-fp32   ddpm-cifar10, batch 128, training step, fp32 (no TF32): a reference

and `tiny` (tiny-train, tiny-sample) for smoke runs.

CPU rows (the default set with --device cpu, group `cpu`; all fp32):

  tiny-train-cpu        tiny (16×16 RGB), batch 32, training step
  tiny-mnist-train-cpu  tiny at 28×28 with 1 channel (MNIST's size), batch 32, training step
  small-train-cpu       cifar10-small, batch 8, training step
  cifar10-train-cpu     ddpm-cifar10, batch 8, training step
  tiny-sample-cpu       tiny, batch 32, DDIM-50 sampling
  small-sample-cpu      cifar10-small, batch 16, DDIM-50 sampling

and `cpu-quick` (the three tiny ones). The step counts are sized for the whole `cpu` group to take
about 10–15 minutes on two idle cores, much of it torch.compile compiling; `--rows cpu-quick
--quick` takes a few minutes. ddpm's
--image-size/--channels (for tiny-mnist-train-cpu) are passed only to the rows that need them.

On the CPU (and wherever --threads is given) every engine gets the same N threads (--threads,
default os.cpu_count()): the children run with RAYON_NUM_THREADS (ddpm's rayon pool),
OMP_NUM_THREADS and MKL_NUM_THREADS set to N, and pytorch_reference.py calls
torch.set_num_threads(N) and torch.set_num_interop_threads(1). The table's header names the CPU
(/proc/cpuinfo's model name) with the instruction-set extensions that matter here (avx2, fma,
avx512f, avx512_bf16, avx512_fp16, AMX) and N; results.json has them too. Run it on an otherwise
idle machine: the table gives the load average before the first run (results.json, before each
run), and says the timings are skewed when it is above 1.

What is timed on the CPU: a training row runs W untimed steps, then T timed steps, W and T per row
(the `cpu` rows' own counts, shorter with --quick; --train-warmup and --train-steps override
them), torch.compile 2 more warm-up steps than the others. A sampling row runs, in both engines,
one warm-up DDIM pass of K steps (--sample-warmup, default 5) over the batch, then times one
full DDIM-50 pass: `ddpm bench sample --steps 50 --warmup K` and `pytorch_reference.py
--sample-steps 50 --steps 1 --warmup 1 --warmup-sample-steps K` are the same definition. (On a
GPU the sampling rows keep their own defaults: ddpm's one-step warm-up, PyTorch's full warm-up
loop and --sample-loops timed loops, unless --sample-warmup is given.)

Memory: a second table gives each engine's peak resident set (MiB): ddpm's `peak_rss_bytes`
(VmHWM, in its JSON; "—" from a binary without it) and PyTorch's (ru_maxrss of its process), the
latter followed by its resident set just before the first step, after importing torch and
building the model (most of PyTorch's peak on a small model is torch itself). torch.compile's
compile workers are separate processes and not counted.

A run that fails (an error, an out-of-memory, torch.compile failing, a timeout) becomes an error
cell with the first line of its error; the table is always written. The tables and every raw
result go to --out (default $OUT when set, else side_by_side/) as table.md and results.json,
rewritten after each run so a cut-off run still leaves what it measured.

    python3 scripts/side_by_side.py                              # the default rows on cuda
    python3 scripts/side_by_side.py --rows cifar10-train-bf16 --quick
    python3 scripts/side_by_side.py --device cpu                 # the CPU table, every core
    python3 scripts/side_by_side.py --device cpu --rows cpu-quick --quick
    python3 scripts/side_by_side.py --device cpu --threads 2 --peak-gflops 250 \
        --python ~/.cache/ddpm/pyref/bin/python --engines eager,compile --rows tiny-train-cpu

Needs only the Python standard library, plus torch in the Python that runs the PyTorch engines
(--python). The FLOP count is made here when this Python has torch, else taken from those runs.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# pytorch_reference.py is imported for its FLOP count: leave no __pycache__ in scripts/.
sys.dont_write_bytecode = True

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "pytorch_reference.py"

# A row: preset, batch, task and precision; optionally image_size and channels (overriding the
# preset's), and steps / quick_steps: its own (warm-up, timed) training steps, normal and with
# --quick. The CPU rows' counts keep the `cpu` group at about 10–15 minutes on two cores (a
# ddpm-cifar10 ×8 step takes 1–2 s there in PyTorch).
ROWS = {
    "cifar10-train-bf16": dict(preset="ddpm-cifar10", batch=128, task="train", precision="bf16"),
    "small-train-bf16": dict(preset="cifar10-small", batch=64, task="train", precision="bf16"),
    "cifar10-sample-bf16": dict(preset="ddpm-cifar10", batch=256, task="sample", precision="bf16"),
    "cifar10-train-fp32": dict(preset="ddpm-cifar10", batch=128, task="train", precision="fp32"),
    "tiny-train": dict(preset="tiny", batch=32, task="train", precision="bf16"),
    "tiny-sample": dict(preset="tiny", batch=32, task="sample", precision="bf16"),
    "tiny-train-cpu": dict(preset="tiny", batch=32, task="train", precision="fp32",
                           steps=(3, 20), quick_steps=(2, 5)),
    "tiny-mnist-train-cpu": dict(preset="tiny", image_size=28, channels=1, batch=32, task="train",
                                 precision="fp32", steps=(3, 10), quick_steps=(2, 4)),
    "small-train-cpu": dict(preset="cifar10-small", batch=8, task="train", precision="fp32",
                            steps=(2, 8), quick_steps=(1, 3)),
    "cifar10-train-cpu": dict(preset="ddpm-cifar10", batch=8, task="train", precision="fp32",
                              steps=(2, 5), quick_steps=(1, 2)),
    "tiny-sample-cpu": dict(preset="tiny", batch=32, task="sample", precision="fp32"),
    "small-sample-cpu": dict(preset="cifar10-small", batch=16, task="sample", precision="fp32"),
}
DEFAULT_ROWS = ["cifar10-train-bf16", "small-train-bf16", "cifar10-sample-bf16", "cifar10-train-fp32"]
CPU_ROWS = ["tiny-train-cpu", "tiny-mnist-train-cpu", "small-train-cpu", "cifar10-train-cpu", "tiny-sample-cpu",
            "small-sample-cpu"]
ROW_GROUPS = {
    "default": DEFAULT_ROWS,
    "tiny": ["tiny-train", "tiny-sample"],
    "cpu": CPU_ROWS,
    "cpu-quick": ["tiny-train-cpu", "tiny-mnist-train-cpu", "tiny-sample-cpu"],
    "all": list(ROWS),
}
ENGINES = ["ddpm", "eager", "compile"]
# The thread-count variables every child gets on the CPU: rayon (ddpm), OpenMP and MKL (torch).
THREAD_VARS = ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
# /proc/cpuinfo flags worth naming for fp32 (and bf16) convolutions and GEMMs.
ISA_FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16"]
DEFAULT_SAMPLE_WARMUP_CPU = 5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def default_python():
    """This Python when it has torch, else the reference venv of scripts/setup-pyref.sh
    ($DDPM_PYREF, default ~/.cache/ddpm/pyref) when that exists, else this Python anyway."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    venv = Path(os.environ.get("DDPM_PYREF") or Path.home() / ".cache" / "ddpm" / "pyref")
    py = venv / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def default_ddpm():
    bundled = ROOT / "bundle" / "bin" / "ddpm"
    return str(bundled if bundled.exists() else ROOT / "target" / "release" / "ddpm")


def error_line(stdout, stderr, rc):
    """The one line that says why a child failed: an `error` field of a JSON result, else the
    exception line of a Python traceback, else the first line that reads like an error (ddpm's
    `Error: …`), else the last line of stderr, else the exit status."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                break
            if isinstance(obj, dict) and obj.get("error"):
                return str(obj["error"])
            break
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        exc = [ln for ln in lines if not ln.startswith(("File ", "^", "~", "Traceback"))]
        if exc:
            return exc[-1]
    for ln in lines:
        low = ln.lower()
        if low.startswith(("error", "fatal", "thread 'main' panicked", "panicked")):
            return ln
    if lines:
        return lines[-1]
    return f"exit status {rc}"


def last_json(stdout):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def load_average():
    """The 1-minute load average, or None where the system has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_child(cmd, timeout, env=None):
    """Runs one engine; returns (result dict or None, error line or None, raw record)."""
    log("$ " + " ".join(cmd))
    t0 = time.time()
    rec = {"cmd": cmd, "load_average_before": load_average()}
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
    except OSError as e:
        rec["error"] = f"cannot run {cmd[0]}: {e.strerror or e}"
        log("  failed: " + rec["error"])
        return None, rec["error"], rec
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The child and anything it started (torch.compile's workers) are one process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        rec.update(wall_s=time.time() - t0, rc=None, stderr_tail=stderr[-4000:], stdout_tail=stdout[-2000:])
        rec["error"] = f"timed out after {timeout:.0f} s"
        log("  " + rec["error"])
        return None, rec["error"], rec
    rec.update(wall_s=round(time.time() - t0, 2), rc=proc.returncode, stderr_tail=stderr[-4000:],
               stdout_tail=stdout[-2000:])
    result = last_json(stdout)
    if proc.returncode != 0 or result is None or result.get("error") or "images_per_s" not in result:
        err = error_line(stdout, stderr, proc.returncode)
        if proc.returncode == 0 and result is None:
            err = "no JSON result line on stdout" + (f" ({err})" if err != "exit status 0" else "")
        rec["error"] = err
        log("  failed: " + err)
        return None, err, rec
    rec["result"] = result
    rss = result.get("peak_rss_bytes")
    log(f"  {result['images_per_s']:.1f} images/s" + (f", peak RSS {mib(rss)} MiB" if rss else "")
        + f" ({rec['wall_s']:.0f} s)")
    return result, None, rec


def child_env(args):
    """The environment of every child: ours, with the thread-count variables set to --threads."""
    env = dict(os.environ)
    if args.threads:
        for var in THREAD_VARS:
            env[var] = str(args.threads)
    return env


def train_plan(args, row):
    """(warm-up, timed) training steps of a row: the row's own counts (normal or --quick), else
    5 and 30 (--quick: 2 and 5); --train-warmup and --train-steps override either."""
    warmup, steps = row.get("quick_steps" if args.quick else "steps") or ((2, 5) if args.quick else (5, 30))
    if args.train_warmup is not None:
        warmup = args.train_warmup
    if args.train_steps is not None:
        steps = args.train_steps
    return warmup, steps


def size_args(row):
    """ddpm's and pytorch_reference.py's --image-size/--channels, for the rows that set them."""
    out = []
    if row.get("image_size"):
        out += ["--image-size", str(row["image_size"])]
    if row.get("channels"):
        out += ["--channels", str(row["channels"])]
    return out


def ddpm_cmd(args, row, precision):
    if row["task"] == "sample":
        steps = args.sample_steps
        warmup = args.sample_warmup if args.sample_warmup is not None else 1
    else:
        warmup, steps = train_plan(args, row)
    return [args.ddpm, "bench", row["task"], "--preset", row["preset"], *size_args(row), "--batch-size",
            str(row["batch"]), "--precision", precision, "--steps", str(steps), "--warmup", str(warmup),
            "--device", args.device, "--json"]


def torch_cmd(args, row, precision, mode):
    cmd = [args.python, str(REFERENCE), "--preset", row["preset"], *size_args(row), "--batch-size",
           str(row["batch"]), "--precision", precision, "--mode", mode, "--task", row["task"], "--device",
           args.device, "--json"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if row["task"] == "train":
        warmup, steps = train_plan(args, row)
        warmup += 2 if mode == "compile" else 0
        cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    else:
        cmd += ["--sample-steps", str(args.sample_steps), "--steps", str(args.sample_loops), "--warmup", "1"]
        if args.sample_warmup is not None:
            cmd += ["--warmup-sample-steps", str(args.sample_warmup)]
    if mode == "compile" and args.compile_mode:
        cmd += ["--compile-mode", args.compile_mode]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    return cmd


# ---------------------------------------------------------------------------------------------
# FLOPs and peaks, from pytorch_reference.py (imported lazily: it needs torch).

_flops_cache = {}


def forward_gflop(row):
    """Forward GFLOP per image of a row's model, counted on the CPU; None without torch."""
    key = (row["preset"], row.get("image_size"), row.get("channels"))
    if key not in _flops_cache:
        try:
            sys.path.insert(0, str(REFERENCE.parent))
            import pytorch_reference as ref

            _flops_cache[key] = ref.forward_flops_per_image(ref.build_unet(*key)) / 1e9
        except Exception as e:  # no torch here: FLOP rates become n/a
            log(f"FLOP count for {config_label(row)} not made here ({type(e).__name__}: {e}); "
                "taken from the PyTorch runs, if any")
            _flops_cache[key] = None
    return _flops_cache[key]


def row_gflop(name, cells):
    """A row's forward GFLOP per image: counted here when this Python has torch, else as a
    PyTorch run of the row reported it (the same count, made in the child)."""
    g = forward_gflop(ROWS[name])
    if g is None:
        for eng in ("eager", "compile"):
            g = ((cells.get((name, eng)) or {}).get("result") or {}).get("gflop_forward_per_image")
            if g:
                break
    return g


def peak_tflops(args, device_name, precision):
    if args.peak_tflops:
        return args.peak_tflops
    try:
        sys.path.insert(0, str(REFERENCE.parent))
        import pytorch_reference as ref

        return ref.peak_tflops(device_name, precision)
    except Exception:
        table = [("H200", 989.0, 67.0), ("H100", 989.0, 67.0), ("A100", 312.0, 19.5)]
        for key, half, single in table:
            if key in (device_name or ""):
                return single if precision == "fp32" else half
        return None


def peak_note(args, gpu):
    if args.device == "cpu":
        if args.peak_gflops:
            return f"{args.peak_gflops:g} GFLOP/s fp32 FMA peak, given with --peak-gflops"
        return "no peak given (--peak-gflops), so no MFU"
    if args.peak_tflops:
        return f"{args.peak_tflops:g} TFLOP/s, given with --peak-tflops"
    bf16, fp32 = peak_tflops(args, gpu, "bf16"), peak_tflops(args, gpu, "fp32")
    if bf16 is None:
        return f"none known for {gpu}, so no MFU; set --peak-tflops"
    return f"{bf16:g} TFLOP/s bf16, {fp32:g} fp32"


def cpu_info():
    """The CPU: /proc/cpuinfo's model name and which of ISA_FLAGS it has; logical CPUs."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "isa": [f for f in ISA_FLAGS if f in flags],
        "amx": any(f.startswith("amx") for f in flags),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
    }


def cpu_label(args):
    info = cpu_info()
    isa = " ".join(info["isa"]) or "no AVX2/AVX-512 flags found"
    if not info["amx"]:
        isa += "; no AMX"
    return f"{info['model']} ({isa}), {args.threads} threads"


def gpu_name(args, records):
    """The device in words: the GPU's name, or the CPU's model, ISA and thread count."""
    if args.device.startswith("cuda"):
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                     text=True, timeout=30).stdout.strip().splitlines()
                if out:
                    idx = int(args.device.split(":")[1]) if ":" in args.device else 0
                    return out[min(idx, len(out) - 1)].strip()
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
        for rec in records:
            dev = (rec.get("result") or {}).get("device")
            if dev:
                return dev
        return args.device
    return cpu_label(args)


# ---------------------------------------------------------------------------------------------
# The tables.


def cell_text(s, limit=110):
    s = " ".join(str(s).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def mib(n):
    return f"{n / 2**20:.0f}"


def config_label(row):
    """`preset ×batch`, with the image size and channels where the row overrides them."""
    label = row["preset"]
    size, ch = row.get("image_size"), row.get("channels")
    if size and ch:
        label += f" {size}×{size}×{ch}"
    elif size:
        label += f" {size}×{size}"
    elif ch:
        label += f" {ch}-channel"
    return f"{label} ×{row['batch']}"


def timing_text(args, row):
    """What was timed, as `warm-up+timed`: training steps, or DDIM steps of one pass each."""
    if row["task"] == "train":
        warmup, steps = train_plan(args, row)
        return f"{warmup}+{steps} steps"
    if args.sample_warmup is not None:
        return f"DDIM-{args.sample_warmup} + {args.sample_loops}×DDIM-{args.sample_steps}"
    # cuda's defaults: ddpm warms up with one DDIM step, PyTorch with one whole loop.
    return f"each engine's warm-up + {args.sample_loops}×DDIM-{args.sample_steps}"


def error_cell(c):
    msg = cell_text(c["error"])
    return msg if msg.lower().startswith(("error", "skipped")) else "error: " + msg


def build_table(args, rows, cells, gpu):
    cpu = args.device == "cpu"
    peak_given = bool(args.peak_tflops)
    head = ["config", "task", "precision"]
    if cpu:
        head.append("warm-up + timed")
    head += ["ddpm img/s", "eager img/s", "compile img/s", "ddpm/eager", "ddpm/compile"]
    if cpu:
        head += ["GFLOP/s (ddpm)", "GFLOP/s (eager)", "GFLOP/s (compile)"]
    if not cpu or peak_given:
        head += ["MFU (ddpm)", "MFU (eager)", "MFU (compile)"]
    fixed = 4 if cpu else 3
    out = [f"## ddpm vs PyTorch on {gpu}", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] * fixed + ["---:"] * (len(head) - fixed)) + "|")
    notes = []
    for name in rows:
        row = ROWS[name]
        prec = row["effective_precision"]
        task = "train step" if row["task"] == "train" else f"DDIM-{args.sample_steps}"
        gflop = row_gflop(name, cells)
        per_image = None
        if gflop is not None:
            per_image = gflop * (3 if row["task"] == "train" else args.sample_steps)
        ips, vals = {}, []
        for eng in ENGINES:
            c = cells.get((name, eng))
            if c is None:
                vals.append("—")
            elif c.get("error"):
                vals.append(error_cell(c))
            else:
                ips[eng] = c["result"]["images_per_s"]
                vals.append(f"{ips[eng]:.1f}" if ips[eng] >= 10 else f"{ips[eng]:.2f}")
        ratios = []
        for other in ("eager", "compile"):
            if "ddpm" in ips and other in ips and ips[other] > 0:
                ratios.append(f"{ips['ddpm'] / ips[other]:.2f}×")
            else:
                ratios.append("—")
        rates, mfus = [], []
        for eng in ENGINES:
            c = cells.get((name, eng)) or {}
            res = c.get("result")
            dev = (res or {}).get("device") or gpu
            peak = peak_tflops(args, dev, prec)
            if res is None or per_image is None:
                rates.append("—" if res is None else "n/a")
                mfus.append("—" if res is None else "n/a")
                continue
            tflops = res["images_per_s"] * per_image / 1e3
            rates.append(f"{1e3 * tflops:.1f}")
            mfus.append(f"{100 * tflops / peak:.1f}%" if peak else "n/a")
        config = config_label(row)
        line = [config, task, prec] + ([timing_text(args, row)] if cpu else []) + vals + ratios
        if cpu:
            line += rates
        if not cpu or peak_given:
            line += mfus
        out.append("| " + " | ".join(line) + " |")
        # Cross-checks worth a note: the engines must be running the same model on as many
        # threads.
        results = {eng: (cells.get((name, eng)) or {}).get("result") or {} for eng in ENGINES}
        known = {k: r["params"] for k, r in results.items() if r.get("params")}
        if len(set(known.values())) > 1:
            notes.append(f"{config} {task}: parameter counts differ: {known}")
        if args.threads:
            for eng, r in results.items():
                if r.get("threads") and r["threads"] != args.threads:
                    notes.append(f"{config} {task}: {eng} ran with {r['threads']} threads, not {args.threads}")
    out.append("")
    flop_notes = []
    for name in rows:
        g = row_gflop(name, cells)
        text = f"{config_label(ROWS[name]).rsplit(' ×', 1)[0]} {g:.3g} GFLOP forward / {3 * g:.3g} per training step" \
            if g is not None else None
        if text and text not in flop_notes:
            flop_notes.append(text)
    flops = ("counted from layer shapes: " + "; ".join(flop_notes) if flop_notes
             else "not counted: no torch in this Python and no PyTorch run to report them")
    if cpu:
        timing = (f"img/s after warm-up, wall clock on {args.threads} threads for every engine (torch.compile "
                  f"gets 2 more warm-up training steps); a sampling row's warm-up is one "
                  f"DDIM-{args.sample_warmup} pass of the batch, then one full DDIM-{args.sample_steps} pass "
                  f"is timed, in every engine")
        engines = ("eager = PyTorch eager in fp32, compile = torch.compile of the model ("
                   + (args.compile_mode or "default mode") + ", inductor's C++ backend)")
        rate_text = ("GFLOP/s = model FLOPs (" + flops + ") per second" + ("; MFU is that over the peak (" + peak_note(args, gpu) + ")" if peak_given
                                         else " (" + peak_note(args, gpu) + ")"))
    else:
        timing = "img/s after warm-up"
        engines = ("eager = PyTorch with autocast (fp32: no autocast, TF32 off), compile = torch.compile of the "
                   "model (" + (args.compile_mode or "default mode") + ")")
        rate_text = ("MFU = model FLOPs (" + flops + ") per second over the dense peak (" + peak_note(args, gpu) + ")")
    out.append(f"{timing}; ratios are ddpm's images/s over PyTorch's (above 1: ddpm faster). {engines}. "
               f"{rate_text}.")
    load = getattr(args, "load_at_start", None)
    if cpu and load is not None:
        out.append("")
        out.append(f"1-minute load average before the first run: {load:g}" + (
            " (other work was running: the timings are skewed)" if load > 1.0 else "") + ".")
    out += memory_table(rows, cells)
    versions = sorted({(c.get("result") or {}).get("torch") for c in cells.values() if (c.get("result") or {}).get("torch")})
    if versions:
        out.append("")
        out.append("torch " + ", ".join(versions) + f"; ddpm binary {args.ddpm}.")
    for n in notes:
        out.append("")
        out.append("Note: " + n)
    errors = [(k, c["error"]) for k, c in cells.items() if c.get("error")]
    if errors:
        out.append("")
        out.append("Errors (first line):")
        for (name, eng), err in errors:
            out.append(f"- {name} / {eng}: {cell_text(err, 400)}")
    return "\n".join(out) + "\n"


def memory_table(rows, cells):
    """The peak resident set of each engine's process, as Markdown lines; none when no run has
    reported one."""
    if not any((c.get("result") or {}).get("peak_rss_bytes") for c in cells.values()):
        return []
    out = ["", "### Peak resident memory (MiB)", "",
           "| config | task | ddpm | eager | compile | ddpm/eager |", "|---|---|---:|---:|---:|---:|"]
    for name in rows:
        row = ROWS[name]
        vals, peaks = [], {}
        for eng in ENGINES:
            c = cells.get((name, eng))
            res = (c or {}).get("result")
            if c is None:
                vals.append("—")
            elif c.get("error"):
                vals.append("error")
            elif not res.get("peak_rss_bytes"):
                vals.append("—")
            else:
                peaks[eng] = res["peak_rss_bytes"]
                text = mib(res["peak_rss_bytes"])
                if res.get("baseline_rss_bytes"):
                    text += f" ({mib(res['baseline_rss_bytes'])})"
                vals.append(text)
        ratio = f"{peaks['ddpm'] / peaks['eager']:.2f}×" if "ddpm" in peaks and "eager" in peaks else "—"
        task = "train step" if row["task"] == "train" else "sampling"
        out.append("| " + " | ".join([config_label(row), task] + vals + [ratio]) + " |")
    out.append("")
    out.append("Peak resident set of each engine's process: VmHWM for ddpm (its `peak_rss_bytes`; — from a "
               "binary that does not report it), ru_maxrss for PyTorch, in parentheses its resident set "
               "just before the first step (torch imported, model and optimizer built); torch.compile's "
               "compile workers, separate processes, are not counted.")
    return out


def write_outputs(args, rows, cells, records, gpu):
    table = build_table(args, rows, cells, gpu)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "table.md").write_text(table)
    payload = {
        "gpu": gpu,
        "device": args.device,
        "threads": args.threads,
        "load_average_at_start": getattr(args, "load_at_start", None),
        "thread_env": {var: str(args.threads) for var in THREAD_VARS} if args.threads else None,
        "cpu": cpu_info() if args.device == "cpu" else None,
        "peak_tflops": args.peak_tflops,
        "rows": {n: dict(ROWS[n], timing=timing_text(args, ROWS[n]), config=config_label(ROWS[n])) for n in rows},
        "gflop_forward_per_image": {n: row_gflop(n, cells) for n in rows},
        "peak_rss_bytes": {
            n: {eng: {k: ((cells.get((n, eng)) or {}).get("result") or {}).get(k)
                      for k in ("peak_rss_bytes", "baseline_rss_bytes")}
                for eng in ENGINES if (n, eng) in cells}
            for n in rows
        },
        "runs": records,
    }
    (outdir / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--ddpm", default=None, help="the ddpm binary (default: bundle/bin/ddpm, else target/release/ddpm)")
    p.add_argument("--python", default=None,
                   help="the Python that runs pytorch_reference.py (default: this one if it has torch, else "
                        "scripts/setup-pyref.sh's venv, $DDPM_PYREF or ~/.cache/ddpm/pyref, when it exists)")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows or groups: {', '.join(ROWS)}; groups {', '.join(ROW_GROUPS)} "
                        "(default: `default` on cuda, `cpu` on cpu)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of ddpm,eager,compile")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (every row in fp32)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every engine (RAYON/OMP/MKL_NUM_THREADS, torch.set_num_threads); "
                        "default on cpu: os.cpu_count(), on cuda: left alone")
    p.add_argument("--quick", action="store_true",
                   help="short runs: fewer training steps (2 warm-up + 5 timed, or the row's quick counts)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="timed training steps of every row (default: the row's own, else 30, quick 5)")
    p.add_argument("--train-warmup", type=int, default=None,
                   help="warm-up training steps of every row (default: the row's own, else 5, quick 2)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sampling rows")
    p.add_argument("--sample-warmup", type=int, default=None,
                   help=f"DDIM steps of the one warm-up pass of the sampling rows, in every engine "
                        f"(default on cpu: {DEFAULT_SAMPLE_WARMUP_CPU}; on cuda: each engine's own warm-up)")
    p.add_argument("--sample-loops", type=int, default=None,
                   help="timed DDIM loops of PyTorch's sampling rows (default: 1 on cpu, as ddpm; on cuda "
                        "2, quick 1)")
    p.add_argument("--batch-size", type=int, default=None, help="override every row's batch size")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for the compile engine")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for MFU")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the CPU's fp32 FMA peak in GFLOP/s (as measured), for MFU; the same as --peak-tflops/1000")
    p.add_argument("--timeout", type=float, default=900, help="seconds one engine run may take")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole comparison; runs that would start later are skipped")
    p.add_argument("--out", default=None, help="output directory (default: $OUT, else side_by_side/)")
    a = p.parse_args(argv)
    if a.device != "cpu" and not a.device.startswith("cuda"):
        p.error("--device: cuda, cuda:N or cpu")
    cpu = a.device == "cpu"
    a.ddpm = a.ddpm or default_ddpm()
    a.python = a.python or default_python()
    a.out = a.out or os.environ.get("OUT") or "side_by_side"
    for flag in ("train_steps", "sample_steps", "sample_warmup", "sample_loops", "threads"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if a.train_warmup is not None and a.train_warmup < 0:
        p.error("--train-warmup must be non-negative")
    if a.peak_gflops and a.peak_tflops:
        p.error("--peak-gflops and --peak-tflops: give one")
    if a.peak_gflops:
        a.peak_tflops = a.peak_gflops / 1e3
    if a.threads is None and cpu:
        a.threads = os.cpu_count()
    if cpu and a.sample_warmup is None:
        a.sample_warmup = DEFAULT_SAMPLE_WARMUP_CPU
    a.sample_loops = a.sample_loops or (1 if a.quick or cpu else 2)
    rows = []
    for name in (a.rows or ("cpu" if cpu else "default")).split(","):
        name = name.strip()
        if not name:
            continue
        if name in ROW_GROUPS:
            rows += ROW_GROUPS[name]
        elif name in ROWS:
            rows.append(name)
        else:
            p.error(f"--rows: unknown row {name!r} (rows: {', '.join(ROWS)}; groups: {', '.join(ROW_GROUPS)})")
    a.row_names = list(dict.fromkeys(rows))
    a.engine_list = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in a.engine_list if e not in ENGINES]
    if bad or not a.engine_list:
        p.error(f"--engines: {bad or 'none'}: choose from {', '.join(ENGINES)}")
    return a


def main(argv=None):
    args = parse_args(argv)
    rows = args.row_names
    for name in rows:
        row = ROWS[name]
        if args.batch_size:
            row["batch"] = args.batch_size
        # ddpm's CPU backend has no bf16: a CPU run compares fp32 with fp32.
        row["effective_precision"] = "fp32" if args.device == "cpu" else row["precision"]
    if args.device == "cpu":
        if any(ROWS[n]["precision"] != "fp32" for n in rows):
            log("--device cpu: every row runs in fp32 (ddpm's CPU backend has no bf16)")
        info = cpu_info()
        if args.threads > (info["usable_cpus"] or args.threads):
            log(f"--threads {args.threads}: more than the {info['usable_cpus']} CPUs this process may use")
    args.load_at_start = load_average()
    if args.device == "cpu" and args.load_at_start is not None and args.load_at_start > 1.0:
        log(f"warning: the load average is {args.load_at_start}: other work on these CPUs will skew the timings")
    env = child_env(args)
    if args.threads:
        log(f"every engine on {args.threads} threads ({', '.join(THREAD_VARS)}={args.threads})")

    # ddpm and eager for every row first, torch.compile (the slow one to start) last, so that a
    # run cut short by --budget still has the main ratios.
    order = [(n, e) for n in rows for e in ("ddpm", "eager") if e in args.engine_list]
    order += [(n, "compile") for n in rows if "compile" in args.engine_list]
    cells, records = {}, []
    start = time.time()
    gpu = gpu_name(args, records)
    for name, eng in order:
        row = ROWS[name]
        prec = row["effective_precision"]
        timeout = args.timeout
        if args.budget is not None:
            left = args.budget - (time.time() - start)
            if left < 10:
                cells[(name, eng)] = {"error": "skipped: time budget spent"}
                records.append({"row": name, "engine": eng, "error": "skipped: time budget spent"})
                continue
            timeout = min(timeout, left)
        cmd = ddpm_cmd(args, row, prec) if eng == "ddpm" else torch_cmd(args, row, prec, eng)
        result, err, rec = run_child(cmd, timeout, env)
        rec.update(row=name, engine=eng)
        records.append(rec)
        cells[(name, eng)] = {"result": result} if result is not None else {"error": err}
        write_outputs(args, rows, cells, records, gpu)
    gpu = gpu_name(args, records)
    table = write_outputs(args, rows, cells, records, gpu)
    print(table)
    log(f"wrote {Path(args.out) / 'table.md'} and {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
