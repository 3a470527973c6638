//! MNIST in its original IDX format, raw or gzip-compressed.
//!
//! An IDX file is a big-endian header — a magic number naming the element type and rank, then one
//! u32 per dimension — followed by the elements. Images: magic 0x00000803 (u8, rank 3), dims
//! (N, rows, cols). Labels: magic 0x00000801 (u8, rank 1), dim (N). Both are checked field by
//! field, and the payload must be exactly as long as the header says.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use image::GrayImage;
use rayon::prelude::*;

use super::resize::{fit_square, push_gray};
use super::{enlarge_advice, DataError, Dataset};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Names the training images file goes by; each may also end in `.gz`.
const IMAGE_NAMES: [&str; 2] = ["train-images-idx3-ubyte", "train-images.idx3-ubyte"];

/// Whether the file name looks like an IDX images file (`*-images-idx3-ubyte[.gz]` and the like).
pub fn is_images_file_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    name.is_some_and(|n| n.contains("images") && n.contains("idx3"))
}

/// The training images file in `dir` or in one of its sub-folders (sorted, first match wins).
pub fn find_images(dir: &Path) -> Option<PathBuf> {
    let here = |d: &Path| {
        IMAGE_NAMES
            .iter()
            .flat_map(|n| [d.join(n), d.join(format!("{n}.gz"))])
            .find(|p| p.is_file())
    };
    if let Some(p) = here(dir) {
        return Some(p);
    }
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| here(d))
}

/// The labels file that goes with an images file: `images` → `labels`, `idx3` → `idx1`, with or
/// without `.gz`.
fn labels_for(images: &Path) -> Result<PathBuf, DataError> {
    let name = images.file_name().unwrap_or_default().to_string_lossy();
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let want = base.replace("images", "labels").replace("idx3", "idx1");
    let candidates = [
        images.with_file_name(&want),
        images.with_file_name(format!("{want}.gz")),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            DataError::format(
                images,
                format!(
                    "the labels file {} (or .gz) is missing next to it",
                    candidates[0].display()
                ),
            )
        })
}

/// The file's bytes, gunzipped when they start with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    // Bounded, so a small file that inflates without end (a gzip bomb) is refused, not read.
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::format(path, format!("not a valid gzip file: {e}")))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(DataError::format(
            path,
            format!(
                "inflates to more than {} GiB, far beyond any MNIST-style file",
                MAX_INFLATED >> 30
            ),
        ));
    }
    Ok(out)
}

/// The most a gzipped IDX file may inflate to (MNIST's images are 47 MB, EMNIST's 700 MB).
const MAX_INFLATED: u64 = 4 << 30;

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks the header's length and magic; returns the dimensions.
fn header<const RANK: usize>(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    what: &str,
) -> Result<[u32; RANK], DataError> {
    let header_len = 4 + 4 * RANK;
    if bytes.len() < header_len {
        return Err(DataError::format(
            path,
            format!(
                "the file holds {} bytes, too short for the {header_len}-byte IDX header of {what}",
                bytes.len()
            ),
        ));
    }
    let got = be_u32(bytes, 0);
    if got != magic {
        return Err(DataError::format(
            path,
            format!("magic number is 0x{got:08x}, expected 0x{magic:08x} (IDX {what})"),
        ));
    }
    Ok(std::array::from_fn(|d| be_u32(bytes, 4 + 4 * d)))
}

/// Validates an images file; returns (N, rows, cols). The pixels follow the 16-byte header.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize), DataError> {
    let [n, rows, cols] = header::<3>(path, bytes, IMAGES_MAGIC, "images")?;
    if n == 0 || rows == 0 || cols == 0 {
        return Err(DataError::format(
            path,
            format!("header says {n} images of {rows}×{cols}; every dimension must be positive"),
        ));
    }
    // Three u32 dimensions multiply to up to 2⁹⁶: count in u128 so no header can overflow it.
    let want = u128::from(n) * u128::from(rows) * u128::from(cols);
    let got = (bytes.len() - 16) as u128;
    if got != want {
        return Err(DataError::format(
            path,
            format!(
                "header says {n} images of {rows}×{cols} ({want} bytes) but the file holds {got} bytes after the 16-byte header"
            ),
        ));
    }
    Ok((n as usize, rows as usize, cols as usize))
}

