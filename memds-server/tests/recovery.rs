//! Recovery of a damaged data directory, as an operator meets it: the real `memds-server`
//! binary, writes acknowledged over QUIC, the process killed, bytes of its log damaged on disk,
//! and a restart. Damage that is not a torn tail stops the server with a message that names the
//! file, the offset and the way out; `--wal-recovery salvage` takes that way out without
//! deleting anything. An acknowledged batch update is one logged frame and comes back whole.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{KillOnDrop, connector, server_command, spawn_server, table, temp_dir};
use memds_client::Role;
use memds_proto::TableMap;
use memds_proto::model::TableSpec;
use memds_proto::synth::split_update;
use memds_proto::wire::BatchUpdate;

const PARTITIONS: usize = 300;

/// The log files of a data directory.
fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// Offsets of the frames of a log, read with the format the durable module documents: a
/// 16-byte header, then frames of a 24-byte header (the payload length first) and the payload,
/// padded to 8 bytes.
fn frames(bytes: &[u8]) -> Vec<usize> {
    let mut at = 16;
    let mut out = Vec::new();
    while at + 24 <= bytes.len() {
        out.push(at);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[at..at + 8]);
        at = (at + 24 + u64::from_le_bytes(len) as usize).next_multiple_of(8);
    }
    out
}

