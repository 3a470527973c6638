//! `scheduler_config.json` ↔ [`ScheduleConfig`].
//!
//! Honoured: `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`, `trained_betas`,
//! `clip_sample`, `clip_sample_range`, `prediction_type`, `variance_type`, `timestep_spacing`,
//! `steps_offset`, `set_alpha_to_one`. Settings that would change the numbers and that ddpm does
//! not implement (`thresholding`, `rescale_betas_zero_snr`, learned variances) are errors rather
//! than silently dropped; everything else (`_class_name`, `sample_max_value`, …) is ignored.

use std::path::Path;

use serde_json::{json, Value};

use super::{fail, read_json, DiffusersError, DIFFUSERS_VERSION};
use crate::diffusion::{ScheduleConfig, Spacing};

/// A scheduler's settings and the class that wrote them.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerFile {
    /// `_class_name`, e.g. `DDPMScheduler`, `DDIMScheduler`.
    pub class_name: Option<String>,
    pub config: ScheduleConfig,
}

impl SchedulerFile {
    /// Whether the pipeline was published with a DDIM scheduler (its default sampler).
    pub fn is_ddim(&self) -> bool {
        self.class_name.as_deref() == Some("DDIMScheduler")
    }
}

/// Reads `scheduler_config.json`.
pub fn read(path: &Path) -> Result<SchedulerFile, DiffusersError> {
    parse(read_json(path)?).map_err(|msg| fail(path, msg))
}

/// A flag that must be false (or absent): ddpm does not implement what it turns on.
fn refuse_if_true(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    why: &str,
) -> Result<(), String> {
    match obj.get(key) {
        Some(Value::Bool(true)) => Err(format!("`{key}`: true is not supported ({why})")),
        Some(Value::Bool(false)) | Some(Value::Null) | None => Ok(()),
        Some(other) => Err(format!("`{key}`: expected true or false, got {other}")),
    }
}

/// [`read`] on parsed JSON; the error names the field.
pub fn parse(value: Value) -> Result<SchedulerFile, String> {
    let Value::Object(mut obj) = value else {
        return Err("expected a JSON object of scheduler settings".into());
    };
    let class_name = match obj.get("_class_name") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let has_betas = ["beta_schedule", "beta_start", "beta_end", "trained_betas"]
        .iter()
        .any(|k| obj.contains_key(*k));
    if let Some(class) = &class_name {
        if !has_betas && !matches!(class.as_str(), "DDPMScheduler" | "DDIMScheduler") {
            return Err(format!(
                "`_class_name`: {class} has no β schedule (beta_schedule, beta_start, beta_end or \
                 trained_betas); ddpm samples models trained on a β schedule only"
            ));
        }
    }
    refuse_if_true(
        &obj,
        "thresholding",
        "dynamic thresholding of x̂₀ is not implemented; use clip_sample",
    )?;
    refuse_if_true(
        &obj,
        "rescale_betas_zero_snr",
        "a zero terminal SNR schedule is not implemented",
    )?;
    if let Some(Value::String(v)) = obj.get("variance_type") {
        match v.as_str() {
            // σ = exp(½ log β̃) is σ = √β̃: the same step, computed another way.
            "fixed_small_log" => {
                obj.insert("variance_type".into(), json!("fixed_small"));
            }
            "learned" | "learned_range" => {
                return Err(format!(
                    "`variance_type`: `{v}` needs a model that also predicts its variance \
                     (out_channels = 2 × in_channels), which ddpm does not support; expected \
                     fixed_small or fixed_large"
                ))
            }
            _ => {}
        }
    }
    if let Some(Value::String(s)) = obj.get("timestep_spacing") {
        if !["leading", "trailing", "linspace"].contains(&s.as_str()) {
            return Err(format!(
                "`timestep_spacing`: `{s}` is not a diffusers spacing (leading, trailing or linspace)"
            ));
        }
    }
    let config: ScheduleConfig = crate::json_fields::from_value(Value::Object(obj))
        .map_err(|e| format!("`{}`: {}", e.field, e.msg))?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(SchedulerFile { class_name, config })
}

