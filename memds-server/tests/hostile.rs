//! Hostile and overloaded clients against the real `memds-server` binary: floods of bare QUIC
//! Initials, of connections, of lookups past the server's limit, of half-sent frames, oversized
//! frames, and clients that never read their answers. Each case checks that the server's memory
//! (RSS, read from /proc) stays under a stated ceiling, that it sheds with a typed error or a
//! reset, and that a well-behaved router's lookups keep answering within a stated p99.
//!
//! Latency bounds here are loose on purpose (these machines are shared and noisy): they tell a
//! server that keeps serving from one that stalls behind the attack, not a fast one from a slow
//! one.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memds_client::{Client, ClientError, ClientTls, Role};
use memds_proto::wire::{self, ErrorCode, Request, Response, close_code};

/// A `memds-server` process; killed when dropped, so a failed assertion leaves nothing behind.
struct Spawned {
    child: Child,
    quic: SocketAddr,
    metrics: SocketAddr,
    tls_dir: PathBuf,
    /// The data directory, removed after the process is killed.
    _dir: tempfile::TempDir,
}

impl Spawned {
    fn start(name: &str, args: &[&str]) -> Self {
        let dir_tmp = common::temp_dir(name);
        let dir = dir_tmp.path().to_path_buf();
        let mut child = Command::new(env!("CARGO_BIN_EXE_memds-server"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--scrub-interval-secs", "0", "--data-dir"])
            .arg(&dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("memds-server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the announcement");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON announcement");
        let addr = |key: &str| -> SocketAddr {
            v[key]
                .as_str()
                .expect("an address")
                .parse()
                .expect("parses")
        };
        Self {
            quic: addr("quic"),
            metrics: addr("metrics"),
            tls_dir: PathBuf::from(v["tls_dir"].as_str().expect("the TLS directory")),
            child,
            _dir: dir_tmp,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, from /proc.
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    async fn client(&self, role: Role) -> Client {
        common::connector(&self.tls_dir, role)
            .connect(self.quic)
            .await
            .expect("connects")
    }

    async fn scrape(&self) -> String {
        let addr = self.metrics;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("response");
            body
        })
        .await
        .expect("join")
    }

    async fn metric(&self, series: &str) -> f64 {
        common::metric(&self.scrape().await, series)
    }

    /// Polls `series` until `done` holds of its value (`within` at most), and answers it.
    async fn wait_metric(&self, series: &str, within: Duration, done: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.metric(series).await;
            if done(value) || started.elapsed() > within {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then how long the process took to exit.
    fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill");
        loop {
            if self.child.try_wait().expect("wait").is_some() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: u64 = 1 << 20;

/// The attacks run one at a time: each saturates the machine on purpose, and the latency and
/// timing each test states are about its own attack, not its neighbours'.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A table of `partitions` partitions, put by an admin; returns its name.
async fn put_table(server: &Spawned, partitions: usize) -> String {
    let admin = server.client(Role::Admin).await;
    let map = common::table(0, partitions, 1);
    admin.put_table(&map).await.expect("put");
    map.name().as_str().to_owned()
}

/// A well-behaved router looking up at a steady rate while an attack runs.
struct SteadyRouter {
    stop: Arc<AtomicBool>,
    /// Lookups answered so far.
    answered: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

impl SteadyRouter {
    /// Connects a router to `server` and starts `per_sec` single lookups a second in `table`,
    /// recording each latency and failure.
    async fn start(server: &Spawned, table: &str, per_sec: u64) -> Self {
        let client = server.client(Role::Router).await;
        let table = table.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&answered);
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
            let mut hash = 1u64;
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                hash = hash.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let started = Instant::now();
                match client.lookup(&table, hash).await {
                    Ok(_) => {
                        latencies.push(started.elapsed());
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            latencies.sort();
            (latencies, failures)
        });
        Self {
            stop,
            answered,
            task,
        }
    }

    /// Stops the router and checks it was served throughout: no failure, at least
    /// `min_lookups`, and a p99 under `p99_bound`. Returns the p99.
    /// An attack that ends sooner than `min_lookups` take at the router's rate (a flood
    /// refused at once) leaves the router running, under what the attack left held, until they
    /// are done (within 10 s).
    async fn served_throughout(self, min_lookups: usize, p99_bound: Duration) -> Duration {
        let started = Instant::now();
        while self.answered.load(Ordering::Relaxed) < min_lookups
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (latencies, failures) = self.task.await.expect("the router task");
        assert!(
            failures.is_empty(),
            "{} of the well-behaved router's lookups failed, e.g. {:?}",
            failures.len(),
            failures.first()
        );
        assert!(
            latencies.len() >= min_lookups,
            "the well-behaved router got only {} lookups answered",
            latencies.len()
        );
        let p99 = latencies[latencies.len() * 99 / 100];
        assert!(
            p99 <= p99_bound,
            "the well-behaved router's p99 was {p99:?} (bound {p99_bound:?})"
        );
        p99
    }
}

/// Sends `n` bare QUIC Initial packets to `server`, each opening a different connection (fresh
/// connection ids), from sockets on 16 loopback addresses, and never answers anything: what a
/// flood of certificate-less handshakes from many hosts looks like. Uses quinn-proto's
/// sans-IO client to build real Initials.
fn bare_initials(server: SocketAddr, ca: &Path, n: usize) {
    let config = ClientTls::from_files(ca, None)
        .expect("the CA")
        .quic_config()
        .expect("a client config");
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let sockets: Vec<UdpSocket> = (2..18)
        .map(|host| UdpSocket::bind(("127.0.0.".to_owned() + &host.to_string(), 0)).expect("bind"))
        .collect();
    let mut buf = Vec::with_capacity(1500);
    for i in 0..n {
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, config.clone(), server, "memds")
            .expect("a connection attempt");
        buf.clear();
        let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
        sockets[i % sockets.len()]
            .send_to(&buf[..t.size], server)
            .expect("send");
        if i % 100 == 99 {
            // Spare the server's socket buffer: a loaded machine drops what overflows it, and
            // the test counts what the server did with what it received.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_initials_take_no_connection_slot_and_a_flood_gets_stateless_retries() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Spawned::start(
        "initials",
        &["--max-connections", "8", "--handshake-timeout-secs", "2"],
    );
    let table = put_table(&server, 2_000).await;
    let ca = server.tls_dir.join("ca.pem");

    // The defect as reported: eight bare Initials with --max-connections 8 locked the admin
    // CLI out for a minute.
    let (quic, ca2) = (server.quic, ca.clone());
    tokio::task::spawn_blocking(move || bare_initials(quic, &ca2, 8))
        .await
        .expect("join");
    // The eight handshakes reach the server and hang there.
    server
        .wait_metric(
            "memds_handshakes_in_progress",
            Duration::from_secs(5),
            |n| n >= 8.0,
        )
        .await;
    let admin = tokio::time::timeout(Duration::from_secs(5), server.client(Role::Admin))
        .await
        .expect("the admin connects while eight handshakes hang");
    admin.stats().await.expect("the admin is served");

    // A flood of 3,000 from 16 addresses while a router looks up 100 times a second.
    let rss_before = server.rss();
    let router = SteadyRouter::start(&server, &table, 100).await;
    let (quic, ca2) = (server.quic, ca.clone());
    let flood = tokio::task::spawn_blocking(move || bare_initials(quic, &ca2, 3_000));
    // Sampled while the flood is under way (it lasts about a second).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_progress = server.metric("memds_handshakes_in_progress").await;
    // A client arriving during the flood answers the Retry and is served.
    let late = tokio::time::timeout(Duration::from_secs(5), server.client(Role::Admin))
        .await
        .expect("an admin connects during the flood");
    late.stats().await.expect("and is served");
    flood.await.expect("join");
    let rss_flood = server.rss();
    // The flood takes under a second here; the router keeps going a moment after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p99 = router
        .served_throughout(20, Duration::from_millis(500))
        .await;
    let page = server.scrape().await;
    let retries = common::metric(&page, "memds_quic_retries_total");
    eprintln!(
        "bare Initials: {retries} stateless retries, {in_progress} handshakes in progress \
         during the flood, RSS {:.1} -> {:.1} MiB, router p99 {p99:?}",
        rss_before as f64 / MIB as f64,
        rss_flood as f64 / MIB as f64
    );
    assert!(
        in_progress <= 256.0,
        "{in_progress} handshakes in progress: over --max-handshakes"
    );
    // Once 32 handshakes are under way, every further unvalidated Initial gets a Retry. (A
    // loaded machine may drop some of the flood at the socket before the server sees it, so
    // this asks for most of it; the bound on kept state is checked from the timeouts below.)
    assert!(
        retries >= 1_500.0,
        "only {retries} retries for 3,000 Initials"
    );
    assert!(
        rss_flood < rss_before + 32 * MIB,
        "RSS grew from {rss_before} to {rss_flood} bytes under a flood of Initials"
    );
    // The abandoned handshakes are dropped after --handshake-timeout-secs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = server.scrape().await;
    assert_eq!(common::metric(&page, "memds_handshakes_in_progress"), 0.0);
    assert!(
        common::metric(
            &page,
            "memds_connections_refused_total{reason=\"handshake_timeout\"}"
        ) >= 8.0
    );
    // Every handshake that held state was abandoned at its timeout: the eight of the
    // reproduction and, of the flood, no more than --max-handshakes.
    let abandoned = common::metric(
        &page,
        "memds_connections_refused_total{reason=\"handshake_timeout\"}",
    );
    assert!(
        abandoned <= 8.0 + 256.0,
        "{abandoned} handshakes held state and timed out"
    );
    eprintln!("bare Initials: {abandoned} handshakes held state until their timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_their_bound_are_refused_and_authenticated_connections_past_theirs_closed()
{
    let _serial = ONE_AT_A_TIME.lock().await;
    // No Retry (the threshold is above the bound), 16 handshakes at most.
    let server = Spawned::start(
        "handshake-bound",
        &[
            "--max-handshakes",
            "16",
            "--retry-above",
            "1000",
            "--max-connections",
            "4",
            "--handshake-timeout-secs",
            "3",
        ],
    );
    let ca = server.tls_dir.join("ca.pem");
    let quic = server.quic;
    tokio::task::spawn_blocking(move || bare_initials(quic, &ca, 100))
        .await
        .expect("join");
    // Every Initial reached the server: sixteen handshakes hang, the rest were refused.
    server
        .wait_metric(
            "memds_handshakes_in_progress",
            Duration::from_secs(5),
            |n| n >= 16.0,
        )
        .await;
    let page = server.scrape().await;
    assert_eq!(common::metric(&page, "memds_handshakes_in_progress"), 16.0);
    assert!(
        common::metric(
            &page,
            "memds_connections_refused_total{reason=\"handshake_limit\"}"
        ) >= 50.0,
        "most of the 84 Initials past the bound were refused (a loaded machine may drop a few \
         at the socket)"
    );
    // The hanging handshakes time out; then clients get in again.
    let hanging = server
        .wait_metric(
            "memds_handshakes_in_progress",
            Duration::from_secs(10),
            |n| n == 0.0,
        )
        .await;
    assert_eq!(hanging, 0.0, "the hanging handshakes never timed out");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = server.client(Role::Router).await;
        c.stats().await.expect("served");
        clients.push(c);
    }
    // A fifth authenticated connection is closed as soon as it is known, with a reason.
    let fifth = common::connector(&server.tls_dir, Role::Router)
        .connect(server.quic)
        .await;
    let refusal = match fifth {
        Err(e) => e.to_string(),
        Ok(c) => match c.stats().await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a fifth connection was served past --max-connections 4"),
        },
    };
    assert!(refusal.contains("connection limit"), "{refusal}");
    for c in &clients {
        c.stats().await.expect("the four are unaffected");
    }
    let page = server.scrape().await;
    assert!(
        common::metric(
            &page,
            "memds_connections_refused_total{reason=\"connection_limit\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_authenticated_connections_is_closed_at_the_limit_and_holds_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Spawned::start("connection-flood", &["--max-connections", "50"]);
    let table = put_table(&server, 2_000).await;
    let router = SteadyRouter::start(&server, &table, 100).await;
    let rss_before = server.rss();
    // 300 router connections, 30 at a time: 49 get the slots left, every other one is closed
    // with the connection-limit code as soon as its handshake is done.
    let connector = Arc::new(common::connector(&server.tls_dir, Role::Router));
    let mut held = Vec::new();
    let mut busy = 0;
    for _ in 0..10 {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let (connector, addr) = (Arc::clone(&connector), server.quic);
            wave.spawn(async move {
                let client = connector.connect(addr).await?;
                client.stats().await.map(|_| client)
            });
        }
        while let Some(joined) = wave.join_next().await {
            match joined.expect("a connection task") {
                Ok(client) => held.push(client),
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains("connection limit"), "{text}");
                    busy += 1;
                }
            }
        }
    }
    let rss_flood = server.rss();
    let page = server.scrape().await;
    let refused = common::metric(
        &page,
        "memds_connections_refused_total{reason=\"connection_limit\"}",
    );
    let p99 = router
        .served_throughout(20, Duration::from_millis(500))
        .await;
    eprintln!(
        "connection flood: {} served, {busy} closed at the limit ({refused} counted); RSS \
         {:.1} -> {:.1} MiB; router p99 {p99:?}",
        held.len(),
        rss_before as f64 / MIB as f64,
        rss_flood as f64 / MIB as f64
    );
    assert_eq!(
        held.len(),
        49,
        "the well-behaved router holds the 50th slot"
    );
    assert_eq!(busy, 251);
    assert!(refused >= 251.0);
    assert!(
        rss_flood < rss_before + 48 * MIB,
        "RSS grew from {rss_before} to {rss_flood} bytes"
    );
    // The slots come back when their connections go.
    drop(held);
    let started = Instant::now();
    loop {
        let connected = common::connector(&server.tls_dir, Role::Admin)
            .connect(server.quic)
            .await;
        let served = match connected {
            Ok(c) => c.stats().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match served {
            Ok(()) => break,
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                panic!("no freed slot was taken within 10 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_flood_is_shed_fairly_while_writes_and_peers_pass() {
    let _serial = ONE_AT_A_TIME.lock().await;
    const LIMIT: u64 = 20_000;
    let server = Spawned::start(
        "lookup-flood",
        &["--max-lookups-per-sec", &LIMIT.to_string()],
    );
    let table = put_table(&server, 5_000).await;

    // The flood: one router connection, 8 pipelined batches of 256 hashes at a time.
    let flooder = Arc::new(server.client(Role::Router).await);
    let stop_flood = Arc::new(AtomicBool::new(false));
    let (admitted, shed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flood = Vec::new();
    for task in 0..8u64 {
        let (client, table, stop) = (Arc::clone(&flooder), table.clone(), Arc::clone(&stop_flood));
        let (admitted, shed) = (Arc::clone(&admitted), Arc::clone(&shed));
        flood.push(tokio::spawn(async move {
            let mut other = Vec::new();
            let hashes: Vec<u64> = (0..256).map(|i| i * 7_919 + task).collect();
            while !stop.load(Ordering::Relaxed) {
                match client.batch_lookup(&table, hashes.clone()).await {
                    Ok(_) => admitted.fetch_add(256, Ordering::Relaxed),
                    Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => {
                        shed.fetch_add(256, Ordering::Relaxed)
                    }
                    Err(e) => {
                        other.push(e.to_string());
                        break;
                    }
                };
            }
            other
        }));
    }
    // The flooders reach full speed before the measured window opens (a fixed ramp-up: there is
    // no event to wait for).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server
        .client(Role::Admin)
        .await
        .stats()
        .await
        .expect("stats");
    let window = Instant::now();

    // A well-behaved router, 200 lookups a second (well under its fair share of 10,000).
    let router = SteadyRouter::start(&server, &table, 200).await;
    // Writes and peers are never shed.
    let admin = server.client(Role::Admin).await;
    let started = Instant::now();
    admin
        .put_table(&common::table(1, 2_000, 1))
        .await
        .expect("a put during the flood");
    let put_took = started.elapsed();
    let peer = server.client(Role::Peer).await;
    peer.summary()
        .await
        .expect("a peer's summary during the flood");
    let pulled = peer.get_table(&table, None).await.expect("a peer's pull");
    assert!(pulled.is_some());
    for _ in 0..200 {
        peer.lookup(&table, 42)
            .await
            .expect("a peer's lookups are not shed");
    }
    // The measured window: three seconds of flood.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server
        .client(Role::Admin)
        .await
        .stats()
        .await
        .expect("stats");
    let secs = window.elapsed().as_secs_f64();
    let p99 = router
        .served_throughout(400, Duration::from_millis(500))
        .await;
    stop_flood.store(true, Ordering::Relaxed);
    for f in flood {
        let other = f.await.expect("a flood task");
        assert!(other.is_empty(), "the flood got other errors: {other:?}");
    }
    let served = (after.lookups_total - before.lookups_total) as f64 / secs;
    let shed_rate = (after.lookups_shed_total - before.lookups_shed_total) as f64 / secs;
    eprintln!(
        "lookup flood: served {served:.0}/s, shed {shed_rate:.0}/s at a limit of {LIMIT}/s; \
         flood admitted {} shed {} in all; put took {put_took:?}; router p99 {p99:?}",
        admitted.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed)
    );
    assert!(
        shed_rate > 0.0,
        "nothing was shed: the flood did not exceed the limit"
    );
    // Lookups served include the peer's 200 and the put's; the limit holds within a burst.
    assert!(
        served <= LIMIT as f64 * 1.15 + 300.0,
        "served {served:.0} lookups a second past a limit of {LIMIT}"
    );
    assert!(
        put_took < Duration::from_secs(5),
        "the put took {put_took:?}"
    );
    let page = server.scrape().await;
    assert!(common::metric(&page, "memds_lookups_shed_total") > 0.0);
    assert!(common::metric(&page, "memds_errors_total{code=\"overloaded\"}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_far_past_the_in_flight_bound_are_all_answered_in_order_with_bounded_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Spawned::start("in-flight", &["--max-lookups-per-sec", "5000"]);
    let table = put_table(&server, 2_000).await;
    let router = SteadyRouter::start(&server, &table, 100).await;
    let rss_before = server.rss();
    // 20,000 lookups written at once (the server answers 1,024 frames per write; flow control
    // holds back the rest), read concurrently.
    const N: u64 = 20_000;
    let mut frames = Vec::new();
    for id in 1..=N {
        let lookup = Request::Lookup {
            table: table.clone(),
            hash: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            min_version: None,
        };
        wire::encode_request(id, &lookup, &mut frames);
    }
    let conn = raw_connection(&server, Role::Router).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
    let writer = tokio::spawn(async move {
        send.write_all(&frames)
            .await
            .expect("the requests are taken");
        send.finish().expect("finish");
        send
    });
    let mut decoder = wire::FrameDecoder::new(64 << 20);
    let (mut next, mut routes, mut overloaded) = (1u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut rss_peak = 0;
    while next <= N {
        let n = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf))
            .await
            .expect("answers keep coming")
            .expect("read")
            .expect("the stream is open");
        decoder.push(&buf[..n]);
        while let Some((id, payload)) = decoder.next_frame().expect("a frame") {
            assert_eq!(id, next, "answers in order");
            next += 1;
            match wire::decode_response(payload).expect("a response") {
                Response::Routes(_) => routes += 1,
                Response::Error(e) if e.code == ErrorCode::Overloaded => overloaded += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        if next % 2_000 == 0 {
            rss_peak = rss_peak.max(server.rss());
        }
    }
    let _send = writer.await.expect("the writer");
    rss_peak = rss_peak.max(server.rss());
    // The burst takes well under a second here; the router keeps going a moment after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p99 = router
        .served_throughout(20, Duration::from_millis(500))
        .await;
    eprintln!(
        "20,000 pipelined lookups: {routes} answered, {overloaded} overloaded, in order; RSS \
         {:.1} MiB before, peak {:.1} MiB; router p99 {p99:?}",
        rss_before as f64 / MIB as f64,
        rss_peak as f64 / MIB as f64
    );
    assert_eq!(routes + overloaded, N);
    assert!(
        overloaded > 0,
        "a burst of 20,000 past a limit of 5,000/s shed nothing"
    );
    assert!(
        rss_peak < rss_before + 32 * MIB,
        "RSS grew from {rss_before} to {rss_peak} bytes"
    );
}

/// A raw QUIC connection with a role's certificate, for sending what no client library would.
async fn raw_connection(server: &Spawned, role: Role) -> quinn::Connection {
    let tls = ClientTls::from_dir(&server.tls_dir, role).expect("TLS material");
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("an endpoint");
    endpoint.set_default_client_config(tls.quic_config().expect("config"));
    endpoint
        .connect(server.quic, "memds")
        .expect("connect")
        .await
        .expect("handshake")
}

/// The header of a frame declaring `payload` bytes after the id.
fn frame_header(payload: usize, id: u64) -> Vec<u8> {
    let mut h = u32::try_from(payload + 8)
        .expect("fits")
        .to_le_bytes()
        .to_vec();
    h.extend_from_slice(&id.to_le_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_frames_are_reset_in_time_and_hold_no_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Spawned::start("half-frames", &["--frame-timeout-secs", "1"]);
    let table = put_table(&server, 2_000).await;
    let router = SteadyRouter::start(&server, &table, 100).await;
    let rss_before = server.rss();
    // 50 router connections x 4 streams, each declaring a 60 KB frame, sending half of it,
    // then nothing (half of them trickle a byte every 100 ms: slowloris).
    let mut held = Vec::new();
    for c in 0..50 {
        let conn = raw_connection(&server, Role::Router).await;
        for s in 0..4u64 {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&frame_header(60_000, s))
                .await
                .expect("write");
            send.write_all(&[7u8; 30_000]).await.expect("write");
            held.push((send, recv, c % 2 == 0));
        }
    }
    let rss_held = server.rss();
    let trickle_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < trickle_until {
        for (send, _, trickle) in held.iter_mut() {
            if *trickle {
                let _ = send.write_all(&[1]).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every stream was reset by the server, with the frame-timeout code.
    let mut reset = 0;
    for (_, mut recv, _) in held {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(2), recv.read(&mut buf)).await {
            Ok(Err(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, close_code::FRAME_TIMEOUT.into());
                reset += 1;
            }
            other => panic!("a half-sent frame's stream was not reset: {other:?}"),
        }
    }
    let p99 = router
        .served_throughout(200, Duration::from_millis(500))
        .await;
    let page = server.scrape().await;
    let counted = common::metric(&page, "memds_stream_resets_total{reason=\"frame_timeout\"}");
    eprintln!(
        "half-sent frames: {reset} streams reset ({counted} counted); RSS {:.1} MiB before, \
         {:.1} MiB holding 200 half frames; router p99 {p99:?}",
        rss_before as f64 / MIB as f64,
        rss_held as f64 / MIB as f64
    );
    assert_eq!(reset, 200);
    assert!(counted >= 200.0);
    // 200 half frames of 30 KB are 6 MB; each connection's unread bytes are bounded by its
    // 256 KiB window.
    assert!(
        rss_held < rss_before + 48 * MIB,
        "RSS grew from {rss_before} to {rss_held} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routers_oversized_frame_is_refused_from_its_header_and_an_admins_is_not() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Spawned::start("oversized", &[]);
    // A router declares a 1 MiB frame (its limit is 64 KiB) and sends only the header: it is
    // answered at once, under id 0, and the connection is closed.
    let conn = raw_connection(&server, Role::Router).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
    send.write_all(&frame_header(1 << 20, 9))
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let (id, reply) = loop {
        let mut decoder = wire::FrameDecoder::new(1 << 20);
        decoder.push(&answer);
        if let Some((id, payload)) = decoder.next_frame().expect("a frame") {
            break (id, wire::decode_response(payload).expect("a response"));
        }
        assert!(Instant::now() < deadline, "no answer to an oversized frame");
        match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => answer.extend_from_slice(&buf[..n]),
            other => panic!("the stream ended without an answer: {other:?}"),
        }
    };
    assert_eq!(id, 0);
    match reply {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains("65536"), "{}", e.message);
        }
        other => panic!("expected too_large, got {other:?}"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection is closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::BAD_FRAME.into()),
        "{closed:?}"
    );
    // An admin may send a frame of that size: a put carrying 1 MiB of garbage is read whole
    // and refused for what it is (not its size).
    let admin = server.client(Role::Admin).await;
    let put = Request::PutTable {
        snapshot: vec![0x5Au8; 1 << 20],
    };
    match admin.call(&put).await {
        Err(ClientError::Server(e)) => assert_ne!(e.code, ErrorCode::TooLarge, "{e:?}"),
        other => panic!("expected a typed refusal of the snapshot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_drain_are_cut_off_and_do_not_hold_up_shutdown() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut server = Spawned::start(
        "no-drain",
        &[
            "--write-timeout-secs",
            "1",
            "--max-lookups-per-sec",
            "10000000",
        ],
    );
    let table = put_table(&server, 50_000).await;
    let router = SteadyRouter::start(&server, &table, 100).await;
    let rss_before = server.rss();
    // Ten router connections each ask for 300 ranges of 4,096 routes (about 50 MB of answers
    // each) and never read a byte.
    let range = Request::Range {
        table: table.clone(),
        from: 0,
        to: u64::MAX,
        limit: 4_096,
        min_version: None,
    };
    let mut frames = Vec::new();
    for id in 1..=300 {
        wire::encode_request(id, &range, &mut frames);
    }
    let mut held = Vec::new();
    for _ in 0..10 {
        let conn = raw_connection(&server, Role::Router).await;
        let (mut send, recv) = conn.open_bi().await.expect("a stream");
        // The server stops reading once its answers back up; what fits is sent.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&frames)).await;
        held.push((conn, send, recv));
    }
    // The stuck readers' streams are reset once the write timeout passes.
    server
        .wait_metric(
            "memds_stream_resets_total{reason=\"write_timeout\"}",
            Duration::from_secs(20),
            |n| n >= 10.0,
        )
        .await;
    let rss_held = server.rss();
    let page = server.scrape().await;
    let resets = common::metric(&page, "memds_stream_resets_total{reason=\"write_timeout\"}");
    let p99 = router
        .served_throughout(200, Duration::from_millis(500))
        .await;
    eprintln!(
        "readers that never drain: {resets} streams reset; RSS {:.1} MiB before, {:.1} MiB \
         with ten stuck readers; router p99 {p99:?}",
        rss_before as f64 / MIB as f64,
        rss_held as f64 / MIB as f64
    );
    assert!(
        resets >= 10.0,
        "{resets} write timeouts for 10 stuck readers"
    );
    assert!(
        rss_held < rss_before + 64 * MIB,
        "RSS grew from {rss_before} to {rss_held} bytes"
    );
    drop(held);

    // Shutdown with a reader stuck mid-answer: it gets the short grace, not the write timeout.
    let mut server2 = Spawned::start("no-drain-shutdown", &["--write-timeout-secs", "600"]);
    let table2 = put_table(&server2, 50_000).await;
    let conn = raw_connection(&server2, Role::Router).await;
    let (mut send, _recv) = conn.open_bi().await.expect("a stream");
    let mut frames = Vec::new();
    let range2 = Request::Range {
        table: table2,
        from: 0,
        to: u64::MAX,
        limit: 4_096,
        min_version: None,
    };
    for id in 1..=300 {
        wire::encode_request(id, &range2, &mut frames);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&frames)).await;
    // The server is mid-answer, blocked on the reader, when the signal arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = server2.terminate();
    eprintln!("shutdown with a stuck reader took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "shutdown waited {took:?} on a client that does not read"
    );
    let _ = server.terminate();
}
