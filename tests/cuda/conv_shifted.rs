//! The shifted-GEMM 3×3 convolution (`ddpm::cuda::ops::conv_shifted`: a padded NHWC buffer and
//! nine row-shifted GEMMs) against the CPU reference and against the im2col path, forward and
//! backward, in fp32, bf16 and fp16.
//!
//! The geometries are odd on purpose: C_in ≠ C_out, H ≠ W, N = 1 and N = 3, H or W = 1 and 2,
//! a 1×1 image (every tap but the centre reads the border), and one with more than 32 channels
//! and padded columns (several tiles of the transposing kernels). Each runs with the minimum
//! workspace (one image per chunk), one for two images (chunks 2 + 1) and one for the batch.
//! The workspace is filled with NaN, as are y and dx, so a part read before it is written, a
//! skipped border element or an unwritten output shows; dW and db start at random values, so
//! `+=` is checked against the reference's `+=`.
//!
//! fp32: the reference runs in f64 on the same f32 inputs; tolerance 3e-4 relative with
//! `expect_close`'s floor (as the im2col tests, tests/cuda/conv.rs, and for the same reason: fp32
//! sums of up to 9·C_in products, in another order than the reference).
//!
//! bf16 / fp16: the reference runs on the inputs rounded to the format (x, w, dy; the bias and
//! the starting gradients stay fp32), so what is measured is the GPU's own error. Each output is
//! held to an absolute bound (see `bound`):  r·u·M + slack·(k + 1)·2⁻²⁴·M, with u the format's
//! unit roundoff, r the roundings to the format on the output's path, k the terms of its fp32
//! sum and M the largest Σ|term| of an element (the reference on |inputs|, so M bounds every
//! partial sum). The shifted path accumulates all nine taps in fp32 and rounds y and dx ONCE
//! (r = 1: the crop adds the bias in fp32 and rounds), dW and db never (r = 0). The second part is
//! Higham's γ_k for any summation order, times 4 for a GEMM (tensor cores align and truncate,
//! about 2u per addition). A wrong tap, index or dropped term is an O(1)·|term| error and fails.
//!
//! Integer inputs make every fp32 sum exact in any order, so there the expected outputs are
//! exact (tolerance 0): y = dt(Σ + b), dx = dt(Σ), dW and db exact. That pins the rounding down
//! to once, which the bounds cannot (accumulating the nine taps in the format would fit them).

use ddpm::cuda::ops::conv2d::{conv2d_backward, conv2d_forward, conv2d_workspace_len};
use ddpm::cuda::ops::conv_shifted::{
    applies, conv3x3_backward, conv3x3_forward, l2_chunk_images, workspace_for, workspace_len,
};
use ddpm::cuda::testing::{expect_close, expect_within, from_device_as, to_device_as, Case};
use ddpm::cuda::Gpu;
use ddpm::ops::conv2d::{self as cpu_conv, Conv2dShape, Padding};
use ddpm::precision::Precision;
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

/// fp32 against the f64 reference (relative, with `expect_close`'s floor).
const TOL: f64 = 3e-4;

