//! Sampling while the load runs (fleet load from the servers' own lookup counters every
//! `--sample-ms`: served, shed and their sum, the offered load; the fleet's capacity; the
//! router-side counters of the interval), provisioning three eighths of the way (`--provision`), the
//! trigger halfway, and the summary of a run's samples into its [`RunResult`].

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use router_cache::Mode;

use super::fleet::{Fleet, Lookups};
use super::load::{Load, Meter, Phase, Policy};
use super::results::{
    AvailabilitySlot, Percentiles, PhaseResult, Phases, Provisioning, Replication, RunResult,
    Sample, Scenario, WarmWith, Warmup, mode_name,
};
use super::routers::Routers;
use super::{Args, Schedule, triggers};

/// Samples before this many seconds into the load (connections and the load settling) do not
/// count towards the steady load provisioning is based on.
const SETTLE_S: f64 = 0.75;

/// What the sampling loop reads and, at the trigger, acts on.
pub(super) struct Sampler<'a> {
    pub(super) args: &'a Args,
    pub(super) scenario: Scenario,
    pub(super) mode: Mode,
    pub(super) schedule: Schedule,
    pub(super) load: &'a Load,
    pub(super) starter: &'a Routers,
    pub(super) bar: &'a ProgressBar,
}

/// What the sampling loop saw.
pub(super) struct Sampled {
    pub(super) samples: Vec<Sample>,
    pub(super) provisioning: Option<Provisioning>,
}

