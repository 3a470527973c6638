//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11).
//!
//! A counter-based generator maps (key, counter) to random words with no hidden state, so the
//! value drawn for element `i` does not depend on thread scheduling. The CUDA kernels use the same
//! function (`kernels/common.cuh`), which lets the CPU reference reproduce GPU dropout masks and
//! noise bit for bit, and makes every draw deterministic for a given seed.

use crate::float::Real;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32 block with 10 rounds.
pub fn philox4x32_10(mut ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut k0, mut k1) = (key[0], key[1]);
    for _ in 0..10 {
        let p0 = u64::from(M0) * u64::from(ctr[0]);
        let p1 = u64::from(M1) * u64::from(ctr[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0];
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    ctr
}

/// Random word number `i` of the stream `(seed, stream)`: word `i % 4` of block `i / 4`.
/// Identical to `philox_word` in `kernels/common.cuh`.
#[inline]
pub fn philox_word(seed: u64, stream: u64, i: u64) -> u32 {
    let block = i >> 2;
    let ctr = [
        block as u32,
        (block >> 32) as u32,
        stream as u32,
        (stream >> 32) as u32,
    ];
    philox4x32_10(ctr, [seed as u32, (seed >> 32) as u32])[(i & 3) as usize]
}

/// `L` consecutive Philox blocks of one stream at once: `out[w][l]` is word `w` of block
/// `first_block + l`, i.e. `philox_word(seed, stream, 4 · (first_block + l) + w)`. The same
/// rounds as [`philox4x32_10`], lane by lane, laid out so the compiler can run the lanes in
/// vector registers (the 32×32 → 64-bit products are `pmuludq`).
#[inline(always)]
pub fn philox_blocks<const L: usize>(seed: u64, stream: u64, first_block: u64) -> [[u32; L]; 4] {
    let mut c0 = [0u32; L];
    let mut c1 = [0u32; L];
    for l in 0..L {
        let block = first_block.wrapping_add(l as u64);
        c0[l] = block as u32;
        c1[l] = (block >> 32) as u32;
    }
    let mut c2 = [stream as u32; L];
    let mut c3 = [(stream >> 32) as u32; L];
    let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
    for _ in 0..10 {
        for l in 0..L {
            let p0 = u64::from(M0) * u64::from(c0[l]);
            let p1 = u64::from(M1) * u64::from(c2[l]);
            let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
            let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
            c0[l] = hi1 ^ c1[l] ^ k0;
            c1[l] = lo1;
            c2[l] = hi0 ^ c3[l] ^ k1;
            c3[l] = lo0;
        }
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    [c0, c1, c2, c3]
}

/// Uniform in [0, 1) with 24 bits: exactly representable in f32, so CPU and GPU agree.
#[inline]
pub fn unit_f32(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A sequential generator over one Philox stream, for initialisation and test data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Philox {
    seed: u64,
    stream: u64,
    /// Index of the next word to hand out.
    next: u64,
}

impl Philox {
    pub fn new(seed: u64) -> Self {
        Self::with_stream(seed, 0)
    }

    /// Independent streams share a seed and differ in the counter's upper half.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        Self {
            seed,
            stream,
            next: 0,
        }
    }

    /// Position in the stream, for checkpointing the generator state.
    pub fn position(&self) -> (u64, u64, u64) {
        (self.seed, self.stream, self.next)
    }

    pub fn next_u32(&mut self) -> u32 {
        let w = philox_word(self.seed, self.stream, self.next);
        self.next += 1;
        w
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        let hi = u64::from(self.next_u32() >> 5); // 27 bits
        let lo = u64::from(self.next_u32() >> 6); // 26 bits
        ((hi << 26) | lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller (one value per two uniforms; simple beats fast here).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: keeps ln finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` values uniform in [lo, hi).
    pub fn uniform_vec<T: Real>(&mut self, n: usize, lo: f64, hi: f64) -> Vec<T> {
        (0..n)
            .map(|_| T::lit(lo + (hi - lo) * self.uniform()))
            .collect()
    }

    /// `n` values from N(0, std²).
    pub fn normal_vec<T: Real>(&mut self, n: usize, std: f64) -> Vec<T> {
        (0..n).map(|_| T::lit(std * self.normal())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors from Random123's `tests/kat_vectors` (the three `philox4x32 10`
    /// lines: counter[4], key[2] -> output[4]).
    #[test]
    fn philox_matches_random123_known_answers() {
        let cases = [
            (
                [0u32; 4],
                [0u32; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(
                philox4x32_10(ctr, key),
                want,
                "ctr {ctr:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn normal_moments() {
        let mut r = Philox::new(7);
        let xs: Vec<f64> = (0..200_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        // Standard errors: 1/sqrt(n) ≈ 0.0022 for the mean, sqrt(2/n) ≈ 0.0032 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u32> = (0..8).map(|i| philox_word(1, 0, i)).collect();
        let b: Vec<u32> = (0..8).map(|i| philox_word(1, 0, i)).collect();
        let c: Vec<u32> = (0..8).map(|i| philox_word(1, 1, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut seq = Philox::new(1);
        let d: Vec<u32> = (0..8).map(|_| seq.next_u32()).collect();
        assert_eq!(a, d);
    }

    #[test]
    fn philox_blocks_are_philox_words() {
        // Including a block counter that carries into its upper half.
        for (seed, stream, first) in [(1, 0, 0), (0xDEAD_BEEF_0123, 77 << 40, (1u64 << 32) - 5)] {
            let w = philox_blocks::<16>(seed, stream, first);
            for l in 0..16 {
                for (k, word) in w.iter().enumerate() {
                    let i = 4 * (first + l as u64) + k as u64;
                    assert_eq!(word[l], philox_word(seed, stream, i), "block {l} word {k}");
                }
            }
        }
    }
}
