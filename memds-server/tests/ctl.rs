//! `memds-ctl` against a real `memds-server` process: every subcommand, JSON on stdout,
//! errors on stderr with a non-zero exit.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{table, temp_dir};
use memds_proto::{Route, TableMap, key_hash};

struct Ctl<'a> {
    server: String,
    tls_dir: &'a Path,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_memds-ctl"))
            .args(["--server", &self.server, "--tls-dir"])
            .arg(self.tls_dir)
            .args(args)
            .output()
            .expect("memds-ctl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "memds-ctl {args:?} failed: {stderr}");
        stdout
    }
}

#[test]
fn every_subcommand_prints_json_and_errors_exit_non_zero() {
    let dir = temp_dir("ctl");
    let mut server = Command::new(env!("CARGO_BIN_EXE_memds-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("announcement");
    let announced: serde_json::Value = serde_json::from_str(&line).expect("JSON first line");
    assert!(
        announced["metrics"]
            .as_str()
            .is_some_and(|m| m.starts_with("127.0.0.1:"))
    );
    let tls_dir = Path::new(announced["tls_dir"].as_str().expect("tls_dir")).to_owned();
    assert_eq!(tls_dir, dir.join("tls"));
    let ctl = Ctl {
        server: announced["quic"].as_str().expect("quic").to_owned(),
        tls_dir: &tls_dir,
    };

    let map = table(0, 200, 3);
    let file = dir.join("table.json");
    std::fs::write(&file, map.to_json()).expect("write");
    let ack: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["put-table", file.to_str().expect("utf-8")])).expect("json");
    assert_eq!(
        ack,
        serde_json::json!({"table": "table-0000", "version": 3, "applied": true})
    );

    let got = TableMap::from_json(&ctl.ok(&["get-table", "table-0000"])).expect("ingestion JSON");
    assert_eq!(got, map);

    let route: Route =
        serde_json::from_str(&ctl.ok(&["lookup", "--table", "table-0000", "--key", "user#7"]))
            .expect("route");
    assert_eq!(route, map.route(key_hash(b"user#7")));

    let hashes = [0u64, 17, u64::MAX, map.partitions()[9].start];
    let hashes_file = dir.join("hashes.txt");
    std::fs::write(
        &hashes_file,
        hashes.iter().map(|h| format!("{h}\n")).collect::<String>(),
    )
    .expect("write");
    let out = ctl.ok(&[
        "lookup",
        "--table",
        "table-0000",
        "--hashes-file",
        hashes_file.to_str().expect("utf-8"),
    ]);
    let routes: Vec<Route> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("route line"))
        .collect();
    assert_eq!(
        routes,
        hashes.iter().map(|&h| map.route(h)).collect::<Vec<_>>()
    );

    let update = dir.join("update.json");
    let p = map.partitions()[0];
    std::fs::write(
        &update,
        serde_json::json!({
            "table": "table-0000", "base_version": 3, "version": 4,
            "end_inclusive": map.end_inclusive(0),
            "partitions": [
                {"id": p.id.get(), "start": 0, "epoch": p.epoch.get() + 1,
                 "replicas": p.replicas.as_slice().iter().map(|r| r.get()).collect::<Vec<_>>(), "leader": 0},
                {"id": 77777, "start": 1000, "epoch": p.epoch.get() + 1,
                 "replicas": p.replicas.as_slice().iter().map(|r| r.get()).collect::<Vec<_>>(), "leader": 0}
            ]
        })
        .to_string(),
    )
    .expect("write");
    assert!(
        ctl.ok(&["update-partitions", update.to_str().expect("utf-8")])
            .contains("\"version\":4")
    );
    let route: Route =
        serde_json::from_str(&ctl.ok(&["lookup", "--table", "table-0000", "--hash", "1000"]))
            .expect("route");
    assert_eq!(route.partition.get(), 77777);

    let tables: serde_json::Value = serde_json::from_str(&ctl.ok(&["tables"])).expect("json");
    assert_eq!(tables[0]["name"], "table-0000");
    assert_eq!(tables[0]["version"], 4);
    let stats: serde_json::Value = serde_json::from_str(&ctl.ok(&["stats"])).expect("json");
    assert_eq!(stats["tables"], 1);
    assert!(stats["lookups_total"].as_u64().expect("number") >= 6);

    // Errors: stderr and a non-zero exit.
    let (ok, stdout, stderr) = ctl.run(&["lookup", "--table", "nope", "--hash", "1"]);
    assert!(!ok && stdout.is_empty());
    assert!(stderr.contains("unknown_table"), "{stderr}");
    let (ok, _, stderr) = ctl.run(&["put-table", file.to_str().expect("utf-8")]);
    assert!(!ok && stderr.contains("stale"), "{stderr}");
    std::fs::write(&file, "{\"table\": \"x\"}").expect("write");
    let (ok, _, stderr) = ctl.run(&["put-table", file.to_str().expect("utf-8")]);
    assert!(!ok && stderr.contains("invalid table JSON"), "{stderr}");

    assert!(
        ctl.ok(&["drop-table", "table-0000"])
            .contains("\"version\":4")
    );
    assert_eq!(ctl.ok(&["tables"]).trim(), "[]");

    // SIGTERM: a graceful stop with exit status 0.
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    assert!(server.wait().expect("exit").success());
    let _ = std::fs::remove_dir_all(&dir);
}
