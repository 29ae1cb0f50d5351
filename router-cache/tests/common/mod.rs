//! Helpers shared by router-cache's integration tests: scratch directories, clients of real
//! servers, and waiting for the cache to connect.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use router_cache::RouterCache;

/// A fresh, empty directory under the system temp dir named after `name`, removed when the
/// returned guard is dropped (keep it as long as the server using it runs).
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("memds-router-cache-{name}-"))
        .tempdir()
        .expect("a scratch directory")
}

/// 127.0.0.1, any free port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A client of the server at `addr` with `role`'s certificate from the PKI in `tls`.
pub async fn client(tls: &Path, role: Role, addr: SocketAddr) -> Client {
    let t = ClientTls::from_dir(tls, role).expect("tls");
    Connector::new(&t, ConnectOptions::default())
        .expect("endpoint")
        .connect(addr)
        .await
        .expect("connect")
}

/// Waits (bounded) until the cache has `n` servers connected.
pub async fn servers_up(c: &RouterCache, n: u64) {
    let mut up = c.servers_up();
    let reached = tokio::time::timeout(Duration::from_secs(10), up.wait_for(|&u| u as u64 == n));
    assert!(
        matches!(reached.await, Ok(Ok(_))),
        "{} servers up, not {n}",
        c.stats().servers_up
    );
}

