//! The 3×3, stride-1, padding-1 convolution (every ResNet conv of the UNet) as nine shifted GEMMs
//! over a zero-padded NHWC buffer, with no im2col buffer. Launches of kernels/conv_nhwc.cu plus
//! the cuBLAS GEMMs. [`super::conv2d`] (im2col + GEMM) stays the reference path and handles every
//! other geometry. CPU twin: [`crate::ops::conv2d`].
//!
//! # The padded row space
//! A chunk of `c` images x (c, C_in, H, W) is copied into Xp (c, H+2, W+2, C_in): channels
//! contiguous, a one-pixel zero border. Flattened, row r = (n·(H+2) + y')·(W+2) + x' holds the
//! C_in channels of padded pixel (n, y', x'); there are R_p = c·(H+2)·(W+2) rows. The output
//! pixel (n, y, x) is put at row r(n, y, x) = (n·(H+2) + y)·(W+2) + x, where its 3×3 window has
//! its top-left tap, so tap s = 3·ky + kx of that window is row r + shift_s with
//!   shift_s = ky·(W+2) + kx,   shift_0 = 0 … shift_8 = M = 2·(W+2) + 2.
//! Every output is then a sum of nine *row-shifted* copies of one matrix:
//!   forward   Acc (R, C_out) = Σ_s Xp[shift_s .. shift_s + R] (R, C_in) · W_sᵀ (C_in, C_out)
//! with R = R_p − M rows, so that every read stays inside Xp (the last valid output row is
//! exactly R − 1). Each term is a plain row-major GEMM whose A operand is Xp advanced by
//! shift_s rows (ld = C_in): nine GEMMs accumulating into Acc (β = 0, then 1). Rows whose (y, x)
//! is not a pixel (x ≥ W or y ≥ H: 2·(H+W+2) per image) are garbage; the crop drops them.
//! Acc is fp32 in every precision; one kernel crops it to y (c, C_out, H, W), adds the bias in
//! fp32 and rounds once to the storage type.
//!
//! # Backward
//! dY (c, C_out, H, W) is copied into dYz (c, H+2, W+2, C_out) by the same padding kernel. Its
//! zero border does all the masking:
//! - the forward row space's dY is the view dYp = dYz[M/2 ..] (shifted by the centre tap,
//!   shift_4 = (W+2) + 1): row r of it is dY at pixel (y, x) of row r, and every garbage row
//!   lands on the border, so it is zero;
//! - dW_s (C_out, C_in) = dYpᵀ (C_out, R) · Xp[shift_s ..] (R, C_in): a GEMM with the big
//!   reduction K = R, A/B in the storage type, C fp32. The three taps of one kernel row ky are
//!   one strided-batched GEMM (B advances one row, C_in elements, per kx), so three launches per
//!   chunk; chunks after the first accumulate (β = 1) into the fp32 scratch dWt (9, C_out, C_in),
//!   which one kernel finally adds into dW (C_out, C_in, 3, 3) (`+=`: a parameter gradient).
//! - dx is the same "same" convolution of dY with the kernel flipped (s → 8 − s) and transposed:
//!   dx[y, x] = Σ_{ky,kx} W[:, :, ky, kx]ᵀ · dY[y + 1 − ky, x + 1 − kx], and dY[y+1−ky, x+1−kx]
//!   is dYz row r(y, x) + shift_{8−s}. So dAcc (R, C_in) = Σ_s dYz[shift_{8−s} ..] (R, C_out) ·
//!   W_s (C_out, C_in): nine GEMMs as in the forward, written (β = 0 first) rather than scattered
//!   into shifted views of a zeroed dXp: no memset, no read-modify-write of a padded dXp, and
//!   the gathered rows that fall outside dY read the zero border. The crop writes dx (no bias).
//! - db += Σ dy per channel: [`super::conv2d::channel_sum_accumulate`], as the im2col path.
//!
//! # Weight layout
//! The GEMMs read the weight tap-major, Wt (9, C_out, C_in) with Wt_s = W[:, :, ky, kx]: each
//! tap's slice is the (C_out, C_in) matrix of a 1×1 convolution. The forward reads it transposed
//! (cuBLAS's T flag, no extra pass), dx reads it as stored, and the dW GEMM (C = dYᵀ·X, a
//! (C_out, C_in) product) writes the same layout in fp32, so one small repack kernel (a pure copy
//! moving the tap index to the front of PyTorch's (C_out, C_in, 3, 3)) and its accumulating
//! inverse cover both directions. ((9, C_in, C_out) would swap which GEMMs take the T flag, at
//! the same cost; reading W in place is impossible: a tap's (C_out, C_in) slice has column
//! stride 9, which no GEMM operand may have.)
//!
//! # Memory traffic (bytes per forward), and why chunks are sized for L2
//! With b the storage bytes, P = N·H·W pixels, R ≈ N·(H+2)·(W+2) padded rows, ignoring the
//! weights (9·C_out·C_in, under 1 MB):
//!   im2col:   b·P·(19·C_in + 3·C_out)   x read; col written and read 9×; y written by the GEMM,
//!                                       then read and written by the bias add
//!   shifted, every tap streaming its operands from DRAM:
//!             b·C_in·(P + R) + 9·b·C_in·R + 4·C_out·R·(1 + 2·8) + (4 + b)·C_out·P
//!             (padding; A of 9 taps; the fp32 accumulator written, then read and written 8×;
//!             the crop reading it once and writing y)
//!   shifted, taps 2…9 of a chunk hitting L2 (Xp and Acc of the chunk resident):
//!             b·C_in·(P + R) + b·C_in·R + 4·C_out·R + (4 + b)·C_out·P
//! At ddpm-cifar10's first level in bf16 (N = 128, C_in = C_out = 128, 32×32: P = 131,072,
//! R = 147,898): im2col moves 738 MB; the shifted GEMMs 1,800 MB if nothing stays in L2, and
//! 286 MB if it does. (Backward, same level: im2col b·P·(38·C_in + 3·C_out) = 1.38 GB; shifted
//! ≈ 0.43–0.47 GB with L2 reuse, ≈ 2.4 GB without.) The nine GEMMs read the same Xp and
//! read-modify-write the same Acc, so the design only pays off when a chunk's working set stays
//! in L2 between them: the wrappers take at most [`l2_chunk_images`] images per chunk (about
//! 24 MiB of Xp + Acc: 28 images at that level; an H100 has 50 MB of L2), even when the
//! workspace would hold more. That cap is a design estimate, never timed (no GPU was available
//! when this was written); measure it against [`super::conv2d`] on an H100 before relying on it.
//! The GEMM itself: 2·P·C_out·9·C_in = 38.7 GFLOP at that level, ≈ 40–60 µs of tensor-core
//! time, against ≈ 245 µs for im2col's 738 MB at 3 TB/s.
//!
//! # Precision
//! Xp, dYz and the repacked weight are in the storage type `dt` (pure copies: no rounding);
//! both accumulators, the dW scratch, the bias, dW and db are fp32. So y and dx are rounded to
//! `dt` once (the im2col path rounds twice: its GEMM output, then the bias add / col2im), and
//! nine partial sums never pass through bf16 — at the price of fp32 accumulator traffic (in the
//! storage type it would be 1.12 GB streaming / 214 MB resident at the level above, with nine
//! roundings of the partial sums).
//!
//! # Workspace
//! `ws_len` f32 slots, laid out (each part 256-byte aligned) as Wt | Xp | Acc | dYz | dWt for a
//! chunk of images; the forward uses the first three. [`workspace_len`] is the minimum (one image
//! per chunk); [`workspace_for`] sizes a chunk of several. Every part is fully written before it
//! is read, so the workspace needs no clearing. Determinism: the same launches in the same order
//! for the same `ws_len`; dW is summed chunk after chunk, so another chunking changes it by
//! rounding only.
//! Everything runs on the GPU's one stream, so a launch sees every earlier launch finished.

