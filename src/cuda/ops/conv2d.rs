//! Launches of kernels/im2col.cu and the cuBLAS GEMMs of a 2-d convolution (im2col + GEMM),
//! plus the bias kernels that [`super::linear`] shares. CPU twin: [`crate::ops::conv2d`].
//! x, y, their gradients, the patch matrices and the weights the GEMMs read are stored in the
//! activation precision `dt`; the bias and the parameter gradients dW, db are fp32.
//!
//! With K = C_in·kh·kw and P = H_out·W_out, per chunk of images n0..n0+B:
//!   forward      Y_n (C_out, P) = W (C_out, K) · col_n (K, P) + b, one GEMM batched over the
//!                images (W shared: stride 0), col per image (images, K, P)
//!   backward     col (K, B·P): the chunk's patch matrices side by side, and dYt (C_out, B·P):
//!                dY's planes regrouped by channel (the 1×1 im2col of dY), so that
//!                dW (C_out, K) += dYt · colᵀ is one GEMM over all B·P positions (not one small
//!                GEMM per image), and dcol (K, B·P) = Wᵀ · dYt one more, dx = col2im(dcol)
//!   bias         db (C_out) += Σ dy in two fixed-order stages (per (image, channel) plane, then
//!                per channel over the planes), as group norm's backward
//! The patch matrices live in a caller-owned workspace of `ws_len` f32-sized slots (each holds 2
//! elements in bf16 or fp16; [`conv2d_workspace_len`] at least): the wrapper takes as many whole
//! images at a time as fit (a chunk; [`conv2d_workspace_for`] sizes one), so a bigger workspace
//! means fewer, larger launches.
//! Every sum has a fixed order, so results repeat bitwise for a given workspace (the planner's,
//! which depends only on the model and the batch size). db is the same for any workspace; dW's
//! sum over positions is grouped by chunk, so another workspace rounds it differently (within
//! fp32 rounding of the reference). A 1×1 stride-1 unpadded convolution skips the forward's
//! unrolling (col_n is x_n itself), and its dx is one GEMM batched over images into dx.
//! Everything runs on the GPU's one stream, so a launch sees every earlier launch finished.

use crate::cuda::{CudaError, CudaErrorKind, CudaResult, DevPtr, Gpu, Launch, Mat};
use crate::kernel_args;
use crate::ops::conv2d::{Conv2dShape, Padding};
use crate::precision::Precision;

/// Grid-stride cap of the one-block-per-row launches.
const MAX_BLOCKS: usize = 1 << 20;

/// Threads of the grid-stride elementwise launch (bias add).
const BLOCK: u32 = 256;

/// Threads of a block that sweeps `len` elements: whole warps (the block reduction needs them),
/// no more than the work, at most 256.
fn threads_for(len: usize) -> u32 {
    len.next_multiple_of(32).clamp(32, 256) as u32
}

/// `ptr` advanced by `elems` elements of `dt`.
fn at(dt: Precision, ptr: DevPtr, elems: usize) -> DevPtr {
    ptr + (elems * dt.bytes()) as u64
}

/// Elements of `dt` that fit in a workspace of `ws_len` f32 slots.
fn ws_elems(dt: Precision, ws_len: usize) -> usize {
    ws_len * 4 / dt.bytes()
}

/// The convolution's geometry as the kernels read it. Must match `struct ConvGeom` in
/// kernels/im2col.cu field for field (11 ints: 44 bytes, 4-byte aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    c_in: i32,
    h: i32,
    w: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    pad_top: i32,
    pad_left: i32,
    out_h: i32,
    out_w: i32,
}

const _: () = assert!(std::mem::size_of::<ConvGeom>() == 44);

