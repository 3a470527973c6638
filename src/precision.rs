//! The storage precision of GPU activations (docs/mixed-precision.md).
//!
//! Only what is *stored* changes: every kernel computes in fp32, every matrix product
//! accumulates in fp32, and what must stay exact stays fp32 whatever the precision: master
//! weights, their gradients, Adam moments, EMA, group-norm statistics, timesteps, the loss and the
//! sampler's state x_t. In bf16 and fp16 the GEMMs read a low-precision copy of the weights that
//! the optimizer refreshes in the same pass as the update. fp16's narrow range needs loss
//! scaling ([`crate::optim::LossScaler`]); bf16 has fp32's range and needs none.

use std::fmt;
use std::str::FromStr;

/// Element type of activations (and of the weight copy the matrix products read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything fp32 (and no TF32): the parity mode, bitwise comparable with the CPU.
    Fp32,
    /// bfloat16 storage, fp32 math: the default on the GPU.
    #[default]
    Bf16,
    /// IEEE half storage, fp32 math, with dynamic loss scaling.
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

    /// Bytes per stored element.
    pub const fn bytes(self) -> usize {
        match self {
            Precision::Fp32 => 4,
            Precision::Bf16 | Precision::Fp16 => 2,
        }
    }

    /// The suffix of a kernel instantiated for this storage type (`silu_forward_bf16`).
    pub const fn suffix(self) -> &'static str {
        match self {
            Precision::Fp32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "f16",
        }
    }

    /// The name users write (`--precision bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Whether gradients need loss scaling to stay inside the format's range.
    pub const fn needs_loss_scaling(self) -> bool {
        matches!(self, Precision::Fp16)
    }

    /// Whether activations are stored narrower than fp32.
    pub const fn is_reduced(self) -> bool {
        !matches!(self, Precision::Fp32)
    }

    /// `name` with this precision's kernel suffix: `kernel("silu_forward")` → `silu_forward_bf16`.
    pub fn kernel(self, name: &str) -> String {
        format!("{name}_{}", self.suffix())
    }

    /// Relative rounding step (unit roundoff, 2^-p) of one stored value.
    pub const fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => 1.0 / (1u64 << 24) as f64,
            Precision::Bf16 => 1.0 / 256.0,
            Precision::Fp16 => 1.0 / 2048.0,
        }
    }

    /// `x` rounded to this storage type (round to nearest even) and back: what a kernel that
    /// stores `x` and reads it again sees.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::Fp32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
            Precision::Fp16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// `values` encoded as this storage type's little-endian bytes (the upload format).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Precision::Fp32 => bytemuck::cast_slice(values).to_vec(),
            Precision::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            Precision::Fp16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Values decoded from this storage type's little-endian bytes (the download format).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::Fp32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Precision::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Precision::Fp16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(Precision::Fp16),
            _ => Err(format!(
                "unknown precision {s:?} (expected fp32, bf16 or fp16)"
            )),
        }
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_say_what_is_expected() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.kernel("add"), format!("add_{}", p.suffix()));
        }
        let e = "int8".parse::<Precision>().unwrap_err();
        assert!(e.contains("fp32, bf16 or fp16"), "{e}");
    }

    #[test]
    fn encoding_is_the_storage_rounding() {
        let v = [1.0f32, -2.5, 1.0 + 1.0 / 512.0, 70000.0, 1e-8];
        for p in Precision::ALL {
            let back = p.decode(&p.encode(&v));
            assert_eq!(back.len(), v.len());
            for (x, y) in v.iter().zip(&back) {
                assert_eq!(p.round(*x).to_bits(), y.to_bits(), "{p} {x}");
            }
        }
        // bf16 keeps 8 significant bits: 1 + 2⁻⁹ rounds to 1; fp16 keeps it.
        assert_eq!(Precision::Bf16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(Precision::Fp16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
        // fp16 overflows above 65504; bf16 has fp32's range.
        assert!(Precision::Fp16.round(70000.0).is_infinite());
        assert!((Precision::Bf16.round(70000.0) - 70000.0).abs() < 300.0);
    }
}
