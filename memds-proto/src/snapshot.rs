//! Whole-table snapshots: the plain records archived with rkyv, compressed with zstd, framed
//! with a checksum.
//!
//! A snapshot travels over the network (get-table) and lives on disk, so decoding trusts
//! nothing: the header, the declared length (against a caller's limit, before anything is
//! allocated), the checksum, the declared length again (against what the payload could hold),
//! the decompressed length, the archive (bytecheck validation), and finally every rule of the
//! data model (the same validation as JSON input) are all checked, and any failure is a
//! [`SnapshotError`], never a panic.
//!
//! # Format
//!
//! | bytes | content |
//! |---|---|
//! | 0..4 | magic `MDSS` |
//! | 4..6 | format version, u16 little-endian (1) |
//! | 6..8 | reserved, zero |
//! | 8..16 | length of the uncompressed archive, u64 little-endian |
//! | 16..24 | XXH3-64 of the compressed payload, u64 little-endian |
//! | 24.. | zstd frame of the rkyv archive of a [`SnapshotTable`] |
//!
//! The archived records are this module's own ([`SnapshotTable`], [`SnapshotNode`],
//! [`SnapshotPartition`]), not the JSON ingestion records nor the wire's: they change only with
//! a new format version. Format 1 is the one release 0.1.0 wrote; its bytes are pinned by the
//! fixtures under `memds-proto/tests/fixtures/`.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::model::{MapError, NodeSpec, PartitionSpec, TableMap, TableSpec};

pub use records::{SnapshotNode, SnapshotPartition, SnapshotTable};

/// The records a snapshot archives. Format 1: never change a field's type or order here; a
/// change is a new format version, with this one kept for reading.
#[allow(missing_docs)]
mod records {
    /// A table, as format 1 archives it.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct SnapshotTable {
        /// The table's name.
        pub table: String,
        /// The map's version.
        pub version: u64,
        /// The storage nodes the map uses.
        pub nodes: Vec<SnapshotNode>,
        /// The partitions, in start order.
        pub partitions: Vec<SnapshotPartition>,
    }

    /// A storage node, as format 1 archives it.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct SnapshotNode {
        /// The node's id.
        pub id: u32,
        /// `host:port`.
        pub addr: String,
        /// Availability zone.
        pub az: String,
    }

    /// A partition, as format 1 archives it.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct SnapshotPartition {
        /// The partition's id.
        pub id: u64,
        /// First hash (inclusive).
        pub start: u64,
        /// The partition's epoch.
        pub epoch: u64,
        /// Node ids of the replicas.
        pub replicas: Vec<u32>,
        /// Index into `replicas` of the leader.
        pub leader: u64,
    }
}

impl From<TableSpec> for SnapshotTable {
    fn from(t: TableSpec) -> Self {
        SnapshotTable {
            table: t.table,
            version: t.version,
            nodes: t
                .nodes
                .into_iter()
                .map(|n| SnapshotNode {
                    id: n.id,
                    addr: n.addr,
                    az: n.az,
                })
                .collect(),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| SnapshotPartition {
                    id: p.id,
                    start: p.start,
                    epoch: p.epoch,
                    replicas: p.replicas,
                    leader: p.leader,
                })
                .collect(),
        }
    }
}

impl From<SnapshotTable> for TableSpec {
    fn from(t: SnapshotTable) -> Self {
        TableSpec {
            table: t.table,
            version: t.version,
            nodes: t
                .nodes
                .into_iter()
                .map(|n| NodeSpec {
                    id: n.id,
                    addr: n.addr,
                    az: n.az,
                })
                .collect(),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| PartitionSpec {
                    id: p.id,
                    start: p.start,
                    epoch: p.epoch,
                    replicas: p.replicas,
                    leader: p.leader,
                })
                .collect(),
        }
    }
}

