//! The router cache and the client against a server that lies: a QUIC server with the fleet's
//! certificate, speaking the real wire codec, that answers a batch with more routes than hashes
//! asked or fewer, with routes that do not hold their hash or whose replicas are malformed,
//! with an answer of another kind, with a node list out of order or with impostors in it, or
//! not at all; and a get-table with a snapshot that declares gigabytes. Nothing it sends may
//! panic a task, put a route it made up in the cache or in a caller's hands, leave a lookup
//! counted as outstanding, or make the client allocate what a header declares.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::{hashes, temp_dir, true_route};
use memds_client::{ClientError, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{
    self, ErrorCode, ErrorReply, FrameDecoder, NodeList, Request, Response, Routes,
};
use memds_proto::{CompactTable, NodeInterner, SnapshotError, TableMap, snapshot};
use memds_server::tls::TlsPaths;
use memds_server::{RunningServer, ServerConfig};
use router_cache::{CacheError, Mode, RouterCache};

/// What the lying server does. Where a lie keeps some of the truth, the truth is the table
/// [`map`], which the real server of each test holds too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// One route more than the hashes asked.
    ExtraRoute,
    /// One route fewer.
    MissingRoute,
    /// A true route per hash, but of another hash's partition: none holds its hash.
    RouteMissesHash,
    /// True routes, but the first claims one replica more than the replica list holds.
    ReplicaCountsDoNotAddUp,
    /// True routes naming a leader past their replicas.
    LeaderOutsideReplicas,
    /// True routes listing their first replica twice.
    ReplicaTwice,
    /// A table snapshot in reply to a lookup.
    WrongKind,
    /// True routes under another node-list digest, and under that digest the true nodes
    /// sorted backwards (a binary search misses most of them).
    NodesUnsorted,
    /// True routes under another digest, and under it each node three times: the true one
    /// between two impostors (a binary search finds any of them; std's finds an end).
    NodesRepeated,
    /// Takes every request, answers none.
    Silent,
    /// True routes under another digest; the node list is never sent.
    SilentNodes,
    /// Answers a get-table with a valid snapshot header that declares 8 GiB uncompressed.
    HugeSnapshot,
}

/// The lies told in answer to lookups.
const MALFORMED: [Lie; 9] = [
    Lie::ExtraRoute,
    Lie::MissingRoute,
    Lie::RouteMissesHash,
    Lie::ReplicaCountsDoNotAddUp,
    Lie::LeaderOutsideReplicas,
    Lie::ReplicaTwice,
    Lie::WrongKind,
    Lie::NodesUnsorted,
    Lie::NodesRepeated,
];

