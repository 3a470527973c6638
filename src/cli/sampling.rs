//! What `ddpm sample`, `invert`, `interpolate` and `bench samplers` share: the sampler flags,
//! loading a model, and a denoiser on the chosen device.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_source::ModelSource;
use crate::cuda::sample::GpuSampler;
use crate::device::{Device, DeviceArg, PrecisionArg};
use crate::diffusion::sampler::{SampleOptions, SamplerKind, SigmaSpacing};
use crate::diffusion::{Schedule, Spacing, VarianceType};
use crate::nn::UNet;
use crate::params::ParamArena;
use crate::precision::Precision;
use crate::sample::{CpuDenoiser, Denoiser};
use crate::usage_error::usage;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ancestral sampling through the posterior (DDPM eqs. 6, 7, 11).
    Ddpm,
    /// Denoising diffusion implicit model (DDIM eq. 12); `--eta` sets its noise.
    Ddim,
    /// Euler on the probability-flow ODE (first order).
    Euler,
    /// Heun on the probability-flow ODE (second order; 2N − 1 model evaluations).
    Heun,
    /// Euler–Maruyama on the reverse-time SDE (stochastic, first order).
    #[value(name = "euler-maruyama")]
    EulerMaruyama,
    /// DPM-Solver++(2M): second-order multistep, one evaluation per step.
    #[value(name = "dpm++2m")]
    DpmSolver2M,
}

impl SamplerArg {
    pub fn kind(self, eta: f64) -> SamplerKind {
        match self {
            Self::Ddpm => SamplerKind::Ddpm,
            Self::Ddim => SamplerKind::Ddim { eta },
            Self::Euler => SamplerKind::Euler,
            Self::Heun => SamplerKind::Heun,
            Self::EulerMaruyama => SamplerKind::EulerMaruyama,
            Self::DpmSolver2M => SamplerKind::DpmSolver2M,
        }
    }

    /// Steps when `--steps` is not given: T for DDPM, 20 for DPM-Solver++, else 50.
    pub fn default_steps(self, num_timesteps: usize) -> usize {
        match self {
            Self::Ddpm => num_timesteps,
            Self::DpmSolver2M => 20.min(num_timesteps),
            _ => 50.min(num_timesteps),
        }
    }
}

/// The `--sampler` placeholder: every sampler's name.
pub const SAMPLERS: &str = "ddpm|ddim|euler|heun|euler-maruyama|dpm++2m";

/// Which ε̂ a DDIM step carries to the next timestep when x̂₀ is clipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DdimEpsArg {
    /// ε̂ recomputed from the clipped x̂₀ (consistent with the x̂₀ used).
    Clipped,
    /// The model's own ε̂ (diffusers' DDIMPipeline default).
    Unclipped,
}

/// The model to draw from. `--checkpoint` comes first in `--help`; the flags of where and how
/// to run come last, after the command's own.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A checkpoint written by `ddpm train`, a run directory (its newest checkpoint that
    /// verifies), or a diffusers UNet2DModel or pipeline directory.
    #[arg(long, value_name = "PATH", display_order = 0)]
    pub checkpoint: PathBuf,
    /// Use the raw trained weights instead of their EMA.
    #[arg(long, display_order = 900)]
    pub no_ema: bool,
    /// Where to run: auto (CUDA when a GPU and the kernels are present, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|cpu|cuda[:N]",
        display_order = 901
    )]
    pub device: DeviceArg,
    /// What the GPU stores the model's activations as: bf16 (the default on a GPU), fp16 or
    /// fp32 (the sampler's own state is fp32 in every case; the CPU computes in fp32 only).
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|bf16|fp16|fp32",
        display_order = 902
    )]
    pub precision: PrecisionArg,
    /// No progress bar or summary line.
    #[arg(long, short, display_order = 903)]
    pub quiet: bool,
}

/// The `--spacing` placeholder.
pub const SPACINGS: &str = "leading|trailing|linspace|uniform|quad";

/// How each step is taken.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// Timesteps visited: leading, trailing, linspace (diffusers), uniform, quad (DDIM paper
    /// code) [default: the schedule's timestep_spacing, leading unless set].
    #[arg(long, value_name = SPACINGS)]
    pub spacing: Option<String>,
    /// Do not clip the predicted x₀ (to ±clip_sample_range, 1 unless the schedule says) at each
    /// step.
    #[arg(long)]
    pub no_clip: bool,
}

/// A loaded model: network, weights, schedule, and what the checkpoint says about classes.
pub struct Loaded {
    pub src: ModelSource,
    pub net: UNet,
    pub params: ParamArena<f32>,
    pub schedule: Schedule,
}

