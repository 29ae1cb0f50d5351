//! `loadgen bench-fleet`: what replication between peers costs, measured on real servers
//! embedded in this process (each on its own runtime, reached over QUIC on loopback).
//!
//! Three figures:
//!
//! - **Write to all.** Three peers hold one table of `--write-partitions` partitions. `--writes`
//!   single-partition splits ([`synth::split_update`]) are sent to server 0 one at a time; for
//!   each, the time from sending it until BOTH other servers hold the new version, found by
//!   asking each of them, in a tight loop, for a lookup at that version
//!   ([`Client::lookup_at_least`], as a router) until it no longer answers `behind`
//!   (`--poll summary` reads their summaries instead, which, unlike a `behind` answer, does not
//!   make them start a catch-up round). The next write is sent once both hold the last one.
//!   Percentiles come from an HDR histogram. The splits are of distinct partitions of the
//!   initial map, so each one's update is the one `split_update` makes from that map with its
//!   base and new versions moved to the current ones (the partition and its range are untouched
//!   by the earlier splits). What carries a write is
//!   whatever the fleet does first: the forward from server 0, or an anti-entropy pull that a
//!   `behind` answer asks for; the pulls counted meanwhile are reported
//!   (`write_phase_tables_pulled`).
//! - **New server readiness**, per size in `--ready-partitions`. Two peers (A and B, peers of
//!   each other only) hold one table of N partitions: it is put to A and the run waits until B
//!   holds it (and both are ready). Then a third, empty server C starts with A and B as its
//!   peers (they are not told about it: it finds them), and the time from just before its start
//!   until its `GET /ready` answers 200 is `ready_seconds`. `bytes_pulled` is the delta of the
//!   process-wide counter `memds_anti_entropy_bytes_pulled_total` (read from this process's
//!   Prometheus recorder, which every embedded server shares) from just before C starts until it
//!   is ready. A and B hold the same version by then and have settled (B may have pulled the
//!   table besides receiving A's forward: the run waits until every pull whose bytes were counted
//!   has been counted as a pulled table too, and nothing moved for two anti-entropy periods), so
//!   only C's pulls move it (`tables_pulled`, from the tables counter, says how many tables
//!   moved: 1 when all is well). What moved from A to B on the first run is reported too
//!   (`put_phase_*`: forwards sent and failed, tables pulled, from the same counters).
//!   `snapshot_bytes` is the size of the table's compressed snapshot as the admin sent it, for
//!   comparison. C's table is then checked: its
//!   `summary` must list the table at the version and digest A holds (`new_server_holds_table`).
//!   Each run starts fresh servers; figures are the median of `--runs` runs, except for sizes of
//!   at least `--single-run-from` partitions, which run once (a 10M run takes about 40 s, and
//!   the default must stay under three minutes on two cores). C asks its peers in address order,
//!   and the ports are random, so it pulls from A or from B: when B pulled the table from A
//!   during the put, A holds the encoded get-table answer already, and B builds it when C asks
//!   (about 0.4 s of CPU at 1M partitions), which shows in `serving_cpu_seconds_runs` and makes
//!   the runs' times bimodal.
//!
//! - **Delta sync**, at `--delta-partitions` (the smallest readiness size unless told; 0
//!   skips it). Two servers, A and B, hold one table; the bench writes every change to both (as
//!   an authority writing to every server does: they are not peers of each other, so nothing
//!   else moves between them). A third, C, has A and B as peers, which do not know it: nothing
//!   is forwarded to C, it learns everything by its own anti-entropy, every 10 ms (so the time
//!   measured is the pull's, not the wait for a round). C first takes the table whole
//!   (`snapshot_bytes`, `snapshot_sync_seconds`, from its start). Then one split is written to
//!   A and B, and C catches up by their delta (`delta_sync_bytes`, `delta_sync_seconds`). Then
//!   another split arrives as a put of the whole table (the split map, one version up), which
//!   leaves A and B no history of recent changes to answer a delta from, as a restart does, and
//!   C catches up by a Merkle descent of the trees (`merkle_sync_bytes`,
//!   `merkle_sync_seconds`). Bytes are the delta of the process-wide
//!   `memds_anti_entropy_bytes_pulled_total` (only C pulls): every answer C read to pull, as
//!   framed on the wire. Times run from the first acknowledgement of the write by A or B until
//!   C's summary lists the new version. `delta_sync_pulls` and `merkle_sync_pulls` name the
//!   kinds of pulls counted meanwhile (`memds_anti_entropy_pulls_total`), and
//!   `delta_sync_holds_table` says whether C held A's version and checksum after each.
//!
//! CPU: the servers' runtime threads are named, so their CPU time is read per thread from
//! `/proc/self/task` ([`threads_cpu_seconds`]). During a readiness run, C's runtime threads
//! (`memds-new`) plus every server's writer thread (`memds-writer`; A's and B's are idle then)
//! are `new_server_cpu_seconds`; A's and B's runtime threads (`memds-srv`: answering the
//! summary and building the get-table answer C pulls) are `serving_cpu_seconds`. During the
//! write phase, every server's runtime and writer threads are `write_phase_server_cpu_seconds`.
//!
//! The admin put of a 10M-partition table is larger than the default 64 MiB frame limit: the
//! embedded servers of this bench accept frames up to [`MAX_FRAME_BYTES`].

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use memds_client::{Client, ClientError, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{ErrorCode, Request, Response};
use rand::SeedableRng;
use rand::seq::index;
use serde::Serialize;

use crate::embedded::{self, Embedded, SERVER_THREAD, SharedPki, threads_cpu_seconds};
use crate::histogram::{self, median};

/// Largest request frame the embedded servers of this bench accept (a 10M-partition put).
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 30;
/// The name of the new server's runtime threads in a readiness run.
const NEW_SERVER_THREAD: &str = "memds-new";
/// The name of every server's writer thread (set by the server).
const WRITER_THREAD: &str = "memds-writer";
/// How long one write may take to reach both other servers before the bench fails.
const WRITE_LIMIT: Duration = Duration::from_secs(60);
/// How long a table may take to reach a peer, or a new server to become ready.
const REPLICATE_LIMIT: Duration = Duration::from_secs(600);

/// Options of `bench-fleet`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Partitions of the table the write-to-all figure updates.
    #[arg(long, default_value_t = 100_000)]
    write_partitions: usize,
    /// Single-partition splits sent to server 0, one at a time.
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Table sizes (partitions) at which a new server's readiness is measured.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    ready_partitions: Vec<usize>,
    /// Runs per readiness size (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sizes of at least this many partitions are measured once, whatever `--runs` says.
    #[arg(long, default_value_t = 10_000_000)]
    single_run_from: usize,
    /// Partitions of the table of the delta-sync figure [default: the smallest of
    /// `--ready-partitions`]; 0 skips the figure.
    #[arg(long)]
    delta_partitions: Option<usize>,
    /// Seconds between the servers' anti-entropy rounds.
    #[arg(long, default_value_t = 1.0)]
    anti_entropy: f64,
    /// How the write-to-all figure finds that a peer holds a write: `lookup` asks for a lookup
    /// at the new version, as a router does (a `behind` answer makes the server start a
    /// catch-up round); `summary` reads its summary (which asks nothing of the fleet).
    #[arg(long, value_enum, default_value = "lookup")]
    poll: Poll,
    /// Seed of the maps and of the partitions split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// How the write-to-all figure watches the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Poll {
    /// `lookup_at_least` at the new version until not `behind`.
    Lookup,
    /// `summary` until it lists the new version.
    Summary,
}

