//! The whole training step and the sampler on the GPU against the CPU trainer and sampler:
//! the same initial weights, data, timesteps, noise and dropout masks, so every number can be
//! compared. Differences come only from float summation order (cuBLAS vs our GEMM, reduction
//! trees), which compound through ~30 layers: tolerances are relative to each tensor's largest
//! magnitude, 2e-3 for gradients and 1e-3 for losses and images.
//!
//! Weights after an AdamW step are compared differently. Adam divides each gradient by its own
//! running RMS, so a coordinate whose gradient is near zero (|g| ≈ ε) turns a 1e-9 difference in
//! g into a large fraction of a learning-rate step: the kernel emulator already shows
//! 2.5e-5 at lr 5e-4. So the single-step test applies the CPU's AdamW to the GPU's own gradients
//! and expects the GPU's weights to 1e-5 (the update itself is exact), and the multi-step test
//! bounds the weight difference by the learning rate (0.2·Σ lr = 9e-4; the emulator shows 4.3e-5,
//! and a planted bug in the softmax backward takes it to 7.9e-3). The exactness of the update
//! itself is the single-step test's job and that of `optim_adamw_steps_match_cpu`.

use std::rc::Rc;

use ddpm::cuda::backend::ConvPath;
use ddpm::cuda::sample::GpuSampler;
use ddpm::cuda::testing::{expect_close, expect_rel_l2, expect_within, shared_gpu, Case};
use ddpm::cuda::train::GpuTrainer;
use ddpm::cuda::Gpu;
use ddpm::data::Batch;
use ddpm::diffusion::sampler::{SampleOptions, SamplerKind};
use ddpm::diffusion::{PredictionType, Schedule, ScheduleConfig};
use ddpm::nn::{DownBlockType::*, UNetConfig, UpBlockType::*};
use ddpm::optim::{AdamW, AdamWConfig, EmaConfig, LossScaler};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::sample::{generate, GenerateOptions};
use ddpm::train::{LossKind, TrainConfig, TrainEngine, Trainer};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "train_step_loss_and_every_gradient_match_cpu",
            run: |g| train_step_matches(g, false),
        },
        Case {
            name: "train_step_class_conditional_v_prediction_l1_matches_cpu",
            run: |g| train_step_matches(g, true),
        },
        Case {
            name: "train_step_on_shifted_gemm_convolutions_matches_cpu",
            run: |g| train_step_matches_on(g, false, ConvPath::Shifted),
        },
        Case {
            name: "five_optimizer_steps_match_cpu_and_allocate_nothing",
            run: several_steps_match,
        },
        Case {
            name: "gpu_checkpoint_resumes_on_the_cpu",
            run: checkpoint_crosses_devices,
        },
        Case {
            name: "non_finite_step_is_skipped_as_on_the_cpu",
            run: non_finite_step_is_skipped,
        },
        Case {
            name: "ddpm_and_ddim_sampling_from_fixed_noise_match_cpu",
            run: sampling_matches,
        },
        Case {
            name: "bf16_fp16_gradients_and_losses_track_fp32",
            run: reduced_precision_tracks_fp32,
        },
        Case {
            name: "fp16_loss_scale_backs_off_from_overflow",
            run: fp16_overflow_backs_off,
        },
        Case {
            name: "bf16_fp16_sampling_tracks_the_cpu",
            run: reduced_precision_sampling,
        },
    ]
}

/// A small UNet with every layer kind: attention (2 heads) in down, mid and up blocks,
/// shortcuts, a stride-2 conv with asymmetric padding, upsampling, dropout.
fn model(class_cond: bool) -> UNetConfig {
    UNetConfig {
        sample_size: 8,
        in_channels: 3,
        out_channels: 3,
        block_out_channels: vec![16, 32],
        layers_per_block: 1,
        down_block_types: vec![DownBlock2D, AttnDownBlock2D],
        up_block_types: vec![AttnUpBlock2D, UpBlock2D],
        norm_num_groups: 8,
        attention_head_dim: Some(16),
        dropout: 0.1,
        num_class_embeds: class_cond.then_some(3),
        ..UNetConfig::default()
    }
}

fn train_config(batch: usize, loss: LossKind, clip: f64) -> TrainConfig {
    TrainConfig {
        image_size: 8,
        channels: 3,
        batch_size: batch,
        loss,
        grad_clip: clip,
        optimizer: AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            warmup_steps: 2,
            ..AdamWConfig::default()
        },
        ema: EmaConfig {
            decay: 0.99,
            ..EmaConfig::default()
        },
        ..TrainConfig::default()
    }
}

