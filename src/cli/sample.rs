//! `ddpm sample`: checkpoint → images (one PNG each, a grid, optionally the raw tensor and the
//! reverse process of each image).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::Args;

use super::args::{at_least, between, plural};
use super::invert::{raw_name_in, write_tensor};
use super::output::{check_writable_file, numbered, Naming, OutputDir};
use super::sampling::{
    denoiser, open_device, progress_bar, progress_fn, sampler_options, DdimEpsArg, Loaded,
    ModelArgs, SamplerArg, StepArgs, SAMPLERS,
};
use crate::cpu_memory;
use crate::device::Device;
use crate::diffusion::sampler::SigmaSpacing;
use crate::imaging::{save_grid_upscaled, save_png};
use crate::params::decode_into;
use crate::sample::{check_request, evenly_spaced, generate_unclamped, GenerateOptions};
use crate::usage_error::usage;

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of images [default: 16, or as many as `--init-noise` holds].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub num: Option<u64>,
    /// The sampler: ddpm (ancestral, DDPM), ddim (DDIM; --eta sets its noise), euler and heun
    /// (probability-flow ODE, first and second order), euler-maruyama (reverse SDE) or dpm++2m
    /// (DPM-Solver++(2M)) [default: ddim for a diffusers pipeline published with
    /// DDIMScheduler, else ddpm].
    #[arg(long, value_enum, value_name = SAMPLERS, hide_possible_values = true)]
    pub sampler: Option<SamplerArg>,
    /// Steps: timesteps visited (ddpm, ddim) or noise levels (the others; heun evaluates the
    /// model 2N − 1 times) [default: T for ddpm, 20 for dpm++2m, else 50].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub steps: Option<u64>,
    /// Seed of the initial noise and of every noise a sampler draws: the same seed and flags
    /// give the same images.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Output directory for `sample_00000.png`, …, `grid.png` (and `progression_00000.png`, …);
    /// it must be empty or new.
    #[arg(long, value_name = "DIR", default_value = "runs/samples")]
    pub out: PathBuf,
    /// Replace the earlier output of `ddpm sample` in --out (its sample_*.png, grid.png and
    /// progression_*.png; anything else there is refused, not removed).
    #[arg(long)]
    pub force: bool,
    /// DDIM η: 0 is deterministic, 1 has DDPM's posterior variance.
    #[arg(
        long,
        value_name = "ETA",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub eta: f64,
    #[command(flatten)]
    pub step: StepArgs,
    /// Noise levels of euler, heun, euler-maruyama and dpm++2m: karras (Karras et al. 2022,
    /// ρ = 7, over the trained range) or timesteps (σ at the --spacing timesteps) [default:
    /// karras, timesteps for dpm++2m].
    #[arg(long, value_name = "karras|timesteps")]
    pub sigmas: Option<SigmaSpacing>,
    /// DDIM with clipping: the ε̂ carried to the next step, clipped (recomputed from the
    /// clipped x̂₀) or unclipped (the model's own) [default: clipped for ddpm checkpoints,
    /// unclipped for diffusers models, as diffusers' DDIMPipeline].
    #[arg(
        long,
        value_enum,
        value_name = "clipped|unclipped",
        hide_possible_values = true
    )]
    pub ddim_eps: Option<DdimEpsArg>,
    /// DDPM step variance: fixed_small (the posterior's β̃) or fixed_large (β) [default: the
    /// checkpoint's schedule, fixed_small unless trained otherwise].
    #[arg(long, value_name = "fixed_small|fixed_large")]
    pub variance: Option<String>,
    /// Class of every image for a class-conditional model [default: cycle through the classes].
    #[arg(long, value_name = "K")]
    pub class: Option<u32>,
    /// Classifier-free guidance scale g: the output is o_u + g·(o_c − o_u). 1 is plain
    /// conditional sampling, 0 unconditional, above 1 guided. Needs a model trained with
    /// `--label-dropout`.
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    pub guidance_scale: Option<f64>,
    /// Also write `progression_00000.png`, …: for each image, xₜ (top row) and the predicted x₀
    /// (bottom row) at K evenly spaced model evaluations, first and last included.
    #[arg(long, value_name = "K", value_parser = between::<2, 1000>)]
    pub progression: Option<u64>,
    /// Start from this x_T: a safetensors file with a tensor `noise` of shape (N, C, H, W).
    #[arg(long, value_name = "FILE")]
    pub init_noise: Option<PathBuf>,
    /// Also write the final samples as a safetensors tensor `sample` (N, C, H, W), as the
    /// sampler left them: not clamped to [-1, 1] (the PNGs are).
    #[arg(long, value_name = "FILE")]
    pub save_raw: Option<PathBuf>,
    /// Images per model evaluation (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = at_least::<1>)]
    pub batch_size: u64,
}

