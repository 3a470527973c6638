#!/usr/bin/env python3
"""Checks that scripts/pytorch_reference.py's UNet is diffusers' UNet2DModel, preset by preset.

For each preset this builds diffusers' `UNet2DModel` from the same config (the fields of ddpm's
`UNetConfig::preset`, src/nn/config.rs), loads its randomly initialised state_dict into the
plain-torch mirror with strict=True (so every parameter name and shape agrees and nothing is
missing or extra), and compares the two models' outputs on random inputs and timesteps in eval
mode (dropout off), in fp32 on the CPU. It also checks the parameter count against ddpm's (the
published google/ddpm-cifar10-32 has 35,746,307), and the mirror's analytic FLOP count against
torch.utils.flop_counter on the same forward.

Not run in CI (it needs diffusers): it records how the mirror was verified.

    bash scripts/setup-pyref.sh          # torch + diffusers in ~/.cache/ddpm/pyref
    ~/.cache/ddpm/pyref/bin/python scripts/check_pytorch_reference.py [--presets tiny,...]
"""

import argparse
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pytorch_reference as ref  # noqa: E402

# Parameter counts ddpm's `UNetConfig::param_count` gives (ddpm-cifar10 is pinned by a Rust test).
EXPECTED_PARAMS = {"ddpm-cifar10": 35_746_307}
TOLERANCE = 1e-5


def diffusers_model(cfg):
    return UNet2DModel(
        sample_size=cfg["sample_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        down_block_types=tuple(cfg["down_block_types"]),
        up_block_types=tuple(cfg["up_block_types"]),
        norm_num_groups=cfg["norm_num_groups"],
        attn_norm_num_groups=cfg["attn_norm_num_groups"],
        norm_eps=cfg["norm_eps"],
        dropout=cfg["dropout"],
        attention_head_dim=cfg["attention_head_dim"],
        flip_sin_to_cos=cfg["flip_sin_to_cos"],
        freq_shift=cfg["freq_shift"],
        downsample_padding=cfg["downsample_padding"],
        add_attention=cfg["add_attention"],
        time_embedding_dim=cfg["time_embedding_dim"],
        act_fn="silu",
        time_embedding_type="positional",
        resnet_time_scale_shift="default",
        center_input_sample=False,
        mid_block_scale_factor=1,
    )


def check(preset, batch):
    cfg = ref.preset_config(preset)
    torch.manual_seed(0)
    theirs = diffusers_model(cfg).eval()
    ours = ref.UNet(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    n_theirs, n_ours = ref.param_count(theirs), ref.param_count(ours)
    assert n_theirs == n_ours, f"{preset}: {n_ours} parameters, diffusers has {n_theirs}"
    want = EXPECTED_PARAMS.get(preset)
    assert want is None or n_ours == want, f"{preset}: {n_ours} parameters, expected {want}"

    s, c = cfg["sample_size"], cfg["in_channels"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, c, s, s, generator=g)
    # Timesteps spread over the range, including both ends (float ones too, as samplers use).
    t = torch.cat([torch.tensor([0.0, 999.0]), torch.rand(batch - 2, generator=g) * 999.0])
    with torch.no_grad():
        y_theirs = theirs(x, t).sample
        y_ours = ours(x, t)
    diff = (y_theirs - y_ours).abs().max().item()
    scale = y_theirs.abs().max().item()

    # The analytic count against torch's FLOP counter (which counts conv, mm and attention).
    flops = ref.forward_flops_per_image(ours)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ours(x[:1], t[:1])
    counted = counter.get_total_flops()
    print(
        f"{preset:14s} params {n_ours:>11,d}  max|Δ| {diff:.2e} (max|y| {scale:.2f})  "
        f"forward {flops / 1e9:.4f} GFLOP/image (flop_counter {counted / 1e9:.4f}), "
        f"train step {3 * flops / 1e9:.3f}"
    )
    ok = diff <= TOLERANCE and abs(flops - counted) <= 1e-3 * counted
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,cifar10-small,ref-32x32,ddpm-cifar10")
    p.add_argument("--batch-size", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    failed = [name for name in a.presets.split(",") if not check(name, max(2, a.batch_size))]
    if failed:
        print(f"FAILED: {', '.join(failed)} (tolerance {TOLERANCE:g})")
        return 1
    print(f"all presets match diffusers' UNet2DModel to {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
