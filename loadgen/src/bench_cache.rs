//! `loadgen bench-cache`: the router cache's hit path against two well-kept caches, in one run.
//!
//! A real embedded server holds a table of `--entries` partitions; a ConstantWork
//! [`RouterCache`] is warmed with a route for every partition. Then, in rounds, the same random
//! hashes go through `route_hash` (a hit: a floor lookup plus the enqueue of its refresh
//! lookup), through moka's `sync::Cache::get` and through quick_cache's `sync::Cache::get`,
//! those two keyed by the partition start the hash falls in (they cannot do floor lookups, so
//! they get the easier exact-key job). Each call is timed alone; the clock's own cost, measured
//! in the same run, is subtracted. Between rounds the cache's queue is drained so refreshes are
//! never dropped; the client runtime is single-threaded, so no background work runs during a
//! timed call. The clock's granularity (about 10 ns here) is a large part of a p50 at these
//! sizes, so each round is also timed as a whole, and the median over rounds of the mean per
//! call is reported beside the percentiles, with the route structure alone (`TableRoutes::get`)
//! timed the same way.
//!
//! Memory, before the timed rounds, with the counting allocator (`alloc`: live heap bytes with
//! glibc's per-chunk overhead) and the process's `VmRSS`:
//! - a router's fixed cost: a second cache, default configuration, one route cached and hit
//!   once (its connection, tasks, thread ring, table state); the embedded server runs in this
//!   process, so its side of that connection is counted too;
//! - per cached route: the bench's cache from half its routes to all of them (each point
//!   drained, the hit snapshot rebuilt and the calling thread's handle on it reloaded), divided
//!   by the routes added: the route itself, the map's entry and the snapshot's (and whatever the
//!   in-process server keeps per lookup, if anything);
//! - the same for a plain `quick_cache::sync::Cache<u64, Arc<Route>>` (capacity `--entries`)
//!   filled with its own copies of the same routes (each `Arc<Route>` allocated anew).
//!
//! RSS deltas count what the allocator took from the system, freed memory it kept included, so
//! they are rougher than the heap figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use memds_client::{ClientTls, ConnectOptions, Connector, Role};
use memds_proto::Route;
use memds_proto::synth::{self, SynthConfig};
use rand::{Rng, SeedableRng};
use router_cache::{Mode, RouterCache};
use serde::Serialize;

use crate::alloc;
use crate::bench_server_memory::read_rss;
use crate::embedded::Embedded;
use crate::histogram;

/// Options of `bench-cache`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Routes cached (partitions of the table).
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Timed calls per cache.
    #[arg(long, default_value_t = 1_000_000)]
    calls: usize,
    /// Rounds the calls are split into (the queue is drained between rounds).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seed of the map and the hashes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Measure Classic mode instead (a hit sends nothing: the cost of the lookup alone).
    #[arg(long)]
    classic: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    metrics: crate::metrics_listen::Flag,
}

#[derive(Debug, Serialize)]
struct Report {
    entries: usize,
    calls: u64,
    hit_ns_p50: f64,
    hit_ns_p99: f64,
    moka_get_ns_p50: f64,
    moka_get_ns_p99: f64,
    quick_cache_get_ns_p50: f64,
    quick_cache_get_ns_p99: f64,
    hit_vs_quick_cache_p50: f64,
    hit_ns_mean: f64,
    moka_get_ns_mean: f64,
    quick_cache_get_ns_mean: f64,
    hit_vs_quick_cache_mean: f64,
    /// The route structure alone (floor lookup and `Arc` clone, no registry, no enqueue).
    structure_get_ns_mean: f64,
    refresh_lookups_sent: u64,
    refreshes_dropped: u64,
    timer_overhead_ns: f64,
    #[serde(flatten)]
    memory: Memory,
}

