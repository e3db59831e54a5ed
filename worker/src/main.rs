//! `ferry-worker --config worker.toml`, or `ferry-worker --list-gpus` to see what
//! GPU discovery finds on this machine.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferry_worker::WorkerConfig;
use ferry_worker::fingerprint::GpuSource;

/// Ferry's worker daemon: runs the steps the coordinator assigns to this machine.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The worker's configuration file.
    #[arg(
        long,
        env = "FERRY_WORKER_CONFIG",
        required_unless_present = "list_gpus"
    )]
    config: Option<PathBuf>,
    /// Print the GPUs discovery finds here (through NVML, else nvidia-smi) and exit.
    #[arg(long)]
    list_gpus: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_common::tasks::install_panic_hook();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    ferry_common::faults::install().map_err(anyhow::Error::msg)?;
    ferry_common::time::check_offset().map_err(anyhow::Error::msg)?;
    let args = Args::parse();
    if args.list_gpus {
        let (gpus, source) = ferry_worker::fingerprint::discover_gpus_with_source();
        match source {
            GpuSource::None => println!(
                "no NVIDIA GPU found (NVML could not be loaded or lists none, and nvidia-smi \
                 is missing or lists none)"
            ),
            GpuSource::Nvml | GpuSource::NvidiaSmi => {
                let via = if source == GpuSource::Nvml {
                    "NVML"
                } else {
                    "nvidia-smi"
                };
                println!("{} GPU(s) found through {via}:", gpus.len());
                for gpu in gpus {
                    println!(
                        "  {}  {}  {}  {:.1} GiB",
                        gpu.index,
                        gpu.uuid,
                        gpu.model,
                        gpu.memory_bytes as f64 / (1u64 << 30) as f64
                    );
                }
            }
        }
        return Ok(());
    }
    let Some(config) = args.config else {
        anyhow::bail!("--config is required");
    };
    let config = WorkerConfig::load(&config)?;
    ferry_worker::executor::direct::configure(config.bucket_ca.as_deref())?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        ferry_common::signals::terminated().await;
        ferry_common::signals::exit_after(ferry_common::signals::STOP_DEADLINE, "ferry-worker");
        let _ = stop.send(true);
    });
    let result = ferry_worker::run(config, shutdown)
        .await
        .context("the worker cannot start");
    signal.abort();
    result
}
