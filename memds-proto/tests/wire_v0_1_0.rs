//! Frames and a snapshot written by MemDS v0.1.0 (commit 593893d, ALPN `memds/1`), read by
//! today's code: `tests/fixtures/v0.1.0/wire/` holds one request or response frame per file,
//! encoded by the old `memds_proto::wire::encode_request` / `encode_response`
//! (scripts/fixtures-v0.1.0 wrote them; they are never regenerated), and `manifest.json` the
//! Debug rendering of each value.
//!
//! Every frame must decode, with today's decoder, to the value constructed here (the
//! generator's values, repeated by hand), and re-encode, with today's encoder, to the very same
//! bytes: a server of this version still speaks memds/1 exactly to v0.1.0 peers and routers.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use memds_proto::model::{NodeSpec, PartitionSpec, TableSpec};
use memds_proto::wire::{
    self, BatchUpdate, ErrorCode, ErrorReply, FrameDecoder, HashRange, NodeList, PartitionUpdate,
    RangeUpdate, Request, Response, Routes, ServerStats, Summary, TableInfo, TableSummary,
    TreeDigests, TreeEntry, WireRoute, WriteAck,
};
use memds_proto::{TableMap, snapshot};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0/wire")
}

fn read(file: &str) -> Vec<u8> {
    let path = fixtures().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading the fixture {}: {e}", path.display()))
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&read("manifest.json")).expect("manifest.json is JSON")
}

/// A value's Debug text in v0.1.0's names: the types of the wire's node and partition records
/// were renamed since (they were the JSON records' `NodeSpec` and `PartitionSpec`, and have
/// their own wire types now); the bytes did not change, which the frames check.
fn debug_in_v0_1_0_names(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
        .replace("WireNode {", "NodeSpec {")
        .replace("WirePartition {", "PartitionSpec {")
}

// The values v0.1.0's generator encoded (scripts/fixtures-v0.1.0/src/main.rs), repeated.

fn node(id: u32, addr: &str, az: &str) -> NodeSpec {
    NodeSpec {
        id,
        addr: addr.into(),
        az: az.into(),
    }
}

fn part(id: u64, start: u64, epoch: u64, replicas: &[u32], leader: u64) -> PartitionSpec {
    PartitionSpec {
        id,
        start,
        epoch,
        replicas: replicas.to_vec(),
        leader,
    }
}

/// The small table of the snapshot fixture and of the put and table frames.
fn small_table() -> TableSpec {
    TableSpec {
        table: "orders".into(),
        version: 7,
        nodes: vec![
            node(1, "10.0.0.1:8100", "az-a"),
            node(2, "10.0.0.2:8100", "az-b"),
            node(3, "[fd00::3]:8100", "az-c"),
        ],
        partitions: vec![
            part(1, 0, 3, &[1, 2, 3], 0),
            part(2, 1 << 62, 4, &[2, 3, 1], 1),
            part(5, 1 << 63, 1, &[3, 1], 0),
            part(9, 0xF000_0000_0000_0000, 12, &[1], 0),
        ],
    }
}

type Frames = (Vec<(String, u64, Request)>, Vec<(String, u64, Response)>);

