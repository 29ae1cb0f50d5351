//! `memds-ctl` against a fleet of real `memds-server` processes, peers of each other on
//! loopback: writes to every server or to one, `fleet-status` (lag, unreachable servers,
//! disagreeing digests, health), `explain`, the first answering server of a read, and
//! `host:port` names resolved.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::{CONVERGE, Peers};
use common::table;
use memds_proto::model::TableSpec;
use memds_proto::{Route, TableMap, key_hash};
use serde_json::{Value, json};

/// `memds-ctl` with the fleet's PKI (admin role) and `--server` as given.
struct Ctl {
    tls_dir: PathBuf,
}

/// What one run of `memds-ctl` left: exit status, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout's lines, each one JSON value.
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a JSON line ({e}): {l:?}; {}", self.stderr))
            })
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("one JSON value ({e}): {:?}; {}", self.stdout, self.stderr))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "failed: {}{}", self.stdout, self.stderr);
        self
    }
}

impl Ctl {
    fn new(peers: &Peers) -> Self {
        Self {
            tls_dir: peers.tls_dir(),
        }
    }

    fn run(&self, servers: &str, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_memds-ctl"))
            .args(["--server", servers, "--tls-dir"])
            .arg(&self.tls_dir)
            .args(args)
            .output()
            .expect("memds-ctl runs");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `a,b,c` of the fleet's servers `which`.
fn servers(peers: &Peers, which: &[usize]) -> String {
    which
        .iter()
        .map(|&i| peers.addr(i).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn write_json(dir: &Path, name: &str, json: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, json).expect("writing a temp file");
    file.to_str().expect("utf-8").to_owned()
}

/// One server's line of a fleet write.
fn acked(addr: SocketAddr, table: &str, version: u64, applied: bool) -> Value {
    json!({
        "server": addr.to_string(), "ok": true,
        "ack": {"table": table, "version": version, "applied": applied},
    })
}

/// Polls `fleet-status` until `done` holds for its JSON, which it returns.
async fn status_until(ctl: &Ctl, servers: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = ctl.run(servers, &["fleet-status"]).json();
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "fleet-status never got there: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fields of a server's `fleet-status` entry that depend on the run (uptime, instance,
/// connections) or the build (release, build, protocols, formats), checked and removed.
fn without_run_fields(mut server: Value) -> Value {
    let info = memds_server::server_info();
    assert_eq!(server["release"], env!("CARGO_PKG_VERSION"), "{server}");
    assert_eq!(server["build"], info.build, "{server}");
    assert_eq!(server["protocol"], "memds/2", "{server}");
    assert_eq!(
        server["protocols"],
        json!(["memds/2", "memds/1"]),
        "{server}"
    );
    assert_eq!(
        server["formats"],
        serde_json::to_value(&info.formats).expect("json"),
        "{server}"
    );
    assert!(server["uptime_seconds"].is_f64(), "{server}");
    assert!(server["instance"].is_u64(), "{server}");
    assert!(
        server["connections"].as_u64().is_some_and(|c| c >= 1),
        "{server}"
    );
    let map = server.as_object_mut().expect("an object");
    for field in [
        "uptime_seconds",
        "instance",
        "connections",
        "release",
        "build",
        "protocol",
        "protocols",
        "formats",
    ] {
        map.remove(field);
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_server_listed_or_the_first_that_takes_them() {
    let mut peers = Peers::new(3);
    peers.start_all();
    for i in 0..3 {
        peers.wait_ready(i).await;
    }
    let ctl = Ctl::new(&peers);
    let all = servers(&peers, &[0, 1, 2]);
    let addrs: Vec<SocketAddr> = (0..3).map(|i| peers.addr(i)).collect();
    let dir = peers.root().to_owned();

    // Every server answers, in the order listed; whichever got the put from replication
    // first acknowledges it unchanged.
    let v1 = table(0, 200, 1);
    let v1_file = write_json(&dir, "v1.json", &v1.to_json());
    let lines = ctl.run(&all, &["put-table", &v1_file]).ok().lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, addr) in lines.iter().zip(&addrs) {
        assert_eq!(line["server"], addr.to_string(), "{line}");
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["ack"]["table"], "table-0000", "{line}");
        assert_eq!(line["ack"]["version"], 1, "{line}");
    }
    peers.converged(&[0, 1, 2], "table-0000", 1).await;
    // Replication certainly got there first now: all three hold it and say so.
    let lines = ctl.run(&all, &["put-table", &v1_file]).ok().lines();
    assert_eq!(
        lines,
        addrs
            .iter()
            .map(|&a| acked(a, "table-0000", 1, false))
            .collect::<Vec<_>>()
    );

    // An update written to one server (printed as ever: one server, no "server" field),
    // then to all three once replication carried it.
    let split = memds_proto::synth::split_update(&v1, 10, 50_000);
    let split_file = write_json(
        &dir,
        "split.json",
        &serde_json::to_string(&split).expect("json"),
    );
    let one = ctl
        .run(&addrs[1].to_string(), &["update-partitions", &split_file])
        .ok()
        .json();
    assert_eq!(
        one,
        json!({"table": "table-0000", "version": 2, "applied": true})
    );
    peers.converged(&[0, 1, 2], "table-0000", 2).await;
    let lines = ctl
        .run(&all, &["update-partitions", &split_file])
        .ok()
        .lines();
    assert_eq!(
        lines,
        addrs
            .iter()
            .map(|&a| acked(a, "table-0000", 2, false))
            .collect::<Vec<_>>()
    );

    // A drop that replication brought first is acknowledged at the version dropped.
    let other = table(1, 50, 5);
    let other_file = write_json(&dir, "other.json", &other.to_json());
    ctl.run(&all, &["put-table", &other_file]).ok();
    peers.converged(&[0, 1, 2], "table-0001", 5).await;
    ctl.run(&addrs[2].to_string(), &["drop-table", "table-0001"])
        .ok();
    status_until(&ctl, &all, |s| {
        s["tables"][1]["servers_at_newest"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
            && s["tables"][1]["dropped"] == true
            && s["servers"].as_array().is_some_and(|all| {
                all.iter()
                    .all(|srv| srv["table_versions"][1]["dropped"] == true)
            })
    })
    .await;
    let lines = ctl.run(&all, &["drop-table", "table-0001"]).ok().lines();
    assert_eq!(
        lines,
        addrs
            .iter()
            .map(|&a| json!({"server": a.to_string(), "ok": true,
                             "ack": {"table": "table-0001", "version": 5}}))
            .collect::<Vec<_>>()
    );

    // A stale write fails everywhere: one error line per server, exit status 1.
    let run = ctl.run(&all, &["put-table", &v1_file]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for (line, addr) in run.lines().iter().zip(&addrs) {
        assert_eq!(line["server"], addr.to_string());
        assert_eq!(line["ok"], false);
        let error = line["error"].as_str().expect("an error");
        assert!(error.contains("stale"), "{error}");
        assert!(line.get("ack").is_none(), "{line}");
    }

    // `--write-to one`: the first server listed takes it, replication carries it to the rest.
    let v3 = table(0, 300, 3);
    let v3_file = write_json(&dir, "v3.json", &v3.to_json());
    let lines = ctl
        .run(&all, &["--write-to", "one", "put-table", &v3_file])
        .ok()
        .lines();
    assert_eq!(lines, [acked(addrs[0], "table-0000", 3, true)]);
    let status = status_until(&ctl, &all, |s| s["healthy"] == true).await;
    // Every server at version 3 of table-0000 with one digest, and the tombstone of
    // table-0001 everywhere.
    let digest = peers
        .summary(0)
        .await
        .tables
        .iter()
        .find(|t| t.name == "table-0000")
        .expect("held")
        .digest;
    let all_addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(
        status["tables"],
        json!([
            {"table": "table-0000", "newest_version": 3, "dropped": false,
             "servers_at_newest": all_addrs, "lagging": [], "digests_agree": true},
            {"table": "table-0001", "newest_version": 5, "dropped": true,
             "servers_at_newest": all_addrs, "lagging": [], "digests_agree": true},
        ])
    );
    let servers_json = status["servers"].as_array().expect("servers");
    assert_eq!(servers_json.len(), 3);
    for (s, addr) in servers_json.iter().zip(&addrs) {
        assert_eq!(
            without_run_fields(s.clone()),
            json!({
                "server": addr.to_string(), "given": addr.to_string(), "reachable": true,
                "error": null, "ready": true,
                "tables": 1, "partitions": v3.partitions().len(), "lagging": false,
                "table_versions": [
                    {"table": "table-0000", "version": 3, "digest": digest, "dropped": false,
                     "lag": 0},
                    {"table": "table-0001", "version": 5, "digest": 0, "dropped": true,
                     "lag": 0},
                ],
            })
        );
    }
    assert_eq!(status["healthy"], true);
    assert_eq!(status["releases"], json!({env!("CARGO_PKG_VERSION"): 3}));

    // With the first server gone, `one` moves on to the next and says which took it.
    peers.kill(0);
    let v4 = TableMap::try_from({
        let mut spec = TableSpec::from(&v3);
        spec.version = 4;
        spec
    })
    .expect("valid");
    let v4_file = write_json(&dir, "v4.json", &v4.to_json());
    let run = ctl
        .run(
            &all,
            &[
                "--write-to",
                "one",
                "--timeout-secs",
                "3",
                "put-table",
                &v4_file,
            ],
        )
        .ok();
    assert_eq!(run.lines(), [acked(addrs[1], "table-0000", 4, true)]);
    assert!(
        run.stderr
            .contains(&format!("memds-ctl: skipped {}", addrs[0])),
        "{}",
        run.stderr
    );
    peers.converged(&[1, 2], "table-0000", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_shows_lag_disagreement_and_unreachable_servers() {
    // Servers 0 and 1 are peers; server 2 is on its own, so it holds only what it is sent.
    let mut peers = Peers::new(3);
    peers.start_with_peers(0, &[1]);
    peers.start_with_peers(1, &[0]);
    peers.start_with_peers(2, &[]);
    for i in 0..3 {
        peers.wait_ready(i).await;
    }
    let ctl = Ctl::new(&peers);
    let all = servers(&peers, &[0, 1, 2]);
    let addrs: Vec<String> = (0..3).map(|i| peers.addr(i).to_string()).collect();
    let dir = peers.root().to_owned();
    let put = |servers: &str, map: &TableMap, file: &str| {
        let file = write_json(&dir, file, &map.to_json());
        ctl.run(servers, &["put-table", &file]).ok();
    };

    // table-0000: v2 on servers 0 and 1, v1 on server 2 (lag 1).
    put(&addrs[2], &table(0, 100, 1), "t0v1.json");
    put(&addrs[0], &table(0, 100, 2), "t0v2.json");
    // table-0001: v4 everywhere, but server 2's content differs.
    put(&addrs[0], &table(1, 100, 4), "t1.json");
    put(&addrs[2], &table(1, 60, 4), "t1-other.json");
    // table-0002: only on servers 0 and 1 (server 2 lags by all of it).
    put(&addrs[0], &table(2, 100, 7), "t2.json");
    for (name, version) in [("table-0000", 2), ("table-0001", 4), ("table-0002", 7)] {
        peers.converged(&[0, 1], name, version).await;
    }
    let digests = |i: usize| {
        let peers = &peers;
        async move {
            peers
                .summary(i)
                .await
                .tables
                .into_iter()
                .map(|t| (t.name, t.digest))
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let (d0, d2) = (digests(0).await, digests(2).await);
    assert_ne!(d0["table-0001"], d2["table-0001"]);

    let run = ctl.run(&all, &["fleet-status"]);
    // Every server answered: exit status 0 although the fleet is not healthy.
    let status = run.ok().json();
    assert_eq!(status["healthy"], false);
    assert_eq!(
        status["tables"],
        json!([
            {"table": "table-0000", "newest_version": 2, "dropped": false,
             "servers_at_newest": [addrs[0], addrs[1]], "lagging": [addrs[2]],
             "digests_agree": true},
            {"table": "table-0001", "newest_version": 4, "dropped": false,
             "servers_at_newest": addrs, "lagging": [], "digests_agree": false},
            {"table": "table-0002", "newest_version": 7, "dropped": false,
             "servers_at_newest": [addrs[0], addrs[1]], "lagging": [addrs[2]],
             "digests_agree": true},
        ])
    );
    let servers_json = status["servers"].as_array().expect("servers");
    for i in [0, 1] {
        assert_eq!(servers_json[i]["lagging"], false);
        assert_eq!(servers_json[i]["ready"], true);
        assert_eq!(
            servers_json[i]["table_versions"],
            json!([
                {"table": "table-0000", "version": 2, "digest": d0["table-0000"],
                 "dropped": false, "lag": 0},
                {"table": "table-0001", "version": 4, "digest": d0["table-0001"],
                 "dropped": false, "lag": 0},
                {"table": "table-0002", "version": 7, "digest": d0["table-0002"],
                 "dropped": false, "lag": 0},
            ])
        );
    }
    assert_eq!(
        without_run_fields(servers_json[2].clone()),
        json!({
            "server": addrs[2], "given": addrs[2], "reachable": true, "error": null,
            "ready": true, "tables": 2,
            "partitions": table(0, 100, 1).partitions().len() + table(1, 60, 4).partitions().len(),
            "lagging": true,
            "table_versions": [
                {"table": "table-0000", "version": 1, "digest": d2["table-0000"],
                 "dropped": false, "lag": 1},
                {"table": "table-0001", "version": 4, "digest": d2["table-0001"],
                 "dropped": false, "lag": 0},
                {"table": "table-0002", "version": null, "digest": null, "dropped": false,
                 "lag": 7},
            ],
        })
    );

    // The same, for people.
    let text = ctl
        .run(&all, &["fleet-status", "--format", "table"])
        .ok()
        .stdout;
    assert!(text.starts_with("SERVER "), "{text}");
    assert!(text.contains("DIFFER"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("table-0002")
            && l.contains(&addrs[2])
            && l.contains("missing")
            && l.ends_with(" 7")),
        "{text}"
    );
    assert!(text.ends_with("healthy: no\n"), "{text}");
    assert!(
        text.contains(&format!("\nreleases: {} (3)\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("memds/2") && l.contains("log 2, checkpoint 2, snapshot 1")),
        "{text}"
    );

    // A killed server is unreachable: printed, and exit status 1.
    peers.kill(1);
    let run = ctl.run(&all, &["--timeout-secs", "3", "fleet-status"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let status = run.json();
    assert_eq!(status["healthy"], false);
    let down = &status["servers"][1];
    assert_eq!(
        {
            let mut d = down.clone();
            d["error"] = Value::Null;
            d
        },
        json!({
            "server": addrs[1], "given": addrs[1], "reachable": false, "error": null,
            "ready": null, "release": null, "build": null, "protocol": null,
            "protocols": null, "formats": null, "uptime_seconds": null, "instance": null,
            "tables": null, "partitions": null, "connections": null, "lagging": false,
            "table_versions": [],
        })
    );
    let error = down["error"].as_str().expect("an error");
    assert!(error.contains("connecting"), "{error}");
    // The reachable servers are still compared with each other.
    assert_eq!(status["tables"][0]["lagging"], json!([addrs[2]]));
    assert_eq!(status["tables"][0]["servers_at_newest"], json!([addrs[0]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_partition_and_the_server_that_answered() {
    let mut peers = Peers::new(3);
    peers.start_all();
    for i in 0..3 {
        peers.wait_ready(i).await;
    }
    let ctl = Ctl::new(&peers);
    let all = servers(&peers, &[0, 1, 2]);
    let addrs: Vec<String> = (0..3).map(|i| peers.addr(i).to_string()).collect();
    let map = table(0, 200, 3);
    let file = write_json(peers.root(), "t.json", &map.to_json());
    ctl.run(&addrs[0], &["put-table", &file]).ok();
    peers.converged(&[0, 1, 2], "table-0000", 3).await;

    // The expected answer, from the map itself.
    let expect = |hash: u64, key: Value, answered: &str, skipped: Value| {
        let index = map.partitions().partition_point(|p| p.start <= hash) - 1;
        let p = map.partitions()[index];
        let leader = p.replicas.as_slice()[usize::from(p.leader)];
        let replicas: Vec<Value> = p
            .replicas
            .as_slice()
            .iter()
            .map(|&id| {
                let node = map.node(id).expect("listed");
                json!({"id": id.get(), "addr": node.addr, "az": node.az, "leader": id == leader})
            })
            .collect();
        json!({
            "table": "table-0000", "key": key, "hash": hash, "partition": p.id.get(),
            "start": p.start, "end_inclusive": map.end_inclusive(index),
            "epoch": p.epoch.get(), "leader": leader.get(), "replicas": replicas,
            "version": 3, "server": {"given": answered, "addr": answered},
            "skipped": skipped,
        })
    };
    let hash = key_hash(b"user#7");
    let got = ctl
        .run(
            &all,
            &["explain", "--table", "table-0000", "--key", "user#7"],
        )
        .ok()
        .json();
    assert_eq!(got, expect(hash, json!("user#7"), &addrs[0], json!([])));
    // By hash, on a partition boundary.
    let start = map.partitions()[17].start;
    let got = ctl
        .run(
            &all,
            &[
                "explain",
                "--table",
                "table-0000",
                "--hash",
                &start.to_string(),
            ],
        )
        .ok()
        .json();
    assert_eq!(got, expect(start, Value::Null, &addrs[0], json!([])));
    assert_eq!(got["partition"], map.partitions()[17].id.get());

    let text = ctl
        .run(
            &all,
            &[
                "explain",
                "--table",
                "table-0000",
                "--key",
                "user#7",
                "--format",
                "text",
            ],
        )
        .ok()
        .stdout;
    let route = map.route(hash);
    for needle in [
        "table-0000 (version 3)".to_owned(),
        format!("hash         {hash} "),
        format!("partition    {}", route.partition.get()),
        format!("answered by  {}", addrs[0]),
        "(leader)".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?} in\n{text}");
    }

    // The first server killed: the second answers, and explain says so.
    peers.kill(0);
    let run = ctl
        .run(
            &all,
            &[
                "--timeout-secs",
                "3",
                "explain",
                "--table",
                "table-0000",
                "--key",
                "user#7",
            ],
        )
        .ok();
    let mut got = run.json();
    let error = got["skipped"][0]["error"]
        .as_str()
        .expect("why server 0 was skipped")
        .to_owned();
    assert!(error.contains("connecting"), "{error}");
    got["skipped"][0]["error"] = json!("...");
    assert_eq!(
        got,
        expect(
            hash,
            json!("user#7"),
            &addrs[1],
            json!([{"server": addrs[0], "error": "..."}])
        )
    );

    // Reads of several servers print what one server would, and name the one that answered
    // on stderr.
    let run = ctl
        .run(
            &all,
            &[
                "--timeout-secs",
                "3",
                "lookup",
                "--table",
                "table-0000",
                "--key",
                "user#7",
            ],
        )
        .ok();
    let got: Route = serde_json::from_str(&run.stdout).expect("one route");
    assert_eq!(got, route);
    assert!(
        run.stderr.contains(&format!("answered by {}", addrs[1])),
        "{}",
        run.stderr
    );
    let run = ctl
        .run(&all, &["--timeout-secs", "3", "get-table", "table-0000"])
        .ok();
    assert_eq!(TableMap::from_json(&run.stdout).expect("a table"), map);
    // Stats and tables: one line per server, the dead one's an error.
    let run = ctl.run(&all, &["--timeout-secs", "3", "tables"]);
    assert_eq!(run.code, Some(1));
    let lines = run.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (&lines[0]["server"], &lines[0]["ok"]),
        (&json!(addrs[0]), &json!(false))
    );
    for (line, addr) in lines[1..].iter().zip(&addrs[1..]) {
        assert_eq!(line["server"], json!(addr));
        assert_eq!(line["tables"][0]["name"], "table-0000");
        assert_eq!(line["tables"][0]["version"], 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_resolved_and_names_the_certificate() {
    let mut peers = Peers::new(1);
    peers.start_with_peers(0, &[]);
    peers.wait_ready(0).await;
    let ctl = Ctl::new(&peers);
    let port = peers.addr(0).port();
    let by_name = format!("localhost:{port}");
    let by_addr = peers.addr(0).to_string();

    // One server, named: the output of one server, as ever.
    let stats = ctl.run(&by_name, &["stats"]).ok().json();
    assert_eq!(stats["server_version"], env!("CARGO_PKG_VERSION"));
    // The same server by name and by address is one server.
    let stats = ctl
        .run(&format!("{by_name},{by_addr}"), &["stats"])
        .ok()
        .json();
    assert_eq!(stats["tables"], 0);

    let file = write_json(peers.root(), "t.json", &table(0, 50, 1).to_json());
    ctl.run(&by_name, &["put-table", &file]).ok();
    let got = ctl
        .run(
            &by_name,
            &["explain", "--table", "table-0000", "--hash", "7"],
        )
        .ok()
        .json();
    assert_eq!(got["server"], json!({"given": by_name, "addr": by_addr}));

    // The name is what the certificate must carry: the development certificate names
    // `localhost`, not this.
    let run = ctl.run(
        &by_name,
        &[
            "--server-name",
            "not-the-server",
            "--timeout-secs",
            "5",
            "stats",
        ],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("connecting"), "{}", run.stderr);
    // An entry that is neither an address nor a name with a port is bad usage.
    let run = ctl.run("localhost", &["stats"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("expected IP:port or host:port"),
        "{}",
        run.stderr
    );
}

/// Issue 23, divergence 8: a drop's effect must not depend on which server takes it. Server 1
/// lags (started alone, it missed version 6); `drop-table` without a version drops the newest
/// version any server listed holds, so the lagging server's tombstone is at 6 and version 6
/// never brings the table back there. Sent to the lagging server alone, the plain drop would
/// have dropped 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_without_a_version_drops_the_newest_version_the_servers_hold() {
    let mut peers = Peers::new(2);
    peers.start_all();
    peers.wait_ready(0).await;
    peers.wait_ready(1).await;
    let ctl = Ctl::new(&peers);
    let dir = tempfile::tempdir().expect("temp dir");
    let v5 = table(2, 50, 5);
    let v5_file = write_json(dir.path(), "v5.json", &v5.to_json());
    let all = servers(&peers, &[0, 1]);
    ctl.run(&all, &["put-table", &v5_file]).ok();
    peers.converged(&[0, 1], "table-0002", 5).await;

    // Server 1 misses version 6: it runs alone while server 0 takes it.
    peers.kill(1);
    let v6 = table(2, 51, 6);
    let v6_file = write_json(dir.path(), "v6.json", &v6.to_json());
    ctl.run(&servers(&peers, &[0]), &["put-table", &v6_file])
        .ok();
    peers.start_with_peers(1, &[]);
    assert_eq!(peers.version(1, "table-0002").await, 5);

    let lines = ctl.run(&all, &["drop-table", "table-0002"]).ok().lines();
    for (line, i) in lines.iter().zip([0, 1]) {
        assert_eq!(
            line["ack"],
            json!({"table": "table-0002", "version": 6}),
            "server {i}: {line}"
        );
    }
    // Back with its peer, version 6 does not resurrect the table on server 1.
    peers.kill(1);
    peers.start(1);
    peers.wait_ready(1).await;
    let status = status_until(&ctl, &all, |s| {
        s["tables"][0]["servers_at_newest"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(status["tables"][0]["dropped"], true, "{status}");
    assert_eq!(status["tables"][0]["newest_version"], 6, "{status}");
}
