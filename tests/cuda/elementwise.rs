//! Elementwise, resampling and embedding kernels against the CPU reference, on random inputs.
//! Written outputs start as NaN on the device, so an element a kernel fails to write shows up as
//! a non-finite error.
//!
//! Tolerances: most of these ops do the same one or two fp32 operations per element, in the same
//! order, as the CPU, so they are compared bit for bit (tolerance 0); the exceptions say why.

use ddpm::cuda::device::DeviceMemory;
use ddpm::cuda::ops::{elementwise as ew, embedding as emb, resample};
use ddpm::cuda::testing::{
    expect_close, expect_within, from_device, from_device_as, to_device, to_device_as, Case,
};
use ddpm::cuda::Gpu;
use ddpm::ops::add::{add, add_channel_bias, add_channel_bias_backward, scale};
use ddpm::ops::concat::{concat_channels, split_channels};
use ddpm::ops::conv2d::Padding;
use ddpm::ops::dropout::{dropout_backward, dropout_forward, DropoutArgs};
use ddpm::ops::embedding::{timestep_embedding_forward, TimestepEmbedding};
use ddpm::ops::silu::{silu_backward, silu_forward};
use ddpm::ops::upsample::{upsample_nearest2x_backward, upsample_nearest2x_forward};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

const FP32: Precision = Precision::Fp32;

/// The two reduced storage formats.
const REDUCED: [Precision; 2] = [Precision::Bf16, Precision::Fp16];

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "elementwise_silu_matches_cpu",
            run: silu_matches_cpu,
        },
        Case {
            name: "elementwise_add_accumulate_scale_match_cpu",
            run: add_accumulate_scale_match_cpu,
        },
        Case {
            name: "elementwise_channel_bias_and_sum_spatial_match_cpu",
            run: channel_bias_matches_cpu,
        },
        Case {
            name: "elementwise_dropout_matches_cpu_mask",
            run: dropout_matches_cpu,
        },
        Case {
            name: "elementwise_concat_split_match_cpu",
            run: concat_split_match_cpu,
        },
        Case {
            name: "resample_upsample_matches_cpu",
            run: upsample_matches_cpu,
        },
        Case {
            name: "resample_pad2d_matches_host_reference",
            run: pad_matches_host_reference,
        },
        Case {
            name: "embedding_timestep_matches_cpu",
            run: timestep_embedding_matches_cpu,
        },
        Case {
            name: "embedding_class_matches_cpu",
            run: class_embedding_matches_cpu,
        },
        Case {
            name: "elementwise_silu_reduced",
            run: silu_reduced,
        },
        Case {
            name: "elementwise_add_accumulate_scale_dropout_reduced",
            run: add_accumulate_scale_dropout_reduced,
        },
        Case {
            name: "elementwise_channel_bias_and_sum_spatial_reduced",
            run: channel_bias_reduced,
        },
        Case {
            name: "elementwise_concat_split_reduced",
            run: concat_split_reduced,
        },
        Case {
            name: "elementwise_casts",
            run: casts,
        },
        Case {
            name: "resample_upsample_pad2d_reduced",
            run: resample_reduced,
        },
        Case {
            name: "embedding_timestep_reduced",
            run: timestep_embedding_reduced,
        },
        Case {
            name: "embedding_class_reduced",
            run: class_embedding_reduced,
        },
    ]
}

/// Element counts: below one warp, not a multiple of the block, several blocks.
const SIZES: [usize; 4] = [1, 31, 1000, 70_001];

/// Shapes with odd spatial sizes, single channels and pixels.
const SHAPES: [Nchw; 4] = [
    Nchw::new(2, 3, 5, 7),
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 16, 8, 8),
    Nchw::new(2, 5, 33, 17),
];

fn nan_on_device(gpu: &Gpu, len: usize) -> anyhow::Result<DeviceMemory> {
    Ok(to_device(gpu, &vec![f32::NAN; len])?)
}

fn download(gpu: &Gpu, mem: &DeviceMemory, len: usize) -> anyhow::Result<Vec<f32>> {
    Ok(from_device::<f32>(gpu, mem, len)?)
}

fn silu_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    for (seed, &n) in SIZES.iter().enumerate() {
        let mut rng = Philox::new(300 + seed as u64);
        // Wide enough to reach both branches of the CPU's overflow-safe sigmoid.
        let x: Vec<f32> = rng.normal_vec(n, 6.0);
        let dy: Vec<f32> = rng.normal_vec(n, 1.0);
        let mut y = vec![0.0f32; n];
        silu_forward(&x, &mut y);
        let mut dx = vec![0.0f32; n];
        silu_backward(&x, &dy, &mut dx);

        let (x_d, dy_d) = (to_device(gpu, &x)?, to_device(gpu, &dy)?);
        let (y_d, dx_d) = (nan_on_device(gpu, n)?, nan_on_device(gpu, n)?);
        ew::silu_forward(gpu, FP32, n, x_d.ptr(), y_d.ptr())?;
        ew::silu_backward(gpu, FP32, n, x_d.ptr(), dy_d.ptr(), dx_d.ptr())?;
        // y: expf (≤ 2 ulp) against Rust's exp, and x/(1+e^−x) against the CPU's e^x/(1+e^x)
        // for x < 0: a few ulp per element (a CPU-side emulation of the GPU formula measures
        // 2.4e-7), so 1e-5.
        expect_close(&format!("silu y n={n}"), &download(gpu, &y_d, n)?, &y, 1e-5);
        // dx: 1 + x·(1 − σ) cancels near x ≈ −1.28, so those elements carry an absolute error
        // of a few ulp of 1 against expect_close's floor (1e-3 of the largest |dx|): the same
        // emulation measures 1.2e-5 at n = 70 001 (the CPU in f32 against f64: 5.5e-6), so 1e-4.
        expect_close(
            &format!("silu dx n={n}"),
            &download(gpu, &dx_d, n)?,
            &dx,
            1e-4,
        );
    }
    Ok(())
}

