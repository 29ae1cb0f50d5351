//! The record of a table fetched whole (by Classic whole-table mode's download, or by
//! `RouterCache::warm` in any mode): its version and node list, and the routes a delta between
//! two versions makes of it. Pure: no IO, no clock.
//!
//! A delta ([`BatchEdit`], converted from the wire's `BatchUpdate`) replaces the partitions of each of its ranges with new ones and adds
//! or replaces nodes. Nothing a server sends is trusted: a delta is checked whole (its table,
//! that it starts from the version held, ranges sorted and disjoint, partitions in order inside
//! their range, replica lists that name known nodes and hold their leader) before any route of it
//! is made, and one that fails is refused with the reason; the caller then downloads the whole
//! table. A delta that changes the address or zone of a node the copy already lists is refused
//! too: the cached routes outside its ranges carry the old address, and only a whole download
//! rewrites them all.

use std::collections::BTreeMap;

use memds_proto::model::{BatchEdit, MAX_REPLICAS, NodeSpec};
use memds_proto::{Epoch, NodeId, PartitionId, Route, RouteReplica, TableName, TableVersion};

/// What the cache holds of a table it downloaded whole: the version and the node list its
/// routes were made from.
#[derive(Debug, Default, Clone)]
pub(crate) struct WholeCopy {
    /// The version the cached routes were brought to, if the table was downloaded.
    pub(crate) version: Option<u64>,
    /// The table's nodes by id.
    pub(crate) nodes: BTreeMap<u32, NodeSpec>,
    /// The same nodes as routes name them: every route made from this copy shares these
    /// replicas' strings.
    replicas: BTreeMap<u32, RouteReplica>,
}

/// A node as a route names it.
fn replica(n: &NodeSpec) -> RouteReplica {
    RouteReplica {
        id: NodeId::new(n.id),
        addr: n.addr.as_str().into(),
        az: n.az.as_str().into(),
    }
}

/// The routes of a delta, and the nodes it adds.
#[derive(Debug)]
pub(crate) struct DeltaRoutes {
    /// One route per new partition, in start order.
    pub(crate) routes: Vec<Route>,
    /// Nodes the copy did not list.
    pub(crate) added: Vec<NodeSpec>,
}

impl WholeCopy {
    /// The copy of a table downloaded at `version` with `nodes`.
    pub(crate) fn downloaded(version: u64, nodes: impl IntoIterator<Item = NodeSpec>) -> Self {
        let nodes: BTreeMap<u32, NodeSpec> = nodes.into_iter().map(|n| (n.id, n)).collect();
        Self {
            version: Some(version),
            replicas: nodes.values().map(|n| (n.id, replica(n))).collect(),
            nodes,
        }
    }

