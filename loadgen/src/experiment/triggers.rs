//! The scenarios' triggers, fired halfway through a run: what a flush, a scale-out, an
//! invalidation storm and a server loss do.

use std::sync::RwLock;

use router_cache::RouterCache;

use super::Args;
use super::authority::Authority;
use super::fleet::Fleet;
use super::results::Scenario;
use super::routers::Routers;

/// What the trigger does.
pub(super) async fn fire(
    scenario: Scenario,
    args: &Args,
    fleet: &mut Fleet,
    authority: &Authority,
    routers: &RwLock<Vec<RouterCache>>,
    starter: &Routers,
) -> anyhow::Result<()> {
    match scenario {
        Scenario::Flush => {
            // Freeing every cached route is real work (a restarted router does it too); it runs
            // on a blocking thread so the load generator's schedule is not held up by it.
            let all: Vec<RouterCache> = routers.read().unwrap_or_else(|p| p.into_inner()).clone();
            tokio::task::spawn_blocking(move || all.iter().for_each(RouterCache::clear)).await?;
        }
        Scenario::ScaleOut => {
            let n = ((args.routers as f64 * args.scale_out).ceil() as usize).max(1);
            let mut cold = Vec::new();
            for _ in 0..n {
                cold.push(starter.start(None).await?);
            }
            routers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(cold);
        }
        Scenario::InvalidationStorm => {
            let _change = authority.begin_change().await;
            let current = authority.current();
            let n = current.partitions().len();
            let every = ((1.0 / args.storm.clamp(1e-6, 1.0)).round() as usize).max(1);
            let indexes: Vec<usize> = (0..n).step_by(every).collect();
            if let Some(next) = authority.split(&current, &indexes) {
                authority.publish(fleet.pusher(), next, None).await;
            }
        }
        Scenario::ServerLoss => fleet.stop_server(0).await,
    }
    Ok(())
}
