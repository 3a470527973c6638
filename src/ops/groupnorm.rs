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

    fn channel_of(&self, block: usize, i: usize) -> usize {
        (block % self.groups) * (self.x.c / self.groups) + i / self.x.hw()
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
    s.check(
        "group_norm_forward",
        x.len(),
        y.len(),
        mean.len(),
        rstd.len(),
    );
    if let Some(a) = affine {
        expect_len(
            "group_norm_forward",
            "gamma",
            a.gamma.len(),
            s.x.c,
            format!("({})", s.x.c),
        );
        expect_len(
            "group_norm_forward",
            "beta",
            a.beta.len(),
            s.x.c,
            format!("({})", s.x.c),
        );
    }
    let n = s.group_len();
    if n == 0 {
        return;
    }
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .for_each(|(block, ((y_g, x_g), (mean_g, rstd_g)))| {
            let mu = x_g.iter().map(|v| v.as_f64()).sum::<f64>() / n as f64;
            let var = x_g.iter().map(|v| (v.as_f64() - mu).powi(2)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + s.eps).sqrt();
            let (mu_t, r_t) = (T::lit(mu), T::lit(r));
            *mean_g = mu_t;
            *rstd_g = r_t;
            for (i, (yv, &xv)) in y_g.iter_mut().zip(x_g).enumerate() {
                let xhat = (xv - mu_t) * r_t;
                *yv = match affine {
                    Some(a) => {
                        let c = s.channel_of(block, i);
                        a.gamma[c] * xhat + a.beta[c]
                    }
                    None => xhat,
                };
            }
        });
}

/// Backward of [`group_norm_forward`]. `dx` is written; `(dgamma, dbeta)` accumulate.
///   dx̂ = dy · γ,  dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))   (means over the group)
///   dγ_c += Σ dy · x̂,  dβ_c += Σ dy                                  (sums over B and H·W)
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
    s.check(
        "group_norm_backward",
        x.len(),
        dy.len(),
        mean.len(),
        rstd.len(),
    );
    expect_len("group_norm_backward", "dx", dx.len(), x.len(), s.x);
    let n = s.group_len();
    if n == 0 {
        return;
    }
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
        .enumerate()
        .for_each(|(block, (dx_g, (x_g, dy_g)))| {
            let (mu, r) = (mean[block], rstd[block]);
            let g = |i: usize| match gamma {
                Some(gm) => dy_g[i] * gm[s.channel_of(block, i)],
                None => dy_g[i],
            };
            let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
            for (i, &xv) in x_g.iter().enumerate() {
                let gi = g(i);
                sum_g += gi.as_f64();
                sum_gx += (gi * (xv - mu) * r).as_f64();
            }
            let (m1, m2) = (T::lit(sum_g / n as f64), T::lit(sum_gx / n as f64));
            for (i, (d, &xv)) in dx_g.iter_mut().zip(x_g).enumerate() {
                let xhat = (xv - mu) * r;
                *d = r * (g(i) - m1 - xhat * m2);
            }
        });

    if let Some((dgamma, dbeta)) = dparams {
        let c_len = s.x.c;
        expect_len(
            "group_norm_backward",
            "dgamma",
            dgamma.len(),
            c_len,
            format!("({c_len})"),
        );
        expect_len(
            "group_norm_backward",
            "dbeta",
            dbeta.len(),
            c_len,
            format!("({c_len})"),
        );
        let (hw, groups, per_group) = (s.x.hw(), s.groups, c_len / s.groups);
        dgamma
            .par_iter_mut()
            .zip(dbeta.par_iter_mut())
            .enumerate()
            .for_each(|(c, (dg, db))| {
                let (mut sg, mut sb) = (0.0f64, 0.0f64);
                for b in 0..s.x.n {
                    let stat = b * groups + c / per_group;
                    let base = (b * c_len + c) * hw;
                    for i in base..base + hw {
                        let xhat = (x[i] - mean[stat]) * rstd[stat];
                        sg += (dy[i] * xhat).as_f64();
                        sb += dy[i].as_f64();
                    }
                }
                *dg += T::lit(sg);
                *db += T::lit(sb);
            });
    }
}
