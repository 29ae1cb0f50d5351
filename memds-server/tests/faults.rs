//! Fault injection: file operations of the log and of compaction fail (through failpoints, and
//! through real obstacles on disk), the writer is stopped dead in the middle of a compaction,
//! and after each fault a restart must hold every acknowledged write and nothing that was
//! refused.
//!
//! Failpoints are process-wide, so every test here holds `fail::FailScenario` (which serialises
//! them) and this file is a test binary of its own, where no other test can trip them.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{TestServer, metric, table, temp_dir};
use memds_client::{ClientError, Role};
use memds_proto::wire::{ErrorCode, Response};
use memds_proto::{TableMap, snapshot};
use memds_server::ServerConfig;
use memds_server::durable::{Durable, DurableError, RecoveryMode, WalRecord};
use memds_server::metrics::Counters;
use memds_server::store::{Store, Write};
use memds_server::writer::{Job, WriteJob, Writer};
use tokio::sync::oneshot;

const PARTITIONS: usize = 100;

/// Every step of compaction where a file operation can fail.
const COMPACTION_STEPS: [&str; 5] = [
    "create-log",
    "compact-write-state",
    "compact-rename-state",
    "compact-sync-dir",
    "compact-remove-old",
];

/// Puts `version` of table `t`; answers whether it was acknowledged.
async fn put(admin: &memds_client::Client, t: usize, version: u64) -> bool {
    admin
        .put_table(&table(t, PARTITIONS, version))
        .await
        .is_ok()
}

/// After a restart on `dir`: each table holds exactly its highest acknowledged version.
async fn check_restart(dir: &Path, acked: &HashMap<usize, u64>, what: &str) {
    let mut s = TestServer::start_configured(dir.to_owned(), |c| c.compact_wal_bytes = 1).await;
    let admin = s.client(Role::Admin).await;
    for (&t, &v) in acked {
        let map = admin
            .get_table(table(t, PARTITIONS, v).name().as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("{what}: table {t}: {e}"))
            .unwrap_or_else(|| panic!("{what}: table {t} is gone"));
        assert_eq!(
            map,
            table(t, PARTITIONS, v),
            "{what}: table {t} should be at its last acknowledged version {v}"
        );
    }
    s.stop().await;
}

/// A server over `dir` whose log bound is one byte (every batch that outgrows the last
/// checkpoint is followed by a compaction), holding version 1 of tables 0 and 1.
async fn two_tables_compacting(
    dir: &Path,
) -> (TestServer, memds_client::Client, HashMap<usize, u64>) {
    let s = TestServer::start_configured(dir.to_owned(), |c| c.compact_wal_bytes = 1).await;
    let admin = s.client(Role::Admin).await;
    let mut acked = HashMap::new();
    for t in 0..2 {
        assert!(put(&admin, t, 1).await);
        acked.insert(t, 1);
    }
    (s, admin, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_step_that_fails_loses_no_acknowledged_write() {
    let _scenario = fail::FailScenario::setup();
    for step in COMPACTION_STEPS {
        let dir_tmp = temp_dir("compaction-error");
        let dir = dir_tmp.path().to_path_buf();
        let (mut s, admin, mut acked) = two_tables_compacting(&dir).await;
        let failures_before = metric(&s.scrape().await, "memds_compaction_failures_total");
        fail::cfg(step, "return").expect("failpoint");
        for v in 2..=4 {
            for t in 0..2 {
                // A failed compaction does not fail the writes: they go to a log recovery reads.
                assert!(put(&admin, t, v).await, "{step}: put {t} v{v}");
                acked.insert(t, v);
            }
        }
        fail::remove(step);
        // The fault was met: the compaction failed, or (removing covered logs is only
        // housekeeping) the logs it could not remove are still there.
        if step == "compact-remove-old" {
            let logs = std::fs::read_dir(&dir)
                .expect("list")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
                })
                .count();
            assert!(logs > 1, "{step}: no covered log was left behind");
        } else {
            let failures = metric(&s.scrape().await, "memds_compaction_failures_total");
            assert!(failures > failures_before, "{step}: no compaction failed");
        }
        check_restart_after(&mut s, &dir, &acked, step).await;
        // And once the fault is gone, compaction works and the history stays whole.
        let mut s = TestServer::start_configured(dir.clone(), |c| c.compact_wal_bytes = 1).await;
        let admin = s.client(Role::Admin).await;
        assert!(put(&admin, 0, 5).await);
        acked.insert(0, 5);
        s.stop().await;
        check_restart(&dir, &acked, step).await;
    }
}

