//! Fully connected layer on cuBLAS, fp32, PyTorch weight layout: y = x · Wᵀ + b. The bias
//! kernels are the convolution's (kernels/im2col.cu). CPU twin: [`crate::ops::linear`].

use super::conv2d::{bias_add_nchw, channel_sum_accumulate};
use crate::cuda::{CudaResult, DevPtr, Gpu, Mat};
use crate::ops::linear::LinearShape;

/// y = x · Wᵀ + b, written.   x: (rows, d_in)  w: (d_out, d_in)  b: (d_out)  y: (rows, d_out)
/// CPU twin: [`crate::ops::linear::linear_forward`].
pub fn linear_forward(
    gpu: &Gpu,
    s: &LinearShape,
    x: DevPtr,
    w: DevPtr,
    b: Option<DevPtr>,
    y: DevPtr,
) -> CudaResult<()> {
    if s.rows == 0 || s.d_out == 0 {
        return Ok(());
    }
    // y (rows, d_out) = x (rows, d_in) · Wᵀ (d_in, d_out)
    gpu.gemm(
        "linear_forward",
        (s.rows, s.d_out, s.d_in),
        1.0,
        Mat::new(x, s.d_in),
        Mat::new(w, s.d_in).t(),
        0.0,
        Mat::new(y, s.d_out),
        1,
    )?;
    if let Some(b) = b {
        bias_add_nchw(gpu, y, b, s.rows, s.d_out, 1)?;
    }
    Ok(())
}

/// Backward of [`linear_forward`]: dx = dy · W written (when asked for); dW += dyᵀ · x and
/// db += Σ_rows dy accumulate.   dy: (rows, d_out); the other shapes as in the forward.
/// CPU twin: [`crate::ops::linear::linear_backward`].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    gpu: &Gpu,
    s: &LinearShape,
    x: DevPtr,
    w: DevPtr,
    dy: DevPtr,
    dx: Option<DevPtr>,
    dw: DevPtr,
    db: Option<DevPtr>,
) -> CudaResult<()> {
    if s.rows == 0 || s.d_out == 0 {
        // Nothing flows back: dW and db keep their values, dx (a sum over no outputs) is zero.
        if let Some(dx) = dx {
            let bytes = s.rows * s.d_in * std::mem::size_of::<f32>();
            gpu.zero(dx, bytes, "linear_backward dx")?;
        }
        return Ok(());
    }
    if let Some(dx) = dx {
        // dx (rows, d_in) = dy (rows, d_out) · W (d_out, d_in)
        gpu.gemm(
            "linear_backward dx",
            (s.rows, s.d_in, s.d_out),
            1.0,
            Mat::new(dy, s.d_out),
            Mat::new(w, s.d_in),
            0.0,
            Mat::new(dx, s.d_in),
            1,
        )?;
    }
    // dW (d_out, d_in) += dyᵀ (d_out, rows) · x (rows, d_in)
    gpu.gemm(
        "linear_backward dw",
        (s.d_out, s.d_in, s.rows),
        1.0,
        Mat::new(dy, s.d_out).t(),
        Mat::new(x, s.d_in),
        1.0,
        Mat::new(dw, s.d_in),
        1,
    )?;
    if let Some(db) = db {
        channel_sum_accumulate(gpu, dy, db, s.rows, s.d_out, 1)?;
    }
    Ok(())
}
