//! `memds-server`: runs a MemDS server until SIGTERM or Ctrl-C.
//!
//! The first line on stdout is one JSON object naming the bound addresses and the TLS
//! directory, so scripts and tests can find a server started on port 0. Logs go to stderr
//! (`RUST_LOG` filters them; default `info`).

use clap::Parser as _;
use memds_server::config::Args;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Args::parse().resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("memds-server")
        .build()?;
    runtime.block_on(async move {
        let server = memds_server::start(config).await?;
        println!("{}", server.announcement());
        tracing::info!(quic = %server.quic_addr, metrics = ?server.metrics_addr, "serving");
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
