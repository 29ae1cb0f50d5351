//! Connections to MemDS servers with pipelined, id-matched requests.
//!
//! A [`Client`] owns one QUIC connection and one bidirectional stream on it. Callers encode
//! their frame and hand it to a writer task, which coalesces every frame waiting into one
//! write; a reader task splits the answers into frames and completes each caller by request id.
//! Thousands of requests can be in flight on one connection, and many tasks can share a client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use memds_proto::TableMap;
use memds_proto::snapshot::{self, SnapshotError};
use memds_proto::wire::{
    self, BatchUpdate, ErrorReply, FrameDecoder, HashRange, NodeList, PartitionUpdate, Protocol,
    Request, Response, Routes, ServerInfo, ServerStats, Summary, TableInfo, TreeDigests, WriteAck,
};
use tokio::sync::{mpsc, oneshot};

use crate::tls::{ClientTls, TlsError};

/// Why a request did not get an answer, or got an error answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS material or configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local endpoint could not be created.
    #[error("creating the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The connection could not be established.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: ConnectError,
    },
    /// The connection is closed; the request may or may not have been performed.
    #[error("connection closed: {0}")]
    Closed(#[source] CloseReason),
    /// The server answered with a typed error.
    #[error("server answered {}: {}", .0.code.as_str(), .0.message)]
    Server(ErrorReply),
    /// The server's answer was of the wrong kind, or did not answer the request (a get-table
    /// answered with another table).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server's answer did not decode (its archive failed validation).
    #[error("protocol error: {0}")]
    Decode(#[source] wire::WireError),
    /// A get-table answer's snapshot was refused: it declares more than
    /// [`ConnectOptions::max_snapshot_bytes`] uncompressed (refused before anything is
    /// allocated for it), or it is damaged or holds an invalid map.
    #[error("refusing the server's snapshot: {0}")]
    Snapshot(#[source] SnapshotError),
    /// No answer within the caller's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request is not in the protocol version the connection speaks (a memds/2 request to
    /// a server of the previous release): nothing was sent.
    #[error("the server speaks {protocol}, which has no {request} request (it needs {needs})")]
    NotInProtocol {
        /// The request.
        request: &'static str,
        /// The connection's protocol version.
        protocol: Protocol,
        /// The version the request needs.
        needs: Protocol,
    },
}

/// Why a connection could not be established: the error that stopped it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection could not be started (a bad server name or address, the endpoint
    /// closed).
    #[error(transparent)]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed, or the connection was lost before its stream opened.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// No connection within the caller's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The handshake settled on no protocol version this build speaks.
    #[error("the server chose protocol {0:?}, which this build does not speak")]
    Protocol(String),
}

/// Why a connection closed: what was under way, and the error that closed it, if any (a
/// connection loss carries the server's close reason: its connection limit, a bad frame,
/// shutdown). Cheap to clone: every request pending on the connection gets one.
#[derive(Clone, Debug)]
pub struct CloseReason {
    what: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CloseReason {
    /// A reason without an underlying error.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// A reason with the error behind it: `what` says what was under way ("reading from the
    /// server"), or is empty when the error says it all.
    pub fn caused_by(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            None => f.write_str(&self.what),
            Some(source) if self.what.is_empty() => write!(f, "{source}"),
            Some(source) => write!(f, "{}: {source}", self.what),
        }
    }
}

impl std::error::Error for CloseReason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<&str> for CloseReason {
    fn from(what: &str) -> Self {
        Self::new(what)
    }
}

impl From<String> for CloseReason {
    fn from(what: String) -> Self {
        Self::new(what)
    }
}

impl ClientError {
    /// The error for an answer of the wrong kind: [`ClientError::Protocol`] naming the
    /// answer's kind.
    pub fn unexpected(answer: &Response) -> Self {
        // Only the variant's name is wanted: formatting the whole answer (a snapshot of tens of
        // megabytes sent in reply to a lookup) would cost several times its size, so the text
        // is cut off after its first bytes.
        let mut kind = Bounded(String::new());
        let _ = std::fmt::Write::write_fmt(&mut kind, format_args!("{answer:?}"));
        let kind = kind.0.split(['(', ' ', '{']).next().unwrap_or_default();
        ClientError::Protocol(format!("unexpected answer {kind}"))
    }
}

/// The answer to [`Client::get_delta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaAnswer {
    /// What changed: applied as an update to the table at its `base_version` (the version
    /// asked about), it gives the table at its `version`.
    Delta(BatchUpdate),
    /// The table is not newer than the version asked about; the server holds this version.
    NotModified(u64),
    /// The server cannot tell what changed (its history does not reach back that far, or the
    /// table was replaced whole since): fetch the whole table. The server holds this version.
    NoDelta(u64),
}

