//! SiLU (swish): y = x · σ(x). Saved for backward: the input x.
//! CUDA twin: `silu_forward_*` / `silu_backward_*` in kernels/elementwise.cu.

use rayon::prelude::*;

use super::PAR_CHUNK;
use crate::float::{sigmoid, Real};
use crate::shape::expect_len;

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
        .for_each(|(y, x)| {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = xv * sigmoid(xv);
            }
        });
}

/// dx = dy · σ(x) · (1 + x · (1 − σ(x)))  (written)
pub fn silu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    let shape = format!("({})", x.len());
    expect_len("silu_backward", "dy", dy.len(), x.len(), &shape);
    expect_len("silu_backward", "dx", dx.len(), x.len(), &shape);
    dx.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK).zip(dy.par_chunks(PAR_CHUNK)))
        .for_each(|(dx, (x, dy))| {
            for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dy) {
                let s = sigmoid(xv);
                *d = g * s * (T::one() + xv * (T::one() - s));
            }
        });
}
