//! `ddpm bench samplers`: every sampler × step count on one trained model → sample quality and
//! time, as a Markdown table.
//!
//! Quality is the Fréchet distance between Gaussian fits of average-pooled pixels of the
//! samples and of as many training images ([`crate::metrics`]): FID's statistic without the
//! Inception network, which small synthetic images do not need. The table also gives the same
//! distance between two disjoint sets of training images, the floor that sampling error sits
//! on at this number of images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;

use crate::cli::args::{at_least, between};
use crate::cli::sampling::{denoiser, open_device, sampler_options, Loaded, ModelArgs, SamplerArg};
use crate::data::{self, DataSpec, Dataset};
use crate::metrics::{frechet_distance, pooled_features, GaussianFit};
use crate::rng::Philox;
use crate::sample::{generate_with, GenerateOptions};
use crate::usage_error::usage;

#[derive(Debug, Args)]
pub struct SamplerTableArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The reference images (as `ddpm train --data`) [default: the data the checkpoint was
    /// trained on].
    #[arg(long, value_name = "SOURCE")]
    pub data: Option<String>,
    /// Samplers, comma-separated.
    #[arg(
        long,
        value_enum,
        value_name = "SAMPLER,…",
        value_delimiter = ',',
        default_value = "ddpm,ddim,euler,heun,euler-maruyama,dpm++2m"
    )]
    pub samplers: Vec<SamplerArg>,
    /// Step counts, comma-separated (noise levels for the continuous samplers).
    #[arg(
        long,
        value_name = "N,…",
        value_delimiter = ',',
        default_value = "10,20,50,100",
        value_parser = at_least::<1>
    )]
    pub steps: Vec<u64>,
    /// Also run DDPM over all T timesteps, the reference the others approximate.
    #[arg(long)]
    pub full_ddpm: bool,
    /// Images per row (and training images in each reference set).
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = at_least::<2>)]
    pub num: u64,
    /// Images per model call.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = at_least::<1>)]
    pub batch_size: u64,
    /// Pooling grid: features are the channel means over grid × grid cells.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = between::<1, 64>)]
    pub grid: u64,
    /// Classifier-free guidance scale for a model trained with label dropout (1: plain
    /// conditional sampling).
    #[arg(long, value_name = "G")]
    pub guidance_scale: Option<f64>,
    /// Seed of the samples' noise and of the choice of reference images.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Also write the table to this Markdown file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// (N, C, H, W) in [-1, 1] of `count` training images picked without replacement from
/// `order`, starting at `from`.
fn reference_images(ds: &Dataset, order: &[usize], from: usize, count: usize) -> Vec<f32> {
    let item = ds.channels * ds.size * ds.size;
    let mut x = Vec::with_capacity(count * item);
    for &i in &order[from..from + count] {
        x.extend(
            ds.pixels[i * item..(i + 1) * item]
                .iter()
                .map(|&p| f32::from(p) / 127.5 - 1.0),
        );
    }
    x
}

