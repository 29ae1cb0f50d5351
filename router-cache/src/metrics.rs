//! The cache's metrics through the `metrics` facade. The hit path only bumps the cache's own
//! atomic counters; a background task copies them into the facade once a second, so a hit pays
//! no registry lookup.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use tokio::sync::watch;

use crate::RouterCache;

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
        "Age of the least recently confirmed cached route."
    );
    describe_histogram!(
        "memds_router_round_trip_seconds",
        Unit::Seconds,
        "Time from sending a batch frame to its answer."
    );
}

/// Records one batch round trip.
pub(crate) fn round_trip(d: Duration) {
    metrics::histogram!("memds_router_round_trip_seconds").record(d.as_secs_f64());
}

/// Publishes the cache's counters every second until shutdown.
pub(crate) async fn publish_loop(cache: RouterCache, mut shutdown: watch::Receiver<bool>) {
    loop {
        cache.refresh_snapshots();
        let s = cache.stats();
        metrics::counter!("memds_router_requests_total", "result" => "hit").absolute(s.hits);
        metrics::counter!("memds_router_requests_total", "result" => "miss").absolute(s.misses);
        metrics::counter!("memds_router_requests_total", "result" => "error").absolute(s.errors);
        metrics::counter!("memds_router_lookups_sent_total").absolute(s.lookups_sent);
        metrics::counter!("memds_router_hedged_total").absolute(s.hedged);
        metrics::counter!("memds_router_refreshes_changed_total").absolute(s.refreshes_changed);
        metrics::counter!("memds_router_dropped_total").absolute(s.dropped);
        metrics::counter!("memds_router_refreshes_shed_total").absolute(s.refreshes_shed);
        metrics::counter!("memds_router_protocol_errors_total").absolute(s.protocol_errors);
        metrics::counter!("memds_router_retries_total", "reason" => "behind").absolute(s.behind);
        metrics::counter!("memds_router_retries_total", "reason" => "unavailable")
            .absolute(s.unavailable);
        metrics::counter!("memds_router_retries_total", "reason" => "overloaded")
            .absolute(s.overloaded);
        metrics::counter!("memds_router_table_fetches_total", "kind" => "whole")
            .absolute(s.table_downloads);
        metrics::counter!("memds_router_table_fetches_total", "kind" => "delta")
            .absolute(s.table_deltas);
        metrics::gauge!("memds_router_queue_depth").set(s.queue_depth as f64);
        metrics::gauge!("memds_router_entries").set(s.entries as f64);
        metrics::gauge!("memds_router_servers_up").set(s.servers_up as f64);
        metrics::gauge!("memds_router_oldest_unconfirmed_seconds")
            .set(s.oldest_unconfirmed_seconds.unwrap_or(0.0));
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
