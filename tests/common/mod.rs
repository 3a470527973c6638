//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ddpm::rng::Philox;

/// `n` values uniform in [-1, 1), reproducible from `seed`.
pub fn uniform(n: usize, seed: u64) -> Vec<f64> {
    Philox::new(seed).uniform_vec(n, -1.0, 1.0)
}

/// `n` values from N(0, 1), reproducible from `seed`.
pub fn normal(n: usize, seed: u64) -> Vec<f64> {
    Philox::new(seed).normal_vec(n, 1.0)
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Runs `f` on a fresh rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// An 8×8 model small enough to train a few steps in a test (diffusers `UNet2DModel` fields).
pub const SMALL_MODEL: &str = r#"{
  "sample_size": 8, "in_channels": 3, "out_channels": 3,
  "block_out_channels": [8, 16], "layers_per_block": 1,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "norm_num_groups": 4, "attention_head_dim": null, "dropout": 0.1
}"#;

/// Runs the `ddpm` binary with `args`.
pub fn ddpm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

/// Asserts success (showing both streams otherwise) and returns stdout.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit `code`, `needle` in the message, and no sign of a panic.
pub fn fails_with(out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}:\n{err}"
    );
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    for bad in ["panicked", "internal error", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{err}");
    }
}

/// A fresh, empty folder for one test: `ddpm-NAME-PID` in the system's temporary folder.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`SMALL_MODEL`] written as `small.json` into `dir`; its path.
pub fn write_model(dir: &std::path::Path) -> String {
    let p = dir.join("small.json");
    std::fs::write(&p, SMALL_MODEL).unwrap();
    p.to_str().unwrap().to_string()
}

/// Two checkpoints hold the same training state, bit for bit.
pub fn assert_same_state(a: &ddpm::train::Checkpoint, b: &ddpm::train::Checkpoint) {
    assert_eq!((a.step, a.skipped_steps), (b.step, b.skipped_steps));
    for (what, x, y) in [
        ("weights", &a.weights, &b.weights),
        ("ema", &a.ema, &b.ema),
        ("adam.m", &a.adam_m, &b.adam_m),
        ("adam.v", &a.adam_v, &b.adam_v),
    ] {
        assert!(x == y, "{what} differ");
    }
}
