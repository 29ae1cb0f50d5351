//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 with its own data
//! directory, and clients that talk real QUIC to it.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::TableMap;
use memds_proto::model::TableSpec;
use memds_proto::synth::{self, SynthConfig};
use memds_server::{Limits, RunningServer, ServerConfig};

/// Fleets of real `memds-server` processes, peers of each other.
pub mod peers;

/// A fresh, empty directory under the system temp dir (its name starts with `memds-test-<name>`),
/// removed when the guard is dropped, a failed assertion included.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("memds-test-{name}-"))
        .tempdir()
        .expect("creating a temp dir")
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    /// The data directory, when the server made its own (removed with the server).
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with default limits over a fresh data directory of its own.
    pub async fn start(name: &str) -> Self {
        let dir = temp_dir(name);
        let mut s = Self::start_with(dir.path().to_path_buf(), Limits::default()).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_with(data_dir: PathBuf, limits: Limits) -> Self {
        Self::start_configured(data_dir, |c| c.limits = limits).await
    }

    /// A server on `data_dir` with the test defaults, then whatever `configure` changes.
    pub async fn start_configured(
        data_dir: PathBuf,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir.clone());
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        configure(&mut config);
        let server = memds_server::start(config)
            .await
            .expect("the server starts");
        let addr = server.quic_addr;
        Self {
            server: Some(server),
            data_dir,
            addr,
            _dir: None,
        }
    }

    /// The development PKI the server uses (`<data-dir>/tls` unless configured elsewhere).
    pub fn tls_dir(&self) -> PathBuf {
        self.server
            .as_ref()
            .and_then(|s| s.tls_dir.clone())
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.metrics_addr)
            .expect("metrics are on")
    }

    /// The body of the server's `/metrics` page, with the status line and headers before it.
    pub async fn scrape(&self) -> String {
        let addr = self.metrics_addr();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut body = String::new();
            stream.read_to_string(&mut body).expect("response");
            body
        })
        .await
        .expect("join")
    }

    pub async fn client(&self, role: Role) -> Client {
        connector(&self.tls_dir(), role)
            .connect(self.addr)
            .await
            .expect("connects")
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

pub fn connector(tls_dir: &Path, role: Role) -> Connector {
    connector_with(tls_dir, role, ConnectOptions::default())
}

pub fn connector_with(tls_dir: &Path, role: Role, options: ConnectOptions) -> Connector {
    let tls = ClientTls::from_dir(tls_dir, role).expect("TLS material");
    Connector::new(&tls, options).expect("endpoint")
}

/// Synthetic table `index` of a small fleet, at `version`.
pub fn table(index: usize, partitions: usize, version: u64) -> TableMap {
    let m = synth::generate_table(
        &SynthConfig {
            partitions: partitions * 4,
            tables: 4,
            seed: 1000 + version,
            ..SynthConfig::default()
        },
        index,
    );
    let mut spec = TableSpec::from(&m);
    spec.version = version;
    TableMap::try_from(spec).expect("valid")
}

/// The value of an unlabelled series in a scraped `/metrics` page (0 if absent).
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A child process killed (SIGKILL, which also ends a stopped one) and reaped when dropped, so
/// a failed assertion leaves no server behind. It derefs to the [`Child`].
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded (for `wait_with_output`, which consumes it).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("the child is held until dropped")
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("the child is held until dropped")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is held until dropped")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the real `memds-server` binary on 127.0.0.1:0 over `dir` with `args` added, and
/// reads its announcement. Logs go to the test's stderr.
pub fn spawn_server(dir: &Path, args: &[&str]) -> (KillOnDrop, SocketAddr) {
    use std::io::{BufRead as _, BufReader};
    let mut child = KillOnDrop::new(
        server_command(dir, args)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("memds-server starts"),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the announcement line");
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the first line is JSON ({e}): {line:?}"));
    let addr = v["quic"]
        .as_str()
        .expect("quic address")
        .parse()
        .expect("socket address");
    (child, addr)
}

/// The command that runs the real `memds-server` on 127.0.0.1:0 over `dir`, stdout piped.
pub fn server_command(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_memds-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--no-metrics", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped());
    cmd
}

/// Signs a client certificate with the CA of `ca_dir` (`ca.pem`, `ca.key`) that carries
/// exactly these URI subject alternative names, and writes it to `ca_dir/<name>.pem` and
/// `ca_dir/<name>.key`: certificates `memds-ctl pki` would never issue (no role, several).
pub fn issue_cert_with_uris(ca_dir: &Path, uris: &[&str], name: &str) -> (PathBuf, PathBuf) {
    let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).expect("the CA's files");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).expect("the CA key parses");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("the CA parses");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI(u.to_string().try_into().expect("ASCII URI")))
        .collect();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let (cert_path, key_path) = (
        ca_dir.join(format!("{name}.pem")),
        ca_dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
    (cert_path, key_path)
}

/// A port free on 127.0.0.1 for UDP right now: peers must know each other's addresses before
/// they start, so a fleet's ports are chosen first (the server binds it a moment later).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}
