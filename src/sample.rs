//! Drawing images from a trained model: any sampler of [`crate::diffusion::sampler`] over many
//! images, in batches, on the CPU or the GPU ([`Denoiser`]), with classifier-free guidance and
//! snapshots of the reverse process.
//!
//! Image `i` of a run always starts from, and draws its step noise from, its own streams
//! (seed, i), so the images do not depend on `--batch-size` (beyond float rounding: the matrix
//! products may block differently for another batch size) and a run can be split or repeated.

use anyhow::{ensure, Result};

use crate::diffusion::sampler::{
    initial_noise, run_evaluations, Evaluation, SampleOptions, StepInfo,
};
use crate::diffusion::Schedule;
use crate::nn::UNet;
use crate::params::ParamArena;
use crate::profile::{self, Op};

/// What to draw.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub sampler: SampleOptions,
    /// Number of images.
    pub num: usize,
    /// Images per model evaluation (a guided evaluation runs twice as many through the model).
    pub batch_size: usize,
    pub seed: u64,
    /// Class of each image for a class-conditional model (length `num`); `None` cycles through
    /// the classes. The null class, where the model has one, asks for an unconditional image.
    pub labels: Option<Vec<u32>>,
    /// The model's null class (the label dropped labels were replaced by in training); needed
    /// for guidance.
    pub null_class: Option<u32>,
    /// Evaluation indices at which to keep xₜ and x̂₀ of every image (empty: none).
    pub watch: Vec<usize>,
}

impl GenerateOptions {
    /// `num` images in batches of `batch_size`, unguided, nothing watched.
    pub fn new(sampler: SampleOptions, num: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            sampler,
            num,
            batch_size,
            seed,
            labels: None,
            null_class: None,
            watch: Vec::new(),
        }
    }
}

/// `k` evaluation indices spread evenly over `total`, first and last included.
pub fn evenly_spaced(k: usize, total: usize) -> Vec<usize> {
    match (k, total) {
        (0, _) | (_, 0) => Vec::new(),
        (1, _) => vec![total - 1],
        _ => {
            let mut v: Vec<usize> = (0..k)
                .map(|i| ((i * (total - 1)) as f64 / (k - 1) as f64).round() as usize)
                .collect();
            v.dedup();
            v
        }
    }
}

/// The images and, when asked for, the watched states.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// (N, C, H, W): clamped to [-1, 1] by [`generate_with`], as the sampler left them by
    /// [`generate_unclamped`].
    pub images: Vec<f32>,
    /// (N, K, C, H, W): xₜ at each watched evaluation (K = `watch.len()`), not clamped.
    pub x_t: Vec<f32>,
    /// (N, K, C, H, W): the clipped x̂₀ at each watched evaluation.
    pub x0: Vec<f32>,
    /// (K) the timestep of each watched evaluation.
    pub watch_t: Vec<f64>,
}

/// Called after each evaluation with its index, and (xₜ, x̂₀) if it is watched.
pub type OnEval<'a> = dyn FnMut(usize, Option<(&[f32], &[f32])>) + 'a;

/// One batch of evaluations to run.
pub struct BatchJob<'a> {
    pub evals: &'a [Evaluation],
    pub seed: u64,
    /// (B) global image indices, for the noise streams.
    pub ids: &'a [u64],
    /// (B) classes, or (2B) for a guided run: the classes, then the null class B times.
    pub labels: Option<&'a [u32]>,
    /// Whether each evaluation is guided (2B images through the model).
    pub guided: bool,
    /// (B, C, H, W): the start on entry, the result on exit.
    pub x: &'a mut [f32],
    /// Evaluation indices whose (xₜ, x̂₀) `on_eval` receives.
    pub watch: &'a [usize],
    /// Called after each evaluation with its index, and the states if it is watched.
    pub on_eval: &'a mut OnEval<'a>,
}

/// Runs evaluation sequences for batches of images: the network plus the sampler update.
pub trait Denoiser {
    /// The most images one job may hold.
    fn max_batch(&self) -> usize;
    fn run(&mut self, net: &UNet, job: BatchJob<'_>) -> Result<()>;
}

/// The CPU denoiser: [`UNet::predict`] and [`run_evaluations`].
pub struct CpuDenoiser<'a> {
    pub params: &'a ParamArena<f32>,
}

