//! The fleet: peers, write forwarding, anti-entropy and readiness.
//!
//! Every server of a fleet holds every table. Three mechanisms keep them equal, all idempotent
//! and order-tolerant because every write names its version and nobody applies an older one:
//!
//! - **Forwarding.** A write an admin sends to one server is, once applied there, queued to each
//!   peer (a bounded queue per peer; a write that does not fit, or whose send fails, is counted
//!   and left to anti-entropy). Writes that arrive from peers are not forwarded again.
//! - **Anti-entropy.** Every `period`, and a moment after a lookup found this server behind, the
//!   server asks one peer (round robin) for its [`Summary`] (every table's version and digest and
//!   every tombstone: one entry per table, whatever changed) and pulls each table the peer holds
//!   newer, through the writer, as any write. A round always runs and always exchanges the
//!   whole summary: the work of a round does not depend on how much changed, only the pulls do.
//! - **Readiness.** A server with peers starts not ready: lookups from routers are answered
//!   `unavailable` (the router cache asks another server). It becomes ready when a round with a
//!   ready peer ends holding every table at least at the version that peer advertised, or when
//!   it has completed a round with every peer it knows and none of them was ready (a fleet
//!   starting together, where nobody holds more than what was exchanged; peers that cannot be
//!   reached do not hold it back, but at least one must answer). A server with no peer
//!   configured, or whose peer names resolve to no address but its own, is ready at once.
//!   Readiness is never lost once reached: a server that falls behind answers `behind` to
//!   routers that have seen newer versions, and catches up.
//!
//! Peers are named by address or DNS name (a Kubernetes headless service resolves to every
//! pod); names are resolved again every [`RESOLVE_EVERY`], and an address that answers with this
//! server's own instance number is recognised as itself and skipped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memds_client::{Client, ClientError, Connector};
use memds_proto::wire::{ErrorCode, Request, Response, Summary, TableSummary};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::store::{Store, Write};
use crate::writer::{Job, RepairJob, Repaired, WriteJob};

/// How often peer names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// Writes queued for one peer at most; more are left to anti-entropy.
pub const FORWARD_QUEUE: usize = 1024;
/// How long a round asked for by a `behind` answer waits first: the write the router saw
/// elsewhere is usually being forwarded here already (tens of milliseconds), and a round that
/// started at once would pull the whole table to get the same version.
const CATCH_UP_DELAY: Duration = Duration::from_millis(250);
/// How long one pull of a table from a peer may take (a large table included).
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a forwarded write may take to be answered.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a peer may take to answer a summary: a few periods, so that a peer that stopped
/// answering (paused, cut off) holds up no round for long.
fn summary_timeout(period: Duration) -> Duration {
    (period * 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
}
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet settings of a server.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Peer addresses or `host:port` names; empty for a server on its own.
    pub peers: Vec<String>,
    /// Time between anti-entropy rounds.
    pub anti_entropy: Duration,
    /// The name peers' certificates must carry.
    pub peer_server_name: String,
}

/// Default time between anti-entropy rounds.
pub const DEFAULT_ANTI_ENTROPY: Duration = Duration::from_secs(3);

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            anti_entropy: DEFAULT_ANTI_ENTROPY,
            peer_server_name: "memds".into(),
        }
    }
}

/// Whether the server is ready to answer routers, and why not.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    fn new(ready: bool, reason: &str) -> Self {
        let r = Self {
            ready: AtomicBool::new(ready),
            reason: Mutex::new(reason.to_owned()),
        };
        ::metrics::gauge!("memds_ready").set(if ready { 1.0 } else { 0.0 });
        r
    }

    /// Whether the server has caught up with its peers since it started.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// One line: why the server is not ready, or `ready`.
    pub fn reason(&self) -> String {
        if self.is_ready() {
            return "ready".into();
        }
        self.reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| "not ready".into())
    }

    fn set_ready(&self, why: &str) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(why, "ready");
            ::metrics::gauge!("memds_ready").set(1.0);
        }
    }

    fn not_ready_because(&self, reason: String) {
        if !self.is_ready()
            && let Ok(mut r) = self.reason.lock()
        {
            *r = reason;
        }
    }
}