fn batch(b: usize, step: u64, class_cond: bool) -> Batch {
    let mut rng = Philox::with_stream(7, step);
    Batch {
        step,
        x: rng.uniform_vec(b * 3 * 8 * 8, -1.0, 1.0),
        labels: class_cond.then(|| (0..b).map(|i| (i % 3) as u32).collect()),
    }
}

/// The runner's device as the shared handle trainers and samplers keep.
fn open(g: &Gpu) -> Rc<Gpu> {
    let gpu = shared_gpu();
    assert_eq!(gpu.ordinal, g.ordinal);
    gpu
}

fn train_step_matches(g: &Gpu, variant: bool) -> anyhow::Result<()> {
    train_step_matches_on(g, variant, ConvPath::Im2col)
}

/// One training step against the CPU, with the 3×3 convolutions on `path`.
fn train_step_matches_on(g: &Gpu, variant: bool, path: ConvPath) -> anyhow::Result<()> {
    let gpu = open(g);
    let schedule = ScheduleConfig {
        prediction_type: if variant {
            PredictionType::VPrediction
        } else {
            PredictionType::Epsilon
        },
        ..ScheduleConfig::default()
    };
    let loss = if variant { LossKind::L1 } else { LossKind::L2 };
    // Clipping off, so the gradients compared are the raw ones.
    let cfg = train_config(5, loss, 0.0);
    let mut cpu = Trainer::new(model(variant), schedule.clone(), cfg.clone())?;
    let mut dev = GpuTrainer::new(gpu, model(variant), schedule, cfg, Precision::Fp32)?;
    dev.set_conv_path(path);
    let data = batch(5, 0, variant);
    let a = cpu.train_step(&data)?;
    let b = dev.train_step(&data)?;
    expect_close("loss", &[b.loss], &[a.loss], 1e-3);
    expect_close(
        "grad norm",
        &[b.grad_norm as f32],
        &[a.grad_norm as f32],
        1e-3,
    );
    let host = dev.params_to_host()?;
    for spec in cpu.net.layout.specs() {
        let r = spec.range();
        expect_close(
            &spec.name,
            &host.grads()[r.clone()],
            &cpu.params.grads()[r],
            2e-3,
        );
    }
    // The update on the GPU's own gradients, by the CPU's AdamW, from the same initial weights.
    let mut want = dev.net.init_params::<f32>(dev.config.seed);
    let mut adam = AdamW::new(dev.config.optimizer.clone(), want.values().len())?;
    adam.update(want.values_mut(), host.grads());
    expect_close("weights after AdamW", host.values(), want.values(), 1e-5);
    Ok(())
}

fn several_steps_match(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let cfg = train_config(4, LossKind::L2, 1.0);
    let mut cpu = Trainer::new(model(false), ScheduleConfig::default(), cfg.clone())?;
    let mut dev = GpuTrainer::new(
        gpu.clone(),
        model(false),
        ScheduleConfig::default(),
        cfg,
        Precision::Fp32,
    )?;
    let mut allocations = None;
    for step in 0..5 {
        let data = batch(4, step, false);
        let a = cpu.train_step(&data)?;
        let b = dev.train_step(&data)?;
        expect_close(
            &format!("loss at step {}", step + 1),
            &[b.loss],
            &[a.loss],
            1e-3,
        );
        // Steps after the first allocate nothing on the device.
        let now = gpu.allocation_stats();
        if let Some(before) = allocations {
            assert_eq!(now, before, "step {} allocated device memory", step + 1);
        }
        allocations = Some(now);
    }
    let ck = dev.checkpoint()?;
    let lr_sum: f64 = (1..=5).map(|t| cpu.optimizer.lr_at(t)).sum();
    let bound = 0.2 * lr_sum;
    expect_within(
        "weights after 5 steps",
        &ck.weights,
        cpu.params.values(),
        bound,
    );
    expect_within("EMA after 5 steps", &ck.ema, cpu.ema.weights(), bound);
    let (_, m, v) = cpu.optimizer.state();
    expect_close("Adam m after 5 steps", &ck.adam_m, m, 2e-3);
    expect_close("Adam v after 5 steps", &ck.adam_v, v, 2e-3);
    Ok(())
}

