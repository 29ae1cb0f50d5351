//! The servers `--server` names: resolving the entries, the TLS material and the certificate
//! name each server must present, connecting, and the timeout every request is held to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use memds_client::tls::CA_CERT;
use memds_client::{Client, ClientError, ClientTls, ConnectOptions, Connector};

use crate::Cli;

/// One server to talk to.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The `--server` entry it comes from, as given.
    pub(crate) given: String,
    /// The address connected to.
    pub(crate) addr: SocketAddr,
    /// The endpoint to connect from, configured with the name the server's certificate must
    /// carry.
    connector: Connector,
}

impl Target {
    /// How the server is named to people: its address, and the entry it came from if that was
    /// a name.
    pub(crate) fn label(&self) -> String {
        if self.given == self.addr.to_string() {
            self.given.clone()
        } else {
            format!("{} (given as {})", self.addr, self.given)
        }
    }
}

/// The TLS material of the role asked for.
pub(crate) fn load_tls(cli: &Cli) -> anyhow::Result<ClientTls> {
    let (cert_file, key_file) = cli.role.client().files();
    let ca = cli.ca.clone().unwrap_or_else(|| cli.tls_dir.join(CA_CERT));
    let cert = cli
        .cert
        .clone()
        .unwrap_or_else(|| cli.tls_dir.join(cert_file));
    let key = cli
        .key
        .clone()
        .unwrap_or_else(|| cli.tls_dir.join(key_file));
    ClientTls::from_files(&ca, Some((&cert, &key))).context("loading TLS material")
}

/// The servers the `--server` entries name, in the order given, each address once.
pub(crate) async fn resolve_targets(
    entries: &[String],
    server_name: Option<&str>,
    tls: &ClientTls,
) -> anyhow::Result<Vec<Target>> {
    // One endpoint per certificate name and address family: the name is fixed per endpoint,
    // and an endpoint bound to an IPv4 socket cannot reach an IPv6 address.
    let mut connectors: HashMap<(String, bool), Connector> = HashMap::new();
    let mut targets: Vec<Target> = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (addrs, host) = match entry.parse::<SocketAddr>() {
            Ok(addr) => (vec![addr], None),
            Err(_) => {
                let (host, port) = entry
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty() && !host.contains(':'))
                    .with_context(|| {
                        format!("--server {entry:?}: expected IP:port or host:port")
                    })?;
                let port: u16 = port
                    .parse()
                    .with_context(|| format!("--server {entry:?}: {port:?} is not a port"))?;
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("resolving {host}"))?
                    .collect();
                (one_family(found), Some(host))
            }
        };
        if addrs.is_empty() {
            bail!("--server {entry:?} resolved to no address");
        }
        let name = server_name.or(host).unwrap_or("localhost").to_owned();
        for addr in addrs {
            if targets.iter().any(|t| t.addr == addr) {
                continue;
            }
            let connector = match connectors.entry((name.clone(), addr.is_ipv6())) {
                std::collections::hash_map::Entry::Occupied(o) => o.get().clone(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let bind = if addr.is_ipv6() {
                        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
                    } else {
                        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
                    };
                    let options = ConnectOptions {
                        server_name: name.clone(),
                        bind,
                        ..ConnectOptions::default()
                    };
                    v.insert(Connector::new(tls, options).context("creating the QUIC endpoint")?)
                        .clone()
                }
            };
            targets.push(Target {
                given: entry.to_owned(),
                addr,
                connector,
            });
        }
    }
    if targets.is_empty() {
        bail!("--server names no server");
    }
    Ok(targets)
}

/// Connects to one server, failing with what `memds-ctl` has always said.
pub(crate) async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Client> {
    tokio::time::timeout(timeout, target.connector.connect(target.addr))
        .await
        .with_context(|| {
            format!(
                "connecting to {}: no answer within {timeout:?}",
                target.addr
            )
        })?
        .map_err(Into::into)
}

/// Connects to one server of several; a server that does not answer in time is a connection
/// failure like any other, so callers can move on to the next.
pub(crate) async fn dial(target: &Target, timeout: Duration) -> Result<Client, ClientError> {
    tokio::time::timeout(timeout, target.connector.connect(target.addr))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Connect {
                addr: target.addr,
                source: memds_client::ConnectError::Timeout(timeout),
            })
        })
}

/// A request held to `timeout`: running out of time is the client's own `Timeout` error, so
/// callers tell it apart from other failures the same way wherever it happened.
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, memds_client::ClientError>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| memds_client::ClientError::Timeout(timeout))??)
}

/// The addresses of one family, sorted: IPv4 if there are any, else IPv6. A dual-stack name
/// lists each server once per family, and a fleet must count each server once; sorting keeps
/// "the first server" the same from one run to the next whatever order DNS answers in.
fn one_family(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    addrs
}
