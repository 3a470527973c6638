//! Counter-based Gaussian noise: every value is a pure function of (seed, stream, index), so the
//! CUDA kernels can reproduce it and an image's noise never depends on how images are batched
//! or how work is split across threads.
//!
//! **Element j of stream s** is Box–Muller on Philox words 2j and 2j+1 of (seed, s)
//! ([`crate::rng::philox_word`]), evaluated in f64 and rounded once to f32:
//!
//! ```text
//! u1 = (w[2j] + 1) · 2⁻³²      ∈ (0, 1]   (never 0, so ln u1 is finite; |z| ≤ 6.66)
//! u2 =  w[2j+1]    · 2⁻³²      ∈ [0, 1)
//! z  = f32( √(−2 ln u1) · cos(2π u2) )
//! ```
//!
//! Both uniforms are exact in f64; only `ln`, `cos` and `sqrt` can differ between libraries, by an
//! f64 ulp or two, which changes the rounded f32 only when the value sits within a few f64 ulps
//! of an f32 rounding boundary (about one element in 10⁸, and then by one f32 ulp).
//!
//! **Stream ids** ([`stream`]): `purpose << 60 | a << 24 | b`, with `a` < 2³⁶ and `b` < 2²⁴, so
//! streams of different purposes or arguments never overlap; streams below 2⁶⁰ (purpose 0) are
//! left to other users of [`crate::rng`] (test data, initialisation).

use rayon::prelude::*;

use super::DiffusionError;
use crate::rng::{philox4x32_10, philox_word};

/// What a stream of random numbers is for: the top 4 bits of its stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum NoisePurpose {
    /// Training ε: a = optimizer step, b = item's index in the global batch.
    TrainNoise = 1,
    /// Training timesteps: a = optimizer step, b = item's index in the global batch.
    TrainTimestep = 2,
    /// Sampling x_T: a = image id, b = 0.
    SampleInit = 3,
    /// Noise of a stochastic sampler step: a = image id, b = step index (0 = first step taken).
    SampleStep = 4,
    /// Reserved for dropout masks: a = optimizer step, b = call site.
    Dropout = 5,
    /// Label dropout for classifier-free guidance: a = optimizer step, b = item in the batch.
    LabelDrop = 6,
}

/// Bits of the first stream argument (`a`).
pub const STREAM_A_BITS: u32 = 36;
/// Bits of the second stream argument (`b`).
pub const STREAM_B_BITS: u32 = 24;

/// The stream id for (purpose, a, b), or an error naming the argument that does not fit.
pub fn try_stream(purpose: NoisePurpose, a: u64, b: u64) -> Result<u64, DiffusionError> {
    if a >> STREAM_A_BITS != 0 {
        return Err(DiffusionError::new(
            "noise",
            "stream",
            format!("{purpose:?}: first argument {a} does not fit in {STREAM_A_BITS} bits"),
        ));
    }
    if b >> STREAM_B_BITS != 0 {
        return Err(DiffusionError::new(
            "noise",
            "stream",
            format!("{purpose:?}: second argument {b} does not fit in {STREAM_B_BITS} bits"),
        ));
    }
    Ok((purpose as u64) << 60 | a << STREAM_B_BITS | b)
}

/// The stream id for (purpose, a, b). Stops if an argument is out of range: check values that
/// come from the user with [`try_stream`] first.
#[track_caller]
pub fn stream(purpose: NoisePurpose, a: u64, b: u64) -> u64 {
    try_stream(purpose, a, b).unwrap_or_else(|e| panic!("{e}"))
}

const TWO_POW_M32: f64 = 1.0 / 4_294_967_296.0;

/// Box–Muller on two Philox words (the module docs give the exact formula).
#[inline]
pub fn normal_from_words(w0: u32, w1: u32) -> f32 {
    let u1 = (f64::from(w0) + 1.0) * TWO_POW_M32;
    let u2 = f64::from(w1) * TWO_POW_M32;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Element `j` of the normal stream (seed, stream).
pub fn normal_at(seed: u64, stream: u64, j: u64) -> f32 {
    normal_from_words(
        philox_word(seed, stream, 2 * j),
        philox_word(seed, stream, 2 * j + 1),
    )
}

/// Elements per rayon task (even, so a task never splits a Philox block).
const CHUNK: usize = 1 << 12;

/// out[j] = element j of the normal stream (seed, stream).
pub fn fill_normal(seed: u64, stream: u64, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = (c * CHUNK) as u64;
            // Philox block k holds words 4k..4k+3: elements 2k (lanes 0, 1), 2k+1 (lanes 2, 3).
            for (p, pair) in chunk.chunks_mut(2).enumerate() {
                let block = (first >> 1) + p as u64;
                let ctr = [
                    block as u32,
                    (block >> 32) as u32,
                    stream as u32,
                    (stream >> 32) as u32,
                ];
                let w = philox4x32_10(ctr, key);
                pair[0] = normal_from_words(w[0], w[1]);
                if let Some(second) = pair.get_mut(1) {
                    *second = normal_from_words(w[2], w[3]);
                }
            }
        });
}

