//! A whole training run around [`Trainer`]: data loader thread, CSV log, progress bar, sample
//! grids, loss curve and checkpoints.
//!
//! Output directory:
//! ```text
//! config.json                     model, schedule and training settings (for people)
//! log.csv                         step, loss, lr, grad_norm, images_per_s, skipped
//! loss.png                        the loss curve
//! samples/step_0000500.png        a grid drawn with the EMA weights every `sample_every` steps
//! checkpoints/step_0001000.safetensors, latest.safetensors   (the newest K kept)
//! ```
//! Nothing is lost to a crash: every file is replaced atomically, and a resumed run starts from
//! the newest checkpoint that verifies. A failed save stops the run, naming the previous
//! checkpoint, which is intact. Steps with a non-finite loss or gradient are skipped and
//! counted; `max_nonfinite_steps` of them in a row stop the run. Where the signal handlers of
//! [`crate::interrupt`] are installed (`ddpm train` installs them), a Ctrl-C or SIGTERM finishes
//! the step in flight, saves it as a checkpoint and ends the run with [`interrupt::Interrupted`],
//! which names the checkpoint and the command that continues the run.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::run_lock::RunLock;
use super::{checkpoint_dir, Checkpoint, StepStats, TrainConfig, TrainEngine, Trainer};
use crate::atomic_file::write_atomic;
use crate::cpu_memory;
use crate::cuda::train::GpuTrainer;
use crate::data::{self, DataSpec, Dataset, Loader, LoaderConfig};
use crate::device::Device;
use crate::diffusion::sampler::{SampleOptions, SamplerKind};
use crate::diffusion::ScheduleConfig;
use crate::imaging::{save_grid_upscaled, save_loss_curve};
use crate::interrupt;
use crate::nn::{UNet, UNetConfig};
use crate::precision::Precision;
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
    /// A new run from given weights (fine-tuning): the state at step 0, its optimizer moments
    /// zero, its EMA the source's or a copy of the weights, and `train.init_from` saying where
    /// they came from.
    Init(Box<Checkpoint>),
    /// Continue from a checkpoint file, or from the newest checkpoint of a run directory that
    /// verifies. The options given replace the checkpoint's.
    Resume {
        checkpoint: PathBuf,
        steps: Option<u64>,
        keep_checkpoints: Option<usize>,
        max_nonfinite_steps: Option<u64>,
    },
}

pub struct RunOptions {
    pub start: Start,
    /// Where the steps run.
    pub device: Device,
    /// What the GPU stores activations as (the CPU computes in fp32 whatever this says).
    pub precision: Precision,
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
    /// Steps skipped for a non-finite loss or gradient, in the whole run.
    pub skipped_steps: u64,
}

const CSV_HEADER: &str = "step,loss,lr,grad_norm,images_per_s,skipped";

/// Batches the data loader prepares ahead of the steps.
const PREFETCH: usize = 4;

/// On the CPU, refuses a batch size the memory available cannot hold (with the largest that
/// fits), before the data is loaded or anything is written: the GPU trainer checks its device's
/// memory the same way when it is built. A config the trainer would refuse is left for it to
/// report. A class-conditional model's label embedding, added once the data is read, is left
/// out: a few thousand values.
fn check_cpu_memory(
    device: &Device,
    model: &UNetConfig,
    train: &TrainConfig,
    resumed: bool,
) -> Result<()> {
    if !matches!(device, Device::Cpu) {
        return Ok(());
    }
    let (Ok(()), Ok(net)) = (train.validate(), UNet::new(model.clone())) else {
        return Ok(());
    };
    let job = cpu_memory::Job::Train {
        grid: train.sample_count,
        prefetch: PREFETCH,
        resumed,
    };
    cpu_memory::check_fits(&net, job, train.batch_size)
}

/// Loads what `--resume` names: a checkpoint file as is, or a run directory's newest
/// checkpoint that verifies (telling which, and which newer ones it passed over).
fn resume_from(path: &Path, say: &dyn Fn(String)) -> Result<(PathBuf, Checkpoint)> {
    if !path.is_dir() {
        return Ok((path.to_path_buf(), Checkpoint::load(path)?));
    }
    let dir = path.join("checkpoints");
    let found = match checkpoint_dir::newest_valid(&dir) {
        Ok(found) => found,
        Err(e) if e.rejected.is_empty() => return Err(nothing_to_resume(path)),
        Err(e) => return Err(e.into()),
    };
    for e in &found.rejected {
        say(format!("skipping a checkpoint that does not verify: {e}"));
    }
    say(format!(
        "resuming from {} (step {})",
        found.path.display(),
        found.checkpoint.step
    ));
    Ok((found.path, found.checkpoint))
}

