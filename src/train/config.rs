//! Training settings: what `ddpm train` takes on the command line and records in every
//! checkpoint, so `--resume` continues with exactly the same ones.

use serde::{Deserialize, Serialize};

use crate::diffusion::noise::drop_labels;

use crate::optim::{AdamWConfig, EmaConfig};

/// The regression loss of DDPM eq. 14 (L2, "simple") or its L1 variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    L2,
    L1,
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l2" | "mse" => Ok(Self::L2),
            "l1" => Ok(Self::L1),
            _ => Err(format!("unknown loss `{s}` (expected l2 or l1)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The data source as given to `--data` (`synthetic`, `folder:DIR`, `mnist:DIR`, …).
    pub data: String,
    pub image_size: usize,
    pub channels: usize,
    /// Enlarge images smaller than `image_size` instead of refusing them.
    pub upscale: bool,
    /// Condition on the dataset's class labels.
    pub class_conditional: bool,
    /// Probability of replacing a label by the null class (the last class embedding) in
    /// training, so that one model also learns the unconditional output classifier-free
    /// guidance needs (Ho & Salimans 2022). 0: no null class.
    pub label_dropout: f64,
    pub batch_size: usize,
    /// Total optimizer steps of the run.
    pub steps: u64,
    /// Every random draw (batch order, flips, t, ε, dropout) is a counter-based function of
    /// (seed, step), so this one number plus the step is the whole generator state.
    pub seed: u64,
    pub hflip: bool,
    pub loss: LossKind,
    pub optimizer: AdamWConfig,
    /// Global gradient-norm clip (≤ 0 disables it).
    pub grad_clip: f64,
    pub ema: EmaConfig,
    /// Steps between sample grids / checkpoints / CSV rows (0 disables grids and checkpoints
    /// until the end of the run).
    pub sample_every: u64,
    pub checkpoint_every: u64,
    /// How many `step_N` checkpoints to keep, newest first (0 keeps all).
    pub keep_checkpoints: usize,
    /// Stop after this many steps in a row with a non-finite loss or gradient (each is skipped).
    pub max_nonfinite_steps: u64,
    pub log_every: u64,
    /// Images in each sample grid, and the DDIM steps used to draw them.
    pub sample_count: usize,
    pub sample_steps: usize,
    /// Where a fine-tuning run (`--init-from`) took its starting weights; `None` for a run
    /// started from random weights. Kept through `--resume`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
}

/// The starting point of a fine-tuning run, as recorded in its config.json and checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFrom {
    /// `--init-from` as given.
    pub source: String,
    /// The weights file read (absolute when it could be resolved).
    pub weights: String,
    /// What it was: `ddpm checkpoint (step N)`, `diffusers pipeline`, `diffusers UNet2DModel`.
    pub kind: String,
    /// Whether the EMA came from the source; otherwise it started as a copy of the weights.
    pub ema_from_source: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: "synthetic".into(),
            image_size: 16,
            channels: 3,
            upscale: false,
            class_conditional: false,
            label_dropout: 0.0,
            batch_size: 32,
            steps: 3000,
            seed: 0,
            hflip: false,
            loss: LossKind::L2,
            optimizer: AdamWConfig::default(),
            grad_clip: 1.0,
            ema: EmaConfig::default(),
            sample_every: 500,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            max_nonfinite_steps: 10,
            log_every: 10,
            sample_count: 16,
            sample_steps: 50,
            init_from: None,
        }
    }
}

/// The largest batch (and sample grid) accepted.
pub const MAX_BATCH: usize = 1 << 20;

/// A training setting that cannot work, naming the flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("training config: `{field}`: {msg}")]
pub struct TrainConfigError {
    pub field: &'static str,
    pub msg: String,
}

impl TrainConfig {
    /// The null class of a model trained with label dropout: its last class embedding.
    pub fn null_class(&self, num_class_embeds: Option<usize>) -> Option<u32> {
        match num_class_embeds {
            Some(n) if self.label_dropout > 0.0 && n >= 2 => Some((n - 1) as u32),
            _ => None,
        }
    }

