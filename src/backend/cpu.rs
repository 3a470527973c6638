//! The CPU reference backend: buffers are `Vec<T>`, parameters a [`ParamArena`], and every op is
//! a direct call into [`crate::ops`]. It adds nothing to those functions, so a network run here
//! computes exactly what the reference ops define.

use super::Backend;
use crate::float::Real;
use crate::ops;
use crate::ops::attention::AttentionShape;
use crate::ops::conv2d::Conv2dShape;
use crate::ops::dropout::DropoutArgs;
use crate::ops::embedding::TimestepEmbedding;
use crate::ops::groupnorm::{Affine, GroupNormShape};
use crate::ops::linear::LinearShape;
use crate::params::{ParamArena, ParamId};
use crate::profile::{self, Op};
use crate::shape::Nchw;
use std::marker::PhantomData;

/// The plain-Rust backend over `T` (f32, or f64 for gradient checks). It holds no state.
#[derive(Clone, Copy, Debug)]
pub struct Cpu<T>(PhantomData<T>);

impl<T: Real> Cpu<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T: Real> Default for Cpu<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Width of one row of an embedding table, (classes, E) → E.
fn table_width<T: Real>(p: &ParamArena<T>, table: ParamId) -> usize {
    p.layout().spec(table).shape[1]
}

impl<T: Real> Backend for Cpu<T> {
    type T = T;
    type Buf = Vec<T>;
    type Params = ParamArena<T>;

