//! The server: QUIC endpoint, connections, streams, and the request loop.
//!
//! `start` recovers the data directory, starts the writer thread, binds the QUIC endpoint and
//! the metrics listener, and returns a [`RunningServer`] that knows its bound addresses. Each
//! connection is authenticated by mutual TLS and classified (router, admin or peer); each of its
//! bidirectional streams runs a loop that reads whatever arrived, answers every complete frame
//! in order into one buffer, and writes that buffer once.
//!
//! Bounds (docs/threat-model.md says which protects what):
//! - Handshakes in progress (`max_handshakes`, refused beyond; each abandoned after
//!   `handshake_timeout`); past `retry_above` of them, a client must answer a stateless QUIC
//!   Retry before the server keeps anything for it. Only authenticated connections take one of
//!   the `max_connections` slots; past them a connection is closed as soon as it is known.
//! - Streams per connection (QUIC flow control) and bytes unread per connection: routers get
//!   small connection windows, admins and peers (who move whole tables) large ones.
//! - Frame size by role (a typed error under id 0, then the connection is closed); a frame must
//!   arrive whole within `frame_timeout` (plus a second per MiB) of its first byte, and an
//!   answer must be taken by the client within `write_timeout` (plus a second per MiB), or the
//!   stream is reset; at shutdown, answers get a short grace and no more.
//! - Lookups per second (`max_lookups_per_sec`, [`crate::admission`]), shed with `overloaded`.
//! - Batch size (a typed error; `max_batch` also bounds the ranges of a range pull, the
//!   partitions it or a delta answers, at `max_batch` × 64, and the tree nodes of a
//!   tree-digests answer), frames answered per write (at most `max_in_flight` before the
//!   answers are flushed), idle time (QUIC idle timeout), and queued writes (`overloaded` when
//!   full).
//!
//! Roles: routers read (lookups, node lists, get-table, get-delta, stats, summaries); admins
//! and peers also write and ask for tree digests and range pulls (anti-entropy).
//!
//! Logs: each connection is served inside a `connection` span (`id`, a counter of this
//! server; `remote`, the client's address; `role`, recorded once the certificate is checked),
//! and each of its streams inside a `stream` span (`id`, the QUIC stream id), so every line
//! logged while serving them says which client it concerns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use memds_proto::NodeInterner;
use memds_proto::wire::{
    self, ArchivedRequest, ErrorCode, ErrorReply, FrameDecoder, Protocol, Request, Response,
    ServerStats, WireError, close_code,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::admission::{LookupLimit, Share};
use crate::durable::{Durable, RecoveryMode};
use crate::fleet::{Fleet, FleetConfig, FleetTasks};
use crate::metrics::{self, Counters, Metrics, RefusalReason, RequestKind, StreamResetReason};
use crate::scrub::Scrubber;
use crate::service::{self, ReadLimits};
use crate::store::{Store, Tables, Write};
use crate::tls::{self, Authorizer, ClientRole, TlsPaths};
use crate::writer::{self, Job, WriteJob, Writer, WriterConfig};

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// QUIC listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Prometheus listen address, if any (port 0 picks a free port).
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Explicit TLS files; `None` uses (creating if needed) the development PKI in
    /// `dev_tls_dir`.
    pub tls: Option<TlsPaths>,
    /// Where the development PKI lives when `tls` is `None`; `None` means `<data-dir>/tls`.
    /// Servers on one machine share one by naming the same directory.
    pub dev_tls_dir: Option<PathBuf>,
    /// Peers, anti-entropy and readiness.
    pub fleet: FleetConfig,
    /// Resource bounds.
    pub limits: Limits,
    /// The log is compacted once larger than this and than the last checkpoint.
    pub compact_wal_bytes: u64,
    /// Time between scrubbing passes over the resident tables; `None` turns scrubbing off.
    pub scrub_interval: Option<Duration>,
    /// What recovery does with a damaged data directory.
    pub recovery: RecoveryMode,
}

/// Time between scrubbing passes unless configured: a pass reads every resident byte once
/// (about 12 ms per 100 MB, measured by `bench-map`), so once a minute costs nothing measurable.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(60);

impl ServerConfig {
    /// A configuration with default limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            metrics_listen: None,
            data_dir,
            tls: None,
            dev_tls_dir: None,
            fleet: FleetConfig::default(),
            limits: Limits::default(),
            compact_wal_bytes: 64 << 20,
            scrub_interval: Some(DEFAULT_SCRUB_INTERVAL),
            recovery: RecoveryMode::Strict,
        }
    }
}

