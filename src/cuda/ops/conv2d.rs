//! Launches of kernels/im2col.cu and the cuBLAS GEMMs of a 2-d convolution (im2col + GEMM),
//! plus the bias kernels that [`super::linear`] shares. CPU twin: [`crate::ops::conv2d`].
//! x, y, their gradients, the patch matrices and the weights the GEMMs read are stored in the
//! activation precision `dt`; the bias and the parameter gradients dW, db are fp32.
//!
//! Per image n, with K = C_in·kh·kw and P = H_out·W_out:
//!   forward      Y_n (C_out, P) = W (C_out, K) · col_n (K, P) + b
//!   grad weight  dW (C_out, K) += dY_n · col_nᵀ       (one GEMM per image, in image order)
//!   grad input   dcol_n (K, P) = Wᵀ · dY_n,  dx_n = col2im(dcol_n)
//! `col` lives in a caller-owned workspace of `ws_len` f32-sized slots (each holds 2 elements
//! in bf16 or fp16; [`conv2d_workspace_len`] at least): the wrapper unrolls as many whole images
//! at a time as fit (a chunk; [`conv2d_workspace_for`] sizes one), so a bigger workspace means
//! fewer, larger launches.
//! The chunking changes no sum: dW and db are bitwise the same for any workspace, y and dx the
//! same up to the kernel cuBLAS picks for a batch count. A 1×1 stride-1 unpadded convolution
//! skips the unrolling: col_n is x_n itself.
//! Everything runs on the GPU's one stream, so a launch sees every earlier launch finished.

use crate::cuda::{CudaResult, DevPtr, Gpu, Launch, Mat};
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

/// Floats from one image's patch matrix to the next in the workspace: K·P rounded up to 64
/// (256 bytes), so every image's columns are aligned alike and the per-image GEMMs of dW see the
/// same operand alignment (hence the same cuBLAS kernel) whatever the chunk.
fn col_stride(g: &Conv2dShape) -> usize {
    col_len(g).next_multiple_of(64)
}

/// Minimum f32 workspace of [`conv2d_forward`] / [`conv2d_backward`]: one image's patch matrix
/// (C_in·kh·kw, H_out·W_out); 0 for a pointwise convolution, which reads x directly. More lets
/// the wrapper unroll several images per launch (see [`conv2d_workspace_for`]).
pub fn conv2d_workspace_len(g: &Conv2dShape) -> usize {
    conv2d_workspace_for(g, 1)
}

/// f32 workspace with which the wrapper unrolls `images` images per chunk (at least one).
pub fn conv2d_workspace_for(g: &Conv2dShape, images: usize) -> usize {
    if is_pointwise(g) {
        0
    } else {
        (images.max(1) - 1) * col_stride(g) + col_len(g)
    }
}

/// Images unrolled per chunk: as many whole patch matrices as `ws_len` holds, in [1, N].
fn chunk_images(g: &Conv2dShape, ws_len: usize) -> usize {
    let per = col_len(g);
    assert!(
        ws_len >= per,
        "conv2d: workspace of {ws_len} f32 is smaller than one image's patch matrix \
         ({} × {} = {per}) for {g:?}",
        g.patch_len(),
        g.output().hw()
    );
    ((ws_len - per) / col_stride(g) + 1).min(g.input.n.max(1))
}

/// col (images, [`col_stride`]) = im2col(x) for `images` consecutive images starting at `x`.
fn im2col(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    x: DevPtr,
    col: DevPtr,
    images: usize,
) -> CudaResult<()> {
    let geom = ConvGeom::of(g);
    let (rows, stride) = (images * g.patch_len(), col_stride(g));
    gpu.launch(
        &dt.kernel("im2col"),
        Launch::blocks(rows.min(MAX_BLOCKS), threads_for(g.output().hw())),
        kernel_args![x, col, geom, rows, stride],
        || format!("images={images} {g:?}"),
    )
}