fn checkpoint_crosses_devices(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let cfg = train_config(3, LossKind::L2, 1.0);
    let mut dev = GpuTrainer::new(
        gpu.clone(),
        model(false),
        ScheduleConfig::default(),
        cfg,
        Precision::Fp32,
    )?;
    for step in 0..2 {
        dev.train_step(&batch(3, step, false))?;
    }
    let ck = dev.checkpoint()?;
    let mut cpu = Trainer::from_checkpoint(ck.clone())?;
    let mut back = GpuTrainer::from_checkpoint(gpu, ck, Precision::Fp32)?;
    let data = batch(3, 2, false);
    let a = cpu.train_step(&data)?;
    let b = back.train_step(&data)?;
    let c = dev.train_step(&data)?;
    assert_eq!(
        b.loss.to_bits(),
        c.loss.to_bits(),
        "a resumed GPU run continues exactly"
    );
    expect_close("loss after resuming on the CPU", &[a.loss], &[c.loss], 1e-3);
    Ok(())
}

/// A batch holding a NaN: the step is skipped on the GPU as on the CPU (nothing changes, the
/// count goes up), and the next update uses AdamW's t = 2, not 3: the two devices still agree
/// after it, and the checkpoint records the skip.
fn non_finite_step_is_skipped(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let mut cfg = train_config(3, LossKind::L2, 1.0);
    cfg.optimizer.warmup_steps = 10; // lr_at(t) = 1e-4·t tells which t an update used
    let mut dev = GpuTrainer::new(
        gpu,
        model(false),
        ScheduleConfig::default(),
        cfg.clone(),
        Precision::Fp32,
    )?;
    let mut cpu = Trainer::new(model(false), ScheduleConfig::default(), cfg)?;
    let first = batch(3, 0, false);
    dev.train_step(&first)?;
    cpu.train_step(&first)?;
    let before = dev.checkpoint()?;
    let mut poisoned = batch(3, 1, false);
    poisoned.x[5] = f32::NAN;
    let (a, b) = (cpu.train_step(&poisoned)?, dev.train_step(&poisoned)?);
    anyhow::ensure!(a.skipped && b.skipped, "CPU {a:?}, GPU {b:?}");
    anyhow::ensure!(!b.loss.is_finite(), "GPU loss {}", b.loss);
    let after = dev.checkpoint()?;
    anyhow::ensure!(
        (after.step, after.skipped_steps) == (2, 1),
        "step {} skipped {}",
        after.step,
        after.skipped_steps
    );
    for (what, x, y) in [
        ("weights", &before.weights, &after.weights),
        ("EMA", &before.ema, &after.ema),
        ("Adam m", &before.adam_m, &after.adam_m),
        ("Adam v", &before.adam_v, &after.adam_v),
    ] {
        anyhow::ensure!(x == y, "a skipped GPU step changed the {what}");
    }
    let next = batch(3, 2, false);
    let (a, b) = (cpu.train_step(&next)?, dev.train_step(&next)?);
    anyhow::ensure!(!a.skipped && !b.skipped);
    anyhow::ensure!(
        a.lr == b.lr && (b.lr - 2e-4).abs() < 1e-12,
        "learning rates {} and {}, expected update 2's 2e-4",
        a.lr,
        b.lr
    );
    // Bounded by the learning rate as in the multi-step test: 0.2 · (1e-4 + 2e-4).
    let w = dev.checkpoint()?;
    expect_within(
        "weights after a skipped step, then an update",
        &w.weights,
        cpu.params.values(),
        6e-5,
    );
    Ok(())
}

fn sampling_matches(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let cfg = model(true);
    let net = ddpm::nn::UNet::new(cfg)?;
    let weights = net.init_params::<f32>(3);
    let schedule = Schedule::new(ScheduleConfig::default())?;
    let mut sampler = GpuSampler::new(gpu, &net, 4, false, Precision::Fp32)?;
    sampler.load_weights(weights.values())?;
    for (name, kind, steps) in [
        ("DDPM, 25 steps", SamplerKind::Ddpm, 25),
        ("DDIM eta=0, 10 steps", SamplerKind::Ddim { eta: 0.0 }, 10),
        ("DDIM eta=1, 10 steps", SamplerKind::Ddim { eta: 1.0 }, 10),
        ("Heun, 5 noise levels", SamplerKind::Heun, 5),
        ("Euler-Maruyama, 10 steps", SamplerKind::EulerMaruyama, 10),
        ("DPM-Solver++(2M), 8 steps", SamplerKind::DpmSolver2M, 8),
    ] {
        // Six images: two batches, the second one short.
        let opts =
            GenerateOptions::new(SampleOptions::new(schedule.config(), kind, steps), 6, 4, 11);
        let want = generate(&net, &weights, &schedule, &opts, None, &mut |_, _| {})?;
        let got = sampler.generate(&net, &schedule, &opts, None, &mut |_, _| {})?;
        expect_close(name, &got, &want, 1e-3);
    }
    Ok(())
}

