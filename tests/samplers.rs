//! The continuous-time samplers (Euler, Heun, Euler–Maruyama, DPM-Solver++(2M)), DDIM inversion,
//! classifier-free guidance and label dropout, checked against closed forms.
//!
//! The model is exact: for data x₀ ~ N(μ, s²) per pixel, E[ε | xₜ] at ᾱ is
//! ε* = √(1 − ᾱ)(xₜ − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), and the probability-flow ODE over the VE noise level
//! σ = √((1 − ᾱ)/ᾱ) (x̃ = xₜ √(1 + σ²), dx̃/dσ = (x̃ − D(x̃, σ))/σ with the denoiser
//! D = μ + s²/(s² + σ²)·(x̃ − μ)) has the solution x̃(σ) = μ + (x̃₀ − μ)·√(s² + σ²)/√(s² + σ₀²).
//! So every deterministic run has a closed-form answer, and every error below is a
//! discretisation error (or f32 rounding), measured against it.

use ddpm::diffusion::noise::{drop_labels, label_dropped};
use ddpm::diffusion::sampler::{alpha_bar_at, sigma_of, sigma_to_t};
use ddpm::diffusion::*;
use ddpm::sample::evenly_spaced;

const SEED: u64 = 2024;

/// Gaussian data: pixel j of an item is N(amp·sin j, s²).
#[derive(Clone, Copy, Debug)]
struct Data {
    amp: f64,
    s: f64,
}

/// The data set most tests use: μⱼ = 0.3 sin j, s = 0.5.
const DATA: Data = Data { amp: 0.3, s: 0.5 };

impl Data {
    fn mu(&self, j: usize) -> f64 {
        self.amp * (j as f64).sin()
    }

    /// ε* = E[ε | xₜ] at ᾱ.
    fn eps(&self, ab: f64, x: f64, j: usize) -> f64 {
        let s2 = self.s * self.s;
        (1.0 - ab).sqrt() * (x - ab.sqrt() * self.mu(j)) / (ab * s2 + 1.0 - ab)
    }

    /// The exact model output under `pred`, converted from ε*.
    fn output(&self, pred: PredictionType, ab: f64, x: f64, j: usize) -> f64 {
        let eps = self.eps(ab, x, j);
        let (sa, s1) = (ab.sqrt(), (1.0 - ab).sqrt());
        let x0 = (x - s1 * eps) / sa;
        match pred {
            PredictionType::Epsilon => eps,
            PredictionType::Sample => x0,
            PredictionType::VPrediction => sa * eps - s1 * x0,
        }
    }

    /// The denoiser in VE terms, D(x̃, σ) = E[x₀ | x̃].
    fn denoise(&self, xt: f64, sigma: f64, j: usize) -> f64 {
        let s2 = self.s * self.s;
        self.mu(j) + s2 / (s2 + sigma * sigma) * (xt - self.mu(j))
    }

    /// The probability-flow ODE from xₜ (VP) at σ_start down to σ_end, then the denoiser at σ_end:
    /// where every solver here lands, since each one's last step, σ_min → 0, returns x̂₀.
    /// With σ_end = 0 this is the ODE's own x₀.
    fn ode_x0(&self, x: f64, sigma_start: f64, sigma_end: f64, j: usize) -> f64 {
        let (s2, mu) = (self.s * self.s, self.mu(j));
        let xt = x * (1.0 + sigma_start * sigma_start).sqrt();
        let at_end = mu
            + (xt - mu) * (s2 + sigma_end * sigma_end).sqrt()
                / (s2 + sigma_start * sigma_start).sqrt();
        self.denoise(at_end, sigma_end, j)
    }

    /// The model the sampler calls: ᾱ from the (fractional) timestep it is given.
    fn model<'a>(self, s: &'a Schedule, item: usize) -> Box<ModelFn<'a>> {
        let pred = s.config().prediction_type;
        Box::new(move |x, t, out| {
            fill(self, pred, s, item, x, t, out);
            Ok(())
        })
    }
}

/// Writes the exact output of `data` for a batch.
fn fill(
    data: Data,
    pred: PredictionType,
    s: &Schedule,
    item: usize,
    x: &[f32],
    t: &[f32],
    out: &mut [f32],
) {
    assert_eq!(x.len(), t.len() * item);
    for (b, &tb) in t.iter().enumerate() {
        let ab = alpha_bar_at(s, f64::from(tb));
        for j in 0..item {
            let k = b * item + j;
            out[k] = data.output(pred, ab, f64::from(x[k]), j) as f32;
        }
    }
}

fn schedule(pred: PredictionType) -> Schedule {
    Schedule::new(ScheduleConfig {
        prediction_type: pred,
        clip_sample: false,
        ..Default::default()
    })
    .unwrap()
}

