//! `ddpm info`: what this binary was built with and what this machine offers.

use std::fmt;

use serde::Serialize;

use crate::cuda::kernels;
use crate::cuda::probe::{self, DriverStatus};

#[derive(Debug, Serialize)]
pub struct SystemInfo {
    pub version: &'static str,
    pub kernels: KernelInfo,
    pub driver: DriverStatus,
    pub cpu_threads: usize,
    pub cpu_cores: usize,
}

#[derive(Debug, Serialize)]
pub struct KernelInfo {
    pub built_in: bool,
    pub nvcc_version: Option<&'static str>,
    pub targets: &'static [&'static str],
    pub modules: Vec<ModuleInfo>,
}

#[derive(Debug, Serialize)]
pub struct ModuleInfo {
    pub name: &'static str,
    pub kernels: usize,
    pub fatbin_bytes: usize,
}

impl SystemInfo {
    pub fn gather() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            kernels: KernelInfo {
                built_in: kernels::built_in(),
                nvcc_version: kernels::NVCC_VERSION,
                // What the built-in kernels were compiled for: none when there are none.
                targets: if kernels::built_in() {
                    kernels::TARGETS
                } else {
                    &[]
                },
                modules: kernels::MODULES
                    .iter()
                    .map(|m| ModuleInfo {
                        name: m.name,
                        kernels: m.kernels.len(),
                        fatbin_bytes: m.fatbin.len(),
                    })
                    .collect(),
            },
            driver: probe::probe(),
            cpu_threads: rayon::current_num_threads(),
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl fmt::Display for SystemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ddpm {}", self.version)?;
        let k = &self.kernels;
        match k.nvcc_version {
            Some(v) => {
                let count: usize = k.modules.iter().map(|m| m.kernels).sum();
                writeln!(f, "CUDA kernels: built in (nvcc {v}; {}), {count} kernels in {} modules:", k.targets.join(", "), k.modules.len())?;
                for m in &k.modules {
                    writeln!(f, "  {:<16} {:>3} kernels, {:>7} bytes", m.name, m.kernels, m.fatbin_bytes)?;
                }
            }
            None => writeln!(f, "CUDA kernels: not built in (nvcc was not found at build time); only the CPU backend is available")?,
        }
        match &self.driver {
            DriverStatus::NoDriver => {
                writeln!(f, "CUDA driver: not found (libcuda could not be loaded)")?
            }
            DriverStatus::Error { message } => {
                writeln!(f, "CUDA driver: present but unusable: {message}")?
            }
            DriverStatus::Ready {
                driver_version,
                devices,
            } => {
                writeln!(
                    f,
                    "CUDA driver: {driver_version}, {} device{}",
                    devices.len(),
                    if devices.len() == 1 { "" } else { "s" }
                )?;
                for d in devices {
                    let (maj, min) = d.compute_capability;
                    let runs = if kernels::runs_on(d.compute_capability) {
                        "kernels run here"
                    } else if k.built_in {
                        "kernels need compute capability 8.0 or newer"
                    } else {
                        "no kernels built in"
                    };
                    writeln!(
                        f,
                        "  [{}] {} (compute {maj}.{min}, {:.1} GiB): {runs}",
                        d.ordinal,
                        d.name,
                        d.memory_bytes as f64 / (1u64 << 30) as f64
                    )?;
                }
            }
        }
        writeln!(
            f,
            "CPU: {} thread{} in use ({} available)",
            self.cpu_threads,
            if self.cpu_threads == 1 { "" } else { "s" },
            self.cpu_cores
        )
    }
}