/// Memory figures (see the module docs).
#[derive(Debug, Serialize)]
struct Memory {
    /// Heap of a default-configured cache holding one route.
    router_fixed_heap_bytes: i64,
    /// `VmRSS` growth for the same.
    router_fixed_rss_bytes: i64,
    /// Heap per cached route of the warmed cache.
    router_heap_bytes_per_route: f64,
    /// `VmRSS` growth per cached route while warming.
    router_rss_bytes_per_route: f64,
    /// Of which the route structure alone (`TableRoutes`: map entry and snapshot entry; the
    /// routes themselves shared, not counted), measured on a copy holding the same `Arc`s.
    structure_heap_bytes_per_route: f64,
    /// Of which the route itself (a fresh `Arc<Route>` copy of each).
    route_heap_bytes: f64,
    /// Routes the quick_cache holds (it may evict a few at its capacity).
    quick_cache_routes: usize,
    /// Heap per route of the quick_cache with its own copies of the routes.
    quick_cache_heap_bytes_per_route: f64,
    /// `VmRSS` growth per route while filling it.
    quick_cache_rss_bytes_per_route: f64,
}

/// The process's `VmRSS`, in bytes.
fn rss() -> anyhow::Result<i64> {
    Ok(read_rss(std::process::id())?.rss as i64)
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.entries >= 1 && args.rounds >= 1 && args.calls >= args.rounds,
        "--entries, --rounds and --calls must be positive, --calls at least --rounds"
    );
    // From the start, so what the server frees later was counted when allocated.
    alloc::start();
    let _metrics = args.metrics.start()?;
    let server = Embedded::start(1)?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = client_rt.block_on(measure(args, &server));
    drop(client_rt);
    server.stop();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} cached routes, {} timed calls per cache",
            report.entries, report.calls
        );
        println!("{:<34} {:>8} {:>8}", "ns per call", "p50", "p99");
        println!(
            "{:<34} {:>8.0} {:>8.0}",
            "router-cache route_hash (hit)", report.hit_ns_p50, report.hit_ns_p99
        );
        println!(
            "{:<34} {:>8.0} {:>8.0}",
            "moka sync get", report.moka_get_ns_p50, report.moka_get_ns_p99
        );
        println!(
            "{:<34} {:>8.0} {:>8.0}",
            "quick_cache get", report.quick_cache_get_ns_p50, report.quick_cache_get_ns_p99
        );
        println!(
            "mean ns per call: hit {:.0}, moka {:.0}, quick_cache {:.0} (hit / quick_cache = {:.2})",
            report.hit_ns_mean,
            report.moka_get_ns_mean,
            report.quick_cache_get_ns_mean,
            report.hit_vs_quick_cache_mean
        );
        println!(
            "hit / quick_cache get = {:.2}; {} refresh lookups sent, {} dropped (timer overhead {:.0} ns subtracted)",
            report.hit_vs_quick_cache_p50,
            report.refresh_lookups_sent,
            report.refreshes_dropped,
            report.timer_overhead_ns
        );
        let m = &report.memory;
        println!(
            "{:<34} {:>8} {:>8}",
            "bytes per cached route", "heap", "RSS"
        );
        println!(
            "{:<34} {:>8.0} {:>8.0}",
            "router-cache (warmed)", m.router_heap_bytes_per_route, m.router_rss_bytes_per_route
        );
        println!(
            "{:<34} {:>8.0} {:>8.0}",
            format!("quick_cache ({} routes)", m.quick_cache_routes),
            m.quick_cache_heap_bytes_per_route,
            m.quick_cache_rss_bytes_per_route
        );
        println!(
            "router fixed cost (default config, one route): heap {} bytes, RSS {} bytes",
            m.router_fixed_heap_bytes, m.router_fixed_rss_bytes
        );
        println!(
            "of a cached route's heap: the route {:.0}, the route structure (map and snapshot) {:.0}",
            m.route_heap_bytes, m.structure_heap_bytes_per_route
        );
    }
    Ok(())
}

