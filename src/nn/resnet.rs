//! The residual block of the DDPM UNet (diffusers `ResnetBlock2D`, "default" time shift):
//!
//! ```text
//! h = conv1(silu(norm1(x))) + time_emb_proj(silu(emb))[:, :, None, None]
//! h = conv2(dropout(silu(norm2(h))))
//! y = shortcut(x) + h          (shortcut = 1×1 conv when C_in ≠ C_out, else identity)
//! ```
//! `silu(emb)` is the same for every block, so the UNet computes it once and passes it in.

use super::layers::{accumulate, Builder, Conv2d, GroupNorm, GroupStats, Linear};
use crate::float::Real;
use crate::ops::add::{add_channel_bias, add_channel_bias_backward};
use crate::ops::conv2d::Padding;
use crate::ops::dropout::{dropout_backward, dropout_forward, DropoutArgs};
use crate::ops::silu::{silu_backward, silu_forward};
use crate::params::ParamArena;
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
#[derive(Debug)]
pub struct ResnetTape<T> {
    /// (B, C_in, H, W)
    xs: Nchw,
    x: Vec<T>,
    st1: GroupStats<T>,
    /// norm1(x), the input of the first SiLU. (B, C_in, H, W)
    n1: Vec<T>,
    /// silu(n1), the input of conv1. (B, C_in, H, W)
    a1: Vec<T>,
    /// conv1(a1) + time projection, the input of norm2. (B, C_out, H, W)
    h: Vec<T>,
    st2: GroupStats<T>,
    /// norm2(h). (B, C_out, H, W)
    n2: Vec<T>,
    /// dropout(silu(n2)), the input of conv2. (B, C_out, H, W)
    d: Vec<T>,
    drop: Option<DropoutArgs>,
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
    pub fn forward<T: Real>(
        &self,
        p: &ParamArena<T>,
        xs: Nchw,
        x: Vec<T>,
        emb_act: &[T],
        dropout_seed: Option<u64>,
    ) -> (Vec<T>, ResnetTape<T>) {
        let ys = xs.with_c(self.c_out());
        let (n1, st1) = self.norm1.forward(p, xs, &x);
        let mut a1 = vec![T::zero(); n1.len()];
        silu_forward(&n1, &mut a1);
        let c1 = self.conv1.forward(p, xs, &a1);
        let tproj = self.time_emb_proj.forward(p, xs.n, emb_act); // (B, C_out)
        let mut h = vec![T::zero(); c1.len()];
        add_channel_bias(ys, &c1, &tproj, &mut h);
        let (n2, st2) = self.norm2.forward(p, ys, &h);
        let mut a2 = vec![T::zero(); n2.len()];
        silu_forward(&n2, &mut a2);
        let drop = match dropout_seed {
            Some(seed) if self.dropout > 0.0 => Some(
                DropoutArgs::new(self.dropout, seed, self.index)
                    .expect("dropout probability was validated with the config"),
            ),
            _ => None,
        };
        let d = match &drop {
            Some(args) => {
                let mut d = vec![T::zero(); a2.len()];
                dropout_forward(args, &a2, &mut d);
                d
            }
            None => a2,
        };
        let mut y = self.conv2.forward(p, ys, &d);
        match &self.conv_shortcut {
            Some(sc) => accumulate(&mut y, &sc.forward(p, xs, &x)),
            None => accumulate(&mut y, &x),
        }
        let tape = ResnetTape {
            xs,
            x,
            st1,
            n1,
            a1,
            h,
            st2,
            n2,
            d,
            drop,
        };
        (y, tape)
    }

    /// dy: (B, C_out, H, W) → dx; adds this block's share of d(silu(emb)) into `demb_act`.
    pub fn backward<T: Real>(
        &self,
        p: &mut ParamArena<T>,
        tape: &ResnetTape<T>,
        emb_act: &[T],
        dy: &[T],
        demb_act: &mut [T],
    ) -> Vec<T> {
        let (xs, ys) = (tape.xs, tape.xs.with_c(self.c_out()));
        // y = shortcut(x) + conv2(d)
        let mut dx = match &self.conv_shortcut {
            Some(sc) => sc
                .backward(p, xs, &tape.x, dy, true)
                .expect("dx was asked for"),
            None => dy.to_vec(),
        };
        let dd = self
            .conv2
            .backward(p, ys, &tape.d, dy, true)
            .expect("dx was asked for");
        let da2 = match &tape.drop {
            Some(args) => {
                let mut da2 = vec![T::zero(); dd.len()];
                dropout_backward(args, &dd, &mut da2);
                da2
            }
            None => dd,
        };
        let mut dn2 = vec![T::zero(); da2.len()];
        silu_backward(&tape.n2, &da2, &mut dn2);
        let dh = self.norm2.backward(p, ys, &tape.h, &tape.st2, &dn2);
        // h = conv1(a1) + tproj: the time projection sees Σ_hw dh.
        let mut dtproj = vec![T::zero(); ys.n * ys.c];
        add_channel_bias_backward(ys, &dh, None, &mut dtproj);
        let demb = self
            .time_emb_proj
            .backward(p, xs.n, emb_act, &dtproj, true)
            .expect("dx was asked for");
        accumulate(demb_act, &demb);
        let da1 = self
            .conv1
            .backward(p, xs, &tape.a1, &dh, true)
            .expect("dx was asked for");
        let mut dn1 = vec![T::zero(); da1.len()];
        silu_backward(&tape.n1, &da1, &mut dn1);
        let dx1 = self.norm1.backward(p, xs, &tape.x, &tape.st1, &dn1);
        accumulate(&mut dx, &dx1);
        dx
    }
}
