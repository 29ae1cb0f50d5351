//! What the cache counts and how it fails: [`CacheStats`] (the public snapshot of the counters),
//! [`CacheError`], and the shared and per-thread counters behind them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memds_client::ClientError;
use memds_proto::MapError;
use memds_proto::wire::{ErrorCode, ErrorReply};

use crate::cache::{Inner, Mode};
use crate::registry::PerThread;

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
    /// The cache could not start: no servers given, or no QUIC endpoint (bad TLS material, no
    /// socket). The cause, when there is one, is the error's
    /// [`source`](std::error::Error::source):
    ///
    /// ```
    /// use std::error::Error;
    /// use std::sync::Arc;
    /// use memds_client::ClientError;
    /// use router_cache::CacheError;
    ///
    /// let cause = ClientError::Protocol("no endpoint".into());
    /// let err = CacheError::Start {
    ///     what: "making the QUIC endpoint".into(),
    ///     source: Some(Arc::new(cause)),
    /// };
    /// let source = err.source().expect("a cause");
    /// assert_eq!(source.to_string(), ClientError::Protocol("no endpoint".into()).to_string());
    /// assert!(source.downcast_ref::<Arc<ClientError>>().is_some());
    /// assert_eq!(err.clone().to_string(), "starting the cache: making the QUIC endpoint");
    /// ```
    #[error("starting the cache: {what}")]
    Start {
        /// What was being done.
        what: String,
        /// Why it failed (the endpoint's error), shared so the error stays `Clone`; it is the
        /// error's `source` (an `Arc<ClientError>` to downcast to).
        #[source]
        source: Option<Arc<ClientError>>,
    },
    /// The cache was shut down.
    #[error("the cache is shut down")]
    Shutdown,
    /// The name cannot name a table (empty, or longer than a table name may be): nothing was
    /// sent to the fleet and nothing was cached.
    #[error("invalid table name: {0}")]
    InvalidTable(MapError),
}

impl CacheError {
    /// A failure to start, with its cause.
    pub(crate) fn start(what: &str, source: Option<ClientError>) -> Self {
        Self::Start {
            what: what.to_owned(),
            source: source.map(Arc::new),
        }
    }
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
    /// Each table's routes are scanned for it at most every 10 s (the scan visits every route);
    /// in between the figure comes from the last scan, so it may overstate the age by up to
    /// 10 s (routes confirmed since the scan), never understate it.
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
pub(crate) struct Counters {
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) lookups_sent: AtomicU64,
    pub(crate) hedged: AtomicU64,
    pub(crate) changed: AtomicU64,
    /// Refreshes dropped after they were queued (no server to send them to).
    pub(crate) dropped: AtomicU64,
    /// Server answers refused as malformed.
    pub(crate) protocol_errors: AtomicU64,
    /// Lookups refused as behind (or answered at an older version than seen).
    pub(crate) behind: AtomicU64,
    /// Lookups refused as unavailable (server not ready).
    pub(crate) unavailable: AtomicU64,
    /// Lookups sent again after a refusal (overloaded included).
    pub(crate) retried: AtomicU64,
    /// Lookups answered overloaded.
    pub(crate) overloaded: AtomicU64,
    /// Lookups sent again after an overloaded answer.
    pub(crate) retried_overloaded: AtomicU64,
    /// Refreshes in frames answered overloaded.
    pub(crate) refreshes_shed: AtomicU64,
    /// Misses queued.
    pub(crate) miss_jobs: AtomicU64,
    /// Jobs taken off the queue and finished.
    pub(crate) finished: AtomicU64,
    /// Whole tables downloaded.
    pub(crate) table_downloads: AtomicU64,
    /// Whole-table refreshes done by a delta.
    pub(crate) table_deltas: AtomicU64,
    /// Warms by kind, failed warms, and the routes warms changed.
    pub(crate) warms_whole: AtomicU64,
    pub(crate) warm_deltas: AtomicU64,
    pub(crate) warms_not_modified: AtomicU64,
    pub(crate) warm_failures: AtomicU64,
    pub(crate) warm_routes: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter only the calling thread writes. Release: a reader that sees a
/// thread's `refused` (read with Acquire) also sees the `hits` that thread counted before it.
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Release);
}

impl Inner {
    /// Counts `lookups` refused for `reply`'s reason (`behind` or `unavailable`).
    pub(crate) fn count_refusal(&self, reply: &ErrorReply, lookups: u64) {
        let counter = match reply.code {
            ErrorCode::Behind => &self.counters.behind,
            _ => &self.counters.unavailable,
        };
        add(counter, lookups);
    }

    pub(crate) fn job_done(&self, n: u64) {
        self.counters.finished.fetch_add(n, Ordering::SeqCst);
        if self.outstanding() == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Jobs queued or in flight: enqueued less refused less finished. `finished` is read first:
    /// every finished job was enqueued before (and its thread counted it before queueing it),
    /// so the difference never goes below zero.
    pub(crate) fn outstanding(&self) -> u64 {
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

    /// A per-thread counter summed over the threads.
    pub(crate) fn per_thread_sum(&self, counter: impl Fn(&PerThread) -> &AtomicU64) -> u64 {
        self.threads
            .iter()
            .map(|t| counter(t).load(Ordering::Acquire))
            .sum()
    }
}

impl Inner {
    /// The counters (see [`RouterCache::stats`](crate::RouterCache::stats)).
    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let now = self.now();
        let tables = self.all_tables();
        let entries = tables.iter().map(|t| t.routes.len() as u64).sum();
        let oldest = tables
            .iter()
            .filter_map(|t| t.routes.oldest_confirmation_at(now))
            .min();
        // Read once each: the published `warms_total{result="whole"}` is the total less the
        // others, and must never go down.
        let warms_whole = c.warms_whole.load(Ordering::Relaxed);
        let warm_deltas = c.warm_deltas.load(Ordering::Relaxed);
        let warms_not_modified = c.warms_not_modified.load(Ordering::Relaxed);
        CacheStats {
            hits: self.per_thread_sum(|t| &t.hits),
            misses: c.misses.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            lookups_sent: c.lookups_sent.load(Ordering::Relaxed),
            hedged: c.hedged.load(Ordering::Relaxed),
            refreshes_changed: c.changed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed) + self.per_thread_sum(|t| &t.refused),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            behind: c.behind.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            retried_elsewhere: c.retried.load(Ordering::Relaxed),
            refreshes_shed: c.refreshes_shed.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            retried_overloaded: c.retried_overloaded.load(Ordering::Relaxed),
            queue_depth: self.outstanding(),
            entries,
            servers_up: self.fleet.up() as u64,
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
}