async fn measure(args: &Args, server: &Embedded) -> anyhow::Result<Report> {
    let map = synth::generate_table(
        &SynthConfig {
            partitions: args.entries,
            seed: args.seed,
            ..SynthConfig::default()
        },
        0,
    );
    let table = map.name().as_str().to_owned();
    let tls_dir = server.tls_dir();
    let admin = Connector::new(
        &ClientTls::from_dir(&tls_dir, Role::Admin)?,
        ConnectOptions::default(),
    )?
    .connect(server.addr())
    .await
    .context("connecting as admin")?;
    admin.put_table(&map).await.context("loading the table")?;
    let per_round = args.calls / args.rounds;
    let mut routes: Vec<Arc<Route>> = Vec::with_capacity(args.entries);

    // A router's fixed cost: a default cache holding one route.
    let (heap0, rss0) = (alloc::live_bytes(), rss()?);
    let fixed = RouterCache::builder(
        vec![server.addr()],
        ClientTls::from_dir(&tls_dir, Role::Router)?,
    )
    .build()
    .await
    .context("starting the router cache")?;
    fixed
        .route_hash(&table, map.partitions()[0].start)
        .await
        .context("a first route")?;
    fixed.drain().await;
    // And a hit: the calling thread's ring is made with its first hit.
    fixed.route_hash(&table, map.partitions()[0].start).await?;
    fixed.drain().await;
    let (router_fixed_heap_bytes, router_fixed_rss_bytes) =
        ((alloc::live_bytes() - heap0) as i64, rss()? - rss0);
    fixed.shutdown_complete().await;
    drop(fixed);
    let exposed = crate::metrics_listen::ExposedRouters::new("bench-cache");
    let cache = RouterCache::builder(
        vec![server.addr()],
        ClientTls::from_dir(&tls_dir, Role::Router)?,
    )
    .mode(if args.classic {
        Mode::Classic { whole_table: false }
    } else {
        Mode::ConstantWork
    })
    .queue_bound(per_round + 1024)
    .metrics_instance(exposed.next_label())
    .build()
    .await
    .context("starting the router cache")?;

    // Warm: one miss per partition. Memory per route is the growth from half the routes to
    // all of them, each point measured the same way: drained (so the hit snapshot is rebuilt),
    // then a hit (so the calling thread's handle moves to that snapshot and lets the ones before
    // it go) and its refresh drained. What the cache and its connection allocate once, and
    // frees or keeps, is behind it by then.
    let settled = || async {
        cache.drain().await;
        cache.route_hash(&table, map.partitions()[0].start).await?;
        cache.drain().await;
        anyhow::Ok((alloc::live_bytes(), rss()?))
    };
    let half = (args.entries / 2).max(1);
    let mut at_half = (0, 0);
    for (i, p) in map.partitions().iter().enumerate() {
        routes.push(
            cache
                .route_hash(&table, p.start)
                .await
                .context("warming the cache")?,
        );
        if i + 1 == half {
            at_half = settled().await?;
        }
    }
    let at_full = settled().await?;
    let added = (args.entries - half).max(1) as f64;
    let router_heap_bytes_per_route = (at_full.0 - at_half.0) as f64 / added;
    let router_rss_bytes_per_route = (at_full.1 - at_half.1) as f64 / added;
    ensure!(
        cache.stats().entries as usize == args.entries,
        "the cache holds {} routes, not {}",
        cache.stats().entries,
        args.entries
    );
    // The routes alone: a copy of each.
    let heap0 = alloc::live_bytes();
    let copies: Vec<Arc<Route>> = routes.iter().map(|r| Arc::new(Route::clone(r))).collect();
    let route_heap_bytes = (alloc::live_bytes() - heap0) as f64 / args.entries as f64
        - std::mem::size_of::<Arc<Route>>() as f64;
    drop(copies);
    // A plain quick_cache of the same routes, each its own copy.
    let (heap0, rss0) = (alloc::live_bytes(), rss()?);
    let plain: quick_cache::sync::Cache<u64, Arc<Route>> =
        quick_cache::sync::Cache::new(args.entries);
    for r in &routes {
        plain.insert(r.start, Arc::new(Route::clone(r)));
    }
    let quick_cache_routes = plain.len();
    let held = quick_cache_routes.max(1) as f64;
    let mut memory = Memory {
        structure_heap_bytes_per_route: 0.0,
        route_heap_bytes,
        router_fixed_heap_bytes,
        router_fixed_rss_bytes,
        router_heap_bytes_per_route,
        router_rss_bytes_per_route,
        quick_cache_routes,
        quick_cache_heap_bytes_per_route: (alloc::live_bytes() - heap0) as f64 / held,
        quick_cache_rss_bytes_per_route: (rss()? - rss0) as f64 / held,
    };
    drop(plain);

    let moka: moka::sync::Cache<u64, Arc<Route>> = moka::sync::Cache::new(2 * args.entries as u64);
    let quick: quick_cache::sync::Cache<u64, Arc<Route>> =
        quick_cache::sync::Cache::new(2 * args.entries);
    for r in &routes {
        moka.insert(r.start, Arc::clone(r));
        quick.insert(r.start, Arc::clone(r));
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ 0xCACE);
    let timer = histogram::timer_overhead_ns();
    // The cache's route structure on its own, holding the same routes.
    let heap0 = alloc::live_bytes();
    let structure = router_cache::table::TableRoutes::default();
    for r in &routes {
        structure.insert(Arc::clone(r), 0);
    }
    structure.maybe_rebuild(1, true);
    memory.structure_heap_bytes_per_route =
        (alloc::live_bytes() - heap0) as f64 / args.entries as f64;
    let mut mean_structure = Vec::new();
    let (mut h_hit, mut h_moka, mut h_quick) = (
        histogram::latency(),
        histogram::latency(),
        histogram::latency(),
    );
    let record = |h: &mut hdrhistogram::Histogram<u64>, ns: u128| {
        h.saturating_record((ns as f64 - timer).max(1.0) as u64);
    };
    let sent_before = cache.stats().lookups_sent;
    let mut calls = 0u64;
    let (mut mean_hit, mut mean_moka, mut mean_quick) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let probes: Vec<(u64, u64)> = (0..per_round)
            .map(|_| {
                let h: u64 = rng.random();
                (h, map.partitions()[map.floor_index(h)].start)
            })
            .collect();
        for &(h, _) in &probes {
            let t = Instant::now();
            let r = cache.route_hash(&table, h).await;
            let ns = t.elapsed().as_nanos();
            black_box(r?);
            record(&mut h_hit, ns);
        }
        for &(_, key) in &probes {
            let t = Instant::now();
            let r = moka.get(&key);
            let ns = t.elapsed().as_nanos();
            black_box(r.context("moka lost an entry")?);
            record(&mut h_moka, ns);
        }
        for &(_, key) in &probes {
            let t = Instant::now();
            let r = quick.get(&key);
            let ns = t.elapsed().as_nanos();
            black_box(r.context("quick_cache lost an entry")?);
            record(&mut h_quick, ns);
        }
        calls += probes.len() as u64;
        cache.drain().await;
        // The same calls timed in runs of 100, for means free of the clock's granularity.
        let t = Instant::now();
        for &(h, _) in &probes {
            black_box(cache.route_hash(&table, h).await?);
        }
        mean_hit.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
        cache.drain().await;
        let t = Instant::now();
        for &(_, key) in &probes {
            black_box(moka.get(&key));
        }
        mean_moka.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
        let t = Instant::now();
        for &(_, key) in &probes {
            black_box(quick.get(&key));
        }
        mean_quick.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
        let t = Instant::now();
        for &(h, _) in &probes {
            black_box(structure.get(h));
        }
        mean_structure.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
    }
    let st = cache.stats();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (hit_mean, moka_mean, quick_mean) = (
        median(&mut mean_hit),
        median(&mut mean_moka),
        median(&mut mean_quick),
    );
    ensure!(
        st.misses as usize == args.entries,
        "timed calls missed the cache: {st:?}"
    );
    cache.shutdown();
    let p = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64;
    Ok(Report {
        entries: args.entries,
        calls,
        hit_ns_p50: p(&h_hit, 0.5),
        hit_ns_p99: p(&h_hit, 0.99),
        moka_get_ns_p50: p(&h_moka, 0.5),
        moka_get_ns_p99: p(&h_moka, 0.99),
        quick_cache_get_ns_p50: p(&h_quick, 0.5),
        quick_cache_get_ns_p99: p(&h_quick, 0.99),
        hit_vs_quick_cache_p50: p(&h_hit, 0.5) / p(&h_quick, 0.5).max(1.0),
        hit_ns_mean: hit_mean,
        moka_get_ns_mean: moka_mean,
        quick_cache_get_ns_mean: quick_mean,
        hit_vs_quick_cache_mean: hit_mean / quick_mean.max(1.0),
        structure_get_ns_mean: median(&mut mean_structure),
        refresh_lookups_sent: st.lookups_sent - sent_before,
        refreshes_dropped: st.dropped,
        timer_overhead_ns: timer,
        memory,
    })
}
