//! The data model: ids, versions, storage nodes, partitions and validated table maps.
//!
//! A [`TableMap`] is the validated form of one table's routing metadata. It can only be built
//! through [`TableMap::new`] (or by parsing the JSON ingestion format with
//! [`TableMap::from_json`]), which checks every rule of DESIGN.md and names the offending
//! partition or node when one is broken, so a `TableMap` that exists is a valid one.
//!
//! The JSON ingestion format, shared by every tool that loads or dumps a table:
//!
//! ```json
//! {"table": "orders", "version": 7,
//!  "nodes": [{"id": 1, "addr": "10.0.0.1:8100", "az": "az-a"}],
//!  "partitions": [{"id": 1, "start": 0, "epoch": 3, "replicas": [1], "leader": 0}]}
//! ```
//!
//! [`TableSpec`] is that format as plain, unvalidated records. [`UpdateSpec`] and
//! [`BatchSpec`] are the JSON of partial updates; [`BatchEdit`] is the in-memory form of an
//! update, whatever boundary it came through (JSON, the wire, the log), and the argument of
//! [`crate::CompactTable::apply`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Largest table name, in bytes.
pub const MAX_TABLE_NAME_BYTES: usize = 255;
/// Largest storage-node address or availability-zone string, in bytes.
pub const MAX_NODE_FIELD_BYTES: usize = 255;
/// Most replicas a partition may have.
pub const MAX_REPLICAS: usize = 7;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            /// Wraps a raw value.
            pub const fn new(raw: $inner) -> Self {
                Self(raw)
            }

            /// The raw value.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A storage node's id, scoped to one table's map.
    NodeId(u32)
);
id_newtype!(
    /// A partition's id, unique within its table.
    PartitionId(u64)
);
id_newtype!(
    /// A partition's epoch, bumped by the authority on split, merge or membership change.
    ///
    /// A router never replaces a route by one with an older epoch.
    Epoch(u64)
);
id_newtype!(
    /// A table map's version, assigned by the authority; servers never regress it.
    TableVersion(u64)
);

/// A table's name: non-empty and at most [`MAX_TABLE_NAME_BYTES`] bytes of UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName(Arc<str>);

impl TableName {
    /// Checks and wraps a table name.
    pub fn new(name: &str) -> Result<Self, MapError> {
        if name.is_empty() {
            return Err(MapError::EmptyTableName);
        }
        if name.len() > MAX_TABLE_NAME_BYTES {
            return Err(MapError::TableNameTooLong { len: name.len() });
        }
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A storage node as a table's map lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageNode {
    /// The node's id within this table's map.
    pub id: NodeId,
    /// Where routers reach the node, as `host:port`.
    pub addr: String,
    /// The node's availability zone.
    pub az: String,
}

/// A partition's replica set: 1 to [`MAX_REPLICAS`] distinct storage-node ids, kept inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Replicas {
    len: u8,
    ids: [NodeId; MAX_REPLICAS],
}

impl Replicas {
    /// Builds a replica set, refusing an empty, oversized or repeating one.
    ///
    /// The error's partition index is 0; [`TableMap::new`] reports the real index.
    pub fn new(ids: &[NodeId]) -> Result<Self, MapError> {
        Self::checked(0, ids)
    }

    fn checked(index: usize, ids: &[NodeId]) -> Result<Self, MapError> {
        if ids.is_empty() || ids.len() > MAX_REPLICAS {
            return Err(MapError::ReplicaCount {
                index,
                count: ids.len(),
            });
        }
        let mut out = Self {
            len: 0,
            ids: [NodeId(0); MAX_REPLICAS],
        };
        for &id in ids {
            if out.as_slice().contains(&id) {
                return Err(MapError::DuplicateReplica { index, node: id });
            }
            out.ids[usize::from(out.len)] = id;
            out.len += 1;
        }
        Ok(out)
    }

