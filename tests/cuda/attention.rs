//! Attention (cuBLAS GEMMs + softmax kernels) and the NCHW ↔ token transposes against the CPU
//! reference, on random inputs. Outputs start as NaN on the device, so an element a kernel fails
//! to write shows up as a non-finite error.

use ddpm::cuda::ops::attention as gpu_attn;
use ddpm::cuda::testing::{expect_close, from_device, to_device, Case};
use ddpm::cuda::Gpu;
use ddpm::ops::attention::{attention_backward, attention_forward, AttentionShape};
use ddpm::ops::layout::{nchw_to_tokens, tokens_to_nchw};
use ddpm::rng::Philox;
use ddpm::shape::Nchw;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "attention_forward_backward_matches_cpu",
            run: attention_matches_cpu,
        },
        Case {
            name: "attention_layout_transposes_match_cpu",
            run: layout_matches_cpu,
        },
    ]
}

// Tolerances. Everything is fp32 on both sides (cuBLAS runs without TF32), so the differences
// come from the order of the additions in the GEMMs and the softmax sums, and from the two
// sides' rounding of the scores S (which moves P by ~1e-6 relative, and through P every output).
// expect_close measures each element against max(|want|, 1e-3·max|want|), which is harsh on the
// many outputs near zero: the CPU run in f32 against the same code in f64 on these shapes shows
// ~1.5e-6 for P, up to 2.1e-4 for the output and up to 1.8e-4 for dq/dk/dv (2.7e-4 / 4.2e-4 at
// L = 1024). The GPU is a third fp32 ordering, so allow several times that; an indexing, stride
// or scaling bug gives errors of order 1, far above any of these.
/// P itself: only the scores' rounding and the row sum's order.
const TOL_PROBS: f64 = 1e-4;
/// out = P V: the P error times |v|, plus the product's own summation (k = L terms).
const TOL_OUT: f64 = 2e-3;
/// dq, dk, dv: three chained products and the cancellation in dP − rowsum(P ⊙ dP); the GPU also
/// scales dS by 1/√d before the last products where the CPU scales after them.
const TOL_BACKWARD: f64 = 5e-3;

fn nan_on_device(gpu: &Gpu, len: usize) -> anyhow::Result<ddpm::cuda::device::DeviceMemory> {
    Ok(to_device(gpu, &vec![f32::NAN; len])?)
}

fn attention_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    // (batch, len, channels, heads): L not a multiple of 32, one head and several, d = 1, L = 1,
    // and a CIFAR-like 16×16 block.
    let shapes = [
        (2, 37, 8, 1),
        (3, 50, 12, 3),
        (2, 33, 5, 5),
        (1, 1, 4, 2),
        (1, 100, 96, 4),
        (2, 256, 64, 1),
    ];
    for (seed, &(b, l, c, heads)) in shapes.iter().enumerate() {
        let g = AttentionShape::new(b, l, c, heads)?;
        let label = format!("B{b} L{l} C{c} h{heads}");
        let n = g.tokens_len();
        let mut rng = Philox::new(100 + seed as u64);
        let q: Vec<f32> = rng.normal_vec(n, 1.0);
        let k: Vec<f32> = rng.normal_vec(n, 1.0);
        let v: Vec<f32> = rng.normal_vec(n, 1.0);
        let dout: Vec<f32> = rng.normal_vec(n, 1.0);

        let mut out = vec![0.0f32; n];
        let mut probs = vec![0.0f32; g.probs_len()];
        attention_forward(&g, &q, &k, &v, &mut out, &mut probs);
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        attention_backward(&g, &q, &k, &v, &probs, &dout, &mut dq, &mut dk, &mut dv);

        let (q_d, k_d, v_d, do_d) = (
            to_device(gpu, &q)?,
            to_device(gpu, &k)?,
            to_device(gpu, &v)?,
            to_device(gpu, &dout)?,
        );
        let out_d = nan_on_device(gpu, n)?;
        let probs_d = nan_on_device(gpu, g.probs_len())?;
        let (dq_d, dk_d, dv_d) = (
            nan_on_device(gpu, n)?,
            nan_on_device(gpu, n)?,
            nan_on_device(gpu, n)?,
        );
        let ws_d = nan_on_device(gpu, gpu_attn::attention_workspace_len(&g))?;

        gpu_attn::attention_forward(
            gpu,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            out_d.ptr(),
            probs_d.ptr(),
        )?;
        expect_close(
            &format!("probs {label}"),
            &from_device::<f32>(gpu, &probs_d, g.probs_len())?,
            &probs,
            TOL_PROBS,
        );
        expect_close(
            &format!("out {label}"),
            &from_device::<f32>(gpu, &out_d, n)?,
            &out,
            TOL_OUT,
        );

        // The backward reads the GPU's own probabilities: the whole pipeline is under test.
        gpu_attn::attention_backward(
            gpu,
            &g,
            q_d.ptr(),
            k_d.ptr(),
            v_d.ptr(),
            probs_d.ptr(),
            do_d.ptr(),
            dq_d.ptr(),
            dk_d.ptr(),
            dv_d.ptr(),
            ws_d.ptr(),
        )?;
        for (name, mem, want) in [("dq", &dq_d, &dq), ("dk", &dk_d, &dk), ("dv", &dv_d, &dv)] {
            expect_close(
                &format!("{name} {label}"),
                &from_device::<f32>(gpu, mem, n)?,
                want,
                TOL_BACKWARD,
            );
        }
    }
    Ok(())
}

fn layout_matches_cpu(gpu: &Gpu) -> anyhow::Result<()> {
    // Odd H and W, C and H·W below, at and above the 32-wide tile, single pixels and channels.
    let shapes = [
        Nchw::new(2, 3, 5, 7),
        Nchw::new(1, 33, 9, 11),
        Nchw::new(3, 64, 16, 16),
        Nchw::new(2, 1, 1, 1),
        Nchw::new(1, 40, 1, 37),
        Nchw::new(2, 1, 13, 3),
    ];
    for (seed, &s) in shapes.iter().enumerate() {
        let mut rng = Philox::new(200 + seed as u64);
        let x: Vec<f32> = rng.normal_vec(s.len(), 1.0);
        let mut tokens = vec![0.0f32; s.len()];
        nchw_to_tokens(s, &x, &mut tokens);
        let mut back = vec![0.0f32; s.len()];
        tokens_to_nchw(s, &tokens, &mut back);

        let x_d = to_device(gpu, &x)?;
        let tokens_d = nan_on_device(gpu, s.len())?;
        gpu_attn::nchw_to_tokens(gpu, s, x_d.ptr(), tokens_d.ptr())?;
        // A transpose only moves values: bit-identical.
        expect_close(
            &format!("nchw_to_tokens {s}"),
            &from_device::<f32>(gpu, &tokens_d, s.len())?,
            &tokens,
            0.0,
        );
        // tokens_to_nchw on its own input (not the round trip, which would hide a shared bug).
        let t_in: Vec<f32> = rng.normal_vec(s.len(), 1.0);
        let mut want = vec![0.0f32; s.len()];
        tokens_to_nchw(s, &t_in, &mut want);
        let t_d = to_device(gpu, &t_in)?;
        let x_out = nan_on_device(gpu, s.len())?;
        gpu_attn::tokens_to_nchw(gpu, s, t_d.ptr(), x_out.ptr())?;
        expect_close(
            &format!("tokens_to_nchw {s}"),
            &from_device::<f32>(gpu, &x_out, s.len())?,
            &want,
            0.0,
        );
        assert_eq!(back, x, "CPU round trip {s}");
    }
    Ok(())
}