    /// A step's class labels as the model sees them: none for an unconditional model; for a
    /// class-conditional one, the batch's labels after label dropout. Both trainers call this,
    /// so the CPU and the GPU drop the same labels.
    pub fn step_labels(
        &self,
        num_class_embeds: Option<usize>,
        batch_labels: Option<&[u32]>,
        step: u64,
    ) -> anyhow::Result<Option<Vec<u32>>> {
        if num_class_embeds.is_none() {
            return Ok(None);
        }
        let given = batch_labels.ok_or_else(|| {
            anyhow::anyhow!("the model is class-conditional but the data has no labels")
        })?;
        Ok(Some(match self.null_class(num_class_embeds) {
            Some(null) => drop_labels(given, self.seed, step, self.label_dropout, null),
            None => given.to_vec(),
        }))
    }

    pub fn validate(&self) -> Result<(), TrainConfigError> {
        let bad = |field, msg: String| Err(TrainConfigError { field, msg });
        if let Err(e) = self.optimizer.validate() {
            return bad("optimizer", e.to_string());
        }
        if let Err(e) = self.ema.validate() {
            return bad("ema", e.to_string());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        // Far above any batch that fits in memory; keeps size arithmetic far from overflow.
        if self.batch_size > MAX_BATCH {
            return bad(
                "batch_size",
                format!("{} is above the limit of {MAX_BATCH}", self.batch_size),
            );
        }
        if self.sample_count > MAX_BATCH {
            return bad(
                "sample_count",
                format!("{} is above the limit of {MAX_BATCH}", self.sample_count),
            );
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if !(self.channels == 1 || self.channels == 3) {
            return bad("channels", format!("{} is not 1 or 3", self.channels));
        }
        if self.image_size < 4 {
            return bad("image_size", format!("{} is below 4", self.image_size));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(
                "label_dropout",
                format!("{} is not in [0, 1)", self.label_dropout),
            );
        }
        if self.grad_clip.is_nan() {
            return bad("grad_clip", "is NaN".into());
        }
        if self.sample_count == 0 {
            return bad("sample_count", "must be at least 1".into());
        }
        if self.sample_steps == 0 {
            return bad("sample_steps", "must be at least 1".into());
        }
        if self.max_nonfinite_steps == 0 {
            return bad("max_nonfinite_steps", "must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log_every", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_labels_drop_to_the_null_class_at_the_configured_rate() {
        let cfg = TrainConfig {
            class_conditional: true,
            label_dropout: 0.5,
            ..TrainConfig::default()
        };
        let given: Vec<u32> = (0..400).map(|i| i % 4).collect();
        // Four data classes and the null class 4.
        let got = cfg.step_labels(Some(5), Some(&given), 7).unwrap().unwrap();
        let dropped = got.iter().filter(|&&y| y == 4).count();
        // 400 draws at p = 0.5: 200 ± 5 standard errors (10 each).
        assert!((150..=250).contains(&dropped), "{dropped} of 400 dropped");
        for (g, y) in given.iter().zip(&got) {
            assert!(y == g || *y == 4, "{g} became {y}");
        }
        // A pure function of the step; another step drops others.
        assert_eq!(
            cfg.step_labels(Some(5), Some(&given), 7).unwrap().unwrap(),
            got
        );
        assert_ne!(
            cfg.step_labels(Some(5), Some(&given), 8).unwrap().unwrap(),
            got
        );
        // Without dropout the labels pass through; an unconditional model takes none.
        let plain = TrainConfig {
            label_dropout: 0.0,
            ..cfg.clone()
        };
        assert_eq!(
            plain
                .step_labels(Some(4), Some(&given), 7)
                .unwrap()
                .unwrap(),
            given
        );
        assert_eq!(cfg.step_labels(None, Some(&given), 7).unwrap(), None);
        let err = cfg.step_labels(Some(5), None, 7).unwrap_err().to_string();
        assert!(err.contains("has no labels"), "{err}");
    }
}
