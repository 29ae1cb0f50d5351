//! The router cache's public handle, [`RouterCache`]: the hit path, the miss path, and
//! shutdown. The rules below are kept by the modules it calls: the table registry
//! (`registry`), the dispatcher's decisions (`dispatcher`) and its shell (`batch`), whole-table
//! fetches (`fetch`).
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
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use memds_client::{ClientTls, Connector, TransportStats};
use memds_proto::wire;
use memds_proto::{Route, TableName, key_hash};
use tokio::sync::{Notify, oneshot, watch};

pub use crate::config::{Builder, Config, DEFAULT_REFRESH_LINGER, Mode};
pub use crate::stats::{CacheError, CacheStats};

use crate::batch::dispatch;
use crate::dispatcher::Job;
use crate::explain::{CachedRoute, DumpCounts, Explanation, TableDump, WarmKind, Warmed};
use crate::fetch::refresh_loop;
use crate::fleet::Fleet;
use crate::registry::{LocalTables, PerThread, Registry, TableState, any_within};
use crate::stats::{Counters, add};
use crate::table::{Applied, RouteRecord, RouteSource};
use crate::tasks::Tasks;
use crate::whole::WholeCopy;

/// What a storage node said is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidate {
    /// The route holding this hash.
    Hash(u64),
    /// The route of this partition.
    Partition(u64),
}

pub(crate) struct Inner {
    pub(crate) mode: Mode,
    /// Set by `shutdown`: misses fail at once and refreshes are refused (nothing would send
    /// them).
    pub(crate) closed: AtomicBool,
    pub(crate) capacity: usize,
    /// The largest snapshot a whole-table download or warm accepts, uncompressed.
    pub(crate) max_snapshot_bytes: u64,
    pub(crate) request_timeout: Duration,
    pub(crate) hedge_delay: Duration,
    pub(crate) max_batch: usize,
    pub(crate) refresh_linger: Duration,
    /// Every table the cache has seen, by name and by id: the slow path's registry (hits use
    /// each thread's own handles). Tables are never removed.
    pub(crate) registry: RwLock<Registry>,
    /// Each thread's handles on the tables it used: the hit path.
    pub(crate) local: thread_local::ThreadLocal<RefCell<LocalTables>>,
    /// Each calling thread's refresh ring and counters.
    pub(crate) threads: thread_local::ThreadLocal<PerThread>,
    pub(crate) queue_bound: usize,
    /// Misses for the fleet: a lock-free queue bounded by `queue_bound`; the dispatcher is
    /// woken only when it sleeps.
    pub(crate) queue: MissQueue,
    pub(crate) dispatcher_asleep: AtomicBool,
    /// The dispatcher holds refreshes for `refresh_linger`: a miss wakes it, a refresh does not.
    pub(crate) dispatcher_lingering: AtomicBool,
    /// Callers of `drain` waiting: refreshes are not held meanwhile.
    pub(crate) draining: std::sync::atomic::AtomicUsize,
    pub(crate) wake: Notify,
    pub(crate) fleet: Fleet,
    pub(crate) counters: Counters,
    pub(crate) started: Instant,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) idle: tokio::sync::Notify,
    /// The labels every metric of this cache carries.
    pub(crate) metrics: crate::metrics::Labels,
    /// Every background task of the cache, counted until it ends.
    pub(crate) tasks: Tasks,
}

/// The route cache a request router links. Cheap to clone: every clone is a handle on the same
/// cache. When the last handle is dropped the cache shuts down (as [`RouterCache::shutdown`]
/// does) and its tasks and connections finish on their own; call
/// [`RouterCache::shutdown_complete`] to wait for them.
#[derive(Clone)]
pub struct RouterCache {
    pub(crate) inner: Arc<Inner>,
    /// Shared by the handles only (never by a background task): its drop, with the last handle,
    /// shuts the cache down.
    _guard: Arc<DropGuard>,
}

