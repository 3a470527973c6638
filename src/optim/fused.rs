//! The optimizer pass of a training step: gradient clipping, AdamW and the EMA in one sweep over
//! the parameter arena, instead of one sweep each. The CPU twin of `adamw_ema_step_*` in
//! kernels/optim.cu.
//!
//! Per parameter, in the order of the separate steps, so the bits are theirs
//! ([`super::clip_grad_norm`]'s scaling, [`AdamW::update`], [`Ema::update`]):
//! ```text
//! g  = grad · scale               (when clipping; the gradient array itself is not written)
//! θ, m, v ← AdamW(θ, g, m, v)     (adamw_element)
//! ema ← ema + rate · (θ − ema)    (or ema ← θ before the EMA's start step)
//! ```

use rayon::prelude::*;

use super::{adamw_element, AdamW, AdamWCoeffs, Ema, EmaAction, CHUNK};
use crate::ops::simd::multiversion;

/// One AdamW update (update number `adam.step() + 1`) of `params` from `grads` scaled by
/// `grad_scale` (the factor of [`super::clip_factor`], `None` for none), then the EMA update
/// of that same step number from the new weights.
pub fn adamw_ema_step(
    adam: &mut AdamW,
    ema: &mut Ema,
    params: &mut [f32],
    grads: &[f32],
    grad_scale: Option<f32>,
) {
    let t = adam.step() + 1;
    let (c, m, v) = adam.begin_update(params.len(), grads.len());
    let (action, weights) = ema.begin_update(t, params.len());
    update_arena(&c, grad_scale, Some((action, weights)), params, grads, m, v);
}

/// The pass itself, over [`CHUNK`]-sized pieces on the rayon pool.
pub(crate) fn update_arena(
    c: &AdamWCoeffs,
    grad_scale: Option<f32>,
    ema: Option<(EmaAction, &mut [f32])>,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let adam = params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)));
    match ema {
        Some((action, weights)) if action != EmaAction::Skip => adam
            .zip(weights.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), (m, v)), e)| update_chunk(c, grad_scale, action, p, g, m, v, e)),
        _ => adam.for_each(|((p, g), (m, v))| {
            update_chunk(c, grad_scale, EmaAction::Skip, p, g, m, v, &mut [])
        }),
    }
}

multiversion! {
    /// One chunk of the pass; `e` is empty when the EMA is skipped.
    fn update_chunk(
        c: &AdamWCoeffs,
        grad_scale: Option<f32>,
        ema: EmaAction,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        e: &mut [f32],
    ) {
        // One loop per case, so each is a straight vectorisable loop.
        match (grad_scale, ema) {
            (None, EmaAction::Skip) => run::<false, SKIP>(c, 1.0, 0.0, p, g, m, v, e),
            (None, EmaAction::Copy) => run::<false, COPY>(c, 1.0, 0.0, p, g, m, v, e),
            (None, EmaAction::Average { rate }) => run::<false, AVERAGE>(c, 1.0, rate, p, g, m, v, e),
            (Some(s), EmaAction::Skip) => run::<true, SKIP>(c, s, 0.0, p, g, m, v, e),
            (Some(s), EmaAction::Copy) => run::<true, COPY>(c, s, 0.0, p, g, m, v, e),
            (Some(s), EmaAction::Average { rate }) => run::<true, AVERAGE>(c, s, rate, p, g, m, v, e),
        }
    }
}

const SKIP: u8 = 0;
const COPY: u8 = 1;
const AVERAGE: u8 = 2;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run<const CLIP: bool, const EMA: u8>(
    c: &AdamWCoeffs,
    scale: f32,
    rate: f32,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    e: &mut [f32],
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let e = if EMA == SKIP {
        &mut e[..0]
    } else {
        &mut e[..n]
    };
    for i in 0..n {
        let mut gi = g[i];
        if CLIP {
            gi *= scale;
        }
        adamw_element(c, &mut p[i], gi, &mut m[i], &mut v[i]);
        if EMA == COPY {
            e[i] = p[i];
        } else if EMA == AVERAGE {
            e[i] += rate * (p[i] - e[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::simd;
    use crate::optim::{AdamWConfig, EmaConfig};
    use crate::rng::Philox;

    /// The three steps as they were written before the fused pass, element by element.
    struct Reference {
        cfg: AdamWConfig,
        ema: EmaConfig,
        p: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
        e: Vec<f32>,
        t: u64,
    }

    impl Reference {
        fn step(&mut self, grads: &[f32], scale: Option<f32>) {
            let g: Vec<f32> = match scale {
                Some(s) => grads.iter().map(|&g| g * s).collect(),
                None => grads.to_vec(),
            };
            self.t += 1;
            let c = self.cfg.coeffs(self.t);
            let moments = self.m.iter_mut().zip(self.v.iter_mut());
            for ((p, &g), (m, v)) in self.p.iter_mut().zip(&g).zip(moments) {
                adamw_element(&c, p, g, m, v);
            }
            match self.ema.action(self.t) {
                EmaAction::Copy => self.e.copy_from_slice(&self.p),
                EmaAction::Skip => {}
                EmaAction::Average { rate } => {
                    for (e, &p) in self.e.iter_mut().zip(&self.p) {
                        *e += rate * (p - *e);
                    }
                }
            }
        }
    }

    #[test]
    fn one_pass_gives_the_bits_of_the_separate_steps() {
        let _levels = simd::level_lock();
        let n = 3 * CHUNK + 77;
        let mut r = Philox::new(9);
        let p0: Vec<f32> = r.normal_vec(n, 0.5);
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            warmup_steps: 3,
            ..AdamWConfig::default()
        };
        // Copy for two steps, then average every other step: every EMA case occurs.
        let ema_cfg = EmaConfig {
            decay: 0.99,
            start_step: 3,
            update_every: 2,
            warmup: true,
        };
        for level in [simd::Level::Baseline, simd::Level::V3, simd::Level::V4] {
            if !simd::force_level(level) {
                continue;
            }
            let mut adam = AdamW::new(cfg.clone(), n).unwrap();
            let mut ema = Ema::new(ema_cfg.clone(), &p0).unwrap();
            let mut p = p0.clone();
            let mut want = Reference {
                cfg: cfg.clone(),
                ema: ema_cfg.clone(),
                p: p0.clone(),
                m: vec![0.0; n],
                v: vec![0.0; n],
                e: p0.clone(),
                t: 0,
            };
            for step in 0..7 {
                let g: Vec<f32> = r.normal_vec(n, 1e-2);
                let scale = (step % 2 == 1).then_some(0.37f32);
                adamw_ema_step(&mut adam, &mut ema, &mut p, &g, scale);
                want.step(&g, scale);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let (t, m, v) = adam.state();
                assert_eq!(t, want.t);
                assert_eq!(bits(&p), bits(&want.p), "{level:?} step {step}: weights");
                assert_eq!(bits(m), bits(&want.m), "{level:?} step {step}: m");
                assert_eq!(bits(v), bits(&want.v), "{level:?} step {step}: v");
                assert_eq!(
                    bits(ema.weights()),
                    bits(&want.e),
                    "{level:?} step {step}: ema"
                );
            }
        }
        simd::reset_level();
    }
}
