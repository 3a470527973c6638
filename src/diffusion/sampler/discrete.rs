//! The discrete-time steps: DDPM's ancestral step through the posterior and DDIM's step, each
//! from timestep t to the previous visited one; and DDIM inversion, DDIM's step run backwards.
//!
//! - DDPM, for a step t → prev with ᾱ_prev (= 1 when stepping to x₀): β' = 1 − ᾱₜ/ᾱ_prev and
//!   α' = 1 − β' are the step's own β and α. The mean is the posterior mean μ̃ of
//!   q(x_prev | xₜ, x̂₀) (DDPM eqs. 6, 7):
//!   c_x0 = √ᾱ_prev β'/(1 − ᾱₜ), c_xt = √α' (1 − ᾱ_prev)/(1 − ᾱₜ).
//!   σ² = β̃ = (1 − ᾱ_prev)/(1 − ᾱₜ) β' (`fixed_small`, at least 1e-20) or β' (`fixed_large`);
//!   no noise on a step to x₀. With every timestep visited and no clipping this is DDPM eq. 11
//!   (Algorithm 2).
//! - DDIM (eq. 12): x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z, with
//!   σ = η √((1 − ᾱ_prev)/(1 − ᾱₜ)) √(1 − ᾱₜ/ᾱ_prev) (eq. 16). By default
//!   ε̂ = (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ) is recomputed from the *clipped* x̂₀ (GLIDE's choice, diffusers'
//!   `use_clipped_model_output=True`), so x_prev stays consistent with the x̂₀ actually used.
//!   `eps_from_clipped_x0 = false` keeps the unclipped ε̂ instead, as diffusers does by default
//!   and as the widely copied DDIM loop does. Without clipping the two agree.
//! - Inversion (DDIM §5.4, eq. 13 integrated from 0 up to T): from the noise level of `prev`
//!   to that of t, x_t = √ᾱₜ x̂₀ + √(1 − ᾱₜ) ε̂ with the model called at t on x_prev — the
//!   approximation ε(x_t, t) ≈ ε(x_prev, t) that diffusers' `DDIMInverseScheduler` makes too.
//!   Nothing is clipped: a clipped x̂₀ could not be undone.

use super::coeffs::StepCoeffs;
use crate::diffusion::schedule::{Schedule, VarianceType};
use crate::diffusion::spacing::StepPair;
use crate::diffusion::target::{PredictionType, Reparam};

/// (ᾱₜ, ᾱ_prev) of one step.
fn step_alphas(schedule: &Schedule, pair: StepPair) -> (f64, f64) {
    (
        schedule.alpha_bar(pair.t),
        schedule.alpha_bar_prev(pair.prev),
    )
}

fn clip_f32(clip: Option<f64>) -> f32 {
    clip.map_or(f32::INFINITY, |c| c as f32)
}

impl StepCoeffs {
    /// DDPM ancestral step t → prev through the posterior q(x_prev | xₜ, x̂₀) (DDPM eqs. 6, 7).
    pub fn ddpm(
        schedule: &Schedule,
        prediction: PredictionType,
        variance: VarianceType,
        pair: StepPair,
        clip: Option<f64>,
    ) -> Self {
        let (ab_t, ab_p) = step_alphas(schedule, pair);
        let r = Reparam::new(prediction, ab_t);
        // The step's own β' and α' (= βₜ, αₜ when prev = t − 1).
        let alpha = ab_t / ab_p;
        let beta = 1.0 - alpha;
        // μ̃ = √ᾱ_prev β'/(1 − ᾱₜ) x̂₀ + √α' (1 − ᾱ_prev)/(1 − ᾱₜ) xₜ  (DDPM eq. 7)
        let c_x0 = ab_p.sqrt() * beta / (1.0 - ab_t);
        let c_xt = alpha.sqrt() * (1.0 - ab_p) / (1.0 - ab_t);
        let var = match (pair.prev, variance) {
            (None, _) => 0.0,
            // β̃ = (1 − ᾱ_prev)/(1 − ᾱₜ) β'  (DDPM eq. 7)
            (Some(_), VarianceType::FixedSmall) => ((1.0 - ab_p) / (1.0 - ab_t) * beta).max(1e-20),
            (Some(_), VarianceType::FixedLarge) => beta,
        };
        Self {
            x0_x: r.x0_x as f32,
            x0_out: r.x0_out as f32,
            clip: clip_f32(clip),
            c_x0: c_x0 as f32,
            c_xt: c_xt as f32,
            sigma: var.sqrt() as f32,
            ..Self::zero()
        }
    }

    /// DDIM step t → prev (DDIM eq. 12 with σ = η·eq. 16).
    pub fn ddim(
        schedule: &Schedule,
        prediction: PredictionType,
        pair: StepPair,
        clip: Option<f64>,
        eta: f64,
        eps_from_clipped_x0: bool,
    ) -> Self {
        let (ab_t, ab_p) = step_alphas(schedule, pair);
        let r = Reparam::new(prediction, ab_t);
        // σ = η √((1 − ᾱ_prev)/(1 − ᾱₜ)) √(1 − ᾱₜ/ᾱ_prev)  (DDIM eq. 16)
        let sigma = eta * ((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p)).sqrt();
        // "direction pointing to xₜ": √(1 − ᾱ_prev − σ²) ε̂  (DDIM eq. 12)
        let dir = (1.0 - ab_p - sigma * sigma).max(0.0).sqrt();
        // ε̂ = (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ), so the direction is dir/√(1−ᾱₜ)·xₜ − k·x̂₀ with:
        let k = dir * ab_t.sqrt() / (1.0 - ab_t).sqrt();
        let (c_x0, c_x0_raw) = if eps_from_clipped_x0 {
            (ab_p.sqrt() - k, 0.0)
        } else {
            (ab_p.sqrt(), -k)
        };
        Self {
            x0_x: r.x0_x as f32,
            x0_out: r.x0_out as f32,
            clip: clip_f32(clip),
            c_x0: c_x0 as f32,
            c_x0_raw: c_x0_raw as f32,
            c_xt: (dir / (1.0 - ab_t).sqrt()) as f32,
            sigma: sigma as f32,
            ..Self::zero()
        }
    }

    /// DDIM inversion of the step `pair`: from the noise level of `pair.prev` (ᾱ = 1 for x₀)
    /// up to that of `pair.t`, the model called at `pair.t`.
    pub fn ddim_inverse(schedule: &Schedule, prediction: PredictionType, pair: StepPair) -> Self {
        let (ab_to, ab_from) = step_alphas(schedule, pair);
        // x̂₀ and ε̂ read at the current level, as diffusers does. At ᾱ = 1 a predicted x₀ says
        // nothing about ε, so there the level of t is used.
        let ab_read = if ab_from >= 1.0 && prediction == PredictionType::Sample {
            ab_to
        } else {
            ab_from
        };
        let r = Reparam::new(prediction, ab_read);
        let (sa, s1) = (ab_to.sqrt(), (1.0 - ab_to).sqrt());
        // x_t = √ᾱₜ x̂₀ + √(1 − ᾱₜ) ε̂, with x̂₀ = x0_x·x + x0_out·o and ε̂ = eps_x·x + eps_out·o.
        Self {
            x0_x: r.x0_x as f32,
            x0_out: r.x0_out as f32,
            c_x0: sa as f32,
            c_xt: (s1 * r.eps_x) as f32,
            c_out: (s1 * r.eps_out) as f32,
            ..Self::zero()
        }
    }
}
