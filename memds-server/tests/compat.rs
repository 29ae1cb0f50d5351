//! Mixed versions: the previous release, v0.1.0 (commit 593893d, built by
//! scripts/previous-release.sh), beside this one, as real processes on loopback.
//!
//! - v0.1.0's data directory (tests/fixtures/v0.1.0, written by the old server and never
//!   regenerated) opens under the new server with every table, version, content and tombstone,
//!   and keeps them across the new server's own writes and restart;
//! - an old and a new server, peers, replicate writes both ways, by anti-entropy and by
//!   forwarding, drops included;
//! - routers of each release route through a server of the other;
//! - the old server on a data directory the new one wrote reads it whole or refuses to start,
//!   never starts with less.
//!
//! Every test fails (it never skips) when the previous release is not built.

mod common;
#[path = "common/previous.rs"]
mod previous;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{free_port, temp_dir};
use memds_client::{ClientError, Role};
use memds_proto::model::{BatchEdit, BatchSpec, UpdateSpec};
use memds_proto::model::{NodeSpec, PartitionSpec, TableSpec};
use memds_proto::wire::{BatchUpdate, ErrorCode, Summary};
use memds_proto::{Route, TableMap, key_hash};
use previous::{Pki, Release, ServerSpec, copy_dir, ctl_ok, wait_for};

/// `tests/fixtures/v0.1.0/<rel>`.
fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v0.1.0")
        .join(rel)
}

fn fixture_text(rel: &str) -> String {
    let path = fixture(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An input table of the fixtures (the JSON v0.1.0's memds-ctl was given).
fn input_table(file: &str) -> TableMap {
    TableMap::from_json(&fixture_text(&format!("input/{file}"))).expect("a valid input table")
}

fn input_path(file: &str) -> String {
    fixture(&format!("input/{file}"))
        .to_str()
        .expect("a UTF-8 path")
        .to_owned()
}

fn input_json<T: serde::de::DeserializeOwned>(file: &str) -> T {
    serde_json::from_str(&fixture_text(&format!("input/{file}"))).expect("an input update")
}

/// One table as v0.1.0 reported it.
#[derive(Clone, Debug)]
struct ExpectedTable {
    version: u64,
    partitions: u64,
    nodes: u64,
    nodes_digest: u64,
    /// The content digest of the old server's summary (`None`: not known, not checked).
    digest: Option<u64>,
    map: TableMap,
}

/// What a server must hold: tables and tombstones by name.
#[derive(Clone, Debug)]
struct Expected {
    tables: BTreeMap<String, ExpectedTable>,
    tombstones: BTreeMap<String, u64>,
}

impl Expected {
    /// `expected.json` of the v0.1.0 data directory, with each table's content as the old
    /// `memds-ctl get-table` printed it.
    fn v0_1_0() -> Self {
        let e: serde_json::Value =
            serde_json::from_str(&fixture_text("expected.json")).expect("expected.json");
        let u = |v: &serde_json::Value| v.as_u64().expect("a number");
        let tables = e["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .map(|t| {
                let name = t["name"].as_str().expect("name").to_owned();
                let map = TableMap::from_json(&fixture_text(t["content"].as_str().expect("file")))
                    .expect("the content v0.1.0 printed");
                assert_eq!(map.name().as_str(), name);
                assert_eq!(map.version().get(), u(&t["version"]));
                let table = ExpectedTable {
                    version: u(&t["version"]),
                    partitions: u(&t["partitions"]),
                    nodes: u(&t["nodes"]),
                    nodes_digest: u(&t["nodes_digest"]),
                    digest: Some(u(&t["digest"])),
                    map,
                };
                (name, table)
            })
            .collect();
        let tombstones = e["tombstones"]
            .as_array()
            .expect("tombstones")
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().expect("name").to_owned(),
                    u(&t["version"]),
                )
            })
            .collect();
        Self { tables, tombstones }
    }

    /// What a server reports now (to compare another server with it later).
    async fn of(pki: &Pki, addr: SocketAddr) -> Self {
        let c = pki.client(addr, Role::Admin).await;
        let summary = c.summary().await.expect("summary");
        let mut tables = BTreeMap::new();
        for info in c.list_tables().await.expect("tables") {
            let map = c
                .get_table(&info.name, None)
                .await
                .expect("get-table")
                .expect("the table");
            let digest = summary
                .tables
                .iter()
                .find(|t| t.name == info.name && !t.dropped)
                .map(|t| t.digest);
            tables.insert(
                info.name.clone(),
                ExpectedTable {
                    version: info.version,
                    partitions: info.partitions,
                    nodes: info.nodes,
                    nodes_digest: info.nodes_digest,
                    digest,
                    map,
                },
            );
        }
        c.close();
        Self {
            tables,
            tombstones: tombstones(&summary),
        }
    }

    /// Asserts the server at `addr` holds exactly this: every table with its version, sizes,
    /// node digest, content digest and content, and every tombstone; `who` names it.
    async fn assert_held_by(&self, pki: &Pki, addr: SocketAddr, who: &str) {
        let c = pki.client(addr, Role::Admin).await;
        let listed: BTreeMap<String, _> = c
            .list_tables()
            .await
            .expect("tables")
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        assert_eq!(
            listed.keys().collect::<Vec<_>>(),
            self.tables.keys().collect::<Vec<_>>(),
            "{who}: the tables held"
        );
        let summary = c.summary().await.expect("summary");
        for (name, want) in &self.tables {
            let got = &listed[name];
            assert_eq!(
                (got.version, got.partitions, got.nodes, got.nodes_digest),
                (want.version, want.partitions, want.nodes, want.nodes_digest),
                "{who}: {name}'s version, partitions, nodes and nodes digest"
            );
            let map = c
                .get_table(name, None)
                .await
                .expect("get-table")
                .expect("the table");
            assert!(map == want.map, "{who}: {name}'s content differs");
            let entry = summary
                .tables
                .iter()
                .find(|t| &t.name == name)
                .unwrap_or_else(|| panic!("{who}: {name} missing from the summary"));
            assert!(
                !entry.dropped && entry.version == want.version,
                "{who}: {entry:?}"
            );
            if let Some(digest) = want.digest {
                assert_eq!(
                    entry.digest, digest,
                    "{who}: {name}'s content digest differs from the one v0.1.0 computed for \
                     the same content (a mixed fleet would count digest mismatches)"
                );
            }
        }
        assert_eq!(
            tombstones(&summary),
            self.tombstones,
            "{who}: the tombstones"
        );
        c.close();
    }
}

