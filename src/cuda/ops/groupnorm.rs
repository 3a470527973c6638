//! Launches of kernels/groupnorm.cu: group normalisation with per-channel affine. x, y, dy, dx
//! are stored in the activation precision `dt`; γ, β, their gradients, the statistics and the
//! scratch are fp32, and every sum is fp32. The kernels that read no activation exist only as
//! `_f32`. CPU twin: [`crate::ops::groupnorm`] (same formulas; it accumulates in f64).
//!
//! Work is cut into chunks of at most `CHUNK` elements so one block never walks a huge group
//! alone: a group that fits in one chunk is one block; a larger one is split and its per-chunk
//! partial sums are merged by a second kernel, in chunk order. No atomics, and the split depends
//! only on the shape (not on the GPU's size), so results are bitwise reproducible run to run.
//!
//! Scratch ([`group_norm_scratch_len`] f32, caller-owned, contents irrelevant between calls):
//!   forward, groups of more than CHUNK elements: (B·G, chunks, 2) per-chunk (mean, M2);
//!   backward: (B·C, chunks of H·W, 2) per-(image, channel, chunk) (Σ dy, Σ dy·x̂), then
//!             (B·G, 2) per-group (m1, m2).

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::ops::groupnorm::GroupNormShape;
use crate::precision::Precision;

/// Most elements one block reduces: 256 threads × 64 elements. A 32-group norm of 128 channels
/// stays one block per group up to 64×64 maps and splits 4 ways at 128×128.
const CHUNK: usize = 16_384;

/// Blocks are launched for every work item up to this count, beyond which they loop (grid
/// stride). Far more than any GPU holds at once.
const MAX_BLOCKS: usize = 1 << 20;

const F32: u64 = std::mem::size_of::<f32>() as u64;

/// Threads of a block that reduces or sweeps `len` elements: a multiple of 32 (the kernels'
/// block reduction needs whole warps), no more than the work, at most 256.
fn threads_for(len: usize) -> u32 {
    len.next_multiple_of(32).clamp(32, 256) as u32
}

/// `blocks` work items of `len` elements each, one block per item.
fn per_item(blocks: usize, len: usize) -> Launch {
    Launch::blocks(blocks.min(MAX_BLOCKS), threads_for(len))
}

fn u32_of(v: usize, what: &str, g: &GroupNormShape) -> u32 {
    u32::try_from(v).unwrap_or_else(|_| panic!("group_norm: {what} = {v} exceeds 32 bits ({g:?})"))
}

/// The sizes every launch derives from the shape.
struct Dims {
    batch: usize,
    channels: usize,
    groups: usize,
    /// Channels per group.
    cg: usize,
    hw: usize,
    /// Elements per group, cg·hw.
    n: usize,
    /// Chunks per group (forward) and per (image, channel) plane (backward).
    group_chunks: usize,
    plane_chunks: usize,
}

impl Dims {
    fn of(g: &GroupNormShape) -> Self {
        let (batch, channels, groups) = (g.x.n, g.x.c, g.groups);
        let (hw, n) = (g.x.hw(), g.group_len());
        Self {
            batch,
            channels,
            groups,
            cg: channels / groups,
            hw,
            n,
            group_chunks: n.div_ceil(CHUNK),
            plane_chunks: hw.div_ceil(CHUNK),
        }
    }

