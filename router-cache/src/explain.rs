//! What the cache can say about itself without asking the fleet: why a lookup would get the
//! route it gets ([`Explanation`], from `RouterCache::explain`), every cached route of a table
//! ([`TableDump`], from `RouterCache::dump`), and what a warm did ([`Warmed`], from
//! `RouterCache::warm`). Plain data, `serde::Serialize`, so a router can print it as JSON.
//!
//! Durations are serialized as seconds (`confirmed_ago_seconds`), a float.

use std::time::Duration;

use memds_proto::Route;

use crate::cache::Mode;
use crate::table::{Invalidated, RouteSource};

/// Why the cache answers a hash the way it does, read from the cache alone (nothing is sent).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Explanation {
    /// The table asked about.
    pub table: String,
    /// The hash asked about (of the key, for `RouterCache::explain`).
    pub hash: u64,
    /// The cache's mode.
    pub mode: Mode,
    /// Whether the cache has seen the table at all (a lookup, a warm, a correction). When not,
    /// everything below is empty.
    pub table_known: bool,
    /// The newest version of the table any server has answered with: what every lookup for
    /// it asks for at least (`min_version`).
    pub newest_version: Option<u64>,
    /// The cached route holding the hash: a hit. `None`: a miss.
    pub route: Option<CachedRoute>,
    /// The cached route's `refresh_queued`; with no route, whether a lookup of this very hash
    /// (a miss) is in a batch the dispatcher has taken and not finished with. See
    /// [`CachedRoute::refresh_queued`] for exactly what is seen.
    pub refresh_queued: bool,
    /// The route's partition if a storage node called it wrong (`RouterCache::invalidate`) at
    /// an epoch no newer route has replaced; with no route, the partition called wrong whose
    /// removed route held the hash, if any (the reason for the miss).
    pub invalidated: Option<Invalidated>,
}

/// A cached route and its bookkeeping.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CachedRoute {
    /// The route a hit returns.
    pub route: Route,
    /// What put it in the cache (an unchanged route confirmed later keeps its source).
    pub source: RouteSource,
    /// How long ago an answer of the fleet last confirmed it (inserted it, or answered a
    /// lookup with the same route); `None` for a storage node's correction no answer of the
    /// fleet has confirmed yet.
    #[serde(rename = "confirmed_ago_seconds", serialize_with = "seconds")]
    pub confirmed_ago: Option<Duration>,
    /// The highest table version that confirmed it; at first the version it was cached at
    /// (for a correction, the version the storage node's route carried).
    pub confirmed_version: u64,
    /// Whether a lookup of a hash this route holds (a hit's refresh or a miss, ConstantWork or
    /// Classic) is in a batch the dispatcher has taken from the queues and not finished with:
    /// sent to a server and not answered yet, waiting for a server to send it to, or being
    /// sent again (hedge, retry after a refusal). It turns false once the batch's answer has
    /// been applied (or the batch given up). Not seen: a refresh still on the calling thread's
    /// ring, which the dispatcher takes on its next round (at once when awake; a sleeping
    /// one is woken, or wakes within its 5 ms backstop).
    pub refresh_queued: bool,
}

/// Every cached route of one table, read from the cache alone.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TableDump {
    /// The table.
    pub table: String,
    /// The cache's mode.
    pub mode: Mode,
    /// The newest version of the table any server has answered with.
    pub newest_version: Option<u64>,
    /// The digest of the node list the cache holds for resolving lookup answers (`None` before
    /// one was fetched).
    pub nodes_digest: Option<u64>,
    /// The version of the whole-table copy made by `RouterCache::warm` or by Classic
    /// whole-table mode's download and deltas (what the next warm or refresh asks a delta
    /// since); `None` if there is none (never warmed or downloaded, or cleared since).
    pub copy_version: Option<u64>,
    /// Counts over `routes` and `invalidated`.
    pub counts: DumpCounts,
    /// Every cached route, in start order.
    pub routes: Vec<CachedRoute>,
    /// The partitions storage nodes called wrong that no newer route has replaced, by id.
    pub invalidated: Vec<Invalidated>,
}

/// Counts of a [`TableDump`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DumpCounts {
    /// Routes cached.
    pub routes: u64,
    /// Of them, by source.
    pub miss: u64,
    /// Of them, from a refresh answer.
    pub refresh: u64,
    /// Of them, from a storage node's correction.
    pub correction: u64,
    /// Of them, from a warm.
    pub warm: u64,
    /// Of them, from Classic whole-table mode's download or deltas.
    pub whole_table: u64,
    /// Routes with `refresh_queued`.
    pub refresh_queued: u64,
    /// Routes the fleet has not confirmed (corrections).
    pub unconfirmed: u64,
    /// Partitions called wrong.
    pub invalidated: u64,
}

impl DumpCounts {
    pub(crate) fn count(&mut self, r: &CachedRoute) {
        self.routes += 1;
        *match r.source {
            RouteSource::Miss => &mut self.miss,
            RouteSource::Refresh => &mut self.refresh,
            RouteSource::Correction => &mut self.correction,
            RouteSource::Warm => &mut self.warm,
            RouteSource::WholeTable => &mut self.whole_table,
        } += 1;
        self.refresh_queued += u64::from(r.refresh_queued);
        self.unconfirmed += u64::from(r.confirmed_ago.is_none());
    }
}

/// What `RouterCache::warm` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warmed {
    /// How the cache was brought up to date.
    pub kind: WarmKind,
    /// The table version the cache's copy is at now.
    pub version: u64,
    /// Routes the answer carried: every partition of the table (`Whole`), the partitions of
    /// the ranges that changed (`Delta`), none (`NotModified`).
    pub routes: u64,
    /// Of them, routes that changed the cache (inserted, or replacing older ones); the others
    /// confirmed cached routes, or were older than a cached route and left out.
    pub changed: u64,
    /// Routes evicted to keep the table within the cache's capacity (pseudo-random ones,
    /// as for any insertion; the warm's own among them).
    pub evicted: u64,
    /// `Whole`: the size of the compressed snapshot received. `None` for a delta (the
    /// client does not expose its answer's size) and for `NotModified`.
    pub bytes: Option<u64>,
}

/// How a warm brought the cache up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmKind {
    /// One get-table: the whole table's snapshot.
    Whole,
    /// One get-delta since the version of the copy the cache held.
    Delta,
    /// The server held nothing newer than the cache's copy (and not older than the newest
    /// version the cache has seen): nothing to do.
    NotModified,
}

/// Serializes an optional duration as seconds.
fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
