//! `ddpm train`: flags → model, schedule and training configs → [`crate::train::run`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::args::{at_least, between, geometry_error, nearest};
use super::model_source::ModelSource;
use super::output::OutputDir;
use crate::data::DataSpec;
use crate::device::{Device, DeviceArg, PrecisionArg};
use crate::diffusion::{BetaSchedule, PredictionType, ScheduleConfig};
use crate::nn::{UNetConfig, PRESETS};
use crate::train::{
    self, Checkpoint, InitFrom, LossKind, RngState, RunOptions, Start, TrainConfig,
};
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
    /// `UNet2DModel` fields [default: tiny; with --init-from: its model].
    #[arg(long, value_name = "PRESET|FILE")]
    pub model: Option<String>,
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
    /// Fine-tune: start a new run from the weights of a diffusers UNet2DModel or pipeline
    /// directory, or of a ddpm checkpoint or run directory (with its EMA). The model and the
    /// noise schedule are the source's; the optimizer starts afresh at step 0.
    #[arg(long, value_name = "PATH")]
    pub init_from: Option<PathBuf>,
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
    /// What the model predicts: epsilon, sample (x₀) or v_prediction [default: epsilon; with
    /// --init-from: the source's].
    #[arg(long, value_name = "epsilon|sample|v_prediction")]
    pub prediction: Option<String>,
    /// Noise schedule: linear, scaled_linear, squaredcos_cap_v2 (cosine), sigmoid or laplace
    /// [default: linear; with --init-from: the source's].
    #[arg(
        long,
        value_name = "linear|scaled_linear|squaredcos_cap_v2|cosine|sigmoid|laplace"
    )]
    pub beta_schedule: Option<String>,
    /// Diffusion steps T [default: 1000; with --init-from: the source's].
    #[arg(long, value_name = "T", value_parser = at_least::<1>)]
    pub timesteps: Option<u64>,
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

fn parse_beta_schedule(arg: &str) -> Result<BetaSchedule> {
    arg.parse::<BetaSchedule>().map_err(|_| {
        usage(format!(
            "--beta-schedule {arg}: expected linear, scaled_linear, squaredcos_cap_v2 (cosine), \
             sigmoid or laplace"
        ))
    })
}

fn parse_prediction(arg: &str) -> Result<PredictionType> {
    arg.parse::<PredictionType>().map_err(|_| {
        usage(format!(
            "--prediction {arg}: expected epsilon, sample or v_prediction"
        ))
    })
}

/// A config value as diffusers' JSON writes it (`"squaredcos_cap_v2"`, `[8, 16]`).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

/// The `UNet2DModel` fields in which `a` and `b` differ (`_class_name` and other `_` keys
/// aside), each as `field: a vs b`.
fn config_differences(a: &UNetConfig, b: &UNetConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(the configs cannot be compared)".into()];
    };
    let null = serde_json::Value::Null;
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !k.starts_with('_'))
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            (x != y).then(|| format!("{k}: {x} vs {y}"))
        })
        .collect()
}

/// The number of channels the images of `spec` have of themselves (MNIST grey, CIFAR-10 RGB);
/// `None` for a folder, whose images may be either, and the synthetic set, drawn at any.
fn native_channels(spec: &DataSpec) -> Option<usize> {
    match spec {
        DataSpec::Mnist(_) => Some(1),
        DataSpec::Cifar10(_) => Some(3),
        DataSpec::Folder(_) | DataSpec::Synthetic => None,
    }
}

