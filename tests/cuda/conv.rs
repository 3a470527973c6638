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

use ddpm::cuda::ops::conv2d::{
    conv2d_backward, conv2d_forward, conv2d_workspace_for, conv2d_workspace_len,
};
use ddpm::cuda::ops::linear::{linear_backward, linear_forward};
use ddpm::cuda::testing::{expect_close, from_device, to_device, zeros_on_device, Case};
use ddpm::cuda::Gpu;
use ddpm::ops::conv2d::{self as cpu_conv, Conv2dShape, Padding};
use ddpm::ops::linear::{self as cpu_linear, LinearShape};
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

const TOL: f64 = 3e-4;

pub fn cases() -> Vec<Case> {
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

fn run_conv(
    gpu: &Gpu,
    g: &Conv2dShape,
    i: &Inputs,
    opts: Options,
    ws_len: usize,
) -> anyhow::Result<Outputs> {
    let (x_len, y_len) = (g.input.len(), g.output().len());
    let x = to_device(gpu, &i.x)?;
    let w = to_device(gpu, &i.w)?;
    let b = to_device(gpu, &i.b)?;
    let dy = to_device(gpu, &i.dy)?;
    let y = to_device(gpu, &vec![f32::NAN; y_len])?;
    let dx = to_device(gpu, &vec![f32::NAN; x_len])?;
    let dw = to_device(gpu, &i.dw0)?;
    let db = to_device(gpu, &i.db0)?;
    let ws = zeros_on_device::<f32>(gpu, ws_len)?;
    let b_ptr = opts.bias.then(|| b.ptr());
    conv2d_forward(gpu, g, x.ptr(), w.ptr(), b_ptr, y.ptr(), ws.ptr(), ws_len)?;
    conv2d_backward(
        gpu,
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
        y: from_device(gpu, &y, y_len)?,
        dx: if opts.dx {
            from_device(gpu, &dx, x_len)?
        } else {
            vec![]
        },
        dw: from_device(gpu, &dw, i.dw0.len())?,
        db: if opts.bias {
            from_device(gpu, &db, i.db0.len())?
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
    let one = run_conv(gpu, g, &inputs, opts, min_ws)?;
    one.compare(&want, "min workspace:");
    let all = run_conv(gpu, g, &inputs, opts, conv2d_workspace_for(g, g.input.n))?;
    all.compare(&want, "whole-batch workspace:");
    let again = run_conv(gpu, g, &inputs, opts, min_ws)?;
    for (a, b, what) in [
        (&one.y, &again.y, "y"),
        (&one.dx, &again.dx, "dx"),
        (&one.dw, &again.dw, "dw"),
        (&one.db, &again.db, "db"),
    ] {
        anyhow::ensure!(
            Outputs::bits(a) == Outputs::bits(b),
            "two identical runs give different {what}: not deterministic"
        );
    }
    Ok(())
}

/// Five images, workspaces for one image (five chunks), for two and a bit (chunks of 2, 2, 1),
/// for the batch (one chunk) and for more than the batch: all match the reference, and the
/// parameter gradients — per-image GEMMs on equally aligned columns and a channel sum, whatever
/// the chunking — are bitwise the same. (y and dx go through GEMMs batched over a chunk, and
/// cuBLAS may pick another kernel for another batch count, so those are held to the tolerance.)
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
        let got = run_conv(gpu, &g, &inputs, Options::ALL, ws_len)?;
        got.compare(&want, what);
        runs.push(got);
    }
    for r in &runs[1..] {
        anyhow::ensure!(
            Outputs::bits(&r.dw) == Outputs::bits(&runs[0].dw),
            "dw depends on the workspace size"
        );
        anyhow::ensure!(
            Outputs::bits(&r.db) == Outputs::bits(&runs[0].db),
            "db depends on the workspace size"
        );
    }
    Ok(())
}

fn check_linear(gpu: &Gpu, s: LinearShape, opts: Options, seed: u64) -> anyhow::Result<()> {
    let (x_len, w_len, y_len) = (s.rows * s.d_in, s.d_out * s.d_in, s.rows * s.d_out);
    let i = Inputs::random(seed, x_len, w_len, s.d_out, y_len);

    let want = {
        let (x, w, dy) = (widen(&i.x), widen(&i.w), widen(&i.dy));
        let b = opts.bias.then(|| widen(&i.b));
        let mut y = vec![0.0; y_len];
        cpu_linear::linear_forward(&s, &x, &w, b.as_deref(), &mut y);
        let mut dx = vec![0.0; if opts.dx { x_len } else { 0 }];
        let mut dw = widen(&i.dw0);
        let mut db = if opts.bias { widen(&i.db0) } else { vec![] };
        cpu_linear::linear_backward(
            &s,
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
    };

    let x = to_device(gpu, &i.x)?;
    let w = to_device(gpu, &i.w)?;
    let b = to_device(gpu, &i.b)?;
    let dy = to_device(gpu, &i.dy)?;
    let y = to_device(gpu, &vec![f32::NAN; y_len])?;
    let dx = to_device(gpu, &vec![f32::NAN; x_len])?;
    let dw = to_device(gpu, &i.dw0)?;
    let db = to_device(gpu, &i.db0)?;
    linear_forward(
        gpu,
        &s,
        x.ptr(),
        w.ptr(),
        opts.bias.then(|| b.ptr()),
        y.ptr(),
    )?;
    linear_backward(
        gpu,
        &s,
        x.ptr(),
        w.ptr(),
        dy.ptr(),
        opts.dx.then(|| dx.ptr()),
        dw.ptr(),
        opts.bias.then(|| db.ptr()),
    )?;
    let got = Outputs {
        y: from_device(gpu, &y, y_len)?,
        dx: if opts.dx {
            from_device(gpu, &dx, x_len)?
        } else {
            vec![]
        },
        dw: from_device(gpu, &dw, w_len)?,
        db: if opts.bias {
            from_device(gpu, &db, s.d_out)?
        } else {
            vec![]
        },
    };
    got.compare(&want, "linear");
    Ok(())
}
