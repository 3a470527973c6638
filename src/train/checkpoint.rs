//! Checkpoints: one safetensors file with everything a run needs to continue bit for bit.
//!
//! Tensors (f32): the weights under their diffusers names, the EMA weights under `ema.`, and
//! the AdamW moments under `adam.m.` and `adam.v.`. Metadata (JSON strings): the model, schedule
//! and training configs, the step, the steps skipped for a non-finite loss or gradient, the
//! generator state, and a CRC-32 of the four arrays. Every random draw in training is a
//! counter-based function of (seed, step), so the generator state is just those two numbers.
//! Files are written atomically: a crash mid-save leaves the previous checkpoint intact. A
//! checkpoint *verifies* when it parses, every tensor has the model's name, shape and dtype
//! (F32), nothing else is stored, and the checksum matches: a truncated, bit-flipped or
//! mismatched file never loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::atomic_file::write_atomic;
use crate::diffusion::ScheduleConfig;
use crate::nn::{UNet, UNetConfig};
use crate::params::{named_views, read_named};

/// The format tag in the metadata; bump it when the layout of a checkpoint changes.
pub const FORMAT: &str = "ddpm-checkpoint-1";

const EMA: &str = "ema.";
/// Metadata key of the CRC-32 (hex) of the weights, EMA and moments, in that order, as
/// little-endian f32 in the model's parameter layout (independent of the file's tensor order),
/// followed by every other metadata entry as `key=value\n`, sorted by key.
const CRC_KEY: &str = "crc32";
const ADAM_M: &str = "adam.m.";
const ADAM_V: &str = "adam.v.";

/// The state of the counter-based generators: every draw at step s uses (seed, s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    /// The step whose draws come next.
    pub next_step: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint {path}: {msg}")]
pub struct CheckpointError {
    pub path: PathBuf,
    pub msg: String,
}

