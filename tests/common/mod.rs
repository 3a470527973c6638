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
