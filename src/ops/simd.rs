//! Vector code for the elementwise CPU ops: run-time selection of the instruction set, and the
//! f32 exponential of SiLU.
//!
//! The crate is built for baseline x86-64 (SSE2), so plain loops vectorise four f32 wide.
//! [`multiversion!`] compiles a function's body twice more, for x86-64-v3 (AVX2) and x86-64-v4
//! (AVX-512), and picks the best the CPU has at each call. Rust never contracts `a * b + c` into
//! a fused multiply-add, and nothing here calls `mul_add`, so every version performs the same
//! IEEE operations in the same order: **results are bitwise identical whichever version runs**
//! (unit tests in `ops::groupnorm`, `optim::clip` and `optim::fused` check it).
//!
//! [`sigmoid`] computes σ(x) exactly as [`crate::float::sigmoid`] does, except that f32 takes its
//! exponential from [`exp_neg_f32`] (at most 2 ulp from e^x, vectorisable) instead of libm's
//! `expf`, whose calls keep a loop scalar. f64 — what the gradient checks use — keeps libm's
//! `exp`, so its results are exactly those of `crate::float::sigmoid`.

use std::any::TypeId;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::float::Real;

/// The instruction sets [`multiversion!`] compiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Level {
    /// Whatever the crate is compiled for (SSE2 on x86-64).
    Baseline = 1,
    /// x86-64-v3: AVX2, FMA, BMI.
    V3 = 2,
    /// x86-64-v4: AVX-512 F/BW/DQ/VL.
    V4 = 3,
}

/// 0 until the CPU has been asked.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU runs (detected once).
#[inline]
pub(crate) fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::V3,
        3 => Level::V4,
        _ => {
            let l = detect();
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let v3 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("bmi1")
            && is_x86_feature_detected!("bmi2")
            && is_x86_feature_detected!("lzcnt")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("f16c");
        let v4 = v3
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        if v4 {
            return Level::V4;
        }
        if v3 {
            return Level::V3;
        }
    }
    Level::Baseline
}

