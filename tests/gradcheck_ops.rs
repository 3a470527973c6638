//! Every CPU op's hand-written backward against central finite differences, in f64, on random
//! inputs of awkward sizes (odd H/W, batch > 1). Tolerance (see `ddpm::gradcheck`): a coordinate
//! passes when |analytic − numeric| ≤ 1e-7 + 1e-5 · max(|analytic|, |numeric|), with h = 1e-5.
//! Each test also prints its report (`cargo test -- --nocapture` shows the max errors).

mod common;

use common::{normal, uniform};
use ddpm::gradcheck::{project, GradCheck, Report};
use ddpm::ops::add::{add, add_backward, add_channel_bias, add_channel_bias_backward, scale};
use ddpm::ops::attention::{attention_backward, attention_forward, AttentionShape};
use ddpm::ops::concat::{concat_channels, split_channels};
use ddpm::ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dShape, Padding};
use ddpm::ops::dropout::{dropout_backward, dropout_forward, DropoutArgs};
use ddpm::ops::embedding::{
    timestep_embedding_backward, timestep_embedding_forward, TimestepEmbedding,
};
use ddpm::ops::groupnorm::{
    group_norm_backward, group_norm_forward, group_norm_silu_backward, group_norm_silu_forward,
    Affine, GroupNormShape,
};
use ddpm::ops::layout::{nchw_to_tokens, tokens_to_nchw};
use ddpm::ops::linear::{linear_backward, linear_forward, LinearShape};
use ddpm::ops::loss::{l1_backward, l1_forward, mse_backward, mse_forward};
use ddpm::ops::silu::{silu_backward, silu_forward};
use ddpm::ops::upsample::{upsample_nearest2x_backward, upsample_nearest2x_forward};
use ddpm::shape::Nchw;

fn check(
    what: &str,
    inputs: &[(&str, Vec<f64>)],
    analytic: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
) -> Report {
    let report = GradCheck::default().run(inputs, analytic, loss);
    println!("{what}:\n{report}");
    report.assert_passed();
    report
}

// ---- conv2d ---------------------------------------------------------------------------------

fn conv_case(
    input: Nchw,
    c_out: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: Padding,
    bias: bool,
    seed: u64,
) {
    let s = Conv2dShape::new(input, c_out, kernel, stride, pad).unwrap();
    let x = uniform(input.len(), seed);
    let w = uniform(s.weight_len(), seed + 1);
    let b = uniform(c_out, seed + 2);
    let r = normal(s.output().len(), seed + 3);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; s.output().len()];
        conv2d_forward(&s, &v[0], &v[1], bias.then_some(v[2].as_slice()), &mut y);
        project(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; c_out]);
    conv2d_backward(
        &s,
        &x,
        &w,
        &r,
        Some(&mut dx),
        &mut dw,
        bias.then_some(db.as_mut_slice()),
    );
    let name = format!("conv2d {input} -> {c_out}, kernel {kernel:?}, stride {stride:?}, {pad:?}");
    // Without a bias the backward leaves db at zero, which is also the true gradient.
    check(
        &name,
        &[("x", x), ("weight", w), ("bias", b)],
        &[dx, dw, db],
        fwd,
    );
}

#[test]
fn conv2d_3x3_same_padding() {
    conv_case(
        Nchw::new(2, 3, 7, 5),
        4,
        (3, 3),
        (1, 1),
        Padding::same(1),
        true,
        10,
    );
}

#[test]
fn conv2d_strided_with_asymmetric_padding() {
    // diffusers Downsample2D with downsample_padding = 0: pad right and bottom by one, stride 2.
    let pad = Padding::bottom_right(1);
    conv_case(Nchw::new(3, 2, 9, 6), 3, (3, 3), (2, 2), pad, true, 20);
}

#[test]
fn conv2d_pointwise() {
    conv_case(
        Nchw::new(2, 4, 5, 3),
        3,
        (1, 1),
        (1, 1),
        Padding::default(),
        true,
        30,
    );
}

#[test]
fn conv2d_rectangular_kernel_uneven_stride_no_bias() {
    let pad = Padding {
        top: 2,
        bottom: 1,
        left: 0,
        right: 2,
    };
    conv_case(Nchw::new(2, 2, 8, 7), 2, (5, 3), (2, 1), pad, false, 40);
}

#[test]
fn conv2d_weight_grads_accumulate_across_many_images() {
    // Batch larger than the number of weight-gradient groups: the grouped reduction must still
    // sum every image.
    conv_case(
        Nchw::new(11, 2, 4, 3),
        2,
        (3, 3),
        (1, 1),
        Padding::same(1),
        true,
        50,
    );
}

