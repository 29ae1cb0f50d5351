//! The tables a server holds, and the rules that decide what a write does to them.
//!
//! Readers see an immutable [`Tables`] map through an `ArcSwap`: a lookup loads the current map
//! without a lock, and a write publishes a whole new map (sharing every unchanged table) only
//! after it is durable. The planning functions here are pure: given the current tables and a
//! write, they answer what to install, or the typed error, and change nothing themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use memds_proto::model::BatchEdit;
use memds_proto::wire::{ErrorCode, ErrorReply, TableSummary};
use memds_proto::{CompactTable, EditError, NodeInterner, TableMap, snapshot};

use crate::metrics::{self, WriteOp};
use crate::replication;
use crate::snapshots::SnapshotCache;

/// Every table by name, and the tombstones of dropped ones.
///
/// A tombstone keeps the version a table was dropped at, so a later put of that name needs a
/// higher version and no router that saw the old table is ever served an older one. Tombstones
/// live as long as the data directory (each costs its name and 8 bytes) and are checkpointed
/// with the tables.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    tables: HashMap<String, Arc<CompactTable>>,
    tombstones: HashMap<String, u64>,
}

impl Tables {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<CompactTable>> {
        self.tables.get(name)
    }

    /// Installs a table (replacing any of that name); a newer table supersedes its tombstone.
    pub fn insert(&mut self, name: String, table: Arc<CompactTable>) {
        self.tombstones.remove(&name);
        self.tables.insert(name, table);
    }

    /// Removes a table, leaving a tombstone at `version` (or the tombstone already there, if
    /// higher).
    pub fn remove(&mut self, name: &str, version: u64) -> Option<Arc<CompactTable>> {
        let t = self.tombstones.entry(name.to_owned()).or_insert(version);
        *t = (*t).max(version);
        self.tables.remove(name)
    }

    /// The version a table of that name was dropped at, if it was.
    pub fn tombstone(&self, name: &str) -> Option<u64> {
        self.tombstones.get(name).copied()
    }

    /// Every tombstone: name and version dropped.
    pub fn tombstones(&self) -> impl Iterator<Item = (&String, u64)> {
        self.tombstones.iter().map(|(n, &v)| (n, v))
    }

    /// Every table, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<CompactTable>)> {
        self.tables.iter()
    }

    /// Every table.
    pub fn values(&self) -> impl Iterator<Item = &Arc<CompactTable>> {
        self.tables.values()
    }

    /// How many tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether there are no tables.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// The published state readers use.
#[derive(Debug, Default)]
pub struct Store {
    tables: ArcSwap<Tables>,
    node_records: AtomicU64,
    node_record_bytes: AtomicU64,
    snapshots: SnapshotCache,
}

impl Store {
    /// A store holding `tables` (recovered from disk); from then on only the writer publishes.
    pub fn with_tables(tables: Tables, interner: &NodeInterner) -> Self {
        let store = Self::default();
        store.publish(tables, interner);
        store
    }

    /// The current tables.
    pub fn tables(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// Runs `f` on the current tables, borrowed: no reference count is taken, so lookups on
    /// every worker do not write one shared counter (`arc_swap`'s guard). Keep `f` short: it
    /// is the read path.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        f(&self.tables.load())
    }

    /// Looks one table up.
    pub fn table(&self, name: &str) -> Option<Arc<CompactTable>> {
        self.tables.load().get(name).cloned()
    }

    /// Publishes a new state (the writer does this after the state is durable).
    pub(crate) fn publish(&self, tables: Tables, interner: &NodeInterner) {
        self.snapshots.retain_current(&tables);
        self.tables.store(Arc::new(tables));
        self.node_records
            .store(interner.len() as u64, Ordering::Relaxed);
        self.node_record_bytes
            .store(interner.resident_bytes() as u64, Ordering::Relaxed);
    }

