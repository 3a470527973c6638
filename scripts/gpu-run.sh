#!/usr/bin/env bash
# Runs the bundle that scripts/gpu-bundle.sh built, on the lent GPU machine (copied there as
# bundle/run.sh; run from the repository root):
#
#   bash bundle/run.sh
#
# Steps, most important first, each under its own `timeout` and inside one overall time budget
# (DDPM_GPU_RUN_BUDGET seconds, default 540, so the whole run fits the device's 600 s per
# command; a step that would start with too little time left is recorded as skipped):
#
#   ddpm-info               bundle/bin/ddpm info
#   cuda                    bundle/tests/cuda, the CUDA parity suite (a test-name filter:
#                           DDPM_CUDA_FILTER; timeout DDPM_CUDA_TIMEOUT, default 180 s)
#   bench-{train,sample}-*  ddpm bench train|sample, presets tiny, ddpm-cifar10 (bf16, fp16,
#                           fp32; bf16 also with DDPM_CONV=shifted) and cifar10-small
#
# The side-by-side comparison with PyTorch is a separate command (torch.compile alone takes
# minutes): . bundle/env.sh; python3 scripts/side_by_side.py --ddpm bundle/bin/ddpm. For the
# first loan, bundle/gpu-check.sh (scripts/gpu-check.sh) is the shorter, prioritised run.
#   precision-curves        scripts/precision_curves.py: tiny for 2000 steps in fp32, bf16 and
#                           fp16, loss curves against fp32 (table in logs/precision/)
#   criterion-<bench>       each bundle/benches/* with --bench and short criterion settings
#                           (DDPM_BENCH_ARGS; a filter: DDPM_BENCH_FILTER)
#   e2e-train, e2e-sample   ddpm train --device cuda --steps 200, then ddpm sample --num 16
#   test-<target>           the CPU test executables (DDPM_GPU_RUN_CPU_TESTS=0 skips them)
#
# DDPM_GPU_RUN_SKIP="criterion-* e2e-*" skips steps by name (globs). A failing step does not
# stop the run. Output: $OUT (default /tmp/ddpm-gpu-out) ends up holding at most these files,
# within the device's limit of 8 returned files:
#
#   summary.md        the table printed at the end: step, status, exit code, seconds, notes
#   gpu.txt           nvidia-smi (name, driver, memory), host, libraries found, the MANIFEST
#   cuda.log          the CUDA suite's full output
#   logs.tar.gz       every step's log, the e2e run directory (without checkpoints), the
#                     samples, and criterion's estimates.json files
#   samples-grid.png, train-loss.png   from the e2e steps, when they got that far
#
# Exit status: 0 when every step that ran succeeded, 1 otherwise.
set -uo pipefail

B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-/tmp/ddpm-gpu-out}"
budget="${DDPM_GPU_RUN_BUDGET:-540}"
reserve=20 # seconds kept back for the summary and packing
LOGS="$OUT/logs"
mkdir -p "$LOGS"
# gpu-bundle.sh packs the executables that only this script runs into more.tar.gz.
if [ -f "$B/more.tar.gz" ]; then
  tar -xzf "$B/more.tar.gz" -C "$B" || echo "gpu-run: could not unpack $B/more.tar.gz"
