//! Tensor shapes and the checks every op makes on its buffers.
//!
//! Ops take plain slices plus a shape (llm.c style). A slice whose length does not match its shape
//! is a bug in the caller, not bad user input: the op stops with a message naming itself, the
//! buffer and both sizes. User-facing geometry (kernel larger than the input, zero stride, …) is
//! validated earlier by constructors that return [`ShapeError`].

use std::fmt;

/// Geometry that cannot work, found while building an op's shape from user-facing settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct ShapeError {
    pub op: &'static str,
    pub msg: String,
}

impl ShapeError {
    pub fn new(op: &'static str, msg: impl Into<String>) -> Self {
        Self {
            op,
            msg: msg.into(),
        }
    }
}

/// A 4-d activation shape in NCHW order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Spatial positions per channel.
    pub const fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Elements per batch item.
    pub const fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    pub const fn with_c(self, c: usize) -> Self {
        Self { c, ..self }
    }
}

impl fmt::Display for Nchw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {}, {})", self.n, self.c, self.h, self.w)
    }
}

/// Stops with a clear message when a buffer does not hold exactly `want` elements.
#[track_caller]
pub fn expect_len(op: &str, buffer: &str, got: usize, want: usize, shape: impl fmt::Display) {
    assert!(
        got == want,
        "{op}: buffer `{buffer}` has {got} elements, expected {want} for shape {shape}"
    );
}