fn add_accumulate_scale_match_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    for (seed, &n) in SIZES.iter().enumerate() {
        let mut rng = Philox::new(400 + seed as u64);
        let a: Vec<f32> = rng.normal_vec(n, 1.0);
        let b: Vec<f32> = rng.normal_vec(n, 1.0);
        let (a_d, b_d) = (to_device(gpu, &a)?, to_device(gpu, &b)?);

        // One fp32 addition or multiplication per element, as on the CPU: bit-identical.
        let mut want = vec![0.0f32; n];
        add(&a, &b, &mut want);
        let y_d = nan_on_device(gpu, n)?;
        ew::add(gpu, FP32, n, a_d.ptr(), b_d.ptr(), y_d.ptr())?;
        expect_close(&format!("add n={n}"), &download(gpu, &y_d, n)?, &want, 0.0);

        let mut want = a.clone();
        accumulate(&mut want, &b);
        let acc_d = to_device(gpu, &a)?;
        ew::accumulate(gpu, FP32, n, acc_d.ptr(), b_d.ptr())?;
        expect_close(
            &format!("accumulate n={n}"),
            &download(gpu, &acc_d, n)?,
            &want,
            0.0,
        );

        let alpha = -0.737f32;
        let mut want = vec![0.0f32; n];
        scale(&a, alpha, &mut want);
        let y_d = nan_on_device(gpu, n)?;
        ew::scale(gpu, FP32, n, a_d.ptr(), alpha, y_d.ptr())?;
        expect_close(
            &format!("scale n={n}"),
            &download(gpu, &y_d, n)?,
            &want,
            0.0,
        );
    }
    Ok(())
}

fn channel_bias_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    let mut shapes = SHAPES.to_vec();
    shapes.push(Nchw::new(2, 3, 64, 64)); // long rows: many iterations per lane
    for (seed, &s) in shapes.iter().enumerate() {
        let mut rng = Philox::new(500 + seed as u64);
        let nc = s.n * s.c;
        let x: Vec<f32> = rng.normal_vec(s.len(), 1.0);
        let t: Vec<f32> = rng.normal_vec(nc, 1.0);
        let dy: Vec<f32> = rng.normal_vec(s.len(), 1.0);
        let mut y = vec![0.0f32; s.len()];
        add_channel_bias(s, &x, &t, &mut y);
        let mut dt = vec![0.0f32; nc];
        add_channel_bias_backward(s, &dy, None, &mut dt);

        let (x_d, t_d, dy_d) = (
            to_device(gpu, &x)?,
            to_device(gpu, &t)?,
            to_device(gpu, &dy)?,
        );
        let (y_d, dt_d) = (nan_on_device(gpu, s.len())?, nan_on_device(gpu, nc)?);
        ew::add_channel_bias(gpu, FP32, s, x_d.ptr(), t_d.ptr(), y_d.ptr())?;
        ew::sum_spatial(gpu, FP32, s, dy_d.ptr(), dt_d.ptr())?;
        // One addition per element: bit-identical.
        expect_close(
            &format!("add_channel_bias {s}"),
            &download(gpu, &y_d, s.len())?,
            &y,
            0.0,
        );
        // A warp's tree sum against the CPU's running sum: the running sum's error grows like
        // √HW ulps of the partial sums, and rows whose sum nearly cancels are measured against
        // the floor (1e-3 of the largest |sum|). Emulating the warp order on the CPU measures
        // 7e-5 for HW = 561 and 4096, so 1e-3.
        expect_close(
            &format!("sum_spatial {s}"),
            &download(gpu, &dt_d, nc)?,
            &dt,
            1e-3,
        );
    }
    Ok(())
}

fn dropout_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    for (seed, &n) in SIZES.iter().enumerate() {
        let a = DropoutArgs::new(0.1, 0xD0_0000 + seed as u64, 7 + seed as u64)?;
        let mut rng = Philox::new(600 + seed as u64);
        // Nonzero inputs, so a dropped element (0) can never coincide with a kept one.
        let x: Vec<f32> = rng.uniform_vec(n, 0.5, 2.0);
        let dy: Vec<f32> = rng.uniform_vec(n, -2.0, -0.5);
        let mut y = vec![0.0f32; n];
        dropout_forward(&a, &x, &mut y);
        let mut dx = vec![0.0f32; n];
        dropout_backward(&a, &dy, &mut dx);

        let (x_d, dy_d) = (to_device(gpu, &x)?, to_device(gpu, &dy)?);
        let (y_d, dx_d) = (nan_on_device(gpu, n)?, nan_on_device(gpu, n)?);
        ew::dropout_forward(gpu, FP32, n, &a, x_d.ptr(), y_d.ptr())?;
        ew::dropout_backward(gpu, FP32, n, &a, dy_d.ptr(), dx_d.ptr())?;
        let (got_y, got_dx) = (download(gpu, &y_d, n)?, download(gpu, &dx_d, n)?);
        // The same Philox words and one multiplication by the same f32 scale: bit-identical,
        // which also says the masks are the same element for element.
        expect_close(&format!("dropout y n={n}"), &got_y, &y, 0.0);
        expect_close(&format!("dropout dx n={n}"), &got_dx, &dx, 0.0);
        let mismatched = got_y
            .iter()
            .zip(&y)
            .filter(|(g, w)| (**g == 0.0) != (**w == 0.0))
            .count();
        assert_eq!(mismatched, 0, "dropout masks differ at n={n}");
        if n >= 1000 {
            // About 10% dropped (binomial: ±3σ is ±0.03 at n = 1000).
            let dropped = got_y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            assert!(
                (dropped - 0.1).abs() < 0.03,
                "dropped {dropped:.3} at n={n}"
            );
        }
    }
    Ok(())
}

