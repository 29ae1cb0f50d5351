//! The router cache against servers shedding lookups (in process, real QUIC and TLS on
//! loopback): servers started with a small `max_lookups_per_sec`, flooded by other router
//! connections, answer the cache's lookups `overloaded`. A miss shed by one server is asked of
//! one other server, never of a third nor of the same one again, and fails with
//! [`CacheError::Overloaded`] when that one sheds it too; hits keep being answered from the
//! cache while the fleet sheds their refreshes, which are dropped and counted.
//!
//! What the servers shed is counted on both sides: by the servers (`lookups_shed_total`, less
//! what the flooding connections were shed) and by the cache (`CacheStats::overloaded`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{any_port, client, hashes, servers_up, temp_dir};
use memds_client::{Client, ClientError, ClientTls, Role};
use memds_proto::TableMap;
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{ErrorCode, ServerStats};
use memds_server::tls::TlsPaths;
use memds_server::{RunningServer, ServerConfig};
use router_cache::{CacheError, CacheStats, Config, RouterCache};
use tokio::task::JoinHandle;

/// The lookup limit of the limited servers: lookups a second.
const LIMIT: u64 = 100;
/// Flooding connections per limited server. With the cache's connection and an admin one, the
/// cache's fair share of a limited server is `LIMIT / (FLOODERS + 2)` lookups a second; past
/// it, its lookups are shed whenever the flood has emptied the server's bucket, which it keeps
/// empty.
const FLOODERS: usize = 2;

/// Starts a server answering at most `limit` lookups a second (`None`: no limit), with its
/// scratch directory; the first one of a test creates the PKI, later ones share it.
async fn server(
    name: &str,
    tls_from: Option<&Path>,
    limit: Option<u64>,
) -> (RunningServer, tempfile::TempDir) {
    let dir = temp_dir(name);
    let mut c = ServerConfig::new(any_port(), dir.path().to_owned());
    c.tls = tls_from.map(TlsPaths::in_dir);
    c.limits.max_lookups_per_sec = limit;
    c.scrub_interval = None;
    (memds_server::start(c).await.expect("server starts"), dir)
}

fn map() -> TableMap {
    synth::generate_table(
        &SynthConfig {
            partitions: 300,
            ..SynthConfig::default()
        },
        0,
    )
}

/// A cache that does not hedge (hedges are extra lookups by design) and waits long enough for
/// a miss that one failing at its timeout rather than at once shows.
async fn cache(servers: Vec<SocketAddr>, tls: &Path) -> RouterCache {
    let mut config = Config::new(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    );
    config.request_timeout = Duration::from_secs(5);
    config.hedge_delay = Duration::from_secs(30);
    RouterCache::start(config).await.expect("cache starts")
}

/// One server under test: the server and an admin connection for its stats (held for the
/// whole test, so the number of connections sharing its limit does not change), and its scratch
/// directory (removed with it).
struct Limited {
    server: RunningServer,
    admin: Client,
    _dir: tempfile::TempDir,
}

impl Limited {
    async fn start(name: &str, tls_from: Option<&Path>, limit: Option<u64>) -> (Self, PathBuf) {
        let (server, dir) = server(name, tls_from, limit).await;
        let tls = match tls_from {
            Some(t) => t.to_owned(),
            None => server.tls_dir.clone().expect("a development PKI"),
        };
        let admin = client(&tls, Role::Admin, server.quic_addr).await;
        admin.put_table(&map()).await.expect("put");
        (
            Self {
                server,
                admin,
                _dir: dir,
            },
            tls,
        )
    }

    fn addr(&self) -> SocketAddr {
        self.server.quic_addr
    }

    async fn stats(&self) -> ServerStats {
        self.admin.stats().await.expect("stats")
    }

    async fn stop(self) {
        self.admin.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server.shutdown()).await;
    }
}

