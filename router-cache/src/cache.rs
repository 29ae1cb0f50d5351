//! The router cache: hit path, miss path, the dispatcher that batches lookups to the fleet, and
//! the application of answers.
//!
//! Every `route` call in ConstantWork mode queues exactly one lookup: a hit puts a refresh on
//! its thread's bounded ring (`ring`), a miss puts a waiting lookup on the shared bounded queue.
//! The dispatcher takes whatever is queued, groups it by table, and sends batch frames to
//! servers picked by power of two choices on in-flight requests. Answers refresh the cache
//! (confirming unchanged routes in place) and complete waiting misses. A miss still unanswered
//! after the hedge delay is sent to a second server as well; the first answer wins.
//!
//! Versions: the cache keeps, per table, the newest table version any server has answered
//! with, and every lookup it sends (miss or refresh, hedges and retries included) carries it
//! as `min_version`. A server holding an older version answers `behind`; one that has not yet
//! caught up with its peers since it started answers `unavailable`. Either is a refusal, not a
//! failure: the batch's waiting misses are sent again to a server of the fleet that has not
//! refused the batch, within the request timeout, and fail ([`CacheError::Refused`]) only once
//! every connected server of the fleet has refused it; a batch of refreshes only is not resent
//! (its hits were answered already). An answer older than the newest version seen by the time
//! it arrives (the request left before that version was seen, or the server ignored
//! `min_version`) is not applied either: it is counted as `behind` and its misses are sent
//! again. So a miss is not answered from a table version older than the newest the cache had
//! seen when the answer arrived, and cached routes never move backwards (the staleness rules of
//! [`crate::table`] refuse older answers besides). A cached route that a newer version confirms
//! unchanged keeps the `version` it was first cached at.
//!
//! Overload: a server past its lookup limit sheds lookups with `overloaded` (the whole frame,
//! or the node-list fetch an answer needed). The shed batch's refreshes are dropped and
//! counted (`refreshes_shed`), never sent again; its waiting misses are sent to one other
//! server (not hedged), and fail with [`CacheError::Overloaded`] if that one sheds them too, or
//! at once if there is no other to ask. The server that shed a batch is never asked again for
//! it. So an overloaded fleet gets at most one extra lookup per miss from the cache, and hits
//! keep being answered from the cache while their refreshes are shed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::cache::Cache;
use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_queue::ArrayQueue;
use memds_client::{ClientError, ClientTls, ConnectOptions, Connector, DeltaAnswer, PendingReply};
use memds_proto::model::MAX_REPLICAS;
use memds_proto::wire::{
    self, BatchUpdate, ErrorCode, ErrorReply, NodeList, Request, Response, Routes,
};
use memds_proto::{MapError, Route, TableMap, TableName, key_hash};
use rustc_hash::FxBuildHasher;
use tokio::sync::{Notify, oneshot, watch};

use crate::explain::{CachedRoute, DumpCounts, Explanation, TableDump, WarmKind, Warmed};
use crate::fleet::{Fleet, InFlight, Server};
use crate::ring::RefreshRing;
use crate::table::{Applied, Check, RouteRecord, RouteSource, Snapshot, TableRoutes};
use crate::whole::WholeCopy;

/// How the cache uses the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every call sends one lookup to the fleet, hit or miss: fleet load equals router traffic.
    ConstantWork,
    /// Only misses reach the fleet (kept to show the difference in experiments). With
    /// `whole_table`, the first touch of a table downloads all of it, as DynamoDB's original
    /// cache did, and every [`Config::table_refresh`] the table is brought up to date: by the
    /// delta since the version held when a server can tell it (`get-delta`), else by
    /// downloading it whole again.
    Classic {
        /// Download the whole table on first touch.
        whole_table: bool,
    },
}

/// Everything the cache needs.
#[derive(Debug)]
pub struct Config {
    /// The fleet's servers.
    pub servers: Vec<SocketAddr>,
    /// Router certificate and the CA to trust.
    pub tls: ClientTls,
    /// QUIC options (server name, idle timeout).
    pub connect: ConnectOptions,
    /// ConstantWork (default) or Classic.
    pub mode: Mode,
    /// Most routes cached per table; past it a pseudo-random route is evicted.
    pub capacity: usize,
    /// Most lookups queued for the fleet per calling thread (rounded up to a power of two):
    /// each thread that calls the cache queues its refreshes on a ring of its own, so a hit's
    /// enqueue shares no cache line with other threads; past the bound that thread's refreshes
    /// are dropped (and counted). Misses wait for room in one shared queue of the same bound
    /// (within their timeout). Memory: 16 bytes per slot per calling thread.
    pub queue_bound: usize,
    /// How long a miss waits for the fleet before failing.
    pub request_timeout: Duration,
    /// How long a miss waits before it is also sent to a second server.
    pub hedge_delay: Duration,
    /// Most hashes per batch frame.
    pub max_batch: usize,
    /// First delay before reconnecting to a server (doubling, with jitter, up to
    /// `reconnect_max`; back to this only after a connection that stayed up for
    /// `reconnect_max`, so a server closing connections at once, as one at its connection
    /// limit does, is tried ever less often).
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Classic whole-table mode: how often each downloaded table is brought up to date (a
    /// delta since the version held, or the whole table when no server can tell one).
    pub table_refresh: Duration,
    /// A value for a `router` label on every metric this cache publishes, for a process that
    /// runs several caches (the load generator's simulated routers): without it their series
    /// would overwrite each other. `None` (the default) publishes the series without it. Give a
    /// new cache a label no earlier cache of the process used: counters are published as
    /// absolute values, which the `metrics` crate never lowers, so a reused label would keep
    /// showing the earlier cache's totals.
    pub metrics_instance: Option<String>,
}

impl Config {
    /// Defaults for a fleet and TLS material.
    pub fn new(servers: Vec<SocketAddr>, tls: ClientTls) -> Self {
        Self {
            servers,
            tls,
            connect: ConnectOptions {
                idle_timeout: Duration::from_secs(3),
                ..ConnectOptions::default()
            },
            mode: Mode::ConstantWork,
            capacity: 1 << 20,
            queue_bound: 1 << 14,
            request_timeout: Duration::from_secs(2),
            hedge_delay: Duration::from_millis(50),
            max_batch: 1024,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(2),
            table_refresh: Duration::from_secs(1),
            metrics_instance: None,
        }
    }
}

/// Builds a [`RouterCache`]: `RouterCache::builder(servers, tls).mode(..).build().await`.
#[derive(Debug)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }
    /// Sets the per-table capacity.
    pub fn capacity(mut self, routes: usize) -> Self {
        self.config.capacity = routes.max(1);
        self
    }
    /// Sets the queue bound.
    pub fn queue_bound(mut self, jobs: usize) -> Self {
        self.config.queue_bound = jobs.max(1);
        self
    }
    /// Sets the miss timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.config.request_timeout = t;
        self
    }
    /// Sets the hedging delay.
    pub fn hedge_delay(mut self, t: Duration) -> Self {
        self.config.hedge_delay = t;
        self
    }
    /// Sets the largest batch frame.
    pub fn max_batch(mut self, hashes: usize) -> Self {
        self.config.max_batch = hashes.clamp(1, wire::DEFAULT_MAX_BATCH);
        self
    }
    /// Sets how often Classic whole-table mode brings its downloaded tables up to date.
    pub fn table_refresh(mut self, every: Duration) -> Self {
        self.config.table_refresh = every.max(Duration::from_millis(1));
        self
    }
    /// Sets the QUIC options.
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.config.connect = options;
        self
    }
    /// Sets the largest table a server's whole-table snapshot may declare, uncompressed
    /// ([`ConnectOptions::max_snapshot_bytes`], 1 GiB by default). Only the Classic
    /// whole-table mode downloads snapshots; one declaring more is refused before anything is
    /// allocated for it, counted in [`CacheStats::protocol_errors`], and asked of another
    /// server. Call after [`Builder::connect_options`], which replaces it.
    pub fn max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.config.connect.max_snapshot_bytes = bytes;
        self
    }
    /// Labels every metric this cache publishes with `router="<name>"` (see
    /// [`Config::metrics_instance`]).
    pub fn metrics_instance(mut self, name: impl Into<String>) -> Self {
        self.config.metrics_instance = Some(name.into());
        self
    }
    /// The configuration so far.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Starts the cache (inside a tokio runtime).
    pub async fn build(self) -> Result<RouterCache, CacheError> {
        RouterCache::start(self.config).await
    }
}

/// Why a route could not be given.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The fleet did not answer a miss in time (or no server was reachable).
    #[error("no route from the fleet within {0:?} (servers up: {1})")]
    Timeout(Duration, usize),
    /// The fleet answered with an error (for instance an unknown table). Never `behind` or
    /// `unavailable` (those are [`CacheError::Refused`]), nor `overloaded`
    /// ([`CacheError::Overloaded`]).
    #[error("the fleet answered {}: {}", .0.code.as_str(), .0.message)]
    Server(ErrorReply),
    /// Servers refused the lookup as behind the newest version of the table this cache has
    /// seen (`behind`) or as not ready (`unavailable`), and no server answered it: every
    /// connected server of the fleet refused (`behind + unavailable` of `servers`; the others
    /// were not connected). No route older than what the cache has seen is given instead.
    #[error(
        "{} of the fleet's {servers} servers refused the lookup ({behind} behind{}, {unavailable} \
         not ready); last: {last}",
        behind + unavailable,
        min_version.map(|v| format!(" version {v}")).unwrap_or_default()
    )]
    Refused {
        /// Servers in the fleet.
        servers: usize,
        /// Servers that answered `behind`.
        behind: usize,
        /// Servers that answered `unavailable` (not caught up with their peers yet).
        unavailable: usize,
        /// The lowest table version the lookup accepted: the newest the cache had seen.
        min_version: Option<u64>,
        /// The last refusal.
        last: ErrorReply,
    },
    /// Servers shed the lookup with `overloaded` (their lookup limit), and no server answered
    /// it: the server asked shed it and so did the one other server it was then asked of, or
    /// there was no other to ask (none connected, or every other refused it as `behind` or
    /// `unavailable`). A lookup answered `overloaded` is asked of one other server at most,
    /// never of the same one again, so an overloaded fleet gets at most one extra lookup per
    /// miss from it. Transient: the caller may try again later, better after backing off.
    #[error(
        "{overloaded} of the fleet's {servers} servers shed the lookup as overloaded (a lookup \
         shed is asked of one other server at most); last: {last}"
    )]
    Overloaded {
        /// Servers in the fleet.
        servers: usize,
        /// Servers that answered `overloaded` (at most two).
        overloaded: usize,
        /// The last `overloaded` answer.
        last: ErrorReply,
    },
    /// The cache could not start (bad TLS material, no endpoint).
    #[error("starting the cache: {0}")]
    Start(String),
    /// The cache was shut down.
    #[error("the cache is shut down")]
    Shutdown,
    /// The name cannot name a table (empty, or longer than a table name may be): nothing was
    /// sent to the fleet and nothing was cached.
    #[error("invalid table name: {0}")]
    InvalidTable(MapError),
}