// ---- linear ---------------------------------------------------------------------------------

#[test]
fn linear() {
    let s = LinearShape::new(5, 7, 3);
    let (x, w, b) = (uniform(35, 1), uniform(21, 2), uniform(3, 3));
    let r = normal(15, 4);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 15];
        linear_forward(&s, &v[0], &v[1], Some(&v[2]), &mut y);
        project(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; 35], vec![0.0; 21], vec![0.0; 3]);
    linear_backward(&s, &x, &w, &r, Some(&mut dx), &mut dw, Some(&mut db));
    check(
        "linear (5, 7) -> 3",
        &[("x", x), ("weight", w), ("bias", b)],
        &[dx, dw, db],
        fwd,
    );
}

// ---- group norm -----------------------------------------------------------------------------

fn group_norm_case(shape: Nchw, groups: usize, affine: bool, seed: u64) {
    let s = GroupNormShape::new(shape, groups, 1e-5).unwrap();
    // Offset and scale the input so the statistics are far from (0, 1).
    let x: Vec<f64> = uniform(shape.len(), seed)
        .iter()
        .map(|v| 3.0 * v + 0.7)
        .collect();
    let gamma: Vec<f64> = uniform(shape.c, seed + 1)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = uniform(shape.c, seed + 2);
    let r = normal(shape.len(), seed + 3);
    let fwd = |v: &[Vec<f64>]| {
        let (mut y, mut m, mut rs) = (
            vec![0.0; shape.len()],
            vec![0.0; s.stats_len()],
            vec![0.0; s.stats_len()],
        );
        let aff = affine.then(|| Affine {
            gamma: &v[1],
            beta: &v[2],
        });
        group_norm_forward(&s, &v[0], aff, &mut y, &mut m, &mut rs);
        project(&y, &r)
    };
    let (mut y, mut mean, mut rstd) = (
        vec![0.0; shape.len()],
        vec![0.0; s.stats_len()],
        vec![0.0; s.stats_len()],
    );
    let aff = affine.then(|| Affine {
        gamma: &gamma,
        beta: &beta,
    });
    group_norm_forward(&s, &x, aff, &mut y, &mut mean, &mut rstd);
    let (mut dx, mut dg, mut dbeta) = (vec![0.0; x.len()], vec![0.0; shape.c], vec![0.0; shape.c]);
    let dparams = affine.then_some((dg.as_mut_slice(), dbeta.as_mut_slice()));
    group_norm_backward(
        &s,
        &x,
        affine.then_some(gamma.as_slice()),
        &mean,
        &rstd,
        &r,
        &mut dx,
        dparams,
    );
    let name = format!("group_norm {shape}, {groups} groups, affine {affine}");
    check(
        &name,
        &[("x", x), ("gamma", gamma), ("beta", beta)],
        &[dx, dg, dbeta],
        fwd,
    );
}

#[test]
fn group_norm_affine() {
    group_norm_case(Nchw::new(2, 6, 5, 3), 3, true, 100);
}

#[test]
fn group_norm_one_group_without_affine() {
    group_norm_case(Nchw::new(3, 4, 3, 3), 1, false, 110);
}

#[test]
fn group_norm_one_channel_per_group() {
    group_norm_case(Nchw::new(2, 5, 3, 7), 5, true, 120);
}

/// The fused a = silu(group_norm(x)) of the residual blocks (what the CPU backend runs for
/// `group_norm_silu_forward` / `_backward`), checked as one op.
fn group_norm_silu_case(shape: Nchw, groups: usize, affine: bool, seed: u64) {
    let s = GroupNormShape::new(shape, groups, 1e-5).unwrap();
    let x: Vec<f64> = uniform(shape.len(), seed)
        .iter()
        .map(|v| 3.0 * v + 0.7)
        .collect();
    let gamma: Vec<f64> = uniform(shape.c, seed + 1)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = uniform(shape.c, seed + 2);
    let r = normal(shape.len(), seed + 3);
    let fwd = |v: &[Vec<f64>]| {
        let (mut a, mut m, mut rs) = (
            vec![0.0; shape.len()],
            vec![0.0; s.stats_len()],
            vec![0.0; s.stats_len()],
        );
        let aff = affine.then(|| Affine {
            gamma: &v[1],
            beta: &v[2],
        });
        group_norm_silu_forward(&s, &v[0], aff, &mut a, &mut m, &mut rs);
        project(&a, &r)
    };
    let (mut a, mut mean, mut rstd) = (
        vec![0.0; shape.len()],
        vec![0.0; s.stats_len()],
        vec![0.0; s.stats_len()],
    );
    let aff = affine.then(|| Affine {
        gamma: &gamma,
        beta: &beta,
    });
    group_norm_silu_forward(&s, &x, aff, &mut a, &mut mean, &mut rstd);
    let (mut dx, mut dg, mut dbeta) = (vec![0.0; x.len()], vec![0.0; shape.c], vec![0.0; shape.c]);
    let dparams = affine.then_some((dg.as_mut_slice(), dbeta.as_mut_slice()));
    group_norm_silu_backward(&s, &x, aff, &mean, &rstd, &r, &mut dx, dparams);
    let name = format!("group_norm + silu (fused) {shape}, {groups} groups, affine {affine}");
    check(
        &name,
        &[("x", x), ("gamma", gamma), ("beta", beta)],
        &[dx, dg, dbeta],
        fwd,
    );
}

