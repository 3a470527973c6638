//! `kernels/diffusion.cu` against `ddpm::diffusion`: the fused training noise-add (t, ε, x_t and
//! the target drawn and formed as `Trainer::train_step` does) and the DDPM/DDIM sampler steps
//! (against `apply_step` with the z that `sample` draws, and against a whole `sample` run).

use anyhow::Result;
use ddpm::cuda::device::DeviceMemory;
use ddpm::cuda::ops::diffusion::{noise_add, sampler_step, NoiseAddArgs, StepNoise, UpdateBuffers};
use ddpm::cuda::testing::{expect_close, from_device, to_device, zeros_on_device, Case};
use ddpm::cuda::Gpu;
use ddpm::diffusion::noise::fill_train_noise;
use ddpm::diffusion::{
    add_noise, apply_step, draw_timesteps, fill_normal, initial_noise, inversion_evaluations,
    run_evaluations, step_pairs, stream, training_target, Evaluation, NoisePurpose, PredictionType,
    SampleOptions, SamplerKind, Schedule, ScheduleConfig, Spacing, StepCoeffs, VarianceType,
};
use ddpm::precision::Precision;
use ddpm::rng::{philox_word, Philox};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "diffusion_noise_add_matches_train_step",
            run: noise_add_matches_cpu,
        },
        Case {
            name: "diffusion_noise_add_rejection_sampling",
            run: noise_add_rejection,
        },
        Case {
            name: "diffusion_noise_add_bf16_fp16_round_x_t_once",
            run: noise_add_reduced_precision,
        },
        Case {
            name: "diffusion_sampler_steps_match_apply_step",
            run: steps_match_cpu,
        },
        Case {
            name: "diffusion_sampler_steps_bf16_fp16_model_side",
            run: steps_reduced_precision,
        },
        Case {
            name: "diffusion_sample_loop_matches_cpu",
            run: sample_loop_matches_cpu,
        },
    ]
}

fn schedule(prediction: PredictionType, variance: VarianceType) -> Result<Schedule> {
    Ok(Schedule::new(ScheduleConfig {
        prediction_type: prediction,
        variance_type: variance,
        ..ScheduleConfig::default()
    })?)
}

/// Runs `noise_add` (x_t stored as `dt`) and returns (x_t, target, t) from the device.
fn run_noise_add(
    gpu: &Gpu,
    dt: Precision,
    a: &NoiseAddArgs,
    x0: &[f32],
    sqrt_ab: &[f32],
    sqrt_1m_ab: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let len = a.batch * a.item_len;
    let x0_d = to_device(gpu, x0)?;
    let sa = to_device(gpu, sqrt_ab)?;
    let s1 = to_device(gpu, sqrt_1m_ab)?;
    let x_t = zeros_on_device::<f32>(gpu, len)?;
    let target = zeros_on_device::<f32>(gpu, len)?;
    let t = zeros_on_device::<f32>(gpu, a.batch)?;
    noise_add(
        gpu,
        dt,
        a,
        x0_d.ptr(),
        sa.ptr(),
        s1.ptr(),
        x_t.ptr(),
        target.ptr(),
        t.ptr(),
    )?;
    let mut xt = vec![0.0f32; len];
    gpu.download_as(&mut xt, x_t.ptr(), dt, "x_t")?;
    Ok((
        xt,
        from_device(gpu, &target, len)?,
        from_device(gpu, &t, a.batch)?,
    ))
}

fn assert_timesteps(what: &str, got: &[f32], want: &[usize]) {
    let want: Vec<f32> = want.iter().map(|&t| t as f32).collect();
    assert_eq!(
        got,
        &want[..],
        "{what}: timesteps differ from draw_timesteps"
    );
}

