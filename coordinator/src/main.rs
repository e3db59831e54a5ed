//! `ferry-coordinator --config coordinator.toml`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferry_coordinator::{Coordinator, CoordinatorConfig};

/// mimalloc: the coordinator allocates and frees many small objects across
/// threads (requests, commands, records), where it measured clearly faster than
/// the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ferry's coordinator: holds all pipeline state and schedules steps onto workers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The coordinator's configuration file.
    #[arg(long, env = "FERRY_COORDINATOR_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_common::tasks::install_panic_hook();
    // Every file and directory this process creates, its libraries' too (sled's
    // state files, the blob store's files and folders), is its user's only:
    // 0600 and 0700. Ferry's own files are created with those modes anyway
    // (`ferry_common::durable`), which also covers `ferry dev`.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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
    let config = CoordinatorConfig::load(&args.config)?;
    let coordinator = Coordinator::bind(config)
        .await
        .context("the coordinator cannot start")?;
    println!(
        "ferry-coordinator: listening on {}",
        coordinator.local_addr()
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        ferry_common::signals::terminated().await;
        tracing::info!("stopping");
        ferry_common::signals::exit_after(
            ferry_common::signals::STOP_DEADLINE,
            "ferry-coordinator",
        );
        let _ = stop.send(true);
    });
    let served = coordinator.serve(shutdown).await;
    signal.abort();
    served?;
    Ok(())
}
