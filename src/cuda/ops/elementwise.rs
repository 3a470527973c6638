//! Launches of the elementwise kernels in kernels/elementwise.cu, in the activation precision
//! `dt` (fp32 math whatever it is). `n` is the element count
//! of every buffer of a call (they all hold the same number of elements unless a shape says
//! otherwise). The casts convert between fp32 and `dt`. CPU twins: [`crate::ops::silu`], [`crate::ops::add`], [`crate::ops::dropout`],
//! [`crate::ops::concat`] and [`crate::nn::layers::accumulate`]. Activation gradients are written.

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::ops::dropout::DropoutArgs;
use crate::precision::Precision;
use crate::shape::Nchw;

/// Threads per block of the grid-stride elementwise launches.
const BLOCK: u32 = 256;

// `DropoutArgs` goes to the kernel by value as a `#[repr(C)]` struct: it must have the layout of
// its twin in kernels/common.cuh (u64, u64, u32, f32: 24 bytes, 8-byte aligned).
const _: () = assert!(std::mem::size_of::<DropoutArgs>() == 24);
const _: () = assert!(std::mem::align_of::<DropoutArgs>() == 8);

fn linear(gpu: &Gpu, kernel: &str, n: usize, args: &mut [*mut std::ffi::c_void]) -> CudaResult<()> {
    gpu.launch(kernel, Launch::linear(n, BLOCK), args, || format!("n={n}"))
}

/// y = x · σ(x).   x, y: (n)   CPU twin: [`crate::ops::silu::silu_forward`].
pub fn silu_forward(gpu: &Gpu, dt: Precision, n: usize, x: DevPtr, y: DevPtr) -> CudaResult<()> {
    linear(gpu, &dt.kernel("silu_forward"), n, kernel_args![x, y, n])
}

/// dx = dy · σ(x) · (1 + x · (1 − σ(x))), written.   CPU twin: [`crate::ops::silu::silu_backward`].
pub fn silu_backward(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    x: DevPtr,
    dy: DevPtr,
    dx: DevPtr,
) -> CudaResult<()> {
    linear(
        gpu,
        &dt.kernel("silu_backward"),
        n,
        kernel_args![x, dy, dx, n],
    )
}

/// y = a + b.   CPU twin: [`crate::ops::add::add`].
pub fn add(gpu: &Gpu, dt: Precision, n: usize, a: DevPtr, b: DevPtr, y: DevPtr) -> CudaResult<()> {
    linear(gpu, &dt.kernel("add"), n, kernel_args![a, b, y, n])
}

/// acc += x: the gradient of a tensor that feeds two consumers.
/// CPU twin: [`crate::nn::layers::accumulate`].
pub fn accumulate(gpu: &Gpu, dt: Precision, n: usize, acc: DevPtr, x: DevPtr) -> CudaResult<()> {
    linear(gpu, &dt.kernel("accumulate"), n, kernel_args![acc, x, n])
}

/// y = alpha · x (`y` may be `x`).   CPU twin: [`crate::ops::add::scale`].
pub fn scale(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    x: DevPtr,
    alpha: f32,
    y: DevPtr,
) -> CudaResult<()> {
    linear(gpu, &dt.kernel("scale"), n, kernel_args![x, y, alpha, n])
}

/// y[n, c, :, :] = x[n, c, :, :] + t[n, c].   x, y: `shape`, t: (N, C)
/// CPU twin: [`crate::ops::add::add_channel_bias`].
pub fn add_channel_bias(
    gpu: &Gpu,
    dt: Precision,
    shape: Nchw,
    x: DevPtr,
    t: DevPtr,
    y: DevPtr,
) -> CudaResult<()> {
    let (bc, hw) = (shape.n * shape.c, shape.hw());
    gpu.launch(
        &dt.kernel("add_channel_bias"),
        Launch::linear(shape.len(), BLOCK),
        kernel_args![x, t, y, bc, hw],
        || format!("shape={shape}"),
    )
}

/// dtemb[n, c] = Σ_hw dy[n, c, :, :], written.   dy: `shape`, dtemb: (N, C), both `dt`; the sum
/// is fp32, rounded once. One warp per (n, c); no atomics, so the result is the same on every run.
/// CPU twin: the `dt` of [`crate::ops::add::add_channel_bias_backward`].
pub fn sum_spatial(
    gpu: &Gpu,
    dt: Precision,
    shape: Nchw,
    dy: DevPtr,
    dtemb: DevPtr,
) -> CudaResult<()> {
    let (bc, hw) = (shape.n * shape.c, shape.hw());
    if bc == 0 {
        return Ok(());
    }
    let warps_per_block = (BLOCK / 32) as usize;
    let blocks = bc.div_ceil(warps_per_block).min(65_535 * 8);
    gpu.launch(
        &dt.kernel("sum_spatial"),
        Launch::blocks(blocks, BLOCK),
        kernel_args![dy, dtemb, bc, hw],
        || format!("shape={shape}"),
    )
}

