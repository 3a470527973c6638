//! `ddpm interpolate`: frames decoded from spherical interpolations between two noises.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, Args, ValueEnum};

use super::args::{at_least, between, plural};
use super::invert::raw_name_in;
use super::invert::{parse_spacing, required_class, write_tensor};
use super::output::{check_writable_file, numbered, Naming, OutputDir};
use super::sampling::{
    denoiser, flag_error, open_device, progress_bar, sampler_options, Loaded, ModelArgs,
    SamplerArg, StepArgs,
};
use crate::diffusion::sampler::{initial_noise, inversion_evaluations, SigmaSpacing};
use crate::imaging::{save_grid_upscaled, save_png};
use crate::latent;
use crate::sample::{generate_unclamped, GenerateOptions};
use crate::usage_error::usage;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("endpoints").required(true).args(["seeds", "images"])))]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Two seeds A B: the endpoints are the initial noises of image 0 under each, so the first
    /// and last frames are image 0 of `ddpm sample --seed A` and `--seed B` (same sampler flags).
    #[arg(long, num_args = 1.., value_name = "SEED")]
    pub seeds: Vec<u64>,
    /// Two images X Y (files, or a folder holding exactly two): the endpoints are their DDIM
    /// inversions (see `ddpm invert`). Nothing is clipped then, so the end frames reconstruct
    /// the images when decoded with DDIM.
    #[arg(long, num_args = 1.., value_name = "FILE|DIR")]
    pub images: Vec<PathBuf>,
    /// Frames, endpoints included: α = k/(F − 1), k = 0 … F − 1.
    #[arg(long, value_name = "F", default_value_t = 8, value_parser = between::<2, 1000>)]
    pub frames: u64,
    /// The deterministic sampler that decodes each frame (ddpm and euler-maruyama draw fresh
    /// noise at every step, so they cannot interpolate).
    #[arg(long, value_name = "ddim|euler|heun|dpm++2m", default_value = "ddim", value_parser = deterministic_sampler)]
    pub sampler: SamplerArg,
    /// Steps of the decoding sampler [default: 20 for dpm++2m, else 50].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub steps: Option<u64>,
    /// Output directory for frame_00.png, …, strip.png and noise.safetensors (the frames'
    /// noises, for `ddpm sample --init-noise`); it must be empty or new.
    #[arg(long, value_name = "DIR", default_value = "runs/interpolation")]
    pub out: PathBuf,
    /// Replace the earlier output of `ddpm interpolate` in --out (its frame_*.png, strip.png
    /// and noise.safetensors; anything else there is refused, not removed).
    #[arg(long)]
    pub force: bool,
    /// DDIM η; only 0 (deterministic) is accepted.
    #[arg(
        long,
        value_name = "ETA",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub eta: f64,
    #[command(flatten)]
    pub step: StepArgs,
    /// Noise levels of euler, heun and dpm++2m: karras or timesteps (as `ddpm sample`).
    #[arg(long, value_name = "karras|timesteps")]
    pub sigmas: Option<SigmaSpacing>,
    /// DDIM steps of the inversion of --images [default: --steps with --sampler ddim, else 50].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub inversion_steps: Option<u64>,
    /// Class of every frame, for a class-conditional model (required there).
    #[arg(long, value_name = "K")]
    pub class: Option<u32>,
    /// Enlarge --images smaller than the model's size (otherwise they are refused).
    #[arg(long)]
    pub upscale: bool,
    /// Also write the frames as a safetensors tensor `sample` (F, C, H, W), as the sampler left
    /// them: not clamped to [-1, 1] (the PNGs are).
    #[arg(long, value_name = "FILE")]
    pub save_raw: Option<PathBuf>,
    /// Images per model evaluation (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = at_least::<1>)]
    pub batch_size: u64,
}

