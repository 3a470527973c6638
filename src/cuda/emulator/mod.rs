//! The `cuda-emulator` feature: the same `Gpu` API with device memory in host RAM, kernels run
//! by a small CPU emulation of CUDA's execution model (`kernels/emulator/`: every thread of a
//! block alive at once, real barriers, warp shuffles), and cuBLAS emulated at its own API
//! ([`cublas`]: column-major, with the library's argument checks) on the CPU GEMM.
//! It checks kernel and launch logic on machines without a GPU. It says nothing about speed,
//! and it is not a GPU: results it passes still need a run on real hardware.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::device::{CudaError, CudaErrorKind, CudaResult, Launch};
use super::testing::ThreadOrder;

pub mod cublas;
pub mod memory;

pub use memory::{alloc_bytes, clear_views, copy, fill, free_bytes, register_view};

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
        order: i32,
        seed: u64,
    ) -> i32;
}

/// The order set by [`set_thread_order`], which overrides `$DDPM_EMU_THREAD_ORDER`.
static ORDER: Mutex<Option<ThreadOrder>> = Mutex::new(None);
/// `$DDPM_EMU_THREAD_ORDER`, parsed once.
static ENV_ORDER: OnceLock<Result<ThreadOrder, String>> = OnceLock::new();
/// Launches so far: each random-order launch draws its permutations from the seed and this.
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The environment variable that picks the thread order.
pub const THREAD_ORDER_VAR: &str = "DDPM_EMU_THREAD_ORDER";

/// The order in which a block's threads run between barriers: the one set by
/// [`set_thread_order`], else `$DDPM_EMU_THREAD_ORDER` (`index` when unset), or why that is not
/// an order.
pub fn thread_order() -> Result<ThreadOrder, String> {
    if let Some(o) = *ORDER.lock().unwrap_or_else(|e| e.into_inner()) {
        return Ok(o);
    }
    ENV_ORDER
        .get_or_init(|| match std::env::var(THREAD_ORDER_VAR) {
            Err(_) => Ok(ThreadOrder::Index),
            Ok(v) => ThreadOrder::parse(&v).ok_or_else(|| {
                format!("{THREAD_ORDER_VAR}={v:?}: expected index, reverse, random or random:SEED")
            }),
        })
        .clone()
}

/// Sets the order for the launches that follow (whatever the environment says); returns the one
/// in force before (or the environment's error).
pub fn set_thread_order(order: ThreadOrder) -> Result<ThreadOrder, String> {
    let before = thread_order();
    *ORDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(order);
    before
}

/// splitmix64's finaliser: a launch's seed from the order's seed and the launch count.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn launch(kernel: &str, cfg: Launch, params: &mut [*mut c_void]) -> CudaResult<()> {
    let name = CString::new(kernel).expect("kernel names have no NUL");
    let order = thread_order()
        .map_err(|e| CudaError::new(CudaErrorKind::Driver, format!("kernel {kernel}"), e))?;
    let n = LAUNCHES.fetch_add(1, Ordering::Relaxed);
    let (mode, seed) = match order {
        ThreadOrder::Index => (0, 0),
        ThreadOrder::Reverse => (1, 0),
        ThreadOrder::Random(s) => (2, mix(s ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
    };
    memory::install_fault_handler();
    memory::kernel_running(&name);
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
            mode,
            seed,
        )
    };
    memory::kernel_done();
    // Writes into the canary zones around any buffer: this launch's.
    if let Err(e) = memory::check_guards(kernel) {
        return Err(CudaError::new(
            CudaErrorKind::Driver,
            format!("kernel {kernel}"),
            format!("out-of-bounds write ({cfg:?}): {e}"),
        ));
    }
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
        -3 => Err(CudaError::new(
            CudaErrorKind::Unavailable,
            format!("kernel {kernel}"),
            format!("dynamic shared memory is not emulated ({cfg:?})"),
        )),
        -6 => Err(CudaError::new(
            CudaErrorKind::Unavailable,
            format!("kernel {kernel}"),
            format!(
                "the emulator runs whole warps only: a block of {}×{}×{} threads is not a multiple of 32",
                cfg.block.0, cfg.block.1, cfg.block.2
            ),
        )),
        code => Err(CudaError::new(
            CudaErrorKind::Driver,
            format!("kernel {kernel}"),
            format!("the emulator refused the launch {cfg:?} (code {code})"),
        )),
    }
}
