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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use memds_client::tls::CA_CERT;
use memds_client::{Client, ClientError, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::wire::{
    BatchUpdate, ErrorCode, PartitionUpdate, Routes, ServerStats, Summary, WriteAck,
};
use memds_proto::{Route, TableMap, TableName, key_hash};
use memds_server::tls::{self as pki, ClientRole, IfExists, Issued};
use serde::Serialize;

/// Admin and lookup commands for a MemDS server or fleet.
#[derive(Debug, Parser)]
#[command(version, about)]
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
        /// tombstone even where it holds an older one or none).
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
    let client = connect(target, timeout).await?;
    if let Some(write) = WriteOp::load(&command)? {
        let ack = write.send(&client, timeout).await?;
        writeln!(out, "{}", serde_json::to_string(&ack)?)?;
        client.close();
        return Ok(());
    }
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
        let write = Arc::new(write);
        return match write_to {
            WriteTo::All => {
                let results = on_each(targets, timeout, move |client| {
                    let write = Arc::clone(&write);
                    async move { write.send(&client, timeout).await }
                })
                .await;
                print_lines(out, targets, results, "ack")
            }
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

/// `--write-to one`: the first server that takes the write. A refusal (stale, conflict,
/// invalid) is the write's own fault, which no other server would take either: it ends the
/// command.
async fn write_to_one(
    write: &WriteOp,
    targets: &[Target],
    timeout: Duration,
    out: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    let answered = first_answering(targets, timeout, async |client: Client| {
        write.send(&client, timeout).await
    })
    .await?;
    answered.note_skipped();
    print_lines(
        out,
        std::slice::from_ref(answered.target),
        vec![Ok(answered.value)],
        "ack",
    )
}

/// Issues certificates and prints the files written as one JSON object.
fn run_pki(command: &PkiCommand) -> anyhow::Result<()> {
    let if_exists = |overwrite: bool| {
        if overwrite {
            IfExists::Overwrite
        } else {
            IfExists::Refuse
        }
    };
    let hint = |e: pki::PkiError| match e {
        pki::PkiError::Exists(_) => anyhow::anyhow!("{e} (pass --overwrite to replace it)"),
        e => e.into(),
    };
    let json = match command {
        PkiCommand::Ca {
            dir,
            name,
            overwrite,
        } => {
            let issued = pki::create_ca(dir, name, if_exists(*overwrite))
                .map_err(hint)
                .context("creating the CA")?;
            issued_json(&issued, serde_json::json!({"kind": "ca", "name": name}))
        }
        PkiCommand::Server {
            dir,
            hosts,
            overwrite,
        } => {
            let issued = pki::create_server_cert(dir, hosts, if_exists(*overwrite))
                .map_err(hint)
                .context("creating the server certificate")?;
            issued_json(
                &issued,
                serde_json::json!({
                    "kind": "server", "hosts": hosts, "role": ClientRole::Peer.as_str(),
                }),
            )
        }
        PkiCommand::Client {
            dir,
            role,
            name,
            overwrite,
        } => {
            let role = role.server();
            let issued = pki::create_client_cert(dir, role, name.as_deref(), if_exists(*overwrite))
                .map_err(hint)
                .with_context(|| format!("creating the {} certificate", role.as_str()))?;
            issued_json(
                &issued,
                serde_json::json!({"kind": "client", "role": role.as_str()}),
            )
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")?;
    out.flush()?;
    Ok(())
}

/// `fields` with the written files added.
fn issued_json(issued: &Issued, mut fields: serde_json::Value) -> serde_json::Value {
    fields["cert"] = issued.cert.display().to_string().into();
    fields["key"] = issued.key.display().to_string().into();
    fields
}

/// One server to talk to.
#[derive(Clone, Debug)]
struct Target {
    /// The `--server` entry it comes from, as given.
    given: String,
    /// The address connected to.
    addr: SocketAddr,
    /// The endpoint to connect from, configured with the name the server's certificate must
    /// carry.
    connector: Connector,
}

impl Target {
    /// How the server is named to people: its address, and the entry it came from if that was
    /// a name.
    fn label(&self) -> String {
        if self.given == self.addr.to_string() {
            self.given.clone()
        } else {
            format!("{} (given as {})", self.addr, self.given)
        }
    }
}

/// The TLS material of the role asked for.
fn load_tls(cli: &Cli) -> anyhow::Result<ClientTls> {
    let (cert_file, key_file) = cli.role.client().files();
    let ca = cli.ca.clone().unwrap_or_else(|| cli.tls_dir.join(CA_CERT));
    let cert = cli
        .cert
        .clone()
        .unwrap_or_else(|| cli.tls_dir.join(cert_file));
    let key = cli
        .key
        .clone()
        .unwrap_or_else(|| cli.tls_dir.join(key_file));
    ClientTls::from_files(&ca, Some((&cert, &key))).context("loading TLS material")
}

/// The servers the `--server` entries name, in the order given, each address once.
async fn resolve_targets(
    entries: &[String],
    server_name: Option<&str>,
    tls: &ClientTls,
) -> anyhow::Result<Vec<Target>> {
    // One endpoint per certificate name and address family: the name is fixed per endpoint,
    // and an endpoint bound to an IPv4 socket cannot reach an IPv6 address.
    let mut connectors: HashMap<(String, bool), Connector> = HashMap::new();
    let mut targets: Vec<Target> = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (addrs, host) = match entry.parse::<SocketAddr>() {
            Ok(addr) => (vec![addr], None),
            Err(_) => {
                let (host, port) = entry
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty() && !host.contains(':'))
                    .with_context(|| {
                        format!("--server {entry:?}: expected IP:port or host:port")
                    })?;
                let port: u16 = port
                    .parse()
                    .with_context(|| format!("--server {entry:?}: {port:?} is not a port"))?;
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("resolving {host}"))?
                    .collect();
                (one_family(found), Some(host))
            }
        };
        if addrs.is_empty() {
            bail!("--server {entry:?} resolved to no address");
        }
        let name = server_name.or(host).unwrap_or("localhost").to_owned();
        for addr in addrs {
            if targets.iter().any(|t| t.addr == addr) {
                continue;
            }
            let connector = match connectors.entry((name.clone(), addr.is_ipv6())) {
                std::collections::hash_map::Entry::Occupied(o) => o.get().clone(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let bind = if addr.is_ipv6() {
                        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
                    } else {
                        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
                    };
                    let options = ConnectOptions {
                        server_name: name.clone(),
                        bind,
                        ..ConnectOptions::default()
                    };
                    v.insert(Connector::new(tls, options).context("creating the QUIC endpoint")?)
                        .clone()
                }
            };
            targets.push(Target {
                given: entry.to_owned(),
                addr,
                connector,
            });
        }
    }
    if targets.is_empty() {
        bail!("--server names no server");
    }
    Ok(targets)
}

/// The addresses of one family, sorted: IPv4 if there are any, else IPv6. A dual-stack name
/// lists each server once per family, and a fleet must count each server once; sorting keeps
/// "the first server" the same from one run to the next whatever order DNS answers in.
fn one_family(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Connects to one server, failing with what `memds-ctl` has always said.
async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Client> {
    tokio::time::timeout(timeout, target.connector.connect(target.addr))
        .await
        .with_context(|| {
            format!(
                "connecting to {}: no answer within {timeout:?}",
                target.addr
            )
        })?
        .map_err(Into::into)
}

/// Connects to one server of several; a server that does not answer in time is a connection
/// failure like any other, so callers can move on to the next.
async fn dial(target: &Target, timeout: Duration) -> Result<Client, ClientError> {
    tokio::time::timeout(timeout, target.connector.connect(target.addr))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Connect {
                addr: target.addr,
                source: memds_client::ConnectError::Timeout(timeout),
            })
        })
}

