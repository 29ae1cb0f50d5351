//! The metrics listener under real faults, against the real `memds-server` binary: clients
//! that open hundreds of connections and send nothing (or a header a byte at a time) must not
//! keep a scrape from being answered nor make the server hold more descriptors than its cap,
//! and are closed by the server after the header timeout; running out of descriptors must not
//! make the accept loop spin.
//!
//! Attackers connect from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to loopback), the
//! scraper from 127.0.0.1, as Prometheus and an attacker would be different hosts.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memds_server::http::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

/// How long a scrape may take while the listener is under attack (a debug build on a loaded
/// two-core machine).
const SCRAPE_BOUND: Duration = Duration::from_secs(2);

/// How long the attacker that keeps reconnecting pauses between connections.
const CHURN_PAUSE: Duration = Duration::from_millis(2);

/// The real server, killed when dropped (a failed assertion leaves no process behind); its
/// logs go to a file, shown if the test fails.
struct Server {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `memds-server` with metrics on 127.0.0.1:0, with at most `max_fds` descriptors
    /// if given.
    fn start(max_fds: Option<u64>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memds-server"));
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(max_fds) = max_fds {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the closure runs in the forked child before exec and calls only
            // setrlimit(2), which is async-signal-safe; it allocates nothing and touches no
            // lock.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: max_fds,
                        rlim_max: max_fds,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("memds-server starts");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let mut server = Self {
            child,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _dir: dir,
        };
        read.expect("the announcement");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("announcement {line:?}: {e}"));
        server.metrics = v["metrics"]
            .as_str()
            .expect("metrics address")
            .parse()
            .expect("address");
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open descriptors of the server process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/<pid>/fd")
            .count()
    }

    /// Open descriptors of the server process numbered below `limit` (it may have inherited
    /// some above its limit).
    fn fds_below(&self, limit: u64) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/<pid>/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|&fd| fd < limit)
            .count() as u64
    }

    /// User plus system CPU time the server process has used.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which ends with the last ')': state is field 3,
        // utime 14 and stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf(3) reads a system constant; it has no memory-safety preconditions.
        #[allow(unsafe_code)]
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Duration::from_secs_f64(ticks as f64 / hz as f64)
    }

    /// Lines of the server's log that contain `needle`.
    fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `GET path` from 127.0.0.1: status, body and how long it took; `None` if no complete
    /// answer came within `bound`.
    fn get(&self, path: &str, bound: Duration) -> Option<(u16, String, Duration)> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&self.metrics, bound).ok()?;
        s.set_read_timeout(Some(bound)).expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut page = Vec::new();
        s.read_to_end(&mut page).ok()?;
        let elapsed = start.elapsed();
        if elapsed > bound {
            return None;
        }
        let page = String::from_utf8(page).expect("UTF-8");
        let status = page.split_whitespace().nth(1)?.parse().ok()?;
        let body = page.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body, elapsed))
    }

    /// `/metrics`, retried until it answers (`within` at most).
    fn scrape(&self, within: Duration) -> String {
        let start = Instant::now();
        loop {
            match self.get("/metrics", Duration::from_secs(2)) {
                Some((200, body, _)) => return body,
                other if start.elapsed() > within => panic!("no scrape in {within:?}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- server log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The value of a series in a `/metrics` page (`name` with its labels, if any).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in the page"))
}

/// A connection to `to` from `from` (an address of 127/8), blocking.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime")
    });
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        socket.connect(to).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Whether the server has closed `s` (end of stream or reset), waiting `wait` at most for it.
fn closed_by_server(mut s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A response (there is none for these) or a 4xx: keep reading until the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("reading an idle connection: {e}"),
        }
    }
}