/// The fleet state connections use: readiness, the catch-up trigger, forwarding.
#[derive(Debug)]
pub struct Fleet {
    /// A number drawn at start, sent in summaries.
    pub instance: u64,
    readiness: Arc<Readiness>,
    catch_up: Notify,
    forwarders: Mutex<HashMap<SocketAddr, mpsc::Sender<Arc<Request>>>>,
    has_peers: bool,
}

impl Fleet {
    /// The fleet state of a server with these settings.
    pub fn new(config: &FleetConfig) -> Arc<Self> {
        let has_peers = !config.peers.is_empty();
        let readiness = if has_peers {
            Readiness::new(false, "no anti-entropy round with a peer has completed yet")
        } else {
            Readiness::new(true, "")
        };
        Arc::new(Self {
            instance: rand_instance(),
            readiness: Arc::new(readiness),
            catch_up: Notify::new(),
            forwarders: Mutex::new(HashMap::new()),
            has_peers,
        })
    }

    /// The readiness shared with the metrics listener.
    pub fn readiness(&self) -> Arc<Readiness> {
        Arc::clone(&self.readiness)
    }

    /// Whether peers are configured.
    pub fn has_peers(&self) -> bool {
        self.has_peers
    }

    /// Whether the server answers routers' lookups.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Asks for an anti-entropy round now (a lookup found this server behind).
    pub fn catch_up(&self) {
        if self.has_peers {
            self.catch_up.notify_one();
        }
    }

    /// Queues an applied write to every peer. Never waits: a full queue drops the write for
    /// that peer (anti-entropy carries it instead).
    pub fn forward(&self, request: Request) {
        let Ok(forwarders) = self.forwarders.lock() else {
            return;
        };
        if forwarders.is_empty() {
            return;
        }
        let request = Arc::new(request);
        for (peer, tx) in forwarders.iter() {
            if tx.try_send(Arc::clone(&request)).is_err() {
                forward_failed(*peer, "queue_full");
            }
        }
    }

    /// What this server holds, as it tells its peers.
    pub fn summary(&self, store: &Store) -> Summary {
        summary_of(store, self.instance, self.is_ready())
    }
}

/// The summary of `store`.
pub fn summary_of(store: &Store, instance: u64, ready: bool) -> Summary {
    let tables = store.tables();
    let mut entries: Vec<TableSummary> = tables
        .iter()
        .map(|(name, t)| TableSummary {
            name: name.clone(),
            version: t.version().get(),
            digest: t.checksum(),
            dropped: false,
        })
        .chain(tables.tombstones().map(|(name, version)| TableSummary {
            name: name.clone(),
            version,
            digest: 0,
            dropped: true,
        }))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Summary {
        instance,
        ready,
        tables: entries,
    }
}

fn rand_instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn forward_failed(peer: SocketAddr, reason: &'static str) {
    ::metrics::counter!("memds_forwards_total", "peer" => peer.to_string(), "result" => "failed", "reason" => reason)
        .increment(1);
}

/// Everything the fleet's background tasks need.
pub struct FleetTasks {
    /// The fleet state.
    pub fleet: Arc<Fleet>,
    /// The settings.
    pub config: FleetConfig,
    /// The tables.
    pub store: Arc<Store>,
    /// The writer's queue.
    pub writes: mpsc::Sender<Job>,
    /// Dials peers with the server's peer identity.
    pub connector: Connector,
    /// This server's own QUIC address (skipped when a name resolves to it).
    pub own_addr: SocketAddr,
    /// Tables the scrubber could not repair from the data directory.
    pub repairs: mpsc::Receiver<String>,
}