/// Runs `op` against every server at once; the results are in the order of `targets`.
async fn on_each<T, F, Fut>(targets: &[Target], timeout: Duration, op: F) -> Vec<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let tasks: Vec<_> = targets
        .iter()
        .map(|target| {
            let (target, op) = (target.clone(), op.clone());
            tokio::spawn(async move {
                let client = dial(&target, timeout).await?;
                let result = op(client.clone()).await;
                client.close();
                result
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap_or_else(|e| Err(e.into())));
    }
    results
}

/// Prints one line per server, `{"server": ADDR, "ok": true, FIELD: value}` or `{"server":
/// ADDR, "ok": false, "error": "..."}`; the exit status is 1 if any failed.
fn print_lines<T: Serialize>(
    out: &mut impl std::io::Write,
    targets: &[Target],
    results: Vec<anyhow::Result<T>>,
    field: &str,
) -> anyhow::Result<ExitCode> {
    /// One server's line. The answer is a one-entry map flattened into the line, so it is
    /// serialized as itself (its fields in their own order, as one server's output has them).
    #[derive(Serialize)]
    struct Line<'a, T> {
        server: String,
        ok: bool,
        #[serde(flatten)]
        answer: BTreeMap<&'a str, T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    let mut code = ExitCode::SUCCESS;
    for (target, result) in targets.iter().zip(results) {
        let server = target.addr.to_string();
        let line = match result {
            Ok(value) => Line {
                server,
                ok: true,
                answer: BTreeMap::from([(field, value)]),
                error: None,
            },
            Err(e) => {
                code = ExitCode::FAILURE;
                Line {
                    server,
                    ok: false,
                    answer: BTreeMap::new(),
                    error: Some(format!("{e:#}")),
                }
            }
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(code)
}

/// What the first server to answer said, and the servers skipped before it.
struct Answered<'a, T> {
    value: T,
    target: &'a Target,
    skipped: Vec<(&'a Target, String)>,
}

impl<T> Answered<'_, T> {
    /// Says on stderr which server answered (stdout stays as one server's answer would be).
    fn note(&self) {
        self.note_skipped();
        eprintln!("memds-ctl: answered by {}", self.target.label());
    }

    fn note_skipped(&self) {
        for (target, error) in &self.skipped {
            eprintln!("memds-ctl: skipped {}: {error}", target.label());
        }
    }
}

/// Runs `op` on the servers in order until one answers, skipping those that cannot answer now
/// (unreachable, closed, timed out, not ready, behind or overloaded). Any other failure is the
/// request's own and ends the search.
async fn first_answering<'a, T>(
    targets: &'a [Target],
    timeout: Duration,
    op: impl AsyncFn(Client) -> anyhow::Result<T>,
) -> anyhow::Result<Answered<'a, T>> {
    let mut skipped = Vec::new();
    for target in targets {
        let result = match dial(target, timeout).await {
            Ok(client) => {
                let result = op(client.clone()).await;
                client.close();
                result
            }
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(value) => {
                return Ok(Answered {
                    value,
                    target,
                    skipped,
                });
            }
            Err(e) if can_skip(&e) => skipped.push((target, format!("{e:#}"))),
            Err(e) => {
                for (target, error) in &skipped {
                    eprintln!("memds-ctl: skipped {}: {error}", target.label());
                }
                return Err(e.context(format!("asking {}", target.label())));
            }
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|(t, e)| format!("{}: {e}", t.label()))
        .collect();
    bail!("no server answered: {}", reasons.join("; "))
}

/// Whether another server might answer where this one failed.
fn can_skip(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
        .is_some_and(|e| match e {
            ClientError::Connect { .. } | ClientError::Closed(_) | ClientError::Timeout(_) => true,
            ClientError::Server(reply) => matches!(
                reply.code,
                ErrorCode::Unavailable | ErrorCode::Behind | ErrorCode::Overloaded
            ),
            _ => false,
        })
}

/// An admin write, read from its file.
#[derive(Debug)]
enum WriteOp {
    Put(TableMap),
    Update(PartitionUpdate),
    Batch(BatchUpdate),
    Drop { table: String, version: Option<u64> },
}

/// A write's acknowledgement, printed as `memds-ctl` always has.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Ack {
    Written(WriteAck),
    Dropped { table: String, version: u64 },
}

