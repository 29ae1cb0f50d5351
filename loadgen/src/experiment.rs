//! `loadgen experiment`: the bimodality experiment, constant-work vs classic caching under
//! failures, side by side.
//!
//! Each run (one scenario, one mode) starts a fresh fleet of real servers (or uses `--servers`),
//! loads a synthetic map, warms `--routers` real [`RouterCache`]s with a route for every
//! partition (`--warm-with table`: each router's [`RouterCache::warm`], one get-table and no
//! lookups; `--warm-with lookups`: one lookup per partition, the burst a router fleet without a
//! warm start sends, kept to measure it), and drives them open loop: requests are scheduled at fixed times (`--rate` per
//! second over all routers, each to a random router), so a slow fleet cannot slow the offered
//! load, and latency is measured from the scheduled time. Keys follow a Zipf law over `--keys`
//! keys.
//!
//! Each request plays a router's whole part: it asks its cache for the route, then "sends" the
//! request to the storage node the route names, which checks the route against the authority's
//! current map and rejects a stale one; the router then invalidates that route and asks again.
//! The authority changes the map all along (`--churn` partition splits per second), which is what
//! keeps a classic cache from a 100% hit rate in steady state.
//!
//! The fleet replicates: the embedded servers (`--fleet`, 3 by default) are peers of each other,
//! sharing one development PKI, with an anti-entropy round every `--anti-entropy` seconds. The
//! authority pushes each change (the initial put, every split) to ONE server, the first still
//! running, or the next one if a push to it fails; the servers' forwarding and anti-entropy carry
//! it to the others. A run starts once every server is ready and holds the table. An external
//! fleet (`--servers`) is treated the same way, so its servers must be peers of each other (a
//! fleet that does not replicate never gets past the initial put: the run fails saying which
//! server lacks the table). At the end of a run, once the load has stopped, each running server's
//! version of the table is read (`summary`) and a lookup at the authority's last version is asked
//! of it; `results.json` records, per server, the changes pushed to it and what it held, which
//! shows replication carrying the changes to the servers never pushed to.
//!
//! Halfway through, the scenario's trigger fires: `flush` empties every cache (a router fleet
//! restart), `scale-out` adds `--scale-out` x routers with cold caches and spreads the same load
//! over all, `invalidation-storm` splits `--storm` of all partitions at once, `server-loss` stops
//! server 0, the one the authority pushes to (later changes go to server 1; the router caches
//! ask the remaining servers). Fleet load is read from the servers' own lookup counters every
//! `--sample-ms`. Amplification = peak fleet lookups per second after the trigger / mean before
//! it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::model::{PartitionSpec, TableSpec};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::PartitionUpdate;
use memds_proto::{TableMap, key_hash};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use router_cache::{Invalidate, Mode, RouterCache};
use serde::Serialize;

use crate::embedded::{self, Embedded, SharedPki};
use crate::histogram;

/// Which caching modes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// Every lookup goes to the fleet, hit or miss.
    ConstantWork,
    /// Only misses go to the fleet.
    Classic,
    /// Both, side by side.
    Both,
}

/// What happens at the trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// Every router's cache is emptied (a router fleet restart).
    Flush,
    /// Cold routers join and take their share of the load.
    ScaleOut,
    /// A large fraction of partitions split at once.
    InvalidationStorm,
    /// One server stops.
    ServerLoss,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Flush => "flush",
            Scenario::ScaleOut => "scale-out",
            Scenario::InvalidationStorm => "invalidation-storm",
            Scenario::ServerLoss => "server-loss",
        }
    }
}

/// Options of `experiment`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Caching modes to compare.
    #[arg(long, value_enum, default_value = "both")]
    mode: ModeArg,
    /// Scenarios to run (repeatable); all four by default.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Simulated request routers, each a real router cache.
    #[arg(long, default_value_t = 8)]
    routers: usize,
    /// Requests per second over all routers (open loop).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of load per run; the trigger fires halfway.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Partitions of the table.
    #[arg(long, default_value_t = 10_000)]
    partitions: usize,
    /// Keys the requests draw from.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Zipf exponent of key popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Partition splits per second the authority makes all along (of partitions holding
    /// popular keys, as traffic-driven splitting does).
    #[arg(long, default_value_t = 2.0)]
    churn: f64,
    /// Fraction of partitions split by an invalidation storm.
    #[arg(long, default_value_t = 0.2)]
    storm: f64,
    /// Cold routers added by a scale-out, as a fraction of `--routers`.
    #[arg(long, default_value_t = 1.0)]
    scale_out: f64,
    /// Servers of the embedded fleet (peers of each other).
    #[arg(long, default_value_t = 3)]
    fleet: usize,
    /// Seconds between the embedded servers' anti-entropy rounds.
    #[arg(long, default_value_t = 1.0)]
    anti_entropy: f64,
    /// Sampling interval of fleet load, in milliseconds.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Seed of the map, the keys and every random choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Drive an external fleet instead of starting one. Its servers must be peers of each other:
    /// each change is pushed to the first one that takes it, and replication carries it on.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<SocketAddr>,
    /// TLS directory (admin and router certificates) of the external fleet.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Output directory [default: ./loadgen-out/<unix-seconds>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// How the routers are warmed before the load: `table`, each router's `warm` (one
    /// get-table, no lookups); `lookups`, one lookup per partition (what a router without a
    /// warm start does, a burst on the fleet; kept as the baseline).
    #[arg(long, value_enum, default_value = "table")]
    warm_with: WarmWith,
    #[command(flatten)]
    metrics: crate::metrics_listen::Flag,
}

