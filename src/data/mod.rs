//! Datasets and the batch loader.
//!
//! Every source is decoded once into a [`Dataset`]: all images in memory as u8, already resized
//! and cropped to one square size and converted to 1 or 3 channels, so training never touches the
//! disk. Sources: a built-in procedural set ([`synthetic`]), a folder of image files ([`folder`]),
//! MNIST IDX files ([`mnist`]) and the CIFAR-10 binary batches ([`cifar10`]). The [`loader`] turns a
//! dataset into batches whose content depends only on (dataset, seed, step, batch size, flip), so
//! a resumed run sees exactly the batches an uninterrupted one would have.

pub mod cifar10;
pub mod folder;
pub mod loader;
pub mod mnist;
mod resize;
pub mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use loader::{
    batch_indices, epoch_permutation, make_batch, Batch, Loader, LoaderConfig, FLIP_STREAM,
    SHUFFLE_STREAM,
};

/// Smallest square side a dataset can be resized to.
pub const MIN_SIZE: usize = 4;
/// Largest square side: beyond this the in-memory copy of a dataset stops being reasonable.
pub const MAX_SIZE: usize = 1024;

/// Why a data source could not be turned into a [`Dataset`]. Every message names the file or the
/// setting at fault and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A setting or constructor argument that cannot work (size, channels, buffer lengths).
    #[error("{0}")]
    Invalid(String),
    /// A data source string that names nothing we can load.
    #[error("{0}")]
    Spec(String),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but its content is not what the format requires.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: cannot decode the image: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{}: no images found (looked recursively for {} files, skipping hidden ones)",
        dir.display(),
        folder::EXTENSIONS.join("/")
    )]
    NoImages { dir: PathBuf },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// All images of a dataset in memory as u8, already resized/cropped to `size` and converted to
/// `channels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Where the images came from, e.g. `synthetic` or `mnist:/data/mnist`; shown in logs.
    pub name: String,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Side of every (square) image.
    pub size: usize,
    /// (N, C, S, S) row-major.
    pub pixels: Vec<u8>,
    /// (N) class index per image, when the source has classes.
    pub labels: Option<Vec<u32>>,
    /// Name of each class index; empty when unlabeled.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Checks that the buffers agree with each other: `pixels` holds a whole, non-zero number of
    /// (C, S, S) images, `labels` one entry per image, each a valid index into `class_names`.
    pub fn new(
        name: impl Into<String>,
        channels: usize,
        size: usize,
        pixels: Vec<u8>,
        labels: Option<Vec<u32>>,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        let name = name.into();
        check_geometry(size, channels)?;
        let per_image = channels * size * size;
        if pixels.is_empty() || !pixels.len().is_multiple_of(per_image) {
            return Err(DataError::Invalid(format!(
                "dataset {name}: {} pixel bytes is not a positive multiple of one {channels}×{size}×{size} image ({per_image} bytes)",
                pixels.len()
            )));
        }
        let n = pixels.len() / per_image;
        match &labels {
            Some(labels) => {
                if labels.len() != n {
                    return Err(DataError::Invalid(format!(
                        "dataset {name}: {} labels for {n} images",
                        labels.len()
                    )));
                }
                if let Some((i, &l)) = labels
                    .iter()
                    .enumerate()
                    .find(|&(_, &l)| l as usize >= class_names.len())
                {
                    return Err(DataError::Invalid(format!(
                        "dataset {name}: label of image {i} is {l}, but there are {} class names",
                        class_names.len()
                    )));
                }
            }
            None if !class_names.is_empty() => {
                return Err(DataError::Invalid(format!(
                    "dataset {name}: {} class names but no labels",
                    class_names.len()
                )));
            }
            None => {}
        }
        Ok(Self {
            name,
            channels,
            size,
            pixels,
            labels,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per image: C·S·S.
    pub fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// 0 when unlabeled.
    pub fn num_classes(&self) -> usize {
        if self.labels.is_some() {
            self.class_names.len()
        } else {
            0
        }
    }

    /// Image `i` as (C, S, S).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Class index of image `i`, if the dataset is labeled.
    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i])
    }
}

/// Where the training images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// The built-in procedural shapes (see [`synthetic`]).
    Synthetic,
    /// A directory of image files, searched recursively.
    Folder(PathBuf),
    /// A directory holding `train-images-idx3-ubyte[.gz]` (directly or one level down), or that
    /// images file itself.
    Mnist(PathBuf),
    /// A directory holding `data_batch_*.bin` (directly or in `cifar-10-batches-bin/`), or one
    /// such batch file.
    Cifar10(PathBuf),
}

