//! `memds-ctl` against a real `memds-server` process: every subcommand, JSON on stdout,
//! errors on stderr with a non-zero exit; and the certificates `memds-ctl pki` issues, whose
//! roles a server enforces.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{KillOnDrop, TestServer, issue_cert_with_uris, table, temp_dir};
use memds_proto::model::{BatchSpec, RangeSpec, UpdateSpec};
use memds_proto::synth::split_update;
use memds_proto::{Route, TableMap, key_hash};
use memds_server::tls::TlsPaths;

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
    let dir_tmp = temp_dir("ctl");
    let dir = dir_tmp.path().to_path_buf();
    let mut server = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_memds-server"))
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
            .expect("server starts"),
    );
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

    // A batch of two splits, at version 5 (partitions 5 and 9 are as version 3 had them).
    // Written as the JSON ingestion format's batch (`BatchSpec`).
    let range = |u: UpdateSpec| RangeSpec {
        end_inclusive: u.end_inclusive,
        partitions: u.partitions,
    };
    let mut batch = BatchSpec {
        table: "table-0000".into(),
        base_version: 4,
        version: 5,
        nodes: vec![],
        ranges: vec![
            range(split_update(&map, 5, 88_888)),
            range(split_update(&map, 9, 88_889)),
        ],
    };
    let batch_file = dir.join("batch.json");
    std::fs::write(&batch_file, serde_json::to_string(&batch).expect("json")).expect("write");
    let ack: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["update-batch", batch_file.to_str().expect("utf-8")]))
            .expect("json");
    assert_eq!(
        ack,
        serde_json::json!({"table": "table-0000", "version": 5, "applied": true})
    );
    for r in &batch.ranges {
        let hash = r.partitions[1].start.to_string();
        let route: Route =
            serde_json::from_str(&ctl.ok(&["lookup", "--table", "table-0000", "--hash", &hash]))
                .expect("route");
        assert_eq!(route.partition.get(), r.partitions[1].id);
    }
    // Older than the table: refused, with the reason on stderr.
    (batch.base_version, batch.version) = (3, 4);
    std::fs::write(&batch_file, serde_json::to_string(&batch).expect("json")).expect("write");
    let (ok, _, stderr) = ctl.run(&["update-batch", batch_file.to_str().expect("utf-8")]);
    assert!(!ok && stderr.contains("stale"), "{stderr}");
    std::fs::write(&batch_file, "{\"table\": 1}").expect("write");
    let (ok, _, stderr) = ctl.run(&["update-batch", batch_file.to_str().expect("utf-8")]);
    assert!(!ok && stderr.contains("parsing"), "{stderr}");

    let tables: serde_json::Value = serde_json::from_str(&ctl.ok(&["tables"])).expect("json");
    assert_eq!(tables[0]["name"], "table-0000");
    assert_eq!(tables[0]["version"], 5);
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
            .contains("\"version\":5")
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
}

/// `memds-ctl` with no global options at all: the `pki` commands need no server.
fn bare_ctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memds-ctl"))
        .args(args)
        .output()
        .expect("memds-ctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pki_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = bare_ctl(args);
    assert!(ok, "memds-ctl {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).expect("one JSON object")
}

fn private_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600)
}