    /// The replica ids, in order.
    pub fn as_slice(&self) -> &[NodeId] {
        &self.ids[..usize::from(self.len)]
    }

    /// How many replicas there are (1..=7).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a replica set has at least one member.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// One partition of a table: the hash range from `start` up to the next partition's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partition {
    /// The partition's id, unique within the table.
    pub id: PartitionId,
    /// First hash (inclusive) the partition holds.
    pub start: u64,
    /// The partition's epoch.
    pub epoch: Epoch,
    /// The storage nodes that serve it.
    pub replicas: Replicas,
    /// Index into `replicas` of the leader.
    pub leader: u8,
}

impl Partition {
    /// The leader's node id.
    pub fn leader_node(&self) -> NodeId {
        self.replicas.as_slice()[usize::from(self.leader)]
    }
}

/// One table's routing metadata, validated: partitions tile `[0, 2^64)` in `start` order, ids
/// are unique, every replica is a listed node, every leader index is in range.
///
/// Nodes are kept sorted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMap {
    name: TableName,
    version: TableVersion,
    nodes: Vec<StorageNode>,
    partitions: Vec<Partition>,
}

/// The listed node ids, for the membership test every replica of every partition takes: a
/// bitmap when the ids are small enough for one (the usual case: ids are dense), else the
/// sorted ids.
enum NodeSet {
    Bits(Vec<u64>),
    Sorted(Vec<NodeId>),
}

impl NodeSet {
    /// The largest id a bitmap covers (a 2 MiB bitmap).
    const MAX_BITMAP_ID: u32 = 1 << 24;

    /// `nodes` sorted by id.
    fn new(nodes: &[StorageNode]) -> Self {
        match nodes.last() {
            Some(last) if last.id.0 < Self::MAX_BITMAP_ID => {
                let mut bits = vec![0u64; last.id.0 as usize / 64 + 1];
                for n in nodes {
                    bits[n.id.0 as usize / 64] |= 1 << (n.id.0 % 64);
                }
                NodeSet::Bits(bits)
            }
            _ => NodeSet::Sorted(nodes.iter().map(|n| n.id).collect()),
        }
    }

    fn contains(&self, id: NodeId) -> bool {
        match self {
            NodeSet::Bits(bits) => bits
                .get(id.0 as usize / 64)
                .is_some_and(|w| w & (1 << (id.0 % 64)) != 0),
            NodeSet::Sorted(ids) => ids.binary_search(&id).is_ok(),
        }
    }
}

/// The earliest partition (in index order) whose id an earlier partition already has, and
/// the index of the first partition with that id. A sort rather than a hash set: at millions
/// of partitions it is several times faster, and validation runs on every write.
fn first_duplicate_id(partitions: &[Partition]) -> Option<(usize, usize)> {
    let mut by_id: Vec<(u64, usize)> = partitions
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.get(), i))
        .collect();
    by_id.sort_unstable();
    by_id
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|same| same.len() > 1)
        .map(|same| (same[1].1, same[0].1))
        .min()
}

