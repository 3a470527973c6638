//! One whole training step on the CPU (noise-add, UNet forward, loss, backward, grad clip,
//! AdamW, EMA) for the `tiny` and `ddpm-cifar10` presets. Throughput is in images, so the
//! `thrpt` column reads as images/s.
//!
//!     cargo bench --bench train_step

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ddpm::data::make_batch;
use ddpm::diffusion::ScheduleConfig;
use ddpm::nn::UNetConfig;
use ddpm::train::{TrainConfig, Trainer};

fn step(c: &mut Criterion, preset: &str, batch: usize) {
    let model = UNetConfig::preset(preset).unwrap();
    let size = model.sample_size;
    let data = ddpm::data::synthetic::generate(size, model.in_channels).unwrap();
    let cfg = TrainConfig {
        image_size: size,
        batch_size: batch,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, ScheduleConfig::default(), cfg).unwrap();
    let batch_data = make_batch(&data, 0, 0, batch, false);
    let mut g = c.benchmark_group(format!("train_step {preset} batch {batch} [elem = image]"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(if preset == "tiny" { 5 } else { 30 }));
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("cpu", |b| {
        b.iter(|| trainer.train_step(&batch_data).unwrap())
    });
    g.finish();
}

fn train_steps(c: &mut Criterion) {
    step(c, "tiny", 32);
    step(c, "ddpm-cifar10", 8);
}

criterion_group!(benches, train_steps);
criterion_main!(benches);
