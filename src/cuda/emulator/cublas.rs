//! cuBLAS for the emulator, at cuBLAS's own API: `cublasSgemmStridedBatched` and
//! `cublasGemmStridedBatchedEx` take the library's arguments (column-major matrices, leading
//! dimensions, batch strides, data and compute types), refuse what the library refuses, and
//! compute what it computes, on the CPU GEMM. `Gpu::gemm` calls them exactly as it calls the
//! library ([`super::super::blas`]), so its row-major → column-major translation runs here.
//!
//! Refused, as cuBLAS documents (`CUBLAS_STATUS_INVALID_VALUE` unless said otherwise):
//! - m, n, k or the batch count negative; α or β null;
//! - lda < max(1, rows of A as stored) (m when transa is N, else k), ldb < max(1, k or n),
//!   ldc < max(1, m);
//! - a type / compute-type combination outside cuBLAS's table for compute type 32F
//!   (`CUBLAS_STATUS_NOT_SUPPORTED`): A and B both fp32 (C fp32), or both bf16 or both fp16
//!   with C of their type or fp32; other compute types are not emulated (also NOT_SUPPORTED);
//! - a null handle (`CUBLAS_STATUS_NOT_INITIALIZED`).
//!
//! Refused because cuBLAS leaves the result undefined or version-dependent (the emulator is
//! stricter than the library here, on purpose):
//! - k = 0 (`CUBLAS_STATUS_NOT_SUPPORTED`): C = β·C is `Gpu::gemm`'s own job;
//! - batch items of C that share an element (a batch stride of 0 for C with more than one item,
//!   or any stride that makes them overlap), and C overlapping A or B (INVALID_VALUE). A and B
//!   may have stride 0: one matrix shared by every item;
//! - a negative batch stride, an operand not aligned to its element size, or any operand that
//!   is not inside one live emulated allocation (`CUBLAS_STATUS_EXECUTION_FAILED`, where the
//!   GPU would fault or read another buffer), naming the allocation it overruns.
//!
//! Math mode: `cublasSetMathMode` is recorded on the handle. Unless it includes
//! `CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION`, a GEMM with a bf16 or fp16 C is computed
//! as cuBLAS may then compute it: split in two along k, each half's result rounded to C's type
//! before they are added (a split-K reduction in 16 bits). Otherwise products accumulate in fp32
//! and C is rounded to its type once.

use std::ffi::{c_int, c_longlong, c_void};

use cudarc::cublas::sys::{
    self, cublasComputeType_t, cublasMath_t, cublasOperation_t, cublasStatus_t, cudaDataType,
};

use super::super::blas::{BlasFailure, BlasResult};
use super::memory::check_range;
use crate::ops::matmul::{gemm, MatMut, MatRef, Threads};

use cublasStatus_t::{
    CUBLAS_STATUS_EXECUTION_FAILED as EXECUTION_FAILED,
    CUBLAS_STATUS_INVALID_VALUE as INVALID_VALUE, CUBLAS_STATUS_NOT_INITIALIZED as NOT_INITIALIZED,
    CUBLAS_STATUS_NOT_SUPPORTED as NOT_SUPPORTED,
};

/// What a handle holds: the settings made on it.
struct Handle {
    math_mode: cublasMath_t,
    /// Recorded only: the emulator runs every call at once, and needs no workspace.
    #[allow(dead_code)]
    stream: usize,
    #[allow(dead_code)]
    workspace: Option<(usize, usize)>,
}

/// `cublasCreate`: a new handle with the library's defaults (default math, the null stream).
pub fn create() -> sys::cublasHandle_t {
    let h = Box::new(Handle {
        math_mode: cublasMath_t::CUBLAS_DEFAULT_MATH,
        stream: 0,
        workspace: None,
    });
    Box::into_raw(h).cast()
}

/// `cublasDestroy`.
///
/// # Safety
/// `h` came from [`create`] and is not used again.
pub unsafe fn destroy(h: sys::cublasHandle_t) {
    if !h.is_null() {
        drop(Box::from_raw(h.cast::<Handle>()));
    }
}

/// # Safety
/// `h` is null or from [`create`] and not destroyed.
unsafe fn handle<'a>(h: sys::cublasHandle_t) -> Result<&'a mut Handle, BlasFailure> {
    h.cast::<Handle>()
        .as_mut()
        .ok_or_else(|| BlasFailure::new(NOT_INITIALIZED, "null cuBLAS handle"))
}

