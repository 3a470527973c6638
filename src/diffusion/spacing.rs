//! Which of the T training timesteps a sampler visits with N steps.
//!
//! [`timesteps`] returns the visited 0-based timesteps in descending order. The previous
//! timestep of each entry is the next entry of the same list. After the last entry:
//! - `leading`, `trailing`, `linspace` step to x₀ itself (no previous timestep, ᾱ_prev = 1;
//!   a DDIM run with `set_alpha_to_one = false` lands on ᾱ₀ instead, see
//!   [`super::sampler::SampleOptions::plan`]);
//! - `uniform`, `quad` step to timestep 0 (ᾱ_prev = ᾱ₀), exactly as the DDIM reference code,
//!   whose `prev_seq = [0] + seq[:-1]` ends on index 0. Every step of theirs goes to a timestep,
//!   so a stochastic sampler adds noise on their last step too.
//!
//! diffusers' DDIM instead takes t − ⌊T/N⌋ as the previous timestep of every step. For `leading`
//! that is the same timestep (but for a last step with `steps_offset` ≥ ⌊T/N⌋, where ddpm's DDIM
//! follows diffusers, see [`super::sampler::SampleOptions::plan`]), and so it is for `trailing`
//! when N divides T; for `linspace`, and `trailing` otherwise, it is not a visited timestep at
//! all, and ddpm keeps the visited one (see README, "diffusers interoperability").
//!
//! Definitions (diffusers' `timestep_spacing`, and the DDIM reference's `ddim_discr_method`),
//! each evaluated in f64 exactly as numpy does, so ties and truncations land where the Python
//! code puts them:
//! - `leading`:  (i · ⌊T/N⌋) + `steps_offset` for i = 0..N, reversed. (T=1000, N=10: 900, 800,
//!   …, 0). `steps_offset` applies to this spacing only, as in diffusers.
//! - `trailing`: round(arange(T, 0, −T/N)) − 1, round half to even. (999, 899, …, 99). numpy's
//!   float `arange` can yield N+1 values when T/(T/N) rounds above N; we keep the first N.
//! - `linspace`: round(linspace(0, T−1, N)), reversed. (999, 888, …, 111, 0)
//! - `uniform`:  range(0, T, ⌊T/N⌋)[..N] + 1, reversed. (901, 801, …, 1). The reference loop
//!   reads only the first N entries of the range. With N = T the +1 shift would visit t = T,
//!   past the schedule (the reference indexes out of bounds): that is an error.
//! - `quad`:     ⌊linspace(0, √(0.8 T), N)²⌋ + 1, reversed. For N above about √(0.8 T) + 1 the
//!   small entries repeat; a repeat is an identity step in the reference (ᾱ_prev = ᾱₜ, σ = 0),
//!   so repeats are dropped and the list can be shorter than N. For T ≤ 5 the +1 shift passes
//!   T − 1: an error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DiffusionError;

/// A rule for choosing N of the T timesteps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// diffusers' default: multiples of ⌊T/N⌋ from 0.
    #[default]
    Leading,
    /// Counts down from T − 1 in strides of T/N (Lin et al. 2023: starts at the noisiest step).
    Trailing,
    /// N points evenly from 0 to T − 1, rounded.
    Linspace,
    /// DDIM reference: multiples of ⌊T/N⌋, plus one.
    Uniform,
    /// DDIM reference: quadratically spaced, plus one (denser near the data).
    Quad,
}

impl Spacing {
    pub const ALL: [Spacing; 5] = [
        Self::Leading,
        Self::Trailing,
        Self::Linspace,
        Self::Uniform,
        Self::Quad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Leading => "leading",
            Self::Trailing => "trailing",
            Self::Linspace => "linspace",
            Self::Uniform => "uniform",
            Self::Quad => "quad",
        }
    }

    /// The previous timestep of the last visited entry: `None` means x₀ itself (ᾱ_prev = 1).
    pub fn final_prev(self) -> Option<usize> {
        match self {
            Self::Uniform | Self::Quad => Some(0),
            Self::Leading | Self::Trailing | Self::Linspace => None,
        }
    }
}