fn noise_add_matches_cpu(gpu: &Gpu) -> Result<()> {
    let (seed, batch) = (1234u64, 5usize);
    for prediction in [
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ] {
        let sched = schedule(prediction, VarianceType::FixedSmall)?;
        let num_t = sched.num_timesteps();
        // Odd item lengths (a Philox block is split across the item end), one element per item,
        // and a step that fills the stream's 36-bit argument.
        for (item_len, step) in [(1usize, 0u64), (147, 77), (3 * 17 * 17, (1 << 36) - 1)] {
            let len = batch * item_len;
            let x0: Vec<f32> = Philox::new(step ^ 5).uniform_vec(len, -1.0, 1.0);
            // The CPU side, exactly as Trainer::train_step draws and forms it.
            let t = draw_timesteps(seed, step, batch, num_t);
            let mut eps = vec![0.0f32; len];
            fill_train_noise(seed, step, 0, item_len, &mut eps);
            let mut want_xt = vec![0.0f32; len];
            add_noise(&sched, &x0, &eps, &t, item_len, &mut want_xt);
            let mut want_target = vec![0.0f32; len];
            training_target(
                &sched,
                prediction,
                &x0,
                &eps,
                &t,
                item_len,
                &mut want_target,
            );

            let a = NoiseAddArgs {
                seed,
                step,
                batch,
                item_len,
                num_timesteps: num_t,
                prediction,
            };
            let (xt, target, t_got) = run_noise_add(
                gpu,
                Precision::Fp32,
                &a,
                &x0,
                sched.sqrt_alphas_cumprod(),
                sched.sqrt_one_minus_alphas_cumprod(),
            )?;
            let what = |s: &str| format!("{s} {prediction:?} len={item_len}");
            // Integer draws from the same Philox words: exact.
            assert_timesteps(&what("t"), &t_got, &t);
            // ε: Box–Muller in f64 from the same words; only the device's log/cos may differ from
            // the host libm by an f64 ulp or two, which flips the f32 rounding about once in 10⁸
            // elements, by one ulp (1.2e-7 relative). x_t and the target are then the same f32
            // products and sums (no FMA). 1e-6 allows that one-ulp slip and nothing more.
            if prediction == PredictionType::Epsilon {
                expect_close(&what("eps"), &target, &eps, 1e-6);
            }
            expect_close(&what("x_t"), &xt, &want_xt, 1e-6);
            expect_close(&what("target"), &target, &want_target, 1e-6);
        }
    }
    Ok(())
}

/// A large T (2³² mod T = 67296, so about one word in 64 000 is rejected) and a step at which
/// some item's first timestep word is rejected: the kernel must go on to the next word as
/// `timestep_for` does. The tables are synthetic (no schedule reaches T = 100 000 in f32).
fn noise_add_rejection(gpu: &Gpu) -> Result<()> {
    let (seed, batch, item_len, num_t) = (99u64, 64usize, 9usize, 100_000usize);
    let reject_below = (1u64 << 32) % num_t as u64;
    let rejected = |step: u64, item: u64| {
        let s = stream(NoisePurpose::TrainTimestep, step, item);
        (u64::from(philox_word(seed, s, 0)) * num_t as u64) & 0xFFFF_FFFF < reject_below
    };
    let step = (0..1_000_000u64)
        .find(|&step| (0..batch as u64).any(|i| rejected(step, i)))
        .expect("no step with a rejected timestep word in 10⁶ tries (expected ~1000)");

    let mut rng = Philox::new(3);
    let sqrt_ab: Vec<f32> = rng.uniform_vec(num_t, 0.01, 1.0);
    let sqrt_1m_ab: Vec<f32> = rng.uniform_vec(num_t, 0.01, 1.0);
    let x0: Vec<f32> = rng.uniform_vec(batch * item_len, -1.0, 1.0);
    let t = draw_timesteps(seed, step, batch, num_t);
    let mut eps = vec![0.0f32; batch * item_len];
    fill_train_noise(seed, step, 0, item_len, &mut eps);
    // `add_noise`'s arithmetic (`mix_items`) with the synthetic tables.
    let want_xt: Vec<f32> = (0..batch * item_len)
        .map(|k| {
            let ti = t[k / item_len];
            sqrt_ab[ti] * x0[k] + sqrt_1m_ab[ti] * eps[k]
        })
        .collect();

    let a = NoiseAddArgs {
        seed,
        step,
        batch,
        item_len,
        num_timesteps: num_t,
        prediction: PredictionType::Epsilon,
    };
    let (xt, target, t_got) = run_noise_add(gpu, Precision::Fp32, &a, &x0, &sqrt_ab, &sqrt_1m_ab)?;
    assert_timesteps(&format!("t (step {step})"), &t_got, &t);
    // As in noise_add_matches_cpu: one-ulp slips of ε at most.
    expect_close("rejection eps", &target, &eps, 1e-6);
    expect_close("rejection x_t", &xt, &want_xt, 1e-6);
    Ok(())
}

