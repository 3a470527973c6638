#!/usr/bin/env bash
# Builds everything the lent GPU machine should run into bundle/ (ignored by git), on a machine
# with no GPU: the device has the CUDA driver, cuBLAS and python3 but no Rust toolchain, so the
# binaries are built here (release, kernels compiled by the pinned nvcc) and carried there.
#
#   bash scripts/gpu-bundle.sh    # → bundle/; on the device (bundle/ carried): bash bundle/gpu-check.sh
#
# bundle/bin/ddpm            the CLI
# bundle/tests/cuda          the CUDA parity suite
# bundle/benches/cuda_ops    the GPU kernels' criterion bench
# bundle/more.tar.gz         the other test executables (`lib`: the library's unit tests,
#                            `bin-ddpm`: the binary's, one per tests/*.rs but the host-only ones
#                            listed below) and bench executables, which only run.sh runs: packed
#                            (a third of their size), run.sh unpacks them into tests/ and benches/
# bundle/env.sh              scripts/gpu-env.sh: `. bundle/env.sh` puts libcuda, libcublas and
#                            compute-sanitizer where the loader and the shell find them, and
#                            bundle/bin on PATH, for every command run there
# bundle/gpu-check.sh        scripts/gpu-check.sh, the one-shot check (≤ 8 minutes)
# bundle/run.sh              scripts/gpu-run.sh, the longer run (everything, ~9 minutes)
# bundle/MANIFEST            git commit, date, toolchain, nvcc, build and target directories, sizes
#
# The build has its own target directory, target/gpu-bundle ($CARGO_TARGET_DIR overrides it), so
# that it neither waits for nor rebuilds the CPU-only release build in target/release (the
# kernels' build script reruns whenever PATH or nvcc changes).
#
# Size: the device takes at most 64 MiB of working tree, carried folders included: the tracked
# files, the untracked files git does not ignore, shared/ when there is one, and bundle/ (which
# git ignores, so the call carries it). The script measures the first three before building and
# fails when the bundle is larger than what is left, less 1 MiB of slack for the tree growing
# ($DDPM_BUNDLE_MAX_MIB overrides the computed cap). The executables are stripped.
# $DDPM_BUNDLE_DIR picks another output directory (default: bundle/ in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bundle="${DDPM_BUNDLE_DIR:-$root/bundle}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/gpu-bundle}"
limit_bytes=$((64 * 1048576)) # the device's working-tree limit
slack_bytes=$((1 * 1048576))

say() { printf 'gpu-bundle: %s\n' "$*" >&2; }
die() {
  printf '\ngpu-bundle: ERROR: %s\n\n' "$*" >&2
  exit 1
}

# What travels besides bundle/: tracked files, untracked files git does not ignore, shared/.
tree_bytes() {
  {
    git ls-files -z
    git ls-files -z --others --exclude-standard
  } | (xargs -0 stat -c %s -- 2>/dev/null || true) | awk '{s += $1} END {print s + 0}'
}
shared_bytes=0
[ -d shared ] && shared_bytes="$(find shared -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
tree="$(($(tree_bytes) + shared_bytes))"
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
if [ -n "${DDPM_BUNDLE_MAX_MIB:-}" ]; then
  cap_bytes=$((DDPM_BUNDLE_MAX_MIB * 1048576))
  cap_why="DDPM_BUNDLE_MAX_MIB"
else
  cap_bytes=$((limit_bytes - tree - slack_bytes))
  cap_why="64 MiB - $(mib "$tree") MiB of tree - $(mib "$slack_bytes") MiB of slack"
fi
say "the tree that travels: $(mib "$tree") MiB; the bundle may take $(mib "$cap_bytes") MiB ($cap_why)"
[ "$cap_bytes" -gt 0 ] || die "the working tree alone ($(mib "$tree") MiB) leaves no room for a bundle under the device's 64 MiB"

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
[ -x "$CARGO_TARGET_DIR/release/ddpm" ] || die "$CARGO_TARGET_DIR/release/ddpm was not built"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/benches"
cp "$CARGO_TARGET_DIR/release/ddpm" "$bundle/bin/ddpm"
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
cp scripts/gpu-check.sh "$bundle/gpu-check.sh"
cp scripts/gpu-env.sh "$bundle/env.sh"
chmod +x "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/* "$bundle/run.sh" "$bundle/gpu-check.sh"
# What gpu-check.sh runs stays as plain files; the executables only run.sh runs go into one
# gzip'd tar (a third of their size), which run.sh unpacks in place first.
plain=" bin/ddpm tests/cuda benches/cuda_ops "
(cd "$bundle" && find bin tests benches -type f | sort) | while read -r f; do
  [[ $plain == *" $f "* ]] || echo "$f"
done >"$work/packed.txt"
for f in $plain; do [ -f "$bundle/$f" ] || die "bundle/$f is missing: gpu-check.sh needs it"; done
if [ -s "$work/packed.txt" ]; then
  tar -czf "$bundle/more.tar.gz" -C "$bundle" -T "$work/packed.txt"
  (cd "$bundle" && xargs rm -f <"$work/packed.txt")
fi

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
  echo "target_dir: $CARGO_TARGET_DIR"
  echo
  echo "bytes     file"
  (cd "$bundle" && find . -type f ! -name MANIFEST | sed 's|^\./||' | sort | while read -r f; do
    printf '%-9s %s\n' "$(stat -c %s "$f")" "$f"
  done)
  if [ -f "$bundle/more.tar.gz" ]; then
    echo
    echo "bytes     in more.tar.gz (unpacked by run.sh)"
    tar -tvzf "$bundle/more.tar.gz" | awk '{printf "%-9s %s\n", $3, $6}'
  fi
} >"$bundle/MANIFEST"

total_bytes="$(find "$bundle" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
echo "total:     $total_bytes bytes ($(mib "$total_bytes") MiB)" >>"$bundle/MANIFEST"
echo "travels:   $((total_bytes + tree)) bytes with the tree ($(mib "$((total_bytes + tree))") MiB of the device's 64 MiB); cap $(mib "$cap_bytes") MiB ($cap_why)" >>"$bundle/MANIFEST"

cat "$bundle/MANIFEST"
if [ "$total_bytes" -gt "$cap_bytes" ]; then
  die "the bundle is $(mib "$total_bytes") MiB, over its $(mib "$cap_bytes") MiB cap ($cap_why): with the tree it would not travel to the device (64 MiB at most, carried folders included)"
fi
say "bundle ready: $bundle ($(mib "$total_bytes") MiB; with the tree $(mib "$((total_bytes + tree))") of 64 MiB)."
say "On the device, from the repository root, carrying bundle/: bash bundle/gpu-check.sh"