fn opts(
    s: &Schedule,
    kind: SamplerKind,
    steps: usize,
    sigmas: Option<SigmaSpacing>,
) -> SampleOptions {
    SampleOptions {
        sigmas,
        ..SampleOptions::new(s.config(), kind, steps)
    }
}

fn ids(batch: usize) -> Vec<u64> {
    (0..batch as u64).collect()
}

/// Runs `o` with the exact model of `data` from `x`.
fn run(s: &Schedule, o: &SampleOptions, x: &mut [f32], item: usize, data: Data) {
    let ids = ids(x.len() / item);
    let mut model = data.model(s, item);
    sample(s, o, x, item, &ids, SEED, &mut *model, &mut |_| {}).unwrap();
}

/// max |got − want|.
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

const ITEM: usize = 64;
const BATCH: usize = 8;

/// A deterministic solver's error against the closed form, from the standard-normal x_T of
/// `BATCH` images.
fn ode_error(kind: SamplerKind, pred: PredictionType, steps: usize, sigmas: SigmaSpacing) -> f64 {
    let s = schedule(pred);
    let o = opts(&s, kind, steps, Some(sigmas));
    let nodes = o.nodes(&s).unwrap();
    let (first, last) = (nodes[0].sigma, nodes[nodes.len() - 1].sigma);
    let x_t = initial_noise(SEED, &ids(BATCH), ITEM).unwrap();
    let want: Vec<f64> = x_t
        .iter()
        .enumerate()
        .map(|(k, &v)| DATA.ode_x0(f64::from(v), first, last, k % ITEM))
        .collect();
    let mut x = x_t;
    run(&s, &o, &mut x, ITEM, DATA);
    max_err(&x, &want)
}

/// A standard-normal x_T of `batch` images.
fn noise(batch: usize, item: usize) -> Vec<f32> {
    initial_noise(SEED, &ids(batch), item).unwrap()
}

/// The σ of each node, then σ = 0.
fn sigmas_to_zero(s: &Schedule, o: &SampleOptions) -> Vec<f64> {
    let mut v: Vec<f64> = o.nodes(s).unwrap().iter().map(|n| n.sigma).collect();
    v.push(0.0);
    v
}

/// Heun without churn (Karras et al. 2022, Algorithm 1) in f64 over VE x̃, with the exact
/// denoiser; `heun = false` is Euler.
fn karras_reference(x_t: &[f32], item: usize, sig: &[f64], heun: bool) -> Vec<f64> {
    x_t.iter()
        .enumerate()
        .map(|(k, &v)| {
            let j = k % item;
            let mut x = f64::from(v) * (1.0 + sig[0] * sig[0]).sqrt();
            for w in sig.windows(2) {
                let (s0, s1) = (w[0], w[1]);
                let d = (x - DATA.denoise(x, s0, j)) / s0;
                let mut next = x + (s1 - s0) * d;
                if heun && s1 > 0.0 {
                    let d1 = (next - DATA.denoise(next, s1, j)) / s1;
                    next = x + (s1 - s0) * (d + d1) / 2.0;
                }
                x = next;
            }
            x
        })
        .collect()
}

/// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in f64 over the VP xₜ with αₜ = √ᾱ,
/// σₜ = √(1 − ᾱ), λ = ln(αₜ/σₜ), the exact data prediction, and a first-order last step.
fn dpm_reference(x_t: &[f32], item: usize, sig: &[f64]) -> Vec<f64> {
    let n = sig.len() - 1;
    x_t.iter()
        .enumerate()
        .map(|(k, &v)| {
            let j = k % item;
            let mut x = f64::from(v);
            let (mut m_prev, mut h_prev) = (0.0, None::<f64>);
            for i in 0..n {
                let ab = 1.0 / (1.0 + sig[i] * sig[i]);
                let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
                let x0 = (x - sigma * DATA.eps(ab, x, j)) / alpha;
                if i == n - 1 {
                    x = x0;
                    break;
                }
                let ab1 = 1.0 / (1.0 + sig[i + 1] * sig[i + 1]);
                let (alpha1, sigma1) = (ab1.sqrt(), (1.0 - ab1).sqrt());
                let h = (alpha1 / sigma1).ln() - (alpha / sigma).ln();
                let d = match h_prev {
                    None => x0,
                    Some(hp) => {
                        let r = hp / h;
                        (1.0 + 1.0 / (2.0 * r)) * x0 - 1.0 / (2.0 * r) * m_prev
                    }
                };
                x = sigma1 / sigma * x - alpha1 * ((-h).exp() - 1.0) * d;
                m_prev = x0;
                h_prev = Some(h);
            }
            x
        })
        .collect()
}