/// y = mask ⊙ x / (1 − p), the mask regenerated from `a` (Philox), so nothing is stored.
/// CPU twin: [`crate::ops::dropout::dropout_forward`], which drops exactly the same elements.
pub fn dropout_forward(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    a: &DropoutArgs,
    x: DevPtr,
    y: DevPtr,
) -> CudaResult<()> {
    let a = *a;
    linear(
        gpu,
        &dt.kernel("dropout_forward"),
        n,
        kernel_args![x, y, n, a],
    )
}

/// dx = mask ⊙ dy / (1 − p), written: the forward kernel applied to dy with the same `a`.
/// CPU twin: [`crate::ops::dropout::dropout_backward`].
pub fn dropout_backward(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    a: &DropoutArgs,
    dy: DevPtr,
    dx: DevPtr,
) -> CudaResult<()> {
    let a = *a;
    linear(
        gpu,
        &dt.kernel("dropout_forward"),
        n,
        kernel_args![dy, dx, n, a],
    )
}

/// y = a ‖ b along channels.   a: (N, c_a, H, W), b: (N, c_b, H, W), y: `out` = (N, c_a + c_b, H, W)
/// CPU twin: [`crate::ops::concat::concat_channels`].
#[allow(clippy::too_many_arguments)]
pub fn concat_channels(
    gpu: &Gpu,
    dt: Precision,
    out: Nchw,
    a: DevPtr,
    c_a: usize,
    b: DevPtr,
    c_b: usize,
    y: DevPtr,
) -> CudaResult<()> {
    check_parts("concat_channels", out, c_a, c_b);
    let (n, a_len, b_len) = (out.n, c_a * out.hw(), c_b * out.hw());
    gpu.launch(
        &dt.kernel("concat_channels"),
        Launch::linear(out.len(), BLOCK),
        kernel_args![a, b, y, n, a_len, b_len],
        || format!("out={out} c_a={c_a} c_b={c_b}"),
    )
}

/// The backward of [`concat_channels`]: dy (N, c_a + c_b, H, W) → da (N, c_a, H, W),
/// db (N, c_b, H, W), both written.   CPU twin: [`crate::ops::concat::split_channels`].
#[allow(clippy::too_many_arguments)]
pub fn split_channels(
    gpu: &Gpu,
    dt: Precision,
    out: Nchw,
    dy: DevPtr,
    da: DevPtr,
    c_a: usize,
    db: DevPtr,
    c_b: usize,
) -> CudaResult<()> {
    check_parts("split_channels", out, c_a, c_b);
    let (n, a_len, b_len) = (out.n, c_a * out.hw(), c_b * out.hw());
    gpu.launch(
        &dt.kernel("split_channels"),
        Launch::linear(out.len(), BLOCK),
        kernel_args![dy, da, db, n, a_len, b_len],
        || format!("out={out} c_a={c_a} c_b={c_b}"),
    )
}

/// y (n, stored as `dt`) = x (n, f32) rounded to nearest even; a device copy in fp32 (nothing
/// when `x` is `y`).
pub fn cast_from_f32(gpu: &Gpu, dt: Precision, n: usize, x: DevPtr, y: DevPtr) -> CudaResult<()> {
    match dt {
        Precision::Fp32 if x == y => Ok(()),
        Precision::Fp32 => gpu.copy(y, x, 4 * n, "cast_from_f32 (fp32: a copy)"),
        _ => {
            // Elements of different sizes: an in-place conversion would race.
            assert!(
                x != y,
                "cast_from_f32: x and y must not be the same buffer in {dt}"
            );
            linear(gpu, &dt.kernel("cast_from_f32"), n, kernel_args![x, y, n])
        }
    }
}

/// y (n, f32) = x (n, stored as `dt`) widened (exact); a device copy in fp32 (nothing when `x`
/// is `y`).
pub fn cast_to_f32(gpu: &Gpu, dt: Precision, n: usize, x: DevPtr, y: DevPtr) -> CudaResult<()> {
    match dt {
        Precision::Fp32 if x == y => Ok(()),
        Precision::Fp32 => gpu.copy(y, x, 4 * n, "cast_to_f32 (fp32: a copy)"),
        _ => {
            // Elements of different sizes: an in-place conversion would race.
            assert!(
                x != y,
                "cast_to_f32: x and y must not be the same buffer in {dt}"
            );
            linear(gpu, &dt.kernel("cast_to_f32"), n, kernel_args![x, y, n])
        }
    }
}

/// A channel split that does not add up is a bug in the caller (as in the CPU op).
fn check_parts(op: &str, out: Nchw, c_a: usize, c_b: usize) {
    assert!(
        c_a + c_b == out.c,
        "{op}: parts have {c_a} + {c_b} channels, the concatenation {out}"
    );
}