/// `cublasSetStream` (recorded; the emulator runs everything at once).
///
/// # Safety
/// As [`handle`].
pub unsafe fn set_stream(h: sys::cublasHandle_t, stream: sys::cudaStream_t) -> BlasResult {
    handle(h)?.stream = stream as usize;
    Ok(())
}

/// `cublasSetMathMode`: recorded; it decides how 16-bit results are reduced.
///
/// # Safety
/// As [`handle`].
pub unsafe fn set_math_mode(h: sys::cublasHandle_t, mode: cublasMath_t) -> BlasResult {
    handle(h)?.math_mode = mode;
    Ok(())
}

/// `cublasGetMathMode`.
pub fn math_mode(h: sys::cublasHandle_t) -> Result<cublasMath_t, BlasFailure> {
    // SAFETY: `Blas` hands its own live handle.
    Ok(unsafe { handle(h) }?.math_mode)
}

/// `cublasSetWorkspace`: the workspace must be device memory of that size (an allocation).
///
/// # Safety
/// As [`handle`].
pub unsafe fn set_workspace(h: sys::cublasHandle_t, ptr: *mut c_void, bytes: usize) -> BlasResult {
    let handle = handle(h)?;
    if bytes > 0 {
        check_range(ptr as u64, bytes)
            .map_err(|e| BlasFailure::new(INVALID_VALUE, format!("workspace: {e}")))?;
    }
    handle.workspace = Some((ptr as usize, bytes));
    Ok(())
}

/// Storage types the emulator computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    Bf16,
    F16,
}

impl Elem {
    fn of(t: cudaDataType) -> Option<Self> {
        match t {
            cudaDataType::CUDA_R_32F => Some(Elem::F32),
            cudaDataType::CUDA_R_16BF => Some(Elem::Bf16),
            cudaDataType::CUDA_R_16F => Some(Elem::F16),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 | Elem::F16 => 2,
        }
    }

    /// Element `i` at `base`, widened to f32.
    ///
    /// # Safety
    /// Inside a checked operand.
    unsafe fn read(self, base: usize, i: usize) -> f32 {
        match self {
            Elem::F32 => *(base as *const f32).add(i),
            Elem::Bf16 => half::bf16::from_bits(*(base as *const u16).add(i)).to_f32(),
            Elem::F16 => half::f16::from_bits(*(base as *const u16).add(i)).to_f32(),
        }
    }

    /// Stores `v` rounded to nearest even.
    ///
    /// # Safety
    /// Inside a checked operand.
    unsafe fn write(self, base: usize, i: usize, v: f32) {
        match self {
            Elem::F32 => *(base as *mut f32).add(i) = v,
            Elem::Bf16 => *(base as *mut u16).add(i) = half::bf16::from_f32(v).to_bits(),
            Elem::F16 => *(base as *mut u16).add(i) = half::f16::from_f32(v).to_bits(),
        }
    }

    /// `v` rounded to this type and widened back.
    fn round(self, v: f32) -> f32 {
        match self {
            Elem::F32 => v,
            Elem::Bf16 => half::bf16::from_f32(v).to_f32(),
            Elem::F16 => half::f16::from_f32(v).to_f32(),
        }
    }
}

/// One operand as cuBLAS describes it: `rows × cols` of op(X), stored column-major with leading
/// dimension `ld` (transposed: X is stored `cols × rows`), items `stride` elements apart.
#[derive(Clone, Copy, Debug)]
struct Operand {
    name: &'static str,
    ptr: usize,
    ty: Elem,
    trans: bool,
    rows: usize,
    cols: usize,
    ld: usize,
    stride: usize,
}