/// Other routers flooding one server with single lookups, counting what it admitted and shed.
struct Flood {
    stop: Arc<AtomicBool>,
    admitted: Arc<AtomicU64>,
    shed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Flood {
    /// Starts `FLOODERS` connections, each sending one lookup at a time with a millisecond's
    /// pause: several times the limit, so the server's bucket stays empty. Returns once the
    /// server sheds the flood.
    async fn start(tls: &Path, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let admitted = Arc::new(AtomicU64::new(0));
        let shed = Arc::new(AtomicU64::new(0));
        let table = map().name().as_str().to_owned();
        let mut tasks = Vec::new();
        for i in 0..FLOODERS {
            let conn = client(tls, Role::Router, addr).await;
            let (stop, admitted, shed) =
                (Arc::clone(&stop), Arc::clone(&admitted), Arc::clone(&shed));
            let table = table.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = i as u64;
                while !stop.load(Ordering::SeqCst) {
                    h = h.wrapping_mul(6364136223846793005).wrapping_add(1);
                    match conn.lookup(&table, h).await {
                        Ok(_) => admitted.fetch_add(1, Ordering::SeqCst),
                        Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => {
                            shed.fetch_add(1, Ordering::SeqCst)
                        }
                        Err(e) => panic!("flooding: {e}"),
                    };
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                conn.close();
            }));
        }
        let flood = Self {
            stop,
            admitted,
            shed,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while flood.shed.load(Ordering::SeqCst) < 50 {
            assert!(Instant::now() < deadline, "the server sheds no lookup");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flood
    }

    /// Stops the flood once every lookup it sent was answered: (admitted, shed).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a flooding task");
        }
        (
            self.admitted.load(Ordering::SeqCst),
            self.shed.load(Ordering::SeqCst),
        )
    }
}

/// What a server counted for the cache alone between two of its stats, given what the flood
/// of that server (if any) was answered: (lookups admitted, lookups shed).
fn for_the_cache(before: &ServerStats, after: &ServerStats, flood: (u64, u64)) -> (u64, u64) {
    (
        after.lookups_total - before.lookups_total - flood.0,
        after.lookups_shed_total - before.lookups_shed_total - flood.1,
    )
}

/// The change of the cache's counters.
fn delta(before: &CacheStats, after: &CacheStats) -> CacheStats {
    CacheStats {
        hits: after.hits - before.hits,
        misses: after.misses - before.misses,
        errors: after.errors - before.errors,
        lookups_sent: after.lookups_sent - before.lookups_sent,
        hedged: after.hedged - before.hedged,
        dropped: after.dropped - before.dropped,
        refreshes_changed: after.refreshes_changed - before.refreshes_changed,
        refreshes_shed: after.refreshes_shed - before.refreshes_shed,
        protocol_errors: after.protocol_errors - before.protocol_errors,
        behind: after.behind - before.behind,
        unavailable: after.unavailable - before.unavailable,
        overloaded: after.overloaded - before.overloaded,
        retried_elsewhere: after.retried_elsewhere - before.retried_elsewhere,
        retried_overloaded: after.retried_overloaded - before.retried_overloaded,
        ..after.clone()
    }
}

/// A miss: the cache is flushed first (each call is then a miss, whatever earlier calls
/// cached).
async fn miss(c: &RouterCache, table: &str, h: u64) -> Result<Arc<memds_proto::Route>, CacheError> {
    c.clear();
    let (route, hit) = c.route_hash_traced(table, h).await?;
    assert!(!hit, "a miss was expected");
    Ok(route)
}

/// A limited server flooded by other routers and an unlimited one: the misses the flooded
/// server sheds are asked of the other, once, and every one succeeds. The flooded server counts
/// exactly the lookups the cache counts as shed, and the other answered every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_shed_by_an_overloaded_server_are_answered_by_another() {
    let (a, tls) = Limited::start("one-a", None, Some(LIMIT)).await;
    let (b, _) = Limited::start("one-b", Some(&tls), None).await;
    let m = map();
    let table = m.name().as_str();
    let c = cache(vec![a.addr(), b.addr()], &tls).await;
    servers_up(&c, 2).await;
    // Counted from before the flood, which is counted whole.
    let (a0, b0, s0) = (a.stats().await, b.stats().await, c.stats());
    let flood = Flood::start(&tls, a.addr()).await;
    let hs = hashes(1, 200);
    for &h in &hs {
        let route = miss(&c, table, h)
            .await
            .unwrap_or_else(|e| panic!("hash {h}: {e}"));
        assert_eq!(*route, m.route(h));
    }
    c.drain().await;
    let flooded = flood.stop().await;
    let (a1, b1, s1) = (a.stats().await, b.stats().await, c.stats());
    let d = delta(&s0, &s1);
    let (_, shed_a) = for_the_cache(&a0, &a1, flooded);
    let (admitted_b, shed_b) = for_the_cache(&b0, &b1, (0, 0));
    eprintln!(
        "flood of A: {flooded:?}; the cache: {d:?}; A shed {shed_a} of its lookups, B admitted \
         {admitted_b}"
    );

    assert_eq!((d.misses, d.errors), (200, 0), "{d:?}");
    assert!(
        d.overloaded > 0,
        "A shed none of the cache's lookups: {d:?}"
    );
    assert_eq!(
        shed_a, d.overloaded,
        "A's count and the cache's differ: {d:?}"
    );
    assert_eq!(shed_b, 0);
    assert!(
        d.retried_overloaded > 0 && d.retried_overloaded <= d.misses,
        "at most one retry per miss: {d:?}"
    );
    assert_eq!(d.retried_elsewhere, d.retried_overloaded, "{d:?}");
    assert!(
        admitted_b >= d.retried_overloaded,
        "every retry went to B ({admitted_b} lookups): {d:?}"
    );
    assert!(d.lookups_sent <= 2 * d.misses, "{d:?}");
    assert_eq!(
        d.lookups_sent,
        d.misses + d.retried_overloaded,
        "one lookup per miss, and one per retry: {d:?}"
    );
    assert_eq!(
        (d.behind, d.unavailable, d.refreshes_shed),
        (0, 0, 0),
        "{d:?}"
    );
    assert_eq!(s1.queue_depth, 0, "{s1:?}");
    c.shutdown();
    a.stop().await;
    b.stop().await;
}

