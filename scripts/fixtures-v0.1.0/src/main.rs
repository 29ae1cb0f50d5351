//! Writes MemDS v0.1.0's golden fixtures with v0.1.0's own code (memds-proto at commit 593893d):
//!
//! - `wire <dir>`: one file per request and response frame (`<name>.bin`, encoded with
//!   `wire::encode_request` / `encode_response`), `snapshot.bin` (`snapshot::encode` of a small
//!   table) with that table's ingestion JSON `snapshot.json`, and `manifest.json` listing every
//!   file with its kind, frame id and the Debug rendering of the value encoded.
//! - `inputs <dir>`: the tables and updates `generate.sh` feeds to the old server through the
//!   old `memds-ctl` to write the data-directory fixture.
//! - `held <fleet-status.json>`: prints, one per line, what the first server of an old
//!   `memds-ctl fleet-status` holds (table, version, digest, dropped), to compare two runs.
//! - `expected <tables.json> <fleet-status.json>`: prints `expected.json` from what the old
//!   `memds-ctl tables` and `fleet-status` printed. (In Rust rather than jq: jq 1.6 reads
//!   numbers as doubles, and digests are full u64s.)
//!
//! The values here are repeated, constructed by hand, in memds-proto/tests/wire_v0_1_0.rs; the
//! manifest's Debug renderings let that test check the two agree.

use std::path::{Path, PathBuf};

use memds_proto::model::{NodeSpec, PartitionSpec, TableSpec};
use memds_proto::wire::{
    BatchUpdate, ErrorCode, ErrorReply, HashRange, NodeList, PartitionUpdate, RangeUpdate, Request,
    Response, Routes, ServerStats, Summary, TableInfo, TableSummary, TreeDigests, TreeEntry,
    WireRoute, WriteAck,
};
use memds_proto::{TableMap, snapshot};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, cmd, dir] if cmd == "wire" => wire(Path::new(dir)),
        [_, cmd, dir] if cmd == "inputs" => inputs(Path::new(dir)),
        [_, cmd, status] if cmd == "held" => held(Path::new(status)),
        [_, cmd, tables, status] if cmd == "expected" => {
            expected(Path::new(tables), Path::new(status));
        }
        _ => {
            eprintln!(
                "usage: memds-fixtures-v0-1-0 wire|inputs <dir> | held <fleet-status.json> | \
                 expected <tables.json> <fleet-status.json>"
            );
            std::process::exit(2);
        }
    }
}

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

