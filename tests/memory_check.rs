//! The CPU memory check: a training or sampling batch too large for the memory available is
//! refused at once, with what it needs, what is available and a batch size that fits, before
//! anything is loaded or written (instead of `memory allocation of … bytes failed`, an abort,
//! or the OOM killer, after creating the run directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ddpm::cpu_memory::{self, Job};
use ddpm::diffusion::ScheduleConfig;
use ddpm::nn::{UNet, UNetConfig};
use ddpm::train::{TrainConfig, Trainer};

mod common;
use common::fails_with;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-memory-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `ddpm` with `args`, killing it if it has not finished within `limit`: a check that
/// does not refuse would start a step of hundreds of GiB, which must not hang the suite.
fn ddpm_within(args: &[&str], limit: Duration) -> Output {
    ddpm_env_within(args, &[], limit)
}

fn ddpm_env_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .env_remove(cpu_memory::SKIP_ENV)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ddpm");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ddpm {args:?} was still running after {limit:?} instead of refusing the batch:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The number of GiB just before `suffix` in `err`.
fn gib_before(err: &str, suffix: &str) -> f64 {
    let end = err
        .find(suffix)
        .unwrap_or_else(|| panic!("no `{suffix}` in {err}"));
    let start = err[..end].rfind(' ').unwrap() + 1;
    err[start..end].parse().unwrap()
}

/// Checks the message: the batch, the need above what is available, and a smaller batch size
/// to try (returned).
fn refused(out: &Output, verb: &str, batch: usize) -> usize {
    fails_with(
        out,
        1,
        &format!("out of memory: {verb} at batch {batch} needs about"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let need = gib_before(&err, " GiB on the CPU");
    let available = gib_before(&err, " GiB are available");
    assert!(need > available && available > 0.0, "{err}");
    let tail = err
        .split("--batch-size ")
        .nth(1)
        .expect("a batch size to try");
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    let k: usize = digits.parse().unwrap();
    assert!(
        err.contains(&format!("set {}=1 to run it anyway", cpu_memory::SKIP_ENV)),
        "{err}"
    );
    assert!((1..batch).contains(&k), "{err}");
    k
}

#[test]
fn cpu_training_refuses_a_batch_that_cannot_fit_and_writes_nothing() {
    let dir = scratch("train");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let args = [
        "train",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--batch-size",
        "200000",
        "--steps",
        "2",
        "--out",
        o,
        "-q",
    ];
    let started = Instant::now();
    let run = ddpm_within(&args, Duration::from_secs(60));
    refused(&run, "training", 200_000);
    // Refused from the batch size alone: before the data is read or the model built.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.exists(), "the run directory must not be created");

    // The escape hatch skips the check: the same command goes on to read its data (here a
    // folder that does not exist, so that it stops there).
    let missing = dir.join("no-such-folder");
    let data = format!("folder:{}", missing.display());
    let mut skipped = args.to_vec();
    skipped.extend(["--data", &data]);
    let run = ddpm_env_within(
        &skipped,
        &[(cpu_memory::SKIP_ENV, "1")],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && !err.contains("out of memory"),
        "{err}"
    );
    assert!(err.contains("no-such-folder"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cpu_resume_refuses_a_checkpoint_whose_batch_cannot_fit() {
    let dir = scratch("resume");
    // A run saved at the largest batch size a config allows (1 Mi images of the tiny model:
    // terabytes of activations).
    let cfg = TrainConfig {
        batch_size: ddpm::train::config::MAX_BATCH,
        steps: 10,
        ..TrainConfig::default()
    };
    let model = UNetConfig::preset("tiny").unwrap();
    let ck = dir.join("ck.safetensors");
    let trainer = Trainer::new(model, ScheduleConfig::default(), cfg).unwrap();
    trainer.checkpoint().save(&ck).unwrap();
    drop(trainer);
    let out = dir.join("resumed");
    let args = [
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    let run = ddpm_within(&args, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("a resumed run keeps its batch size"), "{err}");
    refused(&run, "training", ddpm::train::config::MAX_BATCH);
    assert!(!out.exists(), "nothing may be written");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cpu_sampling_refuses_a_batch_that_cannot_fit_and_writes_nothing() {
    let dir = scratch("sample");
    let cfg = TrainConfig {
        batch_size: 2,
        steps: 1,
        ..TrainConfig::default()
    };
    let ck = dir.join("ck.safetensors");
    Trainer::new(
        UNetConfig::preset("tiny").unwrap(),
        ScheduleConfig::default(),
        cfg,
    )
    .unwrap()
    .checkpoint()
    .save(&ck)
    .unwrap();
    let out = dir.join("samples");
    let args = [
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--device",
        "cpu",
        "--num",
        "200000",
        "--batch-size",
        "200000",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    let run = ddpm_within(&args, Duration::from_secs(60));
    refused(&run, "sampling", 200_000);
    assert!(!out.exists(), "nothing may be written");
    let _ = std::fs::remove_dir_all(dir);
}

/// The estimate stays an honest bound: the presets' usual batch sizes are estimated within a
/// factor of their measured peaks (resident set of whole runs on two cores: tiny at 32,
/// 0.09 GiB; ddpm-cifar10 at 8, 1.9 GiB; of a training step: ddpm-cifar10 at 64, 3.7 GiB), so
/// nothing a machine can run is refused.
#[test]
fn usual_batch_sizes_are_estimated_near_their_measured_peak() {
    let job = Job::Train {
        grid: 16,
        prefetch: 4,
        resumed: false,
    };
    let gib = |preset: &str, batch| {
        let net = UNet::new(UNetConfig::preset(preset).unwrap()).unwrap();
        (cpu_memory::bytes_needed_on(&net, job, batch, 2).unwrap() + cpu_memory::MARGIN) as f64
            / (1u64 << 30) as f64
    };
    assert!(gib("tiny", 32) < 0.3, "{}", gib("tiny", 32));
    assert!(
        gib("cifar10-small", 32) < 2.0,
        "{}",
        gib("cifar10-small", 32)
    );
    // Weights and optimizer state, and a checkpoint being written, dominate here: the run
    // peaked when it saved.
    assert!(gib("ddpm-cifar10", 8) > 1.9, "{}", gib("ddpm-cifar10", 8));
    assert!(gib("ddpm-cifar10", 8) < 2.6, "{}", gib("ddpm-cifar10", 8));
    assert!(gib("ddpm-cifar10", 64) < 6.5, "{}", gib("ddpm-cifar10", 64));
    // Twice the batch, nearly twice the activations.
    let (a, b) = (gib("ddpm-cifar10", 64), gib("ddpm-cifar10", 128));
    assert!(b > 1.6 * a && b < 2.0 * a, "{a} {b}");
}

/// Where the memory available can be read (Linux), it is a positive amount no larger than
/// the machine's.
#[test]
fn the_memory_available_is_read_on_linux() {
    if !Path::new("/proc/meminfo").exists() {
        assert!(cpu_memory::available().is_none() || cfg!(target_os = "linux"));
        return;
    }
    let a = cpu_memory::available().expect("read on Linux");
    assert!(a.bytes > 0, "{a:?}");
    let total: usize = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(a.bytes <= total * 1024, "{a:?} of {total} kB");
}
