//! TLS material for clients, and the layout of a development TLS directory.
//!
//! One cluster CA signs every certificate of a fleet: servers, routers, admins and peers. A
//! client certificate says what it may do with exactly one role URI among its subject
//! alternative names: `urn:memds:role:router` (reads), `urn:memds:role:admin` (reads and
//! writes) or `urn:memds:role:peer` (another server of the fleet). A certificate with no role
//! URI, several, or an unknown one is refused. Server certificates carry the peer role too
//! (and may authenticate clients as well as servers), so a server dials its peers with its
//! own certificate.
//!
//! A MemDS server started without explicit certificates creates a development PKI in
//! `<data-dir>/tls/` (see `memds-server`; `memds-ctl pki` issues the same files for a real
//! fleet), with these files:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the cluster CA: signs every certificate below; everyone trusts it |
//! | `server.pem`, `server.key` | the server's certificate (names `localhost`, `memds`, `127.0.0.1`, `::1`; role peer) |
//! | `router.pem`, `router.key` | a router certificate (role router): may read |
//! | `admin.pem`, `admin.key` | an admin certificate (role admin): may read and write |
//! | `peer.pem`, `peer.key` | a peer certificate (role peer): another server of the fleet |
//!
//! The role comes from the certificate the CA signed, never from which CA signed it, so a
//! router certificate can never write, whatever CAs a server is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memds_proto::wire::Protocol;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The prefix of the subject-alternative-name URI that carries a client certificate's role:
/// the role's name follows it (`urn:memds:role:router`, `…:admin`, `…:peer`).
pub const ROLE_URI_PREFIX: &str = "urn:memds:role:";

/// The cluster CA, which signs every certificate; clients and servers trust it.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (kept so more certificates can be issued).
pub const CA_KEY: &str = "ca.key";
/// The server's certificate chain.
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server.key";
/// A router (read-only) certificate.
pub const ROUTER_CERT: &str = "router.pem";
/// The router certificate's key.
pub const ROUTER_KEY: &str = "router.key";
/// An admin (read-write) certificate.
pub const ADMIN_CERT: &str = "admin.pem";
/// The admin certificate's key.
pub const ADMIN_KEY: &str = "admin.key";
/// A peer certificate: what another server of the fleet presents.
pub const PEER_CERT: &str = "peer.pem";
/// The peer certificate's key.
pub const PEER_KEY: &str = "peer.key";

/// Which identity of a TLS directory a client presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The router certificate: reads only.
    Router,
    /// The admin certificate: reads and writes.
    Admin,
    /// The peer certificate: another server of the fleet.
    Peer,
}

impl Role {
    /// The role's name, as in its certificate's role URI and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Admin => "admin",
            Role::Peer => "peer",
        }
    }

    /// The certificate and key files of this role in a development TLS directory.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            Role::Router => (ROUTER_CERT, ROUTER_KEY),
            Role::Admin => (ADMIN_CERT, ADMIN_KEY),
            Role::Peer => (PEER_CERT, PEER_KEY),
        }
    }
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed as PEM.
    #[error("reading {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A PEM file held no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the material or configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// What a client trusts and presents.
#[derive(Debug)]
pub struct ClientTls {
    /// CA certificates the server's certificate must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The client's certificate chain and key; `None` connects without a certificate (which a
    /// MemDS server refuses: useful only to test that it does).
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl ClientTls {
    /// The material of a development TLS directory for `role`.
    pub fn from_dir(dir: &Path, role: Role) -> Result<Self, TlsError> {
        let (cert, key) = role.files();
        Self::from_files(&dir.join(CA_CERT), Some((&dir.join(cert), &dir.join(key))))
    }

    /// Explicit files: the CA to trust and, optionally, a certificate and key to present.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let roots = load_certs(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((load_certs(cert)?, load_key(key)?)),
            None => None,
        };
        Ok(Self { roots, identity })
    }

    /// The QUIC client configuration: TLS 1.3 with ring, ALPN `memds/2` and `memds/1`, newest first.
    pub fn quic_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        self.quic_config_offering(&Protocol::SPOKEN)
    }

    /// The QUIC client configuration offering only `protocols` in ALPN, in that order.
    pub fn quic_config_offering(
        &self,
        protocols: &[Protocol],
    ) -> Result<quinn::ClientConfig, TlsError> {
        if protocols.is_empty() {
            return Err(TlsError::Config(
                "no protocol version to offer: name at least one".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.roots {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| TlsError::Config(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = protocols.iter().map(|p| p.alpn().to_vec()).collect();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}