// ---------------------------------------------------------------- noise levels and timesteps

#[test]
fn alpha_bar_at_inverts_sigma_to_t() {
    // The model is called at sigma_to_t(σ) and (here) reads ᾱ back with alpha_bar_at; the sampler
    // itself uses ᾱ = 1/(1 + σ²). The two must agree to rounding.
    let cases = [
        (BetaSchedule::Linear, 1000, 1e-4, 0.02),
        (BetaSchedule::ScaledLinear, 1000, 0.00085, 0.012),
        (BetaSchedule::SquaredCosCapV2, 1000, 1e-4, 0.02),
        (BetaSchedule::Sigmoid, 200, 1e-4, 0.02),
        (BetaSchedule::Linear, 50, 1e-3, 0.2),
    ];
    let mut worst = 0.0f64;
    for (beta_schedule, big_t, beta_start, beta_end) in cases {
        let s = Schedule::new(ScheduleConfig {
            beta_schedule,
            num_train_timesteps: big_t,
            beta_start,
            beta_end,
            ..Default::default()
        })
        .unwrap();
        let (lo, hi) = (sigma_of(&s, 0).ln(), sigma_of(&s, big_t - 1).ln());
        let mut prev_t = -1.0;
        for i in 0..=500 {
            let sigma = (lo + (hi - lo) * i as f64 / 500.0).exp();
            let t = sigma_to_t(&s, sigma);
            let want = 1.0 / (1.0 + sigma * sigma);
            let err = (alpha_bar_at(&s, t) - want).abs() / want;
            worst = worst.max(err);
            assert!(
                err <= 1e-9,
                "{beta_schedule:?} T={big_t}: σ {sigma:e} → t {t}: ᾱ error {err:e}"
            );
            // t is diffusers' `_sigma_to_t`: the training timestep i below σ (by a linear
            // scan) plus ln σ's fraction of the way to σ(i + 1).
            let i = (0..big_t - 1)
                .rev()
                .find(|&i| sigma_of(&s, i) <= sigma)
                .unwrap_or(0);
            let (l0, l1) = (sigma_of(&s, i).ln(), sigma_of(&s, i + 1).ln());
            let want_t = i as f64 + ((sigma.ln() - l0) / (l1 - l0)).clamp(0.0, 1.0);
            assert!(
                (t - want_t).abs() <= 1e-9 * want_t.max(1.0),
                "{beta_schedule:?} T={big_t}: σ {sigma:e}: t {t} vs {want_t}"
            );
            // t lies between the two training timesteps whose σ bracket σ.
            let (a, b) = (t.floor() as usize, (t.ceil() as usize).min(big_t - 1));
            assert!(
                sigma_of(&s, a) <= sigma * (1.0 + 1e-12)
                    && sigma <= sigma_of(&s, b) * (1.0 + 1e-12),
                "{beta_schedule:?}: σ {sigma} at t {t}"
            );
            assert!(t >= prev_t, "sigma_to_t is monotone");
            prev_t = t;
        }
        for t in 0..big_t {
            assert_eq!(alpha_bar_at(&s, t as f64), s.alpha_bar(t));
            let back = sigma_to_t(&s, sigma_of(&s, t));
            assert!((back - t as f64).abs() <= 1e-9, "t {t} → {back}");
        }
    }
    eprintln!("alpha_bar_at(sigma_to_t(σ)) vs 1/(1 + σ²): max relative error {worst:.1e}");
}

#[test]
fn karras_nodes_follow_eq_5_from_sigma_max_to_sigma_min() {
    let s = schedule(PredictionType::Epsilon);
    let big_t = s.num_timesteps();
    let (s_min, s_max) = (sigma_of(&s, 0), sigma_of(&s, big_t - 1));
    for n in [1usize, 2, 10, 57, 1000] {
        let nodes = opts(&s, SamplerKind::Euler, n, Some(SigmaSpacing::Karras))
            .nodes(&s)
            .unwrap();
        assert_eq!(nodes.len(), n);
        let rho = 7.0;
        for (i, node) in nodes.iter().enumerate() {
            // Karras et al. 2022, eq. 5.
            let ramp = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            let want = (s_max.powf(1.0 / rho)
                + ramp * (s_min.powf(1.0 / rho) - s_max.powf(1.0 / rho)))
            .powf(rho);
            assert!(
                (node.sigma - want).abs() <= 1e-12 * want,
                "N={n} node {i}: σ {} vs {want}",
                node.sigma
            );
            let ab = alpha_bar_at(&s, node.t);
            let want_ab = 1.0 / (1.0 + want * want);
            assert!((ab - want_ab).abs() <= 1e-9 * want_ab, "N={n} node {i}");
        }
        assert!(nodes
            .windows(2)
            .all(|w| w[1].sigma < w[0].sigma && w[1].t < w[0].t));
        assert!((nodes[0].sigma - s_max).abs() <= 1e-12 * s_max);
        assert!(
            (nodes[0].t - (big_t - 1) as f64).abs() <= 1e-6,
            "{}",
            nodes[0].t
        );
        if n > 1 {
            let last = nodes[n - 1];
            assert!((last.sigma - s_min).abs() <= 1e-12 * s_min);
            assert!(last.t.abs() <= 1e-6, "{}", last.t);
        }
        if n == 10 {
            // The interior nodes fall between training timesteps.
            let fractional = nodes[1..n - 1]
                .iter()
                .filter(|node| (node.t - node.t.round()).abs() > 1e-3)
                .count();
            assert_eq!(fractional, n - 2, "{nodes:?}");
        }
    }
}