/// Margin over γ_k for a GEMM's fp32 accumulation (see the module doc).
const GEMM_SLACK: f64 = 4.0;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv_shifted_applies_only_to_3x3_s1_p1",
            run: applies_only_where_it_should,
        },
        Case {
            name: "conv_shifted_n1_cin3_cout5_4x7",
            run: |gpu| check_all(gpu, &shape(1, 3, 5, 4, 7), Options::ALL, 101),
        },
        Case {
            name: "conv_shifted_n3_cin6_cout4_5x3",
            run: |gpu| check_all(gpu, &shape(3, 6, 4, 5, 3), Options::ALL, 102),
        },
        Case {
            name: "conv_shifted_h1",
            run: |gpu| check_all(gpu, &shape(3, 4, 6, 1, 5), Options::ALL, 103),
        },
        Case {
            name: "conv_shifted_h2_w1",
            run: |gpu| check_all(gpu, &shape(3, 5, 7, 2, 1), Options::ALL, 104),
        },
        Case {
            name: "conv_shifted_w2",
            run: |gpu| check_all(gpu, &shape(3, 5, 3, 6, 2), Options::ALL, 105),
        },
        Case {
            name: "conv_shifted_1x1_image",
            run: |gpu| check_all(gpu, &shape(3, 2, 3, 1, 1), Options::ALL, 106),
        },
        Case {
            name: "conv_shifted_several_tiles",
            run: |gpu| check_all(gpu, &shape(2, 40, 36, 3, 35), Options::ALL, 107),
        },
        Case {
            name: "conv_shifted_no_bias_no_dx",
            run: |gpu| {
                let opts = Options {
                    bias: false,
                    dx: false,
                };
                check_all(gpu, &shape(3, 4, 5, 3, 4), opts, 108)
            },
        },
        Case {
            name: "conv_shifted_bf16",
            run: |gpu| check_reduced_shapes(gpu, Precision::Bf16),
        },
        Case {
            name: "conv_shifted_fp16",
            run: |gpu| check_reduced_shapes(gpu, Precision::Fp16),
        },
        Case {
            name: "conv_shifted_bf16_integers_exact",
            run: |gpu| check_exact_shapes(gpu, Precision::Bf16),
        },
        Case {
            name: "conv_shifted_fp16_integers_exact",
            run: |gpu| check_exact_shapes(gpu, Precision::Fp16),
        },
        Case {
            name: "conv_shifted_equals_im2col",
            run: shifted_equals_im2col,
        },
    ]
}

