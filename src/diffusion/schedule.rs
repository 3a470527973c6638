//! Noise schedules: βₜ for t = 0..T-1 and everything derived from it, computed once.
//!
//! Coefficients are computed in f64 (a 1000-term product of αₜ in f32 drifts in the 5th digit) and
//! stored as f32 for the elementwise kernels; samplers read ᾱ in f64 through
//! [`Schedule::alpha_bar`] and round their step coefficients to f32 only at the end.

use serde::{Deserialize, Serialize};

use super::spacing::Spacing;
use super::target::PredictionType;
use super::DiffusionError;
use crate::float::sigmoid;

/// How βₜ grows with t. Names as in diffusers' `beta_schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// β linear from `beta_start` to `beta_end` (DDPM §4).
    #[serde(rename = "linear")]
    Linear,
    /// √β linear from √`beta_start` to √`beta_end`, then squared (latent diffusion).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// Nichol & Dhariwal 2021 cosine: ᾱ(s) = cos²((s + 0.008)/1.008 · π/2) for s = t/T,
    /// βₜ = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999). Ignores `beta_start` and `beta_end`.
    #[serde(rename = "squaredcos_cap_v2", alias = "cosine")]
    SquaredCosCapV2,
    /// β = sigmoid(linspace(−6, 6, T)) · (`beta_end` − `beta_start`) + `beta_start` (GeoDiff).
    #[serde(rename = "sigmoid")]
    Sigmoid,
    /// The cosine schedule's construction over a Laplace-shaped log-SNR (diffusers' `laplace`):
    /// λ(s) = −½ sign(½ − s) ln(1 − 2|½ − s| + 10⁻⁶), "ᾱ"(s) = √(e^λ/(1 + e^λ)),
    /// βₜ = min(1 − "ᾱ"((t+1)/T)/"ᾱ"(t/T), 0.999). Ignores `beta_start` and `beta_end`.
    #[serde(rename = "laplace")]
    Laplace,
}

impl BetaSchedule {
    /// Whether βₜ is built from `beta_start` and `beta_end`.
    pub fn uses_beta_range(self) -> bool {
        matches!(self, Self::Linear | Self::ScaledLinear | Self::Sigmoid)
    }
}

/// The variance of the DDPM reverse step (DDPM §3.2: both choices give similar samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VarianceType {
    /// σ² = β̃ₜ = (1 − ᾱ_prev)/(1 − ᾱₜ) · βₜ, the posterior variance (DDPM eq. 7): optimal when
    /// x₀ is a single point.
    #[serde(rename = "fixed_small")]
    FixedSmall,
    /// σ² = βₜ: optimal for x₀ ~ N(0, I).
    #[serde(rename = "fixed_large")]
    FixedLarge,
}

/// The largest T a schedule may have.
pub const MAX_TIMESTEPS: usize = 1 << 24;

fn default_true() -> bool {
    true
}

/// Schedule settings, field for field diffusers' `DDPMScheduler`/`DDIMScheduler` config.
/// Missing fields take diffusers' defaults. Fields of a diffusers `scheduler_config.json` that
/// this struct lacks are ignored here; [`crate::diffusers::scheduler`] refuses the ones that
/// would change the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    /// T, the number of diffusion steps the model is trained on.
    pub num_train_timesteps: usize,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    /// βₜ given outright (T values); overrides `beta_schedule`, as in diffusers.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub variance_type: VarianceType,
    /// Clip the predicted x̂₀ to ±`clip_sample_range` while sampling.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// The sampler's default timestep spacing (see [`super::spacing`]).
    pub timestep_spacing: Spacing,
    /// Added to every `leading` timestep (diffusers; Stable Diffusion uses 1).
    pub steps_offset: usize,
    /// DDIM: the step that ends a run lands on ᾱ = 1 (x₀ itself); `false` lands on ᾱ₀.
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::Linear,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            trained_betas: None,
            timestep_spacing: Spacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
        }
    }
}

fn bad(field: &'static str, msg: impl Into<String>) -> DiffusionError {
    DiffusionError::new("schedule", field, msg)
}