/// Refuses, before anything is loaded, `--resume DIR` of a folder with no checkpoint at all,
/// saying what to do instead. (Checkpoints that are there but do not verify are reported when
/// the run loads them.)
pub fn check_resumable(path: &Path) -> Result<()> {
    if path.is_dir() && checkpoint_dir::newest_name(&path.join("checkpoints")).is_none() {
        return Err(nothing_to_resume(path));
    }
    Ok(())
}

/// `--resume DIR` of a folder with no checkpoint: what to do instead.
fn nothing_to_resume(dir: &Path) -> anyhow::Error {
    let word = shell_word(dir);
    let d = dir.display();
    if !dir.join("checkpoints").is_dir() && !dir.join("config.json").is_file() {
        return crate::usage_error::usage(format!(
            "--resume {d}: not a training run (it has no checkpoints/ folder): pass a run \
             directory or a checkpoint file; to start a new run in this folder: ddpm train --out {word}"
        ));
    }
    crate::usage_error::usage(format!(
        "--resume {d}: {}/ holds no checkpoint: the run stopped before its first save, so \
         there is nothing to resume. Start it afresh in the same folder with: ddpm train --out \
         {word} (and the flags it was started with: {d}/config.json lists its settings), or \
         choose another --out for a new run",
        dir.join("checkpoints").display(),
    ))
}

