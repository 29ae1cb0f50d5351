//! The fleet: peers, write forwarding, anti-entropy and readiness.
//!
//! Every server of a fleet holds every table. Three mechanisms keep them equal, all idempotent
//! and order-tolerant because every write names its version and nobody applies an older one:
//!
//! - **Forwarding.** A write an admin sends to one server is, once applied there, queued to each
//!   peer (a bounded queue per peer; a write that does not fit, or whose send fails, is counted
//!   and left to anti-entropy). Writes that arrive from peers are not forwarded again.
//! - **Anti-entropy.** Every `period`, and a moment after a lookup or a write found this server
//!   behind, the server asks one peer (round robin) for its [`Summary`] (every table's version
//!   and checksum and every tombstone: one entry per table, whatever changed) and pulls each
//!   table, or records each drop, the peer holds higher in the order of holdings
//!   ([`replication::Holding`]: absent, then by version, a drop above the table it removes),
//!   through the writer, as any write. A round always runs and always exchanges the whole
//!   summary: the work of a round does not depend on how much changed, only the pulls do. What
//!   to pull or drop, and when the round and readiness change, is decided by
//!   [`replication::Replicator`], a state machine with no IO; this module moves the bytes.
//! - **Pulls cost what changed.** A table held here at an older version is pulled in the
//!   cheapest way that works: (1) the peer's delta since our version (`get-delta`, from its
//!   bounded log of recent changes), applied as a batch; else (2) a Merkle descent: the peer's
//!   tree digests from its root down, level by level, only under the nodes our tree does not
//!   hold (same span, same digest), down to the differing blocks of about 64 partitions, whose
//!   partitions `get-ranges` brings back (in requests of bounded size) and a batch applies; it
//!   is given up when more than a quarter of the table differs; else (3) the whole snapshot. A
//!   batch is applied to our copy first, off the writer, and submitted only if the result is
//!   exactly the table the peer advertised, version and checksum, node list included
//!   ([`replication::accept_rebuilt`]): a wrong result at the peer's version could never be
//!   replaced, and if the peer's table moved since its summary nothing vouches for the parts
//!   not pulled. A snapshot must be the table asked for, at the advertised version or later
//!   ([`replication::accept_snapshot`], checked by the writer as it decodes it). A batch the
//!   writer refuses (its ranges do not align with ours, or a forward moved the table
//!   meanwhile) falls through to the next way.
//!   `memds_anti_entropy_pulls_total{kind}` counts tables pulled each way, and
//!   `memds_anti_entropy_bytes_pulled_total` the bytes of every answer a pull read, as framed
//!   on the wire (header and rkyv archive; a snapshot's answer without encoding it again, exact
//!   up to the archive's alignment padding).
//! - **Readiness.** A server with peers starts not ready: lookups from routers are answered
//!   `unavailable` (the router cache asks another server). The rule is
//!   [`replication::ReadinessRule`]: ready when a round with a ready peer ends holding every
//!   table at least as that peer, and every ready peer heard from, advertised it; or when no
//!   peer has been seen ready and every known peer's last round completed (every pull done) or
//!   failed, at least one completed (a fleet starting together); or when every peer name
//!   resolved, and to nothing but this server. A name that fails to resolve is not "no
//!   peer": until it resolves, only catching up with a ready peer makes the server ready.
//!   Readiness is never lost once reached: a server that falls behind answers `behind` to
//!   routers that have seen newer versions, and catches up.
//!
//! Peers are named by address or DNS name (a Kubernetes headless service resolves to every
//! pod); names are resolved again every [`RESOLVE_EVERY`], and an address that answers with this
//! server's own instance number is recognised as itself and skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memds_client::{Client, ClientError, Connector};
use memds_proto::model::{BatchEdit, NodeSpec};
use memds_proto::wire::{
    self, ErrorCode, HashRange, Request, Response, Summary, TableSummary, TreeDigests, TreeEntry,
};
use memds_proto::{CompactTable, NodeInterner};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::metrics::{self, PullKind, RepairResult};
use crate::replication::{
    self, Action, Holding, Replicator, Resolution, TableResult, Verdict, Way,
};
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
        metrics::ready(ready);
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
            metrics::ready(true);
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
                metrics::forward_failed(*peer, "queue_full");
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
    Summary {
        instance,
        ready,
        tables: replication::summary_entries(&store.tables()),
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
    metrics::register_fleet_series();
    let (peers_tx, peers_rx) = watch::channel(Vec::<SocketAddr>::new());
    let selves = Arc::new(Mutex::new(HashSet::from([tasks.own_addr])));
    let resolved = Arc::new(Mutex::new(Resolved::Pending));
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
        caught_up: HashMap::new(),
        started: Instant::now(),
        period: tasks.config.anti_entropy,
        machine: Replicator::new(true),
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

/// How the peer names last resolved.
#[derive(Clone, Debug)]
enum Resolved {
    /// Not yet.
    Pending,
    /// Every name resolved.
    All,
    /// This name did not (the peers behind it are unknown, not absent).
    Failed(String),
}

/// Resolves the peer names now and every [`RESOLVE_EVERY`], publishing the addresses that are
/// not this server.
async fn resolve_loop(
    names: Vec<String>,
    selves: Arc<Mutex<HashSet<SocketAddr>>>,
    out: watch::Sender<Vec<SocketAddr>>,
    resolved: Arc<Mutex<Resolved>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut found = Vec::new();
        let mut outcome = Resolved::All;
        for name in &names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => {
                    tracing::warn!(peer = %name, error = %e, "resolving a peer");
                    outcome = Resolved::Failed(format!("{name}: {e}"));
                }
            }
        }
        let selves_now = selves.lock().map(|s| s.clone()).unwrap_or_default();
        found.retain(|a| !selves_now.contains(a));
        found.sort();
        found.dedup();
        metrics::peers(found.len());
        out.send_if_modified(|current| {
            if *current == found {
                false
            } else {
                tracing::info!(peers = ?found, "peer addresses");
                *current = found;
                true
            }
        });
        if let Ok(mut r) = resolved.lock() {
            *r = outcome;
        }
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
                    metrics::forward_failed(peer, "connect");
                    continue;
                }
            },
        };
        match c.call_timeout(&request, FORWARD_TIMEOUT).await {
            Ok(Response::Written(_) | Response::Dropped { .. }) => {
                metrics::forward_sent(&label);
                client = Some(c);
            }
            // The peer holds something newer, or lacks the base of an update: delivered, and
            // nothing more to do (`replication::forwarded` says which answers count so).
            Err(ClientError::Server(e))
                if replication::forwarded(e.code) == replication::Forwarded::Delivered =>
            {
                metrics::forward_sent(&label);
                client = Some(c);
            }
            Err(ClientError::Server(e)) => {
                tracing::warn!(%peer, code = e.code.as_str(), message = %e.message, "forwarding: the peer refused a write");
                metrics::forward_failed(peer, "refused");
                client = Some(c);
            }
            Ok(other) => {
                tracing::warn!(%peer, answer = ?short(&other), "forwarding: an unexpected answer");
                metrics::forward_failed(peer, "refused");
                client = Some(c);
            }
            // The connection is gone or stuck: the next write dials again.
            Err(e) => {
                tracing::debug!(%peer, error = %e, "forwarding: send failed");
                metrics::forward_failed(peer, "send");
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
            source: memds_client::ConnectError::Timeout(CONNECT_TIMEOUT),
        }),
    }
}

