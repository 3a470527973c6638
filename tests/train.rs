//! Proof that training works end to end on the CPU: a tiny model learns a two-mode image
//! distribution (the loss falls and DDPM/DDIM samples land on the modes), and a resumed run
//! repeats a straight run bit for bit.

use std::path::PathBuf;

use ddpm::data::{make_batch, Dataset};
use ddpm::device::Device;
use ddpm::diffusion::sampler::{SampleOptions, SamplerKind};
use ddpm::diffusion::ScheduleConfig;
use ddpm::nn::{DownBlockType::*, UNetConfig, UpBlockType::*};
use ddpm::params::ParamArena;
use ddpm::sample::{generate, GenerateOptions};
use ddpm::train::{self, RunOptions, Start, TrainConfig, Trainer};

const SIZE: usize = 8;

/// The two modes: left half white / right half black, and top half white / bottom half black,
/// as values in [-1, 1], (1, 8, 8) each.
fn modes() -> [Vec<f32>; 2] {
    let img = |white: fn(usize, usize) -> bool| {
        (0..SIZE * SIZE)
            .map(|i| if white(i / SIZE, i % SIZE) { 1.0 } else { -1.0 })
            .collect::<Vec<f32>>()
    };
    [img(|_, x| x < SIZE / 2), img(|y, _| y < SIZE / 2)]
}

fn two_mode_dataset() -> Dataset {
    let mut pixels = Vec::new();
    for k in 0..64 {
        pixels.extend(
            modes()[k % 2]
                .iter()
                .map(|&v| if v > 0.0 { 255u8 } else { 0 }),
        );
    }
    Dataset::new("two-modes", 1, SIZE, pixels, None, Vec::new()).unwrap()
}

fn small_model() -> UNetConfig {
    UNetConfig {
        sample_size: SIZE,
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![16, 32],
        layers_per_block: 1,
        down_block_types: vec![DownBlock2D, AttnDownBlock2D],
        up_block_types: vec![AttnUpBlock2D, UpBlock2D],
        norm_num_groups: 8,
        attention_head_dim: None,
        ..UNetConfig::default()
    }
}

/// Root-mean-square distance of each image to its nearest mode, and which mode that is.
fn nearest_mode(images: &[f32]) -> Vec<(f32, usize)> {
    let m = modes();
    images
        .chunks_exact(SIZE * SIZE)
        .map(|img| {
            let d = |mode: &[f32]| {
                let s: f32 = img.iter().zip(mode).map(|(a, b)| (a - b).powi(2)).sum();
                (s / img.len() as f32).sqrt()
            };
            let (d0, d1) = (d(&m[0]), d(&m[1]));
            if d0 <= d1 {
                (d0, 0)
            } else {
                (d1, 1)
            }
        })
        .collect()
}

/// Fraction of samples within RMS distance 0.2 of a mode (a pixel is ±1, so 0.2 is a tenth of
/// the contrast), and the share of the rarer mode among them.
fn mode_stats(images: &[f32]) -> (f64, f64) {
    let near: Vec<usize> = nearest_mode(images)
        .into_iter()
        .filter(|&(d, _)| d < 0.2)
        .map(|(_, k)| k)
        .collect();
    let n = images.len() / (SIZE * SIZE);
    let ones = near.iter().filter(|&&k| k == 1).count();
    let rarer = ones.min(near.len() - ones) as f64 / near.len().max(1) as f64;
    (near.len() as f64 / n as f64, rarer)
}

