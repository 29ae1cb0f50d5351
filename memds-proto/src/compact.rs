//! The resident encoding: how a server holds a table's partition map in memory.
//!
//! # Goals
//!
//! A fleet holds every partition of every table of a storage service, tens of millions of them,
//! so memory per partition is what sizes the fleet. A lookup must still be a few hundred
//! nanoseconds and must never decompress a whole table, and a change must cost what it
//! changes: a split of one partition of a 10M-partition table re-encodes one block of about 64
//! partitions and the path above it, not the table.
//!
//! # Layout
//!
//! Three facts about real partition maps drive the encoding: starts are sorted, so neighbours
//! are close; a split leaves both children on the parent's replicas, so neighbours mostly share
//! a replica set; and ids and epochs of neighbouring partitions are of similar size. So
//! partitions are bit-packed in **blocks**, each a run of words:
//!
//! | part | bits |
//! |---|---|
//! | word 0: `n` and the field widths (start, id, epoch, leader, set length) | 64 |
//! | word 1: `id_base`, the smallest partition id of the block | 64 |
//! | word 2: `epoch_base`, the smallest epoch of the block | 64 |
//! | word 3: `node_base`, the smallest replica node id of the block, and the node id width | 64 |
//! | `new_set`: bit `i` set where partition `i`'s replica set differs from its predecessor's | n |
//! | `start - block_start` of partitions 1..n (frame of reference) | (n-1) x start_width |
//! | `id - id_base` | n x id_width |
//! | `epoch - epoch_base` | n x epoch_width |
//! | leader index | n x leader_width |
//! | the block's distinct replica sets, in order: length, then `node id - node_base` each | sets x (len_width + max_len x node_width) |
//!
//! Each width is the smallest that holds the block's largest value, so a block pays for its own
//! spread, not the table's. Partition `i` uses set number `popcount(new_set[0..=i]) - 1`.
//! Replicas are node ids relative to the block, not positions in the table's node list, so
//! adding a node to the table re-encodes nothing. Node addresses and zones live once, in
//! [`NodeInfo`] records interned by a [`NodeInterner`] and shared by every table.
//!
//! # A persistent, content-defined tree
//!
//! Blocks are grouped into **runs** (level 2), runs into inner nodes (level 3 and up), up to one
//! root. Where a block, a run or an inner node begins is decided by the content alone: a
//! partition opens a new block when the mix of its start has 6 trailing zero bits (one in 64),
//! a new run at 11 (one block in 32), a new level-`l` node at `11 + 6 (l - 2)`; partition 0
//! opens everything. So:
//!
//! - **Any two servers holding equal maps hold identical trees**, whatever history led there:
//!   the Merkle digests below compare across servers.
//! - **A change re-encodes only what it touches.** An update replaces the partitions of a range
//!   `[from, end]` whose `from` stays a start and whose `end + 1` stays a start, so every block
//!   boundary outside the range stays. The blocks overlapping the range are re-encoded (a block
//!   that grows past a boundary splits there, neighbours that lose their boundary merge); the
//!   run holding them is rebuilt by copying its other blocks' words verbatim; each inner node on
//!   the path is rebuilt with its other children shared. Everything else is shared, by `Arc`,
//!   with the previous version, which readers may still be using: nobody waits.
//!
//! A run holds its blocks' words in one allocation, with the first start, cumulative partition
//! count, word offset and digest of each block. An inner node holds the first start, cumulative
//! count, digest, id bounds and pointer of each child.
//!
//! # Digests (a Merkle tree over the map)
//!
//! Each block's digest is XXH3 over its start, its last hash and its words; a run's is XXH3 over
//! its blocks' digests and counts; an inner node's over its children's. The root's digest is
//! the table's content digest ([`CompactTable::digest`]); the table checksum adds the name,
//! version and node list. Peers compare roots and descend only where digests differ
//! ([`CompactTable::tree_digests`]); the scrubber recomputes every digest
//! ([`CompactTable::verify`]); a write verifies the blocks it reads.
//!
//! # Lookup
//!
//! A floor lookup reads the top bits of the hash in a small index derived from the tree (a
//! `RunIndex`: not persisted, in no digest), which names the run holding the hash, usually at
//! once and otherwise a step or two further; it then searches that run's block starts
//! (interpolation first: starts are hashes), then one block's packed starts, and decodes that
//! one partition: a handful of cache lines, nothing decompressed. A table too small to have
//! parents of runs has no index and descends from the root, searching the starts of each node
//! on the path. The index holds positions, not nodes, so a version shares the previous
//! version's index unless the update changed the nodes above the runs (moved a run boundary).
//!
//! # History
//!
//! Each version remembers the hash ranges and nodes its update changed (a bounded log, shared
//! between versions), so [`CompactTable::delta_since`] can answer "what changed since version
//! V" with just those partitions.

use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::bits::{self, BitWriter};
use crate::model::{
    BatchEdit, Epoch, MAX_REPLICAS, MapError, NodeId, NodeSpec, Partition, PartitionId,
    PartitionSpec, RangeEdit, Replicas, Route, RouteReplica, StorageNode, TableMap, TableName,
    TableVersion, check_node,
};
use crate::wire::{HashRange, TreeDigests, TreeEntry};

const HEADER_WORDS: usize = 4;
/// What a heap allocation costs beyond its payload (glibc's chunk header and rounding), used to
/// account resident bytes honestly.
const ALLOC_OVERHEAD: usize = 16;
/// Trailing zero bits of a start's mix that open a block (one partition in 64).
const BLOCK_BITS: u32 = 6;
/// More bits that open a run of blocks (one block in 32).
const RUN_BITS: u32 = 5;
/// More bits per inner level (one child in 64).
const INNER_BITS: u32 = 6;
/// Versions of changes a table remembers for deltas.
pub const HISTORY_VERSIONS: usize = 1024;
/// Changed ranges a table remembers for deltas, over all remembered versions.
pub const HISTORY_RANGES: usize = 1 << 16;

/// Trailing zero bits needed to open a node of `level` (1: block, 2: run, 3 and up: inner).
fn threshold(level: u32) -> u32 {
    match level {
        0 | 1 => BLOCK_BITS,
        2 => BLOCK_BITS + RUN_BITS,
        l => BLOCK_BITS + RUN_BITS + INNER_BITS * (l - 2),
    }
}

/// SplitMix64's finaliser: spreads structured starts (evenly spaced, say) like random ones.
#[inline]
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a partition starting at `start` opens a node of `level`.
#[inline]
fn opens(start: u64, level: u32) -> bool {
    start == 0 || mix(start).trailing_zeros() >= threshold(level)
}

/// Like [`floor_in`] over the starts of a node whose span is `[first, end]` (`first` is its
/// first start, which the parent already holds), starting from where the value would sit if
/// the starts were evenly spread (hashes are, so the guess is usually one or two entries off),
/// then stepping; a skewed node falls back to a binary search. The guess needs no read of
/// `starts`, so its first read goes straight to the entry that usually answers: one cache miss
/// per level where reading `starts[0]` first costs two whenever they sit on different lines.
#[inline]
fn floor_guess(starts: &[u64], first: u64, end: u64, value: u64) -> usize {
    let n = starts.len();
    if n <= 4 {
        return floor_in(starts, value);
    }
    // A float guess: exact enough for a starting point, and cheaper than a 128-bit division.
    let span = (end - first) as f64 + 1.0;
    let mut i = (((value - first) as f64 / span) * n as f64) as usize;
    i = i.min(n - 1);
    for _ in 0..4 {
        if starts[i] > value {
            if i == 0 {
                break;
            }
            i -= 1;
        } else if i + 1 < n && starts[i + 1] <= value {
            i += 1;
        } else {
            return i;
        }
    }
    floor_in(starts, value)
}

/// The greatest index whose start is at most `value` (0 if none is: callers only ask inside a
/// node's span, whose first start is at most the value).
#[inline]
fn floor_in(starts: &[u64], value: u64) -> usize {
    starts.partition_point(|&s| s <= value).saturating_sub(1)
}

/// A storage node's address and zone, stored once however many partitions and tables use it;
/// the routes made from it share its strings too ([`CompactTable::route`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// `host:port`.
    pub addr: Arc<str>,
    /// Availability zone.
    pub az: Arc<str>,
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
                // allocation, with two counters of its own.
                2 * size_of::<usize>()
                    + size_of::<NodeInfo>()
                    + 2 * size_of::<usize>()
                    + r.addr.len()
                    + 2 * size_of::<usize>()
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

/// A run of blocks (level 2), their words in one allocation.
#[derive(Clone, Debug)]
struct Run {
    /// First start of each block.
    starts: Box<[u64]>,
    /// Partitions in blocks `0..=i`.
    ends: Box<[u32]>,
    /// Word offset of each block in `data`, and the end of the last.
    offsets: Box<[u32]>,
    /// Each block's digest.
    digests: Box<[u64]>,
    /// The blocks' words, then one spare word (reads of a value straddling two words never
    /// need a bounds branch).
    data: Box<[u64]>,
}

/// An inner node (level 3 and up).
#[derive(Clone, Debug)]
struct Inner {
    starts: Box<[u64]>,
    /// Partitions under children `0..=i`.
    ends: Box<[u64]>,
    digests: Box<[u64]>,
    /// Lowest and highest partition id each child may hold (bounds, for the uniqueness check).
    ids: Box<[(u64, u64)]>,
    children: Box<[Arc<Node>]>,
}

#[derive(Clone, Debug)]
enum Node {
    Run(Run),
    Inner(Inner),
}

/// A child as its parent records it.
#[derive(Clone, Debug)]
struct Entry {
    start: u64,
    count: u64,
    digest: u64,
    ids: (u64, u64),
    node: Arc<Node>,
}

/// One version's change, for deltas: a list shared between versions, newest first.
#[derive(Debug)]
struct Change {
    /// The version the change produced.
    version: u64,
    /// The version it was applied to.
    base: u64,
    /// Hash ranges changed (inclusive), sorted.
    ranges: Box<[(u64, u64)]>,
    /// Nodes added or replaced.
    nodes: Box<[NodeId]>,
    /// Versions remembered from here back.
    depth: usize,
    /// Ranges remembered from here back.
    total_ranges: usize,
    prev: Option<Arc<Change>>,
}

/// A lookup index derived from the tree, not persisted and in no digest: for each of `2^bits`
/// buckets of a hash's top bits, the path from the root to the run holding the bucket's first
/// hash (the child's position at each inner level). A lookup follows that path, reading no
/// starts on the way, and steps to the next run of the same parent while the bucket holds a run
/// boundary below the hash, instead of an interpolation search per level. A hash past its
/// parent's last run (a bucket spanning two parents, rare) descends from the root instead.
///
/// The index holds no node: a version shares the previous version's index whenever the update
/// left every node above the runs with the same children starts, which a split does about 2,047
/// times in 2,048; otherwise the bucket array is rebuilt from the tree (a pass over the runs and
/// the buckets, about two buckets per run).
#[derive(Clone, Debug)]
struct RunIndex {
    /// `64 - bits`.
    shift: u32,
    /// Per bucket: the positions of the path, 16 bits per inner level, the root's lowest.
    buckets: Arc<[u64]>,
}

