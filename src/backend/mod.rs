//! The op set the UNet is written against, so one network definition runs on every backend.
//!
//! [`crate::nn`] walks the network and calls these ops; a backend decides where buffers live and
//! how each op is computed:
//! - [`cpu::Cpu`]: the plain-Rust reference in [`crate::ops`], buffers are `Vec<T>`;
//! - [`plan::Planner`]: computes nothing, only adds up the buffers a pass asks for, so the GPU
//!   backend can allocate everything once before the first step;
//! - `crate::cuda::backend::Gpu`: the hand-written kernels and cuBLAS, buffers in device memory.
//!
//! Conventions (the same as [`crate::ops`]): activation gradients are written (`=`), parameter
//! gradients accumulate (`+=`). Outputs passed as `&mut Self::Buf` are fully overwritten unless the
//! op says it accumulates. [`Backend::alloc`] may return garbage; [`Backend::zeros`] is zeroed.

pub mod cpu;
pub mod plan;

use crate::float::Real;
use crate::ops::attention::AttentionShape;
use crate::ops::conv2d::Conv2dShape;
use crate::ops::dropout::DropoutArgs;
use crate::ops::embedding::TimestepEmbedding;
use crate::ops::groupnorm::GroupNormShape;
use crate::ops::linear::LinearShape;
use crate::params::ParamId;
use crate::shape::Nchw;

/// One backend's buffers, parameters and ops. Shapes are validated by the layer that calls an
/// op; a backend may assume buffer lengths match them.
pub trait Backend {
    /// The element type of activations and parameters.
    type T: Real;
    /// An activation buffer of `T`.
    type Buf;
    /// Parameter values and their gradients, in the layout of [`crate::params::ParamLayout`].
    type Params;

    // ---- buffers --------------------------------------------------------------------------
    /// A buffer of `len` elements whose contents are unspecified (every op overwrites it).
    fn alloc(&mut self, len: usize) -> Self::Buf;
    /// A buffer of `len` zeros (for outputs that accumulate).
    fn zeros(&mut self, len: usize) -> Self::Buf;
    /// A buffer for `len` per-group statistics (group-norm mean and rstd). A device backend
    /// keeps these in fp32 whatever its activation precision; the CPU's are plain buffers.
    fn alloc_stats(&mut self, len: usize) -> Self::Buf {
        self.alloc(len)
    }
    fn len(buf: &Self::Buf) -> usize;
    /// A new buffer holding a copy of `x`.
    fn copy(&mut self, x: &Self::Buf) -> Self::Buf;
    /// acc += x
    fn accumulate(&mut self, acc: &mut Self::Buf, x: &Self::Buf);

