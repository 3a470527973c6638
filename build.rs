//! Compiles every `kernels/*.cu` into a fatbin and embeds it in the crate.
//!
//! Each `.cu` file becomes one fatbin holding machine code for sm_80 and sm_90 plus PTX for
//! compute_80 (so newer GPUs can JIT it). `$OUT_DIR/kernels.rs` lists the modules, their
//! `extern "C"` kernel names and the fatbin bytes (via `include_bytes!`); `src/cuda/kernels.rs`
//! includes it.
//!
//! ptxas reports each kernel's registers, stack frame, spills and shared memory per machine-code
//! target (`-Xptxas -v`); they go into `kernels.rs` as `RESOURCES`, and a kernel that spills
//! or needs more than 255 registers fails the build.
//!
//! nvcc is looked up in `$NVCC`, then `$CUDA_HOME/bin`, then `$CUDA_PATH/bin`, then `PATH`.
//! Without nvcc the build succeeds with one `cargo:warning` and an empty module list, unless
//! `DDPM_REQUIRE_NVCC=1` (CI sets it) turns that into an error. A kernel that does not compile
//! always fails the build.
//!
//! With the `cuda-emulator` feature the same kernels are also compiled as host C++ (see
//! kernels/emulator/) into `libddpm_cuda_emulator.a`, whether or not nvcc is there.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `-gencode` pairs: real machine code for A100 (sm_80) and H100/H200 (sm_90), PTX for compute_80.
const GENCODE: &[(&str, &str)] = &[
    ("compute_80", "sm_80"),
    ("compute_90", "sm_90"),
    ("compute_80", "compute_80"),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "DDPM_REQUIRE_NVCC",
        "NVCC_CCBIN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let sources = kernel_sources(&kernel_dir);
    let require = env::var("DDPM_REQUIRE_NVCC").is_ok_and(|v| v == "1");

    let generated = match find_nvcc() {
        Ok(Some(nvcc)) => {
            let version = nvcc_version(&nvcc);
            let modules = compile_all(&nvcc, &kernel_dir, &sources, &out_dir);
            render_modules(Some(&version), &modules)
        }
        Ok(None) => {
            let msg = "nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin and PATH): \
                       building without CUDA kernels; `ddpm info` will say so. \
                       Install CUDA 13 or run scripts/install-nvcc.sh.";
            if require {
                panic!("DDPM_REQUIRE_NVCC=1 but {msg}");
            }
            println!("cargo:warning={msg}");
            render_modules(None, &[])
        }
        Err(e) => panic!("{e}"),
    };
    fs::write(out_dir.join("kernels.rs"), generated).expect("write kernels.rs");

    #[cfg(feature = "cuda-emulator")]
    emulator::build(&kernel_dir, &sources, &out_dir);
}

/// Every `.cu` in `kernels/`, sorted; every `.cu`/`.cuh` is a rerun trigger.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut cu = Vec::new();
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("kernels/ entry").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => {
                println!("cargo:rerun-if-changed={}", path.display());
                cu.push(path);
            }
            Some("cuh") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    cu.sort();
    cu
}