/// The four bytes every snapshot starts with.
pub const MAGIC: [u8; 4] = *b"MDSS";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;
/// The zstd level snapshots are written with.
pub const ZSTD_LEVEL: i32 = 3;
/// A default bound on the uncompressed archive a decoder accepts (1 GiB, a table of about
/// twenty million partitions).
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 1 << 30;
/// The most one byte of a zstd payload can decompress to: a block yields at most 128 KiB and
/// costs at least 4 bytes (a 3-byte header and the byte it repeats).
const MAX_ZSTD_EXPANSION: u64 = 32 * 1024;

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Fewer bytes than the header.
    #[error("snapshot is truncated: {len} bytes, the header alone is 24")]
    Truncated {
        /// How many bytes there were.
        len: usize,
    },
    /// The bytes do not start with the snapshot magic.
    #[error("not a MemDS snapshot (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error(
        "snapshot format version {0}: this build reads snapshot format {FORMAT_VERSION} only; a \
         newer format was written by a newer release (run that release, or one that reads it)"
    )]
    UnsupportedVersion(u16),
    /// The declared archive length is over the caller's limit.
    #[error("snapshot declares {declared} bytes uncompressed, more than the limit of {limit}")]
    TooLarge {
        /// The declared length.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// The payload's checksum does not match the header: the bytes were damaged.
    #[error(
        "snapshot checksum mismatch: header says {expected:#018x}, payload hashes to {actual:#018x}"
    )]
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u64,
        /// The checksum of the payload.
        actual: u64,
    },
    /// zstd could not decompress the payload, or it decompressed to another length.
    #[error("snapshot payload does not decompress: {0}")]
    Decompress(String),
    /// The archive failed rkyv's validation.
    #[error("snapshot archive is invalid: {0}")]
    Archive(String),
    /// The archive is well-formed but the map breaks a rule of the data model.
    #[error("snapshot holds an invalid map: {0}")]
    Invalid(#[from] MapError),
}

/// The rkyv archive of a map's plain records, uncompressed.
pub fn archive(map: &TableMap) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(&SnapshotTable::from(TableSpec::from(map)))
        .expect("serializing plain records into memory cannot fail")
}

