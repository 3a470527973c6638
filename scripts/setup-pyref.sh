#!/usr/bin/env bash
# The Python reference environment for scripts/diffusers_goldens.py: torch and diffusers,
# pinned to the versions the committed goldens were made with, in ~/.cache/ddpm/pyref.
# Needed only to regenerate tests/fixtures/diffusers; the tests themselves run without Python.
set -euo pipefail
VENV="${DDPM_PYREF:-$HOME/.cache/ddpm/pyref}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet \
    "torch==2.15.0" "diffusers==0.42.1" "numpy==2.4.6" "safetensors==0.8.0" \
    "huggingface_hub==2.4.0"
"$VENV/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'
echo "run: $VENV/bin/python scripts/diffusers_goldens.py"
