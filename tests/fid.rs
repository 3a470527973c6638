//! `ddpm fid` against pytorch-fid: goldens from pytorch-fid's own InceptionV3 with seeded random
//! weights (scripts/fid_goldens.py, tests/fixtures/fid/), and the bad-input errors.
//!
//! The weights are not in the fixtures (87 MB): both sides draw them from the same closed-form
//! formula (`random_value`, a port of the script's), checked first against values the script
//! recorded. The forward at 299×299 costs about 5.7 GFLOP per image, so the feature test runs a
//! few images (DDPM_FID_TEST_IMAGES=all runs all 32).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{fails_with, ok};
use ddpm::metrics::fid::{feature_fit, fid_from_features, kid, read_stats, KidOptions};
use ddpm::metrics::fid_input::{self, Side};
use ddpm::metrics::inception::{layer_specs, FidInception, FEATURES, INPUT_SIZE};
use ddpm::metrics::npz::read_npz;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid")
}

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("goldens.json")).expect("goldens.json");
    serde_json::from_str(&text).expect("goldens.json parses")
}

/// pytorch-fid's features of side `a` or `b` (16 × 2048).
fn golden_features(side: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("goldens.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(&format!("features_{side}")).unwrap();
    assert_eq!(t.shape(), [16, FEATURES]);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// scripts/fid_goldens.py's `random_value`: every tensor's values from its name alone.
fn random_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let key = fnv1a64(name);
    let n: usize = shape.iter().product();
    (1..=n as u64)
        .map(|i| {
            let x = key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = ((z ^ (z >> 31)) >> 40) as f64 / (1u64 << 24) as f64;
            let v = if name.ends_with(".conv.weight") {
                let fan_in: usize = shape[1..].iter().product();
                (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt()
            } else if name.ends_with(".bn.weight") {
                0.7 + 0.6 * u
            } else if name.ends_with(".bn.bias") || name.ends_with(".bn.running_mean") {
                0.2 * (2.0 * u - 1.0)
            } else if name.ends_with(".bn.running_var") {
                0.75 + 0.5 * u
            } else {
                panic!("no formula for {name}")
            };
            v as f32
        })
        .collect()
}

/// Every tensor the network reads, in the converter's naming.
fn tensor_shapes() -> Vec<(String, Vec<usize>)> {
    layer_specs()
        .into_iter()
        .flat_map(|(name, spec)| {
            let c = spec.c_out;
            let mut v = vec![(format!("{name}.conv.weight"), spec.weight_shape().to_vec())];
            for part in ["weight", "bias", "running_mean", "running_var"] {
                v.push((format!("{name}.bn.{part}"), vec![c]));
            }
            v
        })
        .collect()
}

/// Writes `tensors` as safetensors to `path`.
fn write_weights(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let view = TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(v)).unwrap();
            (n.as_str(), view)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "ddpm-fid-inception-v1".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn random_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    tensor_shapes()
        .into_iter()
        .map(|(n, s)| {
            let v = random_value(&n, &s);
            (n, s, v)
        })
        .collect()
}

/// A fresh directory under Cargo's temporary directory for integration tests (inside target/),
/// removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> Scratch {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fid-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// The random-weight file (87 MB), written once per test process to one place in target/
/// (through a rename, so test processes running at once never see half a file; every process
/// writes the same bytes).
fn weights_file() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("fid-random-inception.safetensors");
        let tmp = dir.join(format!(".fid-random-inception.{}", std::process::id()));
        write_weights(&tmp, &random_tensors());
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
}

#[test]
fn weight_formula_matches_the_goldens_script() {
    let g = goldens();
    let checks = g["weight_checks"].as_object().unwrap();
    assert!(checks.len() >= 4);
    let shapes: HashMap<String, Vec<usize>> = tensor_shapes().into_iter().collect();
    assert_eq!(shapes.len(), 94 * 5);
    for (name, c) in checks {
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shapes[name], shape, "{name}: the network's shape");
        let v = random_value(name, &shape);
        for (i, want) in c["first"].as_array().unwrap().iter().enumerate() {
            assert_eq!(v[i], want.as_f64().unwrap() as f32, "{name}[{i}]");
        }
        let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let want = c["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: {sum} vs {want}"
        );
    }
}

