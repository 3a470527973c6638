//! Forward passes against independent values: direct loops written from the definitions,
//! closed-form values, and invariants (softmax rows sum to one, normalised groups have zero mean
//! and unit variance).

mod common;

use common::{max_abs_diff, normal, to_f32, uniform};
use ddpm::ops::attention::{attention_forward, AttentionShape};
use ddpm::ops::concat::{concat_channels, split_channels};
use ddpm::ops::conv2d::{conv2d_forward, Conv2dShape, Padding};
use ddpm::ops::dropout::{dropout_forward, DropoutArgs};
use ddpm::ops::embedding::{timestep_embedding_forward, TimestepEmbedding};
use ddpm::ops::groupnorm::{group_norm_forward, Affine, GroupNormShape};
use ddpm::ops::linear::{linear_forward, LinearShape};
use ddpm::ops::loss::{l1_forward, mse_forward};
use ddpm::ops::upsample::upsample_nearest2x_forward;
use ddpm::shape::Nchw;

/// The convolution sum written straight from its definition, with explicit padding checks.
fn direct_conv(s: &Conv2dShape, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (i, o) = (s.input, s.output());
    let (kh, kw) = s.kernel;
    let mut y = vec![0.0; o.len()];
    for n in 0..o.n {
        for co in 0..o.c {
            for oy in 0..o.h {
                for ox in 0..o.w {
                    let mut acc = b[co];
                    for ci in 0..i.c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s.stride.0 + ky) as isize - s.pad.top as isize;
                                let ix = (ox * s.stride.1 + kx) as isize - s.pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= i.h as isize || ix >= i.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * i.c + ci) * i.h + iy as usize) * i.w + ix as usize];
                                acc += w[((co * i.c + ci) * kh + ky) * kw + kx] * xv;
                            }
                        }
                    }
                    y[((n * o.c + co) * o.h + oy) * o.w + ox] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_a_direct_convolution() {
    let cases = [
        (Nchw::new(2, 3, 7, 5), 4, (3, 3), (1, 1), Padding::same(1)),
        (
            Nchw::new(3, 2, 9, 6),
            3,
            (3, 3),
            (2, 2),
            Padding::bottom_right(1),
        ),
        (Nchw::new(2, 4, 5, 3), 5, (1, 1), (1, 1), Padding::default()),
        (
            Nchw::new(1, 2, 8, 7),
            2,
            (5, 3),
            (2, 1),
            Padding {
                top: 2,
                bottom: 1,
                left: 0,
                right: 2,
            },
        ),
        (Nchw::new(2, 1, 4, 4), 1, (4, 4), (1, 1), Padding::default()),
    ];
    for (k, (input, c_out, kernel, stride, pad)) in cases.into_iter().enumerate() {
        let s = Conv2dShape::new(input, c_out, kernel, stride, pad).unwrap();
        let (x, w, b) = (
            uniform(input.len(), k as u64),
            uniform(s.weight_len(), 10 + k as u64),
            uniform(c_out, 20 + k as u64),
        );
        let mut y = vec![0.0; s.output().len()];
        conv2d_forward(&s, &x, &w, Some(&b), &mut y);
        let want = direct_conv(&s, &x, &w, &b);
        assert!(max_abs_diff(&y, &want) < 1e-12, "case {k}: {s:?}");

        // The f32 path computes the same function to f32 accuracy.
        let mut y32 = vec![0.0f32; y.len()];
        conv2d_forward(&s, &to_f32(&x), &to_f32(&w), Some(&to_f32(&b)), &mut y32);
        let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
        assert!(max_abs_diff(&y32, &want) < 1e-5, "case {k} in f32");
    }
}

#[test]
fn conv2d_output_size_and_bad_geometry() {
    let s = Conv2dShape::new(
        Nchw::new(1, 3, 32, 32),
        8,
        (3, 3),
        (2, 2),
        Padding::bottom_right(1),
    )
    .unwrap();
    assert_eq!(
        s.output(),
        Nchw::new(1, 8, 16, 16),
        "diffusers downsample: 32 -> 16"
    );
    let err =
        Conv2dShape::new(Nchw::new(1, 3, 2, 2), 8, (5, 5), (1, 1), Padding::default()).unwrap_err();
    assert!(
        err.to_string().contains("larger than the padded input"),
        "{err}"
    );
    assert!(
        Conv2dShape::new(Nchw::new(1, 3, 8, 8), 8, (3, 3), (0, 1), Padding::default()).is_err()
    );
    // An empty image is refused even when padding would make room for the kernel.
    let err =
        Conv2dShape::new(Nchw::new(1, 3, 0, 8), 8, (1, 1), (1, 1), Padding::same(1)).unwrap_err();
    assert!(
        err.to_string().contains("input size must be positive"),
        "{err}"
    );
}

