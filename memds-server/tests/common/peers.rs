//! A fleet of real `memds-server` processes on loopback sharing one development PKI
//! (`--tls-dir`), each started with the peers a test chooses. Every process is killed when the
//! fleet is dropped, a failed assertion included.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memds_client::{Client, Role};
use memds_proto::wire::Summary;

use super::{KillOnDrop, connector, free_port};

/// Anti-entropy period of the test fleets, in seconds.
pub const PERIOD: &str = "0.3";
/// How long a fleet may take to converge: many anti-entropy periods, with room for a debug
/// build on a loaded two-core machine.
pub const CONVERGE: Duration = Duration::from_secs(30);

pub struct Peers {
    root: tempfile::TempDir,
    nodes: Vec<PeerProcess>,
    /// Whether servers start with a metrics listener (on 127.0.0.1:0).
    metrics: bool,
}

struct PeerProcess {
    child: Option<KillOnDrop>,
    dir: PathBuf,
    port: u16,
    /// The metrics address the server announced, if it has a listener.
    metrics: Option<SocketAddr>,
}

impl Peers {
    /// `n` servers, not started; their ports are chosen now, so peers can name each other.
    pub fn new(n: usize) -> Self {
        let root = tempfile::tempdir().expect("a temp dir");
        let nodes = (0..n)
            .map(|i| PeerProcess {
                child: None,
                dir: root.path().join(format!("server-{i}")),
                port: free_port(),
                metrics: None,
            })
            .collect();
        Self {
            root,
            nodes,
            metrics: false,
        }
    }

    /// Like [`Peers::new`], each server with a metrics listener (`/metrics`, `/ready`).
    pub fn with_metrics(n: usize) -> Self {
        Self {
            metrics: true,
            ..Self::new(n)
        }
    }

    /// Server `i`'s metrics address (a fleet made by [`Peers::with_metrics`], started).
    pub fn metrics_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i]
            .metrics
            .expect("started, with a metrics listener")
    }

    /// A directory for the test's own files, removed with the fleet.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The PKI every server of the fleet shares (created by the first server started).
    pub fn tls_dir(&self) -> PathBuf {
        self.root.path().join("pki")
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port))
    }

    /// Starts server `i` with every other server as a peer.
    pub fn start(&mut self, i: usize) {
        let peers: Vec<usize> = (0..self.nodes.len()).filter(|&j| j != i).collect();
        self.start_with_peers(i, &peers);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Starts server `i` with exactly `peers` as its peers (none: a server on its own, which
    /// neither sends nor pulls anything), and waits for its announcement.
    pub fn start_with_peers(&mut self, i: usize, peers: &[usize]) {
        let names: Vec<String> = peers.iter().map(|&p| self.addr(p).to_string()).collect();
        self.start_with_peer_names(i, &names);
    }

    /// Starts server `i` with `names` as its `--peer` arguments (addresses or names, resolved
    /// by the server), and waits for its announcement.
    pub fn start_with_peer_names(&mut self, i: usize, names: &[String]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memds-server"));
        cmd.args(["--listen", &self.addr(i).to_string()]);
        if self.metrics {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        } else {
            cmd.arg("--no-metrics");
        }
        cmd.arg("--data-dir")
            .arg(&self.nodes[i].dir)
            .arg("--tls-dir")
            .arg(self.tls_dir())
            .args(["--anti-entropy-secs", PERIOD]);
        for name in names {
            cmd.args(["--peer", name]);
        }
        let mut child = KillOnDrop::new(
            // `FLEET_LOG=memds_server::fleet=debug` shows what anti-entropy did.
            cmd.env(
                "RUST_LOG",
                std::env::var("FLEET_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("memds-server starts"),
        );
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the announcement");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("announcement {line:?}: {e}"));
        assert_eq!(v["quic"], self.addr(i).to_string(), "{line}");
        self.nodes[i].metrics = v["metrics"]
            .as_str()
            .map(|a| a.parse().expect("a metrics address"));
        self.nodes[i].child = Some(child);
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    /// Sends `signal` (a name `kill` knows: "STOP", "CONT") to server `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn client(&self, i: usize, role: Role) -> Client {
        connector(&self.tls_dir(), role)
            .connect(self.addr(i))
            .await
            .expect("connects")
    }

    /// Server `i`'s summary, asked with the admin certificate.
    pub async fn summary(&self, i: usize) -> Summary {
        let c = self.client(i, Role::Admin).await;
        let s = c.summary().await.expect("summary");
        c.close();
        s
    }

    /// Waits until server `i` says it is ready.
    pub async fn wait_ready(&self, i: usize) {
        let started = Instant::now();
        while !self.summary(i).await.ready {
            assert!(
                started.elapsed() < CONVERGE,
                "server {i} not ready after {CONVERGE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The version of `name` server `i` holds (a tombstone's version; 0 if none).
    pub async fn version(&self, i: usize, name: &str) -> u64 {
        self.summary(i)
            .await
            .tables
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.version)
    }

    /// Waits until every server in `which` holds `name` at `version`; answers how long it took.
    pub async fn converged(&self, which: &[usize], name: &str, version: u64) -> Duration {
        let started = Instant::now();
        loop {
            let mut all = true;
            for &i in which {
                all &= self.version(i, name).await == version;
            }
            if all {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < CONVERGE,
                "servers {which:?} did not all reach {name} v{version} within {CONVERGE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
