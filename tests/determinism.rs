//! The CPU backend is deterministic: the same inputs give bitwise-identical results on every run
//! and for any number of threads (work is split over outputs or fixed groups, never by thread).

mod common;

use common::{to_f32, uniform, with_threads};
use ddpm::ops::add::add_channel_bias_backward;
use ddpm::ops::attention::{attention_backward, attention_forward, AttentionShape};
use ddpm::ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dShape, Padding};
use ddpm::ops::dropout::{dropout_forward, DropoutArgs};
use ddpm::ops::groupnorm::{
    group_norm_backward, group_norm_forward, group_norm_silu_backward, group_norm_silu_forward,
    Affine, GroupNormShape,
};
use ddpm::ops::layout::{nchw_to_tokens, tokens_to_nchw};
use ddpm::ops::linear::{linear_backward, linear_forward, LinearShape};
use ddpm::ops::loss::mse_forward;
use ddpm::ops::silu::{silu_backward, silu_forward};
use ddpm::optim::global_grad_norm;
use ddpm::shape::Nchw;

/// Forward and backward of several ops in f32, every output concatenated.
fn run_all() -> Vec<f32> {
    let mut out = Vec::new();

    let s = Conv2dShape::new(
        Nchw::new(9, 8, 12, 11),
        16,
        (3, 3),
        (1, 1),
        Padding::same(1),
    )
    .unwrap();
    let (x, w, b) = (
        to_f32(&uniform(s.input.len(), 1)),
        to_f32(&uniform(s.weight_len(), 2)),
        to_f32(&uniform(16, 3)),
    );
    let mut y = vec![0.0; s.output().len()];
    conv2d_forward(&s, &x, &w, Some(&b), &mut y);
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; 16]);
    conv2d_backward(&s, &x, &w, &y, Some(&mut dx), &mut dw, Some(&mut db));
    out.extend([y, dx, dw, db].concat());

    // Large enough that gemm splits the product across threads.
    let l = LinearShape::new(512, 256, 384);
    let (x, w) = (
        to_f32(&uniform(512 * 256, 4)),
        to_f32(&uniform(384 * 256, 5)),
    );
    let mut y = vec![0.0; 512 * 384];
    linear_forward(&l, &x, &w, None, &mut y);
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    linear_backward(&l, &x, &w, &y, Some(&mut dx), &mut dw, None);
    out.extend([y, dx, dw].concat());

    let shape = Nchw::new(3, 32, 9, 9);
    let g = GroupNormShape::new(shape, 8, 1e-5).unwrap();
    let x = to_f32(&uniform(shape.len(), 6));
    let (mut y, mut m, mut r) = (vec![0.0; x.len()], vec![0.0; 24], vec![0.0; 24]);
    group_norm_forward(&g, &x, None, &mut y, &mut m, &mut r);
    let mut dx = vec![0.0; x.len()];
    group_norm_backward(&g, &x, None, &m, &r, &y, &mut dx, None);
    out.extend([y, dx].concat());

    let a = AttentionShape::new(2, 49, 16, 2).unwrap();
    let q = to_f32(&uniform(a.tokens_len(), 7));
    let (mut o, mut p) = (vec![0.0; q.len()], vec![0.0; a.probs_len()]);
    attention_forward(&a, &q, &q, &q, &mut o, &mut p);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
    attention_backward(&a, &q, &q, &q, &p, &o, &mut dq, &mut dk, &mut dv);
    out.extend([o, dq, dk, dv].concat());

    let big = to_f32(&uniform(100_000, 8));
    out.push(mse_forward(&big, &vec![0.25; big.len()]));

    // The fused norm + SiLU of the residual blocks, and the elementwise ops around it.
    let shape = Nchw::new(3, 32, 9, 9);
    let g = GroupNormShape::new(shape, 8, 1e-5).unwrap();
    let x = to_f32(&uniform(shape.len(), 9));
    let (gamma, beta) = (to_f32(&uniform(32, 10)), to_f32(&uniform(32, 11)));
    let aff = Affine {
        gamma: &gamma,
        beta: &beta,
    };
    let (mut a, mut m, mut r) = (vec![0.0; x.len()], vec![0.0; 24], vec![0.0; 24]);
    group_norm_silu_forward(&g, &x, Some(aff), &mut a, &mut m, &mut r);
    let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; 32], vec![0.0; 32]);
    let dparams = Some((dg.as_mut_slice(), db.as_mut_slice()));
    group_norm_silu_backward(&g, &x, Some(aff), &m, &r, &a, &mut dx, dparams);
    let mut dt = vec![0.0; shape.n * shape.c];
    add_channel_bias_backward(shape, &dx, None, &mut dt);
    let (mut tok, mut back) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    nchw_to_tokens(shape, &dx, &mut tok);
    tokens_to_nchw(shape, &tok, &mut back);
    out.extend([a, dx, dg, db, dt, tok, back].concat());

    let (mut y, mut d) = (vec![0.0; big.len()], vec![0.0; big.len()]);
    silu_forward(&big, &mut y);
    silu_backward(&big, &y, &mut d);
    let mut z = vec![0.0; big.len()];
    dropout_forward(&DropoutArgs::new(0.1, 12, 3).unwrap(), &d, &mut z);
    out.extend([y, d, z].concat());

    // Many chunks of the norm's fixed-order reduction.
    let grads = to_f32(&uniform(1_000_003, 13));
    let norm = global_grad_norm(&grads).to_bits();
    out.extend([(norm >> 32) as u32, norm as u32].map(f32::from_bits));
    out
}

#[test]
fn results_are_bitwise_identical_across_runs_and_thread_counts() {
    let one = with_threads(1, run_all);
    let again = with_threads(1, run_all);
    let two = with_threads(2, run_all);
    let five = with_threads(5, run_all);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&again), "two runs on one thread");
    assert_eq!(bits(&one), bits(&two), "1 thread vs 2 threads");
    assert_eq!(bits(&one), bits(&five), "1 thread vs 5 threads");
}