struct AntiEntropy {
    fleet: Arc<Fleet>,
    store: Arc<Store>,
    writes: mpsc::Sender<Job>,
    connector: Connector,
    peers: watch::Receiver<Vec<SocketAddr>>,
    /// How the peer names last resolved.
    resolved: Arc<Mutex<Resolved>>,
    selves: Arc<Mutex<HashSet<SocketAddr>>>,
    clients: HashMap<SocketAddr, Client>,
    /// When this server last held everything each peer advertised.
    caught_up: HashMap<SocketAddr, Instant>,
    started: Instant,
    /// Time between rounds.
    period: Duration,
    /// The decisions (sans IO): rounds, pulls, drops, readiness.
    machine: Replicator<SocketAddr>,
}

/// What a round's pulls read from the peer.
#[derive(Debug, Default)]
struct RoundReport {
    bytes: u64,
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

    /// Publishes what the readiness rule says.
    fn publish(&self, verdict: Verdict) {
        match verdict {
            Verdict::Ready(why) => self.fleet.readiness.set_ready(&why),
            Verdict::NotReady(why) => self.fleet.readiness.not_ready_because(why),
        }
    }

    /// One round with the next peer: the machine ([`Replicator`]) decides, this shell moves
    /// the bytes (the summary, the pulls, the writes) and feeds the results back.
    async fn round(&mut self) {
        let peers = self.peer_list();
        let resolution = match self.resolved.lock().map(|r| r.clone()) {
            Ok(Resolved::All) => Resolution::Peers(peers),
            Ok(Resolved::Failed(why)) => Resolution::Failed { peers, why },
            Ok(Resolved::Pending) | Err(_) => Resolution::Pending,
        };
        let verdict = self.machine.on_resolution(resolution);
        let Some(Action::AskSummary { round, peer }) = self.machine.start_round() else {
            // No peer to ask: the resolution alone decides.
            self.publish(verdict);
            return;
        };
        let label = peer.to_string();
        let answer = match self.ask_summary(peer).await {
            // The address is this server itself.
            Ok(None) => {
                self.machine.abandon(round);
                return;
            }
            Ok(Some(summary)) => Ok((summary.ready, summary.tables)),
            Err(reason) => {
                metrics::anti_entropy_round_failed();
                self.close_client(peer);
                tracing::debug!(%peer, %reason, "anti-entropy round failed");
                Err(reason)
            }
        };
        let answered = answer.is_ok();
        let tables = self.store.tables();
        let plan = self
            .machine
            .on_summary(round, answer, |n| Holding::held(&tables, n));
        drop(tables);
        let mut verdict = plan.verdict;
        let mut report = RoundReport::default();
        if answered {
            metrics::anti_entropy_round_ok(&label, plan.lag_versions);
        }
        let mut complete = answered;
        let mut actions: std::collections::VecDeque<Action<SocketAddr>> = plan.actions.into();
        while let Some(action) = actions.pop_front() {
            let (table, result) = match action {
                Action::AskSummary { .. } => continue,
                Action::Diverged { table, version } => {
                    metrics::digest_mismatch();
                    tracing::error!(%table, version, %peer, "the peer holds this version with other content");
                    continue;
                }
                Action::Drop { table, version, .. } => {
                    let write = Write::Drop {
                        table: table.clone(),
                        version: Some(version),
                    };
                    let result = match self.submit(write).await {
                        Ok(()) => {
                            metrics::table_pulled(None);
                            TableResult::Done
                        }
                        Err(e) => TableResult::Failed(e),
                    };
                    (table, result)
                }
                Action::Pull { entry, way, .. } => {
                    let result = match self.client(peer).await {
                        Err(e) => TableResult::Broken(e.to_string()),
                        Ok(client) => match self.pull(&client, &entry, way, &mut report).await {
                            Ok((result, kind)) => {
                                if kind.is_some() {
                                    metrics::table_pulled(kind);
                                }
                                result
                            }
                            Err(Pull::Fatal(e)) => TableResult::Broken(e.to_string()),
                            Err(Pull::Failed(e)) => TableResult::Failed(e),
                        },
                    };
                    (entry.name, result)
                }
            };
            match &result {
                TableResult::Done | TableResult::Next => {}
                TableResult::Failed(_) => complete = false,
                TableResult::Broken(_) => {
                    complete = false;
                    self.close_client(peer);
                }
            }
            let tables = self.store.tables();
            let next = self
                .machine
                .on_table(round, &table, result, |n| Holding::held(&tables, n));
            if let Some(action) = next.action {
                actions.push_front(action);
            }
            if next.verdict.is_some() {
                verdict = next.verdict;
            }
            if !self.machine.is_current(round) {
                break;
            }
        }
        if complete {
            self.caught_up.insert(peer, Instant::now());
        }
        let since = self.caught_up.get(&peer).copied().unwrap_or(self.started);
        metrics::peer_lag(&label, since.elapsed());
        if let Some(verdict) = verdict {
            self.publish(verdict);
        }
    }