/// Three servers, all limited and flooded: a miss the first server sheds is asked of one other
/// server, and when that one sheds it too the miss fails at once with
/// [`CacheError::Overloaded`] (two servers shed it; the third is not asked). No miss sends more
/// than two lookups, by the cache's count and by the servers'. (A quarter of [`LIMIT`]: the
/// cache's share of each server, about 6 lookups a second, then admits few of its misses even
/// on a slow machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_shed_by_two_servers_fail_as_overloaded_at_once() {
    let limit = Some(LIMIT / 4);
    let (a, tls) = Limited::start("all-a", None, limit).await;
    let (b, _) = Limited::start("all-b", Some(&tls), limit).await;
    let (third, _) = Limited::start("all-c", Some(&tls), limit).await;
    let servers = [a, b, third];
    let table = map().name().as_str().to_owned();
    let c = cache(servers.iter().map(Limited::addr).collect(), &tls).await;
    servers_up(&c, 3).await;
    // Counted from before the floods, which are counted whole.
    let mut before = Vec::new();
    for s in &servers {
        before.push(s.stats().await);
    }
    let s0 = c.stats();
    let mut floods = Vec::new();
    for s in &servers {
        floods.push(Flood::start(&tls, s.addr()).await);
    }
    let (mut failed, mut slowest) = (0u64, Duration::ZERO);
    let hs = hashes(2, 150);
    for &h in &hs {
        let started = Instant::now();
        match miss(&c, &table, h).await {
            Ok(_) => {}
            Err(CacheError::Overloaded {
                servers,
                overloaded,
                last,
            }) => {
                assert_eq!((servers, overloaded), (3, 2), "hash {h}");
                assert_eq!(last.code, ErrorCode::Overloaded);
                failed += 1;
                slowest = slowest.max(started.elapsed());
            }
            Err(e) => panic!("hash {h}: the miss failed otherwise than overloaded: {e}"),
        }
    }
    c.drain().await;
    let mut flooded = Vec::new();
    for f in floods {
        flooded.push(f.stop().await);
    }
    let s1 = c.stats();
    let d = delta(&s0, &s1);
    let (mut admitted, mut shed) = (0, 0);
    for ((s, before), flood) in servers.iter().zip(&before).zip(&flooded) {
        let (a, s) = for_the_cache(before, &s.stats().await, *flood);
        admitted += a;
        shed += s;
    }
    eprintln!(
        "floods: {flooded:?}; the cache: {d:?}; {failed} misses failed, the slowest after \
         {slowest:?}; the servers admitted {admitted} and shed {shed} of its lookups"
    );

    assert_eq!(d.misses, 150, "{d:?}");
    assert_eq!(d.errors, failed, "{d:?}");
    assert!(
        failed >= 30,
        "only {failed} of 150 misses failed: the fleet did not shed"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a miss failed only after {slowest:?}"
    );
    // Each miss: one lookup, and one retry at most (never a third server).
    assert!(d.lookups_sent <= 2 * d.misses, "{d:?}");
    assert_eq!(d.lookups_sent, d.misses + d.retried_overloaded, "{d:?}");
    assert!(d.retried_overloaded <= d.misses, "{d:?}");
    assert!(
        d.overloaded >= 2 * failed,
        "each failed miss was shed twice: {d:?}"
    );
    assert_eq!(
        shed, d.overloaded,
        "the servers' count and the cache's differ"
    );
    // What the servers saw of the cache: two lookups per miss at most, besides node-list
    // fetches (one at most per lookup admitted, counted by the servers only when shed).
    assert!(admitted <= d.lookups_sent, "{d:?}");
    assert!(
        admitted + shed <= 2 * d.misses + admitted,
        "the servers saw {} lookups from the cache for {} misses",
        admitted + shed,
        d.misses
    );
    assert_eq!((d.behind, d.unavailable, d.hedged), (0, 0, 0), "{d:?}");
    assert_eq!(s1.queue_depth, 0, "{s1:?}");
    c.shutdown();
    for s in servers {
        s.stop().await;
    }
}

