//! The checks the emulator (and `Gpu::launch`) make, each shown to catch what it claims to:
//! launch limits (on a GPU too), and on purpose-written kernels (kernels/emulator/selftest.cu,
//! compiled into the emulator only; those tests are skipped on a GPU, where the kernels do not
//! exist) the thread orders and the memory checker: writes into the guard zones around a
//! buffer, and — in a child process, since they stop it as a GPU fault stops the context —
//! reads and writes that reach a guard page, and misaligned accesses.

use anyhow::{ensure, Result};
use ddpm::cuda::testing::{
    from_device, set_thread_order, to_device, zeros_on_device, Case, ThreadOrder,
};
use ddpm::cuda::{Gpu, Launch};
use ddpm::kernel_args;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "emulator_thread_orders_expose_a_missing_barrier",
            run: missing_barrier,
        },
        Case {
            name: "launches_beyond_the_hardware_limits_are_refused",
            run: launch_limits,
        },
        Case {
            name: "emulator_reports_writes_into_guard_zones",
            run: guard_zone_writes,
        },
        Case {
            name: "emulator_reports_faults_naming_kernel_buffer_offset",
            run: faults,
        },
        Case {
            name: FAULT_CHILD,
            run: fault_child,
        },
    ]
}

/// The case a child process runs to fault on purpose (see [`faults`]); nothing otherwise.
const FAULT_CHILD: &str = "emulator_fault_child_runs_only_when_spawned";
/// Which fault the child makes.
const FAULT_VAR: &str = "DDPM_EMU_TEST_FAULT";

/// `emu_selftest_store` of one value at `offset` of `p`.
fn store(gpu: &Gpu, p: u64, offset: i64) -> ddpm::cuda::CudaResult<()> {
    let value = 7.0f32;
    gpu.launch(
        "emu_selftest_store",
        Launch::blocks(1, 32),
        kernel_args![p, offset, value],
        || format!("offset={offset}"),
    )
}

/// One float stored one element past the end (into the bytes between an end that is not a
/// multiple of 16 and the guard page) and one before the start: each launch fails, naming the
/// kernel, the buffer and the offsets; a store inside passes, and the zone was restored.
fn guard_zone_writes(gpu: &Gpu) -> Result<()> {
    if !gpu.is_emulated() {
        return Ok(());
    }
    let buf = to_device(gpu, &[0.0f32; 10])?;
    let e = store(gpu, buf.ptr(), 10).expect_err("a store past the end");
    let msg = e.to_string();
    ensure!(
        msg.contains("emu_selftest_store")
            && msg.contains("wrote past the end of test input (40 bytes): bytes 0..4 after its end (offsets 40..44)"),
        "{msg}"
    );
    let e = store(gpu, buf.ptr(), -3).expect_err("a store before the start");
    let msg = e.to_string();
    ensure!(
        msg.contains("wrote before the start of test input (40 bytes): offsets -12..-8"),
        "{msg}"
    );
    store(gpu, buf.ptr(), 9)?;
    let got = from_device::<f32>(gpu, &buf, 10)?;
    ensure!(
        got[9] == 7.0 && got[..9].iter().all(|&v| v == 0.0),
        "{got:?}"
    );
    Ok(())
}

/// Runs this test binary again on [`FAULT_CHILD`] with each fault, and checks that the child
/// died saying what, where and in which buffer.
fn faults(gpu: &Gpu) -> Result<()> {
    if !gpu.is_emulated() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let cases = [
        (
            "store",
            "kernel emu_selftest_store, block (0, 0, 0), thread (0, 0, 0): write at",
            "0 bytes past the end of test input (64 bytes; offset 64)",
        ),
        (
            "load",
            "kernel emu_selftest_load, block (0, 0, 0), thread (0, 0, 0): read at",
            "4 bytes past the end of test input (64 bytes; offset 68)",
        ),
        (
            "misaligned",
            "misaligned access: kernel emu_selftest_load_bytes, block (0, 0, 0), thread (0, 0, 0)",
            "not a multiple of its type's alignment",
        ),
    ];
    for (mode, what, detail) in cases {
        let out = std::process::Command::new(&exe)
            .arg(FAULT_CHILD)
            .env(FAULT_VAR, mode)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            !out.status.success(),
            "{mode}: the child did not fail:\n{text}"
        );
        ensure!(
            text.contains(what) && text.contains(detail),
            "{mode}: the child's report lacks {what:?} / {detail:?}:\n{text}"
        );
    }
    Ok(())
}

