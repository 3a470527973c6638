//! The reverse process: DDPM ancestral steps and DDIM steps over any timestep spacing.
//!
//! Every step, for both samplers, is one elementwise map ([`step_element`]) with seven f32
//! coefficients ([`StepCoeffs`]) computed per step in f64:
//!
//! ```text
//! raw    = x0_x·xₜ + x0_out·out            x̂₀ from the model output (DDPM eq. 15 for ε)
//! x̂₀     = clamp(raw, −clip, clip)          clip = +∞ when off
//! x_prev = c_x0·x̂₀ + c_x0_raw·raw + c_xt·xₜ + σ·z
//! ```
//!
//! - DDPM, for a step t → prev with ᾱ_prev (= 1 when stepping to x₀): β' = 1 − ᾱₜ/ᾱ_prev and
//!   α' = 1 − β' are the step's own β and α. The mean is the posterior mean μ̃ of
//!   q(x_prev | xₜ, x̂₀) (DDPM eqs. 6, 7):
//!   c_x0 = √ᾱ_prev β'/(1 − ᾱₜ), c_xt = √α' (1 − ᾱ_prev)/(1 − ᾱₜ).
//!   σ² = β̃ = (1 − ᾱ_prev)/(1 − ᾱₜ) β' (`fixed_small`, at least 1e-20) or β' (`fixed_large`);
//!   no noise on a step to x₀. With every timestep visited and no clipping this is DDPM eq. 11
//!   (Algorithm 2).
//! - DDIM (eq. 12): x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z, with
//!   σ = η √((1 − ᾱ_prev)/(1 − ᾱₜ)) √(1 − ᾱₜ/ᾱ_prev) (eq. 16). By default
//!   ε̂ = (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ) is recomputed from the *clipped* x̂₀ (GLIDE's choice, diffusers'
//!   `use_clipped_model_output=True`), so x_prev stays consistent with the x̂₀ actually used.
//!   `eps_from_clipped_x0 = false` keeps the unclipped ε̂ instead, as diffusers does by default
//!   and as the widely copied DDIM loop does. Without clipping the two agree.
//!
//! Noise: x_T of image `id` is the [`NoisePurpose::SampleInit`] stream (id, 0); z of step k
//! (k = 0 for the first step taken) is the [`NoisePurpose::SampleStep`] stream (id, k). So an
//! image's trajectory depends on (seed, id) only, never on its batch.

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::noise::{fill_normal, try_stream, NoisePurpose, STREAM_B_BITS};
use super::schedule::{Schedule, ScheduleConfig, VarianceType};
use super::spacing::{step_pairs, Spacing, StepPair};
use super::target::{PredictionType, Reparam};
use super::DiffusionError;
use crate::shape::expect_len;

/// The reverse-step rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDPM ancestral sampling through the posterior (DDPM eqs. 6, 7, 11).
    Ddpm,
    /// DDIM (eq. 12); η = 0 is deterministic, η = 1 has DDPM's posterior variance (eq. 16).
    Ddim { eta: f64 },
}

/// How to sample: the rule, how many steps, which timesteps, and clipping of x̂₀.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    pub kind: SamplerKind,
    /// N, the number of model evaluations (`quad` may use fewer, see [`super::spacing`]).
    pub steps: usize,
    pub spacing: Spacing,
    /// Clip x̂₀ to ±clip at every step; `None` leaves it alone.
    pub clip: Option<f64>,
    /// DDIM only: derive ε̂ from the clipped x̂₀ (see the module docs).
    pub eps_from_clipped_x0: bool,
    /// Added to every `leading` timestep (diffusers' `steps_offset`).
    pub steps_offset: usize,
    /// DDIM only: whether a last step with no previous timestep lands on ᾱ = 1 (x₀ itself) or
    /// on ᾱ₀ (diffusers' `set_alpha_to_one = false`).
    pub set_alpha_to_one: bool,
}

impl SampleOptions {
    /// Options with the schedule's clipping, spacing, `steps_offset` and `set_alpha_to_one`, and
    /// ε̂ from the clipped x̂₀.
    pub fn new(cfg: &ScheduleConfig, kind: SamplerKind, steps: usize) -> Self {
        Self {
            kind,
            steps,
            spacing: cfg.timestep_spacing,
            clip: cfg.clip_sample.then_some(cfg.clip_sample_range),
            eps_from_clipped_x0: true,
            steps_offset: cfg.steps_offset,
            set_alpha_to_one: cfg.set_alpha_to_one,
        }
    }

