//! The HTTP listener that serves `/metrics`, `/ready` and `/health`, hardened against clients
//! that open connections and hold them.
//!
//! # Limits
//!
//! - **A cap on open connections**, [`MAX_CONNECTIONS`]. When a connection arrives at the cap,
//!   an open one is dropped to make room for it: of the source address that holds the most
//!   connections (IPv4 address, or IPv6 /64), the one that has waited longest for a request
//!   (since its accept or, once it has been answered, its last response). The accept loop waits
//!   for that socket to close before it takes the new one (and closes the new one if it has not
//!   closed within a second), so the listener never holds more than [`MAX_CONNECTIONS`] + 1
//!   descriptors. Closing the *new* connection instead would hand the
//!   listener to whoever opens [`MAX_CONNECTIONS`] idle sockets first: every Prometheus scrape
//!   would be refused for as long as the attacker renews them. With eviction, idle sockets push
//!   out one another: a scraper holds one connection and sends its request at once, so it is
//!   not the victim while an attacker holds several connections from one address, however fast
//!   the attacker reconnects; attackers spread over [`MAX_CONNECTIONS`] addresses or more get
//!   the scrape dropped only if they open [`MAX_CONNECTIONS`] connections within the scrape's
//!   one round trip.
//! - **A header read timeout**, [`HEADER_READ_TIMEOUT`] (hyper's `header_read_timeout`, driven
//!   by [`TokioTimer`]): a request's head must arrive whole within that time of the connection's
//!   start or of the previous response, so a slowloris trickling a header byte by byte holds its
//!   slot no longer, and a keep-alive connection idle that long is closed.
//! - **A deadline per connection**, [`CONNECTION_DEADLINE`]: then the connection is shut down
//!   gracefully (a response in flight is finished, keep-alive is off) and dropped
//!   [`SHUTDOWN_GRACE`] later if it has not closed: a client that keeps sending requests, or
//!   stops reading its response, cannot keep a slot either.
//! - **Accept errors do not spin.** An error that concerns one connection (aborted or reset
//!   before it was accepted) is counted and skipped; any other (descriptors exhausted: `EMFILE`,
//!   `ENFILE`; `ENOBUFS`, `ENOMEM`) would recur at once, as the pending connection stays queued,
//!   so the loop pauses [`ACCEPT_BACKOFF_MIN`], doubling up to [`ACCEPT_BACKOFF_MAX`] while the
//!   errors last, with one warning per pause.
//!
//! # Metrics
//!
//! - `memds_http_accept_errors_total`: failed accepts, of either kind.
//! - `memds_http_connections_refused_total{reason}`: connections the server closed, `limit` when
//!   closed or dropped because of the cap, `timeout` when one sent no complete request within
//!   [`HEADER_READ_TIMEOUT`] of its start, or had to be dropped after its deadline and grace. A
//!   keep-alive connection closed after answering a request, for idleness or at its deadline,
//!   is not counted.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::metrics::Counter;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use crate::fleet::Readiness;
use crate::metrics::{self, HttpRefusal};

/// Connections the listener keeps open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head, counted from its accept or from
/// its previous response (so also how long a keep-alive connection may stay idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay open in all.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How long a connection being shut down (at its deadline, or as the server stops) has to
/// finish the response in flight before it is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// The first pause after an accept error that is not about one connection.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause after accept errors.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The largest buffer of a connection, so the largest request head, in bytes (a larger head
/// is answered 431). A scrape's request is a few hundred bytes; hyper's minimum is 8 KiB.
pub const MAX_BUF_BYTES: usize = 16 * 1024;
/// How long the accept loop waits for an evicted connection to close before it gives up and
/// closes the new one instead.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Serves `/metrics`, `/ready` (200 once the server has caught up with its peers, else 503
/// with the reason on one line) and `/health` (200 while the process serves) on `listener`
/// until `shutdown` resolves, within the limits of the [module documentation](self). Open
/// connections are then given [`SHUTDOWN_GRACE`] to finish their response.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()>,
) {
    // Installs the recorder (and its descriptions) before the series below are registered.
    metrics::handle();
    let counters = HttpCounters::register();
    let slots = Arc::new(Slots::default());
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_connection_error(&e) => {
                counters.accept_errors.increment(1);
                tracing::debug!(error = %e, "a metrics connection failed before it was accepted");
                continue;
            }
            Err(e) => {
                counters.accept_errors.increment(1);
                tracing::warn!(
                    error = %e,
                    pause_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "accepting a metrics connection failed; pausing the listener"
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let admitted = tokio::select! {
            () = &mut shutdown => break,
            admitted = make_room(&slots, &counters) => admitted,
        };
        if !admitted {
            counters.refused_limit.increment(1);
            tracing::debug!("closing a new metrics connection: every slot is busy");
            drop(stream);
            continue;
        }
        let (registration, evicted) = Slots::open(&slots, peer);
        tokio::spawn(connection(
            stream,
            Arc::clone(&readiness),
            registration,
            evicted,
            counters.clone(),
        ));
    }
    // Dropping every eviction sender tells the open connections to wind down.
    slots.close_all();
}

/// The listener's counters, registered once.
#[derive(Clone)]
struct HttpCounters {
    accept_errors: Counter,
    refused_limit: Counter,
    refused_timeout: Counter,
}

impl HttpCounters {
    fn register() -> Self {
        let [refused_limit, refused_timeout] =
            HttpRefusal::ALL.map(metrics::http_connections_refused);
        let counters = Self {
            accept_errors: metrics::http_accept_errors(),
            refused_limit,
            refused_timeout,
        };
        // Every series exists from the start, at zero, so rates and alerts over them read 0.
        counters.accept_errors.increment(0);
        counters.refused_limit.increment(0);
        counters.refused_timeout.increment(0);
        counters
    }
}

/// Whether an accept error concerns only the connection it would have returned (which it
/// consumed), so that accepting again at once cannot spin.
fn is_connection_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// Makes room for one more connection: true if there is (evicting one, see
/// [`Slots::evict`], and waiting for it to close, when at the cap).
async fn make_room(slots: &Slots, counters: &HttpCounters) -> bool {
    if slots.len() < MAX_CONNECTIONS {
        return true;
    }
    if !slots.evict() {
        return false;
    }
    counters.refused_limit.increment(1);
    let wait = tokio::time::sleep(EVICTION_WAIT);
    tokio::pin!(wait);
    while slots.len() >= MAX_CONNECTIONS {
        tokio::select! {
            () = slots.released.notified() => {}
            () = &mut wait => break,
        }
    }
    slots.len() < MAX_CONNECTIONS
}

/// Serves one connection until it closes, times out, is evicted or the listener stops.
async fn connection(
    stream: TcpStream,
    readiness: Arc<Readiness>,
    registration: Registration,
    mut evicted: oneshot::Receiver<()>,
    counters: HttpCounters,
) {
    let (slots, id) = (Arc::clone(&registration.slots), registration.id);
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&req, &readiness);
        slots.answered(id);
        std::future::ready(response)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
    tokio::pin!(deadline);
    // The connection first: a response that is ready is written before an eviction is obeyed.
    let at_deadline = tokio::select! {
        biased;
        result = conn.as_mut() => {
            if let Err(e) = result {
                if e.is_timeout() && !registration.slots.has_answered(id) {
                    counters.refused_timeout.increment(1);
                }
                tracing::debug!(error = %e, "metrics connection");
            }
            return;
        }
        signal = &mut evicted => match signal {
            Ok(()) => {
                tracing::debug!("dropped the metrics connection that waited longest: the listener is full");
                return;
            }
            // The listener stopped.
            Err(_) => false,
        },
        () = &mut deadline => true,
    };
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(SHUTDOWN_GRACE, conn).await.is_err() && at_deadline {
        counters.refused_timeout.increment(1);
        tracing::debug!("dropped a metrics connection that outlived its deadline");
    }
}

