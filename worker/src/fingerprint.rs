//! What this machine offers: CPU cores, memory, NVIDIA GPUs, labels.
//!
//! GPUs come from an explicit inventory in the configuration when there is one;
//! otherwise from NVML, loaded at run time (`libnvidia-ml.so.1`, so the binary
//! also runs where the driver is missing), and from `nvidia-smi` when NVML cannot
//! be loaded or answers nothing.

use ferry_common::proto;
use ferry_common::spec::parse_memory_bytes;

use crate::config::WorkerConfig;

#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<proto::Gpu>,
}

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("worker configuration: {field} = {value:?} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("worker configuration: {0} (the coordinator would refuse this registration)")]
    OutOfBounds(String),
}

pub fn discover(config: &WorkerConfig) -> Result<Capacity, FingerprintError> {
    let cpu_millis = match config.cpus {
        Some(cpus) if cpus > 0.0 && cpus.is_finite() => (cpus * 1000.0).round() as u64,
        Some(cpus) => {
            return Err(FingerprintError::Invalid {
                field: "cpus",
                value: cpus.to_string(),
                reason: "must be a positive number".into(),
            });
        }
        None => {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
                * 1000
        }
    };
    let memory_bytes = match &config.memory {
        Some(text) => parse_memory_bytes(text).map_err(|reason| FingerprintError::Invalid {
            field: "memory",
            value: text.clone(),
            reason,
        })?,
        None => total_memory_bytes().unwrap_or(1 << 30),
    };
    let gpus = match &config.gpus {
        Some(entries) => {
            let mut gpus = Vec::new();
            for entry in entries {
                let memory_bytes = match &entry.memory {
                    Some(text) => {
                        parse_memory_bytes(text).map_err(|reason| FingerprintError::Invalid {
                            field: "gpus.memory",
                            value: text.clone(),
                            reason,
                        })?
                    }
                    None => 0,
                };
                if gpus.iter().any(|g: &proto::Gpu| g.index == entry.index) {
                    return Err(FingerprintError::Invalid {
                        field: "gpus.index",
                        value: entry.index.to_string(),
                        reason: "listed twice".into(),
                    });
                }
                gpus.push(proto::Gpu {
                    index: entry.index,
                    uuid: entry
                        .uuid
                        .clone()
                        .unwrap_or_else(|| format!("GPU-{}-{}", config.name, entry.index)),
                    model: entry.model.clone().unwrap_or_else(|| "unknown".into()),
                    memory_bytes,
                });
            }
            gpus
        }
        None => discover_gpus(),
    };
    // The coordinator refuses a registration past these bounds: refuse to start
    // instead of retrying a registration that can never succeed.
    if let Some(problem) = ferry_common::spec::limits::worker_inventory_problem(
        config.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        gpus.iter().map(|g| (g.uuid.as_str(), g.model.as_str())),
    ) {
        return Err(FingerprintError::OutOfBounds(problem));
    }
    Ok(Capacity {
        cpu_millis,
        memory_bytes,
        gpus,
    })
}

fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where the GPUs of this machine were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSource {
    Nvml,
    NvidiaSmi,
    None,
}

/// The GPUs NVML reports, else those `nvidia-smi` reports, else none.
pub fn discover_gpus() -> Vec<proto::Gpu> {
    let (gpus, source) = discover_gpus_with_source();
    tracing::info!(gpus = gpus.len(), source = ?source, "GPU discovery");
    gpus
}

pub fn discover_gpus_with_source() -> (Vec<proto::Gpu>, GpuSource) {
    match nvml_gpus() {
        Ok(gpus) if !gpus.is_empty() => return (gpus, GpuSource::Nvml),
        Ok(_) => tracing::debug!("NVML reports no GPUs; asking nvidia-smi"),
        Err(error) => tracing::debug!(%error, "NVML is not available; asking nvidia-smi"),
    }
    let gpus = nvidia_smi_gpus();
    let source = if gpus.is_empty() {
        GpuSource::None
    } else {
        GpuSource::NvidiaSmi
    };
    (gpus, source)
}

