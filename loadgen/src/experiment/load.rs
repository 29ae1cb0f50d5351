//! The open-loop load: requests scheduled at fixed times (`--rate` per second over all routers,
//! each to a random router, keys drawn from a Zipf law), so a slow fleet cannot slow the offered
//! load; latency is measured from the scheduled time. Each request plays a router's whole part
//! ([`request`]): ask the cache, retry a failed lookup as the request layer's [`Policy`] says,
//! send to the storage node, and on a rejection apply the corrected route it returns (or, without
//! corrected routes, invalidate and ask the fleet again). The [`Meter`] counts each request in the
//! current sampling interval, in its slot of the run (by scheduled time: availability over time)
//! and in its phase (by scheduled time: before the trigger, after it, or neither while the fleet
//! is being measured for provisioning).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memds_proto::Route;
use memds_proto::key_hash;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use router_cache::{Invalidate, RouterCache};
use serde::Serialize;

use super::Args;
use super::authority::Authority;
use crate::histogram;

/// What the load task shares with the rest of the run.
pub(super) struct Load {
    /// The routers requests go to; a scale-out adds to them.
    pub(super) routers: Arc<RwLock<Vec<RouterCache>>>,
    pub(super) meter: Arc<Mutex<Meter>>,
    /// How the request layer retries and what storage nodes answer.
    pub(super) policy: Policy,
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
        let (routers, meter, authority, table) = (
            Arc::clone(&self.routers),
            Arc::clone(&self.meter),
            Arc::clone(&self.authority),
            Arc::clone(&self.table),
        );
        let (rate, keys, zipf, seed) = (args.rate, args.keys, args.zipf, args.seed);
        let policy = self.policy;
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
                let (meter, authority, table) = (
                    Arc::clone(&meter),
                    Arc::clone(&authority),
                    Arc::clone(&table),
                );
                let jitter = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                inflight.spawn(async move {
                    let o = request(&router, &table, hash, &authority, &policy, at, jitter).await;
                    let mut m = meter.lock().unwrap_or_else(|p| p.into_inner());
                    m.record(&o, at);
                });
                while inflight.try_join_next().is_some() {}
                i += 1;
            }
            while inflight.join_next().await.is_some() {}
        })
    }
}

/// How a router's request layer handles a failed lookup and a storage node's rejection.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Policy {
    /// Retries of a lookup that failed (`--retries`): the request fails after `1 + retries`.
    pub(crate) retries: u32,
    /// The wait before each retry (`--backoff`).
    pub(crate) backoff: Backoff,
    /// Whether a storage node rejecting a stale route returns the corrected route with its
    /// error, which the router applies (`RouterCache::apply_route`) and sends with, instead of
    /// spending another fleet lookup.
    pub(crate) corrected_routes: bool,
}

/// The wait before a retry of a failed lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Backoff {
    /// Retry at once.
    None,
    /// 25 ms before the first retry, doubling each time up to a second, with jitter (a random
    /// wait between half of that and all of it).
    Exponential,
}

/// The wait before the first retry with exponential backoff.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// The longest wait before a retry.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Re-routes after a storage node's rejection, before the request fails.
const STALE_REROUTES: u32 = 2;

impl Backoff {
    /// The wait before retry number `retry` (1 for the first).
    fn delay(self, retry: u32, rng: &mut impl Rng) -> Option<Duration> {
        match self {
            Backoff::None => None,
            Backoff::Exponential => {
                let full = BACKOFF_BASE
                    .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
                    .min(BACKOFF_MAX);
                Some(full.mul_f64(rng.random_range(0.5..=1.0)))
            }
        }
    }
}

/// When a run's phases begin, as offsets from the start of its load.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeline {
    pub(super) started: Instant,
    /// Width of a sampling interval: availability over time is counted per slot of this width,
    /// by each request's scheduled time.
    pub(super) slot: Duration,
    /// Where the `before` phase begins: the moment the fleet was provisioned (0 without
    /// provisioning). Requests scheduled earlier measure the unprovisioned fleet and count in
    /// no phase.
    pub(super) before_from: Duration,
    /// The trigger: requests scheduled from then on count in the `after` phase.
    pub(super) trigger_at: Duration,
}

/// Router-side counters of the current interval, of every slot and of the phases.
pub(super) struct Meter {
    timeline: Timeline,
    pub(super) interval: Interval,
    /// Requests by scheduled time, one slot per sampling interval.
    pub(super) slots: Vec<Slot>,
    pub(super) before: Phase,
    pub(super) after: Phase,
}

/// Requests scheduled in one slot, and how many succeeded.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Slot {
    pub(super) offered: u64,
    pub(super) ok: u64,
}

impl Meter {
    pub(super) fn new(timeline: Timeline) -> Self {
        Self {
            timeline,
            interval: Interval::default(),
            slots: Vec::new(),
            before: Phase::default(),
            after: Phase::default(),
        }
    }