/// The z that `sample` draws for step `k` (SampleStep stream (id, k) per image).
fn cpu_step_noise(seed: u64, ids: &[u64], k: u64, item_len: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; ids.len() * item_len];
    for (item, &id) in z.chunks_mut(item_len).zip(ids) {
        fill_normal(seed, stream(NoisePurpose::SampleStep, id, k), item);
    }
    z
}

struct StepCase {
    name: &'static str,
    prediction: PredictionType,
    variance: VarianceType,
    kind: SamplerKind,
    clip: Option<f64>,
    eps_from_clipped_x0: bool,
    /// Which step of a 50-step leading plan; the last one lands on x₀ (σ = 0).
    k: usize,
}

const STEP_CASES: [StepCase; 8] = [
    StepCase {
        name: "ddpm small clip",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddpm,
        clip: Some(1.0),
        eps_from_clipped_x0: true,
        k: 3,
    },
    StepCase {
        name: "ddpm large noclip",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedLarge,
        kind: SamplerKind::Ddpm,
        clip: None,
        eps_from_clipped_x0: true,
        k: 20,
    },
    StepCase {
        name: "ddpm v clip",
        prediction: PredictionType::VPrediction,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddpm,
        clip: Some(1.0),
        eps_from_clipped_x0: true,
        k: 10,
    },
    StepCase {
        name: "ddpm last step",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddpm,
        clip: Some(1.0),
        eps_from_clipped_x0: true,
        k: 49,
    },
    StepCase {
        name: "ddim eta0 clip",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddim { eta: 0.0 },
        clip: Some(1.0),
        eps_from_clipped_x0: true,
        k: 5,
    },
    StepCase {
        name: "ddim eta0 noclip x0",
        prediction: PredictionType::Sample,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddim { eta: 0.0 },
        clip: None,
        eps_from_clipped_x0: true,
        k: 30,
    },
    StepCase {
        name: "ddim eta1 clip",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddim { eta: 1.0 },
        clip: Some(1.0),
        eps_from_clipped_x0: true,
        k: 7,
    },
    StepCase {
        name: "ddim eta.5 raw eps",
        prediction: PredictionType::Epsilon,
        variance: VarianceType::FixedSmall,
        kind: SamplerKind::Ddim { eta: 0.5 },
        clip: Some(1.0),
        eps_from_clipped_x0: false,
        k: 12,
    },
];

