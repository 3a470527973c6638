//! Multi-head attention on the GPU, every tensor (probabilities and workspace included) stored
//! in the activation precision `dt`, the softmax and its backward computed in fp32: the matrix products are cuBLAS strided-batched GEMMs
//! (one call per head, batched over the B items), the row softmax and its backward are the
//! kernels in kernels/attention.cu. CPU twin: [`crate::ops::attention`] (same shapes, same saved
//! probabilities); the layout transposes' twin is [`crate::ops::layout`].
//!
//! q, k, v, out: (B, L, C), C = heads · d, head h owns channels [h·d, (h+1)·d). Seen from one
//! head, an item is an (L, d) matrix with leading dimension C starting at channel h·d, and items
//! are L·C apart — exactly a strided batch for [`Gpu::gemm`].
//!
//! A fused (flash-style) kernel would skip the (B, heads, L, L) probabilities; the backward here
//! needs them, so the forward writes them, as the CPU does.

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch, Mat};
use crate::kernel_args;
use crate::ops::attention::AttentionShape;
use crate::precision::Precision;
use crate::shape::Nchw;

/// Threads per block of the one-warp-per-row kernels (8 rows per block).
const ROW_BLOCK: u32 = 256;

/// `p` advanced by `elems` values of `dt`.
fn at(dt: Precision, p: DevPtr, elems: usize) -> DevPtr {
    p + (elems * dt.bytes()) as u64
}

/// Blocks for `rows` rows at one warp per row, capped (the kernels loop over rows).
fn row_blocks(rows: usize) -> usize {
    rows.div_ceil((ROW_BLOCK / 32) as usize).min(65_535 * 8)
}

/// 1/√d, rounded to f32 once, as the CPU's `scale::<f32>()`.
fn softmax_scale(g: &AttentionShape) -> f32 {
    (1.0 / (g.head_dim as f64).sqrt()) as f32
}

/// Elements (f32-sized slots, so any precision fits) of the workspace [`attention_backward`] needs: one head's dP (then dS) for every
/// item, (B, L, L). The heads are processed one after another and reuse it.
pub fn attention_workspace_len(g: &AttentionShape) -> usize {
    g.batch * g.len * g.len
}

/// Head `h` of a (B, L, C) tensor as the strided batch of (L, d) matrices.
fn head(dt: Precision, g: &AttentionShape, p: DevPtr, h: usize) -> Mat {
    let c = g.channels();
    Mat::new(at(dt, p, h * g.head_dim), c)
        .of(dt)
        .stride(g.len * c)
}

/// Head `h` of the probabilities (B, heads, L, L) as the strided batch of (L, L) matrices.
fn probs_head(dt: Precision, g: &AttentionShape, probs: DevPtr, h: usize) -> Mat {
    let l = g.len;
    Mat::new(at(dt, probs, h * l * l), l)
        .of(dt)
        .stride(g.heads * l * l)
}

/// The (B, L, L) workspace as a strided batch of (L, L) matrices.
fn ws_mat(dt: Precision, g: &AttentionShape, ws: DevPtr) -> Mat {
    Mat::new(ws, g.len).of(dt).stride(g.len * g.len)
}

/// out = softmax(Q Kᵀ / √d) V per head; writes `probs` (B, heads, L, L) for the backward.
/// q, k, v, out: (B, L, C). CPU twin: [`crate::ops::attention::attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    gpu: &Gpu,
    dt: Precision,
    g: &AttentionShape,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    out: DevPtr,
    probs: DevPtr,
) -> CudaResult<()> {
    let (b, l, d) = (g.batch, g.len, g.head_dim);
    if g.tokens_len() == 0 {
        return Ok(());
    }
    for h in 0..g.heads {
        // S_h = Q_h K_hᵀ   (L, d) · (d, L) → (L, L), unscaled: the softmax applies 1/√d.
        gpu.gemm(
            "attention_forward: S = Q Kᵀ",
            (l, l, d),
            1.0,
            head(dt, g, q, h),
            head(dt, g, k, h).t(),
            0.0,
            probs_head(dt, g, probs, h),
            b,
        )?;
    }
    // P = softmax(S / √d), every row of every head and item in one launch.
    let rows = b * g.heads * l;
    let scale = softmax_scale(g);
    gpu.launch(
        &dt.kernel("softmax_rows_forward"),
        Launch::blocks(row_blocks(rows), ROW_BLOCK),
        kernel_args![probs, rows, l, scale],
        || format!("{g:?}"),
    )?;
    for h in 0..g.heads {
        // O_h = P_h V_h   (L, L) · (L, d) → (L, d)
        gpu.gemm(
            "attention_forward: O = P V",
            (l, d, l),
            1.0,
            probs_head(dt, g, probs, h),
            head(dt, g, v, h),
            0.0,
            head(dt, g, out, h),
            b,
        )?;
    }
    Ok(())
}

