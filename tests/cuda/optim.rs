//! `kernels/optim.cu` against `ddpm::optim`: gradient norm, clipping, AdamW, EMA.

use anyhow::Result;
use ddpm::cuda::ops::optim::{
    adamw_ema_step, adamw_step, clip_grads, ema_update, grad_factor, grad_norm, OptimBuffers,
    NORM_BLOCKS, REDUCE_SCRATCH,
};
use ddpm::cuda::testing::{expect_close, from_device, to_device, zeros_on_device, Case};
use ddpm::cuda::Gpu;
use ddpm::optim::{
    clip_grad_norm, global_grad_norm, AdamW, AdamWConfig, Ema, EmaAction, EmaConfig,
};
use ddpm::precision::Precision;
use ddpm::rng::Philox;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "optim_grad_norm_matches_cpu",
            run: grad_norm_matches_cpu,
        },
        Case {
            name: "optim_clip_matches_cpu",
            run: clip_matches_cpu,
        },
        Case {
            name: "optim_clip_skips_non_finite_norm",
            run: clip_skips_non_finite_norm,
        },
        Case {
            name: "optim_adamw_steps_match_cpu",
            run: adamw_matches_cpu,
        },
        Case {
            name: "optim_ema_matches_cpu",
            run: ema_matches_cpu,
        },
        Case {
            name: "optim_fused_step_is_clip_adamw_ema_bit_for_bit",
            run: fused_step_matches_cpu,
        },
    ]
}

/// One element, odd sizes, exactly one and just over one full pass of the fixed first-stage
/// grid, and a large odd size.
const SIZES: [usize; 6] = [
    1,
    1000,
    4097,
    NORM_BLOCKS * 256,
    NORM_BLOCKS * 256 + 1,
    1_000_003,
];

/// Gradients spanning many magnitudes, where an f32 sum of squares would lose the small ones.
fn gradients(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Philox::new(seed);
    (0..n)
        .map(|i| {
            let scale = [1e-4, 1.0, 30.0][i % 3];
            (scale * rng.normal()) as f32
        })
        .collect()
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i} is {g}, the CPU has {w}"
        );
    }
}

/// The GPU norm (f32) of `grads`, from a fresh device copy.
fn gpu_norm(gpu: &Gpu, grads: &ddpm::cuda::device::DeviceMemory, n: usize) -> Result<f32> {
    let out = zeros_on_device::<f32>(gpu, 1)?;
    let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
    grad_norm(gpu, n, grads.ptr(), out.ptr(), scratch.ptr())?;
    Ok(from_device::<f32>(gpu, &out, 1)?[0])
}

fn grad_norm_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (case, &n) in SIZES.iter().enumerate() {
        let g = gradients(10 + case as u64, n);
        let want = global_grad_norm(&g) as f32;
        let dev = to_device(gpu, &g)?;
        let got = gpu_norm(gpu, &dev, n)?;
        // Squares summed in f64 on both sides, in different orders (~1e-16 relative apart);
        // the GPU rounds the f64 norm to f32 as the CPU's is rounded here, so they are equal
        // but for a rounding-boundary case (one ulp, 6e-8).
        expect_close(&format!("norm n={n}"), &[got], &[want], 1e-6);
        // Fixed grid, fixed order: the same bits on a second run.
        let again = gpu_norm(gpu, &dev, n)?;
        assert_eq!(
            got.to_bits(),
            again.to_bits(),
            "grad norm not deterministic"
        );
    }
    Ok(())
}

fn clip_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (case, &n) in [1usize, 4097, 1_000_003].iter().enumerate() {
        let g = gradients(20 + case as u64, n);
        let norm = global_grad_norm(&g);
        // Active (norm above the bound), inactive (below), and the CPU's off switches.
        for (label, max_norm, active) in [
            ("active", 0.25 * norm, true),
            ("inactive", 4.0 * norm, false),
            ("zero", 0.0, false),
            ("negative", -1.0, false),
            ("nan", f64::NAN, false),
            ("inf", f64::INFINITY, false),
        ] {
            let mut want = g.clone();
            let want_norm = clip_grad_norm(&mut want, max_norm);
            assert_eq!(want_norm, norm);
            let dev = to_device(gpu, &g)?;
            let out = zeros_on_device::<f32>(gpu, 1)?;
            let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
            grad_norm(gpu, n, dev.ptr(), out.ptr(), scratch.ptr())?;
            clip_grads(gpu, n, dev.ptr(), out.ptr(), max_norm)?;
            let got: Vec<f32> = from_device(gpu, &dev, n)?;
            if active {
                // The scale comes from the f32-rounded norm on the GPU and the f64 norm on the
                // CPU: scale within an ulp or so, each product within two ulps (≤ 2.4e-7).
                expect_close(&format!("clip {label} n={n}"), &got, &want, 1e-6);
            } else {
                assert_bits_eq(&format!("clip {label} n={n}"), &got, &want);
            }
        }
    }
    Ok(())
}

