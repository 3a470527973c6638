//! 2-d convolution (im2col + cuBLAS) and the linear layer on the GPU against the CPU reference,
//! forward and backward.
//!
//! The reference runs in f64 on the same f32 inputs, so the measured error is the GPU's alone.
//! Tolerance 3e-4 relative (`expect_close`'s metric, where values below 1e-3·max|want| are
//! measured against that floor) for everything, as everything goes through a GEMM or a sum:
//! an fp32 dot product of k terms is off by ~√k·1e-7 of the size of its terms, which an output
//! near zero sees against the floor as ~1e-5 to 1e-4 — a host emulation of these kernels with a
//! plain f32 GEMM measured up to 8.5e-5 (linear dx, k = 70), and cuBLAS sums in another order.
//! A wrong index shows up as O(1). im2col, col2im and the bias add add no rounding of their own
//! beyond one f32 addition per term.
//!
//! Written outputs (y, dx) start as NaN, so a kernel that reads them or skips an element fails;
//! parameter gradients start at random values, so `+=` is checked against the reference's `+=`.
//!
//! The bf16 and fp16 cases (activations and the GEMMs' weight copy in the format, bias, dW and db
//! fp32) are at the end: random inputs against bounds derived from the format, and integer
//! inputs, for which every sum is exact and the expected outputs are exact too.

use ddpm::cuda::ops::conv2d::{
    channel_sum_accumulate, channel_sum_scratch_len, conv2d_backward, conv2d_forward,
    conv2d_workspace_for, conv2d_workspace_len,
};
use ddpm::cuda::ops::linear::{linear_backward, linear_forward};
use ddpm::cuda::testing::{
    expect_close, expect_within, from_device_as, to_device_as, zeros_on_device, Case,
};
use ddpm::cuda::Gpu;
use ddpm::ops::conv2d::{self as cpu_conv, Conv2dShape, Padding};
use ddpm::ops::linear::{self as cpu_linear, LinearShape};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

const TOL: f64 = 3e-4;

pub fn cases() -> Vec<Case> {
    let mut cases = fp32_cases();
    cases.extend(mixed_cases());
    cases.extend(exact_cases());
    cases
}

fn fp32_cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv2d_3x3_pad1_odd_5x7_rgb",
            run: |gpu| {
                let g = conv(Nchw::new(2, 3, 5, 7), 4, (3, 3), (1, 1), Padding::same(1));
                check_conv(gpu, &g, Options::ALL, 11)
            },
        },
        // diffusers' Downsample2D with downsample_padding = 0.
        Case {
            name: "conv2d_3x3_stride2_pad_bottom_right",
            run: |gpu| {
                let g = conv(
                    Nchw::new(3, 4, 8, 9),
                    5,
                    (3, 3),
                    (2, 2),
                    Padding::bottom_right(1),
                );
                check_conv(gpu, &g, Options::ALL, 12)
            },
        },
        // The resnet shortcut: no unrolling, x is its own patch matrix.
        Case {
            name: "conv2d_1x1_shortcut",
            run: |gpu| {
                let g = conv(Nchw::new(2, 6, 5, 4), 3, (1, 1), (1, 1), Padding::default());
                check_conv(gpu, &g, Options::ALL, 13)
            },
        },
        // Non-square kernel and stride, every side padded differently; no bias, no dx (a
        // network's first layer).
        Case {
            name: "conv2d_asymmetric_no_bias_no_dx",
            run: |gpu| {
                let pad = Padding {
                    top: 1,
                    bottom: 0,
                    left: 2,
                    right: 1,
                };
                let g = conv(Nchw::new(2, 3, 6, 7), 4, (2, 3), (1, 2), pad);
                let opts = Options {
                    bias: false,
                    dx: false,
                };
                check_conv(gpu, &g, opts, 14)
            },
        },
        // A 1×1 convolution that is not pointwise (stride 2) goes through im2col.
        Case {
            name: "conv2d_1x1_stride2",
            run: |gpu| {
                let g = conv(Nchw::new(2, 5, 7, 6), 3, (1, 1), (2, 2), Padding::default());
                check_conv(gpu, &g, Options::ALL, 15)
            },
        },
        Case {
            name: "conv2d_workspace_chunks_agree",
            run: workspace_chunks_agree,
        },
        Case {
            name: "conv_bias_grad_over_planes_of_several_chunks",
            run: bias_grad_large_planes,
        },
        Case {
            name: "linear_odd_sizes",
            run: |gpu| check_linear(gpu, LinearShape::new(7, 5, 3), Options::ALL, 21),
        },
        Case {
            name: "linear_wide",
            run: |gpu| check_linear(gpu, LinearShape::new(33, 64, 70), Options::ALL, 22),
        },
        Case {
            name: "linear_no_bias_no_dx",
            run: |gpu| {
                let opts = Options {
                    bias: false,
                    dx: false,
                };
                check_linear(gpu, LinearShape::new(9, 12, 40), opts, 23)
            },
        },
    ]
}

