#!/usr/bin/env python3
"""The PyTorch side of ddpm's speed comparison: the same UNet, batch and precision, in PyTorch.

ddpm is measured against PyTorch on the same device (a GPU, or the CPU with the same thread
count), with the same model, batch size and precision (docs/benchmarks.md). This
script is that PyTorch program. It needs only torch (no diffusers): the UNet is written out below
in plain torch.nn, mirroring ddpm's (which is diffusers' `UNet2DModel` architecture), with
diffusers' parameter names so that a diffusers state_dict loads into it strictly.
scripts/check_pytorch_reference.py verifies that mirror against diffusers itself (same parameter
count, same outputs to ~1e-6 for identical weights).

What is timed (after warm-up, with CUDA events around the timed loop on the GPU, wall-clock on
the CPU):

  --task train   one optimizer step, exactly the work `ddpm bench train` does per step:
                 t ~ U{0..999}, ε ~ N(0, I), x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (linear β 1e-4 → 0.02,
                 T = 1000), ε̂ = model(x_t, t), MSE(ε̂, ε), backward, global grad-norm clip at
                 1.0, AdamW (lr 2e-4, β 0.9/0.999, ε 1e-8, no weight decay; fused on CUDA), and
                 an EMA of the weights kept in fp32 (decay min(0.9999, (1+n)/(10+n)), one
                 multi-tensor lerp). x₀ is one fixed random batch in [−1, 1], as in ddpm's bench.
                 images/s = batch · steps / seconds.
  --task sample  one batch through a DDIM (η = 0) run of --sample-steps steps with "leading"
                 spacing (t = 0, ⌊T/S⌋, … reversed; ᾱ_prev = 1 after the last step), x̂₀ clipped
                 to [−1, 1] (the defaults of ddpm and diffusers' DDIMScheduler). The model runs
                 in inference mode under autocast; the update itself is in fp32 on x.
                 images/s = batch · loops / seconds (a loop is all S steps). The warm-up
                 loops run --warmup-sample-steps steps each (default S): `ddpm bench sample`
                 warms up with a short DDIM run of --warmup steps, then times one full run, and
                 --steps 1 --warmup 1 --warmup-sample-steps K mirrors `--warmup K` exactly.

Model: --preset names one of ddpm's presets (below); --image-size and --channels override its
sample size and its image channels (in and out), as `ddpm bench --image-size N --channels C`
does, e.g. `--preset tiny --image-size 28 --channels 1` for MNIST-sized images.

CPU runs. --threads N calls torch.set_num_threads(N) and torch.set_num_interop_threads(1) before
anything runs (scripts/side_by_side.py also sets OMP_NUM_THREADS and MKL_NUM_THREADS to N, and
RAYON_NUM_THREADS for ddpm). Memory: `peak_rss_bytes` is the process's peak resident set
(getrusage ru_maxrss, = VmHWM, the quantity ddpm's `bench --json` reports), and
`baseline_rss_bytes` the resident set (VmRSS) just before the first step, after importing torch
and building the model, the optimizer or the sampling plan: most of the difference between the
two engines' peaks on a small model is torch itself. The peak does not count torch.compile's
compile workers, which are separate processes.

Precision: `bf16` = torch.autocast(bfloat16) over fp32 weights; `fp16` = autocast(float16) plus
a GradScaler; `fp32` = no autocast and TF32 switched off (cuBLAS and cuDNN), so fp32 is fp32.
Mode: `eager`, or `compile` (torch.compile of the model, default mode unless --compile-mode;
the loss, clipping, optimizer and EMA stay eager, as in a typical training script). cuDNN's
autotuner (cudnn.benchmark) is on unless --no-cudnn-benchmark: the shapes never change, and a
PyTorch user after speed turns it on.

MFU. The script counts the forward FLOPs of one image from the module shapes (2 FLOPs per
multiply-add, for every convolution, linear layer and the two attention matrix products; norms,
activations and element-wise ops are not counted) and prints them. A training step is taken as
3 forwards (forward + backward for inputs and weights), a sampling loop as S forwards. The
achieved TFLOP/s over the device's dense peak is the MFU; peaks are known for H100/H200 (989
TFLOP/s bf16/fp16 dense, 67 fp32 without tensor cores) and A100 (312/19.5), or set with
--peak-tflops (on a CPU, the fp32 FMA peak you measured, in TFLOP/s). For ddpm-cifar10 this gives
12.44 GFLOP per image forward and 37.3 per training step (cifar10-small: 3.20 and 9.60; tiny:
0.124 and 0.373; ref-32x32: 1.49 and 4.48).

    python3 scripts/pytorch_reference.py --preset ddpm-cifar10 --batch-size 128 --precision bf16
    python3 scripts/pytorch_reference.py --preset ddpm-cifar10 --batch-size 256 --task sample \
        --mode compile --json
    python3 scripts/pytorch_reference.py --device cpu --threads 2 --precision fp32 --preset tiny \
        --image-size 28 --channels 1 --batch-size 32 --steps 10 --warmup 3 --json

With --json the last line of stdout is one JSON object (see `result` in main); on failure it is
{"error": "..."} and the exit status is 1.
"""

