//! The router cache against a fleet whose servers disagree on a table's version (in process,
//! real QUIC and TLS on loopback): every lookup carries the newest version the cache has seen,
//! a server behind it answers `behind` and one not ready answers `unavailable`, and the cache
//! asks another server instead. No caller is ever handed a route older than one the cache has
//! seen; only when every server refuses does a miss fail, with [`CacheError::Refused`].
//!
//! The tables: version 2 of [`map`] moves every leader it can without bumping any epoch, so a
//! version-1 route of a partition differs from its version-2 route but is not "older" by epoch;
//! only the table version tells them apart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{any_port, client, hashes, servers_up, temp_dir};
use memds_client::{ClientError, ClientTls, Role};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{self, ErrorCode, ErrorReply, FrameDecoder, Request, Response};
use memds_proto::{CompactTable, NodeInterner, TableMap, TableVersion};
use memds_server::tls::TlsPaths;
use memds_server::{RunningServer, ServerConfig};
use router_cache::{CacheError, Config, RouterCache};

/// Starts a server; the first one of a test creates the PKI, later ones share it.
async fn server(dir: PathBuf, tls_from: Option<&Path>, listen: SocketAddr) -> RunningServer {
    let mut c = ServerConfig::new(listen, dir);
    c.tls = tls_from.map(TlsPaths::in_dir);
    memds_server::start(c).await.expect("server starts")
}

/// Puts `map` on the server at `addr`.
async fn put(tls: &Path, addr: SocketAddr, map: &TableMap) {
    client(tls, Role::Admin, addr)
        .await
        .put_table(map)
        .await
        .expect("put");
}

/// The table at `version`: version 1 as generated, version 2 with the leader of every
/// partition that has more than one replica moved to its next replica, epochs unchanged.
fn map(version: u64) -> TableMap {
    let generated = synth::generate_table(
        &SynthConfig {
            partitions: 300,
            ..SynthConfig::default()
        },
        0,
    );
    let (name, _, nodes, mut partitions) = generated.into_parts();
    if version >= 2 {
        for p in &mut partitions {
            let n = p.replicas.as_slice().len() as u8;
            p.leader = (p.leader + 1) % n;
        }
    }
    TableMap::new(name, TableVersion::new(version), nodes, partitions).expect("a valid map")
}

/// A cache over `servers` that reconnects quickly (servers of these tests restart) and does
/// not hedge (hedges are extra lookups by design).
async fn cache(servers: Vec<SocketAddr>, tls: &Path) -> RouterCache {
    let mut config = Config::new(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    );
    config.request_timeout = Duration::from_secs(5);
    config.hedge_delay = Duration::from_secs(30);
    config.reconnect_min = Duration::from_millis(10);
    config.reconnect_max = Duration::from_millis(100);
    RouterCache::start(config).await.expect("cache starts")
}

/// Routes every hash through the cache and checks each answer is the version-2 route.
async fn all_at_version_2(c: &RouterCache, v2: &TableMap, hs: &[u64], what: &str) {
    let name = v2.name().as_str();
    for &h in hs {
        let r = c
            .route_hash(name, h)
            .await
            .unwrap_or_else(|e| panic!("{what}: hash {h} failed: {e}"));
        assert_eq!(r.version.get(), 2, "{what}: a route of version 1: {r:?}");
        assert_eq!(*r, v2.route(h), "{what}");
    }
}

/// Stops a server, within bounds: a server's shutdown waits for handshakes in progress, and a
/// router's connection attempt begun while that server was down can leave one pending until
/// the server's idle timeout. A server that does not stop in time is left to the end of the
/// test process rather than holding the test.
async fn stop(s: RunningServer) {
    let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
}