fn steps_match_cpu(gpu: &Gpu) -> Result<()> {
    let seed = 4321u64;
    // Image ids that are not 0..B (noise follows the id, not the slot), an odd item length.
    let ids: [u64; 4] = [7, 0, 123_456, (1 << 36) - 1];
    let item_len = 75;
    let n = ids.len() * item_len;
    let ids_d = to_device(gpu, &ids)?;
    for case in &STEP_CASES {
        let sched = schedule(case.prediction, case.variance)?;
        let plan = step_pairs(Spacing::Leading, sched.num_timesteps(), 50, 0)?;
        let pair = plan[case.k];
        let opts = SampleOptions {
            kind: case.kind,
            steps: 50,
            spacing: Spacing::Leading,
            clip: case.clip,
            eps_from_clipped_x0: case.eps_from_clipped_x0,
            steps_offset: 0,
            set_alpha_to_one: true,
            sigmas: None,
            guidance: None,
        };
        let c = StepCoeffs::for_step(&sched, &opts, pair);
        let stochastic =
            !matches!(case.kind, SamplerKind::Ddim { eta } if eta == 0.0) && pair.prev.is_some();
        assert_eq!(c.sigma > 0.0, stochastic, "{}: σ = {}", case.name, c.sigma);

        let mut rng = Philox::new(case.k as u64);
        let x_t: Vec<f32> = rng.normal_vec(n, 1.0);
        let out: Vec<f32> = rng.normal_vec(n, 1.0);
        let z = cpu_step_noise(seed, &ids, case.k as u64, item_len);
        let mut want_prev = vec![0.0f32; n];
        let mut want_x0 = vec![0.0f32; n];
        let z_arg = (c.sigma > 0.0).then_some(&z[..]);
        apply_step(&c, &x_t, &out, z_arg, &mut want_prev, &mut want_x0);

        let noise = (c.sigma > 0.0).then_some(StepNoise {
            seed,
            step_index: case.k as u64,
        });
        let xt_d = to_device(gpu, &x_t)?;
        let out_d = to_device(gpu, &out)?;
        let prev_d = zeros_on_device::<f32>(gpu, n)?;
        let x0_d = zeros_on_device::<f32>(gpu, n)?;
        let bufs = UpdateBuffers {
            x_t: xt_d.ptr(),
            out: out_d.ptr(),
            out_uncond: 0,
            hist: 0,
            x_new: prev_d.ptr(),
            x_new_model: 0,
            x0: x0_d.ptr(),
            image_ids: ids_d.ptr(),
        };
        sampler_step(gpu, Precision::Fp32, &c, noise, ids.len(), item_len, bufs)?;
        // Same f32 products and sums as step_element (no FMA), z from the same Philox words:
        // bit for bit but for z's rare one-ulp f64 log/cos boundary case, which moves x_prev by
        // σ·ulp(z) ≤ 1.2e-7 relative. 1e-6 allows that and nothing more.
        expect_close(
            &format!("{} x_prev", case.name),
            &from_device(gpu, &prev_d, n)?,
            &want_prev,
            1e-6,
        );
        // x̂₀ involves no noise: exact.
        expect_close(
            &format!("{} x0", case.name),
            &from_device(gpu, &x0_d, n)?,
            &want_x0,
            0.0,
        );

        // In place (x_prev over x_t) and without x̂₀: the same x_prev.
        let in_place = UpdateBuffers {
            x_new: xt_d.ptr(),
            x0: 0,
            ..bufs
        };
        sampler_step(
            gpu,
            Precision::Fp32,
            &c,
            noise,
            ids.len(),
            item_len,
            in_place,
        )?;
        expect_close(
            &format!("{} in place", case.name),
            &from_device(gpu, &xt_d, n)?,
            &want_prev,
            1e-6,
        );
    }
    Ok(())
}

