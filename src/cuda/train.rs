//! The training step on the GPU (DDPM Algorithm 1), the same computation as
//! [`crate::train::Trainer`] with every tensor on the device:
//!
//! ```text
//! upload x₀ → noise_add (draws t, ε; writes x_t, target, t)        DDPM eq. 4
//! UNet forward → loss (× S in fp16) → UNet backward                DDPM eq. 14
//! grad norm → one fused pass: unscale + clip, AdamW (fp32 master weights, m, v), EMA, and the
//!             low-precision weight copy
//! ```
//! In bf16 and fp16 ([`Precision`]) activations are stored in 2 bytes and the GEMMs read a
//! 2-byte copy of the weights; the master weights, gradients, Adam moments, EMA, the loss and
//! the targets stay fp32. fp16 multiplies the loss gradient by a [`LossScaler`]'s S and skips
//! (and backs off) a step whose scaled gradients overflow.
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
use crate::optim::LossScaler;
use crate::params::ParamArena;
use crate::precision::Precision;
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
    /// What activations are stored as.
    pub precision: Precision,
    /// fp16's loss scale (none in fp32 and bf16).
    pub scaler: Option<LossScaler>,
    params: DeviceParams,
    /// Adam moments and the EMA weights, (P) f32 each.
    adam_m: DeviceMemory,
    adam_v: DeviceMemory,
    ema: DeviceMemory,
    /// √ᾱ_t and √(1 − ᾱ_t), (T) f32 each.
    sqrt_ab: DeviceMemory,
    sqrt_1m_ab: DeviceMemory,
    /// (B, C, H, W) each; x_t in `precision`, the others f32.
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
        precision: Precision,
    ) -> Result<Self> {
        config.validate()?;
        let net = UNet::new(model)?;
        let schedule = Schedule::new(schedule)?;
        let host = net.init_params::<f32>(config.seed);
        Self::build(gpu, net, schedule, config, &host, precision)
    }

    /// Continues from a checkpoint exactly where it stopped (in any precision: the checkpoint
    /// holds the fp32 master state; an fp16 loss scale starts again from its initial value).
    pub fn from_checkpoint(gpu: Rc<Gpu>, ck: Checkpoint, precision: Precision) -> Result<Self> {
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
        let mut t = Self::build(gpu, net, schedule, ck.train.clone(), &host, precision)?;
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
        precision: Precision,
    ) -> Result<Self> {
        let b = config.batch_size;
        let item = net.input_shape(1).len();
        let job = Job::Train {
            grid: config.sample_count,
            precision,
        };
        check_fits(&gpu, &net, job, b)?;
        let plan = net.plan_step_stored::<f32>(b, true, precision.bytes())?;
        let sizing = Sizing::from_plan(&plan, precision);
        let g = &*gpu;
        let n = host.values().len();
        let params = DeviceParams::upload(g, host, precision).context("uploading the weights")?;
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
        let x_t = g.alloc(precision.bytes() * b * item, "x_t batch")?;
        let target = f32s(b * item, "training targets")?;
        let t = f32s(b, "timesteps")?;
        let scalars = f32s(2, "loss and norm")?;
        let scratch = f32s(
            ops::loss::REDUCE_SCRATCH.max(ops::optim::REDUCE_SCRATCH),
            "reduction partials",
        )?;
        let backend = GpuBackend::new(gpu.clone(), sizing, precision)
            .map_err(|e| oom_hint(e, &gpu, &net, job, b))?;
        gpu.synchronize("setting up training")?;
        Ok(Self {
            gpu,
            net,
            schedule,
            config,
            step: 0,
            skipped: 0,
            precision,
            scaler: precision.needs_loss_scaling().then(LossScaler::new),
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

    /// Runs the 3×3 convolutions of the steps that follow on `path` (default: `$DDPM_CONV`).
    pub fn set_conv_path(&mut self, path: super::backend::ConvPath) {
        self.backend.set_conv_path(path);
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
            !batch.x.is_empty() && batch.x.len().is_multiple_of(item),
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
        let dt = self.precision;
        ops::diffusion::noise_add(
            g,
            dt,
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
        let loss_scale = self.scaler.as_ref().map_or(1.0, LossScaler::scale);
        ops::loss::loss_forward(
            g,
            dt,
            self.config.loss,
            n,
            out.ptr,
            self.target.ptr(),
            loss_ptr,
            self.scratch.ptr(),
        )?;
        ops::loss::loss_backward(
            g,
            dt,
            self.config.loss,
            n,
            out.ptr,
            self.target.ptr(),
            loss_scale,
            dout.ptr,
        )?;
        self.net
            .backward_params_on(be, &mut self.params, &tape, &dout);
        be.finish()?;

        let p = self.params.len();
        let norm_ptr = self.scalars.ptr() + 4;
        ops::optim::grad_norm(g, p, self.params.grads.ptr(), norm_ptr, self.scratch.ptr())?;
        let mut scalars = [0.0f32; 2];
        g.download(&mut scalars, self.scalars.ptr(), "training step")?;
        let [loss, scaled_norm] = scalars;
        // The gradients carry the loss scale S: their true norm is the measured one over S.
        let grad_norm = f64::from(scaled_norm) / f64::from(loss_scale);
        let t = self.step - self.skipped + 1; // AdamW update number
                                              // fp16: non-finite scaled gradients with a finite loss are the scale's fault (while it
                                              // can still shrink): skip the update, halve S, and say so (not a divergence).
        let overflow = loss.is_finite()
            && !scaled_norm.is_finite()
            && self.scaler.as_ref().is_some_and(LossScaler::can_back_off);
        if let (Some(s), true) = (&mut self.scaler, loss.is_finite()) {
            s.update(scaled_norm.is_finite());
        }
        // As on the CPU: a non-finite loss or norm consumes the batch and changes nothing.
        if !(loss.is_finite() && scaled_norm.is_finite()) {
            self.step += 1;
            self.skipped += 1;
            return Ok(StepStats {
                step: self.step,
                loss,
                grad_norm,
                lr: self.config.optimizer.lr_at(t),
                skipped: true,
                overflow,
            });
        }
        let factor = ops::optim::grad_factor(scaled_norm, loss_scale, self.config.grad_clip);
        let h = self.config.optimizer.coeffs(t);
        ops::optim::adamw_ema_step(
            g,
            dt,
            p,
            ops::optim::OptimBuffers {
                params: self.params.values.ptr(),
                grads: self.params.grads.ptr(),
                m: self.adam_m.ptr(),
                v: self.adam_v.ptr(),
                ema: self.ema.ptr(),
                lowp: self.params.lowp_ptr(),
            },
            &h,
            factor,
            self.config.ema.action(t),
        )?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            grad_norm,
            lr: self.config.optimizer.lr_at(t),
            skipped: false,
            overflow: false,
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
                self.precision,
            )?),
        };
        sampler.load_weights_from_device(self.ema.ptr())?;
        sampler.generate(&self.net, &self.schedule, opts, None, &mut |_, _| {})
    }
    fn device(&self) -> String {
        format!(
            "cuda:{} ({}), {}",
            self.gpu.ordinal, self.gpu.name, self.precision
        )
    }
}
