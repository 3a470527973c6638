//! Group norm on the GPU against the CPU reference, forward and backward, with the activations
//! (x, y, dy, dx) stored as fp32, bf16 or fp16; γ, β, dγ, dβ, mean and rstd are fp32 always.
//!
//! The reference runs in f64 on the same inputs the GPU sees — in bf16/fp16 the inputs x and dy
//! are rounded to the storage type first (`Precision::round`, which is what `upload_as` stores) —
//! so the measured error is the GPU's alone.
//! Tolerances (relative, `expect_close`'s metric, where values below 1e-3·max|want| are measured
//! against that floor), for fp32:
//! - mean, rstd: 1e-5. fp32 sums of at most 34k values in a fixed tree (per-thread runs of ≤ 64,
//!   then warp and block trees, then an in-order merge of chunks): a few f32 roundings, ~1e-7.
//! - y: 2e-4. Elementwise after the statistics, but where y crosses zero the floor turns the check
//!   into an absolute one of tol·1e-3·max|y| — 1e-4 would be about one f32 ulp of the largest
//!   output — while (x − μ)·s + β carries an ulp or two of its larger terms and of μ. A host
//!   emulation of these kernels measured up to 4.7e-5.
//! - dx: 2e-4, the same argument; dx = rstd·(γ·dy − m1 − x̂·m2) also cancels (emulated: 2e-5).
//! - dγ, dβ: 1e-4: sums over B·H·W of products with only f32 accumulation (emulated: 6e-6).
//!
//! In bf16/fp16 every kernel still computes in fp32 from the (exactly representable) stored
//! inputs; the only new error is the single rounding of each y and dx element to the storage type
//! when it is stored: |round(v) − v| ≤ u·|v| (u = `unit_roundoff`, 2⁻⁸ bf16, 2⁻¹¹ fp16; round
//! to nearest; values here are far from fp16's subnormals and overflow), on top of the fp32 error
//! bounded above. So y and dx get u + 2e-4 (the fp32 tolerance plus one rounding: 4.1e-3 in
//! bf16, 6.9e-4 in fp16 — measured 3.9e-3 and 4.9e-4, i.e. the rounding's u is attained), and the
//! statistics and the parameter gradients, which are fp32 sums of the same inputs and never stored
//! narrow, keep their fp32 tolerances. A value stored through a coarser type (bf16's rounding, up
//! to 8·u_fp16, in an fp16 buffer), a dropped term, or a reference computed on the unrounded
//! inputs fails. The cases include a group of 34 060 elements, so the chunked forward (partial
//! stats → combine → apply) and the chunked backward sums run in every precision.
//!
//! Outputs that must be written start as NaN, so a kernel that reads them (or skips an element)
//! fails; parameter gradients start at random values, so `+=` is checked against the reference's
//! `+=`. Every case also runs twice and must give bitwise the same results (no atomics).

