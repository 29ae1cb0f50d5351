//! The fleet as the cache sees it: one connection per server, kept up in the background with
//! jittered exponential backoff, and the choice of server per request by power of two choices
//! on requests in flight.
//!
//! The backoff starts over only after a connection that stayed up for the longest backoff: a
//! server that closes connections as soon as they are made (one at its connection limit closes
//! them with `close_code::BUSY`) is tried again less and less often, up to the longest backoff,
//! rather than handshaking with every router every few milliseconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memds_client::{Client, Connector, PendingReply, TransportStats};
use memds_proto::wire::Request;
use tokio::sync::watch;

use crate::tasks::Tasks;

/// One server's connection state.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    client: Mutex<Option<Client>>,
    in_flight: AtomicUsize,
    up: AtomicBool,
    /// A malformed answer from the current connection was logged at warn (later ones are
    /// logged at debug: a lying server would otherwise log once per batch).
    warned: AtomicBool,
}

/// The servers of the fleet.
#[derive(Debug)]
pub(crate) struct Fleet {
    slots: Vec<Arc<Slot>>,
    seed: AtomicU64,
    connector: Connector,
    /// How many servers are connected, for those who wait for it.
    up: Arc<watch::Sender<usize>>,
}

/// A server picked for a request.
#[derive(Debug)]
pub(crate) struct Server {
    /// Its position in the fleet.
    pub(crate) index: usize,
    /// Its connection.
    pub(crate) client: Client,
    slot: Arc<Slot>,
}

impl Server {
    /// Counts a request in flight to this server until the guard is dropped (also when the
    /// task awaiting the answer is cancelled, as a hedge is once the first answer wins).
    pub(crate) fn begin(&self) -> InFlight {
        self.slot.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.slot))
    }

    /// Whether this is the first malformed answer refused from the server's current connection.
    pub(crate) fn first_refusal(&self) -> bool {
        !self.slot.warned.swap(true, Ordering::Relaxed)
    }
}