/// What a storage node said is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidate {
    /// The route holding this hash.
    Hash(u64),
    /// The route of this partition.
    Partition(u64),
}

/// Counters of the cache (cumulative since start, except depths and sizes).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CacheStats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that had to wait for the fleet.
    pub misses: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Lookups sent to the fleet (hashes in batch frames, hedges included).
    pub lookups_sent: u64,
    /// Lookups sent again to a second server because the first was late.
    pub hedged: u64,
    /// Answers that changed a cached route (inserted or replaced).
    pub refreshes_changed: u64,
    /// Refreshes dropped: queue full, no server to send them to, or no answer from the fleet
    /// (a refusal is counted in `behind` or `unavailable` instead, and a refresh shed as
    /// `overloaded` in `refreshes_shed`).
    pub dropped: u64,
    /// Refreshes (lookups of hits) in frames a server answered `overloaded`: dropped, never
    /// sent again (their hits were answered from the cache already). Also counted in
    /// `overloaded`.
    pub refreshes_shed: u64,
    /// Server answers refused whole as malformed (a route count other than the hashes asked, a
    /// route that does not hold its hash, a bad replica list, a node list not sorted by id or
    /// lacking a node its routes name, an answer of another kind or that does not decode, a
    /// whole-table snapshot over the limit or invalid); each batch was retried on another
    /// server.
    pub protocol_errors: u64,
    /// Lookups refused as `behind` (hashes in the frames refused): the server held an older
    /// version of the table than the newest this cache had seen, which every lookup carries as
    /// its `min_version`. Also counted here: answers at an older version than the cache had
    /// seen by the time they arrived (not applied). Misses among them were sent again
    /// ([`CacheStats::retried_elsewhere`]); refreshes were not. A whole-table download
    /// (Classic) refused, or older than a version seen, counts one.
    pub behind: u64,
    /// Lookups refused as `unavailable`: the server had not caught up with its peers since it
    /// started (not ready). Misses among them were sent again; refreshes were not.
    pub unavailable: u64,
    /// Lookups answered `overloaded` (hashes in the frames shed, and node-list fetches shed):
    /// the server's lookup limit shed them. Misses among them were sent again to one other
    /// server at most ([`CacheStats::retried_overloaded`]); refreshes were dropped
    /// ([`CacheStats::refreshes_shed`]).
    pub overloaded: u64,
    /// Lookups sent again to another server after a refusal (`behind` or `unavailable`): the
    /// whole batch of a refused frame that had misses waiting; and after an `overloaded`
    /// answer, the misses still waiting (also counted in `retried_overloaded`). Not counted
    /// in `hedged`.
    pub retried_elsewhere: u64,
    /// Lookups sent again to another server after an `overloaded` answer: only the misses
    /// still waiting, once per miss at most.
    pub retried_overloaded: u64,
    /// Jobs queued or in flight.
    pub queue_depth: u64,
    /// Routes cached, over all tables.
    pub entries: u64,
    /// Servers currently connected.
    pub servers_up: u64,
    /// Seconds since the least recently confirmed cached route was last confirmed by the fleet.
    pub oldest_unconfirmed_seconds: Option<f64>,
    /// Classic whole-table mode: tables downloaded whole (on first touch, or on a refresh no
    /// server could answer with a delta).
    pub table_downloads: u64,
    /// Classic whole-table mode: refreshes that brought a table up to date by a delta (only
    /// the partitions that changed).
    pub table_deltas: u64,
    /// Warms ([`RouterCache::warm`]) that succeeded, of every kind.
    pub warms: u64,
    /// Of them, warms by a delta since the cached copy's version.
    pub warm_deltas: u64,
    /// Of them, warms that found nothing newer than the cached copy.
    pub warms_not_modified: u64,
    /// Warms that failed (no server answered: refused, shed, timed out, or an error answer).
    pub warm_failures: u64,
    /// Routes warms inserted or replaced ([`Warmed::changed`] summed).
    pub warm_routes: u64,
}

/// The cache's shared counters (hits and refused refreshes are counted per thread, in
/// [`PerThread`]). Jobs queued or in flight are not counted directly (that would cost a hit
/// another write): they are what was enqueued less what finished, where in ConstantWork every
/// hit enqueued one refresh.
#[derive(Debug, Default)]
struct Counters {
    misses: AtomicU64,
    errors: AtomicU64,
    lookups_sent: AtomicU64,
    hedged: AtomicU64,
    changed: AtomicU64,
    /// Refreshes dropped after they were queued (no server to send them to).
    dropped: AtomicU64,
    /// Server answers refused as malformed.
    protocol_errors: AtomicU64,
    /// Lookups refused as behind (or answered at an older version than seen).
    behind: AtomicU64,
    /// Lookups refused as unavailable (server not ready).
    unavailable: AtomicU64,
    /// Lookups sent again after a refusal (overloaded included).
    retried: AtomicU64,
    /// Lookups answered overloaded.
    overloaded: AtomicU64,
    /// Lookups sent again after an overloaded answer.
    retried_overloaded: AtomicU64,
    /// Refreshes in frames answered overloaded.
    refreshes_shed: AtomicU64,
    /// Misses queued.
    miss_jobs: AtomicU64,
    /// Jobs taken off the queue and finished.
    finished: AtomicU64,
    /// Whole tables downloaded.
    table_downloads: AtomicU64,
    /// Whole-table refreshes done by a delta.
    table_deltas: AtomicU64,
    /// Warms by kind, failed warms, and the routes warms changed.
    warms_whole: AtomicU64,
    warm_deltas: AtomicU64,
    warms_not_modified: AtomicU64,
    warm_failures: AtomicU64,
    warm_routes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

type Waiter = oneshot::Sender<Result<Arc<Route>, CacheError>>;

/// Tables by name, with FxHash: table names are short and trusted (the router's own), and a
/// keyed or streaming hasher would cost more than the rest of a hit.
type Tables<T = Arc<TableState>> = HashMap<Box<str>, T, FxBuildHasher>;

/// The registry of tables.
#[derive(Default)]
struct Registry {
    by_name: Tables,
    /// By id, in order of creation; queued jobs name their table by its position here.
    by_id: Vec<Arc<TableState>>,
}

/// What one calling thread shares with the dispatcher and the stats: its ring of refreshes and
/// its counters. Only that thread writes them, with plain stores: a hit executes no locked
/// instruction for its bookkeeping.
#[derive(Debug)]
struct PerThread {
    ring: RefreshRing,
    hits: AtomicU64,
    /// Refreshes that found the ring full.
    refused: AtomicU64,
}

/// Adds one to a counter only the calling thread writes. Release: a reader that sees a
/// thread's `refused` (read with Acquire) also sees the `hits` that thread counted before it.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Release);
}

/// What one thread keeps for its hits: a handle on each table it has looked up, so a hit needs
/// neither the shared registry nor a shared load of the table's snapshot. An `ArcSwap` load
/// costs two locked instructions, and each of those waits for the cache misses before it; the
/// cached handle checks the published pointer with a plain load and reloads only when it moved.
/// Tables are never removed from the registry, so a handle never outlives its table's entry;
/// a withdrawn snapshot is seen by the next hit on every thread (the pointer moved). A thread
/// that stops calling keeps the last snapshot it used until it calls again or the cache is
/// dropped.
#[derive(Default)]
struct LocalTables {
    by_name: Tables<LocalTable>,
}

struct LocalTable {
    id: u32,
    snapshot: Cache<PublishedSnapshot, Option<Arc<Snapshot>>>,
}

/// A table's published hit snapshot, owned through the table (what a [`Cache`] watches).
struct PublishedSnapshot(Arc<TableState>);

impl Deref for PublishedSnapshot {
    type Target = ArcSwapOption<Snapshot>;

    fn deref(&self) -> &Self::Target {
        self.0.routes.published()
    }
}

/// A cached table: its routes and its node list.
#[derive(Debug)]
struct TableState {
    /// Position in the registry's `by_id`; queued jobs name their table by it.
    id: u32,
    name: TableName,
    routes: TableRoutes,
    nodes: ArcSwap<NodeList>,
    /// Held while fetching the node list, and while downloading, refreshing or warming the
    /// table.
    nodes_fetch: tokio::sync::Mutex<()>,
    downloaded: AtomicBool,
    /// The version and nodes the routes of the last whole-table download or warm (and the
    /// deltas since) were made from. Set with `nodes_fetch` held, and held itself while those
    /// routes are inserted, so `clear` (which resets it) never leaves a copy that claims
    /// routes the cache no longer has.
    whole: Mutex<WholeCopy>,
    /// One more than the newest table version a server has answered with; 0 while none has.
    newest_seen: AtomicU64,
    /// The batches of lookups of this table the dispatcher has sent and not finished with,
    /// for `explain` (`refresh_queued`): added when a batch is made, removed when it is done.
    /// Per batch, never per lookup, and never touched by a hit.
    in_flight: Mutex<Vec<Weak<Batch>>>,
}

impl TableState {
    /// The newest version of the table a server has answered with: the `min_version` of
    /// every lookup sent for the table. Never decreases.
    fn newest_version(&self) -> Option<u64> {
        self.newest_seen.load(Ordering::Acquire).checked_sub(1)
    }

    /// Records a version a server answered with. (Version `u64::MAX` is recorded as one less,
    /// the only version the encoding cannot tell apart.)
    fn saw_version(&self, version: u64) {
        self.newest_seen
            .fetch_max(version.saturating_add(1), Ordering::AcqRel);
    }

    /// Whether a server holding `version` is behind what the cache has seen.
    fn is_behind(&self, version: u64) -> bool {
        self.newest_version().is_some_and(|newest| version < newest)
    }

    fn copy(&self) -> std::sync::MutexGuard<'_, WholeCopy> {
        // Every change of the copy is one assignment; a poisoned lock holds a whole copy.
        self.whole.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Batch>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hashes of the lookups in the batches in flight, sorted.
    fn hashes_in_flight(&self) -> Vec<u64> {
        let mut hashes: Vec<u64> = self
            .in_flight()
            .iter()
            .filter_map(Weak::upgrade)
            .flat_map(|b| b.hashes.clone())
            .collect();
        hashes.sort_unstable();
        hashes
    }
}

/// Whether a sorted list of hashes has one in `[start, end]`.
fn any_within(sorted: &[u64], start: u64, end: u64) -> bool {
    sorted
        .get(sorted.partition_point(|&h| h < start))
        .is_some_and(|&h| h <= end)
}

/// One queued lookup.
struct Job {
    table: u32,
    hash: u64,
    /// A waiting miss and its deadline; `None` for a refresh.
    waiter: Option<(Waiter, Instant)>,
}

