//! The cached routes of one table: a range-aware structure with a floor lookup, and the rules
//! that decide whether an answer from the fleet replaces what is cached. No IO and no clock:
//! the caller passes `now` in.
//!
//! Routes are kept in a `BTreeMap` by partition start under a `RwLock`: the authoritative copy,
//! which answers work in place (confirming an unchanged route is atomic bookkeeping under the
//! read lock; the write lock is taken only to insert or remove routes). Hits read a snapshot
//! instead: the cached starts in one sorted array with a radix index, published through an
//! `ArcSwap`, so a hit takes no lock at all and finds its route in a probe or two.
//!
//! Removing or replacing a route withdraws only that route's entry of the published snapshot
//! (a bit of the snapshot's `withdrawn` set, written under the write lock before it is
//! released), so a hit never returns a route the map no longer has: a hit that lands on a
//! withdrawn entry, or on none (a route inserted since the snapshot was built), is looked up in
//! the map instead. The snapshot is rebuilt off the hit path (by `maybe_rebuild`, which answers
//! and the metrics task call), at most every 50 ms, and only once the map has changed by
//! [`REBUILD_FRACTION`] of the table (at least [`REBUILD_MIN_CHANGES`] routes), or the map has
//! answered [`SLOW_HITS_FRACTION`] of the table in hits since the last rebuild (so the hits the
//! snapshot sends to the map cost no more than a rebuild), or the snapshot has lagged for
//! [`REBUILD_BEHIND_NS`]. A rebuild costs O(routes); under a steady trickle of changes (a
//! partition split now and then) it runs rarely instead of after each one.
//!
//! Staleness rules (DESIGN.md): a cached route is never replaced by an older one. For the same
//! partition id the epoch decides, and at the same epoch (a leader moved, which need not bump
//! it) the table version; for overlapping routes of different partitions the table version
//! decides. Versions are compared against the highest version that confirmed the cached route.
//!
//! Addresses: a fleet answer names replicas by node id and carries the digest of the table's
//! node list (addresses and zones). A cached route remembers the digest of the list its
//! addresses were resolved from, and an answer confirms it in place only with the same ids
//! *and* that digest: a node that came back at a new address under the same id (a restarted
//! pod) changes the digest, so the answer is resolved through the new list and inserted,
//! replacing the route if its addresses differ, under the same staleness rules. A route made
//! elsewhere (a whole table, a delta, a storage node's correction) has no digest, and an
//! answer confirms it only once resolved ([`TableRoutes::insert_answer`]).
//!
//! Bookkeeping for explanations (`RouterCache::explain`, `RouterCache::dump`): each route keeps
//! where it came from ([`RouteSource`], set when it is inserted and never changed by a
//! confirmation), the highest version that confirmed it, when the fleet last confirmed it, and
//! each invalidated partition the range it had. [`TableRoutes::describe`] and
//! [`TableRoutes::records`] read them under the read lock; the hit path never touches them.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::ArcSwapOption;
use memds_proto::Route;
use memds_proto::radix::RadixIndex;
use memds_proto::wire::WireRoute;

/// Where a cached route came from: what inserted it (or replaced what was cached before).
/// Confirmations of an unchanged route do not change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// The fleet's answer to a miss.
    Miss,
    /// The fleet's answer to a hit's refresh lookup (ConstantWork), which changed the route.
    Refresh,
    /// A storage node's corrected route (`RouterCache::apply_route`); not confirmed by the
    /// fleet until a later answer confirms it.
    Correction,
    /// `RouterCache::warm`: a whole-table snapshot or a delta asked for by the router.
    Warm,
    /// Classic whole-table mode: the table's download, or a delta of its periodic refresh.
    WholeTable,
}

/// A cached route and its bookkeeping.
#[derive(Debug)]
struct Entry {
    route: Arc<Route>,
    /// The highest table version an answer confirmed this route at.
    seen_version: AtomicU64,
    /// When the fleet last confirmed the route (caller's clock, nanoseconds); for a storage
    /// node's correction the fleet has not confirmed yet, when it was inserted.
    confirmed_at: AtomicU64,
    /// What inserted the route.
    source: RouteSource,
    /// Whether the fleet has confirmed the route: false only for a correction until an answer
    /// of the fleet confirms it.
    fleet_confirmed: AtomicBool,
    /// The digest of the node list the route's addresses were resolved from (a fleet answer's
    /// `nodes_digest`), last set by an answer that confirmed it through its list; `None` for
    /// a route made elsewhere (a whole table, a delta, a correction). Written under the
    /// write lock only.
    nodes_digest: Option<u64>,
}

impl Entry {
    fn new(route: Arc<Route>, now: u64, source: RouteSource, nodes_digest: Option<u64>) -> Self {
        Self {
            seen_version: AtomicU64::new(route.version.get()),
            route,
            confirmed_at: AtomicU64::new(now),
            source,
            fleet_confirmed: AtomicBool::new(source != RouteSource::Correction),
            nodes_digest,
        }
    }

    /// Records an answer that confirmed the route unchanged at `version`: the fleet's, or
    /// (`by_fleet` false) a storage node's correction.
    fn confirm(&self, version: u64, now: u64, by_fleet: bool) {
        self.seen_version.fetch_max(version, Ordering::Relaxed);
        // A storage node's word is not the fleet's: it raises the version (so older answers
        // stay older) but is not counted as a confirmation.
        if by_fleet {
            self.confirmed_at.fetch_max(now, Ordering::Relaxed);
            self.fleet_confirmed.store(true, Ordering::Relaxed);
        }
    }

    fn record(&self) -> RouteRecord {
        RouteRecord {
            route: Arc::clone(&self.route),
            source: self.source,
            confirmed_version: self.seen_version.load(Ordering::Relaxed),
            confirmed_at: self
                .fleet_confirmed
                .load(Ordering::Relaxed)
                .then(|| self.confirmed_at.load(Ordering::Relaxed)),
        }
    }
}

/// A cached route and its bookkeeping, as read by [`TableRoutes::describe`] and
/// [`TableRoutes::records`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRecord {
    /// The route.
    pub route: Arc<Route>,
    /// What inserted it.
    pub source: RouteSource,
    /// The highest table version that confirmed it (at first, the version it was cached at).
    pub confirmed_version: u64,
    /// When the fleet last confirmed it (the caller's clock); `None` for a storage node's
    /// correction the fleet has not confirmed yet.
    pub confirmed_at: Option<u64>,
}

/// A partition a storage node called wrong, and the range its route had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Invalidated {
    /// The partition.
    pub partition: u64,
    /// The highest epoch of it called wrong: an answer at that epoch or below is not cached.
    pub epoch: u64,
    /// The first hash of the route that was removed.
    pub start: u64,
    /// The last hash of the route that was removed.
    pub end_inclusive: u64,
}

