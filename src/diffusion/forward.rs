//! The forward process in closed form and the training targets: the CPU reference of the fused
//! "noise-add" kernel. Each batch item has its own timestep; per-item coefficients are rounded
//! to f32 once, elements are independent, so any thread split gives the same bits.

use rayon::prelude::*;

use super::schedule::Schedule;
use super::target::PredictionType;
use crate::shape::expect_len;

/// Stops on buffers that do not hold `t.len()` items of `item_len` elements, or a t ≥ T.
fn check(op: &str, schedule: &Schedule, t: &[usize], item_len: usize, bufs: &[(&str, usize)]) {
    assert!(item_len > 0, "{op}: item_len must be positive");
    let want = t.len() * item_len;
    let shape = format!("({}, {item_len})", t.len());
    for &(name, len) in bufs {
        expect_len(op, name, len, want, &shape);
    }
    let big = schedule.num_timesteps();
    if let Some(&bad) = t.iter().find(|&&ti| ti >= big) {
        panic!("{op}: timestep {bad} out of range for T = {big}");
    }
}

/// Applies `out = a·u + b·w` item by item with per-item coefficients.
fn mix_items(
    u: &[f32],
    w: &[f32],
    coeffs: &[(f32, f32)], // (B) per-item (a, b)
    item_len: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(item_len)
        .zip(u.par_chunks(item_len).zip(w.par_chunks(item_len)))
        .zip(coeffs.par_iter())
        .for_each(|((o, (u, w)), &(a, b))| {
            for ((ov, &uv), &wv) in o.iter_mut().zip(u).zip(w) {
                *ov = a * uv + b * wv;
            }
        });
}

/// xₜ = √ᾱₜ x₀ + √(1 − ᾱₜ) ε, item by item  (DDPM eq. 4).
pub fn add_noise(
    schedule: &Schedule,
    x0: &[f32],  // (B, C, H, W)
    eps: &[f32], // (B, C, H, W)
    t: &[usize], // (B) 0-based timestep of each item
    item_len: usize,
    xt: &mut [f32], // (B, C, H, W)
) {
    let op = "add_noise";
    check(
        op,
        schedule,
        t,
        item_len,
        &[("x0", x0.len()), ("eps", eps.len()), ("xt", xt.len())],
    );
    let (sa, s1) = (
        schedule.sqrt_alphas_cumprod(),
        schedule.sqrt_one_minus_alphas_cumprod(),
    );
    let coeffs: Vec<(f32, f32)> = t.iter().map(|&ti| (sa[ti], s1[ti])).collect();
    mix_items(x0, eps, &coeffs, item_len, xt);
}

/// The regression target of the simple loss (DDPM eq. 14) under `prediction`: ε, x₀, or
/// v = √ᾱₜ ε − √(1 − ᾱₜ) x₀ (Salimans & Ho 2022).
pub fn training_target(
    schedule: &Schedule,
    prediction: PredictionType,
    x0: &[f32],  // (B, C, H, W)
    eps: &[f32], // (B, C, H, W)
    t: &[usize], // (B)
    item_len: usize,
    out: &mut [f32], // (B, C, H, W)
) {
    let op = "training_target";
    check(
        op,
        schedule,
        t,
        item_len,
        &[("x0", x0.len()), ("eps", eps.len()), ("out", out.len())],
    );
    let coeffs: Vec<(f32, f32)> = t
        .iter()
        .map(|&ti| {
            let (a, b) = prediction.target_coeffs(schedule.alpha_bar(ti));
            (a as f32, b as f32)
        })
        .collect();
    mix_items(x0, eps, &coeffs, item_len, out);
}
