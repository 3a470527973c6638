//! GPU kernel throughput, one group per kernel family, at the shapes of the `ddpm-cifar10`
//! preset (ch 128, mult 1,2,2,2, attention at 16×16) at training batch 128 and sampling batch
//! 256: conv2d, linear, group norm, attention (and its layout transposes), the elementwise
//! kernels, upsampling, the timestep embedding, the loss, the optimizer passes over all 35.7M
//! parameters, the training noise-add and the sampler steps.
//!
//! Every launch is timed on the device (CUDA events around `iters` launches queued back to back,
//! through criterion's `iter_custom`), with all buffers allocated and filled once, outside the
//! timed loop. GEMM-bound ops report FLOPs as criterion "elements" (`Gelem/s` reads as GFLOP/s),
//! the others the bytes they must read plus write at minimum (`GiB/s`).
//!
//! Beside each bench its two floors are printed once (docs/benchmarks.md):
//! bytes / the device-to-device copy bandwidth measured at startup (1 GiB copy, bytes read plus
//! written), and FLOPs / the FP32 CUDA-core peak (SMs × FP32 lanes per SM × 2 × clock; 128 lanes
//! for sm_86 and newer, sm_90 included, 64 for sm_80). Our GEMMs are fp32 without TF32 (cuBLAS
//! default math), so that peak, not the tensor-core rate, is their floor for now. Group norm,
//! the fused group norm + SiLU and the fused optimizer pass also run with bf16 activations / a
//! bf16 weight copy,
//! the configuration a bf16 training step uses, against the same bandwidth floor. After each
//! group a table compares the measured time per launch with the larger floor (% of roofline).
//! FLOP counts of the memory-bound ops are rough (their bytes floor is far larger anyway).
//!
//! Without a usable GPU (no driver, no device, or a build without nvcc) it prints one line
//! saying so and exits 0. `DDPM_CUDA_DEVICE=N` picks the device (default 0).
//!
//!     cargo bench --bench cuda_ops [-- FILTER]

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use cudarc::driver::{result, sys};
use ddpm::cuda::device::DeviceMemory;
use ddpm::cuda::ops;
use ddpm::cuda::testing::{to_device, zeros_on_device};
use ddpm::cuda::{CudaResult, DevPtr, Gpu};
use ddpm::diffusion::{
    PredictionType, Schedule, ScheduleConfig, StepCoeffs, StepPair, VarianceType,
};
use ddpm::nn::{UNet, UNetConfig};
use ddpm::ops::attention::AttentionShape;
use ddpm::ops::conv2d::{Conv2dShape, Padding};
use ddpm::ops::dropout::DropoutArgs;
use ddpm::ops::embedding::TimestepEmbedding;
use ddpm::ops::groupnorm::GroupNormShape;
use ddpm::ops::linear::LinearShape;
use ddpm::optim::AdamWConfig;
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;
use ddpm::train::LossKind;

/// Training batch of the benched shapes.
const BATCH: usize = 128;
/// Sampling batch of the sampler steps.
const SAMPLE_BATCH: usize = 256;
/// Bytes of an f32.
const F32: u64 = 4;
/// im2col workspace cap in f32, as the backend sizes it (`MAX_CONV_WORKSPACE`, 256 MiB), so the
/// convolutions unroll as many images per GEMM as they do in a training step.
const MAX_CONV_WORKSPACE: usize = 64 << 20;
/// Bytes of each buffer of the startup copy-bandwidth measurement.
const COPY_BYTES: usize = 1 << 30;
/// Length of the random pattern that fills the inputs (tiled by device copies beyond it).
const PATTERN: usize = 1 << 20;

/// What one launch (or one fixed sequence of launches) must move and compute at minimum.
#[derive(Clone, Copy, Debug)]
struct Work {
    bytes: u64,
    flops: u64,
    /// GEMM-bound: report FLOPs as criterion's throughput rather than bytes.
    gemm: bool,
}

impl Work {
    fn mem(bytes: u64, flops: u64) -> Self {
        Self {
            bytes,
            flops,
            gemm: false,
        }
    }
    fn gemm(bytes: u64, flops: u64) -> Self {
        Self {
            bytes,
            flops,
            gemm: true,
        }
    }
}

/// Bytes of `elems` f32 values.
fn f32s(elems: usize) -> u64 {
    elems as u64 * F32
}

/// One bench's floors and every timed call criterion made of it.
struct Row {
    group: String,
    name: String,
    work: Work,
    total_ms: f64,
    iters: u64,
}

/// The GPU, its two ceilings and what has been measured on it.
struct Bench {
    gpu: Gpu,
    /// Device-to-device copy bandwidth, bytes read plus written per second.
    bandwidth: f64,
    /// FP32 CUDA-core peak, FLOP/s.
    peak: f64,
    rows: RefCell<Vec<Row>>,
}

/// "12.3 µs" / "4.56 ms" / "1.23 s".
fn fmt_time(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.1} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

impl Bench {
    /// (bytes floor, FLOPs floor) in seconds.
    fn floors(&self, w: Work) -> (f64, f64) {
        (w.bytes as f64 / self.bandwidth, w.flops as f64 / self.peak)
    }

