//! The `cuda-emulator` feature: the same `Gpu` API with device memory in host RAM, kernels run
//! by a small CPU emulation of CUDA's execution model (`kernels/emulator/`: every thread of a
//! block alive at once, real barriers, warp shuffles), and cuBLAS replaced by the CPU GEMM.
//! It checks kernel and launch logic on machines without a GPU. It says nothing about speed,
//! and it is not a GPU: results it passes still need a run on real hardware.

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::{c_char, c_void, CString};

use super::device::{CudaError, CudaErrorKind, CudaResult, DevPtr, Launch, Mat};
use crate::ops::matmul::{gemm, MatMut, MatRef, Threads};
use crate::precision::Precision;

extern "C" {
    fn ddpm_emu_launch(
        kernel: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared_bytes: u32,
        args: *mut *mut c_void,
    ) -> i32;
}

/// Alignment of emulated allocations, as cuMemAlloc's.
const ALIGN: usize = 256;

/// Host memory standing in for device memory, filled with 0xFF bytes (NaN as f32), so a kernel
/// that forgets to write an output is caught the way an uninitialised GPU buffer would not be.
pub fn alloc_bytes(bytes: usize) -> CudaResult<DevPtr> {
    let layout = Layout::from_size_align(bytes, ALIGN)
        .map_err(|e| CudaError::new(CudaErrorKind::OutOfMemory, "emulated alloc", e.to_string()))?;
    // SAFETY: `bytes` > 0 (the caller skips empty allocations); checked for null below.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        return Err(CudaError::new(
            CudaErrorKind::OutOfMemory,
            "emulated alloc",
            format!("host allocation of {bytes} bytes failed"),
        ));
    }
    // SAFETY: `p` points to `bytes` writable bytes.
    unsafe { p.write_bytes(0xFF, bytes) };
    Ok(p as DevPtr)
}

pub fn free_bytes(ptr: DevPtr, bytes: usize) {
    let layout = Layout::from_size_align(bytes, ALIGN).expect("the layout it was allocated with");
    // SAFETY: allocated by `alloc_bytes` with this layout.
    unsafe { dealloc(ptr as *mut u8, layout) };
}

/// dst ← src, `bytes` of them (ranges may overlap).
///
/// # Safety
/// Both must be valid for `bytes` bytes.
pub unsafe fn copy(dst: *mut u8, src: *const u8, bytes: usize) {
    std::ptr::copy(src, dst, bytes);
}

pub fn launch(kernel: &str, cfg: Launch, params: &mut [*mut c_void]) -> CudaResult<()> {
    let name = CString::new(kernel).expect("kernel names have no NUL");
    // SAFETY: the params point to values of the kernel's parameter types (see `kernel_args!`),
    // and the pointers among them address emulated allocations.
    let rc = unsafe {
        ddpm_emu_launch(
            name.as_ptr(),
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.shared_bytes,
            params.as_mut_ptr(),
        )
    };
    match rc {
        0 => Ok(()),
        -1 => Err(CudaError::new(
            CudaErrorKind::Unavailable,
            format!("kernel {kernel}"),
            "not in the emulator's table",
        )),
        -4 => Err(CudaError::new(
            CudaErrorKind::Driver,
            format!("kernel {kernel}"),
            format!("deadlocked in the emulator ({cfg:?}): some threads of a block or warp never reached a barrier the others wait at"),
        )),
        code => Err(CudaError::new(
            CudaErrorKind::Driver,
            format!("kernel {kernel}"),
            format!("the emulator refused the launch {cfg:?} (code {code})"),
        )),
    }
}

/// Reads element `i` of a stored operand as f32.
///
/// # Safety
/// `base` + `i` elements of `dtype` must lie in an allocation.
unsafe fn read(base: DevPtr, dtype: Precision, i: usize) -> f32 {
    match dtype {
        Precision::Fp32 => *(base as *const f32).add(i),
        Precision::Bf16 => half::bf16::from_bits(*(base as *const u16).add(i)).to_f32(),
        Precision::Fp16 => half::f16::from_bits(*(base as *const u16).add(i)).to_f32(),
    }
}

