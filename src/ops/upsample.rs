//! Nearest-neighbour 2× upsampling: y[n, c, 2i + a, 2j + b] = x[n, c, i, j] for a, b ∈ {0, 1}.
//! Saved for backward: nothing.

use rayon::prelude::*;

use super::PAR_CHUNK;
use crate::float::Real;
use crate::shape::{expect_len, Nchw};

/// Rows of x (of `w` values) per rayon task: about [`PAR_CHUNK`] elements of y. Planes are
/// contiguous, so the N·C·H rows are the whole tensor, and a task may span planes.
fn rows_per_task(w: usize) -> usize {
    (PAR_CHUNK / (4 * w)).max(1)
}

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
    // Each row of x becomes two rows of y, of 2W values each.
    let rows = rows_per_task(w);
    y.par_chunks_mut(4 * w * rows)
        .zip(x.par_chunks(w * rows))
        .for_each(|(y, x)| {
            for (y_rows, x_row) in y.chunks_exact_mut(4 * w).zip(x.chunks_exact(w)) {
                let (top, bottom) = y_rows.split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(x_row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
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
    let rows = rows_per_task(w);
    dx.par_chunks_mut(w * rows)
        .zip(dy.par_chunks(4 * w * rows))
        .for_each(|(dx, dy)| {
            for (dx_row, dy_rows) in dx.chunks_exact_mut(w).zip(dy.chunks_exact(4 * w)) {
                let (top, bottom) = dy_rows.split_at(2 * w);
                let pairs = top.chunks_exact(2).zip(bottom.chunks_exact(2));
                for (d, (t, b)) in dx_row.iter_mut().zip(pairs) {
                    *d = t[0] + t[1] + b[0] + b[1];
                }
            }
        });
}
