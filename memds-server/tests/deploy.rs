//! What operators deploy with (`deploy/`), checked with the real tools: the Helm chart
//! (`helm lint --strict`, `helm template`), every Kubernetes object (`kubernetes-validate
//! --strict`, and the Prometheus Operator's models through `deploy/test/validate-monitoring.mjs`
//! for its kinds), the systemd unit (`systemd-analyze verify`), the Dockerfile (against the
//! workspace), every command line (against the binaries' `--help`), every shipped `memds.toml`
//! (against the server's parser and the real server), and a SIGTERM stop followed by a restart.
//!
//! The tools come from `scripts/test.sh`: `helm`, `kubernetes-validate`, `node` and
//! `systemd-analyze` on `PATH`, the node models under `$MEMDS_TEST_TOOLS/node/node_modules`. A
//! missing tool fails the test, naming it; nothing is skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use memds_server::config::Args;
use serde_json::Value;

/// The Prometheus Operator kinds `kubernetes-validate` has no schema for.
const MONITORING_KINDS: [&str; 3] = ["PodMonitor", "ServiceMonitor", "PrometheusRule"];

#[test]
fn the_helm_chart_lints_and_renders_valid_objects_with_every_value_set() {
    let chart = deploy().join("helm/memds");
    for values in [None, Some(all_on_values())] {
        let mut lint = Command::new(tool("helm"));
        lint.args(["lint", "--strict"]).arg(&chart);
        if let Some(v) = &values {
            lint.arg("-f").arg(v);
        }
        let out = run(&mut lint);
        assert!(out.status.success(), "helm lint --strict: {}", text(&out));
    }

    let default = render_chart(None);
    validate_objects("the chart (default values)", &default.text);
    check_fleet(&default.objects, 3);
    assert_eq!(
        kinds(&default.objects),
        BTreeSet::from([
            "ConfigMap",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]),
        "the defaults need no Prometheus Operator"
    );

    let all = render_chart(Some(&all_on_values()));
    validate_objects("the chart (ci/all-on-values.yaml)", &all.text);
    check_fleet(&all.objects, 5);
    for kind in MONITORING_KINDS {
        assert!(
            kinds(&all.objects).contains(kind),
            "{kind} with every toggle on"
        );
    }
    let sts = one(&all.objects, "StatefulSet", None);
    assert_eq!(
        sts.pointer("/spec/template/spec/volumes")
            .and_then(|v| v.as_array())
            .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
            .and_then(|v| v.pointer("/secret/secretName")),
        Some(&Value::from("memds-pki")),
        "tls.existingSecret names the PKI Secret"
    );
    assert_eq!(
        sts.pointer("/spec/template/spec/containers/0/image"),
        Some(&Value::from("registry.example.com/memds:0.2.0"))
    );
}

#[test]
fn the_plain_manifests_are_valid_and_listed_by_their_kustomization() {
    let dir = deploy().join("kubernetes");
    let kustomization = parse_yaml(&read(&dir.join("kustomization.yaml")));
    let [k] = &kustomization[..] else {
        panic!("kustomization.yaml holds one document");
    };
    // kubernetes-validate has no schema for it: its keys are checked here.
    let keys: BTreeSet<&str> = k
        .as_object()
        .expect("a mapping")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiVersion", "kind", "namespace", "resources", "images"])
    );
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    assert_eq!(k["images"][0]["name"], "memds");

    let text: String = listed
        .iter()
        .map(|f| format!("---\n{}\n", read(&dir.join(f))))
        .collect();
    validate_objects("deploy/kubernetes", &text);
    let objects = parse_yaml(&text);
    check_fleet(&objects, 3);
    for kind in ["PodMonitor", "PrometheusRule"] {
        assert!(kinds(&objects).contains(kind), "{kind}");
    }
}

#[test]
fn the_shipped_dashboards_and_rules_equal_those_of_dashboards() {
    let root = repo();
    let rules_file = root.join("dashboards/prometheus/memds.rules.yml");
    let dashboards: BTreeMap<String, String> = std::fs::read_dir(root.join("dashboards/grafana"))
        .expect("dashboards/grafana")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (file_name(&p), read(&p)))
        .collect();
    assert_eq!(dashboards.len(), 2, "{:?}", dashboards.keys());
    let sync = "run deploy/sync.sh to copy dashboards/ into deploy/";

    // The chart's copies, byte for byte (Helm cannot read outside the chart).
    let files = deploy().join("helm/memds/files");
    assert_eq!(
        read(&files.join("memds.rules.yml")),
        read(&rules_file),
        "{sync}"
    );
    let copies: BTreeMap<String, String> = std::fs::read_dir(files.join("dashboards"))
        .expect("the chart's dashboards")
        .map(|e| e.expect("entry").path())
        .map(|p| (file_name(&p), read(&p)))
        .collect();
    assert_eq!(copies, dashboards, "{sync}");

    // What the manifests and the rendered chart carry, parsed.
    let groups = parse_yaml(&read(&rules_file))
        .pop()
        .expect("the rules file")
        .get("groups")
        .cloned()
        .expect("groups");
    let plain = deploy().join("kubernetes");
    let shipped = [
        (
            "deploy/kubernetes",
            parse_yaml(&format!(
                "{}\n---\n{}",
                read(&plain.join("prometheusrule.yaml")),
                read(&plain.join("dashboards.yaml"))
            )),
        ),
        ("the chart", render_chart(Some(&all_on_values())).objects),
    ];
    for (what, objects) in shipped {
        let rule = one(&objects, "PrometheusRule", None);
        assert_eq!(rule["spec"]["groups"], groups, "{what}: {sync}");
        let cm = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o.pointer("/metadata/labels/grafana_dashboard").is_some()
            })
            .unwrap_or_else(|| panic!("{what}: a ConfigMap labelled grafana_dashboard"));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let data: BTreeMap<String, String> = cm["data"]
            .as_object()
            .expect("data")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_owned()))
            .collect();
        assert_eq!(data, dashboards, "{what}: {sync}");
    }
}