/// Resource bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Authenticated connections at most; more are closed once their handshake completes.
    /// Handshakes in progress count against `max_handshakes` instead.
    pub max_connections: usize,
    /// Handshakes in progress at most; new connection attempts beyond it are refused before any
    /// state is kept for them.
    pub max_handshakes: usize,
    /// Handshakes in progress beyond which a client must prove its address with a QUIC Retry
    /// before the server keeps any state for it (spoofed floods then cost one stateless packet).
    pub retry_above: usize,
    /// A handshake not complete within this is abandoned.
    pub handshake_timeout: Duration,
    /// Largest request frame a router may send, in bytes (routers only look up: a batch of
    /// `max_batch` hashes fits).
    pub max_router_frame_bytes: usize,
    /// A frame must arrive whole within this (plus a second per MiB it declares) of its first
    /// byte, or the stream is reset.
    pub frame_timeout: Duration,
    /// An answer the client has not taken within this is abandoned and its stream reset.
    pub write_timeout: Duration,
    /// Lookups (keys, counting each key of a batch) this server answers per second at most;
    /// beyond it lookups are shed with `overloaded`, fairly between connections. Writes and peer
    /// traffic are not counted. `None`: no limit.
    pub max_lookups_per_sec: Option<u64>,
    /// Concurrent bidirectional streams a client may open per connection.
    pub max_streams_per_connection: u32,
    /// Largest request frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most hashes per batch lookup and routes per range scan.
    pub max_batch: usize,
    /// Most request frames answered before the answers are written out.
    pub max_in_flight: usize,
    /// Connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Writes queued at most; more are answered `overloaded`.
    pub write_queue: usize,
    /// Bytes a client may send on a stream before the server has read them.
    pub stream_window: u32,
    /// Largest uncompressed archive a put's snapshot may declare (checked before anything is
    /// allocated for it).
    pub max_snapshot_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_handshakes: 256,
            retry_above: 32,
            handshake_timeout: Duration::from_secs(5),
            max_router_frame_bytes: 64 << 10,
            frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_lookups_per_sec: None,
            max_streams_per_connection: 4,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_batch: wire::DEFAULT_MAX_BATCH,
            max_in_flight: 1024,
            idle_timeout: Duration::from_secs(60),
            write_queue: 1024,
            stream_window: 4 << 20,
            max_snapshot_bytes: memds_proto::snapshot::DEFAULT_MAX_ARCHIVE_BYTES,
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// The QUIC address it bound.
    pub quic_addr: SocketAddr,
    /// The metrics address it bound, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The development TLS directory, when the server uses one.
    pub tls_dir: Option<PathBuf>,
    scrub_passes: Option<watch::Receiver<u64>>,
    lookup_limit: Arc<LookupLimit>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The first line a server prints: its bound addresses and TLS directory, as JSON.
    pub fn announcement(&self) -> String {
        serde_json::json!({
            "quic": self.quic_addr.to_string(),
            "metrics": self.metrics_addr.map(|a| a.to_string()),
            "tls_dir": self.tls_dir.as_ref().map(|d| d.display().to_string()),
        })
        .to_string()
    }

    /// The number of scrubbing passes completed, if scrubbing is on: tests wait on it instead
    /// of sleeping through a scrub interval.
    pub fn scrub_passes(&self) -> Option<watch::Receiver<u64>> {
        self.scrub_passes.clone()
    }

    /// Changes the lookups per second the server admits (`--max-lookups-per-sec`; `None`: no
    /// limit) while it runs; open connections' shares follow at their next lookup. What an
    /// operator's reprovisioning does, and what `loadgen experiment --provision` uses.
    pub fn set_max_lookups_per_sec(&self, per_sec: Option<u64>) {
        self.lookup_limit.set(per_sec);
        metrics::lookup_limit(self.lookup_limit.per_sec().unwrap_or(0));
    }

    /// The lookups per second the server admits now, `None` for no limit.
    pub fn max_lookups_per_sec(&self) -> Option<u64> {
        self.lookup_limit.per_sec()
    }

    /// Stops accepting, lets in-flight requests finish, closes connections, finishes queued
    /// writes, and returns when all is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the server task failed");
        }
    }
}

/// Bytes a router may have in flight to the server on a connection before the server reads
/// them: routers send small requests, so this bounds what a hostile one pins without slowing an
/// honest one. Admins and peers get twice the stream window once their role is known.
const ROUTER_RECEIVE_WINDOW: u32 = 256 << 10;
/// Answer bytes the server buffers for a router connection beyond what the router has read.
const ROUTER_SEND_WINDOW: u64 = 1 << 20;
/// The same for admins and peers, whose answers may be whole tables.
const BULK_SEND_WINDOW: u64 = 8 << 20;
/// A frame or answer of this many bytes gets a second more than the configured timeout.
const BYTES_PER_EXTRA_SECOND: f64 = (1 << 20) as f64;
/// How long answers already under way may take once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
struct Ctx {
    store: Arc<Store>,
    lookup_limit: Arc<LookupLimit>,
    writes: tokio::sync::mpsc::Sender<Job>,
    authorizer: Authorizer,
    limits: Limits,
    metrics: Metrics,
    counters: Arc<Counters>,
    started: Instant,
    fleet: Arc<Fleet>,
}

