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
//! - `fleet`: one connection per server with jittered reconnects; power of two choices.
//! - `metrics`: the `memds_router_*` metrics.

pub mod cache;
mod fleet;
mod metrics;
mod ring;
pub mod table;

pub use cache::{Builder, CacheError, CacheStats, Config, Invalidate, Mode, RouterCache};
pub use memds_client::{ClientTls, ConnectOptions, Role};
pub use memds_proto::{Route, key_hash};
