//! The DDPM UNet (Ho et al. 2020, appendix B; diffusers `UNet2DModel`) with an explicit,
//! layer-by-layer backward.
//!
//! ```text
//! emb  = linear_2(silu(linear_1(sinusoid(t)))) [+ class_embedding[y]]      (B, E)
//! h    = conv_in(x);                       skips = [h]
//! down: per level, per layer: h = resnet(h, emb) [→ attention];   skips += h
//!       then (except the last level) h = conv3×3/2(h);             skips += h
//! mid:  h = resnet(h) → attention → resnet
//! up:   per level, per layer (one more than down): h = resnet(h ‖ skips.pop()) [→ attention]
//!       then (except the last level) h = conv3×3(upsample2×(h))
//! out  = conv_out(silu(conv_norm_out(h)))
//! ```
//! Every tensor in the skip list is the output of one down-path op whose input is the previous
//! entry, which is what makes the backward of the down path a simple reverse walk.
//!
//! The walk is written once, generic over [`Backend`] ([`UNet::forward_on`],
//! [`UNet::backward_on`]); [`UNet::predict`], [`UNet::forward`] and [`UNet::backward`] run it on
//! the CPU reference, and [`UNet::plan_step`] on the [`Planner`] to size a device arena.

use super::attention::{AttentionBlock, AttentionTape};
use super::config::{ConfigError, UNetConfig};
use super::layers::{Builder, Conv2d, GroupNorm, GroupStats, Init, Linear};
use super::resnet::{ResnetBlock, ResnetTape};
use crate::backend::cpu::Cpu;
use crate::backend::plan::Planner;
use crate::backend::Backend;
use crate::float::Real;
use crate::ops::conv2d::Padding;
use crate::ops::embedding::TimestepEmbedding;
use crate::params::{ParamArena, ParamId, ParamLayout};
use crate::shape::{Nchw, ShapeError};

/// A residual block, optionally followed by attention: one "layer" of a down or up block.
#[derive(Clone, Debug)]
pub struct Layer {
    pub resnet: ResnetBlock,
    pub attention: Option<AttentionBlock>,
}

#[derive(Clone, Debug)]
pub struct DownBlock {
    pub layers: Vec<Layer>,
    /// Stride-2 3×3 conv (`downsamplers.0.conv`); absent on the last level.
    pub downsample: Option<Conv2d>,
}

#[derive(Clone, Debug)]
pub struct UpBlock {
    pub layers: Vec<Layer>,
    /// 3×3 conv after nearest 2× upsampling (`upsamplers.0.conv`); absent on the last level.
    pub upsample: Option<Conv2d>,
}

#[derive(Clone, Debug)]
pub struct UNet {
    pub config: UNetConfig,
    pub layout: ParamLayout,
    inits: Vec<(ParamId, Init)>,
    time_proj: TimestepEmbedding,
    linear_1: Linear,
    linear_2: Linear,
    class_embedding: Option<ParamId>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: [Layer; 2],
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// Everything the backward needs from one forward, in `B`'s buffers.
pub struct UNetTape<B: Backend> {
    /// (B, C, S, S) of the input.
    xs: Nchw,
    x: B::Buf,
    labels: Option<Vec<u32>>,
    /// sinusoid(t), (B, C0)
    t_sin: B::Buf,
    /// linear_1 output, (B, E)
    e1: B::Buf,
    /// silu(e1), (B, E)
    a1: B::Buf,
    /// The embedding before its SiLU, (B, E)
    emb: B::Buf,
    /// silu(emb), shared by every residual block, (B, E)
    emb_act: B::Buf,
    down: Vec<DownTape<B>>,
    mid: Vec<LayerTape<B>>,
    up: Vec<UpTape<B>>,
    /// Input of conv_norm_out, (B, C0, S, S)
    out_in: B::Buf,
    out_st: GroupStats<B>,
    /// silu(conv_norm_out(out_in)), the input of conv_out
    out_a: B::Buf,
}

/// The tape of a forward on the CPU reference.
pub type CpuTape<T> = UNetTape<Cpu<T>>;

// A summary: the buffers are large, and a device backend's cannot be printed from the host.
impl<B: Backend> std::fmt::Debug for UNetTape<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNetTape")
            .field("xs", &self.xs)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

struct LayerTape<B: Backend> {
    resnet: ResnetTape<B>,
    attention: Option<AttentionTape<B>>,
    /// Shape of the layer's output.
    ys: Nchw,
}

struct DownTape<B: Backend> {
    layers: Vec<LayerTape<B>>,
    /// Input of the downsampling conv and its shape.
    down_in: Option<(Nchw, B::Buf)>,
}

struct UpTape<B: Backend> {
    /// Per layer: the tape, and the channels of (h, skip) concatenated at its input.
    layers: Vec<(LayerTape<B>, usize, usize)>,
    /// Shape before upsampling, and the upsampled tensor (the input of the conv).
    up_in: Option<(Nchw, B::Buf)>,
}

impl Layer {
    fn forward<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        xs: Nchw,
        x: B::Buf,
        emb_act: &B::Buf,
        dropout_seed: Option<u64>,
    ) -> (B::Buf, LayerTape<B>) {
        let (h, resnet) = self.resnet.forward(be, p, xs, x, emb_act, dropout_seed);
        let ys = xs.with_c(self.resnet.c_out());
        let (y, attention) = match &self.attention {
            Some(a) => {
                let (y, t) = a.forward(be, p, ys, h);
                (y, Some(t))
            }
            None => (h, None),
        };
        (
            y,
            LayerTape {
                resnet,
                attention,
                ys,
            },
        )
    }