/// The `--warm-with` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum WarmWith {
    /// `RouterCache::warm`: one get-table per router.
    Table,
    /// One lookup per partition per router.
    Lookups,
}

/// How the routers were warmed before a run's load, measured from the servers' own counters.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Warmup {
    /// `--warm-with`.
    pub(crate) method: WarmWith,
    /// From the first router's start to the last one warm.
    pub(crate) seconds: f64,
    /// Lookups the fleet performed meanwhile.
    pub(crate) fleet_lookups: u64,
    /// `fleet_lookups / seconds`.
    pub(crate) fleet_lookups_per_s: f64,
    /// `fleet_lookups_per_s` over the run's steady fleet load.
    pub(crate) versus_steady: f64,
}

/// One run's results, as `results.json` holds them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub(crate) scenario: Scenario,
    pub(crate) mode: &'static str,
    pub(crate) steady_lookups_per_s: f64,
    pub(crate) peak_lookups_per_s: f64,
    pub(crate) amplification: f64,
    pub(crate) hit_rate: f64,
    pub(crate) hit_rate_after: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) stale_rejections: u64,
    pub(crate) latency_before_ms: Percentiles,
    pub(crate) latency_after_ms: Percentiles,
    pub(crate) time_to_recover_s: Option<f64>,
    pub(crate) trigger_s: f64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) replication: Replication,
    /// How the routers were warmed, and what it cost the fleet.
    pub(crate) warmup: Warmup,
}

/// Where the authority's changes went, and what every server held once the load had stopped.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Replication {
    /// The table's version the authority last made current.
    pub(crate) authority_version: u64,
    /// Changes no server took (the authority abandoned them).
    pub(crate) failed_pushes: u64,
    /// Seconds from the end of the load until every running server held `authority_version`;
    /// `None` if they did not within the wait (five anti-entropy periods and two seconds).
    pub(crate) converged_s: Option<f64>,
    /// Every server, in `--servers` / fleet order.
    pub(crate) servers: Vec<ServerState>,
}

/// One server at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerState {
    pub(crate) addr: String,
    /// Whether it was still running (server-loss stops one).
    pub(crate) running: bool,
    /// Changes the authority pushed to it (the initial put included).
    pub(crate) pushes: u64,
    /// The table's version it held (its `summary`), if it answered and held the table.
    pub(crate) version: Option<u64>,
    /// Whether it answered a lookup asking for at least `authority_version`.
    pub(crate) serves_latest: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
}

/// One sampling interval.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the load started (end of the interval).
    pub(crate) t: f64,
    /// Lookups the fleet performed per second in the interval (servers' own counters).
    pub(crate) fleet_lookups_per_s: f64,
    /// Requests completed per second in the interval.
    pub(crate) requests_per_s: f64,
    /// Router latency p99 of requests completed in the interval, ms.
    pub(crate) p99_ms: f64,
    /// Hit rate of cache calls in the interval.
    pub(crate) hit_rate: f64,
}