impl fmt::Display for Spacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Spacing {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|sp| sp.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|sp| sp.name()).collect();
                DiffusionError::new(
                    "sampler",
                    "spacing",
                    format!(
                        "unknown spacing `{s}`; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// One reverse step: from timestep `t` to `prev` (`None`: to x₀, where ᾱ_prev = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPair {
    pub t: usize,
    pub prev: Option<usize>,
}

fn bad_steps(msg: String) -> DiffusionError {
    DiffusionError::new("sampler", "steps", msg)
}

/// `n` points from 0 to `stop` as numpy's `linspace(0, stop, n)` computes them.
fn np_linspace_from_zero(stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = stop / (n - 1) as f64;
    let mut y: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    y[n - 1] = stop;
    y
}

/// The visited timesteps, descending, for `steps` = N sampling steps over T training timesteps.
/// `steps_offset` shifts `leading` only.
pub fn timesteps(
    spacing: Spacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<usize>, DiffusionError> {
    let (big_t, n) = (num_train_timesteps, steps);
    if big_t == 0 {
        return Err(DiffusionError::new(
            "schedule",
            "num_train_timesteps",
            "must be at least 1, got 0",
        ));
    }
    if n == 0 || n > big_t {
        return Err(bad_steps(format!(
            "must be between 1 and num_train_timesteps = {big_t}, got {n}"
        )));
    }
    let mut ts: Vec<usize> = match spacing {
        Spacing::Leading => {
            let ratio = big_t / n;
            let last = ((n - 1) * ratio).saturating_add(steps_offset);
            if last >= big_t {
                return Err(DiffusionError::new(
                    "schedule",
                    "steps_offset",
                    format!(
                        "{steps_offset} shifts the first of {n} `leading` steps to timestep \
                         {last}, past the last one (T − 1 = {})",
                        big_t - 1
                    ),
                ));
            }
            (0..n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        Spacing::Trailing => {
            // numpy's float arange(T, 0, −r): x₀ = T, x₁ = T − r, xᵢ = T + i·(x₁ − T).
            let tf = big_t as f64;
            let x1 = tf - tf / n as f64;
            let delta = x1 - tf;
            (0..n)
                .map(|i| match i {
                    0 => tf,
                    1 => x1,
                    _ => tf + i as f64 * delta,
                })
                .map(|x| (x.round_ties_even() as i64 - 1).max(0) as usize)
                .collect()
        }
        Spacing::Linspace => np_linspace_from_zero((big_t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| x.round_ties_even() as usize)
            .collect(),
        Spacing::Uniform => {
            let stride = big_t / n;
            (0..n).rev().map(|i| i * stride + 1).collect()
        }
        Spacing::Quad => {
            let mut ts: Vec<usize> = np_linspace_from_zero((big_t as f64 * 0.8).sqrt(), n)
                .into_iter()
                .rev()
                .map(|y| (y * y) as usize + 1)
                .collect();
            ts.dedup();
            ts
        }
    };
    if let Some(&first) = ts.first() {
        if first >= big_t {
            return Err(bad_steps(format!(
                "spacing `{spacing}` with {n} steps over T = {big_t} would visit timestep \
                 {first}, past the last one (T − 1 = {}) because of its +1 shift; use fewer \
                 steps or another spacing",
                big_t - 1
            )));
        }
    }
    ts.shrink_to_fit();
    debug_assert!(ts.windows(2).all(|w| w[0] > w[1]), "{spacing}: {ts:?}");
    Ok(ts)
}

/// The (t, prev) pairs the sampler steps through, in order.
pub fn step_pairs(
    spacing: Spacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<StepPair>, DiffusionError> {
    let ts = timesteps(spacing, num_train_timesteps, steps, steps_offset)?;
    Ok(ts
        .iter()
        .enumerate()
        .map(|(i, &t)| StepPair {
            t,
            prev: ts.get(i + 1).copied().or(spacing.final_prev()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_fromstr_and_serde() {
        for sp in Spacing::ALL {
            assert_eq!(sp.name().parse::<Spacing>().unwrap(), sp);
            let json = serde_json::to_string(&sp).unwrap();
            assert_eq!(json, format!("\"{}\"", sp.name()));
        }
        let e = "cosine".parse::<Spacing>().unwrap_err().to_string();
        assert!(e.contains("`spacing`") && e.contains("trailing"), "{e}");
    }
}