async fn check_restart_after(
    s: &mut TestServer,
    dir: &Path,
    acked: &HashMap<usize, u64>,
    what: &str,
) {
    s.stop().await;
    check_restart(dir, acked, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stopped_dead_at_any_compaction_step_loses_no_acknowledged_write() {
    let _scenario = fail::FailScenario::setup();
    for step in COMPACTION_STEPS {
        let dir_tmp = temp_dir("compaction-crash");
        let dir = dir_tmp.path().to_path_buf();
        let (mut s, admin, mut acked) = two_tables_compacting(&dir).await;
        // The writer thread dies at the step, as a crash there would leave the files. The
        // write whose batch triggered the compaction was acknowledged just before; once the
        // log outgrows the checkpoint, one does.
        fail::cfg(step, "panic").expect("failpoint");
        let mut died = false;
        for v in 2..20 {
            if put(&admin, 0, v).await {
                acked.insert(0, v);
            } else {
                died = true;
                break;
            }
        }
        fail::remove(step);
        assert!(died, "{step}: no compaction reached the step");
        // Nothing more is acknowledged by a dead writer.
        assert!(
            !put(&admin, 1, 2).await,
            "{step}: the dead writer acknowledged a write"
        );
        check_restart_after(&mut s, &dir, &acked, step).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obstacles_on_disk_fail_compaction_but_no_acknowledged_write() {
    let _scenario = fail::FailScenario::setup();
    // Real file-system errors, as an operator's mistake or a full disk gives them: the names
    // compaction writes to are directories.
    for obstacle in ["wal-00000000000000000002.log.tmp", "state.db.tmp"] {
        let dir_tmp = temp_dir("obstacle");
        let dir = dir_tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join(obstacle).join("x")).expect("obstacle");
        let mut s = TestServer::start_configured(dir.clone(), |c| c.compact_wal_bytes = 1).await;
        let admin = s.client(Role::Admin).await;
        let mut acked = HashMap::new();
        for v in 1..=3 {
            assert!(put(&admin, 0, v).await, "{obstacle}: v{v}");
            acked.insert(0, v);
        }
        check_restart_after(&mut s, &dir, &acked, obstacle).await;
        std::fs::remove_dir_all(dir.join(obstacle)).expect("clearing the obstacle");
        let mut s = TestServer::start_configured(dir.clone(), |c| c.compact_wal_bytes = 1).await;
        let admin = s.client(Role::Admin).await;
        assert!(put(&admin, 0, 4).await);
        acked.insert(0, 4);
        check_restart_after(&mut s, &dir, &acked, obstacle).await;
        assert!(
            dir.join("state.db").exists(),
            "{obstacle}: compaction ran once the obstacle was gone"
        );
    }
}

/// A writer over a fresh data directory, outside any server, so a test can queue writes
/// directly and know they are queued.
struct Harness {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    writer: Writer,
}

impl Harness {
    fn start(dir: tempfile::TempDir) -> Self {
        let mut config =
            ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path().into());
        config.compact_wal_bytes = 1 << 30;
        let (store, writer) =
            memds_server::server::start_writer(&config, Arc::new(Counters::default()))
                .expect("writer starts");
        Self { dir, store, writer }
    }

    /// Queues a write; the answer comes on the receiver.
    fn queue(&self, write: Write) -> oneshot::Receiver<Response> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .sender()
            .blocking_send(Job::Write(WriteJob {
                write,
                reply,
                arrived: Instant::now(),
            }))
            .expect("queued");
        answer
    }

    fn write(&self, write: Write) -> Response {
        self.queue(write).blocking_recv().expect("answered")
    }

    fn restart(self) -> Self {
        let Harness { dir, writer, .. } = self;
        writer.shutdown();
        Harness::start(dir)
    }

    fn version(&self, m: &TableMap) -> Option<u64> {
        self.store
            .table(m.name().as_str())
            .map(|t| t.version().get())
    }
}

fn put_of(m: &TableMap) -> Write {
    Write::Put {
        snapshot: snapshot::encode(m),
    }
}

fn code(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error(e) => Some(e.code),
        _ => None,
    }
}