    fn groups_total(&self) -> usize {
        self.batch * self.groups
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    fn forward_scratch(&self) -> usize {
        if self.group_chunks > 1 {
            2 * self.groups_total() * self.group_chunks
        } else {
            0
        }
    }

    /// Per-plane partials, then the per-group coefficients right after them.
    fn backward_partials(&self) -> usize {
        2 * self.planes() * self.plane_chunks
    }

    fn backward_scratch(&self) -> usize {
        self.backward_partials() + 2 * self.groups_total()
    }
}

/// f32 elements of scratch that [`group_norm_forward`] and [`group_norm_backward`] need (one
/// buffer serves both). Zero only for an empty tensor.
pub fn group_norm_scratch_len(g: &GroupNormShape) -> usize {
    let d = Dims::of(g);
    if d.n == 0 || d.batch == 0 {
        return 0;
    }
    d.forward_scratch().max(d.backward_scratch())
}

/// y = GroupNorm(x)·γ + β, written; mean and rstd (B, G) written for the backward.
/// x, y: (B, C, H, W)  gamma, beta: (C)  scratch: [`group_norm_scratch_len`] f32.
/// CPU twin: [`crate::ops::groupnorm::group_norm_forward`] with an affine.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_forward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    x: DevPtr,
    gamma: DevPtr,
    beta: DevPtr,
    y: DevPtr,
    mean: DevPtr,
    rstd: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    forward(gpu, dt, g, false, x, gamma, beta, y, mean, rstd, scratch)
}

/// a = silu(GroupNorm(x)·γ + β), written in the norm's own passes (the normalised x is never
/// stored); mean and rstd written as by [`group_norm_forward`]. The fused twin of
/// [`crate::backend::Backend::group_norm_silu_forward`]'s default (group norm, then SiLU).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_forward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    x: DevPtr,
    gamma: DevPtr,
    beta: DevPtr,
    a: DevPtr,
    mean: DevPtr,
    rstd: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    forward(gpu, dt, g, true, x, gamma, beta, a, mean, rstd, scratch)
}

/// The forward passes, writing y or (`silu`) silu(y).
#[allow(clippy::too_many_arguments)]
fn forward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    silu: bool,
    x: DevPtr,
    gamma: DevPtr,
    beta: DevPtr,
    y: DevPtr,
    mean: DevPtr,
    rstd: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    let name = |op: &str| match silu {
        true => dt.kernel(&op.replace("group_norm_", "group_norm_silu_")),
        false => dt.kernel(op),
    };
    let d = Dims::of(g);
    if d.n == 0 || d.batch == 0 {
        return Ok(());
    }
    let eps = g.eps as f32;
    let shapes = || format!("{g:?}");
    let (groups_total, planes) = (d.groups_total(), d.planes());
    let (groups, channels, cg) = (
        u32_of(d.groups, "groups", g),
        u32_of(d.channels, "channels", g),
        u32_of(d.cg, "channels per group", g),
    );
    if d.group_chunks == 1 {
        // n <= CHUNK, so hw fits in 32 bits.
        let hw = u32_of(d.hw, "H·W", g);
        return gpu.launch(
            &name("group_norm_forward"),
            per_item(groups_total, d.n),
            kernel_args![
                x,
                gamma,
                beta,
                y,
                mean,
                rstd,
                groups_total,
                groups,
                cg,
                hw,
                eps
            ],
            shapes,
        );
    }
    let (n, chunk, chunks) = (d.n, CHUNK, u32_of(d.group_chunks, "chunks", g));
    gpu.launch(
        &dt.kernel("group_norm_partial_stats"),
        per_item(groups_total * d.group_chunks, CHUNK),
        kernel_args![x, scratch, groups_total, n, chunk, chunks],
        shapes,
    )?;
    gpu.launch(
        "group_norm_combine_stats_f32",
        Launch::linear(groups_total, 128),
        kernel_args![scratch, mean, rstd, groups_total, n, chunk, chunks, eps],
        shapes,
    )?;
    let hw = d.hw;
    gpu.launch(
        &name("group_norm_apply"),
        per_item(planes, hw),
        kernel_args![x, gamma, beta, mean, rstd, y, planes, channels, cg, groups, hw],
        shapes,
    )
}

/// Backward of [`group_norm_forward`]: dx written; dgamma, dbeta (C) accumulate (`+=`).
/// x, dy, dx: (B, C, H, W)  gamma: (C)  mean, rstd: (B, G) from the forward.
/// CPU twin: [`crate::ops::groupnorm::group_norm_backward`] with an affine.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    x: DevPtr,
    gamma: DevPtr,
    mean: DevPtr,
    rstd: DevPtr,
    dy: DevPtr,
    dx: DevPtr,
    dgamma: DevPtr,
    dbeta: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    let (dx_grads, params) = ((dy, dx, dgamma, dbeta), (gamma, None));
    backward(gpu, dt, g, x, params, mean, rstd, dx_grads, scratch)
}

