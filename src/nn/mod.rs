//! Layers built from [`crate::ops`], each with `forward` and `backward` side by side, and the
//! UNet assembled from them.
//!
//! Gradient convention (as in the ops): activation gradients are returned or written,
//! parameter gradients accumulate (`+=`) into the [`crate::params::ParamArena`]'s gradient
//! arena, which the training step zeroes once per step.

pub mod attention;
pub mod config;
pub mod layers;
pub mod resnet;
pub mod unet;

pub use config::{ConfigError, DownBlockType, UNetConfig, UpBlockType, PRESETS};
pub use unet::{UNet, UNetTape};
