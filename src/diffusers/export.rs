//! Writing a model as a diffusers pipeline directory:
//!
//! ```text
//! DIR/model_index.json                          DDPMPipeline (or DDIMPipeline): unet + scheduler
//! DIR/unet/config.json                          UNet2DModel config
//! DIR/unet/diffusion_pytorch_model.safetensors  f32 weights under diffusers' current keys
//! DIR/scheduler/scheduler_config.json           DDPMScheduler (or DDIMScheduler) config
//! ```
//!
//! `DDPMPipeline.from_pretrained(DIR)` and `UNet2DModel.from_pretrained(DIR, subfolder="unet")`
//! load it. The directory is assembled under a temporary name beside DIR and renamed into place,
//! so a failure never leaves a half-written export at DIR.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{
    fail, scheduler, DiffusersError, DIFFUSERS_VERSION, MODEL_INDEX, SCHEDULER_CONFIG, UNET_CONFIG,
    UNET_WEIGHTS,
};
use crate::diffusion::ScheduleConfig;
use crate::nn::{UNet, UNetConfig};
use crate::params::named_views;

#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Write only `config.json` and the weights into DIR (a `UNet2DModel` directory).
    pub unet_only: bool,
    /// Replace DIR if it is an earlier diffusers directory (only once the new export is
    /// complete). Any other non-empty DIR is refused.
    pub overwrite: bool,
    /// Write a DDIM pipeline (`DDIMPipeline`, `DDIMScheduler`) instead of a DDPM one.
    pub ddim: bool,
}

/// The UNet's `config.json`: our config already uses diffusers' names and values.
fn unet_config_json(config: &UNetConfig) -> String {
    let mut c = config.clone();
    c.extra.insert("_class_name".into(), json!("UNet2DModel"));
    c.extra
        .insert("_diffusers_version".into(), json!(DIFFUSERS_VERSION));
    c.extra
        .insert("_ddpm_version".into(), json!(env!("CARGO_PKG_VERSION")));
    c.to_json()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DiffusersError> {
    fs::write(path, bytes).map_err(|e| fail(path, format!("cannot write: {e}")))
}

fn mkdir(path: &Path) -> Result<(), DiffusersError> {
    fs::create_dir_all(path).map_err(|e| fail(path, format!("cannot create: {e}")))
}

/// Writes the UNet files into `dir` (which exists).
fn write_unet(
    dir: &Path,
    config: &UNetConfig,
    net: &UNet,
    weights: &[f32],
) -> Result<(), DiffusersError> {
    write(&dir.join(UNET_CONFIG), unet_config_json(config).as_bytes())?;
    let views = named_views(&net.layout, weights, "");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(UNET_WEIGHTS);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| fail(&path, format!("cannot encode: {e}")))?;
    write(&path, &bytes)
}

/// Writes `weights` (in the layout of `UNet::new(config)`) and the schedule as a diffusers
/// directory at `out`. Returns notes for the user (settings diffusers cannot express).
pub fn export(
    out: &Path,
    config: &UNetConfig,
    weights: &[f32],
    schedule: &ScheduleConfig,
    opts: ExportOptions,
) -> Result<Vec<String>, DiffusersError> {
    let net = UNet::new(config.clone()).map_err(|e| fail(out, e.to_string()))?;
    if weights.len() != net.layout.arena_len() {
        return Err(fail(
            out,
            format!(
                "{} weight values for a model that needs {}",
                weights.len(),
                net.layout.arena_len()
            ),
        ));
    }
    let occupied = match fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) if out.exists() && !out.is_dir() => {
            return Err(fail(out, "exists and is not a directory"))
        }
        Err(e) if out.exists() => return Err(fail(out, format!("cannot read: {e}"))),
        Err(_) => false,
    };
    if occupied && !opts.overwrite {
        return Err(fail(
            out,
            "already exists and is not empty; choose another --out, or pass --force to replace \
             an earlier export",
        ));
    }
    let earlier_export = out.join(MODEL_INDEX).is_file()
        || (out.join(UNET_CONFIG).is_file() && out.join(UNET_WEIGHTS).is_file());
    if occupied && !earlier_export {
        return Err(fail(
            out,
            "is not empty and not a diffusers directory: --force replaces only an earlier export",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    mkdir(&parent)?;
    let name = out
        .file_name()
        .ok_or_else(|| fail(out, "needs a directory name"))?
        .to_string_lossy()
        .into_owned();
    let staging = parent.join(format!(".{name}.export-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);

    let mut notes = Vec::new();
    let result = (|| {
        mkdir(&staging)?;
        if opts.unet_only {
            write_unet(&staging, config, &net, weights)?;
        } else {
            mkdir(&staging.join("unet"))?;
            mkdir(&staging.join("scheduler"))?;
            write_unet(&staging.join("unet"), config, &net, weights)?;
            let (sched, note) = scheduler::to_json(schedule, opts.ddim);
            notes.extend(note);
            let text = serde_json::to_string_pretty(&sched).expect("JSON values serialize");
            write(
                &staging.join("scheduler").join(SCHEDULER_CONFIG),
                text.as_bytes(),
            )?;
            let (pipeline, scheduler) = if opts.ddim {
                ("DDIMPipeline", "DDIMScheduler")
            } else {
                ("DDPMPipeline", "DDPMScheduler")
            };
            let index = json!({
                "_class_name": pipeline,
                "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", scheduler],
                "unet": ["diffusers", "UNet2DModel"],
            });
            let text = serde_json::to_string_pretty(&index).expect("JSON values serialize");
            write(&staging.join(MODEL_INDEX), text.as_bytes())?;
        }
        // Swap into place: the old directory is removed only once the new one is there.
        let old = parent.join(format!(".{name}.replaced-{}", std::process::id()));
        if out.exists() {
            fs::rename(out, &old).map_err(|e| fail(out, format!("cannot move aside: {e}")))?;
        }
        if let Err(e) = fs::rename(&staging, out) {
            if old.exists() {
                let _ = fs::rename(&old, out);
            }
            return Err(fail(out, format!("cannot move the export into place: {e}")));
        }
        if old.exists() {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| notes)
}
