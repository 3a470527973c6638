//! A directory of image files, searched recursively.
//!
//! Files are visited in sorted order (names compared byte-wise, depth first), so the dataset and
//! its indices are the same on every machine. Hidden files and folders (a leading `.`) are
//! skipped, as are symbolic links to folders (they could loop). When every image lies inside a
//! first-level sub-folder and there are at least two such folders, the folder names are the class
//! names (class index = sorted name order); otherwise the dataset is unlabeled.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, RgbImage};
use rayon::prelude::*;

use super::resize::{fit_square, push_rgb};
use super::{DataError, Dataset};

/// Accepted file extensions, compared case-insensitively.
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "gif"];

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Every image file under `dir`, in the deterministic visiting order.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let mut entries = fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| DataError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if has_image_extension(&path) && (kind.is_file() || path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// Class names and per-file labels from the first-level sub-folders, when they define classes.
fn classes(root: &Path, files: &[PathBuf]) -> Option<(Vec<String>, Vec<u32>)> {
    let class_of = |f: &PathBuf| -> Option<String> {
        let rel = f.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?;
        parts.next()?; // the file itself must lie below the first component
        Some(first.as_os_str().to_string_lossy().into_owned())
    };
    let per_file: Vec<String> = files.iter().map(class_of).collect::<Option<_>>()?;
    let names: Vec<String> = per_file
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.len() < 2 {
        return None;
    }
    let labels = per_file
        .iter()
        .map(|n| names.binary_search(n).expect("name is in the set") as u32)
        .collect();
    Some((names, labels))
}

/// Decodes any supported image (by content, not extension) to RGB; transparent parts become
/// black, as if composited over a black background.
fn read_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let img = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(flatten_on_black(img))
}

fn flatten_on_black(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |v: u8| ((u32::from(v) * u32::from(a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// Reads every image under `dir` (in parallel, order kept) as (N, C, S, S).
pub fn load(name: &str, dir: &Path, size: usize, channels: usize) -> Result<Dataset, DataError> {
    let meta = fs::metadata(dir).map_err(|e| DataError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(DataError::format(dir, "expected a directory of images"));
    }
    let files = image_files(dir)?;
    if files.is_empty() {
        return Err(DataError::NoImages {
            dir: dir.to_path_buf(),
        });
    }
    let decoded: Vec<Result<Vec<u8>, DataError>> = files
        .par_iter()
        .map(|f| {
            let img = fit_square(read_rgb(f)?, size);
            let mut out = Vec::with_capacity(channels * size * size);
            push_rgb(&mut out, &img, channels);
            Ok(out)
        })
        .collect();
    let mut pixels = Vec::with_capacity(files.len() * channels * size * size);
    // The first failing file in visiting order, whatever order the threads finished in.
    for image in decoded {
        pixels.extend_from_slice(&image?);
    }
    let (class_names, labels) = match classes(dir, &files) {
        Some((names, labels)) => (names, Some(labels)),
        None => (Vec::new(), None),
    };
    Dataset::new(name, channels, size, pixels, labels, class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_matched_without_case() {
        for name in ["a.png", "b.JPG", "c.Jpeg", "d.bmp", "e.GIF"] {
            assert!(has_image_extension(Path::new(name)), "{name}");
        }
        for name in ["a.txt", "png", "b.png.bak", "c.webp"] {
            assert!(!has_image_extension(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn classes_need_every_file_in_a_subfolder_and_two_folders() {
        let root = Path::new("/r");
        let files = |names: &[&str]| names.iter().map(|n| root.join(n)).collect::<Vec<_>>();
        let (names, labels) =
            classes(root, &files(&["dog/1.png", "cat/a/2.png", "dog/3.png"])).unwrap();
        assert_eq!(names, ["cat", "dog"]);
        assert_eq!(labels, [1, 0, 1]);
        assert!(classes(root, &files(&["dog/1.png", "dog/2.png"])).is_none());
        assert!(classes(root, &files(&["dog/1.png", "cat/2.png", "3.png"])).is_none());
    }

    #[test]
    fn transparency_becomes_black() {
        let img = image::RgbaImage::from_raw(2, 1, vec![200, 100, 50, 255, 200, 100, 50, 0]);
        let flat = flatten_on_black(DynamicImage::ImageRgba8(img.unwrap()));
        assert_eq!(flat.as_raw(), &[200, 100, 50, 0, 0, 0]);
    }
}
