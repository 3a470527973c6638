//! Property tests ("fuzzing") of every parser of files and settings: checkpoints, IDX and
//! CIFAR-10 files, UNet / schedule / training / diffusers configs, diffusers directories and
//! data source strings. Arbitrary bytes and mutations of valid inputs must never panic,
//! overflow or ask for an absurd allocation: each input either loads, or is refused with an
//! error that names the file (and, for a config, the field). Where an independent oracle is
//! cheap (IDX, CIFAR-10, header lengths) the outcome itself is checked, and each property of
//! mutated valid inputs checks that they still reach the deep code paths often.
//!
//! Runs are deterministic: a fixed seed (`PROPTEST_RNG_SEED=N` picks another, and
//! `PROPTEST_CASES=N` sets every property's case count, for a longer hunt). Nothing is written
//! into the repository: failure persistence is off and scratch files live under the system
//! temporary directory, removed after each case.

use std::cell::Cell;
use std::fmt::Debug;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use ddpm::data::{cifar10, mnist, DataSpec};
use ddpm::diffusers::{self, ExportOptions};
use ddpm::diffusion::{Schedule, ScheduleConfig};
use ddpm::nn::{UNet, UNetConfig};
use ddpm::optim::{AdamW, Ema};
use ddpm::train::{Checkpoint, TrainConfig, Trainer};

// ---------------------------------------------------------------------------------------------
// Harness

/// The seed of every property unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x0dd9_f022;

/// A runner configuration: `cases` cases (or `PROPTEST_CASES`), a fixed seed, no files.
fn config(cases: u32) -> ProptestConfig {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env("PROPTEST_CASES").map_or(cases, |c| c as u32),
        rng_seed: RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(SEED)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `test` on `cases` inputs drawn from `strategy`; a failure (an assertion or a panic
/// inside a parser) is shrunk to a minimal input and reported with it.
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: Debug,
{
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// Counts outcomes of a property, to check that mutated inputs reach deep code paths.
#[derive(Default)]
struct Tally {
    ok: Cell<u32>,
    err: Cell<u32>,
}

impl Tally {
    fn add<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.ok } else { &self.err };
        c.set(c.get() + 1);
    }
    /// Both outcomes make up at least `min_share` of the cases.
    fn assert_both(&self, what: &str, min_share: f64) {
        let (ok, err) = (self.ok.get(), self.err.get());
        eprintln!("{what}: {ok} loaded, {err} refused");
        let n = f64::from(ok + err);
        assert!(
            f64::from(ok) >= min_share * n && f64::from(err) >= min_share * n,
            "{what}: {ok} inputs loaded and {err} were refused; the mutations should give at \
             least {:.0}% of each",
            100.0 * min_share
        );
    }
}

/// A fresh scratch directory, removed (with its content) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ddpm-fuzz-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Fails the case unless `msg` mentions `path` (its full display form).
fn names_path(msg: &str, path: &Path) -> Result<(), TestCaseError> {
    let p = path.display().to_string();
    prop_assert!(msg.contains(&p), "the error does not name {p}: {msg}");
    Ok(())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Strategies shared by several properties

/// Integers that probe limits: small ones, powers of two and their neighbours, and extremes.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..=70,
        2 => (0u32..64).prop_map(|s| 1u64 << s),
        1 => (0u32..64, -2i64..=2).prop_map(|(s, d)| (1u64 << s).wrapping_add(d as u64)),
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..=40,
        2 => (0u32..32).prop_map(|s| 1u32 << s),
        1 => Just(u32::MAX),
        1 => Just(u32::MAX - 1),
        1 => any::<u32>(),
    ]
}

/// Floats that probe limits: zero, signs, tiny and huge magnitudes, fractions, integers.
fn interesting_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(-1.0),
        Just(0.5),
        Just(1e-300),
        Just(1e300),
        Just(-1e300),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        0.0..1.0f64,
        -10.0..10.0f64,
        any::<f64>().prop_filter("finite (JSON has no NaN or ∞)", |f| f.is_finite()),
    ]
}

/// A JSON leaf: null, a boolean, an interesting number (integer, negative, float) or a string.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        interesting_u64().prop_map(Value::from),
        interesting_u64().prop_map(|v| Value::from((v as i64).wrapping_neg())),
        interesting_f64().prop_map(Value::from),
        "[a-zA-Z0-9_ ]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Any JSON value: leaves, and arrays and objects nested up to 3 deep.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Text that is sometimes JSON and often almost JSON: for parsers of JSON text.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        (json_value(), any::<Index>(), 1usize..4).prop_map(|(v, at, k)| {
            // A JSON text with a few characters cut out somewhere.
            let chars: Vec<char> = v.to_string().chars().collect();
            let i = at.index(chars.len().max(1)).min(chars.len());
            let j = (i + k).min(chars.len());
            chars[..i].iter().chain(&chars[j..]).collect()
        }),
        Just("1e400".to_string()),
        Just("[".repeat(200)),
        Just("{\"a\":".repeat(200)),
    ]
}

/// Replaces (or adds, or removes) one key of a JSON object.
#[derive(Clone, Debug)]
enum FieldEdit {
    Set(String, Value),
    Remove(String),
}

impl FieldEdit {
    fn apply(&self, obj: &mut Map<String, Value>) {
        match self {
            Self::Set(k, v) => {
                obj.insert(k.clone(), v.clone());
            }
            Self::Remove(k) => {
                obj.remove(k);
            }
        }
    }
    fn key(&self) -> &str {
        match self {
            Self::Set(k, _) | Self::Remove(k) => k,
        }
    }
}

/// An edit of one of `keys` (or of a new key) to `values`, or its removal.
fn field_edit(keys: Vec<String>, values: BoxedStrategy<Value>) -> impl Strategy<Value = FieldEdit> {
    let key = prop_oneof![
        8 => prop::sample::select(keys),
        1 => "[a-z_]{1,12}",
    ];
    prop_oneof![
        6 => (key.clone(), values).prop_map(|(k, v)| FieldEdit::Set(k, v)),
        1 => key.prop_map(FieldEdit::Remove),
    ]
}

fn keys_of(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/// A small model with every kind of layer: two levels, attention, a 1×1 shortcut, classes.
const SMALL_MODEL: &str = r#"{
  "sample_size": 4, "in_channels": 3, "out_channels": 3,
  "block_out_channels": [2, 4], "layers_per_block": 1,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "norm_num_groups": 2, "attention_head_dim": null, "dropout": 0.1, "num_class_embeds": 3
}"#;

fn small_model() -> UNetConfig {
    UNetConfig::from_json(SMALL_MODEL).unwrap()
}

/// The bytes of a valid checkpoint of [`SMALL_MODEL`], written once through the public API.
fn checkpoint_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let train = TrainConfig {
            batch_size: 2,
            steps: 10,
            seed: 7,
            ..TrainConfig::default()
        };
        let trainer = Trainer::new(small_model(), ScheduleConfig::default(), train).unwrap();
        let dir = Scratch::new("ck-base");
        let path = dir.0.join("base.safetensors");
        trainer.checkpoint().save(&path).unwrap();
        fs::read(&path).unwrap()
    })
}

