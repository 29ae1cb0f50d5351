//! `loadgen bench-cost`: what constant work costs per request, on the server and on the router,
//! in steady state at realistic router counts and rates.
//!
//! The server is a real `memds-server` process (`--server-bin`, by default the one next to this
//! executable) over a fresh data directory with its development PKI, holding one synthetic
//! table. For each load point (`--points`, routers x requests per second per router) and each
//! mode (ConstantWork, then Classic with the same settings), that many [`RouterCache`]s are
//! started in this process, each with its own QUIC connection as separate routers would have.
//! Each one is warmed on its own key set (`--keys` partitions, which fit its cache), then calls
//! `route` at its rate over that set: in steady state every call is a hit, so Classic sends
//! (almost) nothing to the server and ConstantWork sends one lookup per call. Beside that load a
//! small stream of misses (`--miss-rate` per second in all, keys no router has cached) gives the
//! miss latency. After `--warmup` seconds of load, a window of `--seconds` is measured:
//!
//! - requests issued (hit stream) and misses issued in the window;
//! - server lookups and request frames in the window, from the server's own `stats` counters
//!   (`lookups_total`, `requests_total`: the latter counts frames of every kind, the one
//!   `stats` frame of the window included);
//! - server CPU seconds from `/proc/<pid>/task/*/schedstat` (the time the scheduler ran each
//!   thread, in nanoseconds), per lookup and per request, and its threads' context switches;
//! - router CPU, the same way (this whole process: the routers, and the load loops that
//!   are the same in both modes), per request; per point, ConstantWork's minus Classic's is what
//!   a refresh costs a router;
//! - miss latency p50 and p99 (the first `route` call of a key the router does not hold);
//! - the age of the cached routes at the end of the window (since the fleet last confirmed
//!   each), mean and p99, which is what a refresh's linger adds to;
//! - UDP datagrams per lookup, both ways, from QUIC's own counters on the routers'
//!   connections ([`RouterCache::transport_stats`]): every datagram the server exchanged with
//!   the routers, and nothing else on the machine (the namespace-wide counters of
//!   `/proc/net/snmp` would count every process's traffic); also ACK frames and the routers'
//!   send system calls per lookup.
//!
//! In the same run, three references: the batched figure (bench-server's load loop, batches of
//! 64 random hashes over QUIC, against the same server process); Redis GET without pipelining
//! at full speed (`redis-benchmark -t get -P 1`, `--redis-clients` clients, against a
//! `redis-server` started on a free loopback port); and, per point, Redis GET at the point's
//! own load (a TCP connection per router, one GET at a time at the router's rate), since a
//! lightly loaded server pays for every sleep and wake-up, and what a request costs depends on
//! how many arrive per wake-up. Each point's server CPU per lookup is printed as a ratio to
//! each. With `--repeat` every figure is the median of the repeats.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::synth::{self, SynthConfig};
use router_cache::{Mode, RouterCache, TransportStats};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::bench_server::{RedisServer, load_loop, redis_baseline};
use crate::bench_server_memory::{ServerProcess, default_server_bin};
use crate::histogram;

/// Hashes per lookup frame of the batched reference figure.
const BATCH: usize = 64;
/// Request loops of the batched reference figure.
const BATCH_LOOPS: usize = 32;
/// Connections of the batched reference figure.
const BATCH_CONNECTIONS: usize = 2;

/// One load point: `routers` router caches, each calling `route` `rate` times per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    routers: usize,
    rate: f64,
}

impl FromStr for Point {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, r) = s
            .split_once('x')
            .ok_or_else(|| format!("{s}: expected ROUTERSxRATE, e.g. 8x250"))?;
        let routers: usize = n.trim().parse().map_err(|e| format!("{s}: {e}"))?;
        let rate: f64 = r.trim().parse().map_err(|e| format!("{s}: {e}"))?;
        if routers == 0 || rate.is_nan() || rate <= 0.0 {
            return Err(format!("{s}: routers and rate must be positive"));
        }
        Ok(Self { routers, rate })
    }
}

/// Options of `bench-cost`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Load points: ROUTERSxRATE (requests per second per router), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8x250,200x100,20x1000")]
    points: Vec<Point>,
    /// Measured seconds per point and mode (and for each reference figure).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Seconds of steady load before each window (after the routers are warmed).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Partitions of the table.
    #[arg(long, default_value_t = 100_000)]
    partitions: usize,
    /// Keys each router calls `route` for, one per partition (its cache holds them all).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Misses per second in all (new keys, spread over the routers), for the miss latency.
    #[arg(long, default_value_t = 20.0)]
    miss_rate: f64,
    /// Runs of every point, mode and reference; the figures are the medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Clients of redis-benchmark (GET without pipelining).
    #[arg(long, default_value_t = 4)]
    redis_clients: u32,
    /// The server binary [default: `memds-server` next to this executable].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra arguments for the server (repeat for each).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Seed of the map.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// How long each router holds refreshes to share a frame (`Builder::refresh_linger`), in
    /// milliseconds [default: the router cache's default].
    #[arg(long)]
    refresh_linger_ms: Option<f64>,
}

