//! The authority: owns the run's map, changes it (background churn, the invalidation storm) by
//! splitting partitions, and pushes each change to one server through the fleet's [`Pusher`];
//! it also plays the storage nodes' check of a route against the current map.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use memds_proto::model::{PartitionSpec, TableSpec};
use memds_proto::wire::{PartitionUpdate, WirePartition};
use memds_proto::{TableMap, key_hash};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;

use super::Args;
use super::fleet::{Change, Pusher};

/// The authority: owns the current map and pushes each change to one server (see [`Pusher`]).
pub(super) struct Authority {
    /// The current map, and the one before it: during a change the storage nodes accept both,
    /// as real ones do while the change propagates.
    map: RwLock<(Arc<TableMap>, Arc<TableMap>)>,
    next_id: Mutex<u64>,
    /// One change at a time: a change is read, pushed and made current as one step, so the
    /// fleet and the authority never diverge by more than the change being replicated.
    changing: tokio::sync::Mutex<()>,
}

impl Authority {
    /// An authority whose current (and previous) map is `map`.
    pub(super) fn new(map: TableMap) -> Self {
        let max_id = map
            .partitions()
            .iter()
            .map(|p| p.id.get())
            .max()
            .unwrap_or(0);
        let map = Arc::new(map);
        Self {
            map: RwLock::new((Arc::clone(&map), map)),
            next_id: Mutex::new(max_id + 1),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// Holds off every other change until the guard is dropped.
    pub(super) async fn begin_change(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    pub(super) fn current(&self) -> Arc<TableMap> {
        Arc::clone(&self.map.read().unwrap_or_else(|p| p.into_inner()).0)
    }

    fn set(&self, next: TableMap) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut m.0, Arc::new(next));
        m.1 = previous;
    }

    /// A storage node's check of a request for `hash` sent by `route`: `Ok` if it accepts it,
    /// or the route it would send back with its rejection, the current map's route for `hash`
    /// (as DynamoDB's storage nodes and TiKV's `EpochNotMatch` answer a stale route).
    pub(super) fn check(
        &self,
        hash: u64,
        route: &memds_proto::Route,
    ) -> Result<(), memds_proto::Route> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        let accepted = [&m.0, &m.1].iter().any(|map| {
            let owner = &map.partitions()[map.floor_index(hash)];
            owner.id == route.partition && owner.epoch == route.epoch
        });
        if accepted {
            Ok(())
        } else {
            Err(m.0.route(hash))
        }
    }

    /// Splits the given partitions (by index) at their midpoints: the new map, or `None` if
    /// nothing could be split.
    pub(super) fn split(&self, map: &TableMap, indexes: &[usize]) -> Option<TableMap> {
        let mut spec = TableSpec::from(map);
        let mut next_id = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = Vec::new();
        for &i in indexes {
            let end = map.end_inclusive(i);
            let p = &mut spec.partitions[i];
            if end - p.start < 2 {
                continue;
            }
            let mid = p.start + (end - p.start) / 2;
            p.epoch += 1;
            added.push(PartitionSpec {
                id: *next_id,
                start: mid,
                epoch: p.epoch,
                replicas: p.replicas.clone(),
                leader: p.leader,
            });
            *next_id += 1;
        }
        if added.is_empty() {
            return None;
        }
        spec.partitions.extend(added);
        spec.partitions.sort_by_key(|p| p.start);
        spec.version += 1;
        TableMap::try_from(spec).ok()
    }

    /// Pushes a new map (whole, or as `update`) to one server, then makes it current; a change
    /// no server took is abandoned.
    pub(super) async fn publish(
        &self,
        pusher: &Pusher,
        next: TableMap,
        update: Option<&PartitionUpdate>,
    ) {
        let change = match update {
            Some(u) => Change::Update(u),
            None => Change::Put(&next),
        };
        if pusher.push(change).await.is_some() {
            self.set(next);
        }
    }
}

/// Background churn until `end`: the authority splits hot partitions (it reshapes partitioning
/// by traffic, so the partition split is the one holding a key drawn like the requests' keys),
/// `--churn` per second.
pub(super) fn spawn_churn(
    authority: Arc<Authority>,
    pusher: Arc<Pusher>,
    table: Arc<str>,
    args: &Args,
    end: Instant,
) -> tokio::task::JoinHandle<()> {
    let (rate, keys, zipf, seed) = (args.churn, args.keys, args.zipf, args.seed);
    tokio::spawn(async move {
        if rate <= 0.0 {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC4);
        let dist = rand_distr::Zipf::new(keys as f64, zipf).expect("validated parameters");
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.tick().await;
        // Ends with the load: the last change is pushed and made current (or abandoned)
        // before the task returns, so the authority's version at the end is final.
        while tokio::time::timeout_at(end.into(), tick.tick())
            .await
            .is_ok()
        {
            let _change = authority.begin_change().await;
            let current = authority.current();
            let rank = dist.sample(&mut rng) as u64;
            let i = current.floor_index(key_hash(format!("key-{rank}").as_bytes()));
            let Some(next) = authority.split(&current, &[i]) else {
                continue;
            };
            let update = update_for(&current, &next, &table, i);
            authority.publish(&pusher, next, Some(&update)).await;
        }
    })
}

/// The update-partitions request that turns `current` into `next` by splitting partition `i`.
fn update_for(current: &TableMap, next: &TableMap, table: &str, i: usize) -> PartitionUpdate {
    let start = current.partitions()[i].start;
    let end = current.end_inclusive(i);
    let spec = TableSpec::from(next);
    PartitionUpdate {
        table: table.to_owned(),
        base_version: current.version().get(),
        version: next.version().get(),
        end_inclusive: end,
        nodes: vec![],
        partitions: spec
            .partitions
            .into_iter()
            .filter(|p| p.start >= start && p.start <= end)
            .map(WirePartition::from)
            .collect(),
    }
}
