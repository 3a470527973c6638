//! Bilinear resizing as `F.interpolate(mode="bilinear", align_corners=False)` computes it (no
//! antialiasing), which pytorch-fid applies to every image before the Inception (to 299×299).
//!
//! Output index `o` of an axis resized from `n` to `m` values reads the input at
//! `p = max((o + ½)·n/m − ½, 0)`: the values at `⌊p⌋` and `min(⌊p⌋ + 1, n − 1)`, weighted
//! `1 − (p − ⌊p⌋)` and `p − ⌊p⌋`. The positions and weights are computed in f32 as PyTorch's
//! CPU kernel does, so the resized image matches it to rounding.

use crate::float::Real;

/// One output index's two input indices and their weights.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

fn taps(n: usize, m: usize) -> Vec<Tap> {
    let scale = n as f32 / m as f32;
    (0..m)
        .map(|o| {
            let p = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            // p ≥ 0, so the cast truncates towards −∞; p < n always, so i0 ≤ n − 1.
            let i0 = (p as usize).min(n - 1);
            let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
            let w1 = p - i0 as f32;
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// Resizes `c` planes of `h`×`w` (x, row-major) to `oh`×`ow` (y). Any sizes ≥ 1, up or down.
pub fn resize_bilinear<T: Real>(
    c: usize,
    (h, w): (usize, usize),
    x: &[T],
    (oh, ow): (usize, usize),
    y: &mut [T],
) {
    assert!(
        h > 0 && w > 0 && oh > 0 && ow > 0,
        "resize_bilinear: empty size"
    );
    assert_eq!(x.len(), c * h * w, "resize_bilinear: x is not {c}×{h}×{w}");
    assert_eq!(
        y.len(),
        c * oh * ow,
        "resize_bilinear: y is not {c}×{oh}×{ow}"
    );
    let (rows, cols) = (taps(h, oh), taps(w, ow));
    for (x_p, y_p) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
        for (ry, y_row) in rows.iter().zip(y_p.chunks_exact_mut(ow)) {
            let (r0, r1) = (&x_p[ry.i0 * w..][..w], &x_p[ry.i1 * w..][..w]);
            let (h0, h1) = (T::lit(ry.w0 as f64), T::lit(ry.w1 as f64));
            for (cx, out) in cols.iter().zip(y_row.iter_mut()) {
                let (w0, w1) = (T::lit(cx.w0 as f64), T::lit(cx.w1 as f64));
                *out =
                    h0 * (w0 * r0[cx.i0] + w1 * r0[cx.i1]) + h1 * (w0 * r1[cx.i0] + w1 * r1[cx.i1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    /// The definition in f64, one axis at a time: sample the piecewise-linear interpolant of
    /// the input at the centre of each output cell, clamped to the first and last input centres.
    fn reference((h, w): (usize, usize), x: &[f64], (oh, ow): (usize, usize)) -> Vec<f64> {
        let along = |v: &dyn Fn(usize) -> f64, n: usize, o: usize, m: usize| {
            let p = ((o as f64 + 0.5) * n as f64 / m as f64 - 0.5).clamp(0.0, (n - 1) as f64);
            let i = p.floor() as usize;
            let f = p - i as f64;
            v(i) * (1.0 - f) + v((i + 1).min(n - 1)) * f
        };
        let mut out = Vec::new();
        for plane in x.chunks(h * w) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = |iy: usize| along(&|ix| plane[iy * w + ix], w, ox, ow);
                    out.push(along(&row, h, oy, oh));
                }
            }
        }
        out
    }

    #[test]
    fn matches_pytorch_on_small_cases() {
        // torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False).
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut y = [0.0f32; 20];
        resize_bilinear(1, (2, 3), &x, (5, 4), &mut y);
        let want = [
            1.0, 1.625, 2.375, 3.0, 1.3, 1.925, 2.675, 3.3, 2.5, 3.125, 3.875, 4.5, 3.7, 4.325,
            5.075, 5.7, 4.0, 4.625, 5.375, 6.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        let mut y = [0.0f32; 2];
        resize_bilinear(1, (1, 5), &[0.0, 1.0, 2.0, 3.0, 4.0], (1, 2), &mut y);
        assert_eq!(y, [0.75, 3.25]);
        let mut y = [0.0f32; 4];
        resize_bilinear(1, (1, 2), &[0.0, 1.0], (1, 4), &mut y);
        assert_eq!(y, [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn matches_the_definition_up_and_down() {
        let mut rng = Philox::new(9);
        for (c, from, to) in [
            (3, (32, 32), (299, 299)),
            (2, (28, 36), (299, 299)),
            (1, (7, 5), (3, 11)),
            (1, (1, 1), (4, 3)),
            (2, (300, 310), (299, 299)),
        ] {
            let x: Vec<f64> = rng.uniform_vec(c * from.0 * from.1, 0.0, 1.0);
            let want = reference(from, &x, to);
            let mut y = vec![0.0; c * to.0 * to.1];
            resize_bilinear(c, from, &x, to, &mut y);
            let err = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            // Positions are rounded to f32 as in PyTorch: off by up to a few ulps of the input
            // size, times the data's slope (at most 1 here).
            let tol = 4.0 * from.0.max(from.1) as f64 * f64::from(f32::EPSILON);
            assert!(err < tol, "{from:?} → {to:?}: {err} (tolerance {tol})");
        }
    }

    #[test]
    fn same_size_is_the_identity() {
        let x: Vec<f32> = (0..30).map(|v| v as f32 * 0.1).collect();
        let mut y = vec![0.0f32; 30];
        resize_bilinear(2, (3, 5), &x, (3, 5), &mut y);
        assert_eq!(x, y);
    }
}