/// The answer to one request.
fn respond(
    req: &Request<Incoming>,
    readiness: &Readiness,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body)))
    };
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics::handle().render()))),
        "/ready" if readiness.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", readiness.reason()),
        ),
        "/health" => text(StatusCode::OK, "ok\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready or /health\n".into(),
        ),
    }
}

/// The open connections, as the accept loop sees them.
#[derive(Default)]
struct Slots {
    table: Mutex<Table>,
    /// Notified each time a connection closes.
    released: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Where it comes from: the peer's IPv4 address, or the /64 of its IPv6 address.
    source: IpAddr,
    /// Since when the connection has waited for a request: its accept, or its last response.
    waiting_since: Instant,
    /// Whether it has answered a request.
    answered: bool,
    /// Sending ends the connection at once, dropping lets it finish its response; `None` once
    /// the connection is being evicted.
    evict: Option<oneshot::Sender<()>>,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open connections, those being evicted included (their sockets are not closed yet).
    fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Registers a new connection.
    fn open(slots: &Arc<Self>, peer: SocketAddr) -> (Registration, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut table = slots.lock();
        let id = table.next_id;
        table.next_id += 1;
        table.open.insert(
            id,
            Slot {
                source: source(peer),
                waiting_since: Instant::now(),
                answered: false,
                evict: Some(tx),
            },
        );
        let registration = Registration {
            slots: Arc::clone(slots),
            id,
        };
        (registration, rx)
    }

    /// Records that connection `id` has answered a request.
    fn answered(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.waiting_since = Instant::now();
            slot.answered = true;
        }
    }

    fn has_answered(&self, id: u64) -> bool {
        self.lock().open.get(&id).is_some_and(|s| s.answered)
    }

    /// Tells a connection to close at once, to make room: of the source with the most
    /// connections (among equals, the one whose oldest has waited longest), the connection that
    /// has waited longest for a request. Connections already being evicted are not counted.
    /// False if there is none.
    fn evict(&self) -> bool {
        let mut table = self.lock();
        let mut sources: HashMap<IpAddr, (usize, Instant)> = HashMap::new();
        for slot in table.open.values().filter(|s| s.evict.is_some()) {
            let entry = sources
                .entry(slot.source)
                .or_insert((0, slot.waiting_since));
            entry.0 += 1;
            entry.1 = entry.1.min(slot.waiting_since);
        }
        let busiest = sources
            .into_iter()
            .max_by(|(_, a), (_, b)| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(source, _)| source);
        let Some(busiest) = busiest else {
            return false;
        };
        let victim = table
            .open
            .values_mut()
            .filter(|s| s.source == busiest && s.evict.is_some())
            .min_by_key(|s| s.waiting_since)
            .and_then(|s| s.evict.take());
        match victim {
            // A connection that has just ended has dropped its receiver: it is closing anyway.
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    /// Forgets every connection, which drops their eviction senders: they shut down gracefully.
    fn close_all(&self) {
        self.lock().open.clear();
    }
}

/// The source a peer is counted under: its IPv4 address, or the /64 prefix of its IPv6 one
/// (one host commonly holds a whole /64).
fn source(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

/// A connection's place in [`Slots`], released when its task ends (or is dropped unrun).
struct Registration {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
        self.slots.released.notify_one();
    }
}