fn conv(
    input: Nchw,
    c_out: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: Padding,
) -> Conv2dShape {
    Conv2dShape::new(input, c_out, kernel, stride, pad).expect("a valid test geometry")
}

#[derive(Clone, Copy)]
struct Options {
    /// With a bias (and its gradient).
    bias: bool,
    /// With an input gradient.
    dx: bool,
}

impl Options {
    const ALL: Self = Self {
        bias: true,
        dx: true,
    };
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Inputs and starting parameter gradients of one layer test (conv or linear).
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl Inputs {
    fn random(seed: u64, x: usize, w: usize, b: usize, y: usize) -> Self {
        let mut rng = Philox::new(seed);
        Self {
            x: rng.uniform_vec(x, -1.0, 1.0),
            w: rng.uniform_vec(w, -0.5, 0.5),
            b: rng.uniform_vec(b, -1.0, 1.0),
            dy: rng.uniform_vec(y, -1.0, 1.0),
            dw0: rng.uniform_vec(w, -1.0, 1.0),
            db0: rng.uniform_vec(b, -1.0, 1.0),
        }
    }
}

/// What a forward and a backward produced (dx and db empty when not asked for).
struct Outputs {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl Outputs {
    fn compare(&self, want: &Outputs, what: &str) {
        expect_close(&format!("{what} y"), &self.y, &want.y, TOL);
        expect_close(&format!("{what} dx"), &self.dx, &want.dx, TOL);
        expect_close(&format!("{what} dw (accumulated)"), &self.dw, &want.dw, TOL);
        expect_close(&format!("{what} db (accumulated)"), &self.db, &want.db, TOL);
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Two identical runs must agree bit for bit.
    fn expect_same_bits(&self, again: &Outputs) -> anyhow::Result<()> {
        for (a, b, what) in [
            (&self.y, &again.y, "y"),
            (&self.dx, &again.dx, "dx"),
            (&self.dw, &again.dw, "dw"),
            (&self.db, &again.db, "db"),
        ] {
            anyhow::ensure!(
                Outputs::bits(a) == Outputs::bits(b),
                "two identical runs give different {what}: not deterministic"
            );
        }
        Ok(())
    }
}

fn conv_reference(g: &Conv2dShape, i: &Inputs, opts: Options) -> Outputs {
    let (x, w, dy) = (widen(&i.x), widen(&i.w), widen(&i.dy));
    let b = opts.bias.then(|| widen(&i.b));
    let mut y = vec![0.0; g.output().len()];
    cpu_conv::conv2d_forward(g, &x, &w, b.as_deref(), &mut y);
    let mut dx = vec![0.0; if opts.dx { x.len() } else { 0 }];
    let mut dw = widen(&i.dw0);
    let mut db = if opts.bias { widen(&i.db0) } else { vec![] };
    cpu_conv::conv2d_backward(
        g,
        &x,
        &w,
        &dy,
        opts.dx.then_some(&mut dx[..]),
        &mut dw,
        opts.bias.then_some(&mut db[..]),
    );
    Outputs {
        y: narrow(&y),
        dx: narrow(&dx),
        dw: narrow(&dw),
        db: narrow(&db),
    }
}

/// One forward and backward with x, w, dy, y and dx stored as `dt` (w is the low-precision
/// weight copy the GEMMs read), the bias and dw, db fp32.
fn run_conv(
    gpu: &Gpu,
    dt: Precision,
    g: &Conv2dShape,
    i: &Inputs,
    opts: Options,
    ws_len: usize,
) -> anyhow::Result<Outputs> {
    let (x_len, y_len) = (g.input.len(), g.output().len());
    let f32 = Precision::Fp32;
    let x = to_device_as(gpu, dt, &i.x)?;
    let w = to_device_as(gpu, dt, &i.w)?;
    let b = to_device_as(gpu, f32, &i.b)?;
    let dy = to_device_as(gpu, dt, &i.dy)?;
    let y = to_device_as(gpu, dt, &vec![f32::NAN; y_len])?;
    let dx = to_device_as(gpu, dt, &vec![f32::NAN; x_len])?;
    let dw = to_device_as(gpu, f32, &i.dw0)?;
    let db = to_device_as(gpu, f32, &i.db0)?;
    let ws = zeros_on_device::<f32>(gpu, ws_len)?;
    let b_ptr = opts.bias.then(|| b.ptr());
    conv2d_forward(
        gpu,
        dt,
        g,
        x.ptr(),
        w.ptr(),
        b_ptr,
        y.ptr(),
        ws.ptr(),
        ws_len,
    )?;
    conv2d_backward(
        gpu,
        dt,
        g,
        x.ptr(),
        w.ptr(),
        dy.ptr(),
        opts.dx.then(|| dx.ptr()),
        dw.ptr(),
        opts.bias.then(|| db.ptr()),
        ws.ptr(),
        ws_len,
    )?;
    Ok(Outputs {
        y: from_device_as(gpu, dt, &y, y_len)?,
        dx: if opts.dx {
            from_device_as(gpu, dt, &dx, x_len)?
        } else {
            vec![]
        },
        dw: from_device_as(gpu, f32, &dw, i.dw0.len())?,
        db: if opts.bias {
            from_device_as(gpu, f32, &db, i.db0.len())?
        } else {
            vec![]
        },
    })
}

fn conv_inputs(g: &Conv2dShape, seed: u64) -> Inputs {
    Inputs::random(
        seed,
        g.input.len(),
        g.weight_len(),
        g.c_out,
        g.output().len(),
    )
}

/// Forward and backward against the reference with the minimum workspace (one image per chunk)
/// and with one that holds the whole batch; then the same run again, bitwise.
fn check_conv(gpu: &Gpu, g: &Conv2dShape, opts: Options, seed: u64) -> anyhow::Result<()> {
    let inputs = conv_inputs(g, seed);
    let want = conv_reference(g, &inputs, opts);
    let min_ws = conv2d_workspace_len(g);
    let fp32 = Precision::Fp32;
    let one = run_conv(gpu, fp32, g, &inputs, opts, min_ws)?;
    one.compare(&want, "min workspace:");
    let all = run_conv(
        gpu,
        fp32,
        g,
        &inputs,
        opts,
        conv2d_workspace_for(g, g.input.n),
    )?;
    all.compare(&want, "whole-batch workspace:");
    let again = run_conv(gpu, fp32, g, &inputs, opts, min_ws)?;
    one.expect_same_bits(&again)
}

/// Five images, workspaces for one image (five chunks), for two and a bit (chunks of 2, 2, 1),
/// for the batch (one chunk) and for more than the batch: all match the reference, db — two
/// fixed-order stages that do not depend on the chunking — is bitwise the same, and each run
/// repeats bitwise. (dW is one GEMM over each chunk's positions, so another chunking groups its
/// sum differently; y and dx go through GEMMs batched over a chunk: those are held to the
/// tolerance.)
fn workspace_chunks_agree(gpu: &Gpu) -> anyhow::Result<()> {
    let g = conv(Nchw::new(5, 3, 6, 5), 4, (3, 3), (1, 1), Padding::same(1));
    let inputs = conv_inputs(&g, 16);
    let want = conv_reference(&g, &inputs, Options::ALL);
    let mut runs = Vec::new();
    for (ws_len, what) in [
        (conv2d_workspace_len(&g), "1-image chunks:"),
        (conv2d_workspace_for(&g, 2) + 5, "2-image chunks:"),
        (conv2d_workspace_for(&g, 5), "one chunk:"),
        (conv2d_workspace_for(&g, 9), "oversized:"),
    ] {
        let got = run_conv(gpu, Precision::Fp32, &g, &inputs, Options::ALL, ws_len)?;
        got.compare(&want, what);
        let again = run_conv(gpu, Precision::Fp32, &g, &inputs, Options::ALL, ws_len)?;
        got.expect_same_bits(&again)?;
        runs.push(got);
    }
    for r in &runs[1..] {
        anyhow::ensure!(
            Outputs::bits(&r.db) == Outputs::bits(&runs[0].db),
            "db depends on the workspace size"
        );
    }
    Ok(())
}

/// The conv bias gradient's two stages on planes longer than one block's chunk (16,384): three
/// images, five channels, planes of two chunks and a bit, in every storage type, accumulated
/// onto random db against an f64 sum; the same bits on a second run; and a scratch one float
/// short refused with an error, not a fault.
fn bias_grad_large_planes(gpu: &Gpu) -> anyhow::Result<()> {
    let (outer, channels, inner) = (3, 5, 2 * 16_384 + 7);
    let mut rng = Philox::new(33);
    let f32 = Precision::Fp32;
    for dt in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
        let dy: Vec<f32> = rng
            .normal_vec::<f32>(outer * channels * inner, 1.0)
            .into_iter()
            .map(|v| dt.round(v))
            .collect();
        let db0: Vec<f32> = rng.normal_vec(channels, 1.0);
        let want: Vec<f32> = (0..channels)
            .map(|c| {
                let s: f64 = (0..outer)
                    .flat_map(|o| &dy[(o * channels + c) * inner..][..inner])
                    .map(|&v| f64::from(v))
                    .sum();
                (s + f64::from(db0[c])) as f32
            })
            .collect();
        let scratch_len = channel_sum_scratch_len(outer, channels, inner);
        anyhow::ensure!(scratch_len == outer * channels * 3, "{scratch_len}");
        let d_dy = to_device_as(gpu, dt, &dy)?;
        let scratch = zeros_on_device::<f32>(gpu, scratch_len)?;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let db = to_device_as(gpu, f32, &db0)?;
            channel_sum_accumulate(
                gpu,
                dt,
                d_dy.ptr(),
                db.ptr(),
                outer,
                channels,
                inner,
                (scratch.ptr(), scratch_len),
            )?;
            runs.push(from_device_as(gpu, f32, &db, channels)?);
        }
        // A sum of 10⁵ unit normals in fp32 tree order: ~1e-7·√n relative to its terms.
        expect_within(&format!("{dt} db"), &runs[0], &want, 2e-3);
        anyhow::ensure!(
            Outputs::bits(&runs[0]) == Outputs::bits(&runs[1]),
            "{dt}: db differs between two runs"
        );
        let db = to_device_as(gpu, f32, &db0)?;
        let e = channel_sum_accumulate(
            gpu,
            dt,
            d_dy.ptr(),
            db.ptr(),
            outer,
            channels,
            inner,
            (scratch.ptr(), scratch_len - 1),
        )
        .expect_err("a short scratch must be refused");
        anyhow::ensure!(e.to_string().contains("scratch"), "{e}");
    }
    Ok(())
}

fn check_linear(gpu: &Gpu, s: LinearShape, opts: Options, seed: u64) -> anyhow::Result<()> {
    let i = linear_inputs(&s, seed);
    let want = linear_reference(&s, &i, opts);
    let got = run_linear(gpu, Precision::Fp32, &s, &i, opts)?;
    got.compare(&want, "linear");
    Ok(())
}

fn linear_inputs(s: &LinearShape, seed: u64) -> Inputs {
    let (x_len, w_len, y_len) = (s.rows * s.d_in, s.d_out * s.d_in, s.rows * s.d_out);
    Inputs::random(seed, x_len, w_len, s.d_out, y_len)
}

fn linear_reference(s: &LinearShape, i: &Inputs, opts: Options) -> Outputs {
    let (x, w, dy) = (widen(&i.x), widen(&i.w), widen(&i.dy));
    let b = opts.bias.then(|| widen(&i.b));
    let mut y = vec![0.0; s.rows * s.d_out];
    cpu_linear::linear_forward(s, &x, &w, b.as_deref(), &mut y);
    let mut dx = vec![0.0; if opts.dx { x.len() } else { 0 }];
    let mut dw = widen(&i.dw0);
    let mut db = if opts.bias { widen(&i.db0) } else { vec![] };
    cpu_linear::linear_backward(
        s,
        &x,
        &w,
        &dy,
        opts.dx.then_some(&mut dx[..]),
        &mut dw,
        opts.bias.then_some(&mut db[..]),
    );
    Outputs {
        y: narrow(&y),
        dx: narrow(&dx),
        dw: narrow(&dw),
        db: narrow(&db),
    }
}

/// One forward and backward with x, w, dy, y and dx stored as `dt`, the bias and dw, db fp32.
fn run_linear(
    gpu: &Gpu,
    dt: Precision,
    s: &LinearShape,
    i: &Inputs,
    opts: Options,
) -> anyhow::Result<Outputs> {
    let (x_len, y_len) = (s.rows * s.d_in, s.rows * s.d_out);
    let f32 = Precision::Fp32;
    let x = to_device_as(gpu, dt, &i.x)?;
    let w = to_device_as(gpu, dt, &i.w)?;
    let b = to_device_as(gpu, f32, &i.b)?;
    let dy = to_device_as(gpu, dt, &i.dy)?;
    let y = to_device_as(gpu, dt, &vec![f32::NAN; y_len])?;
    let dx = to_device_as(gpu, dt, &vec![f32::NAN; x_len])?;
    let dw = to_device_as(gpu, f32, &i.dw0)?;
    let db = to_device_as(gpu, f32, &i.db0)?;
    linear_forward(
        gpu,
        dt,
        s,
        x.ptr(),
        w.ptr(),
        opts.bias.then(|| b.ptr()),
        y.ptr(),
    )?;
    linear_backward(
        gpu,
        dt,
        s,
        x.ptr(),
        w.ptr(),
        dy.ptr(),
        opts.dx.then(|| dx.ptr()),
        dw.ptr(),
        opts.bias.then(|| db.ptr()),
    )?;
    Ok(Outputs {
        y: from_device_as(gpu, dt, &y, y_len)?,
        dx: if opts.dx {
            from_device_as(gpu, dt, &dx, x_len)?
        } else {
            vec![]
        },
        dw: from_device_as(gpu, f32, &dw, i.dw0.len())?,
        db: if opts.bias {
            from_device_as(gpu, f32, &db, s.d_out)?
        } else {
            vec![]
        },
    })
}

// ---- bf16 and fp16 ----------------------------------------------------------------------------
//
// x, w (the low-precision weight copy), dy, y and dx are stored in the format; the bias and the
// parameter gradients dW, db are fp32 and accumulate onto nonzero fp32 starting values. The
// reference is the f64 CPU op on the SAME inputs rounded to the format, so what is measured is
// the GPU's own error: the roundings of what it stores in the format and its fp32 sums.
//
// Each output is held to an absolute bound built from the format (see `bound`):
//   r · u · M + slack · (k + 1) · 2⁻²⁴ · M
// where u is the format's unit roundoff, r the number of times the output's path rounds to the
// format, k the number of terms of its fp32 sum and M the largest Σ|term| over the output's
// elements — the reference run on the absolute values of the inputs (so M bounds every partial
// sum and every value stored on the way; the "+ 1" covers the reference's own narrowing to f32).
// The first part is one rounding error (≤ u·|v|) per stored value; the second Higham's worst-case
// γ_k bound for a sum of k terms in any order, FMA or not (times `GEMM_SLACK` for a GEMM's).
// dW and db are never rounded (r = 0), so storing or accumulating them in the format, an error
// of u·|dW| ≫ k·2⁻²⁴·M here, fails; so does a dropped bias or a wrong index (O(1) errors).

/// Margin over γ_k for a GEMM's fp32 accumulation: the emulator adds in IEEE fp32, and tensor
/// cores, which align the products of a step to the largest and truncate, stay within about 2u
/// per addition; 4 leaves room for both. The bias-gradient kernels add in plain IEEE fp32, where
/// γ_k itself holds (margin 1).
const GEMM_SLACK: f64 = 4.0;

/// The absolute error bound above for an output whose elements' Σ|term| are `mag`.
fn bound(dt: Precision, path: Path, mag: &[f32]) -> f64 {
    let m = mag.iter().fold(0.0f64, |a, &v| a.max(f64::from(v).abs()));
    let slack = if path.gemm { GEMM_SLACK } else { 1.0 };
    let fp32_sum = slack * (path.terms + 1) as f64 * f64::powi(2.0, -24);
    (f64::from(path.roundings) * dt.unit_roundoff() + fp32_sum) * m
}

/// What an output's path does: how often it rounds to the format, the terms of its fp32 sum and
/// whether a GEMM (tensor cores on a GPU) forms that sum.
#[derive(Clone, Copy)]
struct Path {
    roundings: u32,
    terms: usize,
    gemm: bool,
}

/// The paths of y, dx, dW and db of one layer.
struct Paths {
    y: Path,
    dx: Path,
    dw: Path,
    db: Path,
}

impl Inputs {
    /// The inputs as the GPU holds them in `dt`: activations, weights and dy rounded; the bias
    /// and the starting parameter gradients stay fp32.
    fn rounded(&self, dt: Precision) -> Inputs {
        let r = |v: &[f32]| v.iter().map(|&x| dt.round(x)).collect::<Vec<_>>();
        Inputs {
            x: r(&self.x),
            w: r(&self.w),
            b: self.b.clone(),
            dy: r(&self.dy),
            dw0: self.dw0.clone(),
            db0: self.db0.clone(),
        }
    }

