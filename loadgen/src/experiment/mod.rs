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
//!
//! # Layout
//!
//! - this module: the options ([`Args`]), [`run`] (every scenario in every mode, then the
//!   report) and `run_one`, one run as a sequence of named steps.
//! - `results`: what a run produces, the types of `results.json` (which `report` reads).
//! - `fleet`: the run's servers (embedded or external), their admin connections, and the
//!   `Pusher` that sends each change to one server.
//! - `authority`: the map's owner: splits, publication, the background churn, and the storage
//!   nodes' check of a route.
//! - `routers`: starting the simulated routers (real router caches), warm or cold.
//! - `load`: the open-loop load generator, one request as a router plays it, and the `Meter`.
//! - `sampling`: the sampling loop (and the trigger halfway), and the summary of a run.
//! - `triggers`: what each scenario does at the trigger.

mod authority;
mod fleet;
mod load;
pub(crate) mod results;
mod routers;
mod sampling;
mod triggers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use memds_proto::TableMap;
use memds_proto::model::TableSpec;
use memds_proto::synth::{self, SynthConfig};
use router_cache::{Mode, RouterCache};

use self::authority::Authority;
use self::fleet::Fleet;
use self::load::{Backoff, Load, Meter, Policy, Timeline};
use self::results::{Results, RunResult, Scenario, WarmWith, mode_name};
use self::routers::Routers;
use self::sampling::{Sampler, WarmupCost};

/// Which caching modes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Every lookup goes to the fleet, hit or miss.
    ConstantWork,
    /// Only misses go to the fleet.
    Classic,
    /// Both, side by side.
    Both,
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
    /// How each run's fleet is provisioned once three eighths of the run have measured its
    /// steady load: HEADROOM (a number: the servers' lookup limits sum to HEADROOM times the fleet
    /// lookups this mode offered), `worst-case` (3 times what constant work offers, every
    /// cache call, in both modes: the capacity a classic fleet needs to survive, which it never
    /// uses), or `off` (no limit). Only the embedded fleet can be provisioned.
    #[arg(long, default_value = "3", value_parser = parse_provision)]
    provision: Provision,
    /// Retries of a failed lookup by the routers' request layer before the request fails.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// The wait before each retry.
    #[arg(long, value_enum, default_value = "exponential")]
    backoff: Backoff,
    /// Whether storage nodes that reject a stale route return the corrected route, which the
    /// router applies instead of asking the fleet: `on`, `off`, or `both` (the invalidation
    /// storm runs with and without, to compare; the other scenarios with).
    #[arg(long, value_enum, default_value = "both")]
    corrected_routes: CorrectedRoutes,
    #[command(flatten)]
    metrics: crate::metrics_listen::Flag,
}

/// `--provision`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Provision {
    /// No lookup limit.
    Off,
    /// Limits summing to this many times the mode's own steady fleet load.
    Headroom(f64),
    /// Limits summing to [`WORST_CASE_HEADROOM`] times what constant work sends, in both modes.
    WorstCase,
}

/// The headroom of `--provision worst-case`.
const WORST_CASE_HEADROOM: f64 = 3.0;

impl Provision {
    /// How the fleet is provisioned, `None` for not at all: the policy's name, its headroom,
    /// and whether the basis is the routers' cache calls (what constant work sends) rather
    /// than the fleet lookups this mode offered.
    fn rule(self) -> Option<(&'static str, f64, bool)> {
        match self {
            Provision::Off => None,
            Provision::Headroom(h) => Some(("headroom", h, false)),
            Provision::WorstCase => Some(("worst-case", WORST_CASE_HEADROOM, true)),
        }
    }
}

fn parse_provision(s: &str) -> Result<Provision, String> {
    match s {
        "off" => Ok(Provision::Off),
        "worst-case" => Ok(Provision::WorstCase),
        _ => match s.parse::<f64>() {
            Ok(h) if h.is_finite() && h > 0.0 => Ok(Provision::Headroom(h)),
            _ => Err(format!(
                "`{s}`: a positive number (the headroom), `worst-case` or `off`"
            )),
        },
    }
}

/// `--corrected-routes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CorrectedRoutes {
    On,
    Off,
    Both,
}

