//! Server TLS: the QUIC server configuration, roles read from client certificates, and the
//! certificate authority tooling (the development PKI and what `memds-ctl pki` issues).
//!
//! Mutual TLS is always on. One cluster CA signs every certificate of a fleet; the handshake
//! accepts a client certificate that chains to the CA(s) of the `client_ca` file, and nothing
//! else: a client without a trusted certificate gets no connection at all. After the handshake,
//! [`Authorizer::role_of`] reads the role from the client's own certificate: exactly one
//! subject-alternative-name URI `urn:memds:role:<router|admin|peer>`
//! ([`memds_client::tls::ROLE_URI_PREFIX`]). A certificate with none, several, an unknown one,
//! or that does not parse has no role, and the connection is refused like one without a
//! certificate. Which CA signed a certificate never decides what it may do, so giving a
//! server the same CA twice, or a CA that is an ancestor of another, cannot promote a router.
//!
//! Server certificates carry the peer role and both the server and client extended key usages:
//! a server dials the other servers of its fleet with its own certificate
//! ([`peer_client_tls`]).
//!
//! With no certificates configured, the server creates a development PKI in `<data-dir>/tls/`
//! on first start (the file layout is in `memds_client::tls`) and reuses it afterwards.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memds_client::ClientTls;
use memds_client::tls::{
    self as files, ADMIN_CERT, ADMIN_KEY, CA_CERT, CA_KEY, PEER_CERT, PEER_KEY, ROLE_URI_PREFIX,
    ROUTER_CERT, ROUTER_KEY, SERVER_CERT, SERVER_KEY, TlsError,
};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Where the server's TLS material comes from.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The server's certificate chain (it also identifies the server to its peers).
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// The cluster CA(s): client certificates must chain to one of them, and so must the
    /// certificates of the peers this server dials.
    pub client_ca: PathBuf,
}

impl TlsPaths {
    /// The files of a development TLS directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
            client_ca: dir.join(CA_CERT),
        }
    }
}

/// What a client's certificate allows, from its role URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientRole {
    /// `urn:memds:role:router`: may read.
    Router,
    /// `urn:memds:role:admin`: may read and write.
    Admin,
    /// `urn:memds:role:peer`: another server of the same fleet.
    Peer,
}

impl ClientRole {
    /// Every role.
    pub const ALL: [ClientRole; 3] = [ClientRole::Router, ClientRole::Admin, ClientRole::Peer];

    /// The role's name in its URI, metrics, logs and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Router => "router",
            ClientRole::Admin => "admin",
            ClientRole::Peer => "peer",
        }
    }

    /// The subject-alternative-name URI that gives a certificate this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// The certificate and key files of this role in a TLS directory.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            ClientRole::Router => (ROUTER_CERT, ROUTER_KEY),
            ClientRole::Admin => (ADMIN_CERT, ADMIN_KEY),
            ClientRole::Peer => (PEER_CERT, PEER_KEY),
        }
    }
}

/// A role name that is not `router`, `admin` or `peer`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: expected router, admin or peer")]
pub struct UnknownRole(String);

impl FromStr for ClientRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Classifies authenticated clients.
#[derive(Debug, Clone)]
pub struct Authorizer {
    _private: (),
}

impl Authorizer {
    /// The role of a connection's peer, read from the leaf of the certificate chain the
    /// handshake verified. `None` when there is no chain (which the handshake does not allow)
    /// or the leaf has no single known role (see [`role_in_certificate`]).
    pub fn role_of(&self, chain: &[CertificateDer<'static>]) -> Option<ClientRole> {
        role_in_certificate(chain.first()?)
    }
}

/// The role a DER certificate carries: its one subject-alternative-name URI that starts with
/// `urn:memds:role:` (compared ignoring ASCII case, so a role URI in another spelling is not
/// overlooked). `None` if the certificate does not parse, has no such URI, has several (even
/// equal ones), or names a role other than exactly `router`, `admin` or `peer`. It does not
/// check the signature: that is the handshake's job.
pub fn role_in_certificate(der: &[u8]) -> Option<ClientRole> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let mut role = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let is_role_uri = uri
            .get(..ROLE_URI_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ROLE_URI_PREFIX));
        if !is_role_uri {
            continue;
        }
        let this = uri
            .strip_prefix(ROLE_URI_PREFIX)
            .and_then(|name| name.parse::<ClientRole>().ok())?;
        if role.replace(this).is_some() {
            return None;
        }
    }
    role
}

