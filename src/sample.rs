//! Drawing images from a trained model: the reverse process (DDPM Algorithm 2 or DDIM eq. 12,
//! see [`crate::diffusion::sampler`]) over many images, in batches.
//!
//! Image `i` of a run always starts from, and draws its step noise from, its own streams
//! (seed, i), so the images do not depend on `--batch-size` (beyond float rounding: the matrix
//! products may block differently for another batch size) and a run can be split or repeated.

use anyhow::{ensure, Result};

use crate::diffusion::sampler::{initial_noise, sample, SampleOptions, StepInfo};
use crate::diffusion::Schedule;
use crate::nn::UNet;
use crate::params::ParamArena;

/// What to draw.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub sampler: SampleOptions,
    /// Number of images.
    pub num: usize,
    /// Images per model evaluation.
    pub batch_size: usize,
    pub seed: u64,
    /// Class of each image for a class-conditional model (length `num`); `None` cycles through
    /// the classes.
    pub labels: Option<Vec<u32>>,
}

/// Draws `opts.num` images, (N, C, H, W) with values clamped to [-1, 1]. `init_noise`, when
/// given, replaces x_T ((N, C, H, W)). `progress(done, total)` counts model evaluations.
pub fn generate(
    net: &UNet,
    params: &ParamArena<f32>,
    schedule: &Schedule,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<f32>> {
    let item = net.input_shape(1).len();
    in_batches(
        net,
        schedule,
        opts,
        init_noise,
        progress,
        &mut |batch, on_step| {
            let mut model = |x_t: &[f32], t: &[usize], out: &mut [f32]| -> Result<()> {
                let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                let y = net.predict(params, x_t, &t, batch.labels)?;
                out.copy_from_slice(&y);
                Ok(())
            };
            sample(
                schedule,
                &opts.sampler,
                batch.x,
                item,
                batch.ids,
                opts.seed,
                &mut model,
                &mut |_: StepInfo<'_>| on_step(),
            )
        },
    )
}

/// One batch of a request, for the function that runs its reverse process.
pub struct RequestBatch<'a> {
    /// (n) global image indices.
    pub ids: &'a [u64],
    /// (n) classes, for a class-conditional model.
    pub labels: Option<&'a [u32]>,
    /// (n, C, H, W): x_T on entry, x₀ on exit.
    pub x: &'a mut [f32],
}

/// Takes one batch from x_T to x₀, calling its second argument after each model evaluation.
pub type BatchRunner<'a> = dyn FnMut(RequestBatch<'_>, &mut dyn FnMut()) -> Result<()> + 'a;

/// The batching both samplers share: checks the request, splits it into batches of
/// `opts.batch_size`, gives each its x_T (from `init_noise` or the image's own stream) and
/// labels, lets `run` take it from x_T to x₀ (calling `on_step` once per model evaluation), and
/// gathers the images clamped to [-1, 1]. `progress(done, total)` counts model evaluations.
pub fn in_batches(
    net: &UNet,
    schedule: &Schedule,
    opts: &GenerateOptions,
    init_noise: Option<&[f32]>,
    progress: &mut dyn FnMut(u64, u64),
    run: &mut BatchRunner<'_>,
) -> Result<Vec<f32>> {
    let labels = check_request(net, opts, init_noise)?;
    let item = net.input_shape(1).len();
    let steps = opts.sampler.plan(schedule)?.len() as u64;
    let total = steps * opts.num.div_ceil(opts.batch_size) as u64;
    let mut done = 0u64;
    let mut images = Vec::with_capacity(opts.num * item);
    for first in (0..opts.num).step_by(opts.batch_size) {
        let n = opts.batch_size.min(opts.num - first);
        let ids: Vec<u64> = (first as u64..(first + n) as u64).collect();
        let mut x = match init_noise {
            Some(noise) => noise[first * item..(first + n) * item].to_vec(),
            None => initial_noise(opts.seed, &ids, item)?,
        };
        let batch = RequestBatch {
            ids: &ids,
            labels: labels.as_ref().map(|l| &l[first..first + n]),
            x: &mut x,
        };
        run(batch, &mut || {
            done += 1;
            progress(done, total);
        })?;
        images.extend(x.iter().map(|v| v.clamp(-1.0, 1.0)));
    }
    debug_assert_eq!(done, total);
    Ok(images)
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
    let labels: Option<Vec<u32>> = match (net.config.num_class_embeds, &opts.labels) {
        (None, None) => None,
        (None, Some(_)) => anyhow::bail!("class labels were given for an unconditional model"),
        (Some(n), None) => Some((0..opts.num).map(|i| (i % n) as u32).collect()),
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
