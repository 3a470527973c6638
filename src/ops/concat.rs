//! Concatenation along channels (the UNet skip connections) and its backward, the split.
//! Saved for backward: nothing but the channel counts.

use rayon::prelude::*;

use crate::float::Real;
use crate::shape::{expect_len, Nchw};

/// parts[i]: (N, C_i, H, W) → y: (N, ΣC_i, H, W). `out` gives N, H, W and the total C.
pub fn concat_channels<T: Real>(out: Nchw, parts: &[(&[T], usize)], y: &mut [T]) {
    check(
        out,
        parts.iter().map(|p| (p.0.len(), p.1)),
        y.len(),
        "concat_channels",
    );
    let (hw, chw) = (out.hw(), out.chw());
    if out.is_empty() {
        return;
    }
    y.par_chunks_mut(chw).enumerate().for_each(|(n, y_n)| {
        let mut at = 0;
        for &(part, c) in parts {
            let len = c * hw;
            y_n[at..at + len].copy_from_slice(&part[n * len..(n + 1) * len]);
            at += len;
        }
    });
}

/// The backward of [`concat_channels`]: dy (N, ΣC_i, H, W) → each d_part (N, C_i, H, W), written.
pub fn split_channels<T: Real>(out: Nchw, dy: &[T], parts: &mut [(&mut [T], usize)]) {
    check(
        out,
        parts.iter().map(|p| (p.0.len(), p.1)),
        dy.len(),
        "split_channels",
    );
    let (hw, chw) = (out.hw(), out.chw());
    let mut at = 0;
    for (part, c) in parts.iter_mut() {
        let len = *c * hw;
        part.par_chunks_mut(len.max(1))
            .enumerate()
            .for_each(|(n, p_n)| {
                p_n.copy_from_slice(&dy[n * chw + at..n * chw + at + len]);
            });
        at += len;
    }
}

fn check(out: Nchw, parts: impl Iterator<Item = (usize, usize)>, whole: usize, op: &str) {
    let mut total_c = 0;
    for (i, (len, c)) in parts.enumerate() {
        let shape = out.with_c(c);
        expect_len(op, &format!("part {i}"), len, shape.len(), shape);
        total_c += c;
    }
    assert!(
        total_c == out.c,
        "{op}: parts have {total_c} channels in all, the output {}",
        out.c
    );
    expect_len(op, "concatenated", whole, out.len(), out);
}
