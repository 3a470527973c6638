//! A small test runner for the CUDA parity tests (`tests/cuda/`), which run with
//! `harness = false` so their report is printed whatever cargo captures: on a machine without a
//! usable GPU every test is listed as skipped with the reason, and the run still fails if a test
//! that did run failed. Each test may report its largest error against the CPU reference, and the
//! runner prints them as one table at the end.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::device::Gpu;

/// The order in which the kernel emulator runs the threads of a block between two barriers
/// (`$DDPM_EMU_THREAD_ORDER`: `index`, `reverse`, `random` or `random:SEED`; see docs/cuda.md).
/// On a GPU the order is the hardware's: a kernel must be right in every order, and running the
/// suite under several shows a missing barrier that one order hides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Thread 0, 1, 2, …: each thread runs after its lower-numbered neighbours.
    Index,
    /// The last thread first.
    Reverse,
    /// A permutation drawn afresh for every pass over the block, from this seed and the launch
    /// count (so one seed is one schedule for one sequence of launches).
    Random(u64),
}

impl ThreadOrder {
    /// `index`, `reverse`, `random` (seed 1) or `random:SEED`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "index" | "" => Some(Self::Index),
            "reverse" => Some(Self::Reverse),
            "random" => Some(Self::Random(1)),
            r => r
                .strip_prefix("random:")
                .and_then(|seed| seed.parse().ok())
                .map(Self::Random),
        }
    }
}

impl std::fmt::Display for ThreadOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index => write!(f, "index"),
            Self::Reverse => write!(f, "reverse"),
            Self::Random(seed) => write!(f, "random:{seed}"),
        }
    }
}

/// The emulator's thread order for the launches that follow; `None` when the kernels are not
/// emulated (then nothing changes), else the order before (or why `$DDPM_EMU_THREAD_ORDER` is
/// not one).
pub fn set_thread_order(order: ThreadOrder) -> Option<Result<ThreadOrder, String>> {
    #[cfg(feature = "cuda-emulator")]
    return Some(super::emulator::set_thread_order(order));
    #[cfg(not(feature = "cuda-emulator"))]
    {
        let _ = order;
        None
    }
}

/// The emulator's thread order (`None` when the kernels are not emulated).
pub fn thread_order() -> Option<Result<ThreadOrder, String>> {
    #[cfg(feature = "cuda-emulator")]
    return Some(super::emulator::thread_order());
    #[cfg(not(feature = "cuda-emulator"))]
    None
}

/// One CUDA test: a name and a body that panics (assert) or returns an error on failure.
pub struct Case {
    pub name: &'static str,
    pub run: fn(&Gpu) -> anyhow::Result<()>,
}

/// One reported comparison.
#[derive(Clone, Debug)]
pub struct Measured {
    pub test: String,
    pub what: String,
    pub max_abs: f64,
    pub max_rel: f64,
    pub tolerance: f64,
}

thread_local! {
    static GPU: RefCell<Option<std::rc::Rc<Gpu>>> = const { RefCell::new(None) };
    static CURRENT: RefCell<String> = const { RefCell::new(String::new()) };
    static REPORTS: RefCell<Vec<Measured>> = const { RefCell::new(Vec::new()) };
}

/// Largest absolute and relative differences between `got` and `want`; the relative one is
/// |got − want| / max(|want|, floor) so values near zero do not dominate.
pub fn max_errors(got: &[f32], want: &[f32], floor: f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "compared buffers differ in length");
    let mut abs = 0.0f64;
    let mut rel = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (f64::from(g), f64::from(w));
        let d = (g - w).abs();
        if !d.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        abs = abs.max(d);
        rel = rel.max(d / w.abs().max(floor));
    }
    (abs, rel)
}