impl TableMap {
    /// Validates and assembles a table map. Nothing is kept when any rule is broken.
    pub fn new(
        name: TableName,
        version: TableVersion,
        mut nodes: Vec<StorageNode>,
        partitions: Vec<Partition>,
    ) -> Result<Self, MapError> {
        for node in &nodes {
            check_node(node)?;
        }
        nodes.sort_by_key(|n| n.id);
        if let Some(pair) = nodes.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(MapError::DuplicateNodeId { id: pair[0].id });
        }
        if partitions.is_empty() {
            return Err(MapError::NoPartitions);
        }
        if partitions[0].start != 0 {
            return Err(MapError::FirstStartNotZero {
                start: partitions[0].start,
            });
        }
        let duplicate = first_duplicate_id(&partitions);
        let listed = NodeSet::new(&nodes);
        for (index, p) in partitions.iter().enumerate() {
            if index > 0 && p.start <= partitions[index - 1].start {
                return Err(MapError::StartNotIncreasing {
                    index,
                    start: p.start,
                    previous: partitions[index - 1].start,
                });
            }
            if let Some((dup, first_index)) = duplicate
                && dup == index
            {
                return Err(MapError::DuplicatePartitionId {
                    index,
                    id: p.id,
                    first_index,
                });
            }
            // Re-check the replica set: `Replicas` built elsewhere is valid, but the index in
            // any error must be this partition's.
            Replicas::checked(index, p.replicas.as_slice())?;
            for &node in p.replicas.as_slice() {
                if !listed.contains(node) {
                    return Err(MapError::UnknownReplica { index, node });
                }
            }
            if usize::from(p.leader) >= p.replicas.len() {
                return Err(MapError::LeaderOutOfRange {
                    index,
                    leader: u64::from(p.leader),
                    replicas: p.replicas.len(),
                });
            }
        }
        Ok(Self {
            name,
            version,
            nodes,
            partitions,
        })
    }

    /// Assembles a map from parts that are valid by construction (a map's own parts, decoded
    /// from an encoding of a valid map), skipping the checks [`TableMap::new`] makes: nodes
    /// sorted by id, partitions in start order from 0 with unique ids, replicas listed.
    pub(crate) fn from_valid_parts(
        name: TableName,
        version: TableVersion,
        nodes: Vec<StorageNode>,
        partitions: Vec<Partition>,
    ) -> Self {
        debug_assert!(
            nodes.windows(2).all(|w| w[0].id < w[1].id)
                && partitions.first().is_some_and(|p| p.start == 0)
                && partitions.windows(2).all(|w| w[0].start < w[1].start),
            "parts of a valid map"
        );
        Self {
            name,
            version,
            nodes,
            partitions,
        }
    }

    /// Parses and validates the JSON ingestion format.
    pub fn from_json(json: &str) -> Result<Self, MapError> {
        let spec: TableSpec =
            serde_json::from_str(json).map_err(|e| MapError::Json(e.to_string()))?;
        Self::try_from(spec)
    }

    /// Prints the map in the JSON ingestion format (the format a table dump uses).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&TableSpec::from(self)).expect("a TableSpec always serializes")
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// The map's version.
    pub fn version(&self) -> TableVersion {
        self.version
    }

    /// The listed storage nodes, sorted by id.
    pub fn nodes(&self) -> &[StorageNode] {
        &self.nodes
    }

    /// The partitions, sorted by start.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// Looks up a listed node by id.
    pub fn node(&self, id: NodeId) -> Option<&StorageNode> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// The index of the partition holding `hash`: the one with the greatest start <= hash.
    ///
    /// This is the straightforward reference the compact encoding is checked against.
    pub fn floor_index(&self, hash: u64) -> usize {
        // The first partition starts at 0, so at least one start is <= any hash.
        self.partitions.partition_point(|p| p.start <= hash) - 1
    }

    /// The last hash (inclusive) of the partition at `index`.
    pub fn end_inclusive(&self, index: usize) -> u64 {
        self.partitions
            .get(index + 1)
            .map_or(u64::MAX, |next| next.start - 1)
    }

    /// The route for the partition holding `hash`.
    pub fn route(&self, hash: u64) -> Route {
        let index = self.floor_index(hash);
        let p = &self.partitions[index];
        Route {
            table: self.name.clone(),
            version: self.version,
            partition: p.id,
            start: p.start,
            end_inclusive: self.end_inclusive(index),
            epoch: p.epoch,
            leader: p.leader,
            replicas: p
                .replicas
                .as_slice()
                .iter()
                .map(|&id| {
                    let node = self.node(id).expect("validated: every replica is listed");
                    RouteReplica {
                        id,
                        addr: node.addr.as_str().into(),
                        az: node.az.as_str().into(),
                    }
                })
                .collect(),
        }
    }

    /// Splits the map into its parts.
    pub fn into_parts(self) -> (TableName, TableVersion, Vec<StorageNode>, Vec<Partition>) {
        (self.name, self.version, self.nodes, self.partitions)
    }
}

