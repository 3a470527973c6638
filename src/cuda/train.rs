//! The training step on the GPU (DDPM Algorithm 1), the same computation as
//! [`crate::train::Trainer`] with every tensor on the device:
//!
//! ```text
//! upload x₀ → noise_add (draws t, ε; writes x_t, target, t)        DDPM eq. 4
//! UNet forward → loss → UNet backward                              DDPM eq. 14
//! grad norm → clip → AdamW (fp32 master weights, m, v) → EMA
//! ```
//! Weights, gradients, Adam moments and the EMA live on the device for the whole run; the host
//! sees only the loss and the gradient norm each step, and everything at a checkpoint.
//! Activations come from an arena planned once from the network and the batch size.

use std::rc::Rc;

use anyhow::{ensure, Context, Result};

use super::backend::{DevBuf, DeviceParams, GpuBackend, Sizing};
use super::device::{DeviceMemory, Gpu};
use super::memory::{check_fits, oom_hint, Job};
use super::ops;
use super::ops::diffusion::NoiseAddArgs;
use super::sample::GpuSampler;
use crate::data::Batch;
use crate::diffusion::{Schedule, ScheduleConfig};
use crate::nn::{UNet, UNetConfig};
use crate::optim::EmaAction;
use crate::params::ParamArena;
use crate::sample::GenerateOptions;
use crate::train::{dropout_seed, Checkpoint, RngState, StepStats, TrainConfig, TrainEngine};

/// Model, schedule and the whole optimizer state on one GPU.
pub struct GpuTrainer {
    gpu: Rc<Gpu>,
    pub net: UNet,
    pub schedule: Schedule,
    pub config: TrainConfig,
    /// Training steps completed (batches consumed).
    pub step: u64,
    /// Of those, steps skipped for a non-finite loss or gradient (AdamW has made
    /// `step - skipped` updates).
    pub skipped: u64,
    params: DeviceParams,
    /// Adam moments and the EMA weights, (P) f32 each.
    adam_m: DeviceMemory,
    adam_v: DeviceMemory,
    ema: DeviceMemory,
    /// √ᾱ_t and √(1 − ᾱ_t), (T) f32 each.
    sqrt_ab: DeviceMemory,
    sqrt_1m_ab: DeviceMemory,
    /// (B, C, H, W) each.
    x0: DeviceMemory,
    x_t: DeviceMemory,
    target: DeviceMemory,
    /// (B) f32 timesteps.
    t: DeviceMemory,
    /// [loss, grad norm] f32.
    scalars: DeviceMemory,
    /// Partial sums of the loss and norm reductions.
    scratch: DeviceMemory,
    backend: GpuBackend,
    /// Draws the sample grids (built on first use).
    sampler: Option<GpuSampler>,
}

impl GpuTrainer {
    /// A fresh run: weights initialised from the training seed exactly as on the CPU.
    pub fn new(
        gpu: Rc<Gpu>,
        model: UNetConfig,
        schedule: ScheduleConfig,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        let net = UNet::new(model)?;
        let schedule = Schedule::new(schedule)?;
        let host = net.init_params::<f32>(config.seed);
        Self::build(gpu, net, schedule, config, &host)
    }

    /// Continues from a checkpoint exactly where it stopped.
    pub fn from_checkpoint(gpu: Rc<Gpu>, ck: Checkpoint) -> Result<Self> {
        ck.train.validate()?;
        let net = UNet::new(ck.model.clone())?;
        let schedule = Schedule::new(ck.schedule.clone())?;
        let mut host = ParamArena::<f32>::zeros(net.layout.clone());
        ensure!(
            ck.weights.len() == host.values().len(),
            "the checkpoint holds {} weights, the model has {}",
            ck.weights.len(),
            host.values().len()
        );
        host.values_mut().copy_from_slice(&ck.weights);
        for (name, v) in [
            ("adam.m", &ck.adam_m),
            ("adam.v", &ck.adam_v),
            ("ema", &ck.ema),
        ] {
            ensure!(
                v.len() == ck.weights.len(),
                "the checkpoint's {name} holds {} values, expected {}",
                v.len(),
                ck.weights.len()
            );
        }
        let mut t = Self::build(gpu, net, schedule, ck.train.clone(), &host)?;
        let g = &t.gpu;
        g.upload(t.adam_m.ptr(), &ck.adam_m, "Adam first moments")?;
        g.upload(t.adam_v.ptr(), &ck.adam_v, "Adam second moments")?;
        g.upload(t.ema.ptr(), &ck.ema, "EMA weights")?;
        t.step = ck.step;
        t.skipped = ck.skipped_steps;
        Ok(t)
    }