import argparse
import json
import math
import os
import sys
import time

try:
    import resource  # Unix only: the peak resident set
except ImportError:  # pragma: no cover
    resource = None

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Model configuration: ddpm's presets (src/nn/config.rs, `UNetConfig::preset`), with diffusers'
# UNet2DModel field names. Only what the mirror needs is listed; everything else is at the value
# these presets use (silu, positional time embedding, "default" time shift, conv up/down
# sampling, no class conditioning, one-head attention, output scale factors of 1).

_DDPM_STYLE = dict(
    in_channels=3,
    out_channels=3,
    flip_sin_to_cos=False,
    freq_shift=1,
    attention_head_dim=None,
    downsample_padding=0,
    norm_eps=1e-6,
    attn_norm_num_groups=None,
    add_attention=True,
    time_embedding_dim=None,
)

PRESETS = {
    "tiny": dict(
        _DDPM_STYLE,
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        dropout=0.0,
    ),
    "ddpm-cifar10": dict(
        _DDPM_STYLE,
        sample_size=32,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        dropout=0.1,
    ),
    "ref-32x32": dict(
        _DDPM_STYLE,
        sample_size=32,
        block_out_channels=(32, 64, 128, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        dropout=0.1,
    ),
}
PRESETS["cifar10-small"] = dict(PRESETS["ddpm-cifar10"], block_out_channels=(64, 128, 128, 128))

# The diffusion schedule of ddpm's defaults (and DDPM's): linear β over T steps.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


def preset_config(name, image_size=None, channels=None):
    """A preset's config; image_size and channels override its sample_size and its in and out
    channels (ddpm bench's --image-size and --channels)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    cfg = dict(PRESETS[name])
    if image_size is not None:
        down = 2 ** (len(cfg["block_out_channels"]) - 1)
        if image_size < 1 or image_size % down:
            raise ValueError(f"image size {image_size}: preset {name} needs a positive multiple of {down}, "
                             f"its total downsampling")
        cfg["sample_size"] = image_size
    if channels is not None:
        if channels < 1:
            raise ValueError(f"channels {channels}: must be positive")
        cfg["in_channels"] = cfg["out_channels"] = channels
    return cfg


# ---------------------------------------------------------------------------------------------
# The UNet. Attribute names follow diffusers' parameter keys (`down_blocks.1.attentions.0.to_q`,
# `up_blocks.0.upsamplers.0.conv`, …), which are also ddpm's checkpoint keys.


def timestep_sinusoid(t, dim, flip_sin_to_cos, freq_shift, max_period=10000.0):
    """(B,) timesteps → (B, dim) fp32 features: half frequencies f_j = max_period^(−j/(half −
    freq_shift)), the sines then the cosines of t·f_j (cosines first when flipped)."""
    half = dim // 2
    j = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * j / (half - freq_shift))
    angles = t.float()[:, None] * freqs[None, :]
    parts = [torch.cos(angles), torch.sin(angles)] if flip_sin_to_cos else [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeMLP(nn.Module):
    """sinusoid(t) → linear → SiLU → linear: the time embedding, (B, C0) → (B, E)."""

    def __init__(self, c0, temb):
        super().__init__()
        self.linear_1 = nn.Linear(c0, temb)
        self.linear_2 = nn.Linear(temb, temb)

    def forward(self, s):
        return self.linear_2(F.silu(self.linear_1(s)))


class ResBlock(nn.Module):
    """norm → SiLU → 3×3 conv, plus the projected time embedding; norm → SiLU → dropout → 3×3
    conv; added to the input (through a 1×1 conv when the width changes)."""

    def __init__(self, c_in, c_out, temb, groups, eps, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(emb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SpatialAttention(nn.Module):
    """Self-attention over the H·W positions: group norm, q/k/v projections, softmax(q kᵀ/√d) v
    per head, an output projection, and the residual."""

    def __init__(self, channels, heads, groups, eps):
        super().__init__()
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, L, C)

        def split(y):  # (B, L, C) → (B, heads, L, C/heads)
            return y.reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.to_out[0](o.transpose(1, 2).reshape(b, h * w, c))
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3×3 conv; padding 0 means one row/column of zeros on the bottom/right only."""

    def __init__(self, c, padding):
        super().__init__()
        self.asymmetric = padding == 0
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2× enlargement, then a 3×3 conv."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level of the down or up path: residual blocks, each optionally followed by
    attention, then an optional resampler (`downsamplers.0` / `upsamplers.0`)."""

    def __init__(self, resnets, attentions, resampler_name, resampler):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        else:
            self.attentions = None
        self.resampler_name = resampler_name
        if resampler is not None:
            setattr(self, resampler_name, nn.ModuleList([resampler]))

    def resampler(self):
        mods = getattr(self, self.resampler_name, None)
        return None if mods is None else mods[0]


class MidBlock(nn.Module):
    def __init__(self, c, temb, groups, attn_groups, eps, dropout, heads, add_attention):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(c, c, temb, groups, eps, dropout), ResBlock(c, c, temb, groups, eps, dropout)]
        )
        self.attentions = nn.ModuleList([SpatialAttention(c, heads, attn_groups, eps)]) if add_attention else None

    def forward(self, h, emb_act):
        h = self.resnets[0](h, emb_act)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h, emb_act)


class UNet(nn.Module):
    """ddpm's UNet (diffusers UNet2DModel architecture) for the configs of `PRESETS`.

    forward(x: (B, C, S, S), t: (B,)) → (B, C_out, S, S), the predicted noise.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        chans = list(cfg["block_out_channels"])
        c0, levels = chans[0], len(chans)
        temb = cfg["time_embedding_dim"] or 4 * c0
        groups, eps, drop = cfg["norm_num_groups"], cfg["norm_eps"], cfg["dropout"]
        layers = cfg["layers_per_block"]

        def heads(c):
            d = cfg["attention_head_dim"]
            return 1 if d is None else c // d

        self.conv_in = nn.Conv2d(cfg["in_channels"], c0, 3, padding=1)
        self.time_embedding = TimeMLP(c0, temb)

        self.down_blocks = nn.ModuleList()
        c_prev = c0
        for i, (c, kind) in enumerate(zip(chans, cfg["down_block_types"])):
            attn = kind == "AttnDownBlock2D"
            resnets = [ResBlock(c_prev if j == 0 else c, c, temb, groups, eps, drop) for j in range(layers)]
            attns = [SpatialAttention(c, heads(c), groups, eps) for _ in range(layers)] if attn else []
            down = Downsample(c, cfg["downsample_padding"]) if i + 1 < levels else None
            self.down_blocks.append(Level(resnets, attns, "downsamplers", down))
            c_prev = c

        c_mid = chans[-1]
        self.mid_block = MidBlock(
            c_mid, temb, groups, cfg["attn_norm_num_groups"] or groups, eps, drop, heads(c_mid), cfg["add_attention"]
        )

        # Up path, lowest resolution first; each level has one more residual block than the
        # down path. Block j reads (h ‖ skip): the skip is the level's own width, but for the
        # last block, whose skip comes from the level above (the input of its downsampler).
        rev = chans[::-1]
        self.up_blocks = nn.ModuleList()
        c_prev = rev[0]
        for i, (c, kind) in enumerate(zip(rev, cfg["up_block_types"])):
            attn = kind == "AttnUpBlock2D"
            c_skip_last = rev[min(i + 1, levels - 1)]
            n = layers + 1
            resnets = []
            for j in range(n):
                c_in = c_prev if j == 0 else c
                c_skip = c_skip_last if j == n - 1 else c
                resnets.append(ResBlock(c_in + c_skip, c, temb, groups, eps, drop))
            attns = [SpatialAttention(c, heads(c), groups, eps) for _ in range(n)] if attn else []
            up = Upsample(c) if i + 1 < levels else None
            self.up_blocks.append(Level(resnets, attns, "upsamplers", up))
            c_prev = c

        self.conv_norm_out = nn.GroupNorm(groups, c0, eps=eps)
        self.conv_out = nn.Conv2d(c0, cfg["out_channels"], 3, padding=1)

    def forward(self, x, t):
        cfg = self.cfg
        c0 = cfg["block_out_channels"][0]
        s = timestep_sinusoid(t, c0, cfg["flip_sin_to_cos"], cfg["freq_shift"])
        emb_act = F.silu(self.time_embedding(s))  # every residual block reads silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for j, res in enumerate(level.resnets):
                h = res(h, emb_act)
                if level.attentions is not None:
                    h = level.attentions[j](h)
                skips.append(h)
            down = level.resampler()
            if down is not None:
                h = down(h)
                skips.append(h)

        h = self.mid_block(h, emb_act)

        for level in self.up_blocks:
            for j, res in enumerate(level.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), emb_act)
                if level.attentions is not None:
                    h = level.attentions[j](h)
            up = level.resampler()
            if up is not None:
                h = up(h)

        return self.conv_out(F.silu(self.conv_norm_out(h)))