/// The gradient of one step, on the host (divided by the loss scale fp16 multiplied in).
fn unscaled_grads(dev: &GpuTrainer, scale: f32) -> anyhow::Result<Vec<f32>> {
    let host = dev.params_to_host()?;
    Ok(host.grads().iter().map(|&g| g / scale).collect())
}

/// bf16 and fp16 training against fp32 on the same data, seed and weights: the first step's
/// whole gradient within a few percent (relative L2), and the losses of 12 steps within a band.
/// The bounds come from the formats: every stored activation carries a relative rounding error
/// of at most u (bf16 2⁻⁸, fp16 2⁻¹¹), and a gradient passes through about 40 roundings
/// (forward and backward) that add up like a random walk, √40·u ≈ 6u: 2.5 % for bf16, 0.3 % for
/// fp16. The bounds are 2× that. A dropped backward term or a kernel reading the wrong type
/// gives errors of order 1.
fn reduced_precision_tracks_fp32(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let cfg = train_config(4, LossKind::L2, 0.0);
    let run = |precision: Precision| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let mut dev = GpuTrainer::new(
            gpu.clone(),
            model(true),
            ScheduleConfig::default(),
            cfg.clone(),
            precision,
        )?;
        let mut grads = Vec::new();
        let mut losses = Vec::new();
        for step in 0..12 {
            let scale = dev.scaler.as_ref().map_or(1.0, LossScaler::scale);
            let stats = dev.train_step(&batch(4, step, true))?;
            assert!(
                !stats.skipped,
                "{precision} step {} was skipped (loss {}, norm {})",
                step + 1,
                stats.loss,
                stats.grad_norm
            );
            losses.push(stats.loss);
            if step == 0 {
                grads = unscaled_grads(&dev, scale)?;
            }
        }
        let ck = dev.checkpoint()?;
        assert!(ck.weights.iter().all(|w| w.is_finite()), "{precision}");
        Ok((grads, losses))
    };
    let (g32, l32) = run(Precision::Fp32)?;
    for (precision, tol) in [(Precision::Bf16, 0.05), (Precision::Fp16, 0.006)] {
        let (gp, lp) = run(precision)?;
        expect_rel_l2(&format!("{precision} first-step gradient"), &gp, &g32, tol);
        // The losses drift apart as the weights do, but stay within the same band.
        expect_rel_l2(&format!("{precision} losses of 12 steps"), &lp, &l32, tol);
    }
    Ok(())
}

/// fp16 at the largest loss scale: the scaled output gradient overflows fp16 (above 65504), so
/// the first steps are skipped as overflows (not divergence), the scale halves each time, and
/// training goes on with finite weights once it fits.
fn fp16_overflow_backs_off(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let cfg = train_config(4, LossKind::L2, 1.0);
    let mut dev = GpuTrainer::new(
        gpu,
        model(false),
        ScheduleConfig::default(),
        cfg,
        Precision::Fp16,
    )?;
    dev.scaler = Some(LossScaler::with(LossScaler::MAX, 2000));
    let mut overflows = 0;
    let mut good = 0;
    for step in 0..40 {
        let before = dev.scaler.as_ref().unwrap().scale();
        let s = dev.train_step(&batch(4, step, false))?;
        let after = dev.scaler.as_ref().unwrap().scale();
        if s.skipped {
            assert!(
                s.overflow,
                "step {}: a skip that is not an overflow",
                step + 1
            );
            assert!(s.loss.is_finite());
            assert_eq!(after, before / 2.0, "the scale halves on overflow");
            assert_eq!(good, 0, "an overflow after good steps at a smaller scale");
            overflows += 1;
        } else {
            assert!(!s.overflow);
            assert_eq!(after, before, "no growth within 2000 steps");
            good += 1;
            if good == 3 {
                break;
            }
        }
    }
    assert!(overflows > 0, "2²⁴ should overflow fp16 on this model");
    assert_eq!(
        good, 3,
        "training never resumed after {overflows} overflows"
    );
    assert_eq!(dev.skipped, overflows, "overflows count as skipped steps");
    let ck = dev.checkpoint()?;
    assert!(ck.weights.iter().all(|w| w.is_finite()));
    assert!(ck.ema.iter().all(|w| w.is_finite()));
    Ok(())
}

