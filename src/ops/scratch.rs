//! Per-thread scratch memory that outlives one op, for the packed convolution's panels and C
//! blocks: a convolution's tasks used to allocate (and zero) a few hundred KiB each, a few
//! hundred times per training step; now each worker thread keeps one buffer and reuses it.
//!
//! The buffer's contents are whatever the previous user left (always initialised values):
//! callers write every element before reading it.

use std::any::{Any, TypeId};
use std::cell::RefCell;

use crate::float::Real;

thread_local! {
    /// One buffer per element type (f32 in training, f64 in the gradient checks).
    static BUFFERS: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's scratch for `T` (grown with zeros as needed),
/// starting on a 64-byte boundary.
/// Re-entrant: a nested call (a task stolen while the buffer is lent) gets a fresh allocation.
pub fn with_scratch<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let taken = BUFFERS.with(|cell| {
        let Ok(mut buffers) = cell.try_borrow_mut() else {
            return None;
        };
        let at = buffers
            .iter()
            .position(|b| (**b).type_id() == TypeId::of::<Vec<T>>());
        Some(match at {
            Some(i) => *buffers
                .swap_remove(i)
                .downcast::<Vec<T>>()
                .expect("the position matched the type"),
            None => Vec::new(),
        })
    });
    let mut buffer = taken.unwrap_or_default();
    // Room to start on a 64-byte boundary: vector loads from the scratch never straddle two
    // cache lines.
    let size = std::mem::size_of::<T>();
    if buffer.len() < len + 64 / size {
        buffer.resize(len + 64 / size, T::zero());
    }
    let start = (64 - buffer.as_ptr() as usize % 64) % 64 / size;
    let out = f(&mut buffer[start..start + len]);
    BUFFERS.with(|cell| {
        if let Ok(mut buffers) = cell.try_borrow_mut() {
            buffers.push(Box::new(buffer));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_reused_per_type_and_nested_calls_get_their_own() {
        let first = with_scratch::<f32, _>(100, |s| {
            s.fill(1.0);
            s.as_ptr() as usize
        });
        // The same buffer comes back, with what was left in it.
        let again = with_scratch::<f32, _>(50, |s| {
            assert!(s.iter().all(|&v| v == 1.0));
            s.as_ptr() as usize
        });
        assert_eq!(first, again);
        // Another type has its own buffer; a nested call gets a different one.
        with_scratch::<f64, _>(10, |outer| {
            outer.fill(2.0);
            with_scratch::<f64, _>(10, |inner| {
                assert_ne!(inner.as_ptr(), outer.as_ptr());
                inner.fill(3.0);
            });
            assert!(outer.iter().all(|&v| v == 2.0));
        });
        // Growing keeps working, and every slice starts on a cache line.
        with_scratch::<f32, _>(1000, |s| {
            assert_eq!(s.len(), 1000);
            assert_eq!(s.as_ptr() as usize % 64, 0);
        });
    }
}
