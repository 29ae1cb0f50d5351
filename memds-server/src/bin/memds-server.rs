//! `memds-server`: runs a MemDS server until SIGTERM or Ctrl-C.
//!
//! The first line on stdout is one JSON object naming the bound addresses and the TLS
//! directory, so scripts and tests can find a server started on port 0. Logs go to stderr
//! (`RUST_LOG` filters them; default `info`).

use clap::Parser as _;
use memds_server::config::Args;
use tokio::signal::unix::{SignalKind, signal};

/// jemalloc, not the system allocator: a server that replaces its tables keeps its RSS near its
/// live heap only with an allocator that returns freed memory to the system.
///
/// `loadgen bench-server-memory --restart` (20 tables x 100,000 partitions at random split
/// points over 300 nodes, put 5 times; median of 3 runs on the 2-core development machine; the
/// tables' own `memds_resident_bytes` is 27.9 MiB) measured RSS after rounds 1 and 5:
///
/// | allocator | round 1 | round 5 | growth after the first load | round 5 / round 1 |
/// |---|---|---|---|---|
/// | glibc malloc | 61.2 MiB | 99.7 MiB | 28.2 B/partition | 1.62 |
/// | jemalloc, as configured below | 38.6 MiB | 40.0 MiB | 16.1 B/partition | 1.04 |
/// | mimalloc 0.1.52 (v3), defaults | 144.6 MiB | 156.0 MiB | 67.8 B/partition | 1.11 |
/// | mimalloc v2, defaults | 112.3 MiB | 116.7 MiB | 47.7 B/partition | 1.04 |
///
/// With jemalloc a restart over the same data directory comes back at 39.6 MiB, the same as
/// after five rounds; mimalloc with `MIMALLOC_PURGE_DELAY=0` (one run each) still held 84 (v3)
/// and 61 (v2) MiB. Lookups per server CPU-second (`bench-server --servers`, median of 4) were
/// within the runs' spread: 3.50 M with jemalloc, 3.60 M with glibc, 3.69 M with mimalloc.
///
/// Under heaptrack the live heap stays at 32 MiB after every round with glibc too: glibc's RSS
/// growth is memory freed but kept. Each put and each checkpoint allocates and frees buffers of
/// megabytes; after the first such free glibc raises its mmap threshold (up to 32 MiB), so the
/// next ones come from its arenas, which it can only trim from the top. (With
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072` glibc stays at 41.6 MiB, but that would
/// need every operator to set it.)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (the `MALLOC_CONF` environment variable overrides
/// them). One background thread purges freed pages (the default would purge only inside later
/// allocation calls, so an idle server would keep them); dirty pages are returned after a
/// second, with `MADV_DONTNEED` straight away (`muzzy_decay_ms:0`: pages released with
/// `MADV_FREE` would still count in RSS until the kernel needs them).
// jemalloc reads `const char *malloc_conf` once, before `main`: a thin reference to the first
// byte of a NUL-terminated string has that layout (a `&[u8]` would be a pointer and a length).
// Exporting a symbol by name is an unsafe attribute; nothing else here is unsafe.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
static malloc_conf: &u8 =
    &b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

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
        // The handler is installed before the server starts: once the announcement is out (and
        // `/health` answers), a supervisor may send SIGTERM at any moment, and the default
        // action would kill the process instead of stopping it gracefully.
        let mut term = signal(SignalKind::terminate())?;
        let server = memds_server::start(config).await?;
        println!("{}", server.announcement());
        tracing::info!(quic = %server.quic_addr, metrics = ?server.metrics_addr, "serving");
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
