//! AdamW, gradient clipping and EMA against hand-computed values, an independent f64 AdamW
//! written here, and closed forms; plus determinism across thread counts.

use ddpm::optim::*;
use ddpm::rng::Philox;

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn cfg(lr: f64, weight_decay: f64, warmup_steps: u64) -> AdamWConfig {
    AdamWConfig {
        lr,
        weight_decay,
        warmup_steps,
        ..Default::default()
    }
}

// ---------------------------------------------------------------- AdamW

#[test]
fn first_step_moves_each_parameter_by_lr_times_sign_of_its_gradient() {
    // After one step m̂ = g and v̂ = g², so the move is lr·g/(|g| + ε) ≈ lr·sign(g).
    let lr = 1e-3;
    let mut opt = AdamW::new(cfg(lr, 0.0, 0), 4).unwrap();
    let mut p = vec![0.5f32, -0.25, 2.0, 1.0];
    let g = [0.3f32, -7.0, 1e-3, 0.0];
    opt.update(&mut p, &g);
    let want = [0.5 - lr, -0.25 + lr, 2.0 - lr * 1e-3 / (1e-3 + 1e-8), 1.0];
    for (i, (&got, want)) in p.iter().zip(want).enumerate() {
        assert!((got as f64 - want).abs() < 3e-7, "{i}: {got} vs {want}");
    }
    assert_eq!(opt.step(), 1);
}

#[test]
fn first_step_with_weight_decay_shrinks_the_weights_first() {
    // θ₁ = θ₀ (1 − lr λ) − lr·sign(g)  (decoupled: λ never enters the moments)
    let (lr, wd) = (0.01, 0.1);
    let mut opt = AdamW::new(cfg(lr, wd, 0), 2).unwrap();
    let mut p = vec![2.0f32, -4.0];
    opt.update(&mut p, &[1.0, 0.0]);
    let want = [2.0 * (1.0 - lr * wd) - lr, -4.0 * (1.0 - lr * wd)];
    for (i, (&got, want)) in p.iter().zip(want).enumerate() {
        assert!((got as f64 - want).abs() < 1e-6, "{i}: {got} vs {want}");
    }
    let (_, m, v) = opt.state();
    assert_eq!(m, [0.1, 0.0]);
    assert!((v[0] - 0.001).abs() < 1e-9 && v[1] == 0.0);
}

/// Adam with decoupled weight decay as Loshchilov & Hutter's Algorithm 2 reads, with PyTorch's
/// convention that the decay is scaled by the scheduled learning rate; plain f64.
struct ReferenceAdamW {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    warmup: u64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: u64,
}

impl ReferenceAdamW {
    fn step(&mut self, p: &mut [f64], g: &[f64]) {
        self.t += 1;
        let t = self.t;
        let eta = if t < self.warmup {
            self.lr * t as f64 / self.warmup as f64
        } else {
            self.lr
        };
        for i in 0..p.len() {
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g[i];
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g[i] * g[i];
            let m_hat = self.m[i] / (1.0 - self.b1.powi(t as i32));
            let v_hat = self.v[i] / (1.0 - self.b2.powi(t as i32));
            p[i] -= eta * (m_hat / (v_hat.sqrt() + self.eps) + self.wd * p[i]);
        }
    }
}

#[test]
fn many_steps_match_an_independent_f64_adamw() {
    let n = 1000;
    let c = AdamWConfig {
        lr: 3e-3,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.05,
        warmup_steps: 10,
    };
    let mut rng = Philox::new(42);
    // Weights of a typical size (|θ| < 0.5): their f32 rounding, ≤ 1.5e-8 a step, bounds the
    // deviation from the f64 reference at 40 · 1.5e-8 plus the moments' rounding.
    let p0: Vec<f64> = (0..n).map(|_| 0.1 * rng.normal()).collect();
    let mut ours: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
    let mut refp: Vec<f64> = ours.iter().map(|&x| x as f64).collect();
    let mut opt = AdamW::new(c.clone(), n).unwrap();
    let mut reference = ReferenceAdamW {
        lr: c.lr,
        b1: c.beta1,
        b2: c.beta2,
        eps: c.eps,
        wd: c.weight_decay,
        warmup: c.warmup_steps,
        m: vec![0.0; n],
        v: vec![0.0; n],
        t: 0,
    };
    for step in 0..40 {
        // A gradient that changes with the step and stays away from 0.
        let g: Vec<f32> = (0..n)
            .map(|i| {
                let s = if (i + step) % 3 == 0 { -1.0 } else { 1.0 };
                (s * (0.05 + rng.uniform())) as f32
            })
            .collect();
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        opt.update(&mut ours, &g);
        reference.step(&mut refp, &g64);
    }
    let worst = ours
        .iter()
        .zip(&refp)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "max deviation {worst:e}");
    // The parameters moved by far more than that.
    let moved = p0
        .iter()
        .zip(&refp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 0.05, "{moved}");
}

