//! `RouterCache::warm` against real servers (in process, real QUIC and TLS on loopback): one
//! get-table fills the cache without a single lookup on the fleet, a second warm after a change
//! is one get-delta, capacity holds, and a server behind what the cache has seen is refused
//! and another asked, so a warm never moves a route backwards.

mod common;

use common::{
    cache_of as cache, client, free_port, server, servers_up, serving, synth_map as map, temp_dir,
};
use memds_client::{Client, Role};
use memds_proto::synth;
use memds_proto::wire::ErrorCode;
use memds_proto::{Route, TableMap};
use router_cache::{CacheError, Mode, RouteSource, RouterCache, WarmKind, Warmed};

async fn server_lookups(c: &Client) -> u64 {
    c.stats().await.expect("stats").lookups_total
}

async fn snapshot_bytes(c: &Client, table: &str) -> u64 {
    let (_, bytes) = c
        .get_table_snapshot(table, None)
        .await
        .expect("get")
        .expect("held");
    bytes.len() as u64
}

/// Every route of `m`, in start order.
fn routes_of(m: &TableMap) -> Vec<Route> {
    m.partitions().iter().map(|p| m.route(p.start)).collect()
}

/// The routes the cache holds for `table`, in start order.
fn cached_routes(c: &RouterCache, table: &str) -> Vec<Route> {
    c.dump(table)
        .expect("a known table")
        .routes
        .into_iter()
        .map(|r| r.route)
        .collect()
}

/// Warm in Classic mode (only misses would reach the fleet, and there are none): one get-table
/// fills the cache with every partition, the server counts no lookup, and looking up every
/// partition afterwards is all hits. After a split, the next warm is one get-delta bringing the
/// two new partitions; after that, nothing is newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_fills_the_cache_with_one_get_table_then_one_get_delta() {
    let m = map(500);
    let (s, tls, admin, _dir) = serving("warm", &m).await;
    let name = m.name().as_str();
    let v1 = m.version().get();
    let classic = Mode::Classic { whole_table: false };
    let c = cache(vec![s.quic_addr], &tls, classic, 1 << 20).await;
    let lookups = server_lookups(&admin).await;

    let w = c.warm(name).await.expect("warm");
    assert_eq!(
        w,
        Warmed {
            kind: WarmKind::Whole,
            version: v1,
            routes: 500,
            changed: 500,
            evicted: 0,
            bytes: Some(snapshot_bytes(&admin, name).await),
        }
    );
    assert_eq!(server_lookups(&admin).await, lookups, "a warm is no lookup");
    assert_eq!(cached_routes(&c, name), routes_of(&m));
    for p in m.partitions() {
        for h in [p.start, p.start.wrapping_add(1)] {
            let (route, hit) = c.route_hash_traced(name, h).await.expect("route");
            assert!(hit, "hash {h} missed");
            assert_eq!(*route, m.route(h));
        }
    }
    let st = c.stats();
    assert_eq!((st.hits, st.misses, st.errors), (1000, 0, 0), "{st:?}");
    assert_eq!((st.warms, st.warm_routes, st.warm_deltas), (1, 500, 0));
    assert_eq!(
        server_lookups(&admin).await,
        lookups,
        "hits of Classic send nothing"
    );

    // A split on the server: the next warm is the delta since the version warmed.
    let index = 123;
    let update = synth::split_update(&m, index, 1_000_000);
    let mid = update.partitions[1].start;
    let (left, right) = (m.partitions()[index].start, m.end_inclusive(index));
    admin.update_partitions(update).await.expect("split");
    let v2 = admin
        .get_table(name, None)
        .await
        .expect("get")
        .expect("held");
    let w = c.warm(name).await.expect("warm");
    assert_eq!(
        w,
        Warmed {
            kind: WarmKind::Delta,
            version: v1 + 1,
            routes: 2,
            changed: 2,
            evicted: 0,
            bytes: None,
        }
    );
    for h in [left, mid - 1, mid, right] {
        let (route, hit) = c.route_hash_traced(name, h).await.expect("route");
        assert!(hit, "hash {h} missed");
        assert_eq!(*route, v2.route(h), "hash {h}");
    }
    assert_eq!(
        c.explain_hash(name, mid).route.map(|r| r.source),
        Some(RouteSource::Warm)
    );
    // The partitions the delta did not touch keep the version they were warmed at; otherwise
    // the cache is the table at its new version.
    let same_but_version: Vec<Route> = routes_of(&v2)
        .into_iter()
        .map(|mut r| {
            if r.partition.get() != 1_000_000 && r.start != left {
                r.version = m.version();
            }
            r
        })
        .collect();
    assert_eq!(cached_routes(&c, name), same_but_version);

    // Nothing newer: nothing to do.
    let w = c.warm(name).await.expect("warm");
    assert_eq!(
        (w.kind, w.version, w.routes, w.changed),
        (WarmKind::NotModified, v1 + 1, 0, 0)
    );
    let st = c.stats();
    assert_eq!(st.misses, 0, "{st:?}");
    assert_eq!(
        (
            st.warms,
            st.warm_deltas,
            st.warms_not_modified,
            st.warm_failures,
            st.warm_routes
        ),
        (3, 1, 1, 0, 502)
    );
    assert_eq!(server_lookups(&admin).await, lookups);

    // After a flush the copy is gone with the routes: the next warm is whole again.
    c.clear();
    assert_eq!(c.dump(name).expect("known").copy_version, None);
    let w = c.warm(name).await.expect("warm");
    assert_eq!((w.kind, w.routes, w.changed), (WarmKind::Whole, 501, 501));
    assert_eq!(cached_routes(&c, name), routes_of(&v2));
    c.shutdown();
    common::stop(s).await;
}

