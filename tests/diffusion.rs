//! Schedules, spacings, noise, the forward process and the samplers, checked against closed
//! forms and independent computations written here (never against our own earlier output).

use ddpm::diffusion::noise::{fill_train_noise, normal_at, timestep_for, try_stream};
use ddpm::diffusion::sampler::{alpha_bar_at, apply_step};
use ddpm::diffusion::*;
use ddpm::rng::philox_word;

fn schedule(cfg: ScheduleConfig) -> Schedule {
    Schedule::new(cfg).unwrap()
}

fn with_schedule(b: BetaSchedule) -> Schedule {
    schedule(ScheduleConfig {
        beta_schedule: b,
        ..Default::default()
    })
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-300),
        "{what}: got {got:e}, want {want:e}"
    );
}

// ---------------------------------------------------------------- schedules

#[test]
fn linear_alpha_bar_matches_an_independent_product() {
    let s = with_schedule(BetaSchedule::Linear);
    let mut prod = 1.0f64;
    for i in 0..1000 {
        prod *= 1.0 - (1e-4 + i as f64 * (0.02 - 1e-4) / 999.0);
        if i % 111 == 0 || i == 999 {
            close(s.alpha_bar(i), prod, 1e-12, &format!("ᾱ[{i}]"));
            close(s.alphas_cumprod()[i] as f64, prod, 1e-6, "f32 ᾱ");
        }
    }
    // The literal everyone quotes for the DDPM linear schedule.
    assert_eq!(format!("{:.2e}", s.alpha_bar(999)), "4.04e-5");
    assert_eq!(s.betas()[0], 1e-4f32);
    assert_eq!(s.betas()[999], 0.02f32);
    for t in [0, 500, 999] {
        close(s.alphas()[t] as f64, 1.0 - s.beta(t), 1e-7, "α = 1 − β");
        let (sa, s1) = (
            s.sqrt_alphas_cumprod()[t],
            s.sqrt_one_minus_alphas_cumprod()[t],
        );
        close(sa as f64, s.alpha_bar(t).sqrt(), 1e-6, "√ᾱ");
        close(s1 as f64, (1.0 - s.alpha_bar(t)).sqrt(), 1e-6, "√(1−ᾱ)");
    }
}

#[test]
fn scaled_linear_is_a_squared_linspace_of_sqrt_beta() {
    let s = with_schedule(BetaSchedule::ScaledLinear);
    let (a, b) = (1e-4f64.sqrt(), 0.02f64.sqrt());
    for t in [0usize, 1, 250, 500, 998, 999] {
        let r = a + t as f64 * (b - a) / 999.0;
        close(s.beta(t), r * r, 1e-12, &format!("β[{t}]"));
    }
    close(s.beta(0), 1e-4, 1e-12, "β start");
    close(s.beta(999), 0.02, 1e-12, "β end");
}

#[test]
fn sigmoid_schedule_matches_its_closed_form() {
    let s = with_schedule(BetaSchedule::Sigmoid);
    for t in [0usize, 300, 499, 500, 999] {
        let x = -6.0 + 12.0 * t as f64 / 999.0;
        let want = 1e-4 + (0.02 - 1e-4) / (1.0 + (-x).exp());
        close(s.beta(t), want, 1e-12, &format!("β[{t}]"));
    }
    // Endpoints: sigmoid(∓6) = 0.00247…, 0.99753…
    close(
        s.beta(0),
        1e-4 + 0.0199 * 0.002_472_623_156_634_774,
        1e-9,
        "β start",
    );
    close(
        s.beta(999),
        1e-4 + 0.0199 * 0.997_527_376_843_365_2,
        1e-9,
        "β end",
    );
}

