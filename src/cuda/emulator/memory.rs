//! Emulated device memory, with a memory checker: host mappings standing in for `cuMemAlloc`'s,
//! each between guard zones, and a registry of them (address, size, what it is for) — and of
//! the buffers the planner places inside the activation arena ([`register_view`]) — so that
//! accesses past either end are reported with the kernel, the buffer and the offset:
//!
//! - each allocation is its own mapping: an inaccessible guard page, a zone of canary bytes,
//!   the buffer, then fewer than [`ALIGN`] canary bytes and another guard page. The buffer ends
//!   as close to the tail guard page as its alignment allows, so a kernel that reads or writes
//!   even one element past the end of a buffer whose size is a multiple of 16 bytes faults at
//!   once; the fault handler ([`install_fault_handler`]) names the kernel, the block and thread,
//!   the buffer, the offset and whether it was a read or a write, and the process stops (as a
//!   GPU's illegal address would stop the context);
//! - writes that stay inside a canary zone (before the start, or in the few bytes after an end
//!   that is not a multiple of 16) are found by [`check_guards`] after every launch, reported
//!   as an error of that launch, and the zone is restored. Reads there see canary bytes (0xFE:
//!   −1.7·10³⁸ as f32 and bf16, NaN as fp16) rather than a neighbour's data;
//! - buffers the planner places in an arena are registered as views of it, with canary bytes
//!   after each one (the rounding to the arena's alignment and a guard the emulated backend
//!   leaves between buffers), checked the same way;
//! - host copies and the emulator's cuBLAS check their ranges against the registry first;
//! - misaligned accesses: build.rs compiles the emulated kernels with `-fsanitize=alignment`
//!   trapping, so a load or store at an address that is not a multiple of its type's alignment
//!   (which a GPU refuses, and x86 would not notice) stops the process, and the same handler
//!   names the kernel, the block and the thread.
//!
//! Emulated allocations are aligned to 16 bytes (the widest vector access), not to cuMemAlloc's
//! 256, so that their ends can sit at a page boundary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use super::super::device::{CudaError, CudaErrorKind, CudaResult, DevPtr};

/// Alignment of emulated allocations.
pub const ALIGN: usize = 16;
/// Canary bytes the guard zones are filled with.
const CANARY: u8 = 0xFE;
/// Canary bytes at least before each allocation.
const FRONT_ZONE: usize = 256;

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

/// One registered range.
struct Region {
    bytes: usize,
    what: String,
    kind: Kind,
}

enum Kind {
    /// A mapping of its own: `map` bytes from `base`, guard pages at both ends.
    Allocation { base: usize, map: usize },
    /// A buffer inside the allocation that starts at `parent` (an arena buffer), with canary
    /// bytes from its end up to `zone_end`.
    View { parent: DevPtr, zone_end: DevPtr },
}

impl Region {
    /// The canary zones: [start, end) byte ranges.
    fn zones(&self, start: DevPtr, page: usize) -> [(usize, usize); 2] {
        let (s, e) = (start as usize, start as usize + self.bytes);
        match self.kind {
            Kind::Allocation { base, map } => [(base + page, s), (e, base + map - page)],
            Kind::View { zone_end, .. } => [(e, zone_end as usize), (e, e)],
        }
    }
}

/// Every live allocation, and every arena view, by start address (a view may start where its
/// allocation does, so they are kept apart).
struct Registry {
    allocations: BTreeMap<DevPtr, Region>,
    views: BTreeMap<DevPtr, Region>,
}

static LIVE: Mutex<Registry> = Mutex::new(Registry {
    allocations: BTreeMap::new(),
    views: BTreeMap::new(),
});

