//! The UNet's configuration, with diffusers `UNet2DModel` field names and defaults, so a
//! diffusers `config.json` reads as is and ours can be written back out.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A down block: residual blocks, optionally each followed by an attention block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    DownBlock2D,
    AttnDownBlock2D,
}

/// An up block: residual blocks over (current ‖ skip), optionally each followed by attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    UpBlock2D,
    AttnUpBlock2D,
}

impl DownBlockType {
    pub fn has_attention(self) -> bool {
        self == Self::AttnDownBlock2D
    }
}

impl UpBlockType {
    pub fn has_attention(self) -> bool {
        self == Self::AttnUpBlock2D
    }
}

/// `UNet2DModel` settings. Fields diffusers has but this engine implements only one value of
/// (`act_fn`, `time_embedding_type`, …) are kept so a config round-trips, and are validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Height = width of the images (diffusers also writes `[h, w]`; only h = w is supported).
    #[serde(deserialize_with = "square_size")]
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels of each resolution level, from the highest resolution down.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per down block (up blocks have one more).
    pub layers_per_block: usize,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub norm_num_groups: usize,
    /// Groups of the mid block's attention norm; `null` means `norm_num_groups`.
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    /// Dropout inside the residual blocks, between the second norm/SiLU and the second conv.
    pub dropout: f64,
    /// Channels per attention head; `null` means one head over all channels.
    pub attention_head_dim: Option<usize>,
    /// Sinusoid order [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Shift of the frequency denominator: `half_dim - freq_shift` (the DDPM code used 1).
    pub freq_shift: f64,
    /// Width of the time embedding MLP; `null` means 4 × `block_out_channels[0]`.
    pub time_embedding_dim: Option<usize>,
    /// Number of classes for a class-conditional model (`null`: unconditional).
    pub num_class_embeds: Option<usize>,
    /// How class labels are embedded; only `null` (a lookup table) is supported.
    pub class_embed_type: Option<String>,
    /// Only `UNetMidBlock2D` is supported (`null` would mean no mid block).
    pub mid_block_type: Option<String>,
    /// diffusers uses it only for learned time embeddings; kept so a config round-trips.
    pub num_train_timesteps: Option<usize>,
    /// Padding of the stride-2 downsampling conv; 0 pads bottom/right by one, as diffusers does.
    pub downsample_padding: usize,
    pub act_fn: String,
    pub time_embedding_type: String,
    pub center_input_sample: bool,
    pub resnet_time_scale_shift: String,
    pub mid_block_scale_factor: f64,
    pub add_attention: bool,
    pub downsample_type: String,
    pub upsample_type: String,
    /// Keys such as `_class_name` and `_diffusers_version`, and anything unknown (rejected by
    /// [`UNetConfig::validate`] unless it starts with `_`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for UNetConfig {
    /// diffusers' own defaults for `UNet2DModel`.
    fn default() -> Self {
        Self {
            sample_size: 32,
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            down_block_types: vec![
                DownBlockType::DownBlock2D,
                DownBlockType::AttnDownBlock2D,
                DownBlockType::AttnDownBlock2D,
                DownBlockType::AttnDownBlock2D,
            ],
            up_block_types: vec![
                UpBlockType::AttnUpBlock2D,
                UpBlockType::AttnUpBlock2D,
                UpBlockType::AttnUpBlock2D,
                UpBlockType::UpBlock2D,
            ],
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            dropout: 0.0,
            attention_head_dim: Some(8),
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embedding_dim: None,
            num_class_embeds: None,
            class_embed_type: None,
            mid_block_type: Some(MID_BLOCK.into()),
            num_train_timesteps: None,
            downsample_padding: 1,
            act_fn: "silu".into(),
            time_embedding_type: "positional".into(),
            center_input_sample: false,
            resnet_time_scale_shift: "default".into(),
            mid_block_scale_factor: 1.0,
            add_attention: true,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            extra: BTreeMap::new(),
        }
    }
}

/// Resolution levels a UNet may have (2^15 total downsampling is far past any image).
const MAX_LEVELS: usize = 16;

// Upper bounds on sizes, so that a config read from a file (a checkpoint, a diffusers
// `config.json`) with an absurd size is refused by [`UNetConfig::validate`], naming the field and
// the limit, instead of overflowing the parameter arithmetic or asking for terabytes. They are
// far beyond any real model: published pixel-space UNet2DModels have at most a few hundred
// channels per level, 256×256 samples, 2–3 residual blocks per level and ~10⁸ parameters.