/// A checkpoint split into its parts: header length, header JSON, tensor data.
fn split_checkpoint(bytes: &[u8]) -> (usize, Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (n, header, &bytes[8 + n..])
}

/// Safetensors bytes from a header and data, the header padded with spaces to 8 bytes as the
/// writer does.
fn join_checkpoint(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_string(header).unwrap().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// Writes `bytes` as a checkpoint file and loads it; on error, checks the file is named.
fn load_checkpoint(bytes: &[u8]) -> Result<Result<Checkpoint, String>, TestCaseError> {
    let dir = Scratch::new("ck");
    let path = dir.write("ck.safetensors", bytes);
    match Checkpoint::load(&path) {
        Ok(ck) => Ok(Ok(ck)),
        Err(e) => {
            let msg = e.to_string();
            names_path(&msg, &path)?;
            Ok(Err(msg))
        }
    }
}

#[test]
fn checkpoint_fixture_loads() {
    let ck = load_checkpoint(checkpoint_bytes()).unwrap().unwrap();
    assert_eq!(ck.model, small_model());
    assert_eq!(ck.train.seed, 7);
}

/// Arbitrary bytes, with and without a plausible length prefix and JSON header.
#[test]
fn checkpoint_arbitrary_bytes_never_panic() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..2048),
        // A consistent length prefix, then JSON-ish text, then junk: gets past the prefix.
        (json_text(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(h, tail)| {
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend(h.bytes());
            b.extend(tail);
            b
        }),
    ];
    check(256, bytes, |b| {
        let r = load_checkpoint(&b)?;
        prop_assert!(r.is_err(), "arbitrary bytes loaded as a checkpoint");
        Ok(())
    });
}

/// A checkpoint cut short anywhere, or with bytes appended, never loads.
#[test]
fn checkpoint_truncated_or_extended_never_loads() {
    let full = checkpoint_bytes();
    let edit = prop_oneof![
        (0..full.len()).prop_map(|n| (n, vec![])),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(|tail| (usize::MAX, tail)),
    ];
    check(256, edit, |(keep, tail)| {
        let mut b = full[..keep.min(full.len())].to_vec();
        b.extend(tail);
        let r = load_checkpoint(&b)?;
        prop_assert!(r.is_err(), "a truncated or extended checkpoint loaded");
        Ok(())
    });
}

#[derive(Clone, Copy, Debug)]
enum Region {
    Prefix,
    Header,
    Data,
}

/// Flips 1–4 bytes inside one region: the 8-byte length prefix, the JSON header, or the tensor
/// data. A flip in the data is always caught (the checksum); a flip in the header may leave an
/// equivalent file (padding spaces) but must never panic.
#[test]
fn checkpoint_byte_flips_are_refused_or_harmless() {
    let full = checkpoint_bytes();
    let (n, _, _) = split_checkpoint(full);
    let region = prop_oneof![
        Just(Region::Prefix),
        Just(Region::Header),
        Just(Region::Data)
    ];
    let flips = prop::collection::vec((any::<Index>(), 1u8..=255), 1..5);
    let data_refused = Cell::new(0u32);
    let header = Tally::default();
    check(512, (region, flips), |(region, flips)| {
        let range = match region {
            Region::Prefix => 0..8,
            Region::Header => 8..8 + n,
            Region::Data => 8 + n..full.len(),
        };
        let mut b = full.to_vec();
        for (at, xor) in &flips {
            b[range.start + at.index(range.len())] ^= xor;
        }
        let r = load_checkpoint(&b)?;
        match region {
            Region::Data if b != full => {
                prop_assert!(r.is_err(), "flipped tensor data loaded");
                data_refused.set(data_refused.get() + 1);
            }
            Region::Header => header.add(&r),
            _ => {}
        }
        Ok(())
    });
    assert!(data_refused.get() > 0, "no case flipped the tensor data");
    assert!(header.err.get() > 0, "no header flip was refused");
}

/// The header length overwritten by any u64: only the true length loads.
#[test]
fn checkpoint_header_length_overwritten() {
    let full = checkpoint_bytes();
    let (n, _, _) = split_checkpoint(full);
    let len = prop_oneof![
        interesting_u64(),
        (-16i64..=16).prop_map(move |d| (n as i64 + d) as u64),
        Just(full.len() as u64),
        Just(full.len() as u64 - 8),
    ];
    let tally = Tally::default();
    check(256, len, |v| {
        let mut b = full.to_vec();
        b[..8].copy_from_slice(&v.to_le_bytes());
        let r = load_checkpoint(&b)?;
        prop_assert_eq!(r.is_ok(), v == n as u64, "header length {} (true {})", v, n);
        tally.add(&r);
        Ok(())
    });
    assert!(tally.ok.get() > 0, "the true header length was never drawn");
}

/// Metadata keys of a checkpoint, each a JSON text or a number.
const CK_KEYS: [&str; 8] = [
    "format",
    "step",
    "skipped_steps",
    "crc32",
    "model_config",
    "schedule_config",
    "train_config",
    "rng",
];

/// A new value for one metadata entry.
#[derive(Clone, Debug)]
enum MetaEdit {
    /// Any text.
    Text(String),
    /// The entry's JSON (a config) with one field edited.
    Field(FieldEdit),
    /// A model config with absurd sizes, e.g. 2⁴⁰ channels.
    Huge(FieldEdit),
}

fn meta_edit() -> impl Strategy<Value = (String, MetaEdit)> {
    let model_keys: Vec<String> = keys_of(&serde_json::to_value(small_model()).unwrap());
    let any_keys: Vec<String> = ["seed", "next_step", "num_train_timesteps", "batch_size"]
        .iter()
        .map(|s| s.to_string())
        .chain(model_keys.clone())
        .collect();
    let huge = prop_oneof![
        interesting_u64().prop_map(|c| FieldEdit::Set(
            "block_out_channels".into(),
            json!([c, c.wrapping_mul(2)])
        )),
        (
            prop::sample::select(vec![
                "sample_size",
                "in_channels",
                "out_channels",
                "layers_per_block",
                "time_embedding_dim",
                "num_class_embeds",
                "norm_num_groups",
            ]),
            interesting_u64()
        )
            .prop_map(|(k, v)| FieldEdit::Set(k.into(), json!(v))),
    ];
    let key = prop::sample::select(CK_KEYS.to_vec()).prop_map(String::from);
    prop_oneof![
        2 => (key.clone(), json_text()).prop_map(|(k, t)| (k, MetaEdit::Text(t))),
        1 => (key.clone(), interesting_u64()).prop_map(|(k, v)| (k, MetaEdit::Text(v.to_string()))),
        4 => (key, field_edit(any_keys, json_value())).prop_map(|(k, e)| (k, MetaEdit::Field(e))),
        2 => huge.prop_map(|e| ("model_config".to_string(), MetaEdit::Huge(e))),
    ]
}