/// The tombstones of a summary: name and version dropped.
fn tombstones(summary: &Summary) -> BTreeMap<String, u64> {
    summary
        .tables
        .iter()
        .filter(|t| t.dropped)
        .map(|t| (t.name.clone(), t.version))
        .collect()
}

/// A one-partition table.
fn tiny(name: &str, version: u64) -> TableMap {
    TableMap::try_from(TableSpec {
        table: name.into(),
        version,
        nodes: vec![NodeSpec {
            id: 1,
            addr: "10.9.9.9:9000".into(),
            az: "az-z".into(),
        }],
        partitions: vec![PartitionSpec {
            id: 1,
            start: 0,
            epoch: 1,
            replicas: vec![1],
            leader: 0,
        }],
    })
    .expect("valid")
}

fn server_error(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_1_0_data_directory_opens_whole_under_the_new_server() {
    let root = temp_dir("compat-open");
    let pki = Pki::create(&root.path().join("pki"));
    let data = root.path().join("data");
    copy_dir(&fixture("data-dir"), &data);
    assert!(
        data.join("state.db").is_file(),
        "the fixture holds a checkpoint"
    );
    let expected = Expected::v0_1_0();
    assert!(expected.tables.len() >= 4 && expected.tombstones.len() >= 3);

    let mut server = ServerSpec::new(Release::Current, &pki, &data, free_port()).start();
    expected
        .assert_held_by(
            &pki,
            server.addr,
            "the new server on v0.1.0's data directory",
        )
        .await;
    // Today's memds-ctl prints each table as v0.1.0's printed it (the JSON ingestion format).
    for name in expected.tables.keys() {
        let printed = ctl_ok(Release::Current, &pki, &[server.addr], &["get-table", name]).await;
        let old: serde_json::Value =
            serde_json::from_str(&fixture_text(&format!("tables/{name}.json"))).expect("JSON");
        let new: serde_json::Value = serde_json::from_str(&printed).expect("get-table prints JSON");
        assert_eq!(new, old, "memds-ctl get-table {name}");
    }

    // Tombstones still refuse what they refuse: a put at or below the version dropped.
    let admin = pki.client(server.addr, Role::Admin).await;
    for (name, &version) in &expected.tombstones {
        assert_eq!(
            server_error(admin.put_table(&tiny(name, version)).await),
            ErrorCode::Stale,
            "a put of {name} at its tombstone's version {version}"
        );
    }
    // A table below its current version is refused too, and the current one is idempotent.
    let users = &expected.tables["users"];
    assert_eq!(
        server_error(admin.put_table(&tiny("users", users.version - 1)).await),
        ErrorCode::Stale
    );
    assert!(!admin.put_table(&users.map).await.expect("same put").applied);

    // The new server writes on top of the old directory, stops cleanly and restarts on it.
    let orders = &expected.tables["orders"].map;
    let split = memds_proto::synth::split_update(orders, 10, 9_000);
    let ack = admin.update_partitions(split).await.expect("the update");
    assert_eq!(ack.version, orders.version().get() + 1);
    let revived = admin
        .put_table(&tiny("ghost", expected.tombstones["ghost"] + 1))
        .await
        .expect("a put above the tombstone");
    assert!(revived.applied);
    admin.close();
    let after = Expected::of(&pki, server.addr).await;
    assert_eq!(after.tables["orders"].version, ack.version);
    assert_eq!(
        after.tables["orders"].partitions,
        expected.tables["orders"].partitions + 1
    );
    assert!(!after.tombstones.contains_key("ghost"));
    server.stop();
    let server = ServerSpec::new(Release::Current, &pki, &data, free_port()).start();
    after
        .assert_held_by(
            &pki,
            server.addr,
            "the new server restarted on the directory",
        )
        .await;
    // Everything else is as v0.1.0 left it.
    for (name, t) in &expected.tables {
        if name != "orders" {
            assert!(after.tables[name].map == t.map, "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_servers_replicate_writes_both_ways() {
    let root = temp_dir("compat-peers");
    let pki = Pki::create(&root.path().join("pki"));
    let (old_dir, new_dir) = (root.path().join("old"), root.path().join("new"));
    let (old_port, new_port) = (free_port(), free_port());
    let old_addr = SocketAddr::from(([127, 0, 0, 1], old_port));
    let new_addr = SocketAddr::from(([127, 0, 0, 1], new_port));
    let start_old = || {
        ServerSpec::new(Release::Previous, &pki, &old_dir, old_port)
            .peers(&[new_addr])
            .start()
    };

    // 1. The old server alone takes writes from the old memds-ctl.
    let mut old = start_old();
    ctl_ok(
        Release::Previous,
        &pki,
        &[old_addr],
        &["put-table", &input_path("users-v1.json")],
    )
    .await;
    ctl_ok(
        Release::Previous,
        &pki,
        &[old_addr],
        &["put-table", &input_path("orders-v10.json")],
    )
    .await;
    ctl_ok(
        Release::Previous,
        &pki,
        &[old_addr],
        &["drop-table", "ghost", "--version", "9"],
    )
    .await;

    // 2. The new server joins and pulls all of it from the old one (anti-entropy).
    let new = ServerSpec::new(Release::Current, &pki, &new_dir, new_port)
        .peers(&[old_addr])
        .start();
    wait_for(
        &pki,
        new_addr,
        "the new server pulls from the old one",
        |s| s.ready && s.tables.len() == 3,
    )
    .await;
    // The old server, alone until now with its peer unreachable, was not ready (it refuses
    // reads); it is once it has had a round with the new one.
    wait_for(&pki, old_addr, "the old server is ready", |s| s.ready).await;
    Expected::of(&pki, old_addr)
        .await
        .assert_held_by(&pki, new_addr, "the new server, after pulling from the old")
        .await;

    // 3. Both running: each forwards its writes to the other.
    let admin_new = pki.client(new_addr, Role::Admin).await;
    let update: UpdateSpec = input_json("orders-update-v11.json");
    assert_eq!(
        admin_new
            .update_partitions(update)
            .await
            .expect("update")
            .version,
        11
    );
    wait_for(&pki, old_addr, "orders v11 reaches the old server", |s| {
        s.tables
            .iter()
            .any(|t| t.name == "orders" && t.version == 11)
    })
    .await;

    // fleet-status sees the mixed fleet: each server's release and the protocol each
    // connection settled on. The old server speaks memds/1 only and does not say what it reads;
    // the old memds-ctl's status of the same fleet works too (memds/1 both ways).
    let both = [old_addr, new_addr];
    let status: serde_json::Value =
        serde_json::from_str(&ctl_ok(Release::Current, &pki, &both, &["fleet-status"]).await)
            .expect("fleet-status JSON");
    assert_eq!(
        status["releases"],
        serde_json::json!({"0.1.0": 1, env!("CARGO_PKG_VERSION"): 1}),
        "{status}"
    );
    let (old_status, new_status) = (&status["servers"][0], &status["servers"][1]);
    assert_eq!(old_status["release"], "0.1.0", "{status}");
    assert_eq!(old_status["protocol"], "memds/1", "{status}");
    assert!(old_status["protocols"].is_null() && old_status["formats"].is_null());
    assert_eq!(new_status["release"], env!("CARGO_PKG_VERSION"), "{status}");
    assert_eq!(new_status["protocol"], "memds/2", "{status}");
    assert_eq!(
        new_status["protocols"],
        serde_json::json!(["memds/2", "memds/1"])
    );
    let table = ctl_ok(
        Release::Current,
        &pki,
        &both,
        &["fleet-status", "--format", "table"],
    )
    .await;
    assert!(table.contains("(mixed: the fleet is rolling)"), "{table}");
    let old_view: serde_json::Value =
        serde_json::from_str(&ctl_ok(Release::Previous, &pki, &both, &["fleet-status"]).await)
            .expect("the old fleet-status JSON");
    assert_eq!(old_view["servers"][0]["build"], "0.1.0", "{old_view}");
    assert_eq!(
        old_view["servers"][1]["build"],
        env!("CARGO_PKG_VERSION"),
        "{old_view}"
    );

    ctl_ok(
        Release::Previous,
        &pki,
        &[old_addr],
        &["update-batch", &input_path("orders-batch-v12.json")],
    )
    .await;
    admin_new
        .put_table(&input_table("carts-v7.json"))
        .await
        .expect("put carts");
    ctl_ok(
        Release::Previous,
        &pki,
        &[old_addr],
        &["drop-table", "users"],
    )
    .await;
    assert_eq!(
        admin_new.drop_table_at("regions", 4).await.expect("drop"),
        4
    );
    let settled = |s: &Summary| {
        let has = |name: &str, version: u64, dropped: bool| {
            s.tables
                .iter()
                .any(|t| t.name == name && t.version == version && t.dropped == dropped)
        };
        has("orders", 12, false)
            && has("carts", 7, false)
            && has("users", 1, true)
            && has("regions", 4, true)
            && has("ghost", 9, true)
    };
    wait_for(&pki, new_addr, "the new server has every write", settled).await;
    wait_for(&pki, old_addr, "the old server has every write", settled).await;
    let both = Expected::of(&pki, new_addr).await;
    both.assert_held_by(&pki, old_addr, "the old server, beside the new")
        .await;

    // 4. The old server stops; the new one takes writes; the old one restarts and catches up
    //    from the new one (anti-entropy, the old server pulling).
    old.stop();
    let orders: TableMap = admin_new
        .get_table("orders", None)
        .await
        .expect("get")
        .expect("orders");
    let batch = BatchUpdate::from(memds_proto::synth::split_update(&orders, 42, 7_000));
    assert_eq!(
        admin_new.update_batch(batch).await.expect("batch").version,
        13
    );
    admin_new
        .put_table(&input_table("users-v2.json"))
        .await
        .expect("users v2 above its tombstone");
    admin_new.drop_table("carts").await.expect("drop carts");
    admin_new.close();
    let old = start_old();
    let later = Expected::of(&pki, new_addr).await;
    assert_eq!(later.tables["orders"].version, 13);
    assert_eq!(later.tombstones.get("carts"), Some(&7));
    wait_for(&pki, old.addr, "the restarted old server catches up", |s| {
        s.ready
            && s.tables
                .iter()
                .any(|t| t.name == "carts" && t.dropped && t.version == 7)
            && s.tables
                .iter()
                .any(|t| t.name == "orders" && t.version == 13)
            && s.tables.iter().any(|t| t.name == "users" && t.version == 2)
    })
    .await;
    later
        .assert_held_by(&pki, old.addr, "the old server, caught up from the new")
        .await;
    drop(new);
}

/// The JSON of an `explain` without the fields that name the server that answered.
fn explanation(out: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(out).expect("explain prints JSON");
    let o = v.as_object_mut().expect("an object");
    o.remove("server");
    o.remove("skipped");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_of_each_release_route_through_a_server_of_the_other() {
    let root = temp_dir("compat-routers");
    let pki = Pki::create(&root.path().join("pki"));
    let old = ServerSpec::new(
        Release::Previous,
        &pki,
        &root.path().join("old"),
        free_port(),
    )
    .start();
    let new = ServerSpec::new(
        Release::Current,
        &pki,
        &root.path().join("new"),
        free_port(),
    )
    .start();
    let map = input_table("orders-v10.json");
    for s in [&old, &new] {
        ctl_ok(
            s.release,
            &pki,
            &[s.addr],
            &["put-table", &input_path("orders-v10.json")],
        )
        .await;
    }
    let keys = [
        "user#42",
        "order#7",
        "",
        "a much longer key with spaces / and slashes",
    ];
    for router in [Release::Previous, Release::Current] {
        let (through, other) = match router {
            Release::Previous => (&new, &old),
            Release::Current => (&old, &new),
        };
        let who = format!(
            "a {router:?} memds-ctl through a {:?} server",
            through.release
        );
        for key in keys {
            let args = [
                "--role", "router", "lookup", "--table", "orders", "--key", key,
            ];
            let route: Route =
                serde_json::from_str(&ctl_ok(router, &pki, &[through.addr], &args).await)
                    .expect("a route");
            assert_eq!(route, map.route(key_hash(key.as_bytes())), "{who}: {key:?}");
            let args = [
                "--role", "router", "explain", "--table", "orders", "--key", key,
            ];
            let got = explanation(&ctl_ok(router, &pki, &[through.addr], &args).await);
            let same_release = explanation(&ctl_ok(router, &pki, &[other.addr], &args).await);
            assert_eq!(got, same_release, "{who}: explain {key:?}");
            assert_eq!(got["hash"], key_hash(key.as_bytes()), "{who}: {key:?}");
            assert_eq!(got["partition"], route.partition.get(), "{who}: {key:?}");
        }
        let hashes: Vec<u64> = (0..64u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .chain([0, u64::MAX])
            .collect();
        let file = root.path().join("hashes.txt");
        std::fs::write(
            &file,
            hashes.iter().map(|h| format!("{h}\n")).collect::<String>(),
        )
        .expect("write");
        let args = [
            "--role",
            "router",
            "lookup",
            "--table",
            "orders",
            "--hashes-file",
            file.to_str().expect("UTF-8"),
        ];
        let routes: Vec<Route> = ctl_ok(router, &pki, &[through.addr], &args)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).expect("a route line"))
            .collect();
        assert_eq!(
            routes,
            hashes.iter().map(|&h| map.route(h)).collect::<Vec<_>>(),
            "{who}: batch lookup"
        );
    }

    // The new client, as a router, against the old server: lookups, batches, range scans and
    // node lists resolve to the table's routes; get-table gives the table itself.
    let c = pki.client(old.addr, Role::Router).await;
    let name = map.name().clone();
    let nodes = c.get_nodes("orders").await.expect("get-nodes");
    assert_eq!(nodes.version, map.version().get());
    let hashes: Vec<u64> = (0..500u64)
        .map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D))
        .collect();
    for &h in &hashes[..20] {
        let routes = c.lookup("orders", h).await.expect("lookup");
        assert_eq!(routes.resolve(&name, &nodes), Some(vec![map.route(h)]));
    }
    let batch = c
        .batch_lookup("orders", hashes.clone())
        .await
        .expect("batch");
    assert_eq!(
        batch.resolve(&name, &nodes),
        Some(hashes.iter().map(|&h| map.route(h)).collect())
    );
    let scan = c.range("orders", 0, u64::MAX, 4096).await.expect("range");
    let all = scan.resolve(&name, &nodes).expect("resolves");
    assert_eq!(all.len(), map.partitions().len());
    assert!(
        all.iter()
            .zip(map.partitions())
            .all(|(r, p)| r.partition == p.id)
    );
    let got = c
        .get_table("orders", None)
        .await
        .expect("get-table")
        .expect("the table");
    assert!(got == map, "the table through the old server");
    assert_eq!(
        server_error(c.put_table(&tiny("nope", 1)).await),
        ErrorCode::Unauthorized,
        "the old server still refuses a router's write"
    );
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_server_reads_a_new_data_directory_whole_or_refuses_to_start() {
    let root = temp_dir("compat-downgrade");
    let pki = Pki::create(&root.path().join("pki"));
    let data = root.path().join("data");

    // The new server writes a directory like the fixture's: a checkpoint, then puts, an
    // update, batches and drops in the log after it.
    let mut new = ServerSpec::new(Release::Current, &pki, &data, free_port())
        .args(&["--compact-wal-bytes", "4096"])
        .start();
    let admin = pki.client(new.addr, Role::Admin).await;
    for file in [
        "users-v1.json",
        "sessions-v3.json",
        "carts-v5.json",
        "regions-v2.json",
    ] {
        admin.put_table(&input_table(file)).await.expect("put");
    }
    admin.drop_table("sessions").await.expect("drop");
    admin.drop_table_at("ghost", 9).await.expect("drop");
    admin
        .put_table(&input_table("orders-v10.json"))
        .await
        .expect("put");
    admin
        .update_partitions(input_json::<UpdateSpec>("orders-update-v11.json"))
        .await
        .expect("update");
    admin
        .update_batch(BatchEdit::from(input_json::<BatchSpec>(
            "orders-batch-v12.json",
        )))
        .await
        .expect("batch");
    admin
        .update_batch(BatchEdit::from(input_json::<BatchSpec>(
            "regions-batch-v3.json",
        )))
        .await
        .expect("batch");
    admin
        .put_table(&input_table("users-v2.json"))
        .await
        .expect("put");
    admin.drop_table("carts").await.expect("drop");
    admin
        .put_table(&input_table("inventory-v1.json"))
        .await
        .expect("put");
    admin.close();
    let written = Expected::of(&pki, new.addr).await;
    assert_eq!(written.tables.len(), 4);
    assert_eq!(written.tombstones.len(), 3);
    new.stop();
    let files: Vec<String> = std::fs::read_dir(&data)
        .expect("the data directory")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .collect();
    assert!(
        files.iter().any(|f| f == "state.db") && files.iter().any(|f| f.starts_with("wal-")),
        "the new server wrote a checkpoint and a log: {files:?}"
    );

    match ServerSpec::new(Release::Previous, &pki, &data, free_port()).try_start() {
        Ok(mut old) => {
            written
                .assert_held_by(&pki, old.addr, "the old server on the new data directory")
                .await;
            eprintln!("the old server read the new data directory whole ({files:?})");
            old.stop();
        }
        Err(refusal) => {
            assert!(!refusal.status.success(), "{refusal:?}");
            assert!(
                refusal.log.contains("data directory")
                    || refusal.log.contains(data.to_str().expect("UTF-8")),
                "the old server refused without saying why: {refusal:?}"
            );
            eprintln!(
                "the old server refused the new data directory: {}",
                refusal.log
            );
        }
    }
}

/// The fuzz seed corpus of this crate is regenerated (`UPDATE_FUZZ_CORPUS=1`, fuzz/driver.rs)
/// into `fuzz/corpus/<target>/<name>` only: it cannot reach tests/fixtures as long as every
/// seed names one of the crate's targets and a plain file name.
#[test]
fn the_fuzz_corpus_regeneration_cannot_write_into_the_fixtures() {
    let scratch = temp_dir("compat-fuzz-seeds");
    let targets: Vec<&str> = memds_server::fuzzing::TARGETS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let seeds = memds_server::fuzzing::seed_corpus(scratch.path()).expect("the seeds");
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