#[test]
fn every_flag_given_to_the_binaries_is_one_they_accept() {
    let mut lines: Vec<(String, String)> = Vec::new();
    // The Dockerfile's entrypoint and command.
    let docker = dockerfile();
    let entry = docker.json_array("ENTRYPOINT");
    let cmd = docker.json_array("CMD");
    lines.push((
        "deploy/docker/Dockerfile".into(),
        entry
            .iter()
            .chain(&cmd)
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    ));
    // The containers' arguments, in the manifests and the chart with both value sets.
    let plain = deploy().join("kubernetes/statefulset.yaml");
    let rendered = [
        ("deploy/kubernetes".to_owned(), parse_yaml(&read(&plain))),
        (
            "the chart (defaults)".to_owned(),
            render_chart(None).objects,
        ),
        (
            "the chart (all on)".to_owned(),
            render_chart(Some(&all_on_values())).objects,
        ),
    ];
    for (what, objects) in &rendered {
        let sts = one(objects, "StatefulSet", None);
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string"))
            .collect();
        lines.push((what.clone(), format!("memds-server {}", args.join(" "))));
    }
    // The chart's NOTES, rendered with both value sets.
    for values in [None, Some(all_on_values())] {
        for line in shell_lines(&render_notes(values.as_deref())) {
            lines.push(("the chart's NOTES.txt".into(), line));
        }
    }
    // The unit's ExecStart and the README's code blocks.
    let unit = read(&deploy().join("systemd/memds-server.service"));
    lines.push((
        "deploy/systemd/memds-server.service".into(),
        unit_value(&unit, "ExecStart"),
    ));
    let readme = read(&deploy().join("README.md"));
    let blocks: String = readme
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| format!("{}\n", b.split_once('\n').map_or("", |(_, body)| body)))
        .collect();
    lines.extend(
        shell_lines(&blocks)
            .into_iter()
            .map(|l| ("deploy/README.md".to_owned(), l)),
    );

    let mut help = HelpCache::default();
    let mut checked = 0;
    let mut refused = Vec::new();
    for (source, line) in &lines {
        for invocation in invocations(line) {
            checked += 1;
            if let Err(unknown) = help.check(&invocation) {
                refused.push(format!("{source}: `{line}`: {unknown}"));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "flags the binaries refuse:\n{}",
        refused.join("\n")
    );
    // The README shows both binaries, memds-ctl's pki commands among them.
    assert!(checked >= 12, "only {checked} invocations found");
    for wanted in [
        "pki create-ca",
        "pki create-server",
        "pki create-client",
        "fleet-status",
    ] {
        assert!(
            lines
                .iter()
                .any(|(s, l)| s == "deploy/README.md" && l.contains(wanted)),
            "the README shows memds-ctl {wanted}"
        );
    }

    // The check can fail: a misspelt flag, and a flag of another subcommand.
    for bad in [
        "memds-server --config x --peers a:1",
        "memds-ctl pki create-ca --dir d --host x",
        "memds-ctl --server 127.0.0.1:7400 stats --dir d",
    ] {
        let [inv] = &invocations(bad)[..] else {
            panic!("one invocation in {bad}");
        };
        assert!(help.check(inv).is_err(), "{bad} passed the check");
    }
}

#[test]
fn every_shipped_memds_toml_is_accepted_by_the_real_server() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let pki = tmp.path().join("pki");
    issue_pki(&pki);
    let tomls = [
        (
            "deploy/systemd/memds.toml".to_owned(),
            read(&deploy().join("systemd/memds.toml")),
        ),
        (
            "deploy/kubernetes/configmap.yaml".to_owned(),
            config_map_toml(&parse_yaml(&read(
                &deploy().join("kubernetes/configmap.yaml"),
            ))),
        ),
        (
            "the chart (defaults)".to_owned(),
            config_map_toml(&render_chart(None).objects),
        ),
        (
            "the chart (all on)".to_owned(),
            config_map_toml(&render_chart(Some(&all_on_values())).objects),
        ),
    ];
    // The check can fail: a misspelt key must be refused by the parser and by the server.
    let misspelt = tomls[0].1.replace("peer_server_name", "peer_server_nmae");
    assert_ne!(misspelt, tomls[0].1);

    for (i, (what, toml)) in tomls.iter().enumerate() {
        // The server's own parser, on the file exactly as shipped.
        let file = tmp.path().join(format!("as-shipped-{i}.toml"));
        std::fs::write(&file, toml).expect("write");
        let config = Args::parse_from([
            "memds-server".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ])
        .resolve()
        .unwrap_or_else(|e| panic!("{what}: memds-server refuses its memds.toml: {e:#}"));
        assert_eq!(config.data_dir, Path::new("/var/lib/memds"), "{what}");
        assert!(
            config.tls.is_some(),
            "{what}: the cluster PKI, not the development one"
        );
        assert!(!config.fleet.peers.is_empty(), "{what}: peers");
        assert_eq!(config.listen.ip().to_string(), "0.0.0.0", "{what}");

        // The real server, with its paths and addresses moved here.
        let data = tmp.path().join(format!("data-{i}"));
        let moved = rewrite_toml(toml, &data, &pki);
        let file = tmp.path().join(format!("moved-{i}.toml"));
        std::fs::write(&file, &moved).expect("write");
        let mut server =
            Server::spawn(&["--config".as_ref(), file.as_os_str()]).unwrap_or_else(|e| {
                panic!("{what}: memds-server --config did not start: {e}\n{moved}")
            });
        let (status, _) = http_get(server.metrics, "/health");
        assert_eq!(status, 200, "{what}: /health");
        assert_eq!(server.terminate(Duration::from_secs(60)), Some(0), "{what}");
    }

    let file = tmp.path().join("misspelt.toml");
    std::fs::write(&file, &misspelt).expect("write");
    let err = Args::parse_from([
        "memds-server".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
    ])
    .resolve()
    .expect_err("a misspelt key is refused");
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    let moved = tmp.path().join("misspelt-moved.toml");
    std::fs::write(&moved, rewrite_toml(&misspelt, &tmp.path().join("d"), &pki)).expect("write");
    let err = Server::spawn(&["--config".as_ref(), moved.as_os_str()])
        .err()
        .expect("the server refuses a misspelt key");
    assert!(err.contains("unknown field `peer_server_nmae`"), "{err}");
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let unit = read(&deploy().join("systemd/memds-server.service"));
    let exec = unit_value(&unit, "ExecStart");
    assert_eq!(
        exec,
        "/usr/local/bin/memds-server --config /etc/memds/memds.toml"
    );
    for (key, value) in [
        ("Type", "exec"),
        ("User", "memds"),
        ("StateDirectory", "memds"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("LimitNOFILE", "65536"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(unit_value(&unit, key), value, "{key}");
    }
    // The data directory of the example configuration is the unit's state directory.
    let toml: toml::Table =
        toml::from_str(&read(&deploy().join("systemd/memds.toml"))).expect("TOML");
    assert_eq!(toml["data_dir"].as_str(), Some("/var/lib/memds"));
    assert!(unit.contains("\nReadWritePaths=/var/lib/memds\n"));

    // verify needs ExecStart's binary to exist: the one this test built.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let copy = tmp.path().join("memds-server.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/memds-server",
            env!("CARGO_BIN_EXE_memds-server"),
        ),
    )
    .expect("write");
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&copy)
        .current_dir(tmp.path()));
    // verify exits 0 even on unknown keys or bad values, which it only prints: any line that
    // names the unit fails. Nothing is allow-listed (the unit has no Wants= or After= on a
    // unit this machine lacks; network-online.target is in every systemd).
    let said = text(&out);
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| {
            l.contains("memds-server.service") || l.contains("Unknown") || l.contains("ignoring")
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {said}"
    );

    // And it does print them: a misspelt key.
    std::fs::write(&copy, read(&copy).replace("ProtectHome=", "ProtectHomme=")).expect("write");
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&copy)
        .current_dir(tmp.path()));
    assert!(text(&out).contains("ProtectHomme"), "{}", text(&out));
}