/// The whole experiment's output.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) settings: serde_json::Value,
    pub(crate) runs: Vec<RunResult>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.routers >= 1 && args.rate > 0.0 && args.duration >= 2.0,
        "--routers, --rate must be positive and --duration at least 2 s"
    );
    ensure!(
        args.partitions >= 10 && args.keys >= 1 && args.zipf > 0.0,
        "--partitions at least 10, --keys and --zipf positive"
    );
    ensure!(
        args.fleet >= 1 && args.sample_ms >= 10,
        "--fleet at least 1, --sample-ms at least 10"
    );
    ensure!(
        args.anti_entropy >= 0.01 && args.anti_entropy <= 3600.0,
        "--anti-entropy between 0.01 and 3600 seconds"
    );
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Flush,
            Scenario::ScaleOut,
            Scenario::InvalidationStorm,
            Scenario::ServerLoss,
        ]
    } else {
        args.scenarios.clone()
    };
    if !args.servers.is_empty() && scenarios.contains(&Scenario::ServerLoss) {
        bail!(
            "server-loss stops a server, which only the embedded fleet can do; leave it out with --servers"
        );
    }
    ensure!(
        args.servers.is_empty() || args.tls_dir.is_some(),
        "--servers needs --tls-dir"
    );
    let modes: Vec<Mode> = match args.mode {
        ModeArg::ConstantWork => vec![Mode::ConstantWork],
        ModeArg::Classic => vec![Mode::Classic { whole_table: false }],
        ModeArg::Both => vec![Mode::ConstantWork, Mode::Classic { whole_table: false }],
    };
    let out = match &args.out {
        Some(d) => d.clone(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("loadgen-out").join(secs.to_string())
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let _metrics = args.metrics.start()?;

    let progress = MultiProgress::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen-exp")
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for &scenario in &scenarios {
        for &mode in &modes {
            let bar = progress.add(ProgressBar::new((args.duration * 1000.0) as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>32} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("{} / {}", scenario.name(), mode_name(mode)));
            let result = runtime
                .block_on(run_one(args, scenario, mode, &bar))
                .with_context(|| format!("running {} in {}", scenario.name(), mode_name(mode)))?;
            bar.finish_with_message(format!("amplification {:.2}", result.amplification));
            runs.push(result);
        }
    }
    drop(runtime);
    let results = Results {
        settings: serde_json::json!({
            "routers": args.routers, "rate": args.rate, "duration_s": args.duration,
            "partitions": args.partitions, "keys": args.keys, "zipf": args.zipf, "churn": args.churn,
            "storm": args.storm, "scale_out": args.scale_out, "fleet": if args.servers.is_empty() { args.fleet } else { args.servers.len() },
            "sample_ms": args.sample_ms, "seed": args.seed, "external": !args.servers.is_empty(),
            "anti_entropy_s": args.anti_entropy, "pushes_to": "the first running server",
            "warm_with": args.warm_with,
        }),
        runs,
    };
    crate::report::write(&out, &results)?;
    crate::report::print_table(&results);
    println!("results, plots and report.html in {}", out.display());
    Ok(())
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::ConstantWork => "constant-work",
        Mode::Classic { .. } => "classic",
    }
}

/// How long one push to one server may take before the authority tries the next.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run waits, before the load starts, for every server to be ready and hold the
/// table.
const START_WAIT: Duration = Duration::from_secs(60);

/// The fleet of one run.
struct Fleet {
    embedded: Vec<Option<Embedded>>,
    addrs: Vec<SocketAddr>,
    tls_dir: PathBuf,
    pusher: Arc<Pusher>,
    /// The embedded fleet's PKI, removed once the fleet is dropped.
    _pki: Option<SharedPki>,
}