/// Starts a server.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let (tls_paths, tls_dir) = match &config.tls {
        Some(paths) => (paths.clone(), None),
        None => {
            let dir = config
                .dev_tls_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("tls"));
            if tls::ensure_dev_pki(&dir).context("creating the development PKI")? {
                tracing::info!(dir = %dir.display(), "created a development PKI");
            }
            (TlsPaths::in_dir(&dir), Some(dir))
        }
    };
    let (mut quic_config, authorizer) =
        tls::server_config(&tls_paths).context("loading the TLS configuration")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(config.limits.stream_window.into())
        // Until the role is known, a connection gets a router's windows (see `handle_connection`).
        .receive_window(ROUTER_RECEIVE_WINDOW.into())
        .send_window(ROUTER_SEND_WINDOW)
        .max_idle_timeout(Some(
            config
                .limits
                .idle_timeout
                .try_into()
                .context("the idle timeout is too long")?,
        ));
    quic_config.transport_config(Arc::new(transport));

    let metrics = Metrics::new();
    let counters = Arc::new(Counters::default());
    let (store, writer) = start_writer(&config, Arc::clone(&counters))?;
    store.publish_gauges();
    let fleet = Fleet::new(&config.fleet);
    let (repairs_tx, repairs) = tokio::sync::mpsc::channel(64);
    let scrubber = match config.scrub_interval {
        Some(every) => Some(
            Scrubber::start(Arc::clone(&store), writer.sender(), every, Some(repairs_tx))
                .context("starting the scrubbing thread")?,
        ),
        None => None,
    };
    let peer_tls = tls::peer_client_tls(&tls_paths).context("loading the peer identity")?;
    let connector = memds_client::Connector::new(
        &peer_tls,
        memds_client::ConnectOptions {
            server_name: config.fleet.peer_server_name.clone(),
            bind: if config.listen.is_ipv6() {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 0))
            },
            // Pulls carry whole tables: as large as a put may be.
            max_frame_bytes: peer_frame_limit(&config.limits),
            max_snapshot_bytes: config.limits.max_snapshot_bytes,
            ..memds_client::ConnectOptions::default()
        },
    )
    .context("creating the peer endpoint")?;

    let endpoint = quinn::Endpoint::server(quic_config, config.listen)
        .with_context(|| format!("binding QUIC on {}", config.listen))?;
    let quic_addr = endpoint.local_addr().context("reading the bound address")?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?;
            let bound = listener
                .local_addr()
                .context("reading the metrics address")?;
            let mut rx = shutdown_rx.clone();
            tokio::spawn(crate::http::serve(
                listener,
                fleet.readiness(),
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            ));
            Some(bound)
        }
        None => None,
    };
    let lookup_limit = LookupLimit::unlimited();
    lookup_limit.set(config.limits.max_lookups_per_sec);
    metrics::lookup_limit(config.limits.max_lookups_per_sec.unwrap_or(0));
    let ctx = Arc::new(Ctx {
        store,
        lookup_limit: Arc::clone(&lookup_limit),
        writes: writer.sender(),
        authorizer,
        limits: config.limits,
        metrics,
        counters,
        started: Instant::now(),
        fleet: Arc::clone(&fleet),
    });
    let fleet_task = tokio::spawn(crate::fleet::run(
        FleetTasks {
            fleet,
            config: config.fleet.clone(),
            store: Arc::clone(&ctx.store),
            writes: writer.sender(),
            connector,
            own_addr: quic_addr,
            repairs,
        },
        shutdown_rx.clone(),
    ));
    let scrub_passes = scrubber.as_ref().map(Scrubber::passes);
    let task = tokio::spawn(accept_loop(
        endpoint,
        ctx,
        writer,
        scrubber,
        fleet_task,
        shutdown_rx,
    ));
    Ok(RunningServer {
        quic_addr,
        metrics_addr,
        tls_dir,
        scrub_passes,
        lookup_limit,
        shutdown,
        task,
    })
}

/// Recovers the data directory and starts the writer over it: the durable half of a server,
/// without the network (tests use it alone).
pub fn start_writer(
    config: &ServerConfig,
    counters: Arc<Counters>,
) -> anyhow::Result<(Arc<Store>, Writer)> {
    let (durable, interner, tables) = recover(config)?;
    let store = Arc::new(Store::with_tables(tables, &interner));
    let writer = Writer::start(
        durable,
        interner,
        Arc::clone(&store),
        counters,
        WriterConfig {
            queue: config.limits.write_queue,
            max_archive_bytes: config.limits.max_snapshot_bytes,
        },
    )
    .context("starting the writer thread")?;
    Ok((store, writer))
}

