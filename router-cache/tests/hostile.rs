//! The router cache and the client against a server that lies: a QUIC server with the fleet's
//! certificate, speaking the real wire codec, that answers a batch with more routes than
//! hashes asked, fewer, or routes that do not hold their hash, and a get-table with a snapshot
//! that declares gigabytes. Nothing it sends may panic a task, poison the cache, leave a lookup
//! counted as outstanding, or make the client allocate what a header declares.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memds_client::{ClientError, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{
    self, ErrorCode, ErrorReply, FrameDecoder, Request, Response, Routes, WireRoute,
};
use memds_proto::{TableMap, snapshot};
use memds_server::tls::TlsPaths;
use memds_server::{RunningServer, ServerConfig};
use router_cache::{CacheError, Mode, RouterCache};

#[derive(Clone, Copy, Debug)]
enum Lie {
    /// One route more than the hashes asked.
    Extra,
    /// One route fewer.
    Missing,
    /// One route per hash, none holding its hash.
    Wrong,
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "memds-hostile-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn map() -> TableMap {
    synth::generate_table(
        &SynthConfig {
            partitions: 2_000,
            ..SynthConfig::default()
        },
        0,
    )
}

/// A real server holding `map()`, and its TLS directory.
async fn real_server(name: &str) -> (RunningServer, PathBuf) {
    let dir = temp_dir(name);
    let server = memds_server::start(ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.clone(),
    ))
    .await
    .expect("server starts");
    let tls = dir.join("tls");
    let admin = Connector::new(
        &ClientTls::from_dir(&tls, Role::Admin).expect("tls"),
        ConnectOptions::default(),
    )
    .expect("endpoint")
    .connect(server.quic_addr)
    .await
    .expect("connect");
    admin.put_table(&map()).await.expect("put");
    (server, tls)
}

/// What the liar answers.
fn lie_to(request: Request, lie: Lie) -> Response {
    let hashes = match request {
        Request::BatchLookup { hashes, .. } => hashes,
        Request::Lookup { hash, .. } => vec![hash],
        Request::GetTable { .. } => {
            // A valid snapshot header that declares 8 GiB uncompressed over a tiny payload.
            let mut forged = snapshot::encode(&map());
            forged[8..16].copy_from_slice(&(8u64 << 30).to_le_bytes());
            return Response::Table {
                version: 1,
                snapshot: forged,
            };
        }
        _ => {
            return Response::Error(ErrorReply::new(ErrorCode::Internal, "a liar"));
        }
    };
    let n = match lie {
        Lie::Extra => hashes.len() + 1,
        Lie::Missing => hashes.len().saturating_sub(1),
        Lie::Wrong => hashes.len(),
    };
    let mut routes = Routes {
        table_version: 1,
        ..Routes::default()
    };
    for k in 0..n {
        let h = hashes.get(k).copied().unwrap_or(0);
        let start = match lie {
            Lie::Wrong => h.wrapping_add(1),
            _ => h,
        };
        routes.routes.push(WireRoute {
            partition: 1,
            start,
            end_inclusive: start,
            epoch: 1,
            leader: 0,
            replica_count: 1,
        });
        routes.replicas.push(1);
    }
    Response::Routes(routes)
}

/// A server with the fleet's certificate that answers every request with `lie`.
fn liar(tls: &Path, lie: Lie) -> SocketAddr {
    let (config, _) = memds_server::tls::server_config(&TlsPaths::in_dir(tls)).expect("tls");
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
                        let mut chunk = vec![0u8; 64 * 1024];
                        while let Ok(Some(n)) = recv.read(&mut chunk).await {
                            decoder.push(&chunk[..n]);
                            let mut out = Vec::new();
                            while let Ok(Some((id, payload))) = decoder.next_frame() {
                                let Ok(request) = wire::decode_request(payload) else {
                                    return;
                                };
                                wire::encode_response(id, &lie_to(request, lie), &mut out);
                            }
                            if send.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
    });
    addr
}

async fn cache(servers: Vec<SocketAddr>, tls: &Path, timeout: Duration) -> RouterCache {
    RouterCache::builder(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    )
    .mode(Mode::ConstantWork)
    .hedge_delay(Duration::from_secs(30))
    .request_timeout(timeout)
    .build()
    .await
    .expect("cache starts")
}

