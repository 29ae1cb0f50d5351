//! Prometheus metrics: every series declared and described here, once, and the `/metrics`
//! page (served by [`crate::http`]).
//!
//! As in neon's pageserver, no other module names a series: each name is a constant below,
//! described in `describe`, and the rest of the server records through the typed functions and
//! handles of this module ([`Metrics`] for the lookup hot path, [`connection_opened`],
//! [`write_done`], [`scrub_pass`], [`tables`], ...), whose label arguments are enums
//! ([`LookupOp`], [`RequestKind`], [`WriteResult`], ...) so only bounded label values exist.
//! This module depends on nothing else in the crate, so every other module may use it without
//! a cycle.
//!
//! Names follow Prometheus conventions: the `memds_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters. Labels are bounded: operation and result names, error codes, client
//! roles, peer addresses, and table names for the per-table version gauge (one series per table
//! held).
//!
//! The recorder is process-global (the `metrics` facade has one), so several servers started in
//! one process (as tests do) share it; the per-server counters that `stats` reports live in
//! [`Counters`] instead.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memds_proto::wire::ErrorCode;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// Every series the server exports, by name. `describe` documents each one.
const LOOKUPS_TOTAL: &str = "memds_lookups_total";
const LOOKUP_DURATION_SECONDS: &str = "memds_lookup_duration_seconds";
const REQUESTS_TOTAL: &str = "memds_requests_total";
const REQUESTS_IN_FLIGHT: &str = "memds_requests_in_flight";
const CONNECTIONS: &str = "memds_connections";
const CONNECTIONS_TOTAL: &str = "memds_connections_total";
const CONNECTIONS_REFUSED_TOTAL: &str = "memds_connections_refused_total";
const HANDSHAKES_IN_PROGRESS: &str = "memds_handshakes_in_progress";
const QUIC_RETRIES_TOTAL: &str = "memds_quic_retries_total";
const STREAM_RESETS_TOTAL: &str = "memds_stream_resets_total";
const LOOKUPS_SHED_TOTAL: &str = "memds_lookups_shed_total";
const LOOKUP_LIMIT: &str = "memds_lookup_limit";
const ERRORS_TOTAL: &str = "memds_errors_total";
const TABLES: &str = "memds_tables";
const PARTITIONS: &str = "memds_partitions";
const RESIDENT_BYTES: &str = "memds_resident_bytes";
const TABLE_VERSION: &str = "memds_table_version";
const WRITES_TOTAL: &str = "memds_writes_total";
const WRITE_DURATION_SECONDS: &str = "memds_write_duration_seconds";
const WAL_BYTES: &str = "memds_wal_bytes";
const COMPACTIONS_TOTAL: &str = "memds_compactions_total";
const SNAPSHOT_CACHE_BYTES: &str = "memds_snapshot_cache_bytes";
const COMPACTION_FAILURES_TOTAL: &str = "memds_compaction_failures_total";
const SCRUB_PASSES_TOTAL: &str = "memds_scrub_passes_total";
const SCRUB_BYTES_TOTAL: &str = "memds_scrub_bytes_total";
const SCRUB_DAMAGED_TOTAL: &str = "memds_scrub_damaged_total";
const SCRUB_REPAIRS_TOTAL: &str = "memds_scrub_repairs_total";
const READY: &str = "memds_ready";
const PEERS: &str = "memds_peers";
const PEER_LAG_VERSIONS: &str = "memds_peer_lag_versions";
const PEER_LAG_SECONDS: &str = "memds_peer_lag_seconds";
const ANTI_ENTROPY_ROUNDS_TOTAL: &str = "memds_anti_entropy_rounds_total";
const ANTI_ENTROPY_TABLES_PULLED_TOTAL: &str = "memds_anti_entropy_tables_pulled_total";
const ANTI_ENTROPY_BYTES_PULLED_TOTAL: &str = "memds_anti_entropy_bytes_pulled_total";
const ANTI_ENTROPY_PULLS_TOTAL: &str = "memds_anti_entropy_pulls_total";
const DIGEST_MISMATCHES_TOTAL: &str = "memds_digest_mismatches_total";
const FORWARDS_TOTAL: &str = "memds_forwards_total";
const HTTP_ACCEPT_ERRORS_TOTAL: &str = "memds_http_accept_errors_total";
const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "memds_http_connections_refused_total";
const BUILD_INFO: &str = "memds_build_info";

