//! The resident encoding: how a server holds a table's partition map in memory.
//!
//! # Goals
//!
//! A fleet holds every partition of every table of a storage service, tens of millions of them,
//! so memory per partition is what sizes the fleet. A lookup must still be a few hundred
//! nanoseconds, and must never decompress a whole table. General-purpose compression (zstd over
//! the plain records) is small but has no random access; the naive `Vec` of structs with owned
//! address strings has random access but costs hundreds of bytes per partition. This encoding
//! aims at zstd's size with the naive structure's lookup.
//!
//! # Layout
//!
//! Three facts about real partition maps drive the design: starts are sorted, so neighbours are
//! close; a split leaves both children on the parent's replicas, so neighbours mostly share a
//! replica set; and ids and epochs of neighbouring partitions are of similar size. So:
//!
//! - **Node dictionary.** The table's storage nodes are listed once, sorted by id; a replica is a
//!   dense position in that list, `node_width = ceil(log2(nodes))` bits. The address and zone
//!   strings live in [`NodeInfo`] records interned by a [`NodeInterner`]: a node used by any
//!   number of partitions and tables is stored once on the server.
//! - **Blocks of 64 partitions**, bit-packed one after the other into a single `u64` word array.
//!   Each block has a 4-word header and a bit stream:
//!
//!   | part | bits |
//!   |---|---|
//!   | word 0: counts and field widths (`n`, start/id/epoch/leader widths, set count, set lengths) | 64 |
//!   | word 1: `id_base`, the smallest partition id of the block | 64 |
//!   | word 2: `epoch_base`, the smallest epoch of the block | 64 |
//!   | word 3: `new_set` mask: bit `i` set where partition `i`'s replica set differs from its predecessor's | 64 |
//!   | `start - block_start` of partitions 1..n (frame of reference) | (n-1) x start_width |
//!   | `id - id_base` | n x id_width |
//!   | `epoch - epoch_base` | n x epoch_width |
//!   | leader index | n x leader_width |
//!   | the block's distinct replica sets, in order: length, then node positions | sets x (len_width + max_len x node_width) |
//!
//!   Each width is the smallest that holds the block's largest value, so a block pays for its own
//!   spread, not the table's. Partition `i` uses set number `popcount(new_set & mask(0..=i)) - 1`:
//!   one popcount, no scan.
//! - **Top-level index**: the first start of every block (`block_starts`, 8 bytes per 64
//!   partitions), each block's word offset, and a radix index: for each of the `2^r` buckets
//!   of the top `r` hash bits (`2^r` about the number of blocks), the block holding the bucket's
//!   first hash. Keys are hashed uniformly, so a bucket spans one or two blocks.
//!
//! # Lookup
//!
//! A floor lookup reads the radix entry of the hash's bucket, binary-searches the one or two
//! block starts it names (the whole of `block_starts` when keys cluster), reads the block
//! header, binary-searches the block's packed starts (six probes, within a few cache lines), and
//! decodes that one partition: O(log n) in the worst case, a handful of cache lines in the usual
//! one, nothing decompressed.
//!
//! # Verification
//!
//! The table carries an XXH3 checksum over its dictionary, index and packed words, computed at
//! build; [`CompactTable::verify`] recomputes it so a background scrubber can detect damage.

use std::collections::HashSet;
use std::mem::size_of;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::bits::{self, BitWriter};
use crate::model::{
    Epoch, MAX_REPLICAS, NodeId, NodeSpec, Partition, PartitionId, Replicas, Route, RouteReplica,
    StorageNode, TableMap, TableName, TableVersion,
};
use crate::radix::RadixIndex;

/// Partitions per block.
pub const BLOCK_LEN: usize = 64;
const HEADER_WORDS: usize = 4;
/// What a heap allocation costs beyond its payload (glibc's chunk header and rounding), used to
/// account resident bytes honestly.
const ALLOC_OVERHEAD: usize = 16;

/// A storage node's address and zone, stored once however many partitions and tables use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// `host:port`.
    pub addr: Box<str>,
    /// Availability zone.
    pub az: Box<str>,
}

/// Interns [`NodeInfo`] records so identical nodes share one allocation across tables.
#[derive(Debug, Default)]
pub struct NodeInterner {
    set: HashSet<Arc<NodeInfo>>,
}

