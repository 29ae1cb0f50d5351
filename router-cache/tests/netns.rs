//! The fleet across real hosts: three memds-servers and two router caches, each host a network
//! namespace of its own, joined by a bridge (with a netem delay on every link where the kernel
//! has netem). Everything runs in this one process: each server on a thread that entered its
//! host's namespace (and a tokio runtime built there, whose threads inherit it), the routers, the
//! admin writer and the checks on a thread in the routers' namespace.
//!
//! The scenario: the fleet starts and becomes ready; a table of a few thousand partitions is put
//! through server 1; two routers send constant lookup traffic; a writer splits a partition through
//! server 1 every 100 ms; server 3 is cut from every other host for ten anti-entropy periods, then
//! healed. The three servers must then converge to the same map within a bound, no router call
//! may fail, and no router may ever be handed a route of a partition older (by table version)
//! than one it was already handed.
//!
//! Needs root, `ip` and `tc` (iproute2): it fails, never skips, without them.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::TableMap;
use memds_proto::model::TableSpec;
use memds_proto::synth::{self, SynthConfig};
use memds_server::ServerConfig;
use memds_server::fleet::FleetConfig;
use router_cache::RouterCache;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Servers in the fleet.
const SERVERS: usize = 3;
/// Each server's QUIC port (on its own host's address).
const QUIC_PORT: u16 = 7400;
/// Each server's metrics (and `/ready`) port.
const METRICS_PORT: u16 = 9400;
/// Partitions of the table.
const PARTITIONS: usize = 3000;
/// The fleet's anti-entropy period.
const ANTI_ENTROPY: Duration = Duration::from_millis(300);
/// How long server 3 is cut off: ten anti-entropy periods.
const PARTITION: Duration = Duration::from_secs(3);
/// Time between two writes of the writer.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// How long the fleet may take to converge after the heal (and after the writes stop).
const CONVERGE: Duration = Duration::from_secs(15);
/// How long servers may take to start and become ready.
const READY: Duration = Duration::from_secs(30);
/// How long writes go on after the heal.
const WRITES_AFTER_HEAL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Requirements.

/// Fails (never skips) when the test cannot build its hosts.
fn require_root_and_iproute2() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "tests/netns.rs builds network namespaces, veth pairs and a bridge and needs root \
         (effective uid here: {euid}); CI runs it as root"
    );
    for tool in ["ip", "tc"] {
        match Command::new(tool).arg("-V").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`{tool} -V` failed ({}): {}; tests/netns.rs needs iproute2's `{tool}` \
                 (apt-get install iproute2)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "`{tool}` is missing ({e}); tests/netns.rs needs iproute2's `ip` and `tc` \
                 (apt-get install iproute2)"
            ),
        }
    }
}