/// One table's partition map in the compact resident encoding (see the module docs).
#[derive(Clone, Debug)]
pub struct CompactTable {
    name: TableName,
    version: TableVersion,
    /// Sorted by id.
    nodes: Arc<[NodeEntry]>,
    nodes_digest: u64,
    root: Arc<Node>,
    /// The root's level: 2 when the root is a run.
    levels: u32,
    len: usize,
    root_digest: u64,
    root_ids: (u64, u64),
    history: Option<Arc<Change>>,
    checksum: u64,
    /// Derived from `root` for lookups: not persisted, not in any digest.
    index: Option<RunIndex>,
}

/// A partition decoded from the compact encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionEntry {
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
    replica_ids: [u32; MAX_REPLICAS],
}

impl PartitionEntry {
    /// How many replicas the partition has.
    pub fn replica_count(&self) -> usize {
        usize::from(self.replica_len)
    }

    /// The replicas' table-scoped node ids, in order.
    pub fn replica_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replica_ids[..self.replica_count()]
            .iter()
            .map(|&id| NodeId::new(id))
    }
}

/// A block built by an update (or a build), before it is placed in a run.
#[derive(Debug)]
struct Built {
    start: u64,
    n: u32,
    digest: u64,
    ids: (u64, u64),
    words: Vec<u64>,
}

/// A block going into a new run: built now, or copied from an old run.
enum BlockItem<'a> {
    New(&'a Built),
    /// Block `i` of a run, with the id bounds its parent records for the whole run.
    Old(&'a Run, usize, (u64, u64)),
}

impl BlockItem<'_> {
    fn start(&self) -> u64 {
        match self {
            BlockItem::New(b) => b.start,
            BlockItem::Old(r, i, _) => r.starts[*i],
        }
    }
}

/// A block header, parsed, with the bit offsets of its sections (absolute in the run's data).
struct Block {
    n: usize,
    start_w: u32,
    id_w: u32,
    epoch_w: u32,
    leader_w: u32,
    len_w: u32,
    min_len: u64,
    node_w: u32,
    node_base: u64,
    id_base: u64,
    epoch_base: u64,
    new_set_off: usize,
    starts_off: usize,
    ids_off: usize,
    epochs_off: usize,
    leaders_off: usize,
    sets_off: usize,
    set_w: usize,
}

// Bit positions of the fields of header word 0.
const H_START_W: u32 = 32; // 7 bits
const H_ID_W: u32 = 39; // 7 bits
const H_EPOCH_W: u32 = 46; // 7 bits
const H_LEADER_W: u32 = 53; // 3 bits
const H_LEN_W: u32 = 56; // 2 bits
const H_MIN_LEN: u32 = 58; // 3 bits
const H_MAX_LEN: u32 = 61; // 3 bits

impl Block {
    /// Parses the header at `word`; `None` if it does not fit in `data` (a damaged copy).
    fn parse(data: &[u64], word: usize) -> Option<Self> {
        let h = *data.get(word)?;
        let field = |at: u32, w: u32| (h >> at) & ((1 << w) - 1);
        let n = (h & 0xFFFF_FFFF) as usize;
        let start_w = field(H_START_W, 7) as u32;
        let id_w = field(H_ID_W, 7) as u32;
        let epoch_w = field(H_EPOCH_W, 7) as u32;
        let leader_w = field(H_LEADER_W, 3) as u32;
        let len_w = field(H_LEN_W, 2) as u32;
        let min_len = field(H_MIN_LEN, 3);
        let max_len = field(H_MAX_LEN, 3) as usize;
        let w3 = *data.get(word + 3)?;
        let node_w = ((w3 >> 32) & 0x7F) as u32;
        if n == 0 || [start_w, id_w, epoch_w, node_w].iter().any(|&w| w > 64) {
            return None;
        }
        let new_set_off = (word + HEADER_WORDS) * 64;
        let starts_off = new_set_off + n;
        let ids_off = starts_off + (n - 1) * start_w as usize;
        let epochs_off = ids_off + n * id_w as usize;
        let leaders_off = epochs_off + n * epoch_w as usize;
        let sets_off = leaders_off + n * leader_w as usize;
        Some(Self {
            n,
            start_w,
            id_w,
            epoch_w,
            leader_w,
            len_w,
            min_len,
            node_w,
            node_base: w3 & 0xFFFF_FFFF,
            id_base: data[word + 1],
            epoch_base: data[word + 2],
            new_set_off,
            starts_off,
            ids_off,
            epochs_off,
            leaders_off,
            sets_off,
            set_w: len_w as usize + max_len * node_w as usize,
        })
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

    /// The id of partition `i`.
    #[inline]
    fn id(&self, data: &[u64], i: usize) -> u64 {
        self.id_base.wrapping_add(bits::get(
            data,
            self.ids_off + i * self.id_w as usize,
            self.id_w,
        ))
    }

    /// Bounds on the ids the block holds, from its header alone.
    fn id_bounds(&self) -> (u64, u64) {
        (
            self.id_base,
            self.id_base.saturating_add(bits::mask(self.id_w)),
        )
    }

    /// Decodes partition `i`, given the block's start and the last hash of the block.
    #[inline]
    fn decode(&self, d: &[u64], base: u64, block_end: u64, i: usize) -> PartitionEntry {
        let start = base.wrapping_add(self.start_offset(d, i));
        let end_inclusive = if i + 1 < self.n {
            base.wrapping_add(self.start_offset(d, i + 1))
                .wrapping_sub(1)
        } else {
            block_end
        };
        let set = bits::count_ones(d, self.new_set_off, i + 1).saturating_sub(1) as usize;
        let set_off = self.sets_off + set * self.set_w;
        let replica_len =
            (self.min_len + bits::get(d, set_off, self.len_w)).min(MAX_REPLICAS as u64) as u8;
        let mut replica_ids = [0u32; MAX_REPLICAS];
        let mut off = set_off + self.len_w as usize;
        for slot in replica_ids.iter_mut().take(usize::from(replica_len)) {
            *slot = self.node_base.wrapping_add(bits::get(d, off, self.node_w)) as u32;
            off += self.node_w as usize;
        }
        PartitionEntry {
            id: PartitionId::new(self.id(d, i)),
            start,
            end_inclusive,
            epoch: Epoch::new(self.epoch_base.wrapping_add(bits::get(
                d,
                self.epochs_off + i * self.epoch_w as usize,
                self.epoch_w,
            ))),
            leader: bits::get(
                d,
                self.leaders_off + i * self.leader_w as usize,
                self.leader_w,
            ) as u8,
            replica_len,
            replica_ids,
        }
    }
}

/// Encodes a block of partitions (sorted, valid) whose last hash is `end`: its words, digest
/// and id bounds.
fn encode_block(chunk: &[Partition], end: u64) -> Built {
    let n = chunk.len();
    let base = chunk[0].start;
    let id_base = chunk.iter().map(|p| p.id.get()).min().unwrap_or(0);
    let id_max = chunk.iter().map(|p| p.id.get()).max().unwrap_or(0);
    let epoch_base = chunk.iter().map(|p| p.epoch.get()).min().unwrap_or(0);
    let start_w = bits::width(chunk[n - 1].start - base);
    let id_w = bits::width(id_max - id_base);
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
    let mut new_set = Vec::with_capacity(n);
    let mut sets: Vec<&Replicas> = Vec::new();
    for (i, p) in chunk.iter().enumerate() {
        let opens_set = i == 0 || p.replicas != chunk[i - 1].replicas;
        new_set.push(opens_set);
        if opens_set {
            sets.push(&p.replicas);
        }
    }
    let min_len = sets.iter().map(|s| s.len()).min().unwrap_or(1) as u64;
    let max_len = sets.iter().map(|s| s.len()).max().unwrap_or(1) as u64;
    let len_w = bits::width(max_len - min_len);
    let node_base = sets
        .iter()
        .flat_map(|s| s.as_slice())
        .map(|id| u64::from(id.get()))
        .min()
        .unwrap_or(0);
    let node_max = sets
        .iter()
        .flat_map(|s| s.as_slice())
        .map(|id| u64::from(id.get()))
        .max()
        .unwrap_or(0);
    let node_w = bits::width(node_max - node_base);

    let header = n as u64
        | u64::from(start_w) << H_START_W
        | u64::from(id_w) << H_ID_W
        | u64::from(epoch_w) << H_EPOCH_W
        | u64::from(leader_w) << H_LEADER_W
        | u64::from(len_w) << H_LEN_W
        | min_len << H_MIN_LEN
        | max_len << H_MAX_LEN;
    let mut w = BitWriter::default();
    w.push_word(header);
    w.push_word(id_base);
    w.push_word(epoch_base);
    w.push_word(node_base | u64::from(node_w) << 32);
    for opened in new_set {
        w.push(u64::from(opened), 1);
    }
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
            let v = set
                .as_slice()
                .get(slot)
                .map_or(0, |&id| u64::from(id.get()) - node_base);
            w.push(v, node_w);
        }
    }
    let words = w.into_words();
    Built {
        start: base,
        n: n as u32,
        digest: block_digest(base, end, &words),
        ids: (id_base, id_max),
        words,
    }
}

fn block_digest(start: u64, end: u64, words: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&start.to_le_bytes());
    h.update(&end.to_le_bytes());
    hash_words(&mut h, words);
    h.digest()
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