    /// The number of tables, their partitions, and their resident bytes with the shared node
    /// records'.
    pub fn totals(&self) -> (u64, u64, u64) {
        let tables = self.tables();
        let partitions = tables.values().map(|t| t.len() as u64).sum();
        let bytes: u64 = tables.values().map(|t| t.resident_bytes() as u64).sum();
        (
            tables.len() as u64,
            partitions,
            bytes + self.node_records().1,
        )
    }

    /// Publishes the table gauges ([`metrics::tables`]) from the current tables: the writer
    /// calls it after each publication, the server once at start.
    pub fn publish_gauges(&self) {
        let (tables, partitions, bytes) = self.totals();
        let current = self.tables();
        metrics::tables(
            tables,
            partitions,
            bytes,
            current
                .values()
                .map(|t| (t.name().as_str(), t.version().get())),
        );
    }

    /// Replaces one resident table in place, as a memory fault would: only the scrubber's
    /// `scrub-damage` failpoint does this, to test repairs end to end.
    pub(crate) fn inject_damage(&self, name: &str, table: Arc<CompactTable>) {
        let mut next = (*self.tables()).clone();
        next.insert(name.to_owned(), table);
        self.tables.store(Arc::new(next));
    }

    /// The encoded get-table answers.
    pub fn snapshots(&self) -> &SnapshotCache {
        &self.snapshots
    }

    /// Distinct node records held, and their bytes.
    pub fn node_records(&self) -> (u64, u64) {
        (
            self.node_records.load(Ordering::Relaxed),
            self.node_record_bytes.load(Ordering::Relaxed),
        )
    }
}

/// A write, as received.
#[derive(Clone, Debug)]
pub enum Write {
    /// Store a whole map, given as a snapshot.
    Put {
        /// The snapshot bytes.
        snapshot: Vec<u8>,
    },
    /// Store a whole map pulled from a peer: a put, refused unless the snapshot holds the
    /// table the peer advertised, at that version or later ([`replication::accept_snapshot`],
    /// checked on the map the put decodes anyway). Logged as a put.
    Pulled {
        /// The snapshot bytes.
        snapshot: Vec<u8>,
        /// What the peer's summary advertised.
        advertised: TableSummary,
    },
    /// Replace the partitions of a range.
    Update(BatchEdit),
    /// Replace the partitions of many ranges of one table, atomically at one version.
    Batch(BatchEdit),
    /// Remove a table.
    Drop {
        /// The table.
        table: String,
        /// The version dropped, if the writer named one.
        version: Option<u64>,
    },
}

impl Write {
    /// The operation's name in metrics.
    pub fn op(&self) -> WriteOp {
        match self {
            Write::Put { .. } | Write::Pulled { .. } => WriteOp::PutTable,
            Write::Update(_) => WriteOp::UpdatePartitions,
            Write::Batch(_) => WriteOp::UpdateBatch,
            Write::Drop { .. } => WriteOp::DropTable,
        }
    }
}

/// What a write does.
#[derive(Debug)]
pub enum Plan {
    /// Install this table (new, or a newer version).
    Install(CompactTable),
    /// Remove the table (if present) and leave a tombstone at this version.
    Remove {
        /// The table.
        table: String,
        /// The version dropped.
        version: u64,
    },
    /// The table was dropped already, at this version: acknowledge, change nothing.
    AlreadyDropped {
        /// The table.
        table: String,
        /// The version it was dropped at.
        version: u64,
    },
    /// The same version with the same content is already there: acknowledge, change nothing.
    Unchanged {
        /// The table.
        table: String,
        /// Its version.
        version: u64,
    },
}