pub fn run(a: &SamplerTableArgs) -> Result<()> {
    ensure!(!a.samplers.is_empty(), usage("--samplers: none given"));
    ensure!(!a.steps.is_empty(), usage("--steps: none given"));
    if let Some(bad) = a.steps.iter().find(|&&s| s == 0) {
        return Err(usage(format!("--steps: {bad} is not a step count")));
    }
    let loaded = Loaded::open(&a.model, false, None)?;
    let (net, schedule, src) = (&loaded.net, &loaded.schedule, &loaded.src);
    let guidance = match a.guidance_scale {
        None | Some(1.0) => None,
        Some(g) => {
            ensure!(
                g.is_finite() && g >= 0.0 && src.null_class.is_some(),
                usage(format!(
                    "--guidance-scale {g}: needs a finite g ≥ 0 and a model trained with \
                     label dropout"
                ))
            );
            Some(g)
        }
    };
    // Every row's options, checked before any work.
    let mut rows = Vec::new();
    for &sampler in &a.samplers {
        for &steps in &a.steps {
            rows.push(sampler_options(
                schedule,
                sampler,
                Some(steps),
                0.0,
                None,
                None,
                guidance,
            )?);
        }
    }
    if a.full_ddpm {
        let t = schedule.num_timesteps() as u64;
        rows.push(sampler_options(
            schedule,
            SamplerArg::Ddpm,
            Some(t),
            0.0,
            None,
            None,
            guidance,
        )?);
    }
    let spec_text = match (&a.data, &src.train) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.data.clone(),
        (None, None) => {
            return Err(usage(
                "--data: the model is not a ddpm checkpoint, so name the reference images",
            ))
        }
    };
    let spec: DataSpec = spec_text
        .parse()
        .map_err(|e| usage(format!("--data {spec_text}: {e}")))?;
    let (c, s) = loaded.image_shape();
    let ds = data::load(&spec, s, c, false).with_context(|| format!("--data {spec_text}"))?;
    let (num, grid) = (a.num as usize, a.grid as usize);
    let images_in_data = ds.pixels.len() / (c * s * s);
    ensure!(
        images_in_data >= 2 * num,
        usage(format!(
            "--num {num}: {spec_text} holds {images_in_data} images, fewer than the 2 × {num} \
             the two reference sets need"
        ))
    );
    ensure!(
        grid <= s,
        usage(format!("--grid {grid}: larger than the {s}-pixel images"))
    );
    let device = open_device(a.model.device, a.model.quiet)?;
    let precision = a.model.precision.resolve(&device)?;
    let mut order: Vec<usize> = (0..images_in_data).collect();
    let mut rng = Philox::new(a.seed ^ 0x5eed);
    for i in (1..order.len()).rev() {
        let j = (rng.next_u32() as usize) % (i + 1);
        order.swap(i, j);
    }
    let fit = |x: &[f32]| -> Result<GaussianFit> {
        GaussianFit::from_features(&pooled_features(x, num, c, s, s, grid)?, c * grid * grid)
    };
    let real = fit(&reference_images(&ds, &order, 0, num))?;
    let floor = frechet_distance(&real, &fit(&reference_images(&ds, &order, num, num))?)?;

    let mut table = vec![
        format!(
            "Sample quality and time on {} ({} images per row; Fréchet distance of {}×{} \
             average-pooled pixels to {num} training images of {spec_text}; lower is better){}",
            device.describe(),
            num,
            grid,
            grid,
            guidance.map_or(String::new(), |g| format!(", guidance scale {g}"))
        ),
        String::new(),
        "| sampler | steps | model evaluations | Fréchet distance | seconds | ms per image |"
            .into(),
        "|---|---:|---:|---:|---:|---:|".into(),
        format!("| training images (a second set) | | | {floor:.4} | | |"),
    ];
    for line in &table {
        println!("{line}");
    }
    let batch = (a.batch_size as usize).min(num);
    // One denoiser (on a GPU: one plan and one upload of the weights) for every row.
    let mut den = denoiser(&device, &loaded, batch, guidance.is_some(), precision)?;
    for opts in rows {
        let evals = opts.num_evaluations(schedule)?;
        let gen = GenerateOptions {
            null_class: src.null_class,
            ..GenerateOptions::new(opts.clone(), num, batch, a.seed)
        };
        let start = Instant::now();
        let out = generate_with(den.as_mut(), net, schedule, &gen, None, &mut |_, _| {})?;
        let seconds = start.elapsed().as_secs_f64();
        let fd = frechet_distance(&real, &fit(&out.images)?)?;
        let line = format!(
            "| {} | {} | {evals} | {fd:.4} | {seconds:.1} | {:.2} |",
            opts.kind.name(),
            opts.steps,
            seconds * 1e3 / num as f64
        );
        println!("{line}");
        table.push(line);
    }
    if let Some(path) = &a.out {
        let text = table.join("\n") + "\n";
        crate::atomic_file::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