fn hashes(n: u64) -> impl Iterator<Item = u64> {
    (1..=n).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_server_is_refused_and_its_misses_are_answered_by_another() {
    let (server, tls) = real_server("mixed").await;
    let truth = map();
    let table = truth.name().as_str().to_owned();
    for lie in [Lie::Extra, Lie::Missing, Lie::Wrong] {
        let c = cache(
            vec![liar(&tls, lie), server.quic_addr],
            &tls,
            Duration::from_secs(10),
        )
        .await;
        // Misses from several tasks at once, so batches go to both servers.
        let mut tasks = Vec::new();
        for h in hashes(400) {
            let (c, table) = (c.clone(), table.clone());
            tasks.push(tokio::spawn(
                async move { (h, c.route_hash(&table, h).await) },
            ));
        }
        for t in tasks {
            let (h, got) = t.await.expect("no task panicked");
            let route = got.unwrap_or_else(|e| panic!("{lie:?}: hash {h}: {e}"));
            let want = truth.route(h);
            assert_eq!(
                (route.partition, route.start, route.epoch),
                (want.partition, want.start, want.epoch),
                "{lie:?}: hash {h} got a route the liar made up"
            );
        }
        tokio::time::timeout(Duration::from_secs(20), c.drain())
            .await
            .expect("every lookup finishes");
        let st = c.stats();
        assert_eq!(st.queue_depth, 0, "{lie:?}: {st:?}");
        assert!(
            st.protocol_errors > 0,
            "{lie:?}: the liar was never asked: {st:?}"
        );
        // Hits now come from the cache, which holds only true routes.
        for h in hashes(400) {
            let route = c.route_hash(&table, h).await.expect("hit");
            assert_eq!(route.partition, truth.route(h).partition, "{lie:?}");
        }
        c.shutdown();
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_lying_server_misses_fail_typed_and_nothing_hangs() {
    let (server, tls) = real_server("alone").await;
    let table = map().name().as_str().to_owned();
    for lie in [Lie::Extra, Lie::Missing, Lie::Wrong] {
        let c = cache(vec![liar(&tls, lie)], &tls, Duration::from_millis(800)).await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for h in hashes(20) {
            let (c, table) = (c.clone(), table.clone());
            tasks.push(tokio::spawn(async move { c.route_hash(&table, h).await }));
        }
        for t in tasks {
            match t.await.expect("no task panicked") {
                Err(CacheError::Timeout(..)) => {}
                other => panic!("{lie:?}: expected a typed timeout, got {other:?}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{lie:?}");
        tokio::time::timeout(Duration::from_secs(20), c.drain())
            .await
            .expect("every lookup finishes");
        let st = c.stats();
        assert_eq!((st.queue_depth, st.entries), (0, 0), "{lie:?}: {st:?}");
        assert!(st.protocol_errors > 0, "{lie:?}: {st:?}");
        c.shutdown();
    }
    server.shutdown().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_declaring_gigabytes_is_refused_without_allocating_them() {
    let (server, tls) = real_server("snapshot").await;
    let router = |options: ConnectOptions| {
        Connector::new(
            &ClientTls::from_dir(&tls, Role::Router).expect("tls"),
            options,
        )
        .expect("endpoint")
    };
    let liar = liar(&tls, Lie::Extra);
    let before = vm_hwm_bytes();
    let client = router(ConnectOptions::default())
        .connect(liar)
        .await
        .expect("connect");
    match client.get_table("anything", None).await {
        Err(ClientError::Protocol(reason)) => {
            assert!(reason.contains("8589934592"), "{reason}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let grown = vm_hwm_bytes().saturating_sub(before);
    assert!(
        grown < 1 << 30,
        "the client's peak memory grew by {grown} bytes for a snapshot it refused"
    );
    // A configured bound applies to honest servers too.
    let small = router(ConnectOptions {
        max_snapshot_bytes: 4096,
        ..ConnectOptions::default()
    })
    .connect(server.quic_addr)
    .await
    .expect("connect");
    match small.get_table(map().name().as_str(), None).await {
        Err(ClientError::Protocol(reason)) => assert!(reason.contains("limit of 4096"), "{reason}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    server.shutdown().await;
}