fn concat_split_match_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    for (seed, &s) in SHAPES.iter().enumerate() {
        for (c_a, c_b) in [(1, 1), (3, 5), (16, 2)] {
            let out = s.with_c(c_a + c_b);
            let mut rng = Philox::new(700 + seed as u64);
            let a: Vec<f32> = rng.normal_vec(s.with_c(c_a).len(), 1.0);
            let b: Vec<f32> = rng.normal_vec(s.with_c(c_b).len(), 1.0);
            let dy: Vec<f32> = rng.normal_vec(out.len(), 1.0);
            let mut y = vec![0.0f32; out.len()];
            concat_channels(out, &[(&a, c_a), (&b, c_b)], &mut y);
            let (mut da, mut db) = (vec![0.0f32; a.len()], vec![0.0f32; b.len()]);
            split_channels(out, &dy, &mut [(&mut da, c_a), (&mut db, c_b)]);

            let (a_d, b_d, dy_d) = (
                to_device(gpu, &a)?,
                to_device(gpu, &b)?,
                to_device(gpu, &dy)?,
            );
            let y_d = nan_on_device(gpu, out.len())?;
            let (da_d, db_d) = (nan_on_device(gpu, a.len())?, nan_on_device(gpu, b.len())?);
            ew::concat_channels(gpu, FP32, out, a_d.ptr(), c_a, b_d.ptr(), c_b, y_d.ptr())?;
            ew::split_channels(gpu, FP32, out, dy_d.ptr(), da_d.ptr(), c_a, db_d.ptr(), c_b)?;
            // Copies: bit-identical.
            expect_close(
                &format!("concat {out} {c_a}+{c_b}"),
                &download(gpu, &y_d, out.len())?,
                &y,
                0.0,
            );
            expect_close(
                &format!("split da {out} {c_a}+{c_b}"),
                &download(gpu, &da_d, a.len())?,
                &da,
                0.0,
            );
            expect_close(
                &format!("split db {out} {c_a}+{c_b}"),
                &download(gpu, &db_d, b.len())?,
                &db,
                0.0,
            );
        }
    }
    Ok(())
}

fn upsample_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    for (seed, &xs) in SHAPES.iter().enumerate() {
        let ys = Nchw::new(xs.n, xs.c, 2 * xs.h, 2 * xs.w);
        let mut rng = Philox::new(800 + seed as u64);
        let x: Vec<f32> = rng.normal_vec(xs.len(), 1.0);
        let dy: Vec<f32> = rng.normal_vec(ys.len(), 1.0);
        let mut y = vec![0.0f32; ys.len()];
        upsample_nearest2x_forward(xs, &x, &mut y);
        let mut dx = vec![0.0f32; xs.len()];
        upsample_nearest2x_backward(xs, &dy, &mut dx);

        let (x_d, dy_d) = (to_device(gpu, &x)?, to_device(gpu, &dy)?);
        let (y_d, dx_d) = (nan_on_device(gpu, ys.len())?, nan_on_device(gpu, xs.len())?);
        resample::upsample_nearest2x_forward(gpu, FP32, xs, x_d.ptr(), y_d.ptr())?;
        resample::upsample_nearest2x_backward(gpu, FP32, xs, dy_d.ptr(), dx_d.ptr())?;
        // Copies, and the four-term sum in the CPU's order: bit-identical.
        expect_close(
            &format!("upsample y {xs}"),
            &download(gpu, &y_d, ys.len())?,
            &y,
            0.0,
        );
        expect_close(
            &format!("upsample dx {xs}"),
            &download(gpu, &dx_d, xs.len())?,
            &dx,
            0.0,
        );
    }
    Ok(())
}

/// Host reference for zero padding: y (N, C, top + H + bottom, left + W + right).
fn pad_host(xs: Nchw, p: Padding, x: &[f32]) -> Vec<f32> {
    let (oh, ow) = (p.top + xs.h + p.bottom, p.left + xs.w + p.right);
    let mut y = vec![0.0f32; xs.n * xs.c * oh * ow];
    for plane in 0..xs.n * xs.c {
        for i in 0..xs.h {
            for j in 0..xs.w {
                y[(plane * oh + i + p.top) * ow + j + p.left] = x[(plane * xs.h + i) * xs.w + j];
            }
        }
    }
    y
}

/// Host reference for the pad backward: the crop of dy where x was.
fn crop_host(xs: Nchw, p: Padding, dy: &[f32]) -> Vec<f32> {
    let (oh, ow) = (p.top + xs.h + p.bottom, p.left + xs.w + p.right);
    let mut dx = vec![0.0f32; xs.len()];
    for plane in 0..xs.n * xs.c {
        for i in 0..xs.h {
            for j in 0..xs.w {
                dx[(plane * xs.h + i) * xs.w + j] = dy[(plane * oh + i + p.top) * ow + j + p.left];
            }
        }
    }
    dx
}