/// Builds the QUIC server configuration and the authorizer from the given files.
pub fn server_config(paths: &TlsPaths) -> Result<(quinn::ServerConfig, Authorizer), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = files::load_certs(&paths.cert)?;
    let key = files::load_key(&paths.key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in files::load_certs(&paths.client_ca)? {
        roots.add(ca).map_err(config_error)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(config_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(config_error)?;
    tls.alpn_protocols = memds_proto::wire::Protocol::alpn_ids();
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error)?;
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        Authorizer { _private: () },
    ))
}

/// What this server presents when it dials its peers: it trusts the `client_ca` file (one CA
/// signs the whole fleet) and presents its own certificate, which must carry the peer role
/// (refused otherwise, rather than by every peer later).
pub fn peer_client_tls(paths: &TlsPaths) -> Result<ClientTls, TlsError> {
    let tls = ClientTls::from_files(&paths.client_ca, Some((&paths.cert, &paths.key)))?;
    let leaf = tls.identity.as_ref().and_then(|(chain, _)| chain.first());
    if leaf.and_then(|c| role_in_certificate(c)) != Some(ClientRole::Peer) {
        return Err(TlsError::Config(format!(
            "{} does not carry the role URI {}, so peers would refuse it",
            paths.cert.display(),
            ClientRole::Peer.uri()
        )));
    }
    Ok(tls)
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Why certificates could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file to be written exists, and overwriting was not asked for.
    #[error("{0} exists; not overwriting it")]
    Exists(PathBuf),
    /// The CA certificate or key could not be loaded.
    #[error("loading the CA from {path}: {reason}")]
    Ca {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A server certificate needs at least one host name or address.
    #[error("a server certificate needs at least one host")]
    NoHosts,
    /// A host is neither an IP address nor an ASCII DNS name.
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// Why it was refused.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What to do when a file to be written exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    /// Fail with [`PkiError::Exists`], writing nothing.
    Refuse,
    /// Replace it.
    Overwrite,
}

/// The files a `create_*` function wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Creates a cluster CA: `dir/ca.pem` and `dir/ca.key`, with `name` as its common name.
pub fn create_ca(dir: &Path, name: &str, if_exists: IfExists) -> Result<Issued, PkiError> {
    let ca = generate_ca(name)?;
    write_pair(dir, (CA_CERT, CA_KEY), &ca.cert_pem, &ca.key_pem, if_exists)
}

/// Creates a server certificate signed by the CA of `dir` (`ca.pem`, `ca.key`):
/// `dir/server.pem` and `dir/server.key`. Each host is a DNS name or an IP address; the
/// certificate also carries the peer role URI and the server and client extended key usages.
pub fn create_server_cert(
    dir: &Path,
    hosts: &[String],
    if_exists: IfExists,
) -> Result<Issued, PkiError> {
    let issuer = load_issuer(dir)?;
    let (cert, key) = issue_server(&issuer, hosts)?;
    write_pair(dir, (SERVER_CERT, SERVER_KEY), &cert, &key, if_exists)
}

/// Creates a client certificate for `role` signed by the CA of `dir` (`ca.pem`, `ca.key`):
/// `dir/<role>.pem` and `dir/<role>.key`, with common name `name` (default `memds-<role>`).
pub fn create_client_cert(
    dir: &Path,
    role: ClientRole,
    name: Option<&str>,
    if_exists: IfExists,
) -> Result<Issued, PkiError> {
    let issuer = load_issuer(dir)?;
    let (cert, key) = issue_client(&issuer, role, name)?;
    write_pair(dir, role.files(), &cert, &key, if_exists)
}

/// Creates the development PKI in `dir` unless it is all there; answers whether it created
/// it. A directory missing any file (such as one of the old two-CA layout, which has no
/// `peer.pem`) is regenerated whole. Concurrent calls on one directory, in this process or
/// others, serialize on a lock file and end with one consistent PKI; every file is written
/// under a temporary name and renamed into place, `peer.pem` last.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool, PkiError> {
    if dev_pki_complete(dir) {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock_path = dir.join(".pki.lock");
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    // An advisory lock, released when `lock` is dropped or the process dies, so a crash never
    // leaves a stale lock behind.
    lock.lock().map_err(io_error(&lock_path))?;
    if dev_pki_complete(dir) {
        return Ok(false);
    }

    let ca = generate_ca("MemDS development CA")?;
    let issuer = Issuer::new(ca.params, ca.key);
    let hosts = ["localhost", "memds", "127.0.0.1", "::1"].map(String::from);
    let server = issue_server(&issuer, &hosts)?;
    let mut outputs = vec![
        (CA_CERT, ca.cert_pem),
        (CA_KEY, ca.key_pem),
        (SERVER_CERT, server.0),
        (SERVER_KEY, server.1),
    ];
    // Peer last: `dev_pki_complete` looks for `peer.pem`, so a reader that finds every file
    // finds them all final.
    for role in [ClientRole::Router, ClientRole::Admin, ClientRole::Peer] {
        let (cert, key) = issue_client(&issuer, role, None)?;
        let (cert_file, key_file) = role.files();
        outputs.push((key_file, key));
        outputs.push((cert_file, cert));
    }
    for (name, pem) in outputs {
        write_file(&dir.join(name), pem.as_bytes(), IfExists::Overwrite)?;
    }
    sync_dir(dir)?;
    drop(lock);
    Ok(true)
}

/// The files of a complete development PKI.
const DEV_PKI_FILES: [&str; 10] = [
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    ROUTER_CERT,
    ROUTER_KEY,
    ADMIN_CERT,
    ADMIN_KEY,
    PEER_KEY,
    PEER_CERT,
];

fn dev_pki_complete(dir: &Path) -> bool {
    DEV_PKI_FILES.iter().all(|f| dir.join(f).exists())
}

struct NewCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    key_pem: String,
}

