//! Deterministic, seeded synthetic partition maps shaped by history the way real maps are.
//!
//! Real routing maps are not random tables: each table starts with a few partitions and grows
//! by splits at uneven points, children stay on their parent's replicas, and over time replicas
//! move and leaders change. Compression and lookup figures are only meaningful on maps with that
//! shape, so tests, benchmarks and experiments all draw their maps from here.
//!
//! # The process, per table
//!
//! 1. `initial_partitions` partitions tile the hash space evenly, each on a random replica set
//!    (one node per zone from the shared node pool, `replicas` of them) with a random leader.
//! 2. Until the table has its share of `partitions`, one event at a time:
//!    - **split** a partition chosen uniformly at random, at a point drawn uniformly from the
//!      middle `1 - 2 * split_margin` of its range (uneven halves). Both children keep the
//!      parent's replicas and leader; the left keeps the parent's id, the right gets the next id
//!      from the table's counter; both get epoch `parent + 1`.
//!    - after each split, on average `moves_per_split` **replica moves** (a random partition's
//!      replica in one zone is replaced by another node of the same zone) and
//!      `leader_changes_per_split` **leader changes** (another replica becomes leader), each
//!      bumping that partition's epoch.
//!
//!    Every event bumps the table version.
//!
//! The node pool is shared by all tables of a fleet (the same storage nodes serve many tables),
//! each table listing the nodes it uses. Everything is a pure function of the config: the same
//! seed gives the same maps on every machine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{
    Epoch, MAX_REPLICAS, NodeId, Partition, PartitionId, PartitionSpec, Replicas, StorageNode,
    TableMap, TableName, TableVersion, UpdateSpec,
};

/// The knobs of the generator. `Default` gives a small fleet-like map.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of tables; `partitions` is spread evenly over them.
    pub tables: usize,
    /// Total partitions over all tables.
    pub partitions: usize,
    /// Partitions each table starts with, before any split.
    pub initial_partitions: usize,
    /// Availability zones; node `i` of the pool lives in zone `i % azs`.
    pub azs: usize,
    /// Storage nodes per zone; 0 picks one node per ~3,000 partition replicas, the density of a
    /// real fleet, with at least 3 per zone.
    pub nodes_per_az: usize,
    /// Replicas per partition, one per zone (at most `azs` and 7).
    pub replicas: usize,
    /// Fraction of a range kept clear of each end when choosing a split point (0.0 to 0.5).
    pub split_margin: f64,
    /// Average replica moves after each split.
    pub moves_per_split: f64,
    /// Average leader changes after each split.
    pub leader_changes_per_split: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            tables: 1,
            partitions: 10_000,
            initial_partitions: 4,
            azs: 3,
            nodes_per_az: 0,
            replicas: 3,
            split_margin: 0.1,
            moves_per_split: 0.1,
            leader_changes_per_split: 0.2,
        }
    }
}

impl SynthConfig {
    /// Nodes per zone after resolving the automatic default.
    pub fn resolved_nodes_per_az(&self) -> usize {
        if self.nodes_per_az > 0 {
            return self.nodes_per_az;
        }
        let replicas_per_node = 3_000;
        (self.partitions * self.replicas / replicas_per_node / self.azs.max(1)).max(3)
    }

    /// How many partitions table `index` gets.
    pub fn table_partitions(&self, index: usize) -> usize {
        let tables = self.tables.max(1);
        let share = self.partitions / tables + usize::from(index < self.partitions % tables);
        share.max(1)
    }
}

/// The name of table `index` of a synthetic fleet.
pub fn table_name(index: usize) -> String {
    format!("table-{index:04}")
}

/// The whole node pool of the fleet.
pub fn node_pool(cfg: &SynthConfig) -> Vec<StorageNode> {
    let per_az = cfg.resolved_nodes_per_az();
    (0..cfg.azs.max(1) * per_az)
        .map(|g| pool_node(cfg, g))
        .collect()
}

/// Every table of the fleet.
pub fn generate_fleet(cfg: &SynthConfig) -> Vec<TableMap> {
    (0..cfg.tables.max(1))
        .map(|t| generate_table(cfg, t))
        .collect()
}

