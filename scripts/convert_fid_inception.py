#!/usr/bin/env python3
"""Converts pytorch-fid's Inception weights to the safetensors file `ddpm fid` reads.

pytorch-fid (https://github.com/mseitzer/pytorch-fid) publishes the TensorFlow FID Inception
(inception-2015-12-05) ported to PyTorch as

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

Download it (about 91 MB), then run, with any Python that has torch and safetensors:

    python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth

which writes ~/.cache/ddpm/pt_inception-2015-12-05.safetensors (or --out PATH), where `ddpm fid`
looks by default. The file's SHA-256 must start with 6726825d (the suffix of its name, as
torch.hub checks it); --no-hash-check skips that for a renamed or re-saved copy.

The format (docs/fid.md): float32 tensors named as in pytorch-fid's state dict, for every
convolution `<layer>.conv.weight` (C_out, C_in, kh, kw) and its batch norm `<layer>.bn.weight`,
`.bn.bias`, `.bn.running_mean`, `.bn.running_var` (C_out each; eps 0.001 as in torchvision's
BasicConv2d), e.g. `Conv2d_1a_3x3.conv.weight`, `Mixed_6b.branch7x7_2.bn.running_var`. The
classifier (`fc.*`) and the `num_batches_tracked` counters are left out: FID uses the 2048-d
pool3 features before the classifier. ddpm folds each batch norm into its convolution when it
loads the file. Metadata: format = ddpm-fid-inception-v1.

scripts/fid_goldens.py imports `convert_state_dict` and `save` from here, so the random-weight
goldens go through the same conversion as the real weights.
"""

import argparse
import hashlib
import os
import sys
from pathlib import Path

FORMAT = "ddpm-fid-inception-v1"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
HASH_PREFIX = "6726825d"
DEFAULT_OUT = Path.home() / ".cache" / "ddpm" / "pt_inception-2015-12-05.safetensors"
BN_PARTS = ("weight", "bias", "running_mean", "running_var")
# Convolutions in pytorch-fid's InceptionV3 up to pool3: the stem's 5, Mixed_5b–d 3·7, Mixed_6a 4,
# Mixed_6b–e 4·10, Mixed_7a 6, Mixed_7b–c 2·9.
NUM_CONVS = 94


def convert_state_dict(state_dict):
    """pytorch-fid's state dict → {name: float32 numpy array} in ddpm's format. Checks that every
    convolution has its batch norm with matching sizes; raises ValueError otherwise."""
    import numpy as np

    out = {}
    convs = sorted(k[: -len(".conv.weight")] for k in state_dict if k.endswith(".conv.weight"))
    for layer in convs:
        w = state_dict[f"{layer}.conv.weight"]
        if w.dim() != 4:
            raise ValueError(f"{layer}.conv.weight: expected 4 dimensions, got {tuple(w.shape)}")
        out[f"{layer}.conv.weight"] = w.detach().to("cpu").float().numpy().copy()
        for part in BN_PARTS:
            key = f"{layer}.bn.{part}"
            if key not in state_dict:
                raise ValueError(f"{key}: missing (every convolution has a batch norm)")
            t = state_dict[key]
            if tuple(t.shape) != (w.shape[0],):
                raise ValueError(f"{key}: shape {tuple(t.shape)}, expected ({w.shape[0]},)")
            out[key] = t.detach().to("cpu").float().numpy().copy()
    if len(convs) != NUM_CONVS:
        raise ValueError(f"found {len(convs)} convolutions, expected {NUM_CONVS}: "
                         "not pytorch-fid's FID Inception")
    for k, v in out.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{k}: holds NaN or infinity")
    return out


def save(tensors, path, source):
    """Writes the converted tensors to `path` (safetensors), through a temporary file."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "source": source,
                                           "bn_eps": "0.001"})
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pth", type=Path, help="pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output safetensors file (default {DEFAULT_OUT})")
    ap.add_argument("--no-hash-check", action="store_true",
                    help=f"accept a file whose SHA-256 does not start with {HASH_PREFIX}")
    a = ap.parse_args()

    import torch

    if not a.pth.is_file():
        sys.exit(f"error: {a.pth}: no such file; download it from {WEIGHTS_URL}")
    digest = hashlib.sha256(a.pth.read_bytes()).hexdigest()
    if not digest.startswith(HASH_PREFIX) and not a.no_hash_check:
        sys.exit(f"error: {a.pth}: SHA-256 {digest[:16]}… does not start with {HASH_PREFIX}, "
                 f"so it is not {WEIGHTS_URL.rsplit('/', 1)[1]} (--no-hash-check to convert it "
                 "anyway)")
    state_dict = torch.load(a.pth, map_location="cpu", weights_only=True)
    try:
        tensors = convert_state_dict(state_dict)
    except ValueError as e:
        sys.exit(f"error: {a.pth}: {e}")
    save(tensors, a.out, a.pth.name)
    n = sum(v.size for v in tensors.values())
    print(f"wrote {a.out}: {len(tensors)} tensors, {n / 1e6:.1f} M values")


if __name__ == "__main__":
    main()