    fn build(
        gpu: Rc<Gpu>,
        net: UNet,
        schedule: Schedule,
        config: TrainConfig,
        host: &ParamArena<f32>,
    ) -> Result<Self> {
        let b = config.batch_size;
        let item = net.input_shape(1).len();
        let job = Job::Train {
            grid: config.sample_count,
        };
        check_fits(&gpu, &net, job, b)?;
        let sizing = Sizing::from_plan(&net.plan_step::<f32>(b, true)?);
        let g = &*gpu;
        let n = host.values().len();
        let params = DeviceParams::upload(g, host).context("uploading the weights")?;
        let f32s = |len: usize, what: &str| g.alloc(4 * len, what);
        let adam_m = f32s(n, "Adam first moments")?;
        let adam_v = f32s(n, "Adam second moments")?;
        let ema = f32s(n, "EMA weights")?;
        g.zero(adam_m.ptr(), adam_m.bytes(), "Adam first moments")?;
        g.zero(adam_v.ptr(), adam_v.bytes(), "Adam second moments")?;
        g.copy(ema.ptr(), params.values.ptr(), 4 * n, "EMA weights")?;
        let table = |v: Vec<f32>, what: &str| -> Result<DeviceMemory> {
            let m = g.alloc(4 * v.len(), what)?;
            g.upload(m.ptr(), &v, what)?;
            Ok(m)
        };
        let sqrt_ab = table(schedule.sqrt_alphas_cumprod().to_vec(), "√ᾱ table")?;
        let sqrt_1m_ab = table(
            schedule.sqrt_one_minus_alphas_cumprod().to_vec(),
            "√(1−ᾱ) table",
        )?;
        let x0 = f32s(b * item, "x₀ batch")?;
        let x_t = f32s(b * item, "x_t batch")?;
        let target = f32s(b * item, "training targets")?;
        let t = f32s(b, "timesteps")?;
        let scalars = f32s(2, "loss and norm")?;
        let scratch = f32s(
            ops::loss::REDUCE_SCRATCH.max(ops::optim::REDUCE_SCRATCH),
            "reduction partials",
        )?;
        let backend =
            GpuBackend::new(gpu.clone(), sizing).map_err(|e| oom_hint(e, &gpu, &net, job, b))?;
        gpu.synchronize("setting up training")?;
        Ok(Self {
            gpu,
            net,
            schedule,
            config,
            step: 0,
            skipped: 0,
            params,
            adam_m,
            adam_v,
            ema,
            sqrt_ab,
            sqrt_1m_ab,
            x0,
            x_t,
            target,
            t,
            scalars,
            scratch,
            backend,
            sampler: None,
        })
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }

    /// Current weights, gradients (of the last step), on the host.
    pub fn params_to_host(&self) -> Result<ParamArena<f32>> {
        Ok(self.params.download(&self.gpu)?)
    }