/// An infinite gradient makes the norm infinite: neither side touches the gradients.
fn clip_skips_non_finite_norm(gpu: &Gpu) -> Result<()> {
    let n = 1001;
    let mut g = gradients(30, n);
    g[500] = f32::INFINITY;
    let mut want = g.clone();
    let norm = clip_grad_norm(&mut want, 1.0);
    assert!(norm.is_infinite());
    let dev = to_device(gpu, &g)?;
    let got_norm = gpu_norm(gpu, &dev, n)?;
    assert!(got_norm.is_infinite(), "GPU norm {got_norm}");
    let out = to_device(gpu, &[got_norm])?;
    clip_grads(gpu, n, dev.ptr(), out.ptr(), 1.0)?;
    assert_bits_eq("clip inf", &from_device(gpu, &dev, n)?, &want);
    Ok(())
}

fn adamw_matches_cpu(gpu: &Gpu) -> Result<()> {
    let cfg = AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        warmup_steps: 3,
    };
    for (case, &n) in [1usize, 4097, 1_000_003].iter().enumerate() {
        let mut rng = Philox::new(40 + case as u64);
        let mut want_p: Vec<f32> = rng.normal_vec(n, 0.5);
        let mut cpu = AdamW::new(cfg.clone(), n)?;
        let p = to_device(gpu, &want_p)?;
        let m = zeros_on_device::<f32>(gpu, n)?;
        let v = zeros_on_device::<f32>(gpu, n)?;
        let g = zeros_on_device::<f32>(gpu, n)?;
        // Five updates: three in the learning-rate warmup, two after; weight decay on throughout.
        for t in 1..=5u64 {
            let grads = gradients(1000 * case as u64 + t, n);
            gpu.upload(g.ptr(), &grads, "grads")?;
            cpu.update(&mut want_p, &grads);
            assert_eq!(cpu.step(), t);
            adamw_step(gpu, n, p.ptr(), g.ptr(), m.ptr(), v.ptr(), &cfg.coeffs(t))?;
            let (_, want_m, want_v) = cpu.state();
            // Same f32 operations in the same order without FMA contraction (IEEE sqrt and
            // division on both sides): bit for bit expected; 1e-6 only tolerates a one-ulp slip.
            expect_close(
                &format!("adamw p n={n} t={t}"),
                &from_device(gpu, &p, n)?,
                &want_p,
                1e-6,
            );
            expect_close(
                &format!("adamw m n={n} t={t}"),
                &from_device(gpu, &m, n)?,
                want_m,
                1e-6,
            );
            expect_close(
                &format!("adamw v n={n} t={t}"),
                &from_device(gpu, &v, n)?,
                want_v,
                1e-6,
            );
        }
    }
    Ok(())
}

fn ema_matches_cpu(gpu: &Gpu) -> Result<()> {
    let configs = [
        // Warmup decay min(0.999, (1 + n)/(10 + n)), a copy before step 2, averaging every 2nd.
        EmaConfig {
            decay: 0.999,
            start_step: 2,
            update_every: 2,
            warmup: true,
        },
        // DDPM's 0.9999 without warmup: the tiny increments must not stall.
        EmaConfig {
            decay: 0.9999,
            start_step: 0,
            update_every: 1,
            warmup: false,
        },
    ];
    for (case, cfg) in configs.iter().enumerate() {
        for &n in &[1usize, 1_000_003] {
            let mut rng = Philox::new(60 + case as u64);
            let init: Vec<f32> = rng.normal_vec(n, 1.0);
            let mut cpu = Ema::new(cfg.clone(), &init)?;
            let ema = to_device(gpu, &init)?;
            let params = zeros_on_device::<f32>(gpu, n)?;
            for step in 1..=7u64 {
                let theta: Vec<f32> = rng.normal_vec(n, 1.0);
                gpu.upload(params.ptr(), &theta, "params")?;
                cpu.update(step, &theta);
                match cfg.action(step) {
                    EmaAction::Copy => gpu.copy(ema.ptr(), params.ptr(), 4 * n, "ema copy")?,
                    EmaAction::Skip => {}
                    EmaAction::Average { rate } => {
                        ema_update(gpu, n, ema.ptr(), params.ptr(), rate)?;
                    }
                }
                // ema + rate·(θ − ema) with the same f32 rate and no FMA: bit for bit expected;
                // 1e-6 only tolerates a one-ulp slip.
                expect_close(
                    &format!("ema cfg{case} n={n} step={step}"),
                    &from_device(gpu, &ema, n)?,
                    cpu.weights(),
                    1e-6,
                );
            }
        }
    }
    Ok(())
}