/// `n` well-spread hashes, a different set for each `seed`.
pub fn hashes(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| (i + seed * 1_000 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

/// Starts a real server on `listen` with its data in `dir`; the first one of a test creates the
/// PKI (`tls_from` `None`, in `dir/tls`), later ones share it.
pub async fn server(
    dir: PathBuf,
    tls_from: Option<&Path>,
    listen: SocketAddr,
) -> memds_server::RunningServer {
    let mut c = memds_server::ServerConfig::new(listen, dir);
    c.tls = tls_from.map(memds_server::tls::TlsPaths::in_dir);
    memds_server::start(c).await.expect("server starts")
}

/// A free loopback UDP port, for a server a test starts later (nothing holds it meanwhile).
pub fn free_port() -> SocketAddr {
    std::net::UdpSocket::bind(any_port())
        .and_then(|s| s.local_addr())
        .expect("a free port")
}

/// A server with the fleet's certificate that answers lookups and node lists truly from one
/// table (with the real frame codec), but holds every answer while [`HeldServer::hold`] is on:
/// a fleet that has the lookups and does not answer them yet. Anything else is answered
/// `internal`.
pub struct HeldServer {
    pub addr: SocketAddr,
    hold: tokio::sync::watch::Sender<bool>,
    asked: std::sync::Arc<AtomicUsize>,
}

impl HeldServer {
    /// Starts it on loopback (inside a tokio runtime), not holding.
    pub fn start(tls: &Path, table: &memds_proto::TableMap) -> Self {
        use std::sync::Arc;
        let (config, _) =
            memds_server::tls::server_config(&memds_server::tls::TlsPaths::in_dir(tls))
                .expect("tls");
        let endpoint = quinn::Endpoint::server(config, any_port()).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let (hold, _) = tokio::sync::watch::channel(false);
        let asked = Arc::new(AtomicUsize::new(0));
        let table = Arc::new(memds_proto::CompactTable::new(
            table,
            &mut memds_proto::NodeInterner::default(),
        ));
        let (held, counted) = (hold.clone(), Arc::clone(&asked));
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (table, held, counted) =
                    (Arc::clone(&table), held.clone(), Arc::clone(&counted));
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_held(
                            send,
                            recv,
                            Arc::clone(&table),
                            held.subscribe(),
                            Arc::clone(&counted),
                        ));
                    }
                });
            }
        });
        Self { addr, hold, asked }
    }

    /// Holds every answer from now on (`true`), or sends the held ones and answers at once.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Requests received so far (answered or held).
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// One stream of a [`HeldServer`].
async fn serve_held(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    table: std::sync::Arc<memds_proto::CompactTable>,
    mut hold: tokio::sync::watch::Receiver<bool>,
    asked: std::sync::Arc<AtomicUsize>,
) {
    use memds_proto::wire::{self, FrameDecoder};
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
            let answer = true_answer(&table, request);
            wire::encode_response(id, &answer, &mut out);
        }
        if hold.wait_for(|held| !*held).await.is_err() || send.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The answer a real server holding `table` gives to a lookup or a node-list request (the
/// fake servers of the tests answer with it, or lie starting from it).
pub fn true_answer(
    table: &memds_proto::CompactTable,
    request: memds_proto::wire::Request,
) -> memds_proto::wire::Response {
    use memds_proto::wire::{ErrorCode, ErrorReply, NodeList, Request, Response, Routes};
    let hashes = match request {
        Request::Lookup { hash, .. } => vec![hash],
        Request::BatchLookup { hashes, .. } => hashes,
        Request::GetNodes { .. } => {
            return Response::Nodes(NodeList {
                version: table.version().get(),
                digest: table.nodes_digest(),
                nodes: table.node_specs().into_iter().map(Into::into).collect(),
            });
        }
        _ => return Response::Error(ErrorReply::new(ErrorCode::Internal, "a fake")),
    };
    let mut routes = Routes {
        table_version: table.version().get(),
        nodes_digest: table.nodes_digest(),
        ..Routes::default()
    };
    for h in hashes {
        let (r, ids) = true_route(table, h);
        routes.routes.push(r);
        routes.replicas.extend(ids);
    }
    Response::Routes(routes)
}

/// The wire route of the partition holding `h`, and its replica ids, as a real server answers.
pub fn true_route(
    table: &memds_proto::CompactTable,
    h: u64,
) -> (memds_proto::wire::WireRoute, Vec<u32>) {
    let r = table.route(&table.lookup(h));
    let ids: Vec<u32> = r.replicas.iter().map(|x| x.id.get()).collect();
    let wire = memds_proto::wire::WireRoute {
        partition: r.partition.get(),
        start: r.start,
        end_inclusive: r.end_inclusive,
        epoch: r.epoch.get(),
        leader: r.leader,
        replica_count: u8::try_from(ids.len()).expect("at most 7 replicas"),
    };
    (wire, ids)
}

/// A synthetic table of `partitions` partitions (seed 0).
pub fn synth_map(partitions: usize) -> memds_proto::TableMap {
    memds_proto::synth::generate_table(
        &memds_proto::synth::SynthConfig {
            partitions,
            ..memds_proto::synth::SynthConfig::default()
        },
        0,
    )
}

/// A real server on loopback holding `m`, with its PKI in a fresh directory named after
/// `name`: the server, the PKI directory, an admin client of it, and the scratch directory
/// (removed when dropped: keep it while the server runs).
pub async fn serving(
    name: &str,
    m: &memds_proto::TableMap,
) -> (
    memds_server::RunningServer,
    PathBuf,
    Client,
    tempfile::TempDir,
) {
    let dir = temp_dir(name);
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = client(&tls, Role::Admin, s.quic_addr).await;
    admin.put_table(m).await.expect("put");
    (s, tls, admin, dir)
}

/// A cache over `servers` in `mode` holding at most `capacity` routes per table, that
/// reconnects quickly (servers of some tests restart), does not hedge (hedges are extra lookups
/// by design) and gives misses 10 s.
pub async fn cache_of(
    servers: Vec<SocketAddr>,
    tls: &Path,
    mode: router_cache::Mode,
    capacity: usize,
) -> RouterCache {
    let mut config = router_cache::Config::new(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    );
    config.mode = mode;
    config.capacity = capacity;
    config.request_timeout = Duration::from_secs(10);
    config.hedge_delay = Duration::from_secs(30);
    config.reconnect_min = Duration::from_millis(10);
    config.reconnect_max = Duration::from_millis(100);
    RouterCache::start(config).await.expect("cache starts")
}

/// Stops a server, within bounds: a server's shutdown waits for handshakes in progress, and a
/// router reconnecting as the server goes down can leave one pending until the server's idle
/// timeout. A server that does not stop in time is left to the end of the test process rather
/// than holding the test (it accepts nothing new meanwhile).
pub async fn stop(s: memds_server::RunningServer) {
    let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
}
