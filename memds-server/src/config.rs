//! The `memds-server` command line and its TOML configuration file.
//!
//! Every option can be given on the command line or in the file passed with `--config`; the
//! command line wins. The file uses the same names with underscores:
//!
//! ```toml
//! listen = "0.0.0.0:7400"
//! metrics_listen = "0.0.0.0:9400"
//! data_dir = "/var/lib/memds"
//! cert = "/etc/memds/server.pem"
//! key = "/etc/memds/server.key"
//! client_ca = "/etc/memds/ca.pem"
//! max_connections = 4096
//! wal_recovery = "strict"
//! peers = ["memds-peers.memds.svc.cluster.local:7400"]
//! anti_entropy_secs = 3
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::durable::RecoveryMode;
use crate::fleet::{DEFAULT_ANTI_ENTROPY, FleetConfig};
use crate::server::{DEFAULT_SCRUB_INTERVAL, Limits, ServerConfig};
use crate::tls::TlsPaths;

/// What `--version` prints: the build, the protocol versions and the format versions.
static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| memds_proto::versions::version_text(&crate::server_info()));

/// MemDS server: routing metadata in memory, served over QUIC.
#[derive(Debug, Default, clap::Parser, Deserialize)]
#[command(version, long_version = LONG_VERSION.as_str(), about)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these options (command-line options win).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// QUIC listen address [default: 127.0.0.1:7400]; port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Prometheus listen address [default: 127.0.0.1:9400]; port 0 picks a free port.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Do not serve metrics.
    #[arg(long)]
    #[serde(default)]
    pub no_metrics: bool,
    /// Data directory [default: ./memds-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server certificate chain (PEM; it also identifies the server to its peers, so it carries
    /// the peer role); with --key and --client-ca instead of the development PKI.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The cluster CA: client certificates (routers, admins, peers) must chain to it, and
    /// peers' server certificates too. Each client's role is read from its certificate.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Directory of the development PKI, created there if missing [default: <data-dir>/tls];
    /// servers on one machine share one PKI by naming the same directory. Ignored with --cert.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// A peer's address or `host:port` name (repeatable). A name may resolve to several
    /// addresses (a Kubernetes headless service); it is resolved again every 10 s and this
    /// server's own address is skipped.
    #[arg(long = "peer", value_name = "ADDR")]
    #[serde(default)]
    pub peers: Vec<String>,
    /// Seconds between anti-entropy rounds with a peer [default: 3].
    #[arg(long)]
    pub anti_entropy_secs: Option<f64>,
    /// The name peers' certificates must carry [default: memds].
    #[arg(long)]
    pub peer_server_name: Option<String>,
    /// Most authenticated connections; a handshake in progress does not take a slot
    /// [default: 4096].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most handshakes in progress; more connection attempts are refused [default: 256].
    #[arg(long)]
    pub max_handshakes: Option<usize>,
    /// Handshakes in progress beyond which clients must prove their address with a QUIC Retry
    /// before the server keeps state for them; 0 retries every client [default: 32].
    #[arg(long)]
    pub retry_above: Option<usize>,
    /// Seconds a handshake may take before it is abandoned [default: 5].
    #[arg(long)]
    pub handshake_timeout_secs: Option<f64>,
    /// Largest request frame an admin may send, in bytes (a put carries a whole table)
    /// [default: 67108864].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Largest request frame a router may send, in bytes [default: 65536].
    #[arg(long)]
    pub max_router_frame_bytes: Option<usize>,
    /// Seconds a frame may take to arrive whole from its first byte, plus one per MiB it
    /// declares; a slower stream is reset [default: 10].
    #[arg(long)]
    pub frame_timeout_secs: Option<f64>,
    /// Seconds an answer may wait for the client to read it; then the stream is reset
    /// [default: 10].
    #[arg(long)]
    pub write_timeout_secs: Option<f64>,
    /// Lookups answered per second at most (each key of a batch counts); beyond it lookups are
    /// shed with `overloaded`, fairly between connections, while writes and peers pass
    /// [default: no limit].
    #[arg(long)]
    pub max_lookups_per_sec: Option<u64>,
    /// Most hashes per batch lookup and routes per range scan [default: 4096].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Seconds after which an idle connection is closed [default: 60].
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Most queued writes before `overloaded` [default: 1024].
    #[arg(long)]
    pub write_queue: Option<usize>,
    /// Log size in bytes past which it is compacted into a checkpoint [default: 67108864].
    #[arg(long)]
    pub compact_wal_bytes: Option<u64>,
    /// Seconds between scrubbing passes over the resident tables; 0 turns scrubbing off
    /// [default: 60].
    #[arg(long)]
    pub scrub_interval_secs: Option<u64>,
    /// Largest uncompressed table a put may carry, in bytes (its snapshot's declared archive
    /// size, checked before anything is allocated) [default: 1073741824].
    #[arg(long)]
    pub max_snapshot_bytes: Option<u64>,
    /// What to do with a damaged data directory: `strict` cuts only a torn, unacknowledged tail
    /// of the log and refuses to start on any other damage; `salvage` sets the damaged files
    /// aside (never deleting them), starts from what precedes the damage and logs every write
    /// it could not restore [default: strict].
    #[arg(long, value_enum)]
    pub wal_recovery: Option<WalRecovery>,
}