fn pad_matches_host_reference(gpu: &Gpu) -> anyhow::Result<()> {
    let pads = [
        Padding::bottom_right(1),
        Padding::same(2),
        Padding {
            top: 1,
            bottom: 2,
            left: 0,
            right: 3,
        },
        Padding::default(),
    ];
    for (seed, &xs) in SHAPES.iter().enumerate() {
        for p in pads {
            let ys = resample::padded_shape(xs, p);
            let mut rng = Philox::new(900 + seed as u64);
            let x: Vec<f32> = rng.normal_vec(xs.len(), 1.0);
            let dy: Vec<f32> = rng.normal_vec(ys.len(), 1.0);
            let (x_d, dy_d) = (to_device(gpu, &x)?, to_device(gpu, &dy)?);
            let (y_d, dx_d) = (nan_on_device(gpu, ys.len())?, nan_on_device(gpu, xs.len())?);
            resample::pad2d_forward(gpu, FP32, xs, p, x_d.ptr(), y_d.ptr())?;
            resample::pad2d_backward(gpu, FP32, xs, p, dy_d.ptr(), dx_d.ptr())?;
            // Copies and zeros: bit-identical.
            expect_close(
                &format!("pad {xs} {p:?}"),
                &download(gpu, &y_d, ys.len())?,
                &pad_host(xs, p, &x),
                0.0,
            );
            expect_close(
                &format!("crop {xs} {p:?}"),
                &download(gpu, &dx_d, xs.len())?,
                &crop_host(xs, p, &dy),
                0.0,
            );
        }
    }
    Ok(())
}

fn timestep_embedding_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    // (dim, flip_sin_to_cos, freq_shift): DDPM's (1) and newer models' (0) shifts, both column
    // orders, an odd dim (zero pad) and the smallest dims.
    let configs = [
        (128, false, 1.0),
        (128, true, 0.0),
        (33, true, 1.0),
        (7, false, 0.0),
        (2, false, 0.0),
        (4, true, 1.0),
    ];
    let mut rng = Philox::new(1000);
    // Integer timesteps over the whole DDPM range and real-valued ones (continuous time).
    let mut t: Vec<f32> = (0..1000).step_by(37).map(|v| v as f32).collect();
    t.push(999.0);
    t.extend(rng.uniform_vec::<f32>(20, 0.0, 1000.0));
    let n = t.len();
    let t_d = to_device(gpu, &t)?;
    for (dim, flip, shift) in configs {
        let e = TimestepEmbedding::new(dim, flip, shift)?;
        let mut want = vec![0.0f32; n * dim];
        timestep_embedding_forward(&e, &t, &mut want);
        let emb_d = nan_on_device(gpu, n * dim)?;
        emb::timestep_embedding(gpu, FP32, &e, n, t_d.ptr(), emb_d.ptr())?;
        // Both sides compute in f64 and round once to f32; CUDA's f64 exp/sin/cos are within
        // 1–2 ulp of f64, so the results differ by at most one f32 rounding (≤ 6e-8 relative).
        expect_close(
            &format!("timestep_embedding dim={dim} flip={flip} shift={shift}"),
            &download(gpu, &emb_d, n * dim)?,
            &want,
            1e-6,
        );
    }
    Ok(())
}

fn class_embedding_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    // (batch, classes, width): repeated labels, an unused class, width not a multiple of 32.
    for (seed, &(n, classes, width)) in [(7, 5, 13), (1, 1, 1), (64, 10, 512), (33, 100, 40)]
        .iter()
        .enumerate()
    {
        let mut rng = Philox::new(1100 + seed as u64);
        let labels: Vec<u32> = (0..n).map(|_| rng.next_u32() % classes as u32).collect();
        let table: Vec<f32> = rng.normal_vec(classes * width, 1.0);
        let emb0: Vec<f32> = rng.normal_vec(n * width, 1.0);
        let demb: Vec<f32> = rng.normal_vec(n * width, 1.0);
        let dtable0: Vec<f32> = rng.normal_vec(classes * width, 1.0);

        // The CPU code of nn::unet: emb[i] += table[labels[i]], dtable[labels[i]] += demb[i].
        let mut want_emb = emb0.clone();
        for (row, &c) in want_emb.chunks_exact_mut(width).zip(&labels) {
            accumulate(row, &table[c as usize * width..(c as usize + 1) * width]);
        }
        let mut want_dtable = dtable0.clone();
        for (row, &c) in demb.chunks_exact(width).zip(&labels) {
            accumulate(
                &mut want_dtable[c as usize * width..(c as usize + 1) * width],
                row,
            );
        }

        let labels_d = to_device(gpu, &labels)?;
        let (table_d, emb_d) = (to_device(gpu, &table)?, to_device(gpu, &emb0)?);
        let (demb_d, dtable_d) = (to_device(gpu, &demb)?, to_device(gpu, &dtable0)?);
        emb::class_embedding_forward(
            gpu,
            FP32,
            n,
            width,
            labels_d.ptr(),
            table_d.ptr(),
            emb_d.ptr(),
        )?;
        emb::class_embedding_backward(
            gpu,
            FP32,
            n,
            classes,
            width,
            labels_d.ptr(),
            demb_d.ptr(),
            dtable_d.ptr(),
        )?;
        // The same additions in the same order (the backward walks the batch in order):
        // bit-identical.
        expect_close(
            &format!("class_embedding emb n={n} classes={classes}"),
            &download(gpu, &emb_d, n * width)?,
            &want_emb,
            0.0,
        );
        expect_close(
            &format!("class_embedding dtable n={n} classes={classes}"),
            &download(gpu, &dtable_d, classes * width)?,
            &want_dtable,
            0.0,
        );
    }
    Ok(())
}

