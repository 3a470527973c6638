#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc + headers, from PyPI) into a cached virtual
# environment and prints the directory that holds nvcc. Idempotent: a second run only checks.
#
#   export PATH="$(bash scripts/install-nvcc.sh):$PATH"
#
# The cache lives in $DDPM_NVCC_VENV (default ~/.cache/ddpm/nvcc-13.0). CUDA 13.0 matches the
# driver of the H100/H200 machines the kernels target. Needs python3 with venv and a C++ host
# compiler (g++) for nvcc; no GPU.
set -euo pipefail

venv="${DDPM_NVCC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ddpm/nvcc-13.0}"
packages=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-nvvm nvidia-cuda-cccl)

find_nvcc() { find "$venv" -path '*/nvidia/cu13/bin/nvcc' -print -quit 2>/dev/null || true; }

nvcc="$(find_nvcc)"
if [ -z "$nvcc" ] || ! "$nvcc" --version 2>/dev/null | grep -q "release 13\.0"; then
  echo "install-nvcc: installing CUDA 13.0 nvcc into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]/%/==13.0.*}" >&2
  nvcc="$(find_nvcc)"
fi
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
  echo "install-nvcc: nvcc not found under $venv after installing ${packages[*]}" >&2
  exit 1
fi
dirname "$nvcc"