    /// Benches `launch` as `group/name`: `iters` launches queued back to back, timed on the
    /// device. Prints the floors the first time criterion runs it.
    fn run(
        &self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        group: &str,
        name: &str,
        work: Work,
        mut launch: impl FnMut(&Gpu) -> CudaResult<()>,
    ) {
        g.throughput(if work.gemm {
            Throughput::Elements(work.flops)
        } else {
            Throughput::Bytes(work.bytes)
        });
        let gpu = &self.gpu;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let ms = gpu
                    .time_ms(|| {
                        for _ in 0..iters {
                            launch(gpu)?;
                        }
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("{group}/{name}: {e}"));
                self.record(group, name, work, f64::from(ms), iters);
                Duration::from_secs_f64(f64::from(ms) / 1e3)
            })
        });
    }

    fn record(&self, group: &str, name: &str, work: Work, ms: f64, iters: u64) {
        let mut rows = self.rows.borrow_mut();
        if let Some(r) = rows.iter_mut().find(|r| r.group == group && r.name == name) {
            r.total_ms += ms;
            r.iters += iters;
            return;
        }
        let (fb, ff) = self.floors(work);
        // Criterion's progress line is on stderr without a newline when stdout is a terminal.
        let lead = if std::io::stdout().is_terminal() {
            "\n"
        } else {
            ""
        };
        println!(
            "{lead}{group}/{name}: floor(bytes) {}, floor(flops) {}   [{:.1} MB, {:.3} GFLOP]",
            fmt_time(fb),
            fmt_time(ff),
            work.bytes as f64 / 1e6,
            work.flops as f64 / 1e9
        );
        rows.push(Row {
            group: group.to_string(),
            name: name.to_string(),
            work,
            total_ms: ms,
            iters,
        });
    }

    /// Measured time per launch (every timed call, warm-up included, weighted by its launches)
    /// against the larger floor, for the benches of `group` that ran.
    fn table(&self, group: &str) {
        let rows = self.rows.borrow();
        let rows: Vec<&Row> = rows.iter().filter(|r| r.group == group).collect();
        if rows.is_empty() {
            return;
        }
        println!(
            "\n{group} vs roofline (copy {:.2} TB/s, FP32 {:.1} TFLOP/s):",
            self.bandwidth / 1e12,
            self.peak / 1e12
        );
        println!(
            "  {:<34} {:>10} {:>13} {:>13} {:>6} {:>9}",
            "bench", "measured", "floor(bytes)", "floor(flops)", "bound", "roofline"
        );
        for r in rows {
            let t = r.total_ms / 1e3 / r.iters.max(1) as f64;
            let (fb, ff) = self.floors(r.work);
            let (floor, bound) = if fb >= ff {
                (fb, "bytes")
            } else {
                (ff, "flops")
            };
            println!(
                "  {:<34} {:>10} {:>13} {:>13} {:>6} {:>8.1}%",
                r.name,
                fmt_time(t),
                fmt_time(fb),
                fmt_time(ff),
                bound,
                100.0 * floor / t
            );
        }
        println!();
    }
}

/// `len` f32 on the device, N(0, std²) values from a [`PATTERN`]-long Philox pattern tiled by
/// device copies (cheap for the 35.7M-parameter buffers, finite everywhere).
fn filled(gpu: &Gpu, len: usize, seed: u64, std: f64) -> CudaResult<DeviceMemory> {
    let pattern: Vec<f32> = Philox::new(seed).normal_vec(len.min(PATTERN), std);
    let mem = gpu.alloc(f32s(len) as usize, "bench input")?;
    gpu.upload(mem.ptr(), &pattern, "bench input")?;
    let mut done = pattern.len();
    while done < len {
        let n = done.min(len - done);
        gpu.copy(
            mem.ptr() + f32s(done),
            mem.ptr(),
            f32s(n) as usize,
            "bench input",
        )?;
        done += n;
    }
    Ok(mem)
}

/// `len` zeroed f32 on the device.
fn zeros(gpu: &Gpu, len: usize) -> CudaResult<DeviceMemory> {
    zeros_on_device::<f32>(gpu, len)
}

/// "128x128x32x32".
fn dims(s: Nchw) -> String {
    format!("{}x{}x{}x{}", s.n, s.c, s.h, s.w)
}

/// Device-to-device copy bandwidth in bytes (read + written) per second: the best of three
/// timings of five 1 GiB copies.
fn copy_bandwidth(gpu: &Gpu) -> CudaResult<f64> {
    const REPS: usize = 5;
    let src = gpu.alloc(COPY_BYTES, "copy-bandwidth source")?;
    let dst = gpu.alloc(COPY_BYTES, "copy-bandwidth destination")?;
    gpu.zero(src.ptr(), COPY_BYTES, "copy-bandwidth source")?;
    gpu.copy(dst.ptr(), src.ptr(), COPY_BYTES, "copy bandwidth")?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let ms = gpu.time_ms(|| {
            for _ in 0..REPS {
                gpu.copy(dst.ptr(), src.ptr(), COPY_BYTES, "copy bandwidth")?;
            }
            Ok(())
        })?;
        best = best.min(f64::from(ms) / 1e3 / REPS as f64);
    }
    Ok(2.0 * COPY_BYTES as f64 / best)
}

