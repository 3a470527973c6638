//! The machine's measured f32 FMA peak: the ceiling the convolution's GFLOP/s are held against.
//!
//! Each thread runs independent chains of fused multiply-adds on registers only (no memory
//! traffic), enough chains to cover the FMA latency on every port: 12 chains of 16-lane
//! AVX-512 FMAs where the CPU has AVX-512F, else 12 chains of portable 8-lane multiply-adds. The
//! rate counts 2 FLOPs per lane per step.

use rayon::prelude::*;
use std::time::Instant;

/// Steps per chain in one round.
pub const STEPS: usize = 1 << 20;
/// Independent chains per thread.
pub const CHAINS: usize = 12;

/// GFLOP/s of f32 FMAs over `threads` threads (each running `rounds` × 2²⁰ steps of 12 chains)
/// and the name of the code that ran.
pub fn measure(threads: usize, rounds: usize) -> (f64, &'static str) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("a thread pool for the FMA probe");
    let (lanes, name, run) = probe();
    // One untimed round per thread brings the clocks up.
    pool.install(|| {
        (0..threads).into_par_iter().for_each(|_| {
            std::hint::black_box(run(1));
        })
    });
    let start = Instant::now();
    let sink: f32 = pool.install(|| (0..threads).into_par_iter().map(|_| run(rounds)).sum());
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    let flops = (threads * rounds * STEPS * CHAINS * lanes * 2) as f64;
    (flops / seconds / 1e9, name)
}

/// The lanes per FMA, the code's name, and one thread's run of `rounds` rounds (returning a
/// value only so the work cannot be optimised away).
pub fn probe() -> (usize, &'static str, fn(usize) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::tile::has_avx512() {
        // SAFETY (of the call inside): AVX-512F is present.
        return (16, "avx512f", |rounds| unsafe { avx512::chains(rounds) });
    }
    (8, "portable", portable)
}

fn portable(rounds: usize) -> f32 {
    let mut acc = [[1.0f32; 8]; CHAINS];
    let (m, a) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..rounds * STEPS {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                // Not `mul_add`: without FMA in the build target it becomes a libm call.
                *v = *v * m + a;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CHAINS, STEPS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains(rounds: usize) -> f32 {
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let a = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds * STEPS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
        let mut lanes = [0f32; 16];
        let mut total = 0.0;
        for v in acc {
            // SAFETY: `lanes` holds 16 f32.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            total += lanes.iter().sum::<f32>();
        }
        total
    }
}
