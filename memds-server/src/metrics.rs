//! Prometheus metrics: every metric declared and described here, once, and the `/metrics`
//! page (served by [`crate::http`]).
//!
//! Names follow Prometheus conventions: the `memds_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters. Labels are bounded: operation and result names, error codes, client
//! roles, and table names for the per-table version gauge (one series per table held).
//!
//! The recorder is process-global (the `metrics` facade has one), so several servers started in
//! one process (as tests do) share it; the per-server counters that `stats` reports live in
//! [`Counters`] instead.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memds_proto::wire::ErrorCode;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Lookup operations, as metric labels.
pub const LOOKUP_OPS: [&str; 3] = ["lookup", "batch_lookup", "range"];

/// Why a connection is refused, as metric labels.
pub const REFUSAL_REASONS: [&str; 5] = [
    "connection_limit",
    "handshake_limit",
    "handshake_timeout",
    "handshake",
    "no_certificate",
];

/// Why the server reset a stream, as metric labels: a frame that did not arrive whole in time,
/// or an answer the client did not read in time.
pub const STREAM_RESET_REASONS: [&str; 2] = ["frame_timeout", "write_timeout"];

/// Kinds of request frames counted in `memds_requests_total`, as metric labels.
pub const REQUEST_KINDS: [&str; 8] = [
    "read",
    "write",
    "stats",
    "summary",
    "get_delta",
    "tree_digests",
    "get_ranges",
    "malformed",
];

/// Client roles, as metric labels.
pub const ROLES: [&str; 3] = ["router", "admin", "peer"];

