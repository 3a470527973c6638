//! `ddpm bench train|sample|samplers`: images per second for a preset and batch size, after warm-up.
//! On the GPU the time is measured on the device (CUDA events around the timed steps, so it
//! counts every gap the host leaves too); on the CPU it is wall-clock time.

mod sampler_table;

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::{Args, Subcommand};

use super::args::{at_least, between, geometry_error, plural};
use crate::cuda::sample::GpuSampler;
use crate::cuda::train::GpuTrainer;
use crate::data::Batch;
use crate::device::{Device, DeviceArg, PrecisionArg};
use crate::diffusion::sampler::{initial_noise, SampleOptions, SamplerKind};
use crate::diffusion::{Schedule, ScheduleConfig};
use crate::nn::{UNet, UNetConfig, PRESETS};
use crate::precision::Precision;
use crate::profile;
use crate::rng::Philox;
use crate::sample::{generate, BatchJob, Denoiser, GenerateOptions};
use crate::train::{TrainConfig, Trainer};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training steps per second (forward, backward, clipping, AdamW, EMA) on random data.
    Train(BenchArgs),
    /// DDIM sampling: images per second for a batch going through every step.
    Sample(BenchArgs),
    /// Every sampler × step count on a trained model: sample quality (Fréchet distance of
    /// pooled pixels to the training images) and time, as a Markdown table.
    Samplers(Box<sampler_table::SamplerTableArgs>),
    /// The CPU's measured f32 FMA peak (GFLOP/s) on one thread and on all (`--threads`), the
    /// ceiling for the convolution rows of `--profile`.
    Peak,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model preset.
    #[arg(long, value_name = "PRESET", default_value = "tiny")]
    pub preset: String,
    /// Images per step.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = at_least::<1>)]
    pub batch_size: u64,
    /// Timed training steps, or DDIM steps of the timed sampling run [default: 20 for train,
    /// 50 for sample].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub steps: Option<u64>,
    /// Untimed steps first (kernel loading, caches, clocks).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: u64,
    /// Where to run: auto (CUDA when a GPU and the kernels are present, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|cpu|cuda[:N]",
        display_order = 901
    )]
    pub device: DeviceArg,
    /// What the GPU stores activations as (bf16 by default on a GPU; the CPU is fp32 only).
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|bf16|fp16|fp32",
        display_order = 902
    )]
    pub precision: PrecisionArg,
    /// Print the result as one JSON object, the only output on stdout (the other lines go to
    /// stderr), as `jq` and scripts/side_by_side.py read it.
    #[arg(long)]
    pub json: bool,
    /// Print where a step goes: time per kind of op (convolution forward and backward,
    /// patch gathering, group norm, attention, optimizer, …) as a table. CPU only.
    #[arg(long)]
    pub profile: bool,
    /// Image side length instead of the preset's (e.g. 28 for MNIST-sized images).
    #[arg(long, value_name = "PIXELS", value_parser = between::<1, 4096>)]
    pub image_size: Option<u64>,
    /// Image channels instead of the preset's (e.g. 1 for greyscale).
    #[arg(long, value_name = "C", value_parser = between::<1, 64>)]
    pub channels: Option<u64>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => bench_train(&a),
        BenchCommand::Sample(a) => bench_sample(&a),
        BenchCommand::Samplers(a) => sampler_table::run(&a),
        BenchCommand::Peak => {
            let n = rayon::current_num_threads();
            let (one, code) = crate::ops::fma_peak::measure(1, 200);
            let (all, _) = crate::ops::fma_peak::measure(n, 200);
            println!(
                "f32 FMA peak on {} ({code}): {one:.1} GFLOP/s on 1 thread, {all:.1} GFLOP/s on {n}",
                profile::cpu_model().unwrap_or_else(|| "this CPU".into())
            );
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum BenchKind {
    Train,
    Sample,
}

fn setup(a: &BenchArgs, kind: BenchKind) -> Result<(UNetConfig, Device, Precision)> {
    let mut model = UNetConfig::preset(&a.preset).ok_or_else(|| {
        crate::usage_error::usage(format!(
            "--preset {}: unknown (presets: {})",
            a.preset,
            PRESETS.join(", ")
        ))
    })?;
    if let Some(size) = a.image_size {
        model.sample_size = size as usize;
    }
    if let Some(c) = a.channels {
        model.in_channels = c as usize;
        model.out_channels = c as usize;
    }
    if let Err(e) = model.validate() {
        let mut given = Vec::new();
        if let Some(s) = a.image_size {
            given.push(("sample_size", format!("--image-size {s}")));
        }
        if let Some(c) = a.channels {
            given.push(("in_channels", format!("--channels {c}")));
        }
        return Err(geometry_error(
            &format!("--preset {}", a.preset),
            &format!("the {} preset", a.preset),
            &model,
            e,
            &given,
        ));
    }
    if let (BenchKind::Sample, Some(steps)) = (kind, a.steps) {
        let t = ScheduleConfig::default().num_train_timesteps as u64;
        crate::ensure_usage!(
            steps <= t,
            "--steps {steps}: DDIM can take at most T = {t} steps"
        );
    }
    let device = Device::select(a.device, &mut |l| eprintln!("{l}"))?;
    let precision = a.precision.resolve(&device)?;
    crate::ensure_usage!(
        !a.profile || matches!(device, Device::Cpu),
        "--profile: the op profile is measured on the CPU backend only (use --device cpu)"
    );
    Ok((model, device, precision))
}

/// Images in [-1, 1] drawn once (the numbers do not matter for speed, only their shape).
fn random_batch(net: &UNet, batch: usize) -> Batch {
    let mut rng = Philox::new(1);
    Batch {
        step: 0,
        x: rng.uniform_vec(batch * net.input_shape(1).len(), -1.0, 1.0),
        labels: net
            .config
            .num_class_embeds
            .map(|n| (0..batch).map(|i| (i % n) as u32).collect()),
    }
}

fn bench_train(a: &BenchArgs) -> Result<()> {
    let (model, device, precision) = setup(a, BenchKind::Train)?;
    let b = a.batch_size as usize;
    let steps = a.steps.unwrap_or(20);
    let config = TrainConfig {
        batch_size: b,
        image_size: model.sample_size,
        channels: model.in_channels,
        ..TrainConfig::default()
    };
    let params = UNet::new(model.clone())?.num_params();
    say(
        a,
        format!(
            "bench train: preset {} ({:.2}M parameters), batch {b}, {precision}, {} warm-up + {} timed on {}",
            a.preset,
            params as f64 / 1e6,
            a.warmup,
            plural(steps, "step", "steps"),
            describe(&device)
        ),
    );
    let seconds = match &device {
        Device::Cpu => {
            let mut t = Trainer::new(model, ScheduleConfig::default(), config)?;
            let batch = random_batch(&t.net, b);
            for _ in 0..a.warmup {
                t.train_step(&batch)?;
            }
            profile::enable(a.profile);
            let start = Instant::now();
            for _ in 0..steps {
                t.train_step(&batch)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            profile::enable(false);
            seconds
        }
        Device::Cuda(gpu) => {
            let mut t = GpuTrainer::new(
                gpu.clone(),
                model,
                ScheduleConfig::default(),
                config,
                precision,
            )?;
            let batch = random_batch(&t.net, b);
            for _ in 0..a.warmup {
                t.train_step(&batch)?;
            }
            let before = gpu.allocation_stats();
            let mut result = Ok(());
            let ms = gpu.time_ms(|| {
                for _ in 0..steps {
                    if let Err(e) = t.train_step(&batch) {
                        result = Err(e);
                        break;
                    }
                }
                Ok(())
            })?;
            result?;
            ensure!(
                gpu.allocation_stats() == before,
                "a training step allocated device memory ({:?} → {:?} allocations, bytes)",
                before,
                gpu.allocation_stats()
            );
            say(a, "device allocations during the timed steps: 0".into());
            f64::from(ms) / 1e3
        }
    };
    let r = Report {
        task: "train",
        images: steps as f64 * b as f64,
        steps,
        seconds,
        params,
        precision,
    };
    r.print(a, &device, "step");
    Ok(())
}

fn bench_sample(a: &BenchArgs) -> Result<()> {
    let (model, device, precision) = setup(a, BenchKind::Sample)?;
    let b = a.batch_size as usize;
    let steps = a.steps.unwrap_or(50) as usize;
    let net = UNet::new(model)?;
    let schedule = Schedule::new(ScheduleConfig::default())?;
    let weights = net.init_params::<f32>(0);
    let sampler = SampleOptions::new(schedule.config(), SamplerKind::Ddim { eta: 0.0 }, steps);
    let warm = SampleOptions::new(
        schedule.config(),
        SamplerKind::Ddim { eta: 0.0 },
        a.warmup.max(1) as usize,
    );
    say(
        a,
        format!(
            "bench sample: preset {} ({:.2}M parameters), DDIM-{steps}, batch {b}, {precision}, on {}",
            a.preset,
            net.num_params() as f64 / 1e6,
            describe(&device)
        ),
    );
    let item = net.input_shape(1).len();
    let ids: Vec<u64> = (0..b as u64).collect();
    let labels: Option<Vec<u32>> = net
        .config
        .num_class_embeds
        .map(|n| (0..b).map(|i| (i % n) as u32).collect());
    let seconds = match &device {
        Device::Cpu => {
            let opts = |s: &SampleOptions| GenerateOptions {
                labels: labels.clone(),
                ..GenerateOptions::new(s.clone(), b, b, 0)
            };
            generate(
                &net,
                &weights,
                &schedule,
                &opts(&warm),
                None,
                &mut |_, _| {},
            )?;
            profile::enable(a.profile);
            let start = Instant::now();
            generate(
                &net,
                &weights,
                &schedule,
                &opts(&sampler),
                None,
                &mut |_, _| {},
            )?;
            let seconds = start.elapsed().as_secs_f64();
            profile::enable(false);
            seconds
        }
        Device::Cuda(gpu) => {
            let mut s = GpuSampler::new(gpu.clone(), &net, b, false, precision)?;
            s.load_weights(weights.values())?;
            let x_t = initial_noise(0, &ids, item)?;
            let mut x = x_t.clone();
            let run = |s: &mut GpuSampler, opts: &SampleOptions, x: &mut [f32]| {
                let evals = opts.evaluations(&schedule)?;
                s.run(
                    &net,
                    BatchJob {
                        evals: &evals,
                        seed: 0,
                        ids: &ids,
                        labels: labels.as_deref(),
                        guided: false,
                        x,
                        watch: &[],
                        on_eval: &mut |_, _| {},
                    },
                )
            };
            run(&mut s, &warm, &mut x)?;
            x.copy_from_slice(&x_t);
            let mut result = Ok(());
            let ms = gpu.time_ms(|| {
                result = run(&mut s, &sampler, &mut x);
                Ok(())
            })?;
            result?;
            f64::from(ms) / 1e3
        }
    };
    let r = Report {
        task: "sample",
        images: b as f64,
        steps: steps as u64,
        seconds,
        params: net.num_params(),
        precision,
    };
    r.print(a, &device, "sampling step");
    Ok(())
}

/// A line for the reader: on stdout, or on stderr with `--json` (whose stdout is the JSON alone).
fn say(a: &BenchArgs, line: String) {
    if a.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The device in a benchmark header; for the CPU its model, threads and tile kernel, since
/// CPU numbers mean nothing without them.
fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!(
            "cpu ({}, {}, {} tile)",
            profile::cpu_model().unwrap_or_else(|| "unknown model".into()),
            plural(rayon::current_num_threads() as u64, "thread", "threads"),
            crate::ops::tile::kernel_name()
        ),
        Device::Cuda(_) => device.describe(),
    }
}

/// One timed run.
struct Report {
    task: &'static str,
    images: f64,
    steps: u64,
    seconds: f64,
    params: usize,
    precision: Precision,
}

impl Report {
    fn print(&self, a: &BenchArgs, device: &Device, what: &str) {
        let ms = self.seconds * 1e3 / self.steps as f64;
        let per_s = self.images / self.seconds;
        let peak_rss = profile::peak_rss_bytes();
        say(a, format!("time per {what}: {ms:.3} ms"));
        say(a, format!("images/s: {per_s:.1}"));
        if let Some(b) = peak_rss {
            say(
                a,
                format!(
                    "peak resident memory: {:.1} MiB",
                    b as f64 / (1u64 << 20) as f64
                ),
            );
        }
        if a.profile {
            let threads = rayon::current_num_threads();
            let on = plural(threads as u64, "thread", "threads");
            say(
                a,
                format!(
                    "\nwhere a {what} goes ({on}, {} timed):\n{}",
                    self.steps,
                    profile::table(self.seconds / self.steps as f64, self.steps, threads)
                ),
            );
            let (peak, code) = crate::ops::fma_peak::measure(threads, 100);
            say(
                a,
                format!(
                    "f32 FMA peak measured now ({code}, {on}): {peak:.1} GFLOP/s; the GFLOP/s \
                     column against it: {}",
                    profile::shares_of_peak(peak)
                ),
            );
        }
        if a.json {
            let line = serde_json::json!({
                "task": self.task,
                "preset": a.preset,
                "batch": a.batch_size,
                "precision": self.precision.name(),
                "device": device.describe(),
                "steps": self.steps,
                "seconds": self.seconds,
                "images_per_s": per_s,
                "ms_per_step": ms,
                "params": self.params,
                "threads": rayon::current_num_threads(),
                "cpu": profile::cpu_model(),
                "cpu_kernel": matches!(device, Device::Cpu).then(crate::ops::tile::kernel_name),
                "peak_rss_bytes": peak_rss,
            });
            println!("{line}");
        }
    }
}
