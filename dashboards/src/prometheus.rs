//! A real Prometheus for tests: started on a free loopback port with a configuration that
//! scrapes the given targets every second as the shipped jobs (`memds` for servers,
//! `memds-routers` for routers) and evaluates the shipped rules every second; queried over its
//! HTTP API; killed when dropped. Also `promtool`, run in the shipped configuration's directory.
//!
//! Both need `prometheus` and `promtool` on the PATH: Debian's `prometheus` package, which
//! `scripts/test.sh` installs. When they are missing, the harness panics saying so; a test
//! using it never skips.
//!
//! ```no_run
//! # async fn example(metrics: std::net::SocketAddr) {
//! use memds_dashboards::prometheus::{Prometheus, Targets};
//! let prom = Prometheus::start(
//!     std::path::Path::new("/tmp/prom"),
//!     &Targets { servers: vec![], routers: vec![metrics] },
//! );
//! prom.wait_for("the routers scraped", "sum(up)", |v| v == 1.0).await;
//! assert!(!prom.query("memds_router_entries").await.result().is_empty());
//! # }
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long [`Prometheus::wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(90);

/// The shipped Prometheus files: `prometheus.yml`, `memds.rules.yml` and the rules' unit tests
/// `memds.rules.test.yml`.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus")
}

/// The recording and alerting rules `memds.rules.yml` declares.
pub fn rule_count() -> usize {
    let text = std::fs::read_to_string(config_dir().join("memds.rules.yml"))
        .expect("reading memds.rules.yml");
    text.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- record:") || l.starts_with("- alert:"))
        .count()
}

/// Runs promtool in [`config_dir`] and answers its output (stdout then stderr); panics if it
/// fails.
pub fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(config_dir())
        .output()
        .unwrap_or_else(|e| panic!("running promtool: {e}; {INSTALL}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// What a [`Prometheus`] scrapes: `/metrics` of each address, every second.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Scraped as job `memds` (servers); the job is left out when there are none.
    pub servers: Vec<SocketAddr>,
    /// Scraped as job `memds-routers` (processes running router caches); the job is left out
    /// when there are none.
    pub routers: Vec<SocketAddr>,
}

/// A Prometheus process scraping [`Targets`] every second, with the shipped rules evaluated
/// every second (their `interval: 15s` becomes 1s). Killed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// A Prometheus API answer: its JSON, or `null` when Prometheus did not answer (not up yet).
#[derive(Clone, Debug)]
pub struct Answer(pub Value);

impl Answer {
    /// The value of a query's first result, if any.
    pub fn first_value(&self) -> Option<f64> {
        self.0["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// A query's results (empty when it has none, or failed).
    pub fn result(&self) -> &[Value] {
        self.0["data"]["result"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// `data` as an array, as label-values answers have it (empty otherwise).
    pub fn data_array(&self) -> Vec<Value> {
        self.0["data"].as_array().cloned().unwrap_or_default()
    }
}

impl Prometheus {
    /// Writes a configuration and the shipped rules into `dir` (created if missing; its TSDB
    /// goes there too) and starts Prometheus on a free loopback port. Panics if Prometheus is
    /// not installed.
    pub fn start(dir: &Path, targets: &Targets) -> Self {
        std::fs::create_dir_all(dir).expect("creating Prometheus's directory");
        let rules = std::fs::read_to_string(config_dir().join("memds.rules.yml"))
            .expect("reading the rules");
        std::fs::write(
            dir.join("memds.rules.yml"),
            rules.replace("interval: 15s", "interval: 1s"),
        )
        .expect("writing the rules");
        std::fs::write(dir.join("prometheus.yml"), config(targets))
            .expect("writing the configuration");
        // Prometheus cannot report a port it chose, so take a free one and hand it over.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the log"))
            .current_dir(dir)
            .spawn()
            .unwrap_or_else(|e| panic!("running prometheus: {e}; {INSTALL}"));
        Self { child, addr, log }
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `expr` until its first value passes `check`; panics with Prometheus's log after
    /// [`WAIT`].
    pub async fn wait_for(&self, what: &str, expr: &str, check: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !self.query(expr).await.first_value().is_some_and(&check) {
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what}; Prometheus said:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Evaluates `expr` now (`/api/v1/query`).
    pub async fn query(&self, expr: &str) -> Answer {
        self.get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await
    }

    /// The names of the MemDS metrics (`memds_...`) it has ingested.
    pub async fn memds_metric_names(&self) -> BTreeSet<String> {
        self.get("/api/v1/label/__name__/values")
            .await
            .data_array()
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| n.starts_with("memds_"))
            .map(str::to_owned)
            .collect()
    }

    /// GETs an API path; `null` if Prometheus does not answer with JSON.
    pub async fn get(&self, path: &str) -> Answer {
        let body = http_get(self.addr, path).await.map(|(_, body)| body);
        Answer(
            body.and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET over HTTP/1.0 (so the body ends with the connection, never chunked): the status
/// code and the body, or `None` if the server is not up or the answer is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query string.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const INSTALL: &str = "install Debian's prometheus package (scripts/test.sh does)";

/// The configuration: every second, the given jobs, the rules next to it.
fn config(targets: &Targets) -> String {
    let mut text = "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
                    rule_files: [memds.rules.yml]\n\
                    scrape_configs:\n"
        .to_owned();
    for (job, addrs) in [
        ("memds", &targets.servers),
        ("memds-routers", &targets.routers),
    ] {
        if addrs.is_empty() {
            continue;
        }
        let list = addrs
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ");
        text.push_str(&format!(
            "  - job_name: {job}\n    static_configs: [{{targets: [{list}]}}]\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_each_job_once_and_leaves_out_empty_ones() {
        let a: SocketAddr = "127.0.0.1:9400".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:9500".parse().expect("addr");
        assert_eq!(
            config(&Targets {
                servers: vec![],
                routers: vec![a, b],
            }),
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
             rule_files: [memds.rules.yml]\n\
             scrape_configs:\n\
             \x20 - job_name: memds-routers\n\
             \x20   static_configs: [{targets: ['127.0.0.1:9400', '127.0.0.1:9500']}]\n"
        );
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(x{a=~".*"})"#),
            "sum%28x%7Ba%3D~%22.%2A%22%7D%29"
        );
    }
}