/// A write with its snapshot (if any) decoded: what planning reads.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A put's map.
    Put(TableMap),
    /// An update.
    Update(&'a BatchEdit),
    /// A batch of updates.
    Batch(&'a BatchEdit),
    /// A drop.
    Drop {
        /// The table.
        table: &'a str,
        /// The version dropped, if named.
        version: Option<u64>,
    },
}

impl Decoded<'_> {
    /// The table the write is about.
    pub fn table(&self) -> &str {
        match self {
            Decoded::Put(map) => map.name().as_str(),
            Decoded::Update(u) => &u.table,
            Decoded::Batch(u) => &u.table,
            Decoded::Drop { table, .. } => table,
        }
    }

    /// The hash ranges planning reads from the current table, each widened by one hash on
    /// either side (the boundary checks read the neighbouring partitions' starts): for updates
    /// and batches, so a writer need verify only those; `None` for puts and drops, which
    /// read the table whole (or not at all).
    pub fn read_ranges(&self) -> Option<Vec<(u64, u64)>> {
        let widen = |from: u64, end: u64| {
            let (lo, hi) = (from.min(end), from.max(end));
            (lo.saturating_sub(1), hi.saturating_add(1))
        };
        let ranges = |ranges: &mut dyn Iterator<Item = (Option<u64>, u64)>| {
            ranges
                .map(|(from, end)| widen(from.unwrap_or(end), end))
                .collect()
        };
        match self {
            Decoded::Update(u) | Decoded::Batch(u) => {
                Some(ranges(&mut u.ranges.iter().map(|r| {
                    (r.partitions.first().map(|p| p.start), r.end_inclusive)
                })))
            }
            Decoded::Put(_) | Decoded::Drop { .. } => None,
        }
    }
}

impl Write {
    /// Decodes the write's snapshot, which may declare at most `max_archive_bytes` uncompressed
    /// (checked before anything is allocated for it).
    pub fn decode(&self, max_archive_bytes: u64) -> Result<Decoded<'_>, ErrorReply> {
        Ok(match self {
            Write::Put { snapshot } => Decoded::Put(decode_put(snapshot, max_archive_bytes)?),
            Write::Pulled {
                snapshot,
                advertised,
            } => {
                let map = decode_put(snapshot, max_archive_bytes)?;
                replication::accept_snapshot(map.name().as_str(), map.version().get(), advertised)
                    .map_err(|e| ErrorReply::new(ErrorCode::Invalid, e.to_string()))?;
                Decoded::Put(map)
            }
            Write::Update(u) => Decoded::Update(u),
            Write::Batch(u) => Decoded::Batch(u),
            Write::Drop { table, version } => Decoded::Drop {
                table,
                version: *version,
            },
        })
    }
}

/// A put's snapshot, decoded and checked.
fn decode_put(snapshot: &[u8], max_archive_bytes: u64) -> Result<TableMap, ErrorReply> {
    snapshot::decode(snapshot, max_archive_bytes).map_err(|e| {
        let code = match e {
            snapshot::SnapshotError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Invalid,
        };
        ErrorReply::new(code, format!("put-table: {e}"))
    })
}

/// Decides what a write does to `tables`: [`Write::decode`], then [`plan_decoded`].
pub fn plan(
    tables: &Tables,
    write: &Write,
    interner: &mut NodeInterner,
    max_archive_bytes: u64,
) -> Result<Plan, ErrorReply> {
    plan_decoded(tables, write.decode(max_archive_bytes)?, interner)
}

/// Decides what a decoded write does to `tables`. The tables it reads must be intact (the
/// writer verifies them first): a damaged copy would decide wrongly.
pub fn plan_decoded(
    tables: &Tables,
    write: Decoded<'_>,
    interner: &mut NodeInterner,
) -> Result<Plan, ErrorReply> {
    match write {
        Decoded::Put(map) => plan_put(tables, map, interner),
        Decoded::Update(update) | Decoded::Batch(update) => plan_batch(tables, update, interner),
        Decoded::Drop { table, version } => plan_drop(tables, table, version),
    }
}