fn fail(path: &Path, msg: impl Into<String>) -> CheckpointError {
    CheckpointError {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A whole training state. The flat arrays use the model's parameter layout.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub model: UNetConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    /// Training steps completed (each consumed one batch).
    pub step: u64,
    /// Of those, steps whose update was skipped for a non-finite loss or gradient; AdamW has
    /// made `step - skipped_steps` updates.
    pub skipped_steps: u64,
    pub rng: RngState,
    pub weights: Vec<f32>,
    pub ema: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let net = UNet::new(self.model.clone()).map_err(|e| fail(path, e.to_string()))?;
        let layout = &net.layout;
        for (what, v) in [
            ("weights", &self.weights),
            ("ema", &self.ema),
            ("adam.m", &self.adam_m),
            ("adam.v", &self.adam_v),
        ] {
            if v.len() != layout.arena_len() {
                return Err(fail(
                    path,
                    format!(
                        "{what} has {} values, the model needs {}",
                        v.len(),
                        layout.arena_len()
                    ),
                ));
            }
        }
        if self.skipped_steps > self.step {
            return Err(fail(
                path,
                format!(
                    "{} skipped steps of {} in all",
                    self.skipped_steps, self.step
                ),
            ));
        }
        let mut views = named_views(layout, &self.weights, "");
        views.extend(named_views(layout, &self.ema, EMA));
        views.extend(named_views(layout, &self.adam_m, ADAM_M));
        views.extend(named_views(layout, &self.adam_v, ADAM_V));
        let json = |v: &dyn erased::Json| v.to_json();
        let mut metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("skipped_steps".to_string(), self.skipped_steps.to_string()),
            ("model_config".to_string(), json(&self.model)),
            ("schedule_config".to_string(), json(&self.schedule)),
            ("train_config".to_string(), json(&self.train)),
            ("rng".to_string(), json(&self.rng)),
        ]);
        let crc = self.checksum(&metadata);
        metadata.insert(CRC_KEY.to_string(), format!("{crc:08x}"));
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| fail(path, format!("cannot encode: {e}")))?;
        write_atomic(path, &bytes).map_err(|e| fail(path, format!("cannot write: {e}")))
    }

    /// Reads a checkpoint, checking the format tag, every config and every tensor.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
        // Before the crate's own parse, which can overflow on tensors that end past the file.
        crate::params::check_data_offsets(&bytes)
            .map_err(|m| fail(path, format!("not a valid safetensors file: {m}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            fail(
                path,
                match e {
                    safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                        "truncated (or padded): its {} bytes do not match the tensor data its \
                         header lists",
                        bytes.len()
                    ),
                    e => format!("not a safetensors file: {e}"),
                },
            )
        })?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key).ok_or_else(|| {
                fail(
                    path,
                    format!("metadata has no `{key}` (not a ddpm checkpoint?)"),
                )
            })
        };
        let format = field("format")?;
        if format != FORMAT {
            return Err(fail(
                path,
                format!("format `{format}` is not the supported `{FORMAT}`"),
            ));
        }
        fn parse<T: for<'de> Deserialize<'de>>(
            path: &Path,
            key: &str,
            text: &str,
        ) -> Result<T, CheckpointError> {
            serde_json::from_str(text).map_err(|e| fail(path, format!("metadata `{key}`: {e}")))
        }
        let model: UNetConfig = parse(path, "model_config", field("model_config")?)?;
        let schedule: ScheduleConfig = parse(path, "schedule_config", field("schedule_config")?)?;
        let train: TrainConfig = parse(path, "train_config", field("train_config")?)?;
        let rng: RngState = parse(path, "rng", field("rng")?)?;
        let step: u64 = field("step")?
            .parse()
            .map_err(|e| fail(path, format!("metadata `step`: {e}")))?;
        // Absent in checkpoints written before steps could be skipped.
        let skipped_steps: u64 = match meta.get("skipped_steps") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|e| fail(path, format!("metadata `skipped_steps`: {e}")))?,
        };
        if skipped_steps > step {
            return Err(fail(
                path,
                format!("metadata `skipped_steps` {skipped_steps} exceeds `step` {step}"),
            ));
        }
        let net = UNet::new(model.clone()).map_err(|e| fail(path, e.to_string()))?;
        schedule.validate().map_err(|e| fail(path, e.to_string()))?;
        train.validate().map_err(|e| fail(path, e.to_string()))?;

        // The file must hold four f32 arrays of the model's size before anything that size is
        // allocated: a config naming a huge model cannot make us allocate it.
        let n = net.layout.arena_len();
        let needed = (n as u128) * 16;
        if (bytes.len() as u128) < needed {
            return Err(fail(
                path,
                format!(
                    "{} bytes cannot hold the {n}-parameter model its model_config describes \
                     (weights, EMA and two Adam moments in f32 need {needed} bytes): truncated, \
                     or not this model's checkpoint",
                    bytes.len()
                ),
            ));
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(path, format!("not a valid safetensors file: {e}")))?;
        check_tensor_set(&st, &net, path)?;
        let read = |prefix: &str| {
            let mut v = vec![0.0f32; n];
            read_named(&st, &net.layout, prefix, &mut v).map_err(|m| fail(path, m))?;
            Ok::<_, CheckpointError>(v)
        };
        let ck = Self {
            weights: read("")?,
            ema: read(EMA)?,
            adam_m: read(ADAM_M)?,
            adam_v: read(ADAM_V)?,
            model,
            schedule,
            train,
            step,
            skipped_steps,
            rng,
        };
        // Absent only in checkpoints written before checksums were added.
        if let Some(stored) = meta.get(CRC_KEY) {
            let actual = format!("{:08x}", ck.checksum(&meta));
            if *stored != actual {
                return Err(fail(
                    path,
                    format!(
                        "checksum mismatch (stored {stored}, computed {actual}): the tensors or \
                         the metadata are corrupt"
                    ),
                ));
            }
        }
        Ok(ck)
    }

    /// CRC-32 of the weights, EMA and moments as little-endian f32, in that order, then of the
    /// metadata entries other than the checksum itself, sorted by key.
    fn checksum(&self, meta: &HashMap<String, String>) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for v in [&self.weights, &self.ema, &self.adam_m, &self.adam_v] {
            if cfg!(target_endian = "little") {
                h.update(bytemuck::cast_slice(v));
            } else {
                for x in v.iter() {
                    h.update(&x.to_le_bytes());
                }
            }
        }
        let mut entries: Vec<_> = meta.iter().filter(|(k, _)| *k != CRC_KEY).collect();
        entries.sort();
        for (k, v) in entries {
            h.update(format!("{k}={v}\n").as_bytes());
        }
        h.finalize()
    }
}

/// Exactly the model's tensors, each F32: a checkpoint of another model whose tensors happen to
/// include this one's (e.g. more layers per block) is refused rather than half-read.
fn check_tensor_set(
    st: &safetensors::SafeTensors<'_>,
    net: &UNet,
    path: &Path,
) -> Result<(), CheckpointError> {
    let expected = 4 * net.layout.specs().len();
    for (name, view) in st.iter() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}; a ddpm checkpoint stores F32",
                    view.dtype()
                ),
            ));
        }
    }
    if st.len() >= expected {
        // More names than the model has, or as many with one missing: find one it lacks. (A
        // missing tensor alone is reported by the reader, by name.)
        let known: std::collections::HashSet<String> = [EMA, ADAM_M, ADAM_V, ""]
            .iter()
            .flat_map(|p| {
                net.layout
                    .specs()
                    .iter()
                    .map(move |s| format!("{p}{}", s.name))
            })
            .collect();
        if let Some(name) = st.names().into_iter().find(|n| !known.contains(*n)) {
            return Err(fail(
                path,
                format!(
                    "holds tensor `{name}`, which the model in its model_config does not have \
                     (a checkpoint of a different model?)"
                ),
            ));
        }
    }
    Ok(())
}

/// Object-safe JSON encoding for the metadata map.
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("configs always serialize")
        }
    }
}
