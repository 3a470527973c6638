//! Finite-difference gradient checking for the hand-written backwards.
//!
//! For a scalar loss L(x₁, …, x_m) the checker compares each analytic ∂L/∂x[i] with the central
//! difference (L(x + h·e_i) − L(x − h·e_i)) / 2h. Ops are checked through the random projection
//! L = Σ y ⊙ r (so dL/dy = r), in f64, where the difference has error O(h²) + O(ε_f64·|L|/h).
//!
//! A coordinate passes when |analytic − numeric| ≤ atol + rtol · max(|analytic|, |numeric|).
//! With the defaults (h = 1e-5, atol = 1e-7, rtol = 1e-5) a correct f64 backward shows errors
//! around 1e-9 or below, while a dropped or wrong term shows errors of the size of the gradient
//! itself, so the two cannot be confused.

use std::fmt;

use crate::rng::Philox;

#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Central-difference step h.
    pub step: f64,
    pub atol: f64,
    pub rtol: f64,
    /// Coordinates checked per tensor; larger tensors are checked at a random sample this size.
    pub max_coords: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            step: 1e-5,
            atol: 1e-7,
            rtol: 1e-5,
            max_coords: 400,
        }
    }
}

/// The outcome for one input tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub checked: usize,
    pub failures: usize,
    pub max_abs_err: f64,
    /// The coordinate with the largest error relative to its allowance: (index, analytic, numeric).
    pub worst: Option<(usize, f64, f64)>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub tensors: Vec<TensorReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.tensors
            .iter()
            .all(|t| t.failures == 0 && t.checked > 0)
    }

    pub fn max_abs_err(&self) -> f64 {
        self.tensors
            .iter()
            .map(|t| t.max_abs_err)
            .fold(0.0, f64::max)
    }

    /// Panics with the full report unless every coordinate passed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "gradient check failed:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tensors {
            write!(
                f,
                "  {:<12} {:>5} coords, {:>3} failed, max |err| {:.2e}",
                t.name, t.checked, t.failures, t.max_abs_err
            )?;
            if let Some((i, a, n)) = t.worst {
                write!(f, " (worst at [{i}]: analytic {a:.6e}, numeric {n:.6e})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl GradCheck {
    /// Checks `analytic[j]` = ∂loss/∂inputs[j] for every named input tensor.
    pub fn run(
        &self,
        inputs: &[(&str, Vec<f64>)],
        analytic: &[Vec<f64>],
        loss: impl Fn(&[Vec<f64>]) -> f64,
    ) -> Report {
        assert_eq!(
            inputs.len(),
            analytic.len(),
            "one analytic gradient per input"
        );
        let mut point: Vec<Vec<f64>> = inputs.iter().map(|(_, v)| v.clone()).collect();
        let mut tensors = Vec::new();
        for (j, (name, x)) in inputs.iter().enumerate() {
            assert_eq!(
                x.len(),
                analytic[j].len(),
                "gradient of `{name}` has the wrong length"
            );
            let mut rep = TensorReport {
                name: name.to_string(),
                checked: 0,
                failures: 0,
                max_abs_err: 0.0,
                worst: None,
            };
            let mut worst_ratio = -1.0;
            for i in self.coordinates(x.len(), j as u64) {
                let orig = point[j][i];
                point[j][i] = orig + self.step;
                let up = loss(&point);
                point[j][i] = orig - self.step;
                let down = loss(&point);
                point[j][i] = orig;
                let numeric = (up - down) / (2.0 * self.step);
                let a = analytic[j][i];
                let err = (a - numeric).abs();
                let allowed = self.atol + self.rtol * a.abs().max(numeric.abs());
                rep.checked += 1;
                rep.max_abs_err = rep.max_abs_err.max(err);
                // NaN errors fail too.
                if err.is_nan() || err > allowed {
                    rep.failures += 1;
                }
                let ratio = if err.is_nan() {
                    f64::INFINITY
                } else {
                    err / allowed
                };
                if ratio > worst_ratio {
                    worst_ratio = ratio;
                    rep.worst = Some((i, a, numeric));
                }
            }
            tensors.push(rep);
        }
        Report { tensors }
    }

    /// All indices, or a reproducible random sample of `max_coords` of them.
    fn coordinates(&self, len: usize, salt: u64) -> Vec<usize> {
        if len <= self.max_coords {
            return (0..len).collect();
        }
        let mut rng = Philox::with_stream(0x6772_6164, salt);
        let mut idx: Vec<usize> = (0..len).collect();
        for k in 0..self.max_coords {
            let pick = k + (rng.next_u32() as usize) % (len - k);
            idx.swap(k, pick);
        }
        idx.truncate(self.max_coords);
        idx
    }
}

/// Σ y ⊙ r: the scalar through which an op with output y is checked (its dL/dy is r).
pub fn project(y: &[f64], r: &[f64]) -> f64 {
    assert_eq!(y.len(), r.len());
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}
