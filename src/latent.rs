//! Working in the noise space of a deterministic sampler: DDIM inversion (image → x_T),
//! reconstruction metrics, spherical interpolation between noises, and reading image files at
//! a model's size.
//!
//! - Inversion (DDIM §5.4): the DDIM ODE integrated forward, from the image at ᾱ = 1 up to the
//!   first timestep a DDIM η = 0 sampler of the same steps visits, with
//!   [`inversion_evaluations`]; nothing is clipped (a clip cannot be undone). Running that
//!   sampler from the result gives the image back, up to the inversion's discretisation error
//!   (the model is read at the level it steps from, ε(x_t, t) ≈ ε(x_prev, t)).
//! - [`slerp`]: z(α) = sin((1−α)θ)/sin θ · z₀ + sin(αθ)/sin θ · z₁ with θ the angle between z₀
//!   and z₁ (Shoemake 1985; the DDIM paper interpolates its latents this way, §5.3). Gaussian
//!   noise of dimension d has norm ≈ √d; a linear blend of two independent draws is shorter
//!   (by √2 at α = ½), off the shell the model was trained on, while the slerp stays on it.
//!
//! [`inversion_evaluations`]: crate::diffusion::sampler::inversion_evaluations

use std::path::PathBuf;

use anyhow::Result;

use crate::data::{folder, DataError};
use crate::diffusion::sampler::{Evaluation, SampleOptions, SamplerKind};
use crate::diffusion::{Schedule, Spacing};
use crate::nn::UNet;
use crate::sample::{BatchJob, Denoiser};

/// Below this angle (radians) between the endpoints, or this close to π, [`slerp`] blends
/// linearly: sin θ ≈ 0 leaves the great circle undefined or ill-conditioned.
pub const SLERP_MIN_ANGLE: f64 = 1e-4;

/// The angle θ ∈ [0, π] between `a` and `b` (f64 accumulation); `None` when either is zero.
pub fn angle(a: &[f32], b: &[f32]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "angle: the vectors differ in length");
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some((dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0).acos())
}

/// Spherical linear interpolation from `z0` (α = 0) to `z1` (α = 1):
/// sin((1−α)θ)/sin θ · z₀ + sin(αθ)/sin θ · z₁, θ the angle between them. Falls back to the
/// linear (1−α)·z₀ + α·z₁ when θ or π − θ is below [`SLERP_MIN_ANGLE`] or either vector is
/// zero. α = 0 and α = 1 return the endpoints exactly.
pub fn slerp(z0: &[f32], z1: &[f32], alpha: f64) -> Vec<f32> {
    assert_eq!(z0.len(), z1.len(), "slerp: the endpoints differ in length");
    if alpha == 0.0 {
        return z0.to_vec();
    }
    if alpha == 1.0 {
        return z1.to_vec();
    }
    let (w0, w1) = match angle(z0, z1) {
        Some(theta)
            if theta >= SLERP_MIN_ANGLE && std::f64::consts::PI - theta >= SLERP_MIN_ANGLE =>
        {
            let s = theta.sin();
            (((1.0 - alpha) * theta).sin() / s, (alpha * theta).sin() / s)
        }
        _ => (1.0 - alpha, alpha),
    };
    z0.iter()
        .zip(z1)
        .map(|(&a, &b)| (w0 * f64::from(a) + w1 * f64::from(b)) as f32)
        .collect()
}

/// `frames` (≥ 2) slerps at α = k/(frames − 1), k = 0 … frames − 1, stacked: (F, len).
pub fn slerp_frames(z0: &[f32], z1: &[f32], frames: usize) -> Vec<f32> {
    assert!(frames >= 2, "slerp_frames: need at least two frames");
    (0..frames)
        .flat_map(|k| slerp(z0, z1, k as f64 / (frames - 1) as f64))
        .collect()
}

/// DDIM η = 0 over `steps` steps with `spacing` (the schedule's when `None`), nothing clipped:
/// the sampler an inversion is the reverse of, and the one that decodes its noise.
pub fn ddim_options(schedule: &Schedule, steps: usize, spacing: Option<Spacing>) -> SampleOptions {
    let mut opts = SampleOptions::new(schedule.config(), SamplerKind::Ddim { eta: 0.0 }, steps);
    if let Some(s) = spacing {
        opts.spacing = s;
    }
    opts.clip = None;
    opts
}

/// Runs the inversion `evals` (from [`crate::diffusion::sampler::inversion_evaluations`]) on
/// `images` ((N, C, H, W) in [-1, 1]) with `den`, `batch_size` images per job, and returns
/// their noises (N, C, H, W). `labels` holds one class per image for a class-conditional model.
/// `progress()` is called after each model evaluation of each batch.
pub fn invert(
    den: &mut dyn Denoiser,
    net: &UNet,
    evals: &[Evaluation],
    images: &[f32],
    labels: Option<&[u32]>,
    batch_size: usize,
    progress: &mut dyn FnMut(),
) -> Result<Vec<f32>> {
    let item = net.input_shape(1).len();
    anyhow::ensure!(
        item > 0 && images.len().is_multiple_of(item),
        "invert: {} values are not a whole number of {item}-value images",
        images.len()
    );
    let num = images.len() / item;
    if let Some(l) = labels {
        anyhow::ensure!(
            l.len() == num,
            "invert: {} labels for {num} images",
            l.len()
        );
    }
    let batch = batch_size.min(den.max_batch()).max(1);
    let mut noise = Vec::with_capacity(images.len());
    for first in (0..num).step_by(batch) {
        let n = batch.min(num - first);
        let ids: Vec<u64> = (first as u64..(first + n) as u64).collect();
        let mut x = images[first * item..(first + n) * item].to_vec();
        let mut on_eval = |_: usize, _: Option<(&[f32], &[f32])>| progress();
        den.run(
            net,
            BatchJob {
                evals,
                seed: 0, // deterministic: no step draws noise
                ids: &ids,
                labels: labels.map(|l| &l[first..first + n]),
                guided: false,
                x: &mut x,
                watch: &[],
                on_eval: &mut on_eval,
            },
        )?;
        noise.extend_from_slice(&x);
    }
    Ok(noise)
}

