//! CUDA ops, the training step and the sampler against the CPU reference. Runs with its own
//! harness (`harness = false`): without a GPU every test is listed as SKIPPED with the reason.

mod attention;
mod blas;
mod conv;
mod conv_shifted;
mod diffusion;
mod elementwise;
mod emulator;
mod groupnorm;
mod loss;
mod optim;
mod train;

use ddpm::cuda::testing::{run_main, Case};

fn main() {
    let mut cases: Vec<Case> = Vec::new();
    cases.extend(blas::cases());
    cases.extend(groupnorm::cases());
    cases.extend(conv::cases());
    cases.extend(conv_shifted::cases());
    cases.extend(attention::cases());
    cases.extend(elementwise::cases());
    cases.extend(loss::cases());
    cases.extend(optim::cases());
    cases.extend(diffusion::cases());
    cases.extend(train::cases());
    cases.extend(emulator::cases());
    run_main("cuda", &cases);
}