/// The snapshot size [`Lie::HugeSnapshot`] declares.
const HUGE: u64 = 8 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_server_is_refused_and_its_misses_are_answered_by_another() {
    count_panics();
    let (server, tls, _dir) = real_server("mixed").await;
    let truth = map();
    let table = truth.name().as_str().to_owned();
    for lie in MALFORMED.into_iter().chain([Lie::Silent]) {
        let liar = Liar::start(&tls, lie);
        // Only a silent server needs the hedge to answer its misses in time; elsewhere it would
        // let the honest server answer before the lie is heard.
        let hedge = if lie == Lie::Silent {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(30)
        };
        let c = cache(vec![liar.addr, server.quic_addr], &tls, Mode::ConstantWork)
            .hedge_delay(hedge)
            .request_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("cache starts");
        // Rounds of misses from many tasks at once, until the liar has been asked: which server
        // gets a batch depends on which is connected yet and on power of two choices. Each
        // round starts from an empty cache and asks for partitions of its own, so every call
        // is a miss and every lookup the liar gets has a caller waiting for it.
        let mut asked_hashes = Vec::new();
        for round in 0.. {
            if liar.asked() > 0 {
                break;
            }
            assert!(round < 100, "{lie:?}: the liar was never asked");
            c.clear();
            let mut tasks = Vec::new();
            for h in one_per_partition(&truth, round, 50) {
                let (c, table) = (c.clone(), table.clone());
                tasks.push(tokio::spawn(
                    async move { (h, c.route_hash(&table, h).await) },
                ));
            }
            for t in tasks {
                let (h, got) = t.await.expect("no task panicked");
                let route = got.unwrap_or_else(|e| panic!("{lie:?}: hash {h}: {e}"));
                assert_eq!(
                    *route,
                    truth.route(h),
                    "{lie:?}: hash {h} got a route the liar made up"
                );
                asked_hashes.push(h);
            }
        }
        drained(&c, lie).await;
        let st = c.stats();
        assert_eq!(st.queue_depth, 0, "{lie:?}: {st:?}");
        if lie == Lie::Silent {
            assert_eq!(st.protocol_errors, 0, "{lie:?}: {st:?}");
            assert!(st.hedged > 0, "{lie:?}: {st:?}");
        } else {
            assert!(st.protocol_errors > 0, "{lie:?}: {st:?}");
        }
        // Hits come from the cache, which holds only true routes (their refreshes may go to
        // the liar again, and are refused again).
        for &h in &asked_hashes {
            let route = c.route_hash(&table, h).await.expect("hit");
            assert_eq!(*route, truth.route(h), "{lie:?}: hash {h}");
        }
        drained(&c, lie).await;
        assert_eq!(c.stats().queue_depth, 0, "{lie:?}");
        c.shutdown();
    }
    server.shutdown().await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_lying_server_misses_fail_typed_and_nothing_hangs() {
    count_panics();
    let (server, tls, _dir) = real_server("alone").await;
    let table = map().name().as_str().to_owned();
    let timeout = Duration::from_millis(500);
    for lie in MALFORMED.into_iter().chain([Lie::Silent, Lie::SilentNodes]) {
        let liar = Liar::start(&tls, lie);
        let c = cache(vec![liar.addr], &tls, Mode::ConstantWork)
            .hedge_delay(Duration::from_secs(30))
            .request_timeout(timeout)
            .build()
            .await
            .expect("cache starts");
        let mut tasks = Vec::new();
        for h in hashes(0, 20) {
            let (c, table) = (c.clone(), table.clone());
            tasks.push(tokio::spawn(async move { c.route_hash(&table, h).await }));
        }
        for t in tasks {
            match t.await.expect("no task panicked") {
                Err(CacheError::Timeout(t, _)) => assert_eq!(t, timeout),
                other => panic!("{lie:?}: expected a typed timeout, got {other:?}"),
            }
        }
        drained(&c, lie).await;
        let st = c.stats();
        assert_eq!((st.queue_depth, st.entries), (0, 0), "{lie:?}: {st:?}");
        assert!(liar.asked() > 0, "{lie:?}");
        if matches!(lie, Lie::Silent | Lie::SilentNodes) {
            assert_eq!(st.protocol_errors, 0, "{lie:?}: {st:?}");
        } else {
            assert!(st.protocol_errors > 0, "{lie:?}: {st:?}");
        }
        c.shutdown();
    }
    server.shutdown().await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_table_refuses_a_snapshot_declaring_gigabytes_without_allocating_them() {
    count_panics();
    let (server, tls, _dir) = real_server("huge").await;
    let liar = Liar::start(&tls, Lie::HugeSnapshot);
    let client = router(&tls, ConnectOptions::default())
        .connect(liar.addr)
        .await
        .expect("connect");
    let before = vm_hwm_bytes();
    let started = Instant::now();
    match client.get_table(map().name().as_str(), None).await {
        Err(ClientError::Snapshot(SnapshotError::TooLarge { declared, limit })) => {
            assert_eq!(
                (declared, limit),
                (HUGE, snapshot::DEFAULT_MAX_ARCHIVE_BYTES)
            );
        }
        other => panic!("expected a snapshot over the limit, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The refusal comes before any allocation for the declared size (the variant says so);
    // the peak resident size is a second witness.
    let grown = vm_hwm_bytes().saturating_sub(before);
    assert!(
        grown < 1 << 30,
        "the client's peak memory grew by {grown} bytes for a snapshot it refused"
    );
    server.shutdown().await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_table_keeps_to_the_configured_limit_to_the_byte() {
    count_panics();
    let (server, tls, _dir) = real_server("limit").await;
    let truth = map();
    let archive = snapshot::archive(&truth).len() as u64;
    // The liar sends the true table here; only the limit decides.
    let liar = Liar::start(&tls, Lie::ExtraRoute);
    let within = |limit: u64| {
        router(
            &tls,
            ConnectOptions {
                max_snapshot_bytes: limit,
                ..ConnectOptions::default()
            },
        )
    };
    let over = within(archive - 1)
        .connect(liar.addr)
        .await
        .expect("connect");
    match over.get_table(truth.name().as_str(), None).await {
        Err(ClientError::Snapshot(SnapshotError::TooLarge { declared, limit })) => {
            assert_eq!((declared, limit), (archive, archive - 1));
        }
        other => panic!("expected a snapshot over the limit, got {other:?}"),
    }
    let exact = within(archive).connect(liar.addr).await.expect("connect");
    assert_eq!(
        exact
            .get_table(truth.name().as_str(), None)
            .await
            .expect("a snapshot at the limit"),
        Some(truth.clone())
    );
    // A snapshot of another table than the one asked for is not filed under its name.
    match exact.get_table("another-table", None).await {
        Err(ClientError::Protocol(reason)) => assert!(reason.contains("another-table"), "{reason}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    server.shutdown().await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_whole_table_downloads_within_the_builders_limit() {
    count_panics();
    let (server, tls, _dir) = real_server("classic").await;
    let truth = map();
    let table = truth.name().as_str();
    let h = hashes(7, 1)[0];
    let archive = snapshot::archive(&truth).len() as u64;
    let classic = Mode::Classic { whole_table: true };
    let timeout = Duration::from_millis(500);

    // An honest server whose table is a byte over the limit, then a liar declaring gigabytes:
    // each refused, counted, and the miss a typed timeout.
    let liar = Liar::start(&tls, Lie::HugeSnapshot);
    for (servers, limit) in [
        (vec![server.quic_addr], archive - 1),
        (vec![liar.addr], snapshot::DEFAULT_MAX_ARCHIVE_BYTES),
    ] {
        let c = cache(servers, &tls, classic)
            .request_timeout(timeout)
            .max_snapshot_bytes(limit)
            .build()
            .await
            .expect("cache starts");
        let before = vm_hwm_bytes();
        match c.route_hash(table, h).await {
            Err(CacheError::Timeout(t, _)) => assert_eq!(t, timeout),
            other => panic!("limit {limit}: expected a typed timeout, got {other:?}"),
        }
        assert!(vm_hwm_bytes().saturating_sub(before) < 1 << 30);
        let st = c.stats();
        assert!(st.protocol_errors > 0, "limit {limit}: {st:?}");
        assert_eq!(
            (st.entries, st.queue_depth),
            (0, 0),
            "limit {limit}: {st:?}"
        );
        c.shutdown();
    }

    // At the limit, the whole table is cached on first touch.
    let c = cache(vec![server.quic_addr], &tls, classic)
        .max_snapshot_bytes(archive)
        .build()
        .await
        .expect("cache starts");
    let route = c.route_hash(table, h).await.expect("route");
    assert_eq!(*route, truth.route(h));
    let st = c.stats();
    assert_eq!(st.entries, truth.partitions().len() as u64, "{st:?}");
    assert_eq!(st.protocol_errors, 0, "{st:?}");
    c.shutdown();
    server.shutdown().await;
    assert_no_panics();
}

/// A server with the fleet's certificate that answers every request with its lie.
struct Liar {
    addr: SocketAddr,
    /// Requests received.
    asked: Arc<AtomicUsize>,
}

impl Liar {
    fn start(tls: &Path, lie: Lie) -> Self {
        let (config, _) = memds_server::tls::server_config(&TlsPaths::in_dir(tls)).expect("tls");
        let endpoint =
            quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let asked = Arc::new(AtomicUsize::new(0));
        let truth = Arc::new(CompactTable::new(&map(), &mut NodeInterner::default()));
        let counter = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (truth, asked) = (Arc::clone(&truth), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve(
                            send,
                            recv,
                            Arc::clone(&truth),
                            lie,
                            Arc::clone(&asked),
                        ));
                    }
                });
            }
        });
        Self { addr, asked }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// One stream of the liar: the real frame codec, lies inside.
async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    truth: Arc<CompactTable>,
    lie: Lie,
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
            if let Some(answer) = lie_to(&truth, request, lie) {
                wire::encode_response(id, &answer, &mut out);
            }
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The liar's answer to a request, `None` for none.
fn lie_to(truth: &CompactTable, request: Request, lie: Lie) -> Option<Response> {
    // The lies about node lists put the routes under a digest of their own, so that a cache
    // holding the true list from the honest server still fetches the liar's.
    let digest = match lie {
        Lie::NodesUnsorted | Lie::NodesRepeated | Lie::SilentNodes => truth.nodes_digest() ^ 1,
        _ => truth.nodes_digest(),
    };
    let hashes = match request {
        _ if lie == Lie::Silent => return None,
        Request::BatchLookup { hashes, .. } => hashes,
        Request::Lookup { hash, .. } => vec![hash],
        Request::GetNodes { .. } => return nodes(truth, lie, digest),
        Request::GetTable { .. } => {
            let mut snapshot = snapshot::encode(&truth.to_map());
            if lie == Lie::HugeSnapshot {
                // The declared size is outside the checksum, which covers the payload only.
                snapshot[8..16].copy_from_slice(&HUGE.to_le_bytes());
            }
            return Some(Response::Table {
                version: truth.version().get(),
                snapshot,
            });
        }
        _ => {
            return Some(Response::Error(ErrorReply::new(
                ErrorCode::Internal,
                "a liar",
            )));
        }
    };
    if lie == Lie::WrongKind {
        return Some(Response::Table {
            version: truth.version().get(),
            snapshot: vec![0; 1 << 16],
        });
    }
    let mut routes = Routes {
        table_version: truth.version().get(),
        nodes_digest: digest,
        ..Routes::default()
    };
    let answered = match lie {
        Lie::ExtraRoute => hashes.len() + 1,
        Lie::MissingRoute => hashes.len() - 1,
        _ => hashes.len(),
    };
    for k in 0..answered {
        let h = hashes.get(k).copied().unwrap_or(k as u64);
        let (mut r, mut ids) = match lie {
            // The partition half the hash space away: a true route, for another hash.
            Lie::RouteMissesHash => true_route(truth, h ^ (1 << 63)),
            _ => true_route(truth, h),
        };
        match lie {
            Lie::ReplicaCountsDoNotAddUp if k == 0 => r.replica_count += 1,
            Lie::LeaderOutsideReplicas => r.leader = r.replica_count,
            Lie::ReplicaTwice if ids.len() < 7 => {
                ids.push(ids[0]);
                r.replica_count += 1;
            }
            Lie::ReplicaTwice => ids[6] = ids[0],
            _ => {}
        }
        routes.routes.push(r);
        routes.replicas.extend(ids);
    }
    Some(Response::Routes(routes))
}

/// The liar's node list (`None` when it keeps it to itself).
fn nodes(truth: &CompactTable, lie: Lie, digest: u64) -> Option<Response> {
    let mut nodes = truth.node_specs();
    match lie {
        Lie::SilentNodes => return None,
        Lie::NodesUnsorted => nodes.reverse(),
        Lie::NodesRepeated => {
            nodes = nodes
                .into_iter()
                .flat_map(|n| {
                    let mut impostor = n.clone();
                    impostor.addr = "192.0.2.66:6666".into();
                    [impostor.clone(), n, impostor]
                })
                .collect();
        }
        _ => {}
    }
    Some(Response::Nodes(NodeList {
        version: truth.version().get(),
        digest,
        nodes: nodes.into_iter().map(Into::into).collect(),
    }))
}

/// The true route of a hash, in its wire form.
fn map() -> TableMap {
    synth::generate_table(
        &SynthConfig {
            partitions: 2_000,
            ..SynthConfig::default()
        },
        0,
    )
}

/// A real server holding `map()`, its TLS directory, and its scratch directory (removed when
/// dropped).
async fn real_server(name: &str) -> (RunningServer, PathBuf, tempfile::TempDir) {
    let dir = temp_dir(name);
    let server = memds_server::start(ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_owned(),
    ))
    .await
    .expect("server starts");
    let tls = dir.path().join("tls");
    let admin = Connector::new(
        &ClientTls::from_dir(&tls, Role::Admin).expect("tls"),
        ConnectOptions::default(),
    )
    .expect("endpoint")
    .connect(server.quic_addr)
    .await
    .expect("connect");
    admin.put_table(&map()).await.expect("put");
    (server, tls, dir)
}

fn router(tls: &Path, options: ConnectOptions) -> Connector {
    Connector::new(
        &ClientTls::from_dir(tls, Role::Router).expect("tls"),
        options,
    )
    .expect("endpoint")
}

fn cache(servers: Vec<SocketAddr>, tls: &Path, mode: Mode) -> router_cache::Builder {
    RouterCache::builder(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    )
    .mode(mode)
}

/// Waits for every lookup the cache has queued or in flight to finish (bounded: a stuck one
/// fails the test rather than hanging it).
async fn drained(c: &RouterCache, lie: Lie) {
    tokio::time::timeout(Duration::from_secs(30), c.drain())
        .await
        .unwrap_or_else(|_| panic!("{lie:?}: lookups still outstanding: {:?}", c.stats()));
}

/// `n` hashes of distinct partitions.
fn one_per_partition(truth: &TableMap, seed: u64, n: usize) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    let found: Vec<u64> = hashes(seed, 4 * n)
        .into_iter()
        .filter(|&h| seen.insert(truth.route(h).partition))
        .take(n)
        .collect();
    assert_eq!(found.len(), n, "seed {seed}: too few distinct partitions");
    found
}

/// Peak resident memory of this process, from /proc.
fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Panics anywhere in this test process, the cache's own tasks included (a panicked task shows
/// nowhere else: its waiters just see their channel closed).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn assert_no_panics() {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
}
