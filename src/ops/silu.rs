//! SiLU (swish): y = x · σ(x). Saved for backward: the input x.
//! CUDA twin: `silu_forward_*` / `silu_backward_*` in kernels/elementwise.cu.
//!
//! σ is [`super::simd::sigmoid`]: libm's `exp` in f64, a vectorisable exponential within 2 ulp
//! in f32; the loops are compiled for AVX2 and AVX-512 too ([`super::simd::multiversion`]).

use rayon::prelude::*;

use super::simd::{multiversion, silu, silu_grad};
use super::PAR_CHUNK;
use crate::float::Real;
use crate::shape::expect_len;

multiversion! {
    fn silu_chunk<T: Real>(x: &[T], y: &mut [T]) {
        for (yv, &xv) in y.iter_mut().zip(x) {
            *yv = silu(xv);
        }
    }
}

multiversion! {
    fn silu_backward_chunk<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
        for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dy) {
            *d = silu_grad(xv, g);
        }
    }
}

pub fn silu_forward<T: Real>(x: &[T], y: &mut [T]) {
    expect_len(
        "silu_forward",
        "y",
        y.len(),
        x.len(),
        format!("({})", x.len()),
    );
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| silu_chunk(x, y));
}

/// dx = dy · σ(x) · (1 + x · (1 − σ(x)))  (written)
pub fn silu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    let shape = format!("({})", x.len());
    expect_len("silu_backward", "dy", dy.len(), x.len(), &shape);
    expect_len("silu_backward", "dx", dx.len(), x.len(), &shape);
    dx.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK).zip(dy.par_chunks(PAR_CHUNK)))
        .for_each(|(dx, (x, dy))| silu_backward_chunk(x, dy, dx));
}
