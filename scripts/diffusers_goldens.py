#!/usr/bin/env python3
"""Goldens for ddpm's diffusers-interoperability tests, computed by diffusers itself.

Runs offline on the CPU in fp32 and writes the small fixtures under tests/fixtures/diffusers/,
which are committed; the Rust tests (tests/diffusers.rs) compare against them without Python.

    bash scripts/setup-pyref.sh                      # torch + diffusers, pinned, into ~/.cache
    cargo build --release                            # the export stage runs target/release/ddpm
    ~/.cache/ddpm/pyref/bin/python scripts/diffusers_goldens.py

What it writes:
  schedules.safetensors  betas and alphas_cumprod of DDPMScheduler for every beta_schedule
  timesteps.json         set_timesteps of DDPMScheduler and DDIMScheduler, every spacing/offset
  steps.safetensors      single DDPMScheduler.step / DDIMScheduler.step calls on random tensors,
                         with the noise they drew
  models/*/              random-weight UNet2DModel directories shaped like published ones
  unet_forward.safetensors   their fp32 outputs on fixed inputs
  ddim10.safetensors     10-step DDIM runs from fixed noise through those models
  samplers.safetensors   10-step Euler and Heun (Karras σ), DPM-Solver++(2M) and DDIM-inversion
                         runs through the committed cifar10-like and cond-pipeline models (the
                         `samplers` stage loads models/ and never rewrites it)
  export/                a ddpm checkpoint (made by `ddpm train`), and diffusers' output for the
                         directory `ddpm export` writes from it
"""

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel, DDPMPipeline
from diffusers import (DDIMInverseScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler)
from safetensors.torch import save_file, load_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "diffusers"

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)


def meta_json(obj):
    return json.dumps(obj, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Schedules: betas and ᾱ for every beta_schedule.

SCHEDULE_CASES = [
    ("linear", {"beta_schedule": "linear"}),
    ("linear_t50", {"beta_schedule": "linear", "num_train_timesteps": 50, "beta_start": 0.001, "beta_end": 0.2}),
    ("scaled_linear", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    ("squaredcos_cap_v2", {"beta_schedule": "squaredcos_cap_v2"}),
    ("squaredcos_cap_v2_t10", {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 10}),
    ("sigmoid", {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02}),
    ("laplace", {"beta_schedule": "laplace"}),
    ("trained_betas", {"num_train_timesteps": 20,
                       "trained_betas": [round(0.01 + 0.3 * (i / 19) ** 2, 6) for i in range(20)]}),
]


def schedules():
    tensors, cases = {}, []
    for name, cfg in SCHEDULE_CASES:
        s = DDPMScheduler(**cfg)
        tensors[f"{name}.betas"] = s.betas.float().contiguous()
        tensors[f"{name}.alphas_cumprod"] = s.alphas_cumprod.float().contiguous()
        if cfg.get("beta_schedule") in (None, "linear", "scaled_linear", "squaredcos_cap_v2"):
            d = DDIMScheduler(**cfg)
            assert torch.equal(d.alphas_cumprod, s.alphas_cumprod), name
        cases.append({"name": name, "config": cfg})
    save_file(tensors, OUT / "schedules.safetensors", metadata={"cases": meta_json(cases)})
    print(f"schedules: {len(cases)} cases")


# ---------------------------------------------------------------------------------------------
# set_timesteps for every spacing, number of steps and offset.

def timesteps():
    cases = []
    for big_t in (1000, 50, 7):
        for n in sorted({1, 2, 3, 7, 10, 50, big_t} - {k for k in (50, 10, 7) if k > big_t}):
            for spacing in ("leading", "trailing", "linspace"):
                for offset in (0, 1):
                    for cls in (DDPMScheduler, DDIMScheduler):
                        s = cls(num_train_timesteps=big_t, timestep_spacing=spacing, steps_offset=offset)
                        s.set_timesteps(n)
                        ts = [int(t) for t in s.timesteps]
                        if max(ts) >= big_t:
                            continue  # diffusers itself would index past the schedule
                        cases.append({
                            "scheduler": cls.__name__, "num_train_timesteps": big_t, "steps": n,
                            "timestep_spacing": spacing, "steps_offset": offset, "timesteps": ts,
                        })
    (OUT / "timesteps.json").write_text(json.dumps(cases, indent=0) + "\n")
    print(f"timesteps: {len(cases)} cases")


# ---------------------------------------------------------------------------------------------
# Single scheduler steps on random tensors, with the noise drawn.

SHAPE = (2, 2, 4, 4)


def step_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=g) * 1.3
    model_output = torch.randn(SHAPE, generator=g)
    return sample, model_output


def ddpm_step(cfg, steps, k, seed):
    s = DDPMScheduler(**cfg)
    s.set_timesteps(steps)
    t = int(s.timesteps[k])
    sample, out = step_inputs(seed)
    # DDPMScheduler.step draws its noise with randn_tensor(shape, generator): the same draw as
    # torch.randn from an identically seeded generator.
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1)) if t > 0 else torch.zeros(SHAPE)
    r = s.step(out, t, sample, generator=torch.Generator().manual_seed(seed + 1))
    return t, sample, out, noise, r.prev_sample, r.pred_original_sample