/// What `ddpm sample` writes into `--out`.
fn sample_naming(name: &str) -> bool {
    name == "grid.png"
        || numbered(name, "sample_", 5, ".png")
        || numbered(name, "progression_", 5, ".png")
}

/// Reads the tensor `noise` (any float dtype) from a safetensors file as f32, with its shape.
fn read_noise(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("--init-noise {}", path.display()))?;
    let st = crate::params::parse_safetensors(&bytes).map_err(|m| {
        anyhow::anyhow!(
            "--init-noise {}: not a safetensors file: {m}",
            path.display()
        )
    })?;
    let t = st.tensor("noise").map_err(|_| {
        anyhow::anyhow!(
            "--init-noise {}: no tensor named `noise` (found: {})",
            path.display(),
            st.names().join(", ")
        )
    })?;
    let mut values = vec![0.0f32; t.shape().iter().product()];
    decode_into(t.dtype(), t.data(), &mut values)
        .map_err(|msg| anyhow::anyhow!("--init-noise {}: tensor `noise`: {msg}", path.display()))?;
    ensure!(
        values.iter().all(|v| v.is_finite()),
        "--init-noise {}: tensor `noise` holds NaN or infinite values",
        path.display()
    );
    Ok((values, t.shape().to_vec()))
}

pub fn run(a: SampleArgs) -> Result<()> {
    let loaded = Loaded::open(&a.model, a.step.no_clip, a.variance.as_deref())?;
    let (net, schedule, src) = (&loaded.net, &loaded.schedule, &loaded.src);
    let sampler_arg = a.sampler.unwrap_or(if src.ddim_scheduler {
        SamplerArg::Ddim
    } else {
        SamplerArg::Ddpm
    });
    let (c, s) = loaded.image_shape();
    let noise = a.init_noise.as_deref().map(read_noise).transpose()?;
    let num = match (&noise, a.num) {
        (Some((_, shape)), num) => {
            let n = shape.first().copied().unwrap_or(0);
            let want = [num.map_or(n, |v| v as usize), c, s, s];
            ensure!(
                shape.as_slice() == want,
                "--init-noise: tensor `noise` has shape {shape:?}, expected {want:?} (N, C, H, W) for this model{}",
                if num.is_some() { " and --num" } else { "" }
            );
            n
        }
        (None, num) => num.unwrap_or(16) as usize,
    };
    if sampler_arg != SamplerArg::Ddim && a.ddim_eps.is_some() {
        return Err(usage("--ddim-eps applies to --sampler ddim only"));
    }
    // g = 1 is the conditional model itself and g = 0 the unconditional one: one evaluation
    // each. Any other g mixes the two.
    let (guidance, unconditional) = match a.guidance_scale {
        None => (None, false),
        Some(g) if !(g.is_finite() && g >= 0.0) => {
            return Err(usage(format!(
                "--guidance-scale {g}: must be a finite number ≥ 0"
            )))
        }
        Some(g) => {
            if net.config.num_class_embeds.is_none() {
                return Err(usage(format!(
                    "--guidance-scale {g}: the model is unconditional"
                )));
            }
            if src.null_class.is_none() {
                return Err(usage(format!(
                    "--guidance-scale {g}: the model was not trained with label dropout, so it \
                     has no unconditional output to guide with (train with --class-cond \
                     --label-dropout 0.1)"
                )));
            }
            match g {
                1.0 => (None, false),
                0.0 => (None, true),
                _ => (Some(g), false),
            }
        }
    };
    let mut sampler = sampler_options(
        schedule,
        sampler_arg,
        a.steps,
        a.eta,
        a.step.spacing.as_deref(),
        a.sigmas,
        guidance,
    )?;
    sampler.eps_from_clipped_x0 = match a.ddim_eps {
        Some(e) => e == DdimEpsArg::Clipped,
        None => !src.from_diffusers,
    };
    loaded.check_class(a.class)?;
    if unconditional && a.class.is_some() {
        return Err(usage(
            "--class with --guidance-scale 0: an unconditional image has no class",
        ));
    }
    let labels = match (unconditional, a.class) {
        (true, _) => src.null_class.map(|null| vec![null; num]),
        (false, k) => k.map(|k| vec![k; num]),
    };
    let evals = sampler.num_evaluations(schedule)?;
    let watch = a
        .progression
        .map_or(Vec::new(), |k| evenly_spaced(k as usize, evals));
    let opts = GenerateOptions {
        labels,
        null_class: src.null_class,
        watch,
        ..GenerateOptions::new(sampler, num, a.batch_size as usize, a.seed)
    };
    check_request(net, &opts, noise.as_ref().map(|(v, _)| v.as_slice()))?;
    // A --save-raw file inside --out is this command's output too.
    let raw_name = raw_name_in(a.save_raw.as_deref(), &a.out);
    let owns = |name: &str| sample_naming(name) || raw_name.as_deref() == Some(name);
    let naming = Naming {
        command: "ddpm sample",
        pattern: "sample_*.png, grid.png, progression_*.png",
        owns: &owns,
    };
    let mut out_dir = OutputDir::prepare_fresh(&a.out, "--out", a.force, &naming)?;
    if let Some(raw) = &a.save_raw {
        check_writable_file(raw, "--save-raw")?;
    }
    let bar = progress_bar(a.model.quiet, "evaluations");
    let device = open_device(a.model.device, a.model.quiet)?;
    let precision = a.model.precision.resolve(&device)?;
    let init = noise.as_ref().map(|(v, _)| v.as_slice());
    let batch = opts.batch_size.min(opts.num);
    if matches!(device, Device::Cpu) {
        let job = cpu_memory::Job::Sample {
            num,
            guided: opts.sampler.guidance.is_some(),
            watch: opts.watch.len(),
        };
        cpu_memory::check_fits(net, job, batch)?;
    }
    let mut den = denoiser(
        &device,
        &loaded,
        batch,
        opts.sampler.guidance.is_some(),
        precision,
    )?;
    let result = generate_unclamped(
        den.as_mut(),
        net,
        schedule,
        &opts,
        init,
        &mut progress_fn(&bar),
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // The sampler's final state, unclamped (what --save-raw writes); the PNGs clamp it.
    let images = &result.images;
    let item = c * s * s;
    out_dir.clear_earlier()?;
    for (i, img) in images.chunks_exact(item).enumerate() {
        save_png(&a.out.join(format!("sample_{i:05}.png")), img, c, s, s)?;
    }
    drop(out_dir); // it holds output now, and stays
    let nrow = (num as f64).sqrt().ceil() as usize;
    save_grid_upscaled(&a.out.join("grid.png"), images, num, c, s, s, nrow)?;
    let k = result.watch_t.len();
    if k > 0 {
        for i in 0..num {
            // Two rows of K tiles: xₜ (clamped for display), then x̂₀.
            let frames = i * k * item..(i + 1) * k * item;
            let mut strip: Vec<f32> = result.x_t[frames.clone()]
                .iter()
                .map(|v| v.clamp(-1.0, 1.0))
                .collect();
            strip.extend_from_slice(&result.x0[frames]);
            let path = a.out.join(format!("progression_{i:05}.png"));
            save_grid_upscaled(&path, &strip, 2 * k, c, s, s, k)?;
        }
    }
    if let Some(raw) = &a.save_raw {
        let meta = HashMap::from([("checkpoint".to_string(), src.path.display().to_string())]);
        write_tensor(raw, "sample", vec![num, c, s, s], images, meta)?;
    }
    if !a.model.quiet {
        let timesteps: Vec<String> = result.watch_t.iter().map(|t| format!("{t:.0}")).collect();
        eprintln!(
            "wrote {} and grid.png to {} ({} of {} at seed {}, {}){}",
            plural(num as u64, "image", "images"),
            a.out.display(),
            plural(evals as u64, "evaluation", "evaluations"),
            sampler_arg.kind(a.eta).name(),
            a.seed,
            src.describe_weights(!a.model.no_ema),
            if k > 0 {
                format!(", and progression_*.png at t = {}", timesteps.join(", "))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Whether `a` and `b` name the same directory (`runs/samples` and `./runs/samples/`).
pub(super) fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| -> PathBuf {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        p.canonicalize()
            .unwrap_or_else(|_| p.components().collect())
    };
    norm(a) == norm(b)
}
