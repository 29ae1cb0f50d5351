//! The writer: one thread that owns the log and applies every write, in arrival order.
//!
//! Writes queue on a bounded channel (a full queue answers `overloaded`). The thread takes
//! everything queued, plans each write against the state as the earlier writes of the batch
//! leave it, appends the records of the applied ones to the log with one `fdatasync` (group
//! commit), and only then publishes the new state and answers. A write that fails its checks
//! answers its error and changes nothing; if the log append fails, no write of the batch is
//! published or acknowledged.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use memds_proto::NodeInterner;
use memds_proto::wire::{ErrorCode, ErrorReply, Response, WriteAck};
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

/// Handle to the writer thread.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<WriteJob>,
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
    pub fn sender(&self) -> mpsc::Sender<WriteJob> {
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
    mut rx: mpsc::Receiver<WriteJob>,
) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut working: Tables = (*store.tables()).clone();
        let mut records = Vec::new();
        let mut answers: Vec<(WriteJob, Result<Response, ErrorReply>, &'static str)> =
            Vec::with_capacity(batch.len());
        for job in batch {
            let outcome = plan(&working, &job.write, &mut interner);
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
                    store.publish(working, &interner);
                    interner.purge();
                    Counters::add(&counters.writes, records.len() as u64);
                    crate::server::publish_table_gauges(&store);
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
