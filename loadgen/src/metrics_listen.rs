//! `--metrics-listen ADDR`: the simulated routers' metrics over HTTP while an experiment or a
//! benchmark runs, so a Prometheus job `memds-routers` (and the routers' Grafana dashboard)
//! follows it live.
//!
//! The process has one `metrics` recorder, memds-server's ([`memds_server::metrics::handle`]):
//! the embedded servers publish into it, and so do the router caches. `GET /metrics` renders it
//! and keeps only the `memds_router_*` series, so a Prometheus that also scrapes the servers
//! (job `memds`) never ingests their series twice. No process-level series are added.
//!
//! Every cache carries its own `router` label ([`router_cache::Builder::metrics_instance`]),
//! `<run>/r<n>` (for example `flush/classic/r3`), handed out by [`ExposedRouters`]. A label
//! is never reused within the process: a counter published again under the same labels keeps
//! the largest value it was ever given (the `metrics` crate's `absolute` is a `fetch_max`), so a
//! second run's routers would show no traffic until they passed the first run's totals. Only
//! the routers of runs under way are exposed: the series of a run's routers leave the page
//! when the run ends, as a stopped router's would, instead of lingering at their last values
//! (the recorder never forgets a series).
//!
//! The listener runs on a thread of its own (`loadgen-metrics`) with its own runtime, so it
//! takes nothing from the runtimes whose timing the benchmarks measure. The address it bound is
//! printed on stderr twice: in a sentence, then as the JSON line `{"metrics_listen":"IP:PORT"}`
//! for scripts and tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The `--metrics-listen` flag, shared by the subcommands that run router caches.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Flag {
    /// Serve the router caches' metrics on http://ADDR/metrics while this runs (port 0: any
    /// free port), for a Prometheus job `memds-routers`: only `memds_router_*` series, each
    /// cache with its own `router` label (`<scenario>/<mode>/r<n>`; `bench-cache/r0`), only
    /// while its run lasts. The address bound is printed on stderr, then as the line
    /// {"metrics_listen":"IP:PORT"}.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<SocketAddr>,
}

impl Flag {
    /// Starts the listener if the flag was given, and says where on stderr.
    pub(crate) fn start(&self) -> anyhow::Result<Option<Listener>> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let listener = Listener::start(addr)?;
        let bound = listener.addr();
        eprintln!("serving the router caches' metrics on http://{bound}/metrics");
        eprintln!(
            "{}",
            serde_json::json!({ "metrics_listen": bound.to_string() })
        );
        Ok(Some(listener))
    }
}

/// The running `/metrics` listener; stopped (and its thread joined) when dropped.
pub(crate) struct Listener {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Installs the process's recorder (before any cache registers a series: a cache started
    /// first, with no embedded server to install it, would publish into the void), binds `addr`
    /// and serves on a thread of its own.
    pub(crate) fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        memds_server::metrics::handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the metrics runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind(addr))
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("loadgen-metrics".into())
            .spawn(move || runtime.block_on(serve(listener, stop)))
            .context("starting the metrics thread")?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address bound.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The routers of one run: hands out their `router` labels, and has the listener expose their
/// series while it lives.
pub(crate) struct ExposedRouters {
    prefix: String,
    next: AtomicUsize,
}

impl ExposedRouters {
    /// The routers of run `run` (`<scenario>/<mode>`, or a benchmark's name), which must be
    /// unique in the process (see the [module documentation](self)).
    pub(crate) fn new(run: &str) -> Self {
        let prefix = format!("{run}/");
        live().push(prefix.clone());
        Self {
            prefix,
            next: AtomicUsize::new(0),
        }
    }

