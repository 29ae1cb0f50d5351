//! Drop-to-finish: a cache whose last handle is dropped stops its tasks and closes its
//! connections without being told, and `shutdown_complete` waits for every batch and hedge in
//! flight.

mod common;

use std::time::{Duration, Instant};

use common::{HeldServer, cache_of, server, servers_up, serving, synth_map, temp_dir};
use router_cache::{CacheError, Config, Mode, RouterCache};

/// The server's open connections, once they equal `n` (bounded: the server counts a
/// connection closed when it sees the peer's close, which nothing here can await).
async fn connections_become(admin: &memds_client::Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = admin.stats().await.expect("stats").connections;
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections open, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cache_stops_its_tasks_and_closes_its_connections() {
    let m = synth_map(100);
    let (s, tls, admin, _dir) = serving("dropped", &m).await;
    let name = m.name().as_str();
    let c = cache_of(vec![s.quic_addr], &tls, Mode::ConstantWork, 1 << 20).await;
    servers_up(&c, 1).await;
    // A miss, then hits whose refreshes are in flight as the cache goes.
    c.route(name, b"a key").await.expect("a miss, answered");
    let other = c.clone();
    for _ in 0..100 {
        other.route(name, b"a key").await.expect("a hit");
    }
    // The admin client and the cache.
    connections_become(&admin, 2).await;

    let finished = c.tasks_finished();
    drop(c);
    drop(other);
    tokio::time::timeout(Duration::from_secs(5), finished)
        .await
        .expect("every task of a dropped cache finishes");
    connections_become(&admin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_complete_waits_for_batches_and_hedges_in_flight() {
    let m = synth_map(100);
    let dir = temp_dir("held-shutdown");
    // A real server only for the PKI.
    let _s = server(dir.path().to_owned(), None, common::any_port()).await;
    let tls = dir.path().join("tls");
    let name = m.name().as_str();
    let (one, two) = (HeldServer::start(&tls, &m), HeldServer::start(&tls, &m));
    let mut config = Config::new(
        vec![one.addr, two.addr],
        router_cache::ClientTls::from_dir(&tls, router_cache::Role::Router).expect("tls"),
    );
    config.request_timeout = Duration::from_secs(30);
    config.hedge_delay = Duration::from_millis(20);
    let c = RouterCache::start(config).await.expect("cache starts");
    servers_up(&c, 2).await;

    // Both servers hold their answers: the miss is sent, then hedged to the other.
    one.hold(true);
    two.hold(true);
    let miss = tokio::spawn({
        let c = c.clone();
        let name = name.to_owned();
        async move { c.route(&name, b"held").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.stats().hedged == 0 || one.asked() + two.asked() < 2 {
        assert!(Instant::now() < deadline, "no hedge: {:?}", c.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.stats().queue_depth, 1, "the miss is in flight");

    // Within far less than the request timeout the batch (and its hedge) are done: its miss
    // failed as shut down, and nothing is left in flight.
    tokio::time::timeout(Duration::from_secs(5), c.shutdown_complete())
        .await
        .expect("shutdown completes");
    assert_eq!(c.stats().queue_depth, 0, "{:?}", c.stats());
    let result = tokio::time::timeout(Duration::from_secs(5), miss)
        .await
        .expect("the miss returns")
        .expect("the task");
    assert!(matches!(result, Err(CacheError::Shutdown)), "{result:?}");
    // Later calls fail at once.
    assert!(matches!(
        c.route(name, b"after").await,
        Err(CacheError::Shutdown)
    ));
}
