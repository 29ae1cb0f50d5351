//! `loadgen bench-server-memory`: the resident memory of a real `memds-server` process while
//! its tables are put again and again at increasing versions.
//!
//! The server is the real binary (`--server-bin`, by default the `memds-server` next to this
//! executable) started as a child process on loopback port 0 over a fresh data directory, so
//! what is measured is exactly what an operator sees: the process's `VmRSS` from
//! `/proc/<pid>/status`, beside the server's own estimate of its tables, the
//! `memds_resident_bytes` gauge read from its `/metrics` endpoint. RSS is read once the server
//! has started (the baseline) and after each round, a round being a put of a new version of
//! every table with new random content, acknowledged (so the server replaced every table).
//!
//! The maps are held-out-like rather than history-shaped: every table has `--partitions`
//! partitions at uniformly random split points, each on one random node per zone of a shared
//! pool of `--nodes` storage nodes, with a random leader, epoch and id order. They compress far
//! less than [`memds_proto::synth`]'s grown maps, which is the case the memory targets are set
//! for.
//!
//! The targets: RSS growth after the first load at most 32 bytes per partition, and RSS after
//! the last round at most 1.25 times RSS after the first. With `--restart` the server is also
//! stopped (SIGTERM) and started again over the same data directory, and its RSS after
//! recovery is reported. The child is stopped on every exit path.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use memds_client::{ClientTls, ConnectOptions, Connector, Role};
use memds_proto::model::{
    Epoch, NodeId, Partition, PartitionId, Replicas, TableMap, TableName, TableVersion,
};
use memds_proto::synth::{self, SynthConfig};
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The target on RSS growth after the first load, in bytes per partition.
const TARGET_GROWTH_PER_PARTITION: f64 = 32.0;
/// The target on RSS after the last round over RSS after the first.
const TARGET_LAST_OVER_FIRST: f64 = 1.25;

