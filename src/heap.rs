//! Keeps freed memory in the process for the next step.
//!
//! A CPU step allocates and frees the same activation buffers every time (1–100 MB each).
//! glibc's defaults hand large blocks back to the kernel on free (mmap'd blocks, and the top of
//! the heap past the trim threshold), so every step faults the same pages in again and the
//! kernel zeroes them: on `tiny` at batch 32 that was ~9,000 page faults and a tenth of the
//! step. Raising the mmap threshold to its maximum and the trim threshold far above it keeps
//! the blocks on the heap for reuse; the peak resident set is unchanged (the same buffers are
//! live at once), only their reuse is.

/// Sets the allocator's thresholds (glibc on Linux; elsewhere nothing).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB is glibc's largest mmap threshold on 64-bit; blocks above it are still
        // mapped per allocation.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator tunables; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
