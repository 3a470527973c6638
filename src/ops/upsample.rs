//! Nearest-neighbour 2× upsampling: y[n, c, 2i + a, 2j + b] = x[n, c, i, j] for a, b ∈ {0, 1}.
//! Saved for backward: nothing.

use rayon::prelude::*;

use crate::float::Real;
use crate::shape::{expect_len, Nchw};

/// x: (N, C, H, W) → y: (N, C, 2H, 2W)
pub fn upsample_nearest2x_forward<T: Real>(x_shape: Nchw, x: &[T], y: &mut [T]) {
    let (h, w) = (x_shape.h, x_shape.w);
    expect_len(
        "upsample_nearest2x_forward",
        "x",
        x.len(),
        x_shape.len(),
        x_shape,
    );
    expect_len(
        "upsample_nearest2x_forward",
        "y",
        y.len(),
        4 * x_shape.len(),
        Nchw::new(x_shape.n, x_shape.c, 2 * h, 2 * w),
    );
    if x_shape.is_empty() {
        return;
    }
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(y_p, x_p)| {
            for (oy, y_row) in y_p.chunks_exact_mut(2 * w).enumerate() {
                let x_row = &x_p[(oy / 2) * w..(oy / 2 + 1) * w];
                for (ox, v) in y_row.iter_mut().enumerate() {
                    *v = x_row[ox / 2];
                }
            }
        });
}

/// dx[n, c, i, j] = Σ of the four dy values it was copied to  (written)
pub fn upsample_nearest2x_backward<T: Real>(x_shape: Nchw, dy: &[T], dx: &mut [T]) {
    let (h, w) = (x_shape.h, x_shape.w);
    expect_len(
        "upsample_nearest2x_backward",
        "dx",
        dx.len(),
        x_shape.len(),
        x_shape,
    );
    expect_len(
        "upsample_nearest2x_backward",
        "dy",
        dy.len(),
        4 * x_shape.len(),
        Nchw::new(x_shape.n, x_shape.c, 2 * h, 2 * w),
    );
    if x_shape.is_empty() {
        return;
    }
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(4 * h * w))
        .for_each(|(dx_p, dy_p)| {
            for i in 0..h {
                for j in 0..w {
                    let top = (2 * i) * 2 * w + 2 * j;
                    let bottom = top + 2 * w;
                    dx_p[i * w + j] = dy_p[top] + dy_p[top + 1] + dy_p[bottom] + dy_p[bottom + 1];
                }
            }
        });
}
