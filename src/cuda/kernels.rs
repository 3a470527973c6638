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
}