use super::conv2d::{channel_sum_accumulate, channel_sum_scratch_len};
use crate::cuda::{CudaResult, DevPtr, Gpu, Launch, Mat};
use crate::kernel_args;
use crate::ops::conv2d::{Conv2dShape, Padding};
use crate::precision::Precision;

/// Block of the tiled transposing kernels (padding, crop): 32 × 8 threads over 32 × 32 tiles.
const TILE_BLOCK: (u32, u32, u32) = (32, 8, 1);

/// Threads of the grid-stride weight kernels.
const BLOCK: u32 = 256;

/// Grid-stride cap of the tiled launches.
const MAX_BLOCKS: usize = 65_535 * 8;

/// Alignment of each workspace part, in f32 slots (256 bytes, what cuBLAS likes best).
const ALIGN_SLOTS: usize = 64;

/// Bytes of Xp + accumulator (or their backward counterparts) one chunk may occupy, so that the
/// nine tap GEMMs of a chunk find them in L2 (an H100 has 50 MB). An untimed design estimate:
/// see the module doc.
pub const L2_CHUNK_BYTES: usize = 24 << 20;

/// Whether the shifted-GEMM path handles this convolution (3×3, stride 1, padding 1 all round).
pub fn applies(g: &Conv2dShape) -> bool {
    g.kernel == (3, 3) && g.stride == (1, 1) && g.pad == Padding::same(1)
}