def ddim_step(cfg, steps, k, seed, eta, use_clipped):
    s = DDIMScheduler(**cfg)
    s.set_timesteps(steps)
    t = int(s.timesteps[k])
    sample, out = step_inputs(seed)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    r = s.step(out, t, sample, eta=eta, use_clipped_model_output=use_clipped,
               variance_noise=noise if eta > 0 else None)
    return t, sample, out, noise, r.prev_sample, r.pred_original_sample


def steps():
    tensors, cases = {}, []

    def add(kind, cfg, n, k, result, **extra):
        t, sample, out, noise, prev, x0 = result
        i = len(cases)
        for name, v in (("sample", sample), ("model_output", out), ("noise", noise),
                        ("prev_sample", prev), ("pred_original_sample", x0)):
            tensors[f"{i}.{name}"] = v.float().clone().contiguous()
        cases.append({"scheduler": kind, "config": cfg, "steps": n, "index": k, "t": t, **extra})

    seed = 0
    preds = ("epsilon", "sample", "v_prediction")
    clips = ({"clip_sample": True}, {"clip_sample": False}, {"clip_sample": True, "clip_sample_range": 1.5})
    for pred in preds:
        for clip in clips:
            for var in ("fixed_small", "fixed_large"):
                cfg = {"prediction_type": pred, "variance_type": var, **clip}
                for n, ks in ((1000, (0, 500, 998, 999)), (10, (0, 5, 9))):
                    for k in ks:
                        seed += 2
                        add("DDPMScheduler", cfg, n, k, ddpm_step(cfg, n, k, seed))
    # Other schedules and spacings, including last steps that land on x₀ from t > 0.
    others = [
        ({"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}, 50, (0, 25, 49)),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "steps_offset": 1, "variance_type": "fixed_large"}, 10, (0, 9)),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "steps_offset": 1}, 10, (0, 9)),
        ({"beta_schedule": "sigmoid", "timestep_spacing": "linspace", "prediction_type": "v_prediction"}, 20, (0, 10, 19)),
        ({"beta_schedule": "laplace", "clip_sample": False}, 25, (0, 24)),
        ({"num_train_timesteps": 20, "trained_betas": SCHEDULE_CASES[-1][1]["trained_betas"],
          "variance_type": "fixed_large"}, 5, (0, 2, 4)),
    ]
    for cfg, n, ks in others:
        for k in ks:
            seed += 2
            add("DDPMScheduler", cfg, n, k, ddpm_step(cfg, n, k, seed))

    i = 0
    for pred in preds:
        for clip in clips[:2]:
            for set_one in (True, False):
                for offset in (0, 1):
                    cfg = {"prediction_type": pred, "set_alpha_to_one": set_one, "steps_offset": offset, **clip}
                    for k in (0, 5, 9):
                        eta = (0.0, 0.5, 1.0)[i % 3]
                        use_clipped = bool((i // 3) % 2)
                        i += 1
                        seed += 2
                        add("DDIMScheduler", cfg, 10, k, ddim_step(cfg, 10, k, seed, eta, use_clipped),
                            eta=eta, use_clipped_model_output=use_clipped)
    # trailing with N dividing T: diffusers' t − T/N is the next visited timestep.
    for cfg, n, ks in (
        ({"timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2"}, 10, (0, 4, 9)),
        ({"timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False}, 20, (0, 19)),
        # steps_offset ≥ ⌊T/N⌋: the last leading step goes to t − ⌊T/N⌋, a timestep not visited.
        ({"steps_offset": 1}, 600, (0, 598, 599)),
        ({"steps_offset": 3, "set_alpha_to_one": False}, 400, (399,)),
    ):
        for k in ks:
            seed += 2
            add("DDIMScheduler", cfg, n, k, ddim_step(cfg, n, k, seed, 0.7, False),
                eta=0.7, use_clipped_model_output=False)
    save_file(tensors, OUT / "steps.safetensors", metadata={"cases": meta_json(cases)})
    print(f"steps: {len(cases)} cases")


# ---------------------------------------------------------------------------------------------
# Random-weight UNets shaped like published checkpoints.

MODELS = {
    # google/ddpm-cifar10-32 at a quarter of the width, saved under the pre-0.14 attention names
    # that published checkpoint uses.
    "cifar10-like": {
        "config": {
            "sample_size": 32, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [16, 32, 32, 32], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False,
            "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 8, "act_fn": "silu",
            "center_input_sample": False, "mid_block_scale_factor": 1,
            "time_embedding_type": "positional",
        },
        "old_names": True, "dtype": torch.float16, "batch": 2, "t": [0, 999], "labels": None,
        "scheduler": {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                      "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                      "trained_betas": None, "variance_type": "fixed_small"},
        "pipeline": False,
    },
    # google/ddpm-celebahq-256: six levels, attention at the fifth; 64×64 here, width / 16.
    "celebahq-like": {
        "config": {
            "sample_size": 64, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [8, 8, 16, 16, 32, 32], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                                 "AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D",
                               "UpBlock2D", "UpBlock2D"],
            "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False,
            "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 4,
        },
        "old_names": False, "dtype": torch.bfloat16, "batch": 1, "t": [417], "labels": None,
        "scheduler": None,
        "pipeline": False,
    },
    # Today's UNet2DModel defaults: multi-head attention, [cos, sin] order, symmetric
    # downsampling padding, classes, a custom time-embedding width, separate mid-attention
    # groups; a whole pipeline with a DDIM scheduler that lands on ᾱ₀ and predicts v.
    "cond-pipeline": {
        "config": {
            "sample_size": 16, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 32, 48], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 8, "downsample_padding": 1, "flip_sin_to_cos": True,
            "freq_shift": 0, "norm_eps": 1e-5, "norm_num_groups": 8, "attn_norm_num_groups": 4,
            "num_class_embeds": 5, "time_embedding_dim": 96, "dropout": 0.1,
        },
        "old_names": False, "dtype": torch.float16, "batch": 3, "t": [3, 250, 871],
        "labels": [4, 0, 2],
        "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                      "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                      "clip_sample": True, "set_alpha_to_one": False, "steps_offset": 1,
                      "prediction_type": "v_prediction", "timestep_spacing": "leading"},
        "pipeline": True,
    },
}

OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomized_unet(config, seed, dtype):
    """Random weights, rounded to `dtype` (the fixtures are stored in it to stay small; the
    forward runs in fp32 on exactly the stored values)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * noise)  # group-norm scales away from 1
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif name == "conv_out.weight":
                p.mul_(4.0)  # diffusers' init keeps it small; make the output O(1)
            p.copy_(p.to(dtype).float())
    return unet


def save_unet_dir(unet, path, config, old_names, dtype):
    unet.to(dtype).save_pretrained(path, safe_serialization=True)
    unet.float()
    if old_names:
        # As published in 2022: only the fields diffusers had then.
        old = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", **config}
        (path / "config.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        sd = load_file(path / "diffusion_pytorch_model.safetensors")
        renamed = {}
        for k, v in sd.items():
            for new, old in OLD_NAMES.items():
                marker = f".{new}."
                if ".attentions." in k and marker in k:
                    k = k.replace(marker, f".{old}.")
            renamed[k] = v.contiguous()
        save_file(renamed, path / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        # diffusers converts the old names back on load: check the file still loads as is.
        again = UNet2DModel.from_pretrained(path, torch_dtype=torch.float32).eval()
        for (a, pa), (b, pb) in zip(unet.state_dict().items(), again.state_dict().items()):
            assert a == b and torch.equal(pa, pb), a


def run_ddim(unet, scheduler_cfg, noise, labels, steps=10):
    cfg = {k: v for k, v in scheduler_cfg.items() if not k.startswith("_") and k != "variance_type"}
    s = DDIMScheduler(**cfg)
    s.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in s.timesteps:
            out = unet(x, t, class_labels=labels).sample
            # DDIMPipeline's defaults: η = 0, ε̂ from the unclipped x̂₀.
            x = s.step(out, t, x, eta=0.0).prev_sample
    return x


def models():
    fwd, fwd_meta = {}, {}
    ddim, ddim_meta = {}, {}
    models_dir = OUT / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    for seed, (name, m) in enumerate(MODELS.items()):
        unet = randomized_unet(m["config"], 100 + seed, m["dtype"])
        root = models_dir / name
        unet_dir = root / "unet" if m["pipeline"] else root
        save_unet_dir(unet, unet_dir, m["config"], m["old_names"], m["dtype"])
        if m["pipeline"]:
            (root / "scheduler").mkdir(parents=True)
            (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(m["scheduler"], indent=2) + "\n")
            (root / "model_index.json").write_text(json.dumps({
                "_class_name": "DDIMPipeline", "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", m["scheduler"]["_class_name"]],
                "unet": ["diffusers", "UNet2DModel"]}, indent=2) + "\n")
        c = m["config"]
        g = torch.Generator().manual_seed(7 + seed)
        x = torch.randn((m["batch"], c["in_channels"], c["sample_size"], c["sample_size"]), generator=g)
        t = torch.tensor(m["t"], dtype=torch.long)
        labels = torch.tensor(m["labels"], dtype=torch.long) if m["labels"] is not None else None
        with torch.no_grad():
            out = unet(x, t, class_labels=labels).sample
        fwd[f"{name}.x"] = x.contiguous()
        fwd[f"{name}.out"] = out.contiguous()
        fwd_meta[name] = {"t": m["t"], "labels": m["labels"]}
        print(f"model {name}: {sum(p.numel() for p in unet.parameters())} parameters, "
              f"|out| max {out.abs().max():.3f}")
        if m["scheduler"] is not None:
            noise = torch.randn(x.shape, generator=g)
            final = run_ddim(unet, m["scheduler"], noise, labels)
            ddim[f"{name}.noise"] = noise.contiguous()
            ddim[f"{name}.sample"] = final.contiguous()
            ddim_meta[name] = {"labels": m["labels"], "steps": 10,
                               "scheduler": m["scheduler"] if not m["pipeline"] else None}
    save_file(fwd, OUT / "unet_forward.safetensors", metadata={"cases": meta_json(fwd_meta)})
    save_file(ddim, OUT / "ddim10.safetensors", metadata={"cases": meta_json(ddim_meta)})


# ---------------------------------------------------------------------------------------------
# Samplers beyond DDIM (Euler, Heun, DPM-Solver++(2M), DDIM inversion), run by diffusers through
# the committed models/ directories: this stage only loads them, it never rewrites them.

SAMPLER_MODELS = ("cifar10-like", "cond-pipeline")
SAMPLER_STEPS = 10
# torch.Generator seeds, per model: "noise" is the standard-normal x_T shared by the euler_karras,
# heun_karras and dpmpp_2m cases (so their final samples can be compared with one another),
# "image" the small perturbation added to the ddim_inverse case's smooth pattern.
SAMPLER_SEEDS = {"cifar10-like": {"noise": 500, "image": 510},
                 "cond-pipeline": {"noise": 501, "image": 511}}


def load_fixture_unet(name):
    """A committed model directory, in fp32, as diffusers reads it."""
    root = OUT / "models" / name
    if MODELS[name]["pipeline"]:
        return UNet2DModel.from_pretrained(root, subfolder="unet", torch_dtype=torch.float32).eval()
    return UNet2DModel.from_pretrained(root, torch_dtype=torch.float32).eval()


def accepted(cls, cfg):
    """The keys of `cfg` that cls.__init__ takes by name (diffusers raises TypeError on the
    others, except DDIMInverseScheduler, whose **kwargs swallows them silently)."""
    params = inspect.signature(cls.__init__).parameters
    kept = {k: v for k, v in cfg.items() if k in params}
    return kept, sorted(k for k in cfg if k not in params)


class CountingUNet:
    def __init__(self, unet, labels):
        self.unet, self.labels, self.calls = unet, labels, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.unet(x, t, class_labels=self.labels).sample


def smooth_image(shape, seed):
    """0.8·sin(2πx/S + b + 0.7c)·cos(2πy/S) + 0.05·N(0, 1), clamped to [-1, 1]; x is the last
    (width) index, y the height, b the batch item, c the channel."""
    b, c, h, w = shape
    y = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    phase = (torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
             + 0.7 * torch.arange(c, dtype=torch.float32).view(1, c, 1, 1))
    img = 0.8 * torch.sin(2 * torch.pi * x / w + phase) * torch.cos(2 * torch.pi * y / h)
    img = img + 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return img.clamp(-1.0, 1.0)


def samplers():
    tensors, cases = {}, []
    for name in SAMPLER_MODELS:
        m = MODELS[name]
        c = m["config"]
        shape = (m["batch"], c["in_channels"], c["sample_size"], c["sample_size"])
        labels = torch.tensor(m["labels"], dtype=torch.long) if m["labels"] is not None else None
        unet = load_fixture_unet(name)
        seeds = SAMPLER_SEEDS[name]
        base = {k: v for k, v in m["scheduler"].items() if not k.startswith("_") and k != "variance_type"}
        base["clip_sample"] = False
        ddim_cfg, _ = accepted(DDIMScheduler, base)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seeds["noise"]))

        def record(kind, cls, cfg, dropped, **extra):
            cases.append({"name": f"{name}.{kind}", "model": name, "kind": kind,
                          "scheduler": cls.__name__, "config": cfg, "dropped": dropped,
                          "labels": m["labels"], "steps": SAMPLER_STEPS, **extra})

        def put(kind, **ts):
            for k, v in ts.items():
                tensors[f"{name}.{kind}.{k}"] = v.detach().to(torch.float32).contiguous().clone()

        def sample_loop(s):
            f = CountingUNet(unet, labels)
            x = noise * s.init_noise_sigma
            with torch.no_grad():
                for t in s.timesteps:
                    inp = s.scale_model_input(x, t)
                    x = s.step(f(inp, t), t, x).prev_sample
            return x, f.calls

        # Euler and Heun on Karras σ, timesteps spaced "linspace".
        for kind, cls in (("euler_karras", EulerDiscreteScheduler), ("heun_karras", HeunDiscreteScheduler)):
            kw, dropped = accepted(cls, {k: v for k, v in base.items() if k != "timestep_spacing"})
            kw.update(use_karras_sigmas=True, timestep_spacing="linspace")
            s = cls(**kw)
            s.set_timesteps(SAMPLER_STEPS)
            sigmas, ts = s.sigmas.clone(), s.timesteps.clone()
            init_sigma = float(s.init_noise_sigma)
            x, nfe = sample_loop(s)
            put(kind, noise=noise, sigmas=sigmas, timesteps=ts, sample=x)
            record(kind, cls, kw, dropped, seeds={"noise": seeds["noise"]}, nfe=nfe,
                   init_noise_sigma=init_sigma)
            print(f"samplers {name}.{kind}: {len(ts)} timesteps, {len(sigmas)} sigmas, nfe {nfe}, "
                  f"init_noise_sigma {init_sigma:.4f}, |sample| max {x.abs().max():.3f}")

        # DPM-Solver++(2M) on the timesteps DDIM visits for this config.
        d = DDIMScheduler(**ddim_cfg)
        d.set_timesteps(SAMPLER_STEPS)
        ddim_ts = [int(t) for t in d.timesteps]
        kw, dropped = accepted(DPMSolverMultistepScheduler, base)
        kw.update(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                  lower_order_final=True, final_sigmas_type="zero", use_karras_sigmas=False)
        s = DPMSolverMultistepScheduler(**kw)
        s.set_timesteps(timesteps=ddim_ts)
        assert [int(t) for t in s.timesteps] == ddim_ts, (s.timesteps, ddim_ts)
        assert float(s.init_noise_sigma) == 1.0
        ts = s.timesteps.clone()
        x, nfe = sample_loop(s)
        put("dpmpp_2m", noise=noise, timesteps=ts, sample=x)
        record("dpmpp_2m", DPMSolverMultistepScheduler, kw, dropped, set_timesteps=ddim_ts,
               ddim_config=ddim_cfg, seeds={"noise": seeds["noise"]}, nfe=nfe,
               init_noise_sigma=float(s.init_noise_sigma))
        print(f"samplers {name}.dpmpp_2m: timesteps {ddim_ts}, nfe {nfe}, |sample| max {x.abs().max():.3f}")

        # DDIM inversion of a smooth image, then DDIM (η = 0) back from the latent.
        image = smooth_image(shape, seeds["image"])
        kw, dropped = accepted(DDIMInverseScheduler, base)
        kw.update(set_alpha_to_one=base.get("set_alpha_to_one", True),
                  steps_offset=base.get("steps_offset", 0), timestep_spacing="leading")
        inv = DDIMInverseScheduler(**kw)
        inv.set_timesteps(SAMPLER_STEPS)
        ts = inv.timesteps.clone()
        f = CountingUNet(unet, labels)
        x = image.clone()
        with torch.no_grad():
            for t in inv.timesteps:
                x = inv.step(f(x, t), t, x).prev_sample
        latent = x
        recon = run_ddim(unet, ddim_cfg, latent, labels, steps=SAMPLER_STEPS)
        mse = float(((recon - image) ** 2).mean())
        put("ddim_inverse", image=image, timesteps=ts, latent=latent, recon=recon)
        record("ddim_inverse", DDIMInverseScheduler, kw, dropped, recon_config=ddim_cfg,
               recon_eta=0.0, seeds={"image": seeds["image"]}, nfe=f.calls,
               recon_nfe=SAMPLER_STEPS, recon_mse=mse)
        print(f"samplers {name}.ddim_inverse: timesteps {[int(t) for t in ts]}, |image| max "
              f"{image.abs().max():.3f}, |latent| max {latent.abs().max():.3f}, |recon| max "
              f"{recon.abs().max():.3f}, reconstruction MSE {mse:.3e}")
    for k, v in tensors.items():
        assert torch.isfinite(v).all(), k
    save_file(tensors, OUT / "samplers.safetensors", metadata={"cases": meta_json(cases)})
    print(f"samplers: {len(cases)} cases, {(OUT / 'samplers.safetensors').stat().st_size} bytes")


# ---------------------------------------------------------------------------------------------
# Export: a checkpoint made by `ddpm train`, written out by `ddpm export`, run by diffusers.

EXPORT_MODEL = {
    "sample_size": 8, "in_channels": 3, "out_channels": 3,
    "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 4, "norm_num_groups": 4, "num_class_embeds": 4,
    "flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0, "norm_eps": 1e-6,
}


def export(ddpm):
    d = OUT / "export"
    d.mkdir(parents=True, exist_ok=True)
    ckpt = d / "checkpoint.safetensors"
    if not ckpt.exists():
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "model.json"
            model.write_text(json.dumps(EXPORT_MODEL))
            run = Path(tmp) / "run"
            subprocess.run([ddpm, "--threads", "1", "train", "--model", str(model), "--steps", "4",
                            "--batch-size", "4", "--class-cond", "--ema-decay", "0.5",
                            "--warmup", "1", "--lr", "0.01", "--sample-every", "1000",
                            "--checkpoint-every", "4", "--device", "cpu", "--out", str(run), "-q"],
                           check=True)
            shutil.copy(run / "checkpoints" / "latest.safetensors", ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "exported"
        subprocess.run([ddpm, "export", "--checkpoint", str(ckpt), "--out", str(out)], check=True)
        pipe = DDPMPipeline.from_pretrained(out)
        unet = UNet2DModel.from_pretrained(out, subfolder="unet").eval()
        for k, v in EXPORT_MODEL.items():
            assert unet.config[k] == v or list(unet.config[k]) == v, (k, unet.config[k], v)
        assert type(pipe.scheduler).__name__ == "DDPMScheduler"
        g = torch.Generator().manual_seed(11)
        x = torch.randn((4, 3, 8, 8), generator=g)
        t = torch.tensor([0, 10, 500, 999])
        labels = torch.tensor([0, 1, 2, 3])
        with torch.no_grad():
            y = unet(x, t, class_labels=labels).sample
        # How diffusers reads the exported scheduler config.
        abar = pipe.scheduler.alphas_cumprod.float().contiguous()
        save_file({"x": x, "out": y.contiguous(), "alphas_cumprod": abar}, d / "forward.safetensors",
                  metadata={"t": meta_json(t.tolist()), "labels": meta_json(labels.tolist())})
        print(f"export: diffusers ran the exported model, |out| max {y.abs().max():.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="schedules,timesteps,steps,models,samplers,export")
    ap.add_argument("--ddpm", default=str(ROOT / "target" / "release" / "ddpm"))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    stages = {"schedules": schedules, "timesteps": timesteps, "steps": steps, "models": models,
              "samplers": samplers, "export": lambda: export(a.ddpm)}
    for stage in a.only.split(","):
        stages[stage]()


if __name__ == "__main__":
    main()
