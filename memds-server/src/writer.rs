//! The writer: one thread that owns the log and applies every write, in arrival order.
//!
//! Writes queue on a bounded channel (a full queue answers `overloaded`). The thread takes
//! everything queued, plans each write against the state as the earlier writes of the batch
//! leave it, appends the records of the applied ones to the log as one frame with one
//! `fdatasync` (group commit), and only then publishes the new state and answers. A write that
//! fails its checks answers its error and changes nothing. If the append fails, nothing of the
//! batch is published, and no answer that depended on it is given: the applied writes, and every
//! other write planned against a table an earlier write of the batch changed, answer `internal`
//! (or `unavailable` while the log is poisoned).
//!
//! Nothing damaged is planned from or persisted: before a write plans from a resident table,
//! what planning reads of it is verified, and before a checkpoint encodes a table, all of it is.
//! An update or a batch reads only the ranges it replaces (and the partitions either side of
//! them), so only the blocks overlapping those and the tree's path to them are verified
//! (`CompactTable::verify_range`): a write costs in proportion to its change, not to the table.
//! A put (compared with the table it replaces) and a drop verify the whole table
//! (`CompactTable::verify`), and so does a checkpoint. A table found damaged is rebuilt from the
//! data directory (which holds exactly what was acknowledged, and never a damaged copy) and
//! published first. Damage outside the ranges an update reads is left where it is, for the
//! scrubber, which verifies every table whole. The scrubber's repairs come here too, between
//! batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use memds_proto::model::BatchEdit;
use memds_proto::model::NodeSpec;
use memds_proto::wire::{ErrorCode, ErrorReply, Response, WriteAck};
use memds_proto::{CompactTable, NodeInterner, snapshot};
use tokio::sync::{mpsc, oneshot};

use crate::durable::{Durable, DurableError, LogBatch, Origin, RecoveryMode, WalRecord};
use crate::metrics::{self, Counters, RepairResult, WriteResult};
use crate::store::{Plan, Store, Tables, Write, plan, plan_decoded};

/// A queued write and where its answer goes.
#[derive(Debug)]
pub struct WriteJob {
    /// The write.
    pub write: Write,
    /// The answer.
    pub reply: oneshot::Sender<Response>,
    /// When it arrived, for the latency histogram.
    pub arrived: Instant,
}

/// What the writer thread is asked to do.
#[derive(Debug)]
pub enum Job {
    /// Apply a client's write.
    Write(WriteJob),
    /// Reinstall a damaged table from the data directory.
    Repair(RepairJob),
}

/// A request to reinstall a damaged table from the data directory, or from a peer's copy
/// when the data directory cannot provide a good one.
#[derive(Debug)]
pub struct RepairJob {
    /// The table.
    pub table: String,
    /// A peer's snapshot of the table: installed (at the damaged copy's version only) when the
    /// data directory cannot rebuild it, then checkpointed so the disk holds a good copy again.
    pub from_peer: Option<Vec<u8>>,
    /// The outcome.
    pub reply: oneshot::Sender<Repaired>,
}

/// What a repair did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repaired {
    /// The resident table verifies (or is gone): nothing to do.
    Intact,
    /// The table was rebuilt from the data directory and published.
    Reinstalled {
        /// Its version.
        version: u64,
    },
    /// The table could not be rebuilt; the damaged copy is still served.
    Failed(String),
}

/// The writer's settings.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Writes queued at most.
    pub queue: usize,
    /// The largest uncompressed archive a put's snapshot may declare.
    pub max_archive_bytes: u64,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    thread: thread::JoinHandle<()>,
}

impl Writer {
    /// Starts the thread over an opened log and the recovered state.
    pub fn start(
        durable: Durable,
        interner: NodeInterner,
        store: Arc<Store>,
        counters: Arc<Counters>,
        config: WriterConfig,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(config.queue.max(1));
        let mut state = State {
            durable,
            interner,
            store,
            counters,
            max_archive_bytes: config.max_archive_bytes,
        };
        let thread = thread::Builder::new()
            .name("memds-writer".into())
            .spawn(move || state.run(rx))?;
        Ok(Self { jobs, thread })
    }

    /// The queue's sending side.
    pub fn sender(&self) -> mpsc::Sender<Job> {
        self.jobs.clone()
    }

