//! The router cache against real memds-servers (in process, real QUIC and TLS on loopback):
//! the constant-work invariant, Classic mode, route changes reaching the cache, and losing
//! servers.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{any_port, server, servers_up, temp_dir};
use memds_client::{Client, ClientTls, Role};
use memds_proto::model::{PartitionSpec, UpdateSpec};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::{Epoch, TableMap, TableVersion};
use router_cache::{CacheError, Invalidate, Mode, RouteSource, RouterCache};
use tokio::runtime::Handle;

/// Starts a server; the first one of a test creates the PKI, later ones share it.
async fn admin(tls: &Path, addr: SocketAddr) -> Client {
    common::client(tls, Role::Admin, addr).await
}

fn map(partitions: usize) -> TableMap {
    synth::generate_table(
        &SynthConfig {
            partitions,
            ..SynthConfig::default()
        },
        0,
    )
}

async fn cache(servers: Vec<SocketAddr>, tls: &Path, mode: Mode) -> RouterCache {
    RouterCache::builder(
        servers,
        ClientTls::from_dir(tls, Role::Router).expect("tls"),
    )
    .mode(mode)
    // No hedging in these tests unless asked: hedges are extra lookups by design.
    .hedge_delay(Duration::from_secs(30))
    .request_timeout(Duration::from_secs(5))
    .build()
    .await
    .expect("cache starts")
}

async fn server_lookups(c: &Client) -> u64 {
    c.stats().await.expect("stats").lookups_total
}

fn hashes(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| (i + seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_work_server_lookups_equal_route_calls_at_any_hit_rate() {
    let dir = temp_dir("cw");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(500);
    admin.put_table(&m).await.expect("put");
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork).await;
    let name = m.name().as_str();

    let mut calls = 0u64;
    let before = server_lookups(&admin).await;
    // Cold, then warm (the same hashes again), then every mix: a partly cleared cache.
    let phases: Vec<(Vec<u64>, bool)> = vec![
        (hashes(1, 300), false),
        (hashes(1, 300), false),
        (hashes(2, 300), false),
        (hashes(1, 300), true),
    ];
    for (i, (hs, clear_first)) in phases.into_iter().enumerate() {
        if clear_first {
            c.clear();
        }
        for chunk in hs.chunks(50) {
            let futs: Vec<_> = chunk.iter().map(|&h| c.route_hash(name, h)).collect();
            for (f, &h) in futs.into_iter().zip(chunk) {
                let r = f.await.expect("route");
                assert!(r.contains(h));
                assert_eq!(*r, m.route(h));
            }
            calls += chunk.len() as u64;
        }
        c.drain().await;
        let counted = server_lookups(&admin).await - before;
        assert_eq!(
            counted, calls,
            "phase {i}: the server counted {counted} lookups for {calls} calls"
        );
    }
    // Four more threads at once, each queueing its refreshes on its own ring.
    let per_thread = on_threads(4, |i, rt| {
        let hs = hashes(i as u64 % 2, 300);
        for &h in &hs {
            let r = rt.block_on(c.route_hash(name, h)).expect("route");
            assert_eq!(*r, m.route(h));
        }
        hs.len() as u64
    });
    calls += per_thread.iter().sum::<u64>();
    c.drain().await;
    let counted = server_lookups(&admin).await - before;
    assert_eq!(
        counted, calls,
        "four threads: the server counted {counted} lookups for {calls} calls"
    );
    let st = c.stats();
    assert_eq!(st.hits + st.misses, calls);
    assert!(st.hits > 0 && st.misses > 0, "{st:?}");
    assert_eq!(st.dropped, 0);
    assert_eq!(st.lookups_sent, calls);
    assert_eq!(st.queue_depth, 0);
    c.shutdown();
    s.shutdown().await;
}

/// Refreshes wait to share a frame (`refresh_linger`), and a miss does not wait: it goes at
/// once and carries the held refreshes in its frame. The fleet still gets one lookup per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_refreshes_leave_with_the_next_miss_in_one_frame() {
    let dir = temp_dir("linger");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(500);
    admin.put_table(&m).await.expect("put");
    let name = m.name().as_str();
    // A linger far longer than the test: only a miss or a full frame sends refreshes.
    let c = RouterCache::builder(
        vec![s.quic_addr],
        ClientTls::from_dir(&tls, Role::Router).expect("tls"),
    )
    .hedge_delay(Duration::from_secs(30))
    .request_timeout(Duration::from_secs(20))
    .refresh_linger(Duration::from_secs(60))
    .build()
    .await
    .expect("cache starts");
    // One hash in each of 40 partitions: 40 misses, no hit among them.
    let warm: Vec<u64> = (0..40).map(|i| m.partitions()[i * 10].start).collect();
    for &h in &warm {
        // Misses: each goes at once, whatever the linger.
        assert_eq!(*c.route_hash(name, h).await.expect("miss"), m.route(h));
    }
    let frames = |st: memds_proto::wire::ServerStats| (st.requests_total, st.lookups_total);
    let (requests_before, lookups_before) = frames(admin.stats().await.expect("stats"));
    let hits_before = c.stats().hits;
    assert_eq!(hits_before, 0);
    for &h in &warm {
        assert_eq!(*c.route_hash(name, h).await.expect("hit"), m.route(h));
    }
    assert_eq!(c.stats().hits - hits_before, 40);
    // Held: the server has seen none of the 40 refreshes (the stats request is the only one).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (requests, lookups) = frames(admin.stats().await.expect("stats"));
    assert_eq!(
        (requests - requests_before, lookups - lookups_before),
        (1, 0),
        "the refreshes left before the linger or a miss"
    );
    // A miss: answered without waiting for the linger, and its frame carries the 40 refreshes.
    let fresh = m.partitions()[401].start;
    let transport_before = c.transport_stats();
    let started = std::time::Instant::now();
    assert_eq!(
        *c.route_hash(name, fresh).await.expect("miss"),
        m.route(fresh)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the miss waited for the linger"
    );
    c.drain().await;
    let transport = c.transport_stats().since(&transport_before);
    let (requests_after, lookups_after) = frames(admin.stats().await.expect("stats"));
    assert_eq!(lookups_after - lookups, 41, "one lookup per call");
    // The 41 lookups (8 bytes each) left in one datagram and came back in one or two (the
    // answer and, at most, an acknowledgement of our own); the router acknowledged the answer
    // at most once besides.
    assert!(
        (1..=2).contains(&transport.datagrams_sent) && transport.datagrams_received >= 1,
        "41 lookups in one frame took {transport:?}"
    );
    assert!(transport.bytes_sent > 41 * 8, "{transport:?}");
    assert_eq!(
        requests_after - requests,
        2,
        "one frame for the miss and the 40 refreshes, one for this stats request"
    );
    // `drain` does not wait out the linger: held refreshes leave at once.
    for &h in &warm[..10] {
        c.route_hash(name, h).await.expect("hit");
    }
    let started = std::time::Instant::now();
    c.drain().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain waited for the linger"
    );
    let (_, lookups_drained) = frames(admin.stats().await.expect("stats"));
    assert_eq!(lookups_drained - lookups_after, 10);
    c.shutdown();
    s.shutdown().await;
}

