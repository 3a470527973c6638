//! Attention (cuBLAS GEMMs + softmax kernels) and the NCHW ↔ token transposes against the CPU
//! reference, on random inputs, with every tensor stored as fp32, bf16 or fp16. Outputs start as
//! NaN on the device, so an element a kernel fails to write shows up as a non-finite error.

use ddpm::cuda::device::DeviceMemory;
use ddpm::cuda::ops::attention as gpu_attn;
use ddpm::cuda::testing::{
    expect_close, from_device, from_device_as, to_device, to_device_as, Case,
};
use ddpm::cuda::Gpu;
use ddpm::ops::attention::{attention_backward, attention_forward, AttentionShape};
use ddpm::ops::layout::{nchw_to_tokens, tokens_to_nchw};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "attention_forward_backward_matches_cpu",
            run: attention_matches_cpu,
        },
        Case {
            name: "attention_layout_transposes_match_cpu",
            run: |gpu| layout_matches_cpu(gpu, Precision::Fp32),
        },
        Case {
            name: "attention_bf16_forward_backward_within_bounds",
            run: |gpu| reduced_attention_matches_cpu(gpu, Precision::Bf16),
        },
        Case {
            name: "attention_fp16_forward_backward_within_bounds",
            run: |gpu| reduced_attention_matches_cpu(gpu, Precision::Fp16),
        },
        Case {
            name: "attention_bf16_layout_transposes_match_cpu",
            run: |gpu| layout_matches_cpu(gpu, Precision::Bf16),
        },
        Case {
            name: "attention_fp16_layout_transposes_match_cpu",
            run: |gpu| layout_matches_cpu(gpu, Precision::Fp16),
        },
    ]
}

// Tolerances. Everything is fp32 on both sides (cuBLAS runs without TF32), so the differences
// come from the order of the additions in the GEMMs and the softmax sums, and from the two
// sides' rounding of the scores S (which moves P by ~1e-6 relative, and through P every output).
// expect_close measures each element against max(|want|, 1e-3·max|want|), which is harsh on the
// many outputs near zero: the CPU run in f32 against the same code in f64 on these shapes shows
// ~1.5e-6 for P, up to 2.1e-4 for the output and up to 1.8e-4 for dq/dk/dv (2.7e-4 / 4.2e-4 at
// L = 1024). The GPU is a third fp32 ordering, so allow several times that; an indexing, stride
// or scaling bug gives errors of order 1, far above any of these.
/// P itself: only the scores' rounding and the row sum's order.
const TOL_PROBS: f64 = 1e-4;
/// out = P V: the P error times |v|, plus the product's own summation (k = L terms).
const TOL_OUT: f64 = 2e-3;
/// dq, dk, dv: three chained products and the cancellation in dP − rowsum(P ⊙ dP); the GPU also
/// scales dS by 1/√d before the last products where the CPU scales after them.
const TOL_BACKWARD: f64 = 5e-3;

fn nan_on_device(gpu: &Gpu, len: usize) -> anyhow::Result<ddpm::cuda::device::DeviceMemory> {
    Ok(to_device(gpu, &vec![f32::NAN; len])?)
}