/// One metadata entry replaced: an arbitrary text, or its JSON with one field changed (any
/// JSON value, huge sizes). The file stays a valid safetensors file, so every refusal must be
/// about the metadata or the tensors and name the entry, the field or the tensor at fault; an
/// edit every parser accepts is caught by the checksum, which covers the metadata.
#[test]
fn checkpoint_metadata_values_are_checked() {
    let full = checkpoint_bytes();
    let (_, header, data) = split_checkpoint(full);
    let tally = Tally::default();
    check(512, meta_edit(), |(key, edit)| {
        let mut h = header.clone();
        let meta = h["__metadata__"].as_object_mut().unwrap();
        let old = meta[&key].as_str().unwrap().to_string();
        let new = match &edit {
            MetaEdit::Text(t) => t.clone(),
            MetaEdit::Field(e) | MetaEdit::Huge(e) => match serde_json::from_str(&old) {
                Ok(Value::Object(mut obj)) => {
                    e.apply(&mut obj);
                    Value::Object(obj).to_string()
                }
                _ => return Ok(()), // not a JSON object (step, crc32): covered by Text
            },
        };
        meta.insert(key.clone(), Value::String(new.clone()));
        let r = load_checkpoint(&join_checkpoint(&h, data))?;
        // The CRC covers the metadata and is checked last: an edit refused only by it passed
        // every parser and check before, which is what this property is after.
        let passed = match &r {
            Ok(_) => Ok(()),
            Err(m) if m.contains("checksum mismatch") => Ok(()),
            Err(_) => Err(()),
        };
        tally.add(&passed);
        if let Err(msg) = &r {
            prop_assert!(
                !msg.contains("not a safetensors file") && !msg.contains("not a valid safetensors"),
                "the container was intact: {msg}"
            );
            let field = match &edit {
                MetaEdit::Field(e) | MetaEdit::Huge(e) => e.key().to_string(),
                MetaEdit::Text(_) => key.clone(),
            };
            let named = [
                key.as_str(),
                field.as_str(),
                "model config",
                "tensor",
                "checksum",
            ]
            .iter()
            .any(|w| msg.contains(w));
            prop_assert!(
                named,
                "`{key}` edited ({edit:?}); the error names neither: {msg}"
            );
        }
        if new == old {
            prop_assert!(r.is_ok(), "an unchanged entry was refused: {r:?}");
        }
        Ok(())
    });
    tally.assert_both("checkpoint metadata edits", 0.05);
}