    /// Every input's absolute value: the reference run on these gives each output's Σ|term|.
    fn magnitudes(&self) -> Inputs {
        let a = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        Inputs {
            x: a(&self.x),
            w: a(&self.w),
            b: a(&self.b),
            dy: a(&self.dy),
            dw0: a(&self.dw0),
            db0: a(&self.db0),
        }
    }
}

impl Outputs {
    fn expect_within_bounds(
        &self,
        want: &Outputs,
        mag: &Outputs,
        dt: Precision,
        p: &Paths,
        what: &str,
    ) {
        for (got, want, mag, path, name) in [
            (&self.y, &want.y, &mag.y, p.y, "y"),
            (&self.dx, &want.dx, &mag.dx, p.dx, "dx"),
            (&self.dw, &want.dw, &mag.dw, p.dw, "dw (fp32, accumulated)"),
            (&self.db, &want.db, &mag.db, p.db, "db (fp32, accumulated)"),
        ] {
            let tol = bound(dt, path, mag);
            expect_within(&format!("{what} {dt} {name}"), got, want, tol);
        }
    }
}

/// A convolution with everything (bias, dx) in `dt`, with the minimum and a whole-batch
/// workspace, then once more for determinism.
fn check_conv_mixed(gpu: &Gpu, dt: Precision, g: &Conv2dShape, seed: u64) -> anyhow::Result<()> {
    let opts = Options::ALL;
    let inputs = conv_inputs(g, seed);
    let stored = inputs.rounded(dt);
    let want = conv_reference(g, &stored, opts);
    let mag = conv_reference(g, &stored.magnitudes(), opts);
    let (kh, kw) = g.kernel;
    let pointwise = g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == Padding::default();
    let per_image = g.output().hw() * g.input.n;
    let paths = Paths {
        // The GEMM rounds W·col to the format, the bias add rounds again; K products + the bias.
        y: Path {
            roundings: 2,
            terms: g.patch_len() + 1,
            gemm: true,
        },
        // The Wᵀ·dY GEMM rounds each patch-matrix entry, col2im sums up to kh·kw of them in fp32
        // and rounds again; a pointwise convolution writes the GEMM's output straight to dx.
        dx: if pointwise {
            Path {
                roundings: 1,
                terms: g.c_out,
                gemm: true,
            }
        } else {
            Path {
                roundings: 2,
                terms: g.c_out + kh * kw,
                gemm: true,
            }
        },
        // N·P products added onto dW₀ (one fp32 GEMM per image), never rounded to the format.
        dw: Path {
            roundings: 0,
            terms: per_image,
            gemm: true,
        },
        // N·P values of dy added onto db₀ by the channel-sum kernel, in fp32.
        db: Path {
            roundings: 0,
            terms: per_image,
            gemm: false,
        },
    };
    let min_ws = conv2d_workspace_len(g);
    let one = run_conv(gpu, dt, g, &inputs, opts, min_ws)?;
    one.expect_within_bounds(&want, &mag, dt, &paths, "min workspace:");
    let all = run_conv(
        gpu,
        dt,
        g,
        &inputs,
        opts,
        conv2d_workspace_for(g, g.input.n),
    )?;
    all.expect_within_bounds(&want, &mag, dt, &paths, "whole batch:");
    let again = run_conv(gpu, dt, g, &inputs, opts, min_ws)?;
    one.expect_same_bits(&again)
}

/// A linear layer with everything (bias, dx) in `dt`.
fn check_linear_mixed(gpu: &Gpu, dt: Precision, s: LinearShape, seed: u64) -> anyhow::Result<()> {
    let opts = Options::ALL;
    let inputs = linear_inputs(&s, seed);
    let stored = inputs.rounded(dt);
    let want = linear_reference(&s, &stored, opts);
    let mag = linear_reference(&s, &stored.magnitudes(), opts);
    let paths = Paths {
        // The GEMM rounds x·Wᵀ to the format, the bias add rounds again.
        y: Path {
            roundings: 2,
            terms: s.d_in + 1,
            gemm: true,
        },
        // dy·W, one GEMM, rounded once.
        dx: Path {
            roundings: 1,
            terms: s.d_out,
            gemm: true,
        },
        // rows products added onto dW₀ by the dyᵀ·x GEMM, into fp32.
        dw: Path {
            roundings: 0,
            terms: s.rows,
            gemm: true,
        },
        // rows values of dy added onto db₀ by the column-sum kernel, in fp32.
        db: Path {
            roundings: 0,
            terms: s.rows,
            gemm: false,
        },
    };
    let got = run_linear(gpu, dt, &s, &inputs, opts)?;
    got.expect_within_bounds(&want, &mag, dt, &paths, "linear");
    let again = run_linear(gpu, dt, &s, &inputs, opts)?;
    got.expect_same_bits(&again)
}

/// The conv geometries of the fp32 cases, in each reduced format.
fn conv_3x3_pad1() -> Conv2dShape {
    conv(Nchw::new(2, 3, 5, 7), 4, (3, 3), (1, 1), Padding::same(1))
}

fn conv_3x3_stride2() -> Conv2dShape {
    conv(
        Nchw::new(3, 4, 8, 9),
        5,
        (3, 3),
        (2, 2),
        Padding::bottom_right(1),
    )
}

fn conv_1x1() -> Conv2dShape {
    conv(Nchw::new(2, 6, 5, 4), 3, (1, 1), (1, 1), Padding::default())
}

fn mixed_cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv2d_3x3_pad1_bf16",
            run: |gpu| check_conv_mixed(gpu, Precision::Bf16, &conv_3x3_pad1(), 31),
        },
        Case {
            name: "conv2d_3x3_pad1_fp16",
            run: |gpu| check_conv_mixed(gpu, Precision::Fp16, &conv_3x3_pad1(), 31),
        },
        Case {
            name: "conv2d_3x3_stride2_bf16",
            run: |gpu| check_conv_mixed(gpu, Precision::Bf16, &conv_3x3_stride2(), 32),
        },
        Case {
            name: "conv2d_3x3_stride2_fp16",
            run: |gpu| check_conv_mixed(gpu, Precision::Fp16, &conv_3x3_stride2(), 32),
        },
        Case {
            name: "conv2d_1x1_shortcut_bf16",
            run: |gpu| check_conv_mixed(gpu, Precision::Bf16, &conv_1x1(), 33),
        },
        Case {
            name: "conv2d_1x1_shortcut_fp16",
            run: |gpu| check_conv_mixed(gpu, Precision::Fp16, &conv_1x1(), 33),
        },
        Case {
            name: "linear_odd_sizes_bf16",
            run: |gpu| check_linear_mixed(gpu, Precision::Bf16, LinearShape::new(7, 5, 3), 41),
        },
        Case {
            name: "linear_odd_sizes_fp16",
            run: |gpu| check_linear_mixed(gpu, Precision::Fp16, LinearShape::new(7, 5, 3), 41),
        },
        Case {
            name: "linear_wide_bf16",
            run: |gpu| check_linear_mixed(gpu, Precision::Bf16, LinearShape::new(33, 64, 70), 42),
        },
        Case {
            name: "linear_wide_fp16",
            run: |gpu| check_linear_mixed(gpu, Precision::Fp16, LinearShape::new(33, 64, 70), 42),
        },
    ]
}

