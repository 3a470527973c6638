//! The residual block of the DDPM UNet (diffusers `ResnetBlock2D`, "default" time shift):
//!
//! ```text
//! h = conv1(silu(norm1(x))) + time_emb_proj(silu(emb))[:, :, None, None]
//! h = conv2(dropout(silu(norm2(h))))
//! y = shortcut(x) + h          (shortcut = 1×1 conv when C_in ≠ C_out, else identity)
//! ```
//! `silu(emb)` is the same for every block, so the UNet computes it once and passes it in.

use super::layers::{Builder, Conv2d, GroupNorm, GroupStats, Linear};
use crate::backend::Backend;
use crate::ops::conv2d::Padding;
use crate::ops::dropout::DropoutArgs;
use crate::shape::Nchw;

#[derive(Clone, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub dropout: f64,
    /// Position among the network's residual blocks: its dropout stream.
    pub index: u64,
}

/// What [`ResnetBlock::backward`] needs from the forward.
pub struct ResnetTape<B: Backend> {
    /// (B, C_in, H, W)
    xs: Nchw,
    x: B::Buf,
    st1: GroupStats<B>,
    /// silu(norm1(x)), the input of conv1. (B, C_in, H, W)
    a1: B::Buf,
    /// conv1(a1) + time projection, the input of norm2. (B, C_out, H, W)
    h: B::Buf,
    st2: GroupStats<B>,
    /// dropout(silu(norm2(h))), the input of conv2. (B, C_out, H, W)
    d: B::Buf,
    drop: Option<DropoutArgs>,
}

// A summary: the buffers are large, and a device backend's cannot be printed from the host.
impl<B: Backend> std::fmt::Debug for ResnetTape<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResnetTape")
            .field("xs", &self.xs)
            .finish_non_exhaustive()
    }
}

impl ResnetBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut Builder,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        dropout: f64,
        index: u64,
    ) -> Self {
        Self {
            norm1: GroupNorm::new(b, &format!("{prefix}.norm1"), c_in, groups, eps),
            conv1: Conv2d::same3x3(b, &format!("{prefix}.conv1"), c_in, c_out),
            time_emb_proj: Linear::new(b, &format!("{prefix}.time_emb_proj"), temb, c_out),
            norm2: GroupNorm::new(b, &format!("{prefix}.norm2"), c_out, groups, eps),
            conv2: Conv2d::same3x3(b, &format!("{prefix}.conv2"), c_out, c_out),
            conv_shortcut: (c_in != c_out).then(|| {
                Conv2d::new(
                    b,
                    &format!("{prefix}.conv_shortcut"),
                    c_in,
                    c_out,
                    1,
                    1,
                    Padding::same(0),
                )
            }),
            dropout,
            index,
        }
    }

    pub fn c_out(&self) -> usize {
        self.conv1.c_out
    }

    /// x: (B, C_in, H, W), emb_act = silu(emb): (B, E) → y: (B, C_out, H, W).
    /// `dropout_seed` is `Some` in training (a fresh seed per step) and `None` for inference.
    /// Takes `x` by value: the tape keeps it.
    pub fn forward<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        xs: Nchw,
        x: B::Buf,
        emb_act: &B::Buf,
        dropout_seed: Option<u64>,
    ) -> (B::Buf, ResnetTape<B>) {
        let ys = xs.with_c(self.c_out());
        let (a1, st1) = self.norm1.forward_silu(be, p, xs, &x);
        let c1 = self.conv1.forward(be, p, xs, &a1);
        let tproj = self.time_emb_proj.forward(be, p, xs.n, emb_act); // (B, C_out)
        let mut h = be.alloc(B::len(&c1));
        be.add_channel_bias(ys, &c1, &tproj, &mut h);
        let (a2, st2) = self.norm2.forward_silu(be, p, ys, &h);
        let drop = match dropout_seed {
            Some(seed) if self.dropout > 0.0 => Some(
                DropoutArgs::new(self.dropout, seed, self.index)
                    .expect("dropout probability was validated with the config"),
            ),
            _ => None,
        };
        let d = match &drop {
            Some(args) => {
                let mut d = be.alloc(B::len(&a2));
                be.dropout_forward(args, &a2, &mut d);
                d
            }
            None => a2,
        };
        let mut y = self.conv2.forward(be, p, ys, &d);
        match &self.conv_shortcut {
            Some(sc) => {
                let s = sc.forward(be, p, xs, &x);
                be.accumulate(&mut y, &s);
            }
            None => be.accumulate(&mut y, &x),
        }
        let tape = ResnetTape {
            xs,
            x,
            st1,
            a1,
            h,
            st2,
            d,
            drop,
        };
        (y, tape)
    }

    /// dy: (B, C_out, H, W) → dx: (B, C_in, H, W); adds this block's share of d(silu(emb)),
    /// (B, E), into `demb_act`.
    pub fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        tape: &ResnetTape<B>,
        emb_act: &B::Buf,
        dy: &B::Buf,
        demb_act: &mut B::Buf,
    ) -> B::Buf {
        let (xs, ys) = (tape.xs, tape.xs.with_c(self.c_out()));
        // y = shortcut(x) + conv2(d)
        let mut dx = match &self.conv_shortcut {
            Some(sc) => sc
                .backward(be, p, xs, &tape.x, dy, true)
                .expect("dx was asked for"),
            None => be.copy(dy),
        };
        let dd = self
            .conv2
            .backward(be, p, ys, &tape.d, dy, true)
            .expect("dx was asked for");
        let da2 = match &tape.drop {
            Some(args) => {
                let mut da2 = be.alloc(B::len(&dd));
                be.dropout_backward(args, &dd, &mut da2);
                da2
            }
            None => dd,
        };
        let dh = self
            .norm2
            .backward_silu(be, p, ys, &tape.h, &tape.st2, &da2);
        // h = conv1(a1) + tproj: the time projection sees Σ_hw dh.
        let mut dtproj = be.alloc(ys.n * ys.c); // (B, C_out)
        be.sum_spatial(ys, &dh, &mut dtproj);
        let demb = self
            .time_emb_proj
            .backward(be, p, xs.n, emb_act, &dtproj, true)
            .expect("dx was asked for");
        be.accumulate(demb_act, &demb);
        let da1 = self
            .conv1
            .backward(be, p, xs, &tape.a1, &dh, true)
            .expect("dx was asked for");
        let dx1 = self
            .norm1
            .backward_silu(be, p, xs, &tape.x, &tape.st1, &da1);
        be.accumulate(&mut dx, &dx1);
        dx
    }
}
