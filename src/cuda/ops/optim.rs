//! Launches of `kernels/optim.cu`: global gradient norm, clipping, AdamW and EMA, each one pass
//! over the flat parameter arena. CPU twins: [`crate::optim::global_grad_norm`],
//! [`crate::optim::clip_grad_norm`], [`crate::optim::AdamW`] (through
//! [`crate::optim::adamw_element`]) and [`crate::optim::Ema`].
//!
//! Per-step scalars are computed on the host in f64 by the CPU code itself
//! ([`crate::optim::AdamWConfig::coeffs`]) or by the same formula ([`ema_action`]), and the
//! kernels repeat the CPU's f32 operations in the same order without FMA contraction, so the
//! updated weights, moments and EMA are bit for bit the CPU's.

use super::super::device::{CudaResult, DevPtr, Gpu, Launch};
use crate::kernel_args;
use crate::optim::{AdamWCoeffs, EmaAction};
use crate::precision::Precision;

/// Blocks of the first grad-norm pass; must equal `NORM_BLOCKS` in `kernels/optim.cu`.
pub const NORM_BLOCKS: usize = 1024;
/// Threads per block of both passes; must equal `NORM_THREADS` in `kernels/optim.cu`.
const NORM_THREADS: u32 = 256;

/// f32 elements of scratch [`grad_norm`] needs: [`NORM_BLOCKS`] f64 partial sums, for any `n`.
/// The scratch must be 8-byte aligned.
pub const REDUCE_SCRATCH: usize = 2 * NORM_BLOCKS;

/// Block size of the elementwise passes.
const BLOCK: u32 = 256;

/// `out` (1 f32 on the device) = ‖grads‖₂ over `n` elements. CPU twin:
/// [`crate::optim::global_grad_norm`], which returns the f64 norm; this is that norm rounded to
/// f32. Squares are summed in f64 in a fixed two-stage order (deterministic on every GPU).
/// `scratch`: [`REDUCE_SCRATCH`] f32 elements, 8-byte aligned, overwritten.
pub fn grad_norm(
    gpu: &Gpu,
    n: usize,
    grads: DevPtr,
    out: DevPtr,
    scratch: DevPtr,
) -> CudaResult<()> {
    debug_assert_eq!(scratch % 8, 0, "grad_norm: scratch must be 8-byte aligned");
    let n64 = n as u64;
    gpu.launch(
        "grad_norm_partials_f32",
        Launch::blocks(NORM_BLOCKS, NORM_THREADS),
        kernel_args!(grads, scratch, n64),
        || format!("grads ({n})"),
    )?;
    gpu.launch(
        "grad_norm_finish_f32",
        Launch::blocks(1, NORM_THREADS),
        kernel_args!(scratch, out),
        || format!("after grad_norm_partials_f32 ({n})"),
    )
}

/// Whether [`clip_grads`] with this `max_norm` can change anything: the CPU's convention that
/// `max_norm` ≤ 0, infinite or NaN turns clipping off.
pub fn clipping_enabled(max_norm: f64) -> bool {
    max_norm > 0.0 && max_norm.is_finite()
}

/// grads ← grads · f32(max_norm / (‖g‖ + 1e-6)) when ‖g‖ > max_norm and ‖g‖ is finite, with ‖g‖
/// read from `norm` (1 f32 on the device, as [`grad_norm`] writes it): the scale is computed on
/// the device in f64, no host round trip. CPU twin: the scaling in
/// [`crate::optim::clip_grad_norm`]; `max_norm` is f64 like the CPU's (the config's
/// `grad_clip`). Launches nothing when clipping is off ([`clipping_enabled`]). One difference:
/// the norm read here was rounded to f32, where the CPU keeps it in f64, so the scale (and the
/// `‖g‖ > max_norm` test right at the boundary) can differ by about one f32 ulp.
pub fn clip_grads(
    gpu: &Gpu,
    n: usize,
    grads: DevPtr,
    norm: DevPtr,
    max_norm: f64,
) -> CudaResult<()> {
    if !clipping_enabled(max_norm) {
        return Ok(());
    }
    let n64 = n as u64;
    gpu.launch(
        "clip_grads_f32",
        Launch::linear(n, BLOCK),
        kernel_args!(grads, norm, max_norm, n64),
        || format!("grads ({n}), max_norm {max_norm}"),
    )
}