/// What the cache holds for one hash: the route holding it, and the partition a storage node
/// called wrong there, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    /// The cached route holding the hash.
    pub route: Option<RouteRecord>,
    /// The cached route's partition if a storage node called it wrong; with no route, the
    /// invalidated partition whose removed route held the hash (the highest epoch if several).
    pub invalidated: Option<Invalidated>,
}

#[derive(Debug, Default)]
struct Routes {
    by_start: BTreeMap<u64, Entry>,
    start_of_id: HashMap<u64, u64>,
    /// Partitions a storage node called wrong, with the highest epoch it called wrong: an
    /// answer at that epoch or below (one the fleet produced before it learned of the change,
    /// arriving late) must not bring the route back, and the range of the route removed.
    /// Bounded by [`MAX_INVALIDATED`].
    invalidated: HashMap<u64, Invalidated>,
}

/// The most invalidated partitions remembered per table; past it an arbitrary one is forgotten
/// (at worst a late answer then re-caches a route a storage node will reject again).
const MAX_INVALIDATED: usize = 4096;

impl Routes {
    /// Whether a storage node called this epoch of the partition wrong.
    fn called_wrong(&self, partition: u64, epoch: u64) -> bool {
        self.invalidated
            .get(&partition)
            .is_some_and(|i| epoch <= i.epoch)
    }

    /// Removes the route at `start` as called wrong at `epoch`.
    fn remove_invalidated(&mut self, start: u64, epoch: u64) {
        let Some(e) = self.by_start.remove(&start) else {
            return;
        };
        let partition = e.route.partition.get();
        self.start_of_id.remove(&partition);
        if !self.invalidated.contains_key(&partition)
            && self.invalidated.len() >= MAX_INVALIDATED
            && let Some(&forget) = self.invalidated.keys().next()
        {
            self.invalidated.remove(&forget);
        }
        let i = self.invalidated.entry(partition).or_insert(Invalidated {
            partition,
            epoch,
            start,
            end_inclusive: e.route.end_inclusive,
        });
        i.epoch = i.epoch.max(epoch);
        (i.start, i.end_inclusive) = (start, e.route.end_inclusive);
    }
}

/// The cached routes of one table.
#[derive(Debug, Default)]
pub struct TableRoutes {
    routes: RwLock<Routes>,
    snapshot: ArcSwapOption<Snapshot>,
    /// Routes inserted, replaced or removed since the snapshot was built (written under the
    /// write lock): what the snapshot does not show. 0 when it is up to date.
    pending: AtomicUsize,
    /// Hits the map answered since the snapshot was built (the snapshot lacked the route, or
    /// its entry was withdrawn).
    slow_hits: AtomicUsize,
    /// When `maybe_rebuild` first saw the snapshot lagging (caller's clock, nanoseconds); 0
    /// while it does not lag, or no call has seen it yet.
    behind_since: AtomicU64,
    rebuilt_at: AtomicU64,
    /// Snapshots built, ever.
    rebuilds: AtomicU64,
    /// The oldest confirmation as last computed by a scan, for
    /// [`TableRoutes::oldest_confirmation_at`].
    oldest: std::sync::Mutex<OldestScan>,
}

/// The result of the last scan for the oldest confirmation.
#[derive(Debug, Default, Clone, Copy)]
struct OldestScan {
    /// When the scan ran (caller's clock); `None` before the first.
    at: Option<u64>,
    oldest: Option<u64>,
}

/// An immutable copy of the cached routes for lock-free hits.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Start and route side by side: the floor search ends on the record it returns.
    entries: Vec<(u64, Arc<Route>)>,
    index: RadixIndex,
    /// One bit per entry: set (under the map's write lock) once the map has replaced or
    /// removed the entry's route. A hit on a withdrawn entry is answered by the map.
    withdrawn: Box<[AtomicU64]>,
}

impl Snapshot {
    /// The route holding `hash`, if the snapshot has it and has not withdrawn it.
    // Always inlined: with the withdrawn check, `#[inline]` alone measured slower in
    // bench-cache (hit / quick_cache p50 1.44 against 1.34, three runs each).
    #[inline(always)]
    pub(crate) fn get(&self, hash: u64) -> Option<&Arc<Route>> {
        let i = self
            .index
            .floor_by(self.entries.len(), hash, |i| self.entries[i].0)?;
        let r = &self.entries[i].1;
        if hash > r.end_inclusive {
            return None;
        }
        // Relaxed: a hit that starts after the withdrawing write returned is ordered after it
        // (happens-before), and coherence then shows it the bit; a concurrent hit may see
        // either, as it may see the route before or after the write.
        let word = self.withdrawn[i >> 6].load(Ordering::Relaxed);
        (word >> (i & 63) & 1 == 0).then_some(r)
    }

    /// Withdraws the entry starting at `start`, if the snapshot has one.
    fn withdraw(&self, start: u64) {
        if let Some(i) = self
            .index
            .floor_by(self.entries.len(), start, |i| self.entries[i].0)
            && self.entries[i].0 == start
        {
            self.withdrawn[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
    }
}

/// The shortest time between two rebuilds of a snapshot that are not forced, in nanoseconds.
const REBUILD_INTERVAL_NS: u64 = 50_000_000;

/// A snapshot is rebuilt once the routes changed since it was built reach this fraction of the
/// table (one route in 32)...
pub const REBUILD_FRACTION: usize = 32;

/// ... or this many, whichever is more.
pub const REBUILD_MIN_CHANGES: usize = 16;

/// A lagging snapshot is also rebuilt once the map has answered this fraction of the table in
/// hits since the last rebuild (one hit per 4 routes; at least [`REBUILD_MIN_CHANGES`]): each
/// such hit costs a read lock and a tree search, so the hits sent to the map cost about what
/// the rebuild does.
pub const SLOW_HITS_FRACTION: usize = 4;

/// A snapshot lagging the map this long (nanoseconds, as seen by `maybe_rebuild`) is rebuilt
/// whatever changed: withdrawn routes are not kept alive by it forever.
pub const REBUILD_BEHIND_NS: u64 = 10_000_000_000;

/// How long [`TableRoutes::oldest_confirmation_at`] reuses a scan, in nanoseconds.
pub const OLDEST_SCAN_INTERVAL_NS: u64 = 10_000_000_000;

/// What applying an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The route was cached already, unchanged; it is now confirmed.
    Confirmed,
    /// The route was inserted or replaced older routes.
    Changed,
    /// The answer was older than what is cached, or its range is empty (start after end);
    /// nothing changed.
    Stale,
}

/// How an answer compares with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The same route is cached: confirmed in place.
    Confirmed,
    /// The cache holds something newer: the answer is ignored.
    Stale,
    /// The answer must be inserted (build the full route and call [`TableRoutes::insert`]).
    Insert,
}