def build_unet(preset, image_size=None, channels=None):
    return UNet(preset_config(preset, image_size, channels))


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# FLOPs, counted from the shapes each layer sees in one forward of one image.


def forward_flops_per_image(model, device="cpu"):
    """Forward FLOPs for one image: 2 × multiply-adds of every Conv2d and Linear, and of the two
    attention products (q kᵀ and p v: 2 · L² · C multiply-adds per attention block). Runs one
    batch-1 forward in fp32 with hooks that read the layer shapes."""
    total = [0]

    def conv(m, inputs, out):
        kh, kw = m.kernel_size
        total[0] += 2 * (out.numel() // out.shape[0]) * (m.in_channels // m.groups) * kh * kw

    def linear(m, inputs, out):
        rows = out.numel() // m.out_features
        total[0] += 2 * rows * m.in_features * m.out_features

    def attention(m, inputs, out):
        b, c, h, w = inputs[0].shape
        total[0] += 2 * 2 * (h * w) ** 2 * c * b

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, SpatialAttention):
            hooks.append(m.register_forward_hook(attention))
    cfg = model.cfg
    s = cfg["sample_size"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, cfg["in_channels"], s, s, device=device)
            model(x, torch.zeros(1, device=device))
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return total[0]


# Dense peak TFLOP/s by device-name substring: (bf16/fp16 tensor cores, fp32 without TF32).
PEAK_TFLOPS = [
    ("H200", 989.0, 67.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
]


def peak_tflops(device_name, precision):
    """The device's dense peak for this precision, or None when the device is not known."""
    for key, half, single in PEAK_TFLOPS:
        if key in (device_name or ""):
            return single if precision == "fp32" else half
    return None


# ---------------------------------------------------------------------------------------------
# The schedule, and the two timed workloads.


def alphas_cumprod(device):
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).to(device=device, dtype=torch.float32)