fn attention_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    // (batch, len, channels, heads): L not a multiple of 32, one head and several, d = 1, L = 1,
    // and a CIFAR-like 16×16 block.
    let shapes = [
        (2, 37, 8, 1),
        (3, 50, 12, 3),
        (2, 33, 5, 5),
        (1, 1, 4, 2),
        (1, 100, 96, 4),
        (2, 256, 64, 1),
    ];
    for (seed, &(b, l, c, heads)) in shapes.iter().enumerate() {
        let g = AttentionShape::new(b, l, c, heads)?;
        let label = format!("B{b} L{l} C{c} h{heads}");
        let n = g.tokens_len();
        let mut rng = Philox::new(100 + seed as u64);
        let q: Vec<f32> = rng.normal_vec(n, 1.0);
        let k: Vec<f32> = rng.normal_vec(n, 1.0);
        let v: Vec<f32> = rng.normal_vec(n, 1.0);
        let dout: Vec<f32> = rng.normal_vec(n, 1.0);

        let mut out = vec![0.0f32; n];
        let mut probs = vec![0.0f32; g.probs_len()];
        attention_forward(&g, &q, &k, &v, &mut out, &mut probs);
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        attention_backward(&g, &q, &k, &v, &probs, &dout, &mut dq, &mut dk, &mut dv);

        let (q_d, k_d, v_d, do_d) = (
            to_device(gpu, &q)?,
            to_device(gpu, &k)?,
            to_device(gpu, &v)?,
            to_device(gpu, &dout)?,
        );
        let out_d = nan_on_device(gpu, n)?;
        let probs_d = nan_on_device(gpu, g.probs_len())?;
        let (dq_d, dk_d, dv_d) = (
            nan_on_device(gpu, n)?,
            nan_on_device(gpu, n)?,
            nan_on_device(gpu, n)?,
        );
        let ws_d = nan_on_device(gpu, gpu_attn::attention_workspace_len(&g))?;

        gpu_attn::attention_forward(
            gpu,
            Precision::Fp32,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            out_d.ptr(),
            probs_d.ptr(),
        )?;
        expect_close(
            &format!("probs {label}"),
            &from_device::<f32>(gpu, &probs_d, g.probs_len())?,
            &probs,
            TOL_PROBS,
        );
        expect_close(
            &format!("out {label}"),
            &from_device::<f32>(gpu, &out_d, n)?,
            &out,
            TOL_OUT,
        );

        // The backward reads the GPU's own probabilities: the whole pipeline is under test.
        gpu_attn::attention_backward(
            gpu,
            Precision::Fp32,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            probs_d.ptr(),
            do_d.ptr(),
            dq_d.ptr(),
            dk_d.ptr(),
            dv_d.ptr(),
            ws_d.ptr(),
        )?;
        for (name, mem, want) in [("dq", &dq_d, &dq), ("dk", &dk_d, &dk), ("dv", &dv_d, &dv)] {
            expect_close(
                &format!("{name} {label}"),
                &from_device::<f32>(gpu, mem, n)?,
                want,
                TOL_BACKWARD,
            );
        }
    }
    Ok(())
}

/// The transposes only move values, so in every precision the result is bit-identical to the
/// CPU's transpose of the same stored (rounded) values: tolerance 0.
fn layout_matches_cpu(gpu: &Gpu, dt: Precision) -> anyhow::Result<()> {
    // Odd H and W, C and H·W below, at and above the 32-wide tile, single pixels and channels.
    let shapes = [
        Nchw::new(2, 3, 5, 7),
        Nchw::new(1, 33, 9, 11),
        Nchw::new(3, 64, 16, 16),
        Nchw::new(2, 1, 1, 1),
        Nchw::new(1, 40, 1, 37),
        Nchw::new(2, 1, 13, 3),
    ];
    for (seed, &s) in shapes.iter().enumerate() {
        let mut rng = Philox::new(200 + seed as u64);
        let x = rounded(dt, rng.normal_vec(s.len(), 1.0));
        let mut tokens = vec![0.0f32; s.len()];
        nchw_to_tokens(s, &x, &mut tokens);
        let mut back = vec![0.0f32; s.len()];
        tokens_to_nchw(s, &tokens, &mut back);

        let x_d = to_device_as(gpu, dt, &x)?;
        let tokens_d = nan_on_device_as(gpu, dt, s.len())?;
        gpu_attn::nchw_to_tokens(gpu, dt, s, x_d.ptr(), tokens_d.ptr())?;
        // A transpose only moves values: bit-identical.
        expect_close(
            &format!("nchw_to_tokens {dt} {s}"),
            &from_device_as(gpu, dt, &tokens_d, s.len())?,
            &tokens,
            0.0,
        );
        // tokens_to_nchw on its own input (not the round trip, which would hide a shared bug).
        let t_in = rounded(dt, rng.normal_vec(s.len(), 1.0));
        let mut want = vec![0.0f32; s.len()];
        tokens_to_nchw(s, &t_in, &mut want);
        let t_d = to_device_as(gpu, dt, &t_in)?;
        let x_out = nan_on_device_as(gpu, dt, s.len())?;
        gpu_attn::tokens_to_nchw(gpu, dt, s, t_d.ptr(), x_out.ptr())?;
        expect_close(
            &format!("tokens_to_nchw {dt} {s}"),
            &from_device_as(gpu, dt, &x_out, s.len())?,
            &want,
            0.0,
        );
        assert_eq!(back, x, "CPU round trip {s}");
    }
    Ok(())
}

