//! CPU backend throughput at the shapes of the DDPM CIFAR-10 UNet (batch 8): its 3×3
//! convolutions at 32×32 (128 channels) and 16×16 (256 channels), group norm, and the 16×16
//! attention level, beside the machine's measured f32 FMA peak.
//!
//! Compute-bound ops (conv2d, attention) report FLOPs as criterion "elements", so the `thrpt`
//! column reads as FLOP/s (`Gelem/s` = GFLOP/s); memory-bound ops (group norm) report bytes that
//! must cross memory (inputs read once plus outputs written once), so it reads as GB/s.
//!
//!     cargo bench --bench cpu_ops

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ddpm::ops::attention::{attention_backward, attention_forward, AttentionShape};
use ddpm::ops::conv2d::{
    conv2d_backward_data, conv2d_backward_weights, conv2d_forward, conv2d_forward_im2col,
    Conv2dShape, Padding,
};
use ddpm::ops::groupnorm::{group_norm_backward, group_norm_forward, Affine, GroupNormShape};
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

fn data(n: usize, seed: u64) -> Vec<f32> {
    Philox::new(seed).normal_vec(n, 1.0)
}

/// The two 3×3 convolution shapes that carry most of `ddpm-cifar10`'s FLOPs at batch 8:
/// 128 channels at 32×32 and 256 channels at 16×16. Each pass is its own row, so each can be
/// held against the FMA peak (`fma_peak` below) on its own.
fn conv(c: &mut Criterion) {
    for (ch, size) in [(128, 32), (256, 16)] {
        let s = Conv2dShape::new(
            Nchw::new(8, ch, size, size),
            ch,
            (3, 3),
            (1, 1),
            Padding::same(1),
        )
        .unwrap();
        let (x, w, b) = (data(s.input.len(), 1), data(s.weight_len(), 2), data(ch, 3));
        let dy = data(s.output().len(), 4);
        let mut y = vec![0.0; s.output().len()];
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; ch]);

        let mut g = c.benchmark_group(format!(
            "conv2d_3x3 (8,{ch},{size},{size})->{ch} [elem = FLOP]"
        ));
        g.sample_size(10);
        // Each pass is one GEMM the size of the forward.
        g.throughput(Throughput::Elements(s.forward_flops()));
        g.bench_function("forward", |bench| {
            bench.iter(|| conv2d_forward(&s, &x, &w, Some(&b), &mut y))
        });
        g.bench_function("backward_data", |bench| {
            bench.iter(|| conv2d_backward_data(&s, &w, &dy, &mut dx))
        });
        g.bench_function("backward_weights", |bench| {
            bench.iter(|| conv2d_backward_weights(&s, &x, &dy, &mut dw, Some(&mut db)))
        });
        g.bench_function("forward_im2col_reference", |bench| {
            bench.iter(|| conv2d_forward_im2col(&s, &x, &w, Some(&b), &mut y))
        });
        g.finish();
    }
}

/// The f32 FMA peak of this machine on all threads (registers only): the ceiling for the
/// convolution rows. Reported as FLOP "elements" like them.
fn fma_peak(c: &mut Criterion) {
    use ddpm::ops::fma_peak::{probe, CHAINS, STEPS};
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let rounds = 20;
    let (lanes, name, run) = probe();
    let flops_per_iter = (threads * rounds * STEPS * CHAINS * lanes * 2) as u64;
    let mut g = c.benchmark_group(format!("fma_peak ({threads} threads) [elem = FLOP]"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops_per_iter));
    g.bench_function(format!("f32 {name}"), |bench| {
        bench.iter(|| {
            (0..threads)
                .into_par_iter()
                .map(|_| run(rounds))
                .sum::<f32>()
        })
    });
    g.finish();
}

fn group_norm(c: &mut Criterion) {
    let shape = Nchw::new(8, 128, 32, 32);
    let s = GroupNormShape::new(shape, 32, 1e-5).unwrap();
    let (x, gamma, beta) = (data(shape.len(), 4), data(128, 5), data(128, 6));
    let (mut y, mut mean, mut rstd) = (
        vec![0.0; x.len()],
        vec![0.0; s.stats_len()],
        vec![0.0; s.stats_len()],
    );
    let (mut dx, mut dg, mut dbeta) = (vec![0.0; x.len()], vec![0.0; 128], vec![0.0; 128]);
    let bytes = (shape.len() * std::mem::size_of::<f32>()) as u64;

    let mut g = c.benchmark_group("group_norm (8,128,32,32) 32 groups [bytes]");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(2 * bytes)); // read x, write y
    g.bench_function("forward", |bench| {
        bench.iter(|| {
            group_norm_forward(
                &s,
                &x,
                Some(Affine {
                    gamma: &gamma,
                    beta: &beta,
                }),
                &mut y,
                &mut mean,
                &mut rstd,
            )
        })
    });
    g.throughput(Throughput::Bytes(3 * bytes)); // read x and dy, write dx
    g.bench_function("backward", |bench| {
        bench.iter(|| {
            group_norm_backward(
                &s,
                &x,
                Some(&gamma),
                &mean,
                &rstd,
                &y,
                &mut dx,
                Some((&mut dg, &mut dbeta)),
            )
        })
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    // The 16×16 attention level of the CIFAR-10 UNet: L = 256 tokens of 256 channels, one head.
    let s = AttentionShape::new(8, 256, 256, 1).unwrap();
    let n = s.tokens_len();
    let (q, k, v) = (data(n, 7), data(n, 8), data(n, 9));
    let (mut out, mut probs) = (vec![0.0; n], vec![0.0; s.probs_len()]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    // Two (L×L×C) products forward, four backward.
    let fwd_flops = (2 * 2 * s.batch * s.len * s.len * s.channels()) as u64;

    let mut g = c.benchmark_group("attention (8, 256 tokens, 256 ch) [elem = FLOP]");
    g.sample_size(10);
    g.throughput(Throughput::Elements(fwd_flops));
    g.bench_function("forward", |bench| {
        bench.iter(|| attention_forward(&s, &q, &k, &v, &mut out, &mut probs))
    });
    g.throughput(Throughput::Elements(2 * fwd_flops));
    g.bench_function("backward", |bench| {
        bench.iter(|| attention_backward(&s, &q, &k, &v, &probs, &out, &mut dq, &mut dk, &mut dv))
    });
    g.finish();
}

criterion_group!(benches, fma_peak, conv, group_norm, attention);
criterion_main!(benches);