/// Held by a test for as long as it forces levels, so two such tests running at once cannot
/// switch the level under each other (and end up comparing a level with itself).
#[cfg(test)]
pub(crate) fn level_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forces a level (tests compare the versions; they give the same bits, so other tests running
/// meanwhile are unaffected; tests that force levels hold [`level_lock`]). Levels the CPU lacks
/// are ignored.
#[cfg(test)]
pub(crate) fn force_level(l: Level) -> bool {
    if l as u8 > detect() as u8 {
        return false;
    }
    LEVEL.store(l as u8, Ordering::Relaxed);
    true
}

/// Back to the best level after [`force_level`].
#[cfg(test)]
pub(crate) fn reset_level() {
    LEVEL.store(detect() as u8, Ordering::Relaxed);
}

/// Defines `fn name(args) -> ret { body }` compiled for the baseline, x86-64-v3 and x86-64-v4,
/// dispatching on [`level`] at each call. Generic parameters are allowed (`<T: Real>`); helpers
/// the body calls should be `#[inline(always)]` so they are compiled into each version.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident : $bound:path),* $(,)?>)?
            ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(
                    enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c"
                )]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::ops::simd::level() {
                    // SAFETY: `level` reports only features this CPU has.
                    $crate::ops::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::ops::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::ops::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Whether `T` is f32 (decided at compile time).
#[inline(always)]
pub(crate) fn is_f32<T: Real>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// e^x for x ≤ 0 (and NaN), in f32, within 2 ulp of the exact value where that is a normal
/// number, and written so a loop of it vectorises: Cody–Waite reduction x = n ln2 + r with
/// |r| ≤ ln2/2 (the two-part ln2 of Cephes' `expf`), Cephes' degree-7 minimax polynomial for e^r,
/// and the scaling by 2ⁿ as two exact multiplications by normal powers of two, so results down
/// in the subnormal range are rounded once. Below −104 the result is 0, as e^x rounds to it.
#[inline(always)]
pub(crate) fn exp_neg_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // = 0.693359375: 9 significant bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -104.0 { -104.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND; // round(x·log₂e), in [−150, 0]
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = (((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    // 2ⁿ = 2^(n1) · 2^(n2), both exponents in [−75, 0].
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32).wrapping_shl(23));
    p * pow2(n1) * pow2(n2)
}

/// σ(x) = 1/(1 + e^(−x)) for x ≥ 0, e^x/(1 + e^x) below: the branches of
/// [`crate::float::sigmoid`], written as one exponential of −|x| and a select so that it
/// vectorises. f32 uses [`exp_neg_f32`], f64 libm's `exp` (then this is bitwise
/// `crate::float::sigmoid`).
#[inline(always)]
pub(crate) fn sigmoid<T: Real>(x: T) -> T {
    let e = if is_f32::<T>() {
        T::lit(f64::from(exp_neg_f32(-(x.as_f64() as f32).abs())))
    } else {
        (-x.abs()).exp()
    };
    let num = if x >= T::zero() { T::one() } else { e };
    num / (T::one() + e)
}

/// dy·silu'(v) = dy · σ(v) · (1 + v · (1 − σ(v))), the SiLU backward (and its fused uses).
#[inline(always)]
pub(crate) fn silu_grad<T: Real>(v: T, dy: T) -> T {
    let s = sigmoid(v);
    dy * s * (T::one() + v * (T::one() - s))
}

/// silu(v) = v · σ(v).
#[inline(always)]
pub(crate) fn silu<T: Real>(v: T) -> T {
    v * sigmoid(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulps between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_over_its_whole_domain() {
        // Every 61st f32 of [−104, 0] (1.8·10⁷ values).
        let mut worst = (0u32, 0.0f32);
        let (lo, hi) = ((-104.0f32).to_bits(), (-0.0f32).to_bits());
        let mut bits = hi;
        while bits <= lo {
            let x = f32::from_bits(bits);
            let got = exp_neg_f32(x);
            let want = (x as f64).exp();
            if want >= f32::MIN_POSITIVE as f64 {
                let u = ulps(got, want as f32);
                if u > worst.0 {
                    worst = (u, x);
                }
            } else {
                // Subnormal results: within one subnormal step (2⁻¹⁴⁹) plus rounding.
                let err = (got as f64 - want).abs();
                assert!(err <= 1.5 * 2f64.powi(-149), "x {x}: {got} vs {want}");
            }
            bits += 61;
        }
        println!("exp_neg_f32: at most {} ulp (x = {})", worst.0, worst.1);
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp_neg_f32(0.0), 1.0);
        assert_eq!(exp_neg_f32(-0.0), 1.0);
        assert_eq!(exp_neg_f32(-200.0), 0.0);
        assert_eq!(exp_neg_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg_f32(f32::NAN).is_nan());
    }

    #[test]
    fn f32_silu_is_within_a_few_ulp_and_f64_is_libm_exact() {
        let mut worst = 0;
        for i in 0..2_000_000 {
            let x = -60.0 + 120.0 * (i as f32 / 2_000_000.0);
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x);
            if want.abs() >= f32::MIN_POSITIVE as f64 {
                worst = worst.max(ulps(got, want as f32));
            }
            let s = sigmoid(x);
            let want_s = 1.0 / (1.0 + (-(x as f64)).exp());
            if want_s >= f32::MIN_POSITIVE as f64 {
                assert!(
                    ulps(s, want_s as f32) <= 4,
                    "sigmoid({x}) = {s} vs {want_s}"
                );
            }
            let xd = x as f64 * 1.000_000_3;
            assert_eq!(
                sigmoid(xd).to_bits(),
                crate::float::sigmoid(xd).to_bits(),
                "{xd}"
            );
        }
        println!("f32 silu: at most {worst} ulp");
        assert!(worst <= 4, "silu off by {worst} ulp");
        assert!(silu(f32::NAN).is_nan() && silu(f64::NAN).is_nan());
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert_eq!(silu(-0.0f32).to_bits(), (-0.0f32).to_bits());
    }
}