/// Runs the resolver, the forwarders and the anti-entropy loop until `shutdown`.
pub async fn run(tasks: FleetTasks, mut shutdown: watch::Receiver<bool>) {
    if tasks.config.peers.is_empty() {
        // Nothing to replicate with; repairs have nowhere to come from.
        let mut repairs = tasks.repairs;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            () = async { while repairs.recv().await.is_some() {} } => {}
        }
        return;
    }
    // Every series a dashboard shows exists from the start, at zero.
    for result in ["ok", "failed"] {
        ::metrics::counter!("memds_anti_entropy_rounds_total", "result" => result).increment(0);
    }
    ::metrics::counter!("memds_anti_entropy_tables_pulled_total").increment(0);
    ::metrics::counter!("memds_anti_entropy_bytes_pulled_total").increment(0);
    ::metrics::counter!("memds_digest_mismatches_total").increment(0);
    let (peers_tx, peers_rx) = watch::channel(Vec::<SocketAddr>::new());
    let selves = Arc::new(Mutex::new(HashSet::from([tasks.own_addr])));
    let resolved = Arc::new(AtomicBool::new(false));
    let resolver = tokio::spawn(resolve_loop(
        tasks.config.peers.clone(),
        Arc::clone(&selves),
        peers_tx,
        Arc::clone(&resolved),
        shutdown.clone(),
    ));
    let forwarders = tokio::spawn(forwarders_loop(
        Arc::clone(&tasks.fleet),
        tasks.connector.clone(),
        peers_rx.clone(),
        shutdown.clone(),
    ));
    let mut ae = AntiEntropy {
        fleet: Arc::clone(&tasks.fleet),
        store: tasks.store,
        writes: tasks.writes,
        connector: tasks.connector,
        peers: peers_rx,
        resolved,
        selves,
        clients: HashMap::new(),
        next: 0,
        caught_up: HashMap::new(),
        started: Instant::now(),
        period: tasks.config.anti_entropy,
        unready_rounds: HashSet::new(),
        unreachable: HashSet::new(),
    };
    let mut repairs = tasks.repairs;
    let period = tasks.config.anti_entropy;
    let mut last_round = Instant::now() - period;
    loop {
        enum Wake {
            Stop,
            Period,
            CatchUp,
            Repair(String),
        }
        let wait = period.saturating_sub(last_round.elapsed());
        let wake = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Wake::Stop,
            () = tokio::time::sleep(wait) => Wake::Period,
            () = tasks.fleet.catch_up.notified() => Wake::CatchUp,
            Some(table) = repairs.recv() => Wake::Repair(table),
        };
        match wake {
            Wake::Stop => break,
            Wake::Period => {}
            Wake::CatchUp => {
                tokio::time::sleep(CATCH_UP_DELAY).await;
            }
            Wake::Repair(table) => {
                ae.repair_from_peer(&table).await;
                continue;
            }
        }
        last_round = Instant::now();
        let round = ae.round();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = round => {}
        }
    }
    resolver.abort();
    forwarders.abort();
    for client in ae.clients.values() {
        client.close();
    }
}

/// Resolves the peer names now and every [`RESOLVE_EVERY`], publishing the addresses that are
/// not this server.
async fn resolve_loop(
    names: Vec<String>,
    selves: Arc<Mutex<HashSet<SocketAddr>>>,
    out: watch::Sender<Vec<SocketAddr>>,
    resolved: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut found = Vec::new();
        for name in &names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => tracing::warn!(peer = %name, error = %e, "resolving a peer"),
            }
        }
        let selves_now = selves.lock().map(|s| s.clone()).unwrap_or_default();
        found.retain(|a| !selves_now.contains(a));
        found.sort();
        found.dedup();
        ::metrics::gauge!("memds_peers").set(found.len() as f64);
        out.send_if_modified(|current| {
            if *current == found {
                false
            } else {
                tracing::info!(peers = ?found, "peer addresses");
                *current = found;
                true
            }
        });
        resolved.store(true, Ordering::Release);
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
    }
}

/// Keeps one forwarding task per peer address.
async fn forwarders_loop(
    fleet: Arc<Fleet>,
    connector: Connector,
    mut peers: watch::Receiver<Vec<SocketAddr>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let current: HashSet<SocketAddr> = peers.borrow_and_update().iter().copied().collect();
        if let Ok(mut forwarders) = fleet.forwarders.lock() {
            forwarders.retain(|addr, _| current.contains(addr));
            for addr in current {
                forwarders.entry(addr).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
                    tokio::spawn(forward_to(addr, connector.clone(), rx));
                    tx
                });
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            changed = peers.changed() => if changed.is_err() { return },
        }
    }
}

