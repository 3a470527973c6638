//! Group normalisation (Wu & He, 2018) with optional per-channel affine, NCHW.
//!
//! For each image and group of C/G channels: x̂ = (x − μ) · rstd, rstd = 1/√(σ² + eps), with the
//! biased variance; y = γ_c · x̂ + β_c. Statistics accumulate in f64.
//! Saved for backward: mean and rstd, (B, G) each.
//!
//! [`group_norm_silu_forward`] / [`group_norm_silu_backward`] fuse the SiLU that follows the norm
//! in every residual block (CUDA twins: `group_norm_silu_*` in kernels/groupnorm.cu): y is never
//! stored, the backward recomputes it. Work is split by (image, group), each block's sums in a
//! fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::simd::{self, multiversion};
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
        if groups == 0 || !x.c.is_multiple_of(groups) {
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
    forward("group_norm_forward", s, x, affine, y, mean, rstd, false);
}

/// a = silu(GroupNorm(x)) in one sweep per group: the statistics (two passes over the group
/// while it sits in cache, the same numbers as [`group_norm_forward`]'s), then a = silu(y)
/// written directly: y is never stored. Writes `mean` and `rstd` (B, G) for
/// [`group_norm_silu_backward`]. Bitwise the same as [`group_norm_forward`] followed by
/// [`super::silu::silu_forward`].
pub fn group_norm_silu_forward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    affine: Option<Affine<'_, T>>,
    a: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    forward("group_norm_silu_forward", s, x, affine, a, mean, rstd, true);
}

#[allow(clippy::too_many_arguments)]
fn forward<T: Real>(
    op: &str,
    s: &GroupNormShape,
    x: &[T],
    affine: Option<Affine<'_, T>>,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    silu: bool,
) {
    s.check(op, x.len(), y.len(), mean.len(), rstd.len());
    let c_shape = format!("({})", s.x.c);
    if let Some(a) = affine {
        expect_len(op, "gamma", a.gamma.len(), s.x.c, &c_shape);
        expect_len(op, "beta", a.beta.len(), s.x.c, &c_shape);
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
            let first_c = (block % s.groups) * cg;
            let affine = affine.map(|a| {
                (
                    &a.gamma[first_c..first_c + cg],
                    &a.beta[first_c..first_c + cg],
                )
            });
            (*mean_g, *rstd_g) = forward_group(x_g, y_g, affine, hw, s.eps, silu);
        });
}

multiversion! {
    /// One (image, group) block of the forward: returns (mean, rstd) after writing y, or
    /// silu(y) when `silu`. `affine`: this group's (γ, β), `cg` values each.
    fn forward_group<T: Real>(
        x_g: &[T],
        y_g: &mut [T],
        affine: Option<(&[T], &[T])>,
        hw: usize,
        eps: f64,
        silu: bool,
    ) -> (T, T) {
        // Two passes (mean, then squared deviations) in f64: no cancellation.
        let n = x_g.len() as f64;
        let mu = sum_f64(x_g, |v| v.as_f64()) / n;
        let var = sum_f64(x_g, |v| {
            let d = v.as_f64() - mu;
            d * d
        }) / n;
        let (mu_t, r_t) = (T::lit(mu), T::lit(1.0 / (var + eps).sqrt()));
        for (ci, (y_c, x_c)) in y_g
            .chunks_exact_mut(hw)
            .zip(x_g.chunks_exact(hw))
            .enumerate()
        {
            // y = (x − μ) · (γ_c · rstd) + β_c
            let (scale, shift) = match affine {
                Some((gamma, beta)) => (gamma[ci] * r_t, beta[ci]),
                None => (r_t, T::zero()),
            };
            if silu {
                for (yv, &xv) in y_c.iter_mut().zip(x_c) {
                    *yv = simd::silu((xv - mu_t) * scale + shift);
                }
            } else {
                for (yv, &xv) in y_c.iter_mut().zip(x_c) {
                    *yv = (xv - mu_t) * scale + shift;
                }
            }
        }
        (mu_t, r_t)
    }
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
    backward(
        "group_norm_backward",
        s,
        x,
        gamma,
        None,
        mean,
        rstd,
        dy,
        dx,
        dparams,
    );
}