    /// Checks the options against the schedule and returns the steps to take.
    pub fn plan(&self, schedule: &Schedule) -> Result<Vec<StepPair>, DiffusionError> {
        if let SamplerKind::Ddim { eta } = self.kind {
            if !(0.0..=1.0).contains(&eta) {
                return Err(DiffusionError::new(
                    "sampler",
                    "eta",
                    format!("must be in [0, 1], got {eta}"),
                ));
            }
        }
        if let Some(c) = self.clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(DiffusionError::new(
                    "sampler",
                    "clip",
                    format!("must be positive and finite, got {c}"),
                ));
            }
        }
        let mut plan = step_pairs(
            self.spacing,
            schedule.num_timesteps(),
            self.steps,
            self.steps_offset,
        )?;
        if let (SamplerKind::Ddim { .. }, Some(last)) = (self.kind, plan.last_mut()) {
            // diffusers' DDIM steps from t to t − ⌊T/N⌋. With `leading` spacing that is the next
            // visited timestep, except on the last step when steps_offset ≥ ⌊T/N⌋: there it is
            // a timestep below the visited ones, and ddpm follows it.
            if self.spacing == Spacing::Leading {
                if let Some(p) = last.t.checked_sub(schedule.num_timesteps() / self.steps) {
                    last.prev = Some(p);
                }
            }
            if !self.set_alpha_to_one {
                // diffusers' `final_alpha_cumprod = alphas_cumprod[0]`.
                last.prev = last.prev.or(Some(0));
            }
        }
        if plan.len() >> STREAM_B_BITS != 0 {
            return Err(DiffusionError::new(
                "sampler",
                "steps",
                format!("{} steps exceed the noise streams' 2^24", plan.len()),
            ));
        }
        Ok(plan)
    }
}

/// Per-step coefficients of [`step_element`], rounded to f32 from f64. Field for field the
/// struct a CUDA step kernel will take.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepCoeffs {
    /// raw x̂₀ = x0_x·xₜ + x0_out·out.
    pub x0_x: f32,
    pub x0_out: f32,
    /// Bound of |x̂₀|; +∞ when clipping is off.
    pub clip: f32,
    /// Weight of the clipped x̂₀ in x_prev.
    pub c_x0: f32,
    /// Weight of the unclipped x̂₀ in x_prev (DDIM with ε̂ from the unclipped x̂₀).
    pub c_x0_raw: f32,
    /// Weight of xₜ in x_prev.
    pub c_xt: f32,
    /// Standard deviation of the added noise; 0 = draw none.
    pub sigma: f32,
}

/// (ᾱₜ, ᾱ_prev) of one step.
fn step_alphas(schedule: &Schedule, pair: StepPair) -> (f64, f64) {
    (
        schedule.alpha_bar(pair.t),
        schedule.alpha_bar_prev(pair.prev),
    )
}

fn clip_f32(clip: Option<f64>) -> f32 {
    clip.map_or(f32::INFINITY, |c| c as f32)
}

impl StepCoeffs {
    /// DDPM ancestral step t → prev through the posterior q(x_prev | xₜ, x̂₀) (DDPM eqs. 6, 7).
    pub fn ddpm(
        schedule: &Schedule,
        prediction: PredictionType,
        variance: VarianceType,
        pair: StepPair,
        clip: Option<f64>,
    ) -> Self {
        let (ab_t, ab_p) = step_alphas(schedule, pair);
        let r = Reparam::new(prediction, ab_t);
        // The step's own β' and α' (= βₜ, αₜ when prev = t − 1).
        let alpha = ab_t / ab_p;
        let beta = 1.0 - alpha;
        // μ̃ = √ᾱ_prev β'/(1 − ᾱₜ) x̂₀ + √α' (1 − ᾱ_prev)/(1 − ᾱₜ) xₜ  (DDPM eq. 7)
        let c_x0 = ab_p.sqrt() * beta / (1.0 - ab_t);
        let c_xt = alpha.sqrt() * (1.0 - ab_p) / (1.0 - ab_t);
        let var = match (pair.prev, variance) {
            (None, _) => 0.0,
            // β̃ = (1 − ᾱ_prev)/(1 − ᾱₜ) β'  (DDPM eq. 7)
            (Some(_), VarianceType::FixedSmall) => ((1.0 - ab_p) / (1.0 - ab_t) * beta).max(1e-20),
            (Some(_), VarianceType::FixedLarge) => beta,
        };
        Self {
            x0_x: r.x0_x as f32,
            x0_out: r.x0_out as f32,
            clip: clip_f32(clip),
            c_x0: c_x0 as f32,
            c_x0_raw: 0.0,
            c_xt: c_xt as f32,
            sigma: var.sqrt() as f32,
        }
    }