/// Declares a label enum: its variants, each with its label value, `ALL`, and `as_str`.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

labels! {
    /// Lookup operations: the `op` of `memds_lookups_total` and
    /// `memds_lookup_duration_seconds`, and their `kind` in `memds_requests_total`.
    LookupOp {
        /// One hash.
        Lookup => "lookup",
        /// A batch of hashes.
        BatchLookup => "batch_lookup",
        /// A range scan.
        Range => "range",
    }
}

labels! {
    /// Why a connection is refused: the `reason` of `memds_connections_refused_total`.
    RefusalReason {
        /// Past `max_connections` authenticated connections.
        ConnectionLimit => "connection_limit",
        /// Past `max_handshakes` handshakes in progress.
        HandshakeLimit => "handshake_limit",
        /// The handshake took longer than `handshake_timeout`.
        HandshakeTimeout => "handshake_timeout",
        /// The handshake failed.
        Handshake => "handshake",
        /// No client certificate, or one that names no role.
        NoCertificate => "no_certificate",
    }
}

labels! {
    /// Why the server reset a stream (`memds_stream_resets_total`): a frame that did not
    /// arrive whole in time, or an answer the client did not read in time.
    StreamResetReason {
        /// A frame did not arrive whole in time.
        FrameTimeout => "frame_timeout",
        /// The client did not take its answers in time.
        WriteTimeout => "write_timeout",
    }
}

labels! {
    /// Write operations: the `op` of `memds_writes_total`.
    WriteOp {
        /// A whole table.
        PutTable => "put_table",
        /// One range update.
        UpdatePartitions => "update_partitions",
        /// A batch of range updates.
        UpdateBatch => "update_batch",
        /// A table dropped.
        DropTable => "drop_table",
    }
}

labels! {
    /// What a write came to: the `result` of `memds_writes_total`.
    WriteResult {
        /// Logged, made durable and published.
        Applied => "applied",
        /// Acknowledged without a change (already held, or already dropped).
        Unchanged => "unchanged",
        /// Answered with an error.
        Error => "error",
    }
}

labels! {
    /// How a damaged resident table was repaired: the `result` of `memds_scrub_repairs_total`.
    RepairResult {
        /// Rebuilt from the data directory.
        Repaired => "repaired",
        /// Neither the data directory nor (yet) a peer could rebuild it.
        Failed => "failed",
        /// Reinstalled from a peer's copy of the same version.
        FromPeer => "from_peer",
    }
}

labels! {
    /// How a table was pulled from a peer: the `kind` of `memds_anti_entropy_pulls_total`.
    PullKind {
        /// The peer's record of what changed since our version.
        Delta => "delta",
        /// The blocks a Merkle descent found different.
        Merkle => "merkle",
        /// The whole table.
        Snapshot => "snapshot",
    }
}

labels! {
    /// Why the metrics listener closed a connection: the `reason` of
    /// `memds_http_connections_refused_total`.
    HttpRefusal {
        /// At the connection cap.
        Limit => "limit",
        /// No request in time, or past the connection deadline.
        Timeout => "timeout",
    }
}

/// Kinds of request frames: the `kind` of `memds_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A read that is neither a lookup nor one of the kinds below (node lists, get-table).
    Read,
    /// A write (put, update, batch, drop).
    Write,
    /// `stats`.
    Stats,
    /// A fleet summary.
    Summary,
    /// A delta since a version.
    GetDelta,
    /// Tree digests (anti-entropy).
    TreeDigests,
    /// A range pull (anti-entropy).
    GetRanges,
    /// A frame that is no valid request.
    Malformed,
    /// A lookup, by operation.
    Lookup(LookupOp),
}

