//! Answers to read requests, computed from the published tables. No IO: an archived request
//! and the tables in, a response out.

use memds_proto::CompactTable;
use memds_proto::model::{BatchEdit, MAX_REPLICAS};
use memds_proto::wire::{
    ArchivedHashRange, ArchivedRequest, ErrorCode, ErrorReply, HashRange, NodeList, Response,
    Routes, TableInfo, WireNode, WireRoute,
};

use crate::metrics::LookupOp;
use crate::store::Store;

/// Bounds that read requests must respect.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most hashes in a batch lookup and routes in a range scan; most ranges in a range pull
    /// and tree nodes in a tree-digests answer.
    pub max_batch: usize,
}

impl ReadLimits {
    /// Most partitions a range pull or a delta answers: `max_batch` blocks' worth (64
    /// partitions each). A delta over it is answered [`Response::NoDelta`] (fetch the whole
    /// table); a range pull over it is refused `too_large`.
    pub fn max_partitions(&self) -> usize {
        self.max_batch.saturating_mul(64)
    }
}

/// What answering a read did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The lookup operation, `None` for reads that are not lookups.
    pub lookup_op: Option<LookupOp>,
    /// Partition lookups performed.
    pub lookups: u64,
    /// The request asked for a newer table version than this server holds: it is behind.
    pub behind: bool,
}

/// Answers a read request.
pub fn answer(store: &Store, req: &ArchivedRequest, limits: ReadLimits) -> (Response, ReadOutcome) {
    let none = ReadOutcome {
        lookup_op: None,
        lookups: 0,
        behind: false,
    };
    match req {
        ArchivedRequest::Lookup {
            table,
            hash,
            min_version,
        } => {
            let mut outcome = ReadOutcome {
                lookup_op: Some(LookupOp::Lookup),
                lookups: 1,
                behind: false,
            };
            let response = with_table_at(store, table, min_version, &mut outcome, |t| {
                let mut routes = routes_for(t);
                push_route(t, &mut routes, hash.to_native());
                Response::Routes(routes)
            });
            (response, outcome)
        }
        ArchivedRequest::BatchLookup {
            table,
            hashes,
            min_version,
        } => {
            let mut outcome = ReadOutcome {
                lookup_op: Some(LookupOp::BatchLookup),
                lookups: hashes.len() as u64,
                behind: false,
            };
            if hashes.len() > limits.max_batch {
                return (
                    too_large(format!(
                        "batch of {} hashes is over the limit of {}",
                        hashes.len(),
                        limits.max_batch
                    )),
                    outcome,
                );
            }
            let response = with_table_at(store, table, min_version, &mut outcome, |t| {
                let mut routes = routes_for(t);
                routes.routes.reserve(hashes.len());
                routes.replicas.reserve(hashes.len() * 3);
                for h in hashes.iter() {
                    push_route(t, &mut routes, h.to_native());
                }
                Response::Routes(routes)
            });
            (response, outcome)
        }
        ArchivedRequest::Range {
            table,
            from,
            to,
            limit,
            min_version,
        } => {
            let limit = (limit.to_native() as usize).min(limits.max_batch);
            let mut found = 0u64;
            let mut outcome = ReadOutcome {
                lookup_op: Some(LookupOp::Range),
                lookups: 0,
                behind: false,
            };
            let response = with_table_at(store, table, min_version, &mut outcome, |t| {
                let mut routes = routes_for(t);
                let mut iter = t.range(from.to_native(), to.to_native());
                for e in iter.by_ref().take(limit) {
                    push_entry(&mut routes, &e);
                }
                routes.truncated = iter.next().is_some();
                found = routes.routes.len() as u64;
                Response::Routes(routes)
            });
            outcome.lookups = found.max(1);
            (response, outcome)
        }
        ArchivedRequest::GetNodes { table } => (
            with_table(store, table, |t| {
                Response::Nodes(NodeList {
                    version: t.version().get(),
                    digest: t.nodes_digest(),
                    nodes: t.node_specs().into_iter().map(WireNode::from).collect(),
                })
            }),
            none,
        ),
        ArchivedRequest::ListTables => {
            let tables = store.tables();
            let mut list: Vec<TableInfo> = tables
                .values()
                .map(|t| TableInfo {
                    name: t.name().as_str().to_owned(),
                    version: t.version().get(),
                    partitions: t.len() as u64,
                    nodes: t.node_count() as u64,
                    nodes_digest: t.nodes_digest(),
                    resident_bytes: t.resident_bytes() as u64,
                })
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            (Response::Tables(list), none)
        }
        ArchivedRequest::GetDelta { table, since } => (
            with_table(store, table, |t| delta(t, since.to_native(), limits)),
            none,
        ),
        ArchivedRequest::TreeDigests {
            table,
            level,
            from,
            end_inclusive,
        } => (
            with_table(store, table, |t| {
                tree_digests(
                    t,
                    level.to_native(),
                    from.to_native(),
                    end_inclusive.to_native(),
                    limits,
                )
            }),
            none,
        ),
        ArchivedRequest::GetRanges { table, ranges } => (
            with_table(store, table, |t| get_ranges(t, ranges, limits)),
            none,
        ),
        // Stats, get-table and writes are answered by the connection, which has the counters,
        // the snapshot cache and the writer; reaching here is a caller's mistake, answered as
        // such rather than a panic.
        _ => (
            Response::Error(ErrorReply::new(
                ErrorCode::Internal,
                "request is not a read",
            )),
            none,
        ),
    }
}

