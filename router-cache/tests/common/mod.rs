//! Helpers shared by router-cache's integration tests: scratch directories, clients of real
//! servers, and waiting for the cache to connect.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memds_client::{Client, ClientTls, ConnectOptions, Connector, Role};
use router_cache::RouterCache;

/// A fresh path under the system temp dir, unique to this test process and call (not created:
/// the server creates its data directory).
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "memds-router-cache-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// 127.0.0.1, any free port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A client of the server at `addr` with `role`'s certificate from the PKI in `tls`.
pub async fn client(tls: &Path, role: Role, addr: SocketAddr) -> Client {
    let t = ClientTls::from_dir(tls, role).expect("tls");
    Connector::new(&t, ConnectOptions::default())
        .expect("endpoint")
        .connect(addr)
        .await
        .expect("connect")
}

/// Waits (bounded) until the cache has `n` servers connected.
pub async fn servers_up(c: &RouterCache, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats().servers_up != n {
        assert!(
            Instant::now() < deadline,
            "{} servers up, not {n}",
            c.stats().servers_up
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` well-spread hashes, a different set for each `seed`.
pub fn hashes(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| (i + seed * 1_000 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}