/// Samples the server's descriptor count until dropped, keeping the highest.
struct FdSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, max) = (Arc::clone(&stop), Arc::clone(&max));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                        max.fetch_max(dir.count(), Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Background attackers: threads that keep opening idle connections from 127.0.0.2 and
/// holding them, and that trickle a header into some, one byte every 200 ms; stopped (and
/// their connections dropped) on drop.
struct Attack {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Attack {
    fn start(to: SocketAddr, trickling: Vec<TcpStream>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let churn = std::thread::spawn({
            let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
            move || {
                // The newest 400, so the attacker always holds more than the cap.
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = connect_from([127, 0, 0, 2], to) {
                        held.push_back(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    if held.len() > 400 {
                        held.pop_front();
                    }
                    std::thread::sleep(CHURN_PAUSE);
                }
            }
        });
        let trickle = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let mut trickling = trickling;
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for s in &mut trickling {
                        let _ = s.write_all(b"a");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        Self {
            stop,
            opened,
            threads: vec![churn, trickle],
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits until `f` holds, `within` at most.
fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn idle_and_trickling_connections_neither_block_scrapes_nor_pile_up() {
    let server = Server::start(None);
    let (status, _, _) = server
        .get("/health", Duration::from_secs(10))
        .expect("/health answers");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let baseline = server.fds();
    let sampler = FdSampler::start(server.pid());

    // Hundreds of connections that send nothing, and some that send a partial header.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| connect_from([127, 0, 0, 2], server.metrics).expect("connect"))
        .collect();
    let trickling: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 2], server.metrics).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("partial header");
            s
        })
        .collect();
    // ...and more that keep coming while scrapes are made.
    let attack = Attack::start(server.metrics, trickling);
    std::thread::sleep(Duration::from_millis(300));
    let mut latencies = Vec::new();
    for i in 0..5 {
        let (status, body, took) = server
            .get("/metrics", SCRAPE_BOUND)
            .unwrap_or_else(|| panic!("scrape {i} was not answered within {SCRAPE_BOUND:?}"));
        assert_eq!(status, 200, "scrape {i}");
        assert!(
            body.contains("memds_http_connections_refused_total"),
            "{body}"
        );
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(200));
    }
    // A slow scraper (a distant Prometheus): it sends its request only after the attacker has
    // opened twice the cap of new connections. Its connection is then older than every
    // attacking one, but the only one from its address, so it is not the one dropped.
    let mut slow = TcpStream::connect(server.metrics).expect("connect");
    let (before, waited) = (attack.opened.load(Ordering::Relaxed), Instant::now());
    wait_until(Duration::from_secs(3), || {
        attack.opened.load(Ordering::Relaxed) - before >= 2 * MAX_CONNECTIONS
    });
    let overtaken = attack.opened.load(Ordering::Relaxed) - before;
    assert!(
        overtaken > MAX_CONNECTIONS,
        "the machine is too slow to check: {overtaken} attacking connections in {:?}",
        waited.elapsed()
    );
    let slow_wait = waited.elapsed();
    slow.set_read_timeout(Some(SCRAPE_BOUND)).expect("timeout");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("the slow scraper's connection is open");
    let mut answer = String::new();
    let read = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the slow scraper, overtaken by {overtaken} attacking connections in {slow_wait:?}, \
         got {answer:?} ({read:?})"
    );
    let opened = attack.opened.load(Ordering::Relaxed);
    drop(attack);
    let during_attack = sampler.max();
    println!(
        "baseline {baseline} fds; at most {during_attack} under attack (cap {MAX_CONNECTIONS}); \
         {} + 20 + {opened} attacking connections; scrapes took {latencies:?}; the slow \
         scraper waited {slow_wait:?} while {overtaken} connected",
        idle.len()
    );
    // The listener holds the cap, plus the connection it is admitting.
    assert!(
        during_attack <= baseline + MAX_CONNECTIONS + 1,
        "the server held {during_attack} descriptors (baseline {baseline}, cap {MAX_CONNECTIONS})"
    );

    // Fresh idle connections from another address: the server keeps them for the header
    // timeout, not much less, and closes them after it.
    let start = Instant::now();
    let fresh: Vec<TcpStream> = (0..10)
        .map(|_| connect_from([127, 0, 0, 3], server.metrics).expect("connect"))
        .collect();
    let early = HEADER_READ_TIMEOUT / 2;
    std::thread::sleep(early.saturating_sub(start.elapsed()));
    let closed_early = fresh
        .iter()
        .filter(|s| closed_by_server(s, Duration::from_millis(10)))
        .count();
    assert!(
        start.elapsed() < HEADER_READ_TIMEOUT,
        "the machine is too slow to check"
    );
    assert_eq!(
        closed_early, 0,
        "connections closed before the header timeout"
    );
    let margin = Duration::from_millis(2500);
    std::thread::sleep((HEADER_READ_TIMEOUT + margin).saturating_sub(start.elapsed()));
    let still_open = fresh
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_millis(10)))
        .count();
    assert_eq!(
        still_open,
        0,
        "idle connections still open {:?} after they were opened",
        start.elapsed()
    );
    // Every attacking connection is closed too (evicted, or timed out), and the server is
    // back to its baseline.
    let still_open = idle
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_millis(1)))
        .count();
    assert_eq!(still_open, 0, "attacking connections still open");
    assert!(
        wait_until(Duration::from_secs(2), || server.fds() <= baseline),
        "the server holds {} descriptors, {baseline} before the attack",
        server.fds()
    );

    let page = server.scrape(Duration::from_secs(5));
    let limit = metric(
        &page,
        "memds_http_connections_refused_total{reason=\"limit\"}",
    );
    let timeout = metric(
        &page,
        "memds_http_connections_refused_total{reason=\"timeout\"}",
    );
    println!("refused: {limit} at the limit, {timeout} timed out");
    assert!(
        limit >= (300 - MAX_CONNECTIONS) as f64,
        "{limit} refused at the limit"
    );
    assert!(timeout >= 10.0, "{timeout} timed out");
}