/// acc += x, the reference for the accumulate kernel and the class-embedding gather/scatter.
fn accumulate(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
}

// ---- bf16 and fp16 ----------------------------------------------------------------------------
//
// Activations stored as the format (uploaded rounded to nearest even); the CPU reference runs on
// the SAME rounded inputs. Every kernel here computes in fp32, so:
// - where its fp32 result is bit-identical to the CPU's (one addition or product, or a fixed-order
//   sum, as in the fp32 tests above), the stored result is that value rounded once to the format,
//   which `Precision::round` reproduces exactly: compared with tolerance 0 against
//   `dt.round(cpu)`;
// - copies (concat, split, pad, crop, upsample forward) and fp32 parameters accumulated in fp32
//   are compared with tolerance 0;
// - otherwise the bound is one rounding of the output (u relative) on top of the fp32 test's own
//   tolerance for the same kernel, each justified where it is used.

/// `len` NaNs stored as `dt`: an element a kernel fails to write shows as a non-finite error.
fn nan_as(gpu: &Gpu, dt: Precision, len: usize) -> anyhow::Result<DeviceMemory> {
    Ok(to_device_as(gpu, dt, &vec![f32::NAN; len])?)
}

/// `v` as stored in `dt`.
fn rounded(dt: Precision, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| dt.round(x)).collect()
}

fn silu_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    for dt in REDUCED {
        for (seed, &n) in SIZES.iter().enumerate() {
            let mut rng = Philox::new(1300 + seed as u64);
            let x = rounded(dt, &rng.normal_vec(n, 6.0));
            let dy = rounded(dt, &rng.normal_vec(n, 1.0));
            let mut y = vec![0.0f32; n];
            silu_forward(&x, &mut y);
            let mut dx = vec![0.0f32; n];
            silu_backward(&x, &dy, &mut dx);

            let (x_d, dy_d) = (to_device_as(gpu, dt, &x)?, to_device_as(gpu, dt, &dy)?);
            let (y_d, dx_d) = (nan_as(gpu, dt, n)?, nan_as(gpu, dt, n)?);
            ew::silu_forward(gpu, dt, n, x_d.ptr(), y_d.ptr())?;
            ew::silu_backward(gpu, dt, n, x_d.ptr(), dy_d.ptr(), dx_d.ptr())?;
            // The fp32 value is within the fp32 test's bounds (1e-5, 1e-4) of the CPU's, then
            // rounded once to the format: + u relative. (A result in fp16's subnormal range has
            // an absolute rounding error ≤ 2⁻²⁵, far below expect_close's floor of 1e-3·max.)
            let u = dt.unit_roundoff();
            expect_close(
                &format!("silu {dt} y n={n}"),
                &from_device_as(gpu, dt, &y_d, n)?,
                &y,
                u + 1e-5,
            );
            expect_close(
                &format!("silu {dt} dx n={n}"),
                &from_device_as(gpu, dt, &dx_d, n)?,
                &dx,
                u + 1e-4,
            );
        }
    }
    Ok(())
}

fn add_accumulate_scale_dropout_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    for dt in REDUCED {
        for (seed, &n) in SIZES.iter().enumerate() {
            let mut rng = Philox::new(1400 + seed as u64);
            let a = rounded(dt, &rng.normal_vec(n, 1.0));
            let b = rounded(dt, &rng.normal_vec(n, 1.0));
            let (a_d, b_d) = (to_device_as(gpu, dt, &a)?, to_device_as(gpu, dt, &b)?);

            // One fp32 addition or product per element, bit-identical to the CPU's, then one
            // rounding to the format: exactly dt.round of the CPU's result.
            let mut want = vec![0.0f32; n];
            add(&a, &b, &mut want);
            let y_d = nan_as(gpu, dt, n)?;
            ew::add(gpu, dt, n, a_d.ptr(), b_d.ptr(), y_d.ptr())?;
            expect_close(
                &format!("add {dt} n={n}"),
                &from_device_as(gpu, dt, &y_d, n)?,
                &rounded(dt, &want),
                0.0,
            );

            let mut want = a.clone();
            accumulate(&mut want, &b);
            let acc_d = to_device_as(gpu, dt, &a)?;
            ew::accumulate(gpu, dt, n, acc_d.ptr(), b_d.ptr())?;
            expect_close(
                &format!("accumulate {dt} n={n}"),
                &from_device_as(gpu, dt, &acc_d, n)?,
                &rounded(dt, &want),
                0.0,
            );

            let alpha = -0.737f32;
            let mut want = vec![0.0f32; n];
            scale(&a, alpha, &mut want);
            let y_d = nan_as(gpu, dt, n)?;
            ew::scale(gpu, dt, n, a_d.ptr(), alpha, y_d.ptr())?;
            expect_close(
                &format!("scale {dt} n={n}"),
                &from_device_as(gpu, dt, &y_d, n)?,
                &rounded(dt, &want),
                0.0,
            );

            // The same Philox mask and one product by the same f32 scale.
            let args = DropoutArgs::new(0.1, 0xD1_0000 + seed as u64, 3)?;
            let mut want = vec![0.0f32; n];
            dropout_forward(&args, &a, &mut want);
            let y_d = nan_as(gpu, dt, n)?;
            ew::dropout_forward(gpu, dt, n, &args, a_d.ptr(), y_d.ptr())?;
            expect_close(
                &format!("dropout {dt} y n={n}"),
                &from_device_as(gpu, dt, &y_d, n)?,
                &rounded(dt, &want),
                0.0,
            );
            let mut want = vec![0.0f32; n];
            dropout_backward(&args, &b, &mut want);
            let dx_d = nan_as(gpu, dt, n)?;
            ew::dropout_backward(gpu, dt, n, &args, b_d.ptr(), dx_d.ptr())?;
            expect_close(
                &format!("dropout {dt} dx n={n}"),
                &from_device_as(gpu, dt, &dx_d, n)?,
                &rounded(dt, &want),
                0.0,
            );
        }
    }
    Ok(())
}