/// Runs a command; its stderr, or the error starting it.
fn try_run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run(args: &[&str]) {
    if let Err(e) = try_run(args) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The hosts.

/// The hosts of one run: a bridge in a namespace of its own, and one namespace per server and
/// one for the routers, each joined to the bridge by a veth pair. Names carry the pid. Dropping
/// it deletes every veth, the bridge and every namespace it made, in that order, whatever
/// happened.
struct Net {
    pid: u32,
    subnet: u8,
    /// Namespaces made, in order.
    namespaces: Vec<String>,
    /// Interfaces made, as (namespace, name), in order.
    links: Vec<(String, String)>,
    /// Whether the links delay packets (netem).
    netem: bool,
}

/// A host: its namespace, the veth end inside it, the veth end on the bridge, its address and
/// the MAC address of its end.
#[derive(Clone, Debug)]
struct Host {
    ns: String,
    dev: String,
    bridge_port: String,
    addr: Ipv4Addr,
    mac: String,
}

impl Net {
    fn new() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            // Every address lives in this run's namespaces only, so no clash is possible with
            // the machine's networks or another run's; the pid only tells runs apart in `ip`.
            subnet: 100 + (pid % 150) as u8,
            namespaces: Vec::new(),
            links: Vec::new(),
            netem: true,
        }
    }

    fn bridge_ns(&self) -> String {
        format!("mds{}-br", self.pid)
    }

    fn bridge(&self) -> String {
        format!("b{}", self.pid)
    }

    /// Server `i` (1-based) or, for `i == 0`, the routers' host.
    fn host(&self, i: usize) -> Host {
        let (tag, last) = if i == 0 {
            ("rt".to_owned(), 10)
        } else {
            (format!("s{i}"), i as u8)
        };
        Host {
            ns: format!("mds{}-{tag}", self.pid),
            dev: format!("e{}{tag}", self.pid),
            bridge_port: format!("v{}{tag}", self.pid),
            addr: Ipv4Addr::new(10, 77, self.subnet, last),
            mac: format!("02:4d:44:{:02x}:00:{last:02x}", self.subnet),
        }
    }

    fn add_ns(&mut self, name: &str) {
        run(&["ip", "netns", "add", name]);
        self.namespaces.push(name.to_owned());
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
    }

    /// Builds the topology.
    fn build() -> Self {
        let mut net = Self::new();
        let br_ns = net.bridge_ns();
        let bridge = net.bridge();
        net.add_ns(&br_ns);
        run(&["ip", "-n", &br_ns, "link", "add", &bridge, "type", "bridge"]);
        net.links.push((br_ns.clone(), bridge.clone()));
        run(&["ip", "-n", &br_ns, "link", "set", &bridge, "up"]);
        for i in 0..=SERVERS {
            let h = net.host(i);
            net.add_ns(&h.ns);
            run(&[
                "ip",
                "-n",
                &br_ns,
                "link",
                "add",
                &h.bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                &h.dev,
                "netns",
                &h.ns,
            ]);
            net.links.push((br_ns.clone(), h.bridge_port.clone()));
            run(&[
                "ip",
                "-n",
                &br_ns,
                "link",
                "set",
                &h.bridge_port,
                "master",
                &bridge,
            ]);
            run(&["ip", "-n", &br_ns, "link", "set", &h.bridge_port, "up"]);
            let cidr = format!("{}/24", h.addr);
            run(&["ip", "-n", &h.ns, "addr", "add", &cidr, "dev", &h.dev]);
            run(&["ip", "-n", &h.ns, "link", "set", &h.dev, "address", &h.mac]);
            run(&["ip", "-n", &h.ns, "link", "set", &h.dev, "up"]);
            net.delay(&h);
        }
        // Permanent neighbour entries: after the heal, packets flow at once instead of waiting
        // for ARP to retry (up to a second), so the catch-up measured is the fleet's.
        for i in 0..=SERVERS {
            let h = net.host(i);
            for j in (0..=SERVERS).filter(|&j| j != i) {
                let other = net.host(j);
                run(&[
                    "ip",
                    "-n",
                    &h.ns,
                    "neigh",
                    "replace",
                    &other.addr.to_string(),
                    "lladdr",
                    &other.mac,
                    "dev",
                    &h.dev,
                    "nud",
                    "permanent",
                ]);
            }
        }
        net
    }

    /// 5 ms (±1 ms) on the host's outgoing link: 10 ms round trips between hosts. A kernel
    /// without netem (some minimal VM kernels) runs the test without the delay, and says so.
    fn delay(&mut self, h: &Host) {
        if !self.netem {
            return;
        }
        let args = [
            "tc", "-n", &h.ns, "qdisc", "add", "dev", &h.dev, "root", "netem", "delay", "5ms",
            "1ms",
        ];
        match try_run(&args) {
            Ok(()) => {}
            Err(e) if e.contains("qdisc kind is unknown") => {
                self.netem = false;
                eprintln!(
                    "WARNING: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): the links \
                     between hosts run WITHOUT the 5 ms delay ({e})"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Cuts server `i` from every other host (its bridge port down: its packets, and packets
    /// to it, vanish without an error, as with a pulled cable), or heals it.
    fn set_cut(&self, i: usize, cut: bool) {
        let h = self.host(i);
        let state = if cut { "down" } else { "up" };
        run(&[
            "ip",
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &h.bridge_port,
            state,
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other; then the bridge; then the
        // namespaces (a namespace a thread is still in lives on, empty, until that thread ends).
        for (ns, dev) in self.links.iter().rev() {
            if let Err(e) = try_run(&["ip", "-n", ns, "link", "del", dev]) {
                eprintln!("cleanup: {e}");
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = try_run(&["ip", "netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Moves the calling thread (only it) into the network namespace `name`; threads it creates
/// afterwards are born there.
#[allow(unsafe_code)]
fn enter_netns(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns(2) with a valid descriptor this function owns (open for the call's whole
    // duration) and CLONE_NEWNET: it changes only the calling thread's network namespace and
    // touches no memory of this process.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// Servers, each on a thread of its own in its host's namespace.

struct ServerThread {
    index: usize,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Starts server `i` (1-based) and waits until it has bound its addresses.
    fn start(net: &Net, i: usize, data_dir: PathBuf, pki: &Path) -> Self {
        let host = net.host(i);
        let mut config = ServerConfig::new(SocketAddr::from((host.addr, QUIC_PORT)), data_dir);
        config.metrics_listen = Some(SocketAddr::from((host.addr, METRICS_PORT)));
        config.dev_tls_dir = Some(pki.to_owned());
        config.fleet = FleetConfig {
            peers: (1..=SERVERS)
                .filter(|&j| j != i)
                .map(|j| SocketAddr::from((net.host(j).addr, QUIC_PORT)).to_string())
                .collect(),
            anti_entropy: ANTI_ENTROPY,
            ..FleetConfig::default()
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<Result<(), String>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("server-{i}"))
            .spawn(move || {
                enter_netns(&host.ns);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("server-{i}-rt"))
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    match memds_server::start(config).await {
                        Ok(server) => {
                            let _ = started_tx.send(Ok(()));
                            let _ = stop_rx.await;
                            server.shutdown().await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(format!("{e:#}")));
                        }
                    }
                });
                drop(rt);
                let _ = done_tx.send(());
            })
            .expect("a server thread");
        let this = Self {
            index: i,
            stop: Some(stop),
            done,
            thread: Some(thread),
        };
        match started.recv_timeout(READY) {
            Ok(Ok(())) => this,
            Ok(Err(e)) => panic!("server {i} did not start: {e}"),
            Err(e) => panic!("server {i} did not start within {READY:?}: {e}"),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A server that does not stop in time is left behind (the process ends anyway) rather
        // than hanging the test.
        match self.done.recv_timeout(Duration::from_secs(20)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("server {} did not shut down within 20 s", self.index);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the routers saw.

/// A route of one partition as a router was handed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    version: u64,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Record {
    calls: u64,
    hits: u64,
    /// Failed calls: when (since traffic started) and why.
    failures: Vec<(Duration, String)>,
    /// The newest (version, epoch) handed out per partition.
    newest: HashMap<u64, Seen>,
    /// Routes older than one handed out before for the same partition, or of the same or a
    /// newer version with an older epoch, or not holding the hash asked for.
    violations: Vec<String>,
    /// The newest table version handed out at all.
    max_version: u64,
    slowest: Duration,
}

impl Record {
    fn observe(&mut self, at: Duration, hash: u64, r: &memds_proto::Route) {
        let got = Seen {
            version: r.version.get(),
            epoch: r.epoch.get(),
        };
        let id = r.partition.get();
        if !r.contains(hash) {
            self.violations.push(format!(
                "{at:?}: partition {id} v{} [{:#x}, {:#x}] handed out for hash {hash:#x}",
                got.version, r.start, r.end_inclusive
            ));
        }
        if let Some(prev) = self.newest.get(&id).copied() {
            if got.version < prev.version {
                self.violations.push(format!(
                    "{at:?}: partition {id} handed out at version {} epoch {} after version {} \
                     epoch {}",
                    got.version, got.epoch, prev.version, prev.epoch
                ));
            } else if got.epoch < prev.epoch {
                self.violations.push(format!(
                    "{at:?}: partition {id} handed out at version {} with epoch {}, older than \
                     epoch {} seen at version {}",
                    got.version, got.epoch, prev.epoch, prev.version
                ));
            }
        }
        let e = self.newest.entry(id).or_insert(got);
        *e = (*e).max(got);
        self.max_version = self.max_version.max(got.version);
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One router's traffic: two lookups of random hashes every 2 ms until `stop`.
async fn traffic(cache: RouterCache, table: String, seed: u64, stop: Arc<AtomicBool>) -> Record {
    let mut rec = Record::default();
    let mut rng = seed;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..2 {
            let hash = splitmix(&mut rng);
            let t0 = Instant::now();
            let result = cache.route_hash_traced(&table, hash).await;
            rec.slowest = rec.slowest.max(t0.elapsed());
            rec.calls += 1;
            match result {
                Ok((route, hit)) => {
                    rec.hits += u64::from(hit);
                    rec.observe(started.elapsed(), hash, &route);
                }
                Err(e) => rec.failures.push((started.elapsed(), e.to_string())),
            }
        }
    }
    rec
}

// ---------------------------------------------------------------------------------------------
// Talking to the fleet from the routers' host.

/// `/ready`'s status and body.
async fn ready(metrics: SocketAddr) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(metrics)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut page = String::new();
        s.read_to_string(&mut page)
            .await
            .map_err(|e| e.to_string())?;
        let status = page
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line: {page:?}"))?;
        let body = page
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_owned();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
}

/// A fresh admin connection to `addr`, within 3 s.
async fn admin(connector: &Connector, addr: SocketAddr) -> Result<Client, String> {
    tokio::time::timeout(Duration::from_secs(3), connector.connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: no handshake within 3 s"))?
        .map_err(|e| e.to_string())
}

/// The map of `table` server `addr` holds, asked on a fresh connection.
async fn held(connector: &Connector, addr: SocketAddr, table: &str) -> Result<TableMap, String> {
    let c = admin(connector, addr).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), c.get_table(table, None)).await;
    c.close();
    got.map_err(|_| format!("get_table on {addr}: no answer within 5 s"))?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{addr} does not hold {table}"))
}

/// The version of `table` server `addr` holds (0 if none).
async fn version_on(connector: &Connector, addr: SocketAddr, table: &str) -> Result<u64, String> {
    let c = admin(connector, addr).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), c.list_tables()).await;
    c.close();
    Ok(got
        .map_err(|_| format!("list_tables on {addr}: no answer within 5 s"))?
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|t| t.name == table)
        .map_or(0, |t| t.version))
}

/// Waits until every server holds exactly `want`; how long that took.
async fn converge(
    connector: &Connector,
    servers: &[SocketAddr],
    want: &TableMap,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    let name = want.name().as_str();
    loop {
        let mut states = Vec::new();
        for &addr in servers {
            states.push(match held(connector, addr, name).await {
                Ok(m) if &m == want => "equal".to_owned(),
                Ok(m) => format!("v{}", m.version().get()),
                Err(e) => e,
            });
        }
        if states.iter().all(|s| s == "equal") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "the servers did not all hold {name} v{} within {bound:?}: {states:?}",
            want.version().get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table the test writes: `PARTITIONS` partitions at version 1.
fn initial_table() -> TableMap {
    let m = synth::generate_table(
        &SynthConfig {
            partitions: PARTITIONS,
            seed: 77,
            ..SynthConfig::default()
        },
        0,
    );
    let mut spec = TableSpec::from(&m);
    spec.version = 1;
    TableMap::try_from(spec).expect("a valid table")
}

/// The writer: splits a pseudo-random partition through server 1 every `WRITE_EVERY` until
/// `stop`, reading the map back after each; publishes the version it reached. Returns the last
/// map and how many updates it applied.
async fn writer(
    connector: Connector,
    server: SocketAddr,
    mut map: TableMap,
    stop: Arc<AtomicBool>,
    reached: Arc<AtomicU64>,
) -> Result<(TableMap, u64), String> {
    let client = admin(&connector, server).await?;
    let name = map.name().as_str().to_owned();
    let mut rng = 0xC0FF_EE00_u64;
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        let index = (splitmix(&mut rng) % map.partitions().len() as u64) as usize;
        let update = synth::split_update(&map, index, 50_000_000 + map.version().get());
        let want = update.version;
        client
            .update_partitions(update)
            .await
            .map_err(|e| format!("update to v{want}: {e}"))?;
        map = client
            .get_table(&name, None)
            .await
            .map_err(|e| format!("reading v{want} back: {e}"))?
            .ok_or_else(|| format!("{name} is gone after v{want}"))?;
        if map.version().get() != want {
            return Err(format!("wrote v{want}, read back v{}", map.version().get()));
        }
        reached.store(want, Ordering::Relaxed);
        writes += 1;
        tokio::time::sleep(WRITE_EVERY).await;
    }
    client.close();
    Ok((map, writes))
}

// ---------------------------------------------------------------------------------------------
// The scenario, on the routers' host.

#[derive(Clone)]
struct Plan {
    servers: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
    pki: PathBuf,
}

async fn scenario(plan: Plan, net: &Net) {
    let t0 = Instant::now();
    let servers = &plan.servers;
    // 1. The fleet becomes ready.
    for (i, &m) in plan.metrics.iter().enumerate() {
        let started = Instant::now();
        loop {
            let state = ready(m).await;
            if matches!(state, Ok((200, _))) {
                break;
            }
            assert!(
                started.elapsed() < READY,
                "server {} not ready within {READY:?}: {state:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("[{:?}] all three servers ready", t0.elapsed());

    // 2. The table, through server 1, reaches every server.
    let connector = Connector::new(
        &ClientTls::from_dir(&plan.pki, Role::Admin).expect("admin TLS material"),
        ConnectOptions {
            server_name: "memds".into(),
            ..ConnectOptions::default()
        },
    )
    .expect("an endpoint");
    let v1 = initial_table();
    let name = v1.name().as_str().to_owned();
    {
        let c = admin(&connector, servers[0])
            .await
            .expect("admin on server 1");
        c.put_table(&v1).await.expect("put");
        c.close();
    }
    let took = converge(&connector, servers, &v1, CONVERGE).await;
    eprintln!(
        "[{:?}] {name} ({PARTITIONS} partitions) on all three servers in {took:?}",
        t0.elapsed()
    );

    // 3. Two routers with constant traffic: one holding every route (mostly hits), one holding
    //    256 (mostly misses, so lookups that must be answered by the fleet flow all along).
    let mut caches = Vec::new();
    for capacity in [1 << 20, 256] {
        let c = RouterCache::builder(
            servers.clone(),
            ClientTls::from_dir(&plan.pki, Role::Router).expect("router TLS material"),
        )
        .capacity(capacity)
        // Room for a loaded two-core machine: a miss whose server was cut off is hedged to
        // another after 50 ms, so only a starved process comes near this.
        .request_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("a router cache");
        let started = Instant::now();
        while c.stats().servers_up < SERVERS as u64 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a router reached only {} servers",
                c.stats().servers_up
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        caches.push(c);
    }
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let traffic_tasks: Vec<_> = caches
        .iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(traffic(
                c.clone(),
                name.clone(),
                0x5EED_0000 + i as u64,
                Arc::clone(&stop_traffic),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("[{:?}] routers warm", t0.elapsed());

    // 4. Writes flow through server 1.
    let stop_writes = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(AtomicU64::new(v1.version().get()));
    let writes = tokio::spawn(writer(
        connector.clone(),
        servers[0],
        v1.clone(),
        Arc::clone(&stop_writes),
        Arc::clone(&reached),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 5. Server 3 is cut off for ten anti-entropy periods.
    let at_cut = reached.load(Ordering::Relaxed);
    net.set_cut(3, true);
    let cut = Instant::now();
    eprintln!(
        "[{:?}] server 3 cut off (writer at v{at_cut})",
        t0.elapsed()
    );
    let probe = tokio::time::timeout(Duration::from_secs(1), connector.connect(servers[2])).await;
    assert!(
        !matches!(probe, Ok(Ok(_))),
        "server 3 answered a handshake while cut off: the partition does not partition"
    );
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
    let at_heal = reached.load(Ordering::Relaxed);
    net.set_cut(3, false);
    let healed = Instant::now();
    let held_at_heal = version_on(&connector, servers[2], &name).await;
    eprintln!(
        "[{:?}] healed after {:?}: writer at v{at_heal}, server 3 held {held_at_heal:?} when \
         first asked ({:?} after the heal)",
        t0.elapsed(),
        healed.duration_since(cut),
        healed.elapsed()
    );
    assert!(
        at_heal > at_cut,
        "no write was applied while server 3 was cut off (v{at_cut} at the cut, v{at_heal} at \
         the heal)"
    );

    // 6. Server 3 catches up while writes still flow, then the writes stop and all three
    //    converge to the same map.
    let caught_up = loop {
        match version_on(&connector, servers[2], &name).await {
            Ok(v) if v >= at_heal => break healed.elapsed(),
            state => assert!(
                healed.elapsed() < CONVERGE,
                "server 3 did not reach v{at_heal} (the writer's version at the heal) within \
                 {CONVERGE:?} of the heal: {state:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "[{:?}] server 3 caught up with v{at_heal} {caught_up:?} after the heal",
        t0.elapsed()
    );
    tokio::time::sleep(WRITES_AFTER_HEAL.saturating_sub(healed.elapsed())).await;
    stop_writes.store(true, Ordering::Relaxed);
    let (last, updates) = writes
        .await
        .expect("the writer task")
        .unwrap_or_else(|e| panic!("a write through server 1 failed: {e}"));
    let stopped = Instant::now();
    let took = converge(&connector, servers, &last, CONVERGE).await;
    eprintln!(
        "[{:?}] {updates} updates written; all three servers hold the same map (v{}) {took:?} \
         after the last write, {:?} after the heal",
        t0.elapsed(),
        last.version().get(),
        stopped.duration_since(healed) + took
    );

    // 7. The routers: traffic a little longer on the converged fleet, then the invariants.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_traffic.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for t in traffic_tasks {
        records.push(t.await.expect("a traffic task"));
    }
    // Every router ends on the final map: a call, its refresh, and the next call answers it.
    let mut stale_at_end = Vec::new();
    let mut rng = 0xE4D_u64;
    for (i, c) in caches.iter().enumerate() {
        for _ in 0..200 {
            let h = splitmix(&mut rng);
            let _ = c.route_hash(&name, h).await;
            c.drain().await;
            let want = last.route(h);
            match c.route_hash(&name, h).await {
                Ok(r)
                    if r.partition == want.partition
                        && r.epoch == want.epoch
                        && r.start == want.start
                        && r.end_inclusive == want.end_inclusive
                        && r.leader == want.leader
                        && r.version.get() <= want.version.get() => {}
                other => stale_at_end.push(format!("router {i}, hash {h:#x}: {other:?}")),
            }
        }
    }
    for (i, (c, r)) in caches.iter().zip(&records).enumerate() {
        let st = c.stats();
        eprintln!(
            "router {i}: {} calls ({} hits), {} failed, slowest {:?}, {} partitions seen, newest \
             version handed out v{}; cache stats: misses {}, errors {}, behind {}, unavailable \
             {}, retried elsewhere {}, hedged {}, dropped {}, lookups sent {}",
            r.calls,
            r.hits,
            r.failures.len(),
            r.slowest,
            r.newest.len(),
            r.max_version,
            st.misses,
            st.errors,
            st.behind,
            st.unavailable,
            st.retried_elsewhere,
            st.hedged,
            st.dropped,
            st.lookups_sent
        );
        c.shutdown();
    }
    for (i, r) in records.iter().enumerate() {
        assert!(r.calls > 1000, "router {i} made only {} calls", r.calls);
        assert!(
            r.failures.is_empty(),
            "router {i}: {} of {} calls failed; first ones: {:?}",
            r.failures.len(),
            r.calls,
            &r.failures[..r.failures.len().min(10)]
        );
        assert!(
            r.violations.is_empty(),
            "router {i}: {} routes older than routes it was handed before; first ones: {:#?}",
            r.violations.len(),
            &r.violations[..r.violations.len().min(10)]
        );
    }
    assert!(
        stale_at_end.is_empty(),
        "{} routes differ from the final map once refreshed; first ones: {:#?}",
        stale_at_end.len(),
        &stale_at_end[..stale_at_end.len().min(10)]
    );
    connector.close();
    eprintln!("[{:?}] done", t0.elapsed());
}

#[test]
fn a_fleet_across_namespaced_hosts_converges_after_a_partition_and_routers_never_go_back() {
    require_root_and_iproute2();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();

    // Dropped last: the servers (below) stop first, then every link and namespace goes.
    let net = Net::build();
    eprintln!(
        "hosts: bridge in {}, servers {}, {}, {}, routers {} (netem delay: {})",
        net.bridge_ns(),
        net.host(1).addr,
        net.host(2).addr,
        net.host(3).addr,
        net.host(0).addr,
        if net.netem { "on" } else { "OFF" }
    );
    let root = tempfile::tempdir().expect("a temp dir");
    let pki = root.path().join("pki");
    memds_server::tls::ensure_dev_pki(&pki).expect("the development PKI");
    let servers: Vec<ServerThread> = (1..=SERVERS)
        .map(|i| ServerThread::start(&net, i, root.path().join(format!("server-{i}")), &pki))
        .collect();

    let plan = Plan {
        servers: (1..=SERVERS)
            .map(|i| SocketAddr::from((net.host(i).addr, QUIC_PORT)))
            .collect(),
        metrics: (1..=SERVERS)
            .map(|i| SocketAddr::from((net.host(i).addr, METRICS_PORT)))
            .collect(),
        pki,
    };
    let routers_ns = net.host(0).ns;
    let outcome = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("routers".into())
            .spawn_scoped(s, || {
                enter_netns(&routers_ns);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("routers-rt")
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(scenario(plan, &net));
                // Whatever is left (router reconnect loops) ends with the runtime.
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("the routers' thread")
            .join()
    });
    drop(servers);
    drop(net);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
