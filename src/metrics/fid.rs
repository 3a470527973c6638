//! FID and KID on Inception pool3 features, and the statistics files pytorch-fid reads.
//!
//! - [`feature_fit`]: mean and unbiased covariance of (N, d) features (`np.mean`, `np.cov`), in
//!   f64 through the GEMM; FID is [`super::frechet_distance`] of two fits, or, from features,
//!   [`fid_from_features`] (the same number, cheaper when the sides are small).
//! - [`read_stats`] / [`write_stats`]: `.npz` files holding `mu` (d) and `sigma` (d, d) as
//!   pytorch-fid writes and reads them (`np.savez_compressed(path, mu=…, sigma=…)`); ddpm writes
//!   float64, uncompressed.
//! - [`kid`]: the Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs") as
//!   the usual implementations compute it (their reference code, torch-fidelity, clean-fid):
//!   the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, the unbiased estimator of MMD² on
//!   `subsets` random pairs of subsets of m = min(`subset_size`, N_a, N_b) images each (drawn
//!   without replacement, independently per side), reported as the mean over subsets and the
//!   standard deviation of the subset estimates (numpy's `std`, ddof 0).

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};

use super::npz::{npz_f64, read_npz, shape_text};
use super::{frechet_distance, GaussianFit};
use crate::atomic_file::write_atomic;
use crate::ops::matmul::{gemm, MatMut, MatRef, Threads};
use crate::rng::Philox;

/// Rows converted to f64 per GEMM call in [`feature_fit`].
const FIT_ROWS: usize = 256;

/// Mean and unbiased covariance of `features` (N, `dim`) row-major, N ≥ 2, all finite.
/// Σ = (X − μ)ᵀ(X − μ) / (N − 1), accumulated in f64 over blocks of centred rows.
pub fn feature_fit(features: &[f32], dim: usize) -> Result<GaussianFit> {
    ensure!(dim > 0, "feature_fit: dimension must be positive");
    ensure!(
        features.len().is_multiple_of(dim),
        "feature_fit: {} values is not a whole number of {dim}-d features",
        features.len()
    );
    let n = features.len() / dim;
    ensure!(
        n >= 2,
        "feature_fit: need at least 2 feature vectors, got {n}"
    );
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(anyhow!(
            "feature_fit: feature {} of image {} is not finite",
            i % dim,
            i / dim
        ));
    }
    let mut mean = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &x)| *m += f64::from(x));
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0f64; dim * dim];
    let mut centred = Vec::with_capacity(FIT_ROWS * dim);
    for block in features.chunks(FIT_ROWS * dim) {
        centred.clear();
        for row in block.chunks_exact(dim) {
            centred.extend(row.iter().zip(&mean).map(|(&x, m)| f64::from(x) - m));
        }
        let rows = block.len() / dim;
        let d = MatRef::rows(&centred, rows, dim);
        gemm(
            MatMut::rows(&mut cov, dim, dim),
            d.t(),
            d,
            1.0,
            true,
            Threads::Pool,
        );
    }
    let scale = 1.0 / (n - 1) as f64;
    // Symmetric up to rounding already; make it exactly so.
    for i in 0..dim {
        for j in i..dim {
            let v = 0.5 * (cov[i * dim + j] + cov[j * dim + i]) * scale;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    Ok(GaussianFit { dim, n, mean, cov })
}

/// tr (Σa Σb)^{1/2} from the features themselves: with Ã, B̃ the centred features scaled by
/// 1/√(N − 1) (so Σa = ÃᵀÃ, Σb = B̃ᵀB̃), the non-zero eigenvalues of Σa Σb are those of M Mᵀ,
/// M = Ã B̃ᵀ (N_a × N_b), whose square roots are M's singular values. Exact, and far cheaper
/// than the d×d route when the sides hold fewer images than features.
fn trace_sqrt_low_rank(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    let scaled = |f: &[f32]| -> Vec<f64> {
        let n = f.len() / dim;
        let mut mean = vec![0.0f64; dim];
        for row in f.chunks_exact(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &x)| *m += f64::from(x));
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let s = 1.0 / ((n - 1) as f64).sqrt();
        f.chunks_exact(dim)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .map(move |(&x, m)| (f64::from(x) - m) * s)
            })
            .collect()
    };
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let (sa, sb) = (scaled(a), scaled(b));
    let mut m = vec![0.0f64; na * nb];
    gemm(
        MatMut::rows(&mut m, na, nb),
        MatRef::rows(&sa, na, dim),
        MatRef::rows(&sb, nb, dim).t(),
        1.0,
        false,
        Threads::Pool,
    );
    let m = nalgebra::DMatrix::from_row_slice(na, nb, &m);
    let iters = 100 * na.max(nb);
    let svd = m
        .try_svd_unordered(false, false, f64::EPSILON, iters)
        .ok_or_else(|| anyhow!("FID: singular value decomposition did not converge"))?;
    Ok(svd.singular_values.sum())
}

