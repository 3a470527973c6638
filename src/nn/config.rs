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
pub const PRESETS: [&str; 3] = ["tiny", "ddpm-cifar10", "ref-32x32"];

impl UNetConfig {
    /// A built-in preset by name:
    /// - `tiny`: 16×16, channels 32/64/64, one residual block per level, attention at 4×4 and in
    ///   the middle; trains on two CPU cores in minutes.
    /// - `ddpm-cifar10`: Ho et al.'s CIFAR-10 model (ch 128, mult 1,2,2,2, 2 residual blocks,
    ///   attention at 16×16, dropout 0.1; 35.7M parameters), as `google/ddpm-cifar10-32`.
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

    /// Width of the time embedding MLP (diffusers: 4 × the first block's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels.first().copied().unwrap_or(0))
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
        let down_factor = 1usize << (levels - 1);
        if self.sample_size % down_factor != 0 {
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
            return Err(err(key, "unknown field"));
        }
        Ok(())
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
            "{}x{}x{} → {}, channels {:?}, {} res blocks/level",
            self.in_channels,
            self.sample_size,
            self.sample_size,
            self.out_channels,
            self.block_out_channels,
            self.layers_per_block
        )
    }
}