use ddpm::cuda::ops::groupnorm::{
    group_norm_backward, group_norm_forward, group_norm_scratch_len, group_norm_silu_backward,
    group_norm_silu_forward,
};
use ddpm::cuda::testing::{
    expect_close, from_device, from_device_as, to_device, to_device_as, zeros_on_device, Case,
};
use ddpm::cuda::Gpu;
use ddpm::ops::groupnorm::{self as cpu, Affine, GroupNormShape};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "groupnorm_one_group_odd_5x7",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(2, 6, 5, 7), 1, 1),
        },
        Case {
            name: "groupnorm_group_per_channel",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(3, 8, 4, 4), 8, 2),
        },
        Case {
            name: "groupnorm_unet_like_32_groups",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(2, 64, 8, 8), 32, 3),
        },
        Case {
            name: "groupnorm_odd_channels_per_group",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(3, 6, 7, 5), 3, 4),
        },
        Case {
            name: "groupnorm_1x1_spatial",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(4, 12, 1, 1), 4, 5),
        },
        // 4·64·65 = 16 640 elements per group: two chunks in the forward, the last one short.
        Case {
            name: "groupnorm_big_group_two_chunks",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(2, 8, 64, 65), 2, 6),
        },
        // One group of 2·130·131 = 34 060 elements (three forward chunks) and planes of 17 030
        // (two backward chunks each), with B·G = 1: all the parallelism comes from the split.
        Case {
            name: "groupnorm_single_huge_group",
            run: |gpu| check(gpu, Precision::Fp32, Nchw::new(1, 2, 130, 131), 1, 7),
        },
        // The same kernels instantiated for bf16 and fp16 activations: the U-Net's shape, odd
        // channels per group, and the chunked paths (forward: 3 chunks; backward: 2 per plane).
        Case {
            name: "groupnorm_bf16_unet_like_32_groups",
            run: |gpu| check(gpu, Precision::Bf16, Nchw::new(2, 64, 8, 8), 32, 13),
        },
        Case {
            name: "groupnorm_fp16_unet_like_32_groups",
            run: |gpu| check(gpu, Precision::Fp16, Nchw::new(2, 64, 8, 8), 32, 23),
        },
        Case {
            name: "groupnorm_bf16_odd_channels_per_group",
            run: |gpu| check(gpu, Precision::Bf16, Nchw::new(3, 6, 7, 5), 3, 14),
        },
        Case {
            name: "groupnorm_fp16_odd_channels_per_group",
            run: |gpu| check(gpu, Precision::Fp16, Nchw::new(3, 6, 7, 5), 3, 24),
        },
        Case {
            name: "groupnorm_bf16_single_huge_group",
            run: |gpu| check(gpu, Precision::Bf16, Nchw::new(1, 2, 130, 131), 1, 17),
        },
        Case {
            name: "groupnorm_fp16_single_huge_group",
            run: |gpu| check(gpu, Precision::Fp16, Nchw::new(1, 2, 130, 131), 1, 27),
        },
        // Group norm + SiLU fused (the normalised x never stored; dy = da·silu'(y) recomputed
        // in the backward's passes), in every precision, with and without the chunked paths.
        Case {
            name: "groupnorm_silu_fused_fp32",
            run: |gpu| check_silu(gpu, Precision::Fp32, Nchw::new(2, 64, 8, 8), 32, 31),
        },
        Case {
            name: "groupnorm_silu_fused_bf16",
            run: |gpu| check_silu(gpu, Precision::Bf16, Nchw::new(2, 64, 8, 8), 32, 32),
        },
        Case {
            name: "groupnorm_silu_fused_fp16_chunked",
            run: |gpu| check_silu(gpu, Precision::Fp16, Nchw::new(1, 2, 130, 131), 1, 33),
        },
        Case {
            name: "groupnorm_silu_fused_fp32_chunked",
            run: |gpu| check_silu(gpu, Precision::Fp32, Nchw::new(1, 2, 130, 131), 1, 34),
        },
    ]
}