#[test]
fn warmup_ramps_the_learning_rate_linearly() {
    let c = cfg(1e-3, 0.0, 4);
    let got: Vec<f64> = [0, 1, 2, 3, 4, 5, 1000]
        .iter()
        .map(|&t| c.lr_at(t))
        .collect();
    let want = [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-15, "{got:?}");
    }
    assert_eq!(cfg(1e-3, 0.0, 0).lr_at(1), 1e-3);
    // The first update during warmup moves by lr/warmup.
    let mut opt = AdamW::new(c, 1).unwrap();
    let mut p = [0.0f32];
    opt.update(&mut p, &[2.0]);
    assert!((p[0] as f64 + 2.5e-4).abs() < 1e-9, "{}", p[0]);
}

#[test]
fn checkpointed_state_resumes_bit_for_bit() {
    let n = 100;
    let grads = |k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + k * 13) % 11) as f32 - 5.0)
            .collect()
    };
    let mut a = AdamW::new(cfg(1e-2, 0.01, 3), n).unwrap();
    let mut pa = vec![0.1f32; n];
    for k in 0..5 {
        a.update(&mut pa, &grads(k));
    }
    let mut b = AdamW::new(cfg(1e-2, 0.01, 3), n).unwrap();
    let mut pb = vec![0.1f32; n];
    for k in 0..3 {
        b.update(&mut pb, &grads(k));
    }
    let (step, m, v) = b.state();
    let (m, v) = (m.to_vec(), v.to_vec());
    let mut c = AdamW::new(cfg(1e-2, 0.01, 3), n).unwrap();
    c.restore(step, &m, &v).unwrap();
    for k in 3..5 {
        c.update(&mut pb, &grads(k));
    }
    assert_eq!(pa, pb);
    assert_eq!(a.state(), c.state());
    let e = c.restore(1, &m[..99], &v).unwrap_err();
    assert_eq!(e.field, "m", "{e}");
    let e = c.restore(1, &m, &[]).unwrap_err();
    assert!(e.to_string().contains("`v`"), "{e}");
}

#[test]
fn bad_adamw_settings_are_named() {
    let cases = [
        (
            AdamWConfig {
                lr: 0.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            AdamWConfig {
                lr: f64::NAN,
                ..Default::default()
            },
            "lr",
        ),
        (
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            "beta1",
        ),
        (
            AdamWConfig {
                beta2: -0.1,
                ..Default::default()
            },
            "beta2",
        ),
        (
            AdamWConfig {
                eps: 0.0,
                ..Default::default()
            },
            "eps",
        ),
        (
            AdamWConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
            "weight_decay",
        ),
    ];
    for (c, field) in cases {
        let e = AdamW::new(c, 1).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
    }
    let c: AdamWConfig = serde_json::from_str(r#"{"lr": 1e-4, "warmup_steps": 5000}"#).unwrap();
    assert_eq!((c.lr, c.beta2, c.warmup_steps), (1e-4, 0.999, 5000));
}

// ---------------------------------------------------------------- clipping

#[test]
fn clipping_scales_to_max_norm_and_reports_the_norm_before() {
    let mut g = vec![3.0f32, 4.0];
    let norm = clip_grad_norm(&mut g, 1.0);
    assert_eq!(norm, 5.0);
    let scale = 1.0 / (5.0 + 1e-6);
    assert!((g[0] as f64 - 3.0 * scale).abs() < 2e-7 && (g[1] as f64 - 4.0 * scale).abs() < 2e-7);
    assert!((global_grad_norm(&g) - 1.0).abs() < 1e-6);
    // Under the bound, or disabled: untouched.
    for max in [5.0, 10.0, 0.0, -1.0, f64::INFINITY] {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, max), 5.0);
        assert_eq!(g, [3.0, 4.0], "max {max}");
    }
    // A non-finite norm is reported and left for the caller to skip.
    let mut g = vec![f32::INFINITY, 1.0];
    assert!(clip_grad_norm(&mut g, 1.0).is_infinite());
    assert_eq!(g[1], 1.0);
}

#[test]
fn grad_norm_accumulates_in_f64() {
    // 2²⁰ values of 1e-3 plus one 1.0: an f32 running sum of squares loses the small terms.
    let mut g = vec![1e-3f32; 1 << 20];
    g[0] = 1.0;
    let want: f64 = g
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    // Both sums are f64 (in different orders: ~1e-10 apart); an f32 running sum is ~1e-2 off.
    assert!((global_grad_norm(&g) - want).abs() < 1e-9 * want);
}

