//! NCHW ↔ token layout for attention over spatial positions: (N, C, H, W) ↔ (N, H·W, C).
//! Each is the other's backward.

use rayon::prelude::*;

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
    dst.par_chunks_mut(rows * cols)
        .zip(src.par_chunks(rows * cols))
        .for_each(|(d, s)| {
            for r in 0..rows {
                for c in 0..cols {
                    d[c * rows + r] = s[r * cols + c];
                }
            }
        });
}
