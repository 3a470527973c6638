//! Many images tiled into one, for sample sheets.

use std::path::Path;

use super::png::check_chw;
use super::{save_png, ImagingError};
use crate::shape::expect_len;

/// Padding, in pixels, that [`save_grid`] puts around and between images.
pub const GRID_PAD: usize = 2;
/// Value of the padding: 0.0 is mid grey, which stays visible next to both the black backgrounds
/// and the bright strokes of typical samples.
pub const GRID_PAD_VALUE: f32 = 0.0;

/// Tiles (N, C, H, W) images into one (C, H', W') image, `nrow` images per row (fewer columns
/// when N < nrow), in reading order, with `pad` pixels of [`GRID_PAD_VALUE`] around and between
/// them: H' = rows·(H + pad) + pad, W' = cols·(W + pad) + pad. Slots after the last image stay
/// padding. Returns the grid, H' and W'.
pub fn make_grid(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    nrow: usize,
    pad: usize,
) -> (Vec<f32>, usize, usize) {
    expect_len(
        "make_grid",
        "images",
        images.len(),
        n * c * h * w,
        format!("({n}, {c}, {h}, {w})"),
    );
    let cols = nrow.max(1).min(n);
    let rows = if n == 0 { 0 } else { n.div_ceil(cols) };
    let (gh, gw) = (rows * (h + pad) + pad, cols * (w + pad) + pad);
    let mut grid = vec![GRID_PAD_VALUE; c * gh * gw]; // (C, H', W')
    for (k, img) in images.chunks_exact((c * h * w).max(1)).take(n).enumerate() {
        let top = pad + (k / cols) * (h + pad);
        let left = pad + (k % cols) * (w + pad);
        for ch in 0..c {
            for y in 0..h {
                let src = &img[(ch * h + y) * w..][..w];
                let at = (ch * gh + top + y) * gw + left;
                grid[at..at + w].copy_from_slice(src);
            }
        }
    }
    (grid, gh, gw)
}

/// Writes (N, C, H, W) images in [-1, 1] as one PNG grid with `nrow` images per row.
pub fn save_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    nrow: usize,
) -> Result<(), ImagingError> {
    let what = format!("grid {}", path.display());
    if n == 0 {
        return Err(ImagingError::Shape(format!("{what}: no images to tile")));
    }
    let per_image = images.len() / n;
    if per_image * n != images.len() {
        return Err(ImagingError::Shape(format!(
            "{what}: {} values do not split into {n} images",
            images.len()
        )));
    }
    check_chw(&what, per_image, c, h, w)?;
    let (grid, gh, gw) = make_grid(images, n, c, h, w, nrow, GRID_PAD);
    save_png(path, &grid, c, gh, gw)
}

/// Side, in pixels, below which [`save_grid_upscaled`] enlarges each image.
pub const GRID_MIN_TILE: usize = 64;

/// Nearest-neighbour enlargement by an integer factor `k`: (N, C, H, W) → (N, C, kH, kW).
pub fn upscale_nearest(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
) -> Vec<f32> {
    expect_len(
        "upscale_nearest",
        "images",
        images.len(),
        n * c * h * w,
        format!("({n}, {c}, {h}, {w})"),
    );
    let (oh, ow) = (h * k, w * k);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in images.chunks_exact((h * w).max(1)).take(n * c) {
        for y in 0..oh {
            let row = &plane[(y / k) * w..][..w];
            out.extend((0..ow).map(|x| row[x / k]));
        }
    }
    out
}

/// Like [`save_grid`], but images smaller than [`GRID_MIN_TILE`] pixels are first enlarged by
/// the smallest integer factor that reaches it, so a sheet of 16×16 samples is viewable as is.
pub fn save_grid_upscaled(
    path: &Path,
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    nrow: usize,
) -> Result<(), ImagingError> {
    let k = GRID_MIN_TILE.div_ceil(h.min(w).max(1)).max(1);
    if k == 1 || images.len() != n * c * h * w {
        return save_grid(path, images, n, c, h, w, nrow);
    }
    let big = upscale_nearest(images, n, c, h, w, k);
    save_grid(path, &big, n, c, h * k, w * k, nrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_image_without_padding_is_itself() {
        let img: Vec<f32> = (0..12).map(|v| v as f32 / 12.0).collect();
        let (g, gh, gw) = make_grid(&img, 1, 3, 2, 2, 8, 0);
        assert_eq!((gh, gw), (2, 2));
        assert_eq!(g, img);
    }

    #[test]
    fn no_images_give_a_padding_only_grid() {
        let (g, gh, gw) = make_grid(&[], 0, 1, 4, 4, 8, 2);
        assert_eq!((gh, gw), (2, 2));
        assert!(g.iter().all(|&v| v == GRID_PAD_VALUE));
    }
}