/// `--sampler`: the deterministic samplers only, the others refused with the reason.
fn deterministic_sampler(s: &str) -> Result<SamplerArg, String> {
    let sampler = SamplerArg::from_str(s, false)?;
    match sampler {
        SamplerArg::Ddpm | SamplerArg::EulerMaruyama => Err(format!(
            "interpolation needs a deterministic sampler (ddim with η = 0, euler, heun or \
             dpm++2m); {s} draws fresh noise at every step"
        )),
        _ => Ok(sampler),
    }
}

/// What `ddpm interpolate` writes into `--out`.
fn interpolate_naming(name: &str) -> bool {
    matches!(name, "strip.png" | "noise.safetensors") || numbered(name, "frame_", 2, ".png")
}

pub fn run(a: InterpolateArgs) -> Result<()> {
    let from_images = !a.images.is_empty();
    // Usage errors that need no model first.
    if !from_images && a.seeds.len() != 2 {
        return Err(usage(format!(
            "--seeds: expected exactly two seeds, got {}",
            a.seeds.len()
        )));
    }
    if !from_images && a.inversion_steps.is_some() {
        return Err(usage("--inversion-steps applies to --images only"));
    }
    if a.sampler == SamplerArg::Ddim && a.eta != 0.0 {
        return Err(usage(format!(
            "--eta {}: interpolation needs a deterministic sampler; DDIM is deterministic only \
             with η = 0",
            a.eta
        )));
    }
    let frames = a.frames as usize;
    // Inverted endpoints are decoded without clipping: the inversion cannot undo a clip.
    let loaded = Loaded::open(&a.model, a.step.no_clip || from_images, None)?;
    let (net, schedule, src) = (&loaded.net, &loaded.schedule, &loaded.src);
    let (c, s) = loaded.image_shape();
    let item = c * s * s;
    let mut sampler = sampler_options(
        schedule,
        a.sampler,
        a.steps,
        a.eta,
        a.step.spacing.as_deref(),
        a.sigmas,
        None,
    )?;
    sampler.eps_from_clipped_x0 = !src.from_diffusers; // as `ddpm sample` by default
    let decode_evals = sampler.num_evaluations(schedule)?;
    let inversion = if from_images {
        let steps = a.inversion_steps.map_or(
            if a.sampler == SamplerArg::Ddim {
                sampler.steps
            } else {
                50.min(schedule.num_timesteps())
            },
            |v| v as usize,
        );
        let opts = latent::ddim_options(schedule, steps, parse_spacing(a.step.spacing.as_deref())?);
        let evals = inversion_evaluations(schedule, &opts)
            .map_err(|e| flag_error(schedule, e, Some("inversion-steps")))?;
        Some((steps, evals))
    } else {
        None
    };
    let class = required_class(&loaded, a.class)?;
    let files = if from_images {
        let files = latent::image_files(&a.images)?;
        if files.len() != 2 {
            return Err(usage(format!(
                "--images: expected exactly two images, got {}{}",
                files.len(),
                if files.len() == a.images.len() {
                    String::new()
                } else {
                    " (counting the images in its folders)".to_string()
                }
            )));
        }
        files
    } else {
        Vec::new()
    };
    let images = if from_images {
        Some(latent::load_images(&files, s, c, a.upscale)?)
    } else {
        None
    };
    let raw_name = raw_name_in(a.save_raw.as_deref(), &a.out);
    let owns = |name: &str| interpolate_naming(name) || raw_name.as_deref() == Some(name);
    let naming = Naming {
        command: "ddpm interpolate",
        pattern: "frame_*.png, strip.png, noise.safetensors",
        owns: &owns,
    };
    let mut out_dir = OutputDir::prepare_fresh(&a.out, "--out", a.force, &naming)?;
    if let Some(raw) = &a.save_raw {
        check_writable_file(raw, "--save-raw")?;
    }

    let bar = progress_bar(a.model.quiet, "evaluations");
    let device = open_device(a.model.device, a.model.quiet)?;
    let precision = a.model.precision.resolve(&device)?;
    let batch = (a.batch_size as usize).min(frames);
    let mut den = denoiser(&device, &loaded, batch, false, precision)?;
    let per_batch = batch.min(den.max_batch()).max(1);
    let inv_total = inversion
        .as_ref()
        .map_or(0, |(_, e)| e.len() * 2usize.div_ceil(per_batch)) as u64;
    let total = inv_total + (decode_evals * frames.div_ceil(per_batch)) as u64;
    if let Some(bar) = &bar {
        bar.set_length(total);
    }
    let mut done = 0u64;
    let ends = match (&inversion, &images) {
        (Some((_, evals)), Some(images)) => latent::invert(
            den.as_mut(),
            net,
            evals,
            images,
            class.map(|k| vec![k; 2]).as_deref(),
            batch,
            &mut || {
                done += 1;
                if let Some(bar) = &bar {
                    bar.set_position(done);
                }
            },
        )?,
        _ => initial_noise(a.seeds[0], &[0], item)?
            .into_iter()
            .chain(initial_noise(a.seeds[1], &[0], item)?)
            .collect(),
    };
    let (z0, z1) = ends.split_at(item);
    let theta = latent::angle(z0, z1);
    let noise = latent::slerp_frames(z0, z1, frames);
    let gen = GenerateOptions {
        labels: class.map(|k| vec![k; frames]),
        null_class: src.null_class,
        ..GenerateOptions::new(sampler.clone(), frames, batch, 0)
    };
    let result = generate_unclamped(
        den.as_mut(),
        net,
        schedule,
        &gen,
        Some(&noise),
        &mut |d, _| {
            if let Some(bar) = &bar {
                bar.set_position(done + d);
            }
        },
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    out_dir.clear_earlier()?;
    let digits = (frames - 1).to_string().len().max(2);
    let mut meta = HashMap::from([
        ("checkpoint".to_string(), src.path.display().to_string()),
        ("sampler".to_string(), sampler.kind.name().to_string()),
        ("steps".to_string(), sampler.steps.to_string()),
        ("spacing".to_string(), sampler.spacing.to_string()),
    ]);
    match &inversion {
        Some((steps, _)) => {
            meta.insert("inversion_steps".to_string(), steps.to_string());
            for (k, f) in files.iter().enumerate() {
                meta.insert(format!("image_{k}"), f.display().to_string());
            }
        }
        None => {
            meta.insert(
                "seeds".to_string(),
                format!("{} {}", a.seeds[0], a.seeds[1]),
            );
        }
    }
    write_tensor(
        &a.out.join("noise.safetensors"),
        "noise",
        vec![frames, c, s, s],
        &noise,
        meta.clone(),
    )?;
    drop(out_dir); // it holds output now, and stays
    for (k, img) in result.images.chunks_exact(item).enumerate() {
        save_png(&a.out.join(format!("frame_{k:0digits$}.png")), img, c, s, s)?;
    }
    save_grid_upscaled(
        &a.out.join("strip.png"),
        &result.images,
        frames,
        c,
        s,
        s,
        frames,
    )?;
    if let Some(raw) = &a.save_raw {
        write_tensor(raw, "sample", vec![frames, c, s, s], &result.images, meta)?;
    }
    if !a.model.quiet {
        let angle = theta.map_or("undefined (a zero endpoint)".to_string(), |t| {
            format!("{:.1}°", t.to_degrees())
        });
        eprintln!(
            "wrote {frames} frames, strip.png and noise.safetensors to {} ({} of {}, {} per \
             frame, {}; angle between the endpoints {angle})",
            a.out.display(),
            if from_images {
                "DDIM-inverted images"
            } else {
                "seed noises"
            },
            sampler.kind.name(),
            plural(decode_evals as u64, "evaluation", "evaluations"),
            src.describe_weights(!a.model.no_ema),
        );
    }
    Ok(())
}
