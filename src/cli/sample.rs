//! `ddpm sample`: checkpoint → images (one PNG each, a grid, optionally the raw tensor).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_source::ModelSource;
use super::output::{check_writable_file, OutputDir};
use crate::atomic_file::write_atomic;
use crate::cuda::sample::GpuSampler;
use crate::device::{Device, DeviceArg};
use crate::diffusion::sampler::{SampleOptions, SamplerKind};
use crate::diffusion::{Schedule, Spacing, VarianceType};
use crate::imaging::{save_grid_upscaled, save_png};
use crate::nn::UNet;
use crate::params::{decode_into, ParamArena};
use crate::sample::{check_request, generate, GenerateOptions};
use crate::usage_error::usage;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ancestral sampling through the posterior (DDPM eq. 6, 7, 11).
    Ddpm,
    /// Denoising diffusion implicit model (DDIM eq. 12); `--eta` sets its noise.
    Ddim,
}

/// Which ε̂ a DDIM step carries to the next timestep when x̂₀ is clipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DdimEpsArg {
    /// ε̂ recomputed from the clipped x̂₀ (consistent with the x̂₀ used).
    Clipped,
    /// The model's own ε̂ (diffusers' DDIMPipeline default).
    Unclipped,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A checkpoint written by `ddpm train`, a run directory (its latest checkpoint), or a
    /// diffusers UNet2DModel or pipeline directory.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// [default: ddim for a diffusers pipeline published with DDIMScheduler, else ddpm]
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Model evaluations [default: T for ddpm, 50 for ddim].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// DDIM η: 0 is deterministic, 1 has DDPM's posterior variance.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub eta: f64,
    /// Timesteps visited: leading, trailing, linspace (diffusers), uniform, quad (DDIM paper
    /// code) [default: the schedule's timestep_spacing, leading unless set].
    #[arg(long)]
    pub spacing: Option<String>,
    /// DDIM with clipping: the ε̂ carried to the next step [default: clipped for ddpm
    /// checkpoints, unclipped for diffusers models, as diffusers' DDIMPipeline].
    #[arg(long, value_enum)]
    pub ddim_eps: Option<DdimEpsArg>,
    /// Number of images [default: 16, or as many as `--init-noise` holds].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub num: Option<u64>,
    /// Images per model evaluation (results do not depend on it).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory for `sample_00000.png`, … and `grid.png`.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// Start from this x_T: a safetensors file with a tensor `noise` of shape (N, C, H, W).
    #[arg(long, value_name = "FILE")]
    pub init_noise: Option<PathBuf>,
    /// Also write the final samples, in [-1, 1], as a safetensors tensor `sample` (N, C, H, W).
    #[arg(long, value_name = "FILE")]
    pub save_raw: Option<PathBuf>,
    /// Use the raw trained weights instead of their EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// DDPM step variance: fixed_small (the posterior's β̃) or fixed_large (β) [default: the
    /// checkpoint's schedule, fixed_small unless trained otherwise].
    #[arg(long, value_name = "fixed_small|fixed_large")]
    pub variance: Option<String>,
    /// Do not clip the predicted x₀ (to ±clip_sample_range, 1 unless the schedule says) at each
    /// step.
    #[arg(long)]
    pub no_clip: bool,
    /// Class of every image for a class-conditional model [default: cycle through the classes].
    #[arg(long)]
    pub class: Option<u32>,
    /// Where to sample: auto (CUDA when a GPU and the kernels are present, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda[:N]")]
    pub device: DeviceArg,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
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
    let src = ModelSource::open(&a.checkpoint, !a.no_ema)?;
    if !a.quiet {
        for line in &src.notes {
            eprintln!("{line}");
        }
    }
    let path = src.path.clone();
    let net = UNet::new(src.model.clone())?;
    let mut schedule_cfg = src.schedule.clone();
    if a.no_clip {
        schedule_cfg.clip_sample = false;
    }
    if let Some(v) = &a.variance {
        schedule_cfg.variance_type = v
            .parse::<VarianceType>()
            .map_err(|e| usage(format!("--variance {v}: {e}")))?;
    }
    let schedule = Schedule::new(schedule_cfg)?;
    let mut params = ParamArena::<f32>::zeros(net.layout.clone());
    params.values_mut().copy_from_slice(&src.weights);
    let sampler_arg = a.sampler.unwrap_or(if src.ddim_scheduler {
        SamplerArg::Ddim
    } else {
        SamplerArg::Ddpm
    });

    let (c, s) = (net.config.in_channels, net.config.sample_size);
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
    let kind = match sampler_arg {
        SamplerArg::Ddpm => SamplerKind::Ddpm,
        SamplerArg::Ddim => SamplerKind::Ddim { eta: a.eta },
    };
    if sampler_arg == SamplerArg::Ddpm && a.eta != 0.0 {
        return Err(usage("--eta applies to --sampler ddim only"));
    }
    if sampler_arg == SamplerArg::Ddpm && a.ddim_eps.is_some() {
        return Err(usage("--ddim-eps applies to --sampler ddim only"));
    }
    let steps = a.steps.map_or_else(
        || match sampler_arg {
            SamplerArg::Ddpm => schedule.num_timesteps(),
            SamplerArg::Ddim => 50.min(schedule.num_timesteps()),
        },
        |v| v as usize,
    );
    let mut sampler = SampleOptions::new(schedule.config(), kind, steps);
    if let Some(sp) = &a.spacing {
        sampler.spacing = sp
            .parse::<Spacing>()
            .map_err(|e| usage(format!("--spacing: {e}")))?;
    }
    // Every setting is checked before anything is written or a step is run.
    sampler.plan(&schedule).map_err(|e| {
        usage(format!(
            "--{}: {} (the schedule has T = {} timesteps)",
            e.field.replace('_', "-"),
            e.msg,
            schedule.num_timesteps()
        ))
    })?;
    sampler.eps_from_clipped_x0 = match a.ddim_eps {
        Some(e) => e == DdimEpsArg::Clipped,
        None => !src.from_diffusers,
    };
    if let Some(k) = a.class {
        match net.config.num_class_embeds {
            None => return Err(usage(format!("--class {k}: the model is unconditional"))),
            Some(n) if k as usize >= n => {
                return Err(usage(format!(
                    "--class {k}: the model has {n} classes, 0 to {}",
                    n - 1
                )))
            }
            Some(_) => {}
        }
    }
    let labels = a.class.map(|k| vec![k; num]);
    let opts = GenerateOptions {
        sampler,
        num,
        batch_size: a.batch_size as usize,
        seed: a.seed,
        labels,
    };
    check_request(&net, &opts, noise.as_ref().map(|(v, _)| v.as_slice()))?;
    let out_dir = OutputDir::prepare(&a.out, "--out")?;
    if let Some(raw) = &a.save_raw {
        check_writable_file(raw, "--save-raw")?;
    }
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {per_sec} [{eta_precise}]")
                .expect("a valid template"),
        );
        bar
    });
    let quiet = a.quiet;
    let device = Device::select(a.device, &mut |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    let init = noise.as_ref().map(|(v, _)| v.as_slice());
    let mut progress = |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let images = match &device {
        Device::Cpu => generate(&net, &params, &schedule, &opts, init, &mut progress)?,
        Device::Cuda(gpu) => {
            let mut sampler = GpuSampler::new(gpu.clone(), &net, opts.batch_size.min(opts.num))?;
            sampler.load_weights(params.values())?;
            sampler.generate(&net, &schedule, &opts, init, &mut progress)?
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let item = c * s * s;
    for (i, img) in images.chunks_exact(item).enumerate() {
        save_png(&a.out.join(format!("sample_{i:05}.png")), img, c, s, s)?;
    }
    drop(out_dir); // it holds output now, and stays
    let nrow = (num as f64).sqrt().ceil() as usize;
    save_grid_upscaled(&a.out.join("grid.png"), &images, num, c, s, s, nrow)?;
    if let Some(raw) = &a.save_raw {
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![num, c, s, s],
            bytemuck::cast_slice(&images),
        )?;
        let meta = HashMap::from([("checkpoint".to_string(), path.display().to_string())]);
        let bytes = safetensors::serialize([("sample", view)], Some(meta))?;
        write_atomic(raw, &bytes).with_context(|| format!("cannot write {}", raw.display()))?;
    }
    if !a.quiet {
        eprintln!(
            "wrote {num} images and grid.png to {} ({} step(s) of {:?} at seed {})",
            a.out.display(),
            steps,
            sampler_arg,
            a.seed
        );
    }
    Ok(())
}