impl Fleet {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let (embedded, addrs, tls_dir, pki) = if args.servers.is_empty() {
            let pki = SharedPki::create()?;
            let dir = pki.path().to_owned();
            let (n, period) = (args.fleet, Duration::from_secs_f64(args.anti_entropy));
            let servers = tokio::task::spawn_blocking(move || {
                embedded::start_fleet(n, 1, &dir, period, |_| {})
            })
            .await??;
            let addrs = servers.iter().map(Embedded::addr).collect();
            let tls = pki.path().to_owned();
            (
                servers.into_iter().map(Some).collect(),
                addrs,
                tls,
                Some(pki),
            )
        } else {
            (
                Vec::new(),
                args.servers.clone(),
                args.tls_dir.clone().context("--tls-dir")?,
                None,
            )
        };
        let connector = Connector::new(
            &ClientTls::from_dir(&tls_dir, Role::Admin)?,
            ConnectOptions::default(),
        )?;
        let mut admins = Vec::new();
        for &a in &addrs {
            admins.push(
                connector
                    .connect(a)
                    .await
                    .with_context(|| format!("connecting to {a}"))?,
            );
        }
        Ok(Self {
            embedded,
            addrs,
            tls_dir,
            pusher: Arc::new(Pusher {
                running: admins.iter().map(|_| AtomicBool::new(true)).collect(),
                pushes: admins.iter().map(|_| AtomicU64::new(0)).collect(),
                failed: AtomicU64::new(0),
                admins,
            }),
            _pki: pki,
        })
    }

    /// Lookups counted by each server so far (a stopped server keeps its last count).
    async fn lookups(&self, last: &mut [u64]) -> u64 {
        for (i, a) in self.pusher.admins.iter().enumerate() {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), a.stats()).await {
                last[i] = s.lookups_total;
            }
        }
        last.iter().sum()
    }

    /// Waits until every running server is ready and holds `table` at `version` or newer:
    /// `Ok` with the seconds it took, or what was still missing at `limit`.
    async fn wait_replicated(
        &self,
        table: &str,
        version: u64,
        limit: Duration,
    ) -> Result<f64, String> {
        let started = Instant::now();
        loop {
            let mut missing = Vec::new();
            for (i, a) in self.pusher.admins.iter().enumerate() {
                if !self.pusher.running[i].load(Ordering::Relaxed) {
                    continue;
                }
                let held = match tokio::time::timeout(Duration::from_millis(500), a.summary()).await
                {
                    Ok(Ok(s)) => s
                        .tables
                        .iter()
                        .find(|t| t.name == table && !t.dropped)
                        .map(|t| (t.version, s.ready)),
                    _ => None,
                };
                match held {
                    Some((v, true)) if v >= version => {}
                    Some((v, ready)) => missing.push(format!(
                        "{} holds version {v}{}",
                        self.addrs[i],
                        if ready { "" } else { " and is not ready" }
                    )),
                    None => missing.push(format!("{} does not hold it", self.addrs[i])),
                }
            }
            if missing.is_empty() {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "after {limit:?}, waiting for every server to hold {table} at version {version}: {}",
                    missing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What each server holds of `table` now, against `version`.
    async fn states(&self, table: &str, version: u64) -> Vec<ServerState> {
        let mut out = Vec::new();
        for (i, a) in self.pusher.admins.iter().enumerate() {
            let running = self.pusher.running[i].load(Ordering::Relaxed);
            let pushes = self.pusher.pushes[i].load(Ordering::Relaxed);
            let (mut held, mut serves_latest) = (None, false);
            if running {
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_millis(500), a.summary()).await
                {
                    held = s
                        .tables
                        .iter()
                        .find(|t| t.name == table && !t.dropped)
                        .map(|t| t.version);
                }
                serves_latest = matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        a.lookup_at_least(table, 0, Some(version))
                    )
                    .await,
                    Ok(Ok(_))
                );
            }
            out.push(ServerState {
                addr: self.addrs[i].to_string(),
                running,
                pushes,
                version: held,
                serves_latest,
            });
        }
        out
    }

    async fn stop_server(&mut self, i: usize) {
        if let Some(flag) = self.pusher.running.get(i) {
            flag.store(false, Ordering::Relaxed);
        }
        if let Some(e) = self.embedded.get_mut(i).and_then(Option::take) {
            let _ = tokio::task::spawn_blocking(move || e.stop()).await;
        }
    }

    async fn stop(mut self) {
        for i in 0..self.embedded.len() {
            self.stop_server(i).await;
        }
    }
}

/// A change the authority pushes.
#[derive(Clone, Copy)]
enum Change<'a> {
    Put(&'a TableMap),
    Update(&'a PartitionUpdate),
}

/// Where the authority's changes go: ONE server, the first still running, or the next one if
/// the push to it fails (an error answer, a closed connection, or no answer within
/// [`PUSH_TIMEOUT`]). The fleet's replication carries each change to the others.
struct Pusher {
    admins: Vec<Client>,
    /// Cleared when the run stops the server.
    running: Vec<AtomicBool>,
    /// Changes each server took.
    pushes: Vec<AtomicU64>,
    /// Changes no server took.
    failed: AtomicU64,
}

impl Pusher {
    /// Pushes `change`: the index of the server that took it, or `None` if none did.
    async fn push(&self, change: Change<'_>) -> Option<usize> {
        for (i, admin) in self.admins.iter().enumerate() {
            if !self.running[i].load(Ordering::Relaxed) {
                continue;
            }
            let sent = async {
                match change {
                    Change::Put(map) => admin.put_table(map).await,
                    Change::Update(update) => admin.update_partitions(update.clone()).await,
                }
            };
            if let Ok(Ok(_)) = tokio::time::timeout(PUSH_TIMEOUT, sent).await {
                self.pushes[i].fetch_add(1, Ordering::Relaxed);
                return Some(i);
            }
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The authority: owns the current map and pushes each change to one server (see [`Pusher`]).
struct Authority {
    /// The current map, and the one before it: during a change the storage nodes accept both,
    /// as real ones do while the change propagates.
    map: RwLock<(Arc<TableMap>, Arc<TableMap>)>,
    next_id: Mutex<u64>,
    /// One change at a time: a change is read, pushed and made current as one step, so the
    /// fleet and the authority never diverge by more than the change being replicated.
    changing: tokio::sync::Mutex<()>,
}

impl Authority {
    fn current(&self) -> Arc<TableMap> {
        Arc::clone(&self.map.read().unwrap_or_else(|p| p.into_inner()).0)
    }

    fn set(&self, next: TableMap) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut m.0, Arc::new(next));
        m.1 = previous;
    }

    /// Whether a storage node accepts a request for `hash` sent by `route`.
    fn accepts(&self, hash: u64, route: &memds_proto::Route) -> bool {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        [&m.0, &m.1].iter().any(|map| {
            let owner = &map.partitions()[map.floor_index(hash)];
            owner.id == route.partition && owner.epoch == route.epoch
        })
    }

    /// Splits the given partitions (by index) at their midpoints: the new map, or `None` if
    /// nothing could be split.
    fn split(&self, map: &TableMap, indexes: &[usize]) -> Option<TableMap> {
        let mut spec = TableSpec::from(map);
        let mut next_id = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = Vec::new();
        for &i in indexes {
            let end = map.end_inclusive(i);
            let p = &mut spec.partitions[i];
            if end - p.start < 2 {
                continue;
            }
            let mid = p.start + (end - p.start) / 2;
            p.epoch += 1;
            added.push(PartitionSpec {
                id: *next_id,
                start: mid,
                epoch: p.epoch,
                replicas: p.replicas.clone(),
                leader: p.leader,
            });
            *next_id += 1;
        }
        if added.is_empty() {
            return None;
        }
        spec.partitions.extend(added);
        spec.partitions.sort_by_key(|p| p.start);
        spec.version += 1;
        TableMap::try_from(spec).ok()
    }

    /// Pushes a new map (whole, or as `update`) to one server, then makes it current; a change
    /// no server took is abandoned.
    async fn publish(&self, pusher: &Pusher, next: TableMap, update: Option<&PartitionUpdate>) {
        let change = match update {
            Some(u) => Change::Update(u),
            None => Change::Put(&next),
        };
        if pusher.push(change).await.is_some() {
            self.set(next);
        }
    }
}

/// Router-side counters of the current interval and of the phases.
#[derive(Default)]
struct Meter {
    interval: Interval,
    before: Phase,
    after: Phase,
}

struct Interval {
    latency: Histogram<u64>,
    requests: u64,
    hits: u64,
    calls: u64,
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            latency: histogram::latency(),
            requests: 0,
            hits: 0,
            calls: 0,
        }
    }
}

