//! The dashboards and rules against the real thing: promtool's checks and the alert unit tests,
//! then a real server and router cache, scraped by a real Prometheus running these rules, where
//! every dashboard query must evaluate, every metric a query names must exist, every metric the
//! system exports must be on a dashboard, and every rule must evaluate cleanly.
//!
//! Needs `prometheus` and `promtool` on the PATH (Debian's `prometheus` package;
//! `scripts/test.sh` installs it). The harness is the crate's `prometheus` module.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memds_client::{ClientTls, ConnectOptions, Connector, Role};
use memds_dashboards::prometheus::{Prometheus, Targets, promtool, rule_count};
use memds_dashboards::{DASHBOARDS, base_metric, dashboard_queries, metric_names};
use memds_proto::synth::{self, SynthConfig};
use memds_server::ServerConfig;
use router_cache::RouterCache;
use serde_json::Value;

#[test]
fn promtool_accepts_the_config_and_rules_and_the_alert_tests_pass() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "memds.rules.yml"]);
    let want = format!("SUCCESS: {} rules found", rule_count());
    assert!(rules.contains(&want), "{rules}");
    let tests = promtool(&["test", "rules", "memds.rules.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_rule_evaluates_against_a_real_fleet() {
    // Removed when the test ends, after the servers and Prometheus (declared later, dropped
    // first) are gone.
    let tmp = tempfile::Builder::new()
        .prefix("memds-dashboards-live-")
        .tempdir()
        .expect("creating a temporary directory");
    let dir = tmp.path();
    // Two servers, peers of each other, sharing one development PKI. The first takes a table
    // while the second is down (a forward fails), the second starts and pulls it (anti-entropy),
    // and later writes are forwarded: every fleet series gets a value.
    let tls = dir.join("pki");
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free port")
                .port()
        })
        .collect();
    let config = |i: usize| {
        let listen = SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let mut c = ServerConfig::new(listen, dir.join(format!("data-{i}")));
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.dev_tls_dir = Some(tls.clone());
        c.fleet.peers = vec![format!("127.0.0.1:{}", ports[1 - i])];
        c.fleet.anti_entropy = Duration::from_millis(300);
        c
    };
    let server = memds_server::start(config(0))
        .await
        .expect("the server starts");
    let metrics = server.metrics_addr.expect("the metrics listener is bound");

    // Writes, lookups and typed errors, so every server metric has a series.
    let admin = Connector::new(
        &ClientTls::from_dir(&tls, Role::Admin).expect("admin TLS"),
        ConnectOptions::default(),
    )
    .expect("endpoint")
    .connect(server.quic_addr)
    .await
    .expect("connecting as admin");
    let map = synth::generate_table(
        &SynthConfig {
            partitions: 1000,
            ..SynthConfig::default()
        },
        0,
    );
    let table = map.name().as_str().to_owned();
    admin.put_table(&map).await.expect("put");
    admin.put_table(&map).await.expect("an unchanged put");
    let peer = memds_server::start(config(1))
        .await
        .expect("the peer starts");
    let peer_admin = Connector::new(
        &ClientTls::from_dir(&tls, Role::Admin).expect("admin TLS"),
        ConnectOptions::default(),
    )
    .expect("endpoint")
    .connect(peer.quic_addr)
    .await
    .expect("connecting to the peer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while peer_admin.list_tables().await.expect("tables").is_empty() {
        assert!(Instant::now() < deadline, "the peer never pulled the table");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut next = serde_json::from_str::<Value>(&map.to_json()).expect("json");
    next["version"] = (map.version().get() + 1).into();
    let next = memds_proto::TableMap::from_json(&next.to_string()).expect("valid");
    admin.put_table(&next).await.expect("a forwarded put");
    assert!(admin.lookup("no-such-table", 1).await.is_err());
    admin.stats().await.expect("stats");

    // A router cache under steady load (hits and misses) until the checks are done.
    let cache = RouterCache::builder(
        vec![server.quic_addr, peer.quic_addr],
        ClientTls::from_dir(&tls, Role::Router).expect("router TLS"),
    )
    .build()
    .await
    .expect("the cache starts");
    // The load starts once both servers are ready (peer names resolved, caught up) and the
    // cache is connected to both: a lookup refused by a server still starting is not what the
    // dashboards are checked against.
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in [&admin, &peer_admin] {
        while !a.summary().await.expect("summary").ready {
            assert!(Instant::now() < deadline, "a server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut up = cache.servers_up();
    tokio::time::timeout(Duration::from_secs(30), up.wait_for(|&n| n == 2))
        .await
        .expect("the cache connects to both servers")
        .expect("the cache runs");
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (cache, stop, table) = (cache.clone(), Arc::clone(&stop), table.clone());
        async move {
            let mut h = 1u64;
            while !stop.load(Ordering::Relaxed) {
                h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
                cache.route_hash(&table, h).await.expect("route");
                if h.is_multiple_of(50) {
                    cache.clear();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    // One endpoint serves both the server's and the router cache's series (they share the
    // process's recorder), scraped as both jobs.
    let prom = Prometheus::start(
        &dir.join("prometheus"),
        &Targets {
            servers: vec![metrics],
            routers: vec![metrics],
        },
    );
    // Both jobs up, and the recording rules have rates to record.
    prom.wait_for("both scrape jobs up", "sum(up)", |v| v == 2.0)
        .await;
    prom.wait_for(
        "the fleet-load recording rule",
        "memds:fleet_lookups:rate1m",
        |v| v > 0.0,
    )
    .await;
    prom.wait_for(
        "the routers' recording rule",
        "memds:router_lookups_per_request:rate5m",
        |v| v > 0.0,
    )
    .await;

    let exported = prom.memds_metric_names().await;
    assert!(
        exported.contains("memds_lookups_total") && exported.contains("memds_router_entries"),
        "{exported:?}"
    );

    let mut used = BTreeSet::new();
    for (file, json) in DASHBOARDS {
        for q in dashboard_queries(json).expect("the dashboard parses") {
            let expr = q.expr.replace("$instance", ".*");
            let answer = prom.query(&expr).await;
            assert_eq!(
                answer.0["status"], "success",
                "{file} / {}: {expr} failed: {}",
                q.panel, answer.0
            );
            for name in metric_names(&expr) {
                assert!(
                    exported.contains(&name),
                    "{file} / {}: {name} is not a metric the fleet exports",
                    q.panel
                );
                used.insert(base_metric(&name).to_owned());
            }
        }
    }
    for name in &exported {
        assert!(
            used.contains(base_metric(name)),
            "{name} is exported but on no dashboard"
        );
    }

    // The rules: every one loaded, evaluated, healthy.
    let rules = prom.get("/api/v1/rules").await;
    let mut checked = 0;
    for group in rules.0["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "{rule}");
            assert_eq!(rule["lastError"].as_str().unwrap_or_default(), "", "{rule}");
            for name in metric_names(rule["query"].as_str().expect("query")) {
                assert!(
                    exported.contains(&name),
                    "rule {}: {name} is not exported",
                    rule["name"]
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        rule_count(),
        "every rule of memds.rules.yml is loaded"
    );
    // Nothing is wrong with this fleet, so no alert fires.
    let firing = prom.query("ALERTS{alertstate=\"firing\"}").await;
    assert_eq!(
        firing.0["data"]["result"],
        serde_json::json!([]),
        "{}",
        firing.0
    );

    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task ends");
    cache.shutdown();
    drop(prom);
    server.shutdown().await;
    peer.shutdown().await;
}
