//! A directory of image files, searched recursively.
//!
//! Files are visited in sorted order (names compared byte-wise, depth first), so the dataset and
//! its indices are the same on every machine. Hidden files and folders (a leading `.`) are
//! skipped, as are symbolic links to folders (they could loop). When every image lies inside a
//! first-level sub-folder and there are at least two such folders, the folder names are the class
//! names (class index = sorted name order); otherwise the dataset is unlabeled.

use std::collections::BTreeSet;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use rayon::prelude::*;

use super::resize::{fit_square, push_rgb};
use super::{enlarge_advice, DataError, Dataset};

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

/// The formats the `image` crate is built with here, by content.
const SUPPORTED: [ImageFormat; 4] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::Gif,
];
const SUPPORTED_NAMES: &str = "PNG, JPEG, BMP or GIF";

/// Which supported format the bytes are, judged by their content (not the file name), or why
/// none: empty, a known but unsupported format, or nothing recognisable.
fn sniff(path: &Path, bytes: &[u8]) -> Result<ImageFormat, DataError> {
    if bytes.is_empty() {
        return Err(DataError::format(
            path,
            format!("the file is empty (0 bytes), expected a {SUPPORTED_NAMES} image"),
        ));
    }
    match image::guess_format(bytes) {
        Ok(f) if SUPPORTED.contains(&f) => Ok(f),
        Ok(f) => {
            let kind = f.extensions_str().first().copied().unwrap_or("unknown");
            Err(DataError::format(
                path,
                format!(
                    "the file is in {} format, which is not supported (expected {SUPPORTED_NAMES}); convert it or move it out of the folder",
                    kind.to_ascii_uppercase()
                ),
            ))
        }
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(DataError::format(
                path,
                format!(
                    "not a {SUPPORTED_NAMES} image: its first bytes ({}) match none of these formats",
                    head.join(" ")
                ),
            ))
        }
    }
}