/// Digest of a node from its children's digests and cumulative counts.
fn node_digest<C: Copy + Into<u64>>(digests: &[u64], ends: &[C]) -> u64 {
    // One contiguous buffer hashed at once: far cheaper than a streaming update per child.
    let mut buf = Vec::with_capacity(digests.len() * 16);
    for (d, e) in digests.iter().zip(ends) {
        buf.extend_from_slice(&d.to_le_bytes());
        buf.extend_from_slice(&(*e).into().to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

impl Run {
    fn block(&self, i: usize) -> Option<Block> {
        Block::parse(&self.data, *self.offsets.get(i)? as usize)
    }

    fn count(&self) -> u64 {
        self.ends.last().map_or(0, |&e| u64::from(e))
    }

    /// Partitions before block `i`.
    fn before(&self, i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            u64::from(self.ends[i - 1])
        }
    }

    fn words_of(&self, i: usize) -> &[u64] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Builds a run from blocks (new or copied), as its parent's entry.
    fn build(items: &[BlockItem<'_>]) -> Entry {
        let words: usize = items
            .iter()
            .map(|b| match b {
                BlockItem::New(b) => b.words.len(),
                BlockItem::Old(r, i, _) => (r.offsets[i + 1] - r.offsets[*i]) as usize,
            })
            .sum();
        let mut data = Vec::with_capacity(words + 1);
        let mut starts = Vec::with_capacity(items.len());
        let mut ends = Vec::with_capacity(items.len());
        let mut offsets = Vec::with_capacity(items.len() + 1);
        let mut digests = Vec::with_capacity(items.len());
        let mut count = 0u32;
        let mut ids = (u64::MAX, 0u64);
        for item in items {
            offsets.push(data.len() as u32);
            starts.push(item.start());
            let (n, digest, bounds) = match item {
                BlockItem::New(b) => {
                    data.extend_from_slice(&b.words);
                    (b.n, b.digest, b.ids)
                }
                BlockItem::Old(r, i, run_bounds) => {
                    data.extend_from_slice(r.words_of(*i));
                    let n = r.ends[*i] - r.before(*i) as u32;
                    // The run's bounds, tightened by the block's header: still a superset of
                    // the block's ids, and tight where ids are allocated in increasing order.
                    let (lo, hi) = r.block(*i).map_or((0, u64::MAX), |b| b.id_bounds());
                    (
                        n,
                        r.digests[*i],
                        (lo.max(run_bounds.0), hi.min(run_bounds.1)),
                    )
                }
            };
            count += n;
            ends.push(count);
            digests.push(digest);
            ids = (ids.0.min(bounds.0), ids.1.max(bounds.1));
        }
        offsets.push(data.len() as u32);
        data.push(0);
        let digest = node_digest(&digests, &ends);
        Entry {
            start: starts[0],
            count: u64::from(count),
            digest,
            ids,
            node: Arc::new(Node::Run(Run {
                starts: starts.into_boxed_slice(),
                ends: ends.into_boxed_slice(),
                offsets: offsets.into_boxed_slice(),
                digests: digests.into_boxed_slice(),
                data: data.into_boxed_slice(),
            })),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.starts.len() * (8 + 4 + 4 + 8) + 4 + self.data.len() * 8 + 5 * ALLOC_OVERHEAD
    }
}

impl Inner {
    fn build(children: Vec<Entry>) -> Entry {
        let mut starts = Vec::with_capacity(children.len());
        let mut ends = Vec::with_capacity(children.len());
        let mut digests = Vec::with_capacity(children.len());
        let mut ids = Vec::with_capacity(children.len());
        let mut nodes = Vec::with_capacity(children.len());
        let mut count = 0u64;
        let mut bounds = (u64::MAX, 0u64);
        for c in children {
            starts.push(c.start);
            count += c.count;
            ends.push(count);
            digests.push(c.digest);
            ids.push(c.ids);
            bounds = (bounds.0.min(c.ids.0), bounds.1.max(c.ids.1));
            nodes.push(c.node);
        }
        Entry {
            start: starts[0],
            count,
            digest: node_digest(&digests, &ends),
            ids: bounds,
            node: Arc::new(Node::Inner(Inner {
                starts: starts.into_boxed_slice(),
                ends: ends.into_boxed_slice(),
                digests: digests.into_boxed_slice(),
                ids: ids.into_boxed_slice(),
                children: nodes.into_boxed_slice(),
            })),
        }
    }

    fn entry(&self, i: usize) -> Entry {
        Entry {
            start: self.starts[i],
            count: self.ends[i] - if i == 0 { 0 } else { self.ends[i - 1] },
            digest: self.digests[i],
            ids: self.ids[i],
            node: Arc::clone(&self.children[i]),
        }
    }
}

impl RunIndex {
    /// The index of a tree whose root is at `levels`, if it has parents of runs, at most four
    /// inner levels and at most 2^16 children per node (any real table: deeper or wider trees
    /// descend from the root).
    fn build(root: &Arc<Node>, levels: u32) -> Option<Self> {
        /// Every run's path and first start, in start order.
        fn collect(node: &Node, level: u32, path: u64, depth: u32, out: &mut Vec<(u64, u64)>) {
            match node {
                Node::Inner(inner) => {
                    for (i, (child, &start)) in
                        inner.children.iter().zip(&*inner.starts).enumerate()
                    {
                        let path = path | (i as u64) << (16 * depth);
                        if level == 3 {
                            out.push((path, start));
                        } else {
                            collect(child, level - 1, path, depth + 1, out);
                        }
                    }
                }
                Node::Run(_) => {}
            }
        }
        fn fits(node: &Node, level: u32) -> bool {
            match node {
                Node::Inner(inner) => {
                    inner.children.len() <= 1 << 16
                        && (level == 3 || inner.children.iter().all(|c| fits(c, level - 1)))
                }
                Node::Run(_) => false,
            }
        }
        if !(3..=6).contains(&levels) || !fits(root, levels) {
            return None;
        }
        let mut runs = Vec::new();
        collect(root, levels, 0, 0, &mut runs);
        // About two buckets per run: most buckets then hold no run boundary.
        let bits = (runs.len() * 2)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 24);
        let shift = 64 - bits;
        // Bucket `k` holds the last run starting at or before `k << shift`: each run fills the
        // buckets from the previous run's first such bucket up to its own.
        let mut buckets = vec![0u64; 1 << bits];
        let (mut filled, mut previous_run) = (0, 0);
        for (path, start) in runs {
            let first_bucket =
                ((start >> shift) + u64::from(start & !(u64::MAX << shift) != 0)) as usize;
            if first_bucket > filled {
                buckets[filled..first_bucket].fill(previous_run);
                filled = first_bucket;
            }
            previous_run = path;
        }
        buckets[filled..].fill(previous_run);
        Some(Self {
            shift,
            buckets: buckets.into(),
        })
    }

    /// The run holding `hash` in the tree the index was built for (`root`, at `levels`), its
    /// first start and its last hash; `None` when the hash lies past the last run of the
    /// bucket's parent.
    #[inline]
    fn run<'a>(&self, root: &'a Node, levels: u32, hash: u64) -> Option<(&'a Run, u64, u64)> {
        let path = self.buckets[(hash >> self.shift) as usize];
        let (mut node, mut end) = (root, u64::MAX);
        let mut depth = 0;
        loop {
            let Node::Inner(inner) = node else {
                return None;
            };
            let mut i = (path >> (16 * depth) & 0xFFFF) as usize;
            if depth + 3 == levels {
                // A parent of runs: step over the run boundaries in the bucket below the hash.
                while let Some(&s) = inner.starts.get(i + 1) {
                    if s > hash {
                        break;
                    }
                    i += 1;
                }
                let end = match inner.starts.get(i + 1) {
                    Some(&s) => s - 1,
                    None if hash > end => return None,
                    None => end,
                };
                let Node::Run(run) = &*inner.children[i] else {
                    return None;
                };
                return Some((run, inner.starts[i], end));
            }
            if let Some(&s) = inner.starts.get(i + 1) {
                end = s - 1;
            }
            node = &inner.children[i];
            depth += 1;
        }
    }

    /// Heap bytes of the index, allocator overhead included.
    fn heap_bytes(&self) -> usize {
        2 * size_of::<usize>() + self.buckets.len() * size_of::<u64>() + ALLOC_OVERHEAD
    }
}

/// Whether two trees at `level` have the same nodes above the runs: the same children starts at
/// every inner level (runs may differ). Shared subtrees are equal without a look, so an update
/// compares only the path it rebuilt.
fn same_shape(a: &Arc<Node>, b: &Arc<Node>, level: u32) -> bool {
    if Arc::ptr_eq(a, b) || level < 3 {
        return true;
    }
    match (&**a, &**b) {
        (Node::Inner(a), Node::Inner(b)) => {
            a.starts == b.starts
                && a.children
                    .iter()
                    .zip(b.children.iter())
                    .all(|(a, b)| same_shape(a, b, level - 1))
        }
        (Node::Inner(_), Node::Run(_))
        | (Node::Run(_), Node::Inner(_))
        | (Node::Run(_), Node::Run(_)) => false,
    }
}

/// Splits items into groups, a new one at the first item and wherever an item opens a node of
/// `level`.
fn group<T>(items: Vec<T>, start: impl Fn(&T) -> u64, level: u32) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        match groups.last_mut() {
            Some(g) if !opens(start(&item), level) => g.push(item),
            _ => groups.push(vec![item]),
        }
    }
    groups
}

/// Encodes partitions (sorted, valid, the first opening a block) into blocks, the last ending
/// at `end`.
fn encode_blocks(parts: &[Partition], end: u64) -> Vec<Built> {
    let mut cuts: Vec<usize> = (1..parts.len())
        .filter(|&i| opens(parts[i].start, 1))
        .collect();
    cuts.push(parts.len());
    let mut out = Vec::with_capacity(cuts.len());
    let mut from = 0;
    for cut in cuts {
        let block_end = parts.get(cut).map_or(end, |p| p.start - 1);
        out.push(encode_block(&parts[from..cut], block_end));
        from = cut;
    }
    out
}

/// Groups runs (level 2 entries) and the levels above up to a single root: (root, its level).
fn build_up(mut level_entries: Vec<Entry>, mut level: u32) -> (Entry, u32) {
    while level_entries.len() > 1 {
        level += 1;
        level_entries = group(level_entries, |e| e.start, level)
            .into_iter()
            .map(Inner::build)
            .collect();
    }
    let root = level_entries
        .pop()
        .expect("a table has at least one partition");
    collapse(root, level)
}

/// Drops roots with a single child: the tree stops at the first level holding one node.
fn collapse(mut root: Entry, mut level: u32) -> (Entry, u32) {
    while let Node::Inner(inner) = &*root.node {
        if inner.children.len() != 1 {
            break;
        }
        root = inner.entry(0);
        level -= 1;
    }
    (root, level)
}

/// Why an update does not apply to a table (the version rules are the caller's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The update names no range.
    #[error("no ranges given")]
    NoRanges,
    /// A range has no partitions.
    #[error("range {range}: no partitions given")]
    EmptyRange {
        /// The range's position in the update.
        range: usize,
    },
    /// A range starts before the previous one ends.
    #[error(
        "range {range} starts at {from}, not after the previous range's end {previous_end}; ranges must be sorted and disjoint"
    )]
    NotSorted {
        /// The range's position in the update.
        range: usize,
        /// Its first start.
        from: u64,
        /// The previous range's end.
        previous_end: u64,
    },
    /// A range ends before its first partition starts.
    #[error("range {range}: end_inclusive {end} is before the first new start {from}")]
    EndBeforeStart {
        /// The range's position in the update.
        range: usize,
        /// Its first start.
        from: u64,
        /// Its end.
        end: u64,
    },
    /// A new partition starts past its range's end.
    #[error("range {range}: new partition {index} starts at {start}, past end_inclusive {end}")]
    PastEnd {
        /// The range's position in the update.
        range: usize,
        /// The partition's position in the range.
        index: usize,
        /// Its start.
        start: u64,
        /// The range's end.
        end: u64,
    },
    /// A range does not start at an existing partition's start.
    #[error(
        "range {range}: the range must start at an existing partition boundary; {from} is inside partition {id} [{start}, {end}]"
    )]
    NotAStart {
        /// The range's position in the update.
        range: usize,
        /// The range's first start.
        from: u64,
        /// The partition holding it.
        id: PartitionId,
        /// That partition's start.
        start: u64,
        /// That partition's end.
        end: u64,
    },
    /// A range does not end at an existing partition's end.
    #[error(
        "range {range}: the range must end at an existing partition boundary; {at} is inside partition {id} [{start}, {end}]"
    )]
    NotAnEnd {
        /// The range's position in the update.
        range: usize,
        /// The range's end.
        at: u64,
        /// The partition holding it.
        id: PartitionId,
        /// That partition's start.
        start: u64,
        /// That partition's end.
        end: u64,
    },
    /// The update's node list names an id twice. As in a put ([`MapError::DuplicateNodeId`]),
    /// node ids must be unique: an update adds or replaces each node it lists, and two records
    /// of one id would leave which one the table holds to their order.
    #[error("node id {id} is listed twice in the update's nodes; node ids must be unique")]
    DuplicateNodeId {
        /// The repeated id (the lowest, when several repeat).
        id: NodeId,
    },
    /// The resident table fails its digests where the update reads it.
    #[error("the resident table is damaged where the update applies")]
    Damaged,
    /// The result breaks a rule of the map (indexes are positions in the result).
    #[error(transparent)]
    Map(#[from] MapError),
}

