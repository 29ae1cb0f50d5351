//! Black-box tests of the real server on 127.0.0.1:0 over real QUIC with mutual TLS: every
//! request kind, every error code a client can provoke, authorization, limits, garbage frames,
//! metrics, and restart durability.

mod common;

use std::time::Duration;

use common::{TestServer, connector, table, temp_dir};
use memds_client::{ClientError, ClientTls, ConnectOptions, Role};
use memds_proto::model::PartitionSpec;
use memds_proto::wire::{
    self, ErrorCode, FrameDecoder, PartitionUpdate, Protocol, Request, Response, Routes,
    WirePartition,
};
use memds_proto::{Route, TableMap, key_hash};
use memds_server::Limits;

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn resolved(client: &memds_client::Client, map: &TableMap, routes: &Routes) -> Vec<Route> {
    let nodes = client.get_nodes(map.name().as_str()).await.expect("nodes");
    assert_eq!(nodes.digest, routes.nodes_digest);
    routes
        .resolve(map.name(), &nodes)
        .expect("every replica is listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kind_answers_what_the_map_says() {
    let mut s = TestServer::start("kinds").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let map = table(0, 2_000, 5);
    let name = map.name().as_str().to_owned();

    let ack = admin.put_table(&map).await.expect("put");
    assert_eq!((ack.version, ack.applied), (5, true));

    // Point lookup, for a key and for the extremes.
    for hash in [0, u64::MAX, key_hash(b"user#1"), map.partitions()[7].start] {
        let routes = router.lookup(&name, hash).await.expect("lookup");
        assert_eq!(routes.table_version, 5);
        assert_eq!(
            resolved(&router, &map, &routes).await,
            vec![map.route(hash)]
        );
    }
    // Batch lookup: same order as asked.
    let hashes: Vec<u64> = (0..500u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let routes = router
        .batch_lookup(&name, hashes.clone())
        .await
        .expect("batch");
    let want: Vec<Route> = hashes.iter().map(|&h| map.route(h)).collect();
    assert_eq!(resolved(&router, &map, &routes).await, want);
    // Range scan, with and without truncation.
    let (a, b) = (map.partitions()[10].start + 1, map.partitions()[20].start);
    let routes = router.range(&name, a, b, 100).await.expect("range");
    let ids: Vec<u64> = routes.routes.iter().map(|r| r.partition).collect();
    let want: Vec<u64> = map.partitions()[10..20]
        .iter()
        .map(|p| p.id.get())
        .collect();
    assert_eq!(ids, want);
    assert!(!routes.truncated);
    let routes = router.range(&name, a, b, 3).await.expect("range");
    assert_eq!(routes.routes.len(), 3);
    assert!(routes.truncated);
    // Whole table, conditional.
    assert_eq!(
        router.get_table(&name, None).await.expect("get"),
        Some(map.clone())
    );
    assert_eq!(router.get_table(&name, Some(5)).await.expect("get"), None);
    assert_eq!(
        router.get_table(&name, Some(4)).await.expect("get"),
        Some(map.clone())
    );
    // List and stats.
    let tables = router.list_tables().await.expect("list");
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (
            tables[0].name.as_str(),
            tables[0].version,
            tables[0].partitions
        ),
        (name.as_str(), 5, 2_000)
    );
    let stats = router.stats().await.expect("stats");
    assert_eq!(stats.tables, 1);
    assert_eq!(stats.partitions, 2_000);
    assert_eq!(stats.lookups_total, 4 + 500 + 10 + 3);
    assert!(stats.resident_bytes > 0 && stats.cpu_seconds > 0.0);

    // A split through update-partitions reaches lookups at once.
    let p = map.partitions()[3];
    let end = map.end_inclusive(3);
    let mid = p.start + (end - p.start) / 2;
    let spec = |id: u64, start: u64| PartitionSpec {
        id,
        start,
        epoch: p.epoch.get() + 1,
        replicas: p.replicas.as_slice().iter().map(|r| r.get()).collect(),
        leader: 0,
    };
    let update = PartitionUpdate {
        table: name.clone(),
        base_version: 5,
        version: 6,
        end_inclusive: end,
        nodes: vec![],
        partitions: vec![spec(p.id.get(), p.start).into(), spec(999_999, mid).into()],
    };
    let ack = admin
        .update_partitions(update.clone())
        .await
        .expect("update");
    assert_eq!((ack.version, ack.applied), (6, true));
    let routes = router.lookup(&name, mid).await.expect("lookup");
    assert_eq!(
        (routes.routes[0].partition, routes.table_version),
        (999_999, 6)
    );
    assert_eq!(routes.routes[0].end_inclusive, end);
    let ack = admin
        .update_partitions(update)
        .await
        .expect("idempotent retry");
    assert!(!ack.applied);

    assert_eq!(admin.drop_table(&name).await.expect("drop"), 6);
    assert!(router.list_tables().await.expect("list").is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_typed_and_changes_nothing() {
    let mut s = TestServer::start("errors").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let map = table(1, 300, 10);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");

    assert_eq!(
        server_error(router.lookup("nope", 1).await),
        ErrorCode::UnknownTable
    );
    assert_eq!(
        server_error(admin.drop_table("nope").await),
        ErrorCode::UnknownTable
    );
    // Same version, same content: success; other content: conflict; older: stale.
    assert!(!admin.put_table(&map).await.expect("idempotent").applied);
    let other = table(1, 301, 10);
    match admin.put_table(&other).await {
        Err(ClientError::Server(e)) => {
            assert_eq!((e.code, e.current_version), (ErrorCode::Conflict, 10))
        }
        r => panic!("expected conflict, got {r:?}"),
    }
    match admin.put_table(&table(1, 300, 9)).await {
        Err(ClientError::Server(e)) => {
            assert_eq!((e.code, e.current_version), (ErrorCode::Stale, 10))
        }
        r => panic!("expected stale, got {r:?}"),
    }
    // A bad snapshot and a bad update: invalid, with the reason.
    let bad = admin
        .call(&Request::PutTable {
            snapshot: vec![0; 40],
        })
        .await;
    assert_eq!(server_error(bad), ErrorCode::Invalid);
    let bad_update = PartitionUpdate {
        table: name.clone(),
        base_version: 10,
        version: 11,
        end_inclusive: 5,
        nodes: vec![],
        partitions: vec![WirePartition {
            id: 1,
            start: 0,
            epoch: 1,
            replicas: vec![],
            leader: 0,
        }],
    };
    match admin.update_partitions(bad_update).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::Invalid);
            assert!(
                e.message.contains("boundary") || e.message.contains("replicas"),
                "{}",
                e.message
            );
        }
        r => panic!("expected invalid, got {r:?}"),
    }
    // Too large a batch.
    let hashes = vec![0u64; wire::DEFAULT_MAX_BATCH + 1];
    assert_eq!(
        server_error(router.batch_lookup(&name, hashes).await),
        ErrorCode::TooLarge
    );
    // Routers cannot write.
    assert_eq!(
        server_error(router.put_table(&table(1, 300, 11)).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        server_error(router.drop_table(&name).await),
        ErrorCode::Unauthorized
    );
    // Nothing changed through all of that.
    assert_eq!(router.get_table(&name, None).await.expect("get"), Some(map));
    let stats = router.stats().await.expect("stats");
    assert_eq!(stats.writes_total, 1);
    assert!(stats.errors_total >= 9, "{}", stats.errors_total);
    s.stop().await;
}

/// A raw QUIC stream to the server, for sending bytes no well-behaved client would.
struct Raw {
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl Raw {
    async fn open(s: &TestServer, role: Role) -> Self {
        Self::open_offering(s, role, &Protocol::SPOKEN).await
    }

    /// A raw stream on a connection that offered only `protocols` in ALPN.
    async fn open_offering(s: &TestServer, role: Role, protocols: &[Protocol]) -> Self {
        let tls = ClientTls::from_dir(&s.tls_dir(), role).expect("tls");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(tls.quic_config_offering(protocols).expect("config"));
        let conn = endpoint
            .connect(s.addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        Self {
            _conn: conn,
            send,
            recv,
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    async fn next(&mut self) -> Option<(u64, Response)> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some((id, payload)) = self.decoder.next_frame().expect("server frames are valid")
            {
                return Some((id, wire::decode_response(payload).expect("valid response")));
            }
            match tokio::time::timeout(Duration::from_secs(10), self.recv.read(&mut buf)).await {
                Ok(Ok(Some(n))) => self.decoder.push(&buf[..n]),
                Ok(_) => return None,
                Err(_) => panic!("the server did not answer within 10 s"),
            }
        }
    }
}

/// Each connection settles on the newest version both ends offer; a client offering only
/// memds/1 (as a router of release 0.1.0 does) gets memds/1, is served, and cannot send what
/// memds/1 lacks: the client refuses before sending, and a server sent one anyway on a memds/1
/// connection answers `malformed` and goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_version_is_negotiated_and_a_memds_1_connection_gets_only_memds_1() {
    let mut s = TestServer::start("protocols").await;
    let admin = s.client(Role::Admin).await;
    let map = table(0, 200, 3);
    admin.put_table(&map).await.expect("put");

    // The current client: memds/2, and the server says what it is.
    assert_eq!(admin.protocol(), Protocol::V2);
    let info = admin.server_info().await.expect("server-info");
    assert_eq!(info, memds_server::server_info());
    assert_eq!(info.release, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.protocols, ["memds/2", "memds/1"]);
    let log = info.formats.iter().find(|f| f.name == "log").expect("log");
    assert_eq!((log.writes, log.reads_oldest), (2, 2));

    // A client offering memds/1 only: served in memds/1.
    let old = common::connector_with(
        &s.tls_dir(),
        Role::Router,
        ConnectOptions {
            protocols: vec![Protocol::V1],
            ..ConnectOptions::default()
        },
    )
    .connect(s.addr)
    .await
    .expect("connects");
    assert_eq!(old.protocol(), Protocol::V1);
    let hash = map.partitions()[17].start;
    let routes = old.lookup(map.name().as_str(), hash).await.expect("lookup");
    assert_eq!(resolved(&old, &map, &routes).await, vec![map.route(hash)]);
    let before = old.stats().await.expect("stats").requests_total;
    match old.server_info().await {
        Err(ClientError::NotInProtocol {
            request: "server-info",
            protocol: Protocol::V1,
            needs: Protocol::V2,
        }) => {}
        other => panic!("expected the client to refuse, got {other:?}"),
    }
    // Nothing was sent: the next request is the only one the server counted since.
    assert_eq!(old.stats().await.expect("stats").requests_total, before + 1);

    // Sent anyway on a memds/1 connection: refused as malformed, and the connection goes on.
    let mut raw = Raw::open_offering(&s, Role::Router, &[Protocol::V1]).await;
    let mut frames = Vec::new();
    wire::encode_request(7, &Request::ServerInfo, &mut frames);
    wire::encode_request(8, &Request::Stats, &mut frames);
    raw.send.write_all(&frames).await.expect("send");
    match raw.next().await {
        Some((7, Response::Error(e))) => {
            assert_eq!(e.code, ErrorCode::Malformed, "{e:?}");
            assert!(e.message.contains("memds/1"), "{}", e.message);
        }
        other => panic!("expected malformed, got {other:?}"),
    }
    assert!(matches!(raw.next().await, Some((8, Response::Stats(_)))));
    // The same frame on a memds/2 connection is answered.
    let mut raw = Raw::open(&s, Role::Router).await;
    let mut frame = Vec::new();
    wire::encode_request(9, &Request::ServerInfo, &mut frame);
    raw.send.write_all(&frame).await.expect("send");
    assert!(matches!(raw.next().await, Some((9, Response::ServerInfo(i))) if i == info));
    s.stop().await;
}

fn raw_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_typed_errors_and_the_connection_goes_on() {
    let mut s = TestServer::start("garbage").await;
    let admin = s.client(Role::Admin).await;
    admin.put_table(&table(2, 100, 1)).await.expect("put");
    let mut raw = Raw::open(&s, Role::Router).await;
    // Random bytes, an empty archive, and a valid archive with its variant tag out of range.
    let mut unknown_kind = Vec::new();
    wire::encode_request(1, &Request::Stats, &mut unknown_kind);
    let mut archive = unknown_kind[wire::FRAME_HEADER_LEN..].to_vec();
    // The root object sits at the end of an archive, its variant tag first.
    let tag_at = archive.len() - std::mem::size_of::<wire::ArchivedRequest>();
    archive[tag_at] = 0xEE;
    let mut bytes = raw_frame(7, b"\x01\x02\x03garbage that is not an archive");
    bytes.extend(raw_frame(8, b""));
    bytes.extend(raw_frame(9, &archive));
    // Then a good request on the same stream.
    wire::encode_request(10, &Request::ListTables, &mut bytes);
    raw.send.write_all(&bytes).await.expect("write");
    for id in [7, 8, 9] {
        match raw.next().await {
            Some((got, Response::Error(e))) => {
                assert_eq!((got, e.code), (id, ErrorCode::Malformed))
            }
            other => panic!("frame {id}: expected malformed, got {other:?}"),
        }
    }
    match raw.next().await {
        Some((10, Response::Tables(t))) => assert_eq!(t.len(), 1),
        other => panic!("expected the table list, got {other:?}"),
    }
    // An oversized frame: too_large under id 0, then the connection closes.
    raw.send
        .write_all(&(u32::MAX).to_le_bytes())
        .await
        .expect("write");
    match raw.next().await {
        Some((0, Response::Error(e))) => assert_eq!(e.code, ErrorCode::TooLarge),
        other => panic!("expected too_large, got {other:?}"),
    }
    assert!(
        raw.next().await.is_none(),
        "the stream ends after a bad length"
    );
    // A truncated frame followed by the client giving up leaves the server fine.
    let mut raw = Raw::open(&s, Role::Router).await;
    raw.send
        .write_all(&[100, 0, 0, 0, 1, 2])
        .await
        .expect("write");
    raw.send.finish().expect("finish");
    assert!(raw.next().await.is_none());
    // Every other client was unaffected throughout.
    assert_eq!(admin.list_tables().await.expect("list").len(), 1);
    s.stop().await;
}

/// Whether a client with this TLS material gets any answer from the server within 10 s.
async fn answered(tls: &ClientTls, addr: std::net::SocketAddr) -> bool {
    let connector = memds_client::Connector::new(tls, Default::default()).expect("endpoint");
    match connector.connect(addr).await {
        Ok(client) => client
            .call_timeout(&Request::ListTables, Duration::from_secs(10))
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_get_nothing() {
    let mut s = TestServer::start("auth").await;
    // No certificate at all.
    let tls_dir = s.tls_dir();
    let ca = tls_dir.join(memds_client::tls::CA_CERT);
    let no_cert = ClientTls::from_files(&ca, None).expect("ca");
    assert!(
        !answered(&no_cert, s.addr).await,
        "a client without a certificate was answered"
    );
    // A certificate from another CA.
    let other_tmp = temp_dir("other-pki");
    let other = other_tmp.path().to_path_buf();
    memds_server::tls::ensure_dev_pki(&other).expect("pki");
    let foreign = ClientTls::from_files(
        &ca,
        Some((&other.join("admin.pem"), &other.join("admin.key"))),
    )
    .expect("tls");
    assert!(
        !answered(&foreign, s.addr).await,
        "a client with a foreign certificate was answered"
    );
    // The server still serves trusted clients.
    let router = s.client(Role::Router).await;
    router.list_tables().await.expect("list");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_others_unaffected() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let dir = temp_dir("connlimit");
    let mut s = TestServer::start_with(dir.path().to_path_buf(), limits).await;
    let a = s.client(Role::Router).await;
    let b = s.client(Role::Router).await;
    a.list_tables().await.expect("a");
    b.list_tables().await.expect("b");
    let third = connector(&s.tls_dir(), Role::Router).connect(s.addr).await;
    let refused = match third {
        Err(_) => true,
        Ok(c) => c
            .call_timeout(&Request::ListTables, Duration::from_secs(5))
            .await
            .is_err(),
    };
    assert!(refused, "a third connection was served");
    a.list_tables().await.expect("a still served");
    b.list_tables().await.expect("b still served");
    // When one leaves, a new one is admitted.
    a.close();
    let mut admitted = false;
    for _ in 0..50 {
        if let Ok(c) = connector(&s.tls_dir(), Role::Router).connect(s.addr).await
            && c.call_timeout(&Request::ListTables, Duration::from_secs(5))
                .await
                .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "no connection was admitted after one closed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_described_memds_metrics() {
    let mut s = TestServer::start("metrics").await;
    let admin = s.client(Role::Admin).await;
    let map = table(3, 100, 1);
    admin.put_table(&map).await.expect("put");
    admin.lookup(map.name().as_str(), 42).await.expect("lookup");
    let body = s.scrape().await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "# HELP memds_lookups_total",
        "memds_lookups_total{op=\"lookup\",result=\"ok\"}",
        "# TYPE memds_lookup_duration_seconds histogram",
        "memds_lookup_duration_seconds_bucket{op=\"lookup\",le=\"0.00001\"}",
        "memds_connections{role=\"admin\"}",
        "memds_requests_in_flight",
        "memds_tables",
        "memds_partitions",
        "memds_resident_bytes",
        "memds_table_version{table=\"table-0003\"} 1",
        "memds_writes_total{op=\"put_table\",result=\"applied\"}",
        "memds_build_info{version=",
    ] {
        assert!(body.contains(needle), "missing {needle}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_has_every_acknowledged_table() {
    let dir_tmp = temp_dir("restart");
    let dir = dir_tmp.path().to_path_buf();
    let mut s = TestServer::start_with(dir.clone(), Limits::default()).await;
    let admin = s.client(Role::Admin).await;
    let maps: Vec<TableMap> = (0..3).map(|i| table(i, 500, 3)).collect();
    for m in &maps {
        admin.put_table(m).await.expect("put");
    }
    admin.put_table(&table(1, 500, 4)).await.expect("newer");
    admin
        .drop_table(maps[2].name().as_str())
        .await
        .expect("drop");
    drop(admin);
    s.stop().await;

    let mut s = TestServer::start_with(dir, Limits::default()).await;
    let router = s.client(Role::Router).await;
    let tables = router.list_tables().await.expect("list");
    let names: Vec<(&str, u64)> = tables
        .iter()
        .map(|t| (t.name.as_str(), t.version))
        .collect();
    assert_eq!(names, vec![("table-0000", 3), ("table-0001", 4)]);
    assert_eq!(
        router.get_table("table-0000", None).await.expect("get"),
        Some(maps[0].clone())
    );
    assert_eq!(
        router.get_table("table-0001", None).await.expect("get"),
        Some(table(1, 500, 4))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_overloaded_and_loses_nothing_acknowledged() {
    let limits = Limits {
        write_queue: 1,
        ..Limits::default()
    };
    let dir = temp_dir("overload");
    let mut s = TestServer::start_with(dir.path().to_path_buf(), limits).await;
    // Many admin connections each send a large put at once: the writer works on one, the queue
    // holds one, and the rest must be shed.
    let big: Vec<TableMap> = (0..4).map(|i| table(i, 40_000, 1)).collect();
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(s.client(Role::Admin).await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, map) = (c.clone(), big[i % big.len()].clone());
        tasks.push(tokio::spawn(async move { c.put_table(&map).await }));
    }
    let mut overloaded = 0;
    let mut written = std::collections::HashSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(ack) => {
                written.insert(ack.table);
            }
            Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => overloaded += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(overloaded > 0, "no write was shed with a queue of one");
    assert!(!written.is_empty());
    let router = s.client(Role::Router).await;
    let held: std::collections::HashSet<String> = router
        .list_tables()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        held, written,
        "every acknowledged write is held, nothing else"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_comes_back_only_at_a_higher_version_across_restarts_and_compaction() {
    let dir_tmp = temp_dir("tombstone");
    let dir = dir_tmp.path().to_path_buf();
    // A one-byte log bound: every batch is followed by a checkpoint, so the tombstone must
    // survive compaction as well as the log.
    let configure = |c: &mut memds_server::ServerConfig| c.compact_wal_bytes = 1;
    let mut s = TestServer::start_configured(dir.clone(), configure).await;
    let admin = s.client(Role::Admin).await;
    let name = table(0, 200, 9).name().as_str().to_owned();
    admin.put_table(&table(0, 200, 9)).await.expect("put v9");
    assert_eq!(admin.drop_table(&name).await.expect("drop"), 9);
    // A retry of the drop is answered as the first one was.
    assert_eq!(admin.drop_table(&name).await.expect("drop again"), 9);
    // An unrelated write, so a checkpoint is taken with the tombstone in it.
    admin.put_table(&table(1, 200, 1)).await.expect("put");
    s.stop().await;

    for round in 0..2 {
        let mut s = TestServer::start_configured(dir.clone(), configure).await;
        let admin = s.client(Role::Admin).await;
        // Routers saw version 9: versions 2 and 9 of a new table of that name are stale.
        for v in [2, 9] {
            let e = server_error(admin.put_table(&table(0, 200, v)).await);
            assert_eq!(e, ErrorCode::Stale, "round {round}: v{v}");
        }
        assert_eq!(
            server_error(admin.lookup(&name, 1).await),
            ErrorCode::UnknownTable
        );
        admin
            .put_table(&table(1, 200, 2 + round))
            .await
            .expect("put");
        s.stop().await;
    }
    let mut s = TestServer::start_configured(dir, configure).await;
    let admin = s.client(Role::Admin).await;
    let ack = admin.put_table(&table(0, 200, 10)).await.expect("v10");
    assert_eq!((ack.version, ack.applied), (10, true));
    // A drop naming an older version than the table holds is stale; one naming a newer
    // version leaves the tombstone there even for a table the server never held.
    assert_eq!(
        server_error(admin.drop_table_at(&name, 8).await),
        ErrorCode::Stale
    );
    assert_eq!(
        admin
            .drop_table_at("never-held", 4)
            .await
            .expect("tombstone"),
        4
    );
    assert_eq!(
        server_error(admin.put_table(&named(table(1, 50, 4), "never-held")).await),
        ErrorCode::Stale
    );
    s.stop().await;
}

/// The map with another name.
fn named(map: TableMap, name: &str) -> TableMap {
    let mut spec = memds_proto::model::TableSpec::from(&map);
    spec.table = name.into();
    TableMap::try_from(spec).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_table_is_encoded_once_per_version_and_follows_updates() {
    let mut s = TestServer::start("get-table").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let v1 = table(0, 3_000, 1);
    let name = v1.name().as_str().to_owned();
    admin.put_table(&v1).await.expect("put");
    for _ in 0..3 {
        assert_eq!(
            router.get_table(&name, None).await.expect("get"),
            Some(v1.clone())
        );
    }
    let page = s.scrape().await;
    assert!(
        common::metric(&page, "memds_snapshot_cache_bytes") > 0.0,
        "the answer is cached"
    );
    // An update replaces the cached answer: callers see the new version, never the old one.
    let update = memds_proto::synth::split_update(&v1, 10, 7_000_000);
    admin.update_partitions(update).await.expect("update");
    let v2 = router
        .get_table(&name, None)
        .await
        .expect("get")
        .expect("held");
    assert_eq!(v2.version().get(), 2);
    assert_eq!(v2.partitions().len(), v1.partitions().len() + 1);
    assert_eq!(
        router.get_table(&name, Some(2)).await.expect("not newer"),
        None
    );
    admin.drop_table(&name).await.expect("drop");
    assert_eq!(
        server_error(router.get_table(&name, None).await),
        ErrorCode::UnknownTable
    );
    assert_eq!(
        common::metric(&s.scrape().await, "memds_snapshot_cache_bytes"),
        0.0,
        "a dropped table's answer is released"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_declaring_more_than_the_snapshot_bound_is_refused_before_decoding() {
    let limits = Limits {
        max_snapshot_bytes: 1 << 20,
        ..Limits::default()
    };
    let dir = temp_dir("declared");
    let mut s = TestServer::start_with(dir.path().to_path_buf(), limits).await;
    let admin = s.client(Role::Admin).await;
    // A snapshot header that declares 4 GiB uncompressed over a few bytes of payload.
    let mut forged = memds_proto::snapshot::encode(&table(0, 10, 1));
    forged[8..16].copy_from_slice(&(4u64 << 30).to_le_bytes());
    match admin.call(&Request::PutTable { snapshot: forged }).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
            assert!(e.message.contains("4294967296"), "{e}");
        }
        other => panic!("expected too_large, got {other:?}"),
    }
    // Within the bound, puts work; past it, an honest big table is refused the same way.
    admin
        .put_table(&table(0, 1_000, 1))
        .await
        .expect("small put");
    assert_eq!(
        server_error(admin.put_table(&table(1, 40_000, 1)).await),
        ErrorCode::TooLarge
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_logs_name_the_connection_its_client_and_its_role() {
    use std::io::{BufRead as _, BufReader};
    let dir = temp_dir("logs");
    let mut child = common::KillOnDrop::new(
        common::server_command(dir.path(), &[])
            .env("RUST_LOG", "memds_server::server=debug")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("memds-server starts"),
    );
    let mut announcement = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut announcement)
        .expect("the announcement");
    let v: serde_json::Value = serde_json::from_str(&announcement).expect("JSON");
    let addr: std::net::SocketAddr = v["quic"].as_str().expect("quic").parse().expect("addr");
    let stderr = child.stderr.take().expect("piped stderr");
    let (found_tx, found) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("connection accepted"));
        let _ = found_tx.send(line);
    });
    let admin = connector(&dir.path().join("tls"), Role::Admin)
        .connect(addr)
        .await
        .expect("connects");
    admin.stats().await.expect("stats");
    let line = tokio::time::timeout(Duration::from_secs(10), found)
        .await
        .expect("a log line within 10 s")
        .expect("the reader thread answers")
        .expect("the server logged the connection");
    assert!(
        line.contains("connection{id=1 ")
            && line.contains("remote=127.0.0.1:")
            && line.contains("role=\"admin\""),
        "{line}"
    );
}

/// Looks up `n` batches of 100 hashes as fast as answers come: (admitted, shed) hashes.
async fn lookup_burst(router: &memds_client::Client, table: &str, n: u64) -> (u64, u64) {
    let (mut admitted, mut shed) = (0, 0);
    for i in 0..n {
        let hashes: Vec<u64> = (0..100u64).map(|h| h.wrapping_mul(7_919) + i).collect();
        match router.batch_lookup(table, hashes).await {
            Ok(r) => admitted += r.routes.len() as u64,
            Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => shed += 100,
            Err(e) => panic!("batch {i}: {e}"),
        }
    }
    (admitted, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_limit_changes_while_the_server_runs() {
    let s = TestServer::start("limit-at-runtime").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let map = table(0, 1_000, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    let running = s.server.as_ref().expect("running");
    assert_eq!(running.max_lookups_per_sec(), None);

    // No limit: a burst of 20,000 lookups is answered whole.
    assert_eq!(lookup_burst(&router, &name, 200).await, (20_000, 0));

    // 1,000 a second, set on the running server: the open connection is held to it at once.
    running.set_max_lookups_per_sec(Some(1_000));
    assert_eq!(running.max_lookups_per_sec(), Some(1_000));
    let (admitted, shed) = lookup_burst(&router, &name, 200).await;
    assert!(
        shed > 0 && admitted < 20_000,
        "admitted {admitted}, shed {shed}"
    );
    let stats = admin.stats().await.expect("stats");
    assert_eq!(stats.lookups_shed_total, shed, "{stats:?}");

    // Lifted again: nothing is shed.
    running.set_max_lookups_per_sec(None);
    assert_eq!(lookup_burst(&router, &name, 200).await, (20_000, 0));
}
