//! `memds-ctl fleet-status`: every server's summary and counters gathered at once, their tables
//! compared (newest version, lag, digest agreement), and the status as JSON or aligned tables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use memds_proto::wire::{FormatVersions, Protocol, ServerInfo, ServerStats, Summary};
use serde::Serialize;

use crate::fanout::on_each;
use crate::output::aligned;
use crate::servers::{Target, with_timeout};

/// What `fleet-status` prints.
#[derive(Debug, Serialize)]
pub(crate) struct FleetStatus {
    /// Every server reachable and ready, none lagging, and digests agreeing.
    healthy: bool,
    /// How many reachable servers run each release: more than one while a fleet rolls.
    releases: BTreeMap<String, usize>,
    pub(crate) servers: Vec<ServerStatus>,
    tables: Vec<TableStatus>,
}

/// One server of `fleet-status`; what it could not be asked is `null`.
#[derive(Debug, Serialize)]
pub(crate) struct ServerStatus {
    server: String,
    given: String,
    pub(crate) reachable: bool,
    error: Option<String>,
    ready: Option<bool>,
    /// The release (semantic version).
    release: Option<String>,
    /// The build: the release and, where the server reports it, the commit.
    build: Option<String>,
    /// The protocol version this connection to it settled on.
    protocol: Option<String>,
    /// The protocol versions it speaks; `null` for a server of a release before memds/2,
    /// which does not say (it speaks memds/1).
    protocols: Option<Vec<String>>,
    /// The formats it writes and reads; `null` where it does not say (before memds/2).
    formats: Option<Vec<FormatVersions>>,
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
pub(crate) struct ServerTable {
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
pub(crate) struct TableStatus {
    table: String,
    newest_version: u64,
    /// The newest version is a drop.
    dropped: bool,
    servers_at_newest: Vec<String>,
    lagging: Vec<String>,
    /// Servers at the same version hold the same content (or the same tombstone).
    digests_agree: bool,
}

/// What one server answered.
struct Answers {
    summary: Summary,
    stats: ServerStats,
    info: Option<ServerInfo>,
    protocol: Protocol,
}

/// Every server's summary, counters and versions, asked at once, and the comparison of their
/// tables.
pub(crate) async fn fleet_status(targets: &[Target], timeout: Duration) -> FleetStatus {
    let answers: Vec<anyhow::Result<Answers>> =
        on_each(targets, timeout, move |client| async move {
            let protocol = client.protocol();
            let (summary, stats, info) = tokio::join!(
                with_timeout(timeout, client.summary()),
                with_timeout(timeout, client.stats()),
                async {
                    // A server of the previous release has no server-info: it says only its build.
                    if protocol >= Protocol::V2 {
                        Some(with_timeout(timeout, client.server_info()).await)
                    } else {
                        None
                    }
                },
            );
            Ok(Answers {
                summary: summary.context("summary")?,
                stats: stats.context("stats")?,
                info: info.transpose().context("server-info")?,
                protocol,
            })
        })
        .await;

    // Each table's entries by server index, over the servers that answered.
    let mut by_table: BTreeMap<&str, BTreeMap<usize, (u64, u64, bool)>> = BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        if let Ok(Answers { summary, .. }) = answer {
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
            Ok(Answers {
                summary,
                stats,
                info,
                protocol,
            }) => {
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
                    release: Some(
                        info.as_ref()
                            .map_or(&stats.server_version, |i| &i.release)
                            .clone(),
                    ),
                    build: Some(
                        info.as_ref()
                            .map_or(&stats.server_version, |i| &i.build)
                            .clone(),
                    ),
                    protocol: Some(protocol.name().to_owned()),
                    protocols: info.as_ref().map(|i| i.protocols.clone()),
                    formats: info.as_ref().map(|i| i.formats.clone()),
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
                release: None,
                build: None,
                protocol: None,
                protocols: None,
                formats: None,
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
    let mut releases = BTreeMap::new();
    for release in servers.iter().filter_map(|s| s.release.clone()) {
        *releases.entry(release).or_default() += 1;
    }
    FleetStatus {
        healthy,
        releases,
        servers,
        tables,
    }
}

impl FleetStatus {
    /// The status as aligned tables: servers, tables, each server's versions, the verdict.
    pub(crate) fn table(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut servers = vec![
            [
                "SERVER",
                "GIVEN",
                "REACHABLE",
                "READY",
                "BUILD",
                "PROTOCOL",
                "FORMATS",
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
                or_dash(s.protocol.clone()),
                or_dash(s.formats.as_deref().map(formats)),
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
        let releases: Vec<String> = self
            .releases
            .iter()
            .map(|(release, n)| format!("{release} ({n})"))
            .collect();
        text += &format!("\nreleases: {}", releases.join(", "));
        if self.releases.len() > 1 {
            text += " (mixed: the fleet is rolling)";
        }
        text += &format!("\nhealthy: {}\n", yes_no(self.healthy));
        text
    }
}

/// Formats at a glance: `log 2, checkpoint 2, snapshot 1` (the versions written; a range where
/// older ones are read too: `log 2 (reads 1-2)`).
fn formats(formats: &[FormatVersions]) -> String {
    formats
        .iter()
        .map(|f| {
            if f.reads_oldest == f.writes {
                format!("{} {}", f.name, f.writes)
            } else {
                format!(
                    "{} {} (reads {}-{})",
                    f.name, f.writes, f.reads_oldest, f.writes
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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
