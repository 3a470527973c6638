#!/usr/bin/env bash
# The one shot on a lent GPU machine: everything the first 15-minute loan should return, in at
# most 8 minutes of wall clock. scripts/gpu-bundle.sh copies it to bundle/gpu-check.sh; run it
# there from the repository root, with bundle/ carried along (docs/gpu-machine.md):
#
#   bash bundle/gpu-check.sh                # writes $OUT/summary.md (else gpu-check-out/)
#
# Steps, in this order, each with a time budget; a budget not used rolls over to the next step,
# and step k ends by the sum of the budgets of steps 1..k, so the whole run ends within
# DDPM_GPU_CHECK_BUDGET seconds (default 470, just under 8 minutes) whatever happens. Every
# command runs under its own `timeout`.
#
#   1. machine    15 s  ddpm info, nvidia-smi, the CUDA libraries found (bundle/env.sh) and the
#                       files they resolve to, compute-sanitizer's version
#   2. cuda      145 s  bundle/tests/cuda, the CUDA suite, in one process under a watchdog that
#                       kills it when one test runs past 60 s (DDPM_GPU_CHECK_TEST_TIMEOUT); the
#                       tests after a hang or crash then run one process each. The first failing
#                       test is rerun under compute-sanitizer --tool memcheck, then racecheck when
#                       30 s are left; other failures are rerun alone (a failure that follows a
#                       sticky CUDA error may pass alone). A refused compute-sanitizer is noted.
#   3. bench     140 s  ddpm bench train, batch 128: tiny and ddpm-cifar10, each in bf16 with the
#                       im2col and the shifted-GEMM convolution (DDPM_CONV=im2col|shifted) and in
#                       fp32; ddpm bench sample ddpm-cifar10 ×256 bf16 (DDIM-50); the criterion
#                       rows of group norm and the optimizer (bundle/benches/cuda_ops, filtered)
#   4. pytorch    90 s  scripts/side_by_side.py --ddpm bundle/bin/ddpm --engines ddpm,eager on
#                       cifar10-train-bf16, cifar10-train-fp32, cifar10-sample-bf16 (and tiny ×128
#                       when time is left): the ratios; step 3's rows are set against the same
#                       eager numbers in the summary
#   5. train      60 s  ddpm train --device cuda: tiny on the built-in shapes for 300 steps, then
#                       ddpm sample --sampler ddim --steps 50: a grid of 64 images
#   6. compile  rest    torch.compile of cifar10-train-bf16, only when 100 s are left
#
# Output, in $OUT (the device's return folder) when set, else ./gpu-check-out (emptied first):
# at most 8 files, the device's limit. summary.md is rewritten after every step (and every 10 s
# during the CUDA suite), so a run cut off anywhere still says what it saw and what was running.
#
#   summary.md               the report: machine, each step's status and seconds, the CUDA
#                            suite's results, ddpm against PyTorch, criterion rows, training
#   logs.tar.gz              every log, the machine details, bench JSON, the training run's
#                            log.csv and grids (no checkpoints); repacked after every step
#   cuda.log                 the CUDA suite's output
#   sanitizer.txt            compute-sanitizer's reports on the first failing test (when one fails)
#   side_by_side/table.md, side_by_side/results.json   step 4, as scripts/side_by_side.py writes them
#   ddim50-grid.png, train-loss.png                    step 5
#
# Without a GPU (here, in CI) it is a dry run: step 1 runs, every GPU step is listed as SKIPPED
# with the reason, and each GPU command line is still checked where that costs nothing (ddpm
# must reject it for want of a GPU, not as a usage error; the CUDA suite must list its tests;
# side_by_side.py must accept its arguments). It exits 0. DDPM_GPU_CHECK_CPU=1 runs step 5 on
# the CPU instead, as a stand-in (DDPM_GPU_CHECK_TRAIN_STEPS steps; default 300).
#
# Exit status: 0 when every step that ran succeeded (or in a dry run), 1 otherwise.
set -uo pipefail

T0=$SECONDS
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$here/.." && pwd)" # the repository root: bundle/.. or scripts/..
if [ -n "${DDPM_BUNDLE_DIR:-}" ]; then
  B="$(cd "$DDPM_BUNDLE_DIR" && pwd)"
elif [ -x "$here/bin/ddpm" ]; then
  B="$here"
else
  B="$ROOT/bundle"
fi
DDPM="$B/bin/ddpm"
SUITE="$B/tests/cuda"
CRIT="$B/benches/cuda_ops"

if [ -n "${OUT:-}" ]; then
  O="$OUT"
  mkdir -p "$O"
else
  O="$PWD/gpu-check-out"
  rm -rf "$O"
  mkdir -p "$O"
fi
O="$(cd "$O" && pwd)"
W="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")" # logs; packed into $O/logs.tar.gz
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bench"
: >"$W/steps.tsv"

BUDGET="${DDPM_GPU_CHECK_BUDGET:-470}"
PER_TEST="${DDPM_GPU_CHECK_TEST_TIMEOUT:-60}"
TRAIN_STEPS="${DDPM_GPU_CHECK_TRAIN_STEPS:-300}"
RESERVE=8 # seconds kept for the last summary and packing
# Step budgets in seconds; step k ends by the sum of budgets 1..k (and by BUDGET - RESERVE).
STEP_NAMES=(machine cuda bench pytorch train)
STEP_BUDGETS=(15 145 140 90 60)
declare -A DEADLINE
acc=0
for i in "${!STEP_NAMES[@]}"; do
  acc=$((acc + STEP_BUDGETS[i]))
  DEADLINE[${STEP_NAMES[$i]}]=$((acc < BUDGET - RESERVE ? acc : BUDGET - RESERVE))
done
DEADLINE[compile]=$((BUDGET - RESERVE))
STARTED_UTC="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"

now() { echo $((SECONDS - T0)); }
say() { printf '[gpu-check %3ss] %s\n' "$(now)" "$*"; }
# Seconds left before the deadline of step $1.
left() { echo $((DEADLINE[$1] - (SECONDS - T0))); }
md_escape() { tr '\n|' ' /' | sed 's/  */ /g; s/ *$//' | cut -c 1-"${1:-200}"; }

# --- state and summary ---------------------------------------------------------------------------