/// Table `index` of the fleet, independent of the other tables.
pub fn generate_table(cfg: &SynthConfig, index: usize) -> TableMap {
    let azs = cfg.azs.max(1);
    let per_az = cfg.resolved_nodes_per_az();
    let replicas = cfg.replicas.clamp(1, azs.min(MAX_REPLICAS));
    let target = cfg.table_partitions(index);
    let mut rng =
        ChaCha8Rng::seed_from_u64(cfg.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut g = Grower {
        rng: &mut rng,
        azs,
        per_az,
        replicas,
        parts: Vec::with_capacity(target),
        next_id: 1,
        version: 1,
    };
    g.seed_partitions(cfg.initial_partitions.clamp(1, target));
    while g.parts.len() < target {
        if !g.split(cfg.split_margin.clamp(0.0, 0.49)) {
            // Every range is a single hash: nothing left to split.
            break;
        }
        for _ in 0..g.events(cfg.moves_per_split) {
            g.move_replica();
        }
        for _ in 0..g.events(cfg.leader_changes_per_split) {
            g.change_leader();
        }
    }
    g.finish(cfg, index)
}

/// A partition while the table grows: its range, and its pool-global replica indexes.
struct GrowPart {
    id: u64,
    start: u64,
    last: u64,
    epoch: u64,
    nodes: [u32; MAX_REPLICAS],
    leader: u8,
}

struct Grower<'a> {
    rng: &'a mut ChaCha8Rng,
    azs: usize,
    per_az: usize,
    replicas: usize,
    parts: Vec<GrowPart>,
    next_id: u64,
    version: u64,
}

