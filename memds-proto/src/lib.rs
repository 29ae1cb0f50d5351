//! # memds-proto
//!
//! The sans-IO core of MemDS: everything both sides of the system agree on, with no sockets, no
//! clocks and no async runtime. Bytes and values go in, values and typed errors come out, so
//! every part is tested deterministically and without a network.
//!
//! # Layout
//!
//! - [`model`]: the data model of DESIGN.md: newtypes for ids, epochs and versions, storage
//!   nodes, partitions, validated table maps, routes, and the JSON ingestion format with its
//!   validation rules.
//! - [`compact`]: the resident encoding the server keeps in memory: a table's partitions
//!   bit-packed in blocks of 64 with a node dictionary, answering floor lookups and range scans
//!   in O(log n) without decompressing anything.
//! - [`radix`]: a radix index over sorted starts, the floor lookup both the compact encoding and
//!   the router cache use.
//! - [`snapshot`]: the whole-table snapshot format (rkyv archive, zstd-compressed, checksummed)
//!   that validates everything on decode.
//! - [`synth`]: the deterministic, seeded generator of realistic partition maps (grown by uneven
//!   splits, replica moves and leader changes) that tests, benchmarks and experiments share.
//! - [`wire`]: the QUIC protocol's messages and framing, sans IO: a frame decoder that takes
//!   bytes in and gives validated archives out.
//! - [`versions`]: the release, build, protocol and format versions `--version` prints.
//! - [`key_hash`]: the one hash function every router uses to place a key.
//! - `fuzzing` (hidden): the fuzz targets over every decoder here, shared by the cargo-fuzz
//!   crate and the test suite (`docs/fuzzing.md`).

pub mod compact;
pub mod model;
pub mod radix;
pub mod snapshot;
pub mod synth;
pub mod versions;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

mod bits;

pub use compact::{CompactTable, EditError, NodeInfo, NodeInterner, PartitionEntry};
pub use model::{
    Epoch, MapError, NodeId, Partition, PartitionId, Replicas, Route, RouteReplica, StorageNode,
    TableMap, TableName, TableVersion,
};
pub use snapshot::SnapshotError;

/// Hashes a partition key the way every MemDS router and server does: XXH3-64 with seed 0.
///
/// Routers in any language compute the same value, so a key's partition never depends on which
/// implementation placed it.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_xxh3_64_with_seed_zero() {
        // Reference values from the XXH3 specification's test vectors (empty input) and from
        // the seeded variant, which must agree with the unseeded one at seed 0.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(
            key_hash(b"orders#42"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"orders#42", 0)
        );
        assert_ne!(key_hash(b"orders#42"), key_hash(b"orders#43"));
    }
}
