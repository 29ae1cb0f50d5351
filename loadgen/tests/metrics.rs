//! `loadgen experiment --metrics-listen`: a real Prometheus scrapes a running experiment (job
//! `memds-routers`, with the shipped rules), and every query of every panel of the routers'
//! dashboard returns data while it runs; the page holds the router caches' series only, each
//! cache under its own `router` label, and only the current run's.
//!
//! Needs `prometheus` on the PATH (Debian's `prometheus` package; `scripts/test.sh` installs
//! it).

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use memds_dashboards::prometheus::{Prometheus, Targets, config_dir, http_get};
use memds_dashboards::{ROUTERS_DASHBOARD, dashboard_queries};
use serde_json::Value;

/// Simulated routers per run.
const ROUTERS: usize = 2;
/// How long a check may wait for its data.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_router_panel_shows_a_running_experiment() {
    // Removed when the test ends, after loadgen and Prometheus (declared later, dropped first:
    // both are killed on drop, a failed assertion included).
    let tmp = tempfile::Builder::new()
        .prefix("memds-loadgen-metrics-")
        .tempdir()
        .expect("creating a temporary directory");
    let dir = tmp.path();
    let routers = ROUTERS.to_string();
    let mut loadgen = Loadgen::start(
        dir,
        &[
            "experiment",
            "--metrics-listen",
            "127.0.0.1:0",
            "--scenario",
            "flush",
            "--mode",
            "both",
            "--duration",
            "8",
            "--rate",
            "400",
            "--routers",
            &routers,
            "--fleet",
            "2",
            "--partitions",
            "1000",
            "--keys",
            "100000",
            "--sample-ms",
            "200",
        ],
    );
    let metrics = loadgen.metrics_addr();
    let prom = Prometheus::start(
        &dir.join("prometheus"),
        &Targets {
            servers: vec![],
            routers: vec![metrics],
        },
    );
    prom.wait_for("loadgen scraped", "sum(up{job=\"memds-routers\"})", |v| {
        v == 1.0
    })
    .await;

    // The first run (constant-work), or whichever is under way once Prometheus has data.
    every_panel_answers(&prom, &loadgen).await;
    for rule in router_recording_rules() {
        prom.wait_for(&rule, &rule, |v| v > 0.0).await;
    }
    assert_only_router_series(&prom, &loadgen).await;

    // The classic run's routers, under labels of their own, replace the first run's.
    let classic: BTreeSet<String> = (0..ROUTERS)
        .map(|i| format!("flush/classic/r{i}"))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let live: BTreeSet<String> = prom
            .query("count by (router) (memds_router_entries)")
            .await
            .result()
            .iter()
            .filter_map(|r| r["metric"]["router"].as_str().map(str::to_owned))
            .collect();
        if live == classic {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the routers scraped are {live:?}, never {classic:?}; loadgen said:\n{}",
            loadgen.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    every_panel_answers(&prom, &loadgen).await;
    assert_only_router_series(&prom, &loadgen).await;
    assert!(
        loadgen.running(),
        "the experiment ended before the checks did, so they did not see it live; loadgen said:\n{}",
        loadgen.stderr()
    );

    loadgen.wait_success().await;
    assert!(dir.join("out").join("results.json").exists());
    drop(prom);
}

/// Polls every query of the routers' dashboard until each returns data.
async fn every_panel_answers(prom: &Prometheus, loadgen: &Loadgen) {
    let queries = dashboard_queries(ROUTERS_DASHBOARD).expect("the dashboard parses");
    assert!(!queries.is_empty());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut empty = Vec::new();
        for q in &queries {
            let expr = q.expr.replace("$instance", ".*");
            let answer = prom.query(&expr).await;
            if answer.0["status"] != "success" || answer.result().is_empty() {
                empty.push(format!("{}: {expr} -> {}", q.panel, answer.0));
            }
        }
        if empty.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "router panels without data after {WAIT:?}:\n{}\nloadgen said:\n{}\nPrometheus said:\n{}",
            empty.join("\n"),
            loadgen.stderr(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// loadgen's page, and what Prometheus took from it: `memds_router_*` series only, every sample
/// with a `router` label.
async fn assert_only_router_series(prom: &Prometheus, loadgen: &Loadgen) {
    // Between two runs no router is live and the page has no samples: wait for the next run.
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let (status, page) = http_get(loadgen.metrics_addr(), "/metrics")
            .await
            .expect("loadgen answers /metrics");
        assert_eq!(status, 200, "{page}");
        if page.lines().any(|l| !l.starts_with('#')) {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "no samples on loadgen's page: {page}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
    for line in page.lines() {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        assert!(name.starts_with("memds_router_"), "{line}");
    }
    assert!(
        samples.iter().all(|l| l.contains("router=\"flush/")),
        "{page}"
    );

    let names = prom.memds_metric_names().await;
    assert!(names.contains("memds_router_requests_total"), "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("memds_router_")),
        "Prometheus took series other than the routers' from loadgen: {names:?}"
    );
}

/// The shipped recording rules over router series (`memds:router_*`).
fn router_recording_rules() -> Vec<String> {
    let rules =
        std::fs::read_to_string(config_dir().join("memds.rules.yml")).expect("reading the rules");
    let names: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- record: "))
        .filter(|n| n.starts_with("memds:router_"))
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "no router recording rule");
    names
}

/// The loadgen process, killed when dropped (a failed assertion included). Its stderr is read
/// all along (so it never blocks on a full pipe) and kept.
struct Loadgen {
    child: Child,
    stderr: Arc<Mutex<String>>,
    metrics: SocketAddr,
}

impl Loadgen {
    /// Starts `loadgen ARGS --out DIR/out` and waits for the address of its metrics listener.
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .arg("--out")
            .arg(dir.join("out"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loadgen runs");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && let Some(addr) = v["metrics_listen"].as_str()
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                    let mut s = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        // Constructed before waiting, so the child is killed if the wait fails.
        let mut loadgen = Self {
            child,
            stderr,
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let addr = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "loadgen printed no metrics address; it said:\n{}",
                loadgen.stderr()
            )
        });
        loadgen.metrics = addr.parse().expect("an IP:PORT");
        assert_ne!(loadgen.metrics.port(), 0);
        loadgen
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for loadgen to exit (two minutes at most) and checks it succeeded.
    async fn wait_success(mut self) {
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            match self.child.try_wait().expect("waiting for loadgen") {
                Some(status) => {
                    assert!(status.success(), "loadgen failed:\n{}", self.stderr());
                    return;
                }
                None => assert!(
                    Instant::now() < deadline,
                    "loadgen did not finish; it said:\n{}",
                    self.stderr()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
