//! Fréchet distance between Gaussian fits of image features.
//!
//! For Gaussians N(μa, Σa) and N(μb, Σb) the squared 2-Wasserstein (Fréchet) distance is
//!
//! d² = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^{1/2})
//!
//! (Dowson & Landau 1982; the FID formula of Heusel et al. 2017, §3). The features here are
//! average-pooled pixels ([`pooled_features`]), which needs no pretrained network: enough to rank
//! samplers against each other on one model trained on a synthetic dataset, not comparable with
//! published FID numbers.

use anyhow::{bail, ensure, Result};
use nalgebra::DMatrix;

/// Average-pools each channel of (N, C, H, W) row-major images over a `grid`×`grid` partition:
/// cell `i` covers rows `⌊i·H/grid⌋..⌊(i+1)·H/grid⌋` (columns likewise), so cells differ by at
/// most one row or column when H or W is not divisible. Returns (N, C·grid·grid) features,
/// per image ordered channel, cell row, cell column. Pooling keeps coarse layout and colour,
/// which is what a small synthetic dataset varies in, and keeps the dimension small enough for
/// a well-conditioned covariance from a few hundred samples.
pub fn pooled_features(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    grid: usize,
) -> Result<Vec<f64>> {
    ensure!(
        n > 0 && c > 0 && h > 0 && w > 0,
        "pooled_features: sizes must be nonzero, got N={n} C={c} H={h} W={w}"
    );
    ensure!(
        grid > 0 && grid <= h.min(w),
        "pooled_features: grid must be in 1..={} (min of H={h}, W={w}), got {grid}",
        h.min(w)
    );
    let expected = [n, c, h, w]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    ensure!(
        expected == Some(images.len()),
        "pooled_features: images has {} values, expected N·C·H·W = {n}·{c}·{h}·{w}",
        images.len()
    );
    let bounds = |len: usize| (0..=grid).map(|i| i * len / grid).collect::<Vec<_>>();
    let (rows, cols) = (bounds(h), bounds(w));
    let mut out = Vec::with_capacity(n * c * grid * grid);
    for plane in images.chunks_exact(h * w) {
        for ci in 0..grid {
            for cj in 0..grid {
                let mut sum = 0.0f64;
                for y in rows[ci]..rows[ci + 1] {
                    let row = &plane[y * w + cols[cj]..y * w + cols[cj + 1]];
                    sum += row.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
                let count = (rows[ci + 1] - rows[ci]) * (cols[cj + 1] - cols[cj]);
                out.push(sum / count as f64);
            }
        }
    }
    Ok(out)
}

/// Mean and covariance of a set of feature vectors: the Gaussian the Fréchet distance compares.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    /// Feature dimension.
    pub dim: usize,
    /// Number of samples the fit came from.
    pub n: usize,
    /// Mean, length `dim`.
    pub mean: Vec<f64>,
    /// Covariance, `dim`×`dim` row-major, unbiased (divided by n − 1).
    pub cov: Vec<f64>,
}

