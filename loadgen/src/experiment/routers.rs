//! The simulated routers: real [`RouterCache`]s on the run's fleet, started warm (by
//! `--warm-with`) before the load or cold by a scale-out.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use memds_client::{ClientTls, Role};
use router_cache::{Mode, RouterCache};

use super::authority::Authority;
use super::fleet::Fleet;
use super::results::WarmWith;
use crate::metrics_listen::ExposedRouters;

/// Starts the routers of one run, each under its own `router` label on `--metrics-listen`.
pub(super) struct Routers {
    addrs: Vec<SocketAddr>,
    tls_dir: PathBuf,
    table: Arc<str>,
    authority: Arc<Authority>,
    mode: Mode,
    exposed: ExposedRouters,
}

/// What warming the first routers took, by the servers' own counters.
pub(super) struct Warmed {
    pub(super) routers: Vec<RouterCache>,
    pub(super) seconds: f64,
    pub(super) fleet_lookups: u64,
}

impl Routers {
    /// Routers of the run `label` (`<scenario>/<mode>`) on `fleet`, asking for `table`.
    pub(super) fn new(
        fleet: &Fleet,
        table: &Arc<str>,
        authority: &Arc<Authority>,
        mode: Mode,
        label: &str,
    ) -> Self {
        Self {
            addrs: fleet.addrs().to_vec(),
            tls_dir: fleet.tls_dir().to_owned(),
            table: Arc::clone(table),
            authority: Arc::clone(authority),
            mode,
            exposed: ExposedRouters::new(label),
        }
    }

    /// Starts `n` routers at once, each warmed by `warm_with`, counting the lookups the fleet
    /// performed meanwhile.
    pub(super) async fn start_warm(
        &self,
        fleet: &Fleet,
        n: usize,
        warm_with: WarmWith,
    ) -> anyhow::Result<Warmed> {
        let mut counted = fleet.lookup_counts();
        let lookups_before = fleet.lookups(&mut counted).await;
        let started = Instant::now();
        let mut routers = Vec::new();
        for r in futures_join_all((0..n).map(|_| self.start(Some(warm_with)))).await {
            routers.push(r?);
        }
        let seconds = started.elapsed().as_secs_f64();
        let fleet_lookups = fleet
            .lookups(&mut counted)
            .await
            .since(lookups_before)
            .offered();
        Ok(Warmed {
            routers,
            seconds,
            fleet_lookups,
        })
    }

    /// Starts one router, connected, and warmed by `warm` (cold if `None`). Its label is taken
    /// at the call, so routers started together are numbered in order.
    pub(super) fn start(
        &self,
        warm: Option<WarmWith>,
    ) -> impl Future<Output = anyhow::Result<RouterCache>> + 'static {
        let label = self.exposed.next_label();
        let (fleet_addrs, tls_dir, table, authority, mode) = (
            self.addrs.clone(),
            self.tls_dir.clone(),
            Arc::clone(&self.table),
            Arc::clone(&self.authority),
            self.mode,
        );
        async move {
            let cache =
                RouterCache::builder(fleet_addrs, ClientTls::from_dir(&tls_dir, Role::Router)?)
                    .mode(mode)
                    .metrics_instance(label)
                    .build()
                    .await?;
            wait_connected(&cache).await;
            match warm {
                None => {}
                Some(WarmWith::Table) => {
                    cache.warm(&table).await.context("warming a router")?;
                }
                Some(WarmWith::Lookups) => {
                    let starts: Vec<u64> = authority
                        .current()
                        .partitions()
                        .iter()
                        .map(|p| p.start)
                        .collect();
                    for chunk in starts.chunks(512) {
                        let calls: Vec<_> =
                            chunk.iter().map(|&s| cache.route_hash(&table, s)).collect();
                        for c in calls {
                            c.await?;
                        }
                    }
                    cache.drain().await;
                }
            }
            anyhow::Ok(cache)
        }
    }
}

/// Awaits every future, concurrently, in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<F> = futures.collect();
    let mut out = Vec::with_capacity(futures.len());
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

/// Waits (five seconds at most, then carries on as before) until the cache has a connection to
/// some server, as [`RouterCache::servers_up`] reports it.
async fn wait_connected(cache: &RouterCache) {
    let mut up = cache.servers_up();
    let _ = tokio::time::timeout(Duration::from_secs(5), up.wait_for(|&n| n > 0)).await;
}