    // ---- layers with parameters --------------------------------------------------------------
    /// y = conv(x, w) + b.   x: (B, C_in, H, W), y: (B, C_out, H', W')
    fn conv2d_forward(
        &mut self,
        p: &Self::Params,
        g: &Conv2dShape,
        x: &Self::Buf,
        w: ParamId,
        b: ParamId,
        y: &mut Self::Buf,
    );
    /// dw += …, db += …, dx = … (when given).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &mut self,
        p: &mut Self::Params,
        g: &Conv2dShape,
        x: &Self::Buf,
        w: ParamId,
        b: ParamId,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
    );
    /// y = x Wᵀ + b.   x: (rows, d_in), W: (d_out, d_in), y: (rows, d_out)
    fn linear_forward(
        &mut self,
        p: &Self::Params,
        s: &LinearShape,
        x: &Self::Buf,
        w: ParamId,
        b: ParamId,
        y: &mut Self::Buf,
    );
    /// dW += dyᵀ x, db += Σ_rows dy, dx = dy W (when given).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        p: &mut Self::Params,
        s: &LinearShape,
        x: &Self::Buf,
        w: ParamId,
        b: ParamId,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
    );
    /// y = γ·(x − μ)·rstd + β per group; writes mean and rstd, (B, G) each, for the backward.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_forward(
        &mut self,
        p: &Self::Params,
        g: &GroupNormShape,
        x: &Self::Buf,
        gamma: ParamId,
        beta: ParamId,
        y: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
    );
    /// dx = …; dγ += …, dβ += ….
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &mut self,
        p: &mut Self::Params,
        g: &GroupNormShape,
        x: &Self::Buf,
        gamma: ParamId,
        beta: ParamId,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    );
    /// a = silu(group_norm(x)), the pair every residual block and the output head run;
    /// writes mean and rstd as [`Self::group_norm_forward`]. The normalised x itself is not
    /// kept: [`Self::group_norm_silu_backward`] recomputes it from x and the statistics, so a
    /// device backend can fuse the pair into the norm's own passes (one activation write instead
    /// of three passes). The default runs the two ops.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_silu_forward(
        &mut self,
        p: &Self::Params,
        g: &GroupNormShape,
        x: &Self::Buf,
        gamma: ParamId,
        beta: ParamId,
        a: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
    ) {
        let mut y = self.alloc(Self::len(x));
        self.group_norm_forward(p, g, x, gamma, beta, &mut y, mean, rstd);
        self.silu_forward(&y, a);
    }
    /// Backward of [`Self::group_norm_silu_forward`] from da: dx written, dγ, dβ accumulated.
    /// The default recomputes n = group_norm(x) (the same statistics come out again), then runs
    /// the SiLU and group-norm backwards.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_silu_backward(
        &mut self,
        p: &mut Self::Params,
        g: &GroupNormShape,
        x: &Self::Buf,
        gamma: ParamId,
        beta: ParamId,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        da: &Self::Buf,
        dx: &mut Self::Buf,
    ) {
        let len = Self::len(x);
        let (mut n, mut dn) = (self.alloc(len), self.alloc(len));
        let (mut m2, mut r2) = (
            self.alloc_stats(g.stats_len()),
            self.alloc_stats(g.stats_len()),
        );
        self.group_norm_forward(p, g, x, gamma, beta, &mut n, &mut m2, &mut r2);
        self.silu_backward(&n, da, &mut dn);
        self.group_norm_backward(p, g, x, gamma, beta, mean, rstd, &dn, dx);
    }
    /// emb[i] += table[labels[i]].   emb: (B, E), table: (classes, E)
    fn class_embedding_forward(
        &mut self,
        p: &Self::Params,
        table: ParamId,
        labels: &[u32],
        emb: &mut Self::Buf,
    );
    /// dtable[labels[i]] += demb[i].
    fn class_embedding_backward(
        &mut self,
        p: &mut Self::Params,
        table: ParamId,
        labels: &[u32],
        demb: &Self::Buf,
    );

    // ---- parameter-free ops --------------------------------------------------------------------
    fn silu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf);
    fn silu_backward(&mut self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);
    /// y[n, c, :, :] = x[n, c, :, :] + t[n, c].   x, y: `shape`, t: (N, C)
    fn add_channel_bias(&mut self, shape: Nchw, x: &Self::Buf, t: &Self::Buf, y: &mut Self::Buf);
    /// dt[n, c] = Σ_hw dy[n, c, :, :] (the t-gradient of [`Backend::add_channel_bias`]).
    fn sum_spatial(&mut self, shape: Nchw, dy: &Self::Buf, dt: &mut Self::Buf);
    fn dropout_forward(&mut self, a: &DropoutArgs, x: &Self::Buf, y: &mut Self::Buf);
    fn dropout_backward(&mut self, a: &DropoutArgs, dy: &Self::Buf, dx: &mut Self::Buf);
    /// y = a ‖ b along channels.   a: (N, c_a, H, W), b: (N, c_b, H, W), `out` = (N, c_a + c_b, H, W)
    fn concat_channels(
        &mut self,
        out: Nchw,
        a: &Self::Buf,
        c_a: usize,
        b: &Self::Buf,
        c_b: usize,
        y: &mut Self::Buf,
    );
    /// The backward of [`Backend::concat_channels`].
    fn split_channels(
        &mut self,
        out: Nchw,
        dy: &Self::Buf,
        da: &mut Self::Buf,
        c_a: usize,
        db: &mut Self::Buf,
        c_b: usize,
    );
    /// x: `xs` → y: (N, C, 2H, 2W)
    fn upsample_nearest2x_forward(&mut self, xs: Nchw, x: &Self::Buf, y: &mut Self::Buf);
    fn upsample_nearest2x_backward(&mut self, xs: Nchw, dy: &Self::Buf, dx: &mut Self::Buf);
    /// (N, C, H, W) → (N, H·W, C)
    fn nchw_to_tokens(&mut self, shape: Nchw, x: &Self::Buf, tokens: &mut Self::Buf);
    /// (N, H·W, C) → (N, C, H, W)
    fn tokens_to_nchw(&mut self, shape: Nchw, tokens: &Self::Buf, x: &mut Self::Buf);
    /// out = softmax(q kᵀ/√d) v per head; writes probs (B, heads, L, L) for the backward.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &mut self,
        g: &AttentionShape,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        probs: &mut Self::Buf,
    );
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &mut self,
        g: &AttentionShape,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        probs: &Self::Buf,
        dout: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
    );
    /// t: (N) → emb: (N, dim)
    fn timestep_embedding(&mut self, e: &TimestepEmbedding, t: &Self::Buf, emb: &mut Self::Buf);
}

/// Bytes a device allocation of `len` elements of `elem` bytes takes in a planned arena: every
/// buffer starts on a 256-byte boundary (what cuBLAS and vector loads like).
pub const fn arena_bytes(len: usize, elem: usize) -> usize {
    (len * elem).div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// Alignment of every buffer in a planned device arena.
pub const ARENA_ALIGN: usize = 256;