impl TrainArgs {
    /// How the run starts, read from the flags and checked before any data is read, the device
    /// is chosen or anything is written: a fresh run, a run resumed from a checkpoint, or a
    /// fine-tuning run from `--init-from` (its step-0 state, loaded).
    pub fn start(&self) -> Result<Start> {
        if let Some(path) = &self.resume {
            if let Some(from) = &self.init_from {
                return Err(usage(format!(
                    "--init-from {} with --resume {}: --resume continues a run (its weights, \
                     optimizer state and step), --init-from starts a new one from a model's \
                     weights; pass one of them",
                    from.display(),
                    path.display()
                )));
            }
            if !path.exists() {
                return Err(usage(format!(
                    "--resume {}: no such checkpoint file or run directory",
                    path.display()
                )));
            }
            train::check_resumable(path)?;
            return Ok(Start::Resume {
                checkpoint: path.clone(),
                steps: self.steps,
                keep_checkpoints: self.keep_checkpoints,
                max_nonfinite_steps: self.max_nonfinite_steps,
            });
        }
        if let Some(path) = &self.init_from {
            return self.init_start(path);
        }
        self.fresh_start()
    }

    fn fresh_start(&self) -> Result<Start> {
        let model_arg = self.model.as_deref().unwrap_or("tiny");
        let mut model = model_config(model_arg)?;
        if let Some(s) = self.image_size {
            model.sample_size = s;
        }
        if let Some(c) = self.channels {
            crate::ensure_usage!(c != 2, "--channels 2: expected 1 (grey) or 3 (RGB)");
            model.in_channels = c as usize;
            model.out_channels = c as usize;
        }
        if let Some(p) = self.dropout {
            model.dropout = p;
        }
        if let Err(e) = model.validate() {
            let mut given = Vec::new();
            if let Some(s) = self.image_size {
                given.push(("sample_size", format!("--image-size {s}")));
            }
            if let Some(c) = self.channels {
                given.push(("in_channels", format!("--channels {c}")));
            }
            if let Some(p) = self.dropout {
                given.push(("dropout", format!("--dropout {p}")));
            }
            let desc = if UNetConfig::preset(model_arg).is_some() {
                format!("the {model_arg} preset")
            } else {
                format!("the model in {model_arg}")
            };
            return Err(geometry_error(
                &format!("--model {model_arg}"),
                &desc,
                &model,
                e,
                &given,
            ));
        }
        check_data(&self.data)?;
        let mut schedule = ScheduleConfig::default();
        self.apply_schedule_flags(&mut schedule)?;
        let train = self.train_config(&model, self.label_dropout.unwrap_or(0.0))?;
        Ok(Start::Fresh {
            model,
            schedule,
            train,
        })
    }

    /// `--beta-schedule`, `--timesteps` and `--prediction`, where given, over `schedule`.
    fn apply_schedule_flags(&self, schedule: &mut ScheduleConfig) -> Result<()> {
        if let Some(t) = self.timesteps {
            schedule.num_train_timesteps = t as usize;
        }
        if let Some(b) = &self.beta_schedule {
            schedule.beta_schedule = parse_beta_schedule(b)?;
        }
        if let Some(p) = &self.prediction {
            schedule.prediction_type = parse_prediction(p)?;
        }
        schedule
            .validate()
            .map_err(|e| usage(format!("--timesteps/--beta-schedule: {e}")))
    }