/// Runs `f` on `n` threads of their own (each with its own hit handles and refresh ring), giving
/// it the thread's index and the test's runtime to block on, and collects what they return.
fn on_threads<T: Send>(n: usize, f: impl Fn(usize, &Handle) -> T + Sync) -> Vec<T> {
    let (f, rt) = (&f, &Handle::current());
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..n).map(|i| s.spawn(move || f(i, rt))).collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("the thread finished"))
                .collect()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_sends_only_misses_and_whole_table_sends_no_lookups() {
    let dir = temp_dir("classic");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(300);
    admin.put_table(&m).await.expect("put");
    let name = m.name().as_str();

    let c = cache(
        vec![s.quic_addr],
        &tls,
        Mode::Classic { whole_table: false },
    )
    .await;
    let before = server_lookups(&admin).await;
    for round in 0..3 {
        for &h in &hashes(round, 200) {
            assert_eq!(*c.route_hash(name, h).await.expect("route"), m.route(h));
        }
    }
    c.drain().await;
    let st = c.stats();
    assert_eq!(server_lookups(&admin).await - before, st.misses);
    assert!(st.hits > st.misses, "{st:?}");
    c.shutdown();

    let c = cache(vec![s.quic_addr], &tls, Mode::Classic { whole_table: true }).await;
    let before = server_lookups(&admin).await;
    for &h in &hashes(9, 500) {
        assert_eq!(*c.route_hash(name, h).await.expect("route"), m.route(h));
    }
    c.drain().await;
    assert_eq!(
        server_lookups(&admin).await - before,
        0,
        "the whole table came in one get-table"
    );
    assert_eq!(c.stats().entries, 300);
    c.shutdown();
    s.shutdown().await;
}

