//! `memds-ctl`: the admin and lookup command line of a MemDS server or fleet.
//!
//! Results are JSON on stdout; errors go to stderr with a non-zero exit status (1 for any
//! failure, 2 for bad usage). With `--tls-dir` it presents the certificate of one role
//! (`--role`, admin unless told) of a TLS directory; `--cert`, `--key` and `--ca` (given before
//! the subcommand, as in `memds-ctl --cert c.pem --key k.pem --ca ca.pem stats`) override
//! single files.
//!
//! # Servers
//!
//! `--server` names one server or several (comma-separated, repeatable): each `IP:port` or
//! `host:port`. A name is resolved, and stands for every address it resolves to (a Kubernetes
//! headless service names each pod), of one family: IPv4 if it has any, else IPv6, so a
//! dual-stack pod is not counted twice. The certificate must carry `--server-name` if given,
//! else the host part of a name, else `localhost`. With one server, every command prints
//! exactly what it always did. With several:
//!
//! - Writes (`put-table`, `update-partitions`, `update-batch`, `drop-table`) follow
//!   `--write-to`. `all` (the default) sends the write to every server at once and prints one
//!   line per server, `{"server": ADDR, "ok": true, "ack": {...}}` or `{"server": ADDR, "ok":
//!   false, "error": "..."}`, exiting 1 if any failed. A server that already holds the write
//!   (replication brought it first) acknowledges it with `"applied": false`, which is ok.
//!   `one` sends it to the first server that takes it (the next is tried on a connection
//!   failure, a timeout or `unavailable`; every write is idempotent, so a retry elsewhere is
//!   safe), prints that server's line, and leaves the rest to replication.
//! - `stats` and `tables` print one line per server: `{"server": ADDR, "ok": true, "stats":
//!   {...}}` (or `"tables": [...]`), or the error; exit 1 if any failed.
//! - `get-table`, `lookup` and `explain` ask the first server that answers, skipping
//!   unreachable servers and those not ready (`unavailable`); `get-table` and `lookup` print
//!   as with one server and name the server that answered on stderr.
//!
//! # Fleet commands
//!
//! `memds-ctl fleet-status` asks every server at once for its summary and counters, and prints
//! one JSON object: `servers` (per server: `reachable`, `error`, `ready`, `build`,
//! `uptime_seconds`, `instance`, `tables`, `partitions`, `connections`, `lagging`, and per
//! table `version`, `digest`, `dropped` and `lag`, the newest version any reachable server holds
//! minus this one's, a missing table lagging by all of it), `tables` (per table
//! `newest_version`, `dropped`, `servers_at_newest`, `lagging`, and `digests_agree`: servers at
//! the same version hold the same content), and `healthy` (every server reachable and ready,
//! none lagging, digests agreeing). `--format table` prints aligned tables instead. It exits 1
//! if a server is unreachable, after printing.
//!
//! `memds-ctl explain --table T --key K` (or `--hash H`) shows where a key lives: its hash
//! (XXH3-64, seed 0), the partition holding it with its bounds, epoch, leader and replicas
//! (ids, addresses, zones), the table version, and which server answered (as given and as
//! resolved), with the servers skipped and why. `--format text` prints a readable block.
//!
//! `memds-ctl pki` issues a fleet's certificates without talking to any server: a cluster CA
//! (`create-ca`), server certificates (`create-server`) and client certificates of one role
//! (`create-client`), each under the CA kept in the same directory.
//!
//! # Layout
//!
//! - `main.rs`: the command line (`Cli`, `Command`), `main`, and the dispatch of each command
//!   to one server or to several.
//! - `servers`: `--server` entries resolved to `Target`s (addresses, certificate names, QUIC
//!   endpoints), the TLS material, connecting, and the timeout every request is held to.
//! - `fanout`: asking every server at once, or the first one that answers, and which failures
//!   let another server be tried.
//! - `writes`: the admin writes (`put-table`, `update-partitions`, `update-batch`,
//!   `drop-table`) read from their files and sent to all servers or to the first that takes
//!   them; a drop without a version drops the newest version any of the servers holds.
//! - `reads`: `get-table` and `lookup`, and the route resolution `explain` shares.
//! - `fleet_status`: gathering every server's summary and counters, comparing their tables,
//!   and the aligned-table rendering.
//! - `explain`: where one key lives, as JSON or a readable block.
//! - `pki`: issuing the CA, server and client certificates.
//! - `output`: the per-server JSON lines and the column alignment shared by the text formats.