/// Writes element `i` of a stored operand, rounded to nearest even from f32.
///
/// # Safety
/// As [`read`].
unsafe fn write(base: DevPtr, dtype: Precision, i: usize, v: f32) {
    match dtype {
        Precision::Fp32 => *(base as *mut f32).add(i) = v,
        Precision::Bf16 => *(base as *mut u16).add(i) = half::bf16::from_f32(v).to_bits(),
        Precision::Fp16 => *(base as *mut u16).add(i) = half::f16::from_f32(v).to_bits(),
    }
}

/// One batch item of op(X), `rows × cols`, gathered into a dense row-major f32 matrix.
fn dense(m: &Mat, rows: usize, cols: usize, item: usize) -> Vec<f32> {
    let (rs, cs) = if m.transposed { (1, m.ld) } else { (m.ld, 1) };
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            // SAFETY: the caller of `Gpu::gemm` guarantees the described matrix lies in an
            // allocation.
            out.push(unsafe { read(m.ptr, m.dtype, item * m.batch_stride + r * rs + c * cs) });
        }
    }
    out
}

/// Row-major C = α·op(A)·op(B) + β·C per batch item, like `Gpu::gemm` on cuBLAS: products
/// accumulate in f32 whatever the storage type, and C is rounded to its type once at the end.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: Mat,
    batch: usize,
) {
    if [a.dtype, b.dtype, c.dtype] == [Precision::Fp32; 3] {
        return gemm_f32((m, n, k), alpha, a, b, beta, c, batch);
    }
    for item in 0..batch {
        let (ad, bd) = (dense(&a, m, k, item), dense(&b, k, n, item));
        let mut cd = if beta != 0.0 {
            dense(&c, m, n, item)
        } else {
            vec![0.0; m * n]
        };
        if beta != 0.0 && beta != 1.0 {
            cd.iter_mut().for_each(|v| *v *= beta);
        }
        gemm(
            MatMut::strided(&mut cd, m, n, n, 1),
            MatRef::strided(&ad, m, k, k, 1),
            MatRef::strided(&bd, k, n, n, 1),
            alpha,
            beta != 0.0,
            Threads::Pool,
        );
        for r in 0..m {
            for col in 0..n {
                let i = item * c.batch_stride + r * c.ld + col;
                // SAFETY: as in `dense`; C never overlaps A or B in our calls.
                unsafe { write(c.ptr, c.dtype, i, cd[r * n + col]) };
            }
        }
    }
}

/// One operand as a CPU view: `rows × cols` of op(X), from its row-major f32 storage.
fn view<'a>(m: &Mat, rows: usize, cols: usize, item: usize) -> MatRef<'a, f32> {
    let (rs, cs) = if m.transposed { (1, m.ld) } else { (m.ld, 1) };
    let span = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    let base = (m.ptr as *const f32).wrapping_add(item * m.batch_stride);
    // SAFETY: the caller of `Gpu::gemm` guarantees the described matrix lies in an allocation.
    let data = unsafe { std::slice::from_raw_parts(base, span) };
    MatRef::strided(data, rows, cols, rs, cs)
}

/// The all-fp32 GEMM straight on the operands' storage (no gathering).
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: Mat,
    batch: usize,
) {
    for item in 0..batch {
        let span = (m - 1) * c.ld + n;
        let base = (c.ptr as *mut f32).wrapping_add(item * c.batch_stride);
        // SAFETY: as in `view`; C never overlaps A or B in our calls.
        let out = unsafe { std::slice::from_raw_parts_mut(base, span) };
        if beta != 0.0 && beta != 1.0 {
            for r in 0..m {
                out[r * c.ld..r * c.ld + n]
                    .iter_mut()
                    .for_each(|v| *v *= beta);
            }
        }
        let cm = MatMut::strided(out, m, n, c.ld, 1);
        gemm(
            cm,
            view(&a, m, k, item),
            view(&b, k, n, item),
            alpha,
            beta != 0.0,
            Threads::Pool,
        );
    }
}
