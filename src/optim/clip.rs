//! Global gradient-norm clipping (Pascanu et al. 2013), over all parameters at once.

use rayon::prelude::*;

use super::CHUNK;
use crate::ops::simd;

/// Chunks whose sums one pass computes side by side.
const WAYS: usize = 8;

/// ‖g‖₂ over all gradients. Squares are summed in f64 per fixed chunk, and the chunk sums are
/// added in order, so the result does not depend on the thread count.
///
/// Each chunk's sum is one sequential chain of additions (which fixes its bits); a lone chain
/// waits on the adder's latency at every element, so [`WAYS`] neighbouring chunks are summed
/// together, element i of each in turn: the same chains, interleaved.
pub fn global_grad_norm(grads: &[f32]) -> f64 {
    let mut partials = vec![0.0f64; grads.len().div_ceil(CHUNK)];
    partials
        .par_chunks_mut(WAYS)
        .zip(grads.par_chunks(WAYS * CHUNK))
        .for_each(|(sums, g)| chunk_square_sums(g, sums));
    partials.iter().sum::<f64>().sqrt()
}

/// sums[k] = Σ g² over chunk k of `g` (chunks of [`CHUNK`], the last may be short), each a
/// sequential sum.
fn chunk_square_sums(g: &[f32], sums: &mut [f64]) {
    if let (Ok(sums), true) = (
        <&mut [f64; WAYS]>::try_from(&mut *sums),
        g.len() == WAYS * CHUNK,
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd::level() != simd::Level::Baseline {
            // SAFETY: the CPU has AVX2 (x86-64-v3 or above), and g holds WAYS chunks.
            *sums = unsafe { square_sums_avx2(g) };
            return;
        }
        // Eight independent chains, one per chunk.
        let mut acc = [0.0f64; WAYS];
        for i in 0..CHUNK {
            for (k, a) in acc.iter_mut().enumerate() {
                let v = f64::from(g[k * CHUNK + i]);
                *a += v * v;
            }
        }
        *sums = acc;
    } else {
        for (s, c) in sums.iter_mut().zip(g.chunks(CHUNK)) {
            *s = c.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
        }
    }
}

/// [`chunk_square_sums`] of [`WAYS`] = 8 whole chunks with AVX2: four elements of each chunk
/// are squared as vectors, transposed, and added to the chunks' chains in element order (two
/// vector chains, chunks 0–3 and 4–7). Compilers turn the scalar version into gathers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn square_sums_avx2(g: &[f32]) -> [f64; WAYS] {
    use std::arch::x86_64::*;
    assert!(g.len() == WAYS * CHUNK);
    let base = g.as_ptr();
    // Rows k..k+4, elements i..i+4, transposed: out[j] = (g_k[i + j], …, g_{k+3}[i + j])².
    let block = |k: usize, i: usize| {
        // SAFETY: k + 3 < WAYS and i + 3 < CHUNK, so every load is within g.
        let sq = |r: usize| unsafe {
            let v = _mm256_cvtps_pd(_mm_loadu_ps(base.add(r * CHUNK + i)));
            _mm256_mul_pd(v, v)
        };
        let (a0, a1, a2, a3) = (sq(k), sq(k + 1), sq(k + 2), sq(k + 3));
        let u0 = _mm256_unpacklo_pd(a0, a1);
        let u1 = _mm256_unpackhi_pd(a0, a1);
        let u2 = _mm256_unpacklo_pd(a2, a3);
        let u3 = _mm256_unpackhi_pd(a2, a3);
        [
            _mm256_permute2f128_pd::<0x20>(u0, u2),
            _mm256_permute2f128_pd::<0x20>(u1, u3),
            _mm256_permute2f128_pd::<0x31>(u0, u2),
            _mm256_permute2f128_pd::<0x31>(u1, u3),
        ]
    };
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for i in (0..CHUNK).step_by(4) {
        let (l, h) = (block(0, i), block(4, i));
        for j in 0..4 {
            lo = _mm256_add_pd(lo, l[j]);
            hi = _mm256_add_pd(hi, h[j]);
        }
    }
    let mut out = [0.0f64; WAYS];
    _mm256_storeu_pd(out.as_mut_ptr(), lo);
    _mm256_storeu_pd(out.as_mut_ptr().add(4), hi);
    out
}

/// The factor [`clip_grad_norm`] scales the gradients by, max_norm/(‖g‖ + 1e-6) rounded to f32,
/// or `None` when it leaves them alone: clipping disabled (`max_norm` ≤ 0, infinite or NaN), a
/// non-finite norm, or a norm within the limit.
pub fn clip_factor(norm: f64, max_norm: f64) -> Option<f32> {
    let enabled = max_norm > 0.0 && max_norm.is_finite();
    (enabled && norm.is_finite() && norm > max_norm).then(|| (max_norm / (norm + 1e-6)) as f32)
}

/// Scales `grads` by max_norm/(‖g‖ + 1e-6) when ‖g‖ > max_norm, and returns ‖g‖ before clipping.
/// `max_norm` ≤ 0, infinite or NaN disables clipping. A non-finite norm leaves the gradients
/// alone: the caller should skip that step.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_grad_norm(grads);
    if let Some(scale) = clip_factor(norm, max_norm) {
        grads.par_chunks_mut(CHUNK).for_each(|c| {
            for g in c {
                *g *= scale;
            }
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    #[test]
    fn the_norm_is_the_sum_of_sequential_chunk_sums() {
        let _levels = simd::level_lock();
        // Whole groups of WAYS chunks, a short group, a short last chunk; zeros and extremes.
        let mut r = Philox::new(3);
        for n in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            3 * CHUNK + 5,
            WAYS * CHUNK,
            2 * WAYS * CHUNK + CHUNK / 2 + 1,
        ] {
            let mut g: Vec<f32> = r.normal_vec(n, 1.0);
            if n > 10 {
                g[3] = 0.0;
                g[7] = 3e38;
                g[9] = -1e-40;
            }
            let want: f64 = g
                .chunks(CHUNK)
                .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
                .collect::<Vec<_>>()
                .iter()
                .sum::<f64>()
                .sqrt();
            for level in [simd::Level::Baseline, simd::Level::V3, simd::Level::V4] {
                if simd::force_level(level) {
                    assert_eq!(
                        global_grad_norm(&g).to_bits(),
                        want.to_bits(),
                        "n {n}, {level:?}"
                    );
                }
            }
            simd::reset_level();
        }
    }
}