/// FP32 CUDA-core peak in FLOP/s and how it was formed.
fn fp32_peak(gpu: &Gpu) -> (f64, String) {
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_CLOCK_RATE, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
    };
    // SAFETY: `gpu.device()` is the device `Gpu::open` got from `cuDeviceGet`.
    let attr = |a| unsafe { result::device::get_attribute(gpu.device(), a) }.ok();
    let sms = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap_or(0)
        .max(0) as f64;
    let (khz, clock_note) = match attr(CU_DEVICE_ATTRIBUTE_CLOCK_RATE) {
        Some(k) if k > 0 => (f64::from(k), ""),
        _ => (
            1.98e6,
            " (clock attribute unavailable: assumed 1.98 GHz, the H100/H200 SXM boost clock)",
        ),
    };
    let (major, minor) = gpu.compute_capability;
    // FP32 lanes per SM: 64 on sm_80 (A100), 128 on sm_86/89, sm_90 (H100/H200) and newer.
    let lanes = if major < 8 || (major, minor) == (8, 0) {
        64.0
    } else {
        128.0
    };
    let peak = sms * lanes * 2.0 * khz * 1e3;
    let note = format!(
        "FP32 peak {:.1} TFLOP/s = {sms} SMs × {lanes} FP32 lanes/SM (assumed for sm_{major}{minor}: \
         128 on sm_86 and newer, 64 on sm_80) × 2 × {:.3} GHz{clock_note}; \
         our GEMMs are fp32 without TF32 (cuBLAS default math), so this is their floor",
        peak / 1e12,
        khz / 1e6
    );
    (peak, note)
}