impl Operand {
    /// Rows and columns of X as stored.
    fn stored(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Element strides of op(X)'s rows and columns.
    fn strides(&self) -> (usize, usize) {
        if self.trans {
            (self.ld, 1)
        } else {
            (1, self.ld)
        }
    }

    /// Elements from the first to one past the last of one item (0 when empty).
    fn item_span(&self) -> usize {
        let (r, c) = self.stored();
        if r == 0 || c == 0 {
            0
        } else {
            (c - 1) * self.ld + r
        }
    }

    /// Byte range of every item together: [start, end).
    fn bytes(&self, batch: usize) -> (usize, usize) {
        let span = self.item_span();
        if span == 0 || batch == 0 {
            return (self.ptr, self.ptr);
        }
        let elems = (batch - 1) * self.stride + span;
        (self.ptr, self.ptr + elems * self.ty.bytes())
    }

    /// Element offset of (r, c) of op(X) in item `item`.
    fn at(&self, item: usize, r: usize, c: usize) -> usize {
        let (rs, cs) = self.strides();
        item * self.stride + r * rs + c * cs
    }

    /// op(X) of item `item` as a dense row-major f32 matrix.
    ///
    /// # Safety
    /// The operand was checked against its allocation.
    unsafe fn dense(&self, item: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.ty.read(self.ptr, self.at(item, r, c)));
            }
        }
        out
    }

    /// op(X) of item `item` viewed in place (fp32 storage only).
    ///
    /// # Safety
    /// The operand is fp32 and was checked against its allocation.
    unsafe fn view<'a>(&self, item: usize) -> MatRef<'a, f32> {
        let base = (self.ptr as *const f32).add(item * self.stride);
        let data = std::slice::from_raw_parts(base, self.item_span());
        let (rs, cs) = self.strides();
        MatRef::strided(data, self.rows, self.cols, rs, cs)
    }
}

/// Whether two batch items `d` elements apart share an element of an `rows × cols` column-major
/// matrix with leading dimension `ld` ≥ rows: d = di + dj·ld with |di| < rows, |dj| < cols.
fn items_collide(d: usize, rows: usize, cols: usize, ld: usize) -> bool {
    let (q, r) = (d / ld, d % ld);
    (r < rows && q < cols) || (r + rows > ld && q + 1 < cols)
}

/// One validated call.
struct Call {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    a: Operand,
    b: Operand,
    c: Operand,
    batch: usize,
    /// 16-bit C reduced in 16 bits (the math mode allows it).
    reduced: bool,
}

fn op_flag(op: cublasOperation_t) -> bool {
    // Real matrices: conjugate-transpose is transpose.
    !matches!(op, cublasOperation_t::CUBLAS_OP_N)
}