pub(crate) fn check_node(node: &StorageNode) -> Result<(), MapError> {
    if node.addr.is_empty() {
        return Err(MapError::EmptyNodeAddr { id: node.id });
    }
    for (field, value) in [("addr", &node.addr), ("az", &node.az)] {
        if value.len() > MAX_NODE_FIELD_BYTES {
            return Err(MapError::NodeFieldTooLong {
                id: node.id,
                field,
                len: value.len(),
            });
        }
    }
    Ok(())
}

/// What a lookup answers: where a hash lives and who serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The table looked up.
    #[serde(with = "table_name_str")]
    pub table: TableName,
    /// The table map's version the route comes from.
    pub version: TableVersion,
    /// The partition holding the hash.
    pub partition: PartitionId,
    /// First hash of the partition (inclusive).
    pub start: u64,
    /// Last hash of the partition (inclusive; `u64::MAX` for the last partition).
    pub end_inclusive: u64,
    /// The partition's epoch.
    pub epoch: Epoch,
    /// Index into `replicas` of the leader.
    pub leader: u8,
    /// The replicas with their addresses and zones.
    pub replicas: Vec<RouteReplica>,
}

impl Route {
    /// Whether the route's range holds `hash`.
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end_inclusive
    }

    /// The leader replica.
    pub fn leader_replica(&self) -> Option<&RouteReplica> {
        self.replicas.get(usize::from(self.leader))
    }
}

/// One replica of a route. The strings are shared: the routes a router cache makes from one
/// table point at one copy of each node's address and zone, so a cached route costs its own
/// record and its replica list, not two strings per replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReplica {
    /// The storage node's id within the table's map.
    pub id: NodeId,
    /// Where to reach it.
    pub addr: Arc<str>,
    /// Its availability zone.
    pub az: Arc<str>,
}

mod table_name_str {
    use super::TableName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(name: &TableName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TableName, D::Error> {
        let raw = String::deserialize(d)?;
        TableName::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// Why a table map was refused. Every variant names the rule broken and, where one is at
/// fault, the offending partition index or node id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The JSON did not parse into the ingestion format.
    #[error("invalid table JSON: {0}")]
    Json(String),
    /// The table name is empty.
    #[error("table name is empty")]
    EmptyTableName,
    /// The table name is longer than [`MAX_TABLE_NAME_BYTES`].
    #[error("table name is {len} bytes, more than the limit of 255")]
    TableNameTooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The map has no partitions; partitions must tile the whole hash space.
    #[error("table has no partitions; its partitions must tile the whole hash space")]
    NoPartitions,
    /// The first partition does not start at hash 0.
    #[error("partition 0: start {start} is not 0; the first partition must start at 0")]
    FirstStartNotZero {
        /// The first partition's start.
        start: u64,
    },
    /// A partition's start is not greater than its predecessor's.
    #[error(
        "partition {index}: start {start} is not greater than the previous start {previous}; starts must strictly increase"
    )]
    StartNotIncreasing {
        /// The offending partition's index.
        index: usize,
        /// Its start.
        start: u64,
        /// The previous partition's start.
        previous: u64,
    },
    /// Two partitions share an id.
    #[error(
        "partition {index}: id {id} is already used by partition {first_index}; partition ids must be unique"
    )]
    DuplicatePartitionId {
        /// The offending partition's index.
        index: usize,
        /// The repeated id.
        id: PartitionId,
        /// The index of the first partition with that id.
        first_index: usize,
    },
    /// A partition has no replicas or more than [`MAX_REPLICAS`].
    #[error("partition {index}: {count} replicas; a partition has 1 to 7 replicas")]
    ReplicaCount {
        /// The offending partition's index.
        index: usize,
        /// How many replicas it lists.
        count: usize,
    },
    /// A partition lists the same node twice.
    #[error("partition {index}: node {node} is listed twice; replicas must be distinct")]
    DuplicateReplica {
        /// The offending partition's index.
        index: usize,
        /// The repeated node.
        node: NodeId,
    },
    /// A partition names a node the map does not list.
    #[error("partition {index}: replica node {node} is not in the table's node list")]
    UnknownReplica {
        /// The offending partition's index.
        index: usize,
        /// The unknown node.
        node: NodeId,
    },
    /// A partition's leader index is past its replica list.
    #[error(
        "partition {index}: leader {leader} is out of range for {replicas} replicas; the leader indexes the replica list"
    )]
    LeaderOutOfRange {
        /// The offending partition's index.
        index: usize,
        /// The leader index given.
        leader: u64,
        /// How many replicas the partition has.
        replicas: usize,
    },
    /// Two nodes share an id.
    #[error("node id {id} is listed twice; node ids must be unique")]
    DuplicateNodeId {
        /// The repeated id.
        id: NodeId,
    },
    /// A node's address is empty.
    #[error("node {id}: address is empty")]
    EmptyNodeAddr {
        /// The node's id.
        id: NodeId,
    },
    /// A node's address or zone is longer than [`MAX_NODE_FIELD_BYTES`].
    #[error("node {id}: {field} is {len} bytes, more than the limit of 255")]
    NodeFieldTooLong {
        /// The node's id.
        id: NodeId,
        /// Which field: `addr` or `az`.
        field: &'static str,
        /// The field's length in bytes.
        len: usize,
    },
}