/// `ptr` advanced by `elems` elements of `dt`.
fn at(dt: Precision, ptr: DevPtr, elems: usize) -> DevPtr {
    ptr + (elems * dt.bytes()) as u64
}

/// f32 slots holding `elems` elements of `dt`, rounded up to [`ALIGN_SLOTS`].
fn slots(elems: usize, dt: Precision) -> usize {
    (elems * dt.bytes())
        .div_ceil(4)
        .next_multiple_of(ALIGN_SLOTS)
}

/// Padded pixels of one image, (H+2)·(W+2).
fn padded_plane(g: &Conv2dShape) -> usize {
    (g.input.h + 2) * (g.input.w + 2)
}

/// Row shift of tap s = 3·ky + kx: ky·(W+2) + kx.
fn shift(g: &Conv2dShape, s: usize) -> usize {
    (s / 3) * (g.input.w + 2) + s % 3
}

/// Rows of the accumulators of a chunk of `images` images: R = images·(H+2)·(W+2) − shift_8,
/// one past the last real output pixel, so every tap's rows stay inside the padded buffer.
fn acc_rows(g: &Conv2dShape, images: usize) -> usize {
    images * padded_plane(g) - shift(g, 8)
}

/// Where each part lies in the workspace (f32 slots from its start) for a chunk of `images`.
struct Layout {
    /// Wt (9, C_out, C_in) in `dt`.
    taps: usize,
    /// Xp (images, H+2, W+2, C_in) in `dt`.
    xp: usize,
    /// Acc (R, max(C_in, C_out)) fp32: y's in the forward, dx's in the backward.
    acc: usize,
    /// End of the forward's parts.
    forward_end: usize,
    /// dYz (images, H+2, W+2, C_out) in `dt`.
    dyz: usize,
    /// dWt (9, C_out, C_in) fp32.
    dw_taps: usize,
    /// End of the backward's parts.
    end: usize,
}

impl Layout {
    fn new(g: &Conv2dShape, dt: Precision, images: usize) -> Self {
        let (c_in, c_out) = (g.input.c, g.c_out);
        let padded_rows = images * padded_plane(g);
        let taps = 0;
        let xp = taps + slots(9 * c_out * c_in, dt);
        let acc = xp + slots(padded_rows * c_in, dt);
        let forward_end = acc + slots(acc_rows(g, images) * c_in.max(c_out), Precision::Fp32);
        let dyz = forward_end;
        let dw_taps = dyz + slots(padded_rows * c_out, dt);
        let end = dw_taps + slots(9 * c_out * c_in, Precision::Fp32);
        Self {
            taps,
            xp,
            acc,
            forward_end,
            dyz,
            dw_taps,
            end,
        }
    }
}