    fn close_client(&mut self, peer: SocketAddr) {
        if let Some(c) = self.clients.remove(&peer) {
            c.close();
        }
    }

    /// Asks `peer` for its summary. `None` when the peer is this server.
    async fn ask_summary(&mut self, peer: SocketAddr) -> Result<Option<Summary>, String> {
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
        Ok(Some(theirs))
    }

    /// Brings `entry`'s table up to the peer's version one way (the one the machine chose):
    /// `Next` when this way did not work or would not pay, with how the table was pulled when
    /// it was.
    async fn pull(
        &self,
        client: &Client,
        entry: &TableSummary,
        way: Way,
        report: &mut RoundReport,
    ) -> Result<(TableResult, Option<PullKind>), Pull> {
        let held = self.store.table(&entry.name);
        // A forward brought as much or more meanwhile: nothing left to pull.
        if held
            .as_ref()
            .is_some_and(|t| t.version().get() >= entry.version)
        {
            return Ok((TableResult::Done, None));
        }
        let (step, kind) = match (way, held) {
            // The table held here went away meanwhile: only the snapshot will do.
            (Way::Delta | Way::Merkle, None) => return Ok((TableResult::Next, None)),
            (Way::Delta, Some(ours)) => (
                self.pull_delta(client, entry, &ours, report).await?,
                PullKind::Delta,
            ),
            (Way::Merkle, Some(ours)) => (
                self.pull_merkle(client, entry, &ours, report).await?,
                PullKind::Merkle,
            ),
            (Way::Snapshot, held) => {
                let ours = held.map(|t| t.version().get());
                let kind = self.pull_snapshot(client, entry, ours, report).await?;
                return Ok((TableResult::Done, kind));
            }
        };
        Ok(match step {
            Step::Applied => (TableResult::Done, Some(kind)),
            Step::Nothing => (TableResult::Done, None),
            Step::Next => (TableResult::Next, None),
        })
    }

