//! Lookup admission control: a per-server limit on lookups per second, shared fairly between
//! connections.
//!
//! One token bucket holds the server's capacity: it refills at `rate` tokens a second up to a
//! burst of a tenth of a second's worth. Every connection that looks up also has a bucket of
//! its own refilled at its fair share, `rate / n` for `n` such connections. A lookup costs one
//! token per key (a batch of 100 hashes costs 100; a range scan one per route it may return).
//!
//! - A connection within its share is always admitted: its cost is taken from its own bucket
//!   and from the server's, which may go into debt (bounded by one burst).
//! - A connection past its share borrows what others leave unused: it is admitted only while
//!   the server's bucket holds tokens.
//! - Otherwise the lookup is shed with the typed `overloaded` error, which costs the server a
//!   decode and a small answer.
//!
//! So a client flooding the server takes at most the capacity others do not use, and a client
//! using no more than its share is never shed by someone else's flood. The sum of the shares is
//! the rate, so admitted lookups stay within about `rate` a second plus one burst.
//!
//! Only lookups count. Writes, stats, summaries and everything a peer sends (anti-entropy
//! pulls, forwarded writes) are never shed here, so the fleet can always be repaired and
//! written to under a lookup flood.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Seconds of capacity the server's bucket holds when full.
const BURST_SECONDS: f64 = 0.1;

/// The server's lookup limit. Its rate can be changed while the server runs
/// ([`LookupLimit::set`], what `RunningServer::set_max_lookups_per_sec` calls); a rate of 0
/// means no limit, and then admitting a lookup is one atomic load.
#[derive(Debug)]
pub struct LookupLimit {
    /// Lookups a second; 0: no limit.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    connections: AtomicUsize,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, cap: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.at = now;
    }
}

/// The burst of a rate: a tenth of a second's worth, at least one lookup.
fn burst(rate: f64) -> f64 {
    (rate * BURST_SECONDS).max(1.0)
}

impl LookupLimit {
    /// A limit of `per_sec` lookups a second.
    pub fn new(per_sec: u64) -> Arc<Self> {
        let limit = Self::unlimited();
        limit.set(Some(per_sec));
        limit
    }

    /// No limit until [`LookupLimit::set`] gives one.
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self {
            rate: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
            connections: AtomicUsize::new(0),
        })
    }

    /// Sets the rate (`None`: no limit). The server's bucket starts full at the new rate;
    /// connections' shares follow at their next lookup.
    pub fn set(&self, per_sec: Option<u64>) {
        let rate = per_sec.map_or(0, |r| r.max(1));
        let mut bucket = lock(&self.bucket);
        *bucket = Bucket {
            tokens: burst(rate as f64),
            at: Instant::now(),
        };
        self.rate.store(rate, Ordering::Release);
    }

    /// The configured rate, `None` for no limit.
    pub fn per_sec(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Acquire)).filter(|&r| r > 0)
    }

    /// A connection's share; it counts towards `n` until dropped.
    pub fn connection(self: &Arc<Self>) -> Share {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Share {
            limit: Arc::clone(self),
            // A new connection starts with its share's burst (the first refill caps it): its
            // first lookups must not depend on what a flood left in the server's bucket.
            bucket: Mutex::new(Bucket {
                tokens: f64::INFINITY,
                at: Instant::now(),
            }),
        }
    }
}

/// One connection's fair share of a [`LookupLimit`], shared by its streams.
#[derive(Debug)]
pub struct Share {
    limit: Arc<LookupLimit>,
    bucket: Mutex<Bucket>,
}

impl Share {
    /// Whether the server has a limit now: without one, nothing is shed and the cost of a
    /// lookup need not be worked out.
    pub fn limited(&self) -> bool {
        self.limit.per_sec().is_some()
    }

    /// Admits a lookup costing `cost` tokens now, or refuses it (shed).
    pub fn admit(&self, cost: u64) -> bool {
        self.admit_at(cost, Instant::now())
    }