/// Checks that a JPEG stream runs to its end-of-image marker. The decoder is lenient: a file cut
/// short in its compressed data still decodes, the missing part filled with grey, so a
/// truncated download would silently become a training image. Walks the marker segments (by
/// their lengths, so an EXIF thumbnail's own markers are skipped) and each scan's entropy-coded
/// data (where 0xFF is followed by a stuffed 0x00 or a restart marker) until EOI; bytes after
/// EOI are allowed.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let truncated = || {
        Err(format!(
            "the JPEG data ends after {} bytes, before its end-of-image marker (FF D9): the file is truncated or corrupt",
            bytes.len()
        ))
    };
    let mut i = 2; // after SOI
    loop {
        // Find the next marker: 0xFF, any fill bytes, then the marker code.
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return truncated();
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: SOI, RSTn, TEM (and a stray stuffed zero).
            0xD8 | 0xD0..=0xD7 | 0x01 | 0x00 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return truncated();
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 || i + len > bytes.len() {
            return truncated();
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data up to the next marker that is not a stuffed byte or a restart.
            loop {
                match bytes[i..].iter().position(|&b| b == 0xFF) {
                    None => return truncated(),
                    Some(p) => i += p,
                }
                match bytes.get(i + 1) {
                    None => return truncated(),
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Decodes any supported image (by content, not extension) to RGB; transparent parts become
/// black, as if composited over a black background. 16-bit samples are rounded to 8 bits,
/// palettes expanded, CMYK/YCCK JPEGs converted with the Adobe convention the decoder shares
/// with Pillow and browsers.
fn read_rgb(path: &Path) -> Result<RgbImage, DataError> {
    Ok(flatten_on_black(read_image(path)?))
}

/// Decodes any supported image (by content, not extension) as it is stored, alpha included;
/// errors name the file (unreadable, empty, an unsupported format, a truncated JPEG).
pub(crate) fn read_image(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let format = sniff(path, &bytes)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(&bytes).map_err(|msg| DataError::format(path, msg))?;
    }
    ImageReader::with_format(Cursor::new(&bytes), format)
        .decode()
        .map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source,
        })
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

/// What one image file became.
enum Decoded {
    /// Resized and cropped, as (C, S, S).
    Planes(Vec<u8>),
    /// Width and height of an image too small to use without enlarging it.
    TooSmall(u32, u32),
}

/// Reads every image under `dir` (in parallel, order kept) as (N, C, S, S). Unless `upscale`,
/// an image whose shorter side is below `size` is an error naming the first such file and how
/// many there are; a file that cannot be read or decoded is reported first.
pub fn load(
    name: &str,
    dir: &Path,
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Dataset, DataError> {
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
    let pixels = decode_files(&files, size, channels, upscale)?;
    let (class_names, labels) = match classes(dir, &files) {
        Some((names, labels)) => (names, Some(labels)),
        None => (Vec::new(), None),
    };
    Dataset::new(name, channels, size, pixels, labels, class_names)
}

/// Decodes `files` (in parallel, order kept) into (N, C, S, S) pixels, each resized so its
/// shorter side is `size` and centre-cropped. Unless `upscale`, an image whose shorter side is
/// below `size` is an error naming the first such file and how many there are; a file that
/// cannot be read or decoded is reported first.
fn decode_files(
    files: &[PathBuf],
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Vec<u8>, DataError> {
    let decoded: Vec<Result<Decoded, DataError>> = files
        .par_iter()
        .map(|f| {
            let img = read_rgb(f)?;
            let (w, h) = img.dimensions();
            if !upscale && (w.min(h) as usize) < size {
                return Ok(Decoded::TooSmall(w, h));
            }
            let img = fit_square(img, size);
            let mut out = Vec::with_capacity(channels * size * size);
            push_rgb(&mut out, &img, channels);
            Ok(Decoded::Planes(out))
        })
        .collect();
    // The first failing file in visiting order, whatever order the threads finished in.
    let decoded = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
    let small: Vec<(usize, (u32, u32))> = decoded
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match *d {
            Decoded::TooSmall(w, h) => Some((i, (w, h))),
            Decoded::Planes(_) => None,
        })
        .collect();
    if let Some(&(first, (w, h))) = small.first() {
        let fits = small.iter().map(|&(_, (w, h))| w.min(h)).min().unwrap_or(0) as usize;
        return Err(DataError::format(
            &files[first],
            format!(
                "the image is {w}×{h}, smaller than the training size {size}×{size} ({} of the {} images have a side shorter than {size} pixels); {}",
                small.len(),
                files.len(),
                enlarge_advice(fits)
            ),
        ));
    }
    let mut pixels = Vec::with_capacity(files.len() * channels * size * size);
    for image in decoded {
        if let Decoded::Planes(planes) = image {
            pixels.extend_from_slice(&planes);
        }
    }
    Ok(pixels)
}

/// Reads the image `files` given one by one (as `ddpm invert` takes them), with the folder
/// loader's decoding, checks, resizing and cropping; no labels.
pub fn load_files(
    name: &str,
    files: &[PathBuf],
    size: usize,
    channels: usize,
    upscale: bool,
) -> Result<Dataset, DataError> {
    let pixels = decode_files(files, size, channels, upscale)?;
    Dataset::new(name, channels, size, pixels, None, Vec::new())
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

    /// A marker segment: FF, code, big-endian length (counting itself), payload.
    fn seg(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, code];
        v.extend(((payload.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A hand-made JPEG skeleton: SOI, an APP1 whose payload holds an embedded thumbnail's
    /// SOI/EOI, a scan whose data holds a stuffed FF 00 and a restart marker, then EOI.
    fn skeleton() -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend(seg(0xE1, b"Exif\0\0\xff\xd8 thumbnail \xff\xd9"));
        v.extend(seg(0xDA, &[1, 1, 0, 0, 63, 0]));
        v.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        v.extend(seg(0xDA, &[1, 1, 0, 0, 63, 0])); // a second (progressive) scan
        v.extend_from_slice(&[0x78, 0xFF, 0xFF, 0xD9]); // a fill byte before EOI
        v
    }

    #[test]
    fn jpeg_must_reach_its_end_marker_outside_segments_and_stuffing() {
        let full = skeleton();
        assert_eq!(check_jpeg_complete(&full), Ok(()));
        // Data after EOI is ignored.
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"\0\0 extra");
        assert_eq!(check_jpeg_complete(&trailing), Ok(()));
        // Every cut before the final marker is refused: inside the APP1 (whose embedded EOI must
        // not count), inside either scan's data, right after a stuffed FF, before EOI's code.
        for cut in 2..full.len() {
            let err = check_jpeg_complete(&full[..cut]).unwrap_err();
            assert!(
                err.contains(&format!("ends after {cut} bytes")) && err.contains("FF D9"),
                "{cut}: {err}"
            );
        }
        // A segment length running past the end of the file.
        let mut long = vec![0xFF, 0xD8];
        long.extend(seg(0xDB, &[0; 10]));
        long[5] = 200;
        long.extend_from_slice(&[0xFF, 0xD9]);
        assert!(check_jpeg_complete(&long).is_err());
    }

    #[test]
    fn transparency_becomes_black() {
        let img = image::RgbaImage::from_raw(2, 1, vec![200, 100, 50, 255, 200, 100, 50, 0]);
        let flat = flatten_on_black(DynamicImage::ImageRgba8(img.unwrap()));
        assert_eq!(flat.as_raw(), &[200, 100, 50, 0, 0, 0]);
    }
}