/// Shuts the cache down when the last [`RouterCache`] handle goes (mini-redis's `DbDropGuard`).
/// The background tasks hold the [`Inner`] state but not this guard, so they never keep the
/// cache running; they end on the shutdown signal and drop their `Inner` with them.
struct DropGuard {
    inner: Arc<Inner>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
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
            return Err(CacheError::start("no servers given", None));
        }
        crate::metrics::describe();
        let connector = Connector::new(&config.tls, config.connect.clone())
            .map_err(|e| CacheError::start("making the QUIC endpoint", Some(e)))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = Tasks::new();
        let fleet = Fleet::start(
            connector,
            &config.servers,
            config.reconnect_min,
            config.reconnect_max,
            &tasks,
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
            refresh_linger: config.refresh_linger,
            registry: RwLock::new(Registry::default()),
            local: thread_local::ThreadLocal::new(),
            threads: thread_local::ThreadLocal::new(),
            queue_bound: config.queue_bound.max(1),
            queue: MissQueue::new(config.queue_bound.max(1)),
            dispatcher_asleep: AtomicBool::new(false),
            dispatcher_lingering: AtomicBool::new(false),
            draining: std::sync::atomic::AtomicUsize::new(0),
            wake: Notify::new(),
            fleet,
            counters: Counters::default(),
            started: Instant::now(),
            shutdown,
            idle: tokio::sync::Notify::new(),
            metrics: crate::metrics::Labels::new(config.metrics_instance.as_deref()),
            tasks: tasks.clone(),
        });
        tasks.spawn(dispatch(Arc::clone(&inner), shutdown_rx.clone()));
        if let Mode::Classic { whole_table: true } = config.mode {
            tasks.spawn(refresh_loop(
                Arc::clone(&inner),
                config.table_refresh,
                shutdown_rx.clone(),
            ));
        }
        tasks.spawn(crate::metrics::publish_loop(
            Arc::clone(&inner),
            inner.metrics.clone(),
            shutdown_rx,
        ));
        let guard = Arc::new(DropGuard {
            inner: Arc::clone(&inner),
        });
        Ok(Self {
            inner,
            _guard: guard,
        })
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
        if let Some(route) = self.inner.local_hit(table, hash) {
            return Ok((route, true));
        }
        // Boxed: the miss path's future is large, and kept inline it would make every call's
        // future as large and its poll too big to inline into the caller's, a cost every hit
        // paid (bench-cache: hit p50 1.51x quick_cache's get instead of 1.40x). A miss waits
        // for a round trip to the fleet; one allocation is nothing beside it.
        Box::pin(self.route_slow(table, hash)).await
    }

    /// The rest of [`RouterCache::route_hash_traced`] once the calling thread's handle missed:
    /// the table's own structure (a thread's first call, or a snapshot that lags), then the
    /// fleet.
    #[cold]
    async fn route_slow(&self, table: &str, hash: u64) -> Result<(Arc<Route>, bool), CacheError> {
        let inner = &self.inner;
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
        self.inner.refresh_tables().await
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

    /// Waits until every queued and in-flight lookup has been answered or given up (refreshes
    /// held for `refresh_linger` are sent at once), then brings the hit snapshots up to date.
    /// After `shutdown` it returns at once.
    pub async fn drain(&self) {
        struct Draining<'a>(&'a Inner);
        impl Drop for Draining<'_> {
            fn drop(&mut self) {
                self.0.draining.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.draining.fetch_add(1, Ordering::SeqCst);
        let _draining = Draining(&self.inner);
        loop {
            // Cut a linger short (each turn: a refresh queued since may have started another).
            self.inner.wake_for_miss();
            let notified = self.inner.idle.notified();
            if self.inner.outstanding() == 0 || self.inner.closed.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
        self.refresh_snapshots();
    }

    /// Rebuilds every table's hit snapshot that lags its routes, however little. (Answers as
    /// they arrive, and the metrics task once a second, rebuild only a snapshot whose lag is
    /// worth a rebuild: enough routes changed or hits sent to the map, or lagging for 10 s;
    /// a hit never returns a route the cache replaced or removed either way.)
    pub fn refresh_snapshots(&self) {
        self.inner.refresh_snapshots(true);
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// What the transport has carried on the connections open now, summed (a connection
    /// replaced since took its counts with it: compare two readings only while the fleet's
    /// connections stay up).
    pub fn transport_stats(&self) -> TransportStats {
        self.inner.fleet.transport_stats()
    }

    /// Stops the dispatcher and the connections; returns at once (the tasks finish in the
    /// background: [`RouterCache::shutdown_complete`] waits for them). Pending misses fail with
    /// [`CacheError::Shutdown`]. Dropping the last handle does the same.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Shuts the cache down (as [`RouterCache::shutdown`]) and waits until every task it
    /// started has finished: the dispatcher, every batch and hedge in flight (their misses
    /// fail with [`CacheError::Shutdown`]), the connection keepers (their connections closed),
    /// and the metrics and table-refresh loops.
    pub async fn shutdown_complete(&self) {
        self.inner.shutdown();
        self.tasks_finished().await;
    }

    /// Resolves once every task the cache started has finished. It holds nothing that keeps
    /// the cache alive, so it can be awaited after the last handle is dropped (which shuts the
    /// cache down): `let done = cache.tasks_finished(); drop(cache); done.await;`.
    pub fn tasks_finished(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.tasks.all_finished()
    }

    /// The number of servers connected, as it changes: `wait_for(|&up| up >= n)` on it waits
    /// for the fleet (as [`CacheStats::servers_up`] polled would, without polling).
    pub fn servers_up(&self) -> watch::Receiver<usize> {
        self.inner.fleet.watch_up()
    }
}

impl Inner {
    /// Signals shutdown: misses fail, the tasks end, the connections close.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        self.fleet.close();
    }

    pub(crate) fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A route's bookkeeping as explained, given the sorted hashes in flight and `now`.
    pub(crate) fn cached_route(&self, r: RouteRecord, in_flight: &[u64], now: u64) -> CachedRoute {
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

    pub(crate) async fn miss(
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
            self.wake_for_miss();
            rx.await.unwrap_or(Err(CacheError::Shutdown))
        };
        match tokio::time::timeout(self.request_timeout, waited).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.request_timeout, self.fleet.up())),
        }
    }
}

/// The shared queue of misses: lock-free, bounded, and holding memory for what it holds only
/// (blocks of 31 jobs, allocated as it fills and freed as it empties), not for its bound: a
/// cache that misses rarely, as most do once warm, keeps no preallocated array of `queue_bound`
/// jobs.
pub(crate) struct MissQueue {
    jobs: SegQueue<Job>,
    /// Jobs pushed and not yet popped (a push reserves its place here first).
    len: AtomicUsize,
    bound: usize,
}

impl MissQueue {
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            jobs: SegQueue::new(),
            len: AtomicUsize::new(0),
            bound,
        }
    }

    /// Queues a job; gives it back if the queue holds `bound` jobs already.
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(job);
        }
        // A sequentially consistent compare-and-swap inside: the dispatcher, which announces
        // its sleep and then checks `is_empty`, either sees this job or is seen asleep.
        self.jobs.push(job);
        Ok(())
    }

    pub(crate) fn pop(&self) -> Option<Job> {
        let job = self.jobs.pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(job)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// A miss counted in `miss_jobs` that has not reached the queue: if it never does, it counts
/// as finished when dropped, so `outstanding` stays exact.
pub(crate) struct Unqueued<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) queued: bool,
}

impl Drop for Unqueued<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.inner.job_done(1);
        }
    }
}