#[test]
fn each_continuous_sampler_evaluates_at_its_nodes_heun_2n_minus_1_times() {
    let s = schedule(PredictionType::Epsilon);
    for n in [1usize, 2, 10, 25] {
        for kind in [
            SamplerKind::Euler,
            SamplerKind::Heun,
            SamplerKind::EulerMaruyama,
            SamplerKind::DpmSolver2M,
        ] {
            for sp in SigmaSpacing::ALL {
                let o = opts(&s, kind, n, Some(sp));
                let nodes = o.nodes(&s).unwrap();
                let evals = o.evaluations(&s).unwrap();
                // Heun: n0, then (nᵢ, nᵢ) for i ≥ 1: the corrector at the next node and, but
                // for the last node, the predictor from it; the last step (to σ = 0) is Euler.
                let want: Vec<usize> = match kind {
                    SamplerKind::Heun => std::iter::once(0)
                        .chain((1..n).flat_map(|i| [i, i]))
                        .collect(),
                    _ => (0..n).collect(),
                };
                assert_eq!(evals.len(), want.len(), "{kind:?} N={n}");
                if kind == SamplerKind::Heun {
                    assert_eq!(evals.len(), 2 * n - 1);
                }
                for (e, &i) in evals.iter().zip(&want) {
                    let sig = nodes[i].sigma;
                    assert_eq!(e.t, nodes[i].t, "{kind:?} N={n}");
                    let ab = 1.0 / (1.0 + sig * sig);
                    assert!((e.alpha_bar - ab).abs() <= 1e-12 * ab);
                }
                // And the model is called exactly that often, at those timesteps.
                let mut calls = Vec::new();
                let mut model = |x: &[f32], t: &[f32], out: &mut [f32]| {
                    calls.push(t[0]);
                    fill(DATA, PredictionType::Epsilon, &s, ITEM, x, t, out);
                    Ok(())
                };
                let mut x = noise(1, ITEM);
                sample(&s, &o, &mut x, ITEM, &[0], SEED, &mut model, &mut |_| {}).unwrap();
                let want_t: Vec<f32> = evals.iter().map(|e| e.t as f32).collect();
                assert_eq!(calls, want_t, "{kind:?} {sp:?} N={n}");
            }
        }
    }
}

// ---------------------------------------------------------------- the probability-flow ODE

#[test]
fn euler_is_first_order_heun_and_dpm_solver_are_second_order() {
    // Error against the closed form at N and 2N nodes. Global error ∝ N^−p: the ratio is 2^p.
    let mut report = Vec::new();
    for pred in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        for sp in SigmaSpacing::ALL {
            for (kind, lo, hi, max_err_80) in [
                (SamplerKind::Euler, 1.6, 2.6, 0.1),
                (SamplerKind::Heun, 3.0, 6.0, 5e-2),
                (SamplerKind::DpmSolver2M, 3.0, 6.0, 5e-2),
            ] {
                let (e40, e80) = (ode_error(kind, pred, 40, sp), ode_error(kind, pred, 80, sp));
                let ratio = e40 / e80;
                report.push(format!(
                    "{kind:?}/{sp}/{pred:?} {e40:.2e}→{e80:.2e} ({ratio:.2})"
                ));
                assert!(
                    (lo..=hi).contains(&ratio) && e80 <= max_err_80,
                    "{kind:?} {sp} {pred:?}: error {e40:.3e} at 40 nodes, {e80:.3e} at 80: ratio \
                     {ratio:.2}, expected in [{lo}, {hi}]"
                );
            }
        }
    }
    eprintln!("error at 40 → 80 nodes:\n  {}", report.join("\n  "));
}

