//! Writing what training produces: images as PNG, sample grids, and the loss curve.
//!
//! Model images are f32 in [-1, 1], laid out (C, H, W) per image; [`to_u8`] maps them to bytes.
//! Every file is encoded in memory first and then written with [`crate::atomic_file::write_atomic`],
//! so an interrupted run never leaves a truncated PNG behind.

mod font;
pub mod grid;
pub mod plot;
pub mod png;

use std::path::{Path, PathBuf};

pub use grid::{
    make_grid, save_grid, save_grid_upscaled, upscale_nearest, GRID_MIN_TILE, GRID_PAD,
    GRID_PAD_VALUE,
};
pub use plot::save_loss_curve;
pub use png::save_png;

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    /// Buffer sizes or dimensions that do not describe an image we can write.
    #[error("{0}")]
    Shape(String),
    #[error("{}: cannot encode the PNG: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ImagingError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A model value in [-1, 1] → a pixel byte: clamped, rounded to nearest; NaN gives 0.
pub fn to_u8(x: f32) -> u8 {
    // `as` saturates and sends NaN to 0.
    ((x + 1.0) * 127.5).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_u8_maps_the_range_ends_and_clamps() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(to_u8(-0.5), 64); // 63.75
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
        assert_eq!(to_u8(f32::INFINITY), 255);
        // Every byte survives the trip through the data loader's v / 127.5 − 1.
        for v in 0..=255u8 {
            assert_eq!(to_u8(f32::from(v) / 127.5 - 1.0), v);
        }
    }
}