impl Denoiser for CpuDenoiser<'_> {
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn run(&mut self, net: &UNet, job: BatchJob<'_>) -> Result<()> {
        let item = net.input_shape(1).len();
        let guided = job.guided;
        let labels = job.labels;
        // The sampler's own work is the run's time outside the network (for `--profile`).
        let run_start = profile::start();
        let mut in_model = std::time::Duration::ZERO;
        let mut model = |x_t: &[f32], t: &[f32], out: &mut [f32]| -> Result<()> {
            let model_start = run_start.map(|_| std::time::Instant::now());
            let y = if guided {
                // One batch of 2B: the images under their classes, then under the null class.
                let (x2, t2) = ([x_t, x_t].concat(), [t, t].concat());
                net.predict(self.params, &x2, &t2, labels)?
            } else {
                net.predict(self.params, x_t, t, labels)?
            };
            out.copy_from_slice(&y);
            if let Some(t) = model_start {
                in_model += t.elapsed();
            }
            Ok(())
        };
        let watch = job.watch;
        let on_eval = job.on_eval;
        let result = run_evaluations(
            job.evals,
            guided,
            job.x,
            item,
            job.ids,
            job.seed,
            &mut model,
            &mut |info: StepInfo<'_>| {
                let states = watch
                    .contains(&info.index)
                    .then_some((info.x_t, info.x0_pred));
                on_eval(info.index, states)
            },
        );
        if let Some(t) = run_start {
            profile::record_span(Op::SamplerUpdate, t.elapsed().saturating_sub(in_model));
        }
        result
    }
}