/// Largest channel count of a level (`block_out_channels`), of the image (`in_channels`,
/// `out_channels`), and largest `norm_num_groups`, `attn_norm_num_groups` and
/// `attention_head_dim`.
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest `sample_size`.
pub const MAX_SAMPLE_SIZE: usize = 8192;
/// Largest `layers_per_block`.
pub const MAX_LAYERS_PER_BLOCK: usize = 64;
/// Largest time embedding width (`time_embedding_dim`, or 4 × `block_out_channels[0]`).
pub const MAX_TIME_EMBED_DIM: usize = 4 * MAX_CHANNELS;
/// Largest `num_class_embeds`.
pub const MAX_CLASSES: usize = 1 << 20;
/// Most trainable parameters a config may describe (2³², 16 GiB of f32 weights).
pub const MAX_PARAMS: u128 = 1 << 32;

/// The one mid block type there is.
const MID_BLOCK: &str = "UNetMidBlock2D";

/// `sample_size` as an integer, or as diffusers' `[height, width]` when the two are equal.
fn square_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(usize),
        Pair(Vec<usize>),
    }
    match Option::<Size>::deserialize(d)? {
        Some(Size::One(s)) => Ok(s),
        Some(Size::Pair(v)) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
        Some(Size::Pair(v)) => Err(D::Error::custom(format!(
            "sample_size {v:?}: only square images ([s, s] or a single number) are supported"
        ))),
        None => Err(D::Error::custom(
            "sample_size is null: the model config must give the image size",
        )),
    }
}

/// A configuration this engine cannot build, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model config: `{field}`: {msg}")]
pub struct ConfigError {
    pub field: String,
    pub msg: String,
}

fn err(field: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        msg: msg.into(),
    }
}

/// The built-in model presets.
pub const PRESETS: [&str; 4] = ["tiny", "ddpm-cifar10", "cifar10-small", "ref-32x32"];

impl UNetConfig {
    /// A built-in preset by name:
    /// - `tiny`: 16×16, channels 32/64/64, one residual block per level, attention at 4×4 and in
    ///   the middle; trains on two CPU cores in minutes.
    /// - `ddpm-cifar10`: Ho et al.'s CIFAR-10 model (ch 128, mult 1,2,2,2, 2 residual blocks,
    ///   attention at 16×16, dropout 0.1; 35.7M parameters), as `google/ddpm-cifar10-32`.
    /// - `cifar10-small`: `ddpm-cifar10` at half the width (ch 64, mult 1,2,2,2): the small
    ///   configuration of the speed comparison with PyTorch.
    /// - `ref-32x32`: the 32×32, 32-base-channel model of the reference write-ups (mult
    ///   1,2,4,8, attention at 16×16, dropout 0.1).
    pub fn preset(name: &str) -> Option<Self> {
        use DownBlockType::*;
        use UpBlockType::*;
        let ddpm_style = Self {
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            attention_head_dim: None,
            downsample_padding: 0,
            norm_eps: 1e-6,
            ..Self::default()
        };
        match name {
            "tiny" => Some(Self {
                sample_size: 16,
                block_out_channels: vec![32, 64, 64],
                layers_per_block: 1,
                down_block_types: vec![DownBlock2D, DownBlock2D, AttnDownBlock2D],
                up_block_types: vec![AttnUpBlock2D, UpBlock2D, UpBlock2D],
                norm_num_groups: 8,
                ..ddpm_style
            }),
            "ddpm-cifar10" => Some(Self {
                sample_size: 32,
                block_out_channels: vec![128, 256, 256, 256],
                layers_per_block: 2,
                down_block_types: vec![DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D],
                up_block_types: vec![UpBlock2D, UpBlock2D, AttnUpBlock2D, UpBlock2D],
                norm_num_groups: 32,
                dropout: 0.1,
                ..ddpm_style
            }),
            "cifar10-small" => Some(Self {
                block_out_channels: vec![64, 128, 128, 128],
                ..Self::preset("ddpm-cifar10")?
            }),
            "ref-32x32" => Some(Self {
                sample_size: 32,
                block_out_channels: vec![32, 64, 128, 256],
                layers_per_block: 2,
                down_block_types: vec![DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D],
                up_block_types: vec![UpBlock2D, UpBlock2D, AttnUpBlock2D, UpBlock2D],
                norm_num_groups: 32,
                dropout: 0.1,
                ..ddpm_style
            }),
            _ => None,
        }
    }