    /// The training settings of the flags, for `model` (its size and channels).
    fn train_config(&self, model: &UNetConfig, label_dropout: f64) -> Result<TrainConfig> {
        // A fine-tuned class-conditional model goes on learning from the labels.
        let class_cond =
            self.class_cond || (self.init_from.is_some() && model.num_class_embeds.is_some());
        let mut train = TrainConfig {
            data: self.data.clone(),
            image_size: model.sample_size,
            channels: model.in_channels,
            upscale: self.upscale,
            class_conditional: class_cond,
            label_dropout,
            batch_size: self.batch_size as usize,
            steps: self.steps.unwrap_or(3000),
            seed: self.seed,
            hflip: self.hflip,
            loss: self.loss,
            grad_clip: self.grad_clip,
            sample_every: self.sample_every,
            checkpoint_every: self.checkpoint_every,
            ..TrainConfig::default()
        };
        if let Some(k) = self.keep_checkpoints {
            train.keep_checkpoints = k;
        }
        if let Some(m) = self.max_nonfinite_steps {
            train.max_nonfinite_steps = m;
        }
        train.optimizer.lr = self.lr;
        train.optimizer.warmup_steps = self.warmup;
        train.optimizer.weight_decay = self.weight_decay;
        train.ema.decay = self.ema_decay;
        train.ema.start_step = self.ema_start;
        train.ema.update_every = self.ema_every;
        train
            .optimizer
            .validate()
            .map_err(|e| usage(e.to_string()))?;
        train.ema.validate().map_err(|e| usage(e.to_string()))?;
        train.validate().map_err(|e| usage(e.to_string()))?;
        if train.label_dropout > 0.0 && !self.class_cond && model.num_class_embeds.is_none() {
            return Err(usage(
                "--label-dropout needs a class-conditional model: add --class-cond",
            ));
        }
        Ok(train)
    }

