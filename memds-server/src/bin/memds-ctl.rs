//! `memds-ctl`: the admin and lookup command line of a MemDS server.
//!
//! Results are JSON on stdout; errors go to stderr with a non-zero exit status (1 for any
//! failure, 2 for bad usage). With `--tls-dir` it presents the certificate of one role
//! (`--role`, admin unless told) of a TLS directory; `--cert`, `--key` and `--ca` (given before
//! the subcommand, as in `memds-ctl --cert c.pem --key k.pem --ca ca.pem stats`) override
//! single files.
//!
//! `memds-ctl pki` issues a fleet's certificates without talking to any server: a cluster CA
//! (`create-ca`), server certificates (`create-server`) and client certificates of one role
//! (`create-client`), each under the CA kept in the same directory.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use memds_client::tls::CA_CERT;
use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::wire::{BatchUpdate, PartitionUpdate, Routes};
use memds_proto::{Route, TableMap, TableName, key_hash};
use memds_server::tls::{self as pki, ClientRole, IfExists, Issued};

/// Admin and lookup commands for a MemDS server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The server's QUIC address.
    #[arg(long, default_value = "127.0.0.1:7400", global = true)]
    server: SocketAddr,
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
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost", global = true)]
    server_name: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memds-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect(&cli).await?;
    let timeout = Duration::from_secs(cli.timeout_secs);
    let out = std::io::stdout();
    let mut out = out.lock();
    match cli.command {
        Command::Pki(_) => bail!("pki commands do not connect to a server"),
        Command::PutTable { file } => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let map = TableMap::from_json(&json)
                .with_context(|| format!("loading {}", file.display()))?;
            let ack = with_timeout(timeout, client.put_table(&map))
                .await
                .context("put-table")?;
            writeln!(out, "{}", serde_json::to_string(&ack)?)?;
        }
        Command::UpdatePartitions { file } => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let update: PartitionUpdate = serde_json::from_str(&json)
                .with_context(|| format!("parsing {}", file.display()))?;
            let ack = with_timeout(timeout, client.update_partitions(update))
                .await
                .context("update-partitions")?;
            writeln!(out, "{}", serde_json::to_string(&ack)?)?;
        }
        Command::UpdateBatch { file } => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let update: BatchUpdate = serde_json::from_str(&json)
                .with_context(|| format!("parsing {}", file.display()))?;
            let ack = with_timeout(timeout, client.update_batch(update))
                .await
                .context("update-batch")?;
            writeln!(out, "{}", serde_json::to_string(&ack)?)?;
        }
        Command::DropTable { table, version } => {
            let dropped = match version {
                Some(v) => with_timeout(timeout, client.drop_table_at(&table, v)).await,
                None => with_timeout(timeout, client.drop_table(&table)).await,
            };
            let version = dropped.context("drop-table")?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"table": table, "version": version})
            )?;
        }
        Command::GetTable { table } => {
            let map = with_timeout(timeout, client.get_table(&table, None))
                .await
                .context("get-table")?
                .context("the server answered not-modified to an unconditional get")?;
            writeln!(out, "{}", map.to_json())?;
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
            let name = TableName::new(&table).context("--table")?;
            let hashes = match (key, hash, hashes_file) {
                (Some(k), None, None) => vec![key_hash(k.as_bytes())],
                (None, Some(h), None) => vec![h],
                (None, None, Some(file)) => read_hashes(&file)?,
                _ => bail!("lookup needs one of --key, --hash or --hashes-file"),
            };
            let mut nodes = None;
            for chunk in hashes.chunks(memds_proto::wire::DEFAULT_MAX_BATCH) {
                let routes = if chunk.len() == 1 {
                    with_timeout(timeout, client.lookup(&table, chunk[0])).await
                } else {
                    with_timeout(timeout, client.batch_lookup(&table, chunk.to_vec())).await
                }
                .context("lookup")?;
                for route in resolve(&client, &name, &routes, &mut nodes, timeout).await? {
                    writeln!(out, "{}", serde_json::to_string(&route)?)?;
                }
            }
        }
    }
    out.flush()?;
    client.close();
    Ok(())
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

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
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
    let tls = ClientTls::from_files(&ca, Some((&cert, &key))).context("loading TLS material")?;
    let connector = Connector::new(
        &tls,
        ConnectOptions {
            server_name: cli.server_name.clone(),
            ..ConnectOptions::default()
        },
    )?;
    let timeout = Duration::from_secs(cli.timeout_secs);
    tokio::time::timeout(timeout, connector.connect(cli.server))
        .await
        .with_context(|| format!("connecting to {}: no answer within {timeout:?}", cli.server))?
        .map_err(Into::into)
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
