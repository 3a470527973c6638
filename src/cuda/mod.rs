//! The CUDA backend: the kernels compiled from `kernels/*.cu` and embedded at build time, the
//! driver probe, the device runtime (context, stream, memory, launches, cuBLAS), the op launches
//! and the GPU implementation of [`crate::backend::Backend`].

pub mod backend;
pub mod blas;
pub mod device;
#[cfg(feature = "cuda-emulator")]
mod emulator;
pub mod kernels;
pub mod memory;
pub mod ops;
pub mod probe;
pub mod sample;
pub mod testing;
pub mod train;

pub use device::{CudaError, CudaErrorKind, CudaResult, DevPtr, Gpu, Launch, Mat};
