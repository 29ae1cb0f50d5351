//! What a run produces, as `results.json` holds it: the types the experiment fills in and
//! `report` reads (report depends on this module only, not on the experiment that runs).

use std::collections::HashMap;

use router_cache::Mode;
use serde::Serialize;

pub(crate) use super::load::Policy;

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
    /// Latency of the requests that succeeded, before and after the trigger.
    pub(crate) latency_before_ms: Percentiles,
    pub(crate) latency_after_ms: Percentiles,
    /// Seconds from the trigger until fleet load was back within 1.5x of steady.
    pub(crate) time_to_recover_s: Option<f64>,
    pub(crate) trigger_s: f64,
    /// How the routers' request layer retried, and whether storage nodes returned corrected
    /// routes.
    pub(crate) policy: Policy,
    /// How the fleet was provisioned, if it was (`--provision`).
    pub(crate) provisioning: Option<Provisioning>,
    /// The fleet's lookup capacity once provisioned: the servers' limits summed.
    pub(crate) provisioned_lookups_per_s: Option<f64>,
    /// Successful requests / offered requests, before the trigger (from provisioning on).
    pub(crate) availability_before: f64,
    /// The same after the trigger.
    pub(crate) availability_after: f64,
    /// Lookups offered to the fleet (served and shed, by the servers' counters) per second
    /// after the trigger.
    pub(crate) offered_lookups_per_s: f64,
    /// Of those, shed per second.
    pub(crate) shed_lookups_per_s: f64,
    /// Seconds from the trigger until availability was back to its level before the trigger
    /// (or 99.9%) for the rest of the run: 0 if it never fell, `None` if it was not back.
    pub(crate) availability_recover_s: Option<f64>,
    /// Everything measured per phase.
    pub(crate) phases: Phases,
    pub(crate) samples: Vec<Sample>,
    /// Availability over time: requests by scheduled time, one slot per sampling interval.
    pub(crate) availability: Vec<AvailabilitySlot>,
    pub(crate) replication: Replication,
    /// How the routers were warmed, and what it cost the fleet.
    pub(crate) warmup: Warmup,
}

/// How a run's fleet was provisioned.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Provisioning {
    /// `headroom` (HEADROOM times this mode's steady fleet load) or `worst-case` (HEADROOM
    /// times what constant work sends: every cache call).
    pub(crate) policy: &'static str,
    pub(crate) headroom: f64,
    /// Seconds into the load when the limits were set.
    pub(crate) at_s: f64,
    /// The steady load measured before it: fleet lookups offered per second (`headroom`), or
    /// the routers' cache calls per second (`worst-case`).
    pub(crate) basis_per_s: f64,
    /// Each server's `--max-lookups-per-sec`.
    pub(crate) per_server: u64,
    /// Servers provisioned.
    pub(crate) servers: usize,
}

/// What one phase of a run (before or after the trigger) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PhaseResult {
    pub(crate) seconds: f64,
    /// Requests offered (scheduled) in the phase.
    pub(crate) requests: u64,
    /// Requests that succeeded.
    pub(crate) ok: u64,
    pub(crate) availability: f64,
    pub(crate) error_rate: f64,
    /// Latency of the requests that succeeded.
    pub(crate) latency_ms: Percentiles,
    /// Successful requests per second.
    pub(crate) goodput_per_s: f64,
    /// Requests offered per second.
    pub(crate) offered_requests_per_s: f64,
    /// Fleet lookups offered, served and shed per second (servers' counters).
    pub(crate) fleet_offered_per_s: f64,
    pub(crate) fleet_served_per_s: f64,
    pub(crate) fleet_shed_per_s: f64,
    /// The fleet's capacity (the servers' limits summed), if provisioned.
    pub(crate) capacity_per_s: Option<f64>,
    /// Cache lookups that failed, retries of them, storage nodes' rejections of a stale route,
    /// and corrected routes applied.
    pub(crate) lookup_errors: u64,
    pub(crate) retries: u64,
    pub(crate) stale_rejections: u64,
    pub(crate) corrections: u64,
    pub(crate) hit_rate: f64,
}

/// The phases of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Phases {
    /// From provisioning (or the start) to the trigger.
    pub(crate) before: PhaseResult,
    /// From the trigger to the end.
    pub(crate) after: PhaseResult,
}

/// Requests scheduled in one sampling interval, and how many succeeded.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AvailabilitySlot {
    /// Seconds since the load started, at the end of the slot.
    pub(crate) t: f64,
    pub(crate) offered: u64,
    pub(crate) ok: u64,
    pub(crate) availability: f64,
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
    /// Lookups offered to the fleet per second in the interval: served and shed (servers' own
    /// counters).
    pub(crate) fleet_lookups_per_s: f64,
    /// Of those, served.
    pub(crate) served_lookups_per_s: f64,
    /// Of those, shed with `overloaded`.
    pub(crate) shed_lookups_per_s: f64,
    /// The fleet's capacity at the end of the interval (the running servers' limits summed),
    /// once provisioned.
    pub(crate) capacity_lookups_per_s: Option<f64>,
    /// Requests completed per second in the interval.
    pub(crate) requests_per_s: f64,
    /// Requests that completed successfully per second in the interval.
    pub(crate) goodput_per_s: f64,
    /// Cache calls per second in the interval (what constant work sends the fleet).
    pub(crate) calls_per_s: f64,
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

/// One group of runs the report shows together: a scenario, with or without storage nodes'
/// corrected routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub(crate) scenario: Scenario,
    pub(crate) corrected_routes: bool,
}

impl Variant {
    /// The name in tables and file names: the scenario's, with `-uncorrected` when storage
    /// nodes returned no corrected route.
    pub(crate) fn name(self) -> String {
        if self.corrected_routes {
            self.scenario.name().to_owned()
        } else {
            format!("{}-uncorrected", self.scenario.name())
        }
    }
}

impl RunResult {
    pub(crate) fn variant(&self) -> Variant {
        Variant {
            scenario: self.scenario,
            corrected_routes: self.policy.corrected_routes,
        }
    }
}

/// Groups runs by variant, in order.
pub(crate) fn by_variant(runs: &[RunResult]) -> Vec<(Variant, Vec<&RunResult>)> {
    let mut out: Vec<(Variant, Vec<&RunResult>)> = Vec::new();
    let mut index: HashMap<Variant, usize> = HashMap::new();
    for r in runs {
        let i = *index.entry(r.variant()).or_insert_with(|| {
            out.push((r.variant(), Vec::new()));
            out.len() - 1
        });
        out[i].1.push(r);
    }
    out
}