    /// `--init-from`: the source's model and schedule, checked against every flag that would
    /// set them, and the step-0 state of a new run on its weights (and EMA).
    fn init_start(&self, path: &Path) -> Result<Start> {
        let from = format!("--init-from {}", path.display());
        if !path.exists() {
            return Err(usage(format!(
                "{from}: no such file or directory (expected a diffusers UNet2DModel or \
                 pipeline directory, a ddpm checkpoint file or a ddpm run directory)"
            )));
        }
        // The data flag first: cheap, and independent of the source.
        check_data(&self.data)?;
        let src = ModelSource::open_for_training(path).with_context(|| from.clone())?;
        if !self.quiet {
            for line in &src.notes {
                eprintln!("{line}");
            }
        }
        let mut model = src.model.clone();
        let what = format!("{from} ({}, model {model})", src.kind);
        crate::ensure_usage!(
            model.in_channels == model.out_channels && matches!(model.in_channels, 1 | 3),
            "{what}: the model maps {} channels to {}; ddpm trains denoisers of grey (1) or RGB \
             (3) images",
            model.in_channels,
            model.out_channels
        );
        // Flags that would set the model: each must agree with the source.
        if let Some(arg) = &self.model {
            let given = model_config(arg)?;
            let mut diff = config_differences(&given, &model);
            let dropout_hint = if diff.iter().any(|d| d.starts_with("dropout:")) {
                " (--dropout P sets its dropout)"
            } else {
                ""
            };
            if diff.len() > 4 {
                let more = diff.len() - 3;
                diff.truncate(3);
                diff.push(format!("{more} more fields"));
            }
            if !diff.is_empty() {
                return Err(usage(format!(
                    "--model {arg} contradicts {what}: they differ in {}; leave --model out, \
                     the model is the source's{}",
                    diff.join(", "),
                    dropout_hint
                )));
            }
        }
        if let Some(s) = self.image_size {
            crate::ensure_usage!(
                s == model.sample_size,
                "--image-size {s} contradicts {what}, whose images are {0}×{0}: leave \
                 --image-size out (the data is resized to {0}×{0})",
                model.sample_size
            );
        }
        let color = |c: usize| {
            if c == 1 {
                "grey (1-channel)"
            } else {
                "RGB (3-channel)"
            }
        };
        if let Some(c) = self.channels {
            crate::ensure_usage!(
                c as usize == model.in_channels,
                "--channels {c} contradicts {what}, which takes {} images: leave --channels out",
                color(model.in_channels)
            );
        }
        if self.class_cond {
            crate::ensure_usage!(
                model.num_class_embeds.is_some(),
                "--class-cond contradicts {what}: the model is unconditional (it has no class \
                 embedding to fine-tune); leave --class-cond out"
            );
        }
        // The data's own channels, where it has them, must be the model's unless --channels
        // asks for the conversion.
        let spec: DataSpec = self
            .data
            .parse()
            .map_err(|e| usage(format!("--data: {e}")))?;
        if let (Some(c), None) = (native_channels(&spec), self.channels) {
            crate::ensure_usage!(
                c == model.in_channels,
                "--data {} holds {} images, but the model of {what} takes {} images: pass \
                 --channels {} to convert them, or choose other data",
                self.data,
                color(c),
                color(model.in_channels),
                model.in_channels
            );
        }
        // The schedule: the source's, unless it has none (a bare UNet2DModel directory).
        let mut schedule = src.schedule.clone();
        if src.schedule_given {
            let mut differs = Vec::new();
            if let Some(t) = self.timesteps {
                if t as usize != schedule.num_train_timesteps {
                    differs.push(format!(
                        "--timesteps {t} (the source's num_train_timesteps is {})",
                        schedule.num_train_timesteps
                    ));
                }
            }
            if let Some(b) = &self.beta_schedule {
                if parse_beta_schedule(b)? != schedule.beta_schedule {
                    differs.push(format!(
                        "--beta-schedule {b} (the source's beta_schedule is {})",
                        json_text(&schedule.beta_schedule)
                    ));
                }
            }
            if let Some(p) = &self.prediction {
                if parse_prediction(p)? != schedule.prediction_type {
                    differs.push(format!(
                        "--prediction {p} (the source's prediction_type is {})",
                        json_text(&schedule.prediction_type)
                    ));
                }
            }
            if !differs.is_empty() {
                return Err(usage(format!(
                    "{} contradict{} {what}, whose noise schedule the run keeps: leave {} out",
                    differs.join(" and "),
                    if differs.len() == 1 { "s" } else { "" },
                    if differs.len() == 1 { "it" } else { "them" }
                )));
            }
        } else {
            self.apply_schedule_flags(&mut schedule)?;
        }
        if let Some(p) = self.dropout {
            model.dropout = p;
        }
        model
            .validate()
            .map_err(|e| usage(format!("{what}: {e}")))?;
        if let Some(p) = self.label_dropout.filter(|&p| p > 0.0) {
            crate::ensure_usage!(
                model.num_class_embeds.is_some(),
                "--label-dropout {p} contradicts {what}: the model is unconditional, with no \
                 class embedding to learn a null class in; leave --label-dropout out"
            );
        }
        // A class-conditional source trained with label dropout keeps its null class.
        let label_dropout = self.label_dropout.unwrap_or_else(|| {
            src.train
                .as_ref()
                .filter(|_| model.num_class_embeds.is_some())
                .map_or(0.0, |t| t.label_dropout)
        });
        let mut train = self.train_config(&model, label_dropout)?;
        let weights_file = src.path.canonicalize().unwrap_or_else(|_| src.path.clone());
        train.init_from = Some(InitFrom {
            source: path.display().to_string(),
            weights: weights_file.display().to_string(),
            kind: src.kind.clone(),
            ema_from_source: src.ema.is_some(),
        });
        let n = src.weights.len();
        let ema = src.ema.unwrap_or_else(|| src.weights.clone());
        Ok(Start::Init(Box::new(Checkpoint {
            model,
            schedule,
            rng: RngState {
                seed: train.seed,
                next_step: 0,
            },
            train,
            step: 0,
            skipped_steps: 0,
            weights: src.weights,
            ema,
            adam_m: vec![0.0; n],
            adam_v: vec![0.0; n],
        })))
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let start = a.start()?;
    let mut out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/ddpm"));
    if let (Start::Resume { checkpoint, .. }, None) = (&start, &a.out) {
        // Keep writing into the resumed run: <run> or <run>/checkpoints/<file> → <run>.
        let run_dir = if checkpoint.is_dir() {
            Some(checkpoint.clone())
        } else {
            checkpoint
                .parent()
                .filter(|d| d.ends_with("checkpoints"))
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        };
        if let Some(run_dir) = run_dir {
            out = run_dir;
        }
    }
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