/// FID between two sides given their features (N, `dim`) and their fits ([`feature_fit`]).
/// When the sides are small enough that it is cheaper, tr (Σa Σb)^{1/2} comes from the
/// features ([`trace_sqrt_low_rank`]); otherwise this is [`frechet_distance`] of the fits.
pub fn fid_from_features(
    a: &[f32],
    b: &[f32],
    dim: usize,
    fa: &GaussianFit,
    fb: &GaussianFit,
) -> Result<f64> {
    let (na, nb) = ((a.len() / dim) as f64, (b.len() / dim) as f64);
    if na * nb * na.min(nb) > (dim as f64).powi(3) / 4.0 {
        return frechet_distance(fa, fb);
    }
    let mean_sq: f64 = fa
        .mean
        .iter()
        .zip(&fb.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |f: &GaussianFit| (0..f.dim).map(|i| f.cov[i * f.dim + i]).sum::<f64>();
    let scale = mean_sq + trace(fa) + trace(fb);
    let d = scale - 2.0 * trace_sqrt_low_rank(a, b, dim)?;
    // As frechet_distance: a tiny negative result is rounding.
    Ok(if d < 0.0 && -d < 1e-9 * scale { 0.0 } else { d })
}

/// Reads a statistics file: `mu` (`dim`) and `sigma` (`dim`, `dim`), float32 or float64. The
/// fit's `n` is 0 (the file does not say). Errors name the file and what was expected.
pub fn read_stats(path: &Path, dim: usize) -> Result<GaussianFit> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let arrays = read_npz(&bytes, &["mu", "sigma"]).map_err(|e| {
        anyhow!(
            "{}: not a statistics file as pytorch-fid writes them (an .npz with arrays mu and sigma): {e:#}",
            path.display()
        )
    })?;
    let [mu, sigma] = <[_; 2]>::try_from(arrays).map_err(|_| anyhow!("two arrays asked for"))?;
    ensure!(
        mu.shape == [dim] && sigma.shape == [dim, dim],
        "{}: mu has shape {} and sigma {}, expected ({dim},) and ({dim}, {dim}): the statistics of \
         the {dim}-d pool3 features of the FID Inception (pytorch-fid's default --dims 2048)",
        path.display(),
        shape_text(&mu.shape),
        shape_text(&sigma.shape)
    );
    ensure!(
        mu.values.iter().chain(&sigma.values).all(|v| v.is_finite()),
        "{}: mu or sigma holds NaN or infinity",
        path.display()
    );
    Ok(GaussianFit {
        dim,
        n: 0,
        mean: mu.values,
        cov: sigma.values,
    })
}

/// Writes `fit` as `mu` and `sigma` (float64) to `path`, atomically.
pub fn write_stats(path: &Path, fit: &GaussianFit) -> Result<()> {
    let bytes = npz_f64(&[
        ("mu", &[fit.dim], &fit.mean),
        ("sigma", &[fit.dim, fit.dim], &fit.cov),
    ])?;
    write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// How KID draws its subsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KidOptions {
    /// Number of subset pairs (100 in the usual implementations).
    pub subsets: usize,
    /// Images per subset, capped by the smaller side (1000 in the usual implementations).
    pub subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// KID: the mean of the subsets' MMD² estimates and their standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    /// The subset size used: min(requested, N_a, N_b).
    pub subset_size: usize,
}

/// Philox stream of the subset draws (any fixed number; it only has to differ from nothing).
const KID_STREAM: u64 = 0x004b_4944;

/// `m` distinct indices below `n` (a partial Fisher–Yates shuffle).
fn draw(rng: &mut Philox, n: usize, m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for j in 0..m {
        let r = j + ((rng.uniform() * (n - j) as f64) as usize).min(n - j - 1);
        idx.swap(j, r);
    }
    idx.truncate(m);
    idx
}