/// Encodes a map as a snapshot.
pub fn encode(map: &TableMap) -> Vec<u8> {
    let raw = archive(map);
    let payload = zstd::bulk::compress(&raw, ZSTD_LEVEL)
        .expect("compressing in memory at a valid level cannot fail");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes and fully validates a snapshot whose archive is at most `max_archive_bytes`.
pub fn decode(bytes: &[u8], max_archive_bytes: u64) -> Result<TableMap, SnapshotError> {
    let (header, payload) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(SnapshotError::Truncated { len: bytes.len() })?;
    if header[0..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let le_u64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let declared = le_u64(8);
    let expected = le_u64(16);
    if declared > max_archive_bytes {
        return Err(SnapshotError::TooLarge {
            declared,
            limit: max_archive_bytes,
        });
    }
    let actual = xxhash_rust::xxh3::xxh3_64(payload);
    if actual != expected {
        return Err(SnapshotError::ChecksumMismatch { expected, actual });
    }
    // The declared length sizes the buffer zstd decompresses into, and the checksum does not
    // cover it: a length no payload of this size could fill is refused before it allocates
    // anything (found by fuzzing: a caller with a loose limit aborted on a huge allocation).
    if declared > (payload.len() as u64).saturating_mul(MAX_ZSTD_EXPANSION) {
        return Err(SnapshotError::Decompress(format!(
            "the header declares {declared} bytes, more than {} compressed bytes can hold",
            payload.len()
        )));
    }
    let capacity = usize::try_from(declared).map_err(|_| SnapshotError::TooLarge {
        declared,
        limit: max_archive_bytes,
    })?;
    let raw = zstd::bulk::decompress(payload, capacity)
        .map_err(|e| SnapshotError::Decompress(e.to_string()))?;
    if raw.len() != capacity {
        return Err(SnapshotError::Decompress(format!(
            "decompressed to {} bytes, header says {declared}",
            raw.len()
        )));
    }
    // rkyv reads archives in place and needs them aligned; decompressed bytes are not.
    let mut aligned = AlignedVec::<16>::with_capacity(raw.len());
    aligned.extend_from_slice(&raw);
    drop(raw);
    let table = rkyv::from_bytes::<SnapshotTable, rancor::Error>(&aligned)
        .map_err(|e| SnapshotError::Archive(e.to_string()))?;
    Ok(TableMap::try_from(TableSpec::from(table))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, SynthConfig};

    fn sample() -> TableMap {
        synth::generate_table(
            &SynthConfig {
                partitions: 2_000,
                ..SynthConfig::default()
            },
            0,
        )
    }

    #[test]
    fn round_trip_gives_the_same_map() {
        let map = sample();
        let snap = encode(&map);
        assert_eq!(
            decode(&snap, DEFAULT_MAX_ARCHIVE_BYTES).expect("valid"),
            map
        );
        assert!(snap.len() < archive(&map).len(), "zstd shrinks the archive");
    }

    #[test]
    fn every_truncation_is_refused() {
        let snap = encode(&sample());
        for len in (0..snap.len()).step_by(97).chain([snap.len() - 1]) {
            let err = decode(&snap[..len], DEFAULT_MAX_ARCHIVE_BYTES)
                .expect_err("a truncated snapshot is refused");
            if len < HEADER_LEN {
                assert!(
                    matches!(err, SnapshotError::Truncated { .. }),
                    "{len}: {err}"
                );
            } else {
                assert!(
                    matches!(err, SnapshotError::ChecksumMismatch { .. }),
                    "{len}: {err}"
                );
            }
        }
    }

    #[test]
    fn every_single_byte_corruption_is_refused() {
        let snap = encode(&sample());
        for at in (0..snap.len()).step_by(13) {
            let mut bad = snap.clone();
            bad[at] ^= 0x5A;
            assert!(
                decode(&bad, DEFAULT_MAX_ARCHIVE_BYTES).is_err(),
                "corruption at byte {at} was accepted"
            );
        }
    }

    #[test]
    fn header_fields_are_checked_in_order() {
        let snap = encode(&sample());
        let mut bad = snap.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode(&bad, u64::MAX),
            Err(SnapshotError::BadMagic)
        ));
        let mut bad = snap.clone();
        bad[4] = 9;
        assert!(matches!(
            decode(&bad, u64::MAX),
            Err(SnapshotError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            decode(&snap, 100),
            Err(SnapshotError::TooLarge { limit: 100, .. })
        ));
    }

    /// A payload with a correct checksum but wrong content must still be refused: by zstd, by
    /// the length check, by rkyv's validation, or by the data model.
    #[test]
    fn checksummed_garbage_is_refused_at_the_right_layer() {
        let map = sample();
        let frame = |declared: u64, payload: Vec<u8>| {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&declared.to_le_bytes());
            out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
            out
        };
        let not_zstd = frame(10, vec![1, 2, 3, 4]);
        assert!(matches!(
            decode(&not_zstd, u64::MAX),
            Err(SnapshotError::Decompress(_))
        ));

        // A declared length no payload of this size could hold, under no limit: refused before
        // anything is allocated for it.
        for declared in [1 << 40, u64::MAX] {
            let absurd = frame(
                declared,
                zstd::bulk::compress(b"tiny", 3).expect("compress"),
            );
            assert!(matches!(
                decode(&absurd, u64::MAX),
                Err(SnapshotError::Decompress(_))
            ));
        }

        let raw = archive(&map);
        let compressed = zstd::bulk::compress(&raw, 3).expect("compress");
        let wrong_len = frame(raw.len() as u64 + 8, compressed);
        assert!(matches!(
            decode(&wrong_len, u64::MAX),
            Err(SnapshotError::Decompress(_))
        ));

        let garbage: Vec<u8> = (0..raw.len()).map(|i| (i * 31 % 251) as u8).collect();
        let garbage_frame = frame(
            garbage.len() as u64,
            zstd::bulk::compress(&garbage, 3).expect("compress"),
        );
        assert!(matches!(
            decode(&garbage_frame, u64::MAX),
            Err(SnapshotError::Archive(_))
        ));

        let mut spec = SnapshotTable::from(TableSpec::from(&map));
        spec.partitions[5].start = spec.partitions[4].start;
        let raw = rkyv::to_bytes::<rancor::Error>(&spec).expect("archive");
        let invalid = frame(
            raw.len() as u64,
            zstd::bulk::compress(&raw, 3).expect("compress"),
        );
        match decode(&invalid, u64::MAX) {
            Err(SnapshotError::Invalid(MapError::StartNotIncreasing { index: 5, .. })) => {}
            other => panic!("expected the model's error, got {other:?}"),
        }
    }
}
