//! Residual add, scaling, and the per-channel broadcast add that injects the time embedding.
//! CUDA twins: `add_*`, `scale_*`, `add_channel_bias_*` in kernels/elementwise.cu.

use rayon::prelude::*;

use super::PAR_CHUNK;
use crate::float::Real;
use crate::shape::{expect_len, Nchw};

/// y = a + b. Its backward hands dy to both inputs unchanged (see [`add_backward`]).
pub fn add<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    let shape = format!("({})", a.len());
    expect_len("add", "b", b.len(), a.len(), &shape);
    expect_len("add", "y", y.len(), a.len(), &shape);
    y.par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((yv, &av), &bv) in y.iter_mut().zip(a).zip(b) {
                *yv = av + bv;
            }
        });
}

/// da = dy, db = dy  (written)
pub fn add_backward<T: Real>(dy: &[T], da: &mut [T], db: &mut [T]) {
    expect_len(
        "add_backward",
        "da",
        da.len(),
        dy.len(),
        format!("({})", dy.len()),
    );
    expect_len(
        "add_backward",
        "db",
        db.len(),
        dy.len(),
        format!("({})", dy.len()),
    );
    da.copy_from_slice(dy);
    db.copy_from_slice(dy);
}

/// y = alpha · x. The backward is the same op on dy: dx = alpha · dy.
pub fn scale<T: Real>(x: &[T], alpha: T, y: &mut [T]) {
    expect_len("scale", "y", y.len(), x.len(), format!("({})", x.len()));
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = alpha * xv;
            }
        });
}

/// y[n, c, :, :] = x[n, c, :, :] + t[n, c].   x, y: (N, C, H, W), t: (N, C)
pub fn add_channel_bias<T: Real>(shape: Nchw, x: &[T], t: &[T], y: &mut [T]) {
    expect_len("add_channel_bias", "x", x.len(), shape.len(), shape);
    expect_len(
        "add_channel_bias",
        "t",
        t.len(),
        shape.n * shape.c,
        format!("({}, {})", shape.n, shape.c),
    );
    expect_len("add_channel_bias", "y", y.len(), shape.len(), shape);
    let hw = shape.hw().max(1);
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .zip(t.par_iter())
        .for_each(|((y, x), &tv)| {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = xv + tv;
            }
        });
}

/// dx = dy (when asked for), dt[n, c] = Σ_hw dy[n, c, :, :]  (both written)
pub fn add_channel_bias_backward<T: Real>(
    shape: Nchw,
    dy: &[T],
    dx: Option<&mut [T]>,
    dt: &mut [T],
) {
    expect_len(
        "add_channel_bias_backward",
        "dy",
        dy.len(),
        shape.len(),
        shape,
    );
    expect_len(
        "add_channel_bias_backward",
        "dt",
        dt.len(),
        shape.n * shape.c,
        format!("({}, {})", shape.n, shape.c),
    );
    if let Some(dx) = dx {
        expect_len(
            "add_channel_bias_backward",
            "dx",
            dx.len(),
            shape.len(),
            shape,
        );
        dx.copy_from_slice(dy);
    }
    let hw = shape.hw().max(1);
    dt.par_iter_mut()
        .zip(dy.par_chunks(hw))
        .for_each(|(d, g)| *d = g.iter().copied().sum());
}
