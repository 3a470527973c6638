//! `Gpu::gemm` (row-major, translated to cuBLAS's column-major call) against a plain reference:
//! every transpose combination, padded leading dimensions, batch strides (0 for a shared
//! operand), every storage type, on integers so that every result is exact; the reductions of
//! 16-bit results in fp32; and the argument checks. Under the emulator the cuBLAS calls are
//! emulated at the library's own API, so this is where the translation itself is checked.

use anyhow::{ensure, Result};
use ddpm::cuda::testing::{from_device_as, to_device_as, Case};
use ddpm::cuda::{CudaErrorKind, Gpu, Mat};
use ddpm::precision::Precision;
use ddpm::rng::Philox;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "gemm_transposes_strides_fp32_exact",
            run: |gpu| every_layout(gpu, Precision::Fp32, Precision::Fp32),
        },
        Case {
            name: "gemm_transposes_strides_bf16_exact",
            run: |gpu| {
                every_layout(gpu, Precision::Bf16, Precision::Bf16)?;
                every_layout(gpu, Precision::Bf16, Precision::Fp32)
            },
        },
        Case {
            name: "gemm_transposes_strides_fp16_exact",
            run: |gpu| {
                every_layout(gpu, Precision::Fp16, Precision::Fp16)?;
                every_layout(gpu, Precision::Fp16, Precision::Fp32)
            },
        },
        Case {
            name: "gemm_with_k_zero_scales_c",
            run: k_zero,
        },
        Case {
            name: "gemm_16bit_results_reduce_in_fp32",
            run: reduces_in_fp32,
        },
        Case {
            name: "gemm_rejects_a_short_leading_dimension",
            run: short_leading_dimension,
        },
        Case {
            name: "gemm_emulator_refuses_what_would_race_or_overrun",
            run: emulator_refusals,
        },
    ]
}

/// A row-major operand as `Gpu::gemm` takes it, with its host values.
struct Operand {
    transposed: bool,
    ld: usize,
    stride: usize,
    values: Vec<f32>,
}

impl Operand {
    /// op(X) is `rows × cols`; stored transposed or not, with `pad` extra elements per stored
    /// row and `gap` between batch items (stride 0 when `shared`).
    fn new(
        rng: &mut Philox,
        (rows, cols): (usize, usize),
        transposed: bool,
        (pad, gap): (usize, usize),
        batch: usize,
        shared: bool,
    ) -> Self {
        let (sr, sc) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let ld = sc + pad;
        let item = (sr - 1) * ld + sc;
        let stride = if shared { 0 } else { item + gap };
        let len = stride * (batch - 1) + item;
        // Small integers: every product and sum below is exact in fp32 and (results < 256) in
        // bf16 and fp16. Padding holds values too, so reading it would show.
        let values = (0..len)
            .map(|_| (rng.next_u32() % 7) as f32 - 3.0)
            .collect();
        Self {
            transposed,
            ld,
            stride,
            values,
        }
    }

    fn index(&self, item: usize, r: usize, c: usize) -> usize {
        let (rs, cs) = if self.transposed {
            (1, self.ld)
        } else {
            (self.ld, 1)
        };
        item * self.stride + r * rs + c * cs
    }

    fn at(&self, item: usize, r: usize, c: usize) -> f32 {
        self.values[self.index(item, r, c)]
    }

    fn mat(&self, ptr: u64, dt: Precision) -> Mat {
        let m = Mat::new(ptr, self.ld).of(dt).stride(self.stride);
        if self.transposed {
            m.t()
        } else {
            m
        }
    }
}

