//! 2-d convolution, NCHW, any kernel size, stride and (asymmetric) zero padding.
//!
//! Written as matrix products over the unrolled input patches (`col`: (C_in·kh·kw, H_out·W_out)
//! per image, the input under every kernel tap of every output position):
//!   forward      y_n  = W · col_n + b                 W: (C_out, C_in·kh·kw)
//!   grad weight  dW  += dy_n · col_nᵀ
//!   grad input   dcol = Wᵀ · dy_n,  dx_n = col2im(dcol)
//! Saved for backward: nothing beyond the input x (the columns are recomputed).
//!
//! Two implementations of the same functions:
//! - [`packed`] (what [`conv2d_forward`] and [`conv2d_backward`] run): packed GEMMs on the
//!   register tile of [`crate::ops::tile`], panels gathered straight from x, no im2col buffer;
//! - `*_im2col` below: the textbook form, an explicit im2col buffer per image and the `gemm`
//!   crate, kept as the independent reference the packed path is tested against (and used for
//!   the input gradient of strided convolutions).

pub mod packed;
mod tap_table;

use rayon::prelude::*;

use super::matmul::{gemm, MatMut, MatRef, Threads};
use crate::float::Real;
use crate::shape::{expect_len, Nchw, ShapeError};

/// Zero padding on each side; `downsample_padding = 0` in diffusers means right/bottom only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides.
    pub const fn same(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// Padding on the bottom and right only: diffusers' `Downsample2D` with
    /// `downsample_padding = 0`.
    pub const fn bottom_right(p: usize) -> Self {
        Self {
            top: 0,
            bottom: p,
            left: 0,
            right: p,
        }
    }
}

/// Geometry of one convolution; build it with [`Conv2dShape::new`], which validates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    /// (B, C_in, H, W)
    pub input: Nchw,
    pub c_out: usize,
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    pub pad: Padding,
    out_h: usize,
    out_w: usize,
}

impl Conv2dShape {
    pub fn new(
        input: Nchw,
        c_out: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: Padding,
    ) -> Result<Self, ShapeError> {
        let err = |msg: String| ShapeError::new("conv2d", msg);
        if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
            return Err(err(format!(
                "kernel {kernel:?} and stride {stride:?} must be positive"
            )));
        }
        if input.c == 0 || c_out == 0 || input.h == 0 || input.w == 0 {
            return Err(err(format!(
                "channels and input size must be positive (input {input}, {c_out} output channels)"
            )));
        }
        let padded_h = input.h + pad.top + pad.bottom;
        let padded_w = input.w + pad.left + pad.right;
        if padded_h < kernel.0 || padded_w < kernel.1 {
            return Err(err(format!(
                "kernel {kernel:?} is larger than the padded input {padded_h}x{padded_w} (input {input})"
            )));
        }
        let out_h = (padded_h - kernel.0) / stride.0 + 1;
        let out_w = (padded_w - kernel.1) / stride.1 + 1;
        Ok(Self {
            input,
            c_out,
            kernel,
            stride,
            pad,
            out_h,
            out_w,
        })
    }

    /// (B, C_out, H_out, W_out)
    pub fn output(&self) -> Nchw {
        Nchw::new(self.input.n, self.c_out, self.out_h, self.out_w)
    }

    /// Rows of the unrolled patch matrix: C_in·kh·kw.
    pub fn patch_len(&self) -> usize {
        self.input.c * self.kernel.0 * self.kernel.1
    }

    /// (C_out, C_in, kh, kw)
    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch_len()
    }

    /// Multiply-adds ×2 of the forward pass (the backward costs twice this).
    pub fn forward_flops(&self) -> u64 {
        2 * (self.output().len() * self.patch_len()) as u64
    }

    /// A 1×1, stride-1, unpadded convolution needs no unrolling: `col_n` is `x_n` itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.pad == Padding::default()
    }

    fn check(&self, op: &str, x: usize, w: usize, y: usize) {
        expect_len(op, "x", x, self.input.len(), self.input);
        expect_len(
            op,
            "weight",
            w,
            self.weight_len(),
            format!(
                "({}, {}, {}, {})",
                self.c_out, self.input.c, self.kernel.0, self.kernel.1
            ),
        );
        expect_len(op, "y", y, self.output().len(), self.output());
    }

    /// For output row `oy` and kernel row `ky`, the input row, or None inside the padding.
    #[inline]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride.0 + ky)
            .checked_sub(self.pad.top)
            .filter(|&r| r < self.input.h)
    }

    #[inline]
    fn in_col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride.1 + kx)
            .checked_sub(self.pad.left)
            .filter(|&c| c < self.input.w)
    }
}

