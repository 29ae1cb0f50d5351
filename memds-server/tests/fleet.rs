//! The fleet with real processes: three `memds-server` binaries on loopback sharing one
//! development PKI (`--tls-dir`), peers of each other. Writes reach every server, a server
//! killed with SIGKILL or paused with SIGSTOP catches up, and a new server is not ready until it
//! holds what its peers hold. A server that missed a write pulls only what changed: the peer's
//! delta, or, when the peers restarted and keep no history, the blocks a Merkle descent finds
//! different.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::peers::{CONVERGE, Peers};
use common::table;
use memds_client::{ClientError, Role};
use memds_proto::wire::ErrorCode;
use memds_proto::{TableMap, synth};

/// `/ready`'s status and body on server `i`.
fn ready(fleet: &Peers, i: usize) -> (u16, String) {
    http_get(fleet.metrics_addr(i), "/ready")
}

/// The sum over the label sets containing `label` (such as `kind="delta"`, or "" for all) of a
/// counter on server `i`'s `/metrics` page (0 if absent).
fn counter(fleet: &Peers, i: usize, name: &str, label: &str) -> f64 {
    let (status, page) = http_get(fleet.metrics_addr(i), "/metrics");
    assert_eq!(status, 200, "{page}");
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && labels.contains(label)).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Server `i`'s pulls by kind: (delta, merkle, snapshot).
fn pulls(fleet: &Peers, i: usize) -> (f64, f64, f64) {
    let kind = |k: &str| {
        counter(
            fleet,
            i,
            "memds_anti_entropy_pulls_total",
            &format!("kind=\"{k}\""),
        )
    };
    (kind("delta"), kind("merkle"), kind("snapshot"))
}