impl WriteOp {
    /// The write of a write command (its file read and parsed), `None` for other commands.
    fn load(command: &Command) -> anyhow::Result<Option<Self>> {
        let read = |file: &PathBuf| {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
        };
        Ok(Some(match command {
            Command::PutTable { file } => WriteOp::Put(
                TableMap::from_json(&read(file)?)
                    .with_context(|| format!("loading {}", file.display()))?,
            ),
            Command::UpdatePartitions { file } => WriteOp::Update(
                serde_json::from_str(&read(file)?)
                    .with_context(|| format!("parsing {}", file.display()))?,
            ),
            Command::UpdateBatch { file } => WriteOp::Batch(
                serde_json::from_str(&read(file)?)
                    .with_context(|| format!("parsing {}", file.display()))?,
            ),
            Command::DropTable { table, version } => WriteOp::Drop {
                table: table.clone(),
                version: *version,
            },
            _ => return Ok(None),
        }))
    }

    async fn send(&self, client: &Client, timeout: Duration) -> anyhow::Result<Ack> {
        Ok(match self {
            WriteOp::Put(map) => Ack::Written(
                with_timeout(timeout, client.put_table(map))
                    .await
                    .context("put-table")?,
            ),
            WriteOp::Update(update) => Ack::Written(
                with_timeout(timeout, client.update_partitions(update.clone()))
                    .await
                    .context("update-partitions")?,
            ),
            WriteOp::Batch(update) => Ack::Written(
                with_timeout(timeout, client.update_batch(update.clone()))
                    .await
                    .context("update-batch")?,
            ),
            WriteOp::Drop { table, version } => {
                let dropped = match version {
                    Some(v) => with_timeout(timeout, client.drop_table_at(table, *v)).await,
                    None => with_timeout(timeout, client.drop_table(table)).await,
                };
                Ack::Dropped {
                    table: table.clone(),
                    version: dropped.context("drop-table")?,
                }
            }
        })
    }
}