/// A 3×3, stride-1, padding-1 convolution of (n, c_in, h, w) to c_out channels.
fn shape(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Conv2dShape {
    Conv2dShape::new(
        Nchw::new(n, c_in, h, w),
        c_out,
        (3, 3),
        (1, 1),
        Padding::same(1),
    )
    .expect("a valid test geometry")
}

/// "N3 6→4 5×3": a geometry in the report table.
fn label(g: &Conv2dShape) -> String {
    let x = g.input;
    format!("N{} {}→{} {}×{}", x.n, x.c, g.c_out, x.h, x.w)
}

/// The shapes the reduced-precision and im2col comparisons run on.
fn some_shapes() -> [Conv2dShape; 4] {
    [
        shape(1, 3, 5, 4, 7),
        shape(3, 6, 4, 5, 3),
        shape(3, 5, 7, 2, 1),
        shape(2, 40, 36, 3, 35),
    ]
}

fn applies_only_where_it_should(_: &Gpu) -> anyhow::Result<()> {
    let x = Nchw::new(2, 3, 8, 8);
    let conv = |k, s, p| Conv2dShape::new(x, 4, k, s, p).expect("valid");
    anyhow::ensure!(applies(&conv((3, 3), (1, 1), Padding::same(1))));
    for g in [
        conv((3, 3), (2, 2), Padding::same(1)),
        conv((3, 3), (1, 1), Padding::bottom_right(1)),
        conv((3, 3), (1, 1), Padding::same(0)),
        conv((3, 3), (1, 1), Padding::same(2)),
        conv((1, 1), (1, 1), Padding::default()),
        conv((3, 1), (1, 1), Padding::same(1)),
    ] {
        anyhow::ensure!(!applies(&g), "applies to {g:?}");
    }
    // The L2 cap of a chunk: ddpm-cifar10's first level in bf16 takes 28 images (module doc).
    let level1 = shape(128, 128, 128, 32, 32);
    anyhow::ensure!(l2_chunk_images(&level1, Precision::Bf16) == 28);
    anyhow::ensure!(l2_chunk_images(&shape(3, 2, 3, 1, 1), Precision::Fp32) == 3);
    Ok(())
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

/// Inputs and starting parameter gradients of one test.
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl Inputs {
    fn random(g: &Conv2dShape, seed: u64) -> Self {
        let mut rng = Philox::new(seed);
        let (w, b, y) = (g.weight_len(), g.c_out, g.output().len());
        Self {
            x: rng.uniform_vec(g.input.len(), -1.0, 1.0),
            w: rng.uniform_vec(w, -0.5, 0.5),
            b: rng.uniform_vec(b, -1.0, 1.0),
            dy: rng.uniform_vec(y, -1.0, 1.0),
            dw0: rng.uniform_vec(w, -1.0, 1.0),
            db0: rng.uniform_vec(b, -1.0, 1.0),
        }
    }

    /// Small integers (see the module doc): every product and fp32 sum exact, the sums of
    /// `terms` products below 2¹⁵ in fp16 (which overflows at 65 520), but wider than the
    /// format's significand, so the final rounding is exercised.
    fn integers(g: &Conv2dShape, dt: Precision, seed: u64) -> Self {
        let terms = 9 * g.input.c.max(g.c_out);
        let r = match dt {
            Precision::Fp16 => ((32_768.0 / terms as f64).sqrt() as u32).min(32),
            _ => 16,
        };
        let mut rng = Philox::new(seed);
        let mut ints = |n: usize, r: u32| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_u32() % (2 * r + 1)) as f32 - r as f32)
                .collect()
        };
        let (w, b, y) = (g.weight_len(), g.c_out, g.output().len());
        Self {
            x: ints(g.input.len(), r),
            w: ints(w, r),
            b: ints(b, 100),
            dy: ints(y, r),
            dw0: ints(w, 1000),
            db0: ints(b, 1000),
        }
    }

    /// The inputs as the GPU holds them in `dt`: activations, weights and dy rounded; the bias
    /// and the starting parameter gradients stay fp32.
    fn rounded(&self, dt: Precision) -> Self {
        let r = |v: &[f32]| v.iter().map(|&x| dt.round(x)).collect::<Vec<_>>();
        Self {
            x: r(&self.x),
            w: r(&self.w),
            b: self.b.clone(),
            dy: r(&self.dy),
            dw0: self.dw0.clone(),
            db0: self.db0.clone(),
        }
    }

    /// Every input's absolute value: the reference on these gives each output's Σ|term|.
    fn magnitudes(&self) -> Self {
        let a = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        Self {
            x: a(&self.x),
            w: a(&self.w),
            b: a(&self.b),
            dy: a(&self.dy),
            dw0: a(&self.dw0),
            db0: a(&self.db0),
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
    fn named(&self) -> [(&[f32], &'static str); 4] {
        [
            (&self.y, "y"),
            (&self.dx, "dx"),
            (&self.dw, "dw (fp32, accumulated)"),
            (&self.db, "db (fp32, accumulated)"),
        ]
    }

    fn expect_close_to(&self, want: &Outputs, tol: f64, what: &str) {
        for ((got, name), (want, _)) in self.named().into_iter().zip(want.named()) {
            expect_close(&format!("{what} {name}"), got, want, tol);
        }
    }

    fn expect_same_bits(&self, again: &Outputs) -> anyhow::Result<()> {
        for ((a, name), (b, _)) in self.named().into_iter().zip(again.named()) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            anyhow::ensure!(
                bits(a) == bits(b),
                "two identical runs give different {name}: not deterministic"
            );
        }
        Ok(())
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The CPU convolution in f64 on `i`.
fn reference(g: &Conv2dShape, i: &Inputs, opts: Options) -> Outputs {
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

/// Which implementation runs.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Shifted,
    Im2col,
}

/// One forward and backward with x, w, dy, y and dx stored as `dt` (w is the low-precision
/// weight copy the GEMMs read), the bias and dw, db fp32; the workspace starts as NaN.
fn run(
    gpu: &Gpu,
    path: Path,
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
    let ws = to_device_as(gpu, f32, &vec![f32::NAN; ws_len])?;
    let (b_ptr, db_ptr) = (opts.bias.then(|| b.ptr()), opts.bias.then(|| db.ptr()));
    let dx_ptr = opts.dx.then(|| dx.ptr());
    let (xp, wp, yp, dyp, dwp, wsp) = (x.ptr(), w.ptr(), y.ptr(), dy.ptr(), dw.ptr(), ws.ptr());
    match path {
        Path::Shifted => {
            conv3x3_forward(gpu, dt, g, xp, wp, b_ptr, yp, wsp, ws_len)?;
            conv3x3_backward(gpu, dt, g, xp, wp, dyp, dx_ptr, dwp, db_ptr, wsp, ws_len)?;
        }
        Path::Im2col => {
            conv2d_forward(gpu, dt, g, xp, wp, b_ptr, yp, wsp, ws_len)?;
            conv2d_backward(gpu, dt, g, xp, wp, dyp, dx_ptr, dwp, db_ptr, wsp, ws_len)?;
        }
    }
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

/// The workspaces every check runs with: one image per chunk, two, and the whole batch.
fn workspaces(g: &Conv2dShape, dt: Precision) -> Vec<(usize, &'static str)> {
    let mut v = vec![(workspace_len(g, dt), "1-image chunks:")];
    if g.input.n > 2 {
        v.push((workspace_for(g, dt, 2) + 7, "2-image chunks:"));
    }
    if g.input.n > 1 {
        v.push((workspace_for(g, dt, g.input.n), "one chunk:"));
    }
    v
}

/// fp32 against the reference with every workspace, then the minimum one again, bitwise.
fn check_all(gpu: &Gpu, g: &Conv2dShape, opts: Options, seed: u64) -> anyhow::Result<()> {
    let dt = Precision::Fp32;
    let inputs = Inputs::random(g, seed);
    let want = reference(g, &inputs, opts);
    let mut first = None;
    for (ws_len, what) in workspaces(g, dt) {
        let got = run(gpu, Path::Shifted, dt, g, &inputs, opts, ws_len)?;
        got.expect_close_to(&want, TOL, what);
        first.get_or_insert(got);
    }
    let again = run(
        gpu,
        Path::Shifted,
        dt,
        g,
        &inputs,
        opts,
        workspace_len(g, dt),
    )?;
    first
        .expect("at least one workspace")
        .expect_same_bits(&again)
}

/// What an output's path does: roundings to the format, terms of its fp32 sum, and whether a
/// GEMM forms that sum.
#[derive(Clone, Copy)]
struct SumPath {
    roundings: u32,
    terms: usize,
    gemm: bool,
}

/// The absolute error bound of the module doc for an output whose elements' Σ|term| are `mag`.
fn bound(dt: Precision, p: SumPath, mag: &[f32]) -> f64 {
    let m = mag.iter().fold(0.0f64, |a, &v| a.max(f64::from(v).abs()));
    let slack = if p.gemm { GEMM_SLACK } else { 1.0 };
    let fp32_sum = slack * (p.terms + 1) as f64 * f64::powi(2.0, -24);
    (f64::from(p.roundings) * dt.unit_roundoff() + fp32_sum) * m
}

/// The paths of y, dx, dW and db through the shifted convolution.
fn shifted_paths(g: &Conv2dShape) -> [SumPath; 4] {
    let pixels = g.input.n * g.input.hw();
    [
        // Nine taps of C_in products and the bias, in fp32; rounded once by the crop.
        SumPath {
            roundings: 1,
            terms: 9 * g.input.c + 1,
            gemm: true,
        },
        // Nine taps of C_out products in fp32; rounded once by the crop.
        SumPath {
            roundings: 1,
            terms: 9 * g.c_out,
            gemm: true,
        },
        // N·H·W products per tap (the garbage rows add exact zeros) onto dW₀, all fp32.
        SumPath {
            roundings: 0,
            terms: pixels,
            gemm: true,
        },
        // N·H·W values of dy onto db₀ by the channel-sum kernel, in fp32.
        SumPath {
            roundings: 0,
            terms: pixels,
            gemm: false,
        },
    ]
}

/// The paths through the im2col path (tests/cuda/conv.rs): y is rounded after the GEMM and
/// again after the bias add; dx after the GEMM and after col2im's sum of up to 9 entries.
fn im2col_paths(g: &Conv2dShape) -> [SumPath; 4] {
    let [_, _, dw, db] = shifted_paths(g);
    [
        SumPath {
            roundings: 2,
            terms: 9 * g.input.c + 1,
            gemm: true,
        },
        SumPath {
            roundings: 2,
            terms: g.c_out + 9,
            gemm: true,
        },
        dw,
        db,
    ]
}

/// Each output of `got` within its absolute bound of `want`.
fn expect_within_bounds(got: &Outputs, want: &Outputs, bounds: [f64; 4], what: &str) {
    for (((got, name), (want, _)), tol) in got.named().into_iter().zip(want.named()).zip(bounds) {
        expect_within(&format!("{what} {name}"), got, want, tol);
    }
}

/// The bounds of `paths` for `dt`, from the magnitudes `mag`.
fn bounds(dt: Precision, paths: [SumPath; 4], mag: &Outputs) -> [f64; 4] {
    let m = [&mag.y, &mag.dx, &mag.dw, &mag.db];
    std::array::from_fn(|k| bound(dt, paths[k], m[k]))
}

/// bf16 / fp16 against the reference on the rounded inputs, every workspace, then bitwise again.
fn check_reduced(gpu: &Gpu, dt: Precision, g: &Conv2dShape, seed: u64) -> anyhow::Result<()> {
    let opts = Options::ALL;
    let stored = Inputs::random(g, seed).rounded(dt);
    let want = reference(g, &stored, opts);
    let mag = reference(g, &stored.magnitudes(), opts);
    let tol = bounds(dt, shifted_paths(g), &mag);
    let mut first = None;
    for (ws_len, what) in workspaces(g, dt) {
        let got = run(gpu, Path::Shifted, dt, g, &stored, opts, ws_len)?;
        expect_within_bounds(&got, &want, tol, &format!("{dt} {} {what}", label(g)));
        first.get_or_insert(got);
    }
    let again = run(
        gpu,
        Path::Shifted,
        dt,
        g,
        &stored,
        opts,
        workspace_len(g, dt),
    )?;
    first.expect("a workspace").expect_same_bits(&again)
}

fn check_reduced_shapes(gpu: &Gpu, dt: Precision) -> anyhow::Result<()> {
    for (k, g) in some_shapes().iter().enumerate() {
        check_reduced(gpu, dt, g, 200 + k as u64)?;
    }
    Ok(())
}

/// Integer inputs: y = dt(Σ + b), dx = dt(Σ), dW and db exact (tolerance 0).
fn check_exact(gpu: &Gpu, dt: Precision, g: &Conv2dShape, seed: u64) -> anyhow::Result<()> {
    let i = Inputs::integers(g, dt, seed);
    let exact = reference(g, &i, Options::ALL);
    let round = |v: &[f32]| v.iter().map(|&x| dt.round(x)).collect::<Vec<_>>();
    // Σ + b is an integer below 2²⁴, so the f64 reference narrowed to f32 is exact.
    let want = Outputs {
        y: round(&exact.y),
        dx: round(&exact.dx),
        dw: exact.dw,
        db: exact.db,
    };
    for (ws_len, what) in workspaces(g, dt) {
        let got = run(gpu, Path::Shifted, dt, g, &i, Options::ALL, ws_len)?;
        got.expect_close_to(&want, 0.0, &format!("ints {dt} {} {what}", label(g)));
    }
    Ok(())
}

fn check_exact_shapes(gpu: &Gpu, dt: Precision) -> anyhow::Result<()> {
    for (k, g) in some_shapes().iter().enumerate() {
        check_exact(gpu, dt, g, 300 + k as u64)?;
    }
    Ok(())
}

/// The shifted path against the im2col path (`conv2d::conv2d_forward/backward`) in the same
/// precision on the same stored inputs: within the sum of both paths' bounds; db (the same
/// channel-sum kernel on the same dy) bit for bit.
fn shifted_equals_im2col(gpu: &Gpu) -> anyhow::Result<()> {
    for dt in Precision::ALL {
        for (k, g) in some_shapes().iter().enumerate() {
            let opts = Options::ALL;
            let stored = Inputs::random(g, 400 + k as u64).rounded(dt);
            let mag = reference(g, &stored.magnitudes(), opts);
            let (mine, theirs) = (
                bounds(dt, shifted_paths(g), &mag),
                bounds(dt, im2col_paths(g), &mag),
            );
            let tol: [f64; 4] = std::array::from_fn(|j| mine[j] + theirs[j]);
            let ws_len = workspace_for(g, dt, g.input.n).max(conv2d_workspace_len(g));
            let shifted = run(gpu, Path::Shifted, dt, g, &stored, opts, ws_len)?;
            let im2col = run(gpu, Path::Im2col, dt, g, &stored, opts, ws_len)?;
            let what = format!("{dt} {} vs im2col:", label(g));
            expect_within_bounds(&shifted, &im2col, tol, &what);
            anyhow::ensure!(
                shifted
                    .db
                    .iter()
                    .map(|v| v.to_bits())
                    .eq(im2col.db.iter().map(|v| v.to_bits())),
                "{what} db differs from the im2col path's (the same kernel on the same dy)"
            );
        }
    }
    Ok(())
}
