//! The cache's metrics through the `metrics` facade. The hit path only bumps the cache's own
//! atomic counters; a background task copies them into the facade once a second, so a hit pays
//! no registry lookup.

use std::time::Duration;

use metrics::{Label, Unit, describe_counter, describe_gauge, describe_histogram};
use tokio::sync::watch;

use std::sync::Arc;

use crate::cache::Inner;

/// Describes every metric (idempotent).
pub(crate) fn describe() {
    describe_counter!(
        "memds_router_requests_total",
        Unit::Count,
        "route() calls by result: hit, miss, error."
    );
    describe_counter!(
        "memds_router_lookups_sent_total",
        Unit::Count,
        "Lookups sent to the fleet (hashes in batch frames, hedges included)."
    );
    describe_counter!(
        "memds_router_hedged_total",
        Unit::Count,
        "Late miss lookups also sent to a second server."
    );
    describe_counter!(
        "memds_router_refreshes_changed_total",
        Unit::Count,
        "Fleet answers that changed a cached route."
    );
    describe_counter!(
        "memds_router_dropped_total",
        Unit::Count,
        "Refresh lookups dropped: queue full or no server."
    );
    describe_counter!(
        "memds_router_refreshes_shed_total",
        Unit::Count,
        "Refresh lookups (of hits, already answered from the cache) a server shed as overloaded: \
         dropped, not sent again."
    );
    describe_counter!(
        "memds_router_protocol_errors_total",
        Unit::Count,
        "Server answers refused as malformed (each batch was retried on another server)."
    );
    describe_counter!(
        "memds_router_retries_total",
        Unit::Count,
        "Lookups a server refused, by reason: behind (older table version than the router has \
         seen), unavailable (not ready) or overloaded (shed by its lookup limit). Misses among \
         them were retried on another server (after overloaded, on one other server at most); \
         refreshes shed as overloaded were dropped (memds_router_refreshes_shed_total)."
    );
    describe_counter!(
        "memds_router_table_fetches_total",
        Unit::Count,
        "Classic whole-table mode: tables fetched, by kind: whole (downloaded whole, on first \
         touch or when no server could answer a refresh with a delta) or delta (a refresh that \
         brought only the partitions that changed)."
    );
    describe_counter!(
        "memds_router_warms_total",
        Unit::Count,
        "RouterCache::warm calls, by result: whole (one get-table), delta (one get-delta since \
         the cached copy), not_modified (nothing newer than the cached copy) or failed (no \
         server answered)."
    );
    describe_counter!(
        "memds_router_warm_routes_total",
        Unit::Count,
        "Routes warms inserted or replaced in the cache."
    );
    describe_gauge!(
        "memds_router_queue_depth",
        Unit::Count,
        "Lookups queued or in flight to the fleet."
    );
    describe_gauge!("memds_router_entries", Unit::Count, "Routes cached.");
    describe_gauge!(
        "memds_router_servers_up",
        Unit::Count,
        "Fleet servers connected."
    );
    describe_gauge!(
        "memds_router_oldest_unconfirmed_seconds",
        Unit::Seconds,
        "Age of the least recently confirmed cached route (from a scan at most 10 s old: may overstate by up to 10 s)."
    );
    describe_histogram!(
        "memds_router_round_trip_seconds",
        Unit::Seconds,
        "Time from sending a batch frame to its answer."
    );
}

/// The labels every series of one cache carries: none, or `router="<instance>"`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels(Vec<Label>);

impl Labels {
    /// Labels for a cache with this `metrics_instance`.
    pub(crate) fn new(instance: Option<&str>) -> Self {
        Self(
            instance
                .map(|i| Label::new("router", i.to_owned()))
                .into_iter()
                .collect(),
        )
    }

    /// These labels and one more.
    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.0.clone();
        labels.push(Label::new(key, value));
        labels
    }

    /// Records one batch round trip.
    pub(crate) fn round_trip(&self, d: Duration) {
        metrics::histogram!("memds_router_round_trip_seconds", self.0.iter())
            .record(d.as_secs_f64());
    }
}

/// Publishes the cache's counters every second until shutdown.
pub(crate) async fn publish_loop(
    cache: Arc<Inner>,
    labels: Labels,
    mut shutdown: watch::Receiver<bool>,
) {
    let base = &labels.0;
    let counter = |name: &'static str, value: u64| {
        metrics::counter!(name, base.iter()).absolute(value);
    };
    let labelled = |name: &'static str, key: &'static str, label: &'static str, value: u64| {
        metrics::counter!(name, labels.with(key, label).iter()).absolute(value);
    };
    let gauge = |name: &'static str, value: f64| {
        metrics::gauge!(name, base.iter()).set(value);
    };
    loop {
        // Only a lag worth a rebuild: a forced one each second would cost every cache a
        // rebuild (O(routes)) a second under any trickle of changes.
        cache.refresh_snapshots(false);
        let s = cache.stats();
        labelled("memds_router_requests_total", "result", "hit", s.hits);
        labelled("memds_router_requests_total", "result", "miss", s.misses);
        labelled("memds_router_requests_total", "result", "error", s.errors);
        counter("memds_router_lookups_sent_total", s.lookups_sent);
        counter("memds_router_hedged_total", s.hedged);
        counter("memds_router_refreshes_changed_total", s.refreshes_changed);
        counter("memds_router_dropped_total", s.dropped);
        counter("memds_router_refreshes_shed_total", s.refreshes_shed);
        counter("memds_router_protocol_errors_total", s.protocol_errors);
        labelled("memds_router_retries_total", "reason", "behind", s.behind);
        labelled(
            "memds_router_retries_total",
            "reason",
            "unavailable",
            s.unavailable,
        );
        labelled(
            "memds_router_retries_total",
            "reason",
            "overloaded",
            s.overloaded,
        );
        labelled(
            "memds_router_table_fetches_total",
            "kind",
            "whole",
            s.table_downloads,
        );
        labelled(
            "memds_router_table_fetches_total",
            "kind",
            "delta",
            s.table_deltas,
        );
        let whole_warms = s.warms - s.warm_deltas - s.warms_not_modified;
        labelled("memds_router_warms_total", "result", "whole", whole_warms);
        labelled("memds_router_warms_total", "result", "delta", s.warm_deltas);
        labelled(
            "memds_router_warms_total",
            "result",
            "not_modified",
            s.warms_not_modified,
        );
        labelled(
            "memds_router_warms_total",
            "result",
            "failed",
            s.warm_failures,
        );
        counter("memds_router_warm_routes_total", s.warm_routes);
        gauge("memds_router_queue_depth", s.queue_depth as f64);
        gauge("memds_router_entries", s.entries as f64);
        gauge("memds_router_servers_up", s.servers_up as f64);
        gauge(
            "memds_router_oldest_unconfirmed_seconds",
            s.oldest_unconfirmed_seconds.unwrap_or(0.0),
        );
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