/// Write operations and their results, as metric labels.
pub const WRITE_OPS: [&str; 4] = [
    "put_table",
    "update_partitions",
    "update_batch",
    "drop_table",
];
/// See [`WRITE_OPS`].
pub const WRITE_RESULTS: [&str; 3] = ["applied", "unchanged", "error"];

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
        "memds_lookups_total",
        Unit::Count,
        "Partition lookups served, by operation and result (a batch of n hashes counts n)."
    );
    describe_histogram!(
        "memds_lookup_duration_seconds",
        Unit::Seconds,
        "Server-side time to answer one lookup request frame, by operation."
    );
    describe_counter!(
        "memds_requests_total",
        Unit::Count,
        "Request frames answered, by kind."
    );
    describe_gauge!(
        "memds_requests_in_flight",
        Unit::Count,
        "Request frames received and not yet answered."
    );
    describe_gauge!(
        "memds_connections",
        Unit::Count,
        "Open client connections, by role."
    );
    describe_counter!(
        "memds_connections_total",
        Unit::Count,
        "Client connections accepted, by role."
    );
    describe_counter!(
        "memds_connections_refused_total",
        Unit::Count,
        "Connections refused, by reason."
    );
    describe_gauge!(
        "memds_handshakes_in_progress",
        Unit::Count,
        "QUIC handshakes under way (they do not count against --max-connections)."
    );
    describe_counter!(
        "memds_quic_retries_total",
        Unit::Count,
        "Connection attempts answered with a stateless QUIC Retry (address validation) because many handshakes were under way."
    );
    describe_counter!(
        "memds_stream_resets_total",
        Unit::Count,
        "Streams the server reset, by reason (frame_timeout, write_timeout)."
    );
    describe_counter!(
        "memds_lookups_shed_total",
        Unit::Count,
        "Lookups shed with `overloaded` by --max-lookups-per-sec (a batch of n hashes counts n)."
    );
    describe_gauge!(
        "memds_lookup_limit",
        Unit::Count,
        "The lookups per second this server admits (--max-lookups-per-sec); 0 means no limit."
    );
    describe_counter!(
        "memds_errors_total",
        Unit::Count,
        "Requests answered with an error, by error code."
    );
    describe_gauge!("memds_tables", Unit::Count, "Tables held.");
    describe_gauge!(
        "memds_partitions",
        Unit::Count,
        "Partitions held, over all tables."
    );
    describe_gauge!(
        "memds_resident_bytes",
        Unit::Bytes,
        "Resident bytes of all compact tables and the shared node records."
    );
    describe_gauge!(
        "memds_table_version",
        Unit::Count,
        "Current version of each table."
    );
    describe_counter!(
        "memds_writes_total",
        Unit::Count,
        "Writes by operation and result (applied, unchanged, error)."
    );
    describe_histogram!(
        "memds_write_duration_seconds",
        Unit::Seconds,
        "Time from a write's arrival at the writer to its durable acknowledgement, fsync included."
    );
    describe_gauge!(
        "memds_wal_bytes",
        Unit::Bytes,
        "Size of the write-ahead log."
    );
    describe_counter!(
        "memds_compactions_total",
        Unit::Count,
        "Checkpoints written (log compactions)."
    );
    describe_gauge!(
        "memds_snapshot_cache_bytes",
        Unit::Bytes,
        "Encoded get-table answers held, at most one per table version asked for."
    );
    describe_counter!(
        "memds_compaction_failures_total",
        Unit::Count,
        "Log compactions that failed (the log keeps growing, and writes wait if it is unusable)."
    );
    describe_counter!(
        "memds_scrub_passes_total",
        Unit::Count,
        "Scrubbing passes over the resident tables."
    );
    describe_counter!(
        "memds_scrub_bytes_total",
        Unit::Bytes,
        "Resident bytes whose checksums scrubbing recomputed."
    );
    describe_counter!(
        "memds_scrub_damaged_total",
        Unit::Count,
        "Resident tables found failing their checksum."
    );
    describe_counter!(
        "memds_scrub_repairs_total",
        Unit::Count,
        "Damaged tables reinstalled from the data directory, by result (repaired, failed)."
    );
    describe_gauge!(
        "memds_ready",
        Unit::Count,
        "1 once the server has caught up with its peers (it answers routers' lookups), else 0."
    );
    describe_gauge!(
        "memds_peers",
        Unit::Count,
        "Peer addresses the peer names resolve to, this server excluded."
    );
    describe_gauge!(
        "memds_peer_lag_versions",
        Unit::Count,
        "Table versions this server lacked at the start of its last anti-entropy round with each peer (summed over tables)."
    );
    describe_gauge!(
        "memds_peer_lag_seconds",
        Unit::Seconds,
        "Seconds since this server last held everything each peer advertised (set at each round with that peer)."
    );
    describe_counter!(
        "memds_anti_entropy_rounds_total",
        Unit::Count,
        "Anti-entropy rounds, by result (ok, failed)."
    );
    describe_counter!(
        "memds_anti_entropy_tables_pulled_total",
        Unit::Count,
        "Tables and tombstones pulled from peers and applied."
    );
    describe_counter!(
        "memds_anti_entropy_bytes_pulled_total",
        Unit::Bytes,
        "Bytes of every answer anti-entropy pulled from peers, as framed on the wire."
    );
    describe_counter!(
        "memds_anti_entropy_pulls_total",
        Unit::Count,
        "Tables anti-entropy pulled, by kind: delta, merkle (differing blocks) or snapshot."
    );
    describe_counter!(
        "memds_digest_mismatches_total",
        Unit::Count,
        "Tables a peer holds at the same version with other content."
    );
    describe_counter!(
        "memds_forwards_total",
        Unit::Count,
        "Writes forwarded to peers, by peer and result (sent, failed) and reason of failure."
    );
    describe_counter!(
        "memds_http_accept_errors_total",
        Unit::Count,
        "Failed accepts on the metrics listener (descriptors exhausted, connections aborted before accept)."
    );
    describe_counter!(
        "memds_http_connections_refused_total",
        Unit::Count,
        "Metrics-listener connections the server closed, by reason (limit: at the connection cap; timeout: no request in time, or past the connection deadline)."
    );
    describe_gauge!(
        "memds_build_info",
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
    lookups_ok: [Counter; 3],
    lookups_error: [Counter; 3],
    lookup_seconds: [Histogram; 3],
    /// Frames received and not yet answered.
    pub in_flight: Gauge,
}

