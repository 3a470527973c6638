//! Sampling on the GPU: the evaluations of [`crate::diffusion::sampler`] with the model and the
//! update (one fused kernel for every sampler) on the device. Images start from the same x_T
//! and draw the same step noise as on the CPU, so both produce the same images up to float
//! rounding (in fp32; bf16 and fp16 store the model's activations in 2 bytes, while the
//! sampler's state x_t and its update stay fp32).

use std::rc::Rc;

use anyhow::{Context, Result};

use super::backend::{DevBuf, DeviceParams, GpuBackend, Sizing};
use super::device::{DevPtr, DeviceMemory, Gpu};
use super::memory::{check_fits, oom_hint, Job};
use super::ops;
use super::ops::diffusion::{StepNoise, UpdateBuffers};
use crate::diffusion::Schedule;
use crate::nn::UNet;
use crate::precision::Precision;
use crate::sample::{generate_with, BatchJob, Denoiser, GenerateOptions, Generated};

/// Device state for sampling batches of up to `batch` images from one network.
pub struct GpuSampler {
    gpu: Rc<Gpu>,
    params: DeviceParams,
    backend: GpuBackend,
    batch: usize,
    /// Whether the model batch is doubled for classifier-free guidance.
    guided: bool,
    /// What the model's activations are stored as.
    precision: Precision,
    /// (B, C, H, W) f32: the sampler's state x_t (in fp32 also the model input, room for B').
    cur: DeviceMemory,
    /// (B', C, H, W) in `precision`: the model input, B' = 2B when guided (the images twice);
    /// `None` in fp32, where the model reads `cur`.
    model_in: Option<DeviceMemory>,
    /// (B, C, H, W) each: the next x, the clipped x̂₀, the history.
    next: DeviceMemory,
    x0: DeviceMemory,
    hist: DeviceMemory,
    /// (B') f32 timesteps and (B) u64 image ids.
    t: DeviceMemory,
    ids: DeviceMemory,
}

impl GpuSampler {
    /// Plans and allocates everything for batches of up to `batch` images; `guided` doubles
    /// the model's batch for classifier-free guidance; the model runs in `precision`.
    pub fn new(
        gpu: Rc<Gpu>,
        net: &UNet,
        batch: usize,
        guided: bool,
        precision: Precision,
    ) -> Result<Self> {
        anyhow::ensure!(batch > 0, "--batch-size must be at least 1");
        let model_batch = if guided { 2 * batch } else { batch };
        let job = Job::Sample { precision };
        check_fits(&gpu, net, job, model_batch)?;
        let plan = net.plan_step_stored::<f32>(model_batch, false, precision.bytes())?;
        let sizing = Sizing::from_plan(&plan, precision);
        let g = &*gpu;
        let item = net.input_shape(1).len();
        let params = DeviceParams::for_inference(g, net.layout.clone(), precision)?;
        let f32s = |len: usize, what: &str| g.alloc(4 * len, what);
        let cur = f32s(model_batch * item, "x_t")?;
        let model_in = precision
            .is_reduced()
            .then(|| g.alloc(precision.bytes() * model_batch * item, "model input"))
            .transpose()?;
        let next = f32s(batch * item, "x_prev")?;
        let x0 = f32s(batch * item, "x̂₀")?;
        let hist = f32s(batch * item, "sampler history")?;
        let t = f32s(model_batch, "timesteps")?;
        let ids = g.alloc(8 * batch, "image ids")?;
        let backend = GpuBackend::new(gpu.clone(), sizing, precision)
            .map_err(|e| oom_hint(e, &gpu, net, job, model_batch))?;
        Ok(Self {
            gpu,
            params,
            backend,
            batch,
            guided,
            precision,
            cur,
            model_in,
            next,
            x0,
            hist,
            t,
            ids,
        })
    }

    /// Uses these weights (host, in the network's layout).
    pub fn load_weights(&mut self, weights: &[f32]) -> Result<()> {
        anyhow::ensure!(
            weights.len() == self.params.len(),
            "{} weights for a model of {}",
            weights.len(),
            self.params.len()
        );
        Ok(self.params.set_values(&self.gpu, weights)?)
    }

    /// Uses the weights at `ptr` (device, same layout, f32), e.g. a trainer's EMA.
    pub fn load_weights_from_device(&mut self, ptr: DevPtr) -> Result<()> {
        let bytes = 4 * self.params.len();
        self.gpu
            .copy(self.params.values.ptr(), ptr, bytes, "sampling weights")?;
        Ok(self.params.refresh_lowp(&self.gpu)?)
    }

