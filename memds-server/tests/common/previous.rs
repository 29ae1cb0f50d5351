//! The previous release (v0.1.0, commit 593893d) beside this one, for the mixed-version tests:
//! its binaries, which scripts/previous-release.sh builds and names in
//! `MEMDS_PREVIOUS_RELEASE_BIN`; one PKI both releases accept; servers of either release as
//! processes on loopback; `memds-ctl` of either release.
//!
//! Included by `tests/compat.rs` with `#[path]`, beside `mod common`.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use memds_client::{Client, Role};
use memds_proto::wire::Summary;

use crate::common::{KillOnDrop, connector};

/// The commit the previous release is built from.
pub const PREVIOUS_COMMIT: &str = "593893d";
/// Anti-entropy period of the mixed fleets, in seconds.
pub const PERIOD: &str = "0.3";
/// How long a mixed fleet may take to converge (many periods; debug builds, two loaded cores).
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Which release a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// v0.1.0, built by scripts/previous-release.sh.
    Previous,
    /// This tree's binaries.
    Current,
}

impl Release {
    pub fn server(self) -> PathBuf {
        match self {
            Release::Previous => previous_bin("memds-server"),
            Release::Current => env!("CARGO_BIN_EXE_memds-server").into(),
        }
    }

    pub fn ctl(self) -> PathBuf {
        match self {
            Release::Previous => previous_bin("memds-ctl"),
            Release::Current => env!("CARGO_BIN_EXE_memds-ctl").into(),
        }
    }
}

/// A binary of the previous release. Fails (never skips) when it is not built.
pub fn previous_bin(name: &str) -> PathBuf {
    const HOW: &str = "run scripts/previous-release.sh (scripts/test.sh runs it and exports the \
                       variable) and set MEMDS_PREVIOUS_RELEASE_BIN to the directory it prints";
    let dir = std::env::var_os("MEMDS_PREVIOUS_RELEASE_BIN").unwrap_or_else(|| {
        panic!("MEMDS_PREVIOUS_RELEASE_BIN is not set: the mixed-version tests need the previous release (v0.1.0); {HOW}")
    });
    let dir = PathBuf::from(dir);
    let stamp = std::fs::read_to_string(dir.join(".stamp")).unwrap_or_default();
    assert!(
        stamp.starts_with(PREVIOUS_COMMIT),
        "{} has no stamp naming commit {PREVIOUS_COMMIT} (found {stamp:?}): not the previous release's build; {HOW}",
        dir.display()
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: the previous release is not built; {HOW}",
        path.display()
    );
    path
}

/// A PKI made by the previous release's `memds-ctl pki`: a CA, a server certificate for the
/// peer name `memds` and for localhost (`server.pem`, `server.key`), and one client
/// certificate per role (`admin.pem`, ...): the layout of a development TLS directory, which
/// both releases' `--tls-dir` and `ClientTls::from_dir` read.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
        let d = dir.to_str().expect("a UTF-8 path");
        let pki = |args: &[&str]| {
            let out = Command::new(Release::Previous.ctl())
                .arg("pki")
                .args(args)
                .args(["--dir", d])
                .output()
                .expect("memds-ctl runs");
            assert!(
                out.status.success(),
                "memds-ctl pki {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        pki(&["create-ca"]);
        pki(&[
            "create-server",
            "--host",
            "memds",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
        ]);
        for role in ["admin", "router", "peer"] {
            pki(&["create-client", "--role", role]);
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's TLS options: its certificate (peer role, names `memds` and localhost) and
    /// the cluster CA.
    pub fn server_args(&self) -> Vec<OsString> {
        vec![
            "--cert".into(),
            self.dir.join("server.pem").into(),
            "--key".into(),
            self.dir.join("server.key").into(),
            "--client-ca".into(),
            self.dir.join("ca.pem").into(),
        ]
    }

    pub async fn client(&self, addr: SocketAddr, role: Role) -> Client {
        connector(&self.dir, role)
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr} as {}: {e}", role.as_str()))
    }

    pub async fn summary(&self, addr: SocketAddr) -> Summary {
        let c = self.client(addr, Role::Admin).await;
        let s = c.summary().await.expect("summary");
        c.close();
        s
    }
}

/// How to start a server.
pub struct ServerSpec<'a> {
    pub release: Release,
    pub pki: &'a Pki,
    pub data_dir: &'a Path,
    /// The QUIC port on 127.0.0.1 (chosen beforehand, so peers can name each other).
    pub port: u16,
    pub peers: Vec<SocketAddr>,
    pub extra: Vec<String>,
}