impl RequestKind {
    /// The kinds whose series exist from the start, at zero.
    pub const REGISTERED: [RequestKind; 8] = [
        RequestKind::Read,
        RequestKind::Write,
        RequestKind::Stats,
        RequestKind::Summary,
        RequestKind::GetDelta,
        RequestKind::TreeDigests,
        RequestKind::GetRanges,
        RequestKind::Malformed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Stats => "stats",
            RequestKind::Summary => "summary",
            RequestKind::GetDelta => "get_delta",
            RequestKind::TreeDigests => "tree_digests",
            RequestKind::GetRanges => "get_ranges",
            RequestKind::Malformed => "malformed",
            RequestKind::Lookup(op) => op.as_str(),
        }
    }
}

/// Client roles, as metric labels (the values of `ClientRole::as_str`).
pub const ROLES: [&str; 3] = ["router", "admin", "peer"];

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
            2.5e-2, 0.1, 0.5, 1.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("the bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host process embedding the server);
        // then our handle renders only what reaches it, which is nothing, and that is the
        // host's choice.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        LOOKUPS_TOTAL,
        Unit::Count,
        "Partition lookups served, by operation and result (a batch of n hashes counts n)."
    );
    describe_histogram!(
        LOOKUP_DURATION_SECONDS,
        Unit::Seconds,
        "Server-side time to answer one lookup request frame, by operation."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Request frames answered, by kind."
    );
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        Unit::Count,
        "Request frames received and not yet answered."
    );
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "Open client connections, by role."
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        Unit::Count,
        "Client connections accepted, by role."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections refused, by reason."
    );
    describe_gauge!(
        HANDSHAKES_IN_PROGRESS,
        Unit::Count,
        "QUIC handshakes under way (they do not count against --max-connections)."
    );
    describe_counter!(
        QUIC_RETRIES_TOTAL,
        Unit::Count,
        "Connection attempts answered with a stateless QUIC Retry (address validation) because many handshakes were under way."
    );
    describe_counter!(
        STREAM_RESETS_TOTAL,
        Unit::Count,
        "Streams the server reset, by reason (frame_timeout, write_timeout)."
    );
    describe_counter!(
        LOOKUPS_SHED_TOTAL,
        Unit::Count,
        "Lookups shed with `overloaded` by --max-lookups-per-sec (a batch of n hashes counts n)."
    );
    describe_gauge!(
        LOOKUP_LIMIT,
        Unit::Count,
        "The lookups per second this server admits (--max-lookups-per-sec); 0 means no limit."
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Requests answered with an error, by error code."
    );
    describe_gauge!(TABLES, Unit::Count, "Tables held.");
    describe_gauge!(PARTITIONS, Unit::Count, "Partitions held, over all tables.");
    describe_gauge!(
        RESIDENT_BYTES,
        Unit::Bytes,
        "Resident bytes of all compact tables and the shared node records."
    );
    describe_gauge!(TABLE_VERSION, Unit::Count, "Current version of each table.");
    describe_counter!(
        WRITES_TOTAL,
        Unit::Count,
        "Writes by operation and result (applied, unchanged, error)."
    );
    describe_histogram!(
        WRITE_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a write's arrival at the writer to its durable acknowledgement, fsync included."
    );
    describe_gauge!(WAL_BYTES, Unit::Bytes, "Size of the write-ahead log.");
    describe_counter!(
        COMPACTIONS_TOTAL,
        Unit::Count,
        "Checkpoints written (log compactions)."
    );
    describe_gauge!(
        SNAPSHOT_CACHE_BYTES,
        Unit::Bytes,
        "Encoded get-table answers held, at most one per table version asked for."
    );
    describe_counter!(
        COMPACTION_FAILURES_TOTAL,
        Unit::Count,
        "Log compactions that failed (the log keeps growing, and writes wait if it is unusable)."
    );
    describe_counter!(
        SCRUB_PASSES_TOTAL,
        Unit::Count,
        "Scrubbing passes over the resident tables."
    );
    describe_counter!(
        SCRUB_BYTES_TOTAL,
        Unit::Bytes,
        "Resident bytes whose checksums scrubbing recomputed."
    );
    describe_counter!(
        SCRUB_DAMAGED_TOTAL,
        Unit::Count,
        "Resident tables found failing their checksum."
    );
    describe_counter!(
        SCRUB_REPAIRS_TOTAL,
        Unit::Count,
        "Damaged tables reinstalled from the data directory, by result (repaired, failed)."
    );
    describe_gauge!(
        READY,
        Unit::Count,
        "1 once the server has caught up with its peers (it answers routers' lookups), else 0."
    );
    describe_gauge!(
        PEERS,
        Unit::Count,
        "Peer addresses the peer names resolve to, this server excluded."
    );
    describe_gauge!(
        PEER_LAG_VERSIONS,
        Unit::Count,
        "Table versions this server lacked at the start of its last anti-entropy round with each peer (summed over tables)."
    );
    describe_gauge!(
        PEER_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since this server last held everything each peer advertised (set at each round with that peer)."
    );
    describe_counter!(
        ANTI_ENTROPY_ROUNDS_TOTAL,
        Unit::Count,
        "Anti-entropy rounds, by result (ok, failed)."
    );
    describe_counter!(
        ANTI_ENTROPY_TABLES_PULLED_TOTAL,
        Unit::Count,
        "Tables and tombstones pulled from peers and applied."
    );
    describe_counter!(
        ANTI_ENTROPY_BYTES_PULLED_TOTAL,
        Unit::Bytes,
        "Bytes of every answer anti-entropy pulled from peers, as framed on the wire."
    );
    describe_counter!(
        ANTI_ENTROPY_PULLS_TOTAL,
        Unit::Count,
        "Tables anti-entropy pulled, by kind: delta, merkle (differing blocks) or snapshot."
    );
    describe_counter!(
        DIGEST_MISMATCHES_TOTAL,
        Unit::Count,
        "Tables a peer holds at the same version with other content."
    );
    describe_counter!(
        FORWARDS_TOTAL,
        Unit::Count,
        "Writes forwarded to peers, by peer and result (sent, failed) and reason of failure."
    );
    describe_counter!(
        HTTP_ACCEPT_ERRORS_TOTAL,
        Unit::Count,
        "Failed accepts on the metrics listener (descriptors exhausted, connections aborted before accept)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Metrics-listener connections the server closed, by reason (limit: at the connection cap; timeout: no request in time, or past the connection deadline)."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; the version label names the server build."
    );
}

