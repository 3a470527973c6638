//! `ddpm train`: flags → model, schedule and training configs → [`crate::train::run`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::args::{at_least, between, geometry_error, nearest};
use super::output::OutputDir;
use crate::device::{Device, DeviceArg, PrecisionArg};
use crate::diffusion::{BetaSchedule, PredictionType, ScheduleConfig};
use crate::nn::{UNetConfig, PRESETS};
use crate::train::{self, LossKind, RunOptions, Start, TrainConfig};
use crate::usage_error::usage;

/// Flags that describe a new run; they cannot be combined with `--resume`, which continues
/// with the settings stored in the checkpoint.
const NEW_RUN_FLAGS: [&str; 24] = [
    "data",
    "image_size",
    "upscale",
    "channels",
    "model",
    "batch_size",
    "lr",
    "warmup",
    "weight_decay",
    "grad_clip",
    "ema_decay",
    "ema_start",
    "ema_every",
    "seed",
    "hflip",
    "loss",
    "prediction",
    "beta_schedule",
    "timesteps",
    "class_cond",
    "label_dropout",
    "dropout",
    "sample_every",
    "checkpoint_every",
];

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training images: `synthetic` (built-in shapes), `folder:DIR`, `mnist:PATH`,
    /// `cifar10:PATH`, or a directory (its kind is detected).
    #[arg(long, value_name = "SOURCE", default_value = "synthetic")]
    pub data: String,
    /// A preset (tiny, ddpm-cifar10, cifar10-small, ref-32x32) or a JSON file with diffusers
    /// `UNet2DModel` fields.
    #[arg(long, default_value = "tiny", value_name = "PRESET|FILE")]
    pub model: String,
    /// Total optimizer steps [default: 3000; with --resume: the checkpoint's total].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub steps: Option<u64>,
    /// Output directory [default: runs/ddpm; with --resume: the resumed run's directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue from a checkpoint with its stored settings: a file, or a run directory (its
    /// newest checkpoint that verifies). `--steps` sets the new total; `--keep-checkpoints` and
    /// `--max-nonfinite-steps` may be changed too.
    #[arg(long, value_name = "CHECKPOINT", conflicts_with_all = NEW_RUN_FLAGS)]
    pub resume: Option<PathBuf>,
    /// Images per training step.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = at_least::<1>)]
    pub batch_size: u64,
    /// Side of the square training images [default: the model's `sample_size`].
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<usize>,
    /// Image channels, 1 (grey) or 3 (RGB) [default: the model's `in_channels`].
    #[arg(long, value_name = "C", value_parser = between::<1, 3>)]
    pub channels: Option<u64>,
    /// Enlarge images smaller than `--image-size` (by default they are refused, naming the file).
    #[arg(long)]
    pub upscale: bool,
    /// AdamW learning rate.
    #[arg(
        long,
        value_name = "LR",
        default_value_t = 1e-3,
        allow_negative_numbers = true
    )]
    pub lr: f64,
    /// Steps of linear learning-rate warmup.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub warmup: u64,
    /// AdamW decoupled weight decay.
    #[arg(
        long,
        value_name = "W",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[arg(
        long,
        value_name = "NORM",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub grad_clip: f64,
    /// EMA decay of the weights used for sampling.
    #[arg(
        long,
        value_name = "DECAY",
        default_value_t = 0.9999,
        allow_negative_numbers = true
    )]
    pub ema_decay: f64,
    /// Step before which the EMA simply copies the weights.
    #[arg(long, value_name = "STEP", default_value_t = 0)]
    pub ema_start: u64,
    /// Steps between EMA updates.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least::<1>)]
    pub ema_every: u64,
    /// Seed of every random draw (weights, batches, noise, timesteps, dropout).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Mirror training images left–right at random.
    #[arg(long)]
    pub hflip: bool,
    /// Regression loss: l2 (DDPM's "simple" loss) or l1.
    #[arg(long, value_name = "l2|l1", default_value = "l2")]
    pub loss: LossKind,
    /// What the model predicts: epsilon, sample (x₀) or v_prediction.
    #[arg(
        long,
        value_name = "epsilon|sample|v_prediction",
        default_value = "epsilon"
    )]
    pub prediction: String,
    /// Noise schedule: linear, scaled_linear, squaredcos_cap_v2 (cosine), sigmoid or laplace.
    #[arg(
        long,
        value_name = "linear|scaled_linear|squaredcos_cap_v2|cosine|sigmoid|laplace",
        default_value = "linear"
    )]
    pub beta_schedule: String,
    /// Diffusion steps T.
    #[arg(long, value_name = "T", default_value_t = 1000, value_parser = at_least::<1>)]
    pub timesteps: u64,
    /// Condition the model on the dataset's class labels (folder sub-folders, MNIST, CIFAR-10,
    /// synthetic shapes).
    #[arg(long)]
    pub class_cond: bool,
    /// With --class-cond: replace each label by a learned null class with this probability,
    /// so the model also learns the unconditional output that classifier-free guidance
    /// (`ddpm sample --guidance-scale`) needs. 0.1 to 0.2 is usual.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub label_dropout: Option<f64>,
    /// Override the model's dropout probability.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub dropout: Option<f64>,
    /// Steps between sample grids (and loss-curve updates).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub sample_every: u64,
    /// Steps between checkpoints.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep, newest first (0 keeps all) [default: 3; with --resume: the run's].
    #[arg(long, value_name = "K")]
    pub keep_checkpoints: Option<usize>,
    /// Stop after this many steps in a row whose loss or gradient is NaN or infinite (each such
    /// step is skipped and counted in the log) [default: 10; with --resume: the run's].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub max_nonfinite_steps: Option<u64>,
    /// Where to train: auto (CUDA when a GPU and the kernels are present, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|cpu|cuda[:N]",
        display_order = 901
    )]
    pub device: DeviceArg,
    /// What the GPU stores activations as: bf16 (the default on a GPU), fp16 (with dynamic
    /// loss scaling) or fp32. Master weights, Adam moments, EMA and the loss are fp32 in every
    /// case, and the CPU computes in fp32 only. Not stored in the checkpoint: a resumed run
    /// may change it.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|bf16|fp16|fp32",
        display_order = 902
    )]
    pub precision: PrecisionArg,
    /// No progress bar or log lines.
    #[arg(long, short, display_order = 903)]
    pub quiet: bool,
}

