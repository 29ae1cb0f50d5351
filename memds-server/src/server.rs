//! The server: QUIC endpoint, connections, streams, and the request loop.
//!
//! `start` recovers the data directory, starts the writer thread, binds the QUIC endpoint and
//! the metrics listener, and returns a [`RunningServer`] that knows its bound addresses. Each
//! connection is authenticated by mutual TLS and classified (router or admin); each of its
//! bidirectional streams runs a loop that reads whatever arrived, answers every complete frame
//! in order into one buffer, and writes that buffer once.
//!
//! Bounds: connections (past the limit a new connection is refused), streams per connection
//! (QUIC flow control), frame size (a typed error under id 0, then the connection is closed),
//! batch size (a typed error), frames answered per write (at most `max_in_flight` before the
//! answers are flushed; the peer cannot send more than the stream window while answers are
//! unread), idle time (QUIC idle timeout), and queued writes (`overloaded` when full).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use memds_proto::NodeInterner;
use memds_proto::wire::{
    self, ArchivedRequest, ErrorCode, ErrorReply, FrameDecoder, Request, Response, ServerStats,
    WireError,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::durable::{Durable, RecoveryMode};
use crate::fleet::{Fleet, FleetConfig, FleetTasks};
use crate::metrics::{self, Counters, Metrics};
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
    /// Open connections at most; more are refused.
    pub max_connections: usize,
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

    /// Stops accepting, lets in-flight requests finish, closes connections, finishes queued
    /// writes, and returns when all is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the server task failed");
        }
    }
}

struct Ctx {
    store: Arc<Store>,
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
        .receive_window((config.limits.stream_window.saturating_mul(2)).into())
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
    publish_table_gauges(&store);
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
            tokio::spawn(metrics::serve(listener, fleet.readiness(), async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }));
            Some(bound)
        }
        None => None,
    };
    let ctx = Arc::new(Ctx {
        store,
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
    let permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter_refused("connection_limit");
            incoming.refuse();
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            handle_connection(incoming, ctx, shutdown).await;
            drop(permit);
        });
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
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A handshake in progress does not hold up shutdown.
    let handshake = tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => return,
        handshake = incoming => handshake,
    };
    let conn = match handshake {
        Ok(c) => c,
        Err(e) => {
            metrics::counter_refused("handshake");
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let role = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| ctx.authorizer.role_of(&chain));
    let Some(role) = role else {
        metrics::counter_refused("no_certificate");
        conn.close(1u32.into(), b"a client certificate is required");
        return;
    };
    ::metrics::counter!("memds_connections_total", "role" => role.as_str()).increment(1);
    let gauge = ::metrics::gauge!("memds_connections", "role" => role.as_str());
    gauge.increment(1.0);
    Counters::add(&ctx.counters.connections, 1);
    let mut streams = JoinSet::new();
    let for_streams = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let ctx = Arc::clone(&ctx);
                    let conn = conn.clone();
                    let shutdown = for_streams.clone();
                    streams.spawn(async move { serve_stream(conn, send, recv, role, ctx, shutdown).await });
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    conn.close(0u32.into(), b"closing");
    gauge.decrement(1.0);
    ctx.counters.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    role: ClientRole,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_frame = match role {
        // Peers forward whole tables: a put may be as large as the snapshot limit allows.
        ClientRole::Peer => peer_frame_limit(&ctx.limits),
        _ => ctx.limits.max_frame_bytes,
    };
    let mut decoder = FrameDecoder::new(max_frame);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let read = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            read = recv.read(&mut chunk) => read,
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => break,
        };
        decoder.push(&chunk[..n]);
        let mut answered = 0usize;
        loop {
            match decoder.next_frame() {
                Ok(Some((id, payload))) => {
                    ctx.metrics.in_flight.increment(1.0);
                    match answer_frame(payload, role, &ctx).await {
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
                        if send.write_all(&out).await.is_err() {
                            return;
                        }
                        ctx.metrics.in_flight.decrement(answered as f64);
                        out.clear();
                        answered = 0;
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
                    Counters::add(&ctx.counters.errors, 1);
                    wire::encode_response(
                        0,
                        &Response::Error(ErrorReply::new(code, e.to_string())),
                        &mut out,
                    );
                    let _ = send.write_all(&out).await;
                    ctx.metrics.in_flight.decrement(answered as f64);
                    let _ = send.finish();
                    // Give the peer a moment to read the reason before the close.
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                    conn.close(2u32.into(), e.to_string().as_bytes());
                    return;
                }
            }
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        ctx.metrics.in_flight.decrement(answered as f64);
    }
    let _ = send.finish();
}