#[test]
fn the_flow_lands_on_the_closed_form_x0() {
    // With N = T Karras nodes Heun reaches the closed form. What separates the solvers' x₀ from
    // the ODE's own (σ = 0) is the last step's denoising at σ_min = σ(0): O(σ_min²/s²).
    let s = schedule(PredictionType::Epsilon);
    let o = opts(&s, SamplerKind::Heun, 1000, Some(SigmaSpacing::Karras));
    let nodes = o.nodes(&s).unwrap();
    let (first, last) = (nodes[0].sigma, nodes[nodes.len() - 1].sigma);
    let x_t = noise(BATCH, ITEM);
    let exact: Vec<f64> = x_t
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let (mu, s) = (DATA.mu(k % ITEM), DATA.s);
            // x₀ = μ + (x √(1 + σ²) − μ) s/√(s² + σ²)
            mu + (f64::from(v) * (1.0 + first * first).sqrt() - mu) * s
                / (s * s + first * first).sqrt()
        })
        .collect();
    let landed: Vec<f64> = x_t
        .iter()
        .enumerate()
        .map(|(k, &v)| DATA.ode_x0(f64::from(v), first, last, k % ITEM))
        .collect();
    let gap = exact
        .iter()
        .zip(&landed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mut x = x_t;
    run(&s, &o, &mut x, ITEM, DATA);
    let (e_exact, e_landed) = (max_err(&x, &exact), max_err(&x, &landed));
    eprintln!(
        "Heun, 1000 Karras nodes: error {e_landed:.1e} (flow to σ_min, denoised), {e_exact:.1e} \
         (flow to σ = 0); the two differ by {gap:.1e}"
    );
    assert!(e_landed <= 5e-5, "{e_landed:e}");
    assert!(
        e_exact <= 5e-5 + gap && gap <= last * last / DATA.s.powi(2),
        "{e_exact:e} {gap:e}"
    );
}

#[test]
fn samplers_match_f64_transcriptions_of_the_papers() {
    // Euler and Heun: Karras et al. 2022, Algorithm 1 (no churn), over VE x̃; DPM-Solver++(2M):
    // Lu et al. 2022, Algorithm 2, over VP xₜ in λ. Same σ, exact denoiser, f64 throughout.
    let mut worst = 0.0f64;
    for pred in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        let s = schedule(pred);
        for steps in [10, 40] {
            for sp in SigmaSpacing::ALL {
                for kind in [
                    SamplerKind::Euler,
                    SamplerKind::Heun,
                    SamplerKind::DpmSolver2M,
                ] {
                    let o = opts(&s, kind, steps, Some(sp));
                    let sig = sigmas_to_zero(&s, &o);
                    let x_t = noise(BATCH, ITEM);
                    let want = match kind {
                        SamplerKind::Euler => karras_reference(&x_t, ITEM, &sig, false),
                        SamplerKind::Heun => karras_reference(&x_t, ITEM, &sig, true),
                        _ => dpm_reference(&x_t, ITEM, &sig),
                    };
                    let mut x = x_t;
                    run(&s, &o, &mut x, ITEM, DATA);
                    let err = max_err(&x, &want);
                    worst = worst.max(err);
                    assert!(err <= 1e-5, "{kind:?} {sp} {pred:?} N={steps}: {err:e}");
                }
            }
        }
    }
    eprintln!("samplers vs f64 transcriptions: max error {worst:.1e}");
}

/// xₜ before every evaluation and the final x.
fn trajectory(s: &Schedule, o: &SampleOptions, x_t: &[f32]) -> Vec<Vec<f32>> {
    let mut states = Vec::new();
    let mut x = x_t.to_vec();
    let mut model = DATA.model(s, ITEM);
    let ids = ids(x.len() / ITEM);
    sample(s, o, &mut x, ITEM, &ids, SEED, &mut *model, &mut |info| {
        states.push(info.x_t.to_vec())
    })
    .unwrap();
    states.push(x);
    states
}

#[test]
fn ddim_eta_0_is_euler_over_the_same_timesteps() {
    // DDIM §4.3: DDIM η = 0 is Euler on the probability-flow ODE in (σ, x̃), step for step.
    let mut worst = 0.0f64;
    for pred in [PredictionType::Epsilon, PredictionType::VPrediction] {
        let s = schedule(pred);
        for spacing in [Spacing::Leading, Spacing::Trailing, Spacing::Linspace] {
            let ddim = SampleOptions {
                spacing,
                ..opts(&s, SamplerKind::Ddim { eta: 0.0 }, 25, None)
            };
            let euler = SampleOptions {
                spacing,
                ..opts(&s, SamplerKind::Euler, 25, Some(SigmaSpacing::Timesteps))
            };
            let x_t = noise(BATCH, ITEM);
            let (a, b) = (trajectory(&s, &ddim, &x_t), trajectory(&s, &euler, &x_t));
            assert_eq!(a.len(), b.len());
            for (k, (xa, xb)) in a.iter().zip(&b).enumerate() {
                let want: Vec<f64> = xb.iter().map(|&v| f64::from(v)).collect();
                let err = max_err(xa, &want);
                worst = worst.max(err);
                assert!(err <= 2e-6, "{pred:?} {spacing}: state {k}: {err:e}");
            }
        }
    }
    eprintln!("DDIM η = 0 vs Euler over the same timesteps: max difference {worst:.1e}");
}