/// The JSON ingestion format as plain records, before validation.
///
/// This is the JSON boundary's type and nothing else's: snapshots archive their own records
/// ([`crate::snapshot`]), the wire and the log theirs, so a field added here for JSON changes
/// no persisted or wire format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The table's name.
    pub table: String,
    /// The map's version.
    pub version: u64,
    /// The storage nodes the map uses.
    pub nodes: Vec<NodeSpec>,
    /// The partitions, in start order.
    pub partitions: Vec<PartitionSpec>,
}

/// A storage node record of the ingestion format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's id, scoped to the table.
    pub id: u32,
    /// `host:port`.
    pub addr: String,
    /// Availability zone.
    pub az: String,
}

/// A partition record of the ingestion format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
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

/// The JSON of a partial update of one range (`memds-ctl update-partitions`): the partitions
/// covering `[partitions[0].start, end_inclusive]` are replaced by `partitions`, turning the
/// table at `base_version` into the table at `version`; `nodes` are added to the table's node
/// list, replacing any listed node with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Table name.
    pub table: String,
    /// The version the update is based on.
    pub base_version: u64,
    /// The version the table has after the update.
    pub version: u64,
    /// Last hash (inclusive) of the replaced range.
    pub end_inclusive: u64,
    /// Nodes to add or replace.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// The new partitions of the range, in start order.
    pub partitions: Vec<PartitionSpec>,
}

/// The JSON of a batch of range updates of one table (`memds-ctl update-batch`), applied
/// atomically at one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Table name.
    pub table: String,
    /// The version the update is based on.
    pub base_version: u64,
    /// The version the table has after the update.
    pub version: u64,
    /// Nodes to add or replace.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// The ranges replaced, sorted by start, disjoint.
    pub ranges: Vec<RangeSpec>,
}

/// One range of a [`BatchSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Last hash (inclusive) of the replaced range.
    pub end_inclusive: u64,
    /// The new partitions of the range, in start order.
    pub partitions: Vec<PartitionSpec>,
}

