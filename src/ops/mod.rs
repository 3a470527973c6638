//! The op set of the CPU reference backend: one module per op, each with a forward and a
//! hand-written backward side by side, on plain NCHW slices.
//!
//! Gradient convention, everywhere: **activation gradients are written (`=`), parameter
//! gradients accumulate (`+=`)**, so a parameter used twice (or a batch split in two) sums its
//! gradients without extra buffers, and the caller zeroes the parameter gradients once per step.
//!
//! Each forward's doc comment says what its backward needs saved. CUDA twins of these ops live in
//! `kernels/<family>.cu` under the same names.

pub mod add;
pub mod attention;
pub mod concat;
pub mod conv2d;
pub mod dropout;
pub mod embedding;
pub mod fma_peak;
pub mod groupnorm;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod matmul;
pub(crate) mod scratch;
pub mod silu;
pub(crate) mod simd;
pub mod tile;
pub mod upsample;

/// Elements per rayon task in elementwise ops: large enough that scheduling costs nothing.
pub(crate) const PAR_CHUNK: usize = 1 << 14;