/// A table in the JSON ingestion format.
async fn get_table(client: &Client, table: &str, timeout: Duration) -> anyhow::Result<String> {
    let map = with_timeout(timeout, client.get_table(table, None))
        .await
        .context("get-table")?
        .context("the server answered not-modified to an unconditional get")?;
    Ok(map.to_json())
}

/// The hashes a `lookup` asks about.
fn lookup_hashes(
    key: Option<String>,
    hash: Option<u64>,
    hashes_file: Option<PathBuf>,
) -> anyhow::Result<Vec<u64>> {
    Ok(match (key, hash, hashes_file) {
        (Some(k), None, None) => vec![key_hash(k.as_bytes())],
        (None, Some(h), None) => vec![h],
        (None, None, Some(file)) => read_hashes(&file)?,
        _ => bail!("lookup needs one of --key, --hash or --hashes-file"),
    })
}

/// The routes of `hashes`, one JSON line each, in order.
async fn lookup(
    client: &Client,
    table: &str,
    hashes: &[u64],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let name = TableName::new(table).context("--table")?;
    let mut nodes = None;
    let mut lines = Vec::with_capacity(hashes.len());
    for chunk in hashes.chunks(memds_proto::wire::DEFAULT_MAX_BATCH) {
        let routes = if chunk.len() == 1 {
            with_timeout(timeout, client.lookup(table, chunk[0])).await
        } else {
            with_timeout(timeout, client.batch_lookup(table, chunk.to_vec())).await
        }
        .context("lookup")?;
        for route in resolve(client, &name, &routes, &mut nodes, timeout).await? {
            lines.push(serde_json::to_string(&route)?);
        }
    }
    Ok(lines)
}

/// What `fleet-status` prints.
#[derive(Debug, Serialize)]
struct FleetStatus {
    /// Every server reachable and ready, none lagging, and digests agreeing.
    healthy: bool,
    servers: Vec<ServerStatus>,
    tables: Vec<TableStatus>,
}

/// One server of `fleet-status`; what it could not be asked is `null`.
#[derive(Debug, Serialize)]
struct ServerStatus {
    server: String,
    given: String,
    reachable: bool,
    error: Option<String>,
    ready: Option<bool>,
    build: Option<String>,
    uptime_seconds: Option<f64>,
    instance: Option<u64>,
    tables: Option<u64>,
    partitions: Option<u64>,
    connections: Option<u64>,
    /// Behind the newest version of some table.
    lagging: bool,
    /// One entry per table any reachable server holds (or dropped), sorted by name.
    table_versions: Vec<ServerTable>,
}

/// One table on one server.
#[derive(Debug, Serialize)]
struct ServerTable {
    table: String,
    /// The version held (the drop's, for a tombstone); `null` if the server has never heard
    /// of the table.
    version: Option<u64>,
    digest: Option<u64>,
    dropped: bool,
    /// The newest version any reachable server holds minus this one's.
    lag: u64,
}

/// One table across the fleet.
#[derive(Debug, Serialize)]
struct TableStatus {
    table: String,
    newest_version: u64,
    /// The newest version is a drop.
    dropped: bool,
    servers_at_newest: Vec<String>,
    lagging: Vec<String>,
    /// Servers at the same version hold the same content (or the same tombstone).
    digests_agree: bool,
}