#[test]
fn group_norm_silu_fused_affine() {
    group_norm_silu_case(Nchw::new(2, 6, 5, 3), 3, true, 130);
}

#[test]
fn group_norm_silu_fused_without_affine() {
    group_norm_silu_case(Nchw::new(3, 4, 3, 3), 1, false, 140);
}

#[test]
fn group_norm_silu_fused_one_channel_per_group() {
    group_norm_silu_case(Nchw::new(2, 5, 3, 7), 5, true, 150);
}

// ---- elementwise ----------------------------------------------------------------------------

#[test]
fn silu() {
    let x: Vec<f64> = uniform(37, 200).iter().map(|v| 4.0 * v).collect();
    let r = normal(37, 201);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 37];
        silu_forward(&v[0], &mut y);
        project(&y, &r)
    };
    let mut dx = vec![0.0; 37];
    silu_backward(&x, &r, &mut dx);
    check("silu", &[("x", x)], &[dx], fwd);
}

#[test]
fn dropout() {
    let a = DropoutArgs::new(0.3, 42, 7).unwrap();
    let x = uniform(101, 300);
    let r = normal(101, 301);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 101];
        dropout_forward(&a, &v[0], &mut y);
        project(&y, &r)
    };
    let mut dx = vec![0.0; 101];
    dropout_backward(&a, &r, &mut dx);
    check("dropout p = 0.3", &[("x", x)], &[dx], fwd);
}

#[test]
fn residual_add_and_scale() {
    let (a, b) = (uniform(29, 400), uniform(29, 401));
    let r = normal(29, 402);
    // y = 0.7 · (a + b), the diffusers residual with output_scale_factor.
    let alpha = 0.7;
    let fwd = |v: &[Vec<f64>]| {
        let (mut s, mut y) = (vec![0.0; 29], vec![0.0; 29]);
        add(&v[0], &v[1], &mut s);
        scale(&s, alpha, &mut y);
        project(&y, &r)
    };
    let mut ds = vec![0.0; 29];
    scale(&r, alpha, &mut ds); // the backward of scale is scale
    let (mut da, mut db) = (vec![0.0; 29], vec![0.0; 29]);
    add_backward(&ds, &mut da, &mut db);
    check("add + scale", &[("a", a), ("b", b)], &[da, db], fwd);
}

#[test]
fn channel_bias_add() {
    let shape = Nchw::new(2, 3, 4, 5);
    let (x, t) = (uniform(shape.len(), 410), uniform(6, 411));
    let r = normal(shape.len(), 412);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; shape.len()];
        add_channel_bias(shape, &v[0], &v[1], &mut y);
        project(&y, &r)
    };
    let (mut dx, mut dt) = (vec![0.0; shape.len()], vec![0.0; 6]);
    add_channel_bias_backward(shape, &r, Some(&mut dx), &mut dt);
    check("add_channel_bias", &[("x", x), ("t", t)], &[dx, dt], fwd);
}

// ---- resampling and layout --------------------------------------------------------------------

#[test]
fn upsample_nearest2x() {
    let shape = Nchw::new(2, 3, 3, 5);
    let x = uniform(shape.len(), 500);
    let r = normal(4 * shape.len(), 501);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 4 * shape.len()];
        upsample_nearest2x_forward(shape, &v[0], &mut y);
        project(&y, &r)
    };
    let mut dx = vec![0.0; shape.len()];
    upsample_nearest2x_backward(shape, &r, &mut dx);
    check("upsample_nearest2x", &[("x", x)], &[dx], fwd);
}