/// Opens the data directory and rebuilds the tables it holds, following the recovery rules of
/// [`crate::durable`]. After a salvage, what was kept is checkpointed at once, so the directory
/// is whole again before any write is taken.
fn recover(config: &ServerConfig) -> anyhow::Result<(Durable, NodeInterner, Tables)> {
    let (mut durable, recovered) =
        Durable::open(&config.data_dir, config.compact_wal_bytes, config.recovery)
            .context("opening the data directory")?;
    let mut interner = NodeInterner::default();
    let replayed = writer::replay(recovered.records, &mut interner, config.recovery)
        .map_err(anyhow::Error::msg)
        .context(
            "replaying the data directory (restore it from a backup, or start with \
             --wal-recovery salvage to skip what does not apply)",
        )?;
    if let Some((at, bytes)) = &recovered.truncated {
        tracing::warn!(
            bytes,
            at = %at,
            "cut a torn, unacknowledged write from the end of the log"
        );
    }
    let salvaged = recovered.salvage.is_some() || !replayed.lost.is_empty();
    if let Some(s) = &recovered.salvage {
        for d in &s.damage {
            tracing::error!(damage = %d, "salvage: found damage");
        }
        tracing::error!(folder = %s.folder.display(), "salvage: the damaged files were set aside, unchanged");
        for lost in &s.lost {
            tracing::error!(%lost, "salvage: a logged write is not restored");
        }
    }
    for lost in &replayed.lost {
        tracing::error!(%lost, "salvage: a logged write is not restored");
    }
    if salvaged {
        writer::checkpoint(&mut durable, &replayed.tables)
            .map_err(anyhow::Error::msg)
            .context("checkpointing the salvaged tables")?;
        for t in replayed.tables.values() {
            tracing::warn!(table = %t.name(), version = t.version().get(), "salvage: restored");
        }
    }
    tracing::info!(
        tables = replayed.tables.len(),
        replayed = replayed.applied,
        "recovered the data directory"
    );
    Ok((durable, interner, replayed.tables))
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    writer: Writer,
    scrubber: Option<Scrubber>,
    fleet_task: tokio::task::JoinHandle<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(ctx.limits.max_handshakes));
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let mut connections = JoinSet::new();
    let mut next_connection_id = 0u64;
    loop {
        let mut incoming = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        // Many handshakes under way: keep no state for a client until it shows it receives
        // at its address (a spoofed flood then costs one stateless packet each).
        let under_way = ctx.limits.max_handshakes - handshakes.available_permits();
        if under_way >= ctx.limits.retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            match incoming.retry() {
                Ok(()) => {
                    metrics::quic_retry();
                    continue;
                }
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            metrics::connection_refused(RefusalReason::HandshakeLimit);
            incoming.refuse();
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        let slots = Arc::clone(&slots);
        next_connection_id += 1;
        // Every line logged about the connection names it, its client and (once known) its role.
        let span = tracing::info_span!(
            "connection",
            id = next_connection_id,
            remote = %incoming.remote_address(),
            role = tracing::field::Empty,
        );
        connections
            .spawn(handle_connection(incoming, handshake, slots, ctx, shutdown).instrument(span));
    }
    // Drain: every connection finishes the frames it has, answers them and closes.
    while connections.join_next().await.is_some() {}
    // The fleet's tasks stop at the same signal; their pulls go through the writer, which
    // must outlive them.
    let _ = fleet_task.await;
    endpoint.close(0u32.into(), b"server shutting down");
    endpoint.wait_idle().await;
    drop(ctx);
    // The scrubber stops first (it may be waiting on the writer); the writer finishes every
    // queued write before its thread ends.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(s) = scrubber {
            s.shutdown();
        }
        writer.shutdown();
    })
    .await;
}