    /// Asks the peer what changed since our version and applies it.
    async fn pull_delta(
        &self,
        client: &Client,
        entry: &TableSummary,
        ours: &Arc<CompactTable>,
        report: &mut RoundReport,
    ) -> Result<Step, Pull> {
        let since = ours.version().get();
        let request = Request::GetDelta {
            table: entry.name.clone(),
            since,
        };
        let answer = match client.call_timeout(&request, PULL_TIMEOUT).await {
            Ok(answer) => answer,
            // A peer that cannot answer deltas (or no longer holds the table): the next ways
            // say which.
            Err(ClientError::Server(_)) => return Ok(Step::Next),
            Err(e) => return Err(Pull::from_client(e)),
        };
        count_pulled(report, answer_bytes(&answer));
        let delta = match answer {
            Response::Delta(d) => d,
            Response::NoDelta { .. } => return Ok(Step::Next),
            Response::NotModified { .. } => return Ok(Step::Nothing),
            other => {
                tracing::warn!(table = %entry.name, answer = ?short(&other), "anti-entropy: an unexpected answer to get-delta");
                return Ok(Step::Next);
            }
        };
        if delta.table != entry.name || delta.base_version != since || delta.version <= since {
            tracing::warn!(
                table = %entry.name,
                since,
                base = delta.base_version,
                version = delta.version,
                "anti-entropy: the peer's delta is not one from our version; not applied"
            );
            return Ok(Step::Next);
        }
        let Some(delta) = checked(ours, BatchEdit::from(delta), entry).await else {
            tracing::warn!(table = %entry.name, since, "anti-entropy: the peer's delta would not give its table here (the copies differed); trying a Merkle descent");
            return Ok(Step::Next);
        };
        self.submit_batch(entry, delta).await
    }