#[test]
fn a_duplicate_in_a_batch_whose_append_fails_is_not_acknowledged() {
    let _scenario = fail::FailScenario::setup();
    let h = Harness::start(tempfile::tempdir().expect("tempdir"));
    let (a1, a2, d1) = (
        table(0, PARTITIONS, 1),
        table(0, PARTITIONS, 2),
        table(1, PARTITIONS, 1),
    );
    assert!(matches!(h.write(put_of(&a1)), Response::Written(_)));
    assert!(matches!(h.write(put_of(&d1)), Response::Written(_)));
    // Hold the writer so the next writes are planned in one batch, whose append then fails.
    fail::cfg("writer-batch", "pause").expect("failpoint");
    let first = h.queue(put_of(&a2));
    let duplicate = h.queue(put_of(&a2));
    let durable_duplicate = h.queue(put_of(&d1));
    fail::cfg("wal-append", "return").expect("failpoint");
    fail::remove("writer-batch");
    let first = first.blocking_recv().expect("answered");
    let duplicate = duplicate.blocking_recv().expect("answered");
    let durable_duplicate = durable_duplicate.blocking_recv().expect("answered");
    fail::remove("wal-append");
    assert_eq!(code(&first), Some(ErrorCode::Internal), "{first:?}");
    assert_eq!(
        code(&duplicate),
        Some(ErrorCode::Internal),
        "a duplicate of a write that was not logged was acknowledged: {duplicate:?}"
    );
    // A duplicate of what the disk already holds does not depend on the failed batch.
    assert!(
        matches!(&durable_duplicate, Response::Written(a) if !a.applied),
        "{durable_duplicate:?}"
    );
    assert_eq!(h.version(&a1), Some(1));
    let h = h.restart();
    assert_eq!(
        h.version(&a1),
        Some(1),
        "nothing of the failed batch came back"
    );
    assert!(matches!(h.write(put_of(&a2)), Response::Written(a) if a.applied));
    h.writer.shutdown();
}

#[test]
fn a_failed_append_is_cut_back_and_a_failed_cut_poisons_the_log_until_compaction() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let put = |i: u64| WalRecord::Put {
        snapshot: snapshot::encode(&table(0, PARTITIONS, i)),
    };
    let (mut d, _) = Durable::open(dir.path(), 1 << 20, RecoveryMode::Strict).expect("open");
    d.append(vec![put(1)]).expect("append");
    fail::cfg("wal-sync", "return").expect("failpoint");
    assert!(d.append(vec![put(2)]).is_err());
    fail::remove("wal-sync");
    assert!(d.poisoned().is_none(), "the cut worked");
    d.append(vec![put(3)]).expect("append after a cut");
    fail::cfg("wal-sync", "return").expect("failpoint");
    fail::cfg("wal-cut-back", "return").expect("failpoint");
    assert!(d.append(vec![put(4)]).is_err());
    fail::remove("wal-sync");
    fail::remove("wal-cut-back");
    assert!(d.poisoned().is_some());
    assert!(matches!(
        d.append(vec![put(5)]),
        Err(DurableError::Poisoned { .. })
    ));
    assert!(d.should_compact());
    d.compact([put(1), put(3)].into_iter()).expect("compact");
    d.append(vec![put(6)]).expect("append after compaction");
    drop(d);
    let (_, rec) = Durable::open(dir.path(), 1 << 20, RecoveryMode::Strict).expect("reopen");
    let got: Vec<WalRecord> = rec.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, vec![put(1), put(3), put(6)]);
}

/// The compaction steps whose failure leaves the next log created (empty) while appends go on
/// in the current one.
const FAILS_AFTER_THE_NEXT_LOG: [&str; 2] = ["compact-write-state", "compact-rename-state"];

fn put_record(version: u64) -> WalRecord {
    WalRecord::Put {
        snapshot: snapshot::encode(&table(0, PARTITIONS, version)),
    }
}