#[test]
fn concat_channels_and_split() {
    let (a_shape, b_shape) = (Nchw::new(2, 2, 3, 3), Nchw::new(2, 3, 3, 3));
    let out = a_shape.with_c(5);
    let (a, b) = (uniform(a_shape.len(), 510), uniform(b_shape.len(), 511));
    let r = normal(out.len(), 512);
    let fwd = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; out.len()];
        concat_channels(out, &[(&v[0], 2), (&v[1], 3)], &mut y);
        project(&y, &r)
    };
    let (mut da, mut db) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    split_channels(out, &r, &mut [(&mut da, 2), (&mut db, 3)]);
    check("concat_channels", &[("a", a), ("b", b)], &[da, db], fwd);
}

#[test]
fn token_layout() {
    let shape = Nchw::new(2, 3, 3, 5);
    let x = uniform(shape.len(), 520);
    let r = normal(shape.len(), 521);
    let fwd = |v: &[Vec<f64>]| {
        let mut t = vec![0.0; shape.len()];
        nchw_to_tokens(shape, &v[0], &mut t);
        project(&t, &r)
    };
    let mut dx = vec![0.0; shape.len()];
    tokens_to_nchw(shape, &r, &mut dx);
    check("nchw_to_tokens", &[("x", x)], &[dx], fwd);
}

// ---- attention ------------------------------------------------------------------------------

fn attention_case(batch: usize, len: usize, channels: usize, heads: usize, seed: u64) {
    let s = AttentionShape::new(batch, len, channels, heads).unwrap();
    let n = s.tokens_len();
    let (q, k, v) = (uniform(n, seed), uniform(n, seed + 1), uniform(n, seed + 2));
    let r = normal(n, seed + 3);
    let fwd = |t: &[Vec<f64>]| {
        let (mut out, mut p) = (vec![0.0; n], vec![0.0; s.probs_len()]);
        attention_forward(&s, &t[0], &t[1], &t[2], &mut out, &mut p);
        project(&out, &r)
    };
    let (mut out, mut probs) = (vec![0.0; n], vec![0.0; s.probs_len()]);
    attention_forward(&s, &q, &k, &v, &mut out, &mut probs);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    attention_backward(&s, &q, &k, &v, &probs, &r, &mut dq, &mut dk, &mut dv);
    let name = format!("attention B={batch} L={len} C={channels} heads={heads}");
    check(&name, &[("q", q), ("k", k), ("v", v)], &[dq, dk, dv], fwd);
}

#[test]
fn attention_single_head() {
    attention_case(2, 7, 6, 1, 600);
}

#[test]
fn attention_multi_head() {
    attention_case(3, 5, 6, 3, 610);
}

