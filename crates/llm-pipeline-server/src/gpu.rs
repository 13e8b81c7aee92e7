//! GPU facts for `/hardware/info` and `/hardware/stats`, read through NVML.
//!
//! NVML (`libnvidia-ml.so.1`) ships with the NVIDIA driver, not with a toolkit, so it is opened
//! at run time (`nvml-wrapper` uses `dlopen`): the same binary runs on machines without a GPU,
//! where both endpoints report an empty map, as Livepeer's runner does. The library is opened
//! once and kept; each request then asks the devices for fresh numbers. NVML calls block for
//! microseconds to milliseconds, so the handlers run them on tokio's blocking pool.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use serde::Serialize;

/// One GPU in `/hardware/info`: Livepeer's `GPUComputeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GpuComputeInfo {
    /// The device UUID (`GPU-…`).
    pub(crate) id: String,
    /// The marketing name.
    pub(crate) name: String,
    /// Device memory in bytes.
    pub(crate) memory_total: u64,
    /// Free device memory in bytes.
    pub(crate) memory_free: u64,
    /// CUDA compute capability, major.
    pub(crate) major: i32,
    /// CUDA compute capability, minor.
    pub(crate) minor: i32,
}

/// One GPU in `/hardware/stats`: Livepeer's `GPUUtilizationInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GpuUtilization {
    /// The device UUID (`GPU-…`).
    pub(crate) id: String,
    /// The marketing name.
    pub(crate) name: String,
    /// Device memory in bytes.
    pub(crate) memory_total: u64,
    /// Free device memory in bytes.
    pub(crate) memory_free: u64,
    /// Percent of the last sample period in which a kernel ran.
    pub(crate) utilization_compute: u32,
    /// Percent of the last sample period in which device memory was read or written.
    pub(crate) utilization_memory: u32,
}

/// NVML, opened on first use; `None` where the driver library is absent or fails to start.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            tracing::info!("no GPU facts: NVML unavailable ({e})");
            None
        }
    })
    .as_ref()
}

/// Calls `read` on every device NVML lists; devices it cannot read are logged and left out.
fn each_device<T>(
    read: impl Fn(&nvml_wrapper::Device<'_>) -> Result<T, nvml_wrapper::error::NvmlError>,
) -> BTreeMap<u32, T> {
    let mut out = BTreeMap::new();
    let Some(nvml) = nvml() else {
        return out;
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("NVML device count: {e}");
            return out;
        }
    };
    for index in 0..count {
        match nvml.device_by_index(index).and_then(|d| read(&d)) {
            Ok(facts) => {
                out.insert(index, facts);
            }
            Err(e) => tracing::warn!("NVML device {index}: {e}"),
        }
    }
    out
}

/// Static facts of every GPU, by device index.
pub(crate) fn compute_info() -> BTreeMap<u32, GpuComputeInfo> {
    each_device(|device| {
        let memory = device.memory_info()?;
        let capability = device.cuda_compute_capability()?;
        Ok(GpuComputeInfo {
            id: device.uuid()?,
            name: device.name()?,
            memory_total: memory.total,
            memory_free: memory.free,
            major: capability.major,
            minor: capability.minor,
        })
    })
}

/// Current utilisation of every GPU, by device index.
pub(crate) fn utilization() -> BTreeMap<u32, GpuUtilization> {
    each_device(|device| {
        let memory = device.memory_info()?;
        let rates = device.utilization_rates()?;
        Ok(GpuUtilization {
            id: device.uuid()?,
            name: device.name()?,
            memory_total: memory.total,
            memory_free: memory.free,
            utilization_compute: rates.gpu,
            utilization_memory: rates.memory,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_are_livepeers() {
        let info = GpuComputeInfo {
            id: "GPU-1".into(),
            name: "NVIDIA H200".into(),
            memory_total: 150_000_000_000,
            memory_free: 149_000_000_000,
            major: 9,
            minor: 0,
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({"id": "GPU-1", "name": "NVIDIA H200",
                "memory_total": 150_000_000_000_u64, "memory_free": 149_000_000_000_u64,
                "major": 9, "minor": 0})
        );
        let stats = GpuUtilization {
            id: "GPU-1".into(),
            name: "NVIDIA H200".into(),
            memory_total: 1,
            memory_free: 0,
            utilization_compute: 97,
            utilization_memory: 40,
        };
        let mut keys: Vec<String> = serde_json::to_value(&stats)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "id",
                "memory_free",
                "memory_total",
                "name",
                "utilization_compute",
                "utilization_memory"
            ]
        );
    }

    #[test]
    fn without_a_driver_there_are_no_gpus_and_no_error() {
        // On machines with NVIDIA's driver this lists real devices; every entry must then be
        // complete. Without it (CI), both maps are empty rather than an error.
        let info = compute_info();
        let stats = utilization();
        assert_eq!(info.len(), stats.len());
        for (index, gpu) in &info {
            assert!(gpu.memory_total >= gpu.memory_free, "GPU {index}: {gpu:?}");
            assert!(gpu.id.starts_with("GPU-"), "GPU {index}: {gpu:?}");
        }
    }
}