#[test]
fn dpm_solver_2m_first_step_is_a_ddim_step() {
    let s = schedule(PredictionType::Epsilon);
    let dpm = opts(
        &s,
        SamplerKind::DpmSolver2M,
        10,
        Some(SigmaSpacing::Timesteps),
    );
    let ddim = opts(&s, SamplerKind::Ddim { eta: 0.0 }, 10, None);
    let (e_dpm, e_ddim) = (dpm.evaluations(&s).unwrap(), ddim.evaluations(&s).unwrap());
    let pair = ddim.plan(&s).unwrap()[0];
    let (ab, ab_prev) = (s.alpha_bar(pair.t), s.alpha_bar_prev(pair.prev));
    let x_t = noise(BATCH, ITEM);
    let one_step = |evals: &[Evaluation]| {
        let mut x = x_t.clone();
        let mut model = DATA.model(&s, ITEM);
        run_evaluations(
            evals,
            false,
            &mut x,
            ITEM,
            &ids(BATCH),
            SEED,
            &mut *model,
            &mut |_| {},
        )
        .unwrap();
        x
    };
    let (a, b) = (one_step(&e_dpm[..1]), one_step(&e_ddim[..1]));
    // DDIM eq. 12 with σ = 0: x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev) ε̂.
    let want: Vec<f64> = x_t
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let x = f64::from(v);
            let eps = DATA.eps(ab, x, k % ITEM);
            let x0 = (x - (1.0 - ab).sqrt() * eps) / ab.sqrt();
            ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * eps
        })
        .collect();
    let (ea, eb) = (max_err(&a, &want), max_err(&b, &want));
    eprintln!("first step vs DDIM eq. 12: DPM-Solver++(2M) {ea:.1e}, DDIM {eb:.1e}");
    assert!(ea <= 1e-6 && eb <= 1e-6, "{ea:e} {eb:e}");
}

// ---------------------------------------------------------------- the reverse SDE

#[test]
fn euler_maruyama_samples_the_data_distribution() {
    // 51,200 pixels from x_T ~ N(0, 1) through the reverse SDE with the exact score: the result
    // is N(μ, s²) but for the discretisation (its bias in the variance: +0.07 at 100 steps,
    // halving with each doubling) and sampling error.
    let s = schedule(PredictionType::Epsilon);
    let batch = 800;
    let o = opts(
        &s,
        SamplerKind::EulerMaruyama,
        500,
        Some(SigmaSpacing::Karras),
    );
    let mut x = noise(batch, ITEM);
    run(&s, &o, &mut x, ITEM, DATA);
    let r: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(k, &v)| (f64::from(v) - DATA.mu(k % ITEM)) / DATA.s)
        .collect();
    let n = r.len() as f64;
    let mean = r.iter().sum::<f64>() / n;
    let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    // The amplitude of μ recovered by least squares: Σ xⱼ sin j / Σ sin² j.
    let (num, den) = x.iter().enumerate().fold((0.0, 0.0), |(a, b), (k, &v)| {
        let sj = ((k % ITEM) as f64).sin();
        (a + f64::from(v) * sj, b + sj * sj)
    });
    let amp = num / den;
    eprintln!(
        "Euler–Maruyama, 500 steps: standardised mean {mean:.4}, variance {var:.4}; μ amplitude \
         {amp:.4} (want 0, 1, {})",
        DATA.amp
    );
    // 5 standard errors, plus discretisation slack on the variance.
    assert!(mean.abs() <= 5.0 / n.sqrt(), "mean {mean}");
    assert!(
        (amp - DATA.amp).abs() <= 5.0 * DATA.s / den.sqrt(),
        "amplitude {amp}"
    );
    assert!(
        (var - 1.0).abs() <= 5.0 * (2.0 / n).sqrt() + 0.03,
        "variance {var}"
    );
}

// ---------------------------------------------------------------- DDIM inversion

