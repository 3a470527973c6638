//! The `cuda-emulator` feature: the same `Gpu` API with device memory in host RAM, kernels run
//! by a small CPU emulation of CUDA's execution model (`kernels/emulator/`: every thread of a
//! block alive at once, real barriers, warp shuffles), and cuBLAS emulated at its own API
//! ([`cublas`]: column-major, with the library's argument checks) on the CPU GEMM.
//! It checks kernel and launch logic on machines without a GPU. It says nothing about speed,
//! and it is not a GPU: results it passes still need a run on real hardware.

use std::ffi::{c_char, c_void, CString};

use super::device::{CudaError, CudaErrorKind, CudaResult, Launch};

pub mod cublas;
pub mod memory;

pub use memory::{alloc_bytes, copy, free_bytes};

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
