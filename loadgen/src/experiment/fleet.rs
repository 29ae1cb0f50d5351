//! The fleet of one run: the embedded servers (or the external `--servers`), the authority's
//! admin connections to them, and [`Pusher`], which sends each change to one server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::TableMap;
use memds_proto::wire::PartitionUpdate;

use super::Args;
use super::results::{Replication, ServerState};
use crate::embedded::{self, Embedded, SharedPki};

/// How long one push to one server may take before the authority tries the next.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run waits, before the load starts, for every server to be ready and hold the
/// table.
const START_WAIT: Duration = Duration::from_secs(60);

/// The fleet of one run.
pub(super) struct Fleet {
    embedded: Vec<Option<Embedded>>,
    addrs: Vec<SocketAddr>,
    tls_dir: PathBuf,
    pusher: Arc<Pusher>,
    /// The embedded fleet's PKI, removed once the fleet is dropped.
    _pki: Option<SharedPki>,
}

impl Fleet {
    pub(super) async fn start(args: &Args) -> anyhow::Result<Self> {
        let (embedded, addrs, tls_dir, pki) = if args.servers.is_empty() {
            let pki = SharedPki::create()?;
            let dir = pki.path().to_owned();
            let (n, period) = (args.fleet, Duration::from_secs_f64(args.anti_entropy));
            let servers = tokio::task::spawn_blocking(move || {
                embedded::start_fleet(n, 1, &dir, period, |_| {})
            })
            .await??;
            let addrs = servers.iter().map(Embedded::addr).collect();
            let tls = pki.path().to_owned();
            (
                servers.into_iter().map(Some).collect(),
                addrs,
                tls,
                Some(pki),
            )
        } else {
            (
                Vec::new(),
                args.servers.clone(),
                args.tls_dir.clone().context("--tls-dir")?,
                None,
            )
        };
        let connector = Connector::new(
            &ClientTls::from_dir(&tls_dir, Role::Admin)?,
            ConnectOptions::default(),
        )?;
        let mut admins = Vec::new();
        for &a in &addrs {
            admins.push(
                connector
                    .connect(a)
                    .await
                    .with_context(|| format!("connecting to {a}"))?,
            );
        }
        Ok(Self {
            embedded,
            addrs,
            tls_dir,
            pusher: Arc::new(Pusher {
                running: admins.iter().map(|_| AtomicBool::new(true)).collect(),
                pushes: admins.iter().map(|_| AtomicU64::new(0)).collect(),
                failed: AtomicU64::new(0),
                admins,
            }),
            _pki: pki,
        })
    }

    /// The servers' addresses, in `--servers` / fleet order.
    pub(super) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The TLS directory the routers' certificates come from.
    pub(super) fn tls_dir(&self) -> &Path {
        &self.tls_dir
    }

    /// Where the authority's changes go.
    pub(super) fn pusher(&self) -> &Arc<Pusher> {
        &self.pusher
    }

    /// Pushes the run's table to one server and waits (at most [`START_WAIT`]) until every
    /// server is ready and holds it.
    pub(super) async fn seed(&self, map: &TableMap) -> anyhow::Result<()> {
        self.pusher
            .push(Change::Put(map))
            .await
            .context("no server took the table")?;
        self.wait_replicated(map.name().as_str(), map.version().get(), START_WAIT)
            .await
            .map_err(anyhow::Error::msg)
            .context("the table did not reach every server (an external fleet must be peers)")?;
        Ok(())
    }

    /// Zeroed per-server lookup counts for [`Fleet::lookups`].
    pub(super) fn lookup_counts(&self) -> Vec<Lookups> {
        vec![Lookups::default(); self.pusher.admins.len()]
    }

    /// Gives every running embedded server a lookup limit of `fleet_per_sec` shared evenly
    /// (rounded up), enforced by the servers themselves; answers the limit each got. An
    /// external fleet cannot be provisioned this way (`run` refuses `--provision` with
    /// `--servers`).
    pub(super) fn provision(&self, fleet_per_sec: f64) -> u64 {
        let running = self.running_servers().max(1);
        let per_server = (fleet_per_sec / running as f64).ceil().max(1.0) as u64;
        for e in self.embedded.iter().flatten() {
            e.set_max_lookups_per_sec(Some(per_server));
        }
        per_server
    }

    /// Servers still running.
    pub(super) fn running_servers(&self) -> usize {
        self.pusher
            .running
            .iter()
            .filter(|r| r.load(Ordering::Relaxed))
            .count()
    }

    /// What replication carried, once the load has stopped: every running server should come
    /// to hold the authority's last version, whichever server the changes were pushed to.
    pub(super) async fn replication(
        &self,
        table: &str,
        authority_version: u64,
        anti_entropy: f64,
    ) -> Replication {
        let converge_limit = Duration::from_secs_f64(5.0 * anti_entropy + 2.0);
        let converged_s = self
            .wait_replicated(table, authority_version, converge_limit)
            .await
            .ok();
        Replication {
            authority_version,
            failed_pushes: self.pusher.failed.load(Ordering::Relaxed),
            converged_s,
            servers: self.states(table, authority_version).await,
        }
    }

