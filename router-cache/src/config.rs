//! Configuration: the cache's [`Mode`], its [`Config`] and the [`Builder`] that starts one.

use std::net::SocketAddr;
use std::time::Duration;

use memds_client::{ClientTls, ConnectOptions};
use memds_proto::wire;

use crate::cache::RouterCache;
use crate::stats::CacheError;

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

impl Mode {
    /// Whether a hit also sends a lookup to the fleet (its refresh): ConstantWork.
    pub(crate) fn refreshes_hits(self) -> bool {
        self == Mode::ConstantWork
    }
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
    /// Most lookups queued for the fleet per calling thread (rounded up to a power of two;
    /// 4096 by default, what the dispatcher takes from each thread in one round): each thread
    /// that calls the cache queues its refreshes on a ring of its own, so a hit's enqueue
    /// shares no cache line with other threads; past the bound that thread's refreshes are
    /// dropped (and counted). Misses wait for room in one shared queue of the same bound
    /// (within their timeout). Memory: 16 bytes per slot per calling thread (64 KiB by
    /// default), allocated with the thread's first hit; the shared queue of misses takes
    /// memory only for the misses it holds.
    pub queue_bound: usize,
    /// How long a miss waits for the fleet before failing.
    pub request_timeout: Duration,
    /// How long a miss waits before it is also sent to a second server.
    pub hedge_delay: Duration,
    /// Most hashes per batch frame.
    pub max_batch: usize,
    /// How long the dispatcher may hold refreshes (a hit's lookup sent to the fleet) to send
    /// them together: until this long after the first was taken, until a frame's worth
    /// (`max_batch`) waits, or until a miss comes, which goes at once and carries them with it.
    /// A refresh is not latency-critical: the fleet still gets one lookup per call, in fewer
    /// frames and packets, and a refreshed route is at most this much older. Zero sends each
    /// round's refreshes at once; above QUIC's acknowledgement delay (25 ms) each frame also
    /// costs an acknowledgement of its own. [`DEFAULT_REFRESH_LINGER`] by default.
    pub refresh_linger: Duration,
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

/// The default [`Config::refresh_linger`]: 20 ms, measured with `loadgen bench-cost` (README,
/// "What constant work costs per request"). On a lightly loaded server a lookup costs what the
/// wake-ups it causes cost, so refreshes sharing frames is what lowers it; 20 ms is the longest
/// linger under QUIC's default acknowledgement delay (25 ms), so a router's next frame still
/// carries its acknowledgement of the last answer (a longer one adds a datagram per frame). A
/// route is confirmed each time it is hit, so its age is mostly the time since its last hit (4
/// s on average in the benchmark at 250 requests per second over 1,000 keys), to which the
/// linger adds at most itself.
pub const DEFAULT_REFRESH_LINGER: Duration = Duration::from_millis(20);

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
            queue_bound: 1 << 12,
            request_timeout: Duration::from_secs(2),
            hedge_delay: Duration::from_millis(50),
            max_batch: 1024,
            refresh_linger: DEFAULT_REFRESH_LINGER,
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
    pub(crate) config: Config,
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
    /// Sets how long refreshes may wait to share a frame ([`Config::refresh_linger`]); zero
    /// sends them at once.
    pub fn refresh_linger(mut self, linger: Duration) -> Self {
        self.config.refresh_linger = linger;
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
    /// allocated for it, counted in [`CacheStats::protocol_errors`](crate::CacheStats::protocol_errors), and asked of another
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