const EPS: f64 = 1e-5;

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// What one GPU run produced.
struct Outputs {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

impl Outputs {
    fn bits(&self) -> Vec<u32> {
        [
            &self.y,
            &self.mean,
            &self.rstd,
            &self.dx,
            &self.dgamma,
            &self.dbeta,
        ]
        .iter()
        .flat_map(|v| v.iter().map(|x| x.to_bits()))
        .collect()
    }
}

struct Inputs {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
    dgamma0: Vec<f32>,
    dbeta0: Vec<f32>,
}

/// Runs forward and backward with x, y, dy, dx stored as `dt`; everything else is f32.
fn run_gpu(gpu: &Gpu, dt: Precision, g: &GroupNormShape, i: &Inputs) -> anyhow::Result<Outputs> {
    let (len, stats, c) = (g.x.len(), g.stats_len(), g.x.c);
    let x = to_device_as(gpu, dt, &i.x)?;
    let gamma = to_device(gpu, &i.gamma)?;
    let beta = to_device(gpu, &i.beta)?;
    let dy = to_device_as(gpu, dt, &i.dy)?;
    let y = to_device_as(gpu, dt, &vec![f32::NAN; len])?;
    let mean = to_device(gpu, &vec![f32::NAN; stats])?;
    let rstd = to_device(gpu, &vec![f32::NAN; stats])?;
    let dx = to_device_as(gpu, dt, &vec![f32::NAN; len])?;
    let dgamma = to_device(gpu, &i.dgamma0)?;
    let dbeta = to_device(gpu, &i.dbeta0)?;
    let scratch = zeros_on_device::<f32>(gpu, group_norm_scratch_len(g))?;
    group_norm_forward(
        gpu,
        dt,
        g,
        x.ptr(),
        gamma.ptr(),
        beta.ptr(),
        y.ptr(),
        mean.ptr(),
        rstd.ptr(),
        scratch.ptr(),
    )?;
    group_norm_backward(
        gpu,
        dt,
        g,
        x.ptr(),
        gamma.ptr(),
        mean.ptr(),
        rstd.ptr(),
        dy.ptr(),
        dx.ptr(),
        dgamma.ptr(),
        dbeta.ptr(),
        scratch.ptr(),
    )?;
    Ok(Outputs {
        y: from_device_as(gpu, dt, &y, len)?,
        mean: from_device(gpu, &mean, stats)?,
        rstd: from_device(gpu, &rstd, stats)?,
        dx: from_device_as(gpu, dt, &dx, len)?,
        dgamma: from_device(gpu, &dgamma, c)?,
        dbeta: from_device(gpu, &dbeta, c)?,
    })
}

/// Tolerance of y and dx: the fp32 one (see the module comment), plus one rounding to the
/// storage type when it is narrower than fp32.
fn stored_tol(dt: Precision) -> f64 {
    let rounding = if dt.is_reduced() {
        dt.unit_roundoff()
    } else {
        0.0
    };
    2e-4 + rounding
}

fn check(gpu: &Gpu, dt: Precision, shape: Nchw, groups: usize, seed: u64) -> anyhow::Result<()> {
    let g = GroupNormShape::new(shape, groups, EPS)?;
    let (len, stats, c) = (shape.len(), g.stats_len(), shape.c);
    let mut rng = Philox::new(seed);
    // x off-centre (mean 0.5) so the statistics are exercised away from zero. x and dy are
    // rounded to the storage type here, so the reference sees exactly what the GPU reads.
    let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| dt.round(x)).collect() };
    let inputs = Inputs {
        x: round(rng.uniform_vec(len, -0.5, 1.5)),
        gamma: rng.uniform_vec(c, 0.5, 1.5),
        beta: rng.uniform_vec(c, -0.5, 0.5),
        dy: round(rng.uniform_vec(len, -1.0, 1.0)),
        dgamma0: rng.uniform_vec(c, -1.0, 1.0),
        dbeta0: rng.uniform_vec(c, -1.0, 1.0),
    };

    // The reference, in f64.
    let (x64, gamma64, beta64) = (widen(&inputs.x), widen(&inputs.gamma), widen(&inputs.beta));
    let (mut y64, mut mean64, mut rstd64) = (vec![0.0; len], vec![0.0; stats], vec![0.0; stats]);
    let affine = Affine {
        gamma: &gamma64,
        beta: &beta64,
    };
    cpu::group_norm_forward(&g, &x64, Some(affine), &mut y64, &mut mean64, &mut rstd64);
    let mut dx64 = vec![0.0; len];
    let (mut dgamma64, mut dbeta64) = (widen(&inputs.dgamma0), widen(&inputs.dbeta0));
    cpu::group_norm_backward(
        &g,
        &x64,
        Some(&gamma64),
        &mean64,
        &rstd64,
        &widen(&inputs.dy),
        &mut dx64,
        Some((&mut dgamma64, &mut dbeta64)),
    );

    let got = run_gpu(gpu, dt, &g, &inputs)?;
    expect_close("mean", &got.mean, &narrow(&mean64), 1e-5);
    expect_close("rstd", &got.rstd, &narrow(&rstd64), 1e-5);
    expect_close(&format!("y ({dt})"), &got.y, &narrow(&y64), stored_tol(dt));
    expect_close(
        &format!("dx ({dt})"),
        &got.dx,
        &narrow(&dx64),
        stored_tol(dt),
    );
    expect_close(
        "dgamma (accumulated)",
        &got.dgamma,
        &narrow(&dgamma64),
        1e-4,
    );
    expect_close("dbeta (accumulated)", &got.dbeta, &narrow(&dbeta64), 1e-4);

    let again = run_gpu(gpu, dt, &g, &inputs)?;
    anyhow::ensure!(
        got.bits() == again.bits(),
        "two runs on the same inputs differ: the kernels are not deterministic"
    );
    Ok(())
}

