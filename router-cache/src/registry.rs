//! The registry of tables: every table the cache has seen ([`TableState`]: its routes, node
//! list, newest version seen, whole-table copy and batches in flight), each calling thread's
//! own handles on them (the hit path: no lock, no shared load) and its refresh ring and
//! counters ([`PerThread`]).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::cache::Cache;
use arc_swap::{ArcSwap, ArcSwapOption};
use memds_proto::wire::{NodeList, WireRoute};
use memds_proto::{NodeId, Route, RouteReplica, TableName};
use rustc_hash::FxBuildHasher;

use crate::batch::Batch;
use crate::cache::{Inner, Mode};
use crate::ring::RefreshRing;
use crate::stats::bump;
use crate::table::{Snapshot, TableRoutes};
use crate::whole::WholeCopy;

/// Tables by name, with FxHash: table names are short and trusted (the router's own), and a
/// keyed or streaming hasher would cost more than the rest of a hit.
pub(crate) type Tables<T = Arc<TableState>> = HashMap<Box<str>, T, FxBuildHasher>;

/// The registry of tables.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) by_name: Tables,
    /// By id, in order of creation; queued jobs name their table by its position here.
    pub(crate) by_id: Vec<Arc<TableState>>,
}

/// What one calling thread shares with the dispatcher and the stats: its ring of refreshes and
/// its counters. Only that thread writes them, with plain stores: a hit executes no locked
/// instruction for its bookkeeping.
#[derive(Debug)]
pub(crate) struct PerThread {
    pub(crate) ring: RefreshRing,
    pub(crate) hits: AtomicU64,
    /// Refreshes that found the ring full.
    pub(crate) refused: AtomicU64,
}

impl PerThread {
    /// Counts a hit and, when the mode sends every call to the fleet (ConstantWork) and the
    /// cache is `open`, queues its refresh lookup on the ring: answers whether it did. A
    /// refresh that finds the ring full (or the cache shut) is dropped and counted
    /// (`refused`, part of [`CacheStats::dropped`](crate::CacheStats::dropped)).
    #[inline]
    pub(crate) fn hit(&self, mode: Mode, open: bool, table: u32, hash: u64) -> bool {
        bump(&self.hits);
        if !mode.refreshes_hits() {
            return false;
        }
        if open && self.ring.push(table, hash) {
            return true;
        }
        bump(&self.refused);
        false
    }
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
pub(crate) struct LocalTables {
    pub(crate) by_name: Tables<LocalTable>,
}

pub(crate) struct LocalTable {
    pub(crate) id: u32,
    pub(crate) snapshot: Cache<PublishedSnapshot, Option<Arc<Snapshot>>>,
}

/// A table's published hit snapshot, owned through the table (what a [`Cache`] watches).
pub(crate) struct PublishedSnapshot(Arc<TableState>);

impl Deref for PublishedSnapshot {
    type Target = ArcSwapOption<Snapshot>;

    fn deref(&self) -> &Self::Target {
        self.0.routes.published()
    }
}

/// A table's node list as fetched, and each of its nodes as a route names it: the routes made
/// from the list share those replicas' strings, so a cached route costs its own record and its
/// replica list, not two strings per replica.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    list: NodeList,
    /// `list.nodes[i]` as a replica.
    replicas: Vec<RouteReplica>,
}

impl Nodes {
    pub(crate) fn new(list: NodeList) -> Self {
        let replicas = list
            .nodes
            .iter()
            .map(|n| RouteReplica {
                id: NodeId::new(n.id),
                addr: n.addr.as_str().into(),
                az: n.az.as_str().into(),
            })
            .collect();
        Self { list, replicas }
    }

