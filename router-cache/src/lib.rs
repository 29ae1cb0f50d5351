//! # router-cache
//!
//! The route cache a request router links. Its reason to exist: the fleet's load must not depend
//! on the cache's hit rate. In ConstantWork mode (the default) every `route` call sends exactly
//! one lookup to the MemDS fleet, hit or miss: a hit answers at once from the cache and the
//! fleet's answer refreshes it later; a miss waits for that same lookup. So a flushed, cold or
//! scaled-out router fleet changes latency, not the load on MemDS. Classic mode (only misses go
//! to the fleet) is kept so experiments can show the difference.
//!
//! No router moves backwards because one server lags: every lookup carries the newest version
//! of its table the cache has seen (`min_version`); a server behind it answers `behind`, and
//! one not yet caught up with its peers answers `unavailable`. Either way the lookup's misses
//! are asked of another server of the fleet within the request timeout, and fail
//! ([`CacheError::Refused`]) only when every connected server refused; refreshes of hits are just
//! counted ([`CacheStats::behind`], [`CacheStats::unavailable`],
//! [`CacheStats::retried_elsewhere`]). A cached route is never replaced by an older one.
//!
//! Overload: a server past its lookup limit sheds lookups, answering `overloaded`. The misses
//! waiting on a shed lookup are asked of one other server (not hedged), never of the same server
//! again; if that one sheds them too, or there is no other connected server to ask, they fail
//! at once with [`CacheError::Overloaded`] (distinct from [`CacheError::Refused`]; the caller
//! may back off and try again). So an overloaded fleet gets at most one extra lookup per miss
//! from the cache, whatever its size. (A server that answers the retry `behind` or
//! `unavailable` is passed over as above.) Hits keep being answered from the cache: the
//! refreshes a server sheds are dropped, not sent again, and counted
//! ([`CacheStats::refreshes_shed`], `memds_router_refreshes_shed_total`). Every lookup answered
//! `overloaded` is counted in [`CacheStats::overloaded`] and
//! `memds_router_retries_total{reason="overloaded"}`, every miss sent again after one in
//! [`CacheStats::retried_overloaded`]. A server at its connection limit closes new connections
//! at once (`BUSY`); the cache's reconnection backoff starts over only after a connection that
//! lasted, so such a server is tried again ever less often rather than every few milliseconds.
//!
//! Warm start and explanations. [`RouterCache::warm`] fills the cache with a table's routes
//! in one request and no lookups, in any mode: the whole table's snapshot (one get-table, as
//! Classic whole-table mode downloads it), or, once the cache holds a copy from an earlier warm
//! or download, the delta since that copy (one get-delta; whole again only when the server
//! cannot tell it). The routes go through the same staleness rules as every answer, a server
//! behind the newest version the cache has seen is refused and another asked, and past
//! [`Config::capacity`] each route evicts a pseudo-random one; [`Warmed`] says what came
//! (counted in [`CacheStats::warms`] and `memds_router_warms_total{result}`).
//! [`RouterCache::explain`] (and `explain_hash`) says, from the cache alone, why a key gets the
//! route it gets: the cached route, where it came from ([`RouteSource`]: a miss, a refresh that
//! changed it, a storage node's correction, a warm, a whole-table download), how long ago and
//! at which table version the fleet last confirmed it, whether a lookup of it is in flight to
//! the fleet, what a storage node called wrong there, the newest version seen and the mode.
//! [`RouterCache::dump`] lists every cached route of a table the same way ([`TableDump`]). All
//! three are `serde::Serialize`, for a router to print as JSON. The hit path does nothing
//! more for them: sources are recorded where routes are inserted, and what is in flight is
//! recorded by the dispatcher once per batch.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use router_cache::{ClientTls, Mode, RouterCache, Role};
//! let tls = ClientTls::from_dir("memds-data/tls".as_ref(), Role::Router)?;
//! let cache = RouterCache::builder(vec!["127.0.0.1:7400".parse()?], tls)
//!     .mode(Mode::ConstantWork)
//!     .build()
//!     .await?;
//! let route = cache.route("orders", b"customer#42").await?;
//! println!("leader at {}", route.leader_replica().map_or("?", |r| &*r.addr));
//! cache.shutdown_complete().await;
//! # Ok(()) }
//! ```
//!
//! Shutdown: every handle is a guard; [`RouterCache::shutdown`], or dropping the last handle,
//! stops the cache, and [`RouterCache::shutdown_complete`] waits until every task it started
//! (dispatcher, batches and hedges, connection keepers, metrics and refresh loops) has
//! finished and its connections are closed. [`RouterCache::servers_up`] is a watch of the
//! servers connected, for whoever waits for the fleet.
//!
//! # Layout
//!
//! - [`cache`]: [`RouterCache`], the public handle: the hit and miss paths (`route*`),
//!   `invalidate`, `apply_route`, `clear`, `warm`, `explain`, `dump`, `drain`, `stats`, and
//!   shutdown (the drop guard, `shutdown_complete`, `servers_up`).
//! - `config`: [`Mode`], [`Config`] and the [`Builder`].
//! - `stats`: [`CacheStats`], [`CacheError`], and the shared counters behind them.
//! - `registry`: the tables the cache has seen (`TableState`: routes, node list, newest version
//!   seen, whole-table copy, batches in flight), each thread's own handles on them (the hit
//!   path) and each thread's refresh ring and counters.
//! - `dispatcher`: the dispatcher's decisions, sans IO: grouping queued lookups into batches
//!   and each batch's state machine (`BatchMachine`: where to send, when to hedge, what a
//!   refusal, shed or failure leads to, what completes, what is counted, the next deadline),
//!   tested with virtual time; its module docs say what stays in the shell.
//! - `batch`: the dispatcher's async shell: the dispatch task, one task per batch that makes
//!   the machine's sends and feeds back the answers, and applying an answer (checking it,
//!   fetching the node list it needs, caching its routes, completing misses).
//! - `fetch`: whole tables: Classic whole-table mode's download and refresh and
//!   [`RouterCache::warm`], one get-table or get-delta at a time.
//! - [`table`]: the cached routes of one table (floor lookup, staleness rules, invalidation,
//!   each route's source and confirmations): pure data structure, no IO, no clock.
//! - [`explain`]: what `explain`, `dump` and `warm` answer ([`Explanation`], [`TableDump`],
//!   [`Warmed`]): plain serializable data.
//! - `ring`: the per-thread ring a hit queues its refresh lookup on (single producer, single
//!   consumer, no locked instruction for the producer).
//! - `fleet`: one connection per server with jittered reconnects (backing off further from a
//!   server that closes connections at once); power of two choices; sending a batch lookup.
//! - `tasks`: the count of the cache's background tasks, which shutdown waits on.
//! - `whole`: the record of a table fetched whole (Classic whole-table mode's download, or a
//!   warm: version, node list) and the routes a delta makes of it, checked whole before any is
//!   used: pure, no IO.
//! - `metrics`: the `memds_router_*` metrics.

mod batch;
pub mod cache;
mod config;
mod dispatcher;
pub mod explain;
mod fetch;
mod fleet;
mod metrics;
mod registry;
mod ring;
mod stats;
pub mod table;
mod tasks;
mod whole;

pub use cache::{
    Builder, CacheError, CacheStats, Config, DEFAULT_REFRESH_LINGER, Invalidate, Mode, RouterCache,
};
pub use explain::{CachedRoute, DumpCounts, Explanation, TableDump, WarmKind, Warmed};
pub use memds_client::{ClientTls, ConnectOptions, Role, TransportStats};
pub use memds_proto::{Route, key_hash};
pub use table::{Invalidated, RouteSource};
