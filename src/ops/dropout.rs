//! Inverted dropout with a counter-based mask: element i is kept iff Philox word i of the
//! (seed, stream) pair is at least `keep_threshold`; kept values are scaled by 1/(1 − p).
//!
//! No mask is stored: the backward regenerates it from the same arguments, exactly as the CUDA
//! kernel does (`dropout_forward_*` in kernels/elementwise.cu, which also serves the backward),
//! so CPU and GPU drop the same elements. Saved for backward: nothing but `DropoutArgs`.
//! The CPU computes each Philox block once for its four elements, sixteen blocks at a time in
//! vector registers ([`philox_blocks`]): the same words, so the same mask.

use rayon::prelude::*;

use super::simd::multiversion;
use super::PAR_CHUNK;
use crate::float::Real;
use crate::rng::{philox_blocks, philox_word};
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

/// Philox blocks generated together: element i takes word i % 4 of block i / 4, so one batch
/// covers `4 · LANES` consecutive elements.
const LANES: usize = 16;
const GROUP: usize = 4 * LANES;
const _: () = assert!(PAR_CHUNK.is_multiple_of(GROUP));

multiversion! {
    /// y[j] = x[j] · scale where element `first + j` is kept, else 0; `first` is a multiple of 4.
    fn masked_scale_chunk<T: Real>(a: &DropoutArgs, first: usize, x: &[T], y: &mut [T]) {
        let scale = T::lit(a.scale as f64);
        let mut block = (first / 4) as u64;
        let mut ys = y.chunks_exact_mut(GROUP);
        let mut xs = x.chunks_exact(GROUP);
        for (yg, xg) in (&mut ys).zip(&mut xs) {
            let (yg, xg): (&mut [T; GROUP], &[T; GROUP]) =
                (yg.try_into().unwrap(), xg.try_into().unwrap());
            let w = philox_blocks::<LANES>(a.seed, a.stream, block);
            for l in 0..LANES {
                for (k, word) in w.iter().enumerate() {
                    let i = 4 * l + k;
                    yg[i] = if word[l] >= a.keep_threshold {
                        xg[i] * scale
                    } else {
                        T::zero()
                    };
                }
            }
            block += LANES as u64;
        }
        let (yt, xt) = (ys.into_remainder(), xs.remainder());
        for (yq, xq) in yt.chunks_mut(4).zip(xt.chunks(4)) {
            let w = philox_blocks::<1>(a.seed, a.stream, block);
            for ((yv, &xv), word) in yq.iter_mut().zip(xq).zip(&w) {
                *yv = if word[0] >= a.keep_threshold {
                    xv * scale
                } else {
                    T::zero()
                };
            }
            block += 1;
        }
    }
}

fn masked_scale<T: Real>(a: &DropoutArgs, x: &[T], y: &mut [T]) {
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .enumerate()
        .for_each(|(chunk, (y, x))| masked_scale_chunk(a, chunk * PAR_CHUNK, x, y));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_philox_word_i_for_element_i() {
        // Lengths around a batch of blocks and a rayon chunk, so every tail path runs.
        let a = DropoutArgs::new(0.3, 0x1234_5678_9ABC, 11).unwrap();
        for n in [
            0,
            1,
            3,
            4,
            5,
            63,
            64,
            65,
            130,
            PAR_CHUNK - 1,
            PAR_CHUNK + 7,
            2 * PAR_CHUNK + 66,
        ] {
            let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
            let mut y = vec![f32::NAN; n];
            dropout_forward(&a, &x, &mut y);
            for i in 0..n {
                let want = if a.keeps(i) { x[i] * a.scale } else { 0.0 };
                assert_eq!(y[i].to_bits(), want.to_bits(), "n {n}, element {i}");
            }
            let mut dx = vec![f32::NAN; n];
            dropout_backward(&a, &x, &mut dx);
            assert_eq!(dx, y);
        }
    }
}