    /// DDIM step t → prev (DDIM eq. 12 with σ = η·eq. 16).
    pub fn ddim(
        schedule: &Schedule,
        prediction: PredictionType,
        pair: StepPair,
        clip: Option<f64>,
        eta: f64,
        eps_from_clipped_x0: bool,
    ) -> Self {
        let (ab_t, ab_p) = step_alphas(schedule, pair);
        let r = Reparam::new(prediction, ab_t);
        // σ = η √((1 − ᾱ_prev)/(1 − ᾱₜ)) √(1 − ᾱₜ/ᾱ_prev)  (DDIM eq. 16)
        let sigma = eta * ((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p)).sqrt();
        // "direction pointing to xₜ": √(1 − ᾱ_prev − σ²) ε̂  (DDIM eq. 12)
        let dir = (1.0 - ab_p - sigma * sigma).max(0.0).sqrt();
        // ε̂ = (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ), so the direction is dir/√(1−ᾱₜ)·xₜ − k·x̂₀ with:
        let k = dir * ab_t.sqrt() / (1.0 - ab_t).sqrt();
        let (c_x0, c_x0_raw) = if eps_from_clipped_x0 {
            (ab_p.sqrt() - k, 0.0)
        } else {
            (ab_p.sqrt(), -k)
        };
        Self {
            x0_x: r.x0_x as f32,
            x0_out: r.x0_out as f32,
            clip: clip_f32(clip),
            c_x0: c_x0 as f32,
            c_x0_raw: c_x0_raw as f32,
            c_xt: (dir / (1.0 - ab_t).sqrt()) as f32,
            sigma: sigma as f32,
        }
    }

    /// The coefficients of one step under `opts`, with the schedule's prediction and variance.
    pub fn for_step(schedule: &Schedule, opts: &SampleOptions, pair: StepPair) -> Self {
        let cfg = schedule.config();
        match opts.kind {
            SamplerKind::Ddpm => Self::ddpm(
                schedule,
                cfg.prediction_type,
                cfg.variance_type,
                pair,
                opts.clip,
            ),
            SamplerKind::Ddim { eta } => Self::ddim(
                schedule,
                cfg.prediction_type,
                pair,
                opts.clip,
                eta,
                opts.eps_from_clipped_x0,
            ),
        }
    }
}

/// One element of a reverse step: (x_prev, clipped x̂₀). `z` is ignored when σ = 0.
#[inline]
pub fn step_element(c: &StepCoeffs, x_t: f32, out: f32, z: f32) -> (f32, f32) {
    let raw = c.x0_x * x_t + c.x0_out * out;
    let x0 = raw.clamp(-c.clip, c.clip);
    let mean = c.c_x0 * x0 + c.c_x0_raw * raw + c.c_xt * x_t;
    let x_prev = if c.sigma > 0.0 {
        mean + c.sigma * z
    } else {
        mean
    };
    (x_prev, x0)
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// A reverse step over a batch: writes x_prev and the clipped x̂₀. `z` is needed iff σ > 0.
pub fn apply_step(
    c: &StepCoeffs,
    x_t: &[f32],        // (B, C, H, W)
    out: &[f32],        // (B, C, H, W) model output
    z: Option<&[f32]>,  // (B, C, H, W) standard normal noise
    x_prev: &mut [f32], // (B, C, H, W)
    x0: &mut [f32],     // (B, C, H, W)
) {
    let n = x_t.len();
    let shape = format!("({n})");
    expect_len("apply_step", "out", out.len(), n, &shape);
    expect_len("apply_step", "x_prev", x_prev.len(), n, &shape);
    expect_len("apply_step", "x0", x0.len(), n, &shape);
    let z = match (c.sigma > 0.0, z) {
        (true, Some(z)) => {
            expect_len("apply_step", "z", z.len(), n, &shape);
            Some(z)
        }
        (true, None) => panic!("apply_step: σ = {} > 0 but no noise given", c.sigma),
        (false, _) => None,
    };
    x_prev
        .par_chunks_mut(CHUNK)
        .zip(x0.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (xp, x0))| {
            let base = ci * CHUNK;
            for j in 0..xp.len() {
                let i = base + j;
                let zi = z.map_or(0.0, |z| z[i]);
                (xp[j], x0[j]) = step_element(c, x_t[i], out[i], zi);
            }
        });
}