#[test]
fn linear_matches_loops() {
    let s = LinearShape::new(4, 6, 5);
    let (x, w, b) = (uniform(24, 1), uniform(30, 2), uniform(5, 3));
    let mut y = vec![0.0; 20];
    linear_forward(&s, &x, &w, Some(&b), &mut y);
    for n in 0..4 {
        for o in 0..5 {
            let want: f64 = b[o] + (0..6).map(|i| x[n * 6 + i] * w[o * 6 + i]).sum::<f64>();
            assert!((y[n * 5 + o] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn group_norm_statistics_and_affine() {
    let shape = Nchw::new(2, 6, 5, 3);
    let s = GroupNormShape::new(shape, 3, 1e-6).unwrap();
    let x: Vec<f64> = uniform(shape.len(), 5)
        .iter()
        .map(|v| 4.0 * v - 1.5)
        .collect();
    let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; 6], vec![0.0; 6]);
    group_norm_forward(&s, &x, None, &mut y, &mut mean, &mut rstd);
    let group = s.group_len();
    for g in 0..6 {
        let xs = &x[g * group..(g + 1) * group];
        let mu = xs.iter().sum::<f64>() / group as f64;
        let var = xs.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / group as f64;
        assert!((mean[g] - mu).abs() < 1e-12);
        assert!((rstd[g] - 1.0 / (var + 1e-6).sqrt()).abs() < 1e-9);
        let ys = &y[g * group..(g + 1) * group];
        let ym = ys.iter().sum::<f64>() / group as f64;
        let yv = ys.iter().map(|v| (v - ym) * (v - ym)).sum::<f64>() / group as f64;
        assert!(ym.abs() < 1e-12, "group {g} mean {ym}");
        assert!(
            (yv - var / (var + 1e-6)).abs() < 1e-9,
            "group {g} variance {yv}"
        );
    }
    let (gamma, beta) = (uniform(6, 6), uniform(6, 7));
    let mut ya = vec![0.0; x.len()];
    group_norm_forward(
        &s,
        &x,
        Some(Affine {
            gamma: &gamma,
            beta: &beta,
        }),
        &mut ya,
        &mut mean,
        &mut rstd,
    );
    for (i, (a, n)) in ya.iter().zip(&y).enumerate() {
        let c = (i / shape.hw()) % 6;
        assert!((a - (gamma[c] * n + beta[c])).abs() < 1e-12);
    }
    assert!(GroupNormShape::new(shape, 4, 1e-5)
        .unwrap_err()
        .to_string()
        .contains("6 channels"));
}

#[test]
fn attention_matches_loops_and_rows_sum_to_one() {
    let s = AttentionShape::new(2, 6, 8, 2).unwrap();
    let n = s.tokens_len();
    let (q, k, v) = (normal(n, 1), normal(n, 2), normal(n, 3));
    let (mut out, mut probs) = (vec![0.0; n], vec![0.0; s.probs_len()]);
    attention_forward(&s, &q, &k, &v, &mut out, &mut probs);
    let (l, c, d) = (6, 8, 4);
    for b in 0..2 {
        for h in 0..2 {
            for i in 0..l {
                let at = |t: &[f64], tok: usize, j: usize| t[(b * l + tok) * c + h * d + j];
                let scores: Vec<f64> = (0..l)
                    .map(|t| {
                        (0..d).map(|j| at(&q, i, j) * at(&k, t, j)).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let z: f64 = scores.iter().map(|s| s.exp()).sum();
                let p: Vec<f64> = scores.iter().map(|s| s.exp() / z).collect();
                let row = &probs[((b * 2 + h) * l + i) * l..][..l];
                assert!(
                    (row.iter().sum::<f64>() - 1.0).abs() < 1e-12,
                    "softmax row sums to one"
                );
                assert!(max_abs_diff(row, &p) < 1e-12);
                for j in 0..d {
                    let want: f64 = (0..l).map(|t| p[t] * at(&v, t, j)).sum();
                    assert!((out[(b * l + i) * c + h * d + j] - want).abs() < 1e-12);
                }
            }
        }
    }
    assert!(
        AttentionShape::new(1, 4, 6, 4).is_err(),
        "6 channels do not split into 4 heads"
    );
}

#[test]
fn softmax_is_stable_for_large_scores() {
    let s = AttentionShape::new(1, 3, 1, 1).unwrap();
    let q = vec![1.0f32, 1.0, 1.0];
    let k = vec![1000.0f32, 0.0, -1000.0];
    let v = vec![1.0f32, 2.0, 3.0];
    let (mut out, mut probs) = (vec![0.0f32; 3], vec![0.0f32; 9]);
    attention_forward(&s, &q, &k, &v, &mut out, &mut probs);
    assert!(probs.iter().all(|p| p.is_finite()));
    assert_eq!(
        out,
        vec![1.0, 1.0, 1.0],
        "all mass on the key with score 1000"
    );
}

#[test]
fn upsample_copies_each_pixel_to_a_2x2_block() {
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // (1, 1, 2, 3)
    let mut y = [0.0; 24];
    upsample_nearest2x_forward(Nchw::new(1, 1, 2, 3), &x, &mut y);
    #[rustfmt::skip]
    let want = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
                1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
                4.0, 4.0, 5.0, 5.0, 6.0, 6.0,
                4.0, 4.0, 5.0, 5.0, 6.0, 6.0];
    assert_eq!(y, want);
}

#[test]
fn concat_places_channels_in_order_and_split_inverts_it() {
    // a: (2, 1, 1, 2), b: (2, 2, 1, 2)
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0];
    let out = Nchw::new(2, 3, 1, 2);
    let mut y = [0.0; 12];
    concat_channels(out, &[(&a, 1), (&b, 2)], &mut y);
    assert_eq!(
        y,
        [1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 3.0, 4.0, 14.0, 15.0, 16.0, 17.0]
    );
    let (mut a2, mut b2) = ([0.0; 4], [0.0; 8]);
    split_channels(out, &y, &mut [(&mut a2, 1), (&mut b2, 2)]);
    assert_eq!((a2, b2), (a, b));
}

#[test]
fn timestep_embedding_closed_form() {
    // dim 4, shift 1: half = 2, f = exp(−ln(10⁴)·[0, 1]/(2 − 1)) = [1, 1e-4].
    let e = TimestepEmbedding::new(4, false, 1.0).unwrap();
    let t = [0.0f64, 1.0, 250.0];
    let mut emb = [0.0; 12];
    timestep_embedding_forward(&e, &t, &mut emb);
    for (n, &tv) in t.iter().enumerate() {
        let want = [tv.sin(), (tv * 1e-4).sin(), tv.cos(), (tv * 1e-4).cos()];
        assert!(
            max_abs_diff(&emb[4 * n..4 * n + 4], &want) < 1e-12,
            "t = {tv}"
        );
    }
    // flip_sin_to_cos puts cos first; an odd dim is zero-padded at the end.
    let e = TimestepEmbedding::new(5, true, 0.0).unwrap();
    let mut emb = [0.0; 5];
    timestep_embedding_forward(&e, &[3.0], &mut emb);
    let f1 = (-(10_000f64.ln()) / 2.0).exp(); // shift 0: j / half
    let want = [
        3.0f64.cos(),
        (3.0 * f1).cos(),
        3.0f64.sin(),
        (3.0 * f1).sin(),
        0.0,
    ];
    assert!(max_abs_diff(&emb, &want) < 1e-12);
    assert!(
        TimestepEmbedding::new(2, false, 1.0).is_err(),
        "half = shift leaves no frequencies"
    );
}

#[test]
fn losses_closed_form() {
    let pred = [1.0, 2.0, 3.0f32];
    let target = [0.0, 0.0, 0.0f32];
    assert!((mse_forward(&pred, &target) - 14.0 / 3.0).abs() < 1e-6);
    assert!((l1_forward(&pred, &target) - 2.0).abs() < 1e-6);
    assert_eq!(mse_forward(&pred, &pred), 0.0);
}

#[test]
fn dropout_drops_p_keeps_scaled_and_is_reproducible() {
    let n = 200_000;
    let x = vec![1.0f32; n];
    let p = 0.25;
    let a = DropoutArgs::new(p, 1234, 0).unwrap();
    let mut y = vec![0.0f32; n];
    dropout_forward(&a, &x, &mut y);
    let dropped = y.iter().filter(|&&v| v == 0.0).count();
    let frac = dropped as f64 / n as f64;
    // Binomial standard error sqrt(p(1−p)/n) ≈ 0.001; allow 5 of them.
    assert!((frac - p).abs() < 0.005, "dropped fraction {frac}");
    assert!(y.iter().all(|&v| v == 0.0 || v == (1.0 / (1.0 - p)) as f32));

    let mut y2 = vec![0.0f32; n];
    dropout_forward(&a, &x, &mut y2);
    assert_eq!(y, y2, "same seed and stream, same mask");
    dropout_forward(&DropoutArgs::new(p, 1234, 1).unwrap(), &x, &mut y2);
    assert_ne!(y, y2, "another stream, another mask");

    dropout_forward(&DropoutArgs::new(0.0, 1, 0).unwrap(), &x, &mut y2);
    assert_eq!(y2, x, "p = 0 is the identity");
    for bad in [1.0, -0.1, f64::NAN] {
        assert!(DropoutArgs::new(bad, 1, 0).is_err(), "p = {bad}");
    }
}

#[test]
#[should_panic(
    expected = "conv2d_forward: buffer `x` has 10 elements, expected 12 for shape (1, 1, 3, 4)"
)]
fn a_buffer_of_the_wrong_size_is_named_in_the_message() {
    let s = Conv2dShape::new(Nchw::new(1, 1, 3, 4), 1, (1, 1), (1, 1), Padding::default()).unwrap();
    let mut y = vec![0.0f32; 12];
    conv2d_forward(&s, &[0.0f32; 10], &[1.0], None, &mut y);
}