/// A whole `sample` run with a toy model (conditional out = 0.3·x_t + 0.1, unconditional
/// −0.2·x_t + 0.05, evaluated on the host for both sides) against the same loop on the GPU, for
/// every sampler: checks which stream and step index each evaluation's z comes from, the
/// history buffer (Heun, DPM-Solver++) and the guidance mix, over every evaluation of a plan.
fn sample_loop_matches_cpu(gpu: &Gpu) -> Result<()> {
    let (seed, item_len) = (777u64, 33usize);
    let ids: [u64; 3] = [2, 9, 1];
    let n = ids.len() * item_len;
    let toy = |x: &[f32], out: &mut [f32]| {
        let (cond, uncond) = out.split_at_mut(x.len());
        for (o, &v) in cond.iter_mut().zip(x) {
            *o = 0.3 * v + 0.1;
        }
        for (o, &v) in uncond.iter_mut().zip(x) {
            *o = -0.2 * v + 0.05;
        }
    };
    let sched = schedule(PredictionType::Epsilon, VarianceType::FixedSmall)?;
    let cases = [
        (SamplerKind::Ddpm, None),
        (SamplerKind::Ddim { eta: 1.0 }, None),
        (SamplerKind::Ddim { eta: 0.0 }, Some(3.0)),
        (SamplerKind::Euler, None),
        (SamplerKind::Heun, Some(2.0)),
        (SamplerKind::EulerMaruyama, None),
        (SamplerKind::DpmSolver2M, None),
    ];
    let mut runs: Vec<(String, Vec<Evaluation>, bool)> = Vec::new();
    for (kind, guidance) in cases {
        let opts = SampleOptions {
            guidance,
            ..SampleOptions::new(sched.config(), kind, 10)
        };
        runs.push((
            format!("sample {kind:?}, guidance {guidance:?}"),
            opts.evaluations(&sched)?,
            guidance.is_some(),
        ));
    }
    // DDIM inversion: the update that reads the model output directly (c_out).
    let ddim = SampleOptions::new(sched.config(), SamplerKind::Ddim { eta: 0.0 }, 10);
    runs.push((
        "DDIM inversion".into(),
        inversion_evaluations(&sched, &ddim)?,
        false,
    ));
    for (name, evals, guided) in runs {
        let out_len = if guided { 2 * n } else { n };
        let x_init = initial_noise(seed, &ids, item_len)?;

        let mut want = x_init.clone();
        run_evaluations(
            &evals,
            guided,
            &mut want,
            item_len,
            &ids,
            seed,
            &mut |x: &[f32], _t: &[f32], out: &mut [f32]| -> Result<()> {
                toy(x, out);
                Ok(())
            },
            &mut |_| {},
        )?;

        let x_d: DeviceMemory = to_device(gpu, &x_init)?;
        let out_d = zeros_on_device::<f32>(gpu, out_len)?;
        let hist_d = zeros_on_device::<f32>(gpu, n)?;
        let ids_d = to_device(gpu, &ids)?;
        let mut x_host = vec![0.0f32; n];
        let mut out_host = vec![0.0f32; out_len];
        for (k, e) in evals.iter().enumerate() {
            gpu.download(&mut x_host, x_d.ptr(), "x_t")?;
            toy(&x_host, &mut out_host);
            gpu.upload(out_d.ptr(), &out_host, "model output")?;
            let noise = (e.coeffs.sigma > 0.0).then_some(StepNoise {
                seed,
                step_index: k as u64,
            });
            let bufs = UpdateBuffers {
                x_t: x_d.ptr(),
                out: out_d.ptr(),
                out_uncond: if guided {
                    out_d.ptr() + 4 * n as u64
                } else {
                    0
                },
                hist: hist_d.ptr(),
                x_new: x_d.ptr(),
                x_new_model: 0,
                x0: 0,
                image_ids: ids_d.ptr(),
            };
            sampler_step(
                gpu,
                Precision::Fp32,
                &e.coeffs,
                noise,
                ids.len(),
                item_len,
                bufs,
            )?;
        }
        // Ten steps of the per-step agreement above; a one-ulp z slip carries forward scaled by
        // the later steps' x_t weights (< 1.2), so 1e-5 bounds it with margin.
        expect_close(&name, &from_device(gpu, &x_d, n)?, &want, 1e-5);
    }
    Ok(())
}

/// bf16 and fp16 training: the kernel forms x_t in fp32 exactly as in fp32 mode and stores it
/// (the model's input) rounded once; the target and t stay fp32. So x_t is the CPU's x_t
/// rounded to the format: within one rounding (u), plus the rare one-ulp f32 slip of ε that
/// can carry a value across a rounding boundary (another u at most).
fn noise_add_reduced_precision(gpu: &Gpu) -> Result<()> {
    let (seed, batch, item_len, step) = (99u64, 3usize, 2 * 8 * 8 + 1, 12u64);
    let sched = schedule(PredictionType::VPrediction, VarianceType::FixedSmall)?;
    let num_t = sched.num_timesteps();
    let len = batch * item_len;
    let x0: Vec<f32> = Philox::new(3).uniform_vec(len, -1.0, 1.0);
    let t = draw_timesteps(seed, step, batch, num_t);
    let mut eps = vec![0.0f32; len];
    fill_train_noise(seed, step, 0, item_len, &mut eps);
    let mut want_xt = vec![0.0f32; len];
    add_noise(&sched, &x0, &eps, &t, item_len, &mut want_xt);
    let mut want_target = vec![0.0f32; len];
    training_target(
        &sched,
        PredictionType::VPrediction,
        &x0,
        &eps,
        &t,
        item_len,
        &mut want_target,
    );
    let a = NoiseAddArgs {
        seed,
        step,
        batch,
        item_len,
        num_timesteps: num_t,
        prediction: PredictionType::VPrediction,
    };
    for dt in [Precision::Bf16, Precision::Fp16] {
        let (xt, target, t_got) = run_noise_add(
            gpu,
            dt,
            &a,
            &x0,
            sched.sqrt_alphas_cumprod(),
            sched.sqrt_one_minus_alphas_cumprod(),
        )?;
        assert_timesteps(&format!("t {dt}"), &t_got, &t);
        let rounded: Vec<f32> = want_xt.iter().map(|&v| dt.round(v)).collect();
        expect_close(
            &format!("x_t {dt}"),
            &xt,
            &rounded,
            2.0 * dt.unit_roundoff(),
        );
        // Stored in the format: every value is representable in it.
        assert!(
            xt.iter().all(|&v| dt.round(v) == v),
            "x_t {dt} holds values the format cannot"
        );
        expect_close(&format!("target {dt}"), &target, &want_target, 1e-6);
    }
    Ok(())
}