    /// Lookups counted by the servers so far, summed (a stopped server keeps its last count).
    pub(super) async fn lookups(&self, last: &mut [Lookups]) -> Lookups {
        for (i, a) in self.pusher.admins.iter().enumerate() {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), a.stats()).await {
                last[i] = Lookups {
                    served: s.lookups_total,
                    shed: s.lookups_shed_total,
                };
            }
        }
        last.iter().fold(Lookups::default(), |a, b| Lookups {
            served: a.served + b.served,
            shed: a.shed + b.shed,
        })
    }

    /// Waits until every running server is ready and holds `table` at `version` or newer:
    /// `Ok` with the seconds it took, or what was still missing at `limit`.
    async fn wait_replicated(
        &self,
        table: &str,
        version: u64,
        limit: Duration,
    ) -> Result<f64, String> {
        let started = Instant::now();
        loop {
            let mut missing = Vec::new();
            for (i, a) in self.pusher.admins.iter().enumerate() {
                if !self.pusher.running[i].load(Ordering::Relaxed) {
                    continue;
                }
                let held = match tokio::time::timeout(Duration::from_millis(500), a.summary()).await
                {
                    Ok(Ok(s)) => s
                        .tables
                        .iter()
                        .find(|t| t.name == table && !t.dropped)
                        .map(|t| (t.version, s.ready)),
                    _ => None,
                };
                match held {
                    Some((v, true)) if v >= version => {}
                    Some((v, ready)) => missing.push(format!(
                        "{} holds version {v}{}",
                        self.addrs[i],
                        if ready { "" } else { " and is not ready" }
                    )),
                    None => missing.push(format!("{} does not hold it", self.addrs[i])),
                }
            }
            if missing.is_empty() {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "after {limit:?}, waiting for every server to hold {table} at version {version}: {}",
                    missing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What each server holds of `table` now, against `version`.
    async fn states(&self, table: &str, version: u64) -> Vec<ServerState> {
        let mut out = Vec::new();
        for (i, a) in self.pusher.admins.iter().enumerate() {
            let running = self.pusher.running[i].load(Ordering::Relaxed);
            let pushes = self.pusher.pushes[i].load(Ordering::Relaxed);
            let (mut held, mut serves_latest) = (None, false);
            if running {
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_millis(500), a.summary()).await
                {
                    held = s
                        .tables
                        .iter()
                        .find(|t| t.name == table && !t.dropped)
                        .map(|t| t.version);
                }
                serves_latest = matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        a.lookup_at_least(table, 0, Some(version))
                    )
                    .await,
                    Ok(Ok(_))
                );
            }
            out.push(ServerState {
                addr: self.addrs[i].to_string(),
                running,
                pushes,
                version: held,
                serves_latest,
            });
        }
        out
    }

    pub(super) async fn stop_server(&mut self, i: usize) {
        if let Some(flag) = self.pusher.running.get(i) {
            flag.store(false, Ordering::Relaxed);
        }
        if let Some(e) = self.embedded.get_mut(i).and_then(Option::take) {
            let _ = tokio::task::spawn_blocking(move || e.stop()).await;
        }
    }

    pub(super) async fn stop(mut self) {
        for i in 0..self.embedded.len() {
            self.stop_server(i).await;
        }
    }
}

/// Lookups a server counted: those it answered and those it shed with `overloaded` (its
/// lookup limit). Offered load is the sum.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Lookups {
    pub(super) served: u64,
    pub(super) shed: u64,
}

impl Lookups {
    /// Served and shed: what the routers offered.
    pub(super) fn offered(self) -> u64 {
        self.served + self.shed
    }

    /// What was counted since `earlier`.
    pub(super) fn since(self, earlier: Lookups) -> Lookups {
        Lookups {
            served: self.served.saturating_sub(earlier.served),
            shed: self.shed.saturating_sub(earlier.shed),
        }
    }
}

/// A change the authority pushes.
#[derive(Clone, Copy)]
pub(super) enum Change<'a> {
    Put(&'a TableMap),
    Update(&'a PartitionUpdate),
}

/// Where the authority's changes go: ONE server, the first still running, or the next one if
/// the push to it fails (an error answer, a closed connection, or no answer within
/// [`PUSH_TIMEOUT`]). The fleet's replication carries each change to the others.
pub(super) struct Pusher {
    admins: Vec<Client>,
    /// Cleared when the run stops the server.
    running: Vec<AtomicBool>,
    /// Changes each server took.
    pushes: Vec<AtomicU64>,
    /// Changes no server took.
    failed: AtomicU64,
}

impl Pusher {
    /// Pushes `change`: the index of the server that took it, or `None` if none did.
    pub(super) async fn push(&self, change: Change<'_>) -> Option<usize> {
        for (i, admin) in self.admins.iter().enumerate() {
            if !self.running[i].load(Ordering::Relaxed) {
                continue;
            }
            let sent = async {
                match change {
                    Change::Put(map) => admin.put_table(map).await,
                    Change::Update(update) => admin.update_partitions(update.clone()).await,
                }
            };
            if let Ok(Ok(_)) = tokio::time::timeout(PUSH_TIMEOUT, sent).await {
                self.pushes[i].fetch_add(1, Ordering::Relaxed);
                return Some(i);
            }
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        None
    }
}