impl ScheduleConfig {
    /// Checks every field; `beta_start`/`beta_end` only where the schedule uses them.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if self.num_train_timesteps == 0 {
            return Err(bad("num_train_timesteps", "must be at least 1, got 0"));
        }
        // The noise streams count steps in 24 bits; no schedule comes near.
        if self.num_train_timesteps > MAX_TIMESTEPS {
            return Err(bad(
                "num_train_timesteps",
                format!(
                    "must be at most {MAX_TIMESTEPS}, got {}",
                    self.num_train_timesteps
                ),
            ));
        }
        if self.steps_offset >= self.num_train_timesteps {
            return Err(bad(
                "steps_offset",
                format!(
                    "must be below num_train_timesteps = {}, got {}",
                    self.num_train_timesteps, self.steps_offset
                ),
            ));
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(bad(
                    "trained_betas",
                    format!(
                        "has {} values, expected num_train_timesteps = {}",
                        b.len(),
                        self.num_train_timesteps
                    ),
                ));
            }
        } else if self.beta_schedule.uses_beta_range() {
            let (s, e) = (self.beta_start, self.beta_end);
            if !(s > 0.0 && s < 1.0) {
                return Err(bad("beta_start", format!("must be in (0, 1), got {s}")));
            }
            if !(e > 0.0 && e < 1.0) {
                return Err(bad("beta_end", format!("must be in (0, 1), got {e}")));
            }
            if s >= e {
                return Err(bad(
                    "beta_end",
                    format!("must be greater than beta_start = {s}, got {e}"),
                ));
            }
        }
        let r = self.clip_sample_range;
        if !(r > 0.0 && r.is_finite()) {
            return Err(bad(
                "clip_sample_range",
                format!("must be positive and finite, got {r}"),
            ));
        }
        Ok(())
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive; `[a]` when n = 1.
fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 { (b - a) / (n - 1) as f64 } else { 0.0 };
    (0..n).map(move |i| {
        if i + 1 == n && n > 1 {
            b
        } else {
            a + i as f64 * step
        }
    })
}

/// βₜ = min(1 − f((t+1)/T)/f(t/T), 0.999) for a decreasing f on [0, 1] (Nichol & Dhariwal
/// 2021, eq. 17 and the clipping below it).
fn betas_from_alpha_bar(n: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let (u0, u1) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - f(u1) / f(u0)).min(0.999)
        })
        .collect()
}

/// βₜ for t = 0..T-1 in f64.
fn betas_f64(cfg: &ScheduleConfig) -> Vec<f64> {
    let (n, s, e) = (cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end);
    if let Some(b) = &cfg.trained_betas {
        return b.clone();
    }
    match cfg.beta_schedule {
        BetaSchedule::Linear => linspace(s, e, n).collect(),
        BetaSchedule::ScaledLinear => linspace(s.sqrt(), e.sqrt(), n).map(|r| r * r).collect(),
        BetaSchedule::SquaredCosCapV2 => betas_from_alpha_bar(n, |u| {
            ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        }),
        BetaSchedule::Laplace => betas_from_alpha_bar(n, |u| {
            let lambda = -0.5 * (0.5 - u).signum() * (1.0 - 2.0 * (0.5 - u).abs() + 1e-6).ln();
            let snr = lambda.exp();
            (snr / (1.0 + snr)).sqrt()
        }),
        BetaSchedule::Sigmoid => linspace(-6.0, 6.0, n)
            .map(|x| sigmoid(x) * (e - s) + s)
            .collect(),
    }
}

/// A validated schedule with all per-timestep coefficients precomputed. Arrays are indexed by
/// the 0-based t (the paper's t + 1) and have length T.
#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    betas_f64: Vec<f64>,                     // (T)
    alphas_cumprod_f64: Vec<f64>,            // (T) ᾱₜ
    betas: Vec<f32>,                         // (T) βₜ
    alphas: Vec<f32>,                        // (T) αₜ = 1 − βₜ
    alphas_cumprod: Vec<f32>,                // (T) ᾱₜ
    sqrt_alphas_cumprod: Vec<f32>,           // (T) √ᾱₜ
    sqrt_one_minus_alphas_cumprod: Vec<f32>, // (T) √(1 − ᾱₜ)
}