/// Every frame of the fixture set: its file name (without `.bin`), id and value. `snap` is the
/// snapshot the put and table frames carry (the fixture's `snapshot.bin`).
fn expected_frames(snap: Vec<u8>) -> Frames {
    let update = PartitionUpdate {
        table: "orders".into(),
        base_version: 7,
        version: 8,
        end_inclusive: (1 << 62) - 1,
        nodes: vec![node(4, "10.0.0.4:8100", "az-a").into()],
        partitions: vec![
            part(1, 0, 4, &[1, 4], 1).into(),
            part(10, 1 << 61, 4, &[4, 2], 0).into(),
        ],
    };
    let batch = BatchUpdate {
        table: "orders".into(),
        base_version: 8,
        version: 9,
        nodes: vec![node(5, "node-5.memds.svc:8100", "az-b").into()],
        ranges: vec![
            RangeUpdate {
                end_inclusive: (1 << 63) - 1,
                partitions: vec![part(2, 1 << 62, 5, &[5, 3], 0).into()],
            },
            RangeUpdate {
                end_inclusive: u64::MAX,
                partitions: vec![
                    part(9, 0xF000_0000_0000_0000, 13, &[1, 5], 1).into(),
                    part(11, 0xF800_0000_0000_0000, 13, &[5, 1], 0).into(),
                ],
            },
        ],
    };

    let requests: Vec<(&str, u64, Request)> = vec![
        (
            "req-lookup",
            1,
            Request::Lookup {
                table: "orders".into(),
                hash: 0xDEAD_BEEF_0BAD_F00D,
                min_version: Some(7),
            },
        ),
        (
            "req-lookup-no-min-version",
            2,
            Request::Lookup {
                table: "orders".into(),
                hash: 42,
                min_version: None,
            },
        ),
        (
            "req-batch-lookup",
            3,
            Request::BatchLookup {
                table: "orders".into(),
                hashes: vec![0, 1, u64::MAX, 1 << 63, 0x0123_4567_89AB_CDEF],
                min_version: Some(3),
            },
        ),
        (
            "req-range",
            4,
            Request::Range {
                table: "orders".into(),
                from: 1 << 40,
                to: u64::MAX,
                limit: 4096,
                min_version: None,
            },
        ),
        (
            "req-get-nodes",
            5,
            Request::GetNodes {
                table: "orders".into(),
            },
        ),
        (
            "req-get-table",
            6,
            Request::GetTable {
                table: "orders".into(),
                if_newer_than: Some(6),
            },
        ),
        (
            "req-get-table-any",
            7,
            Request::GetTable {
                table: "users".into(),
                if_newer_than: None,
            },
        ),
        ("req-list-tables", 8, Request::ListTables),
        ("req-stats", 9, Request::Stats),
        ("req-summary", 10, Request::Summary),
        (
            "req-put-table",
            11,
            Request::PutTable {
                snapshot: snap.clone(),
            },
        ),
        (
            "req-update-partitions",
            12,
            Request::UpdatePartitions(update.clone()),
        ),
        ("req-update-batch", 13, Request::UpdateBatch(batch.clone())),
        (
            "req-get-delta",
            14,
            Request::GetDelta {
                table: "orders".into(),
                since: 5,
            },
        ),
        (
            "req-tree-digests",
            15,
            Request::TreeDigests {
                table: "orders".into(),
                level: 2,
                from: 17,
                end_inclusive: u64::MAX - 17,
            },
        ),
        (
            "req-get-ranges",
            16,
            Request::GetRanges {
                table: "orders".into(),
                ranges: vec![
                    HashRange {
                        from: 0,
                        end_inclusive: 99,
                    },
                    HashRange {
                        from: 1 << 63,
                        end_inclusive: u64::MAX,
                    },
                ],
            },
        ),
        (
            "req-drop-table",
            17,
            Request::DropTable {
                table: "orders".into(),
                version: Some(9),
            },
        ),
        (
            "req-drop-table-any",
            u64::MAX,
            Request::DropTable {
                table: "carts".into(),
                version: None,
            },
        ),
    ];

    let mut responses: Vec<(String, u64, Response)> = vec![
        (
            "resp-routes".into(),
            1,
            Response::Routes(Routes {
                table_version: 9,
                nodes_digest: 0x0123_4567_89AB_CDEF,
                routes: vec![
                    WireRoute {
                        partition: 1,
                        start: 0,
                        end_inclusive: (1 << 61) - 1,
                        epoch: 4,
                        leader: 1,
                        replica_count: 2,
                    },
                    WireRoute {
                        partition: 10,
                        start: 1 << 61,
                        end_inclusive: (1 << 62) - 1,
                        epoch: 4,
                        leader: 0,
                        replica_count: 2,
                    },
                ],
                replicas: vec![1, 4, 4, 2],
                truncated: true,
            }),
        ),
        (
            "resp-nodes".into(),
            5,
            Response::Nodes(NodeList {
                version: 9,
                digest: 0xFEDC_BA98_7654_3210,
                nodes: vec![
                    node(1, "10.0.0.1:8100", "az-a").into(),
                    node(4, "10.0.0.4:8100", "az-a").into(),
                    node(5, "node-5.memds.svc:8100", "az-b").into(),
                ],
            }),
        ),
        (
            "resp-table".into(),
            6,
            Response::Table {
                version: 7,
                snapshot: snap,
            },
        ),
        ("resp-delta".into(), 14, Response::Delta(batch)),
        ("resp-no-delta".into(), 14, Response::NoDelta { version: 9 }),
        (
            "resp-tree-digests".into(),
            15,
            Response::TreeDigests(TreeDigests {
                version: 9,
                levels: 3,
                root: 0x5555_AAAA_5555_AAAA,
                entries: vec![
                    TreeEntry {
                        start: 0,
                        end_inclusive: (1 << 62) - 1,
                        count: 2,
                        digest: 0x1111_2222_3333_4444,
                    },
                    TreeEntry {
                        start: 1 << 62,
                        end_inclusive: u64::MAX,
                        count: 3,
                        digest: 0x9999_8888_7777_6666,
                    },
                ],
                truncated: false,
            }),
        ),
        (
            "resp-not-modified".into(),
            6,
            Response::NotModified { version: 7 },
        ),
        (
            "resp-tables".into(),
            8,
            Response::Tables(vec![
                TableInfo {
                    name: "orders".into(),
                    version: 9,
                    partitions: 5,
                    nodes: 4,
                    nodes_digest: 0xFEDC_BA98_7654_3210,
                    resident_bytes: 1234,
                },
                TableInfo {
                    name: "users".into(),
                    version: 1,
                    partitions: 1,
                    nodes: 1,
                    nodes_digest: 77,
                    resident_bytes: 96,
                },
            ]),
        ),
        (
            "resp-stats".into(),
            9,
            Response::Stats(ServerStats {
                server_version: "0.1.0".into(),
                tables: 2,
                partitions: 6,
                resident_bytes: 4096,
                node_records: 5,
                connections: 3,
                lookups_total: 1_000_000,
                lookups_shed_total: 17,
                requests_total: 1_000_100,
                errors_total: 25,
                writes_total: 12,
                cpu_seconds: 12.5,
                uptime_seconds: 3600.25,
            }),
        ),
        (
            "resp-summary".into(),
            10,
            Response::Summary(Summary {
                instance: 0xA5A5_0000_FFFF_1234,
                ready: true,
                tables: vec![
                    TableSummary {
                        name: "carts".into(),
                        version: 5,
                        digest: 0,
                        dropped: true,
                    },
                    TableSummary {
                        name: "orders".into(),
                        version: 9,
                        digest: 0x0BAD_CAFE_DEAD_BEEF,
                        dropped: false,
                    },
                ],
            }),
        ),
        (
            "resp-written".into(),
            11,
            Response::Written(WriteAck {
                table: "orders".into(),
                version: 7,
                applied: true,
            }),
        ),
        (
            "resp-written-unchanged".into(),
            12,
            Response::Written(WriteAck {
                table: "orders".into(),
                version: 8,
                applied: false,
            }),
        ),
        (
            "resp-dropped".into(),
            17,
            Response::Dropped {
                table: "orders".into(),
                version: 9,
            },
        ),
    ];
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        responses.push((
            format!("resp-error-{}", code.as_str().replace('_', "-")),
            100 + i as u64,
            Response::Error(ErrorReply {
                code,
                message: format!("{} happened to table \"orders\"", code.as_str()),
                current_version: i as u64,
            }),
        ));
    }

    (
        requests
            .into_iter()
            .map(|(name, id, r)| (name.to_owned(), id, r))
            .collect(),
        responses,
    )
}