/// A model config of 2⁴⁰ channels used to pass validation and then overflow the parameter
/// count (`ParamSpec::len`, "attempt to multiply with overflow") in `UNet::new`, called by
/// `Checkpoint::load` on the file's metadata.
#[test]
fn checkpoint_with_absurd_channel_count_is_refused() {
    let (_, mut header, data) = split_checkpoint(checkpoint_bytes());
    let mut model: Value = serde_json::to_value(small_model()).unwrap();
    model["block_out_channels"] = json!([1u64 << 40, 1u64 << 41]);
    header["__metadata__"]["model_config"] = Value::String(model.to_string());
    let msg = load_checkpoint(&join_checkpoint(&header, data))
        .unwrap()
        .unwrap_err();
    assert!(
        msg.contains("block_out_channels") && msg.contains("65536"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Safetensors containers (checkpoints, parameter files, diffusers weights)

/// A safetensors file whose eight U8 tensors of 2⁶¹ − 1 bytes each add up to 2⁶⁴ − 8 bytes of
/// data: `safetensors` 0.8 adds the header length to that unchecked, which overflows (a panic
/// where overflow checks are on, as in this test profile).
fn overflowing_safetensors() -> Vec<u8> {
    let size = (1u64 << 61) - 1;
    let tensors: Map<String, Value> = (0..8u64)
        .map(|i| {
            (
                format!("t{i}"),
                json!({"dtype": "U8", "shape": [size], "data_offsets": [i * size, (i + 1) * size]}),
            )
        })
        .collect();
    join_checkpoint(&Value::Object(tensors), &[])
}

#[test]
fn safetensors_offsets_that_overflow_are_refused() {
    let bytes = overflowing_safetensors();
    let dir = Scratch::new("st-overflow");
    let path = dir.write("x.safetensors", &bytes);
    let net = UNet::new(small_model()).unwrap();
    let mut params = net.init_params::<f32>(0);
    let msg = params.load_safetensors(&path).unwrap_err().to_string();
    assert!(msg.contains("x.safetensors"), "{msg}");
    // The same file as a diffusers UNet's weights.
    let cfg = serde_json::to_string(&small_model()).unwrap();
    dir.write("unet/config.json", cfg.as_bytes());
    dir.write("unet/diffusion_pytorch_model.safetensors", &bytes);
    let msg = diffusers::load(&dir.0.join("unet"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
}

/// The same file as a checkpoint: `Checkpoint::load` must check the offsets before
/// `SafeTensors::read_metadata`, which overflows as above (safetensors-0.8.0/src/tensor.rs:420).
#[test]
fn checkpoint_whose_offsets_overflow_is_refused() {
    let msg = load_checkpoint(&overflowing_safetensors())
        .unwrap()
        .unwrap_err();
    assert!(msg.contains("ends at byte"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// MNIST IDX

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// What a reader of the IDX format must make of an images file, worked out independently:
/// (N, rows, cols) when the magic is right, every dimension positive and the payload exactly
/// N·rows·cols bytes.
fn idx_images_oracle(b: &[u8]) -> Option<(usize, usize, usize)> {
    if b.len() < 16 || be_u32(b, 0) != mnist::IMAGES_MAGIC {
        return None;
    }
    let d = [be_u32(b, 4), be_u32(b, 8), be_u32(b, 12)];
    let bytes: u128 = d.iter().map(|&x| u128::from(x)).product();
    (d.iter().all(|&x| x > 0) && bytes == (b.len() - 16) as u128)
        .then(|| (d[0] as usize, d[1] as usize, d[2] as usize))
}

/// The labels of a labels file for `n` images: right magic, count n, payload n digits.
fn idx_labels_oracle(b: &[u8], n: usize) -> Option<Vec<u32>> {
    if b.len() < 8 || be_u32(b, 0) != mnist::LABELS_MAGIC {
        return None;
    }
    let count = be_u32(b, 4) as usize;
    let labels = &b[8..];
    (count == n && labels.len() == n && labels.iter().all(|&l| l <= 9))
        .then(|| labels.iter().map(|&l| u32::from(l)).collect())
}

/// The bytes a reader sees: gunzipped when they start with the gzip magic (None when that
/// fails).
fn gunzip_like_a_reader(b: &[u8]) -> Option<Vec<u8>> {
    if !b.starts_with(&[0x1f, 0x8b]) {
        return Some(b.to_vec());
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).ok()?;
    Some(out)
}

#[derive(Clone, Debug)]
struct IdxPair {
    images: Vec<u8>,
    labels: Vec<u8>,
    /// Training size and whether smaller images may be enlarged.
    size: usize,
    upscale: bool,
}

/// Writes the pair as MNIST files and loads them through `ddpm::data::load`, checking the
/// outcome against the oracles: which file an error names, and on success every label and the
/// dataset's geometry.
fn load_idx_pair(pair: &IdxPair) -> Result<bool, TestCaseError> {
    let dir = Scratch::new("idx");
    let gz = |b: &[u8]| {
        if b.starts_with(&[0x1f, 0x8b]) {
            ".gz"
        } else {
            ""
        }
    };
    let images = dir.write(
        &format!("train-images-idx3-ubyte{}", gz(&pair.images)),
        &pair.images,
    );
    let labels = dir.write(
        &format!("train-labels-idx1-ubyte{}", gz(&pair.labels)),
        &pair.labels,
    );
    let channels = if pair.size.is_multiple_of(8) { 3 } else { 1 };
    let spec = DataSpec::Mnist(dir.0.clone());
    let got = ddpm::data::load(&spec, pair.size, channels, pair.upscale);
    // Expected: the first file at fault, or the labels.
    let expect: Result<Vec<u32>, &Path> = (|| {
        let img = gunzip_like_a_reader(&pair.images).ok_or(images.as_path())?;
        let (n, rows, cols) = idx_images_oracle(&img).ok_or(images.as_path())?;
        let lab = gunzip_like_a_reader(&pair.labels).ok_or(labels.as_path())?;
        let l = idx_labels_oracle(&lab, n).ok_or(labels.as_path())?;
        if !pair.upscale && rows.min(cols) < pair.size {
            return Err(images.as_path());
        }
        Ok(l)
    })();
    match (got, expect) {
        (Ok(ds), Ok(labels)) => {
            prop_assert_eq!(ds.len(), labels.len());
            prop_assert_eq!((ds.size, ds.channels), (pair.size, channels));
            prop_assert_eq!(ds.labels.as_ref(), Some(&labels));
            Ok(true)
        }
        (Err(e), Err(path)) => {
            names_path(&e.to_string(), path)?;
            Ok(false)
        }
        (got, expect) => Err(TestCaseError::fail(format!(
            "loaded {:?}, expected {:?}",
            got.map(|d| d.len()).map_err(|e| e.to_string()),
            expect.map(|l| l.len())
        ))),
    }
}

/// A valid images/labels pair of `n` images of rows×cols.
fn valid_idx() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (1usize..4, 1u32..10, 1u32..10).prop_flat_map(|(n, rows, cols)| {
        let pixels = prop::collection::vec(any::<u8>(), n * (rows * cols) as usize);
        let labels = prop::collection::vec(0u8..=9, n);
        (pixels, labels).prop_map(move |(p, l)| {
            (
                idx(mnist::IMAGES_MAGIC, &[n as u32, rows, cols], &p),
                idx(mnist::LABELS_MAGIC, &[n as u32], &l),
            )
        })
    })
}

#[derive(Clone, Debug)]
enum IdxEdit {
    None,
    /// Header fields (magic, then the dimensions) of the images (true) or labels file.
    HeaderWord(bool, Vec<(Index, u32)>),
    Flip(bool, Index, u8),
    Truncate(bool, Index),
    Extend(bool, Vec<u8>),
    /// A label byte set to any value.
    Label(Index, u8),
}

fn idx_edit() -> impl Strategy<Value = IdxEdit> {
    prop_oneof![
        2 => Just(IdxEdit::None),
        4 => (any::<bool>(), prop::collection::vec((any::<Index>(), interesting_u32()), 1..4))
            .prop_map(|(f, w)| IdxEdit::HeaderWord(f, w)),
        2 => (any::<bool>(), any::<Index>(), 1u8..=255).prop_map(|(f, i, x)| IdxEdit::Flip(f, i, x)),
        1 => (any::<bool>(), any::<Index>()).prop_map(|(f, i)| IdxEdit::Truncate(f, i)),
        1 => (any::<bool>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(f, b)| IdxEdit::Extend(f, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| IdxEdit::Label(i, v)),
    ]
}

impl IdxEdit {
    fn apply(&self, images: &mut Vec<u8>, labels: &mut Vec<u8>) {
        let file = |f: bool| if f { 0 } else { 1 };
        let mut files = [images, labels];
        match self {
            Self::None => {}
            Self::HeaderWord(f, words) => {
                // Images: magic + 3 dimensions; labels: magic + 1.
                let n_words = if *f { 4 } else { 2 };
                let b = &mut files[file(*f)];
                for (at, v) in words {
                    let w = at.index(n_words);
                    b[4 * w..4 * w + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            Self::Flip(f, at, x) => {
                let b = &mut files[file(*f)];
                let i = at.index(b.len());
                b[i] ^= x;
            }
            Self::Truncate(f, at) => {
                let b = &mut files[file(*f)];
                let keep = at.index(b.len());
                b.truncate(keep);
            }
            Self::Extend(f, extra) => files[file(*f)].extend_from_slice(extra),
            Self::Label(at, v) => {
                let labels = &mut files[1];
                let i = 8 + at.index(labels.len() - 8);
                labels[i] = *v;
            }
        }
    }
}

/// How a file is stored: raw, gzipped, or gzipped and then damaged.
#[derive(Clone, Debug)]
enum Packing {
    Raw,
    Gz,
    GzFlip(Index, u8),
    GzTruncate(Index),
}

fn packing() -> impl Strategy<Value = Packing> {
    prop_oneof![
        4 => Just(Packing::Raw),
        3 => Just(Packing::Gz),
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Packing::GzFlip(i, x)),
        1 => any::<Index>().prop_map(Packing::GzTruncate),
    ]
}

impl Packing {
    fn pack(&self, b: Vec<u8>) -> Vec<u8> {
        match self {
            Self::Raw => b,
            Self::Gz => gzip(&b),
            Self::GzFlip(at, x) => {
                let mut g = gzip(&b);
                let i = at.index(g.len());
                g[i] ^= x;
                g
            }
            Self::GzTruncate(at) => {
                let mut g = gzip(&b);
                g.truncate(at.index(g.len()));
                g
            }
        }
    }
}

fn sizes() -> impl Strategy<Value = (usize, bool)> {
    (prop::sample::select(vec![4usize, 5, 8]), any::<bool>())
}

/// Valid MNIST files, mutated (header words including dimensions whose product overflows
/// 64 bits, byte flips, truncation, extra bytes, labels out of range) and stored raw or
/// gzipped (the gzip stream itself sometimes damaged), load exactly when the IDX oracle says
/// so, and errors name the file at fault.
#[test]
fn mnist_mutated_files_load_exactly_when_valid() {
    let tally = Tally::default();
    let case = (valid_idx(), idx_edit(), packing(), packing(), sizes());
    check(
        512,
        case,
        |((mut images, mut labels), edit, pi, pl, (size, upscale))| {
            edit.apply(&mut images, &mut labels);
            let pair = IdxPair {
                images: pi.pack(images),
                labels: pl.pack(labels),
                size,
                upscale,
            };
            let ok = load_idx_pair(&pair)?;
            tally.add(&if ok { Ok(()) } else { Err(()) });
            Ok(())
        },
    );
    tally.assert_both("mutated MNIST files", 0.05);
}

/// Arbitrary bytes as the images or labels file (sometimes behind a right magic number).
#[test]
fn mnist_arbitrary_bytes_never_panic() {
    let junk = || {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (
                prop::sample::select(vec![mnist::IMAGES_MAGIC, mnist::LABELS_MAGIC]),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(m, rest)| idx(m, &[], &rest)),
        ]
    };
    let case = (valid_idx(), junk(), any::<bool>(), packing(), sizes());
    check(
        256,
        case,
        |((images, labels), junk, junk_images, p, (size, upscale))| {
            let (images, labels) = if junk_images {
                (p.pack(junk), labels)
            } else {
                (images, p.pack(junk))
            };
            load_idx_pair(&IdxPair {
                images,
                labels,
                size,
                upscale,
            })?;
            Ok(())
        },
    );
}

/// An IDX header of 2³² − 1 images of (2³² − 1)² pixels: the byte count, 2⁹⁶, used to
/// overflow u64 in `parse_images` ("attempt to multiply with overflow").
#[test]
fn idx_dimensions_whose_product_overflows_are_refused() {
    let path = Path::new("huge-images-idx3-ubyte");
    let b = idx(mnist::IMAGES_MAGIC, &[u32::MAX; 3], &[0; 4]);
    let msg = mnist::parse_images(path, &b).unwrap_err().to_string();
    assert!(
        msg.contains("huge-images-idx3-ubyte") && msg.contains("4 bytes"),
        "{msg}"
    );
}

/// A 1-pixel-wide strip of 2²⁰ rows enlarged to 64 wide used to be scaled whole, a 64 × 2²⁶
/// image (4 GiB) built to keep its centre 64×64; now it loads at once.
#[test]
fn mnist_long_strip_enlarges_without_a_huge_image() {
    let rows = 1u32 << 20;
    let pixels: Vec<u8> = (0..rows).map(|y| (y >> 12) as u8).collect();
    let pair = IdxPair {
        images: idx(mnist::IMAGES_MAGIC, &[1, rows, 1], &pixels),
        labels: idx(mnist::LABELS_MAGIC, &[1], &[3]),
        size: 64,
        upscale: true,
    };
    assert!(load_idx_pair(&pair).unwrap());
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

/// Batch files of whole records, a few bytes off, or arbitrary; labels mostly 0–9.
fn cifar_file() -> impl Strategy<Value = Vec<u8>> {
    let records = prop_oneof![5 => 1usize..3, 1 => Just(0usize)];
    let delta = prop::sample::select(vec![0i64, 0, 0, 0, 0, 0, 0, -1, 1, -3, 2]);
    let label = prop_oneof![19 => 0u8..=9, 1 => 10u8..=255];
    prop_oneof![
        6 => (records, delta, prop::collection::vec(label, 3), any::<u8>())
            .prop_map(|(n, delta, labels, fill)| {
                let len = (n * cifar10::RECORD_LEN) as i64 + delta;
                let mut b = vec![fill; len.max(0) as usize];
                for (r, chunk) in b.chunks_mut(cifar10::RECORD_LEN).enumerate() {
                    chunk[0] = labels[r % 3];
                }
                b
            }),
        1 => prop::collection::vec(any::<u8>(), 0..4000),
    ]
}

/// One to three CIFAR-10 batch files of any length load exactly when each is a positive whole
/// number of records with labels 0–9 (and the size needs no enlarging, unless allowed); the
/// error names the first file at fault; the labels come back in order.
#[test]
fn cifar10_files_load_exactly_when_valid() {
    let tally = Tally::default();
    let case = (
        prop::collection::vec(cifar_file(), 1..4),
        prop::sample::select(vec![4usize, 8, 32, 40]),
        any::<bool>(),
        any::<bool>(),
    );
    check(256, case, |(files, size, upscale, grey)| {
        let dir = Scratch::new("cifar");
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, b)| dir.write(&format!("data_batch_{}.bin", i + 1), b))
            .collect();
        // One file is also given by its own path.
        let spec = if files.len() == 1 && grey {
            DataSpec::Cifar10(paths[0].clone())
        } else {
            DataSpec::Cifar10(dir.0.clone())
        };
        let channels = if grey { 1 } else { 3 };
        let got = ddpm::data::load(&spec, size, channels, upscale);
        let bad = files.iter().position(|b| {
            b.is_empty()
                || b.len() % cifar10::RECORD_LEN != 0
                || b.chunks(cifar10::RECORD_LEN).any(|r| r[0] > 9)
        });
        let expect: Result<Vec<u32>, &Path> = match bad {
            Some(i) => Err(&paths[i]),
            None if size > cifar10::SIDE && !upscale => Err(&paths[0]),
            None => Ok(files
                .iter()
                .flat_map(|b| b.chunks(cifar10::RECORD_LEN).map(|r| u32::from(r[0])))
                .collect()),
        };
        tally.add(&got);
        match (got, expect) {
            (Ok(ds), Ok(labels)) => {
                prop_assert_eq!(ds.labels.as_ref(), Some(&labels));
                prop_assert_eq!(ds.pixels.len(), labels.len() * channels * size * size);
            }
            (Err(e), Err(path)) => names_path(&e.to_string(), path)?,
            (got, expect) => {
                return Err(TestCaseError::fail(format!(
                    "loaded {:?}, expected {:?}",
                    got.map(|d| d.len()).map_err(|e| e.to_string()),
                    expect.map(|l| l.len())
                )))
            }
        }
        Ok(())
    });
    tally.assert_both("CIFAR-10 files", 0.05);
}

// ---------------------------------------------------------------------------------------------
// UNet configs

/// Builds what a config that passed validation configures: the network must build and its
/// parameter count must agree with the config's own count (worked out without building) and
/// stay within the limit.
fn build_unet(cfg: UNetConfig) -> Result<(), TestCaseError> {
    let predicted = cfg.param_count();
    let net = UNet::new(cfg.clone())
        .map_err(|e| TestCaseError::fail(format!("validated config does not build: {e}")))?;
    prop_assert_eq!(predicted, Some(net.num_params() as u128), "{}", cfg);
    prop_assert!(net.num_params() as u128 <= ddpm::nn::config::MAX_PARAMS);
    // Shapes derived from the config stay computable (no overflow).
    prop_assert_eq!(net.input_shape(2).len() % cfg.sample_size, 0);
    Ok(())
}

/// Values for a UNet config field: any JSON, sizes that probe limits, arrays of them, and the
/// block type names (valid or not).
fn unet_values() -> BoxedStrategy<Value> {
    let block = prop::sample::select(vec![
        "DownBlock2D",
        "AttnDownBlock2D",
        "UpBlock2D",
        "AttnUpBlock2D",
        "CrossAttnDownBlock2D",
    ]);
    prop_oneof![
        3 => json_value(),
        3 => interesting_u64().prop_map(Value::from),
        2 => prop::collection::vec(interesting_u64(), 0..5).prop_map(|v| json!(v)),
        1 => prop::collection::vec(prop_oneof![(1u64..8).prop_map(|k| 2 * k), Just(3u64)], 1..5)
            .prop_map(|v| json!(v)),
        1 => prop::collection::vec(block, 0..4).prop_map(|v| json!(v)),
    ]
    .boxed()
}

/// Arbitrary text for `UNetConfig::from_json`: never a panic; a refusal names a field.
#[test]
fn unet_config_arbitrary_text() {
    check(1024, json_text(), |text| {
        match UNetConfig::from_json(&text) {
            Ok(cfg) => build_unet(cfg)?,
            Err(e) => prop_assert!(!e.field.is_empty()),
        }
        Ok(())
    });
}

/// One field of a valid config set to any JSON value (or removed, or a new key added): the
/// config either builds (and its parameter count is right) or the error names that field.
#[test]
fn unet_config_one_field_edited() {
    let base = serde_json::from_str::<Value>(SMALL_MODEL).unwrap();
    let keys = keys_of(&serde_json::to_value(small_model()).unwrap());
    let tally = Tally::default();
    check(1024, field_edit(keys, unet_values()), |edit| {
        let mut obj = base.as_object().unwrap().clone();
        edit.apply(&mut obj);
        let r = UNetConfig::from_value(Value::Object(obj));
        tally.add(&r);
        match r {
            Ok(cfg) => build_unet(cfg)?,
            Err(e) => {
                let f = edit.key();
                prop_assert!(
                    e.field == f || e.msg.contains(f),
                    "edited `{f}`, the error is about `{}`: {}",
                    e.field,
                    e.msg
                );
            }
        }
        Ok(())
    });
    tally.assert_both("one-field UNet config edits", 0.05);
}

/// Random architectures, mostly valid (widths multiples of the group count, a sample size
/// that divides by the downsampling), then a few fields edited: whatever validates builds,
/// with the parameter count the config predicts.
#[test]
fn unet_config_random_architectures() {
    use ddpm::nn::{DownBlockType, UpBlockType};
    let arch = (
        1usize..5,
        prop::sample::select(vec![1usize, 2, 4, 8]),
        prop::collection::vec((1usize..6, any::<bool>(), any::<bool>()), 4),
        (1usize..4, 1usize..5, 1usize..4, 1usize..4),
        (
            any::<bool>(),
            prop::option::of(1usize..5),
            prop::option::of(1usize..40),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0.0), Just(1.0)],
        ),
    );
    let edits = prop::collection::vec(
        field_edit(
            keys_of(&serde_json::to_value(small_model()).unwrap()),
            unet_values(),
        ),
        0..3,
    );
    let tally = Tally::default();
    check(512, (arch, edits), |(arch, edits)| {
        let (levels, g, lv, (layers, mult, cin, cout), (head, classes, temb), misc) = arch;
        let (add_attention, flip, shift) = misc;
        let lv = &lv[..levels];
        let cfg = UNetConfig {
            sample_size: mult << (levels - 1),
            in_channels: cin,
            out_channels: cout,
            block_out_channels: lv.iter().map(|&(k, _, _)| k * g).collect(),
            layers_per_block: layers,
            down_block_types: lv
                .iter()
                .map(|&(_, a, _)| {
                    if a {
                        DownBlockType::AttnDownBlock2D
                    } else {
                        DownBlockType::DownBlock2D
                    }
                })
                .collect(),
            up_block_types: lv
                .iter()
                .map(|&(_, _, a)| {
                    if a {
                        UpBlockType::AttnUpBlock2D
                    } else {
                        UpBlockType::UpBlock2D
                    }
                })
                .collect(),
            norm_num_groups: g,
            attention_head_dim: head.then_some(g),
            num_class_embeds: classes,
            time_embedding_dim: temb,
            add_attention,
            flip_sin_to_cos: flip,
            freq_shift: shift,
            ..UNetConfig::default()
        };
        let mut obj = match serde_json::to_value(&cfg).unwrap() {
            Value::Object(o) => o,
            _ => unreachable!(),
        };
        for e in &edits {
            e.apply(&mut obj);
        }
        let r = UNetConfig::from_value(Value::Object(obj));
        tally.add(&r);
        if let Ok(cfg) = r {
            build_unet(cfg)?;
        }
        Ok(())
    });
    tally.assert_both("random UNet architectures", 0.05);
}

/// `block_out_channels` of 2⁶² used to overflow `4 × block_out_channels[0]` (the default time
/// embedding width) inside `UNetConfig::validate`: "attempt to multiply with overflow".
#[test]
fn unet_config_channels_near_the_top_of_usize_are_refused() {
    let text = r#"{"block_out_channels": [4611686018427387904, 4611686018427387904],
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#;
    let e = UNetConfig::from_json(text).unwrap_err();
    assert_eq!(e.field, "block_out_channels", "{e}");
    assert!(e.msg.contains("65536"), "{e}");
}

/// An empty key (`{"": 1}`) used to be refused as the field ``, an empty name.
#[test]
fn unet_config_empty_key_is_named() {
    let e = UNetConfig::from_json(r#"{"": 1}"#).unwrap_err();
    assert_eq!(e.field, r#""""#, "{e}");
}

/// A config of 2⁴⁰ channels built directly (not read from JSON) used to pass validation and
/// overflow the parameter count in `UNet::new`.
#[test]
fn unet_with_absurd_sizes_is_refused_by_name() {
    let base = small_model();
    let cases: Vec<(&str, UNetConfig)> = vec![
        (
            "block_out_channels",
            UNetConfig {
                block_out_channels: vec![1 << 40, 1 << 40],
                ..base.clone()
            },
        ),
        (
            "sample_size",
            UNetConfig {
                sample_size: 1 << 40,
                ..base.clone()
            },
        ),
        (
            "layers_per_block",
            UNetConfig {
                layers_per_block: 1 << 40,
                ..base.clone()
            },
        ),
        (
            "time_embedding_dim",
            UNetConfig {
                time_embedding_dim: Some(usize::MAX),
                ..base.clone()
            },
        ),
        (
            "num_class_embeds",
            UNetConfig {
                num_class_embeds: Some(usize::MAX),
                ..base.clone()
            },
        ),
        (
            "in_channels",
            UNetConfig {
                in_channels: 1 << 40,
                ..base.clone()
            },
        ),
        // Each size within its limit, the whole far beyond 2³² parameters.
        (
            "block_out_channels",
            UNetConfig {
                block_out_channels: vec![65536, 65536],
                norm_num_groups: 32,
                ..base.clone()
            },
        ),
    ];
    for (field, cfg) in cases {
        let e = UNet::new(cfg).unwrap_err();
        assert!(e.field == field, "{field}: {e}");
        assert!(e.msg.contains("limit"), "{field}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// Builds a schedule from a config that validated (when T is small enough to be quick) and
/// checks what samplers rely on: T entries, 0 < ᾱ < 1, non-increasing, all finite.
fn build_schedule(cfg: &ScheduleConfig) -> Result<(), TestCaseError> {
    if cfg.num_train_timesteps > 50_000 {
        return Ok(());
    }
    let Ok(s) = Schedule::new(cfg.clone()) else {
        return Ok(()); // refusals are checked by the callers
    };
    let t = cfg.num_train_timesteps;
    prop_assert_eq!(s.alphas_cumprod().len(), t);
    let ab: Vec<f64> = (0..t).map(|i| s.alpha_bar(i)).collect();
    prop_assert!(ab.iter().all(|&a| a > 0.0 && a < 1.0), "ᾱ outside (0, 1)");
    prop_assert!(ab.windows(2).all(|w| w[1] <= w[0]), "ᾱ increases");
    // The kernels divide by these two; a β too small for f32 may round to 0, which is harmless.
    for v in [s.sqrt_alphas_cumprod(), s.sqrt_one_minus_alphas_cumprod()] {
        prop_assert!(v.iter().all(|x| x.is_finite() && *x > 0.0));
    }
    prop_assert!(s.betas().iter().all(|x| x.is_finite() && *x >= 0.0));
    Ok(())
}

/// Values for schedule fields: any JSON, limits, schedule and spacing names, β lists.
fn schedule_values() -> BoxedStrategy<Value> {
    let names = prop::sample::select(vec![
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "cosine",
        "sigmoid",
        "laplace",
        "exp",
        "epsilon",
        "sample",
        "v_prediction",
        "fixed_small",
        "fixed_large",
        "fixed_small_log",
        "learned_range",
        "leading",
        "trailing",
        "linspace",
        "quad",
    ]);
    prop_oneof![
        3 => json_value(),
        2 => interesting_u64().prop_map(Value::from),
        2 => interesting_f64().prop_map(Value::from),
        2 => names.prop_map(Value::from),
        1 => prop::collection::vec(prop_oneof![0.0..1.0f64, interesting_f64()], 0..12)
            .prop_map(|v| json!(v)),
        1 => (1usize..12).prop_map(|t| json!({"num_train_timesteps": t})), // nested: a type error
    ]
    .boxed()
}

/// A `ScheduleConfig` with 1–3 fields edited: deserialising and validating never panic, a
/// validated config builds a sane schedule, and a single edit that is refused is named.
#[test]
fn schedule_config_fields_edited() {
    let base = serde_json::to_value(ScheduleConfig::default()).unwrap();
    let keys = keys_of(&base);
    let tally = Tally::default();
    let edits = prop::collection::vec(field_edit(keys, schedule_values()), 1..4);
    check(512, edits, |edits| {
        let mut obj = base.as_object().unwrap().clone();
        for e in &edits {
            e.apply(&mut obj);
        }
        // Small T sometimes, so that β lists of the right length occur.
        let r = ddpm::json_fields::from_value::<ScheduleConfig>(Value::Object(obj))
            .map_err(|e| format!("`{}`: {}", e.field, e.msg))
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        tally.add(&r);
        match &r {
            Ok(cfg) => build_schedule(cfg)?,
            Err(msg) if edits.len() == 1 => {
                let f = edits[0].key();
                prop_assert!(msg.contains(f), "edited `{f}`: {msg}");
            }
            Err(_) => {}
        }
        Ok(())
    });
    tally.assert_both("schedule config edits", 0.05);
}

/// `trained_betas` of the right length with values anywhere: `Schedule::new` refuses the ones
/// outside (0, 1) or that drive ᾱ too low, naming a schedule field, and never panics.
#[test]
fn schedule_trained_betas() {
    let betas = (1usize..64).prop_flat_map(|t| {
        prop_oneof![
            // Plausible βs, which mostly give a schedule (unless ᾱ falls too low).
            prop::collection::vec(1e-6..0.5f64, t),
            // Any values, a few of them at the edges of (0, 1) or outside.
            prop::collection::vec(
                prop_oneof![4 => 1e-6..0.5f64, 1 => interesting_f64(), 1 => 0.9..1.0f64],
                t,
            ),
        ]
    });
    let tally = Tally::default();
    check(256, betas, |b| {
        let cfg = ScheduleConfig {
            num_train_timesteps: b.len(),
            trained_betas: Some(b),
            ..ScheduleConfig::default()
        };
        let r = Schedule::new(cfg.clone());
        tally.add(&r);
        match r {
            Ok(_) => build_schedule(&cfg)?,
            Err(e) => prop_assert!(
                ["trained_betas", "num_train_timesteps"].contains(&e.field),
                "{e}"
            ),
        }
        Ok(())
    });
    tally.assert_both("trained betas", 0.05);
}

/// diffusers `scheduler_config.json` contents, as written by ddpm and then edited, or made of
/// arbitrary keys: `scheduler::parse` never panics, a single refused edit is named, and what
/// parses builds a sane schedule.
#[test]
fn diffusers_scheduler_config_parse() {
    let (ddpm_json, _) = diffusers::scheduler::to_json(&ScheduleConfig::default(), false);
    let (ddim_json, _) = diffusers::scheduler::to_json(&ScheduleConfig::default(), true);
    let mut keys = keys_of(&ddpm_json);
    keys.extend(keys_of(&ddim_json));
    keys.extend(["variance_type", "sample_max_value"].map(String::from));
    let edits = prop::collection::vec(field_edit(keys.clone(), schedule_values()), 1..3);
    let random_object = prop::collection::btree_map(prop::sample::select(keys), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let case = prop_oneof![
        4 => (any::<bool>(), edits).prop_map(move |(ddim, edits)| {
            let mut obj = if ddim { ddim_json.clone() } else { ddpm_json.clone() };
            for e in &edits {
                e.apply(obj.as_object_mut().unwrap());
            }
            (obj, edits)
        }),
        1 => random_object.prop_map(|v| (v, vec![])),
        1 => json_value().prop_map(|v| (v, vec![])),
    ];
    let tally = Tally::default();
    check(512, case, |(value, edits)| {
        let r = diffusers::scheduler::parse(value);
        tally.add(&r);
        match &r {
            Ok(f) => build_schedule(&f.config)?,
            Err(msg) if edits.len() == 1 => {
                let f = edits[0].key();
                prop_assert!(msg.contains(f), "edited `{f}`: {msg}");
            }
            Err(_) => {}
        }
        Ok(())
    });
    tally.assert_both("scheduler configs", 0.05);
}

// ---------------------------------------------------------------------------------------------
// Training configs

/// A `TrainConfig` with 1–3 fields edited (top-level or inside `optimizer` / `ema`): never a
/// panic; a single refused edit is named; what validates sets up its optimizer and EMA (or is
/// refused by them) and their step arithmetic stays finite at any step.
#[test]
fn train_config_fields_edited() {
    let base = serde_json::to_value(TrainConfig::default()).unwrap();
    let keys = keys_of(&base);
    let nested_keys: Vec<(String, String)> = ["optimizer", "ema"]
        .iter()
        .flat_map(|o| keys_of(&base[*o]).into_iter().map(|k| (o.to_string(), k)))
        .collect();
    let values = prop_oneof![
        json_value(),
        interesting_u64().prop_map(Value::from),
        interesting_f64().prop_map(Value::from),
    ]
    .boxed();
    let edit = prop_oneof![
        (field_edit(keys, values.clone())).prop_map(|e| (None, e)),
        (prop::sample::select(nested_keys), values)
            .prop_map(|((o, k), v)| (Some(o), FieldEdit::Set(k, v))),
    ];
    let tally = Tally::default();
    check(512, prop::collection::vec(edit, 1..4), |edits| {
        let mut v = base.clone();
        for (outer, e) in &edits {
            match outer {
                // (Unless an earlier edit replaced the whole object.)
                Some(o) => v[o].as_object_mut().into_iter().for_each(|m| e.apply(m)),
                None => e.apply(v.as_object_mut().unwrap()),
            }
        }
        let r = ddpm::json_fields::from_value::<TrainConfig>(v)
            .map_err(|e| format!("`{}`: {}", e.field, e.msg))
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        tally.add(&r);
        match &r {
            Ok(cfg) => {
                if let (Ok(mut opt), Ok(mut ema)) = (
                    AdamW::new(cfg.optimizer.clone(), 4),
                    Ema::new(cfg.ema.clone(), &[0.5; 4]),
                ) {
                    let mut w = [0.5f32; 4];
                    opt.update(&mut w, &[0.1; 4]);
                    for step in [0, 1, cfg.ema.start_step, u64::MAX] {
                        let _ = cfg.ema.action(step);
                        prop_assert!(opt.lr_at(step).is_finite());
                        ema.update(step, &w);
                    }
                }
            }
            Err(msg) if edits.len() == 1 => {
                let (outer, e) = &edits[0];
                let f = outer.as_deref().unwrap_or(e.key());
                prop_assert!(msg.contains(f), "edited `{f}`: {msg}");
            }
            Err(_) => {}
        }
        Ok(())
    });
    tally.assert_both("training config edits", 0.05);
}

// ---------------------------------------------------------------------------------------------
// diffusers directories

/// The files of a diffusers pipeline exported from [`SMALL_MODEL`]: (relative path, bytes).
fn pipeline_files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let cfg = small_model();
        let net = UNet::new(cfg.clone()).unwrap();
        let weights = net.init_params::<f32>(3).values().to_vec();
        let dir = Scratch::new("pipeline-base");
        let out = dir.0.join("p");
        let opts = ExportOptions::default();
        diffusers::export(&out, &cfg, &weights, &ScheduleConfig::default(), opts).unwrap();
        let mut files = Vec::new();
        for rel in [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
        ] {
            files.push((rel.to_string(), fs::read(out.join(rel)).unwrap()));
        }
        files
    })
}

#[derive(Clone, Debug)]
enum DirEdit {
    None,
    /// A JSON file (0: model_index, 1: unet config, 3: scheduler config) replaced by text.
    Text(usize, String),
    /// One field of a JSON file edited.
    Field(usize, FieldEdit),
    /// Weights bytes flipped or cut.
    Flip(Index, u8),
    Truncate(Index),
    /// A file removed.
    Remove(usize),
}

/// A pipeline directory with one file edited: `diffusers::load` never panics; a refusal names
/// a file of the directory (for a refused field, the edited file and the field, or the weights
/// that no longer fit), and what loads has every weight of the model its config describes.
#[test]
fn diffusers_directory_with_an_edited_file() {
    let files = pipeline_files();
    let mut all_keys = Vec::new();
    for i in [0, 1, 3] {
        all_keys.extend(keys_of(&serde_json::from_slice(&files[i].1).unwrap()));
    }
    let json_file = prop::sample::select(vec![0usize, 1, 1, 3]);
    let edit = prop_oneof![
        1 => Just(DirEdit::None),
        2 => (json_file.clone(), json_text()).prop_map(|(i, t)| DirEdit::Text(i, t)),
        6 => (json_file, field_edit(all_keys, unet_values())).prop_map(|(i, e)| DirEdit::Field(i, e)),
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| DirEdit::Flip(i, x)),
        1 => any::<Index>().prop_map(DirEdit::Truncate),
        1 => (0usize..4).prop_map(DirEdit::Remove),
    ];
    let tally = Tally::default();
    check(256, edit, |edit| {
        let dir = Scratch::new("pipeline");
        let mut edited = None;
        for (i, (rel, bytes)) in files.iter().enumerate() {
            let mut b = bytes.clone();
            match &edit {
                DirEdit::Text(j, t) if *j == i => b = t.clone().into_bytes(),
                DirEdit::Field(j, e) if *j == i => {
                    let mut v: Value = serde_json::from_slice(&b).unwrap();
                    e.apply(v.as_object_mut().unwrap());
                    b = v.to_string().into_bytes();
                    edited = Some((rel.clone(), e.key().to_string()));
                }
                DirEdit::Flip(at, x) if i == 2 => {
                    let k = at.index(b.len());
                    b[k] ^= x;
                }
                DirEdit::Truncate(at) if i == 2 => b.truncate(at.index(b.len())),
                DirEdit::Remove(j) if *j == i => continue,
                _ => {}
            }
            dir.write(rel, &b);
        }
        let r = diffusers::load(&dir.0);
        tally.add(&r);
        match r {
            Ok(m) => {
                let net = UNet::new(m.config.clone())
                    .map_err(|e| TestCaseError::fail(format!("loaded config: {e}")))?;
                prop_assert_eq!(m.weights.len(), net.layout.arena_len());
                if let Some(s) = &m.scheduler {
                    build_schedule(&s.config)?;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                names_path(&msg, &dir.0)?;
                if let Some((rel, field)) = &edited {
                    // A refused field is named with its file, unless the config is fine and
                    // the weights no longer fit it.
                    let file_named = msg.contains(&format!("{rel}:"));
                    let weights_named = msg.contains("diffusion_pytorch_model.safetensors");
                    prop_assert!(
                        (file_named && msg.contains(field.as_str())) || weights_named,
                        "edited `{field}` of {rel}: {msg}"
                    );
                }
            }
        }
        Ok(())
    });
    tally.assert_both("edited diffusers directories", 0.05);
}

// ---------------------------------------------------------------------------------------------
// Data source strings

/// Any string, with or without a known prefix: `DataSpec` parsing never panics, an error
/// quotes the string, and what parses prints back to a string that parses the same.
#[test]
fn data_spec_strings() {
    let s = prop_oneof![
        any::<String>(),
        (
            prop::sample::select(vec!["folder:", "mnist:", "cifar10:", "synthetic", ""]),
            any::<String>()
        )
            .prop_map(|(p, s)| format!("{p}{s}")),
        prop::sample::select(vec![
            "synthetic",
            "folder:",
            "mnist:x",
            "",
            ":",
            "no-such-dir"
        ])
        .prop_map(String::from),
    ];
    check(512, s, |s| {
        match s.parse::<DataSpec>() {
            Ok(spec) => {
                let back = spec.to_string().parse::<DataSpec>();
                prop_assert_eq!(back.ok(), Some(spec));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(s.as_str()), "{msg}");
            }
        }
        Ok(())
    });
}
