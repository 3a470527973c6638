//! The CUDA side: embedded kernels and the driver probe. The device runtime (context, stream,
//! buffers, launches) builds on these.

pub mod kernels;
pub mod probe;