struct Inner {
    mode: Mode,
    /// Set by `shutdown`: misses fail at once and refreshes are refused (nothing would send
    /// them).
    closed: AtomicBool,
    capacity: usize,
    /// The largest snapshot a whole-table download or warm accepts, uncompressed.
    max_snapshot_bytes: u64,
    request_timeout: Duration,
    hedge_delay: Duration,
    max_batch: usize,
    /// Every table the cache has seen, by name and by id: the slow path's registry (hits use
    /// each thread's own handles). Tables are never removed.
    registry: RwLock<Registry>,
    /// Each thread's handles on the tables it used: the hit path.
    local: thread_local::ThreadLocal<RefCell<LocalTables>>,
    /// Each calling thread's refresh ring and counters.
    threads: thread_local::ThreadLocal<PerThread>,
    queue_bound: usize,
    /// Misses for the fleet: a lock-free bounded queue; the dispatcher is woken only when it
    /// sleeps.
    queue: ArrayQueue<Job>,
    dispatcher_asleep: AtomicBool,
    wake: Notify,
    fleet: Fleet,
    counters: Counters,
    started: Instant,
    shutdown: watch::Sender<bool>,
    idle: tokio::sync::Notify,
    /// The labels every metric of this cache carries.
    metrics: crate::metrics::Labels,
}

