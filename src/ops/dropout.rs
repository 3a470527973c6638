//! Inverted dropout with a counter-based mask: element i is kept iff Philox word i of the
//! (seed, stream) pair is at least `keep_threshold`; kept values are scaled by 1/(1 − p).
//!
//! No mask is stored: the backward regenerates it from the same arguments, exactly as the CUDA
//! kernel does (`dropout_forward_*` in kernels/elementwise.cu, which also serves the backward),
//! so CPU and GPU drop the same elements. Saved for backward: nothing but `DropoutArgs`.

use rayon::prelude::*;

use super::PAR_CHUNK;
use crate::float::Real;
use crate::rng::philox_word;
use crate::shape::{expect_len, ShapeError};

/// Field for field the `DropoutArgs` struct of kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropoutArgs {
    pub seed: u64,
    /// Distinguishes the call sites (layer, step) that share a seed.
    pub stream: u64,
    pub keep_threshold: u32,
    /// 1 / (1 − p), rounded to f32 once so CPU and GPU multiply by the same number.
    pub scale: f32,
}

impl DropoutArgs {
    /// Drop probability `p` in [0, 1).
    pub fn new(p: f64, seed: u64, stream: u64) -> Result<Self, ShapeError> {
        if !(0.0..1.0).contains(&p) {
            return Err(ShapeError::new(
                "dropout",
                format!("probability must be in [0, 1), got {p}"),
            ));
        }
        // P(word < threshold) = threshold / 2³² ≈ p.
        let keep_threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        Ok(Self {
            seed,
            stream,
            keep_threshold,
            scale: (1.0 / (1.0 - p)) as f32,
        })
    }

    #[inline]
    pub fn keeps(&self, i: usize) -> bool {
        philox_word(self.seed, self.stream, i as u64) >= self.keep_threshold
    }
}

fn masked_scale<T: Real>(a: &DropoutArgs, x: &[T], y: &mut [T]) {
    let scale = T::lit(a.scale as f64);
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            let base = chunk * PAR_CHUNK;
            for (j, (yv, &xv)) in y.iter_mut().zip(x).enumerate() {
                *yv = if a.keeps(base + j) {
                    xv * scale
                } else {
                    T::zero()
                };
            }
        });
}

pub fn dropout_forward<T: Real>(a: &DropoutArgs, x: &[T], y: &mut [T]) {
    expect_len(
        "dropout_forward",
        "y",
        y.len(),
        x.len(),
        format!("({})", x.len()),
    );
    masked_scale(a, x, y);
}

/// dx = mask · dy / (1 − p)  (written)
pub fn dropout_backward<T: Real>(a: &DropoutArgs, dy: &[T], dx: &mut [T]) {
    expect_len(
        "dropout_backward",
        "dx",
        dx.len(),
        dy.len(),
        format!("({})", dy.len()),
    );
    masked_scale(a, dy, dx);
}