    /// A fresh `router` label for the next cache of the run: `<run>/r<n>`.
    pub(crate) fn next_label(&self) -> String {
        format!(
            "{}r{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Drop for ExposedRouters {
    fn drop(&mut self) {
        let mut live = live();
        if let Some(i) = live.iter().position(|p| *p == self.prefix) {
            live.swap_remove(i);
        }
    }
}

/// How long a connection may take to send its request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay open in all.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 16;

/// The `router` label prefixes of the runs under way.
fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `/metrics` until `stop` fires (or its sender is dropped); open connections are
/// dropped then.
async fn serve(listener: TcpListener, mut stop: oneshot::Receiver<()>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => stream,
            Ok(_) => continue,
            Err(e) => {
                // Out of descriptors, say: the error would recur at once, so pause.
                eprintln!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|r| async move { Ok::<_, Infallible>(respond(&r)) }),
                );
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

fn respond(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        let page = memds_server::metrics::handle().render();
        let prefixes = live().clone();
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            router_series(&page, &prefixes),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics here\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// The part of a Prometheus text exposition that belongs to `memds_router_*` metrics: their
/// `# HELP` and `# TYPE` lines, and the samples whose `router` label starts with one of
/// `prefixes`.
fn router_series(page: &str, prefixes: &[String]) -> String {
    let mut out = String::new();
    for line in page.lines() {
        let keep = if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split_whitespace();
            matches!(words.next(), Some("HELP" | "TYPE"))
                && words.next().is_some_and(is_router_metric)
        } else {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            is_router_metric(&line[..name_end])
                && label(&line[name_end..], "router")
                    .is_some_and(|r| prefixes.iter().any(|p| r.starts_with(p.as_str())))
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn is_router_metric(name: &str) -> bool {
    name.starts_with("memds_router_")
}

/// The value of label `key` in a sample's `{...} value` remainder (values without escaped
/// quotes, as the router labels are).
fn label<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    let labels = rest.strip_prefix('{')?;
    let labels = &labels[..labels.rfind('}')?];
    let mut at = 0;
    while let Some(found) = labels[at..].find(key) {
        let start = at + found;
        let after = &labels[start + key.len()..];
        if (start == 0 || labels[..start].ends_with(',')) && after.starts_with("=\"") {
            let value = &after[2..];
            return value.find('"').map(|end| &value[..end]);
        }
        at = start + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP memds_lookups_total Partition lookups served.
# TYPE memds_lookups_total counter
memds_lookups_total{op=\"lookup\",result=\"ok\"} 12

# HELP memds_router_entries Routes cached.
# TYPE memds_router_entries gauge
memds_router_entries{router=\"flush/classic/r0\"} 3000
memds_router_entries{router=\"flush/constant-work/r0\"} 2990
memds_router_entries 7

# TYPE memds_router_round_trip_seconds histogram
memds_router_round_trip_seconds_bucket{router=\"flush/classic/r1\",le=\"0.001\"} 4
memds_router_round_trip_seconds_sum{router=\"flush/classic/r1\"} 0.002
memds_router_requests_total{result=\"hit\",router=\"flush/classic/r1\"} 9
memds_router_requests_total{result=\"router=\\\"flush/classic/\",router=\"x\"} 9
";

    #[test]
    fn only_router_series_of_live_runs_are_kept() {
        assert_eq!(
            router_series(PAGE, &["flush/classic/".to_owned()]),
            "\
# HELP memds_router_entries Routes cached.
# TYPE memds_router_entries gauge
memds_router_entries{router=\"flush/classic/r0\"} 3000
# TYPE memds_router_round_trip_seconds histogram
memds_router_round_trip_seconds_bucket{router=\"flush/classic/r1\",le=\"0.001\"} 4
memds_router_round_trip_seconds_sum{router=\"flush/classic/r1\"} 0.002
memds_router_requests_total{result=\"hit\",router=\"flush/classic/r1\"} 9
"
        );
        let none = router_series(PAGE, &[]);
        assert!(none.lines().all(|l| l.starts_with("# ")), "{none}");
    }

    #[test]
    fn each_run_hands_out_fresh_labels_and_is_live_while_it_lasts() {
        let run = ExposedRouters::new("test-run");
        assert_eq!(run.next_label(), "test-run/r0");
        assert_eq!(run.next_label(), "test-run/r1");
        assert!(live().contains(&"test-run/".to_owned()));
        drop(run);
        assert!(!live().contains(&"test-run/".to_owned()));
    }
}
