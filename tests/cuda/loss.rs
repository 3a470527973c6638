//! `kernels/loss.cu` against `ddpm::ops::loss`: MSE and L1, forward (the mean) and backward.

use anyhow::Result;
use ddpm::cuda::ops::loss::{loss_backward, loss_forward, LOSS_BLOCKS, REDUCE_SCRATCH};
use ddpm::cuda::testing::{expect_close, from_device, to_device, zeros_on_device, Case};
use ddpm::cuda::Gpu;
use ddpm::ops::loss::{l1_backward, l1_forward, mse_backward, mse_forward};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::train::LossKind;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "loss_mse_matches_cpu",
            run: |gpu| check_kind(gpu, LossKind::L2),
        },
        Case {
            name: "loss_l1_matches_cpu",
            run: |gpu| check_kind(gpu, LossKind::L1),
        },
        Case {
            name: "loss_forward_is_deterministic",
            run: deterministic,
        },
        Case {
            name: "loss_mse_bf16_matches_cpu",
            run: |gpu| check_reduced(gpu, LossKind::L2, Precision::Bf16),
        },
        Case {
            name: "loss_mse_fp16_matches_cpu",
            run: |gpu| check_reduced(gpu, LossKind::L2, Precision::Fp16),
        },
        Case {
            name: "loss_l1_bf16_matches_cpu",
            run: |gpu| check_reduced(gpu, LossKind::L1, Precision::Bf16),
        },
        Case {
            name: "loss_l1_fp16_matches_cpu",
            run: |gpu| check_reduced(gpu, LossKind::L1, Precision::Fp16),
        },
    ]
}

/// Empty, one element, sizes that are not multiples of the block, exactly one and just over one
/// full pass of the fixed first-stage grid, and a large odd size.
const SIZES: [usize; 7] = [
    0,
    1,
    255,
    257 * 3,
    LOSS_BLOCKS * 256,
    LOSS_BLOCKS * 256 + 1,
    1_000_003,
];

fn check_kind(gpu: &Gpu, kind: LossKind) -> Result<()> {
    for (case, &n) in SIZES.iter().enumerate() {
        let mut rng = Philox::new(100 + case as u64);
        let pred: Vec<f32> = rng.normal_vec(n, 1.0);
        let mut target: Vec<f32> = rng.normal_vec(n, 0.5);
        // Exact ties exercise L1's sign(0) = 0.
        for i in (0..n).step_by(7) {
            target[i] = pred[i];
        }
        let dloss = 0.7f32;
        let mut want_grad = vec![0.0f32; n];
        let want_loss = match kind {
            LossKind::L2 => {
                mse_backward(&pred, &target, dloss, &mut want_grad);
                mse_forward(&pred, &target)
            }
            LossKind::L1 => {
                l1_backward(&pred, &target, dloss, &mut want_grad);
                l1_forward(&pred, &target)
            }
        };

        let p = to_device(gpu, &pred)?;
        let t = to_device(gpu, &target)?;
        let loss = zeros_on_device::<f32>(gpu, 1)?;
        let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
        let grad = zeros_on_device::<f32>(gpu, n)?;
        let fp32 = Precision::Fp32;
        loss_forward(
            gpu,
            fp32,
            kind,
            n,
            p.ptr(),
            t.ptr(),
            loss.ptr(),
            scratch.ptr(),
        )?;
        loss_backward(gpu, fp32, kind, n, p.ptr(), t.ptr(), dloss, grad.ptr())?;
        let got_loss: Vec<f32> = from_device(gpu, &loss, 1)?;
        let got_grad: Vec<f32> = from_device(gpu, &grad, n)?;

        // Both sides form each term in f32 and sum in f64, only in different orders: the f64 sums
        // differ by ~1e-16 relative, so the f32 means are equal unless the sum sits on an f32
        // rounding boundary (then one ulp, 6e-8). 1e-6 leaves room for nothing more.
        expect_close(
            &format!("{kind:?} loss n={n}"),
            &got_loss,
            &[want_loss],
            1e-6,
        );
        // The same f32 subtraction and product (k formed on the host as the CPU forms it), no
        // FMA contraction: bit for bit, so no tolerance.
        expect_close(&format!("{kind:?} dpred n={n}"), &got_grad, &want_grad, 0.0);
    }
    Ok(())
}