/// Warm in ConstantWork mode: the warm itself is no lookup; the calls after it are all hits,
/// each sending its one refresh lookup, so the server counts exactly one lookup per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_in_constant_work_mode_leaves_one_lookup_per_call() {
    let m = map(300);
    let (s, tls, admin, _dir) = serving("warm-cw", &m).await;
    let name = m.name().as_str();
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork, 1 << 20).await;
    let lookups = server_lookups(&admin).await;
    let w = c.warm(name).await.expect("warm");
    assert_eq!((w.kind, w.routes, w.changed), (WarmKind::Whole, 300, 300));
    assert_eq!(server_lookups(&admin).await, lookups);
    for p in m.partitions() {
        let (route, hit) = c.route_hash_traced(name, p.start).await.expect("route");
        assert!(hit);
        assert_eq!(*route, m.route(p.start));
    }
    c.drain().await;
    let st = c.stats();
    assert_eq!(
        (st.hits, st.misses, st.lookups_sent),
        (300, 0, 300),
        "{st:?}"
    );
    assert_eq!(server_lookups(&admin).await - lookups, 300);
    c.shutdown();
    common::stop(s).await;
}

/// A table of more partitions than the capacity: each route past it evicts a pseudo-random
/// one, so the cache ends at its capacity and says how many went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_keeps_to_the_capacity() {
    let m = map(300);
    let (s, tls, _admin, _dir) = serving("warm-capacity", &m).await;
    let name = m.name().as_str();
    let c = cache(
        vec![s.quic_addr],
        &tls,
        Mode::Classic { whole_table: false },
        100,
    )
    .await;
    let w = c.warm(name).await.expect("warm");
    assert_eq!(
        (w.kind, w.routes, w.changed, w.evicted),
        (WarmKind::Whole, 300, 300, 200)
    );
    let cached = cached_routes(&c, name);
    assert_eq!(cached.len(), 100);
    assert!(cached.iter().all(|r| *r == m.route(r.start)));
    assert_eq!(c.stats().entries, 100);
    c.shutdown();
    common::stop(s).await;
}