/// Σ_{i≠j} k(xᵢ, xⱼ) (`same`) or Σ_{i,j} k(xᵢ, yⱼ), for the rows of `x` and `y` (m × d, f64).
fn kernel_sum(x: &[f64], y: &[f64], m: usize, d: usize, same: bool) -> f64 {
    let mut g = vec![0.0f64; m * m];
    gemm(
        MatMut::rows(&mut g, m, m),
        MatRef::rows(x, m, d),
        MatRef::rows(y, m, d).t(),
        1.0 / d as f64,
        false,
        Threads::Pool,
    );
    let mut sum = 0.0;
    for (i, row) in g.chunks_exact(m).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if !(same && i == j) {
                sum += (v + 1.0).powi(3);
            }
        }
    }
    sum
}

/// KID between features `a` (N_a, `dim`) and `b` (N_b, `dim`); both sides need at least 2.
pub fn kid(a: &[f32], b: &[f32], dim: usize, opt: &KidOptions) -> Result<Kid> {
    ensure!(
        dim > 0 && opt.subsets > 0,
        "kid: dimension and subsets must be positive"
    );
    ensure!(
        a.len().is_multiple_of(dim) && b.len().is_multiple_of(dim),
        "kid: features are not whole {dim}-d vectors"
    );
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let m = opt.subset_size.min(na).min(nb);
    ensure!(
        m >= 2,
        "kid: subsets need at least 2 images (sides of {na} and {nb}, subset size {})",
        opt.subset_size
    );
    let mut rng = Philox::with_stream(opt.seed, KID_STREAM);
    let gather = |f: &[f32], idx: &[usize]| -> Vec<f64> {
        idx.iter()
            .flat_map(|&i| f[i * dim..(i + 1) * dim].iter().map(|&v| f64::from(v)))
            .collect()
    };
    let mut estimates = Vec::with_capacity(opt.subsets);
    for _ in 0..opt.subsets {
        let x = gather(a, &draw(&mut rng, na, m));
        let y = gather(b, &draw(&mut rng, nb, m));
        let pairs = (m * (m - 1)) as f64;
        let xx = kernel_sum(&x, &x, m, dim, true);
        let yy = kernel_sum(&y, &y, m, dim, true);
        let xy = kernel_sum(&x, &y, m, dim, false);
        estimates.push((xx + yy) / pairs - 2.0 * xy / (m * m) as f64);
    }
    let k = estimates.len() as f64;
    let mean = estimates.iter().sum::<f64>() / k;
    let var = estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / k;
    Ok(Kid {
        mean,
        std: var.sqrt(),
        subsets: opt.subsets,
        subset_size: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(n: usize, d: usize, seed: u64, shift: f32) -> Vec<f32> {
        let mut rng = Philox::new(seed);
        (0..n * d)
            .map(|i| rng.uniform() as f32 + shift * (i % d) as f32 / d as f32)
            .collect()
    }

    #[test]
    fn fit_matches_two_pass_definition() {
        let (n, d) = (300, 7);
        let f = features(n, d, 1, 0.5);
        let fit = feature_fit(&f, d).unwrap();
        let f64s: Vec<f64> = f.iter().map(|&v| f64::from(v)).collect();
        let want = GaussianFit::from_features(&f64s, d).unwrap();
        for (a, b) in fit.mean.iter().zip(&want.mean) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in fit.cov.iter().zip(&want.cov) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!(feature_fit(&f[..d], d).is_err());
        let mut bad = f.clone();
        bad[9] = f32::NAN;
        assert!(feature_fit(&bad, d)
            .unwrap_err()
            .to_string()
            .contains("image 1"));
    }

    #[test]
    fn low_rank_fid_is_the_covariance_fid() {
        // Fewer images than features (the covariances are singular), sides of unequal size.
        let d = 40;
        let (a, b) = (features(15, d, 11, 0.0), features(25, d, 12, 0.7));
        let (fa, fb) = (feature_fit(&a, d).unwrap(), feature_fit(&b, d).unwrap());
        let want = frechet_distance(&fa, &fb).unwrap();
        let got = fid_from_features(&a, &b, d, &fa, &fb).unwrap();
        // The covariance route takes square roots of Σ's rounding-level eigenvalues (rank 14
        // and 24 of 40), which moves it by a few 1e-9 relative.
        assert!((got - want).abs() < 1e-7 * want, "{got} vs {want}");
        assert!(want > 0.1);
        // A side against itself.
        assert!(fid_from_features(&a, &a, d, &fa, &fa).unwrap().abs() < 1e-9);
        // More images than features goes through the covariances (same numbers either way).
        let d = 6;
        let (a, b) = (features(60, d, 13, 0.0), features(50, d, 14, 0.4));
        let (fa, fb) = (feature_fit(&a, d).unwrap(), feature_fit(&b, d).unwrap());
        let low = 0.0
            + fa.mean
                .iter()
                .zip(&fb.mean)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
            + (0..d)
                .map(|i| fa.cov[i * d + i] + fb.cov[i * d + i])
                .sum::<f64>()
            - 2.0 * trace_sqrt_low_rank(&a, &b, d).unwrap();
        let want = fid_from_features(&a, &b, d, &fa, &fb).unwrap();
        assert!((low - want).abs() < 1e-9 * want, "{low} vs {want}");
    }

    /// The unbiased MMD² by its definition, pair by pair.
    fn mmd_by_definition(x: &[f32], y: &[f32], d: usize) -> f64 {
        let k = |p: &[f32], q: &[f32]| {
            let dot: f64 = p
                .iter()
                .zip(q)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            (dot / d as f64 + 1.0).powi(3)
        };
        let (x, y): (Vec<&[f32]>, Vec<&[f32]>) = (x.chunks(d).collect(), y.chunks(d).collect());
        let m = x.len() as f64;
        let mut within = 0.0;
        for s in [&x, &y] {
            for (i, p) in s.iter().enumerate() {
                for (j, q) in s.iter().enumerate() {
                    if i != j {
                        within += k(p, q);
                    }
                }
            }
        }
        let across: f64 = x.iter().flat_map(|p| y.iter().map(move |q| k(p, q))).sum();
        within / (m * (m - 1.0)) - 2.0 * across / (m * m)
    }

    #[test]
    fn kid_on_whole_sides_is_the_unbiased_mmd() {
        let d = 5;
        let (a, b) = (features(20, d, 2, 0.0), features(20, d, 3, 0.8));
        let want = mmd_by_definition(&a, &b, d);
        let opt = KidOptions {
            subsets: 3,
            subset_size: 1000,
            seed: 7,
        };
        let k = kid(&a, &b, d, &opt).unwrap();
        // Every subset is all 20 images (in some order), so all three estimates agree.
        assert_eq!(k.subset_size, 20);
        assert!(
            (k.mean - want).abs() < 1e-12 * want.abs().max(1.0),
            "{} vs {want}",
            k.mean
        );
        assert!(k.std < 1e-12);
        assert!(
            want > 0.01,
            "the sides differ, so MMD² is clearly positive: {want}"
        );
        // Same distribution: the unbiased estimate is near 0 (and may be negative).
        let same = kid(&a, &features(20, d, 4, 0.0), d, &opt).unwrap();
        assert!(same.mean.abs() < want / 5.0, "{} vs {want}", same.mean);
    }

    #[test]
    fn kid_subsets_are_seeded_and_spread() {
        let d = 4;
        let (a, b) = (features(50, d, 5, 0.0), features(40, d, 6, 0.3));
        let opt = KidOptions {
            subsets: 10,
            subset_size: 10,
            seed: 1,
        };
        let k1 = kid(&a, &b, d, &opt).unwrap();
        assert_eq!(k1, kid(&a, &b, d, &opt).unwrap());
        assert!(k1.std > 0.0 && k1.subset_size == 10);
        let k2 = kid(&a, &b, d, &KidOptions { seed: 2, ..opt }).unwrap();
        assert_ne!(k1.mean, k2.mean);
        assert!(kid(&a[..d], &b, d, &opt).is_err());
    }

    #[test]
    fn draws_are_distinct_and_in_range() {
        let mut rng = Philox::new(3);
        let idx = draw(&mut rng, 30, 30);
        let mut sorted = idx.clone();
        sorted.sort();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>());
        let idx = draw(&mut rng, 1000, 10);
        assert_eq!(idx.len(), 10);
        assert!(idx.iter().all(|&i| i < 1000));
    }

    #[test]
    fn stats_round_trip_and_wrong_dimension() {
        let dir = std::env::temp_dir().join(format!("ddpm-fid-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fit = feature_fit(&features(10, 3, 8, 0.1), 3).unwrap();
        let path = dir.join("s.npz");
        write_stats(&path, &fit).unwrap();
        let back = read_stats(&path, 3).unwrap();
        assert_eq!((back.mean, back.cov), (fit.mean.clone(), fit.cov.clone()));
        let err = read_stats(&path, 2048).unwrap_err().to_string();
        assert!(
            err.contains("s.npz") && err.contains("(3,)") && err.contains("(2048,)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
