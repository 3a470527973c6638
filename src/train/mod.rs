//! Training: the DDPM objective (Ho et al. 2020, Algorithm 1 and eq. 14) on the CPU backend.
//!
//! One step, for a batch x₀ of B images:
//! ```text
//! t ~ U{0..T-1}, ε ~ N(0, I)                      (counter-based on (seed, step, item))
//! x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε                    DDPM eq. 4
//! L = mean ‖target − model(x_t, t)‖²              DDPM eq. 14; target = ε, x₀ or v
//! backward → global grad norm → clip, AdamW and EMA in one pass
//! ```
//! A step whose loss or gradient norm is not finite changes nothing (no AdamW update, no EMA)
//! but still consumes its batch and draws, and is counted ([`StepStats::skipped`]): AdamW's
//! update count t (bias corrections, warmup) is the number of steps not skipped.
//! [`Trainer`] holds the whole state; [`run`] adds the data loader, logs, sample grids and
//! checkpoints around it.

pub mod checkpoint;
pub mod checkpoint_dir;
pub mod config;
mod engine;
mod run;
pub mod run_lock;

pub use checkpoint::{Checkpoint, CheckpointError, RngState};
pub use config::{InitFrom, LossKind, TrainConfig, TrainConfigError};
pub use engine::TrainEngine;
pub use run::{check_resumable, run, RunOptions, RunSummary, Start};

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::backend::cpu::Cpu;
use crate::data::Batch;
use crate::diffusion::noise::{draw_timesteps, fill_train_noise, stream, NoisePurpose};
use crate::diffusion::{add_noise, training_target, Schedule, ScheduleConfig};
use crate::nn::{UNet, UNetConfig};
use crate::ops::loss::{l1_backward, l1_forward, mse_backward, mse_forward};
use crate::optim::{adamw_ema_step, clip_factor, global_grad_norm, AdamW, Ema};
use crate::params::ParamArena;
use crate::profile::{self, Op};
use crate::rng::philox_word;

/// The numbers one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The step just completed (1-based).
    pub step: u64,
    pub loss: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the update (of the next one, when this step was skipped).
    pub lr: f64,
    /// The loss or the gradient norm was NaN or infinite: nothing was updated.
    pub skipped: bool,
    /// Of skipped steps, those whose fp16 loss-scaled gradients overflowed while the loss was
    /// finite: the scale was halved. Not a sign of divergence.
    pub overflow: bool,
}

/// Seed of the dropout masks at one step (each residual block adds its own stream); the same on
/// every device.
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    let s = stream(NoisePurpose::Dropout, step, 0);
    u64::from(philox_word(seed, s, 0)) | (u64::from(philox_word(seed, s, 1)) << 32)
}

/// Model, schedule, weights, optimizer and EMA: everything a step reads and writes.
pub struct Trainer {
    pub net: UNet,
    pub schedule: Schedule,
    pub config: TrainConfig,
    pub params: ParamArena<f32>,
    pub optimizer: AdamW,
    pub ema: Ema,
    /// Training steps completed (batches consumed).
    pub step: u64,
    /// Of those, steps skipped for a non-finite loss or gradient.
    pub skipped: u64,
}

impl Trainer {
    /// A fresh run: weights initialised from the training seed.
    pub fn new(model: UNetConfig, schedule: ScheduleConfig, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let net = UNet::new(model)?;
        let schedule = Schedule::new(schedule)?;
        let params = net.init_params::<f32>(config.seed);
        let optimizer = AdamW::new(config.optimizer.clone(), params.values().len())?;
        let ema = Ema::new(config.ema.clone(), params.values())?;
        Ok(Self {
            net,
            schedule,
            config,
            params,
            optimizer,
            ema,
            step: 0,
            skipped: 0,
        })
    }

    /// Continues from a checkpoint exactly where it stopped.
    pub fn from_checkpoint(ck: Checkpoint) -> Result<Self> {
        let mut t = Self::new(ck.model, ck.schedule, ck.train)?;
        t.params.values_mut().copy_from_slice(&ck.weights);
        t.optimizer
            .restore(ck.step - ck.skipped_steps, &ck.adam_m, &ck.adam_v)
            .context("restoring the optimizer state")?;
        t.ema
            .restore(&ck.ema)
            .context("restoring the EMA weights")?;
        t.step = ck.step;
        t.skipped = ck.skipped_steps;
        Ok(t)
    }