    /// Finds the blocks where the peer's table differs from ours by descending both Merkle
    /// trees, fetches those blocks' partitions and applies them as one batch. `Step::Next`
    /// when that cannot work or would not pay (more than a quarter of the table differs).
    async fn pull_merkle(
        &self,
        client: &Client,
        entry: &TableSummary,
        ours: &Arc<CompactTable>,
        report: &mut RoundReport,
    ) -> Result<Step, Pull> {
        let name = entry.name.as_str();
        let whole = HashRange {
            from: 0,
            end_inclusive: u64::MAX,
        };
        let mut descent = Descent {
            client,
            table: name,
            tree: None,
            requests: 0,
            report,
        };
        // The peer's root is at its own top level: ask at ours, and again at its own if that
        // differs (every answer says where it is; a level above the peer's top is refused, and
        // then one block's digest, at level 1, says).
        let guess = ours.levels().max(1);
        let mut at_level = match descent.level(guess, whole).await? {
            Some(entries) => entries,
            None if descent.tree.is_none() => {
                let probe = HashRange {
                    from: 0,
                    end_inclusive: 0,
                };
                if descent.level(1, probe).await?.is_none() {
                    return Ok(Step::Next);
                }
                Vec::new()
            }
            None => return Ok(Step::Next),
        };
        let Some(tree) = descent.tree else {
            return Ok(Step::Next);
        };
        let guess = if at_level.is_empty() { 0 } else { guess };
        // Only the blocks that differ are pulled: nothing but the summary's checksum vouches for
        // the rest (and for the node list), and it holds only at the summary's version. A table
        // that moved since is pulled another way.
        if tree.version <= ours.version().get() || tree.version != entry.version {
            return Ok(Step::Next);
        }
        let mut level = tree.levels.max(1);
        if level != guess {
            match descent.level(level, whole).await? {
                Some(entries) => at_level = entries,
                None => return Ok(Step::Next),
            }
        }
        let partitions: u64 = at_level
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.count));
        let limit = partitions / MERKLE_MAX_SHARE;
        let mut differing = not_held(ours, level, whole, &at_level);
        loop {
            let different = differing
                .iter()
                .fold(0u64, |sum, e| sum.saturating_add(e.count));
            // The root's one node holds everything, and a few coarse nodes may hold much more
            // than what changed under them: the share is judged on blocks, or on many nodes.
            let judged = level == 1 || (level < tree.levels && differing.len() > 2);
            if judged && different > limit {
                tracing::debug!(table = %name, level, different, of = partitions, "anti-entropy: too much differs for a Merkle pull");
                return Ok(Step::Next);
            }
            if differing.is_empty() {
                // The same partitions at another version (or other nodes): the snapshot
                // carries that.
                return Ok(Step::Next);
            }
            if level <= 1 {
                break;
            }
            level -= 1;
            let mut below = Vec::new();
            for e in &differing {
                let span = HashRange {
                    from: e.start,
                    end_inclusive: e.end_inclusive,
                };
                let Some(children) = descent.level(level, span).await? else {
                    return Ok(Step::Next);
                };
                below.extend(not_held(ours, level, span, &children));
            }
            differing = below;
        }
        let ranges = merge_spans(&differing);
        let mut update = BatchEdit {
            table: name.to_owned(),
            base_version: ours.version().get(),
            version: tree.version,
            nodes: Vec::new(),
            ranges: Vec::new(),
        };
        let mut nodes: BTreeMap<u32, NodeSpec> = BTreeMap::new();
        // Requests still to make, last first; one refused as too large is asked in halves.
        let mut chunks = range_chunks(&ranges);
        chunks.reverse();
        let mut parts: Vec<(u64, BatchEdit)> = Vec::new();
        while let Some(chunk) = chunks.pop() {
            descent.requests += 1;
            if descent.requests > MERKLE_MAX_REQUESTS {
                return Ok(Step::Next);
            }
            let request = Request::GetRanges {
                table: name.to_owned(),
                ranges: chunk,
            };
            let got = match client.call_timeout(&request, PULL_TIMEOUT).await {
                Ok(answer) => answer,
                Err(ClientError::Server(e)) => {
                    let Request::GetRanges { ranges: chunk, .. } = request else {
                        return Ok(Step::Next);
                    };
                    if e.code == ErrorCode::TooLarge && chunk.len() > 1 {
                        let (left, right) = chunk.split_at(chunk.len() / 2);
                        chunks.push(right.to_vec());
                        chunks.push(left.to_vec());
                        continue;
                    }
                    tracing::debug!(table = %name, code = e.code.as_str(), message = %e.message, "anti-entropy: get-ranges refused");
                    return Ok(Step::Next);
                }
                Err(e) => return Err(Pull::from_client(e)),
            };
            count_pulled(descent.report, answer_bytes(&got));
            let Response::Delta(part) = got else {
                tracing::debug!(table = %name, answer = ?short(&got), "anti-entropy: an unexpected answer to get-ranges");
                return Ok(Step::Next);
            };
            let part = BatchEdit::from(part);
            if part.table != name || part.version != tree.version {
                // The peer's table moved since the descent.
                return Ok(Step::Next);
            }
            let start = part
                .ranges
                .first()
                .and_then(|r| r.partitions.first())
                .map_or(0, |p| p.start);
            parts.push((start, part));
        }
        // The batch's ranges in start order, whatever order they were fetched in.
        parts.sort_by_key(|(start, _)| *start);
        for (_, part) in parts {
            nodes.extend(part.nodes.into_iter().map(|n| (n.id, n)));
            update.ranges.extend(part.ranges);
        }
        update.nodes = nodes.into_values().collect();
        let update = if ranges_sorted(&update) {
            checked(ours, update, entry).await
        } else {
            None
        };
        let Some(update) = update else {
            tracing::info!(table = %name, ranges = ranges.len(), "anti-entropy: the blocks pulled would not give the peer's table here; pulling the snapshot");
            return Ok(Step::Next);
        };
        self.submit_batch(entry, update).await
    }

    /// Submits a batch pulled from a peer. A refusal (our ranges do not align, or the table
    /// moved meanwhile) is `Step::Next`: the next way is tried.
    async fn submit_batch(&self, entry: &TableSummary, update: BatchEdit) -> Result<Step, Pull> {
        match self.submit(Write::Batch(update)).await {
            Ok(()) => Ok(Step::Applied),
            Err(e) => {
                tracing::info!(table = %entry.name, reason = %e, "anti-entropy: the pulled batch was refused");
                Ok(Step::Next)
            }
        }
    }

    /// Pulls the whole table (if newer than `ours`) and stores it.
    async fn pull_snapshot(
        &self,
        client: &Client,
        entry: &TableSummary,
        ours: Option<u64>,
        report: &mut RoundReport,
    ) -> Result<Option<PullKind>, Pull> {
        let got = tokio::time::timeout(PULL_TIMEOUT, client.get_table_snapshot(&entry.name, ours))
            .await
            .unwrap_or(Err(ClientError::Timeout(PULL_TIMEOUT)));
        match got {
            Ok(Some((version, snapshot))) => {
                count_pulled(report, table_answer_bytes(version, snapshot.len()));
                // The writer checks that it is the table advertised as it decodes it.
                let write = Write::Pulled {
                    snapshot,
                    advertised: entry.clone(),
                };
                self.submit(write).await.map_err(Pull::Failed)?;
                Ok(Some(PullKind::Snapshot))
            }
            // Dropped or replaced meanwhile: the next round sees it.
            Ok(None) => Ok(None),
            Err(e) => Err(Pull::from_client(e)),
        }
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
                    metrics::scrub_repair(RepairResult::FromPeer);
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

/// Most Merkle digest requests one pull may make before giving up for the snapshot.
const MERKLE_MAX_REQUESTS: usize = 4096;
/// A Merkle pull is tried only while at most one partition in this many differs; past it the
/// snapshot is cheaper (or as cheap) and simpler.
const MERKLE_MAX_SHARE: u64 = 4;
/// Most ranges one get-ranges request names (below the server's default batch bound).
const RANGES_PER_REQUEST: usize = 1024;
/// Most partitions one get-ranges request should bring back (by the digests' counts), so an
/// answer stays a few megabytes, far below the frame limit.
const PARTITIONS_PER_REQUEST: u64 = 64 * 1024;

/// What one way of pulling a table came to.
#[derive(Debug)]
enum Step {
    /// The table was brought up to the peer's version.
    Applied,
    /// The peer holds nothing newer after all.
    Nothing,
    /// This way did not work or would not pay: try the next one.
    Next,
}

/// Why a pull failed.
#[derive(Debug)]
enum Pull {
    /// The connection to the peer is gone or stuck: the round ends.
    Fatal(ClientError),
    /// This table could not be pulled (the writer refused it, the peer refused the snapshot).
    Failed(String),
}

impl Pull {
    fn from_client(e: ClientError) -> Self {
        match e {
            ClientError::Closed(_) | ClientError::Timeout(_) => Pull::Fatal(e),
            other => Pull::Failed(other.to_string()),
        }
    }
}

/// The peer's tree as its first digest answer described it; every later answer of the same
/// descent must agree (else the table moved meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerTree {
    version: u64,
    levels: u32,
    root: u64,
}

