//! Emulated device memory: host allocations standing in for `cuMemAlloc`'s, and a registry of
//! them (address, size, what it is for) so that the emulator's cuBLAS can check that every
//! operand lies inside one live allocation, and name the buffer when it does not.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::super::device::{CudaError, CudaErrorKind, CudaResult, DevPtr};

/// Alignment of emulated allocations, as cuMemAlloc's.
const ALIGN: usize = 256;

struct Allocation {
    bytes: usize,
    what: String,
}

/// Live allocations by start address.
static LIVE: Mutex<BTreeMap<DevPtr, Allocation>> = Mutex::new(BTreeMap::new());

fn live() -> std::sync::MutexGuard<'static, BTreeMap<DevPtr, Allocation>> {
    // A panic while the lock was held left the map consistent (every update is one call).
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host memory standing in for `bytes` (> 0) of device memory for `what`, filled with 0xFF
/// bytes (NaN as f32), so a kernel that forgets to write an output is caught the way an
/// uninitialised GPU buffer would not be.
pub fn alloc_bytes(bytes: usize, what: &str) -> CudaResult<DevPtr> {
    let layout = Layout::from_size_align(bytes, ALIGN)
        .map_err(|e| CudaError::new(CudaErrorKind::OutOfMemory, "emulated alloc", e.to_string()))?;
    // SAFETY: `bytes` > 0 (the caller skips empty allocations); checked for null below.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        return Err(CudaError::new(
            CudaErrorKind::OutOfMemory,
            format!("allocate {what}"),
            format!("host allocation of {bytes} bytes for the emulator failed"),
        ));
    }
    // SAFETY: `p` points to `bytes` writable bytes.
    unsafe { p.write_bytes(0xFF, bytes) };
    live().insert(
        p as DevPtr,
        Allocation {
            bytes,
            what: what.to_string(),
        },
    );
    Ok(p as DevPtr)
}

/// Frees what [`alloc_bytes`] returned.
pub fn free_bytes(ptr: DevPtr, bytes: usize) {
    live().remove(&ptr);
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

/// Ok when `[ptr, ptr + bytes)` lies inside one live allocation; otherwise a sentence naming
/// the allocation it starts in (and by how much it overruns), or saying it is in none.
pub fn check_range(ptr: DevPtr, bytes: usize) -> Result<(), String> {
    let map = live();
    let Some((&start, a)) = map.range(..=ptr).next_back() else {
        return Err(format!(
            "{ptr:#x} (+{bytes} bytes) is not in any emulated device allocation"
        ));
    };
    let offset = ptr - start;
    if offset >= a.bytes as u64 {
        return Err(format!(
            "{ptr:#x} (+{bytes} bytes) is not in any emulated device allocation \
             ({} bytes past the end of {} ({} bytes))",
            offset - a.bytes as u64,
            a.what,
            a.bytes
        ));
    }
    let end = offset as usize + bytes;
    if end > a.bytes {
        return Err(format!(
            "bytes {offset}..{end} of {} run {} bytes past its end ({} bytes)",
            a.what,
            end - a.bytes,
            a.bytes
        ));
    }
    Ok(())
}
