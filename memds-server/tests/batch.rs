//! Issue 12 over real QUIC: batch updates (many ranges, one version, one log record), deltas
//! since a version, tree digests and range pulls, and who may ask for each.

mod common;

use common::{TestServer, table, temp_dir};
use memds_client::{Client, ClientError, DeltaAnswer, Role};
use memds_proto::model::{BatchEdit, NodeSpec, PartitionSpec, TableSpec};
use memds_proto::synth::split_update;
use memds_proto::wire::{ErrorCode, HashRange};
use memds_proto::{CompactTable, NodeInterner, TableMap};
use memds_server::Limits;

/// One batch splitting each partition of `map` at `indexes` (ascending), from its version to
/// the next; new ids from `first_id` on.
fn split_batch(map: &TableMap, indexes: &[usize], first_id: u64) -> BatchEdit {
    let mut batch = BatchEdit::from(split_update(map, indexes[0], first_id));
    for (k, &i) in indexes.iter().enumerate().skip(1) {
        batch
            .ranges
            .extend(BatchEdit::from(split_update(map, i, first_id + k as u64)).ranges);
    }
    batch
}

/// `map` with `update` applied, as the server should hold it (computed by the shared encoding).
fn applied(map: &TableMap, update: &BatchEdit) -> TableMap {
    let mut interner = NodeInterner::default();
    CompactTable::new(map, &mut interner)
        .apply(update, &mut interner)
        .expect("the update applies")
        .to_map()
}

/// The record of partition `i` of `map`.
fn spec_of(map: &TableMap, i: usize) -> PartitionSpec {
    TableSpec::from(map).partitions[i].clone()
}

async fn held(client: &Client, name: &str) -> TableMap {
    client
        .get_table(name, None)
        .await
        .expect("get-table")
        .expect("unconditional get")
}

