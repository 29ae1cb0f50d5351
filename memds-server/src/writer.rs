//! The writer: one thread that owns the log and applies every write, in arrival order.
//!
//! Writes queue on a bounded channel (a full queue answers `overloaded`). The thread takes
//! everything queued, plans each write against the state as the earlier writes of the batch
//! leave it, appends the records of the applied ones to the log with one `fdatasync` (group
//! commit), and only then publishes the new state and answers. A write that fails its checks
//! answers its error and changes nothing; if the log append fails, no write of the batch is
//! published or acknowledged.
//!
//! The thread also reinstalls a table whose resident copy the scrubber found damaged: it
//! rebuilds the table from what the data directory holds (which is exactly what was
//! acknowledged) and publishes that, between write batches.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use memds_proto::wire::{ErrorCode, ErrorReply, Response, WriteAck};
use memds_proto::{CompactTable, NodeInterner};
use tokio::sync::{mpsc, oneshot};

use crate::durable::{Durable, WalRecord};
use crate::store::{Plan, Store, Tables, Write, plan};

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

/// A request to reinstall a table from the data directory.
#[derive(Debug)]
pub struct RepairJob {
    /// The table.
    pub table: String,
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
        counters: Arc<crate::metrics::Counters>,
        queue: usize,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(queue.max(1));
        let thread = thread::Builder::new()
            .name("memds-writer".into())
            .spawn(move || run(durable, interner, store, counters, rx))?;
        Ok(Self { jobs, thread })
    }

    /// The queue's sending side.
    pub fn sender(&self) -> mpsc::Sender<Job> {
        self.jobs.clone()
    }

    /// Stops taking writes, finishes the queued ones, and waits for the thread.
    pub fn shutdown(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

fn run(
    mut durable: Durable,
    mut interner: NodeInterner,
    store: Arc<Store>,
    counters: Arc<crate::metrics::Counters>,
    mut rx: mpsc::Receiver<Job>,
) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = rx.blocking_recv() {
        // A batch of writes, ended early by a repair, which runs after it.
        let mut batch = Vec::new();
        let mut repair = None;
        match first {
            Job::Write(w) => batch.push(w),
            Job::Repair(r) => repair = Some(r),
        }
        while repair.is_none() && !batch.is_empty() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Write(w)) => batch.push(w),
                Ok(Job::Repair(r)) => repair = Some(r),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            write_batch(batch, &mut durable, &mut interner, &store, &counters);
        }
        if let Some(r) = repair {
            let outcome = reinstall(&durable, &mut interner, &store, &r.table);
            let _ = r.reply.send(outcome);
        }
    }
}

