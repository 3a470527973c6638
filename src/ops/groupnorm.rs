//! Group normalisation (Wu & He, 2018) with optional per-channel affine, NCHW.
//!
//! For each image and group of C/G channels: x̂ = (x − μ) · rstd, rstd = 1/√(σ² + eps), with the
//! biased variance; y = γ_c · x̂ + β_c. Statistics accumulate in f64.
//! Saved for backward: mean and rstd, (B, G) each.

use rayon::prelude::*;

use crate::float::Real;
use crate::shape::{expect_len, Nchw, ShapeError};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormShape {
    /// (B, C, H, W)
    pub x: Nchw,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNormShape {
    pub fn new(x: Nchw, groups: usize, eps: f64) -> Result<Self, ShapeError> {
        if groups == 0 || x.c % groups != 0 {
            return Err(ShapeError::new(
                "group_norm",
                format!(
                    "{} channels cannot be split into {groups} equal groups",
                    x.c
                ),
            ));
        }
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(ShapeError::new(
                "group_norm",
                format!("eps must be positive and finite, got {eps}"),
            ));
        }
        Ok(Self { x, groups, eps })
    }

    /// Elements in one (image, group) block — contiguous in NCHW.
    pub fn group_len(&self) -> usize {
        self.x.c / self.groups * self.x.hw()
    }

    /// Length of the saved `mean` / `rstd` buffers: B·G.
    pub fn stats_len(&self) -> usize {
        self.x.n * self.groups
    }

    /// Channels per group.
    fn group_channels(&self) -> usize {
        self.x.c / self.groups
    }

    fn check(&self, op: &str, x: usize, y: usize, mean: usize, rstd: usize) {
        expect_len(op, "x", x, self.x.len(), self.x);
        expect_len(op, "y", y, self.x.len(), self.x);
        let stats = format!("({}, {})", self.x.n, self.groups);
        expect_len(op, "mean", mean, self.stats_len(), &stats);
        expect_len(op, "rstd", rstd, self.stats_len(), &stats);
    }
}

/// Per-channel scale and shift, (C) each.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a, T> {
    pub gamma: &'a [T],
    pub beta: &'a [T],
}

/// y = GroupNorm(x); writes `mean` and `rstd` (B, G) for the backward.
pub fn group_norm_forward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    affine: Option<Affine<'_, T>>,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    const OP: &str = "group_norm_forward";
    s.check(OP, x.len(), y.len(), mean.len(), rstd.len());
    let c_shape = format!("({})", s.x.c);
    if let Some(a) = affine {
        expect_len(OP, "gamma", a.gamma.len(), s.x.c, &c_shape);
        expect_len(OP, "beta", a.beta.len(), s.x.c, &c_shape);
    }
    let (n, hw, cg) = (s.group_len(), s.x.hw(), s.group_channels());
    if n == 0 {
        return;
    }
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .for_each(|(block, ((y_g, x_g), (mean_g, rstd_g)))| {
            // Two passes (mean, then squared deviations) in f64: no cancellation.
            let mu = sum_f64(x_g, |v| v.as_f64()) / n as f64;
            let var = sum_f64(x_g, |v| (v.as_f64() - mu).powi(2)) / n as f64;
            let (mu_t, r_t) = (T::lit(mu), T::lit(1.0 / (var + s.eps).sqrt()));
            *mean_g = mu_t;
            *rstd_g = r_t;
            let first_c = (block % s.groups) * cg;
            for (ci, (y_c, x_c)) in y_g
                .chunks_exact_mut(hw)
                .zip(x_g.chunks_exact(hw))
                .enumerate()
            {
                // y = (x − μ) · (γ_c · rstd) + β_c
                let (scale, shift) = match affine {
                    Some(a) => (a.gamma[first_c + ci] * r_t, a.beta[first_c + ci]),
                    None => (r_t, T::zero()),
                };
                for (yv, &xv) in y_c.iter_mut().zip(x_c) {
                    *yv = (xv - mu_t) * scale + shift;
                }
            }
        });
}