fn channel_bias_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    let mut shapes = SHAPES.to_vec();
    shapes.push(Nchw::new(2, 3, 64, 64));
    for dt in REDUCED {
        for (seed, &s) in shapes.iter().enumerate() {
            let mut rng = Philox::new(1500 + seed as u64);
            let nc = s.n * s.c;
            let x = rounded(dt, &rng.normal_vec(s.len(), 1.0));
            let t = rounded(dt, &rng.normal_vec(nc, 1.0));
            let dy = rounded(dt, &rng.normal_vec(s.len(), 1.0));
            let mut y = vec![0.0f32; s.len()];
            add_channel_bias(s, &x, &t, &mut y);
            // The t-gradient in f64 (exact but for the final narrowing) and Σ|dy| per row.
            let wide: Vec<f64> = dy.iter().map(|&v| f64::from(v)).collect();
            let mut sum = vec![0.0f64; nc];
            add_channel_bias_backward(s, &wide, None, &mut sum);
            let abs: Vec<f64> = wide.iter().map(|v| v.abs()).collect();
            let mut mag = vec![0.0f64; nc];
            add_channel_bias_backward(s, &abs, None, &mut mag);
            let want_dt: Vec<f32> = sum.iter().map(|&v| v as f32).collect();

            let (x_d, t_d, dy_d) = (
                to_device_as(gpu, dt, &x)?,
                to_device_as(gpu, dt, &t)?,
                to_device_as(gpu, dt, &dy)?,
            );
            let (y_d, dt_d) = (nan_as(gpu, dt, s.len())?, nan_as(gpu, dt, nc)?);
            ew::add_channel_bias(gpu, dt, s, x_d.ptr(), t_d.ptr(), y_d.ptr())?;
            ew::sum_spatial(gpu, dt, s, dy_d.ptr(), dt_d.ptr())?;
            // One fp32 addition, bit-identical to the CPU's, rounded once: exact.
            expect_close(
                &format!("add_channel_bias {dt} {s}"),
                &from_device_as(gpu, dt, &y_d, s.len())?,
                &rounded(dt, &y),
                0.0,
            );
            // The kernel's fp32 sum: each lane adds its ⌈HW/32⌉ terms in turn, then a 5-level
            // butterfly, so every term passes through at most ⌈HW/32⌉ + 5 roundings:
            // ≤ (⌈HW/32⌉ + 5)·2⁻²⁴·Σ|dy|. Then one rounding to the format (u·|sum|) and the
            // reference's own narrowing to f32 (2⁻²⁴·|sum|). An accumulator kept in the format
            // would add ~u·|partial sum| per term.
            let max_sum = want_dt
                .iter()
                .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            let max_mag = mag.iter().fold(0.0f64, |m, &v| m.max(v));
            let depth = (s.hw().div_ceil(32) + 5) as f64;
            let tol = (dt.unit_roundoff() + f64::powi(2.0, -24)) * max_sum
                + depth * f64::powi(2.0, -24) * max_mag;
            expect_within(
                &format!("sum_spatial {dt} {s}"),
                &from_device_as(gpu, dt, &dt_d, nc)?,
                &want_dt,
                tol,
            );
        }
    }
    Ok(())
}

fn concat_split_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    for dt in REDUCED {
        for (seed, &s) in SHAPES.iter().enumerate() {
            for (c_a, c_b) in [(1, 1), (3, 5), (16, 2)] {
                let out = s.with_c(c_a + c_b);
                let mut rng = Philox::new(1600 + seed as u64);
                let a = rounded(dt, &rng.normal_vec(s.with_c(c_a).len(), 1.0));
                let b = rounded(dt, &rng.normal_vec(s.with_c(c_b).len(), 1.0));
                let dy = rounded(dt, &rng.normal_vec(out.len(), 1.0));
                let mut y = vec![0.0f32; out.len()];
                concat_channels(out, &[(&a, c_a), (&b, c_b)], &mut y);
                let (mut da, mut db) = (vec![0.0f32; a.len()], vec![0.0f32; b.len()]);
                split_channels(out, &dy, &mut [(&mut da, c_a), (&mut db, c_b)]);

                let (a_d, b_d, dy_d) = (
                    to_device_as(gpu, dt, &a)?,
                    to_device_as(gpu, dt, &b)?,
                    to_device_as(gpu, dt, &dy)?,
                );
                let y_d = nan_as(gpu, dt, out.len())?;
                let (da_d, db_d) = (nan_as(gpu, dt, a.len())?, nan_as(gpu, dt, b.len())?);
                ew::concat_channels(gpu, dt, out, a_d.ptr(), c_a, b_d.ptr(), c_b, y_d.ptr())?;
                ew::split_channels(gpu, dt, out, dy_d.ptr(), da_d.ptr(), c_a, db_d.ptr(), c_b)?;
                // Copies of stored values: exact.
                expect_close(
                    &format!("concat {dt} {out} {c_a}+{c_b}"),
                    &from_device_as(gpu, dt, &y_d, out.len())?,
                    &y,
                    0.0,
                );
                expect_close(
                    &format!("split {dt} da {out} {c_a}+{c_b}"),
                    &from_device_as(gpu, dt, &da_d, a.len())?,
                    &da,
                    0.0,
                );
                expect_close(
                    &format!("split {dt} db {out} {c_a}+{c_b}"),
                    &from_device_as(gpu, dt, &db_d, b.len())?,
                    &db,
                    0.0,
                );
            }
        }
    }
    Ok(())
}