/// The route cache a request router links. Cheap to clone; call [`RouterCache::shutdown`] when
/// done.
#[derive(Clone)]
pub struct RouterCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RouterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCache")
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl RouterCache {
    /// A builder with default settings.
    pub fn builder(servers: Vec<SocketAddr>, tls: ClientTls) -> Builder {
        Builder {
            config: Config::new(servers, tls),
        }
    }

    /// Starts the cache: connects to the fleet in the background and starts the dispatcher.
    pub async fn start(config: Config) -> Result<Self, CacheError> {
        if config.servers.is_empty() {
            return Err(CacheError::Start("no servers given".into()));
        }
        crate::metrics::describe();
        let connector = Connector::new(&config.tls, config.connect.clone())
            .map_err(|e| CacheError::Start(e.to_string()))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let fleet = Fleet::start(
            connector,
            &config.servers,
            config.reconnect_min,
            config.reconnect_max,
            shutdown_rx.clone(),
        );
        let inner = Arc::new(Inner {
            mode: config.mode,
            closed: AtomicBool::new(false),
            capacity: config.capacity.max(1),
            max_snapshot_bytes: config.connect.max_snapshot_bytes,
            request_timeout: config.request_timeout,
            hedge_delay: config.hedge_delay,
            max_batch: config.max_batch.clamp(1, wire::DEFAULT_MAX_BATCH),
            registry: RwLock::new(Registry::default()),
            local: thread_local::ThreadLocal::new(),
            threads: thread_local::ThreadLocal::new(),
            queue_bound: config.queue_bound.max(1),
            queue: ArrayQueue::new(config.queue_bound.max(1)),
            dispatcher_asleep: AtomicBool::new(false),
            wake: Notify::new(),
            fleet,
            counters: Counters::default(),
            started: Instant::now(),
            shutdown,
            idle: tokio::sync::Notify::new(),
            metrics: crate::metrics::Labels::new(config.metrics_instance.as_deref()),
        });
        tokio::spawn(dispatch(Arc::clone(&inner), shutdown_rx.clone()));
        let cache = Self { inner };
        if let Mode::Classic { whole_table: true } = config.mode {
            tokio::spawn(refresh_loop(
                cache.clone(),
                config.table_refresh,
                shutdown_rx.clone(),
            ));
        }
        tokio::spawn(crate::metrics::publish_loop(
            cache.clone(),
            cache.inner.metrics.clone(),
            shutdown_rx,
        ));
        Ok(cache)
    }

    /// The route for a key (hashed with XXH3-64, seed 0).
    pub async fn route(&self, table: &str, key: &[u8]) -> Result<Arc<Route>, CacheError> {
        self.route_hash(table, key_hash(key)).await
    }

    /// The route for a hash. A hit answers at once (and, in ConstantWork mode, queues one
    /// refresh lookup); a miss waits for the fleet.
    pub async fn route_hash(&self, table: &str, hash: u64) -> Result<Arc<Route>, CacheError> {
        self.route_hash_traced(table, hash)
            .await
            .map(|(route, _)| route)
    }

    /// Like [`RouterCache::route_hash`], also saying whether the cache answered (a hit).
    pub async fn route_hash_traced(
        &self,
        table: &str,
        hash: u64,
    ) -> Result<(Arc<Route>, bool), CacheError> {
        let inner = &self.inner;
        if let Some(route) = inner.local_hit(table, hash) {
            return Ok((route, true));
        }
        let t = match inner.find(table) {
            Some(t) => t,
            None => match TableName::new(table) {
                Ok(name) => inner.table(&name),
                Err(e) => {
                    add(&inner.counters.errors, 1);
                    return Err(CacheError::InvalidTable(e));
                }
            },
        };
        inner.remember(table, &t);
        if let Some(route) = inner.hit(&t, hash) {
            return Ok((route, true));
        }
        add(&inner.counters.misses, 1);
        let result = inner.miss(t, hash).await;
        if result.is_err() {
            add(&inner.counters.errors, 1);
        }
        result.map(|route| (route, false))
    }

    /// Drops a route a storage node reported wrong (its epoch at most `observed_epoch`); the next
    /// call for that range is a miss. Answers whether a route was removed.
    pub fn invalidate(&self, table: &str, what: Invalidate, observed_epoch: u64) -> bool {
        let Some(t) = self.inner.find(table) else {
            return false;
        };
        match what {
            Invalidate::Hash(h) => t.routes.invalidate_hash(h, observed_epoch),
            Invalidate::Partition(id) => t.routes.invalidate_partition(id, observed_epoch),
        }
    }

    /// Applies a corrected route a storage node returned; ignored if older than what is cached.
    pub fn apply_route(&self, route: Route) -> bool {
        let t = self.inner.table(&route.table);
        let applied =
            t.routes
                .insert_from(Arc::new(route), self.inner.now(), RouteSource::Correction);
        self.inner.enforce_capacity(&t);
        applied == Applied::Changed
    }

    /// Forgets every cached route (what a router restart does to a cache). The newest version
    /// of each table seen is kept: a flushed cache still asks for at least that version, so it
    /// never hands out routes older than those it handed out before the flush.
    pub fn clear(&self) {
        for t in self.inner.all_tables() {
            // The copy goes with the routes made from it: the next warm or download is whole.
            let mut copy = t.copy();
            *copy = WholeCopy::default();
            t.routes.clear();
            t.downloaded.store(false, Ordering::SeqCst);
        }
    }

    /// Classic whole-table mode: brings every downloaded table up to date now (what the
    /// cache does every [`Config::table_refresh`]): the delta since the version held when a
    /// server can tell it, else the whole table. Answers the first table that could not be
    /// refreshed, with why; the others were refreshed anyway. Other modes: nothing to do.
    pub async fn refresh_tables(&self) -> Result<(), CacheError> {
        let mut first_error = None;
        for t in self.inner.all_tables() {
            if let Err(e) = self.inner.refresh_table(&t).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Fills the cache with a table's routes in one request, in any mode: the whole table (one
    /// get-table, as Classic whole-table mode downloads it), or, when the cache holds a copy of
    /// the table from an earlier warm or whole-table download, the delta since that copy's
    /// version (one get-delta; the whole table only when the server cannot tell the delta or
    /// it does not apply, and nothing at all when the server holds nothing newer). No lookups:
    /// the fleet's lookup counters do not move.
    ///
    /// The routes go through the same staleness rules as every answer (a newer cached route
    /// is never replaced; a partition a storage node called wrong at that epoch is not
    /// cached again), are recorded as [`RouteSource::Warm`], and raise the newest version seen.
    /// A server holding an older version than the newest the cache has seen is refused as
    /// `behind` and another is asked, as for lookups: a warm never moves the cache backwards.
    ///
    /// Capacity: the routes are inserted one by one, and past [`Config::capacity`] each one
    /// evicts a pseudo-random route, as any insertion does; so a table with more partitions
    /// than the capacity leaves `capacity` routes spread over the table (some of them routes
    /// cached before the warm), and [`Warmed::evicted`] says how many went. Memory never holds
    /// more than the capacity of routes (and the decoded snapshot, while it is applied).
    ///
    /// It waits (within [`Config::request_timeout`]) for a connected server, and asks another
    /// one when a server refuses (`behind`, `unavailable`), sheds it (`overloaded`, a second
    /// server shedding it fails the warm), sends something malformed, or fails. In Classic
    /// whole-table mode a warm counts as the table's download (refreshed every
    /// [`Config::table_refresh`] from then on).
    pub async fn warm(&self, table: &str) -> Result<Warmed, CacheError> {
        let inner = &self.inner;
        let c = &inner.counters;
        let t = match TableName::new(table) {
            Ok(name) => inner.table(&name),
            Err(e) => {
                add(&c.warm_failures, 1);
                return Err(CacheError::InvalidTable(e));
            }
        };
        let warmed = {
            let _guard = t.nodes_fetch.lock().await;
            let held = t.copy().version;
            inner.fetch_table(&t, held, RouteSource::Warm).await
        };
        match &warmed {
            Ok(w) => {
                add(&c.warm_routes, w.changed);
                match w.kind {
                    WarmKind::Whole => add(&c.warms_whole, 1),
                    WarmKind::Delta => add(&c.warm_deltas, 1),
                    WarmKind::NotModified => add(&c.warms_not_modified, 1),
                }
            }
            Err(_) => add(&c.warm_failures, 1),
        }
        warmed
    }

    /// Why a lookup of `key` in `table` gets the answer it gets, from the cache alone (nothing
    /// is sent, nothing changes). See [`Explanation`].
    pub fn explain(&self, table: &str, key: &[u8]) -> Explanation {
        self.explain_hash(table, key_hash(key))
    }

    /// [`RouterCache::explain`] for a hash.
    pub fn explain_hash(&self, table: &str, hash: u64) -> Explanation {
        let inner = &self.inner;
        let mut explanation = Explanation {
            table: table.to_owned(),
            hash,
            mode: inner.mode,
            table_known: false,
            newest_version: None,
            route: None,
            refresh_queued: false,
            invalidated: None,
        };
        let Some(t) = inner.find(table) else {
            return explanation;
        };
        let described = t.routes.describe(hash);
        let in_flight = t.hashes_in_flight();
        let now = inner.now();
        explanation.route = described
            .route
            .map(|r| inner.cached_route(r, &in_flight, now));
        explanation.refresh_queued = match &explanation.route {
            Some(r) => r.refresh_queued,
            None => any_within(&in_flight, hash, hash),
        };
        explanation.table_known = true;
        explanation.newest_version = t.newest_version();
        explanation.invalidated = described.invalidated;
        explanation
    }

    /// Every cached route of a table with its bookkeeping, from the cache alone; `None` if the
    /// cache has never seen the table. See [`TableDump`].
    pub fn dump(&self, table: &str) -> Option<TableDump> {
        let inner = &self.inner;
        let t = inner.find(table)?;
        let copy_version = t.copy().version;
        let (records, invalidated) = t.routes.records();
        let in_flight = t.hashes_in_flight();
        let now = inner.now();
        let mut counts = DumpCounts {
            invalidated: invalidated.len() as u64,
            ..DumpCounts::default()
        };
        let routes: Vec<CachedRoute> = records
            .into_iter()
            .map(|r| inner.cached_route(r, &in_flight, now))
            .inspect(|r| counts.count(r))
            .collect();
        let nodes = t.nodes.load();
        Some(TableDump {
            table: table.to_owned(),
            mode: inner.mode,
            newest_version: t.newest_version(),
            nodes_digest: (!nodes.nodes.is_empty()).then_some(nodes.digest),
            copy_version,
            counts,
            routes,
            invalidated,
        })
    }

    /// Waits until every queued and in-flight lookup has been answered or given up, then
    /// brings the hit snapshots up to date. After `shutdown` it returns at once.
    pub async fn drain(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.outstanding() == 0 || self.inner.closed.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
        self.refresh_snapshots();
    }

    /// Rebuilds every table's hit snapshot that lags its routes (the metrics task does this
    /// once a second; answers do it as they arrive).
    pub fn refresh_snapshots(&self) {
        let now = self.inner.now();
        for t in self.inner.all_tables() {
            t.routes.maybe_rebuild(now, true);
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let now = self.inner.now();
        let tables = self.inner.all_tables();
        let entries = tables.iter().map(|t| t.routes.len() as u64).sum();
        let oldest = tables
            .iter()
            .filter_map(|t| t.routes.oldest_confirmation())
            .min();
        // Read once each: the published `warms_total{result="whole"}` is the total less the
        // others, and must never go down.
        let warms_whole = c.warms_whole.load(Ordering::Relaxed);
        let warm_deltas = c.warm_deltas.load(Ordering::Relaxed);
        let warms_not_modified = c.warms_not_modified.load(Ordering::Relaxed);
        CacheStats {
            hits: self.inner.per_thread_sum(|t| &t.hits),
            misses: c.misses.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            lookups_sent: c.lookups_sent.load(Ordering::Relaxed),
            hedged: c.hedged.load(Ordering::Relaxed),
            refreshes_changed: c.changed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed) + self.inner.per_thread_sum(|t| &t.refused),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            behind: c.behind.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            retried_elsewhere: c.retried.load(Ordering::Relaxed),
            refreshes_shed: c.refreshes_shed.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            retried_overloaded: c.retried_overloaded.load(Ordering::Relaxed),
            queue_depth: self.inner.outstanding(),
            entries,
            servers_up: self.inner.fleet.up() as u64,
            oldest_unconfirmed_seconds: oldest.map(|t| now.saturating_sub(t) as f64 / 1e9),
            table_downloads: c.table_downloads.load(Ordering::Relaxed),
            table_deltas: c.table_deltas.load(Ordering::Relaxed),
            warms: warms_whole + warm_deltas + warms_not_modified,
            warm_deltas,
            warms_not_modified,
            warm_failures: c.warm_failures.load(Ordering::Relaxed),
            warm_routes: c.warm_routes.load(Ordering::Relaxed),
        }
    }

    /// Stops the dispatcher and the connections. Pending misses fail with
    /// [`CacheError::Shutdown`].
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let _ = self.inner.shutdown.send(true);
        self.inner.fleet.close();
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A route's bookkeeping as explained, given the sorted hashes in flight and `now`.
    fn cached_route(&self, r: RouteRecord, in_flight: &[u64], now: u64) -> CachedRoute {
        CachedRoute {
            refresh_queued: any_within(in_flight, r.route.start, r.route.end_inclusive),
            route: Route::clone(&r.route),
            source: r.source,
            confirmed_ago: r
                .confirmed_at
                .map(|at| Duration::from_nanos(now.saturating_sub(at))),
            confirmed_version: r.confirmed_version,
        }
    }

    /// The table's state, if the cache has seen the table.
    fn find(&self, name: &str) -> Option<Arc<TableState>> {
        self.registry().by_name.get(name).cloned()
    }

    /// The table with this id (ids come from the registry, which never shrinks).
    fn by_id(&self, id: u32) -> Arc<TableState> {
        Arc::clone(&self.registry().by_id[id as usize])
    }

    /// Every table the cache has seen (a copy: no lock is held while the caller works).
    fn all_tables(&self) -> Vec<Arc<TableState>> {
        self.registry().by_id.clone()
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // Every change to the registry is one insert into each map, done before anything can
        // panic, so a poisoned lock holds a consistent registry.
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The table's state, created on first use.
    fn table(&self, name: &TableName) -> Arc<TableState> {
        self.find(name.as_str())
            .unwrap_or_else(|| self.new_table(name))
    }

    #[cold]
    fn new_table(&self, name: &TableName) -> Arc<TableState> {
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = registry.by_name.get(name.as_str()) {
            return Arc::clone(t);
        }
        let t = Arc::new(TableState {
            id: u32::try_from(registry.by_id.len()).expect("fewer than 2^32 tables"),
            name: name.clone(),
            routes: TableRoutes::default(),
            nodes: ArcSwap::from_pointee(NodeList::default()),
            nodes_fetch: tokio::sync::Mutex::new(()),
            downloaded: AtomicBool::new(false),
            whole: Mutex::new(WholeCopy::default()),
            newest_seen: AtomicU64::new(0),
            in_flight: Mutex::new(Vec::new()),
        });
        registry.by_id.push(Arc::clone(&t));
        registry
            .by_name
            .insert(name.as_str().into(), Arc::clone(&t));
        t
    }

    /// The hit path: this thread's handle on the table's snapshot, no lock, no shared load, no
    /// allocation. `None` when this thread has not used the table yet or the snapshot lacks
    /// the route (the caller then takes the slow path).
    #[inline]
    fn local_hit(&self, table: &str, hash: u64) -> Option<Arc<Route>> {
        let mut local = self.local.get_or_default().borrow_mut();
        let t = local.by_name.get_mut(table)?;
        let id = t.id;
        let route = Arc::clone(t.snapshot.load().as_ref()?.get(hash)?);
        drop(local);
        self.counted_hit(id, hash);
        Some(route)
    }

    /// Gives this thread a handle on a table, for its next hits.
    #[cold]
    fn remember(&self, table: &str, t: &Arc<TableState>) {
        let mut local = self.local.get_or_default().borrow_mut();
        if !local.by_name.contains_key(table) {
            local.by_name.insert(
                table.into(),
                LocalTable {
                    id: t.id,
                    snapshot: Cache::new(PublishedSnapshot(Arc::clone(t))),
                },
            );
        }
    }

    /// A hit from the table's own structure (its snapshot, or its map while the snapshot lags).
    fn hit(&self, t: &TableState, hash: u64) -> Option<Arc<Route>> {
        let route = t.routes.get(hash)?;
        self.counted_hit(t.id, hash);
        Some(route)
    }

    /// Counts a hit and, in ConstantWork mode, queues its refresh on this thread's ring.
    #[inline]
    fn counted_hit(&self, table: u32, hash: u64) {
        let mine = self.threads.get_or(|| self.new_thread());
        bump(&mine.hits);
        if self.mode == Mode::ConstantWork {
            if !self.closed.load(Ordering::Relaxed) && mine.ring.push(table, hash) {
                // A plain load: the ring's release store and this load may pass each other, so
                // a dispatcher going to sleep at that moment can miss this refresh; it wakes
                // on its own within its backstop (`DISPATCH_BACKSTOP`; a full barrier here
                // would cost every hit what the ring saves).
                if self.dispatcher_asleep.load(Ordering::Relaxed) {
                    self.wake_dispatcher();
                }
            } else {
                bump(&mine.refused);
            }
        }
    }

    #[cold]
    fn new_thread(&self) -> PerThread {
        PerThread {
            ring: RefreshRing::new(match self.mode {
                Mode::ConstantWork => self.queue_bound,
                Mode::Classic { .. } => 1,
            }),
            hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A per-thread counter summed over the threads.
    fn per_thread_sum(&self, counter: impl Fn(&PerThread) -> &AtomicU64) -> u64 {
        self.threads
            .iter()
            .map(|t| counter(t).load(Ordering::Acquire))
            .sum()
    }

    fn wake_dispatcher(&self) {
        if self.dispatcher_asleep.load(Ordering::SeqCst)
            && self.dispatcher_asleep.swap(false, Ordering::AcqRel)
        {
            self.wake.notify_one();
        }
    }

    async fn miss(
        self: &Arc<Self>,
        t: Arc<TableState>,
        hash: u64,
    ) -> Result<Arc<Route>, CacheError> {
        if let Mode::Classic { whole_table: true } = self.mode
            && !t.downloaded.load(Ordering::SeqCst)
        {
            self.download(&t).await?;
            if let Some(route) = t.routes.get(hash) {
                return Ok(route);
            }
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(CacheError::Shutdown);
        }
        let (tx, rx) = oneshot::channel();
        let job = Job {
            table: t.id,
            hash,
            waiter: Some((tx, Instant::now() + self.request_timeout)),
        };
        add(&self.counters.miss_jobs, 1);
        // Counted from here; if it never reaches the queue (timed out, cancelled, shut down)
        // the guard counts it finished.
        let mut unqueued = Unqueued {
            inner: self,
            queued: false,
        };
        // A miss waits for room (the dispatcher empties the queue in bulk), within its own
        // timeout; only refreshes are ever dropped.
        let waited = async {
            let mut job = job;
            loop {
                match self.queue.push(job) {
                    Ok(()) => {
                        unqueued.queued = true;
                        break;
                    }
                    Err(back) => {
                        if self.closed.load(Ordering::SeqCst) {
                            return Err(CacheError::Shutdown);
                        }
                        job = back;
                        self.wake_dispatcher();
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            }
            self.wake_dispatcher();
            rx.await.unwrap_or(Err(CacheError::Shutdown))
        };
        match tokio::time::timeout(self.request_timeout, waited).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.request_timeout, self.fleet.up())),
        }
    }

    /// Classic mode's first touch: the whole table, from one server (see
    /// [`Inner::fetch_table`]).
    async fn download(&self, t: &TableState) -> Result<(), CacheError> {
        let _guard = t.nodes_fetch.lock().await;
        if t.downloaded.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fetched = self.fetch_table(t, None, RouteSource::WholeTable).await?;
        self.count_whole_table(&fetched);
        Ok(())
    }

    /// Whole-table mode: brings a downloaded table up to date, by the delta since the version
    /// held when a server can tell it, else whole (see [`Inner::fetch_table`]).
    async fn refresh_table(&self, t: &TableState) -> Result<(), CacheError> {
        let _guard = t.nodes_fetch.lock().await;
        if !t.downloaded.load(Ordering::SeqCst) {
            return Ok(());
        }
        let held = t.copy().version;
        let fetched = self.fetch_table(t, held, RouteSource::WholeTable).await?;
        self.count_whole_table(&fetched);
        Ok(())
    }

    /// Counts what a fetch of Classic whole-table mode brought.
    fn count_whole_table(&self, fetched: &Warmed) {
        let c = &self.counters;
        add(&c.lookups_sent, fetched.routes);
        match fetched.kind {
            WarmKind::Whole => add(&c.table_downloads, 1),
            WarmKind::Delta => {
                add(&c.changed, fetched.changed);
                add(&c.table_deltas, 1);
            }
            WarmKind::NotModified => {}
        }
    }

    /// Brings the table's copy up to date from the fleet, with `nodes_fetch` held: the delta
    /// since version `since` if given, else (or when a server cannot tell that delta, or it
    /// does not apply to the copy) the whole table; the routes are recorded as from `source`.
    /// Shared by Classic whole-table mode's download and refresh and by `warm`.
    ///
    /// It waits for a connected server within the request timeout. A server that refuses
    /// (behind, not ready) or whose answer is older than a version the cache has seen (a
    /// table, a delta, or `not modified` at an older version) is not asked again; the fetch
    /// fails once every connected server has refused. One that sheds it (`overloaded`) is not
    /// asked again either, and a second one shedding it fails the fetch
    /// ([`CacheError::Overloaded`]). One that fails or sends something malformed (a snapshot
    /// over the limit or damaged, an answer of another kind) is avoided while another is up.
    async fn fetch_table(
        &self,
        t: &TableState,
        since: Option<u64>,
        source: RouteSource,
    ) -> Result<Warmed, CacheError> {
        let mut since = since;
        let deadline = Instant::now() + self.request_timeout;
        let mut tried: Option<usize> = None;
        let mut refusals = Refusals::default();
        // An answer older than what the cache holds or has seen: refused as `behind`.
        let behind = |refusals: &mut Refusals, server: usize, held: Option<u64>, what: String| {
            let reply = ErrorReply::new(
                ErrorCode::Behind,
                format!(
                    "{what}, older than the {} already seen",
                    t.newest_version().max(held).unwrap_or_default()
                ),
            );
            self.count_refusal(&reply, 1);
            refusals.add(server, reply);
        };
        while Instant::now() < deadline && !refusals.all(self.fleet.len()) {
            let Some(server) = self
                .fleet
                .pick(&refusals.avoiding(tried))
                .or_else(|| self.fleet.pick(&refusals.shunned()))
            else {
                if !refusals.shunned().is_empty() {
                    // Every connected server refused or shed the fetch.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if tried == Some(server.index) {
                // The same server again (no other is up) after it failed: not in a tight loop.
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(10))).await;
            }
            tried = Some(server.index);
            let name = t.name.as_str();
            let in_flight = server.begin();
            // A server that never answers must not hold the fetch, and the lock every miss on
            // the table may wait for, past the deadline.
            let answer = tokio::time::timeout_at(deadline.into(), async {
                match since {
                    Some(held) => server
                        .client
                        .get_delta(name, held)
                        .await
                        .map(Fetched::Delta),
                    None => server
                        .client
                        .get_table_snapshot(name, None)
                        .await
                        .map(Fetched::Table),
                }
            })
            .await;
            drop(in_flight);
            let Ok(answer) = answer else {
                break;
            };
            match answer {
                Ok(Fetched::Table(Some((_, bytes)))) => match self.decode(t, &bytes) {
                    Err(reason) => refuse(self, &server, &t.name, &reason),
                    Ok(map) if t.is_behind(map.version().get()) => behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("sent version {} of the table", map.version().get()),
                    ),
                    Ok(map) => {
                        let mut fetched = self.install_whole(t, &map, source);
                        fetched.bytes = Some(bytes.len() as u64);
                        return Ok(fetched);
                    }
                },
                Ok(Fetched::Table(None)) => {
                    let reason = "answered an unconditional get-table with not modified";
                    refuse(self, &server, &t.name, reason);
                }
                Ok(Fetched::Delta(DeltaAnswer::Delta(delta))) if t.is_behind(delta.version) => {
                    behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("sent a delta to version {}", delta.version),
                    );
                }
                Ok(Fetched::Delta(DeltaAnswer::Delta(delta))) => {
                    match self.apply_delta(t, &delta, source) {
                        Ok(fetched) => return Ok(fetched),
                        Err(reason) => {
                            tracing::info!(server = %server.client.remote_address(), table = %t.name, %reason, "a delta that does not apply to the cached table: fetching it whole");
                            since = None;
                            tried = None;
                        }
                    }
                }
                Ok(Fetched::Delta(
                    DeltaAnswer::NotModified(version) | DeltaAnswer::NoDelta(version),
                )) if since.is_some_and(|held| version < held) || t.is_behind(version) => {
                    behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("holds version {version} of the table"),
                    );
                }
                Ok(Fetched::Delta(DeltaAnswer::NotModified(version))) => {
                    return Ok(Warmed {
                        kind: WarmKind::NotModified,
                        version: since.unwrap_or(version),
                        routes: 0,
                        changed: 0,
                        evicted: 0,
                        bytes: None,
                    });
                }
                // The server cannot tell what changed since the copy: the whole table, from
                // any server (this one is not avoided: it did not fail).
                Ok(Fetched::Delta(DeltaAnswer::NoDelta(_))) => {
                    since = None;
                    tried = None;
                }
                Err(ClientError::Server(e)) if is_refusal(e.code) => {
                    self.count_refusal(&e, 1);
                    refusals.add(server.index, e);
                }
                // Shed: one other server is asked, no more.
                Err(ClientError::Server(e)) if is_overloaded(e.code) => {
                    add(&self.counters.overloaded, 1);
                    if refusals.add_overloaded(server.index, e) >= 2 {
                        break;
                    }
                }
                Err(ClientError::Server(e)) => return Err(CacheError::Server(e)),
                // Damaged, of another table, or of another kind: refused before it is used;
                // another server may send one that is not.
                Err(e @ (ClientError::Snapshot(_) | ClientError::Protocol(_))) => {
                    refuse(self, &server, &t.name, &e.to_string());
                }
                Err(_) => {}
            }
        }
        Err(self.give_up(&refusals, t))
    }

    /// Decodes a whole-table snapshot a server sent for `t`: within the snapshot limit, and
    /// of that table (another table's map would be cached as this one's).
    fn decode(&self, t: &TableState, bytes: &[u8]) -> Result<TableMap, String> {
        let map = memds_proto::snapshot::decode(bytes, self.max_snapshot_bytes)
            .map_err(|e| ClientError::Snapshot(e).to_string())?;
        if map.name() != &t.name {
            return Err(format!(
                "asked for table {:?}, the snapshot holds {:?}",
                t.name.as_str(),
                map.name().as_str()
            ));
        }
        Ok(map)
    }

    /// Caches every route of a whole table (through the staleness rules, within capacity) and
    /// makes it the table's copy.
    fn install_whole(&self, t: &TableState, map: &TableMap, source: RouteSource) -> Warmed {
        let version = map.version().get();
        t.saw_version(version);
        let compact =
            memds_proto::CompactTable::new(map, &mut memds_proto::NodeInterner::default());
        let now = self.now();
        let mut copy = t.copy();
        let (mut changed, mut evicted) = (0, 0);
        for e in compact.iter() {
            let route = Arc::new(compact.route(&e));
            if t.routes.insert_from(route, now, source) == Applied::Changed {
                changed += 1;
                evicted += self.enforce_capacity(t);
            }
        }
        *copy = WholeCopy::downloaded(version, compact.node_specs());
        drop(copy);
        if let Mode::Classic { whole_table: true } = self.mode {
            t.downloaded.store(true, Ordering::SeqCst);
        }
        t.routes.maybe_rebuild(now, true);
        Warmed {
            kind: WarmKind::Whole,
            version,
            routes: compact.len() as u64,
            changed,
            evicted,
            bytes: None,
        }
    }

    /// Applies a delta to the table's copy and cached routes: checked whole first
    /// ([`WholeCopy::delta_routes`]), then each new route inserted (replacing the routes of
    /// its range, which the new routes cover exactly). Answers why not when it does not apply.
    fn apply_delta(
        &self,
        t: &TableState,
        delta: &BatchUpdate,
        source: RouteSource,
    ) -> Result<Warmed, String> {
        let mut copy = t.copy();
        let made = copy.delta_routes(&t.name, delta)?;
        let now = self.now();
        let (mut changed, mut evicted) = (0, 0);
        for route in &made.routes {
            if t.routes.insert_from(Arc::new(route.clone()), now, source) == Applied::Changed {
                changed += 1;
                evicted += self.enforce_capacity(t);
            }
        }
        copy.advance(delta.version, made.added);
        drop(copy);
        t.saw_version(delta.version);
        t.routes.maybe_rebuild(now, true);
        Ok(Warmed {
            kind: WarmKind::Delta,
            version: delta.version,
            routes: made.routes.len() as u64,
            changed,
            evicted,
            bytes: None,
        })
    }

    /// The error of a request no server answered: overloaded if any server shed it, else the
    /// refusals if any server refused, else a timeout.
    fn give_up(&self, refusals: &Refusals, t: &TableState) -> CacheError {
        refusals
            .error(self.fleet.len(), t.newest_version())
            .unwrap_or(CacheError::Timeout(self.request_timeout, self.fleet.up()))
    }

    /// Counts `lookups` refused for `reply`'s reason (`behind` or `unavailable`).
    fn count_refusal(&self, reply: &ErrorReply, lookups: u64) {
        let counter = match reply.code {
            ErrorCode::Behind => &self.counters.behind,
            _ => &self.counters.unavailable,
        };
        add(counter, lookups);
    }

    fn job_done(&self, n: u64) {
        self.counters.finished.fetch_add(n, Ordering::SeqCst);
        if self.outstanding() == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Jobs queued or in flight: enqueued less refused less finished. `finished` is read first:
    /// every finished job was enqueued before (and its thread counted it before queueing it),
    /// so the difference never goes below zero.
    fn outstanding(&self) -> u64 {
        let c = &self.counters;
        let finished = c.finished.load(Ordering::SeqCst);
        // Refused before hits: a refusal seen implies its hit is seen (see `bump`), so the
        // difference never counts a refusal whose hit it missed.
        let refused = self.per_thread_sum(|t| &t.refused);
        let refreshes = match self.mode {
            Mode::ConstantWork => self.per_thread_sum(|t| &t.hits),
            Mode::Classic { .. } => 0,
        };
        (refreshes + c.miss_jobs.load(Ordering::SeqCst))
            .saturating_sub(refused)
            .saturating_sub(finished)
    }

    /// Evicts pseudo-random routes while the table holds more than the capacity; answers how
    /// many.
    fn enforce_capacity(&self, t: &TableState) -> u64 {
        let mut salt = self.now();
        let mut evicted = 0;
        while t.routes.len() > self.capacity {
            salt = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
            if !t.routes.evict_near(salt) {
                break;
            }
            evicted += 1;
        }
        evicted
    }
}

/// A server's answer to [`Inner::fetch_table`]'s request.
enum Fetched {
    /// To a get-delta.
    Delta(DeltaAnswer),
    /// To a get-table: the version and snapshot bytes, or not modified.
    Table(Option<(u64, Vec<u8>)>),
}

/// Classic whole-table mode: refreshes the downloaded tables every `every` until shutdown.
async fn refresh_loop(cache: RouterCache, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = cache.refresh_tables().await {
            tracing::debug!(error = %e, "refreshing a downloaded table");
        }
    }
}