/// Asks NVML, loaded at run time, for every GPU's index, UUID, model and memory.
fn nvml_gpus() -> Result<Vec<proto::Gpu>, nvml_wrapper::error::NvmlError> {
    use nvml_wrapper::Nvml;
    // The versioned name is what the driver installs; the bare name only comes
    // with development packages.
    let nvml = Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .or_else(|_| Nvml::init())?;
    let mut gpus = Vec::new();
    for index in 0..nvml.device_count()? {
        let device = nvml.device_by_index(index)?;
        gpus.push(proto::Gpu {
            index: device.index().unwrap_or(index),
            uuid: device.uuid()?,
            model: device.name()?,
            memory_bytes: device.memory_info()?.total,
        });
    }
    Ok(gpus)
}

/// Asks `nvidia-smi` for the GPUs; no binary, or no driver, means no GPUs.
fn nvidia_smi_gpus() -> Vec<proto::Gpu> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,uuid,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))
        }
        Ok(output) => {
            tracing::warn!(
                status = %output.status,
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "nvidia-smi failed; reporting no GPUs"
            );
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Parses `index, uuid, name, memory.total [MiB]` lines.
pub fn parse_nvidia_smi(text: &str) -> Vec<proto::Gpu> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 4 {
                return None;
            }
            Some(proto::Gpu {
                index: fields[0].parse().ok()?,
                uuid: fields[1].to_string(),
                model: fields[2].to_string(),
                memory_bytes: fields[3].parse::<u64>().ok()? * 1024 * 1024,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_output() {
        let text = "0, GPU-1b2c, NVIDIA H100 80GB HBM3, 81559\n1, GPU-9f00, NVIDIA H100 80GB HBM3, 81559\n";
        let gpus = parse_nvidia_smi(text);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].uuid, "GPU-9f00");
        assert_eq!(gpus[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].memory_bytes, 81559 * 1024 * 1024);
        assert!(parse_nvidia_smi("garbage\n").is_empty());
    }

    /// A configuration the coordinator would refuse at registration is refused
    /// at start.
    #[test]
    fn an_inventory_past_the_registration_bounds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        let tls = "[tls]\nca = \"ca.pem\"\ncert = \"w.pem\"\nkey = \"w-key.pem\"\n";
        let head = "name = \"w\"\ncoordinator = \"127.0.0.1:1\"\ndata_dir = \"data\"\ncpus = 1\nmemory = \"1Gi\"\n";
        let gpus: Vec<String> = (0..65).map(|i| format!("{{ index = {i} }}")).collect();
        let load = |extra: String| {
            std::fs::write(&path, format!("{head}{extra}\n{tls}")).unwrap();
            discover(&crate::config::WorkerConfig::load(&path).unwrap())
        };
        let refused = load(format!("gpus = [{}]", gpus.join(", "))).unwrap_err();
        assert!(refused.to_string().contains("64 GPUs"), "{refused}");
        let refused = load(format!("labels = {{ zone = \"{}\" }}", "z".repeat(300))).unwrap_err();
        assert!(refused.to_string().contains("\"zone\""), "{refused}");
        let accepted = load(format!("gpus = [{}]", gpus[..64].join(", "))).unwrap();
        assert_eq!(accepted.gpus.len(), 64);
    }

    /// Where NVML cannot be loaded (this machine has no NVIDIA driver) discovery
    /// falls back without failing; where it can, every GPU has a UUID and memory.
    #[test]
    fn discovery_without_nvml_falls_back_and_never_fails() {
        let (gpus, source) = discover_gpus_with_source();
        match source {
            GpuSource::None => assert!(gpus.is_empty()),
            GpuSource::Nvml | GpuSource::NvidiaSmi => {
                assert!(!gpus.is_empty());
                for gpu in &gpus {
                    assert!(gpu.uuid.starts_with("GPU-"), "{gpu:?}");
                    assert!(gpu.memory_bytes > 0, "{gpu:?}");
                }
            }
        }
    }
}