/// An update of one table in memory, whichever boundary it came through (JSON, the wire, the
/// log): the ranges' partitions are replaced, turning the table at `base_version` into the
/// table at `version`, and `nodes` are added to the node list (replacing any listed node with
/// the same id). Splits, merges, replica moves and leader changes are all this one operation.
/// Ranges are sorted by start and disjoint; each range's first partition starts at an existing
/// partition's start and `end_inclusive` is an existing partition's end. It has no serialized
/// form of its own: each boundary converts from and to its own type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEdit {
    /// Table name.
    pub table: String,
    /// The version the update is based on.
    pub base_version: u64,
    /// The version the table has after the update.
    pub version: u64,
    /// Nodes to add or replace.
    pub nodes: Vec<NodeSpec>,
    /// The ranges replaced, sorted by start, disjoint.
    pub ranges: Vec<RangeEdit>,
}

/// One range of a [`BatchEdit`]: the partitions covering `[partitions[0].start,
/// end_inclusive]` are replaced by `partitions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeEdit {
    /// Last hash (inclusive) of the replaced range.
    pub end_inclusive: u64,
    /// The new partitions of the range, in start order.
    pub partitions: Vec<PartitionSpec>,
}

impl From<UpdateSpec> for BatchEdit {
    fn from(u: UpdateSpec) -> Self {
        BatchEdit {
            table: u.table,
            base_version: u.base_version,
            version: u.version,
            nodes: u.nodes,
            ranges: vec![RangeEdit {
                end_inclusive: u.end_inclusive,
                partitions: u.partitions,
            }],
        }
    }
}

impl From<BatchSpec> for BatchEdit {
    fn from(b: BatchSpec) -> Self {
        BatchEdit {
            table: b.table,
            base_version: b.base_version,
            version: b.version,
            nodes: b.nodes,
            ranges: b
                .ranges
                .into_iter()
                .map(|r| RangeEdit {
                    end_inclusive: r.end_inclusive,
                    partitions: r.partitions,
                })
                .collect(),
        }
    }
}

impl TryFrom<TableSpec> for TableMap {
    type Error = MapError;

    fn try_from(spec: TableSpec) -> Result<Self, MapError> {
        let name = TableName::new(&spec.table)?;
        let nodes = spec.nodes.into_iter().map(StorageNode::from).collect();
        let partitions = spec
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| p.to_partition(index))
            .collect::<Result<Vec<_>, _>>()?;
        TableMap::new(name, TableVersion(spec.version), nodes, partitions)
    }
}

impl PartitionSpec {
    /// The partition this record describes, checked on its own (replica set, leader index);
    /// `index` is its position in the table, for errors. The rules between partitions are
    /// [`TableMap::new`]'s.
    pub fn to_partition(&self, index: usize) -> Result<Partition, MapError> {
        let mut ids = [NodeId(0); MAX_REPLICAS];
        if self.replicas.is_empty() || self.replicas.len() > MAX_REPLICAS {
            return Err(MapError::ReplicaCount {
                index,
                count: self.replicas.len(),
            });
        }
        for (slot, &r) in ids.iter_mut().zip(&self.replicas) {
            *slot = NodeId(r);
        }
        let replicas = Replicas::checked(index, &ids[..self.replicas.len()])?;
        let leader = u8::try_from(self.leader)
            .ok()
            .filter(|&l| usize::from(l) < replicas.len())
            .ok_or(MapError::LeaderOutOfRange {
                index,
                leader: self.leader,
                replicas: replicas.len(),
            })?;
        Ok(Partition {
            id: PartitionId(self.id),
            start: self.start,
            epoch: Epoch(self.epoch),
            replicas,
            leader,
        })
    }
}

impl From<NodeSpec> for StorageNode {
    fn from(n: NodeSpec) -> Self {
        StorageNode {
            id: NodeId(n.id),
            addr: n.addr,
            az: n.az,
        }
    }
}