/// Plans, logs (one sync), publishes and answers a batch of writes.
fn write_batch(
    batch: Vec<WriteJob>,
    durable: &mut Durable,
    interner: &mut NodeInterner,
    store: &Store,
    counters: &crate::metrics::Counters,
) {
    {
        let mut working: Tables = (*store.tables()).clone();
        let mut records = Vec::new();
        let mut answers: Vec<(WriteJob, Result<Response, ErrorReply>, &'static str)> =
            Vec::with_capacity(batch.len());
        for job in batch {
            let outcome = plan(&working, &job.write, interner);
            let answer = match outcome {
                Ok(Plan::Install(table)) => {
                    let ack = WriteAck {
                        table: table.name().as_str().to_owned(),
                        version: table.version().get(),
                        applied: true,
                    };
                    records.push(record_of(&job.write));
                    working.insert(ack.table.clone(), Arc::new(table));
                    (Ok(Response::Written(ack)), "applied")
                }
                Ok(Plan::Unchanged { table, version }) => (
                    Ok(Response::Written(WriteAck {
                        table,
                        version,
                        applied: false,
                    })),
                    "unchanged",
                ),
                Ok(Plan::Remove { table, version }) => {
                    records.push(record_of(&job.write));
                    working.remove(&table);
                    (Ok(Response::Dropped { table, version }), "applied")
                }
                Err(e) => (Err(e), "error"),
            };
            answers.push((job, answer.0, answer.1));
        }
        let durable_result = if records.is_empty() {
            Ok(())
        } else {
            durable.append(&records)
        };
        match &durable_result {
            Ok(()) => {
                if !records.is_empty() {
                    store.publish(working, interner);
                    interner.purge();
                    Counters::add(&counters.writes, records.len() as u64);
                    crate::server::publish_table_gauges(store);
                    metrics::gauge!("memds_wal_bytes").set(durable.wal_bytes() as f64);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "appending to the write-ahead log; the batch is refused")
            }
        }
        for (job, answer, result) in answers {
            let (response, result) = match (answer, &durable_result) {
                (Ok(_), Err(e)) if result == "applied" => (
                    Response::Error(ErrorReply::new(
                        ErrorCode::Internal,
                        format!("the write could not be made durable: {e}"),
                    )),
                    "error",
                ),
                (Ok(r), _) => (r, result),
                (Err(e), _) => (Response::Error(e), "error"),
            };
            metrics::counter!("memds_writes_total", "op" => job.write.op(), "result" => result)
                .increment(1);
            metrics::histogram!("memds_write_duration_seconds")
                .record(job.arrived.elapsed().as_secs_f64());
            let _ = job.reply.send(response);
        }
        if durable_result.is_ok() && durable.should_compact() {
            let tables = store.tables();
            match durable.compact(tables.values().map(|t| &**t)) {
                Ok(()) => {
                    metrics::counter!("memds_compactions_total").increment(1);
                    metrics::gauge!("memds_wal_bytes").set(durable.wal_bytes() as f64);
                }
                Err(e) => tracing::error!(error = %e, "compacting the write-ahead log"),
            }
        }
    }
}

use crate::metrics::Counters;

/// Rebuilds `name` from the data directory and publishes it, if its resident copy fails its
/// checksum. The directory holds every acknowledged write, and the resident tables are those
/// writes applied in order, so the rebuilt table is what the damaged one should hold.
fn reinstall(
    durable: &Durable,
    interner: &mut NodeInterner,
    store: &Store,
    name: &str,
) -> Repaired {
    match store.table(name) {
        Some(resident) if !resident.verify() => {}
        _ => return Repaired::Intact,
    }
    let recovered = match durable.read_back() {
        Ok(r) => r,
        Err(e) => return Repaired::Failed(format!("reading the data directory: {e}")),
    };
    let mut tables = Tables::new();
    for map in &recovered.tables {
        let t = CompactTable::new(map, interner);
        tables.insert(t.name().as_str().to_owned(), Arc::new(t));
    }
    replay(&mut tables, recovered.records, interner);
    let outcome = match tables.remove(name) {
        Some(t) if t.verify() => {
            let version = t.version().get();
            let mut next = (*store.tables()).clone();
            next.insert(name.to_owned(), t);
            store.publish(next, interner);
            Repaired::Reinstalled { version }
        }
        Some(_) => Repaired::Failed("the table rebuilt from disk fails its checksum".into()),
        None => Repaired::Failed("the data directory does not hold the table".into()),
    };
    drop(tables);
    interner.purge();
    outcome
}

fn record_of(write: &Write) -> WalRecord {
    match write {
        Write::Put { snapshot } => WalRecord::Put {
            snapshot: snapshot.clone(),
        },
        Write::Update(u) => WalRecord::Update(u.clone()),
        Write::Drop { table } => WalRecord::Drop {
            table: table.clone(),
        },
    }
}

/// Applies recovered records to the recovered tables, as the writer would have.
pub fn replay(tables: &mut Tables, records: Vec<WalRecord>, interner: &mut NodeInterner) -> usize {
    let mut applied = 0;
    for r in records {
        let write = match r {
            WalRecord::Put { snapshot } => Write::Put { snapshot },
            WalRecord::Update(u) => Write::Update(u),
            WalRecord::Drop { table } => Write::Drop { table },
        };
        match plan(tables, &write, interner) {
            Ok(Plan::Install(t)) => {
                tables.insert(t.name().as_str().to_owned(), Arc::new(t));
                applied += 1;
            }
            Ok(Plan::Remove { table, .. }) => {
                tables.remove(&table);
                applied += 1;
            }
            Ok(Plan::Unchanged { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "a logged write no longer applies; skipped"),
        }
    }
    interner.purge();
    applied
}
