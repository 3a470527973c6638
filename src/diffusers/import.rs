//! Reading a diffusers `UNet2DModel` directory or a whole pipeline directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::keys::modern_key;
use super::scheduler::{self, SchedulerFile};
use super::{
    fail, read_json, DiffusersError, MODEL_INDEX, SCHEDULER_CONFIG, UNET_CONFIG, UNET_WEIGHTS,
};
use crate::nn::{UNet, UNetConfig};
use crate::params::{decode_into, parse_safetensors};

/// What a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    /// `model_index.json`, `unet/`, `scheduler/`.
    Pipeline,
    /// `config.json` and the weights.
    UNet,
}

impl DirKind {
    /// The kind of diffusers directory `dir` is, if it is one.
    pub fn of(dir: &Path) -> Option<Self> {
        if dir.join(MODEL_INDEX).is_file() {
            Some(Self::Pipeline)
        } else if dir.join(UNET_CONFIG).is_file() {
            Some(Self::UNet)
        } else {
            None
        }
    }
}

/// A model read from diffusers files, ready to build and run.
#[derive(Clone, Debug)]
pub struct DiffusersModel {
    pub config: UNetConfig,
    /// Every parameter, in the layout of `UNet::new(config)`.
    pub weights: Vec<f32>,
    /// The pipeline's scheduler; `None` for a bare `UNet2DModel` directory.
    pub scheduler: Option<SchedulerFile>,
    /// The weights file read.
    pub weights_path: PathBuf,
    /// Tensors that used the pre-0.14 attention names.
    pub renamed_keys: usize,
}

/// Reads a pipeline or `UNet2DModel` directory.
pub fn load(dir: &Path) -> Result<DiffusersModel, DiffusersError> {
    match DirKind::of(dir) {
        Some(DirKind::Pipeline) => load_pipeline(dir),
        Some(DirKind::UNet) => load_unet(dir),
        None => Err(fail(
            dir,
            format!(
                "not a diffusers directory: expected {MODEL_INDEX} (a pipeline) or {UNET_CONFIG} \
                 (a UNet2DModel)"
            ),
        )),
    }
}

fn load_pipeline(dir: &Path) -> Result<DiffusersModel, DiffusersError> {
    let index_path = dir.join(MODEL_INDEX);
    let index = read_json(&index_path)?;
    let Value::Object(index) = index else {
        return Err(fail(&index_path, "expected a JSON object"));
    };
    // Each component is ["library", "ClassName"]; `null` entries are absent components.
    let component = |name: &str| -> Option<String> {
        index
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.get(1))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    for (name, v) in &index {
        let known = name.starts_with('_') || name == "unet" || name == "scheduler";
        // diffusers writes an absent optional component as null or [null, null].
        let absent = match v {
            Value::Null => true,
            Value::Array(a) => a.iter().all(Value::is_null),
            _ => false,
        };
        if !known && !absent {
            let class = component(name).unwrap_or_else(|| v.to_string());
            return Err(fail(
                &index_path,
                format!(
                    "component `{name}` ({class}): ddpm runs pixel-space pipelines made of a \
                     UNet2DModel and a scheduler only"
                ),
            ));
        }
    }
    match component("unet").as_deref() {
        Some("UNet2DModel") => {}
        Some(other) => {
            return Err(fail(
                &index_path,
                format!("component `unet` is a {other}; ddpm reads UNet2DModel only"),
            ))
        }
        None => {
            return Err(fail(
                &index_path,
                "no `unet` component (expected \"unet\": [\"diffusers\", \"UNet2DModel\"])",
            ))
        }
    }
    // A component lives in its own folder, or, as in the pipelines published in 2022
    // (google/ddpm-*), at the top level beside model_index.json.
    let folder = |name: &str| {
        let sub = dir.join(name);
        if sub.is_dir() {
            sub
        } else {
            dir.to_path_buf()
        }
    };
    let mut model = load_unet(&folder("unet"))?;
    if component("scheduler").is_some() {
        model.scheduler = Some(scheduler::read(
            &folder("scheduler").join(SCHEDULER_CONFIG),
        )?);
    }
    Ok(model)
}

fn load_unet(dir: &Path) -> Result<DiffusersModel, DiffusersError> {
    let config_path = dir.join(UNET_CONFIG);
    let config = read_unet_config(&config_path)?;
    let net = UNet::new(config.clone()).map_err(|e| fail(&config_path, e.to_string()))?;
    let weights_path = weights_file(dir)?;
    let (weights, renamed_keys) = read_weights(&weights_path, &net)?;
    Ok(DiffusersModel {
        config,
        weights,
        scheduler: None,
        weights_path,
        renamed_keys,
    })
}

