//! The `ddpm` binary as a user meets it.

mod common;

use common::{ddpm, fails_with, ok, SMALL_MODEL};

#[test]
fn info_reports_kernels_driver_and_threads_without_panicking() {
    let out = ddpm(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("ddpm {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("CUDA kernels: "), "{text}");
    assert!(text.contains("CUDA driver: "), "{text}");
    assert!(text.contains("CPU: "), "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let built = ddpm::cuda::kernels::built_in();
    assert_eq!(text.contains("CUDA kernels: built in"), built, "{text}");
}

#[test]
fn info_json_is_machine_readable() {
    let out = ddpm(&["info", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["kernels"]["built_in"], ddpm::cuda::kernels::built_in());
    assert!(v["driver"]["status"].is_string());
    assert!(v["cpu_threads"].as_u64().unwrap() >= 1);
}

#[test]
fn info_kernels_prints_the_ptxas_table_of_every_built_in_kernel() {
    let out = ddpm(&["info", "--kernels"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    if ddpm::cuda::kernels::built_in() {
        assert!(text.starts_with("kernel "), "{text}");
        // One line per kernel and target, and the table names each kernel it lists.
        assert!(
            text.lines().count() > ddpm::cuda::kernels::RESOURCES.len(),
            "{text}"
        );
        assert!(
            text.contains(ddpm::cuda::kernels::RESOURCES[0].kernel),
            "{text}"
        );
    } else {
        assert!(text.contains("no CUDA kernels"), "{text}");
    }
}

#[test]
fn threads_flag_is_honoured_and_validated() {
    let out = ddpm(&["--threads", "3", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cpu_threads"], 3);
    let out = ddpm(&["--threads", "0", "info"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit with 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn help_lists_the_commands() {
    let out = ddpm(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("info") && text.contains("--threads"),
        "{text}"
    );
    let out = ddpm(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---- train and sample, end to end ------------------------------------------------------------

use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an `--init-noise` file: the f32 tensor `noise` of `shape`.
fn write_noise(path: &Path, shape: &[usize], values: &[f32]) {
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        shape.to_vec(),
        bytemuck::cast_slice(values),
    )
    .unwrap();
    std::fs::write(
        path,
        safetensors::serialize([("noise", view)], None).unwrap(),
    )
    .unwrap();
}

fn raw_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn train_then_sample_through_the_binary() {
    let dir = temp_dir("e2e");
    let model = dir.join("model.json");
    std::fs::write(&model, SMALL_MODEL).unwrap();
    let run = dir.join("run");
    let (model_s, run_s) = (model.to_str().unwrap(), run.to_str().unwrap());
    ok(&ddpm(&[
        "train",
        "--model",
        model_s,
        "--steps",
        "4",
        "--batch-size",
        "3",
        "--sample-every",
        "2",
        "--checkpoint-every",
        "2",
        "--out",
        run_s,
        "--quiet",
    ]));
    for f in [
        "config.json",
        "log.csv",
        "loss.png",
        "samples/step_0000002.png",
        "samples/step_0000004.png",
        "checkpoints/step_0000002.safetensors",
        "checkpoints/latest.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let csv = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert!(
        csv.starts_with("step,loss,lr,grad_norm,images_per_s,skipped\n"),
        "{csv}"
    );
    // Resume to 6 steps: two more CSV rows' worth of steps, a new checkpoint.
    ok(&ddpm(&[
        "train", "--resume", run_s, "--steps", "6", "--out", run_s, "-q",
    ]));
    assert!(run.join("checkpoints/step_0000006.safetensors").is_file());

    // Sample 3 images, twice with different batch sizes: identical results.
    let raw = |b: &str, name: &str| {
        let out_dir = dir.join(name);
        let raw = dir.join(format!("{name}.safetensors"));
        ok(&ddpm(&[
            "sample",
            "--checkpoint",
            run_s,
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--num",
            "3",
            "--batch-size",
            b,
            "--seed",
            "4",
            "--out",
            out_dir.to_str().unwrap(),
            "--save-raw",
            raw.to_str().unwrap(),
            "-q",
        ]));
        for f in ["sample_00000.png", "sample_00002.png", "grid.png"] {
            assert!(out_dir.join(f).is_file(), "missing {f}");
        }
        raw_tensor(&raw, "sample")
    };
    let (shape, a) = raw("1", "one");
    let (_, b) = raw("3", "three");
    assert_eq!(shape, [3, 3, 8, 8]);
    // Same noise per image whatever the batch; the matrix products may block differently for
    // another batch size, so agreement is to float rounding, not bitwise.
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "samples depend on --batch-size: max difference {diff}"
    );
    assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));

    // --init-noise: the same noise twice gives the same images; the shape is checked.
    let noise_file = dir.join("noise.safetensors");
    let noise: Vec<f32> = (0..2 * 3 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    write_noise(&noise_file, &[2, 3, 8, 8], &noise);
    let from_noise = |name: &str| {
        let raw = dir.join(format!("{name}.safetensors"));
        ok(&ddpm(&[
            "sample",
            "--checkpoint",
            run_s,
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--init-noise",
            noise_file.to_str().unwrap(),
            "--out",
            dir.join(name).to_str().unwrap(),
            "--save-raw",
            raw.to_str().unwrap(),
            "-q",
        ]));
        raw_tensor(&raw, "sample")
    };
    let (shape, x) = from_noise("n1");
    assert_eq!(shape, [2, 3, 8, 8]);
    assert_eq!(x, from_noise("n2").1);
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        run_s,
        "--init-noise",
        noise_file.to_str().unwrap(),
        "--num",
        "5",
        "--out",
        dir.join("n3").to_str().unwrap(),
    ]);
    fails_with(&out, 1, "expected [5, 3, 8, 8]");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_inputs_are_reported_by_name() {
    let dir = temp_dir("bad");
    let out_s = dir.join("out");
    let out_s = out_s.to_str().unwrap();
    fails_with(
        &ddpm(&["train", "--data", "/no/such/dir", "--out", out_s]),
        1,
        "/no/such/dir",
    );
    assert!(
        !dir.join("out").exists(),
        "nothing written for a run that cannot start"
    );
    fails_with(
        &ddpm(&["train", "--model", "huge", "--out", out_s]),
        2,
        "not a preset",
    );
    fails_with(
        &ddpm(&["train", "--channels", "2", "--out", out_s]),
        2,
        "--channels 2",
    );
    fails_with(
        &ddpm(&["train", "--resume", "x", "--lr", "1"]),
        2,
        "cannot be used with",
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    fails_with(
        &ddpm(&[
            "sample",
            "--checkpoint",
            garbage.to_str().unwrap(),
            "--out",
            out_s,
        ]),
        1,
        "garbage.safetensors",
    );
    fails_with(
        &ddpm(&[
            "sample",
            "--checkpoint",
            dir.join("missing").to_str().unwrap(),
        ]),
        1,
        "missing",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn device_flag_is_validated_and_a_missing_gpu_is_a_clear_error() {
    let out = ddpm(&["train", "--device", "gpu", "--steps", "1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --device is a usage error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{err}");

    // Device 99 exists nowhere: with or without a GPU this is an error naming the reason.
    let dir = std::env::temp_dir().join(format!("ddpm-cli-device-{}", std::process::id()));
    let out = ddpm(&[
        "train",
        "--device",
        "cuda:99",
        "--steps",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("open GPU: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !dir.exists(),
        "nothing is written when the device cannot be opened"
    );
}

#[test]
fn bench_train_and_sample_report_images_per_second_on_the_cpu() {
    for kind in ["train", "sample"] {
        let out = ddpm(&[
            "bench",
            kind,
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("bench {kind}: preset tiny")),
            "{text}"
        );
        let ips: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("images/s: "))
            .expect("an images/s line")
            .parse()
            .unwrap();
        assert!(ips > 0.0 && ips.is_finite(), "{text}");
    }
    let out = ddpm(&["bench", "train", "--device", "cpu", "--preset", "huge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--preset huge: unknown"));
}

/// `--profile` prints the op table (its rows add up to no more than the step), `--json` keeps
/// the JSON last with the peak resident set, `--image-size/--channels` change the geometry, and
/// `bench peak` measures the FMA peak on the global `--threads`.
#[test]
fn bench_profile_peak_and_geometry_overrides() {
    let out = ddpm(&[
        "--threads",
        "2",
        "bench",
        "train",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--image-size",
        "8",
        "--channels",
        "1",
        "--profile",
        "--json",
    ]);
    // With --json the JSON is all of stdout; the table and the other lines are on stderr.
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).expect("stdout is JSON");
    let text = String::from_utf8_lossy(&out.stderr);
    for row in [
        "| conv forward |",
        "| conv backward (weights) |",
        "| group norm (+ SiLU) |",
        "| clip, AdamW, EMA |",
    ] {
        assert!(text.contains(row), "no {row} row in:\n{text}");
    }
    assert!(text.contains("f32 FMA peak measured now"), "{text}");
    assert!(
        json["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0),
        "{json}"
    );
    assert_eq!(json["threads"], 2, "{json}");
    // The overrides reach the model: a 1-channel 8×8 model's parameter count differs from tiny's.
    let plain = ok(&ddpm(&[
        "bench",
        "train",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--batch-size",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]));
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_ne!(
        json["params"], plain["params"],
        "--channels 1 did not change the model"
    );

    let peak = ok(&ddpm(&["--threads", "1", "bench", "peak"]));
    assert!(
        peak.contains("f32 FMA peak") && peak.contains("on 1"),
        "{peak}"
    );
    fails_with(
        &ddpm(&["bench", "sample", "--device", "cpu", "--image-size", "6"]),
        2,
        "--image-size",
    );
}

// ---- diffusers directories ------------------------------------------------------------------

fn diffusers_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(rel)
}

/// A golden tensor written by scripts/diffusers_goldens.py, as f32.
fn golden(file: &str, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(diffusers_fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let mut v = vec![0.0f32; t.shape().iter().product()];
    ddpm::params::decode_into(t.dtype(), t.data(), &mut v).unwrap();
    v
}

#[test]
fn samples_from_a_diffusers_unet_directory_as_diffusers_does() {
    let dir = temp_dir("diffusers-sample");
    // diffusers' 10-step DDIM run of the cifar10-like model from this noise.
    let noise = golden("ddim10.safetensors", "cifar10-like.noise");
    let want = golden("ddim10.safetensors", "cifar10-like.sample");
    let noise_path = dir.join("noise.safetensors");
    write_noise(&noise_path, &[2, 3, 32, 32], &noise);
    let raw = dir.join("raw.safetensors");
    let model = diffusers_fixture("models/cifar10-like");
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        model.to_str().unwrap(),
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--init-noise",
        noise_path.to_str().unwrap(),
        "--save-raw",
        raw.to_str().unwrap(),
        "--out",
        dir.join("images").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diffusers UNet2DModel"), "{err}");
    assert!(err.contains("DDPMScheduler's defaults"), "{err}");
    let (shape, got) = raw_tensor(&raw, "sample");
    assert_eq!(shape, [2, 3, 32, 32]);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w.clamp(-1.0, 1.0)).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "max difference from diffusers {worst}");
    assert!(dir.join("images/grid.png").is_file());

    // --no-ema has no meaning for a diffusers model.
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        model.to_str().unwrap(),
        "--no-ema",
    ]);
    fails_with(&out, 1, "--no-ema");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_writes_a_pipeline_that_samples_like_its_checkpoint() {
    let dir = temp_dir("export");
    let ckpt = diffusers_fixture("export/checkpoint.safetensors");
    let exported = dir.join("pipeline");
    ok(&ddpm(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]));
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(exported.join(f).is_file(), "{f}");
    }
    // The same images from the checkpoint and from its export, bit for bit.
    let sample = |from: &Path, raw: &Path| {
        ok(&ddpm(&[
            "sample",
            "--checkpoint",
            from.to_str().unwrap(),
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--num",
            "4",
            "--ddim-eps",
            "clipped",
            "--save-raw",
            raw.to_str().unwrap(),
            "--out",
            dir.join("images").to_str().unwrap(),
            "--force",
            "--device",
            "cpu",
            "-q",
        ]));
        raw_tensor(raw, "sample").1
    };
    let a = sample(&ckpt, &dir.join("a.safetensors"));
    let b = sample(&exported, &dir.join("b.safetensors"));
    assert_eq!(a, b);

    // An existing export is kept unless --force.
    let again = ddpm(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    fails_with(&again, 2, "--force");
    fails_with(
        &again,
        2,
        "already holds 3 entries (model_index.json, scheduler/, unet/)",
    );
    let not_a_model = dir.join("images");
    fails_with(
        &ddpm(&[
            "export",
            "--checkpoint",
            not_a_model.to_str().unwrap(),
            "--out",
            dir.join("x").to_str().unwrap(),
        ]),
        1,
        "neither a ddpm run directory",
    );
    assert!(!dir.join("x").exists());
    // A run that has not written a checkpoint yet is named as such, not read as diffusers.
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.json"),
        r#"{"model": {}, "schedule": {}, "train": {}}"#,
    )
    .unwrap();
    fails_with(
        &ddpm(&["sample", "--checkpoint", run.to_str().unwrap()]),
        1,
        "no checkpoint yet",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class conditioning with label dropout, guided sampling with every sampler, the progression
/// strips and the sampler table, end to end through the binary.
#[test]
fn guided_sampling_progression_and_the_sampler_table() {
    let dir = temp_dir("cfg");
    let model = dir.join("model.json");
    std::fs::write(&model, SMALL_MODEL).unwrap();
    let (run, plain) = (dir.join("run"), dir.join("plain"));
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--class-cond",
            "--out",
            out.to_str().unwrap(),
            "-q",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ok(&ddpm(&args));
    };
    train(&run, &["--label-dropout", "0.5"]);
    train(&plain, &[]);
    // The four synthetic shapes plus the null class.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["num_class_embeds"], 5, "{config}");
    assert_eq!(config["train"]["label_dropout"], 0.5, "{config}");

    let sample = |ck: &Path, out: &str, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--num",
            "2",
            "--steps",
            "3",
            "--out",
            out,
            "-q",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ddpm(&args)
    };
    for sampler in ["ddpm", "ddim", "euler", "heun", "euler-maruyama", "dpm++2m"] {
        let out = dir.join(format!("g-{sampler}"));
        ok(&sample(
            &run,
            out.to_str().unwrap(),
            &[
                "--sampler",
                sampler,
                "--guidance-scale",
                "3",
                "--progression",
                "3",
            ],
        ));
        // One strip per image: 2 rows (xₜ, x̂₀) × 3 columns of 8×8 tiles, enlarged for viewing.
        for i in 0..2 {
            let strip = image::open(out.join(format!("progression_{i:05}.png"))).unwrap();
            let ratio = strip.width() as f64 / strip.height() as f64;
            assert!(
                (1.3..1.7).contains(&ratio),
                "{sampler}: a 3 × 2 strip is {}×{}",
                strip.width(),
                strip.height()
            );
        }
    }
    // The unconditional output (g = 0) and a class.
    let unc = dir.join("unconditional");
    ok(&sample(
        &run,
        unc.to_str().unwrap(),
        &["--guidance-scale", "0"],
    ));
    ok(&sample(
        &run,
        dir.join("class").to_str().unwrap(),
        &["--class", "3", "--guidance-scale", "2"],
    ));
    // The null class is not a class the user picks; a model without dropout cannot be guided.
    fails_with(
        &sample(&run, dir.join("x").to_str().unwrap(), &["--class", "4"]),
        2,
        "--class 4: the model has 4 classes, 0 to 3",
    );
    fails_with(
        &sample(
            &plain,
            dir.join("y").to_str().unwrap(),
            &["--guidance-scale", "2"],
        ),
        2,
        "not trained with label dropout",
    );
    fails_with(
        &ddpm(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--label-dropout",
            "0.1",
            "--out",
            dir.join("z").to_str().unwrap(),
        ]),
        2,
        "--label-dropout needs a class-conditional model",
    );

    // The sampler table: one row per sampler and step count, plus the data's own floor.
    let table = dir.join("table.md");
    let out = ddpm(&[
        "bench",
        "samplers",
        "--checkpoint",
        run.to_str().unwrap(),
        "--num",
        "8",
        "--steps",
        "2,3",
        "--samplers",
        "ddim,heun,dpm++2m",
        "--guidance-scale",
        "2",
        "--device",
        "cpu",
        "-q",
        "--out",
        table.to_str().unwrap(),
    ]);
    ok(&out);
    let text = std::fs::read_to_string(&table).unwrap();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
    // Header, the training-images floor, 3 samplers × 2 step counts.
    assert_eq!(rows.len(), 8, "{text}");
    assert!(rows[1].starts_with("| training images"), "{text}");
    assert!(
        rows.iter().any(|r| r.starts_with("| heun | 3 | 5 |")),
        "{text}"
    );
    for row in &rows[1..] {
        let fd: f64 = row.split('|').nth(4).unwrap().trim().parse().unwrap();
        assert!(fd.is_finite() && fd >= 0.0, "{row}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---- outputs that do not mix, and messages that say what would work --------------------------

/// Runs `ddpm` with `args` in the folder `cwd`.
fn ddpm_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run ddpm")
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A two-step run of the small model in `dir/run`.
fn small_run(dir: &Path) -> PathBuf {
    let model = dir.join("model.json");
    std::fs::write(&model, SMALL_MODEL).unwrap();
    let run = dir.join("run");
    ok(&ddpm(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--device",
        "cpu",
        "-q",
    ]));
    run
}

/// `sample`, `invert` and `interpolate` write under runs/ by default, refuse an --out that
/// holds anything, and with --force replace their own earlier files and nothing else.
#[test]
fn sample_invert_and_interpolate_never_mix_old_and_new_output() {
    let dir = temp_dir("fresh");
    let run = small_run(&dir);
    let ck = run.to_str().unwrap();
    let cpu = ["--device", "cpu"];
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            ck,
            "--sampler",
            "ddim",
            "--steps",
            "2",
        ];
        args.extend_from_slice(&cpu);
        args.extend_from_slice(extra);
        ddpm_in(&dir, &args)
    };
    // The default --out is runs/samples; the summary names the checkpoint it used.
    let first = sample(&["--num", "3"]);
    ok(&first);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(
        err.contains("wrote 3 images and grid.png to runs/samples (2 evaluations of ddim")
            && err.contains("EMA weights of ")
            && err.contains("step_0000002.safetensors"),
        "{err}"
    );
    let samples = dir.join("runs/samples");
    let three = [
        "grid.png",
        "sample_00000.png",
        "sample_00001.png",
        "sample_00002.png",
    ];
    assert_eq!(names(&samples), three);
    // Again into the same folder: refused, naming it and what is there; nothing changes.
    let again = sample(&["--num", "1"]);
    fails_with(
        &again,
        2,
        "--out runs/samples: already holds 4 entries (grid.png, sample_00000.png, \
         sample_00001.png, sample_00002.png); choose another --out, or pass --force",
    );
    assert_eq!(names(&samples), three);
    // --force replaces the earlier samples: no stale image stays beside the new one.
    ok(&sample(&["--num", "1", "--force", "-q"]));
    assert_eq!(names(&samples), ["grid.png", "sample_00000.png"]);
    // Only ddpm's own files: anything else is refused, not removed.
    std::fs::write(samples.join("notes.txt"), b"mine").unwrap();
    fails_with(
        &sample(&["--num", "1", "--force"]),
        2,
        "--force replaces only what `ddpm sample` writes",
    );
    assert_eq!(
        names(&samples),
        ["grid.png", "notes.txt", "sample_00000.png"]
    );

    // invert: runs/inverted by default, the same rules.
    let image = samples.join("sample_00000.png");
    let invert = |extra: &[&str]| {
        let mut args = vec!["invert", "--checkpoint", ck, "--steps", "2", "-q"];
        args.extend_from_slice(&cpu);
        args.extend(["--images", image.to_str().unwrap()]);
        args.extend_from_slice(extra);
        ddpm_in(&dir, &args)
    };
    ok(&invert(&[]));
    let inverted = dir.join("runs/inverted");
    let written = names(&inverted);
    assert!(written.contains(&"report.json".to_string()), "{written:?}");
    fails_with(&invert(&[]), 2, "runs/inverted: already holds");
    ok(&invert(&["--force"]));
    assert_eq!(names(&inverted), written);

    // interpolate: runs/interpolation; fewer frames under --force leave no stale frame.
    let interpolate = |frames: &str, extra: &[&str]| {
        let mut args = vec!["interpolate", "--checkpoint", ck, "--seeds", "1", "2"];
        args.extend(["--steps", "2", "--frames", frames, "-q"]);
        args.extend_from_slice(&cpu);
        args.extend_from_slice(extra);
        ddpm_in(&dir, &args)
    };
    ok(&interpolate("3", &[]));
    let frames = dir.join("runs/interpolation");
    assert!(frames.join("frame_02.png").is_file());
    fails_with(
        &interpolate("2", &[]),
        2,
        "or pass --force to replace the earlier output of `ddpm interpolate`",
    );
    ok(&interpolate("2", &["--force"]));
    assert_eq!(
        names(&frames),
        [
            "frame_00.png",
            "frame_01.png",
            "noise.safetensors",
            "strip.png"
        ]
    );
    // An --eta that cannot work says so, without a note about T.
    let eta = sample(&["--eta", "2", "--out", "elsewhere"]);
    fails_with(&eta, 2, "--eta: must be in [0, 1], got 2");
    assert!(!String::from_utf8_lossy(&eta.stderr).contains("T ="));
    let _ = std::fs::remove_dir_all(dir);
}

/// `bench --json` writes the JSON object and nothing else on stdout, so it pipes into `jq`.
#[test]
fn bench_json_is_the_only_thing_on_stdout() {
    for kind in ["train", "sample"] {
        let out = ddpm(&[
            "bench",
            kind,
            "--device",
            "cpu",
            "--batch-size",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--image-size",
            "8",
            "--json",
        ]);
        let stdout = ok(&out);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        assert_eq!(v["task"], kind, "{v}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("bench {kind}: preset tiny")) && err.contains("images/s: "),
            "{err}"
        );
    }
}

/// Each message names the flag the user gave and what would work.
#[test]
fn messages_name_the_flag_given_and_what_would_work() {
    let dir = temp_dir("messages");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    // A count of 0 says what it must be, for every command that takes one.
    for args in [
        &["train", "--steps", "0"][..],
        &["train", "--batch-size", "0"],
        &["sample", "--checkpoint", "x", "--steps", "0"],
        &["sample", "--checkpoint", "x", "--num", "0"],
        &[
            "invert",
            "--checkpoint",
            "x",
            "--images",
            "y",
            "--steps",
            "0",
        ],
        &[
            "interpolate",
            "--checkpoint",
            "x",
            "--seeds",
            "1",
            "2",
            "--steps",
            "0",
        ],
        &["bench", "train", "--steps", "0"],
        &["bench", "samplers", "--checkpoint", "x", "--steps", "10,0"],
    ] {
        let run = ddpm(args);
        fails_with(&run, 2, "must be at least 1");
        assert!(
            !String::from_utf8_lossy(&run.stderr).contains("18446744073709551615"),
            "{args:?}"
        );
    }
    fails_with(
        &ddpm(&[
            "interpolate",
            "--checkpoint",
            "x",
            "--seeds",
            "1",
            "2",
            "--frames",
            "1",
        ]),
        2,
        "must be from 2 to 1000",
    );
    // A misspelt data kind: a usage error with the nearest kind, before the device is chosen.
    let typo = ddpm(&["train", "--data", "synthtic", "--out", o]);
    fails_with(&typo, 2, "--data synthtic: ");
    fails_with(&typo, 2, "did you mean `synthetic`?");
    assert!(!String::from_utf8_lossy(&typo.stderr).contains("device:"));
    fails_with(
        &ddpm(&["train", "--data", "minst:/data", "--out", o]),
        2,
        "did you mean `mnist:/data`?",
    );
    // A size that does not divide: the flag given and the nearest sizes, no other flag.
    let size = ddpm(&["train", "--image-size", "30", "--out", o]);
    fails_with(&size, 2, "--image-size 30: ");
    fails_with(&size, 2, "the nearest sizes are 28 or 32");
    let err = String::from_utf8_lossy(&size.stderr);
    assert!(
        !err.contains("--channels") && !err.contains("--dropout"),
        "{err}"
    );
    fails_with(
        &ddpm(&["bench", "sample", "--image-size", "30"]),
        2,
        "--image-size 30: the tiny preset",
    );
    // A missing folder: the OS error once.
    let missing = ddpm(&["train", "--data", "folder:/no/such/dir", "--out", o]);
    fails_with(&missing, 1, "/no/such/dir");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!out.exists());

    // Help: the one-line summary, the flags a user needs first, only accepted values.
    let top = ok(&ddpm(&["--help"]));
    assert!(
        !top.contains("DDPM or DDIM") && top.contains("six samplers"),
        "{top}"
    );
    let help = ok(&ddpm(&["sample", "--help"]));
    // The line of each flag.
    let at = |flag: &str| {
        help.lines()
            .position(|l| {
                let l = l.trim_start();
                l == flag || l.starts_with(&format!("{flag} "))
            })
            .unwrap_or_else(|| panic!("no {flag} in:\n{help}"))
    };
    let order: Vec<usize> = [
        "--checkpoint",
        "--num",
        "--sampler",
        "--steps",
        "--seed",
        "--out",
        "--force",
        "--device",
        "--threads",
    ]
    .iter()
    .map(|f| at(f))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{help}");
    let help = ok(&ddpm(&["interpolate", "--help"]));
    assert!(
        help.contains("--sampler <ddim|euler|heun|dpm++2m>"),
        "{help}"
    );

    // Plurals, the device line, and the targets of kernels that are not there.
    let info = ok(&ddpm(&["--threads", "1", "info"]));
    assert!(info.contains("CPU: 1 thread in use"), "{info}");
    let json: serde_json::Value = serde_json::from_str(&ok(&ddpm(&["info", "--json"]))).unwrap();
    if !ddpm::cuda::kernels::built_in() {
        assert_eq!(json["kernels"]["targets"], serde_json::json!([]), "{json}");
    }
    let model = dir.join("model.json");
    std::fs::write(&model, SMALL_MODEL).unwrap();
    let train = ddpm(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--out",
        o,
    ]);
    ok(&train);
    let err = String::from_utf8_lossy(&train.stderr);
    assert!(err.contains("1 res block per level"), "{err}");
    assert!(!err.contains("(s)") && !err.contains("))"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
