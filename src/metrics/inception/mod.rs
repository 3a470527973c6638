//! pytorch-fid's FID Inception (the TensorFlow `inception-2015-12-05` graph that FID is defined
//! with, as pytorch-fid ports it) on ddpm's CPU ops, up to the 2048-d pool3 features.
//!
//! The network, as pytorch-fid's `InceptionV3(output_blocks=[3])` computes it:
//! - input: images in [0, 1], resized bilinearly to 299×299 (`align_corners=False`, see
//!   [`resize`]), then scaled to [-1, 1] (2x − 1);
//! - stem: `Conv2d_1a_3x3` (stride 2), `Conv2d_2a_3x3`, `Conv2d_2b_3x3` (pad 1), 3×3/2 max pool,
//!   `Conv2d_3b_1x1`, `Conv2d_4a_3x3`, 3×3/2 max pool → 192×35×35;
//! - `Mixed_5b/5c/5d`: FIDInceptionA (1×1; 1×1→5×5; 1×1→3×3→3×3; 3×3 average pool that does
//!   not count the padding → 1×1);
//! - `Mixed_6a`: torchvision's InceptionB (3×3/2; 1×1→3×3→3×3/2; 3×3/2 max pool) → 768×17×17;
//! - `Mixed_6b…6e`: FIDInceptionC (1×1; 1×1→1×7→7×1; 1×1→7×1→1×7→7×1→1×7; average pool → 1×1);
//! - `Mixed_7a`: torchvision's InceptionD (1×1→3×3/2; 1×1→1×7→7×1→3×3/2; max pool) → 1280×8×8;
//! - `Mixed_7b`: FIDInceptionE_1 (1×1; 1×1→{1×3, 3×1}; 1×1→3×3→{1×3, 3×1}; average pool → 1×1),
//!   `Mixed_7c`: FIDInceptionE_2, the same with a 3×3 *max* pool (stride 1, pad 1) instead;
//! - global average pool → 2048 (pool3).
//!
//! Every convolution is a `BasicConv2d` (conv, batch norm with ε = 0.001, ReLU), folded at load
//! time ([`layer`]). The input is processed in batches; each op is parallel inside.

pub mod layer;
pub mod pool;
pub mod resize;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, ensure, Result};

use crate::ops::concat::concat_channels;
use crate::profile::{self, Op};
use crate::shape::Nchw;
use layer::{ConvBn, ConvSpec};
use pool::{global_avg_pool, pool2d, PoolKind, PoolShape};
use weights::WeightFile;

/// Side of the square the network sees.
pub const INPUT_SIZE: usize = 299;
/// Length of a pool3 feature vector.
pub const FEATURES: usize = 2048;

/// An activation and its shape.
struct Act {
    s: Nchw,
    x: Vec<f32>,
}

fn conv(layer: &ConvBn, a: &Act) -> Result<Act> {
    let (s, x) = layer.forward(a.s, &a.x)?;
    Ok(Act { s, x })
}

/// A chain of layers, the first reading `a`.
fn chain(layers: &[ConvBn], a: &Act) -> Result<Act> {
    let (first, rest) = layers.split_first().expect("a chain has a layer");
    let mut out = conv(first, a)?;
    for l in rest {
        out = conv(l, &out)?;
    }
    Ok(out)
}

fn pool(a: &Act, kind: PoolKind, kernel: usize, stride: usize, pad: usize) -> Result<Act> {
    let s = PoolShape::new(a.s, kernel, stride, pad)?;
    let mut y = vec![0.0f32; s.output().len()];
    profile::time(Op::Elementwise, 0, || pool2d(&s, kind, &a.x, &mut y));
    Ok(Act {
        s: s.output(),
        x: y,
    })
}

/// Concatenation along channels; all parts share N, H, W.
fn concat(parts: &[&Act]) -> Act {
    let c = parts.iter().map(|p| p.s.c).sum();
    let s = parts[0].s.with_c(c);
    let mut y = vec![0.0f32; s.len()];
    let views: Vec<(&[f32], usize)> = parts.iter().map(|p| (&p.x[..], p.s.c)).collect();
    profile::time(Op::Elementwise, 0, || concat_channels(s, &views, &mut y));
    Act { s, x: y }
}

