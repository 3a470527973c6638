//! The built-in dataset: four coloured shapes on black, the default for `ddpm train`.
//!
//! It needs no download, is the same on every machine, and is easy enough that a small model
//! learns it in minutes, while a glance at a sample grid tells whether training works: each class
//! has its own shape and colour. Image `i` has class `i % 4`; its centre moves by up to ±8% of the
//! side and its size varies by ±10%, drawn from one Philox block per image. Edges are
//! anti-aliased by averaging 4×4 sub-pixel samples.

use rayon::prelude::*;

use super::resize::luma;
use super::{check_geometry, DataError, Dataset};
use crate::rng::{philox_word, unit_f32};

/// Number of images; a multiple of the class count so the classes are exactly balanced.
pub const LEN: usize = 4096;
/// Fixed seed: every run, on every machine, trains on the same images.
pub const SEED: u64 = 0x5348_4150_4553; // "SHAPES"
/// Philox stream of the per-image jitter (ASCII "synt" in the upper half).
pub const JITTER_STREAM: u64 = 0x7379_6e74_0000_0000;

/// Largest shift of a shape's centre, as a fraction of the side.
const MAX_SHIFT: f32 = 0.08;
/// Half-extent of a shape before jitter, as a fraction of the side.
const BASE_EXTENT: f32 = 0.30;
/// Largest relative change of the extent.
const MAX_SCALE: f32 = 0.10;
/// Sub-pixel samples per axis.
const SUPERSAMPLE: usize = 4;

/// The four classes, in label order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Disk,
    Square,
    Triangle,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Disk, Shape::Square, Shape::Triangle, Shape::Cross];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Disk => "disk",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
        }
    }

    /// Fill colour: red, green, blue, yellow — far apart in RGB, and with different luma too.
    pub fn colour(self) -> [u8; 3] {
        match self {
            Shape::Disk => [235, 50, 45],
            Shape::Square => [50, 205, 70],
            Shape::Triangle => [60, 120, 250],
            Shape::Cross => [250, 215, 40],
        }
    }

    /// Whether the point (dx, dy) relative to the shape's centre is inside, for half-extent `e`
    /// (y grows downwards). Each shape covers the centre with a margin larger than [`MAX_SHIFT`],
    /// so the middle of every image is lit.
    fn contains(self, dx: f32, dy: f32, e: f32) -> bool {
        match self {
            Shape::Disk => dx * dx + dy * dy <= e * e,
            Shape::Square => dx.abs() <= 0.85 * e && dy.abs() <= 0.85 * e,
            // Apex at (0, −e), base from (−e, 0.8e) to (e, 0.8e).
            Shape::Triangle => (-e..=0.8 * e).contains(&dy) && dx.abs() <= (dy + e) / 1.8,
            Shape::Cross => {
                let t = 0.36 * e;
                (dx.abs() <= t && dy.abs() <= e) || (dy.abs() <= t && dx.abs() <= e)
            }
        }
    }
}

/// Where image `i`'s shape sits: centre (cx, cy) and half-extent, in fractions of the side.
fn placement(i: usize) -> (f32, f32, f32) {
    let u = |k: u64| unit_f32(philox_word(SEED, JITTER_STREAM, 4 * i as u64 + k)) * 2.0 - 1.0;
    (
        0.5 + MAX_SHIFT * u(0),
        0.5 + MAX_SHIFT * u(1),
        BASE_EXTENT * (1.0 + MAX_SCALE * u(2)),
    )
}

/// Draws image `i` into `out` (C, S, S), which must be zero (black).
fn render(i: usize, size: usize, channels: usize, out: &mut [u8]) {
    let shape = Shape::ALL[i % 4];
    let (cx, cy, e) = placement(i);
    let rgb = shape.colour();
    let colour: Vec<f32> = if channels == 1 {
        vec![f32::from(luma(rgb[0], rgb[1], rgb[2]))]
    } else {
        rgb.iter().map(|&v| f32::from(v)).collect()
    };
    let s = size as f32;
    // Pixels that can be touched at all: the square of half-side e around the centre.
    let lo = |c: f32| ((c - e) * s).floor().max(0.0) as usize;
    let hi = |c: f32| (((c + e) * s).ceil() as usize).min(size);
    let plane = size * size;
    let step = 1.0 / (SUPERSAMPLE as f32 * s);
    for py in lo(cy)..hi(cy) {
        for px in lo(cx)..hi(cx) {
            let mut hits = 0;
            for sy in 0..SUPERSAMPLE {
                let dy = (py * SUPERSAMPLE + sy) as f32 * step + 0.5 * step - cy;
                for sx in 0..SUPERSAMPLE {
                    let dx = (px * SUPERSAMPLE + sx) as f32 * step + 0.5 * step - cx;
                    hits += usize::from(shape.contains(dx, dy, e));
                }
            }
            if hits == 0 {
                continue;
            }
            let coverage = hits as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            for (c, &v) in colour.iter().enumerate() {
                out[c * plane + py * size + px] = (v * coverage).round() as u8;
            }
        }
    }
}

/// The whole set at `size`×`size` with `channels` (1: luma of the colours, 3: RGB).
pub fn generate(size: usize, channels: usize) -> Result<Dataset, DataError> {
    check_geometry(size, channels)?;
    let per_image = channels * size * size;
    let mut pixels = vec![0u8; LEN * per_image];
    pixels
        .par_chunks_mut(per_image)
        .enumerate()
        .for_each(|(i, img)| render(i, size, channels, img));
    let labels = (0..LEN).map(|i| (i % 4) as u32).collect();
    let class_names = Shape::ALL.iter().map(|s| s.name().to_string()).collect();
    Dataset::new(
        "synthetic",
        channels,
        size,
        pixels,
        Some(labels),
        class_names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_covers_the_centre_despite_the_largest_shift_and_smallest_size() {
        let e = BASE_EXTENT * (1.0 - MAX_SCALE);
        for shape in Shape::ALL {
            for (dx, dy) in [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)] {
                assert!(
                    shape.contains(dx * MAX_SHIFT, dy * MAX_SHIFT, e),
                    "{shape:?} at ({dx}, {dy})"
                );
            }
        }
    }

    #[test]
    fn shapes_differ_where_expected() {
        let e = 0.3;
        // Near the top-right corner of the bounding box: only the square reaches it.
        assert!(Shape::Square.contains(0.24, -0.24, e));
        for s in [Shape::Disk, Shape::Triangle, Shape::Cross] {
            assert!(!s.contains(0.24, -0.24, e), "{s:?}");
        }
        // Straight above the centre near the top: triangle apex and cross arm, not the square.
        assert!(Shape::Triangle.contains(0.0, -0.28, e));
        assert!(Shape::Cross.contains(0.0, -0.28, e));
        assert!(!Shape::Square.contains(0.0, -0.28, e));
    }

    #[test]
    fn a_pixel_fully_inside_gets_the_full_colour_and_one_outside_stays_black() {
        let size = 16;
        let mut img = vec![0u8; 3 * size * size];
        render(0, size, 3, &mut img); // image 0 is a disk
        let (cx, cy, _) = placement(0);
        let (px, py) = ((cx * 16.0) as usize, (cy * 16.0) as usize);
        let plane = size * size;
        let centre: Vec<u8> = (0..3).map(|c| img[c * plane + py * size + px]).collect();
        assert_eq!(centre, Shape::Disk.colour());
        assert_eq!([img[0], img[plane], img[2 * plane]], [0, 0, 0]);
    }
}