    pub fn checkpoint(&self) -> Checkpoint {
        let (_, m, v) = self.optimizer.state();
        Checkpoint {
            model: self.net.config.clone(),
            schedule: self.schedule.config().clone(),
            train: self.config.clone(),
            step: self.step,
            skipped_steps: self.skipped,
            rng: RngState {
                seed: self.config.seed,
                next_step: self.step,
            },
            weights: self.params.values().to_vec(),
            ema: self.ema.weights().to_vec(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
        }
    }

    /// One optimizer step on `batch` (x₀ in [-1, 1], (B, C, H, W)).
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        let item = self.net.input_shape(1).len();
        anyhow::ensure!(
            !batch.x.is_empty() && batch.x.len().is_multiple_of(item),
            "batch of {} values is not a whole number of {item}-value images",
            batch.x.len()
        );
        let b = batch.x.len() / item;
        let (seed, step) = (self.config.seed, self.step);
        let num_t = self.schedule.num_timesteps();

        let span = profile::start();
        let t = draw_timesteps(seed, step, b, num_t); // (B)
        let mut eps = vec![0.0f32; batch.x.len()]; // (B, C, H, W)
        fill_train_noise(seed, step, 0, item, &mut eps);
        let mut x_t = vec![0.0f32; batch.x.len()];
        add_noise(&self.schedule, &batch.x, &eps, &t, item, &mut x_t);
        let mut target = vec![0.0f32; batch.x.len()];
        let prediction = self.schedule.config().prediction_type;
        training_target(
            &self.schedule,
            prediction,
            &batch.x,
            &eps,
            &t,
            item,
            &mut target,
        );
        profile::stop(Op::NoiseAndLoss, span);

        let labels = self.config.step_labels(
            self.net.config.num_class_embeds,
            batch.labels.as_deref(),
            self.step,
        )?;
        let t_in: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        // What `zero_grads` does, on every core (charged to the optimizer's row).
        profile::time(Op::Optimizer, 0, || {
            self.params
                .grads_mut()
                .par_chunks_mut(1 << 16)
                .for_each(|g| g.fill(0.0))
        });
        let dropout = Some(dropout_seed(self.config.seed, self.step));
        // The generic entry points take the step's own buffers, so nothing is copied to call them.
        let cpu = &mut Cpu::new();
        let (out, tape) = self.net.forward_on(
            cpu,
            &self.params,
            &x_t,
            &t_in,
            labels.as_deref(),
            dropout,
            true,
        )?;
        let tape = tape.expect("the tape was asked for");
        let span = profile::start();
        let mut dout = vec![0.0f32; out.len()];
        let loss = match self.config.loss {
            LossKind::L2 => {
                mse_backward(&out, &target, 1.0, &mut dout);
                mse_forward(&out, &target)
            }
            LossKind::L1 => {
                l1_backward(&out, &target, 1.0, &mut dout);
                l1_forward(&out, &target)
            }
        };
        profile::stop(Op::NoiseAndLoss, span);
        if !loss.is_finite() {
            return Ok(self.skip(loss, f64::NAN));
        }
        drop(out);
        self.net
            .backward_params_on(cpu, &mut self.params, &tape, &dout);
        drop(tape);

        let span = profile::start();
        let grad_norm = global_grad_norm(self.params.grads());
        // Judged in f32, as the GPU trainer (which reduces to an f32 norm) judges it.
        if !(grad_norm as f32).is_finite() {
            profile::stop(Op::Optimizer, span);
            return Ok(self.skip(loss, grad_norm));
        }
        let t = self.optimizer.step() + 1;
        let lr = self.optimizer.lr_at(t);
        // Clipping, AdamW and the EMA (of step t) in one pass: the bits of `clip_grad_norm`,
        // `AdamW::update` and `Ema::update` in turn, but the gradients are read, not rescaled
        // in place (as on the GPU).
        let clip = clip_factor(grad_norm, self.config.grad_clip);
        let (values, grads) = self.params.values_mut_and_grads();
        adamw_ema_step(&mut self.optimizer, &mut self.ema, values, grads, clip);
        profile::stop(Op::Optimizer, span);
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            grad_norm,
            lr,
            skipped: false,
            overflow: false,
        })
    }

    /// Ends a step whose loss or gradient is not finite: the batch is consumed, nothing else
    /// changes.
    fn skip(&mut self, loss: f32, grad_norm: f64) -> StepStats {
        self.step += 1;
        self.skipped += 1;
        StepStats {
            step: self.step,
            loss,
            grad_norm,
            lr: self.optimizer.lr_at(self.optimizer.step() + 1),
            skipped: true,
            overflow: false,
        }
    }
}