    /// [`Self::admit`] at a given time (tests drive the clock).
    pub fn admit_at(&self, cost: u64, now: Instant) -> bool {
        let limit = &*self.limit;
        let Some(rate) = limit.per_sec() else {
            return true;
        };
        let rate = rate as f64;
        let cost = cost.max(1) as f64;
        let n = limit.connections.load(Ordering::Relaxed).max(1) as f64;
        let share_rate = rate / n;
        // A share may bank a tenth of a second, and at least one request of the size asked, so
        // that a batch larger than a small share's burst is still admitted at the share's rate.
        let share_cap = (share_rate * BURST_SECONDS).max(cost);
        let mut own = lock(&self.bucket);
        own.refill(share_rate, share_cap, now);
        let mut server = lock(&limit.bucket);
        let server_burst = burst(rate);
        server.refill(rate, server_burst, now);
        if own.tokens >= cost {
            own.tokens -= cost;
            server.tokens = (server.tokens - cost).max(-server_burst);
            true
        } else if server.tokens >= cost {
            server.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Locks a bucket; a bucket is two numbers always left consistent, so a panic elsewhere while
/// it was held does not make it unusable.
fn lock(bucket: &Mutex<Bucket>) -> MutexGuard<'_, Bucket> {
    bucket
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Share {
    fn drop(&mut self) {
        self.limit.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Offers `per_tick` lookups from each connection every millisecond for `secs` seconds and
    /// returns how many each had admitted.
    fn run(limit: &Arc<LookupLimit>, offered_per_ms: &[u64], secs: u64) -> Vec<u64> {
        let shares: Vec<Share> = offered_per_ms.iter().map(|_| limit.connection()).collect();
        run_shares(&shares.iter().collect::<Vec<_>>(), offered_per_ms, secs)
    }

    #[test]
    fn a_flood_cannot_take_a_modest_clients_share() {
        // 10,000 a second; a flood offers 100,000 a second, a modest client 2,000 (under its
        // share of 5,000): the modest client gets everything it asks, the flood the rest.
        let limit = LookupLimit::new(10_000);
        let admitted = run(&limit, &[100, 2], 10);
        assert_eq!(admitted[1], 20_000, "the modest client was shed");
        let total = admitted[0] + admitted[1];
        assert!(
            (99_000..=101_500).contains(&total),
            "admitted {total} in 10 s at 10,000/s"
        );
    }

    #[test]
    fn alone_a_client_may_use_the_whole_rate_and_no_more() {
        let limit = LookupLimit::new(5_000);
        let admitted = run(&limit, &[50], 4);
        assert!(
            (19_500..=20_600).contains(&admitted[0]),
            "admitted {} in 4 s at 5,000/s",
            admitted[0]
        );
    }

    #[test]
    fn floods_split_the_capacity_and_a_batch_larger_than_a_share_still_passes() {
        let limit = LookupLimit::new(1_000);
        let admitted = run(&limit, &[20, 20], 10);
        for a in &admitted {
            assert!((4_000..=6_000).contains(a), "{admitted:?}");
        }
        // A share of 1,000/3 a second banks 33 tokens; a batch of 200 still gets through at
        // the share's pace.
        let limit = LookupLimit::new(1_000);
        let a = limit.connection();
        let _b = limit.connection();
        let _c = limit.connection();
        let start = Instant::now();
        let mut passed = 0;
        for tenth in 0..100 {
            if a.admit_at(200, start + Duration::from_millis(tenth * 100)) {
                passed += 1;
            }
        }
        // 10 s at a share of ~333/s, or the idle server's spare capacity: at least 16 batches.
        assert!(passed >= 16, "{passed} batches of 200 in 10 s");
    }

    #[test]
    fn a_new_connection_is_served_at_once_while_a_flood_empties_the_server_bucket() {
        let limit = LookupLimit::new(10_000);
        let flood = limit.connection();
        let start = Instant::now();
        // The flood drains the server's bucket and its own share.
        for _ in 0..100_000 {
            flood.admit_at(1, start);
        }
        assert!(!flood.admit_at(1, start), "the flood is past everything");
        let newcomer = limit.connection();
        for i in 0..10 {
            assert!(
                newcomer.admit_at(1, start),
                "lookup {i} of a new connection was shed"
            );
        }
    }

    #[test]
    fn the_rate_can_change_while_connections_are_open() {
        let limit = LookupLimit::unlimited();
        let a = limit.connection();
        // No limit: everything passes.
        assert_eq!(run_shares(&[&a], &[100], 1), vec![100_000]);
        limit.set(Some(2_000));
        assert_eq!(limit.per_sec(), Some(2_000));
        let admitted = run_shares(&[&a], &[100], 4)[0];
        assert!(
            (7_800..=8_400).contains(&admitted),
            "admitted {admitted} in 4 s at 2,000/s"
        );
        limit.set(None);
        assert_eq!(limit.per_sec(), None);
        assert_eq!(run_shares(&[&a], &[100], 1), vec![100_000]);
    }

    /// [`run`] on shares already open; the clock starts now.
    fn run_shares(shares: &[&Share], offered_per_ms: &[u64], secs: u64) -> Vec<u64> {
        let mut admitted = vec![0u64; shares.len()];
        let start = Instant::now();
        for ms in 0..secs * 1000 {
            let now = start + Duration::from_millis(ms);
            for (i, share) in shares.iter().enumerate() {
                for _ in 0..offered_per_ms[i] {
                    if share.admit_at(1, now) {
                        admitted[i] += 1;
                    }
                }
            }
        }
        admitted
    }

    #[test]
    fn a_closed_connection_gives_its_share_back() {
        let limit = LookupLimit::new(1_000);
        let a = limit.connection();
        let b = limit.connection();
        assert_eq!(limit.connections.load(Ordering::Relaxed), 2);
        drop(b);
        assert_eq!(limit.connections.load(Ordering::Relaxed), 1);
        assert!(a.admit(1));
    }
}
