//! Finding and reading the FID Inception's weights: the safetensors file that
//! `scripts/convert_fid_inception.py` makes from pytorch-fid's published
//! `pt_inception-2015-12-05-6726825d.pth` (format in docs/fid.md).
//!
//! Tensor names are pytorch-fid's state-dict names: `<layer>.conv.weight` (C_out, C_in, kh, kw)
//! and `<layer>.bn.{weight,bias,running_mean,running_var}` (C_out), all f32, e.g.
//! `Mixed_6b.branch7x7_2.conv.weight`. Every tensor the network needs is checked (present, f32,
//! the expected shape, finite) before any image is read; an error names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::layer::{ConvBn, ConvBnParams, ConvSpec};

/// Where pytorch-fid downloads its weights from (and the file to convert).
pub const WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// The converted file's name in the cache directory.
pub const CACHE_NAME: &str = "pt_inception-2015-12-05.safetensors";
/// The converter's `format` metadata.
pub const FORMAT: &str = "ddpm-fid-inception-v1";

/// `$XDG_CACHE_HOME/ddpm/pt_inception-2015-12-05.safetensors`, or `~/.cache/ddpm/…` when
/// XDG_CACHE_HOME is unset or empty; None without either variable.
pub fn default_path() -> Option<PathBuf> {
    let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    let cache = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("ddpm").join(CACHE_NAME))
}

/// What to do without the weights: download, convert, and where the result goes.
pub fn how_to_get(default: Option<&Path>) -> String {
    let out = default.map_or("the --out PATH you choose".to_string(), |p| {
        p.display().to_string()
    });
    format!(
        "download pytorch-fid's Inception weights (91 MB) from {WEIGHTS_URL}, then convert them with \
         `python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth` (needs torch and \
         safetensors; writes {out}, where ddpm looks by default), or pass --inception PATH to a converted \
         file (docs/fid.md)"
    )
}

/// The weights file to read: `--inception` when given (it must exist), else the default cache
/// location (which must exist). Errors say what to download and run.
pub fn resolve(flag: Option<&Path>) -> Result<PathBuf> {
    let default = default_path();
    match flag {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) if p.exists() => bail!(
            "--inception {}: not a file; expected the converted FID Inception weights (.safetensors)",
            p.display()
        ),
        Some(p) => bail!(
            "--inception {}: no such file; {}",
            p.display(),
            how_to_get(default.as_deref())
        ),
        None => match default {
            Some(d) if d.is_file() => Ok(d),
            Some(d) => bail!(
                "no FID Inception weights: --inception is not given and {} does not exist; {}",
                d.display(),
                how_to_get(Some(&d))
            ),
            None => bail!(
                "no FID Inception weights: --inception is not given and neither HOME nor XDG_CACHE_HOME is set; {}",
                how_to_get(None)
            ),
        },
    }
}

/// The f32 tensors of a weights file, checked one by one as the network asks for them.
pub struct WeightFile {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl WeightFile {
    /// Reads `path` as safetensors. A PyTorch `.pth` (a zip archive) or anything else that is
    /// not safetensors is an error saying what to run.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.starts_with(b"PK\x03\x04") {
            bail!(
                "{}: a zip archive (a PyTorch .pth?), not the converted weights; convert it with \
                 `python scripts/convert_fid_inception.py {}` and pass the .safetensors it writes",
                path.display(),
                path.display()
            );
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow!(
                "{}: not a safetensors file ({e}); expected the FID Inception weights that \
                 scripts/convert_fid_inception.py writes",
                path.display()
            )
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!(
                    "{}: tensor `{name}` is {:?}, expected F32",
                    path.display(),
                    view.dtype()
                );
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The values of `name`, which must have `shape` and be finite.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let Some((got, values)) = self.tensors.get(name) else {
            bail!(
                "{}: tensor `{name}` is missing (shape {shape:?} expected); not pytorch-fid's FID \
                 Inception converted by scripts/convert_fid_inception.py",
                self.path.display()
            );
        };
        if got != shape {
            bail!(
                "{}: tensor `{name}` has shape {got:?}, expected {shape:?}",
                self.path.display()
            );
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor `{name}` holds a non-finite value at index {i}",
                self.path.display()
            );
        }
        Ok(values)
    }

    /// The layer `name` (a `BasicConv2d`) with geometry `spec`, batch norm folded in.
    pub fn conv_bn(&self, name: &str, spec: ConvSpec) -> Result<ConvBn> {
        let c = [spec.c_out];
        let weight = self.tensor(&format!("{name}.conv.weight"), &spec.weight_shape())?;
        let bn = |part: &str| self.tensor(&format!("{name}.bn.{part}"), &c);
        let (gamma, beta, mean, var) = (
            bn("weight")?,
            bn("bias")?,
            bn("running_mean")?,
            bn("running_var")?,
        );
        if let Some(i) = var.iter().position(|&v| v < 0.0) {
            bail!(
                "{}: tensor `{name}.bn.running_var` is negative at index {i}; a variance cannot be",
                self.path.display()
            );
        }
        Ok(ConvBn::fold(
            spec,
            &ConvBnParams {
                weight,
                gamma,
                beta,
                mean,
                var,
            },
        ))
    }
}