def ddim_timesteps(steps):
    """diffusers' "leading" spacing with steps_offset 0: 0, ⌊T/S⌋, 2⌊T/S⌋, …, descending."""
    stride = NUM_TRAIN_TIMESTEPS // steps
    return list(range(0, NUM_TRAIN_TIMESTEPS, stride))[:steps][::-1]


def autocast_ctx(device_type, precision):
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)


class Timer:
    """Seconds between start() and stop(): CUDA events on the GPU, wall clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.b.record()
            torch.cuda.synchronize()
            return self.a.elapsed_time(self.b) / 1e3
        return time.perf_counter() - self.t0


def make_train_step(model, fwd, args, device):
    """The closure of one training step (see the module docstring)."""
    acp = alphas_cumprod(device)
    sqrt_acp, sqrt_1macp = acp.sqrt(), (1.0 - acp).sqrt()
    params = [p for p in model.parameters()]
    opt_kw = dict(lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if device.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW(params, **opt_kw)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    ema = [p.detach().clone().float() for p in params]
    live = [p.detach() for p in params]  # views of the weights the optimizer updates in place
    s = model.cfg["sample_size"]
    gen = torch.Generator(device=device).manual_seed(1)
    x0 = torch.rand(args.batch_size, model.cfg["in_channels"], s, s, generator=gen, device=device) * 2 - 1
    state = {"n": 0}

    def step():
        b = x0.shape[0]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), device=device)
        noise = torch.randn_like(x0)
        xt = sqrt_acp[t].view(b, 1, 1, 1) * x0 + sqrt_1macp[t].view(b, 1, 1, 1) * noise
        with autocast_ctx(device.type, args.precision):
            pred = fwd(xt, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        n = state["n"]
        decay = min(0.9999, (1 + n) / (10 + n))
        state["n"] = n + 1
        with torch.no_grad():
            torch._foreach_lerp_(ema, live, 1.0 - decay)
        return loss

    return step


def make_sample_loop(model, fwd, args, device):
    """The closure of one DDIM loop over a fresh batch of noise (see the module docstring)."""
    acp = alphas_cumprod(device).double().cpu()
    ts = ddim_timesteps(args.sample_steps)
    s, c = model.cfg["sample_size"], model.cfg["in_channels"]
    b = args.batch_size
    # Per step: the timestep tensor, and √ᾱ_t, √(1−ᾱ_t), √ᾱ_prev, √(1−ᾱ_prev) as Python floats.
    plan = []
    for i, t in enumerate(ts):
        a_t = float(acp[t])
        a_prev = float(acp[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        tt = torch.full((b,), t, device=device, dtype=torch.long)
        plan.append((tt, math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(a_prev), math.sqrt(1 - a_prev)))
    gen = torch.Generator(device=device).manual_seed(0)

    def loop():
        x = torch.randn(b, c, s, s, generator=gen, device=device)
        with torch.inference_mode():
            for tt, sa, s1a, sp, s1p in plan:
                with autocast_ctx(device.type, args.precision):
                    eps = fwd(x, tt)
                eps = eps.float()
                x0 = ((x - s1a * eps) / sa).clamp_(-1.0, 1.0)
                x = sp * x0 + s1p * eps
        return x

    return loop


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def cpu_model():
    """The CPU's "model name" from /proc/cpuinfo (Linux), else whatever platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or None