fn recovered(dir: &Path, what: &str) -> (Durable, Vec<WalRecord>, Option<(u64, u64)>) {
    let (d, rec) = Durable::open(dir, 1 << 20, RecoveryMode::Strict)
        .unwrap_or_else(|e| panic!("{what}: recovery refused: {e}"));
    let cut = rec.truncated.as_ref().map(|(o, n)| (o.offset, *n));
    (d, rec.records.into_iter().map(|(_, r)| r).collect(), cut)
}

/// Issue 23, divergence 6: a compaction fails after creating the next log, appends go on in the
/// current log, and a crash tears that log's tail. Recovery cuts the torn write (it was never
/// acknowledged) and restores every write acknowledged before it, and the cut holds once writes
/// reach the later log.
#[test]
fn a_torn_tail_after_a_failed_compaction_is_cut_and_every_acknowledged_write_recovered() {
    let _scenario = fail::FailScenario::setup();
    for step in FAILS_AFTER_THE_NEXT_LOG {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = Durable::open(dir.path(), 1 << 20, RecoveryMode::Strict).expect("open");
        d.append(vec![put_record(1)]).expect("append");
        fail::cfg(step, "return").expect("failpoint");
        assert!(d.compact(std::iter::once(put_record(1))).is_err(), "{step}");
        fail::remove(step);
        assert_eq!(d.generation(), 1, "{step}: appends stay in the current log");
        d.append(vec![put_record(2)]).expect("append");
        d.append(vec![put_record(3)]).expect("append");
        // The crash comes while the next batch is written: only part of its frame is on disk,
        // and its append never returned.
        let torn_at = d.wal_bytes();
        d.append(vec![put_record(4)]).expect("append");
        drop(d);
        let log = memds_server::durable::log_path(dir.path(), 1);
        let len = std::fs::metadata(&log).expect("stat").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|f| f.set_len(len - 5))
            .expect("tearing the tail");

        let (mut d, got, cut) = recovered(dir.path(), step);
        assert_eq!(
            got,
            vec![put_record(1), put_record(2), put_record(3)],
            "{step}"
        );
        assert_eq!(cut, Some((torn_at, len - 5 - torn_at)), "{step}");
        // Appends go on after the restart; the torn write must not come back as damage then.
        d.append(vec![put_record(5)])
            .expect("append after recovery");
        drop(d);
        let (_, got, cut) = recovered(dir.path(), step);
        assert_eq!(
            got,
            vec![put_record(1), put_record(2), put_record(3), put_record(5)],
            "{step}"
        );
        assert_eq!(cut, None, "{step}: the torn tail was cut for good");
    }
}

/// A crash right after a failed compaction (no torn write): every acknowledged write comes back,
/// and so does compaction.
#[test]
fn a_crash_right_after_a_failed_compaction_loses_no_acknowledged_write() {
    let _scenario = fail::FailScenario::setup();
    for step in FAILS_AFTER_THE_NEXT_LOG {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = Durable::open(dir.path(), 1 << 20, RecoveryMode::Strict).expect("open");
        d.append(vec![put_record(1)]).expect("append");
        d.append(vec![put_record(2)]).expect("append");
        fail::cfg(step, "return").expect("failpoint");
        assert!(d.compact(std::iter::once(put_record(2))).is_err(), "{step}");
        fail::remove(step);
        drop(d);

        let (mut d, got, cut) = recovered(dir.path(), step);
        assert_eq!(got, vec![put_record(1), put_record(2)], "{step}");
        assert_eq!(cut, None, "{step}");
        d.append(vec![put_record(3)])
            .expect("append after recovery");
        d.compact(std::iter::once(put_record(3)))
            .expect("compaction works once the fault is gone");
        d.append(vec![put_record(4)])
            .expect("append after compaction");
        drop(d);
        let (_, got, _) = recovered(dir.path(), step);
        assert_eq!(got, vec![put_record(3), put_record(4)], "{step}");
    }
}

