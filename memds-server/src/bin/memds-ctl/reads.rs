//! The reads: `get-table`, `lookup` (from a key, a hash or a file of hashes), and the
//! resolution of routes into full ones that `explain` shares.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use memds_client::Client;
use memds_proto::wire::Routes;
use memds_proto::{Route, TableName, key_hash};

use crate::servers::with_timeout;

/// A table in the JSON ingestion format.
pub(crate) async fn get_table(
    client: &Client,
    table: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let map = with_timeout(timeout, client.get_table(table, None))
        .await
        .context("get-table")?
        .context("the server answered not-modified to an unconditional get")?;
    Ok(map.to_json())
}

/// The hashes a `lookup` asks about.
pub(crate) fn lookup_hashes(
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
pub(crate) async fn lookup(
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

/// Full routes, fetching the table's node list when the routes' digest says ours is stale.
pub(crate) async fn resolve(
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
