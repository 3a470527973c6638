//! What `ddpm fid` compares: each side is a set of images or a statistics file.
//!
//! - a folder of images (searched recursively, as `ddpm train` reads folders: PNG, JPEG, BMP,
//!   GIF), each read at its own size, converted to RGB (grey replicated, alpha dropped, as PIL's
//!   `convert("RGB")` does in pytorch-fid);
//! - MNIST (`train-images-idx3-ubyte[.gz]`, grey replicated to RGB) or the CIFAR-10 training
//!   batches, at their own 28×28 and 32×32, through ddpm's loaders (`mnist:PATH`, `cifar10:PATH`
//!   or a path they recognise);
//! - a `ddpm sample --save-raw` file: the safetensors tensor `sample`, (N, C, H, W) f32 in
//!   [-1, 1] (C = 1 or 3); values outside [-1, 1] are clamped, as the PNGs clamp them, but not
//!   rounded to 8 bits;
//! - a statistics file (`.npz` with `mu` and `sigma`, pytorch-fid's format).
//!
//! Images are mapped to [0, 1] (u8 / 255, or (x + 1) / 2), then resized and scaled as
//! pytorch-fid does ([`prepare_image`]). Everything is read and checked when the side is opened,
//! before any feature is computed: an unreadable image, a wrong tensor or a statistics file of
//! the wrong dimension is an error naming the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::fid::read_stats;
use super::inception::{prepare_image, FidInception, FEATURES, INPUT_SIZE};
use super::GaussianFit;
use crate::data::{self, cifar10, folder, mnist, DataSpec, Dataset};

/// Decoded folder images kept in memory, in bytes; past this they are decoded again when the
/// network needs them (each is decoded once up front to check it).
const KEEP_BYTES: usize = 1 << 30;
/// Files decoded per parallel round while checking a folder.
const DECODE_ROUND: usize = 256;

/// One side of the comparison.
pub enum Side {
    Images(ImageSet),
    /// A statistics file and what it holds.
    Stats {
        path: PathBuf,
        fit: GaussianFit,
    },
}

/// Images to run through the network, each readable as (3, H, W) in [0, 1].
pub struct ImageSet {
    /// What was read, for messages: `folder samples/`, `cifar10:data/`, `raw x.safetensors`.
    pub description: String,
    kind: Kind,
}

enum Kind {
    Files {
        files: Vec<PathBuf>,
        kept: Vec<Option<RgbImage>>,
    },
    Dataset(Dataset),
    Raw {
        chw: (usize, usize, usize),
        values: Vec<f32>,
    },
}