/// C = α·op(A)·op(B) + β·C in every transpose combination and several shapes, batched with
/// padded rows and gaps between items (and a shared A), compared exactly.
fn every_layout(gpu: &Gpu, ab: Precision, c_dt: Precision) -> Result<()> {
    let mut rng = Philox::new(7);
    let shapes = [(5, 7, 3), (1, 9, 4), (6, 1, 2), (4, 4, 13), (3, 2, 1)];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let batch = 3;
            let shared = si % 2 == 1;
            let a = Operand::new(&mut rng, (m, k), ta, (2, 3), batch, shared);
            let b = Operand::new(&mut rng, (k, n), tb, (1, 0), batch, false);
            let c = Operand::new(&mut rng, (m, n), false, (3, 5), batch, false);
            let (alpha, beta) = (1.0f32, if si % 2 == 0 { 1.0 } else { 0.0 });
            let (da, db, dc) = (
                to_device_as(gpu, ab, &a.values)?,
                to_device_as(gpu, ab, &b.values)?,
                to_device_as(gpu, c_dt, &c.values)?,
            );
            gpu.gemm(
                "test",
                (m, n, k),
                alpha,
                a.mat(da.ptr(), ab),
                b.mat(db.ptr(), ab),
                beta,
                c.mat(dc.ptr(), c_dt),
                batch,
            )?;
            let got = from_device_as(gpu, c_dt, &dc, c.values.len())?;
            // Everything outside the items' m × n cells must be untouched.
            let mut want = c.values.clone();
            for item in 0..batch {
                for r in 0..m {
                    for col in 0..n {
                        let dot: f32 = (0..k).map(|l| a.at(item, r, l) * b.at(item, l, col)).sum();
                        let i = c.index(item, r, col);
                        want[i] = alpha * dot + beta * c.values[i];
                    }
                }
            }
            let what = format!(
                "{ab}·{ab}→{c_dt} m={m} n={n} k={k} A{} B{}{}",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" },
                if shared { " (A shared)" } else { "" }
            );
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                anyhow::bail!("{what}: element {i} is {} instead of {}", got[i], want[i]);
            }
        }
    }
    Ok(())
}

/// k = 0: C = β·C inside each item's m × n cells (β = 0 writes zeros over NaN, β = 1 changes
/// nothing), the padding untouched, with A and B of leading dimension 0 as an empty row-major
/// (m, 0) matrix has: what `Gpu::gemm` must not hand to cuBLAS.
fn k_zero(gpu: &Gpu) -> Result<()> {
    let (m, n, ld, stride, batch) = (3, 4, 6, 20, 2);
    let len = stride * (batch - 1) + (m - 1) * ld + n;
    for dt in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
        for beta in [0.0f32, 0.5, 1.0, -2.0] {
            let c0: Vec<f32> = (0..len)
                .map(|i| if beta == 0.0 { f32::NAN } else { i as f32 })
                .collect();
            let c = to_device_as(gpu, dt, &c0)?;
            let ab = to_device_as(gpu, dt, &[0.0; 4])?;
            gpu.gemm(
                "k = 0",
                (m, n, 0),
                1.0,
                Mat::new(ab.ptr(), 0).of(dt),
                Mat::new(ab.ptr(), n).of(dt),
                beta,
                Mat::new(c.ptr(), ld).of(dt).stride(stride),
                batch,
            )?;
            let got = from_device_as(gpu, dt, &c, len)?;
            for (i, (&g, &v)) in got.iter().zip(&c0).enumerate() {
                let inside = i % stride < m * ld && i % stride % ld < n;
                let want = if inside { beta * v } else { v };
                let want = if inside && beta == 0.0 { 0.0 } else { want };
                ensure!(
                    g == want || (g.is_nan() && want.is_nan()),
                    "{dt} β={beta}: element {i} is {g}, want {want}"
                );
            }
        }
    }
    Ok(())
}

/// A bf16 / fp16 C whose k-sum is exact in fp32 but not when partial sums are rounded to 16
/// bits (split-K with reduced-precision reduction, which the math mode disallows): Σ = 256 + 1
/// − 1, where 257 rounds to 256 in bf16. k is long and m, n small, the shapes for which cuBLAS
/// splits k.
fn reduces_in_fp32(gpu: &Gpu) -> Result<()> {
    let (m, n, k) = (8, 8, 4096);
    let a = vec![1.0f32; m * k];
    let mut b = vec![0.0f32; k * n];
    for j in 0..n {
        b[j] = 256.0;
        b[n + j] = 1.0;
        b[(k / 2) * n + j] = -1.0;
    }
    for dt in [Precision::Bf16, Precision::Fp16] {
        let (da, db, dc) = (
            to_device_as(gpu, dt, &a)?,
            to_device_as(gpu, dt, &b)?,
            to_device_as(gpu, dt, &vec![0.0; m * n])?,
        );
        gpu.gemm(
            "test",
            (m, n, k),
            1.0,
            Mat::new(da.ptr(), k).of(dt),
            Mat::new(db.ptr(), n).of(dt),
            0.0,
            Mat::new(dc.ptr(), n).of(dt),
            1,
        )?;
        let got = from_device_as(gpu, dt, &dc, m * n)?;
        ensure!(
            got.iter().all(|&v| v == 256.0),
            "{dt}: C = {:?}, not 256 everywhere: partial sums were rounded to 16 bits",
            &got[..4]
        );
    }
    Ok(())
}