fi
chmod +x "$B"/bin/* "$B"/tests/* "$B"/benches/* 2>/dev/null
t_start=$SECONDS

names=() statuses=() codes=() times=() notes=()
failed_steps=0

record() { # record NAME STATUS CODE SECONDS NOTE
  names+=("$1") statuses+=("$2") codes+=("$3") times+=("$4") notes+=("$5")
  case "$2" in ok | skipped) ;; *) failed_steps=$((failed_steps + 1)) ;; esac
}

skipped_by_env() { # skipped_by_env NAME
  local pat
  for pat in ${DDPM_GPU_RUN_SKIP:-}; do
    # shellcheck disable=SC2053
    [[ $1 == $pat ]] && return 0
  done
  return 1
}

# The line that best says why a step failed: the first error or panic, else the last line.
why_failed() {
  local l
  l=$(awk '/panicked at/ { getline m; print "panic: " m; exit }
           /^(error|Error|ERROR)/ { print; exit }' "$1" 2>/dev/null)
  [ -n "$l" ] || l=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1)
  printf '%s' "$l" | cut -c 1-120
}

note_for() { # note_for NAME LOG RC: the table's notes column
  local name=$1 log=$2 rc=$3
  case "$name" in
    cuda)
      local ok bad skip why
      ok=$(grep -c '^test .* \.\.\. ok' "$log")
      bad=$(grep -c '^test .* \.\.\. FAILED' "$log")
      skip=$(grep -c '^test .* \.\.\. SKIPPED' "$log")
      printf '%s passed, %s failed, %s skipped' "$ok" "$bad" "$skip"
      why=$(grep -o 'not run: .*' "$log" | head -n 1 | cut -c 1-100)
      [ -n "$why" ] && printf ' (%s)' "$why"
      [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ] && printf '; %s' "$(why_failed "$log")"
      ;;
    test-*)
      # libtest: sum the "test result: ok. 5 passed; 0 failed; 1 ignored; ..." lines.
      awk '/^test result:/ {
             for (i = 1; i <= NF; i++) {
               if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i
               if ($(i+1) ~ /^ignored/) g += $i
             }
             n++
           }
           END { if (n) printf "%d passed, %d failed, %d ignored", p, f, g }' "$log"
      [ "$rc" -ne 0 ] && printf '; %s' "$(why_failed "$log")"
      ;;
    ddpm-info)
      grep -m 1 '^CUDA driver' "$log" | cut -c 1-120
      [ "$rc" -ne 0 ] && why_failed "$log"
      ;;
    e2e-train)
      # the last row of log.csv: step,loss,lr,grad_norm,images_per_s
      local last=
      [ -f "$OUT/run/log.csv" ] && last=$(awk -F, 'NR > 1 { r = $0 } END {
        if (r != "") { split(r, c, ","); printf "step %s: loss %s, %s images/s", c[1], c[2], c[5] } }' \
        "$OUT/run/log.csv")
      printf '%s' "$last"
      [ "$rc" -ne 0 ] && printf '%s%s' "${last:+; }" "$(why_failed "$log")"
      ;;
    criterion-*)
      printf '%s benchmarks' "$(grep -c 'time:' "$log")"
      [ "$rc" -ne 0 ] && printf '; %s' "$(why_failed "$log")"
      ;;
    *)
      [ "$rc" -ne 0 ] && why_failed "$log"
      ;;
  esac
}

run_step() { # run_step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2
  shift 2
  local log="$LOGS/$name.log"
  if skipped_by_env "$name"; then
    record "$name" skipped - 0 "DDPM_GPU_RUN_SKIP"
    return 0
  fi
  local left=$((budget - reserve - (SECONDS - t_start)))
  if [ "$left" -lt 5 ]; then
    record "$name" skipped - 0 "out of time budget (DDPM_GPU_RUN_BUDGET=$budget)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  printf '\n===== %s (timeout %s s): %s\n' "$name" "$limit" "$*"
  printf '$ %s\n' "$*" >"$log"
  local t0 t1 rc status
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" </dev/null 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  case "$rc" in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    126 | 127) status="NOT RUN" ;;
    *) if [ "$rc" -gt 128 ]; then status="signal $((rc - 128))"; else status=FAILED; fi ;;
  esac
  [ "$status" = TIMEOUT ] && echo "[gpu-run: killed after $limit s]" >>"$log"
  record "$name" "$status" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" \
    "$(note_for "$name" "$log" "$rc" | tr '\n|' ' /' | sed 's/ *$//')"
  return 0
}

# --- the machine ------------------------------------------------------------------------------

# bundle/env.sh (scripts/gpu-env.sh): libcuda, libcublas and libcublasLt where the loader finds
# them (LD_LIBRARY_PATH extended from the usual CUDA, driver and pip nvidia/* folders),
# compute-sanitizer and nvidia-smi on PATH, bundle/bin first on PATH.
# shellcheck source=gpu-env.sh
if [ -f "$B/env.sh" ]; then . "$B/env.sh"; else . "$B/../scripts/gpu-env.sh"; fi
mapfile -t lib_report <<<"$DDPM_ENV_REPORT"

gpu_line="no GPU (nvidia-smi not found)"
{
  echo "# nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_cap"
  if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_cap \
      --format=csv 2>&1
    echo
    timeout 20 nvidia-smi 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  echo
  echo "# host"
  echo "$(uname -srm), $(nproc) CPUs, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB memory"}')"
  ldd --version 2>&1 | head -n 1
  echo
  echo "# CUDA libraries (bundle/env.sh)"
  printf '%s\n' "${lib_report[@]}"
  echo
  echo "# bundle/MANIFEST"
  cat "$B/MANIFEST" 2>/dev/null || echo "(no MANIFEST)"
} >"$OUT/gpu.txt"
if command -v nvidia-smi >/dev/null; then
  gpu_line="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>&1 | head -n 1)"
fi
echo "gpu-run: $gpu_line"
printf 'gpu-run: %s\n' "${lib_report[@]}"

# --- the steps, most important first ------------------------------------------------------------

ddpm="$B/bin/ddpm"
run_step ddpm-info 30 "$ddpm" info

DDPM_REQUIRE_GPU=1 run_step cuda "${DDPM_CUDA_TIMEOUT:-180}" "$B/tests/cuda" ${DDPM_CUDA_FILTER:+"$DDPM_CUDA_FILTER"}
# The suite exits 0 when it finds no usable GPU; on the GPU machine that is a failure.
if [ "${names[-1]}" = cuda ] && [ "${statuses[-1]}" = ok ] &&
  grep -q 'SKIPPED, not run' "$LOGS/cuda.log" 2>/dev/null; then
  statuses[-1]="NO GPU"
  failed_steps=$((failed_steps + 1))
fi
cp "$LOGS/cuda.log" "$OUT/cuda.log" 2>/dev/null

# The issue's configurations (bf16 is the GPU default), and fp32 as the reference.
run_step bench-train-tiny 45 "$ddpm" bench train --preset tiny --batch-size 32 --device cuda
run_step bench-train-cifar10-bf16 75 "$ddpm" bench train --preset ddpm-cifar10 --batch-size 128 --device cuda --precision bf16
run_step bench-train-cifar10-fp16 75 "$ddpm" bench train --preset ddpm-cifar10 --batch-size 128 --device cuda --precision fp16
run_step bench-train-cifar10-fp32 75 "$ddpm" bench train --preset ddpm-cifar10 --batch-size 128 --device cuda --precision fp32
run_step bench-train-cifar10-bf16-shifted 75 env DDPM_CONV=shifted "$ddpm" bench train --preset ddpm-cifar10 --batch-size 128 --device cuda --precision bf16
run_step bench-train-small-bf16 60 "$ddpm" bench train --preset cifar10-small --batch-size 64 --device cuda --precision bf16
run_step bench-sample-tiny 45 "$ddpm" bench sample --preset tiny --batch-size 64 --device cuda
run_step bench-sample-cifar10-bf16 75 "$ddpm" bench sample --preset ddpm-cifar10 --batch-size 256 --device cuda --precision bf16
run_step bench-sample-cifar10-bf16-shifted 75 env DDPM_CONV=shifted "$ddpm" bench sample --preset ddpm-cifar10 --batch-size 256 --device cuda --precision bf16

# The issue's precision check: tiny, 2000 steps in fp32, bf16 and fp16, loss curves compared.
run_step precision-curves 150 python3 scripts/precision_curves.py --ddpm "$ddpm" --out "$LOGS/precision"

export CRITERION_HOME="$OUT/criterion-data"
read -ra bench_args <<<"${DDPM_BENCH_ARGS:---warm-up-time 1 --measurement-time 3 --noplot}"
for exe in "$B"/benches/*; do
  [ -f "$exe" ] || continue
  run_step "criterion-$(basename "$exe")" 90 "$exe" --bench "${bench_args[@]}" \
    ${DDPM_BENCH_FILTER:+"$DDPM_BENCH_FILTER"}
done

rm -rf "$OUT/run" "$OUT/samples"
run_step e2e-train 90 "$ddpm" train --device cuda --steps 200 --out "$OUT/run"
if [ -f "$OUT/run/checkpoints/latest.safetensors" ]; then
  run_step e2e-sample 60 "$ddpm" sample --device cuda \
    --checkpoint "$OUT/run/checkpoints/latest.safetensors" --num 16 --out "$OUT/samples"
else
  record e2e-sample skipped - 0 "no checkpoint from e2e-train"
fi

if [ "${DDPM_GPU_RUN_CPU_TESTS:-1}" != 0 ]; then
  # The tests have their build directory baked in: CARGO_MANIFEST_DIR (they read kernels/) and
  # CARGO_BIN_EXE_ddpm (tests/cli.rs runs the binary). Where that directory does not exist (the
  # device), point it at this checkout and put the bundled binary where the tests look.
  build_dir="$(sed -n 's/^build_dir: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1)"
  if [ -n "$build_dir" ] && [ -f Cargo.toml ]; then
    if [ ! -e "$build_dir" ]; then
      mkdir -p "$(dirname "$build_dir")" && ln -s "$PWD" "$build_dir" &&
        echo "gpu-run: linked $build_dir -> $PWD for the CPU tests"
    fi
    # CARGO_BIN_EXE_ddpm: <target_dir>/release/ddpm (target_dir: target/gpu-bundle by default).
    target_dir="$(sed -n 's/^target_dir: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1)"
    target_dir="${target_dir:-$build_dir/target}"
    if [ -d "$build_dir" ] && [ ! -e "$target_dir/release/ddpm" ]; then
      mkdir -p "$target_dir/release" && cp "$ddpm" "$target_dir/release/ddpm" &&
        echo "gpu-run: copied bin/ddpm to $target_dir/release/ddpm for tests/cli.rs"
    fi
  fi
  for exe in "$B"/tests/*; do
    [ -f "$exe" ] || continue
    [ "$(basename "$exe")" = cuda ] && continue
    run_step "test-$(basename "$exe")" 90 "$exe"
  done
else
  record "test-*" skipped - 0 "DDPM_GPU_RUN_CPU_TESTS=0"
fi

# --- summary ------------------------------------------------------------------------------------

total=$((SECONDS - t_start))
summary="$OUT/summary.md"
{
  echo "# ddpm GPU run"
  echo
  echo "- GPU: $gpu_line"
  echo "- bundle: $(sed -n 's/^commit: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1), built $(sed -n 's/^built: *//p' "$B/MANIFEST" 2>/dev/null | head -n 1)"
  echo "- total: ${total} s of a ${budget} s budget; $failed_steps step(s) not ok"
  echo
  echo "| step | status | exit | seconds | notes |"
  echo "|---|---|---|---|---|"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${statuses[$i]} | ${codes[$i]} | ${times[$i]} | ${notes[$i]} |"
  done
  for n in bench-train-tiny bench-train-cifar10 bench-sample-tiny bench-sample-cifar10; do
    [ -f "$LOGS/$n.log" ] || continue
    echo
    echo "$n (last 3 lines):"
    echo '```'
    grep -v '^[[:space:]]*$' "$LOGS/$n.log" | tail -n 3 | cut -c 1-160
    echo '```'
  done
  crit=$(cat "$LOGS"/criterion-*.log 2>/dev/null | tr '\r' '\n' | awk '
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
    END { flush() }')
  if [ -n "$crit" ]; then
    echo
    echo "criterion:"
    echo '```'
    echo "$crit" | cut -c 1-200
    echo '```'
  fi
  for i in "${!names[@]}"; do
    case "${statuses[$i]}" in ok | skipped) continue ;; esac
    [[ ${names[$i]} == bench-* ]] && continue # shown above
    log="$LOGS/${names[$i]}.log"
    [ -f "$log" ] || continue
    echo
    echo "${names[$i]} (${statuses[$i]}):"
    echo '```'
    if grep -qE '^test .* \.\.\. FAILED' "$log"; then
      grep -E '^test .* \.\.\. FAILED' "$log" | head -n 10 | cut -c 1-200
    else
      grep -v '^[[:space:]]*$' "$log" | tail -n 3 | cut -c 1-200
    fi
    echo '```'
  done
} >"$summary"

