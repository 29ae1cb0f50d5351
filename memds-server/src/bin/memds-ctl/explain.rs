//! `memds-ctl explain`: where one key (or hash) lives, from the first server that answers, as
//! JSON or a readable block.

use std::time::Duration;

use anyhow::{Context as _, bail};
use memds_client::Client;
use memds_proto::{Route, TableName, key_hash};
use serde::Serialize;

use crate::fanout::first_answering;
use crate::output::aligned;
use crate::reads::resolve;
use crate::servers::{Target, with_timeout};

/// What `explain` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Explanation {
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
pub(crate) struct ExplainedReplica {
    id: u32,
    addr: String,
    az: String,
    leader: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct AnsweredBy {
    /// The `--server` entry, as given.
    given: String,
    /// The address it resolved to.
    addr: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Skipped {
    server: String,
    error: String,
}

/// Where a key (or hash) lives, from the first server that answers.
pub(crate) async fn explain(
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
                addr: r.addr.to_string(),
                az: r.az.to_string(),
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
    pub(crate) fn text(&self) -> String {
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