/// A leading dimension below the row length is cuBLAS's INVALID_VALUE, reported as an error
/// naming the GEMM (on a GPU and under the emulator alike).
fn short_leading_dimension(gpu: &Gpu) -> Result<()> {
    let (m, n, k) = (4, 4, 4);
    let a = to_device_as(gpu, Precision::Fp32, &[1.0; 16])?;
    let b = to_device_as(gpu, Precision::Fp32, &[1.0; 16])?;
    let c = to_device_as(gpu, Precision::Fp32, &[0.0; 16])?;
    let e = gpu
        .gemm(
            "short ld",
            (m, n, k),
            1.0,
            Mat::new(a.ptr(), 3),
            Mat::new(b.ptr(), 4),
            0.0,
            Mat::new(c.ptr(), 4),
            1,
        )
        .expect_err("ld 3 < k 4 must be refused");
    ensure!(e.kind == CudaErrorKind::Blas, "{e}");
    let msg = e.to_string();
    ensure!(
        msg.contains("short ld") && msg.contains("INVALID_VALUE"),
        "{msg}"
    );
    Ok(())
}

/// What cuBLAS would not refuse but runs into undefined results (batch items of C sharing
/// elements, C overlapping A) or memory it does not own: refused by the emulator, each with its
/// reason. Not run on a GPU, where these would race or corrupt memory.
fn emulator_refusals(gpu: &Gpu) -> Result<()> {
    if !gpu.is_emulated() {
        return Ok(());
    }
    let f32 = Precision::Fp32;
    let a = to_device_as(gpu, f32, &[1.0; 32])?;
    let b = to_device_as(gpu, f32, &[1.0; 32])?;
    let c = to_device_as(gpu, f32, &[0.0; 32])?;
    let expect = |r: ddpm::cuda::CudaResult<()>, needle: &str| -> Result<()> {
        let e = r.expect_err(needle);
        ensure!(e.to_string().contains(needle), "{needle}: {e}");
        Ok(())
    };
    let gemm = |a: Mat, b: Mat, c: Mat, batch: usize| {
        gpu.gemm("refusal", (2, 2, 2), 1.0, a, b, 0.0, c, batch)
    };
    // Two batch items written to the same C.
    expect(
        gemm(
            Mat::new(a.ptr(), 2).stride(4),
            Mat::new(b.ptr(), 2).stride(4),
            Mat::new(c.ptr(), 2),
            2,
        ),
        "batch items of C overlap",
    )?;
    // Items one row apart: they share a row.
    expect(
        gemm(
            Mat::new(a.ptr(), 2),
            Mat::new(b.ptr(), 2),
            Mat::new(c.ptr(), 2).stride(2 + 1),
            2,
        ),
        "batch items of C overlap",
    )?;
    // In place.
    expect(
        gemm(
            Mat::new(a.ptr(), 2),
            Mat::new(b.ptr(), 2),
            Mat::new(a.ptr() + 8, 2),
            1,
        ),
        "C overlaps",
    )?;
    // C's second item runs past its 32-float allocation.
    expect(
        gemm(
            Mat::new(a.ptr(), 2),
            Mat::new(b.ptr(), 2),
            Mat::new(c.ptr(), 2).stride(30),
            2,
        ),
        "run 8 bytes past its end",
    )?;
    // A bf16 C at an odd byte address.
    let bf = Precision::Bf16;
    let (ha, hb) = (
        to_device_as(gpu, bf, &[1.0; 8])?,
        to_device_as(gpu, bf, &[1.0; 8])?,
    );
    let hc = to_device_as(gpu, bf, &[0.0; 9])?;
    expect(
        gemm(
            Mat::new(ha.ptr(), 2).of(bf),
            Mat::new(hb.ptr(), 2).of(bf),
            Mat::new(hc.ptr() + 1, 2).of(bf),
            1,
        ),
        "not aligned",
    )?;
    Ok(())
}
