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
