//! Where a CPU step's time goes: wall time per kind of op, for `ddpm bench train|sample
//! --profile`.
//!
//! The CPU backend runs one op at a time (each op spreads over the threads itself), so the wall
//! time of an op call is its share of the step. Off by default: then a timed call costs one
//! relaxed atomic load. The convolution also records the thread time it spends gathering its
//! panels (the implicit im2col), shown as a share of the convolution rows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What a timed span of a step is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    ConvForward,
    ConvBackwardData,
    ConvBackwardWeights,
    /// Thread time inside the convolutions spent gathering input patches into packed panels.
    ConvPacking,
    Linear,
    GroupNorm,
    Attention,
    /// SiLU, dropout, adds, concatenation, resampling, layout changes, embeddings.
    Elementwise,
    /// Timesteps, noise, x_t, the target, the loss and its gradient.
    NoiseAndLoss,
    /// Gradient norm and clipping, AdamW, EMA.
    Optimizer,
    /// The sampler's update of x_t between network evaluations.
    SamplerUpdate,
    /// Getting buffers for the step.
    Allocation,
}

impl Op {
    pub const ALL: [Op; 12] = [
        Op::ConvForward,
        Op::ConvBackwardData,
        Op::ConvBackwardWeights,
        Op::ConvPacking,
        Op::Linear,
        Op::GroupNorm,
        Op::Attention,
        Op::Elementwise,
        Op::NoiseAndLoss,
        Op::Optimizer,
        Op::SamplerUpdate,
        Op::Allocation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::ConvForward => "conv forward",
            Op::ConvBackwardData => "conv backward (input)",
            Op::ConvBackwardWeights => "conv backward (weights)",
            Op::ConvPacking => "  of which: patch gathering (thread time)",
            Op::Linear => "linear",
            Op::GroupNorm => "group norm (+ SiLU)",
            Op::Attention => "attention",
            Op::Elementwise => "elementwise / layout",
            Op::NoiseAndLoss => "noise, target, loss",
            Op::Optimizer => "clip, AdamW, EMA",
            Op::SamplerUpdate => "sampler update",
            Op::Allocation => "allocation",
        }
    }

    /// Whether the row is thread time summed over threads (not a share of the wall time).
    pub fn is_thread_time(self) -> bool {
        self == Op::ConvPacking
    }
}

static ON: AtomicBool = AtomicBool::new(false);
const N: usize = Op::ALL.len();
static NANOS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static CALLS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static FLOPS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Starts (or stops) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        for i in 0..N {
            NANOS[i].store(0, Ordering::Relaxed);
            CALLS[i].store(0, Ordering::Relaxed);
            FLOPS[i].store(0, Ordering::Relaxed);
        }
    }
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Runs `f`, charging its wall time (and `flops`, for a rate) to `op` when recording.
#[inline]
pub fn time<R>(op: Op, flops: u64, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let r = f();
    record(op, start.elapsed().as_nanos() as u64, flops);
    r
}

/// A start time when recording, for spans that [`time`] cannot wrap.
#[inline]
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Charges the time since `start` (from [`start`]) to `op`.
#[inline]
pub fn stop(op: Op, start: Option<Instant>) {
    if let Some(t) = start {
        record(op, t.elapsed().as_nanos() as u64, 0);
    }
}

/// Charges a span measured elsewhere to `op` (when recording).
pub fn record_span(op: Op, span: std::time::Duration) {
    if enabled() {
        record(op, span.as_nanos() as u64, 0);
    }
}

fn record(op: Op, nanos: u64, flops: u64) {
    let i = op as usize;
    NANOS[i].fetch_add(nanos, Ordering::Relaxed);
    CALLS[i].fetch_add(1, Ordering::Relaxed);
    FLOPS[i].fetch_add(flops, Ordering::Relaxed);
}

/// What was recorded for one kind of op.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub op: Op,
    pub seconds: f64,
    pub calls: u64,
    pub flops: u64,
}

/// Everything recorded since [`enable`], kinds with no calls left out.
pub fn rows() -> Vec<Row> {
    Op::ALL
        .iter()
        .map(|&op| {
            let i = op as usize;
            Row {
                op,
                seconds: NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
                calls: CALLS[i].load(Ordering::Relaxed),
                flops: FLOPS[i].load(Ordering::Relaxed),
            }
        })
        .filter(|r| r.calls > 0)
        .collect()
}

/// The table `--profile` prints: per kind, ms per step, share of the step, calls per step and
/// the rate of the FLOP-counted ops; then what no op accounts for (the network's own glue).
pub fn table(step_seconds: f64, steps: u64, threads: usize) -> String {
    let steps = steps.max(1) as f64;
    let mut out = String::new();
    out.push_str("| op | ms/step | share | calls/step | GFLOP/s |\n|---|---:|---:|---:|---:|\n");
    let mut accounted = 0.0;
    for r in rows() {
        let ms = r.seconds * 1e3 / steps;
        let share = if r.op.is_thread_time() {
            // Thread time over the threads' combined wall time in the convolutions.
            let conv: f64 = rows()
                .iter()
                .filter(|c| {
                    matches!(
                        c.op,
                        Op::ConvForward | Op::ConvBackwardData | Op::ConvBackwardWeights
                    )
                })
                .map(|c| c.seconds)
                .sum();
            format!(
                "{:.1}% of conv",
                100.0 * r.seconds / (conv * threads as f64).max(1e-12)
            )
        } else {
            accounted += r.seconds;
            format!(
                "{:.1}%",
                100.0 * r.seconds / (step_seconds * steps).max(1e-12)
            )
        };
        let rate = if r.flops > 0 {
            format!("{:.1}", r.flops as f64 / r.seconds.max(1e-12) / 1e9)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {ms:.2} | {share} | {:.1} | {rate} |\n",
            r.op.name(),
            r.calls as f64 / steps
        ));
    }
    let rest = (step_seconds * steps - accounted).max(0.0);
    out.push_str(&format!(
        "| other (network glue, copies) | {:.2} | {:.1}% | | |\n",
        rest * 1e3 / steps,
        100.0 * rest / (step_seconds * steps).max(1e-12)
    ));
    out
}

/// The process's peak resident set (VmHWM), where the system reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU's model name, where the system reports it (Linux).
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The FLOP-counted rows as percentages of `peak` GFLOP/s, e.g. "conv forward 71%, …".
pub fn shares_of_peak(peak: f64) -> String {
    rows()
        .iter()
        .filter(|r| r.flops > 0)
        .map(|r| {
            let rate = r.flops as f64 / r.seconds.max(1e-12) / 1e9;
            format!("{} {:.0}%", r.op.name(), 100.0 * rate / peak.max(1e-12))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
