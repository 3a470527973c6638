//! The scalar type of the CPU reference backend.
//!
//! Every CPU op is generic over [`Real`] so the same code runs in f32 (what training uses) and in
//! f64 (what the gradient checks use: central differences need the extra precision to tell a
//! wrong backward from rounding noise).

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

pub trait Real:
    num_traits::Float
    + num_traits::FloatConst
    + Default
    + Debug
    + Display
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Send
    + Sync
    + bytemuck::Pod
    + 'static
{
    /// Short name used in messages and safetensors dtypes ("f32", "f64").
    const NAME: &'static str;
    /// The safetensors dtype of this type.
    const DTYPE: safetensors::Dtype;

    /// Converts a literal or an f64 intermediate.
    fn lit(x: f64) -> Self;
    /// Widens to f64 (exact for f32 and f64).
    fn as_f64(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    #[inline]
    fn lit(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    #[inline]
    fn lit(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
}

/// Logistic sigmoid, written so that neither branch overflows `exp`.
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}
