//! Fuzz targets over what a data directory or a client hands the server, shared by the
//! cargo-fuzz crate (`fuzz/`) and the test suite (`tests/fuzz_wal.rs`); the protocol's own
//! decoders are `memds_proto::fuzzing`'s. See `docs/fuzzing.md`.
//!
//! As there, a target must return normally on any input; an error is a pass, a panic or an
//! abort is a finding, and what must hold of accepted input is checked too.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use memds_proto::fuzzing::{self as proto_fuzzing, Seed, Target};
use memds_proto::model::{BatchEdit, UpdateSpec};
use memds_proto::wire::{self, DEFAULT_MAX_BATCH, Request, Response};
use memds_proto::{CompactTable, NodeInterner, snapshot, synth};
use rkyv::util::AlignedVec;

use crate::durable::fuzz_support::{self, Reading, Role};
use crate::durable::{
    Durable, DurableError, LogBatch, LogNode, LogPartition, LogUpdate, Origin, RecoveryMode,
    WalRecord,
};
use crate::service::{self, ReadLimits};
use crate::store::{self, Plan, Store, Tables, Write};
use crate::writer;

/// The archive limit writes are planned with.
pub const FUZZ_MAX_ARCHIVE: u64 = 1 << 20;

/// The targets of this crate, by the names cargo-fuzz and the corpus folders use.
pub const TARGETS: [(&str, Target); 2] = [("wal", wal), ("server_requests", server_requests)];

/// The write-ahead log and checkpoint reader, as recovery runs it, then the replay of what it
/// recovered.
///
/// The first byte picks how the rest is read: even, as a file's bytes; odd, as frames to write
/// with correct checksums (each a u16 little-endian length and that many payload bytes) and a
/// tail written as it is, so the fuzzer reaches the record decoder and the replay instead of
/// stopping at the checksums. The file is read as the last log, as an earlier log and as a
/// checkpoint, each strictly and salvaging. Checks: a torn tail is cut only from the last log
/// and ends at the file's end; salvage keeps exactly what strict recovery keeps when strict
/// recovery accepts the file, and notes damage exactly when it refuses; replaying the records
/// gives verified tables, and salvaging replay agrees with strict replay when that succeeds.
pub fn wal(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(framed_log(rest))
    };
    let mut kept = Vec::new();
    for role in [Role::LastLog, Role::EarlierLog, Role::Checkpoint] {
        let strict = fuzz_support::read(&file, role, RecoveryMode::Strict);
        let salvage = fuzz_support::read(&file, role, RecoveryMode::Salvage);
        check_reading(&file, role, &strict, &salvage);
        if role == Role::LastLog {
            kept = salvage.records.unwrap_or_default();
        }
    }
    let origin = Origin {
        path: "wal-00000000000000000001.log".into(),
        offset: 0,
    };
    let with_origin = |records: &[WalRecord]| -> Vec<(Origin, WalRecord)> {
        records
            .iter()
            .map(|r| (origin.clone(), r.clone()))
            .collect()
    };
    let strict = writer::replay(
        with_origin(&kept),
        &mut NodeInterner::default(),
        RecoveryMode::Strict,
    );
    let salvage = writer::replay(
        with_origin(&kept),
        &mut NodeInterner::default(),
        RecoveryMode::Salvage,
    )
    .unwrap_or_else(|e| panic!("salvaging replay failed: {e}"));
    for t in salvage.tables.values() {
        assert!(t.verify(), "a replayed table fails verification");
    }
    if let Ok(strict) = strict {
        assert_eq!(
            strict.applied, salvage.applied,
            "replays applied differently"
        );
        assert!(
            salvage.lost.is_empty(),
            "salvage lost what strict replay applied"
        );
        assert_eq!(strict.tables.len(), salvage.tables.len());
    } else {
        assert!(
            !salvage.lost.is_empty(),
            "strict replay failed, salvage lost nothing"
        );
    }
}