impl GaussianFit {
    /// Fits (N, dim) row-major features. Needs N ≥ 2 for the unbiased covariance; non-finite
    /// features are an error, since a diverged sample would otherwise turn the distance into NaN.
    pub fn from_features(features: &[f64], dim: usize) -> Result<Self> {
        ensure!(dim > 0, "GaussianFit: feature dimension must be nonzero");
        ensure!(
            features.len().is_multiple_of(dim),
            "GaussianFit: {} values is not a whole number of {dim}-dim features",
            features.len()
        );
        let n = features.len() / dim;
        ensure!(n >= 2, "GaussianFit: need at least 2 samples, got {n}");
        ensure!(
            features.iter().all(|v| v.is_finite()),
            "GaussianFit: features contain NaN or infinity"
        );
        let mut mean = vec![0.0; dim];
        for row in features.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Two passes (centre, then multiply) avoid the cancellation of E[xxᵀ] − μμᵀ.
        let mut cov = vec![0.0; dim * dim];
        let mut d = vec![0.0; dim];
        for row in features.chunks_exact(dim) {
            d.iter_mut()
                .zip(row.iter().zip(&mean))
                .for_each(|(d, (x, m))| *d = x - m);
            for i in 0..dim {
                for j in i..dim {
                    cov[i * dim + j] += d[i] * d[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Self { dim, n, mean, cov })
    }

    fn check(&self, name: &str) -> Result<()> {
        ensure!(
            self.dim > 0 && self.mean.len() == self.dim && self.cov.len() == self.dim * self.dim,
            "frechet_distance: fit {name} has dim {} but mean length {} and cov length {}",
            self.dim,
            self.mean.len(),
            self.cov.len()
        );
        Ok(())
    }

    /// Σ as a matrix, symmetrised so the eigensolver (which reads one triangle) sees all of it.
    fn cov_matrix(&self) -> DMatrix<f64> {
        let m = DMatrix::from_row_slice(self.dim, self.dim, &self.cov);
        (&m + m.transpose()) * 0.5
    }
}

/// Iteration cap per matrix dimension for nalgebra's QR iterations, so a matrix that does not
/// converge is an error rather than a hang (LAPACK needs about 30 per dimension).
const MAX_ITER_PER_DIM: usize = 100;

/// Symmetric PSD square root V diag(√λ) Vᵀ, eigenvalues clamped at 0: a covariance is PSD in
/// exact arithmetic, so a negative eigenvalue is rounding and its square root would be NaN.
fn psd_sqrt(m: DMatrix<f64>) -> Result<DMatrix<f64>> {
    let iters = MAX_ITER_PER_DIM * m.nrows();
    let Some(e) = m.try_symmetric_eigen(f64::EPSILON, iters) else {
        bail!("frechet_distance: symmetric eigendecomposition did not converge");
    };
    let root = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    Ok(&e.eigenvectors * DMatrix::from_diagonal(&root) * e.eigenvectors.transpose())
}

/// Fréchet distance d² = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^{1/2}) (Heusel et al. 2017, §3;
/// Dowson & Landau 1982), in f64.
///
/// Σa Σb is not symmetric, so its square root is not taken directly: tr (Σa Σb)^{1/2} equals
/// tr (Σa^{1/2} Σb Σa^{1/2})^{1/2} (similar matrices), the sum of √λᵢ over the eigenvalues of that
/// symmetric PSD matrix, with Σa^{1/2} from a symmetric eigendecomposition. As the matrix is BᵀB
/// with B = Σb^{1/2} Σa^{1/2}, the √λᵢ are the singular values of B, taken from B directly:
/// forming BᵀB squares the rounding, and when a covariance is singular (fewer samples than
/// features) its zero eigenvalues come out as ±ε‖Σ‖², whose roots (≈1e-8‖Σ‖ each) would make
/// the distance of a fit to itself clearly negative.
///
/// A result in (−1e-9·scale, 0), scale = ‖μa − μb‖² + tr Σa + tr Σb, is rounding and returns 0;
/// anything more negative is returned as is, as it means a bug or an input that is not a
/// covariance.
pub fn frechet_distance(a: &GaussianFit, b: &GaussianFit) -> Result<f64> {
    if a.dim != b.dim {
        bail!(
            "frechet_distance: dimension mismatch, {} vs {}",
            a.dim,
            b.dim
        );
    }
    a.check("a")?;
    b.check("b")?;
    let mean_sq: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let (sa, sb) = (a.cov_matrix(), b.cov_matrix());
    let scale = mean_sq + sa.trace() + sb.trace();
    let root_product = psd_sqrt(sb)? * psd_sqrt(sa)?;
    let iters = MAX_ITER_PER_DIM * a.dim;
    let Some(svd) = root_product.try_svd_unordered(false, false, f64::EPSILON, iters) else {
        bail!("frechet_distance: singular value decomposition did not converge");
    };
    let d = scale - 2.0 * svd.singular_values.sum();
    Ok(if d < 0.0 && -d < 1e-9 * scale { 0.0 } else { d })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(mean: &[f64], cov: &[f64]) -> GaussianFit {
        GaussianFit {
            dim: mean.len(),
            n: 100,
            mean: mean.to_vec(),
            cov: cov.to_vec(),
        }
    }

    /// Deterministic correlated features: (n, dim), x = A z + offset with z uniform in [-1, 1].
    fn sample(n: usize, dim: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut u = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let mix: Vec<f64> = (0..dim * dim).map(|_| u()).collect();
        (0..n)
            .flat_map(|_| {
                let z: Vec<f64> = (0..dim).map(|_| u()).collect();
                (0..dim)
                    .map(|i| (0..dim).map(|j| mix[i * dim + j] * z[j]).sum::<f64>() + i as f64)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn identical_fits_are_at_distance_zero() {
        let a = GaussianFit::from_features(&sample(200, 6, 1), 6).unwrap();
        assert!(a.cov[1].abs() > 1e-3, "want a non-diagonal covariance");
        let d = frechet_distance(&a, &a).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn singular_covariance_is_at_distance_zero_from_itself() {
        // 10 samples in 48 dimensions: Σ has rank 9, and its 39 zero eigenvalues must not leak
        // ≈1e-8‖Σ‖ each into tr (Σ Σ)^{1/2} (forming Σ^{1/2} Σ Σ^{1/2} gave d ≈ −1e-5 here).
        let a = GaussianFit::from_features(&sample(10, 48, 7), 48).unwrap();
        let d = frechet_distance(&a, &a).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn negative_result_is_not_hidden() {
        // Σ = [[−1]] is no covariance: tr Σa + tr Σb = −2 and the clamped root adds 0, so −2 must
        // come back as is rather than be clamped to 0 or turned positive.
        let bad = fit(&[0.0], &[-1.0]);
        assert_eq!(frechet_distance(&bad, &bad).unwrap(), -2.0);
    }

    #[test]
    fn diagonal_covariances_match_closed_form() {
        // Commuting (diagonal) Σ: d² = Σ(μa − μb)² + Σ(σa − σb)².
        let (ma, va): ([f64; 3], [f64; 3]) = ([1.0, 2.0, 3.0], [4.0, 1.0, 9.0]);
        let (mb, vb): ([f64; 3], [f64; 3]) = ([0.0, 2.0, 5.0], [1.0, 4.0, 0.25]);
        let diag = |v: &[f64; 3]| {
            let mut c = vec![0.0; 9];
            (0..3).for_each(|i| c[i * 4] = v[i]);
            c
        };
        let want: f64 = (0..3)
            .map(|i| (ma[i] - mb[i]).powi(2) + (va[i].sqrt() - vb[i].sqrt()).powi(2))
            .sum();
        assert!((want - 13.25).abs() < 1e-12);
        let d = frechet_distance(&fit(&ma, &diag(&va)), &fit(&mb, &diag(&vb))).unwrap();
        assert!((d - want).abs() < 1e-9, "{d} vs {want}");
    }

    #[test]
    fn non_commuting_2x2_matches_closed_form() {
        let (sa, sb) = ([2.0, 1.0, 1.0, 2.0], [1.0, 0.0, 0.0, 3.0]);
        // P = Σa Σb by hand; Σa Σb ≠ Σb Σa, so the diagonal formula does not apply.
        let p: [f64; 4] = [2.0, 3.0, 1.0, 6.0];
        assert_ne!(p, [2.0, 1.0, 3.0, 6.0]);
        // For a 2×2 matrix with nonnegative eigenvalues λ1, λ2:
        // (√λ1 + √λ2)² = tr + 2 √det, so tr √P = √(tr P + 2 √det P).
        let tr_sqrt = (p[0] + p[3] + 2.0 * (p[0] * p[3] - p[1] * p[2]).sqrt()).sqrt();
        assert!((tr_sqrt - 14f64.sqrt()).abs() < 1e-12);
        let (ma, mb) = ([0.0, 1.0], [1.0, -1.0]);
        let want = 5.0 + (2.0 + 2.0) + (1.0 + 3.0) - 2.0 * tr_sqrt;
        let d = frechet_distance(&fit(&ma, &sa), &fit(&mb, &sb)).unwrap();
        assert!((d - want).abs() < 1e-9, "{d} vs {want}");
    }

    #[test]
    fn symmetric_and_translation_invariant() {
        let (fa, fb) = (sample(300, 5, 2), sample(300, 5, 3));
        let (a, b) = (
            GaussianFit::from_features(&fa, 5).unwrap(),
            GaussianFit::from_features(&fb, 5).unwrap(),
        );
        let dab = frechet_distance(&a, &b).unwrap();
        let dba = frechet_distance(&b, &a).unwrap();
        assert!(dab > 0.1, "{dab}");
        assert!((dab - dba).abs() < 1e-9 * dab, "{dab} vs {dba}");
        let shift = [3.0, -7.0, 0.5, 100.0, -2.0];
        let moved = |f: &[f64]| -> Vec<f64> {
            f.iter()
                .enumerate()
                .map(|(k, x)| x + shift[k % 5])
                .collect()
        };
        let a2 = GaussianFit::from_features(&moved(&fa), 5).unwrap();
        let b2 = GaussianFit::from_features(&moved(&fb), 5).unwrap();
        let d2 = frechet_distance(&a2, &b2).unwrap();
        assert!((dab - d2).abs() < 1e-8 * dab, "{dab} vs {d2}");
    }

    #[test]
    fn dimension_mismatch_and_bad_fits_are_errors() {
        let a = fit(&[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0]);
        let b = fit(&[0.0], &[1.0]);
        let e = frechet_distance(&a, &b).unwrap_err().to_string();
        assert!(e.contains("dimension mismatch"), "{e}");
        let bad = GaussianFit {
            cov: vec![1.0; 3],
            ..a.clone()
        };
        let e = frechet_distance(&a, &bad).unwrap_err().to_string();
        assert!(e.contains("cov length 3"), "{e}");
        let empty = GaussianFit {
            dim: 0,
            n: 2,
            mean: vec![],
            cov: vec![],
        };
        assert!(frechet_distance(&empty, &empty).is_err());
    }

    #[test]
    fn from_features_hand_computed() {
        // Samples (1,2), (3,6), (5,4): mean (3,4); deviations (−2,−2), (0,2), (2,0);
        // unbiased cov = [[8, 4], [4, 8]] / 2.
        let f = GaussianFit::from_features(&[1.0, 2.0, 3.0, 6.0, 5.0, 4.0], 2).unwrap();
        assert_eq!((f.dim, f.n), (2, 3));
        assert_eq!(f.mean, vec![3.0, 4.0]);
        assert_eq!(f.cov, vec![4.0, 2.0, 2.0, 4.0]);
        for (feat, dim, msg) in [
            (&[1.0, 2.0][..], 2, "at least 2"),
            (&[1.0, 2.0, 3.0][..], 2, "whole number"),
            (&[1.0, 2.0][..], 0, "nonzero"),
            (&[1.0, f64::NAN][..], 1, "NaN"),
        ] {
            let e = GaussianFit::from_features(feat, dim)
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn pooled_features_hand_computed() {
        // 4×4 image with value 4·row + col.
        let img: Vec<f32> = (0..16).map(|k| k as f32).collect();
        let g2 = pooled_features(&img, 1, 1, 4, 4, 2).unwrap();
        assert_eq!(g2, vec![2.5, 4.5, 10.5, 12.5]);
        // grid 3 on 4: boundaries 0, 1, 2, 4, so the last row and column of cells are 2 wide.
        let g3 = pooled_features(&img, 1, 1, 4, 4, 3).unwrap();
        assert_eq!(g3, vec![0.0, 1.0, 2.5, 4.0, 5.0, 6.5, 10.0, 11.0, 12.5]);
        // Layout (N, C·grid²): two images × two channels of 1×2, grid 1 = channel means.
        let imgs = [1.0, 3.0, -1.0, 0.0, 0.5, 0.5, 1.0, -1.0];
        assert_eq!(
            pooled_features(&imgs, 2, 2, 1, 2, 1).unwrap(),
            vec![2.0, -0.5, 0.5, 0.0]
        );
    }

    #[test]
    fn pooled_features_errors() {
        let img = vec![0.0f32; 16];
        for (n, c, h, w, grid, msg) in [
            (1, 1, 4, 4, 0, "grid"),
            (1, 1, 4, 4, 5, "grid"),
            (1, 1, 2, 8, 3, "grid"),
            (0, 1, 4, 4, 2, "nonzero"),
            (1, 0, 4, 4, 2, "nonzero"),
            (2, 1, 4, 4, 2, "expected"),
            (1, 1, 3, 4, 2, "expected"),
        ] {
            let e = pooled_features(&img, n, c, h, w, grid)
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{e}");
        }
    }
}