/// Teaches the cache version 2 from A while B does not hold the table yet: misses until one is
/// answered by A (one answered by B fails as an unknown table; each is a coin toss between two
/// idle servers, so 64 all landing on B would take a one-in-10^19 run).
async fn learn_version_2(c: &RouterCache, v2: &TableMap, h: u64) {
    for _ in 0..64 {
        match c.route_hash(v2.name().as_str(), h).await {
            Ok(r) => {
                assert_eq!(*r, v2.route(h));
                return;
            }
            Err(CacheError::Server(e)) if e.code == ErrorCode::UnknownTable => c.clear(),
            Err(e) => panic!("learning version 2: {e}"),
        }
    }
    panic!("no miss reached A");
}

/// A and B hold the table at versions 2 and 1, and the cache has seen version 2 (from A, before
/// B held the table). The cache's lookups that land on B (about half of them: power of two
/// choices between two idle servers) are answered `behind`; its misses are asked of A instead.
/// Every route any caller gets is of version 2, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_is_passed_over_and_no_caller_gets_an_older_route() {
    let (v1, v2) = (map(1), map(2));
    let name = v2.name().as_str();
    let dir = temp_dir("behind-a");
    let a = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let dir_b = temp_dir("behind-b");
    let b = server(dir_b.path().to_owned(), Some(&tls), any_port()).await;
    put(&tls, a.quic_addr, &v2).await;

    let c = cache(vec![a.quic_addr, b.quic_addr], &tls).await;
    servers_up(&c, 2).await;
    let warm = hashes(1, 200);
    learn_version_2(&c, &v2, warm[0]).await;
    let errors = c.stats().errors;
    // B gets the table, at version 1.
    put(&tls, b.quic_addr, &v1).await;
    let router_b = client(&tls, Role::Router, b.quic_addr).await;
    let at_1 = router_b
        .lookup_at_least(name, warm[0], Some(1))
        .await
        .expect("B answers for version 1");
    assert_eq!(at_1.table_version, 1);
    match router_b.lookup_at_least(name, warm[0], Some(2)).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Behind, "{e}"),
        other => panic!("B must answer behind for version 2: {other:?}"),
    }
    router_b.close();
    let admin_b = client(&tls, Role::Admin, b.quic_addr).await;
    let b_errors = admin_b.stats().await.expect("stats").errors_total;

    // Misses (every hash is new to the cache), hits (whose refreshes go to either server),
    // misses again after a flush, and new hashes.
    for round in 0..4u64 {
        if round == 2 {
            c.clear();
        }
        all_at_version_2(&c, &v2, &warm, &format!("round {round}")).await;
        all_at_version_2(
            &c,
            &v2,
            &hashes(10 + round, 100),
            &format!("round {round}, new"),
        )
        .await;
        c.drain().await;
    }

    let st = c.stats();
    assert_eq!(st.errors, errors, "{st:?}");
    assert!(st.misses > 0 && st.hits > 0, "{st:?}");
    assert!(st.behind > 0, "no lookup reached B: {st:?}");
    assert!(st.retried_elsewhere > 0, "no miss was retried: {st:?}");
    assert_eq!(st.unavailable, 0, "{st:?}");
    assert_eq!(st.protocol_errors, 0, "{st:?}");
    assert_eq!(st.queue_depth, 0, "{st:?}");
    assert!(
        admin_b.stats().await.expect("stats").errors_total > b_errors,
        "B answered no lookup behind"
    );
    admin_b.close();
    c.shutdown();
    stop(a).await;
    stop(b).await;
}

