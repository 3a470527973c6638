//! Launches of `kernels/diffusion.cu`: the fused training noise-add and the sampler steps.
//! CPU twins: [`crate::diffusion::draw_timesteps`], [`crate::diffusion::noise::fill_train_noise`],
//! [`crate::diffusion::add_noise`] and [`crate::diffusion::training_target`] (as
//! `Trainer::train_step` calls them), and [`crate::diffusion::apply_update`] with the noise
//! [`crate::diffusion::sample`] draws.
//!
//! Noise is drawn inside the kernels from the same counter-based streams as the CPU
//! ([`crate::diffusion::noise`]): stream ids are formed here on the host with
//! [`crate::diffusion::stream`] itself, with the per-item argument left 0, and the kernel ORs
//! the item in. So a GPU run draws exactly the CPU's t and ε, and a sampled image's noise depends
//! only on (seed, image id, step index), never on its batch.

use super::super::device::{CudaResult, DevPtr, Gpu, Launch};
use crate::diffusion::noise::{STREAM_A_BITS, STREAM_B_BITS};
use crate::diffusion::{stream, NoisePurpose, PredictionType, StepCoeffs};
use crate::kernel_args;
use crate::precision::Precision;

// The kernels place the per-item stream argument with these widths (see kernels/diffusion.cu).
const _: () = assert!(STREAM_B_BITS == 24 && STREAM_A_BITS == 36);

/// Block size of every launch here.
const BLOCK: u32 = 256;

/// One training step's noise-add: which step, which batch, what to predict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseAddArgs {
    /// The run's seed (`TrainConfig::seed`).
    pub seed: u64,
    /// Optimizer steps completed before this one (`Trainer::step`, 0 for the first step): the
    /// `a` of the TrainNoise and TrainTimestep streams.
    pub step: u64,
    /// B; item i of the buffers is global batch item i.
    pub batch: usize,
    /// Elements per image, C·H·W.
    pub item_len: usize,
    /// T, the length of the ᾱ tables.
    pub num_timesteps: usize,
    pub prediction: PredictionType,
}

/// Field for field `NoiseAddParams` in `kernels/diffusion.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct NoiseAddParams {
    seed: u64,
    /// stream(TrainNoise, step, 0).
    noise_stream: u64,
    /// stream(TrainTimestep, step, 0).
    t_stream: u64,
    batch: u64,
    item_len: u64,
    num_timesteps: u32,
    /// 2³² mod T: `timestep_for`'s rejection threshold.
    reject_below: u32,
    /// 0: ε, 1: x₀, 2: v.
    prediction: i32,
    pad: u32,
}

/// The fused forward process of one training step, in one kernel pass (DDPM Algorithm 1 lines
/// 3–5 and eq. 4): for each item i, t_i ~ U{0..T−1} and ε ~ N(0, I) drawn as the CPU draws them
/// (`draw_timesteps(seed, step, B, T)[i]`, `fill_train_noise(seed, step, 0, item_len, ·)`), then
///
/// ```text
/// x_t    = √ᾱ_t x0 + √(1 − ᾱ_t) ε      (DDPM eq. 4, `add_noise`)
/// target = ε | x0 | √ᾱ_t ε − √(1 − ᾱ_t) x0   (`training_target` under `prediction`)
/// t_out  = t as f32                    (what the UNet's time embedding takes)
/// ```
///
/// `x0`, `target`: (B, item_len) f32; `x_t`: (B, item_len) in the activation precision `dt`
/// (it is the model's input; the loss compares with the fp32 target); `sqrt_ab`, `sqrt_1m_ab`: (T) f32, the tables
/// `Schedule::sqrt_alphas_cumprod` / `sqrt_one_minus_alphas_cumprod`; `t_out`: (B) f32.
///
/// Stops (as the CPU does) on `item_len` = 0, T outside [1, 2³²), or a step or batch that does
/// not fit the noise streams (step < 2³⁶, B ≤ 2²⁴).
#[allow(clippy::too_many_arguments)]
pub fn noise_add(
    gpu: &Gpu,
    dt: Precision,
    a: &NoiseAddArgs,
    x0: DevPtr,
    sqrt_ab: DevPtr,
    sqrt_1m_ab: DevPtr,
    x_t: DevPtr,
    target: DevPtr,
    t_out: DevPtr,
) -> CudaResult<()> {
    assert!(a.item_len > 0, "noise_add: item_len must be positive");
    assert!(
        a.num_timesteps > 0 && a.num_timesteps <= u32::MAX as usize,
        "noise_add: T = {} must be in [1, 2³²)",
        a.num_timesteps
    );
    if a.batch == 0 {
        return Ok(());
    }
    let last = (a.batch - 1) as u64;
    // `stream` stops on arguments that do not fit; checking the last item covers every item.
    let _ = stream(NoisePurpose::TrainNoise, a.step, last);
    let p = NoiseAddParams {
        seed: a.seed,
        noise_stream: stream(NoisePurpose::TrainNoise, a.step, 0),
        t_stream: stream(NoisePurpose::TrainTimestep, a.step, 0),
        batch: a.batch as u64,
        item_len: a.item_len as u64,
        num_timesteps: a.num_timesteps as u32,
        reject_below: ((1u64 << 32) % a.num_timesteps as u64) as u32,
        prediction: match a.prediction {
            PredictionType::Epsilon => 0,
            PredictionType::Sample => 1,
            PredictionType::VPrediction => 2,
        },
        pad: 0,
    };
    let pairs = a.item_len.div_ceil(2);
    gpu.launch(
        &dt.kernel("noise_add"),
        Launch::linear(a.batch * pairs, BLOCK),
        kernel_args!(x0, sqrt_ab, sqrt_1m_ab, x_t, target, t_out, p),
        || {
            format!(
                "x0 ({}, {}), T {}, step {}",
                a.batch, a.item_len, a.num_timesteps, a.step
            )
        },
    )
}

