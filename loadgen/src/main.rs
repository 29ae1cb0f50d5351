//! # loadgen
//!
//! The MemDS experiment and benchmark harness.
//!
//! # Layout
//!
//! - `experiment`: `loadgen experiment`, the main job: constant-work vs classic caching under
//!   failures, open-loop load from real router caches against a real fleet. A directory, one
//!   file per part:
//!   - `experiment/mod.rs`: the options, `run` (every scenario in every mode, then the report)
//!     and `run_one`, one run as a sequence of named steps;
//!   - `experiment/results`: what a run produces, the types of results.json (`RunResult`,
//!     `Replication`, `ServerState`, `Warmup`, `Sample`, ...), which `report` reads;
//!   - `experiment/fleet`: the run's servers (embedded or `--servers`), their admin
//!     connections, and the `Pusher` that sends each change to one server;
//!   - `experiment/authority`: the map's owner: splits, publication, the background churn, and
//!     the storage nodes' check of a route;
//!   - `experiment/routers`: the simulated routers (real router caches), started warm or cold;
//!   - `experiment/load`: the open-loop load, one request as a router plays it, the `Meter`;
//!   - `experiment/sampling`: the sampling loop, the trigger halfway, the summary of a run;
//!   - `experiment/triggers`: what each scenario does at the trigger.
//! - `report`: the experiment's outputs: results.json, PNG and SVG plots, report.html, the
//!   terminal table. It reads `experiment::results` only.
//! - `bench_map`: `loadgen bench-map`, memory and lookup cost of the compact partition-map
//!   encoding against the naive design and zstd, measured in one run.
//! - `bench_server`: `loadgen bench-server`, lookups per server CPU-second over QUIC against
//!   Redis GET pipelined 16 deep, both measured in the same run.
//! - `bench_cost`: `loadgen bench-cost`, what constant work costs per request in steady state
//!   (server CPU per lookup, router CPU per refresh, lookups per frame, miss latency) against a
//!   real `memds-server` process at several router counts and rates, in both modes, beside the
//!   batched figure and Redis GET without pipelining.
//! - `bench_cache`: `loadgen bench-cache`, the router cache's hit path against moka and
//!   quick_cache gets, in one run.
//! - `bench_server_memory`: `loadgen bench-server-memory`, the RSS of a real `memds-server`
//!   process while its tables are put again and again, against its own resident estimate.
//! - `bench_fleet`: `loadgen bench-fleet`, replication between peers: the time until a write sent
//!   to one server is held by the two others, and a new server's time to ready (and bytes pulled)
//!   at 1M and 10M partitions.
//! - `embedded`: real servers started in-process on their own named threads, alone or as a fleet
//!   of peers.
//! - `metrics_listen`: `--metrics-listen ADDR` of `experiment` and `bench-cache`: the router
//!   caches' `memds_router_*` series (each cache with its own `router` label) on
//!   `http://ADDR/metrics` while the run lasts, for Prometheus and the routers' Grafana
//!   dashboard; the address bound is printed on stderr, also as `{"metrics_listen":"IP:PORT"}`.
//! - `alloc`: the counting global allocator the memory figures come from.

mod alloc;
mod bench_cache;
mod bench_cost;
mod bench_fleet;
mod bench_map;
mod bench_server;
mod bench_server_memory;
mod embedded;
mod experiment;
mod histogram;
mod metrics_listen;
mod report;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// What `--version` prints: the build, the protocol versions and the snapshot format.
static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    memds_proto::versions::version_text(&memds_proto::versions::info(vec![
        memds_proto::versions::snapshot_format(),
    ]))
});

/// MemDS experiments and benchmarks.
#[derive(Debug, Parser)]
#[command(version, long_version = LONG_VERSION.as_str(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The bimodality experiment: constant-work vs classic caching under cache flushes,
    /// scale-outs, invalidation storms and server loss, with a report and plots.
    Experiment(experiment::Args),
    /// Memory per partition and lookup latency of the compact map encoding, against a naive
    /// Vec of structs and against zstd, in one run.
    BenchMap(bench_map::Args),
    /// Lookups per server CPU-second over QUIC (embedded or external servers), with Redis GET
    /// pipelined 16 deep as the baseline measured in the same run.
    BenchServer(bench_server::Args),
    /// What constant work costs per request in steady state: a real memds-server process and
    /// router caches at several router counts and rates, in ConstantWork and Classic mode
    /// (server CPU per lookup, router CPU per refresh, lookups per frame, miss latency), beside
    /// the batched figure and Redis GET without pipelining, in one run.
    BenchCost(bench_cost::Args),
    /// Hit-path latency of the router cache (ConstantWork, enqueue included) next to moka and
    /// quick_cache gets on the same keys, in one run.
    BenchCache(bench_cache::Args),
    /// RSS of a real memds-server process after each round of puts of every table, beside its
    /// memds_resident_bytes, and after a restart.
    BenchServerMemory(bench_server_memory::Args),
    /// Replication between embedded peers: time until a write sent to one server is held by
    /// both others (p50/p99), and a new server's time to ready and bytes pulled at 1M and 10M
    /// partitions.
    BenchFleet(bench_fleet::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Experiment(args) => experiment::run(&args),
        Command::BenchMap(args) => bench_map::run(&args),
        Command::BenchServer(args) => bench_server::run(&args),
        Command::BenchCost(args) => bench_cost::run(&args),
        Command::BenchCache(args) => bench_cache::run(&args),
        Command::BenchServerMemory(args) => bench_server_memory::run(&args),
        Command::BenchFleet(args) => bench_fleet::run(&args),
    }
}