/// The forms [`DataSpec`] parses, for error messages.
const SPEC_FORMS: &str =
    "`synthetic`, `folder:DIR`, `mnist:PATH`, `cifar10:PATH`, or an existing directory";

impl FromStr for DataSpec {
    type Err = DataError;

    /// `synthetic`, `folder:DIR`, `mnist:PATH`, `cifar10:PATH`, or a bare path whose kind is
    /// detected from its content (see [`DataSpec::detect`]). Prefixed paths are not checked here:
    /// [`load`] reports a missing one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "synthetic" {
            return Ok(Self::Synthetic);
        }
        type Make = fn(PathBuf) -> DataSpec;
        let prefixed: [(&str, Make); 3] = [
            ("folder:", Self::Folder),
            ("mnist:", Self::Mnist),
            ("cifar10:", Self::Cifar10),
        ];
        for (prefix, make) in prefixed {
            if let Some(rest) = s.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Err(DataError::Spec(format!(
                        "data source `{s}`: a path is needed after `{prefix}`"
                    )));
                }
                return Ok(make(PathBuf::from(rest)));
            }
        }
        if s.is_empty() {
            return Err(DataError::Spec(format!(
                "empty data source; expected {SPEC_FORMS}"
            )));
        }
        Self::detect(Path::new(s))
    }
}

impl DataSpec {
    /// Guesses the kind of an existing path: MNIST training images (in the directory or one
    /// sub-folder down) → [`DataSpec::Mnist`]; CIFAR-10 batches → [`DataSpec::Cifar10`]; any other
    /// directory → [`DataSpec::Folder`]. A file must be an MNIST images file or a CIFAR batch.
    pub fn detect(path: &Path) -> Result<Self, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            DataError::Spec(format!(
                "data source {}: cannot open it ({e}); expected {SPEC_FORMS}",
                path.display()
            ))
        })?;
        let p = path.to_path_buf();
        if meta.is_dir() {
            if mnist::find_images(path).is_some() {
                Ok(Self::Mnist(p))
            } else if !cifar10::batch_files(path).is_empty() {
                Ok(Self::Cifar10(p))
            } else {
                Ok(Self::Folder(p))
            }
        } else if mnist::is_images_file_name(path) {
            Ok(Self::Mnist(p))
        } else if cifar10::is_batch_file_name(path) {
            Ok(Self::Cifar10(p))
        } else {
            Err(DataError::Spec(format!(
                "data source {}: a file that is neither MNIST images (train-images-idx3-ubyte[.gz]) nor a CIFAR-10 batch (data_batch_N.bin); expected {SPEC_FORMS}",
                path.display()
            )))
        }
    }
}

impl fmt::Display for DataSpec {
    /// The form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Synthetic => write!(f, "synthetic"),
            Self::Folder(p) => write!(f, "folder:{}", p.display()),
            Self::Mnist(p) => write!(f, "mnist:{}", p.display()),
            Self::Cifar10(p) => write!(f, "cifar10:{}", p.display()),
        }
    }
}

/// Rejects image geometry no source can produce.
pub fn check_geometry(size: usize, channels: usize) -> Result<(), DataError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DataError::Invalid(format!(
            "image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}"
        )));
    }
    if channels != 1 && channels != 3 {
        return Err(DataError::Invalid(format!(
            "channels must be 1 (grey) or 3 (RGB), got {channels}"
        )));
    }
    Ok(())
}

/// Reads every image of `spec`, resized and cropped to `size`×`size` with `channels` channels.
///
/// Images are only ever shrunk unless `upscale` is set: a file image, MNIST digit or CIFAR-10
/// picture whose shorter side is below `size` is an error naming it (enlarging would train the
/// model on interpolation blur). The synthetic set is drawn at any size.
pub fn load(
    spec: &DataSpec,
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Dataset, DataError> {
    check_geometry(size, channels)?;
    let name = spec.to_string();
    match spec {
        DataSpec::Synthetic => synthetic::generate(size, channels),
        DataSpec::Folder(dir) => folder::load(&name, dir, size, channels, upscale),
        DataSpec::Mnist(path) => mnist::load(&name, path, size, channels, upscale),
        DataSpec::Cifar10(path) => cifar10::load(&name, path, size, channels, upscale),
    }
}

/// The end of every "smaller than the training size" message: how to get going anyway, given
/// the largest `--image-size` at which every image would fit.
pub(crate) fn enlarge_advice(fits: usize) -> String {
    let smaller = if fits >= MIN_SIZE {
        format!("use --image-size {fits} or smaller")
    } else {
        "remove them".to_string()
    };
    format!(
        "ddpm does not enlarge images unless told to: {smaller}, or pass --upscale to enlarge them"
    )
}