#[test]
fn the_dockerfile_builds_what_the_workspace_has_and_runs_it_as_deployed() {
    let root = repo();
    let docker = dockerfile();
    let froms = docker.all("FROM");
    let [builder, runtime] = &froms[..] else {
        panic!("two stages: {froms:?}");
    };
    // rust:1.95-slim-bookworm AS builder: a toolchain no older than rust-version, on the
    // Debian release the runtime stage runs (the binaries link its glibc).
    let (image, stage) = builder.split_once(" AS ").expect("a named builder stage");
    let tag = image
        .strip_prefix("rust:")
        .expect("the official rust image");
    let (version, flavour) = tag.split_once('-').expect("rust:<version>-<flavour>");
    let workspace: toml::Table = toml::from_str(&read(&root.join("Cargo.toml"))).expect("TOML");
    let msrv = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let parse =
        |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().expect("a number")).collect() };
    assert!(
        parse(version) >= parse(msrv),
        "rust:{version} is older than {msrv}"
    );
    let release = flavour.strip_prefix("slim-").unwrap_or(flavour);
    assert_eq!(runtime, &format!("debian:{release}-slim"));

    // The build: the locked workspace's memds-server package, its two binaries.
    let bins: BTreeSet<String> = std::fs::read_dir(root.join("memds-server/src/bin"))
        .expect("memds-server/src/bin")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            p.file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        bins,
        BTreeSet::from(["memds-ctl".into(), "memds-server".into()])
    );
    let build = docker
        .all("RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build");
    for part in ["--release", "--locked", "-p memds-server"] {
        assert!(build.contains(part), "{part} in {build}");
    }
    let member: toml::Table =
        toml::from_str(&read(&root.join("memds-server/Cargo.toml"))).expect("TOML");
    assert_eq!(member["package"]["name"].as_str(), Some("memds-server"));
    for bin in &bins {
        assert!(build.contains(&format!("--bin {bin}")), "--bin {bin}");
        assert!(
            build.contains(&format!("target/release/{bin} /out/{bin}")),
            "{bin} to /out"
        );
    }

    // COPY: the context's sources exist; the builder's outputs are the binaries it built,
    // installed under /usr/local/bin.
    let mut installed = BTreeSet::new();
    for copy in docker.all("COPY") {
        let (from, paths): (Vec<&str>, Vec<&str>) =
            copy.split_whitespace().partition(|w| w.starts_with("--"));
        let (dest, sources) = paths.split_last().expect("COPY SRC... DEST");
        if let Some(stage_name) = from.iter().find_map(|f| f.strip_prefix("--from=")) {
            assert_eq!(stage_name, stage, "{copy}");
            for s in sources {
                let bin = s.strip_prefix("/out/").expect("a built binary");
                assert!(bins.contains(bin), "{copy}");
                assert_eq!(*dest, format!("/usr/local/bin/{bin}"), "{copy}");
                installed.insert(bin.to_owned());
            }
        } else {
            for s in sources {
                assert!(root.join(s).exists(), "COPY {s}: not in the build context");
            }
        }
    }
    assert_eq!(installed, bins, "both binaries are in the image");

    // .dockerignore keeps build output out and every workspace member in.
    let ignore = read(&root.join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in ["target/", "**/target/", ".git/"] {
        assert!(patterns.contains(&p), ".dockerignore: {p}");
    }
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("members");
    for m in members.iter().map(|m| m.as_str().expect("a path")) {
        for p in &patterns {
            let p = p.trim_end_matches('/');
            assert!(
                p != m && p != "Cargo.toml" && p != "Cargo.lock",
                ".dockerignore drops {p}"
            );
        }
    }

    // Runtime: a fixed non-root user (the manifests' runAsUser), the data directory as the
    // volume, the configured ports exposed, SIGTERM to stop.
    let user = docker.one("USER");
    let uid = user.split(':').next().expect("uid");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: numeric, not root"
    );
    let manifest = parse_yaml(&read(&deploy().join("kubernetes/statefulset.yaml")));
    let sts = one(&manifest, "StatefulSet", None);
    assert_eq!(
        sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"].to_string(),
        uid
    );
    assert!(
        docker
            .all("RUN")
            .iter()
            .any(|r| r.contains(&format!("--uid {uid}")))
    );
    let cmd = docker.json_array("CMD");
    let flag = |name: &str| -> String {
        let i = cmd
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("CMD {name}"));
        cmd[i + 1].clone()
    };
    let volume = docker.one("VOLUME");
    assert_eq!(volume, flag("--data-dir"));
    assert_eq!(volume, "/var/lib/memds", "the manifests' data_dir");
    let port = |addr: &str| addr.rsplit_once(':').expect("host:port").1.to_owned();
    let mut exposed: Vec<String> = docker
        .one("EXPOSE")
        .split_whitespace()
        .map(String::from)
        .collect();
    exposed.sort();
    assert_eq!(
        exposed,
        [
            format!("{}/udp", port(&flag("--listen"))),
            format!("{}/tcp", port(&flag("--metrics-listen")))
        ]
    );
    let config: toml::Table = toml::from_str(&config_map_toml(&parse_yaml(&read(
        &deploy().join("kubernetes/configmap.yaml"),
    ))))
    .expect("TOML");
    assert_eq!(config["listen"].as_str(), Some(flag("--listen").as_str()));
    assert_eq!(
        config["metrics_listen"].as_str(),
        Some(flag("--metrics-listen").as_str())
    );
    // The server's own defaults use the same ports.
    let help = help_text(env!("CARGO_BIN_EXE_memds-server"), &[]);
    assert!(
        help.contains("[default: 127.0.0.1:7400]") && help.contains("[default: 127.0.0.1:9400]")
    );
    assert_eq!(docker.one("STOPSIGNAL"), "SIGTERM");
    assert_eq!(
        docker.json_array("ENTRYPOINT"),
        ["/usr/local/bin/memds-server"]
    );
}