// ---- bf16 / fp16 -----------------------------------------------------------------------------
//
// In reduced precision every tensor the pipeline stores is rounded to the storage type: the
// inputs, the scores S and probabilities P (the same buffer), the dP/dS workspace and the outputs;
// the products accumulate in fp32 and the softmax kernels compute in fp32. A single tolerance
// relative to each output's size would be either loose (an output that cancels to ~0 carries the
// error of its large terms) or flaky, so each element is checked against its own first-order
// error bound, derived below from the format's unit roundoff u (2⁻⁸ bf16, 2⁻¹¹ fp16) and the fp32
// one u₃₂ = 2⁻²⁴, and the test asserts |got − want| ≤ TOL_BOUND · bound for every element. The
// reference is the CPU attention in f64 on the same rounded inputs (for the backward: also on the
// GPU's own stored P, the backward's input), so the bound only has to cover the GPU's roundings:
//   store(v): |round(v) − v| ≤ u·|v| + η, with η half the smallest subnormal (fp16's P and
//             gradients can be subnormal);
//   a k-term fp32 product/sum: ≤ γ(k)·Σ|terms|, γ(k) = 2k·u₃₂ (k·u₃₂ for any summation order,
//             doubled for tensor cores whose fp32 accumulation may truncate instead of round).
// Propagated (|A| the elementwise absolute value, all products per item and head, s = 1/√d):
//   S̃ = store(Q Kᵀ):    on the logits λ = s·S, with a = s·|Q||K|ᵀ:
//                        |δλ_ij| ≤ u·|λ_ij| + (d + 2)·u₃₂·a_ij + s·η
//                        (the +2: the GPU's f32 scale and its rounded product s·S̃).
//   P̃ = store(softmax): |δP_ij| ≤ P_ij·(u + |δλ_ij| + Σ_k P_ik·|δλ_ik| + c_i) + η   (∂ log P_ij /
//                        ∂λ_ik = [j = k] − P_ik), with c_i = (L + 8 + 4·max_k|λ_ik|)·u₃₂ for the
//                        fp32 row sum, the exp and the subtraction of the maximum.
//   Õ = store(P̃ V):     |δO| ≤ |P̃ − P|·|V| + γ(L)·P̃|V| + u·|O| + η, with P̃ − P as measured
//                        (P itself is checked above, so this isolates the second product).
//   dṼ = store(P̃ᵀ dO):  |δdV| ≤ γ(L)·P̃ᵀ|dO| + u·|dV| + η.
//   dP̃ = store(dO Vᵀ):  e_ij = γ(d)·(|dO||V|ᵀ)_ij + u·|dP_ij| + η.
//   dS̃ = store(s·P̃ ⊙ (dP̃ − rowsum(P̃ ⊙ dP̃))):
//        |δdS_ij| ≤ s·P̃_ij·(e_ij + Σ_k P̃_ik·e_ik + γ(L)·Σ_k P̃_ik·|dP_ik| + u₃₂·(|dP_ij| + |dot_i|))
//                   + (u + 4u₃₂)·|dS_ij| + η.
//   dQ̃ = store(dS̃ K):   |δdQ| ≤ |δdS|·|K| + γ(L)·|dS||K| + u·|dQ| + η;  dK̃ = store(dS̃ᵀ Q) alike.
// dS itself is checked too: the workspace holds the last head's dS after the backward.
// The bounds are first order in u; TOL_BOUND = 1.25 covers the neglected O(u²) terms (a few
// percent of the bound in bf16) and nothing else. Measured on the emulator, max err/bound is
// 0.6–0.9 for P, O and dS, 0.2–0.4 for dq and dk (their bound adds |δdS| over L terms at worst
// alignment), and up to 0.98 for dV, whose bound is essentially the one rounding u·|dV|, which
// is attained. A value stored through a coarser type (bf16's rounding in an fp16 buffer: up to
// 8·u_fp16 where the bound is ~2–4·u_fp16), a wrong stride or a dropped term exceeds it.
const TOL_BOUND: f64 = 1.25;

const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// fp32 error factor of a k-term product or sum (see above).
fn gamma32(k: usize) -> f64 {
    2.0 * k as f64 * U32
}

/// Half the smallest positive (subnormal) value of the storage type: the absolute part of its
/// rounding error.
fn eta(dt: Precision) -> f64 {
    match dt {
        Precision::Fp32 => 2f64.powi(-150),
        Precision::Bf16 => 2f64.powi(-134),
        Precision::Fp16 => 2f64.powi(-25),
    }
}