    /// Stops taking writes, finishes the queued ones, marks the clean shutdown in the log, and
    /// waits for the thread.
    pub fn shutdown(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// Rebuilds the tables from recovered records, as the writer applied them. Each record was
/// applied when it was logged, so each must apply again: in [`RecoveryMode::Strict`] one that
/// does not is an error naming where it was read; in [`RecoveryMode::Salvage`] it is skipped and
/// listed in the report's `lost`.
pub fn replay(
    records: Vec<(Origin, WalRecord)>,
    interner: &mut NodeInterner,
    mode: RecoveryMode,
) -> Result<Replayed, String> {
    let mut out = Replayed::default();
    for (origin, r) in records {
        let write = match r {
            WalRecord::Put { snapshot } => Write::Put { snapshot },
            WalRecord::Update(u) => {
                let mut u = BatchEdit::from(u);
                keep_last_node_records(&mut u.nodes, &origin);
                Write::Update(u)
            }
            WalRecord::Batch(u) => {
                let mut u = BatchEdit::from(u);
                keep_last_node_records(&mut u.nodes, &origin);
                Write::Batch(u)
            }
            WalRecord::Drop { table, version } => Write::Drop {
                table,
                version: Some(version),
            },
            WalRecord::Closed => continue,
        };
        // Logged snapshots passed the bound in force when they were written, and their frame
        // checksums passed: a lower bound set since must not refuse them.
        match plan(&out.tables, &write, interner, u64::MAX) {
            Ok(p) => {
                apply(&mut out.tables, p);
                out.applied += 1;
            }
            Err(e) => {
                let what = format!(
                    "the write logged in {origin} ({}) no longer applies: {e}",
                    write.op().as_str()
                );
                match mode {
                    RecoveryMode::Strict => return Err(what),
                    RecoveryMode::Salvage => out.lost.push(what),
                }
            }
        }
    }
    interner.purge();
    Ok(out)
}

/// An update logged before an update's node list had to name each id once
/// ([`CompactTable::check_update`]) may repeat an id: it was applied with the last record of
/// each id winning. Replay keeps only those records, so the write applies again exactly as it
/// did instead of stopping recovery.
fn keep_last_node_records(nodes: &mut Vec<NodeSpec>, origin: &Origin) {
    let mut seen = HashSet::new();
    let mut kept: Vec<NodeSpec> = nodes
        .iter()
        .rev()
        .filter(|n| seen.insert(n.id))
        .cloned()
        .collect();
    if kept.len() == nodes.len() {
        return;
    }
    kept.reverse();
    tracing::warn!(%origin, "a logged update repeats a node id; replaying it as it was applied, with the last record of each id");
    *nodes = kept;
}

/// What [`replay`] rebuilt.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The tables and tombstones.
    pub tables: Tables,
    /// Records applied.
    pub applied: usize,
    /// Salvage only: records that did not apply.
    pub lost: Vec<String>,
}

/// The writer thread's state.
struct State {
    durable: Durable,
    interner: NodeInterner,
    store: Arc<Store>,
    counters: Arc<Counters>,
    max_archive_bytes: u64,
}

/// What planning one write of a batch gave.
struct Answer {
    job: WriteJob,
    outcome: Result<Response, ErrorReply>,
    applied: bool,
    /// Planned against a table an earlier write of the batch changed: its answer holds only if
    /// the batch is logged.
    depends: bool,
}

impl State {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        const MAX_BATCH: usize = 256;
        while let Some(first) = rx.blocking_recv() {
            // A batch of writes, ended early by a repair, which runs after it.
            let mut batch = Vec::new();
            let mut repair = None;
            match first {
                Job::Write(w) => batch.push(w),
                Job::Repair(r) => repair = Some(r),
            }
            // Lets a test hold the writer here so the writes it queues meanwhile form one batch.
            fail::fail_point!("writer-batch");
            while repair.is_none() && !batch.is_empty() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Job::Write(w)) => batch.push(w),
                    Ok(Job::Repair(r)) => repair = Some(r),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                if self.durable.poisoned().is_some() {
                    // A new log is the only way writes can be taken again.
                    self.compact();
                }
                self.write_batch(batch);
            }
            if let Some(r) = repair {
                let outcome = self.reinstall(&r.table, r.from_peer.as_deref());
                let _ = r.reply.send(outcome);
            }
        }
        if let Err(e) = self.durable.close() {
            tracing::warn!(error = %e, "marking the clean shutdown in the log");
        }
    }

    /// Plans, logs (one sync), publishes and answers a batch of writes.
    fn write_batch(&mut self, batch: Vec<WriteJob>) {
        let mut working: Tables = (*self.store.tables()).clone();
        let mut verified: HashSet<String> = HashSet::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut records = Vec::new();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for mut job in batch {
            let decoded = match job.write.decode(self.max_archive_bytes) {
                Ok(d) => d,
                Err(e) => {
                    answers.push(Answer {
                        job,
                        outcome: Err(e),
                        applied: false,
                        depends: false,
                    });
                    continue;
                }
            };
            let name = decoded.table().to_owned();
            let depends = touched.contains(&name);
            // A table an earlier write of the batch built was not read from memory; one verified
            // whole already needs no second look.
            if !depends && !verified.contains(&name) {
                match self.ensure_intact(&name, &mut working, decoded.read_ranges().as_deref()) {
                    Ok(true) => {
                        verified.insert(name.clone());
                    }
                    Ok(false) => {}
                    Err(e) => {
                        answers.push(Answer {
                            job,
                            outcome: Err(e),
                            applied: false,
                            depends,
                        });
                        continue;
                    }
                }
            }
            let (outcome, applied) = match plan_decoded(&working, decoded, &mut self.interner) {
                Ok(Plan::Install(table)) => {
                    let ack = WriteAck {
                        table: name.clone(),
                        version: table.version().get(),
                        applied: true,
                    };
                    records.push(record_of(&mut job.write));
                    working.insert(name.clone(), Arc::new(table));
                    touched.insert(name);
                    (Ok(Response::Written(ack)), true)
                }
                Ok(Plan::Remove { table, version }) => {
                    records.push(WalRecord::Drop {
                        table: table.clone(),
                        version,
                    });
                    working.remove(&table, version);
                    touched.insert(name);
                    (Ok(Response::Dropped { table, version }), true)
                }
                Ok(Plan::AlreadyDropped { table, version }) => {
                    (Ok(Response::Dropped { table, version }), false)
                }
                Ok(Plan::Unchanged { table, version }) => (
                    Ok(Response::Written(WriteAck {
                        table,
                        version,
                        applied: false,
                    })),
                    false,
                ),
                Err(e) => (Err(e), false),
            };
            answers.push(Answer {
                job,
                outcome,
                applied,
                depends,
            });
        }
        let logged = records.len() as u64;
        let durable_result = if records.is_empty() {
            Ok(())
        } else {
            self.durable.append(records)
        };
        match &durable_result {
            Ok(()) if logged > 0 => {
                self.store.publish(working, &self.interner);
                self.interner.purge();
                Counters::add(&self.counters.writes, logged);
                self.store.publish_gauges();
                metrics::wal_bytes(self.durable.wal_bytes());
            }
            Ok(()) => drop(working),
            Err(e) => {
                drop(working);
                self.interner.purge();
                tracing::error!(error = %e, "appending to the write-ahead log; the batch is refused");
            }
        }
        for a in answers {
            let response = match (a.outcome, &durable_result) {
                (Ok(_) | Err(_), Err(e)) if a.applied || a.depends => {
                    let code = match e {
                        DurableError::Poisoned { .. } => ErrorCode::Unavailable,
                        _ => ErrorCode::Internal,
                    };
                    Response::Error(ErrorReply::new(
                        code,
                        format!("the write could not be made durable: {e}"),
                    ))
                }
                (Ok(r), _) => r,
                (Err(e), _) => Response::Error(e),
            };
            let result = match &response {
                Response::Error(_) => WriteResult::Error,
                _ if a.applied => WriteResult::Applied,
                _ => WriteResult::Unchanged,
            };
            metrics::write_done(a.job.write.op(), result, a.job.arrived.elapsed());
            let _ = a.job.reply.send(response);
        }
        if durable_result.is_ok() && self.durable.should_compact() {
            self.compact();
        }
    }

    /// Checks the resident copy of `name` (in `working`, as published): the blocks overlapping
    /// `ranges` (and the path to them) if given, else all of it. If it is damaged, rebuilds it
    /// from the data directory and publishes the rebuilt copy before anything is planned from
    /// it. Answers whether the whole table is now known intact (absent, verified whole, or
    /// rebuilt), so a later write of the batch need not check it again.
    fn ensure_intact(
        &mut self,
        name: &str,
        working: &mut Tables,
        ranges: Option<&[(u64, u64)]>,
    ) -> Result<bool, ErrorReply> {
        let intact = match (working.get(name), ranges) {
            (None, _) => return Ok(true),
            (Some(t), None) => t.verify(),
            (Some(t), Some(ranges)) => ranges
                .iter()
                .all(|&(from, end_inclusive)| t.verify_range(from, end_inclusive)),
        };
        if intact {
            return Ok(ranges.is_none());
        }
        metrics::scrub_damaged();
        tracing::error!(table = %name, "a write found the resident table damaged; rebuilding it from the data directory first");
        match self.rebuild(name) {
            Ok(t) => {
                metrics::scrub_repair(RepairResult::Repaired);
                working.insert(name.to_owned(), Arc::clone(&t));
                self.publish_one(name, t);
                Ok(true)
            }
            Err(reason) => {
                metrics::scrub_repair(RepairResult::Failed);
                Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!(
                        "the resident copy of table {name} is damaged and could not be rebuilt ({reason}); the write is refused"
                    ),
                ))
            }
        }
    }

    /// Rebuilds `name` from the data directory and publishes it, if its resident copy fails its
    /// checksum. The directory holds every acknowledged write, and the resident tables are those
    /// writes applied in order, so the rebuilt table is what the damaged one should hold.
    fn reinstall(&mut self, name: &str, from_peer: Option<&[u8]>) -> Repaired {
        let resident_version = match self.store.table(name) {
            Some(resident) if !resident.verify() => resident.version().get(),
            _ => return Repaired::Intact,
        };
        let disk = match self.rebuild(name) {
            Ok(t) => {
                let version = t.version().get();
                self.publish_one(name, t);
                return Repaired::Reinstalled { version };
            }
            Err(reason) => reason,
        };
        let Some(snapshot) = from_peer else {
            return Repaired::Failed(disk);
        };
        let map = match memds_proto::snapshot::decode(snapshot, self.max_archive_bytes) {
            Ok(m) => m,
            Err(e) => return Repaired::Failed(format!("{disk}; the peer's copy: {e}")),
        };
        if map.name().as_str() != name || map.version().get() != resident_version {
            return Repaired::Failed(format!(
                "{disk}; the peer sent {:?} at version {}, not {name:?} at {resident_version}",
                map.name().as_str(),
                map.version().get()
            ));
        }
        let table = Arc::new(CompactTable::new(&map, &mut self.interner));
        drop(map);
        self.publish_one(name, table);
        // The data directory could not give this table back: checkpoint now, so it holds a
        // good copy again before any later restart needs one.
        self.compact();
        Repaired::Reinstalled {
            version: resident_version,
        }
    }

    /// The table `name` as the data directory holds it, verified.
    fn rebuild(&mut self, name: &str) -> Result<Arc<CompactTable>, String> {
        let recovered = self
            .durable
            .read_back()
            .map_err(|e| format!("reading the data directory: {e}"))?;
        let replayed = replay(recovered.records, &mut self.interner, RecoveryMode::Strict)
            .map_err(|e| format!("replaying the data directory: {e}"))?;
        let outcome = match replayed.tables.get(name) {
            Some(t) if t.verify() => Ok(Arc::clone(t)),
            Some(_) => Err("the table rebuilt from disk fails its checksum".into()),
            None => Err("the data directory does not hold the table".into()),
        };
        // The other rebuilt tables go before the purge, so their node records can go too.
        drop(replayed);
        self.interner.purge();
        outcome
    }

    /// Publishes the current state with `name` replaced by `table`.
    fn publish_one(&mut self, name: &str, table: Arc<CompactTable>) {
        let mut next = (*self.store.tables()).clone();
        next.insert(name.to_owned(), table);
        self.store.publish(next, &self.interner);
        self.interner.purge();
    }

    /// Checkpoints every table and tombstone and starts a new log. Each table is verified
    /// before and after it is encoded, and a damaged one is rebuilt from the data directory
    /// first, so a checkpoint never holds a damaged copy. A failure leaves the log as it was.
    fn compact(&mut self) {
        let damaged: Vec<String> = self
            .store
            .tables()
            .iter()
            .filter(|(_, t)| !t.verify())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &damaged {
            let mut working = (*self.store.tables()).clone();
            if let Err(e) = self.ensure_intact(name, &mut working, None) {
                metrics::compaction_failed();
                tracing::error!(error = %e.message, "compaction postponed");
                return;
            }
        }
        match checkpoint(&mut self.durable, &self.store.tables()) {
            Ok(()) => {
                metrics::compacted();
                metrics::wal_bytes(self.durable.wal_bytes());
            }
            Err(e) => {
                metrics::compaction_failed();
                tracing::error!(error = %e, "compacting the write-ahead log")
            }
        }
    }
}