/// Backward of [`group_norm_silu_forward`] from da: `dx` written, `(dgamma, dbeta)` accumulated.
/// Per group, one pass recomputes y from x and the saved statistics, dy = da · silu'(y), and
/// the sums S1, S2 of [`group_norm_backward`], keeping dy in `dx`; a second pass turns dy into
/// dx in place. No other buffer. Bitwise the same as recomputing y with
/// [`group_norm_forward`], then [`super::silu::silu_backward`] and [`group_norm_backward`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    affine: Option<Affine<'_, T>>,
    mean: &[T],
    rstd: &[T],
    da: &[T],
    dx: &mut [T],
    dparams: Option<(&mut [T], &mut [T])>,
) {
    const OP: &str = "group_norm_silu_backward";
    // Without the affine, y = x̂: the forward's shift is 0.
    let zeros;
    let beta = match affine {
        Some(a) => a.beta,
        None => {
            zeros = vec![T::zero(); s.x.c];
            &zeros
        }
    };
    backward(
        OP,
        s,
        x,
        affine.map(|a| a.gamma),
        Some(beta),
        mean,
        rstd,
        da,
        dx,
        dparams,
    );
}

/// Both backwards; `silu_beta` is `Some(β)` for the fused one (then `dy` holds da).
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(
    op: &str,
    s: &GroupNormShape,
    x: &[T],
    gamma: Option<&[T]>,
    silu_beta: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
    dparams: Option<(&mut [T], &mut [T])>,
) {
    s.check(op, x.len(), dy.len(), mean.len(), rstd.len());
    expect_len(op, "dx", dx.len(), x.len(), s.x);
    let c_shape = format!("({})", s.x.c);
    if let Some(g) = gamma {
        expect_len(op, "gamma", g.len(), s.x.c, &c_shape);
    }
    if let Some(b) = silu_beta {
        expect_len(op, "beta", b.len(), s.x.c, &c_shape);
    }
    let (n, hw, cg, channels) = (s.group_len(), s.x.hw(), s.group_channels(), s.x.c);
    if n == 0 {
        return;
    }
    // (S1, S2) per (image, channel): (B·C) pairs, filled a group at a time.
    let mut sums = vec![(0.0f64, 0.0f64); s.x.n * channels];
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
        .zip(sums.par_chunks_mut(cg))
        .enumerate()
        .for_each(|(block, ((dx_g, (x_g, dy_g)), sums_g))| {
            let first_c = (block % s.groups) * cg;
            let group = first_c..first_c + cg;
            backward_group(
                x_g,
                dy_g,
                dx_g,
                gamma.map(|g| &g[group.clone()]),
                silu_beta.map(|b| &b[group]),
                mean[block],
                rstd[block],
                hw,
                sums_g,
            );
        });

    if let Some((dgamma, dbeta)) = dparams {
        expect_len(op, "dgamma", dgamma.len(), channels, &c_shape);
        expect_len(op, "dbeta", dbeta.len(), channels, &c_shape);
        // Σ dy · x̂ for one (image, channel), from its group's statistics.
        let dy_xhat = |b: usize, c: usize| {
            let stat = b * s.groups + c / cg;
            let (s1, s2) = sums[b * channels + c];
            rstd[stat].as_f64() * (s2 - mean[stat].as_f64() * s1)
        };
        for (c, (dg, db)) in dgamma.iter_mut().zip(dbeta.iter_mut()).enumerate() {
            *dg += T::lit((0..s.x.n).map(|b| dy_xhat(b, c)).sum::<f64>());
            *db += T::lit((0..s.x.n).map(|b| sums[b * channels + c].0).sum::<f64>());
        }
    }
}