#[test]
fn cosine_schedule_follows_cos_squared_and_caps_beta() {
    let cfg: ScheduleConfig = serde_json::from_str(r#"{"beta_schedule": "cosine"}"#).unwrap();
    assert_eq!(cfg.beta_schedule, BetaSchedule::SquaredCosCapV2);
    let s = schedule(cfg);
    let f = |u: f64| {
        ((u + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    for t in [0usize, 1, 100, 500, 900, 990, 998] {
        let want = f((t + 1) as f64 / 1000.0) / f(0.0);
        close(s.alpha_bar(t), want, 1e-9, &format!("ᾱ[{t}]"));
    }
    assert_eq!(s.beta(999), 0.999, "the last β is capped");
    assert!((0..1000).all(|t| s.beta(t) <= 0.999 && s.beta(t) > 0.0));
    close(
        s.alpha_bar(999),
        s.alpha_bar(998) * 0.001,
        1e-12,
        "ᾱ after the cap",
    );
    close(s.beta(0), 1.0 - f(0.001) / f(0.0), 1e-9, "β[0]");
}

#[test]
fn bad_schedule_fields_are_named() {
    let cases: [(ScheduleConfig, &str); 7] = [
        (
            ScheduleConfig {
                num_train_timesteps: 0,
                ..Default::default()
            },
            "num_train_timesteps",
        ),
        (
            ScheduleConfig {
                beta_start: 0.0,
                ..Default::default()
            },
            "beta_start",
        ),
        (
            ScheduleConfig {
                beta_end: 1.0,
                ..Default::default()
            },
            "beta_end",
        ),
        (
            ScheduleConfig {
                beta_start: 0.02,
                beta_end: 0.01,
                ..Default::default()
            },
            "beta_end",
        ),
        (
            ScheduleConfig {
                beta_end: f64::NAN,
                ..Default::default()
            },
            "beta_end",
        ),
        (
            ScheduleConfig {
                clip_sample_range: 0.0,
                ..Default::default()
            },
            "clip_sample_range",
        ),
        // Σβ ≈ 2000: ᾱ ≈ e⁻²⁰⁰⁰, and 1/√ᾱ in x̂₀ = (xₜ − √(1−ᾱ) ε̂)/√ᾱ overflows f32.
        (
            ScheduleConfig {
                num_train_timesteps: 200_000,
                ..Default::default()
            },
            "num_train_timesteps",
        ),
    ];
    for (cfg, field) in cases {
        let e = Schedule::new(cfg).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
    // The cosine schedule ignores beta_start/beta_end, as diffusers does.
    let cos = ScheduleConfig {
        beta_schedule: BetaSchedule::SquaredCosCapV2,
        beta_start: 0.5,
        beta_end: 0.1,
        ..Default::default()
    };
    assert!(Schedule::new(cos).is_ok());
}

// ---------------------------------------------------------------- spacings

#[test]
fn spacings_for_1000_steps_10_samples_written_out_by_hand() {
    let cases: [(Spacing, [usize; 10]); 5] = [
        (
            Spacing::Leading,
            [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
        ),
        (
            Spacing::Trailing,
            [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
        ),
        (
            Spacing::Linspace,
            [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
        ),
        (
            Spacing::Uniform,
            [901, 801, 701, 601, 501, 401, 301, 201, 101, 1],
        ),
        // ⌊800 i²/81⌋ + 1 for i = 9, 8, …, 0.
        (Spacing::Quad, [801, 633, 484, 356, 247, 159, 89, 40, 10, 1]),
    ];
    for (sp, want) in cases {
        assert_eq!(timesteps(sp, 1000, 10, 0).unwrap(), want, "{sp}");
    }
}

#[test]
fn spacings_for_10_steps_written_out_by_hand() {
    // T = 10, N = 3. linspace(0, 9, 3) = 0, 4.5, 9 and numpy rounds 4.5 to even: 4.
    // trailing: 10, 6.67, 3.33 → 10, 7, 3 → −1. uniform: range(0, 10, 3)[..3] + 1.
    // quad: linspace(0, √8, 3)² = 0, 2, 8 → +1.
    let cases: [(Spacing, [usize; 3]); 5] = [
        (Spacing::Leading, [6, 3, 0]),
        (Spacing::Trailing, [9, 6, 2]),
        (Spacing::Linspace, [9, 4, 0]),
        (Spacing::Uniform, [7, 4, 1]),
        (Spacing::Quad, [9, 3, 1]),
    ];
    for (sp, want) in cases {
        assert_eq!(timesteps(sp, 10, 3, 0).unwrap(), want, "{sp}");
    }
    // T = 10, N = 4: arange(10, 0, −2.5) = 10, 7.5, 5, 2.5, rounded half to even: 10, 8, 5, 2.
    assert_eq!(
        timesteps(Spacing::Trailing, 10, 4, 0).unwrap(),
        [9, 7, 4, 1]
    );
    assert_eq!(
        timesteps(Spacing::Linspace, 10, 4, 0).unwrap(),
        [9, 6, 3, 0]
    );
    assert_eq!(timesteps(Spacing::Leading, 10, 4, 0).unwrap(), [6, 4, 2, 0]);
    // Every timestep, for the spacings that can visit all of them.
    let all: Vec<usize> = (0..10).rev().collect();
    for sp in [Spacing::Leading, Spacing::Trailing, Spacing::Linspace] {
        assert_eq!(timesteps(sp, 10, 10, 0).unwrap(), all, "{sp}");
    }
    assert_eq!(
        timesteps(Spacing::Uniform, 10, 9, 0).unwrap(),
        [9, 8, 7, 6, 5, 4, 3, 2, 1]
    );
}

#[test]
fn previous_timestep_is_the_next_entry_then_x0_or_index_0() {
    let pairs = step_pairs(Spacing::Trailing, 10, 3, 0).unwrap();
    let want = [(9, Some(6)), (6, Some(2)), (2, None)];
    let got: Vec<_> = pairs.iter().map(|p| (p.t, p.prev)).collect();
    assert_eq!(got, want);
    // The DDIM reference ends on ᾱ at index 0, not on ᾱ = 1.
    let pairs = step_pairs(Spacing::Uniform, 10, 3, 0).unwrap();
    let got: Vec<_> = pairs.iter().map(|p| (p.t, p.prev)).collect();
    assert_eq!(got, [(7, Some(4)), (4, Some(1)), (1, Some(0))]);
}

#[test]
fn bad_step_counts_are_errors_naming_steps() {
    for sp in Spacing::ALL {
        for n in [0, 11] {
            let e = timesteps(sp, 10, n, 0).unwrap_err();
            assert_eq!(e.field, "steps", "{sp} {n}: {e}");
            assert!(e.to_string().contains("`steps`"), "{e}");
        }
    }
    // The +1 shift would visit t = T.
    let e = timesteps(Spacing::Uniform, 10, 10, 0).unwrap_err();
    assert!(e.to_string().contains("timestep 10"), "{e}");
    let e = timesteps(Spacing::Quad, 5, 2, 0).unwrap_err();
    assert_eq!(e.field, "steps", "{e}");
}

#[test]
fn quad_drops_repeated_timesteps() {
    // With N = 50 over T = 1000, (√800/49)² < 1: i = 0 and 1 both give timestep 1.
    let ts = timesteps(Spacing::Quad, 1000, 50, 0).unwrap();
    assert!(ts.len() < 50, "{}", ts.len());
    assert!(ts.windows(2).all(|w| w[0] > w[1]), "{ts:?}");
    assert_eq!((ts[0], ts[ts.len() - 1]), (801, 1));
    // Entry i (ascending, before dropping) is ⌊800 i²/49²⌋ + 1; every kept entry is one of them.
    let allowed: Vec<usize> = (0..50u64)
        .map(|i| (800 * i * i / 2401) as usize + 1)
        .collect();
    let near = |t: usize| allowed.iter().any(|&a| a.abs_diff(t) <= 1);
    assert!(ts.iter().all(|&t| near(t)), "{ts:?}");
}

// ---------------------------------------------------------------- noise

#[test]
fn normal_noise_is_box_muller_on_the_documented_philox_words() {
    let (seed, s) = (0x5EED, stream(NoisePurpose::SampleInit, 12, 0));
    let mut out = vec![0.0f32; 9];
    fill_normal(seed, s, &mut out);
    for (j, &got) in out.iter().enumerate() {
        let w0 = philox_word(seed, s, 2 * j as u64) as f64;
        let w1 = philox_word(seed, s, 2 * j as u64 + 1) as f64;
        let u1 = (w0 + 1.0) / 4_294_967_296.0;
        let u2 = w1 / 4_294_967_296.0;
        let want = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        assert_eq!(got, want as f32, "element {j}");
    }
}

#[test]
fn noise_is_reproducible_and_streams_differ() {
    let s = stream(NoisePurpose::TrainNoise, 7, 3);
    let draw = |seed: u64, st: u64, n: usize| {
        let mut v = vec![0.0f32; n];
        fill_normal(seed, st, &mut v);
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let a = draw(1, s, 5000);
    assert_eq!(a, draw(1, s, 5000));
    assert_ne!(a, draw(2, s, 5000));
    assert_ne!(a, draw(1, stream(NoisePurpose::TrainNoise, 7, 4), 5000));
    assert_ne!(a, draw(1, stream(NoisePurpose::TrainNoise, 8, 3), 5000));
    assert_ne!(a, draw(1, stream(NoisePurpose::SampleInit, 7, 3), 5000));
    // Element j depends on j only, not on the buffer length or on the thread count.
    assert_eq!(a[..17], draw(1, s, 17)[..]);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| draw(1, s, 5000));
    assert_eq!(a, one);
    assert_eq!(a[4321], normal_at(1, s, 4321).to_bits());
}

#[test]
fn normal_noise_has_standard_moments() {
    let n = 400_000;
    let mut v = vec![0.0f32; n];
    fill_normal(3, stream(NoisePurpose::SampleStep, 1, 2), &mut v);
    let nf = n as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / nf;
    let m2 = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / nf;
    let m4 = v.iter().map(|&x| (x as f64).powi(4)).sum::<f64>() / nf;
    let tail = v.iter().filter(|x| x.abs() > 1.959_964).count() as f64 / nf;
    // Standard errors: 0.0016 (mean), 0.0022 (m2), 0.015 (m4 = 3), 0.00034 (tail = 0.05).
    assert!(mean.abs() < 0.008, "mean {mean}");
    assert!((m2 - 1.0).abs() < 0.011, "E z² {m2}");
    assert!((m4 - 3.0).abs() < 0.08, "E z⁴ {m4}");
    assert!((tail - 0.05).abs() < 0.002, "P(|z| > 1.96) {tail}");
}

#[test]
fn initial_noise_of_an_image_does_not_depend_on_its_batch() {
    let together = initial_noise(9, &[3, 11], 64).unwrap();
    let alone = initial_noise(9, &[11], 64).unwrap();
    assert_eq!(together[64..], alone[..]);
    assert_ne!(together[..64], together[64..]);
    let s = stream(NoisePurpose::SampleInit, 11, 0);
    assert_eq!(alone[5], normal_at(9, s, 5));
    let e = initial_noise(9, &[1 << 36], 4).unwrap_err();
    assert_eq!(e.field, "image_ids", "{e}");
}

#[test]
fn training_timesteps_are_uniform_reproducible_and_per_item() {
    let t = draw_timesteps(5, 17, 100_000, 10);
    assert_eq!(t, draw_timesteps(5, 17, 100_000, 10));
    assert_eq!(t[..10], draw_timesteps(5, 17, 10, 10)[..]);
    assert_eq!(t[42], timestep_for(5, 17, 42, 10));
    assert_ne!(t[..50], draw_timesteps(5, 18, 50, 10)[..]);
    let mut counts = [0f64; 10];
    for &ti in &t {
        counts[ti] += 1.0;
    }
    // χ² with 9 degrees of freedom: P(χ² > 30) ≈ 4e-4.
    let chi2: f64 = counts
        .iter()
        .map(|c| (c - 10_000.0).powi(2) / 10_000.0)
        .sum();
    assert!(chi2 < 30.0, "χ² {chi2}, counts {counts:?}");
}

#[test]
fn training_timesteps_are_unbiased_for_awkward_ranges() {
    // T = 3·2³⁰: plain multiply-shift (⌊w·T/2³²⌋ = ⌊3w/4⌋) gives k ≡ 0 (mod 3) half the time.
    let big = 3usize << 30;
    let n = 30_000;
    let zero_mod_3 = (0..n)
        .filter(|&i| {
            let k = timestep_for(1, 2, i as u64, big);
            assert!(k < big);
            k.is_multiple_of(3)
        })
        .count() as f64
        / n as f64;
    // Unbiased: 1/3 ± 0.0027 (one standard error).
    assert!((zero_mod_3 - 1.0 / 3.0).abs() < 0.015, "{zero_mod_3}");
}

#[test]
fn stream_layout_keeps_purposes_and_arguments_apart() {
    let ids = [
        stream(NoisePurpose::TrainNoise, 1, 0),
        stream(NoisePurpose::TrainNoise, 0, 1),
        stream(NoisePurpose::TrainTimestep, 1, 0),
        stream(NoisePurpose::SampleInit, 1, 0),
        stream(NoisePurpose::SampleStep, 1, 0),
        stream(NoisePurpose::Dropout, 1, 0),
    ];
    for i in 0..ids.len() {
        for j in 0..i {
            assert_ne!(ids[i], ids[j]);
        }
        assert!(ids[i] >= 1 << 60, "purpose 0 streams stay free");
    }
    assert!(try_stream(NoisePurpose::SampleStep, 0, 1 << 24).is_err());
}

// ---------------------------------------------------------------- forward process

#[test]
fn q_sample_has_the_closed_form_mean_and_variance() {
    let s = with_schedule(BetaSchedule::Linear);
    let item = 8;
    let x0_item: Vec<f32> = (0..item).map(|j| -1.0 + 2.0 * j as f32 / 7.0).collect();
    let b = 20_000;
    let x0: Vec<f32> = x0_item.iter().copied().cycle().take(b * item).collect(); // (B, 8)
    let mut eps = vec![0.0f32; b * item]; // (B, 8)
    fill_train_noise(4, 1, 0, item, &mut eps);
    for t_val in [0usize, 250, 999] {
        let t = vec![t_val; b];
        let mut xt = vec![0.0f32; b * item];
        add_noise(&s, &x0, &eps, &t, item, &mut xt);
        let ab = s.alpha_bar(t_val);
        for (j, &x0j) in x0_item.iter().enumerate() {
            let col: Vec<f64> = (0..b).map(|i| xt[i * item + j] as f64).collect();
            let mean = col.iter().sum::<f64>() / b as f64;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / b as f64;
            // 5 standard errors.
            let se_mean = ((1.0 - ab) / b as f64).sqrt();
            let se_var = (1.0 - ab) * (2.0 / b as f64).sqrt();
            let want_mean = ab.sqrt() * x0j as f64;
            assert!(
                (mean - want_mean).abs() < 5.0 * se_mean,
                "t {t_val} mean {mean}"
            );
            assert!(
                (var - (1.0 - ab)).abs() < 5.0 * se_var,
                "t {t_val} var {var}"
            );
        }
    }
}

#[test]
fn training_targets_and_conversions_round_trip() {
    let s = with_schedule(BetaSchedule::Linear);
    let item = 16;
    let t = vec![0usize, 1, 400, 998, 999];
    let b = t.len();
    let mut x0 = vec![0.0f32; b * item];
    let mut eps = vec![0.0f32; b * item];
    fill_normal(1, 10, &mut x0);
    fill_normal(1, 11, &mut eps);
    let mut xt = vec![0.0f32; b * item];
    add_noise(&s, &x0, &eps, &t, item, &mut xt);
    for pred in [
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ] {
        let mut target = vec![0.0f32; b * item];
        training_target(&s, pred, &x0, &eps, &t, item, &mut target);
        for (i, &ti) in t.iter().enumerate() {
            let ab = s.alpha_bar(ti);
            let r = Reparam::new(pred, ab);
            for j in 0..item {
                let k = i * item + j;
                let (x, e, y) = (x0[k] as f64, eps[k] as f64, target[k] as f64);
                let want = match pred {
                    PredictionType::Epsilon => e,
                    PredictionType::Sample => x,
                    PredictionType::VPrediction => ab.sqrt() * e - (1.0 - ab).sqrt() * x,
                };
                assert!(
                    (y - want).abs() < 1e-6 * (1.0 + want.abs()),
                    "{pred:?} target"
                );
                // From (xₜ, target) back to (x₀, ε). The f32 xₜ carries a rounding error that
                // x̂₀ = (xₜ − √(1−ᾱ)ε)/√ᾱ amplifies by 1/√ᾱ (≤ 157 here).
                let tol = 2e-6 / ab.sqrt() * (1.0 + x.abs() + e.abs());
                let xt_k = xt[k] as f64;
                assert!((r.x0(xt_k, y) - x).abs() < tol, "{pred:?} t {ti}: x̂₀");
                assert!((r.eps(xt_k, y) - e).abs() < tol, "{pred:?} t {ti}: ε̂");
            }
        }
    }
}

// ---------------------------------------------------------------- sampler steps

/// β of the default linear schedule, computed here.
fn linear_beta(t: usize) -> f64 {
    1e-4 + t as f64 * (0.02 - 1e-4) / 999.0
}

#[test]
fn ddpm_posterior_step_with_every_timestep_is_eq_11() {
    let s = with_schedule(BetaSchedule::Linear);
    let pairs = step_pairs(Spacing::Leading, 1000, 1000, 0).unwrap();
    let mut abar = vec![0.0f64; 1000];
    let mut acc = 1.0;
    for (t, a) in abar.iter_mut().enumerate() {
        acc *= 1.0 - linear_beta(t);
        *a = acc;
    }
    let (x, e, z) = (0.7f32, -1.3f32, 0.4f32);
    for p in pairs {
        let t = p.t;
        assert_eq!(p.prev, t.checked_sub(1));
        let (beta, ab) = (linear_beta(t), abar[t]);
        let ab_prev = if t == 0 { 1.0 } else { abar[t - 1] };
        for var in [VarianceType::FixedSmall, VarianceType::FixedLarge] {
            let c = StepCoeffs::ddpm(&s, PredictionType::Epsilon, var, p, None);
            // σₜ² = β̃ₜ or βₜ; the step to x₀ adds no noise (Algorithm 2).
            let sigma2 = match (t, var) {
                (0, _) => 0.0,
                (_, VarianceType::FixedSmall) => (1.0 - ab_prev) / (1.0 - ab) * beta,
                (_, VarianceType::FixedLarge) => beta,
            };
            // DDPM eq. 11: x_{t−1} = (xₜ − βₜ/√(1−ᾱₜ) ε)/√αₜ + σₜ z.
            let want = (x as f64 - beta / (1.0 - ab).sqrt() * e as f64) / (1.0 - beta).sqrt()
                + sigma2.sqrt() * z as f64;
            let (got, _) = step_element(&c, x, e, z);
            assert!(
                (got as f64 - want).abs() < 3e-6 * (1.0 + want.abs()),
                "t {t} {var:?}: {got} vs {want}"
            );
            close(c.sigma as f64, sigma2.sqrt(), 1e-6, "σ");
        }
    }
}

#[test]
fn ddim_with_eta_1_has_the_ddpm_posterior() {
    let s = with_schedule(BetaSchedule::Linear);
    for p in step_pairs(Spacing::Trailing, 1000, 50, 0).unwrap() {
        let a = StepCoeffs::ddpm(
            &s,
            PredictionType::Epsilon,
            VarianceType::FixedSmall,
            p,
            None,
        );
        let b = StepCoeffs::ddim(&s, PredictionType::Epsilon, p, None, 1.0, true);
        close(b.sigma as f64, a.sigma as f64, 1e-5, "σ");
        for (x, e, z) in [(0.3f32, 1.1f32, -0.8f32), (-2.0, 0.2, 1.5)] {
            let (ya, _) = step_element(&a, x, e, z);
            let (yb, _) = step_element(&b, x, e, z);
            assert!(
                (ya - yb).abs() < 1e-5 * (1.0 + ya.abs()),
                "{p:?}: {ya} {yb}"
            );
        }
    }
}

#[test]
fn ddim_step_matches_eq_12_in_both_clipping_modes() {
    let s = with_schedule(BetaSchedule::Linear);
    let p = StepPair {
        t: 700,
        prev: Some(500),
    };
    let (ab, abp) = (s.alpha_bar(700), s.alpha_bar(500));
    let eta = 0.5;
    // DDIM eq. 16
    let sigma = eta * ((1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)).sqrt();
    // An ε-prediction whose x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ is far outside ±1.
    let (x, e, z) = (0.5f64, -1.0f64, 0.3f64);
    let x0_raw = (x - (1.0 - ab).sqrt() * e) / ab.sqrt();
    assert!(x0_raw > 1.0);
    for clipped_eps in [true, false] {
        let c = StepCoeffs::ddim(&s, PredictionType::Epsilon, p, Some(1.0), eta, clipped_eps);
        let eps_hat = if clipped_eps {
            (x - ab.sqrt() * 1.0) / (1.0 - ab).sqrt()
        } else {
            e
        };
        let want = abp.sqrt() * 1.0 + (1.0 - abp - sigma * sigma).sqrt() * eps_hat + sigma * z;
        let (got, x0) = step_element(&c, x as f32, e as f32, z as f32);
        assert_eq!(x0, 1.0);
        assert!(
            (got as f64 - want).abs() < 1e-5,
            "{clipped_eps}: {got} vs {want}"
        );
    }
}

#[test]
fn apply_step_is_step_element_over_a_batch() {
    let s = with_schedule(BetaSchedule::Linear);
    let p = StepPair {
        t: 300,
        prev: Some(200),
    };
    let c = StepCoeffs::ddpm(
        &s,
        PredictionType::VPrediction,
        VarianceType::FixedLarge,
        p,
        Some(1.0),
    );
    let n = 40_000;
    let (mut x, mut out, mut z) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    fill_normal(2, 1, &mut x);
    fill_normal(2, 2, &mut out);
    fill_normal(2, 3, &mut z);
    let (mut xp, mut x0) = (vec![0.0f32; n], vec![0.0f32; n]);
    apply_step(&c, &x, &out, Some(&z), &mut xp, &mut x0);
    for i in [0, 1, 16_383, 16_384, n - 1] {
        assert_eq!((xp[i], x0[i]), step_element(&c, x[i], out[i], z[i]));
    }
}

// ---------------------------------------------------------------- sampling loop

type Model<'a> = Box<ModelFn<'a>>;

/// The optimal model for a data set of one point x0*: ε = (xₜ − √ᾱ x0*)/√(1 − ᾱ), expressed
/// in the schedule's prediction type.
fn oracle<'a>(s: &'a Schedule, x0: &'a [f64]) -> Model<'a> {
    let pred = s.config().prediction_type;
    Box::new(move |x, t, out| {
        let item = x0.len();
        for (b, &tb) in t.iter().enumerate() {
            // ᾱ at the (possibly fractional) timestep the sampler calls the model at.
            let ab = alpha_bar_at(s, tb as f64);
            let (sa, s1) = (ab.sqrt(), (1.0 - ab).sqrt());
            for (j, &x0j) in x0.iter().enumerate() {
                let k = b * item + j;
                let eps = (x[k] as f64 - sa * x0j) / s1;
                out[k] = match pred {
                    PredictionType::Epsilon => eps,
                    PredictionType::Sample => x0j,
                    PredictionType::VPrediction => sa * eps - s1 * x0j,
                } as f32;
            }
        }
        Ok(())
    })
}

fn target_point(item: usize) -> Vec<f64> {
    (0..item).map(|j| 0.9 * (j as f64 * 0.37).sin()).collect()
}

/// Samples with the oracle and checks, at every step, that xₜ has the marginal of
/// q(xₜ | x0*) = N(√ᾱₜ x0*, (1 − ᾱₜ) I) (exact for this data set with the posterior variance);
/// returns the final x₀.
fn oracle_run(
    s: &Schedule,
    opts: &SampleOptions,
    item: usize,
    batch: usize,
) -> (Vec<f64>, Vec<f32>) {
    let x0 = target_point(item);
    let ids: Vec<u64> = (0..batch as u64).collect();
    let mut x = initial_noise(21, &ids, item).unwrap();
    let mut model = oracle(s, &x0);
    let mut steps = 0;
    let mut on_step = |info: StepInfo<'_>| {
        steps += 1;
        if info.index == 0 {
            return; // x_T is N(0, I), not quite q(x_T | x0*)
        }
        let ab = info.alpha_bar;
        let r: Vec<f64> = info
            .x_t
            .iter()
            .enumerate()
            .map(|(k, &v)| (v as f64 - ab.sqrt() * x0[k % item]) / (1.0 - ab).sqrt())
            .collect();
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // 5 standard errors (1/√n and √(2/n)), plus the slack of x_T ≠ q(x_T | x0*).
        assert!(
            mean.abs() < 5.0 / n.sqrt() + 0.01,
            "t {}: mean {mean}",
            info.t
        );
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0 / n).sqrt() + 0.01,
            "t {}: var {var}",
            info.t
        );
        assert!(info.x0_pred.iter().all(|v| v.abs() <= 1.0));
    };
    sample(s, opts, &mut x, item, &ids, 77, &mut model, &mut on_step).unwrap();
    drop(model);
    assert_eq!(steps, opts.plan(s).unwrap().len());
    (x0, x)
}

fn assert_lands_on(x0: &[f64], x: &[f32], tol: f64, what: &str) {
    let item = x0.len();
    let worst = x
        .iter()
        .enumerate()
        .map(|(k, &v)| (v as f64 - x0[k % item]).abs())
        .fold(0.0, f64::max);
    assert!(worst < tol, "{what}: max |x − x0*| = {worst:e}");
}

#[test]
fn samplers_with_an_oracle_land_on_the_single_data_point() {
    let s = with_schedule(BetaSchedule::Linear);
    let cfg = s.config().clone();
    let runs = [
        (SamplerKind::Ddpm, 1000, Spacing::Leading),
        (SamplerKind::Ddpm, 50, Spacing::Trailing),
        (SamplerKind::Ddim { eta: 0.0 }, 50, Spacing::Linspace),
        (SamplerKind::Ddim { eta: 1.0 }, 20, Spacing::Leading),
        (SamplerKind::Ddim { eta: 0.5 }, 10, Spacing::Trailing),
    ];
    for (kind, steps, spacing) in runs {
        let opts = SampleOptions {
            spacing,
            ..SampleOptions::new(&cfg, kind, steps)
        };
        let (x0, x) = oracle_run(&s, &opts, 1024, 4);
        assert_lands_on(&x0, &x, 1e-5, &format!("{kind:?} {steps} {spacing}"));
    }
}

#[test]
fn oracle_sampling_works_for_x0_and_v_prediction() {
    for pred in [PredictionType::Sample, PredictionType::VPrediction] {
        let s = schedule(ScheduleConfig {
            prediction_type: pred,
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            ..Default::default()
        });
        let cfg = s.config().clone();
        for kind in [SamplerKind::Ddpm, SamplerKind::Ddim { eta: 0.0 }] {
            let opts = SampleOptions {
                spacing: Spacing::Trailing,
                ..SampleOptions::new(&cfg, kind, 25)
            };
            let (x0, x) = oracle_run(&s, &opts, 1024, 4);
            assert_lands_on(&x0, &x, 1e-5, &format!("{pred:?} {kind:?}"));
        }
    }
}

#[test]
fn ddim_eta_0_keeps_the_initial_noise_direction_and_ends_on_index_0_for_uniform() {
    // With the oracle, DDIM η = 0 keeps ε̂ fixed: x_prev = √ᾱ_prev x0* + √(1 − ᾱ_prev) ε̂₀,
    // and `uniform` ends on ᾱ at index 0 rather than on x0* itself.
    let s = with_schedule(BetaSchedule::Linear);
    let item = 256;
    let x0 = target_point(item);
    let ids = [5u64];
    let x_t = initial_noise(3, &ids, item).unwrap();
    let opts = SampleOptions {
        spacing: Spacing::Uniform,
        ..SampleOptions::new(s.config(), SamplerKind::Ddim { eta: 0.0 }, 20)
    };
    let first = opts.plan(&s).unwrap()[0].t;
    assert_eq!(first, 951);
    let ab_first = s.alpha_bar(first);
    let eps0: Vec<f64> = (0..item)
        .map(|j| (x_t[j] as f64 - ab_first.sqrt() * x0[j]) / (1.0 - ab_first).sqrt())
        .collect();
    let mut x = x_t.clone();
    let mut on_step = |info: StepInfo<'_>| {
        let ab = info.alpha_bar;
        for j in 0..item {
            let want = ab.sqrt() * x0[j] + (1.0 - ab).sqrt() * eps0[j];
            assert!((info.x_t[j] as f64 - want).abs() < 1e-4, "t {}", info.t);
        }
    };
    sample(
        &s,
        &opts,
        &mut x,
        item,
        &ids,
        1,
        &mut oracle(&s, &x0),
        &mut on_step,
    )
    .unwrap();
    let ab0 = s.alpha_bar(0);
    for j in 0..item {
        let want = ab0.sqrt() * x0[j] + (1.0 - ab0).sqrt() * eps0[j];
        assert!((x[j] as f64 - want).abs() < 1e-5, "{j}: {} vs {want}", x[j]);
    }
}

/// A fixed, non-optimal model: out = 0.3 xₜ + 0.05 sin(t + j).
fn toy_model(item: usize) -> Model<'static> {
    Box::new(move |x, t, out| {
        for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = 0.3 * v + 0.05 * (t[k / item] + (k % item) as f32).sin();
        }
        Ok(())
    })
}

#[test]
fn ddpm_sampling_loop_is_eq_11_with_the_documented_noise_streams() {
    // T = 100 linear schedule, every timestep, no clipping: the loop must be DDPM eq. 11
    // (Algorithm 2) with z of step k from the SampleStep stream (image id, k).
    let big_t = 100;
    let s = schedule(ScheduleConfig {
        num_train_timesteps: big_t,
        ..Default::default()
    });
    let beta = |t: usize| 1e-4 + t as f64 * (0.02 - 1e-4) / (big_t - 1) as f64;
    let mut abar = Vec::new();
    let mut acc = 1.0;
    for t in 0..big_t {
        acc *= 1.0 - beta(t);
        abar.push(acc);
    }
    let (item, ids, seed) = (16, [2u64, 9], 123);
    let mut x = initial_noise(seed, &ids, item).unwrap();
    let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let opts = SampleOptions {
        clip: None,
        ..SampleOptions::new(s.config(), SamplerKind::Ddpm, big_t)
    };
    sample(
        &s,
        &opts,
        &mut x,
        item,
        &ids,
        seed,
        &mut toy_model(item),
        &mut |_| {},
    )
    .unwrap();
    for (k, t) in (0..big_t).rev().enumerate() {
        let (b, ab) = (beta(t), abar[t]);
        let sigma = if t > 0 {
            ((1.0 - abar[t - 1]) / (1.0 - ab) * b).sqrt()
        } else {
            0.0
        };
        for (i, &id) in ids.iter().enumerate() {
            let st = stream(NoisePurpose::SampleStep, id, k as u64);
            for j in 0..item {
                let v = &mut want[i * item + j];
                let eps = 0.3 * (*v as f32) + 0.05 * ((t + j) as f32).sin();
                let z = normal_at(seed, st, j as u64) as f64;
                *v = (*v - b / (1.0 - ab).sqrt() * eps as f64) / (1.0 - b).sqrt() + sigma * z;
            }
        }
    }
    for (k, (&got, &w)) in x.iter().zip(&want).enumerate() {
        assert!(
            (got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
            "{k}: {got} vs {w}"
        );
    }
}

#[test]
fn ddim_eta_0_is_deterministic_and_batches_do_not_matter() {
    let s = with_schedule(BetaSchedule::Linear);
    let item = 32;
    let run = |kind: SamplerKind, ids: &[u64], seed: u64| {
        let opts = SampleOptions::new(s.config(), kind, 10);
        let mut x = initial_noise(4, ids, item).unwrap();
        sample(
            &s,
            &opts,
            &mut x,
            item,
            ids,
            seed,
            &mut toy_model(item),
            &mut |_| {},
        )
        .unwrap();
        x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let ddim0 = SamplerKind::Ddim { eta: 0.0 };
    assert_eq!(run(ddim0, &[0, 1], 1), run(ddim0, &[0, 1], 2));
    let ddim1 = SamplerKind::Ddim { eta: 1.0 };
    assert_ne!(run(ddim1, &[0, 1], 1), run(ddim1, &[0, 1], 2));
    // Image 7's trajectory is the same alone or beside image 3.
    let pair = run(SamplerKind::Ddpm, &[3, 7], 5);
    let alone = run(SamplerKind::Ddpm, &[7], 5);
    assert_eq!(pair[item..], alone[..]);
}

#[test]
fn sampling_reports_steps_and_clips_x0() {
    let s = with_schedule(BetaSchedule::Linear);
    let item = 8;
    let mut x = initial_noise(1, &[0], item).unwrap();
    let mut seen = Vec::new();
    let opts = SampleOptions {
        spacing: Spacing::Trailing,
        ..SampleOptions::new(s.config(), SamplerKind::Ddpm, 4)
    };
    let mut huge: Model<'_> = Box::new(|_, _, out| {
        out.fill(-40.0);
        Ok(())
    });
    let mut on_step = |i: StepInfo<'_>| {
        assert!(i.x0_pred.iter().all(|&v| v.abs() <= 1.0));
        seen.push((i.index, i.total, i.t, i.alpha_bar));
    };
    sample(&s, &opts, &mut x, item, &[0], 1, &mut huge, &mut on_step).unwrap();
    assert_eq!(
        seen,
        [
            (0, 4, 999.0, s.alpha_bar(999)),
            (1, 4, 749.0, s.alpha_bar(749)),
            (2, 4, 499.0, s.alpha_bar(499)),
            (3, 4, 249.0, s.alpha_bar(249))
        ]
    );
    // The last step lands on the clipped x̂₀: the ε = −40 model's x̂₀ is far above 1.
    assert!(x.iter().all(|&v| v == 1.0), "{x:?}");
}

#[test]
fn sampling_rejects_bad_settings_with_named_fields() {
    let s = with_schedule(BetaSchedule::Linear);
    let base = SampleOptions::new(s.config(), SamplerKind::Ddpm, 10);
    let run = |opts: &SampleOptions, x_len: usize, ids: &[u64]| {
        let mut x = vec![0.0f32; x_len];
        sample(&s, opts, &mut x, 4, ids, 0, &mut toy_model(4), &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            SampleOptions {
                steps: 0,
                ..base.clone()
            },
            "`steps`",
        ),
        (
            SampleOptions {
                steps: 1001,
                ..base.clone()
            },
            "`steps`",
        ),
        (
            SampleOptions {
                kind: SamplerKind::Ddim { eta: 1.5 },
                ..base.clone()
            },
            "`eta`",
        ),
        (
            SampleOptions {
                clip: Some(0.0),
                ..base.clone()
            },
            "`clip`",
        ),
        (
            SampleOptions {
                spacing: Spacing::Uniform,
                steps: 1000,
                ..base.clone()
            },
            "`steps`",
        ),
    ];
    for (opts, field) in cases {
        let msg = run(&opts, 8, &[0, 1]);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    assert!(run(&base, 7, &[0, 1]).contains("`x`"));
    assert!(run(&base, 8, &[0, 1 << 40]).contains("`image_ids`"));
    // A failing model stops the loop with context.
    let mut x = vec![0.0f32; 4];
    let mut failing: Model<'_> = Box::new(|_, _, _| anyhow::bail!("out of memory"));
    let e = sample(&s, &base, &mut x, 4, &[0], 0, &mut failing, &mut |_| {}).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("step 0") && msg.contains("out of memory"),
        "{msg}"
    );
}
