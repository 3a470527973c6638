//! Finding out, without ever panicking, whether a CUDA driver and devices are present.
//!
//! cudarc loads libcuda lazily and panics when it is missing, so we first ask whether any of the
//! library names it would try can be loaded, and only then call into the driver (still under
//! `catch_unwind`, in case an old driver lacks a symbol).

use cudarc::driver::{result, sys};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub ordinal: i32,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DriverStatus {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver loaded but failed to initialise or enumerate devices.
    Error { message: String },
    Ready {
        driver_version: String,
        devices: Vec<DeviceInfo>,
    },
}

/// Probes the driver and lists the devices.
pub fn probe() -> DriverStatus {
    // SAFETY: only tries to dlopen candidate library names; nothing is called.
    if !unsafe { sys::is_culib_present() } {
        return DriverStatus::NoDriver;
    }
    // A caught panic would still be printed by the default hook: silence it for this call.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(query_driver);
    std::panic::set_hook(previous_hook);
    match outcome {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => DriverStatus::Error {
            message: e.to_string(),
        },
        Err(_) => DriverStatus::Error {
            message: "the CUDA driver library is missing expected functions".into(),
        },
    }
}

fn query_driver() -> Result<DriverStatus, result::DriverError> {
    result::init()?;
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int; the driver is initialised.
    unsafe { sys::cuDriverGetVersion(&mut version).result()? };
    let count = result::device::get_count()?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let dev = result::device::get(ordinal)?;
        // SAFETY: `dev` came from `device::get`.
        let (major, minor, memory_bytes) = unsafe {
            use sys::CUdevice_attribute::*;
            (
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                result::device::total_mem(dev)?,
            )
        };
        devices.push(DeviceInfo {
            ordinal,
            name: result::device::get_name(dev)?,
            compute_capability: (major, minor),
            memory_bytes,
        });
    }
    Ok(DriverStatus::Ready {
        driver_version: format!("{}.{}", version / 1000, (version % 1000) / 10),
        devices,
    })
}