// ---- bf16 and fp16 on integer inputs: exact --------------------------------------------------
//
// With small integers for x, w and dy (and integer bias and starting gradients), every product
// and every fp32 sum is exact — on the emulator and on tensor cores alike, whatever the order —
// so the only inexact steps left are the roundings to the format, which round-to-nearest-even
// makes deterministic. The integers are large enough that the sums often need more bits than the
// format has (bf16: 8, fp16: 11), so those roundings are exercised, and small enough that fp16
// cannot overflow. The expected outputs are therefore exact: tolerance 0, which also pins down
// WHERE each path rounds (once after the GEMM and once after the bias add for y; each patch-matrix
// entry, then col2im's fp32 sum, for dx; never for dW and db), which the bounds above cannot:
// an extra rounding, e.g. col2im accumulating in the format, is within them.

/// Integers uniform in [-r, r].
fn integers(rng: &mut Philox, n: usize, r: u32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u32() % (2 * r + 1)) as f32 - r as f32)
        .collect()
}

/// Integer inputs whose sums of `terms` products stay below 2¹⁵ (fp16 overflows at 65 520).
fn integer_inputs(dt: Precision, seed: u64, lens: [usize; 4], terms: usize) -> Inputs {
    let [x, w, b, y] = lens;
    let r = match dt {
        Precision::Fp16 => ((32_768.0 / terms as f64).sqrt() as u32).min(32),
        _ => 16,
    };
    let mut rng = Philox::new(seed);
    Inputs {
        x: integers(&mut rng, x, r),
        w: integers(&mut rng, w, r),
        b: integers(&mut rng, b, 100),
        dy: integers(&mut rng, y, r),
        dw0: integers(&mut rng, w, 1000),
        db0: integers(&mut rng, b, 1000),
    }
}

