//! memds/1, as release 0.1.0 spoke it: its message enums, frozen.
//!
//! memds/2 appends to these enums and shares every other type, so a message memds/1 carries is
//! the same bytes under both; the tests below and the release's fixtures
//! (`memds-proto/tests/fixtures/v0.1.0/`) check that it stays so. Nothing here changes again:
//! when a later version cannot keep a memds/1 message's bytes (a field changed in a type both
//! carry), that type is copied in here as it was, and the two convert at the edge.
//!
//! The documentation of each variant is the current one's, in [`super::Request`] and
//! [`super::Response`].

#![allow(missing_docs)]

use rkyv::rancor;

use super::{
    BatchUpdate, ErrorReply, HashRange, NodeList, PartitionUpdate, Routes, ServerStats, Summary,
    TableInfo, TreeDigests, WireError, WriteAck,
};

/// A request.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(attr(allow(missing_docs)))]
pub enum Request {
    /// The route for one hash.
    Lookup {
        /// Table name.
        table: String,
        /// Key hash.
        hash: u64,
        /// The lowest table version the client accepts (the newest it has seen): a server
        /// holding an older one answers [`ErrorCode::Behind`](super::super::ErrorCode::Behind).
        min_version: Option<u64>,
    },
    /// The routes for many hashes, answered in the same order.
    BatchLookup {
        /// Table name.
        table: String,
        /// Key hashes.
        hashes: Vec<u64>,
        /// As for `Lookup`.
        min_version: Option<u64>,
    },
    /// The routes of the partitions overlapping `[from, to)`, at most `limit` of them.
    Range {
        /// Table name.
        table: String,
        /// First hash of the range (inclusive).
        from: u64,
        /// End of the range (exclusive).
        to: u64,
        /// Most routes to return (the server also applies its own bound).
        limit: u32,
        /// As for `Lookup`.
        min_version: Option<u64>,
    },
    /// The table's node list (addresses and zones of the ids routes carry).
    GetNodes {
        /// Table name.
        table: String,
    },
    /// The whole table as a snapshot, or [`Response::NotModified`] if it is not newer than
    /// `if_newer_than`.
    GetTable {
        /// Table name.
        table: String,
        /// Only send the table if its version is above this one.
        if_newer_than: Option<u64>,
    },
    /// Every table's name, version and size.
    ListTables,
    /// The server's counters.
    Stats,
    /// What the server holds, compactly: every table's version and digest and every
    /// tombstone. Peers exchange it in anti-entropy rounds.
    Summary,
    /// Store a whole table map (admin only); the snapshot format of [`crate::snapshot`].
    PutTable {
        /// The map, as a snapshot.
        snapshot: Vec<u8>,
    },
    /// Replace the partitions covering a range (admin only).
    UpdatePartitions(/** The update. */ PartitionUpdate),
    /// Replace the partitions of many ranges of one table at once (admin only): applied
    /// atomically at one new version, logged as one record.
    UpdateBatch(/** The update. */ BatchUpdate),
    /// What changed in a table since `since`, as a [`Response::Delta`] (or
    /// [`Response::NotModified`]), when the server still knows; [`Response::NoDelta`]
    /// otherwise (fetch the whole table then).
    GetDelta {
        /// Table name.
        table: String,
        /// The version the client holds.
        since: u64,
    },
    /// The Merkle digests of a table's tree nodes at `level` (1: blocks of partitions,
    /// 2: runs of blocks, and up) overlapping `[from, end_inclusive]`; peers use it to
    /// find where their copies differ.
    TreeDigests {
        /// Table name.
        table: String,
        /// The tree level.
        level: u32,
        /// First hash (inclusive).
        from: u64,
        /// Last hash (inclusive).
        end_inclusive: u64,
    },
    /// The current partitions covering each range (widened to partition boundaries), as a
    /// [`Response::Delta`] whose `base_version` is 0; peers pull the blocks that differ.
    GetRanges {
        /// Table name.
        table: String,
        /// The ranges, sorted and disjoint.
        ranges: Vec<HashRange>,
    },
    /// Remove a table (admin only), leaving a tombstone: a later put of the name needs a
    /// version above the one dropped.
    DropTable {
        /// Table name.
        table: String,
        /// The version being dropped. `None` drops whatever version the server holds; a
        /// version refuses the drop (`stale`) if the server holds a newer one, and records
        /// the tombstone at that version even where the table is absent or older, so drops
        /// and puts forwarded in any order end in the same state.
        version: Option<u64>,
    },
}