impl NodeInterner {
    /// The shared record for a node with this address and zone.
    pub fn intern(&mut self, addr: &str, az: &str) -> Arc<NodeInfo> {
        let probe = NodeInfo {
            addr: addr.into(),
            az: az.into(),
        };
        if let Some(found) = self.set.get(&probe) {
            return Arc::clone(found);
        }
        let record = Arc::new(probe);
        self.set.insert(Arc::clone(&record));
        record
    }

    /// Forgets records no table uses any more; returns how many were dropped.
    pub fn purge(&mut self) -> usize {
        let before = self.set.len();
        self.set.retain(|r| Arc::strong_count(r) > 1);
        before - self.set.len()
    }

    /// How many distinct node records are held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no records are held.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Heap bytes of the records and the set that indexes them.
    pub fn resident_bytes(&self) -> usize {
        let records: usize = self
            .set
            .iter()
            .map(|r| {
                // The Arc allocation holds two counters and the record; each string is its own
                // allocation.
                2 * size_of::<usize>()
                    + size_of::<NodeInfo>()
                    + r.addr.len()
                    + r.az.len()
                    + 3 * ALLOC_OVERHEAD
            })
            .sum();
        records + self.set.capacity() * (size_of::<Arc<NodeInfo>>() + 1) + ALLOC_OVERHEAD
    }
}

/// A table's node dictionary entry: the table-scoped id and the shared record.
#[derive(Clone, Debug)]
struct NodeEntry {
    id: NodeId,
    info: Arc<NodeInfo>,
}

/// One table's partition map in the compact resident encoding (see the module docs).
#[derive(Clone, Debug)]
pub struct CompactTable {
    name: TableName,
    version: TableVersion,
    /// Sorted by id; replicas are positions in this list.
    nodes: Box<[NodeEntry]>,
    len: usize,
    node_width: u32,
    block_starts: Box<[u64]>,
    block_offsets: Box<[u64]>,
    /// Floor lookups over `block_starts`.
    radix: RadixIndex,
    data: Box<[u64]>,
    nodes_digest: u64,
    checksum: u64,
}

/// A partition decoded from the compact encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionEntry {
    /// Position in the table, in start order.
    pub index: usize,
    /// The partition's id.
    pub id: PartitionId,
    /// First hash (inclusive).
    pub start: u64,
    /// Last hash (inclusive).
    pub end_inclusive: u64,
    /// The partition's epoch.
    pub epoch: Epoch,
    /// Index into the replicas of the leader.
    pub leader: u8,
    replica_len: u8,
    /// Positions in the table's node dictionary.
    replica_slots: [u32; MAX_REPLICAS],
}

impl PartitionEntry {
    /// How many replicas the partition has.
    pub fn replica_count(&self) -> usize {
        usize::from(self.replica_len)
    }
}