    /// The EMA weights on the host.
    pub fn ema_to_host(&self) -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; self.params.len()];
        self.gpu.download(&mut v, self.ema.ptr(), "EMA weights")?;
        Ok(v)
    }

    /// One optimizer step; the same draws (t, ε, dropout) as the CPU trainer at this step.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        let item = self.net.input_shape(1).len();
        ensure!(
            !batch.x.is_empty() && batch.x.len() % item == 0,
            "batch of {} values is not a whole number of {item}-value images",
            batch.x.len()
        );
        let b = batch.x.len() / item;
        ensure!(
            b <= self.config.batch_size,
            "a batch of {b} images is larger than the planned batch size {}",
            self.config.batch_size
        );
        let labels = self.config.step_labels(
            self.net.config.num_class_embeds,
            batch.labels.as_deref(),
            self.step,
        )?;
        let (seed, step) = (self.config.seed, self.step);
        let n = b * item;
        let g = &*self.gpu;
        g.upload(self.x0.ptr(), &batch.x, "x₀ batch")?;
        let args = NoiseAddArgs {
            seed,
            step,
            batch: b,
            item_len: item,
            num_timesteps: self.schedule.num_timesteps(),
            prediction: self.schedule.config().prediction_type,
        };
        ops::diffusion::noise_add(
            g,
            &args,
            self.x0.ptr(),
            self.sqrt_ab.ptr(),
            self.sqrt_1m_ab.ptr(),
            self.x_t.ptr(),
            self.target.ptr(),
            self.t.ptr(),
        )?;

        self.params.zero_grads(g)?;
        let be = &mut self.backend;
        be.reset();
        let x_t = DevBuf::view(self.x_t.ptr(), n);
        let t = DevBuf::view(self.t.ptr(), b);
        let (out, tape) = self.net.forward_on(
            be,
            &self.params,
            &x_t,
            &t,
            labels.as_deref(),
            Some(dropout_seed(seed, step)),
            true,
        )?;
        be.finish()?;
        let tape = tape.expect("the tape was asked for");
        let dout = crate::backend::Backend::alloc(be, n);
        be.finish()?; // an arena that ran out would hand back a null buffer
        let loss_ptr = self.scalars.ptr();
        ops::loss::loss_forward(
            g,
            self.config.loss,
            n,
            out.ptr,
            self.target.ptr(),
            loss_ptr,
            self.scratch.ptr(),
        )?;
        ops::loss::loss_backward(
            g,
            self.config.loss,
            n,
            out.ptr,
            self.target.ptr(),
            1.0,
            dout.ptr,
        )?;
        self.net.backward_on(be, &mut self.params, &tape, &dout);
        be.finish()?;

        let p = self.params.len();
        let norm_ptr = self.scalars.ptr() + 4;
        ops::optim::grad_norm(g, p, self.params.grads.ptr(), norm_ptr, self.scratch.ptr())?;
        let mut scalars = [0.0f32; 2];
        g.download(&mut scalars, self.scalars.ptr(), "training step")?;
        let [loss, grad_norm] = scalars;
        // As on the CPU: a non-finite loss or norm consumes the batch and changes nothing.
        let t = self.step - self.skipped + 1; // AdamW update number
        if !(loss.is_finite() && grad_norm.is_finite()) {
            self.step += 1;
            self.skipped += 1;
            return Ok(StepStats {
                step: self.step,
                loss,
                grad_norm: f64::from(grad_norm),
                lr: self.config.optimizer.lr_at(t),
                skipped: true,
            });
        }
        ops::optim::clip_grads(
            g,
            p,
            self.params.grads.ptr(),
            norm_ptr,
            self.config.grad_clip,
        )?;
        let h = self.config.optimizer.coeffs(t);
        ops::optim::adamw_step(
            g,
            p,
            self.params.values.ptr(),
            self.params.grads.ptr(),
            self.adam_m.ptr(),
            self.adam_v.ptr(),
            &h,
        )?;
        self.step += 1;
        match self.config.ema.action(t) {
            EmaAction::Copy => g.copy(
                self.ema.ptr(),
                self.params.values.ptr(),
                4 * p,
                "EMA weights",
            )?,
            EmaAction::Skip => {}
            EmaAction::Average { rate } => {
                ops::optim::ema_update(g, p, self.ema.ptr(), self.params.values.ptr(), rate)?
            }
        }
        Ok(StepStats {
            step: self.step,
            loss,
            grad_norm: f64::from(grad_norm),
            lr: self.config.optimizer.lr_at(t),
            skipped: false,
        })
    }

    /// Everything on the host, in the CPU trainer's checkpoint format.
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        let g = &*self.gpu;
        let n = self.params.len();
        let fetch = |ptr, what: &str| -> Result<Vec<f32>> {
            let mut v = vec![0.0f32; n];
            g.download(&mut v, ptr, what)?;
            Ok(v)
        };
        Ok(Checkpoint {
            model: self.net.config.clone(),
            schedule: self.schedule.config().clone(),
            train: self.config.clone(),
            step: self.step,
            skipped_steps: self.skipped,
            rng: RngState {
                seed: self.config.seed,
                next_step: self.step,
            },
            weights: fetch(self.params.values.ptr(), "weights")?,
            ema: fetch(self.ema.ptr(), "EMA weights")?,
            adam_m: fetch(self.adam_m.ptr(), "Adam first moments")?,
            adam_v: fetch(self.adam_v.ptr(), "Adam second moments")?,
        })
    }
}

impl TrainEngine for GpuTrainer {
    fn net(&self) -> &UNet {
        &self.net
    }
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn config(&self) -> &crate::train::TrainConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut crate::train::TrainConfig {
        &mut self.config
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn skipped_steps(&self) -> u64 {
        self.skipped
    }
    fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        GpuTrainer::train_step(self, batch)
    }
    fn checkpoint(&mut self) -> Result<Checkpoint> {
        self.to_checkpoint()
    }
    fn generate_ema(&mut self, opts: &GenerateOptions) -> Result<Vec<f32>> {
        let sampler = match &mut self.sampler {
            Some(s) => s,
            None => self.sampler.insert(GpuSampler::new(
                self.gpu.clone(),
                &self.net,
                opts.batch_size,
                false,
            )?),
        };
        sampler.load_weights_from_device(self.ema.ptr())?;
        sampler.generate(&self.net, &self.schedule, opts, None, &mut |_, _| {})
    }
    fn device(&self) -> String {
        format!("cuda:{} ({})", self.gpu.ordinal, self.gpu.name)
    }
}