impl ImageSet {
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Files { files, .. } => files.len(),
            Kind::Dataset(ds) => ds.len(),
            Kind::Raw {
                chw: (c, h, w),
                values,
            } => values.len() / (c * h * w),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i`, resized and scaled into a network input slot (3, 299, 299).
    pub fn prepare(&self, i: usize, slot: &mut [f32]) -> Result<()> {
        let (hw, rgb) = match &self.kind {
            Kind::Files { files, kept } => {
                let decoded;
                let img = match &kept[i] {
                    Some(img) => img,
                    None => {
                        decoded = read_rgb(&files[i])?;
                        &decoded
                    }
                };
                let (w, h) = (img.width() as usize, img.height() as usize);
                let mut planes = vec![0.0f32; 3 * h * w];
                for (p, px) in img.pixels().enumerate() {
                    for c in 0..3 {
                        planes[c * h * w + p] = f32::from(px[c]) / 255.0;
                    }
                }
                ((h, w), planes)
            }
            Kind::Dataset(ds) => {
                let s = ds.size;
                let img = ds.image(i);
                let planes = (0..3)
                    .flat_map(|c| {
                        let plane = if ds.channels == 1 { 0 } else { c };
                        img[plane * s * s..(plane + 1) * s * s].iter()
                    })
                    .map(|&v| f32::from(v) / 255.0)
                    .collect();
                ((s, s), planes)
            }
            Kind::Raw {
                chw: (c, h, w),
                values,
            } => {
                let (c, h, w) = (*c, *h, *w);
                let img = &values[i * c * h * w..(i + 1) * c * h * w];
                let planes = (0..3)
                    .flat_map(|ch| {
                        let plane = if c == 1 { 0 } else { ch };
                        img[plane * h * w..(plane + 1) * h * w].iter()
                    })
                    .map(|&v| (v.clamp(-1.0, 1.0) + 1.0) * 0.5)
                    .collect();
                ((h, w), planes)
            }
        };
        prepare_image(&rgb, hw, slot);
        Ok(())
    }
}

/// Whether `arg` names a statistics file (an existing `.npz`): such a side needs no network.
pub fn is_stats_file(arg: &str) -> bool {
    let path = Path::new(arg);
    path.is_file() && has_extension(path, "npz")
}

impl ImageSet {
    /// Pool3 features of every image, (N, 2048) row-major, `batch` images at a time;
    /// `progress(done, total)` after each batch.
    pub fn features(
        &self,
        net: &FidInception,
        batch: usize,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Vec<f32>> {
        let n = self.len();
        let slot = 3 * INPUT_SIZE * INPUT_SIZE;
        let mut out = Vec::with_capacity(n * FEATURES);
        let mut start = 0;
        while start < n {
            let b = batch.max(1).min(n - start);
            let mut x = vec![0.0f32; b * slot];
            x.par_chunks_mut(slot)
                .enumerate()
                .map(|(j, s)| self.prepare(start + j, s))
                .collect::<Result<()>>()?;
            out.extend(net.features(b, x)?);
            start += b;
            progress(start as u64, n as u64);
        }
        Ok(out)
    }
}

/// The forms a side can take, for error messages.
const FORMS: &str = "an image folder, MNIST or CIFAR-10 files (mnist:PATH, cifar10:PATH), a \
                     `ddpm sample --save-raw` .safetensors file, or a statistics .npz (mu, sigma)";

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// Whether `arg` has one of the data-source prefixes (`folder:`, `mnist:`, `cifar10:`).
fn prefixed(arg: &str) -> bool {
    ["folder:", "mnist:", "cifar10:"]
        .iter()
        .any(|p| arg.starts_with(p))
}

/// The cheap first check of a side, before anything is loaded: a bare path must exist.
pub fn check_exists(arg: &str, what: &str) -> Result<()> {
    ensure!(
        prefixed(arg) || Path::new(arg).exists(),
        "{what} {arg}: no such file or directory; expected {FORMS}"
    );
    Ok(())
}

/// Opens and checks one side; `what` names it in errors (`SAMPLES`, `REFERENCE`).
pub fn open(arg: &str, what: &str) -> Result<Side> {
    check_exists(arg, what)?;
    let path = Path::new(arg);
    let side = if is_stats_file(arg) {
        let fit = read_stats(path, FEATURES).with_context(|| format!("{what} {arg}"))?;
        Side::Stats {
            path: path.to_path_buf(),
            fit,
        }
    } else if path.is_file() && has_extension(path, "safetensors") {
        Side::Images(open_raw(path).with_context(|| format!("{what} {arg}"))?)
    } else {
        let spec = if prefixed(arg) {
            arg.parse::<DataSpec>()
                .map_err(|e| anyhow!("{what} {arg}: {e}"))?
        } else if path.is_dir() {
            DataSpec::detect(path).map_err(|e| anyhow!("{what} {arg}: {e}"))?
        } else if mnist::is_images_file_name(path) {
            DataSpec::Mnist(path.to_path_buf())
        } else if cifar10::is_batch_file_name(path) {
            DataSpec::Cifar10(path.to_path_buf())
        } else {
            bail!(
                "{what} {arg}: a file that is none of these (by its name): a statistics .npz, a \
                 --save-raw .safetensors, MNIST images (*-images-idx3-ubyte[.gz]), a CIFAR-10 batch \
                 (data_batch_N.bin); expected {FORMS}"
            )
        };
        let set = match spec {
            DataSpec::Synthetic => bail!(
                "{what} {arg}: the built-in synthetic set has no fixed size to measure at; \
                 expected {FORMS}"
            ),
            DataSpec::Folder(dir) => open_folder(&dir).with_context(|| format!("{what} {arg}"))?,
            DataSpec::Mnist(ref p) => {
                open_dataset(&spec, mnist_side(p)).with_context(|| format!("{what} {arg}"))?
            }
            DataSpec::Cifar10(_) => {
                open_dataset(&spec, 32).with_context(|| format!("{what} {arg}"))?
            }
        };
        Side::Images(set)
    };
    if let Side::Images(set) = &side {
        ensure!(
            set.len() >= 2,
            "{what} {arg}: {} image{} found, at least 2 are needed (a covariance needs two)",
            set.len(),
            if set.len() == 1 { "" } else { "s" }
        );
    }
    Ok(side)
}

/// Decodes any supported image to RGB the way PIL's `convert("RGB")` does: grey replicated,
/// palettes expanded, alpha dropped (not composited).
fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(folder::read_image(path)?.into_rgb8())
}

fn open_folder(dir: &Path) -> Result<ImageSet> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    ensure!(
        meta.is_dir(),
        "{}: expected a directory of images",
        dir.display()
    );
    let files = folder::image_files(dir)?;
    let mut kept = Vec::with_capacity(files.len());
    let mut bytes = 0usize;
    for round in files.chunks(DECODE_ROUND) {
        let decoded: Vec<Result<RgbImage>> = round.par_iter().map(|f| read_rgb(f)).collect();
        for img in decoded {
            // The first unreadable file in visiting order.
            let img = img?;
            let size = img.as_raw().len();
            if bytes + size <= KEEP_BYTES {
                bytes += size;
                kept.push(Some(img));
            } else {
                kept.push(None);
            }
        }
    }
    Ok(ImageSet {
        description: format!("folder {}", dir.display()),
        kind: Kind::Files { files, kept },
    })
}

/// The side of the images in an MNIST-style IDX file (28 for MNIST itself), from its header;
/// 28 when the header cannot be read (the loader then reports why).
fn mnist_side(path: &Path) -> usize {
    let file = if path.is_dir() {
        mnist::find_images(path)
    } else {
        Some(path.to_path_buf())
    };
    let header = || -> Option<[u8; 16]> {
        let mut raw = std::fs::File::open(file.as_ref()?).ok()?;
        let mut magic = [0u8; 2];
        raw.read_exact(&mut magic).ok()?;
        let mut rest: Box<dyn Read> = Box::new(std::io::Cursor::new(magic).chain(raw));
        if magic == [0x1f, 0x8b] {
            rest = Box::new(flate2::read::GzDecoder::new(rest));
        }
        let mut head = [0u8; 16];
        rest.read_exact(&mut head).ok()?;
        Some(head)
    };
    header()
        .and_then(|h| {
            let rows = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            let cols = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize;
            (rows == cols && rows > 0).then_some(rows)
        })
        .unwrap_or(28)
}

fn open_dataset(spec: &DataSpec, size: usize) -> Result<ImageSet> {
    let ds = data::load(spec, size, 3, false)?;
    Ok(ImageSet {
        description: spec.to_string(),
        kind: Kind::Dataset(ds),
    })
}

/// The `sample` tensor of a `--save-raw` file.
fn open_raw(path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("not a safetensors file ({e})"))?;
    let names = st.names();
    let view = st.tensor("sample").map_err(|_| {
        anyhow!(
            "no tensor `sample` (it holds {}); expected a `ddpm sample --save-raw` file",
            if names.is_empty() {
                "none".to_string()
            } else {
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    })?;
    ensure!(
        view.dtype() == Dtype::F32,
        "tensor `sample` is {:?}, expected F32",
        view.dtype()
    );
    let shape = view.shape();
    ensure!(
        shape.len() == 4 && (shape[1] == 1 || shape[1] == 3) && shape[2] > 0 && shape[3] > 0,
        "tensor `sample` has shape {shape:?}, expected (N, C, H, W) with C 1 or 3"
    );
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let item = shape[1] * shape[2] * shape[3];
        bail!("tensor `sample`: image {} holds NaN or infinity", i / item);
    }
    Ok(ImageSet {
        description: format!("raw {}", path.display()),
        kind: Kind::Raw {
            chw: (shape[1], shape[2], shape[3]),
            values,
        },
    })
}