async fn handle_connection(
    incoming: quinn::Incoming,
    handshake_permit: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_progress = (metrics::handshake_started(), handshake_permit);
    // A handshake in progress does not hold up shutdown, and does not last.
    let handshake = tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => return,
        handshake = tokio::time::timeout(ctx.limits.handshake_timeout, incoming) => handshake,
    };
    drop(in_progress);
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            metrics::connection_refused(RefusalReason::Handshake);
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            // Dropping the attempt closes it.
            metrics::connection_refused(RefusalReason::HandshakeTimeout);
            tracing::debug!("handshake timed out");
            return;
        }
    };
    let role = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| ctx.authorizer.role_of(&chain));
    let Some(role) = role else {
        metrics::connection_refused(RefusalReason::NoCertificate);
        tracing::debug!("refused: no client certificate naming a role");
        conn.close(
            close_code::NO_CERTIFICATE.into(),
            b"a client certificate is required",
        );
        return;
    };
    tracing::Span::current().record("role", role.as_str());
    let protocol = negotiated(&conn);
    // Only an authenticated connection takes a slot.
    let Ok(_slot) = slots.try_acquire_owned() else {
        metrics::connection_refused(RefusalReason::ConnectionLimit);
        tracing::debug!("refused: at the connection limit");
        conn.close(
            close_code::BUSY.into(),
            b"the server is at its connection limit; try another server",
        );
        return;
    };
    match role {
        ClientRole::Router => {}
        // Admins put and peers pull whole tables.
        ClientRole::Admin | ClientRole::Peer => {
            conn.set_receive_window(ctx.limits.stream_window.saturating_mul(2).into());
            conn.set_send_window(BULK_SEND_WINDOW);
        }
    }
    // Peers are never shed: the fleet must be repairable under any lookup load.
    let share = match role {
        ClientRole::Router | ClientRole::Admin => Some(Arc::new(ctx.lookup_limit.connection())),
        ClientRole::Peer => None,
    };
    let open = metrics::connection_opened(role.as_str());
    tracing::debug!(protocol = %protocol, "connection accepted");
    Counters::add(&ctx.counters.connections, 1);
    let mut streams = JoinSet::new();
    let for_streams = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let span = tracing::info_span!("stream", id = %send.id());
                    let stream = Stream {
                        conn: conn.clone(),
                        send,
                        recv,
                        role,
                        protocol,
                        share: share.clone(),
                        shutdown: for_streams.clone(),
                    };
                    streams.spawn(serve_stream(stream, Arc::clone(&ctx)).instrument(span));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    conn.close(0u32.into(), b"closing");
    drop(open);
    tracing::debug!("connection closed");
    ctx.counters.connections.fetch_sub(1, Ordering::Relaxed);
}

/// One bidirectional stream and what serving it needs.
struct Stream {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    role: ClientRole,
    /// The protocol version the handshake settled on: requests newer than it are refused.
    protocol: Protocol,
    share: Option<Arc<Share>>,
    shutdown: watch::Receiver<bool>,
}

/// The protocol version a connection's handshake settled on. The server offers only versions it
/// speaks, so an id is always one of them; a client that offered no ALPN at all speaks the
/// oldest.
fn negotiated(conn: &quinn::Connection) -> Protocol {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .and_then(|id| Protocol::from_alpn(&id))
        .unwrap_or(Protocol::V1)
}

/// A timeout plus a second per MiB: what a frame or an answer of `bytes` may take.
fn allowance(base: Duration, bytes: usize) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / BYTES_PER_EXTRA_SECOND)
}

/// Sleeps until `deadline`, or for ever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes `out` and clears it, within the write timeout and a short grace after shutdown
/// begins; a client that does not take its answers has its stream reset instead. Returns
/// whether the stream is still usable.
async fn write_answers(stream: &mut Stream, out: &mut Vec<u8>, ctx: &Ctx) -> bool {
    let mut shutdown = stream.shutdown.clone();
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let limit = allowance(ctx.limits.write_timeout, out.len());
    let written = tokio::select! {
        r = stream.send.write_all(out) => r.is_ok(),
        () = tokio::time::sleep(limit) => {
            metrics::stream_reset(StreamResetReason::WriteTimeout);
            tracing::debug!("the client did not take its answers in time; resetting the stream");
            let _ = stream.send.reset(close_code::WRITE_TIMEOUT.into());
            false
        }
        () = stopping => {
            let _ = stream.send.reset(close_code::WRITE_TIMEOUT.into());
            false
        }
    };
    out.clear();
    if out.capacity() > FrameDecoder::KEEP_BYTES {
        // A large answer (a whole table) is not kept for the life of the stream.
        *out = Vec::new();
    }
    written
}