fn rounded(dt: Precision, v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| dt.round(x)).collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn nan_on_device_as(gpu: &Gpu, dt: Precision, len: usize) -> anyhow::Result<DeviceMemory> {
    Ok(to_device_as(gpu, dt, &vec![f32::NAN; len])?)
}

/// Asserts |got − want| ≤ TOL_BOUND · bound elementwise, through `expect_close` so the table
/// shows max |got − want| / bound in both error columns: it compares 1 + ratio with 1 (the f32
/// sum loses ~1e-7 of the ratio; a non-finite `got` gives an infinite ratio, which fails).
fn expect_bounded(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    assert_eq!(got.len(), bound.len(), "{what}: lengths differ");
    let one_plus_ratio: Vec<f32> = got
        .iter()
        .zip(want)
        .zip(bound)
        .map(|((&g, &w), &b)| {
            let r = (f64::from(g) - w).abs() / b;
            if r.is_finite() {
                (1.0 + r) as f32
            } else {
                f32::INFINITY
            }
        })
        .collect();
    expect_close(
        &format!("{what} err/bound"),
        &one_plus_ratio,
        &vec![1.0; got.len()],
        TOL_BOUND,
    );
}

/// Index helpers for (B, L, C) tokens, head h channel t, and (B, heads, L, L) probabilities.
struct Layout {
    l: usize,
    c: usize,
    d: usize,
    heads: usize,
}

impl Layout {
    fn tok(&self, b: usize, i: usize, h: usize, t: usize) -> usize {
        (b * self.l + i) * self.c + h * self.d + t
    }
    fn p(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        ((b * self.heads + h) * self.l + i) * self.l + j
    }
}

/// The error bounds of P and O (see above), on the reference in f64; `p_gpu` is the GPU's P.
#[allow(clippy::too_many_arguments)]
fn forward_bounds(
    dt: Precision,
    g: &AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    p: &[f64],
    out: &[f64],
    p_gpu: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (u, eta) = (dt.unit_roundoff(), eta(dt));
    let (l, d) = (g.len, g.head_dim);
    let ly = Layout {
        l,
        c: g.channels(),
        d,
        heads: g.heads,
    };
    let s = 1.0 / (d as f64).sqrt();
    let mut bound_p = vec![0.0; g.probs_len()];
    let mut bound_o = vec![0.0; g.tokens_len()];
    let mut dl = vec![0.0; l];
    for b in 0..g.batch {
        for h in 0..g.heads {
            for i in 0..l {
                let mut max_logit = 0.0f64;
                for (j, dl_j) in dl.iter_mut().enumerate() {
                    let (mut lam, mut a) = (0.0, 0.0);
                    for t in 0..d {
                        let (qv, kv) = (q[ly.tok(b, i, h, t)], k[ly.tok(b, j, h, t)]);
                        lam += qv * kv;
                        a += (qv * kv).abs();
                    }
                    let (lam, a) = (s * lam, s * a);
                    max_logit = max_logit.max(lam.abs());
                    *dl_j = u * lam.abs() + (d + 2) as f64 * U32 * a + s * eta;
                }
                let c = (l as f64 + 8.0 + 4.0 * max_logit) * U32;
                let mean_dl: f64 = (0..l).map(|j| p[ly.p(b, h, i, j)] * dl[j]).sum();
                for j in 0..l {
                    let pij = p[ly.p(b, h, i, j)];
                    bound_p[ly.p(b, h, i, j)] = pij * (u + dl[j] + mean_dl + c) + eta;
                }
                for t in 0..d {
                    let (mut dp_v, mut p_v) = (0.0, 0.0);
                    for j in 0..l {
                        let vv = v[ly.tok(b, j, h, t)].abs();
                        let pi = ly.p(b, h, i, j);
                        dp_v += (p_gpu[pi] - p[pi]).abs() * vv;
                        p_v += p_gpu[pi] * vv;
                    }
                    let o = ly.tok(b, i, h, t);
                    bound_o[o] = dp_v + gamma32(l) * p_v + u * out[o].abs() + eta;
                }
            }
        }
    }
    (bound_p, bound_o)
}