/// Per-server counters that `stats` reports (the `metrics` recorder cannot be read back).
#[derive(Debug, Default)]
pub struct Counters {
    /// Partition lookups performed.
    pub lookups: AtomicU64,
    /// Lookups shed by the lookup limit.
    pub lookups_shed: AtomicU64,
    /// Request frames answered.
    pub requests: AtomicU64,
    /// Error answers.
    pub errors: AtomicU64,
    /// Writes applied.
    pub writes: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
}

impl Counters {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Handles to the hot-path metrics, registered once so the request path does no registry
/// lookups.
#[derive(Clone)]
pub struct Metrics {
    lookups_ok: [Counter; LookupOp::ALL.len()],
    lookups_error: [Counter; LookupOp::ALL.len()],
    lookup_seconds: [Histogram; LookupOp::ALL.len()],
    /// Frames received and not yet answered.
    pub in_flight: Gauge,
}

impl Metrics {
    /// Registers the handles (installing the recorder if needed).
    pub fn new() -> Self {
        handle();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        register_bounded_series();
        Self {
            lookups_ok: LookupOp::ALL
                .map(|op| metrics::counter!(LOOKUPS_TOTAL, "op" => op.as_str(), "result" => "ok")),
            lookups_error: LookupOp::ALL.map(
                |op| metrics::counter!(LOOKUPS_TOTAL, "op" => op.as_str(), "result" => "error"),
            ),
            lookup_seconds: LookupOp::ALL
                .map(|op| metrics::histogram!(LOOKUP_DURATION_SECONDS, "op" => op.as_str())),
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
        }
    }