CURRENT=""  # what runs now, for a summary written mid-step
GPU_LINE="" # the machine in words
HAVE_GPU=0
NO_GPU_WHY=""
PROBLEMS=0

# record STEP STATUS SECONDS NOTE: one row of the steps table.
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(printf '%s' "$4" | md_escape 300)" >>"$W/steps.tsv"
  case "$2" in ok | SKIPPED* | REFUSED) ;; *) PROBLEMS=$((PROBLEMS + 1)) ;; esac
}

# The summary: header, steps table, then each step's section ($W/sec-N.md), written atomically.
write_summary() {
  local f="$O/.summary.md.tmp"
  {
    echo "# ddpm GPU check"
    echo
    echo "- machine: ${GPU_LINE:-not probed yet}"
    [ "$HAVE_GPU" = 1 ] || echo "- **dry run: no GPU** ($NO_GPU_WHY): the GPU steps are SKIPPED; nothing below ran on a GPU"
    echo "- bundle: $(sed -n 's/^commit: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1) (built $(sed -n 's/^built: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1 | cut -d' ' -f1-3))"
    echo "- started $STARTED_UTC; budget $BUDGET s: machine ${STEP_BUDGETS[0]}, cuda ${STEP_BUDGETS[1]}, bench ${STEP_BUDGETS[2]}, pytorch ${STEP_BUDGETS[3]}, train ${STEP_BUDGETS[4]} s, unused time rolling over; torch.compile with what is left"
    if [ -n "$CURRENT" ]; then
      echo "- **state: running $CURRENT; $(now) s elapsed** (a summary cut off here ends mid-run)"
    else
      echo "- state: finished after $(now) s; $PROBLEMS step(s) not ok"
    fi
    echo
    echo "| step | status | seconds | notes |"
    echo "|---|---|---:|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$W/steps.tsv"
    for s in "$W"/sec-*.md; do
      [ -f "$s" ] || continue
      echo
      cat "$s"
    done
    echo
    echo "Files in this folder: $(cd "$O" && find . -type f ! -name '.*' | sed 's|^\./||' | sort | tr '\n' ' ')"
  } >"$f" 2>/dev/null && mv -f "$f" "$O/summary.md"
}

# Every log, without checkpoints, into $O/logs.tar.gz (one file, whatever the number of logs).
pack() {
  cp "$B/MANIFEST" "$W/MANIFEST" 2>/dev/null
  if tar -czf "$O/.logs.tar.gz.tmp" --exclude='*.safetensors' -C "$W" . 2>/dev/null; then
    mv -f "$O/.logs.tar.gz.tmp" "$O/logs.tar.gz"
  fi
}

checkpoint() { # after each step
  write_summary
  pack
}

# run_cmd LOG LIMIT CMD...: runs CMD under `timeout` (LIMIT seconds, at least 1), output to LOG.
# Sets RC, SECS and STATUS (ok, FAILED, TIMEOUT, NOT RUN, signal N).
run_cmd() {
  local log=$1 limit=$2
  shift 2
  [ "$limit" -lt 1 ] && limit=1
  printf '$ %s\n' "$*" >>"$log"
  local t0 t1
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" </dev/null >>"$log" 2>&1
  RC=$?
  t1=$(date +%s.%N)
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  case "$RC" in
    0) STATUS=ok ;;
    124 | 137) STATUS=TIMEOUT && echo "[gpu-check: killed after $limit s]" >>"$log" ;;
    126 | 127) STATUS="NOT RUN" ;;
    *) if [ "$RC" -gt 128 ]; then STATUS="signal $((RC - 128))"; else STATUS=FAILED; fi ;;
  esac
}

# The line that best says why a command failed: the first error or panic, else the last line.
why() {
  local l
  l=$(awk '/panicked at/ { getline m; print "panic: " m; exit }
           /^(error|Error|ERROR)/ { print; exit }' "$1" 2>/dev/null)
  [ -n "$l" ] || l=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | grep -v '^\$ ' | tail -n 1)
  printf '%s' "$l" | md_escape 200
}

# Without a GPU: ddpm must refuse CMD for want of a GPU (exit 1), not as a usage error (exit 2).
argcheck() { # argcheck LOG CMD...
  local log=$1
  shift
  run_cmd "$log" 20 "$@"
  case "$RC" in
    2) ARGNOTE="command line REJECTED (usage error): $(why "$log")" && PROBLEMS=$((PROBLEMS + 1)) ;;
    0) ARGNOTE="command line accepted (it ran without a GPU)" ;;
    *) ARGNOTE="command line accepted (ddpm stops at: $(why "$log" | sed 's/^error: //' | cut -c 1-60)…)" ;;
  esac
}

skip_note() { printf 'no GPU'; } # the header says why

# The summary's tables come from this (Python 3, standard library only): bench rows with the
# PyTorch numbers, and the CUDA suite's results.
cat >"$W/report.py" <<'PY'
import json, os, sys

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def last_json(path):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None