/// What `bench-fleet --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    anti_entropy_s: f64,
    write_partitions: usize,
    write_poll: Poll,
    write_to_all_count: u64,
    write_to_all_ms_p50: f64,
    write_to_all_ms_p99: f64,
    write_to_all_ms_max: f64,
    /// Time until server 0 acknowledged each write (durable there).
    write_ack_ms_p50: f64,
    write_ack_ms_p99: f64,
    /// Tables pulled by anti-entropy during the write phase (writes a forward did not carry
    /// first, or catch-up rounds that `behind` answers asked for).
    write_phase_tables_pulled: u64,
    write_phase_bytes_pulled: u64,
    write_phase_server_cpu_seconds: f64,
    ready: Vec<ReadyFigure>,
    /// Partitions of the delta-sync figure's table (absent when skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_partitions: Option<usize>,
    /// The lagging peer's anti-entropy period in the delta-sync figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_anti_entropy_s: Option<f64>,
    /// Bytes the lagging peer pulled to take the table whole (its first pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_sync_seconds: Option<f64>,
    /// Bytes pulled to catch up with one split by the peers' delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_seconds: Option<f64>,
    /// How the delta catch-up was pulled (the kinds of pulls counted meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_pulls: Option<Vec<String>>,
    /// Bytes pulled to catch up with one split by a Merkle descent (the peers holding no
    /// history of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    merkle_sync_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merkle_sync_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merkle_sync_pulls: Option<Vec<String>>,
    /// Whether the lagging peer held the peers' table (version and checksum) after each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_sync_holds_table: Option<bool>,
}

/// The readiness figures of one size.
#[derive(Debug, Serialize)]
struct ReadyFigure {
    partitions: usize,
    runs: usize,
    /// Median over the runs.
    ready_seconds: f64,
    ready_seconds_runs: Vec<f64>,
    /// Median over the runs.
    bytes_pulled: u64,
    tables_pulled: u64,
    /// The table's compressed snapshot as the admin put it.
    snapshot_bytes: u64,
    /// Seconds the put to A took until B also held the table (first run).
    put_and_replicate_seconds: f64,
    /// While the table went from A to B (first run): forwards A sent and that failed, and
    /// tables B pulled by anti-entropy (a pull besides a forward sent is the same table moved
    /// twice).
    put_phase_forwards_sent: u64,
    put_phase_forwards_failed: u64,
    put_phase_tables_pulled: u64,
    /// Median over the runs.
    new_server_cpu_seconds: f64,
    /// Median over the runs.
    serving_cpu_seconds: f64,
    /// Per run: whether the peer C pulled from had to build its get-table answer shows here.
    serving_cpu_seconds_runs: Vec<f64>,
    table_version: u64,
    /// Whether, in every run, the new server held the table at A's version and digest.
    new_server_holds_table: bool,
    /// What the new server's `/ready` answered while not ready, each text once over the runs.
    not_ready_reasons: Vec<String>,
}