/// An answer to one request frame: a response to encode, or one encoded before (a cached
/// get-table answer).
enum Answer {
    Response(Response),
    Archived(Arc<rkyv::util::AlignedVec>),
}

async fn answer_frame(payload: &[u8], role: ClientRole, ctx: &Ctx) -> Answer {
    Counters::add(&ctx.counters.requests, 1);
    let response = match wire::access_request(payload) {
        Err(e) => {
            metrics::request("malformed");
            Response::Error(ErrorReply::new(ErrorCode::Malformed, e.to_string()))
        }
        Ok(req) if req.is_write() => {
            metrics::request("write");
            match role {
                // An admin's write is forwarded to the peers once applied here.
                ClientRole::Admin => submit_write(req, ctx, true).await,
                // A peer's write was forwarded to every server already. One that does not
                // apply here because this server lacks its base is caught up by anti-entropy.
                ClientRole::Peer => {
                    let r = submit_write(req, ctx, false).await;
                    if matches!(&r, Response::Error(e) if e.code == ErrorCode::Conflict) {
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
            metrics::request("stats");
            Response::Stats(stats(ctx))
        }
        Ok(ArchivedRequest::Summary) => {
            metrics::request("summary");
            Response::Summary(ctx.fleet.summary(&ctx.store))
        }
        // Until the server has caught up with its peers, what it holds may be older than what
        // routers have seen: they are sent elsewhere. Peers and the writes above still pass.
        Ok(
            ArchivedRequest::Lookup { .. }
            | ArchivedRequest::BatchLookup { .. }
            | ArchivedRequest::Range { .. }
            | ArchivedRequest::GetNodes { .. }
            | ArchivedRequest::GetTable { .. },
        ) if role != ClientRole::Peer && !ctx.fleet.is_ready() => {
            metrics::request("read");
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
            metrics::request("read");
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
                    metrics::request(crate::metrics::LOOKUP_OPS[op]);
                    let ok = !matches!(response, Response::Error(_));
                    ctx.metrics
                        .lookup(op, ok, outcome.lookups, started.elapsed());
                    if ok {
                        Counters::add(&ctx.counters.lookups, outcome.lookups);
                    }
                }
                None => metrics::request("read"),
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
    let write = match owned {
        Request::PutTable { snapshot } => Write::Put { snapshot },
        Request::UpdatePartitions(u) => Write::Update(u),
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
    let (tables, partitions, resident_bytes) = service::totals(&ctx.store);
    let c = &ctx.counters;
    ServerStats {
        server_version: env!("CARGO_PKG_VERSION").into(),
        tables,
        partitions,
        resident_bytes,
        node_records: ctx.store.node_records().0,
        connections: c.connections.load(Ordering::Relaxed),
        lookups_total: c.lookups.load(Ordering::Relaxed),
        requests_total: c.requests.load(Ordering::Relaxed),
        errors_total: c.errors.load(Ordering::Relaxed),
        writes_total: c.writes.load(Ordering::Relaxed),
        cpu_seconds: process_cpu_seconds().unwrap_or(0.0),
        uptime_seconds: ctx.started.elapsed().as_secs_f64(),
    }
}

/// Publishes the table gauges from the store.
pub(crate) fn publish_table_gauges(store: &Store) {
    let (tables, partitions, bytes) = service::totals(store);
    ::metrics::gauge!("memds_tables").set(tables as f64);
    ::metrics::gauge!("memds_partitions").set(partitions as f64);
    ::metrics::gauge!("memds_resident_bytes").set(bytes as f64);
    for t in store.tables().values() {
        ::metrics::gauge!("memds_table_version", "table" => t.name().as_str().to_owned())
            .set(t.version().get() as f64);
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
