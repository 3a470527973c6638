//! `ddpm invert` and `ddpm interpolate` through the binary, on a small model trained here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{ddpm, fails_with, ok};

/// The shared small model without dropout, so the inversion tests see a deterministic network.
fn small_model() -> String {
    let m = common::SMALL_MODEL.replace(r#""dropout": 0.1"#, r#""dropout": 0.0"#);
    assert!(m.contains(r#""dropout": 0.0"#), "{m}");
    m
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-invert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn raw_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const ITEM: usize = 3 * 8 * 8;
const TRAIN_STEPS: &str = "1000";

/// The run directory of a model trained once for all tests (on the built-in shapes, 8×8).
fn model() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("model");
        let json = dir.join("model.json");
        std::fs::write(&json, small_model()).unwrap();
        let run = dir.join("run");
        ok(&ddpm(&[
            "train",
            "--model",
            s(&json),
            "--steps",
            TRAIN_STEPS,
            "--batch-size",
            "8",
            "--sample-every",
            "100000",
            "--checkpoint-every",
            "100000",
            "--device",
            "cpu",
            "--out",
            s(&run),
            "-q",
        ]));
        run
    })
}

/// Training images 0..n of the built-in set, written as PNGs into `dir`; returns their paths
/// and values in [-1, 1].
fn shapes(dir: &Path, n: usize) -> (Vec<PathBuf>, Vec<f32>) {
    std::fs::create_dir_all(dir).unwrap();
    let ds = ddpm::data::synthetic::generate(8, 3).unwrap();
    let mut paths = Vec::new();
    let mut values = Vec::new();
    for i in 0..n {
        let img: Vec<f32> = ds
            .image(i)
            .iter()
            .map(|&v| f32::from(v) / 127.5 - 1.0)
            .collect();
        let p = dir.join(format!("shape_{i}.png"));
        ddpm::imaging::save_png(&p, &img, 3, 8, 8).unwrap();
        paths.push(p);
        values.extend(img);
    }
    (paths, values)
}

fn mean_mse(a: &[f32], b: &[f32]) -> f64 {
    ddpm::latent::mse(a, b)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Reconstruction MSE (in [-1, 1] units) that a 50-step inversion must beat. Observed on this
/// model: see the test's output (about 0.002–0.006); a random start or a 2-step inversion gives
/// 0.1 or more.
const MSE_50: f64 = 0.02;

#[test]
fn inversion_reconstructs_training_images_and_its_noise_decodes_with_sample() {
    let run = model();
    let dir = temp_dir("recon");
    let (files, inputs) = shapes(&dir.join("in"), 4);
    let out = dir.join("inv");
    let raw = dir.join("recon.safetensors");
    let mut args = vec![
        "invert",
        "--checkpoint",
        s(run),
        "--steps",
        "50",
        "--out",
        s(&out),
        "--save-raw",
        s(&raw),
        "--device",
        "cpu",
        "-q",
        "--images",
    ];
    args.extend(files.iter().map(|f| s(f)));
    let stdout = ok(&ddpm(&args));
    for f in [
        "noise.safetensors",
        "reconstruction_00000.png",
        "reconstruction_00003.png",
        "comparison.png",
        "report.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    assert!(
        stdout.contains("shape_0.png") && stdout.contains("mean"),
        "{stdout}"
    );
    let rep = report(&out);
    let mse50 = rep["mean_mse"].as_f64().unwrap();
    let per: Vec<f64> = rep["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mse"].as_f64().unwrap())
        .collect();
    assert_eq!(per.len(), 4);
    for r in rep["images"].as_array().unwrap() {
        let (m, p) = (r["mse"].as_f64().unwrap(), r["psnr_db"].as_f64().unwrap());
        assert!((p - 10.0 * (4.0 / m).log10()).abs() < 1e-9, "{r}");
    }

    // The reported numbers are those of the written reconstructions.
    let (shape, recon) = raw_tensor(&raw, "sample");
    assert_eq!(shape, [4, 3, 8, 8]);
    assert!((mean_mse(&inputs, &recon) - mse50).abs() < 1e-9);

    // The noise decodes with `ddpm sample` to the same reconstructions.
    let (nshape, noise) = raw_tensor(&out.join("noise.safetensors"), "noise");
    assert_eq!(nshape, [4, 3, 8, 8]);
    let std = (noise.iter().map(|v| v * v).sum::<f32>() / noise.len() as f32).sqrt();
    let sampled = dir.join("sampled.safetensors");
    ok(&ddpm(&[
        "sample",
        "--checkpoint",
        s(run),
        "--init-noise",
        s(&out.join("noise.safetensors")),
        "--sampler",
        "ddim",
        "--steps",
        "50",
        "--no-clip",
        "--device",
        "cpu",
        "--out",
        s(&dir.join("sampled")),
        "--save-raw",
        s(&sampled),
        "-q",
    ]));
    let (_, from_sample) = raw_tensor(&sampled, "sample");
    let decode_diff = max_abs_diff(&from_sample, &recon);
    assert!(
        decode_diff < 1e-4,
        "sample --init-noise differs by {decode_diff}"
    );

    // The error is meaningful: decoding random noise instead, or inverting in 2 steps, is far
    // off.
    let random = dir.join("random.safetensors");
    ok(&ddpm(&[
        "sample",
        "--checkpoint",
        s(run),
        "--sampler",
        "ddim",
        "--steps",
        "50",
        "--no-clip",
        "--num",
        "4",
        "--seed",
        "11",
        "--device",
        "cpu",
        "--out",
        s(&dir.join("random")),
        "--save-raw",
        s(&random),
        "-q",
    ]));
    let mse_random = mean_mse(&inputs, &raw_tensor(&random, "sample").1);
    let out2 = dir.join("inv2");
    let in_dir = dir.join("in");
    let args2 = [
        "invert",
        "--checkpoint",
        s(run),
        "--steps",
        "2",
        "--out",
        s(&out2),
        "--device",
        "cpu",
        "-q",
        "--images",
        s(&in_dir), // the folder: the same four files, sorted
    ];
    ok(&ddpm(&args2));
    let rep2 = report(&out2);
    assert_eq!(rep2["images"].as_array().unwrap().len(), 4);
    let mse2 = rep2["mean_mse"].as_f64().unwrap();
    eprintln!(
        "inversion MSE: 50 steps {mse50:.6} (per image {per:.6?}, noise std {std:.3}); 2 steps \
         {mse2:.6}; random noise {mse_random:.6}; sample --init-noise max diff {decode_diff:e}"
    );
    assert!(mse50 < MSE_50, "50-step reconstruction MSE {mse50}");
    assert!(per.iter().all(|&m| m < 2.0 * MSE_50), "{per:?}");
    assert!(mse2 > 5.0 * MSE_50, "2-step inversion MSE {mse2}");
    assert!(mse_random > 5.0 * MSE_50, "random-noise MSE {mse_random}");
    // The inverted noise looks like N(0, I) in scale.
    assert!((0.5..1.5).contains(&std), "noise std {std}");
}

/// `ddpm sample --seed SEED --num 1` image 0, raw.
fn sample_image0(dir: &Path, seed: &str, sampler: &[&str]) -> Vec<f32> {
    let raw = dir.join(format!("seed{seed}.safetensors"));
    let mut args = vec![
        "sample",
        "--checkpoint",
        s(model()),
        "--num",
        "1",
        "--seed",
        seed,
        "--device",
        "cpu",
        "-q",
        "--force",
        "--out",
    ];
    let out = dir.join(format!("seed{seed}"));
    args.push(s(&out));
    args.extend(["--save-raw", s(&raw)]);
    args.extend(sampler);
    ok(&ddpm(&args));
    raw_tensor(&raw, "sample").1
}

#[test]
fn interpolation_between_seeds_ends_at_their_samples() {
    let run = model();
    let dir = temp_dir("seeds");
    for sampler in [
        &["--sampler", "ddim", "--steps", "20"][..],
        &["--sampler", "dpm++2m", "--steps", "10"][..],
    ] {
        let name = sampler[1].replace('+', "p");
        let out = dir.join(&name);
        let raw = dir.join(format!("{name}.safetensors"));
        let mut args = vec![
            "interpolate",
            "--checkpoint",
            s(run),
            "--seeds",
            "3",
            "7",
            "--frames",
            "5",
            "--device",
            "cpu",
            "-q",
            "--out",
            s(&out),
            "--save-raw",
            s(&raw),
        ];
        args.extend(sampler);
        ok(&ddpm(&args));
        for f in [
            "frame_00.png",
            "frame_04.png",
            "strip.png",
            "noise.safetensors",
        ] {
            assert!(out.join(f).is_file(), "{name}: missing {f}");
        }
        assert!(!out.join("frame_05.png").exists());
        let (shape, frames) = raw_tensor(&raw, "sample");
        assert_eq!(shape, [5, 3, 8, 8]);
        let a = sample_image0(&dir, "3", sampler);
        let b = sample_image0(&dir, "7", sampler);
        let (first, last) = (&frames[..ITEM], &frames[4 * ITEM..]);
        let (da, db) = (max_abs_diff(first, &a), max_abs_diff(last, &b));
        assert!(
            da < 1e-4 && db < 1e-4,
            "{name}: ends differ from the seeds' samples by {da}, {db}"
        );
        // The middle frames are new images, not copies of an end.
        for k in 1..4 {
            let f = &frames[k * ITEM..(k + 1) * ITEM];
            let d = max_abs_diff(f, first).min(max_abs_diff(f, last));
            assert!(d > 0.05, "{name}: frame {k} is within {d} of an end");
        }
        // The written noise is the slerp of the two seeds' initial noises.
        let z0 = ddpm::diffusion::initial_noise(3, &[0], ITEM).unwrap();
        let z1 = ddpm::diffusion::initial_noise(7, &[0], ITEM).unwrap();
        let (_, noise) = raw_tensor(&out.join("noise.safetensors"), "noise");
        assert_eq!(noise, ddpm::latent::slerp_frames(&z0, &z1, 5));
        eprintln!("{name}: ends within {da:e}, {db:e} of `ddpm sample`");
    }
}

#[test]
fn interpolation_between_images_writes_a_strip() {
    let run = model();
    let dir = temp_dir("images");
    let (files, inputs) = shapes(&dir.join("in"), 2);
    let out = dir.join("out");
    let raw = dir.join("frames.safetensors");
    ok(&ddpm(&[
        "interpolate",
        "--checkpoint",
        s(run),
        "--images",
        s(&files[0]),
        s(&files[1]),
        "--frames",
        "4",
        "--device",
        "cpu",
        "-q",
        "--out",
        s(&out),
        "--save-raw",
        s(&raw),
    ]));
    for f in [
        "frame_00.png",
        "frame_03.png",
        "strip.png",
        "noise.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let (shape, frames) = raw_tensor(&raw, "sample");
    assert_eq!(shape, [4, 3, 8, 8]);
    // The ends reconstruct the images (DDIM, 50 steps, inverted with 50).
    let e0 = mean_mse(&frames[..ITEM], &inputs[..ITEM]);
    let e1 = mean_mse(&frames[3 * ITEM..], &inputs[ITEM..]);
    eprintln!("interpolate --images: end reconstruction MSE {e0:.6}, {e1:.6}");
    assert!(e0 < 2.0 * MSE_50 && e1 < 2.0 * MSE_50, "{e0} {e1}");
    // The strip is one row of 4 tiles (each 8×8 enlarged to at least 32, with 2-pixel padding
    // around and between them).
    let strip = image::open(out.join("strip.png")).unwrap();
    let (w, h) = (strip.width() as usize, strip.height() as usize);
    let tile = h - 4;
    assert!(tile >= 32 && tile % 8 == 0, "{w}×{h}");
    assert_eq!(w, 4 * (tile + 2) + 2, "{w}×{h}");
}

/// Runs `args` (writing to `out`) and checks it fails with `code`, `needle` on stderr, and
/// leaves `out` absent.
fn refused(args: &[&str], out: &Path, code: i32, needle: &str) {
    let o = ddpm(args);
    fails_with(&o, code, needle);
    assert!(!out.exists(), "{args:?} left {}", out.display());
}

#[test]
fn bad_flags_are_usage_errors_and_nothing_is_written() {
    let run = model();
    let dir = temp_dir("errors");
    let (files, _) = shapes(&dir.join("in"), 3);
    let (a, b, c) = (s(&files[0]), s(&files[1]), s(&files[2]));
    let in_dir = dir.join("in");
    let out = dir.join("out");
    let o = s(&out);
    let ck = s(run);
    let base = |cmd: &'static str| vec![cmd, "--checkpoint", ck, "--device", "cpu", "--out", o];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--seeds", "1", "2", "--frames", "1"], "--frames"),
        (vec!["--seeds", "1"], "--seeds"),
        (vec!["--seeds", "1", "2", "3"], "--seeds"),
        (vec![], "--seeds"),
        (vec!["--seeds", "1", "2", "--images", a, b], "--images"),
        (vec!["--images", a], "--images"),
        (vec!["--images", a, b, c], "--images"),
        (vec!["--images", s(&in_dir)], "--images"),
        (
            vec!["--seeds", "1", "2", "--sampler", "ddpm"],
            "ddpm draws fresh noise at every step",
        ),
        (
            vec!["--seeds", "1", "2", "--sampler", "euler-maruyama"],
            "euler-maruyama draws fresh noise at every step",
        ),
        (vec!["--seeds", "1", "2", "--eta", "0.5"], "--eta"),
        (
            vec!["--seeds", "1", "2", "--sampler", "heun", "--eta", "0.5"],
            "--eta",
        ),
        (vec!["--seeds", "1", "2", "--steps", "0"], "--steps"),
        (vec!["--seeds", "1", "2", "--steps", "5000"], "--steps"),
        (
            vec!["--seeds", "1", "2", "--spacing", "sideways"],
            "--spacing",
        ),
        (vec!["--seeds", "1", "2", "--sigmas", "karras"], "--sigmas"),
        (vec!["--seeds", "1", "2", "--class", "0"], "--class 0"),
        (
            vec!["--seeds", "1", "2", "--inversion-steps", "5"],
            "--inversion-steps",
        ),
        (
            vec!["--images", a, b, "--inversion-steps", "5000"],
            "--inversion-steps",
        ),
        (
            vec!["--seeds", "1", "2", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec!["--seeds", "1", "2", "--save-raw", "/nonexistent-dir/x.st"],
            "--save-raw",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base("interpolate");
        args.extend(extra);
        refused(&args, &out, 2, needle);
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "--images"),
        (vec!["--images", a, "--steps", "0"], "--steps"),
        (vec!["--images", a, "--steps", "1001"], "--steps"),
        (vec!["--images", a, "--spacing", "sideways"], "--spacing"),
        (vec!["--images", a, "--class", "1"], "--class 1"),
        (vec!["--images", a, "--batch-size", "0"], "--batch-size"),
        (
            vec!["--images", a, "--save-raw", "/nonexistent-dir/x.st"],
            "--save-raw",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base("invert");
        args.extend(extra);
        refused(&args, &out, 2, needle);
    }
    // --out that is a file.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = ddpm(&[
        "invert",
        "--checkpoint",
        ck,
        "--images",
        a,
        "--out",
        s(&file),
    ]);
    fails_with(&o, 2, "--out");

    // Files: missing, corrupt, not an image, too small. Exit 1, naming the file.
    let corrupt = dir.join("corrupt.png");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let text = dir.join("notes.png");
    std::fs::write(&text, b"hello, not an image").unwrap();
    let small = dir.join("small.png");
    ddpm::imaging::save_png(&small, &[0.0; 3 * 4 * 4], 3, 4, 4).unwrap();
    let missing = dir.join("missing.png");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (bad, needle) in [
        (&corrupt, "corrupt.png"),
        (&text, "notes.png"),
        (&small, "small.png: the image is 4×4"),
        (&missing, "missing.png"),
        (&empty, "no images found"),
    ] {
        let mut args = base("invert");
        args.extend(["--images", a, s(bad)]);
        refused(&args, &out, 1, needle);
        let mut args = base("interpolate");
        args.extend(["--images", s(bad), a]);
        refused(&args, &out, 1, needle);
    }
    // --upscale accepts the small image.
    let mut args = base("invert");
    args.extend(["--images", s(&small), "--upscale", "--steps", "2", "-q"]);
    ok(&ddpm(&args));
    assert!(out.join("noise.safetensors").is_file());
}

#[test]
fn a_class_conditional_model_needs_a_class() {
    let dir = temp_dir("class");
    let json = dir.join("model.json");
    std::fs::write(&json, small_model()).unwrap();
    let run = dir.join("run");
    ok(&ddpm(&[
        "train",
        "--model",
        s(&json),
        "--class-cond",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        s(&run),
        "-q",
    ]));
    let (files, _) = shapes(&dir.join("in"), 2);
    let (a, b) = (s(&files[0]), s(&files[1]));
    let out = dir.join("out");
    let base = |cmd: &'static str| {
        vec![
            cmd,
            "--checkpoint",
            s(&run),
            "--device",
            "cpu",
            "--out",
            s(&out),
            "-q",
        ]
    };
    for (cmd, extra) in [
        ("invert", vec!["--images", a]),
        ("interpolate", vec!["--images", a, b]),
        ("interpolate", vec!["--seeds", "1", "2"]),
    ] {
        let mut args = base(cmd);
        args.extend(extra.iter().copied());
        refused(
            &args,
            &out,
            2,
            "--class: the model is class-conditional (4 classes",
        );
        let mut bad = args.clone();
        bad.extend(["--class", "4"]);
        refused(&bad, &out, 2, "--class 4: the model has 4 classes");
        let mut good = args;
        good.extend(["--class", "2", "--steps", "3", "--frames", "2"]);
        if cmd == "invert" {
            good.truncate(good.len() - 2);
        }
        ok(&ddpm(&good));
        assert!(out.join("noise.safetensors").is_file(), "{cmd}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
