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
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use router_cache::{ClientTls, Mode, RouterCache, Role};
//! let tls = ClientTls::from_dir("memds-data/tls".as_ref(), Role::Router)?;
//! let cache = RouterCache::builder(vec!["127.0.0.1:7400".parse()?], tls)
//!     .mode(Mode::ConstantWork)
//!     .build()
//!     .await?;
//! let route = cache.route("orders", b"customer#42").await?;
//! println!("leader at {}", route.leader_replica().map_or("?", |r| r.addr.as_str()));
//! cache.shutdown();
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`table`]: the cached routes of one table (floor lookup, staleness rules, invalidation):
//!   pure data structure, no IO, no clock.
//! - [`cache`]: [`RouterCache`], its builder and config, the hit and miss paths, the dispatcher
//!   that batches lookups, hedging, and applying answers.
//! - `ring`: the per-thread ring a hit queues its refresh lookup on (single producer, single
//!   consumer, no locked instruction for the producer).
//! - `fleet`: one connection per server with jittered reconnects (backing off further from a
//!   server that closes connections at once); power of two choices.
//! - `whole`: Classic whole-table mode's record of a downloaded table (version, node list) and
//!   the routes a delta makes of it, checked whole before any is used: pure, no IO.
//! - `metrics`: the `memds_router_*` metrics.

pub mod cache;
mod fleet;
mod metrics;
mod ring;
pub mod table;
mod whole;

pub use cache::{Builder, CacheError, CacheStats, Config, Invalidate, Mode, RouterCache};
pub use memds_client::{ClientTls, ConnectOptions, Role};
pub use memds_proto::{Route, key_hash};
