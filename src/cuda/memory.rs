//! How much device memory a training or sampling job allocates, so that running out is caught
//! before anything is allocated, with the largest batch size that would fit.
//!
//! Everything is allocated once, up front (weights, optimizer state, batch buffers, the
//! activation arena planned from the network, the op workspace), so the need is exact up to the
//! CUDA context, cuBLAS's workspace and allocator rounding, which [`MARGIN`] covers.

use anyhow::Result;

use super::backend::Sizing;
use super::device::{CudaError, Gpu};
use super::CudaErrorKind;
use crate::nn::UNet;
use crate::precision::Precision;

/// Room left for the CUDA context, cuBLAS and allocation rounding.
pub const MARGIN: usize = 512 << 20;

/// What the memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Training steps, plus the sampler that draws the sample grids (`grid` images a batch).
    Train {
        grid: usize,
        precision: Precision,
    },
    Sample {
        precision: Precision,
    },
}

impl Job {
    fn verb(self) -> &'static str {
        match self {
            Job::Train { .. } => "training",
            Job::Sample { .. } => "sampling",
        }
    }

    fn precision(self) -> Precision {
        match self {
            Job::Train { precision, .. } | Job::Sample { precision } => precision,
        }
    }
}

/// Device bytes a job allocates at batch size `batch` (without [`MARGIN`]).
pub fn bytes_needed(net: &UNet, job: Job, batch: usize) -> Result<usize> {
    let p = net.layout.arena_len();
    let item = net.input_shape(1).len();
    let train = matches!(job, Job::Train { .. });
    let dt = job.precision();
    let plan = net.plan_step_stored::<f32>(batch, train, dt.bytes())?;
    let arena = Sizing::from_plan(&plan, dt).total_bytes();
    // The weights the GEMMs read, in bf16/fp16.
    let lowp = if dt.is_reduced() { dt.bytes() * p } else { 0 };
    Ok(match job {
        // Weights, gradients, two Adam moments and the EMA; x₀, targets, x_t (in `dt`) and t;
        // and the sampler of the grids, with its own copy of the weights. (The √ᾱ tables are
        // in MARGIN.)
        Job::Train { grid, precision } => {
            4 * 5 * p
                + lowp
                + 4 * (2 * batch * item + batch)
                + dt.bytes() * batch * item
                + arena
                + bytes_needed(net, Job::Sample { precision }, grid)?
        }
        // Weights; x_t, x_prev, x̂₀, the history, the model input (in `dt`), t and the image
        // ids.
        Job::Sample { .. } => {
            4 * p
                + lowp
                + 4 * (4 * batch * item + batch)
                + dt.bytes() * batch * item
                + 8 * batch
                + arena
        }
    })
}