impl Args {
    fn refresh_linger(&self) -> Duration {
        self.refresh_linger_ms
            .map_or(router_cache::DEFAULT_REFRESH_LINGER, |ms| {
                Duration::from_secs_f64(ms.max(0.0) / 1e3)
            })
    }
}

/// What `bench-cost --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    server_bin: String,
    partitions: usize,
    keys_per_router: usize,
    /// The routers' refresh linger, in milliseconds.
    refresh_linger_ms: f64,
    seconds: f64,
    warmup_seconds: f64,
    miss_rate: f64,
    repeat: usize,
    batched: Batched,
    redis: Redis,
    points: Vec<PointReport>,
}

/// The batched reference: bench-server's load loop against the same server.
#[derive(Clone, Debug, Serialize)]
struct Batched {
    batch: usize,
    loops: usize,
    connections: usize,
    lookups: u64,
    server_cpu_seconds: f64,
    server_cpu_per_lookup_us: f64,
    lookups_per_server_cpu_s: f64,
}

/// The Redis reference: GET without pipelining.
#[derive(Clone, Debug, Serialize)]
struct Redis {
    pipeline: u32,
    clients: u32,
    gets_per_s: f64,
    server_cpu_seconds: f64,
    gets_per_server_cpu_s: f64,
    server_cpu_per_get_us: f64,
}

/// One load point, both modes.
#[derive(Debug, Serialize)]
struct PointReport {
    routers: usize,
    rate_per_router: f64,
    constant_work: ModeFigures,
    classic: ModeFigures,
    /// ConstantWork's router CPU per request minus Classic's: what a refresh costs a router.
    router_cpu_per_refresh_us: f64,
    /// ConstantWork's server CPU per lookup over the batched figure's.
    server_cpu_per_lookup_vs_batched: f64,
    /// ConstantWork's server CPU per lookup over Redis's CPU per GET.
    server_cpu_per_lookup_vs_redis: f64,
    /// Redis under the same load: a connection per router, GETs at the point's rate.
    redis_paced: RedisPaced,
    /// ConstantWork's server CPU per lookup over paced Redis's CPU per GET.
    server_cpu_per_lookup_vs_redis_paced: f64,
}

/// Redis GET at one point's load: as many connections as the point has routers, each sending
/// one GET at a time at the point's per-router rate (no pipelining), measured as the routers
/// are: after the warm-up, over a window, CPU and context switches of `redis-server` from
/// `/proc`.
#[derive(Clone, Debug, Serialize)]
struct RedisPaced {
    gets: u64,
    server_cpu_seconds: f64,
    server_cpu_per_get_us: f64,
    /// Context switches of `redis-server`'s threads over GETs: how often it slept and woke.
    server_switches_per_get: f64,
}

/// One point in one mode, over the measured window.
#[derive(Clone, Debug, Serialize)]
struct ModeFigures {
    window_seconds: f64,
    /// `route` calls of the hit stream.
    requests: u64,
    /// Calls of the hit stream that missed (0 in steady state).
    hit_stream_misses: u64,
    /// Misses issued (the miss stream).
    misses: u64,
    /// Lookups the server counted.
    server_lookups: u64,
    /// Server lookups over requests plus misses.
    lookups_per_request: f64,
    /// Request frames the server answered (every kind; the window's one `stats` frame too).
    server_frames: u64,
    lookups_per_frame: f64,
    /// Lookups the routers sent (their own counters).
    router_lookups_sent: u64,
    /// Refreshes the routers dropped.
    router_dropped: u64,
    server_cpu_seconds: f64,
    server_cpu_per_lookup_us: f64,
    server_cpu_per_request_us: f64,
    router_cpu_seconds: f64,
    router_cpu_per_request_us: f64,
    miss_p50_us: f64,
    miss_p99_us: f64,
    /// UDP datagrams between the routers and the server, both ways (QUIC's counters on the
    /// routers' connections, which are every datagram the server exchanged with them).
    datagrams: u64,
    /// Datagrams over the server's lookups.
    datagrams_per_lookup: f64,
    /// Of them, router to server.
    datagrams_sent_per_lookup: f64,
    /// Send system calls the routers made, over lookups.
    router_send_calls_per_lookup: f64,
    /// ACK frames both ways over lookups (a datagram may carry one beside data).
    acks_per_lookup: f64,
    /// Context switches of the server's threads over lookups (from `/proc`): how often it
    /// slept and woke, which on a lightly loaded server is what a lookup costs.
    server_switches_per_lookup: f64,
    /// How long ago the fleet last confirmed each cached route, over every router's cache at
    /// the end of the window, in milliseconds: mean and p99. In ConstantWork each hit's
    /// refresh confirms its route when the answer arrives, so a route's age is about the time
    /// since its last hit plus the refresh's linger and round trip; in Classic it is the time
    /// since the route was cached.
    route_age_mean_ms: f64,
    route_age_p99_ms: f64,
}