impl<'a> ServerSpec<'a> {
    pub fn new(release: Release, pki: &'a Pki, data_dir: &'a Path, port: u16) -> Self {
        Self {
            release,
            pki,
            data_dir,
            port,
            peers: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn peers(mut self, peers: &[SocketAddr]) -> Self {
        self.peers = peers.to_vec();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts the server and waits for its announcement; panics, with its log, if it exits
    /// instead.
    pub fn start(self) -> ServerProcess {
        let what = format!(
            "{:?} memds-server on {}",
            self.release,
            self.data_dir.display()
        );
        match self.try_start() {
            Ok(s) => s,
            Err(r) => panic!("{what} did not start ({}): {}", r.status, r.log),
        }
    }

    /// Starts the server: the running process once it announced itself, or how it exited
    /// without announcing (its status and log).
    pub fn try_start(self) -> Result<ServerProcess, Refusal> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let log = self.data_dir.with_extension(format!("{}.log", self.port));
        let log_file = std::fs::File::create(&log).expect("creating the server's log file");
        let mut cmd = Command::new(self.release.server());
        cmd.args(["--listen", &addr.to_string(), "--no-metrics", "--data-dir"])
            .arg(self.data_dir)
            .args(self.pki.server_args())
            .args(["--anti-entropy-secs", PERIOD]);
        for p in &self.peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        cmd.args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = KillOnDrop::new(cmd.spawn().expect("memds-server starts"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the announcement");
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        if line.is_empty() {
            let status = child.wait().expect("reaped");
            return Err(Refusal {
                status,
                log: log_text(),
            });
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("announcement {line:?}: {e}; log: {}", log_text()));
        assert_eq!(v["quic"], addr.to_string(), "{line}");
        Ok(ServerProcess {
            release: self.release,
            child: Some(child),
            addr,
            log,
        })
    }
}

/// A server that exited instead of starting.
#[derive(Debug)]
pub struct Refusal {
    pub status: ExitStatus,
    /// What it wrote to stderr.
    pub log: String,
}

/// A running server, killed if dropped (a failed assertion included).
pub struct ServerProcess {
    pub release: Release,
    child: Option<KillOnDrop>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A clean stop, as a supervisor does it: SIGTERM, then the process must exit with status
    /// 0.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM");
        let exit = child.wait().expect("reaped");
        assert!(
            exit.success(),
            "{:?} server on {} exited with {exit} after SIGTERM: {}",
            self.release,
            self.addr,
            self.log()
        );
    }
}

/// What a `memds-ctl` run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `memds-ctl` of `release` against `servers` with the PKI's certificates (the admin one
/// unless `args` pick another role with `--role`), off the async runtime's threads.
pub async fn ctl(release: Release, pki: &Pki, servers: &[SocketAddr], args: &[&str]) -> CtlOutput {
    let servers = servers
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(release.ctl());
    cmd.args(["--server", &servers, "--tls-dir"])
        .arg(pki.dir())
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("memds-ctl runs");
    CtlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`ctl`], which must succeed; its stdout.
pub async fn ctl_ok(release: Release, pki: &Pki, servers: &[SocketAddr], args: &[&str]) -> String {
    let out = ctl(release, pki, servers, args).await;
    assert!(
        out.ok,
        "{release:?} memds-ctl {args:?} failed: {}{}",
        out.stderr, out.stdout
    );
    out.stdout
}

/// Waits until `check` holds for server `addr`'s summary; panics after [`CONVERGE`] naming
/// `what` and the last summary.
pub async fn wait_for(pki: &Pki, addr: SocketAddr, what: &str, check: impl Fn(&Summary) -> bool) {
    let started = Instant::now();
    loop {
        let s = pki.summary(addr).await;
        if check(&s) {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "{addr}: {what} not within {CONVERGE:?}; summary: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a file");
        }
    }
}