impl Grower<'_> {
    fn seed_partitions(&mut self, count: usize) {
        let step = u64::MAX / count as u64;
        for i in 0..count {
            let start = i as u64 * step;
            let last = if i + 1 == count {
                u64::MAX
            } else {
                (i as u64 + 1) * step - 1
            };
            let mut nodes = [0u32; MAX_REPLICAS];
            for (az, slot) in nodes.iter_mut().take(self.replicas).enumerate() {
                *slot = self.node_in(az);
            }
            let leader = self.rng.random_range(0..self.replicas) as u8;
            let id = self.take_id();
            self.parts.push(GrowPart {
                id,
                start,
                last,
                epoch: 1,
                nodes,
                leader,
            });
        }
    }

    fn split(&mut self, margin: f64) -> bool {
        for _ in 0..64 {
            let i = self.rng.random_range(0..self.parts.len());
            let p = &self.parts[i];
            let span = p.last - p.start;
            if span == 0 {
                continue;
            }
            let lo = ((span as f64 * margin) as u64).max(1);
            let hi = ((span as f64 * (1.0 - margin)) as u64).clamp(lo, span);
            let mid = p.start + self.rng.random_range(lo..=hi);
            let id = self.take_id();
            let p = &mut self.parts[i];
            p.epoch += 1;
            let child = GrowPart {
                id,
                start: mid,
                last: p.last,
                epoch: p.epoch,
                nodes: p.nodes,
                leader: p.leader,
            };
            p.last = mid - 1;
            self.parts.push(child);
            self.version += 1;
            return true;
        }
        false
    }

    fn move_replica(&mut self) {
        let i = self.rng.random_range(0..self.parts.len());
        let az = self.rng.random_range(0..self.replicas);
        if self.per_az < 2 {
            return;
        }
        let current = self.parts[i].nodes[az];
        let mut next = self.node_in(az);
        while next == current {
            next = self.node_in(az);
        }
        let p = &mut self.parts[i];
        p.nodes[az] = next;
        p.epoch += 1;
        self.version += 1;
    }

    fn change_leader(&mut self) {
        if self.replicas < 2 {
            return;
        }
        let i = self.rng.random_range(0..self.parts.len());
        let shift = self.rng.random_range(1..self.replicas);
        let p = &mut self.parts[i];
        p.leader = ((usize::from(p.leader) + shift) % self.replicas) as u8;
        p.epoch += 1;
        self.version += 1;
    }

    /// How many events of a kind happen now, for an average `rate` per split.
    fn events(&mut self, rate: f64) -> usize {
        let rate = rate.max(0.0);
        let whole = rate.trunc() as usize;
        whole + usize::from(self.rng.random_bool(rate.fract()))
    }

    /// A random node of zone `az`, as a pool-global index (node `g` is in zone `g % azs`).
    fn node_in(&mut self, az: usize) -> u32 {
        (self.rng.random_range(0..self.per_az) * self.azs + az) as u32
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn finish(mut self, cfg: &SynthConfig, index: usize) -> TableMap {
        self.parts.sort_unstable_by_key(|p| p.start);
        let mut used: Vec<u32> = self
            .parts
            .iter()
            .flat_map(|p| p.nodes[..self.replicas].iter().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        let nodes = used.iter().map(|&g| pool_node(cfg, g as usize)).collect();
        let mut ids = Vec::with_capacity(MAX_REPLICAS);
        let partitions = self
            .parts
            .iter()
            .map(|p| {
                ids.clear();
                ids.extend(p.nodes[..self.replicas].iter().map(|&g| NodeId::new(g + 1)));
                Partition {
                    id: PartitionId::new(p.id),
                    start: p.start,
                    epoch: Epoch::new(p.epoch),
                    replicas: Replicas::new(&ids).expect("one node per zone, so distinct"),
                    leader: p.leader,
                }
            })
            .collect();
        TableMap::new(
            TableName::new(&table_name(index)).expect("synthetic names are short"),
            TableVersion::new(self.version),
            nodes,
            partitions,
        )
        .expect("the generator only builds valid maps")
    }
}

fn pool_node(cfg: &SynthConfig, g: usize) -> StorageNode {
    let azs = cfg.azs.max(1);
    let az = g % azs;
    let n = g / azs;
    StorageNode {
        id: NodeId::new(g as u32 + 1),
        addr: format!("10.{}.{}.{}:8100", az, n / 256, n % 256),
        az: format!("az-{}", (b'a' + (az % 26) as u8) as char),
    }
}

/// The update that splits partition `index` of `map` at the middle of its range, as the
/// authority would send it: the left half keeps the id, the right half gets `new_id`, both at
/// the next epoch on the parent's replicas and leader, and the table moves to the next version.
/// The partition's range must hold at least three hashes (so the halves are not empty).
pub fn split_update(map: &TableMap, index: usize, new_id: u64) -> UpdateSpec {
    let p = map.partitions()[index];
    let end = map.end_inclusive(index);
    let mid = p.start + (end - p.start) / 2;
    let half = |id: u64, start: u64| PartitionSpec {
        id,
        start,
        epoch: p.epoch.get() + 1,
        replicas: p.replicas.as_slice().iter().map(|r| r.get()).collect(),
        leader: u64::from(p.leader),
    };
    UpdateSpec {
        table: map.name().as_str().into(),
        base_version: map.version().get(),
        version: map.version().get() + 1,
        end_inclusive: end,
        nodes: vec![],
        partitions: vec![half(p.id.get(), p.start), half(new_id, mid)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cfg(partitions: usize) -> SynthConfig {
        SynthConfig {
            partitions,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn same_seed_same_map_other_seed_other_map() {
        let a = generate_table(&cfg(3_000), 0);
        assert_eq!(a, generate_table(&cfg(3_000), 0));
        let other = SynthConfig {
            seed: 7,
            ..cfg(3_000)
        };
        assert_ne!(a, generate_table(&other, 0));
        assert_ne!(a.partitions(), generate_table(&cfg(3_000), 1).partitions());
    }

    #[test]
    fn maps_have_the_shape_of_grown_tables() {
        let map = generate_table(&cfg(20_000), 0);
        let parts = map.partitions();
        assert_eq!(parts.len(), 20_000);
        // Ids come from one counter: 1..=n, each once.
        let ids: HashSet<u64> = parts.iter().map(|p| p.id.get()).collect();
        assert_eq!(ids.len(), parts.len());
        assert_eq!(ids.iter().max(), Some(&(parts.len() as u64)));
        // One replica per zone.
        for p in parts {
            let zones: HashSet<&str> = p
                .replicas
                .as_slice()
                .iter()
                .map(|&r| map.node(r).expect("listed").az.as_str())
                .collect();
            assert_eq!(zones.len(), 3, "partition {} spans {zones:?}", p.id);
        }
        // Splits keep the parent's replicas, so most neighbours share their replica set, but
        // moves make some differ.
        let shared = parts
            .windows(2)
            .filter(|w| w[0].replicas == w[1].replicas)
            .count();
        assert!(
            shared > parts.len() / 2 && shared < parts.len() - 1,
            "{shared}"
        );
        // Uneven splits: partition widths vary widely.
        let widths: Vec<u64> = (0..parts.len())
            .map(|i| map.end_inclusive(i) - parts[i].start)
            .collect();
        let (min, max) = (
            widths.iter().min().expect("n>0"),
            widths.iter().max().expect("n>0"),
        );
        assert!(max / min.max(&1) > 10, "widths from {min} to {max}");
        // Every event bumped the version: at least one per split.
        assert!(map.version().get() > parts.len() as u64);
        assert!(parts.iter().any(|p| p.epoch.get() > 10));
    }

    #[test]
    fn fleet_spreads_partitions_and_shares_the_node_pool() {
        let c = SynthConfig {
            tables: 3,
            ..cfg(10_000)
        };
        let fleet = generate_fleet(&c);
        let sizes: Vec<usize> = fleet.iter().map(|m| m.partitions().len()).collect();
        assert_eq!(sizes, vec![3_334, 3_333, 3_333]);
        let names: Vec<&str> = fleet.iter().map(|m| m.name().as_str()).collect();
        assert_eq!(names, vec!["table-0000", "table-0001", "table-0002"]);
        let pool = node_pool(&c);
        for map in &fleet {
            for node in map.nodes() {
                assert!(pool.contains(node), "{node:?} is not from the pool");
            }
        }
    }
}
