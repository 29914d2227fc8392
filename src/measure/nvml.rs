//! NVIDIA GPUs as the driver reports them (what `nvidia-smi` shows): through nvml-wrapper, which
//! loads `libnvidia-ml.so.1` at run time, so this is in the default build and simply finds no
//! driver where there is none. A monitor and a cross-check, never a trial's peak (polling misses
//! short spikes).

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Said when no NVIDIA driver can be loaded.
pub const NO_DRIVER: &str =
    "no NVIDIA driver found (libnvidia-ml not loadable); the CPU device is available";

/// A process holding memory on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Bytes it holds; null where the driver does not say (e.g. inside a container).
    pub used_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The CUDA device index (`--device cuda:N`).
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Percent of time a kernel ran over the last sample period; null where not supported.
    pub utilization_percent: Option<u32>,
    /// The processes holding memory, or why they cannot be listed (e.g. no permission).
    pub processes: Result<Vec<GpuProcess>, GpuQueryError>,
}

impl GpuInfo {
    /// Bytes the given process holds on this GPU, when the driver says.
    #[must_use]
    pub fn process_bytes(&self, pid: u32) -> Option<u64> {
        self.processes
            .as_ref()
            .ok()?
            .iter()
            .find(|p| p.pid == pid)?
            .used_bytes
    }
}

/// Every GPU the driver sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuReport {
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. `13.0`.
    pub cuda_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

/// Why the GPUs cannot be read: no driver, NVML failing, or one GPU unreadable (stored as its
/// sentence in the JSON of `oomlab devices`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(transparent)]
#[error("{0}")]
pub struct GpuQueryError(pub String);

fn nvml() -> Result<&'static nvml_wrapper::Nvml, GpuQueryError> {
    static NVML: OnceLock<Result<nvml_wrapper::Nvml, GpuQueryError>> = OnceLock::new();
    NVML.get_or_init(|| {
        nvml_wrapper::Nvml::init().map_err(|e| {
            GpuQueryError(match e {
            nvml_wrapper::error::NvmlError::LibloadingError(_)
            | nvml_wrapper::error::NvmlError::LibraryNotFound => NO_DRIVER.to_string(),
            nvml_wrapper::error::NvmlError::DriverNotLoaded => format!(
                "the NVIDIA driver is installed but not loaded ({e}); the CPU device is available"
            ),
            other => format!("NVML could not start ({other}); the CPU device is available"),
        })
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Reads every GPU now, or says why there are none to read.
pub fn query() -> Result<GpuReport, GpuQueryError> {
    let nvml = nvml()?;
    let count = nvml
        .device_count()
        .map_err(|e| GpuQueryError(format!("NVML: {e}")))?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = nvml
            .device_by_index(index)
            .map_err(|e| GpuQueryError(format!("NVML cannot open GPU {index}: {e}")))?;
        let mem = d
            .memory_info()
            .map_err(|e| GpuQueryError(format!("NVML cannot read GPU {index}'s memory: {e}")))?;
        let processes = d
            .running_compute_processes()
            .map(|list| {
                list.into_iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        used_bytes: match p.used_gpu_memory {
                            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                        },
                    })
                    .collect()
            })
            .map_err(|e| match e {
                nvml_wrapper::error::NvmlError::NoPermission => GpuQueryError(
                    "not allowed to list the processes using this GPU (run as the processes' owner or root)".to_string(),
                ),
                other => GpuQueryError(format!(
                    "cannot list the processes using this GPU ({other})"
                )),
            });
        gpus.push(GpuInfo {
            index,
            name: d.name().unwrap_or_else(|_| format!("GPU {index}")),
            uuid: d.uuid().ok(),
            total_bytes: mem.total,
            used_bytes: mem.used,
            free_bytes: mem.free,
            utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
            processes,
        });
    }
    Ok(GpuReport {
        driver_version: nvml.sys_driver_version().ok(),
        cuda_version: nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        }),
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_a_driver_says_so_in_one_line() {
        // This test machine has no NVIDIA driver; on one with a driver the report lists its GPUs.
        match query() {
            Err(e) => assert_eq!(e.to_string(), NO_DRIVER),
            Ok(r) => assert!(r.gpus.iter().all(|g| g.total_bytes >= g.free_bytes)),
        }
    }
}