# --- packing: few, small files (the device returns at most 8) -----------------------------------

cp "$B/MANIFEST" "$LOGS/MANIFEST" 2>/dev/null
for f in "$LOGS"/*.log; do # keep a runaway log's head and tail
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 2097152 ] || continue
  { head -n 2000 "$f"; echo "[gpu-run: ... cut ...]"; tail -n 2000 "$f"; } >"$f.cut" && mv "$f.cut" "$f"
done
[ -f "$OUT/samples/grid.png" ] && cp "$OUT/samples/grid.png" "$OUT/samples-grid.png"
[ -f "$OUT/run/loss.png" ] && cp "$OUT/run/loss.png" "$OUT/train-loss.png"
rm -rf "$OUT/run/checkpoints"
if [ -d "$OUT/criterion-data" ]; then # keep criterion's numbers, not its raw samples
  (cd "$OUT/criterion-data" && find . -path '*/new/estimates.json' -print0 |
    tar -cf - --null -T - 2>/dev/null) | (mkdir -p "$OUT/criterion" && tar -xf - -C "$OUT/criterion")
  rm -rf "$OUT/criterion-data"
fi
packed=()
for d in logs run samples criterion; do [ -e "$OUT/$d" ] && packed+=("$d"); done
if tar -czf "$OUT/logs.tar.gz" -C "$OUT" "${packed[@]}"; then
  (cd "$OUT" && rm -rf "${packed[@]}")
fi
find "$OUT" -type f -size +15M -print -delete | sed 's/^/gpu-run: deleted (too large to return): /'

echo
echo "gpu-run: files in $OUT: $(cd "$OUT" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
echo
cat "$summary"
[ "$failed_steps" -eq 0 ]
