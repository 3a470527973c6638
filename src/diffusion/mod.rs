//! Noise schedules, the forward process, training targets and samplers.
//!
//! Indexing: our timestep `t` is 0-based, `t = 0..T-1`; it is the paper's `t + 1` (DDPM counts
//! `1..T`). The UNet is conditioned on the 0-based value, as in diffusers.
//!
//! How the code maps to the papers (DDPM = Ho et al. 2020, DDIM = Song et al. 2021):
//! - [`schedule`]: βₜ, αₜ = 1 − βₜ, ᾱₜ = ∏ₛ≤ₜ αₛ (DDPM §2 and eq. 4), computed once in f64;
//! - [`forward`]: q(xₜ | x₀) in closed form, xₜ = √ᾱₜ x₀ + √(1 − ᾱₜ) ε (DDPM eq. 4);
//! - [`target`]: what the model learns — ε (DDPM eq. 14, the "simple" loss), x₀, or
//!   v = √ᾱ ε − √(1 − ᾱ) x₀ (Salimans & Ho 2022) — and the maps back to (x̂₀, ε̂), with x̂₀ from ε̂
//!   by DDPM eq. 15;
//! - [`noise`]: counter-based Gaussian noise, a pure function of (seed, stream, index);
//! - [`spacing`]: which timesteps a sampler visits (diffusers' spacings and the DDIM reference's);
//! - [`sampler`]: the reverse process — the DDPM ancestral step through the posterior
//!   q(x_prev | xₜ, x̂₀) (DDPM eqs. 6–7; with every timestep this is DDPM eq. 11 / Algorithm 2),
//!   the DDIM step (DDIM eq. 12 with σ from eq. 16 scaled by η) and its inversion, the
//!   probability-flow ODE (Euler, Heun), the reverse SDE (Euler–Maruyama), DPM-Solver++(2M),
//!   and classifier-free guidance.

pub mod forward;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod spacing;
pub mod target;

pub use forward::{add_noise, training_target};
pub use noise::{draw_timesteps, fill_normal, stream, NoisePurpose};
pub use sampler::{
    apply_step, apply_update, initial_noise, inversion_evaluations, run_evaluations, sample,
    step_element, step_element_full, Evaluation, ModelFn, SampleOptions, SamplerKind, SigmaSpacing,
    StepBuffers, StepCoeffs, StepInfo,
};
pub use schedule::{BetaSchedule, Schedule, ScheduleConfig, VarianceType};
pub use spacing::{step_pairs, timesteps, Spacing, StepPair};
pub use target::{PredictionType, Reparam};

/// A user-facing setting that cannot work: names the setting, says what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {scope} setting `{field}`: {msg}")]
pub struct DiffusionError {
    /// Which group of settings: "schedule", "sampler", "noise".
    pub scope: &'static str,
    /// The field's name as the user writes it (`beta_end`, `steps`, …).
    pub field: &'static str,
    pub msg: String,
}

impl DiffusionError {
    pub(crate) fn new(scope: &'static str, field: &'static str, msg: impl Into<String>) -> Self {
        Self {
            scope,
            field,
            msg: msg.into(),
        }
    }
}

/// `FromStr` through the serde names, so command-line flags and config files take the same words.
macro_rules! from_str_via_serde {
    ($t:ty, $scope:literal, $field:literal) => {
        impl std::str::FromStr for $t {
            type Err = DiffusionError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                serde_json::from_value(serde_json::Value::String(s.to_owned()))
                    .map_err(|e| DiffusionError::new($scope, $field, e.to_string()))
            }
        }
    };
}

from_str_via_serde!(BetaSchedule, "schedule", "beta_schedule");
from_str_via_serde!(PredictionType, "schedule", "prediction_type");
from_str_via_serde!(VarianceType, "schedule", "variance_type");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_parse_like_config_files() {
        assert_eq!(
            "cosine".parse::<BetaSchedule>(),
            Ok(BetaSchedule::SquaredCosCapV2)
        );
        assert_eq!("v_prediction".parse(), Ok(PredictionType::VPrediction));
        assert_eq!("fixed_large".parse(), Ok(VarianceType::FixedLarge));
        let e = "learned".parse::<VarianceType>().unwrap_err();
        assert_eq!(e.field, "variance_type");
        assert!(e.to_string().contains("fixed_small"), "{e}");
    }
}