/// A response.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(attr(allow(missing_docs)))]
pub enum Response {
    /// Answer to lookups, batch lookups and range scans.
    Routes(/** The answer. */ Routes),
    /// A table's node list.
    Nodes(/** The answer. */ NodeList),
    /// A whole table.
    Table {
        /// The table's version.
        version: u64,
        /// The map, in the snapshot format.
        snapshot: Vec<u8>,
    },
    /// What changed in a table between two versions: applying it as an update to the
    /// table at `base_version` gives the table at `version`.
    Delta(/** The change. */ BatchUpdate),
    /// The server cannot tell what changed since the version asked about (its history does
    /// not reach back that far, or the table was replaced whole since).
    NoDelta {
        /// The table's version.
        version: u64,
    },
    /// Tree digests (answer to [`Request::TreeDigests`]).
    TreeDigests(/** The answer. */ TreeDigests),
    /// The table is not newer than the version asked about.
    NotModified {
        /// The table's version.
        version: u64,
    },
    /// The table list.
    Tables(/** The answer. */ Vec<TableInfo>),
    /// The server's counters.
    Stats(/** The answer. */ ServerStats),
    /// What the server holds.
    Summary(/** The answer. */ Summary),
    /// A put or update was applied (or was already there).
    Written(/** The answer. */ WriteAck),
    /// A table was dropped.
    Dropped {
        /// The table.
        table: String,
        /// Its version when dropped.
        version: u64,
    },
    /// The request failed.
    Error(/** The answer. */ ErrorReply),
}

/// Appends one memds/1 request frame to `out`.
pub fn encode_request(id: u64, request: &Request, out: &mut Vec<u8>) {
    let archive = rkyv::to_bytes::<rancor::Error>(request)
        .expect("serializing a request into memory cannot fail");
    let _ = super::put_frame(id, &archive, out);
}

/// Appends one memds/1 response frame to `out`.
pub fn encode_response(id: u64, response: &Response, out: &mut Vec<u8>) {
    let archive = rkyv::to_bytes::<rancor::Error>(response)
        .expect("serializing a response into memory cannot fail");
    let _ = super::put_frame(id, &archive, out);
}

/// Validates and deserializes a memds/1 request archive.
pub fn decode_request(payload: &[u8]) -> Result<Request, WireError> {
    let archived = rkyv::access::<ArchivedRequest, rancor::Error>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    rkyv::deserialize::<Request, rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Validates and deserializes a memds/1 response archive.
pub fn decode_response(payload: &[u8]) -> Result<Response, WireError> {
    let archived = rkyv::access::<ArchivedResponse, rancor::Error>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    rkyv::deserialize::<Response, rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

// The archived enums must keep their size: rkyv finds the root object at the end of the
// archive, so a size change would move it and memds/1 bytes would no longer read as memds/2.
const _: () = assert!(
    std::mem::size_of::<ArchivedRequest>() == std::mem::size_of::<super::ArchivedRequest>()
);
const _: () = assert!(
    std::mem::size_of::<ArchivedResponse>() == std::mem::size_of::<super::ArchivedResponse>()
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{sample_maps, sample_requests, sample_responses};
    use crate::wire::{self, FRAME_HEADER_LEN, Protocol};

    /// A frame's payload, aligned as [`wire::FrameDecoder`] hands it out.
    fn payload(frame: &[u8]) -> rkyv::util::AlignedVec {
        let mut aligned = rkyv::util::AlignedVec::new();
        aligned.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
        aligned
    }

    /// Every memds/1 message is the same bytes as the same message of the current version, both
    /// ways; the messages memds/2 added do not read as memds/1.
    #[test]
    fn memds_1_messages_are_the_same_bytes_in_memds_2() {
        let mut v1_requests = 0;
        let mut v1_responses = 0;
        for map in sample_maps().iter().take(2) {
            for request in sample_requests(map) {
                let mut current = Vec::new();
                wire::encode_request(1, &request, &mut current);
                let decoded = decode_request(&payload(&current));
                if request.since() > Protocol::V1 {
                    assert!(decoded.is_err(), "{request:?} read as memds/1");
                    continue;
                }
                let old = decoded.expect("a memds/1 request reads as memds/1");
                let mut again = Vec::new();
                encode_request(1, &old, &mut again);
                assert_eq!(again, current, "{request:?}");
                let back = wire::decode_request(&payload(&again)).expect("reads back");
                assert_eq!(back, request);
                v1_requests += 1;
            }
            for response in sample_responses(map) {
                let mut current = Vec::new();
                wire::encode_response(1, &response, &mut current);
                let decoded = decode_response(&payload(&current));
                if response.since() > Protocol::V1 {
                    assert!(decoded.is_err(), "{response:?} read as memds/1");
                    continue;
                }
                let old = decoded.expect("a memds/1 response reads as memds/1");
                let mut again = Vec::new();
                encode_response(1, &old, &mut again);
                assert_eq!(again, current, "{response:?}");
                assert_eq!(
                    wire::decode_response(&payload(&again)).expect("reads back"),
                    response
                );
                v1_responses += 1;
            }
        }
        assert!(
            v1_requests > 20 && v1_responses > 20,
            "{v1_requests} {v1_responses}"
        );
    }
}