/// A positive, finite number of seconds from an option.
fn secs(value: Option<f64>, flag: &str) -> anyhow::Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("{flag} must be a positive number of seconds, not {s}"))
        })
        .transpose()
}

/// The `--wal-recovery` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalRecovery {
    /// Refuse to start on damage other than a torn tail.
    Strict,
    /// Set damaged files aside and start from what precedes the damage.
    Salvage,
}

impl Args {
    /// Merges the configuration file (if any) under the command line and resolves defaults.
    pub fn resolve(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => Args::default(),
        };
        let cli = self;
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.or(file.$field)
            };
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: pick!(max_connections).unwrap_or(defaults.max_connections),
            max_handshakes: pick!(max_handshakes).unwrap_or(defaults.max_handshakes),
            retry_above: pick!(retry_above).unwrap_or(defaults.retry_above),
            handshake_timeout: secs(pick!(handshake_timeout_secs), "--handshake-timeout-secs")?
                .unwrap_or(defaults.handshake_timeout),
            max_frame_bytes: pick!(max_frame_bytes).unwrap_or(defaults.max_frame_bytes),
            max_router_frame_bytes: pick!(max_router_frame_bytes)
                .unwrap_or(defaults.max_router_frame_bytes),
            frame_timeout: secs(pick!(frame_timeout_secs), "--frame-timeout-secs")?
                .unwrap_or(defaults.frame_timeout),
            write_timeout: secs(pick!(write_timeout_secs), "--write-timeout-secs")?
                .unwrap_or(defaults.write_timeout),
            max_lookups_per_sec: pick!(max_lookups_per_sec).or(defaults.max_lookups_per_sec),
            max_batch: pick!(max_batch).unwrap_or(defaults.max_batch),
            idle_timeout: pick!(idle_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.idle_timeout),
            write_queue: pick!(write_queue).unwrap_or(defaults.write_queue),
            max_snapshot_bytes: pick!(max_snapshot_bytes).unwrap_or(defaults.max_snapshot_bytes),
            ..defaults
        };
        if limits.max_batch == 0
            || limits.max_connections == 0
            || limits.max_handshakes == 0
            || limits.max_frame_bytes < 64
            || limits.max_router_frame_bytes < 64
        {
            bail!(
                "--max-batch, --max-connections and --max-handshakes must be positive, and \
                 --max-frame-bytes and --max-router-frame-bytes at least 64"
            );
        }
        // A router's largest batch must fit its frame, or the batch would close the connection
        // instead of getting its typed `too_large`.
        let batch_frame = limits.max_batch.saturating_mul(8).saturating_add(1024);
        if limits.max_router_frame_bytes < batch_frame {
            bail!(
                "--max-router-frame-bytes {} cannot carry a batch of --max-batch {} hashes: it \
                 must be at least {batch_frame}",
                limits.max_router_frame_bytes,
                limits.max_batch
            );
        }
        if limits.max_lookups_per_sec == Some(0) {
            bail!("--max-lookups-per-sec must be positive (leave it out for no limit)");
        }
        let tls_files = [pick!(cert), pick!(key), pick!(client_ca)];
        let tls = match tls_files {
            [None, None, None] => None,
            [Some(cert), Some(key), Some(client_ca)] => Some(TlsPaths {
                cert,
                key,
                client_ca,
            }),
            _ => bail!("--cert, --key and --client-ca go together: give all three or none"),
        };
        let anti_entropy = match pick!(anti_entropy_secs) {
            None => DEFAULT_ANTI_ENTROPY,
            Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => {
                Duration::from_secs_f64(secs)
            }
            Some(secs) => bail!("--anti-entropy-secs must be above 0 and at most 3600, not {secs}"),
        };
        let peers = if cli.peers.is_empty() {
            file.peers
        } else {
            cli.peers
        };
        for p in &peers {
            if !p.contains(':') {
                bail!("--peer {p:?} needs a port: HOST:PORT or ADDR:PORT");
            }
        }
        let fleet = FleetConfig {
            peers,
            anti_entropy,
            peer_server_name: pick!(peer_server_name)
                .unwrap_or_else(|| FleetConfig::default().peer_server_name),
        };
        let metrics_listen = if cli.no_metrics || file.no_metrics {
            None
        } else {
            Some(pick!(metrics_listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9400))))
        };
        Ok(ServerConfig {
            listen: pick!(listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400))),
            metrics_listen,
            data_dir: pick!(data_dir).unwrap_or_else(|| PathBuf::from("memds-data")),
            tls,
            dev_tls_dir: pick!(tls_dir),
            fleet,
            limits,
            compact_wal_bytes: pick!(compact_wal_bytes).unwrap_or(64 << 20),
            scrub_interval: match pick!(scrub_interval_secs) {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => Some(DEFAULT_SCRUB_INTERVAL),
            },
            recovery: match pick!(wal_recovery) {
                Some(WalRecovery::Salvage) => RecoveryMode::Salvage,
                Some(WalRecovery::Strict) | None => RecoveryMode::Strict,
            },
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<Args> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("parsing the configuration file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_hostile_client_limits_parse_and_inconsistent_ones_are_refused() {
        let c = Args::parse_from([
            "memds-server",
            "--max-handshakes",
            "64",
            "--retry-above",
            "0",
            "--handshake-timeout-secs",
            "2.5",
            "--frame-timeout-secs",
            "3",
            "--write-timeout-secs",
            "4",
            "--max-lookups-per-sec",
            "50000",
        ])
        .resolve()
        .expect("valid");
        assert_eq!(c.limits.max_handshakes, 64);
        assert_eq!(c.limits.retry_above, 0);
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(c.limits.frame_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.write_timeout, Duration::from_secs(4));
        assert_eq!(c.limits.max_lookups_per_sec, Some(50_000));
        assert_eq!(c.limits.max_router_frame_bytes, 64 << 10);
        for (args, says) in [
            (&["--max-lookups-per-sec", "0"][..], "--max-lookups-per-sec"),
            (
                &["--handshake-timeout-secs", "0"][..],
                "--handshake-timeout-secs",
            ),
            (&["--write-timeout-secs=-1"][..], "--write-timeout-secs"),
            (&["--max-batch", "10000"][..], "cannot carry a batch"),
            (&["--max-handshakes", "0"][..], "--max-handshakes"),
        ] {
            let err = Args::parse_from(["memds-server"].iter().chain(args))
                .resolve()
                .expect_err("refused");
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn command_line_wins_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let file = dir.path().join("memds.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndata_dir = \"/from/file\"\nmax_batch = 10\n",
        )
        .expect("write");
        let args = Args::parse_from([
            "memds-server",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ]);
        let c = args.resolve().expect("valid");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.limits.max_batch, 10);
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9400)))
        );
        assert!(c.tls.is_none());

        std::fs::write(&file, "listne = \"x\"\n").expect("write");
        let err = Args::parse_from(["memds-server", "--config", file.to_str().expect("utf-8")])
            .resolve()
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");

        let err = Args::parse_from(["memds-server", "--cert", "a.pem"])
            .resolve()
            .expect_err("partial TLS");
        assert!(err.to_string().contains("go together"));

        std::fs::write(
            &file,
            "peers = [\"a:1\", \"b:2\"]\nanti_entropy_secs = 0.5\ntls_dir = \"/pki\"\n",
        )
        .expect("write");
        let f = file.to_str().expect("utf-8");
        let c = Args::parse_from(["memds-server", "--config", f])
            .resolve()
            .expect("valid");
        assert_eq!(c.fleet.peers, ["a:1", "b:2"]);
        assert_eq!(c.fleet.anti_entropy, Duration::from_millis(500));
        assert_eq!(c.dev_tls_dir, Some(PathBuf::from("/pki")));
        let c = Args::parse_from(["memds-server", "--config", f, "--peer", "c:3"])
            .resolve()
            .expect("valid");
        assert_eq!(
            c.fleet.peers,
            ["c:3"],
            "command-line peers replace the file's"
        );
        let err = Args::parse_from(["memds-server", "--peer", "nohost"])
            .resolve()
            .expect_err("no port");
        assert!(err.to_string().contains("needs a port"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