/// One forward pass of the whole UNet with activations stored as `precision`: the output
/// (B, C, H, W) on the host.
fn gpu_forward(
    gpu: &Rc<Gpu>,
    net: &ddpm::nn::UNet,
    weights: &ddpm::params::ParamArena<f32>,
    precision: Precision,
    x: &[f32],
    t: &[f32],
    labels: Option<&[u32]>,
) -> anyhow::Result<Vec<f32>> {
    use ddpm::cuda::backend::{DevBuf, DeviceParams, GpuBackend, Sizing};
    let b = t.len();
    let plan = net.plan_step_stored::<f32>(b, false, precision.bytes())?;
    let mut be = GpuBackend::new(gpu.clone(), Sizing::from_plan(&plan, precision), precision)?;
    let params = DeviceParams::upload(gpu, weights, precision)?;
    let x_d = gpu.alloc(x.len() * precision.bytes(), "x")?;
    gpu.upload_as(x_d.ptr(), precision, x, "x")?;
    let t_d = gpu.alloc(4 * b, "t")?;
    gpu.upload(t_d.ptr(), t, "t")?;
    let (y, _) = net.forward_on(
        &mut be,
        &params,
        &DevBuf::view(x_d.ptr(), x.len()),
        &DevBuf::view(t_d.ptr(), b),
        labels,
        None,
        false,
    )?;
    be.finish()?;
    let mut out = vec![0.0f32; y.len];
    gpu.download_as(&mut out, y.ptr, precision, "output")?;
    Ok(out)
}

/// The model in bf16/fp16 against the CPU's fp32, on the same weights and inputs.
///
/// One forward pass: each stored activation is rounded (relative error ≤ u, bf16 2⁻⁸, fp16
/// 2⁻¹¹) about 20 times along the way, adding up like a random walk to √20·u ≈ 4.5u: 1.7 %
/// (bf16) and 0.2 % (fp16) relative L2; the bounds are 2× that.
///
/// Ten DDIM steps from the same noise (no x̂₀ clipping, so the map is smooth and the
/// comparison is not decided by which side of the clip a value falls): each evaluation adds
/// the forward's error, and the deterministic sampler carries it to the end, at most 10× the
/// one-pass error; the bounds allow a quarter of that worst case on top of the one-pass bound.
/// A kernel reading or writing the wrong type is off by order 1.
fn reduced_precision_sampling(g: &Gpu) -> anyhow::Result<()> {
    let gpu = open(g);
    let net = ddpm::nn::UNet::new(model(true))?;
    let weights = net.init_params::<f32>(3);
    let schedule = Schedule::new(ScheduleConfig::default())?;
    let b = 4;
    let x: Vec<f32> = Philox::new(8).normal_vec(b * 3 * 8 * 8, 1.0);
    let t = [999.0f32, 500.0, 20.0, 0.0];
    let labels = [0u32, 1, 2, 1];
    let want = net.predict(&weights, &x, &t, Some(&labels))?;
    for (precision, tol) in [(Precision::Bf16, 0.035), (Precision::Fp16, 0.0045)] {
        let got = gpu_forward(&gpu, &net, &weights, precision, &x, &t, Some(&labels))?;
        expect_rel_l2(&format!("{precision} forward"), &got, &want, tol);

        let mut sampler = GpuSampler::new(gpu.clone(), &net, b, false, precision)?;
        sampler.load_weights(weights.values())?;
        let mut sample = SampleOptions::new(schedule.config(), SamplerKind::Ddim { eta: 0.0 }, 10);
        sample.clip = None;
        let opts = GenerateOptions {
            labels: Some(labels.to_vec()),
            ..GenerateOptions::new(sample, b, b, 5)
        };
        let want = generate(&net, &weights, &schedule, &opts, None, &mut |_, _| {})?;
        let got = sampler.generate(&net, &schedule, &opts, None, &mut |_, _| {})?;
        expect_rel_l2(&format!("{precision} DDIM-10"), &got, &want, 3.5 * tol);
    }
    Ok(())
}