    /// One full route from its compact form (what `wire::resolve_route` makes, with shared
    /// strings); `None` if a replica id is not in the list.
    pub(crate) fn resolve(
        &self,
        table: &TableName,
        version: u64,
        r: &WireRoute,
        replica_ids: &[u32],
    ) -> Option<Route> {
        let replicas = replica_ids
            .iter()
            .map(|&id| {
                let i = self.list.nodes.binary_search_by_key(&id, |n| n.id).ok()?;
                self.replicas.get(i).cloned()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(r.to_route(table, version, replicas))
    }
}

impl Deref for Nodes {
    type Target = NodeList;

    fn deref(&self) -> &NodeList {
        &self.list
    }
}

/// A cached table: its routes and its node list.
#[derive(Debug)]
pub(crate) struct TableState {
    /// Position in the registry's `by_id`; queued jobs name their table by it.
    pub(crate) id: u32,
    pub(crate) name: TableName,
    pub(crate) routes: TableRoutes,
    pub(crate) nodes: ArcSwap<Nodes>,
    /// Held while fetching the node list, and while downloading, refreshing or warming the
    /// table.
    pub(crate) nodes_fetch: tokio::sync::Mutex<()>,
    pub(crate) downloaded: AtomicBool,
    /// The version and nodes the routes of the last whole-table download or warm (and the
    /// deltas since) were made from. Set with `nodes_fetch` held, and held itself while those
    /// routes are inserted, so `clear` (which resets it) never leaves a copy that claims
    /// routes the cache no longer has.
    pub(crate) whole: Mutex<WholeCopy>,
    /// One more than the newest table version a server has answered with; 0 while none has.
    pub(crate) newest_seen: AtomicU64,
    /// The batches of lookups of this table the dispatcher has sent and not finished with,
    /// for `explain` (`refresh_queued`): added when a batch is made, removed when it is done.
    /// Per batch, never per lookup, and never touched by a hit.
    pub(crate) in_flight: Mutex<Vec<Weak<Batch>>>,
}

impl TableState {
    /// The newest version of the table a server has answered with: the `min_version` of
    /// every lookup sent for the table. Never decreases.
    pub(crate) fn newest_version(&self) -> Option<u64> {
        self.newest_seen.load(Ordering::Acquire).checked_sub(1)
    }

    /// Records a version a server answered with. (Version `u64::MAX` is recorded as one less,
    /// the only version the encoding cannot tell apart.)
    pub(crate) fn saw_version(&self, version: u64) {
        self.newest_seen
            .fetch_max(version.saturating_add(1), Ordering::AcqRel);
    }

    /// Whether a server holding `version` is behind what the cache has seen.
    pub(crate) fn is_behind(&self, version: u64) -> bool {
        self.newest_version().is_some_and(|newest| version < newest)
    }

    pub(crate) fn copy(&self) -> std::sync::MutexGuard<'_, WholeCopy> {
        // Every change of the copy is one assignment; a poisoned lock holds a whole copy.
        self.whole.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn in_flight(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Batch>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hashes of the lookups in the batches in flight, sorted.
    pub(crate) fn hashes_in_flight(&self) -> Vec<u64> {
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
pub(crate) fn any_within(sorted: &[u64], start: u64, end: u64) -> bool {
    sorted
        .get(sorted.partition_point(|&h| h < start))
        .is_some_and(|&h| h <= end)
}

impl Inner {
    /// The table's state, if the cache has seen the table.
    pub(crate) fn find(&self, name: &str) -> Option<Arc<TableState>> {
        self.registry().by_name.get(name).cloned()
    }

    /// The table with this id (ids come from the registry, which never shrinks).
    pub(crate) fn by_id(&self, id: u32) -> Arc<TableState> {
        Arc::clone(&self.registry().by_id[id as usize])
    }

    /// Every table the cache has seen (a copy: no lock is held while the caller works).
    pub(crate) fn all_tables(&self) -> Vec<Arc<TableState>> {
        self.registry().by_id.clone()
    }

    pub(crate) fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // Every change to the registry is one insert into each map, done before anything can
        // panic, so a poisoned lock holds a consistent registry.
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The table's state, created on first use.
    pub(crate) fn table(&self, name: &TableName) -> Arc<TableState> {
        self.find(name.as_str())
            .unwrap_or_else(|| self.new_table(name))
    }

    #[cold]
    pub(crate) fn new_table(&self, name: &TableName) -> Arc<TableState> {
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = registry.by_name.get(name.as_str()) {
            return Arc::clone(t);
        }
        let t = Arc::new(TableState {
            id: u32::try_from(registry.by_id.len()).expect("fewer than 2^32 tables"),
            name: name.clone(),
            routes: TableRoutes::default(),
            nodes: ArcSwap::from_pointee(Nodes::default()),
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
    pub(crate) fn local_hit(&self, table: &str, hash: u64) -> Option<Arc<Route>> {
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
    pub(crate) fn remember(&self, table: &str, t: &Arc<TableState>) {
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
    pub(crate) fn hit(&self, t: &TableState, hash: u64) -> Option<Arc<Route>> {
        let route = t.routes.get(hash)?;
        self.counted_hit(t.id, hash);
        Some(route)
    }

    /// Counts a hit and, in ConstantWork mode, queues its refresh on this thread's ring.
    #[inline]
    pub(crate) fn counted_hit(&self, table: u32, hash: u64) {
        let mine = self.threads.get_or(|| self.new_thread());
        let open = !self.closed.load(Ordering::Relaxed);
        // A plain load: the ring's release store and this load may pass each other, so a
        // dispatcher going to sleep at that moment can miss this refresh; it wakes on its own
        // within its backstop (`DISPATCH_BACKSTOP`; a full barrier here would cost every hit
        // what the ring saves).
        if mine.hit(self.mode, open, table, hash) && self.dispatcher_asleep.load(Ordering::Relaxed)
        {
            self.wake_dispatcher();
        }
    }

    #[cold]
    pub(crate) fn new_thread(&self) -> PerThread {
        PerThread {
            ring: RefreshRing::new(match self.mode {
                Mode::ConstantWork => self.queue_bound,
                Mode::Classic { .. } => 1,
            }),
            hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Evicts pseudo-random routes while the table holds more than the capacity; answers how
    /// many.
    pub(crate) fn enforce_capacity(&self, t: &TableState) -> u64 {
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

impl Inner {
    /// Rebuilds every table's hit snapshot that lags its routes (`force`), or only those whose
    /// lag is worth a rebuild (`TableRoutes::maybe_rebuild`).
    pub(crate) fn refresh_snapshots(&self, force: bool) {
        let now = self.now();
        for t in self.all_tables() {
            t.routes.maybe_rebuild(now, force);
        }
    }
}