impl Schedule {
    pub fn new(cfg: ScheduleConfig) -> Result<Self, DiffusionError> {
        cfg.validate()?;
        let betas_f64 = betas_f64(&cfg);
        let field = if cfg.trained_betas.is_some() {
            "trained_betas"
        } else if cfg.beta_schedule.uses_beta_range() {
            "beta_start"
        } else {
            "num_train_timesteps"
        };
        if let Some((t, b)) = betas_f64
            .iter()
            .enumerate()
            .find(|(_, &b)| !(b > 0.0 && b < 1.0))
        {
            return Err(bad(
                field,
                format!("gives β at t = {t} of {b}, outside (0, 1)"),
            ));
        }
        // ᾱₜ = ∏_{s ≤ t} (1 − β_s)  (DDPM §2, the product under eq. 4)
        let alphas_cumprod_f64: Vec<f64> = betas_f64
            .iter()
            .scan(1.0, |acc, &b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        // x̂₀ = (xₜ − √(1−ᾱ) ε̂)/√ᾱ and ε̂ = (xₜ − √ᾱ x̂₀)/√(1−ᾱ) need 0 < ᾱ < 1 everywhere.
        if alphas_cumprod_f64[0] >= 1.0 {
            return Err(bad(field, "β at t = 0 is too small: ᾱ₀ rounds to 1"));
        }
        // The kernels take √ᾱ and 1/√ᾱ as f32: √ᾱ must stay a normal f32. (An f64 product
        // never reaches 0 by itself: the smallest subnormal times 0.99 rounds back to itself.)
        let last = alphas_cumprod_f64[alphas_cumprod_f64.len() - 1];
        if last.sqrt() < f64::from(f32::MIN_POSITIVE) {
            return Err(bad(
                "num_train_timesteps",
                format!(
                    "{} steps drive ᾱ down to {last:.1e}, too small for f32 coefficients; use \
                     fewer steps or smaller betas",
                    cfg.num_train_timesteps
                ),
            ));
        }
        let f32s = |f: &dyn Fn(usize) -> f64| -> Vec<f32> {
            (0..cfg.num_train_timesteps).map(|t| f(t) as f32).collect()
        };
        let ab = &alphas_cumprod_f64;
        Ok(Self {
            betas: f32s(&|t| betas_f64[t]),
            alphas: f32s(&|t| 1.0 - betas_f64[t]),
            alphas_cumprod: f32s(&|t| ab[t]),
            sqrt_alphas_cumprod: f32s(&|t| ab[t].sqrt()),
            sqrt_one_minus_alphas_cumprod: f32s(&|t| (1.0 - ab[t]).sqrt()),
            betas_f64,
            alphas_cumprod_f64,
            cfg,
        })
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.cfg.num_train_timesteps
    }

    /// βₜ in f64.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas_f64[t]
    }

    /// ᾱₜ in f64, for step coefficients.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod_f64[t]
    }

    /// ᾱ of a step's previous timestep: 1 when there is none (the step that lands on x₀).
    pub fn alpha_bar_prev(&self, prev: Option<usize>) -> f64 {
        prev.map_or(1.0, |p| self.alpha_bar(p))
    }

    pub fn betas(&self) -> &[f32] {
        &self.betas
    }
    pub fn alphas(&self) -> &[f32] {
        &self.alphas
    }
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
    pub fn sqrt_alphas_cumprod(&self) -> &[f32] {
        &self.sqrt_alphas_cumprod
    }
    pub fn sqrt_one_minus_alphas_cumprod(&self) -> &[f32] {
        &self.sqrt_one_minus_alphas_cumprod
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends() {
        let v: Vec<f64> = linspace(0.1, 0.3, 3).collect();
        assert_eq!(v[0], 0.1);
        assert_eq!(v[2], 0.3);
        assert!((v[1] - 0.2).abs() < 1e-15);
        assert_eq!(linspace(0.5, 0.9, 1).collect::<Vec<_>>(), vec![0.5]);
    }

    #[test]
    fn config_reads_diffusers_json_and_ignores_extra_fields() {
        let json = r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 500,
            "beta_schedule": "cosine", "trained_betas": null, "clip_sample": false,
            "prediction_type": "v_prediction", "variance_type": "fixed_large"}"#;
        let cfg: ScheduleConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.num_train_timesteps, 500);
        assert_eq!(cfg.beta_schedule, BetaSchedule::SquaredCosCapV2);
        assert_eq!(cfg.prediction_type, PredictionType::VPrediction);
        assert_eq!(cfg.variance_type, VarianceType::FixedLarge);
        assert!(!cfg.clip_sample);
        assert_eq!(cfg.beta_end, 0.02);
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["beta_schedule"], "squaredcos_cap_v2");
    }

    #[test]
    fn unknown_schedule_name_is_an_error() {
        let r: Result<ScheduleConfig, _> = serde_json::from_str(r#"{"beta_schedule": "exp"}"#);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("exp") && msg.contains("scaled_linear"),
            "{msg}"
        );
    }
}
