//! The reverse process: every sampler as a sequence of model evaluations, each followed by one
//! elementwise update ([`coeffs`]) whose coefficients are computed per step in f64.
//!
//! - [`SamplerKind::Ddpm`], [`SamplerKind::Ddim`]: discrete steps between visited timesteps
//!   ([`discrete`]: DDPM eqs. 6, 7, 11; DDIM eqs. 12, 16).
//! - [`SamplerKind::Euler`], [`SamplerKind::Heun`]: the probability-flow ODE; and
//!   [`SamplerKind::EulerMaruyama`]: the reverse SDE; [`SamplerKind::DpmSolver2M`]: DPM-Solver++(2M)
//!   ([`continuous`]: over noise levels σ, Karras or the spacing's).
//! - Classifier-free guidance (Ho & Salimans 2022, eq. 6): the model returns a conditional and
//!   an unconditional output per image, mixed inside the update.
//!
//! Noise: x_T of image `id` is the [`NoisePurpose::SampleInit`] stream (id, 0); z of
//! evaluation k (k = 0 for the first) is the [`NoisePurpose::SampleStep`] stream (id, k). So an
//! image's trajectory depends on (seed, id) only, never on its batch.

pub mod coeffs;
pub mod continuous;
pub mod discrete;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use coeffs::{
    apply_step, apply_update, step_element, step_element_full, StepBuffers, StepCoeffs,
};
pub use continuous::{alpha_bar_at, sigma_of, sigma_to_t, Node, SigmaSpacing};

use super::noise::{fill_normal, try_stream, NoisePurpose, STREAM_B_BITS};
use super::schedule::{Schedule, ScheduleConfig};
use super::spacing::{step_pairs, Spacing, StepPair};
use super::DiffusionError;

/// The reverse-step rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDPM ancestral sampling through the posterior (DDPM eqs. 6, 7, 11).
    Ddpm,
    /// DDIM (eq. 12); η = 0 is deterministic, η = 1 has DDPM's posterior variance (eq. 16).
    Ddim { eta: f64 },
    /// Euler on the probability-flow ODE (first order, one evaluation per step).
    Euler,
    /// Heun on the probability-flow ODE (second order, two evaluations per step but the last).
    Heun,
    /// Euler–Maruyama on the reverse VP SDE (stochastic, one evaluation per step).
    EulerMaruyama,
    /// DPM-Solver++(2M): second-order multistep in x̂₀, one evaluation per step.
    #[serde(rename = "dpmpp_2m")]
    DpmSolver2M,
}

impl SamplerKind {
    /// The name `--sampler` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim { .. } => "ddim",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::EulerMaruyama => "euler-maruyama",
            Self::DpmSolver2M => "dpm++2m",
        }
    }

    /// Whether it steps between noise levels σ ([`continuous`]) rather than timesteps.
    pub fn is_continuous(self) -> bool {
        !matches!(self, Self::Ddpm | Self::Ddim { .. })
    }

    /// The σ spacing it uses unless told otherwise: Karras for the ODE/SDE solvers (as in
    /// Karras et al. 2022), the timesteps for DPM-Solver++ (as diffusers does).
    pub fn default_sigmas(self) -> SigmaSpacing {
        match self {
            Self::DpmSolver2M => SigmaSpacing::Timesteps,
            _ => SigmaSpacing::Karras,
        }
    }
}