def bench_table(wdir, sbs_dirs):
    """Step 3's rows (bench/<key>.log + .row) with the eager / compile numbers of side_by_side."""
    torch = {}  # (preset, batch, task, precision, engine) -> images/s
    for d in sbs_dirs:
        res = load(os.path.join(d, "results.json")) or {}
        rows = res.get("rows", {})
        for rec in res.get("runs", []):
            r, eng = rows.get(rec.get("row")), rec.get("engine")
            out = rec.get("result") or {}
            if r and eng in ("eager", "compile") and out.get("images_per_s"):
                torch[(r["preset"], int(r["batch"]), r["task"], r.get("effective_precision") or r["precision"], eng)] = out["images_per_s"]
    lines = ["| row | conv | ddpm img/s | ms/step | peak RSS MiB | eager img/s | ddpm/eager | compile img/s | ddpm/compile |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted(f[:-4] for f in os.listdir(os.path.join(wdir, "bench")) if f.endswith(".row"))
    keys.sort(key=lambda k: int(open(os.path.join(wdir, "bench", k + ".row")).read().split()[0]))
    for k in keys:
        order, preset, batch, task, prec, conv, status = open(os.path.join(wdir, "bench", k + ".row")).read().split("\t")[:7]
        status = status.strip()
        res = last_json(os.path.join(wdir, "bench", k + ".log"))
        label = f"{task} {preset} ×{batch} {prec}"
        cells = [label, conv]
        if res and res.get("images_per_s") and status == "ok":
            ips = res["images_per_s"]
            rss = res.get("peak_rss_bytes")
            cells += [f"{ips:.1f}", f"{res.get('ms_per_step', 0):.2f}", f"{rss / 2**20:.0f}" if rss else "—"]
        else:
            ips = None
            cells += [status, "—", "—"]
        for eng in ("eager", "compile"):
            t = torch.get((preset, int(batch), task, prec, eng))
            cells.append(f"{t:.1f}" if t else "—")
            cells.append(f"{ips / t:.2f}×" if (t and ips) else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

def suite(tsv):
    """The CUDA suite's results (name, status, seconds, message): counts and the failures."""
    rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
    counts = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: -x[1])))
    bad = [r for r in rows if r[1] != "ok"]
    if all(r[1] == "SKIPPED" for r in rows):
        bad = []  # the reason is in the steps table
    if bad:
        print()
        print("| test | status | s | message |")
        print("|---|---|---:|---|")
        for r in bad[:40]:
            msg = (r[3] if len(r) > 3 else "").replace("|", "/")[:220]
            print(f"| {r[0]} | {r[1]} | {r[2]} | {msg} |")
        if len(bad) > 40:
            print(f"\n… and {len(bad) - 40} more (cuda.log)")
    slow = sorted((r for r in rows if r[1] == "ok"), key=lambda r: -float(r[2] or 0))[:5]
    if slow:
        print("\nslowest passing: " + ", ".join(f"{r[0]} {float(r[2]):.1f} s" for r in slow))

def losses(path):
    """(step, loss) rows of a run's log.csv (one row every few steps)."""
    out = []
    for line in open(path).read().splitlines()[1:]:
        c = line.split(",")
        try:
            out.append((int(c[0]), float(c[1]), float(c[4])))
        except (ValueError, IndexError):
            pass
    return out

def loss_note(path):
    rows = losses(path)
    if not rows:
        return "no log.csv rows"
    tail = rows[-5:]
    return (f"loss {rows[0][1]:.4f} at step {rows[0][0]} → {rows[-1][1]:.4f} at step {rows[-1][0]} "
            f"(mean of the last {len(tail)} rows {sum(r[1] for r in tail) / len(tail):.4f}); "
            f"{rows[-1][2]:.0f} images/s")

def compare(gpu_csv, cpu_csv):
    g, c = {r[0]: r for r in losses(gpu_csv)}, {r[0]: r for r in losses(cpu_csv)}
    steps = sorted(set(g) & set(c))
    if not steps:
        print("no common steps in the two logs")
        return
    tail = steps[-5:]
    mg, mc = sum(g[s][1] for s in tail) / len(tail), sum(c[s][1] for s in tail) / len(tail)
    print(f"mean loss of the last {len(tail)} logged steps: GPU {mg:.4f}, CPU {mc:.4f} "
          f"({100 * (mg - mc) / mc:+.1f}%); CPU {c[steps[-1]][2]:.0f} images/s")
    print("| step | GPU loss | CPU loss |")
    print("|---:|---:|---:|")
    pick = sorted(set(steps[:: max(1, len(steps) // 6)] + [steps[-1]]))
    for s in pick:
        print(f"| {s} | {g[s][1]:.4f} | {c[s][1]:.4f} |")

if __name__ == "__main__":
    if sys.argv[1] == "bench":
        print(bench_table(sys.argv[2], sys.argv[3:]))
    elif sys.argv[1] == "suite":
        suite(sys.argv[2])
    elif sys.argv[1] == "losses":
        print(loss_note(sys.argv[2]))
    elif sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
PY

# --- 1. the machine ------------------------------------------------------------------------------

CURRENT="step 1 (machine) since t=$(now) s"
say "output: $O; bundle: $B; budget $BUDGET s"
if [ ! -x "$DDPM" ]; then
  GPU_LINE="unknown: no bundle at $B (build it with scripts/gpu-bundle.sh and carry bundle/)"
  record "1 machine" FAILED 0 "no $DDPM: build the bundle with scripts/gpu-bundle.sh, carry bundle/"
  CURRENT=""
  checkpoint
  say "no bundle at $B"
  exit 1
fi
chmod +x "$B"/bin/* "$B"/tests/* "$B"/benches/* 2>/dev/null
# shellcheck source=gpu-env.sh
if [ -f "$B/env.sh" ]; then . "$B/env.sh"; else . "$ROOT/scripts/gpu-env.sh"; fi
{
  echo "# ddpm GPU check, $STARTED_UTC"
  echo "$(uname -srm), $(nproc) CPUs, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory; $(ldd --version 2>&1 | head -n 1)"
  echo "python3: $(command -v python3) $(python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
} >"$W/machine.txt"

run_cmd "$W/ddpm-info.log" 15 "$DDPM" info
info_status=$STATUS
info_rc=$RC

smi=""
if command -v nvidia-smi >/dev/null; then
  run_cmd "$W/nvidia-smi.log" 15 nvidia-smi
  run_cmd "$W/nvidia-smi-query.csv" 15 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_cap,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
  smi=$(grep -v '^\$' "$W/nvidia-smi-query.csv" | sed -n 2p)
fi

# Which file each library name resolves to, as the loader sees it after env.sh.
cat >"$W/resolve.py" <<'PY'
import ctypes, sys
for name in sys.argv[1:]:
    try:
        ctypes.CDLL(name)
    except OSError as e:
        print(f"{name}: not loadable ({str(e)[:120]})")
        continue
    path = "?"
    with open("/proc/self/maps") as f:
        for line in f:
            if name.split(".so")[0] + ".so" in line:
                path = line.split()[-1]
                break
    print(f"{name}: loads {path}")
PY
resolved="$(timeout 15 python3 "$W/resolve.py" libcuda.so.1 libcublas.so.13 libcublasLt.so.13 2>&1)"
sanitizer_version=""
if command -v compute-sanitizer >/dev/null; then
  sanitizer_version="$(timeout 15 compute-sanitizer --version 2>&1 | grep -i version | head -n 1)"
fi

if grep -q 'kernels run here' "$W/ddpm-info.log"; then
  HAVE_GPU=1
elif [ -n "$smi" ]; then
  HAVE_GPU=1 # nvidia-smi sees a GPU that ddpm does not: run the GPU steps, they will say why
fi
if [ "${DDPM_GPU_CHECK_DRY:-0}" = 1 ]; then
  HAVE_GPU=0
  NO_GPU_WHY="DDPM_GPU_CHECK_DRY=1"
fi
if [ "$HAVE_GPU" = 1 ]; then
  GPU_LINE="${smi:-$(grep -m 1 '^  \[0\]' "$W/ddpm-info.log" | sed 's/^ *//')}"
else
  [ -n "$NO_GPU_WHY" ] || NO_GPU_WHY="$(command -v nvidia-smi >/dev/null && echo "nvidia-smi lists no GPU" || echo "no nvidia-smi"); ddpm info: $(grep -m 1 '^CUDA driver' "$W/ddpm-info.log" | md_escape 120)"
  GPU_LINE="no GPU: $NO_GPU_WHY; $(uname -m), $(nproc) CPUs"
fi
{
  echo "## 1. Machine"
  echo
  echo '```'
  grep -v '^\$ ' "$W/ddpm-info.log" | head -n 30
  [ -n "$smi" ] && echo "nvidia-smi: $smi"
  echo "--- libraries (bundle/env.sh)"
  printf '%s\n' "$DDPM_ENV_REPORT"
  printf '%s\n' "$resolved"
  echo "compute-sanitizer: ${sanitizer_version:-not found}"
  cat "$W/machine.txt"
  echo '```'
} >"$W/sec-1.md"
note="$(grep -m 1 '^CUDA driver' "$W/ddpm-info.log" | md_escape 100); $(grep -m 1 '^CUDA kernels' "$W/ddpm-info.log" | sed 's/ in [0-9]* modules.*//' | md_escape 100)"
[ "$info_status" = ok ] || note="ddpm info exit $info_rc: $(why "$W/ddpm-info.log")"
record "1 machine" "$info_status" "$(now)" "$note"
say "machine: $GPU_LINE"
CURRENT=""
checkpoint

# --- 2. the CUDA suite ---------------------------------------------------------------------------

: >"$W/cuda-results.tsv"
# cuda_results_from LOG: adds the "test NAME ... ok|FAILED|SKIPPED" lines of LOG not yet recorded.
cuda_results_from() {
  local name rest status secs msg
  while IFS= read -r line; do
    name="${line#test }"
    name="${name%% ... *}"
    rest="${line#* ... }"
    grep -q "^$name	" "$W/cuda-results.tsv" && continue
    secs="" msg=""
    case "$rest" in
      ok*) status=ok && secs="$(printf '%s' "$rest" | sed -n 's/^ok (\([0-9.]*\) s).*/\1/p')" ;;
      FAILED*) status=FAILED && msg="${rest#FAILED}" && msg="${msg#: }" ;;
      SKIPPED*) status=SKIPPED && msg="${rest#SKIPPED }" ;;
      *) continue ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "${secs:-}" "$(printf '%s' "$msg" | md_escape 400)" >>"$W/cuda-results.tsv"
  done < <(grep -a '^test .* \.\.\. ' "$1")
}
has_result() { grep -q "^$1	" "$W/cuda-results.tsv"; }