mod explain;
mod fanout;
mod fleet_status;
mod output;
mod pki;
mod reads;
mod servers;
mod writes;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use memds_client::{Client, Role};
use memds_server::tls::ClientRole;

use crate::explain::explain;
use crate::fanout::{first_answering, on_each};
use crate::fleet_status::fleet_status;
use crate::output::print_lines;
use crate::pki::run_pki;
use crate::reads::{get_table, lookup, lookup_hashes};
use crate::servers::{Target, connect, load_tls, resolve_targets, with_timeout};
use crate::writes::{WriteOp, write_to_all, write_to_one};

/// What `--version` prints: the build, the protocol versions and the snapshot format.
static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    memds_proto::versions::version_text(&memds_proto::versions::info(vec![
        memds_proto::versions::snapshot_format(),
    ]))
});

/// Admin and lookup commands for a MemDS server or fleet.
#[derive(Debug, Parser)]
#[command(name = "memds-ctl", version, long_version = LONG_VERSION.as_str(), about)]
struct Cli {
    /// The servers' QUIC addresses, `IP:port` or `host:port`, comma-separated or repeated; a
    /// name stands for every address it resolves to.
    #[arg(
        long,
        default_value = "127.0.0.1:7400",
        global = true,
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// TLS directory: its `ca.pem` and the certificate of `--role` are used.
    #[arg(long, default_value = "memds-data/tls", global = true)]
    tls_dir: PathBuf,
    /// Which identity of `--tls-dir` to present.
    #[arg(long, value_enum, default_value_t = RoleArg::Admin, global = true)]
    role: RoleArg,
    /// Client certificate chain (PEM), instead of the TLS directory's certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA the server's certificate must chain to.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the servers' certificates must carry [default: the host part of a `host:port`
    /// server, `localhost` for an address].
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Where a write goes when several servers are given: every one of them, or the first
    /// that takes it (replication carries it to the rest).
    #[arg(long, value_enum, default_value_t = WriteTo::All, global = true)]
    write_to: WriteTo,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

/// The `--write-to` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum WriteTo {
    /// Every server given, at once.
    All,
    /// The first server given that takes the write.
    One,
}

/// The `fleet-status --format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StatusFormat {
    /// One JSON object.
    Json,
    /// Aligned tables for people.
    Table,
}

/// The `explain --format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExplainFormat {
    /// One JSON object.
    Json,
    /// A readable block.
    Text,
}

/// The `--role` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// Reads only.
    Router,
    /// Reads and writes.
    Admin,
    /// Another server of the fleet.
    Peer,
}

impl RoleArg {
    fn client(self) -> Role {
        match self {
            RoleArg::Router => Role::Router,
            RoleArg::Admin => Role::Admin,
            RoleArg::Peer => Role::Peer,
        }
    }

