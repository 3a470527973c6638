//! The optimizer side of a training step, each one pass over the flat parameter arena
//! ([`crate::params`]): global gradient norm and clipping, AdamW, EMA of the weights; and the
//! loss scale of fp16 training on the GPU. A training step runs the norm, then
//! [`adamw_ema_step`]: clipping, AdamW and the EMA in one pass.
//!
//! Everything runs in fixed chunks of [`CHUNK`] elements: elementwise updates are trivially
//! deterministic, and reductions add f64 partial sums in chunk order, so results are bit for bit
//! the same for any number of threads.

pub mod adamw;
pub mod clip;
pub mod ema;
pub mod fused;
pub mod loss_scale;

pub use adamw::{adamw_element, AdamW, AdamWCoeffs, AdamWConfig};
pub use clip::{clip_factor, clip_grad_norm, global_grad_norm};
pub use ema::{Ema, EmaAction, EmaConfig};
pub use fused::adamw_ema_step;
pub use loss_scale::{LossScaler, ScaleEvent};

/// Elements per rayon task; fixed so reductions do not depend on the thread count.
pub const CHUNK: usize = 1 << 14;

/// A user-facing optimizer setting that cannot work, or checkpoint state that does not fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {scope} setting `{field}`: {msg}")]
pub struct OptimError {
    /// "adamw", "ema".
    pub scope: &'static str,
    pub field: &'static str,
    pub msg: String,
}

impl OptimError {
    pub(crate) fn new(scope: &'static str, field: &'static str, msg: impl Into<String>) -> Self {
        Self {
            scope,
            field,
            msg: msg.into(),
        }
    }
}