/// Backward of [`group_norm_forward`]. `dx` is written; `(dgamma, dbeta)` accumulate.
///   dx̂ = dy · γ,  dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))   (means over the group)
///   dγ_c += Σ dy · x̂,  dβ_c += Σ dy                                  (sums over B and H·W)
/// Every sum above derives from two per-(image, channel) sums, S1 = Σ dy and S2 = Σ dy · x
/// (Σ dy · x̂ = rstd · (S2 − μ · S1)), so one pass computes them all.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    gamma: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
    dparams: Option<(&mut [T], &mut [T])>,
) {
    const OP: &str = "group_norm_backward";
    s.check(OP, x.len(), dy.len(), mean.len(), rstd.len());
    expect_len(OP, "dx", dx.len(), x.len(), s.x);
    let c_shape = format!("({})", s.x.c);
    if let Some(g) = gamma {
        expect_len(OP, "gamma", g.len(), s.x.c, &c_shape);
    }
    let (n, hw, cg, channels) = (s.group_len(), s.x.hw(), s.group_channels(), s.x.c);
    if n == 0 {
        return;
    }
    let gamma_of = |c: usize| gamma.map_or(1.0, |g| g[c].as_f64());

    // (S1, S2) per (image, channel): (B·C) pairs.
    let sums: Vec<(f64, f64)> = x
        .par_chunks(hw)
        .zip(dy.par_chunks(hw))
        .map(|(x_c, dy_c)| (sum_f64(dy_c, |g| g.as_f64()), sum_products_f64(dy_c, x_c)))
        .collect();
    // Σ dy · x̂ for one (image, channel), from its group's statistics.
    let dy_xhat = |b: usize, c: usize| {
        let stat = b * s.groups + c / cg;
        let (s1, s2) = sums[b * channels + c];
        rstd[stat].as_f64() * (s2 - mean[stat].as_f64() * s1)
    };

    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
        .enumerate()
        .for_each(|(block, (dx_g, (x_g, dy_g)))| {
            let (b, first_c) = (block / s.groups, (block % s.groups) * cg);
            let (mut sum_g, mut sum_gx) = (0.0, 0.0);
            for c in first_c..first_c + cg {
                sum_g += gamma_of(c) * sums[b * channels + c].0;
                sum_gx += gamma_of(c) * dy_xhat(b, c);
            }
            let (m1, m2) = (T::lit(sum_g / n as f64), T::lit(sum_gx / n as f64));
            let (mu, r) = (mean[block], rstd[block]);
            let chunks = dx_g
                .chunks_exact_mut(hw)
                .zip(x_g.chunks_exact(hw).zip(dy_g.chunks_exact(hw)));
            for (ci, (dx_c, (x_c, dy_c))) in chunks.enumerate() {
                let gm = T::lit(gamma_of(first_c + ci));
                for ((d, &xv), &g) in dx_c.iter_mut().zip(x_c).zip(dy_c) {
                    *d = r * (gm * g - m1 - (xv - mu) * r * m2);
                }
            }
        });

    if let Some((dgamma, dbeta)) = dparams {
        expect_len(OP, "dgamma", dgamma.len(), channels, &c_shape);
        expect_len(OP, "dbeta", dbeta.len(), channels, &c_shape);
        for (c, (dg, db)) in dgamma.iter_mut().zip(dbeta.iter_mut()).enumerate() {
            *dg += T::lit((0..s.x.n).map(|b| dy_xhat(b, c)).sum::<f64>());
            *db += T::lit((0..s.x.n).map(|b| sums[b * channels + c].0).sum::<f64>());
        }
    }
}

/// Σ f(x) in f64 with eight independent accumulators: the compiler can vectorize it, and the
/// order of additions is fixed, so the result does not depend on threads.
fn sum_f64<T: Real>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (acc, &v) in lanes.iter_mut().zip(c) {
            *acc += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Σ a · b in f64, like [`sum_f64`].
fn sum_products_f64<T: Real>(a: &[T], b: &[T]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x.as_f64() * y.as_f64())
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((acc, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *acc += x.as_f64() * y.as_f64();
        }
    }
    lanes.iter().sum::<f64>() + tail
}