    /// What the model's activations are stored as.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Like [`crate::sample::generate`]: `opts.num` images, (N, C, H, W) clamped to [-1, 1].
    /// Batches larger than the planned size are split further.
    pub fn generate(
        &mut self,
        net: &UNet,
        schedule: &Schedule,
        opts: &GenerateOptions,
        init_noise: Option<&[f32]>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<f32>> {
        Ok(self
            .generate_full(net, schedule, opts, init_noise, progress)?
            .images)
    }

    /// [`generate_with`] on this GPU.
    pub fn generate_full(
        &mut self,
        net: &UNet,
        schedule: &Schedule,
        opts: &GenerateOptions,
        init_noise: Option<&[f32]>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Generated> {
        generate_with(self, net, schedule, opts, init_noise, progress)
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }
}

impl Denoiser for GpuSampler {
    fn max_batch(&self) -> usize {
        self.batch
    }

    /// The evaluations for one batch: `x` holds the start on entry and the result on exit
    /// (host).
    fn run(&mut self, net: &UNet, job: BatchJob<'_>) -> Result<()> {
        let b = job.ids.len();
        let item = net.input_shape(1).len();
        anyhow::ensure!(
            b > 0 && b <= self.batch,
            "a batch of {b} images; planned for {}",
            self.batch
        );
        anyhow::ensure!(
            !job.guided || self.guided,
            "a guided batch on a sampler planned without guidance"
        );
        anyhow::ensure!(
            job.x.len() == b * item,
            "x holds {} values, expected {}",
            job.x.len(),
            b * item
        );
        let model_b = if job.guided { 2 * b } else { b };
        let n = b * item;
        let dt = self.precision;
        let g = self.gpu.clone();
        g.upload(self.cur.ptr(), job.x, "x_T")?;
        g.upload(self.ids.ptr(), job.ids, "image ids")?;
        // The model reads `input`: `cur` itself in fp32, else its copy in `dt`, which the update
        // kernel rewrites each step from the fp32 x_new (one rounding per step, never compounded).
        let input = match &self.model_in {
            Some(m) => {
                ops::elementwise::cast_from_f32(&g, dt, n, self.cur.ptr(), m.ptr())?;
                m.ptr()
            }
            None => self.cur.ptr(),
        };
        let mut t_host = vec![0.0f32; model_b];
        let mut host_xt = Vec::new();
        let mut host_x0 = Vec::new();
        let half = (n * dt.bytes()) as u64;
        // x_new goes to `next` and is copied back into `cur`, so x_t always starts at `cur`; the
        // model input always starts at `input` (and its guided twin right after it).
        for (k, e) in job.evals.iter().enumerate() {
            let step_err = || format!("sampling step {k} (t = {})", e.t);
            if job.guided {
                g.copy(input + half, input, n * dt.bytes(), "guided x_t")?;
            }
            t_host.fill(e.t as f32);
            g.upload(self.t.ptr(), &t_host, "timesteps")?;
            let be = &mut self.backend;
            be.reset();
            let (out, _) = net
                .forward_on(
                    be,
                    &self.params,
                    &DevBuf::view(input, model_b * item),
                    &DevBuf::view(self.t.ptr(), model_b),
                    job.labels,
                    None,
                    false,
                )
                .with_context(step_err)?;
            be.finish().with_context(step_err)?;
            let c = &e.coeffs;
            let noise = (c.sigma > 0.0).then_some(StepNoise {
                seed: job.seed,
                step_index: k as u64,
            });
            ops::diffusion::sampler_step(
                &g,
                dt,
                c,
                noise,
                b,
                item,
                UpdateBuffers {
                    x_t: self.cur.ptr(),
                    out: out.ptr,
                    out_uncond: if job.guided { out.ptr + half } else { 0 },
                    hist: self.hist.ptr(),
                    x_new: self.next.ptr(),
                    x_new_model: if self.model_in.is_some() { input } else { 0 },
                    x0: self.x0.ptr(),
                    image_ids: self.ids.ptr(),
                },
            )
            .with_context(step_err)?;
            let watched = job.watch.contains(&k);
            if watched {
                host_xt.resize(n, 0.0);
                host_x0.resize(n, 0.0);
                g.download(&mut host_xt, self.cur.ptr(), "x_t")?;
                g.download(&mut host_x0, self.x0.ptr(), "x̂₀")?;
            }
            g.copy(self.cur.ptr(), self.next.ptr(), 4 * n, "x_new")?;
            (job.on_eval)(k, watched.then_some((&host_xt[..], &host_x0[..])));
        }
        g.download(job.x, self.cur.ptr(), "x₀")?;
        Ok(())
    }
}
