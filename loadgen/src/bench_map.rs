//! `loadgen bench-map`: memory and lookup cost of the compact partition-map encoding, against
//! the naive design and against zstd, all measured in one run.
//!
//! - **Compact**: [`memds_proto::CompactTable`] for every table plus the shared node records.
//! - **Baseline**: the naive design, a `Vec` of plain partition structs per table, each replica
//!   carrying its own owned address and zone strings; lookup is a binary search over it.
//! - **zstd**: the maps' plain records ([`memds_proto::model::TableSpec`]) archived with rkyv
//!   and compressed with zstd level 3 as one blob: what general-purpose compression reaches with
//!   no random access at all.
//!
//! Memory figures are live heap bytes measured by the counting global allocator (allocator
//! overhead included), not estimates. Lookup figures are per-lookup timings over the same random
//! (table, hash) sequence for both designs, interleaved in rounds so machine noise hits both
//! alike; the clock's own cost (measured in the same run) is subtracted from each sample.
//!
//! Writes: single-partition splits of the largest table planned the way the server plans an
//! update (`memds_server::store::plan`: check, validate over the touched range, apply to the
//! persistent tree) and published, each timed; the same split by whole-table rebuild (how
//! updates were applied before) as the baseline in the same run; and a storm, one batch
//! splitting a fifth of the table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use memds_proto::model::{BatchEdit, PartitionSpec, RangeEdit, TableSpec};
use memds_proto::snapshot::SnapshotTable;
use memds_proto::synth::{self, SynthConfig};
use memds_proto::{CompactTable, NodeInterner, TableMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::histogram::median;
use crate::{alloc, histogram};

/// Options of `bench-map`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Total partitions over all tables.
    #[arg(long, default_value_t = 1_000_000)]
    partitions: usize,
    /// Number of tables the partitions are spread over.
    #[arg(long, default_value_t = 1)]
    tables: usize,
    /// Seed of the synthetic maps and of the lookup hashes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Timed lookups per design (split over the rounds).
    #[arg(long, default_value_t = 2_000_000)]
    lookups: usize,
    /// Rounds the lookups are split into, alternating designs.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Single-partition splits timed.
    #[arg(long, default_value_t = 2_000)]
    updates: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `bench-map --json` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    partitions: usize,
    tables: usize,
    nodes: usize,
    seed: u64,
    bytes_per_partition: f64,
    baseline_bytes_per_partition: f64,
    zstd_bytes_per_partition: f64,
    estimated_bytes_per_partition: f64,
    bytes_vs_zstd: f64,
    bytes_vs_baseline: f64,
    lookups: usize,
    lookup_ns_p50: f64,
    lookup_ns_p99: f64,
    baseline_lookup_ns_p50: f64,
    baseline_lookup_ns_p99: f64,
    lookup_vs_baseline_p50: f64,
    batch_lookup_ns: f64,
    baseline_batch_lookup_ns: f64,
    timer_overhead_ns: f64,
    generate_seconds: f64,
    build_seconds: f64,
    /// Single-partition splits of the largest table timed (plan, validate, apply, publish).
    updates: usize,
    update_us_p50: f64,
    update_us_p99: f64,
    /// The baseline: one such split by whole-table rebuild (decode, splice, validate,
    /// re-encode), as updates were applied before, median of three, in seconds.
    rebuild_update_seconds: f64,
    rebuild_vs_update_p50: f64,
    /// Building that table's compact encoding from its map, in the same run.
    table_build_seconds: f64,
    /// One batch splitting a fifth of the table's partitions: splits, seconds, splits per
    /// second.
    storm_splits: usize,
    storm_seconds: f64,
    storm_partitions_per_s: f64,
    /// Verifying every table's checksum once (a scrubbing pass), in seconds, and the bytes it
    /// read.
    scrub_seconds: f64,
    scrub_bytes: u64,
    scrub_ms_per_100_mb: f64,
}

/// The naive design: plain structs, every replica with its own strings.
struct NaiveTable {
    partitions: Vec<NaivePartition>,
}

struct NaivePartition {
    id: u64,
    start: u64,
    epoch: u64,
    leader: u8,
    replicas: Vec<NaiveReplica>,
}

struct NaiveReplica {
    id: u32,
    addr: String,
    az: String,
}

