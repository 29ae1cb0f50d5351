//! Answers to read requests, computed from the published tables. No IO: an archived request
//! and the tables in, a response out.

use memds_proto::CompactTable;
use memds_proto::model::MAX_REPLICAS;
use memds_proto::wire::{
    ArchivedRequest, ErrorCode, ErrorReply, NodeList, Response, Routes, TableInfo, WireRoute,
};

use crate::store::Store;

/// Bounds that read requests must respect.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most hashes in a batch lookup and routes in a range scan.
    pub max_batch: usize,
}

/// What answering a read did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Index into [`crate::metrics::LOOKUP_OPS`] for lookups, `None` for other reads.
    pub lookup_op: Option<usize>,
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
                lookup_op: Some(0),
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
                lookup_op: Some(1),
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
                lookup_op: Some(2),
                lookups: 0,
                behind: false,
            };
            let response = with_table_at(store, table, min_version, &mut outcome, |t| {
                let mut routes = routes_for(t);
                let mut iter = t.range(from.to_native(), to.to_native());
                for e in iter.by_ref().take(limit) {
                    push_entry(t, &mut routes, &e);
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
                    nodes: t.node_specs(),
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
    match store.table(name.as_str()) {
        Some(t) => f(&t),
        None => Response::Error(ErrorReply::new(
            ErrorCode::UnknownTable,
            format!("no table named {:?}", name.as_str()),
        )),
    }
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
    let tables = store.tables();
    let held = match tables.get(name.as_str()) {
        Some(t) if t.version().get() >= min => return f(t),
        Some(t) => t.version().get(),
        // Dropped at or after the version asked for: the table is gone, not late.
        None if tables.tombstone(name.as_str()).is_some_and(|v| v >= min) => {
            return with_table(store, name, f);
        }
        None => 0,
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
    push_entry(t, routes, &e);
}

fn push_entry(t: &CompactTable, routes: &mut Routes, e: &memds_proto::PartitionEntry) {
    let before = routes.replicas.len();
    routes
        .replicas
        .extend(t.replicas(e).map(|(id, _)| id.get()).take(MAX_REPLICAS));
    routes.routes.push(WireRoute {
        partition: e.id.get(),
        start: e.start,
        end_inclusive: e.end_inclusive,
        epoch: e.epoch.get(),
        leader: e.leader,
        replica_count: (routes.replicas.len() - before) as u8,
    });
}

/// Sums the tables' partitions and resident bytes.
pub fn totals(store: &Store) -> (u64, u64, u64) {
    let tables = store.tables();
    let partitions = tables.values().map(|t| t.len() as u64).sum();
    let bytes: u64 = tables.values().map(|t| t.resident_bytes() as u64).sum();
    (
        tables.len() as u64,
        partitions,
        bytes + store.node_records().1,
    )
}