fn conv2d(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "conv2d";
    let gpu = &bench.gpu;
    let mut g = c.benchmark_group(GROUP);
    // The 3×3 convolutions of the residual blocks at 32×32 (128 ch) and 16×16 (256 ch).
    for (ch, hw) in [(128, 32), (256, 16)] {
        let s = Conv2dShape::new(
            Nchw::new(BATCH, ch, hw, hw),
            ch,
            (3, 3),
            (1, 1),
            Padding::same(1),
        )?;
        let one = ops::conv2d::conv2d_workspace_len(&s).max(1);
        let ws_len =
            ops::conv2d::conv2d_workspace_for(&s, (MAX_CONV_WORKSPACE / one).clamp(1, BATCH));
        let (xl, wl, yl) = (s.input.len(), s.weight_len(), s.output().len());
        let x = filled(gpu, xl, 1, 1.0)?;
        let w = filled(gpu, wl, 2, 0.03)?;
        let b = filled(gpu, ch, 3, 0.1)?;
        let dy = filled(gpu, yl, 4, 1.0)?;
        let (y, dx, dw, db, ws) = (
            zeros(gpu, yl)?,
            zeros(gpu, xl)?,
            zeros(gpu, wl)?,
            zeros(gpu, ch)?,
            zeros(gpu, ws_len)?,
        );
        let (xp, wp, bp, yp, dyp) = (x.ptr(), w.ptr(), b.ptr(), y.ptr(), dy.ptr());
        let (dxp, dwp, dbp, wsp) = (dx.ptr(), dw.ptr(), db.ptr(), ws.ptr());
        let tag = format!("{}_k3", dims(s.input));
        // Forward: read x, W, b; write y. Backward: read x, W, dy; write dx; dW, db accumulate.
        bench.run(
            &mut g,
            GROUP,
            &format!("fwd_{tag}"),
            Work::gemm(f32s(xl + wl + ch + yl), s.forward_flops()),
            move |gpu| {
                ops::conv2d::conv2d_forward(
                    gpu,
                    Precision::Fp32,
                    &s,
                    xp,
                    wp,
                    Some(bp),
                    yp,
                    wsp,
                    ws_len,
                )
            },
        );
        bench.run(
            &mut g,
            GROUP,
            &format!("bwd_{tag}"),
            Work::gemm(
                f32s(xl + wl + yl + xl + 2 * (wl + ch)),
                2 * s.forward_flops(),
            ),
            move |gpu| {
                ops::conv2d::conv2d_backward(
                    gpu,
                    Precision::Fp32,
                    &s,
                    xp,
                    wp,
                    dyp,
                    Some(dxp),
                    dwp,
                    Some(dbp),
                    wsp,
                    ws_len,
                )
            },
        );
    }
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn linear(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "linear";
    let gpu = &bench.gpu;
    // The time-embedding MLP's second layer: (B, 512) → (B, 512).
    let s = LinearShape::new(BATCH, 512, 512);
    let (xl, wl, yl) = (s.rows * s.d_in, s.d_out * s.d_in, s.rows * s.d_out);
    let x = filled(gpu, xl, 11, 1.0)?;
    let w = filled(gpu, wl, 12, 0.04)?;
    let b = filled(gpu, s.d_out, 13, 0.1)?;
    let dy = filled(gpu, yl, 14, 1.0)?;
    let (y, dx, dw, db) = (
        zeros(gpu, yl)?,
        zeros(gpu, xl)?,
        zeros(gpu, wl)?,
        zeros(gpu, s.d_out)?,
    );
    let (xp, wp, bp, yp, dyp) = (x.ptr(), w.ptr(), b.ptr(), y.ptr(), dy.ptr());
    let (dxp, dwp, dbp) = (dx.ptr(), dw.ptr(), db.ptr());
    let flops = 2 * (s.rows * s.d_in * s.d_out) as u64;
    let tag = format!("{}x{}x{}", s.rows, s.d_in, s.d_out);
    let mut g = c.benchmark_group(GROUP);
    bench.run(
        &mut g,
        GROUP,
        &format!("fwd_{tag}"),
        Work::gemm(f32s(xl + wl + s.d_out + yl), flops),
        move |gpu| ops::linear::linear_forward(gpu, Precision::Fp32, &s, xp, wp, Some(bp), yp),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("bwd_{tag}"),
        Work::gemm(f32s(yl + xl + wl + xl + 2 * (wl + s.d_out)), 2 * flops),
        move |gpu| {
            ops::linear::linear_backward(
                gpu,
                Precision::Fp32,
                &s,
                xp,
                wp,
                dyp,
                Some(dxp),
                dwp,
                Some(dbp),
            )
        },
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn group_norm(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "group_norm";
    let gpu = &bench.gpu;
    let shape = Nchw::new(BATCH, 128, 32, 32);
    let s = GroupNormShape::new(shape, 32, 1e-6)?;
    let (n, ch, stats) = (shape.len(), shape.c, s.stats_len());
    let x = filled(gpu, n, 21, 1.0)?;
    let gamma = filled(gpu, ch, 22, 1.0)?;
    let beta = filled(gpu, ch, 23, 0.1)?;
    let dy = filled(gpu, n, 24, 1.0)?;
    let (y, dx, mean, rstd) = (
        zeros(gpu, n)?,
        zeros(gpu, n)?,
        zeros(gpu, stats)?,
        zeros(gpu, stats)?,
    );
    let (dgamma, dbeta) = (zeros(gpu, ch)?, zeros(gpu, ch)?);
    let scratch = zeros(gpu, ops::groupnorm::group_norm_scratch_len(&s).max(1))?;
    let (xp, gp, bp, yp, mp, rp, sp) = (
        x.ptr(),
        gamma.ptr(),
        beta.ptr(),
        y.ptr(),
        mean.ptr(),
        rstd.ptr(),
        scratch.ptr(),
    );
    let (dyp, dxp, dgp, dbp) = (dy.ptr(), dx.ptr(), dgamma.ptr(), dbeta.ptr());
    // The backward reads the forward's statistics.
    ops::groupnorm::group_norm_forward(gpu, Precision::Fp32, &s, xp, gp, bp, yp, mp, rp, sp)?;
    let tag = format!("{}_g32", dims(shape));
    let mut g = c.benchmark_group(GROUP);
    // Forward: read x, γ, β; write y, mean, rstd. ~7 FLOP/element (Σx, Σx², normalise, affine).
    bench.run(
        &mut g,
        GROUP,
        &format!("fwd_{tag}"),
        Work::mem(f32s(2 * n + 2 * ch + 2 * stats), 7 * n as u64),
        move |gpu| {
            ops::groupnorm::group_norm_forward(gpu, Precision::Fp32, &s, xp, gp, bp, yp, mp, rp, sp)
        },
    );
    // Backward: read x, dy, γ, mean, rstd; write dx; dγ, dβ accumulate. ~10 FLOP/element.
    bench.run(
        &mut g,
        GROUP,
        &format!("bwd_{tag}"),
        Work::mem(f32s(3 * n + 5 * ch + 2 * stats), 10 * n as u64),
        move |gpu| {
            ops::groupnorm::group_norm_backward(
                gpu,
                Precision::Fp32,
                &s,
                xp,
                gp,
                mp,
                rp,
                dyp,
                dxp,
                dgp,
                dbp,
                sp,
            )
        },
    );
    // bf16 activations (x, y, dy, dx in 2 bytes; γ, β, statistics and sums fp32): the same
    // passes over half the bytes. The buffers above are f32-sized, so they hold these too.
    let bf16 = Precision::Bf16;
    let h = |elems: usize| elems as u64 * 2;
    bench.run(
        &mut g,
        GROUP,
        &format!("fwd_bf16_{tag}"),
        Work::mem(h(2 * n) + f32s(2 * ch + 2 * stats), 7 * n as u64),
        move |gpu| ops::groupnorm::group_norm_forward(gpu, bf16, &s, xp, gp, bp, yp, mp, rp, sp),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("bwd_bf16_{tag}"),
        Work::mem(h(3 * n) + f32s(5 * ch + 2 * stats), 10 * n as u64),
        move |gpu| {
            ops::groupnorm::group_norm_backward(
                gpu, bf16, &s, xp, gp, mp, rp, dyp, dxp, dgp, dbp, sp,
            )
        },
    );
    // Group norm + SiLU fused, as a residual block runs them: the forward writes silu(y) only;
    // the backward reads x and da and recomputes y and dy = da·silu'(y) in its passes.
    bench.run(
        &mut g,
        GROUP,
        &format!("fwd_silu_bf16_{tag}"),
        Work::mem(h(2 * n) + f32s(2 * ch + 2 * stats), 11 * n as u64),
        move |gpu| {
            ops::groupnorm::group_norm_silu_forward(gpu, bf16, &s, xp, gp, bp, yp, mp, rp, sp)
        },
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("bwd_silu_bf16_{tag}"),
        Work::mem(h(3 * n) + f32s(6 * ch + 2 * stats), 18 * n as u64),
        move |gpu| {
            ops::groupnorm::group_norm_silu_backward(
                gpu, bf16, &s, xp, gp, bp, mp, rp, dyp, dxp, dgp, dbp, sp,
            )
        },
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn attention(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "attention";
    let gpu = &bench.gpu;
    // The 16×16 level: L = 256 tokens of 256 channels, one head (attention_head_dim unset).
    let s = AttentionShape::new(BATCH, 256, 256, 1)?;
    let (t, p) = (s.tokens_len(), s.probs_len());
    let q = filled(gpu, t, 31, 1.0)?;
    let k = filled(gpu, t, 32, 1.0)?;
    let v = filled(gpu, t, 33, 1.0)?;
    let dout = filled(gpu, t, 34, 1.0)?;
    let (out, probs, dq, dk, dv) = (
        zeros(gpu, t)?,
        zeros(gpu, p)?,
        zeros(gpu, t)?,
        zeros(gpu, t)?,
        zeros(gpu, t)?,
    );
    let ws = zeros(gpu, ops::attention::attention_workspace_len(&s))?;
    let (qp, kp, vp, op, pp) = (q.ptr(), k.ptr(), v.ptr(), out.ptr(), probs.ptr());
    let (dop, dqp, dkp, dvp, wsp) = (dout.ptr(), dq.ptr(), dk.ptr(), dv.ptr(), ws.ptr());
    // The backward reads the forward's probabilities.
    ops::attention::attention_forward(gpu, Precision::Fp32, &s, qp, kp, vp, op, pp)?;
    let gemm = (2 * s.batch * s.len * s.len * s.channels()) as u64; // one (L×L×C) product
    let tag = format!("{}x{}tok_c{}", s.batch, s.len, s.channels());
    let mut g = c.benchmark_group(GROUP);
    // Forward: read q, k, v; write out and the probabilities the backward needs (B·L·L).
    // Two products and a softmax (~5 FLOP per probability).
    bench.run(
        &mut g,
        GROUP,
        &format!("fwd_{tag}"),
        Work::gemm(f32s(4 * t + p), 2 * gemm + 5 * p as u64),
        move |gpu| ops::attention::attention_forward(gpu, Precision::Fp32, &s, qp, kp, vp, op, pp),
    );
    // Backward: read q, k, v, dout, P; write dq, dk, dv. Four products, softmax backward.
    bench.run(
        &mut g,
        GROUP,
        &format!("bwd_{tag}"),
        Work::gemm(f32s(7 * t + p), 4 * gemm + 4 * p as u64),
        move |gpu| {
            ops::attention::attention_backward(
                gpu,
                Precision::Fp32,
                &s,
                qp,
                kp,
                vp,
                pp,
                dop,
                dqp,
                dkp,
                dvp,
                wsp,
            )
        },
    );
    // The (N, C, H, W) ↔ (N, L, C) transposes around it.
    let shape = Nchw::new(BATCH, 256, 16, 16);
    let tag = dims(shape);
    bench.run(
        &mut g,
        GROUP,
        &format!("nchw_to_tokens_{tag}"),
        Work::mem(f32s(2 * t), 0),
        move |gpu| ops::attention::nchw_to_tokens(gpu, Precision::Fp32, shape, qp, op),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("tokens_to_nchw_{tag}"),
        Work::mem(f32s(2 * t), 0),
        move |gpu| ops::attention::tokens_to_nchw(gpu, Precision::Fp32, shape, qp, op),
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn elementwise(bench: &Bench, c: &mut Criterion) -> Result<()> {
    use ops::elementwise as ew;
    const GROUP: &str = "elementwise";
    let gpu = &bench.gpu;
    // The 32×32 level's activations: (128, 128, 32, 32).
    let shape = Nchw::new(BATCH, 128, 32, 32);
    let n = shape.len();
    let nc = shape.n * shape.c;
    let a = filled(gpu, n, 41, 1.0)?;
    let b = filled(gpu, n, 42, 1.0)?;
    let bias = filled(gpu, nc, 43, 1.0)?;
    let (y, acc, dt) = (zeros(gpu, n)?, zeros(gpu, n)?, zeros(gpu, nc)?);
    let (ap, bp, biasp, yp, accp, dtp) =
        (a.ptr(), b.ptr(), bias.ptr(), y.ptr(), acc.ptr(), dt.ptr());
    let dropout = DropoutArgs::new(0.1, 7, 3)?;
    let tag = dims(shape);
    let mut g = c.benchmark_group(GROUP);
    let mut run = |name: &str, work: Work, launch: &dyn Fn(&Gpu) -> CudaResult<()>| {
        bench.run(&mut g, GROUP, &format!("{name}_{tag}"), work, launch)
    };
    let n64 = n as u64;
    run("silu_fwd", Work::mem(f32s(2 * n), 4 * n64), &|gpu| {
        ew::silu_forward(gpu, Precision::Fp32, n, ap, yp)
    });
    run("silu_bwd", Work::mem(f32s(3 * n), 8 * n64), &|gpu| {
        ew::silu_backward(gpu, Precision::Fp32, n, ap, bp, yp)
    });
    run("add", Work::mem(f32s(3 * n), n64), &|gpu| {
        ew::add(gpu, Precision::Fp32, n, ap, bp, yp)
    });
    run("accumulate", Work::mem(f32s(3 * n), n64), &|gpu| {
        ew::accumulate(gpu, Precision::Fp32, n, accp, ap)
    });
    run("dropout_p0.1", Work::mem(f32s(2 * n), n64), &|gpu| {
        ew::dropout_forward(gpu, Precision::Fp32, n, &dropout, ap, yp)
    });
    // The time embedding added per channel in a residual block, and its gradient.
    run(
        "add_channel_bias",
        Work::mem(f32s(2 * n + nc), n64),
        &|gpu| ew::add_channel_bias(gpu, Precision::Fp32, shape, ap, biasp, yp),
    );
    run("sum_spatial", Work::mem(f32s(n + nc), n64), &|gpu| {
        ew::sum_spatial(gpu, Precision::Fp32, shape, ap, dtp)
    });

    // The last up level's skip concatenation: 256 + 128 channels at 32×32.
    let out = Nchw::new(BATCH, 256 + 128, 32, 32);
    let (ca, cb) = (256, 128);
    let part_a = filled(gpu, BATCH * ca * 32 * 32, 44, 1.0)?;
    let part_b = filled(gpu, BATCH * cb * 32 * 32, 45, 1.0)?;
    let cat = zeros(gpu, out.len())?;
    let (pa, pb, pc) = (part_a.ptr(), part_b.ptr(), cat.ptr());
    let tag = format!("{BATCH}x{ca}+{cb}x32x32");
    bench.run(
        &mut g,
        GROUP,
        &format!("concat_{tag}"),
        Work::mem(f32s(2 * out.len()), 0),
        move |gpu| ew::concat_channels(gpu, Precision::Fp32, out, pa, ca, pb, cb, pc),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("split_{tag}"),
        Work::mem(f32s(2 * out.len()), 0),
        move |gpu| ew::split_channels(gpu, Precision::Fp32, out, pc, pa, ca, pb, cb),
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn resample(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "resample";
    let gpu = &bench.gpu;
    // The up level 16×16 → 32×32 at 256 channels.
    let xs = Nchw::new(BATCH, 256, 16, 16);
    let n = xs.len();
    let x = filled(gpu, n, 51, 1.0)?;
    let dy = filled(gpu, 4 * n, 52, 1.0)?;
    let (y, dx) = (zeros(gpu, 4 * n)?, zeros(gpu, n)?);
    let (xp, dyp, yp, dxp) = (x.ptr(), dy.ptr(), y.ptr(), dx.ptr());
    let tag = dims(xs);
    let mut g = c.benchmark_group(GROUP);
    bench.run(
        &mut g,
        GROUP,
        &format!("upsample2x_fwd_{tag}"),
        Work::mem(f32s(5 * n), 0),
        move |gpu| ops::resample::upsample_nearest2x_forward(gpu, Precision::Fp32, xs, xp, yp),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("upsample2x_bwd_{tag}"),
        Work::mem(f32s(5 * n), 3 * n as u64),
        move |gpu| ops::resample::upsample_nearest2x_backward(gpu, Precision::Fp32, xs, dyp, dxp),
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn embedding(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "embedding";
    let gpu = &bench.gpu;
    let e = TimestepEmbedding::new(128, false, 1.0)?;
    let ts: Vec<f32> = (0..BATCH).map(|i| ((i * 7) % 1000) as f32).collect();
    let t = to_device(gpu, &ts)?;
    let emb = zeros(gpu, BATCH * e.dim)?;
    let (tp, ep) = (t.ptr(), emb.ptr());
    let out = BATCH * e.dim;
    let mut g = c.benchmark_group(GROUP);
    bench.run(
        &mut g,
        GROUP,
        &format!("timestep_{BATCH}xd{}", e.dim),
        Work::mem(f32s(BATCH + out), 2 * out as u64),
        move |gpu| ops::embedding::timestep_embedding(gpu, Precision::Fp32, &e, BATCH, tp, ep),
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn loss(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "loss";
    let gpu = &bench.gpu;
    let shape = Nchw::new(BATCH, 3, 32, 32);
    let n = shape.len();
    let pred = filled(gpu, n, 61, 1.0)?;
    let target = filled(gpu, n, 62, 1.0)?;
    let (out, dpred) = (zeros(gpu, 1)?, zeros(gpu, n)?);
    let scratch = zeros(gpu, ops::loss::REDUCE_SCRATCH)?;
    let (pp, tp, lp, dp, sp) = (
        pred.ptr(),
        target.ptr(),
        out.ptr(),
        dpred.ptr(),
        scratch.ptr(),
    );
    let mut g = c.benchmark_group(GROUP);
    // Forward then backward; at minimum pred and target are read once and dpred written.
    bench.run(
        &mut g,
        GROUP,
        &format!("mse_fwd_bwd_{}", dims(shape)),
        Work::mem(f32s(3 * n), 5 * n as u64),
        move |gpu| {
            ops::loss::loss_forward(gpu, Precision::Fp32, LossKind::L2, n, pp, tp, lp, sp)?;
            ops::loss::loss_backward(gpu, Precision::Fp32, LossKind::L2, n, pp, tp, 1.0, dp)
        },
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn optim(bench: &Bench, c: &mut Criterion) -> Result<()> {
    const GROUP: &str = "optim";
    let gpu = &bench.gpu;
    let preset = UNetConfig::preset("ddpm-cifar10").context("the ddpm-cifar10 preset")?;
    let n = UNet::new(preset)?.num_params();
    let params = filled(gpu, n, 71, 0.05)?;
    let grads = filled(gpu, n, 72, 1e-3)?;
    let ema = filled(gpu, n, 73, 0.05)?;
    let (m, v) = (zeros(gpu, n)?, zeros(gpu, n)?);
    let norm = zeros(gpu, 1)?;
    // ‖g‖ pinned just above max_norm = 1, so the clip pass scales (reads and writes) every
    // launch, as when a step clips, by a factor that rounds to ~1 − 1e-6 and keeps g finite.
    let pinned = to_device(gpu, &[1.000_000_1f32])?;
    let scratch = zeros(gpu, ops::optim::REDUCE_SCRATCH)?;
    let (pp, gp, ep, mp, vp) = (params.ptr(), grads.ptr(), ema.ptr(), m.ptr(), v.ptr());
    let (np, pinp, sp): (DevPtr, DevPtr, DevPtr) = (norm.ptr(), pinned.ptr(), scratch.ptr());
    let coeffs = AdamWConfig::default().coeffs(1000);
    let rate = 1.0e-4f32; // 1 − 0.9999
    let tag = format!("{:.1}M", n as f64 / 1e6);
    let n64 = n as u64;
    let mut g = c.benchmark_group(GROUP);
    bench.run(
        &mut g,
        GROUP,
        &format!("grad_norm_{tag}"),
        Work::mem(f32s(n), 2 * n64),
        move |gpu| ops::optim::grad_norm(gpu, n, gp, np, sp),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("grad_norm_clip_{tag}"),
        Work::mem(f32s(3 * n), 3 * n64),
        move |gpu| {
            ops::optim::grad_norm(gpu, n, gp, np, sp)?;
            ops::optim::clip_grads(gpu, n, gp, pinp, 1.0)
        },
    );
    // Read θ, g, m, v; write θ, m, v.
    bench.run(
        &mut g,
        GROUP,
        &format!("adamw_{tag}"),
        Work::mem(f32s(7 * n), 14 * n64),
        move |gpu| ops::optim::adamw_step(gpu, n, pp, gp, mp, vp, &coeffs),
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("ema_{tag}"),
        Work::mem(f32s(3 * n), 3 * n64),
        move |gpu| ops::optim::ema_update(gpu, n, ep, pp, rate),
    );
    // What a training step runs: one pass that scales g (clip and loss scale), updates θ, m, v
    // and the EMA, and writes the bf16 weight copy. Read θ, g, m, v, EMA; write θ, m, v, EMA
    // (fp32) and the copy (2 bytes).
    let lowp = zeros(gpu, n.div_ceil(2))?;
    let bufs = ops::optim::OptimBuffers {
        params: pp,
        grads: gp,
        m: mp,
        v: vp,
        ema: ep,
        lowp: lowp.ptr(),
    };
    let ema_action = ddpm::optim::EmaAction::Average { rate };
    bench.run(
        &mut g,
        GROUP,
        &format!("fused_adamw_ema_bf16_{tag}"),
        Work::mem(f32s(9 * n) + 2 * n64, 20 * n64),
        move |gpu| {
            ops::optim::adamw_ema_step(
                gpu,
                Precision::Bf16,
                n,
                bufs,
                &coeffs,
                0.999_999,
                ema_action,
            )
        },
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn diffusion(bench: &Bench, c: &mut Criterion) -> Result<()> {
    use ops::diffusion::{noise_add, sampler_step, NoiseAddArgs, StepNoise, UpdateBuffers};
    const GROUP: &str = "diffusion";
    let gpu = &bench.gpu;
    let schedule = Schedule::new(ScheduleConfig::default())?;
    let t_len = schedule.sqrt_alphas_cumprod().len();
    let sqrt_ab = to_device(gpu, schedule.sqrt_alphas_cumprod())?;
    let sqrt_1m_ab = to_device(gpu, schedule.sqrt_one_minus_alphas_cumprod())?;
    let item = 3 * 32 * 32;

    // Training noise-add on (128, 3, 32, 32).
    let n = BATCH * item;
    let x0 = filled(gpu, n, 81, 0.5)?;
    let (x_t, target, t_out) = (zeros(gpu, n)?, zeros(gpu, n)?, zeros(gpu, BATCH)?);
    let args = NoiseAddArgs {
        seed: 1,
        step: 1000,
        batch: BATCH,
        item_len: item,
        num_timesteps: t_len,
        prediction: PredictionType::Epsilon,
    };
    let (x0p, ap, bp, xtp, tgp, top) = (
        x0.ptr(),
        sqrt_ab.ptr(),
        sqrt_1m_ab.ptr(),
        x_t.ptr(),
        target.ptr(),
        t_out.ptr(),
    );
    let mut g = c.benchmark_group(GROUP);
    // Read x0; write x_t, target, t. ~8 FLOP/element with the Box–Muller draw.
    bench.run(
        &mut g,
        GROUP,
        &format!("noise_add_{}", dims(Nchw::new(BATCH, 3, 32, 32))),
        Work::mem(f32s(3 * n + BATCH), 8 * n as u64),
        move |gpu| noise_add(gpu, Precision::Fp32, &args, x0p, ap, bp, xtp, tgp, top),
    );

    // Sampler steps on (256, 3, 32, 32); x_prev and x̂₀ go to their own buffers, so every
    // launch does the same work.
    let n = SAMPLE_BATCH * item;
    let xs = filled(gpu, n, 82, 1.0)?;
    let model_out = filled(gpu, n, 83, 1.0)?;
    let (x_prev, x0_hat) = (zeros(gpu, n)?, zeros(gpu, n)?);
    let ids: Vec<u64> = (0..SAMPLE_BATCH as u64).collect();
    let ids = to_device(gpu, &ids)?;
    let (xsp, mop, xpp, x0hp, idp) = (
        xs.ptr(),
        model_out.ptr(),
        x_prev.ptr(),
        x0_hat.ptr(),
        ids.ptr(),
    );
    let ddpm = StepCoeffs::ddpm(
        &schedule,
        PredictionType::Epsilon,
        VarianceType::FixedSmall,
        StepPair {
            t: 500,
            prev: Some(499),
        },
        Some(1.0),
    );
    let ddim = StepCoeffs::ddim(
        &schedule,
        PredictionType::Epsilon,
        StepPair {
            t: 500,
            prev: Some(480),
        },
        Some(1.0),
        0.0,
        true,
    );
    let noise = Some(StepNoise {
        seed: 2,
        step_index: 500,
    });
    let tag = dims(Nchw::new(SAMPLE_BATCH, 3, 32, 32));
    // Read x_t and the model output; write x_prev and x̂₀.
    let bytes = f32s(4 * n) + 8 * SAMPLE_BATCH as u64;
    bench.run(
        &mut g,
        GROUP,
        &format!("ddpm_step_{tag}"),
        Work::mem(bytes, 14 * n as u64),
        move |gpu| {
            let bufs = UpdateBuffers {
                x_t: xsp,
                out: mop,
                out_uncond: 0,
                hist: 0,
                x_new: xpp,
                x_new_model: 0,
                x0: x0hp,
                image_ids: idp,
            };
            sampler_step(gpu, Precision::Fp32, &ddpm, noise, SAMPLE_BATCH, item, bufs)
        },
    );
    bench.run(
        &mut g,
        GROUP,
        &format!("ddim_step_{tag}"),
        Work::mem(bytes, 8 * n as u64),
        move |gpu| {
            let bufs = UpdateBuffers {
                x_t: xsp,
                out: mop,
                out_uncond: 0,
                hist: 0,
                x_new: xpp,
                x_new_model: 0,
                x0: x0hp,
                image_ids: idp,
            };
            sampler_step(gpu, Precision::Fp32, &ddim, None, SAMPLE_BATCH, item, bufs)
        },
    );
    g.finish();
    bench.table(GROUP);
    Ok(())
}

fn run(gpu: Gpu) -> Result<()> {
    let bandwidth = copy_bandwidth(&gpu).context("measuring the copy bandwidth")?;
    let (peak, peak_note) = fp32_peak(&gpu);
    println!(
        "cuda_ops on {} (compute capability {}.{}), batch {BATCH} (samplers {SAMPLE_BATCH})",
        gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
    );
    println!(
        "copy bandwidth {:.2} TB/s (device-to-device copy of 1 GiB, bytes read + written)",
        bandwidth / 1e12
    );
    println!("{peak_note}\n");
    let bench = Bench {
        gpu,
        bandwidth,
        peak,
        rows: RefCell::new(Vec::new()),
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    type Family = fn(&Bench, &mut Criterion) -> Result<()>;
    let families: [(&str, Family); 10] = [
        ("conv2d", conv2d),
        ("linear", linear),
        ("group_norm", group_norm),
        ("attention", attention),
        ("elementwise", elementwise),
        ("resample", resample),
        ("embedding", embedding),
        ("loss", loss),
        ("optim", optim),
        ("diffusion", diffusion),
    ];
    for (name, family) in families {
        family(&bench, &mut c).with_context(|| format!("setting up the {name} benches"))?;
    }
    c.final_summary();
    Ok(())
}

fn main() {
    let ordinal = std::env::var("DDPM_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let gpu = match Gpu::open(ordinal) {
        Ok(g) => g,
        Err(e) => {
            println!("cuda_ops: SKIPPED, no usable GPU: {e}");
            return;
        }
    };
    if gpu.is_emulated() {
        println!(
            "cuda_ops: SKIPPED, built with the cuda-emulator feature: timings need a real GPU"
        );
        return;
    }
    if let Err(e) = run(gpu) {
        eprintln!("cuda_ops: {e:#}");
        std::process::exit(1);
    }
}