async fn digest(client: &Client, name: &str) -> (u64, u64) {
    let summary = client.summary().await.expect("summary");
    let t = summary
        .tables
        .iter()
        .find(|t| t.name == name)
        .expect("summarised");
    (t.version, t.digest)
}

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> memds_proto::wire::ErrorReply {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected a typed error answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_100_splits_applies_at_one_version_and_lookups_see_every_split() {
    let mut s = TestServer::start("batch-100").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let map = table(0, 1000, 1);
    let name = map.name().as_str().to_owned();
    let n = map.partitions().len();
    assert!(n >= 700, "{n} partitions");
    admin.put_table(&map).await.expect("put");

    let indexes: Vec<usize> = (0..100).map(|k| k * 7).collect();
    let batch = split_batch(&map, &indexes, 5_000_000);
    assert_eq!((batch.base_version, batch.version), (1, 2));
    let ack = admin.update_batch(batch.clone()).await.expect("batch");
    assert_eq!((ack.version, ack.applied), (2, true));

    // Every half of every split, in one batch lookup.
    let hashes: Vec<u64> = batch
        .ranges
        .iter()
        .flat_map(|r| r.partitions.iter().map(|p| p.start))
        .collect();
    let routes = router.batch_lookup(&name, hashes).await.expect("lookup");
    assert_eq!(routes.table_version, 2);
    let want: Vec<u64> = batch
        .ranges
        .iter()
        .flat_map(|r| r.partitions.iter().map(|p| p.id))
        .collect();
    let got: Vec<u64> = routes.routes.iter().map(|r| r.partition).collect();
    assert_eq!(got, want);
    for (r, pair) in batch.ranges.iter().zip(routes.routes.chunks(2)) {
        assert_eq!(pair[0].end_inclusive, r.partitions[1].start - 1);
        assert_eq!(pair[1].end_inclusive, r.end_inclusive);
    }
    let tables = router.list_tables().await.expect("list");
    assert_eq!(
        (tables[0].version, tables[0].partitions),
        (2, (n + 100) as u64)
    );
    assert_eq!(held(&admin, &name).await, applied(&map, &batch));

    // A retry is acknowledged without change.
    let ack = admin.update_batch(batch).await.expect("retry");
    assert_eq!((ack.version, ack.applied), (2, false));
    // (The metrics recorder is the test process's: other tests' batches count too.)
    let page = s.scrape().await;
    let applied_batches = page
        .lines()
        .find_map(|l| l.strip_prefix(r#"memds_writes_total{op="update_batch",result="applied"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(applied_batches.is_some_and(|n| n >= 1.0), "{page}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_range_is_refused_and_changes_nothing() {
    let mut s = TestServer::start("batch-invalid").await;
    let admin = s.client(Role::Admin).await;
    let map = table(0, 300, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    let before = digest(&admin, &name).await;

    // The fifth range ends inside a partition.
    let mut batch = split_batch(&map, &[10, 20, 30, 40, 50, 60], 5_000_000);
    batch.ranges[4].end_inclusive -= 1;
    let e = server_error(admin.update_batch(batch).await);
    assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
    assert!(e.message.contains("range 4"), "{}", e.message);
    assert!(
        e.message.contains("existing partition boundary"),
        "{}",
        e.message
    );
    // Overlapping ranges.
    let mut batch = split_batch(&map, &[10, 20], 5_000_000);
    batch.ranges[1] = batch.ranges[0].clone();
    let e = server_error(admin.update_batch(batch).await);
    assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
    // A node id listed twice in the update's nodes, as a put refuses it: in a batch, and in a
    // single-range update (the same record twice).
    let node = |addr: &str| NodeSpec {
        id: 4_000_000,
        addr: addr.into(),
        az: "az-x".into(),
    };
    let mut batch = split_batch(&map, &[10, 20], 5_000_000);
    batch.nodes = vec![node("10.1.0.1:7000"), node("10.1.0.2:7000")];
    let e = server_error(admin.update_batch(batch).await);
    assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
    assert!(
        e.message.contains("node id 4000000 is listed twice"),
        "{}",
        e.message
    );
    let mut update = split_update(&map, 10, 5_000_000);
    update.nodes = vec![node("10.1.0.1:7000"), node("10.1.0.1:7000")];
    let e = server_error(admin.update_partitions(update).await);
    assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
    assert!(
        e.message.contains("node id 4000000 is listed twice"),
        "{}",
        e.message
    );

    assert_eq!(digest(&admin, &name).await, before);
    assert_eq!(held(&admin, &name).await, map);
    // The table still takes the valid batch at the next version.
    let ack = admin
        .update_batch(split_batch(&map, &[10, 20], 5_000_000))
        .await
        .expect("valid batch");
    assert_eq!((ack.version, ack.applied), (2, true));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_delta_answers_what_changed_not_modified_or_no_delta() {
    let mut s = TestServer::start("batch-delta").await;
    let admin = s.client(Role::Admin).await;
    let router = s.client(Role::Router).await;
    let map = table(0, 300, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    assert_eq!(
        router.get_delta(&name, 1).await.expect("delta"),
        DeltaAnswer::NotModified(1)
    );
    assert_eq!(
        router.get_delta(&name, 9).await.expect("delta"),
        DeltaAnswer::NotModified(1)
    );
    let e = server_error(router.get_delta("no-such-table", 0).await);
    assert_eq!(e.code, ErrorCode::UnknownTable, "{e:?}");

    // One split: the delta is exactly the changed range, two partitions.
    let split = split_update(&map, 10, 7_000_000);
    admin.update_partitions(split.clone()).await.expect("split");
    match router.get_delta(&name, 1).await.expect("delta") {
        DeltaAnswer::Delta(d) => {
            assert_eq!((d.base_version, d.version), (1, 2));
            assert_eq!(d.ranges.len(), 1, "{d:?}");
            assert_eq!(d.ranges[0].end_inclusive, split.end_inclusive);
            let d = BatchEdit::from(d);
            assert_eq!(d.ranges[0].partitions, split.partitions);
        }
        other => panic!("expected the split as a delta, got {other:?}"),
    }

    // Then a batch: the delta since 1 covers both, and applied to version 1 gives version 3.
    let v2 = held(&admin, &name).await;
    let batch = split_batch(&v2, &[100, 200], 7_000_010);
    admin.update_batch(batch).await.expect("batch");
    let v3 = held(&admin, &name).await;
    for since in [1, 2] {
        let base = if since == 1 { &map } else { &v2 };
        match router.get_delta(&name, since).await.expect("delta") {
            DeltaAnswer::Delta(d) => {
                assert_eq!((d.base_version, d.version), (since, 3));
                assert_eq!(applied(base, &d.into()), v3, "the delta since {since}");
            }
            other => panic!("expected a delta since {since}, got {other:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_delta_after_a_put_table_is_no_delta() {
    let mut s = TestServer::start("batch-no-delta").await;
    let admin = s.client(Role::Admin).await;
    let map = table(0, 200, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    admin.put_table(&table(0, 200, 2)).await.expect("put");
    assert_eq!(
        admin.get_delta(&name, 1).await.expect("answer"),
        DeltaAnswer::NoDelta(2)
    );
    assert_eq!(
        admin.get_delta(&name, 0).await.expect("answer"),
        DeltaAnswer::NoDelta(2)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_digests_and_range_pulls_answer_peers_and_admins_not_routers() {
    let mut s = TestServer::start("batch-tree").await;
    let admin = s.client(Role::Admin).await;
    let peer = s.client(Role::Peer).await;
    let router = s.client(Role::Router).await;
    let map = table(0, 500, 1);
    let name = map.name().as_str().to_owned();
    let n = map.partitions().len();
    admin.put_table(&map).await.expect("put");
    let mut roots = Vec::new();

    for client in [&admin, &peer] {
        let t = client
            .tree_digests(&name, 1, 0, u64::MAX)
            .await
            .expect("tree digests");
        assert_eq!(t.version, 1);
        let root = t.root;
        roots.push(root);
        assert!(t.levels >= 1);
        assert!(!t.truncated);
        assert_eq!(
            t.entries.iter().map(|e| e.count).sum::<u64>(),
            n as u64,
            "the blocks cover every partition"
        );
        assert_eq!(t.entries.first().map(|e| e.start), Some(0));
        assert_eq!(t.entries.last().map(|e| e.end_inclusive), Some(u64::MAX));
        for w in t.entries.windows(2) {
            assert_eq!(w[0].end_inclusive + 1, w[1].start, "blocks are contiguous");
        }
        // The root level has one node: the root.
        let top = client
            .tree_digests(&name, t.levels, 0, u64::MAX)
            .await
            .expect("top level");
        assert_eq!(top.entries.len(), 1);
        assert_eq!(top.entries[0].digest, root);

        // Two ranges inside partitions 5 and 9 come back widened to those partitions.
        let p5 = map.partitions()[5].start;
        let p9 = map.partitions()[9].start;
        let d = client
            .get_ranges(
                &name,
                &[
                    HashRange {
                        from: p5 + 1,
                        end_inclusive: p5 + 2,
                    },
                    HashRange {
                        from: p9,
                        end_inclusive: p9,
                    },
                ],
            )
            .await
            .expect("ranges");
        assert_eq!((d.base_version, d.version), (0, 1));
        let got: Vec<(u64, Vec<PartitionSpec>)> = BatchEdit::from(d.clone())
            .ranges
            .into_iter()
            .map(|r| (r.end_inclusive, r.partitions))
            .collect();
        assert_eq!(
            got,
            vec![
                (map.end_inclusive(5), vec![spec_of(&map, 5)]),
                (map.end_inclusive(9), vec![spec_of(&map, 9)]),
            ]
        );
        let used: Vec<u32> = d.nodes.iter().map(|n| n.id).collect();
        for r in &d.ranges {
            for p in &r.partitions {
                assert!(p.replicas.iter().all(|id| used.contains(id)), "{used:?}");
            }
        }

        // Bad requests are typed errors.
        let e = server_error(client.tree_digests(&name, 0, 0, u64::MAX).await);
        assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
        let e = server_error(client.tree_digests(&name, 1, 10, 9).await);
        assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
        let unsorted = [
            HashRange {
                from: 100,
                end_inclusive: 200,
            },
            HashRange {
                from: 50,
                end_inclusive: 60,
            },
        ];
        let e = server_error(client.get_ranges(&name, &unsorted).await);
        assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
        let e = server_error(client.tree_digests("no-such-table", 1, 0, 1).await);
        assert_eq!(e.code, ErrorCode::UnknownTable, "{e:?}");
    }

    let e = server_error(router.tree_digests(&name, 1, 0, u64::MAX).await);
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    let e = server_error(
        router
            .get_ranges(
                &name,
                &[HashRange {
                    from: 0,
                    end_inclusive: 0,
                }],
            )
            .await,
    );
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    assert_eq!(roots[0], roots[1], "one table, one root");
    // Get-delta is a router's.
    assert_eq!(
        router.get_delta(&name, 1).await.expect("delta"),
        DeltaAnswer::NotModified(1)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pulls_and_tree_digests_are_bounded_by_max_batch() {
    let limits = Limits {
        max_batch: 4,
        ..Limits::default()
    };
    let dir = temp_dir("batch-bounds");
    let mut s = TestServer::start_with(dir.path().to_path_buf(), limits).await;
    let peer = s.client(Role::Peer).await;
    let admin = s.client(Role::Admin).await;
    let map = table(0, 1000, 1);
    let name = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    let one = |from: u64| HashRange {
        from,
        end_inclusive: from,
    };

    // Five ranges: over the limit of four.
    let five: Vec<HashRange> = (0..5).map(|i| one(map.partitions()[i * 2].start)).collect();
    let e = server_error(peer.get_ranges(&name, &five).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    assert!(e.message.contains("limit of 4"), "{}", e.message);
    // One range covering the whole table: more than 4 × 64 partitions.
    let whole = [HashRange {
        from: 0,
        end_inclusive: u64::MAX,
    }];
    let e = server_error(peer.get_ranges(&name, &whole).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    assert!(e.message.contains("256 partitions"), "{}", e.message);
    // Four ranges are answered.
    let four = peer.get_ranges(&name, &five[..4]).await.expect("ranges");
    assert_eq!(four.ranges.len(), 4);

    // At most four tree nodes per answer, the rest marked truncated.
    let t = peer
        .tree_digests(&name, 1, 0, u64::MAX)
        .await
        .expect("digests");
    assert_eq!(t.entries.len(), 4);
    assert!(t.truncated);
    s.stop().await;
}