fn plan_drop(tables: &Tables, table: &str, version: Option<u64>) -> Result<Plan, ErrorReply> {
    let current = tables.get(table).map(|t| t.version().get());
    let tombstone = tables.tombstone(table);
    let remove = |version| {
        Ok(Plan::Remove {
            table: table.to_owned(),
            version,
        })
    };
    match (current, version) {
        (Some(current), None) => remove(current),
        (Some(current), Some(v)) if v >= current => remove(v),
        (Some(current), Some(v)) => Err(versioned(
            ErrorCode::Stale,
            format!("table {table} is at version {current}, newer than the drop of version {v}"),
            current,
        )),
        // Dropped already: a retry of the drop is answered as it was the first time.
        (None, None) => match tombstone {
            Some(t) => Ok(Plan::AlreadyDropped {
                table: table.to_owned(),
                version: t,
            }),
            None => Err(unknown(table)),
        },
        (None, Some(v)) => match tombstone {
            Some(t) if t >= v => Ok(Plan::AlreadyDropped {
                table: table.to_owned(),
                version: t,
            }),
            // A drop that overtook the put it follows (forwarded in another order): the
            // tombstone makes that put stale when it arrives.
            _ => remove(v),
        },
    }
}

fn plan_put(
    tables: &Tables,
    map: TableMap,
    interner: &mut NodeInterner,
) -> Result<Plan, ErrorReply> {
    let name = map.name().as_str().to_owned();
    let version = map.version().get();
    let Some(current) = tables.get(&name) else {
        if let Some(dropped) = tables.tombstone(&name).filter(|&t| version <= t) {
            return Err(versioned(
                ErrorCode::Stale,
                format!(
                    "table {name} was dropped at version {dropped}; a new table of that name needs a higher version than {version}"
                ),
                dropped,
            ));
        }
        return Ok(Plan::Install(CompactTable::new(&map, interner)));
    };
    let current_version = current.version().get();
    if version < current_version {
        return Err(versioned(
            ErrorCode::Stale,
            format!("table {name} is at version {current_version}; version {version} is older"),
            current_version,
        ));
    }
    let table = CompactTable::new(&map, interner);
    if version > current_version {
        return Ok(Plan::Install(table));
    }
    if table.checksum() == current.checksum() {
        Ok(Plan::Unchanged {
            table: name,
            version,
        })
    } else {
        Err(versioned(
            ErrorCode::Conflict,
            format!("table {name} already has version {version} with other content"),
            current_version,
        ))
    }
}

fn plan_batch(
    tables: &Tables,
    u: &BatchEdit,
    interner: &mut NodeInterner,
) -> Result<Plan, ErrorReply> {
    let current = tables
        .get(u.table.as_str())
        .ok_or_else(|| match tables.tombstone(&u.table) {
            // An update based on a version above the drop: the table was put again elsewhere
            // and this server has not seen it yet.
            Some(dropped) if u.base_version > dropped => versioned(
                ErrorCode::Behind,
                format!(
                    "table {} was dropped here at version {dropped}; this server has not yet seen version {} the update is based on: it is catching up, ask another server",
                    u.table, u.base_version
                ),
                dropped,
            ),
            Some(dropped) => versioned(
                ErrorCode::UnknownTable,
                format!("table {} was dropped at version {dropped}", u.table),
                dropped,
            ),
            None => unknown(&u.table),
        })?;
    let current_version = current.version().get();
    let invalid =
        |e: EditError| ErrorReply::new(ErrorCode::Invalid, format!("update-partitions: {e}"));
    // What no version can make valid is refused first, as it always was.
    CompactTable::check_update(u).map_err(invalid)?;
    if u.version == current_version {
        return if current.holds(u) {
            Ok(Plan::Unchanged {
                table: u.table.clone(),
                version: u.version,
            })
        } else {
            Err(versioned(
                ErrorCode::Conflict,
                format!(
                    "table {} already has version {} with other content in that range",
                    u.table, u.version
                ),
                current_version,
            ))
        };
    }
    if u.version < current_version {
        return Err(versioned(
            ErrorCode::Stale,
            format!(
                "table {} is at version {current_version}; version {} is older",
                u.table, u.version
            ),
            current_version,
        ));
    }
    // Based on a version this server has not seen: it is behind (the write went elsewhere
    // first), not in conflict. It catches up; the writer may retry here or on another server.
    if u.base_version > current_version {
        return Err(versioned(
            ErrorCode::Behind,
            format!(
                "update is based on version {} but this server holds table {} at version {current_version}: it is catching up, ask another server",
                u.base_version, u.table
            ),
            current_version,
        ));
    }
    if u.base_version != current_version {
        return Err(versioned(
            ErrorCode::Conflict,
            format!(
                "update is based on version {} but table {} is at version {current_version}",
                u.base_version, u.table
            ),
            current_version,
        ));
    }
    let table = current.apply(u, interner).map_err(invalid)?;
    Ok(Plan::Install(table))
}

