//! The emulator's own checks, on purpose-written kernels (kernels/emulator/selftest.cu, compiled
//! into the emulator only): each test shows that a check catches what it claims to. Skipped on a
//! GPU, where these kernels do not exist.

use anyhow::{ensure, Result};
use ddpm::cuda::testing::{
    from_device, set_thread_order, to_device, zeros_on_device, Case, ThreadOrder,
};
use ddpm::cuda::{Gpu, Launch};
use ddpm::kernel_args;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "emulator_thread_orders_expose_a_missing_barrier",
        run: missing_barrier,
    }]
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
