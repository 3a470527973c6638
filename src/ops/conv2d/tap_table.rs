//! Vector gathering of the convolution's columns for small images and strided convolutions.
//!
//! [`super::packed`]'s generic gatherer walks col[k, ·] as runs of one output row: cheap at
//! 32×32, but at the 4×4 and 8×8 levels of a UNet (and at any stride, where a run is one value)
//! the bookkeeping per run costs more than the multiply-adds the values feed. Here every tap has
//! a table of source offsets for one image's output positions, and 16 columns at a time come
//! from one masked AVX-512 gather, or — when an input plane fits one vector (≤ 16 values) — one
//! masked permute of the plane held in a register:
//!
//! ```text
//! col[(ci, t), (image, pos)] = plane(image, ci)[src[t][pos]]   (0 where src[t][pos] < 0)
//! ```
//!
//! f32 on AVX-512 only, and only when an image's output positions are a whole number of
//! 16-lane vectors (so no vector straddles two images); the values are exactly those of the
//! generic gatherer.

use super::Conv2dShape;
use crate::float::Real;
use crate::ops::simd::is_f32;
use crate::ops::tile;

/// Per-tap source offsets of one image's output positions.
pub(super) struct TapTable {
    /// [tap][position]: offset in the input plane (H·W values), or −1 in the padding.
    src: Vec<i32>,
    /// Output positions per image (H′·W′, a multiple of 16).
    positions: usize,
    /// Taps per input channel (kh·kw).
    taps: usize,
    /// Values per input plane (H·W).
    plane: usize,
    channels: usize,
}

impl TapTable {
    /// The table for geometry `s`, when the vector gatherer applies to it: f32 on AVX-512, whole
    /// vectors of positions per image, and an input small enough for 32-bit offsets.
    pub(super) fn new<T: Real>(s: &Conv2dShape) -> Option<Self> {
        let out = s.output();
        let positions = out.h * out.w;
        let plane = s.input.h * s.input.w;
        let usable = cfg!(target_arch = "x86_64")
            && is_f32::<T>()
            && tile::has_avx512()
            && positions > 0
            && positions.is_multiple_of(16)
            && i32::try_from(plane).is_ok();
        if !usable {
            return None;
        }
        let (kh, kw) = s.kernel;
        let mut src = Vec::with_capacity(kh * kw * positions);
        for ky in 0..kh {
            for kx in 0..kw {
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let iy = (oy * s.stride.0 + ky) as isize - s.pad.top as isize;
                        let ix = (ox * s.stride.1 + kx) as isize - s.pad.left as isize;
                        let inside = (0..s.input.h as isize).contains(&iy)
                            && (0..s.input.w as isize).contains(&ix);
                        src.push(if inside {
                            (iy as usize * s.input.w + ix as usize) as i32
                        } else {
                            -1
                        });
                    }
                }
            }
        }
        Some(Self {
            src,
            positions,
            taps: kh * kw,
            plane,
            channels: s.input.c,
        })
    }

    /// Whether this geometry gathers faster here than with the generic gatherer: rows narrower
    /// than a vector (runs of a few values) or a stride (runs of one value).
    pub(super) fn pays(s: &Conv2dShape) -> bool {
        s.output().w < 16 || s.stride != (1, 1)
    }

    /// Writes col[k, q0 + 16·v .. q0 + 16·v + 16) for v < count to `dst(v)`: x is the whole
    /// input batch (B, C_in, H, W), q0 a multiple of 16 and below B·H′·W′ − 16·(count − 1).
    ///
    /// # Safety
    /// T must be f32 (as [`Self::new`] checked), x the input of the table's geometry, and every
    /// `dst(v)` valid for 16 writes.
    pub(super) unsafe fn gather<T: Real>(
        &self,
        x: &[T],
        k: usize,
        q0: usize,
        count: usize,
        dst: impl FnMut(usize) -> *mut T,
    ) {
        debug_assert!(is_f32::<T>() && q0.is_multiple_of(16));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (checked by `new`); the rest is the caller's promise.
        unsafe {
            self.gather_avx512(x.as_ptr().cast(), k, q0, count, dst)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, k, q0, count, dst);
            unreachable!("the vector gatherer is x86-64 only");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn gather_avx512<T>(
        &self,
        x: *const f32,
        k: usize,
        q0: usize,
        count: usize,
        mut dst: impl FnMut(usize) -> *mut T,
    ) {
        use std::arch::x86_64::*;
        let (ci, tap) = (k / self.taps, k % self.taps);
        let table = &self.src[tap * self.positions..(tap + 1) * self.positions];
        let small = self.plane <= 16;
        let load = (1u32 << self.plane.min(16)).wrapping_sub(1) as __mmask16;
        let (mut img, mut pos) = (q0 / self.positions, q0 % self.positions);
        for v in 0..count {
            // SAFETY (whole block): the plane lies in x; `pos + 16 ≤ positions`; masked-off
            // lanes read nothing; the caller vouches for the destination.
            unsafe {
                let plane = x.add((img * self.channels + ci) * self.plane);
                let idx = _mm512_loadu_si512(table[pos..].as_ptr().cast());
                let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
                let col = if small {
                    let values = _mm512_maskz_loadu_ps(load, plane);
                    _mm512_maskz_permutexvar_ps(inside, idx, values)
                } else {
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), inside, idx, plane)
                };
                _mm512_storeu_ps(dst(v).cast(), col);
            }
            pos += 16;
            if pos == self.positions {
                (img, pos) = (img + 1, 0);
            }
        }
    }
}
