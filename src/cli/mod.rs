//! Command-line interface: argument definitions and the commands they run.

mod args;
mod bench;
mod export;
mod fid;
mod interpolate;
mod invert;
mod model_source;
mod output;
mod sample;
mod sampling;
mod train;

use clap::{Args, Parser, Subcommand};

use crate::info::SystemInfo;
pub use export::ExportArgs;
pub use interpolate::InterpolateArgs;
pub use invert::InvertArgs;
pub use sample::SampleArgs;
pub use train::TrainArgs;

/// ddpm: a from-scratch diffusion engine — hand-written CUDA kernels, an explicit UNet
/// forward/backward, and a plain-Rust CPU reference backend computing the same functions.
#[derive(Debug, Parser)]
#[command(name = "ddpm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// CPU worker threads [default: one per core]. Results do not depend on this number.
    #[arg(long, global = true, value_name = "N", value_parser = args::between::<1, 65535>, display_order = 904)]
    pub threads: Option<u64>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the version, whether CUDA kernels are built in, the CUDA driver and devices found,
    /// and the CPU threads in use.
    Info(InfoArgs),
    /// Train a DDPM (on the GPU when there is one, else the CPU). With no arguments: the `tiny`
    /// model on the built-in synthetic shapes, about 4 minutes on two cores, writing sample
    /// grids, a loss curve, a CSV log and checkpoints to `runs/ddpm`.
    Train(Box<TrainArgs>),
    /// Draw images from a ddpm checkpoint or a diffusers model directory with one of six
    /// samplers (ddpm, ddim, euler, heun, euler-maruyama, dpm++2m): one PNG per image plus a
    /// grid.
    Sample(Box<SampleArgs>),
    /// Invert images to the noise a deterministic DDIM run decodes back to them (DDIM §5.4),
    /// decode that noise again, and report each image's reconstruction error: writes
    /// noise.safetensors (for `sample --init-noise`), reconstructions, a comparison grid and
    /// report.json.
    Invert(Box<InvertArgs>),
    /// Decode frames along the great circle between two noises — two seeds' initial noises or
    /// two images' DDIM inversions — with a deterministic sampler: frame_00.png, … and strip.png.
    Interpolate(Box<InterpolateArgs>),
    /// Write a checkpoint as a diffusers pipeline directory (UNet2DModel + DDPMScheduler).
    Export(Box<ExportArgs>),
    /// FID and KID between two image sets (folders, MNIST, CIFAR-10, `--save-raw` tensors) or
    /// their statistics files, with pytorch-fid's Inception on the CPU; writes statistics
    /// files pytorch-fid reads.
    Fid(Box<fid::FidArgs>),
    /// Measure training or sampling throughput (images/s) for a preset and batch size.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print instead what ptxas reported for each built-in kernel and target: registers,
    /// stack, spills, shared memory (the build fails on any spill or more than 255 registers).
    #[arg(long, conflicts_with = "json")]
    pub kernels: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK);
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n as usize);
    }
    pool.build_global().map_err(|e| {
        let what = cli
            .threads
            .map(|n| format!("--threads {n}: "))
            .unwrap_or_default();
        anyhow::anyhow!("{what}cannot start the thread pool: {e}")
    })?;
    // The command itself runs on one of the pool's workers: every parallel op it starts then
    // begins on that worker at once, instead of being handed over from an outside thread that
    // wakes a worker and sleeps until the op is done (tens of microseconds per op, a few
    // hundred ops per training step).
    rayon::scope(|_| dispatch(cli.command))
}

/// Stack of each pool worker: the command runs on one (the main thread's default, not the 2 MiB
/// of a spawned thread).
const WORKER_STACK: usize = 8 << 20;

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info(args) if args.kernels => {
            if crate::cuda::kernels::built_in() {
                print!("{}", crate::cuda::kernels::resource_report());
            } else {
                println!("no CUDA kernels are built into this ddpm (it was built without nvcc)");
            }
        }
        Command::Info(args) => {
            let info = SystemInfo::gather();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{info}");
            }
        }
        Command::Train(args) => train::run(*args)?,
        Command::Sample(args) => sample::run(*args)?,
        Command::Invert(args) => invert::run(*args)?,
        Command::Interpolate(args) => interpolate::run(*args)?,
        Command::Export(args) => export::run(*args)?,
        Command::Fid(args) => fid::run(*args)?,
        Command::Bench(cmd) => bench::run(cmd)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command below `cmd`, `cmd` included, with its path (`ddpm sample`).
    fn commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            commands(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    /// Every flag says what it is for, and its placeholder has one style: an upper-case name
    /// for a value (`<N>`, `<DIR>`, `<FILE|DIR>`), or the values themselves when they are a
    /// fixed set (`<karras|timesteps>`).
    #[test]
    fn every_flag_has_a_description_and_one_placeholder_style() {
        let mut all = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        commands(&cli, "ddpm".into(), &mut all);
        let mut bad = Vec::new();
        for (path, cmd) in &all {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let flag = format!("{path} --{}", arg.get_long().unwrap_or(id));
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    bad.push(format!("{flag}: no description"));
                }
                if !arg.get_action().takes_values() || arg.is_positional() {
                    continue;
                }
                let Some(names) = arg.get_value_names() else {
                    bad.push(format!("{flag}: no explicit placeholder"));
                    continue;
                };
                let name = names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                let upper = name.trim_end_matches(",…").split('|').all(|w| {
                    !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                });
                let choices =
                    name.contains('|') && !name.chars().any(|c| c.is_ascii_uppercase() && c != 'N');
                let fixed_set = !arg.get_possible_values().is_empty();
                if fixed_set && !choices && !name.ends_with(",…") {
                    bad.push(format!("{flag}: a fixed set of values shown as <{name}>"));
                } else if !(upper || choices) {
                    bad.push(format!("{flag}: placeholder <{name}>"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