/// Compares a GPU result with the CPU reference: passes when every element is within `tol`
/// relative to max(|want|, 1e-3·max|want|, 1e-6). Records the errors for the summary table.
pub fn expect_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let floor = (1e-3 * scale).max(1e-6);
    let (abs, rel) = max_errors(got, want, floor);
    REPORTS.with(|r| {
        r.borrow_mut().push(Measured {
            test: CURRENT.with(|c| c.borrow().clone()),
            what: what.to_string(),
            max_abs: abs,
            max_rel: rel,
            tolerance: tol,
        })
    });
    assert!(
        rel <= tol,
        "{what}: max relative error {rel:.3e} (max abs {abs:.3e}) exceeds {tol:.1e}"
    );
}

/// Compares with an absolute bound, for quantities whose natural error scale is not their own
/// size (e.g. weights after an optimizer step, whose difference is bounded by the step size).
/// The table's tolerance column then holds `max_abs`'s bound.
pub fn expect_within(what: &str, got: &[f32], want: &[f32], max_abs: f64) {
    let (abs, rel) = max_errors(got, want, 1e-6);
    REPORTS.with(|r| {
        r.borrow_mut().push(Measured {
            test: CURRENT.with(|c| c.borrow().clone()),
            what: format!("{what} (abs)"),
            max_abs: abs,
            max_rel: rel,
            tolerance: max_abs,
        })
    });
    assert!(
        abs <= max_abs,
        "{what}: max absolute error {abs:.3e} exceeds {max_abs:.1e}"
    );
}

/// Compares as a whole: ‖got − want‖₂ / ‖want‖₂ ≤ `tol`, for results of reduced precision
/// (bf16, fp16) whose elementwise error is not meaningful near zero but whose overall error is
/// bounded by the format's rounding. The table's "rel" column holds this ratio.
pub fn expect_rel_l2(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: compared buffers differ in length"
    );
    let (mut diff, mut norm, mut abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = f64::from(g) - f64::from(w);
        diff += d * d;
        norm += f64::from(w) * f64::from(w);
        abs = abs.max(d.abs());
    }
    let rel = if diff.is_finite() {
        diff.sqrt() / norm.sqrt().max(1e-30)
    } else {
        f64::INFINITY
    };
    REPORTS.with(|r| {
        r.borrow_mut().push(Measured {
            test: CURRENT.with(|c| c.borrow().clone()),
            what: format!("{what} (rel L2)"),
            max_abs: abs,
            max_rel: rel,
            tolerance: tol,
        })
    });
    assert!(
        rel <= tol,
        "{what}: relative L2 error {rel:.3e} exceeds {tol:.1e}"
    );
}

