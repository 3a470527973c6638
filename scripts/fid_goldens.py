#!/usr/bin/env python3
"""Goldens for `ddpm fid`, computed by pytorch-fid itself with seeded random weights.

The real FID Inception weights cannot be downloaded on the development machines, and they are
too large to commit. This script builds pytorch-fid's own InceptionV3 (its FIDInceptionA/C/E
blocks, resize to 299, scaling to [-1, 1], pool3) with weights drawn from a closed-form,
seeded formula (`random_value` below, ported to Rust in tests/fid.rs) and non-trivial batch-norm
statistics, runs small random images through it and writes, under tests/fixtures/fid/:

  a/*.png, b/*.png     two sides of 16 images each (a: 32×32 RGB; b: 28×28, four of them grey)
  goldens.safetensors  features_a, features_b: pytorch-fid's pool3 features (16×2048 f32 each)
  goldens.json         FID (pytorch-fid's calculate_frechet_distance on np.mean/np.cov of those
                       features), KID (unbiased MMD², cubic polynomial kernel, one subset = all
                       16), checks of the weight formula (sum and first values of some tensors),
                       per-block activation scales, and the expected content of:
  stats_small_compressed.npz, stats_small_plain.npz
                       tiny statistics files written by numpy (savez_compressed float64; savez
                       float32 with a Fortran-order sigma) for ddpm's .npz reader

Offline at run time; needs torch, torchvision and pytorch-fid (0.3.0) in the Python used:

    ~/.cache/ddpm/pyref/bin/pip install pytorch-fid==0.3.0
    ~/.cache/ddpm/pyref/bin/python scripts/fid_goldens.py

With --ddpm PATH (a built ddpm binary) it also runs `ddpm fid` on the two folders with the same
random weights and checks its output against pytorch-fid: the statistics files it writes load
in numpy and in pytorch-fid (`mu` and `sigma`, float64) and match pytorch-fid's own statistics,
pytorch-fid's FID between the two files equals the golden, and ddpm's FID and KID match.
--weights-out PATH keeps the random-weight safetensors file (for scripts/fid_speed.py).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "fid"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_fid_inception as conv  # noqa: E402

MASK = (1 << 64) - 1
N_PER_SIDE = 16


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def random_unit(name, n):
    """n uniform values in [0, 1) with 24 bits each: SplitMix64's finaliser applied to
    key + (i + 1)·0x9E3779B97F4A7C15 (mod 2⁶⁴), key = FNV-1a of the tensor name, top 24 bits."""
    key = np.uint64(fnv1a64(name))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = key + i * np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def random_value(name, shape):
    """The value of every tensor, from its name alone (f64 arithmetic, then rounded to f32):
    conv weights uniform with variance 2/fan_in (He), batch-norm γ ∈ [0.7, 1.3), β and the
    running mean ∈ [-0.2, 0.2), the running variance ∈ [0.75, 1.25)."""
    n = int(np.prod(shape))
    u = random_unit(name, n)
    if name.endswith(".conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * np.sqrt(6.0 / fan_in)
    elif name.endswith(".bn.weight"):
        v = 0.7 + 0.6 * u
    elif name.endswith(".bn.bias") or name.endswith(".bn.running_mean"):
        v = 0.2 * (2.0 * u - 1.0)
    elif name.endswith(".bn.running_var"):
        v = 0.75 + 0.5 * u
    else:
        raise ValueError(name)
    return v.astype(np.float32).reshape(shape)


def random_state_dict():
    """A state dict for pytorch-fid's FID Inception with every conv/bn tensor from
    `random_value` (the classifier, unused for pool3, is zero)."""
    import torchvision

    skeleton = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                               init_weights=False)
    sd = {}
    for k, t in skeleton.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        elif k.startswith("fc."):
            sd[k] = torch.zeros(t.shape)
        else:
            sd[k] = torch.from_numpy(random_value(k, tuple(t.shape)))
    return sd


def fid_model(state_dict):
    """pytorch-fid's InceptionV3([pool3]) with `state_dict` instead of the downloaded weights:
    its own construction code, with the download replaced."""
    from pytorch_fid import inception

    inception.load_state_dict_from_url = lambda *a, **k: state_dict
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.eval()


def make_images(out):
    """Two sides with different statistics: a: coloured blobs on gradients, 32×32 RGB;
    b: stripes, 28×28, the last four grey (PIL mode L, which pytorch-fid turns into RGB)."""
    rng = np.random.default_rng(21)
    for side in "ab":
        d = out / side
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):
            old.unlink()
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    for i in range(N_PER_SIDE):
        img = np.zeros((32, 32, 3))
        for c in range(3):
            img[..., c] = rng.uniform(0.1, 0.6) + rng.uniform(-0.3, 0.3) * (xx - yy)
        for _ in range(3):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[mask] = rng.uniform(0, 1, size=3)
        img += rng.normal(0, 0.02, img.shape)
        px = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        Image.fromarray(px, "RGB").save(out / "a" / f"{i:02d}.png")
    yy, xx = np.mgrid[0:28, 0:28] / 28.0
    for i in range(N_PER_SIDE):
        f, phase, angle = rng.uniform(2, 6), rng.uniform(0, 6.3), rng.uniform(0, 3.1)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        base = 0.5 + 0.4 * np.sin(2 * np.pi * f * t + phase)
        colour = rng.uniform(0.3, 1.0, size=3)
        img = base[..., None] * colour + rng.normal(0, 0.03, (28, 28, 3))
        px = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        if i >= N_PER_SIDE - 4:
            Image.fromarray(px[..., 1], "L").save(out / "b" / f"{i:02d}.png")
        else:
            Image.fromarray(px, "RGB").save(out / "b" / f"{i:02d}.png")


def load_side(d):
    """pytorch-fid's image pipeline: PIL open, convert('RGB'), ToTensor (u8/255 as f32)."""
    import torchvision.transforms as TF

    files = sorted(d.glob("*.png"))
    return [TF.ToTensor()(Image.open(f).convert("RGB")) for f in files]