/// One readiness run.
struct ReadyRun {
    seconds: f64,
    bytes_pulled: u64,
    tables_pulled: u64,
    new_cpu: f64,
    serving_cpu: f64,
    put_seconds: f64,
    /// (forwards sent, forwards failed, tables pulled) while the table went from A to B.
    put_phase: (u64, u64, u64),
    holds_table: bool,
    /// What the new server's `/ready` said while it was not ready, each text once.
    not_ready: Vec<String>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.write_partitions >= 3 * args.writes.max(1),
        "--write-partitions must be at least three times --writes"
    );
    ensure!(args.writes >= 1, "--writes must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        args.ready_partitions.iter().all(|&n| n >= 1),
        "--ready-partitions must be positive"
    );
    ensure!(
        args.anti_entropy >= 0.01 && args.anti_entropy <= 60.0,
        "--anti-entropy between 0.01 and 60 seconds"
    );
    let pki = SharedPki::create()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-cli")
        .enable_all()
        .build()?;
    let connector = runtime.block_on(async {
        Connector::new(
            &ClientTls::from_dir(pki.path(), Role::Admin)?,
            ConnectOptions::default(),
        )
    })?;
    let routers = runtime.block_on(async {
        Connector::new(
            &ClientTls::from_dir(pki.path(), Role::Router)?,
            ConnectOptions::default(),
        )
    })?;
    let period = Duration::from_secs_f64(args.anti_entropy);

    progress(format_args!(
        "write to all: 3 peers, {} partitions, {} writes",
        args.write_partitions, args.writes
    ));
    let mut report = write_to_all(args, &pki, &runtime, &connector, &routers, period)?;

    for &n in &args.ready_partitions {
        let runs = if n >= args.single_run_from {
            1
        } else {
            args.runs
        };
        progress(format_args!(
            "readiness at {n} partitions: generating the table"
        ));
        let map = synth::generate_table(
            &SynthConfig {
                partitions: n,
                seed: args.seed,
                ..SynthConfig::default()
            },
            0,
        );
        let snapshot = memds_proto::snapshot::encode(&map);
        let table = map.name().as_str().to_owned();
        let version = map.version().get();
        drop(map);
        let mut done = Vec::new();
        for r in 0..runs {
            progress(format_args!(
                "readiness at {n} partitions: run {}/{runs}",
                r + 1
            ));
            let one = ready_run(
                &pki, &runtime, &connector, period, &table, version, &snapshot,
            )
            .with_context(|| format!("readiness at {n} partitions, run {}", r + 1))?;
            progress(format_args!(
                "  ready in {:.2} s, {} bytes pulled",
                one.seconds, one.bytes_pulled
            ));
            done.push(one);
        }
        let median_of = |f: &dyn Fn(&ReadyRun) -> f64| {
            let mut v: Vec<f64> = done.iter().map(f).collect();
            median(&mut v)
        };
        report.ready.push(ReadyFigure {
            partitions: n,
            runs,
            ready_seconds: median_of(&|r| r.seconds),
            ready_seconds_runs: done.iter().map(|r| r.seconds).collect(),
            bytes_pulled: median_of(&|r| r.bytes_pulled as f64) as u64,
            tables_pulled: median_of(&|r| r.tables_pulled as f64) as u64,
            snapshot_bytes: snapshot.len() as u64,
            put_and_replicate_seconds: done.first().map_or(0.0, |r| r.put_seconds),
            put_phase_forwards_sent: done.first().map_or(0, |r| r.put_phase.0),
            put_phase_forwards_failed: done.first().map_or(0, |r| r.put_phase.1),
            put_phase_tables_pulled: done.first().map_or(0, |r| r.put_phase.2),
            new_server_cpu_seconds: median_of(&|r| r.new_cpu),
            serving_cpu_seconds: median_of(&|r| r.serving_cpu),
            serving_cpu_seconds_runs: done.iter().map(|r| r.serving_cpu).collect(),
            table_version: version,
            new_server_holds_table: done.iter().all(|r| r.holds_table),
            not_ready_reasons: done.iter().fold(Vec::new(), |mut all, r| {
                for reason in &r.not_ready {
                    if !all.contains(reason) {
                        all.push(reason.clone());
                    }
                }
                all
            }),
        });
    }
    let delta_partitions = args
        .delta_partitions
        .or_else(|| args.ready_partitions.iter().copied().min())
        .unwrap_or(1_000_000);
    if delta_partitions > 0 {
        progress(format_args!(
            "delta sync at {delta_partitions} partitions: generating the table"
        ));
        let f = delta_sync(args, &pki, &runtime, &connector, delta_partitions)
            .with_context(|| format!("delta sync at {delta_partitions} partitions"))?;
        progress(format_args!(
            "  snapshot {} B in {:.3} s, delta {} B in {:.3} s, Merkle {} B in {:.3} s",
            f.snapshot.bytes,
            f.snapshot.seconds,
            f.delta.bytes,
            f.delta.seconds,
            f.merkle.bytes,
            f.merkle.seconds
        ));
        report.delta_sync_partitions = Some(delta_partitions);
        report.delta_sync_anti_entropy_s = Some(SYNC_PERIOD.as_secs_f64());
        report.snapshot_bytes = Some(f.snapshot.bytes);
        report.snapshot_sync_seconds = Some(f.snapshot.seconds);
        report.delta_sync_bytes = Some(f.delta.bytes);
        report.delta_sync_seconds = Some(f.delta.seconds);
        report.delta_sync_pulls = Some(f.delta.kinds);
        report.merkle_sync_bytes = Some(f.merkle.bytes);
        report.merkle_sync_seconds = Some(f.merkle.seconds);
        report.merkle_sync_pulls = Some(f.merkle.kinds);
        report.delta_sync_holds_table = Some(f.holds_table);
    }
    drop(runtime);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("bench-fleet: {what}");
}