/// Whether two routes are the same but for the table version they were cached at (a route a
/// delta did not touch keeps the version it was downloaded at).
fn same_route(a: &memds_proto::Route, b: &memds_proto::Route) -> bool {
    (
        a.partition,
        a.start,
        a.end_inclusive,
        a.epoch,
        a.leader,
        &a.replicas,
    ) == (
        b.partition,
        b.start,
        b.end_inclusive,
        b.epoch,
        b.leader,
        &b.replicas,
    )
}

/// Waits (bounded) until the cache's stats satisfy `done`.
async fn stats_until(
    c: &RouterCache,
    what: &str,
    done: impl Fn(&router_cache::CacheStats) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.stats();
        if done(&st) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_table_mode_refreshes_by_delta_and_downloads_only_when_no_delta_is_known() {
    let dir = temp_dir("whole-delta");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(3000);
    admin.put_table(&m).await.expect("put");
    let name = m.name().as_str();
    let c = RouterCache::builder(
        vec![s.quic_addr],
        ClientTls::from_dir(&tls, Role::Router).expect("tls"),
    )
    .mode(Mode::Classic { whole_table: true })
    .table_refresh(Duration::from_millis(100))
    .hedge_delay(Duration::from_secs(30))
    .request_timeout(Duration::from_secs(5))
    .build()
    .await
    .expect("cache starts");
    let lookups_before = server_lookups(&admin).await;

    // First touch: the whole table. Refreshes of an unchanged table fetch nothing.
    let probe = hashes(5, 400);
    for &h in &probe {
        assert_eq!(*c.route_hash(name, h).await.expect("route"), m.route(h));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let st = c.stats();
    assert_eq!((st.table_downloads, st.table_deltas), (1, 0), "{st:?}");
    assert_eq!(st.entries, 3000);

    // One split: the next refresh brings that one change, and lookups see it.
    let index = 1234;
    let update = memds_proto::synth::split_update(&m, index, 1_000_000);
    let mid = update.partitions[1].start;
    let (left, right) = (m.partitions()[index].start, m.end_inclusive(index));
    admin.update_partitions(update).await.expect("split");
    let split = admin
        .get_table(name, None)
        .await
        .expect("get")
        .expect("held");
    stats_until(&c, "a refresh by delta", |st| st.table_deltas == 1).await;
    let st = c.stats();
    assert_eq!(
        st.table_downloads, 1,
        "no whole download for one split: {st:?}"
    );
    assert_eq!(st.entries, 3001, "{st:?}");
    for h in probe.iter().copied().chain([left, mid - 1, mid, right]) {
        let got = c.route_hash(name, h).await.expect("route");
        let want = split.route(h);
        assert!(same_route(&got, &want), "hash {h}: {got:?}, want {want:?}");
    }
    let right_half = c.route_hash(name, mid).await.expect("route");
    assert_eq!(
        (right_half.partition.get(), right_half.version.get()),
        (1_000_000, split.version().get())
    );

    // The next split arrives as a put of the whole table, which leaves the server no delta
    // to tell: the cache downloads it whole.
    let mut interner = memds_proto::NodeInterner::default();
    let next = memds_proto::CompactTable::new(&split, &mut interner)
        .apply(
            &memds_proto::synth::split_update(&split, 77, 2_000_000).into(),
            &mut interner,
        )
        .expect("a valid split")
        .to_map();
    admin.put_table(&next).await.expect("put");
    stats_until(&c, "a whole download after a put", |st| {
        st.table_downloads == 2
    })
    .await;
    let st = c.stats();
    assert_eq!(st.table_deltas, 1, "{st:?}");
    for &h in &probe {
        let got = c.route_hash(name, h).await.expect("route");
        assert!(same_route(&got, &next.route(h)), "hash {h}");
    }
    assert_eq!(
        server_lookups(&admin).await - lookups_before,
        0,
        "whole-table mode sent no lookups"
    );
    c.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_reaches_the_cache_within_one_request_and_old_answers_never_win() {
    let dir = temp_dir("split");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(100);
    admin.put_table(&m).await.expect("put");
    let name = m.name().as_str();
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork).await;

    let p = m.partitions()[40];
    let end = m.end_inclusive(40);
    let mid = p.start + (end - p.start) / 2;
    let old = c.route_hash(name, mid).await.expect("miss fills the cache");
    assert_eq!(old.partition, p.id);
    // Split the partition on the server; move the left half's leader too.
    let replicas: Vec<u32> = p.replicas.as_slice().iter().map(|r| r.get()).collect();
    let update = UpdateSpec {
        table: name.into(),
        base_version: m.version().get(),
        version: m.version().get() + 1,
        end_inclusive: end,
        nodes: vec![],
        partitions: vec![
            PartitionSpec {
                id: p.id.get(),
                start: p.start,
                epoch: p.epoch.get() + 1,
                replicas: replicas.clone(),
                leader: (u64::from(p.leader) + 1) % 3,
            },
            PartitionSpec {
                id: 424_242,
                start: mid,
                epoch: p.epoch.get() + 1,
                replicas,
                leader: 0,
            },
        ],
    };
    admin.update_partitions(update).await.expect("split");
    // One further request to the range: answered from cache (old route), and its refresh
    // brings the split.
    let hit = c.route_hash(name, mid).await.expect("hit");
    assert_eq!(hit.partition, p.id, "a hit answers from the cache");
    c.drain().await;
    let now = c.route_hash(name, mid).await.expect("hit");
    assert_eq!(now.partition.get(), 424_242);
    assert_eq!(now.start, mid);
    let left = c.route_hash(name, p.start).await.expect("route");
    c.drain().await;
    let left = if left.epoch == p.epoch {
        c.route_hash(name, p.start).await.expect("route")
    } else {
        left
    };
    assert_eq!(left.epoch.get(), p.epoch.get() + 1);
    assert_eq!(left.end_inclusive, mid - 1);
    assert!(c.stats().refreshes_changed >= 1);
    // The old answer, arriving late (as a storage node's stale correction), changes nothing.
    assert!(!c.apply_route((*old).clone()));
    assert_eq!(
        c.route_hash(name, mid).await.expect("hit").partition.get(),
        424_242
    );
    // A name that cannot be a table fails at once with a typed error: nothing is sent, nothing
    // cached, nothing to invalidate.
    c.drain().await;
    let before = c.stats();
    for bad in [String::new(), "t".repeat(256)] {
        let r = c.route_hash(&bad, mid).await;
        assert!(matches!(r, Err(CacheError::InvalidTable(_))), "{r:?}");
        assert!(!c.invalidate(&bad, Invalidate::Hash(mid), u64::MAX));
    }
    c.drain().await;
    let after = c.stats();
    assert_eq!(after.lookups_sent, before.lookups_sent);
    assert_eq!(after.entries, before.entries);
    assert_eq!(after.errors, before.errors + 2);
    assert!(!c.invalidate("no-such-table", Invalidate::Partition(1), u64::MAX));
    // Invalidation: a storage node says the route is wrong; the next call is a miss.
    let misses = c.stats().misses;
    assert!(c.invalidate(name, Invalidate::Hash(mid), now.epoch.get()));
    c.route_hash(name, mid).await.expect("miss");
    assert_eq!(c.stats().misses, misses + 1);
    c.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_thread_serves_a_replaced_or_invalidated_route_once_the_change_returns() {
    let dir = temp_dir("threads");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    admin(&tls, s.quic_addr)
        .await
        .put_table(&map(100))
        .await
        .expect("put");
    let m = map(100);
    let name = m.name().as_str();
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork).await;
    for &h in &hashes(7, 100) {
        c.route_hash(name, h).await.expect("warm");
    }
    c.drain().await;
    let h = hashes(7, 1)[0];
    let old = m.route(h);
    // Four threads each hold a handle on the table's hit snapshot, taken by a hit.
    let first = on_threads(4, |_, rt| {
        rt.block_on(c.route_hash_traced(name, h)).expect("route")
    });
    for (r, hit) in &first {
        assert!(hit, "warm routes are hits");
        assert_eq!(**r, old);
    }
    // A storage node hands back a corrected route (next epoch, leader moved): once
    // `apply_route` returns, no thread answers the old one.
    let mut newer = old.clone();
    newer.epoch = Epoch::new(old.epoch.get() + 1);
    newer.leader = (old.leader + 1) % old.replicas.len() as u8;
    assert!(c.apply_route(newer.clone()));
    for r in on_threads(4, |_, rt| {
        rt.block_on(c.route_hash(name, h)).expect("route")
    }) {
        assert_eq!(*r, newer, "a thread answered a replaced route");
    }
    // The route is invalidated: no thread answers it again (the fleet still has the old
    // epoch, which the misses bring back).
    c.drain().await;
    assert!(c.invalidate(name, Invalidate::Hash(h), newer.epoch.get()));
    for r in on_threads(4, |_, rt| {
        rt.block_on(c.route_hash(name, h)).expect("route")
    }) {
        assert_eq!(*r, old, "a thread answered an invalidated route");
    }
    c.shutdown();
    s.shutdown().await;
}

/// The table at the next version with node `id` moved to `addr` (a pod restarted under the
/// same id at a new IP): nothing else changes, no partition, no epoch.
fn with_node_moved(m: &TableMap, id: memds_proto::NodeId, addr: &str) -> TableMap {
    let (name, version, mut nodes, partitions) = m.clone().into_parts();
    nodes
        .iter_mut()
        .find(|n| n.id == id)
        .expect("a listed node")
        .addr = addr.to_owned();
    TableMap::new(
        name,
        TableVersion::new(version.get() + 1),
        nodes,
        partitions,
    )
    .expect("the same map at the next version is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_at_a_new_address_under_the_same_id_reaches_the_cache() {
    let dir = temp_dir("moved");
    let s = server(dir.path().to_owned(), None, any_port()).await;
    let tls = dir.path().join("tls");
    let admin = admin(&tls, s.quic_addr).await;
    let m = map(100);
    admin.put_table(&m).await.expect("put");
    let name = m.name().as_str();
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork).await;
    let whole = RouterCache::builder(
        vec![s.quic_addr],
        ClientTls::from_dir(&tls, Role::Router).expect("tls"),
    )
    .mode(Mode::Classic { whole_table: true })
    .request_timeout(Duration::from_secs(5))
    .build()
    .await
    .expect("cache starts");

    let h = m.partitions()[40].start;
    let old = c.route_hash(name, h).await.expect("a miss fills the cache");
    assert_eq!(*old, m.route(h));
    assert_eq!(
        *whole.route_hash(name, h).await.expect("download"),
        m.route(h)
    );
    let (_, hit) = c.route_hash_traced(name, h).await.expect("route");
    assert!(hit, "the route is cached");
    c.drain().await;

    // The leader's node comes back at a new address under its id: version N + 1, same
    // partitions and epochs.
    let leader = old.leader_replica().expect("a leader").id;
    let moved_to = "10.99.0.7:7000";
    let moved = with_node_moved(&m, leader, moved_to);
    admin.put_table(&moved).await.expect("put");
    let want = moved.route(h);
    assert_eq!(
        (want.partition, want.epoch, want.leader),
        (old.partition, old.epoch, old.leader)
    );

    // Each hit answers from the cache and queues a refresh; the refresh's answer brings the
    // new address (waited for, bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (got, hit) = c.route_hash_traced(name, h).await.expect("route");
        assert!(hit, "a moved node is no reason for a miss");
        if *got == want {
            break;
        }
        assert_eq!(*got, *old, "the old route or the new one, nothing else");
        assert!(
            std::time::Instant::now() < deadline,
            "the refreshes kept confirming the old address {:?}: {:?}",
            old.leader_replica(),
            c.explain_hash(name, h)
        );
        c.drain().await;
    }
    let cached = c.explain_hash(name, h).route.expect("cached");
    assert_eq!(
        (
            &*cached.route.leader_replica().expect("leader").addr,
            cached.source
        ),
        (moved_to, RouteSource::Refresh)
    );
    assert!(c.stats().refreshes_changed >= 1);

    // The old route, older by a version, never replaces it (as a storage node's late
    // correction), and the next refresh confirms the new one.
    assert!(!c.apply_route((*old).clone()));
    assert_eq!(*c.route_hash(name, h).await.expect("hit"), want);
    c.drain().await;
    assert_eq!(*c.route_hash(name, h).await.expect("hit"), want);

    // Whole-table mode: the put leaves no delta, the refresh downloads the table whole and
    // its routes carry the new address.
    whole.refresh_tables().await.expect("refresh");
    let got = whole.route_hash(name, h).await.expect("route");
    assert_eq!(*got, want);
    c.shutdown();
    whole.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_servers_fails_no_hit_and_the_queue_bound_holds() {
    let dir_a = temp_dir("lose-a");
    let a = server(dir_a.path().to_owned(), None, any_port()).await;
    let tls = dir_a.path().join("tls");
    let dir_b = temp_dir("lose-b");
    let b = server(dir_b.path().to_owned(), Some(&tls), any_port()).await;
    let (addr_a, addr_b) = (a.quic_addr, b.quic_addr);
    let m = map(200);
    let name = m.name().as_str();
    for addr in [addr_a, addr_b] {
        admin(&tls, addr).await.put_table(&m).await.expect("put");
    }
    let c = RouterCache::builder(
        vec![addr_a, addr_b],
        ClientTls::from_dir(&tls, Role::Router).expect("tls"),
    )
    .queue_bound(64)
    .max_batch(64)
    .request_timeout(Duration::from_millis(800))
    .hedge_delay(Duration::from_millis(30))
    .build()
    .await
    .expect("cache");
    servers_up(&c, 2).await;
    let warm = hashes(5, 200);
    for &h in &warm {
        c.route_hash(name, h).await.expect("warm");
    }
    c.drain().await;

    // Lose server A: hits all succeed, misses go through B.
    a.shutdown().await;
    for &h in &warm {
        assert_eq!(
            *c.route_hash(name, h).await.expect("a hit never fails"),
            m.route(h)
        );
    }
    c.clear();
    for &h in hashes(6, 50).iter() {
        assert_eq!(
            *c.route_hash(name, h)
                .await
                .expect("a miss succeeds through B"),
            m.route(h)
        );
    }
    c.drain().await;

    // Server A comes back on its address: traffic returns to it.
    let a = server(dir_a.path().to_owned(), Some(tls.as_path()), addr_a).await;
    let admin_a = admin(&tls, addr_a).await;
    servers_up(&c, 2).await;
    // Each round's refreshes may travel as one batch to either server (power of two choices
    // between two idle servers is a coin toss), so send rounds until one reaches A: 40 rounds
    // all landing on B would take a one-in-a-trillion run of tosses.
    let before = server_lookups(&admin_a).await;
    let mut returned = false;
    for round in warm.chunks(5).take(40) {
        for &h in round {
            c.route_hash(name, h).await.expect("route");
        }
        c.drain().await;
        if server_lookups(&admin_a).await > before {
            returned = true;
            break;
        }
    }
    assert!(returned, "no traffic returned to the restarted server");
    // Every warm route cached again, for the fleet-less part.
    for &h in &warm {
        c.route_hash(name, h).await.expect("route");
    }
    c.drain().await;

    // The whole fleet stops: hits still answer, the queue stays bounded, misses fail in time.
    a.shutdown().await;
    b.shutdown().await;
    servers_up(&c, 0).await;
    let mut max_depth = 0;
    for _ in 0..20 {
        for &h in &warm {
            let r = c
                .route_hash(name, h)
                .await
                .expect("a hit never fails, fleet or not");
            assert!(r.contains(h));
            max_depth = max_depth.max(c.stats().queue_depth);
        }
    }
    let st = c.stats();
    // The thread's ring (64), what one round takes from it (64), and what the dispatcher
    // holds while refreshes linger (less than a frame's worth, `max_batch`).
    assert!(
        max_depth <= 2 * 64 + 64,
        "queue depth {max_depth} is not bounded by the queue and the frame"
    );
    assert!(
        st.dropped >= 20 * 200 / 2,
        "refreshes with no fleet must be dropped and counted: {st:?}"
    );
    assert!(
        st.oldest_unconfirmed_seconds.is_some_and(|s| s > 0.0),
        "{st:?}"
    );
    c.clear();
    let started = std::time::Instant::now();
    let miss = c.route_hash(name, 12345).await;
    assert!(matches!(miss, Err(CacheError::Timeout(..))), "{miss:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the miss failed only after {:?}",
        started.elapsed()
    );
    // Waiting for the queue ends even though misses timed out against no fleet.
    tokio::time::timeout(Duration::from_secs(5), c.drain())
        .await
        .expect("drain returns once the timed-out misses are given up");
    assert_eq!(c.stats().queue_depth, 0);

    // Once shut down: a miss fails at once, a hit still answers (its refresh is refused and
    // counted), and waiting for the queue returns.
    assert!(
        c.apply_route(m.route(warm[0])),
        "a corrected route, with no fleet"
    );
    c.shutdown();
    let dropped = c.stats().dropped;
    assert!(matches!(
        c.route_hash(name, 4242).await,
        Err(CacheError::Shutdown)
    ));
    assert!(c.route_hash(name, warm[0]).await.is_ok());
    assert_eq!(c.stats().dropped, dropped + 1);
    tokio::time::timeout(Duration::from_secs(1), c.drain())
        .await
        .expect("drain returns after shutdown");
}