/// Features of images `which` of a fixture side, through ddpm's whole input path (folder
/// reading, RGB conversion, resize, scaling) and network.
fn our_features(net: &FidInception, side: &str, which: &[usize]) -> Vec<f32> {
    let dir = fixtures().join(side);
    let Side::Images(set) = fid_input::open(dir.to_str().unwrap(), "SAMPLES").unwrap() else {
        panic!("a folder is images");
    };
    assert_eq!(set.len(), 16);
    let slot = 3 * INPUT_SIZE * INPUT_SIZE;
    let mut x = vec![0.0f32; which.len() * slot];
    for (s, &i) in x.chunks_exact_mut(slot).zip(which) {
        set.prepare(i, s).unwrap();
    }
    net.features(which.len(), x).unwrap()
}

#[test]
fn pool3_features_match_pytorch_fid() {
    let net = FidInception::load(weights_file()).unwrap();
    let all = std::env::var("DDPM_FID_TEST_IMAGES").is_ok_and(|v| v == "all");
    // Default: an RGB image of side a (32×32), and a grey one of side b (28×28, replicated).
    let cases: Vec<(&str, Vec<usize>)> = if all {
        vec![("a", (0..16).collect()), ("b", (0..16).collect())]
    } else {
        vec![("a", vec![0]), ("b", vec![13])]
    };
    for (side, which) in cases {
        let ours = our_features(&net, side, &which);
        let golden = golden_features(side);
        for (k, &i) in which.iter().enumerate() {
            let want = &golden[i * FEATURES..(i + 1) * FEATURES];
            let got = &ours[k * FEATURES..(k + 1) * FEATURES];
            // Relative to the image's largest feature (pool3 features are ≥ 0; some are 0).
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                scale > 0.1,
                "{side}[{i}]: features all but vanish ({scale})"
            );
            assert!(
                err <= 1e-4 * scale,
                "{side}[{i}]: max |ours − pytorch-fid| = {err:e}, {:.2e} of the largest feature {scale}",
                err / scale
            );
        }
    }
}

#[test]
fn fid_and_kid_match_pytorch_fid() {
    let g = goldens();
    let (a, b) = (golden_features("a"), golden_features("b"));
    let (fa, fb) = (
        feature_fit(&a, FEATURES).unwrap(),
        feature_fit(&b, FEATURES).unwrap(),
    );
    // The statistics pytorch-fid computed (np.mean, np.cov).
    for (i, want) in g["mu_a_first"].as_array().unwrap().iter().enumerate() {
        assert!((fa.mean[i] - want.as_f64().unwrap()).abs() < 1e-12);
    }
    let trace: f64 = (0..FEATURES).map(|i| fa.cov[i * FEATURES + i]).sum();
    let want = g["sigma_a_trace"].as_f64().unwrap();
    assert!((trace - want).abs() < 1e-9 * want);

    let fid = fid_from_features(&a, &b, FEATURES, &fa, &fb).unwrap();
    let want = g["fid"].as_f64().unwrap();
    assert!(
        (fid - want).abs() <= 1e-3 * want,
        "FID {fid} vs pytorch-fid's {want}"
    );
    let opts = KidOptions {
        subsets: 1,
        subset_size: 16,
        seed: 0,
    };
    let k = kid(&a, &b, FEATURES, &opts).unwrap();
    let want = g["kid"].as_f64().unwrap();
    assert!(
        (k.mean - want).abs() <= 1e-3 * want,
        "KID {} vs {want}",
        k.mean
    );
}

#[test]
fn numpy_statistics_files_are_read() {
    let g = goldens();
    for (file, key) in [
        ("stats_small_compressed.npz", "compressed"),
        ("stats_small_plain.npz", "plain"),
    ] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let arrays = read_npz(&bytes, &["mu", "sigma"]).unwrap();
        for (arr, name) in arrays.iter().zip(["mu", "sigma"]) {
            let want: Vec<f64> = g["small_stats"][key][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(arr.values, want, "{file} {name}");
        }
        let dim = arrays[0].values.len();
        let fit = read_stats(&fixtures().join(file), dim).unwrap();
        assert_eq!(fit.dim, dim);
    }
}

// ---- bad input ------------------------------------------------------------------------------

fn fid_cmd(args: &[&str], home: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .arg("fid")
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .expect("run ddpm")
}

fn side_a() -> String {
    fixtures().join("a").display().to_string()
}