impl Loaded {
    /// Loads `--checkpoint`; `no_clip` and `variance` override the schedule.
    pub fn open(m: &ModelArgs, no_clip: bool, variance: Option<&str>) -> Result<Self> {
        let src = ModelSource::open(&m.checkpoint, !m.no_ema)?;
        if !m.quiet {
            for line in &src.notes {
                eprintln!("{line}");
            }
        }
        let net = UNet::new(src.model.clone())?;
        let mut schedule_cfg = src.schedule.clone();
        if no_clip {
            schedule_cfg.clip_sample = false;
        }
        if let Some(v) = variance {
            schedule_cfg.variance_type = v
                .parse::<VarianceType>()
                .map_err(|e| usage(format!("--variance {v}: {e}")))?;
        }
        let schedule = Schedule::new(schedule_cfg)?;
        let mut params = ParamArena::<f32>::zeros(net.layout.clone());
        params.values_mut().copy_from_slice(&src.weights);
        Ok(Self {
            src,
            net,
            params,
            schedule,
        })
    }

    /// (C, H, W) of one image.
    pub fn image_shape(&self) -> (usize, usize) {
        (self.net.config.in_channels, self.net.config.sample_size)
    }

    /// The classes a user may ask for: all embeddings but the null class.
    pub fn real_classes(&self) -> Option<usize> {
        let n = self.net.config.num_class_embeds?;
        Some(if self.src.null_class.is_some() {
            n - 1
        } else {
            n
        })
    }

    /// Checks `--class K` against the model.
    pub fn check_class(&self, class: Option<u32>) -> Result<()> {
        if let Some(k) = class {
            match self.real_classes() {
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
        Ok(())
    }
}

/// Sampler options from the flags, checked against the schedule (a usage error otherwise).
#[allow(clippy::too_many_arguments)]
pub fn sampler_options(
    schedule: &Schedule,
    sampler: SamplerArg,
    steps: Option<u64>,
    eta: f64,
    spacing: Option<&str>,
    sigmas: Option<SigmaSpacing>,
    guidance: Option<f64>,
) -> Result<SampleOptions> {
    if sampler != SamplerArg::Ddim && eta != 0.0 {
        return Err(usage("--eta applies to --sampler ddim only"));
    }
    let steps = steps.map_or(sampler.default_steps(schedule.num_timesteps()), |v| {
        v as usize
    });
    let mut opts = SampleOptions::new(schedule.config(), sampler.kind(eta), steps);
    if let Some(sp) = spacing {
        opts.spacing = sp
            .parse::<Spacing>()
            .map_err(|e| usage(format!("--spacing: {e}")))?;
    }
    opts.sigmas = sigmas;
    opts.guidance = guidance;
    // Every setting is checked before anything is written or a step is run.
    opts.evaluations(schedule)
        .map_err(|e| flag_error(schedule, e, None))?;
    Ok(opts)
}

/// A sampler setting that cannot work, as a usage error naming its flag (`--steps` for the
/// field `steps`, unless `steps_flag` names another).
pub fn flag_error(
    schedule: &Schedule,
    e: crate::diffusion::DiffusionError,
    steps_flag: Option<&str>,
) -> anyhow::Error {
    let flag = match (e.field, steps_flag) {
        ("steps", Some(f)) => f.to_string(),
        (f, _) => f.replace('_', "-"),
    };
    // T explains a bound on steps; for any other setting it is beside the point.
    let about_t = if e.field == "steps" {
        format!(
            " (the schedule has T = {} timesteps)",
            schedule.num_timesteps()
        )
    } else {
        String::new()
    };
    usage(format!("--{flag}: {}{about_t}", e.msg))
}

/// A denoiser for batches of up to `batch` images on `device`, the model in `precision` on a
/// GPU.
pub fn denoiser<'a>(
    device: &Device,
    loaded: &'a Loaded,
    batch: usize,
    guided: bool,
    precision: Precision,
) -> Result<Box<dyn Denoiser + 'a>> {
    Ok(match device {
        Device::Cpu => Box::new(CpuDenoiser {
            params: &loaded.params,
        }),
        Device::Cuda(gpu) => {
            let mut s = GpuSampler::new(gpu.clone(), &loaded.net, batch, guided, precision)?;
            s.load_weights(loaded.params.values())?;
            Box::new(s)
        }
    })
}

/// Opens `--device`, printing what it chose unless quiet.
pub fn open_device(arg: DeviceArg, quiet: bool) -> Result<Device> {
    Ok(Device::select(arg, &mut |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?)
}

/// A progress bar counting model evaluations, on a terminal and unless quiet.
pub fn progress_bar(quiet: bool, what: &str) -> Option<ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        let template = format!("{{bar:30}} {{pos}}/{{len}} {what}, {{rate}}, {{eta}} left");
        let unit = format!("{what}/s");
        let style = ProgressStyle::with_template(&template)
            .expect("a valid template")
            .with_key(
                "rate",
                move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} {unit}", state.per_sec());
                },
            );
        bar.set_style(style);
        bar
    })
}

/// A `progress(done, total)` callback for `bar`.
pub fn progress_fn(bar: &Option<ProgressBar>) -> impl FnMut(u64, u64) + '_ {
    move |done, total| {
        if let Some(bar) = bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    }
}
