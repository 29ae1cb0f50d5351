//! # memds-server
//!
//! The MemDS server: holds every table's partition map in the compact resident encoding of
//! [`memds_proto::compact`] and will answer lookups over QUIC.
//!
//! # Layout
//!
//! This crate is a placeholder in the workspace until the server issue lands; today it only
//! re-exports the core types the server is built on.

pub use memds_proto::{CompactTable, NodeInterner, TableMap};
