//! The cuBLAS handle of a [`Gpu`](super::Gpu) and the calls made on it, each either the library
//! (through cudarc's `result` layer) or, with the `cuda-emulator` feature on an emulated `Gpu`,
//! the emulator's own cuBLAS (`super::emulator::cublas`): column-major, with the library's
//! argument checks. The arguments are the library's in both cases, so `Gpu::gemm`'s row-major →
//! column-major translation is the code that runs under the emulator too.

use std::ffi::{c_int, c_longlong, c_void};
use std::fmt;

use cudarc::cublas::{result, sys};

/// A failed cuBLAS call: the status, and where the emulator refused it, why (the library only
/// returns the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlasFailure {
    pub status: sys::cublasStatus_t,
    pub detail: Option<String>,
}

impl BlasFailure {
    pub fn new(status: sys::cublasStatus_t, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: Some(detail.into()),
        }
    }
}

impl From<result::CublasError> for BlasFailure {
    fn from(e: result::CublasError) -> Self {
        Self {
            status: e.0,
            detail: None,
        }
    }
}

impl fmt::Display for BlasFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{:?}: {d}", self.status),
            None => write!(f, "{:?}", self.status),
        }
    }
}

pub type BlasResult = Result<(), BlasFailure>;

/// One cuBLAS handle. Destroyed explicitly ([`Blas::destroy`]) by the `Gpu` that owns it, which
/// orders it against its stream.
pub struct Blas {
    handle: sys::cublasHandle_t,
    /// The emulator's handle rather than the library's.
    #[cfg_attr(not(feature = "cuda-emulator"), allow(dead_code))]
    emulated: bool,
}

impl Blas {
    /// `cublasCreate`: the library's handle, or with `emulated`, the emulator's.
    pub fn create(emulated: bool) -> Result<Self, BlasFailure> {
        #[cfg(feature = "cuda-emulator")]
        if emulated {
            return Ok(Self {
                handle: super::emulator::cublas::create(),
                emulated,
            });
        }
        Ok(Self {
            handle: result::create_handle()?,
            emulated,
        })
    }

    /// `cublasDestroy`.
    ///
    /// # Safety
    /// No work queued on the handle may still be running, and it is not used afterwards.
    pub unsafe fn destroy(&mut self) {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            super::emulator::cublas::destroy(self.handle);
            self.handle = std::ptr::null_mut();
            return;
        }
        if !self.handle.is_null() {
            let _ = result::destroy_handle(self.handle);
            self.handle = std::ptr::null_mut();
        }
    }

    /// `cublasSetStream`.
    ///
    /// # Safety
    /// `stream` belongs to the current context (the emulator only records it).
    pub unsafe fn set_stream(&self, stream: sys::cudaStream_t) -> BlasResult {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::set_stream(self.handle, stream);
        }
        Ok(result::set_stream(self.handle, stream)?)
    }

    /// `cublasSetMathMode`.
    ///
    /// # Safety
    /// A live handle (always, for `self`).
    pub unsafe fn set_math_mode(&self, mode: sys::cublasMath_t) -> BlasResult {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::set_math_mode(self.handle, mode);
        }
        Ok(sys::cublasSetMathMode(self.handle, mode).result()?)
    }

    /// `cublasGetMathMode`.
    pub fn math_mode(&self) -> Result<sys::cublasMath_t, BlasFailure> {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::math_mode(self.handle);
        }
        let mut mode = sys::cublasMath_t::CUBLAS_DEFAULT_MATH;
        // SAFETY: a live handle and a valid output pointer.
        unsafe { sys::cublasGetMathMode(self.handle, &mut mode) }.result()?;
        Ok(mode)
    }

    /// `cublasSetWorkspace`.
    ///
    /// # Safety
    /// `ptr` is device memory of `bytes` that outlives the handle.
    pub unsafe fn set_workspace(&self, ptr: *mut c_void, bytes: usize) -> BlasResult {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::set_workspace(self.handle, ptr, bytes);
        }
        Ok(sys::cublasSetWorkspace_v2(self.handle, ptr, bytes).result()?)
    }

    /// `cublasSgemmStridedBatched`, column-major, arguments as the library takes them.
    ///
    /// # Safety
    /// As the library's: the pointers describe device memory covering every matrix.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm_strided_batched(
        &self,
        transa: sys::cublasOperation_t,
        transb: sys::cublasOperation_t,
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
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::sgemm_strided_batched(
                self.handle,
                transa,
                transb,
                m,
                n,
                k,
                alpha,
                a,
                lda,
                stride_a,
                b,
                ldb,
                stride_b,
                beta,
                c,
                ldc,
                stride_c,
                batch_count,
            );
        }
        Ok(result::sgemm_strided_batched(
            self.handle,
            transa,
            transb,
            m,
            n,
            k,
            alpha,
            a,
            lda,
            stride_a,
            b,
            ldb,
            stride_b,
            beta,
            c,
            ldc,
            stride_c,
            batch_count,
        )?)
    }

    /// `cublasGemmStridedBatchedEx`, column-major, arguments as the library takes them.
    ///
    /// # Safety
    /// As the library's: the pointers describe device memory covering every matrix, and α, β
    /// point to values of the compute type's scale type.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_strided_batched_ex(
        &self,
        transa: sys::cublasOperation_t,
        transb: sys::cublasOperation_t,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: *const c_void,
        a: *const c_void,
        a_type: sys::cudaDataType,
        lda: c_int,
        stride_a: c_longlong,
        b: *const c_void,
        b_type: sys::cudaDataType,
        ldb: c_int,
        stride_b: c_longlong,
        beta: *const c_void,
        c: *mut c_void,
        c_type: sys::cudaDataType,
        ldc: c_int,
        stride_c: c_longlong,
        batch_count: c_int,
        compute_type: sys::cublasComputeType_t,
        algo: sys::cublasGemmAlgo_t,
    ) -> BlasResult {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::cublas::gemm_strided_batched_ex(
                self.handle,
                transa,
                transb,
                m,
                n,
                k,
                alpha,
                a,
                a_type,
                lda,
                stride_a,
                b,
                b_type,
                ldb,
                stride_b,
                beta,
                c,
                c_type,
                ldc,
                stride_c,
                batch_count,
                compute_type,
                algo,
            );
        }
        Ok(result::gemm_strided_batched_ex(
            self.handle,
            transa,
            transb,
            m,
            n,
            k,
            alpha,
            a,
            a_type,
            lda,
            stride_a,
            b,
            b_type,
            ldb,
            stride_b,
            beta,
            c,
            c_type,
            ldc,
            stride_c,
            batch_count,
            compute_type,
            algo,
        )?)
    }
}