impl ConvGeom {
    /// Panics if a plane (input or output) or one image's patch row count leaves `int` range:
    /// the kernels index within a plane in 32 bits.
    fn of(g: &Conv2dShape) -> Self {
        let out = g.output();
        let int = |v: usize, what: &str| {
            i32::try_from(v)
                .unwrap_or_else(|_| panic!("conv2d: {what} = {v} exceeds 32 bits ({g:?})"))
        };
        int(g.input.h * g.input.w, "H·W");
        int(out.h * out.w, "H_out·W_out");
        int(g.patch_len(), "C_in·kh·kw");
        Self {
            c_in: int(g.input.c, "C_in"),
            h: int(g.input.h, "H"),
            w: int(g.input.w, "W"),
            kh: int(g.kernel.0, "kh"),
            kw: int(g.kernel.1, "kw"),
            sh: int(g.stride.0, "stride"),
            sw: int(g.stride.1, "stride"),
            pad_top: int(g.pad.top, "padding"),
            pad_left: int(g.pad.left, "padding"),
            out_h: int(out.h, "H_out"),
            out_w: int(out.w, "W_out"),
        }
    }
}

/// A 1×1, stride-1, unpadded convolution: x_n (C_in, H·W) is already its patch matrix.
fn is_pointwise(g: &Conv2dShape) -> bool {
    g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == Padding::default()
}

/// Elements of one image's patch matrix, K·P.
fn col_len(g: &Conv2dShape) -> usize {
    g.patch_len() * g.output().hw()
}

/// Elements from one image's patch matrix to the next in the forward's workspace: K·P rounded
/// up to 64 (256 bytes), so every image's columns are aligned alike.
fn col_stride(g: &Conv2dShape) -> usize {
    col_len(g).next_multiple_of(64)
}

/// Elements of the forward's workspace for `images` images: their patch matrices one after the
/// other, [`col_stride`] apart; none for a pointwise convolution, which reads x directly.
fn forward_elems(g: &Conv2dShape, images: usize) -> usize {
    if is_pointwise(g) {
        0
    } else {
        (images.max(1) - 1) * col_stride(g) + col_len(g)
    }
}

/// Where dYt starts in the backward's workspace (elements), after col (K, images·P).
fn backward_dyt_offset(g: &Conv2dShape, images: usize) -> usize {
    (images * col_len(g)).next_multiple_of(64)
}

/// Elements of the backward's workspace for `images` images: col (K, images·P), then dYt
/// (C_out, images·P).
fn backward_elems(g: &Conv2dShape, images: usize) -> usize {
    backward_dyt_offset(g, images) + g.c_out * images * g.output().hw()
}

/// Minimum f32 workspace of [`conv2d_forward`] / [`conv2d_backward`]: one image per chunk, and
/// the bias gradient's partial sums. More lets the wrapper take several images per launch (see
/// [`conv2d_workspace_for`]).
pub fn conv2d_workspace_len(g: &Conv2dShape) -> usize {
    conv2d_workspace_for(g, 1)
}

/// f32 workspace with which the wrapper takes `images` images per chunk (at least one), in the
/// forward and the backward, in any precision (a bf16 or fp16 chunk then holds twice the
/// images).
pub fn conv2d_workspace_for(g: &Conv2dShape, images: usize) -> usize {
    let images = images.max(1);
    forward_elems(g, images)
        .max(backward_elems(g, images))
        .max(channel_sum_scratch_len(g.input.n, g.c_out, g.output().hw()))
}

