//! Pooling for the FID Inception (inference only, no backward):
//! - [`pool2d`] with [`PoolKind::Max`]: `F.max_pool2d`, padding never chosen (it acts as −∞);
//! - [`pool2d`] with [`PoolKind::AvgValid`]: `F.avg_pool2d(count_include_pad=False)`, the mean
//!   of the window's values inside the input (TensorFlow's average pool, which pytorch-fid's
//!   FID blocks reproduce);
//! - [`global_avg_pool`]: `AdaptiveAvgPool2d((1, 1))`, the mean of each plane.
//!
//! All in floor mode (PyTorch's default): the last window starts at most `H + 2·pad − kernel`.

use rayon::prelude::*;

use crate::float::Real;
use crate::shape::{expect_len, Nchw, ShapeError};

/// What a window reduces to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest value inside the input.
    Max,
    /// The mean of the values inside the input (padding not counted).
    AvgValid,
}

/// Geometry of a square-window pooling; build it with [`PoolShape::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub input: Nchw,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    out_h: usize,
    out_w: usize,
}

impl PoolShape {
    /// Checks that every window holds at least one input value: kernel and stride positive,
    /// `pad` at most `kernel / 2` (PyTorch's rule), and the padded input no smaller than the
    /// window.
    pub fn new(input: Nchw, kernel: usize, stride: usize, pad: usize) -> Result<Self, ShapeError> {
        let err = |msg: String| ShapeError::new("pool2d", msg);
        if kernel == 0 || stride == 0 {
            return Err(err(format!(
                "kernel {kernel} and stride {stride} must be positive"
            )));
        }
        if 2 * pad > kernel {
            return Err(err(format!(
                "padding {pad} is more than half the kernel {kernel}"
            )));
        }
        let (ph, pw) = (input.h + 2 * pad, input.w + 2 * pad);
        if input.h == 0 || input.w == 0 || ph < kernel || pw < kernel {
            return Err(err(format!(
                "kernel {kernel} does not fit the padded input {ph}x{pw} (input {input})"
            )));
        }
        Ok(Self {
            input,
            kernel,
            stride,
            pad,
            out_h: (ph - kernel) / stride + 1,
            out_w: (pw - kernel) / stride + 1,
        })
    }

    /// (N, C, H_out, W_out)
    pub fn output(&self) -> Nchw {
        Nchw::new(self.input.n, self.input.c, self.out_h, self.out_w)
    }

    /// The input indices `[lo, hi)` a window starting at output index `o` covers along an axis
    /// of `len` values.
    #[inline]
    fn span(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.pad);
        let hi = (start + self.kernel).saturating_sub(self.pad).min(len);
        (lo, hi)
    }
}

/// y = pool(x). x: `s.input`, y: `s.output()`; parallel over the N·C planes.
///
/// Separably, per output row: the window's input rows reduced elementwise into one row (max or
/// sum; contiguous, so it vectorises), then each output reduces its columns of that row. The
/// average divides by the number of input values in the window (rows in × columns in).
pub fn pool2d<T: Real>(s: &PoolShape, kind: PoolKind, x: &[T], y: &mut [T]) {
    expect_len("pool2d", "x", x.len(), s.input.len(), s.input);
    expect_len("pool2d", "y", y.len(), s.output().len(), s.output());
    let (h, w) = (s.input.h, s.input.w);
    let (oh, ow) = (s.out_h, s.out_w);
    if s.input.is_empty() {
        return;
    }
    let cols: Vec<(usize, usize)> = (0..ow).map(|ox| s.span(ox, w)).collect();
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each_init(
            || vec![T::zero(); w],
            |row, (y_p, x_p)| {
                for (oy, y_row) in y_p.chunks_exact_mut(ow).enumerate() {
                    let (y0, y1) = s.span(oy, h);
                    row.copy_from_slice(&x_p[y0 * w..(y0 + 1) * w]);
                    for iy in y0 + 1..y1 {
                        let src = &x_p[iy * w..(iy + 1) * w];
                        match kind {
                            PoolKind::Max => {
                                row.iter_mut().zip(src).for_each(|(r, &v)| *r = r.max(v))
                            }
                            PoolKind::AvgValid => {
                                row.iter_mut().zip(src).for_each(|(r, &v)| *r += v)
                            }
                        }
                    }
                    let rows_in = (y1 - y0) as f64;
                    for (out, &(x0, x1)) in y_row.iter_mut().zip(&cols) {
                        let window = &row[x0..x1];
                        *out = match kind {
                            PoolKind::Max => window[1..].iter().fold(window[0], |m, &v| m.max(v)),
                            PoolKind::AvgValid => {
                                let sum = window[1..].iter().fold(window[0], |a, &v| a + v);
                                sum / T::lit(rows_in * (x1 - x0) as f64)
                            }
                        };
                    }
                }
            },
        );
}