/// Every server's summary and counters, asked at once, and the comparison of their tables.
async fn fleet_status(targets: &[Target], timeout: Duration) -> FleetStatus {
    let answers: Vec<anyhow::Result<(Summary, ServerStats)>> =
        on_each(targets, timeout, move |client| async move {
            let (summary, stats) = tokio::join!(
                with_timeout(timeout, client.summary()),
                with_timeout(timeout, client.stats()),
            );
            Ok((summary.context("summary")?, stats.context("stats")?))
        })
        .await;

    // Each table's entries by server index, over the servers that answered.
    let mut by_table: BTreeMap<&str, BTreeMap<usize, (u64, u64, bool)>> = BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        if let Ok((summary, _)) = answer {
            for t in &summary.tables {
                by_table
                    .entry(t.name.as_str())
                    .or_default()
                    .insert(i, (t.version, t.digest, t.dropped));
            }
        }
    }
    let reachable: Vec<usize> = (0..targets.len()).filter(|&i| answers[i].is_ok()).collect();
    let mut tables = Vec::with_capacity(by_table.len());
    let mut newest = BTreeMap::new();
    for (&name, held) in &by_table {
        let newest_version = held.values().map(|&(v, _, _)| v).max().unwrap_or(0);
        newest.insert(name, newest_version);
        // Servers at one version must agree on its content; a tombstone's digest is 0.
        let mut seen: BTreeMap<u64, BTreeSet<(u64, bool)>> = BTreeMap::new();
        for &(v, digest, dropped) in held.values() {
            seen.entry(v).or_default().insert((digest, dropped));
        }
        let at = |i: &usize| held.get(i).map(|&(v, _, _)| v);
        tables.push(TableStatus {
            table: name.to_owned(),
            newest_version,
            dropped: held
                .values()
                .any(|&(v, _, dropped)| v == newest_version && dropped),
            servers_at_newest: reachable
                .iter()
                .filter(|i| at(i) == Some(newest_version))
                .map(|&i| targets[i].addr.to_string())
                .collect(),
            lagging: reachable
                .iter()
                .filter(|i| at(i) != Some(newest_version))
                .map(|&i| targets[i].addr.to_string())
                .collect(),
            digests_agree: seen.values().all(|d| d.len() == 1),
        });
    }

    let servers: Vec<ServerStatus> = targets
        .iter()
        .zip(&answers)
        .enumerate()
        .map(|(i, (target, answer))| match answer {
            Ok((summary, stats)) => {
                let table_versions: Vec<ServerTable> = by_table
                    .iter()
                    .map(|(&name, held)| {
                        let newest = newest.get(name).copied().unwrap_or(0);
                        let entry = held.get(&i);
                        let version = entry.map(|&(v, _, _)| v);
                        ServerTable {
                            table: name.to_owned(),
                            version,
                            digest: entry.map(|&(_, d, _)| d),
                            dropped: entry.is_some_and(|&(_, _, dropped)| dropped),
                            lag: newest.saturating_sub(version.unwrap_or(0)),
                        }
                    })
                    .collect();
                ServerStatus {
                    server: target.addr.to_string(),
                    given: target.given.clone(),
                    reachable: true,
                    error: None,
                    ready: Some(summary.ready),
                    build: Some(stats.server_version.clone()),
                    uptime_seconds: Some(stats.uptime_seconds),
                    instance: Some(summary.instance),
                    tables: Some(stats.tables),
                    partitions: Some(stats.partitions),
                    connections: Some(stats.connections),
                    lagging: table_versions
                        .iter()
                        .any(|t| t.lag > 0 || t.version.is_none()),
                    table_versions,
                }
            }
            Err(e) => ServerStatus {
                server: target.addr.to_string(),
                given: target.given.clone(),
                reachable: false,
                error: Some(format!("{e:#}")),
                ready: None,
                build: None,
                uptime_seconds: None,
                instance: None,
                tables: None,
                partitions: None,
                connections: None,
                lagging: false,
                table_versions: Vec::new(),
            },
        })
        .collect();
    let healthy = servers
        .iter()
        .all(|s| s.reachable && s.ready == Some(true) && !s.lagging)
        && tables.iter().all(|t| t.digests_agree);
    FleetStatus {
        healthy,
        servers,
        tables,
    }
}