// ---------------------------------------------------------------- EMA

#[test]
fn ema_follows_the_closed_form_decay() {
    // Constant weights θ from ema₀: after k averaging steps ema = θ + dᵏ (ema₀ − θ).
    let d = 0.9;
    let start = [1.0f32, -2.0, 0.5];
    let target = [0.0f32, 3.0, 0.5];
    let mut ema = Ema::new(
        EmaConfig {
            decay: d,
            warmup: false,
            ..Default::default()
        },
        &start,
    )
    .unwrap();
    for k in 1..=25u64 {
        ema.update(k, &target);
        for i in 0..3 {
            let want = target[i] as f64 + d.powi(k as i32) * (start[i] - target[i]) as f64;
            let got = ema.weights()[i] as f64;
            assert!((got - want).abs() < 1e-6, "k {k} i {i}: {got} vs {want}");
        }
    }
}

#[test]
fn ema_copies_before_start_and_skips_between_updates() {
    let c = EmaConfig {
        decay: 0.5,
        start_step: 3,
        update_every: 2,
        warmup: false,
    };
    let mut ema = Ema::new(c, &[0.0]).unwrap();
    ema.update(1, &[10.0]);
    assert_eq!(ema.weights(), [10.0], "copy before start_step");
    ema.update(2, &[20.0]);
    assert_eq!(ema.weights(), [20.0]);
    ema.update(3, &[40.0]);
    assert_eq!(ema.weights(), [20.0], "step 3 is not a multiple of 2");
    ema.update(4, &[40.0]);
    assert_eq!(ema.weights(), [30.0], "0.5·20 + 0.5·40");
    let e = ema.restore(&[1.0, 2.0]).unwrap_err();
    assert_eq!(e.field, "weights");
    let e = Ema::new(
        EmaConfig {
            update_every: 0,
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field, "update_every");
    assert!(Ema::new(
        EmaConfig {
            decay: 1.5,
            ..Default::default()
        },
        &[]
    )
    .is_err());
}

#[test]
fn ema_with_decay_0_9999_still_moves_in_f32() {
    // Increments of 1e-4·Δ: 1e-4 at 1.0 and 1e-6 at 0.1, both above half an f32 ulp there.
    let cfg = EmaConfig {
        warmup: false,
        ..EmaConfig::default()
    };
    let mut ema = Ema::new(cfg, &[1.0f32, 0.1]).unwrap();
    ema.update(1, &[0.0, 0.11]);
    let w = ema.weights();
    assert!((w[0] as f64 - 0.9999).abs() < 1e-7, "{}", w[0]);
    assert!((w[1] as f64 - 0.100001).abs() < 1e-8, "{}", w[1]);
}

// ---------------------------------------------------------------- determinism

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let n = 300_001;
    let mut rng = Philox::new(9);
    let grads: Vec<f32> = rng.normal_vec(n, 1.0);
    let params: Vec<f32> = rng.normal_vec(n, 1.0);
    let run = |threads: usize| {
        in_pool(threads, || {
            let mut g = grads.clone();
            let norm = clip_grad_norm(&mut g, 10.0);
            let mut p = params.clone();
            let mut opt = AdamW::new(cfg(1e-3, 0.01, 0), n).unwrap();
            let mut ema = Ema::new(EmaConfig::default(), &p).unwrap();
            for k in 1..=3 {
                opt.update(&mut p, &g);
                ema.update(k, &p);
            }
            (norm.to_bits(), p, ema.weights().to_vec())
        })
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.0, three.0, "grad norm bits");
    assert!(one.1 == three.1 && one.2 == three.2);
}

#[test]
fn ema_warmup_caps_the_decay_early_and_lets_it_reach_the_target() {
    // decay_n = min(d, (1 + n)/(10 + n)), n = steps since start_step.
    let cfg = EmaConfig {
        decay: 0.999,
        start_step: 10,
        ..EmaConfig::default()
    };
    let mut ema = Ema::new(cfg, &[0.0f32]).unwrap();
    assert!((ema.decay_at(10) - 0.1).abs() < 1e-12);
    assert!((ema.decay_at(100) - 91.0 / 100.0).abs() < 1e-12);
    assert_eq!(ema.decay_at(1_000_000), 0.999);
    // One update at n = 0 moves 90% of the way.
    ema.update(10, &[1.0]);
    assert!(
        (ema.weights()[0] - 0.9).abs() < 1e-7,
        "{}",
        ema.weights()[0]
    );
}