fn round_all(dt: Precision, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(dt.round(x as f32))).collect()
}

/// y = dt(dt(s) + b) with s exact: the GEMM's output rounded, then the bias add's.
fn round_then_add_bias(dt: Precision, s: &[f64], b: &[f32], inner: usize) -> Vec<f32> {
    s.iter()
        .enumerate()
        .map(|(i, &v)| dt.round(dt.round(v as f32) + b[(i / inner) % b.len()]))
        .collect()
}

fn expect_exact(got: &Outputs, want: &Outputs, what: &str) {
    for (g, w, name) in [
        (&got.y, &want.y, "y"),
        (&got.dx, &want.dx, "dx"),
        (&got.dw, &want.dw, "dw (fp32)"),
        (&got.db, &want.db, "db (fp32)"),
    ] {
        expect_close(&format!("{what} {name}"), g, w, 0.0);
    }
}

fn check_conv_exact(gpu: &Gpu, dt: Precision, g: &Conv2dShape, seed: u64) -> anyhow::Result<()> {
    let (k, p, c_out) = (g.patch_len(), g.output().hw(), g.c_out);
    let (kh, kw) = g.kernel;
    let lens = [g.input.len(), g.weight_len(), c_out, g.output().len()];
    let i = integer_inputs(dt, seed, lens, k.max(c_out * kh * kw));
    // dW and db: exact integer sums.
    let exact = conv_reference(g, &i, Options::ALL);
    let (x, w, dy) = (widen(&i.x), widen(&i.w), widen(&i.dy));
    let mut s = vec![0.0; g.output().len()];
    cpu_conv::conv2d_forward(g, &x, &w, None, &mut s);
    let y = round_then_add_bias(dt, &s, &i.b, p);
    // dx: each patch-matrix entry Wᵀ·dY_n rounded, then col2im's (exact) sum rounded.
    let mut dx = vec![0.0f32; g.input.len()];
    for (n, dx_n) in dx.chunks_exact_mut(g.input.chw()).enumerate() {
        let dy_n = &dy[n * c_out * p..(n + 1) * c_out * p];
        let mut dcol = vec![0.0f64; k * p];
        for (r, row) in dcol.chunks_exact_mut(p).enumerate() {
            for co in 0..c_out {
                let wv = w[co * k + r];
                for (d, &g) in row.iter_mut().zip(&dy_n[co * p..(co + 1) * p]) {
                    *d += wv * g;
                }
            }
        }
        let mut sum = vec![0.0f64; g.input.chw()];
        cpu_conv::col2im(g, &round_all(dt, &dcol), &mut sum);
        for (o, v) in dx_n.iter_mut().zip(&sum) {
            *o = dt.round(*v as f32);
        }
    }
    let want = Outputs {
        y,
        dx,
        dw: exact.dw,
        db: exact.db,
    };
    let got = run_conv(gpu, dt, g, &i, Options::ALL, conv2d_workspace_len(g))?;
    expect_exact(&got, &want, &format!("integers {dt}"));
    Ok(())
}

