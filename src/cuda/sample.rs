//! Sampling on the GPU: the reverse process of [`crate::diffusion::sampler::sample`] with the
//! model and the step (DDPM eq. 11 / DDIM eq. 12, one fused kernel) on the device. Images start
//! from the same x_T and draw the same step noise as on the CPU, so both produce the same
//! images up to float rounding.

use std::rc::Rc;

use anyhow::{Context, Result};

use super::backend::{DevBuf, DeviceParams, GpuBackend, Sizing};
use super::device::{DevPtr, DeviceMemory, Gpu};
use super::memory::{check_fits, oom_hint, Job};
use super::ops;
use super::ops::diffusion::StepNoise;
use crate::diffusion::sampler::{SampleOptions, StepCoeffs};
use crate::diffusion::Schedule;
use crate::nn::UNet;
use crate::sample::{in_batches, GenerateOptions};

/// Device state for sampling batches of up to `batch` images from one network.
pub struct GpuSampler {
    gpu: Rc<Gpu>,
    params: DeviceParams,
    backend: GpuBackend,
    batch: usize,
    /// (B, C, H, W) each: x_t, x_prev, clipped x̂₀.
    cur: DeviceMemory,
    next: DeviceMemory,
    x0: DeviceMemory,
    /// (B) f32 timesteps and (B) u64 image ids.
    t: DeviceMemory,
    ids: DeviceMemory,
}

impl GpuSampler {
    /// Plans and allocates everything for batches of up to `batch` images.
    pub fn new(gpu: Rc<Gpu>, net: &UNet, batch: usize) -> Result<Self> {
        anyhow::ensure!(batch > 0, "--batch-size must be at least 1");
        check_fits(&gpu, net, Job::Sample, batch)?;
        let sizing = Sizing::from_plan(&net.plan_step::<f32>(batch, false)?);
        let g = &*gpu;
        let item = net.input_shape(1).len();
        let params = DeviceParams::for_inference(g, net.layout.clone())?;
        let f32s = |len: usize, what: &str| g.alloc(4 * len, what);
        let cur = f32s(batch * item, "x_t")?;
        let next = f32s(batch * item, "x_prev")?;
        let x0 = f32s(batch * item, "x̂₀")?;
        let t = f32s(batch, "timesteps")?;
        let ids = g.alloc(8 * batch, "image ids")?;
        let backend = GpuBackend::new(gpu.clone(), sizing)
            .map_err(|e| oom_hint(e, &gpu, net, Job::Sample, batch))?;
        Ok(Self {
            gpu,
            params,
            backend,
            batch,
            cur,
            next,
            x0,
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

    /// Uses the weights at `ptr` (device, same layout), e.g. a trainer's EMA.
    pub fn load_weights_from_device(&mut self, ptr: DevPtr) -> Result<()> {
        let bytes = 4 * self.params.len();
        Ok(self
            .gpu
            .copy(self.params.values.ptr(), ptr, bytes, "sampling weights")?)
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
        let opts = GenerateOptions {
            batch_size: opts.batch_size.min(self.batch),
            ..opts.clone()
        };
        in_batches(
            net,
            schedule,
            &opts,
            init_noise,
            progress,
            &mut |b, on_step| {
                self.run_batch(
                    net,
                    schedule,
                    &opts.sampler,
                    opts.seed,
                    b.ids,
                    b.labels,
                    b.x,
                    &mut |_| on_step(),
                )
            },
        )
    }

    /// The reverse process for one batch: `x` holds x_T on entry and x₀ on exit (host).
    #[allow(clippy::too_many_arguments)]
    pub fn run_batch(
        &mut self,
        net: &UNet,
        schedule: &Schedule,
        sampler: &SampleOptions,
        seed: u64,
        ids: &[u64],
        labels: Option<&[u32]>,
        x: &mut [f32],
        on_step: &mut dyn FnMut(usize),
    ) -> Result<()> {
        let b = ids.len();
        let item = net.input_shape(1).len();
        anyhow::ensure!(
            b > 0 && b <= self.batch,
            "a batch of {b} images; planned for {}",
            self.batch
        );
        anyhow::ensure!(
            x.len() == b * item,
            "x holds {} values, expected {}",
            x.len(),
            b * item
        );
        let plan = sampler.plan(schedule)?;
        let g = self.gpu.clone();
        g.upload(self.cur.ptr(), x, "x_T")?;
        g.upload(self.ids.ptr(), ids, "image ids")?;
        let n = b * item;
        let (mut cur, mut next) = (self.cur.ptr(), self.next.ptr());
        let mut t_host = vec![0.0f32; b];
        for (k, &pair) in plan.iter().enumerate() {
            t_host.fill(pair.t as f32);
            g.upload(self.t.ptr(), &t_host, "timesteps")?;
            let be = &mut self.backend;
            be.reset();
            let (out, _) = net
                .forward_on(
                    be,
                    &self.params,
                    &DevBuf::view(cur, n),
                    &DevBuf::view(self.t.ptr(), b),
                    labels,
                    None,
                    false,
                )
                .with_context(|| format!("sampling step {k} (t = {})", pair.t))?;
            be.finish()
                .with_context(|| format!("sampling step {k} (t = {})", pair.t))?;
            let c = StepCoeffs::for_step(schedule, sampler, pair);
            let noise = (c.sigma > 0.0).then_some(StepNoise {
                seed,
                step_index: k as u64,
            });
            ops::diffusion::sampler_step(
                &g,
                sampler.kind,
                &c,
                noise,
                b,
                item,
                cur,
                out.ptr,
                next,
                self.x0.ptr(),
                self.ids.ptr(),
            )?;
            std::mem::swap(&mut cur, &mut next);
            on_step(k);
        }
        g.download(x, cur, "x₀")?;
        Ok(())
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }
}
