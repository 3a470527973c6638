//! What `--checkpoint` can name: a ddpm checkpoint file, a ddpm run directory (its latest
//! checkpoint), or a diffusers `UNet2DModel` / pipeline directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::diffusers::{self, DirKind};
use crate::diffusion::ScheduleConfig;
use crate::nn::UNetConfig;
use crate::train::{checkpoint_dir, Checkpoint};

/// A model to sample from or export, whatever format it came in.
pub struct ModelSource {
    pub model: UNetConfig,
    /// In the layout of `UNet::new(model)`.
    pub weights: Vec<f32>,
    pub schedule: ScheduleConfig,
    /// The file the weights came from.
    pub path: PathBuf,
    /// Read from diffusers files (whose pipelines have their own sampling defaults).
    pub from_diffusers: bool,
    /// The pipeline was published with a DDIM scheduler.
    pub ddim_scheduler: bool,
    /// The class that stands for "no class" in a model trained with label dropout (its last
    /// class embedding); what classifier-free guidance calls for the unconditional output.
    pub null_class: Option<u32>,
    /// The run's training settings, for a ddpm checkpoint (what data it learned from).
    pub train: Option<crate::train::TrainConfig>,
    /// Lines worth telling the user about what was read.
    pub notes: Vec<String>,
    /// What was read: `ddpm checkpoint (step N)`, `diffusers pipeline`, `diffusers UNet2DModel`.
    pub kind: String,
    /// The schedule came from the source (a ddpm checkpoint or a pipeline's scheduler config),
    /// not from DDPMScheduler's defaults for a bare `UNet2DModel` directory.
    pub schedule_given: bool,
    /// Opened for training ([`ModelSource::open_for_training`]): a ddpm checkpoint's EMA weights,
    /// `weights` being its raw ones. `None` otherwise, and for a diffusers model (one set).
    pub ema: Option<Vec<f32>>,
}

/// Which of a ddpm checkpoint's weight sets to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Ema,
    Raw,
    /// The raw weights, and the EMA besides.
    Both,
}

/// Whether `dir` was written by `ddpm train`: its config.json holds the run's settings.
fn is_run_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|v| v.get("model").is_some() && v.get("train").is_some())
}

impl ModelSource {
    /// Which weights were read, for a summary line: `EMA weights of runs/ddpm/checkpoints/…`
    /// (`ema` as passed to [`ModelSource::open`]).
    pub fn describe_weights(&self, ema: bool) -> String {
        let weights = match (self.from_diffusers, ema) {
            (true, _) => "weights",
            (false, true) => "EMA weights",
            (false, false) => "raw weights",
        };
        format!("{weights} of {}", self.path.display())
    }

    /// Loads `path`; `ema` picks a ddpm checkpoint's EMA weights over its raw ones.
    pub fn open(path: &Path, ema: bool) -> Result<Self> {
        Self::open_as(path, if ema { Pick::Ema } else { Pick::Raw })
    }

    /// Loads `path` to train from: a ddpm checkpoint's raw weights with its EMA in
    /// [`ModelSource::ema`], or a diffusers model's one set of weights.
    pub fn open_for_training(path: &Path) -> Result<Self> {
        Self::open_as(path, Pick::Both)
    }

    fn open_as(path: &Path, pick: Pick) -> Result<Self> {
        if path.is_dir() {
            // A run directory also holds a config.json (the run's settings): look for its
            // checkpoint first.
            let ck_dir = path.join("checkpoints");
            let has_checkpoints = checkpoint_dir::step_files(&ck_dir).is_ok_and(|f| !f.is_empty())
                || ck_dir.join(checkpoint_dir::LATEST).is_file();
            if has_checkpoints {
                // The newest checkpoint that verifies, saying which newer ones were passed over.
                let found = checkpoint_dir::newest_valid(&ck_dir)?;
                let mut source = Self::from_checkpoint(&found.path, found.checkpoint, pick);
                for e in &found.rejected {
                    source
                        .notes
                        .push(format!("skipping a checkpoint that does not verify: {e}"));
                }
                if !found.rejected.is_empty() {
                    source.notes.push(format!("using {}", found.path.display()));
                }
                return Ok(source);
            }
            if is_run_dir(path) {
                bail!(
                    "{}: a ddpm run directory with no checkpoint yet (no \
                     checkpoints/latest.safetensors)",
                    path.display()
                );
            }
            if let Some(kind) = DirKind::of(path) {
                return Self::diffusers(path, kind, pick);
            }
            bail!(
                "{}: neither a ddpm run directory (no checkpoints/latest.safetensors) nor a \
                 diffusers directory (no model_index.json or config.json)",
                path.display()
            );
        }
        // A directory named by its config.json or model_index.json.
        let name = path.file_name().and_then(|n| n.to_str());
        if let (Some("config.json" | "model_index.json"), Some(dir)) = (name, path.parent()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            return Self::open_as(dir, pick);
        }
        Ok(Self::from_checkpoint(path, Checkpoint::load(path)?, pick))
    }

    fn from_checkpoint(path: &Path, ck: Checkpoint, pick: Pick) -> Self {
        let (weights, ema) = match pick {
            Pick::Ema => (ck.ema, None),
            Pick::Raw => (ck.weights, None),
            Pick::Both => (ck.weights, Some(ck.ema)),
        };
        Self {
            null_class: ck.train.null_class(ck.model.num_class_embeds),
            train: Some(ck.train.clone()),
            kind: format!("ddpm checkpoint (step {})", ck.step),
            schedule_given: true,
            weights,
            ema,
            model: ck.model,
            schedule: ck.schedule,
            path: path.to_path_buf(),
            from_diffusers: false,
            ddim_scheduler: false,
            notes: Vec::new(),
        }
    }

    fn diffusers(dir: &Path, kind: DirKind, pick: Pick) -> Result<Self> {
        if pick == Pick::Raw {
            bail!(
                "--no-ema: {} is a diffusers model, which has one set of weights",
                dir.display()
            );
        }
        let m = diffusers::load(dir)?;
        let mut notes = Vec::new();
        let what = match kind {
            DirKind::Pipeline => "diffusers pipeline",
            DirKind::UNet => "diffusers UNet2DModel",
        };
        let renamed = match m.renamed_keys {
            0 => String::new(),
            n => format!(" ({n} tensors read under their pre-0.14 attention names)"),
        };
        notes.push(format!("{what} {}: {}{renamed}", dir.display(), m.config));
        let (schedule, ddim) = match &m.scheduler {
            Some(s) => {
                let class = s.class_name.as_deref().unwrap_or("scheduler");
                if !matches!(class, "DDPMScheduler" | "DDIMScheduler") {
                    notes.push(format!(
                        "{class}: using its noise schedule with ddpm's samplers (--sampler)"
                    ));
                }
                (s.config.clone(), s.is_ddim())
            }
            None => {
                notes.push(
                    "no scheduler config: using DDPMScheduler's defaults (linear β from 1e-4 to \
                     0.02, T = 1000, ε prediction, clipping x̂₀ to ±1)"
                        .into(),
                );
                (ScheduleConfig::default(), false)
            }
        };
        Ok(Self {
            kind: what.to_string(),
            schedule_given: m.scheduler.is_some(),
            ema: None,
            model: m.config,
            weights: m.weights,
            schedule,
            path: m.weights_path,
            from_diffusers: true,
            ddim_scheduler: ddim,
            null_class: None,
            train: None,
            notes,
        })
    }
}