async fn serve_stream(mut stream: Stream, ctx: Arc<Ctx>) {
    let max_frame = match stream.role {
        // Routers only look up: their requests are small.
        ClientRole::Router => ctx.limits.max_router_frame_bytes,
        ClientRole::Admin => ctx.limits.max_frame_bytes,
        // Peers forward whole tables: a put may be as large as the snapshot limit allows.
        ClientRole::Peer => peer_frame_limit(&ctx.limits),
    };
    let mut decoder = FrameDecoder::new(max_frame);
    let mut out = Vec::new();
    // When the frame partly received began to arrive.
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        let deadline = frame_started.map(|started| {
            started + allowance(ctx.limits.frame_timeout, decoder.partial().unwrap_or(0))
        });
        let read = tokio::select! {
            _ = stream.shutdown.wait_for(|stop| *stop) => break,
            () = until(deadline) => {
                // Half a frame, sent slowly or never finished: it would pin its buffer.
                metrics::stream_reset(StreamResetReason::FrameTimeout);
                tracing::debug!("a frame did not arrive whole in time; resetting the stream");
                let _ = stream.send.reset(close_code::FRAME_TIMEOUT.into());
                let _ = stream.recv.stop(close_code::FRAME_TIMEOUT.into());
                return;
            }
            read = stream.recv.read_chunk(64 * 1024, true) => read,
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => break,
        };
        decoder.push(&chunk);
        drop(chunk);
        let mut answered = 0usize;
        let mut completed = false;
        loop {
            match decoder.next_frame() {
                Ok(Some((id, payload))) => {
                    completed = true;
                    ctx.metrics.in_flight.increment(1.0);
                    let share = stream.share.as_deref();
                    match answer_frame(payload, stream.role, stream.protocol, share, &ctx).await {
                        Answer::Response(response) => {
                            wire::encode_response(id, &response, &mut out)
                        }
                        Answer::Archived(archive) => {
                            if let Err(e) = wire::encode_archived_response(id, &archive, &mut out) {
                                wire::encode_response(
                                    id,
                                    &Response::Error(ErrorReply::new(
                                        ErrorCode::TooLarge,
                                        e.to_string(),
                                    )),
                                    &mut out,
                                );
                            }
                        }
                    }
                    answered += 1;
                    if answered >= ctx.limits.max_in_flight || out.len() >= (1 << 20) {
                        let written = write_answers(&mut stream, &mut out, &ctx).await;
                        ctx.metrics.in_flight.decrement(answered as f64);
                        answered = 0;
                        if !written {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronised after a bad length: say why under
                    // id 0, then close.
                    let code = match e {
                        WireError::FrameTooLarge { .. } => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    metrics::error(code);
                    tracing::debug!(error = %e, "an undecodable frame; closing the connection");
                    Counters::add(&ctx.counters.errors, 1);
                    wire::encode_response(
                        0,
                        &Response::Error(ErrorReply::new(code, e.to_string())),
                        &mut out,
                    );
                    let written = write_answers(&mut stream, &mut out, &ctx).await;
                    ctx.metrics.in_flight.decrement(answered as f64);
                    if written {
                        let _ = stream.send.finish();
                        // Give the peer a moment to read the reason before the close.
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.send.stopped())
                            .await;
                    }
                    stream
                        .conn
                        .close(close_code::BAD_FRAME.into(), e.to_string().as_bytes());
                    return;
                }
            }
        }
        let written = out.is_empty() || write_answers(&mut stream, &mut out, &ctx).await;
        ctx.metrics.in_flight.decrement(answered as f64);
        if !written {
            return;
        }
        frame_started = match decoder.partial() {
            None => None,
            // The same frame is still arriving.
            Some(_) if !completed && frame_started.is_some() => frame_started,
            Some(_) => Some(tokio::time::Instant::now()),
        };
    }
    let _ = stream.send.finish();
}

/// An answer to one request frame: a response to encode, or one encoded before (a cached
/// get-table answer).
enum Answer {
    Response(Response),
    Archived(Arc<rkyv::util::AlignedVec>),
}

/// What a lookup costs against the lookup limit: one per key, per route a range may return,
/// and one for a table's node list, snapshot or delta. `None` for what is not a lookup (tree
/// digests and range pulls are anti-entropy, which only peers and admins may ask for).
fn lookup_cost(req: &ArchivedRequest, max_batch: usize) -> Option<u64> {
    let max_batch = max_batch as u64;
    match req {
        ArchivedRequest::Lookup { .. }
        | ArchivedRequest::GetNodes { .. }
        | ArchivedRequest::GetTable { .. }
        | ArchivedRequest::GetDelta { .. } => Some(1),
        ArchivedRequest::BatchLookup { hashes, .. } => {
            Some((hashes.len() as u64).clamp(1, max_batch))
        }
        ArchivedRequest::Range { limit, .. } => {
            Some(u64::from(limit.to_native()).clamp(1, max_batch))
        }
        _ => None,
    }
}

/// The request kind of a read that is not a lookup.
fn read_kind(req: &ArchivedRequest) -> RequestKind {
    match req {
        ArchivedRequest::GetDelta { .. } => RequestKind::GetDelta,
        ArchivedRequest::TreeDigests { .. } => RequestKind::TreeDigests,
        ArchivedRequest::GetRanges { .. } => RequestKind::GetRanges,
        _ => RequestKind::Read,
    }
}

/// Sheds a lookup over the limit.
fn shed(ctx: &Ctx, cost: u64, limit: &LookupLimit) -> Response {
    metrics::request(RequestKind::Read);
    metrics::lookups_shed(cost);
    Counters::add(&ctx.counters.lookups_shed, cost);
    Response::Error(ErrorReply::new(
        ErrorCode::Overloaded,
        format!(
            "this server answers at most {} lookups a second; ask another server",
            limit.per_sec().unwrap_or(0)
        ),
    ))
}

async fn answer_frame(
    payload: &[u8],
    role: ClientRole,
    protocol: Protocol,
    share: Option<&Share>,
    ctx: &Ctx,
) -> Answer {
    Counters::add(&ctx.counters.requests, 1);
    let request = wire::access_request(payload);
    let over_limit = match (&request, share) {
        (Ok(req), Some(share)) if share.limited() => lookup_cost(req, ctx.limits.max_batch)
            .filter(|&cost| !share.admit(cost))
            .map(|cost| (cost, &*ctx.lookup_limit)),
        _ => None,
    };
    let response = match request {
        _ if over_limit.is_some() => {
            let (cost, limit) = over_limit.expect("checked");
            shed(ctx, cost, limit)
        }
        Err(e) => {
            metrics::request(RequestKind::Malformed);
            Response::Error(ErrorReply::new(ErrorCode::Malformed, e.to_string()))
        }
        // A request the connection's version does not carry: its sender broke the protocol.
        Ok(req) if req.since() > protocol => {
            metrics::request(RequestKind::Malformed);
            Response::Error(ErrorReply::new(
                ErrorCode::Malformed,
                format!(
                    "this connection speaks {protocol}, which has no such request (it needs {})",
                    req.since()
                ),
            ))
        }
        Ok(req) if req.is_write() => {
            metrics::request(RequestKind::Write);
            match role {
                // An admin's write is forwarded to the peers once applied here; a peer's was
                // forwarded to every server already. One that does not apply here because this
                // server lacks its base (`behind`) starts a catch-up by anti-entropy.
                role @ (ClientRole::Admin | ClientRole::Peer) => {
                    let r = submit_write(req, ctx, role == ClientRole::Admin).await;
                    if matches!(&r, Response::Error(e) if e.code == ErrorCode::Behind) {
                        ctx.fleet.catch_up();
                    }
                    r
                }
                ClientRole::Router => Response::Error(ErrorReply::new(
                    ErrorCode::Unauthorized,
                    "writes need an admin certificate",
                )),
            }
        }
        Ok(ArchivedRequest::Stats) => {
            metrics::request(RequestKind::Stats);
            Response::Stats(stats(ctx))
        }
        Ok(ArchivedRequest::ServerInfo) => {
            metrics::request(RequestKind::Stats);
            Response::ServerInfo(crate::server_info())
        }
        Ok(ArchivedRequest::Summary) => {
            metrics::request(RequestKind::Summary);
            Response::Summary(ctx.fleet.summary(&ctx.store))
        }
        // Tree digests and range pulls are for the fleet's anti-entropy (and admins).
        Ok(req @ (ArchivedRequest::TreeDigests { .. } | ArchivedRequest::GetRanges { .. }))
            if role == ClientRole::Router =>
        {
            metrics::request(read_kind(req));
            Response::Error(ErrorReply::new(
                ErrorCode::Unauthorized,
                "tree digests and range pulls need a peer or admin certificate",
            ))
        }
        // Until the server has caught up with its peers, what it holds may be older than what
        // routers have seen: they are sent elsewhere. Peers and the writes above still pass.
        Ok(
            req @ (ArchivedRequest::Lookup { .. }
            | ArchivedRequest::BatchLookup { .. }
            | ArchivedRequest::Range { .. }
            | ArchivedRequest::GetNodes { .. }
            | ArchivedRequest::GetTable { .. }
            | ArchivedRequest::GetDelta { .. }
            | ArchivedRequest::TreeDigests { .. }
            | ArchivedRequest::GetRanges { .. }),
        ) if role != ClientRole::Peer && !ctx.fleet.is_ready() => {
            metrics::request(read_kind(req));
            Response::Error(ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "this server is not ready ({}); ask another server",
                    ctx.fleet.readiness().reason()
                ),
            ))
        }
        Ok(ArchivedRequest::GetTable {
            table,
            if_newer_than,
        }) => {
            metrics::request(RequestKind::Read);
            match ctx.store.table(table.as_str()) {
                None => Response::Error(ErrorReply::new(
                    ErrorCode::UnknownTable,
                    format!("no table named {:?}", table.as_str()),
                )),
                Some(t) => match if_newer_than.as_ref() {
                    Some(v) if t.version().get() <= v.to_native() => Response::NotModified {
                        version: t.version().get(),
                    },
                    _ => match ctx.store.snapshots().answer(t).await {
                        Ok(archive) => return Answer::Archived(archive),
                        Err(e) => Response::Error(e),
                    },
                },
            }
        }
        Ok(req) => {
            let started = Instant::now();
            let (response, outcome) = service::answer(
                &ctx.store,
                req,
                ReadLimits {
                    max_batch: ctx.limits.max_batch,
                },
            );
            if outcome.behind {
                ctx.fleet.catch_up();
            }
            match outcome.lookup_op {
                Some(op) => {
                    metrics::request(RequestKind::Lookup(op));
                    let ok = !matches!(response, Response::Error(_));
                    ctx.metrics
                        .lookup(op, ok, outcome.lookups, started.elapsed());
                    if ok {
                        Counters::add(&ctx.counters.lookups, outcome.lookups);
                    }
                }
                None => metrics::request(read_kind(req)),
            }
            response
        }
    };
    if let Response::Error(e) = &response {
        metrics::error(e.code);
        Counters::add(&ctx.counters.errors, 1);
    }
    Answer::Response(response)
}