/// One AdamW update of `n` parameters in place: `params`, `m`, `v` are updated, `grads` read.
/// `c` is update t's scalars, `cfg.coeffs(t)` with t 1-based (the learning-rate warmup
/// `lr_at(t)`, decay 1 − ηλ and the bias corrections are all in there, computed in f64 on the
/// host). CPU twin: [`crate::optim::AdamW::update`], element by element
/// [`crate::optim::adamw_element`]; the `#[repr(C)]` [`AdamWCoeffs`] is passed as is.
pub fn adamw_step(
    gpu: &Gpu,
    n: usize,
    params: DevPtr,
    grads: DevPtr,
    m: DevPtr,
    v: DevPtr,
    c: &AdamWCoeffs,
) -> CudaResult<()> {
    let n64 = n as u64;
    let c = *c;
    gpu.launch(
        "adamw_step_f32",
        Launch::linear(n, BLOCK),
        kernel_args!(params, grads, m, v, c, n64),
        || format!("params/grads/m/v ({n})"),
    )
}

/// ema ← ema + rate·(θ − ema) over `n` elements, the CPU's form; `rate` = 1 − decay from
/// [`crate::optim::EmaConfig::action`] (formed in f64, rounded once).
pub fn ema_update(gpu: &Gpu, n: usize, ema: DevPtr, params: DevPtr, rate: f32) -> CudaResult<()> {
    let n64 = n as u64;
    gpu.launch(
        "ema_update_f32",
        Launch::linear(n, BLOCK),
        kernel_args!(ema, params, rate, n64),
        || format!("ema/params ({n}), rate {rate}"),
    )
}

/// Field for field `FusedStep` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FusedStep {
    adam: AdamWCoeffs,
    grad_scale: f32,
    ema_rate: f32,
    ema_mode: i32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<FusedStep>() == 48);

/// The arena buffers of [`adamw_ema_step`], (n) each: f32 but for `lowp`.
#[derive(Clone, Copy, Debug)]
pub struct OptimBuffers {
    pub params: DevPtr,
    /// Read only.
    pub grads: DevPtr,
    pub m: DevPtr,
    pub v: DevPtr,
    pub ema: DevPtr,
    /// The weights stored in the activation precision for the GEMMs, or 0 (fp32 has none).
    pub lowp: DevPtr,
}

/// The gradient factor of one update: the clipping scale of [`crate::optim::clip_grad_norm`]
/// (max_norm / (‖g‖ + 1e-6) when ‖g‖ > max_norm) divided by the loss scale `loss_scale` the
/// gradients carry, formed in f64 and rounded once. `norm` is the norm of the *scaled*
/// gradients, as [`grad_norm`] measured it. With no loss scale (1) and no clipping it is 1.
pub fn grad_factor(norm: f32, loss_scale: f32, max_norm: f64) -> f32 {
    let s = f64::from(loss_scale);
    let true_norm = f64::from(norm) / s;
    let clip = if clipping_enabled(max_norm) && true_norm.is_finite() && true_norm > max_norm {
        max_norm / (true_norm + 1e-6)
    } else {
        1.0
    };
    (clip / s) as f32
}

/// One fused pass over the parameter arena: g ← grads · `grad_factor`, AdamW with `c`, the EMA
/// per `ema`, and the low-precision weight copy (when `b.lowp` is set) — what [`clip_grads`],
/// [`adamw_step`], [`ema_update`] and a cast do in four passes, with the same f32 operations in
/// the same order (fp32 training is bitwise unchanged). `dt` is the type of `b.lowp`.
pub fn adamw_ema_step(
    gpu: &Gpu,
    dt: Precision,
    n: usize,
    b: OptimBuffers,
    c: &AdamWCoeffs,
    grad_factor: f32,
    ema: EmaAction,
) -> CudaResult<()> {
    let (ema_mode, ema_rate) = match ema {
        EmaAction::Skip => (0, 0.0),
        EmaAction::Average { rate } => (1, rate),
        EmaAction::Copy => (2, 0.0),
    };
    let s = FusedStep {
        adam: *c,
        grad_scale: grad_factor,
        ema_rate,
        ema_mode,
        pad: 0,
    };
    let n64 = n as u64;
    let OptimBuffers {
        params,
        grads,
        m,
        v,
        ema,
        lowp,
    } = b;
    gpu.launch(
        &dt.kernel("adamw_ema_step"),
        Launch::linear(n, BLOCK),
        kernel_args!(params, grads, m, v, ema, lowp, s, n64),
        || format!("parameter arena ({n}), {dt}"),
    )
}
