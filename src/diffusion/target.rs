//! What the model predicts, and how its output maps back to (x̂₀, ε̂).
//!
//! All three parameterisations are linear in (x₀, ε) given xₜ = √ᾱ x₀ + √(1 − ᾱ) ε (DDPM eq. 4),
//! so every conversion is a pair of coefficients computed once per timestep in f64.

use serde::{Deserialize, Serialize};

/// The quantity the model is trained to output. Names as in diffusers' `prediction_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictionType {
    /// The noise ε (DDPM eq. 14, the "simple" objective).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// x₀ itself.
    #[serde(rename = "sample")]
    Sample,
    /// v = √ᾱ ε − √(1 − ᾱ) x₀ (Salimans & Ho 2022, §4).
    #[serde(rename = "v_prediction")]
    VPrediction,
}

impl PredictionType {
    /// Coefficients (c_x0, c_eps) of the training target c_x0·x₀ + c_eps·ε at ᾱ.
    pub fn target_coeffs(self, alpha_bar: f64) -> (f64, f64) {
        match self {
            Self::Epsilon => (0.0, 1.0),
            Self::Sample => (1.0, 0.0),
            // v = √ᾱ ε − √(1 − ᾱ) x₀  (Salimans & Ho 2022)
            Self::VPrediction => (-(1.0 - alpha_bar).sqrt(), alpha_bar.sqrt()),
        }
    }
}

/// Linear maps from (xₜ, model output) to the predicted x̂₀ and ε̂ at one ᾱ:
/// x̂₀ = x0_x·xₜ + x0_out·out and ε̂ = eps_x·xₜ + eps_out·out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reparam {
    pub x0_x: f64,
    pub x0_out: f64,
    pub eps_x: f64,
    pub eps_out: f64,
}

impl Reparam {
    pub fn new(prediction: PredictionType, alpha_bar: f64) -> Self {
        let (sa, s1) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        match prediction {
            // x̂₀ = (xₜ − √(1 − ᾱ) ε̂)/√ᾱ  (DDPM eq. 15)
            PredictionType::Epsilon => Self {
                x0_x: 1.0 / sa,
                x0_out: -s1 / sa,
                eps_x: 0.0,
                eps_out: 1.0,
            },
            // ε̂ = (xₜ − √ᾱ x̂₀)/√(1 − ᾱ), inverting DDPM eq. 4
            PredictionType::Sample => Self {
                x0_x: 0.0,
                x0_out: 1.0,
                eps_x: 1.0 / s1,
                eps_out: -sa / s1,
            },
            // x̂₀ = √ᾱ xₜ − √(1 − ᾱ) v, ε̂ = √(1 − ᾱ) xₜ + √ᾱ v  (Salimans & Ho 2022, App. D)
            PredictionType::VPrediction => Self {
                x0_x: sa,
                x0_out: -s1,
                eps_x: s1,
                eps_out: sa,
            },
        }
    }

    /// x̂₀ for one element, in f64 (for tests and small callers; kernels use f32 coefficients).
    pub fn x0(&self, x_t: f64, out: f64) -> f64 {
        self.x0_x * x_t + self.x0_out * out
    }

    /// ε̂ for one element, in f64.
    pub fn eps(&self, x_t: f64, out: f64) -> f64 {
        self.eps_x * x_t + self.eps_out * out
    }
}