#[test]
fn pki_certificates_carry_the_roles_a_server_enforces() {
    let dir_tmp = temp_dir("pki");
    let dir = dir_tmp.path().to_path_buf();
    let pki = dir.join("pki");
    let p = pki.to_str().expect("utf-8");
    let path = |f: &str| pki.join(f).display().to_string();

    assert_eq!(
        pki_json(&["pki", "create-ca", "--dir", p]),
        serde_json::json!({"kind": "ca", "name": "MemDS CA", "cert": path("ca.pem"), "key": path("ca.key")})
    );
    let ca = std::fs::read(pki.join("ca.pem")).expect("ca.pem");
    let (ok, stdout, stderr) = bare_ctl(&["pki", "create-ca", "--dir", p]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("exists") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca.pem"), ca);

    assert_eq!(
        pki_json(&[
            "pki",
            "create-server",
            "--dir",
            p,
            "--host",
            "localhost",
            "--host",
            "127.0.0.1"
        ]),
        serde_json::json!({
            "kind": "server", "hosts": ["localhost", "127.0.0.1"], "role": "peer",
            "cert": path("server.pem"), "key": path("server.key"),
        })
    );
    for role in ["router", "admin", "peer"] {
        assert_eq!(
            pki_json(&["pki", "create-client", "--dir", p, "--role", role]),
            serde_json::json!({
                "kind": "client", "role": role,
                "cert": path(&format!("{role}.pem")), "key": path(&format!("{role}.key")),
            })
        );
    }
    for f in ["ca", "server", "router", "admin", "peer"] {
        for ext in ["pem", "key"] {
            assert!(private_file(&pki.join(format!("{f}.{ext}"))), "{f}.{ext}");
        }
    }
    // Replacing needs --overwrite.
    let router = std::fs::read(pki.join("router.pem")).expect("router.pem");
    let again = ["pki", "create-client", "--dir", p, "--role", "router"];
    assert!(!bare_ctl(&again).0);
    assert_eq!(
        std::fs::read(pki.join("router.pem")).expect("router.pem"),
        router
    );
    pki_json(&[&again[..], &["--overwrite", "--name", "router-2"]].concat());
    assert_ne!(
        std::fs::read(pki.join("router.pem")).expect("router.pem"),
        router
    );
    let (ok, _, stderr) = bare_ctl(&["pki", "create-client", "--dir", p, "--role", "root"]);
    assert!(!ok && stderr.contains("router, admin, peer"), "{stderr}");

    // Certificates the server must refuse: another CA's admin, and certificates of the right
    // CA with no role or two.
    let other = dir.join("other");
    let o = other.to_str().expect("utf-8");
    pki_json(&["pki", "create-ca", "--dir", o]);
    pki_json(&["pki", "create-client", "--dir", o, "--role", "admin"]);
    let refused = [
        (other.join("admin.pem"), other.join("admin.key")),
        issue_cert_with_uris(&pki, &[], "no-role"),
        issue_cert_with_uris(
            &pki,
            &["urn:memds:role:router", "urn:memds:role:admin"],
            "two",
        ),
        issue_cert_with_uris(&pki, &["urn:memds:role:superuser"], "unknown"),
    ];

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut server = runtime.block_on(TestServer::start_configured(dir.join("data"), |c| {
        c.tls = Some(TlsPaths {
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            client_ca: pki.join("ca.pem"),
        });
    }));
    let ctl = Ctl {
        server: server.addr.to_string(),
        tls_dir: &pki,
    };

    // The admin writes (admin is the default role).
    let file = dir.join("table.json");
    std::fs::write(&file, table(0, 50, 3).to_json()).expect("write");
    let f = file.to_str().expect("utf-8");
    assert!(ctl.ok(&["put-table", f]).contains("\"applied\":true"));
    // The router reads but cannot write.
    assert!(
        ctl.ok(&["--role", "router", "tables"])
            .contains("table-0000")
    );
    std::fs::write(&file, table(0, 50, 4).to_json()).expect("write");
    let (ok, stdout, stderr) = ctl.run(&["--role", "router", "put-table", f]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
    // A peer reads too.
    assert_eq!(
        TableMap::from_json(&ctl.ok(&["--role", "peer", "get-table", "table-0000"]))
            .expect("ingestion JSON")
            .version(),
        table(0, 50, 3).version()
    );
    assert!(
        ctl.ok(&["--role", "admin", "put-table", f])
            .contains("\"version\":4")
    );

    // The server's own certificate is what it presents to its peers.
    let paths = TlsPaths::in_dir(&pki);
    let peer_tls = memds_server::tls::peer_client_tls(&paths).expect("peer TLS");
    let stats = runtime.block_on(async {
        let connector =
            memds_client::Connector::new(&peer_tls, Default::default()).expect("endpoint");
        let client = connector.connect(server.addr).await.expect("connects");
        client.stats().await.expect("a peer reads stats")
    });
    assert_eq!(stats.tables, 1);

    let refusals = |page: &str, reason: &str| {
        common::metric(
            page,
            &format!("memds_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    let before = runtime.block_on(server.scrape());
    assert_eq!(
        (
            refusals(&before, "handshake"),
            refusals(&before, "no_certificate")
        ),
        (0.0, 0.0)
    );
    for (cert, key) in &refused {
        let (ok, stdout, stderr) = ctl.run(&[
            "--cert",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--timeout-secs",
            "10",
            "tables",
        ]);
        assert!(!ok && stdout.is_empty(), "{cert:?} was let in: {stdout}");
        assert!(stderr.contains("connect"), "{cert:?}: {stderr}");
    }
    // Another CA's certificate fails the handshake; the others pass it but have no role.
    let after = runtime.block_on(server.scrape());
    assert_eq!(refusals(&after, "handshake"), 1.0);
    assert_eq!(refusals(&after, "no_certificate"), 3.0);

    runtime.block_on(server.stop());
}

/// `--version` prints the build, the protocol versions and the format versions (the server's
/// log, checkpoint and snapshot formats; memds-ctl's snapshot format), as `server-info` says
/// them.
#[test]
fn every_binary_prints_its_build_protocols_and_formats() {
    let info = memds_server::server_info();
    for (binary, path, formats) in [
        (
            "memds-server",
            env!("CARGO_BIN_EXE_memds-server"),
            &["log", "checkpoint", "snapshot"][..],
        ),
        (
            "memds-ctl",
            env!("CARGO_BIN_EXE_memds-ctl"),
            &["snapshot"][..],
        ),
    ] {
        let out = Command::new(path).arg("--version").output().expect("runs");
        assert!(out.status.success(), "{binary}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{binary} {}", info.build), "{text}");
        assert_eq!(lines[1], "protocols: memds/2, memds/1", "{text}");
        let named: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.split(" format: ").next().expect("a name"))
            .collect();
        assert_eq!(named, formats, "{text}");
        for f in info
            .formats
            .iter()
            .filter(|f| formats.contains(&f.name.as_str()))
        {
            assert!(
                lines.contains(
                    &format!(
                        "{} format: writes {}, reads {}",
                        f.name, f.writes, f.reads_oldest
                    )
                    .as_str()
                ),
                "{text}"
            );
        }
    }
}