/// The largest batch size up to `max` whose need (with [`MARGIN`]) fits in `free` bytes.
pub fn largest_batch(net: &UNet, job: Job, max: usize, free: usize) -> Result<Option<usize>> {
    // The need grows with the batch, so the shared binary search applies.
    crate::cpu_memory::largest_fitting(max, |b| Ok(bytes_needed(net, job, b)? + MARGIN <= free))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The message for a job that does not fit: what it needs, what is free, and what to try.
pub fn out_of_memory_message(
    net: &UNet,
    job: Job,
    batch: usize,
    free: usize,
    total: usize,
    device: &str,
) -> Result<String> {
    let need = bytes_needed(net, job, batch)? + MARGIN;
    let hint = match largest_batch(net, job, batch.saturating_sub(1), free)? {
        Some(b) => format!("try --batch-size {b}"),
        None => "even a batch of 1 does not fit: the model is too large for this GPU".into(),
    };
    Ok(format!(
        "out of GPU memory: {} at batch {batch} needs about {:.2} GiB on {device}, and {:.2} GiB of {:.2} GiB are free; {hint}",
        job.verb(),
        gib(need),
        gib(free),
        gib(total)
    ))
}

/// Fails with [`out_of_memory_message`] when the job cannot fit in the device's free memory.
pub fn check_fits(gpu: &Gpu, net: &UNet, job: Job, batch: usize) -> Result<()> {
    let (free, total) = gpu.memory_info()?;
    if total == 0 {
        return Ok(()); // the CPU emulator has no device memory to count
    }
    if bytes_needed(net, job, batch)? + MARGIN > free {
        let device = format!("cuda:{} ({})", gpu.ordinal, gpu.name);
        anyhow::bail!(out_of_memory_message(
            net, job, batch, free, total, &device
        )?);
    }
    Ok(())
}

/// An allocation that failed although [`check_fits`] passed (other processes, fragmentation):
/// the driver's message, plus the need and a batch size to try when it was out of memory.
pub fn oom_hint(e: CudaError, gpu: &Gpu, net: &UNet, job: Job, batch: usize) -> anyhow::Error {
    if e.kind != CudaErrorKind::OutOfMemory {
        return e.into();
    }
    let (free, total) = gpu.memory_info().unwrap_or((0, 0));
    let device = format!("cuda:{} ({})", gpu.ordinal, gpu.name);
    match out_of_memory_message(net, job, batch, free, total, &device) {
        Ok(msg) => anyhow::anyhow!("{e}\n{msg}"),
        Err(_) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::UNetConfig;

    #[test]
    fn the_suggested_batch_is_the_largest_that_fits() {
        let net = UNet::new(UNetConfig::preset("tiny").unwrap()).unwrap();
        let precision = Precision::Bf16;
        for job in [
            Job::Train {
                grid: 16,
                precision,
            },
            Job::Sample { precision },
        ] {
            let need = |b| bytes_needed(&net, job, b).unwrap();
            assert!(need(2) > need(1) && need(64) > need(32), "{job:?}");
            // Activations dominate: 64 images need well over twice what 16 do, above the fixed
            // part (weights and optimizer state).
            assert!(need(64) - need(16) > 2 * (need(16) - need(1)), "{job:?}");
            let free = need(37) + MARGIN;
            assert_eq!(largest_batch(&net, job, 1000, free).unwrap(), Some(37));
            assert_eq!(largest_batch(&net, job, 1000, free - 1).unwrap(), Some(36));
            assert_eq!(largest_batch(&net, job, 20, free).unwrap(), Some(20));
            assert_eq!(largest_batch(&net, job, 1000, need(1)).unwrap(), None);
            let msg =
                out_of_memory_message(&net, job, 128, free, 80 << 30, "cuda:0 (test)").unwrap();
            assert!(msg.contains("at batch 128 needs about"), "{msg}");
            assert!(msg.contains("try --batch-size 37"), "{msg}");
            let msg =
                out_of_memory_message(&net, job, 128, 1 << 20, 80 << 30, "cuda:0 (test)").unwrap();
            assert!(msg.contains("even a batch of 1 does not fit"), "{msg}");
        }
    }

    #[test]
    fn training_needs_the_optimizer_state_and_the_grid_sampler() {
        let net = UNet::new(UNetConfig::preset("tiny").unwrap()).unwrap();
        let p = net.layout.arena_len();
        let precision = Precision::Fp32;
        let train = bytes_needed(
            &net,
            Job::Train {
                grid: 16,
                precision,
            },
            32,
        )
        .unwrap();
        let sample = bytes_needed(&net, Job::Sample { precision }, 32).unwrap();
        // Five parameter-sized arrays against one, and the tape of the backward pass.
        assert!(train > sample + 4 * 4 * p, "{train} vs {sample}");
    }
}

#[cfg(test)]
mod precision_tests {
    use super::*;
    use crate::nn::UNetConfig;

    /// bf16 stores activations in half the bytes: the same job needs clearly less memory.
    #[test]
    fn reduced_precision_needs_less_memory() {
        let net = UNet::new(UNetConfig::preset("tiny").unwrap()).unwrap();
        for (a, b) in [
            (
                Job::Train {
                    grid: 16,
                    precision: Precision::Fp32,
                },
                Job::Train {
                    grid: 16,
                    precision: Precision::Bf16,
                },
            ),
            (
                Job::Sample {
                    precision: Precision::Fp32,
                },
                Job::Sample {
                    precision: Precision::Fp16,
                },
            ),
        ] {
            let (full, half) = (
                bytes_needed(&net, a, 64).unwrap(),
                bytes_needed(&net, b, 64).unwrap(),
            );
            assert!(half < full * 3 / 4, "{a:?}: {full}, {b:?}: {half}");
        }
    }
}