/// A miss counted in `miss_jobs` that has not reached the queue: if it never does, it counts
/// as finished when dropped, so `outstanding` stays exact.
struct Unqueued<'a> {
    inner: &'a Inner,
    queued: bool,
}

impl Drop for Unqueued<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.inner.job_done(1);
        }
    }
}

/// The longest a sleeping dispatcher waits without being woken right after it had work: it
/// covers a refresh queued just as the dispatcher went to sleep (see [`Inner::counted_hit`]).
/// Each wake that finds nothing doubles it, up to [`DISPATCH_BACKSTOP_IDLE`], so an idle cache
/// wakes about ten times a second rather than two hundred.
const DISPATCH_BACKSTOP: Duration = Duration::from_millis(5);
const DISPATCH_BACKSTOP_IDLE: Duration = Duration::from_millis(100);

/// Takes queued jobs, groups them by table and sends batch frames.
async fn dispatch(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    // Most jobs taken from the miss queue, and from each thread's ring, per round.
    const MAX_TAKE: usize = 4096;
    let mut buf = Vec::with_capacity(MAX_TAKE);
    let mut backstop = DISPATCH_BACKSTOP;
    loop {
        take(&inner, &mut buf, MAX_TAKE);
        if buf.is_empty() {
            // Announce the sleep, then look once more: a miss queued before the flag was seen
            // is caught here, one queued after it notifies (and a notification sent before the
            // wait starts is kept by `Notify`); a refresh is caught by the backstop at worst.
            inner.dispatcher_asleep.store(true, Ordering::SeqCst);
            if inner.queue.is_empty() && inner.threads.iter().all(|t| t.ring.is_empty()) {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep(backstop) => {
                        backstop = (backstop * 2).min(DISPATCH_BACKSTOP_IDLE);
                    }
                }
            }
            inner.dispatcher_asleep.store(false, Ordering::SeqCst);
            continue;
        }
        backstop = DISPATCH_BACKSTOP;
        // Group by table (a stable sort keeps each table's jobs in queue order), then send each
        // group in batches of at most `max_batch`.
        buf.sort_by_key(|j| j.table);
        while !buf.is_empty() {
            let id = buf[buf.len() - 1].table;
            let first = buf.partition_point(|j| j.table < id);
            let mut jobs = buf.split_off(first);
            let table = inner.by_id(id);
            while !jobs.is_empty() {
                let rest = jobs.split_off(jobs.len().min(inner.max_batch));
                send_batch(&inner, Arc::clone(&table), jobs);
                jobs = rest;
            }
        }
        if *shutdown.borrow() {
            break;
        }
        // Let answers and callers run between takes.
        tokio::task::yield_now().await;
    }
    // Fail what is still queued.
    loop {
        take(&inner, &mut buf, usize::MAX);
        if buf.is_empty() {
            break;
        }
        for job in buf.drain(..) {
            if let Some((w, _)) = job.waiter {
                let _ = w.send(Err(CacheError::Shutdown));
            }
            inner.job_done(1);
        }
    }
}