/// `ws` advanced by `slots` f32 slots.
fn part(ws: DevPtr, slots: usize) -> DevPtr {
    ws + (slots * 4) as u64
}

/// Minimum f32 workspace of [`conv3x3_forward`] and [`conv3x3_backward`] for `g` in `dt`: the
/// parts of one image per chunk (see the module doc). More lets a chunk hold more images.
pub fn workspace_len(g: &Conv2dShape, dt: Precision) -> usize {
    workspace_for(g, dt, 1)
}

/// f32 workspace with which both passes take `images` images per chunk (at least one; the
/// wrappers still take no more than [`l2_chunk_images`]), and the bias gradient's partial sums.
pub fn workspace_for(g: &Conv2dShape, dt: Precision, images: usize) -> usize {
    let bias = channel_sum_scratch_len(g.input.n, g.c_out, g.output().hw());
    Layout::new(g, dt, images.max(1)).end.max(bias)
}

/// Images per chunk whose tap-GEMM working set (Xp + fp32 Acc in the forward; dYz + Acc or
/// Xp + dYz in the backward) fits in [`L2_CHUNK_BYTES`]: at least one, at most N.
pub fn l2_chunk_images(g: &Conv2dShape, dt: Precision) -> usize {
    let (c_in, c_out, b) = (g.input.c, g.c_out, dt.bytes());
    let per_row = (c_in * b + c_out * 4)
        .max(c_out * b + c_in * 4)
        .max((c_in + c_out) * b);
    let per_image = padded_plane(g) * per_row;
    (L2_CHUNK_BYTES / per_image).clamp(1, g.input.n.max(1))
}

