//! ddpm: a from-scratch diffusion engine.
//!
//! - [`ops`]: the CPU reference backend, one module per op, each a forward and a hand-written
//!   backward on NCHW slices, generic over f32/f64 ([`float::Real`]);
//! - [`params`]: all parameters in one arena with diffusers-named views;
//! - [`precision`]: the GPU's storage precision (fp32, bf16, fp16);
//! - [`gradcheck`]: finite-difference checks that every backward is right;
//! - [`cuda`]: the kernels compiled from `kernels/*.cu` at build time, and the driver probe;
//! - [`rng`]: Philox4x32-10, shared bit for bit with the kernels;
//! - [`nn`]: layers with forward/backward side by side, and the UNet (diffusers `UNet2DModel`);
//! - [`diffusion`]: schedules, the forward process, training targets, DDPM/DDIM samplers;
//! - [`optim`]: AdamW, gradient clipping, EMA;
//! - [`data`]: synthetic shapes, image folders, MNIST, CIFAR-10, the prefetching batch loader;
//! - [`train`], [`sample`]: the training loop with checkpoints, and drawing images;
//! - [`imaging`]: PNGs, sample grids, the loss curve;
//! - [`diffusers`]: reading and writing diffusers `UNet2DModel` and pipeline directories.

pub mod atomic_file;
pub mod backend;
pub mod cli;
pub mod cpu_memory;
pub mod cuda;
pub mod data;
pub mod device;
pub mod diffusers;
pub mod diffusion;
pub mod float;
pub mod gradcheck;
pub mod heap;
pub mod imaging;
pub mod info;
pub mod interrupt;
pub mod json_fields;
pub mod latent;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod profile;
pub mod rng;
pub mod sample;
pub mod shape;
pub mod train;
pub mod usage_error;