    fn backward<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        t: &LayerTape<B>,
        emb_act: &B::Buf,
        dy: B::Buf,
        demb_act: &mut B::Buf,
    ) -> B::Buf {
        let dh = match (&self.attention, &t.attention) {
            (Some(a), Some(at)) => a.backward(be, p, at, &dy),
            _ => dy,
        };
        self.resnet
            .backward(be, p, &t.resnet, emb_act, &dh, demb_act)
    }
}

/// Adds the gradient that came back through the most recent unconsumed skip into `g`.
fn add_skip_grad<B: Backend>(be: &mut B, g: &mut B::Buf, dskips: &mut Vec<B::Buf>) {
    let ds = dskips.pop().expect("one gradient per skip");
    be.accumulate(g, &ds);
}

impl UNet {
    /// Builds the network (parameter names are diffusers keys) after validating the config.
    pub fn new(config: UNetConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let cfg = &config;
        let chans = &cfg.block_out_channels;
        let (c0, levels) = (chans[0], chans.len());
        let temb = cfg.time_embed_dim();
        let (groups, eps, drop) = (cfg.norm_num_groups, cfg.norm_eps, cfg.dropout);
        let time_proj =
            TimestepEmbedding::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift).map_err(|e| {
                ConfigError {
                    field: "block_out_channels".into(),
                    msg: format!(
                        "the time embedding has block_out_channels[0] = {c0} channels: {e}"
                    ),
                }
            })?;
        let mut b = Builder::default();
        let mut resnet_count = 0u64;
        let mut resnet = |b: &mut Builder, prefix: String, c_in: usize, c_out: usize| {
            resnet_count += 1;
            ResnetBlock::new(
                b,
                &prefix,
                c_in,
                c_out,
                temb,
                groups,
                eps,
                drop,
                resnet_count - 1,
            )
        };
        let attention = |b: &mut Builder, prefix: String, c: usize| {
            AttentionBlock::new(b, &prefix, c, cfg.attention_heads(c), groups, eps)
        };

        let conv_in = Conv2d::same3x3(&mut b, "conv_in", cfg.in_channels, c0);
        let linear_1 = Linear::new(&mut b, "time_embedding.linear_1", c0, temb);
        let linear_2 = Linear::new(&mut b, "time_embedding.linear_2", temb, temb);
        let class_embedding = cfg.num_class_embeds.map(|n| {
            b.param(
                "class_embedding.weight".into(),
                &[n, temb],
                Init::Normal(1.0),
            )
        });