/// Starts a server, puts versions 1..=3 of one table (each acknowledged), and kills it.
async fn three_acknowledged_puts(dir: &Path) {
    // Compaction off in practice: every write stays in the one log.
    let (mut child, addr) = spawn_server(dir, &["--compact-wal-bytes", "1000000000"]);
    let admin = connector(&dir.join("tls"), Role::Admin)
        .connect(addr)
        .await
        .expect("connects");
    for v in 1..=3 {
        let ack = admin
            .put_table(&table(0, PARTITIONS, v))
            .await
            .expect("put");
        assert_eq!((ack.version, ack.applied), (v, true));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Runs the server over `dir` expecting it to refuse to start; answers its stderr.
fn refused_start(dir: &Path, args: &[&str]) -> String {
    let out = server_command(dir, args)
        .stderr(Stdio::piped())
        .output()
        .expect("memds-server runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the server started on a damaged directory: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "it announced itself before refusing: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The version of table 0 that a server started over `dir` with `args` serves, and its stderr.
async fn served_version(dir: &Path, args: &[&str]) -> (u64, String) {
    let mut child = KillOnDrop::new(
        server_command(dir, args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("memds-server starts"),
    );
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("announcement");
        line
    })
    .await
    .expect("join");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON announcement");
    let addr = v["quic"].as_str().expect("quic").parse().expect("addr");
    let admin = connector(&dir.join("tls"), Role::Admin)
        .connect(addr)
        .await
        .expect("connects");
    let map = tokio::time::timeout(
        Duration::from_secs(30),
        admin.get_table(table(0, PARTITIONS, 1).name().as_str(), None),
    )
    .await
    .expect("answers")
    .expect("get")
    .expect("the table is there");
    assert_eq!(map, table(0, PARTITIONS, map.version().get()));
    child.kill().expect("kill");
    let out = child.into_inner().wait_with_output().expect("reaped");
    (
        map.version().get(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_byte_inside_the_log_stops_the_server_and_salvage_keeps_the_prefix() {
    let dir_tmp = temp_dir("mid-log");
    let dir = dir_tmp.path().to_path_buf();
    three_acknowledged_puts(&dir).await;
    let log = logs(&dir).pop().expect("a log");
    let clean = std::fs::read(&log).expect("read");
    let at = frames(&clean);
    assert_eq!(at.len(), 3, "one frame per acknowledged put");
    // One flipped bit inside the second write (its payload).
    let mut bytes = clean.clone();
    let damaged_at = (at[1] + at[2]) / 2;
    bytes[damaged_at] ^= 0x10;
    std::fs::write(&log, &bytes).expect("damage");

    let stderr = refused_start(&dir, &[]);
    let name = log
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(stderr.contains(&name), "names the file: {stderr}");
    assert!(
        stderr.contains(&format!("damaged at byte {}", at[1])),
        "names the offset of the damaged frame: {stderr}"
    );
    assert!(
        stderr.contains("valid frame after it"),
        "says what it found: {stderr}"
    );
    assert!(
        stderr.contains("--wal-recovery salvage"),
        "says how to proceed: {stderr}"
    );
    // Refusing changed nothing on disk.
    assert_eq!(std::fs::read(&log).expect("read"), bytes);

    // Salvage: the prefix (version 1) is served, the later writes are listed as lost, and the
    // damaged log is kept, unchanged, in a damaged-* folder.
    let (version, stderr) = served_version(&dir, &["--wal-recovery", "salvage"]).await;
    assert_eq!(version, 1);
    assert!(
        stderr.contains("version 3"),
        "lists the write after the damage as lost: {stderr}"
    );
    assert!(stderr.contains("not restored"), "{stderr}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join(&name)).expect("the damaged log, set aside"),
        bytes
    );
    // The directory is whole again: a strict start serves what salvage kept, and takes writes.
    let (version, _) = served_version(&dir, &[]).await;
    assert_eq!(version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_header_stops_the_server() {
    let dir_tmp = temp_dir("magic");
    let dir = dir_tmp.path().to_path_buf();
    three_acknowledged_puts(&dir).await;
    let log = logs(&dir).pop().expect("a log");
    let mut bytes = std::fs::read(&log).expect("read");
    bytes[0] ^= 0xFF;
    std::fs::write(&log, &bytes).expect("damage");
    let stderr = refused_start(&dir, &[]);
    assert!(stderr.contains("damaged at byte 0"), "{stderr}");
    assert!(stderr.contains("header"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_every_acknowledged_write_served() {
    let dir_tmp = temp_dir("torn");
    let dir = dir_tmp.path().to_path_buf();
    three_acknowledged_puts(&dir).await;
    let log = logs(&dir).pop().expect("a log");
    let mut bytes = std::fs::read(&log).expect("read");
    // Half of a fourth frame, as a crash during its write leaves it.
    let last = *frames(&bytes).last().expect("frames");
    let half = bytes[last..].to_vec();
    bytes.extend_from_slice(&half[..half.len() / 2]);
    std::fs::write(&log, &bytes).expect("tear");
    let (version, stderr) = served_version(&dir, &[]).await;
    assert_eq!(version, 3);
    assert!(stderr.contains("cut a torn"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_batch_is_one_record_and_survives_a_kill() {
    let dir_tmp = temp_dir("batch");
    let dir = dir_tmp.path().to_path_buf();
    let (mut child, addr) = spawn_server(&dir, &["--compact-wal-bytes", "1000000000"]);
    let admin = connector(&dir.join("tls"), Role::Admin)
        .connect(addr)
        .await
        .expect("connects");
    let map = table(0, PARTITIONS, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    let indexes = [0, 3, 4, 50, 120, PARTITIONS / 2, map.partitions().len() - 1];
    let mut batch = BatchUpdate::from(split_update(&map, indexes[0], 3_000_000));
    for (k, &i) in indexes.iter().enumerate().skip(1) {
        batch
            .ranges
            .extend(BatchUpdate::from(split_update(&map, i, 3_000_000 + k as u64)).ranges);
    }
    let ack = admin.update_batch(batch.clone()).await.expect("batch");
    assert_eq!((ack.version, ack.applied), (2, true));
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    // One frame per acknowledged write: the put, then the whole batch.
    let log = logs(&dir).pop().expect("a log");
    assert_eq!(frames(&std::fs::read(&log).expect("read")).len(), 2);

    // What the batch should have made of the table, range by range.
    let mut spec = TableSpec::from(&map);
    spec.version = 2;
    for r in &batch.ranges {
        let at = spec
            .partitions
            .iter()
            .position(|p| p.start == r.partitions[0].start)
            .expect("the split partition");
        spec.partitions
            .splice(at..=at, r.partitions.iter().cloned().map(Into::into));
    }
    let expected = TableMap::try_from(spec).expect("valid");

    let (mut child, addr) = spawn_server(&dir, &[]);
    let admin = connector(&dir.join("tls"), Role::Admin)
        .connect(addr)
        .await
        .expect("connects");
    let got = tokio::time::timeout(Duration::from_secs(30), admin.get_table(&name, None))
        .await
        .expect("answers")
        .expect("get")
        .expect("the table is there");
    assert_eq!(got.version().get(), 2);
    assert_eq!(
        got.partitions().len(),
        map.partitions().len() + indexes.len()
    );
    assert_eq!(got, expected);
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