/// Whether applying `update` to `ours` gives exactly the table the peer advertised (name,
/// version and checksum, node list included): checked before the writer makes it durable, since
/// a wrong result at the peer's version could never be replaced ([`replication::accept_rebuilt`]).
fn would_match(ours: &CompactTable, update: &BatchEdit, advertised: &TableSummary) -> bool {
    let result = match ours.apply(update, &mut NodeInterner::default()) {
        Ok(result) => result,
        Err(e) => {
            tracing::debug!(table = %advertised.name, error = %e, "anti-entropy: the pulled changes do not apply here");
            return false;
        }
    };
    match replication::accept_rebuilt(&result, advertised) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(table = %advertised.name, reason = %e, "anti-entropy: pulled changes not applied");
            false
        }
    }
}

/// [`would_match`] on a blocking thread (a large update costs more than a runtime thread should
/// spend): the update back if it matches.
async fn checked(
    ours: &Arc<CompactTable>,
    update: BatchEdit,
    advertised: &TableSummary,
) -> Option<BatchEdit> {
    let ours = Arc::clone(ours);
    let advertised = advertised.clone();
    tokio::task::spawn_blocking(move || would_match(&ours, &update, &advertised).then_some(update))
        .await
        .ok()
        .flatten()
}

/// One Merkle descent's requests to a peer.
struct Descent<'a> {
    client: &'a Client,
    table: &'a str,
    tree: Option<PeerTree>,
    requests: usize,
    report: &'a mut RoundReport,
}

impl Descent<'_> {
    /// The peer's tree nodes at `level` covering `span` (asking again after a truncated
    /// answer). `None` when the answers cannot be used: refused, malformed, inconsistent with
    /// the descent's first answer, or too many requests.
    async fn level(&mut self, level: u32, span: HashRange) -> Result<Option<Vec<TreeEntry>>, Pull> {
        let mut out: Vec<TreeEntry> = Vec::new();
        let mut from = span.from;
        loop {
            self.requests += 1;
            if self.requests > MERKLE_MAX_REQUESTS {
                return Ok(None);
            }
            let request = Request::TreeDigests {
                table: self.table.to_owned(),
                level,
                from,
                end_inclusive: span.end_inclusive,
            };
            let answer = match self.client.call_timeout(&request, PULL_TIMEOUT).await {
                Ok(answer @ Response::TreeDigests(_)) => answer,
                Ok(other) => {
                    tracing::debug!(table = %self.table, answer = ?short(&other), "anti-entropy: an unexpected answer to tree-digests");
                    return Ok(None);
                }
                Err(ClientError::Server(e)) => {
                    tracing::debug!(table = %self.table, code = e.code.as_str(), message = %e.message, "anti-entropy: tree-digests refused");
                    return Ok(None);
                }
                Err(e) => return Err(Pull::from_client(e)),
            };
            count_pulled(self.report, answer_bytes(&answer));
            let Response::TreeDigests(d) = answer else {
                return Ok(None);
            };
            let tree = PeerTree {
                version: d.version,
                levels: d.levels,
                root: d.root,
            };
            if *self.tree.get_or_insert(tree) != tree {
                // The peer's table changed during the descent.
                return Ok(None);
            }
            let Some(covered) = covered_to(&d, from, span.end_inclusive) else {
                tracing::warn!(table = %self.table, level, from, "anti-entropy: malformed tree digests from the peer");
                return Ok(None);
            };
            if out
                .last()
                .zip(d.entries.first())
                .is_some_and(|(last, first)| last.end_inclusive >= first.start)
            {
                return Ok(None);
            }
            out.extend_from_slice(&d.entries);
            if covered >= span.end_inclusive {
                return Ok(Some(out));
            }
            from = covered + 1;
        }
    }
}