impl Sampler<'_> {
    /// Samples until the load ends, provisioning the fleet three eighths of the way and firing the
    /// scenario's trigger halfway.
    pub(super) async fn run(&self, fleet: &mut Fleet) -> anyhow::Result<Sampled> {
        let Schedule {
            started,
            end,
            duration,
            provision_at,
            trigger_at,
        } = self.schedule;
        let mut last = fleet.lookup_counts();
        let mut prev_total = fleet.lookups(&mut last).await;
        let mut prev_t = Instant::now();
        let mut samples: Vec<Sample> = Vec::new();
        let mut provisioning: Option<Provisioning> = None;
        let mut fired = false;
        let interval = Duration::from_millis(self.args.sample_ms);
        while Instant::now() < end {
            tokio::time::sleep(interval.min(end.saturating_duration_since(Instant::now()))).await;
            if provisioning.is_none()
                && let Some(at) = provision_at
                && started.elapsed() >= at
                && let Some(rule) = self.args.provision.rule()
            {
                provisioning = Some(self.provision(fleet, &samples, rule, started.elapsed()));
            }
            if !fired && started.elapsed() >= trigger_at {
                fired = true;
                triggers::fire(
                    self.scenario,
                    self.args,
                    fleet,
                    &self.load.authority,
                    &self.load.routers,
                    self.starter,
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
            let iv = std::mem::take(
                &mut self
                    .load
                    .meter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .interval,
            );
            let counted: Lookups = total.since(prev_total);
            samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                fleet_lookups_per_s: counted.offered() as f64 / secs,
                served_lookups_per_s: counted.served as f64 / secs,
                shed_lookups_per_s: counted.shed as f64 / secs,
                capacity_lookups_per_s: provisioning
                    .as_ref()
                    .map(|p| (p.per_server * fleet.running_servers() as u64) as f64),
                requests_per_s: iv.requests as f64 / secs,
                goodput_per_s: iv.ok as f64 / secs,
                calls_per_s: iv.calls as f64 / secs,
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
            self.bar
                .set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
            self.bar.set_message(format!(
                "fleet {:.0} lookups/s offered, {:.0} shed",
                samples.last().map_or(0.0, |s| s.fleet_lookups_per_s),
                samples.last().map_or(0.0, |s| s.shed_lookups_per_s),
            ));
        }
        Ok(Sampled {
            samples,
            provisioning,
        })
    }

    /// Sets the servers' lookup limits from the steady load sampled so far (`--provision`).
    fn provision(
        &self,
        fleet: &Fleet,
        samples: &[Sample],
        (policy, headroom, basis_is_calls): (&'static str, f64, bool),
        at: Duration,
    ) -> Provisioning {
        let steady = samples.iter().filter(|s| s.t > SETTLE_S);
        let basis_per_s = mean(steady.map(|s| {
            if basis_is_calls {
                s.calls_per_s
            } else {
                s.fleet_lookups_per_s
            }
        }));
        let per_server = fleet.provision(headroom * basis_per_s);
        self.bar.println(format!(
            "{} / {}: provisioned at {:.1} s: {per_server} lookups/s per server ({headroom} x {basis_per_s:.0}/s)",
            self.scenario.name(),
            mode_name(self.mode),
            at.as_secs_f64()
        ));
        Provisioning {
            policy,
            headroom,
            at_s: at.as_secs_f64(),
            basis_per_s,
            per_server,
            servers: fleet.running_servers(),
        }
    }
}

/// The mean of some values, 0 for none.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// What warming the routers cost, as measured before the load.
pub(super) struct WarmupCost {
    pub(super) method: WarmWith,
    pub(super) seconds: f64,
    pub(super) fleet_lookups: u64,
}

impl WarmupCost {
    fn against(&self, steady_lookups_per_s: f64) -> Warmup {
        let per_s = self.fleet_lookups as f64 / self.seconds.max(1e-9);
        Warmup {
            method: self.method,
            seconds: self.seconds,
            fleet_lookups: self.fleet_lookups,
            fleet_lookups_per_s: per_s,
            versus_steady: per_s / steady_lookups_per_s.max(1e-9),
        }
    }
}

/// One run's result from its samples, its meter and what the fleet held at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn summarize(
    scenario: Scenario,
    mode: Mode,
    policy: Policy,
    sampled: &Sampled,
    m: &Meter,
    slot: Duration,
    schedule: Schedule,
    replication: Replication,
    warmup: WarmupCost,
) -> RunResult {
    let samples = &sampled.samples;
    let trigger_s = schedule.trigger_at.as_secs_f64();
    let before_from = schedule.provision_at.unwrap_or_default().as_secs_f64();
    let end_s = schedule.duration.as_secs_f64();
    // Steady state: the samples before the trigger, less the first second (connections and
    // the load settling).
    let steady_mean = mean(
        samples
            .iter()
            .filter(|s| s.t > 1.0 && s.t <= trigger_s)
            .map(|s| s.fleet_lookups_per_s),
    );
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
    let slot_s = slot.as_secs_f64();
    let availability: Vec<AvailabilitySlot> = m
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.offered > 0)
        .map(|(i, s)| AvailabilitySlot {
            t: (i + 1) as f64 * slot_s,
            offered: s.offered,
            ok: s.ok,
            availability: s.ok as f64 / s.offered as f64,
        })
        .collect();
    let phase = |p: &Phase, from: f64, to: f64| {
        let in_phase: Vec<&Sample> = samples.iter().filter(|s| s.t > from && s.t <= to).collect();
        let seconds = (to - from).max(1e-9);
        PhaseResult {
            seconds,
            requests: p.requests,
            ok: p.ok,
            availability: ratio(p.ok, p.requests),
            error_rate: 1.0 - ratio(p.ok, p.requests),
            latency_ms: percentiles(p),
            goodput_per_s: p.ok as f64 / seconds,
            offered_requests_per_s: p.requests as f64 / seconds,
            fleet_offered_per_s: mean(in_phase.iter().map(|s| s.fleet_lookups_per_s)),
            fleet_served_per_s: mean(in_phase.iter().map(|s| s.served_lookups_per_s)),
            fleet_shed_per_s: mean(in_phase.iter().map(|s| s.shed_lookups_per_s)),
            capacity_per_s: sampled
                .provisioning
                .is_some()
                .then(|| mean(in_phase.iter().filter_map(|s| s.capacity_lookups_per_s))),
            lookup_errors: p.lookup_errors,
            retries: p.retries,
            stale_rejections: p.stale,
            corrections: p.corrections,
            hit_rate: if p.calls > 0 {
                p.hits as f64 / p.calls as f64
            } else {
                0.0
            },
        }
    };
    let phases = Phases {
        before: phase(&m.before, before_from, trigger_s),
        after: phase(&m.after, trigger_s, end_s),
    };
    // Availability recovered: from the first slot after the trigger from which every slot is
    // back to the level before it (99.9% at most).
    let target = phases.before.availability.min(0.999);
    let after_slots: Vec<&AvailabilitySlot> = availability
        .iter()
        .filter(|s| s.t - slot_s >= trigger_s - 1e-9)
        .collect();
    let availability_recover_s = match after_slots.iter().rposition(|s| s.availability < target) {
        None => Some(0.0),
        Some(i) if i + 1 < after_slots.len() => {
            Some((after_slots[i + 1].t - slot_s - trigger_s).max(0.0))
        }
        Some(_) => None,
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
        hit_rate: phases.before.hit_rate,
        hit_rate_after: phases.after.hit_rate,
        requests: m.before.requests + m.after.requests,
        errors: (m.before.requests - m.before.ok) + (m.after.requests - m.after.ok),
        stale_rejections: m.before.stale + m.after.stale,
        latency_before_ms: percentiles(&m.before),
        latency_after_ms: percentiles(&m.after),
        time_to_recover_s: recover,
        trigger_s,
        policy,
        provisioned_lookups_per_s: sampled
            .provisioning
            .as_ref()
            .map(|p| (p.per_server * p.servers as u64) as f64),
        provisioning: sampled.provisioning.clone(),
        availability_before: phases.before.availability,
        availability_after: phases.after.availability,
        offered_lookups_per_s: phases.after.fleet_offered_per_s,
        shed_lookups_per_s: phases.after.fleet_shed_per_s,
        availability_recover_s,
        phases,
        samples: samples.to_vec(),
        availability,
        replication,
        warmup: warmup.against(steady_mean),
    }
}

/// `part / whole`, 1 for nothing offered (nothing failed).
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// Latency percentiles of a phase's successful requests, in milliseconds.
fn percentiles(p: &Phase) -> Percentiles {
    Percentiles {
        p50: p.latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99: p.latency.value_at_quantile(0.99) as f64 / 1000.0,
        p999: p.latency.value_at_quantile(0.999) as f64 / 1000.0,
    }
}
