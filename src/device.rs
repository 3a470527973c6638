//! `--device auto|cpu|cuda[:N]`: where training, sampling and benchmarks run.

use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use crate::cuda::{CudaError, Gpu};
use crate::precision::Precision;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceArg {
    /// CUDA when a driver, a device and the built-in kernels are present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (`cuda` means `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device '{s}': expected auto, cpu, cuda or cuda:N (N a device number)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `--precision`: what GPU activations are stored as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrecisionArg {
    /// bf16 on a GPU, fp32 on the CPU.
    #[default]
    Auto,
    Fixed(Precision),
}

impl FromStr for PrecisionArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s
                .parse()
                .map(Self::Fixed)
                .map_err(|e: String| e.replace("(expected", "(expected auto,")),
        }
    }
}

impl fmt::Display for PrecisionArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(p) => write!(f, "{p}"),
        }
    }
}

impl PrecisionArg {
    /// The precision on `device`: the CPU backend computes in fp32 only, so asking it for bf16
    /// or fp16 is a usage error that says so.
    pub fn resolve(self, device: &Device) -> anyhow::Result<Precision> {
        match (self, device) {
            (Self::Auto, Device::Cpu) => Ok(Precision::Fp32),
            (Self::Auto, Device::Cuda(_)) => Ok(Precision::Bf16),
            (Self::Fixed(p), Device::Cpu) if p.is_reduced() => Err(crate::usage_error::usage(
                format!(
                    "--precision {p}: the CPU backend computes in fp32 only; use --device cuda for {p}, or --precision fp32"
                ),
            )),
            (Self::Fixed(p), _) => Ok(p),
        }
    }
}

/// Where work runs.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Rc<Gpu>),
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Device {
    /// Resolves `arg`. `auto` falls back to the CPU and says why through `note` (one line);
    /// an explicit `cuda[:N]` that cannot be opened is an error naming the reason.
    pub fn select(arg: DeviceArg, note: &mut dyn FnMut(&str)) -> Result<Self, CudaError> {
        match arg {
            DeviceArg::Cpu => Ok(Self::Cpu),
            DeviceArg::Cuda(n) => Ok(Self::Cuda(Rc::new(Gpu::open(n)?))),
            DeviceArg::Auto => match Gpu::open(0) {
                Ok(g) => Ok(Self::Cuda(Rc::new(g))),
                Err(e) => {
                    note(&format!("device: using the CPU: {}", e.msg));
                    Ok(Self::Cpu)
                }
            },
        }
    }

    /// "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(g) => format!("cuda:{} ({})", g.ordinal, g.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            let e = bad.parse::<DeviceArg>().unwrap_err();
            assert!(
                e.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_with_a_reason_when_there_is_no_gpu() {
        let mut notes = Vec::new();
        let d = Device::select(DeviceArg::Auto, &mut |s| notes.push(s.to_string())).unwrap();
        match d {
            Device::Cpu => {
                assert_eq!(notes.len(), 1, "{notes:?}");
                assert!(notes[0].starts_with("device: using the CPU: "), "{notes:?}");
            }
            Device::Cuda(_) => assert!(notes.is_empty()),
        }
    }

    #[test]
    fn explicit_cuda_without_a_gpu_is_an_error_not_a_panic() {
        if let Err(e) = Device::select(DeviceArg::Cuda(7), &mut |_| {}) {
            let m = e.to_string();
            assert!(m.starts_with("open GPU: "), "{m}");
        }
    }
}