fn with_table(
    store: &Store,
    name: &rkyv::string::ArchivedString,
    f: impl FnOnce(&CompactTable) -> Response,
) -> Response {
    store.read(|tables| match tables.get(name.as_str()) {
        Some(t) => f(t),
        None => unknown_table(name.as_str()),
    })
}

fn unknown_table(name: &str) -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::UnknownTable,
        format!("no table named {name:?}"),
    ))
}

/// Like [`with_table`], for requests that name the lowest version they accept: a table older
/// than that, or missing while no tombstone explains it, is answered [`ErrorCode::Behind`].
fn with_table_at(
    store: &Store,
    name: &rkyv::string::ArchivedString,
    min_version: &rkyv::option::ArchivedOption<rkyv::rend::u64_le>,
    outcome: &mut ReadOutcome,
    f: impl FnOnce(&CompactTable) -> Response,
) -> Response {
    let Some(min) = min_version.as_ref().map(|v| v.to_native()) else {
        return with_table(store, name, f);
    };
    // One borrowed view of the tables for the whole decision: the table and its tombstone are
    // read from the same state.
    let held = match store.read(|tables| match tables.get(name.as_str()) {
        Some(t) if t.version().get() >= min => Ok(f(t)),
        Some(t) => Err(t.version().get()),
        // Dropped at or after the version asked for: the table is gone, not late.
        None if tables.tombstone(name.as_str()).is_some_and(|v| v >= min) => {
            Ok(unknown_table(name.as_str()))
        }
        None => Err(0),
    }) {
        Ok(response) => return response,
        Err(held) => held,
    };
    outcome.behind = true;
    Response::Error(ErrorReply::new(
        ErrorCode::Behind,
        format!(
            "this server holds {:?} at version {held}, older than the {min} asked for; ask \
             another server",
            name.as_str()
        ),
    ))
}

/// What changed in `t` since `since`: not modified, the delta, or no delta (history too short,
/// the table replaced whole since, or a delta too large to be worth more than the table).
fn delta(t: &CompactTable, since: u64, limits: ReadLimits) -> Response {
    let version = t.version().get();
    if since >= version {
        return Response::NotModified { version };
    }
    match t.delta_since(since) {
        Some(d) if partitions_of(&d) <= limits.max_partitions() => Response::Delta(d.into()),
        _ => Response::NoDelta { version },
    }
}