/// The checksum server `i` advertises for `name` in its summary.
async fn digest(fleet: &Peers, i: usize, name: &str) -> u64 {
    fleet
        .summary(i)
        .await
        .tables
        .iter()
        .find(|t| t.name == name && !t.dropped)
        .map(|t| t.digest)
        .unwrap_or_else(|| panic!("server {i} does not hold {name}"))
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("response");
    let status = page
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {page:?}"));
    let body = page.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn split(map: &TableMap, index: usize) -> memds_proto::wire::PartitionUpdate {
    synth::split_update(map, index, 1_000_000 + map.version().get()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_server_and_a_killed_server_catches_up() {
    let mut fleet = Peers::with_metrics(3);
    fleet.start_all();
    for i in 0..3 {
        fleet.wait_ready(i).await;
        assert_eq!(http_get(fleet.metrics_addr(i), "/health").0, 200);
    }

    // A write to one server reaches the other two by forwarding.
    let v1 = table(0, 2000, 1);
    let name = v1.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&v1).await.expect("put");
    let took = fleet.converged(&[1, 2], &name, 1).await;
    eprintln!("a put reached both peers in {took:?}");

    // Server 2 dies without a word; writes go on; it restarts on its data directory.
    fleet.kill(2);
    let mut map = v1.clone();
    for i in 0..3 {
        admin
            .update_partitions(split(&map, i * 10))
            .await
            .expect("update");
        map = admin
            .get_table(&name, None)
            .await
            .expect("get")
            .expect("held");
    }
    let dropped = table(1, 100, 5);
    admin.put_table(&dropped).await.expect("put");
    admin
        .drop_table(dropped.name().as_str())
        .await
        .expect("drop");
    fleet.converged(&[1], &name, 4).await;
    fleet.start(2);
    let took = fleet.converged(&[2], &name, 4).await;
    eprintln!("the restarted server caught up in {took:?}");
    fleet.wait_ready(2).await;
    // It serves the same map as the server written to, and the drop reached it.
    let c = fleet.client(2, Role::Router).await;
    let got = c.get_table(&name, None).await.expect("get").expect("held");
    assert_eq!(got, map);
    let summary = c.summary().await.expect("summary");
    assert!(
        summary
            .tables
            .iter()
            .any(|t| t.name == dropped.name().as_str() && t.dropped && t.version == 5),
        "the tombstone reached the restarted server: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_converges_after_sigcont() {
    let mut fleet = Peers::with_metrics(3);
    fleet.start_all();
    for i in 0..3 {
        fleet.wait_ready(i).await;
    }
    let mut map = table(0, 2000, 1);
    let name = map.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    fleet.converged(&[1, 2], &name, 1).await;

    // Paused for ten anti-entropy periods while writes flow.
    fleet.signal(1, "STOP");
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(3) {
        let update = split(&map, (map.version().get() as usize * 7) % 1000);
        admin.update_partitions(update).await.expect("update");
        map = admin
            .get_table(&name, None)
            .await
            .expect("get")
            .expect("held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = map.version().get();
    fleet.converged(&[2], &name, last).await;
    fleet.signal(1, "CONT");
    let took = fleet.converged(&[1], &name, last).await;
    eprintln!("the paused server converged {took:?} after SIGCONT");
    let c = fleet.client(1, Role::Router).await;
    assert_eq!(c.get_table(&name, None).await.expect("get"), Some(map));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_is_not_ready_until_it_holds_its_peers_tables() {
    let mut fleet = Peers::with_metrics(3);
    fleet.start(0);
    fleet.start(1);
    fleet.wait_ready(0).await;
    fleet.wait_ready(1).await;
    let big = table(0, 300_000, 3);
    let name = big.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&big).await.expect("put");
    fleet.converged(&[1], &name, 3).await;

    fleet.start(2);
    let router = fleet.client(2, Role::Router).await;
    let started = Instant::now();
    let mut not_ready_seen = 0;
    loop {
        let (status, body) = ready(&fleet, 2);
        let held = fleet.version(2, &name).await;
        if status == 200 {
            assert_eq!(held, 3, "ready before holding the 300,000-partition table");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            body.starts_with("not ready: "),
            "a one-line reason: {body:?}"
        );
        not_ready_seen += 1;
        // A router asking a server that is not ready is told to go elsewhere.
        match router.lookup(&name, 42).await {
            Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
            other => {
                // Only possible if it became ready between the two checks.
                assert_eq!(ready(&fleet, 2).0, 200, "a lookup before ready: {other:?}");
            }
        }
        assert!(started.elapsed() < CONVERGE, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the new server was ready after {:?} ({not_ready_seen} polls answered 503)",
        started.elapsed()
    );
    assert!(not_ready_seen > 0, "the first poll already found it ready");
    let routes = router.lookup(&name, 42).await.expect("served once ready");
    assert_eq!(routes.table_version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_missed_a_write_catches_up_by_delta() {
    let mut fleet = Peers::with_metrics(3);
    fleet.start_all();
    for i in 0..3 {
        fleet.wait_ready(i).await;
    }
    let map = table(0, 20_000, 1);
    let name = map.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    fleet.converged(&[1, 2], &name, 1).await;

    // Server 2 is down when a split is written; it restarts on its data directory and asks a
    // peer for what changed since the version it holds.
    fleet.kill(2);
    admin
        .update_partitions(split(&map, 500))
        .await
        .expect("split");
    fleet.converged(&[1], &name, 2).await;
    fleet.start(2);
    fleet.converged(&[2], &name, 2).await;
    let (delta, merkle, snapshot) = pulls(&fleet, 2);
    assert_eq!((delta, merkle, snapshot), (1.0, 0.0, 0.0), "pulls by kind");
    let pulled = counter(&fleet, 2, "memds_anti_entropy_bytes_pulled_total", "");
    let whole = admin
        .get_table_snapshot(&name, None)
        .await
        .expect("get")
        .expect("held")
        .1
        .len() as f64;
    eprintln!("caught up by delta: {pulled} bytes pulled, the snapshot is {whole} bytes");
    assert!(
        pulled > 0.0 && pulled < 4096.0,
        "{pulled} bytes for one split"
    );
    assert!(
        pulled * 20.0 < whole,
        "{pulled} bytes pulled, snapshot {whole}"
    );
    assert_eq!(
        digest(&fleet, 2, &name).await,
        digest(&fleet, 0, &name).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_peers_lost_their_history_catches_up_by_merkle_descent() {
    let mut fleet = Peers::with_metrics(2);
    fleet.start_all();
    fleet.wait_ready(0).await;
    fleet.wait_ready(1).await;
    let map = table(0, 100_000, 1);
    let name = map.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    fleet.converged(&[1], &name, 1).await;

    // Server 1 is down when a split arrives at server 0 as a put of the whole table (as an
    // authority re-putting its map sends it): server 0 keeps no history of what changed (as
    // after a restart from its checkpoint), so it cannot answer a delta, and server 1, started
    // again on its data directory, must find the difference itself.
    fleet.kill(1);
    let mut interner = memds_proto::NodeInterner::default();
    let next = memds_proto::CompactTable::new(&map, &mut interner)
        .apply(&split(&map, 40_000).into(), &mut interner)
        .expect("a valid split")
        .to_map();
    admin.put_table(&next).await.expect("put");
    admin.close();
    let c = fleet.client(0, Role::Admin).await;
    let no_delta = c
        .call(&memds_proto::wire::Request::GetDelta {
            table: name.clone(),
            since: 1,
        })
        .await
        .expect("get-delta");
    assert_eq!(
        no_delta,
        memds_proto::wire::Response::NoDelta { version: 2 }
    );
    c.close();
    fleet.start(1);
    fleet.converged(&[1], &name, 2).await;
    let (delta, merkle, snapshot) = pulls(&fleet, 1);
    assert_eq!((delta, merkle, snapshot), (0.0, 1.0, 0.0), "pulls by kind");
    let pulled = counter(&fleet, 1, "memds_anti_entropy_bytes_pulled_total", "");
    let admin = fleet.client(0, Role::Admin).await;
    let whole = admin
        .get_table_snapshot(&name, None)
        .await
        .expect("get")
        .expect("held")
        .1
        .len() as f64;
    eprintln!("caught up by Merkle descent: {pulled} bytes pulled, the snapshot is {whole} bytes");
    assert!(whole > 500_000.0, "the snapshot is {whole} bytes");
    assert!(
        pulled > 0.0 && pulled < 65_536.0,
        "{pulled} bytes for one split"
    );
    assert_eq!(
        digest(&fleet, 1, &name).await,
        digest(&fleet, 0, &name).await
    );
}

/// What server `i` advertises of `name`: its version and whether it is a tombstone.
async fn holding(fleet: &Peers, i: usize, name: &str) -> Option<(u64, bool)> {
    fleet
        .summary(i)
        .await
        .tables
        .iter()
        .find(|t| t.name == name)
        .map(|t| (t.version, t.dropped))
}

/// Waits (bounded) until server `i` has counted a write it could not forward. A forward on the
/// connection to a peer killed since fails only when that connection times out, 30 s (the
/// peer connections' idle timeout, and the forward's own) after it was sent: the bound leaves
/// room past that (it was `CONVERGE`, 30 s, which a loaded machine missed by milliseconds).
async fn wait_forward_failed(fleet: &Peers, i: usize) {
    let started = Instant::now();
    while counter(fleet, i, "memds_forwards_total", "result=\"failed\"") == 0.0 {
        assert!(
            started.elapsed() < CONVERGE + Duration::from_secs(20),
            "server {i} never gave up forwarding"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until server `i` advertises `name` as `want`.
async fn wait_holding(fleet: &Peers, i: usize, name: &str, want: (u64, bool)) {
    let started = Instant::now();
    loop {
        let got = holding(fleet, i, name).await;
        if got == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "server {i} holds {name} as {got:?}, not {want:?}, after {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 23, divergence 1: a tombstone at the version a peer holds must win over that table.
/// Anti-entropy compared the greater of held version and tombstone with the peer's entry and
/// skipped equal versions, so the peer served the dropped table for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_reaches_a_peer_that_holds_the_dropped_version() {
    let mut fleet = Peers::with_metrics(2);
    fleet.start_all();
    fleet.wait_ready(0).await;
    fleet.wait_ready(1).await;
    let map = table(0, 500, 5);
    let name = map.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    fleet.converged(&[1], &name, 5).await;

    fleet.kill(1);
    assert_eq!(admin.drop_table(&name).await.expect("drop"), 5);
    wait_forward_failed(&fleet, 0).await;
    fleet.start(1);
    wait_holding(&fleet, 1, &name, (5, true)).await;
    fleet.wait_ready(1).await;
    let router = fleet.client(1, Role::Router).await;
    match router.lookup(&name, 42).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::UnknownTable, "{e:?}"),
        other => panic!("the dropped table is still served: {other:?}"),
    }
}

/// Issue 23, divergence 2: "not held" read as version 0, so a table put at version 0 never
/// reached a peer that missed its forward, and that peer became ready without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_put_at_version_0_reaches_a_peer_that_missed_its_forward() {
    let mut fleet = Peers::with_metrics(2);
    fleet.start_all();
    fleet.wait_ready(0).await;
    fleet.wait_ready(1).await;
    fleet.kill(1);
    let map = table(1, 500, 0);
    let name = map.name().as_str().to_owned();
    let admin = fleet.client(0, Role::Admin).await;
    admin.put_table(&map).await.expect("put");
    // The forward must have failed (else a connection retried while the peer restarts can
    // deliver it): only anti-entropy can bring the table then.
    wait_forward_failed(&fleet, 0).await;
    fleet.start(1);
    wait_holding(&fleet, 1, &name, (0, false)).await;
    fleet.wait_ready(1).await;
    let router = fleet.client(1, Role::Router).await;
    let routes = router.lookup(&name, 42).await.expect("served");
    assert_eq!(routes.table_version, 0);
    assert_eq!(
        digest(&fleet, 1, &name).await,
        digest(&fleet, 0, &name).await
    );
}

/// Issue 23, divergence 8: an update based on a version this server has not seen answers
/// `behind` (retryable elsewhere) instead of `conflict`, and starts a catch-up that brings the
/// base here, after which the same update applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_based_on_a_version_not_seen_here_is_behind_and_catches_up() {
    let mut fleet = Peers::with_metrics(2);
    fleet.start_all();
    fleet.wait_ready(0).await;
    fleet.wait_ready(1).await;
    let map = table(2, 2000, 1);
    let name = map.name().as_str().to_owned();
    let a0 = fleet.client(0, Role::Admin).await;
    a0.put_table(&map).await.expect("put");
    fleet.converged(&[1], &name, 1).await;

    // Server 1 misses version 2.
    fleet.kill(1);
    a0.update_partitions(split(&map, 10)).await.expect("v2");
    let v2 = a0.get_table(&name, None).await.expect("get").expect("held");
    // Started alone first, it cannot catch up: the update based on version 2 is `behind`,
    // not `conflict`, and changes nothing.
    fleet.start_with_peers(1, &[]);
    fleet.wait_ready(1).await;
    let a1 = fleet.client(1, Role::Admin).await;
    let v3 = split(&v2, 20);
    match a1.update_partitions(v3.clone()).await {
        Err(ClientError::Server(e)) => {
            assert_eq!((e.code, e.current_version), (ErrorCode::Behind, 1), "{e:?}")
        }
        other => panic!("expected behind, got {other:?}"),
    }
    assert_eq!(fleet.version(1, &name).await, 1);
    a1.close();
    // With its peers again, it catches up, and the same update applies there.
    fleet.kill(1);
    fleet.start(1);
    fleet.converged(&[1], &name, 2).await;
    let a1 = fleet.client(1, Role::Admin).await;
    let ack = a1
        .update_partitions(v3)
        .await
        .expect("applies once caught up");
    assert!(ack.applied);
    fleet.converged(&[0, 1], &name, 3).await;
}

/// Issue 23, divergence 5: a peer name that fails to resolve is not "no peer". Before, a DNS
/// failure read as the names resolving to nothing but this server, and the server declared
/// itself ready alone, without the tables its peers hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_name_that_does_not_resolve_holds_readiness_back() {
    let mut fleet = Peers::with_metrics(1);
    // `.invalid` never resolves (RFC 6761).
    fleet.start_with_peer_names(0, &["memds-peers.invalid:7000".to_owned()]);
    let started = Instant::now();
    loop {
        let (status, body) = ready(&fleet, 0);
        if body.contains("does not resolve") {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("memds-peers.invalid"), "{body}");
            break;
        }
        assert_ne!(
            status, 200,
            "ready with a peer name that does not resolve: {body}"
        );
        assert!(
            started.elapsed() < CONVERGE,
            "no resolution after {CONVERGE:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A router is sent elsewhere.
    let router = fleet.client(0, Role::Router).await;
    match router.lookup("table-0000", 1).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        other => panic!("served while not ready: {other:?}"),
    }
}
