//! # memds-server
//!
//! The MemDS server: holds every table's partition map in the compact resident encoding of
//! [`memds_proto::compact`], answers lookups over QUIC with mutual TLS, accepts versioned writes
//! that are durable before they are acknowledged, and exports Prometheus metrics. The binary
//! `memds-server` runs it; `memds-ctl` is its admin and lookup command line.
//!
//! # Layout
//!
//! - [`server`]: start-up, the QUIC endpoint, connections, streams and the request loop (each
//!   connection and stream served inside a `tracing` span naming its client); the limits;
//!   graceful shutdown.
//! - [`service`]: answers to read requests, from the published tables (no IO).
//! - [`store`]: the published tables and tombstones, and the pure rules that decide what a
//!   write does.
//! - [`snapshots`]: get-table answers, encoded once per table version off the async workers.
//! - [`writer`]: the thread that applies writes in order with group commit.
//! - [`durable`]: the write-ahead log, checkpoints, recovery and compaction.
//! - [`scrub`]: the background verification of resident tables, and their repair from disk.
//! - [`tls`]: the development PKI, the rustls/quinn server configuration, router vs admin.
//! - [`admission`]: the lookup limit and each connection's fair share of it.
//! - [`fleet`]: peers, write forwarding, anti-entropy and readiness: the async shell.
//! - [`replication`]: the fleet's decisions with no IO: the order of holdings (absent, a
//!   table's version, a tombstone), what to do about a peer's table, whether a pulled table may
//!   be installed, the readiness rule. The deterministic simulation drives it (`sim`, tests).
//! - [`metrics`]: every metric series, named and described once, with the typed functions and
//!   label enums ([`metrics::LookupOp`], [`metrics::WriteResult`], ...) the other modules
//!   record through, and the `/metrics` page. It depends on no other module of the crate, so
//!   the writer and the scrubber publish gauges without reaching up into [`server`].
//! - [`http`]: the HTTP listener of `/metrics`, `/ready` and `/health`: connection cap,
//!   timeouts, accept backoff.
//! - [`config`]: the command line and TOML configuration of the binary.
//! - `fuzzing` (hidden): the fuzz targets over recovery's reading of the data directory and
//!   over requests as the server handles them (`docs/fuzzing.md`).

pub mod admission;
pub mod config;
pub mod durable;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod replication;
pub mod scrub;
pub mod server;
pub mod service;
#[cfg(test)]
mod sim;
pub mod snapshots;
pub mod store;
pub mod tls;
pub mod writer;

pub use server::{Limits, RunningServer, ServerConfig, start};

use memds_proto::wire::{FormatVersions, ServerInfo};

/// What this server build is, speaks, reads and writes: its answer to `server-info` and what
/// `memds-server --version` prints.
pub fn server_info() -> ServerInfo {
    memds_proto::versions::info(vec![
        FormatVersions {
            name: "log".into(),
            writes: durable::LOG_FORMAT,
            reads_oldest: durable::LOG_FORMAT_OLDEST,
        },
        FormatVersions {
            name: "checkpoint".into(),
            writes: durable::CHECKPOINT_FORMAT,
            reads_oldest: durable::CHECKPOINT_FORMAT_OLDEST,
        },
        memds_proto::versions::snapshot_format(),
    ])
}