impl CompactTable {
    /// Encodes a validated map, interning its node records.
    pub fn new(map: &TableMap, interner: &mut NodeInterner) -> Self {
        let nodes: Box<[NodeEntry]> = map
            .nodes()
            .iter()
            .map(|n| NodeEntry {
                id: n.id,
                info: interner.intern(&n.addr, &n.az),
            })
            .collect();
        let node_width = bits::width(nodes.len().saturating_sub(1) as u64);
        let partitions = map.partitions();
        let slot_of = |id: NodeId| -> u64 {
            map.nodes()
                .binary_search_by_key(&id, |n| n.id)
                .expect("validated: every replica is a listed node") as u64
        };

        let blocks = partitions.len().div_ceil(BLOCK_LEN);
        let mut block_starts = Vec::with_capacity(blocks);
        let mut block_offsets = Vec::with_capacity(blocks);
        let mut w = BitWriter::default();
        for chunk in partitions.chunks(BLOCK_LEN) {
            block_starts.push(chunk[0].start);
            w.align();
            block_offsets.push((w.bit_len() / 64) as u64);
            encode_block(&mut w, chunk, node_width, &slot_of);
        }
        let radix = RadixIndex::new(&block_starts);
        let mut table = Self {
            name: map.name().clone(),
            version: map.version(),
            nodes,
            len: partitions.len(),
            node_width,
            block_starts: block_starts.into_boxed_slice(),
            block_offsets: block_offsets.into_boxed_slice(),
            radix,
            data: w.finish(),
            nodes_digest: 0,
            checksum: 0,
        };
        table.nodes_digest = table.compute_nodes_digest();
        table.checksum = table.compute_checksum();
        table
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// The map's version.
    pub fn version(&self) -> TableVersion {
        self.version
    }

    /// How many partitions the table has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a table has at least one partition.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index of the partition holding `hash`.
    pub fn floor_index(&self, hash: u64) -> usize {
        let b = self.floor_block(hash);
        let block = self.block(b);
        b * BLOCK_LEN + block.floor(&self.data, hash - self.block_starts[b])
    }

    /// The partition holding `hash`.
    pub fn lookup(&self, hash: u64) -> PartitionEntry {
        let b = self.floor_block(hash);
        let block = self.block(b);
        let i = block.floor(&self.data, hash - self.block_starts[b]);
        self.decode(b, &block, i)
    }

    /// The partition at `index` (in start order), if there is one.
    pub fn get(&self, index: usize) -> Option<PartitionEntry> {
        (index < self.len).then(|| {
            let b = index / BLOCK_LEN;
            self.decode(b, &self.block(b), index % BLOCK_LEN)
        })
    }

    /// The partitions overlapping the hash range `[from, to)`, in start order.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = PartitionEntry> + '_ {
        let first = if from < to {
            self.floor_index(from)
        } else {
            self.len
        };
        (first..self.len)
            .map(|i| self.get(i).expect("index below len"))
            .take_while(move |p| p.start < to)
    }