/// In a child started by [`faults`]: one access past a 64-byte buffer (whose end meets the
/// guard page) or one misaligned load, which must stop the process.
fn fault_child(gpu: &Gpu) -> Result<()> {
    let Ok(mode) = std::env::var(FAULT_VAR) else {
        return Ok(());
    };
    let buf = to_device(gpu, &[0.0f32; 16])?;
    let out = zeros_on_device::<f32>(gpu, 1)?;
    let (p, o) = (buf.ptr(), out.ptr());
    let launch = |kernel: &str, offset: i64| {
        gpu.launch(
            kernel,
            Launch::blocks(1, 32),
            kernel_args![p, offset, o],
            String::new,
        )
    };
    match mode.as_str() {
        "store" => store(gpu, p, 16)?,
        "load" => launch("emu_selftest_load", 17)?,
        "misaligned" => launch("emu_selftest_load_bytes", 2)?,
        other => anyhow::bail!("{FAULT_VAR}={other}: unknown"),
    }
    anyhow::bail!("{mode}: the access did not stop the process")
}

/// A real kernel (`scale_f32`) launched past each limit the hardware checks: refused with an
/// error naming the kernel and the limit, before anything runs; a block of 1024 runs.
fn launch_limits(gpu: &Gpu) -> Result<()> {
    let n = 64usize;
    let x = to_device(gpu, &vec![1.0f32; n])?;
    let y = zeros_on_device::<f32>(gpu, n)?;
    let launch = |cfg: Launch| {
        let (xp, yp, alpha) = (x.ptr(), y.ptr(), 2.0f32);
        gpu.launch("scale_f32", cfg, kernel_args![xp, yp, alpha, n], || {
            format!("n={n}")
        })
    };
    let refused = [
        (Launch::blocks(1, 2048), "a block of 2048 threads"),
        (
            Launch::grid((1, 1, 1), (1, 1, 65)),
            "block dimensions 1×1×65",
        ),
        (
            Launch::grid((1, 70_000, 1), (32, 1, 1)),
            "grid dimensions 1×70000×1",
        ),
        (
            Launch::blocks(1, 32).with_shared(64 << 10),
            "dynamic shared memory",
        ),
    ];
    for (cfg, needle) in refused {
        let e = launch(cfg).expect_err(needle);
        let msg = e.to_string();
        ensure!(
            msg.contains("scale_f32") && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
    launch(Launch::blocks(1, 1024))?;
    ensure!(from_device::<f32>(gpu, &y, n)? == vec![2.0f32; n]);
    Ok(())
}

/// Runs `f` with the emulator's threads in `order`, then puts the order back.
fn with_order<T>(order: ThreadOrder, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = set_thread_order(order);
    let out = f();
    if let Some(Ok(b)) = before {
        set_thread_order(b);
    }
    out
}

/// `emu_selftest_shift` (out[i] = in[i − 1] through shared memory) over 3 blocks of 256: with
/// its barrier right in every order; without it right in index order only — the case a single
/// index-order run cannot see, and the reason CI runs the suite under a second order.
fn missing_barrier(gpu: &Gpu) -> Result<()> {
    if !gpu.is_emulated() {
        return Ok(());
    }
    let (blocks, threads) = (3usize, 256u32);
    let n = blocks * threads as usize;
    let orders = [
        ThreadOrder::Index,
        ThreadOrder::Reverse,
        ThreadOrder::Random(1),
        ThreadOrder::Random(2),
    ];
    for (run, order) in orders.into_iter().enumerate() {
        for sync in [1i32, 0] {
            // Values no earlier launch stored in the kernel's shared array.
            let base = (1000 * (2 * run + sync as usize)) as f32;
            let input: Vec<f32> = (0..n).map(|i| base + i as f32).collect();
            let want: Vec<f32> = (0..n)
                .map(|i| input[if i % threads as usize == 0 { i } else { i - 1 }])
                .collect();
            let x = to_device(gpu, &input)?;
            let y = zeros_on_device::<f32>(gpu, n)?;
            let got = with_order(order, || {
                let (xp, yp) = (x.ptr(), y.ptr());
                gpu.launch(
                    "emu_selftest_shift",
                    Launch::blocks(blocks, threads),
                    kernel_args![xp, yp, sync],
                    || format!("sync={sync}"),
                )?;
                Ok(from_device::<f32>(gpu, &y, n)?)
            })?;
            let right = got == want;
            let expected = sync == 1 || order == ThreadOrder::Index;
            ensure!(
                right == expected,
                "{order} order, barrier {}: the result is {} (expected {})",
                if sync == 1 { "present" } else { "missing" },
                if right { "right" } else { "wrong" },
                if expected { "right" } else { "wrong" },
            );
        }
    }
    Ok(())
}
