//! Launches of kernels/resample.cu, fp32: nearest-neighbour 2× upsampling (CPU twin
//! [`crate::ops::upsample`]) and asymmetric zero padding with its crop backward (the CPU pads
//! inside im2col, see [`crate::ops::conv2d::Padding`]; a GPU convolution can pad first and then
//! run unpadded). Every kernel is indexed by what it writes: no atomics, gradients written.

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::ops::conv2d::Padding;
use crate::precision::Precision;
use crate::shape::Nchw;

const BLOCK: u32 = 256;

/// x: `xs` = (N, C, H, W) → y: (N, C, 2H, 2W), y[.., oy, ox] = x[.., oy/2, ox/2].
/// CPU twin: [`crate::ops::upsample::upsample_nearest2x_forward`].
pub fn upsample_nearest2x_forward(
    gpu: &Gpu,
    dt: Precision,
    xs: Nchw,
    x: DevPtr,
    y: DevPtr,
) -> CudaResult<()> {
    let (nc, h, w) = (xs.n * xs.c, xs.h, xs.w);
    gpu.launch(
        &dt.kernel("upsample_nearest2x_forward"),
        Launch::linear(4 * xs.len(), BLOCK),
        kernel_args![x, y, nc, h, w],
        || format!("x={xs}"),
    )
}

/// dy: (N, C, 2H, 2W) → dx: `xs`, written: each dx is the sum of its four children (gather,
/// so no atomics; the same order of additions as the CPU).
/// CPU twin: [`crate::ops::upsample::upsample_nearest2x_backward`].
pub fn upsample_nearest2x_backward(
    gpu: &Gpu,
    dt: Precision,
    xs: Nchw,
    dy: DevPtr,
    dx: DevPtr,
) -> CudaResult<()> {
    let (nc, h, w) = (xs.n * xs.c, xs.h, xs.w);
    gpu.launch(
        &dt.kernel("upsample_nearest2x_backward"),
        Launch::linear(xs.len(), BLOCK),
        kernel_args![dy, dx, nc, h, w],
        || format!("x={xs}"),
    )
}

/// The shape of `xs` after padding: (N, C, top + H + bottom, left + W + right).
pub fn padded_shape(xs: Nchw, pad: Padding) -> Nchw {
    Nchw::new(
        xs.n,
        xs.c,
        pad.top + xs.h + pad.bottom,
        pad.left + xs.w + pad.right,
    )
}

/// x: `xs` → y: [`padded_shape`]`(xs, pad)`, zeros outside x.
pub fn pad2d_forward(
    gpu: &Gpu,
    dt: Precision,
    xs: Nchw,
    pad: Padding,
    x: DevPtr,
    y: DevPtr,
) -> CudaResult<()> {
    let ys = padded_shape(xs, pad);
    let (nc, h, w, top, left, oh, ow) = (xs.n * xs.c, xs.h, xs.w, pad.top, pad.left, ys.h, ys.w);
    gpu.launch(
        &dt.kernel("pad2d_forward"),
        Launch::linear(ys.len(), BLOCK),
        kernel_args![x, y, nc, h, w, top, left, oh, ow],
        || format!("x={xs} pad={pad:?}"),
    )
}

/// dy: [`padded_shape`]`(xs, pad)` → dx: `xs`, written: the crop of dy where x was.
pub fn pad2d_backward(
    gpu: &Gpu,
    dt: Precision,
    xs: Nchw,
    pad: Padding,
    dy: DevPtr,
    dx: DevPtr,
) -> CudaResult<()> {
    let ys = padded_shape(xs, pad);
    let (nc, h, w, top, left, oh, ow) = (xs.n * xs.c, xs.h, xs.w, pad.top, pad.left, ys.h, ys.w);
    gpu.launch(
        &dt.kernel("pad2d_backward"),
        Launch::linear(xs.len(), BLOCK),
        kernel_args![dy, dx, nc, h, w, top, left, oh, ow],
        || format!("x={xs} pad={pad:?}"),
    )
}
