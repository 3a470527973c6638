//! Exponential moving average of the weights (DDPM §4 samples from EMA weights, decay 0.9999).
//!
//! Kept in f32 and updated as ema += (1 − decay)(θ − ema): with decay 0.9999 the increment is
//! small but representable, while a bf16 EMA, or `decay·ema` rounded near ema, would stall.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{OptimError, CHUNK};
use crate::ops::simd::multiversion;
use crate::shape::expect_len;

/// When and how fast the EMA follows the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmaConfig {
    pub decay: f64,
    /// Before this step the EMA copies the weights (early weights are not worth averaging).
    pub start_step: u64,
    /// From `start_step` on, average at steps that are multiples of this.
    pub update_every: u64,
    /// Use min(decay, (1 + n)/(10 + n)) after n steps past `start_step` (the `num_updates`
    /// warmup of TensorFlow's moving average): without it, a run of a few thousand steps at
    /// decay 0.9999 would sample from weights that are mostly still their initialisation.
    pub warmup: bool,
}

/// What the EMA does at one step (the same on every device).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EmaAction {
    /// Before `start_step`: the EMA is a copy of the weights.
    Copy,
    /// Not a multiple of `update_every`.
    Skip,
    /// ema += rate · (w − ema), rate = 1 − decay.
    Average { rate: f32 },
}

impl EmaConfig {
    /// The decay used at `step`, with the warmup when enabled.
    pub fn decay_at(&self, step: u64) -> f64 {
        if self.warmup {
            let n = step.saturating_sub(self.start_step) as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }

    /// What [`Ema::update`] does at `step`.
    pub fn action(&self, step: u64) -> EmaAction {
        if step < self.start_step {
            EmaAction::Copy
        } else if !step.is_multiple_of(self.update_every) {
            EmaAction::Skip
        } else {
            EmaAction::Average {
                rate: (1.0 - self.decay_at(step)) as f32,
            }
        }
    }
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            start_step: 0,
            update_every: 1,
            warmup: true,
        }
    }
}

impl EmaConfig {
    pub fn validate(&self) -> Result<(), OptimError> {
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(OptimError::new(
                "ema",
                "decay",
                format!("must be in [0, 1], got {}", self.decay),
            ));
        }
        if self.update_every == 0 {
            return Err(OptimError::new(
                "ema",
                "update_every",
                "must be at least 1, got 0",
            ));
        }
        Ok(())
    }
}

multiversion! {
    /// e += rate · (p − e)
    fn average(rate: f32, p: &[f32], e: &mut [f32]) {
        for (e, &p) in e.iter_mut().zip(p) {
            *e += rate * (p - *e);
        }
    }
}

/// The averaged weights, in the parameter arena's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Ema {
    cfg: EmaConfig,
    weights: Vec<f32>, // (P)
}

impl Ema {
    /// Starts as a copy of `params`.
    pub fn new(cfg: EmaConfig, params: &[f32]) -> Result<Self, OptimError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            weights: params.to_vec(),
        })
    }

    pub fn config(&self) -> &EmaConfig {
        &self.cfg
    }

    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The decay used at optimizer step `step` (at or after `start_step`).
    pub fn decay_at(&self, step: u64) -> f64 {
        self.cfg.decay_at(step)
    }

    /// Follows `params` after optimizer step `step`: a copy before `start_step`, then
    /// ema += (1 − decay)(θ − ema) at every step that is a multiple of `update_every`.
    pub fn update(&mut self, step: u64, params: &[f32]) {
        let (action, weights) = self.begin_update(step, params.len());
        match action {
            EmaAction::Copy => weights.copy_from_slice(params),
            EmaAction::Skip => {}
            EmaAction::Average { rate } => weights
                .par_chunks_mut(CHUNK)
                .zip(params.par_chunks(CHUNK))
                .for_each(|(e, p)| average(rate, p, e)),
        }
    }

    /// What step `step` does, and the weights to do it to, after checking that `params` holds
    /// as many values.
    pub(crate) fn begin_update(&mut self, step: u64, params: usize) -> (EmaAction, &mut [f32]) {
        let n = self.weights.len();
        expect_len("ema", "params", params, n, format!("({n})"));
        (self.cfg.action(step), &mut self.weights)
    }

    /// Restores checkpointed weights; they must match the parameter count.
    pub fn restore(&mut self, weights: &[f32]) -> Result<(), OptimError> {
        if weights.len() != self.weights.len() {
            return Err(OptimError::new(
                "ema",
                "weights",
                format!(
                    "checkpoint holds {} values, the model has {} parameters",
                    weights.len(),
                    self.weights.len()
                ),
            ));
        }
        self.weights.copy_from_slice(weights);
        Ok(())
    }
}