/// 1×1 convolution geometry.
const fn c1(c_in: usize, c_out: usize) -> ConvSpec {
    ConvSpec::new(c_in, c_out, (1, 1), (0, 0))
}

/// 3×3 convolution geometry, padded by `pad`.
const fn c3(c_in: usize, c_out: usize, pad: usize) -> ConvSpec {
    ConvSpec::new(c_in, c_out, (3, 3), (pad, pad))
}

/// 1×k (`wide`) or k×1 convolution geometry, padded to keep the size.
const fn line(c_in: usize, c_out: usize, k: usize, wide: bool) -> ConvSpec {
    if wide {
        ConvSpec::new(c_in, c_out, (1, k), (0, k / 2))
    } else {
        ConvSpec::new(c_in, c_out, (k, 1), (k / 2, 0))
    }
}

/// The layers of the blocks by name, each taken once as the blocks are assembled.
struct Layers(HashMap<String, ConvBn>);

impl Layers {
    fn take(&mut self, name: &str) -> Result<ConvBn> {
        self.0
            .remove(name)
            .ok_or_else(|| anyhow!("FidInception: layer {name} is not in layer_specs()"))
    }

    /// `<block>.<name>` (just `<name>` when `block` is empty) for each name, in order.
    fn chain(&mut self, block: &str, names: &[&str]) -> Result<Vec<ConvBn>> {
        names
            .iter()
            .map(|n| match block {
                "" => self.take(n),
                _ => self.take(&format!("{block}.{n}")),
            })
            .collect()
    }
}

/// The stem's layers.
const STEM: [(&str, ConvSpec); 5] = [
    ("Conv2d_1a_3x3", c3(3, 32, 0).stride2()),
    ("Conv2d_2a_3x3", c3(32, 32, 0)),
    ("Conv2d_2b_3x3", c3(32, 64, 1)),
    ("Conv2d_3b_1x1", c1(64, 80)),
    ("Conv2d_4a_3x3", c3(80, 192, 0)),
];
/// FIDInceptionA blocks: name, input channels, pool features.
const BLOCKS_A: [(&str, usize, usize); 3] = [
    ("Mixed_5b", 192, 32),
    ("Mixed_5c", 256, 64),
    ("Mixed_5d", 288, 64),
];
/// FIDInceptionC blocks: name, input channels, channels of the 7-wide branches.
const BLOCKS_C: [(&str, usize, usize); 4] = [
    ("Mixed_6b", 768, 128),
    ("Mixed_6c", 768, 160),
    ("Mixed_6d", 768, 160),
    ("Mixed_6e", 768, 192),
];
/// FIDInceptionE blocks: name, input channels, pooling of the pool branch.
const BLOCKS_E: [(&str, usize, PoolKind); 2] = [
    ("Mixed_7b", 1280, PoolKind::AvgValid),
    ("Mixed_7c", 2048, PoolKind::Max),
];

