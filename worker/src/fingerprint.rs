//! What this machine offers: CPU cores, memory, NVIDIA GPUs (through `nvidia-smi`
//! where it is installed, or an explicit inventory from the configuration), labels.

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
        None => nvidia_smi_gpus(),
    };
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
}
