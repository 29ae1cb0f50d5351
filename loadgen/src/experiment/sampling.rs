//! Sampling while the load runs (fleet load from the servers' own lookup counters every
//! `--sample-ms`, and the router-side counters of the interval), the trigger halfway, and the
//! summary of a run's samples into its [`RunResult`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use router_cache::Mode;

use super::fleet::Fleet;
use super::load::{Load, Meter, Phase};
use super::results::{
    Percentiles, Replication, RunResult, Sample, Scenario, WarmWith, Warmup, mode_name,
};
use super::routers::Routers;
use super::{Args, Schedule, triggers};

/// What the sampling loop reads and, at the trigger, acts on.
pub(super) struct Sampler<'a> {
    pub(super) args: &'a Args,
    pub(super) scenario: Scenario,
    pub(super) schedule: Schedule,
    pub(super) load: &'a Load,
    pub(super) starter: &'a Routers,
    pub(super) bar: &'a ProgressBar,
}

impl Sampler<'_> {
    /// Samples until the load ends, firing the scenario's trigger halfway.
    pub(super) async fn run(&self, fleet: &mut Fleet) -> anyhow::Result<Vec<Sample>> {
        let Schedule {
            started,
            end,
            duration,
            trigger_at,
        } = self.schedule;
        let mut last = fleet.lookup_counts();
        let mut prev_total = fleet.lookups(&mut last).await;
        let mut prev_t = Instant::now();
        let mut samples = Vec::new();
        let mut fired = false;
        let interval = Duration::from_millis(self.args.sample_ms);
        while Instant::now() < end {
            tokio::time::sleep(interval.min(end.saturating_duration_since(Instant::now()))).await;
            if !fired && started.elapsed() >= trigger_at {
                fired = true;
                self.load.triggered.store(true, Ordering::Relaxed);
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
            self.bar
                .set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
            self.bar.set_message(format!(
                "fleet {:.0} lookups/s",
                samples.last().map_or(0.0, |s| s.fleet_lookups_per_s)
            ));
        }
        Ok(samples)
    }
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
pub(super) fn summarize(
    scenario: Scenario,
    mode: Mode,
    samples: &[Sample],
    m: &Meter,
    trigger_s: f64,
    replication: Replication,
    warmup: WarmupCost,
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
        warmup: warmup.against(steady_mean),
    }
}