fn live() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while the lock was held left the maps consistent (every update is one call).
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host memory standing in for `bytes` (> 0) of device memory for `what`, between guard zones,
/// filled with 0xFF bytes (NaN as f32), so a kernel that forgets to write an output is caught
/// the way an uninitialised GPU buffer would not be.
pub fn alloc_bytes(bytes: usize, what: &str) -> CudaResult<DevPtr> {
    install_fault_handler();
    let page = page();
    let oom =
        |msg: String| CudaError::new(CudaErrorKind::OutOfMemory, format!("allocate {what}"), msg);
    let usable = bytes
        .checked_add(FRONT_ZONE + ALIGN)
        .map(|b| b.next_multiple_of(page))
        .ok_or_else(|| oom(format!("{bytes} bytes is too large")))?;
    let map = usable + 2 * page;
    // SAFETY: a fresh private anonymous mapping; checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(oom(format!(
            "mapping {map} bytes of host memory for the emulator failed"
        )));
    }
    let base = base as usize;
    // SAFETY: both guard pages lie in the mapping.
    unsafe {
        libc::mprotect(base as *mut libc::c_void, page, libc::PROT_NONE);
        libc::mprotect(
            (base + map - page) as *mut libc::c_void,
            page,
            libc::PROT_NONE,
        );
    }
    let tail = base + page + usable;
    let start = (tail - bytes) / ALIGN * ALIGN;
    // SAFETY: [base + page, tail) is the accessible part of the mapping.
    unsafe {
        std::ptr::write_bytes((base + page) as *mut u8, CANARY, start - (base + page));
        std::ptr::write_bytes(start as *mut u8, 0xFF, bytes);
        std::ptr::write_bytes((start + bytes) as *mut u8, CANARY, tail - (start + bytes));
    }
    live().allocations.insert(
        start as DevPtr,
        Region {
            bytes,
            what: what.to_string(),
            kind: Kind::Allocation { base, map },
        },
    );
    Ok(start as DevPtr)
}