/// The sampler update reads the model output in bf16/fp16 and keeps x_t, x̂₀ and x_new in fp32;
/// it also writes x_new rounded to the format as the next model input. Against `apply_step` on
/// the same (rounded) output: x_new and x̂₀ as in fp32 (1e-6, the z slip), the model copy
/// within one rounding of the fp32 x_new (plus the slip).
fn steps_reduced_precision(gpu: &Gpu) -> Result<()> {
    let seed = 777u64;
    let ids: [u64; 3] = [5, 1, 900];
    let item_len = 51;
    let n = ids.len() * item_len;
    let ids_d = to_device(gpu, &ids)?;
    let sched = schedule(PredictionType::Epsilon, VarianceType::FixedSmall)?;
    let plan = step_pairs(Spacing::Leading, sched.num_timesteps(), 50, 0)?;
    let k = 10;
    let opts = SampleOptions::new(sched.config(), SamplerKind::Ddim { eta: 0.7 }, 50);
    let c = StepCoeffs::for_step(&sched, &opts, plan[k]);
    assert!(c.sigma > 0.0, "the case should draw noise");
    let mut rng = Philox::new(17);
    let x_t: Vec<f32> = rng.normal_vec(n, 1.0);
    let out_full: Vec<f32> = rng.normal_vec(n, 1.0);
    let z = cpu_step_noise(seed, &ids, k as u64, item_len);
    for dt in [Precision::Bf16, Precision::Fp16] {
        let out: Vec<f32> = out_full.iter().map(|&v| dt.round(v)).collect();
        let mut want_prev = vec![0.0f32; n];
        let mut want_x0 = vec![0.0f32; n];
        apply_step(&c, &x_t, &out, Some(&z), &mut want_prev, &mut want_x0);
        let xt_d = to_device(gpu, &x_t)?;
        let out_d = gpu.alloc(n * dt.bytes(), "out")?;
        gpu.upload_as(out_d.ptr(), dt, &out_full, "out")?;
        let prev_d = zeros_on_device::<f32>(gpu, n)?;
        let model_d = gpu.alloc(n * dt.bytes(), "model input")?;
        let x0_d = zeros_on_device::<f32>(gpu, n)?;
        let bufs = UpdateBuffers {
            x_t: xt_d.ptr(),
            out: out_d.ptr(),
            out_uncond: 0,
            hist: 0,
            x_new: prev_d.ptr(),
            x_new_model: model_d.ptr(),
            x0: x0_d.ptr(),
            image_ids: ids_d.ptr(),
        };
        let noise = Some(StepNoise {
            seed,
            step_index: k as u64,
        });
        sampler_step(gpu, dt, &c, noise, ids.len(), item_len, bufs)?;
        let prev = from_device(gpu, &prev_d, n)?;
        expect_close(&format!("{dt} x_prev"), &prev, &want_prev, 1e-6);
        expect_close(
            &format!("{dt} x0"),
            &from_device(gpu, &x0_d, n)?,
            &want_x0,
            0.0,
        );
        let mut model = vec![0.0f32; n];
        gpu.download_as(&mut model, model_d.ptr(), dt, "model input")?;
        let rounded: Vec<f32> = prev.iter().map(|&v| dt.round(v)).collect();
        // Exactly the device's own x_new rounded once.
        expect_close(&format!("{dt} model input"), &model, &rounded, 0.0);
    }
    Ok(())
}
