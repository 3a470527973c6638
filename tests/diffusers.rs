//! Parity with diffusers, against goldens that diffusers itself computed
//! (`scripts/diffusers_goldens.py`, CPU, fp32), committed under `tests/fixtures/diffusers/`:
//! schedules, `set_timesteps`, single scheduler steps, UNet forwards of models shaped like the
//! published ones, 10-step DDIM runs, and diffusers running what `ddpm export` wrote.

use std::path::{Path, PathBuf};

use ddpm::diffusers::{self, scheduler, ExportOptions};
use ddpm::diffusion::sampler::apply_step;
use ddpm::diffusion::{SampleOptions, SamplerKind, Schedule, ScheduleConfig, StepCoeffs};
use ddpm::nn::UNet;
use ddpm::params::{decode_into, ParamArena};
use ddpm::sample::{generate, GenerateOptions};
use ddpm::train::Checkpoint;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

/// A fixture safetensors file: its tensors as f32 and its metadata.
struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn open(name: &str) -> Self {
        let path = fixtures().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn tensor(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor `{name}`"));
        let mut v = vec![0.0f32; t.shape().iter().product()];
        decode_into(t.dtype(), t.data(), &mut v).unwrap();
        v
    }

    fn meta(&self, key: &str) -> Value {
        let (_, header) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
        let text = &header.metadata().as_ref().unwrap()[key];
        serde_json::from_str(text).unwrap()
    }
}

/// max |got − want| / max(max |want|, floor): the error relative to the tensor's scale.
fn rel_err(got: &[f32], want: &[f32], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(floor, |m, &w| m.max(f64::from(w).abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs())
        .fold(0.0, f64::max)
        / scale
}

fn schedule_config(cfg: &Value) -> ScheduleConfig {
    scheduler::parse(cfg.clone())
        .unwrap_or_else(|e| panic!("{cfg}: {e}"))
        .config
}

#[test]
fn schedules_match_diffusers() {
    // diffusers builds β in f32 and takes the cumulative product in f32; ddpm works in f64 and
    // rounds once, so the two differ by f32 rounding: a few ulp in β, and in ᾱ the rounding
    // error of a 1000-term f32 product.
    let g = Golden::open("schedules.safetensors");
    let cases = g.meta("cases");
    let mut worst = (0.0f64, 0.0f64);
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let s = Schedule::new(schedule_config(&case["config"])).unwrap();
        let (betas, abar) = (
            g.tensor(&format!("{name}.betas")),
            g.tensor(&format!("{name}.alphas_cumprod")),
        );
        assert_eq!(s.betas().len(), betas.len(), "{name}: T");
        for t in 0..betas.len() {
            let eb = (f64::from(s.betas()[t]) - f64::from(betas[t])).abs() / f64::from(betas[t]);
            let ea = (s.alpha_bar(t) - f64::from(abar[t])).abs() / f64::from(abar[t]);
            assert!(
                eb <= 1e-6,
                "{name}: β[{t}] = {} vs diffusers {}",
                s.betas()[t],
                betas[t]
            );
            assert!(
                ea <= 2e-5,
                "{name}: ᾱ[{t}] = {} vs diffusers {}",
                s.alpha_bar(t),
                abar[t]
            );
            worst = (worst.0.max(eb), worst.1.max(ea));
        }
    }
    eprintln!(
        "schedules: max relative error β {:.1e}, ᾱ {:.1e}",
        worst.0, worst.1
    );
}