#[test]
fn missing_weights_say_what_to_download_and_run() {
    let home = temp_dir("home");
    let out = fid_cmd(&[&side_a(), &side_a()], &home);
    fails_with(&out, 1, "pt_inception-2015-12-05-6726825d.pth");
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/",
        "scripts/convert_fid_inception.py",
        ".cache/ddpm/pt_inception-2015-12-05.safetensors",
        "--inception",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    let out = fid_cmd(
        &[
            &side_a(),
            &side_a(),
            "--inception",
            "/nonexistent/w.safetensors",
        ],
        &home,
    );
    fails_with(
        &out,
        1,
        "--inception /nonexistent/w.safetensors: no such file",
    );
    // A missing side is reported before the weights are looked for.
    let out = fid_cmd(&[&side_a(), "/nonexistent/ref.npz"], &home);
    fails_with(
        &out,
        1,
        "REFERENCE /nonexistent/ref.npz: no such file or directory",
    );
}

#[test]
fn weights_that_are_not_the_inception_name_the_tensor() {
    let dir = temp_dir("badweights");
    let home = temp_dir("home2");
    let mut tensors = random_tensors();
    // A tensor deep in the network missing.
    let gone = tensors
        .iter()
        .position(|t| t.0 == "Mixed_7c.branch_pool.bn.running_var")
        .unwrap();
    let removed = tensors.remove(gone);
    let missing = dir.join("missing.safetensors");
    write_weights(&missing, &tensors);
    let stats = dir.join("stats.npz");
    let out = fid_cmd(
        &[
            &side_a(),
            &side_a(),
            "--inception",
            missing.to_str().unwrap(),
            "--save-stats",
            stats.to_str().unwrap(),
        ],
        &home,
    );
    fails_with(
        &out,
        1,
        "tensor `Mixed_7c.branch_pool.bn.running_var` is missing",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.safetensors"));
    assert!(!stats.exists(), "nothing is written after an error");
    tensors.insert(gone, removed);
    // A 1×7 kernel stored as 7×1.
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == "Mixed_6b.branch7x7_2.conv.weight")
        .unwrap();
    assert_eq!(t.1, [128, 128, 1, 7]);
    t.1 = vec![128, 128, 7, 1];
    let shaped = dir.join("shaped.safetensors");
    write_weights(&shaped, &tensors);
    let out = fid_cmd(
        &[
            &side_a(),
            &side_a(),
            "--inception",
            shaped.to_str().unwrap(),
        ],
        &home,
    );
    fails_with(
        &out,
        1,
        "tensor `Mixed_6b.branch7x7_2.conv.weight` has shape [128, 128, 7, 1], expected [128, 128, 1, 7]",
    );
    // Not safetensors at all; a PyTorch .pth (a zip).
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not weights").unwrap();
    let out = fid_cmd(
        &[&side_a(), &side_a(), "--inception", junk.to_str().unwrap()],
        &home,
    );
    fails_with(&out, 1, "not a safetensors file");
    let pth = dir.join("pt_inception.pth");
    std::fs::write(&pth, b"PK\x03\x04 a zip").unwrap();
    let out = fid_cmd(
        &[&side_a(), &side_a(), "--inception", pth.to_str().unwrap()],
        &home,
    );
    fails_with(&out, 1, "convert_fid_inception.py");
}

