//! `ferry-worker --config worker.toml`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferry_worker::WorkerConfig;

/// Ferry's worker daemon: runs the steps the coordinator assigns to this machine.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The worker's configuration file.
    #[arg(long, env = "FERRY_WORKER_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = WorkerConfig::load(&args.config)?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        ferry_common::signals::terminated().await;
        let _ = stop.send(true);
    });
    let result = ferry_worker::run(config, shutdown)
        .await
        .context("the worker cannot start");
    signal.abort();
    result
}
