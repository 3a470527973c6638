#!/usr/bin/env bash
# Builds everything the lent GPU machine should run into bundle/ (ignored by git), on a machine
# with no GPU: the device has the CUDA driver, cuBLAS and python3 but no Rust toolchain, so the
# binaries are built here (release, kernels compiled by the pinned nvcc) and carried there.
#
#   bash scripts/gpu-bundle.sh          # → bundle/, then on the device: bash bundle/run.sh
#
# bundle/bin/ddpm            the CLI
# bundle/tests/<target>      the test executables: `cuda` (the CUDA parity suite), `lib` (the
#                            library's unit tests), `bin-ddpm` (the binary's), and one per tests/*.rs
#                            but the host-only ones (listed below, left out for size)
# bundle/benches/<bench>     every criterion bench executable
# bundle/run.sh              a copy of scripts/gpu-run.sh, the script the device runs
# bundle/MANIFEST            git commit, date, toolchain, nvcc, build directory, file sizes
#
# The executables are stripped. The bundle must travel inside the device's 64 MiB working-tree
# limit, so the script fails when it is larger than $DDPM_BUNDLE_MAX_MIB (default 60) MiB.
# $DDPM_BUNDLE_DIR picks another output directory (default: bundle/ in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bundle="${DDPM_BUNDLE_DIR:-$root/bundle}"
max_mib="${DDPM_BUNDLE_MAX_MIB:-60}"

say() { printf 'gpu-bundle: %s\n' "$*" >&2; }
die() {
  printf '\ngpu-bundle: ERROR: %s\n\n' "$*" >&2
  exit 1
}

nvcc_bin="$(bash scripts/install-nvcc.sh)"
export PATH="$nvcc_bin:$PATH"
export DDPM_REQUIRE_NVCC=1
nvcc_version="$(nvcc --version | tail -n 1)"
say "nvcc: $nvcc_version"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Cargo's JSON messages go to stdout; its progress and warnings stay on stderr for the reader.
# Prints "<stable name><TAB><path>" for the executables of one kind of target.
executables() { # executables test|bench < cargo json
  python3 -c '
import json, sys
want = sys.argv[1]
seen = {}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue  # the plain binary that integration tests call, not a test executable
    kinds, name = m["target"]["kind"], m["target"]["name"]
    if want == "bench":
        if "bench" not in kinds:
            continue
        stable = name
    elif "test" in kinds:
        stable = name
    elif "lib" in kinds or "rlib" in kinds:
        stable = "lib"
    elif "bin" in kinds:
        stable = "bin-" + name
    else:
        continue
    if stable in seen and seen[stable] != m["executable"]:
        sys.exit(f"two {want} executables would both be named {stable}")
    seen[stable] = m["executable"]
for stable, path in sorted(seen.items()):
    print(f"{stable}\t{path}")
' "$1"
}

say "cargo build --release --locked"
cargo build --release --locked
say "cargo test --release --locked --no-run"
cargo test --release --locked --no-run --message-format=json-render-diagnostics >"$work/test.json"
say "cargo bench --locked --no-run"
cargo bench --locked --no-run --message-format=json-render-diagnostics >"$work/bench.json"

executables test <"$work/test.json" >"$work/tests.tsv"
executables bench <"$work/bench.json" >"$work/benches.tsv"
grep -q "^cuda	" "$work/tests.tsv" || die "no 'cuda' test executable in cargo's output (tests/cuda/main.rs)"
[ -s "$work/benches.tsv" ] || die "no bench executables in cargo's output"
[ -x target/release/ddpm ] || die "target/release/ddpm was not built"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/benches"
cp target/release/ddpm "$bundle/bin/ddpm"
# Test executables that exercise only host code already covered by CI (the parsers' property
# tests, image files, data loaders, the CPU gradient checks) stay behind, to keep the bundle
# under the device's limit; DDPM_BUNDLE_ALL_TESTS=1 takes them too.
cpu_only=" fuzz_parsers imaging data gradcheck_ops gradcheck_catches_bugs forward_reference "
while IFS=$'\t' read -r name path; do
  if [ "${DDPM_BUNDLE_ALL_TESTS:-0}" != 1 ] && [[ $cpu_only == *" $name "* ]]; then
    say "left out (host-only tests): $name"
    continue
  fi
  cp "$path" "$bundle/tests/$name"
done <"$work/tests.tsv"
while IFS=$'\t' read -r name path; do cp "$path" "$bundle/benches/$name"; done <"$work/benches.tsv"
strip "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*
cp scripts/gpu-run.sh "$bundle/run.sh"
chmod +x "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/* "$bundle/run.sh"

commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi
{
  echo "ddpm GPU bundle"
  echo "commit:    $commit"
  echo "branch:    $(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  echo "built:     $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -srm)"
  echo "rustc:     $(rustc -V)"
  echo "nvcc:      $nvcc_version"
  # Tests bake this path in (CARGO_MANIFEST_DIR, CARGO_BIN_EXE_ddpm); run.sh recreates it.
  echo "build_dir: $root"
  echo
  echo "bytes     file"
  (cd "$bundle" && find . -type f ! -name MANIFEST | sed 's|^\./||' | sort | while read -r f; do
    printf '%-9s %s\n' "$(stat -c %s "$f")" "$f"
  done)
} >"$bundle/MANIFEST"

total_bytes="$(find "$bundle" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
total_mib="$(awk -v b="$total_bytes" 'BEGIN {printf "%.1f", b / 1048576}')"
echo "total:     $total_bytes bytes ($total_mib MiB)" >>"$bundle/MANIFEST"

cat "$bundle/MANIFEST"
if [ "$total_bytes" -gt $((max_mib * 1048576)) ]; then
  die "the bundle is $total_mib MiB, over the $max_mib MiB limit (the device takes at most 64 MiB of working tree, carried folders included)"
fi
say "bundle ready: $bundle ($total_mib MiB). On the device, from the repository root: bash bundle/run.sh"