/// Training ε for one optimizer step: item i of `out` is global batch item `first_item + i`,
/// drawn from its own [`NoisePurpose::TrainNoise`] stream.
pub fn fill_train_noise(seed: u64, step: u64, first_item: u64, item_len: usize, out: &mut [f32]) {
    assert!(
        item_len > 0 && out.len().is_multiple_of(item_len),
        "fill_train_noise: {} elements is not a whole number of items of {item_len}",
        out.len()
    );
    // Items in parallel (each item's own stream; `fill_normal` splits a large one further).
    out.par_chunks_mut(item_len)
        .enumerate()
        .for_each(|(i, item)| {
            let s = stream(NoisePurpose::TrainNoise, step, first_item + i as u64);
            fill_normal(seed, s, item);
        });
}

/// The training timestep of global batch item `item` at optimizer step `step`: uniform on
/// [0, T), exactly. Lemire's multiply-shift with rejection on words 0, 1, … of the item's own
/// [`NoisePurpose::TrainTimestep`] stream (a rejection is rarer than T/2³²).
/// Whether training drops item `item`'s label at `step` (replacing it by the null class), with
/// probability `p`: one uniform draw from the LabelDrop stream (step, item), compared with p.
/// Both trainers call this, so the CPU and the GPU drop the same labels.
pub fn label_dropped(seed: u64, step: u64, item: u64, p: f64) -> bool {
    p > 0.0 && {
        let w = philox_word(seed, stream(NoisePurpose::LabelDrop, step, item), 0);
        (f64::from(w) + 0.5) * TWO_POW_M32 < p
    }
}

/// The batch's labels after label dropout (Ho & Salimans 2022, Algorithm 1): each replaced by
/// `null` with probability `p`.
pub fn drop_labels(labels: &[u32], seed: u64, step: u64, p: f64, null: u32) -> Vec<u32> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if label_dropped(seed, step, i as u64, p) {
                null
            } else {
                y
            }
        })
        .collect()
}

pub fn timestep_for(seed: u64, step: u64, item: u64, num_timesteps: usize) -> usize {
    assert!(
        num_timesteps > 0 && num_timesteps <= u32::MAX as usize,
        "timestep_for: T = {num_timesteps} must be in [1, 2³²)"
    );
    let s = stream(NoisePurpose::TrainTimestep, step, item);
    let range = num_timesteps as u64;
    // Words whose low product half falls below 2³² mod T would over-represent some values.
    let threshold = (1u64 << 32) % range;
    let mut i = 0;
    loop {
        let m = u64::from(philox_word(seed, s, i)) * range;
        if (m & 0xFFFF_FFFF) >= threshold {
            return (m >> 32) as usize;
        }
        i += 1;
    }
}

/// Timesteps of global batch items 0..batch at optimizer step `step`, each uniform on [0, T).
pub fn draw_timesteps(seed: u64, step: u64, batch: usize, num_timesteps: usize) -> Vec<usize> {
    (0..batch as u64)
        .map(|item| timestep_for(seed, step, item, num_timesteps))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_fields_do_not_overlap() {
        assert_eq!(stream(NoisePurpose::TrainNoise, 0, 0), 1 << 60);
        assert_eq!(
            stream(NoisePurpose::SampleStep, 3, 5),
            (4 << 60) | (3 << 24) | 5
        );
        let amax = (1 << STREAM_A_BITS) - 1;
        let bmax = (1 << STREAM_B_BITS) - 1;
        assert_eq!(
            stream(NoisePurpose::SampleInit, amax, bmax),
            (3 << 60) | (amax << 24) | bmax
        );
        assert!(try_stream(NoisePurpose::SampleInit, amax + 1, 0).is_err());
        let e = try_stream(NoisePurpose::SampleStep, 0, bmax + 1).unwrap_err();
        assert!(e.to_string().contains("24 bits"), "{e}");
    }

    #[test]
    fn fill_normal_matches_normal_at_at_odd_lengths_and_chunk_edges() {
        let n = CHUNK + 3;
        let mut out = vec![0.0; n];
        fill_normal(11, 42, &mut out);
        for j in [0, 1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 2] {
            assert_eq!(
                out[j].to_bits(),
                normal_at(11, 42, j as u64).to_bits(),
                "j {j}"
            );
        }
    }
}
