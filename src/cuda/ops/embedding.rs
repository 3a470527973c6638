//! Launches of kernels/embedding.cu, fp32: the sinusoidal timestep embedding (CPU twin
//! [`crate::ops::embedding`]) and the class-label embedding of a class-conditional UNet (CPU twin:
//! the class-embedding lines of [`crate::nn::unet`]).

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::ops::embedding::TimestepEmbedding;
use crate::precision::Precision;

const BLOCK: u32 = 256;

/// t: (n) f32 → emb: (n, e.dim). Frequencies, arguments, sin and cos in f64 as on the CPU, so
/// the two agree to about one f32 rounding.
/// CPU twin: [`crate::ops::embedding::timestep_embedding_forward`].
pub fn timestep_embedding(
    gpu: &Gpu,
    dt: Precision,
    e: &TimestepEmbedding,
    n: usize,
    t: DevPtr,
    emb: DevPtr,
) -> CudaResult<()> {
    let dim = e.dim;
    let flip = i32::from(e.flip_sin_to_cos);
    let (freq_shift, max_period) = (e.freq_shift, e.max_period);
    gpu.launch(
        &dt.kernel("timestep_embedding"),
        Launch::linear(n * dim, BLOCK),
        kernel_args![t, emb, n, dim, flip, freq_shift, max_period],
        || format!("n={n} {e:?}"),
    )
}

/// emb[i, :] += table[labels[i], :].   labels: (n) u32, each < classes (checked by the caller);
/// table: (classes, width); emb: (n, width).
pub fn class_embedding_forward(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    width: usize,
    labels: DevPtr,
    table: DevPtr,
    emb: DevPtr,
) -> CudaResult<()> {
    gpu.launch(
        &dt.kernel("class_embedding_forward"),
        Launch::linear(n * width, BLOCK),
        kernel_args![labels, table, emb, n, width],
        || format!("n={n} width={width}"),
    )
}

/// dtable[labels[i], :] += demb[i, :] (a parameter gradient: accumulated).
/// dtable: (classes, width), demb: (n, width). Each thread owns one dtable element and walks the
/// batch in order: deterministic, no atomics, the CPU's order of additions.
#[allow(clippy::too_many_arguments)]
pub fn class_embedding_backward(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    classes: usize,
    width: usize,
    labels: DevPtr,
    demb: DevPtr,
    dtable: DevPtr,
) -> CudaResult<()> {
    gpu.launch(
        &dt.kernel("class_embedding_backward"),
        Launch::linear(classes * width, BLOCK),
        kernel_args![labels, demb, dtable, n, classes, width],
        || format!("n={n} classes={classes} width={width}"),
    )
}