/// The most images up to N (at least one) whose part of the workspace, `elems(images)`, fits in
/// `ws` elements; an error naming the need when not even one does.
fn chunk_images(
    g: &Conv2dShape,
    op: &str,
    ws: usize,
    elems: impl Fn(usize) -> usize,
) -> CudaResult<usize> {
    if elems(1) > ws {
        return Err(CudaError::new(
            CudaErrorKind::Driver,
            op,
            format!(
                "workspace of {ws} elements is smaller than one image needs ({}) for {g:?}",
                elems(1)
            ),
        ));
    }
    // elems grows with the images: the largest that fits, by bisection.
    let (mut lo, mut hi) = (1, g.input.n.max(1));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if elems(mid) <= ws {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// Where a chunk's patch matrices lie: image i's row r at `i·image_stride + r·row_ld`.
#[derive(Clone, Copy)]
struct ColLayout {
    image_stride: usize,
    row_ld: usize,
}

impl ColLayout {
    /// The forward's: image after image, [`col_stride`] apart, rows P long.
    fn per_image(g: &Conv2dShape) -> Self {
        Self {
            image_stride: col_stride(g),
            row_ld: g.output().hw(),
        }
    }

    /// The backward's: (K, images·P), image i in columns i·P onwards.
    fn side_by_side(g: &Conv2dShape, images: usize) -> Self {
        let p = g.output().hw();
        Self {
            image_stride: p,
            row_ld: images * p,
        }
    }
}

/// col = im2col(x) for `images` consecutive images starting at `x`, laid out as `layout`.
fn im2col(
    gpu: &Gpu,
    dt: Precision,
    geom: ConvGeom,
    x: DevPtr,
    col: DevPtr,
    images: usize,
    layout: ColLayout,
) -> CudaResult<()> {
    let rows = images * (geom.c_in * geom.kh * geom.kw) as usize;
    let ColLayout {
        image_stride,
        row_ld,
    } = layout;
    gpu.launch(
        &dt.kernel("im2col"),
        Launch::blocks(
            rows.min(MAX_BLOCKS),
            threads_for((geom.out_h * geom.out_w) as usize),
        ),
        kernel_args![x, col, geom, rows, image_stride, row_ld],
        || format!("images={images} {geom:?}"),
    )
}

/// dx (images, C_in, H, W) = col2im(col laid out as `layout`), written.
fn col2im(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    col: DevPtr,
    dx: DevPtr,
    images: usize,
    layout: ColLayout,
) -> CudaResult<()> {
    let geom = ConvGeom::of(g);
    let planes = images * g.input.c;
    let ColLayout {
        image_stride,
        row_ld,
    } = layout;
    gpu.launch(
        &dt.kernel("col2im"),
        Launch::blocks(planes.min(MAX_BLOCKS), threads_for(g.input.hw())),
        kernel_args![col, dx, geom, planes, image_stride, row_ld],
        || format!("images={images} {g:?}"),
    )
}

/// dyt (C_out, images·P) = dy (images, C_out, P) regrouped by channel: the im2col of a 1×1
/// convolution over dy, side by side.
fn regroup_by_channel(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    dy: DevPtr,
    dyt: DevPtr,
    images: usize,
) -> CudaResult<()> {
    let geom = ConvGeom::of(g);
    let p = geom.out_h * geom.out_w; // in int range (ConvGeom::of checked it)
    let channels = i32::try_from(g.c_out).map_err(|_| {
        CudaError::new(
            CudaErrorKind::Driver,
            "conv2d_backward",
            format!("C_out = {} exceeds 32 bits ({g:?})", g.c_out),
        )
    })?;
    let planes = ConvGeom {
        c_in: channels,
        h: 1,
        w: p,
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        pad_top: 0,
        pad_left: 0,
        out_h: 1,
        out_w: p,
    };
    let layout = ColLayout::side_by_side(g, images);
    im2col(gpu, dt, planes, dy, dyt, images, layout)
}

/// y[o, c, i] += b[c].   y: (outer, channels, inner)  b: (channels)
/// Conv: (N, C_out, H_out·W_out); linear: (rows, d_out, 1).
pub fn bias_add_nchw(
    gpu: &Gpu,
    dt: Precision,
    y: DevPtr,
    b: DevPtr,
    outer: usize,
    channels: usize,
    inner: usize,
) -> CudaResult<()> {
    let total = outer * channels * inner;
    if total == 0 {
        return Ok(());
    }
    gpu.launch(
        &dt.kernel("bias_add_nchw"),
        Launch::linear(total, BLOCK),
        kernel_args![y, b, total, channels, inner],
        || format!("outer={outer} channels={channels} inner={inner}"),
    )
}

/// Most elements of one plane one block sums in the bias gradient's first stage (as group
/// norm's chunks).
const PLANE_CHUNK: usize = 16_384;

/// f32 scratch of [`channel_sum_accumulate`] over an (outer, channels, inner) layout: one partial
/// sum per (plane, chunk of [`PLANE_CHUNK`]); none for inner = 1.
pub fn channel_sum_scratch_len(outer: usize, channels: usize, inner: usize) -> usize {
    if inner <= 1 {
        0
    } else {
        outer * channels * inner.div_ceil(PLANE_CHUNK)
    }
}

/// db[c] += Σ_{o, i} dy[o, c, i] (a parameter gradient: accumulated). dy: (outer, channels,
/// inner)  db: (channels). Deterministic, and the same bits on any GPU: for inner > 1 (conv
/// bias: (N, C_out, H_out·W_out)) in two fixed-order stages, as group norm's backward — one
/// block per (plane, chunk) writes its sum to `scratch` (at least [`channel_sum_scratch_len`]
/// f32 of `scratch_len`), then one block per channel adds its planes' sums; so N·C blocks share
/// the work, not C. Linear bias: (rows, d_out, 1), a kernel that reads rows across channels, so
/// its loads stay coalesced (no scratch).
#[allow(clippy::too_many_arguments)]
pub fn channel_sum_accumulate(
    gpu: &Gpu,
    dt: Precision,
    dy: DevPtr,
    db: DevPtr,
    outer: usize,
    channels: usize,
    inner: usize,
    (scratch, scratch_len): (DevPtr, usize),
) -> CudaResult<()> {
    if channels == 0 || outer == 0 {
        return Ok(());
    }
    let shapes = || format!("outer={outer} channels={channels} inner={inner}");
    if inner == 1 {
        let (rows, cols) = (outer, channels);
        gpu.launch(
            &dt.kernel("column_sum_accumulate"),
            // Block shape fixed by the kernel: 32 columns × 8 row lanes.
            Launch::grid((cols.div_ceil(32).min(MAX_BLOCKS) as u32, 1, 1), (32, 8, 1)),
            kernel_args![dy, db, rows, cols],
            shapes,
        )
    } else {
        let need = channel_sum_scratch_len(outer, channels, inner);
        if scratch_len < need {
            return Err(CudaError::new(
                CudaErrorKind::Driver,
                format!("bias gradient {}", shapes()),
                format!("scratch of {scratch_len} f32 is smaller than the {need} it needs"),
            ));
        }
        let chunks = inner.div_ceil(PLANE_CHUNK);
        let (planes, chunk) = (outer * channels, PLANE_CHUNK);
        let chunks_u32 = u32::try_from(chunks).map_err(|_| {
            CudaError::new(
                CudaErrorKind::Driver,
                format!("bias gradient {}", shapes()),
                "more than 2³² chunks per plane",
            )
        })?;
        gpu.launch(
            &dt.kernel("plane_sums"),
            Launch::blocks(
                (planes * chunks).min(MAX_BLOCKS),
                threads_for(inner.min(chunk)),
            ),
            kernel_args![dy, scratch, planes, inner, chunk, chunks_u32],
            shapes,
        )?;
        gpu.launch(
            "channel_partials_accumulate_f32",
            Launch::blocks(channels.min(MAX_BLOCKS), threads_for(outer * chunks)),
            kernel_args![scratch, db, outer, channels, chunks_u32],
            shapes,
        )
    }
}

/// y = conv(x, W) + b, written.   x: (N, C_in, H, W)  w: (C_out, C_in, kh, kw)  b: (C_out)
/// y: (N, C_out, H_out, W_out)  ws: `ws_len` ≥ [`conv2d_workspace_len`] f32 (unused when
/// pointwise). CPU twin: [`crate::ops::conv2d::conv2d_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
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
    const OP: &str = "conv2d_forward";
    let batch = g.input.n;
    if batch == 0 {
        return Ok(());
    }
    let (c_out, k, p) = (g.c_out, g.patch_len(), g.output().hw());
    let (x_item, y_item) = (g.input.chw(), c_out * p);
    // Y_n (C_out, P) = W (C_out, K) · col_n (K, P), batched over images; W is shared (stride 0).
    let gemm = |cols: Mat, y0: DevPtr, images: usize| {
        gpu.gemm(
            OP,
            (c_out, p, k),
            1.0,
            Mat::new(w, k).of(dt),
            cols,
            0.0,
            Mat::new(y0, p).of(dt).stride(y_item),
            images,
        )
    };
    if is_pointwise(g) {
        gemm(Mat::new(x, p).of(dt).stride(x_item), y, batch)?;
    } else {
        let chunk = chunk_images(g, OP, ws_elems(dt, ws_len), |i| forward_elems(g, i))?;
        let layout = ColLayout::per_image(g);
        for n0 in (0..batch).step_by(chunk) {
            let images = chunk.min(batch - n0);
            im2col(
                gpu,
                dt,
                ConvGeom::of(g),
                at(dt, x, n0 * x_item),
                ws,
                images,
                layout,
            )?;
            gemm(
                Mat::new(ws, p).of(dt).stride(layout.image_stride),
                at(dt, y, n0 * y_item),
                images,
            )?;
        }
    }
    if let Some(b) = b {
        bias_add_nchw(gpu, dt, y, b, batch, c_out, p)?;
    }
    Ok(())
}

/// Backward of [`conv2d_forward`]: dx (when asked for) written; dw (C_out, C_in, kh, kw) and db
/// (C_out) accumulate (`+=`). dy: (N, C_out, H_out, W_out); the other shapes and `ws` as in the
/// forward. The patch matrices are recomputed from x (the forward saves nothing else).
/// CPU twin: [`crate::ops::conv2d::conv2d_backward`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
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
    const OP: &str = "conv2d_backward";
    let batch = g.input.n;
    if batch == 0 {
        return Ok(());
    }
    let (c_out, k, p) = (g.c_out, g.patch_len(), g.output().hw());
    let (x_item, y_item) = (g.input.chw(), c_out * p);
    let chunk = chunk_images(g, OP, ws_elems(dt, ws_len), |i| backward_elems(g, i))?;
    for n0 in (0..batch).step_by(chunk) {
        let images = chunk.min(batch - n0);
        let (cols, layout) = (images * p, ColLayout::side_by_side(g, images));
        let (col, dyt) = (ws, at(dt, ws, backward_dyt_offset(g, images)));
        im2col(
            gpu,
            dt,
            ConvGeom::of(g),
            at(dt, x, n0 * x_item),
            col,
            images,
            layout,
        )?;
        regroup_by_channel(gpu, dt, g, at(dt, dy, n0 * y_item), dyt, images)?;
        // dW (C_out, K) += dYt (C_out, images·P) · colᵀ (images·P, K): one GEMM for the chunk.
        gpu.gemm(
            OP,
            (c_out, k, cols),
            1.0,
            Mat::new(dyt, cols).of(dt),
            Mat::new(col, cols).of(dt).t(),
            1.0,
            Mat::new(dw, k),
            1,
        )?;
        if let (Some(dx), false) = (dx, is_pointwise(g)) {
            // dcol (K, images·P) = Wᵀ (K, C_out) · dYt, over the columns: the dW GEMM above
            // comes first on the same stream.
            gpu.gemm(
                OP,
                (k, cols, c_out),
                1.0,
                Mat::new(w, k).of(dt).t(),
                Mat::new(dyt, cols).of(dt),
                0.0,
                Mat::new(col, cols).of(dt),
                1,
            )?;
            col2im(gpu, dt, g, col, at(dt, dx, n0 * x_item), images, layout)?;
        }
    }
    if let (Some(dx), true) = (dx, is_pointwise(g)) {
        // dx_n (C_in, P) = Wᵀ (C_in, C_out) · dY_n (C_out, P), batched over the images, straight
        // into dx (no col2im for a pointwise convolution).
        gpu.gemm(
            OP,
            (k, p, c_out),
            1.0,
            Mat::new(w, k).of(dt).t(),
            Mat::new(dy, p).of(dt).stride(y_item),
            0.0,
            Mat::new(dx, p).of(dt).stride(x_item),
            batch,
        )?;
    }
    if let Some(db) = db {
        // The GEMMs are done with the workspace (same stream): the partial sums reuse it.
        let scratch = (ws, ws_len);
        channel_sum_accumulate(gpu, dt, dy, db, batch, c_out, p, scratch)?;
    }
    Ok(())
}
