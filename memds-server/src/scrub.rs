//! Continuous verification: a background thread recomputes every resident table's checksum on
//! a schedule, and has the writer reinstall a damaged table from the data directory.
//!
//! A table's checksum is computed when the table is built and covers everything a lookup reads
//! (see `memds_proto::compact`), so a flipped bit anywhere in a resident table is found by the
//! next pass. A damaged table is reported (log and `memds_scrub_damaged_total`) and rebuilt from
//! the data directory, which holds exactly what was acknowledged; if that fails the damaged copy
//! stays in service and `memds_scrub_repairs_total{result="failed"}` says so (the alert
//! `MemDSResidentRepairFailed` pages). A server with peers then asks the fleet for a peer's copy
//! of the same version (`crate::fleet`), installs it and checkpoints it
//! (`memds_scrub_repairs_total{result="from_peer"}`).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::{self, RepairResult};
use crate::store::Store;
use crate::writer::{Job, RepairJob, Repaired};

/// Handle to the scrubbing thread.
#[derive(Debug)]
pub struct Scrubber {
    stop: std_mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
    passes: watch::Receiver<u64>,
}

impl Scrubber {
    /// Starts a thread that runs a pass every `every`, the first one `every` after the start.
    /// Tables the data directory could not repair are sent to `from_peers`, if given.
    pub fn start(
        store: Arc<Store>,
        jobs: mpsc::Sender<Job>,
        every: Duration,
        from_peers: Option<mpsc::Sender<String>>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = std_mpsc::channel::<()>();
        let (passes_tx, passes) = watch::channel(0u64);
        let thread = thread::Builder::new()
            .name("memds-scrub".into())
            .spawn(move || {
                while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let report = scrub_pass_with(&store, &jobs, |table| {
                        if let Some(tx) = &from_peers
                            && tx.try_send(table.to_owned()).is_err()
                        {
                            tracing::warn!(%table, "the fleet cannot take a repair request now");
                        }
                    });
                    tracing::debug!(?report, "scrubbed the resident tables");
                    passes_tx.send_modify(|n| *n += 1);
                }
            })?;
        Ok(Self {
            stop,
            thread,
            passes,
        })
    }

    /// The number of passes completed so far, updated at the end of each (tests wait on it
    /// instead of sleeping through an interval).
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.clone()
    }

    /// Stops the thread (after the pass in progress, if any) and waits for it.
    pub fn shutdown(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("the scrubbing thread panicked");
        }
    }
}

/// What one pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Tables verified.
    pub tables: u64,
    /// Bytes the checksums covered.
    pub bytes: u64,
    /// Tables whose resident copy failed its checksum.
    pub damaged: u64,
    /// Damaged tables reinstalled from the data directory.
    pub repaired: u64,
    /// Damaged tables that could not be reinstalled.
    pub failed: u64,
}

/// Verifies every resident table once, asking the writer (through `jobs`) to reinstall each
/// damaged one. Blocks on the writer's answers: call it off the async runtime.
pub fn scrub_pass(store: &Store, jobs: &mpsc::Sender<Job>) -> PassReport {
    scrub_pass_with(store, jobs, |_| {})
}

