//! One GPU: its context, the one stream everything runs on, the embedded kernel modules (loaded
//! once), a cuBLAS handle with its workspace, device memory and launches.
//!
//! Everything goes through cudarc's thin `result` layer on raw device pointers ([`DevPtr`]), so
//! buffers can live in one planned arena and be handed around as plain numbers. Every driver and
//! cuBLAS call is checked, and an error names the op (and, for launches, the shapes).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_void, CString};

use cudarc::cublas::sys as blas_sys;

use crate::precision::Precision;
use cudarc::driver::{result, sys};

use super::blas::{Blas, BlasFailure};
use super::kernels;
use super::probe::{self, DriverStatus};

/// A device address (`CUdeviceptr`). Kernels take it as a typed pointer argument.
pub type DevPtr = u64;

/// Why a CUDA operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaErrorKind {
    /// No driver, no such device, or kernels that cannot run on it.
    Unavailable,
    OutOfMemory,
    Driver,
    Blas,
}

/// A failed CUDA operation: what was being done and what the driver or cuBLAS said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct CudaError {
    pub kind: CudaErrorKind,
    pub op: String,
    pub msg: String,
}

impl CudaError {
    pub fn new(kind: CudaErrorKind, op: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            kind,
            op: op.into(),
            msg: msg.into(),
        }
    }

    fn driver(op: impl Into<String>, e: result::DriverError) -> Self {
        let kind = if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            CudaErrorKind::OutOfMemory
        } else {
            CudaErrorKind::Driver
        };
        Self::new(kind, op, describe(e))
    }
}

pub type CudaResult<T> = Result<T, CudaError>;