    /// Every partition, in start order.
    pub fn iter(&self) -> impl Iterator<Item = PartitionEntry> + '_ {
        (0..self.len).map(|i| self.get(i).expect("index below len"))
    }

    /// A partition's replicas: table-scoped node id and shared record, in order.
    pub fn replicas<'a>(
        &'a self,
        entry: &'a PartitionEntry,
    ) -> impl Iterator<Item = (NodeId, &'a NodeInfo)> + 'a {
        entry.replica_slots[..entry.replica_count()]
            .iter()
            .map(|&s| {
                let n = &self.nodes[s as usize];
                (n.id, &*n.info)
            })
    }

    /// The full route for a decoded partition.
    pub fn route(&self, entry: &PartitionEntry) -> Route {
        Route {
            table: self.name.clone(),
            version: self.version,
            partition: entry.id,
            start: entry.start,
            end_inclusive: entry.end_inclusive,
            epoch: entry.epoch,
            leader: entry.leader,
            replicas: self
                .replicas(entry)
                .map(|(id, info)| RouteReplica {
                    id,
                    addr: info.addr.to_string(),
                    az: info.az.to_string(),
                })
                .collect(),
        }
    }

    /// Decodes the whole table back into its plain, validated form (for dumps and snapshots).
    pub fn to_map(&self) -> TableMap {
        let nodes = self
            .nodes
            .iter()
            .map(|n| StorageNode {
                id: n.id,
                addr: n.info.addr.to_string(),
                az: n.info.az.to_string(),
            })
            .collect();
        let mut ids = Vec::with_capacity(MAX_REPLICAS);
        let partitions = self
            .iter()
            .map(|e| {
                ids.clear();
                ids.extend(self.replicas(&e).map(|(id, _)| id));
                Partition {
                    id: e.id,
                    start: e.start,
                    epoch: e.epoch,
                    replicas: Replicas::new(&ids).expect("encoded from a valid replica set"),
                    leader: e.leader,
                }
            })
            .collect();
        // Built from a valid map, whose entries come back in start order with the same ids,
        // nodes and replica sets: valid by construction, so not checked again (at millions of
        // partitions the checks cost more than the decoding).
        TableMap::from_valid_parts(self.name.clone(), self.version, nodes, partitions)
    }

    /// Heap and inline bytes this table holds, allocator overhead included. Node records are
    /// shared across tables and accounted by their [`NodeInterner`].
    pub fn resident_bytes(&self) -> usize {
        size_of::<Self>()
            + self.name.as_str().len()
            + self.nodes.len() * size_of::<NodeEntry>()
            + self.block_starts.len() * size_of::<u64>()
            + self.block_offsets.len() * size_of::<u64>()
            + self.radix.heap_bytes()
            + self.data.len() * size_of::<u64>()
            + 6 * ALLOC_OVERHEAD
    }

    /// How many storage nodes the table lists.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The listed nodes, sorted by id, as plain records.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        self.nodes
            .iter()
            .map(|n| NodeSpec {
                id: n.id.get(),
                addr: n.info.addr.to_string(),
                az: n.info.az.to_string(),
            })
            .collect()
    }

    /// A digest of the node list (ids, addresses, zones): equal lists have equal digests, so a
    /// client can tell whether its copy of the list is current.
    pub fn nodes_digest(&self) -> u64 {
        self.nodes_digest
    }

    /// The checksum computed when the table was built. It covers the name, version, nodes and
    /// every partition, and the encoding is deterministic, so two tables built from equal maps
    /// have equal checksums.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Recomputes the checksum over everything the table holds and compares it with the one
    /// computed at build: false means the resident copy is damaged.
    pub fn verify(&self) -> bool {
        self.compute_checksum() == self.checksum
    }

    /// Bytes [`CompactTable::verify`] reads: what a scrub of this table costs.
    pub fn verified_bytes(&self) -> usize {
        (self.block_starts.len() + self.block_offsets.len() + self.data.len()) * size_of::<u64>()
            + self.radix.heap_bytes()
    }

    /// A copy with one bit of the packed partition data flipped (`bit` modulo the data's
    /// length), as a memory fault would leave it: for tests of the scrubbing that must catch it
    /// (the server's `scrub-damage` failpoint uses it too).
    #[doc(hidden)]
    pub fn damaged_copy(&self, bit: usize) -> Self {
        let mut copy = self.clone();
        let bits = copy.data.len() * 64;
        if bits > 0 {
            let bit = bit % bits;
            copy.data[bit / 64] ^= 1 << (bit % 64);
        }
        copy
    }

    fn compute_nodes_digest(&self) -> u64 {
        let mut h = Xxh3::new();
        self.hash_nodes(&mut h);
        h.digest()
    }

    fn hash_nodes(&self, h: &mut Xxh3) {
        for n in self.nodes.iter() {
            h.update(&n.id.get().to_le_bytes());
            h.update(n.info.addr.as_bytes());
            h.update(&[0]);
            h.update(n.info.az.as_bytes());
            h.update(&[0]);
        }
    }

    fn compute_checksum(&self) -> u64 {
        let mut h = Xxh3::new();
        h.update(self.name.as_str().as_bytes());
        h.update(&self.version.get().to_le_bytes());
        h.update(&(self.len as u64).to_le_bytes());
        h.update(&self.nodes_digest.to_le_bytes());
        self.hash_nodes(&mut h);
        for words in [&self.block_starts, &self.block_offsets, &self.data] {
            hash_words(&mut h, words);
        }
        self.radix.hash_into(&mut h);
        h.digest()
    }

    /// The block holding `hash`: the radix index narrows the search to the few blocks of the
    /// hash's bucket, then a binary search finishes it.
    #[inline]
    fn floor_block(&self, hash: u64) -> usize {
        self.radix
            .floor(&self.block_starts, hash)
            .expect("the first block starts at 0, so every hash has a floor")
    }

    fn block(&self, b: usize) -> Block {
        Block::parse(&self.data, self.block_offsets[b] as usize, self.node_width)
    }

    fn decode(&self, b: usize, block: &Block, i: usize) -> PartitionEntry {
        let base = self.block_starts[b];
        let start = base + block.start_offset(&self.data, i);
        let end_inclusive = if i + 1 < block.n {
            base + block.start_offset(&self.data, i + 1) - 1
        } else {
            self.block_starts.get(b + 1).map_or(u64::MAX, |&s| s - 1)
        };
        let d = &self.data;
        let set = (block.new_set & (u64::MAX >> (63 - i))).count_ones() as usize - 1;
        let set_off = block.sets_off + set * block.set_w;
        let replica_len = (block.min_len + bits::get(d, set_off, block.len_w)) as u8;
        let mut replica_slots = [0u32; MAX_REPLICAS];
        let mut off = set_off + block.len_w as usize;
        for slot in replica_slots.iter_mut().take(usize::from(replica_len)) {
            *slot = bits::get(d, off, self.node_width) as u32;
            off += self.node_width as usize;
        }
        PartitionEntry {
            index: b * BLOCK_LEN + i,
            id: PartitionId::new(
                block.id_base + bits::get(d, block.ids_off + i * block.id_w as usize, block.id_w),
            ),
            start,
            end_inclusive,
            epoch: Epoch::new(
                block.epoch_base
                    + bits::get(
                        d,
                        block.epochs_off + i * block.epoch_w as usize,
                        block.epoch_w,
                    ),
            ),
            leader: bits::get(
                d,
                block.leaders_off + i * block.leader_w as usize,
                block.leader_w,
            ) as u8,
            replica_len,
            replica_slots,
        }
    }
}