cuda_section() {
  {
    echo "## 2. CUDA suite"
    echo
    if [ -s "$W/cuda-results.tsv" ]; then
      python3 "$W/report.py" suite "$W/cuda-results.tsv" 2>&1
    else
      echo "no results"
    fi
    [ -f "$W/extra-2.md" ] && cat "$W/extra-2.md"
  } >"$W/sec-2.md"
  cp "$W/cuda.log" "$O/cuda.log" 2>/dev/null
}

CURRENT="step 2 (CUDA suite) since t=$(now) s"
write_summary
t_step=$SECONDS
names=()
if [ -x "$SUITE" ]; then
  mapfile -t names < <(timeout 20 "$SUITE" --list 2>/dev/null | sed -n 's/: test$//p')
fi
if [ ! -x "$SUITE" ]; then
  record "2 cuda suite" FAILED 0 "no $SUITE in the bundle"
elif [ "${#names[@]}" -eq 0 ]; then
  record "2 cuda suite" FAILED 0 "the suite listed no tests ($SUITE --list)"
elif [ "$HAVE_GPU" != 1 ]; then
  echo "## 2. CUDA suite" >"$W/sec-2.md"
  echo >>"$W/sec-2.md"
  echo "SKIPPED: no GPU ($NO_GPU_WHY); the suite lists ${#names[@]} tests (\`bundle/tests/cuda --list\`)." >>"$W/sec-2.md"
  record "2 cuda suite" "SKIPPED" 0 "$(skip_note); ${#names[@]} tests listed"
  record "2 compute-sanitizer" "SKIPPED" 0 "no GPU; $(command -v compute-sanitizer >/dev/null && echo "found: $sanitizer_version" || echo "compute-sanitizer not found here")"
