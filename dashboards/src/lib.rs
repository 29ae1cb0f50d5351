//! # memds-dashboards
//!
//! What an operator of a MemDS fleet loads into Grafana and Prometheus, kept next to the code
//! whose metrics it reads, and checked against it:
//!
//! - `grafana/memds-fleet.json`, `grafana/memds-routers.json`: dashboards for the servers and
//!   for the request routers (import them; pick the Prometheus data source).
//! - `prometheus/prometheus.yml`: scrape jobs `memds` (servers) and `memds-routers`.
//! - `prometheus/memds.rules.yml`: recording rules (fleet load, error ratio, latency, the
//!   routers' hit ratio and fleet lookups per request) and alerts; unit-tested by
//!   `prometheus/memds.rules.test.yml` (`promtool test rules`).
//!
//! This crate holds what the tests use, here and in other crates:
//!
//! - the crate root: the dashboards ([`FLEET_DASHBOARD`], [`ROUTERS_DASHBOARD`]), the queries
//!   of a dashboard ([`dashboard_queries`]) and the metric names a query reads
//!   ([`metric_names`]);
//! - `prometheus`: a real Prometheus started for a test, scraping given targets with the
//!   shipped rules, queried over its API; and `promtool`.
//!
//! The tests (`tests/prometheus.rs`) run a real server and router cache, a real Prometheus
//! scraping them with these rules, and evaluate every dashboard query there; loadgen's
//! `tests/metrics.rs` evaluates the router dashboard against a running experiment.

pub mod prometheus;

use std::collections::BTreeSet;

/// The fleet dashboard, `grafana/memds-fleet.json`.
pub const FLEET_DASHBOARD: &str = include_str!("../grafana/memds-fleet.json");
/// The routers' dashboard, `grafana/memds-routers.json`.
pub const ROUTERS_DASHBOARD: &str = include_str!("../grafana/memds-routers.json");
/// Every dashboard, by file name (without `.json`).
pub const DASHBOARDS: [(&str, &str); 2] = [
    ("memds-fleet", FLEET_DASHBOARD),
    ("memds-routers", ROUTERS_DASHBOARD),
];

/// One query of a dashboard panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The PromQL expression, with Grafana's variables left in.
    pub expr: String,
}

/// Every query of every panel of a Grafana dashboard (rows included), in panel order.
pub fn dashboard_queries(json: &str) -> Result<Vec<PanelQuery>, serde_json::Error> {
    let dashboard: serde_json::Value = serde_json::from_str(json)?;
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    Ok(out)
}

fn collect(panels: &serde_json::Value, out: &mut Vec<PanelQuery>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    panel: title.to_owned(),
                    expr: expr.to_owned(),
                });
            }
        }
        collect(&panel["panels"], out);
    }
}

/// The MemDS metric names (`memds_...`) a PromQL expression reads. Recording-rule names
/// (`memds:...`) are not metrics and are left out; so are label values and strings.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string: Option<char> = None;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(quote) = in_string {
            if c == quote {
                in_string = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("memds_") && !word.contains(':') {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
        if c == '"' || c == '\'' || c == '`' {
            in_string = Some(c);
        }
    }
    names
}

/// The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` series
/// belong to the histogram.
pub fn base_metric(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_strings_labels_and_recording_rules() {
        let names = metric_names(
            r#"sum(rate(memds_lookups_total{result="memds_not_a_metric",instance=~"$instance"}[5m]))
               / clamp_min(memds:fleet_lookups:rate1m, 1) + histogram_quantile(0.99, sum by (le)
               (rate(memds_lookup_duration_seconds_bucket[5m])))"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "memds_lookup_duration_seconds_bucket",
                "memds_lookups_total"
            ]
        );
    }

    #[test]
    fn histogram_series_belong_to_their_histogram() {
        assert_eq!(
            base_metric("memds_write_duration_seconds_bucket"),
            "memds_write_duration_seconds"
        );
        assert_eq!(
            base_metric("memds_write_duration_seconds_count"),
            "memds_write_duration_seconds"
        );
        assert_eq!(base_metric("memds_lookups_total"), "memds_lookups_total");
    }

    #[test]
    fn the_shipped_dashboards_parse_and_every_panel_has_a_query() {
        for (file, json) in DASHBOARDS {
            let dashboard: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            assert_eq!(dashboard["uid"], file);
            let panels = dashboard["panels"].as_array().expect("panels");
            let mut ids = BTreeSet::new();
            for p in panels {
                assert!(
                    ids.insert(p["id"].as_u64().expect("panel id")),
                    "{file}: repeated id"
                );
                let grid = &p["gridPos"];
                let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
                assert!(
                    x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24),
                    "{file}: panel {} is off the 24-column grid",
                    p["title"]
                );
                if p["type"] != "row" {
                    assert!(
                        p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                        "{file}: panel {} has no query",
                        p["title"]
                    );
                    assert_eq!(p["datasource"]["uid"], "${datasource}");
                }
            }
            let queries = dashboard_queries(json).expect("queries");
            assert!(
                queries.iter().all(|q| !metric_names(&q.expr).is_empty()),
                "{file}"
            );
        }
    }
}