/// Writes a checkpoint of `tables` (every table and tombstone) and starts a new log. Each
/// table is verified after it is encoded (the writer verified it before), so a table damaged
/// meanwhile is never persisted: the checkpoint is refused instead.
pub fn checkpoint(durable: &mut Durable, tables: &Tables) -> Result<(), String> {
    let mut records = Vec::with_capacity(tables.len());
    for t in tables.values() {
        let snapshot = snapshot::encode(&t.to_map());
        if !t.verify() {
            return Err(format!(
                "table {} fails its checksum; not checkpointed",
                t.name()
            ));
        }
        records.push(WalRecord::Put { snapshot });
    }
    records.extend(tables.tombstones().map(|(table, version)| WalRecord::Drop {
        table: table.clone(),
        version,
    }));
    durable
        .compact(records.into_iter())
        .map_err(|e| e.to_string())
}

/// Applies a plan to `tables` (a plan from [`plan`] against those same tables).
pub fn apply(tables: &mut Tables, p: Plan) {
    match p {
        Plan::Install(t) => tables.insert(t.name().as_str().to_owned(), Arc::new(t)),
        Plan::Remove { table, version } => {
            tables.remove(&table, version);
        }
        Plan::AlreadyDropped { .. } | Plan::Unchanged { .. } => {}
    }
}