fn generate_ca(name: &str) -> Result<NewCa, rcgen::Error> {
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
    Ok(NewCa {
        params,
        key,
        cert_pem: cert.pem(),
        key_pem,
    })
}

/// The CA of `dir`, checking that its key belongs to its certificate (certificates signed by
/// another key would chain to nothing).
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let ca_error = |path: &Path, reason: &dyn std::fmt::Display| PkiError::Ca {
        path: path.to_owned(),
        reason: reason.to_string(),
    };
    // `load_certs` refuses a file without a certificate, so there is a first one.
    let cert = files::load_certs(&cert_path)
        .map_err(|e| ca_error(&cert_path, &e))?
        .swap_remove(0);
    let key_pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| ca_error(&key_path, &e))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&cert).map_err(|e| ca_error(&cert_path, &e))?;
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(ca_error(
            &key_path,
            &"the key does not belong to the CA certificate",
        ));
    }
    Issuer::from_ca_cert_der(&cert, key).map_err(|e| ca_error(&cert_path, &e))
}

/// A server certificate: (certificate PEM, key PEM).
fn issue_server(
    issuer: &Issuer<'static, KeyPair>,
    hosts: &[String],
) -> Result<(String, String), PkiError> {
    if hosts.is_empty() {
        return Err(PkiError::NoHosts);
    }
    let mut sans = hosts
        .iter()
        .map(|h| host_san(h))
        .collect::<Result<Vec<_>, _>>()?;
    sans.push(role_san(ClientRole::Peer)?);
    let usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(leaf("memds-server", sans, usages, issuer)?)
}

/// A client certificate with `role`: (certificate PEM, key PEM).
fn issue_client(
    issuer: &Issuer<'static, KeyPair>,
    role: ClientRole,
    name: Option<&str>,
) -> Result<(String, String), PkiError> {
    let name = name.map_or_else(|| format!("memds-{}", role.as_str()), str::to_owned);
    let sans = vec![role_san(role)?];
    Ok(leaf(
        &name,
        sans,
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        issuer,
    )?)
}

fn host_san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| PkiError::InvalidHost {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    if host.is_empty() || host.contains(|c: char| c.is_ascii_whitespace() || c == '/') {
        return Err(invalid("not an IP address or a DNS name"));
    }
    let name = Ia5String::try_from(host).map_err(|e| invalid(&e.to_string()))?;
    Ok(SanType::DnsName(name))
}