/// Mean squared error between two equally long vectors (f64 accumulation).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "mse: the inputs differ in length");
    if a.is_empty() {
        return 0.0;
    }
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    sum / a.len() as f64
}

/// PSNR in dB of an MSE measured on values in [-1, 1] (peak-to-peak 2): 10·log10(4/MSE);
/// infinite for a perfect match.
pub fn psnr(mse: f64) -> f64 {
    10.0 * (4.0 / mse).log10()
}

/// The image files `paths` name: a file as it is, a directory as every image under it (the
/// data loader's search: recursive, sorted, hidden entries skipped), in the order given.
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let found = folder::image_files(p).map_err(one_line)?;
            if found.is_empty() {
                return Err(one_line(DataError::NoImages { dir: p.clone() }));
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// A data error as one line: its message already quotes its cause, which `{:#}` would repeat.
fn one_line(e: DataError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The images `files` as (N, C, S, S) in [-1, 1], read as `ddpm train` reads a folder
/// (content sniffing, the same checks, resize and centre crop); an error names the file.
pub fn load_images(
    files: &[PathBuf],
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Vec<f32>> {
    let ds = folder::load_files("images", files, size, channels, upscale).map_err(one_line)?;
    Ok(ds
        .pixels
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn slerp_returns_the_endpoints_exactly() {
        let z0 = [0.3f32, -1.7, 2.5, 0.01];
        let z1 = [-0.9f32, 0.4, 1.1, -3.0];
        assert_eq!(slerp(&z0, &z1, 0.0), z0);
        assert_eq!(slerp(&z0, &z1, 1.0), z1);
        let frames = slerp_frames(&z0, &z1, 5);
        assert_eq!(&frames[..4], &z0);
        assert_eq!(&frames[16..], &z1);
    }

    #[test]
    fn slerp_keeps_the_norm_between_orthogonal_unit_vectors() {
        let (e0, e1) = ([1.0f32, 0.0, 0.0], [0.0f32, 1.0, 0.0]);
        for k in 0..=10 {
            let a = k as f64 / 10.0;
            let z = slerp(&e0, &e1, a);
            assert!((norm(&z) - 1.0).abs() < 1e-6, "α = {a}: |z| = {}", norm(&z));
            // On the quarter circle: (cos(απ/2), sin(απ/2), 0).
            let want = [
                (a * std::f64::consts::FRAC_PI_2).cos(),
                (a * std::f64::consts::FRAC_PI_2).sin(),
            ];
            assert!((f64::from(z[0]) - want[0]).abs() < 1e-6, "{z:?}");
            assert!((f64::from(z[1]) - want[1]).abs() < 1e-6, "{z:?}");
            assert_eq!(z[2], 0.0);
        }
        // The linear blend's midpoint is shorter by √2; the slerp's is not.
        let mid: Vec<f32> = e0.iter().zip(&e1).map(|(a, b)| 0.5 * (a + b)).collect();
        assert!((norm(&mid) - 0.5f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn slerp_falls_back_to_lerp_for_parallel_inputs() {
        let z0 = [1.0f32, 2.0, -3.0];
        let z1 = [2.0f32, 4.0, -6.0]; // the same direction, twice as long
        for &a in &[0.25, 0.5, 0.75] {
            let z = slerp(&z0, &z1, a);
            for i in 0..3 {
                let want = (1.0 - a) * f64::from(z0[i]) + a * f64::from(z1[i]);
                assert!((f64::from(z[i]) - want).abs() < 1e-6, "α = {a}: {z:?}");
            }
            assert!(z.iter().all(|v| v.is_finite()));
        }
        // Opposite directions and a zero endpoint: linear too, and finite.
        let neg: Vec<f32> = z0.iter().map(|v| -v).collect();
        assert_eq!(slerp(&z0, &neg, 0.5), [0.0, 0.0, 0.0]);
        assert_eq!(slerp(&z0, &[0.0; 3], 0.5), [0.5, 1.0, -1.5]);
    }

    #[test]
    fn slerp_stays_on_the_shell_of_independent_gaussian_noise() {
        let d = 3 * 8 * 8;
        let z0 = crate::diffusion::sampler::initial_noise(1, &[0], d).unwrap();
        let z1 = crate::diffusion::sampler::initial_noise(2, &[0], d).unwrap();
        let (n0, n1) = (norm(&z0), norm(&z1));
        let theta = angle(&z0, &z1).unwrap();
        assert!(
            (theta - std::f64::consts::FRAC_PI_2).abs() < 0.3,
            "θ = {theta}"
        );
        let mid = norm(&slerp(&z0, &z1, 0.5));
        // Between the endpoints' norms (they differ a little), unlike the lerp's ≈ |z|/√2.
        assert!(
            mid > 0.95 * n0.min(n1) && mid < 1.05 * n0.max(n1),
            "{n0} {n1} {mid}"
        );
    }

    #[test]
    fn psnr_is_in_plus_minus_one_units() {
        assert!((psnr(4.0) - 0.0).abs() < 1e-12);
        assert!((psnr(0.04) - 20.0).abs() < 1e-12);
        assert!(psnr(0.0).is_infinite());
        assert_eq!(mse(&[1.0, -1.0], &[0.0, 1.0]), 2.5);
    }
}