struct Phase {
    latency: Histogram<u64>,
    requests: u64,
    calls: u64,
    hits: u64,
    errors: u64,
    stale: u64,
}

impl Default for Phase {
    fn default() -> Self {
        Self {
            latency: histogram::latency(),
            requests: 0,
            calls: 0,
            hits: 0,
            errors: 0,
            stale: 0,
        }
    }
}

struct Outcome {
    latency_us: u64,
    calls: u64,
    hits: u64,
    stale: u64,
    ok: bool,
}

async fn run_one(
    args: &Args,
    scenario: Scenario,
    mode: Mode,
    bar: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let mut fleet = Fleet::start(args).await?;
    // A table of its own per run, so runs never see each other's versions.
    let base = synth::generate_table(
        &SynthConfig {
            partitions: args.partitions,
            seed: args.seed,
            ..SynthConfig::default()
        },
        0,
    );
    let mut spec = TableSpec::from(&base);
    spec.table = format!(
        "exp-{}-{}-{}",
        scenario.name(),
        mode_name(mode),
        std::process::id()
    );
    let map = TableMap::try_from(spec).context("renaming the table")?;
    let table: Arc<str> = map.name().as_str().into();
    fleet
        .pusher
        .push(Change::Put(&map))
        .await
        .context("no server took the table")?;
    fleet
        .wait_replicated(&table, map.version().get(), START_WAIT)
        .await
        .map_err(anyhow::Error::msg)
        .context("the table did not reach every server (an external fleet must be peers)")?;
    let max_id = map
        .partitions()
        .iter()
        .map(|p| p.id.get())
        .max()
        .unwrap_or(0);
    let map = Arc::new(map);
    let authority = Arc::new(Authority {
        map: RwLock::new((Arc::clone(&map), map)),
        next_id: Mutex::new(max_id + 1),
        changing: tokio::sync::Mutex::new(()),
    });

    let (fleet_addrs, fleet_tls) = (fleet.addrs.clone(), fleet.tls_dir.clone());
    let exposed = crate::metrics_listen::ExposedRouters::new(&format!(
        "{}/{}",
        scenario.name(),
        mode_name(mode)
    ));
    let start_router = |warm: Option<WarmWith>| {
        let label = exposed.next_label();
        let (fleet_addrs, tls_dir, table, authority) = (
            fleet_addrs.clone(),
            fleet_tls.clone(),
            Arc::clone(&table),
            Arc::clone(&authority),
        );
        async move {
            let cache =
                RouterCache::builder(fleet_addrs, ClientTls::from_dir(&tls_dir, Role::Router)?)
                    .mode(mode)
                    .metrics_instance(label)
                    .build()
                    .await?;
            wait_connected(&cache).await;
            match warm {
                None => {}
                Some(WarmWith::Table) => {
                    cache.warm(&table).await.context("warming a router")?;
                }
                Some(WarmWith::Lookups) => {
                    let starts: Vec<u64> = authority
                        .current()
                        .partitions()
                        .iter()
                        .map(|p| p.start)
                        .collect();
                    for chunk in starts.chunks(512) {
                        let calls: Vec<_> =
                            chunk.iter().map(|&s| cache.route_hash(&table, s)).collect();
                        for c in calls {
                            c.await?;
                        }
                    }
                    cache.drain().await;
                }
            }
            anyhow::Ok(cache)
        }
    };
    let mut counted = vec![0u64; fleet.pusher.admins.len()];
    let lookups_before_warmup = fleet.lookups(&mut counted).await;
    let warmup_started = Instant::now();
    let mut routers = Vec::new();
    for r in futures_join_all((0..args.routers).map(|_| start_router(Some(args.warm_with)))).await {
        routers.push(r?);
    }
    let warmup_seconds = warmup_started.elapsed().as_secs_f64();
    let warmup_lookups = fleet
        .lookups(&mut counted)
        .await
        .saturating_sub(lookups_before_warmup);
    let routers = Arc::new(RwLock::new(routers));
    let meter = Arc::new(Mutex::new(Meter::default()));
    let triggered = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(args.duration);
    let trigger_at = duration / 2;
    let started = Instant::now();
    let end = started + duration;

    // Open-loop load.
    let load = {
        let (routers, meter, triggered, authority, table) = (
            Arc::clone(&routers),
            Arc::clone(&meter),
            Arc::clone(&triggered),
            Arc::clone(&authority),
            Arc::clone(&table),
        );
        let (rate, keys, zipf, seed) = (args.rate, args.keys, args.zipf, args.seed);
        tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10AD);
            let dist = rand_distr::Zipf::new(keys as f64, zipf).expect("validated parameters");
            let mut inflight = tokio::task::JoinSet::new();
            let mut i = 0u64;
            loop {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let rank = dist.sample(&mut rng) as u64;
                let hash = key_hash(format!("key-{rank}").as_bytes());
                let router = {
                    let r = routers.read().unwrap_or_else(|p| p.into_inner());
                    r[rng.random_range(0..r.len())].clone()
                };
                let (meter, triggered, authority, table) = (
                    Arc::clone(&meter),
                    Arc::clone(&triggered),
                    Arc::clone(&authority),
                    Arc::clone(&table),
                );
                inflight.spawn(async move {
                    let o = request(&router, &table, hash, &authority, at).await;
                    let mut m = meter.lock().unwrap_or_else(|p| p.into_inner());
                    m.interval.latency.saturating_record(o.latency_us.max(1));
                    m.interval.requests += 1;
                    m.interval.calls += o.calls;
                    m.interval.hits += o.hits;
                    let phase = if triggered.load(Ordering::Relaxed) {
                        &mut m.after
                    } else {
                        &mut m.before
                    };
                    phase.latency.saturating_record(o.latency_us.max(1));
                    phase.requests += 1;
                    phase.calls += o.calls;
                    phase.hits += o.hits;
                    phase.stale += o.stale;
                    phase.errors += u64::from(!o.ok);
                });
                while inflight.try_join_next().is_some() {}
                i += 1;
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    // Background churn: the authority splits hot partitions (it reshapes partitioning by
    // traffic, so the partition split is the one holding a key drawn like the requests' keys).
    let churn = {
        let (authority, fleet_admins_table) = (Arc::clone(&authority), Arc::clone(&table));
        let pusher = Arc::clone(&fleet.pusher);
        let (rate, keys, zipf, seed) = (args.churn, args.keys, args.zipf, args.seed);
        tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC4);
            let dist = rand_distr::Zipf::new(keys as f64, zipf).expect("validated parameters");
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.tick().await;
            // Ends with the load: the last change is pushed and made current (or abandoned)
            // before the task returns, so the authority's version at the end is final.
            while tokio::time::timeout_at(end.into(), tick.tick())
                .await
                .is_ok()
            {
                let _change = authority.changing.lock().await;
                let current = authority.current();
                let rank = dist.sample(&mut rng) as u64;
                let i = current.floor_index(key_hash(format!("key-{rank}").as_bytes()));
                let Some(next) = authority.split(&current, &[i]) else {
                    continue;
                };
                let update = update_for(&current, &next, &fleet_admins_table, i);
                authority.publish(&pusher, next, Some(&update)).await;
            }
        })
    };

    // Sampling, and the trigger.
    let mut last = vec![0u64; fleet.pusher.admins.len()];
    let mut prev_total = fleet.lookups(&mut last).await;
    let mut prev_t = Instant::now();
    let mut samples = Vec::new();
    let mut fired = false;
    let interval = Duration::from_millis(args.sample_ms);
    while Instant::now() < end {
        tokio::time::sleep(interval.min(end.saturating_duration_since(Instant::now()))).await;
        if !fired && started.elapsed() >= trigger_at {
            fired = true;
            triggered.store(true, Ordering::Relaxed);
            fire(
                scenario,
                args,
                &mut fleet,
                &authority,
                &routers,
                &start_router,
            )
            .await?;
        }
        let total = fleet.lookups(&mut last).await;
        let now = Instant::now();
        let secs = now.duration_since(prev_t).as_secs_f64().max(1e-6);
        if now >= end && secs < 0.9 * interval.as_secs_f64() {
            // A last, short interval as the load stops would read as a drop in load.
            break;
        }
        let iv = std::mem::take(&mut meter.lock().unwrap_or_else(|p| p.into_inner()).interval);
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            fleet_lookups_per_s: total.saturating_sub(prev_total) as f64 / secs,
            requests_per_s: iv.requests as f64 / secs,
            p99_ms: if iv.requests > 0 {
                iv.latency.value_at_quantile(0.99) as f64 / 1000.0
            } else {
                0.0
            },
            hit_rate: if iv.calls > 0 {
                iv.hits as f64 / iv.calls as f64
            } else {
                0.0
            },
        });
        prev_total = total;
        prev_t = now;
        bar.set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
        bar.set_message(format!(
            "fleet {:.0} lookups/s",
            samples.last().map_or(0.0, |s| s.fleet_lookups_per_s)
        ));
    }
    load.await.context("the load task failed")?;
    churn.await.context("the churn task failed")?;
    let routers: Vec<RouterCache> = routers.read().unwrap_or_else(|p| p.into_inner()).clone();
    for r in &routers {
        r.shutdown();
    }
    // What replication carried: every running server should come to hold the authority's
    // last version, whichever server the changes were pushed to.
    let authority_version = authority.current().version().get();
    let converge_limit = Duration::from_secs_f64(5.0 * args.anti_entropy + 2.0);
    let converged_s = fleet
        .wait_replicated(&table, authority_version, converge_limit)
        .await
        .ok();
    let replication = Replication {
        authority_version,
        failed_pushes: fleet.pusher.failed.load(Ordering::Relaxed),
        converged_s,
        servers: fleet.states(&table, authority_version).await,
    };
    fleet.stop().await;

    let trigger_s = trigger_at.as_secs_f64();
    let m = meter.lock().unwrap_or_else(|p| p.into_inner());
    let mut result = summarize(scenario, mode, &samples, &m, trigger_s, replication);
    let per_s = warmup_lookups as f64 / warmup_seconds.max(1e-9);
    result.warmup = Warmup {
        method: args.warm_with,
        seconds: warmup_seconds,
        fleet_lookups: warmup_lookups,
        fleet_lookups_per_s: per_s,
        versus_steady: per_s / result.steady_lookups_per_s.max(1e-9),
    };
    Ok(result)
}