/// Draws `opts.num` images on the CPU, (N, C, H, W) clamped to [-1, 1]. `init_noise`, when
/// given, replaces x_T ((N, C, H, W)). `progress(done, total)` counts model evaluations.
pub fn generate(
    net: &UNet,
    params: &ParamArena<f32>,
    schedule: &Schedule,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<f32>> {
    let mut den = CpuDenoiser { params };
    Ok(generate_with(&mut den, net, schedule, opts, init_noise, progress)?.images)
}

/// Draws `opts.num` images with `den`: checks the request, splits it into batches of at most
/// `opts.batch_size` (and the denoiser's limit), gives each its x_T (from `init_noise` or the
/// image's own stream) and labels, runs the sampler's evaluations, and gathers the images
/// clamped to [-1, 1] and the watched states. `progress(done, total)` counts evaluations.
pub fn generate_with(
    den: &mut dyn Denoiser,
    net: &UNet,
    schedule: &Schedule,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Generated> {
    let mut out = generate_unclamped(den, net, schedule, opts, init_noise, progress)?;
    for v in &mut out.images {
        *v = v.clamp(-1.0, 1.0);
    }
    Ok(out)
}

/// [`generate_with`] without the clamp: the images are the sampler's final state as it left
/// it, which without clipping (`clip_sample: false`, `--no-clip`) may lie well outside
/// [-1, 1]. What `--save-raw` writes; the PNGs clamp as they are written.
pub fn generate_unclamped(
    den: &mut dyn Denoiser,
    net: &UNet,
    schedule: &Schedule,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Generated> {
    let labels = check_request(net, opts, init_noise)?;
    let evals = opts.sampler.evaluations(schedule)?;
    let guided = opts.sampler.guidance.is_some();
    let null = opts.null_class;
    let item = net.input_shape(1).len();
    let batch_size = opts.batch_size.min(den.max_batch()).max(1);
    let steps = evals.len() as u64;
    let total = steps * opts.num.div_ceil(batch_size) as u64;
    let watch: Vec<usize> = opts
        .watch
        .iter()
        .copied()
        .filter(|&k| k < evals.len())
        .collect();
    let k_watch = watch.len();
    let mut done = 0u64;
    let mut out = Generated {
        images: Vec::with_capacity(opts.num * item),
        x_t: vec![0.0; opts.num * k_watch * item],
        x0: vec![0.0; opts.num * k_watch * item],
        watch_t: watch.iter().map(|&k| evals[k].t).collect(),
    };
    for first in (0..opts.num).step_by(batch_size) {
        let n = batch_size.min(opts.num - first);
        let ids: Vec<u64> = (first as u64..(first + n) as u64).collect();
        let mut x = match init_noise {
            Some(noise) => noise[first * item..(first + n) * item].to_vec(),
            None => initial_noise(opts.seed, &ids, item)?,
        };
        let batch_labels: Option<Vec<u32>> = labels.as_ref().map(|l| {
            let mut v = l[first..first + n].to_vec();
            if guided {
                v.extend(std::iter::repeat_n(null.expect("checked"), n));
            }
            v
        });
        let (x_t_all, x0_all) = (&mut out.x_t, &mut out.x0);
        let mut on_eval = |k: usize, states: Option<(&[f32], &[f32])>| {
            if let (Some((xt, x0)), Some(slot)) = (states, watch.iter().position(|&w| w == k)) {
                for i in 0..n {
                    let dst = ((first + i) * k_watch + slot) * item;
                    x_t_all[dst..dst + item].copy_from_slice(&xt[i * item..(i + 1) * item]);
                    x0_all[dst..dst + item].copy_from_slice(&x0[i * item..(i + 1) * item]);
                }
            }
            done += 1;
            progress(done, total);
        };
        den.run(
            net,
            BatchJob {
                evals: &evals,
                seed: opts.seed,
                ids: &ids,
                labels: batch_labels.as_deref(),
                guided,
                x: &mut x,
                watch: &watch,
                on_eval: &mut on_eval,
            },
        )?;
        out.images.extend_from_slice(&x);
    }
    debug_assert_eq!(done, total);
    Ok(out)
}

/// Checks a request against the model and resolves the class of every image (`None` for an
/// unconditional model); shared by the CPU and GPU samplers.
pub fn check_request(
    net: &UNet,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
) -> Result<Option<Vec<u32>>> {
    ensure!(opts.num > 0, "--num must be at least 1");
    ensure!(opts.batch_size > 0, "--batch-size must be at least 1");
    let item = net.input_shape(1).len();
    ensure!(
        net.config.in_channels == net.config.out_channels,
        "the model maps {} channels to {}: it cannot be sampled as a denoiser",
        net.config.in_channels,
        net.config.out_channels
    );
    if let Some(noise) = init_noise {
        ensure!(
            noise.len() == opts.num * item,
            "the initial noise holds {} values, expected {} images × {item}",
            noise.len(),
            opts.num
        );
    }
    let embeds = net.config.num_class_embeds;
    if let (Some(null), Some(n)) = (opts.null_class, embeds) {
        ensure!(
            (null as usize) < n,
            "null class {null} is out of range: the model embeds {n} classes"
        );
    }
    if opts.sampler.guidance.is_some() {
        ensure!(
            embeds.is_some(),
            "classifier-free guidance needs a class-conditional model; this one is unconditional"
        );
        ensure!(
            opts.null_class.is_some(),
            "classifier-free guidance needs a model trained with label dropout (it learns a null \
             class for the unconditional output); this model has none"
        );
    }
    let labels: Option<Vec<u32>> = match (embeds, &opts.labels) {
        (None, None) => None,
        (None, Some(_)) => anyhow::bail!("class labels were given for an unconditional model"),
        (Some(n), None) => {
            // Cycle through the real classes; the null class is last.
            let real = if opts.null_class.is_some() { n - 1 } else { n };
            Some((0..opts.num).map(|i| (i % real.max(1)) as u32).collect())
        }
        (Some(n), Some(l)) => {
            ensure!(
                l.len() == opts.num,
                "{} labels for {} images",
                l.len(),
                opts.num
            );
            if let Some(bad) = l.iter().find(|&&c| c as usize >= n) {
                anyhow::bail!("class {bad} is out of range: the model has {n} classes (0..{n})");
            }
            Some(l.clone())
        }
    };
    Ok(labels)
}