/// A request in flight to a server, counted for power of two choices while it lives.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Slot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Fleet {
    /// Starts a connection keeper per server.
    pub(crate) fn start(
        connector: Connector,
        addrs: &[SocketAddr],
        backoff_min: Duration,
        backoff_max: Duration,
        tasks: &Tasks,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let up = Arc::new(watch::Sender::new(0));
        let slots: Vec<Arc<Slot>> = addrs
            .iter()
            .map(|&addr| {
                Arc::new(Slot {
                    addr,
                    client: Mutex::new(None),
                    in_flight: AtomicUsize::new(0),
                    up: AtomicBool::new(false),
                    warned: AtomicBool::new(false),
                })
            })
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            tasks.spawn(keep_connected(
                Arc::clone(slot),
                Arc::clone(&up),
                connector.clone(),
                backoff_min,
                backoff_max.max(backoff_min),
                0x5EED ^ i as u64,
                shutdown.clone(),
            ));
        }
        Self {
            slots,
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            connector,
            up,
        }
    }

    /// How many servers are connected.
    pub(crate) fn up(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.up.load(Ordering::Relaxed))
            .count()
    }

    /// The number of servers connected, as it changes.
    pub(crate) fn watch_up(&self) -> watch::Receiver<usize> {
        self.up.subscribe()
    }

    /// Closes every connection.
    pub(crate) fn close(&self) {
        self.connector.close();
    }

    /// The transport counters of the connections open now, summed.
    pub(crate) fn transport_stats(&self) -> TransportStats {
        let mut total = TransportStats::default();
        for slot in &self.slots {
            if let Some(client) = &*slot.client.lock().unwrap_or_else(|e| e.into_inner()) {
                total += client.transport_stats();
            }
        }
        total
    }

    /// How many servers the fleet has, connected or not.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// A connected server not in `avoid` (positions in the fleet): of two random candidates,
    /// the one with fewer requests in flight. `None` when every connected server is avoided.
    pub(crate) fn pick(&self, avoid: &[usize]) -> Option<Server> {
        let candidates: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !avoid.contains(&i) && self.slots[i].up.load(Ordering::Relaxed))
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let r = self.next_random();
                let a = candidates[(r % n as u64) as usize];
                let mut b = candidates[((r >> 32) % n as u64) as usize];
                if b == a {
                    b = candidates[(candidates.iter().position(|&c| c == a).unwrap_or(0) + 1) % n];
                }
                let load = |i: usize| self.slots[i].in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
        };
        let slot = &self.slots[chosen];
        let client = slot
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(Server {
            index: chosen,
            client,
            slot: Arc::clone(slot),
        })
    }

    fn next_random(&self) -> u64 {
        // SplitMix64 over an atomic counter: cheap, lock-free, good enough to spread choices.
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The backoff after a connection that stayed up for `lived`: back to `min` if it lived at least
/// `max` (a server that went away after serving), else unchanged, so that a server closing every
/// connection at once (at its connection limit, `BUSY`) is tried again ever less often.
fn next_backoff(backoff: Duration, lived: Duration, min: Duration, max: Duration) -> Duration {
    if lived >= max { min } else { backoff }
}

/// Keeps one server connected: connect, wait for the connection to close, back off with jitter,
/// try again; until shutdown.
async fn keep_connected(
    slot: Arc<Slot>,
    up: Arc<watch::Sender<usize>>,
    connector: Connector,
    min: Duration,
    max: Duration,
    mut seed: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = min;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            a = tokio::time::timeout(max.max(Duration::from_secs(1)), connector.connect(slot.addr)) => a,
        };
        match attempt {
            Ok(Ok(client)) => {
                let connected = Instant::now();
                *slot.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                slot.warned.store(false, Ordering::Relaxed);
                slot.up.store(true, Ordering::Relaxed);
                up.send_modify(|n| *n += 1);
                tracing::debug!(server = %slot.addr, "connected");
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => {}
                    () = client.closed() => {}
                }
                slot.up.store(false, Ordering::Relaxed);
                up.send_modify(|n| *n -= 1);
                *slot.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::debug!(server = %slot.addr, "disconnected");
                backoff = next_backoff(backoff, connected.elapsed(), min, max);
            }
            Ok(Err(e)) => tracing::debug!(server = %slot.addr, error = %e, "connecting failed"),
            Err(_) => tracing::debug!(server = %slot.addr, "connecting timed out"),
        }
        // Jitter: a random delay between half the backoff and the whole of it.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = 0.5 + (seed >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

impl Server {
    /// Sends a batch lookup that accepts no table version older than `min_version` (the newest
    /// the cache has seen); `None` if the connection is gone. Count it in flight with
    /// [`Server::begin`] for as long as its answer is awaited.
    pub(crate) async fn send(
        &self,
        table: &str,
        hashes: Vec<u64>,
        min_version: Option<u64>,
    ) -> Option<PendingReply> {
        let request = if hashes.len() == 1 {
            Request::Lookup {
                table: table.into(),
                hash: hashes[0],
                min_version,
            }
        } else {
            Request::BatchLookup {
                table: table.into(),
                hashes,
                min_version,
            }
        };
        self.client.send(&request).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_over_only_after_a_connection_that_lasted() {
        let (min, max) = (Duration::from_millis(20), Duration::from_secs(2));
        // Closed at once (a server at its connection limit): the backoff keeps growing.
        let mut backoff = min;
        for _ in 0..10 {
            backoff = next_backoff(backoff, Duration::from_millis(3), min, max);
            backoff = (backoff * 2).min(max);
        }
        assert_eq!(backoff, max);
        // Up for a while, then lost: reconnect quickly.
        assert_eq!(next_backoff(max, Duration::from_secs(5), min, max), min);
        assert_eq!(next_backoff(max, max, min, max), min);
    }
}