/// Every layer of the network up to pool3 with its geometry, in network order: 94
/// `BasicConv2d`s, named as in pytorch-fid's state dict (without `.conv`/`.bn`). The weights
/// file holds `<name>.conv.weight` and `<name>.bn.{weight,bias,running_mean,running_var}` for
/// each.
pub fn layer_specs() -> Vec<(String, ConvSpec)> {
    let mut v: Vec<(String, ConvSpec)> = STEM.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let mut block = |name: &str, layers: &[(&str, ConvSpec)]| {
        v.extend(layers.iter().map(|(n, s)| (format!("{name}.{n}"), *s)));
    };
    for (name, c_in, pool_features) in BLOCKS_A {
        block(
            name,
            &[
                ("branch1x1", c1(c_in, 64)),
                ("branch5x5_1", c1(c_in, 48)),
                ("branch5x5_2", ConvSpec::new(48, 64, (5, 5), (2, 2))),
                ("branch3x3dbl_1", c1(c_in, 64)),
                ("branch3x3dbl_2", c3(64, 96, 1)),
                ("branch3x3dbl_3", c3(96, 96, 1)),
                ("branch_pool", c1(c_in, pool_features)),
            ],
        );
    }
    block(
        "Mixed_6a",
        &[
            ("branch3x3", c3(288, 384, 0).stride2()),
            ("branch3x3dbl_1", c1(288, 64)),
            ("branch3x3dbl_2", c3(64, 96, 1)),
            ("branch3x3dbl_3", c3(96, 96, 0).stride2()),
        ],
    );
    for (name, c_in, c7) in BLOCKS_C {
        block(
            name,
            &[
                ("branch1x1", c1(c_in, 192)),
                ("branch7x7_1", c1(c_in, c7)),
                ("branch7x7_2", line(c7, c7, 7, true)),
                ("branch7x7_3", line(c7, 192, 7, false)),
                ("branch7x7dbl_1", c1(c_in, c7)),
                ("branch7x7dbl_2", line(c7, c7, 7, false)),
                ("branch7x7dbl_3", line(c7, c7, 7, true)),
                ("branch7x7dbl_4", line(c7, c7, 7, false)),
                ("branch7x7dbl_5", line(c7, 192, 7, true)),
                ("branch_pool", c1(c_in, 192)),
            ],
        );
    }
    block(
        "Mixed_7a",
        &[
            ("branch3x3_1", c1(768, 192)),
            ("branch3x3_2", c3(192, 320, 0).stride2()),
            ("branch7x7x3_1", c1(768, 192)),
            ("branch7x7x3_2", line(192, 192, 7, true)),
            ("branch7x7x3_3", line(192, 192, 7, false)),
            ("branch7x7x3_4", c3(192, 192, 0).stride2()),
        ],
    );
    for (name, c_in, _) in BLOCKS_E {
        block(
            name,
            &[
                ("branch1x1", c1(c_in, 320)),
                ("branch3x3_1", c1(c_in, 384)),
                ("branch3x3_2a", line(384, 384, 3, true)),
                ("branch3x3_2b", line(384, 384, 3, false)),
                ("branch3x3dbl_1", c1(c_in, 448)),
                ("branch3x3dbl_2", c3(448, 384, 1)),
                ("branch3x3dbl_3a", line(384, 384, 3, true)),
                ("branch3x3dbl_3b", line(384, 384, 3, false)),
                ("branch_pool", c1(c_in, 192)),
            ],
        );
    }
    v
}

/// FIDInceptionA.
struct BlockA {
    b1: Vec<ConvBn>,
    b5: Vec<ConvBn>,
    b3: Vec<ConvBn>,
    pool: Vec<ConvBn>,
}

impl BlockA {
    fn take(l: &mut Layers, name: &str) -> Result<Self> {
        Ok(Self {
            b1: l.chain(name, &["branch1x1"])?,
            b5: l.chain(name, &["branch5x5_1", "branch5x5_2"])?,
            b3: l.chain(
                name,
                &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
            )?,
            pool: l.chain(name, &["branch_pool"])?,
        })
    }

    fn forward(&self, a: &Act) -> Result<Act> {
        let b1 = chain(&self.b1, a)?;
        let b5 = chain(&self.b5, a)?;
        let b3 = chain(&self.b3, a)?;
        let bp = chain(&self.pool, &pool(a, PoolKind::AvgValid, 3, 1, 1)?)?;
        Ok(concat(&[&b1, &b5, &b3, &bp]))
    }
}

/// torchvision's InceptionB (`Mixed_6a`): the 35 → 17 reduction.
struct BlockB {
    b3: Vec<ConvBn>,
    dbl: Vec<ConvBn>,
}

impl BlockB {
    fn take(l: &mut Layers, name: &str) -> Result<Self> {
        Ok(Self {
            b3: l.chain(name, &["branch3x3"])?,
            dbl: l.chain(
                name,
                &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
            )?,
        })
    }