/// Validated labels, each 0–9, as many as `n_images`.
pub fn parse_labels(path: &Path, bytes: &[u8], n_images: usize) -> Result<Vec<u32>, DataError> {
    let [n] = header::<1>(path, bytes, LABELS_MAGIC, "labels")?;
    let got = bytes.len() - 8;
    if got as u64 != u64::from(n) {
        return Err(DataError::format(
            path,
            format!(
                "header says {n} labels but the file holds {got} bytes after the 8-byte header"
            ),
        ));
    }
    if n as usize != n_images {
        return Err(DataError::format(
            path,
            format!("{n} labels, but the images file holds {n_images} images"),
        ));
    }
    let labels = &bytes[8..];
    if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l > 9) {
        return Err(DataError::format(
            path,
            format!("label {i} is {l}, expected a digit 0–9"),
        ));
    }
    Ok(labels.iter().map(|&l| u32::from(l)).collect())
}

/// Loads the training set from a directory (or its images file) as (N, C, S, S); grey is
/// replicated when `channels` is 3. Unless `upscale`, a `size` above the images' own (28 for
/// MNIST) is an error naming the images file.
pub fn load(
    name: &str,
    path: &Path,
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Dataset, DataError> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let images_path = if meta.is_dir() {
        find_images(path).ok_or_else(|| {
            DataError::format(
                path,
                "no MNIST training images found: expected train-images-idx3-ubyte (or .gz) here or in a sub-folder",
            )
        })?
    } else {
        path.to_path_buf()
    };
    let labels_path = labels_for(&images_path)?;
    let bytes = read_maybe_gz(&images_path)?;
    let (n, rows, cols) = parse_images(&images_path, &bytes)?;
    let labels = parse_labels(&labels_path, &read_maybe_gz(&labels_path)?, n)?;
    let native = rows.min(cols);
    if !upscale && native < size {
        return Err(DataError::format(
            &images_path,
            format!(
                "MNIST images are {rows}×{cols} (all {n} of them), smaller than the training size {size}×{size}; {}",
                enlarge_advice(native)
            ),
        ));
    }

    let per_image = channels * size * size;
    let mut pixels = vec![0u8; n * per_image];
    pixels
        .par_chunks_mut(per_image)
        .zip(bytes[16..].par_chunks(rows * cols))
        .for_each(|(out, src)| {
            let img = GrayImage::from_raw(cols as u32, rows as u32, src.to_vec())
                .expect("chunk holds rows × cols bytes");
            let img = fit_square(img, size);
            let mut planes = Vec::with_capacity(per_image);
            push_gray(&mut planes, &img, channels);
            out.copy_from_slice(&planes);
        });
    let class_names = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(name, channels, size, pixels, Some(labels), class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn images_header_is_checked_field_by_field() {
        let p = Path::new("imgs");
        let ok = idx(IMAGES_MAGIC, &[2, 3, 2], &[0; 12]);
        assert_eq!(parse_images(p, &ok).unwrap(), (2, 3, 2));
        let short = idx(IMAGES_MAGIC, &[2, 3, 2], &[0; 11]);
        let msg = parse_images(p, &short).unwrap_err().to_string();
        assert!(
            msg.contains("2 images of 3×2 (12 bytes)") && msg.contains("11 bytes"),
            "{msg}"
        );
        let wrong = idx(LABELS_MAGIC, &[2, 3, 2], &[0; 12]);
        let msg = parse_images(p, &wrong).unwrap_err().to_string();
        assert!(
            msg.contains("0x00000801") && msg.contains("0x00000803"),
            "{msg}"
        );
        let msg = parse_images(p, &ok[..10]).unwrap_err().to_string();
        assert!(msg.contains("10 bytes"), "{msg}");
        let zero = idx(IMAGES_MAGIC, &[0, 3, 2], &[]);
        assert!(parse_images(p, &zero).is_err());
    }

    #[test]
    fn labels_must_match_the_image_count_and_be_digits() {
        let p = Path::new("labels");
        assert_eq!(
            parse_labels(p, &idx(LABELS_MAGIC, &[3], &[7, 0, 9]), 3).unwrap(),
            [7, 0, 9]
        );
        let msg = parse_labels(p, &idx(LABELS_MAGIC, &[3], &[7, 0, 9]), 4)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("3 labels") && msg.contains("4 images"),
            "{msg}"
        );
        let msg = parse_labels(p, &idx(LABELS_MAGIC, &[3], &[7, 10, 9]), 3)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("label 1 is 10"), "{msg}");
        assert!(parse_labels(p, &idx(LABELS_MAGIC, &[3], &[7, 0]), 3).is_err());
    }

    #[test]
    fn labels_file_name_follows_the_images_file_name() {
        let dir = std::env::temp_dir().join(format!("ddpm-mnist-names-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), b"x").unwrap();
        let found = labels_for(&dir.join("t10k-images-idx3-ubyte")).unwrap();
        assert_eq!(found, dir.join("t10k-labels-idx1-ubyte.gz"));
        let err = labels_for(&dir.join("train-images-idx3-ubyte")).unwrap_err();
        assert!(err.to_string().contains("train-labels-idx1-ubyte"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
