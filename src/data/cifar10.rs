//! CIFAR-10 in its binary version (`cifar-10-batches-bin`).
//!
//! Each batch file is a plain sequence of 3073-byte records: one label byte (0–9), then the
//! 32×32 image as three row-major planes, red, green, blue, of 1024 bytes each.

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use super::resize::{fit_square, push_rgb};
use super::{enlarge_advice, DataError, Dataset};

pub const SIDE: usize = 32;
pub const RECORD_LEN: usize = 1 + 3 * SIDE * SIDE;
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The sub-folder the official archive unpacks to.
const ARCHIVE_DIR: &str = "cifar-10-batches-bin";

/// Whether the file name is that of a CIFAR-10 batch (`data_batch_N.bin` or `test_batch.bin`).
pub fn is_batch_file_name(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name == "test_batch.bin" || (name.starts_with("data_batch_") && name.ends_with(".bin"))
}

/// The training batches `data_batch_1.bin` … `data_batch_5.bin` that exist in `dir`, or else in
/// its `cifar-10-batches-bin/` sub-folder; empty when there are none.
pub fn batch_files(dir: &Path) -> Vec<PathBuf> {
    let in_dir = |d: &Path| -> Vec<PathBuf> {
        (1..=5)
            .map(|i| d.join(format!("data_batch_{i}.bin")))
            .filter(|p| p.is_file())
            .collect()
    };
    let found = in_dir(dir);
    if found.is_empty() {
        in_dir(&dir.join(ARCHIVE_DIR))
    } else {
        found
    }
}

/// Validates one batch file's bytes: a positive whole number of records, labels 0–9.
pub fn check_batch(path: &Path, bytes: &[u8]) -> Result<usize, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(DataError::format(
            path,
            format!(
                "the file holds {} bytes, expected a positive multiple of the {RECORD_LEN}-byte record (1 label + 3×32×32 pixels)",
                bytes.len()
            ),
        ));
    }
    let bad = bytes
        .chunks_exact(RECORD_LEN)
        .enumerate()
        .find(|(_, r)| r[0] > 9);
    if let Some((i, r)) = bad {
        return Err(DataError::format(
            path,
            format!("record {i} has label {}, expected 0–9", r[0]),
        ));
    }
    Ok(bytes.len() / RECORD_LEN)
}

/// Loads the training batches of a directory (or one batch file) as (N, C, S, S); colour is
/// reduced to luma when `channels` is 1. Unless `upscale`, a `size` above 32 is an error naming
/// the first batch file.
pub fn load(
    name: &str,
    path: &Path,
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Dataset, DataError> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let files = if meta.is_dir() {
        let files = batch_files(path);
        if files.is_empty() {
            return Err(DataError::format(
                path,
                format!("no CIFAR-10 batches found: expected data_batch_1.bin … data_batch_5.bin here or in {ARCHIVE_DIR}/"),
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut records = Vec::new();
    for f in &files {
        let bytes = fs::read(f).map_err(|e| DataError::io(f, e))?;
        check_batch(f, &bytes)?;
        records.extend_from_slice(&bytes);
    }

    let n = records.len() / RECORD_LEN;
    if !upscale && SIDE < size {
        return Err(DataError::format(
            &files[0],
            format!(
                "CIFAR-10 images are {SIDE}×{SIDE} (all {n} of them), smaller than the training size {size}×{size}; {}",
                enlarge_advice(SIDE)
            ),
        ));
    }
    let per_image = channels * size * size;
    let mut pixels = vec![0u8; n * per_image];
    pixels
        .par_chunks_mut(per_image)
        .zip(records.par_chunks(RECORD_LEN))
        .for_each(|(out, record)| {
            let planes = &record[1..];
            let plane = SIDE * SIDE;
            if size == SIDE && channels == 3 {
                out.copy_from_slice(planes);
                return;
            }
            let img = RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
                let at = y as usize * SIDE + x as usize;
                image::Rgb([planes[at], planes[plane + at], planes[2 * plane + at]])
            });
            let img = fit_square(img, size);
            let mut v = Vec::with_capacity(per_image);
            push_rgb(&mut v, &img, channels);
            out.copy_from_slice(&v);
        });
    let labels = records
        .chunks_exact(RECORD_LEN)
        .map(|r| u32::from(r[0]))
        .collect();
    let class_names = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    Dataset::new(name, channels, size, pixels, Some(labels), class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_length_and_labels_are_checked() {
        let p = Path::new("b.bin");
        let mut two = vec![0u8; 2 * RECORD_LEN];
        two[RECORD_LEN] = 9;
        assert_eq!(check_batch(p, &two).unwrap(), 2);
        let msg = check_batch(p, &two[..RECORD_LEN + 5])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("b.bin") && msg.contains("3078 bytes"), "{msg}");
        assert!(check_batch(p, &[]).is_err());
        two[RECORD_LEN] = 10;
        let msg = check_batch(p, &two).unwrap_err().to_string();
        assert!(msg.contains("record 1 has label 10"), "{msg}");
    }

    #[test]
    fn batch_file_names() {
        assert!(is_batch_file_name(Path::new("x/data_batch_3.bin")));
        assert!(is_batch_file_name(Path::new("test_batch.bin")));
        assert!(!is_batch_file_name(Path::new("batches.meta.txt")));
    }
}
