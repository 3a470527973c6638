//! The gradient checker must fail on a wrong backward; otherwise `gradcheck_ops` proves nothing.
//! Each test builds a plausible bug — one perturbed entry, a dropped term — and expects failure.

mod common;

use common::{normal, uniform};
use ddpm::float::sigmoid;
use ddpm::gradcheck::{project, GradCheck};
use ddpm::ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dShape, Padding};
use ddpm::ops::groupnorm::{
    group_norm_backward, group_norm_forward, group_norm_silu_backward, group_norm_silu_forward,
    Affine, GroupNormShape,
};
use ddpm::ops::silu::{silu_backward, silu_forward};
use ddpm::shape::Nchw;

#[test]
fn one_perturbed_weight_gradient_entry_is_caught_and_located() {
    let s = Conv2dShape::new(Nchw::new(2, 2, 5, 4), 3, (3, 3), (1, 1), Padding::same(1)).unwrap();
    let (x, w) = (uniform(s.input.len(), 1), uniform(s.weight_len(), 2));
    let r = normal(s.output().len(), 3);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; s.output().len()];
        conv2d_forward(&s, &v[0], &v[1], None, &mut y);
        project(&y, &r)
    };
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    conv2d_backward(&s, &x, &w, &r, Some(&mut dx), &mut dw, None);
    let inputs = [("x", x), ("weight", w)];
    let check = GradCheck::default();
    assert!(
        check.run(&inputs, &[dx.clone(), dw.clone()], fwd).passed(),
        "the correct backward must pass"
    );

    // A relative error of 1e-3 in a single entry is 100× the tolerance.
    dw[17] *= 1.001;
    let report = check.run(&inputs, &[dx, dw], fwd);
    assert!(!report.passed());
    let wr = &report.tensors[1];
    assert_eq!((wr.name.as_str(), wr.failures), ("weight", 1), "{report}");
    assert_eq!(wr.worst.unwrap().0, 17, "{report}");
    assert_eq!(report.tensors[0].failures, 0, "{report}");
}

#[test]
fn group_norm_backward_without_the_mean_terms_is_caught() {
    let shape = Nchw::new(2, 4, 3, 3);
    let s = GroupNormShape::new(shape, 2, 1e-5).unwrap();
    let x: Vec<f64> = uniform(shape.len(), 10)
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let (gamma, beta) = (uniform(4, 11), uniform(4, 12));
    let affine = Affine {
        gamma: &gamma,
        beta: &beta,
    };
    let r = normal(shape.len(), 13);
    let fwd = |v: &[Vec<f64>]| {
        let (mut y, mut m, mut rs) = (vec![0.0; shape.len()], vec![0.0; 4], vec![0.0; 4]);
        group_norm_forward(&s, &v[0], Some(affine), &mut y, &mut m, &mut rs);
        project(&y, &r)
    };
    let (mut y, mut mean, mut rstd) = (vec![0.0; shape.len()], vec![0.0; 4], vec![0.0; 4]);
    group_norm_forward(&s, &x, Some(affine), &mut y, &mut mean, &mut rstd);
    let mut dx = vec![0.0; x.len()];
    group_norm_backward(&s, &x, Some(&gamma), &mean, &rstd, &r, &mut dx, None);
    let check = GradCheck::default();
    assert!(check.run(&[("x", x.clone())], &[dx], fwd).passed());

    // The classic mistake: treating mean and variance as constants, dx = rstd · γ · dy.
    let group = shape.len() / 4;
    let naive: Vec<f64> = (0..x.len())
        .map(|i| rstd[i / group] * gamma[(i / shape.hw()) % 4] * r[i])
        .collect();
    let report = check.run(&[("x", x)], &[naive], fwd);
    assert!(!report.passed(), "{report}");
    assert!(report.tensors[0].failures > shape.len() / 2, "{report}");
}

#[test]
fn fused_group_norm_silu_backward_missing_a_term_is_caught() {
    let shape = Nchw::new(2, 4, 3, 3);
    let s = GroupNormShape::new(shape, 2, 1e-5).unwrap();
    let x: Vec<f64> = uniform(shape.len(), 40)
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let (gamma, beta) = (uniform(4, 41), uniform(4, 42));
    let affine = Affine {
        gamma: &gamma,
        beta: &beta,
    };
    let r = normal(shape.len(), 43);
    let fwd = |v: &[Vec<f64>]| {
        let (mut a, mut m, mut rs) = (vec![0.0; shape.len()], vec![0.0; 4], vec![0.0; 4]);
        group_norm_silu_forward(&s, &v[0], Some(affine), &mut a, &mut m, &mut rs);
        project(&a, &r)
    };
    let (mut a, mut mean, mut rstd) = (vec![0.0; shape.len()], vec![0.0; 4], vec![0.0; 4]);
    group_norm_silu_forward(&s, &x, Some(affine), &mut a, &mut mean, &mut rstd);
    let mut dx = vec![0.0; x.len()];
    group_norm_silu_backward(&s, &x, Some(affine), &mean, &rstd, &r, &mut dx, None);
    let check = GradCheck::default();
    assert!(check.run(&[("x", x.clone())], &[dx], fwd).passed());

    // The SiLU's product rule without its y·σ'(y) part: dy = da · σ(y), then the norm's backward.
    let mut y = vec![0.0; x.len()];
    group_norm_forward(&s, &x, Some(affine), &mut y, &mut mean, &mut rstd);
    let dy: Vec<f64> = y.iter().zip(&r).map(|(&v, &g)| g * sigmoid(v)).collect();
    let mut wrong = vec![0.0; x.len()];
    group_norm_backward(&s, &x, Some(&gamma), &mean, &rstd, &dy, &mut wrong, None);
    let report = check.run(&[("x", x)], &[wrong], fwd);
    assert!(!report.passed(), "{report}");
}

#[test]
fn silu_backward_missing_a_term_is_caught() {
    let x: Vec<f64> = uniform(31, 20).iter().map(|v| 3.0 * v).collect();
    let r = normal(31, 21);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 31];
        silu_forward(&v[0], &mut y);
        project(&y, &r)
    };
    let mut dx = vec![0.0; 31];
    silu_backward(&x, &r, &mut dx);
    assert!(GradCheck::default()
        .run(&[("x", x.clone())], &[dx], fwd)
        .passed());
    // Dropping the x·σ'(x) part of the product rule: dx = dy · σ(x).
    let wrong: Vec<f64> = x.iter().zip(&r).map(|(&xv, &g)| g * sigmoid(xv)).collect();
    assert!(!GradCheck::default()
        .run(&[("x", x)], &[wrong], fwd)
        .passed());
}

#[test]
fn a_residual_block_that_forgets_the_skip_path_is_caught() {
    // y = x + silu(x); a backward through the branch alone misses dy on the skip path.
    let x = uniform(19, 30);
    let r = normal(19, 31);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 19];
        silu_forward(&v[0], &mut y);
        let y: Vec<f64> = y.iter().zip(&v[0]).map(|(a, b)| a + b).collect();
        project(&y, &r)
    };
    let mut branch = vec![0.0; 19];
    silu_backward(&x, &r, &mut branch);
    let full: Vec<f64> = branch.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert!(GradCheck::default()
        .run(&[("x", x.clone())], &[full], fwd)
        .passed());
    assert!(!GradCheck::default()
        .run(&[("x", x)], &[branch], fwd)
        .passed());
}