#[test]
fn timesteps_match_set_timesteps() {
    let text = std::fs::read_to_string(fixtures().join("timesteps.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() > 100);
    for case in &cases {
        let cfg = schedule_config(case);
        let s = Schedule::new(cfg.clone()).unwrap();
        let kind = match case["scheduler"].as_str().unwrap() {
            "DDIMScheduler" => SamplerKind::Ddim { eta: 0.0 },
            _ => SamplerKind::Ddpm,
        };
        let steps = case["steps"].as_u64().unwrap() as usize;
        let plan = SampleOptions::new(&cfg, kind, steps).plan(&s).unwrap();
        let got: Vec<u64> = plan.iter().map(|p| p.t as u64).collect();
        let want: Vec<u64> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn scheduler_steps_match_diffusers() {
    let g = Golden::open("steps.safetensors");
    let cases = g.meta("cases");
    // Largest errors: over all cases, and over steps from t > 1 (away from diffusers' f32
    // cancellation in 1 − ᾱ).
    let (mut worst, mut worst_away, mut final_noise_cases) = (0.0f64, 0.0f64, 0);
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let cfg = schedule_config(&case["config"]);
        let s = Schedule::new(cfg.clone()).unwrap();
        let ddim = case["scheduler"] == "DDIMScheduler";
        let kind = if ddim {
            SamplerKind::Ddim {
                eta: case["eta"].as_f64().unwrap(),
            }
        } else {
            SamplerKind::Ddpm
        };
        let mut opts = SampleOptions::new(&cfg, kind, case["steps"].as_u64().unwrap() as usize);
        opts.eps_from_clipped_x0 = case["use_clipped_model_output"] == true;
        let plan = opts.plan(&s).unwrap();
        let pair = plan[case["index"].as_u64().unwrap() as usize];
        assert_eq!(
            pair.t as u64,
            case["t"].as_u64().unwrap(),
            "case {i}: {case}"
        );

        let c = StepCoeffs::for_step(&s, &opts, pair);
        let get = |n: &str| g.tensor(&format!("{i}.{n}"));
        let (x, out, z) = (get("sample"), get("model_output"), get("noise"));
        let (mut prev, mut x0) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        apply_step(
            &c,
            &x,
            &out,
            (c.sigma > 0.0).then_some(&z[..]),
            &mut prev,
            &mut x0,
        );

        let mut want_prev = get("prev_sample");
        if !ddim && pair.prev.is_none() && pair.t > 0 {
            // DDPMScheduler adds noise on every step from t > 0, even the one that lands on x₀
            // (whose posterior has no variance). ddpm adds none there, as Algorithm 2 does; with
            // fixed_small diffusers' noise is √1e-20 and with fixed_large √(1 − ᾱₜ). Take it off.
            let var = match cfg.variance_type {
                ddpm::diffusion::VarianceType::FixedSmall => 1e-20,
                ddpm::diffusion::VarianceType::FixedLarge => 1.0 - s.alpha_bar(pair.t),
            };
            for (w, zi) in want_prev.iter_mut().zip(&z) {
                *w -= (var.sqrt() * f64::from(*zi)) as f32;
            }
            final_noise_cases += 1;
        }
        let e_x0 = rel_err(&x0, &get("pred_original_sample"), 1.0);
        let e_prev = rel_err(&prev, &want_prev, 1.0);
        // diffusers forms 1 − ᾱₜ and 1 − ᾱ_prev in f32: near t = 0 (1 − ᾱ₀ = 1e-4) that
        // subtraction alone is off by up to f32::EPSILON/(1 − ᾱ) relative, far more than ddpm's
        // f64 coefficients are. The tolerance adds exactly that rounding to 1e-5.
        let cancel = |abar: f64| f64::from(f32::EPSILON) / (1.0 - abar);
        let tol =
            1e-5 + cancel(s.alpha_bar(pair.t)) + pair.prev.map_or(0.0, |p| cancel(s.alpha_bar(p)));
        assert!(
            e_x0 <= tol && e_prev <= tol,
            "case {i} ({case}): x̂₀ error {e_x0:.2e}, x_prev error {e_prev:.2e}, tolerance {tol:.1e}"
        );
        worst = worst.max(e_x0).max(e_prev);
        if pair.t > 1 {
            worst_away = worst_away.max(e_x0).max(e_prev);
        }
    }
    assert!(
        final_noise_cases > 0,
        "the documented difference is exercised"
    );
    eprintln!(
        "scheduler steps: max error {worst:.1e} relative to max(|x|, 1); {worst_away:.1e} for t > 1"
    );
}

/// The UNet of a fixture directory, loaded through the importer.
fn load_model(dir: &Path) -> (UNet, ParamArena<f32>, diffusers::DiffusersModel) {
    let m = diffusers::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let net = UNet::new(m.config.clone()).unwrap();
    let mut p = ParamArena::<f32>::zeros(net.layout.clone());
    p.values_mut().copy_from_slice(&m.weights);
    (net, p, m)
}

fn labels_of(v: &Value) -> Option<Vec<u32>> {
    v.as_array()
        .map(|a| a.iter().map(|l| l.as_u64().unwrap() as u32).collect())
}

#[test]
fn unet_forward_matches_diffusers() {
    let g = Golden::open("unet_forward.safetensors");
    let cases = g.meta("cases");
    for (name, case) in cases.as_object().unwrap() {
        let (net, p, m) = load_model(&fixtures().join("models").join(name));
        if name == "cifar10-like" {
            assert!(
                m.renamed_keys > 0,
                "the cifar10-like fixture uses the old key names"
            );
        }
        let x = g.tensor(&format!("{name}.x"));
        let t: Vec<f32> = case["t"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as f32)
            .collect();
        let labels = labels_of(&case["labels"]);
        let y = net.predict(&p, &x, &t, labels.as_deref()).unwrap();
        let err = rel_err(&y, &g.tensor(&format!("{name}.out")), 0.0);
        eprintln!("{name}: UNet forward error {err:.1e} relative to max |out|");
        assert!(err <= 1e-4, "{name}: {err:.2e}");
    }
}

#[test]
fn ddim_10_steps_match_diffusers() {
    let g = Golden::open("ddim10.safetensors");
    let cases = g.meta("cases");
    for (name, case) in cases.as_object().unwrap() {
        let (net, p, m) = load_model(&fixtures().join("models").join(name));
        // The pipeline carries its DDIMScheduler; the bare UNet ran with the one the script used.
        let cfg = match &m.scheduler {
            Some(s) => {
                assert!(s.is_ddim());
                s.config.clone()
            }
            None => schedule_config(&case["scheduler"]),
        };
        let s = Schedule::new(cfg.clone()).unwrap();
        let mut sampler = SampleOptions::new(&cfg, SamplerKind::Ddim { eta: 0.0 }, 10);
        sampler.eps_from_clipped_x0 = false; // DDIMPipeline's default
        let noise = g.tensor(&format!("{name}.noise"));
        let num = noise.len() / net.input_shape(1).len();
        let opts = GenerateOptions {
            labels: labels_of(&case["labels"]),
            ..GenerateOptions::new(sampler, num, num, 0)
        };
        let got = generate(&net, &p, &s, &opts, Some(&noise), &mut |_, _| {}).unwrap();
        // `generate` returns images clamped to [-1, 1], as a pipeline's output is.
        let want: Vec<f32> = g
            .tensor(&format!("{name}.sample"))
            .iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect();
        let err = rel_err(&got, &want, 1.0);
        eprintln!("{name}: 10-step DDIM max error {err:.1e}");
        assert!(err <= 1e-3, "{name}: {err:.2e}");
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-diffusers-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn exported_checkpoints_run_in_diffusers_as_in_ddpm() {
    let ck = Checkpoint::load(&fixtures().join("export/checkpoint.safetensors")).unwrap();
    assert_ne!(
        ck.ema, ck.weights,
        "the fixture's EMA differs from its raw weights"
    );
    let dir = temp_dir("export");
    let out = dir.join("pipeline");
    let notes = diffusers::export(
        &out,
        &ck.model,
        &ck.ema,
        &ck.schedule,
        ExportOptions::default(),
    )
    .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let (net, p, m) = load_model(&out);
    assert_eq!(
        m.weights, ck.ema,
        "the export holds the EMA weights exactly"
    );
    assert_eq!(m.config.block_out_channels, ck.model.block_out_channels);
    assert_eq!(m.scheduler.as_ref().unwrap().config, ck.schedule);

    // What diffusers computed from the directory `ddpm export` wrote (scripts/diffusers_goldens.py).
    let g = Golden::open("export/forward.safetensors");
    let t: Vec<f32> = serde_json::from_value::<Vec<u32>>(g.meta("t"))
        .unwrap()
        .iter()
        .map(|&t| t as f32)
        .collect();
    let labels: Vec<u32> = serde_json::from_value(g.meta("labels")).unwrap();
    let y = net.predict(&p, &g.tensor("x"), &t, Some(&labels)).unwrap();
    let err = rel_err(&y, &g.tensor("out"), 0.0);
    eprintln!("export: forward error vs diffusers {err:.1e}");
    assert!(err <= 1e-4, "{err:.2e}");
    // diffusers read the exported scheduler config as the checkpoint's schedule.
    let s = Schedule::new(ck.schedule.clone()).unwrap();
    let abar: Vec<f32> = (0..s.num_timesteps())
        .map(|t| s.alpha_bar(t) as f32)
        .collect();
    let err = rel_err(&abar, &g.tensor("alphas_cumprod"), 0.0);
    assert!(
        err <= 2e-5,
        "exported schedule as diffusers reads it: {err:.2e}"
    );

    // A UNet-only export reads back the same, and an occupied --out is refused unless forced.
    let unet_only = dir.join("unet");
    let o = ExportOptions {
        unet_only: true,
        ..ExportOptions::default()
    };
    diffusers::export(&unet_only, &ck.model, &ck.ema, &ck.schedule, o).unwrap();
    assert_eq!(diffusers::load(&unet_only).unwrap().weights, ck.ema);
    let e = diffusers::export(&unet_only, &ck.model, &ck.weights, &ck.schedule, o).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    // --force replaces an earlier export, never an unrelated directory.
    let unrelated = dir.join("notes");
    std::fs::create_dir_all(&unrelated).unwrap();
    std::fs::write(unrelated.join("todo.txt"), "keep me").unwrap();
    let forced = ExportOptions {
        overwrite: true,
        ..o
    };
    let e = diffusers::export(&unrelated, &ck.model, &ck.ema, &ck.schedule, forced).unwrap_err();
    assert!(e.to_string().contains("not a diffusers directory"), "{e}");
    assert!(unrelated.join("todo.txt").is_file());
    diffusers::export(&unet_only, &ck.model, &ck.weights, &ck.schedule, forced).unwrap();
    assert_eq!(diffusers::load(&unet_only).unwrap().weights, ck.weights);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging directories left: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad directories: each error names the file and the field or tensor.

/// A copy of a fixture model directory to break.
fn copy_model(name: &str, tag: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    let dir = temp_dir(tag).join(name);
    copy(&fixtures().join("models").join(name), &dir);
    dir
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites a weights file through `f`, which edits the (name, dtype, shape, bytes) list.
fn edit_weights(
    path: &Path,
    f: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    f(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match diffusers::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
}

#[test]
fn unsupported_configs_are_named() {
    let cases: [(&str, Value, &str); 8] = [
        (
            "down_block_types",
            serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D"]),
            "CrossAttnDownBlock2D",
        ),
        (
            "resnet_time_scale_shift",
            "scale_shift".into(),
            "scale_shift",
        ),
        ("class_embed_type", "timestep".into(), "timestep"),
        ("time_embedding_type", "fourier".into(), "fourier"),
        ("mid_block_type", Value::Null, "null"),
        ("sample_size", serde_json::json!([16, 8]), "square"),
        ("act_fn", "gelu".into(), "gelu"),
        ("attn_norm_num_groups", 5.into(), "48"),
    ];
    for (field, value, detail) in cases {
        let dir = copy_model("cond-pipeline", field);
        let cfg = dir.join("unet/config.json");
        edit_json(&cfg, |v| v[field] = value.clone());
        let e = load_err(&dir);
        assert_names(&e, &["unet/config.json", field, detail]);
    }
    let dir = copy_model("cifar10-like", "no-sample-size");
    edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("sample_size");
    });
    assert_names(&load_err(&dir), &["config.json", "sample_size", "missing"]);
    edit_json(&dir.join("config.json"), |v| {
        v["_class_name"] = "UNet2DConditionModel".into()
    });
    assert_names(&load_err(&dir), &["UNet2DConditionModel"]);
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert_names(&load_err(&dir), &["config.json", "not valid JSON"]);
}

#[test]
fn bad_weights_are_named() {
    type Edit = fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>);
    let cases: [(&str, Edit, &[&str]); 5] = [
        (
            "missing",
            |t| t.retain(|(n, ..)| n != "conv_out.bias"),
            &["missing tensor `conv_out.bias`"],
        ),
        (
            "shape",
            |t| {
                let w = t.iter_mut().find(|(n, ..)| n == "conv_in.weight").unwrap();
                w.2 = vec![w.2[0] / 2, w.2[1] * 2, w.2[2], w.2[3]];
            },
            &["conv_in.weight", "shape"],
        ),
        (
            "extra",
            |t| {
                t.push((
                    "lora.up.weight".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            },
            &["lora.up.weight", "not parameters"],
        ),
        (
            "dtype",
            |t| {
                let w = t.iter_mut().find(|(n, ..)| n == "conv_in.bias").unwrap();
                w.1 = safetensors::Dtype::I16;
            },
            &["conv_in.bias", "I16"],
        ),
        (
            "nan",
            |t| {
                let w = t.iter_mut().find(|(n, ..)| n == "conv_in.bias").unwrap();
                w.3[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
            },
            &["conv_in.bias", "NaN"],
        ),
    ];
    for (tag, edit, parts) in cases {
        let dir = copy_model("cond-pipeline", tag);
        edit_weights(&dir.join("unet/diffusion_pytorch_model.safetensors"), edit);
        let e = load_err(&dir);
        assert_names(&e, &["diffusion_pytorch_model.safetensors"]);
        assert_names(&e, parts);
    }
    // An old name and a new name for the same tensor.
    let dir = copy_model("cifar10-like", "both-names");
    edit_weights(&dir.join("diffusion_pytorch_model.safetensors"), |t| {
        let q = t
            .iter()
            .find(|(n, ..)| n == "mid_block.attentions.0.query.weight")
            .unwrap()
            .clone();
        t.push(("mid_block.attentions.0.to_q.weight".into(), q.1, q.2, q.3));
    });
    assert_names(&load_err(&dir), &["query.weight", "to_q.weight"]);
    // Not a safetensors file; a pickle only.
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    std::fs::write(&weights, b"\x80\x02}q\x00garbage").unwrap();
    assert_names(&load_err(&dir), &["not a valid safetensors file"]);
    std::fs::rename(&weights, dir.join("diffusion_pytorch_model.bin")).unwrap();
    assert_names(&load_err(&dir), &["diffusion_pytorch_model.bin", "pickle"]);
}

#[test]
fn flat_pipelines_as_published_in_2022_load() {
    // google/ddpm-* keep model_index.json, config.json, the weights and scheduler_config.json
    // side by side, without unet/ and scheduler/ folders.
    let dir = copy_model("cifar10-like", "flat");
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"],
            "safety_checker": [null, null]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
            "beta_end": 0.02, "num_train_timesteps": 1000, "clip_sample": true,
            "trained_betas": null, "variance_type": "fixed_large"}"#,
    )
    .unwrap();
    let flat = diffusers::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let nested = diffusers::load(&fixtures().join("models/cifar10-like")).unwrap();
    assert_eq!(flat.weights, nested.weights);
    let s = flat.scheduler.expect("the pipeline's scheduler");
    assert_eq!(
        s.config.variance_type,
        ddpm::diffusion::VarianceType::FixedLarge
    );
}

#[test]
fn unsupported_pipelines_and_schedulers_are_named() {
    let dir = copy_model("cond-pipeline", "pipeline");
    let index = dir.join("model_index.json");
    edit_json(&index, |v| {
        v["vqvae"] = serde_json::json!(["diffusers", "VQModel"])
    });
    assert_names(&load_err(&dir), &["model_index.json", "vqvae", "VQModel"]);
    edit_json(&index, |v| {
        v.as_object_mut().unwrap().remove("vqvae");
        v["unet"] = serde_json::json!(["diffusers", "UNet2DConditionModel"]);
    });
    assert_names(
        &load_err(&dir),
        &["model_index.json", "UNet2DConditionModel"],
    );
    edit_json(&index, |v| {
        v["unet"] = serde_json::json!(["diffusers", "UNet2DModel"])
    });
    let sched = dir.join("scheduler/scheduler_config.json");
    edit_json(&sched, |v| v["thresholding"] = true.into());
    assert_names(&load_err(&dir), &["scheduler_config.json", "thresholding"]);
    edit_json(&sched, |v| {
        v["thresholding"] = false.into();
        v["steps_offset"] = "one".into();
    });
    assert_names(&load_err(&dir), &["scheduler_config.json", "steps_offset"]);
    std::fs::remove_file(&sched).unwrap();
    assert_names(&load_err(&dir), &["scheduler_config.json", "cannot read"]);
    let not = temp_dir("not-a-model");
    assert_names(&load_err(&not), &["not a diffusers directory"]);
}

// ---------------------------------------------------------------------------------------------
// Samplers beyond DDIM, against diffusers running the same committed models (the `samplers`
// stage of scripts/diffusers_goldens.py, clip_sample = False throughout): EulerDiscreteScheduler
// and HeunDiscreteScheduler on Karras σ, DPMSolverMultistepScheduler (DPM-Solver++(2M)) on
// DDIM's timesteps, and DDIMInverseScheduler followed by DDIM η = 0 back.

use ddpm::diffusion::sampler::{
    inversion_evaluations, run_evaluations, sample as sample_with, sigma_of, ModelFn, SigmaSpacing,
};

/// The samplers goldens' cases of one kind, with their fixture model loaded.
fn sampler_cases(g: &Golden, kind: &str) -> Vec<(Value, UNet, ParamArena<f32>)> {
    let cases: Vec<_> = g
        .meta("cases")
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .map(|c| {
            let (net, p, _) =
                load_model(&fixtures().join("models").join(c["model"].as_str().unwrap()));
            (c.clone(), net, p)
        })
        .collect();
    assert_eq!(cases.len(), 2, "{kind}: one case per model");
    cases
}

/// A case's schedule, with clipping off as diffusers ran it.
fn unclipped_schedule(cfg: &Value) -> (ScheduleConfig, Schedule) {
    let mut cfg = schedule_config(cfg);
    cfg.clip_sample = false;
    let s = Schedule::new(cfg.clone()).unwrap();
    (cfg, s)
}

/// The fixture UNet as the sampler's model: [`UNet::predict`] under the case's labels.
fn unet_model<'a>(
    net: &'a UNet,
    p: &'a ParamArena<f32>,
    labels: Option<&'a [u32]>,
) -> Box<ModelFn<'a>> {
    Box::new(move |x, t, out| {
        out.copy_from_slice(&net.predict(p, x, t, labels)?);
        Ok(())
    })
}

/// max |got − want| / max(|want|, floor) elementwise.
fn max_rel(got: &[f64], want: &[f32], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g - f64::from(w)).abs() / f64::from(w).abs().max(floor))
        .fold(0.0, f64::max)
}

#[test]
fn euler_and_heun_on_karras_sigmas_match_diffusers() {
    let g = Golden::open("samplers.safetensors");
    for (tag, kind) in [
        ("euler_karras", SamplerKind::Euler),
        ("heun_karras", SamplerKind::Heun),
    ] {
        for (case, net, p) in sampler_cases(&g, tag) {
            let name = case["name"].as_str().unwrap();
            let get = |n: &str| g.tensor(&format!("{name}.{n}"));
            let (cfg, s) = unclipped_schedule(&case["config"]);
            let steps = case["steps"].as_u64().unwrap() as usize;
            let opts = SampleOptions {
                sigmas: Some(SigmaSpacing::Karras),
                ..SampleOptions::new(&cfg, kind, steps)
            };
            let nodes = opts.nodes(&s).unwrap();
            let evals = opts.evaluations(&s).unwrap();
            assert_eq!(
                evals.len() as u64,
                case["nfe"].as_u64().unwrap(),
                "{name}: evaluations"
            );

            // diffusers lists Heun's σ once per evaluation: σ₀, σ₁, σ₁, …, σ_{N−1}, σ_{N−1}, 0.
            let mut sigmas: Vec<f64> = match kind {
                SamplerKind::Heun => std::iter::once(nodes[0].sigma)
                    .chain(nodes[1..].iter().flat_map(|n| [n.sigma, n.sigma]))
                    .collect(),
                _ => nodes.iter().map(|n| n.sigma).collect(),
            };
            sigmas.push(0.0);
            // diffusers forms σ(0) = √((1 − ᾱ₀)/ᾱ₀) from an f32 ᾱ₀: rounding ᾱ₀ (≤ ε/4, ε the f32
            // epsilon) moves σ(0) by up to ε/(8(1 − ᾱ₀)) relative, and Karras node σᵢ by
            // (σ_min/σᵢ)^{1/ρ} times that (eq. 5 interpolates σ^{1/ρ}). The tolerance adds this, ×2.
            let want_sigmas = get("sigmas");
            let (s_min, cancel) = (
                nodes[nodes.len() - 1].sigma,
                f64::from(f32::EPSILON) / (8.0 * (1.0 - s.alpha_bar(0))),
            );
            let tol_sigma = |sg: f64| 1e-5 + 2.0 * (s_min / sg).powf(1.0 / 7.0) * cancel;
            assert_eq!(sigmas.len(), want_sigmas.len(), "{name}");
            let mut e_sigma = 0.0f64;
            for (i, (&got, &want)) in sigmas.iter().zip(&want_sigmas).enumerate() {
                if got == 0.0 {
                    assert_eq!(want, 0.0, "{name}: σ[{i}]");
                    continue;
                }
                let err = (got - f64::from(want)).abs() / f64::from(want);
                let tol = tol_sigma(got);
                assert!(
                    err <= tol,
                    "{name}: σ[{i}] {got:e} vs diffusers {want:e}: {err:.1e} > {tol:.1e}"
                );
                e_sigma = e_sigma.max(err);
            }
            // Timesteps (fractional, log-σ interpolated as diffusers' `_sigma_to_t`): one per
            // evaluation, each that of its σ; the σ tolerance carries over through the slope of
            // ln σ(t) between the training timesteps around it.
            let want_t = get("timesteps");
            assert_eq!(want_t.len(), evals.len(), "{name}");
            let mut e_t = 0.0f64;
            for (k, (e, &want)) in evals.iter().zip(&want_t).enumerate() {
                let lo = (e.t.floor() as usize).min(s.num_timesteps() - 2);
                let slope = (sigma_of(&s, lo + 1) / sigma_of(&s, lo)).ln();
                let tol = 1e-5 * e.t.max(1.0) + tol_sigma(sigmas[k]) / slope;
                let err = (e.t - f64::from(want)).abs();
                assert!(
                    err <= tol,
                    "{name}: evaluation {k} at t {} vs diffusers {want}: {err:.1e} > {tol:.1e}",
                    e.t
                );
                e_t = e_t.max(err / e.t.max(1.0));
            }
            let init = case["init_noise_sigma"].as_f64().unwrap();
            let e_init = (nodes[0].sigma - init).abs() / init;

            // diffusers' state is x̃ = xₜ √(1 + σ²), from x̃ = noise · σ_max; ours is xₜ.
            let smax = nodes[0].sigma;
            let mut x: Vec<f32> = get("noise")
                .iter()
                .map(|&n| (f64::from(n) * smax / (1.0 + smax * smax).sqrt()) as f32)
                .collect();
            let labels = labels_of(&case["labels"]);
            let item = net.input_shape(1).len();
            let ids: Vec<u64> = (0..(x.len() / item) as u64).collect();
            let mut model = unet_model(&net, &p, labels.as_deref());
            sample_with(&s, &opts, &mut x, item, &ids, 0, &mut *model, &mut |_| {}).unwrap();
            let want = get("sample");
            let err = rel_err(&x, &want, 1.0);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            eprintln!(
                "{name}: σ error {e_sigma:.1e} (σ(0)'s f32 rounding in diffusers: up to \
                 {cancel:.1e}), init_noise_sigma error {e_init:.1e}, timestep error {e_t:.1e} \
                 relative to max(t, 1); sample error {err:.1e} relative to max |sample| = \
                 {scale:.3}"
            );
            assert!(e_init <= 1e-5, "{name}: σ_max {e_init:e}");
            assert!(err <= 1e-3, "{name}: sample {err:e}");
        }
    }
}

#[test]
fn dpm_solver_2m_matches_diffusers() {
    let g = Golden::open("samplers.safetensors");
    for (case, net, p) in sampler_cases(&g, "dpmpp_2m") {
        let name = case["name"].as_str().unwrap();
        let get = |n: &str| g.tensor(&format!("{name}.{n}"));
        // diffusers ran it on the timesteps its DDIMScheduler visits for this config.
        let (cfg, s) = unclipped_schedule(&case["ddim_config"]);
        let steps = case["steps"].as_u64().unwrap() as usize;
        let opts = SampleOptions {
            sigmas: Some(SigmaSpacing::Timesteps),
            ..SampleOptions::new(&cfg, SamplerKind::DpmSolver2M, steps)
        };
        let t: Vec<f64> = opts.nodes(&s).unwrap().iter().map(|n| n.t).collect();
        let want_t: Vec<f64> = serde_json::from_value(case["set_timesteps"].clone()).unwrap();
        assert_eq!(t, want_t, "{name}");
        assert_eq!(max_rel(&t, &get("timesteps"), 1.0), 0.0, "{name}");
        let evals = opts.evaluations(&s).unwrap();
        assert_eq!(evals.len() as u64, case["nfe"].as_u64().unwrap());

        // init_noise_sigma = 1: both states are xₜ.
        let mut x = get("noise");
        let labels = labels_of(&case["labels"]);
        let item = net.input_shape(1).len();
        let ids: Vec<u64> = (0..(x.len() / item) as u64).collect();
        let mut model = unet_model(&net, &p, labels.as_deref());
        sample_with(&s, &opts, &mut x, item, &ids, 0, &mut *model, &mut |_| {}).unwrap();
        let want = get("sample");
        let err = rel_err(&x, &want, 1.0);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: sample error {err:.1e} relative to max |sample| = {scale:.3}");
        assert!(err <= 1e-3, "{name}: {err:e}");
    }
}

#[test]
fn ddim_inversion_and_reconstruction_match_diffusers() {
    let g = Golden::open("samplers.safetensors");
    for (case, net, p) in sampler_cases(&g, "ddim_inverse") {
        let name = case["name"].as_str().unwrap();
        let get = |n: &str| g.tensor(&format!("{name}.{n}"));
        let labels = labels_of(&case["labels"]);
        let item = net.input_shape(1).len();
        let steps = case["steps"].as_u64().unwrap() as usize;

        let (cfg, s) = unclipped_schedule(&case["config"]);
        let opts = SampleOptions::new(&cfg, SamplerKind::Ddim { eta: 0.0 }, steps);
        let evals = inversion_evaluations(&s, &opts).unwrap();
        assert_eq!(evals.len() as u64, case["nfe"].as_u64().unwrap());
        let t: Vec<f64> = evals.iter().map(|e| e.t).collect();
        assert_eq!(max_rel(&t, &get("timesteps"), 1.0), 0.0, "{name}: {t:?}");
        let mut latent = get("image");
        let ids: Vec<u64> = (0..(latent.len() / item) as u64).collect();
        let mut model = unet_model(&net, &p, labels.as_deref());
        run_evaluations(
            &evals,
            false,
            &mut latent,
            item,
            &ids,
            0,
            &mut *model,
            &mut |_| {},
        )
        .unwrap();
        let want_latent = get("latent");
        let e_latent = rel_err(&latent, &want_latent, 1.0);

        // Back with DDIM η = 0 from diffusers' latent, so that the two comparisons are separate.
        let (cfg, s) = unclipped_schedule(&case["recon_config"]);
        assert_eq!(case["recon_eta"].as_f64(), Some(0.0));
        let opts = SampleOptions::new(&cfg, SamplerKind::Ddim { eta: 0.0 }, steps);
        let mut recon = want_latent.clone();
        sample_with(
            &s,
            &opts,
            &mut recon,
            item,
            &ids,
            0,
            &mut *model,
            &mut |_| {},
        )
        .unwrap();
        let want_recon = get("recon");
        let e_recon = rel_err(&recon, &want_recon, 1.0);
        let max = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        eprintln!(
            "{name}: latent error {e_latent:.1e} (max |latent| {:.3}), reconstruction error \
             {e_recon:.1e} (max |recon| {:.3})",
            max(&want_latent),
            max(&want_recon)
        );
        assert!(e_latent <= 1e-3, "{name}: latent {e_latent:e}");
        assert!(e_recon <= 1e-3, "{name}: reconstruction {e_recon:e}");
    }
}