        let mut down = Vec::with_capacity(levels);
        let mut c_prev = c0;
        for (i, (&c, kind)) in chans.iter().zip(&cfg.down_block_types).enumerate() {
            let mut layers = Vec::new();
            for j in 0..cfg.layers_per_block {
                let c_in = if j == 0 { c_prev } else { c };
                layers.push(Layer {
                    resnet: resnet(&mut b, format!("down_blocks.{i}.resnets.{j}"), c_in, c),
                    attention: kind
                        .has_attention()
                        .then(|| attention(&mut b, format!("down_blocks.{i}.attentions.{j}"), c)),
                });
            }
            let pad = match cfg.downsample_padding {
                0 => Padding::bottom_right(1),
                p => Padding::same(p),
            };
            let downsample = (i + 1 < levels).then(|| {
                Conv2d::new(
                    &mut b,
                    &format!("down_blocks.{i}.downsamplers.0.conv"),
                    c,
                    c,
                    3,
                    2,
                    pad,
                )
            });
            down.push(DownBlock { layers, downsample });
            c_prev = c;
        }

        let c_mid = chans[levels - 1];
        let mid_attention = cfg.add_attention.then(|| {
            AttentionBlock::new(
                &mut b,
                "mid_block.attentions.0",
                c_mid,
                cfg.attention_heads(c_mid),
                cfg.mid_attention_groups(),
                eps,
            )
        });
        let mid = [
            Layer {
                resnet: resnet(&mut b, "mid_block.resnets.0".into(), c_mid, c_mid),
                attention: mid_attention,
            },
            Layer {
                resnet: resnet(&mut b, "mid_block.resnets.1".into(), c_mid, c_mid),
                attention: None,
            },
        ];