/// Sends queued writes to one peer, in order, until its queue is dropped.
async fn forward_to(peer: SocketAddr, connector: Connector, mut rx: mpsc::Receiver<Arc<Request>>) {
    let label = peer.to_string();
    let mut client: Option<Client> = None;
    while let Some(request) = rx.recv().await {
        let c = match client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match connect(&connector, peer).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "forwarding: cannot reach the peer");
                    forward_failed(peer, "connect");
                    continue;
                }
            },
        };
        match c.call_timeout(&request, FORWARD_TIMEOUT).await {
            Ok(Response::Written(_) | Response::Dropped { .. }) => {
                ::metrics::counter!("memds_forwards_total", "peer" => label.clone(), "result" => "sent", "reason" => "")
                    .increment(1);
                client = Some(c);
            }
            // The peer holds something newer, or lacks the base of an update (it catches up by
            // anti-entropy): delivered, and nothing more to do.
            Err(ClientError::Server(e))
                if matches!(e.code, ErrorCode::Stale | ErrorCode::Conflict) =>
            {
                ::metrics::counter!("memds_forwards_total", "peer" => label.clone(), "result" => "sent", "reason" => "")
                    .increment(1);
                client = Some(c);
            }
            Err(ClientError::Server(e)) => {
                tracing::warn!(%peer, code = e.code.as_str(), message = %e.message, "forwarding: the peer refused a write");
                forward_failed(peer, "refused");
                client = Some(c);
            }
            Ok(other) => {
                tracing::warn!(%peer, answer = ?short(&other), "forwarding: an unexpected answer");
                forward_failed(peer, "refused");
                client = Some(c);
            }
            // The connection is gone or stuck: the next write dials again.
            Err(e) => {
                tracing::debug!(%peer, error = %e, "forwarding: send failed");
                forward_failed(peer, "send");
                c.close();
            }
        }
    }
    if let Some(c) = client {
        c.close();
    }
}

fn short(r: &Response) -> String {
    match r {
        Response::Error(e) => format!("{}: {}", e.code.as_str(), e.message),
        _ => "an unexpected answer".into(),
    }
}

async fn connect(connector: &Connector, peer: SocketAddr) -> Result<Client, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(peer)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect {
            addr: peer,
            reason: "timed out".into(),
        }),
    }
}

struct AntiEntropy {
    fleet: Arc<Fleet>,
    store: Arc<Store>,
    writes: mpsc::Sender<Job>,
    connector: Connector,
    peers: watch::Receiver<Vec<SocketAddr>>,
    /// Set once the peer names have been resolved (whatever they resolved to).
    resolved: Arc<AtomicBool>,
    selves: Arc<Mutex<HashSet<SocketAddr>>>,
    clients: HashMap<SocketAddr, Client>,
    next: usize,
    /// When this server last held everything each peer advertised.
    caught_up: HashMap<SocketAddr, Instant>,
    started: Instant,
    /// Time between rounds.
    period: Duration,
    /// Peers with which a round completed while neither side was ready.
    unready_rounds: HashSet<SocketAddr>,
    /// Peers whose last round failed (unreachable, or the exchange broke).
    unreachable: HashSet<SocketAddr>,
}

/// What a round with one peer found.
#[derive(Debug, Default)]
struct RoundReport {
    peer_ready: bool,
    lag_versions: u64,
    pulled: u64,
    bytes: u64,
    failed: Vec<String>,
}

impl AntiEntropy {
    fn peer_list(&self) -> Vec<SocketAddr> {
        let selves = self.selves.lock().map(|s| s.clone()).unwrap_or_default();
        self.peers
            .borrow()
            .iter()
            .copied()
            .filter(|a| !selves.contains(a))
            .collect()
    }

    async fn client(&mut self, peer: SocketAddr) -> Result<Client, ClientError> {
        if let Some(c) = self.clients.get(&peer).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = connect(&self.connector, peer).await?;
        self.clients.insert(peer, c.clone());
        Ok(c)
    }