    // Both hand out zeros: a zeroed Vec is nearly free to get, and no result can then depend
    // on what an op leaves unwritten.
    fn alloc(&mut self, len: usize) -> Vec<T> {
        profile::time(Op::Allocation, 0, || vec![T::zero(); len])
    }
    fn zeros(&mut self, len: usize) -> Vec<T> {
        profile::time(Op::Allocation, 0, || vec![T::zero(); len])
    }
    fn len(buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn copy(&mut self, x: &Vec<T>) -> Vec<T> {
        profile::time(Op::Elementwise, 0, || x.clone())
    }
    fn accumulate(&mut self, acc: &mut Vec<T>, x: &Vec<T>) {
        profile::time(Op::Elementwise, 0, || ops::add::add_inplace(acc, x))
    }

    fn conv2d_forward(
        &mut self,
        p: &ParamArena<T>,
        g: &Conv2dShape,
        x: &Vec<T>,
        w: ParamId,
        b: ParamId,
        y: &mut Vec<T>,
    ) {
        profile::time(Op::ConvForward, g.forward_flops(), || {
            ops::conv2d::conv2d_forward(g, x, p.value(w), Some(p.value(b)), y);
        })
    }
    fn conv2d_backward(
        &mut self,
        p: &mut ParamArena<T>,
        g: &Conv2dShape,
        x: &Vec<T>,
        w: ParamId,
        b: ParamId,
        dy: &Vec<T>,
        dx: Option<&mut Vec<T>>,
    ) {
        let wr = p.layout().spec(w).range();
        let (values, [dw, db]) = p.values_and_grads([w, b]);
        let flops = g.forward_flops();
        profile::time(Op::ConvBackwardWeights, flops, || {
            ops::conv2d::conv2d_backward_weights(g, x, dy, dw, Some(db))
        });
        if let Some(dx) = dx {
            profile::time(Op::ConvBackwardData, flops, || {
                ops::conv2d::conv2d_backward_data(g, &values[wr], dy, dx)
            });
        }
    }
    fn linear_forward(
        &mut self,
        p: &ParamArena<T>,
        s: &LinearShape,
        x: &Vec<T>,
        w: ParamId,
        b: ParamId,
        y: &mut Vec<T>,
    ) {
        profile::time(Op::Linear, 0, || {
            ops::linear::linear_forward(s, x, p.value(w), Some(p.value(b)), y);
        })
    }
    fn linear_backward(
        &mut self,
        p: &mut ParamArena<T>,
        s: &LinearShape,
        x: &Vec<T>,
        w: ParamId,
        b: ParamId,
        dy: &Vec<T>,
        dx: Option<&mut Vec<T>>,
    ) {
        profile::time(Op::Linear, 0, || {
            let wr = p.layout().spec(w).range();
            let (values, [dw, db]) = p.values_and_grads([w, b]);
            let dx = dx.map(|d| d.as_mut_slice());
            ops::linear::linear_backward(s, x, &values[wr], dy, dx, dw, Some(db));
        })
    }
    fn group_norm_forward(
        &mut self,
        p: &ParamArena<T>,
        g: &GroupNormShape,
        x: &Vec<T>,
        gamma: ParamId,
        beta: ParamId,
        y: &mut Vec<T>,
        mean: &mut Vec<T>,
        rstd: &mut Vec<T>,
    ) {
        profile::time(Op::GroupNorm, 0, || {
            let affine = Affine {
                gamma: p.value(gamma),
                beta: p.value(beta),
            };
            ops::groupnorm::group_norm_forward(g, x, Some(affine), y, mean, rstd);
        })
    }
    fn group_norm_backward(
        &mut self,
        p: &mut ParamArena<T>,
        g: &GroupNormShape,
        x: &Vec<T>,
        gamma: ParamId,
        beta: ParamId,
        mean: &Vec<T>,
        rstd: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
    ) {
        profile::time(Op::GroupNorm, 0, || {
            let gr = p.layout().spec(gamma).range();
            let (values, [dgamma, dbeta]) = p.values_and_grads([gamma, beta]);
            ops::groupnorm::group_norm_backward(
                g,
                x,
                Some(&values[gr]),
                mean,
                rstd,
                dy,
                dx,
                Some((dgamma, dbeta)),
            );
        })
    }
    fn group_norm_silu_forward(
        &mut self,
        p: &ParamArena<T>,
        g: &GroupNormShape,
        x: &Vec<T>,
        gamma: ParamId,
        beta: ParamId,
        a: &mut Vec<T>,
        mean: &mut Vec<T>,
        rstd: &mut Vec<T>,
    ) {
        profile::time(Op::GroupNorm, 0, || {
            let affine = Affine {
                gamma: p.value(gamma),
                beta: p.value(beta),
            };
            ops::groupnorm::group_norm_silu_forward(g, x, Some(affine), a, mean, rstd);
        })
    }
    fn group_norm_silu_backward(
        &mut self,
        p: &mut ParamArena<T>,
        g: &GroupNormShape,
        x: &Vec<T>,
        gamma: ParamId,
        beta: ParamId,
        mean: &Vec<T>,
        rstd: &Vec<T>,
        da: &Vec<T>,
        dx: &mut Vec<T>,
    ) {
        profile::time(Op::GroupNorm, 0, || {
            let (gr, br) = (
                p.layout().spec(gamma).range(),
                p.layout().spec(beta).range(),
            );
            let (values, [dgamma, dbeta]) = p.values_and_grads([gamma, beta]);
            let affine = Affine {
                gamma: &values[gr],
                beta: &values[br],
            };
            ops::groupnorm::group_norm_silu_backward(
                g,
                x,
                Some(affine),
                mean,
                rstd,
                da,
                dx,
                Some((dgamma, dbeta)),
            );
        })
    }
    fn class_embedding_forward(
        &mut self,
        p: &ParamArena<T>,
        table: ParamId,
        labels: &[u32],
        emb: &mut Vec<T>,
    ) {
        profile::time(Op::Elementwise, 0, || {
            let (rows, e) = (p.value(table), table_width(p, table));
            for (out, &c) in emb.chunks_exact_mut(e).zip(labels) {
                let row = &rows[c as usize * e..(c as usize + 1) * e];
                out.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
            }
        })
    }
    fn class_embedding_backward(
        &mut self,
        p: &mut ParamArena<T>,
        table: ParamId,
        labels: &[u32],
        demb: &Vec<T>,
    ) {
        profile::time(Op::Elementwise, 0, || {
            let e = table_width(p, table);
            let dtable = p.grad_mut(table);
            for (d, &c) in demb.chunks_exact(e).zip(labels) {
                let row = &mut dtable[c as usize * e..(c as usize + 1) * e];
                row.iter_mut().zip(d).for_each(|(a, &b)| *a += b);
            }
        })
    }

    fn silu_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::silu::silu_forward(x, y);
        })
    }
    fn silu_backward(&mut self, x: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::silu::silu_backward(x, dy, dx);
        })
    }
    fn add_channel_bias(&mut self, shape: Nchw, x: &Vec<T>, t: &Vec<T>, y: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::add::add_channel_bias(shape, x, t, y);
        })
    }
    fn sum_spatial(&mut self, shape: Nchw, dy: &Vec<T>, dt: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::add::add_channel_bias_backward(shape, dy, None, dt);
        })
    }
    fn dropout_forward(&mut self, a: &DropoutArgs, x: &Vec<T>, y: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::dropout::dropout_forward(a, x, y);
        })
    }
    fn dropout_backward(&mut self, a: &DropoutArgs, dy: &Vec<T>, dx: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::dropout::dropout_backward(a, dy, dx);
        })
    }
    fn concat_channels(
        &mut self,
        out: Nchw,
        a: &Vec<T>,
        c_a: usize,
        b: &Vec<T>,
        c_b: usize,
        y: &mut Vec<T>,
    ) {
        profile::time(Op::Elementwise, 0, || {
            ops::concat::concat_channels(out, &[(a, c_a), (b, c_b)], y);
        })
    }
    fn split_channels(
        &mut self,
        out: Nchw,
        dy: &Vec<T>,
        da: &mut Vec<T>,
        c_a: usize,
        db: &mut Vec<T>,
        c_b: usize,
    ) {
        profile::time(Op::Elementwise, 0, || {
            ops::concat::split_channels(out, dy, &mut [(da, c_a), (db, c_b)]);
        })
    }
    fn upsample_nearest2x_forward(&mut self, xs: Nchw, x: &Vec<T>, y: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::upsample::upsample_nearest2x_forward(xs, x, y);
        })
    }
    fn upsample_nearest2x_backward(&mut self, xs: Nchw, dy: &Vec<T>, dx: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::upsample::upsample_nearest2x_backward(xs, dy, dx);
        })
    }
    fn nchw_to_tokens(&mut self, shape: Nchw, x: &Vec<T>, tokens: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::layout::nchw_to_tokens(shape, x, tokens);
        })
    }
    fn tokens_to_nchw(&mut self, shape: Nchw, tokens: &Vec<T>, x: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::layout::tokens_to_nchw(shape, tokens, x);
        })
    }
    fn attention_forward(
        &mut self,
        g: &AttentionShape,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        out: &mut Vec<T>,
        probs: &mut Vec<T>,
    ) {
        profile::time(Op::Attention, 0, || {
            ops::attention::attention_forward(g, q, k, v, out, probs);
        })
    }
    fn attention_backward(
        &mut self,
        g: &AttentionShape,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        probs: &Vec<T>,
        dout: &Vec<T>,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
    ) {
        profile::time(Op::Attention, 0, || {
            ops::attention::attention_backward(g, q, k, v, probs, dout, dq, dk, dv);
        })
    }
    fn timestep_embedding(&mut self, e: &TimestepEmbedding, t: &Vec<T>, emb: &mut Vec<T>) {
        profile::time(Op::Elementwise, 0, || {
            ops::embedding::timestep_embedding_forward(e, t, emb);
        })
    }
}