/// How to sample: the rule, how many steps, which timesteps, clipping of x̂₀, guidance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    pub kind: SamplerKind,
    /// N: steps for the discrete samplers (`quad` may use fewer, see [`super::spacing`]), noise
    /// levels for the continuous ones (Heun evaluates the model 2N − 1 times).
    pub steps: usize,
    pub spacing: Spacing,
    /// Continuous samplers: which σ to visit (`None`: the sampler's default).
    #[serde(default)]
    pub sigmas: Option<SigmaSpacing>,
    /// Clip x̂₀ to ±clip at every step; `None` leaves it alone.
    pub clip: Option<f64>,
    /// DDIM only: derive ε̂ from the clipped x̂₀ (see [`discrete`]).
    pub eps_from_clipped_x0: bool,
    /// Added to every `leading` timestep (diffusers' `steps_offset`).
    pub steps_offset: usize,
    /// DDIM only: whether a last step with no previous timestep lands on ᾱ = 1 (x₀ itself) or
    /// on ᾱ₀ (diffusers' `set_alpha_to_one = false`).
    pub set_alpha_to_one: bool,
    /// Classifier-free guidance scale g: the model output is o_u + g·(o_c − o_u). `None`: the
    /// model is called once per image, unguided.
    #[serde(default)]
    pub guidance: Option<f64>,
}

/// One model evaluation and the update after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// The (possibly fractional) timestep the model is called at.
    pub t: f64,
    /// ᾱ of the model's input xₜ.
    pub alpha_bar: f64,
    pub coeffs: StepCoeffs,
}

impl SampleOptions {
    /// Options with the schedule's clipping, spacing, `steps_offset` and `set_alpha_to_one`, and
    /// ε̂ from the clipped x̂₀; no guidance.
    pub fn new(cfg: &ScheduleConfig, kind: SamplerKind, steps: usize) -> Self {
        Self {
            kind,
            steps,
            spacing: cfg.timestep_spacing,
            sigmas: None,
            clip: cfg.clip_sample.then_some(cfg.clip_sample_range),
            eps_from_clipped_x0: true,
            steps_offset: cfg.steps_offset,
            set_alpha_to_one: cfg.set_alpha_to_one,
            guidance: None,
        }
    }

    fn check(&self) -> Result<(), DiffusionError> {
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
        if let Some(g) = self.guidance {
            if !g.is_finite() {
                return Err(DiffusionError::new(
                    "sampler",
                    "guidance_scale",
                    format!("must be finite, got {g}"),
                ));
            }
        }
        if self.sigmas.is_some() && !self.kind.is_continuous() {
            return Err(DiffusionError::new(
                "sampler",
                "sigmas",
                format!(
                    "applies to euler, heun, euler-maruyama and dpm++2m, not {}",
                    self.kind.name()
                ),
            ));
        }
        Ok(())
    }