else
  say "CUDA suite: ${#names[@]} tests, ${PER_TEST} s each at most"
  printf '$ DDPM_REQUIRE_GPU=1 %s   # %s tests\n' "$SUITE" "${#names[@]}" >"$W/cuda.log"
  # Pass 1: one process, a watchdog on the time since the last finished test. Sanitizer time
  # (40 s) is kept back from the step's deadline.
  pass1_end=$((DEADLINE[cuda] - 40))
  DDPM_REQUIRE_GPU=1 "$SUITE" </dev/null >>"$W/cuda.log" 2>&1 &
  pid=$!
  done_n=0 since=$SECONDS refreshed=$SECONDS killed=""
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    n=$(grep -ac '^test .* \.\.\. ' "$W/cuda.log")
    if [ "$n" != "$done_n" ]; then done_n=$n since=$SECONDS; fi
    if [ $((SECONDS - since)) -gt "$PER_TEST" ]; then
      killed="hung"
    elif [ "$(now)" -ge "$pass1_end" ]; then
      killed="budget"
    fi
    if [ -n "$killed" ]; then
      kill -TERM "$pid" 2>/dev/null
      sleep 2
      kill -KILL "$pid" 2>/dev/null
      break
    fi
    if [ $((SECONDS - refreshed)) -ge 10 ]; then
      refreshed=$SECONDS
      cuda_results_from "$W/cuda.log"
      CURRENT="step 2 (CUDA suite, $(wc -l <"$W/cuda-results.tsv")/${#names[@]} tests done) since t=$((t_step - T0)) s"
      cuda_section
      write_summary
    fi
  done
  wait "$pid" 2>/dev/null
  rc=$?
  cuda_results_from "$W/cuda.log"
  n=$(wc -l <"$W/cuda-results.tsv")
  echo "[gpu-check: pass 1 exit $rc${killed:+, killed: $killed}, $n/${#names[@]} tests reported]" >>"$W/cuda.log"
  pass1_note="one process: exit $rc"
  if grep -q 'SKIPPED, not run' "$W/cuda.log"; then
    # DDPM_REQUIRE_GPU=1: the suite could not open the GPU; every test says why.
    pass1_note="the GPU could not be opened: $(grep -m 1 -o 'not run: .*' "$W/cuda.log" | md_escape 200)"
  elif [ "$n" -lt "${#names[@]}" ]; then
    # The test that was running when the process stopped (the list's order is the run order).
    stuck=""
    for t in "${names[@]}"; do has_result "$t" || { stuck=$t && break; }; done
    case "$killed" in
      hung) st=HUNG && why_t="no result after ${PER_TEST} s; killed" ;;
      budget) st="NOT FINISHED" && why_t="running when the step's time ran out" ;;
      *) st=CRASHED && why_t="the suite process ended (exit $rc) while it ran: $(tail -n 3 "$W/cuda.log" | md_escape 200)" ;;
    esac
    [ -n "$stuck" ] && printf '%s\t%s\t%s\t%s\n' "$stuck" "$st" "" "$why_t" >>"$W/cuda-results.tsv"
    pass1_note="one process: stopped at $stuck ($st)"
    # The rest, one process each, while time is left.
    for t in "${names[@]}"; do
      has_result "$t" && continue
      l=$((DEADLINE[cuda] - 40 - $(now)))
      if [ "$l" -lt 5 ]; then
        printf '%s\tNOT RUN\t\tthe step'"'"'s time ran out\n' "$t" >>"$W/cuda-results.tsv"
        continue
      fi
      echo "--- alone: $t" >>"$W/cuda.log"
      DDPM_REQUIRE_GPU=1 run_cmd "$W/cuda.log" $((l < PER_TEST ? l : PER_TEST)) "$SUITE" "$t"
      cuda_results_from "$W/cuda.log"
      if ! has_result "$t"; then
        printf '%s\t%s\t%s\t%s\n' "$t" "$([ "$STATUS" = TIMEOUT ] && echo HUNG || echo CRASHED)" "$SECS" \
          "run alone: $STATUS (exit $RC): $(tail -n 2 "$W/cuda.log" | md_escape 160)" >>"$W/cuda-results.tsv"
      fi
    done
    pass1_note="$pass1_note; the rest run one process each"
  fi
  counts=$(awk -F'\t' '{ c[$2]++ } END { for (s in c) printf "%s%d %s", (n++ ? ", " : ""), c[s], s }' "$W/cuda-results.tsv")
  bad_n=$(awk -F'\t' '$2 != "ok"' "$W/cuda-results.tsv" | wc -l)
  record "2 cuda suite" "$([ "$bad_n" -eq 0 ] && [ "$(wc -l <"$W/cuda-results.tsv")" -eq "${#names[@]}" ] && echo ok || echo FAILED)" \
    "$((SECONDS - t_step))" "${#names[@]} tests: $counts; $pass1_note"
  cuda_section
  write_summary

  # The first failure under compute-sanitizer: memcheck, then racecheck if 30 s are left.
  # (A failure or crash first; a hung test only when there is none: it would hang there too.)
  first_bad="$(awk -F'\t' '$2 == "FAILED" || $2 == "CRASHED" { print $1; exit }' "$W/cuda-results.tsv")"
  [ -n "$first_bad" ] || first_bad="$(awk -F'\t' '$2 == "HUNG" { print $1; exit }' "$W/cuda-results.tsv")"
  if grep -q 'SKIPPED, not run' "$W/cuda.log"; then
    record "2 compute-sanitizer" SKIPPED 0 "the suite could not open the GPU"
  elif [ -z "$first_bad" ]; then
    record "2 compute-sanitizer" SKIPPED 0 "no failing test to check"
  elif ! command -v compute-sanitizer >/dev/null; then
    record "2 compute-sanitizer" "NOT RUN" 0 "compute-sanitizer not found (bundle/env.sh looked in the CUDA folders)"
  else
    CURRENT="step 2 (compute-sanitizer on $first_bad) since t=$(now) s"
    write_summary
    : >"$O/sanitizer.txt"
    for tool in memcheck racecheck; do
      l=$(left cuda)
      want=60
      [ "$tool" = racecheck ] && want=45
      if [ "$l" -lt 30 ] || { [ "$tool" = racecheck ] && [ -n "${refused:-}" ]; }; then
        record "2 $tool" SKIPPED 0 "$([ -n "${refused:-}" ] && echo "compute-sanitizer refused the device" || echo "out of the step's time ($l s left)"): $first_bad"
        continue
      fi
      log="$W/sanitizer-$tool.log"
      echo "===== compute-sanitizer --tool $tool on $first_bad" >>"$O/sanitizer.txt"
      DDPM_REQUIRE_GPU=1 run_cmd "$log" $((l - 5 < want ? l - 5 : want)) compute-sanitizer --tool "$tool" \
        --print-limit 30 --error-exitcode 99 "$SUITE" "$first_bad"
      head -c 400000 "$log" >>"$O/sanitizer.txt"
      errs=$(grep -aoE 'ERROR SUMMARY: [0-9]+ errors?|RACECHECK SUMMARY: [0-9]+ hazards?[^\n]*' "$log" | head -n 1)
      first=$(grep -a -E '^========= (Invalid|Program hit|Race|Error|Warning|.*hazard)' "$log" | grep -av SUMMARY | head -n 1 | md_escape 200)
      if grep -aqiE 'device not supported|not supported on this device|unable to (find|load|initialize)' "$log"; then
        refused=1
        record "2 $tool" "REFUSED" "$SECS" "compute-sanitizer refused: $(grep -a -m 1 -iE 'not supported|error|unable' "$log" | md_escape 160); going on"
      else
        case "$RC" in 0) st=ok ;; 99) st="ERRORS FOUND" ;; *) st=$STATUS ;; esac
        record "2 $tool" "$st" "$SECS" "$first_bad: ${errs:-no summary line}${first:+; $first}"
      fi
      echo >>"$O/sanitizer.txt"
    done
    # One line of each sanitizer report in the suite's section.
    {
      echo
      echo "compute-sanitizer on \`$first_bad\` (full reports: sanitizer.txt):"
      echo '```'
      for f in "$W"/sanitizer-*.log; do
        [ -f "$f" ] || continue
        echo "--- ${f##*/sanitizer-}"
        grep -a -E 'ERROR SUMMARY|RACECHECK SUMMARY|^========= (Invalid|Program hit|Race|Error|.*hazard)|at .*0x' "$f" | head -n 12 | cut -c 1-200
      done
      echo '```'
    } >>"$W/extra-2.md"
  fi

  # Other failures, one process each: a failure after a sticky CUDA error may pass alone.
  mapfile -t bad < <(awk -F'\t' -v first="$first_bad" '$2 == "FAILED" && $1 != first { print $1 }' "$W/cuda-results.tsv")
  if [ "${#bad[@]}" -gt 0 ]; then
    alone=() k=0
    for t in "${bad[@]}"; do
      l=$(left cuda)
      [ "$l" -lt 10 ] && break
      DDPM_REQUIRE_GPU=1 run_cmd "$W/cuda-alone.log" $((l - 3 < PER_TEST ? l - 3 : PER_TEST)) "$SUITE" "$t"
      if grep -aq "^test $t \.\.\. ok" "$W/cuda-alone.log"; then alone+=("$t: passes alone"); else alone+=("$t: fails alone"); fi
      k=$((k + 1))
    done
    {
      echo
      echo "The other failures rerun one process each ($k of ${#bad[@]}; a failure that passes alone followed a sticky error):"
      printf -- '- %s\n' "${alone[@]}"
    } >>"$W/extra-2.md"
  fi
  cuda_section
