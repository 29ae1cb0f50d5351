//! `loadgen bench-server`: lookup throughput per server CPU-second, with Redis as the baseline
//! measured in the same run.
//!
//! The server is embedded by default: a real MemDS server started in this process on its own
//! runtime threads, reached over QUIC on loopback like any other. Its CPU time is read from the
//! operating system per thread (`/proc/self/task/*/stat`, the threads named `memds-srv`), so the
//! load generator's own work is not counted. With `--servers` the load goes to external servers
//! and their CPU time comes from their `stats` answers (process CPU from `/proc`).
//!
//! The load: `--concurrency` tasks over `--connections` connections, each keeping one batch
//! lookup of `--batch` random hashes in flight, for `--duration` seconds after a warm-up. Server
//! lookups are counted by the servers themselves.
//!
//! The baseline (`--redis`): a `redis-server` started on a free loopback port, loaded by
//! `redis-benchmark -t get -P 16` (pipelined 16 deep), its CPU read from `/proc/<pid>/stat`
//! over the same kind of window. Both figures are GETs or lookups per server CPU-second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::synth::{self, SynthConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::embedded::{Embedded, SERVER_THREAD, stat_ticks, threads_cpu_seconds};
use crate::histogram;

/// Options of `bench-server`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// External servers to load instead of the embedded one (comma-separated).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<SocketAddr>,
    /// TLS directory with the admin certificate (external servers).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Concurrent request loops, each with one batch in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Hashes per batch lookup (1 sends single lookups).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Connections per server.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Partitions of the table loaded.
    #[arg(long, default_value_t = 1_000_000)]
    partitions: usize,
    /// Seed of the map and the hashes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also measure Redis GET pipelined 16 deep (needs redis-server and redis-benchmark).
    #[arg(long)]
    redis: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `bench-server --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    servers: usize,
    partitions: usize,
    concurrency: usize,
    batch: usize,
    duration_s: f64,
    lookups: u64,
    lookups_per_s: f64,
    server_cpu_seconds: f64,
    lookups_per_server_cpu_s: f64,
    p50_us: f64,
    p99_us: f64,
    redis_gets_per_s: Option<f64>,
    redis_cpu_seconds: Option<f64>,
    redis_gets_per_server_cpu_s: Option<f64>,
    vs_redis: Option<f64>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.concurrency >= 1 && args.batch >= 1 && args.connections >= 1,
        "--concurrency, --batch and --connections must be at least 1"
    );
    ensure!(args.duration > 0.0, "--duration must be positive");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-cli")
        .enable_all()
        .build()?;
    let (embedded, addrs, tls_dir) = if args.servers.is_empty() {
        let e = Embedded::start(2)?;
        let (addr, tls) = (e.addr(), e.tls_dir());
        (Some(e), vec![addr], tls)
    } else {
        let tls = args
            .tls_dir
            .clone()
            .context("--servers needs --tls-dir with the admin certificate")?;
        (None, args.servers.clone(), tls)
    };
    let result = client_rt.block_on(drive(args, &addrs, &tls_dir, embedded.is_some()));
    if let Some(e) = embedded {
        e.stop();
    }
    let mut report = result?;
    if args.redis {
        let redis = redis_baseline(args.duration, 16, 50, 200_000)
            .context("measuring the Redis baseline")?;
        report.redis_gets_per_s = Some(redis.0);
        report.redis_cpu_seconds = Some(redis.1);
        let per_cpu = redis.2;
        report.redis_gets_per_server_cpu_s = Some(per_cpu);
        report.vs_redis = Some(report.lookups_per_server_cpu_s / per_cpu);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn drive(
    args: &Args,
    addrs: &[SocketAddr],
    tls_dir: &std::path::Path,
    embedded: bool,
) -> anyhow::Result<Report> {
    let tls = ClientTls::from_dir(tls_dir, Role::Admin).context("loading the admin certificate")?;
    let connector = Connector::new(&tls, ConnectOptions::default())?;
    let mut clients = Vec::new();
    for &addr in addrs {
        for _ in 0..args.connections {
            clients.push(
                connector
                    .connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?,
            );
        }
    }
    let map = synth::generate_table(
        &SynthConfig {
            partitions: args.partitions,
            seed: args.seed,
            ..SynthConfig::default()
        },
        0,
    );
    let table = map.name().as_str().to_owned();
    for (i, &addr) in addrs.iter().enumerate() {
        let c = &clients[i * args.connections];
        match c.put_table(&map).await {
            Ok(_) => {}
            Err(memds_client::ClientError::Server(e))
                if e.code == memds_proto::wire::ErrorCode::Conflict
                    || e.code == memds_proto::wire::ErrorCode::Stale =>
            {
                bail!("{addr} already holds {table} with other content: {e}")
            }
            Err(e) => return Err(e).with_context(|| format!("loading the map into {addr}")),
        }
    }
    drop(map);

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let client = clients[i % clients.len()].clone();
        let (stop, measuring, done, table) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&done),
            table.clone(),
        );
        let batch = args.batch;
        let seed = args.seed ^ (i as u64 + 1);
        tasks.push(tokio::spawn(async move {
            load_loop(client, table, batch, seed, stop, measuring, done).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server_counters(embedded, &clients, args.connections).await?;
    let started = Instant::now();
    measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let after = server_counters(embedded, &clients, args.connections).await?;
    stop.store(true, Ordering::SeqCst);
    let mut hist = histogram::latency();
    for t in tasks {
        hist.add(t.await.context("a load task failed")??)?;
    }
    for c in &clients {
        c.close();
    }
    let lookups = after.0 - before.0;
    let cpu = after.1 - before.1;
    ensure!(cpu > 0.0, "the server used no measurable CPU; run longer");
    Ok(Report {
        servers: addrs.len(),
        partitions: args.partitions,
        concurrency: args.concurrency,
        batch: args.batch,
        duration_s: elapsed,
        lookups,
        lookups_per_s: lookups as f64 / elapsed,
        server_cpu_seconds: cpu,
        lookups_per_server_cpu_s: lookups as f64 / cpu,
        p50_us: hist.value_at_quantile(0.5) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
        redis_gets_per_s: None,
        redis_cpu_seconds: None,
        redis_gets_per_server_cpu_s: None,
        vs_redis: None,
    })
}

/// One request loop: a batch in flight at a time; records per-request latency while measuring.
pub(crate) async fn load_loop(
    client: Client,
    table: String,
    batch: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut hist = histogram::latency();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if batch == 1 {
            client.lookup(&table, rng.random()).await?;
        } else {
            let hashes: Vec<u64> = (0..batch).map(|_| rng.random()).collect();
            client.batch_lookup(&table, hashes).await?;
        }
        if measuring.load(Ordering::Relaxed) {
            hist.saturating_record(started.elapsed().as_micros() as u64);
        }
        done.fetch_add(batch as u64, Ordering::Relaxed);
    }
    Ok(hist)
}

/// (lookups the servers counted, server CPU seconds).
async fn server_counters(
    embedded: bool,
    clients: &[Client],
    per_server: usize,
) -> anyhow::Result<(u64, f64)> {
    let mut lookups = 0;
    let mut cpu = 0.0;
    for c in clients.iter().step_by(per_server) {
        let s = c.stats().await.context("reading server stats")?;
        lookups += s.lookups_total;
        cpu += s.cpu_seconds;
    }
    if embedded {
        cpu = threads_cpu_seconds(SERVER_THREAD)?;
    }
    Ok((lookups, cpu))
}

/// (GETs per second, redis-server CPU seconds, GETs per redis-server CPU-second), from
/// `redis-benchmark -t get -P pipeline -c clients` run for about `duration` seconds (sized by a
/// probe of `probe` GETs first).
/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
pub(crate) struct RedisServer {
    child: std::process::Child,
    pub(crate) port: u16,
    pub(crate) pid: u32,
}

impl RedisServer {
    /// Starts one and waits until it accepts connections.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let pid = child.id();
        let server = RedisServer { child, port, pid };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "redis-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Its CPU seconds so far (user + system, from `/proc`).
    pub(crate) fn cpu(&self) -> anyhow::Result<f64> {
        process_cpu(self.pid)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn redis_baseline(
    duration: f64,
    pipeline: u32,
    clients: u32,
    probe: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let server = RedisServer::start()?;
    let port = server.port;
    let bench = |test: &str, n: u64| -> anyhow::Result<()> {
        let status = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                test,
                "-P",
                &pipeline.to_string(),
                "-c",
                &clients.to_string(),
                "-q",
                "-n",
                &n.to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .context("running redis-benchmark (apt-get install redis-tools)")?;
        ensure!(status.success(), "redis-benchmark failed");
        Ok(())
    };
    bench("set", 100_000)?;
    // Size the run to about `duration` seconds: a short probe first.
    let t = Instant::now();
    bench("get", probe)?;
    let rate = probe as f64 / t.elapsed().as_secs_f64();
    let n = ((rate * duration) as u64).max(probe);
    let cpu_before = server.cpu()?;
    let t = Instant::now();
    bench("get", n)?;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = server.cpu()? - cpu_before;
    ensure!(cpu > 0.0, "redis-server used no measurable CPU");
    Ok((n as f64 / elapsed, cpu, n as f64 / cpu))
}

fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading redis-server's stat")?;
    Ok(stat_ticks(&stat).context("parsing redis-server's stat")? as f64 / 100.0)
}

fn print_table(r: &Report) {
    println!(
        "{} server(s), {} partitions, {} loops x batch {}, {:.1} s measured",
        r.servers, r.partitions, r.concurrency, r.batch, r.duration_s
    );
    println!("lookups/s              {:>14.0}", r.lookups_per_s);
    println!("server CPU seconds     {:>14.2}", r.server_cpu_seconds);
    println!(
        "lookups/server CPU-s   {:>14.0}",
        r.lookups_per_server_cpu_s
    );
    println!("request p50 / p99 us   {:>7.0} / {:.0}", r.p50_us, r.p99_us);
    if let (Some(per_cpu), Some(ratio)) = (r.redis_gets_per_server_cpu_s, r.vs_redis) {
        println!(
            "redis GETs/server CPU-s{:>14.0}  (pipelined 16 deep)",
            per_cpu
        );
        println!("MemDS / Redis          {:>14.2}", ratio);
    }
}