    fn forward(&self, a: &Act) -> Result<Act> {
        let b3 = chain(&self.b3, a)?;
        let dbl = chain(&self.dbl, a)?;
        let bp = pool(a, PoolKind::Max, 3, 2, 0)?;
        Ok(concat(&[&b3, &dbl, &bp]))
    }
}

/// FIDInceptionC.
struct BlockC {
    b1: Vec<ConvBn>,
    b7: Vec<ConvBn>,
    dbl: Vec<ConvBn>,
    pool: Vec<ConvBn>,
}

impl BlockC {
    fn take(l: &mut Layers, name: &str) -> Result<Self> {
        Ok(Self {
            b1: l.chain(name, &["branch1x1"])?,
            b7: l.chain(name, &["branch7x7_1", "branch7x7_2", "branch7x7_3"])?,
            dbl: l.chain(
                name,
                &[
                    "branch7x7dbl_1",
                    "branch7x7dbl_2",
                    "branch7x7dbl_3",
                    "branch7x7dbl_4",
                    "branch7x7dbl_5",
                ],
            )?,
            pool: l.chain(name, &["branch_pool"])?,
        })
    }

    fn forward(&self, a: &Act) -> Result<Act> {
        let b1 = chain(&self.b1, a)?;
        let b7 = chain(&self.b7, a)?;
        let dbl = chain(&self.dbl, a)?;
        let bp = chain(&self.pool, &pool(a, PoolKind::AvgValid, 3, 1, 1)?)?;
        Ok(concat(&[&b1, &b7, &dbl, &bp]))
    }
}

/// torchvision's InceptionD (`Mixed_7a`): the 17 → 8 reduction.
struct BlockD {
    b3: Vec<ConvBn>,
    b7: Vec<ConvBn>,
}

impl BlockD {
    fn take(l: &mut Layers, name: &str) -> Result<Self> {
        Ok(Self {
            b3: l.chain(name, &["branch3x3_1", "branch3x3_2"])?,
            b7: l.chain(
                name,
                &[
                    "branch7x7x3_1",
                    "branch7x7x3_2",
                    "branch7x7x3_3",
                    "branch7x7x3_4",
                ],
            )?,
        })
    }

    fn forward(&self, a: &Act) -> Result<Act> {
        let b3 = chain(&self.b3, a)?;
        let b7 = chain(&self.b7, a)?;
        let bp = pool(a, PoolKind::Max, 3, 2, 0)?;
        Ok(concat(&[&b3, &b7, &bp]))
    }
}

/// FIDInceptionE_1 (`pool` = average, padding not counted) or FIDInceptionE_2 (`pool` = max).
struct BlockE {
    b1: ConvBn,
    b3_1: ConvBn,
    b3_2: [ConvBn; 2],
    dbl: Vec<ConvBn>,
    dbl_3: [ConvBn; 2],
    pool_conv: ConvBn,
    pool: PoolKind,
}

impl BlockE {
    fn take(l: &mut Layers, name: &str, pool: PoolKind) -> Result<Self> {
        let mut one = |layer: &str| l.take(&format!("{name}.{layer}"));
        Ok(Self {
            b1: one("branch1x1")?,
            b3_1: one("branch3x3_1")?,
            b3_2: [one("branch3x3_2a")?, one("branch3x3_2b")?],
            dbl: vec![one("branch3x3dbl_1")?, one("branch3x3dbl_2")?],
            dbl_3: [one("branch3x3dbl_3a")?, one("branch3x3dbl_3b")?],
            pool_conv: one("branch_pool")?,
            pool,
        })
    }

    fn forward(&self, a: &Act) -> Result<Act> {
        let b1 = conv(&self.b1, a)?;
        let t = conv(&self.b3_1, a)?;
        let (b3a, b3b) = (conv(&self.b3_2[0], &t)?, conv(&self.b3_2[1], &t)?);
        let t = chain(&self.dbl, a)?;
        let (da, db) = (conv(&self.dbl_3[0], &t)?, conv(&self.dbl_3[1], &t)?);
        let bp = conv(&self.pool_conv, &pool(a, self.pool, 3, 1, 1)?)?;
        Ok(concat(&[&b1, &b3a, &b3b, &da, &db, &bp]))
    }
}

