//! The parameterised building blocks (conv, linear, group norm) over the ops in [`crate::ops`],
//! and the builder that names their parameters and records how to initialise them.
//!
//! A layer holds only parameter ids and geometry; values live in the backend's parameters (a
//! [`ParamArena`] on the CPU). Each `forward` returns what its `backward` needs besides the
//! input, which the caller keeps. Forward and backward are generic over [`Backend`], so the same
//! layer runs on the CPU reference, the planner and the GPU.

use crate::backend::Backend;
use crate::float::Real;
use crate::ops::conv2d::{Conv2dShape, Padding};
use crate::ops::groupnorm::GroupNormShape;
use crate::ops::linear::LinearShape;
use crate::params::{ParamArena, ParamError, ParamId, ParamLayout};
use crate::rng::Philox;
use crate::shape::Nchw;

/// How a parameter starts out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(−bound, bound): PyTorch's default for conv and linear layers, bound = 1/√fan_in.
    Uniform(f64),
    /// N(0, std²): PyTorch's default for embeddings (std 1).
    Normal(f64),
    Ones,
    Zeros,
}

/// Collects parameter names, shapes and initialisers while a network is assembled.
#[derive(Debug, Default)]
pub struct Builder {
    pub layout: ParamLayout,
    pub inits: Vec<(ParamId, Init)>,
}

impl Builder {
    /// Adds one parameter. Names are diffusers keys, so a duplicate is a bug in the builder.
    pub fn param(&mut self, name: String, shape: &[usize], init: Init) -> ParamId {
        let id = self
            .layout
            .add(name, shape)
            .unwrap_or_else(|e: ParamError| panic!("network builder: {e}"));
        self.inits.push((id, init));
        id
    }

    /// A fresh arena with every parameter drawn from its initialiser; one Philox stream per
    /// parameter, so a value does not depend on the order or number of other parameters.
    pub fn init_arena<T: Real>(
        layout: &ParamLayout,
        inits: &[(ParamId, Init)],
        seed: u64,
    ) -> ParamArena<T> {
        let mut arena = ParamArena::zeros(layout.clone());
        for (k, &(id, init)) in inits.iter().enumerate() {
            let mut rng = Philox::with_stream(seed, k as u64);
            let dst = arena.value_mut(id);
            match init {
                Init::Uniform(b) => dst
                    .iter_mut()
                    .for_each(|v| *v = T::lit(b * (2.0 * rng.uniform() - 1.0))),
                Init::Normal(s) => dst.iter_mut().for_each(|v| *v = T::lit(s * rng.normal())),
                Init::Ones => dst.fill(T::one()),
                Init::Zeros => dst.fill(T::zero()),
            }
        }
        arena
    }
}

/// A 2-d convolution with bias; diffusers names `{prefix}.weight`, `{prefix}.bias`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: Padding,
}

impl Conv2d {
    pub fn new(
        b: &mut Builder,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: Padding,
    ) -> Self {
        let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
        Self {
            weight: b.param(
                format!("{prefix}.weight"),
                &[c_out, c_in, kernel, kernel],
                Init::Uniform(bound),
            ),
            bias: b.param(format!("{prefix}.bias"), &[c_out], Init::Uniform(bound)),
            c_in,
            c_out,
            kernel,
            stride,
            pad,
        }
    }

    /// The 3×3, stride-1, padding-1 convolution used throughout the UNet.
    pub fn same3x3(b: &mut Builder, prefix: &str, c_in: usize, c_out: usize) -> Self {
        Self::new(b, prefix, c_in, c_out, 3, 1, Padding::same(1))
    }

    pub fn geometry(&self, x: Nchw) -> Conv2dShape {
        debug_assert_eq!(x.c, self.c_in, "conv input channels");
        Conv2dShape::new(
            x,
            self.c_out,
            (self.kernel, self.kernel),
            (self.stride, self.stride),
            self.pad,
        )
        .unwrap_or_else(|e| panic!("conv geometry was validated with the config: {e}"))
    }

    pub fn out_shape(&self, x: Nchw) -> Nchw {
        self.geometry(x).output()
    }

    /// x: (B, C_in, H, W) → (B, C_out, H', W')
    pub fn forward<B: Backend>(&self, be: &mut B, p: &B::Params, xs: Nchw, x: &B::Buf) -> B::Buf {
        let g = self.geometry(xs);
        let mut y = be.alloc(g.output().len());
        be.conv2d_forward(p, &g, x, self.weight, self.bias, &mut y);
        y
    }

    /// Accumulates dW, db; returns dx, (B, C_in, H, W), when asked for.
    pub fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        xs: Nchw,
        x: &B::Buf,
        dy: &B::Buf,
        need_dx: bool,
    ) -> Option<B::Buf> {
        let g = self.geometry(xs);
        let mut dx = need_dx.then(|| be.alloc(B::len(x)));
        be.conv2d_backward(p, &g, x, self.weight, self.bias, dy, dx.as_mut());
        dx
    }
}

