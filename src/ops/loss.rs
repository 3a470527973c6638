//! Mean-reduced regression losses: MSE (the DDPM "simple" objective, Ho et al. 2020 eq. 14) and
//! L1. Sums accumulate in f64 (MSE in low precision is a known trap). Saved for backward: the
//! inputs.

use rayon::prelude::*;

use super::PAR_CHUNK;
use crate::float::Real;
use crate::shape::expect_len;

fn check(op: &str, pred: &[impl Sized], target: &[impl Sized]) {
    expect_len(
        op,
        "target",
        target.len(),
        pred.len(),
        format!("({})", pred.len()),
    );
}

/// mean((pred − target)²)
pub fn mse_forward<T: Real>(pred: &[T], target: &[T]) -> T {
    check("mse_forward", pred, target);
    mean_of(pred, target, |d| d * d)
}

/// dpred = 2 (pred − target) / N · dloss  (written)
pub fn mse_backward<T: Real>(pred: &[T], target: &[T], dloss: T, dpred: &mut [T]) {
    check("mse_backward", pred, target);
    let k = dloss * T::lit(2.0 / pred.len().max(1) as f64);
    map_into(pred, target, dpred, "mse_backward", |d| k * d);
}

/// mean(|pred − target|)
pub fn l1_forward<T: Real>(pred: &[T], target: &[T]) -> T {
    check("l1_forward", pred, target);
    mean_of(pred, target, |d| d.abs())
}

/// dpred = sign(pred − target) / N · dloss, with sign(0) = 0  (written)
pub fn l1_backward<T: Real>(pred: &[T], target: &[T], dloss: T, dpred: &mut [T]) {
    check("l1_backward", pred, target);
    let k = dloss * T::lit(1.0 / pred.len().max(1) as f64);
    map_into(pred, target, dpred, "l1_backward", |d| {
        if d > T::zero() {
            k
        } else if d < T::zero() {
            -k
        } else {
            T::zero()
        }
    });
}

/// Chunked f64 partial sums, added in chunk order: deterministic for any thread count.
fn mean_of<T: Real>(pred: &[T], target: &[T], f: impl Fn(T) -> T + Sync) -> T {
    let partials: Vec<f64> = pred
        .par_chunks(PAR_CHUNK)
        .zip(target.par_chunks(PAR_CHUNK))
        .map(|(p, t)| p.iter().zip(t).map(|(&a, &b)| f(a - b).as_f64()).sum())
        .collect();
    T::lit(partials.iter().sum::<f64>() / pred.len().max(1) as f64)
}

fn map_into<T: Real>(pred: &[T], target: &[T], out: &mut [T], op: &str, f: impl Fn(T) -> T + Sync) {
    expect_len(
        op,
        "dpred",
        out.len(),
        pred.len(),
        format!("({})", pred.len()),
    );
    out.par_chunks_mut(PAR_CHUNK)
        .zip(pred.par_chunks(PAR_CHUNK).zip(target.par_chunks(PAR_CHUNK)))
        .for_each(|(o, (p, t))| {
            for ((ov, &a), &b) in o.iter_mut().zip(p).zip(t) {
                *ov = f(a - b);
            }
        });
}
