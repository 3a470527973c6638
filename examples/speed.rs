use std::time::Instant;
fn main() {
    let name = std::env::args().nth(1).unwrap_or("tiny".into());
    let batch: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(32);
    let net = ddpm::nn::UNet::new(ddpm::nn::UNetConfig::preset(&name).unwrap()).unwrap();
    let mut p = net.init_params::<f32>(1);
    let x = vec![0.1f32; net.input_shape(batch).len()];
    let t: Vec<f32> = (0..batch).map(|i| i as f32 * 7.0).collect();
    let dy = vec![0.01f32; net.output_shape(batch).len()];
    for i in 0..4 {
        let t0 = Instant::now();
        let (_, tape) = net.forward(&p, &x, &t, None, Some(i)).unwrap();
        let t1 = Instant::now();
        net.backward(&mut p, &tape, &dy);
        let t2 = Instant::now();
        println!(
            "{name} b{batch}: fwd {:.1} ms bwd {:.1} ms -> {:.1} img/s",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            batch as f64 / (t2 - t0).as_secs_f64()
        );
    }
}