#[test]
fn sigterm_stops_a_server_cleanly_and_a_restart_serves_every_acknowledged_write() {
    // The budgets systemd and Kubernetes give a stop.
    let unit = read(&deploy().join("systemd/memds-server.service"));
    let stop_secs: u64 = unit_value(&unit, "TimeoutStopSec")
        .parse()
        .expect("seconds");
    let manifest = parse_yaml(&read(&deploy().join("kubernetes/statefulset.yaml")));
    let sts = one(&manifest, "StatefulSet", None);
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let budget = Duration::from_secs(stop_secs.min(grace));

    // The server as the unit runs it: the example memds.toml, with certificates from
    // memds-ctl pki.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let pki = tmp.path().join("pki");
    issue_pki(&pki);
    let data = tmp.path().join("data");
    let file = tmp.path().join("memds.toml");
    // On its own: with a peer it would wait to catch up before answering reads.
    let alone: String = rewrite_toml(&read(&deploy().join("systemd/memds.toml")), &data, &pki)
        .lines()
        .filter(|l| !l.starts_with("peers ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, alone).expect("write");
    let args = ["--config".as_ref(), file.as_os_str()];
    let mut server = Server::spawn(&args).expect("the server starts");

    let tables: Vec<_> = (0..3).map(|i| common::table(i, 100, 7)).collect();
    for t in &tables {
        let json = tmp.path().join(format!("{}.json", t.name().as_str()));
        std::fs::write(&json, t.to_json()).expect("write");
        let ack = ctl(&server, &pki, &["put-table".as_ref(), json.as_os_str()]);
        assert!(ack.contains("\"applied\":true"), "{ack}");
    }
    let started = Instant::now();
    assert_eq!(server.terminate(budget), Some(0), "SIGTERM: exit status 0");
    let took = started.elapsed();

    let server = Server::spawn(&args).expect("the server restarts");
    assert_eq!(
        http_get(server.metrics, "/ready").0,
        200,
        "ready at once, with no peers"
    );
    for t in &tables {
        let got = ctl(
            &server,
            &pki,
            &["get-table".as_ref(), t.name().as_str().as_ref()],
        );
        assert_eq!(
            memds_proto::TableMap::from_json(&got).expect("ingestion JSON"),
            *t,
            "after the restart"
        );
    }
    eprintln!("stopped in {took:?} (budget {budget:?})");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn all_on_values() -> PathBuf {
    deploy().join("helm/memds/ci/all-on-values.yaml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned()
}

/// A tool on PATH, or a failure that says where it comes from.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: scripts/test.sh installs it (helm and \
                 kubernetes-validate in $MEMDS_TEST_TOOLS/venv/bin, node and systemd-analyze \
                 from Debian) and puts it on PATH"
            )
        })
}