/// Awaits every future, concurrently, in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<F> = futures.collect();
    let mut out = Vec::with_capacity(futures.len());
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

async fn wait_connected(cache: &RouterCache) {
    for _ in 0..500 {
        if cache.stats().servers_up > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the trigger does.
async fn fire<F, Fut>(
    scenario: Scenario,
    args: &Args,
    fleet: &mut Fleet,
    authority: &Authority,
    routers: &RwLock<Vec<RouterCache>>,
    start_router: &F,
) -> anyhow::Result<()>
where
    F: Fn(Option<WarmWith>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<RouterCache>>,
{
    match scenario {
        Scenario::Flush => {
            // Freeing every cached route is real work (a restarted router does it too); it runs
            // on a blocking thread so the load generator's schedule is not held up by it.
            let all: Vec<RouterCache> = routers.read().unwrap_or_else(|p| p.into_inner()).clone();
            tokio::task::spawn_blocking(move || all.iter().for_each(RouterCache::clear)).await?;
        }
        Scenario::ScaleOut => {
            let n = ((args.routers as f64 * args.scale_out).ceil() as usize).max(1);
            let mut cold = Vec::new();
            for _ in 0..n {
                cold.push(start_router(None).await?);
            }
            routers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(cold);
        }
        Scenario::InvalidationStorm => {
            let _change = authority.changing.lock().await;
            let current = authority.current();
            let n = current.partitions().len();
            let every = ((1.0 / args.storm.clamp(1e-6, 1.0)).round() as usize).max(1);
            let indexes: Vec<usize> = (0..n).step_by(every).collect();
            if let Some(next) = authority.split(&current, &indexes) {
                authority.publish(&fleet.pusher, next, None).await;
            }
        }
        Scenario::ServerLoss => fleet.stop_server(0).await,
    }
    Ok(())
}

/// The update-partitions request that turns `current` into `next` by splitting partition `i`.
fn update_for(current: &TableMap, next: &TableMap, table: &str, i: usize) -> PartitionUpdate {
    let start = current.partitions()[i].start;
    let end = current.end_inclusive(i);
    let spec = TableSpec::from(next);
    PartitionUpdate {
        table: table.to_owned(),
        base_version: current.version().get(),
        version: next.version().get(),
        end_inclusive: end,
        nodes: vec![],
        partitions: spec
            .partitions
            .into_iter()
            .filter(|p| p.start >= start && p.start <= end)
            .collect(),
    }
}

/// One request as a router handles it: route, send to the storage node, and on a "wrong
/// partition" answer invalidate and route again (at most twice).
async fn request(
    router: &RouterCache,
    table: &str,
    hash: u64,
    authority: &Authority,
    scheduled: Instant,
) -> Outcome {
    let mut o = Outcome {
        latency_us: 0,
        calls: 0,
        hits: 0,
        stale: 0,
        ok: false,
    };
    for _ in 0..3 {
        let looked_up = router.route_hash_traced(table, hash).await;
        o.calls += 1;
        let Ok((route, hit)) = looked_up else { break };
        o.hits += u64::from(hit);
        // The storage node's check: does it own this hash at this epoch?
        if authority.accepts(hash, &route) {
            o.ok = true;
            break;
        }
        o.stale += 1;
        router.invalidate(
            table,
            Invalidate::Partition(route.partition.get()),
            route.epoch.get(),
        );
    }
    o.latency_us = scheduled.elapsed().as_micros() as u64;
    o
}

fn summarize(
    scenario: Scenario,
    mode: Mode,
    samples: &[Sample],
    m: &Meter,
    trigger_s: f64,
    replication: Replication,
) -> RunResult {
    // Steady state: the samples before the trigger, less the first second (connections and
    // the load settling).
    let steady: Vec<f64> = samples
        .iter()
        .filter(|s| s.t > 1.0 && s.t <= trigger_s)
        .map(|s| s.fleet_lookups_per_s)
        .collect();
    let steady_mean = if steady.is_empty() {
        0.0
    } else {
        steady.iter().sum::<f64>() / steady.len() as f64
    };
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t > trigger_s).collect();
    let peak = after
        .iter()
        .map(|s| s.fleet_lookups_per_s)
        .fold(0.0, f64::max);
    let peak_at = after
        .iter()
        .find(|s| s.fleet_lookups_per_s == peak)
        .map_or(trigger_s, |s| s.t);
    // Recovered: back within 1.5x of steady load; 0 if the trigger never took it beyond, `None`
    // if it was still beyond when the run ended.
    let bound = 1.5 * steady_mean.max(1.0);
    let recover = if peak <= bound {
        Some(0.0)
    } else {
        after
            .iter()
            .filter(|s| s.t >= peak_at)
            .find(|s| s.fleet_lookups_per_s <= bound)
            .map(|s| (s.t - trigger_s).max(0.0))
    };
    let pct = |p: &Phase| Percentiles {
        p50: p.latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99: p.latency.value_at_quantile(0.99) as f64 / 1000.0,
        p999: p.latency.value_at_quantile(0.999) as f64 / 1000.0,
    };
    let rate = |hits: u64, calls: u64| {
        if calls > 0 {
            hits as f64 / calls as f64
        } else {
            0.0
        }
    };
    RunResult {
        scenario,
        mode: mode_name(mode),
        steady_lookups_per_s: steady_mean,
        peak_lookups_per_s: peak,
        amplification: if steady_mean > 0.0 {
            peak / steady_mean
        } else {
            f64::INFINITY
        },
        hit_rate: rate(m.before.hits, m.before.calls),
        hit_rate_after: rate(m.after.hits, m.after.calls),
        requests: m.before.requests + m.after.requests,
        errors: m.before.errors + m.after.errors,
        stale_rejections: m.before.stale + m.after.stale,
        latency_before_ms: pct(&m.before),
        latency_after_ms: pct(&m.after),
        time_to_recover_s: recover,
        trigger_s,
        samples: samples.to_vec(),
        replication,
        // Filled in by the caller, which measured it.
        warmup: Warmup {
            method: WarmWith::Table,
            seconds: 0.0,
            fleet_lookups: 0,
            fleet_lookups_per_s: 0.0,
            versus_steady: 0.0,
        },
    }
}

/// Groups runs by scenario, in order.
pub(crate) fn by_scenario(runs: &[RunResult]) -> Vec<(Scenario, Vec<&RunResult>)> {
    let mut out: Vec<(Scenario, Vec<&RunResult>)> = Vec::new();
    let mut index: HashMap<Scenario, usize> = HashMap::new();
    for r in runs {
        let i = *index.entry(r.scenario).or_insert_with(|| {
            out.push((r.scenario, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(r);
    }
    out
}