/// The write-to-all figures, with three fresh peers.
fn write_to_all(
    args: &Args,
    pki: &SharedPki,
    runtime: &tokio::runtime::Runtime,
    admins: &Connector,
    routers: &Connector,
    period: Duration,
) -> anyhow::Result<Report> {
    let servers = embedded::start_fleet(3, 1, pki.path(), period, |_| {})?;
    let addrs: Vec<SocketAddr> = servers.iter().map(Embedded::addr).collect();
    let result = runtime.block_on(async {
        let admin = admins.connect(addrs[0]).await?;
        let mut watchers = Vec::new();
        for &a in &addrs[1..] {
            watchers.push(routers.connect(a).await?);
        }
        let mut summaries = Vec::new();
        for &a in &addrs {
            summaries.push(admins.connect(a).await?);
        }
        let map = synth::generate_table(
            &SynthConfig {
                partitions: args.write_partitions,
                seed: args.seed ^ 0x57,
                ..SynthConfig::default()
            },
            0,
        );
        let table = map.name().as_str().to_owned();
        admin.put_table(&map).await.context("putting the table")?;
        wait_held(&summaries, &table, map.version().get(), REPLICATE_LIMIT).await?;

        // Distinct partitions wide enough to split, in random order.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        let splittable = |i: usize| map.end_inclusive(i) - map.partitions()[i].start >= 2;
        let indexes: Vec<usize> = index::sample(&mut rng, map.partitions().len(), args.writes * 3)
            .into_iter()
            .filter(|&i| splittable(i))
            .take(args.writes)
            .collect();
        ensure!(
            indexes.len() == args.writes,
            "not enough partitions wide enough to split"
        );
        let max_id = map
            .partitions()
            .iter()
            .map(|p| p.id.get())
            .max()
            .unwrap_or(0);
        let mut to_all = histogram::latency();
        let mut ack = histogram::latency();
        let text = memds_server::metrics::handle().render();
        let pulled_before = (
            counter(&text, "memds_anti_entropy_tables_pulled_total"),
            counter(&text, "memds_anti_entropy_bytes_pulled_total"),
        );
        let cpu_before = servers_cpu()?;
        let mut version = map.version().get();
        for (k, &i) in indexes.iter().enumerate() {
            let mut update = synth::split_update(&map, i, max_id + 1 + k as u64);
            update.base_version = version;
            update.version = version + 1;
            let hash = update.partitions[1].start;
            let sent = Instant::now();
            admin
                .update_partitions(update)
                .await
                .with_context(|| format!("write {} to server 0", k + 1))?;
            ack.saturating_record(sent.elapsed().as_micros() as u64);
            version += 1;
            let (a, b) = match args.poll {
                Poll::Lookup => {
                    tokio::join!(
                        wait_version(&watchers[0], &table, hash, version, sent),
                        wait_version(&watchers[1], &table, hash, version, sent),
                    )
                }
                Poll::Summary => {
                    tokio::join!(
                        wait_summary(&summaries[1], &table, version, sent),
                        wait_summary(&summaries[2], &table, version, sent),
                    )
                }
            };
            a.context("server 1")?;
            b.context("server 2")?;
            to_all.saturating_record(sent.elapsed().as_micros().max(1) as u64);
            if (k + 1) % 100 == 0 {
                progress(format_args!("  {} writes", k + 1));
            }
        }
        let cpu = servers_cpu()? - cpu_before;
        let text = memds_server::metrics::handle().render();
        let pulled = (
            counter(&text, "memds_anti_entropy_tables_pulled_total") - pulled_before.0,
            counter(&text, "memds_anti_entropy_bytes_pulled_total") - pulled_before.1,
        );
        for c in watchers.iter().chain(&summaries).chain([&admin]) {
            c.close();
        }
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        anyhow::Ok(Report {
            anti_entropy_s: args.anti_entropy,
            write_partitions: args.write_partitions,
            write_poll: args.poll,
            write_to_all_count: to_all.len(),
            write_to_all_ms_p50: ms(&to_all, 0.5),
            write_to_all_ms_p99: ms(&to_all, 0.99),
            write_to_all_ms_max: to_all.max() as f64 / 1e3,
            write_ack_ms_p50: ms(&ack, 0.5),
            write_ack_ms_p99: ms(&ack, 0.99),
            write_phase_tables_pulled: pulled.0 as u64,
            write_phase_bytes_pulled: pulled.1 as u64,
            write_phase_server_cpu_seconds: cpu,
            ready: Vec::new(),
            delta_sync_partitions: None,
            delta_sync_anti_entropy_s: None,
            snapshot_bytes: None,
            snapshot_sync_seconds: None,
            delta_sync_bytes: None,
            delta_sync_seconds: None,
            delta_sync_pulls: None,
            merkle_sync_bytes: None,
            merkle_sync_seconds: None,
            merkle_sync_pulls: None,
            delta_sync_holds_table: None,
        })
    });
    servers.into_iter().for_each(Embedded::stop);
    result
}