/// Connection options.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// The local address to bind the endpoint to.
    pub bind: SocketAddr,
    /// Largest frame accepted from the server: what one answer can make the client buffer
    /// (a get-table answer's compressed snapshot included).
    pub max_frame_bytes: usize,
    /// Largest uncompressed table a get-table answer may declare; a snapshot declaring more is
    /// refused ([`ClientError::Snapshot`]) before anything is allocated for it. The default is
    /// [`snapshot::DEFAULT_MAX_ARCHIVE_BYTES`].
    pub max_snapshot_bytes: u64,
    /// Close the connection after this long without traffic (keep-alives are sent at a third of
    /// it, so an idle but healthy connection stays open).
    pub idle_timeout: Duration,
    /// The protocol versions to offer, newest first: every version this build speaks by
    /// default. Offering only `memds/1` makes the client talk as a router of release 0.1.0
    /// would (the mixed-version tests use it).
    pub protocols: Vec<Protocol>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_snapshot_bytes: snapshot::DEFAULT_MAX_ARCHIVE_BYTES,
            idle_timeout: Duration::from_secs(30),
            protocols: Protocol::SPOKEN.to_vec(),
        }
    }
}

/// One local QUIC endpoint from which to connect to any number of servers.
#[derive(Clone, Debug)]
pub struct Connector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    options: ConnectOptions,
}

impl Connector {
    /// Creates the endpoint (inside a tokio runtime).
    pub fn new(tls: &ClientTls, options: ConnectOptions) -> Result<Self, ClientError> {
        let mut config = tls.quic_config_offering(&options.protocols)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(options.idle_timeout.try_into().map_err(
                |e: quinn::VarIntBoundsExceeded| TlsError::Config(e.to_string()),
            )?))
            .keep_alive_interval(Some(options.idle_timeout / 3));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client(options.bind).map_err(ClientError::Endpoint)?;
        Ok(Self {
            endpoint,
            config,
            options,
        })
    }

    /// Connects to a server.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        let connect_error = |source: ConnectError| ClientError::Connect { addr, source };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, &self.options.server_name)
            .map_err(|e| connect_error(e.into()))?;
        let conn = connecting.await.map_err(|e| connect_error(e.into()))?;
        let protocol = negotiated(&conn).map_err(connect_error)?;
        let (send, recv) = conn.open_bi().await.map_err(|e| connect_error(e.into()))?;
        Ok(Client::start(conn, protocol, send, recv, &self.options))
    }

    /// Closes the endpoint and every connection made from it.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"closing");
    }
}

/// The protocol version the handshake settled on.
fn negotiated(conn: &quinn::Connection) -> Result<Protocol, ConnectError> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn {
        Some(id) => Protocol::from_alpn(&id)
            .ok_or_else(|| ConnectError::Protocol(String::from_utf8_lossy(&id).into_owned())),
        None => Err(ConnectError::Protocol("none".into())),
    }
}

type Reply = Result<Response, ClientError>;

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
}

impl Shared {
    fn fail_all(&self, reason: CloseReason) {
        self.closed.store(true, Ordering::SeqCst);
        self.close_reason
            .lock()
            .expect("close_reason lock is never poisoned")
            .get_or_insert_with(|| reason.clone());
        let pending: Vec<_> = self
            .pending
            .lock()
            .expect("pending lock is never poisoned")
            .drain()
            .collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(ClientError::Closed(reason.clone())));
        }
    }
}

/// What a connection's transport has carried: UDP datagrams and bytes each way, the system
/// calls that sent them, and the acknowledgement frames among them. Counters only grow; the
/// traffic of a window is [`TransportStats::since`] its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// Bytes sent in UDP datagrams.
    pub bytes_sent: u64,
    /// Bytes received in UDP datagrams.
    pub bytes_received: u64,
    /// System calls that sent datagrams (with segmentation offload one carries several).
    pub send_calls: u64,
    /// ACK frames sent (alone in a datagram or riding with data).
    pub acks_sent: u64,
    /// ACK frames received.
    pub acks_received: u64,
}

