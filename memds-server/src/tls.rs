//! Server TLS: the development PKI, the QUIC server configuration, and telling routers from
//! admins.
//!
//! Mutual TLS is always on. The handshake accepts a client certificate that chains to the
//! router CA or to the admin CA, and nothing else: a client without a trusted certificate gets
//! no connection at all. After the handshake, [`Authorizer::role_of`] checks the certificate
//! against the admin CA alone: only those certificates may write.
//!
//! With no certificates configured, the server creates a development PKI in `<data-dir>/tls/`
//! on first start (the file layout is in `memds_client::tls`) and reuses it afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memds_client::tls::{
    self as files, ADMIN_CA_CERT, ADMIN_CA_KEY, ADMIN_CERT, ADMIN_KEY, CA_CERT, CA_KEY,
    ROUTER_CERT, ROUTER_KEY, SERVER_CERT, SERVER_KEY, TlsError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

/// Where the server's TLS material comes from.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// CA of router (read-only) client certificates.
    pub client_ca: PathBuf,
    /// CA of admin (read-write) client certificates.
    pub admin_ca: PathBuf,
}

impl TlsPaths {
    /// The files of a development TLS directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
            client_ca: dir.join(CA_CERT),
            admin_ca: dir.join(ADMIN_CA_CERT),
        }
    }
}

/// What a client's certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// Signed by the router CA: may read.
    Router,
    /// Signed by the admin CA: may read and write.
    Admin,
}

impl ClientRole {
    /// The role's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Router => "router",
            ClientRole::Admin => "admin",
        }
    }
}

/// Classifies authenticated clients.
#[derive(Debug, Clone)]
pub struct Authorizer {
    admin: Arc<dyn ClientCertVerifier>,
}

impl Authorizer {
    /// The role of a connection's peer, from the certificate chain the handshake verified.
    /// `None` when there is no chain (which the handshake does not allow).
    pub fn role_of(&self, chain: &[CertificateDer<'static>]) -> Option<ClientRole> {
        let (end_entity, intermediates) = chain.split_first()?;
        let admin = self
            .admin
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok();
        Some(if admin {
            ClientRole::Admin
        } else {
            ClientRole::Router
        })
    }
}

/// Builds the QUIC server configuration and the authorizer from the given files.
pub fn server_config(paths: &TlsPaths) -> Result<(quinn::ServerConfig, Authorizer), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = files::load_certs(&paths.cert)?;
    let key = files::load_key(&paths.key)?;
    let mut all_roots = rustls::RootCertStore::empty();
    let mut admin_roots = rustls::RootCertStore::empty();
    for ca in files::load_certs(&paths.client_ca)? {
        all_roots.add(ca).map_err(config_error)?;
    }
    for ca in files::load_certs(&paths.admin_ca)? {
        admin_roots.add(ca.clone()).map_err(config_error)?;
        all_roots.add(ca).map_err(config_error)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(all_roots), provider.clone())
            .build()
            .map_err(config_error)?;
    let admin =
        WebPkiClientVerifier::builder_with_provider(Arc::new(admin_roots), provider.clone())
            .build()
            .map_err(config_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(config_error)?;
    tls.alpn_protocols = vec![memds_proto::wire::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error)?;
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        Authorizer { admin },
    ))
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Why the development PKI could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Creates the development PKI in `dir` unless it is already there; answers whether it
/// created it.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool, PkiError> {
    let all = [
        CA_CERT,
        CA_KEY,
        ADMIN_CA_CERT,
        ADMIN_CA_KEY,
        SERVER_CERT,
        SERVER_KEY,
        ROUTER_CERT,
        ROUTER_KEY,
        ADMIN_CERT,
        ADMIN_KEY,
    ];
    if all.iter().all(|f| dir.join(f).exists()) {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;

    let (ca_pem, ca) = new_ca("MemDS development CA")?;
    let (admin_ca_pem, admin_ca) = new_ca("MemDS development admin CA")?;
    let server = leaf(
        "memds-server",
        &["localhost", "memds", "127.0.0.1", "::1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca.1,
    )?;
    let router = leaf(
        "memds-router",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca.1,
    )?;
    let admin = leaf(
        "memds-admin",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &admin_ca.1,
    )?;

    let outputs = [
        (CA_CERT, ca_pem),
        (CA_KEY, ca.0),
        (ADMIN_CA_CERT, admin_ca_pem),
        (ADMIN_CA_KEY, admin_ca.0),
        (SERVER_CERT, server.0),
        (SERVER_KEY, server.1),
        (ROUTER_CERT, router.0),
        (ROUTER_KEY, router.1),
        (ADMIN_CERT, admin.0),
        (ADMIN_KEY, admin.1),
    ];
    for (name, pem) in outputs {
        let path = dir.join(name);
        write_private(&path, pem.as_bytes()).map_err(io(&path))?;
    }
    Ok(true)
}

/// A CA: its certificate PEM, and (key PEM, issuer).
fn new_ca(name: &str) -> Result<(String, (String, Issuer<'static, KeyPair>)), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_pem = key.serialize_pem();
    Ok((cert.pem(), (key_pem, Issuer::new(params, key))))
}

/// An end-entity certificate: (certificate PEM, key PEM).
fn leaf(
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