/// y[n, c] = mean of x[n, c, ·, ·].   x: (N, C, H, W), y: (N, C)
pub fn global_avg_pool<T: Real>(input: Nchw, x: &[T], y: &mut [T]) {
    expect_len("global_avg_pool", "x", x.len(), input.len(), input);
    expect_len(
        "global_avg_pool",
        "y",
        y.len(),
        input.n * input.c,
        format!("({}, {})", input.n, input.c),
    );
    let hw = input.hw();
    if hw == 0 {
        return;
    }
    let scale = T::lit(1.0 / hw as f64);
    y.par_iter_mut()
        .zip(x.par_chunks(hw))
        .for_each(|(y, plane)| *y = plane.iter().copied().sum::<T>() * scale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    /// The textbook definition, written independently: pad the plane with `None`, slide the
    /// window over every floor-mode position, reduce what is `Some`, in f64.
    fn reference(
        x: &[f64],
        input: Nchw,
        k: usize,
        st: usize,
        p: usize,
        kind: PoolKind,
    ) -> Vec<f64> {
        let (hp, wp) = (input.h + 2 * p, input.w + 2 * p);
        let mut out = Vec::new();
        for plane in x.chunks(input.hw()) {
            let at = |r: usize, c: usize| -> Option<f64> {
                let (r, c) = (r as isize - p as isize, c as isize - p as isize);
                let inside = r >= 0 && c >= 0 && (r as usize) < input.h && (c as usize) < input.w;
                inside.then(|| plane[r as usize * input.w + c as usize])
            };
            let mut r0 = 0;
            while r0 + k <= hp {
                let mut c0 = 0;
                while c0 + k <= wp {
                    let vals: Vec<f64> = (r0..r0 + k)
                        .flat_map(|r| (c0..c0 + k).map(move |c| (r, c)))
                        .filter_map(|(r, c)| at(r, c))
                        .collect();
                    out.push(match kind {
                        PoolKind::Max => vals.iter().copied().fold(f64::MIN, f64::max),
                        PoolKind::AvgValid => vals.iter().sum::<f64>() / vals.len() as f64,
                    });
                    c0 += st;
                }
                r0 += st;
            }
        }
        out
    }

    #[test]
    fn pooling_matches_the_textbook_definition() {
        let mut rng = Philox::new(3);
        // The Inception's three poolings, on odd and even sizes, plus a kernel-2 case.
        for (input, k, st, p) in [
            (Nchw::new(2, 3, 9, 7), 3, 2, 0),
            (Nchw::new(1, 2, 8, 8), 3, 2, 0),
            (Nchw::new(2, 2, 5, 6), 3, 1, 1),
            (Nchw::new(1, 1, 1, 1), 3, 1, 1),
            (Nchw::new(1, 3, 6, 5), 2, 2, 1),
        ] {
            let x: Vec<f64> = rng.uniform_vec(input.len(), -2.0, 1.0);
            let s = PoolShape::new(input, k, st, p).unwrap();
            for kind in [PoolKind::Max, PoolKind::AvgValid] {
                let want = reference(&x, input, k, st, p, kind);
                assert_eq!(want.len(), s.output().len(), "{input} k{k}");
                let mut y = vec![0.0; s.output().len()];
                pool2d(&s, kind, &x, &mut y);
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{kind:?} {input} k{k} s{st} p{p} [{i}]: {a} vs {b}"
                    );
                }
                let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let mut yf = vec![0.0f32; s.output().len()];
                pool2d(&s, kind, &xf, &mut yf);
                for (a, b) in yf.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn average_ignores_padding_and_max_ignores_negative_padding() {
        // A 2x2 plane of -1: every 3x3 window at stride 1, pad 1 sees only the four -1s, so the
        // average is -1 (not -4/9 as with zeros counted) and the max is -1 (not the padding's 0).
        let input = Nchw::new(1, 1, 2, 2);
        let s = PoolShape::new(input, 3, 1, 1).unwrap();
        let x = [-1.0f32; 4];
        let mut y = [0.0f32; 4];
        pool2d(&s, PoolKind::AvgValid, &x, &mut y);
        assert_eq!(y, [-1.0; 4]);
        pool2d(&s, PoolKind::Max, &x, &mut y);
        assert_eq!(y, [-1.0; 4]);
        // Corner of a 3x3 ramp: mean of the 2x2 corner block.
        let s = PoolShape::new(Nchw::new(1, 1, 3, 3), 3, 1, 1).unwrap();
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut y = vec![0.0f32; 9];
        pool2d(&s, PoolKind::AvgValid, &x, &mut y);
        assert_eq!(y[0], (0.0 + 1.0 + 3.0 + 4.0) / 4.0);
        assert_eq!(y[4], 4.0);
    }

    #[test]
    fn inception_geometry() {
        let s = PoolShape::new(Nchw::new(1, 64, 147, 147), 3, 2, 0).unwrap();
        assert_eq!(s.output(), Nchw::new(1, 64, 73, 73));
        let s = PoolShape::new(Nchw::new(1, 192, 71, 71), 3, 2, 0).unwrap();
        assert_eq!(s.output(), Nchw::new(1, 192, 35, 35));
        let s = PoolShape::new(Nchw::new(1, 288, 35, 35), 3, 2, 0).unwrap();
        assert_eq!(s.output(), Nchw::new(1, 288, 17, 17));
        let s = PoolShape::new(Nchw::new(1, 768, 17, 17), 3, 2, 0).unwrap();
        assert_eq!(s.output(), Nchw::new(1, 768, 8, 8));
        assert!(PoolShape::new(Nchw::new(1, 1, 4, 4), 3, 1, 2).is_err());
        assert!(PoolShape::new(Nchw::new(1, 1, 1, 1), 3, 2, 0).is_err());
        assert!(PoolShape::new(Nchw::new(1, 1, 4, 4), 3, 0, 0).is_err());
    }

    #[test]
    fn global_average_is_the_plane_mean() {
        let input = Nchw::new(2, 3, 4, 5);
        let x: Vec<f64> = Philox::new(5).uniform_vec(input.len(), -1.0, 3.0);
        let mut y = vec![0.0; 6];
        global_avg_pool(input, &x, &mut y);
        for (i, plane) in x.chunks(20).enumerate() {
            let mean = plane.iter().sum::<f64>() / 20.0;
            assert!((y[i] - mean).abs() < 1e-12);
        }
    }
}