/// fp32 values that are not representable in the reduced formats, values that are, and the
/// edges: signed zeros, fp16's largest finite value and what overflows it, fp16 and f32
/// subnormals, and infinities.
fn cast_inputs() -> Vec<f32> {
    let mut rng = Philox::new(1700);
    let mut x: Vec<f32> = rng.normal_vec(1000, 3.0);
    x.extend(rounded(Precision::Bf16, &rng.normal_vec(100, 3.0)));
    x.extend(rounded(Precision::Fp16, &rng.normal_vec(100, 3.0)));
    x.extend([
        0.0,
        -0.0,
        1.0,
        1.0 + 1.0 / 512.0,
        1.0 + 3.0 / 512.0,
        -2.5,
        65504.0,
        65519.0,
        65520.0,
        70000.0,
        -1e30,
        1e-5,
        3e-8,
        1e-8,
        3e-39,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    x
}

/// `got` has exactly the bits of `want`; the finite part is also recorded for the table.
fn expect_bits(what: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i} is {g:e}, expected {w:e}"
        );
    }
    let finite: Vec<usize> = (0..want.len()).filter(|&i| want[i].is_finite()).collect();
    let pick = |v: &[f32]| finite.iter().map(|&i| v[i]).collect::<Vec<_>>();
    expect_close(what, &pick(got), &pick(want), 0.0);
}

fn casts(gpu: &Gpu) -> anyhow::Result<()> {
    let x = cast_inputs();
    let n = x.len();
    for dt in Precision::ALL {
        let want = rounded(dt, &x);
        // fp32 → dt: round to nearest even, exactly as the host encodes an upload (fp32: a copy).
        let x_d = to_device_as(gpu, FP32, &x)?;
        let y_d = nan_as(gpu, dt, n)?;
        ew::cast_from_f32(gpu, dt, n, x_d.ptr(), y_d.ptr())?;
        expect_bits(
            &format!("cast_from_f32 {dt}"),
            &from_device_as(gpu, dt, &y_d, n)?,
            &want,
        );
        // dt → fp32: widening is exact.
        let s_d = to_device_as(gpu, dt, &x)?;
        let w_d = nan_as(gpu, FP32, n)?;
        ew::cast_to_f32(gpu, dt, n, s_d.ptr(), w_d.ptr())?;
        expect_bits(
            &format!("cast_to_f32 {dt}"),
            &from_device_as(gpu, FP32, &w_d, n)?,
            &want,
        );
        // NaN stays NaN (CUDA returns its canonical NaN; the payload is not specified).
        let nan_d = to_device_as(gpu, FP32, &[f32::NAN, -f32::NAN])?;
        let nan_out = nan_as(gpu, dt, 2)?;
        gpu.zero(nan_out.ptr(), 2 * dt.bytes(), "test")?;
        ew::cast_from_f32(gpu, dt, 2, nan_d.ptr(), nan_out.ptr())?;
        let got = from_device_as(gpu, dt, &nan_out, 2)?;
        assert!(
            got.iter().all(|v| v.is_nan()),
            "cast_from_f32 {dt}: NaN became {got:?}"
        );
    }
    // In fp32 a cast onto itself does nothing.
    let x_d = to_device_as(gpu, FP32, &x)?;
    ew::cast_from_f32(gpu, FP32, n, x_d.ptr(), x_d.ptr())?;
    ew::cast_to_f32(gpu, FP32, n, x_d.ptr(), x_d.ptr())?;
    expect_bits(
        "cast fp32 in place",
        &from_device_as(gpu, FP32, &x_d, n)?,
        &x,
    );
    Ok(())
}