/// A block header, parsed, with the bit offsets of its sections.
struct Block {
    n: usize,
    start_w: u32,
    id_w: u32,
    epoch_w: u32,
    leader_w: u32,
    len_w: u32,
    min_len: u64,
    id_base: u64,
    epoch_base: u64,
    new_set: u64,
    starts_off: usize,
    ids_off: usize,
    epochs_off: usize,
    leaders_off: usize,
    sets_off: usize,
    set_w: usize,
}

// Bit positions of the fields of header word 0.
const H_N: u32 = 0; // n - 1, 6 bits
const H_START_W: u32 = 6; // 7 bits
const H_ID_W: u32 = 13; // 7 bits
const H_EPOCH_W: u32 = 20; // 7 bits
const H_LEADER_W: u32 = 27; // 3 bits
const H_LEN_W: u32 = 30; // 2 bits
const H_MIN_LEN: u32 = 32; // 3 bits
const H_MAX_LEN: u32 = 35; // 3 bits

impl Block {
    fn parse(data: &[u64], word: usize, node_width: u32) -> Self {
        let h = data[word];
        let field = |at: u32, w: u32| (h >> at) & ((1 << w) - 1);
        let n = field(H_N, 6) as usize + 1;
        let start_w = field(H_START_W, 7) as u32;
        let id_w = field(H_ID_W, 7) as u32;
        let epoch_w = field(H_EPOCH_W, 7) as u32;
        let leader_w = field(H_LEADER_W, 3) as u32;
        let len_w = field(H_LEN_W, 2) as u32;
        let min_len = field(H_MIN_LEN, 3);
        let max_len = field(H_MAX_LEN, 3) as usize;
        let starts_off = (word + HEADER_WORDS) * 64;
        let ids_off = starts_off + (n - 1) * start_w as usize;
        let epochs_off = ids_off + n * id_w as usize;
        let leaders_off = epochs_off + n * epoch_w as usize;
        let sets_off = leaders_off + n * leader_w as usize;
        Self {
            n,
            start_w,
            id_w,
            epoch_w,
            leader_w,
            len_w,
            min_len,
            id_base: data[word + 1],
            epoch_base: data[word + 2],
            new_set: data[word + 3],
            starts_off,
            ids_off,
            epochs_off,
            leaders_off,
            sets_off,
            set_w: len_w as usize + max_len * node_width as usize,
        }
    }