/// CPU seconds of every embedded server's runtime and writer threads.
fn servers_cpu() -> anyhow::Result<f64> {
    Ok(threads_cpu_seconds(SERVER_THREAD)? + threads_cpu_seconds(WRITER_THREAD)?)
}

/// Asks `client` for the route of `hash` at `version` or newer until it answers without
/// `behind` (in a tight loop: one request in flight at a time).
async fn wait_version(
    client: &Client,
    table: &str,
    hash: u64,
    version: u64,
    since: Instant,
) -> anyhow::Result<()> {
    loop {
        match client.lookup_at_least(table, hash, Some(version)).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Server(e)) if e.code == ErrorCode::Behind => {
                if since.elapsed() > WRITE_LIMIT {
                    bail!("still behind version {version} after {WRITE_LIMIT:?}");
                }
            }
            Err(e) => return Err(e).context("asking for the new version"),
        }
    }
}

/// Reads `client`'s summary until it lists `table` at `version` or newer (in a tight loop).
async fn wait_summary(
    client: &Client,
    table: &str,
    version: u64,
    since: Instant,
) -> anyhow::Result<()> {
    loop {
        let s = client.summary().await.context("asking for a summary")?;
        if s.tables
            .iter()
            .any(|t| t.name == table && !t.dropped && t.version >= version)
        {
            return Ok(());
        }
        if since.elapsed() > WRITE_LIMIT {
            bail!("still behind version {version} after {WRITE_LIMIT:?}");
        }
    }
}

/// Waits until every server of `clients` is ready and holds `table` at `version` or newer.
async fn wait_held(
    clients: &[Client],
    table: &str,
    version: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    'poll: loop {
        for c in clients {
            let s = c.summary().await.context("asking for a summary")?;
            let held = s
                .tables
                .iter()
                .any(|t| t.name == table && !t.dropped && t.version >= version);
            if !(held && s.ready) {
                ensure!(
                    started.elapsed() < limit,
                    "{} did not hold {table} at version {version} and become ready within {limit:?}",
                    c.remote_address()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue 'poll;
            }
        }
        return Ok(());
    }
}