    /// Records one lookup request frame: `count` lookups of operation `op`.
    pub fn lookup(&self, op: LookupOp, ok: bool, count: u64, elapsed: Duration) {
        let i = op as usize;
        if ok {
            self.lookups_ok[i].increment(count);
        } else {
            self.lookups_error[i].increment(count.max(1));
        }
        self.lookup_seconds[i].record(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates every series whose labels come from a fixed set, at zero (adding nothing to one
/// that exists): a rate or an alert over them then reads 0 from the start instead of nothing.
fn register_bounded_series() {
    for reason in RefusalReason::ALL {
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason.as_str()).increment(0);
    }
    for reason in StreamResetReason::ALL {
        metrics::counter!(STREAM_RESETS_TOTAL, "reason" => reason.as_str()).increment(0);
    }
    metrics::counter!(QUIC_RETRIES_TOTAL).increment(0);
    metrics::counter!(LOOKUPS_SHED_TOTAL).increment(0);
    metrics::gauge!(HANDSHAKES_IN_PROGRESS).increment(0.0);
    for kind in RequestKind::REGISTERED {
        metrics::counter!(REQUESTS_TOTAL, "kind" => kind.as_str()).increment(0);
    }
    for role in ROLES {
        metrics::counter!(CONNECTIONS_TOTAL, "role" => role).increment(0);
        metrics::gauge!(CONNECTIONS, "role" => role).increment(0.0);
    }
    for op in WriteOp::ALL {
        for result in WriteResult::ALL {
            metrics::counter!(WRITES_TOTAL, "op" => op.as_str(), "result" => result.as_str())
                .increment(0);
        }
    }
    for code in ErrorCode::ALL {
        metrics::counter!(ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    metrics::counter!(COMPACTIONS_TOTAL).increment(0);
    metrics::counter!(COMPACTION_FAILURES_TOTAL).increment(0);
    metrics::counter!(SCRUB_PASSES_TOTAL).increment(0);
    metrics::counter!(SCRUB_BYTES_TOTAL).increment(0);
    metrics::counter!(SCRUB_DAMAGED_TOTAL).increment(0);
    for result in [RepairResult::Repaired, RepairResult::Failed] {
        metrics::counter!(SCRUB_REPAIRS_TOTAL, "result" => result.as_str()).increment(0);
    }
    metrics::gauge!(WAL_BYTES).increment(0.0);
    metrics::gauge!(SNAPSHOT_CACHE_BYTES).increment(0.0);
}

/// Creates the fleet's series at zero (called when the fleet starts, so a server without
/// peers exports none of them).
pub fn register_fleet_series() {
    for result in ["ok", "failed"] {
        metrics::counter!(ANTI_ENTROPY_ROUNDS_TOTAL, "result" => result).increment(0);
    }
    metrics::counter!(ANTI_ENTROPY_TABLES_PULLED_TOTAL).increment(0);
    metrics::counter!(ANTI_ENTROPY_BYTES_PULLED_TOTAL).increment(0);
    for kind in PullKind::ALL {
        metrics::counter!(ANTI_ENTROPY_PULLS_TOTAL, "kind" => kind.as_str()).increment(0);
    }
    metrics::counter!(DIGEST_MISMATCHES_TOTAL).increment(0);
}

// Requests and connections.

/// Counts an error answer.
pub fn error(code: ErrorCode) {
    metrics::counter!(ERRORS_TOTAL, "code" => code.as_str()).increment(1);
}

/// Counts a request frame by kind.
pub fn request(kind: RequestKind) {
    metrics::counter!(REQUESTS_TOTAL, "kind" => kind.as_str()).increment(1);
}

/// Counts `cost` lookups shed by the lookup limit.
pub fn lookups_shed(cost: u64) {
    metrics::counter!(LOOKUPS_SHED_TOTAL).increment(cost);
}

/// Sets the lookups per second the server admits (0: no limit).
pub fn lookup_limit(per_sec: u64) {
    metrics::gauge!(LOOKUP_LIMIT).set(per_sec as f64);
}

/// Counts a refused connection.
pub fn connection_refused(reason: RefusalReason) {
    metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Counts a stream reset.
pub fn stream_reset(reason: StreamResetReason) {
    metrics::counter!(STREAM_RESETS_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Counts a connection attempt answered with a QUIC Retry.
pub fn quic_retry() {
    metrics::counter!(QUIC_RETRIES_TOTAL).increment(1);
}

/// Counts a handshake in progress for as long as the guard lives.
#[must_use = "the handshake is counted until the guard is dropped"]
pub struct HandshakeInProgress(Gauge);

/// Starts counting a handshake in progress.
pub fn handshake_started() -> HandshakeInProgress {
    let gauge = metrics::gauge!(HANDSHAKES_IN_PROGRESS);
    gauge.increment(1.0);
    HandshakeInProgress(gauge)
}

impl Drop for HandshakeInProgress {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts an open connection of one role for as long as the guard lives.
#[must_use = "the connection is counted open until the guard is dropped"]
pub struct OpenConnection(Gauge);

/// Counts an accepted connection of `role` (one of [`ROLES`]) and holds it open in
/// `memds_connections` until the guard is dropped.
pub fn connection_opened(role: &'static str) -> OpenConnection {
    metrics::counter!(CONNECTIONS_TOTAL, "role" => role).increment(1);
    let gauge = metrics::gauge!(CONNECTIONS, "role" => role);
    gauge.increment(1.0);
    OpenConnection(gauge)
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

// Tables, writes and the log.

/// Publishes the table gauges: totals over every table, and each table's version.
pub fn tables<'a>(
    tables: u64,
    partitions: u64,
    resident_bytes: u64,
    versions: impl IntoIterator<Item = (&'a str, u64)>,
) {
    metrics::gauge!(TABLES).set(tables as f64);
    metrics::gauge!(PARTITIONS).set(partitions as f64);
    metrics::gauge!(RESIDENT_BYTES).set(resident_bytes as f64);
    for (table, version) in versions {
        metrics::gauge!(TABLE_VERSION, "table" => table.to_owned()).set(version as f64);
    }
}

/// Records a write answered: its result and the time since it arrived at the writer.
pub fn write_done(op: WriteOp, result: WriteResult, elapsed: Duration) {
    metrics::counter!(WRITES_TOTAL, "op" => op.as_str(), "result" => result.as_str()).increment(1);
    metrics::histogram!(WRITE_DURATION_SECONDS).record(elapsed.as_secs_f64());
}

/// Sets the size of the write-ahead log.
pub fn wal_bytes(bytes: u64) {
    metrics::gauge!(WAL_BYTES).set(bytes as f64);
}

/// Counts a checkpoint written.
pub fn compacted() {
    metrics::counter!(COMPACTIONS_TOTAL).increment(1);
}

/// Counts a compaction that failed or was postponed.
pub fn compaction_failed() {
    metrics::counter!(COMPACTION_FAILURES_TOTAL).increment(1);
}

/// Moves the encoded get-table answers held by `delta` bytes (by difference, so servers
/// sharing one process's recorder add up instead of overwriting each other).
pub fn snapshot_cache_bytes(delta: f64) {
    metrics::gauge!(SNAPSHOT_CACHE_BYTES).increment(delta);
}

// Scrubbing.

/// Counts a scrubbing pass that recomputed the checksums of `bytes` resident bytes.
pub fn scrub_pass(bytes: u64) {
    metrics::counter!(SCRUB_PASSES_TOTAL).increment(1);
    metrics::counter!(SCRUB_BYTES_TOTAL).increment(bytes);
}

/// Counts a resident table found failing its checksum.
pub fn scrub_damaged() {
    metrics::counter!(SCRUB_DAMAGED_TOTAL).increment(1);
}

/// Counts a repair of a damaged table.
pub fn scrub_repair(result: RepairResult) {
    metrics::counter!(SCRUB_REPAIRS_TOTAL, "result" => result.as_str()).increment(1);
}

// The fleet.

/// Sets whether the server is ready.
pub fn ready(ready: bool) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Sets the number of peer addresses resolved.
pub fn peers(count: usize) {
    metrics::gauge!(PEERS).set(count as f64);
}

/// Counts a write delivered to a peer.
pub fn forward_sent(peer: &str) {
    metrics::counter!(FORWARDS_TOTAL, "peer" => peer.to_owned(), "result" => "sent", "reason" => "")
        .increment(1);
}

/// Counts a write that could not be forwarded to a peer, and why.
pub fn forward_failed(peer: SocketAddr, reason: &'static str) {
    metrics::counter!(FORWARDS_TOTAL, "peer" => peer.to_string(), "result" => "failed", "reason" => reason)
        .increment(1);
}

/// Counts an anti-entropy round with a peer that succeeded, and sets the versions this server
/// lacked at its start.
pub fn anti_entropy_round_ok(peer: &str, lag_versions: u64) {
    metrics::counter!(ANTI_ENTROPY_ROUNDS_TOTAL, "result" => "ok").increment(1);
    metrics::gauge!(PEER_LAG_VERSIONS, "peer" => peer.to_owned()).set(lag_versions as f64);
}

/// Counts an anti-entropy round that failed.
pub fn anti_entropy_round_failed() {
    metrics::counter!(ANTI_ENTROPY_ROUNDS_TOTAL, "result" => "failed").increment(1);
}

/// Sets how long ago this server last held everything `peer` advertised.
pub fn peer_lag(peer: &str, since: Duration) {
    metrics::gauge!(PEER_LAG_SECONDS, "peer" => peer.to_owned()).set(since.as_secs_f64());
}

/// Counts a table (or tombstone) pulled from a peer and applied, and how, if it was a table.
pub fn table_pulled(kind: Option<PullKind>) {
    metrics::counter!(ANTI_ENTROPY_TABLES_PULLED_TOTAL).increment(1);
    if let Some(kind) = kind {
        metrics::counter!(ANTI_ENTROPY_PULLS_TOTAL, "kind" => kind.as_str()).increment(1);
    }
}

/// Counts bytes of answers pulled from peers.
pub fn bytes_pulled(bytes: u64) {
    metrics::counter!(ANTI_ENTROPY_BYTES_PULLED_TOTAL).increment(bytes);
}

/// Counts a table a peer holds at the same version with other content.
pub fn digest_mismatch() {
    metrics::counter!(DIGEST_MISMATCHES_TOTAL).increment(1);
}

// The metrics listener.

/// The counter of failed accepts on the metrics listener.
pub fn http_accept_errors() -> Counter {
    metrics::counter!(HTTP_ACCEPT_ERRORS_TOTAL)
}

/// The counter of metrics-listener connections closed for `reason`.
pub fn http_connections_refused(reason: HttpRefusal) -> Counter {
    metrics::counter!(HTTP_CONNECTIONS_REFUSED_TOTAL, "reason" => reason.as_str())
}