/// The log record of an installing write: one record per write, a batch included. A put's
/// snapshot and a batch's ranges move into the record (the job keeps only what its metrics
/// need), so a big write is not copied again.
fn record_of(write: &mut Write) -> WalRecord {
    match write {
        Write::Put { snapshot } | Write::Pulled { snapshot, .. } => WalRecord::Put {
            snapshot: std::mem::take(snapshot),
        },
        // An update can be large: its ranges and nodes move into the record too. Both kinds
        // are logged as batches (a one-range update is a batch of one range).
        Write::Update(u) | Write::Batch(u) => WalRecord::Batch(LogBatch::from(BatchEdit {
            table: u.table.clone(),
            base_version: u.base_version,
            version: u.version,
            nodes: std::mem::take(&mut u.nodes),
            ranges: std::mem::take(&mut u.ranges),
        })),
        Write::Drop { .. } => unreachable!("only puts and updates install a table"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::TableMap;
    use memds_proto::synth::{self, SynthConfig};

    fn map(index: usize, version: u64) -> TableMap {
        let m = synth::generate_table(
            &SynthConfig {
                // Table 1 is far bigger than table 0, so a log holding it outgrows a checkpoint
                // holding table 0, and a checkpoint follows.
                partitions: 4000 * (1 + 9 * index),
                tables: 2,
                ..SynthConfig::default()
            },
            index,
        );
        let mut spec = memds_proto::model::TableSpec::from(&m);
        spec.version = version;
        TableMap::try_from(spec).expect("valid")
    }

    fn start(dir: &std::path::Path) -> (Arc<Store>, Writer) {
        let mut config = crate::ServerConfig::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.to_owned(),
        );
        // A one-byte log bound: a checkpoint follows every batch that outgrows the last one.
        config.compact_wal_bytes = 1;
        crate::server::start_writer(&config, Arc::new(Counters::default())).expect("writer starts")
    }

    fn write(writer: &Writer, write: Write) -> Response {
        let (reply, answer) = oneshot::channel();
        writer
            .sender()
            .blocking_send(Job::Write(WriteJob {
                write,
                reply,
                arrived: Instant::now(),
            }))
            .expect("queued");
        answer.blocking_recv().expect("answered")
    }

    /// Publishes a copy of `name` with one bit flipped, as a memory fault would leave it.
    fn damage(store: &Store, name: &str, bit: usize) {
        let mut tables = (*store.tables()).clone();
        let damaged = tables.get(name).expect("held").damaged_copy(bit);
        tables.insert(name.to_owned(), Arc::new(damaged));
        store.publish(tables, &NodeInterner::default());
    }

    #[test]
    fn a_logged_update_that_repeats_a_node_id_replays_as_it_was_applied() {
        let a = map(0, 1);
        let name = a.name().as_str().to_owned();
        let node = |addr: &str| NodeSpec {
            id: 999_999,
            addr: addr.into(),
            az: "az-9".into(),
        };
        // As a release that took such updates logged one: the last record of the id won.
        let mut update = BatchEdit::from(synth::split_update(&a, 3, 9_000_000));
        update.nodes = vec![node("10.0.0.1:7000"), node("10.0.0.2:7000")];
        let origin = |offset| Origin {
            path: "wal-00000000000000000001.log".into(),
            offset,
        };
        let records = vec![
            (
                origin(16),
                WalRecord::Put {
                    snapshot: snapshot::encode(&a),
                },
            ),
            (
                origin(4096),
                WalRecord::Batch(LogBatch::from(update.clone())),
            ),
        ];
        let mut interner = NodeInterner::default();
        let replayed = replay(records, &mut interner, RecoveryMode::Strict).expect("replays");
        let t = replayed.tables.get(&name).expect("held");
        assert_eq!(t.version().get(), update.version);
        assert!(
            t.node(memds_proto::NodeId::new(999_999))
                .is_some_and(|n| &*n.addr == "10.0.0.2:7000"),
            "the last record of the id won"
        );
        // Offered now, the same update is refused before the version rules.
        let mut tables = Tables::new();
        let p = plan(
            &tables,
            &Write::Put {
                snapshot: snapshot::encode(&a),
            },
            &mut interner,
            u64::MAX,
        )
        .expect("put");
        apply(&mut tables, p);
        match plan(&tables, &Write::Batch(update), &mut interner, u64::MAX) {
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
                assert!(
                    e.message.contains("node id 999999 is listed twice"),
                    "{}",
                    e.message
                );
            }
            Ok(_) => panic!("an update repeating a node id was planned"),
        }
    }

    #[test]
    fn a_damaged_resident_table_is_neither_checkpointed_nor_planned_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, writer) = start(dir.path());
        let (a, b) = (map(0, 1), map(1, 1));
        let name = a.name().as_str().to_owned();
        let put = |m: &TableMap| Write::Put {
            snapshot: snapshot::encode(m),
        };
        assert!(matches!(write(&writer, put(&a)), Response::Written(_)));
        // The log bound is one byte: the next batch is followed by a checkpoint of every table,
        // the damaged one included.
        damage(&store, &name, 77_777);
        assert!(matches!(write(&writer, put(&b)), Response::Written(_)));
        // The checkpoint follows the batch's answers: a job queued now runs after it.
        let (reply, done) = oneshot::channel();
        writer
            .sender()
            .blocking_send(Job::Repair(RepairJob {
                table: "no-such-table".into(),
                from_peer: None,
                reply,
            }))
            .expect("queued");
        assert_eq!(done.blocking_recv().expect("answered"), Repaired::Intact);
        assert!(
            store.table(&name).is_some_and(|t| t.verify()),
            "the checkpoint's verification repaired the resident copy"
        );
        // An update planned from a damaged copy would splice damaged partitions into the new
        // version: the writer verifies the range it replaces and rebuilds the table first.
        damage(&store, &name, 4_242);
        let damaged = store.table(&name).expect("held");
        let index = (0..a.partitions().len())
            .find(|&i| !damaged.verify_range(a.partitions()[i].start, a.end_inclusive(i)))
            .expect("the damage is in some partition's range");
        drop(damaged);
        let update = BatchEdit::from(synth::split_update(&a, index, 9_000_000));
        let expected = {
            let mut tables = Tables::new();
            let mut i = NodeInterner::default();
            let p = plan(&tables, &put(&a), &mut i, u64::MAX).expect("put");
            apply(&mut tables, p);
            let p =
                plan(&tables, &Write::Update(update.clone()), &mut i, u64::MAX).expect("update");
            apply(&mut tables, p);
            tables.get(&name).expect("updated").to_map()
        };
        assert!(matches!(write(&writer, Write::Update(update)), Response::Written(a) if a.applied));
        assert_eq!(store.table(&name).expect("held").to_map(), expected);
        writer.shutdown();

        // What the directory holds (checkpoint and log) is the acknowledged state, undamaged.
        let (store, writer) = start(dir.path());
        assert_eq!(store.table(&name).expect("held").to_map(), expected);
        assert_eq!(store.table(b.name().as_str()).expect("held").to_map(), b);
        writer.shutdown();
    }
}