/// [`scrub_pass`], calling `unrepaired` with each table the data directory could not repair.
pub fn scrub_pass_with(
    store: &Store,
    jobs: &mpsc::Sender<Job>,
    mut unrepaired: impl FnMut(&str),
) -> PassReport {
    if injected_damage() {
        let tables = store.tables();
        if let Some((name, t)) = tables.iter().next() {
            store.inject_damage(name, Arc::new(t.damaged_copy(7)));
        }
    }
    let mut report = PassReport::default();
    for (name, table) in store.tables().iter() {
        report.tables += 1;
        report.bytes += table.verified_bytes() as u64;
        if table.verify() {
            continue;
        }
        report.damaged += 1;
        metrics::scrub_damaged();
        tracing::error!(
            table = %name,
            version = table.version().get(),
            "the resident table fails its checksum; reinstalling it from the data directory"
        );
        let (reply, answer) = oneshot::channel();
        let outcome = jobs
            .blocking_send(Job::Repair(RepairJob {
                table: name.clone(),
                from_peer: None,
                reply,
            }))
            .map_err(|_| "the writer has stopped".to_owned())
            .and_then(|()| {
                answer
                    .blocking_recv()
                    .map_err(|_| "the writer has stopped".to_owned())
            });
        match outcome {
            Ok(Repaired::Reinstalled { version }) => {
                report.repaired += 1;
                metrics::scrub_repair(RepairResult::Repaired);
                tracing::warn!(table = %name, version, "reinstalled the table from the data directory");
            }
            // Replaced or dropped by a write meanwhile: the damaged copy is gone.
            Ok(Repaired::Intact) => report.repaired += 1,
            Ok(Repaired::Failed(reason)) | Err(reason) => {
                report.failed += 1;
                metrics::scrub_repair(RepairResult::Failed);
                tracing::error!(table = %name, %reason, "could not reinstall the damaged table; it stays in service");
                unrepaired(name);
            }
        }
    }
    metrics::scrub_pass(report.bytes);
    report
}