    fn server(self) -> ClientRole {
        match self {
            RoleArg::Router => ClientRole::Router,
            RoleArg::Admin => ClientRole::Admin,
            RoleArg::Peer => ClientRole::Peer,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issue certificates (no server involved).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Store a whole table from a file in the JSON ingestion format.
    PutTable {
        /// The table's JSON.
        file: PathBuf,
    },
    /// Replace the partitions of a range (JSON: table, base_version, version, end_inclusive,
    /// nodes, partitions).
    UpdatePartitions {
        /// The update's JSON.
        file: PathBuf,
    },
    /// Replace the partitions of many ranges of one table at once, atomically at one new
    /// version (JSON: table, base_version, version, nodes, and ranges: a list of
    /// {end_inclusive, partitions}, sorted by start and disjoint).
    UpdateBatch {
        /// The batch's JSON.
        file: PathBuf,
    },
    /// Remove a table, leaving a tombstone: a later put of the name needs a higher version.
    DropTable {
        /// The table.
        table: String,
        /// Drop this version (refused if the server holds a newer one; recorded as the
        /// tombstone even where it holds an older one or none). Without it, the newest version
        /// any of the servers given holds, so that the drop does what it would on any of them.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Print a table in the JSON ingestion format.
    GetTable {
        /// The table.
        table: String,
    },
    /// List the tables.
    Tables,
    /// Print the server's counters.
    Stats,
    /// Look routes up: one key or hash, or a file of hashes (one per line, one route per
    /// output line, same order).
    Lookup {
        /// The table.
        #[arg(long)]
        table: String,
        /// A partition key (hashed with XXH3-64, seed 0).
        #[arg(long, conflicts_with_all = ["hash", "hashes_file"])]
        key: Option<String>,
        /// A key hash.
        #[arg(long, conflicts_with = "hashes_file")]
        hash: Option<u64>,
        /// A file with one hash per line.
        #[arg(long)]
        hashes_file: Option<PathBuf>,
    },
    /// Every server's health, build, uptime, readiness and table versions, each table's lag
    /// and whether the servers agree (exit status 1 if a server is unreachable).
    FleetStatus {
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Json)]
        format: StatusFormat,
    },
    /// Where a key lives: its hash, partition, bounds, epoch, leader and replicas, and the
    /// server that answered.
    Explain {
        /// The table.
        #[arg(long)]
        table: String,
        /// A partition key (hashed with XXH3-64, seed 0).
        #[arg(long, conflicts_with = "hash", required_unless_present = "hash")]
        key: Option<String>,
        /// A key hash.
        #[arg(long)]
        hash: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Json)]
        format: ExplainFormat,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key.
    #[command(name = "create-ca")]
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "MemDS CA")]
        name: String,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
    },
    /// Create a server certificate signed by DIR's CA: DIR/server.pem and DIR/server.key
    /// (with the peer role, for dialing the other servers of the fleet).
    #[command(name = "create-server")]
    Server {
        /// Directory holding ca.pem and ca.key, and where to write.
        #[arg(long)]
        dir: PathBuf,
        /// DNS names and IP addresses the server is reached by.
        #[arg(long = "host", required = true, num_args = 1..)]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
    },
    /// Create a client certificate with one role, signed by DIR's CA: DIR/<role>.pem and
    /// DIR/<role>.key.
    #[command(name = "create-client")]
    Client {
        /// Directory holding ca.pem and ca.key, and where to write.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The certificate's common name [default: memds-<role>].
        #[arg(long)]
        name: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Pki(command) = &cli.command {
        return match run_pki(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memds-ctl: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("memds-ctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memds-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(cli.timeout_secs);
    let tls = load_tls(&cli)?;
    let targets = resolve_targets(&cli.server, cli.server_name.as_deref(), &tls).await?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let code = match cli.command {
        Command::Pki(_) => bail!("pki commands do not connect to a server"),
        Command::FleetStatus { format } => {
            let status = fleet_status(&targets, timeout).await;
            match format {
                StatusFormat::Json => writeln!(out, "{}", serde_json::to_string(&status)?)?,
                StatusFormat::Table => write!(out, "{}", status.table())?,
            }
            if status.servers.iter().all(|s| s.reachable) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Explain {
            table,
            key,
            hash,
            format,
        } => {
            let explanation = explain(&targets, timeout, &table, key, hash).await?;
            match format {
                ExplainFormat::Json => writeln!(out, "{}", serde_json::to_string(&explanation)?)?,
                ExplainFormat::Text => write!(out, "{}", explanation.text())?,
            }
            ExitCode::SUCCESS
        }
        command if targets.len() == 1 => {
            run_one(command, &targets[0], timeout, &mut out).await?;
            ExitCode::SUCCESS
        }
        command => run_many(command, &targets, cli.write_to, timeout, &mut out).await?,
    };
    out.flush()?;
    Ok(code)
}

/// One server: what `memds-ctl` has always printed.
async fn run_one(
    command: Command,
    target: &Target,
    timeout: Duration,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    if let Some(write) = WriteOp::load(&command)? {
        let write = write
            .resolved(std::slice::from_ref(target), timeout)
            .await?;
        let client = connect(target, timeout).await?;
        let ack = write.send(&client, timeout).await?;
        writeln!(out, "{}", serde_json::to_string(&ack)?)?;
        client.close();
        return Ok(());
    }
    let client = connect(target, timeout).await?;
    match command {
        Command::GetTable { table } => {
            writeln!(out, "{}", get_table(&client, &table, timeout).await?)?;
        }
        Command::Tables => {
            let tables = with_timeout(timeout, client.list_tables())
                .await
                .context("tables")?;
            writeln!(out, "{}", serde_json::to_string(&tables)?)?;
        }
        Command::Stats => {
            let stats = with_timeout(timeout, client.stats())
                .await
                .context("stats")?;
            writeln!(out, "{}", serde_json::to_string(&stats)?)?;
        }
        Command::Lookup {
            table,
            key,
            hash,
            hashes_file,
        } => {
            let hashes = lookup_hashes(key, hash, hashes_file)?;
            for line in lookup(&client, &table, &hashes, timeout).await? {
                writeln!(out, "{line}")?;
            }
        }
        Command::Pki(_)
        | Command::FleetStatus { .. }
        | Command::Explain { .. }
        | Command::PutTable { .. }
        | Command::UpdatePartitions { .. }
        | Command::UpdateBatch { .. }
        | Command::DropTable { .. } => bail!("not a single-server read command"),
    }
    client.close();
    Ok(())
}

/// Several servers: writes per `--write-to`, per-server lines for `stats` and `tables`, the
/// first server that answers for `get-table` and `lookup`.
async fn run_many(
    command: Command,
    targets: &[Target],
    write_to: WriteTo,
    timeout: Duration,
    out: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    if let Some(write) = WriteOp::load(&command)? {
        let write = write.resolved(targets, timeout).await?;
        return match write_to {
            WriteTo::All => write_to_all(write, targets, timeout, out).await,
            WriteTo::One => write_to_one(&write, targets, timeout, out).await,
        };
    }
    match command {
        Command::Stats => {
            let results = on_each(targets, timeout, move |client| async move {
                with_timeout(timeout, client.stats()).await.context("stats")
            })
            .await;
            print_lines(out, targets, results, "stats")
        }
        Command::Tables => {
            let results = on_each(targets, timeout, move |client| async move {
                with_timeout(timeout, client.list_tables())
                    .await
                    .context("tables")
            })
            .await;
            print_lines(out, targets, results, "tables")
        }
        Command::GetTable { table } => {
            let answered = first_answering(targets, timeout, async |client: Client| {
                get_table(&client, &table, timeout).await
            })
            .await?;
            answered.note();
            writeln!(out, "{}", answered.value)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lookup {
            table,
            key,
            hash,
            hashes_file,
        } => {
            let hashes = lookup_hashes(key, hash, hashes_file)?;
            // The lines are printed only once one server has answered them all, so a server
            // failing half-way leaves no partial output before the next one's.
            let answered = first_answering(targets, timeout, async |client: Client| {
                lookup(&client, &table, &hashes, timeout).await
            })
            .await?;
            answered.note();
            for line in &answered.value {
                writeln!(out, "{line}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(_)
        | Command::FleetStatus { .. }
        | Command::Explain { .. }
        | Command::PutTable { .. }
        | Command::UpdatePartitions { .. }
        | Command::UpdateBatch { .. }
        | Command::DropTable { .. } => bail!("not a fleet read command"),
    }
}