async fn submit_write(req: &ArchivedRequest, ctx: &Ctx, forward: bool) -> Response {
    let owned = match rkyv::deserialize::<Request, rkyv::rancor::Error>(req) {
        Ok(r) => r,
        Err(e) => return Response::Error(ErrorReply::new(ErrorCode::Malformed, e.to_string())),
    };
    // Puts and updates are forwarded as received; a drop as the version it removed.
    let to_forward = (forward && ctx.fleet.has_peers())
        .then(|| owned.clone())
        .filter(|r| !matches!(r, Request::DropTable { .. }));
    // A drop that names no version removes what this server holds: one that has not caught
    // up with its peers would leave a tombstone below the fleet's version, and the table would
    // come back. Such a drop waits for readiness (memds-ctl names the newest version the fleet
    // holds instead).
    if matches!(&owned, Request::DropTable { version: None, .. }) && !ctx.fleet.is_ready() {
        return Response::Error(ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "a drop without a version needs a ready server, and this one is not ({}): name the version, or ask another server",
                ctx.fleet.readiness().reason()
            ),
        ));
    }
    let write = match owned {
        Request::PutTable { snapshot } => Write::Put { snapshot },
        Request::UpdatePartitions(u) => Write::Update(u.into()),
        Request::UpdateBatch(u) => Write::Batch(u.into()),
        Request::DropTable { table, version } => Write::Drop { table, version },
        _ => return Response::Error(ErrorReply::new(ErrorCode::Internal, "not a write")),
    };
    let (reply, rx) = oneshot::channel();
    let job = WriteJob {
        write,
        reply,
        arrived: Instant::now(),
    };
    if ctx.writes.try_send(Job::Write(job)).is_err() {
        return Response::Error(ErrorReply::new(
            ErrorCode::Overloaded,
            "the write queue is full; retry later",
        ));
    }
    let response = rx.await.unwrap_or_else(|_| {
        Response::Error(ErrorReply::new(ErrorCode::Internal, "the writer stopped"))
    });
    if forward {
        match (&response, to_forward) {
            (Response::Written(ack), Some(request)) if ack.applied => ctx.fleet.forward(request),
            (Response::Dropped { table, version }, _) => ctx.fleet.forward(Request::DropTable {
                table: table.clone(),
                version: Some(*version),
            }),
            _ => {}
        }
    }
    response
}