    /// The routes `delta` makes of this copy, checked whole; the reason it cannot be applied
    /// otherwise.
    pub(crate) fn delta_routes(
        &self,
        table: &TableName,
        delta: &BatchEdit,
    ) -> Result<DeltaRoutes, String> {
        let held = self.version.ok_or("no version of the table is held")?;
        if delta.table != table.as_str() {
            return Err(format!(
                "a delta of table {:?}, not {:?}",
                delta.table,
                table.as_str()
            ));
        }
        if delta.base_version != held || delta.version <= held {
            return Err(format!(
                "a delta from version {} to {}, the cache holds {held}",
                delta.base_version, delta.version
            ));
        }
        let mut added: BTreeMap<u32, NodeSpec> = BTreeMap::new();
        for n in &delta.nodes {
            match self.nodes.get(&n.id) {
                Some(known) if known == n => {}
                Some(_) => return Err(format!("the delta changes node {}", n.id)),
                None => {
                    if added
                        .insert(n.id, n.clone())
                        .is_some_and(|other| other != *n)
                    {
                        return Err(format!("the delta lists node {} twice", n.id));
                    }
                }
            }
        }
        let added_replicas: BTreeMap<u32, RouteReplica> =
            added.values().map(|n| (n.id, replica(n))).collect();
        let node = |id: u32| self.replicas.get(&id).or_else(|| added_replicas.get(&id));
        if delta.ranges.is_empty() {
            return Err("a delta with no ranges".into());
        }
        let mut routes = Vec::new();
        let mut previous_end: Option<u64> = None;
        for (r, range) in delta.ranges.iter().enumerate() {
            let first = range
                .partitions
                .first()
                .ok_or_else(|| format!("range {r} has no partitions"))?;
            if first.start > range.end_inclusive {
                return Err(format!("range {r} ends before its first partition"));
            }
            if previous_end.is_some_and(|end| end >= first.start) {
                return Err(format!(
                    "range {r} is not after the previous one (ranges must be sorted, disjoint)"
                ));
            }
            previous_end = Some(range.end_inclusive);
            for (i, p) in range.partitions.iter().enumerate() {
                let end_inclusive = match range.partitions.get(i + 1) {
                    Some(next) if next.start > p.start => next.start - 1,
                    Some(_) => return Err(format!("range {r}: partitions not in start order")),
                    None => range.end_inclusive,
                };
                if p.start > end_inclusive {
                    return Err(format!(
                        "range {r}: partition {} past the range's end",
                        p.id
                    ));
                }
                if p.replicas.is_empty() || p.replicas.len() > MAX_REPLICAS {
                    return Err(format!(
                        "partition {} has {} replicas",
                        p.id,
                        p.replicas.len()
                    ));
                }
                let leader = u8::try_from(p.leader)
                    .ok()
                    .filter(|&l| usize::from(l) < p.replicas.len())
                    .ok_or_else(|| {
                        format!("partition {}: leader {} out of range", p.id, p.leader)
                    })?;
                let replicas = p
                    .replicas
                    .iter()
                    .map(|&id| {
                        node(id)
                            .cloned()
                            .ok_or_else(|| format!("partition {} names unknown node {id}", p.id))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                routes.push(Route {
                    table: table.clone(),
                    version: TableVersion::new(delta.version),
                    partition: PartitionId::new(p.id),
                    start: p.start,
                    end_inclusive,
                    epoch: Epoch::new(p.epoch),
                    leader,
                    replicas,
                });
            }
        }
        Ok(DeltaRoutes {
            routes,
            added: added.into_values().collect(),
        })
    }

    /// Records that a delta to `version` adding `added` was applied.
    pub(crate) fn advance(&mut self, version: u64, added: Vec<NodeSpec>) {
        self.version = Some(version);
        self.replicas
            .extend(added.iter().map(|n| (n.id, replica(n))));
        self.nodes.extend(added.into_iter().map(|n| (n.id, n)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::model::{PartitionSpec, RangeEdit};

    fn node(id: u32) -> NodeSpec {
        NodeSpec {
            id,
            addr: format!("n{id}:1"),
            az: "z".into(),
        }
    }

    fn part(id: u64, start: u64, replicas: Vec<u32>) -> PartitionSpec {
        PartitionSpec {
            id,
            start,
            epoch: 2,
            replicas,
            leader: 0,
        }
    }

    fn split(version: u64) -> BatchEdit {
        BatchEdit {
            table: "t".into(),
            base_version: version,
            version: version + 1,
            nodes: vec![node(3)],
            ranges: vec![RangeEdit {
                end_inclusive: 999,
                partitions: vec![part(1, 0, vec![1, 2]), part(9, 500, vec![3])],
            }],
        }
    }

    fn name() -> TableName {
        TableName::new("t").expect("valid")
    }

    #[test]
    fn a_split_makes_two_routes_ending_where_the_next_starts() {
        let mut copy = WholeCopy::downloaded(4, [node(1), node(2)]);
        let d = copy.delta_routes(&name(), &split(4)).expect("applies");
        let spans: Vec<(u64, u64, u64)> = d
            .routes
            .iter()
            .map(|r| (r.partition.get(), r.start, r.end_inclusive))
            .collect();
        assert_eq!(spans, [(1, 0, 499), (9, 500, 999)]);
        assert_eq!(&*d.routes[1].replicas[0].addr, "n3:1");
        assert!(d.routes.iter().all(|r| r.version.get() == 5));
        copy.advance(5, d.added);
        assert_eq!(copy.version, Some(5));
        assert!(copy.nodes.contains_key(&3));
    }

    #[test]
    fn bad_deltas_are_refused_whole_with_a_reason() {
        let copy = WholeCopy::downloaded(4, [node(1), node(2)]);
        let refused = |d: BatchEdit| copy.delta_routes(&name(), &d).expect_err("refused");
        // From another version.
        assert!(refused(split(3)).contains("the cache holds 4"));
        // Of another table.
        let mut d = split(4);
        d.table = "other".into();
        assert!(refused(d).contains("other"));
        // A node the copy lists, changed.
        let mut d = split(4);
        d.nodes = vec![NodeSpec {
            addr: "moved:1".into(),
            ..node(1)
        }];
        assert!(refused(d).contains("changes node 1"));
        // Unknown node, leader out of range, no replicas, too many replicas.
        let mut d = split(4);
        d.nodes.clear();
        assert!(refused(d).contains("unknown node 3"));
        let mut d = split(4);
        d.ranges[0].partitions[0].leader = 2;
        assert!(refused(d).contains("leader"));
        let mut d = split(4);
        d.ranges[0].partitions[0].replicas.clear();
        assert!(refused(d).contains("replicas"));
        let mut d = split(4);
        d.ranges[0].partitions[0].replicas = vec![1; MAX_REPLICAS + 1];
        assert!(refused(d).contains("replicas"));
        // Out of order, past the end, empty, overlapping ranges.
        let mut d = split(4);
        d.ranges[0].partitions.swap(0, 1);
        assert!(refused(d).contains("start order"));
        let mut d = split(4);
        d.ranges[0].end_inclusive = 400;
        assert!(refused(d).contains("past the range's end"));
        let mut d = split(4);
        d.ranges[0].partitions.clear();
        assert!(refused(d).contains("no partitions"));
        let mut d = split(4);
        d.ranges.push(d.ranges[0].clone());
        assert!(refused(d).contains("sorted"));
        let mut d = split(4);
        d.ranges.clear();
        assert!(refused(d).contains("no ranges"));
        // Nothing held.
        let empty = WholeCopy::default();
        assert!(empty.delta_routes(&name(), &split(4)).is_err());
    }
}
