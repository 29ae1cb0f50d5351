//! A real MemDS server started inside the load generator, on its own runtime whose threads are
//! named `memds-srv`, so its CPU time can be read per thread and told apart from the load's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// The name prefix of the embedded server's runtime threads.
pub(crate) const SERVER_THREAD: &str = "memds-srv";

/// A running embedded server.
pub(crate) struct Embedded {
    server: memds_server::RunningServer,
    runtime: tokio::runtime::Runtime,
    data_dir: PathBuf,
}

impl Embedded {
    /// Starts a server on 127.0.0.1:0 with a fresh data directory and the development PKI.
    pub(crate) fn start(worker_threads: usize) -> anyhow::Result<Self> {
        Self::start_inner(worker_threads, None)
    }

    /// Like [`Embedded::start`], using the PKI of another server's TLS directory (a fleet).
    pub(crate) fn start_with_tls(
        worker_threads: usize,
        tls_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::start_inner(
            worker_threads,
            Some(memds_server::tls::TlsPaths::in_dir(tls_dir)),
        )
    }

    fn start_inner(
        worker_threads: usize,
        tls: Option<memds_server::tls::TlsPaths>,
    ) -> anyhow::Result<Self> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "memds-loadgen-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let mut config = memds_server::ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir.clone(),
        );
        config.tls = tls;
        let server = runtime
            .block_on(memds_server::start(config))
            .context("starting the embedded server")?;
        Ok(Self {
            server,
            runtime,
            data_dir,
        })
    }

    /// The server's QUIC address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.quic_addr
    }

    /// Its development TLS directory (for a server sharing another's PKI, that one's).
    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.server
            .tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    /// Stops the server and removes its data directory.
    pub(crate) fn stop(self) {
        self.runtime.block_on(self.server.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// CPU seconds used by this process's threads whose name starts with `prefix`.
pub(crate) fn threads_cpu_seconds(prefix: &str) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").context("listing threads")? {
        let path = entry?.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        ticks += stat_ticks(&stat).context("parsing a thread's stat")?;
    }
    Ok(ticks as f64 / 100.0)
}

/// utime + stime of a `/proc/.../stat` line, in USER_HZ ticks (100 per second on Linux).
pub(crate) fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