/// A position in the tree: a run, a block in it, and what follows.
#[derive(Clone, Copy)]
struct Spot<'a> {
    run: &'a Run,
    block: usize,
    /// The first start after the run (`None` at the end of the table).
    after_run: Option<u64>,
    /// Partitions before the run.
    before_run: u64,
}

impl<'a> Spot<'a> {
    /// The block's last hash.
    fn block_end(&self) -> u64 {
        self.run
            .starts
            .get(self.block + 1)
            .copied()
            .or(self.after_run)
            .map_or(u64::MAX, |s| s - 1)
    }
}

impl CompactTable {
    /// Encodes a validated map, interning its node records.
    pub fn new(map: &TableMap, interner: &mut NodeInterner) -> Self {
        let nodes: Arc<[NodeEntry]> = map
            .nodes()
            .iter()
            .map(|n| NodeEntry {
                id: n.id,
                info: interner.intern(&n.addr, &n.az),
            })
            .collect();
        let blocks = encode_blocks(map.partitions(), u64::MAX);
        let runs: Vec<Entry> = group(blocks, |b| b.start, 2)
            .iter()
            .map(|g| Run::build(&g.iter().map(BlockItem::New).collect::<Vec<_>>()))
            .collect();
        let (root, levels) = build_up(runs, 2);
        Self::assemble(
            map.name().clone(),
            map.version(),
            nodes,
            root,
            levels,
            None,
            None,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        name: TableName,
        version: TableVersion,
        nodes: Arc<[NodeEntry]>,
        root: Entry,
        levels: u32,
        history: Option<Arc<Change>>,
        known_digest: Option<u64>,
        previous: Option<&Self>,
    ) -> Self {
        let index = match previous {
            Some(p) if p.levels == levels && same_shape(&p.root, &root.node, levels) => {
                p.index.clone()
            }
            _ => RunIndex::build(&root.node, levels),
        };
        let mut table = Self {
            name,
            version,
            nodes_digest: known_digest.unwrap_or_else(|| nodes_digest(&nodes)),
            nodes,
            len: root.count as usize,
            root: root.node,
            levels,
            root_digest: root.digest,
            root_ids: root.ids,
            history,
            checksum: 0,
            index,
        };
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

    /// The block holding `hash`.
    #[inline]
    fn spot(&self, hash: u64) -> Spot<'_> {
        let mut node = &*self.root;
        let mut after = None;
        let mut before = 0u64;
        loop {
            match node {
                Node::Inner(inner) => {
                    let i = floor_in(&inner.starts, hash);
                    if let Some(&s) = inner.starts.get(i + 1) {
                        after = Some(s);
                    }
                    if i > 0 {
                        before += inner.ends[i - 1];
                    }
                    node = &inner.children[i];
                }
                Node::Run(run) => {
                    return Spot {
                        run,
                        block: floor_in(&run.starts, hash),
                        after_run: after,
                        before_run: before,
                    };
                }
            }
        }
    }

    /// The block holding partition `index` and the index within it.
    fn spot_at(&self, mut index: u64) -> Option<(Spot<'_>, usize)> {
        if index >= self.len as u64 {
            return None;
        }
        let mut node = &*self.root;
        let mut after = None;
        let mut before = 0u64;
        loop {
            match node {
                Node::Inner(inner) => {
                    let i = inner.ends.partition_point(|&e| e <= index);
                    let skipped = if i == 0 { 0 } else { inner.ends[i - 1] };
                    index -= skipped;
                    before += skipped;
                    if let Some(&s) = inner.starts.get(i + 1) {
                        after = Some(s);
                    }
                    node = inner.children.get(i)?;
                }
                Node::Run(run) => {
                    let b = run.ends.partition_point(|&e| u64::from(e) <= index);
                    let within = index - run.before(b);
                    let spot = Spot {
                        run,
                        block: b,
                        after_run: after,
                        before_run: before,
                    };
                    return (b < run.starts.len()).then_some((spot, within as usize));
                }
            }
        }
    }

    /// The partition holding `hash` and its index.
    fn locate(&self, hash: u64) -> (PartitionEntry, usize) {
        let spot = self.spot(hash);
        let run = spot.run;
        let base = run.starts[spot.block];
        let block = run.block(spot.block).expect("a verified block parses");
        let i = block.floor(&run.data, hash - base);
        (
            block.decode(&run.data, base, spot.block_end(), i),
            (spot.before_run + run.before(spot.block)) as usize + i,
        )
    }

    /// The index (in start order) of the partition holding `hash`.
    pub fn floor_index(&self, hash: u64) -> usize {
        let spot = self.spot(hash);
        let Some(block) = spot.run.block(spot.block) else {
            return 0;
        };
        let i = block.floor(&spot.run.data, hash - spot.run.starts[spot.block]);
        (spot.before_run + spot.run.before(spot.block)) as usize + i
    }

    /// The partition holding `hash`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> PartitionEntry {
        let (run, first, end) = self
            .index
            .as_ref()
            .and_then(|index| index.run(&self.root, self.levels, hash))
            .unwrap_or_else(|| self.descend(hash));
        let b = floor_guess(&run.starts, first, end, hash);
        let block_end = run.starts.get(b + 1).map_or(end, |&s| s - 1);
        let base = run.starts[b];
        let block =
            Block::parse(&run.data, run.offsets[b] as usize).expect("a verified block parses");
        let i = block.floor(&run.data, hash - base);
        block.decode(&run.data, base, block_end, i)
    }

    /// The run holding `hash`, its first start and its last hash, found from the root: the
    /// descent of `spot` without counting partitions, for tables without a [`RunIndex`].
    fn descend(&self, hash: u64) -> (&Run, u64, u64) {
        let mut node = &*self.root;
        // The span of `node`: each parent passes down its child's first start and last hash.
        let mut first = 0;
        let mut end = u64::MAX;
        loop {
            match node {
                Node::Inner(inner) => {
                    let i = floor_guess(&inner.starts, first, end, hash);
                    first = inner.starts[i];
                    if let Some(&s) = inner.starts.get(i + 1) {
                        end = s - 1;
                    }
                    node = &inner.children[i];
                }
                Node::Run(run) => return (run, first, end),
            }
        }
    }

    /// The partition at `index` (in start order), if there is one.
    pub fn get(&self, index: usize) -> Option<PartitionEntry> {
        let (spot, i) = self.spot_at(index as u64)?;
        let block = spot.run.block(spot.block)?;
        (i < block.n).then(|| {
            block.decode(
                &spot.run.data,
                spot.run.starts[spot.block],
                spot.block_end(),
                i,
            )
        })
    }

    /// The partitions overlapping the hash range `[from, to)`, in start order.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = PartitionEntry> + '_ {
        let first = if from < to {
            Some(self.spot(from))
        } else {
            None
        };
        Partitions::from_spot(self, first, from).take_while(move |p| p.start < to)
    }

    /// Every partition, in start order.
    pub fn iter(&self) -> impl Iterator<Item = PartitionEntry> + '_ {
        Partitions::from_spot(self, Some(self.spot(0)), 0)
    }

    /// A node's record by its table-scoped id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &*self.nodes[i].info)
    }

    /// A partition's replicas: table-scoped node id and shared record, in order (a replica
    /// whose node the table does not list, which only a damaged copy can hold, is skipped).
    pub fn replicas<'a>(
        &'a self,
        entry: &'a PartitionEntry,
    ) -> impl Iterator<Item = (NodeId, &'a NodeInfo)> + 'a {
        entry
            .replica_ids()
            .filter_map(|id| self.node(id).map(|info| (id, info)))
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
                    addr: Arc::clone(&info.addr),
                    az: Arc::clone(&info.az),
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
        let partitions = self.iter().map(|e| to_partition(&e)).collect();
        // Built from a valid map, whose entries come back in start order with the same ids,
        // nodes and replica sets: valid by construction, so not checked again (at millions of
        // partitions the checks cost more than the decoding).
        TableMap::from_valid_parts(self.name.clone(), self.version, nodes, partitions)
    }

    /// Heap and inline bytes this table holds, allocator overhead included. Node records are
    /// shared across tables and accounted by their [`NodeInterner`]; blocks shared with other
    /// versions of the table are counted in each.
    pub fn resident_bytes(&self) -> usize {
        fn node_bytes(node: &Node) -> usize {
            2 * size_of::<usize>()
                + size_of::<Node>()
                + ALLOC_OVERHEAD
                + match node {
                    Node::Run(r) => r.heap_bytes(),
                    Node::Inner(n) => {
                        n.starts.len() * (8 + 8 + 8 + 16 + size_of::<Arc<Node>>())
                            + 5 * ALLOC_OVERHEAD
                            + n.children.iter().map(|c| node_bytes(c)).sum::<usize>()
                    }
                }
        }
        size_of::<Self>()
            + self.name.as_str().len()
            + ALLOC_OVERHEAD
            + 2 * size_of::<usize>()
            + self.nodes.len() * size_of::<NodeEntry>()
            + ALLOC_OVERHEAD
            + node_bytes(&self.root)
            + self.index.as_ref().map_or(0, RunIndex::heap_bytes)
    }

    /// How many storage nodes the table lists.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The listed nodes, sorted by id, as plain records.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        self.nodes.iter().map(node_spec).collect()
    }

    /// A digest of the node list (ids, addresses, zones): equal lists have equal digests, so a
    /// client can tell whether its copy of the list is current.
    pub fn nodes_digest(&self) -> u64 {
        self.nodes_digest
    }

    /// The checksum of the table: its name, version, node list and content digest. The
    /// encoding is canonical, so two tables built from equal maps, whatever their history, have
    /// equal checksums.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The table's content digest: the root of its Merkle tree (equal partitions, equal digest).
    pub fn digest(&self) -> u64 {
        self.root_digest
    }

    /// The root's level: 2 when the root is a run of blocks, one more per inner level.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    fn compute_checksum(&self) -> u64 {
        let mut h = Xxh3::new();
        h.update(self.name.as_str().as_bytes());
        h.update(&self.version.get().to_le_bytes());
        h.update(&(self.len as u64).to_le_bytes());
        h.update(&self.nodes_digest.to_le_bytes());
        h.update(&self.root_digest.to_le_bytes());
        h.digest()
    }
}

