//! Real MemDS servers started inside the load generator, each on its own runtime whose threads
//! are named (`memds-srv` by default), so their CPU time can be read per thread and told apart
//! from the load's.
//!
//! A fleet of embedded servers ([`start_fleet`]) is a real one: every server is a peer of every
//! other (forwarding, anti-entropy, readiness), they share one development PKI directory, and
//! each listens on a loopback port picked before any of them starts, since peers must know each
//! other's addresses up front.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// The name of the embedded servers' runtime threads unless told otherwise.
pub(crate) const SERVER_THREAD: &str = "memds-srv";

/// A running embedded server.
pub(crate) struct Embedded {
    server: memds_server::RunningServer,
    runtime: tokio::runtime::Runtime,
    data_dir: PathBuf,
    /// Holds `data_dir`; removed when the server is dropped or stopped (declared last, so
    /// after the server and its runtime are gone).
    dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts a server on 127.0.0.1:0 with a fresh data directory and its own development PKI.
    pub(crate) fn start(worker_threads: usize) -> anyhow::Result<Self> {
        Self::start_with(worker_threads, SERVER_THREAD, |_| {})
    }

    /// Starts a server with a fresh data directory, its runtime threads named `thread_name`,
    /// after `configure` has adjusted its configuration (listen address 127.0.0.1:0, the data
    /// directory's own PKI, no peers, default limits unless it changes them).
    pub(crate) fn start_with(
        worker_threads: usize,
        thread_name: &str,
        configure: impl FnOnce(&mut memds_server::ServerConfig),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("memds-loadgen-srv-")
            .tempdir()
            .context("creating the data directory")?;
        // The server creates its data directory itself.
        let data_dir = dir.path().join("data");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name(thread_name)
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let mut config = memds_server::ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir.clone(),
        );
        configure(&mut config);
        let server = match runtime.block_on(memds_server::start(config)) {
            Ok(s) => s,
            Err(e) => return Err(e.context("starting the embedded server")),
        };
        Ok(Self {
            server,
            runtime,
            data_dir,
            dir,
        })
    }

    /// The server's QUIC address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.quic_addr
    }

    /// Its metrics address (`/metrics`, `/ready`, `/health`), if it was given one.
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr
    }

    /// Its development TLS directory (for a server sharing a fleet's PKI, that one).
    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.server
            .tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    /// Sets the lookups per second the server admits (`None`: no limit), while it runs.
    pub(crate) fn set_max_lookups_per_sec(&self, per_sec: Option<u64>) {
        self.server.set_max_lookups_per_sec(per_sec);
    }

    /// Stops the server and removes its data directory.
    pub(crate) fn stop(self) {
        self.runtime.block_on(self.server.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        drop(self.dir);
    }
}

/// A development PKI in a temporary directory, for servers (and their clients) to share;
/// removed when dropped.
pub(crate) struct SharedPki {
    dir: tempfile::TempDir,
}

impl SharedPki {
    /// Creates the CA and the server, admin, router and peer certificates.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("memds-loadgen-pki-")
            .tempdir()
            .context("creating the PKI directory")?;
        memds_server::tls::ensure_dev_pki(dir.path()).context("creating the development PKI")?;
        Ok(Self { dir })
    }

    /// The directory: what `dev_tls_dir` and `ClientTls::from_dir` take.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `n` distinct free loopback UDP ports: each is bound on 127.0.0.1:0 (all at once, so they
/// differ), read, and released before the servers bind them.
pub(crate) fn free_udp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free UDP ports")?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// Makes `config` a fleet member listening on `listen`, using the development PKI in `pki`,
/// with `peers` as its peers and an anti-entropy round every `anti_entropy`.
pub(crate) fn join_fleet(
    config: &mut memds_server::ServerConfig,
    listen: SocketAddr,
    pki: &Path,
    peers: &[SocketAddr],
    anti_entropy: Duration,
) {
    config.listen = listen;
    config.dev_tls_dir = Some(pki.to_owned());
    config.fleet.peers = peers.iter().map(SocketAddr::to_string).collect();
    config.fleet.anti_entropy = anti_entropy;
}

/// Starts `n` servers on free loopback ports, each a peer of all the others, sharing the PKI in
/// `pki`, each with `worker_threads` runtime threads named [`SERVER_THREAD`]; `configure`
/// adjusts every server's configuration further. Blocking: call it off any async runtime (or in
/// `spawn_blocking`). On failure the servers already started are stopped.
pub(crate) fn start_fleet(
    n: usize,
    worker_threads: usize,
    pki: &Path,
    anti_entropy: Duration,
    configure: impl Fn(&mut memds_server::ServerConfig),
) -> anyhow::Result<Vec<Embedded>> {
    let addrs: Vec<SocketAddr> = free_udp_ports(n)?
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let mut started: Vec<Embedded> = Vec::with_capacity(n);
    for (i, &addr) in addrs.iter().enumerate() {
        let peers: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != addr).collect();
        let server = Embedded::start_with(worker_threads, SERVER_THREAD, |c| {
            join_fleet(c, addr, pki, &peers, anti_entropy);
            configure(c);
        })
        .with_context(|| format!("starting fleet server {i} on {addr}"));
        match server {
            Ok(s) => started.push(s),
            Err(e) => {
                started.into_iter().for_each(Embedded::stop);
                return Err(e);
            }
        }
    }
    Ok(started)
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
