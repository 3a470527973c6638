//! Spatial self-attention block (diffusers `Attention` as used by `UNet2DModel`):
//!
//! ```text
//! tokens = group_norm(x) as (B, H·W, C)
//! o = softmax(q kᵀ / √d) v   with q, k, v = to_q/to_k/to_v(tokens)
//! y = x + to_out.0(o) as (B, C, H, W)
//! ```

use super::layers::{accumulate, Builder, GroupNorm, GroupStats, Linear};
use crate::float::Real;
use crate::ops::attention::{attention_backward, attention_forward, AttentionShape};
use crate::ops::layout::{nchw_to_tokens, tokens_to_nchw};
use crate::params::ParamArena;
use crate::shape::Nchw;

#[derive(Clone, Debug)]
pub struct AttentionBlock {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

/// What [`AttentionBlock::backward`] needs from the forward.
#[derive(Debug)]
pub struct AttentionTape<T> {
    /// (B, C, H, W)
    xs: Nchw,
    x: Vec<T>,
    st: GroupStats<T>,
    /// Normalised input in token layout, the input of q/k/v. (B, L, C)
    tokens: Vec<T>,
    /// (B, L, C) each
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// (B, heads, L, L)
    probs: Vec<T>,
    /// Attention output, the input of to_out. (B, L, C)
    o: Vec<T>,
}

impl AttentionBlock {
    pub fn new(
        b: &mut Builder,
        prefix: &str,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f64,
    ) -> Self {
        Self {
            group_norm: GroupNorm::new(b, &format!("{prefix}.group_norm"), channels, groups, eps),
            to_q: Linear::new(b, &format!("{prefix}.to_q"), channels, channels),
            to_k: Linear::new(b, &format!("{prefix}.to_k"), channels, channels),
            to_v: Linear::new(b, &format!("{prefix}.to_v"), channels, channels),
            to_out: Linear::new(b, &format!("{prefix}.to_out.0"), channels, channels),
            heads,
        }
    }

    fn geometry(&self, xs: Nchw) -> AttentionShape {
        AttentionShape::new(xs.n, xs.hw(), xs.c, self.heads)
            .unwrap_or_else(|e| panic!("attention geometry was validated with the config: {e}"))
    }

    /// x: (B, C, H, W) → y: (B, C, H, W)
    pub fn forward<T: Real>(
        &self,
        p: &ParamArena<T>,
        xs: Nchw,
        x: Vec<T>,
    ) -> (Vec<T>, AttentionTape<T>) {
        let g = self.geometry(xs);
        let rows = xs.n * xs.hw();
        let (n, st) = self.group_norm.forward(p, xs, &x);
        let mut tokens = vec![T::zero(); n.len()];
        nchw_to_tokens(xs, &n, &mut tokens);
        let q = self.to_q.forward(p, rows, &tokens);
        let k = self.to_k.forward(p, rows, &tokens);
        let v = self.to_v.forward(p, rows, &tokens);
        let mut o = vec![T::zero(); tokens.len()];
        let mut probs = vec![T::zero(); g.probs_len()];
        attention_forward(&g, &q, &k, &v, &mut o, &mut probs);
        let out = self.to_out.forward(p, rows, &o);
        let mut y = vec![T::zero(); x.len()];
        tokens_to_nchw(xs, &out, &mut y);
        accumulate(&mut y, &x);
        let tape = AttentionTape {
            xs,
            x,
            st,
            tokens,
            q,
            k,
            v,
            probs,
            o,
        };
        (y, tape)
    }

    /// dy: (B, C, H, W) → dx
    pub fn backward<T: Real>(
        &self,
        p: &mut ParamArena<T>,
        t: &AttentionTape<T>,
        dy: &[T],
    ) -> Vec<T> {
        let (xs, g) = (t.xs, self.geometry(t.xs));
        let rows = xs.n * xs.hw();
        let mut dout = vec![T::zero(); dy.len()];
        nchw_to_tokens(xs, dy, &mut dout);
        let do_ = self
            .to_out
            .backward(p, rows, &t.o, &dout, true)
            .expect("dx was asked for");
        let (mut dq, mut dk, mut dv) = (
            vec![T::zero(); do_.len()],
            vec![T::zero(); do_.len()],
            vec![T::zero(); do_.len()],
        );
        attention_backward(
            &g, &t.q, &t.k, &t.v, &t.probs, &do_, &mut dq, &mut dk, &mut dv,
        );
        // q, k and v all read the same tokens: their input gradients add up.
        let mut dtokens = self
            .to_q
            .backward(p, rows, &t.tokens, &dq, true)
            .expect("dx was asked for");
        for (layer, d) in [(&self.to_k, &dk), (&self.to_v, &dv)] {
            let part = layer
                .backward(p, rows, &t.tokens, d, true)
                .expect("dx was asked for");
            accumulate(&mut dtokens, &part);
        }
        let mut dn = vec![T::zero(); dy.len()];
        tokens_to_nchw(xs, &dtokens, &mut dn);
        let mut dx = self.group_norm.backward(p, xs, &t.x, &t.st, &dn);
        accumulate(&mut dx, dy); // the residual path
        dx
    }
}