#[test]
fn bad_sides_are_named_before_any_work() {
    let dir = temp_dir("badsides");
    let home = temp_dir("home3");
    let w = weights_file().to_str().unwrap().to_string();
    // One image.
    let one = dir.join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(fixtures().join("a/00.png"), one.join("00.png")).unwrap();
    let out = fid_cmd(
        &[&side_a(), one.to_str().unwrap(), "--inception", &w],
        &home,
    );
    fails_with(&out, 1, "REFERENCE");
    fails_with(&out, 1, "1 image found, at least 2 are needed");
    // An unreadable image among good ones.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["00.png", "01.png"] {
        std::fs::copy(fixtures().join("a").join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("02.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let stats = dir.join("s.npz");
    let out = fid_cmd(
        &[
            broken.to_str().unwrap(),
            &side_a(),
            "--inception",
            &w,
            "--save-stats",
            stats.to_str().unwrap(),
        ],
        &home,
    );
    fails_with(&out, 1, "02.png");
    assert!(!stats.exists());
    // A statistics file of the wrong dimension.
    let small = fixtures().join("stats_small_compressed.npz");
    let out = fid_cmd(
        &[&side_a(), small.to_str().unwrap(), "--inception", &w],
        &home,
    );
    fails_with(&out, 1, "stats_small_compressed.npz: mu has shape (3,) and sigma (3, 3), expected (2048,) and (2048, 2048)");
    // Not a statistics file, though named .npz.
    let fake = dir.join("fake.npz");
    std::fs::write(&fake, b"text").unwrap();
    let out = fid_cmd(
        &[&side_a(), fake.to_str().unwrap(), "--inception", &w],
        &home,
    );
    fails_with(&out, 1, "fake.npz: not a statistics file");
    // A raw tensor without `sample`.
    let raw = dir.join("raw.safetensors");
    write_weights(&raw, &[("noise".into(), vec![2, 3, 4, 4], vec![0.0; 96])]);
    let out = fid_cmd(
        &[raw.to_str().unwrap(), &side_a(), "--inception", &w],
        &home,
    );
    fails_with(&out, 1, "SAMPLES");
    fails_with(&out, 1, "no tensor `sample` (it holds `noise`)");
    // Nothing there.
    let out = fid_cmd(
        &["/nonexistent/samples", &side_a(), "--inception", &w],
        &home,
    );
    fails_with(
        &out,
        1,
        "SAMPLES /nonexistent/samples: no such file or directory",
    );
}

#[test]
fn usage_errors() {
    let home = temp_dir("home4");
    let out = fid_cmd(&[&side_a(), &side_a(), "--device", "cuda"], &home);
    fails_with(&out, 2, "runs the Inception on the CPU for now");
    let out = fid_cmd(&[&side_a()], &home);
    fails_with(&out, 2, "nothing to do");
    let small = fixtures().join("stats_small_plain.npz");
    let x = home.join("x.npz");
    let out = fid_cmd(
        &[small.to_str().unwrap(), "--save-stats", x.to_str().unwrap()],
        &home,
    );
    fails_with(&out, 2, "already a statistics file");
    assert!(!x.exists());
    let out = fid_cmd(
        &[&side_a(), "--save-stats", "/nonexistent/dir/x.npz"],
        &home,
    );
    fails_with(&out, 2, "--save-stats /nonexistent/dir/x.npz");
    let out = fid_cmd(&[&side_a(), "--kid-subset-size", "1"], &home);
    fails_with(&out, 2, "at least 2");
}

/// The whole command on the fixture folders, against the goldens: features through the CLI,
/// FID and KID printed, statistics written and read back.
#[test]
fn command_end_to_end_on_a_few_images() {
    let dir = temp_dir("e2e");
    let home = temp_dir("home5");
    // Two images per side keeps the forward short; FID/KID then differ from the goldens (which
    // use 16), so compare with the library on pytorch-fid's features of the same images.
    let (sa, sb) = (dir.join("a"), dir.join("b"));
    for (src, dst, files) in [
        ("a", &sa, ["00.png", "01.png"]),
        ("b", &sb, ["12.png", "13.png"]),
    ] {
        std::fs::create_dir_all(dst).unwrap();
        for f in files {
            std::fs::copy(fixtures().join(src).join(f), dst.join(f)).unwrap();
        }
    }
    let (stats_a, stats_b) = (dir.join("a.npz"), dir.join("b.npz"));
    let out = ddpm_json(
        &[
            sa.to_str().unwrap(),
            sb.to_str().unwrap(),
            "--inception",
            weights_file().to_str().unwrap(),
            "--save-stats",
            stats_a.to_str().unwrap(),
            "--save-reference-stats",
            stats_b.to_str().unwrap(),
            "--batch-size",
            "3",
        ],
        &home,
    );
    let (ga, gb) = (golden_features("a"), golden_features("b"));
    let a: Vec<f32> = ga[..2 * FEATURES].to_vec();
    let b: Vec<f32> = gb[12 * FEATURES..14 * FEATURES].to_vec();
    let (fa, fb) = (
        feature_fit(&a, FEATURES).unwrap(),
        feature_fit(&b, FEATURES).unwrap(),
    );
    let want = fid_from_features(&a, &b, FEATURES, &fa, &fb).unwrap();
    let fid = out["fid"].as_f64().unwrap();
    assert!((fid - want).abs() <= 1e-3 * want, "FID {fid} vs {want}");
    let want_kid = kid(&a, &b, FEATURES, &KidOptions::default()).unwrap();
    let k = out["kid"].as_f64().unwrap();
    assert!(
        (k - want_kid.mean).abs() <= 1e-3 * want_kid.mean.abs(),
        "KID {k} vs {}",
        want_kid.mean
    );
    assert_eq!(out["kid_subset_size"], 2);
    assert_eq!(out["samples"]["images"], 2);
    let back = read_stats(&stats_a, FEATURES).unwrap();
    for (x, y) in back.mean.iter().zip(&fa.mean) {
        assert!((x - y).abs() <= 1e-4 * fa.mean.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    }
    assert!(read_stats(&stats_b, FEATURES).is_ok());
}

fn ddpm_json(args: &[&str], home: &Path) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet"]);
    let out = fid_cmd(&all, home);
    let stdout = ok(&out);
    serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON on the last line")
}

/// The network input slots of every image of `arg`.
fn slots(arg: &Path) -> Vec<Vec<f32>> {
    let Side::Images(set) = fid_input::open(arg.to_str().unwrap(), "SAMPLES").unwrap() else {
        panic!("{}: expected images", arg.display());
    };
    (0..set.len())
        .map(|i| {
            let mut s = vec![0.0f32; 3 * INPUT_SIZE * INPUT_SIZE];
            set.prepare(i, &mut s).unwrap();
            s
        })
        .collect()
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn every_input_form_gives_the_same_network_input() {
    let dir = temp_dir("forms");
    // Three 32×32 RGB images as PNGs, a CIFAR-10 batch, and a --save-raw tensor.
    let pixels: Vec<Vec<u8>> = (0..3u32)
        .map(|i| {
            (0..3 * 32 * 32u32)
                .map(|p| ((p * 7 + i * 40) % 251) as u8)
                .collect()
        })
        .collect();
    let png = dir.join("png");
    std::fs::create_dir_all(&png).unwrap();
    let mut cifar = Vec::new();
    let mut raw = Vec::new();
    for (i, planes) in pixels.iter().enumerate() {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            let p = (y * 32 + x) as usize;
            image::Rgb([planes[p], planes[1024 + p], planes[2048 + p]])
        });
        img.save(png.join(format!("{i}.png"))).unwrap();
        cifar.push(i as u8);
        cifar.extend_from_slice(planes);
        raw.extend(planes.iter().map(|&v| f32::from(v) / 255.0 * 2.0 - 1.0));
    }
    let batch = dir.join("data_batch_1.bin");
    std::fs::write(&batch, &cifar).unwrap();
    let raw_file = dir.join("raw.safetensors");
    write_weights(&raw_file, &[("sample".into(), vec![3, 3, 32, 32], raw)]);
    let want = slots(&png);
    assert_eq!(slots(&batch), want, "CIFAR-10 batch vs PNGs");
    for (a, b) in slots(&raw_file).iter().zip(&want) {
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-6, "raw tensor vs PNGs: {err}");
    }
    // Grey: MNIST-style IDX (6×6 here, read at its own size) vs grey PNGs vs a 1-channel raw.
    let grey: Vec<u8> = (0..2 * 36u32).map(|p| (p * 3) as u8).collect();
    let mnist = dir.join("mnist");
    let grey_png = dir.join("grey");
    std::fs::create_dir_all(&mnist).unwrap();
    std::fs::create_dir_all(&grey_png).unwrap();
    std::fs::write(
        mnist.join("train-images-idx3-ubyte"),
        idx(0x803, &[2, 6, 6], &grey),
    )
    .unwrap();
    std::fs::write(
        mnist.join("train-labels-idx1-ubyte"),
        idx(0x801, &[2], &[0, 1]),
    )
    .unwrap();
    for i in 0..2 {
        let img = image::GrayImage::from_raw(6, 6, grey[i * 36..(i + 1) * 36].to_vec()).unwrap();
        img.save(grey_png.join(format!("{i}.png"))).unwrap();
    }
    let want = slots(&grey_png);
    assert_eq!(slots(&mnist), want, "MNIST vs grey PNGs");
    // Every plane of a grey image is the same.
    let plane = INPUT_SIZE * INPUT_SIZE;
    assert_eq!(want[0][..plane], want[0][plane..2 * plane]);
}
