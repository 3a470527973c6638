//! The reverse process as a differential equation, discretised over σ.
//!
//! With σ = √((1 − ᾱ)/ᾱ) and x̃ = xₜ/√ᾱ = √(1 + σ²)·xₜ, the forward process is x̃ = x₀ + σε and
//! the probability-flow ODE (Song et al. 2021, eq. 13; DDIM eq. 14; Karras et al. 2022, eq. 4
//! with s = 1) is
//!
//! ```text
//! dx̃/dσ = ε̂(x̃, σ) = (x̃ − x̂₀)/σ
//! ```
//!
//! The state here stays xₜ, the model's own input, so x̃ appears only inside the coefficients.
//! ᾱ of a node is 1/(1 + σ²) exactly, and the model is called at the fractional timestep whose
//! σ it is ([`sigma_to_t`], log-σ interpolation over the training timesteps, as diffusers and
//! k-diffusion do). The last node of every solver here is σ = 0, where x = x̂₀.
//!
//! - Euler: x̃' = x̃ + (σ' − σ) ε̂. In xₜ this is DDIM η = 0 between the same two noise levels
//!   (DDIM §4.3), so Euler over the spacing's timesteps is DDIM.
//! - Heun (Karras et al. 2022, Algorithm 1 without churn): the Euler predictor x̃', then
//!   x̃_next = x̃ + (σ' − σ)(ε̂(x̃, σ) + ε̂(x̃', σ'))/2; the step to σ = 0 stays Euler. N nodes take
//!   2N − 1 model evaluations.
//! - Euler–Maruyama on the reverse VP SDE (Song et al. 2021, eqs. 6 and 11):
//!   dx = [−½β x − β ∇log p] dt + √β dw̄, with ∇log p = −ε̂/√(1 − ᾱ). Over a step, ∫β dt =
//!   Δ = ln(ᾱ'/ᾱ), so x' = (1 + Δ/2) x − Δ ε̂/√(1 − ᾱ) + √Δ z; the last step lands on x̂₀
//!   without noise (Song et al.'s final denoising).
//! - DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), in the data prediction x̂₀ with
//!   λ = ln(√ᾱ/√(1 − ᾱ)) = −ln σ and h = λ' − λ:
//!   x' = (σ'_vp/σ_vp) x − √ᾱ' (e^{−h} − 1) D, D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev,
//!   r = h_prev/h; first order (D = x̂₀) on the first step and on the step to σ = 0.

use serde::{Deserialize, Serialize};

use super::coeffs::StepCoeffs;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::spacing::{timesteps, Spacing};
use crate::diffusion::target::{PredictionType, Reparam};
use crate::diffusion::DiffusionError;

/// Which noise levels a continuous-time sampler visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigmaSpacing {
    /// Karras et al. 2022, eq. 5 with ρ = 7: σᵢ = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} −
    /// σ_max^{1/ρ}))^ρ from σ(T − 1) down to σ(0), the whole trained range.
    Karras,
    /// σ at the timesteps the spacing (`--spacing`) visits.
    Timesteps,
}

impl SigmaSpacing {
    pub const ALL: [SigmaSpacing; 2] = [Self::Karras, Self::Timesteps];

    pub fn name(self) -> &'static str {
        match self {
            Self::Karras => "karras",
            Self::Timesteps => "timesteps",
        }
    }
}

/// A noise level the solver visits: σ, and the fractional timestep the model is called at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Node {
    pub sigma: f64,
    pub t: f64,
}

/// σ of training timestep t: √((1 − ᾱₜ)/ᾱₜ).
pub fn sigma_of(schedule: &Schedule, t: usize) -> f64 {
    let ab = schedule.alpha_bar(t);
    ((1.0 - ab) / ab).sqrt()
}

