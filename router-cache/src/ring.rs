//! A bounded single-producer, single-consumer ring of refresh lookups: what one calling thread
//! has queued for the fleet.
//!
//! Every ConstantWork hit queues one lookup, so the enqueue is on the hit path. A shared queue
//! costs each hit a compare-and-swap on a cache line every router thread writes; this ring
//! costs a plain store of the slot and a release store of the producer's position, on lines
//! only the owning thread writes. The producer reads the consumer's position only when the
//! ring looks full, through its own copy. No IO and no clock; the dispatcher is the one
//! consumer. All state is atomics, so a misuse (two producers) could lose or repeat lookups but
//! never read torn memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// One queued refresh: a table (by its id in the cache) and a hash.
#[derive(Debug, Default)]
struct Slot {
    table: AtomicU32,
    hash: AtomicU64,
}

/// A bounded ring of `(table, hash)` refresh lookups with one producer and one consumer.
#[derive(Debug)]
pub(crate) struct RefreshRing {
    slots: Box<[Slot]>,
    mask: u64,
    /// The next position the producer writes; written by the producer only.
    tail: CachePadded<AtomicU64>,
    /// The next position the consumer reads; written by the consumer only.
    head: CachePadded<AtomicU64>,
    /// The producer's own copy of `head`, refreshed only when the ring looks full.
    seen_head: AtomicU64,
}

impl RefreshRing {
    /// A ring holding at least `capacity` lookups (rounded up to a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            mask: capacity as u64 - 1,
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            seen_head: AtomicU64::new(0),
        }
    }

    /// How many lookups the ring holds at most.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Queues a lookup; `false` if the ring is full (nothing changes). Producer only.
    #[inline]
    pub(crate) fn push(&self, table: u32, hash: u64) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail - self.seen_head.load(Ordering::Relaxed) > self.mask {
            // Acquire: the consumer read the slots it released before it moved `head`.
            let head = self.head.load(Ordering::Acquire);
            self.seen_head.store(head, Ordering::Relaxed);
            if tail - head > self.mask {
                return false;
            }
        }
        let slot = &self.slots[(tail & self.mask) as usize];
        slot.table.store(table, Ordering::Relaxed);
        slot.hash.store(hash, Ordering::Relaxed);
        // Release: the slot's contents are visible to a consumer that sees the new tail.
        self.tail.store(tail + 1, Ordering::Release);
        true
    }

    /// Takes up to `max` queued lookups, oldest first, handing each to `take`. Consumer only.
    pub(crate) fn pop_into(&self, max: usize, mut take: impl FnMut(u32, u64)) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let n = (tail - head).min(max as u64);
        for pos in head..head + n {
            let slot = &self.slots[(pos & self.mask) as usize];
            take(
                slot.table.load(Ordering::Relaxed),
                slot.hash.load(Ordering::Relaxed),
            );
        }
        // Release: the slots were read before the producer may reuse them.
        self.head.store(head + n, Ordering::Release);
        n as usize
    }

    /// Whether nothing is queued (as seen by the consumer).
    pub(crate) fn is_empty(&self) -> bool {
        self.tail.load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn drain(r: &RefreshRing, max: usize) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        r.pop_into(max, |t, h| out.push((t, h)));
        out
    }

    #[test]
    fn holds_its_capacity_in_order_and_refuses_past_it() {
        let r = RefreshRing::new(3);
        assert_eq!(r.capacity(), 4, "rounded up to a power of two");
        assert!(r.is_empty());
        for i in 0..4 {
            assert!(r.push(i, u64::from(i) * 10));
        }
        assert!(!r.push(9, 90), "a full ring refuses");
        assert_eq!(drain(&r, 2), vec![(0, 0), (1, 10)]);
        assert!(r.push(4, 40), "room again after the consumer took some");
        assert!(r.push(5, 50));
        assert!(!r.push(6, 60));
        assert_eq!(drain(&r, 100), vec![(2, 20), (3, 30), (4, 40), (5, 50)]);
        assert!(r.is_empty());
        assert_eq!(drain(&r, 100), vec![]);
    }

    #[test]
    fn a_producer_and_a_consumer_on_two_threads_lose_and_repeat_nothing() {
        const N: u64 = 200_000;
        let r = Arc::new(RefreshRing::new(64));
        let producer = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut refused = 0u64;
                let mut next = 0u64;
                while next < N {
                    if r.push((next % 7) as u32, next) {
                        next += 1;
                    } else {
                        refused += 1;
                        std::thread::yield_now();
                    }
                }
                refused
            })
        };
        let mut expect = 0u64;
        while expect < N {
            let got = drain(&r, 17);
            if got.is_empty() {
                std::thread::yield_now();
            }
            for (t, h) in got {
                assert_eq!((t, h), ((expect % 7) as u32, expect), "out of order");
                expect += 1;
            }
        }
        producer.join().expect("the producer finished");
        assert!(r.is_empty());
    }
}