impl Metrics {
    /// Registers the handles (installing the recorder if needed).
    pub fn new() -> Self {
        handle();
        metrics::gauge!("memds_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        register_bounded_series();
        Self {
            lookups_ok: LOOKUP_OPS
                .map(|op| metrics::counter!("memds_lookups_total", "op" => op, "result" => "ok")),
            lookups_error: LOOKUP_OPS.map(
                |op| metrics::counter!("memds_lookups_total", "op" => op, "result" => "error"),
            ),
            lookup_seconds: LOOKUP_OPS
                .map(|op| metrics::histogram!("memds_lookup_duration_seconds", "op" => op)),
            in_flight: metrics::gauge!("memds_requests_in_flight"),
        }
    }

    /// Records one lookup request frame: `count` lookups of operation `op` (an index into
    /// [`LOOKUP_OPS`]).
    pub fn lookup(&self, op: usize, ok: bool, count: u64, elapsed: Duration) {
        if ok {
            self.lookups_ok[op].increment(count);
        } else {
            self.lookups_error[op].increment(count.max(1));
        }
        self.lookup_seconds[op].record(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts an error answer.
pub fn error(code: ErrorCode) {
    metrics::counter!("memds_errors_total", "code" => code.as_str()).increment(1);
}

/// Creates every series whose labels come from a fixed set, at zero (adding nothing to one
/// that exists): a rate or an alert over them then reads 0 from the start instead of nothing.
fn register_bounded_series() {
    for reason in REFUSAL_REASONS {
        metrics::counter!("memds_connections_refused_total", "reason" => reason).increment(0);
    }
    for reason in STREAM_RESET_REASONS {
        metrics::counter!("memds_stream_resets_total", "reason" => reason).increment(0);
    }
    metrics::counter!("memds_quic_retries_total").increment(0);
    metrics::counter!("memds_lookups_shed_total").increment(0);
    metrics::gauge!("memds_handshakes_in_progress").increment(0.0);
    for kind in REQUEST_KINDS {
        metrics::counter!("memds_requests_total", "kind" => kind).increment(0);
    }
    for role in ROLES {
        metrics::counter!("memds_connections_total", "role" => role).increment(0);
        metrics::gauge!("memds_connections", "role" => role).increment(0.0);
    }
    for op in WRITE_OPS {
        for result in WRITE_RESULTS {
            metrics::counter!("memds_writes_total", "op" => op, "result" => result).increment(0);
        }
    }
    for code in ErrorCode::ALL {
        metrics::counter!("memds_errors_total", "code" => code.as_str()).increment(0);
    }
    metrics::counter!("memds_compactions_total").increment(0);
    metrics::counter!("memds_compaction_failures_total").increment(0);
    metrics::counter!("memds_scrub_passes_total").increment(0);
    metrics::counter!("memds_scrub_bytes_total").increment(0);
    metrics::counter!("memds_scrub_damaged_total").increment(0);
    for result in ["repaired", "failed"] {
        metrics::counter!("memds_scrub_repairs_total", "result" => result).increment(0);
    }
    metrics::gauge!("memds_wal_bytes").increment(0.0);
    metrics::gauge!("memds_snapshot_cache_bytes").increment(0.0);
}

/// Counts a refused connection by reason (one of [`REFUSAL_REASONS`]).
pub fn counter_refused(reason: &'static str) {
    metrics::counter!("memds_connections_refused_total", "reason" => reason).increment(1);
}

/// Counts a stream reset by reason (one of [`STREAM_RESET_REASONS`]).
pub fn stream_reset(reason: &'static str) {
    metrics::counter!("memds_stream_resets_total", "reason" => reason).increment(1);
}

/// Counts a request frame by kind (one of [`REQUEST_KINDS`]).
pub fn request(kind: &'static str) {
    metrics::counter!("memds_requests_total", "kind" => kind).increment(1);
}