/// The Prometheus Operator models `deploy/test/validate-monitoring.mjs` validates with.
fn monitoring_models() -> PathBuf {
    let base = std::env::var_os("MEMDS_TEST_TOOLS").unwrap_or_else(|| {
        panic!(
            "MEMDS_TEST_TOOLS is not set: scripts/test.sh sets it and installs \
             @kubernetes-models/prometheus-operator under $MEMDS_TEST_TOOLS/node"
        )
    });
    let dir = Path::new(&base).join("node/node_modules/@kubernetes-models/prometheus-operator");
    assert!(
        dir.join("package.json").is_file(),
        "{} is missing: scripts/test.sh installs @kubernetes-models/prometheus-operator there",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// YAML documents as JSON values, parsed by the YAML library kubernetes-validate itself uses
/// (PyYAML, run by the Python of its virtualenv), so the Rust side needs no YAML crate.
fn parse_yaml(yaml: &str) -> Vec<Value> {
    let script = read(&tool("kubernetes-validate"));
    let shebang = script.lines().next().unwrap_or_default();
    let python = match shebang.strip_prefix("#!").map(str::trim) {
        Some(env) if env.starts_with("/usr/bin/env ") => {
            tool(env.rsplit(' ').next().expect("an interpreter"))
        }
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("kubernetes-validate's interpreter from {shebang:?}"),
    };
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubernetes-validate's Python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writing the YAML");
    let out = child.wait_with_output().expect("PyYAML");
    assert!(out.status.success(), "parsing YAML: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

fn kinds(objects: &[Value]) -> BTreeSet<&str> {
    objects.iter().filter_map(|o| o["kind"].as_str()).collect()
}

/// The one object of `kind` (named `name` if given).
fn one<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"] == n))
        .collect();
    let [o] = &found[..] else {
        panic!("one {kind} {name:?}, found {}", found.len());
    };
    o
}

struct Rendered {
    text: String,
    objects: Vec<Value>,
}

/// `helm template memds deploy/helm/memds [-f values]`.
fn render_chart(values: Option<&Path>) -> Rendered {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "memds"])
        .arg(deploy().join("helm/memds"));
    cmd.args(["--namespace", "memds"]);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "helm template: {}", text(&out));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let objects = parse_yaml(&text);
    Rendered { text, objects }
}

/// The chart's NOTES.txt as `helm install` would print it. `helm template` leaves NOTES out and
/// `helm install --dry-run` needs a cluster, so a copy of the chart renders it through `tpl`
/// in a ConfigMap.
fn render_notes(values: Option<&Path>) -> String {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let chart = tmp.path().join("memds");
    copy_dir(&deploy().join("helm/memds"), &chart);
    std::fs::copy(
        chart.join("templates/NOTES.txt"),
        chart.join("files/NOTES.txt"),
    )
    .expect("copy");
    std::fs::write(
        chart.join("templates/zz-notes.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  \
         notes: {{ tpl (.Files.Get \"files/NOTES.txt\") . | quote }}\n",
    )
    .expect("write");
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "memds"]).arg(&chart).args([
        "--namespace",
        "memds",
        "--show-only",
        "templates/zz-notes.yaml",
    ]);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "rendering NOTES.txt: {}", text(&out));
    let objects = parse_yaml(&String::from_utf8_lossy(&out.stdout));
    let notes = one(&objects, "ConfigMap", Some("notes"))["data"]["notes"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(notes.contains("memds-ctl"), "{notes}");
    notes
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// Validates every object of a YAML stream as a cluster would: core kinds with
/// `kubernetes-validate --strict` (its schemas refuse unknown fields), the Prometheus
/// Operator's with `deploy/test/validate-monitoring.mjs`. A warning for any other kind fails.
fn validate_objects(what: &str, yaml: &str) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let file = tmp.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("write");
    let objects = parse_yaml(yaml);
    assert!(!objects.is_empty(), "{what}: no objects");
    let (monitoring, core): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(|o| {
        o["apiVersion"] == "monitoring.coreos.com/v1"
            && MONITORING_KINDS.iter().any(|k| o["kind"] == *k)
    });

    let out = run(Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .arg(&file)
        .current_dir(tmp.path()));
    let said = text(&out);
    assert!(
        out.status.success(),
        "{what}: kubernetes-validate --strict:\n{said}"
    );
    let mut passed = 0;
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else if let Some(kind) = line
            .strip_prefix("WARN ")
            .and_then(|l| l.split_once("Couldn't find schema for kind "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            assert!(
                monitoring.iter().any(|o| o["kind"] == kind),
                "{what}: kubernetes-validate knows no schema for {kind}:\n{said}"
            );
        } else {
            panic!("{what}: kubernetes-validate said: {line}\n{said}");
        }
    }
    assert_eq!(
        passed,
        core.len(),
        "{what}: every core object passed:\n{said}"
    );

    if monitoring.is_empty() {
        return;
    }
    let json = tmp.path().join("monitoring.json");
    std::fs::write(&json, serde_json::to_string(&monitoring).expect("JSON")).expect("write");
    let out = run(Command::new(tool("node"))
        .arg(deploy().join("test/validate-monitoring.mjs"))
        .arg(monitoring_models())
        .arg(&json));
    let said = text(&out);
    assert!(
        out.status.success(),
        "{what}: validate-monitoring.mjs:\n{said}"
    );
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok ")).count(),
        monitoring.len(),
        "{what}: {said}"
    );
    // And the script can fail: the same objects with a misspelt field.
    let mut bad: Vec<Value> = monitoring.into_iter().cloned().collect();
    for o in &mut bad {
        o["spec"]["intervall"] = Value::from("15s");
    }
    std::fs::write(&json, serde_json::to_string(&bad).expect("JSON")).expect("write");
    let out = run(Command::new(tool("node"))
        .arg(deploy().join("test/validate-monitoring.mjs"))
        .arg(monitoring_models())
        .arg(&json));
    assert!(
        !out.status.success() && text(&out).contains("unknown fields .spec.intervall"),
        "{what}: a misspelt field passed: {}",
        text(&out)
    );
}