#[test]
fn writes_are_refused_unavailable_while_the_log_is_poisoned_and_resume_after_compaction() {
    let _scenario = fail::FailScenario::setup();
    let h = Harness::start(tempfile::tempdir().expect("tempdir"));
    let v = |i| table(0, PARTITIONS, i);
    assert!(matches!(h.write(put_of(&v(1))), Response::Written(_)));
    // The append fails and so does cutting it back: the log's end is unknown.
    fail::cfg("wal-sync", "return").expect("failpoint");
    fail::cfg("wal-cut-back", "return").expect("failpoint");
    assert_eq!(code(&h.write(put_of(&v(2)))), Some(ErrorCode::Internal));
    fail::remove("wal-sync");
    fail::remove("wal-cut-back");
    // While no new log can be started, writes are refused with a typed error.
    fail::cfg("create-log", "return").expect("failpoint");
    assert_eq!(code(&h.write(put_of(&v(3)))), Some(ErrorCode::Unavailable));
    fail::remove("create-log");
    // The next write compacts into a fresh log first, then is logged there.
    assert!(matches!(h.write(put_of(&v(4))), Response::Written(a) if a.applied));
    let h = h.restart();
    assert_eq!(h.version(&v(1)), Some(4));
    h.writer.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_over_quic_changes_nothing_after_a_restart() {
    let _scenario = fail::FailScenario::setup();
    let dir_tmp = temp_dir("refused");
    let dir = dir_tmp.path().to_path_buf();
    let mut s = TestServer::start_configured(dir.clone(), |_| {}).await;
    let admin = s.client(Role::Admin).await;
    assert!(put(&admin, 0, 1).await);
    fail::cfg("wal-append", "return").expect("failpoint");
    match admin.put_table(&table(0, PARTITIONS, 2)).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Internal, "{e}"),
        other => panic!("expected internal, got {other:?}"),
    }
    fail::remove("wal-append");
    let acked = HashMap::from([(0, 1)]);
    check_restart_after(&mut s, &dir, &acked, "refused write").await;
}

/// A resident table is damaged (as a memory fault would) on a server whose data directory can
/// no longer rebuild it (its log is gone): the scrubber hands it to the fleet, which installs a
/// peer's copy of the same version and checkpoints it, so a restart finds the table whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_the_disk_cannot_rebuild_is_repaired_from_a_peer() {
    let _scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let ports: Vec<u16> = (0..2).map(|_| common::free_port()).collect();
    let pki = root.path().join("pki");
    let config = |i: usize, scrub: Option<std::time::Duration>| {
        let pki = pki.clone();
        let peer = format!("127.0.0.1:{}", ports[1 - i]);
        let port = ports[i];
        move |c: &mut ServerConfig| {
            c.listen = SocketAddr::from(([127, 0, 0, 1], port));
            c.dev_tls_dir = Some(pki);
            c.fleet.peers = vec![peer];
            c.fleet.anti_entropy = std::time::Duration::from_millis(200);
            c.scrub_interval = scrub;
        }
    };
    // The healthy peer does not scrub, so the failpoint damages only the other server's table.
    let mut healthy = TestServer::start_configured(root.path().join("a"), config(0, None)).await;
    let dir = root.path().join("b");
    let scrub = Some(std::time::Duration::from_millis(100));
    let mut damaged = TestServer::start_configured(dir.clone(), config(1, scrub)).await;
    let map = table(0, 2000, 3);
    let name = map.name().as_str().to_owned();
    let admin = healthy.client(Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let reader = damaged.client(Role::Admin).await;
    while reader.list_tables().await.expect("tables").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the table never reached the peer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The data directory loses its log: it cannot rebuild the table any more.
    for entry in std::fs::read_dir(&dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            std::fs::remove_file(&path).expect("removing the log");
        }
    }
    let before = metric(
        &damaged.scrape().await,
        "memds_scrub_repairs_total{result=\"from_peer\"}",
    );
    fail::cfg("scrub-damage", "1*return").expect("failpoint");
    while metric(
        &damaged.scrape().await,
        "memds_scrub_repairs_total{result=\"from_peer\"}",
    ) <= before
    {
        assert!(
            Instant::now() < deadline,
            "the table was never repaired from the peer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fail::remove("scrub-damage");
    assert_eq!(
        reader.get_table(&name, None).await.expect("get"),
        Some(map.clone()),
        "the repaired server serves the acknowledged table"
    );
    // The repair was checkpointed: the directory alone restores the table.
    damaged.stop().await;
    let mut restarted = TestServer::start_configured(dir, |c| c.scrub_interval = None).await;
    let c = restarted.client(Role::Admin).await;
    assert_eq!(c.get_table(&name, None).await.expect("get"), Some(map));
    restarted.stop().await;
    healthy.stop().await;
}