/// `--data` checked before anything starts: a misspelt kind is a usage error naming the nearest
/// one, and a path that does not exist is reported once, before the device is chosen.
fn check_data(arg: &str) -> Result<()> {
    const FORMS: &str = "synthetic, folder:DIR, mnist:PATH, cifar10:PATH or an existing directory";
    const PREFIXED: [&str; 3] = ["folder", "mnist", "cifar10"];
    let path = Path::new(arg);
    if arg == "synthetic" || path.exists() {
        return Ok(());
    }
    let (kind, rest) = match arg.split_once(':') {
        Some((kind, rest)) if !kind.contains(['/', '\\']) => (kind, Some(rest)),
        _ => (arg, None),
    };
    if let Some(rest) = rest {
        if PREFIXED.contains(&kind) {
            // What is in it is checked when it is read, naming the file at fault.
            return match std::fs::metadata(rest) {
                Err(e) if !rest.is_empty() => Err(anyhow::anyhow!("--data {arg}: {rest}: {e}")),
                _ => Ok(()),
            };
        }
        let hint = nearest(kind, &PREFIXED)
            .map(|k| format!("; did you mean `{k}:{rest}`?"))
            .unwrap_or_default();
        return Err(usage(format!(
            "--data {arg}: `{kind}` is not a kind of data{hint} (expected {FORMS})"
        )));
    }
    if !arg.contains(['/', '\\']) {
        if let Some(k) = PREFIXED.iter().find(|k| k.eq_ignore_ascii_case(arg)) {
            return Err(usage(format!(
                "--data {arg}: say where the data is: `{k}:PATH` (expected {FORMS})"
            )));
        }
        let hint = nearest(arg, &["synthetic", "folder", "mnist", "cifar10"])
            .map(|k| match k {
                "synthetic" => "; did you mean `synthetic`?".to_string(),
                k => format!("; did you mean `{k}:PATH`?"),
            })
            .unwrap_or_default();
        return Err(usage(format!(
            "--data {arg}: not a kind of data, and no such file or directory{hint} (expected \
             {FORMS})"
        )));
    }
    Err(anyhow::anyhow!(
        "--data {arg}: no such file or directory (expected {FORMS})"
    ))
}