impl TransportStats {
    /// The traffic between `earlier` and `self` (counters of the same connections).
    pub fn since(&self, earlier: &TransportStats) -> TransportStats {
        TransportStats {
            datagrams_sent: self.datagrams_sent.saturating_sub(earlier.datagrams_sent),
            datagrams_received: self
                .datagrams_received
                .saturating_sub(earlier.datagrams_received),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            send_calls: self.send_calls.saturating_sub(earlier.send_calls),
            acks_sent: self.acks_sent.saturating_sub(earlier.acks_sent),
            acks_received: self.acks_received.saturating_sub(earlier.acks_received),
        }
    }

    /// Datagrams both ways.
    pub fn datagrams(&self) -> u64 {
        self.datagrams_sent + self.datagrams_received
    }
}

impl std::ops::AddAssign for TransportStats {
    fn add_assign(&mut self, other: TransportStats) {
        self.datagrams_sent += other.datagrams_sent;
        self.datagrams_received += other.datagrams_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.send_calls += other.send_calls;
        self.acks_sent += other.acks_sent;
        self.acks_received += other.acks_received;
    }
}

impl From<quinn::ConnectionStats> for TransportStats {
    fn from(s: quinn::ConnectionStats) -> Self {
        TransportStats {
            datagrams_sent: s.udp_tx.datagrams,
            datagrams_received: s.udp_rx.datagrams,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            send_calls: s.udp_tx.ios,
            acks_sent: s.frame_tx.acks,
            acks_received: s.frame_rx.acks,
        }
    }
}

