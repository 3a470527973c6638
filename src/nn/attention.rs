//! Spatial self-attention block (diffusers `Attention` as used by `UNet2DModel`):
//!
//! ```text
//! tokens = group_norm(x) as (B, H·W, C)
//! o = softmax(q kᵀ / √d) v   with q, k, v = to_q/to_k/to_v(tokens)
//! y = x + to_out.0(o) as (B, C, H, W)
//! ```

use super::layers::{Builder, GroupNorm, GroupStats, Linear};
use crate::backend::Backend;
use crate::ops::attention::AttentionShape;
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
pub struct AttentionTape<B: Backend> {
    /// (B, C, H, W)
    xs: Nchw,
    x: B::Buf,
    st: GroupStats<B>,
    /// Normalised input in token layout, the input of q/k/v. (B, L, C)
    tokens: B::Buf,
    /// (B, L, C) each
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    /// (B, heads, L, L)
    probs: B::Buf,
    /// Attention output, the input of to_out. (B, L, C)
    o: B::Buf,
}

// A summary: the buffers are large, and a device backend's cannot be printed from the host.
impl<B: Backend> std::fmt::Debug for AttentionTape<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionTape")
            .field("xs", &self.xs)
            .finish_non_exhaustive()
    }
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

    /// x: (B, C, H, W) → y: (B, C, H, W). Takes `x` by value: the tape keeps it.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        xs: Nchw,
        x: B::Buf,
    ) -> (B::Buf, AttentionTape<B>) {
        let g = self.geometry(xs);
        let rows = xs.n * xs.hw();
        let (n, st) = self.group_norm.forward(be, p, xs, &x);
        let mut tokens = be.alloc(B::len(&n)); // (B, L, C)
        be.nchw_to_tokens(xs, &n, &mut tokens);
        let q = self.to_q.forward(be, p, rows, &tokens);
        let k = self.to_k.forward(be, p, rows, &tokens);
        let v = self.to_v.forward(be, p, rows, &tokens);
        let mut o = be.alloc(B::len(&tokens)); // (B, L, C)
        let mut probs = be.alloc(g.probs_len()); // (B, heads, L, L)
        be.attention_forward(&g, &q, &k, &v, &mut o, &mut probs);
        let out = self.to_out.forward(be, p, rows, &o);
        let mut y = be.alloc(B::len(&x));
        be.tokens_to_nchw(xs, &out, &mut y);
        be.accumulate(&mut y, &x);
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

    /// dy: (B, C, H, W) → dx: (B, C, H, W)
    pub fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        t: &AttentionTape<B>,
        dy: &B::Buf,
    ) -> B::Buf {
        let (xs, g) = (t.xs, self.geometry(t.xs));
        let rows = xs.n * xs.hw();
        let mut dout = be.alloc(B::len(dy)); // (B, L, C)
        be.nchw_to_tokens(xs, dy, &mut dout);
        let do_ = self
            .to_out
            .backward(be, p, rows, &t.o, &dout, true)
            .expect("dx was asked for");
        let n = B::len(&do_);
        let (mut dq, mut dk, mut dv) = (be.alloc(n), be.alloc(n), be.alloc(n));
        be.attention_backward(
            &g, &t.q, &t.k, &t.v, &t.probs, &do_, &mut dq, &mut dk, &mut dv,
        );
        // q, k and v all read the same tokens: their input gradients add up.
        let mut dtokens = self
            .to_q
            .backward(be, p, rows, &t.tokens, &dq, true)
            .expect("dx was asked for");
        for (layer, d) in [(&self.to_k, &dk), (&self.to_v, &dv)] {
            let part = layer
                .backward(be, p, rows, &t.tokens, d, true)
                .expect("dx was asked for");
            be.accumulate(&mut dtokens, &part);
        }
        let mut dn = be.alloc(B::len(dy));
        be.tokens_to_nchw(xs, &dtokens, &mut dn);
        let mut dx = self.group_norm.backward(be, p, xs, &t.x, &t.st, &dn);
        be.accumulate(&mut dx, dy); // the residual path
        dx
    }
}