/// The last hash `d`'s entries cover, if they are well formed: in order, each span not empty,
/// tiling without gaps from a node holding `from`, and (unless truncated) reaching `end`.
fn covered_to(d: &TreeDigests, from: u64, end: u64) -> Option<u64> {
    let first = d.entries.first()?;
    if first.start > from || first.end_inclusive < from {
        return None;
    }
    let mut last = first;
    for e in &d.entries {
        if e.start > e.end_inclusive {
            return None;
        }
        if !std::ptr::eq(e, first) && last.end_inclusive.checked_add(1) != Some(e.start) {
            return None;
        }
        last = e;
    }
    if !d.truncated && last.end_inclusive < end {
        return None;
    }
    Some(last.end_inclusive)
}

/// The peer's nodes (at `level`, covering `span`) that our tree does not hold: same span and
/// same digest.
fn not_held(
    ours: &CompactTable,
    level: u32,
    span: HashRange,
    theirs: &[TreeEntry],
) -> Vec<TreeEntry> {
    const LOCAL_LIMIT: usize = 4096;
    let from = theirs.first().map_or(span.from, |e| e.start.min(span.from));
    let to = theirs.last().map_or(span.end_inclusive, |e| {
        e.end_inclusive.max(span.end_inclusive)
    });
    let mut held: HashSet<(u64, u64, u64)> = HashSet::new();
    let mut at = from;
    loop {
        let local = ours.tree_digests(level, at, to, LOCAL_LIMIT);
        held.extend(
            local
                .entries
                .iter()
                .map(|e| (e.start, e.end_inclusive, e.digest)),
        );
        match local.entries.last() {
            Some(last)
                if local.truncated && last.end_inclusive < to && last.end_inclusive >= at =>
            {
                at = last.end_inclusive + 1;
            }
            _ => break,
        }
    }
    theirs
        .iter()
        .filter(|e| !held.contains(&(e.start, e.end_inclusive, e.digest)))
        .copied()
        .collect()
}

/// The spans of differing blocks as ranges, adjacent ones merged, each with the partitions it
/// holds (by the digests' counts).
fn merge_spans(blocks: &[TreeEntry]) -> Vec<(HashRange, u64)> {
    let mut sorted = blocks.to_vec();
    sorted.sort_by_key(|e| e.start);
    let mut out: Vec<(HashRange, u64)> = Vec::new();
    for e in sorted {
        match out.last_mut() {
            Some((r, count)) if r.end_inclusive.checked_add(1) == Some(e.start) => {
                r.end_inclusive = e.end_inclusive;
                *count = count.saturating_add(e.count);
            }
            _ => out.push((
                HashRange {
                    from: e.start,
                    end_inclusive: e.end_inclusive,
                },
                e.count,
            )),
        }
    }
    out
}