#[test]
fn ddim_inversion_round_trips_and_converges() {
    // Inversion integrates the flow from x₀ up to the first visited timestep t*, so its latent
    // has the closed form x̃(σ*) = μ + (x₀ − μ)√(s² + σ*²)/s; DDIM back lands on x₀. Both are first
    // order in the step.
    for pred in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        let s = schedule(pred);
        let mut errs = Vec::new();
        for steps in [10, 50, 200] {
            let o = opts(&s, SamplerKind::Ddim { eta: 0.0 }, steps, None);
            let z = initial_noise(SEED + 1, &ids(BATCH), ITEM).unwrap();
            let x0: Vec<f32> = z
                .iter()
                .enumerate()
                .map(|(k, &v)| (DATA.mu(k % ITEM) + DATA.s * f64::from(v)) as f32)
                .collect();
            let sig = sigma_of(&s, o.plan(&s).unwrap()[0].t);
            let want_latent: Vec<f64> = x0
                .iter()
                .enumerate()
                .map(|(k, &v)| {
                    let (mu, s) = (DATA.mu(k % ITEM), DATA.s);
                    let xt = mu + (f64::from(v) - mu) * (s * s + sig * sig).sqrt() / s;
                    xt / (1.0 + sig * sig).sqrt()
                })
                .collect();
            let evals = inversion_evaluations(&s, &o).unwrap();
            assert_eq!(evals.len(), steps);
            let mut x = x0.clone();
            let mut model = DATA.model(&s, ITEM);
            run_evaluations(
                &evals,
                false,
                &mut x,
                ITEM,
                &ids(BATCH),
                SEED,
                &mut *model,
                &mut |_| {},
            )
            .unwrap();
            let e_latent = max_err(&x, &want_latent);
            run(&s, &o, &mut x, ITEM, DATA);
            let want: Vec<f64> = x0.iter().map(|&v| f64::from(v)).collect();
            errs.push((steps, e_latent, max_err(&x, &want)));
        }
        let shown: Vec<String> = errs
            .iter()
            .map(|(n, l, r)| format!("{n}: {l:.2e}, {r:.2e}"))
            .collect();
        eprintln!("{pred:?}: DDIM inversion (steps: latent error, reconstruction error) {shown:?}");
        for w in errs.windows(2) {
            let ((n0, l0, r0), (n1, l1, r1)) = (w[0], w[1]);
            assert!(
                l0 / l1 >= 3.0 && r0 / r1 >= 3.0,
                "{pred:?}: {n0} → {n1} steps: latent error {l0:e} → {l1:e}, reconstruction \
                 {r0:e} → {r1:e}"
            );
        }
        let (_, l, r) = errs[errs.len() - 1];
        assert!(l <= 0.2 && r <= 0.05, "{pred:?} at 200 steps: {l:e} {r:e}");
    }
}

// ---------------------------------------------------------------- guidance

#[test]
fn guidance_is_the_mixed_output_inside_the_update() {
    // The conditional and unconditional models are two different Gaussians; a guided run must
    // equal an unguided one whose model returns o_u + g (o_c − o_u) (Ho & Salimans 2022, eq. 6).
    let cond = DATA;
    let uncond = Data { amp: -0.2, s: 0.8 };
    let s = schedule(PredictionType::VPrediction);
    let pred = PredictionType::VPrediction;
    let batch = 4;
    let mut worst = 0.0f64;
    let runs = [
        (SamplerKind::DpmSolver2M, 20),
        (SamplerKind::Heun, 10),
        (SamplerKind::EulerMaruyama, 30),
        (SamplerKind::Ddim { eta: 0.5 }, 20),
        (SamplerKind::Ddpm, 50),
    ];
    for (kind, steps) in runs {
        for g in [0.0, 1.0, 3.0, 7.5] {
            let mut guided = SampleOptions::new(s.config(), kind, steps);
            guided.guidance = Some(g);
            let x_t = noise(batch, ITEM);
            let ids = ids(batch);

            let mut x = x_t.clone();
            let mut both = |x: &[f32], t: &[f32], out: &mut [f32]| {
                let (c, u) = out.split_at_mut(x.len());
                fill(cond, pred, &s, ITEM, x, t, c);
                fill(uncond, pred, &s, ITEM, x, t, u);
                Ok(())
            };
            sample(
                &s,
                &guided,
                &mut x,
                ITEM,
                &ids,
                SEED,
                &mut both,
                &mut |_| {},
            )
            .unwrap();

            let plain = SampleOptions {
                guidance: None,
                ..guided.clone()
            };
            let mut want = x_t.clone();
            let g32 = g as f32;
            let mut mixed = |x: &[f32], t: &[f32], out: &mut [f32]| {
                let mut u = vec![0.0f32; x.len()];
                fill(cond, pred, &s, ITEM, x, t, out);
                fill(uncond, pred, &s, ITEM, x, t, &mut u);
                for (o, u) in out.iter_mut().zip(u) {
                    *o = u + g32 * (*o - u);
                }
                Ok(())
            };
            sample(
                &s,
                &plain,
                &mut want,
                ITEM,
                &ids,
                SEED,
                &mut mixed,
                &mut |_| {},
            )
            .unwrap();
            let want64: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            let scale = want64.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let err = max_err(&x, &want64) / scale;
            worst = worst.max(err);
            assert!(err <= 1e-5, "{kind:?} g = {g}: {err:e}");

            // g = 1 is the conditional model alone, g = 0 the unconditional one; any other g is
            // neither.
            for (only, is) in [(cond, g == 1.0), (uncond, g == 0.0)] {
                let mut x1 = x_t.clone();
                let mut model = only.model(&s, ITEM);
                sample(
                    &s,
                    &plain,
                    &mut x1,
                    ITEM,
                    &ids,
                    SEED,
                    &mut *model,
                    &mut |_| {},
                )
                .unwrap();
                let x1: Vec<f64> = x1.iter().map(|&v| f64::from(v)).collect();
                let err = max_err(&x, &x1) / scale;
                if is {
                    worst = worst.max(err);
                    assert!(err <= 1e-5, "{kind:?} g = {g} vs that model alone: {err:e}");
                } else {
                    assert!(err >= 1e-2, "{kind:?} g = {g} is one model alone: {err:e}");
                }
            }
        }
    }
    eprintln!("guided runs vs mixed-output runs: max relative difference {worst:.1e}");
}