/// `Ok(None)` when no nvcc is anywhere; `Err` when `$NVCC` names a file that is not there
/// (an explicit request that cannot be honoured should not silently fall back).
fn find_nvcc() -> Result<Option<PathBuf>, String> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(Some(p))
        } else {
            Err(format!("NVCC={} is not a file", p.display()))
        };
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.is_file() {
                return Ok(Some(p));
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

fn nvcc_version(nvcc: &Path) -> String {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", nvcc.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0.88"
    text.lines()
        .find_map(|l| l.rsplit_once(", V").map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".to_string())
}

struct Module {
    name: String,
    fatbin: PathBuf,
    kernels: Vec<String>,
    resources: Vec<Resources>,
}

/// What ptxas said about one kernel for one target.
#[derive(Debug, Default)]
struct Resources {
    kernel: String,
    target: String,
    registers: u32,
    barriers: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
    shared_bytes: u32,
}

/// The most registers a thread may have on every target.
const MAX_REGISTERS: u32 = 255;

/// The numbers `ptxas -v` prints on stderr, per entry function and target:
///   ptxas info    : Compiling entry function 'add_f32' for 'sm_90'
///   ptxas info    : Function properties for add_f32
///       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
///   ptxas info    : Used 10 registers, used 0 barriers, 16 bytes smem, ...
fn parse_ptxas(text: &str) -> Vec<Resources> {
    // The number before each of `words` in a comma-separated line ("12 registers", "used 0
    // barriers", "8 bytes smem").
    fn number_before(line: &str, word: &str) -> Option<u32> {
        line.split(',').find_map(|part| {
            let part = part.trim();
            let head = part.strip_suffix(word)?.trim_end();
            let head = head.strip_suffix("bytes").unwrap_or(head).trim_end();
            head.rsplit(' ').next()?.parse().ok()
        })
    }
    let mut out: Vec<Resources> = Vec::new();
    for line in text.lines() {
        let info = line.trim_start_matches("ptxas info    :").trim();
        if let Some(rest) = info.strip_prefix("Compiling entry function '") {
            if let Some((kernel, tail)) = rest.split_once("' for '") {
                out.push(Resources {
                    kernel: kernel.to_string(),
                    target: tail.trim_end_matches('\'').to_string(),
                    ..Default::default()
                });
            }
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if info.contains("bytes stack frame") {
            r.stack_bytes = number_before(info, "stack frame").unwrap_or(0);
            r.spill_store_bytes = number_before(info, "spill stores").unwrap_or(0);
            r.spill_load_bytes = number_before(info, "spill loads").unwrap_or(0);
        } else if let Some(used) = info.strip_prefix("Used ") {
            r.registers = number_before(used, "registers").unwrap_or(0);
            r.barriers = number_before(used, "barriers").unwrap_or(0);
            r.shared_bytes = number_before(used, "smem").unwrap_or(0);
        }
    }
    out
}

/// Compiles all sources in parallel (nvcc is single-threaded and slow); any failure panics with
/// nvcc's own diagnostics so the build fails loudly.
fn compile_all(nvcc: &Path, kernel_dir: &Path, sources: &[PathBuf], out_dir: &Path) -> Vec<Module> {
    let results: Vec<Result<Module, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| s.spawn(move || compile_one(nvcc, kernel_dir, src, out_dir)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("nvcc thread"))
            .collect()
    });
    let mut modules = Vec::new();
    let mut errors = String::new();
    for r in results {
        match r {
            Ok(m) => modules.push(m),
            Err(e) => errors.push_str(&e),
        }
    }
    if !errors.is_empty() {
        panic!("CUDA kernel compilation failed:\n{errors}");
    }
    let mut over = String::new();
    for m in &modules {
        let targets = GENCODE
            .iter()
            .filter(|(_, code)| code.starts_with("sm_"))
            .count();
        if m.resources.len() != m.kernels.len() * targets {
            over.push_str(&format!(
                "{}.cu: ptxas reported {} kernel builds, expected {} kernels × {targets} targets\n",
                m.name,
                m.resources.len(),
                m.kernels.len()
            ));
        }
        for r in &m.resources {
            if r.spill_store_bytes > 0 || r.spill_load_bytes > 0 || r.registers > MAX_REGISTERS {
                over.push_str(&format!(
                    "{} ({}): {} registers, {} bytes spill stores, {} bytes spill loads\n",
                    r.kernel, r.target, r.registers, r.spill_store_bytes, r.spill_load_bytes
                ));
            }
        }
    }
    if !over.is_empty() {
        panic!(
            "kernels that spill registers to local memory or need more than {MAX_REGISTERS} \
             registers (ptxas -v):\n{over}"
        );
    }
    modules
}

fn compile_one(
    nvcc: &Path,
    kernel_dir: &Path,
    src: &Path,
    out_dir: &Path,
) -> Result<Module, String> {
    let name = src.file_stem().unwrap().to_string_lossy().into_owned();
    let fatbin = out_dir.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("--fatbin")
        .args([
            "-O3",
            "-std=c++17",
            "--expt-relaxed-constexpr",
            "-Werror",
            "all-warnings",
            "-Xptxas",
            "-v",
        ])
        .arg("-I")
        .arg(kernel_dir);
    if let Some(ccbin) = env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    for (arch, code) in GENCODE {
        cmd.arg("-gencode").arg(format!("arch={arch},code={code}"));
    }
    cmd.arg("-o").arg(&fatbin).arg(src);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}\n", nvcc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "--- {} ---\n{}{}\n",
            src.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = fs::read_to_string(src).map_err(|e| format!("{}: {e}\n", src.display()))?;
    Ok(Module {
        name,
        fatbin,
        kernels: kernel_names(&text),
        resources: parse_ptxas(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    })
}

/// Names of the `extern "C" __global__` entry points, in source order. Kernels are declared as
/// `extern "C" __global__ void NAME(` — one per line — by convention (see kernels/common.cuh).
fn kernel_names(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| {
            let rest = l
                .trim_start()
                .strip_prefix("extern \"C\" __global__ void ")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn render_modules(nvcc_version: Option<&str>, modules: &[Module]) -> String {
    let mut s = String::from("// @generated by build.rs\n");
    writeln!(
        s,
        "pub const NVCC_VERSION: Option<&str> = {nvcc_version:?};"
    )
    .unwrap();
    let targets: Vec<&str> = GENCODE.iter().map(|(_, code)| *code).collect();
    writeln!(s, "pub const TARGETS: &[&str] = &{targets:?};").unwrap();
    s.push_str("pub const MODULES: &[KernelModule] = &[\n");
    for m in modules {
        writeln!(
            s,
            "    KernelModule {{ name: {:?}, fatbin: {{ const A: &Aligned<[u8]> = &Aligned(*include_bytes!({:?})); &A.0 }}, kernels: &{:?} }},",
            m.name,
            m.fatbin.display().to_string(),
            m.kernels
        )
        .unwrap();
    }
    s.push_str("];\n");
    s.push_str("pub const RESOURCES: &[KernelResources] = &[\n");
    for r in modules.iter().flat_map(|m| &m.resources) {
        writeln!(
            s,
            "    KernelResources {{ kernel: {:?}, target: {:?}, registers: {}, barriers: {}, stack_bytes: {}, spill_store_bytes: {}, spill_load_bytes: {}, shared_bytes: {} }},",
            r.kernel,
            r.target,
            r.registers,
            r.barriers,
            r.stack_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.shared_bytes
        )
        .unwrap();
    }
    s.push_str("];\n");
    s
}

/// The `cuda-emulator` feature: every `kernels/*.cu` compiled by the host C++ compiler against
/// kernels/emulator/ (CUDA's language as C++, a CPU runtime) into one static library whose
/// `ddpm_emu_launch` runs a kernel by name (src/cuda/emulator/mod.rs calls it). The emulator's own
/// test kernels (kernels/emulator/selftest.cu) join them there, and only there.
#[cfg(feature = "cuda-emulator")]
mod emulator {
    use super::kernel_names;
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};

    pub fn build(kernel_dir: &Path, sources: &[PathBuf], out_dir: &Path) {
        let emu_dir = kernel_dir.join("emulator");
        for f in [
            "cuda_emulator.h",
            "runtime.h",
            "runtime.cpp",
            "include/cuda_bf16.h",
            "include/cuda_fp16.h",
            "selftest.cu",
        ] {
            println!("cargo:rerun-if-changed={}", emu_dir.join(f).display());
        }
        let gen_dir = out_dir.join("emulator");
        fs::create_dir_all(&gen_dir).expect("create OUT_DIR/emulator");

        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++20")
            // The suite runs many launches: optimise even in dev builds.
            .opt_level(2)
            // Each rounding the kernels write stays one rounding: nothing fused into an FMA.
            .flag("-ffp-contract=off")
            .flag("-include")
            .flag(emu_dir.join("cuda_emulator.h"))
            .include(emu_dir.join("include")) // cuda_bf16.h, cuda_fp16.h stand-ins
            .include(kernel_dir) // common.cuh
            .include(&emu_dir) // runtime.h
            // `#pragma unroll` is nvcc's; g++ would warn about every one.
            .flag("-Wno-unknown-pragmas")
            // Every load and store checks that its address is a multiple of its type's
            // alignment (a GPU faults on a misaligned access; x86 would not) and traps if not:
            // the emulator's fault handler reports the kernel, block and thread.
            .flag("-fsanitize=alignment")
            .flag("-fsanitize-undefined-trap-on-error")
            .file(emu_dir.join("runtime.cpp"));

        let mut all: Vec<(String, String)> = Vec::new(); // (kernel, module)
        let selftest = emu_dir.join("selftest.cu");
        for src in sources.iter().chain([&selftest]) {
            let module = src.file_stem().unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            let names = kernel_names(&text);
            let unit = gen_dir.join(format!("{module}.cpp"));
            fs::write(&unit, module_unit(&module, src, &names)).expect("write emulator unit");
            build.file(&unit);
            all.extend(names.into_iter().map(|n| (n, module.clone())));
        }
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
            panic!(
                "kernel {} is defined in both {}.cu and {}.cu",
                w[0].0, w[0].1, w[1].1
            );
        }
        let table = gen_dir.join("table.cpp");
        fs::write(&table, table_unit(&all)).expect("write emulator table");
        build.file(&table);
        build.compile("ddpm_cuda_emulator");
    }

    /// One translation unit per `.cu`: the kernels plus a trampoline per kernel. common.cuh
    /// comes first at global scope (its `#pragma once` keeps the `.cu`'s own include out of the
    /// namespace); the rest of the `.cu` goes into a namespace of its own, so same-named helpers
    /// of different files (several `block_sum`s) never meet at link time. The `extern "C"`
    /// kernels are renamed with a `ddpm_emu_kernel_` prefix so that no C symbol as plain as
    /// `add_f32` leaves the library.
    fn module_unit(module: &str, src: &Path, kernels: &[String]) -> String {
        let ns = module.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let mut s = format!(
            "// @generated by build.rs from kernels/{module}.cu for the cuda-emulator feature.\n"
        );
        s.push_str("#include \"common.cuh\"\n#include \"runtime.h\"\n\n");
        for k in kernels {
            writeln!(s, "#define {k} ddpm_emu_kernel_{k}").unwrap();
        }
        writeln!(
            s,
            "\nnamespace ddpm_emu_{ns} {{\n#include {:?}\n}}\n",
            src.display().to_string()
        )
        .unwrap();
        s.push_str("namespace ddpm_emu {\n");
        for k in kernels {
            writeln!(
                s,
                "void run_{k}(void** args) {{ invoke(ddpm_emu_{ns}::{k}, args); }}"
            )
            .unwrap();
        }
        s.push_str("}  // namespace ddpm_emu\n");
        s
    }

    /// The kernel table runtime.cpp searches, sorted by name (byte order, as `strcmp`).
    fn table_unit(kernels: &[(String, String)]) -> String {
        let mut s = String::from("// @generated by build.rs for the cuda-emulator feature.\n#include \"runtime.h\"\n\nnamespace ddpm_emu {\n");
        for (k, _) in kernels {
            writeln!(s, "void run_{k}(void** args);").unwrap();
        }
        s.push_str("\nconst Kernel kernels[] = {\n");
        for (k, _) in kernels {
            writeln!(s, "    {{\"{k}\", run_{k}}},").unwrap();
        }
        if kernels.is_empty() {
            s.push_str("    {nullptr, nullptr},  // no kernels: C++ has no empty arrays\n");
        }
        writeln!(
            s,
            "}};\nconst size_t kernel_count = {};\n}}  // namespace ddpm_emu",
            kernels.len()
        )
        .unwrap();
        s
    }
}