/// Runs training to the configured number of steps.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    let say = |line: String| {
        if opts.verbose {
            eprintln!("{line}");
        }
    };
    // The checkpoint a run starts from: what a failure before the first save leaves intact.
    let mut resumed_from = PathBuf::new();
    let (mut trainer, dataset) = match opts.start {
        Start::Fresh {
            mut model,
            schedule,
            train,
        } => {
            refuse_existing_run(&opts.out)?;
            check_cpu_memory(&opts.device, &model, &train, false)?;
            let dataset = load_data(&train)?;
            if train.class_conditional && model.num_class_embeds.is_none() {
                ensure!(
                    dataset.num_classes() > 0,
                    "class-conditional training needs labels, and {} has none",
                    dataset.name
                );
                // Label dropout adds the null class as the last embedding.
                let null = usize::from(train.label_dropout > 0.0);
                model.num_class_embeds = Some(dataset.num_classes() + null);
            }
            let engine: Box<dyn TrainEngine> = match &opts.device {
                Device::Cpu => Box::new(Trainer::new(model, schedule, train)?),
                Device::Cuda(gpu) => Box::new(GpuTrainer::new(
                    gpu.clone(),
                    model,
                    schedule,
                    train,
                    opts.precision,
                )?),
            };
            (engine, dataset)
        }
        Start::Init(ck) => {
            refuse_existing_run(&opts.out)?;
            let from = ck
                .train
                .init_from
                .as_ref()
                .map_or(String::new(), |i| format!("--init-from {}: ", i.source));
            check_cpu_memory(&opts.device, &ck.model, &ck.train, false)?;
            let dataset = load_data(&ck.train).map_err(|e| {
                // The size is the model's: advice to change --image-size does not apply.
                let fixed = if format!("{e:#}").contains("--image-size") {
                    " whatever --image-size says below; --upscale enlarges smaller ones"
                } else {
                    ""
                };
                e.context(format!(
                    "{from}its model takes {}{fixed}",
                    geometry(&ck.model)
                ))
            })?;
            // Before the model goes to the device: the data must suit the source's model.
            check_data_fits(&dataset, &ck.model, &ck.train)
                .map_err(|e| crate::usage_error::usage(format!("{from}{e}")))?;
            let t: Box<dyn TrainEngine> = match &opts.device {
                Device::Cpu => Box::new(Trainer::from_checkpoint(*ck)?),
                Device::Cuda(gpu) => Box::new(GpuTrainer::from_checkpoint(
                    gpu.clone(),
                    *ck,
                    opts.precision,
                )?),
            };
            (t, dataset)
        }
        Start::Resume {
            checkpoint,
            steps,
            keep_checkpoints,
            max_nonfinite_steps,
        } => {
            let (path, mut ck) = resume_from(&checkpoint, &say)?;
            resumed_from = path;
            let cfg = &mut ck.train;
            if let Some(s) = steps {
                cfg.steps = s;
            }
            if let Some(k) = keep_checkpoints {
                cfg.keep_checkpoints = k;
            }
            if let Some(m) = max_nonfinite_steps {
                cfg.max_nonfinite_steps = m;
            }
            cfg.validate()?;
            // Before the data is read or the device touched.
            crate::ensure_usage!(
                ck.step < cfg.steps,
                "the run is already at step {} of {}: pass a larger --steps to continue it",
                ck.step,
                cfg.steps
            );
            check_cpu_memory(&opts.device, &ck.model, &ck.train, true)?;
            let dataset = load_data(&ck.train)?;
            let t: Box<dyn TrainEngine> = match &opts.device {
                Device::Cpu => Box::new(Trainer::from_checkpoint(ck)?),
                Device::Cuda(gpu) => Box::new(GpuTrainer::from_checkpoint(
                    gpu.clone(),
                    ck,
                    opts.precision,
                )?),
            };
            (t, dataset)
        }
    };
    check_data_fits(&dataset, &trainer.net().config, trainer.config())?;
    let dataset = Arc::new(dataset);
    let cfg = trainer.config().clone();
    let out = opts.out;
    for dir in [out.clone(), out.join("samples"), out.join("checkpoints")] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    let _lock = RunLock::acquire(&out)?;
    let ck_dir = out.join("checkpoints");
    for dir in [&out, &out.join("samples"), &ck_dir] {
        for stale in checkpoint_dir::remove_stale_temporaries(dir)
            .with_context(|| format!("cannot clean up {}", dir.display()))?
        {
            say(format!(
                "removed {}, left by a write that was interrupted",
                stale.display()
            ));
        }
    }
    // Checkpoints past the resumed step belong to a future this run replaces: set aside, so
    // neither rotation nor a later resume mixes them with this run's.
    for moved in checkpoint_dir::set_aside_newer(&ck_dir, trainer.step())
        .with_context(|| format!("cannot set aside newer checkpoints in {}", ck_dir.display()))?
    {
        say(format!(
            "moved {} (past the resumed step {}) to {}",
            moved.0.display(),
            trainer.step(),
            moved.1.display()
        ));
    }
    write_config(&out, trainer.as_ref())?;
    let mut log = CsvLog::open(&out.join("log.csv"), trainer.step())?;

    // A fine-tuning run says what it started from (when it starts, and when it is resumed).
    let (verb, init) = match (&cfg.init_from, trainer.step()) {
        (Some(i), 0) => (
            "fine-tuning",
            format!(
                " from {} ({}; the EMA {})",
                i.source,
                i.kind,
                if i.ema_from_source {
                    "is the source's"
                } else {
                    "starts as a copy of the weights"
                }
            ),
        ),
        (Some(i), _) => (
            "training",
            format!(", fine-tuned from {} ({}),", i.source, i.kind),
        ),
        (None, _) => ("training", String::new()),
    };
    say(format!(
        "{verb} {} ({:.2}M parameters){init} on {} with {} ({} images) for steps {}..{}, batch {}, output {}",
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
    let bar = progress_bar(opts.verbose, trainer.step(), cfg.steps, cfg.batch_size);
    let mut loader = Loader::spawn(
        Arc::clone(&dataset),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            hflip: cfg.hflip,
            start_step: trainer.step(),
            prefetch: PREFETCH,
        },
    );

    let started = Instant::now();
    let first_step = trainer.step();
    let mut losses = Vec::new();
    let mut window = Window::default();
    // The newest checkpoint of this run on disk, and its step: what a failure leaves intact.
    let mut checkpoint = resumed_from;
    let mut grid = PathBuf::new();
    let mut nonfinite_in_a_row = 0u64;
    let mut checkpoint_due = false;
    // The step `checkpoint` holds, when it is one this run can continue from.
    let mut saved_at = (!checkpoint.as_os_str().is_empty()).then_some(first_step);
    // From here a Ctrl-C or SIGTERM lets the step in flight finish, then saves (below).
    let _deferred = interrupt::Deferred::begin();
    loop {
        if let Some(signal) = interrupt::pending() {
            if let Some(bar) = &bar {
                // The messages below say where it stopped.
                bar.finish_and_clear();
            }
            let s = trainer.step();
            if saved_at != Some(s) && s > first_step {
                say(format!(
                    "{}: saving step {s} before stopping (a second one stops at once). {}",
                    signal.describe(),
                    intact(&checkpoint)
                ));
                checkpoint =
                    save_checkpoint(trainer.as_mut(), &ck_dir, cfg.keep_checkpoints, &checkpoint)?;
            }
            if window.last.is_some() {
                log.row(&window.row(s))
                    .with_context(|| intact(&checkpoint))?;
            }
            return Err(interrupted_at(signal, s, cfg.steps, &checkpoint, &out).into());
        }
        if trainer.step() >= cfg.steps {
            break;
        }
        let batch = loader.next_batch();
        let stats = trainer.train_step(&batch)?;
        window.add(&stats, cfg.batch_size);
        let s = stats.step;
        if stats.overflow {
            // fp16's loss scale was too large: halved, the step skipped, not a divergence.
            let line = format!(
                "step {s}: fp16 gradients overflowed at this loss scale: step skipped, scale halved"
            );
            match &bar {
                Some(bar) => bar.println(line),
                None => say(line),
            }
        } else if stats.skipped {
            nonfinite_in_a_row += 1;
            let line = format!(
                "step {s}: loss {}, gradient norm {}: not finite, step skipped ({nonfinite_in_a_row} in a row, {} in all)",
                stats.loss,
                stats.grad_norm,
                trainer.skipped_steps()
            );
            match &bar {
                Some(bar) => bar.println(line),
                None => say(line),
            }
            if nonfinite_in_a_row >= cfg.max_nonfinite_steps {
                log.row(&window.row(s))?;
                bail!(
                    "stopped at step {s}: {nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (the limit, --max-nonfinite-steps); training has diverged: try a lower --lr or --grad-clip. {}",
                    intact(&checkpoint)
                );
            }
        } else {
            nonfinite_in_a_row = 0;
            losses.push((stats.step, stats.loss));
        }
        let last = s == cfg.steps;
        // The checkpoint first: a log row, grid or plot that cannot be written must not cost it.
        if cfg.checkpoint_every > 0 && s % cfg.checkpoint_every == 0 {
            checkpoint_due = true;
        }
        // Postponed while steps are being skipped, so the checkpoints kept are from good
        // updates; the last step always saves (its weights are the last good ones).
        if (checkpoint_due && nonfinite_in_a_row == 0) || last {
            checkpoint_due = false;
            checkpoint =
                save_checkpoint(trainer.as_mut(), &ck_dir, cfg.keep_checkpoints, &checkpoint)?;
            saved_at = Some(s);
        }
        if s % cfg.log_every == 0 || last {
            log.row(&window.row(s))
                .with_context(|| intact(&checkpoint))?;
            if let Some(bar) = &bar {
                // The message first: setting the position redraws, with the message as it is.
                bar.set_message(format!("loss {:.4}", window.mean_loss()));
                bar.set_position(s);
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
        // Not once interrupted: drawing the grid would delay the save.
        let grid_due = (cfg.sample_every > 0 && s % cfg.sample_every == 0) || last;
        if grid_due && interrupt::pending().is_none() {
            grid = out.join("samples").join(format!("step_{s:07}.png"));
            let drawn = sample_grid(trainer.as_mut(), &grid).and_then(|()| {
                let points = read_loss_points(&out.join("log.csv"))?;
                Ok(save_loss_curve(&out.join("loss.png"), &points, 800, 400)?)
            });
            drawn.with_context(|| intact(&checkpoint))?;
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
        // The finished bar stays on screen with the cursor at its end: what follows goes below.
        eprintln!();
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
        skipped_steps: trainer.skipped_steps(),
    })
}

/// Saves the trainer's state as `step_N` in `ck_dir` and makes it `latest`, keeping the newest
/// `keep`; returns its path. On failure the message names `previous`, which is intact.
fn save_checkpoint(
    trainer: &mut dyn TrainEngine,
    ck_dir: &Path,
    keep: usize,
    previous: &Path,
) -> Result<PathBuf> {
    let s = trainer.step();
    let ck = trainer.checkpoint()?;
    let path = ck_dir.join(checkpoint_dir::step_file_name(s));
    ck.save(&path)
        .with_context(|| format!("saving step {s} failed. {}", intact(previous)))?;
    checkpoint_dir::publish(ck_dir, &path, keep).with_context(|| {
        format!(
            "checkpoint {} was written and is intact, but updating {} or removing older \
             checkpoints failed",
            path.display(),
            checkpoint_dir::LATEST
        )
    })?;
    Ok(path)
}

/// What an interrupted run says: where it stopped, its checkpoint, and how to go on.
fn interrupted_at(
    signal: interrupt::Signal,
    step: u64,
    total: u64,
    checkpoint: &Path,
    out: &Path,
) -> interrupt::Interrupted {
    let message = if checkpoint.as_os_str().is_empty() {
        "interrupted before the first step; nothing to save (the same command starts the run again)"
            .to_string()
    } else if step >= total {
        format!(
            "interrupted after the last step ({step}); checkpoint: {}; the run is complete",
            checkpoint.display()
        )
    } else {
        // A checkpoint in the run's own folder resumes by the folder, whose newest it is;
        // one from elsewhere (`--resume FILE --out DIR`) by its path.
        let from = if checkpoint.parent() == Some(&out.join("checkpoints")) {
            shell_word(out)
        } else {
            format!("{} --out {}", shell_word(checkpoint), shell_word(out))
        };
        format!(
            "interrupted at step {step}; checkpoint: {}; continue with: ddpm train --resume {from}",
            checkpoint.display()
        )
    };
    interrupt::Interrupted { signal, message }
}

/// `path` as one word of a shell command: quoted when it holds anything but plain characters.
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a failure leaves: the run's previous checkpoint, untouched.
fn intact(previous: &Path) -> String {
    if previous.as_os_str().is_empty() {
        return "This run has no earlier checkpoint.".into();
    }
    let step = checkpoint_dir::peek_step(previous)
        .map(|s| format!(" (step {s})"))
        .unwrap_or_default();
    format!(
        "The last checkpoint, {}{step}, is intact.",
        previous.display()
    )
}

fn load_data(cfg: &TrainConfig) -> Result<Dataset> {
    let spec: DataSpec = cfg.data.parse()?;
    Ok(data::load(
        &spec,
        cfg.image_size,
        cfg.channels,
        cfg.upscale,
    )?)
}

/// `3×32×32 images`, for messages.
fn geometry(m: &UNetConfig) -> String {
    format!(
        "{}×{}×{} images",
        m.in_channels, m.sample_size, m.sample_size
    )
}

/// A new run would mix its checkpoints with another run's and overwrite its log.
fn refuse_existing_run(out: &Path) -> Result<()> {
    if let Some(name) = checkpoint_dir::newest_name(&out.join("checkpoints")) {
        return Err(crate::usage_error::usage(format!(
            "{} already holds a training run (checkpoints/{name}): pass --resume {} to \
             continue it, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    Ok(())
}

/// The data must have the model's geometry, and labels for a class-conditional model.
fn check_data_fits(ds: &Dataset, m: &UNetConfig, cfg: &TrainConfig) -> Result<()> {
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
        // With label dropout the last embedding is the null class, not a data class.
        let (usable, null_note) = match cfg.null_class(Some(n)) {
            Some(_) => (n - 1, " plus the null class of label dropout"),
            None => (n, ""),
        };
        ensure!(
            ds.num_classes() <= usable,
            "{} has {} classes but the model embeds {usable}{null_note}",
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
        // Cycles through the data classes, leaving out label dropout's null class.
        null_class: cfg.null_class(t.net().config.num_class_embeds),
        ..GenerateOptions::new(
            SampleOptions::new(t.schedule().config(), SamplerKind::Ddim { eta: 0.0 }, steps),
            cfg.sample_count,
            cfg.sample_count,
            cfg.seed,
        )
    };
    let images = t.generate_ema(&opts)?;
    let (s, channels) = (t.net().config.sample_size, t.net().config.in_channels);
    let nrow = (cfg.sample_count as f64).sqrt().ceil() as usize;
    save_grid_upscaled(path, &images, cfg.sample_count, channels, s, s, nrow)?;
    Ok(())
}

fn progress_bar(verbose: bool, at: u64, total: u64, batch: usize) -> Option<ProgressBar> {
    if !verbose || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total).with_position(at);
    // The rate in images/s, as the log lines and log.csv give it (the bar counts steps).
    let rate = move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.1} images/s", state.per_sec() * batch as f64);
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} step {pos}/{len}, {msg}, {rate} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("a valid template")
        .with_key("rate", rate),
    );
    bar.set_message("loss …");
    bar.reset_eta();
    Some(bar)
}

/// Sums over the steps since the last CSV row.
#[derive(Default)]
struct Window {
    steps: u64,
    /// Steps skipped for a non-finite loss or gradient; their loss is not in `loss`.
    skipped: u64,
    loss: f64,
    images: u64,
    last: Option<StepStats>,
    started: Option<Instant>,
}

impl Window {
    fn add(&mut self, s: &StepStats, batch: usize) {
        self.started.get_or_insert_with(Instant::now);
        if s.skipped {
            self.skipped += 1;
        } else {
            self.steps += 1;
            self.loss += f64::from(s.loss);
        }
        self.images += batch as u64;
        self.last = Some(*s);
    }
    /// NaN when every step of the window was skipped.
    fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            return f64::NAN;
        }
        self.loss / self.steps as f64
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
            "{step},{:.6},{:.6e},{:.6},{:.2},{}",
            self.mean_loss(),
            last.lr,
            last.grad_norm,
            self.images_per_s(),
            self.skipped
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