/// The largest frame a peer may send or a pull may answer: whole tables, as large as a put.
fn peer_frame_limit(limits: &Limits) -> usize {
    let snapshot = usize::try_from(limits.max_snapshot_bytes).unwrap_or(usize::MAX);
    limits.max_frame_bytes.max(snapshot.saturating_add(1 << 20))
}

fn stats(ctx: &Ctx) -> ServerStats {
    let (tables, partitions, resident_bytes) = ctx.store.totals();
    let c = &ctx.counters;
    ServerStats {
        server_version: env!("CARGO_PKG_VERSION").into(),
        tables,
        partitions,
        resident_bytes,
        node_records: ctx.store.node_records().0,
        connections: c.connections.load(Ordering::Relaxed),
        lookups_total: c.lookups.load(Ordering::Relaxed),
        lookups_shed_total: c.lookups_shed.load(Ordering::Relaxed),
        requests_total: c.requests.load(Ordering::Relaxed),
        errors_total: c.errors.load(Ordering::Relaxed),
        writes_total: c.writes.load(Ordering::Relaxed),
        cpu_seconds: process_cpu_seconds().unwrap_or(0.0),
        uptime_seconds: ctx.started.elapsed().as_secs_f64(),
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports these in USER_HZ, which is 100 on Linux.
    Some(ticks / 100.0)
}