def features(model, images):
    with torch.no_grad():
        return np.concatenate([model(x[None])[0].squeeze(3).squeeze(2).numpy() for x in images])


def block_scales(model, image):
    """RMS of the activations after each of pytorch-fid's four blocks (a sanity check that the
    random weights neither explode nor vanish)."""
    x = torch.nn.functional.interpolate(image[None], size=(299, 299), mode="bilinear",
                                        align_corners=False)
    x = 2 * x - 1
    out = []
    with torch.no_grad():
        for block in model.blocks:
            x = block(x)
            out.append(float(x.pow(2).mean().sqrt()))
    return out


def kid_unbiased(fa, fb):
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³ on all of both sides (one subset of
    min(n_a, n_b), all images when the sides are equal in size), in f64."""
    fa, fb = fa.astype(np.float64), fb.astype(np.float64)
    m, d = min(len(fa), len(fb)), fa.shape[1]
    fa, fb = fa[:m], fb[:m]
    kxx = (fa @ fa.T / d + 1) ** 3
    kyy = (fb @ fb.T / d + 1) ** 3
    kxy = (fa @ fb.T / d + 1) ** 3
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float((sxx + syy) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))


def small_stats(out):
    mu = np.array([0.5, -1.25, 3.0])
    a = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])
    np.savez_compressed(out / "stats_small_compressed.npz", mu=mu, sigma=a)
    sigma_f = np.asfortranarray(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    np.savez(out / "stats_small_plain.npz", mu=np.array([7.5, -2.0], dtype=np.float32),
             sigma=sigma_f)
    return {
        "compressed": {"mu": mu.tolist(), "sigma": a.ravel().tolist()},
        "plain": {"mu": [7.5, -2.0], "sigma": [1.0, 2.0, 3.0, 4.0]},
    }


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def check_ddpm(ddpm, weights, golden, mu_sigma):
    """Runs `ddpm fid` on the two folders and checks it against pytorch-fid."""
    from pytorch_fid import fid_score

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmd = [str(ddpm), "fid", str(OUT / "a"), str(OUT / "b"), "--inception", str(weights),
               "--save-stats", str(tmp / "a.npz"), "--save-reference-stats", str(tmp / "b.npz"),
               "--kid-subsets", "1", "--kid-subset-size", str(N_PER_SIDE), "--json"]
        print("running", " ".join(cmd))
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        report = json.loads(res.stdout.strip().splitlines()[-1])
        print("ddpm:", report)
        for side in "ab":
            with np.load(tmp / f"{side}.npz") as f:
                assert sorted(f.files) == ["mu", "sigma"], f.files
                m, s = f["mu"], f["sigma"]
            assert m.dtype == np.float64 and s.dtype == np.float64, (m.dtype, s.dtype)
            assert m.shape == (2048,) and s.shape == (2048, 2048), (m.shape, s.shape)
            ref_m, ref_s = mu_sigma[side]
            print(f"side {side}: mu rel {rel(m, ref_m):.2e}, sigma rel {rel(s, ref_s):.2e}")
            assert rel(m, ref_m) < 1e-4 and rel(s, ref_s) < 1e-4
            # pytorch-fid's own reader.
            m2, s2 = fid_score.compute_statistics_of_path(str(tmp / f"{side}.npz"), None, 1,
                                                          2048, "cpu")
            assert np.array_equal(m2, m) and np.array_equal(s2, s)
        fid_files = fid_score.calculate_fid_given_paths(
            [str(tmp / "a.npz"), str(tmp / "b.npz")], 1, "cpu", 2048)
        print(f"pytorch-fid on ddpm's files: {fid_files:.6f} (golden {golden['fid']:.6f})")
        assert abs(fid_files - golden["fid"]) <= 1e-3 * abs(golden["fid"])
        assert abs(report["fid"] - golden["fid"]) <= 1e-3 * abs(golden["fid"])
        assert abs(report["kid"] - golden["kid"]) <= 1e-3 * abs(golden["kid"])
        # ddpm on the two statistics files: the 2048×2048 route (no features, so no KID).
        cmd = [str(ddpm), "fid", str(tmp / "a.npz"), str(tmp / "b.npz"), "--json"]
        print("running", " ".join(cmd))
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        report = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"ddpm on its statistics files: FID {report['fid']:.6f}; {report['kid_note']}")
        assert abs(report["fid"] - golden["fid"]) <= 1e-3 * abs(golden["fid"])
        assert report["kid"] is None and "statistics file" in report["kid_note"]
    print("ddpm fid agrees with pytorch-fid")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ddpm", type=Path, help="a built ddpm binary to check against the goldens")
    ap.add_argument("--weights-out", type=Path, help="keep the random-weight safetensors here")
    ap.add_argument("--check-only", action="store_true",
                    help="do not rewrite the fixtures (use the committed images; needs --ddpm)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    sd = random_state_dict()
    model = fid_model(sd)
    tensors = conv.convert_state_dict(sd)
    if not a.check_only:
        OUT.mkdir(parents=True, exist_ok=True)
        make_images(OUT)
    side_images = {s: load_side(OUT / s) for s in "ab"}
    feats = {s: features(model, side_images[s]) for s in "ab"}
    mu_sigma = {s: (np.mean(feats[s].astype(np.float64), axis=0),
                    np.cov(feats[s].astype(np.float64), rowvar=False)) for s in "ab"}
    from pytorch_fid.fid_score import calculate_frechet_distance

    fid = float(calculate_frechet_distance(*mu_sigma["a"], *mu_sigma["b"]))
    kid = kid_unbiased(feats["a"], feats["b"])
    print(f"FID {fid:.6f}, KID {kid:.6e}")
    scales = block_scales(model, side_images["a"][0])
    print("block RMS:", [f"{s:.3g}" for s in scales])
    zero = {s: float((feats[s] == 0).mean()) for s in "ab"}
    print("fraction of zero features:", zero)

    with tempfile.TemporaryDirectory() as tmp:
        weights = a.weights_out or Path(tmp) / "random_inception.safetensors"
        conv.save(tensors, weights, "scripts/fid_goldens.py random weights")
        if not a.check_only:
            from safetensors.numpy import save_file

            save_file({"features_a": feats["a"], "features_b": feats["b"]},
                      str(OUT / "goldens.safetensors"))
            checks = {}
            for name in ["Conv2d_1a_3x3.conv.weight", "Mixed_6b.branch7x7_2.conv.weight",
                         "Mixed_7c.branch_pool.bn.running_var", "Mixed_5b.branch1x1.bn.bias"]:
                t = tensors[name]
                checks[name] = {"shape": list(t.shape), "sum": float(t.astype(np.float64).sum()),
                                "first": [float(v) for v in t.ravel()[:4]]}
            golden = {
                "generator": "scripts/fid_goldens.py",
                "torch": torch.__version__,
                "pytorch_fid": __import__("pytorch_fid").__version__,
                "fid": fid,
                "kid": kid,
                "mu_a_first": mu_sigma["a"][0][:8].tolist(),
                "sigma_a_trace": float(np.trace(mu_sigma["a"][1])),
                "block_rms_a0": scales,
                "weight_checks": checks,
                "small_stats": small_stats(OUT),
            }
            (OUT / "goldens.json").write_text(json.dumps(golden, indent=1) + "\n")
            print(f"wrote {OUT}")
        else:
            golden = json.loads((OUT / "goldens.json").read_text())
            assert abs(golden["fid"] - fid) <= 1e-9 * abs(fid), (golden["fid"], fid)
        if a.ddpm:
            check_ddpm(a.ddpm, weights, golden, mu_sigma)


if __name__ == "__main__":
    main()