impl FleetStatus {
    /// The status as aligned tables: servers, tables, each server's versions, the verdict.
    fn table(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut servers = vec![
            [
                "SERVER",
                "GIVEN",
                "REACHABLE",
                "READY",
                "BUILD",
                "UPTIME",
                "INSTANCE",
                "TABLES",
                "PARTITIONS",
                "CONNS",
                "LAGGING",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &self.servers {
            servers.push(vec![
                s.server.clone(),
                s.given.clone(),
                yes_no(s.reachable),
                or_dash(s.ready.map(yes_no)),
                or_dash(s.build.clone()),
                or_dash(s.uptime_seconds.map(uptime)),
                or_dash(s.instance.map(|i| format!("{i:016x}"))),
                or_dash(s.tables.map(|t| t.to_string())),
                or_dash(s.partitions.map(|p| p.to_string())),
                or_dash(s.connections.map(|c| c.to_string())),
                if s.reachable {
                    yes_no(s.lagging)
                } else {
                    "-".into()
                },
            ]);
        }
        let mut tables = vec![
            [
                "TABLE",
                "NEWEST",
                "DROPPED",
                "AT NEWEST",
                "DIGESTS",
                "LAGGING",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for t in &self.tables {
            tables.push(vec![
                t.table.clone(),
                t.newest_version.to_string(),
                yes_no(t.dropped),
                t.servers_at_newest.len().to_string(),
                if t.digests_agree { "agree" } else { "DIFFER" }.into(),
                if t.lagging.is_empty() {
                    "-".into()
                } else {
                    t.lagging.join(",")
                },
            ]);
        }
        let mut versions = vec![
            ["TABLE", "SERVER", "VERSION", "DIGEST", "LAG"]
                .map(String::from)
                .to_vec(),
        ];
        for s in self.servers.iter().filter(|s| s.reachable) {
            for t in &s.table_versions {
                versions.push(vec![
                    t.table.clone(),
                    s.server.clone(),
                    match (t.version, t.dropped) {
                        (Some(v), true) => format!("{v} (dropped)"),
                        (Some(v), false) => v.to_string(),
                        (None, _) => "missing".into(),
                    },
                    or_dash(t.digest.filter(|_| !t.dropped).map(|d| format!("{d:016x}"))),
                    t.lag.to_string(),
                ]);
            }
        }
        let mut text = aligned(&servers);
        for s in self.servers.iter().filter(|s| !s.reachable) {
            text += &format!("{}: {}\n", s.server, or_dash(s.error.clone()));
        }
        text += "\n";
        text += &aligned(&tables);
        text += "\n";
        text += &aligned(&versions);
        text += &format!("\nhealthy: {}\n", yes_no(self.healthy));
        text
    }
}

/// An uptime to read at a glance: `42s`, `7m05s`, `3h02m`, `12d04h`.
fn uptime(seconds: f64) -> String {
    // Saturating float-to-int: a negative or absurd value from a server prints as 0 or the
    // largest count rather than failing.
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn aligned(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line += &format!("{cell:<w$}  ");
        }
        text += line.trim_end();
        text += "\n";
    }
    text
}

/// What `explain` prints.
#[derive(Debug, Serialize)]
struct Explanation {
    table: String,
    /// The key asked about; `null` when a hash was given.
    key: Option<String>,
    hash: u64,
    partition: u64,
    start: u64,
    end_inclusive: u64,
    epoch: u64,
    /// The leader's node id (`null` if the route names no replica at its leader index).
    leader: Option<u32>,
    replicas: Vec<ExplainedReplica>,
    version: u64,
    /// The server that answered.
    server: AnsweredBy,
    /// Servers asked before it that could not answer, and why.
    skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
struct ExplainedReplica {
    id: u32,
    addr: String,
    az: String,
    leader: bool,
}

#[derive(Debug, Serialize)]
struct AnsweredBy {
    /// The `--server` entry, as given.
    given: String,
    /// The address it resolved to.
    addr: String,
}

#[derive(Debug, Serialize)]
struct Skipped {
    server: String,
    error: String,
}

/// Where a key (or hash) lives, from the first server that answers.
async fn explain(
    targets: &[Target],
    timeout: Duration,
    table: &str,
    key: Option<String>,
    hash: Option<u64>,
) -> anyhow::Result<Explanation> {
    let hash = match (&key, hash) {
        (Some(k), None) => key_hash(k.as_bytes()),
        (None, Some(h)) => h,
        _ => bail!("explain needs one of --key or --hash"),
    };
    let name = TableName::new(table).context("--table")?;
    let answered = first_answering(targets, timeout, async |client: Client| {
        let routes = with_timeout(timeout, client.lookup(table, hash))
            .await
            .context("lookup")?;
        let mut nodes = None;
        let route = resolve(&client, &name, &routes, &mut nodes, timeout)
            .await?
            .into_iter()
            .next()
            .context("the server answered no route")?;
        anyhow::Ok(route)
    })
    .await?;
    let route: Route = answered.value;
    if !route.contains(hash) {
        bail!(
            "{} answered a partition [{}, {}] that does not hold hash {hash}",
            answered.target.label(),
            route.start,
            route.end_inclusive
        );
    }
    let leader = usize::from(route.leader);
    Ok(Explanation {
        table: table.to_owned(),
        key,
        hash,
        partition: route.partition.get(),
        start: route.start,
        end_inclusive: route.end_inclusive,
        epoch: route.epoch.get(),
        leader: route.leader_replica().map(|r| r.id.get()),
        replicas: route
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| ExplainedReplica {
                id: r.id.get(),
                addr: r.addr.clone(),
                az: r.az.clone(),
                leader: i == leader,
            })
            .collect(),
        version: route.version.get(),
        server: AnsweredBy {
            given: answered.target.given.clone(),
            addr: answered.target.addr.to_string(),
        },
        skipped: answered
            .skipped
            .iter()
            .map(|(t, error)| Skipped {
                server: t.addr.to_string(),
                error: error.clone(),
            })
            .collect(),
    })
}

impl Explanation {
    /// The explanation as a block for people.
    fn text(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![vec![
            "table".into(),
            format!("{} (version {})", self.table, self.version),
        ]];
        if let Some(key) = &self.key {
            rows.push(vec!["key".into(), format!("{key:?}")]);
        }
        rows.push(vec![
            "hash".into(),
            format!("{} ({:#018x})", self.hash, self.hash),
        ]);
        rows.push(vec!["partition".into(), self.partition.to_string()]);
        rows.push(vec![
            "range".into(),
            format!(
                "{} ..= {} ({:#018x} ..= {:#018x})",
                self.start, self.end_inclusive, self.start, self.end_inclusive
            ),
        ]);
        rows.push(vec!["epoch".into(), self.epoch.to_string()]);
        rows.push(vec![
            "leader".into(),
            self.leader
                .map_or_else(|| "none".into(), |id| format!("node {id}")),
        ]);
        for (i, r) in self.replicas.iter().enumerate() {
            rows.push(vec![
                if i == 0 { "replicas" } else { "" }.into(),
                format!(
                    "node {}  {}  {}{}",
                    r.id,
                    r.addr,
                    r.az,
                    if r.leader { "  (leader)" } else { "" }
                ),
            ]);
        }
        let answered = if self.server.given == self.server.addr {
            self.server.addr.clone()
        } else {
            format!("{} (given as {})", self.server.addr, self.server.given)
        };
        rows.push(vec!["answered by".into(), answered]);
        for (i, s) in self.skipped.iter().enumerate() {
            rows.push(vec![
                if i == 0 { "skipped" } else { "" }.into(),
                format!("{}: {}", s.server, s.error),
            ]);
        }
        aligned(&rows)
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, memds_client::ClientError>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| memds_client::ClientError::Timeout(timeout))??)
}

/// Full routes, fetching the table's node list when the routes' digest says ours is stale.
async fn resolve(
    client: &Client,
    table: &TableName,
    routes: &Routes,
    nodes: &mut Option<memds_proto::wire::NodeList>,
    timeout: Duration,
) -> anyhow::Result<Vec<Route>> {
    for _ in 0..2 {
        if nodes.as_ref().map(|n| n.digest) != Some(routes.nodes_digest) {
            *nodes = Some(
                with_timeout(timeout, client.get_nodes(table.as_str()))
                    .await
                    .context("fetching the node list")?,
            );
        }
        if let Some(resolved) = nodes.as_ref().and_then(|n| routes.resolve(table, n)) {
            return Ok(resolved);
        }
        *nodes = None;
    }
    bail!("the table's node list kept changing while resolving routes; retry")
}

fn read_hashes(file: &PathBuf) -> anyhow::Result<Vec<u64>> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut hashes = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        hashes.push(t.parse::<u64>().with_context(|| {
            format!("{} line {}: {t:?} is not a u64 hash", file.display(), i + 1)
        })?);
    }
    Ok(hashes)
}