/// The cache has seen version 2 from A; B holds version 1. With A gone, a miss is refused by
/// B, the only server connected; then A comes back having lost its data and been given version
/// 1 again, and every server of the fleet refuses. Either way the miss fails at once with
/// [`CacheError::Refused`] (not at its timeout) rather than taking a version-1 route, and
/// nothing of version 1 is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_all_behind_fails_the_miss_and_hands_out_no_older_route() {
    let (v1, v2) = (map(1), map(2));
    let name = v2.name().as_str();
    let dir = temp_dir("all-behind-a");
    let a = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let dir_b = temp_dir("all-behind-b");
    let b = server(dir_b.path().to_owned(), Some(&tls), any_port()).await;
    let (addr_a, addr_b) = (a.quic_addr, b.quic_addr);
    put(&tls, addr_a, &v2).await;

    let c = cache(vec![addr_a, addr_b], &tls).await;
    servers_up(&c, 2).await;
    let warm = hashes(2, 50);
    learn_version_2(&c, &v2, warm[0]).await;
    all_at_version_2(&c, &v2, &warm, "warming").await;
    put(&tls, addr_b, &v1).await;
    c.drain().await;

    // A goes away: B refuses, and no other server is connected.
    stop(a).await;
    servers_up(&c, 1).await;
    all_at_version_2(&c, &v2, &warm, "hits without A").await;
    c.drain().await;
    let before = c.stats();
    c.clear();
    let started = Instant::now();
    match c.route_hash(name, warm[1]).await {
        Err(CacheError::Refused {
            servers,
            behind,
            unavailable,
            min_version,
            last,
        }) => {
            assert_eq!((servers, behind, unavailable), (2, 1, 0));
            assert_eq!(min_version, Some(2));
            assert_eq!(last.code, ErrorCode::Behind);
        }
        other => panic!("a miss refused by B with A gone must fail: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the miss failed only after {:?}",
        started.elapsed()
    );
    let st = c.stats();
    assert_eq!(st.errors, before.errors + 1, "{st:?}");
    assert!(st.behind > before.behind, "{st:?}");

    // A comes back from an empty data directory, and is given version 1.
    let dir_a = temp_dir("all-behind-a-again");
    let a = server(dir_a.path().to_owned(), Some(&tls), addr_a).await;
    put(&tls, addr_a, &v1).await;
    servers_up(&c, 2).await;
    c.drain().await;
    let before = c.stats();
    for &h in &warm[..10] {
        let started = Instant::now();
        match c.route_hash(name, h).await {
            Err(CacheError::Refused {
                servers,
                behind,
                unavailable,
                min_version,
                last,
            }) => {
                assert_eq!((servers, behind, unavailable), (2, 2, 0));
                assert_eq!(min_version, Some(2));
                assert_eq!(last.code, ErrorCode::Behind);
            }
            other => panic!("a miss on a fleet all behind must be refused: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the miss failed only after {:?}: every server had refused",
            started.elapsed()
        );
    }
    c.drain().await;
    let st = c.stats();
    assert_eq!(st.errors, before.errors + 10, "{st:?}");
    assert_eq!(
        st.behind,
        before.behind + 20,
        "each miss asked both servers: {st:?}"
    );
    assert_eq!(
        st.retried_elsewhere,
        before.retried_elsewhere + 10,
        "{st:?}"
    );
    assert_eq!(st.entries, 0, "nothing of version 1 was cached: {st:?}");
    assert_eq!(st.queue_depth, 0, "{st:?}");
    c.shutdown();
    stop(a).await;
    stop(b).await;
}

/// What the fake server does.
const NOT_READY: u8 = 0;
const LAGGING: u8 = 1;

/// A server with the fleet's certificate that is either not ready (answers every request
/// `unavailable`, as a server that has not caught up with its peers does) or lagging in a way a
/// real server never is: it answers lookups from version 1 of the table whatever `min_version`
/// asks for.
struct Fake {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    asked: Arc<AtomicUsize>,
}

impl Fake {
    fn start(tls: &Path, table: &TableMap) -> Self {
        let (config, _) = memds_server::tls::server_config(&TlsPaths::in_dir(tls)).expect("tls");
        let endpoint = quinn::Endpoint::server(config, any_port()).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(NOT_READY));
        let asked = Arc::new(AtomicUsize::new(0));
        let table = Arc::new(CompactTable::new(table, &mut NodeInterner::default()));
        let (m, n) = (Arc::clone(&mode), Arc::clone(&asked));
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (table, mode, asked) = (Arc::clone(&table), Arc::clone(&m), Arc::clone(&n));
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve(
                            send,
                            recv,
                            Arc::clone(&table),
                            Arc::clone(&mode),
                            Arc::clone(&asked),
                        ));
                    }
                });
            }
        });
        Self { addr, mode, asked }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// One stream of the fake server: the real frame codec.