fn partitions_of(u: &BatchEdit) -> usize {
    u.ranges.iter().map(|r| r.partitions.len()).sum()
}

fn tree_digests(
    t: &CompactTable,
    level: u32,
    from: u64,
    end_inclusive: u64,
    limits: ReadLimits,
) -> Response {
    let levels = t.levels();
    if level == 0 || level > levels {
        return invalid(format!(
            "tree-digests: table {} has levels 1 to {levels}, not {level}",
            t.name()
        ));
    }
    if from > end_inclusive {
        return invalid(format!(
            "tree-digests: the range ends at {end_inclusive}, before its start {from}"
        ));
    }
    Response::TreeDigests(t.tree_digests(level, from, end_inclusive, limits.max_batch))
}

/// The current partitions covering `ranges` (sorted, disjoint, at most `max_batch` of them,
/// covering at most [`ReadLimits::max_partitions`] partitions), counted before anything is
/// built.
fn get_ranges(
    t: &CompactTable,
    ranges: &rkyv::vec::ArchivedVec<ArchivedHashRange>,
    limits: ReadLimits,
) -> Response {
    if ranges.len() > limits.max_batch {
        return too_large(format!(
            "get-ranges: {} ranges is over the limit of {}",
            ranges.len(),
            limits.max_batch
        ));
    }
    let ranges: Vec<HashRange> = ranges
        .iter()
        .map(|r| HashRange {
            from: r.from.to_native(),
            end_inclusive: r.end_inclusive.to_native(),
        })
        .collect();
    let mut covered = 0usize;
    let mut last_index: Option<usize> = None;
    for (i, r) in ranges.iter().enumerate() {
        if r.from > r.end_inclusive {
            return invalid(format!(
                "get-ranges: range {i} ends at {}, before its start {}",
                r.end_inclusive, r.from
            ));
        }
        if i > 0 && r.from <= ranges[i - 1].end_inclusive {
            return invalid(format!(
                "get-ranges: range {i} starts at {}, not after the previous range's end {}; \
                 ranges must be sorted and disjoint",
                r.from,
                ranges[i - 1].end_inclusive
            ));
        }
        // Widened to partition boundaries, neighbouring ranges may share a partition: it is
        // counted once.
        let lo = t.floor_index(r.from);
        let hi = t.floor_index(r.end_inclusive);
        let lo = last_index.map_or(lo, |last| lo.max(last + 1));
        covered += (hi + 1).saturating_sub(lo);
        last_index = Some(hi);
        if covered > limits.max_partitions() {
            return too_large(format!(
                "get-ranges: the ranges cover more than {} partitions, the most one answer holds; \
                 ask for fewer ranges at a time",
                limits.max_partitions()
            ));
        }
    }
    Response::Delta(t.ranges_update(&ranges).into())
}

fn invalid(message: String) -> Response {
    Response::Error(ErrorReply::new(ErrorCode::Invalid, message))
}

fn too_large(message: String) -> Response {
    Response::Error(ErrorReply::new(ErrorCode::TooLarge, message))
}

fn routes_for(t: &CompactTable) -> Routes {
    Routes {
        table_version: t.version().get(),
        nodes_digest: t.nodes_digest(),
        ..Routes::default()
    }
}

fn push_route(t: &CompactTable, routes: &mut Routes, hash: u64) {
    let e = t.lookup(hash);
    push_entry(routes, &e);
}

fn push_entry(routes: &mut Routes, e: &memds_proto::PartitionEntry) {
    let before = routes.replicas.len();
    routes
        .replicas
        .extend(e.replica_ids().map(|id| id.get()).take(MAX_REPLICAS));
    routes.routes.push(WireRoute {
        partition: e.id.get(),
        start: e.start,
        end_inclusive: e.end_inclusive,
        epoch: e.epoch.get(),
        leader: e.leader,
        replica_count: (routes.replicas.len() - before) as u8,
    });
}