/// A warm cache over two limited servers, both flooded: every call is a hit answered from the
/// cache; its refreshes are shed by the servers, dropped (not sent again) and counted in
/// `refreshes_shed`, which is what the servers counted as shed for the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_answered_while_the_fleet_sheds_their_refreshes() {
    let (a, tls) = Limited::start("hits-a", None, Some(LIMIT)).await;
    let (b, _) = Limited::start("hits-b", Some(&tls), Some(LIMIT)).await;
    let servers = [a, b];
    let m = map();
    let table = m.name().as_str();
    let c = cache(servers.iter().map(Limited::addr).collect(), &tls).await;
    servers_up(&c, 2).await;

    // Warm, before the flood (a miss shed by both servers is tried again after a pause).
    let hs = hashes(3, 40);
    for &h in &hs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.route_hash(table, h).await {
                Ok(_) => break,
                Err(CacheError::Overloaded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("warming, hash {h}: {e}"),
            }
        }
    }
    c.drain().await;
    // Counted from before the floods, which are counted whole.
    let mut before = Vec::new();
    for s in &servers {
        before.push(s.stats().await);
    }
    let s0 = c.stats();
    let mut floods = Vec::new();
    for s in &servers {
        floods.push(Flood::start(&tls, s.addr()).await);
    }
    let rounds = 25;
    for round in 0..rounds {
        for &h in &hs {
            let (route, hit) = c
                .route_hash_traced(table, h)
                .await
                .unwrap_or_else(|e| panic!("round {round}, hash {h}: {e}"));
            assert!(hit, "round {round}, hash {h}: not answered from the cache");
            assert_eq!(*route, m.route(h));
        }
        // Spread the refreshes over a few frames rather than one.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.drain().await;
    let mut flooded = Vec::new();
    for f in floods {
        flooded.push(f.stop().await);
    }
    let s1 = c.stats();
    let d = delta(&s0, &s1);
    let mut shed = 0;
    for ((s, before), flood) in servers.iter().zip(&before).zip(&flooded) {
        shed += for_the_cache(before, &s.stats().await, *flood).1;
    }
    eprintln!("floods: {flooded:?}; the cache: {d:?}; the servers shed {shed} of its lookups");

    let calls = (rounds * hs.len()) as u64;
    assert_eq!((d.hits, d.misses, d.errors), (calls, 0, 0), "{d:?}");
    assert!(d.refreshes_shed > 0, "no refresh was shed: {d:?}");
    assert_eq!(
        d.refreshes_shed, d.overloaded,
        "only refreshes were sent: {d:?}"
    );
    assert_eq!(
        shed, d.overloaded,
        "the servers' count and the cache's differ"
    );
    // Shed refreshes are not sent again: each hit's refresh went out once at most.
    assert_eq!((d.retried_overloaded, d.retried_elsewhere), (0, 0), "{d:?}");
    assert!(d.lookups_sent <= calls, "a refresh was sent twice: {d:?}");
    assert_eq!(s1.queue_depth, 0, "{s1:?}");
    assert_eq!(s1.entries, s0.entries, "{s1:?}");
    c.shutdown();
    for s in servers {
        s.stop().await;
    }
}