/// One readiness run: A and B hold the table, C starts empty; answers C's figures.
fn ready_run(
    pki: &SharedPki,
    runtime: &tokio::runtime::Runtime,
    admins: &Connector,
    period: Duration,
    table: &str,
    version: u64,
    snapshot: &[u8],
) -> anyhow::Result<ReadyRun> {
    let ports = embedded::free_udp_ports(3)?;
    let [a, b, c] = [0, 1, 2].map(|i| SocketAddr::from(([127, 0, 0, 1], ports[i])));
    let start = |listen: SocketAddr, peers: &[SocketAddr], threads: &str| {
        Embedded::start_with(2, threads, |config| {
            embedded::join_fleet(config, listen, pki.path(), peers, period);
            config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            config.limits.max_frame_bytes = MAX_FRAME_BYTES;
        })
    };
    let server_a = start(a, &[b], SERVER_THREAD)?;
    let server_b = match start(b, &[a], SERVER_THREAD) {
        Ok(s) => s,
        Err(e) => {
            server_a.stop();
            return Err(e);
        }
    };
    let mut servers = vec![server_a, server_b];
    let result = (|| {
        // A and B hold the table (put to A, carried to B), and have settled.
        let text = memds_server::metrics::handle().render();
        let put_before = Pulled::read(&text);
        let put_started = Instant::now();
        let a_digest = runtime.block_on(async {
            let admin_a = admins.connect(a).await?;
            let admin_b = admins.connect(b).await?;
            match admin_a
                .call(&Request::PutTable {
                    snapshot: snapshot.to_vec(),
                })
                .await?
            {
                Response::Written(_) => {}
                other => bail!("the put to A answered {}", ClientError::unexpected(&other)),
            }
            wait_held(
                &[admin_a.clone(), admin_b.clone()],
                table,
                version,
                REPLICATE_LIMIT,
            )
            .await?;
            let digest = digest_of(&admin_a, table).await?;
            admin_a.close();
            admin_b.close();
            anyhow::Ok(digest)
        })?;
        let put_seconds = put_started.elapsed().as_secs_f64();
        // B may also have pulled the table while the forward was on its way: the pull's bytes
        // are counted when they arrive, the table once the writer has taken it. Settled once
        // every pull counted in bytes is counted as a table too, and nothing moved for two
        // anti-entropy periods.
        let settle_started = Instant::now();
        let mut last = Pulled::read(&memds_server::metrics::handle().render());
        loop {
            std::thread::sleep(2 * period);
            let now = Pulled::read(&memds_server::metrics::handle().render());
            let pulls_by_bytes = ((now.bytes - put_before.bytes) / snapshot.len() as f64).round();
            if now == last && now.tables - put_before.tables >= pulls_by_bytes {
                break;
            }
            ensure!(
                settle_started.elapsed() < REPLICATE_LIMIT,
                "A and B did not settle within {REPLICATE_LIMIT:?}"
            );
            last = now;
        }
        let before = last;
        let put_phase = (
            (before.forwards_sent - put_before.forwards_sent) as u64,
            (before.forwards_failed - put_before.forwards_failed) as u64,
            (before.tables - put_before.tables) as u64,
        );
        let serving_before = threads_cpu_seconds(SERVER_THREAD)?;
        let writers_before = threads_cpu_seconds(WRITER_THREAD)?;
        let started = Instant::now();
        let mut not_ready: Vec<String> = Vec::new();
        servers.push(start(c, &[a, b], NEW_SERVER_THREAD)?);
        let metrics = servers[2]
            .metrics_addr()
            .context("the new server has no metrics address")?;
        loop {
            let (status, body) = http_get(metrics, "/ready")?;
            if status == 200 {
                break;
            }
            let reason = body.trim().to_owned();
            if !not_ready.contains(&reason) {
                not_ready.push(reason);
            }
            ensure!(
                started.elapsed() < REPLICATE_LIMIT,
                "the new server was not ready within {REPLICATE_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let seconds = started.elapsed().as_secs_f64();
        let new_cpu = threads_cpu_seconds(NEW_SERVER_THREAD)? + threads_cpu_seconds(WRITER_THREAD)?
            - writers_before;
        let serving_cpu = threads_cpu_seconds(SERVER_THREAD)? - serving_before;
        let after = Pulled::read(&memds_server::metrics::handle().render());
        let bytes_pulled = after.bytes - before.bytes;
        let tables_pulled = after.tables - before.tables;
        let holds_table = runtime.block_on(async {
            let admin_c = admins.connect(c).await?;
            let s = admin_c.summary().await?;
            admin_c.close();
            anyhow::Ok(s.tables.iter().any(|t| {
                t.name == table && !t.dropped && t.version == version && t.digest == a_digest
            }))
        })?;
        Ok(ReadyRun {
            seconds,
            bytes_pulled: bytes_pulled as u64,
            tables_pulled: tables_pulled as u64,
            new_cpu,
            serving_cpu,
            put_seconds,
            put_phase,
            holds_table,
            not_ready,
        })
    })();
    servers.into_iter().for_each(Embedded::stop);
    result
}

/// The lagging peer's anti-entropy period in the delta-sync figure: short, so that the time
/// to catch up is the pull's, not the wait for the next round.
const SYNC_PERIOD: Duration = Duration::from_millis(10);

/// One catch-up of the delta-sync figure.
struct Sync {
    bytes: u64,
    seconds: f64,
    /// The kinds of pulls counted meanwhile (one each, when all is well).
    kinds: Vec<String>,
}

/// The delta-sync figures.
struct DeltaSync {
    snapshot: Sync,
    delta: Sync,
    merkle: Sync,
    holds_table: bool,
}

/// The delta-sync figure: A and B (on their own, written to by the bench as an authority
/// writes to every server) hold a table of `n` partitions; C, their peer (they do not know it,
/// so nothing is forwarded to it: it learns everything by its own anti-entropy, every
/// [`SYNC_PERIOD`]), takes it whole first (the snapshot figure); then one split is written to A
/// and B, and C catches up by their delta; then another split arrives as a put of the whole
/// table, which leaves A and B no history to answer a delta from (as after a restart), and C
/// catches up by a Merkle descent. Each catch-up's bytes are the delta of the process-wide
/// `memds_anti_entropy_bytes_pulled_total` (only C pulls), its time runs from the first
/// acknowledgement of the write by A or B until C's summary lists the new version.
fn delta_sync(
    args: &Args,
    pki: &SharedPki,
    runtime: &tokio::runtime::Runtime,
    admins: &Connector,
    n: usize,
) -> anyhow::Result<DeltaSync> {
    let map = synth::generate_table(
        &SynthConfig {
            partitions: n,
            seed: args.seed ^ 0xDE17A,
            ..SynthConfig::default()
        },
        0,
    );
    let table = map.name().as_str().to_owned();
    let max_id = map
        .partitions()
        .iter()
        .map(|p| p.id.get())
        .max()
        .unwrap_or(0);
    // Two partitions wide enough to split, a third and two thirds into the table.
    let splittable = |from: usize| {
        (from..map.partitions().len())
            .find(|&i| map.end_inclusive(i) - map.partitions()[i].start >= 2)
            .context("no partition wide enough to split")
    };
    let first = synth::split_update(&map, splittable(n / 3)?, max_id + 1);
    let mut interner = memds_proto::NodeInterner::default();
    let after_first = memds_proto::CompactTable::new(&map, &mut interner)
        .apply(&first.clone().into(), &mut interner)
        .context("applying the first split")?
        .to_map();
    let second_update = synth::split_update(&after_first, splittable(2 * n / 3)?, max_id + 2);
    let second = memds_proto::CompactTable::new(&after_first, &mut interner)
        .apply(&second_update.into(), &mut interner)
        .context("applying the second split")?
        .to_map();
    drop((after_first, interner));
    let snapshot = memds_proto::snapshot::encode(&map);
    let second_snapshot = memds_proto::snapshot::encode(&second);
    let version = map.version().get();
    drop((map, second));

    let ports = embedded::free_udp_ports(3)?;
    let [a, b, c] = [0, 1, 2].map(|i| SocketAddr::from(([127, 0, 0, 1], ports[i])));
    let start = |listen: SocketAddr, peers: &[SocketAddr], period: Duration, threads: &str| {
        Embedded::start_with(2, threads, |config| {
            embedded::join_fleet(config, listen, pki.path(), peers, period);
            config.limits.max_frame_bytes = MAX_FRAME_BYTES;
        })
    };
    let period = Duration::from_secs_f64(args.anti_entropy);
    let mut servers = vec![start(a, &[], period, SERVER_THREAD)?];
    let result = (|| {
        servers.push(start(b, &[], period, SERVER_THREAD)?);
        // Writes every change to A and B; answers when the first of them acknowledged it.
        let write_both = |request: Request| {
            runtime.block_on(async {
                let (admin_a, admin_b) = (admins.connect(a).await?, admins.connect(b).await?);
                let acked = |client: Client| {
                    let request = request.clone();
                    async move {
                        let answer = client.call(&request).await;
                        let at = Instant::now();
                        client.close();
                        match answer? {
                            Response::Written(_) => anyhow::Ok(at),
                            other => {
                                bail!("the write answered {}", ClientError::unexpected(&other))
                            }
                        }
                    }
                };
                let (at_a, at_b) = tokio::join!(acked(admin_a), acked(admin_b));
                anyhow::Ok(at_a?.min(at_b?))
            })
        };
        write_both(Request::PutTable {
            snapshot: snapshot.clone(),
        })
        .context("putting the table to A and B")?;

        // C takes the table whole.
        let before = Pulls::read();
        let started = Instant::now();
        servers.push(start(c, &[a, b], SYNC_PERIOD, NEW_SERVER_THREAD)?);
        let whole = caught_up(runtime, admins, c, &table, version, started, before)?;

        // One split, written to A and B: C pulls their delta.
        let before = Pulls::read();
        let acked = write_both(Request::UpdatePartitions(first.into()))?;
        let delta = caught_up(runtime, admins, c, &table, version + 1, acked, before)?;
        let mut holds_table = same_table(runtime, admins, [a, c], &table)?;

        // The next split as a put of the whole table: no history, C descends the trees.
        let before = Pulls::read();
        let acked = write_both(Request::PutTable {
            snapshot: second_snapshot,
        })?;
        let merkle = caught_up(runtime, admins, c, &table, version + 2, acked, before)?;
        holds_table &= same_table(runtime, admins, [a, c], &table)?;
        Ok(DeltaSync {
            snapshot: whole,
            delta,
            merkle,
            holds_table,
        })
    })();
    servers.into_iter().for_each(Embedded::stop);
    result
}

/// Waits until `addr`'s summary lists `table` at `version`, then answers the catch-up's
/// figures: the time since `since` and what was pulled since `before`.
fn caught_up(
    runtime: &tokio::runtime::Runtime,
    admins: &Connector,
    addr: SocketAddr,
    table: &str,
    version: u64,
    since: Instant,
    before: Pulls,
) -> anyhow::Result<Sync> {
    runtime.block_on(async {
        let client = admins.connect(addr).await?;
        loop {
            let s = client.summary().await.context("asking for a summary")?;
            if s.tables
                .iter()
                .any(|t| t.name == table && !t.dropped && t.version >= version)
            {
                break;
            }
            ensure!(
                since.elapsed() < REPLICATE_LIMIT,
                "{addr} did not hold {table} at version {version} within {REPLICATE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        client.close();
        anyhow::Ok(())
    })?;
    let seconds = since.elapsed().as_secs_f64();
    let after = Pulls::read();
    let kinds = PULL_KINDS
        .iter()
        .zip(after.kinds.iter().zip(before.kinds))
        .flat_map(|(kind, (after, before))| {
            std::iter::repeat_n((*kind).to_owned(), (after - before).max(0.0) as usize)
        })
        .collect();
    Ok(Sync {
        bytes: (after.bytes - before.bytes) as u64,
        seconds,
        kinds,
    })
}

/// Whether the servers at `addrs` hold `table` at the same version and checksum.
fn same_table(
    runtime: &tokio::runtime::Runtime,
    admins: &Connector,
    addrs: [SocketAddr; 2],
    table: &str,
) -> anyhow::Result<bool> {
    runtime.block_on(async {
        let mut held = Vec::new();
        for addr in addrs {
            let client = admins.connect(addr).await?;
            let s = client.summary().await?;
            client.close();
            held.push(
                s.tables
                    .into_iter()
                    .find(|t| t.name == table && !t.dropped)
                    .map(|t| (t.version, t.digest)),
            );
        }
        anyhow::Ok(held[0].is_some() && held[0] == held[1])
    })
}

/// The kinds of `memds_anti_entropy_pulls_total`.
const PULL_KINDS: [&str; 3] = ["delta", "merkle", "snapshot"];

/// The process-wide pull counters at one moment: bytes, and pulls by kind.
#[derive(Clone, Copy, Debug)]
struct Pulls {
    bytes: f64,
    kinds: [f64; 3],
}

impl Pulls {
    fn read() -> Self {
        let text = memds_server::metrics::handle().render();
        Self {
            bytes: counter(&text, "memds_anti_entropy_bytes_pulled_total"),
            kinds: PULL_KINDS.map(|k| {
                counter_where(
                    &text,
                    "memds_anti_entropy_pulls_total",
                    &format!("kind=\"{k}\""),
                )
            }),
        }
    }
}

/// The digest `client`'s server holds `table` at.
async fn digest_of(client: &Client, table: &str) -> anyhow::Result<u64> {
    client
        .summary()
        .await?
        .tables
        .iter()
        .find(|t| t.name == table && !t.dropped)
        .map(|t| t.digest)
        .with_context(|| format!("{} does not hold {table}", client.remote_address()))
}

/// The process-wide replication counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pulled {
    bytes: f64,
    tables: f64,
    forwards_sent: f64,
    forwards_failed: f64,
}

impl Pulled {
    fn read(text: &str) -> Self {
        Self {
            bytes: counter(text, "memds_anti_entropy_bytes_pulled_total"),
            tables: counter(text, "memds_anti_entropy_tables_pulled_total"),
            forwards_sent: counter_where(text, "memds_forwards_total", "result=\"sent\""),
            forwards_failed: counter_where(text, "memds_forwards_total", "result=\"failed\""),
        }
    }
}

/// The sum over every label set of a counter in a Prometheus text exposition (0 if absent).
fn counter(text: &str, name: &str) -> f64 {
    counter_where(text, name, "")
}

/// Like [`counter`], over the label sets containing `label` (such as `result="sent"`).
fn counter_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && labels.contains(label)).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The status code and body of `GET path` on `addr` (HTTP/1.1, connection closed after the
/// answer).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} answered {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

fn print_table(r: &Report) {
    println!(
        "write to all (3 peers, {} partitions, anti-entropy every {} s): {} writes",
        r.write_partitions, r.anti_entropy_s, r.write_to_all_count
    );
    println!(
        "  until both peers hold it  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.write_to_all_ms_p50, r.write_to_all_ms_p99, r.write_to_all_ms_max
    );
    println!(
        "  acknowledged by server 0  p50 {:.2} ms  p99 {:.2} ms",
        r.write_ack_ms_p50, r.write_ack_ms_p99
    );
    println!(
        "  anti-entropy pulls meanwhile: {} tables, {} bytes; server CPU {:.2} s",
        r.write_phase_tables_pulled, r.write_phase_bytes_pulled, r.write_phase_server_cpu_seconds
    );
    println!(
        "{:>12} {:>5} {:>10} {:>14} {:>14} {:>8} {:>8} {:>6}",
        "partitions", "runs", "ready s", "bytes pulled", "snapshot B", "new CPU", "serve", "holds"
    );
    for f in &r.ready {
        println!(
            "{:>12} {:>5} {:>10.2} {:>14} {:>14} {:>8.2} {:>8.2} {:>6}",
            f.partitions,
            f.runs,
            f.ready_seconds,
            f.bytes_pulled,
            f.snapshot_bytes,
            f.new_server_cpu_seconds,
            f.serving_cpu_seconds,
            f.new_server_holds_table
        );
    }
    if let (Some(n), Some(snapshot), Some(delta), Some(merkle)) = (
        r.delta_sync_partitions,
        r.snapshot_bytes,
        r.delta_sync_bytes,
        r.merkle_sync_bytes,
    ) {
        println!(
            "delta sync ({n} partitions, one split): snapshot {snapshot} B in {:.3} s, \
             delta {delta} B in {:.3} s, Merkle {merkle} B in {:.3} s; holds the table: {}",
            r.snapshot_sync_seconds.unwrap_or_default(),
            r.delta_sync_seconds.unwrap_or_default(),
            r.merkle_sync_seconds.unwrap_or_default(),
            r.delta_sync_holds_table.unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_label_sets_and_absent_ones_are_zero() {
        let text = "# HELP x y\n# TYPE memds_a counter\nmemds_a 12\nmemds_ab 5\n\
                    memds_b{peer=\"1\",result=\"sent\"} 3\nmemds_b{peer=\"2\",result=\"sent\"} 4\n";
        assert_eq!(counter(text, "memds_a"), 12.0);
        assert_eq!(counter(text, "memds_b"), 7.0);
        assert_eq!(counter(text, "memds_c"), 0.0);
        assert_eq!(counter_where(text, "memds_b", "peer=\"2\""), 4.0);
        assert_eq!(counter_where(text, "memds_a", "peer=\"2\""), 0.0);
    }

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