impl From<&TableMap> for TableSpec {
    fn from(map: &TableMap) -> Self {
        TableSpec {
            table: map.name.as_str().to_owned(),
            version: map.version.0,
            nodes: map
                .nodes
                .iter()
                .map(|n| NodeSpec {
                    id: n.id.0,
                    addr: n.addr.clone(),
                    az: n.az.clone(),
                })
                .collect(),
            partitions: map
                .partitions
                .iter()
                .map(|p| PartitionSpec {
                    id: p.id.0,
                    start: p.start,
                    epoch: p.epoch.0,
                    replicas: p.replicas.as_slice().iter().map(|r| r.0).collect(),
                    leader: u64::from(p.leader),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        serde_json::from_str(
            r#"{"table": "orders", "version": 7,
                "nodes": [{"id": 1, "addr": "10.0.0.1:8100", "az": "az-a"},
                          {"id": 2, "addr": "10.0.0.2:8100", "az": "az-b"},
                          {"id": 3, "addr": "10.0.0.3:8100", "az": "az-c"}],
                "partitions": [{"id": 1, "start": 0, "epoch": 3, "replicas": [1, 2, 3], "leader": 0},
                               {"id": 2, "start": 1000, "epoch": 4, "replicas": [2, 3], "leader": 1},
                               {"id": 5, "start": 5000, "epoch": 1, "replicas": [3], "leader": 0}]}"#,
        )
        .expect("the fixture parses")
    }

    /// Applies `edit` to a valid spec and returns the validation error's message.
    fn refused(edit: impl FnOnce(&mut TableSpec)) -> String {
        let mut s = spec();
        edit(&mut s);
        TableMap::try_from(s)
            .expect_err("the edited map breaks a rule")
            .to_string()
    }

    #[test]
    fn valid_map_parses_and_dumps_back_to_the_same_json() {
        let map = TableMap::try_from(spec()).expect("valid");
        assert_eq!(map.partitions().len(), 3);
        assert_eq!(map.version(), TableVersion(7));
        let again = TableMap::from_json(&map.to_json()).expect("dump parses");
        assert_eq!(again, map);
        assert_eq!(TableSpec::from(&map), spec());
    }

    #[test]
    fn route_names_range_leader_and_addresses() {
        let map = TableMap::try_from(spec()).expect("valid");
        let r = map.route(4999);
        assert_eq!(r.partition, PartitionId(2));
        assert_eq!((r.start, r.end_inclusive), (1000, 4999));
        assert_eq!(r.leader_replica().map(|l| &*l.addr), Some("10.0.0.3:8100"));
        let last = map.route(u64::MAX);
        assert_eq!((last.start, last.end_inclusive), (5000, u64::MAX));
        assert_eq!(map.route(0).partition, PartitionId(1));
        assert!(r.contains(1000) && r.contains(4999) && !r.contains(5000));
    }

    #[test]
    fn every_rule_is_enforced_with_its_message() {
        type Edit = Box<dyn FnOnce(&mut TableSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.table.clear()), "table name is empty"),
            (
                Box::new(|s| s.table = "x".repeat(256)),
                "table name is 256 bytes, more than the limit of 255",
            ),
            (
                Box::new(|s| s.partitions.clear()),
                "table has no partitions",
            ),
            (
                Box::new(|s| s.partitions[0].start = 1),
                "partition 0: start 1 is not 0",
            ),
            (
                Box::new(|s| s.partitions[2].start = 1000),
                "partition 2: start 1000 is not greater than the previous start 1000",
            ),
            (
                Box::new(|s| s.partitions[2].start = 10),
                "partition 2: start 10 is not greater than the previous start 1000",
            ),
            (
                Box::new(|s| s.partitions[2].id = 1),
                "partition 2: id 1 is already used by partition 0",
            ),
            (
                Box::new(|s| s.partitions[1].replicas.clear()),
                "partition 1: 0 replicas; a partition has 1 to 7 replicas",
            ),
            (
                Box::new(|s| s.partitions[1].replicas = vec![1, 2, 3, 4, 5, 6, 7, 8]),
                "partition 1: 8 replicas",
            ),
            (
                Box::new(|s| s.partitions[1].replicas = vec![2, 3, 2]),
                "partition 1: node 2 is listed twice",
            ),
            (
                Box::new(|s| s.partitions[2].replicas = vec![9]),
                "partition 2: replica node 9 is not in the table's node list",
            ),
            (
                Box::new(|s| s.partitions[1].leader = 2),
                "partition 1: leader 2 is out of range for 2 replicas",
            ),
            (
                Box::new(|s| s.partitions[1].leader = 1 << 40),
                "partition 1: leader 1099511627776 is out of range for 2 replicas",
            ),
            (Box::new(|s| s.nodes[2].id = 1), "node id 1 is listed twice"),
            (
                Box::new(|s| s.nodes[0].addr.clear()),
                "node 1: address is empty",
            ),
            (
                Box::new(|s| s.nodes[1].az = "z".repeat(300)),
                "node 2: az is 300 bytes",
            ),
        ];
        for (edit, expected) in cases {
            let message = refused(edit);
            assert!(
                message.starts_with(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
    }

    proptest::proptest! {
        /// The sort-based duplicate search reports what a scan in index order would: the first
        /// partition whose id came before, and where it came first.
        #[test]
        fn the_first_duplicate_id_is_the_one_a_scan_finds(ids in proptest::collection::vec(0u64..40, 0..60)) {
            let parts: Vec<Partition> = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| Partition {
                    id: PartitionId(id),
                    start: i as u64,
                    epoch: Epoch(1),
                    replicas: Replicas::new(&[NodeId(1)]).expect("one replica"),
                    leader: 0,
                })
                .collect();
            let mut seen = std::collections::HashMap::new();
            let mut scan = None;
            for (i, &id) in ids.iter().enumerate() {
                if let Some(&first) = seen.get(&id) {
                    scan = Some((i, first));
                    break;
                }
                seen.insert(id, i);
            }
            proptest::prop_assert_eq!(first_duplicate_id(&parts), scan);
        }

        /// Node membership agrees with a linear search, for ids a bitmap covers and ids it
        /// does not.
        #[test]
        fn node_membership_matches_a_linear_search(
            mut listed in proptest::collection::vec(proptest::prop_oneof![0u32..300, proptest::num::u32::ANY], 1..20),
            probes in proptest::collection::vec(proptest::prop_oneof![0u32..300, proptest::num::u32::ANY], 1..40),
        ) {
            listed.sort_unstable();
            listed.dedup();
            let nodes: Vec<StorageNode> = listed
                .iter()
                .map(|&id| StorageNode { id: NodeId(id), addr: "a:1".into(), az: "z".into() })
                .collect();
            let set = NodeSet::new(&nodes);
            for p in probes.iter().chain(&listed) {
                proptest::prop_assert_eq!(set.contains(NodeId(*p)), listed.contains(p));
            }
        }
    }

    #[test]
    fn malformed_json_is_a_typed_error() {
        for bad in [
            "",
            "{",
            r#"{"table": "t"}"#,
            r#"{"table": "t", "version": -1, "nodes": [], "partitions": []}"#,
            r#"{"table": "t", "version": 1, "nodes": [], "partitions": [], "extra": 1}"#,
        ] {
            let err = TableMap::from_json(bad).expect_err("malformed");
            assert!(matches!(err, MapError::Json(_)), "{bad:?} gave {err:?}");
        }
    }

    #[test]
    fn replicas_reject_empty_oversized_and_repeated_sets() {
        assert!(Replicas::new(&[]).is_err());
        assert!(Replicas::new(&[NodeId(1); 2]).is_err());
        let ids: Vec<NodeId> = (0..8).map(NodeId).collect();
        assert!(Replicas::new(&ids).is_err());
        let ok = Replicas::new(&ids[..7]).expect("seven distinct replicas");
        assert_eq!(ok.as_slice(), &ids[..7]);
    }
}