/// The checks and the computation shared by both entry points.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_checked(
    h: sys::cublasHandle_t,
    (transa, transb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (c_int, c_int, c_int),
    (alpha, beta): (*const f32, *const f32),
    a: (usize, Elem, c_int, c_longlong),
    b: (usize, Elem, c_int, c_longlong),
    c: (usize, Elem, c_int, c_longlong),
    batch: c_int,
) -> BlasResult {
    let handle = handle(h)?;
    let invalid = |msg: String| Err(BlasFailure::new(INVALID_VALUE, msg));
    if m < 0 || n < 0 || k < 0 || batch < 0 {
        return invalid(format!(
            "negative size (m={m} n={n} k={k} batchCount={batch})"
        ));
    }
    if alpha.is_null() || beta.is_null() {
        return invalid("alpha or beta is null".into());
    }
    let (ta, tb) = (op_flag(transa), op_flag(transb));
    let (mu, nu, ku) = (m as usize, n as usize, k as usize);
    // Rows of each operand as stored, which its leading dimension must cover.
    let need = [
        ("lda", a.2, if ta { ku } else { mu }),
        ("ldb", b.2, if tb { nu } else { ku }),
        ("ldc", c.2, mu),
    ];
    for (name, ld, rows) in need {
        if (ld as i64) < rows.max(1) as i64 {
            return invalid(format!(
                "{name} = {ld} < max(1, {rows}) (m={m} n={n} k={k}, transa={transa:?}, transb={transb:?})"
            ));
        }
    }
    if mu == 0 || nu == 0 || batch == 0 {
        return Ok(()); // nothing to compute, as the library
    }
    if ku == 0 {
        return Err(BlasFailure::new(
            NOT_SUPPORTED,
            format!(
                "k = 0 (m={m} n={n}): cuBLAS's handling of it varies by path; Gpu::gemm computes \
                 C = β·C itself and must not pass it"
            ),
        ));
    }
    let operand =
        |name, (ptr, ty, ld, stride): (usize, Elem, c_int, c_longlong), trans, rows, cols| {
            if stride < 0 {
                return Err(BlasFailure::new(
                    EXECUTION_FAILED,
                    format!("{name}: negative batch stride {stride} (not emulated)"),
                ));
            }
            Ok(Operand {
                name,
                ptr,
                ty,
                trans,
                rows,
                cols,
                ld: ld as usize,
                stride: stride as usize,
            })
        };
    let call = Call {
        m: mu,
        n: nu,
        k: ku,
        alpha: *alpha,
        beta: *beta,
        a: operand("A", a, ta, mu, ku)?,
        b: operand("B", b, tb, ku, nu)?,
        c: operand("C", c, false, mu, nu)?,
        batch: batch as usize,
        reduced: c.1 != Elem::F32
            && (handle.math_mode as u32
                & cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION as u32)
                == 0,
    };
    let describe = || {
        format!(
            "m={m} n={n} k={k} batchCount={batch} transa={transa:?} transb={transb:?} \
             lda={} ldb={} ldc={} strides {}/{}/{}",
            a.2, b.2, c.2, a.3, b.3, c.3
        )
    };
    for op in [&call.a, &call.b, &call.c] {
        if op.ptr % op.ty.bytes() != 0 {
            return Err(BlasFailure::new(
                EXECUTION_FAILED,
                format!(
                    "{}: address {:#x} is not aligned to its {}-byte elements ({})",
                    op.name,
                    op.ptr,
                    op.ty.bytes(),
                    describe()
                ),
            ));
        }
        let (start, end) = op.bytes(call.batch);
        check_range(start as u64, end - start).map_err(|e| {
            BlasFailure::new(
                EXECUTION_FAILED,
                format!(
                    "{} lies outside its allocation: {e} ({})",
                    op.name,
                    describe()
                ),
            )
        })?;
    }
    let cm = &call.c;
    if call.batch > 1 {
        let span = cm.item_span();
        let collide = (1..call.batch)
            .map(|i| i * cm.stride)
            .take_while(|&d| d < span)
            .any(|d| items_collide(d, cm.rows, cm.cols, cm.ld));
        if collide {
            return invalid(format!(
                "the batch items of C overlap (strideC = {}, each spans {span} elements): \
                 their results would race ({})",
                cm.stride,
                describe()
            ));
        }
    }
    let (c0, c1) = cm.bytes(call.batch);
    for op in [&call.a, &call.b] {
        let (s, e) = op.bytes(call.batch);
        if s < c1 && c0 < e {
            return invalid(format!(
                "C overlaps {} (bytes {:#x}..{:#x} and {:#x}..{:#x}); cuBLAS does not compute in place ({})",
                op.name,
                c0,
                c1,
                s,
                e,
                describe()
            ));
        }
    }
    compute(&call);
    Ok(())
}

/// C = α·op(A)·op(B) + β·C for every item (β = 0: C is not read).
///
/// # Safety
/// The call passed [`gemm_checked`]'s checks.
unsafe fn compute(call: &Call) {
    let (m, n, k) = (call.m, call.n, call.k);
    let all_f32 = [call.a.ty, call.b.ty, call.c.ty] == [Elem::F32; 3];
    for item in 0..call.batch {
        if all_f32 {
            let c = &call.c;
            let base = (c.ptr as *mut f32).add(item * c.stride);
            let out = std::slice::from_raw_parts_mut(base, c.item_span());
            if call.beta != 0.0 && call.beta != 1.0 {
                for j in 0..n {
                    out[j * c.ld..j * c.ld + m]
                        .iter_mut()
                        .for_each(|v| *v *= call.beta);
                }
            }
            gemm(
                MatMut::strided(out, m, n, 1, c.ld),
                call.a.view(item),
                call.b.view(item),
                call.alpha,
                call.beta != 0.0,
                Threads::Pool,
            );
            continue;
        }
        let (a, b) = (call.a.dense(item), call.b.dense(item));
        // Row-major m×n products over k-ranges of A's columns and B's rows.
        let product = |k0: usize, k1: usize| {
            let mut p = vec![0.0f32; m * n];
            gemm(
                MatMut::strided(&mut p, m, n, n, 1),
                MatRef::strided(&a[k0..], m, k1 - k0, k, 1),
                MatRef::strided(&b[k0 * n..], k1 - k0, n, n, 1),
                call.alpha,
                false,
                Threads::Pool,
            );
            p
        };
        let ty = call.c.ty;
        let p = if call.reduced && k >= 2 {
            let (lo, hi) = (product(0, k / 2), product(k / 2, k));
            lo.iter()
                .zip(&hi)
                .map(|(&x, &y)| ty.round(x) + ty.round(y))
                .collect()
        } else {
            product(0, k)
        };
        for j in 0..n {
            for i in 0..m {
                let at = call.c.at(item, i, j);
                let mut v = p[i * n + j];
                if call.beta != 0.0 {
                    v += call.beta * ty.read(call.c.ptr, at);
                }
                ty.write(call.c.ptr, at, v);
            }
        }
    }
}