/// Whether a test asked (failpoint `scrub-damage`) for a resident table to be damaged before
/// this pass, as a memory fault would.
fn injected_damage() -> bool {
    fail::fail_point!("scrub-damage", |_| true);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{self, Durable, RecoveryMode};
    use crate::store::{Tables, Write};
    use crate::writer::{WriteJob, Writer, WriterConfig};
    use memds_proto::synth::{self, SynthConfig};
    use memds_proto::wire::Response;
    use memds_proto::{NodeInterner, TableMap, snapshot};
    use std::time::Instant;

    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<Store>,
        writer: Writer,
        map: TableMap,
    }

    /// A writer over a fresh data directory holding one acknowledged table.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (durable, _) =
            Durable::open(dir.path(), 64 << 20, RecoveryMode::Strict).expect("data directory");
        let store = Arc::new(Store::default());
        let writer = Writer::start(
            durable,
            NodeInterner::default(),
            Arc::clone(&store),
            Arc::new(crate::metrics::Counters::default()),
            WriterConfig {
                queue: 16,
                max_archive_bytes: memds_proto::snapshot::DEFAULT_MAX_ARCHIVE_BYTES,
            },
        )
        .expect("writer");
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 5000,
                ..SynthConfig::default()
            },
            0,
        );
        let (reply, answer) = oneshot::channel();
        writer
            .sender()
            .blocking_send(Job::Write(WriteJob {
                write: Write::Put {
                    snapshot: snapshot::encode(&map),
                },
                reply,
                arrived: Instant::now(),
            }))
            .expect("queued");
        assert!(matches!(
            answer.blocking_recv().expect("answered"),
            Response::Written(_)
        ));
        Fixture {
            dir,
            store,
            writer,
            map,
        }
    }

    /// Publishes a copy of the table with one bit flipped, as a memory fault would leave it.
    fn damage(f: &Fixture, bit: usize) {
        let name = f.map.name().as_str();
        let mut tables: Tables = (*f.store.tables()).clone();
        let damaged = tables.get(name).expect("held").damaged_copy(bit);
        assert!(!damaged.verify());
        tables.insert(name.to_owned(), Arc::new(damaged));
        f.store.publish(tables, &NodeInterner::default());
    }

    #[test]
    fn a_damaged_table_is_found_and_reinstalled_from_the_data_directory() {
        let f = fixture();
        let name = f.map.name().as_str();
        let jobs = f.writer.sender();
        let clean = scrub_pass(&f.store, &jobs);
        assert_eq!((clean.tables, clean.damaged), (1, 0));
        assert!(clean.bytes > 5000, "{clean:?}");
        let checksum = f.store.table(name).expect("held").checksum();

        for bit in [0, 12_345, 99_999] {
            damage(&f, bit);
            let report = scrub_pass(&f.store, &jobs);
            assert_eq!(
                (report.damaged, report.repaired, report.failed),
                (1, 1, 0),
                "bit {bit}: {report:?}"
            );
            let t = f.store.table(name).expect("still held");
            assert!(t.verify());
            assert_eq!(t.checksum(), checksum);
            assert_eq!(
                t.to_map(),
                f.map,
                "the reinstalled table is the acknowledged one"
            );
        }
        assert_eq!(scrub_pass(&f.store, &jobs).damaged, 0);
        drop(jobs);
        f.writer.shutdown();
    }

    #[test]
    fn damage_the_data_directory_cannot_repair_is_reported_and_the_table_stays() {
        let f = fixture();
        let name = f.map.name().as_str();
        let jobs = f.writer.sender();
        damage(&f, 7);
        // The directory lost the table (an operator wiped it, a disk failed).
        std::fs::remove_file(durable::log_path(f.dir.path(), 1)).expect("removing the log");
        let report = scrub_pass(&f.store, &jobs);
        assert_eq!(
            (report.damaged, report.repaired, report.failed),
            (1, 0, 1),
            "{report:?}"
        );
        assert!(
            f.store.table(name).is_some_and(|t| !t.verify()),
            "a table that cannot be rebuilt is reported, not dropped"
        );
        drop(jobs);
        f.writer.shutdown();
    }

    #[test]
    fn a_peer_copy_replaces_what_the_data_directory_cannot_and_is_checkpointed() {
        let f = fixture();
        let name = f.map.name().as_str().to_owned();
        damage(&f, 7);
        std::fs::remove_file(durable::log_path(f.dir.path(), 1)).expect("removing the log");
        let mut unrepaired = Vec::new();
        let jobs = f.writer.sender();
        let report = scrub_pass_with(&f.store, &jobs, |t| unrepaired.push(t.to_owned()));
        assert_eq!((report.damaged, report.failed), (1, 1), "{report:?}");
        assert_eq!(unrepaired, vec![name.clone()]);

        let repair = |snapshot: Vec<u8>| {
            let (reply, answer) = oneshot::channel();
            jobs.blocking_send(Job::Repair(RepairJob {
                table: name.clone(),
                from_peer: Some(snapshot),
                reply,
            }))
            .expect("queued");
            answer.blocking_recv().expect("answered")
        };
        // A peer copy of another version is refused: the damaged copy stays.
        let mut json: serde_json::Value = serde_json::from_str(&f.map.to_json()).expect("json");
        json["version"] = (f.map.version().get() + 1).into();
        let newer = TableMap::from_json(&json.to_string()).expect("valid");
        assert!(matches!(
            repair(snapshot::encode(&newer)),
            Repaired::Failed(_)
        ));
        assert!(f.store.table(&name).is_some_and(|t| !t.verify()));
        // The peer's copy of the same version is installed.
        assert_eq!(
            repair(snapshot::encode(&f.map)),
            Repaired::Reinstalled {
                version: f.map.version().get()
            }
        );
        let t = f.store.table(&name).expect("held");
        assert!(t.verify());
        assert_eq!(t.to_map(), f.map);
        drop(jobs);
        f.writer.shutdown();
        // The checkpoint made the data directory whole again: it recovers the table.
        let (_, recovered) =
            Durable::open(f.dir.path(), 64 << 20, RecoveryMode::Strict).expect("recovers");
        let replayed = crate::writer::replay(
            recovered.records,
            &mut NodeInterner::default(),
            RecoveryMode::Strict,
        )
        .expect("replays");
        assert_eq!(replayed.tables.get(&name).expect("held").to_map(), f.map);
    }

    #[test]
    fn the_thread_runs_passes_and_stops() {
        let f = fixture();
        damage(&f, 3);
        let s = Scrubber::start(
            Arc::clone(&f.store),
            f.writer.sender(),
            Duration::from_millis(20),
            None,
        )
        .expect("thread");
        let name = f.map.name().as_str();
        // One whole pass finds the damage and has the writer repair it before it ends.
        let mut passes = s.passes();
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), passes.wait_for(|&n| n >= 1))
                    .await
                    .expect("a pass within 10 s")
                    .expect("the scrubber runs");
            });
        assert!(
            f.store.table(name).is_some_and(|t| t.verify()),
            "the pass repaired the table"
        );
        s.shutdown();
        f.writer.shutdown();
    }
}