/// What one measured window of one point and mode reads.
struct Snapshot {
    lookups: u64,
    frames: u64,
    server_cpu: f64,
    router_cpu: f64,
    requests: u64,
    hit_misses: u64,
    misses: u64,
    sent: u64,
    dropped: u64,
    transport: TransportStats,
    server_switches: u64,
    at: Instant,
}

/// What the measured runs share.
struct Ctx {
    addr: SocketAddr,
    tls_dir: PathBuf,
    pid: u32,
    admin: Client,
    table: String,
    /// Partition starts of the table, in order.
    starts: Vec<u64>,
    /// Misses issued so far (the next miss key's index).
    next_miss: AtomicU64,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(!args.points.is_empty(), "--points must name a load point");
    ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "--seconds must be positive, --warmup not negative"
    );
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    ensure!(args.miss_rate >= 0.0, "--miss-rate must not be negative");
    ensure!(
        args.keys >= 1 && args.partitions >= 2 * args.keys + 2,
        "--keys must be at least 1 and --partitions at least twice --keys (plus room for misses)"
    );
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => default_server_bin().context(
            "bench-cost needs the memds-server binary: cargo build --release -p memds-server",
        )?,
    };
    ensure!(
        server_bin.is_file(),
        "{} does not exist: build it (cargo build --release -p memds-server) or pass --server-bin",
        server_bin.display()
    );
    let data_dir = tempfile::Builder::new()
        .prefix("memds-bench-cost-")
        .tempdir()
        .context("creating the data directory")?;
    let server = ServerProcess::spawn(&server_bin, data_dir.path(), None, &args.server_arg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen-cost")
        .enable_all()
        .build()?;
    let result = rt.block_on(measure_all(args, &server));
    drop(rt);
    server.stop();
    let (batched, points) = result?;
    let mut redis_runs = Vec::new();
    for _ in 0..args.repeat {
        let (gets_per_s, cpu, per_cpu) =
            redis_baseline(args.seconds, 1, args.redis_clients, 20_000)
                .context("measuring Redis GET without pipelining")?;
        redis_runs.push(Redis {
            pipeline: 1,
            clients: args.redis_clients,
            gets_per_s,
            server_cpu_seconds: cpu,
            gets_per_server_cpu_s: per_cpu,
            server_cpu_per_get_us: 1e6 / per_cpu,
        });
    }
    let redis = Redis {
        pipeline: 1,
        clients: args.redis_clients,
        gets_per_s: median(&redis_runs, |r| r.gets_per_s),
        server_cpu_seconds: median(&redis_runs, |r| r.server_cpu_seconds),
        gets_per_server_cpu_s: median(&redis_runs, |r| r.gets_per_server_cpu_s),
        server_cpu_per_get_us: median(&redis_runs, |r| r.server_cpu_per_get_us),
    };
    let points = points
        .into_iter()
        .map(|(p, cw, classic, redis_paced)| PointReport {
            routers: p.routers,
            rate_per_router: p.rate,
            router_cpu_per_refresh_us: cw.router_cpu_per_request_us
                - classic.router_cpu_per_request_us,
            server_cpu_per_lookup_vs_batched: cw.server_cpu_per_lookup_us
                / batched.server_cpu_per_lookup_us,
            server_cpu_per_lookup_vs_redis: cw.server_cpu_per_lookup_us
                / redis.server_cpu_per_get_us,
            server_cpu_per_lookup_vs_redis_paced: cw.server_cpu_per_lookup_us
                / redis_paced.server_cpu_per_get_us,
            redis_paced,
            constant_work: cw,
            classic,
        })
        .collect();
    let report = Report {
        server_bin: server_bin.display().to_string(),
        partitions: args.partitions,
        keys_per_router: args.keys,
        refresh_linger_ms: args.refresh_linger().as_secs_f64() * 1e3,
        seconds: args.seconds,
        warmup_seconds: args.warmup,
        miss_rate: args.miss_rate,
        repeat: args.repeat,
        batched,
        redis,
        points,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

type PointRuns = Vec<(Point, ModeFigures, ModeFigures, RedisPaced)>;

/// Loads the table, measures the batched figure, then every point in both modes.
async fn measure_all(args: &Args, server: &ServerProcess) -> anyhow::Result<(Batched, PointRuns)> {
    let admin_tls = ClientTls::from_dir(&server.tls_dir, Role::Admin)
        .context("loading the admin certificate")?;
    let connector = Connector::new(&admin_tls, ConnectOptions::default())?;
    let admin = connector
        .connect(server.quic)
        .await
        .with_context(|| format!("connecting to {}", server.quic))?;
    let map = synth::generate_table(
        &SynthConfig {
            partitions: args.partitions,
            seed: args.seed,
            ..SynthConfig::default()
        },
        0,
    );
    let table = map.name().as_str().to_owned();
    admin.put_table(&map).await.context("putting the table")?;
    let starts: Vec<u64> = map.partitions().iter().map(|p| p.start).collect();
    drop(map);
    ensure!(
        starts.len() >= 2 * args.keys + 2,
        "the table has {} partitions, too few for --keys {}",
        starts.len(),
        args.keys
    );
    let ctx = Ctx {
        addr: server.quic,
        tls_dir: server.tls_dir.clone(),
        pid: server.pid,
        admin,
        table,
        starts,
        next_miss: AtomicU64::new(0),
    };

    let mut batched_runs = Vec::new();
    for _ in 0..args.repeat {
        batched_runs.push(measure_batched(args, &ctx, &connector).await?);
    }
    let batched = Batched {
        batch: BATCH,
        loops: BATCH_LOOPS,
        connections: BATCH_CONNECTIONS,
        lookups: median_u(&batched_runs, |b| b.lookups),
        server_cpu_seconds: median(&batched_runs, |b| b.server_cpu_seconds),
        server_cpu_per_lookup_us: median(&batched_runs, |b| b.server_cpu_per_lookup_us),
        lookups_per_server_cpu_s: median(&batched_runs, |b| b.lookups_per_server_cpu_s),
    };

    let redis = RedisServer::start().context("starting Redis for the paced references")?;
    let mut points = Vec::new();
    for &point in &args.points {
        let mut cw = Vec::new();
        let mut classic = Vec::new();
        let mut paced = Vec::new();
        for _ in 0..args.repeat {
            cw.push(measure_point(args, &ctx, point, Mode::ConstantWork).await?);
            classic.push(
                measure_point(args, &ctx, point, Mode::Classic { whole_table: false }).await?,
            );
            paced.push(
                measure_redis_paced(args, point, &redis)
                    .await
                    .with_context(|| format!("measuring Redis GET at {point:?}"))?,
            );
        }
        let paced = RedisPaced {
            gets: median_u(&paced, |r| r.gets),
            server_cpu_seconds: median(&paced, |r| r.server_cpu_seconds),
            server_cpu_per_get_us: median(&paced, |r| r.server_cpu_per_get_us),
            server_switches_per_get: median(&paced, |r| r.server_switches_per_get),
        };
        points.push((point, median_figures(&cw), median_figures(&classic), paced));
    }
    ctx.admin.close();
    Ok((batched, points))
}

/// The server's (lookups, frames) counters.
async fn server_counters(admin: &Client) -> anyhow::Result<(u64, u64)> {
    let s = admin.stats().await.context("reading the server's stats")?;
    Ok((s.lookups_total, s.requests_total))
}

/// bench-server's load loop (batches of [`BATCH`]) against the server, one window.
async fn measure_batched(args: &Args, ctx: &Ctx, connector: &Connector) -> anyhow::Result<Batched> {
    let mut clients = Vec::new();
    for _ in 0..BATCH_CONNECTIONS {
        clients.push(connector.connect(ctx.addr).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..BATCH_LOOPS {
        tasks.push(tokio::spawn(load_loop(
            clients[i % clients.len()].clone(),
            ctx.table.clone(),
            BATCH,
            args.seed ^ (i as u64 + 1),
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&done),
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.5))).await;
    let (l0, _) = server_counters(&ctx.admin).await?;
    let c0 = Threads::of(ctx.pid)?.cpu_seconds;
    measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.store(false, Ordering::SeqCst);
    let c1 = Threads::of(ctx.pid)?.cpu_seconds;
    let (l1, _) = server_counters(&ctx.admin).await?;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.context("a batched load loop failed")??;
    }
    for c in &clients {
        c.close();
    }
    let lookups = l1 - l0;
    let cpu = c1 - c0;
    ensure!(
        cpu > 0.0 && lookups > 0,
        "the batched load used no measurable server CPU; run longer"
    );
    Ok(Batched {
        batch: BATCH,
        loops: BATCH_LOOPS,
        connections: BATCH_CONNECTIONS,
        lookups,
        server_cpu_seconds: cpu,
        server_cpu_per_lookup_us: cpu * 1e6 / lookups as f64,
        lookups_per_server_cpu_s: lookups as f64 / cpu,
    })
}

/// The counters the load tasks share.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    measuring: AtomicBool,
    requests: AtomicU64,
    hit_misses: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

/// One point in one mode: start and warm the routers, run the load, measure a window.
async fn measure_point(
    args: &Args,
    ctx: &Ctx,
    point: Point,
    mode: Mode,
) -> anyhow::Result<ModeFigures> {
    // Hit keys: the starts of the even partitions 0, 2, .. (2 * keys - 2); miss keys: the odd
    // ones after them, each used once per run.
    let keys: Arc<Vec<u64>> = Arc::new((0..args.keys).map(|i| ctx.starts[2 * i]).collect());
    let mut starting = Vec::new();
    let linger = args.refresh_linger();
    for _ in 0..point.routers {
        let (addr, tls_dir, table, keys) = (
            ctx.addr,
            ctx.tls_dir.clone(),
            ctx.table.clone(),
            Arc::clone(&keys),
        );
        starting.push(tokio::spawn(async move {
            start_router(addr, &tls_dir, mode, linger, &table, &keys).await
        }));
    }
    let mut routers = Vec::new();
    for s in starting {
        routers.push(s.await.context("a router's start failed")??);
    }

    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for (r, cache) in routers.iter().enumerate() {
        let (cache, load, keys, table) = (
            cache.clone(),
            Arc::clone(&load),
            Arc::clone(&keys),
            ctx.table.clone(),
        );
        let rate = point.rate;
        tasks.push(tokio::spawn(async move {
            hit_stream(cache, table, keys, rate, r, load).await;
        }));
    }
    let latencies = Arc::new(Mutex::new(histogram::latency()));
    let miss_task = (args.miss_rate > 0.0).then(|| {
        let (routers, load, latencies, table) = (
            routers.clone(),
            Arc::clone(&load),
            Arc::clone(&latencies),
            ctx.table.clone(),
        );
        let odd: Vec<u64> = ctx.starts[2 * args.keys..]
            .iter()
            .copied()
            .skip(1)
            .step_by(2)
            .collect();
        let first = ctx.next_miss.load(Ordering::Relaxed);
        let rate = args.miss_rate;
        tokio::spawn(
            async move { miss_stream(routers, table, odd, first, rate, load, latencies).await },
        )
    });

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let before = snapshot(ctx, &routers, &load).await?;
    load.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    load.measuring.store(false, Ordering::SeqCst);
    let after = snapshot(ctx, &routers, &load).await?;
    let ages = route_ages(&routers, &ctx.table);
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.context("a router's load loop failed")?;
    }
    if let Some(t) = miss_task {
        let used = t.await.context("the miss stream failed")?;
        ctx.next_miss.fetch_add(used, Ordering::Relaxed);
    }
    for r in &routers {
        r.shutdown();
    }
    for r in routers {
        r.shutdown_complete().await;
    }
    let errors = load.errors.load(Ordering::Relaxed);
    ensure!(
        errors == 0,
        "{errors} route calls failed ({mode:?}, {point:?})"
    );

    let hist = latencies.lock().expect("not poisoned").clone();
    let requests = after.requests - before.requests;
    let misses = after.misses - before.misses;
    let lookups = after.lookups - before.lookups;
    let frames = after.frames - before.frames;
    let server_cpu = after.server_cpu - before.server_cpu;
    let router_cpu = after.router_cpu - before.router_cpu;
    let transport = after.transport.since(&before.transport);
    ensure!(
        requests > 0,
        "no requests in the window ({mode:?}, {point:?})"
    );
    let calls = (requests + misses) as f64;
    let per = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    Ok(ModeFigures {
        window_seconds: after.at.duration_since(before.at).as_secs_f64(),
        requests,
        hit_stream_misses: after.hit_misses - before.hit_misses,
        misses,
        server_lookups: lookups,
        lookups_per_request: lookups as f64 / calls,
        server_frames: frames,
        lookups_per_frame: per(lookups as f64, frames as f64),
        router_lookups_sent: after.sent - before.sent,
        router_dropped: after.dropped - before.dropped,
        server_cpu_seconds: server_cpu,
        server_cpu_per_lookup_us: per(server_cpu * 1e6, lookups as f64),
        server_cpu_per_request_us: server_cpu * 1e6 / calls,
        router_cpu_seconds: router_cpu,
        router_cpu_per_request_us: router_cpu * 1e6 / calls,
        miss_p50_us: if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(0.5) as f64
        },
        miss_p99_us: if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(0.99) as f64
        },
        datagrams: transport.datagrams(),
        datagrams_per_lookup: per(transport.datagrams() as f64, lookups as f64),
        datagrams_sent_per_lookup: per(transport.datagrams_sent as f64, lookups as f64),
        router_send_calls_per_lookup: per(transport.send_calls as f64, lookups as f64),
        acks_per_lookup: per(
            (transport.acks_sent + transport.acks_received) as f64,
            lookups as f64,
        ),
        server_switches_per_lookup: per(
            after.server_switches.saturating_sub(before.server_switches) as f64,
            lookups as f64,
        ),
        route_age_mean_ms: ages.mean(),
        route_age_p99_ms: ages.value_at_quantile(0.99) as f64,
    })
}