/// A request as the server's connection handles it, against a store holding the sample maps
/// of `memds_proto::fuzzing` and a tombstone: reads are answered by [`service::answer`],
/// writes are planned by [`store::plan`] and applied to a copy of the tables. Checks: every
/// answer encodes and decodes back, routes carry as many replica ids as their counts say and
/// stay within the batch bound, and an installed table verifies and converts to a valid map.
pub fn server_requests(data: &[u8]) {
    let mut aligned = AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    let Ok(archived) = wire::access_request(&aligned) else {
        return;
    };
    let (tables, store) = &*STATE;
    if !archived.is_write() {
        let limits = ReadLimits {
            max_batch: DEFAULT_MAX_BATCH,
        };
        let (response, _) = service::answer(store, archived, limits);
        if let Response::Routes(routes) = &response {
            assert!(routes.routes.len() <= DEFAULT_MAX_BATCH, "too many routes");
            let counted: usize = routes
                .routes
                .iter()
                .map(|r| usize::from(r.replica_count))
                .sum();
            assert_eq!(counted, routes.replicas.len(), "replica counts");
        }
        let mut frame = Vec::new();
        wire::encode_response(1, &response, &mut frame);
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&frame[wire::FRAME_HEADER_LEN..]);
        let back = wire::decode_response(&payload).map(|r| format!("{r:?}"));
        assert_eq!(
            back,
            Ok(format!("{response:?}")),
            "an answer does not decode"
        );
        return;
    }
    let write = match wire::decode_request(&aligned) {
        Ok(Request::PutTable { snapshot }) => Write::Put { snapshot },
        Ok(Request::UpdatePartitions(u)) => Write::Update(u.into()),
        Ok(Request::UpdateBatch(u)) => Write::Batch(u.into()),
        Ok(Request::DropTable { table, version }) => Write::Drop { table, version },
        other => panic!("a write request decodes as {other:?}"),
    };
    let mut interner = NodeInterner::default();
    if let Ok(plan) = store::plan(tables, &write, &mut interner, FUZZ_MAX_ARCHIVE) {
        if let Plan::Install(table) = &plan {
            assert!(table.verify(), "a planned table fails verification");
            proto_fuzzing::check_map(&table.to_map());
        }
        let mut after = tables.clone();
        writer::apply(&mut after, plan);
    }
}

/// The generated seed corpus of this crate's targets: a real log and checkpoint written by
/// [`Durable`] in `scratch` (an empty directory), with a torn copy; the same records as frames to
/// write; and every request variant about the sample maps.
pub fn seed_corpus(scratch: &Path) -> Result<Vec<Seed>, DurableError> {
    let maps = proto_fuzzing::sample_maps();
    let puts: Vec<WalRecord> = maps
        .iter()
        .map(|m| WalRecord::Put {
            snapshot: snapshot::encode(m),
        })
        .collect();
    let batches = vec![
        puts.clone(),
        vec![WalRecord::Update(log_update(synth::split_update(
            &maps[2],
            3,
            1 << 40,
        )))],
        vec![WalRecord::Drop {
            table: maps[0].name().as_str().to_owned(),
            version: maps[0].version().get() + 1,
        }],
    ];
    let (mut durable, _) = Durable::open(scratch, u64::MAX, RecoveryMode::Strict)?;
    for batch in &batches {
        durable.append(batch.clone())?;
    }
    durable.close()?;
    let log = read(&crate::durable::log_path(scratch, 1))?;
    durable.compact(puts.iter().cloned())?;
    let checkpoint = read(&scratch.join("state.db"))?;

    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        });
    };
    add("wal", "real-log", [&[0], &log[..]].concat());
    add("wal", "real-checkpoint", [&[0], &checkpoint[..]].concat());
    add("wal", "torn-log", [&[0], &log[..log.len() - 5]].concat());
    let mut framed = vec![1];
    for batch in &batches {
        let payload = fuzz_support::payload_of(batch.clone());
        let len = u16::try_from(payload.len()).expect("the sample batches are small");
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(&payload);
    }
    add("wal", "framed-records", framed.clone());
    // A batch update, logged as the one record it is, after the put of its table.
    let payload = fuzz_support::payload_of(vec![
        puts[2].clone(),
        WalRecord::Batch(LogBatch::from(split_batch(&maps[2]))),
    ]);
    let len = u16::try_from(payload.len()).expect("one small put and a batch");
    add(
        "wal",
        "framed-batch-record",
        [&[1], &len.to_le_bytes()[..], &payload].concat(),
    );
    framed.extend_from_slice(&[0xff; 11]);
    add("wal", "framed-records-torn", framed);
    // Regression: a logged put whose snapshot declares a length its payload cannot hold (the
    // length is outside the snapshot's checksum). Replay decodes logged snapshots under no
    // limit, and this aborted on a 2^60-byte allocation before `snapshot::decode` bounded it.
    let real = snapshot::encode(&maps[0]);
    let absurd = proto_fuzzing::frame_snapshot(1 << 60, &real[snapshot::HEADER_LEN..]);
    let payload = fuzz_support::payload_of(vec![WalRecord::Put { snapshot: absurd }]);
    let len = u16::try_from(payload.len()).expect("one small put");
    add(
        "wal",
        "regression-put-declaring-2e60-bytes",
        [&[1], &len.to_le_bytes()[..], &payload].concat(),
    );
    for (m, map) in maps.iter().enumerate().skip(1).take(2) {
        for (i, request) in proto_fuzzing::sample_requests(map).iter().enumerate() {
            add(
                "server_requests",
                &format!("map-{m}-request-{i:02}"),
                proto_fuzzing::archive_of_request(request),
            );
        }
        add(
            "server_requests",
            &format!("map-{m}-update-batch"),
            proto_fuzzing::archive_of_request(&Request::UpdateBatch(split_batch(map).into())),
        );
    }
    Ok(seeds)
}

