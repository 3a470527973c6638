#!/usr/bin/env python3
"""ddpm against PyTorch on the same GPU, in one run: a Markdown table of images/s, ratios and MFU.

Each row of the table is one workload (a preset, a batch size, a task and a precision), run by up
to three engines, one after another, each in its own child process of this one, on the same
device:

  ddpm      `ddpm bench train|sample ... --json` (the binary from --ddpm; default bundle/bin/ddpm
            when it exists, else target/release/ddpm). Its last stdout line starting with `{` is
            the result.
  eager     scripts/pytorch_reference.py --mode eager: the same UNet in plain PyTorch, autocast.
  compile   scripts/pytorch_reference.py --mode compile: the same, through torch.compile.

Both engines time the same work (see pytorch_reference.py's docstring): a training step is
forward, backward, grad-norm clip, AdamW and an fp32 EMA on a random batch; sampling is one batch
through DDIM with 50 steps. Throughput is images/s after warm-up; ratios are ddpm's images/s
over PyTorch's (above 1: ddpm is faster). MFU is the achieved FLOP rate over the device's dense
peak, with the model FLOPs counted by pytorch_reference.py from the layer shapes (3 forwards per
training step, S forwards per DDIM-S image), the same count for every engine.

The default rows are the issue's comparison:

  cifar10-train-bf16   ddpm-cifar10, batch 128, training step, bf16
  small-train-bf16     cifar10-small (ch 64), batch 64, training step, bf16
  cifar10-sample-bf16  ddpm-cifar10, batch 256, DDIM-50 sampling, bf16
  cifar10-train-fp32   ddpm-cifar10, batch 128, training step, fp32 (no TF32): a reference

and `tiny` (tiny-train, tiny-sample) is there for smoke runs. A run that fails (an error, an
out-of-memory, torch.compile failing, a timeout) becomes an error cell with the first line of
its error; the table is always written. The table and every raw result go to --out (default
$OUT when set, else side_by_side/) as table.md and results.json, rewritten after each run so a
cut-off run still leaves what it measured.

    python3 scripts/side_by_side.py                              # the default rows on cuda
    python3 scripts/side_by_side.py --rows cifar10-train-bf16 --quick
    python3 scripts/side_by_side.py --device cpu --quick --rows tiny   # a CPU smoke run (fp32)

Needs only the Python standard library, plus torch for the PyTorch engines and the FLOP count.
"""

import argparse
import json
import os
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