fi
CURRENT=""
checkpoint

# --- 3. ddpm benches -----------------------------------------------------------------------------

# order|key|preset|batch|task|precision|conv|timeout
BENCH_ROWS=(
  "1|train-tiny-bf16|tiny|128|train|bf16|im2col|20"
  "2|train-tiny-bf16-shifted|tiny|128|train|bf16|shifted|20"
  "3|train-tiny-fp32|tiny|128|train|fp32|im2col|20"
  "4|train-cifar10-bf16|ddpm-cifar10|128|train|bf16|im2col|35"
  "5|train-cifar10-bf16-shifted|ddpm-cifar10|128|train|bf16|shifted|35"
  "6|train-cifar10-fp32|ddpm-cifar10|128|train|fp32|im2col|40"
  "7|sample-cifar10-bf16|ddpm-cifar10|256|sample|bf16|im2col|40"
)
SBS_DIRS=("$O/side_by_side") # where the eager / compile numbers come from

bench_section() {
  {
    echo "## 3–4. ddpm against PyTorch"
    echo
    echo "ddpm: \`ddpm bench train|sample --device cuda --json\` (train: 3 warm-up + 15 timed steps; sample: one DDIM-50 pass after a DDIM-2 warm-up). PyTorch eager and torch.compile: scripts/side_by_side.py on the same preset, batch, task and precision (train: 3 + 10 steps); the ratio is ddpm's images/s over PyTorch's (above 1: ddpm faster). side_by_side/table.md has its own table (ddpm run again there), with MFU and memory."
    echo
    python3 "$W/report.py" bench "$W" "${SBS_DIRS[@]}" 2>&1
    if [ -s "$W/criterion.txt" ]; then
      echo
      echo "criterion (bundle/benches/cuda_ops, group norm and optimizer rows; time per launch against the copy-bandwidth and FP32 floors):"
      echo '```'
      cat "$W/criterion.txt"
      echo '```'
    fi
  } >"$W/sec-3.md"
}

