//! Fully connected layer on cuBLAS, PyTorch weight layout: y = x · Wᵀ + b. x, y, their
//! gradients and the weights W the products read are stored in the activation precision `dt`;
//! the bias and the parameter gradients dW, db are fp32 (the master copy's type). The bias
//! kernels are the convolution's (kernels/im2col.cu). CPU twin: [`crate::ops::linear`].

use super::conv2d::{bias_add_nchw, channel_sum_accumulate};
use crate::cuda::{CudaResult, DevPtr, Gpu, Mat};
use crate::ops::linear::LinearShape;
use crate::precision::Precision;

/// y = x · Wᵀ + b, written.   x: (rows, d_in)  w: (d_out, d_in)  b: (d_out)  y: (rows, d_out)
/// CPU twin: [`crate::ops::linear::linear_forward`].
pub fn linear_forward(
    gpu: &Gpu,
    dt: Precision,
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
        Mat::new(x, s.d_in).of(dt),
        Mat::new(w, s.d_in).of(dt).t(),
        0.0,
        Mat::new(y, s.d_out).of(dt),
        1,
    )?;
    if let Some(b) = b {
        bias_add_nchw(gpu, dt, y, b, s.rows, s.d_out, 1)?;
    }
    Ok(())
}

/// Backward of [`linear_forward`]: dx = dy · W written (when asked for); dW += dyᵀ · x and
/// db += Σ_rows dy accumulate.   dy: (rows, d_out); the other shapes as in the forward.
/// CPU twin: [`crate::ops::linear::linear_backward`].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    gpu: &Gpu,
    dt: Precision,
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
            let bytes = s.rows * s.d_in * dt.bytes();
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
            Mat::new(dy, s.d_out).of(dt),
            Mat::new(w, s.d_in).of(dt),
            0.0,
            Mat::new(dx, s.d_in).of(dt),
            1,
        )?;
    }
    // dW (d_out, d_in) += dyᵀ (d_out, rows) · x (rows, d_in)
    gpu.gemm(
        "linear_backward dw",
        (s.d_out, s.d_in, s.rows),
        1.0,
        Mat::new(dy, s.d_out).of(dt).t(),
        Mat::new(x, s.d_in).of(dt),
        1.0,
        Mat::new(dw, s.d_in),
        1,
    )?;
    if let Some(db) = db {
        // inner = 1: the column kernel, which needs no scratch.
        channel_sum_accumulate(gpu, dt, dy, db, s.rows, s.d_out, 1, (0, 0))?;
    }
    Ok(())
}