impl NaiveTable {
    fn new(map: &TableMap) -> Self {
        let partitions = map
            .partitions()
            .iter()
            .map(|p| NaivePartition {
                id: p.id.get(),
                start: p.start,
                epoch: p.epoch.get(),
                leader: p.leader,
                replicas: p
                    .replicas
                    .as_slice()
                    .iter()
                    .map(|&r| {
                        let node = map.node(r).expect("validated: replicas are listed");
                        NaiveReplica {
                            id: r.get(),
                            addr: node.addr.clone(),
                            az: node.az.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        Self { partitions }
    }

    fn lookup(&self, hash: u64) -> &NaivePartition {
        let i = self.partitions.partition_point(|p| p.start <= hash) - 1;
        &self.partitions[i]
    }
}

/// Runs the benchmark and prints its report.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.partitions >= 1, "--partitions must be at least 1");
    ensure!(
        (1..=args.partitions).contains(&args.tables),
        "--tables must be between 1 and --partitions"
    );
    ensure!(
        args.rounds >= 1 && args.lookups >= args.rounds,
        "--lookups must be at least --rounds"
    );
    alloc::start();
    let cfg = SynthConfig {
        seed: args.seed,
        tables: args.tables,
        partitions: args.partitions,
        ..SynthConfig::default()
    };

    let t = Instant::now();
    let maps = synth::generate_fleet(&cfg);
    let generate_seconds = t.elapsed().as_secs_f64();
    let n = maps.iter().map(|m| m.partitions().len()).sum::<usize>();
    let nodes = synth::node_pool(&cfg).len();

    let zstd_bytes = zstd_blob_len(&maps)?;

    let before = alloc::live_bytes();
    let t = Instant::now();
    let mut interner = NodeInterner::default();
    let compact: Vec<CompactTable> = maps
        .iter()
        .map(|m| CompactTable::new(m, &mut interner))
        .collect();
    let build_seconds = t.elapsed().as_secs_f64();
    let compact_bytes = alloc::live_bytes() - before;
    let estimated = compact
        .iter()
        .map(CompactTable::resident_bytes)
        .sum::<usize>()
        + interner.resident_bytes();

    let before = alloc::live_bytes();
    let naive: Vec<NaiveTable> = maps.iter().map(NaiveTable::new).collect();
    let naive_bytes = alloc::live_bytes() - before;
    drop(maps);

    let probes = probe_sequence(args, &compact);
    let timer = histogram::timer_overhead_ns();
    let (compact_hist, naive_hist) = time_lookups(args, &probes, &compact, &naive, timer)?;
    let (batch_ns, baseline_batch_ns) = time_batches(&probes, &compact, &naive);
    drop(naive);
    let writes = time_writes(&compact, &mut interner, args.updates, args.seed)?;
    let (scrub_seconds, scrub_bytes) = time_scrub(&compact)?;

    let per = |bytes: f64| bytes / n as f64;
    let report = Report {
        partitions: n,
        tables: args.tables,
        nodes,
        seed: args.seed,
        bytes_per_partition: per(compact_bytes as f64),
        baseline_bytes_per_partition: per(naive_bytes as f64),
        zstd_bytes_per_partition: per(zstd_bytes as f64),
        estimated_bytes_per_partition: per(estimated as f64),
        bytes_vs_zstd: compact_bytes as f64 / zstd_bytes as f64,
        bytes_vs_baseline: compact_bytes as f64 / naive_bytes as f64,
        lookups: compact_hist.len() as usize,
        lookup_ns_p50: compact_hist.value_at_quantile(0.5) as f64,
        lookup_ns_p99: compact_hist.value_at_quantile(0.99) as f64,
        baseline_lookup_ns_p50: naive_hist.value_at_quantile(0.5) as f64,
        baseline_lookup_ns_p99: naive_hist.value_at_quantile(0.99) as f64,
        lookup_vs_baseline_p50: compact_hist.value_at_quantile(0.5) as f64
            / (naive_hist.value_at_quantile(0.5).max(1)) as f64,
        batch_lookup_ns: batch_ns,
        baseline_batch_lookup_ns: baseline_batch_ns,
        timer_overhead_ns: timer,
        generate_seconds,
        build_seconds,
        updates: writes.updates,
        update_us_p50: writes.update_us_p50,
        update_us_p99: writes.update_us_p99,
        rebuild_update_seconds: writes.rebuild_update_seconds,
        rebuild_vs_update_p50: writes.rebuild_update_seconds * 1e6 / writes.update_us_p50.max(1e-9),
        table_build_seconds: writes.table_build_seconds,
        storm_splits: writes.storm_splits,
        storm_seconds: writes.storm_seconds,
        storm_partitions_per_s: writes.storm_splits as f64 / writes.storm_seconds.max(1e-9),
        scrub_seconds,
        scrub_bytes,
        scrub_ms_per_100_mb: scrub_seconds * 1e3 / (scrub_bytes as f64 / 1e8).max(1e-9),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// What the write benchmarks measured.
struct Writes {
    updates: usize,
    update_us_p50: f64,
    update_us_p99: f64,
    rebuild_update_seconds: f64,
    table_build_seconds: f64,
    storm_splits: usize,
    storm_seconds: f64,
}

/// The split of the partition holding `hash` at the middle of its range, as the authority would
/// send it (the left half keeps the id, the right half gets `new_id`, both at the next epoch),
/// if the partition is wide enough to split.
fn split_at(table: &CompactTable, hash: u64, new_id: u64) -> Option<RangeEdit> {
    let e = table.lookup(hash);
    if e.end_inclusive - e.start < 2 {
        return None;
    }
    let mid = e.start + (e.end_inclusive - e.start) / 2;
    let replicas: Vec<u32> = e.replica_ids().map(|id| id.get()).collect();
    let half = |id: u64, start: u64| PartitionSpec {
        id,
        start,
        epoch: e.epoch.get() + 1,
        replicas: replicas.clone(),
        leader: u64::from(e.leader),
    };
    Some(RangeEdit {
        end_inclusive: e.end_inclusive,
        partitions: vec![half(e.id.get(), e.start), half(new_id, mid)],
    })
}

fn batch(table: &CompactTable, ranges: Vec<RangeEdit>) -> BatchEdit {
    BatchEdit {
        table: table.name().as_str().to_owned(),
        base_version: table.version().get(),
        version: table.version().get() + 1,
        nodes: vec![],
        ranges,
    }
}

/// Times writes to the largest table, planned by the server's own rules
/// (`memds_server::store::plan`: check, validate, apply) and published as the writer does (a
/// new table map swapped in for readers), without the log's fsync:
///
/// - `updates` single-partition splits at random hashes, one after the other, each timed;
/// - the baseline, in the same run: the same kind of split done the way updates were done
///   before the tree (decode the whole table, splice, validate the whole map, re-encode),
///   median of three, beside the build of the table's encoding from its map;
/// - a storm: one batch splitting a fifth of the table's partitions, applied in one request.
fn time_writes(
    compact: &[CompactTable],
    interner: &mut NodeInterner,
    updates: usize,
    seed: u64,
) -> anyhow::Result<Writes> {
    use memds_server::store::{Plan, Tables, Write, plan};
    let table = compact
        .iter()
        .max_by_key(|t| t.len())
        .context("no tables")?;
    let name = table.name().as_str().to_owned();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut next_id = u64::MAX / 2;

    let published = arc_swap::ArcSwap::from_pointee({
        let mut t = Tables::new();
        t.insert(name.clone(), std::sync::Arc::new(table.clone()));
        t
    });
    let mut hist = Histogram::<u64>::new(3).context("histogram")?;
    let mut done = 0;
    while done < updates {
        let current = published.load_full();
        let Some(range) = split_at(
            current.get(&name).context("the table")?,
            rng.random(),
            next_id,
        ) else {
            continue;
        };
        next_id += 1;
        let write = Write::Batch(batch(current.get(&name).context("the table")?, vec![range]));
        let t = Instant::now();
        let Plan::Install(next) = plan(&current, &write, interner, u64::MAX)
            .map_err(|e| anyhow::anyhow!("planning a split: {}", e.message))?
        else {
            anyhow::bail!("a split was not installed");
        };
        let mut tables = (*current).clone();
        tables.insert(name.clone(), std::sync::Arc::new(next));
        published.store(std::sync::Arc::new(tables));
        hist.record(t.elapsed().as_nanos() as u64)?;
        drop(current);
        done += 1;
    }
    let after = published.load_full();
    let after = after.get(&name).context("the table")?;
    ensure!(
        after.len() == table.len() + updates,
        "the splits did not add one partition each"
    );

    // The baseline: the whole-table rebuild every update cost before.
    let map = table.to_map();
    let t = Instant::now();
    black_box(CompactTable::new(&map, interner));
    let table_build_seconds = t.elapsed().as_secs_f64();
    let mut rebuilds = Vec::new();
    for k in 1..=3u64 {
        let Some(range) = split_at(table, rng.random(), next_id + k) else {
            continue;
        };
        let t = Instant::now();
        let (name, version, nodes, mut parts) = table.to_map().into_parts();
        let at = parts.partition_point(|p| p.start < range.partitions[0].start);
        let new: Vec<memds_proto::Partition> = range
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_partition(at + i))
            .collect::<Result<_, _>>()?;
        parts.splice(at..=at, new);
        let map = TableMap::new(
            name,
            memds_proto::TableVersion::new(version.get() + 1),
            nodes,
            parts,
        )?;
        black_box(CompactTable::new(&map, interner));
        rebuilds.push(t.elapsed().as_secs_f64());
    }
    drop(map);

    // The storm: a fifth of the partitions split in one batch.
    let mut ranges = Vec::new();
    for e in table.iter() {
        if rng.random_bool(0.2)
            && let Some(r) = split_at(table, e.start, next_id)
        {
            ranges.push(r);
            next_id += 1;
        }
    }
    let storm_splits = ranges.len();
    let mut tables = Tables::new();
    tables.insert(name.clone(), std::sync::Arc::new(table.clone()));
    let write = Write::Batch(batch(table, ranges));
    let t = Instant::now();
    let planned = plan(&tables, &write, interner, u64::MAX)
        .map_err(|e| anyhow::anyhow!("planning the storm: {}", e.message))?;
    let storm_seconds = t.elapsed().as_secs_f64();
    ensure!(
        matches!(planned, Plan::Install(ref t) if t.len() == table.len() + storm_splits),
        "the storm did not add one partition per split"
    );
    Ok(Writes {
        updates,
        update_us_p50: hist.value_at_quantile(0.5) as f64 / 1e3,
        update_us_p99: hist.value_at_quantile(0.99) as f64 / 1e3,
        rebuild_update_seconds: median(&mut rebuilds),
        table_build_seconds,
        storm_splits,
        storm_seconds,
    })
}

/// Times a scrubbing pass (every table's `verify`) three times; answers the median seconds and
/// the bytes a pass reads.
fn time_scrub(compact: &[CompactTable]) -> anyhow::Result<(f64, u64)> {
    let bytes = compact.iter().map(|t| t.verified_bytes() as u64).sum();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        ensure!(
            compact.iter().all(|t| black_box(t).verify()),
            "a freshly built table fails its checksum"
        );
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(&mut times), bytes))
}

/// Size of the plain records of every table, archived with rkyv and zstd-compressed as one blob.
fn zstd_blob_len(maps: &[TableMap]) -> anyhow::Result<usize> {
    let specs: Vec<SnapshotTable> = maps
        .iter()
        .map(|m| SnapshotTable::from(TableSpec::from(m)))
        .collect();
    let raw =
        rkyv::to_bytes::<rkyv::rancor::Error>(&specs).context("archiving the plain records")?;
    drop(specs);
    let blob = zstd::bulk::compress(&raw, memds_proto::snapshot::ZSTD_LEVEL)
        .context("compressing the archive")?;
    Ok(blob.len())
}

/// The (table, hash) pairs both designs look up, in order.
fn probe_sequence(args: &Args, tables: &[CompactTable]) -> Vec<(u32, u64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5EED_1004);
    (0..args.lookups)
        .map(|_| (rng.random_range(0..tables.len()) as u32, rng.random()))
        .collect()
}

fn time_lookups(
    args: &Args,
    probes: &[(u32, u64)],
    compact: &[CompactTable],
    naive: &[NaiveTable],
    timer_ns: f64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut hc = histogram::latency();
    let mut hn = histogram::latency();
    let record = |h: &mut Histogram<u64>, d: Duration| {
        let ns = (d.as_nanos() as f64 - timer_ns).max(1.0) as u64;
        h.saturating_record(ns);
    };
    for round in probes.chunks(probes.len().div_ceil(args.rounds)) {
        for &(t, hash) in round {
            let start = Instant::now();
            let e = compact[t as usize].lookup(hash);
            black_box(e);
            record(&mut hc, start.elapsed());
        }
        for &(t, hash) in round {
            let start = Instant::now();
            let p = naive[t as usize].lookup(hash);
            black_box((p.id, p.start, p.epoch, p.leader, p.replicas.len()));
            record(&mut hn, start.elapsed());
        }
    }
    // The naive structs hold their replicas; keep the fields read so the comparison decodes
    // the same information on both sides.
    black_box(naive.first().map(|t| {
        t.partitions
            .first()
            .map(|p| p.replicas.first().map(|r| (r.id, r.addr.len(), r.az.len())))
    }));
    Ok((hc, hn))
}

/// Throughput of lookups in batches of 256 hashes (the server's batch path), as the median over
/// batches of nanoseconds per lookup: back-to-back lookups overlap in the CPU, so this is the
/// cost a server pays per lookup of a batch, lower than a lone lookup's latency.
fn time_batches(
    probes: &[(u32, u64)],
    compact: &[CompactTable],
    naive: &[NaiveTable],
) -> (f64, f64) {
    const BATCH: usize = 256;
    let mut compact_ns = Vec::new();
    let mut naive_ns = Vec::new();
    let mut hashes = Vec::with_capacity(BATCH);
    for chunk in probes.chunks_exact(BATCH) {
        // One table per batch, as a server answers a batch frame.
        let t = chunk[0].0 as usize;
        hashes.clear();
        hashes.extend(chunk.iter().map(|&(_, h)| h));
        let start = Instant::now();
        for &h in &hashes {
            black_box(compact[t].lookup(h));
        }
        compact_ns.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
        let start = Instant::now();
        for &h in &hashes {
            let p = naive[t].lookup(h);
            black_box((p.id, p.start, p.epoch, p.leader, p.replicas.len()));
        }
        naive_ns.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    (median(&mut compact_ns), median(&mut naive_ns))
}

fn print_table(r: &Report) {
    println!(
        "partitions {} in {} table(s), {} storage nodes (seed {})",
        r.partitions, r.tables, r.nodes, r.seed
    );
    println!(
        "{:<28} {:>14} {:>14} {:>14}",
        "", "compact", "baseline", "zstd blob"
    );
    println!(
        "{:<28} {:>14.2} {:>14.2} {:>14.2}",
        "bytes per partition",
        r.bytes_per_partition,
        r.baseline_bytes_per_partition,
        r.zstd_bytes_per_partition
    );
    println!(
        "{:<28} {:>14.0} {:>14.0} {:>14}",
        "lookup ns p50", r.lookup_ns_p50, r.baseline_lookup_ns_p50, "-"
    );
    println!(
        "{:<28} {:>14.0} {:>14.0} {:>14}",
        "lookup ns p99", r.lookup_ns_p99, r.baseline_lookup_ns_p99, "-"
    );
    println!(
        "compact / zstd = {:.3}, compact / baseline = {:.3}, lookup p50 compact / baseline = {:.2} (timer overhead {:.0} ns subtracted)",
        r.bytes_vs_zstd, r.bytes_vs_baseline, r.lookup_vs_baseline_p50, r.timer_overhead_ns
    );
    println!(
        "{} one-partition splits of the largest table: p50 {:.1} us, p99 {:.1} us; baseline whole-table rebuild {:.3} s ({:.0}x the p50; the build from the map: {:.3} s)",
        r.updates,
        r.update_us_p50,
        r.update_us_p99,
        r.rebuild_update_seconds,
        r.rebuild_vs_update_p50,
        r.table_build_seconds
    );
    println!(
        "storm: {} splits in one batch in {:.2} s, {:.0} partition changes per second",
        r.storm_splits, r.storm_seconds, r.storm_partitions_per_s
    );
    println!(
        "scrubbing pass (verify every table): {:.4} s over {} bytes, {:.1} ms per 100 MB",
        r.scrub_seconds, r.scrub_bytes, r.scrub_ms_per_100_mb
    );
}
