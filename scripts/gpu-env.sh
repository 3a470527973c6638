# shellcheck shell=bash
# The GPU bundle's environment: copied by scripts/gpu-bundle.sh to bundle/env.sh. Source it once
# in the shell that runs anything of the bundle, from the repository root:
#
#   . bundle/env.sh
#   bundle/bin/ddpm info                                     # or just: ddpm info
#   python3 scripts/side_by_side.py --ddpm bundle/bin/ddpm
#   compute-sanitizer --tool memcheck bundle/tests/cuda groupnorm
#   bash bundle/run.sh;  bash bundle/gpu-check.sh            # both source it themselves
#
# ddpm loads the CUDA libraries at run time by name (cudarc's dynamic loading): libcuda.so.1 (the
# driver), libcublas.so.13 and libcublasLt.so.13 (and libnvrtc.so.13, which ddpm does not call
# today). For each one the loader cannot already see, this looks in the usual places, pip's
# nvidia/* folders of python3 first (so that PyTorch, started from the same shell, keeps finding
# the cuBLAS it was built with), then the CUDA toolkit's and the driver's folders, and prepends
# the folder found to LD_LIBRARY_PATH. It never adds a folder of link-time stubs (…/stubs). It
# also puts bundle/bin first on PATH and, when compute-sanitizer or nvidia-smi is not on PATH,
# the CUDA or driver folder that has it. Sourcing it twice changes nothing more.
#
# What it did is in $DDPM_ENV_REPORT, one line per library or tool; `bash bundle/env.sh` (run, not
# sourced) prints that report. Nothing here fails: a library not found is reported as NOT FOUND.

_ddpm_env_main() {
  local self bundle lib d found lines="" sites="" cands tool
  self="${BASH_SOURCE[0]:-${DDPM_BUNDLE:-bundle}/env.sh}"
  bundle="$(cd "$(dirname "$self")" 2>/dev/null && pwd)"
  [ -n "$bundle" ] || bundle="$PWD/bundle"
  export DDPM_BUNDLE="$bundle"

  # bundle/bin first on PATH, once.
  case ":$PATH:" in
    *":$bundle/bin:"*) ;;
    *) [ -d "$bundle/bin" ] && export PATH="$bundle/bin:$PATH" ;;
  esac

  # Is NAME visible to the dynamic loader as things stand (LD_LIBRARY_PATH, then the cache)?
  _ddpm_visible() {
    local dd
    local IFS=:
    for dd in ${LD_LIBRARY_PATH:-}; do
      [ -n "$dd" ] && [ -e "$dd/$1" ] && { printf '%s' "$dd/$1"; return 0; }
    done
    unset IFS
    command -v ldconfig >/dev/null 2>&1 || return 1
    dd="$(ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n && /x86-64|x86_64|64bit/ { print $NF; exit }')"
    [ -n "$dd" ] && { printf '%s' "$dd"; return 0; }
    return 1
  }

  # python3's site-packages (pip's nvidia-* wheels: nvidia/cu13/lib, nvidia/cublas/lib, …).
  if command -v python3 >/dev/null 2>&1; then
    sites="$(python3 -c 'import site, sys
print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)"
  fi
  local pip_dirs="" s
  for s in $sites /opt/torch/.venv/lib/python3*/site-packages; do
    for d in "$s"/nvidia/cu13/lib "$s"/nvidia/cublas/lib "$s"/nvidia/cuda_nvrtc/lib "$s"/nvidia/*/lib; do
      [ -d "$d" ] || continue
      case " $pip_dirs " in *" $d "*) ;; *) pip_dirs="$pip_dirs $d" ;; esac
    done
  done
  local cuda_dirs="${CUDA_HOME:-/usr/local/cuda}/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib"
  for d in /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib; do
    [ -d "$d" ] && cuda_dirs="$cuda_dirs $d"
  done
  local driver_dirs="/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib /lib/x86_64-linux-gnu"

  for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13; do
    if found="$(_ddpm_visible "$lib")"; then
      lines="$lines$lib: visible to the loader ($found)
"
      continue
    fi
    if [ "$lib" = libcuda.so.1 ]; then cands="$driver_dirs"; else cands="$pip_dirs $cuda_dirs"; fi
    found=""
    for d in $cands; do
      case "$d" in */stubs | */stubs/*) continue ;; esac
      if [ -e "$d/$lib" ]; then found="$d" && break; fi
    done
    if [ -z "$found" ] && command -v find >/dev/null 2>&1; then
      # Last resort, bounded: the first copy under /usr/local or /opt that is not a stub.
      found="$(timeout 10 find /usr/local /opt -maxdepth 9 -name "$lib" -not -path '*/stubs/*' 2>/dev/null | head -n 1)"
      [ -n "$found" ] && found="$(dirname "$found")"
    fi
    if [ -n "$found" ]; then
      export LD_LIBRARY_PATH="$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      lines="$lines$lib: added $found to LD_LIBRARY_PATH
"
    else
      lines="$lines$lib: NOT FOUND
"
    fi
  done

  # Tools: compute-sanitizer (CUDA toolkit) and nvidia-smi (driver), when not on PATH already.
  for tool in compute-sanitizer nvidia-smi; do
    if command -v "$tool" >/dev/null 2>&1; then
      lines="$lines$tool: $(command -v "$tool")
"
      continue
    fi
    found=""
    for d in "${CUDA_HOME:-/usr/local/cuda}/bin" /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer \
      /usr/local/cuda-13*/bin /usr/local/cuda-13*/compute-sanitizer /usr/local/nvidia/bin /opt/nvidia/*/bin; do
      if [ -x "$d/$tool" ]; then found="$d" && break; fi
    done
    if [ -n "$found" ]; then
      export PATH="$PATH:$found"
      lines="$lines$tool: $found/$tool (added to PATH)
"
    else
      lines="$lines$tool: NOT FOUND
"
    fi
  done
  lines="${lines}LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  export DDPM_ENV_REPORT="$lines"
  unset -f _ddpm_visible
}
_ddpm_env_main
unset -f _ddpm_env_main

# Run rather than sourced: print what was found.
if [ "${BASH_SOURCE[0]:-}" = "${0:-}" ]; then
  printf '%s\n' "$DDPM_ENV_REPORT"
fi
