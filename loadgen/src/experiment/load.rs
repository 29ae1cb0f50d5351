//! The open-loop load: requests scheduled at fixed times (`--rate` per second over all routers,
//! each to a random router, keys drawn from a Zipf law), so a slow fleet cannot slow the offered
//! load; latency is measured from the scheduled time. Each request plays a router's whole part
//! ([`request`]), and the [`Meter`] counts it in the current sampling interval and in its phase
//! (before or after the trigger).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memds_proto::key_hash;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use router_cache::{Invalidate, RouterCache};

use super::Args;
use super::authority::Authority;
use crate::histogram;

/// What the load task shares with the rest of the run.
pub(super) struct Load {
    /// The routers requests go to; a scale-out adds to them.
    pub(super) routers: Arc<RwLock<Vec<RouterCache>>>,
    pub(super) meter: Arc<Mutex<Meter>>,
    /// Set when the trigger fires: later requests count in the `after` phase.
    pub(super) triggered: Arc<AtomicBool>,
    pub(super) authority: Arc<Authority>,
    pub(super) table: Arc<str>,
}

impl Load {
    /// Sends the load from `started` until `end`; the task ends once every request has.
    pub(super) fn spawn(
        &self,
        args: &Args,
        started: Instant,
        end: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let (routers, meter, triggered, authority, table) = (
            Arc::clone(&self.routers),
            Arc::clone(&self.meter),
            Arc::clone(&self.triggered),
            Arc::clone(&self.authority),
            Arc::clone(&self.table),
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
                    m.record(&o, triggered.load(Ordering::Relaxed));
                });
                while inflight.try_join_next().is_some() {}
                i += 1;
            }
            while inflight.join_next().await.is_some() {}
        })
    }
}

/// Router-side counters of the current interval and of the phases.
#[derive(Default)]
pub(super) struct Meter {
    pub(super) interval: Interval,
    pub(super) before: Phase,
    pub(super) after: Phase,
}

impl Meter {
    /// Counts one request in the current interval and in its phase.
    fn record(&mut self, o: &Outcome, after_trigger: bool) {
        self.interval.latency.saturating_record(o.latency_us.max(1));
        self.interval.requests += 1;
        self.interval.calls += o.calls;
        self.interval.hits += o.hits;
        let phase = if after_trigger {
            &mut self.after
        } else {
            &mut self.before
        };
        phase.latency.saturating_record(o.latency_us.max(1));
        phase.requests += 1;
        phase.calls += o.calls;
        phase.hits += o.hits;
        phase.stale += o.stale;
        phase.errors += u64::from(!o.ok);
    }
}

/// The counters of one sampling interval.
pub(super) struct Interval {
    pub(super) latency: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) hits: u64,
    pub(super) calls: u64,
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

/// The counters of the phase before the trigger, or after it.
pub(super) struct Phase {
    pub(super) latency: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) calls: u64,
    pub(super) hits: u64,
    pub(super) errors: u64,
    pub(super) stale: u64,
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

/// How one request went.
struct Outcome {
    latency_us: u64,
    calls: u64,
    hits: u64,
    stale: u64,
    ok: bool,
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
