//! The Inception's one layer type: a bias-free convolution, a batch norm (inference: running
//! statistics), a ReLU — torchvision's `BasicConv2d` — with the batch norm folded into the
//! convolution when the weights are loaded:
//!
//!   s = γ / √(σ² + ε),   W′ = s·W (per output channel),   b′ = β − s·μ,
//!   y = ReLU(conv(x, W′) + b′) = ReLU(γ (conv(x, W) − μ) / √(σ² + ε) + β).
//!
//! The fold is computed in f64 and rounded to f32 once. The convolution is ddpm's
//! [`conv2d_forward`], which takes any kernel, stride and padding (the 1×7/7×1 and 1×3/3×1
//! kernels included).

use anyhow::Result;
use rayon::prelude::*;

use crate::ops::conv2d::{conv2d_forward, Conv2dShape, Padding};
use crate::ops::PAR_CHUNK;
use crate::profile::{self, Op};
use crate::shape::Nchw;

/// Batch-norm ε of torchvision's `BasicConv2d` (TensorFlow's 0.001), which pytorch-fid uses.
pub const BN_EPS: f64 = 1e-3;

/// The geometry of one `BasicConv2d`: channels, kernel (h, w), stride (h, w), symmetric
/// padding (h, w).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl ConvSpec {
    /// A stride-1 convolution.
    pub const fn new(
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        pad: (usize, usize),
    ) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: (1, 1),
            pad,
        }
    }

    /// The same with stride 2 in both directions.
    pub const fn stride2(self) -> Self {
        Self {
            stride: (2, 2),
            ..self
        }
    }

    /// The shape of the weight tensor: (C_out, C_in, kh, kw).
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kernel.0, self.kernel.1]
    }

    fn conv_shape(&self, input: Nchw) -> Result<Conv2dShape> {
        let pad = Padding {
            top: self.pad.0,
            bottom: self.pad.0,
            left: self.pad.1,
            right: self.pad.1,
        };
        Ok(Conv2dShape::new(
            input,
            self.c_out,
            self.kernel,
            self.stride,
            pad,
        )?)
    }
}

/// The raw parameters of one `BasicConv2d`, as stored: conv weight and the four batch-norm
/// vectors.
pub struct ConvBnParams<'a> {
    pub weight: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
}

/// A convolution with its batch norm folded in, followed by a ReLU.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub spec: ConvSpec,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl ConvBn {
    /// Folds the batch norm into the convolution. The slices must have the lengths `spec`
    /// implies (the loader checks them first, naming the tensor).
    pub fn fold(spec: ConvSpec, p: &ConvBnParams<'_>) -> Self {
        let per_out = spec.c_in * spec.kernel.0 * spec.kernel.1;
        assert_eq!(
            p.weight.len(),
            spec.c_out * per_out,
            "ConvBn::fold: weight length"
        );
        for v in [p.gamma, p.beta, p.mean, p.var] {
            assert_eq!(v.len(), spec.c_out, "ConvBn::fold: batch-norm length");
        }
        let mut weight = Vec::with_capacity(p.weight.len());
        let mut bias = Vec::with_capacity(spec.c_out);
        for (co, w_co) in p.weight.chunks_exact(per_out).enumerate() {
            let scale = f64::from(p.gamma[co]) / (f64::from(p.var[co]) + BN_EPS).sqrt();
            weight.extend(w_co.iter().map(|&w| (f64::from(w) * scale) as f32));
            bias.push((f64::from(p.beta[co]) - f64::from(p.mean[co]) * scale) as f32);
        }
        Self { spec, weight, bias }
    }

    /// y = ReLU(conv(x) + b′). x: `input` (its C must be `spec.c_in`); returns y and its shape.
    pub fn forward(&self, input: Nchw, x: &[f32]) -> Result<(Nchw, Vec<f32>)> {
        anyhow::ensure!(
            input.c == self.spec.c_in,
            "ConvBn: input has {} channels, the layer takes {}",
            input.c,
            self.spec.c_in
        );
        let s = self.spec.conv_shape(input)?;
        let out = s.output();
        let mut y = vec![0.0f32; out.len()];
        profile::time(Op::ConvForward, s.forward_flops(), || {
            conv2d_forward(&s, x, &self.weight, Some(&self.bias), &mut y)
        });
        profile::time(Op::Elementwise, 0, || relu_in_place(&mut y));
        Ok((out, y))
    }
}