/// dx (images, C_in, H, W) = col2im(col (images, [`col_stride`])), written.
fn col2im(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    col: DevPtr,
    dx: DevPtr,
    images: usize,
) -> CudaResult<()> {
    let geom = ConvGeom::of(g);
    let (planes, stride) = (images * g.input.c, col_stride(g));
    gpu.launch(
        &dt.kernel("col2im"),
        Launch::blocks(planes.min(MAX_BLOCKS), threads_for(g.input.hw())),
        kernel_args![col, dx, geom, planes, stride],
        || format!("images={images} {g:?}"),
    )
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

/// db[c] += Σ_{o, i} dy[o, c, i] (a parameter gradient: accumulated). dy: (outer, channels,
/// inner)  db: (channels). Deterministic: each channel is summed by one block in a fixed order.
/// Conv bias: (N, C_out, H_out·W_out); linear bias: (rows, d_out, 1), which takes a kernel that
/// reads rows across channels, so its loads stay coalesced.
pub fn channel_sum_accumulate(
    gpu: &Gpu,
    dt: Precision,
    dy: DevPtr,
    db: DevPtr,
    outer: usize,
    channels: usize,
    inner: usize,
) -> CudaResult<()> {
    if channels == 0 {
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
        gpu.launch(
            &dt.kernel("channel_sum_accumulate"),
            Launch::blocks(channels.min(MAX_BLOCKS), threads_for(inner)),
            kernel_args![dy, db, outer, channels, inner],
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
        let (chunk, cs) = (chunk_images(g, ws_elems(dt, ws_len)), col_stride(g));
        for n0 in (0..batch).step_by(chunk) {
            let images = chunk.min(batch - n0);
            im2col(gpu, dt, g, at(dt, x, n0 * x_item), ws, images)?;
            gemm(
                Mat::new(ws, p).of(dt).stride(cs),
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
    // dW (C_out, K) += dY_n (C_out, P) · col_nᵀ (P, K): one GEMM per image, in order (a batched
    // GEMM into one shared output would race).
    let dw_gemm = |dy_n: DevPtr, col_n: DevPtr| {
        gpu.gemm(
            OP,
            (c_out, k, p),
            1.0,
            Mat::new(dy_n, p).of(dt),
            Mat::new(col_n, p).of(dt).t(),
            1.0,
            Mat::new(dw, k),
            1,
        )
    };
    // dcol_n (K, P) = Wᵀ (K, C_out) · dY_n (C_out, P), batched over `images`.
    let dcol_gemm = |dy0: DevPtr, dcol: Mat, images: usize| {
        gpu.gemm(
            OP,
            (k, p, c_out),
            1.0,
            Mat::new(w, k).of(dt).t(),
            Mat::new(dy0, p).of(dt).stride(y_item),
            0.0,
            dcol,
            images,
        )
    };
    if is_pointwise(g) {
        for n in 0..batch {
            dw_gemm(at(dt, dy, n * y_item), at(dt, x, n * x_item))?;
        }
        if let Some(dx) = dx {
            // dcol_n is dx_n itself.
            dcol_gemm(dy, Mat::new(dx, p).of(dt).stride(x_item), batch)?;
        }
    } else {
        let (chunk, cs) = (chunk_images(g, ws_elems(dt, ws_len)), col_stride(g));
        for n0 in (0..batch).step_by(chunk) {
            let images = chunk.min(batch - n0);
            let dy0 = at(dt, dy, n0 * y_item);
            im2col(gpu, dt, g, at(dt, x, n0 * x_item), ws, images)?;
            for i in 0..images {
                dw_gemm(at(dt, dy0, i * y_item), at(dt, ws, i * cs))?;
            }
            if let Some(dx) = dx {
                // Overwrites the columns: the dW GEMMs above come first on the same stream.
                dcol_gemm(dy0, Mat::new(ws, p).of(dt).stride(cs), images)?;
                col2im(gpu, dt, g, ws, at(dt, dx, n0 * x_item), images)?;
            }
        }
    }
    if let Some(db) = db {
        channel_sum_accumulate(gpu, dt, dy, db, batch, c_out, p)?;
    }
    Ok(())
}
