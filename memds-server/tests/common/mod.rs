//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 with its own data
//! directory, and clients that talk real QUIC to it.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::TableMap;
use memds_proto::model::TableSpec;
use memds_proto::synth::{self, SynthConfig};
use memds_server::{Limits, RunningServer, ServerConfig};

/// A fresh, empty directory under the system temp dir, unique to this test process and call.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "memds-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
}

impl TestServer {
    pub async fn start(name: &str) -> Self {
        Self::start_with(temp_dir(name), Limits::default()).await
    }

    pub async fn start_with(data_dir: PathBuf, limits: Limits) -> Self {
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir.clone());
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.limits = limits;
        let server = memds_server::start(config)
            .await
            .expect("the server starts");
        let addr = server.quic_addr;
        Self {
            server: Some(server),
            data_dir,
            addr,
        }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.metrics_addr)
            .expect("metrics are on")
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