    /// Checks the options against the schedule and returns the steps a discrete sampler (DDPM,
    /// DDIM) takes; an error for the continuous ones (see [`Self::evaluations`]).
    pub fn plan(&self, schedule: &Schedule) -> Result<Vec<StepPair>, DiffusionError> {
        self.check()?;
        if self.kind.is_continuous() {
            return Err(DiffusionError::new(
                "sampler",
                "sampler",
                format!(
                    "{} steps between noise levels, not timesteps",
                    self.kind.name()
                ),
            ));
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
        Ok(plan)
    }

    /// The noise levels a continuous sampler visits, before the final σ = 0.
    pub fn nodes(&self, schedule: &Schedule) -> Result<Vec<Node>, DiffusionError> {
        let kind = self.sigmas.unwrap_or(self.kind.default_sigmas());
        continuous::nodes(schedule, kind, self.spacing, self.steps, self.steps_offset)
    }

    /// Checks the options against the schedule and returns every model evaluation in order.
    pub fn evaluations(&self, schedule: &Schedule) -> Result<Vec<Evaluation>, DiffusionError> {
        self.check()?;
        let cfg = schedule.config();
        let pred = cfg.prediction_type;
        let guidance = self.guidance.unwrap_or(1.0) as f32;
        let mut evals = Vec::new();
        if self.kind.is_continuous() {
            let nodes = self.nodes(schedule)?;
            let clip = self.clip;
            let mut h_prev = None;
            for (i, n) in nodes.iter().enumerate() {
                let s_next = nodes.get(i + 1).map_or(0.0, |m| m.sigma);
                let at = |node: &Node, coeffs: StepCoeffs| Evaluation {
                    t: node.t,
                    alpha_bar: 1.0 / (1.0 + node.sigma * node.sigma),
                    coeffs,
                };
                match self.kind {
                    SamplerKind::Euler => {
                        evals.push(at(n, continuous::euler(pred, n.sigma, s_next, clip)))
                    }
                    SamplerKind::Heun if s_next > 0.0 => {
                        let next = &nodes[i + 1];
                        evals.push(at(n, continuous::heun_predict(pred, n.sigma, s_next, clip)));
                        evals.push(at(
                            next,
                            continuous::heun_correct(pred, n.sigma, s_next, clip),
                        ));
                    }
                    SamplerKind::Heun => {
                        evals.push(at(n, continuous::euler(pred, n.sigma, s_next, clip)))
                    }
                    SamplerKind::EulerMaruyama => evals.push(at(
                        n,
                        continuous::euler_maruyama(pred, n.sigma, s_next, clip),
                    )),
                    SamplerKind::DpmSolver2M => {
                        evals.push(at(
                            n,
                            continuous::dpm_solver_2m(pred, n.sigma, s_next, h_prev, clip),
                        ));
                        h_prev = (s_next > 0.0).then(|| (n.sigma / s_next).ln());
                    }
                    SamplerKind::Ddpm | SamplerKind::Ddim { .. } => unreachable!(),
                }
            }
        } else {
            for pair in self.plan(schedule)? {
                evals.push(Evaluation {
                    t: pair.t as f64,
                    alpha_bar: schedule.alpha_bar(pair.t),
                    coeffs: StepCoeffs::for_step(schedule, self, pair),
                });
            }
        }
        for e in &mut evals {
            e.coeffs.guidance = guidance;
        }
        if evals.len() >> STREAM_B_BITS != 0 {
            return Err(DiffusionError::new(
                "sampler",
                "steps",
                format!("{} evaluations exceed the noise streams' 2^24", evals.len()),
            ));
        }
        Ok(evals)
    }

    /// Model evaluations per image, counting a guided one once.
    pub fn num_evaluations(&self, schedule: &Schedule) -> Result<usize, DiffusionError> {
        Ok(self.evaluations(schedule)?.len())
    }
}

impl StepCoeffs {
    /// The coefficients of one discrete step under `opts`, with the schedule's prediction and
    /// variance.
    pub fn for_step(schedule: &Schedule, opts: &SampleOptions, pair: StepPair) -> Self {
        let cfg = schedule.config();
        match opts.kind {
            SamplerKind::Ddim { eta } => Self::ddim(
                schedule,
                cfg.prediction_type,
                pair,
                opts.clip,
                eta,
                opts.eps_from_clipped_x0,
            ),
            _ => Self::ddpm(
                schedule,
                cfg.prediction_type,
                cfg.variance_type,
                pair,
                opts.clip,
            ),
        }
    }
}

/// DDIM inversion (see [`discrete`]): the reverse of the DDIM plan `opts` gives, from x₀ up to
/// the first visited timestep. Deterministic; nothing is clipped.
pub fn inversion_evaluations(
    schedule: &Schedule,
    opts: &SampleOptions,
) -> Result<Vec<Evaluation>, DiffusionError> {
    let ddim = SampleOptions {
        kind: SamplerKind::Ddim { eta: 0.0 },
        sigmas: None,
        ..opts.clone()
    };
    let pred = schedule.config().prediction_type;
    Ok(ddim
        .plan(schedule)?
        .into_iter()
        .rev()
        .map(|pair| Evaluation {
            t: pair.t as f64,
            alpha_bar: schedule.alpha_bar_prev(pair.prev),
            coeffs: StepCoeffs::ddim_inverse(schedule, pred, pair),
        })
        .collect())
}

/// What an evaluation reports, before x is replaced: for progress bars and for showing the
/// reverse process (xₜ and the predicted x̂₀ side by side).
#[derive(Clone, Copy, Debug)]
pub struct StepInfo<'a> {
    /// 0 for the first evaluation.
    pub index: usize,
    /// Number of evaluations in this run.
    pub total: usize,
    /// The timestep the model was called at (fractional for Karras σ).
    pub t: f64,
    /// ᾱ of xₜ.
    pub alpha_bar: f64,
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

/// The network as the sampler calls it: `(x_t (B, C, H, W), t (B), out)`, writing the model
/// output under the schedule's prediction type into `out`: (B, C, H, W), or for a guided run
/// (2B, C, H, W), the conditional outputs first and the unconditional ones after them.
pub type ModelFn<'a> = dyn FnMut(&[f32], &[f32], &mut [f32]) -> anyhow::Result<()> + 'a;

/// Runs `evals` from the x in `x` (on entry) to the result (in `x` on exit).
///
/// `model(x_t, t, out)` writes the model output for a batch; `on_step` sees each evaluation's
/// xₜ and x̂₀. Image `image_ids[i]` draws its noise from its own streams, so the result for an
/// image does not depend on which images share its batch.
#[allow(clippy::too_many_arguments)]
pub fn run_evaluations(
    evals: &[Evaluation],
    guided: bool,
    x: &mut [f32], // (B, C, H, W)
    item_len: usize,
    image_ids: &[u64], // (B) global index of each image, for noise streams
    seed: u64,
    model: &mut ModelFn<'_>,
    on_step: &mut dyn FnMut(StepInfo<'_>),
) -> anyhow::Result<()> {
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
    let mut next = vec![0.0f32; n]; // (B, C, H, W) x_new
    let mut out = vec![0.0f32; if guided { 2 * n } else { n }]; // (B or 2B, C, H, W)
    let mut x0 = vec![0.0f32; n]; // (B, C, H, W) clipped x̂₀
    let mut z = vec![0.0f32; n]; // (B, C, H, W) step noise
    let mut hist = Vec::new(); // (B, C, H, W), allocated when a sampler needs it
    let mut t_items = vec![0.0f32; batch]; // (B)
    for (k, e) in evals.iter().enumerate() {
        t_items.fill(e.t as f32);
        model(&cur, &t_items, &mut out)
            .with_context(|| format!("model failed at sampling step {k} (t = {})", e.t))?;
        let c = &e.coeffs;
        let noise = if c.sigma > 0.0 {
            for (item, &id) in z.chunks_mut(item_len).zip(image_ids) {
                let s = try_stream(NoisePurpose::SampleStep, id, k as u64)?;
                fill_normal(seed, s, item);
            }
            Some(&z[..])
        } else {
            None
        };
        if (c.reads_history() || c.writes_history()) && hist.is_empty() {
            hist = vec![0.0f32; n];
        }
        let (out_c, out_u) = out.split_at(n);
        apply_update(
            c,
            StepBuffers {
                x_t: &cur,
                out: out_c,
                out_uncond: guided.then_some(out_u),
                hist: (!hist.is_empty()).then_some(&mut hist[..]),
                z: noise,
                x_new: &mut next,
                x0: &mut x0,
            },
        );
        on_step(StepInfo {
            index: k,
            total: evals.len(),
            t: e.t,
            alpha_bar: e.alpha_bar,
            x_t: &cur,
            x0_pred: &x0,
        });
        std::mem::swap(&mut cur, &mut next);
    }
    x.copy_from_slice(&cur);
    Ok(())
}

/// Runs the reverse process of `opts` from x_T (in `x` on entry) to x₀ (in `x` on exit); see
/// [`run_evaluations`].
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
    let evals = opts.evaluations(schedule)?;
    run_evaluations(
        &evals,
        opts.guidance.is_some(),
        x,
        item_len,
        image_ids,
        seed,
        model,
        on_step,
    )
}