/// What a step reports, before x is replaced: for progress bars and for showing the reverse
/// process (xₜ and the predicted x̂₀ side by side).
#[derive(Clone, Copy, Debug)]
pub struct StepInfo<'a> {
    /// 0 for the first step taken.
    pub index: usize,
    /// Number of steps in this run.
    pub total: usize,
    pub t: usize,
    /// `None`: this step lands on x₀.
    pub prev: Option<usize>,
    pub x_t: &'a [f32],     // (B, C, H, W)
    pub x0_pred: &'a [f32], // (B, C, H, W) clipped x̂₀
}

fn check_ids(image_ids: &[u64]) -> Result<(), DiffusionError> {
    for &id in image_ids {
        try_stream(NoisePurpose::SampleInit, id, 0).map_err(|_| {
            DiffusionError::new(
                "sampler",
                "image_ids",
                format!("image id {id} is too large: ids must be below 2^36"),
            )
        })?;
    }
    Ok(())
}

/// x_T ~ N(0, I) for each image: image `image_ids[i]` gets the SampleInit stream (id, 0).
pub fn initial_noise(
    seed: u64,
    image_ids: &[u64], // (B)
    item_len: usize,
) -> Result<Vec<f32>, DiffusionError> {
    check_ids(image_ids)?;
    let mut x = vec![0.0f32; image_ids.len() * item_len]; // (B, C, H, W)
    if item_len > 0 {
        for (item, &id) in x.chunks_mut(item_len).zip(image_ids) {
            let s = try_stream(NoisePurpose::SampleInit, id, 0)?;
            fill_normal(seed, s, item);
        }
    }
    Ok(x)
}

/// The network as the sampler calls it: `(x_t (B, C, H, W), t (B), out (B, C, H, W))`, writing
/// the model output under the schedule's prediction type into `out`.
pub type ModelFn<'a> = dyn FnMut(&[f32], &[usize], &mut [f32]) -> anyhow::Result<()> + 'a;

/// Runs the reverse process from x_T (in `x` on entry) to x₀ (in `x` on exit).
///
/// `model(x_t, t, out)` writes the model output for a batch (t: 0-based timestep per item);
/// `on_step` sees each step's xₜ and x̂₀. Image `image_ids[i]` draws its noise from its own
/// streams, so the result for an image does not depend on which images share its batch.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    schedule: &Schedule,
    opts: &SampleOptions,
    x: &mut [f32], // (B, C, H, W): x_T on entry, x_0 on exit
    item_len: usize,
    image_ids: &[u64], // (B) global index of each image, for noise streams
    seed: u64,
    model: &mut ModelFn<'_>,
    on_step: &mut dyn FnMut(StepInfo<'_>),
) -> anyhow::Result<()> {
    let plan = opts.plan(schedule)?;
    check_ids(image_ids)?;
    let batch = image_ids.len();
    if item_len == 0 || x.len() != batch * item_len {
        return Err(DiffusionError::new(
            "sampler",
            "x",
            format!(
                "holds {} values, expected {batch} images of item_len {item_len} (> 0)",
                x.len()
            ),
        )
        .into());
    }
    let n = x.len();
    let mut cur = x.to_vec(); // (B, C, H, W) x_t
    let mut next = vec![0.0f32; n]; // (B, C, H, W) x_prev
    let mut out = vec![0.0f32; n]; // (B, C, H, W) model output
    let mut x0 = vec![0.0f32; n]; // (B, C, H, W) clipped x̂₀
    let mut z = vec![0.0f32; n]; // (B, C, H, W) step noise
    let mut t_items = vec![0usize; batch]; // (B)
    for (k, &pair) in plan.iter().enumerate() {
        t_items.fill(pair.t);
        model(&cur, &t_items, &mut out)
            .with_context(|| format!("model failed at sampling step {k} (t = {})", pair.t))?;
        let c = StepCoeffs::for_step(schedule, opts, pair);
        let noise = if c.sigma > 0.0 {
            for (item, &id) in z.chunks_mut(item_len).zip(image_ids) {
                let s = try_stream(NoisePurpose::SampleStep, id, k as u64)?;
                fill_normal(seed, s, item);
            }
            Some(&z[..])
        } else {
            None
        };
        apply_step(&c, &cur, &out, noise, &mut next, &mut x0);
        on_step(StepInfo {
            index: k,
            total: plan.len(),
            t: pair.t,
            prev: pair.prev,
            x_t: &cur,
            x0_pred: &x0,
        });
        std::mem::swap(&mut cur, &mut next);
    }
    x.copy_from_slice(&cur);
    Ok(())
}