/// x = max(x, 0), in parallel.
pub fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(PAR_CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    /// Convolution, batch norm and ReLU as separate steps, by direct summation in f64.
    fn reference(
        spec: &ConvSpec,
        input: Nchw,
        x: &[f32],
        p: &ConvBnParams<'_>,
    ) -> (Nchw, Vec<f64>) {
        let (kh, kw) = spec.kernel;
        let (sh, sw) = spec.stride;
        let (ph, pw) = spec.pad;
        let oh = (input.h + 2 * ph - kh) / sh + 1;
        let ow = (input.w + 2 * pw - kw) / sw + 1;
        let mut y = Vec::new();
        for n in 0..input.n {
            for co in 0..spec.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f64;
                        for ci in 0..spec.c_in {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sh + ky) as isize - ph as isize;
                                    let ix = (ox * sw + kx) as isize - pw as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= input.h as isize
                                        || ix >= input.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * input.c + ci) * input.h + iy as usize)
                                        * input.w
                                        + ix as usize];
                                    let wv = p.weight[((co * spec.c_in + ci) * kh + ky) * kw + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        let norm = (acc - f64::from(p.mean[co]))
                            / (f64::from(p.var[co]) + BN_EPS).sqrt()
                            * f64::from(p.gamma[co])
                            + f64::from(p.beta[co]);
                        y.push(norm.max(0.0));
                    }
                }
            }
        }
        (Nchw::new(input.n, spec.c_out, oh, ow), y)
    }

    #[test]
    fn folded_layer_matches_conv_then_batch_norm_then_relu() {
        let mut rng = Philox::new(21);
        // Every kernel shape of the Inception: 1×1, 3×3 (stride 1 and 2, padded or not), 5×5,
        // 1×7 / 7×1 and 1×3 / 3×1 with their one-sided paddings.
        let cases = [
            (ConvSpec::new(5, 7, (1, 1), (0, 0)), (9, 8)),
            (ConvSpec::new(3, 4, (3, 3), (0, 0)).stride2(), (11, 10)),
            (ConvSpec::new(4, 6, (3, 3), (1, 1)), (7, 9)),
            (ConvSpec::new(3, 5, (5, 5), (2, 2)), (8, 7)),
            (ConvSpec::new(6, 5, (1, 7), (0, 3)), (9, 10)),
            (ConvSpec::new(6, 5, (7, 1), (3, 0)), (10, 9)),
            (ConvSpec::new(4, 8, (1, 3), (0, 1)), (8, 8)),
            (ConvSpec::new(4, 8, (3, 1), (1, 0)), (8, 8)),
        ];
        for (spec, (h, w)) in cases {
            let input = Nchw::new(2, spec.c_in, h, w);
            let x: Vec<f32> = rng.uniform_vec(input.len(), -1.0, 1.0);
            let weight: Vec<f32> = rng.uniform_vec(spec.weight_shape().iter().product(), -0.5, 0.5);
            let gamma: Vec<f32> = rng.uniform_vec(spec.c_out, 0.5, 1.5);
            let beta: Vec<f32> = rng.uniform_vec(spec.c_out, -0.5, 0.5);
            let mean: Vec<f32> = rng.uniform_vec(spec.c_out, -0.5, 0.5);
            let var: Vec<f32> = rng.uniform_vec(spec.c_out, 0.2, 2.0);
            let p = ConvBnParams {
                weight: &weight,
                gamma: &gamma,
                beta: &beta,
                mean: &mean,
                var: &var,
            };
            let (want_shape, want) = reference(&spec, input, &x, &p);
            let layer = ConvBn::fold(spec, &p);
            let (shape, y) = layer.forward(input, &x).unwrap();
            assert_eq!(shape, want_shape, "{spec:?}");
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                want.iter().filter(|&&v| v == 0.0).count() > 0,
                "ReLU never clipped"
            );
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() <= 1e-5 * scale,
                    "{spec:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let spec = ConvSpec::new(3, 2, (1, 1), (0, 0));
        let ones = [1.0f32; 6];
        let two = [1.0f32; 2];
        let layer = ConvBn::fold(
            spec,
            &ConvBnParams {
                weight: &ones,
                gamma: &two,
                beta: &two,
                mean: &two,
                var: &two,
            },
        );
        assert!(layer.forward(Nchw::new(1, 4, 2, 2), &[0.0; 16]).is_err());
    }
}