    /// Width of the time embedding MLP (diffusers: 4 × the first block's channels; saturating,
    /// so an absurd channel count reaches [`Self::validate`]'s limit instead of overflowing).
    pub fn time_embed_dim(&self) -> usize {
        let c0 = self.block_out_channels.first().copied().unwrap_or(0);
        self.time_embedding_dim.unwrap_or(c0.saturating_mul(4))
    }

    /// Groups of the mid block's attention norm (diffusers' `attn_norm_num_groups`).
    pub fn mid_attention_groups(&self) -> usize {
        self.attn_norm_num_groups.unwrap_or(self.norm_num_groups)
    }

    /// Heads of an attention block over `channels` channels.
    pub fn attention_heads(&self, channels: usize) -> usize {
        match self.attention_head_dim {
            Some(d) => channels / d,
            None => 1,
        }
    }

    /// Checks everything the network builder relies on, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(err("block_out_channels", "needs at least one level"));
        }
        if self.down_block_types.len() != levels {
            return Err(err(
                "down_block_types",
                format!(
                    "has {} entries, expected one per block_out_channels entry ({levels})",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != levels {
            return Err(err(
                "up_block_types",
                format!(
                    "has {} entries, expected one per block_out_channels entry ({levels})",
                    self.up_block_types.len()
                ),
            ));
        }
        for (field, v) in [
            ("sample_size", self.sample_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 {
                return Err(err(field, "must be positive"));
            }
        }
        if levels > MAX_LEVELS {
            return Err(err(
                "block_out_channels",
                format!("{levels} levels; at most {MAX_LEVELS} are supported"),
            ));
        }
        let at_most = |field: &str, v: usize, max: usize| {
            if v > max {
                Err(err(field, format!("{v} is above the limit of {max}")))
            } else {
                Ok(())
            }
        };
        at_most("sample_size", self.sample_size, MAX_SAMPLE_SIZE)?;
        at_most("in_channels", self.in_channels, MAX_CHANNELS)?;
        at_most("out_channels", self.out_channels, MAX_CHANNELS)?;
        for &c in &self.block_out_channels {
            at_most("block_out_channels", c, MAX_CHANNELS)?;
        }
        at_most(
            "layers_per_block",
            self.layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        at_most("norm_num_groups", self.norm_num_groups, MAX_CHANNELS)?;
        for (field, v) in [
            ("attn_norm_num_groups", self.attn_norm_num_groups),
            ("attention_head_dim", self.attention_head_dim),
            ("num_class_embeds", self.num_class_embeds),
        ] {
            let max = if field == "num_class_embeds" {
                MAX_CLASSES
            } else {
                MAX_CHANNELS
            };
            at_most(field, v.unwrap_or(0), max)?;
        }
        at_most(
            "time_embedding_dim",
            self.time_embed_dim(),
            MAX_TIME_EMBED_DIM,
        )?;
        let down_factor = 1usize << (levels - 1);
        if !self.sample_size.is_multiple_of(down_factor) {
            return Err(err(
                "sample_size",
                format!(
                    "{} is not divisible by {down_factor}, the total downsampling of {levels} levels",
                    self.sample_size
                ),
            ));
        }
        for &c in &self.block_out_channels {
            if c == 0 || c % self.norm_num_groups != 0 {
                return Err(err(
                    "block_out_channels",
                    format!(
                        "{c} channels cannot be split into norm_num_groups = {} groups",
                        self.norm_num_groups
                    ),
                ));
            }
            if let Some(d) = self.attention_head_dim {
                if d == 0 || c % d != 0 {
                    return Err(err(
                        "attention_head_dim",
                        format!("{c} channels are not a multiple of head width {d}"),
                    ));
                }
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(err("norm_eps", "must be positive and finite"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(err(
                "dropout",
                format!("{} is not a probability in [0, 1)", self.dropout),
            ));
        }
        if !self.freq_shift.is_finite() {
            return Err(err("freq_shift", "must be finite"));
        }
        // The sinusoidal embedding of t has block_out_channels[0] / 2 frequencies, with the
        // denominator half − freq_shift (crate::ops::embedding), which must stay positive.
        let half = self.block_out_channels[0] / 2;
        if half == 0 || half as f64 - self.freq_shift <= 0.0 {
            return Err(err(
                "freq_shift",
                format!(
                    "{} leaves the time embedding no frequencies: it must be below \
                     block_out_channels[0] / 2 = {half}",
                    self.freq_shift
                ),
            ));
        }
        if self.time_embed_dim() == 0 {
            return Err(err("time_embedding_dim", "must be positive"));
        }
        if self.num_class_embeds == Some(0) {
            return Err(err(
                "num_class_embeds",
                "must be positive, or null for an unconditional model",
            ));
        }
        if self.add_attention && self.attn_norm_num_groups.is_some() {
            let (g, c) = (
                self.mid_attention_groups(),
                self.block_out_channels[levels - 1],
            );
            if g == 0 || c % g != 0 {
                return Err(err(
                    "attn_norm_num_groups",
                    format!("{c} channels of the mid block cannot be split into {g} groups"),
                ));
            }
        }
        if let Some(kind) = &self.class_embed_type {
            return Err(err(
                "class_embed_type",
                format!("`{kind}` is not supported (only null: a table of num_class_embeds rows)"),
            ));
        }
        if self.mid_block_type.as_deref() != Some(MID_BLOCK) {
            let got = self.mid_block_type.as_deref().unwrap_or("null");
            return Err(err(
                "mid_block_type",
                format!("`{got}` is not supported (only `{MID_BLOCK}`)"),
            ));
        }
        if self.downsample_padding > 1 {
            return Err(err("downsample_padding", "must be 0 or 1"));
        }
        let only = |field: &str, got: &str, want: &str| {
            if got == want {
                Ok(())
            } else {
                Err(err(
                    field,
                    format!("`{got}` is not supported (only `{want}`)"),
                ))
            }
        };
        only("act_fn", &self.act_fn, "silu")?;
        only(
            "time_embedding_type",
            &self.time_embedding_type,
            "positional",
        )?;
        only(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            "default",
        )?;
        only("downsample_type", &self.downsample_type, "conv")?;
        only("upsample_type", &self.upsample_type, "conv")?;
        if self.center_input_sample {
            return Err(err("center_input_sample", "only `false` is supported"));
        }
        if self.mid_block_scale_factor != 1.0 {
            return Err(err("mid_block_scale_factor", "only 1 is supported"));
        }
        if let Some(key) = self.extra.keys().find(|k| !k.starts_with('_')) {
            // An empty key is shown as `""`, not as an empty name.
            let shown = if key.is_empty() { "\"\"" } else { key };
            return Err(err(shown, "unknown field"));
        }
        match self.param_count() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            n => Err(err(
                "block_out_channels",
                format!(
                    "the model would have {} parameters, above the limit of {MAX_PARAMS}; reduce \
                     block_out_channels, layers_per_block, time_embedding_dim, \
                     num_class_embeds, in_channels or out_channels",
                    n.map_or("more than 2^100".to_string(), |n| n.to_string())
                ),
            )),
        }
    }

    /// The number of trainable parameters [`crate::nn::UNet::new`] lays out for this config,
    /// worked out from the architecture without building it (`tests/fuzz_parsers.rs` checks the
    /// two agree). `None` when a size field is above 2³², where the sum could overflow even in
    /// u128 (such a config is far past [`MAX_PARAMS`] anyway). Counts what there is when the
    /// block lists do not match `block_out_channels`, as [`Self::validate`] requires.
    pub fn param_count(&self) -> Option<u128> {
        let sizes = [
            self.in_channels,
            self.out_channels,
            self.layers_per_block,
            self.time_embed_dim(),
            self.num_class_embeds.unwrap_or(0),
        ];
        let big = |v: &usize| *v as u128 > u128::from(u32::MAX);
        if sizes.iter().chain(&self.block_out_channels).any(big) {
            return None;
        }
        let u = |v: usize| v as u128;
        let temb = u(self.time_embed_dim());
        let conv = |c_in: u128, c_out: u128, k: u128| c_out * c_in * k * k + c_out;
        let linear = |d_in: u128, d_out: u128| d_out * d_in + d_out;
        let norm = |c: u128| 2 * c;
        let resnet = |c_in: u128, c_out: u128| {
            let shortcut = if c_in != c_out {
                conv(c_in, c_out, 1)
            } else {
                0
            };
            norm(c_in)
                + conv(c_in, c_out, 3)
                + linear(temb, c_out)
                + norm(c_out)
                + conv(c_out, c_out, 3)
                + shortcut
        };
        let attention = |c: u128| norm(c) + 4 * linear(c, c);
        let chans: Vec<u128> = self.block_out_channels.iter().map(|&c| u(c)).collect();
        let (Some(&c0), Some(&c_mid)) = (chans.first(), chans.last()) else {
            return Some(0);
        };
        let levels = chans.len();
        let layers = u(self.layers_per_block);
        let mut n = conv(u(self.in_channels), c0, 3) + linear(c0, temb) + linear(temb, temb);
        n += u(self.num_class_embeds.unwrap_or(0)) * temb;
        // Down blocks: the first residual block of a level takes the previous level's width.
        let mut c_prev = c0;
        for (i, (&c, kind)) in chans.iter().zip(&self.down_block_types).enumerate() {
            if layers > 0 {
                n += resnet(c_prev, c) + (layers - 1) * resnet(c, c);
            }
            if kind.has_attention() {
                n += layers * attention(c);
            }
            if i + 1 < levels {
                n += conv(c, c, 3);
            }
            c_prev = c;
        }
        // Mid block: two residual blocks around an optional attention block.
        n += 2 * resnet(c_mid, c_mid);
        if self.add_attention {
            n += attention(c_mid);
        }
        // Up blocks, from the lowest resolution: layers_per_block + 1 residual blocks over
        // (current ‖ skip); the first takes the level below's width, the last one's skip comes
        // from the next level up.
        let rev: Vec<u128> = chans.iter().rev().copied().collect();
        for (i, kind) in self.up_block_types.iter().enumerate().take(levels) {
            let c = rev[i];
            let c_skip_last = rev[(i + 1).min(levels - 1)];
            n += if layers == 0 {
                resnet(c_prev + c_skip_last, c)
            } else {
                resnet(c_prev + c, c) + (layers - 1) * resnet(2 * c, c) + resnet(c + c_skip_last, c)
            };
            if kind.has_attention() {
                n += (layers + 1) * attention(c);
            }
            if i + 1 < levels {
                n += conv(c, c, 3);
            }
            c_prev = c;
        }
        Some(n + norm(c0) + conv(c0, u(self.out_channels), 3))
    }

    /// Reads a JSON config (ours or a diffusers `config.json`) and validates it.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err("(json)", e.to_string()))?;
        Self::from_value(value)
    }

    /// [`Self::from_json`] on parsed JSON. A value of the wrong type is reported under its key.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = crate::json_fields::from_value(value).map_err(|e| err(&e.field, e.msg))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serializes")
    }
}

impl fmt::Display for UNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}x{} → {}, channels {:?}, {} res block{} per level",
            self.in_channels,
            self.sample_size,
            self.sample_size,
            self.out_channels,
            self.block_out_channels,
            self.layers_per_block,
            if self.layers_per_block == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_count_matches_the_published_model() {
        // google/ddpm-cifar10-32 has 35,746,307 parameters.
        let cfg = UNetConfig::preset("ddpm-cifar10").unwrap();
        assert_eq!(cfg.param_count(), Some(35_746_307));
        // Sizes past 2³² are not counted (they could overflow even u128).
        let huge = UNetConfig {
            block_out_channels: vec![1 << 40],
            ..cfg
        };
        assert_eq!(huge.param_count(), None);
    }

    #[test]
    fn sizes_above_the_limits_are_named() {
        let base = UNetConfig::preset("tiny").unwrap();
        assert!(base.validate().is_ok());
        let e = UNetConfig {
            sample_size: MAX_SAMPLE_SIZE * 2,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "sample_size");
        assert!(e.msg.contains("8192"), "{e}");
        let e = UNetConfig {
            layers_per_block: MAX_LAYERS_PER_BLOCK + 1,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "layers_per_block");
        // A time embedding whose sinusoid has no frequencies left: block_out_channels[0] / 2
        // must exceed freq_shift (the tiny preset shifts by 1).
        let e = UNetConfig {
            block_out_channels: vec![2, 2, 2],
            norm_num_groups: 2,
            ..base
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "freq_shift");
        assert!(e.msg.contains("block_out_channels[0]"), "{e}");
    }
}