    /// `start - block_start` of partition `i`.
    #[inline]
    fn start_offset(&self, data: &[u64], i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            bits::get(
                data,
                self.starts_off + (i - 1) * self.start_w as usize,
                self.start_w,
            )
        }
    }

    /// The greatest `i` whose start offset is at most `rel`.
    #[inline]
    fn floor(&self, data: &[u64], rel: u64) -> usize {
        // Invariant: start_offset(lo) <= rel, and the answer is below hi.
        let (mut lo, mut hi) = (0, self.n);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.start_offset(data, mid) <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn encode_block(
    w: &mut BitWriter,
    chunk: &[Partition],
    node_width: u32,
    slot_of: &impl Fn(NodeId) -> u64,
) {
    let n = chunk.len();
    let base = chunk[0].start;
    let id_base = chunk
        .iter()
        .map(|p| p.id.get())
        .min()
        .expect("non-empty chunk");
    let epoch_base = chunk
        .iter()
        .map(|p| p.epoch.get())
        .min()
        .expect("non-empty chunk");
    let start_w = bits::width(chunk[n - 1].start - base);
    let id_w = chunk
        .iter()
        .map(|p| bits::width(p.id.get() - id_base))
        .max()
        .unwrap_or(0);
    let epoch_w = chunk
        .iter()
        .map(|p| bits::width(p.epoch.get() - epoch_base))
        .max()
        .unwrap_or(0);
    let leader_w = chunk
        .iter()
        .map(|p| bits::width(u64::from(p.leader)))
        .max()
        .unwrap_or(0);
    let mut new_set = 0u64;
    let mut sets: Vec<&Replicas> = Vec::new();
    for (i, p) in chunk.iter().enumerate() {
        if i == 0 || p.replicas != chunk[i - 1].replicas {
            new_set |= 1 << i;
            sets.push(&p.replicas);
        }
    }
    let min_len = sets
        .iter()
        .map(|s| s.len())
        .min()
        .expect("at least one set") as u64;
    let max_len = sets
        .iter()
        .map(|s| s.len())
        .max()
        .expect("at least one set") as u64;
    let len_w = bits::width(max_len - min_len);

    let header = (n as u64 - 1) << H_N
        | u64::from(start_w) << H_START_W
        | u64::from(id_w) << H_ID_W
        | u64::from(epoch_w) << H_EPOCH_W
        | u64::from(leader_w) << H_LEADER_W
        | u64::from(len_w) << H_LEN_W
        | min_len << H_MIN_LEN
        | max_len << H_MAX_LEN;
    w.push_word(header);
    w.push_word(id_base);
    w.push_word(epoch_base);
    w.push_word(new_set);
    for p in &chunk[1..] {
        w.push(p.start - base, start_w);
    }
    for p in chunk {
        w.push(p.id.get() - id_base, id_w);
    }
    for p in chunk {
        w.push(p.epoch.get() - epoch_base, epoch_w);
    }
    for p in chunk {
        w.push(u64::from(p.leader), leader_w);
    }
    for set in sets {
        w.push(set.len() as u64 - min_len, len_w);
        for slot in 0..max_len as usize {
            let v = set.as_slice().get(slot).map_or(0, |&id| slot_of(id));
            w.push(v, node_width);
        }
    }
}

fn hash_words(h: &mut Xxh3, words: &[u64]) {
    // Feed the hasher in chunks rather than word by word: far fewer calls for the same bytes.
    let mut buf = [0u8; 512];
    for chunk in words.chunks(buf.len() / 8) {
        for (dst, w) in buf.chunks_exact_mut(8).zip(chunk) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, SynthConfig};
    use proptest::prelude::*;

    /// Checks every observable of the compact table against the plain map it was built from.
    fn assert_matches_reference(map: &TableMap, table: &CompactTable, probes: &[u64]) {
        for &h in probes {
            let want = map.floor_index(h);
            let got = table.lookup(h);
            assert_eq!(got.index, want, "floor of {h:#x}");
            assert_eq!(table.route(&got), map.route(h), "route for {h:#x}");
            assert!(got.start <= h && h <= got.end_inclusive);
        }
    }

    fn arb_map() -> impl Strategy<Value = TableMap> {
        // Random maps: 1..=300 partitions (several blocks, partial last block), starts anywhere
        // in the hash space including the extremes, 1..=7 replicas from up to 40 nodes, ids and
        // epochs over the whole u64 range.
        (1usize..300, 1usize..40, any::<u64>()).prop_map(|(parts, nodes, seed)| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut starts: Vec<u64> = (1..parts)
                .map(|_| match rng.random_range(0..4) {
                    0 => u64::MAX - rng.random_range(0..4u64),
                    1 => rng.random_range(1..1000),
                    _ => rng.random(),
                })
                .collect();
            starts.push(0);
            starts.sort_unstable();
            starts.dedup();
            let node_list: Vec<StorageNode> = (0..nodes as u32)
                .map(|i| StorageNode {
                    id: NodeId::new(i * 7 + 1),
                    addr: format!("10.0.{}.{}:8100", i / 256, i % 256),
                    az: format!("az-{}", i % 3),
                })
                .collect();
            let partitions = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| {
                    let len = rng.random_range(1..=nodes.min(MAX_REPLICAS));
                    let mut picks: Vec<NodeId> = Vec::new();
                    while picks.len() < len {
                        let id = node_list[rng.random_range(0..nodes)].id;
                        if !picks.contains(&id) {
                            picks.push(id);
                        }
                    }
                    Partition {
                        id: PartitionId::new(if rng.random_bool(0.1) {
                            rng.random()
                        } else {
                            i as u64 * 3
                        }),
                        start,
                        epoch: Epoch::new(if rng.random_bool(0.1) {
                            rng.random()
                        } else {
                            rng.random_range(0..50)
                        }),
                        leader: rng.random_range(0..len) as u8,
                        replicas: Replicas::new(&picks).expect("distinct picks"),
                    }
                })
                .collect::<Vec<_>>();
            let mut seen = HashSet::new();
            let partitions = partitions
                .into_iter()
                .map(|mut p| {
                    while !seen.insert(p.id) {
                        p.id = PartitionId::new(p.id.get().wrapping_add(1));
                    }
                    p
                })
                .collect();
            TableMap::new(
                TableName::new("t").expect("valid"),
                TableVersion::new(seed),
                node_list,
                partitions,
            )
            .expect("generated maps are valid")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn lookup_and_range_equal_the_naive_reference(
            map in arb_map(),
            random in proptest::collection::vec(any::<u64>(), 50),
            ranges in proptest::collection::vec((any::<u64>(), any::<u64>()), 20),
        ) {
            let table = CompactTable::new(&map, &mut NodeInterner::default());
            let mut probes = vec![0, 1, u64::MAX, u64::MAX - 1];
            probes.extend(random);
            for p in map.partitions() {
                probes.push(p.start);
                probes.push(p.start.wrapping_sub(1));
                probes.push(p.start.saturating_add(1));
            }
            assert_matches_reference(&map, &table, &probes);

            let mut ranges = ranges;
            ranges.extend(map.partitions().iter().map(|p| (p.start, p.start.saturating_add(1))));
            ranges.push((0, u64::MAX));
            for (a, b) in ranges {
                let want: Vec<PartitionId> = map
                    .partitions()
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| a < b && p.start < b && map.end_inclusive(*i) >= a)
                    .map(|(_, p)| p.id)
                    .collect();
                let got: Vec<PartitionId> = table.range(a, b).map(|e| e.id).collect();
                prop_assert_eq!(got, want, "range [{:#x}, {:#x})", a, b);
            }
            prop_assert_eq!(table.to_map(), map);
            prop_assert!(table.verify());
        }
    }

    #[test]
    fn synthetic_fleet_tables_round_trip_and_share_nodes() {
        let cfg = SynthConfig {
            partitions: 5_000,
            tables: 3,
            ..SynthConfig::default()
        };
        let maps = synth::generate_fleet(&cfg);
        let mut interner = NodeInterner::default();
        let tables: Vec<CompactTable> = maps
            .iter()
            .map(|m| CompactTable::new(m, &mut interner))
            .collect();
        let distinct: HashSet<&str> = maps
            .iter()
            .flat_map(|m| m.nodes().iter().map(|n| n.addr.as_str()))
            .collect();
        assert_eq!(
            interner.len(),
            distinct.len(),
            "one record per distinct node"
        );
        for (map, table) in maps.iter().zip(&tables) {
            assert_eq!(&table.to_map(), map);
            let probes: Vec<u64> = (0..2_000u64)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            assert_matches_reference(map, table, &probes);
        }
        drop(tables);
        assert_eq!(interner.purge(), distinct.len());
        assert!(interner.is_empty());
    }

    #[test]
    fn verify_detects_a_flipped_bit() {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 1_000,
                ..SynthConfig::default()
            },
            0,
        );
        let mut table = CompactTable::new(&map, &mut NodeInterner::default());
        assert!(table.verify());
        let mut data = table.data.to_vec();
        data[10] ^= 1 << 17;
        table.data = data.into_boxed_slice();
        assert!(!table.verify());
    }

    #[test]
    fn compact_is_far_smaller_than_the_plain_map() {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 50_000,
                ..SynthConfig::default()
            },
            0,
        );
        let table = CompactTable::new(&map, &mut NodeInterner::default());
        let per_partition = table.resident_bytes() as f64 / map.partitions().len() as f64;
        // The plain `Partition` is 64 bytes inline before any index; the compact form must be a
        // fraction of that (the real targets live in the bench-map benchmark).
        assert!(per_partition < 20.0, "{per_partition} bytes per partition");
    }
}