fn draw(trainer: &Trainer, params: &ParamArena<f32>, kind: SamplerKind, steps: usize) -> Vec<f32> {
    let opts = GenerateOptions::new(
        SampleOptions::new(trainer.schedule.config(), kind, steps),
        32,
        32,
        11,
    );
    generate(
        &trainer.net,
        params,
        &trainer.schedule,
        &opts,
        None,
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn tiny_model_learns_two_modes_and_samples_land_on_them() {
    let mut cfg = TrainConfig {
        data: "two-modes (in memory)".into(),
        image_size: SIZE,
        channels: 1,
        batch_size: 16,
        steps: 800,
        seed: 5,
        ..TrainConfig::default()
    };
    cfg.optimizer.lr = 2e-3;
    cfg.optimizer.warmup_steps = 20;
    let mut trainer = Trainer::new(small_model(), ScheduleConfig::default(), cfg).unwrap();
    let data = two_mode_dataset();

    let untrained = trainer.params.clone();
    let mut losses = Vec::new();
    for step in 0..800 {
        let batch = make_batch(&data, 5, step, 16, false);
        losses.push(trainer.train_step(&batch).unwrap().loss as f64);
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..20]), mean(&losses[750..]));
    println!("loss: first 20 steps {first:.4}, last 50 steps {last:.4}");
    assert!(
        last < first / 10.0,
        "the loss should fall at least 10×: {first:.4} → {last:.4}"
    );

    let trained = trainer.params.clone();
    for (name, kind, steps) in [
        ("DDPM, 1000 steps", SamplerKind::Ddpm, 1000),
        ("DDIM η=0, 50 steps", SamplerKind::Ddim { eta: 0.0 }, 50),
    ] {
        let imgs = draw(&trainer, &trained, kind, steps);
        let worst = nearest_mode(&imgs).iter().map(|p| p.0).fold(0.0, f32::max);
        println!("{name}: largest distance to a mode {worst:.3}");
        let (on_mode, rarer) = mode_stats(&imgs);
        println!(
            "{name}: {:.0}% on a mode, rarer mode {:.0}%",
            on_mode * 100.0,
            rarer * 100.0
        );
        assert!(
            on_mode >= 0.9,
            "{name}: only {on_mode:.2} of samples on a mode"
        );
        assert!(rarer >= 0.2, "{name}: one mode is missing ({rarer:.2})");
        let (untrained_on_mode, _) = mode_stats(&draw(&trainer, &untrained, kind, steps));
        println!(
            "{name}, untrained: {:.0}% on a mode",
            untrained_on_mode * 100.0
        );
        assert!(
            untrained_on_mode < 0.1,
            "the statistic must reject an untrained model"
        );
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn resumed_run_repeats_the_straight_run_bit_for_bit() {
    let model = UNetConfig {
        in_channels: 3,
        out_channels: 3,
        dropout: 0.1,
        ..small_model()
    };
    let train = TrainConfig {
        data: "synthetic".into(),
        image_size: SIZE,
        channels: 3,
        batch_size: 4,
        steps: 6,
        seed: 3,
        hflip: true,
        sample_every: 0,
        checkpoint_every: 3,
        log_every: 1,
        sample_count: 4,
        sample_steps: 2,
        ..TrainConfig::default()
    };
    let fresh = |steps: u64, out: &PathBuf| {
        train::run(RunOptions {
            precision: ddpm::precision::Precision::Fp32,
            device: Device::Cpu,
            start: Start::Fresh {
                model: model.clone(),
                schedule: ScheduleConfig::default(),
                train: TrainConfig {
                    steps,
                    ..train.clone()
                },
            },
            out: out.clone(),
            verbose: false,
        })
        .unwrap()
    };
    let straight_dir = temp_dir("straight");
    let straight = fresh(6, &straight_dir);

    let split_dir = temp_dir("split");
    let first = fresh(3, &split_dir);
    let second = train::run(RunOptions {
        precision: ddpm::precision::Precision::Fp32,
        device: Device::Cpu,
        start: Start::Resume {
            checkpoint: split_dir.join("checkpoints/latest.safetensors"),
            steps: Some(6),
            keep_checkpoints: None,
            max_nonfinite_steps: None,
        },
        out: split_dir.clone(),
        verbose: false,
    })
    .unwrap();

    let joined: Vec<(u64, f32)> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(joined.len(), 6);
    for ((s1, a), (s2, b)) in straight.losses.iter().zip(&joined) {
        assert_eq!(s1, s2);
        assert_eq!(a.to_bits(), b.to_bits(), "step {s1}: {a} vs {b}");
    }
    let a = ddpm::train::Checkpoint::load(&straight.checkpoint).unwrap();
    let b = ddpm::train::Checkpoint::load(&second.checkpoint).unwrap();
    assert_eq!(a.step, 6);
    assert!(
        a.weights == b.weights && a.ema == b.ema,
        "final weights and EMA agree"
    );
    assert!(
        a.adam_m == b.adam_m && a.adam_v == b.adam_v,
        "optimizer moments agree"
    );
    // The CSV log of the split run has one row per step, like the straight one.
    let rows = |d: &PathBuf| {
        std::fs::read_to_string(d.join("log.csv"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(rows(&split_dir), rows(&straight_dir));
    let _ = std::fs::remove_dir_all(straight_dir);
    let _ = std::fs::remove_dir_all(split_dir);
}

#[test]
fn class_conditional_training_takes_its_classes_from_the_data() {
    let out = temp_dir("class-cond");
    let summary = train::run(RunOptions {
        precision: ddpm::precision::Precision::Fp32,
        device: Device::Cpu,
        start: Start::Fresh {
            model: UNetConfig {
                in_channels: 3,
                out_channels: 3,
                ..small_model()
            },
            schedule: ScheduleConfig::default(),
            train: TrainConfig {
                data: "synthetic".into(),
                image_size: SIZE,
                channels: 3,
                class_conditional: true,
                batch_size: 4,
                steps: 2,
                sample_count: 4,
                sample_steps: 2,
                ..TrainConfig::default()
            },
        },
        out: out.clone(),
        verbose: false,
    })
    .unwrap();
    let ck = ddpm::train::Checkpoint::load(&summary.checkpoint).unwrap();
    assert_eq!(
        ck.model.num_class_embeds,
        Some(4),
        "the synthetic set has four shapes"
    );
    assert!(summary.losses.iter().all(|(_, l)| l.is_finite()));
    let _ = std::fs::remove_dir_all(out);
}

/// A step whose loss is not finite changes nothing but the step count, and AdamW's update
/// number t (bias corrections, warmup) counts only the steps that updated; a run checkpointed
/// right after a skipped step and resumed ends exactly where the straight run does.
#[test]
fn a_non_finite_step_is_skipped_counted_and_survives_a_resume() {
    let mut train_cfg = TrainConfig {
        image_size: SIZE,
        channels: 1,
        batch_size: 4,
        steps: 6,
        seed: 5,
        ..TrainConfig::default()
    };
    train_cfg.optimizer.warmup_steps = 10; // lr = lr_max · t / 10 shows which t an update used
    let lr_max = train_cfg.optimizer.lr;
    let ds = two_mode_dataset();
    let batch = |step: u64| make_batch(&ds, 5, step, 4, false);
    let run = |t: &mut Trainer, from: u64, to: u64| -> Vec<ddpm::train::StepStats> {
        (from..to)
            .map(|s| {
                let mut b = batch(s);
                if s == 2 {
                    b.x[3] = f32::NAN; // step 3 is poisoned
                }
                let stats = t.train_step(&b).unwrap();
                assert_eq!(stats.skipped, s == 2, "step {}", s + 1);
                assert_eq!(stats.loss.is_finite(), s != 2, "step {}", s + 1);
                stats
            })
            .collect()
    };
    let fresh =
        || Trainer::new(small_model(), ScheduleConfig::default(), train_cfg.clone()).unwrap();

    let mut straight = fresh();
    run(&mut straight, 0, 2);
    let before = straight.checkpoint();
    run(&mut straight, 2, 3);
    let after = straight.checkpoint();
    assert_eq!((after.step, after.skipped_steps), (3, 1));
    assert_eq!(
        straight.optimizer.step(),
        2,
        "AdamW made two updates in three steps"
    );
    for (what, a, b) in [
        ("weights", &before.weights, &after.weights),
        ("ema", &before.ema, &after.ema),
        ("adam.m", &before.adam_m, &after.adam_m),
        ("adam.v", &before.adam_v, &after.adam_v),
    ] {
        assert!(a == b, "a skipped step changed the {what}");
    }
    let rest = run(&mut straight, 3, 6);
    // Steps 4, 5, 6 are updates 3, 4, 5.
    for (k, stats) in rest.iter().enumerate() {
        let t = 3.0 + k as f64;
        assert!((stats.lr - lr_max * t / 10.0).abs() < 1e-12, "{stats:?}");
    }

    // Checkpointed right after the skipped step, saved and loaded, then resumed.
    let dir = temp_dir("skip-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ck.safetensors");
    after.save(&path).unwrap();
    let loaded = ddpm::train::Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.skipped_steps, 1);
    let mut resumed = Trainer::from_checkpoint(loaded).unwrap();
    run(&mut resumed, 3, 6);
    assert_eq!(resumed.skipped, 1);
    assert!(
        resumed.params.values() == straight.params.values()
            && resumed.ema.weights() == straight.ema.weights(),
        "resuming after a skipped step must continue bit for bit"
    );
    let _ = std::fs::remove_dir_all(dir);
}