/// The fractional timestep of σ: linear interpolation of ln σ between the two training
/// timesteps around it, clamped to [0, T − 1] (diffusers' `_sigma_to_t`).
pub fn sigma_to_t(schedule: &Schedule, sigma: f64) -> f64 {
    let n = schedule.num_timesteps();
    if n == 1 {
        return 0.0;
    }
    let log_s = sigma.max(1e-10).ln();
    let log_at = |t: usize| sigma_of(schedule, t).ln();
    // ln σ(t) increases with t; find the last t with ln σ(t) ≤ ln σ, at most T − 2.
    let (mut lo, mut hi) = (0usize, n - 1);
    if log_s <= log_at(0) {
        return 0.0;
    }
    if log_s >= log_at(n - 1) {
        return (n - 1) as f64;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if log_at(mid) <= log_s {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (a, b) = (log_at(lo), log_at(hi));
    let w = ((log_s - a) / (b - a)).clamp(0.0, 1.0);
    lo as f64 + w
}

/// The N noise levels to visit, descending, before the final σ = 0.
pub fn nodes(
    schedule: &Schedule,
    kind: SigmaSpacing,
    spacing: Spacing,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<Node>, DiffusionError> {
    let big_t = schedule.num_timesteps();
    // Same bounds as the discrete samplers: 1 ≤ N ≤ T.
    let ts = timesteps(spacing, big_t, steps, steps_offset)?;
    Ok(match kind {
        SigmaSpacing::Timesteps => ts
            .iter()
            .map(|&t| Node {
                sigma: sigma_of(schedule, t),
                t: t as f64,
            })
            .collect(),
        SigmaSpacing::Karras => {
            let rho = 7.0;
            let (lo, hi) = (
                sigma_of(schedule, 0).powf(1.0 / rho),
                sigma_of(schedule, big_t - 1).powf(1.0 / rho),
            );
            (0..steps)
                .map(|i| {
                    let ramp = if steps == 1 {
                        0.0
                    } else {
                        i as f64 / (steps - 1) as f64
                    };
                    let sigma = (hi + ramp * (lo - hi)).powf(rho);
                    Node {
                        sigma,
                        t: sigma_to_t(schedule, sigma),
                    }
                })
                .collect()
        }
    })
}

/// √ᾱ = 1/√(1 + σ²), the scale of xₜ relative to x̃.
fn sqrt_ab(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma).sqrt()
}

/// x̂₀ from (xₜ, out) at noise level σ, with clipping.
fn with_x0(prediction: PredictionType, sigma: f64, clip: Option<f64>) -> StepCoeffs {
    let r = Reparam::new(prediction, 1.0 / (1.0 + sigma * sigma));
    StepCoeffs {
        x0_x: r.x0_x as f32,
        x0_out: r.x0_out as f32,
        clip: clip.map_or(f32::INFINITY, |c| c as f32),
        ..StepCoeffs::zero()
    }
}

/// Euler from σ to σ' (σ > 0): x' = [(σ'/σ)√(1+σ²) xₜ + (1 − σ'/σ) x̂₀]/√(1+σ'²), which is
/// x̃ + (σ' − σ)(x̃ − x̂₀)/σ rescaled to xₜ.
pub fn euler(prediction: PredictionType, s: f64, s_next: f64, clip: Option<f64>) -> StepCoeffs {
    let q = s_next / s;
    let (a, a_next) = (sqrt_ab(s), sqrt_ab(s_next));
    StepCoeffs {
        c_xt: (q * a_next / a) as f32,
        c_x0: ((1.0 - q) * a_next) as f32,
        ..with_x0(prediction, s, clip)
    }
}

/// Heun's first evaluation (σ → σ', σ' > 0): x_new is the Euler predictor at σ', and the history
/// keeps √ᾱ'·(x̃ + (σ' − σ)/2·ε̂), the part of the corrected step known so far.
pub fn heun_predict(
    prediction: PredictionType,
    s: f64,
    s_next: f64,
    clip: Option<f64>,
) -> StepCoeffs {
    let (a, a_next) = (sqrt_ab(s), sqrt_ab(s_next));
    let half = (s_next - s) / (2.0 * s);
    StepCoeffs {
        // x̃ + (σ'−σ)/2 · (x̃ − x̂₀)/σ, with x̃ = xₜ/√ᾱ, times √ᾱ'.
        d_xt: ((1.0 + half) * a_next / a) as f32,
        d_x0: (-half * a_next) as f32,
        ..euler(prediction, s, s_next, clip)
    }
}

/// Heun's second evaluation, at the predictor x' (noise level σ'): x_next = h + √ᾱ'(σ' − σ)/2 ·
/// ε̂(x', σ'), with ε̂ = (x'/√ᾱ' − x̂₀)/σ'.
pub fn heun_correct(
    prediction: PredictionType,
    s: f64,
    s_next: f64,
    clip: Option<f64>,
) -> StepCoeffs {
    let a_next = sqrt_ab(s_next);
    let k = (s_next - s) / (2.0 * s_next);
    StepCoeffs {
        c_h: 1.0,
        c_xt: k as f32,
        c_x0: (-k * a_next) as f32,
        ..with_x0(prediction, s_next, clip)
    }
}

/// One Euler–Maruyama step of the reverse VP SDE from σ to σ' (σ' > 0), or the final
/// denoising step (σ' = 0: x = x̂₀).
pub fn euler_maruyama(
    prediction: PredictionType,
    s: f64,
    s_next: f64,
    clip: Option<f64>,
) -> StepCoeffs {
    let base = with_x0(prediction, s, clip);
    if s_next == 0.0 {
        return StepCoeffs { c_x0: 1.0, ..base };
    }
    let ab = 1.0 / (1.0 + s * s);
    // Δ = ∫β dt = ln(ᾱ'/ᾱ) = ln((1 + σ²)/(1 + σ'²))
    let delta = ((1.0 + s * s) / (1.0 + s_next * s_next)).ln();
    // x' = (1 + Δ/2) xₜ − Δ/(1 − ᾱ) (xₜ − √ᾱ x̂₀) + √Δ z
    StepCoeffs {
        c_xt: (1.0 + delta / 2.0 - delta / (1.0 - ab)) as f32,
        c_x0: (delta * ab.sqrt() / (1.0 - ab)) as f32,
        sigma: delta.sqrt() as f32,
        ..base
    }
}

/// One DPM-Solver++(2M) step from σ to σ'. `h_prev` is the previous step's h = ln(σ_prev/σ)
/// (None on the first step: first order). The history holds the previous x̂₀.
pub fn dpm_solver_2m(
    prediction: PredictionType,
    s: f64,
    s_next: f64,
    h_prev: Option<f64>,
    clip: Option<f64>,
) -> StepCoeffs {
    let base = StepCoeffs {
        d_x0: 1.0,
        ..with_x0(prediction, s, clip)
    };
    if s_next == 0.0 {
        return StepCoeffs { c_x0: 1.0, ..base };
    }
    let (a, a_next) = (sqrt_ab(s), sqrt_ab(s_next));
    // e^{−h} = σ'/σ, since λ = −ln σ.
    let e = s_next / s;
    let h = (s / s_next).ln();
    // σ_vp = σ √ᾱ; −√ᾱ' (e^{−h} − 1) = √ᾱ' (1 − e^{−h})
    let c_xt = (s_next * a_next) / (s * a);
    let w = a_next * (1.0 - e);
    let (c_x0, c_h) = match h_prev {
        None => (w, 0.0),
        Some(hp) => {
            let r = hp / h;
            (w * (1.0 + 1.0 / (2.0 * r)), -w / (2.0 * r))
        }
    };
    StepCoeffs {
        c_xt: c_xt as f32,
        c_x0: c_x0 as f32,
        c_h: c_h as f32,
        ..base
    }
}

impl std::fmt::Display for SigmaSpacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SigmaSpacing {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                DiffusionError::new(
                    "sampler",
                    "sigmas",
                    format!("unknown σ spacing `{s}`; expected karras or timesteps"),
                )
            })
    }
}

/// ᾱ at a fractional timestep, the inverse of [`sigma_to_t`]: ln σ interpolated linearly
/// between the two training timesteps around t. Exactly ᾱₜ at an integer t.
pub fn alpha_bar_at(schedule: &Schedule, t: f64) -> f64 {
    let last = schedule.num_timesteps() - 1;
    let t = t.clamp(0.0, last as f64);
    let lo = t.floor() as usize;
    if t == lo as f64 {
        return schedule.alpha_bar(lo);
    }
    let w = t - lo as f64;
    let ln_s = (1.0 - w) * sigma_of(schedule, lo).ln() + w * sigma_of(schedule, lo + 1).ln();
    let s = ln_s.exp();
    1.0 / (1.0 + s * s)
}
