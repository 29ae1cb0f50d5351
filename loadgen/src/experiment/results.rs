//! What a run produces, as `results.json` holds it: the types the experiment fills in and
//! `report` reads (report depends on this module only, not on the experiment that runs).

use std::collections::HashMap;

use router_cache::Mode;
use serde::Serialize;

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

/// The name of a caching mode in results and labels.
pub(super) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::ConstantWork => "constant-work",
        Mode::Classic { .. } => "classic",
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
