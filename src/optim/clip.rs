//! Global gradient-norm clipping (Pascanu et al. 2013), over all parameters at once.

use rayon::prelude::*;

use super::CHUNK;

/// ‖g‖₂ over all gradients. Squares are summed in f64 per fixed chunk, and the chunk sums are
/// added in order, so the result does not depend on the thread count.
pub fn global_grad_norm(grads: &[f32]) -> f64 {
    let partials: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum())
        .collect();
    partials.iter().sum::<f64>().sqrt()
}

/// Scales `grads` by max_norm/(‖g‖ + 1e-6) when ‖g‖ > max_norm, and returns ‖g‖ before clipping.
/// `max_norm` ≤ 0, infinite or NaN disables clipping. A non-finite norm leaves the gradients
/// alone: the caller should skip that step.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_grad_norm(grads);
    let enabled = max_norm > 0.0 && max_norm.is_finite();
    if enabled && norm.is_finite() && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        grads.par_chunks_mut(CHUNK).for_each(|c| {
            for g in c {
                *g *= scale;
            }
        });
    }
    norm
}