/// A holds the table split (version 2 of it), B the version before. Caches that have seen
/// version 2 never take B's table: a warm that reaches B first is refused there (`behind`) and
/// answered by A; with A gone, the warm fails with [`CacheError::Refused`] and the cache keeps
/// what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_never_moves_a_route_backwards() {
    let dir = temp_dir("warm-behind-a");
    let a = server(dir.path().to_owned(), None, common::any_port()).await;
    let tls = dir.path().join("tls");
    let m = map(300);
    let name = m.name().as_str();
    let admin_a = client(&tls, Role::Admin, a.quic_addr).await;
    admin_a.put_table(&m).await.expect("put");
    let update = synth::split_update(&m, 77, 1_000_000);
    let mid = update.partitions[1].start;
    admin_a.update_partitions(update).await.expect("split");
    let v2 = admin_a
        .get_table(name, None)
        .await
        .expect("get")
        .expect("held");
    admin_a.close();
    let b_addr = free_port();

    // While only A is up: one cache warms (its copy is at version 2), and two learn version 2
    // from a miss (no copy), with the fleet listed in either order.
    let classic = Mode::Classic { whole_table: false };
    let warmed = cache(vec![a.quic_addr, b_addr], &tls, Mode::ConstantWork, 1 << 20).await;
    let learned = [
        cache(vec![a.quic_addr, b_addr], &tls, classic, 1 << 20).await,
        cache(vec![b_addr, a.quic_addr], &tls, classic, 1 << 20).await,
    ];
    let w = warmed.warm(name).await.expect("warm");
    assert_eq!((w.kind, w.version), (WarmKind::Whole, v2.version().get()));
    for c in &learned {
        assert_eq!(
            *c.route_hash(name, mid).await.expect("route"),
            v2.route(mid)
        );
    }

    // B comes up with the version before the split.
    let dir_b = temp_dir("warm-behind-b");
    let b = server(dir_b.path().to_owned(), Some(&tls), b_addr).await;
    client(&tls, Role::Admin, b.quic_addr)
        .await
        .put_table(&m)
        .await
        .expect("put");
    for c in learned.iter().chain([&warmed]) {
        servers_up(c, 2).await;
    }

    // The two caches warm whole. Each picks its first server by the same seeded choice over
    // the same positions, so exactly one of them (whose list has B there) asks B first: B's
    // older table is refused as behind and A is asked. Both end with exactly version 2.
    for c in &learned {
        let w = c.warm(name).await.expect("warm");
        assert_eq!(
            (w.kind, w.version, w.routes),
            (WarmKind::Whole, v2.version().get(), 301)
        );
        assert_eq!(cached_routes(c, name), routes_of(&v2));
        assert_eq!(c.stats().unavailable, 0);
    }
    let behind: u64 = learned.iter().map(|c| c.stats().behind).sum();
    assert_eq!(behind, 1, "one cache asked B first");

    // A goes: the cache with a copy asks B for the delta since version 2; B holds the version
    // before, so it is refused, and no other server is connected.
    common::stop(a).await;
    servers_up(&warmed, 1).await;
    let before = warmed.stats();
    match warmed.warm(name).await {
        Err(CacheError::Refused {
            servers: 2,
            behind: 1,
            unavailable: 0,
            min_version,
            last,
        }) => {
            assert_eq!(min_version, Some(v2.version().get()));
            assert_eq!(last.code, ErrorCode::Behind);
        }
        other => panic!("a warm from a server behind: {other:?}"),
    }
    let st = warmed.stats();
    assert_eq!(
        (st.behind, st.warm_failures, st.warms),
        (before.behind + 1, 1, 1)
    );
    assert_eq!(cached_routes(&warmed, name), routes_of(&v2));
    let d = warmed.dump(name).expect("known");
    assert_eq!(
        (d.copy_version, d.newest_version),
        (Some(v2.version().get()), Some(v2.version().get()))
    );
    // The same for a cache with no copy: B's whole table is refused.
    let c = &learned[0];
    c.clear();
    servers_up(c, 1).await;
    assert!(matches!(
        c.warm(name).await,
        Err(CacheError::Refused { behind: 1, .. })
    ));
    assert!(cached_routes(c, name).is_empty());

    for c in learned.iter().chain([&warmed]) {
        c.shutdown();
    }
    common::stop(b).await;
}