/// The `memds.toml` of the ConfigMap that carries one.
fn config_map_toml(objects: &[Value]) -> String {
    let found: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .filter_map(|o| o["data"]["memds.toml"].as_str())
        .collect();
    let [toml] = &found[..] else {
        panic!("one ConfigMap with memds.toml, found {}", found.len());
    };
    (*toml).to_owned()
}

/// How a fleet hangs together, whichever way it was produced: the headless Service that
/// lists pods not ready is the peers' name, the configuration mounted where `--config` reads
/// it names the volume and the PKI Secret, ports and probes agree, and the pods run locked
/// down, spread and budgeted.
fn check_fleet(objects: &[Value], replicas: u64) {
    let sts = one(objects, "StatefulSet", None);
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], replicas);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        pod_labels["app.kubernetes.io/name"], "memds",
        "the job label of the rules"
    );
    let selector = &spec["selector"]["matchLabels"];
    for (k, v) in selector.as_object().expect("matchLabels") {
        assert_eq!(&pod_labels[k], v, "the selector matches the pods");
    }

    // The headless Service.
    let peers_svc = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == spec["serviceName"])
        .expect("the StatefulSet's Service");
    assert_eq!(peers_svc["spec"]["clusterIP"], "None");
    assert_eq!(peers_svc["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(&peers_svc["spec"]["selector"], selector);
    let api = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["spec"]["clusterIP"] != "None")
        .expect("the routers' Service");
    assert_eq!(&api["spec"]["selector"], selector);

    // The configuration and the pod.
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = Path::new(
        args[args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config")
            + 1],
    );
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mount_of = |path: &Path| {
        mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().expect("mountPath")))
            .max_by_key(|m| m["mountPath"].as_str().expect("mountPath").len())
            .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()))
    };
    let volume = |mount: &Value| {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .cloned()
    };
    let config_volume = volume(mount_of(config_path)).expect("the config volume");
    let cm_name = config_volume["configMap"]["name"]
        .as_str()
        .expect("a ConfigMap");
    let toml_text = one(objects, "ConfigMap", Some(cm_name))["data"]
        [file_name(config_path).as_str()]
    .as_str()
    .expect("the file --config names")
    .to_owned();
    let toml: toml::Table = toml::from_str(&toml_text).expect("TOML");
    let s = |k: &str| toml[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
    let port_of = |k: &str| -> u64 {
        s(k).rsplit_once(':')
            .expect("port")
            .1
            .parse()
            .expect("port")
    };
    let peers = toml["peers"].as_array().expect("peers");
    assert_eq!(
        peers
            .iter()
            .map(|p| p.as_str().expect("a name"))
            .collect::<Vec<_>>(),
        [format!(
            "{}:{}",
            peers_svc["metadata"]["name"].as_str().expect("name"),
            port_of("listen")
        )]
    );
    // The data directory is the claim template's volume.
    let data = mount_of(Path::new(&s("data_dir")));
    assert_eq!(data["mountPath"], s("data_dir"));
    assert!(
        volume(data).is_none(),
        "data is the claim template's, not a pod volume"
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["metadata"]["name"],
        data["name"]
    );
    assert!(
        spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].is_string()
    );
    // The PKI comes from one Secret.
    let secrets: BTreeSet<String> = ["cert", "key", "client_ca"]
        .iter()
        .map(|k| {
            let path = PathBuf::from(s(k));
            let v = volume(mount_of(&path)).expect("the PKI volume");
            v["secret"]["secretName"]
                .as_str()
                .expect("a Secret")
                .to_owned()
        })
        .collect();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    // Ports, probes.
    let ports = c["ports"].as_array().expect("ports");
    let port = |name: &str| ports.iter().find(|p| p["name"] == name).expect("port");
    assert_eq!(port("quic")["containerPort"], port_of("listen"));
    assert_eq!(port("quic")["protocol"], "UDP");
    assert_eq!(port("metrics")["containerPort"], port_of("metrics_listen"));
    for svc in [peers_svc, api] {
        let ports = svc["spec"]["ports"].as_array().expect("ports");
        assert!(
            ports
                .iter()
                .any(|p| p["targetPort"] == "quic" && p["protocol"] == "UDP")
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    // Locked down.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    assert!(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .is_some_and(|s| s >= 30)
    );
    // Spread over zones and hosts; one down at a time.
    let keys: BTreeSet<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints")
        .iter()
        .filter_map(|t| t["topologyKey"].as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
    );
    let pdb = one(objects, "PodDisruptionBudget", None);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    // The monitors find these pods, as job "memds".
    for o in objects.iter().filter(|o| o["kind"] == "PodMonitor") {
        assert_eq!(o["spec"]["jobLabel"], "app.kubernetes.io/name");
        assert_eq!(&o["spec"]["selector"]["matchLabels"], selector);
        assert_eq!(o["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    }
    for o in objects.iter().filter(|o| o["kind"] == "ServiceMonitor") {
        assert_eq!(o["spec"]["jobLabel"], "app.kubernetes.io/name");
        let wanted = &o["spec"]["selector"]["matchLabels"];
        for (k, v) in wanted.as_object().expect("matchLabels") {
            assert_eq!(
                &peers_svc["metadata"]["labels"][k], v,
                "selects the headless Service"
            );
        }
        assert_eq!(
            peers_svc["metadata"]["labels"]["app.kubernetes.io/name"],
            "memds"
        );
    }
}

/// A shipped memds.toml with its paths under `data` and `pki` and its addresses on loopback
/// port 0; every other line as shipped. The keys rewritten must all be there.
fn rewrite_toml(toml: &str, data: &Path, pki: &Path) -> String {
    let replacements = [
        ("listen", "\"127.0.0.1:0\"".to_owned()),
        ("metrics_listen", "\"127.0.0.1:0\"".to_owned()),
        ("data_dir", format!("{:?}", data.display().to_string())),
        (
            "cert",
            format!("{:?}", pki.join("server.pem").display().to_string()),
        ),
        (
            "key",
            format!("{:?}", pki.join("server.key").display().to_string()),
        ),
        (
            "client_ca",
            format!("{:?}", pki.join("ca.pem").display().to_string()),
        ),
        // The shipped names resolve nowhere here; a loopback port with nobody on it keeps the
        // test off the network.
        ("peers", "[\"127.0.0.1:1\"]".to_owned()),
    ];
    let mut seen = BTreeSet::new();
    let out: String = toml
        .lines()
        .map(|line| {
            let key = line.split_once('=').map(|(k, _)| k.trim());
            match replacements.iter().find(|(k, _)| Some(*k) == key) {
                Some((k, v)) => {
                    seen.insert(*k);
                    format!("{k} = {v}\n")
                }
                None => format!("{line}\n"),
            }
        })
        .collect();
    assert_eq!(
        seen.len(),
        replacements.len(),
        "keys rewritten: {seen:?} in\n{toml}"
    );
    out
}

/// A cluster CA, a server certificate for `memds` (the shipped peer_server_name) and
/// localhost, and an admin certificate, from `memds-ctl pki`.
fn issue_pki(dir: &Path) {
    let d = dir.to_str().expect("UTF-8");
    for args in [
        &["pki", "create-ca", "--dir", d][..],
        &[
            "pki",
            "create-server",
            "--dir",
            d,
            "--host",
            "memds",
            "--host",
            "localhost",
        ],
        &["pki", "create-client", "--dir", d, "--role", "admin"],
    ] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_memds-ctl")).args(args));
        assert!(out.status.success(), "memds-ctl {args:?}: {}", text(&out));
    }
}

/// `memds-ctl` as an admin of `pki` against `server`.
fn ctl(server: &Server, pki: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = run(Command::new(env!("CARGO_BIN_EXE_memds-ctl"))
        .args(["--server", &server.quic, "--tls-dir"])
        .arg(pki)
        .args(args));
    assert!(out.status.success(), "memds-ctl {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A real `memds-server` process, killed if a test ends before it stopped it.
struct Server {
    child: Child,
    quic: String,
    metrics: std::net::SocketAddr,
}

impl Server {
    /// Starts `memds-server ARGS` and reads its announcement, or returns what it said on
    /// stderr when it exits instead.
    fn spawn(args: &[&std::ffi::OsStr]) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_memds-server"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("memds-server runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("stdout");
        if line.is_empty() {
            let mut said = String::new();
            stderr.read_to_string(&mut said).expect("stderr");
            let status = child.wait().expect("wait");
            return Err(format!("{status}: {said}"));
        }
        // Logs keep flowing to the test's stderr.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::stderr()));
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the first line is JSON ({e}): {line:?}"));
        let server = Self {
            quic: v["quic"].as_str().expect("quic").to_owned(),
            metrics: v["metrics"]
                .as_str()
                .expect("metrics")
                .parse()
                .expect("an address"),
            child,
        };
        Ok(server)
    }

    /// SIGTERM, as systemd and the kubelet send it; the exit code if it exits within `budget`.
    fn terminate(&mut self, budget: Duration) -> Option<i32> {
        // Sent at once, with no wait for anything: memds-server installs its SIGTERM handler
        // before it announces itself, so a supervisor's SIGTERM right after the announcement
        // stops it gracefully (it once killed it, about one start in 30).
        let pid = self.child.id();
        // kill(1): no unsafe code for a signal.
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + budget;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` on the metrics listener: status and body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, response)
}

/// A parsed Dockerfile: instructions with continuation lines joined.
struct Dockerfile(Vec<(String, String)>);

fn dockerfile() -> Dockerfile {
    let text = read(&deploy().join("docker/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').expect("INSTRUCTION args");
                out.push((
                    op.to_owned(),
                    rest.split_whitespace().collect::<Vec<_>>().join(" "),
                ));
                current.clear();
            }
        }
    }
    Dockerfile(out)
}

impl Dockerfile {
    fn all(&self, op: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn one(&self, op: &str) -> String {
        let all = self.all(op);
        let [one] = &all[..] else {
            panic!("one {op}: {all:?}");
        };
        one.clone()
    }

    /// An instruction in exec form.
    fn json_array(&self, op: &str) -> Vec<String> {
        serde_json::from_str(&self.one(op)).unwrap_or_else(|e| panic!("{op} in exec form: {e}"))
    }
}

/// The value of `Key=` in a unit file (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("{key}= in the unit"))
        .trim()
        .to_owned()
}

/// Command lines of a shell text: comments dropped, continuations joined.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    out
}

/// One run of `memds-server` or `memds-ctl` in a command line: the binary and its words.
#[derive(Debug)]
struct Invocation {
    binary: &'static str,
    words: Vec<String>,
}

/// The runs of our binaries in a command line (after `kubectl exec ... --`, `sudo`, a path),
/// up to the end of the command (`&&`, `|`, `;`). `cargo -p memds-server` names a package.
fn invocations(line: &str) -> Vec<Invocation> {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let name = w.rsplit('/').next().unwrap_or(w);
        let binary = match name {
            "memds-server" => "memds-server",
            "memds-ctl" => "memds-ctl",
            _ => continue,
        };
        if i > 0 && ["-p", "--package", "--bin"].contains(&words[i - 1].as_str()) {
            continue;
        }
        let rest = words[i + 1..]
            .iter()
            .take_while(|w| !["&&", "||", "|", ";"].contains(&w.as_str()))
            .cloned()
            .collect();
        out.push(Invocation {
            binary,
            words: rest,
        });
    }
    out
}

/// The flags of each (binary, subcommand path) from its `--help`.
#[derive(Default)]
struct HelpCache(BTreeMap<(String, Vec<String>), Help>);

/// What one `--help` lists: flags, and subcommands.
type Help = (BTreeSet<String>, BTreeSet<String>);

impl HelpCache {
    /// Flags and subcommands `--help` lists.
    fn get(&mut self, binary: &str, path: &[String]) -> &Help {
        self.0
            .entry((binary.to_owned(), path.to_vec()))
            .or_insert_with(|| {
                let exe = match binary {
                    "memds-server" => env!("CARGO_BIN_EXE_memds-server"),
                    _ => env!("CARGO_BIN_EXE_memds-ctl"),
                };
                let help = help_text(exe, path);
                let mut flags = BTreeSet::new();
                let mut commands = BTreeSet::new();
                let mut in_commands = false;
                for line in help.lines() {
                    if line.ends_with(':') && !line.starts_with(' ') {
                        in_commands = line == "Commands:";
                        continue;
                    }
                    let t = line.trim_start();
                    // Options are indented by 2 (`-h, --help`) or 6; their descriptions by more.
                    if line.len() - t.len() > 6 {
                        continue;
                    }
                    let t = t
                        .strip_prefix("-h, ")
                        .or_else(|| t.strip_prefix("-V, "))
                        .unwrap_or(t);
                    if let Some(flag) = t.strip_prefix("--") {
                        let name: String = flag
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                            .collect();
                        flags.insert(format!("--{name}"));
                    } else if in_commands
                        && line.starts_with("  ")
                        && !line.starts_with("   ")
                        && let Some(c) = t.split_whitespace().next()
                    {
                        commands.insert(c.to_owned());
                    }
                }
                assert!(flags.contains("--help"), "{binary} {path:?} --help: {help}");
                (flags, commands)
            })
    }

    /// Every flag of the invocation is in the help of the subcommand it follows; Err names
    /// those that are not.
    fn check(&mut self, inv: &Invocation) -> Result<(), String> {
        let mut path: Vec<String> = Vec::new();
        let mut unknown = Vec::new();
        for w in &inv.words {
            if let Some(flag) = w.starts_with("--").then(|| w.split('=').next()).flatten() {
                if !self.get(inv.binary, &path).0.contains(flag) {
                    unknown.push(format!(
                        "{flag} (not in `{} {} --help`)",
                        inv.binary,
                        path.join(" ")
                    ));
                }
            } else if !w.starts_with('-') && self.get(inv.binary, &path).1.contains(w.as_str()) {
                // A word naming a subcommand of the path so far is one (no flag value here is).
                path.push(w.clone());
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(unknown.join(", "))
        }
    }
}

/// `EXE PATH... --help`.
fn help_text(exe: &str, path: &[String]) -> String {
    let out = run(Command::new(exe).args(path).arg("--help"));
    assert!(
        out.status.success(),
        "{exe} {path:?} --help: {}",
        text(&out)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}