/// Runs `cases` (filtered by the first non-flag argument, as libtest does) and exits with 1 if
/// any failed. Without a GPU, prints each as skipped with the reason and exits 0.
pub fn run_main(suite: &str, cases: &[Case]) {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    // `cargo test -- --list` support, so test discovery tools see the names.
    if std::env::args().any(|a| a == "--list") {
        for c in &selected {
            println!("{}: test", c.name);
        }
        return;
    }
    let ordinal = std::env::var("DDPM_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!("\nrunning {} {suite} tests", selected.len());
    let gpu = match Gpu::open(ordinal) {
        Ok(g) => std::rc::Rc::new(g),
        Err(e) => {
            for c in &selected {
                println!("test {} ... SKIPPED (no usable GPU)", c.name);
            }
            println!(
                "\n{suite}: {} tests SKIPPED, not run: {e}\n",
                selected.len()
            );
            // On a machine that is meant to have a GPU, a skip is a failure.
            if std::env::var("DDPM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                println!("{suite}: DDPM_REQUIRE_GPU=1 but no GPU could be opened");
                std::process::exit(1);
            }
            return;
        }
    };
    if gpu.is_emulated() {
        println!(
            "on the CPU emulator of the CUDA kernels (the cuda-emulator feature): NOT a GPU; \
             this checks kernel and launch logic, not the hardware"
        );
        match thread_order() {
            Some(Ok(order)) => println!(
                "threads of a block run in {order} order between barriers \
                 (DDPM_EMU_THREAD_ORDER=index|reverse|random[:SEED])"
            ),
            Some(Err(e)) => {
                println!("{suite}: {e}");
                std::process::exit(2);
            }
            None => {}
        }
    } else {
        println!(
            "on {} (compute capability {}.{})",
            gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
        );
    }
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    let mut failed = Vec::new();
    for c in &selected {
        CURRENT.with(|cur| *cur.borrow_mut() = c.name.to_string());
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (c.run)(&gpu)));
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => println!("test {} ... ok ({secs:.2} s)", c.name),
            Ok(Err(e)) => {
                println!("test {} ... FAILED: {e:#}", c.name);
                failed.push(c.name);
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("test {} ... FAILED: {msg}", c.name);
                failed.push(c.name);
            }
        }
    }
    println!(
        "\n{:<44} {:<28} {:>10} {:>10} {:>8}",
        "test", "compared", "max abs", "max rel", "tol"
    );
    REPORTS.with(|r| {
        for m in r.borrow().iter() {
            println!(
                "{:<44} {:<28} {:>10.2e} {:>10.2e} {:>8.0e}",
                m.test, m.what, m.max_abs, m.max_rel, m.tolerance
            );
        }
    });
    println!(
        "\n{suite}: {} passed, {} failed",
        selected.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// The runner's GPU as a shared handle, for tests that build trainers or samplers.
pub fn shared_gpu() -> std::rc::Rc<Gpu> {
    GPU.with(|g| g.borrow().clone())
        .expect("shared_gpu is only available inside run_main")
}

/// Device memory holding a copy of `data`.
pub fn to_device<T: bytemuck::Pod>(
    gpu: &Gpu,
    data: &[T],
) -> super::CudaResult<super::device::DeviceMemory> {
    let mem = gpu.alloc(std::mem::size_of_val(data), "test input")?;
    gpu.upload(mem.ptr(), data, "test input")?;
    Ok(mem)
}

/// Device memory holding f32 `data` stored as `dt` (rounded to nearest even), at least one
/// element long.
pub fn to_device_as(
    gpu: &Gpu,
    dt: crate::precision::Precision,
    data: &[f32],
) -> super::CudaResult<super::device::DeviceMemory> {
    let mem = gpu.alloc(data.len().max(1) * dt.bytes(), "test input")?;
    gpu.upload_as(mem.ptr(), dt, data, "test input")?;
    Ok(mem)
}

/// The first `len` values of device memory stored as `dt`, widened to f32.
pub fn from_device_as(
    gpu: &Gpu,
    dt: crate::precision::Precision,
    mem: &super::device::DeviceMemory,
    len: usize,
) -> super::CudaResult<Vec<f32>> {
    assert!(
        len * dt.bytes() <= mem.bytes(),
        "reading past a device buffer"
    );
    let mut out = vec![0.0f32; len];
    gpu.download_as(&mut out, mem.ptr(), dt, "test output")?;
    Ok(out)
}

/// Device memory of `len` elements of `T`, zeroed.
pub fn zeros_on_device<T: bytemuck::Pod>(
    gpu: &Gpu,
    len: usize,
) -> super::CudaResult<super::device::DeviceMemory> {
    let mem = gpu.alloc(len * std::mem::size_of::<T>(), "test buffer")?;
    gpu.zero(mem.ptr(), mem.bytes(), "test buffer")?;
    Ok(mem)
}

/// The first `len` elements of device memory, copied to the host.
pub fn from_device<T: bytemuck::Pod + Default + Clone>(
    gpu: &Gpu,
    mem: &super::device::DeviceMemory,
    len: usize,
) -> super::CudaResult<Vec<T>> {
    assert!(
        len * std::mem::size_of::<T>() <= mem.bytes(),
        "reading past a device buffer"
    );
    let mut out = vec![T::default(); len];
    gpu.download(&mut out, mem.ptr(), "test output")?;
    Ok(out)
}