impl TableRoutes {
    /// The cached route holding `hash`, if any.
    #[inline]
    pub fn get(&self, hash: u64) -> Option<Arc<Route>> {
        if let Some(snap) = &*self.snapshot.load()
            && let Some(r) = snap.get(hash)
        {
            return Some(Arc::clone(r));
        }
        self.get_slow(hash)
    }

    /// Where the hit snapshot is published, for a caller that caches its own handle on it
    /// (`arc_swap::cache::Cache`): `None` before the first rebuild and after `clear`. Entries
    /// the map replaced or removed since are withdrawn in place (`Snapshot::get` skips them).
    pub(crate) fn published(&self) -> &ArcSwapOption<Snapshot> {
        &self.snapshot
    }

    #[cold]
    fn get_slow(&self, hash: u64) -> Option<Arc<Route>> {
        let routes = self.read();
        let (_, e) = routes.by_start.range(..=hash).next_back()?;
        let found = (hash <= e.route.end_inclusive).then(|| Arc::clone(&e.route));
        if found.is_some() && self.pending.load(Ordering::Relaxed) > 0 {
            self.slow_hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Rebuilds the hit snapshot if it lags the map and the lag is worth a rebuild (see the
    /// module docs: enough routes changed, enough hits answered by the map, or lagging for
    /// [`REBUILD_BEHIND_NS`]), never twice within 50 ms. `force` rebuilds whenever the
    /// snapshot lags at all.
    pub fn maybe_rebuild(&self, now: u64, force: bool) {
        let pending = self.pending.load(Ordering::Relaxed);
        if pending == 0 {
            return;
        }
        if !force {
            // At most one rebuild per interval: after a flush every answer changes the map,
            // and rebuilding for each would cost O(routes) per answer; meanwhile hits the
            // snapshot lacks are served from the map.
            let since = now.saturating_sub(self.rebuilt_at.load(Ordering::Relaxed));
            if since < REBUILD_INTERVAL_NS {
                return;
            }
            let behind_since = match self.behind_since.load(Ordering::Relaxed) {
                0 => {
                    self.behind_since.store(now.max(1), Ordering::Relaxed);
                    now
                }
                t => t,
            };
            // Approximate (no lock): the table's size when the snapshot was built will do.
            let len = self.snapshot.load().as_ref().map_or(0, |s| s.entries.len());
            let worth = pending >= (len / REBUILD_FRACTION).max(REBUILD_MIN_CHANGES)
                || self.slow_hits.load(Ordering::Relaxed)
                    >= (len / SLOW_HITS_FRACTION).max(REBUILD_MIN_CHANGES)
                || now.saturating_sub(behind_since) >= REBUILD_BEHIND_NS;
            if !worth {
                return;
            }
        }
        let routes = self.read();
        // Under the read lock no route changes: the counts restart from this snapshot.
        self.pending.store(0, Ordering::Relaxed);
        self.slow_hits.store(0, Ordering::Relaxed);
        self.behind_since.store(0, Ordering::Relaxed);
        self.rebuilt_at.store(now, Ordering::Relaxed);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        let starts: Vec<u64> = routes.by_start.keys().copied().collect();
        // About four routes per bucket: a radix array a quarter the size stays in cache, and the
        // search inside a bucket stays within a cache line or two of entries.
        let index = RadixIndex::with_density(&starts, 4);
        let entries: Vec<(u64, Arc<Route>)> = routes
            .by_start
            .iter()
            .map(|(&s, e)| (s, Arc::clone(&e.route)))
            .collect();
        let withdrawn = (0..entries.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        // Published before the read lock is released: a writer (which withdraws entries of the
        // published snapshot) never misses this one.
        self.snapshot.store(Some(Arc::new(Snapshot {
            entries,
            index,
            withdrawn,
        })));
    }

    /// How many hit snapshots have been built.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Records a route change the snapshot does not show: `withdrawn` is the start of a route
    /// the map replaced or removed (its snapshot entry, if any, is withdrawn at once), `None`
    /// for a route inserted. Called with the write lock held.
    fn changed(&self, withdrawn: Option<u64>) {
        if let Some(start) = withdrawn
            && let Some(snap) = &*self.snapshot.load()
        {
            snap.withdraw(start);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// How many routes are cached.
    pub fn len(&self) -> usize {
        self.read().by_start.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compares a fleet answer (at table `version`, naming its replicas by id in the node list
    /// of digest `nodes_digest`) with the cache, confirming it in place when it is the cached
    /// route: the same partition, range, epoch, leader and replica ids, resolved from the same
    /// node list. The same ids in another list may be other addresses: that answer is to be
    /// resolved and inserted ([`Check::Insert`]) unless the cache holds something newer. Only
    /// the read lock is taken.
    pub fn check(
        &self,
        version: u64,
        r: &WireRoute,
        replica_ids: &[u32],
        nodes_digest: u64,
        now: u64,
    ) -> Check {
        let routes = self.read();
        if let Some(e) = routes.by_start.get(&r.start)
            && e.nodes_digest == Some(nodes_digest)
        {
            let c = &e.route;
            if c.partition.get() == r.partition
                && c.epoch.get() == r.epoch
                && c.end_inclusive == r.end_inclusive
                && c.leader == r.leader
                && c.replicas
                    .iter()
                    .map(|x| x.id.get())
                    .eq(replica_ids.iter().copied())
            {
                e.confirm(version, now, true);
                return Check::Confirmed;
            }
        }
        if routes.called_wrong(r.partition, r.epoch)
            || overlapping(&routes, r.start, r.end_inclusive)
                .any(|(_, e)| newer_than(e, version, r.partition, r.epoch))
        {
            return Check::Stale;
        }
        Check::Insert
    }

    /// Inserts a route unless something newer overlaps it; older overlapping routes are removed.
    /// A route whose start is after its end holds no hash and is not inserted. Recorded as
    /// [`RouteSource::Miss`]; see [`TableRoutes::insert_from`].
    pub fn insert(&self, route: Arc<Route>, now: u64) -> Applied {
        self.insert_from(route, now, RouteSource::Miss)
    }

    /// [`TableRoutes::insert`], recording where the route came from. A route equal to the
    /// cached one (addresses and version included) only confirms it (and keeps its source);
    /// a [`RouteSource::Correction`] does not count as the fleet's confirmation.
    pub fn insert_from(&self, route: Arc<Route>, now: u64, source: RouteSource) -> Applied {
        self.insert_entry(route, now, source, None)
    }

    /// Inserts a fleet answer resolved through the node list of digest `nodes_digest` (what
    /// follows [`Check::Insert`]), under the rules of [`TableRoutes::insert_from`], except that
    /// a cached route it resolves to the same addresses at another version is confirmed, as
    /// [`TableRoutes::check`] confirms one (it keeps its version and source), and remembers
    /// the digest, so the next answer from that list is confirmed in place. A list that
    /// changed elsewhere (another node added or moved) thus costs each route one resolve, not
    /// a replacement.
    pub fn insert_answer(
        &self,
        route: Arc<Route>,
        nodes_digest: u64,
        now: u64,
        source: RouteSource,
    ) -> Applied {
        self.insert_entry(route, now, source, Some(nodes_digest))
    }

    /// [`TableRoutes::insert_from`] and [`TableRoutes::insert_answer`]: `nodes_digest` is the
    /// node list an answer was resolved from, `None` for a route made elsewhere.
    fn insert_entry(
        &self,
        route: Arc<Route>,
        now: u64,
        source: RouteSource,
        nodes_digest: Option<u64>,
    ) -> Applied {
        let version = route.version.get();
        let (start, end) = (route.start, route.end_inclusive);
        // Routes come from outside (a storage node's correction through
        // `RouterCache::apply_route`), and the overlap search of an inverted range would panic.
        if start > end {
            return Applied::Stale;
        }
        let mut routes = self.write();
        let overlap: Vec<(u64, u64, bool)> = overlapping(&routes, start, end)
            .map(|(s, e)| {
                (
                    *s,
                    e.route.partition.get(),
                    newer_than(e, version, route.partition.get(), route.epoch.get()),
                )
            })
            .collect();
        if overlap.iter().any(|&(_, _, newer)| newer)
            || routes.called_wrong(route.partition.get(), route.epoch.get())
        {
            return Applied::Stale;
        }
        routes.invalidated.remove(&route.partition.get());
        if let Some(e) = routes.by_start.get_mut(&start) {
            // An answer's route carries the answer's version, which need not be the one the
            // cached route was first cached at (`check` confirms across versions too); any
            // other route confirms only its exact equal.
            let same = match nodes_digest {
                Some(_) => same_but_version(&e.route, &route),
                None => *e.route == *route,
            };
            if same {
                e.confirm(version, now, source != RouteSource::Correction);
                if nodes_digest.is_some() {
                    e.nodes_digest = nodes_digest;
                }
                return Applied::Confirmed;
            }
        }
        for (s, id, _) in overlap {
            self.changed(Some(s));
            routes.by_start.remove(&s);
            if routes.start_of_id.get(&id) == Some(&s) {
                routes.start_of_id.remove(&id);
            }
        }
        self.changed(None);
        routes.start_of_id.insert(route.partition.get(), start);
        routes
            .by_start
            .insert(start, Entry::new(route, now, source, nodes_digest));
        Applied::Changed
    }

    /// Removes the route holding `hash` if its epoch is at most `observed_epoch` (a storage node
    /// said the route it was sent by is wrong). Answers whether a route was removed.
    pub fn invalidate_hash(&self, hash: u64, observed_epoch: u64) -> bool {
        let mut routes = self.write();
        let Some((&start, e)) = routes.by_start.range(..=hash).next_back() else {
            return false;
        };
        if hash > e.route.end_inclusive || e.route.epoch.get() > observed_epoch {
            return false;
        }
        self.changed(Some(start));
        routes.remove_invalidated(start, observed_epoch);
        true
    }

    /// Removes the route of partition `id` if its epoch is at most `observed_epoch`.
    pub fn invalidate_partition(&self, id: u64, observed_epoch: u64) -> bool {
        let mut routes = self.write();
        let Some(&start) = routes.start_of_id.get(&id) else {
            return false;
        };
        let stale = routes
            .by_start
            .get(&start)
            .is_some_and(|e| e.route.epoch.get() <= observed_epoch);
        if stale {
            self.changed(Some(start));
            routes.remove_invalidated(start, observed_epoch);
        }
        stale
    }

    /// Removes every route. The routes are freed after the lock is released, so readers wait
    /// only for the swap, not for the freeing.
    pub fn clear(&self) {
        let taken = {
            let mut routes = self.write();
            // Every route goes: the whole snapshot is withdrawn at once.
            self.snapshot.store(None);
            self.pending.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut *routes)
        };
        drop(taken);
    }

    /// The route holding `hash` with its bookkeeping, and what a storage node called wrong
    /// there. Read lock only; the hit snapshot is not consulted.
    pub fn describe(&self, hash: u64) -> Described {
        let routes = self.read();
        let route = routes
            .by_start
            .range(..=hash)
            .next_back()
            .filter(|(_, e)| hash <= e.route.end_inclusive)
            .map(|(_, e)| e.record());
        let invalidated = match &route {
            Some(r) => routes.invalidated.get(&r.route.partition.get()).copied(),
            None => routes
                .invalidated
                .values()
                .filter(|i| i.start <= hash && hash <= i.end_inclusive)
                .max_by_key(|i| (i.epoch, i.partition))
                .copied(),
        };
        Described { route, invalidated }
    }

    /// Every cached route with its bookkeeping, in start order, and the partitions storage
    /// nodes called wrong (by partition id).
    pub fn records(&self) -> (Vec<RouteRecord>, Vec<Invalidated>) {
        let routes = self.read();
        let mut invalidated: Vec<Invalidated> = routes.invalidated.values().copied().collect();
        invalidated.sort_by_key(|i| i.partition);
        (
            routes.by_start.values().map(Entry::record).collect(),
            invalidated,
        )
    }

    /// Evicts the route whose start is the floor of `hash` (a pseudo-random victim when `hash` is
    /// random). Answers whether one was evicted.
    pub fn evict_near(&self, hash: u64) -> bool {
        let mut routes = self.write();
        let victim = routes
            .by_start
            .range(..=hash)
            .next_back()
            .or_else(|| routes.by_start.iter().next())
            .map(|(&s, e)| (s, e.route.partition.get()));
        match victim {
            Some((s, id)) => {
                self.changed(Some(s));
                routes.by_start.remove(&s);
                routes.start_of_id.remove(&id);
                true
            }
            None => false,
        }
    }

    /// The oldest confirmation time of any cached route (a scan of every route).
    pub fn oldest_confirmation(&self) -> Option<u64> {
        self.read()
            .by_start
            .values()
            .map(|e| e.confirmed_at.load(Ordering::Relaxed))
            .min()
    }

    /// [`TableRoutes::oldest_confirmation`] as of a scan at most [`OLDEST_SCAN_INTERVAL_NS`]
    /// old (`now` is the caller's clock), so a caller asking every second scans every route
    /// once in ten. Between scans routes are only confirmed again (later), inserted (confirmed
    /// when inserted, after the scan) or removed, none of which makes the oldest earlier: the
    /// answer is at most the interval earlier than a scan now would find, never later. `None`
    /// when no route is cached.
    pub fn oldest_confirmation_at(&self, now: u64) -> Option<u64> {
        let mut scan = self.oldest.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = scan
            .at
            .is_some_and(|at| now.saturating_sub(at) < OLDEST_SCAN_INTERVAL_NS);
        if fresh {
            // The table may have emptied (nothing to be old), or filled since a scan that found
            // it empty (which must not read as nothing old).
            match (scan.oldest, self.is_empty()) {
                (_, true) => return None,
                (Some(oldest), false) => return Some(oldest),
                (None, false) => {}
            }
        }
        let oldest = self.oldest_confirmation();
        *scan = OldestScan {
            at: Some(now),
            oldest,
        };
        oldest
    }

    fn read(&self) -> RwLockReadGuard<'_, Routes> {
        // A panic while holding the lock cannot leave the map half-changed in a way readers
        // could misuse (every mutation is a single map operation), so a poisoned lock is used
        // as is.
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cached routes overlapping `[start, end]`.
fn overlapping(routes: &Routes, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Entry)> {
    let before = routes
        .by_start
        .range(..start)
        .next_back()
        .filter(|(_, e)| e.route.end_inclusive >= start);
    before.into_iter().chain(
        routes
            .by_start
            .range((Bound::Included(start), Bound::Included(end))),
    )
}

/// Whether two routes are the same but for their table version: the same range, partition,
/// epoch, leader and replicas, addresses and zones included. (A full destructuring, so a field
/// added to `Route` must be placed here.)
fn same_but_version(a: &Route, b: &Route) -> bool {
    let Route {
        table,
        version: _,
        partition,
        start,
        end_inclusive,
        epoch,
        leader,
        replicas,
    } = a;
    (
        table,
        partition,
        start,
        end_inclusive,
        epoch,
        leader,
        replicas,
    ) == (
        &b.table,
        &b.partition,
        &b.start,
        &b.end_inclusive,
        &b.epoch,
        &b.leader,
        &b.replicas,
    )
}

/// Whether a cached entry is newer than an answer: by epoch for the same partition (then by
/// table version at the same epoch: a leader change need not bump the epoch, and an answer
/// from a lagging server must not undo it), by table version otherwise.
fn newer_than(e: &Entry, version: u64, partition: u64, epoch: u64) -> bool {
    let seen = e.seen_version.load(Ordering::Relaxed);
    if e.route.partition.get() == partition {
        let cached = e.route.epoch.get();
        cached > epoch || (cached == epoch && seen > version)
    } else {
        seen > version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::{Epoch, NodeId, PartitionId, RouteReplica, TableName, TableVersion};

    fn route(id: u64, start: u64, end: u64, epoch: u64, version: u64) -> Arc<Route> {
        Arc::new(Route {
            table: TableName::new("t").expect("valid"),
            version: TableVersion::new(version),
            partition: PartitionId::new(id),
            start,
            end_inclusive: end,
            epoch: Epoch::new(epoch),
            leader: 0,
            replicas: vec![RouteReplica {
                id: NodeId::new(1),
                addr: "a:1".into(),
                az: "z".into(),
            }],
        })
    }

    /// The digest of the node list the tests' answers come with.
    const NODES: u64 = 0xD1;

    fn ids(r: &Route) -> Vec<u32> {
        r.replicas.iter().map(|x| x.id.get()).collect()
    }

    /// `r` as an answer at table version `version` carries it.
    fn at_version(r: &Route, version: u64) -> Arc<Route> {
        Arc::new(Route {
            version: TableVersion::new(version),
            ..r.clone()
        })
    }

    fn wire(r: &Route) -> WireRoute {
        WireRoute {
            partition: r.partition.get(),
            start: r.start,
            end_inclusive: r.end_inclusive,
            epoch: r.epoch.get(),
            leader: r.leader,
            replica_count: r.replicas.len() as u8,
        }
    }

    #[test]
    fn floor_lookup_respects_range_ends() {
        let t = TableRoutes::default();
        t.insert(route(1, 0, 99, 1, 1), 0);
        t.insert(route(3, 200, u64::MAX, 1, 1), 0);
        assert_eq!(t.get(0).map(|r| r.partition.get()), Some(1));
        assert_eq!(t.get(99).map(|r| r.partition.get()), Some(1));
        assert!(t.get(100).is_none(), "a gap in the cache is a miss");
        assert_eq!(t.get(u64::MAX).map(|r| r.partition.get()), Some(3));
        // The same answers from the snapshot.
        t.maybe_rebuild(1, true);
        assert!(t.snapshot.load().is_some());
        assert_eq!(t.get(99).map(|r| r.partition.get()), Some(1));
        assert!(t.get(100).is_none());
        assert_eq!(t.get(u64::MAX).map(|r| r.partition.get()), Some(3));
        // Replacing a route withdraws its snapshot entry at once: no stale hit, and the other
        // routes are still hits of the snapshot.
        t.insert(route(1, 0, 99, 2, 2), 2);
        let snap = t.snapshot.load_full().expect("the snapshot stays");
        assert!(snap.get(5).is_none(), "the replaced entry is withdrawn");
        assert_eq!(snap.get(300).map(|r| r.partition.get()), Some(3));
        assert_eq!(t.get(5).map(|r| r.epoch.get()), Some(2));
    }

    /// A table of `n` routes of width 100 (partition `i` at `100 i`), snapshot built.
    fn table_of(n: u64) -> TableRoutes {
        let t = TableRoutes::default();
        for i in 0..n {
            t.insert(route(i, i * 100, i * 100 + 99, 1, 1), 0);
        }
        t.maybe_rebuild(0, true);
        t
    }

    #[test]
    fn a_replaced_route_is_never_a_hit_once_replaced() {
        let t = table_of(1000);
        let before = t.snapshot.load_full().expect("built");
        // Same start, newer epoch: the entry is withdrawn, the map answers the new route.
        assert_eq!(t.insert(route(7, 700, 799, 2, 2), 1), Applied::Changed);
        assert!(before.get(750).is_none());
        assert_eq!(t.get(750).map(|r| r.epoch.get()), Some(2));
        // A split: the parent is replaced by its left child (same start) and a new right child.
        assert_eq!(t.insert(route(1000, 850, 899, 2, 3), 1), Applied::Changed);
        assert_eq!(t.insert(route(8, 800, 849, 2, 3), 1), Applied::Changed);
        assert!(before.get(820).is_none() && before.get(870).is_none());
        assert_eq!(t.get(820).map(|r| r.partition.get()), Some(8));
        assert_eq!(t.get(870).map(|r| r.partition.get()), Some(1000));
        // A route that overlaps several: all of them are withdrawn.
        assert_eq!(t.insert(route(2000, 150, 449, 2, 4), 1), Applied::Changed);
        for h in [120, 199, 200, 350, 449, 460] {
            assert!(before.get(h).is_none(), "{h}");
        }
        assert_eq!(
            t.get(120),
            None,
            "the overlapped route 1 is gone, nothing holds 120"
        );
        assert_eq!(t.get(300).map(|r| r.partition.get()), Some(2000));
        assert_eq!(t.get(460), None, "route 4 overlapped too");
        assert_eq!(t.get(550).map(|r| r.partition.get()), Some(5));
        // Untouched routes are still answered by the snapshot, and a rebuild shows the map.
        assert_eq!(before.get(50).map(|r| r.partition.get()), Some(0));
        t.maybe_rebuild(1, true);
        let after = t.snapshot.load_full().expect("built");
        assert_eq!(after.get(870).map(|r| r.partition.get()), Some(1000));
        assert_eq!(after.get(750).map(|r| r.epoch.get()), Some(2));
    }

    #[test]
    fn a_removed_route_is_never_a_hit_once_removed() {
        let t = table_of(100);
        let snap = t.snapshot.load_full().expect("built");
        assert!(t.invalidate_hash(250, 1));
        assert!(snap.get(250).is_none() && t.get(250).is_none());
        assert!(t.invalidate_partition(5, 1));
        assert!(snap.get(550).is_none() && t.get(550).is_none());
        assert!(t.evict_near(950));
        assert!(snap.get(950).is_none() && t.get(950).is_none());
        assert_eq!(t.get(450).map(|r| r.partition.get()), Some(4));
        t.clear();
        assert!(t.snapshot.load().is_none());
        assert!(t.get(450).is_none());
        // Entries past the first word of the withdrawn set.
        let t = table_of(300);
        let snap = t.snapshot.load_full().expect("built");
        assert!(t.invalidate_partition(200, 1));
        assert!(snap.get(20_050).is_none() && t.get(20_050).is_none());
        assert_eq!(snap.get(20_150).map(|r| r.partition.get()), Some(201));
    }

    #[test]
    fn single_route_changes_rebuild_rarely() {
        let n = 10_000u64;
        let t = table_of(n);
        assert_eq!(t.rebuilds(), 1);
        let (mut now, changes) = (0u64, 1_000u64);
        for k in 0..changes {
            // A route replaced at a newer epoch, 100 ms apart, each followed by a
            // rebuild check, as an answer does.
            let i = (k * 7919) % n;
            now += 100_000_000;
            let v = 2 + k;
            assert_eq!(
                t.insert(route(i, i * 100, i * 100 + 99, 2 + k, v), now),
                Applied::Changed
            );
            t.maybe_rebuild(now, false);
            assert_eq!(t.get(i * 100 + 5).map(|r| r.epoch.get()), Some(2 + k));
        }
        // 1000 changes over 100 s: rebuilt every n/32 = 312 changes, or after 10 s lagging.
        let rebuilds = t.rebuilds() - 1;
        assert!(
            (1..=12).contains(&rebuilds),
            "{rebuilds} rebuilds for {changes} changes"
        );
        // Without the time limit (changes 1 ms apart, 50 ms of time rate-limits nothing here
        // once the count is reached): about one rebuild per n/32 changes.
        let t = table_of(n);
        let mut now = 0;
        for k in 0..changes {
            let i = (k * 7919) % n;
            now += 60_000_000;
            t.insert(route(i, i * 100, i * 100 + 99, 2 + k, 2 + k), now);
            t.maybe_rebuild(now, false);
        }
        let rebuilds = t.rebuilds() - 1;
        assert!(
            rebuilds <= changes / (n / REBUILD_FRACTION as u64) + 6,
            "{rebuilds} rebuilds for {changes} changes"
        );
        // A forced rebuild (drain) catches up whatever is left; with nothing left it does
        // nothing.
        t.maybe_rebuild(now + 1, true);
        let built = t.rebuilds();
        t.maybe_rebuild(now + REBUILD_BEHIND_NS * 2, true);
        t.maybe_rebuild(now + REBUILD_BEHIND_NS * 3, false);
        assert_eq!(t.rebuilds(), built);
    }

    #[test]
    fn hits_answered_by_the_map_bring_a_rebuild() {
        let t = table_of(1000);
        // Two changes: far below 1000 / 32 routes.
        t.insert(route(3, 300, 399, 2, 2), 1);
        t.insert(route(4, 400, 499, 2, 2), 1);
        t.maybe_rebuild(REBUILD_INTERVAL_NS, false);
        assert_eq!(t.rebuilds(), 1);
        // Hits on them go to the map; a quarter of the table's worth brings the rebuild.
        for _ in 0..1000 / SLOW_HITS_FRACTION {
            assert_eq!(t.get(350).map(|r| r.epoch.get()), Some(2));
        }
        t.maybe_rebuild(2 * REBUILD_INTERVAL_NS, false);
        assert_eq!(t.rebuilds(), 2);
        assert_eq!(
            t.snapshot
                .load_full()
                .expect("built")
                .get(450)
                .map(|r| r.epoch.get()),
            Some(2)
        );
    }

    #[test]
    fn the_oldest_confirmation_is_scanned_rarely_and_never_later_than_the_truth() {
        let t = TableRoutes::default();
        assert_eq!(t.oldest_confirmation_at(0), None);
        t.insert_answer(route(1, 0, 99, 1, 1), NODES, 5, RouteSource::Miss);
        // The last scan found nothing: a table that filled since is scanned again.
        assert_eq!(t.oldest_confirmation_at(6), Some(5));
        t.insert(route(2, 100, 199, 1, 1), 7);
        let r = route(1, 0, 99, 1, 1);
        assert_eq!(t.check(2, &wire(&r), &ids(&r), NODES, 8), Check::Confirmed);
        assert_eq!(t.oldest_confirmation(), Some(7));
        // Within the interval the last scan's answer stands (earlier than the truth).
        assert_eq!(t.oldest_confirmation_at(9), Some(5));
        assert_eq!(
            t.oldest_confirmation_at(6 + OLDEST_SCAN_INTERVAL_NS),
            Some(7)
        );
        t.clear();
        assert_eq!(t.oldest_confirmation_at(7 + OLDEST_SCAN_INTERVAL_NS), None);
    }

    #[test]
    fn a_route_with_its_start_after_its_end_is_refused_not_a_panic() {
        let t = TableRoutes::default();
        t.insert(route(1, 0, 99, 1, 1), 0);
        assert_eq!(t.insert(route(2, 500, 100, 9, 9), 1), Applied::Stale);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(50).map(|r| r.partition.get()), Some(1));
    }

    #[test]
    fn a_split_replaces_its_parent_and_an_old_answer_never_comes_back() {
        let t = TableRoutes::default();
        let parent = route(1, 0, 999, 4, 10);
        t.insert(parent.clone(), 0);
        // The split arrives: left keeps the id with a bumped epoch, right is new.
        let left = route(1, 0, 499, 5, 11);
        let right = route(2, 500, 999, 5, 11);
        assert_eq!(t.insert(right.clone(), 1), Applied::Changed);
        assert!(
            t.get(100).is_none(),
            "the parent overlapping the right child is gone"
        );
        assert_eq!(
            t.insert_answer(left.clone(), NODES, 1, RouteSource::Miss),
            Applied::Changed
        );
        assert_eq!(t.len(), 2);
        // The parent's answer arrives late: it is older and changes nothing.
        assert_eq!(
            t.check(10, &wire(&parent), &ids(&parent), NODES, 2),
            Check::Stale
        );
        assert_eq!(t.insert(parent, 2), Applied::Stale);
        assert_eq!(t.get(700).map(|r| r.partition.get()), Some(2));
        assert_eq!(t.get(100).map(|r| r.epoch.get()), Some(5));
        // The same route again only confirms.
        assert_eq!(
            t.check(12, &wire(&left), &ids(&left), NODES, 3),
            Check::Confirmed
        );
        assert_eq!(t.oldest_confirmation(), Some(1));
    }

    #[test]
    fn a_lagging_answer_with_an_older_epoch_loses_even_at_a_higher_version() {
        let t = TableRoutes::default();
        t.insert(route(7, 0, u64::MAX, 9, 5), 0);
        let lagging = route(7, 0, u64::MAX, 8, 8);
        assert_eq!(
            t.check(8, &wire(&lagging), &ids(&lagging), NODES, 1),
            Check::Stale
        );
        assert_eq!(t.insert(route(7, 0, u64::MAX, 8, 8), 1), Applied::Stale);
        assert_eq!(t.get(5).map(|r| r.epoch.get()), Some(9));
    }

    #[test]
    fn an_older_version_at_the_same_epoch_never_replaces_a_newer_route() {
        let t = TableRoutes::default();
        // Version 2 moved the leader without bumping the epoch.
        let mut v2 = route(3, 0, u64::MAX, 4, 2);
        Arc::make_mut(&mut v2).leader = 1;
        Arc::make_mut(&mut v2).replicas.push(RouteReplica {
            id: NodeId::new(2),
            addr: "b:1".into(),
            az: "z".into(),
        });
        let mut v1 = Arc::clone(&v2);
        Arc::make_mut(&mut v1).version = TableVersion::new(1);
        Arc::make_mut(&mut v1).leader = 0;
        assert_eq!(
            t.insert_answer(Arc::clone(&v2), NODES, 0, RouteSource::Miss),
            Applied::Changed
        );
        // A lagging server's answer at version 1: the same partition and epoch, the old leader.
        assert_eq!(t.check(1, &wire(&v1), &ids(&v1), NODES, 1), Check::Stale);
        assert_eq!(t.insert(Arc::clone(&v1), 1), Applied::Stale);
        assert_eq!(t.get(5).map(|r| r.leader), Some(1));
        // Once a route is confirmed at a later version, an answer between the two is older too.
        assert_eq!(
            t.check(5, &wire(&v2), &ids(&v2), NODES, 2),
            Check::Confirmed
        );
        let mut v4 = Arc::clone(&v1);
        Arc::make_mut(&mut v4).version = TableVersion::new(4);
        assert_eq!(t.insert(v4, 3), Applied::Stale);
        // A later version at the same epoch is newer, and replaces it.
        let mut v6 = Arc::clone(&v1);
        Arc::make_mut(&mut v6).version = TableVersion::new(6);
        assert_eq!(t.check(6, &wire(&v6), &ids(&v6), NODES, 4), Check::Insert);
        assert_eq!(t.insert(v6, 4), Applied::Changed);
        assert_eq!(t.get(5).map(|r| (r.leader, r.version.get())), Some((0, 6)));
    }

    #[test]
    fn a_node_that_moved_under_the_same_id_replaces_the_route_and_is_never_a_confirmation() {
        let t = TableRoutes::default();
        let old = route(3, 0, u64::MAX, 4, 10);
        assert_eq!(
            t.insert_answer(Arc::clone(&old), NODES, 0, RouteSource::Miss),
            Applied::Changed
        );
        assert_eq!(
            t.check(10, &wire(&old), &ids(&old), NODES, 1),
            Check::Confirmed
        );
        // Version 11 lists node 1 at a new address (a restarted pod): same partition, epoch,
        // leader and replica ids, another node list. Not a confirmation, at any version.
        let (moved_nodes, moved_addr) = (0xD2, "a:2");
        let mut moved = route(3, 0, u64::MAX, 4, 11);
        Arc::make_mut(&mut moved).replicas[0].addr = moved_addr.into();
        assert_eq!(
            t.check(11, &wire(&moved), &ids(&moved), moved_nodes, 2),
            Check::Insert
        );
        assert_eq!(
            t.check(10, &wire(&moved), &ids(&moved), moved_nodes, 2),
            Check::Insert
        );
        // Resolved through the new list, it replaces the route.
        assert_eq!(
            t.insert_answer(Arc::clone(&moved), moved_nodes, 2, RouteSource::Refresh),
            Applied::Changed
        );
        let cached = t.get(5).expect("cached");
        assert_eq!(
            (&*cached.replicas[0].addr, cached.version.get()),
            (moved_addr, 11)
        );
        assert_eq!(
            t.check(11, &wire(&moved), &ids(&moved), moved_nodes, 3),
            Check::Confirmed
        );
        // The old address never comes back: not by an answer of the old list at the old
        // version, nor by a storage node's correction carrying the old route.
        assert_eq!(t.check(10, &wire(&old), &ids(&old), NODES, 4), Check::Stale);
        assert_eq!(
            t.insert_answer(Arc::clone(&old), NODES, 4, RouteSource::Refresh),
            Applied::Stale
        );
        assert_eq!(
            t.insert_from(Arc::clone(&old), 4, RouteSource::Correction),
            Applied::Stale
        );
        assert_eq!(
            t.get(5).map(|r| r.replicas[0].addr.clone()),
            Some(moved_addr.into())
        );
        // A list that changed elsewhere (version 12 added a node no replica of this route is
        // on): resolved to the same addresses, the route is confirmed, keeps its version, and
        // the next answer of that list is confirmed in place.
        let elsewhere = 0xD3;
        assert_eq!(
            t.check(12, &wire(&moved), &ids(&moved), elsewhere, 5),
            Check::Insert
        );
        assert_eq!(
            t.insert_answer(at_version(&moved, 12), elsewhere, 5, RouteSource::Refresh),
            Applied::Confirmed
        );
        assert_eq!(
            t.check(12, &wire(&moved), &ids(&moved), elsewhere, 6),
            Check::Confirmed
        );
        let record = t.describe(5).route.expect("cached");
        assert_eq!(
            (
                record.route.version.get(),
                record.confirmed_version,
                record.source
            ),
            (11, 12, RouteSource::Refresh)
        );
        // A route from a whole table carries no list's digest: an answer confirms it only
        // once resolved.
        let t = TableRoutes::default();
        t.insert_from(Arc::clone(&old), 0, RouteSource::Warm);
        assert_eq!(
            t.check(10, &wire(&old), &ids(&old), NODES, 1),
            Check::Insert
        );
        assert_eq!(
            t.insert_answer(Arc::clone(&old), NODES, 1, RouteSource::Refresh),
            Applied::Confirmed
        );
        assert_eq!(
            t.check(10, &wire(&old), &ids(&old), NODES, 2),
            Check::Confirmed
        );
        assert_eq!(
            t.describe(5).route.map(|r| r.source),
            Some(RouteSource::Warm)
        );
    }

    #[test]
    fn invalidation_removes_only_routes_at_or_below_the_observed_epoch() {
        let t = TableRoutes::default();
        t.insert(route(1, 0, 99, 3, 1), 0);
        t.insert(route(2, 100, u64::MAX, 3, 1), 0);
        assert!(
            !t.invalidate_hash(50, 2),
            "the cached route is newer than what was observed"
        );
        t.maybe_rebuild(0, true);
        assert!(t.invalidate_hash(50, 3));
        assert!(
            t.get(50).is_none(),
            "an invalidated route is gone from the snapshot too"
        );
        assert!(!t.invalidate_partition(2, 1));
        assert!(t.invalidate_partition(2, 7));
        assert!(t.is_empty());
    }

    #[test]
    fn a_late_answer_does_not_bring_back_an_invalidated_route() {
        let t = TableRoutes::default();
        let r = route(4, 0, u64::MAX, 6, 10);
        t.insert(r.clone(), 0);
        assert!(t.invalidate_partition(4, 6));
        // The fleet's answer was produced before it learned of the change: same epoch.
        assert_eq!(t.check(11, &wire(&r), &ids(&r), NODES, 1), Check::Stale);
        assert_eq!(t.insert(r.clone(), 1), Applied::Stale);
        assert!(t.get(5).is_none());
        // The next epoch is the fix, and clears the memory of the invalidation.
        let fixed = route(4, 0, u64::MAX, 7, 11);
        assert_eq!(
            t.check(11, &wire(&fixed), &ids(&fixed), NODES, 2),
            Check::Insert
        );
        assert_eq!(t.insert(fixed, 2), Applied::Changed);
        assert!(t.invalidate_hash(5, 7));
        assert_eq!(t.insert(route(4, 0, u64::MAX, 7, 11), 3), Applied::Stale);
        assert_eq!(t.insert(route(4, 0, u64::MAX, 8, 12), 3), Applied::Changed);
        // Remembered invalidations are bounded.
        for id in 0..(MAX_INVALIDATED as u64 + 100) {
            t.insert(route(1000 + id, 0, u64::MAX, 1, 20 + id), 4);
            assert!(t.invalidate_partition(1000 + id, 1));
        }
        assert_eq!(t.read().invalidated.len(), MAX_INVALIDATED);
    }

    #[test]
    fn each_route_keeps_its_source_and_a_correction_is_unconfirmed_until_the_fleet_says_so() {
        let t = TableRoutes::default();
        assert_eq!(
            t.insert_from(route(1, 0, 99, 1, 1), 10, RouteSource::Warm),
            Applied::Changed
        );
        assert_eq!(
            t.insert_from(route(2, 100, 199, 1, 3), 20, RouteSource::Correction),
            Applied::Changed
        );
        let warm = t.describe(50).route.expect("cached");
        assert_eq!(
            (warm.source, warm.confirmed_version, warm.confirmed_at),
            (RouteSource::Warm, 1, Some(10))
        );
        let fix = t.describe(150).route.expect("cached");
        assert_eq!(
            (fix.source, fix.confirmed_version, fix.confirmed_at),
            (RouteSource::Correction, 3, None)
        );
        // The same correction again is not the fleet's confirmation; the fleet's answer is,
        // and neither changes the source. The correction's addresses came from no node list
        // of the fleet's: the answer confirms it only once resolved to the same addresses.
        let r = route(2, 100, 199, 1, 3);
        assert_eq!(
            t.insert_from(Arc::clone(&r), 30, RouteSource::Correction),
            Applied::Confirmed
        );
        assert_eq!(t.describe(150).route.expect("cached").confirmed_at, None);
        assert_eq!(t.check(4, &wire(&r), &ids(&r), NODES, 40), Check::Insert);
        assert_eq!(
            t.insert_answer(at_version(&r, 4), NODES, 40, RouteSource::Refresh),
            Applied::Confirmed
        );
        assert_eq!(t.check(4, &wire(&r), &ids(&r), NODES, 41), Check::Confirmed);
        let fix = t.describe(150).route.expect("cached");
        assert_eq!(
            (fix.source, fix.confirmed_version, fix.confirmed_at),
            (RouteSource::Correction, 4, Some(41))
        );
        // Called wrong: no route, and the range it had.
        assert!(t.invalidate_partition(2, 1));
        let gone = t.describe(150);
        assert_eq!(gone.route, None);
        let called_wrong = Invalidated {
            partition: 2,
            epoch: 1,
            start: 100,
            end_inclusive: 199,
        };
        assert_eq!(gone.invalidated, Some(called_wrong));
        assert_eq!(t.describe(250), Described::default());
        let (records, invalidated) = t.records();
        assert_eq!(
            records
                .iter()
                .map(|r| r.route.partition.get())
                .collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(invalidated, [called_wrong]);
    }

    #[test]
    fn eviction_removes_one_route() {
        let t = TableRoutes::default();
        for i in 0..10u64 {
            t.insert(route(i, i * 100, i * 100 + 99, 1, 1), 0);
        }
        assert!(t.evict_near(450));
        assert_eq!(t.len(), 9);
        assert!(t.get(450).is_none());
    }
}
