//! Fine-tuning (`ddpm train --init-from`) and raw sample output (`--save-raw`, unclamped).
//!
//! The source model is the 8×8 class-conditional checkpoint of `tests/fixtures/diffusers/export`
//! (its EMA differs from its raw weights) and its `ddpm export`, the directory diffusers itself
//! ran for the goldens of `tests/diffusers.rs`.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;
use common::{ddpm, fails_with, ok};
use ddpm::cli::{Cli, Command};
use ddpm::diffusers;
use ddpm::train::{Checkpoint, Start};
use serde_json::Value;

fn fixture_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers/export/checkpoint.safetensors")
}

fn unconditional_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/models/cifar10-like")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-finetune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder of 8×8 RGB images in `classes` sub-folders (the class labels), `per_class` each.
fn image_folder(dir: &Path, classes: usize, per_class: usize) -> PathBuf {
    let root = dir.join("images");
    for k in 0..classes {
        let sub = root.join(format!("class{k}"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..per_class {
            let v = common::to_f32(&common::uniform(3 * 8 * 8, (k * 100 + i) as u64));
            ddpm::imaging::save_png(&sub.join(format!("{i}.png")), &v, 3, 8, 8).unwrap();
        }
    }
    root
}

/// `ddpm export` of `from` (EMA weights) as a pipeline at `out`.
fn export(from: &Path, out: &Path) {
    ok(&ddpm(&[
        "export",
        "--checkpoint",
        s(from),
        "--out",
        s(out),
        "-q",
    ]));
}

/// What `ddpm train ARGS` would start, without running it.
fn start_of(args: &[&str]) -> anyhow::Result<Start> {
    let mut argv = vec!["ddpm", "train", "-q"];
    argv.extend_from_slice(args);
    let Command::Train(a) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!("a train command")
    };
    a.start()
}

fn init_state(args: &[&str]) -> Checkpoint {
    match start_of(args).unwrap() {
        Start::Init(ck) => *ck,
        _ => panic!("--init-from did not start a fine-tuning run"),
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `got` equals `want` bit for bit; on failure, how many values differ and the first.
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} values differ, the first at {i}: {} vs {}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn init_from_starts_at_the_sources_weights_and_ema_bit_for_bit() {
    let dir = temp_dir("exact");
    let data = image_folder(&dir, 2, 4);
    let data_arg = format!("folder:{}", data.display());
    let source = Checkpoint::load(&fixture_checkpoint()).unwrap();
    assert_ne!(source.ema, source.weights);
    let pipeline = dir.join("pipeline");
    export(&fixture_checkpoint(), &pipeline);
    let exported = diffusers::load(&pipeline).unwrap();
    assert_same(&exported.weights, &source.ema, "ddpm export writes the EMA");

    // Step 0 of a fine-tune of the export: its weights, the EMA a copy of them, Adam at zero,
    // the model and schedule the source's, and where it came from recorded.
    let ck = init_state(&["--init-from", s(&pipeline), "--data", &data_arg]);
    assert_same(&ck.weights, &exported.weights, "step-0 weights");
    assert_same(&ck.ema, &exported.weights, "step-0 EMA");
    assert_eq!(ck.step, 0);
    assert!(ck.adam_m.iter().chain(&ck.adam_v).all(|&v| v == 0.0));
    assert_eq!(ck.model.block_out_channels, source.model.block_out_channels);
    assert_eq!(ck.model.num_class_embeds, source.model.num_class_embeds);
    assert_eq!(ck.schedule, source.schedule);
    assert!(ck.train.class_conditional, "a class-conditional source");
    let init = ck.train.init_from.as_ref().unwrap();
    assert_eq!(init.source, pipeline.display().to_string());
    assert!(!init.ema_from_source);
    assert_eq!(init.kind, "diffusers pipeline");

    // Step 0 of a fine-tune of the ddpm checkpoint itself: its raw weights and its own EMA.
    let ck = init_state(&["--init-from", s(&fixture_checkpoint()), "--data", &data_arg]);
    assert_same(&ck.weights, &source.weights, "step-0 weights");
    assert_same(&ck.ema, &source.ema, "step-0 EMA: the source's");
    assert!(ck.train.init_from.as_ref().unwrap().ema_from_source);

    // Through the binary: one step with the EMA left alone at odd steps (--ema-every 2), so the
    // step-1 EMA is still exactly the source's, and the weights one warmup step (lr/100) away.
    for (tag, from, want_ema, want_weights) in [
        ("pipe", &pipeline, &exported.weights, &exported.weights),
        ("ckpt", &fixture_checkpoint(), &source.ema, &source.weights),
    ] {
        let run = dir.join(format!("run-{tag}"));
        let out = ddpm(&[
            "train",
            "--init-from",
            s(from),
            "--data",
            &data_arg,
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--ema-every",
            "2",
            "--sample-every",
            "0",
            "--out",
            s(&run),
            "--device",
            "cpu",
        ]);
        ok(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("fine-tuning 3x8x8") && err.contains(&format!("from {}", from.display())),
            "{err}"
        );
        let after = Checkpoint::load(&run.join("checkpoints/step_0000001.safetensors")).unwrap();
        assert_same(&after.ema, want_ema, &format!("{tag}: the EMA at step 1"));
        let moved = max_diff(&after.weights, want_weights);
        assert!(
            moved > 0.0 && moved <= 1.01e-5,
            "{tag}: one step at lr 1e-5 moved the weights by up to {moved}"
        );
        let cfg = read_json(&run.join("config.json"));
        assert_eq!(
            cfg["train"]["init_from"]["source"],
            from.display().to_string(),
            "{tag}: config.json records the start"
        );
        assert_eq!(after.train.init_from, Some(ck_init(from, tag)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a run started from `from` records (see the test above).
fn ck_init(from: &Path, tag: &str) -> ddpm::train::InitFrom {
    let (weights, kind, ema) = if tag == "pipe" {
        (
            from.join("unet/diffusion_pytorch_model.safetensors"),
            "diffusers pipeline".to_string(),
            false,
        )
    } else {
        (
            from.to_path_buf(),
            "ddpm checkpoint (step 4)".to_string(),
            true,
        )
    };
    ddpm::train::InitFrom {
        source: from.display().to_string(),
        weights: weights.canonicalize().unwrap().display().to_string(),
        kind,
        ema_from_source: ema,
    }
}

#[test]
fn a_fine_tune_on_a_folder_exports_and_loads_like_its_source() {
    let dir = temp_dir("folder");
    let data = image_folder(&dir, 2, 4);
    let data_arg = format!("folder:{}", data.display());
    let run = dir.join("run");
    let train = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            &data_arg,
            "--steps",
            steps,
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--warmup",
            "1",
            "--ema-decay",
            "0.5",
            "--sample-every",
            "2",
            "--out",
            s(&run),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ddpm(&args)
    };
    ok(&train("3", &["--init-from", s(&fixture_checkpoint())]));
    for f in [
        "config.json",
        "log.csv",
        "loss.png",
        "samples/step_0000003.png",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Resuming the fine-tune keeps its record and says where it started.
    let out = ddpm(&[
        "train",
        "--resume",
        s(&run),
        "--steps",
        "4",
        "--device",
        "cpu",
    ]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fine-tuned from"), "{err}");
    let cfg = read_json(&run.join("config.json"));
    assert!(cfg["train"]["init_from"]["source"].is_string(), "{cfg}");
    let tuned = Checkpoint::load(&run.join("checkpoints/step_0000004.safetensors")).unwrap();
    let source = Checkpoint::load(&fixture_checkpoint()).unwrap();
    assert!(
        max_diff(&tuned.ema, &source.ema) > 1e-3,
        "fine-tuning changed nothing"
    );

    // The result exports to what the source exported to (the directory diffusers ran for the
    // goldens of tests/diffusers.rs), but for the weights, and loads back exactly.
    let (mine, theirs) = (dir.join("tuned-export"), dir.join("source-export"));
    export(&run, &mine);
    export(&fixture_checkpoint(), &theirs);
    for f in [
        "model_index.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
    ] {
        assert_eq!(read_json(&mine.join(f)), read_json(&theirs.join(f)), "{f}");
    }
    let header = |d: &Path| {
        let bytes = std::fs::read(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut t: Vec<(String, Vec<usize>, String)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), format!("{:?}", v.dtype())))
            .collect();
        t.sort();
        t
    };
    assert_eq!(header(&mine), header(&theirs));
    let loaded = diffusers::load(&mine).unwrap();
    assert_same(&loaded.weights, &tuned.ema, "the export's weights");
    // And it samples.
    let images = dir.join("samples");
    ok(&ddpm(&[
        "sample",
        "--checkpoint",
        s(&mine),
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--num",
        "2",
        "--out",
        s(&images),
        "--device",
        "cpu",
        "-q",
    ]));
    assert!(images.join("grid.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_from_that_does_not_fit_the_flags_or_the_data_is_a_usage_error() {
    let dir = temp_dir("mismatch");
    let data = image_folder(&dir, 2, 2);
    let data_arg = format!("folder:{}", data.display());
    let unlabelled = format!("folder:{}", data.join("class0").display());
    let pipeline = dir.join("pipeline");
    export(&fixture_checkpoint(), &pipeline);
    let plain = unconditional_fixture();
    // An MNIST images file is grey: the check comes before it is read.
    let mnist = dir.join("train-images-idx3-ubyte");
    std::fs::write(&mnist, b"").unwrap();
    let mnist_arg = format!("mnist:{}", mnist.display());
    let out_dir = dir.join("out");
    let resume_dir = dir.join("elsewhere");
    let checkpoint = fixture_checkpoint();
    let (p, c, u) = (s(&pipeline), s(&checkpoint), s(&plain));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec![p, "--image-size", "16"], &["--image-size 16", "8×8"]),
        (vec![p, "--channels", "1"], &["--channels 1", "RGB"]),
        (
            vec![c, "--model", "tiny"],
            &["--model tiny", "block_out_channels"],
        ),
        (
            vec![p, "--beta-schedule", "cosine"],
            &["--beta-schedule cosine", "linear"],
        ),
        (vec![c, "--timesteps", "500"], &["--timesteps 500", "1000"]),
        (
            vec![p, "--prediction", "v_prediction"],
            &["--prediction v_prediction", "epsilon"],
        ),
        (vec![u, "--class-cond"], &["--class-cond", "unconditional"]),
        (
            vec![u, "--label-dropout", "0.1"],
            &["--label-dropout 0.1", "unconditional"],
        ),
        (
            vec![p, "--data", &mnist_arg],
            &["--data mnist:", "grey", "--channels 3"],
        ),
        (
            vec![p, "--data", &unlabelled],
            &["class-conditional", "no labels"],
        ),
        (
            vec![p, "--resume", s(&resume_dir)],
            &["--resume", "one of them"],
        ),
        (vec!["no-such-model"], &["no such file or directory"]),
    ];
    for (args, needles) in cases {
        let mut argv = vec!["train", "--out", s(&out_dir), "--steps", "1", "--init-from"];
        argv.extend_from_slice(&args);
        if !args.contains(&"--data") && !args.contains(&"--resume") {
            argv.extend_from_slice(&["--data", &data_arg]);
        }
        let out = ddpm(&argv);
        for needle in needles.iter().chain(&["--init-from"]) {
            fails_with(&out, 2, needle);
        }
        assert!(!out_dir.exists(), "{args:?} left {}", out_dir.display());
    }
    // Flags that agree with the source are no contradiction, and a bare UNet2DModel directory
    // (no scheduler config) takes its schedule from the flags.
    let ck = init_state(&[
        "--init-from",
        p,
        "--data",
        &data_arg,
        "--model",
        s(&write_model(&dir)),
        "--timesteps",
        "1000",
        "--beta-schedule",
        "linear",
        "--image-size",
        "8",
        "--channels",
        "3",
    ]);
    assert_eq!(ck.model.sample_size, 8);
    let ck = init_state(&[
        "--init-from",
        u,
        "--timesteps",
        "50",
        "--beta-schedule",
        "cosine",
    ]);
    assert_eq!(ck.schedule.num_train_timesteps, 50);
    // A directory that holds no model is named, and is not a usage error.
    let out = ddpm(&["train", "--init-from", s(&data), "--out", s(&out_dir)]);
    fails_with(&out, 1, "neither a ddpm run directory");
    assert!(!out_dir.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fixture's model as a `--model` JSON file.
fn write_model(dir: &Path) -> PathBuf {
    let path = dir.join("model.json");
    let model = Checkpoint::load(&fixture_checkpoint()).unwrap().model;
    std::fs::write(&path, serde_json::to_string(&model).unwrap()).unwrap();
    path
}

fn raw_tensor(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("sample").unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

/// The PNG at `path` is the (C, H, W) image `raw` clamped to [-1, 1], pixel for pixel.
fn assert_png_is_clamped(path: &Path, raw: &[f32]) {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (8, 8));
    for (i, px) in img.pixels().enumerate() {
        for ch in 0..3 {
            let want = ddpm::imaging::to_u8(raw[ch * 64 + i].clamp(-1.0, 1.0));
            assert_eq!(px[ch], want, "{} pixel {i} channel {ch}", path.display());
        }
    }
}

#[test]
fn save_raw_writes_the_samplers_final_state_unclamped() {
    let dir = temp_dir("raw");
    // The fixture has seen four training steps: weights all but random, and without clipping
    // x̂₀ its samples leave [-1, 1] far behind.
    let ck = s(&fixture_checkpoint()).to_string();
    let sample = |name: &str, clip: bool| {
        let out = dir.join(name);
        let raw = dir.join(format!("{name}.safetensors"));
        let mut args = vec![
            "sample",
            "--checkpoint",
            &ck,
            "--sampler",
            "ddpm",
            "--steps",
            "10",
            "--num",
            "3",
            "--seed",
            "1",
            "--out",
            s(&out),
            "--save-raw",
            s(&raw),
            "--device",
            "cpu",
            "-q",
        ];
        if !clip {
            args.push("--no-clip");
        }
        ok(&ddpm(&args));
        let (shape, v) = raw_tensor(&raw);
        assert_eq!(shape, [3, 3, 8, 8]);
        for i in 0..3 {
            let img = &v[i * 192..(i + 1) * 192];
            assert_png_is_clamped(&out.join(format!("sample_{i:05}.png")), img);
        }
        v
    };
    let unclipped = sample("unclipped", false);
    let worst = unclipped.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        worst > 2.0,
        "largest |value| {worst}: not the unclamped state"
    );
    assert!(unclipped.iter().all(|v| v.is_finite()));
    // With x̂₀ clipped (the schedule's clip_sample) the last DDPM step lands in [-1, 1] anyway.
    let clipped = sample("clipped", true);
    // (to rounding: its last step is 1 · x̂₀ + 0 · xₜ in floating point).
    assert!(clipped.iter().all(|v| v.abs() <= 1.0 + 1e-5));

    // A pipeline whose scheduler has `clip_sample: false`, as a user comparing numbers with
    // diffusers would run it: no flag needed.
    let pipeline = dir.join("pipeline");
    export(&fixture_checkpoint(), &pipeline);
    let config = pipeline.join("scheduler/scheduler_config.json");
    let mut v = read_json(&config);
    v["clip_sample"] = Value::Bool(false);
    std::fs::write(&config, v.to_string()).unwrap();
    let (out, raw) = (
        dir.join("from-pipeline"),
        dir.join("from-pipeline.safetensors"),
    );
    ok(&ddpm(&[
        "sample",
        "--checkpoint",
        s(&pipeline),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--num",
        "2",
        "--out",
        s(&out),
        "--save-raw",
        s(&raw),
        "--device",
        "cpu",
        "-q",
    ]));
    let (_, v) = raw_tensor(&raw);
    assert!(
        v.iter().any(|x| x.abs() > 2.0),
        "clip_sample: false, yet clamped"
    );
    assert_png_is_clamped(&out.join("sample_00001.png"), &v[192..]);

    // interpolate's frames the same way.
    let frames = dir.join("frames");
    let raw = dir.join("frames.safetensors");
    ok(&ddpm(&[
        "interpolate",
        "--checkpoint",
        &ck,
        "--seeds",
        "1",
        "2",
        "--frames",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--no-clip",
        "--class",
        "0",
        "--out",
        s(&frames),
        "--save-raw",
        s(&raw),
        "--device",
        "cpu",
        "-q",
    ]));
    let (_, v) = raw_tensor(&raw);
    assert!(
        v.iter().any(|x| x.abs() > 1.0),
        "interpolate --save-raw is clamped"
    );
    for k in 0..3 {
        assert_png_is_clamped(
            &frames.join(format!("frame_{k:02}.png")),
            &v[k * 192..(k + 1) * 192],
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
