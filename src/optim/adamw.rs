//! AdamW (Loshchilov & Hutter 2019): Adam with bias-corrected moments (Kingma & Ba 2015) and
//! weight decay applied to the weights directly instead of through the gradient.
//!
//! Update t (1-based), with η = [`AdamWConfig::lr_at`]`(t)`, as PyTorch's `AdamW` does it:
//!
//! ```text
//! θ ← θ (1 − η λ)                               decoupled decay, scaled by the current η
//! m ← β₁ m + (1 − β₁) g,    v ← β₂ v + (1 − β₂) g²
//! θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! Per-step scalars are computed in f64 and rounded once ([`AdamWCoeffs`]); moments and weights
//! are f32.

use serde::{Deserialize, Serialize};

use super::OptimError;
use crate::shape::expect_len;

/// AdamW hyperparameters; missing fields take the defaults (DDPM's lr of 2e-4, no decay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates over which the learning rate ramps linearly up to `lr` (DDPM used 5000).
    pub warmup_steps: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
        }
    }
}

fn bad(field: &'static str, msg: String) -> OptimError {
    OptimError::new("adamw", field, msg)
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<(), OptimError> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(bad(
                "lr",
                format!("must be positive and finite, got {}", self.lr),
            ));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(field, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(bad(
                "eps",
                format!("must be positive and finite, got {}", self.eps),
            ));
        }
        let wd = self.weight_decay;
        if !(wd >= 0.0 && wd.is_finite()) {
            return Err(bad(
                "weight_decay",
                format!("must be non-negative and finite, got {wd}"),
            ));
        }
        Ok(())
    }

    /// Learning rate of update `t` (1-based, the t of the bias corrections): lr·t/warmup_steps
    /// during warmup, lr after. `lr_at(0)` = 0.
    pub fn lr_at(&self, t: u64) -> f64 {
        if self.warmup_steps == 0 || t >= self.warmup_steps {
            self.lr
        } else {
            self.lr * t as f64 / self.warmup_steps as f64
        }
    }

    /// The scalars of update `t` (1-based).
    pub fn coeffs(&self, t: u64) -> AdamWCoeffs {
        let lr = self.lr_at(t);
        let tf = t as f64;
        let bc1 = 1.0 - self.beta1.powf(tf);
        let bc2 = 1.0 - self.beta2.powf(tf);
        AdamWCoeffs {
            decay: (1.0 - lr * self.weight_decay) as f32,
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            step_size: (lr / bc1) as f32,
            sqrt_bc2: bc2.sqrt() as f32,
            eps: self.eps as f32,
        }
    }
}

/// One update's scalars, rounded to f32 from f64: the argument struct of a CUDA AdamW kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamWCoeffs {
    /// 1 − η λ.
    pub decay: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// η / (1 − β₁ᵗ).
    pub step_size: f32,
    /// √(1 − β₂ᵗ).
    pub sqrt_bc2: f32,
    pub eps: f32,
}

/// One element of an AdamW update: moves `p`, `m`, `v` in place.
#[inline(always)]
pub fn adamw_element(c: &AdamWCoeffs, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
    *m = c.beta1 * *m + c.one_minus_beta1 * g;
    *v = c.beta2 * *v + c.one_minus_beta2 * (g * g);
    let denom = v.sqrt() / c.sqrt_bc2 + c.eps;
    *p = *p * c.decay - c.step_size * *m / denom;
}

/// AdamW state: first and second moments per parameter and the number of updates done.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<f32>, // (P)
    v: Vec<f32>, // (P)
    step: u64,
}

impl AdamW {
    /// Fresh state for `n` parameters.
    pub fn new(cfg: AdamWConfig, n: usize) -> Result<Self, OptimError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Learning rate of update `t` (1-based).
    pub fn lr_at(&self, t: u64) -> f64 {
        self.cfg.lr_at(t)
    }

    /// One AdamW update of `params` with `grads` (both of the length given to [`AdamW::new`]).
    pub fn update(&mut self, params: &mut [f32], grads: &[f32]) {
        let (c, m, v) = self.begin_update(params.len(), grads.len());
        super::fused::update_arena(&c, None, None, params, grads, m, v);
    }

    /// Counts one more update and hands out its scalars and the moments, after checking that
    /// `params` and `grads` hold as many values as the moments.
    pub(crate) fn begin_update(
        &mut self,
        params: usize,
        grads: usize,
    ) -> (AdamWCoeffs, &mut [f32], &mut [f32]) {
        let n = self.m.len();
        let shape = format!("({n})");
        expect_len("adamw", "params", params, n, &shape);
        expect_len("adamw", "grads", grads, n, &shape);
        self.step += 1;
        (self.cfg.coeffs(self.step), &mut self.m, &mut self.v)
    }

    /// (updates done, first moments, second moments), for checkpoints.
    pub fn state(&self) -> (u64, &[f32], &[f32]) {
        (self.step, &self.m, &self.v)
    }

    /// Restores checkpointed state; the moments must match the parameter count.
    pub fn restore(&mut self, step: u64, m: &[f32], v: &[f32]) -> Result<(), OptimError> {
        let n = self.m.len();
        for (field, len) in [("m", m.len()), ("v", v.len())] {
            if len != n {
                return Err(OptimError::new(
                    "adamw",
                    field,
                    format!("checkpoint moments hold {len} values, the model has {n} parameters"),
                ));
            }
        }
        self.m.copy_from_slice(m);
        self.v.copy_from_slice(v);
        self.step = step;
        Ok(())
    }
}