/// Options of `bench-server-memory`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Tables put each round.
    #[arg(long, default_value_t = 20)]
    tables: usize,
    /// Partitions per table.
    #[arg(long, default_value_t = 100_000)]
    partitions: usize,
    /// Rounds: each puts a new version of every table, with new random content.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Storage nodes in the pool the tables share (spread over 3 zones).
    #[arg(long, default_value_t = 300)]
    nodes: usize,
    /// Seed of the maps.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The server binary [default: `memds-server` next to this executable].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra arguments for the server (repeat for each).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// A command the server runs under, split on spaces (for instance `heaptrack -o /tmp/ht`);
    /// RSS is then read from the `memds-server` process it starts.
    #[arg(long)]
    server_wrapper: Option<String>,
    /// Seconds to wait after a round before reading RSS, so allocators that return memory in
    /// the background have done so.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Also stop the server and start it again over the same data directory, and report its
    /// RSS after recovery.
    #[arg(long)]
    restart: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `bench-server-memory --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    tables: usize,
    partitions_per_table: usize,
    partitions: usize,
    rounds: usize,
    nodes: usize,
    seed: u64,
    server_bin: String,
    settle_secs: f64,
    /// RSS once the server has started, before any put.
    baseline_rss_bytes: u64,
    per_round: Vec<RoundReport>,
    /// (RSS after round 1 - baseline) / partitions.
    growth_per_partition_first: f64,
    target_growth_per_partition: f64,
    growth_target_met: bool,
    /// RSS after the last round / RSS after round 1.
    last_over_first: f64,
    target_last_over_first: f64,
    last_over_first_target_met: bool,
    /// RSS after a restart over the same data directory (with `--restart`).
    restart_rss_bytes: Option<u64>,
    restart_resident_bytes: Option<u64>,
}

/// One round's figures.
#[derive(Debug, Serialize)]
struct RoundReport {
    round: usize,
    /// Seconds the round's puts took, acknowledgements included.
    put_seconds: f64,
    rss_bytes: u64,
    /// The process's peak RSS so far (`VmHWM`).
    peak_rss_bytes: u64,
    /// The server's `memds_resident_bytes` gauge.
    resident_bytes: u64,
    /// (RSS - baseline RSS) / partitions.
    rss_growth_per_partition: f64,
    /// RSS / resident bytes.
    rss_over_resident: f64,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.tables >= 1 && args.partitions >= 1 && args.rounds >= 1,
        "--tables, --partitions and --rounds must be at least 1"
    );
    ensure!(args.nodes >= 3, "--nodes must be at least 3 (one per zone)");
    ensure!(
        args.settle_secs >= 0.0,
        "--settle-secs must not be negative"
    );
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => default_server_bin()?,
    };
    let data_dir = tempfile::Builder::new()
        .prefix("memds-bench-memory-")
        .tempdir()
        .context("creating the data directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-cli")
        .enable_all()
        .build()?;
    let spawn = || {
        ServerProcess::spawn(
            &server_bin,
            data_dir.path(),
            args.server_wrapper.as_deref(),
            &args.server_arg,
        )
    };

    let server = spawn()?;
    let settle = Duration::from_secs_f64(args.settle_secs);
    std::thread::sleep(settle);
    let baseline = read_rss(server.pid)?;
    let partitions = args.tables * args.partitions;
    let per_round = rt.block_on(put_rounds(args, &server, baseline.rss, settle))?;
    let (restart_rss, restart_resident) = if args.restart {
        server.stop();
        let again = spawn()?;
        std::thread::sleep(settle);
        let rss = read_rss(again.pid)?.rss;
        let resident = resident_bytes(again.metrics)?;
        again.stop();
        (Some(rss), Some(resident))
    } else {
        server.stop();
        (None, None)
    };

    let first = per_round.first().expect("at least one round").rss_bytes;
    let last = per_round.last().expect("at least one round").rss_bytes;
    let growth_first = (first as f64 - baseline.rss as f64) / partitions as f64;
    let last_over_first = last as f64 / first as f64;
    let report = Report {
        tables: args.tables,
        partitions_per_table: args.partitions,
        partitions,
        rounds: args.rounds,
        nodes: args.nodes,
        seed: args.seed,
        server_bin: server_bin.display().to_string(),
        settle_secs: args.settle_secs,
        baseline_rss_bytes: baseline.rss,
        per_round,
        growth_per_partition_first: growth_first,
        target_growth_per_partition: TARGET_GROWTH_PER_PARTITION,
        growth_target_met: growth_first <= TARGET_GROWTH_PER_PARTITION,
        last_over_first,
        target_last_over_first: TARGET_LAST_OVER_FIRST,
        last_over_first_target_met: last_over_first <= TARGET_LAST_OVER_FIRST,
        restart_rss_bytes: restart_rss,
        restart_resident_bytes: restart_resident,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Puts every table `--rounds` times and reads the server's memory after each round.
async fn put_rounds(
    args: &Args,
    server: &ServerProcess,
    baseline_rss: u64,
    settle: Duration,
) -> anyhow::Result<Vec<RoundReport>> {
    let tls = ClientTls::from_dir(&server.tls_dir, Role::Admin)
        .context("loading the admin certificate")?;
    let connector = Connector::new(&tls, ConnectOptions::default())?;
    let client = connector
        .connect(server.quic)
        .await
        .with_context(|| format!("connecting to {}", server.quic))?;
    let pool = synth::node_pool(&SynthConfig {
        azs: 3,
        nodes_per_az: args.nodes / 3,
        ..SynthConfig::default()
    });
    let partitions = (args.tables * args.partitions) as f64;
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let started = Instant::now();
        for table in 0..args.tables {
            let map = random_table(args, &pool, table, round);
            client
                .put_table(&map)
                .await
                .with_context(|| format!("putting table {table} in round {}", round + 1))?;
        }
        let put_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let rss = read_rss(server.pid)?;
        let resident = resident_bytes(server.metrics)?;
        rounds.push(RoundReport {
            round: round + 1,
            put_seconds,
            rss_bytes: rss.rss,
            peak_rss_bytes: rss.peak,
            resident_bytes: resident,
            rss_growth_per_partition: (rss.rss as f64 - baseline_rss as f64) / partitions,
            rss_over_resident: rss.rss as f64 / resident.max(1) as f64,
        });
    }
    client.close();
    connector.close();
    Ok(rounds)
}

/// Table `index` of round `round`: `--partitions` partitions at random split points, each on
/// one random node per zone of `pool`, with a random leader and epoch; ids are a random
/// permutation. The version is the round's, so every round replaces every table.
fn random_table(
    args: &Args,
    pool: &[memds_proto::StorageNode],
    index: usize,
    round: usize,
) -> TableMap {
    const AZS: usize = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(
        args.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((round as u64) << 48),
    );
    let mut starts = vec![0u64];
    while starts.len() < args.partitions {
        let missing = args.partitions - starts.len();
        starts.extend((0..missing).map(|_| rng.random::<u64>()));
        starts.sort_unstable();
        starts.dedup();
    }
    let mut ids: Vec<u64> = (1..=args.partitions as u64).collect();
    ids.shuffle(&mut rng);
    let per_az = pool.len() / AZS;
    let partitions = starts
        .iter()
        .zip(ids)
        .map(|(&start, id)| {
            let mut replicas = [NodeId::new(0); AZS];
            for (az, r) in replicas.iter_mut().enumerate() {
                // Node `g` of the pool is in zone `g % AZS` and has id `g + 1`.
                let g = rng.random_range(0..per_az) * AZS + az;
                *r = NodeId::new(g as u32 + 1);
            }
            Partition {
                id: PartitionId::new(id),
                start,
                epoch: Epoch::new(rng.random_range(1..=1_000)),
                replicas: Replicas::new(&replicas).expect("one node per zone, so distinct"),
                leader: rng.random_range(0..AZS as u8),
            }
        })
        .collect();
    TableMap::new(
        TableName::new(&synth::table_name(index)).expect("synthetic names are short"),
        TableVersion::new(round as u64 + 1),
        pool.to_vec(),
        partitions,
    )
    .expect("random maps are built valid")
}

/// `memds-server` in the directory of this executable (`target/release` after
/// `cargo build --release -p memds-server --bins`).
pub(crate) fn default_server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let bin = exe
        .parent()
        .context("this executable has no directory")?
        .join("memds-server");
    ensure!(
        bin.is_file(),
        "{} does not exist: build it (cargo build --release -p memds-server --bins) or pass \
         --server-bin",
        bin.display()
    );
    Ok(bin)
}

/// A running `memds-server` child process, stopped when dropped.
pub(crate) struct ServerProcess {
    /// The process started: the server, or the wrapper it runs under.
    child: Child,
    /// The server's own process id (the child's, without a wrapper).
    pub(crate) pid: u32,
    pub(crate) quic: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) tls_dir: PathBuf,
}

impl ServerProcess {
    /// Starts the server on loopback port 0 over `data_dir` and reads its announcement.
    /// `wrapper` is a command the server runs under (split on spaces), `extra` more arguments
    /// for the server.
    pub(crate) fn spawn(
        server_bin: &Path,
        data_dir: &Path,
        wrapper: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let wrapper: Vec<&str> = wrapper
            .map(|w| w.split_whitespace().collect())
            .unwrap_or_default();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(server_bin);
                cmd
            }
            None => Command::new(server_bin),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--scrub-interval-secs", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", server_bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The guard owns the child from here: any error below stops it.
        let mut server = Self {
            pid: child.id(),
            child,
            quic: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_dir: PathBuf::new(),
        };
        let mut lines = BufReader::new(stdout);
        let announcement = loop {
            let mut line = String::new();
            let n = lines
                .read_line(&mut line)
                .context("reading the server's announcement")?;
            if n == 0 {
                bail!("the server exited before announcing its addresses");
            }
            // A wrapper may print lines of its own first.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v.get("quic").is_some()
            {
                break v;
            }
        };
        // Nothing else is expected on stdout, but a wrapper may write more: keep draining it so
        // no writer ever blocks or fails on a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        let field = |key: &str| {
            announcement[key]
                .as_str()
                .with_context(|| format!("the announcement has no {key}: {announcement}"))
        };
        server.quic = field("quic")?.parse().context("parsing the QUIC address")?;
        server.metrics = field("metrics")?
            .parse()
            .context("parsing the metrics address")?;
        server.tls_dir = PathBuf::from(field("tls_dir")?);
        if !wrapper.is_empty() {
            server.pid = descendant_named(server.child.id(), "memds-server")
                .context("finding the memds-server process under the wrapper")?;
        }
        Ok(server)
    }

    /// Stops the server (SIGTERM, so it shuts down cleanly and a wrapper can finish its work;
    /// SIGKILL after 60 seconds) and waits for it.
    pub(crate) fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let signalled = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while signalled && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// RSS figures of a process, in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rss {
    pub(crate) rss: u64,
    peak: u64,
}

/// `VmRSS` and `VmHWM` of process `pid`, from `/proc/<pid>/status`.
pub(crate) fn read_rss(pid: u32) -> anyhow::Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parsing {name}{line}"))?;
        Ok(kib * 1024)
    };
    Ok(Rss {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The server's `memds_resident_bytes` gauge, from its `/metrics` endpoint.
fn resident_bytes(metrics: SocketAddr) -> anyhow::Result<u64> {
    let text = scrape(metrics)?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("memds_resident_bytes "))
        .with_context(|| format!("{metrics}/metrics has no memds_resident_bytes"))?;
    let v: f64 = value
        .trim()
        .parse()
        .with_context(|| format!("parsing memds_resident_bytes {value}"))?;
    Ok(v as u64)
}

/// The body of `GET /metrics` (HTTP/1.1, connection closed after the answer).
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr} for metrics"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the metrics answer")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the metrics answer has no header end")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the metrics endpoint answered {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// The process id of the first process named `name` among `root`'s descendants (a breadth
/// first walk of `/proc`), retried for a few seconds while the wrapper starts it.
fn descendant_named(root: u32, name: &str) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut children: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so split at the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_owned();
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push((pid, comm));
            }
        }
        let mut queue = VecDeque::from([root]);
        while let Some(pid) = queue.pop_front() {
            for (child, comm) in children.get(&pid).into_iter().flatten() {
                if comm == name {
                    return Ok(*child);
                }
                queue.push_back(*child);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no process named {name} under {root}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_table(r: &Report) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "{} tables x {} partitions, {} rounds, {} nodes; baseline RSS {:.1} MiB",
        r.tables,
        r.partitions_per_table,
        r.rounds,
        r.nodes,
        r.baseline_rss_bytes as f64 / MIB
    );
    println!("round   put s    RSS MiB   peak MiB  resident MiB  RSS growth B/partition");
    for x in &r.per_round {
        println!(
            "{:>5} {:>7.1} {:>10.1} {:>10.1} {:>13.1} {:>23.1}",
            x.round,
            x.put_seconds,
            x.rss_bytes as f64 / MIB,
            x.peak_rss_bytes as f64 / MIB,
            x.resident_bytes as f64 / MIB,
            x.rss_growth_per_partition
        );
    }
    if let Some(rss) = r.restart_rss_bytes {
        println!("after a restart: RSS {:.1} MiB", rss as f64 / MIB);
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "growth after the first load: {:.1} B/partition (target <= {}): {}",
        r.growth_per_partition_first,
        r.target_growth_per_partition,
        verdict(r.growth_target_met)
    );
    println!(
        "RSS last / first: {:.3} (target <= {}): {}",
        r.last_over_first,
        r.target_last_over_first,
        verdict(r.last_over_first_target_met)
    );
}