/// Unrolls one image: x_n (C_in, H, W) → col (C_in·kh·kw, H_out·W_out); padding reads as zero.
pub fn im2col<T: Real>(s: &Conv2dShape, x_n: &[T], col: &mut [T]) {
    let (kh, kw) = s.kernel;
    let (h, w) = (s.input.h, s.input.w);
    let (oh, ow) = (s.out_h, s.out_w);
    let rows = col.chunks_exact_mut(oh * ow);
    for (r, col_row) in rows.enumerate() {
        let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x_n[ci * h * w..(ci + 1) * h * w];
        for oy in 0..oh {
            let out = &mut col_row[oy * ow..(oy + 1) * ow];
            match s.in_row(oy, ky) {
                None => out.fill(T::zero()),
                Some(iy) => {
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o = s.in_col(ox, kx).map_or(T::zero(), |ix| plane[iy * w + ix]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: scatters col (C_in·kh·kw, H_out·W_out) back, summing overlaps,
/// into dx_n (C_in, H, W), which it overwrites.
pub fn col2im<T: Real>(s: &Conv2dShape, col: &[T], dx_n: &mut [T]) {
    let (kh, kw) = s.kernel;
    let (h, w) = (s.input.h, s.input.w);
    let (oh, ow) = (s.out_h, s.out_w);
    dx_n.fill(T::zero());
    for (r, col_row) in col.chunks_exact(oh * ow).enumerate() {
        let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &mut dx_n[ci * h * w..(ci + 1) * h * w];
        for oy in 0..oh {
            let Some(iy) = s.in_row(oy, ky) else { continue };
            for ox in 0..ow {
                if let Some(ix) = s.in_col(ox, kx) {
                    plane[iy * w + ix] += col_row[oy * ow + ox];
                }
            }
        }
    }
}

/// y = conv(x, W) + b.   x: (B, C_in, H, W), W: (C_out, C_in, kh, kw), b: (C_out),
/// y: (B, C_out, H_out, W_out). The packed path; weights packed once for the whole batch.
pub fn conv2d_forward<T: Real>(s: &Conv2dShape, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    check_forward("conv2d_forward", s, x, w, b, y);
    if !packed_path::<T>() {
        return conv2d_forward_im2col(s, x, w, b, y);
    }
    let a = packed::PackedLeft::weights(s, w);
    packed::forward(s, x, &a, b, y);
}

/// Whether the packed path runs for `T`: always for f64 (so the gradient checks exercise its
/// indexing), and for f32 where the AVX-512 tiles run. An f32 CPU without AVX-512 runs the
/// im2col reference instead, whose `gemm` crate picks AVX2/FMA kernels at run time and beats
/// the portable tile.
fn packed_path<T: Real>() -> bool {
    !crate::ops::simd::is_f32::<T>() || crate::ops::tile::has_avx512()
}

fn check_forward<T: Real>(op: &str, s: &Conv2dShape, x: &[T], w: &[T], b: Option<&[T]>, y: &[T]) {
    s.check(op, x.len(), w.len(), y.len());
    if let Some(b) = b {
        expect_len(op, "bias", b.len(), s.c_out, format!("({})", s.c_out));
    }
}

/// Backward of [`conv2d_forward`]: `dx` (when asked for) is written; `dw` and `db` accumulate.
pub fn conv2d_backward<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    conv2d_backward_weights(s, x, dy, dw, db);
    if let Some(dx) = dx {
        conv2d_backward_data(s, w, dy, dx);
    }
}

/// dW += Σ_n dy_n · col_nᵀ and db += Σ dy per channel.
pub fn conv2d_backward_weights<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let op = "conv2d_backward_weights";
    expect_len(op, "x", x.len(), s.input.len(), s.input);
    expect_len(op, "dy", dy.len(), s.output().len(), s.output());
    expect_len(op, "dw", dw.len(), s.weight_len(), "weight");
    if packed_path::<T>() {
        packed::backward_weights(s, x, dy, dw);
    } else {
        backward_weights_im2col(s, x, dy, dw);
    }
    if let Some(db) = db {
        bias_grad(s, dy, db);
    }
}

/// dx = col2im(Wᵀ · dy) (written). Stride 1 runs the packed forward on dy with the flipped,
/// transposed weights; other strides the im2col reference.
pub fn conv2d_backward_data<T: Real>(s: &Conv2dShape, w: &[T], dy: &[T], dx: &mut [T]) {
    let op = "conv2d_backward_data";
    expect_len(op, "dx", dx.len(), s.input.len(), s.input);
    s.check(op, dx.len(), w.len(), dy.len());
    if !packed_path::<T>() || packed::backward_data_stride1(s, w, dy, dx).is_none() {
        backward_data_im2col(s, w, dy, dx);
    }
}

/// db += Σ_{n, positions} dy per output channel.
fn bias_grad<T: Real>(s: &Conv2dShape, dy: &[T], db: &mut [T]) {
    let p = s.out_h * s.out_w;
    expect_len(
        "conv2d_backward",
        "db",
        db.len(),
        s.c_out,
        format!("({})", s.c_out),
    );
    db.par_iter_mut().enumerate().for_each(|(c, d)| {
        for dy_n in dy.chunks_exact(s.c_out * p) {
            *d += dy_n[c * p..(c + 1) * p].iter().copied().sum::<T>();
        }
    });
}

/// dx_n = col2im(Wᵀ · dy_n) per image, in parallel over the batch (a 1×1 convolution's col2im
/// is a copy).
fn backward_data_im2col<T: Real>(s: &Conv2dShape, w: &[T], dy: &[T], dx: &mut [T]) {
    let (k, p) = (s.patch_len(), s.out_h * s.out_w);
    let w_mat = MatRef::rows(w, s.c_out, k);
    dx.par_chunks_mut(s.input.chw())
        .zip(dy.par_chunks(s.c_out * p))
        .for_each_init(
            || vec![T::zero(); k * p],
            |dcol, (dx_n, dy_n)| {
                let dy_mat = MatRef::rows(dy_n, s.c_out, p);
                gemm(
                    MatMut::rows(dcol, k, p),
                    w_mat.t(),
                    dy_mat,
                    T::one(),
                    false,
                    Threads::Serial,
                );
                col2im(s, dcol, dx_n);
            },
        );
}

/// [`conv2d_forward`] the textbook way: im2col per image, then one GEMM (the reference).
pub fn conv2d_forward_im2col<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    check_forward("conv2d_forward_im2col", s, x, w, b, y);
    let (k, p) = (s.patch_len(), s.out_h * s.out_w);
    let pointwise = s.is_pointwise();
    let col_len = if pointwise { 0 } else { k * p };
    y.par_chunks_mut(s.c_out * p)
        .zip(x.par_chunks(s.input.chw()))
        .for_each_init(
            || vec![T::zero(); col_len],
            |col, (y_n, x_n)| {
                let cols: &[T] = if pointwise {
                    x_n
                } else {
                    im2col(s, x_n, col);
                    col
                };
                let w_mat = MatRef::rows(w, s.c_out, k);
                gemm(
                    MatMut::rows(y_n, s.c_out, p),
                    w_mat,
                    MatRef::rows(cols, k, p),
                    T::one(),
                    false,
                    Threads::Serial,
                );
                if let Some(b) = b {
                    for (y_c, &b_c) in y_n.chunks_exact_mut(p).zip(b) {
                        y_c.iter_mut().for_each(|v| *v += b_c);
                    }
                }
            },
        );
}

/// Weight gradients are summed over fixed groups of images, one partial sum per group, then
/// reduced in group order: parallel, yet bitwise independent of the thread count.
const WEIGHT_GRAD_GROUPS: usize = 8;

/// [`conv2d_backward`] the textbook way (the reference): im2col per image, GEMMs, col2im.
pub fn conv2d_backward_im2col<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    s.check("conv2d_backward_im2col", x.len(), w.len(), dy.len());
    backward_weights_im2col(s, x, dy, dw);
    if let Some(db) = db {
        bias_grad(s, dy, db);
    }
    if let Some(dx) = dx {
        expect_len("conv2d_backward_im2col", "dx", dx.len(), x.len(), s.input);
        backward_data_im2col(s, w, dy, dx);
    }
}

/// dW += Σ_n dy_n · col_nᵀ with an im2col buffer per image: partial sums per fixed group of
/// images, then added in group order.
fn backward_weights_im2col<T: Real>(s: &Conv2dShape, x: &[T], dy: &[T], dw: &mut [T]) {
    expect_len(
        "conv2d_backward_im2col",
        "dw",
        dw.len(),
        s.weight_len(),
        "weight",
    );
    let (k, p) = (s.patch_len(), s.out_h * s.out_w);
    let (x_item, y_item) = (s.input.chw(), s.c_out * p);
    let batch = s.input.n;
    if batch == 0 {
        return;
    }
    let per_group = batch.div_ceil(WEIGHT_GRAD_GROUPS);
    let pointwise = s.is_pointwise();
    let partials: Vec<Vec<T>> = x
        .par_chunks(per_group * x_item)
        .zip(dy.par_chunks(per_group * y_item))
        .map(|(x_g, dy_g)| {
            let mut dw_part = vec![T::zero(); s.c_out * k];
            let mut col = vec![T::zero(); if pointwise { 0 } else { k * p }];
            for (x_n, dy_n) in x_g.chunks_exact(x_item).zip(dy_g.chunks_exact(y_item)) {
                let cols: &[T] = if pointwise {
                    x_n
                } else {
                    im2col(s, x_n, &mut col);
                    &col
                };
                // dW += dy_n · col_nᵀ   (C_out, P) · (P, K)
                gemm(
                    MatMut::rows(&mut dw_part, s.c_out, k),
                    MatRef::rows(dy_n, s.c_out, p),
                    MatRef::rows(cols, k, p).t(),
                    T::one(),
                    true,
                    Threads::Serial,
                );
            }
            dw_part
        })
        .collect();

    dw.par_iter_mut().enumerate().for_each(|(i, d)| {
        for part in &partials {
            *d += part[i];
        }
    });
}
