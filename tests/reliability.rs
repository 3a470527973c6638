//! Bad input never crashes ddpm, and a crash never loses training work: bad checkpoints and
//! flags give clear errors (status 2 for flags) and leave nothing behind; training killed at
//! random moments always resumes from a checkpoint that verifies and ends where a straight run
//! does; a failed save keeps the previous checkpoint; non-finite steps are skipped and counted,
//! and too many in a row stop the run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ddpm::diffusion::ScheduleConfig;
use ddpm::nn::UNetConfig;
use ddpm::train::{Checkpoint, TrainConfig, Trainer};
use safetensors::Dtype;

mod common;
use common::{assert_same_state, ddpm, fails_with, ok, temp_dir, write_model, SMALL_MODEL};

const BIN: &str = env!("CARGO_BIN_EXE_ddpm");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn small_model() -> UNetConfig {
    UNetConfig::from_json(SMALL_MODEL).unwrap()
}

/// A checkpoint of the small model after one training step.
fn valid_checkpoint(path: &Path) -> Checkpoint {
    let cfg = TrainConfig {
        image_size: 8,
        batch_size: 2,
        steps: 1,
        ..TrainConfig::default()
    };
    let t = Trainer::new(small_model(), ScheduleConfig::default(), cfg).unwrap();
    let ck = t.checkpoint();
    ck.save(path).unwrap();
    ck
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites a safetensors file through `edit` (tensors and metadata as owned values).
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) {
    let bytes = std::fs::read(from).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors, &mut meta);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn bad_checkpoints_are_refused_naming_the_file_and_the_problem() {
    let dir = temp_dir("rel-badck");
    let good = dir.join("good.safetensors");
    valid_checkpoint(&good);
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let case = |name: &str| dir.join(format!("{name}.safetensors"));

    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    let mut raw = |name: &'static str, content: Vec<u8>, needle: &'static str| {
        std::fs::write(case(name), content).unwrap();
        cases.push((case(name), needle));
    };
    raw("zero", Vec::new(), "not a safetensors file");
    raw(
        "random",
        (0..4000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        "not a safetensors file",
    );
    raw(
        "truncated-header",
        bytes[..8 + header_len / 2].to_vec(),
        "not a safetensors file",
    );
    raw(
        "truncated-data",
        bytes[..bytes.len() * 2 / 3].to_vec(),
        "truncated",
    );
    raw(
        "truncated-by-one",
        bytes[..bytes.len() - 1].to_vec(),
        "truncated",
    );
    let mut bad_json = bytes.clone();
    bad_json[8] = b'!'; // the header's opening brace
    raw("header-not-json", bad_json, "not a safetensors file");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10; // one bit of the last tensor's data
    raw("bit-flip", flipped, "checksum mismatch");

    let mut edited =
        |name: &'static str,
         needle: &'static str,
         edit: &dyn Fn(&mut Tensors, &mut HashMap<String, String>)| {
            rewrite(&good, &case(name), edit);
            cases.push((case(name), needle));
        };
    edited(
        "missing-tensor",
        "missing tensor `ema.conv_in.weight`",
        &|t, _| t.retain(|x| x.0 != "ema.conv_in.weight"),
    );
    edited(
        "misshaped",
        "tensor `conv_in.weight` has shape [3, 8, 3, 3], expected [8, 3, 3, 3]",
        &|t, _| {
            let x = t.iter_mut().find(|x| x.0 == "conv_in.weight").unwrap();
            x.2 = vec![3, 8, 3, 3];
        },
    );
    edited(
        "f16",
        "tensor `conv_in.bias` has dtype F16; a ddpm checkpoint stores F32",
        &|t, _| {
            let x = t.iter_mut().find(|x| x.0 == "conv_in.bias").unwrap();
            x.1 = Dtype::F16;
            x.3.truncate(x.3.len() / 2);
        },
    );
    edited("i64", "has dtype I64", &|t, _| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "adam.v.conv_out.bias")
            .unwrap();
        x.1 = Dtype::I64;
        x.3.extend(x.3.clone());
    });
    edited("extra-tensor", "holds tensor `extra.weight`", &|t, _| {
        t.push(("extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]))
    });
    edited("metadata-not-json", "metadata `model_config`", &|_, m| {
        m.insert("model_config".into(), "{\"sample_size\": 8,".into());
    });
    edited("no-format", "metadata has no `format`", &|_, m| {
        m.remove("format");
    });
    edited("other-format", "format `ddpm-checkpoint-9`", &|_, m| {
        m.insert("format".into(), "ddpm-checkpoint-9".into());
    });
    edited("bad-step", "metadata `step`", &|_, m| {
        m.insert("step".into(), "-1".into());
    });
    edited("metadata-digit", "checksum mismatch", &|_, m| {
        m.insert("step".into(), "2".into()); // parses, and the CRC covers it
    });
    edited("skipped-above-step", "exceeds `step`", &|_, m| {
        m.insert("skipped_steps".into(), "7".into());
    });
    // The tensors of this model under the config of a model with two layers per block…
    edited(
        "other-model-bigger",
        "not this model's checkpoint",
        &|_, m| {
            let cfg = small_model();
            let other = UNetConfig {
                layers_per_block: 2,
                ..cfg
            };
            m.insert(
                "model_config".into(),
                serde_json::to_string(&other).unwrap(),
            );
        },
    );
    // …and under the config of a model whose tensors are a subset of these (no attention).
    edited(
        "other-model-smaller",
        "which the model in its model_config does not have",
        &|_, m| {
            let mut other = small_model();
            other.down_block_types = vec![ddpm::nn::DownBlockType::DownBlock2D; 2];
            other.up_block_types = vec![ddpm::nn::UpBlockType::UpBlock2D; 2];
            other.add_attention = false;
            m.insert(
                "model_config".into(),
                serde_json::to_string(&other).unwrap(),
            );
        },
    );
    edited("huge-model", "cannot hold", &|_, m| {
        let mut other = small_model();
        other.block_out_channels = vec![1024, 1024];
        other.norm_num_groups = 32;
        m.insert(
            "model_config".into(),
            serde_json::to_string(&other).unwrap(),
        );
    });

    Checkpoint::load(&good).expect("the unedited checkpoint loads");
    let out = dir.join("samples");
    for (path, needle) in &cases {
        let e = Checkpoint::load(path)
            .expect_err(&path.display().to_string())
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(
            e.contains(needle),
            "{}: expected `{needle}` in: {e}",
            path.display()
        );
        let run = ddpm(&[
            "sample",
            "--checkpoint",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
        ]);
        fails_with(&run, 1, needle);
        assert!(stderr(&run).contains(path.file_name().unwrap().to_str().unwrap()));
        assert!(!out.exists(), "{}: nothing is written", path.display());
        let run = ddpm(&[
            "train",
            "--resume",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
            "--device",
            "cpu",
        ]);
        fails_with(&run, 1, needle);
        assert!(!out.exists(), "{}: nothing is written", path.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flags_that_cannot_work_are_usage_errors_and_write_nothing() {
    let dir = temp_dir("rel-flags");
    let ck = dir.join("ck.safetensors");
    valid_checkpoint(&ck);
    let ck = ck.to_str().unwrap();
    let model = write_model(&dir);
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let under_file = a_file.join("out");
    let under_file = under_file.to_str().unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train", "--model", &model, "--steps", "2", "--out", o, "--device", "cpu", "-q",
        ];
        args.extend_from_slice(extra);
        ddpm(&args)
    };
    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "--checkpoint", ck, "--out", o, "-q", "--num", "1"];
        args.extend_from_slice(extra);
        ddpm(&args)
    };
    let cases: Vec<(Output, &str)> = vec![
        (train(&["--steps", "0"]), "--steps"),
        (train(&["--batch-size", "0"]), "--batch-size"),
        (
            ddpm(&["train", "--model", "huge", "--out", o]),
            "--model huge: not a preset",
        ),
        (
            ddpm(&["train", "--image-size", "18", "--out", o]),
            "--image-size 18: the tiny preset halves the image 2 times (3 levels), so its side \
             must be a multiple of 4; the nearest sizes are 16 or 20",
        ),
        (train(&["--channels", "2"]), "--channels 2"),
        (
            train(&["--beta-schedule", "cubic"]),
            "--beta-schedule cubic",
        ),
        (train(&["--prediction", "noise"]), "--prediction noise"),
        (train(&["--lr", "-1"]), "`lr`: must be positive"),
        (train(&["--ema-decay", "1.5"]), "decay"),
        (train(&["--timesteps", "0"]), "--timesteps"),
        (
            train(&["--max-nonfinite-steps", "0"]),
            "--max-nonfinite-steps",
        ),
        (
            ddpm(&["train", "--device", "gpu", "--out", o]),
            "expected auto, cpu, cuda or cuda:N",
        ),
        (
            ddpm(&["train", "--model", &model, "--out", under_file, "-q"]),
            "cannot create the directory",
        ),
        (
            ddpm(&[
                "train",
                "--resume",
                dir.join("none").to_str().unwrap(),
                "-q",
            ]),
            "no such checkpoint file or run directory",
        ),
        (sample(&["--steps", "0"]), "--steps"),
        (sample(&["--steps", "1001"]), "--steps"),
        (
            sample(&["--sampler", "ddim", "--eta", "-0.5"]),
            "--eta: must be in [0, 1], got -0.5",
        ),
        (
            sample(&["--eta", "0.5"]),
            "--eta applies to --sampler ddim only",
        ),
        (sample(&["--sampler", "plms"]), "--sampler"),
        (
            sample(&["--sampler", "ddim", "--sigmas", "karras"]),
            "--sigmas: applies to euler, heun, euler-maruyama and dpm++2m, not ddim",
        ),
        (sample(&["--sigmas", "cubic"]), "--sigmas"),
        (
            sample(&["--sampler", "heun", "--ddim-eps", "clipped"]),
            "--ddim-eps applies to --sampler ddim only",
        ),
        (
            sample(&["--guidance-scale", "3"]),
            "--guidance-scale 3: the model is unconditional",
        ),
        (sample(&["--guidance-scale", "-1"]), "--guidance-scale"),
        (sample(&["--progression", "1"]), "--progression"),
        (
            sample(&["--sampler", "ddim", "--spacing", "cubic"]),
            "--spacing",
        ),
        (sample(&["--variance", "huge"]), "--variance huge"),
        (
            sample(&["--class", "1"]),
            "--class 1: the model is unconditional",
        ),
        (sample(&["--batch-size", "0"]), "--batch-size"),
        (sample(&["--num", "0"]), "--num"),
        (
            ddpm(&["sample", "--checkpoint", ck, "--out", under_file, "-q"]),
            "cannot create the directory",
        ),
        (
            sample(&[
                "--save-raw",
                dir.join("no/such/dir/raw.st").to_str().unwrap(),
            ]),
            "--save-raw",
        ),
        (
            sample(&["--save-raw", dir.to_str().unwrap()]),
            "is a directory",
        ),
        (
            ddpm(&["bench", "train", "--preset", "huge"]),
            "--preset huge: unknown",
        ),
        (
            ddpm(&["bench", "sample", "--steps", "1001"]),
            "--steps 1001",
        ),
        // The CPU computes in fp32 only: asking it for bf16 says so instead of ignoring it.
        (
            train(&["--precision", "bf16"]),
            "--precision bf16: the CPU backend computes in fp32 only",
        ),
        (
            sample(&["--device", "cpu", "--precision", "bf16"]),
            "--precision bf16: the CPU backend computes in fp32 only",
        ),
        (
            ddpm(&["bench", "train", "--device", "cpu", "--precision", "fp16"]),
            "--precision fp16: the CPU backend computes in fp32 only",
        ),
        (
            sample(&["--precision", "int8"]),
            "expected auto, fp32, bf16 or fp16",
        ),
    ];
    for (run, needle) in &cases {
        fails_with(run, 2, needle);
        assert!(!out.exists(), "`{needle}`: nothing may be written");
    }
    // A good command in the same setting works (the failures above are the flags' doing).
    ok(&sample(&["--steps", "2", "--sampler", "ddim"]));
    assert!(out.join("grid.png").exists());
    let _ = std::fs::remove_dir_all(dir);
}