fn role_san(role: ClientRole) -> Result<SanType, rcgen::Error> {
    Ok(SanType::URI(Ia5String::try_from(role.uri())?))
}

/// An end-entity certificate: (certificate PEM, key PEM).
fn leaf(
    name: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a certificate and its key under `dir`; in [`IfExists::Refuse`] mode neither may
/// exist, and the key is removed again if the certificate cannot be written.
fn write_pair(
    dir: &Path,
    (cert_file, key_file): (&str, &str),
    cert: &str,
    key: &str,
    if_exists: IfExists,
) -> Result<Issued, PkiError> {
    let issued = Issued {
        cert: dir.join(cert_file),
        key: dir.join(key_file),
    };
    if if_exists == IfExists::Refuse {
        for path in [&issued.cert, &issued.key] {
            if path.exists() {
                return Err(PkiError::Exists(path.clone()));
            }
        }
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    write_file(&issued.key, key.as_bytes(), if_exists)?;
    if let Err(e) = write_file(&issued.cert, cert.as_bytes(), if_exists) {
        if if_exists == IfExists::Refuse {
            let _ = fs::remove_file(&issued.key);
        }
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(issued)
}

/// Writes `bytes` to `path` with mode 0600 and all at once: into a temporary file of the same
/// directory, synced, then renamed over `path` ([`IfExists::Overwrite`]) or linked to it,
/// which fails if `path` exists ([`IfExists::Refuse`]).
fn write_file(path: &Path, bytes: &[u8], if_exists: IfExists) -> Result<(), PkiError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .map_or_else(|| "pki".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&tmp)(e));
    }
    let placed = match if_exists {
        IfExists::Overwrite => fs::rename(&tmp, path),
        IfExists::Refuse => fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp)),
    };
    placed.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_owned())
        } else {
            io_error(path)(e)
        }
    })
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_owned();
    move |source| PkiError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};
    use rustls_pki_types::UnixTime;
    use rustls_pki_types::pem::PemObject as _;

    /// A directory that does not exist yet (`ensure_dev_pki` creates it), inside a temporary
    /// one the guard removes.
    fn temp_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let dir = tmp.path().join(name);
        (tmp, dir)
    }

    /// A DER certificate whose subject alternative names are these URIs.
    fn cert_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let ca = generate_ca("test CA").expect("CA");
        let issuer = Issuer::new(ca.params, ca.key);
        let sans = uris
            .iter()
            .map(|u| SanType::URI(Ia5String::try_from(*u).expect("ASCII")))
            .collect();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params
            .signed_by(&key, &issuer)
            .expect("signed")
            .der()
            .clone()
    }

    fn role_of(uris: &[&str]) -> Option<ClientRole> {
        let authorizer = Authorizer { _private: () };
        authorizer.role_of(&[cert_with_uris(uris)])
    }

    #[test]
    fn the_role_is_the_one_role_uri_of_the_leaf() {
        assert_eq!(
            role_of(&["urn:memds:role:router"]),
            Some(ClientRole::Router)
        );
        assert_eq!(role_of(&["urn:memds:role:admin"]), Some(ClientRole::Admin));
        assert_eq!(role_of(&["urn:memds:role:peer"]), Some(ClientRole::Peer));
        // Other URIs are not roles and do not count.
        assert_eq!(
            role_of(&[
                "spiffe://memds/router",
                "urn:memds:role:admin",
                "urn:other:x"
            ]),
            Some(ClientRole::Admin)
        );
    }

    #[test]
    fn none_several_or_unknown_role_uris_give_no_role() {
        assert_eq!(role_of(&[]), None);
        assert_eq!(role_of(&["urn:memds:other:admin"]), None);
        assert_eq!(
            role_of(&["urn:memds:role:router", "urn:memds:role:admin"]),
            None
        );
        assert_eq!(
            role_of(&["urn:memds:role:router", "urn:memds:role:router"]),
            None
        );
        assert_eq!(role_of(&["urn:memds:role:root"]), None);
        assert_eq!(role_of(&["urn:memds:role:"]), None);
        assert_eq!(role_of(&["urn:memds:role:admin2"]), None);
        // A role URI in another spelling is not overlooked: it is an unknown role, so it can
        // neither grant a role nor hide beside another one.
        assert_eq!(role_of(&["URN:MEMDS:ROLE:ADMIN"]), None);
        assert_eq!(
            role_of(&["urn:memds:role:router", "URN:memds:role:admin"]),
            None
        );
        // DNS names are not roles.
        let ca = generate_ca("test CA").expect("CA");
        let issuer = Issuer::new(ca.params, ca.key);
        let (pem, _) = leaf(
            "x",
            vec![SanType::DnsName(
                Ia5String::try_from("urn:memds:role:admin").expect("ASCII"),
            )],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &issuer,
        )
        .expect("leaf");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        assert_eq!(role_in_certificate(&der), None);
    }

    #[test]
    fn only_the_leaf_counts() {
        let authorizer = Authorizer { _private: () };
        let router = cert_with_uris(&["urn:memds:role:router"]);
        let admin = cert_with_uris(&["urn:memds:role:admin"]);
        assert_eq!(
            authorizer.role_of(&[router.clone(), admin.clone()]),
            Some(ClientRole::Router)
        );
        assert_eq!(authorizer.role_of(&[cert_with_uris(&[]), admin]), None);
        assert_eq!(authorizer.role_of(&[]), None);
    }

    #[test]
    fn garbage_and_damaged_certificates_give_no_role_and_never_panic() {
        let authorizer = Authorizer { _private: () };
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x80",
            b"not a certificate",
            &[0xff; 64],
        ] {
            assert_eq!(
                authorizer.role_of(&[CertificateDer::from(bytes.to_vec())]),
                None
            );
        }
        let good = cert_with_uris(&["urn:memds:role:admin"]);
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(role_in_certificate(&trailing), None);
        for len in 0..good.len() {
            assert_eq!(
                role_in_certificate(&good[..len]),
                None,
                "truncated to {len}"
            );
        }
        // Random damage may leave a parseable certificate, but must never panic.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..5000 {
            let mut bytes = good.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            let _ = role_in_certificate(&bytes);
        }
    }

    #[test]
    fn role_names_round_trip() {
        for role in ClientRole::ALL {
            assert_eq!(role.as_str().parse::<ClientRole>().ok(), Some(role));
            assert_eq!(role.uri(), format!("urn:memds:role:{}", role.as_str()));
        }
        assert!("Admin".parse::<ClientRole>().is_err());
    }

    /// Verifies `cert` as a client certificate against `dir/ca.pem`, as a server does.
    fn verifies_as_client(dir: &Path, cert: &Path) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in files::load_certs(&dir.join(CA_CERT)).expect("CA") {
            roots.add(ca).expect("root");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let chain = files::load_certs(cert).expect("cert");
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .is_ok()
    }

    fn leaf_of(path: &Path) -> CertificateDer<'static> {
        files::load_certs(path).expect("cert").swap_remove(0)
    }

    #[test]
    fn the_development_pki_has_every_role_under_one_ca() {
        let (_tmp, dir) = temp_dir("dev");
        assert!(ensure_dev_pki(&dir).expect("created"));
        assert!(!ensure_dev_pki(&dir).expect("reused"));
        for role in ClientRole::ALL {
            let cert = dir.join(role.files().0);
            assert_eq!(role_in_certificate(&leaf_of(&cert)), Some(role));
            assert!(verifies_as_client(&dir, &cert), "{role:?}");
        }
        // The server's certificate identifies it to its peers.
        let server = leaf_of(&dir.join(SERVER_CERT));
        assert_eq!(role_in_certificate(&server), Some(ClientRole::Peer));
        assert!(verifies_as_client(&dir, &dir.join(SERVER_CERT)));
        let (_, parsed) = x509_parser::parse_x509_certificate(&server).expect("parses");
        let eku = parsed.extended_key_usage().expect("ok").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let tls = peer_client_tls(&TlsPaths::in_dir(&dir)).expect("peer TLS");
        assert_eq!(
            tls.roots,
            files::load_certs(&dir.join(CA_CERT)).expect("CA")
        );
        assert_eq!(
            tls.identity.as_ref().map(|(chain, _)| chain[0].clone()),
            Some(server)
        );
        // Every file is private.
        use std::os::unix::fs::PermissionsExt as _;
        for f in DEV_PKI_FILES {
            let mode = fs::metadata(dir.join(f))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn a_directory_of_the_old_layout_is_regenerated_whole() {
        let (_tmp, dir) = temp_dir("old");
        ensure_dev_pki(&dir).expect("created");
        let old_ca = fs::read(dir.join(CA_CERT)).expect("CA");
        fs::remove_file(dir.join(PEER_CERT)).expect("rm");
        fs::remove_file(dir.join(PEER_KEY)).expect("rm");
        assert!(ensure_dev_pki(&dir).expect("regenerated"));
        assert_ne!(fs::read(dir.join(CA_CERT)).expect("CA"), old_ca);
        for cert in [ROUTER_CERT, ADMIN_CERT, PEER_CERT, SERVER_CERT] {
            assert!(verifies_as_client(&dir, &dir.join(cert)), "{cert}");
        }
    }

    #[test]
    fn concurrent_creation_ends_with_one_consistent_pki() {
        let (_tmp, dir) = temp_dir("race");
        let created = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ensure_dev_pki(&dir).expect("ensure")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .filter(|&c| c)
                .count()
        });
        assert_eq!(created, 1);
        for cert in [ROUTER_CERT, ADMIN_CERT, PEER_CERT, SERVER_CERT] {
            assert!(verifies_as_client(&dir, &dir.join(cert)), "{cert}");
        }
        let stray: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn the_create_functions_issue_under_an_existing_ca_and_refuse_to_overwrite() {
        let (_tmp, dir) = temp_dir("create");
        let ca = create_ca(&dir, "Test CA", IfExists::Refuse).expect("CA");
        assert_eq!(ca.cert, dir.join(CA_CERT));
        assert!(matches!(
            create_ca(&dir, "Test CA", IfExists::Refuse),
            Err(PkiError::Exists(p)) if p == dir.join(CA_CERT)
        ));
        let hosts = ["db1.example".to_owned(), "10.0.0.7".to_owned()];
        let server = create_server_cert(&dir, &hosts, IfExists::Refuse).expect("server");
        let server_leaf = leaf_of(&server.cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(&server_leaf).expect("parses");
        let names = &parsed
            .subject_alternative_name()
            .expect("ok")
            .expect("present")
            .value
            .general_names;
        assert!(names.contains(&GeneralName::DNSName("db1.example")));
        assert!(names.contains(&GeneralName::IPAddress(&[10, 0, 0, 7])));
        assert!(names.contains(&GeneralName::URI("urn:memds:role:peer")));
        for role in ClientRole::ALL {
            let issued =
                create_client_cert(&dir, role, Some("someone"), IfExists::Refuse).expect("client");
            assert_eq!(issued.cert, dir.join(role.files().0));
            assert_eq!(role_in_certificate(&leaf_of(&issued.cert)), Some(role));
            assert!(verifies_as_client(&dir, &issued.cert));
        }
        let admin = fs::read(dir.join(ADMIN_CERT)).expect("admin");
        assert!(matches!(
            create_client_cert(&dir, ClientRole::Admin, None, IfExists::Refuse),
            Err(PkiError::Exists(_))
        ));
        assert_eq!(fs::read(dir.join(ADMIN_CERT)).expect("admin"), admin);
        create_client_cert(&dir, ClientRole::Admin, None, IfExists::Overwrite).expect("again");
        assert_ne!(fs::read(dir.join(ADMIN_CERT)).expect("admin"), admin);

        assert!(matches!(
            create_server_cert(&dir, &[], IfExists::Overwrite),
            Err(PkiError::NoHosts)
        ));
        assert!(matches!(
            create_server_cert(&dir, &["bad host".to_owned()], IfExists::Overwrite),
            Err(PkiError::InvalidHost { .. })
        ));
        // A CA key that does not belong to the CA certificate is refused.
        let (_other_tmp, other) = temp_dir("create-other");
        create_ca(&other, "Other", IfExists::Refuse).expect("CA");
        fs::copy(other.join(CA_KEY), dir.join(CA_KEY)).expect("copy");
        assert!(matches!(
            create_client_cert(&dir, ClientRole::Router, None, IfExists::Overwrite),
            Err(PkiError::Ca { .. })
        ));
    }
}