// The kernel reads these structs at these sizes (no implicit padding: both derive `Pod`).
const _: () = assert!(std::mem::size_of::<NoiseAddParams>() == 56);
const _: () = assert!(std::mem::size_of::<StepNoiseParams>() == 16);
const _: () = assert!(std::mem::size_of::<StepCoeffs>() == 52);

/// Where a stochastic sampler step draws z: the SampleStep stream (image id, `step_index`) of
/// `seed`, as [`crate::diffusion::sample`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepNoise {
    /// The sampling seed.
    pub seed: u64,
    /// 0 for the first step taken (`k` in `sample`), below 2²⁴.
    pub step_index: u64,
}

/// Field for field `StepNoiseParams` in `kernels/diffusion.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct StepNoiseParams {
    seed: u64,
    /// stream(SampleStep, 0, k); the kernel ORs in id << 24.
    stream: u64,
}

/// The device buffers of one sampler update, each (n_items, item_len) f32 unless noted;
/// `DevPtr` 0 for an absent optional one. The sampler's state stays fp32 in every precision
/// (50 roundings of x_t to bf16 would add up); only what the model reads and writes is `dt`.
#[derive(Clone, Copy, Debug)]
pub struct UpdateBuffers {
    pub x_t: DevPtr,
    /// The model output (the conditional one when guided), in the activation precision `dt`.
    pub out: DevPtr,
    /// The unconditional output for classifier-free guidance (`dt`), or 0.
    pub out_uncond: DevPtr,
    /// The history (DPM-Solver++'s previous x̂₀, Heun's partial sum), or 0 when unused.
    pub hist: DevPtr,
    pub x_new: DevPtr,
    /// x_new once more in `dt`, the next model input, or 0 (fp32 reads x_new itself).
    pub x_new_model: DevPtr,
    /// The clipped x̂₀, or 0 to skip writing it.
    pub x0: DevPtr,
    /// (n_items) u64 image ids, each below 2³⁶ (checked on the host where x_T is drawn; an id
    /// that does not fit makes NaNs).
    pub image_ids: DevPtr,
}

/// One sampler update over `n_items` images of `item_len` elements: elementwise
/// [`crate::diffusion::step_element_full`] with `c`'s coefficients (the `#[repr(C)]`
/// [`StepCoeffs`] is passed as is), in the kernel `sampler_update_<dt>`. Every sampler (DDPM,
/// DDIM and its inversion, Euler, Heun, Euler–Maruyama, DPM-Solver++(2M)) is this one map with
/// its own coefficients.
///
/// When σ > 0, z for image i is drawn in the kernel from the SampleStep stream
/// (`image_ids[i]`, `noise.step_index`), exactly the values [`crate::diffusion::sample`] draws;
/// `noise` must then be given (a missing one stops, as `apply_update` does). With σ = 0 nothing
/// is drawn and `noise` is ignored. `x_new` may be `x_t` and `x0` may be `out` (in place).
pub fn sampler_step(
    gpu: &Gpu,
    dt: Precision,
    c: &StepCoeffs,
    noise: Option<StepNoise>,
    n_items: usize,
    item_len: usize,
    b: UpdateBuffers,
) -> CudaResult<()> {
    let nz = match (c.sigma > 0.0, noise) {
        (true, Some(nz)) => StepNoiseParams {
            seed: nz.seed,
            stream: stream(NoisePurpose::SampleStep, 0, nz.step_index),
        },
        (true, None) => panic!("sampler_step: σ = {} > 0 but no noise given", c.sigma),
        (false, _) => StepNoiseParams { seed: 0, stream: 0 },
    };
    assert!(
        b.hist != 0 || !(c.reads_history() || c.writes_history()),
        "sampler_step: the coefficients use a history buffer, none given"
    );
    let c = *c;
    let (n64, len64) = (n_items as u64, item_len as u64);
    let UpdateBuffers {
        x_t,
        out,
        out_uncond,
        hist,
        x_new,
        x_new_model,
        x0,
        image_ids,
    } = b;
    gpu.launch(
        &dt.kernel("sampler_update"),
        Launch::linear(n_items * item_len.div_ceil(2), BLOCK),
        kernel_args!(
            c,
            nz,
            x_t,
            out,
            out_uncond,
            hist,
            x_new,
            x_new_model,
            x0,
            image_ids,
            n64,
            len64
        ),
        || format!("x_t ({n_items}, {item_len}), sigma {}", c.sigma),
    )
}