fn write(path: PathBuf, bytes: &[u8]) {
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn wire(dir: &Path) {
    std::fs::create_dir_all(dir).expect("creating the output directory");
    let map = TableMap::try_from(small_table()).expect("a valid table");
    let snap = snapshot::encode(&map);
    write(dir.join("snapshot.bin"), &snap);
    write(dir.join("snapshot.json"), map.to_json().as_bytes());

    let update = PartitionUpdate {
        table: "orders".into(),
        base_version: 7,
        version: 8,
        end_inclusive: (1 << 62) - 1,
        nodes: vec![node(4, "10.0.0.4:8100", "az-a")],
        partitions: vec![part(1, 0, 4, &[1, 4], 1), part(10, 1 << 61, 4, &[4, 2], 0)],
    };
    let batch = BatchUpdate {
        table: "orders".into(),
        base_version: 8,
        version: 9,
        nodes: vec![node(5, "node-5.memds.svc:8100", "az-b")],
        ranges: vec![
            RangeUpdate {
                end_inclusive: (1 << 63) - 1,
                partitions: vec![part(2, 1 << 62, 5, &[5, 3], 0)],
            },
            RangeUpdate {
                end_inclusive: u64::MAX,
                partitions: vec![
                    part(9, 0xF000_0000_0000_0000, 13, &[1, 5], 1),
                    part(11, 0xF800_0000_0000_0000, 13, &[5, 1], 0),
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
                    node(1, "10.0.0.1:8100", "az-a"),
                    node(4, "10.0.0.4:8100", "az-a"),
                    node(5, "node-5.memds.svc:8100", "az-b"),
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

    let mut manifest = Vec::new();
    for (name, id, request) in &requests {
        let mut frame = Vec::new();
        memds_proto::wire::encode_request(*id, request, &mut frame);
        let file = format!("{name}.bin");
        write(dir.join(&file), &frame);
        manifest.push(serde_json::json!({
            "file": file, "kind": "request", "id": id, "debug": format!("{request:?}"),
        }));
    }
    for (name, id, response) in &responses {
        let mut frame = Vec::new();
        memds_proto::wire::encode_response(*id, response, &mut frame);
        let file = format!("{name}.bin");
        write(dir.join(&file), &frame);
        manifest.push(serde_json::json!({
            "file": file, "kind": "response", "id": id, "debug": format!("{response:?}"),
        }));
    }
    let manifest = serde_json::json!({
        "written_by": "memds-proto 0.1.0 (commit 593893d), scripts/fixtures-v0.1.0",
        "alpn": String::from_utf8_lossy(memds_proto::wire::ALPN),
        "snapshot": {"file": "snapshot.bin", "json": "snapshot.json",
                      "magic": "MDSS", "format_version": snapshot::FORMAT_VERSION},
        "frames": manifest,
    });
    write(
        dir.join("manifest.json"),
        (serde_json::to_string_pretty(&manifest).expect("JSON") + "\n").as_bytes(),
    );
}

/// A table of `partitions` partitions spread evenly over the hash space, on six nodes in three
/// zones, three replicas each.
fn big_table(name: &str, version: u64, partitions: u64) -> TableSpec {
    let nodes = (1..=6u32)
        .map(|i| {
            node(
                i,
                &format!("10.1.{}.{}:8100", i % 3, i),
                &format!("az-{}", ["a", "b", "c"][(i % 3) as usize]),
            )
        })
        .collect();
    let step = u64::MAX / partitions;
    let partitions = (0..partitions)
        .map(|i| {
            let r = (i % 6) as u32;
            part(
                1000 + i,
                i * step,
                1 + i % 5,
                &[r + 1, (r + 2) % 6 + 1, (r + 4) % 6 + 1],
                i % 3,
            )
        })
        .collect();
    TableSpec {
        table: name.into(),
        version,
        nodes,
        partitions,
    }
}

fn small(name: &str, version: u64, parts: u64) -> TableSpec {
    let step = u64::MAX / parts;
    TableSpec {
        table: name.into(),
        version,
        nodes: vec![
            node(1, &format!("{name}-1.memds.test:9000"), "az-a"),
            node(2, &format!("{name}-2.memds.test:9000"), "az-b"),
        ],
        partitions: (0..parts)
            .map(|i| part(i + 1, i * step, version, &[1, 2], i % 2))
            .collect(),
    }
}

fn json_file(dir: &Path, name: &str, value: &impl serde::Serialize) {
    write(
        dir.join(name),
        (serde_json::to_string_pretty(value).expect("JSON") + "\n").as_bytes(),
    );
}

fn table_file(dir: &Path, name: &str, spec: TableSpec) -> TableMap {
    let map = TableMap::try_from(spec).expect("a valid table");
    write(dir.join(name), map.to_json().as_bytes());
    map
}

fn inputs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("creating the output directory");
    // Before the checkpoint.
    table_file(dir, "users-v1.json", small("users", 1, 4));
    table_file(dir, "sessions-v3.json", small("sessions", 3, 2));
    table_file(dir, "carts-v5.json", small("carts", 5, 3));
    table_file(dir, "regions-v2.json", small("regions", 2, 8));
    let orders = table_file(dir, "orders-v10.json", big_table("orders", 10, 300));
    // After it: a split of partition 5 (v11), then a batch of two splits, a replica move and a
    // new node (v12), based on partitions the first split leaves as they were.
    let split = memds_proto::synth::split_update(&orders, 5, 5000);
    assert_eq!((split.base_version, split.version), (10, 11));
    json_file(dir, "orders-update-v11.json", &split);
    let a = memds_proto::synth::split_update(&orders, 100, 5100);
    let b = memds_proto::synth::split_update(&orders, 200, 5200);
    let moved = orders.partitions()[250];
    let batch = BatchUpdate {
        table: "orders".into(),
        base_version: 11,
        version: 12,
        nodes: vec![node(7, "10.1.0.7:8100", "az-a")],
        ranges: vec![
            RangeUpdate {
                end_inclusive: a.end_inclusive,
                partitions: a.partitions,
            },
            RangeUpdate {
                end_inclusive: b.end_inclusive,
                partitions: b.partitions,
            },
            RangeUpdate {
                end_inclusive: orders.end_inclusive(250),
                partitions: vec![part(
                    moved.id.get(),
                    moved.start,
                    moved.epoch.get() + 1,
                    &[7, moved.replicas.as_slice()[1].get()],
                    0,
                )],
            },
        ],
    };
    json_file(dir, "orders-batch-v12.json", &batch);
    // regions: a batch in the log too (a leader change of its first partition, v3).
    let regions = TableMap::try_from(small("regions", 2, 8)).expect("valid");
    let p = regions.partitions()[0];
    json_file(
        dir,
        "regions-batch-v3.json",
        &BatchUpdate {
            table: "regions".into(),
            base_version: 2,
            version: 3,
            nodes: vec![],
            ranges: vec![RangeUpdate {
                end_inclusive: regions.end_inclusive(0),
                partitions: vec![part(p.id.get(), 0, 3, &[2, 1], 0)],
            }],
        },
    );
    table_file(dir, "users-v2.json", small("users", 2, 6));
    table_file(dir, "inventory-v1.json", small("inventory", 1, 5));
    table_file(dir, "carts-v7.json", small("carts", 7, 4));
}

fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first server's tables and tombstones of a `fleet-status` output.
fn held_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["servers"][0]["table_versions"]
        .as_array()
        .expect("table_versions")
        .iter()
        .map(|t| {
            serde_json::json!({
                "table": t["table"], "version": t["version"],
                "digest": t["digest"], "dropped": t["dropped"],
            })
        })
        .collect()
}

fn held(status: &Path) {
    for t in held_of(&read_json(status)) {
        println!("{t}");
    }
}

fn expected(tables: &Path, status: &Path) {
    let held = held_of(&read_json(status));
    let tables: Vec<serde_json::Value> = read_json(tables)
        .as_array()
        .expect("a table list")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().expect("name");
            let summary = held
                .iter()
                .find(|h| h["table"] == name && h["dropped"] == false)
                .unwrap_or_else(|| panic!("{name} is not in fleet-status"));
            serde_json::json!({
                "name": name,
                "version": t["version"],
                "partitions": t["partitions"],
                "nodes": t["nodes"],
                "nodes_digest": t["nodes_digest"],
                "digest": summary["digest"],
                "content": format!("tables/{name}.json"),
            })
        })
        .collect();
    let tombstones: Vec<serde_json::Value> = held
        .iter()
        .filter(|h| h["dropped"] == true)
        .map(|h| serde_json::json!({"name": h["table"], "version": h["version"]}))
        .collect();
    let out = serde_json::json!({
        "written_by": "memds-server 0.1.0 (commit 593893d), scripts/fixtures-v0.1.0/generate.sh",
        "tables": tables,
        "tombstones": tombstones,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
}