fn nodes_digest(nodes: &[NodeEntry]) -> u64 {
    let mut h = Xxh3::new();
    for n in nodes {
        h.update(&n.id.get().to_le_bytes());
        h.update(n.info.addr.as_bytes());
        h.update(&[0]);
        h.update(n.info.az.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}

fn node_spec(n: &NodeEntry) -> NodeSpec {
    NodeSpec {
        id: n.id.get(),
        addr: n.info.addr.to_string(),
        az: n.info.az.to_string(),
    }
}

fn to_partition(e: &PartitionEntry) -> Partition {
    let ids: Vec<NodeId> = e.replica_ids().collect();
    Partition {
        id: e.id,
        start: e.start,
        epoch: e.epoch,
        // A decoded set is one that was valid when encoded; a damaged one degrades to its
        // first replica rather than panicking (scrubbing reports the damage).
        replicas: Replicas::new(&ids)
            .or_else(|_| Replicas::new(&ids[..1.min(ids.len())]))
            .unwrap_or_else(|_| Replicas::new(&[NodeId::new(0)]).expect("one replica")),
        leader: e.leader,
    }
}

fn to_spec(e: &PartitionEntry) -> PartitionSpec {
    PartitionSpec {
        id: e.id.get(),
        start: e.start,
        epoch: e.epoch.get(),
        replicas: e.replica_ids().map(|id| id.get()).collect(),
        leader: u64::from(e.leader),
    }
}

/// Walks partitions in start order from a block, block by block.
struct Partitions<'a> {
    table: &'a CompactTable,
    spot: Option<Spot<'a>>,
    block: Option<Block>,
    i: usize,
}

impl<'a> Partitions<'a> {
    fn from_spot(table: &'a CompactTable, spot: Option<Spot<'a>>, from: u64) -> Self {
        let mut it = Self {
            table,
            spot,
            block: None,
            i: 0,
        };
        if let Some(s) = spot {
            it.block = s.run.block(s.block);
            if let Some(b) = &it.block {
                it.i = b.floor(&s.run.data, from.saturating_sub(s.run.starts[s.block]));
            }
        }
        it
    }
}

impl Iterator for Partitions<'_> {
    type Item = PartitionEntry;

    fn next(&mut self) -> Option<PartitionEntry> {
        loop {
            let spot = self.spot?;
            let Some(block) = &self.block else {
                self.spot = None;
                return None;
            };
            if self.i < block.n {
                let e = block.decode(
                    &spot.run.data,
                    spot.run.starts[spot.block],
                    spot.block_end(),
                    self.i,
                );
                self.i += 1;
                return Some(e);
            }
            // The next block: in this run, or the first of the next run.
            self.i = 0;
            if spot.block + 1 < spot.run.starts.len() {
                let next = Spot {
                    block: spot.block + 1,
                    ..spot
                };
                self.block = next.run.block(next.block);
                self.spot = Some(next);
            } else if let Some(after) = spot.after_run {
                let next = self.table.spot(after);
                self.block = next.run.block(next.block);
                self.spot = Some(next);
            } else {
                self.spot = None;
            }
        }
    }
}

/// A window of the tree being rebuilt: the hash span `[a, b]` of the old nodes it replaces, and
/// the new nodes of the same span.
struct Win<T> {
    a: u64,
    b: u64,
    items: Vec<T>,
}

/// A node of the tree found by a search, with its span and what its parent records of it.
struct Found<'a> {
    start: u64,
    end: u64,
    ids: (u64, u64),
    node: &'a Arc<Node>,
}

