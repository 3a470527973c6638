//! The CUDA kernels compiled by build.rs from `kernels/*.cu`, embedded as fatbins.

/// One `.cu` file: its fatbin (sm_80 + sm_90 machine code, compute_80 PTX) and entry points.
#[derive(Debug)]
pub struct KernelModule {
    /// The file stem, e.g. `elementwise`.
    pub name: &'static str,
    pub fatbin: &'static [u8],
    /// `extern "C"` kernel names, e.g. `silu_forward_bf16`.
    pub kernels: &'static [&'static str],
}

/// What ptxas reported for one kernel compiled for one machine-code target (`-Xptxas -v`; see
/// build.rs, which refuses spills and more than 255 registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: &'static str,
    /// `sm_80`, `sm_90`.
    pub target: &'static str,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers (`__syncthreads` uses barrier 0).
    pub barriers: u32,
    /// Per-thread local memory for arrays the compiler could not keep in registers.
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Static shared memory per block.
    pub shared_bytes: u32,
}

/// Registers in one block (and one SM) on every target: a launch whose block needs more fails
/// with "too many resources requested".
pub const REGISTERS_PER_BLOCK: u32 = 65_536;

/// Keeps an embedded fatbin on a 16-byte boundary: `include_bytes!` alone gives alignment 1, and
/// the fatbin header the driver parses holds 64-bit fields (nvcc aligns its own embeddings).
#[repr(C, align(16))]
pub struct Aligned<B: ?Sized>(pub B);

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Whether this binary was built with nvcc (and so carries kernels).
pub fn built_in() -> bool {
    NVCC_VERSION.is_some()
}

/// The embedded module with this name.
pub fn module(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// The most registers per thread `kernel` needs on any target (`None` without nvcc or for a
/// kernel not built in).
pub fn registers(kernel: &str) -> Option<u32> {
    RESOURCES
        .iter()
        .filter(|r| r.kernel == kernel)
        .map(|r| r.registers)
        .max()
}

/// Registers a block of `threads` threads of a kernel with `registers` per thread takes:
/// allocated per warp, in units of 256 (8 per thread).
pub fn block_registers(registers: u32, threads: u32) -> u64 {
    u64::from(registers.next_multiple_of(8)) * 32 * u64::from(threads.div_ceil(32))
}

/// The ptxas table: one line per kernel and target, and the largest numbers.
pub fn resource_report() -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{:<44} {:<6} {:>5} {:>6} {:>6} {:>6} {:>8}\n",
        "kernel", "target", "regs", "stack", "spillS", "spillL", "smem"
    );
    for r in RESOURCES {
        let _ = writeln!(
            s,
            "{:<44} {:<6} {:>5} {:>6} {:>6} {:>6} {:>8}",
            r.kernel,
            r.target,
            r.registers,
            r.stack_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.shared_bytes
        );
    }
    if let Some(most) = RESOURCES.iter().max_by_key(|r| r.registers) {
        let spills = RESOURCES
            .iter()
            .filter(|r| r.spill_store_bytes + r.spill_load_bytes > 0)
            .count();
        let _ = writeln!(
            s,
            "{} kernel builds; most registers: {} ({} on {}); {spills} spill",
            RESOURCES.len(),
            most.registers,
            most.kernel,
            most.target
        );
    }
    s
}

/// Whether the embedded image can run on a device of compute capability `cc`: native code for
/// 8.x (sm_80 is binary-compatible across 8.x) and 9.0, PTX JIT for anything newer than 8.0.
pub fn runs_on(cc: (i32, i32)) -> bool {
    built_in() && cc >= (8, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_match_the_kernel_sources() {
        let sources: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels"))
                .unwrap()
                .filter_map(|e| {
                    let p = e.unwrap().path();
                    (p.extension()? == "cu")
                        .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
                })
                .collect();
        if !built_in() {
            assert!(MODULES.is_empty());
            eprintln!("skipped: built without nvcc, so no kernel modules are embedded");
            return;
        }
        assert_eq!(MODULES.len(), sources.len(), "one module per kernels/*.cu");
        for m in MODULES {
            assert!(sources.contains(&m.name.to_string()), "{}", m.name);
            assert_eq!(
                m.fatbin.as_ptr() as usize % 16,
                0,
                "module {} is not 16-byte aligned",
                m.name
            );
            assert!(
                !m.kernels.is_empty(),
                "module {} declares no kernels",
                m.name
            );
            // A fatbin starts with the magic 0xBA55ED50 (little-endian).
            assert_eq!(
                &m.fatbin[..4],
                &0xBA55_ED50u32.to_le_bytes(),
                "module {} is not a fatbin",
                m.name
            );
        }
        let ew = module("elementwise").expect("elementwise module");
        for k in [
            "silu_forward_f32",
            "silu_backward_bf16",
            "dropout_forward_f16",
            "add_channel_bias_f32",
        ] {
            assert!(ew.kernels.contains(&k), "missing {k}");
        }
        assert_eq!(TARGETS, &["sm_80", "sm_90", "compute_80"]);
    }

    /// ptxas's numbers for every kernel on both machine-code targets, within the hardware's
    /// limits (build.rs already refuses spills and > 255 registers; this checks the table got
    /// here whole). Prints the table: `cargo test --lib kernel_resources -- --nocapture`.
    #[test]
    fn kernel_resources_are_reported_within_limits() {
        if !built_in() {
            assert!(RESOURCES.is_empty());
            return;
        }
        println!("{}", resource_report());
        for m in MODULES {
            for k in m.kernels {
                for target in ["sm_80", "sm_90"] {
                    let r = RESOURCES
                        .iter()
                        .find(|r| r.kernel == *k && r.target == target)
                        .unwrap_or_else(|| panic!("no ptxas report for {k} on {target}"));
                    assert!(
                        (1..=255).contains(&r.registers)
                            && r.spill_store_bytes == 0
                            && r.spill_load_bytes == 0,
                        "{r:?}"
                    );
                    // Every kernel can run a block of 256 threads (the common launch).
                    assert!(block_registers(r.registers, 256) <= u64::from(REGISTERS_PER_BLOCK));
                }
            }
        }
        assert_eq!(block_registers(42, 1024), 48 * 1024);
        assert_eq!(block_registers(16, 33), 16 * 64);
    }
}