/// What [`backward_bounds`] derives: the error bounds of dq, dk, dv, and the reference dS of
/// the last head (B, L, L) with its bound (the workspace holds that dS after the backward).
struct BackwardBounds {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    ds_last: Vec<f64>,
    ds_last_bound: Vec<f64>,
}

/// The error bounds of dq, dk, dv and dS (see above) for the backward that read `p` (the GPU's
/// P).
#[allow(clippy::too_many_arguments)]
fn backward_bounds(
    dt: Precision,
    g: &AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    p: &[f64],
    dout: &[f64],
    (dq, dk, dv): (&[f64], &[f64], &[f64]),
) -> BackwardBounds {
    let (u, eta) = (dt.unit_roundoff(), eta(dt));
    let (l, d) = (g.len, g.head_dim);
    let ly = Layout {
        l,
        c: g.channels(),
        d,
        heads: g.heads,
    };
    let s = 1.0 / (d as f64).sqrt();
    let n = g.tokens_len();
    let (mut bq, mut bk, mut bv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    // Per (item, head): dP, its error e, dS = s·P ⊙ (dP − rowsum) and its error.
    let (mut dp, mut e) = (vec![0.0; l * l], vec![0.0; l * l]);
    let (mut ds, mut eds) = (vec![0.0; l * l], vec![0.0; l * l]);
    let (mut ds_last, mut ds_last_bound) = (Vec::new(), Vec::new());
    for b in 0..g.batch {
        for h in 0..g.heads {
            let pm = |i: usize, j: usize| p[ly.p(b, h, i, j)];
            for i in 0..l {
                for j in 0..l {
                    let (mut acc, mut mag) = (0.0, 0.0);
                    for t in 0..d {
                        let (gv, vv) = (dout[ly.tok(b, i, h, t)], v[ly.tok(b, j, h, t)]);
                        acc += gv * vv;
                        mag += (gv * vv).abs();
                    }
                    dp[i * l + j] = acc;
                    e[i * l + j] = gamma32(d) * mag + u * acc.abs() + eta;
                }
                let dot: f64 = (0..l).map(|j| pm(i, j) * dp[i * l + j]).sum();
                let (mut pe, mut pdp) = (0.0, 0.0);
                for j in 0..l {
                    pe += pm(i, j) * e[i * l + j];
                    pdp += pm(i, j) * dp[i * l + j].abs();
                }
                for j in 0..l {
                    let ij = i * l + j;
                    ds[ij] = s * pm(i, j) * (dp[ij] - dot);
                    eds[ij] = s
                        * pm(i, j)
                        * (e[ij] + pe + gamma32(l) * pdp + U32 * (dp[ij].abs() + dot.abs()))
                        + (u + 4.0 * U32) * ds[ij].abs()
                        + eta;
                }
            }
            if h + 1 == g.heads {
                ds_last.extend_from_slice(&ds);
                ds_last_bound.extend_from_slice(&eds);
            }
            for i in 0..l {
                for t in 0..d {
                    // dQ_it = Σ_j dS_ij K_jt;  dK_it = Σ_j dS_ji Q_jt;  dV_it = Σ_j P_ji dO_jt.
                    let (mut q_err, mut q_mag, mut k_err, mut k_mag, mut v_mag) =
                        (0.0, 0.0, 0.0, 0.0, 0.0);
                    for j in 0..l {
                        let (kv, qv) = (k[ly.tok(b, j, h, t)].abs(), q[ly.tok(b, j, h, t)].abs());
                        q_err += eds[i * l + j] * kv;
                        q_mag += ds[i * l + j].abs() * kv;
                        k_err += eds[j * l + i] * qv;
                        k_mag += ds[j * l + i].abs() * qv;
                        v_mag += pm(j, i) * dout[ly.tok(b, j, h, t)].abs();
                    }
                    let o = ly.tok(b, i, h, t);
                    bq[o] = q_err + gamma32(l) * q_mag + u * dq[o].abs() + eta;
                    bk[o] = k_err + gamma32(l) * k_mag + u * dk[o].abs() + eta;
                    bv[o] = gamma32(l) * v_mag + u * dv[o].abs() + eta;
                }
            }
        }
    }
    BackwardBounds {
        dq: bq,
        dk: bk,
        dv: bv,
        ds_last,
        ds_last_bound,
    }
}

fn reduced_attention_matches_cpu(gpu: &Gpu, dt: Precision) -> anyhow::Result<()> {
    // The fp32 test's shapes: L not a multiple of 32, one head and several, d = 1, L = 1, and a
    // CIFAR-like 16×16 block.
    let shapes = [
        (2, 37, 8, 1),
        (3, 50, 12, 3),
        (2, 33, 5, 5),
        (1, 1, 4, 2),
        (1, 100, 96, 4),
        (2, 256, 64, 1),
    ];
    for (seed, &(b, l, c, heads)) in shapes.iter().enumerate() {
        let g = AttentionShape::new(b, l, c, heads)?;
        let label = format!("{dt} B{b} L{l} C{c} h{heads}");
        let n = g.tokens_len();
        let mut rng = Philox::new(300 + seed as u64);
        // Rounded to the storage type: what the GPU reads, and what the reference computes on.
        let q = rounded(dt, rng.normal_vec(n, 1.0));
        let k = rounded(dt, rng.normal_vec(n, 1.0));
        let v = rounded(dt, rng.normal_vec(n, 1.0));
        let dout = rounded(dt, rng.normal_vec(n, 1.0));
        let (q64, k64, v64, do64) = (widen(&q), widen(&k), widen(&v), widen(&dout));

        let mut out = vec![0.0f64; n];
        let mut probs = vec![0.0f64; g.probs_len()];
        attention_forward(&g, &q64, &k64, &v64, &mut out, &mut probs);

        let (q_d, k_d, v_d, do_d) = (
            to_device_as(gpu, dt, &q)?,
            to_device_as(gpu, dt, &k)?,
            to_device_as(gpu, dt, &v)?,
            to_device_as(gpu, dt, &dout)?,
        );
        let out_d = nan_on_device_as(gpu, dt, n)?;
        let probs_d = nan_on_device_as(gpu, dt, g.probs_len())?;
        let (dq_d, dk_d, dv_d) = (
            nan_on_device_as(gpu, dt, n)?,
            nan_on_device_as(gpu, dt, n)?,
            nan_on_device_as(gpu, dt, n)?,
        );
        let ws_d = nan_on_device_as(gpu, dt, gpu_attn::attention_workspace_len(&g))?;

        gpu_attn::attention_forward(
            gpu,
            dt,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            out_d.ptr(),
            probs_d.ptr(),
        )?;
        let p_gpu = from_device_as(gpu, dt, &probs_d, g.probs_len())?;
        let p_gpu64 = widen(&p_gpu);
        let (bound_p, bound_o) = forward_bounds(dt, &g, &q64, &k64, &v64, &probs, &out, &p_gpu64);
        expect_bounded(&format!("probs {label}"), &p_gpu, &probs, &bound_p);
        expect_bounded(
            &format!("out {label}"),
            &from_device_as(gpu, dt, &out_d, n)?,
            &out,
            &bound_o,
        );

        // The backward reads the GPU's own (rounded) probabilities, and so does its reference.
        gpu_attn::attention_backward(
            gpu,
            dt,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            probs_d.ptr(),
            do_d.ptr(),
            dq_d.ptr(),
            dk_d.ptr(),
            dv_d.ptr(),
            ws_d.ptr(),
        )?;
        let (mut dq, mut dk, mut dv) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
        attention_backward(
            &g, &q64, &k64, &v64, &p_gpu64, &do64, &mut dq, &mut dk, &mut dv,
        );
        let bounds = backward_bounds(dt, &g, &q64, &k64, &v64, &p_gpu64, &do64, (&dq, &dk, &dv));
        // The softmax backward on its own: the workspace ends up holding dS = s·P ⊙ (dP − rowsum)
        // of the last head for every item (the glue reuses it head after head), checked against
        // its own bound first — tighter than what reaches dq and dk through the last products.
        expect_bounded(
            &format!("dS last head {label}"),
            &from_device_as(gpu, dt, &ws_d, b * l * l)?,
            &bounds.ds_last,
            &bounds.ds_last_bound,
        );
        for (name, mem, want, bound) in [
            ("dq", &dq_d, &dq, &bounds.dq),
            ("dk", &dk_d, &dk, &bounds.dk),
            ("dv", &dv_d, &dv, &bounds.dv),
        ] {
            expect_bounded(
                &format!("{name} {label}"),
                &from_device_as(gpu, dt, mem, n)?,
                want,
                bound,
            );
        }
    }
    Ok(())
}
