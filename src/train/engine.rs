//! What a training loop needs from the thing that runs the steps, whichever device it is on.

use anyhow::Result;

use super::{Checkpoint, StepStats, TrainConfig, Trainer};
use crate::data::Batch;
use crate::diffusion::Schedule;
use crate::nn::UNet;
use crate::params::ParamArena;
use crate::sample::{generate, GenerateOptions};

/// A trainer on some device: the CPU [`Trainer`] or `crate::cuda::train::GpuTrainer`.
pub trait TrainEngine {
    fn net(&self) -> &UNet;
    fn schedule(&self) -> &Schedule;
    fn config(&self) -> &TrainConfig;
    fn config_mut(&mut self) -> &mut TrainConfig;
    /// Training steps completed (batches consumed).
    fn step(&self) -> u64;
    /// Of those, steps skipped for a non-finite loss or gradient.
    fn skipped_steps(&self) -> u64;
    /// One optimizer step on `batch` (x₀ in [-1, 1], (B, C, H, W)).
    fn train_step(&mut self, batch: &Batch) -> Result<StepStats>;
    /// The whole state, on the host.
    fn checkpoint(&mut self) -> Result<Checkpoint>;
    /// Draws images with the EMA weights.
    fn generate_ema(&mut self, opts: &GenerateOptions) -> Result<Vec<f32>>;
    /// Where the steps run, for the log.
    fn device(&self) -> String;
}

impl TrainEngine for Trainer {
    fn net(&self) -> &UNet {
        &self.net
    }
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn config(&self) -> &TrainConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.config
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn skipped_steps(&self) -> u64 {
        self.skipped
    }
    fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        Trainer::train_step(self, batch)
    }
    fn checkpoint(&mut self) -> Result<Checkpoint> {
        Ok(Trainer::checkpoint(self))
    }
    fn generate_ema(&mut self, opts: &GenerateOptions) -> Result<Vec<f32>> {
        let mut ema = ParamArena::<f32>::zeros(self.net.layout.clone());
        ema.values_mut().copy_from_slice(self.ema.weights());
        generate(&self.net, &ema, &self.schedule, opts, None, &mut |_, _| {})
    }
    fn device(&self) -> String {
        "cpu".into()
    }
}