ROWS = {
    "cifar10-train-bf16": dict(preset="ddpm-cifar10", batch=128, task="train", precision="bf16"),
    "small-train-bf16": dict(preset="cifar10-small", batch=64, task="train", precision="bf16"),
    "cifar10-sample-bf16": dict(preset="ddpm-cifar10", batch=256, task="sample", precision="bf16"),
    "cifar10-train-fp32": dict(preset="ddpm-cifar10", batch=128, task="train", precision="fp32"),
    "tiny-train": dict(preset="tiny", batch=32, task="train", precision="bf16"),
    "tiny-sample": dict(preset="tiny", batch=32, task="sample", precision="bf16"),
}
DEFAULT_ROWS = ["cifar10-train-bf16", "small-train-bf16", "cifar10-sample-bf16", "cifar10-train-fp32"]
ROW_GROUPS = {"default": DEFAULT_ROWS, "tiny": ["tiny-train", "tiny-sample"], "all": list(ROWS)}
ENGINES = ["ddpm", "eager", "compile"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def run_child(cmd, timeout):
    """Runs one engine; returns (result dict or None, error line or None, raw record)."""
    log("$ " + " ".join(cmd))
    t0 = time.time()
    rec = {"cmd": cmd}
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
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
    log(f"  {result['images_per_s']:.1f} images/s ({rec['wall_s']:.0f} s)")
    return result, None, rec


def ddpm_cmd(args, row, precision):
    steps, warmup = (args.sample_steps, 1) if row["task"] == "sample" else (args.train_steps, args.train_warmup)
    return [args.ddpm, "bench", row["task"], "--preset", row["preset"], "--batch-size", str(row["batch"]),
            "--precision", precision, "--steps", str(steps), "--warmup", str(warmup), "--device", args.device,
            "--json"]


def torch_cmd(args, row, precision, mode):
    cmd = [args.python, str(REFERENCE), "--preset", row["preset"], "--batch-size", str(row["batch"]),
           "--precision", precision, "--mode", mode, "--task", row["task"], "--device", args.device, "--json"]
    if row["task"] == "train":
        warmup = args.train_warmup + (2 if mode == "compile" else 0)
        cmd += ["--steps", str(args.train_steps), "--warmup", str(warmup)]
    else:
        cmd += ["--sample-steps", str(args.sample_steps), "--steps", str(args.sample_loops), "--warmup", "1"]
    if mode == "compile" and args.compile_mode:
        cmd += ["--compile-mode", args.compile_mode]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    return cmd


# ---------------------------------------------------------------------------------------------
# FLOPs and peaks, from pytorch_reference.py (imported lazily: it needs torch).

_flops_cache = {}


def forward_gflop(preset):
    """Forward GFLOP per image of a preset, counted on the CPU; None without torch."""
    if preset not in _flops_cache:
        try:
            sys.path.insert(0, str(REFERENCE.parent))
            import pytorch_reference as ref

            _flops_cache[preset] = ref.forward_flops_per_image(ref.build_unet(preset)) / 1e9
        except Exception as e:  # no torch here: MFU cells become n/a
            log(f"FLOP count for {preset} unavailable ({type(e).__name__}: {e})")
            _flops_cache[preset] = None
    return _flops_cache[preset]


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
    if args.peak_tflops:
        return f"{args.peak_tflops:g} TFLOP/s, given with --peak-tflops"
    bf16, fp32 = peak_tflops(args, gpu, "bf16"), peak_tflops(args, gpu, "fp32")
    if bf16 is None:
        return f"none known for {gpu}, so no MFU; set --peak-tflops"
    return f"{bf16:g} TFLOP/s bf16, {fp32:g} fp32"


def gpu_name(args, records):
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
    return "CPU"


# ---------------------------------------------------------------------------------------------
# The table.


def cell_text(s, limit=110):
    s = " ".join(str(s).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def build_table(args, rows, cells, gpu):
    head = ["config", "task", "precision", "ddpm img/s", "eager img/s", "compile img/s", "ddpm/eager",
            "ddpm/compile", "MFU (ddpm)", "MFU (eager)", "MFU (compile)"]
    out = [f"## ddpm vs PyTorch on {gpu}", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    notes = []
    for name in rows:
        row = ROWS[name]
        prec = row["effective_precision"]
        task = "train step" if row["task"] == "train" else f"DDIM-{args.sample_steps}"
        gflop = forward_gflop(row["preset"])
        per_image = None
        if gflop is not None:
            per_image = gflop * (3 if row["task"] == "train" else args.sample_steps)
        ips, vals = {}, []
        for eng in ENGINES:
            c = cells.get((name, eng))
            if c is None:
                vals.append("—")
            elif c.get("error"):
                msg = cell_text(c["error"])
                vals.append(msg if msg.lower().startswith(("error", "skipped")) else "error: " + msg)
            else:
                ips[eng] = c["result"]["images_per_s"]
                vals.append(f"{ips[eng]:.1f}")
        ratios = []
        for other in ("eager", "compile"):
            if "ddpm" in ips and other in ips and ips[other] > 0:
                ratios.append(f"{ips['ddpm'] / ips[other]:.2f}×")
            else:
                ratios.append("—")
        mfus = []
        for eng in ENGINES:
            c = cells.get((name, eng)) or {}
            res = c.get("result")
            dev = (res or {}).get("device") or gpu
            peak = peak_tflops(args, dev, prec)
            if res is None or per_image is None or not peak:
                mfus.append("—" if res is None else "n/a")
            else:
                tflops = res["images_per_s"] * per_image / 1e3
                mfus.append(f"{100 * tflops / peak:.1f}%")
        config = f"{row['preset']} ×{row['batch']}"
        out.append("| " + " | ".join([config, task, prec] + vals + ratios + mfus) + " |")
        # Cross-checks worth a note: the two engines must be running the same model.
        params = {eng: (cells.get((name, eng)) or {}).get("result", {}).get("params") for eng in ENGINES}
        known = {k: v for k, v in params.items() if v}
        if len(set(known.values())) > 1:
            notes.append(f"{config} {task}: parameter counts differ: {known}")
    out.append("")
    flop_notes = []
    for preset in dict.fromkeys(ROWS[n]["preset"] for n in rows):
        g = forward_gflop(preset)
        if g is not None:
            flop_notes.append(f"{preset} {g:.3g} GFLOP forward / {3 * g:.3g} per training step")
    out.append(
        "img/s after warm-up; ratios are ddpm's images/s over PyTorch's (above 1: ddpm faster). "
        "eager = PyTorch with autocast (fp32: no autocast, TF32 off), compile = torch.compile of the "
        "model (" + (args.compile_mode or "default mode") + "). MFU = model FLOPs (counted from layer "
        "shapes: " + "; ".join(flop_notes) + ") per second over the dense peak ("
        + peak_note(args, gpu) + ")."
    )
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


def write_outputs(args, rows, cells, records, gpu):
    table = build_table(args, rows, cells, gpu)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "table.md").write_text(table)
    payload = {
        "gpu": gpu,
        "device": args.device,
        "rows": {n: ROWS[n] for n in rows},
        "gflop_forward_per_image": {ROWS[n]["preset"]: forward_gflop(ROWS[n]["preset"]) for n in rows},
        "runs": records,
    }
    (outdir / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--ddpm", default=None, help="the ddpm binary (default: bundle/bin/ddpm, else target/release/ddpm)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs pytorch_reference.py")
    p.add_argument("--rows", default="default",
                   help=f"comma-separated rows or groups: {', '.join(ROWS)}; groups {', '.join(ROW_GROUPS)}")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of ddpm,eager,compile")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke run; every row in fp32)")
    p.add_argument("--quick", action="store_true", help="short runs: 5 timed training steps after 2 warm-up")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 30, quick 5)")
    p.add_argument("--train-warmup", type=int, default=None, help="warm-up training steps (default 5, quick 2)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sampling rows")
    p.add_argument("--sample-loops", type=int, default=None,
                   help="timed DDIM loops of PyTorch's sampling rows (default 2, quick 1)")
    p.add_argument("--batch-size", type=int, default=None, help="override every row's batch size")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for the compile engine")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for MFU")
    p.add_argument("--timeout", type=float, default=900, help="seconds one engine run may take")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole comparison; runs that would start later are skipped")
    p.add_argument("--out", default=None, help="output directory (default: $OUT, else side_by_side/)")
    a = p.parse_args(argv)
    a.ddpm = a.ddpm or default_ddpm()
    a.out = a.out or os.environ.get("OUT") or "side_by_side"
    a.train_steps = a.train_steps or (5 if a.quick else 30)
    a.train_warmup = a.train_warmup if a.train_warmup is not None else (2 if a.quick else 5)
    a.sample_loops = a.sample_loops or (1 if a.quick else 2)
    rows = []
    for name in a.rows.split(","):
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
    if a.device != "cpu" and not a.device.startswith("cuda"):
        p.error("--device: cuda, cuda:N or cpu")
    return a


def main(argv=None):
    args = parse_args(argv)
    rows = args.row_names
    for name in rows:
        row = ROWS[name]
        if args.batch_size:
            row["batch"] = args.batch_size
        # ddpm's CPU backend has no bf16: a CPU smoke run compares fp32 with fp32.
        row["effective_precision"] = "fp32" if args.device == "cpu" else row["precision"]
    if args.device == "cpu":
        log("--device cpu: every row runs in fp32 (ddpm's CPU backend has no bf16)")

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
        result, err, rec = run_child(cmd, timeout)
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