multiversion! {
    /// One (image, group) block of the backward: writes dx and this group's (S1, S2) per
    /// channel. `silu_beta`: the fused backward (`dy` holds da, dy itself is recomputed and kept
    /// in `dx_g` between the two passes).
    fn backward_group<T: Real>(
        x_g: &[T],
        dy_g: &[T],
        dx_g: &mut [T],
        gamma: Option<&[T]>,
        silu_beta: Option<&[T]>,
        mu: T,
        r: T,
        hw: usize,
        sums: &mut [(f64, f64)],
    ) {
        let gamma_of = |ci: usize| gamma.map_or(1.0, |g| g[ci].as_f64());
        // Pass 1: (S1, S2) per channel; the fused backward first makes dy = da · silu'(y).
        for (ci, ((dx_c, (x_c, dy_c)), sum)) in dx_g
            .chunks_exact_mut(hw)
            .zip(x_g.chunks_exact(hw).zip(dy_g.chunks_exact(hw)))
            .zip(sums.iter_mut())
            .enumerate()
        {
            *sum = match silu_beta {
                Some(beta) => {
                    let (scale, shift) = match gamma {
                        Some(g) => (g[ci] * r, beta[ci]),
                        None => (r, T::zero()),
                    };
                    for ((d, &xv), &av) in dx_c.iter_mut().zip(x_c).zip(dy_c) {
                        *d = simd::silu_grad((xv - mu) * scale + shift, av);
                    }
                    dy_sums(dx_c, x_c)
                }
                None => dy_sums(dy_c, x_c),
            };
        }
        // Σ dy · x̂ for one channel of the group.
        let (mu_f, r_f) = (mu.as_f64(), r.as_f64());
        let (mut sum_g, mut sum_gx) = (0.0, 0.0);
        for (ci, &(s1, s2)) in sums.iter().enumerate() {
            sum_g += gamma_of(ci) * s1;
            sum_gx += gamma_of(ci) * (r_f * (s2 - mu_f * s1));
        }
        let n = x_g.len() as f64;
        let (m1, m2) = (T::lit(sum_g / n), T::lit(sum_gx / n));
        // Pass 2: dx = rstd · (γ dy − m1 − x̂ m2), dy read from dy_g or, fused, from dx_g itself.
        for (ci, (dx_c, (x_c, dy_c))) in dx_g
            .chunks_exact_mut(hw)
            .zip(x_g.chunks_exact(hw).zip(dy_g.chunks_exact(hw)))
            .enumerate()
        {
            let gm = T::lit(gamma_of(ci));
            if silu_beta.is_some() {
                for (d, &xv) in dx_c.iter_mut().zip(x_c) {
                    *d = r * (gm * *d - m1 - (xv - mu) * r * m2);
                }
            } else {
                for ((d, &xv), &g) in dx_c.iter_mut().zip(x_c).zip(dy_c) {
                    *d = r * (gm * g - m1 - (xv - mu) * r * m2);
                }
            }
        }
    }
}

/// Σ f(x) in f64 with eight independent accumulators: the compiler can vectorize it, and the
/// order of additions is fixed, so the result does not depend on threads.
#[inline(always)]
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