/// The fused a = silu(group_norm(x)) and its backward from da, against the f64 reference of the
/// two ops composed (y = group_norm(x), a = silu(y); dy = da·silu'(y), then group norm's
/// backward). The tolerances are the unfused ones (see the module comment): a and dx are stored
/// once (2e-4 plus one rounding to `dt`); the statistics and dγ, dβ keep their fp32 tolerances in
/// every precision, since the fused kernels never round y or dy to the storage type. A SiLU
/// derivative taken at the wrong point, a missing β in the recomputed y, or da used as dy fails.
fn check_silu(
    gpu: &Gpu,
    dt: Precision,
    shape: Nchw,
    groups: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let g = GroupNormShape::new(shape, groups, EPS)?;
    let (len, stats, c) = (shape.len(), g.stats_len(), shape.c);
    let mut rng = Philox::new(seed);
    let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| dt.round(x)).collect() };
    let x = round(rng.uniform_vec(len, -0.5, 1.5));
    let gamma = rng.uniform_vec(c, 0.5, 1.5);
    let beta = rng.uniform_vec(c, -0.5, 0.5);
    let da = round(rng.uniform_vec(len, -1.0, 1.0));
    let (dgamma0, dbeta0) = (rng.uniform_vec(c, -1.0, 1.0), rng.uniform_vec(c, -1.0, 1.0));

    let (x64, gamma64, beta64) = (widen(&x), widen(&gamma), widen(&beta));
    let (mut y64, mut mean64, mut rstd64) = (vec![0.0; len], vec![0.0; stats], vec![0.0; stats]);
    let affine = Affine {
        gamma: &gamma64,
        beta: &beta64,
    };
    cpu::group_norm_forward(&g, &x64, Some(affine), &mut y64, &mut mean64, &mut rstd64);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let a64: Vec<f64> = y64.iter().map(|&v| v * sig(v)).collect();
    let dy64: Vec<f64> = y64
        .iter()
        .zip(&da)
        .map(|(&v, &d)| f64::from(d) * sig(v) * (1.0 + v * (1.0 - sig(v))))
        .collect();
    let mut dx64 = vec![0.0; len];
    let (mut dgamma64, mut dbeta64) = (widen(&dgamma0), widen(&dbeta0));
    cpu::group_norm_backward(
        &g,
        &x64,
        Some(&gamma64),
        &mean64,
        &rstd64,
        &dy64,
        &mut dx64,
        Some((&mut dgamma64, &mut dbeta64)),
    );

    let xd = to_device_as(gpu, dt, &x)?;
    let gd = to_device(gpu, &gamma)?;
    let bd = to_device(gpu, &beta)?;
    let dad = to_device_as(gpu, dt, &da)?;
    let ad = to_device_as(gpu, dt, &vec![f32::NAN; len])?;
    let mean = to_device(gpu, &vec![f32::NAN; stats])?;
    let rstd = to_device(gpu, &vec![f32::NAN; stats])?;
    let dxd = to_device_as(gpu, dt, &vec![f32::NAN; len])?;
    let dgd = to_device(gpu, &dgamma0)?;
    let dbd = to_device(gpu, &dbeta0)?;
    let scratch = zeros_on_device::<f32>(gpu, group_norm_scratch_len(&g))?;
    group_norm_silu_forward(
        gpu,
        dt,
        &g,
        xd.ptr(),
        gd.ptr(),
        bd.ptr(),
        ad.ptr(),
        mean.ptr(),
        rstd.ptr(),
        scratch.ptr(),
    )?;
    group_norm_silu_backward(
        gpu,
        dt,
        &g,
        xd.ptr(),
        gd.ptr(),
        bd.ptr(),
        mean.ptr(),
        rstd.ptr(),
        dad.ptr(),
        dxd.ptr(),
        dgd.ptr(),
        dbd.ptr(),
        scratch.ptr(),
    )?;
    expect_close(
        "mean",
        &from_device(gpu, &mean, stats)?,
        &narrow(&mean64),
        1e-5,
    );
    expect_close(
        "rstd",
        &from_device(gpu, &rstd, stats)?,
        &narrow(&rstd64),
        1e-5,
    );
    expect_close(
        &format!("silu(y) ({dt})"),
        &from_device_as(gpu, dt, &ad, len)?,
        &narrow(&a64),
        stored_tol(dt),
    );
    expect_close(
        &format!("dx ({dt})"),
        &from_device_as(gpu, dt, &dxd, len)?,
        &narrow(&dx64),
        stored_tol(dt),
    );
    expect_close(
        &format!("dgamma ({dt}, fp32 inside)"),
        &from_device(gpu, &dgd, c)?,
        &narrow(&dgamma64),
        1e-4,
    );
    expect_close(
        &format!("dbeta ({dt}, fp32 inside)"),
        &from_device(gpu, &dbd, c)?,
        &narrow(&dbeta64),
        1e-4,
    );
    Ok(())
}
