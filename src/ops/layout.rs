//! NCHW ↔ token layout for attention over spatial positions: (N, C, H, W) ↔ (N, H·W, C).
//! Each is the other's backward.

use rayon::prelude::*;

use super::simd::multiversion;
use super::PAR_CHUNK;
use crate::float::Real;
use crate::shape::{expect_len, Nchw};

/// x: (N, C, H, W) → tokens: (N, L = H·W, C)
pub fn nchw_to_tokens<T: Real>(shape: Nchw, x: &[T], tokens: &mut [T]) {
    transpose_items(shape, x, tokens, "nchw_to_tokens", shape.c, shape.hw());
}

/// tokens: (N, L = H·W, C) → x: (N, C, H, W)
pub fn tokens_to_nchw<T: Real>(shape: Nchw, tokens: &[T], x: &mut [T]) {
    transpose_items(shape, tokens, x, "tokens_to_nchw", shape.hw(), shape.c);
}

/// Per batch item, transposes a (rows, cols) matrix into (cols, rows).
fn transpose_items<T: Real>(
    shape: Nchw,
    src: &[T],
    dst: &mut [T],
    op: &str,
    rows: usize,
    cols: usize,
) {
    expect_len(op, "input", src.len(), shape.len(), shape);
    expect_len(op, "output", dst.len(), shape.len(), shape);
    if shape.is_empty() {
        return;
    }
    let item = rows * cols;
    // Per item, bands of TILE destination rows (source columns); within a band, TILE × TILE
    // tiles, so both the reads and the writes stay within a few cache lines per row.
    let band = TILE * rows;
    dst.par_chunks_mut(item)
        .zip(src.par_chunks(item))
        .for_each(|(d, s)| {
            d.par_chunks_mut(band)
                .enumerate()
                .with_min_len((PAR_CHUNK / band).max(1))
                .for_each(|(k, d)| transpose_band(s, d, rows, cols, k * TILE));
        });
}

/// Side of the tiles a transpose moves at once.
const TILE: usize = 16;

multiversion! {
    /// d holds destination rows c0.. (each `rows` long) of the (cols, rows) transpose of the
    /// (rows, cols) matrix `s`: d[(c − c0) · rows + r] = s[r · cols + c].
    fn transpose_band<T: Real>(s: &[T], d: &mut [T], rows: usize, cols: usize, c0: usize) {
        let band_cols = d.len() / rows;
        assert!(s.len() == rows * cols && d.len() == band_cols * rows && c0 + band_cols <= cols);
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for c in 0..band_cols {
                for r in r0..r1 {
                    // SAFETY: r < rows and c0 + c < cols, so both indices are in bounds by the
                    // assertion above.
                    unsafe {
                        *d.get_unchecked_mut(c * rows + r) = *s.get_unchecked(r * cols + c0 + c);
                    }
                }
            }
        }
    }
}
