//! Layers with `forward` and `backward` side by side, and the UNet assembled from them. Each is
//! written once against [`crate::backend::Backend`], so the same network runs on the CPU
//! reference ([`crate::ops`]), the planner and the GPU.
//!
//! Gradient convention (as in the ops): activation gradients are returned or written,
//! parameter gradients accumulate (`+=`) into the backend's parameter gradients (the
//! [`crate::params::ParamArena`]'s gradient arena on the CPU), which the training step zeroes
//! once per step.

pub mod attention;
pub mod config;
pub mod layers;
pub mod resnet;
pub mod unet;

pub use config::{ConfigError, DownBlockType, UNetConfig, UpBlockType, PRESETS};
pub use unet::{CpuTape, UNet, UNetTape};