fn train_args<'a>(model: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--seed",
        "4",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
        "-q",
    ]
}

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|it| {
            it.map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The file names in a run's checkpoints folder, sorted.
fn checkpoint_names(run: &Path) -> Vec<String> {
    checkpoint_files(run)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect()
}

fn is_temporary(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    name.starts_with('.') && name.contains(".tmp-")
}

/// The step of a run's `latest` checkpoint, from its header.
fn latest_step(run: &Path) -> Option<u64> {
    ddpm::train::checkpoint_dir::peek_step(&run.join("checkpoints/latest.safetensors"))
}

/// Polls `done` every 200 µs until it holds; panics if `child` exits first or after 10 minutes.
fn wait_until(child: &mut std::process::Child, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run exited ({status}) while waiting for {what}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// SIGKILL at pseudo-random moments (a fixed schedule, set by observed progress rather than
/// wall-clock time, so a slow machine gets the same kills): during start-up, a random number of
/// steps in, and, until one lands there, the moment a checkpoint's temporary file appears.
/// After every kill each checkpoint file verifies; every restart resumes; the run ends with
/// exactly the state of a run that was never interrupted.
#[cfg(unix)]
#[test]
fn training_killed_at_random_moments_resumes_and_ends_like_a_straight_run() {
    const STEPS: u64 = 300;
    let dir = temp_dir("rel-kill");
    let model = write_model(&dir);
    let steps = STEPS.to_string();
    // The straight run, timed: start-up to its first checkpoint, then the time per step.
    let straight = dir.join("straight");
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(train_args(&model, straight.to_str().unwrap(), &steps))
        .spawn()
        .unwrap();
    wait_until(&mut child, "the first checkpoint", || {
        latest_step(&straight).is_some()
    });
    let startup = started.elapsed();
    assert!(child.wait().unwrap().success());
    let step_time = started.elapsed().saturating_sub(startup) / STEPS as u32;

    let killed = dir.join("killed");
    let k = killed.to_str().unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut kills, mut mid_write, mut launches) = (0, 0, 0);
    while latest_step(&killed).is_none_or(|s| s < STEPS) {
        let at = latest_step(&killed);
        // A kill between writing a step's file and pointing `latest` at it leaves a checkpoint
        // without `latest`: that run is resumed too (from its newest checkpoint that verifies).
        let saved = checkpoint_files(&killed).iter().any(|p| !is_temporary(p));
        let args: Vec<&str> = if saved {
            vec!["train", "--resume", k, "--device", "cpu", "-q"]
        } else {
            train_args(&model, k, &steps)
        };
        let mut child = Command::new(BIN)
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        launches += 1;
        if kills >= 40 {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "launch {launches}: {}", stderr(&out));
            break;
        }
        let r = next();
        let ck_dir = killed.join("checkpoints");
        let temporary_exists = || {
            std::fs::read_dir(&ck_dir)
                .map(|it| it.flatten().any(|e| is_temporary(&e.path())))
                .unwrap_or(false)
        };
        let exited = |child: &mut std::process::Child| child.try_wait().unwrap().is_some();
        if mid_write == 0 && kills % 2 == 1 {
            // As soon as a checkpoint is being written.
            let started = Instant::now();
            while !temporary_exists() && !exited(&mut child) {
                assert!(started.elapsed() < Duration::from_secs(600));
            }
        } else if r < 0.25 || at.is_none() {
            std::thread::sleep(startup.mul_f64(r));
        } else {
            let target = at.unwrap_or(0) + 1 + (r * 16.0) as u64;
            let started = Instant::now();
            while latest_step(&killed).is_none_or(|s| s < target.min(STEPS)) && !exited(&mut child)
            {
                assert!(started.elapsed() < Duration::from_secs(600));
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(step_time.mul_f64(next()));
        }
        if exited(&mut child) {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "launch {launches}: {}", stderr(&out));
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let files = checkpoint_files(&killed);
        if files.iter().any(|p| is_temporary(p)) {
            mid_write += 1;
        }
        for p in files.iter().filter(|p| !is_temporary(p)) {
            Checkpoint::load(p).unwrap_or_else(|e| panic!("after kill {kills}: {e}"));
        }
    }
    eprintln!(
        "{kills} kills in {launches} launches, {mid_write} of them during a checkpoint write"
    );
    assert!(
        kills >= 10,
        "only {kills} kills: the schedule did not interrupt the run"
    );
    assert!(mid_write >= 1, "no kill landed during a checkpoint write");

    // Temporaries are removed by the next run; the last kill may have left one.
    let names: Vec<String> = checkpoint_names(&killed)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    // The newest two are kept (a kill between a save and the pruning may leave one more).
    assert!(
        names.ends_with(&[
            "latest.safetensors".to_string(),
            "step_0000299.safetensors".to_string(),
            "step_0000300.safetensors".to_string()
        ]) || names
            == [
                "latest.safetensors",
                "step_0000298.safetensors",
                "step_0000299.safetensors",
                "step_0000300.safetensors"
            ],
        "{names:?}"
    );
    let a = Checkpoint::load(&straight.join("checkpoints/latest.safetensors")).unwrap();
    let b = Checkpoint::load(&killed.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(a.step, STEPS);
    assert_same_state(&a, &b);
    let _ = std::fs::remove_dir_all(dir);
}

/// The newest checkpoint that verifies is used, and the ones passed over are named; a temporary
/// file left by a killed save is removed.
#[test]
fn resume_and_sample_use_the_newest_checkpoint_that_verifies() {
    let dir = temp_dir("rel-newest");
    let model = write_model(&dir);
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    ok(&ddpm(&train_args(&model, r, "5")));
    // A fresh run may not write into it (it would mix checkpoints and overwrite the log).
    fails_with(
        &ddpm(&train_args(&model, r, "5")),
        2,
        "already holds a training run (checkpoints/step_0000005.safetensors): pass --resume",
    );
    let ck = run.join("checkpoints");
    // Corrupt the newest step file (latest is the same file, or a copy: corrupt both).
    for name in ["step_0000005.safetensors", "latest.safetensors"] {
        let mut bytes = std::fs::read(ck.join(name)).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        std::fs::remove_file(ck.join(name)).unwrap();
        std::fs::write(ck.join(name), bytes).unwrap();
    }
    let stale = ck.join(".step_0000006.safetensors.tmp-999999999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();

    let samples = dir.join("samples");
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        r,
        "--out",
        samples.to_str().unwrap(),
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--num",
        "1",
    ]);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("step_0000005.safetensors: checksum mismatch"),
        "{err}"
    );
    assert!(
        err.contains("using ") && err.contains("step_0000004.safetensors"),
        "{err}"
    );

    let out = ddpm(&["train", "--resume", r, "--steps", "7", "--device", "cpu"]);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("skipping a checkpoint that does not verify"),
        "{err}"
    );
    assert!(
        err.contains("resuming from") && err.contains("step_0000004.safetensors (step 4)"),
        "{err}"
    );
    assert!(
        err.contains("left by a write that was interrupted"),
        "{err}"
    );
    assert!(!stale.exists());
    // The files past the resumed step are set aside, out of rotation and out of later resumes.
    assert!(
        err.contains("step_0000005.safetensors (past the resumed step 4) to"),
        "{err}"
    );
    assert!(ck.join("abandoned/step_0000005.safetensors").is_file());

    // The same as a run that went straight to 7 steps.
    let straight = dir.join("straight");
    ok(&ddpm(&train_args(&model, straight.to_str().unwrap(), "7")));
    let a = Checkpoint::load(&straight.join("checkpoints/latest.safetensors")).unwrap();
    let b = Checkpoint::load(&ck.join("latest.safetensors")).unwrap();
    assert_same_state(&a, &b);

    // An explicitly named file that does not verify is an error, not a silent substitute.
    let bad = ck.join("bad.safetensors");
    std::fs::write(&bad, b"nope").unwrap();
    fails_with(
        &ddpm(&[
            "train",
            "--resume",
            bad.to_str().unwrap(),
            "--steps",
            "9",
            "-q",
        ]),
        1,
        "bad.safetensors",
    );
    // A run directory with no checkpoint that verifies says so, listing them.
    for p in checkpoint_files(&run) {
        std::fs::write(&p, b"garbage").unwrap();
    }
    fails_with(
        &ddpm(&["train", "--resume", r, "--steps", "9", "-q"]),
        1,
        "no checkpoint verifies",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Two processes never train into one directory: the second is refused while the first runs,
/// and the lock of a killed run is taken over.
#[cfg(unix)]
#[test]
fn a_second_run_in_the_same_directory_is_refused_while_the_first_runs() {
    let dir = temp_dir("rel-lock");
    let model = write_model(&dir);
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let mut first = Command::new(BIN)
        .args(train_args(&model, r, "100000"))
        .spawn()
        .unwrap();
    let lock = run.join("train.lock");
    let started = Instant::now();
    // Locked once the file names the first run; resumable once it has a checkpoint.
    let latest = run.join("checkpoints/latest.safetensors");
    while std::fs::read_to_string(&lock).ok() != Some(first.id().to_string()) || !latest.exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fails_with(
        &ddpm(&["train", "--resume", r, "--device", "cpu", "-q"]),
        1,
        &format!(
            "another ddpm train (process {}) is writing to this directory",
            first.id()
        ),
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The file stays; the lock on it went with the process. The newest checkpoint is what
    // resumes: the kill may have landed after a step file was written but before `latest` was
    // pointed at it.
    let at = ddpm::train::checkpoint_dir::newest_valid(&run.join("checkpoints"))
        .unwrap()
        .checkpoint
        .step;
    let next = (at + 1).to_string();
    ok(&ddpm(&[
        "train", "--resume", r, "--steps", &next, "--device", "cpu", "-q",
    ]));
    let _ = std::fs::remove_dir_all(dir);
}

/// A save that fails (here: the file-size limit, as a full disk would) stops the run with a
/// message naming the previous checkpoint, which still verifies; nothing half-written remains.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_save_keeps_the_previous_checkpoint_and_says_so() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("rel-efbig");
    let model = write_model(&dir);
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    ok(&ddpm(&train_args(&model, r, "2")));
    let ck = run.join("checkpoints");
    let size = std::fs::metadata(ck.join("step_0000002.safetensors"))
        .unwrap()
        .len();

    let mut cmd = Command::new(BIN);
    cmd.args([
        "train", "--resume", r, "--steps", "4", "--device", "cpu", "-q",
    ]);
    // Files may not grow past one byte less than a checkpoint; the write fails with EFBIG
    // instead of the signal, as on a full disk it fails with ENOSPC.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: size - 1,
                rlim_max: size - 1,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    fails_with(&out, 1, "saving step 3 failed");
    let err = stderr(&out);
    assert!(
        err.contains("step_0000002.safetensors (step 2), is intact"),
        "{err}"
    );
    assert!(err.contains("File too large"), "{err}");
    let names = checkpoint_names(&run);
    assert_eq!(
        names,
        [
            "latest.safetensors",
            "step_0000001.safetensors",
            "step_0000002.safetensors"
        ]
    );
    assert_eq!(
        Checkpoint::load(&ck.join("latest.safetensors"))
            .unwrap()
            .step,
        2
    );
    assert_eq!(
        Checkpoint::load(&ck.join("step_0000002.safetensors"))
            .unwrap()
            .step,
        2
    );
    // Without the limit the run goes on from there.
    ok(&ddpm(&[
        "train", "--resume", r, "--steps", "4", "--device", "cpu", "-q",
    ]));
    assert_eq!(
        Checkpoint::load(&ck.join("latest.safetensors"))
            .unwrap()
            .step,
        4
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A learning rate of 1e30 blows the weights up after one update: every later step has a
/// non-finite loss, is skipped and logged, and the run stops after the configured number in a
/// row, naming the last checkpoint, which is intact.
#[test]
fn non_finite_steps_are_skipped_counted_and_too_many_stop_the_run() {
    let dir = temp_dir("rel-nan");
    let model = write_model(&dir);
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let out = ddpm(&[
        "train",
        "--model",
        &model,
        "--steps",
        "20",
        "--batch-size",
        "2",
        "--lr",
        "1e30",
        "--warmup",
        "0",
        "--grad-clip",
        "0",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "1",
        "--max-nonfinite-steps",
        "3",
        "--out",
        r,
        "--device",
        "cpu",
    ]);
    fails_with(
        &out,
        1,
        "stopped at step 4: 3 steps in a row had a non-finite loss or gradient",
    );
    let err = stderr(&out);
    assert!(
        err.contains("step_0000001.safetensors (step 1), is intact"),
        "{err}"
    );
    for s in 2..=4 {
        assert!(err.contains(&format!("step {s}: loss ")), "{err}");
    }
    assert!(err.contains("step skipped (3 in a row, 3 in all)"), "{err}");
    let names = checkpoint_names(&run);
    assert_eq!(names, ["latest.safetensors", "step_0000001.safetensors"]);
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let rows: Vec<Vec<&str>> = log.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        ["step", "loss", "lr", "grad_norm", "images_per_s", "skipped"]
    );
    // log_every is 10: one row, written at the stop, covering steps 1–4.
    assert_eq!(rows.len(), 2, "{log}");
    assert_eq!(rows[1][0], "4");
    assert_eq!(rows[1][5], "3");
    assert!(
        rows[1][1].parse::<f64>().unwrap().is_finite(),
        "the mean loss is over step 1 only"
    );
    let _ = std::fs::remove_dir_all(dir);
}