# ---------------------------------------------------------------------------------------------
# Resident memory of this process (Linux; None elsewhere where it cannot be read).


def vm_rss_bytes():
    """The resident set now: VmRSS of /proc/self/status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes():
    """The peak resident set of this process so far (ru_maxrss, the kernel's VmHWM)."""
    if resource is None:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # bytes on macOS, KiB on Linux


def set_threads(n):
    """torch's intra-op threads to n, and one inter-op thread (refused once inter-op work has
    started; then left as it is). Returns (intra, inter) as torch reports them."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch.get_num_threads(), torch.get_num_interop_threads()


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available to torch")
    if args.threads is not None:
        set_threads(args.threads)
    if args.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(0)

    model = build_unet(args.preset, args.image_size, args.channels).to(device)
    n_params = param_count(model)
    fwd_flops = forward_flops_per_image(model, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    if args.mode == "compile":
        kw = {} if args.compile_mode in (None, "default") else {"mode": args.compile_mode}
        fwd = torch.compile(model, **kw)
    else:
        fwd = model

    name = device_name(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if args.task == "train":
        model.train()
        step = make_train_step(model, fwd, args, device)
        steps = args.steps if args.steps is not None else 20
        # torch.compile builds the forward graph on the first call and the backward graph on
        # the first backward; a few more untimed steps let its background work settle.
        warmup = args.warmup if args.warmup is not None else (5 if args.mode == "compile" else 3)
        warm_steps = None
        baseline_rss = vm_rss_bytes()
        for _ in range(warmup):
            step()
        timer = Timer(device)
        timer.start()
        for _ in range(steps):
            step()
        seconds = timer.stop()
        images = args.batch_size * steps
        flops_per_image = 3 * fwd_flops
        ms_per_step = 1e3 * seconds / steps
    else:
        model.eval()
        loop = make_sample_loop(model, fwd, args, device)
        steps = args.steps if args.steps is not None else 1
        warmup = args.warmup if args.warmup is not None else 1
        warm_steps = args.warmup_sample_steps or args.sample_steps
        # The warm-up loops are DDIM runs of warm_steps steps: the same shapes, so the same
        # kernels (and torch.compile's graph), over fewer model evaluations.
        warm_loop = loop if warm_steps == args.sample_steps else make_sample_loop(
            model, fwd, argparse.Namespace(**{**vars(args), "sample_steps": warm_steps}), device)
        baseline_rss = vm_rss_bytes()
        for _ in range(warmup):
            warm_loop()
        timer = Timer(device)
        timer.start()
        for _ in range(steps):
            loop()
        seconds = timer.stop()
        images = args.batch_size * steps
        flops_per_image = args.sample_steps * fwd_flops
        # Per model evaluation (one DDIM step of the whole batch).
        ms_per_step = 1e3 * seconds / (steps * args.sample_steps)

    peak_rss = peak_rss_bytes()
    images_per_s = images / seconds
    tflops = images_per_s * flops_per_image / 1e12
    peak = args.peak_tflops if args.peak_tflops else peak_tflops(name, args.precision)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "engine": "pytorch",
        "preset": args.preset,
        "image_size": model.cfg["sample_size"],
        "channels": model.cfg["in_channels"],
        "batch": args.batch_size,
        "precision": args.precision,
        "mode": args.mode,
        "compile_mode": args.compile_mode if args.mode == "compile" else None,
        "task": args.task,
        "sample_steps": args.sample_steps if args.task == "sample" else None,
        "warmup_sample_steps": warm_steps if args.task == "sample" else None,
        "steps": steps,
        "warmup": warmup,
        "seconds": seconds,
        "images_per_s": images_per_s,
        "ms_per_step": ms_per_step,
        "params": n_params,
        "gflop_forward_per_image": fwd_flops / 1e9,
        "gflop_per_image": flops_per_image / 1e9,
        "tflops": tflops,
        "gflops": tflops * 1e3,
        "peak_tflops": peak,
        "mfu": tflops / peak if peak else None,
        "device": name,
        "cpu_model": cpu_model() if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "cudnn_benchmark": not args.no_cudnn_benchmark,
        "channels_last": args.channels_last,
        "peak_mem_mib": peak_mem,
        "peak_rss_bytes": peak_rss,
        "baseline_rss_bytes": baseline_rss,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ddpm-cifar10", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--mode", default="eager", choices=["eager", "compile"])
    p.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (with --mode compile); default: torch's default")
    p.add_argument("--task", default="train", choices=["train", "sample"])
    p.add_argument("--steps", type=int, default=None,
                   help="timed repetitions: training steps (default 20) or whole sampling loops (default 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed repetitions first: training steps (default 3, 5 with --mode compile) or "
                        "sampling loops (default 1)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of a sampling loop")
    p.add_argument("--warmup-sample-steps", type=int, default=None,
                   help="DDIM steps of each warm-up sampling loop (default: --sample-steps)")
    p.add_argument("--image-size", type=int, default=None, help="override the preset's sample size")
    p.add_argument("--channels", type=int, default=None,
                   help="override the preset's image channels (in and out), e.g. 1 for grey images")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) and one inter-op thread (default: torch's own choice)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak for MFU")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave cuDNN's autotuner off")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and activations")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be positive")
    if not 1 <= a.sample_steps <= NUM_TRAIN_TIMESTEPS:
        p.error(f"--sample-steps must be in 1..{NUM_TRAIN_TIMESTEPS}")
    if a.steps is not None and a.steps < 1:
        p.error("--steps must be positive")
    if a.warmup is not None and a.warmup < 0:
        p.error("--warmup must be non-negative")
    if a.warmup_sample_steps is not None and not 1 <= a.warmup_sample_steps <= NUM_TRAIN_TIMESTEPS:
        p.error(f"--warmup-sample-steps must be in 1..{NUM_TRAIN_TIMESTEPS}")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be positive")
    try:
        preset_config(a.preset, a.image_size, a.channels)
    except ValueError as e:
        p.error(str(e))
    return a


def first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def main(argv=None):
    args = parse_args(argv)
    try:
        r = run(args)
    except Exception as e:  # reported as one line, so a comparison table can show it
        if not args.json:
            raise
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"engine": "pytorch", "preset": args.preset, "task": args.task,
                          "mode": args.mode, "error": first_line(e)}))
        return 1
    what = "train step" if r["task"] == "train" else f"DDIM-{r['sample_steps']} loop"
    mfu = f", MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:g}" if r["mfu"] is not None else ""
    on = r["device"]
    if on == "cpu":
        on = f"{r['cpu_model'] or 'cpu'}, {r['threads']} threads"
    print(
        f"pytorch {r['mode']} {r['precision']} {r['preset']} {r['image_size']}×{r['image_size']}×{r['channels']} "
        f"({r['params'] / 1e6:.2f}M parameters, {r['gflop_forward_per_image']:.3f} GFLOP forward per image, "
        f"{r['gflop_per_image']:.2f} per image per {what}), batch {r['batch']} on {on}, torch {r['torch']}",
        file=sys.stderr if args.json else sys.stdout,
    )
    rate = f"{r['tflops']:.1f} TFLOP/s" if r["tflops"] >= 1 else f"{r['gflops']:.1f} GFLOP/s"
    mem = ""
    if r["peak_mem_mib"] is not None:
        mem += f", peak device memory {r['peak_mem_mib']:.0f} MiB"
    if r["peak_rss_bytes"] is not None:
        mem += f", peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
        if r["baseline_rss_bytes"] is not None:
            mem += f" ({r['baseline_rss_bytes'] / 2**20:.0f} before the first step)"
    print(
        f"{r['images_per_s']:.1f} images/s, {r['ms_per_step']:.2f} ms per "
        f"{'step' if r['task'] == 'train' else 'model evaluation'}, {rate}{mfu}{mem}",
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
