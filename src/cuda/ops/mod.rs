//! Launch glue for the kernels in `kernels/`, one module per kernel family, on raw device
//! pointers ([`super::DevPtr`]) so callers decide where buffers live. Each function's doc names
//! its CPU twin in [`crate::ops`] (or `crate::optim`, `crate::diffusion`), which the CUDA parity
//! tests in `tests/cuda/` compare it with. All fp32 for now.

pub mod attention;
pub mod conv2d;
pub mod conv_shifted;
pub mod diffusion;
pub mod elementwise;
pub mod embedding;
pub mod groupnorm;
pub mod linear;
pub mod loss;
pub mod optim;
pub mod resample;