CURRENT="step 3 (ddpm benches) since t=$(now) s"
write_summary
for spec in "${BENCH_ROWS[@]}"; do
  IFS='|' read -r order key preset batch task prec conv tmo <<<"$spec"
  log="$W/bench/$key.log"
  cmd=("$DDPM" bench "$task" --preset "$preset" --batch-size "$batch" --precision "$prec" --device cuda --json)
  if [ "$task" = train ]; then cmd+=(--steps 15 --warmup 3); else cmd+=(--steps 50 --warmup 2); fi
  name="3 $task $preset ×$batch $prec${conv:+ $conv}"
  if [ "$HAVE_GPU" != 1 ]; then
    DDPM_CONV=$conv argcheck "$log" "${cmd[@]}"
    record "$name" SKIPPED 0 "$(skip_note); $ARGNOTE"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$order" "$preset" "$batch" "$task" "$prec" "$conv" "SKIPPED" >"$W/bench/$key.row"
    continue
  fi
  l=$(($(left bench) - 5))
  if [ "$l" -lt 8 ]; then
    record "$name" SKIPPED 0 "out of the step's time"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$order" "$preset" "$batch" "$task" "$prec" "$conv" "not run" >"$W/bench/$key.row"
    continue
  fi
  CURRENT="step 3 ($key) since t=$(now) s"
  write_summary
  say "bench $key"
  DDPM_CONV=$conv run_cmd "$log" $((l < tmo ? l : tmo)) "${cmd[@]}"
  ips=$(python3 -c 'import json,sys
for l in reversed(open(sys.argv[1], errors="replace").read().splitlines()):
    if l.startswith("{"):
        d = json.loads(l); print("%.1f images/s, %.2f ms/step" % (d["images_per_s"], d["ms_per_step"])); break' "$log" 2>/dev/null)
  record "$name" "$STATUS" "$SECS" "$([ "$STATUS" = ok ] && echo "${ips:-no JSON line}" || why "$log")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$order" "$preset" "$batch" "$task" "$prec" "$conv" "$STATUS" >"$W/bench/$key.row"
  bench_section
  write_summary
done

# The criterion rows: group norm and the optimizer passes (regex filter), short measurement.
crit_filter='^(group_norm|optim)/'
crit_cmd=("$CRIT" --bench --warm-up-time 0.5 --measurement-time 1 --sample-size 10 --noplot "$crit_filter")
if [ ! -x "$CRIT" ]; then
  record "3 criterion group_norm, optim" FAILED 0 "no $CRIT in the bundle"
elif [ "$HAVE_GPU" != 1 ]; then
  run_cmd "$W/criterion.log" 20 "${crit_cmd[@]}"
  record "3 criterion group_norm, optim" SKIPPED 0 "$(skip_note); the bench starts and says: $(grep -v '^\$ ' "$W/criterion.log" | head -n 1 | md_escape 120)"
else
  l=$(($(left bench) - 5))
  if [ "$l" -lt 15 ]; then
    record "3 criterion group_norm, optim" SKIPPED 0 "out of the step's time"
  else
    CURRENT="step 3 (criterion) since t=$(now) s"
    write_summary
    say "criterion $crit_filter"
    CRITERION_HOME="$W/criterion-data" run_cmd "$W/criterion.log" $((l < 60 ? l : 60)) "${crit_cmd[@]}"
    # The bench's own header and its roofline tables, then criterion's time lines.
    {
      grep -a -E '^(cuda_ops on|copy bandwidth|FP32|fp32)' "$W/criterion.log" | head -n 3
      awk '/vs roofline/ { p = 1 } p { print } p && /^$/ { p = 0 }' "$W/criterion.log"
      tr '\r' '\n' <"$W/criterion.log" | awk '
        function flush() { if (pending) print line; pending = 0 }
        /^Benchmarking / { next }
        /time:/ {
          flush(); i = index($0, "time:"); pre = substr($0, 1, i - 1); sub(/ +$/, "", pre)
          if (pre != "") name = pre
          t = substr($0, i); gsub(/ +/, " ", t); line = name "  " t; pending = 1; next
        }
        /thrpt:/ && pending { t = $0; sub(/^ +/, "", t); gsub(/ +/, " ", t); line = line "  " t; next }
        /^[^ ]/ && !/^(Found|Warning|Gnuplot|\$ )/ { flush(); name = $0; next }
        { flush() }
        END { flush() }' | cut -c 1-200
    } | head -n 80 >"$W/criterion.txt"
    rm -rf "$W/criterion-data"
    record "3 criterion group_norm, optim" "$STATUS" "$SECS" \
      "$(grep -ac 'time:' "$W/criterion.log") rows$([ "$STATUS" = ok ] || echo "; $(why "$W/criterion.log")")"
  fi
fi
bench_section
CURRENT=""
checkpoint

# --- 4. PyTorch through side_by_side.py ----------------------------------------------------------

SBS=(python3 "$ROOT/scripts/side_by_side.py" --ddpm "$DDPM" --device cuda --engines ddpm,eager
  --train-steps 10 --train-warmup 3)
CURRENT="step 4 (PyTorch eager via side_by_side.py) since t=$(now) s"
write_summary
if [ ! -f "$ROOT/scripts/side_by_side.py" ]; then
  record "4 pytorch eager" FAILED 0 "no scripts/side_by_side.py in $ROOT"
elif [ "$HAVE_GPU" != 1 ]; then
  # The same command line, with no time to run anything: checks that it is accepted.
  run_cmd "$W/side_by_side.log" 30 "${SBS[@]}" --rows cifar10-train-bf16,cifar10-train-fp32,cifar10-sample-bf16 \
    --budget 0 --out "$W/side_by_side-dry"
  torch_here="$(timeout 30 python3 -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch in python3 here")"
  record "4 pytorch eager" SKIPPED 0 "$(skip_note); side_by_side.py $([ "$RC" = 0 ] && echo "accepts the command line" || echo "FAILED on the command line (exit $RC): $(why "$W/side_by_side.log")"); $torch_here"
