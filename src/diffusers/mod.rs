//! diffusers interoperability: ddpm samples from `UNet2DModel` and pipeline directories as they
//! are published (google/ddpm-cifar10-32, google/ddpm-celebahq-256, …) and writes its own
//! checkpoints out as such directories.
//!
//! - A `UNet2DModel` directory holds `config.json` and `diffusion_pytorch_model.safetensors`.
//! - A pipeline directory adds `model_index.json`, with the UNet in `unet/` and the scheduler's
//!   settings in `scheduler/scheduler_config.json`.
//!
//! Our parameter names are diffusers' keys ([`keys`] maps the older attention names) and our
//! configs use diffusers' field names ([`crate::nn::UNetConfig`], [`crate::diffusion::ScheduleConfig`]),
//! so conversion is mostly checking. Every UNet config field and every tensor name, shape and
//! value is verified; scheduler fields that would change the numbers and that ddpm lacks are
//! refused (see [`scheduler`]). Each refusal is an error naming the file and the field or key.

pub mod export;
pub mod import;
pub mod keys;
pub mod scheduler;

use std::path::{Path, PathBuf};

pub use export::{export, ExportOptions};
pub use import::{load, DiffusersModel, DirKind};
pub use scheduler::SchedulerFile;

/// The diffusers release the goldens in `tests/fixtures/diffusers` were made with; written into
/// exported configs as `_diffusers_version`.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

pub const MODEL_INDEX: &str = "model_index.json";
pub const UNET_CONFIG: &str = "config.json";
pub const UNET_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER_CONFIG: &str = "scheduler_config.json";

/// A diffusers directory or file that ddpm cannot use, naming the file and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}: {msg}", path.display())]
pub struct DiffusersError {
    pub path: PathBuf,
    pub msg: String,
}

pub(crate) fn fail(path: &Path, msg: impl Into<String>) -> DiffusersError {
    DiffusersError {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, DiffusersError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| fail(path, format!("not valid JSON: {e}")))
}