/// Backward of [`group_norm_silu_forward`] from da: dx written; dgamma, dbeta accumulate. The
/// normalised x and dy = da·silu'(y) are recomputed inside the two passes over the activations
/// (hence β), so neither y nor dy is ever stored.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    x: DevPtr,
    gamma: DevPtr,
    beta: DevPtr,
    mean: DevPtr,
    rstd: DevPtr,
    da: DevPtr,
    dx: DevPtr,
    dgamma: DevPtr,
    dbeta: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    let (dx_grads, params) = ((da, dx, dgamma, dbeta), (gamma, Some(beta)));
    backward(gpu, dt, g, x, params, mean, rstd, dx_grads, scratch)
}

/// The backward passes; `beta` given means the fused SiLU variant, whose `dy` is da.
#[allow(clippy::too_many_arguments)]
fn backward(
    gpu: &Gpu,
    dt: Precision,
    g: &GroupNormShape,
    x: DevPtr,
    (gamma, beta): (DevPtr, Option<DevPtr>),
    mean: DevPtr,
    rstd: DevPtr,
    (dy, dx, dgamma, dbeta): (DevPtr, DevPtr, DevPtr, DevPtr),
    scratch: DevPtr,
) -> CudaResult<()> {
    let d = Dims::of(g);
    if d.n == 0 || d.batch == 0 {
        return Ok(());
    }
    let shapes = || format!("{g:?}");
    let (groups_total, planes, batch, hw, n) = (d.groups_total(), d.planes(), d.batch, d.hw, d.n);
    let (groups, channels, cg) = (
        u32_of(d.groups, "groups", g),
        u32_of(d.channels, "channels", g),
        u32_of(d.cg, "channels per group", g),
    );
    let (chunk, chunks) = (CHUNK, u32_of(d.plane_chunks, "chunks", g));
    u32_of(d.cg * d.plane_chunks, "channels per group × chunks", g);
    let partials = scratch;
    // (B·G, 2) (m1, m2), right after the (B·C, chunks, 2) partials.
    let coef = scratch + d.backward_partials() as u64 * F32;

    let sums_launch = per_item(planes * d.plane_chunks, hw.min(CHUNK));
    match beta {
        None => gpu.launch(
            &dt.kernel("group_norm_backward_sums"),
            sums_launch,
            kernel_args![
                x, dy, mean, rstd, partials, planes, channels, cg, groups, hw, chunk, chunks
            ],
            shapes,
        )?,
        Some(beta) => gpu.launch(
            &dt.kernel("group_norm_silu_backward_sums"),
            sums_launch,
            kernel_args![
                x, dy, gamma, beta, mean, rstd, partials, planes, channels, cg, groups, hw, chunk,
                chunks
            ],
            shapes,
        )?,
    }
    gpu.launch(
        "group_norm_backward_coeffs_f32",
        per_item(groups_total, d.cg * d.plane_chunks),
        kernel_args![
            gamma,
            partials,
            coef,
            groups_total,
            channels,
            cg,
            groups,
            chunks,
            n
        ],
        shapes,
    )?;
    gpu.launch(
        "group_norm_param_grads_f32",
        per_item(d.channels, batch * d.plane_chunks),
        kernel_args![partials, dgamma, dbeta, batch, channels, chunks],
        shapes,
    )?;
    match beta {
        None => gpu.launch(
            &dt.kernel("group_norm_backward_dx"),
            per_item(planes, hw),
            kernel_args![x, gamma, mean, rstd, coef, dy, dx, planes, channels, cg, groups, hw],
            shapes,
        ),
        Some(beta) => gpu.launch(
            &dt.kernel("group_norm_silu_backward_dx"),
            per_item(planes, hw),
            kernel_args![
                x, gamma, beta, mean, rstd, coef, dy, dx, planes, channels, cg, groups, hw
            ],
            shapes,
        ),
    }
}