/// The fixed-shape two-stage reduction gives the same bits every time.
fn deterministic(gpu: &Gpu) -> Result<()> {
    let n = 1_000_003;
    let mut rng = Philox::new(7);
    let pred: Vec<f32> = rng.normal_vec(n, 3.0);
    let target: Vec<f32> = rng.normal_vec(n, 1.0);
    let p = to_device(gpu, &pred)?;
    let t = to_device(gpu, &target)?;
    let loss = zeros_on_device::<f32>(gpu, 1)?;
    let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
    for kind in [LossKind::L2, LossKind::L1] {
        let mut seen: Option<u32> = None;
        for _ in 0..3 {
            let fp32 = Precision::Fp32;
            loss_forward(
                gpu,
                fp32,
                kind,
                n,
                p.ptr(),
                t.ptr(),
                loss.ptr(),
                scratch.ptr(),
            )?;
            let bits = from_device::<f32>(gpu, &loss, 1)?[0].to_bits();
            if let Some(first) = seen {
                assert_eq!(
                    bits, first,
                    "{kind:?}: the loss changed between identical runs"
                );
            }
            seen = Some(bits);
        }
    }
    Ok(())
}

/// pred (and dpred) stored as `dt`, the target fp32, against the CPU on the same rounded pred.
/// The kernels widen pred exactly and then do what the fp32 kernels do, so the loss keeps the
/// fp32 test's 1e-6 (f64 sums in another order) and dpred — the CPU's f32 value, bit for bit,
/// rounded once to the format — is exactly dt.round of the CPU's dpred (also where fp16's tiny
/// k = 2·dloss/N makes it subnormal: both sides round to nearest even).
fn check_reduced(gpu: &Gpu, kind: LossKind, dt: Precision) -> Result<()> {
    for (case, &n) in SIZES.iter().enumerate() {
        let mut rng = Philox::new(200 + case as u64);
        let pred: Vec<f32> = rng
            .normal_vec(n, 1.0)
            .into_iter()
            .map(|v: f32| dt.round(v))
            .collect();
        let mut target: Vec<f32> = rng.normal_vec(n, 0.5);
        for i in (0..n).step_by(7) {
            target[i] = pred[i];
        }
        // A loss scale, as fp16 training passes in dloss.
        let dloss = if dt == Precision::Fp16 {
            1024.0
        } else {
            0.7f32
        };
        let mut want_grad = vec![0.0f32; n];
        let want_loss = match kind {
            LossKind::L2 => {
                mse_backward(&pred, &target, dloss, &mut want_grad);
                mse_forward(&pred, &target)
            }
            LossKind::L1 => {
                l1_backward(&pred, &target, dloss, &mut want_grad);
                l1_forward(&pred, &target)
            }
        };
        let want_grad: Vec<f32> = want_grad.iter().map(|&v| dt.round(v)).collect();

        let p = gpu.alloc(n * dt.bytes(), "pred")?;
        gpu.upload_as(p.ptr(), dt, &pred, "pred")?;
        let t = to_device(gpu, &target)?;
        let loss = zeros_on_device::<f32>(gpu, 1)?;
        let scratch = zeros_on_device::<f32>(gpu, REDUCE_SCRATCH)?;
        let grad = gpu.alloc(n * dt.bytes(), "dpred")?;
        gpu.upload_as(grad.ptr(), dt, &vec![f32::NAN; n], "dpred")?;
        loss_forward(
            gpu,
            dt,
            kind,
            n,
            p.ptr(),
            t.ptr(),
            loss.ptr(),
            scratch.ptr(),
        )?;
        loss_backward(gpu, dt, kind, n, p.ptr(), t.ptr(), dloss, grad.ptr())?;
        let got_loss: Vec<f32> = from_device(gpu, &loss, 1)?;
        let mut got_grad = vec![0.0f32; n];
        gpu.download_as(&mut got_grad, grad.ptr(), dt, "dpred")?;

        expect_close(
            &format!("{kind:?} {dt} loss n={n}"),
            &got_loss,
            &[want_loss],
            1e-6,
        );
        expect_close(
            &format!("{kind:?} {dt} dpred n={n}"),
            &got_grad,
            &want_grad,
            0.0,
        );
    }
    Ok(())
}