/// One batch of two splits of `map` (its partitions 1 and 4 of version + 1; the sample maps
/// have more than four), for the seeds of both targets.
fn split_batch(map: &memds_proto::TableMap) -> BatchEdit {
    let mut batch = BatchEdit::from(synth::split_update(map, 1, 1 << 41));
    batch
        .ranges
        .extend(BatchEdit::from(synth::split_update(map, 4, (1 << 41) + 1)).ranges);
    batch
}

/// A one-range update as release 0.1.0 logged `update-partitions` (this build logs batches).
fn log_update(u: UpdateSpec) -> LogUpdate {
    LogUpdate {
        table: u.table,
        base_version: u.base_version,
        version: u.version,
        end_inclusive: u.end_inclusive,
        nodes: u.nodes.into_iter().map(LogNode::from).collect(),
        partitions: u.partitions.into_iter().map(LogPartition::from).collect(),
    }
}

/// The tables the request target runs against, and the store publishing them.
static STATE: LazyLock<(Tables, Store)> = LazyLock::new(|| {
    let mut interner = NodeInterner::default();
    let mut tables = Tables::new();
    for map in proto_fuzzing::sample_maps() {
        let table = CompactTable::new(&map, &mut interner);
        tables.insert(map.name().as_str().to_owned(), Arc::new(table));
    }
    // A tombstone, for the drop and put paths that consult one.
    tables.remove("gone", 5);
    let store = Store::with_tables(tables.clone(), &interner);
    (tables, store)
});

/// A log of the frames `spec` describes (see [`wal`]).
fn framed_log(spec: &[u8]) -> Vec<u8> {
    let mut payloads = Vec::new();
    let mut rest = spec;
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let Some((payload, next)) = after.split_at_checked(usize::from(u16::from_le_bytes(*len)))
        else {
            break;
        };
        payloads.push(payload);
        rest = next;
    }
    fuzz_support::log_of_payloads(payloads, rest)
}

/// What must hold between the strict and the salvaging reading of one file in one role.
fn check_reading(file: &[u8], role: Role, strict: &Reading, salvage: &Reading) {
    assert_eq!(
        strict.cut, salvage.cut,
        "{role:?}: the modes cut differently"
    );
    if let Some((valid, cut)) = strict.cut {
        assert_eq!(role, Role::LastLog, "a torn tail cut from {role:?}");
        assert_eq!(
            valid + cut,
            file.len() as u64,
            "{role:?}: the cut ends elsewhere"
        );
    }
    let Ok(salvaged) = &salvage.records else {
        panic!("{role:?}: salvage refused the file");
    };
    match &strict.records {
        Ok(records) => {
            assert_eq!(records, salvaged, "{role:?}: salvage kept other records");
            assert!(
                salvage.salvaged.damage.is_empty(),
                "{role:?}: salvage found damage strict recovery did not"
            );
        }
        Err(e) => assert!(
            !salvage.salvaged.damage.is_empty(),
            "{role:?}: strict recovery refused the file ({e}) but salvage found no damage"
        ),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DurableError> {
    std::fs::read(path).map_err(|source| DurableError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}