fn unknown(table: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::UnknownTable, format!("no table named {table:?}"))
}

fn versioned(code: ErrorCode, message: String, current_version: u64) -> ErrorReply {
    ErrorReply {
        code,
        message,
        current_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::model::{TableSpec, UpdateSpec};
    use memds_proto::synth::{self, SynthConfig};

    fn map(partitions: usize, version: u64) -> TableMap {
        let m = synth::generate_table(
            &SynthConfig {
                partitions,
                ..SynthConfig::default()
            },
            0,
        );
        let mut spec = TableSpec::from(&m);
        spec.version = version;
        TableMap::try_from(spec).expect("valid")
    }

    /// `super::plan` with the default snapshot bound.
    fn plan(
        tables: &Tables,
        write: &Write,
        interner: &mut NodeInterner,
    ) -> Result<Plan, ErrorReply> {
        super::plan(tables, write, interner, snapshot::DEFAULT_MAX_ARCHIVE_BYTES)
    }

    fn install(tables: &mut Tables, write: &Write, interner: &mut NodeInterner) {
        match plan(tables, write, interner).expect("the write applies") {
            Plan::Install(t) => {
                tables.insert(t.name().as_str().to_owned(), Arc::new(t));
            }
            other => panic!("expected an install, got {other:?}"),
        }
    }

    fn put(m: &TableMap) -> Write {
        Write::Put {
            snapshot: snapshot::encode(m),
        }
    }

    #[test]
    fn a_pulled_snapshot_must_be_the_table_advertised_at_that_version_or_later() {
        let mut i = NodeInterner::default();
        let tables = Tables::new();
        let m = map(100, 5);
        let advertised = |name: &str, version: u64| TableSummary {
            name: name.into(),
            version,
            digest: 0,
            dropped: false,
        };
        let pulled = |a: TableSummary| Write::Pulled {
            snapshot: snapshot::encode(&m),
            advertised: a,
        };
        let name = m.name().as_str();
        assert!(matches!(
            plan(&tables, &pulled(advertised(name, 5)), &mut i),
            Ok(Plan::Install(_))
        ));
        assert!(matches!(
            plan(&tables, &pulled(advertised(name, 4)), &mut i),
            Ok(Plan::Install(_))
        ));
        for wrong in [advertised("other", 5), advertised(name, 6)] {
            let e = plan(&tables, &pulled(wrong), &mut i).expect_err("not the table advertised");
            assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        }
    }

    #[test]
    fn put_follows_the_version_rules() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        install(&mut tables, &put(&map(100, 5)), &mut i);
        assert!(matches!(
            plan(&tables, &put(&map(100, 5)), &mut i),
            Ok(Plan::Unchanged { version: 5, .. })
        ));
        let conflict = plan(&tables, &put(&map(101, 5)), &mut i).expect_err("other content");
        assert_eq!(
            (conflict.code, conflict.current_version),
            (ErrorCode::Conflict, 5)
        );
        let stale = plan(&tables, &put(&map(100, 4)), &mut i).expect_err("older");
        assert_eq!((stale.code, stale.current_version), (ErrorCode::Stale, 5));
        assert!(matches!(
            plan(&tables, &put(&map(100, 6)), &mut i),
            Ok(Plan::Install(_))
        ));
        let bad = plan(
            &tables,
            &Write::Put {
                snapshot: vec![1, 2, 3],
            },
            &mut i,
        )
        .expect_err("garbage");
        assert_eq!(bad.code, ErrorCode::Invalid);
    }

    fn split_update(m: &TableMap, index: usize) -> UpdateSpec {
        synth::split_update(m, index, 1_000_000)
    }

    #[test]
    fn update_splits_a_partition_and_is_idempotent() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        let m = map(50, 3);
        install(&mut tables, &put(&m), &mut i);
        let u = split_update(&m, 10);
        install(&mut tables, &Write::Update(u.clone().into()), &mut i);
        let t = tables.get(m.name().as_str()).expect("installed");
        assert_eq!(t.len(), 51);
        assert_eq!(t.version().get(), 4);
        let right = t.lookup(u.partitions[1].start);
        assert_eq!(right.id.get(), 1_000_000);
        assert_eq!(right.end_inclusive, u.end_inclusive);
        // A retry of the applied update is acknowledged without change.
        assert!(matches!(
            plan(&tables, &Write::Update(u.clone().into()), &mut i),
            Ok(Plan::Unchanged { version: 4, .. })
        ));
        // Based on an old version: stale or conflict, never applied.
        let mut again = split_update(&m, 20);
        assert_eq!(
            plan(&tables, &Write::Update(again.clone().into()), &mut i)
                .expect_err("old base")
                .code,
            ErrorCode::Conflict
        );
        again.version = 2;
        assert_eq!(
            plan(&tables, &Write::Update(again.into()), &mut i)
                .expect_err("old version")
                .code,
            ErrorCode::Stale
        );
    }

    #[test]
    fn bad_updates_are_refused_with_their_reason() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        let m = map(50, 3);
        install(&mut tables, &put(&m), &mut i);
        let refuse = |u: UpdateSpec, i: &mut NodeInterner| {
            let e = plan(&tables, &Write::Update(u.into()), i).expect_err("refused");
            assert_eq!(e.code, ErrorCode::Invalid, "{e}");
            e.message
        };
        let mut u = split_update(&m, 10);
        u.partitions[0].start += 1;
        assert!(refuse(u, &mut i).contains("must start at an existing partition boundary"));
        let mut u = split_update(&m, 10);
        u.end_inclusive -= 1;
        assert!(refuse(u, &mut i).contains("must end at an existing partition boundary"));
        let mut u = split_update(&m, 10);
        u.partitions[1].id = m.partitions()[30].id.get();
        assert!(refuse(u, &mut i).contains("already used"));
        let mut u = split_update(&m, 10);
        u.partitions[1].replicas = vec![999_999];
        u.partitions[1].leader = 0;
        assert!(refuse(u, &mut i).contains("not in the table's node list"));
        let mut u = split_update(&m, 10);
        u.partitions.clear();
        assert!(refuse(u, &mut i).contains("no partitions"));
        let unknown = plan(
            &tables,
            &Write::Drop {
                table: "nope".into(),
                version: None,
            },
            &mut i,
        )
        .expect_err("unknown");
        assert_eq!(unknown.code, ErrorCode::UnknownTable);
    }

    /// One batch splitting each of the partitions at `indexes` (ascending) of `m`, at the
    /// next version.
    fn split_batch(m: &TableMap, indexes: &[usize]) -> BatchEdit {
        let mut batch = BatchEdit::from(synth::split_update(m, indexes[0], 2_000_000));
        for (k, &index) in indexes.iter().enumerate().skip(1) {
            let u = synth::split_update(m, index, 2_000_000 + k as u64);
            batch.ranges.extend(BatchEdit::from(u).ranges);
        }
        batch
    }

    #[test]
    fn a_batch_of_splits_applies_at_one_version_and_a_retry_is_unchanged() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        let m = map(300, 3);
        install(&mut tables, &put(&m), &mut i);
        let indexes = [0, 7, 8, 100, 250, 299];
        let batch = split_batch(&m, &indexes);
        install(&mut tables, &Write::Batch(batch.clone()), &mut i);
        let t = tables.get(m.name().as_str()).expect("installed");
        assert_eq!(t.version().get(), 4, "one version for the whole batch");
        assert_eq!(t.len(), 300 + indexes.len());
        for r in &batch.ranges {
            let right = t.lookup(r.partitions[1].start);
            assert_eq!(right.id.get(), r.partitions[1].id);
            assert_eq!(right.end_inclusive, r.end_inclusive);
            let left = t.lookup(r.partitions[0].start);
            assert_eq!(left.id.get(), r.partitions[0].id);
            assert_eq!(left.end_inclusive, r.partitions[1].start - 1);
        }
        // Everything else is as it was.
        let untouched = m.partitions()[50];
        assert_eq!(t.lookup(untouched.start).id, untouched.id);
        // A retry at the same version is acknowledged without change; other content at that
        // version is a conflict; an older version is stale.
        assert!(matches!(
            plan(&tables, &Write::Batch(batch.clone()), &mut i),
            Ok(Plan::Unchanged { version: 4, .. })
        ));
        let other = split_batch(&m, &[1, 2]);
        let e = plan(&tables, &Write::Batch(other.clone()), &mut i).expect_err("other content");
        assert_eq!((e.code, e.current_version), (ErrorCode::Conflict, 4), "{e}");
        let mut older = other;
        older.version = 3;
        let e = plan(&tables, &Write::Batch(older), &mut i).expect_err("older");
        assert_eq!((e.code, e.current_version), (ErrorCode::Stale, 4), "{e}");
    }

    #[test]
    fn a_batch_with_one_bad_range_is_refused_whole() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        let m = map(300, 3);
        install(&mut tables, &put(&m), &mut i);
        let name = m.name().as_str().to_owned();
        let before = tables.get(&name).expect("installed").checksum();
        let refuse = |b: BatchEdit, i: &mut NodeInterner| {
            let e = plan(&tables, &Write::Batch(b), i).expect_err("refused");
            assert_eq!(e.code, ErrorCode::Invalid, "{e}");
            assert!(e.message.starts_with("update-partitions: "), "{e}");
            e.message
        };
        // The third range ends inside a partition.
        let mut b = split_batch(&m, &[10, 20, 30, 40]);
        b.ranges[2].end_inclusive -= 1;
        let msg = refuse(b, &mut i);
        assert!(msg.contains("range 2"), "{msg}");
        assert!(
            msg.contains("must end at an existing partition boundary"),
            "{msg}"
        );
        // Ranges out of order, or overlapping.
        let mut b = split_batch(&m, &[10, 20]);
        b.ranges.swap(0, 1);
        refuse(b, &mut i);
        let mut b = split_batch(&m, &[10, 20]);
        b.ranges[1] = b.ranges[0].clone();
        refuse(b, &mut i);
        // No ranges, or a range without partitions.
        let mut b = split_batch(&m, &[10]);
        b.ranges.clear();
        assert!(refuse(b, &mut i).contains("no ranges"));
        let mut b = split_batch(&m, &[10, 20]);
        b.ranges[1].partitions.clear();
        assert!(refuse(b, &mut i).contains("range 1: no partitions"));
        // A new id the table already uses, in the last range.
        let mut b = split_batch(&m, &[10, 20]);
        b.ranges[1].partitions[1].id = m.partitions()[200].id.get();
        assert!(refuse(b, &mut i).contains("already used"));
        // Nothing changed: planning is pure, and the table is the one put.
        let t = tables.get(&name).expect("held");
        assert_eq!((t.version().get(), t.checksum()), (3, before));
        assert!(matches!(
            plan(&tables, &Write::Batch(split_batch(&m, &[10, 20])), &mut i),
            Ok(Plan::Install(_))
        ));
    }

    fn drop_write(table: &str, version: Option<u64>) -> Write {
        Write::Drop {
            table: table.into(),
            version,
        }
    }

    fn apply(tables: &mut Tables, write: &Write, interner: &mut NodeInterner) -> Plan {
        let p = plan(tables, write, interner).expect("the write applies");
        match &p {
            Plan::Install(t) => {
                tables.insert(t.name().as_str().to_owned(), Arc::new(t.clone()));
            }
            Plan::Remove { table, version } => {
                tables.remove(table, *version);
            }
            Plan::AlreadyDropped { .. } | Plan::Unchanged { .. } => {}
        }
        p
    }

    #[test]
    fn a_drop_leaves_a_tombstone_that_only_a_higher_version_passes() {
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        let v9 = map(100, 9);
        let name = v9.name().as_str().to_owned();
        install(&mut tables, &put(&v9), &mut i);
        assert!(matches!(
            apply(&mut tables, &drop_write(&name, None), &mut i),
            Plan::Remove { version: 9, .. }
        ));
        assert_eq!(tables.tombstone(&name), Some(9));
        // Routers saw version 9: neither an older nor the same version comes back.
        for v in [2, 9] {
            let e = plan(&tables, &put(&map(100, v)), &mut i).expect_err("below the tombstone");
            assert_eq!((e.code, e.current_version), (ErrorCode::Stale, 9), "{e}");
        }
        let update = plan(
            &tables,
            &Write::Update(split_update(&map(100, 9), 3).into()),
            &mut i,
        )
        .expect_err("dropped");
        assert_eq!(update.code, ErrorCode::UnknownTable);
        // A retried drop is answered as the first one was.
        assert!(matches!(
            apply(&mut tables, &drop_write(&name, None), &mut i),
            Plan::AlreadyDropped { version: 9, .. }
        ));
        install(&mut tables, &put(&map(100, 10)), &mut i);
        assert_eq!(tables.tombstone(&name), None, "the new table supersedes it");
    }

    #[test]
    fn versioned_drops_and_puts_end_the_same_in_any_order() {
        let name = map(10, 1).name().as_str().to_owned();
        let writes = [
            put(&map(10, 3)),
            drop_write(&name, Some(3)),
            put(&map(10, 2)),
        ];
        let mut outcomes = Vec::new();
        for order in [
            [0, 1, 2],
            [1, 0, 2],
            [2, 1, 0],
            [1, 2, 0],
            [2, 0, 1],
            [0, 2, 1],
        ] {
            let mut i = NodeInterner::default();
            let mut tables = Tables::new();
            for k in order {
                // Some orders refuse some writes as stale; what matters is where they end.
                if let Ok(p) = plan(&tables, &writes[k], &mut i) {
                    match p {
                        Plan::Install(t) => tables.insert(name.clone(), Arc::new(t)),
                        Plan::Remove { table, version } => {
                            tables.remove(&table, version);
                        }
                        _ => {}
                    }
                }
            }
            outcomes.push((
                tables.get(&name).map(|t| t.version().get()),
                tables.tombstone(&name),
            ));
        }
        assert!(
            outcomes.iter().all(|o| *o == (None, Some(3))),
            "{outcomes:?}"
        );
        // A drop of an older version than the table holds is stale.
        let mut i = NodeInterner::default();
        let mut tables = Tables::new();
        install(&mut tables, &put(&map(10, 5)), &mut i);
        let e = plan(&tables, &drop_write(&name, Some(4)), &mut i).expect_err("older drop");
        assert_eq!((e.code, e.current_version), (ErrorCode::Stale, 5));
    }

    #[test]
    fn a_put_over_the_snapshot_bound_is_too_large_before_anything_is_decoded() {
        let mut i = NodeInterner::default();
        let bytes = snapshot::encode(&map(1000, 1));
        let e = super::plan(
            &Tables::new(),
            &Write::Put { snapshot: bytes },
            &mut i,
            1024,
        )
        .expect_err("over the bound");
        assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    }
}