/// Moves up to `max` jobs from the miss queue and up to `max` from each thread's ring into
/// `buf`: every ring gets its turn each round.
fn take(inner: &Inner, buf: &mut Vec<Job>, max: usize) {
    while buf.len() < max {
        match inner.queue.pop() {
            Some(job) => buf.push(job),
            None => break,
        }
    }
    for t in inner.threads.iter() {
        t.ring.pop_into(max, |table, hash| {
            buf.push(Job {
                table,
                hash,
                waiter: None,
            });
        });
    }
}

/// A batch in flight: its hashes and the misses waiting on it (shared with its hedge).
struct Batch {
    table: Arc<TableState>,
    hashes: Vec<u64>,
    /// How many of the hashes are refreshes (hits) rather than misses.
    refreshes: u64,
    /// Which of the hashes are misses (the others are refreshes): what an inserted route is
    /// recorded as coming from.
    is_miss: Vec<bool>,
    waiters: Mutex<Vec<Option<Waiter>>>,
    deadline: Instant,
    /// The servers that refused the batch (or its hedge), or shed it: none is asked again for
    /// it.
    refusals: Mutex<Refusals>,
    /// Whether the batch's hedge was sent (to a server other than the first).
    hedge_sent: AtomicBool,
}

impl Batch {
    fn pending_misses(&self) -> Vec<usize> {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .enumerate()
            .filter(|(_, w)| w.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    fn complete(&self, i: usize, result: Result<Arc<Route>, CacheError>) {
        let waiter = self.waiters.lock().unwrap_or_else(|p| p.into_inner())[i].take();
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a server's error answer to a lookup means "ask another server": it holds an older
/// version of the table than the lookup's `min_version` (`behind`), or it has not caught up
/// with its peers since it started (`unavailable`, not ready).
fn is_refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Behind | ErrorCode::Unavailable)
}

/// Whether a server's error answer means it shed the lookup (its lookup limit): ask one other
/// server at most, never the same one again.
fn is_overloaded(code: ErrorCode) -> bool {
    code == ErrorCode::Overloaded
}

/// The servers that refused one request (a batch, or a whole-table download), or shed it as
/// overloaded: none of them is asked again for it.
#[derive(Debug, Default)]
struct Refusals {
    /// Their positions in the fleet, each once: those that refused (`behind`, `unavailable`).
    servers: Vec<usize>,
    /// How many of them answered `behind` (the others answered `unavailable`).
    behind: usize,
    /// The last refusal.
    last: Option<ErrorReply>,
    /// The servers that answered `overloaded`, each once.
    overloaded: Vec<usize>,
    /// The last `overloaded` answer.
    last_overloaded: Option<ErrorReply>,
}

impl Refusals {
    fn add(&mut self, server: usize, reply: ErrorReply) {
        if !self.servers.contains(&server) {
            self.servers.push(server);
            if reply.code == ErrorCode::Behind {
                self.behind += 1;
            }
        }
        self.last = Some(reply);
    }

    /// Records an `overloaded` answer; answers how many servers have shed the request.
    fn add_overloaded(&mut self, server: usize, reply: ErrorReply) -> usize {
        if !self.overloaded.contains(&server) {
            self.overloaded.push(server);
        }
        self.last_overloaded = Some(reply);
        self.overloaded.len()
    }

    /// The servers never to ask again: those that refused and those that shed the request.
    fn shunned(&self) -> Vec<usize> {
        let mut shunned = self.servers.clone();
        shunned.extend(self.overloaded.iter().filter(|s| !self.servers.contains(s)));
        shunned
    }

    /// Whether every server of a fleet of `servers` refused or shed the request.
    fn all(&self, servers: usize) -> bool {
        self.shunned().len() >= servers
    }

    /// The servers to avoid: those that refused or shed the request, and `failed` (the server
    /// that last failed, avoided when another is up).
    fn avoiding(&self, failed: Option<usize>) -> Vec<usize> {
        let mut avoid = self.shunned();
        avoid.extend(failed);
        avoid
    }

    /// The error for a request no server answered, if any server shed or refused it: shed
    /// ([`CacheError::Overloaded`]) if any server shed it, else refused.
    fn error(&self, servers: usize, min_version: Option<u64>) -> Option<CacheError> {
        if let Some(last) = self.last_overloaded.clone() {
            return Some(CacheError::Overloaded {
                servers,
                overloaded: self.overloaded.len(),
                last,
            });
        }
        let last = self.last.clone()?;
        Some(CacheError::Refused {
            servers,
            behind: self.behind,
            unavailable: self.servers.len() - self.behind,
            min_version,
            last,
        })
    }
}

fn send_batch(inner: &Arc<Inner>, table: Arc<TableState>, jobs: Vec<Job>) {
    let mut deadline: Option<Instant> = None;
    let mut hashes = Vec::with_capacity(jobs.len());
    let mut waiters = Vec::with_capacity(jobs.len());
    for j in jobs {
        hashes.push(j.hash);
        waiters.push(j.waiter.map(|(w, d)| {
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
            w
        }));
    }
    // A batch of refreshes only has no deadline to keep: it is not retried.
    let deadline = deadline.unwrap_or_else(Instant::now);
    let is_miss: Vec<bool> = waiters.iter().map(Option::is_some).collect();
    let refreshes = is_miss.iter().filter(|&&m| !m).count() as u64;
    let batch = Arc::new(Batch {
        table,
        hashes,
        refreshes,
        is_miss,
        waiters: Mutex::new(waiters),
        deadline,
        refusals: Mutex::new(Refusals::default()),
        hedge_sent: AtomicBool::new(false),
    });
    // For `explain`: one push per batch (and one removal when it is done), never per lookup.
    batch.table.in_flight().push(Arc::downgrade(&batch));
    tokio::spawn(run_batch(Arc::clone(inner), batch));
}

/// Why the next send of a batch is a retry.
#[derive(Clone, Copy)]
enum Retry {
    /// A server refused the batch (`behind`, `unavailable`, or an outdated answer).
    Refused,
    /// A server shed the batch (`overloaded`).
    Overloaded,
}

/// Sends a batch, hedges its misses if late, applies the answer, retries misses on failure,
/// refusal or overload. A server that refused the batch (behind, not ready) or shed it
/// (overloaded) is not asked again for it; the misses fail once every connected server of the
/// fleet has refused, or at their deadline. After an `overloaded` answer the batch's refreshes
/// are dropped (counted in `refreshes_shed`) and its waiting misses are asked of one other
/// server, unhedged; a second `overloaded` answer (or none other to ask) fails them with
/// [`CacheError::Overloaded`]. A hedge already sent when the first `overloaded` answer arrives
/// is that one other server: it is waited for, and no retry is sent after it.
async fn run_batch(inner: Arc<Inner>, batch: Arc<Batch>) {
    let servers = inner.fleet.len();
    // The server that last failed (no answer, a malformed one): avoided while another is up,
    // asked again when none is.
    let mut failed: Option<usize> = None;
    let mut answered = false;
    // Whether some server refused the batch (its refreshes are then counted there, not as
    // dropped), or shed it (they are counted in `refreshes_shed`), and why the next send is a
    // retry, if it is one.
    let mut refused = false;
    let mut shed = false;
    let mut retry: Option<Retry> = None;
    loop {
        let (avoid, shunned) = {
            let r = batch.refusals();
            if r.all(servers) {
                break;
            }
            (r.avoiding(failed), r.shunned())
        };
        let Some(server) = inner
            .fleet
            .pick(&avoid)
            .or_else(|| inner.fleet.pick(&shunned))
        else {
            // No server to ask: refreshes are dropped. After a refusal or an overloaded answer
            // the misses fail now (the servers not asked are not connected, and one that comes
            // back is not ready at first); before any, they wait for a server until their
            // deadline.
            if !shunned.is_empty()
                || batch.pending_misses().is_empty()
                || Instant::now() >= batch.deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if failed == Some(server.index) {
            // The same server again (no other is up) after it failed: not in a tight loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Once a server has shed the batch, only the misses still waiting are sent: the
        // refreshes were dropped.
        let subset = shed.then(|| batch.pending_misses());
        let hashes: Vec<u64> = match &subset {
            Some(misses) if misses.is_empty() => break,
            Some(misses) => misses.iter().map(|&i| batch.hashes[i]).collect(),
            None => batch.hashes.clone(),
        };
        let n = hashes.len() as u64;
        match retry.take() {
            Some(Retry::Refused) => add(&inner.counters.retried, n),
            Some(Retry::Overloaded) => {
                add(&inner.counters.retried, n);
                add(&inner.counters.retried_overloaded, n);
            }
            None => {}
        }
        let sent = Instant::now();
        // No server is waited for longer than the request timeout, for its answer or for the
        // node list the answer needs: one that never answers must not hold the batch, and the
        // jobs `outstanding` counts, forever.
        let until = sent + inner.request_timeout;
        let (in_flight, rx) = server
            .send(
                &inner,
                batch.table.name.as_str(),
                hashes,
                batch.table.newest_version(),
            )
            .await;
        // A batch some server shed is not hedged: an overloaded fleet gets at most one extra
        // lookup per miss.
        let hedge = (subset.is_none() && !batch.pending_misses().is_empty()).then(|| {
            tokio::spawn(hedge_later(
                Arc::clone(&inner),
                Arc::clone(&batch),
                server.index,
            ))
        });
        let answer = match rx {
            Some(rx) => tokio::time::timeout_at(until.into(), rx)
                .await
                .unwrap_or(Err(ClientError::Timeout(inner.request_timeout))),
            None => Err(ClientError::Closed("not connected".into())),
        };
        drop(in_flight);
        // Shed, with a hedge already sent to another server: that hedge is the misses' one
        // other server. It is waited for (it completes the misses it is answered for, and
        // records a refusal or an `overloaded` answer), not replaced by a retry.
        let mut hedge_was_the_retry = false;
        if let Some(mut h) = hedge {
            if matches!(&answer, Ok(Response::Error(e)) if is_overloaded(e.code))
                && batch.hedge_sent.load(Ordering::Acquire)
            {
                hedge_was_the_retry = true;
                let _ = tokio::time::timeout(inner.request_timeout, &mut h).await;
            }
            h.abort();
        }
        let outcome = match answer {
            Ok(Response::Routes(routes)) => {
                inner.metrics.round_trip(sent.elapsed());
                apply(&inner, &batch, &server, routes, subset.as_deref(), until).await
            }
            Ok(Response::Error(e)) if is_refusal(e.code) => Err(Unapplied::Refused(e)),
            Ok(Response::Error(e)) if is_overloaded(e.code) => Err(Unapplied::Overloaded(e, n)),
            Ok(Response::Error(e)) => {
                for i in batch.pending_misses() {
                    batch.complete(i, Err(CacheError::Server(e.clone())));
                }
                Ok(())
            }
            Err(e) => Err(Unapplied::from(e)),
            Ok(other) => Err(Unapplied::from(ClientError::unexpected(&other))),
        };
        match outcome {
            Ok(()) => {
                answered = true;
                break;
            }
            Err(Unapplied::Malformed(reason)) => {
                refuse(&inner, &server, &batch.table.name, &reason);
                failed = Some(server.index);
            }
            Err(Unapplied::Failed) => failed = Some(server.index),
            Err(Unapplied::Refused(reply)) => {
                tracing::debug!(
                    server = %server.client.remote_address(),
                    table = %batch.table.name,
                    %reply,
                    "refused; asking another server"
                );
                inner.count_refusal(&reply, n);
                batch.refusals().add(server.index, reply);
                refused = true;
                retry = Some(Retry::Refused);
            }
            Err(Unapplied::Outdated(reason)) => {
                tracing::debug!(
                    server = %server.client.remote_address(),
                    table = %batch.table.name,
                    %reason,
                    "an outdated answer; asking another server"
                );
                add(&inner.counters.behind, n);
                failed = Some(server.index);
                refused = true;
                retry = Some(Retry::Refused);
            }
            Err(Unapplied::Overloaded(reply, lookups)) => {
                tracing::debug!(
                    server = %server.client.remote_address(),
                    table = %batch.table.name,
                    %reply,
                    "shed as overloaded; dropping the refreshes, asking one other server for the misses"
                );
                add(&inner.counters.overloaded, lookups);
                if !shed {
                    add(&inner.counters.refreshes_shed, batch.refreshes);
                    shed = true;
                }
                let shedders = batch.refusals().add_overloaded(server.index, reply);
                if hedge_was_the_retry || shedders >= 2 {
                    break;
                }
                retry = Some(Retry::Overloaded);
            }
        }
        // The server failed, lied, refused or shed: misses try another until their deadline
        // (after an overloaded answer, one other); refreshes go (their hits were answered
        // already).
        if batch.pending_misses().is_empty() || Instant::now() >= batch.deadline {
            break;
        }
    }
    if !answered && !refused && !shed {
        add(&inner.counters.dropped, batch.refreshes);
    }
    let misses = batch.pending_misses();
    if !misses.is_empty() {
        let error = inner.give_up(&batch.refusals(), &batch.table);
        for i in misses {
            batch.complete(i, Err(error.clone()));
        }
    }
    batch
        .table
        .in_flight()
        .retain(|b| b.strong_count() > 0 && !std::ptr::eq(b.as_ptr(), Arc::as_ptr(&batch)));
    inner.job_done(batch.hashes.len() as u64);
}

/// After the hedge delay, sends the still-waiting misses of a batch to another server (one that
/// has not refused or shed the batch).
async fn hedge_later(inner: Arc<Inner>, batch: Arc<Batch>, first: usize) {
    tokio::time::sleep(inner.hedge_delay).await;
    let misses = batch.pending_misses();
    if misses.is_empty() {
        return;
    }
    let avoid = batch.refusals().avoiding(Some(first));
    let Some(server) = inner.fleet.pick(&avoid) else {
        return;
    };
    // From here the hedge counts as the misses' other server (see `run_batch`).
    batch.hedge_sent.store(true, Ordering::Release);
    add(&inner.counters.hedged, misses.len() as u64);
    let hashes: Vec<u64> = misses.iter().map(|&i| batch.hashes[i]).collect();
    let until = Instant::now() + inner.request_timeout;
    let (in_flight, rx) = server
        .send(
            &inner,
            batch.table.name.as_str(),
            hashes,
            batch.table.newest_version(),
        )
        .await;
    let Some(rx) = rx else {
        return;
    };
    // No timeout of its own: `run_batch` aborts the hedge when it is done with the batch.
    let answer = rx.await;
    drop(in_flight);
    let outcome = match answer {
        Ok(Response::Routes(routes)) => {
            apply(&inner, &batch, &server, routes, Some(&misses), until).await
        }
        Ok(Response::Error(e)) if is_refusal(e.code) => Err(Unapplied::Refused(e)),
        Ok(Response::Error(e)) if is_overloaded(e.code) => {
            Err(Unapplied::Overloaded(e, misses.len() as u64))
        }
        // The first server's answer, or its retries, still completes the misses.
        Ok(Response::Error(_)) => Ok(()),
        Err(e) => Err(Unapplied::from(e)),
        Ok(other) => Err(Unapplied::from(ClientError::unexpected(&other))),
    };
    match outcome {
        Err(Unapplied::Malformed(reason)) => refuse(&inner, &server, &batch.table.name, &reason),
        // Counted; the batch does not ask this server again.
        Err(Unapplied::Refused(reply)) => {
            inner.count_refusal(&reply, misses.len() as u64);
            batch.refusals().add(server.index, reply);
        }
        Err(Unapplied::Overloaded(reply, lookups)) => {
            add(&inner.counters.overloaded, lookups);
            batch.refusals().add_overloaded(server.index, reply);
        }
        Err(Unapplied::Outdated(_)) => add(&inner.counters.behind, misses.len() as u64),
        Ok(()) | Err(Unapplied::Failed) => {}
    }
}

/// Why an answer was not applied. Either way the batch's misses go to another server, as
/// after a failed send (after `Overloaded`, to one other server at most).
enum Unapplied {
    /// The server broke the protocol: counted and logged by [`refuse`].
    Malformed(String),
    /// No answer in time, a connection lost, or no node list to resolve the answer with (the
    /// server could not send it, or the table changed in the meantime).
    Failed,
    /// The server refused the lookup: `behind` the version asked for, or `unavailable` (not
    /// ready). It is not asked again for the batch.
    Refused(ErrorReply),
    /// The answer is at an older table version than the cache has seen by now (the request
    /// left before that version was seen, or the server ignored `min_version`): counted as
    /// `behind`, and the misses are asked again.
    Outdated(String),
    /// The server shed the lookup, or the node list its answer needed, as `overloaded` (its
    /// lookup limit), costing that many lookups (the hashes of the frame, or one node-list
    /// fetch). It is not asked again for the batch.
    Overloaded(ErrorReply, u64),
}

impl From<ClientError> for Unapplied {
    fn from(e: ClientError) -> Self {
        match e {
            // An answer that did not decode, or of another kind than asked for.
            ClientError::Protocol(reason) => Self::Malformed(reason),
            // A node-list fetch the server shed.
            ClientError::Server(e) if is_overloaded(e.code) => Self::Overloaded(e, 1),
            _ => Self::Failed,
        }
    }
}

/// Counts a server answer refused as malformed, and logs it: at warn for the first refusal on
/// the server's connection, at debug after that (a lying server would otherwise log once per
/// batch; the counter keeps the rate).
fn refuse(inner: &Inner, server: &Server, table: &TableName, reason: &str) {
    add(&inner.counters.protocol_errors, 1);
    let addr = server.client.remote_address();
    if server.first_refusal() {
        tracing::warn!(server = %addr, table = %table, %reason, "refused a malformed answer and asked another server; later ones from this connection are logged at debug");
    } else {
        tracing::debug!(server = %addr, table = %table, %reason, "refused a malformed answer");
    }
}

/// Applies an answer: confirm or insert each route, complete the waiting misses. `subset` maps
/// the answer's routes to batch indexes when the answer is a hedge's; a node list it needs is
/// fetched by `until`. An answer that fails [`check_answer`] is refused whole before anything
/// of it is used, and one whose routes name nodes missing from its node list before any of its
/// routes is inserted. An answer at an older table version than the cache has seen is not
/// used at all ([`Unapplied::Outdated`]): a miss is never handed a route older than one the
/// cache could have given (and the table's staleness rules keep cached routes from moving
/// backwards besides); a newer one raises the version every later lookup asks for.
async fn apply(
    inner: &Inner,
    batch: &Batch,
    server: &Server,
    routes: Routes,
    subset: Option<&[usize]>,
    until: Instant,
) -> Result<(), Unapplied> {
    let t = &batch.table;
    let now = inner.now();
    let index_of = |k: usize| subset.map_or(k, |s| s[k]);
    let asked = subset.map_or(batch.hashes.len(), <[usize]>::len);
    let ids = check_answer(&routes, asked, |k| batch.hashes[index_of(k)])
        .map_err(Unapplied::Malformed)?;
    if let Some(newest) = t.newest_version()
        && routes.table_version < newest
    {
        return Err(Unapplied::Outdated(format!(
            "answered at version {}, older than the {newest} already seen",
            routes.table_version
        )));
    }
    t.saw_version(routes.table_version);
    let mut to_insert = Vec::new();
    for (k, r) in routes.routes.iter().enumerate() {
        match t.routes.check(routes.table_version, r, ids[k], now) {
            Check::Confirmed | Check::Stale => {
                let i = index_of(k);
                if let Some(route) = t.routes.get(batch.hashes[i]) {
                    batch.complete(i, Ok(route));
                } else {
                    to_insert.push(k);
                }
            }
            Check::Insert => to_insert.push(k),
        }
    }
    if to_insert.is_empty() {
        return Ok(());
    }
    let nodes = nodes_for(t, server, routes.nodes_digest, until).await?;
    let mut resolved = Vec::with_capacity(to_insert.len());
    for k in to_insert {
        let r = &routes.routes[k];
        let Some(route) = wire::resolve_route(&t.name, routes.table_version, r, ids[k], &nodes)
        else {
            // The list carries the answer's digest yet lacks a node the answer names: the
            // server of the answer or that of the list lied. The list is dropped so that the
            // next answer fetches it afresh rather than failing against it too.
            t.nodes
                .compare_and_swap(&nodes, Arc::new(NodeList::default()));
            return Err(Unapplied::Malformed(format!(
                "partition {} names a node missing from the node list of digest {:#018x}",
                r.partition, routes.nodes_digest
            )));
        };
        resolved.push((k, route));
    }
    let mut changed = 0;
    for (k, route) in resolved {
        let route = Arc::new(route);
        let i = index_of(k);
        let source = if batch.is_miss[i] {
            RouteSource::Miss
        } else {
            RouteSource::Refresh
        };
        if t.routes.insert_from(Arc::clone(&route), now, source) == Applied::Changed {
            changed += 1;
        }
        // A waiting miss gets the answer even if the cache kept something newer.
        let answer = t.routes.get(batch.hashes[i]).unwrap_or(route);
        batch.complete(i, Ok(answer));
    }
    add(&inner.counters.changed, changed);
    inner.enforce_capacity(t);
    t.routes.maybe_rebuild(inner.now(), false);
    Ok(())
}

/// Checks a server's answer to `asked` hashes (`hash(k)` is the k-th) before any of it is used:
/// one route per hash, in order, each holding its hash, each with 1 to 7 distinct replicas and
/// a leader among them, and replica counts that add up. Answers the replica ids of each route.
fn check_answer(
    routes: &Routes,
    asked: usize,
    hash: impl Fn(usize) -> u64,
) -> Result<Vec<&[u32]>, String> {
    if routes.routes.len() != asked {
        return Err(format!(
            "{} routes for {asked} hashes asked",
            routes.routes.len()
        ));
    }
    let ids = routes
        .replica_slices()
        .ok_or("the replica counts do not add up to the replica list")?;
    for (k, (r, ids)) in routes.routes.iter().zip(&ids).enumerate() {
        let h = hash(k);
        if !(r.start <= h && h <= r.end_inclusive) {
            return Err(format!(
                "the route of partition {} [{}, {}] does not hold hash {h}",
                r.partition, r.start, r.end_inclusive
            ));
        }
        if ids.is_empty() || ids.len() > MAX_REPLICAS || usize::from(r.leader) >= ids.len() {
            return Err(format!(
                "partition {}: leader {} of {} replicas",
                r.partition,
                r.leader,
                ids.len()
            ));
        }
        // At most 7 replicas: comparing pairs is cheaper than any set.
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|&(i, id)| ids[..i].contains(id))
        {
            return Err(format!(
                "partition {}: node {id} is replica {i} and an earlier one",
                r.partition
            ));
        }
    }
    Ok(ids)
}

/// The table's node list with the given digest, fetched from `server` if the cached one differs
/// (one fetch at a time per table), all by `until`: a server that never sends the list must not
/// hold the fetch, which every answer on the table may wait for. A list not sorted by id
/// without repeats is refused before it is stored: routes find their nodes in it by binary
/// search, which on such a list misses nodes or finds an impostor.
async fn nodes_for(
    t: &TableState,
    server: &Server,
    digest: u64,
    until: Instant,
) -> Result<Arc<NodeList>, Unapplied> {
    let current = t.nodes.load_full();
    if current.digest == digest && !current.nodes.is_empty() {
        return Ok(current);
    }
    let fetch = async {
        let _guard = t.nodes_fetch.lock().await;
        let current = t.nodes.load_full();
        if current.digest == digest && !current.nodes.is_empty() {
            return Ok(current);
        }
        let fetched = server.client.get_nodes(t.name.as_str()).await?;
        if let Some(w) = fetched.nodes.windows(2).find(|w| w[0].id >= w[1].id) {
            return Err(Unapplied::Malformed(format!(
                "node list not sorted by id without repeats: node {} before node {}",
                w[0].id, w[1].id
            )));
        }
        let fetched = Arc::new(fetched);
        t.nodes.store(Arc::clone(&fetched));
        Ok(fetched)
    };
    let nodes = tokio::time::timeout_at(until.into(), fetch)
        .await
        .unwrap_or(Err(Unapplied::Failed))?;
    // Another digest: the table changed between the answer and the list.
    if nodes.digest == digest {
        Ok(nodes)
    } else {
        Err(Unapplied::Failed)
    }
}

impl Server {
    /// Sends a batch lookup that accepts no table version older than `min_version` (the newest
    /// the cache has seen); `None` if the connection is gone. The request counts as in flight
    /// to this server while the returned guard lives.
    async fn send(
        &self,
        inner: &Inner,
        table: &str,
        hashes: Vec<u64>,
        min_version: Option<u64>,
    ) -> (InFlight, Option<PendingReply>) {
        let in_flight = self.begin();
        let count = hashes.len() as u64;
        let request = if hashes.len() == 1 {
            Request::Lookup {
                table: table.into(),
                hash: hashes[0],
                min_version,
            }
        } else {
            Request::BatchLookup {
                table: table.into(),
                hashes,
                min_version,
            }
        };
        let rx = match self.client.send(&request).await {
            Ok(rx) => {
                add(&inner.counters.lookups_sent, count);
                Some(rx)
            }
            Err(_) => None,
        };
        (in_flight, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::wire::WireRoute;

    /// An answer of one route per `(start, end, replica ids, leader)`.
    fn answer(routes: &[(u64, u64, &[u32], u8)]) -> Routes {
        let mut out = Routes::default();
        for &(start, end_inclusive, ids, leader) in routes {
            out.routes.push(WireRoute {
                partition: start,
                start,
                end_inclusive,
                epoch: 1,
                leader,
                replica_count: ids.len() as u8,
            });
            out.replicas.extend_from_slice(ids);
        }
        out
    }

    #[test]
    fn a_request_shed_or_refused_avoids_those_servers_and_says_why_it_failed() {
        let mut r = Refusals::default();
        assert!(r.error(3, None).is_none());
        r.add(0, ErrorReply::new(ErrorCode::Behind, "behind"));
        assert!(matches!(
            r.error(3, Some(7)),
            Some(CacheError::Refused {
                servers: 3,
                behind: 1,
                unavailable: 0,
                min_version: Some(7),
                ..
            })
        ));
        assert_eq!(
            r.add_overloaded(2, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            1
        );
        // The same server shedding again is counted once.
        assert_eq!(
            r.add_overloaded(2, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            1
        );
        assert_eq!(r.shunned(), vec![0, 2]);
        assert_eq!(r.avoiding(Some(1)), vec![0, 2, 1]);
        assert!(!r.all(3) && r.all(2));
        // Shed by a server: overloaded, even if another refused.
        match r.error(3, Some(7)) {
            Some(CacheError::Overloaded {
                servers: 3,
                overloaded: 1,
                last,
            }) => assert_eq!(last.code, ErrorCode::Overloaded),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.add_overloaded(1, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            2
        );
        assert!(r.all(3));
    }

    #[test]
    fn check_answer_refuses_whatever_does_not_answer_the_hashes_asked() {
        let asked = [10u64, 20];
        let hash = |k: usize| asked[k];
        let good = answer(&[(0, 15, &[1, 2, 3], 0), (16, 99, &[2], 0)]);
        assert_eq!(
            check_answer(&good, 2, hash),
            Ok(vec![&[1u32, 2, 3][..], &[2][..]])
        );
        let mut uneven = good.clone();
        uneven.replicas.pop();
        let cases = [
            (
                "a route more",
                answer(&[(0, 15, &[1], 0), (16, 99, &[2], 0), (100, 200, &[3], 0)]),
            ),
            ("a route fewer", answer(&[(0, 15, &[1], 0)])),
            ("replica counts that do not add up", uneven),
            (
                "a route that does not hold its hash",
                answer(&[(0, 15, &[1], 0), (21, 99, &[2], 0)]),
            ),
            (
                "a route that ends before it starts",
                answer(&[(0, 15, &[1], 0), (30, 5, &[2], 0)]),
            ),
            ("no replicas", answer(&[(0, 15, &[], 0), (16, 99, &[2], 0)])),
            (
                "eight replicas",
                answer(&[(0, 15, &[1, 2, 3, 4, 5, 6, 7, 8], 0), (16, 99, &[2], 0)]),
            ),
            (
                "a leader past the replicas",
                answer(&[(0, 15, &[1, 2], 2), (16, 99, &[2], 0)]),
            ),
            (
                "a replica twice",
                answer(&[(0, 15, &[1, 2, 1], 0), (16, 99, &[2], 0)]),
            ),
        ];
        for (what, routes) in cases {
            assert!(
                check_answer(&routes, 2, hash).is_err(),
                "{what} was accepted"
            );
        }
    }
}