/// Hits and misses at once, so that frames hold both refreshes and misses, sent to a limited
/// server flooded by other routers and to an unlimited one: of a frame shed, the refreshes are
/// dropped and only the misses are sent again (once). Every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_a_frame_shed_only_the_misses_are_sent_again() {
    let (a, tls) = Limited::start("mixed-a", None, Some(LIMIT)).await;
    let (b, _) = Limited::start("mixed-b", Some(&tls), None).await;
    let m = map();
    let table = m.name().as_str();
    let c = cache(vec![a.addr(), b.addr()], &tls).await;
    servers_up(&c, 2).await;
    // Warm hashes (their partitions cached), and hashes of other partitions (misses).
    let warm = hashes(4, 40);
    for &h in &warm {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = c.route_hash(table, h).await {
            assert!(
                matches!(e, CacheError::Overloaded { .. }) && Instant::now() < deadline,
                "warming, hash {h}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.drain().await;
    let cached: Vec<u64> = warm.iter().map(|&h| m.route(h).partition.get()).collect();
    let cold: Vec<u64> = hashes(5, 2_000)
        .into_iter()
        .filter(|&h| !cached.contains(&m.route(h).partition.get()))
        .collect();

    let (a0, s0) = (a.stats().await, c.stats());
    let flood = Flood::start(&tls, a.addr()).await;
    let rounds = 20;
    let per_round = 4;
    let mut cold = cold.iter();
    for round in 0..rounds {
        let mut misses = Vec::new();
        for _ in 0..per_round {
            let (c, h) = (c.clone(), *cold.next().expect("enough cold hashes"));
            let table = table.to_owned();
            misses.push(tokio::spawn(async move {
                (h, c.route_hash_traced(&table, h).await)
            }));
        }
        for &h in &warm {
            let (_, hit) = c
                .route_hash_traced(table, h)
                .await
                .unwrap_or_else(|e| panic!("round {round}, hash {h}: {e}"));
            assert!(hit, "round {round}, hash {h}: not answered from the cache");
        }
        for task in misses {
            let (h, answer) = task.await.expect("a miss task");
            match answer {
                Ok((route, _)) => assert_eq!(*route, m.route(h)),
                Err(e) => panic!("round {round}, hash {h}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.drain().await;
    let flooded = flood.stop().await;
    let s1 = c.stats();
    let d = delta(&s0, &s1);
    let (_, shed_a) = for_the_cache(&a0, &a.stats().await, flooded);
    eprintln!("flood of A: {flooded:?}; the cache: {d:?}; A shed {shed_a} of its lookups");

    let calls = (rounds * (per_round + warm.len())) as u64;
    assert_eq!(d.errors, 0, "{d:?}");
    assert_eq!(d.hits + d.misses, calls, "{d:?}");
    assert!(d.refreshes_shed > 0, "A shed no refresh: {d:?}");
    assert!(d.retried_overloaded > 0, "A shed no miss: {d:?}");
    assert_eq!(shed_a, d.overloaded, "A's count and the cache's differ");
    // Only misses were sent again, once each at most; every refresh once at most.
    assert!(
        d.retried_overloaded <= d.misses,
        "refreshes were sent again: {d:?}"
    );
    assert_eq!(
        d.lookups_sent,
        d.hits + d.misses + d.retried_overloaded - d.dropped,
        "{d:?}"
    );
    assert_eq!(s1.queue_depth, 0, "{s1:?}");
    c.shutdown();
    a.stop().await;
    b.stop().await;
}

/// The value of a counter in the server's `/metrics` (0 if absent), over plain HTTP.
async fn scrape(addr: SocketAddr, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: memds\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("response");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A server at its connection limit closes the cache's connection as soon as it is made
/// (`BUSY`): the cache tries again ever less often (its backoff does not start over after a
/// connection that did not last), not every few milliseconds; and once the server has room,
/// the cache connects and its misses are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_its_connection_limit_is_not_hammered_with_handshakes() {
    let dir = temp_dir("busy");
    let mut config = ServerConfig::new(any_port(), dir.path().to_owned());
    config.limits.max_connections = 1;
    config.metrics_listen = Some(any_port());
    config.scrub_interval = None;
    let s = memds_server::start(config).await.expect("server starts");
    let tls = s.tls_dir.clone().expect("a development PKI");
    let metrics = s.metrics_addr.expect("a metrics listener");
    // The admin connection takes the one slot.
    let admin = client(&tls, Role::Admin, s.quic_addr).await;
    let m = map();
    admin.put_table(&m).await.expect("put");

    let series = "memds_connections_refused_total{reason=\"connection_limit\"}";
    let before = scrape(metrics, series).await;
    let mut config = Config::new(
        vec![s.quic_addr],
        ClientTls::from_dir(&tls, Role::Router).expect("tls"),
    );
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(5);
    let c = RouterCache::start(config).await.expect("cache starts");
    // Three seconds: with a backoff starting over at every connection made, some hundred
    // handshakes (one per 10 to 20 ms); growing from 20 ms to 1 s, about ten.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = scrape(metrics, series).await - before;
    eprintln!("the server refused {refused} connections from the cache in 3 s");
    assert!(refused >= 1.0, "the cache never reached the server");
    assert!(
        refused <= 20.0,
        "the cache connected {refused} times in 3 s to a server closing them at once"
    );

    // Room again: the cache connects (within its longest backoff) and is answered.
    admin.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = hashes(6, 1)[0];
    let route = loop {
        match c.route_hash(m.name().as_str(), h).await {
            Ok(route) => break route,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no answer once the server had room: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(*route, m.route(h));
    c.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
}
