//! PNG files from (C, H, W) f32 images.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::{to_u8, ImagingError};
use crate::atomic_file::write_atomic;

/// Encodes interleaved 8-bit pixels in memory, then replaces `path` atomically.
pub(crate) fn write_png(
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    colour: ExtendedColorType,
) -> Result<(), ImagingError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(pixels, width, height, colour)
        .map_err(|source| ImagingError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, &bytes).map_err(|e| ImagingError::io(path, e))
}

/// Checks that `len` values describe a (C, H, W) image we can write as PNG.
pub(crate) fn check_chw(
    what: &str,
    len: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<(), ImagingError> {
    if c != 1 && c != 3 {
        return Err(ImagingError::Shape(format!(
            "{what}: channels must be 1 (grey) or 3 (RGB), got {c}"
        )));
    }
    // PNG stores each side as a 31-bit number.
    let max = i32::MAX as usize;
    if h == 0 || w == 0 || h > max || w > max {
        return Err(ImagingError::Shape(format!(
            "{what}: image is {h}×{w}, each side must be between 1 and {max}"
        )));
    }
    let want = c.checked_mul(h).and_then(|v| v.checked_mul(w));
    if want != Some(len) {
        return Err(ImagingError::Shape(format!(
            "{what}: {len} values do not make a {c}×{h}×{w} image"
        )));
    }
    Ok(())
}

/// Writes one (C, H, W) image with values in [-1, 1] (clamped) as an 8-bit grey or RGB PNG.
pub fn save_png(
    path: &Path,
    chw: &[f32],
    c: usize,
    h: usize,
    w: usize,
) -> Result<(), ImagingError> {
    check_chw(&format!("PNG {}", path.display()), chw.len(), c, h, w)?;
    let plane = h * w;
    // (H, W, C) interleaved, as PNG stores it.
    let mut hwc = vec![0u8; chw.len()];
    for (p, px) in hwc.chunks_exact_mut(c).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = to_u8(chw[ch * plane + p]);
        }
    }
    let colour = if c == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    write_png(path, &hwc, w as u32, h as u32, colour)
}