/// Images per chunk: as many as `ws_len` holds for the pass (its parts end at `end`), capped by
/// [`l2_chunk_images`]; panics if not even one image fits.
fn chunk_images(
    g: &Conv2dShape,
    dt: Precision,
    ws_len: usize,
    end: impl Fn(&Layout) -> usize,
) -> usize {
    let need = |images| end(&Layout::new(g, dt, images));
    assert!(
        need(1) <= ws_len,
        "conv3x3 (shifted GEMMs): workspace of {ws_len} f32 is smaller than one image's \
         {} ({g:?}, {dt})",
        need(1)
    );
    // `need` grows with the images: the largest that fits, by bisection.
    let (mut lo, mut hi) = (1, l2_chunk_images(g, dt));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if need(mid) <= ws_len {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

fn check(g: &Conv2dShape) {
    assert!(
        applies(g),
        "conv3x3 (shifted GEMMs) handles 3×3 kernels with stride 1 and padding 1 only: {g:?}"
    );
}

/// Blocks of a tiled launch over `tiles` 32 × 32 tiles.
fn tiled(tiles: usize) -> Launch {
    Launch::grid((tiles.clamp(1, MAX_BLOCKS) as u32, 1, 1), TILE_BLOCK)
}

/// dst (images, H+2, W+2, channels) = src (images, channels, H, W) with a zero border, both `dt`.
#[allow(clippy::too_many_arguments)]
fn pad(
    gpu: &Gpu,
    dt: Precision,
    src: DevPtr,
    dst: DevPtr,
    images: usize,
    channels: usize,
    h: usize,
    w: usize,
) -> CudaResult<()> {
    let tiles = images * (h + 2) * (w + 2).div_ceil(32) * channels.div_ceil(32);
    gpu.launch(
        &dt.kernel("nchw_to_padded_nhwc"),
        tiled(tiles),
        kernel_args![src, dst, images, channels, h, w],
        || format!("images={images} channels={channels} h={h} w={w}"),
    )
}

/// dst (images, channels, H, W) in `dt` = the pixel rows of acc (R, channels) fp32 in the
/// padded row space (+ bias (channels) fp32), written.
#[allow(clippy::too_many_arguments)]
fn crop(
    gpu: &Gpu,
    dt: Precision,
    acc: DevPtr,
    bias: Option<DevPtr>,
    dst: DevPtr,
    images: usize,
    channels: usize,
    h: usize,
    w: usize,
) -> CudaResult<()> {
    let tiles = images * h * w.div_ceil(32) * channels.div_ceil(32);
    let bias: DevPtr = bias.unwrap_or(0);
    gpu.launch(
        &dt.kernel("padded_rows_to_nchw"),
        tiled(tiles),
        kernel_args![acc, bias, dst, images, channels, h, w],
        || format!("images={images} channels={channels} h={h} w={w}"),
    )
}

/// Wt (9, C_out, C_in) = w (C_out, C_in, 3, 3) with the tap index moved to the front, in `dt`.
fn weight_to_taps(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    w: DevPtr,
    taps: DevPtr,
) -> CudaResult<()> {
    let pairs = g.c_out * g.input.c;
    gpu.launch(
        &dt.kernel("conv3x3_weight_to_taps"),
        Launch::linear(9 * pairs, BLOCK),
        kernel_args![w, taps, pairs],
        || format!("{g:?}"),
    )
}

/// dw (C_out, C_in, 3, 3) += dWt (9, C_out, C_in), both fp32.
fn taps_grad_accumulate(gpu: &Gpu, g: &Conv2dShape, dw_taps: DevPtr, dw: DevPtr) -> CudaResult<()> {
    let pairs = g.c_out * g.input.c;
    gpu.launch(
        "conv3x3_taps_grad_accumulate_f32",
        Launch::linear(9 * pairs, BLOCK),
        kernel_args![dw_taps, dw, pairs],
        || format!("{g:?}"),
    )
}

/// y = conv3x3(x, W) + b, written, as nine shifted GEMMs (see the module doc).
/// x: (N, C_in, H, W)  w: (C_out, C_in, 3, 3), both `dt` (w: the copy the GEMMs read)
/// b: (C_out) fp32  y: (N, C_out, H, W) `dt`  ws: `ws_len` ≥ [`workspace_len`] f32 slots.
/// Panics unless [`applies`]`(g)`. CPU twin: [`crate::ops::conv2d::conv2d_forward`]; the im2col
/// path [`super::conv2d::conv2d_forward`] computes the same.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_forward(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    x: DevPtr,
    w: DevPtr,
    b: Option<DevPtr>,
    y: DevPtr,
    ws: DevPtr,
    ws_len: usize,
) -> CudaResult<()> {
    const OP: &str = "conv3x3_forward";
    check(g);
    let batch = g.input.n;
    if batch == 0 {
        return Ok(());
    }
    let (c_in, c_out, h, wd) = (g.input.c, g.c_out, g.input.h, g.input.w);
    let hw = h * wd;
    let chunk = chunk_images(g, dt, ws_len, |l| l.forward_end);
    let l = Layout::new(g, dt, chunk);
    let (taps, xp, acc) = (part(ws, l.taps), part(ws, l.xp), part(ws, l.acc));
    weight_to_taps(gpu, dt, g, w, taps)?;
    for n0 in (0..batch).step_by(chunk) {
        let images = chunk.min(batch - n0);
        let rows = acc_rows(g, images);
        pad(gpu, dt, at(dt, x, n0 * c_in * hw), xp, images, c_in, h, wd)?;
        // Acc (R, C_out) (+)= Xp[shift_s ..] (R, C_in) · Wt[s]ᵀ (C_in, C_out), fp32.
        for s in 0..9 {
            gpu.gemm(
                OP,
                (rows, c_out, c_in),
                1.0,
                Mat::new(at(dt, xp, shift(g, s) * c_in), c_in).of(dt),
                Mat::new(at(dt, taps, s * c_out * c_in), c_in).of(dt).t(),
                if s == 0 { 0.0 } else { 1.0 },
                Mat::new(acc, c_out),
                1,
            )?;
        }
        crop(
            gpu,
            dt,
            acc,
            b,
            at(dt, y, n0 * c_out * hw),
            images,
            c_out,
            h,
            wd,
        )?;
    }
    Ok(())
}

/// Backward of [`conv3x3_forward`]: dx (when asked for) written; dw (C_out, C_in, 3, 3) and db
/// (C_out), fp32, accumulate (`+=`). dy: (N, C_out, H, W) `dt`; x, w, ws as in the forward
/// (x is padded again: the forward saves nothing). CPU twin:
/// [`crate::ops::conv2d::conv2d_backward`]; the im2col path [`super::conv2d::conv2d_backward`]
/// computes the same.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_backward(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    x: DevPtr,
    w: DevPtr,
    dy: DevPtr,
    dx: Option<DevPtr>,
    dw: DevPtr,
    db: Option<DevPtr>,
    ws: DevPtr,
    ws_len: usize,
) -> CudaResult<()> {
    const OP: &str = "conv3x3_backward";
    check(g);
    let batch = g.input.n;
    if batch == 0 {
        return Ok(());
    }
    let (c_in, c_out, h, wd) = (g.input.c, g.c_out, g.input.h, g.input.w);
    let (hw, pairs) = (h * wd, c_out * c_in);
    let chunk = chunk_images(g, dt, ws_len, |l| l.end);
    let l = Layout::new(g, dt, chunk);
    let (taps, xp, acc) = (part(ws, l.taps), part(ws, l.xp), part(ws, l.acc));
    let (dyz, dw_taps) = (part(ws, l.dyz), part(ws, l.dw_taps));
    if dx.is_some() {
        weight_to_taps(gpu, dt, g, w, taps)?;
    }
    // dY in the forward's row space: dYz from the centre tap on (garbage rows read the border).
    let dyp = at(dt, dyz, shift(g, 4) * c_out);
    for (chunk_no, n0) in (0..batch).step_by(chunk).enumerate() {
        let images = chunk.min(batch - n0);
        let rows = acc_rows(g, images);
        pad(gpu, dt, at(dt, x, n0 * c_in * hw), xp, images, c_in, h, wd)?;
        pad(
            gpu,
            dt,
            at(dt, dy, n0 * c_out * hw),
            dyz,
            images,
            c_out,
            h,
            wd,
        )?;
        // dWt[3·ky + kx] (C_out, C_in) (+)= dYpᵀ (C_out, R) · Xp[shift_(3·ky+kx) ..] (R, C_in):
        // one GEMM batched over kx per kernel row (B one row further, C one tap further).
        let beta = if chunk_no == 0 { 0.0 } else { 1.0 };
        for ky in 0..3 {
            gpu.gemm(
                OP,
                (c_out, c_in, rows),
                1.0,
                Mat::new(dyp, c_out).of(dt).t(),
                Mat::new(at(dt, xp, shift(g, 3 * ky) * c_in), c_in)
                    .of(dt)
                    .stride(c_in),
                beta,
                Mat::new(at(Precision::Fp32, dw_taps, 3 * ky * pairs), c_in).stride(pairs),
                3,
            )?;
        }
        if let Some(dx) = dx {
            // dAcc (R, C_in) (+)= dYz[shift_(8−s) ..] (R, C_out) · Wt[s] (C_out, C_in), fp32.
            for s in 0..9 {
                gpu.gemm(
                    OP,
                    (rows, c_in, c_out),
                    1.0,
                    Mat::new(at(dt, dyz, shift(g, 8 - s) * c_out), c_out).of(dt),
                    Mat::new(at(dt, taps, s * pairs), c_in).of(dt),
                    if s == 0 { 0.0 } else { 1.0 },
                    Mat::new(acc, c_in),
                    1,
                )?;
            }
            crop(
                gpu,
                dt,
                acc,
                None,
                at(dt, dx, n0 * c_in * hw),
                images,
                c_in,
                h,
                wd,
            )?;
        }
    }
    taps_grad_accumulate(gpu, g, dw_taps, dw)?;
    if let Some(db) = db {
        // After the GEMMs on the same stream: the partial sums reuse the workspace.
        channel_sum_accumulate(gpu, dt, dy, db, batch, c_out, hw, (ws, ws_len))?;
    }
    Ok(())
}