/// Merges sorted spans that overlap (adjacent ones stay apart).
fn merge_spans(spans: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl CompactTable {
    /// Checks the rules an update breaks whatever table and version it meets: it names no range,
    /// a range with no partitions, or a node id twice. [`CompactTable::apply`] checks them
    /// first, before anything (the interner included) is changed; a server checks them before
    /// its version rules, so such an update is refused even as a retry.
    pub fn check_update(update: &BatchEdit) -> Result<(), EditError> {
        if update.ranges.is_empty() {
            return Err(EditError::NoRanges);
        }
        if let Some(range) = update.ranges.iter().position(|r| r.partitions.is_empty()) {
            return Err(EditError::EmptyRange { range });
        }
        let mut ids: Vec<u32> = update.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        match ids.windows(2).find(|w| w[0] == w[1]) {
            Some(pair) => Err(EditError::DuplicateNodeId {
                id: NodeId::new(pair[0]),
            }),
            None => Ok(()),
        }
    }

    /// Applies a batch of range replacements, giving the table at `update.version` (the version
    /// rules are the caller's: this checks the ranges and the result's rules over the touched
    /// ranges and their neighbours, with the errors [`TableMap::new`] gives, indexes being
    /// positions in the result). Only the blocks the ranges overlap are re-encoded, and the
    /// path above them; everything else is shared with `self`.
    pub fn apply(
        &self,
        update: &BatchEdit,
        interner: &mut NodeInterner,
    ) -> Result<CompactTable, EditError> {
        Self::check_update(update)?;
        let nodes = self.merged_nodes(&update.nodes, interner)?;
        let known = |id: NodeId| nodes.binary_search_by_key(&id, |n| n.id).is_ok();

        // The ranges: shape, alignment with the current partitions, and each new partition.
        let mut spans = Vec::with_capacity(update.ranges.len());
        let mut news: Vec<Vec<Partition>> = Vec::with_capacity(update.ranges.len());
        // (result index, old first index, old last index) of each range.
        let mut places = Vec::with_capacity(update.ranges.len());
        let mut previous_end: Option<u64> = None;
        for (r, range) in update.ranges.iter().enumerate() {
            let first = range
                .partitions
                .first()
                .ok_or(EditError::EmptyRange { range: r })?;
            let (from, end) = (first.start, range.end_inclusive);
            if let Some(previous_end) = previous_end.filter(|&p| from <= p) {
                return Err(EditError::NotSorted {
                    range: r,
                    from,
                    previous_end,
                });
            }
            if end < from {
                return Err(EditError::EndBeforeStart {
                    range: r,
                    from,
                    end,
                });
            }
            spans.push((from, end));
            previous_end = Some(end);
        }
        // What the checks below read must be intact: the blocks of every range and the nodes
        // above them, each verified once.
        if !self.verify_spans(&spans) {
            return Err(EditError::Damaged);
        }
        let mut shift: i64 = 0;
        for (r, range) in update.ranges.iter().enumerate() {
            let (from, end) = spans[r];
            if let Some((index, p)) = range
                .partitions
                .iter()
                .enumerate()
                .find(|(_, p)| p.start > end)
            {
                return Err(EditError::PastEnd {
                    range: r,
                    index,
                    start: p.start,
                    end,
                });
            }
            let (at, first_old) = self.locate(from);
            if at.start != from {
                return Err(EditError::NotAStart {
                    range: r,
                    from,
                    id: at.id,
                    start: at.start,
                    end: at.end_inclusive,
                });
            }
            let (last, last_old) = self.locate(end);
            if last.end_inclusive != end {
                return Err(EditError::NotAnEnd {
                    range: r,
                    at: end,
                    id: last.id,
                    start: last.start,
                    end: last.end_inclusive,
                });
            }
            let index = (first_old as i64 + shift) as usize;
            let mut parts = Vec::with_capacity(range.partitions.len());
            for (k, spec) in range.partitions.iter().enumerate() {
                let p = spec.to_partition(index + k)?;
                if let Some(prev) = parts.last().map(|q: &Partition| q.start)
                    && p.start <= prev
                {
                    return Err(MapError::StartNotIncreasing {
                        index: index + k,
                        start: p.start,
                        previous: prev,
                    }
                    .into());
                }
                if let Some(&node) = p.replicas.as_slice().iter().find(|&&n| !known(n)) {
                    return Err(MapError::UnknownReplica {
                        index: index + k,
                        node,
                    }
                    .into());
                }
                parts.push(p);
            }
            shift += parts.len() as i64 - (last_old - first_old + 1) as i64;
            places.push((index, first_old, last_old));
            news.push(parts);
        }

        // Level 1: re-encode the blocks the ranges overlap.
        let windows = merge_spans(spans.iter().map(|&(from, end)| {
            let (s, e) = (self.spot(from), self.spot(end));
            (s.run.starts[s.block], e.block_end())
        }));
        let mut removed: HashSet<u64> = HashSet::new();
        let mut block_windows = Vec::with_capacity(windows.len());
        let mut next_range = 0;
        for (a, b) in windows {
            let old = self.decode_span(a, b)?;
            let mut parts = Vec::with_capacity(old.len() + 2);
            let mut old_iter = old.into_iter().peekable();
            while next_range < spans.len() && spans[next_range].0 <= b {
                let (from, end) = spans[next_range];
                while let Some(p) = old_iter.next_if(|p| p.start < from) {
                    parts.push(p);
                }
                while let Some(p) = old_iter.next_if(|p| p.start <= end) {
                    removed.insert(p.id.get());
                }
                parts.extend_from_slice(&news[next_range]);
                next_range += 1;
            }
            parts.extend(old_iter);
            block_windows.push(Win {
                a,
                b,
                items: encode_blocks(&parts, b),
            });
        }
        self.check_ids(&news, &places, &removed)?;

        // Level 2: rebuild the runs holding those blocks, copying their other blocks.
        let mut windows = self.widen(2, &block_windows);
        let mut run_windows = Vec::with_capacity(windows.len());
        let mut w1 = block_windows.iter().peekable();
        for (a, b) in windows.drain(..) {
            let mut items: Vec<BlockItem<'_>> = Vec::new();
            for found in self.find(2, a, b) {
                let Node::Run(run) = &**found.node else {
                    return Err(EditError::Damaged);
                };
                for (i, &s) in run.starts.iter().enumerate() {
                    while w1.peek().is_some_and(|w| w.b < s) {
                        w1.next();
                    }
                    match w1.peek() {
                        Some(w) if w.a <= s => {
                            if w.a == s {
                                items.extend(w.items.iter().map(BlockItem::New));
                            }
                        }
                        _ => items.push(BlockItem::Old(run, i, found.ids)),
                    }
                }
            }
            let entries = group(items, BlockItem::start, 2)
                .iter()
                .map(|g| Run::build(g))
                .collect();
            run_windows.push(Win {
                a,
                b,
                items: entries,
            });
        }

        // Levels 3 and up: rebuild the inner nodes on the paths, sharing their other children.
        let mut level = 2;
        let mut below = run_windows;
        while level < self.levels {
            level += 1;
            let spans = self.widen(level, &below);
            let mut next = Vec::with_capacity(spans.len());
            let mut wb = below.into_iter().peekable();
            for (a, b) in spans {
                let mut items: Vec<Entry> = Vec::new();
                for found in self.find(level, a, b) {
                    let Node::Inner(inner) = &**found.node else {
                        return Err(EditError::Damaged);
                    };
                    for (i, &s) in inner.starts.iter().enumerate() {
                        while wb.peek().is_some_and(|w| w.b < s) {
                            wb.next();
                        }
                        match wb.peek_mut() {
                            Some(w) if w.a <= s => {
                                if w.a == s {
                                    items.append(&mut w.items);
                                }
                            }
                            _ => items.push(inner.entry(i)),
                        }
                    }
                }
                let entries = group(items, |e| e.start, level)
                    .into_iter()
                    .map(Inner::build)
                    .collect();
                next.push(Win {
                    a,
                    b,
                    items: entries,
                });
            }
            below = next;
        }
        let top = below.into_iter().flat_map(|w| w.items).collect();
        let (root, levels) = build_up(top, self.levels);
        let history = self.next_history(update, &spans);
        // The node list is shared with this version when the update adds none.
        let known_digest = Arc::ptr_eq(&nodes, &self.nodes).then_some(self.nodes_digest);
        Ok(Self::assemble(
            self.name.clone(),
            TableVersion::new(update.version),
            nodes,
            root,
            levels,
            history,
            known_digest,
            Some(self),
        ))
    }

    /// The node list with `add` added or replacing listed nodes of the same id.
    fn merged_nodes(
        &self,
        add: &[NodeSpec],
        interner: &mut NodeInterner,
    ) -> Result<Arc<[NodeEntry]>, MapError> {
        if add.is_empty() {
            return Ok(Arc::clone(&self.nodes));
        }
        let mut nodes: Vec<NodeEntry> = self.nodes.to_vec();
        for spec in add {
            let node = StorageNode::from(spec.clone());
            check_node(&node)?;
            let entry = NodeEntry {
                id: node.id,
                info: interner.intern(&node.addr, &node.az),
            };
            match nodes.binary_search_by_key(&node.id, |n| n.id) {
                Ok(i) => nodes[i] = entry,
                Err(i) => nodes.insert(i, entry),
            }
        }
        Ok(nodes.into())
    }

    /// Every partition of the blocks in `[a, b]` (block-aligned; `apply` verified their digests
    /// before planning).
    fn decode_span(&self, a: u64, b: u64) -> Result<Vec<Partition>, EditError> {
        let mut out = Vec::new();
        let mut spot = self.spot(a);
        loop {
            let run = spot.run;
            let start = run.starts[spot.block];
            if start > b {
                break;
            }
            let end = spot.block_end();
            let block = run.block(spot.block).ok_or(EditError::Damaged)?;
            for i in 0..block.n {
                let e = block.decode(&run.data, start, end, i);
                let ids: Vec<NodeId> = e.replica_ids().collect();
                out.push(Partition {
                    id: e.id,
                    start: e.start,
                    epoch: e.epoch,
                    replicas: Replicas::new(&ids).map_err(|_| EditError::Damaged)?,
                    leader: e.leader,
                });
            }
            if end == u64::MAX {
                break;
            }
            spot = if spot.block + 1 < run.starts.len() {
                Spot {
                    block: spot.block + 1,
                    ..spot
                }
            } else {
                self.spot(end + 1)
            };
        }
        Ok(out)
    }

    /// Checks that no new partition id is used twice in the result: among the new partitions,
    /// and against the partitions the update keeps (found through the id bounds of the tree).
    fn check_ids(
        &self,
        news: &[Vec<Partition>],
        places: &[(usize, usize, usize)],
        removed: &HashSet<u64>,
    ) -> Result<(), EditError> {
        // The result index of a kept partition at old index `old`.
        let result_index = |old: usize| {
            let mut index = old as i64;
            for (k, &(_, first_old, last_old)) in places.iter().enumerate() {
                if first_old < old {
                    index += news[k].len() as i64 - (last_old - first_old + 1) as i64;
                }
            }
            index as usize
        };
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (parts, &(index, _, _)) in news.iter().zip(places) {
            for (k, p) in parts.iter().enumerate() {
                let id = p.id.get();
                let at = index + k;
                if let Some(&first_index) = seen.get(&id) {
                    return Err(MapError::DuplicatePartitionId {
                        index: at,
                        id: p.id,
                        first_index,
                    }
                    .into());
                }
                seen.insert(id, at);
                if removed.contains(&id) {
                    continue;
                }
                if let Some(old) = self.find_id(id) {
                    let other = result_index(old);
                    return Err(MapError::DuplicatePartitionId {
                        index: at.max(other),
                        id: p.id,
                        first_index: at.min(other),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The index of the partition with this id, searching only subtrees whose id bounds hold it.
    fn find_id(&self, id: u64) -> Option<usize> {
        fn search(node: &Node, id: u64, before: u64) -> Option<u64> {
            match node {
                Node::Inner(inner) => (0..inner.children.len()).find_map(|i| {
                    let (lo, hi) = inner.ids[i];
                    if id < lo || id > hi {
                        return None;
                    }
                    let skipped = if i == 0 { 0 } else { inner.ends[i - 1] };
                    search(&inner.children[i], id, before + skipped)
                }),
                Node::Run(run) => (0..run.starts.len()).find_map(|b| {
                    let block = run.block(b)?;
                    let (lo, hi) = block.id_bounds();
                    if id < lo || id > hi {
                        return None;
                    }
                    (0..block.n)
                        .find(|&i| block.id(&run.data, i) == id)
                        .map(|i| before + run.before(b) + i as u64)
                }),
            }
        }
        if id < self.root_ids.0 || id > self.root_ids.1 {
            return None;
        }
        search(&self.root, id, 0).map(|i| i as usize)
    }

    /// The spans of the nodes of `level` holding each window's ends, overlapping ones merged.
    fn widen<T>(&self, level: u32, windows: &[Win<T>]) -> Vec<(u64, u64)> {
        merge_spans(windows.iter().map(|w| {
            let first = self.find(level, w.a, w.a);
            let last = self.find(level, w.b, w.b);
            (
                first.first().map_or(w.a, |f| f.start),
                last.last().map_or(w.b, |f| f.end),
            )
        }))
    }

    /// The nodes of `level` (2 and up) overlapping `[a, b]`, in start order.
    fn find(&self, level: u32, a: u64, b: u64) -> Vec<Found<'_>> {
        #[allow(clippy::too_many_arguments)]
        fn walk<'a>(
            node: &'a Arc<Node>,
            node_level: u32,
            start: u64,
            end: u64,
            ids: (u64, u64),
            level: u32,
            (a, b): (u64, u64),
            out: &mut Vec<Found<'a>>,
        ) {
            if node_level <= level {
                out.push(Found {
                    start,
                    end,
                    ids,
                    node,
                });
                return;
            }
            let Node::Inner(inner) = &**node else {
                return;
            };
            let first = floor_in(&inner.starts, a.max(start));
            for i in first..inner.starts.len() {
                let s = inner.starts[i];
                if s > b {
                    break;
                }
                let e = inner.starts.get(i + 1).map_or(end, |&n| n - 1);
                walk(
                    &inner.children[i],
                    node_level - 1,
                    s,
                    e,
                    inner.ids[i],
                    level,
                    (a, b),
                    out,
                );
            }
        }
        let mut out = Vec::new();
        walk(
            &self.root,
            self.levels,
            0,
            u64::MAX,
            self.root_ids,
            level.max(2),
            (a, b),
            &mut out,
        );
        out
    }
}

impl CompactTable {
    /// The history after an update changing `spans`: this change in front of the remembered
    /// ones, trimmed to [`HISTORY_VERSIONS`] and [`HISTORY_RANGES`] now and then (so trimming
    /// costs O(1) per update on average).
    fn next_history(&self, update: &BatchEdit, spans: &[(u64, u64)]) -> Option<Arc<Change>> {
        if spans.len() > HISTORY_RANGES {
            return None;
        }
        let prev = self.history.clone();
        let (depth, total) = prev.as_ref().map_or((0, 0), |c| (c.depth, c.total_ranges));
        let mut change = Change {
            version: update.version,
            base: self.version.get(),
            ranges: spans.into(),
            nodes: update.nodes.iter().map(|n| NodeId::new(n.id)).collect(),
            depth: depth + 1,
            total_ranges: total + spans.len(),
            prev,
        };
        if change.depth > 2 * HISTORY_VERSIONS || change.total_ranges > 2 * HISTORY_RANGES {
            // Keep the newest changes within the limits, rebuilt from the oldest kept.
            let mut kept: Vec<&Change> = Vec::new();
            let (mut versions, mut ranges) = (1usize, change.ranges.len());
            let mut at = change.prev.as_deref();
            while let Some(c) = at {
                if versions + 1 > HISTORY_VERSIONS || ranges + c.ranges.len() > HISTORY_RANGES {
                    break;
                }
                versions += 1;
                ranges += c.ranges.len();
                kept.push(c);
                at = c.prev.as_deref();
            }
            let mut rebuilt: Option<Arc<Change>> = None;
            for c in kept.iter().rev() {
                let (d, t) = rebuilt
                    .as_ref()
                    .map_or((0, 0), |r| (r.depth, r.total_ranges));
                rebuilt = Some(Arc::new(Change {
                    version: c.version,
                    base: c.base,
                    ranges: c.ranges.clone(),
                    nodes: c.nodes.clone(),
                    depth: d + 1,
                    total_ranges: t + c.ranges.len(),
                    prev: rebuilt,
                }));
            }
            let (d, t) = rebuilt
                .as_ref()
                .map_or((0, 0), |r| (r.depth, r.total_ranges));
            change.depth = d + 1;
            change.total_ranges = t + change.ranges.len();
            change.prev = rebuilt;
        }
        Some(Arc::new(change))
    }

    /// What changed since version `since`, as the update that turns the table at `since` into
    /// this one: the current partitions of every range changed since (ranges changed by
    /// several versions merged), and the nodes added or replaced. `None` when the history does
    /// not reach back to `since` (a put-table since, more than [`HISTORY_VERSIONS`] changes ago,
    /// or before the last checkpoint a restart recovered from: replaying the log after it
    /// rebuilds the history of what it holds), or when the
    /// delta would hold more than an eighth of the table (the snapshot is then the better
    /// answer). Applying the delta to the table at `since` gives this table exactly: a range
    /// changed by any update since is replaced whole, and partitions outside every such range
    /// are the same in both versions.
    pub fn delta_since(&self, since: u64) -> Option<BatchEdit> {
        if since >= self.version.get() {
            return None;
        }
        let mut spans = Vec::new();
        let mut node_ids = Vec::new();
        let mut at = self.history.as_deref();
        loop {
            let c = at?;
            if c.version <= since {
                return None;
            }
            spans.extend_from_slice(&c.ranges);
            node_ids.extend_from_slice(&c.nodes);
            if c.base == since {
                break;
            }
            if c.base < since {
                return None;
            }
            at = c.prev.as_deref();
        }
        spans.sort_unstable();
        let ranges: Vec<HashRange> = spans
            .into_iter()
            .map(|(from, end_inclusive)| HashRange {
                from,
                end_inclusive,
            })
            .collect();
        let mut delta = self.partitions_covering(&ranges, (self.len / 8).max(1024))?;
        delta.base_version = since;
        node_ids.sort_unstable();
        node_ids.dedup();
        delta.nodes = node_ids
            .into_iter()
            .filter_map(|id| {
                self.nodes
                    .binary_search_by_key(&id, |n| n.id)
                    .ok()
                    .map(|i| node_spec(&self.nodes[i]))
            })
            .collect();
        Some(delta)
    }

    /// The current partitions covering each range (widened to partition boundaries, ranges
    /// that then overlap merged), with the specs of the nodes they use, as an update with
    /// `base_version` 0 (peers pull the blocks that differ with it).
    pub fn ranges_update(&self, ranges: &[HashRange]) -> BatchEdit {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable_by_key(|r| (r.from, r.end_inclusive));
        let mut update = self
            .partitions_covering(&sorted, usize::MAX)
            .expect("no bound");
        let mut ids: Vec<u32> = update
            .ranges
            .iter()
            .flat_map(|r| r.partitions.iter().flat_map(|p| p.replicas.iter().copied()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        update.nodes = ids
            .into_iter()
            .filter_map(|id| {
                self.nodes
                    .binary_search_by_key(&NodeId::new(id), |n| n.id)
                    .ok()
                    .map(|i| node_spec(&self.nodes[i]))
            })
            .collect();
        update
    }

    /// The partitions covering sorted ranges, widened to partition boundaries and merged; `None`
    /// past `limit` partitions.
    fn partitions_covering(&self, ranges: &[HashRange], limit: usize) -> Option<BatchEdit> {
        let widened = merge_spans(
            ranges
                .iter()
                .filter(|r| r.from <= r.end_inclusive)
                .map(|r| {
                    (
                        self.lookup(r.from).start,
                        self.lookup(r.end_inclusive).end_inclusive,
                    )
                }),
        );
        let mut out = Vec::with_capacity(widened.len());
        let mut total = 0usize;
        for (a, b) in widened {
            let mut partitions = Vec::new();
            for e in Partitions::from_spot(self, Some(self.spot(a)), a) {
                if e.start > b {
                    break;
                }
                partitions.push(to_spec(&e));
                total += 1;
                if total > limit {
                    return None;
                }
                if e.end_inclusive == u64::MAX {
                    break;
                }
            }
            out.push(RangeEdit {
                end_inclusive: b,
                partitions,
            });
        }
        Some(BatchEdit {
            table: self.name.as_str().into(),
            base_version: 0,
            version: self.version.get(),
            nodes: Vec::new(),
            ranges: out,
        })
    }

    /// Whether the table already holds exactly what `update` writes: every range's partitions
    /// and every node (an update retried at the version it gave).
    pub fn holds(&self, update: &BatchEdit) -> bool {
        update.nodes.iter().all(|n| {
            self.node(NodeId::new(n.id))
                .is_some_and(|info| *info.addr == n.addr && *info.az == n.az)
        }) && update.ranges.iter().all(|r| {
            let Some(first) = r.partitions.first() else {
                return false;
            };
            if first.start > r.end_inclusive
                || self.lookup(first.start).start != first.start
                || self.lookup(r.end_inclusive).end_inclusive != r.end_inclusive
            {
                return false;
            }
            let mut have = Partitions::from_spot(self, Some(self.spot(first.start)), first.start)
                .take_while(|e| e.start <= r.end_inclusive);
            r.partitions
                .iter()
                .all(|want| have.next().is_some_and(|e| to_spec(&e) == *want))
                && have.next().is_none()
        })
    }

    /// The digests of the tree nodes at `level` (1: blocks, 2: runs, up to [`Self::levels`])
    /// overlapping `[from, end_inclusive]`, at most `limit` of them (`truncated` if more).
    pub fn tree_digests(
        &self,
        level: u32,
        from: u64,
        end_inclusive: u64,
        limit: usize,
    ) -> TreeDigests {
        let mut out = TreeDigests {
            version: self.version.get(),
            levels: self.levels,
            root: self.root_digest,
            entries: Vec::new(),
            truncated: false,
        };
        if level == 0 || level > self.levels || from > end_inclusive {
            return out;
        }
        if level == self.levels {
            out.entries.push(TreeEntry {
                start: 0,
                end_inclusive: u64::MAX,
                count: self.len as u64,
                digest: self.root_digest,
            });
            return out;
        }
        // The nodes of the level above hold each node's digest and count.
        for parent in self.find(level + 1, from, end_inclusive) {
            let (starts, digests, counts): (&[u64], &[u64], Vec<u64>) = match &**parent.node {
                Node::Run(r) => (
                    &r.starts,
                    &r.digests,
                    (0..r.starts.len())
                        .map(|i| u64::from(r.ends[i]) - r.before(i))
                        .collect(),
                ),
                Node::Inner(n) => (
                    &n.starts,
                    &n.digests,
                    (0..n.starts.len())
                        .map(|i| n.ends[i] - if i == 0 { 0 } else { n.ends[i - 1] })
                        .collect(),
                ),
            };
            for i in 0..starts.len() {
                let end = starts.get(i + 1).map_or(parent.end, |&s| s - 1);
                if end < from || starts[i] > end_inclusive {
                    continue;
                }
                if out.entries.len() == limit {
                    out.truncated = true;
                    return out;
                }
                out.entries.push(TreeEntry {
                    start: starts[i],
                    end_inclusive: end,
                    count: counts[i],
                    digest: digests[i],
                });
            }
        }
        out
    }

    /// Recomputes every digest of the tree (every block from its words, every node from its
    /// children's records), the node list's and the checksum, and compares each with the one
    /// recorded: false means the resident copy is damaged.
    pub fn verify(&self) -> bool {
        nodes_digest(&self.nodes) == self.nodes_digest && self.verify_spans(&[(0, u64::MAX)])
    }

    /// Like [`Self::verify`] for the blocks overlapping `[from, end_inclusive]` and the nodes on
    /// the path to them (the node list aside): what a write reads before planning from the
    /// table.
    pub fn verify_range(&self, from: u64, end_inclusive: u64) -> bool {
        self.verify_spans(&[(from, end_inclusive)])
    }

    /// Verifies the blocks overlapping any of the sorted, disjoint `spans` and the nodes above
    /// them, each once.
    fn verify_spans(&self, spans: &[(u64, u64)]) -> bool {
        fn check(
            node: &Node,
            start: u64,
            end: u64,
            digest: u64,
            count: u64,
            outside: &impl Fn(u64, u64) -> bool,
        ) -> bool {
            match node {
                Node::Run(r) => {
                    let n = r.starts.len();
                    if n == 0
                        || r.ends.len() != n
                        || r.digests.len() != n
                        || r.offsets.len() != n + 1
                        || r.starts[0] != start
                        || r.count() != count
                        || node_digest(&r.digests, &r.ends) != digest
                    {
                        return false;
                    }
                    (0..n).all(|i| {
                        let s = r.starts[i];
                        let e = r.starts.get(i + 1).map_or(end, |&x| x.wrapping_sub(1));
                        if outside(s, e) {
                            return true;
                        }
                        let Some(words) =
                            r.data.get(r.offsets[i] as usize..r.offsets[i + 1] as usize)
                        else {
                            return false;
                        };
                        block_digest(s, e, words) == r.digests[i]
                            && r.block(i)
                                .is_some_and(|b| b.n as u64 == u64::from(r.ends[i]) - r.before(i))
                    })
                }
                Node::Inner(inner) => {
                    let n = inner.children.len();
                    if n == 0
                        || inner.starts.len() != n
                        || inner.ends.len() != n
                        || inner.digests.len() != n
                        || inner.starts[0] != start
                        || inner.ends[n - 1] != count
                        || node_digest(&inner.digests, &inner.ends) != digest
                    {
                        return false;
                    }
                    (0..n).all(|i| {
                        let s = inner.starts[i];
                        let e = inner.starts.get(i + 1).map_or(end, |&x| x.wrapping_sub(1));
                        if outside(s, e) {
                            return true;
                        }
                        let c = inner.ends[i] - if i == 0 { 0 } else { inner.ends[i - 1] };
                        check(&inner.children[i], s, e, inner.digests[i], c, outside)
                    })
                }
            }
        }
        let outside = |s: u64, e: u64| {
            let k = spans.partition_point(|sp| sp.1 < s);
            k == spans.len() || spans[k].0 > e
        };
        self.compute_checksum() == self.checksum
            && check(
                &self.root,
                0,
                u64::MAX,
                self.root_digest,
                self.len as u64,
                &outside,
            )
    }

    /// Bytes [`CompactTable::verify`] reads: what a scrub of this table costs.
    pub fn verified_bytes(&self) -> usize {
        fn bytes(node: &Node) -> usize {
            match node {
                Node::Run(r) => r.heap_bytes(),
                Node::Inner(n) => {
                    n.starts.len() * 24 + n.children.iter().map(|c| bytes(c)).sum::<usize>()
                }
            }
        }
        bytes(&self.root)
    }

    /// A copy with one bit of the packed partition data flipped (`bit` modulo the data's
    /// length), as a memory fault would leave it: for tests of the scrubbing that must catch it
    /// (the server's `scrub-damage` failpoint uses it too). Digests are left as they were.
    #[doc(hidden)]
    pub fn damaged_copy(&self, bit: usize) -> Self {
        fn total(node: &Node) -> usize {
            match node {
                Node::Run(r) => (r.data.len() - 1) * 64,
                Node::Inner(n) => n.children.iter().map(|c| total(c)).sum(),
            }
        }
        fn damage(node: &Node, bit: &mut usize) -> Option<Node> {
            match node {
                Node::Run(r) => {
                    let bits = (r.data.len() - 1) * 64;
                    if *bit >= bits {
                        *bit -= bits;
                        return None;
                    }
                    let mut copy = r.clone();
                    copy.data[*bit / 64] ^= 1 << (*bit % 64);
                    Some(Node::Run(copy))
                }
                Node::Inner(n) => n.children.iter().enumerate().find_map(|(i, c)| {
                    let damaged = damage(c, bit)?;
                    let mut copy = n.clone();
                    let mut children = copy.children.to_vec();
                    children[i] = Arc::new(damaged);
                    copy.children = children.into_boxed_slice();
                    Some(Node::Inner(copy))
                }),
            }
        }
        let mut copy = self.clone();
        let bits = total(&self.root);
        if bits > 0 {
            let mut at = bit % bits;
            if let Some(root) = damage(&self.root, &mut at) {
                copy.root = Arc::new(root);
                copy.index = RunIndex::build(&copy.root, copy.levels);
            }
        }
        copy
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
            assert_eq!(table.floor_index(h), want, "floor of {h:#x}");
            assert_eq!(got.start, map.partitions()[want].start, "floor of {h:#x}");
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

    /// A random batch of changes to `map` (splits, merges, replica moves, id changes), as the
    /// authority would send them, and the map they give (built the slow, fully validated way).
    fn random_batch(map: &TableMap, seed: u64, ranges: usize) -> (BatchEdit, TableMap) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let parts = map.partitions();
        let mut next_id = parts.iter().map(|p| p.id.get()).max().unwrap_or(0) + 1;
        let mut picks: Vec<usize> = (0..ranges.min(parts.len()))
            .map(|_| rng.random_range(0..parts.len()))
            .collect();
        picks.sort_unstable();
        picks.dedup();
        let mut out_ranges = Vec::new();
        let mut result: Vec<Partition> = Vec::new();
        let mut at = 0usize;
        let mut last_end: Option<usize> = None;
        for &i in &picks {
            if last_end.is_some_and(|e| i <= e) {
                continue;
            }
            let span = rng.random_range(1..=3usize).min(parts.len() - i);
            let last = i + span - 1;
            let end = map.end_inclusive(last);
            result.extend_from_slice(&parts[at..i]);
            let mut new = Vec::new();
            match rng.random_range(0..4) {
                // Split the first partition of the range (if it is wide enough), keep the rest.
                0 if end - parts[i].start >= 2 && span == 1 => {
                    let p = parts[i];
                    let mid = p.start + (end - p.start) / 2 + 1;
                    new.push(Partition {
                        epoch: Epoch::new(p.epoch.get() + 1),
                        ..p
                    });
                    new.push(Partition {
                        id: PartitionId::new(next_id),
                        start: mid,
                        epoch: Epoch::new(p.epoch.get() + 1),
                        ..p
                    });
                    next_id += 1;
                }
                // Merge the range into its first partition.
                1 => new.push(Partition {
                    epoch: Epoch::new(parts[i].epoch.get() + 7),
                    ..parts[i]
                }),
                // Move replicas: the range's partitions get the replicas of a random other one.
                2 => {
                    let donor = parts[rng.random_range(0..parts.len())];
                    for p in &parts[i..=last] {
                        new.push(Partition {
                            replicas: donor.replicas,
                            leader: 0,
                            ..*p
                        });
                    }
                }
                // Fresh ids.
                _ => {
                    for p in &parts[i..=last] {
                        new.push(Partition {
                            id: PartitionId::new(next_id),
                            ..*p
                        });
                        next_id += 1;
                    }
                }
            }
            out_ranges.push(RangeEdit {
                end_inclusive: end,
                partitions: new
                    .iter()
                    .map(|p| PartitionSpec {
                        id: p.id.get(),
                        start: p.start,
                        epoch: p.epoch.get(),
                        replicas: p.replicas.as_slice().iter().map(|r| r.get()).collect(),
                        leader: u64::from(p.leader),
                    })
                    .collect(),
            });
            result.extend(new);
            at = last + 1;
            last_end = Some(last);
        }
        result.extend_from_slice(&parts[at..]);
        let version = map.version().get() + 1;
        let want = TableMap::new(
            map.name().clone(),
            TableVersion::new(version),
            map.nodes().to_vec(),
            result,
        )
        .expect("the changes keep the map valid");
        let update = BatchEdit {
            table: map.name().as_str().into(),
            base_version: map.version().get(),
            version,
            nodes: vec![],
            ranges: out_ranges,
        };
        (update, want)
    }

    /// The tree digests of every level, top to bottom.
    fn all_digests(t: &CompactTable) -> Vec<TreeDigests> {
        (1..=t.levels())
            .map(|l| t.tree_digests(l, 0, u64::MAX, usize::MAX))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn incremental_updates_equal_a_rebuild_and_deltas_replay_them(
            parts in 1usize..6_000,
            seeds in proptest::collection::vec(any::<u64>(), 1..6),
            ranges in 1usize..40,
        ) {
            let map = synth::generate_table(&SynthConfig { partitions: parts, ..SynthConfig::default() }, 0);
            let mut interner = NodeInterner::default();
            let first = CompactTable::new(&map, &mut interner);
            let mut table = first.clone();
            let mut current = map;
            for seed in seeds {
                let (update, want) = random_batch(&current, seed, ranges);
                let next = table.apply(&update, &mut interner).expect("a valid batch applies");
                let rebuilt = CompactTable::new(&want, &mut interner);
                prop_assert!(next.verify());
                prop_assert_eq!(next.to_map(), want.clone());
                prop_assert_eq!(next.checksum(), rebuilt.checksum(), "canonical: same tree as a rebuild");
                prop_assert_eq!(next.levels(), rebuilt.levels());
                prop_assert_eq!(all_digests(&next), all_digests(&rebuilt));
                prop_assert!(next.holds(&update));
                // A delta from every earlier version replays to the same table.
                let delta = next.delta_since(table.version().get()).expect("history reaches back");
                let replayed = table.apply(&delta, &mut interner).expect("the delta applies");
                prop_assert_eq!(replayed.checksum(), next.checksum());
                let delta = next.delta_since(first.version().get()).expect("history reaches back");
                if !delta.ranges.is_empty() {
                    let replayed = first.apply(&delta, &mut interner).expect("the delta applies");
                    prop_assert_eq!(replayed.checksum(), next.checksum());
                }
                let probes: Vec<u64> = (0..200u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
                assert_matches_reference(&want, &next, &probes);
                table = next;
                current = want;
            }
        }
    }

    #[test]
    fn the_run_index_follows_updates_and_batches() {
        // Enough partitions for several parents of runs, so lookups go through the index.
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 300_000,
                ..SynthConfig::default()
            },
            0,
        );
        let mut interner = NodeInterner::default();
        let mut table = CompactTable::new(&map, &mut interner);
        assert!(table.levels() >= 4, "{} levels", table.levels());
        assert!(table.index.is_some());
        let mut current = map;
        let (mut shared, mut rebuilt_buckets) = (0, 0);
        for step in 0..10u64 {
            // One-range edits mostly keep every run boundary (the buckets are shared); batches
            // of thousands of ranges move some (the buckets are rebuilt).
            let ranges = if step % 2 == 0 { 1 } else { 3_000 };
            let (update, want) = random_batch(&current, step, ranges);
            let next = table
                .apply(&update, &mut interner)
                .expect("a valid batch applies");
            let rebuilt = CompactTable::new(&want, &mut interner);
            let (got, fresh) = (
                next.index.as_ref().expect("an index"),
                rebuilt.index.as_ref().expect("an index"),
            );
            assert_eq!(got.shift, fresh.shift);
            assert_eq!(got.buckets, fresh.buckets, "step {step}");
            let old = table.index.as_ref().expect("an index");
            if Arc::ptr_eq(&old.buckets, &got.buckets) {
                shared += 1;
            } else {
                rebuilt_buckets += 1;
            }
            // Probes at every run boundary and every bucket boundary, each side.
            let mut probes: Vec<u64> = next
                .tree_digests(2, 0, u64::MAX, usize::MAX)
                .entries
                .iter()
                .map(|e| e.start)
                .chain((0..got.buckets.len() as u64).map(|k| k << got.shift))
                .flat_map(|s| [s, s.wrapping_sub(1), s.saturating_add(1)])
                .collect();
            probes.extend((0..500u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step));
            assert_matches_reference(&want, &next, &probes);
            table = next;
            current = want;
        }
        assert!(
            shared > 0 && rebuilt_buckets > 0,
            "{shared} shared, {rebuilt_buckets} rebuilt"
        );
    }

    #[test]
    fn a_split_touches_one_block_and_the_path() {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 100_000,
                ..SynthConfig::default()
            },
            0,
        );
        let mut interner = NodeInterner::default();
        let table = CompactTable::new(&map, &mut interner);
        assert!(table.levels() >= 3, "{} levels", table.levels());
        let update = BatchEdit::from(synth::split_update(&map, 50_000, 1 << 50));
        let next = table.apply(&update, &mut interner).expect("applies");
        // Blocks: all but the touched one (or two, if the split opened a block) are shared.
        let before = table.tree_digests(1, 0, u64::MAX, usize::MAX).entries;
        let after = next.tree_digests(1, 0, u64::MAX, usize::MAX).entries;
        let old: HashSet<(u64, u64)> = before.iter().map(|e| (e.start, e.digest)).collect();
        let changed = after
            .iter()
            .filter(|e| !old.contains(&(e.start, e.digest)))
            .count();
        assert!((1..=2).contains(&changed), "{changed} blocks changed");
        // Runs: one changed.
        let before = table.tree_digests(2, 0, u64::MAX, usize::MAX).entries;
        let after = next.tree_digests(2, 0, u64::MAX, usize::MAX).entries;
        let old: HashSet<(u64, u64)> = before.iter().map(|e| (e.start, e.digest)).collect();
        assert_eq!(
            after
                .iter()
                .filter(|e| !old.contains(&(e.start, e.digest)))
                .count(),
            1
        );
        let delta = next
            .delta_since(table.version().get())
            .expect("one version back");
        assert_eq!(delta.ranges.len(), 1);
        assert_eq!(delta.ranges[0].partitions.len(), 2);
        assert_eq!(
            next.delta_since(table.version().get() - 1),
            None,
            "before the history"
        );
    }

    #[test]
    fn update_errors_are_typed_and_change_nothing() {
        let map = synth::generate_table(
            &SynthConfig {
                partitions: 1_000,
                ..SynthConfig::default()
            },
            0,
        );
        let mut interner = NodeInterner::default();
        let table = CompactTable::new(&map, &mut interner);
        let good = BatchEdit::from(synth::split_update(&map, 10, 1 << 50));
        let mut bad = good.clone();
        bad.ranges[0].end_inclusive -= 1;
        assert!(matches!(
            table.apply(&bad, &mut interner),
            Err(EditError::NotAnEnd { .. })
        ));
        let mut bad = good.clone();
        bad.ranges[0].partitions[0].start += 1;
        assert!(matches!(
            table.apply(&bad, &mut interner),
            Err(EditError::NotAStart { .. })
        ));
        let mut bad = good.clone();
        bad.ranges[0].partitions[1].id = map.partitions()[500].id.get();
        let err = table.apply(&bad, &mut interner).expect_err("duplicate id");
        assert_eq!(
            err,
            EditError::Map(MapError::DuplicatePartitionId {
                index: 500 + 1,
                id: map.partitions()[500].id,
                first_index: 11
            })
        );
        let mut bad = good.clone();
        bad.ranges[0].partitions[1].replicas[0] = 999_999;
        assert!(matches!(
            table.apply(&bad, &mut interner),
            Err(EditError::Map(MapError::UnknownReplica { index: 11, .. }))
        ));
        let mut bad = good.clone();
        bad.ranges[0].partitions[1].start = bad.ranges[0].partitions[0].start;
        assert!(matches!(
            table.apply(&bad, &mut interner),
            Err(EditError::Map(MapError::StartNotIncreasing {
                index: 11,
                ..
            }))
        ));
        let mut bad = good.clone();
        bad.ranges.push(bad.ranges[0].clone());
        assert!(matches!(
            table.apply(&bad, &mut interner),
            Err(EditError::NotSorted { range: 1, .. })
        ));
        // A node id listed twice, as a put refuses it: whether the records agree or not, and
        // whether the id is new to the table or already in it.
        let known = table.node_specs()[0].clone();
        let fresh = NodeSpec {
            id: 999_999,
            addr: "10.9.9.9:7000".into(),
            az: "az-9".into(),
        };
        let moved = NodeSpec {
            addr: "10.8.8.8:7000".into(),
            ..fresh.clone()
        };
        let interned = interner.len();
        for (nodes, id) in [
            (vec![fresh.clone(), known.clone(), fresh.clone()], fresh.id),
            (vec![fresh.clone(), moved], fresh.id),
            (vec![known.clone(), fresh.clone(), known.clone()], known.id),
        ] {
            let mut bad = good.clone();
            bad.nodes = nodes;
            let err = table
                .apply(&bad, &mut interner)
                .expect_err("repeated node id");
            assert_eq!(
                err,
                EditError::DuplicateNodeId {
                    id: NodeId::new(id)
                }
            );
            assert!(err.to_string().contains(&format!("node id {id} ")), "{err}");
            assert_eq!(CompactTable::check_update(&bad), Err(err));
        }
        assert_eq!(
            interner.len(),
            interned,
            "a refused update interned nothing"
        );
        let mut distinct = good.clone();
        distinct.nodes = vec![known, fresh];
        assert!(table.apply(&distinct, &mut interner).is_ok());
        // A damaged block where the update reads is refused, not spliced in.
        let damaged = table.damaged_copy(64 * 5 + 3);
        assert!(!damaged.verify());
        let first_run_update = BatchEdit::from(synth::split_update(&map, 0, 1 << 50));
        assert_eq!(
            damaged
                .apply(&first_run_update, &mut interner)
                .map(|t| t.version()),
            Err(EditError::Damaged)
        );
        assert!(table.apply(&good, &mut interner).is_ok());
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
        let table = CompactTable::new(&map, &mut NodeInterner::default());
        assert!(table.verify());
        for bit in [0, 17, 64 * 10 + 17, 99_999] {
            let damaged = table.damaged_copy(bit);
            assert!(!damaged.verify(), "bit {bit}");
            assert!(damaged.verify_range(0, u64::MAX) == damaged.verify());
        }
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
