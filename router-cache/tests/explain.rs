//! `RouterCache::explain` and `RouterCache::dump` against real servers (in process, real QUIC
//! and TLS on loopback): where each cached route came from (a miss, a refresh that changed it,
//! a storage node's correction, a warm), how long ago and at which version the fleet last
//! confirmed it, what a storage node called wrong, and whether a lookup of it is in flight to a
//! fleet that has not answered yet.

mod common;

use std::time::{Duration, Instant};

use common::{
    HeldServer, cache_of as cache, server, servers_up, serving, synth_map as map, temp_dir,
};
use memds_proto::synth;
use memds_proto::{Route, TableMap};
use router_cache::{
    Explanation, Invalidate, Invalidated, Mode, RouteSource, RouterCache, WarmKind, Warmed,
};

/// A hash inside partition `index` of `m` (not its start).
fn inside(m: &TableMap, index: usize) -> u64 {
    m.partitions()[index].start + 1
}

/// The explanation's route, which must be there.
fn cached(e: &Explanation) -> &router_cache::CachedRoute {
    e.route
        .as_ref()
        .unwrap_or_else(|| panic!("no route cached: {e:?}"))
}

/// Asserts the route was confirmed by the fleet within the test's run (a few seconds).
fn recently_confirmed(e: &Explanation) {
    let ago = cached(e)
        .confirmed_ago
        .unwrap_or_else(|| panic!("never confirmed: {e:?}"));
    assert!(ago < Duration::from_secs(5), "{ago:?}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_where_each_route_came_from() {
    let m = map(300);
    let (s, tls, admin, _dir) = serving("explain", &m).await;
    let name = m.name().as_str();
    let v1 = m.version().get();
    let c = cache(vec![s.quic_addr], &tls, Mode::ConstantWork, 1 << 20).await;
    servers_up(&c, 1).await;

    // A table never seen: nothing known, nothing created.
    let unknown = c.explain("no-such-table", b"k");
    assert!(
        !unknown.table_known && unknown.route.is_none(),
        "{unknown:?}"
    );
    assert!(c.dump("no-such-table").is_none());

    // A miss: the answer is cached as from a miss, at the table's version, confirmed just now.
    let h_miss = inside(&m, 10);
    c.route_hash(name, h_miss).await.expect("route");
    c.drain().await;
    let e = c.explain_hash(name, h_miss);
    assert_eq!(
        (e.table.as_str(), e.hash, e.mode, e.table_known),
        (name, h_miss, Mode::ConstantWork, true)
    );
    assert_eq!(e.newest_version, Some(v1));
    assert_eq!(cached(&e).route, m.route(h_miss));
    assert_eq!(cached(&e).source, RouteSource::Miss);
    assert_eq!(cached(&e).confirmed_version, v1);
    recently_confirmed(&e);
    assert!(!e.refresh_queued && !cached(&e).refresh_queued);
    assert_eq!(e.invalidated, None);
    // By key: the same as by the key's hash.
    let by_key = c.explain(name, b"some key");
    assert_eq!(by_key.hash, router_cache::key_hash(b"some key"));

    // A hit whose refresh brings a change: partition 20 is cached, then split on the server;
    // the hit on its right half still answers the parent, and the refresh's answer (the new
    // right half) replaces it as from a refresh.
    let index = 20;
    let update = synth::split_update(&m, index, 1_000_000);
    let mid = update.partitions[1].start;
    c.route_hash(name, mid).await.expect("route");
    admin.update_partitions(update).await.expect("split");
    let v2 = admin
        .get_table(name, None)
        .await
        .expect("get")
        .expect("held");
    let v2_version = v2.version().get();
    assert_eq!(v2_version, v1 + 1);
    let hit = c.route_hash(name, mid).await.expect("route");
    assert_eq!(*hit, m.route(mid), "the hit answers the cached parent");
    c.drain().await;
    let e = c.explain_hash(name, mid);
    assert_eq!(cached(&e).route, v2.route(mid));
    assert_eq!(cached(&e).route.partition.get(), 1_000_000);
    assert_eq!(cached(&e).source, RouteSource::Refresh);
    assert_eq!(cached(&e).confirmed_version, v2_version);
    assert_eq!(e.newest_version, Some(v2_version));
    recently_confirmed(&e);
    // The miss's route is still the miss's, confirmed at the first version only.
    let e = c.explain_hash(name, h_miss);
    assert_eq!(
        (cached(&e).source, cached(&e).confirmed_version),
        (RouteSource::Miss, v1)
    );

    // A storage node's correction: not confirmed by the fleet until a lookup's answer
    // confirms it (a hit's refresh here); its source stays the correction.
    let h_fix = inside(&m, 30);
    assert!(c.apply_route(v2.route(h_fix)));
    let e = c.explain_hash(name, h_fix);
    assert_eq!(cached(&e).source, RouteSource::Correction);
    assert_eq!(cached(&e).confirmed_ago, None);
    assert_eq!(cached(&e).confirmed_version, v2_version);
    c.route_hash(name, h_fix).await.expect("a hit");
    c.drain().await;
    let e = c.explain_hash(name, h_fix);
    assert_eq!(cached(&e).source, RouteSource::Correction);
    recently_confirmed(&e);

    // A storage node calls the miss's route wrong: gone, and the explanation says why.
    let wrong = m.route(h_miss);
    assert!(c.invalidate(name, Invalidate::Hash(h_miss), wrong.epoch.get()));
    let e = c.explain_hash(name, h_miss);
    assert_eq!(e.route, None);
    assert_eq!(
        e.invalidated,
        Some(Invalidated {
            partition: wrong.partition.get(),
            epoch: wrong.epoch.get(),
            start: wrong.start,
            end_inclusive: wrong.end_inclusive,
        })
    );
    assert!(!e.refresh_queued);

    // A warm: every route not cached at the split's version comes from it; the two cached at the split's version
    // are only confirmed (they keep their sources); the partition called wrong at its epoch
    // is not cached again.
    let snapshot_bytes = admin
        .get_table_snapshot(name, None)
        .await
        .expect("get")
        .expect("held")
        .1
        .len() as u64;
    let w = c.warm(name).await.expect("warm");
    assert_eq!(
        w,
        Warmed {
            kind: WarmKind::Whole,
            version: v2_version,
            routes: 301,
            changed: 298,
            evicted: 0,
            bytes: Some(snapshot_bytes),
        }
    );
    let h_warm = inside(&m, 40);
    let e = c.explain_hash(name, h_warm);
    assert_eq!(cached(&e).route, v2.route(h_warm));
    assert_eq!(
        (cached(&e).source, cached(&e).confirmed_version),
        (RouteSource::Warm, v2_version)
    );
    recently_confirmed(&e);
    assert_eq!(
        cached(&c.explain_hash(name, mid)).source,
        RouteSource::Refresh
    );
    assert_eq!(
        cached(&c.explain_hash(name, h_fix)).source,
        RouteSource::Correction
    );
    let e = c.explain_hash(name, h_miss);
    assert_eq!(e.route, None);
    assert_eq!(
        e.invalidated.map(|i| i.partition),
        Some(wrong.partition.get())
    );

    // The dump lists exactly the cached routes: every route of the split's version but the one called
    // wrong, with the same bookkeeping.
    let d = c.dump(name).expect("a known table");
    let want: Vec<Route> = v2
        .partitions()
        .iter()
        .map(|p| v2.route(p.start))
        .filter(|r| r.partition != wrong.partition)
        .collect();
    let got: Vec<Route> = d.routes.iter().map(|r| r.route.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(
        (d.table.as_str(), d.mode, d.newest_version, d.copy_version),
        (name, Mode::ConstantWork, Some(v2_version), Some(v2_version))
    );
    assert_eq!(d.nodes_digest, Some(v2_nodes_digest(&v2)));
    assert_eq!(
        d.counts,
        router_cache::DumpCounts {
            routes: 300,
            miss: 0,
            refresh: 1,
            correction: 1,
            warm: 298,
            whole_table: 0,
            refresh_queued: 0,
            unconfirmed: 0,
            invalidated: 1,
        }
    );
    assert_eq!(d.invalidated, e.invalidated.into_iter().collect::<Vec<_>>());
    let dumped = d
        .routes
        .iter()
        .find(|r| r.route.contains(h_warm))
        .expect("dumped");
    let mut explained = c.explain_hash(name, h_warm).route.expect("cached");
    // Only the age moves between the two reads.
    explained.confirmed_ago = dumped.confirmed_ago;
    assert_eq!(&explained, dumped);

    // As JSON, for a router to print.
    let json = serde_json::to_value(c.explain_hash(name, h_warm)).expect("json");
    assert_eq!(json["mode"], "constant_work");
    assert_eq!(json["route"]["source"], "warm");
    assert_eq!(json["route"]["confirmed_version"], v2_version);
    assert!(
        json["route"]["confirmed_ago_seconds"].as_f64().is_some(),
        "{json}"
    );
    assert_eq!(
        json["route"]["route"]["partition"],
        v2.route(h_warm).partition.get()
    );
    let json = serde_json::to_value(c.explain_hash(name, h_miss)).expect("json");
    assert_eq!(json["route"], serde_json::Value::Null);
    assert_eq!(json["invalidated"]["epoch"], wrong.epoch.get());

    c.shutdown();
    common::stop(s).await;
}

/// The digest of a table's node list, as the server sends it.
fn v2_nodes_digest(m: &TableMap) -> u64 {
    memds_proto::CompactTable::new(m, &mut memds_proto::NodeInterner::default()).nodes_digest()
}

/// Waits (bounded) until `done` holds of the explanation of `hash`.
async fn explained_until(
    c: &RouterCache,
    table: &str,
    hash: u64,
    what: &str,
    done: impl Fn(&Explanation) -> bool,
) -> Explanation {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = c.explain_hash(table, hash);
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{what}: {e:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_queued_while_the_fleet_holds_the_answer_and_not_once_answered() {
    let dir = temp_dir("explain-held");
    // A real server only for the PKI.
    let s = server(dir.path().to_owned(), None, common::any_port()).await;
    let tls = dir.path().join("tls");
    let m = map(100);
    let name = m.name().as_str();
    let fleet = HeldServer::start(&tls, &m);
    let c = cache(vec![fleet.addr], &tls, Mode::ConstantWork, 1 << 20).await;
    servers_up(&c, 1).await;

    let h = inside(&m, 7);
    c.route_hash(name, h).await.expect("a miss, answered");
    c.drain().await;
    let e = c.explain_hash(name, h);
    assert!(!e.refresh_queued, "{e:?}");

    // The fleet holds its answers: a hit's refresh is sent and stays unanswered.
    fleet.hold(true);
    let asked = fleet.asked();
    assert_eq!(*c.route_hash(name, h).await.expect("a hit"), m.route(h));
    let e = explained_until(&c, name, h, "the hit's refresh in flight", |e| {
        e.refresh_queued
    })
    .await;
    assert!(cached(&e).refresh_queued);
    assert_eq!(cached(&e).source, RouteSource::Miss);
    // A miss of an uncached partition: in flight too, with no route.
    let h_miss = inside(&m, 50);
    let miss = tokio::spawn({
        let c = c.clone();
        let name = name.to_owned();
        async move { c.route_hash(&name, h_miss).await }
    });
    let e = explained_until(&c, name, h_miss, "the miss in flight", |e| e.refresh_queued).await;
    assert_eq!(e.route, None);
    // Another partition's route is not concerned.
    assert!(!c.explain_hash(name, inside(&m, 90)).refresh_queued);
    let d = c.dump(name).expect("known");
    assert_eq!((d.counts.routes, d.counts.refresh_queued), (1, 1));
    // In a batch means sent; the server may read it a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.asked() <= asked {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the fleet"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Answered: nothing in flight any more, the route confirmed again and the miss cached.
    let released = Instant::now();
    fleet.hold(false);
    assert_eq!(
        *miss.await.expect("joined").expect("answered"),
        m.route(h_miss)
    );
    c.drain().await;
    let e = c.explain_hash(name, h);
    assert!(!e.refresh_queued && !cached(&e).refresh_queued, "{e:?}");
    let ago = cached(&e).confirmed_ago.expect("confirmed");
    assert!(
        ago <= released.elapsed(),
        "confirmed {ago:?} ago, before the answer"
    );
    let e = c.explain_hash(name, h_miss);
    assert!(!e.refresh_queued, "{e:?}");
    assert_eq!(cached(&e).source, RouteSource::Miss);
    assert_eq!(c.dump(name).expect("known").counts.refresh_queued, 0);
    c.shutdown();
    common::stop(s).await;
}