/// The fused pass (unscale + clip, AdamW, EMA, low-precision copy) against the CPU's separate
/// clip_grad_norm → AdamW::update → Ema::update, over steps where clipping is on and off and
/// the EMA copies, skips and averages. The gradients reach the GPU multiplied by a loss scale S
/// (a power of two, as the scaler's always is), so the fused pass must also divide it out:
/// multiplying by S and by f32(c/S) is exact, so the result must be the CPU's bit for bit, in
/// every precision (the low-precision copy must be the new weights rounded once).
fn fused_step_matches_cpu(gpu: &Gpu) -> Result<()> {
    let n = 70_001;
    let cfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let ema_cfg = EmaConfig {
        decay: 0.99,
        start_step: 2,
        update_every: 2,
        warmup: false,
    };
    for (dt, loss_scale) in [
        (Precision::Fp32, 1.0f32),
        (Precision::Bf16, 1.0),
        (Precision::Fp16, 1024.0),
    ] {
        let mut rng = Philox::new(5);
        let init: Vec<f32> = rng.normal_vec(n, 0.5);
        let mut want_p = init.clone();
        let mut cpu = AdamW::new(cfg.clone(), n)?;
        let mut cpu_ema = Ema::new(ema_cfg.clone(), &init)?;
        let p = to_device(gpu, &init)?;
        let ema = to_device(gpu, &init)?;
        let g = zeros_on_device::<f32>(gpu, n)?;
        let m = zeros_on_device::<f32>(gpu, n)?;
        let v = zeros_on_device::<f32>(gpu, n)?;
        let lowp = gpu.alloc(n * dt.bytes(), "lowp")?;
        let norm_d = zeros_on_device::<f32>(gpu, 1)?;
        let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
        for t in 1..=6u64 {
            let grads = gradients(300 + t, n);
            // Clip on at odd steps (the bound below the norm), off at even ones.
            let norm = global_grad_norm(&grads);
            let max_norm = if t % 2 == 1 { 0.5 * norm } else { 2.0 * norm };
            let scaled: Vec<f32> = grads.iter().map(|&x| x * loss_scale).collect();
            gpu.upload(g.ptr(), &scaled, "grads")?;
            grad_norm(gpu, n, g.ptr(), norm_d.ptr(), scratch.ptr())?;
            let scaled_norm = from_device::<f32>(gpu, &norm_d, 1)?[0];
            // The CPU's clipping, with the norm the GPU measured (f32, S divided out exactly):
            // clip_grad_norm's scale formula from the f64 norm would differ in the last bit.
            let measured = f64::from(scaled_norm) / f64::from(loss_scale);
            let mut clipped = grads.clone();
            if measured > max_norm {
                let c = (max_norm / (measured + 1e-6)) as f32;
                clipped.iter_mut().for_each(|x| *x *= c);
            }
            cpu.update(&mut want_p, &clipped);
            cpu_ema.update(t, &want_p);
            let bufs = OptimBuffers {
                params: p.ptr(),
                grads: g.ptr(),
                m: m.ptr(),
                v: v.ptr(),
                ema: ema.ptr(),
                lowp: if dt.is_reduced() { lowp.ptr() } else { 0 },
            };
            let factor = grad_factor(scaled_norm, loss_scale, max_norm);
            adamw_ema_step(gpu, dt, n, bufs, &cfg.coeffs(t), factor, ema_cfg.action(t))?;
            let what = |s: &str| format!("fused {dt} S={loss_scale} t={t} {s}");
            let got_p = from_device(gpu, &p, n)?;
            assert_bits_eq(&what("params"), &got_p, &want_p);
            assert_bits_eq(&what("ema"), &from_device(gpu, &ema, n)?, cpu_ema.weights());
            let (_, want_m, want_v) = cpu.state();
            assert_bits_eq(&what("m"), &from_device(gpu, &m, n)?, want_m);
            assert_bits_eq(&what("v"), &from_device(gpu, &v, n)?, want_v);
            // The gradient is read, never written.
            assert_bits_eq(&what("grads"), &from_device(gpu, &g, n)?, &scaled);
            if dt.is_reduced() {
                let mut copy = vec![0.0f32; n];
                gpu.download_as(&mut copy, lowp.ptr(), dt, "lowp")?;
                let rounded: Vec<f32> = got_p.iter().map(|&x| dt.round(x)).collect();
                assert_bits_eq(&what("low-precision copy"), &copy, &rounded);
            }
        }
        expect_close(
            &format!("fused {dt} params after 6 steps"),
            &from_device(gpu, &p, n)?,
            &want_p,
            0.0,
        );
    }
    Ok(())
}