/// Reads a `UNet2DModel` `config.json`.
pub fn read_unet_config(path: &Path) -> Result<UNetConfig, DiffusersError> {
    let value = read_json(path)?;
    match value.get("_class_name").and_then(Value::as_str) {
        Some("UNet2DModel") | None => {}
        Some(other) => {
            return Err(fail(
                path,
                format!("`_class_name` is {other}; ddpm reads UNet2DModel only"),
            ))
        }
    }
    // diffusers' default is null (the image size unknown); our struct's default would guess.
    if value.get("sample_size").is_none() {
        return Err(fail(path, "model config: `sample_size`: missing"));
    }
    UNetConfig::from_value(value).map_err(|e| fail(path, e.to_string()))
}

/// The weights file of a UNet directory.
fn weights_file(dir: &Path) -> Result<PathBuf, DiffusersError> {
    let main = dir.join(UNET_WEIGHTS);
    if main.is_file() {
        return Ok(main);
    }
    // A repository published in half precision only.
    for variant in [
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bf16.safetensors",
    ] {
        let p = dir.join(variant);
        if p.is_file() {
            return Ok(p);
        }
    }
    let bin = dir.join("diffusion_pytorch_model.bin");
    let msg = if bin.is_file() {
        format!(
            "only diffusion_pytorch_model.bin is present, a PyTorch pickle that ddpm does not \
             read; convert it once with `python -c \"from diffusers import UNet2DModel; \
             UNet2DModel.from_pretrained('{d}').save_pretrained('{d}')\"` (writes {UNET_WEIGHTS})",
            d = dir.display()
        )
    } else if dir
        .join("diffusion_pytorch_model.safetensors.index.json")
        .is_file()
    {
        "the weights are sharded (diffusion_pytorch_model.safetensors.index.json); ddpm reads \
         one file"
            .to_string()
    } else {
        format!("missing {UNET_WEIGHTS}")
    };
    Err(fail(dir, msg))
}

/// Decodes every parameter of `net` from a diffusers weights file (any float dtype). Missing,
/// extra, mis-shaped and non-finite tensors are errors naming the key.
fn read_weights(path: &Path, net: &UNet) -> Result<(Vec<f32>, usize), DiffusersError> {
    let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let st = parse_safetensors(&bytes)
        .map_err(|e| fail(path, format!("not a valid safetensors file: {e}")))?;
    // Current key → name in the file.
    let mut by_key: HashMap<String, String> = HashMap::new();
    let mut renamed = 0;
    for name in st.names() {
        let key = modern_key(name).into_owned();
        renamed += usize::from(key != name);
        if let Some(first) = by_key.insert(key.clone(), name.to_string()) {
            return Err(fail(
                path,
                format!("tensors `{first}` and `{name}` both hold `{key}`"),
            ));
        }
    }
    let layout = &net.layout;
    let mut weights = vec![0.0f32; layout.arena_len()];
    for spec in layout.specs() {
        let Some(name) = by_key.remove(&spec.name) else {
            return Err(fail(
                path,
                format!("missing tensor `{}` (shape {:?})", spec.name, spec.shape),
            ));
        };
        let t = st.tensor(&name).expect("a name listed by the file");
        if t.shape() != spec.shape.as_slice() {
            return Err(fail(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {:?} for this config",
                    t.shape(),
                    spec.shape
                ),
            ));
        }
        let out = &mut weights[spec.range()];
        decode_into(t.dtype(), t.data(), out)
            .map_err(|msg| fail(path, format!("tensor `{name}`: {msg}")))?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(fail(
                path,
                format!("tensor `{name}` holds {} at flat index {i}", out[i]),
            ));
        }
    }
    if !by_key.is_empty() {
        let mut extra: Vec<String> = by_key.into_values().collect();
        extra.sort_unstable();
        let shown: Vec<String> = extra.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = match extra.len() {
            n if n > 5 => format!(" and {} more", n - 5),
            _ => String::new(),
        };
        return Err(fail(
            path,
            format!(
                "tensor(s) {}{more} are not parameters of the model config.json describes",
                shown.join(", ")
            ),
        ));
    }
    Ok((weights, renamed))
}