async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    table: Arc<CompactTable>,
    mode: Arc<AtomicU8>,
    asked: Arc<AtomicUsize>,
) {
    let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(Some(n)) = recv.read(&mut chunk).await {
        decoder.push(&chunk[..n]);
        let mut out = Vec::new();
        while let Ok(Some((id, payload))) = decoder.next_frame() {
            let Ok(request) = wire::decode_request(payload) else {
                return;
            };
            asked.fetch_add(1, Ordering::SeqCst);
            let answer = answer(&table, request, mode.load(Ordering::SeqCst));
            wire::encode_response(id, &answer, &mut out);
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn answer(table: &CompactTable, request: Request, mode: u8) -> Response {
    if mode == NOT_READY {
        return Response::Error(ErrorReply::new(
            ErrorCode::Unavailable,
            "not caught up with its peers since it started",
        ));
    }
    common::true_answer(table, request)
}

/// A server that is not ready answers `unavailable`: the cache's misses go to the other server
/// and none fails. Once it answers (from version 1, ignoring `min_version`), its answers are
/// older than what the cache has seen: not applied, counted as behind, the misses asked again.
/// A cache whose only server is not ready gets [`CacheError::Refused`] at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_not_ready_or_answering_old_versions_is_passed_over() {
    let (v1, v2) = (map(1), map(2));
    let name = v2.name().as_str();
    let dir = temp_dir("not-ready");
    let a = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    put(&tls, a.quic_addr, &v2).await;
    let fake = Fake::start(&tls, &v1);

    let c = cache(vec![a.quic_addr, fake.addr], &tls).await;
    servers_up(&c, 2).await;
    // Misses from the first (when the cache has seen no version yet, so `unavailable` is all
    // the fake ever says), and their hits.
    let hs = hashes(3, 150);
    all_at_version_2(&c, &v2, &hs, "not ready").await;
    all_at_version_2(&c, &v2, &hs, "not ready, hits").await;
    c.drain().await;
    let st = c.stats();
    assert!(fake.asked() > 0);
    assert_eq!(st.errors, 0, "{st:?}");
    assert!(st.unavailable > 0, "{st:?}");
    assert!(st.retried_elsewhere > 0, "{st:?}");
    assert_eq!(st.behind, 0, "{st:?}");

    // Ready, but with version 1, which it answers whatever is asked.
    fake.set(LAGGING);
    let retried = st.retried_elsewhere;
    for round in 0..2 {
        c.clear();
        all_at_version_2(&c, &v2, &hs, &format!("lagging, round {round}")).await;
        c.drain().await;
    }
    let st = c.stats();
    assert_eq!(st.errors, 0, "{st:?}");
    assert!(st.behind > 0, "{st:?}");
    assert!(st.retried_elsewhere > retried, "{st:?}");
    assert_eq!(st.protocol_errors, 0, "{st:?}");
    c.shutdown();

    // Alone and not ready: refused by the whole fleet, at once.
    fake.set(NOT_READY);
    let alone = cache(vec![fake.addr], &tls).await;
    servers_up(&alone, 1).await;
    let started = Instant::now();
    match alone.route_hash(name, hs[0]).await {
        Err(CacheError::Refused {
            servers,
            behind,
            unavailable,
            min_version,
            last,
        }) => {
            assert_eq!((servers, behind, unavailable), (1, 0, 1));
            assert_eq!(min_version, None, "this cache has seen no version");
            assert_eq!(last.code, ErrorCode::Unavailable);
        }
        other => panic!("a miss on a fleet not ready must be refused: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let st = alone.stats();
    assert_eq!((st.errors, st.unavailable, st.entries), (1, 1, 0), "{st:?}");
    alone.shutdown();
    stop(a).await;
}