/// One connection to a server; cheap to clone, shared by any number of tasks.
#[derive(Clone)]
pub struct Client {
    conn: quinn::Connection,
    protocol: Protocol,
    frames: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    max_snapshot_bytes: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl Client {
    fn start(
        conn: quinn::Connection,
        protocol: Protocol,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        options: &ConnectOptions,
    ) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
        });
        let (frames, rx) = mpsc::channel(4096);
        tokio::spawn(write_loop(send, rx, Arc::clone(&shared)));
        tokio::spawn(read_loop(
            recv,
            options.max_frame_bytes,
            Arc::clone(&shared),
        ));
        Self {
            conn,
            protocol,
            frames,
            shared,
            max_snapshot_bytes: options.max_snapshot_bytes,
        }
    }

    /// The protocol version this connection speaks (the newest both sides offered).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The server's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// What the transport has carried on this connection so far (QUIC's own counters).
    pub fn transport_stats(&self) -> TransportStats {
        TransportStats::from(self.conn.stats())
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst) || self.conn.close_reason().is_some()
    }

    /// Completes when the connection is closed, by either side or by its idle timeout.
    pub async fn closed(&self) {
        self.conn.closed().await;
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"client closing");
        self.shared.fail_all("closed by the client".into());
    }

    /// Sends a request and waits for its answer. An error answer is [`ClientError::Server`].
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        match self.send(request).await?.await {
            Ok(Response::Error(e)) => Err(ClientError::Server(e)),
            other => other,
        }
    }

    /// Like [`Client::call`], failing with [`ClientError::Timeout`] after `timeout`.
    pub async fn call_timeout(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        tokio::time::timeout(timeout, self.call(request))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Queues a request; the [`PendingReply`] completes with its answer (an error answer is
    /// `Ok(Response::Error(..))` here). Dropping it stops waiting and forgets the request.
    pub async fn send(&self, request: &Request) -> Result<PendingReply, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed(self.close_reason()));
        }
        let needs = request.since();
        if needs > self.protocol {
            return Err(ClientError::NotInProtocol {
                request: request.kind(),
                protocol: self.protocol,
                needs,
            });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        wire::encode_request(id, request, &mut frame);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock is never poisoned")
            .insert(id, tx);
        // From here the entry is the guard's: if this call is cancelled or the frame cannot be
        // queued, dropping the guard removes it.
        let pending = PendingReply {
            id,
            rx,
            shared: Arc::clone(&self.shared),
            conn: self.conn.clone(),
            done: false,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(ClientError::Closed(self.close_reason()));
        }
        Ok(pending)
    }

    fn close_reason(&self) -> CloseReason {
        close_reason(&self.conn, &self.shared)
    }

    /// The server's release, build, protocol versions and format versions (memds/2; a server
    /// of the previous release answers [`ClientError::NotInProtocol`] without anything sent).
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        match self.call(&Request::ServerInfo).await? {
            Response::ServerInfo(info) => Ok(info),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The route of one hash.
    pub async fn lookup(&self, table: &str, hash: u64) -> Result<Routes, ClientError> {
        self.lookup_at_least(table, hash, None).await
    }

    /// The route of one hash from a table at `min_version` or newer: a server holding an older
    /// version answers [`ErrorCode::Behind`](memds_proto::wire::ErrorCode::Behind).
    pub async fn lookup_at_least(
        &self,
        table: &str,
        hash: u64,
        min_version: Option<u64>,
    ) -> Result<Routes, ClientError> {
        expect_routes(
            self.call(&Request::Lookup {
                table: table.into(),
                hash,
                min_version,
            })
            .await?,
        )
    }

    /// The routes of many hashes, in order.
    pub async fn batch_lookup(&self, table: &str, hashes: Vec<u64>) -> Result<Routes, ClientError> {
        self.batch_lookup_at_least(table, hashes, None).await
    }

    /// The routes of many hashes from a table at `min_version` or newer.
    pub async fn batch_lookup_at_least(
        &self,
        table: &str,
        hashes: Vec<u64>,
        min_version: Option<u64>,
    ) -> Result<Routes, ClientError> {
        expect_routes(
            self.call(&Request::BatchLookup {
                table: table.into(),
                hashes,
                min_version,
            })
            .await?,
        )
    }

    /// What the server holds: every table's version and digest and every tombstone.
    pub async fn summary(&self) -> Result<Summary, ClientError> {
        match self.call(&Request::Summary).await? {
            Response::Summary(s) => Ok(s),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The whole table as the server sent it (its version and snapshot bytes, not decoded),
    /// or `None` if it is not newer than `if_newer_than`: what a peer stores as it is.
    pub async fn get_table_snapshot(
        &self,
        table: &str,
        if_newer_than: Option<u64>,
    ) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        match self
            .call(&Request::GetTable {
                table: table.into(),
                if_newer_than,
            })
            .await?
        {
            Response::Table { version, snapshot } => Ok(Some((version, snapshot))),
            Response::NotModified { .. } => Ok(None),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The routes of the partitions overlapping `[from, to)`, at most `limit`.
    pub async fn range(
        &self,
        table: &str,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Routes, ClientError> {
        expect_routes(
            self.call(&Request::Range {
                table: table.into(),
                from,
                to,
                limit,
                min_version: None,
            })
            .await?,
        )
    }

    /// The table's node list.
    pub async fn get_nodes(&self, table: &str) -> Result<NodeList, ClientError> {
        match self
            .call(&Request::GetNodes {
                table: table.into(),
            })
            .await?
        {
            Response::Nodes(n) => Ok(n),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The whole table, or `None` if it is not newer than `if_newer_than`. A snapshot that
    /// declares more than [`ConnectOptions::max_snapshot_bytes`] uncompressed is refused
    /// ([`ClientError::Snapshot`]) before anything is allocated for it; a snapshot of another
    /// table is [`ClientError::Protocol`].
    pub async fn get_table(
        &self,
        table: &str,
        if_newer_than: Option<u64>,
    ) -> Result<Option<TableMap>, ClientError> {
        match self
            .call(&Request::GetTable {
                table: table.into(),
                if_newer_than,
            })
            .await?
        {
            Response::Table { snapshot, .. } => {
                let map = snapshot::decode(&snapshot, self.max_snapshot_bytes)
                    .map_err(ClientError::Snapshot)?;
                // Callers file the map under the name they asked for; another table's map
                // would be cached as this one's.
                if map.name().as_str() != table {
                    return Err(ClientError::Protocol(format!(
                        "asked for table {table:?}, the snapshot holds {:?}",
                        map.name().as_str()
                    )));
                }
                Ok(Some(map))
            }
            Response::NotModified { .. } => Ok(None),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// Every table.
    pub async fn list_tables(&self) -> Result<Vec<TableInfo>, ClientError> {
        match self.call(&Request::ListTables).await? {
            Response::Tables(t) => Ok(t),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The server's counters.
    pub async fn stats(&self) -> Result<ServerStats, ClientError> {
        match self.call(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// Stores a whole table (admin certificate needed).
    pub async fn put_table(&self, map: &TableMap) -> Result<WriteAck, ClientError> {
        expect_written(
            self.call(&Request::PutTable {
                snapshot: snapshot::encode(map),
            })
            .await?,
        )
    }

    /// Applies a partial update (admin certificate needed).
    pub async fn update_partitions(
        &self,
        update: impl Into<PartitionUpdate>,
    ) -> Result<WriteAck, ClientError> {
        expect_written(self.call(&Request::UpdatePartitions(update.into())).await?)
    }

    /// Applies many partial updates of one table atomically, at one new version (admin
    /// certificate needed).
    pub async fn update_batch(
        &self,
        update: impl Into<BatchUpdate>,
    ) -> Result<WriteAck, ClientError> {
        expect_written(self.call(&Request::UpdateBatch(update.into())).await?)
    }

    /// What changed in a table since version `since`. A delta of another table, or not based
    /// on `since`, is [`ClientError::Protocol`].
    pub async fn get_delta(&self, table: &str, since: u64) -> Result<DeltaAnswer, ClientError> {
        match self
            .call(&Request::GetDelta {
                table: table.into(),
                since,
            })
            .await?
        {
            Response::Delta(d) => {
                // Callers apply the delta to the table they asked about, at the version they
                // hold: anything else would corrupt their copy.
                if d.table != table || d.base_version != since {
                    return Err(ClientError::Protocol(format!(
                        "asked for the delta of table {table:?} since {since}, got one of {:?} \
                         since {}",
                        d.table, d.base_version
                    )));
                }
                Ok(DeltaAnswer::Delta(d))
            }
            Response::NotModified { version } => Ok(DeltaAnswer::NotModified(version)),
            Response::NoDelta { version } => Ok(DeltaAnswer::NoDelta(version)),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The Merkle digests of a table's tree nodes at `level` overlapping `[from,
    /// end_inclusive]` (peer or admin certificate needed); `truncated` if the server stopped at
    /// its bound.
    pub async fn tree_digests(
        &self,
        table: &str,
        level: u32,
        from: u64,
        end_inclusive: u64,
    ) -> Result<TreeDigests, ClientError> {
        match self
            .call(&Request::TreeDigests {
                table: table.into(),
                level,
                from,
                end_inclusive,
            })
            .await?
        {
            Response::TreeDigests(t) => Ok(t),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// The current partitions covering each range (sorted, disjoint), widened to partition
    /// boundaries, with the nodes they use, as an update whose `base_version` is 0 (peer or
    /// admin certificate needed). An answer about another table is [`ClientError::Protocol`].
    pub async fn get_ranges(
        &self,
        table: &str,
        ranges: &[HashRange],
    ) -> Result<BatchUpdate, ClientError> {
        match self
            .call(&Request::GetRanges {
                table: table.into(),
                ranges: ranges.to_vec(),
            })
            .await?
        {
            Response::Delta(d) if d.table == table => Ok(d),
            Response::Delta(d) => Err(ClientError::Protocol(format!(
                "asked for ranges of table {table:?}, got {:?}",
                d.table
            ))),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// Drops a table (admin certificate needed), leaving a tombstone; answers the version
    /// dropped. See [`Client::drop_table_at`] to name the version.
    pub async fn drop_table(&self, table: &str) -> Result<u64, ClientError> {
        self.drop_table_version(table, None).await
    }

    /// Drops version `version` of a table: refused `stale` if the server holds a newer one, and
    /// recorded as a tombstone even where the server holds an older one or none.
    pub async fn drop_table_at(&self, table: &str, version: u64) -> Result<u64, ClientError> {
        self.drop_table_version(table, Some(version)).await
    }

    async fn drop_table_version(
        &self,
        table: &str,
        version: Option<u64>,
    ) -> Result<u64, ClientError> {
        match self
            .call(&Request::DropTable {
                table: table.into(),
                version,
            })
            .await?
        {
            Response::Dropped { version, .. } => Ok(version),
            other => Err(ClientError::unexpected(&other)),
        }
    }
}

/// The answer to a request queued with [`Client::send`], as a future. Dropped before the answer
/// arrives (a caller's timeout, a hedge that lost), it forgets the request: a server that never
/// answers leaves nothing behind for the requests its callers gave up on.
#[must_use = "the answer is lost unless awaited"]
pub struct PendingReply {
    id: u64,
    rx: oneshot::Receiver<Reply>,
    shared: Arc<Shared>,
    conn: quinn::Connection,
    /// The answer was taken: the reader removed the entry when it sent it.
    done: bool,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Future for PendingReply {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = self.get_mut();
        let reply = std::task::ready!(Pin::new(&mut this.rx).poll(cx));
        this.done = true;
        Poll::Ready(
            reply.unwrap_or_else(|_| {
                Err(ClientError::Closed(close_reason(&this.conn, &this.shared)))
            }),
        )
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .pending
                .lock()
                .expect("pending lock is never poisoned")
                .remove(&self.id);
        }
    }
}

/// Why the connection is closed: quinn's reason if it has one, else the reader's or writer's.
fn close_reason(conn: &quinn::Connection, shared: &Shared) -> CloseReason {
    if let Some(r) = conn.close_reason() {
        return CloseReason::caused_by("", r);
    }
    shared
        .close_reason
        .lock()
        .expect("close_reason lock is never poisoned")
        .clone()
        .unwrap_or_else(|| "connection closed".into())
}

fn expect_routes(r: Response) -> Result<Routes, ClientError> {
    match r {
        Response::Routes(routes) => Ok(routes),
        other => Err(ClientError::unexpected(&other)),
    }
}

fn expect_written(r: Response) -> Result<WriteAck, ClientError> {
    match r {
        Response::Written(ack) => Ok(ack),
        other => Err(ClientError::unexpected(&other)),
    }
}

/// A string that refuses writes past [`Bounded::MAX`] bytes, ending the formatting there.
struct Bounded(String);

impl Bounded {
    const MAX: usize = 64;
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = Self::MAX.saturating_sub(self.0.len());
        if s.len() > room {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    const MAX_COALESCED: usize = 1 << 20;
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first);
        while buf.len() < MAX_COALESCED {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            let what = "writing to the server";
            shared.fail_all(match e {
                // The connection's own error carries the server's close reason.
                quinn::WriteError::ConnectionLost(lost) => CloseReason::caused_by(what, lost),
                other => CloseReason::caused_by(what, other),
            });
            return;
        }
        buf.clear();
    }
    let _ = send.finish();
}

async fn read_loop(mut recv: quinn::RecvStream, max_frame: usize, shared: Arc<Shared>) {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                shared.fail_all("the server finished the stream".into());
                return;
            }
            Err(quinn::ReadError::ConnectionLost(lost)) => {
                // The connection's own error carries the server's close reason (its connection
                // limit, a bad frame, shutdown), which the read error's text leaves out.
                shared.fail_all(CloseReason::caused_by("reading from the server", lost));
                return;
            }
            Err(e) => {
                shared.fail_all(CloseReason::caused_by("reading from the server", e));
                return;
            }
        };
        decoder.push(&chunk[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some((id, payload))) => {
                    let reply = wire::decode_response(payload).map_err(ClientError::Decode);
                    if id == 0 {
                        // Id 0 is the server speaking about the connection itself (for
                        // instance a frame over its limit) just before it closes it.
                        let reason = match &reply {
                            Ok(Response::Error(e)) => CloseReason::caused_by("", e.clone()),
                            _ => "the server reported a connection error".into(),
                        };
                        shared.fail_all(reason);
                        return;
                    }
                    let tx = shared
                        .pending
                        .lock()
                        .expect("pending lock is never poisoned")
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(reply);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.fail_all(CloseReason::caused_by("bad frame from the server", e));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_answer_is_named_without_formatting_all_of_it() {
        // Formatted whole, this answer would be about 50 MB of text.
        let huge = Response::Table {
            version: 1,
            snapshot: vec![255; 10 << 20],
        };
        match ClientError::unexpected(&huge) {
            ClientError::Protocol(reason) => assert_eq!(reason, "unexpected answer Table"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        match ClientError::unexpected(&Response::Stats(ServerStats::default())) {
            ClientError::Protocol(reason) => assert_eq!(reason, "unexpected answer Stats"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn an_answer_that_does_not_decode_keeps_the_decoder_error_as_its_source() {
        let cause = wire::decode_response(&[0xAB; 40]).expect_err("garbage does not decode");
        let e = ClientError::Decode(cause.clone());
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), cause.to_string());
        assert_eq!(e.to_string(), format!("protocol error: {cause}"));
    }
}