/// (Σ dy, Σ dy · x) in f64 in one pass, each summed exactly as [`sum_f64`] sums (eight lanes,
/// then the tail).
#[inline(always)]
fn dy_sums<T: Real>(dy: &[T], x: &[T]) -> (f64, f64) {
    let mut l1 = [0.0f64; 8];
    let mut l2 = [0.0f64; 8];
    let (cd, cx) = (dy.chunks_exact(8), x.chunks_exact(8));
    let tail1: f64 = cd.remainder().iter().map(|&g| g.as_f64()).sum();
    let tail2: f64 = cd
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&g, &v)| g.as_f64() * v.as_f64())
        .sum();
    for (gd, gx) in cd.zip(cx) {
        for (((a1, a2), &g), &v) in l1.iter_mut().zip(l2.iter_mut()).zip(gd).zip(gx) {
            *a1 += g.as_f64();
            *a2 += g.as_f64() * v.as_f64();
        }
    }
    (
        l1.iter().sum::<f64>() + tail1,
        l2.iter().sum::<f64>() + tail2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::silu::{silu_backward, silu_forward};
    use crate::ops::simd::{force_level, reset_level, Level};
    use crate::rng::Philox;

    /// Everything the fused pair outputs: a, mean, rstd, dx, dγ, dβ.
    type Outputs<T> = [Vec<T>; 6];

    struct Case<T> {
        s: GroupNormShape,
        x: Vec<T>,
        gamma: Vec<T>,
        beta: Vec<T>,
        da: Vec<T>,
        affine: bool,
    }

    fn case<T: Real>(shape: Nchw, groups: usize, affine: bool, seed: u64) -> Case<T> {
        let mut r = Philox::new(seed);
        // Offset and scaled so the statistics are far from (0, 1) and y spans both signs.
        let x = r
            .uniform_vec::<f64>(shape.len(), -1.0, 1.0)
            .iter()
            .map(|v| T::lit(3.0 * v + 0.7))
            .collect();
        Case {
            s: GroupNormShape::new(shape, groups, 1e-5).unwrap(),
            x,
            gamma: r.uniform_vec(shape.c, 0.5, 1.5),
            beta: r.uniform_vec(shape.c, -1.0, 1.0),
            da: r.normal_vec(shape.len(), 1.0),
            affine,
        }
    }

    impl<T: Real> Case<T> {
        fn aff(&self) -> Option<Affine<'_, T>> {
            self.affine.then_some(Affine {
                gamma: &self.gamma,
                beta: &self.beta,
            })
        }

        /// Parameter gradients start non-zero: they must accumulate.
        fn start(&self) -> (Vec<T>, Vec<T>) {
            (
                vec![T::lit(0.25); self.s.x.c],
                vec![T::lit(-0.5); self.s.x.c],
            )
        }

        fn fused(&self) -> Outputs<T> {
            let (len, st) = (self.x.len(), self.s.stats_len());
            let (mut a, mut mean, mut rstd) =
                (vec![T::nan(); len], vec![T::nan(); st], vec![T::nan(); st]);
            group_norm_silu_forward(&self.s, &self.x, self.aff(), &mut a, &mut mean, &mut rstd);
            let mut dx = vec![T::nan(); len];
            let (mut dg, mut db) = self.start();
            let dparams = self
                .affine
                .then_some((dg.as_mut_slice(), db.as_mut_slice()));
            group_norm_silu_backward(
                &self.s,
                &self.x,
                self.aff(),
                &mean,
                &rstd,
                &self.da,
                &mut dx,
                dparams,
            );
            [a, mean, rstd, dx, dg, db]
        }

        /// The unfused composition the backend's default methods run.
        fn composed(&self) -> Outputs<T> {
            let (len, st) = (self.x.len(), self.s.stats_len());
            let (mut y, mut mean, mut rstd) =
                (vec![T::nan(); len], vec![T::nan(); st], vec![T::nan(); st]);
            group_norm_forward(&self.s, &self.x, self.aff(), &mut y, &mut mean, &mut rstd);
            let mut a = vec![T::nan(); len];
            silu_forward(&y, &mut a);
            let mut dy = vec![T::nan(); len];
            silu_backward(&y, &self.da, &mut dy);
            let mut dx = vec![T::nan(); len];
            let (mut dg, mut db) = self.start();
            let dparams = self
                .affine
                .then_some((dg.as_mut_slice(), db.as_mut_slice()));
            let gamma = self.affine.then_some(self.gamma.as_slice());
            group_norm_backward(&self.s, &self.x, gamma, &mean, &rstd, &dy, &mut dx, dparams);
            [a, mean, rstd, dx, dg, db]
        }
    }

    const NAMES: [&str; 6] = ["a", "mean", "rstd", "dx", "dgamma", "dbeta"];

    fn cases<T: Real>() -> Vec<Case<T>> {
        vec![
            // H·W = 15: every lane loop has a tail.
            case(Nchw::new(2, 6, 5, 3), 3, true, 1),
            case(Nchw::new(3, 4, 3, 3), 1, false, 2),
            case(Nchw::new(2, 5, 3, 7), 5, true, 3),
            case(Nchw::new(2, 8, 4, 4), 4, true, 4),
            case(Nchw::new(3, 32, 9, 9), 8, true, 5),
            case(Nchw::new(2, 16, 1, 1), 4, false, 6),
        ]
    }

    fn fused_matches_composition<T: Real>() {
        for (k, c) in cases::<T>().iter().enumerate() {
            let (f, u) = (c.fused(), c.composed());
            for ((name, fv), uv) in NAMES.iter().zip(&f).zip(&u) {
                assert!(
                    fv.iter().all(|v| v.is_finite()),
                    "case {k}: {name} not finite"
                );
                // Not just close (the tolerance is 1e-12 relative in f64): the fused passes do
                // the same operations in the same order, so the bits are the same.
                let close = fv
                    .iter()
                    .zip(uv)
                    .all(|(&p, &q)| (p - q).abs().as_f64() <= 1e-12 * (1.0 + q.abs().as_f64()));
                assert!(close, "case {k} ({}): {name} differs", T::NAME);
                let bits = |v: &[T]| v.iter().map(|x| x.as_f64().to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(fv), bits(uv), "case {k} ({}): {name}", T::NAME);
            }
        }
    }

    #[test]
    fn fused_group_norm_silu_is_the_composition_in_f64() {
        fused_matches_composition::<f64>();
    }

    #[test]
    fn fused_group_norm_silu_is_the_composition_in_f32() {
        fused_matches_composition::<f32>();
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let _levels = crate::ops::simd::level_lock();
        let c = case::<f32>(Nchw::new(3, 32, 9, 9), 8, true, 7);
        let run = |l: Level| {
            force_level(l).then(|| {
                let mut out = c.fused().to_vec();
                out.extend(c.composed());
                out
            })
        };
        let base = run(Level::Baseline).unwrap();
        for l in [Level::V3, Level::V4] {
            if let Some(out) = run(l) {
                for ((name, a), b) in NAMES.iter().cycle().zip(&out).zip(&base) {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(a), bits(b), "{l:?}: {name}");
                }
            }
        }
        reset_level();
    }
}