/// The FID Inception up to pool3, weights loaded and batch norms folded.
pub struct FidInception {
    stem_a: Vec<ConvBn>,
    stem_b: Vec<ConvBn>,
    mixed_5: Vec<BlockA>,
    mixed_6a: BlockB,
    mixed_6: Vec<BlockC>,
    mixed_7a: BlockD,
    mixed_7: Vec<BlockE>,
}

impl FidInception {
    /// Reads and checks every tensor of the weights file at `path` (see [`weights`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_weights(&WeightFile::open(path)?)
    }

    /// Builds the network from checked tensors ([`layer_specs`] says which).
    pub fn from_weights(w: &WeightFile) -> Result<Self> {
        let mut l = Layers(
            layer_specs()
                .into_iter()
                .map(|(name, spec)| Ok((name.clone(), w.conv_bn(&name, spec)?)))
                .collect::<Result<_>>()?,
        );
        let net = Self {
            stem_a: l.chain("", &["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"])?,
            stem_b: l.chain("", &["Conv2d_3b_1x1", "Conv2d_4a_3x3"])?,
            mixed_5: BLOCKS_A
                .iter()
                .map(|b| BlockA::take(&mut l, b.0))
                .collect::<Result<_>>()?,
            mixed_6a: BlockB::take(&mut l, "Mixed_6a")?,
            mixed_6: BLOCKS_C
                .iter()
                .map(|b| BlockC::take(&mut l, b.0))
                .collect::<Result<_>>()?,
            mixed_7a: BlockD::take(&mut l, "Mixed_7a")?,
            mixed_7: BLOCKS_E
                .iter()
                .map(|b| BlockE::take(&mut l, b.0, b.2))
                .collect::<Result<_>>()?,
        };
        debug_assert!(l.0.is_empty(), "unused layers: {:?}", l.0.keys());
        Ok(net)
    }

    /// Pool3 features of `n` images already resized and scaled: x (n, 3, 299, 299) in [-1, 1]
    /// → (n, 2048) row-major.
    pub fn features(&self, n: usize, x: Vec<f32>) -> Result<Vec<f32>> {
        let s = Nchw::new(n, 3, INPUT_SIZE, INPUT_SIZE);
        ensure!(
            x.len() == s.len(),
            "FidInception::features: {} values for {n} images of 3×{INPUT_SIZE}×{INPUT_SIZE}",
            x.len()
        );
        let mut a = Act { s, x };
        a = chain(&self.stem_a, &a)?;
        a = pool(&a, PoolKind::Max, 3, 2, 0)?;
        a = chain(&self.stem_b, &a)?;
        a = pool(&a, PoolKind::Max, 3, 2, 0)?;
        for b in &self.mixed_5 {
            a = b.forward(&a)?;
        }
        a = self.mixed_6a.forward(&a)?;
        for b in &self.mixed_6 {
            a = b.forward(&a)?;
        }
        a = self.mixed_7a.forward(&a)?;
        for b in &self.mixed_7 {
            a = b.forward(&a)?;
        }
        ensure!(
            (a.s.c, a.s.h, a.s.w) == (FEATURES, 8, 8),
            "FidInception: the last block gave {}, expected (N, {FEATURES}, 8, 8)",
            a.s
        );
        let mut y = vec![0.0f32; n * FEATURES];
        global_avg_pool(a.s, &a.x, &mut y);
        Ok(y)
    }
}

/// Writes one image, (3, h, w) values in [0, 1], into a network input slot (3, 299, 299):
/// bilinear resize, then 2x − 1, as pytorch-fid does.
pub fn prepare_image(image: &[f32], (h, w): (usize, usize), slot: &mut [f32]) {
    resize::resize_bilinear(3, (h, w), image, (INPUT_SIZE, INPUT_SIZE), slot);
    slot.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
}