/// Self-attention over the spatial positions of an NCHW map, as in the UNet attention block:
/// tokens → q, k, v projections → 2-head attention → output projection → NCHW → + x.
#[test]
fn spatial_self_attention_block() {
    let shape = Nchw::new(2, 4, 3, 3);
    let (c, l) = (shape.c, shape.hw());
    let rows = shape.n * l;
    let lin = LinearShape::new(rows, c, c);
    let att = AttentionShape::new(shape.n, l, c, 2).unwrap();
    let names = ["x", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"];
    let sizes = [shape.len(), c * c, c, c * c, c, c * c, c, c * c, c];
    let init: Vec<Vec<f64>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| uniform(n, 700 + i as u64))
        .collect();
    let r = normal(shape.len(), 799);

    struct Saved {
        tokens: Vec<f64>,
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
        probs: Vec<f64>,
        attn: Vec<f64>,
        y: Vec<f64>,
    }
    let forward = |p: &[Vec<f64>]| -> Saved {
        let mut tokens = vec![0.0; shape.len()];
        nchw_to_tokens(shape, &p[0], &mut tokens);
        let proj = |w: &[f64], b: &[f64]| {
            let mut o = vec![0.0; rows * c];
            linear_forward(&lin, &tokens, w, Some(b), &mut o);
            o
        };
        let (q, k, v) = (proj(&p[1], &p[2]), proj(&p[3], &p[4]), proj(&p[5], &p[6]));
        let (mut attn, mut probs) = (vec![0.0; rows * c], vec![0.0; att.probs_len()]);
        attention_forward(&att, &q, &k, &v, &mut attn, &mut probs);
        let mut o = vec![0.0; rows * c];
        linear_forward(&lin, &attn, &p[7], Some(&p[8]), &mut o);
        let mut o_nchw = vec![0.0; shape.len()];
        tokens_to_nchw(shape, &o, &mut o_nchw);
        let mut y = vec![0.0; shape.len()];
        add(&o_nchw, &p[0], &mut y);
        Saved {
            tokens,
            q,
            k,
            v,
            probs,
            attn,
            y,
        }
    };
    let fwd = |p: &[Vec<f64>]| project(&forward(p).y, &r);

    let sv = forward(&init);
    let mut grads: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    // y = o + x: the residual path hands r to both.
    let (mut do_nchw, mut dx_skip) = (vec![0.0; shape.len()], vec![0.0; shape.len()]);
    add_backward(&r, &mut do_nchw, &mut dx_skip);
    let mut do_tok = vec![0.0; rows * c];
    nchw_to_tokens(shape, &do_nchw, &mut do_tok);
    let mut dattn = vec![0.0; rows * c];
    {
        let (dw, db) = two(&mut grads, 7, 8);
        linear_backward(
            &lin,
            &sv.attn,
            &init[7],
            &do_tok,
            Some(&mut dattn),
            dw,
            Some(db),
        );
    }
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; rows * c],
        vec![0.0; rows * c],
        vec![0.0; rows * c],
    );
    attention_backward(
        &att, &sv.q, &sv.k, &sv.v, &sv.probs, &dattn, &mut dq, &mut dk, &mut dv,
    );
    let mut dtokens = vec![0.0; rows * c];
    for (dproj, wi) in [(&dq, 1), (&dk, 3), (&dv, 5)] {
        let mut part = vec![0.0; rows * c];
        let (dw, db) = two(&mut grads, wi, wi + 1);
        linear_backward(
            &lin,
            &sv.tokens,
            &init[wi],
            dproj,
            Some(&mut part),
            dw,
            Some(db),
        );
        dtokens.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    tokens_to_nchw(shape, &dtokens, &mut grads[0]);
    grads[0].iter_mut().zip(&dx_skip).for_each(|(a, b)| *a += b);

    let inputs: Vec<(&str, Vec<f64>)> = names.iter().copied().zip(init.iter().cloned()).collect();
    check("spatial self-attention block", &inputs, &grads, fwd);
}

fn two(v: &mut [Vec<f64>], i: usize, j: usize) -> (&mut [f64], &mut [f64]) {
    let [a, b] = v.get_disjoint_mut([i, j]).unwrap();
    (a.as_mut_slice(), b.as_mut_slice())
}

// ---- timestep embedding -----------------------------------------------------------------------

fn embedding_case(dim: usize, flip: bool, shift: f64) {
    let e = TimestepEmbedding::new(dim, flip, shift).unwrap();
    // Continuous t over the whole DDPM range, including fractional values.
    let t: Vec<f64> = uniform(4, 800 + dim as u64)
        .iter()
        .map(|v| 500.0 * (v + 1.0))
        .collect();
    let r = normal(4 * dim, 801);
    let fwd = |v: &[Vec<f64>]| {
        let mut emb = vec![0.0; 4 * dim];
        timestep_embedding_forward(&e, &v[0], &mut emb);
        project(&emb, &r)
    };
    let mut dt = vec![0.0; 4];
    timestep_embedding_backward(&e, &t, &r, &mut dt);
    check(
        &format!("timestep_embedding dim {dim}, flip {flip}, shift {shift}"),
        &[("t", t)],
        &[dt],
        fwd,
    );
}

#[test]
fn timestep_embedding_variants() {
    embedding_case(8, true, 0.0);
    embedding_case(9, false, 1.0);
    embedding_case(32, false, 0.0);
}

// ---- losses ---------------------------------------------------------------------------------

#[test]
fn mse_loss() {
    let (p, t) = (uniform(23, 900), uniform(23, 901));
    let fwd = |v: &[Vec<f64>]| 1.7 * mse_forward(&v[0], &v[1]);
    let mut dp = vec![0.0; 23];
    mse_backward(&p, &t, 1.7, &mut dp);
    let dt: Vec<f64> = dp.iter().map(|g| -g).collect();
    check("mse", &[("pred", p), ("target", t)], &[dp, dt], fwd);
}

#[test]
fn l1_loss() {
    let (p, t) = (uniform(23, 910), uniform(23, 911));
    let fwd = |v: &[Vec<f64>]| 0.6 * l1_forward(&v[0], &v[1]);
    let mut dp = vec![0.0; 23];
    l1_backward(&p, &t, 0.6, &mut dp);
    let dt: Vec<f64> = dp.iter().map(|g| -g).collect();
    check("l1", &[("pred", p), ("target", t)], &[dp, dt], fwd);
}