/// The one frame of a fixture file, through today's [`FrameDecoder`] (fed in small pieces, as
/// a stream delivers it): its id and payload.
fn single_frame(bytes: &[u8]) -> (u64, Vec<u8>) {
    let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    let mut frame = None;
    for piece in bytes.chunks(5) {
        decoder.push(piece);
        if let Some((id, payload)) = decoder.next_frame().expect("a valid frame") {
            assert!(frame.is_none(), "more than one frame");
            frame = Some((id, payload.to_vec()));
        }
    }
    assert_eq!(decoder.buffered(), 0, "bytes left after the frame");
    frame.expect("one whole frame")
}

fn manifest_entry<'a>(manifest: &'a serde_json::Value, file: &str) -> &'a serde_json::Value {
    manifest["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|f| f["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
}

#[test]
fn the_fixture_set_is_the_one_constructed_here() {
    let manifest = manifest();
    assert_eq!(manifest["alpn"], "memds/1");
    assert_eq!(manifest["snapshot"]["format_version"], 1);
    let (requests, responses) = expected_frames(read("snapshot.bin"));
    let constructed: BTreeSet<String> = requests
        .iter()
        .map(|(n, ..)| format!("{n}.bin"))
        .chain(responses.iter().map(|(n, ..)| format!("{n}.bin")))
        .collect();
    let listed: BTreeSet<String> = manifest["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["file"].as_str().expect("file").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures())
        .expect("the fixture directory")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .filter(|n| n.ends_with(".bin") && n != "snapshot.bin")
        .collect();
    assert_eq!(constructed, listed);
    assert_eq!(listed, on_disk);
    // Every variant of both enums is covered (by name, from the Debug renderings).
    let variants = |kind: &str| -> BTreeSet<String> {
        manifest["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .filter(|f| f["kind"] == kind)
            .map(|f| {
                let d = f["debug"].as_str().expect("debug");
                d[..d.find([' ', '(']).unwrap_or(d.len())].to_owned()
            })
            .collect()
    };
    let names = |s: &str| s.split(' ').map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        variants("request"),
        names(
            "Lookup BatchLookup Range GetNodes GetTable ListTables Stats Summary PutTable \
             UpdatePartitions UpdateBatch GetDelta TreeDigests GetRanges DropTable"
        )
    );
    assert_eq!(
        variants("response"),
        names(
            "Routes Nodes Table Delta NoDelta TreeDigests NotModified Tables Stats Summary \
             Written Dropped Error"
        )
    );
}

#[test]
fn every_v0_1_0_request_frame_decodes_and_re_encodes_byte_for_byte() {
    let manifest = manifest();
    let (requests, _) = expected_frames(read("snapshot.bin"));
    for (name, id, expected) in requests {
        let file = format!("{name}.bin");
        let entry = manifest_entry(&manifest, &file);
        assert_eq!(entry["kind"], "request", "{file}");
        assert_eq!(entry["id"], id, "{file}");
        assert_eq!(
            entry["debug"].as_str(),
            Some(debug_in_v0_1_0_names(&expected).as_str()),
            "{file}: the value constructed here is not the one v0.1.0 encoded"
        );
        let bytes = read(&file);
        let (got_id, payload) = single_frame(&bytes);
        assert_eq!(got_id, id, "{file}");
        let decoded = wire::decode_request(&payload)
            .unwrap_or_else(|e| panic!("{file}: today's decoder refuses a v0.1.0 request: {e}"));
        assert_eq!(decoded, expected, "{file}");
        assert_eq!(
            wire::access_request(&payload)
                .expect("validates in place")
                .is_write(),
            expected.is_write(),
            "{file}"
        );
        let mut again = Vec::new();
        wire::encode_request(id, &expected, &mut again);
        assert!(
            again == bytes,
            "{file}: today's encoder writes other bytes than v0.1.0 for the same request"
        );
        // memds/1's frozen enums read and write the same bytes.
        let old = wire::v1::decode_request(&payload)
            .unwrap_or_else(|e| panic!("{file}: wire::v1 refuses a v0.1.0 request: {e}"));
        assert_eq!(
            debug_in_v0_1_0_names(&old),
            debug_in_v0_1_0_names(&expected)
        );
        let mut again = Vec::new();
        wire::v1::encode_request(id, &old, &mut again);
        assert!(
            again == bytes,
            "{file}: wire::v1 writes other bytes than v0.1.0"
        );
    }
}

#[test]
fn every_v0_1_0_response_frame_decodes_and_re_encodes_byte_for_byte() {
    let manifest = manifest();
    let (_, responses) = expected_frames(read("snapshot.bin"));
    for (name, id, expected) in responses {
        let file = format!("{name}.bin");
        let entry = manifest_entry(&manifest, &file);
        assert_eq!(entry["kind"], "response", "{file}");
        assert_eq!(entry["id"], id, "{file}");
        assert_eq!(
            entry["debug"].as_str(),
            Some(debug_in_v0_1_0_names(&expected).as_str()),
            "{file}: the value constructed here is not the one v0.1.0 encoded"
        );
        let bytes = read(&file);
        let (got_id, payload) = single_frame(&bytes);
        assert_eq!(got_id, id, "{file}");
        let decoded = wire::decode_response(&payload)
            .unwrap_or_else(|e| panic!("{file}: today's decoder refuses a v0.1.0 response: {e}"));
        assert_eq!(decoded, expected, "{file}");
        let mut again = Vec::new();
        wire::encode_response(id, &expected, &mut again);
        assert!(
            again == bytes,
            "{file}: today's encoder writes other bytes than v0.1.0 for the same response"
        );
        let old = wire::v1::decode_response(&payload)
            .unwrap_or_else(|e| panic!("{file}: wire::v1 refuses a v0.1.0 response: {e}"));
        assert_eq!(
            debug_in_v0_1_0_names(&old),
            debug_in_v0_1_0_names(&expected)
        );
        let mut again = Vec::new();
        wire::v1::encode_response(id, &old, &mut again);
        assert!(
            again == bytes,
            "{file}: wire::v1 writes other bytes than v0.1.0"
        );
    }
}

#[test]
fn v0_1_0_request_frames_decode_back_to_back_from_one_stream() {
    let (requests, _) = expected_frames(read("snapshot.bin"));
    let stream: Vec<u8> = requests
        .iter()
        .flat_map(|(name, ..)| read(&format!("{name}.bin")))
        .collect();
    let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    let mut got = Vec::new();
    for piece in stream.chunks(7) {
        decoder.push(piece);
        while let Some((id, payload)) = decoder.next_frame().expect("valid frames") {
            got.push((id, wire::decode_request(payload).expect("decodes")));
        }
    }
    let want: Vec<(u64, Request)> = requests.into_iter().map(|(_, id, r)| (id, r)).collect();
    assert_eq!(got, want);
}

#[test]
fn the_v0_1_0_snapshot_decodes_to_its_table() {
    let bytes = read("snapshot.bin");
    assert_eq!(&bytes[..4], b"MDSS");
    assert_eq!(
        u16::from_le_bytes([bytes[4], bytes[5]]),
        1,
        "format version 1"
    );
    let map = snapshot::decode(&bytes, snapshot::DEFAULT_MAX_ARCHIVE_BYTES)
        .expect("today's decoder reads a v0.1.0 snapshot");
    assert_eq!(map, TableMap::try_from(small_table()).expect("valid"));
    let json = String::from_utf8(read("snapshot.json")).expect("UTF-8");
    assert_eq!(
        map,
        TableMap::from_json(&json).expect("the table v0.1.0 printed")
    );
    assert_eq!(
        map.to_json(),
        json,
        "the ingestion JSON is printed as v0.1.0 printed it"
    );
}

/// The fuzz seed corpus is regenerated (`UPDATE_FUZZ_CORPUS=1`, fuzz/driver.rs) into
/// `fuzz/corpus/<target>/<name>` only: it cannot reach these fixtures as long as every seed
/// names one of the crate's targets and a plain file name (no separator, no `..`).
#[test]
fn the_fuzz_corpus_regeneration_cannot_write_into_the_fixtures() {
    let targets: Vec<&str> = memds_proto::fuzzing::TARGETS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let seeds = memds_proto::fuzzing::seed_corpus();
    assert!(!seeds.is_empty());
    for seed in seeds {
        assert!(targets.contains(&seed.target), "{}", seed.target);
        assert!(
            !seed.name.is_empty()
                && !seed.name.contains(['/', '\\'])
                && seed.name != "."
                && seed.name != "..",
            "a seed named {:?} would be written outside fuzz/corpus/{}/",
            seed.name,
            seed.target
        );
    }
}