/// The `scheduler_config.json` of a `DDPMScheduler` (or, with `ddim`, a `DDIMScheduler`) with
/// our settings, each class given only the fields it has. `uniform` and `quad` spacings have no
/// diffusers equivalent: they are written as `leading`, and the returned note says so.
pub fn to_json(cfg: &ScheduleConfig, ddim: bool) -> (Value, Option<String>) {
    let mut v = serde_json::to_value(cfg).expect("a schedule config always serializes");
    let (class, not_a_field) = if ddim {
        ("DDIMScheduler", "variance_type")
    } else {
        ("DDPMScheduler", "set_alpha_to_one")
    };
    v.as_object_mut()
        .expect("a struct serializes to an object")
        .remove(not_a_field);
    let note = match cfg.timestep_spacing {
        Spacing::Leading | Spacing::Trailing | Spacing::Linspace => None,
        other => {
            v["timestep_spacing"] = json!("leading");
            Some(format!(
                "timestep_spacing `{other}` has no diffusers equivalent; wrote `leading`"
            ))
        }
    };
    v["_class_name"] = json!(class);
    v["_diffusers_version"] = json!(DIFFUSERS_VERSION);
    v["thresholding"] = json!(false);
    v["rescale_betas_zero_snr"] = json!(false);
    (v, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{BetaSchedule, PredictionType, VarianceType};

    #[test]
    fn a_published_ddpm_scheduler_config_reads() {
        let cfg = parse(json!({
            "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1",
            "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
            "clip_sample": true, "num_train_timesteps": 1000, "trained_betas": null,
            "variance_type": "fixed_small"
        }))
        .unwrap();
        assert_eq!(cfg.class_name.as_deref(), Some("DDPMScheduler"));
        assert!(!cfg.is_ddim());
        assert_eq!(cfg.config, ScheduleConfig::default());
    }

    #[test]
    fn every_honoured_field_is_read() {
        let f = parse(json!({
            "_class_name": "DDIMScheduler", "num_train_timesteps": 4,
            "beta_schedule": "scaled_linear", "trained_betas": [0.1, 0.2, 0.3, 0.4],
            "clip_sample": false, "clip_sample_range": 2.5, "prediction_type": "v_prediction",
            "variance_type": "fixed_small_log", "timestep_spacing": "trailing",
            "steps_offset": 1, "set_alpha_to_one": false, "sample_max_value": 1.0,
            "dynamic_thresholding_ratio": 0.995, "thresholding": false
        }))
        .unwrap();
        let c = &f.config;
        assert!(f.is_ddim());
        assert_eq!(c.num_train_timesteps, 4);
        assert_eq!(c.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(c.trained_betas.as_deref(), Some(&[0.1, 0.2, 0.3, 0.4][..]));
        assert!(!c.clip_sample);
        assert_eq!(c.clip_sample_range, 2.5);
        assert_eq!(c.prediction_type, PredictionType::VPrediction);
        assert_eq!(c.variance_type, VarianceType::FixedSmall);
        assert_eq!(c.timestep_spacing, Spacing::Trailing);
        assert_eq!(c.steps_offset, 1);
        assert!(!c.set_alpha_to_one);
    }

    #[test]
    fn settings_ddpm_cannot_honour_are_named() {
        for (cfg, field) in [
            (json!({"thresholding": true}), "thresholding"),
            (
                json!({"rescale_betas_zero_snr": true}),
                "rescale_betas_zero_snr",
            ),
            (json!({"variance_type": "learned_range"}), "variance_type"),
            (json!({"variance_type": "fixed_large_log"}), "variance_type"),
            (json!({"beta_schedule": "exp"}), "beta_schedule"),
            (json!({"timestep_spacing": "quad"}), "timestep_spacing"),
            (
                json!({"num_train_timesteps": "many"}),
                "num_train_timesteps",
            ),
            (json!({"trained_betas": [0.1]}), "trained_betas"),
            (json!({"beta_start": 0.5, "beta_end": 0.1}), "beta_end"),
            (json!({"steps_offset": 1000}), "steps_offset"),
            (
                json!({"num_train_timesteps": 1u64 << 40}),
                "num_train_timesteps",
            ),
            (
                json!({"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000}),
                "ScoreSdeVeScheduler",
            ),
        ] {
            let e = parse(cfg.clone()).unwrap_err();
            assert!(e.contains(field), "{cfg}: {e}");
        }
    }

    #[test]
    fn written_configs_read_back() {
        let cfg = ScheduleConfig {
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            prediction_type: PredictionType::Sample,
            timestep_spacing: Spacing::Quad,
            ..Default::default()
        };
        let (v, note) = to_json(&cfg, false);
        assert!(note.unwrap().contains("quad"));
        assert!(
            v.get("set_alpha_to_one").is_none(),
            "not a DDPMScheduler field"
        );
        let back = parse(v).unwrap();
        assert_eq!(back.class_name.as_deref(), Some("DDPMScheduler"));
        let want = ScheduleConfig {
            timestep_spacing: Spacing::Leading,
            ..cfg
        };
        assert_eq!(back.config, want);
        let ddim = ScheduleConfig {
            set_alpha_to_one: false,
            ..want.clone()
        };
        let (v, _) = to_json(&ddim, true);
        assert!(
            v.get("variance_type").is_none(),
            "not a DDIMScheduler field"
        );
        let back = parse(v).unwrap();
        assert!(back.is_ddim());
        assert_eq!(back.config, ddim);
    }
}