/// Frees what [`alloc_bytes`] returned, with the views registered inside it.
pub fn free_bytes(ptr: DevPtr, _bytes: usize) {
    let mut reg = live();
    let Some(region) = reg.allocations.remove(&ptr) else {
        return;
    };
    reg.views
        .retain(|_, r| !matches!(r.kind, Kind::View { parent, .. } if parent == ptr));
    if let Kind::Allocation { base, map: len } = region.kind {
        // SAFETY: the mapping made by `alloc_bytes`, no longer registered.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
}

/// Registers `bytes` at `ptr`, inside the allocation at `parent`, as a buffer of its own named
/// `what`, with the `zone` bytes after it filled with canaries (up to the next buffer).
pub fn register_view(parent: DevPtr, ptr: DevPtr, bytes: usize, zone: usize, what: String) {
    let zone_end = ptr + (bytes + zone) as u64;
    let mut reg = live();
    let inside = reg
        .allocations
        .get(&parent)
        .is_some_and(|p| ptr >= parent && zone_end <= parent + p.bytes as u64);
    if !inside {
        return; // not ours to guard (the caller's arena bookkeeping reports overflows)
    }
    // SAFETY: checked above to lie inside `parent`'s allocation.
    unsafe { std::ptr::write_bytes((ptr + bytes as u64) as *mut u8, CANARY, zone) };
    reg.views.insert(
        ptr,
        Region {
            bytes,
            what,
            kind: Kind::View { parent, zone_end },
        },
    );
}

/// Forgets every view inside the allocation at `parent` (a new pass reuses the arena).
pub fn clear_views(parent: DevPtr) {
    live()
        .views
        .retain(|_, r| !matches!(r.kind, Kind::View { parent: p, .. } if p == parent));
}

/// The region of `map` holding `ptr`: (start, region). Views do not overlap, nor allocations.
fn holding(map: &BTreeMap<DevPtr, Region>, ptr: DevPtr) -> Option<(DevPtr, &Region)> {
    map.range(..=ptr)
        .next_back()
        .filter(|(&s, r)| ptr < s + r.bytes as u64)
        .map(|(&s, r)| (s, r))
}

/// The innermost region holding `ptr`: an arena view, else an allocation that has no views
/// (in an arena, the space between its buffers belongs to none).
fn containing(reg: &Registry, ptr: DevPtr) -> Option<(DevPtr, &Region)> {
    if let Some(v) = holding(&reg.views, ptr) {
        return Some(v);
    }
    let (start, a) = holding(&reg.allocations, ptr)?;
    let end = start + a.bytes as u64;
    let has_views = reg.views.range(start..end).next().is_some();
    (!has_views).then_some((start, a))
}

/// Ok when `[ptr, ptr + bytes)` lies inside one live allocation (inside one arena buffer when
/// it starts in one); otherwise a sentence naming the buffer it starts in (and by how much it
/// overruns it), or saying it is in none.
pub fn check_range(ptr: DevPtr, bytes: usize) -> Result<(), String> {
    let reg = live();
    let Some((start, r)) = containing(&reg, ptr) else {
        // In no allocation; or in an arena's gap between views (a guard zone), where the
        // nearest view tells more.
        let near = nearest(&reg.views, ptr).or_else(|| nearest(&reg.allocations, ptr));
        return Err(match near {
            Some(near) => format!(
                "{ptr:#x} (+{bytes} bytes) is not in any emulated device allocation ({near})"
            ),
            None => format!("{ptr:#x} (+{bytes} bytes) is not in any emulated device allocation"),
        });
    };
    let offset = (ptr - start) as usize;
    let end = offset + bytes;
    if end > r.bytes {
        return Err(format!(
            "bytes {offset}..{end} of {} run {} bytes past its end ({} bytes)",
            r.what,
            end - r.bytes,
            r.bytes
        ));
    }
    Ok(())
}

/// "N bytes past the end of X" / "N bytes before the start of X" for the region nearest `ptr`.
fn nearest(map: &BTreeMap<DevPtr, Region>, ptr: DevPtr) -> Option<String> {
    let before = map
        .range(..=ptr)
        .next_back()
        .map(|(&s, r)| (ptr - (s + r.bytes as u64), r));
    let after = map.range(ptr..).next().map(|(&s, r)| (s - ptr, r));
    match (before, after) {
        (Some((d, r)), Some((e, _))) if d <= e => Some(format!(
            "{d} bytes past the end of {} ({} bytes)",
            r.what, r.bytes
        )),
        (_, Some((e, r))) => Some(format!(
            "{e} bytes before the start of {} ({} bytes)",
            r.what, r.bytes
        )),
        (Some((d, r)), None) => Some(format!(
            "{d} bytes past the end of {} ({} bytes)",
            r.what, r.bytes
        )),
        (None, None) => None,
    }
}

/// dst ← src, `bytes` of them (ranges may overlap), after checking both against the registry
/// (`dst_emulated`/`src_emulated`: which side is emulated device memory; the other is host
/// memory the caller owns).
///
/// # Safety
/// The host side must be valid for `bytes` bytes.
pub unsafe fn copy(
    dst: *mut u8,
    src: *const u8,
    bytes: usize,
    (dst_emulated, src_emulated): (bool, bool),
    what: &str,
) -> CudaResult<()> {
    for (emulated, p, side) in [
        (dst_emulated, dst as DevPtr, "to"),
        (src_emulated, src as DevPtr, "from"),
    ] {
        if emulated {
            check_range(p, bytes).map_err(|e| {
                CudaError::new(
                    CudaErrorKind::Driver,
                    format!("copy {what}"),
                    format!("{side} {e}"),
                )
            })?;
        }
    }
    std::ptr::copy(src, dst, bytes);
    Ok(())
}

/// Device memory at `dst` set to `byte`, after checking the range.
pub fn fill(dst: DevPtr, bytes: usize, byte: u8, what: &str) -> CudaResult<()> {
    check_range(dst, bytes)
        .map_err(|e| CudaError::new(CudaErrorKind::Driver, format!("zero {what}"), e))?;
    // SAFETY: checked to lie inside an emulated allocation.
    unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
    Ok(())
}

/// Every canary zone intact after `kernel` ran; otherwise which buffer's zone was written, at
/// which offsets (the zones are restored).
pub fn check_guards(kernel: &str) -> Result<(), String> {
    let page = page();
    let reg = live();
    let mut report = String::new();
    for (&start, r) in reg.allocations.iter().chain(reg.views.iter()) {
        for (zs, ze) in r.zones(start, page) {
            if zs >= ze {
                continue;
            }
            // SAFETY: zones lie in the accessible part of a live mapping.
            let zone = unsafe { std::slice::from_raw_parts_mut(zs as *mut u8, ze - zs) };
            let Some(first) = zone.iter().position(|&b| b != CANARY) else {
                continue;
            };
            let last = zone.iter().rposition(|&b| b != CANARY).unwrap_or(first);
            let (a, b) = (zs + first, zs + last + 1);
            let s = start as usize;
            let _ = if a >= s {
                write!(
                    report,
                    "kernel {kernel} wrote past the end of {} ({} bytes): bytes {}..{} after its end \
                     (offsets {}..{}); ",
                    r.what,
                    r.bytes,
                    a - (s + r.bytes),
                    b - (s + r.bytes),
                    a - s,
                    b - s
                )
            } else {
                write!(
                    report,
                    "kernel {kernel} wrote before the start of {} ({} bytes): offsets -{}..-{}; ",
                    r.what,
                    r.bytes,
                    s - a,
                    s - b
                )
            };
            zone.fill(CANARY);
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report.trim_end_matches("; ").to_string())
    }
}

// ---- the fault handler ------------------------------------------------------------------------

/// The kernel running now (a NUL-terminated name the launch keeps alive), for the fault report.
static RUNNING: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static RUNNING_LEN: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    /// blockIdx and threadIdx of the running fiber (kernels/emulator/runtime.cpp).
    fn ddpm_emu_position(out: *mut u32);
}

/// Marks `name` as the kernel running (until [`kernel_done`]).
pub fn kernel_running(name: &std::ffi::CStr) {
    RUNNING_LEN.store(name.to_bytes().len(), Ordering::Release);
    RUNNING.store(name.as_ptr().cast_mut(), Ordering::Release);
}

