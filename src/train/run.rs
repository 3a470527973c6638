//! A whole training run around [`Trainer`]: data loader thread, CSV log, progress bar, sample
//! grids, loss curve and checkpoints.
//!
//! Output directory:
//! ```text
//! config.json                     model, schedule and training settings (for people)
//! log.csv                         step, loss, lr, grad_norm, images_per_s
//! loss.png                        the loss curve
//! samples/step_0000500.png        a grid drawn with the EMA weights every `sample_every` steps
//! checkpoints/step_0001000.safetensors, latest.safetensors
//! ```

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Checkpoint, StepStats, TrainConfig, TrainEngine, Trainer};
use crate::atomic_file::write_atomic;
use crate::cuda::train::GpuTrainer;
use crate::data::{self, DataSpec, Dataset, Loader, LoaderConfig};
use crate::device::Device;
use crate::diffusion::sampler::{SampleOptions, SamplerKind};
use crate::diffusion::ScheduleConfig;
use crate::imaging::{save_grid_upscaled, save_loss_curve};
use crate::nn::{UNet, UNetConfig};
use crate::sample::GenerateOptions;

/// How to start: a fresh run from configs, or a checkpoint to continue. (Built once per run,
/// so the size difference of the variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Start {
    Fresh {
        model: UNetConfig,
        schedule: ScheduleConfig,
        train: TrainConfig,
    },
    /// Continue from this checkpoint; `steps` (if given) replaces the run's total.
    Resume {
        checkpoint: PathBuf,
        steps: Option<u64>,
    },
}

pub struct RunOptions {
    pub start: Start,
    /// Where the steps run.
    pub device: Device,
    pub out: PathBuf,
    /// Console output: a progress bar on a terminal, plain lines otherwise; `false` is silent.
    pub verbose: bool,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Step and loss of every step this invocation ran.
    pub losses: Vec<(u64, f32)>,
    pub final_step: u64,
    pub seconds: f64,
    pub images_per_s: f64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// The last sample grid written.
    pub grid: PathBuf,
}

const CSV_HEADER: &str = "step,loss,lr,grad_norm,images_per_s";