fn check_linear_exact(gpu: &Gpu, dt: Precision, s: LinearShape, seed: u64) -> anyhow::Result<()> {
    let lens = [s.rows * s.d_in, s.d_out * s.d_in, s.d_out, s.rows * s.d_out];
    let i = integer_inputs(dt, seed, lens, s.d_in.max(s.d_out));
    let exact = linear_reference(&s, &i, Options::ALL);
    let (x, w) = (widen(&i.x), widen(&i.w));
    let mut xw = vec![0.0; s.rows * s.d_out];
    cpu_linear::linear_forward(&s, &x, &w, None, &mut xw);
    let want = Outputs {
        y: round_then_add_bias(dt, &xw, &i.b, 1),
        // One GEMM, rounded once.
        dx: exact.dx.iter().map(|&v| dt.round(v)).collect(),
        dw: exact.dw,
        db: exact.db,
    };
    let got = run_linear(gpu, dt, &s, &i, Options::ALL)?;
    expect_exact(&got, &want, &format!("integers {dt}"));
    Ok(())
}

fn exact_cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv2d_3x3_pad1_bf16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Bf16, &conv_3x3_pad1(), 51),
        },
        Case {
            name: "conv2d_3x3_pad1_fp16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Fp16, &conv_3x3_pad1(), 51),
        },
        Case {
            name: "conv2d_3x3_stride2_bf16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Bf16, &conv_3x3_stride2(), 52),
        },
        Case {
            name: "conv2d_3x3_stride2_fp16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Fp16, &conv_3x3_stride2(), 52),
        },
        Case {
            name: "conv2d_1x1_shortcut_bf16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Bf16, &conv_1x1(), 53),
        },
        Case {
            name: "conv2d_1x1_shortcut_fp16_integers_exact",
            run: |gpu| check_conv_exact(gpu, Precision::Fp16, &conv_1x1(), 53),
        },
        Case {
            name: "linear_wide_bf16_integers_exact",
            run: |gpu| check_linear_exact(gpu, Precision::Bf16, LinearShape::new(33, 64, 70), 54),
        },
        Case {
            name: "linear_wide_fp16_integers_exact",
            run: |gpu| check_linear_exact(gpu, Precision::Fp16, LinearShape::new(33, 64, 70), 54),
        },
    ]
}