pub fn kernel_done() {
    RUNNING.store(std::ptr::null_mut(), Ordering::Release);
}

/// Formats into a fixed buffer (no allocation in a signal handler).
struct Buf {
    bytes: [u8; 1024],
    len: usize,
}

impl std::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// What a fault at `addr` was, if it hit the guard pages of an emulated allocation.
fn describe_fault(buf: &mut Buf, addr: usize, write: Option<bool>) -> bool {
    let Ok(reg) = LIVE.try_lock() else {
        return false;
    };
    let hit = reg.allocations.iter().find_map(|(&s, r)| match r.kind {
        Kind::Allocation { base, map } if addr >= base && addr < base + map => {
            Some((s as usize, r))
        }
        _ => None,
    });
    let Some((start, r)) = hit else {
        return false;
    };
    let access = match write {
        Some(true) => "write",
        Some(false) => "read",
        None => "access",
    };
    let _ = write!(buf, "\nemulated GPU memory fault: ");
    describe_position(buf);
    let end = start + r.bytes;
    let _ = if addr >= end {
        writeln!(
            buf,
            ": {access} at {addr:#x}, {} bytes past the end of {} ({} bytes; offset {})",
            addr - end,
            r.what,
            r.bytes,
            addr - start
        )
    } else {
        writeln!(
            buf,
            ": {access} at {addr:#x}, {} bytes before the start of {} ({} bytes)",
            start - addr,
            r.what,
            r.bytes
        )
    };
    true
}

/// "kernel K, block (…), thread (…)" for the kernel running now, or "outside any kernel".
fn describe_position(buf: &mut Buf) {
    let name = RUNNING.load(Ordering::Acquire);
    if name.is_null() {
        let _ = write!(buf, "outside any kernel");
        return;
    }
    let len = RUNNING_LEN.load(Ordering::Acquire);
    // SAFETY: the launch keeps the name alive while it runs.
    let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
    let mut pos = [0u32; 6];
    // SAFETY: writes six u32.
    unsafe { ddpm_emu_position(pos.as_mut_ptr()) };
    let _ = write!(
        buf,
        "kernel {}, block ({}, {}, {}), thread ({}, {}, {})",
        std::str::from_utf8(bytes).unwrap_or("?"),
        pos[0],
        pos[1],
        pos[2],
        pos[3],
        pos[4],
        pos[5]
    );
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut buf = Buf {
        bytes: [0; 1024],
        len: 0,
    };
    if sig == libc::SIGILL {
        // The alignment sanitizer's trap (build.rs): the only trap in the emulator's code.
        if !RUNNING.load(Ordering::Acquire).is_null() {
            let _ = write!(buf, "\nemulated GPU misaligned access: ");
            describe_position(&mut buf);
            let _ = writeln!(
                buf,
                ": a load or store at an address that is not a multiple of its type's alignment \
                 (a GPU faults: misaligned address)"
            );
            // SAFETY: write(2) is async-signal-safe.
            unsafe { libc::write(2, buf.bytes.as_ptr().cast(), buf.len) };
        }
        // SAFETY: resetting a signal's disposition; returning re-runs the trap.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    }
    // SAFETY: the kernel hands a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    // SAFETY: a ucontext_t for SA_SIGINFO handlers; bit 1 of the page-fault error code is "write".
    let write = Some(unsafe {
        (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
    });
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    let write = {
        let _ = ctx;
        None
    };
    if describe_fault(&mut buf, addr, write) {
        // SAFETY: write(2) is async-signal-safe.
        unsafe { libc::write(2, buf.bytes.as_ptr().cast(), buf.len) };
    }
    // Fall back to the default action: returning re-runs the access, which now kills the
    // process with the signal.
    // SAFETY: resetting a signal's disposition.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Installs the handler that reports faults on the guard pages (once), with an alternate
/// stack for the thread that launches kernels (faults happen on fibers' small stacks).
pub fn install_fault_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with our handler; SA_ONSTACK uses the alternate stack
        // where one is set.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            libc::sigaction(libc::SIGILL, &sa, std::ptr::null_mut());
        }
    });
    thread_local! {
        static ALT_STACK: () = {
            const SIZE: usize = 64 << 10;
            let stack = Box::leak(vec![0u8; SIZE].into_boxed_slice());
            let ss = libc::stack_t {
                ss_sp: stack.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: SIZE,
            };
            // SAFETY: a leaked buffer that outlives the thread.
            unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
        };
    }
    ALT_STACK.with(|_| ());
}