// ---------------------------------------------------------------- label dropout, watching

#[test]
fn label_dropout_has_rate_p_and_is_a_pure_function_of_seed_step_item() {
    let (p, seed, null) = (0.1, 99, 10u32);
    let labels: Vec<u32> = (0..100).map(|i| i % 10).collect();
    let mut dropped = 0usize;
    let steps = 1000;
    for step in 0..steps {
        let d = drop_labels(&labels, seed, step, p, null);
        assert_eq!(d, drop_labels(&labels, seed, step, p, null), "pure");
        for (i, (&y, &l)) in d.iter().zip(&labels).enumerate() {
            let was = label_dropped(seed, step, i as u64, p);
            assert_eq!(y, if was { null } else { l });
            dropped += usize::from(was);
        }
    }
    let n = (steps as usize * labels.len()) as f64;
    let frac = dropped as f64 / n;
    let se = (p * (1.0 - p) / n).sqrt();
    eprintln!("label dropout p = {p}: dropped {frac:.5} of {n} (standard error {se:.1e})");
    assert!((frac - p).abs() <= 5.0 * se, "dropped fraction {frac}");
    // Another seed drops other labels; p = 0 drops none and p = 1 all.
    let a: Vec<bool> = (0..1000).map(|i| label_dropped(seed, 3, i, p)).collect();
    let b: Vec<bool> = (0..1000)
        .map(|i| label_dropped(seed + 1, 3, i, p))
        .collect();
    assert_ne!(a, b);
    let c: Vec<bool> = (0..1000).map(|i| label_dropped(seed, 4, i, p)).collect();
    assert_ne!(a, c);
    for step in 0..100 {
        assert_eq!(drop_labels(&labels, seed, step, 0.0, null), labels);
        assert!(drop_labels(&labels, seed, step, 1.0, null)
            .iter()
            .all(|&y| y == null));
    }
}

#[test]
fn evenly_spaced_keeps_both_ends() {
    assert!(evenly_spaced(0, 10).is_empty());
    assert!(evenly_spaced(5, 0).is_empty());
    assert_eq!(evenly_spaced(1, 10), vec![9]);
    assert_eq!(evenly_spaced(3, 11), vec![0, 5, 10]);
    for total in 1..80 {
        for k in 2..=total + 5 {
            let v = evenly_spaced(k, total);
            assert_eq!(v[0], 0, "k={k} total={total}");
            assert_eq!(*v.last().unwrap(), total - 1, "k={k} total={total}");
            assert!(
                v.windows(2).all(|w| w[0] < w[1]),
                "k={k} total={total}: {v:?}"
            );
            assert_eq!(v.len(), k.min(total), "k={k} total={total}: {v:?}");
            // Gaps differ by at most one position from the ideal (total − 1)/(k − 1).
            if k <= total {
                let ideal = (total - 1) as f64 / (k - 1) as f64;
                for (i, &e) in v.iter().enumerate() {
                    assert!((e as f64 - i as f64 * ideal).abs() <= 0.5 + 1e-9);
                }
            }
        }
    }
}
