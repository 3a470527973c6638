//! Launches of `kernels/loss.cu`: the mean-reduced MSE and L1 losses. CPU twin:
//! [`crate::ops::loss`].
//!
//! The forward is a deterministic two-stage reduction: a fixed [`LOSS_BLOCKS`]-block first pass
//! writes f64 partial sums into `scratch`, and one block adds them in a fixed order, so the loss
//! has the same bits on every run and every GPU. Per-element terms are f32 and sums f64, as on
//! the CPU, so the two agree to the last bit but for rare rounding-boundary cases. The
//! prediction and its gradient are stored in the activation precision `dt`; the target is fp32.
//! `dloss` of the backward carries the loss scale in fp16 training.

use super::super::device::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::precision::Precision;
use crate::train::LossKind;

/// Blocks of the first reduction pass; must equal `LOSS_BLOCKS` in `kernels/loss.cu`.
pub const LOSS_BLOCKS: usize = 1024;
/// Threads per block of both passes; must equal `LOSS_THREADS` in `kernels/loss.cu`.
const LOSS_THREADS: u32 = 256;

/// f32 elements of scratch a loss forward needs: [`LOSS_BLOCKS`] f64 partial sums. The same for
/// every `n`, so it is planned once. The scratch must be 8-byte aligned (any arena offset that is
/// a multiple of 2 f32 elements from an allocation start).
pub const REDUCE_SCRATCH: usize = 2 * LOSS_BLOCKS;

fn forward_kernel(dt: Precision, kind: LossKind) -> String {
    match kind {
        LossKind::L2 => dt.kernel("mse_forward"),
        LossKind::L1 => dt.kernel("l1_forward"),
    }
}

/// `loss` (1 f32 on the device) = mean over `n` elements of (pred − target)² (L2) or
/// |pred − target| (L1). CPU twin: [`crate::ops::loss::mse_forward`] / `l1_forward`.
///
/// `pred`: (n) in the activation precision `dt`, `target`: (n) f32; `scratch`: [`REDUCE_SCRATCH`] f32 elements, 8-byte aligned,
/// overwritten. Nothing is read back to the host.
#[allow(clippy::too_many_arguments)]
pub fn loss_forward(
    gpu: &Gpu,
    dt: Precision,
    kind: LossKind,
    n: usize,
    pred: DevPtr,
    target: DevPtr,
    loss: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    debug_assert_eq!(
        scratch % 8,
        0,
        "loss_forward: scratch must be 8-byte aligned"
    );
    let kernel = forward_kernel(dt, kind);
    let n64 = n as u64;
    gpu.launch(
        &kernel,
        Launch::blocks(LOSS_BLOCKS, LOSS_THREADS),
        kernel_args!(pred, target, scratch, n64),
        || format!("pred/target ({n})"),
    )?;
    gpu.launch(
        "loss_finish_f32",
        Launch::blocks(1, LOSS_THREADS),
        kernel_args!(scratch, loss, n64),
        || format!("after {kernel} ({n})"),
    )
}

/// dpred = dloss · ∂mean/∂pred over `n` elements (written, not accumulated):
/// 2(pred − target)/n · dloss for L2, sign(pred − target)/n · dloss (sign(0) = 0) for L1.
/// CPU twin: [`crate::ops::loss::mse_backward`] / `l1_backward`. The factor k is formed on the
/// host exactly as the CPU forms it (an f32 product of dloss and the f64-derived 2/n or 1/n).
#[allow(clippy::too_many_arguments)]
pub fn loss_backward(
    gpu: &Gpu,
    dt: Precision,
    kind: LossKind,
    n: usize,
    pred: DevPtr,
    target: DevPtr,
    dloss: f32,
    dpred: DevPtr,
) -> CudaResult<()> {
    let count = n.max(1) as f64;
    let (kernel, k) = match kind {
        LossKind::L2 => (dt.kernel("mse_backward"), dloss * (2.0 / count) as f32),
        LossKind::L1 => (dt.kernel("l1_backward"), dloss * (1.0 / count) as f32),
    };
    let n64 = n as u64;
    gpu.launch(
        &kernel,
        Launch::linear(n, 256),
        kernel_args!(pred, target, dpred, k, n64),
        || format!("pred/target/dpred ({n})"),
    )
}