/// `cublasSgemmStridedBatched`.
///
/// # Safety
/// As the library's.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_strided_batched(
    h: sys::cublasHandle_t,
    transa: cublasOperation_t,
    transb: cublasOperation_t,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: *const f32,
    lda: c_int,
    stride_a: c_longlong,
    b: *const f32,
    ldb: c_int,
    stride_b: c_longlong,
    beta: *const f32,
    c: *mut f32,
    ldc: c_int,
    stride_c: c_longlong,
    batch_count: c_int,
) -> BlasResult {
    gemm_checked(
        h,
        (transa, transb),
        (m, n, k),
        (alpha, beta),
        (a as usize, Elem::F32, lda, stride_a),
        (b as usize, Elem::F32, ldb, stride_b),
        (c as usize, Elem::F32, ldc, stride_c),
        batch_count,
    )
}

/// `cublasGemmStridedBatchedEx` with compute type 32F (α and β are f32).
///
/// # Safety
/// As the library's.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided_batched_ex(
    h: sys::cublasHandle_t,
    transa: cublasOperation_t,
    transb: cublasOperation_t,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: cudaDataType,
    lda: c_int,
    stride_a: c_longlong,
    b: *const c_void,
    b_type: cudaDataType,
    ldb: c_int,
    stride_b: c_longlong,
    beta: *const c_void,
    c: *mut c_void,
    c_type: cudaDataType,
    ldc: c_int,
    stride_c: c_longlong,
    batch_count: c_int,
    compute_type: cublasComputeType_t,
    _algo: sys::cublasGemmAlgo_t,
) -> BlasResult {
    handle(h)?;
    if compute_type != cublasComputeType_t::CUBLAS_COMPUTE_32F {
        return Err(BlasFailure::new(
            NOT_SUPPORTED,
            format!("compute type {compute_type:?} is not emulated (only CUBLAS_COMPUTE_32F)"),
        ));
    }
    // cuBLAS's table for CUBLAS_COMPUTE_32F, less the int8 and complex rows.
    let types = (Elem::of(a_type), Elem::of(b_type), Elem::of(c_type));
    let supported = match types {
        (Some(ta), Some(tb), Some(tc)) => {
            ta == tb && (tc == Elem::F32 || (tc == ta && ta != Elem::F32))
        }
        _ => false,
    };
    let (Some(ta), Some(tb), Some(tc), true) = (types.0, types.1, types.2, supported) else {
        return Err(BlasFailure::new(
            NOT_SUPPORTED,
            format!(
                "A {a_type:?}, B {b_type:?}, C {c_type:?} is not a supported combination for \
                 compute type 32F"
            ),
        ));
    };
    gemm_checked(
        h,
        (transa, transb),
        (m, n, k),
        (alpha.cast(), beta.cast()),
        (a as usize, ta, lda, stride_a),
        (b as usize, tb, ldb, stride_b),
        (c as usize, tc, ldc, stride_c),
        batch_count,
    )
}

#[cfg(test)]
mod tests {
    use super::items_collide;

    /// Brute force over every pair of elements.
    fn collide_slow(d: usize, rows: usize, cols: usize, ld: usize) -> bool {
        let cells: Vec<usize> = (0..cols)
            .flat_map(|j| (0..rows).map(move |i| i + j * ld))
            .collect();
        cells.iter().any(|&x| cells.contains(&(x + d)))
    }

    #[test]
    fn batch_item_overlap_matches_brute_force() {
        for rows in 1..5 {
            for cols in 1..5 {
                for ld in rows..rows + 4 {
                    for d in 1..(cols * ld + 2) {
                        assert_eq!(
                            items_collide(d, rows, cols, ld),
                            collide_slow(d, rows, cols, ld),
                            "d={d} rows={rows} cols={cols} ld={ld}"
                        );
                    }
                }
            }
        }
    }
}
