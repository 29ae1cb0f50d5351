//! The admin writes: `put-table`, `update-partitions`, `update-batch` and `drop-table`, read
//! from their files and sent to every server given or to the first that takes them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use memds_client::Client;
use memds_proto::TableMap;
use memds_proto::model::{BatchEdit, BatchSpec, UpdateSpec};
use memds_proto::wire::{BatchUpdate, PartitionUpdate, WriteAck};
use serde::Serialize;

use crate::Command;
use crate::fanout::{first_answering, on_each};
use crate::output::print_lines;
use crate::servers::{Target, with_timeout};

/// An admin write, read from its file (JSON ingestion records) and converted to the wire
/// messages it is sent as.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Put(TableMap),
    Update(PartitionUpdate),
    Batch(BatchUpdate),
    Drop { table: String, version: Option<u64> },
}

/// A write's acknowledgement, printed as `memds-ctl` always has.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Ack {
    Written(WriteAck),
    Dropped { table: String, version: u64 },
}

impl WriteOp {
    /// The write of a write command (its file read and parsed), `None` for other commands.
    pub(crate) fn load(command: &Command) -> anyhow::Result<Option<Self>> {
        let read = |file: &PathBuf| {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
        };
        Ok(Some(match command {
            Command::PutTable { file } => WriteOp::Put(
                TableMap::from_json(&read(file)?)
                    .with_context(|| format!("loading {}", file.display()))?,
            ),
            Command::UpdatePartitions { file } => WriteOp::Update(
                serde_json::from_str::<UpdateSpec>(&read(file)?)
                    .with_context(|| format!("parsing {}", file.display()))?
                    .into(),
            ),
            Command::UpdateBatch { file } => WriteOp::Batch(
                BatchEdit::from(
                    serde_json::from_str::<BatchSpec>(&read(file)?)
                        .with_context(|| format!("parsing {}", file.display()))?,
                )
                .into(),
            ),
            Command::DropTable { table, version } => WriteOp::Drop {
                table: table.clone(),
                version: *version,
            },
            _ => return Ok(None),
        }))
    }

    /// A drop that names no version drops the newest version any of `targets` holds (or has
    /// dropped), so that its effect does not depend on which server takes it: a server that
    /// lags would leave a tombstone below the fleet's version, and the table would come back
    /// when the newer version reached it. Other writes are returned as they are.
    pub(crate) async fn resolved(
        self,
        targets: &[Target],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let WriteOp::Drop {
            table,
            version: None,
        } = self
        else {
            return Ok(self);
        };
        let name = table.clone();
        let answers = on_each(targets, timeout, move |client| async move {
            with_timeout(timeout, client.summary())
                .await
                .context("summary")
        })
        .await;
        let mut newest: Option<u64> = None;
        let mut failures = Vec::new();
        for (target, answer) in targets.iter().zip(answers) {
            match answer {
                Ok(summary) => {
                    let held = summary
                        .tables
                        .iter()
                        .filter(|t| t.name == name)
                        .map(|t| t.version);
                    newest = newest.max(held.max());
                }
                Err(e) => failures.push(format!("{}: {e:#}", target.label())),
            }
        }
        if failures.len() == targets.len() {
            bail!(
                "drop-table: no server said which version of {name} it holds ({}); name the version with --version",
                failures.join("; ")
            );
        }
        for failure in &failures {
            eprintln!("drop-table: {failure} (the drop's version is the newest the others hold)");
        }
        Ok(WriteOp::Drop {
            table,
            // No server knows the table: sent as it is, for the servers to say so.
            version: newest,
        })
    }

    pub(crate) async fn send(&self, client: &Client, timeout: Duration) -> anyhow::Result<Ack> {
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

/// `--write-to all`: the write sent to every server at once, one line per server.
pub(crate) async fn write_to_all(
    write: WriteOp,
    targets: &[Target],
    timeout: Duration,
    out: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    // Each server's task owns its handle on the write, which is read from its file only once.
    let write = Arc::new(write);
    let results = on_each(targets, timeout, move |client| {
        let write = Arc::clone(&write);
        async move { write.send(&client, timeout).await }
    })
    .await;
    print_lines(out, targets, results, "ack")
}

/// `--write-to one`: the first server that takes the write. A refusal (stale, conflict,
/// invalid) is the write's own fault, which no other server would take either: it ends the
/// command.
pub(crate) async fn write_to_one(
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