else
  l=$(($(left pytorch) - 5))
  if [ "$l" -lt 30 ]; then
    record "4 pytorch eager" SKIPPED 0 "out of the step's time ($l s left)"
  else
    say "side_by_side.py: cifar10 rows, ddpm and eager"
    PYTHONUNBUFFERED=1 run_cmd "$W/side_by_side.log" "$l" "${SBS[@]}" \
      --rows cifar10-train-bf16,cifar10-train-fp32,cifar10-sample-bf16 --budget $((l - 5)) --timeout 90 \
      --out "$O/side_by_side"
    errs=$(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(sum(1 for r in d.get("runs", []) if r.get("error")))' "$O/side_by_side/results.json" 2>/dev/null)
    record "4 pytorch eager (cifar10 rows)" "$STATUS" "$SECS" \
      "side_by_side/table.md; ${errs:-?} runs with errors$([ "$STATUS" = ok ] || echo "; $(why "$W/side_by_side.log")")"
    l=$(($(left pytorch) - 5))
    if [ "$l" -ge 25 ]; then
      say "side_by_side.py: tiny ×128, ddpm and eager"
      PYTHONUNBUFFERED=1 run_cmd "$W/side_by_side-tiny.log" "$l" "${SBS[@]}" --rows tiny-train --batch-size 128 \
        --budget $((l - 5)) --timeout 60 --out "$W/side_by_side-tiny"
      SBS_DIRS+=("$W/side_by_side-tiny")
      record "4 pytorch eager (tiny ×128)" "$STATUS" "$SECS" "$([ "$STATUS" = ok ] || why "$W/side_by_side-tiny.log")"
    else
      record "4 pytorch eager (tiny ×128)" SKIPPED 0 "out of the step's time"
    fi
  fi
fi
bench_section
CURRENT=""
checkpoint

# --- 5. a short training run and a DDIM-50 grid --------------------------------------------------

train_dev=cuda
[ "$HAVE_GPU" != 1 ] && [ "${DDPM_GPU_CHECK_CPU:-0}" = 1 ] && train_dev=cpu
run_dir="$W/train-run"
train_cmd=("$DDPM" train --device "$train_dev" --model tiny --data synthetic --steps "$TRAIN_STEPS"
  --sample-every "$TRAIN_STEPS" --checkpoint-every "$TRAIN_STEPS" --out "$run_dir")
sample_cmd=("$DDPM" sample --device "$train_dev" --checkpoint "$run_dir" --sampler ddim --steps 50 --num 64
  --batch-size 64 --no-ema --out "$W/ddim50")
CURRENT="step 5 (train $TRAIN_STEPS steps on $train_dev) since t=$(now) s"
write_summary
if [ "$HAVE_GPU" != 1 ] && [ "$train_dev" != cpu ]; then
  argcheck "$W/train.log" "${train_cmd[@]}"
  record "5 train tiny $TRAIN_STEPS steps" SKIPPED 0 "$(skip_note); $ARGNOTE"
  record "5 sample DDIM-50 grid" SKIPPED 0 "$(skip_note); no checkpoint to sample"
else
  l=$(($(left train) - 5))
  [ "$train_dev" = cpu ] && l=600 # the CPU stand-in is not held to the GPU budget
  if [ "$l" -lt 15 ]; then
    record "5 train tiny $TRAIN_STEPS steps" SKIPPED 0 "out of the step's time"
  else
    say "train tiny, $TRAIN_STEPS steps on $train_dev"
    run_cmd "$W/train.log" $((l - 15)) "${train_cmd[@]}"
    last=$(python3 "$W/report.py" losses "$run_dir/log.csv" 2>/dev/null)
    record "5 train tiny $TRAIN_STEPS steps ($train_dev)" "$STATUS" "$SECS" "${last:-no log.csv row}$([ "$STATUS" = ok ] || echo "; $(why "$W/train.log")")"
    [ -f "$run_dir/loss.png" ] && cp "$run_dir/loss.png" "$O/train-loss.png"
    checkpoint
    l=$(($(left train) - 3))
    [ "$train_dev" = cpu ] && l=300
    if [ ! -d "$run_dir/checkpoints" ]; then
      record "5 sample DDIM-50 grid" SKIPPED 0 "no checkpoint from the training run"
    elif [ "$l" -lt 5 ]; then
      record "5 sample DDIM-50 grid" SKIPPED 0 "out of the step's time"
    else
      CURRENT="step 5 (DDIM-50 sampling) since t=$(now) s"
      write_summary
      run_cmd "$W/sample.log" "$l" "${sample_cmd[@]}"
      [ -f "$W/ddim50/grid.png" ] && cp "$W/ddim50/grid.png" "$O/ddim50-grid.png"
      record "5 sample DDIM-50 grid ($train_dev)" "$STATUS" "$SECS" "$([ -f "$O/ddim50-grid.png" ] && echo "ddim50-grid.png: 64 images, raw weights (--no-ema) after $TRAIN_STEPS steps" || why "$W/sample.log")"
      rm -f "$W"/ddim50/sample_*.png
    fi
    # The same run on the CPU (fp32, the machine's cores), when time is left: the losses of the
    # whole training loop, GPU against CPU, at the same steps.
    l=$(($(left train) - 3))
    if [ "$train_dev" = cuda ] && [ -f "$run_dir/log.csv" ]; then
      if [ "$l" -lt 20 ]; then
        record "5 same run on the CPU" SKIPPED 0 "out of the step's time ($l s left)"
      else
        CURRENT="step 5 (the same run on the CPU) since t=$(now) s"
        write_summary
        cpu_cmd=("${train_cmd[@]}")
        cpu_cmd[3]=cpu # --device cpu
        cpu_cmd[-1]="$W/train-cpu"
        run_cmd "$W/train-cpu.log" "$l" "${cpu_cmd[@]}"
        cmp=$(python3 "$W/report.py" compare "$run_dir/log.csv" "$W/train-cpu/log.csv" 2>&1)
        record "5 same run on the CPU" "$STATUS" "$SECS" "$([ "$STATUS" = ok ] && printf '%s' "$cmp" | head -n 1 || why "$W/train-cpu.log")"
      fi
    fi
  fi
  {
    echo "## 5. Training"
    echo
    echo "\`ddpm train --model tiny --data synthetic --steps $TRAIN_STEPS --device $train_dev\`; the last log lines:"
    echo '```'
    grep -av '^\$ ' "$W/train.log" 2>/dev/null | tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n 6 | cut -c 1-200
    echo '```'
    [ -f "$O/ddim50-grid.png" ] && echo "DDIM-50 grid: ddim50-grid.png; loss curve: train-loss.png."
    if [ -f "$W/train-cpu/log.csv" ]; then
      echo
      echo "The same run on the CPU (fp32; same seed and settings; the GPU run used the default precision, bf16):"
      echo
      python3 "$W/report.py" compare "$run_dir/log.csv" "$W/train-cpu/log.csv" 2>&1 | tail -n +2
    fi
  } >"$W/sec-5.md"
fi
CURRENT=""
checkpoint

# --- 6. torch.compile, only with time to spare ---------------------------------------------------

l=$(($(left compile) - 5))
if [ "$HAVE_GPU" != 1 ]; then
  record "6 torch.compile" SKIPPED 0 "$(skip_note)"
elif [ "$l" -lt 100 ]; then
  record "6 torch.compile" SKIPPED 0 "only $l s left (needs 100)"
else
  CURRENT="step 6 (torch.compile of cifar10-train-bf16) since t=$(now) s"
  write_summary
  say "side_by_side.py: torch.compile of cifar10-train-bf16 ($l s)"
  PYTHONUNBUFFERED=1 run_cmd "$W/side_by_side-compile.log" "$l" python3 "$ROOT/scripts/side_by_side.py" \
    --ddpm "$DDPM" --device cuda --engines compile --rows cifar10-train-bf16 --train-steps 10 --train-warmup 3 \
    --budget $((l - 5)) --timeout $((l - 5)) --out "$W/side_by_side-compile"
  SBS_DIRS+=("$W/side_by_side-compile")
  record "6 torch.compile (cifar10-train-bf16)" "$STATUS" "$SECS" "$([ "$STATUS" = ok ] || why "$W/side_by_side-compile.log")"
  bench_section
fi

CURRENT=""
checkpoint
say "done after $(now) s; $PROBLEMS step(s) not ok; files in $O: $(cd "$O" && find . -type f ! -name '.*' | sed 's|^\./||' | sort | tr '\n' ' ')"
echo
cat "$O/summary.md"
if [ "$HAVE_GPU" != 1 ]; then
  exit 0
fi
[ "$PROBLEMS" -eq 0 ]