    /// One round with the next peer.
    async fn round(&mut self) {
        let peers = self.peer_list();
        if peers.is_empty() {
            if self.resolved.load(Ordering::Acquire) {
                // The names resolve to nothing but this server (the first server of a new
                // fleet, or a service that lists only ready servers): nobody to catch up with.
                self.fleet
                    .readiness
                    .set_ready("no peer address other than this server's resolves: serving alone");
            } else {
                self.fleet
                    .readiness
                    .not_ready_because("the peer names have not been resolved yet".into());
            }
            return;
        }
        let peer = peers[self.next % peers.len()];
        self.next = self.next.wrapping_add(1);
        let label = peer.to_string();
        let outcome = self.exchange(peer).await;
        let report = match outcome {
            // The address is this server itself.
            Ok(None) => return,
            Ok(Some(report)) => {
                self.unreachable.remove(&peer);
                ::metrics::counter!("memds_anti_entropy_rounds_total", "result" => "ok")
                    .increment(1);
                ::metrics::gauge!("memds_peer_lag_versions", "peer" => label.clone())
                    .set(report.lag_versions as f64);
                if report.failed.is_empty() {
                    self.caught_up.insert(peer, Instant::now());
                }
                Ok(report)
            }
            Err(reason) => {
                self.unreachable.insert(peer);
                ::metrics::counter!("memds_anti_entropy_rounds_total", "result" => "failed")
                    .increment(1);
                if let Some(c) = self.clients.remove(&peer) {
                    c.close();
                }
                tracing::debug!(%peer, %reason, "anti-entropy round failed");
                Err(reason)
            }
        };
        let since = self.caught_up.get(&peer).copied().unwrap_or(self.started);
        ::metrics::gauge!("memds_peer_lag_seconds", "peer" => label)
            .set(since.elapsed().as_secs_f64());
        let readiness = &self.fleet.readiness;
        match report {
            Ok(r) if !r.failed.is_empty() => readiness.not_ready_because(format!(
                "pulling from {peer} failed: {}",
                r.failed.join("; ")
            )),
            Ok(r) if r.peer_ready => {
                readiness.set_ready(&format!("caught up with ready peer {peer}"));
            }
            unready_or_failed => {
                let why = match unready_or_failed {
                    Ok(_) => {
                        self.unready_rounds.insert(peer);
                        format!(
                            "peer {peer} is not ready either; waiting for a round with a ready peer"
                        )
                    }
                    Err(reason) => format!("anti-entropy with {peer} failed: {reason}"),
                };
                if self.fleet_starting(&peers) {
                    readiness.set_ready(
                        "exchanged with every reachable peer and none was ready (a fleet starting together)",
                    );
                } else {
                    readiness.not_ready_because(why);
                }
            }
        }
    }

    /// Whether every known peer has been tried and none that answered was ready, with at least
    /// one answering: the fleet is starting together, and nobody holds more than what was
    /// exchanged. (Routers that saw newer versions elsewhere are protected by `min_version`.)
    fn fleet_starting(&self, peers: &[SocketAddr]) -> bool {
        !self.unready_rounds.is_empty()
            && peers
                .iter()
                .all(|p| self.unready_rounds.contains(p) || self.unreachable.contains(p))
    }

