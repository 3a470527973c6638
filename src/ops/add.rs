//! Residual add, scaling, and the per-channel broadcast add that injects the time embedding.
//! CUDA twins: `add_*`, `scale_*`, `add_channel_bias_*` in kernels/elementwise.cu.

use rayon::prelude::*;

use super::simd::multiversion;
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

/// acc += x, in place (the backend's gradient accumulation: a residual path's dx, d(emb)).
pub fn add_inplace<T: Real>(acc: &mut [T], x: &[T]) {
    if x.len() != acc.len() {
        expect_len(
            "add_inplace",
            "x",
            x.len(),
            acc.len(),
            format!("({})", acc.len()),
        );
    }
    acc.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(acc, x)| {
            for (a, &b) in acc.iter_mut().zip(x) {
                *a += b;
            }
        });
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
    // Whole planes per task, about PAR_CHUNK elements.
    let planes = planes_per_task(hw);
    y.par_chunks_mut(planes * hw)
        .zip(x.par_chunks(planes * hw))
        .zip(t.par_chunks(planes))
        .for_each(|((y, x), t)| {
            for ((y, x), &tv) in y.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).zip(t) {
                for (yv, &xv) in y.iter_mut().zip(x) {
                    *yv = xv + tv;
                }
            }
        });
}

/// (N, C) planes of `hw` elements that make a rayon task of about [`PAR_CHUNK`] elements.
fn planes_per_task(hw: usize) -> usize {
    (PAR_CHUNK / hw).max(1)
}

multiversion! {
    /// dt[p] = Σ plane p of dy, in f64 with sixteen lanes (fixed order: the same for any
    /// threads), rounded once.
    fn plane_sums<T: Real>(dy: &[T], hw: usize, dt: &mut [T]) {
        for (d, plane) in dt.iter_mut().zip(dy.chunks_exact(hw)) {
            let mut lanes = [0.0f64; 16];
            let chunks = plane.chunks_exact(16);
            let tail: f64 = chunks.remainder().iter().map(|v| v.as_f64()).sum();
            for c in chunks {
                for (acc, &v) in lanes.iter_mut().zip(c) {
                    *acc += v.as_f64();
                }
            }
            *d = T::lit(lanes.iter().sum::<f64>() + tail);
        }
    }
}

/// dx = dy (when asked for), dt[n, c] = Σ_hw dy[n, c, :, :]  (both written; the sums in f64)
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
    let planes = planes_per_task(hw);
    dt.par_chunks_mut(planes)
        .zip(dy.par_chunks(planes * hw))
        .for_each(|(dt, dy)| plane_sums(dy, hw, dt));
}
