//! Checkpoints: one safetensors file with everything a run needs to continue bit for bit.
//!
//! Tensors (f32): the weights under their diffusers names, the EMA weights under `ema.`, and
//! the AdamW moments under `adam.m.` and `adam.v.`. Metadata (JSON strings): the model, schedule
//! and training configs, the step, and the generator state. Every random draw in training is a
//! counter-based function of (seed, step), so the generator state is just those two numbers.
//! Files are written atomically: a crash mid-save leaves the previous checkpoint intact.

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
    /// Optimizer steps completed.
    pub step: u64,
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
        let mut views = named_views(layout, &self.weights, "");
        views.extend(named_views(layout, &self.ema, EMA));
        views.extend(named_views(layout, &self.adam_m, ADAM_M));
        views.extend(named_views(layout, &self.adam_v, ADAM_V));
        let json = |v: &dyn erased::Json| v.to_json();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("model_config".to_string(), json(&self.model)),
            ("schedule_config".to_string(), json(&self.schedule)),
            ("train_config".to_string(), json(&self.train)),
            ("rng".to_string(), json(&self.rng)),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| fail(path, format!("cannot encode: {e}")))?;
        write_atomic(path, &bytes).map_err(|e| fail(path, format!("cannot write: {e}")))
    }

    /// Reads a checkpoint, checking the format tag, every config and every tensor.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(path, format!("not a safetensors file: {e}")))?;
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
        let net = UNet::new(model.clone()).map_err(|e| fail(path, e.to_string()))?;
        schedule.validate().map_err(|e| fail(path, e.to_string()))?;
        train.validate().map_err(|e| fail(path, e.to_string()))?;

        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(path, format!("not a valid safetensors file: {e}")))?;
        let n = net.layout.arena_len();
        let read = |prefix: &str| {
            let mut v = vec![0.0f32; n];
            read_named(&st, &net.layout, prefix, &mut v).map_err(|m| fail(path, m))?;
            Ok::<_, CheckpointError>(v)
        };
        Ok(Self {
            weights: read("")?,
            ema: read(EMA)?,
            adam_m: read(ADAM_M)?,
            adam_v: read(ADAM_V)?,
            model,
            schedule,
            train,
            step,
            rng,
        })
    }
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