/// "CUDA_ERROR_X (the driver's sentence)".
fn describe(e: result::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Grid and block of one launch, plus dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl Launch {
    /// A 1-d grid-stride launch over `n` elements: enough blocks to fill the GPU several times
    /// over, never more than needed.
    pub fn linear(n: usize, block: u32) -> Self {
        let blocks = n.div_ceil(block as usize).clamp(1, 65_535 * 8);
        Self {
            grid: (blocks as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    /// `blocks` blocks of `block` threads.
    pub fn blocks(blocks: usize, block: u32) -> Self {
        Self {
            grid: (blocks.max(1) as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    pub fn grid(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Self {
        Self {
            grid,
            block,
            shared_bytes: 0,
        }
    }

    pub fn with_shared(mut self, bytes: u32) -> Self {
        self.shared_bytes = bytes;
        self
    }

    /// The limits every GPU ddpm runs on (compute capability 8.0 and newer) puts on a launch,
    /// checked before it reaches the driver (or the emulator), so that a launch the hardware
    /// would refuse fails the same way under the emulator, with the limit named: at most
    /// [`MAX_BLOCK_THREADS`] threads a block, block dimensions up to (1024, 1024, 64), grid
    /// dimensions up to (2³¹ − 1, 65535, 65535), and dynamic shared memory up to
    /// [`MAX_SHARED_BYTES`] (more needs an opt-in attribute no kernel sets).
    pub fn check_limits(&self) -> Result<(), String> {
        let (bx, by, bz) = self.block;
        let (gx, gy, gz) = self.grid;
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        if bx == 0 || by == 0 || bz == 0 {
            return Err(format!("an empty block ({bx}×{by}×{bz})"));
        }
        if threads > u64::from(MAX_BLOCK_THREADS) {
            return Err(format!(
                "a block of {threads} threads ({bx}×{by}×{bz}) exceeds {MAX_BLOCK_THREADS} threads per block"
            ));
        }
        if bx > 1024 || by > 1024 || bz > 64 {
            return Err(format!(
                "block dimensions {bx}×{by}×{bz} exceed 1024×1024×64"
            ));
        }
        if gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
            return Err(format!(
                "grid dimensions {gx}×{gy}×{gz} exceed (2³¹ − 1)×65535×65535"
            ));
        }
        if self.shared_bytes > MAX_SHARED_BYTES {
            return Err(format!(
                "{} bytes of dynamic shared memory exceed {MAX_SHARED_BYTES} (48 KiB) without the \
                 opt-in attribute",
                self.shared_bytes
            ));
        }
        Ok(())
    }
}

/// A block of `cfg` fits in the registers of one SM given what ptxas reported for `kernel` (no
/// report, no check: built without nvcc).
fn check_registers(kernel: &str, cfg: Launch) -> Result<(), String> {
    let Some(regs) = kernels::registers(kernel) else {
        return Ok(());
    };
    let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
    let need = kernels::block_registers(regs, threads);
    if need > u64::from(kernels::REGISTERS_PER_BLOCK) {
        return Err(format!(
            "a block of {threads} threads at {regs} registers each (ptxas) needs {need} \
             registers, more than the {} of one SM",
            kernels::REGISTERS_PER_BLOCK
        ));
    }
    Ok(())
}

/// Threads in one block, on every GPU since compute capability 2.0.
pub const MAX_BLOCK_THREADS: u32 = 1024;

/// Shared memory a block may take without `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const MAX_SHARED_BYTES: u32 = 48 << 10;

/// Builds the `void**` parameter array of a launch from references to the argument values.
/// Each value must have exactly the type of the kernel's parameter: `DevPtr` for pointers,
/// `i32` for `int`, `u64`/`usize` for `size_t`, `f32` for `float`, `#[repr(C)]` structs.
#[macro_export]
macro_rules! kernel_args {
    ($($arg:expr),* $(,)?) => {
        &mut [$(::std::ptr::from_ref(&$arg).cast_mut().cast::<::std::ffi::c_void>()),*]
    };
}

/// Owned device memory, freed on drop.
#[derive(Debug)]
pub struct DeviceMemory {
    ptr: DevPtr,
    bytes: usize,
    /// Host memory standing in for device memory (the `cuda-emulator` feature).
    host: bool,
}

impl DeviceMemory {
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        #[cfg(feature = "cuda-emulator")]
        if self.host {
            if self.bytes > 0 {
                super::emulator::free_bytes(self.ptr, self.bytes);
            }
            return;
        }
        if self.bytes > 0 && !self.host {
            // SAFETY: allocated by `Gpu::alloc`; the context outlives every allocation because
            // it is the device's primary context, which is never released while the process runs.
            unsafe {
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

/// Row-major matrix operand for [`Gpu::gemm`]: leading dimension (elements between rows as
/// stored), whether to use it transposed, the stride between batch items, and the element type
/// (fp32 unless [`Mat::of`] says otherwise).
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: DevPtr,
    pub ld: usize,
    pub transposed: bool,
    pub batch_stride: usize,
    pub dtype: Precision,
}

impl Mat {
    pub fn new(ptr: DevPtr, ld: usize) -> Self {
        Self {
            ptr,
            ld,
            transposed: false,
            batch_stride: 0,
            dtype: Precision::Fp32,
        }
    }
    /// The same operand stored as `dtype`.
    pub fn of(mut self, dtype: Precision) -> Self {
        self.dtype = dtype;
        self
    }
    pub fn t(mut self) -> Self {
        self.transposed = !self.transposed;
        self
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.batch_stride = s;
        self
    }
}

/// An open GPU. Not `Send`: its context is current on the thread that opened it.
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    dev: sys::CUdevice,
    stream: sys::CUstream,
    modules: Vec<sys::CUmodule>,
    functions: HashMap<&'static str, sys::CUfunction>,
    blas: Blas,
    _blas_workspace: DeviceMemory,
    /// Device allocations made so far and their bytes: a step must not add to them.
    allocations: Cell<usize>,
    allocated_bytes: Cell<usize>,
    /// The `cuda-emulator` feature's CPU stand-in: no driver handle above is used.
    emulated: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Bytes of the cuBLAS workspace (what cuBLAS recommends for Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

/// A failed cuBLAS call `op` as a [`CudaError`].
fn blas_error(op: &'static str) -> impl Fn(BlasFailure) -> CudaError {
    move |e| CudaError::new(CudaErrorKind::Blas, op, e.to_string())
}

/// What every handle gets, on a GPU and under the emulator alike: the stream, the math mode
/// and a workspace (from `workspace`, owned by the caller as long as the handle lives).
fn configure_blas(
    blas: &Blas,
    stream: blas_sys::cudaStream_t,
    workspace: impl FnOnce() -> CudaResult<DeviceMemory>,
) -> CudaResult<DeviceMemory> {
    // SAFETY: a live handle; `stream` belongs to the current context.
    unsafe { blas.set_stream(stream) }.map_err(blas_error("cublasSetStream"))?;
    // Default math (full fp32, no TF32, so fp32 results agree with the CPU reference) with
    // reduced-precision reductions disallowed (the enum's value is CUBLAS_DEFAULT_MATH, 0, with
    // that flag): otherwise a split-K GEMM with a bf16/fp16 C may add its partial results in
    // 16 bits, rounding each. The emulator models that, and without this flag the exact-integer
    // and attention-bound tests fail under it.
    // SAFETY: a live handle.
    unsafe {
        blas.set_math_mode(blas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
    }
    .map_err(blas_error("cublasSetMathMode"))?;
    let ws = workspace()?;
    // SAFETY: `ws` lives as long as the handle (both owned by the Gpu).
    unsafe { blas.set_workspace(ws.ptr as *mut c_void, ws.bytes) }
        .map_err(blas_error("cublasSetWorkspace"))?;
    Ok(ws)
}

impl Gpu {
    /// Opens device `ordinal`: checks the driver and the kernel image first, so a machine
    /// without a GPU gets a sentence, never a panic.
    pub fn open(ordinal: usize) -> CudaResult<Self> {
        #[cfg(feature = "cuda-emulator")]
        return Self::emulated(ordinal);
        #[cfg(not(feature = "cuda-emulator"))]
        Self::open_driver(ordinal)
    }

    /// The CPU emulation of a GPU (the `cuda-emulator` feature; see `super::emulator`): its
    /// cuBLAS handle is the emulator's, set up by the same calls as on a GPU.
    #[cfg(feature = "cuda-emulator")]
    fn emulated(ordinal: usize) -> CudaResult<Self> {
        let blas = Blas::create(true).map_err(blas_error("cublasCreate"))?;
        let workspace = || {
            let ptr = super::emulator::alloc_bytes(BLAS_WORKSPACE, "the cuBLAS workspace")?;
            Ok(DeviceMemory {
                ptr,
                bytes: BLAS_WORKSPACE,
                host: true,
            })
        };
        let ws = configure_blas(&blas, std::ptr::null_mut(), workspace)?;
        Ok(Self {
            ordinal,
            name: "CPU emulator (not a GPU)".into(),
            compute_capability: (9, 0),
            total_memory: 0,
            dev: 0,
            stream: std::ptr::null_mut(),
            modules: Vec::new(),
            functions: HashMap::new(),
            blas,
            _blas_workspace: ws,
            allocations: Cell::new(1),
            allocated_bytes: Cell::new(BLAS_WORKSPACE),
            emulated: true,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Whether this is the `cuda-emulator` stand-in rather than a real device.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    #[cfg_attr(feature = "cuda-emulator", allow(dead_code))]
    fn open_driver(ordinal: usize) -> CudaResult<Self> {
        let unavailable = |msg: String| CudaError::new(CudaErrorKind::Unavailable, "open GPU", msg);
        if !kernels::built_in() {
            return Err(unavailable(
                "this ddpm was built without nvcc, so it carries no CUDA kernels \
                 (install CUDA 13 or run scripts/install-nvcc.sh, then rebuild)"
                    .into(),
            ));
        }
        let devices = match probe::probe() {
            DriverStatus::NoDriver => {
                return Err(unavailable(
                    "no CUDA driver on this machine (libcuda could not be loaded)".into(),
                ))
            }
            DriverStatus::Error { message } => {
                return Err(unavailable(format!("the CUDA driver failed: {message}")))
            }
            DriverStatus::Ready { devices, .. } => devices,
        };
        let info = devices.get(ordinal).ok_or_else(|| {
            unavailable(format!(
                "there is no CUDA device {ordinal} ({} device{} found)",
                devices.len(),
                if devices.len() == 1 { "" } else { "s" }
            ))
        })?;
        if !kernels::runs_on(info.compute_capability) {
            let (major, minor) = info.compute_capability;
            return Err(unavailable(format!(
                "{} has compute capability {major}.{minor}; the built-in kernels need 8.0 or newer \
                 (they are compiled for {})",
                info.name,
                kernels::TARGETS.join(", ")
            )));
        }
        let d = |op: &str| {
            let op = op.to_string();
            move |e| CudaError::driver(op, e)
        };
        result::init().map_err(d("cuInit"))?;
        let dev = result::device::get(ordinal as i32).map_err(d("cuDeviceGet"))?;
        // SAFETY: `dev` is a valid device; the primary context is retained for the process.
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(d("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: `ctx` was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(d("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(d("cuStreamCreate"))?;

        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for m in kernels::MODULES {
            // SAFETY: the fatbin bytes are a complete image embedded by build.rs; the driver
            // copies what it needs before returning.
            let module =
                unsafe { result::module::load_data(m.fatbin.as_ptr().cast()) }.map_err(|e| {
                    let (major, minor) = info.compute_capability;
                    CudaError::new(
                        CudaErrorKind::Unavailable,
                        format!("load kernel module {}", m.name),
                        format!(
                            "{} (the image holds {} and the GPU is {major}.{minor})",
                            describe(e),
                            kernels::TARGETS.join(", ")
                        ),
                    )
                })?;
            modules.push(module);
            for &k in m.kernels {
                let name = CString::new(k).expect("kernel names have no NUL");
                // SAFETY: `module` was loaded above and stays loaded while `self` lives.
                let f = unsafe { result::module::get_function(module, name) }
                    .map_err(d(&format!("find kernel {k} in module {}", m.name)))?;
                functions.insert(k, f);
            }
        }

        // SAFETY: the context is current on this thread.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(unavailable(
                "libcublas could not be loaded (is CUDA's cuBLAS installed?)".into(),
            ));
        }
        let mut handle = Blas::create(false).map_err(blas_error("cublasCreate"))?;
        let workspace = || {
            // SAFETY: plain device allocation.
            let ptr = unsafe { result::malloc_sync(BLAS_WORKSPACE) }
                .map_err(d("allocate the cuBLAS workspace"))?;
            Ok(DeviceMemory {
                ptr,
                bytes: BLAS_WORKSPACE,
                host: false,
            })
        };
        let ws = match configure_blas(&handle, stream.cast(), workspace) {
            Ok(ws) => ws,
            Err(e) => {
                // SAFETY: nothing was queued on the handle.
                unsafe { handle.destroy() };
                return Err(e);
            }
        };
        Ok(Self {
            ordinal,
            name: info.name.clone(),
            compute_capability: info.compute_capability,
            total_memory: info.memory_bytes,
            dev,
            stream,
            modules,
            functions,
            blas: handle,
            _blas_workspace: ws,
            allocations: Cell::new(1),
            allocated_bytes: Cell::new(BLAS_WORKSPACE),
            emulated: false,
            _not_send: std::marker::PhantomData,
        })
    }

    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    /// Device allocations made through this `Gpu` so far (count, bytes).
    pub fn allocation_stats(&self) -> (usize, usize) {
        (self.allocations.get(), self.allocated_bytes.get())
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> CudaResult<(usize, usize)> {
        if self.emulated {
            return Ok((0, 0));
        }
        result::mem_get_info().map_err(|e| CudaError::driver("cuMemGetInfo", e))
    }

    /// Allocates `bytes` of device memory for `what`; running out names what and how much.
    pub fn alloc(&self, bytes: usize, what: &str) -> CudaResult<DeviceMemory> {
        if bytes == 0 {
            return Ok(DeviceMemory {
                ptr: 0,
                bytes: 0,
                host: self.emulated,
            });
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            let ptr = super::emulator::alloc_bytes(bytes, what)?;
            self.allocations.set(self.allocations.get() + 1);
            self.allocated_bytes.set(self.allocated_bytes.get() + bytes);
            return Ok(DeviceMemory {
                ptr,
                bytes,
                host: true,
            });
        }
        // SAFETY: plain device allocation in the current context.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(ptr) => {
                self.allocations.set(self.allocations.get() + 1);
                self.allocated_bytes.set(self.allocated_bytes.get() + bytes);
                Ok(DeviceMemory {
                    ptr,
                    bytes,
                    host: false,
                })
            }
            Err(e) => {
                let free = self.memory_info().map(|(f, _)| f).unwrap_or(0);
                let mut err = CudaError::driver(format!("allocate {what}"), e);
                err.msg = format!(
                    "{} while asking for {:.1} MiB ({:.1} MiB free of {:.1} MiB)",
                    err.msg,
                    bytes as f64 / 1048576.0,
                    free as f64 / 1048576.0,
                    self.total_memory as f64 / 1048576.0
                );
                Err(err)
            }
        }
    }

    /// Copies host values into device memory at `dst` (queued on the stream; `src` may be
    /// dropped as soon as this returns).
    pub fn upload<T: bytemuck::Pod>(&self, dst: DevPtr, src: &[T], what: &str) -> CudaResult<()> {
        if src.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            let bytes = std::mem::size_of_val(src);
            let (d, s) = (dst as *mut u8, src.as_ptr().cast());
            // SAFETY: `src` is host memory of `bytes`; the emulator checks `dst`.
            return unsafe { super::emulator::copy(d, s, bytes, (true, false), what) };
        }
        // SAFETY: the caller hands a device range of at least `size_of_val(src)` bytes.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| CudaError::driver(format!("upload {what}"), e))
    }

    /// Uploads f32 host values stored as `dt` (rounded to nearest even) at `dst`.
    pub fn upload_as(&self, dst: DevPtr, dt: Precision, src: &[f32], what: &str) -> CudaResult<()> {
        match dt {
            Precision::Fp32 => self.upload(dst, src, what),
            _ => self.upload(dst, &dt.encode(src), what),
        }
    }

    /// Downloads `dst.len()` values stored as `dt` at `src`, widened to f32.
    pub fn download_as(
        &self,
        dst: &mut [f32],
        src: DevPtr,
        dt: Precision,
        what: &str,
    ) -> CudaResult<()> {
        match dt {
            Precision::Fp32 => self.download(dst, src, what),
            _ => {
                let mut raw = vec![0u8; dst.len() * dt.bytes()];
                self.download(&mut raw, src, what)?;
                dst.copy_from_slice(&dt.decode(&raw));
                Ok(())
            }
        }
    }

    /// Copies device memory at `src` into `dst`, waiting for the stream.
    pub fn download<T: bytemuck::Pod>(
        &self,
        dst: &mut [T],
        src: DevPtr,
        what: &str,
    ) -> CudaResult<()> {
        if dst.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            let bytes = std::mem::size_of_val(dst);
            let (d, s) = (dst.as_mut_ptr().cast(), src as *const u8);
            // SAFETY: `dst` is host memory of `bytes`; the emulator checks `src`.
            return unsafe { super::emulator::copy(d, s, bytes, (false, true), what) };
        }
        // SAFETY: the caller hands a device range of at least `size_of_val(dst)` bytes.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(|e| CudaError::driver(format!("download {what}"), e))?;
        self.synchronize(what)
    }

    /// dst[..bytes] = src[..bytes] on the stream.
    pub fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, what: &str) -> CudaResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            let (d, s) = (dst as *mut u8, src as *const u8);
            // SAFETY: the emulator checks both ranges.
            return unsafe { super::emulator::copy(d, s, bytes, (true, true), what) };
        }
        // SAFETY: both ranges are device memory of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(|e| CudaError::driver(format!("copy {what}"), e))
    }

    /// dst[..bytes] = 0 on the stream.
    pub fn zero(&self, dst: DevPtr, bytes: usize, what: &str) -> CudaResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::fill(dst, bytes, 0, what);
        }
        // SAFETY: `dst` is device memory of at least `bytes`.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream) }
            .map_err(|e| CudaError::driver(format!("zero {what}"), e))
    }

    /// Under the emulator, tells the memory checker that `bytes` at `ptr`, inside the allocation
    /// `parent` (the activation arena), are one buffer, followed by `zone` bytes nothing may
    /// write (up to the next buffer); `what` names it in reports. Nothing on a GPU.
    pub fn register_sub_buffer(
        &self,
        parent: DevPtr,
        ptr: DevPtr,
        (bytes, zone): (usize, usize),
        what: impl FnOnce() -> String,
    ) {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            super::emulator::register_view(parent, ptr, bytes, zone, what());
        }
        #[cfg(not(feature = "cuda-emulator"))]
        let _ = (parent, ptr, bytes, zone, what);
    }

    /// Forgets the buffers registered inside `parent` (a new pass reuses the arena).
    pub fn clear_sub_buffers(&self, parent: DevPtr) {
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            super::emulator::clear_views(parent);
        }
        #[cfg(not(feature = "cuda-emulator"))]
        let _ = parent;
    }

    /// Waits for everything queued so far; an asynchronous kernel fault surfaces here.
    pub fn synchronize(&self, after: &str) -> CudaResult<()> {
        if self.emulated {
            return Ok(());
        }
        // SAFETY: the stream belongs to this context.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(|e| CudaError::driver(format!("wait for the GPU after {after}"), e))
    }

    /// Launches `kernel`. `shapes` is only called to describe a failure.
    pub fn launch(
        &self,
        kernel: &str,
        cfg: Launch,
        params: &mut [*mut c_void],
        shapes: impl FnOnce() -> String,
    ) -> CudaResult<()> {
        if cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
            return Ok(()); // nothing to do (an empty tensor)
        }
        if let Err(why) = cfg
            .check_limits()
            .and_then(|()| check_registers(kernel, cfg))
        {
            return Err(CudaError::new(
                CudaErrorKind::Driver,
                format!("kernel {kernel} {}", shapes()),
                format!("launch {cfg:?} refused: {why}"),
            ));
        }
        #[cfg(feature = "cuda-emulator")]
        if self.emulated {
            return super::emulator::launch(kernel, cfg, params).map_err(|mut e| {
                e.op = format!("{} {}", e.op, shapes());
                e
            });
        }
        let f = *self.functions.get(kernel).ok_or_else(|| {
            CudaError::new(
                CudaErrorKind::Unavailable,
                format!("kernel {kernel}"),
                "not in the embedded modules (was it declared `extern \"C\" __global__` on one line?)",
            )
        })?;
        // SAFETY: `f` comes from a loaded module; the caller passes exactly the kernel's
        // parameters (see `kernel_args!`) and device ranges that cover what the kernel touches.
        unsafe {
            result::launch_kernel(
                f,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream,
                params,
            )
        }
        .map_err(|e| CudaError::driver(format!("kernel {kernel} {}", shapes()), e))
    }

    /// Row-major C = α·op(A)·op(B) + β·C, `batch` times with the operands' batch strides.
    /// C: (m, n), op(A): (m, k), op(B): (k, n). All fp32: SGEMM (never TF32, so fp32 mode is
    /// comparable with the CPU). A and B bf16 or fp16 (the same type): tensor cores with fp32
    /// accumulation and fp32 α, β (`cublasGemmStridedBatchedEx`, compute type 32F), C of the
    /// same type or fp32 (weight gradients accumulate in fp32). k = 0 is C = β·C, done here.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        op: &str,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: Mat,
        b: Mat,
        beta: f32,
        c: Mat,
        batch: usize,
    ) -> CudaResult<()> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let flag = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let fail = |e: BlasFailure| {
            CudaError::new(
                CudaErrorKind::Blas,
                format!("{op}: gemm m={m} n={n} k={k} batch={batch}"),
                e.to_string(),
            )
        };
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| {
                CudaError::new(
                    CudaErrorKind::Blas,
                    format!("{op}: gemm"),
                    format!("dimension {v} exceeds cuBLAS's 32-bit range"),
                )
            })
        };
        let mixed = a.dtype != Precision::Fp32 || b.dtype != Precision::Fp32;
        if mixed
            && (a.dtype != b.dtype || !matches!(c.dtype, Precision::Fp32) && c.dtype != a.dtype)
        {
            return Err(CudaError::new(
                CudaErrorKind::Blas,
                format!("{op}: gemm"),
                format!(
                    "unsupported operand types A {} B {} C {} (A and B must match; C is theirs or fp32)",
                    a.dtype, b.dtype, c.dtype
                ),
            ));
        }
        if !mixed && c.dtype != Precision::Fp32 {
            return Err(CudaError::new(
                CudaErrorKind::Blas,
                format!("{op}: gemm"),
                format!("fp32 operands with a {} result", c.dtype),
            ));
        }
        if k == 0 {
            return self.scale_c(op, (m, n), beta, c, batch);
        }
        if mixed {
            let ty = |p: Precision| match p {
                Precision::Fp32 => cudarc::cublas::sys::cudaDataType::CUDA_R_32F,
                Precision::Bf16 => cudarc::cublas::sys::cudaDataType::CUDA_R_16BF,
                Precision::Fp16 => cudarc::cublas::sys::cudaDataType::CUDA_R_16F,
            };
            // SAFETY: as below; α and β are f32, as compute type 32F requires.
            return unsafe {
                self.blas.gemm_strided_batched_ex(
                    flag(b.transposed),
                    flag(a.transposed),
                    int(n)?,
                    int(m)?,
                    int(k)?,
                    (&alpha as *const f32).cast(),
                    b.ptr as *const c_void,
                    ty(b.dtype),
                    int(b.ld)?,
                    b.batch_stride as i64,
                    a.ptr as *const c_void,
                    ty(a.dtype),
                    int(a.ld)?,
                    a.batch_stride as i64,
                    (&beta as *const f32).cast(),
                    c.ptr as *mut c_void,
                    ty(c.dtype),
                    int(c.ld)?,
                    c.batch_stride as i64,
                    int(batch)?,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(fail);
        }
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: swap the operands and m/n.
        // SAFETY: the caller guarantees the device ranges cover the described matrices.
        unsafe {
            self.blas.sgemm_strided_batched(
                flag(b.transposed),
                flag(a.transposed),
                int(n)?,
                int(m)?,
                int(k)?,
                &alpha,
                b.ptr as *const f32,
                int(b.ld)?,
                b.batch_stride as i64,
                a.ptr as *const f32,
                int(a.ld)?,
                a.batch_stride as i64,
                &beta,
                c.ptr as *mut f32,
                int(c.ld)?,
                c.batch_stride as i64,
                int(batch)?,
            )
        }
        .map_err(fail)
    }

    /// C = β·C: a GEMM with k = 0, whose product is an empty sum. Not passed to cuBLAS, whose
    /// handling of k = 0 varies by path, and whose checks refuse the leading dimension 0 that
    /// an empty row-major A (m, 0) has. β = 1 leaves C as it is; β = 0 writes zeros.
    fn scale_c(
        &self,
        op: &str,
        (m, n): (usize, usize),
        beta: f32,
        c: Mat,
        batch: usize,
    ) -> CudaResult<()> {
        if beta == 1.0 {
            return Ok(());
        }
        // Items that share one C (stride 0) are scaled once.
        let items = if c.batch_stride == 0 { 1 } else { batch };
        self.launch(
            &c.dtype.kernel("gemm_scale_c"),
            Launch::linear(m * n * items, 256),
            crate::kernel_args![c.ptr, m, n, c.ld, c.batch_stride, items, beta],
            || format!("{op}: gemm m={m} n={n} k=0 batch={batch} beta={beta}"),
        )
    }

    /// Times `work` on the device with events; returns milliseconds.
    pub fn time_ms(&self, work: impl FnOnce() -> CudaResult<()>) -> CudaResult<f32> {
        if self.emulated {
            let start = std::time::Instant::now();
            work()?;
            return Ok(start.elapsed().as_secs_f32() * 1e3);
        }
        let d = |op: &'static str| move |e| CudaError::driver(op, e);
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = result::event::create(flags).map_err(d("cuEventCreate"))?;
        let end = result::event::create(flags).map_err(d("cuEventCreate"))?;
        let outcome = (|| {
            // SAFETY: events and stream belong to this context.
            unsafe { result::event::record(start, self.stream) }.map_err(d("cuEventRecord"))?;
            work()?;
            unsafe { result::event::record(end, self.stream) }.map_err(d("cuEventRecord"))?;
            unsafe { result::event::synchronize(end) }.map_err(d("cuEventSynchronize"))?;
            unsafe { result::event::elapsed(start, end) }.map_err(d("cuEventElapsedTime"))
        })();
        // SAFETY: both events were created above and are no longer used.
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        outcome
    }

    /// The device's own ordinal handle (for attribute queries).
    pub fn device(&self) -> sys::CUdevice {
        self.dev
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.emulated {
            // SAFETY: the emulator ran every call to completion.
            unsafe { self.blas.destroy() };
            return;
        }
        // SAFETY: every handle below was created by `open` and is not used after this.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            self.blas.destroy();
            for &m in &self.modules {
                let _ = result::module::unload(m);
            }
            let _ = result::stream::destroy(self.stream);
        }
    }
}
