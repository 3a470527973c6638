//! Sinusoidal timestep embedding (Vaswani et al., 2017, §3.5; as used by DDPM, Ho et al. 2020,
//! appendix B), with the diffusers `get_timestep_embedding` options:
//!   f_j = exp(−ln(max_period) · j / (half − freq_shift)),  j = 0 … half−1,  half = ⌊dim/2⌋
//!   emb(t) = [sin(t·f), cos(t·f)]   (or [cos, sin] with `flip_sin_to_cos`), zero-padded if dim is odd.
//! The embedding has no parameters; its backward is with respect to a continuous t (the
//! continuous-time / SDE view feeds real-valued t). Saved for backward: t.

use rayon::prelude::*;

use crate::float::Real;
use crate::shape::{expect_len, ShapeError};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepEmbedding {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    /// diffusers `downscale_freq_shift` (DDPM models use 1, newer ones 0).
    pub freq_shift: f64,
    pub max_period: f64,
}

impl TimestepEmbedding {
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Result<Self, ShapeError> {
        let half = dim / 2;
        if half == 0 || (half as f64 - freq_shift) <= 0.0 {
            return Err(ShapeError::new(
                "timestep_embedding",
                format!("dim {dim} with freq_shift {freq_shift} leaves no frequencies (need dim/2 > freq_shift)"),
            ));
        }
        Ok(Self {
            dim,
            flip_sin_to_cos,
            freq_shift,
            max_period: 10_000.0,
        })
    }

    /// The `half` frequencies f_j.
    pub fn frequencies(&self) -> Vec<f64> {
        let half = self.dim / 2;
        (0..half)
            .map(|j| (-self.max_period.ln() * j as f64 / (half as f64 - self.freq_shift)).exp())
            .collect()
    }

    /// Column of sin(t·f_j) and of cos(t·f_j) within one embedding row.
    fn columns(&self, j: usize) -> (usize, usize) {
        let half = self.dim / 2;
        if self.flip_sin_to_cos {
            (half + j, j)
        } else {
            (j, half + j)
        }
    }
}

/// t: (N) → emb: (N, dim)
pub fn timestep_embedding_forward<T: Real>(e: &TimestepEmbedding, t: &[T], emb: &mut [T]) {
    expect_len(
        "timestep_embedding_forward",
        "emb",
        emb.len(),
        t.len() * e.dim,
        format!("({}, {})", t.len(), e.dim),
    );
    let freqs = e.frequencies();
    emb.par_chunks_mut(e.dim)
        .zip(t.par_iter())
        .for_each(|(row, &tv)| {
            row.fill(T::zero());
            for (j, &f) in freqs.iter().enumerate() {
                let arg = tv.as_f64() * f;
                let (sc, cc) = e.columns(j);
                row[sc] = T::lit(arg.sin());
                row[cc] = T::lit(arg.cos());
            }
        });
}

/// dt[n] = Σ_j f_j · (cos(t f_j) · demb_sin − sin(t f_j) · demb_cos)  (written)
pub fn timestep_embedding_backward<T: Real>(
    e: &TimestepEmbedding,
    t: &[T],
    demb: &[T],
    dt: &mut [T],
) {
    expect_len(
        "timestep_embedding_backward",
        "demb",
        demb.len(),
        t.len() * e.dim,
        format!("({}, {})", t.len(), e.dim),
    );
    expect_len(
        "timestep_embedding_backward",
        "dt",
        dt.len(),
        t.len(),
        format!("({})", t.len()),
    );
    let freqs = e.frequencies();
    dt.par_iter_mut()
        .zip(t.par_iter())
        .zip(demb.par_chunks(e.dim))
        .for_each(|((d, &tv), g)| {
            let mut acc = 0.0f64;
            for (j, &f) in freqs.iter().enumerate() {
                let arg = tv.as_f64() * f;
                let (sc, cc) = e.columns(j);
                acc += f * (arg.cos() * g[sc].as_f64() - arg.sin() * g[cc].as_f64());
            }
            *d = T::lit(acc);
        });
}
