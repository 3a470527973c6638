//! The checks the emulator (and `Gpu::launch`) make, each shown to catch what it claims to:
//! launch limits (on a GPU too), and on purpose-written kernels (kernels/emulator/selftest.cu,
//! compiled into the emulator only; those tests are skipped on a GPU, where the kernels do not
//! exist) the thread orders.

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
    ]
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
