//! The get-table answers: a table's snapshot, encoded once per (table, version) and shared by
//! every caller.
//!
//! Encoding a snapshot decodes the whole compact table, archives it and compresses it (about
//! 0.4 s of CPU at a million partitions), so it must neither run per request nor on an async
//! worker. The first caller for a version builds the archived `Response::Table` on a blocking
//! thread; callers that arrive meanwhile wait for that same build; later callers copy the cached
//! bytes into their frame. The table is verified after it is encoded, so a damaged resident copy
//! is never served (the caller gets `internal`, and the scrubber's repair follows).
//!
//! Memory: at most one entry per table, built only when someone asks, and dropped as soon as the
//! writer publishes another version or drops the table. `memds_snapshot_cache_bytes` reports it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memds_proto::CompactTable;
use memds_proto::snapshot;
use memds_proto::wire::{self, ErrorCode, ErrorReply, Response};
use rkyv::util::AlignedVec;
use tokio::sync::OnceCell;

use crate::metrics;
use crate::store::Tables;

/// The cache of encoded get-table answers.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    bytes: AtomicU64,
    builds: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    checksum: u64,
    answer: OnceCell<Arc<AlignedVec>>,
}

impl Drop for SnapshotCache {
    fn drop(&mut self) {
        let held = self.bytes.load(Ordering::Relaxed);
        metrics::snapshot_cache_bytes(-(held as f64));
    }
}

impl SnapshotCache {
    /// The archived `Response::Table` for `table` at its current version, built on a blocking
    /// thread if no caller built it yet.
    pub async fn answer(&self, table: Arc<CompactTable>) -> Result<Arc<AlignedVec>, ErrorReply> {
        let name = table.name().as_str().to_owned();
        let entry = {
            let mut entries = self
                .entries
                .lock()
                .expect("the cache lock is never poisoned");
            let current = entries
                .get(&name)
                .filter(|e| e.version == table.version().get() && e.checksum == table.checksum());
            match current {
                Some(e) => Arc::clone(e),
                None => {
                    let e = Arc::new(Entry {
                        version: table.version().get(),
                        checksum: table.checksum(),
                        answer: OnceCell::new(),
                    });
                    // An older version's entry goes now; in-flight callers keep their Arc.
                    entries.insert(name, Arc::clone(&e));
                    e
                }
            }
        };
        let answer = entry
            .answer
            .get_or_try_init(|| async move {
                self.builds.fetch_add(1, Ordering::Relaxed);
                let built = tokio::task::spawn_blocking(move || build(&table))
                    .await
                    .map_err(|e| {
                        ErrorReply::new(ErrorCode::Internal, format!("encoding the table: {e}"))
                    })??;
                Ok::<_, ErrorReply>(Arc::new(built))
            })
            .await?;
        self.account();
        Ok(Arc::clone(answer))
    }

    /// Drops the entries of tables that are gone or at another version (the writer calls this
    /// when it publishes).
    pub fn retain_current(&self, tables: &Tables) {
        let mut entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        entries.retain(|name, e| {
            tables
                .get(name)
                .is_some_and(|t| t.version().get() == e.version && t.checksum() == e.checksum)
        });
        drop(entries);
        self.account();
    }

    /// How many answers were encoded since the start.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// Bytes of the cached answers.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn account(&self) {
        let entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        let bytes: u64 = entries
            .values()
            .filter_map(|e| e.answer.get())
            .map(|a| a.len() as u64)
            .sum();
        drop(entries);
        // By difference, so that servers sharing one process's recorder (tests, embedded
        // fleets) add up instead of overwriting each other.
        let before = self.bytes.swap(bytes, Ordering::Relaxed);
        metrics::snapshot_cache_bytes(bytes as f64 - before as f64);
    }
}

/// Encodes the table's get-table answer, refusing a table that fails its checksum.
fn build(table: &CompactTable) -> Result<AlignedVec, ErrorReply> {
    let damaged = || {
        ErrorReply::new(
            ErrorCode::Internal,
            format!(
                "the resident copy of table {} fails its checksum; it is being repaired",
                table.name()
            ),
        )
    };
    if !table.verify() {
        return Err(damaged());
    }
    let snapshot = snapshot::encode(&table.to_map());
    if !table.verify() {
        return Err(damaged());
    }
    Ok(wire::archive_response(&Response::Table {
        version: table.version().get(),
        snapshot,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::NodeInterner;
    use memds_proto::synth::{self, SynthConfig};

    fn table(seed: u64) -> Arc<CompactTable> {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 20_000,
                seed,
                ..SynthConfig::default()
            },
            0,
        );
        Arc::new(CompactTable::new(&map, &mut NodeInterner::default()))
    }

    fn decoded(answer: &AlignedVec) -> memds_proto::TableMap {
        match wire::decode_response(answer).expect("a valid answer") {
            Response::Table { snapshot, .. } => {
                snapshot::decode(&snapshot, u64::MAX).expect("a valid snapshot")
            }
            other => panic!("not a table: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_build_per_version() {
        let cache = Arc::new(SnapshotCache::default());
        let t = table(1);
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, t) = (Arc::clone(&cache), Arc::clone(&t));
                tokio::spawn(async move { cache.answer(t).await.expect("answer") })
            })
            .collect();
        let mut answers = Vec::new();
        for c in callers {
            answers.push(c.await.expect("join"));
        }
        assert_eq!(cache.builds(), 1, "one encoding for eight callers");
        assert!(answers.iter().all(|a| Arc::ptr_eq(a, &answers[0])));
        assert_eq!(decoded(&answers[0]), t.to_map());
        assert_eq!(cache.bytes(), answers[0].len() as u64);
        // Later callers of the same version copy the cached answer.
        cache.answer(Arc::clone(&t)).await.expect("answer");
        assert_eq!(cache.builds(), 1);

        // Another version of the table is built once and replaces the entry; publishing a state
        // without the table empties the cache.
        let newer = table(2);
        assert_eq!(
            decoded(&cache.answer(Arc::clone(&newer)).await.expect("answer")),
            newer.to_map()
        );
        assert_eq!(cache.builds(), 2);
        cache.retain_current(&Tables::new());
        assert_eq!(cache.bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_table_is_not_served() {
        let cache = SnapshotCache::default();
        let damaged = Arc::new(table(3).damaged_copy(1234));
        let e = cache.answer(damaged).await.expect_err("damaged");
        assert_eq!(e.code, ErrorCode::Internal, "{e}");
        assert_eq!(cache.bytes(), 0);
    }
}