    /// Exchanges summaries with `peer` and pulls what it holds newer. `None` when the peer is
    /// this server.
    async fn exchange(&mut self, peer: SocketAddr) -> Result<Option<RoundReport>, String> {
        let client = self.client(peer).await.map_err(|e| e.to_string())?;
        let theirs = match client
            .call_timeout(&Request::Summary, summary_timeout(self.period))
            .await
        {
            Ok(Response::Summary(s)) => s,
            Ok(other) => return Err(format!("summary: {}", short(&other))),
            Err(e) => return Err(e.to_string()),
        };
        if theirs.instance == self.fleet.instance {
            tracing::info!(%peer, "a peer address is this server itself; skipping it");
            if let Ok(mut s) = self.selves.lock() {
                s.insert(peer);
            }
            self.clients.remove(&peer);
            client.close();
            return Ok(None);
        }
        let mut report = RoundReport {
            peer_ready: theirs.ready,
            ..RoundReport::default()
        };
        for entry in &theirs.tables {
            let tables = self.store.tables();
            let held = tables
                .get(&entry.name)
                .map(|t| (t.version().get(), t.checksum()));
            let dropped_at = tables.tombstone(&entry.name);
            drop(tables);
            let local = held.map(|(v, _)| v).max(dropped_at).unwrap_or(0);
            if local >= entry.version {
                if let Some((v, digest)) = held
                    && v == entry.version
                    && !entry.dropped
                    && digest != entry.digest
                {
                    ::metrics::counter!("memds_digest_mismatches_total").increment(1);
                    tracing::error!(table = %entry.name, version = v, %peer, "the peer holds this version with other content");
                }
                continue;
            }
            report.lag_versions += entry.version - local;
            let write = if entry.dropped {
                Write::Drop {
                    table: entry.name.clone(),
                    version: Some(entry.version),
                }
            } else {
                let got = tokio::time::timeout(
                    PULL_TIMEOUT,
                    client.get_table_snapshot(&entry.name, held.map(|(v, _)| v)),
                )
                .await
                .unwrap_or(Err(ClientError::Timeout(PULL_TIMEOUT)));
                match got {
                    Ok(Some((_, snapshot))) => {
                        report.bytes += snapshot.len() as u64;
                        ::metrics::counter!("memds_anti_entropy_bytes_pulled_total")
                            .increment(snapshot.len() as u64);
                        Write::Put { snapshot }
                    }
                    // Dropped or replaced meanwhile: the next round sees it.
                    Ok(None) => continue,
                    Err(e) => {
                        report.failed.push(format!("{}: {e}", entry.name));
                        if matches!(e, ClientError::Closed(_) | ClientError::Timeout(_)) {
                            return Err(e.to_string());
                        }
                        continue;
                    }
                }
            };
            match self.submit(write).await {
                Ok(()) => {
                    report.pulled += 1;
                    ::metrics::counter!("memds_anti_entropy_tables_pulled_total").increment(1);
                }
                Err(e) => report.failed.push(format!("{}: {e}", entry.name)),
            }
        }
        Ok(Some(report))
    }

    async fn submit(&self, write: Write) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Write(WriteJob {
            write,
            reply,
            arrived: Instant::now(),
        });
        self.writes
            .send(job)
            .await
            .map_err(|_| "the writer stopped".to_owned())?;
        match rx.await {
            Ok(Response::Written(_) | Response::Dropped { .. }) => Ok(()),
            // Something newer arrived meanwhile (a forward): fine.
            Ok(Response::Error(e)) if e.code == ErrorCode::Stale => Ok(()),
            Ok(other) => Err(short(&other)),
            Err(_) => Err("the writer stopped".into()),
        }
    }

    /// Fetches `table` from a peer and asks the writer to install it in place of the damaged
    /// resident copy the data directory could not replace.
    async fn repair_from_peer(&mut self, table: &str) {
        for peer in self.peer_list() {
            let Ok(client) = self.client(peer).await else {
                continue;
            };
            let got = tokio::time::timeout(PULL_TIMEOUT, client.get_table_snapshot(table, None))
                .await
                .unwrap_or(Err(ClientError::Timeout(PULL_TIMEOUT)));
            let snapshot = match got {
                Ok(Some((_, s))) => s,
                Ok(None) | Err(_) => continue,
            };
            let (reply, rx) = oneshot::channel();
            let job = Job::Repair(RepairJob {
                table: table.to_owned(),
                from_peer: Some(snapshot),
                reply,
            });
            if self.writes.send(job).await.is_err() {
                return;
            }
            match rx.await {
                Ok(Repaired::Reinstalled { version }) => {
                    ::metrics::counter!("memds_scrub_repairs_total", "result" => "from_peer")
                        .increment(1);
                    tracing::warn!(%table, version, %peer, "reinstalled the damaged table from a peer");
                    return;
                }
                Ok(Repaired::Intact) => return,
                Ok(Repaired::Failed(reason)) => {
                    tracing::error!(%table, %peer, %reason, "the peer's copy could not replace the damaged table");
                }
                Err(_) => return,
            }
        }
        tracing::error!(%table, "no peer could provide a good copy of the damaged table");
    }
}