/// One router: connected, and holding every key of `keys` (each routed once, then drained).
async fn start_router(
    addr: SocketAddr,
    tls_dir: &Path,
    mode: Mode,
    linger: Duration,
    table: &str,
    keys: &[u64],
) -> anyhow::Result<RouterCache> {
    let cache = RouterCache::builder(vec![addr], ClientTls::from_dir(tls_dir, Role::Router)?)
        .mode(mode)
        .refresh_linger(linger)
        .build()
        .await
        .context("starting a router cache")?;
    let mut up = cache.servers_up();
    tokio::time::timeout(Duration::from_secs(10), up.wait_for(|&n| n > 0))
        .await
        .context("a router did not connect within 10 s")?
        .context("a router's connection state ended")?;
    for &k in keys {
        cache
            .route_hash(table, k)
            .await
            .context("warming a router")?;
    }
    cache.drain().await;
    Ok(cache)
}

/// One router's calls: `rate` per second over `keys` in turn (from an offset of its own),
/// catching up on ticks the timer skipped, until told to stop.
async fn hit_stream(
    cache: RouterCache,
    table: String,
    keys: Arc<Vec<u64>>,
    rate: f64,
    router: usize,
    load: Arc<Load>,
) {
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut issued = 0u64;
    let mut next = router.wrapping_mul(7919) % keys.len();
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            issued += 1;
            let key = keys[next];
            next = (next + 1) % keys.len();
            let measuring = load.measuring.load(Ordering::Relaxed);
            match cache.route_hash_traced(&table, key).await {
                Ok((_, hit)) => {
                    if measuring {
                        load.requests.fetch_add(1, Ordering::Relaxed);
                        if !hit {
                            load.hit_misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Misses at `rate` per second in all, round-robin over the routers, on keys `keys[first..]`
/// in turn (each a partition no router holds). Returns the keys it used.
async fn miss_stream(
    routers: Vec<RouterCache>,
    table: String,
    keys: Vec<u64>,
    first: u64,
    rate: f64,
    load: Arc<Load>,
    latencies: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut used = 0u64;
    let mut calls = Vec::new();
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let key = keys[((first + used) % keys.len() as u64) as usize];
        let cache = routers[(used % routers.len() as u64) as usize].clone();
        used += 1;
        let (load, latencies, table) = (Arc::clone(&load), Arc::clone(&latencies), table.clone());
        calls.push(tokio::spawn(async move {
            let measuring = load.measuring.load(Ordering::Relaxed);
            let started = Instant::now();
            match cache.route_hash_traced(&table, key).await {
                Ok((_, hit)) => {
                    if measuring && !hit {
                        load.misses.fetch_add(1, Ordering::Relaxed);
                        latencies
                            .lock()
                            .expect("not poisoned")
                            .saturating_record(started.elapsed().as_micros() as u64);
                    }
                }
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in calls {
        let _ = c.await;
    }
    used
}

/// The ages of every route the routers hold of `table` (since the fleet last confirmed it), in
/// milliseconds.
fn route_ages(routers: &[RouterCache], table: &str) -> hdrhistogram::Histogram<u64> {
    let mut ages = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures");
    for r in routers {
        let Some(dump) = r.dump(table) else { continue };
        for route in &dump.routes {
            if let Some(ago) = route.confirmed_ago {
                ages.record(ago.as_millis() as u64)
                    .expect("an auto-resizing histogram");
            }
        }
    }
    ages
}

/// Redis GET at `point`'s load (see [`RedisPaced`]).
async fn measure_redis_paced(
    args: &Args,
    point: Point,
    redis: &RedisServer,
) -> anyhow::Result<RedisPaced> {
    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    const VALUE: &[u8] = b"$1\r\nv\r\n";
    let mut conns = Vec::new();
    for _ in 0..point.routers {
        let conn = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
            .await
            .context("connecting to redis-server")?;
        conn.set_nodelay(true)?;
        conns.push(conn);
    }
    let mut ok = [0u8; 5];
    conns[0]
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        .await?;
    conns[0].read_exact(&mut ok).await?;
    ensure!(&ok == b"+OK\r\n", "redis-server did not store the key");
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for mut conn in conns {
        let load = Arc::clone(&load);
        let rate = point.rate;
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let started = Instant::now();
            let mut issued = 0u64;
            let mut reply = [0u8; VALUE.len()];
            while !load.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while issued < due {
                    issued += 1;
                    let measuring = load.measuring.load(Ordering::Relaxed);
                    let answered = conn.write_all(GET).await.is_ok()
                        && conn.read_exact(&mut reply).await.is_ok()
                        && reply == VALUE;
                    if !answered {
                        load.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if measuring {
                        load.requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let before = Threads::of(redis.pid)?;
    load.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    load.measuring.store(false, Ordering::SeqCst);
    let after = Threads::of(redis.pid)?;
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.context("a Redis load loop failed")?;
    }
    let errors = load.errors.load(Ordering::Relaxed);
    ensure!(errors == 0, "{errors} Redis GETs failed");
    let gets = load.requests.load(Ordering::SeqCst);
    ensure!(gets > 0, "no Redis GETs in the window");
    let cpu = after.cpu_seconds - before.cpu_seconds;
    Ok(RedisPaced {
        gets,
        server_cpu_seconds: cpu,
        server_cpu_per_get_us: cpu * 1e6 / gets as f64,
        server_switches_per_get: after.switches.saturating_sub(before.switches) as f64
            / gets as f64,
    })
}

async fn snapshot(ctx: &Ctx, routers: &[RouterCache], load: &Load) -> anyhow::Result<Snapshot> {
    let router_cpu = Threads::of_self()?.cpu_seconds;
    let server = Threads::of(ctx.pid)?;
    let (server_cpu, server_switches) = (server.cpu_seconds, server.switches);
    let at = Instant::now();
    let requests = load.requests.load(Ordering::SeqCst);
    let hit_misses = load.hit_misses.load(Ordering::SeqCst);
    let misses = load.misses.load(Ordering::SeqCst);
    let (lookups, frames) = server_counters(&ctx.admin).await?;
    let (mut sent, mut dropped) = (0, 0);
    let mut transport = TransportStats::default();
    for r in routers {
        let s = r.stats();
        sent += s.lookups_sent;
        dropped += s.dropped;
        transport += r.transport_stats();
    }
    Ok(Snapshot {
        lookups,
        frames,
        server_cpu,
        router_cpu,
        requests,
        hit_misses,
        misses,
        sent,
        dropped,
        transport,
        server_switches,
        at,
    })
}

/// What the scheduler counted for every thread of a process, read from `/proc` in one pass.
#[derive(Clone, Copy)]
struct Threads {
    /// The time the scheduler ran them (`/proc/<pid>/task/*/schedstat`, in nanoseconds), as
    /// seconds: `/proc/<pid>/stat` counts in 10 ms ticks, too coarse for a window in which a
    /// lightly loaded server runs a few tens of milliseconds.
    cpu_seconds: f64,
    /// Their context switches, voluntary and not (`/proc/<pid>/task/*/status`): how often they
    /// slept and woke.
    switches: u64,
}

impl Threads {
    /// Reads process `pid`'s threads. A thread that ended within a window takes its counts with
    /// it; the processes measured here keep theirs (runtime workers, the writer, Redis's
    /// threads) for the whole run.
    fn of(pid: u32) -> anyhow::Result<Threads> {
        let mut nanos = 0u64;
        let mut switches = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of process {pid}"))?
        {
            let task = task?.path();
            // A thread that ended since the listing has nothing left to count.
            let (Ok(sched), Ok(status)) = (
                std::fs::read_to_string(task.join("schedstat")),
                std::fs::read_to_string(task.join("status")),
            ) else {
                continue;
            };
            let Some(ran) = sched
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                bail!("parsing a schedstat line of process {pid}: {sched:?}");
            };
            nanos += ran;
            for line in status.lines() {
                if let Some(n) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += n
                        .trim()
                        .parse::<u64>()
                        .context("parsing a context switch count")?;
                }
            }
        }
        Ok(Threads {
            cpu_seconds: nanos as f64 / 1e9,
            switches,
        })
    }

    /// This process (the routers and their load).
    fn of_self() -> anyhow::Result<Threads> {
        Threads::of(std::process::id())
    }
}

fn median<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_u<T>(runs: &[T], f: impl Fn(&T) -> u64) -> u64 {
    median(runs, |r| f(r) as f64).round() as u64
}

/// Every figure the median of the runs' (each on its own, so the result is no single run's).
fn median_figures(runs: &[ModeFigures]) -> ModeFigures {
    ModeFigures {
        window_seconds: median(runs, |r| r.window_seconds),
        requests: median_u(runs, |r| r.requests),
        hit_stream_misses: median_u(runs, |r| r.hit_stream_misses),
        misses: median_u(runs, |r| r.misses),
        server_lookups: median_u(runs, |r| r.server_lookups),
        lookups_per_request: median(runs, |r| r.lookups_per_request),
        server_frames: median_u(runs, |r| r.server_frames),
        lookups_per_frame: median(runs, |r| r.lookups_per_frame),
        router_lookups_sent: median_u(runs, |r| r.router_lookups_sent),
        router_dropped: median_u(runs, |r| r.router_dropped),
        server_cpu_seconds: median(runs, |r| r.server_cpu_seconds),
        server_cpu_per_lookup_us: median(runs, |r| r.server_cpu_per_lookup_us),
        server_cpu_per_request_us: median(runs, |r| r.server_cpu_per_request_us),
        router_cpu_seconds: median(runs, |r| r.router_cpu_seconds),
        router_cpu_per_request_us: median(runs, |r| r.router_cpu_per_request_us),
        miss_p50_us: median(runs, |r| r.miss_p50_us),
        miss_p99_us: median(runs, |r| r.miss_p99_us),
        datagrams: median_u(runs, |r| r.datagrams),
        datagrams_per_lookup: median(runs, |r| r.datagrams_per_lookup),
        datagrams_sent_per_lookup: median(runs, |r| r.datagrams_sent_per_lookup),
        router_send_calls_per_lookup: median(runs, |r| r.router_send_calls_per_lookup),
        acks_per_lookup: median(runs, |r| r.acks_per_lookup),
        server_switches_per_lookup: median(runs, |r| r.server_switches_per_lookup),
        route_age_mean_ms: median(runs, |r| r.route_age_mean_ms),
        route_age_p99_ms: median(runs, |r| r.route_age_p99_ms),
    }
}

fn print_table(r: &Report) {
    println!(
        "memds-server {} | {} partitions, {} keys per router, {:.1} s windows after {:.1} s of \
         load, {} misses/s, medians of {}",
        r.server_bin,
        r.partitions,
        r.keys_per_router,
        r.seconds,
        r.warmup_seconds,
        r.miss_rate,
        r.repeat
    );
    println!(
        "batched ({} loops x batch {}): server CPU per lookup {:.3} us ({:.0} lookups/CPU-s)",
        r.batched.loops,
        r.batched.batch,
        r.batched.server_cpu_per_lookup_us,
        r.batched.lookups_per_server_cpu_s
    );
    println!(
        "redis GET -P 1 ({} clients): {:.2} us server CPU per GET ({:.0} GETs/CPU-s, {:.0}/s)",
        r.redis.clients,
        r.redis.server_cpu_per_get_us,
        r.redis.gets_per_server_cpu_s,
        r.redis.gets_per_s
    );
    println!(
        "{:<12} {:<13} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "point",
        "mode",
        "requests",
        "lookups",
        "lk/frame",
        "pkt/lk",
        "srv us/lk",
        "srv us/req",
        "rtr us/req",
        "miss p50",
        "miss p99"
    );
    for p in &r.points {
        let name = format!("{}x{}", p.routers, p.rate_per_router);
        for (mode, f) in [("constant-work", &p.constant_work), ("classic", &p.classic)] {
            println!(
                "{:<12} {:<13} {:>9} {:>9} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2} {:>9.0} {:>9.0}",
                name,
                mode,
                f.requests,
                f.server_lookups,
                f.lookups_per_frame,
                f.datagrams_per_lookup,
                f.server_cpu_per_lookup_us,
                f.server_cpu_per_request_us,
                f.router_cpu_per_request_us,
                f.miss_p50_us,
                f.miss_p99_us
            );
        }
        println!(
            "{:<12} router CPU per refresh {:.2} us; server CPU per lookup {:.0}x batched, \
             {:.2}x Redis GET -P 1",
            name,
            p.router_cpu_per_refresh_us,
            p.server_cpu_per_lookup_vs_batched,
            p.server_cpu_per_lookup_vs_redis
        );
        println!(
            "{:<12} route age (since confirmed): constant-work mean {:.0} ms, p99 {:.0} ms; \
             classic mean {:.0} ms",
            name,
            p.constant_work.route_age_mean_ms,
            p.constant_work.route_age_p99_ms,
            p.classic.route_age_mean_ms
        );
        println!(
            "{:<12} Redis GET at this load ({} connections x {}/s): {:.2} us server CPU per GET, \
             {:.2} switches per GET; memds {:.2} switches per lookup, {:.2}x Redis's CPU",
            name,
            p.routers,
            p.rate_per_router,
            p.redis_paced.server_cpu_per_get_us,
            p.redis_paced.server_switches_per_get,
            p.constant_work.server_switches_per_lookup,
            p.server_cpu_per_lookup_vs_redis_paced
        );
    }
}