/// Backward of [`attention_forward`]; dq, dk, dv (B, L, C) are written.
///   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d,  dQ = dS K,  dK = dSᵀ Q
/// (the CPU applies 1/√d after the dQ and dK products instead; the same up to rounding).
/// `ws`: [`attention_workspace_len`] f32 elements, overwritten.
/// CPU twin: [`crate::ops::attention::attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    dt: Precision,
    g: &AttentionShape,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    probs: DevPtr,
    dout: DevPtr,
    dq: DevPtr,
    dk: DevPtr,
    dv: DevPtr,
    ws: DevPtr,
) -> CudaResult<()> {
    let (b, l, d) = (g.batch, g.len, g.head_dim);
    if g.tokens_len() == 0 {
        return Ok(());
    }
    let rows = b * l;
    let scale = softmax_scale(g);
    let p_item_stride = g.heads * l * l;
    let ws_item_stride = l * l;
    for h in 0..g.heads {
        // dV_h = P_hᵀ dO_h   (L, L)ᵀ · (L, d) → (L, d)
        gpu.gemm(
            "attention_backward: dV = Pᵀ dO",
            (l, d, l),
            1.0,
            probs_head(dt, g, probs, h).t(),
            head(dt, g, dout, h),
            0.0,
            head(dt, g, dv, h),
            b,
        )?;
        // dP = dO_h V_hᵀ   (L, d) · (d, L) → (L, L), into the workspace
        gpu.gemm(
            "attention_backward: dP = dO Vᵀ",
            (l, l, d),
            1.0,
            head(dt, g, dout, h),
            head(dt, g, v, h).t(),
            0.0,
            ws_mat(dt, g, ws),
            b,
        )?;
        // dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d, in place over dP
        let p_h = at(dt, probs, h * l * l);
        gpu.launch(
            &dt.kernel("softmax_rows_backward"),
            Launch::blocks(row_blocks(rows), ROW_BLOCK),
            kernel_args![p_h, ws, rows, l, l, p_item_stride, ws_item_stride, scale],
            || format!("{g:?} head {h}"),
        )?;
        // dQ_h = dS K_h   (L, L) · (L, d) → (L, d)
        gpu.gemm(
            "attention_backward: dQ = dS K",
            (l, d, l),
            1.0,
            ws_mat(dt, g, ws),
            head(dt, g, k, h),
            0.0,
            head(dt, g, dq, h),
            b,
        )?;
        // dK_h = dSᵀ Q_h   (L, L)ᵀ · (L, d) → (L, d)
        gpu.gemm(
            "attention_backward: dK = dSᵀ Q",
            (l, d, l),
            1.0,
            ws_mat(dt, g, ws).t(),
            head(dt, g, q, h),
            0.0,
            head(dt, g, dk, h),
            b,
        )?;
    }
    Ok(())
}

/// Block of the tiled transposes: 32 × 8 threads walk a 32 × 32 tile.
const TRANSPOSE_BLOCK: (u32, u32, u32) = (32, 8, 1);

fn transpose(
    gpu: &Gpu,
    kernel: &str,
    shape: Nchw,
    src: DevPtr,
    dst: DevPtr,
    (rows, cols): (usize, usize),
) -> CudaResult<()> {
    if shape.is_empty() {
        return Ok(());
    }
    let tiles = shape.n * rows.div_ceil(32) * cols.div_ceil(32);
    let blocks = tiles.min(65_535 * 8) as u32;
    let (n, c, hw) = (shape.n, shape.c, shape.hw());
    gpu.launch(
        kernel,
        Launch::grid((blocks, 1, 1), TRANSPOSE_BLOCK),
        kernel_args![src, dst, n, c, hw],
        || format!("shape={shape}"),
    )
}

/// x: (N, C, H, W) → tokens: (N, L = H·W, C).   CPU twin: [`crate::ops::layout::nchw_to_tokens`].
/// Its backward is [`tokens_to_nchw`] on the gradient.
pub fn nchw_to_tokens(
    gpu: &Gpu,
    dt: Precision,
    shape: Nchw,
    x: DevPtr,
    tokens: DevPtr,
) -> CudaResult<()> {
    transpose(
        gpu,
        &dt.kernel("nchw_to_tokens"),
        shape,
        x,
        tokens,
        (shape.c, shape.hw()),
    )
}

/// tokens: (N, L = H·W, C) → x: (N, C, H, W).   CPU twin: [`crate::ops::layout::tokens_to_nchw`].
pub fn tokens_to_nchw(
    gpu: &Gpu,
    dt: Precision,
    shape: Nchw,
    tokens: DevPtr,
    x: DevPtr,
) -> CudaResult<()> {
    transpose(
        gpu,
        &dt.kernel("tokens_to_nchw"),
        shape,
        tokens,
        x,
        (shape.hw(), shape.c),
    )
}
