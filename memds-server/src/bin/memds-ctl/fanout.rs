//! Asking several servers: every one at once, or one after another until one answers, moving on
//! only past failures another server might not have.

use std::time::Duration;

use anyhow::bail;
use memds_client::{Client, ClientError};
use memds_proto::wire::ErrorCode;

use crate::servers::{Target, dial};

/// Runs `op` against every server at once; the results are in the order of `targets`.
pub(crate) async fn on_each<T, F, Fut>(
    targets: &[Target],
    timeout: Duration,
    op: F,
) -> Vec<anyhow::Result<T>>
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

/// What the first server to answer said, and the servers skipped before it.
pub(crate) struct Answered<'a, T> {
    pub(crate) value: T,
    pub(crate) target: &'a Target,
    pub(crate) skipped: Vec<(&'a Target, String)>,
}

impl<T> Answered<'_, T> {
    /// Says on stderr which server answered (stdout stays as one server's answer would be).
    pub(crate) fn note(&self) {
        self.note_skipped();
        eprintln!("memds-ctl: answered by {}", self.target.label());
    }

    pub(crate) fn note_skipped(&self) {
        for (target, error) in &self.skipped {
            eprintln!("memds-ctl: skipped {}: {error}", target.label());
        }
    }
}

/// Runs `op` on the servers in order until one answers, skipping those that cannot answer now
/// (unreachable, closed, timed out, not ready, behind or overloaded). Any other failure is the
/// request's own and ends the search.
pub(crate) async fn first_answering<'a, T>(
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