/// Runs every scenario in every mode, then writes and prints the report.
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
    ensure!(
        args.servers.is_empty() || args.provision == Provision::Off,
        "--provision sets the embedded servers' lookup limits; with --servers pass --provision off \
         (and give the servers --max-lookups-per-sec yourself)"
    );
    ensure!(args.retries <= 20, "--retries at most 20");
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
    let variants: Vec<(Scenario, bool)> = scenarios
        .iter()
        .flat_map(|&scenario| {
            let corrected: &[bool] = match args.corrected_routes {
                CorrectedRoutes::On => &[true],
                CorrectedRoutes::Off => &[false],
                CorrectedRoutes::Both if scenario == Scenario::InvalidationStorm => &[true, false],
                CorrectedRoutes::Both => &[true],
            };
            corrected.iter().map(move |&c| (scenario, c))
        })
        .collect();
    for &(scenario, corrected_routes) in &variants {
        let policy = Policy {
            retries: args.retries,
            backoff: args.backoff,
            corrected_routes,
        };
        for &mode in &modes {
            let bar = progress.add(ProgressBar::new((args.duration * 1000.0) as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>32} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!(
                "{}{} / {}",
                scenario.name(),
                if corrected_routes {
                    ""
                } else {
                    " (no corrections)"
                },
                mode_name(mode)
            ));
            let result = runtime
                .block_on(run_one(args, scenario, mode, policy, &bar))
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
            "provision": match args.provision {
                Provision::Off => serde_json::json!("off"),
                Provision::Headroom(h) => serde_json::json!(h),
                Provision::WorstCase => serde_json::json!("worst-case"),
            },
            "retries": args.retries, "backoff": args.backoff,
        }),
        runs,
    };
    crate::report::write(&out, &results)?;
    crate::report::print_table(&results);
    println!("results, plots and report.html in {}", out.display());
    Ok(())
}

/// When a run's load starts and ends, when its fleet is provisioned and when its trigger
/// fires.
#[derive(Clone, Copy)]
struct Schedule {
    started: Instant,
    end: Instant,
    duration: Duration,
    /// Since `started`: three eighths of the way, if the fleet is provisioned (a classic fleet's
    /// steady load comes in bursts, one per partition split: the mean needs the first two and
    /// a half seconds of a default run to settle).
    provision_at: Option<Duration>,
    /// Since `started`: halfway.
    trigger_at: Duration,
}

impl Schedule {
    /// `--duration` seconds of load from now.
    fn starting_now(seconds: f64, provision: Provision) -> Self {
        let duration = Duration::from_secs_f64(seconds);
        let started = Instant::now();
        Self {
            started,
            end: started + duration,
            duration,
            provision_at: provision.rule().map(|_| duration * 3 / 8),
            trigger_at: duration / 2,
        }
    }
}

/// One scenario in one mode, on a fleet of its own.
async fn run_one(
    args: &Args,
    scenario: Scenario,
    mode: Mode,
    policy: Policy,
    bar: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let mut fleet = Fleet::start(args).await?;
    let map = run_table(args, scenario, mode)?;
    let table: Arc<str> = map.name().as_str().into();
    fleet.seed(&map).await?;
    let authority = Arc::new(Authority::new(map));

    let starter = Routers::new(
        &fleet,
        &table,
        &authority,
        mode,
        &format!("{}/{}", scenario.name(), mode_name(mode)),
    );
    let warmed = starter
        .start_warm(&fleet, args.routers, args.warm_with)
        .await?;
    let schedule = Schedule::starting_now(args.duration, args.provision);
    let load = Load {
        routers: Arc::new(RwLock::new(warmed.routers)),
        meter: Arc::new(Mutex::new(Meter::new(Timeline {
            started: schedule.started,
            slot: Duration::from_millis(args.sample_ms),
            before_from: schedule.provision_at.unwrap_or_default(),
            trigger_at: schedule.trigger_at,
        }))),
        policy,
        authority: Arc::clone(&authority),
        table: Arc::clone(&table),
    };

    let requests = load.spawn(args, schedule.started, schedule.end);
    let churn = authority::spawn_churn(
        Arc::clone(&authority),
        Arc::clone(fleet.pusher()),
        Arc::clone(&table),
        args,
        schedule.end,
    );
    let sampled = Sampler {
        args,
        scenario,
        mode,
        schedule,
        load: &load,
        starter: &starter,
        bar,
    }
    .run(&mut fleet)
    .await?;
    requests.await.context("the load task failed")?;
    churn.await.context("the churn task failed")?;

    let routers: Vec<RouterCache> = load
        .routers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for r in &routers {
        r.shutdown();
    }
    let replication = fleet
        .replication(
            &table,
            authority.current().version().get(),
            args.anti_entropy,
        )
        .await;
    fleet.stop().await;

    let meter = load.meter.lock().unwrap_or_else(|p| p.into_inner());
    Ok(sampling::summarize(
        scenario,
        mode,
        policy,
        &sampled,
        &meter,
        Duration::from_millis(args.sample_ms),
        schedule,
        replication,
        WarmupCost {
            method: args.warm_with,
            seconds: warmed.seconds,
            fleet_lookups: warmed.fleet_lookups,
        },
    ))
}

/// The run's table: the synthetic map, renamed so that runs never see each other's versions.
fn run_table(args: &Args, scenario: Scenario, mode: Mode) -> anyhow::Result<TableMap> {
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
    TableMap::try_from(spec).context("renaming the table")
}