        // Up blocks walk the levels from the lowest resolution; layer j of level i reads the
        // skip channels diffusers assigns: the level's own width, except the last layer, which
        // reads the width of the level below (the output of that level's downsampler input).
        let rev: Vec<usize> = chans.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(levels);
        let mut c_prev = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let c = rev[i];
            let c_skip_last = rev[(i + 1).min(levels - 1)];
            let n = cfg.layers_per_block + 1;
            let mut layers = Vec::new();
            for j in 0..n {
                let c_skip = if j == n - 1 { c_skip_last } else { c };
                let c_in = if j == 0 { c_prev } else { c };
                layers.push(Layer {
                    resnet: resnet(
                        &mut b,
                        format!("up_blocks.{i}.resnets.{j}"),
                        c_in + c_skip,
                        c,
                    ),
                    attention: kind
                        .has_attention()
                        .then(|| attention(&mut b, format!("up_blocks.{i}.attentions.{j}"), c)),
                });
            }
            let upsample = (i + 1 < levels).then(|| {
                Conv2d::same3x3(&mut b, &format!("up_blocks.{i}.upsamplers.0.conv"), c, c)
            });
            up.push(UpBlock { layers, upsample });
            c_prev = c;
        }

        let conv_norm_out = GroupNorm::new(&mut b, "conv_norm_out", c0, groups, eps);
        let conv_out = Conv2d::same3x3(&mut b, "conv_out", c0, cfg.out_channels);
        Ok(Self {
            config,
            layout: b.layout,
            inits: b.inits,
            time_proj,
            linear_1,
            linear_2,
            class_embedding,
            conv_in,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
        })
    }

    /// Parameters drawn as PyTorch initialises a fresh `UNet2DModel` (uniform ±1/√fan_in for
    /// conv/linear, N(0, 1) for the class embedding, γ = 1 and β = 0 for norms), from `seed`.
    pub fn init_params<T: Real>(&self, seed: u64) -> ParamArena<T> {
        Builder::init_arena(&self.layout, &self.inits, seed)
    }

    pub fn num_params(&self) -> usize {
        self.layout.num_params()
    }

    /// Shape of one input batch.
    pub fn input_shape(&self, batch: usize) -> Nchw {
        let c = &self.config;
        Nchw::new(batch, c.in_channels, c.sample_size, c.sample_size)
    }

    /// Shape of one output batch.
    pub fn output_shape(&self, batch: usize) -> Nchw {
        let c = &self.config;
        Nchw::new(batch, c.out_channels, c.sample_size, c.sample_size)
    }

    /// Checks a batch's buffers and labels against the model, naming what is wrong; returns
    /// the batch size (the number of images in `x`).
    fn check_inputs(
        &self,
        x_len: usize,
        t_len: usize,
        labels: Option<&[u32]>,
    ) -> Result<usize, ShapeError> {
        let err = |msg: String| Err(ShapeError::new("unet", msg));
        let item = self.input_shape(1);
        if x_len == 0 || !x_len.is_multiple_of(item.len()) {
            return err(format!(
                "input holds {x_len} values, expected a positive multiple of {} (images of shape ({}, {}, {}))",
                item.len(),
                item.c,
                item.h,
                item.w
            ));
        }
        let batch = x_len / item.len();
        if t_len != batch {
            return err(format!("{t_len} timesteps for a batch of {batch} images"));
        }
        match (self.config.num_class_embeds, labels) {
            (None, None) => Ok(batch),
            (None, Some(_)) => err("class labels given to an unconditional model".into()),
            (Some(n), None) => err(format!(
                "this model is class-conditional ({n} classes) and needs class labels"
            )),
            (Some(n), Some(l)) => {
                if l.len() != batch {
                    return err(format!("{} class labels for a batch of {batch}", l.len()));
                }
                match l.iter().find(|&&c| c as usize >= n) {
                    Some(c) => err(format!("class label {c} is out of range (0..{n})")),
                    None => Ok(batch),
                }
            }
        }
    }

    /// Predicts the model output for a batch on the CPU without keeping anything for a
    /// backward. x: (B, C, S, S), t: (B) → (B, C_out, S, S)
    pub fn predict<T: Real>(
        &self,
        p: &ParamArena<T>,
        x: &[T],
        t: &[T],
        labels: Option<&[u32]>,
    ) -> Result<Vec<T>, ShapeError> {
        let (x, t) = (x.to_vec(), t.to_vec());
        let (y, _) = self.forward_on(&mut Cpu::new(), p, &x, &t, labels, None, false)?;
        Ok(y)
    }

    /// Training forward on the CPU: the output and the tape for [`UNet::backward`].
    /// `dropout_seed` should differ per step; `None` disables dropout. The CPU wrappers copy
    /// their slices into the backend's `Vec`s; a caller that owns `Vec`s (the training step)
    /// calls [`UNet::forward_on`] with [`Cpu`] and saves the copy.
    pub fn forward<T: Real>(
        &self,
        p: &ParamArena<T>,
        x: &[T],
        t: &[T],
        labels: Option<&[u32]>,
        dropout_seed: Option<u64>,
    ) -> Result<(Vec<T>, CpuTape<T>), ShapeError> {
        let (x, t) = (x.to_vec(), t.to_vec());
        let (y, tape) = self.forward_on(&mut Cpu::new(), p, &x, &t, labels, dropout_seed, true)?;
        Ok((y, tape.expect("the tape was asked for")))
    }

    /// Backward of [`UNet::forward`] on the CPU: accumulates every parameter gradient into `p`'s
    /// gradient arena and returns d(input), (B, C, S, S). dy: (B, C_out, S, S).
    pub fn backward<T: Real>(&self, p: &mut ParamArena<T>, tape: &CpuTape<T>, dy: &[T]) -> Vec<T> {
        self.backward_on(&mut Cpu::new(), p, tape, &dy.to_vec())
    }

    /// One forward on any backend. x: (B, C, S, S), t: (B) → (B, C_out, S, S), and the tape for
    /// [`UNet::backward_on`] when `keep_tape`. `dropout_seed` should differ per training step;
    /// `None` disables dropout.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_on<B: Backend>(
        &self,
        be: &mut B,
        p: &B::Params,
        x: &B::Buf,
        t: &B::Buf,
        labels: Option<&[u32]>,
        dropout_seed: Option<u64>,
        keep_tape: bool,
    ) -> Result<(B::Buf, Option<UNetTape<B>>), ShapeError> {
        let batch = self.check_inputs(B::len(x), B::len(t), labels)?;
        let xs = self.input_shape(batch);

        // Time (and class) embedding: (B) → (B, E).
        let mut t_sin = be.alloc(batch * self.time_proj.dim); // (B, C0)
        be.timestep_embedding(&self.time_proj, t, &mut t_sin);
        let e1 = self.linear_1.forward(be, p, batch, &t_sin);
        let mut a1 = be.alloc(B::len(&e1));
        be.silu_forward(&e1, &mut a1);
        let mut emb = self.linear_2.forward(be, p, batch, &a1);
        if let (Some(id), Some(labels)) = (self.class_embedding, labels) {
            be.class_embedding_forward(p, id, labels, &mut emb);
        }
        let mut emb_act = be.alloc(B::len(&emb));
        be.silu_forward(&emb, &mut emb_act);

        // Down path; every op's output is also a skip.
        let mut hs = self.conv_in.out_shape(xs);
        let mut h = self.conv_in.forward(be, p, xs, x);
        let mut skips: Vec<(Nchw, B::Buf)> = vec![(hs, be.copy(&h))];
        let mut down_tapes = Vec::with_capacity(self.down.len());
        for block in &self.down {
            let mut layers = Vec::new();
            for layer in &block.layers {
                let (y, lt) = layer.forward(be, p, hs, h, &emb_act, dropout_seed);
                hs = lt.ys;
                h = y;
                skips.push((hs, be.copy(&h)));
                if keep_tape {
                    layers.push(lt);
                }
            }
            let mut down_in = None;
            if let Some(conv) = &block.downsample {
                let ys = conv.out_shape(hs);
                let y = conv.forward(be, p, hs, &h);
                let h_in = std::mem::replace(&mut h, y);
                if keep_tape {
                    down_in = Some((hs, h_in));
                }
                hs = ys;
                skips.push((hs, be.copy(&h)));
            }
            down_tapes.push(DownTape { layers, down_in });
        }

        // Middle.
        let mut mid_tapes = Vec::new();
        for layer in &self.mid {
            let (y, lt) = layer.forward(be, p, hs, h, &emb_act, dropout_seed);
            h = y;
            if keep_tape {
                mid_tapes.push(lt);
            }
        }

        // Up path: each layer reads (h ‖ last skip).
        let mut up_tapes = Vec::with_capacity(self.up.len());
        for block in &self.up {
            let mut layers = Vec::new();
            for layer in &block.layers {
                let (ss, skip) = skips.pop().expect("one skip per up layer");
                let cat = hs.with_c(hs.c + ss.c);
                let mut joined = be.alloc(cat.len());
                be.concat_channels(cat, &h, hs.c, &skip, ss.c, &mut joined);
                let (y, lt) = layer.forward(be, p, cat, joined, &emb_act, dropout_seed);
                hs = lt.ys;
                h = y;
                if keep_tape {
                    layers.push((lt, cat.c - ss.c, ss.c));
                }
            }
            let mut up_in = None;
            if let Some(conv) = &block.upsample {
                let us = Nchw::new(hs.n, hs.c, hs.h * 2, hs.w * 2);
                let mut u = be.alloc(us.len());
                be.upsample_nearest2x_forward(hs, &h, &mut u);
                h = conv.forward(be, p, us, &u);
                if keep_tape {
                    up_in = Some((hs, u));
                }
                hs = conv.out_shape(us);
            }
            up_tapes.push(UpTape { layers, up_in });
        }
        debug_assert!(skips.is_empty(), "every skip is consumed");

        // Output head.
        let (out_a, out_st) = self.conv_norm_out.forward_silu(be, p, hs, &h);
        let y = self.conv_out.forward(be, p, hs, &out_a);

        let tape = if keep_tape {
            Some(UNetTape {
                xs,
                x: be.copy(x),
                labels: labels.map(<[u32]>::to_vec),
                t_sin,
                e1,
                a1,
                emb,
                emb_act,
                down: down_tapes,
                mid: mid_tapes,
                up: up_tapes,
                out_in: h,
                out_st,
                out_a,
            })
        } else {
            None
        };
        Ok((y, tape))
    }

    /// Backward of [`UNet::forward_on`] on the same backend: accumulates every parameter gradient
    /// into `p`'s gradients and returns d(input), (B, C, S, S). dy: (B, C_out, S, S).
    pub fn backward_on<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        tape: &UNetTape<B>,
        dy: &B::Buf,
    ) -> B::Buf {
        self.backward_inner(be, p, tape, dy, true)
            .expect("dx was asked for")
    }

    /// [`UNet::backward_on`] for training: the parameter gradients only. The input is x_t, not a
    /// parameter, so its gradient (conv_in's input gradient, the costliest convolution per
    /// FLOP: three channels) is not computed.
    pub fn backward_params_on<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        tape: &UNetTape<B>,
        dy: &B::Buf,
    ) {
        self.backward_inner(be, p, tape, dy, false);
    }

    fn backward_inner<B: Backend>(
        &self,
        be: &mut B,
        p: &mut B::Params,
        tape: &UNetTape<B>,
        dy: &B::Buf,
        need_dx: bool,
    ) -> Option<B::Buf> {
        let batch = tape.xs.n;
        let out_shape = self.output_shape(batch);
        crate::shape::expect_len(
            "unet_backward",
            "dy",
            B::len(dy),
            out_shape.len(),
            out_shape,
        );
        // Every residual block adds its share of d(silu(emb)) here. (B, E)
        let mut demb_act = be.zeros(B::len(&tape.emb_act));
        let emb_act = &tape.emb_act;

        // Output head.
        let hs = self
            .output_shape(batch)
            .with_c(self.config.block_out_channels[0]);
        let dout_a = self
            .conv_out
            .backward(be, p, hs, &tape.out_a, dy, true)
            .expect("dx was asked for");
        let mut g =
            self.conv_norm_out
                .backward_silu(be, p, hs, &tape.out_in, &tape.out_st, &dout_a);

        // Up path, in reverse; skips come back in the order they were made (0 = conv_in's).
        let mut dskips: Vec<B::Buf> = Vec::new();
        for (block, bt) in self.up.iter().zip(&tape.up).rev() {
            if let (Some(conv), Some((hs, u))) = (&block.upsample, &bt.up_in) {
                let us = Nchw::new(hs.n, hs.c, hs.h * 2, hs.w * 2);
                let du = conv
                    .backward(be, p, us, u, &g, true)
                    .expect("dx was asked for");
                let mut dh = be.alloc(hs.len());
                be.upsample_nearest2x_backward(*hs, &du, &mut dh);
                g = dh;
            }
            for (layer, (lt, c_h, c_skip)) in block.layers.iter().zip(&bt.layers).rev() {
                let dj = layer.backward(be, p, lt, emb_act, g, &mut demb_act);
                let cat = lt.ys.with_c(c_h + c_skip);
                let mut dh = be.alloc(cat.n * c_h * cat.hw());
                let mut ds = be.alloc(cat.n * c_skip * cat.hw());
                be.split_channels(cat, &dj, &mut dh, *c_h, &mut ds, *c_skip);
                dskips.push(ds);
                g = dh;
            }
        }

        // Middle.
        for (layer, lt) in self.mid.iter().zip(&tape.mid).rev() {
            g = layer.backward(be, p, lt, emb_act, g, &mut demb_act);
        }

        // Down path: the gradient of each skip-producing op's output is the running gradient
        // plus what the up path sent back through that skip.
        // dskips[k] came back through skip k (0 = conv_in's output): the up path consumed the
        // skips last-made-first and its backward ran in reverse, so the down path, walking
        // backwards too, always wants the last one.
        for (block, bt) in self.down.iter().zip(&tape.down).rev() {
            if let (Some(conv), Some((hs, h_in))) = (&block.downsample, &bt.down_in) {
                add_skip_grad(be, &mut g, &mut dskips);
                g = conv
                    .backward(be, p, *hs, h_in, &g, true)
                    .expect("dx was asked for");
            }
            for (layer, lt) in block.layers.iter().zip(&bt.layers).rev() {
                add_skip_grad(be, &mut g, &mut dskips);
                g = layer.backward(be, p, lt, emb_act, g, &mut demb_act);
            }
        }
        add_skip_grad(be, &mut g, &mut dskips);
        debug_assert!(dskips.is_empty(), "every skip gradient is consumed");
        let dx = self.conv_in.backward(be, p, tape.xs, &tape.x, &g, need_dx);

        // Time (and class) embedding.
        let mut demb = be.alloc(B::len(&tape.emb));
        be.silu_backward(&tape.emb, &demb_act, &mut demb);
        if let (Some(id), Some(labels)) = (self.class_embedding, &tape.labels) {
            be.class_embedding_backward(p, id, labels, &demb);
        }
        let da1 = self
            .linear_2
            .backward(be, p, batch, &tape.a1, &demb, true)
            .expect("dx was asked for");
        let mut de1 = be.alloc(B::len(&da1));
        be.silu_backward(&tape.e1, &da1, &mut de1);
        self.linear_1
            .backward(be, p, batch, &tape.t_sin, &de1, false);
        dx
    }

    /// Runs one step of `batch` images on the [`Planner`]: the forward, and in training the
    /// backward too. What it adds up (input, timesteps and, in training, the output gradient
    /// included) is what a device backend must allocate before the first step. Class-conditional
    /// models get labels, as their forward requires.
    pub fn plan_step<T: Real>(
        &self,
        batch: usize,
        training: bool,
    ) -> Result<Planner<T>, ShapeError> {
        self.plan_step_stored(batch, training, std::mem::size_of::<T>())
    }

    /// [`Self::plan_step`] for a device storing activations in `storage_bytes`-byte elements
    /// (the GPU's bf16 and fp16 take 2; statistics stay `T`).
    pub fn plan_step_stored<T: Real>(
        &self,
        batch: usize,
        training: bool,
        storage_bytes: usize,
    ) -> Result<Planner<T>, ShapeError> {
        let mut plan = Planner::with_storage(storage_bytes);
        let x = plan.alloc(self.input_shape(batch).len()); // (B, C, S, S)
        let t = plan.alloc(batch); // (B)
        let labels = self.config.num_class_embeds.map(|_| vec![0u32; batch]);
        let seed = training.then_some(0);
        let (y, tape) =
            self.forward_on(&mut plan, &(), &x, &t, labels.as_deref(), seed, training)?;
        if let Some(tape) = tape {
            let dy = plan.alloc(y.0); // (B, C_out, S, S)
            self.backward_params_on(&mut plan, &mut (), &tape, &dy);
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ARENA_ALIGN;
    use crate::nn::UNetConfig;

    #[test]
    fn planning_a_step_adds_up_buffers_and_lists_the_ops() {
        let net = UNet::new(UNetConfig::preset("tiny").unwrap()).unwrap();
        let infer: Planner<f32> = net.plan_step(4, false).unwrap();
        let train: Planner<f32> = net.plan_step(4, true).unwrap();

        assert!(infer.buffers > 0 && infer.arena_bytes > 0);
        assert_eq!(infer.arena_bytes % ARENA_ALIGN, 0);
        // The tape, the skip copies and every gradient come on top of the forward.
        assert!(train.arena_bytes > infer.arena_bytes);
        assert!(train.buffers > infer.buffers);

        // The first and the last convolution are listed, each once; the backward runs the
        // forward's geometries and adds none.
        let xs = net.input_shape(4);
        let (first, last) = (
            net.conv_in.geometry(xs),
            net.conv_out
                .geometry(xs.with_c(net.config.block_out_channels[0])),
        );
        for g in [first, last] {
            assert_eq!(infer.convs.iter().filter(|&&c| c == g).count(), 1);
        }
        assert_eq!(train.convs, infer.convs);
        // tiny: attention at 4×4 (down, up and middle, all 64 channels): one geometry.
        assert_eq!(infer.attentions.len(), 1);
        assert_eq!(infer.max_labels, 0);
        assert!(net.plan_step::<f32>(0, false).is_err());
    }

    #[test]
    fn planning_a_class_conditional_step_reads_one_label_per_image() {
        let mut cfg = UNetConfig::preset("tiny").unwrap();
        cfg.num_class_embeds = Some(10);
        let net = UNet::new(cfg).unwrap();
        let plan: Planner<f64> = net.plan_step(3, true).unwrap();
        assert_eq!(plan.max_labels, 3);
        // f64 buffers take twice the bytes of f32 ones, up to the alignment of each.
        let f32_plan: Planner<f32> = net.plan_step(3, true).unwrap();
        assert_eq!(plan.buffers, f32_plan.buffers);
        assert!(plan.arena_bytes > f32_plan.arena_bytes);
    }
}