    /// Counts one request, scheduled at `scheduled`, in the current interval, its slot and its
    /// phase.
    fn record(&mut self, o: &Outcome, scheduled: Instant) {
        let since = scheduled.saturating_duration_since(self.timeline.started);
        self.interval.latency.saturating_record(o.latency_us.max(1));
        self.interval.requests += 1;
        self.interval.ok += u64::from(o.ok);
        self.interval.calls += o.calls;
        self.interval.hits += o.hits;
        let slot = (since.as_nanos() / self.timeline.slot.as_nanos().max(1)) as usize;
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        self.slots[slot].offered += 1;
        self.slots[slot].ok += u64::from(o.ok);
        let phase = if since >= self.timeline.trigger_at {
            &mut self.after
        } else if since >= self.timeline.before_from {
            &mut self.before
        } else {
            return;
        };
        if o.ok {
            phase.latency.saturating_record(o.latency_us.max(1));
        }
        phase.requests += 1;
        phase.ok += u64::from(o.ok);
        phase.calls += o.calls;
        phase.hits += o.hits;
        phase.stale += o.stale;
        phase.corrections += o.corrections;
        phase.lookup_errors += o.lookup_errors;
        phase.retries += o.retries;
    }
}

/// The counters of one sampling interval (by completion time).
pub(super) struct Interval {
    pub(super) latency: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) ok: u64,
    pub(super) hits: u64,
    pub(super) calls: u64,
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            latency: histogram::latency(),
            requests: 0,
            ok: 0,
            hits: 0,
            calls: 0,
        }
    }
}

/// The counters of the phase before the trigger, or after it (by scheduled time).
pub(super) struct Phase {
    /// Latency of the requests that succeeded.
    pub(super) latency: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) ok: u64,
    pub(super) calls: u64,
    pub(super) hits: u64,
    /// Storage nodes' rejections of a stale route.
    pub(super) stale: u64,
    /// Corrected routes applied.
    pub(super) corrections: u64,
    /// Cache lookups that failed (each retry's included).
    pub(super) lookup_errors: u64,
    /// Retries of failed lookups.
    pub(super) retries: u64,
}

impl Default for Phase {
    fn default() -> Self {
        Self {
            latency: histogram::latency(),
            requests: 0,
            ok: 0,
            calls: 0,
            hits: 0,
            stale: 0,
            corrections: 0,
            lookup_errors: 0,
            retries: 0,
        }
    }
}

/// How one request went.
#[derive(Default)]
struct Outcome {
    latency_us: u64,
    calls: u64,
    hits: u64,
    stale: u64,
    corrections: u64,
    lookup_errors: u64,
    retries: u64,
    ok: bool,
}

/// One request as a router's request layer handles it:
///
/// 1. Ask the cache for the route. A lookup that fails (the fleet shed it, or did not answer) is
///    retried after the policy's backoff, `retries` times; then the request fails: a storage
///    node cannot be asked without a route.
/// 2. Send to the storage node the route names. It accepts, or rejects a stale route: with
///    corrected routes it returns the current route, which the router applies to its cache and
///    sends with at once (no fleet lookup); without, the router invalidates the route and asks
///    the cache again (a fleet lookup). At most [`STALE_REROUTES`] rejections, then the request
///    fails.
async fn request(
    router: &RouterCache,
    table: &str,
    hash: u64,
    authority: &Authority,
    policy: &Policy,
    scheduled: Instant,
    jitter_seed: u64,
) -> Outcome {
    let mut o = Outcome::default();
    let mut rejections = 0u32;
    let mut failures = 0u32;
    'request: loop {
        let looked_up = router.route_hash_traced(table, hash).await;
        o.calls += 1;
        let mut route: Arc<Route> = match looked_up {
            Ok((route, hit)) => {
                o.hits += u64::from(hit);
                route
            }
            Err(_) => {
                o.lookup_errors += 1;
                if failures >= policy.retries {
                    break;
                }
                failures += 1;
                o.retries += 1;
                let mut rng = ChaCha8Rng::seed_from_u64(jitter_seed ^ u64::from(failures));
                if let Some(wait) = policy.backoff.delay(failures, &mut rng) {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
        };
        // The storage node's check: does it own this hash at this epoch?
        loop {
            let Err(corrected) = authority.check(hash, &route) else {
                o.ok = true;
                break 'request;
            };
            o.stale += 1;
            if rejections >= STALE_REROUTES {
                break 'request;
            }
            rejections += 1;
            if policy.corrected_routes {
                o.corrections += 1;
                router.apply_route(corrected.clone());
                route = Arc::new(corrected);
                continue;
            }
            router.invalidate(
                table,
                Invalidate::Partition(route.partition.get()),
                route.epoch.get(),
            );
            continue 'request;
        }
    }
    o.latency_us = scheduled.elapsed().as_micros() as u64;
    o
}