/// A preset name or a JSON config file.
fn model_config(arg: &str) -> Result<UNetConfig> {
    if let Some(cfg) = UNetConfig::preset(arg) {
        return Ok(cfg);
    }
    let path = PathBuf::from(arg);
    if !path.exists() {
        return Err(usage(format!(
            "--model {arg}: not a preset ({}) and no such file",
            PRESETS.join(", ")
        )));
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--model: cannot read {}", path.display()))?;
    UNetConfig::from_json(&text).with_context(|| format!("--model {}", path.display()))
}

pub fn run(a: TrainArgs) -> Result<()> {
    let out_given = a.out.is_some();
    let mut out = a.out.unwrap_or_else(|| PathBuf::from("runs/ddpm"));
    let start = match a.resume {
        Some(path) => {
            if !path.exists() {
                return Err(usage(format!(
                    "--resume {}: no such checkpoint file or run directory",
                    path.display()
                )));
            }
            train::check_resumable(&path)?;
            // Keep writing into the resumed run: <run> or <run>/checkpoints/<file> → <run>.
            let run_dir = if path.is_dir() {
                Some(path.clone())
            } else {
                path.parent()
                    .filter(|d| d.ends_with("checkpoints"))
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
            };
            if let Some(run_dir) = run_dir.filter(|_| !out_given) {
                out = run_dir;
            }
            Start::Resume {
                checkpoint: path,
                steps: a.steps,
                keep_checkpoints: a.keep_checkpoints,
                max_nonfinite_steps: a.max_nonfinite_steps,
            }
        }
        None => {
            let mut model = model_config(&a.model)?;
            if let Some(s) = a.image_size {
                model.sample_size = s;
            }
            if let Some(c) = a.channels {
                crate::ensure_usage!(c != 2, "--channels 2: expected 1 (grey) or 3 (RGB)");
                model.in_channels = c as usize;
                model.out_channels = c as usize;
            }
            if let Some(p) = a.dropout {
                model.dropout = p;
            }
            if let Err(e) = model.validate() {
                let mut given = Vec::new();
                if let Some(s) = a.image_size {
                    given.push(("sample_size", format!("--image-size {s}")));
                }
                if let Some(c) = a.channels {
                    given.push(("in_channels", format!("--channels {c}")));
                }
                if let Some(p) = a.dropout {
                    given.push(("dropout", format!("--dropout {p}")));
                }
                let desc = if UNetConfig::preset(&a.model).is_some() {
                    format!("the {} preset", a.model)
                } else {
                    format!("the model in {}", a.model)
                };
                return Err(geometry_error(
                    &format!("--model {}", a.model),
                    &desc,
                    &model,
                    e,
                    &given,
                ));
            }
            check_data(&a.data)?;
            let schedule = ScheduleConfig {
                num_train_timesteps: a.timesteps as usize,
                beta_schedule: a.beta_schedule.parse::<BetaSchedule>().map_err(|_| {
                    usage(format!(
                        "--beta-schedule {}: expected linear, scaled_linear, squaredcos_cap_v2 (cosine), sigmoid or laplace",
                        a.beta_schedule
                    ))
                })?,
                prediction_type: a.prediction.parse::<PredictionType>().map_err(|_| {
                    usage(format!(
                        "--prediction {}: expected epsilon, sample or v_prediction",
                        a.prediction
                    ))
                })?,
                ..ScheduleConfig::default()
            };
            schedule
                .validate()
                .map_err(|e| usage(format!("--timesteps/--beta-schedule: {e}")))?;
            let mut train = TrainConfig {
                data: a.data,
                image_size: model.sample_size,
                channels: model.in_channels,
                upscale: a.upscale,
                class_conditional: a.class_cond,
                label_dropout: a.label_dropout.unwrap_or(0.0),
                batch_size: a.batch_size as usize,
                steps: a.steps.unwrap_or(3000),
                seed: a.seed,
                hflip: a.hflip,
                loss: a.loss,
                grad_clip: a.grad_clip,
                sample_every: a.sample_every,
                checkpoint_every: a.checkpoint_every,
                ..TrainConfig::default()
            };
            if let Some(k) = a.keep_checkpoints {
                train.keep_checkpoints = k;
            }
            if let Some(m) = a.max_nonfinite_steps {
                train.max_nonfinite_steps = m;
            }
            train.optimizer.lr = a.lr;
            train.optimizer.warmup_steps = a.warmup;
            train.optimizer.weight_decay = a.weight_decay;
            train.ema.decay = a.ema_decay;
            train.ema.start_step = a.ema_start;
            train.ema.update_every = a.ema_every;
            train
                .optimizer
                .validate()
                .map_err(|e| usage(e.to_string()))?;
            train.ema.validate().map_err(|e| usage(e.to_string()))?;
            train.validate().map_err(|e| usage(e.to_string()))?;
            if train.label_dropout > 0.0 && !a.class_cond && model.num_class_embeds.is_none() {
                return Err(usage(
                    "--label-dropout needs a class-conditional model: add --class-cond",
                ));
            }
            Start::Fresh {
                model,
                schedule,
                train,
            }
        }
    };
    // Checked before the data is read or a step is run; removed again if the run cannot start.
    let _out_dir = OutputDir::prepare(&out, "--out")?;
    let quiet = a.quiet;
    let device = Device::select(a.device, &mut |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    let precision = a.precision.resolve(&device)?;
    train::run(RunOptions {
        start,
        device,
        precision,
        out,
        verbose: !a.quiet,
    })?;
    Ok(())
}