#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // Room for the server's own descriptors (about 15) and a few dozen connections, fewer
    // than the cap: accepting runs out of descriptors before the cap is reached.
    const MAX_FDS: u64 = 48;
    let server = Server::start(Some(MAX_FDS));
    server
        .get("/health", Duration::from_secs(10))
        .expect("/health answers");
    std::thread::sleep(Duration::from_millis(300));
    let baseline = server.fds();
    assert!(
        server.fds_below(MAX_FDS) + 10 < MAX_FDS,
        "{baseline} descriptors"
    );
    let idle_cpu = {
        let before = server.cpu();
        std::thread::sleep(Duration::from_secs(1));
        server.cpu() - before
    };

    // More connections than the server has descriptors left: it accepts until EMFILE, and the
    // rest wait in the backlog, so every accept fails until descriptors are freed.
    let held: Vec<TcpStream> = (0..100)
        .map(|_| connect_from([127, 0, 0, 2], server.metrics).expect("connect"))
        .collect();
    let accepted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || server.fds_below(MAX_FDS)
            == MAX_FDS),
        "the server's descriptors never ran out ({} of {MAX_FDS})",
        server.fds_below(MAX_FDS)
    );
    let warnings_before = server.log_lines("accept");
    let window = Duration::from_secs(2);
    let (cpu_before, start) = (server.cpu(), Instant::now());
    std::thread::sleep(window);
    let (spent, elapsed) = (server.cpu() - cpu_before, start.elapsed());
    let warnings = server.log_lines("accept") - warnings_before;
    let fds_after = server.fds_below(MAX_FDS);
    println!(
        "idle: {idle_cpu:?} CPU in 1 s; descriptors exhausted: {spent:?} CPU in {elapsed:?}, \
         {warnings} warnings, {fds_after} fds of {MAX_FDS}"
    );
    // Still within the header timeout of the held connections, so still out of descriptors.
    assert!(
        accepted.elapsed() < HEADER_READ_TIMEOUT,
        "the machine is too slow to check"
    );
    assert_eq!(fds_after, MAX_FDS, "descriptors were freed");
    assert!(
        spent < Duration::from_millis(300),
        "the server used {spent:?} of CPU in {elapsed:?} while out of descriptors"
    );
    // At most one warning per pause, and pauses of 100 ms at least.
    let most = (elapsed.as_millis() / 100) as usize + 1;
    assert!(
        warnings <= most,
        "{warnings} accept warnings in {elapsed:?}"
    );

    drop(held);
    let page = server.scrape(Duration::from_secs(10));
    let errors = metric(&page, "memds_http_accept_errors_total");
    println!("memds_http_accept_errors_total {errors}");
    assert!(errors > 0.0, "no accept error counted");
    assert!(
        wait_until(Duration::from_secs(5), || server.fds() <= baseline + 1),
        "{} descriptors after the connections closed, {baseline} before",
        server.fds()
    );
}