fn resample_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    let pads = [
        Padding::bottom_right(1),
        Padding::same(2),
        Padding {
            top: 1,
            bottom: 2,
            left: 3,
            right: 0,
        },
    ];
    for dt in REDUCED {
        for (seed, &xs) in SHAPES.iter().enumerate() {
            let ys = Nchw::new(xs.n, xs.c, 2 * xs.h, 2 * xs.w);
            let mut rng = Philox::new(1800 + seed as u64);
            let x = rounded(dt, &rng.normal_vec(xs.len(), 1.0));
            let dy = rounded(dt, &rng.normal_vec(ys.len(), 1.0));
            let mut y = vec![0.0f32; ys.len()];
            upsample_nearest2x_forward(xs, &x, &mut y);
            let mut dx = vec![0.0f32; xs.len()];
            upsample_nearest2x_backward(xs, &dy, &mut dx);

            let (x_d, dy_d) = (to_device_as(gpu, dt, &x)?, to_device_as(gpu, dt, &dy)?);
            let (y_d, dx_d) = (nan_as(gpu, dt, ys.len())?, nan_as(gpu, dt, xs.len())?);
            resample::upsample_nearest2x_forward(gpu, dt, xs, x_d.ptr(), y_d.ptr())?;
            resample::upsample_nearest2x_backward(gpu, dt, xs, dy_d.ptr(), dx_d.ptr())?;
            // A copy: exact.
            expect_close(
                &format!("upsample {dt} y {xs}"),
                &from_device_as(gpu, dt, &y_d, ys.len())?,
                &y,
                0.0,
            );
            // The four-term fp32 sum in the CPU's order (bit-identical), rounded once: exact.
            expect_close(
                &format!("upsample {dt} dx {xs}"),
                &from_device_as(gpu, dt, &dx_d, xs.len())?,
                &rounded(dt, &dx),
                0.0,
            );

            for p in pads {
                let ps = resample::padded_shape(xs, p);
                let dy = rounded(dt, &rng.normal_vec(ps.len(), 1.0));
                let dy_d = to_device_as(gpu, dt, &dy)?;
                let (y_d, dx_d) = (nan_as(gpu, dt, ps.len())?, nan_as(gpu, dt, xs.len())?);
                resample::pad2d_forward(gpu, dt, xs, p, x_d.ptr(), y_d.ptr())?;
                resample::pad2d_backward(gpu, dt, xs, p, dy_d.ptr(), dx_d.ptr())?;
                // Copies and zeros: exact.
                expect_close(
                    &format!("pad {dt} {xs} {p:?}"),
                    &from_device_as(gpu, dt, &y_d, ps.len())?,
                    &pad_host(xs, p, &x),
                    0.0,
                );
                expect_close(
                    &format!("crop {dt} {xs} {p:?}"),
                    &from_device_as(gpu, dt, &dx_d, xs.len())?,
                    &crop_host(xs, p, &dy),
                    0.0,
                );
            }
        }
    }
    Ok(())
}

fn timestep_embedding_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    // Timesteps stay fp32 in every precision (999 is not a bf16): uploaded as f32.
    let mut t: Vec<f32> = (0..1000).step_by(37).map(|v| v as f32).collect();
    t.extend([997.0, 999.0]);
    t.extend(Philox::new(1900).uniform_vec::<f32>(10, 0.0, 1000.0));
    let n = t.len();
    let t_d = to_device(gpu, &t)?;
    for dt in REDUCED {
        for (dim, flip, shift) in [(128, false, 1.0), (33, true, 0.0)] {
            let e = TimestepEmbedding::new(dim, flip, shift)?;
            let mut want = vec![0.0f32; n * dim];
            timestep_embedding_forward(&e, &t, &mut want);
            let emb_d = nan_as(gpu, dt, n * dim)?;
            emb::timestep_embedding(gpu, dt, &e, n, t_d.ptr(), emb_d.ptr())?;
            // The fp32 test's bound (one f32 rounding, 1e-6) and one rounding to the format (u).
            // A kernel reading t as the format sees other timesteps (999 → 1000 in bf16), whose
            // high frequencies differ by O(1).
            expect_close(
                &format!("timestep_embedding {dt} dim={dim} flip={flip}"),
                &from_device_as(gpu, dt, &emb_d, n * dim)?,
                &want,
                dt.unit_roundoff() + 1e-6,
            );
        }
    }
    Ok(())
}

fn class_embedding_reduced(gpu: &Gpu) -> anyhow::Result<()> {
    for dt in REDUCED {
        for (seed, &(n, classes, width)) in [(7, 5, 13), (64, 10, 512), (33, 100, 40)]
            .iter()
            .enumerate()
        {
            let mut rng = Philox::new(2000 + seed as u64);
            let labels: Vec<u32> = (0..n).map(|_| rng.next_u32() % classes as u32).collect();
            // The table and its gradient are fp32 parameters; emb and demb activations.
            let table: Vec<f32> = rng.normal_vec(classes * width, 1.0);
            let emb0 = rounded(dt, &rng.normal_vec(n * width, 1.0));
            let demb = rounded(dt, &rng.normal_vec(n * width, 1.0));
            let dtable0: Vec<f32> = rng.normal_vec(classes * width, 1.0);

            let mut want_emb = emb0.clone();
            for (row, &c) in want_emb.chunks_exact_mut(width).zip(&labels) {
                accumulate(row, &table[c as usize * width..(c as usize + 1) * width]);
            }
            let mut want_dtable = dtable0.clone();
            for (row, &c) in demb.chunks_exact(width).zip(&labels) {
                accumulate(
                    &mut want_dtable[c as usize * width..(c as usize + 1) * width],
                    row,
                );
            }

            let labels_d = to_device(gpu, &labels)?;
            let (table_d, emb_d) = (to_device(gpu, &table)?, to_device_as(gpu, dt, &emb0)?);
            let (demb_d, dtable_d) = (to_device_as(gpu, dt, &demb)?, to_device(gpu, &dtable0)?);
            emb::class_embedding_forward(
                gpu,
                dt,
                n,
                width,
                labels_d.ptr(),
                table_d.ptr(),
                emb_d.ptr(),
            )?;
            emb::class_embedding_backward(
                gpu,
                dt,
                n,
                classes,
                width,
                labels_d.ptr(),
                demb_d.ptr(),
                dtable_d.ptr(),
            )?;
            // emb: one fp32 addition (the CPU's) rounded once to the format: exact.
            expect_close(
                &format!("class_embedding {dt} emb n={n} classes={classes}"),
                &from_device_as(gpu, dt, &emb_d, n * width)?,
                &rounded(dt, &want_emb),
                0.0,
            );
            // dtable: fp32, the CPU's additions in the CPU's order: bit-identical.
            expect_close(
                &format!("class_embedding {dt} dtable (fp32) n={n} classes={classes}"),
                &download(gpu, &dtable_d, classes * width)?,
                &want_dtable,
                0.0,
            );
        }
    }
    Ok(())
}