/// The ranges in get-ranges requests of at most [`RANGES_PER_REQUEST`] ranges and about
/// [`PARTITIONS_PER_REQUEST`] partitions each (a range larger than that goes alone).
fn range_chunks(ranges: &[(HashRange, u64)]) -> Vec<Vec<HashRange>> {
    let mut out: Vec<Vec<HashRange>> = Vec::new();
    let mut current: Vec<HashRange> = Vec::new();
    let mut partitions = 0u64;
    for &(r, count) in ranges {
        if !current.is_empty()
            && (current.len() >= RANGES_PER_REQUEST
                || partitions.saturating_add(count) > PARTITIONS_PER_REQUEST)
        {
            out.push(std::mem::take(&mut current));
            partitions = 0;
        }
        current.push(r);
        partitions = partitions.saturating_add(count);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Whether an update's ranges are each non-empty, in start order and disjoint.
fn ranges_sorted(update: &BatchEdit) -> bool {
    let mut previous_end: Option<u64> = None;
    for r in &update.ranges {
        let Some(first) = r.partitions.first() else {
            return false;
        };
        if first.start > r.end_inclusive || previous_end.is_some_and(|end| end >= first.start) {
            return false;
        }
        previous_end = Some(r.end_inclusive);
    }
    !update.ranges.is_empty()
}

/// Counts bytes pulled from a peer.
fn count_pulled(report: &mut RoundReport, bytes: u64) {
    report.bytes += bytes;
    metrics::bytes_pulled(bytes);
}

/// The bytes an answer took on the wire: its frame, header and rkyv archive (what
/// `memds_anti_entropy_bytes_pulled_total` counts for every answer a pull reads).
fn answer_bytes(answer: &Response) -> u64 {
    (wire::archive_response(answer).len() + wire::FRAME_HEADER_LEN) as u64
}

/// [`answer_bytes`] of a whole table's answer, without encoding its snapshot again: the
/// snapshot plus the rest of the frame (exact but for rkyv's padding of the snapshot's bytes
/// to the archive's alignment, at most 7 bytes).
fn table_answer_bytes(version: u64, snapshot_len: usize) -> u64 {
    let rest = answer_bytes(&Response::Table {
        version,
        snapshot: Vec::new(),
    });
    rest + snapshot_len as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::model::RangeEdit;
    use memds_proto::synth::{self, SynthConfig};

    fn entry(start: u64, end_inclusive: u64, count: u64) -> TreeEntry {
        TreeEntry {
            start,
            end_inclusive,
            count,
            digest: start ^ 0xD16E57,
        }
    }

    fn digests(entries: Vec<TreeEntry>, truncated: bool) -> TreeDigests {
        TreeDigests {
            version: 2,
            levels: 2,
            root: 7,
            entries,
            truncated,
        }
    }

    #[test]
    fn only_tree_digests_that_tile_the_range_asked_are_used() {
        let tiles = vec![entry(0, 99, 3), entry(100, 199, 3), entry(200, u64::MAX, 3)];
        assert_eq!(
            covered_to(&digests(tiles.clone(), false), 50, 150),
            Some(u64::MAX)
        );
        assert_eq!(
            covered_to(&digests(tiles[..2].to_vec(), true), 0, u64::MAX),
            Some(199)
        );
        // Not reaching the end without saying truncated, a gap, an overlap, a node that does
        // not hold the first hash asked, an inverted span, nothing at all.
        assert_eq!(
            covered_to(&digests(tiles[..2].to_vec(), false), 0, 500),
            None
        );
        let gap = vec![entry(0, 99, 1), entry(101, u64::MAX, 1)];
        assert_eq!(covered_to(&digests(gap, false), 0, u64::MAX), None);
        let overlap = vec![entry(0, 99, 1), entry(50, u64::MAX, 1)];
        assert_eq!(covered_to(&digests(overlap, false), 0, u64::MAX), None);
        assert_eq!(
            covered_to(&digests(tiles[1..].to_vec(), false), 50, 60),
            None
        );
        let inverted = vec![entry(0, 99, 1), entry(200, 100, 1)];
        assert_eq!(covered_to(&digests(inverted, true), 0, u64::MAX), None);
        assert_eq!(covered_to(&digests(Vec::new(), true), 0, 10), None);
    }

    #[test]
    fn differing_blocks_merge_into_ranges_fetched_in_bounded_requests() {
        let blocks = vec![entry(300, 399, 5), entry(0, 99, 2), entry(100, 199, 4)];
        let merged = merge_spans(&blocks);
        assert_eq!(
            merged,
            [
                (
                    HashRange {
                        from: 0,
                        end_inclusive: 199
                    },
                    6
                ),
                (
                    HashRange {
                        from: 300,
                        end_inclusive: 399
                    },
                    5
                )
            ]
        );
        let many: Vec<(HashRange, u64)> = (0..3000u64)
            .map(|i| {
                (
                    HashRange {
                        from: i * 10,
                        end_inclusive: i * 10 + 5,
                    },
                    64,
                )
            })
            .collect();
        let chunks = range_chunks(&many);
        assert!(chunks.iter().all(
            |c| c.len() <= RANGES_PER_REQUEST && c.len() as u64 * 64 <= PARTITIONS_PER_REQUEST
        ));
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 3000);
        let huge = vec![(many[0].0, u64::MAX), (many[1].0, 1)];
        assert_eq!(
            range_chunks(&huge).len(),
            2,
            "a range past the bound goes alone"
        );
    }

    #[test]
    fn a_pulled_batch_is_submitted_only_if_it_gives_the_peers_table() {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 2_000,
                ..SynthConfig::default()
            },
            0,
        );
        let mut interner = NodeInterner::default();
        let ours = CompactTable::new(&map, &mut interner);
        let update: BatchEdit = synth::split_update(&map, 700, 1_000_000).into();
        let theirs = ours.apply(&update, &mut interner).expect("a valid split");
        let summary = TableSummary {
            name: map.name().as_str().into(),
            version: theirs.version().get(),
            digest: theirs.checksum(),
            dropped: false,
        };
        assert!(ranges_sorted(&update));
        assert!(would_match(&ours, &update, &summary));
        // Another checksum at the summary's version, or a batch that gives another version
        // (the peer's table moved since its summary: nothing vouches for the rest of it), or a
        // batch that does not apply here: refused before the writer sees it.
        let other = TableSummary {
            digest: 1,
            ..summary.clone()
        };
        assert!(!would_match(&ours, &update, &other));
        let older = TableSummary {
            version: summary.version - 1,
            ..summary.clone()
        };
        assert!(!would_match(&ours, &update, &older));
        let mut misaligned = update.clone();
        misaligned.ranges[0].partitions[0].start += 1;
        assert!(!would_match(&ours, &misaligned, &summary));
        let mut unsorted = update.clone();
        unsorted.ranges.push(RangeEdit {
            end_inclusive: 5,
            partitions: update.ranges[0].partitions.clone(),
        });
        assert!(!ranges_sorted(&unsorted));
    }
}