/// y = x Wᵀ + b with PyTorch's (d_out, d_in) weight; `{prefix}.weight`, `{prefix}.bias`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
    pub d_in: usize,
    pub d_out: usize,
}

impl Linear {
    pub fn new(b: &mut Builder, prefix: &str, d_in: usize, d_out: usize) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            weight: b.param(
                format!("{prefix}.weight"),
                &[d_out, d_in],
                Init::Uniform(bound),
            ),
            bias: b.param(format!("{prefix}.bias"), &[d_out], Init::Uniform(bound)),
            d_in,
            d_out,
        }
    }

    /// x: (rows, d_in) → (rows, d_out)
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        rows: usize,
        x: &B::Buf,
    ) -> B::Buf {
        let s = LinearShape::new(rows, self.d_in, self.d_out);
        let mut y = be.alloc(rows * self.d_out);
        be.linear_forward(p, &s, x, self.weight, self.bias, &mut y);
        y
    }

    /// Accumulates dW, db; returns dx, (rows, d_in), when asked for.
    pub fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        rows: usize,
        x: &B::Buf,
        dy: &B::Buf,
        need_dx: bool,
    ) -> Option<B::Buf> {
        let s = LinearShape::new(rows, self.d_in, self.d_out);
        let mut dx = need_dx.then(|| be.alloc(B::len(x)));
        be.linear_backward(p, &s, x, self.weight, self.bias, dy, dx.as_mut());
        dx
    }
}

/// Group norm with a per-channel affine; `{prefix}.weight` (γ), `{prefix}.bias` (β).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub groups: usize,
    pub eps: f64,
}

/// Group statistics saved by the forward, (B, G) each.
#[derive(Debug)]
pub struct GroupStats<B: Backend> {
    pub mean: B::Buf,
    pub rstd: B::Buf,
}

impl GroupNorm {
    pub fn new(b: &mut Builder, prefix: &str, channels: usize, groups: usize, eps: f64) -> Self {
        Self {
            gamma: b.param(format!("{prefix}.weight"), &[channels], Init::Ones),
            beta: b.param(format!("{prefix}.bias"), &[channels], Init::Zeros),
            groups,
            eps,
        }
    }

    fn geometry(&self, xs: Nchw) -> GroupNormShape {
        GroupNormShape::new(xs, self.groups, self.eps)
            .unwrap_or_else(|e| panic!("group norm geometry was validated with the config: {e}"))
    }

    /// A forward's output (`len` activations) and its statistics buffers, (B, G) each.
    fn outputs<B: Backend>(be: &mut B, g: &GroupNormShape, len: usize) -> (B::Buf, GroupStats<B>) {
        let y = be.alloc(len);
        let st = GroupStats {
            mean: be.alloc_stats(g.stats_len()),
            rstd: be.alloc_stats(g.stats_len()),
        };
        (y, st)
    }

    /// x: (B, C, H, W) → (y, stats)
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        xs: Nchw,
        x: &B::Buf,
    ) -> (B::Buf, GroupStats<B>) {
        let g = self.geometry(xs);
        let (mut y, mut st) = Self::outputs(be, &g, B::len(x));
        be.group_norm_forward(
            p,
            &g,
            x,
            self.gamma,
            self.beta,
            &mut y,
            &mut st.mean,
            &mut st.rstd,
        );
        (y, st)
    }

    /// silu(norm(x)): x (B, C, H, W) → (a, stats). The normalised x is not kept (see
    /// [`Backend::group_norm_silu_forward`]).
    pub fn forward_silu<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        xs: Nchw,
        x: &B::Buf,
    ) -> (B::Buf, GroupStats<B>) {
        let g = self.geometry(xs);
        let (mut a, mut st) = Self::outputs(be, &g, B::len(x));
        be.group_norm_silu_forward(
            p,
            &g,
            x,
            self.gamma,
            self.beta,
            &mut a,
            &mut st.mean,
            &mut st.rstd,
        );
        (a, st)
    }

    /// Backward of [`Self::forward_silu`] from da: accumulates dγ, dβ; returns dx.
    pub fn backward_silu<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        xs: Nchw,
        x: &B::Buf,
        st: &GroupStats<B>,
        da: &B::Buf,
    ) -> B::Buf {
        let g = self.geometry(xs);
        let mut dx = be.alloc(B::len(x));
        be.group_norm_silu_backward(
            p, &g, x, self.gamma, self.beta, &st.mean, &st.rstd, da, &mut dx,
        );
        dx
    }

    /// Accumulates dγ, dβ; returns dx, (B, C, H, W).
    pub fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        xs: Nchw,
        x: &B::Buf,
        st: &GroupStats<B>,
        dy: &B::Buf,
    ) -> B::Buf {
        let g = self.geometry(xs);
        let mut dx = be.alloc(B::len(x));
        be.group_norm_backward(
            p, &g, x, self.gamma, self.beta, &st.mean, &st.rstd, dy, &mut dx,
        );
        dx
    }
}