/// Runs training to the configured number of steps.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    let (mut trainer, dataset) = match opts.start {
        Start::Fresh {
            mut model,
            schedule,
            train,
        } => {
            let dataset = load_data(&train)?;
            if train.class_conditional && model.num_class_embeds.is_none() {
                ensure!(
                    dataset.num_classes() > 0,
                    "class-conditional training needs labels, and {} has none",
                    dataset.name
                );
                model.num_class_embeds = Some(dataset.num_classes());
            }
            let engine: Box<dyn TrainEngine> = match &opts.device {
                Device::Cpu => Box::new(Trainer::new(model, schedule, train)?),
                Device::Cuda(gpu) => {
                    Box::new(GpuTrainer::new(gpu.clone(), model, schedule, train)?)
                }
            };
            (engine, dataset)
        }
        Start::Resume { checkpoint, steps } => {
            let ck = Checkpoint::load(&checkpoint)?;
            let mut t: Box<dyn TrainEngine> = match &opts.device {
                Device::Cpu => Box::new(Trainer::from_checkpoint(ck)?),
                Device::Cuda(gpu) => Box::new(GpuTrainer::from_checkpoint(gpu.clone(), ck)?),
            };
            if let Some(s) = steps {
                t.config_mut().steps = s;
            }
            let dataset = load_data(t.config())?;
            (t, dataset)
        }
    };
    check_data_fits(&dataset, trainer.net())?;
    let dataset = Arc::new(dataset);
    let cfg = trainer.config().clone();
    ensure!(
        trainer.step() < cfg.steps,
        "the run is already at step {} of {}: pass a larger --steps to continue it",
        trainer.step(),
        cfg.steps
    );
    let out = opts.out;
    for dir in [out.clone(), out.join("samples"), out.join("checkpoints")] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    write_config(&out, trainer.as_ref())?;
    let mut log = CsvLog::open(&out.join("log.csv"), trainer.step())?;

    let say = |line: String| {
        if opts.verbose {
            eprintln!("{line}");
        }
    };
    say(format!(
        "training {} ({:.2}M parameters) on {} with {} ({} images) for steps {}..{}, batch {}, output {}",
        trainer.net().config,
        trainer.net().num_params() as f64 / 1e6,
        dataset.name,
        trainer.device(),
        dataset.len(),
        trainer.step() + 1,
        cfg.steps,
        cfg.batch_size,
        out.display()
    ));
    let bar = progress_bar(opts.verbose, trainer.step(), cfg.steps);
    let mut loader = Loader::spawn(
        Arc::clone(&dataset),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            hflip: cfg.hflip,
            start_step: trainer.step(),
            prefetch: 4,
        },
    );

    let started = Instant::now();
    let first_step = trainer.step();
    let mut losses = Vec::new();
    let mut window = Window::default();
    let mut checkpoint = out.join("checkpoints").join("latest.safetensors");
    let mut grid = PathBuf::new();
    while trainer.step() < cfg.steps {
        let batch = loader.next_batch();
        let stats = trainer.train_step(&batch)?;
        losses.push((stats.step, stats.loss));
        window.add(&stats, cfg.batch_size);
        let s = stats.step;
        let last = s == cfg.steps;
        if s % cfg.log_every == 0 || last {
            log.row(&window.row(s))?;
            if let Some(bar) = &bar {
                bar.set_position(s);
                bar.set_message(format!("loss {:.4}", window.mean_loss()));
            } else if s % cfg.log_every.max(100) == 0 || last {
                say(format!(
                    "step {s}/{}: loss {:.4}, {:.1} images/s",
                    cfg.steps,
                    window.mean_loss(),
                    window.images_per_s()
                ));
            }
            window = Window::default();
        }
        if (cfg.sample_every > 0 && s % cfg.sample_every == 0) || last {
            grid = out.join("samples").join(format!("step_{s:07}.png"));
            sample_grid(trainer.as_mut(), &grid)?;
            let points = read_loss_points(&out.join("log.csv"))?;
            save_loss_curve(&out.join("loss.png"), &points, 800, 400)?;
        }
        if (cfg.checkpoint_every > 0 && s % cfg.checkpoint_every == 0) || last {
            let ck = trainer.checkpoint()?;
            checkpoint = out
                .join("checkpoints")
                .join(format!("step_{s:07}.safetensors"));
            ck.save(&checkpoint)?;
            ck.save(&out.join("checkpoints").join("latest.safetensors"))?;
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    let seconds = started.elapsed().as_secs_f64();
    let images_per_s = (trainer.step() - first_step) as f64 * cfg.batch_size as f64 / seconds;
    say(format!(
        "done: step {} in {seconds:.0} s ({images_per_s:.1} images/s); samples {}, checkpoint {}",
        trainer.step(),
        grid.display(),
        checkpoint.display()
    ));
    Ok(RunSummary {
        losses,
        final_step: trainer.step(),
        seconds,
        images_per_s,
        checkpoint,
        grid,
    })
}

fn load_data(cfg: &TrainConfig) -> Result<Dataset> {
    let spec: DataSpec = cfg.data.parse()?;
    Ok(data::load(&spec, cfg.image_size, cfg.channels)?)
}

/// The data must have the model's geometry, and labels for a class-conditional model.
fn check_data_fits(ds: &Dataset, net: &UNet) -> Result<()> {
    let m = &net.config;
    ensure!(
        ds.size == m.sample_size && ds.channels == m.in_channels,
        "the data is {}×{}×{} but the model expects {}×{}×{}",
        ds.channels,
        ds.size,
        ds.size,
        m.in_channels,
        m.sample_size,
        m.sample_size
    );
    if let Some(n) = m.num_class_embeds {
        ensure!(
            ds.labels.is_some(),
            "the model is class-conditional but {} has no labels",
            ds.name
        );
        ensure!(
            ds.num_classes() <= n,
            "{} has {} classes but the model embeds {n}",
            ds.name,
            ds.num_classes()
        );
    }
    Ok(())
}

fn write_config(out: &Path, t: &dyn TrainEngine) -> Result<()> {
    let all = serde_json::json!({
        "model": t.net().config,
        "schedule": t.schedule().config(),
        "train": t.config(),
    });
    let path = out.join("config.json");
    write_atomic(&path, serde_json::to_string_pretty(&all)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A grid of `sample_count` images drawn with the EMA weights (DDIM, η = 0).
fn sample_grid(t: &mut dyn TrainEngine, path: &Path) -> Result<()> {
    let cfg = t.config().clone();
    let steps = cfg.sample_steps.min(t.schedule().num_timesteps());
    let opts = GenerateOptions {
        sampler: SampleOptions::new(t.schedule().config(), SamplerKind::Ddim { eta: 0.0 }, steps),
        num: cfg.sample_count,
        batch_size: cfg.sample_count,
        seed: cfg.seed,
        labels: None,
    };
    let images = t.generate_ema(&opts)?;
    let (s, channels) = (t.net().config.sample_size, t.net().config.in_channels);
    let nrow = (cfg.sample_count as f64).sqrt().ceil() as usize;
    save_grid_upscaled(path, &images, cfg.sample_count, channels, s, s, nrow)?;
    Ok(())
}

fn progress_bar(verbose: bool, at: u64, total: u64) -> Option<ProgressBar> {
    if !verbose || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total).with_position(at);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} {per_sec} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("a valid template"),
    );
    bar.reset_eta();
    Some(bar)
}

/// Sums over the steps since the last CSV row.
#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    images: u64,
    last: Option<StepStats>,
    started: Option<Instant>,
}

impl Window {
    fn add(&mut self, s: &StepStats, batch: usize) {
        self.started.get_or_insert_with(Instant::now);
        self.steps += 1;
        self.loss += f64::from(s.loss);
        self.images += batch as u64;
        self.last = Some(*s);
    }
    fn mean_loss(&self) -> f64 {
        self.loss / self.steps.max(1) as f64
    }
    fn images_per_s(&self) -> f64 {
        let secs = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        if secs > 0.0 {
            self.images as f64 / secs
        } else {
            0.0
        }
    }
    fn row(&self, step: u64) -> String {
        let last = self.last.expect("a row follows at least one step");
        let mut row = String::new();
        write!(
            row,
            "{step},{:.6},{:.6e},{:.6},{:.2}",
            self.mean_loss(),
            last.lr,
            last.grad_norm,
            self.images_per_s()
        )
        .expect("writing to a String");
        row
    }
}

/// `log.csv`, kept consistent with the checkpoint on resume: rows after the resumed step (from
/// a run that went on past its last checkpoint) are dropped.
struct CsvLog {
    file: std::fs::File,
}

impl CsvLog {
    fn open(path: &Path, resumed_at: u64) -> Result<Self> {
        let mut kept = String::from(CSV_HEADER);
        kept.push('\n');
        if resumed_at > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                for line in text.lines().skip(1) {
                    let step = line.split(',').next().and_then(|s| s.parse::<u64>().ok());
                    if step.is_some_and(|s| s <= resumed_at) {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
            }
        }
        write_atomic(path, kept.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file })
    }

    fn row(&mut self, row: &str) -> Result<()> {
        writeln!(self.file, "{row}").context("cannot append to log.csv")
    }
}

/// (step, loss) pairs from the CSV log, for the loss curve.
fn read_loss_points(path: &Path) -> Result<Vec<(u64, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect())
}
