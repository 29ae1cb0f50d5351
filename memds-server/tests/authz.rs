//! The authorization matrix (issue 11): every identity a client can present, against every
//! request kind, over real QUIC with mutual TLS. Only what [`MATRIX`] allows is answered; a
//! refused write changes nothing; an identity without a trusted certificate carrying exactly
//! one known role gets no answer at all, not even an error.
//!
//! Each cell runs on a fresh connection, so a cell cannot pass because an earlier request
//! closed the connection, and each identity works on a table of its own, so what one identity
//! may change cannot hide what another may not.
//!
//! The matrix is what `answer_frame` in `memds-server/src/server.rs` does today, on a server
//! with no peers, so ready at once. (Before a server has caught up with its peers, routers' and
//! admins' lookups, get-nodes, get-table, get-delta, tree digests and range pulls are answered
//! `unavailable` and peers' are not; `fleet.rs` tests that for lookups.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, issue_cert_with_uris, table, temp_dir};
use memds_client::tls::{CA_CERT, SERVER_CERT, SERVER_KEY};
use memds_client::{Client, ClientError, ClientTls, ConnectOptions, Connector, Role};
use memds_proto::model::{PartitionSpec, TableSpec};
use memds_proto::synth::split_update;
use memds_proto::wire::{BatchUpdate, ErrorCode, HashRange, PartitionUpdate, Request, Response};
use memds_proto::{TableMap, key_hash, snapshot};

/// One request kind: one column of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lookup,
    BatchLookup,
    Range,
    GetNodes,
    GetTable,
    GetDelta,
    TreeDigests,
    GetRanges,
    ListTables,
    Stats,
    Summary,
    ServerInfo,
    PutTable,
    UpdatePartitions,
    UpdateBatch,
    DropTable,
}

impl Kind {
    /// Every kind, in the matrix's column order (writes last, so the reads of a row see the
    /// identity's table before its writes change or drop it).
    const ALL: [Kind; 16] = [
        Kind::Lookup,
        Kind::BatchLookup,
        Kind::Range,
        Kind::GetNodes,
        Kind::GetTable,
        Kind::GetDelta,
        Kind::TreeDigests,
        Kind::GetRanges,
        Kind::ListTables,
        Kind::Stats,
        Kind::Summary,
        Kind::ServerInfo,
        Kind::PutTable,
        Kind::UpdatePartitions,
        Kind::UpdateBatch,
        Kind::DropTable,
    ];

    /// The kind of a request. Exhaustive on purpose, with no wildcard: a new request variant
    /// does not compile until it has a kind here, a request in [`request_for`] and a column in
    /// [`MATRIX`] (whose rows are as long as [`Kind::ALL`]).
    fn of(request: &Request) -> Kind {
        match request {
            Request::Lookup { .. } => Kind::Lookup,
            Request::BatchLookup { .. } => Kind::BatchLookup,
            Request::Range { .. } => Kind::Range,
            Request::GetNodes { .. } => Kind::GetNodes,
            Request::GetTable { .. } => Kind::GetTable,
            Request::GetDelta { .. } => Kind::GetDelta,
            Request::TreeDigests { .. } => Kind::TreeDigests,
            Request::GetRanges { .. } => Kind::GetRanges,
            Request::ListTables => Kind::ListTables,
            Request::Stats => Kind::Stats,
            Request::Summary => Kind::Summary,
            Request::ServerInfo => Kind::ServerInfo,
            Request::PutTable { .. } => Kind::PutTable,
            Request::UpdatePartitions(_) => Kind::UpdatePartitions,
            Request::UpdateBatch(_) => Kind::UpdateBatch,
            Request::DropTable { .. } => Kind::DropTable,
        }
    }

    fn is_write(self) -> bool {
        matches!(
            self,
            Kind::PutTable | Kind::UpdatePartitions | Kind::UpdateBatch | Kind::DropTable
        )
    }
}

/// What an identity gets for one request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The request's own successful answer; a write is applied.
    Answered,
    /// The typed `unauthorized` error, and nothing changes.
    Unauthorized,
    /// No answer of any kind: the handshake is refused, or the connection closed before any
    /// answer. Nothing changes.
    Nothing,
}

const OK: Outcome = Outcome::Answered;
const DENY: Outcome = Outcome::Unauthorized;
const NONE: Outcome = Outcome::Nothing;

/// Who connects: one row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    /// No client certificate at all.
    NoCertificate,
    /// A router certificate from another CA (a complete foreign PKI, as `memds-ctl pki`
    /// makes one).
    ForeignRouter,
    /// An admin certificate from another CA.
    ForeignAdmin,
    /// A self-signed certificate carrying the admin role.
    SelfSignedAdmin,
    /// The cluster CA's signature, no subject alternative name at all.
    NoRole,
    /// The cluster CA's signature, a URI that is not a role.
    OtherUri,
    /// The cluster CA's signature, `router` and `admin`.
    TwoRoles,
    /// The cluster CA's signature, `admin` twice.
    AdminTwice,
    /// The cluster CA's signature, `urn:memds:role:superuser`.
    UnknownRole,
    /// The cluster CA's signature, `urn:memds:role:Admin` (role names are exact).
    MisspelledRole,
    /// The development router certificate.
    Router,
    /// The development admin certificate.
    Admin,
    /// The development peer certificate.
    Peer,
    /// The server's own certificate, which it presents when it dials its peers (role peer).
    ServerCertificate,
}

/// The authorization matrix, derived from `answer_frame` in `memds-server/src/server.rs`.
#[rustfmt::skip]
const MATRIX: [(Identity, [Outcome; Kind::ALL.len()]); 14] = [
    //                             Lookup Batch Range Nodes GetTbl Delta Tree  Rngs  List  Stats Summ  Info  Put   Update UpdBat Drop
    (Identity::NoCertificate,     [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::ForeignRouter,     [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::ForeignAdmin,      [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::SelfSignedAdmin,   [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::NoRole,            [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::OtherUri,          [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::TwoRoles,          [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::AdminTwice,        [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::UnknownRole,       [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::MisspelledRole,    [NONE,  NONE, NONE, NONE, NONE,  NONE, NONE, NONE, NONE, NONE, NONE, NONE , NONE, NONE,  NONE,  NONE]),
    (Identity::Router,            [OK,    OK,   OK,   OK,   OK,    OK,   DENY, DENY, OK,   OK,   OK, OK   ,   DENY, DENY,  DENY,  DENY]),
    (Identity::Admin,             [OK,    OK,   OK,   OK,   OK,    OK,   OK,   OK,   OK,   OK,   OK, OK   ,   OK,   OK,    OK,    OK  ]),
    (Identity::Peer,              [OK,    OK,   OK,   OK,   OK,    OK,   OK,   OK,   OK,   OK,   OK, OK   ,   OK,   OK,    OK,    OK  ]),
    (Identity::ServerCertificate, [OK,    OK,   OK,   OK,   OK,    OK,   OK,   OK,   OK,   OK,   OK, OK   ,   OK,   OK,    OK,    OK  ]),
];

/// The TLS material of every identity: the client always trusts the server's CA, so the only
/// variable is what it presents.
struct Identities {
    /// The server's development PKI (the cluster CA).
    pki: PathBuf,
    /// Another CA's complete development PKI, and a self-signed certificate.
    foreign: PathBuf,
    /// Removes the foreign PKI with the identities.
    _foreign_dir: tempfile::TempDir,
}

impl Identities {
    fn new(pki: PathBuf) -> Self {
        let foreign_tmp = temp_dir("authz-foreign-pki");
        let foreign = foreign_tmp.path().to_path_buf();
        memds_server::tls::ensure_dev_pki(&foreign).expect("a foreign PKI");
        self_signed(&foreign, "urn:memds:role:admin", "self-signed-admin");
        for (uris, name) in [
            (&[][..], "no-role"),
            (&["spiffe://memds/router"], "other-uri"),
            (
                &["urn:memds:role:router", "urn:memds:role:admin"],
                "two-roles",
            ),
            (
                &["urn:memds:role:admin", "urn:memds:role:admin"],
                "admin-twice",
            ),
            (&["urn:memds:role:superuser"], "unknown-role"),
            (&["urn:memds:role:Admin"], "misspelled-role"),
        ] {
            issue_cert_with_uris(&pki, uris, name);
        }
        Self {
            pki,
            foreign,
            _foreign_dir: foreign_tmp,
        }
    }

    fn tls(&self, identity: Identity) -> ClientTls {
        let ca = self.pki.join(CA_CERT);
        let from = |dir: &Path, cert: &str, key: &str| {
            ClientTls::from_files(&ca, Some((&dir.join(cert), &dir.join(key)))).expect("TLS")
        };
        let issued = |name: &str| from(&self.pki, &format!("{name}.pem"), &format!("{name}.key"));
        match identity {
            Identity::NoCertificate => ClientTls::from_files(&ca, None).expect("TLS"),
            Identity::ForeignRouter => from(&self.foreign, "router.pem", "router.key"),
            Identity::ForeignAdmin => from(&self.foreign, "admin.pem", "admin.key"),
            Identity::SelfSignedAdmin => from(
                &self.foreign,
                "self-signed-admin.pem",
                "self-signed-admin.key",
            ),
            Identity::NoRole => issued("no-role"),
            Identity::OtherUri => issued("other-uri"),
            Identity::TwoRoles => issued("two-roles"),
            Identity::AdminTwice => issued("admin-twice"),
            Identity::UnknownRole => issued("unknown-role"),
            Identity::MisspelledRole => issued("misspelled-role"),
            Identity::Router => ClientTls::from_dir(&self.pki, Role::Router).expect("TLS"),
            Identity::Admin => ClientTls::from_dir(&self.pki, Role::Admin).expect("TLS"),
            Identity::Peer => ClientTls::from_dir(&self.pki, Role::Peer).expect("TLS"),
            Identity::ServerCertificate => from(&self.pki, SERVER_CERT, SERVER_KEY),
        }
    }
}

/// Writes `dir/<name>.pem` and `.key`: a self-signed client certificate with one URI.
fn self_signed(dir: &Path, uri: &str, name: &str) {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("ASCII URI"))];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("self-signed");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
}

/// The map with another name.
fn named(map: TableMap, name: &str) -> TableMap {
    let mut spec = TableSpec::from(&map);
    spec.table = name.into();
    TableMap::try_from(spec).expect("valid")
}

/// Each identity's own table, at version 1.
fn table_of(identity: Identity) -> TableMap {
    named(table(0, 64, 1), &format!("authz-{identity:?}"))
}

/// A request of `kind` on the table `current` (the one the server holds): one that succeeds
/// if authorized. Writes make the next version.
fn request_for(kind: Kind, current: &TableMap) -> Request {
    let name = current.name().as_str().to_owned();
    let version = current.version().get();
    match kind {
        Kind::Lookup => Request::Lookup {
            table: name,
            hash: key_hash(b"user#42"),
            min_version: Some(version),
        },
        Kind::BatchLookup => Request::BatchLookup {
            table: name,
            hashes: vec![0, key_hash(b"user#42"), u64::MAX],
            min_version: Some(version),
        },
        Kind::Range => Request::Range {
            table: name,
            from: 0,
            to: u64::MAX,
            limit: 8,
            min_version: None,
        },
        Kind::GetNodes => Request::GetNodes { table: name },
        Kind::GetTable => Request::GetTable {
            table: name,
            if_newer_than: None,
        },
        Kind::GetDelta => Request::GetDelta {
            table: name,
            since: version - 1,
        },
        Kind::TreeDigests => Request::TreeDigests {
            table: name,
            level: 1,
            from: 0,
            end_inclusive: u64::MAX,
        },
        Kind::GetRanges => Request::GetRanges {
            table: name,
            ranges: vec![
                HashRange {
                    from: 0,
                    end_inclusive: 0,
                },
                HashRange {
                    from: 1 << 63,
                    end_inclusive: (1 << 63) + 5,
                },
            ],
        },
        Kind::ListTables => Request::ListTables,
        Kind::Stats => Request::Stats,
        Kind::Summary => Request::Summary,
        Kind::ServerInfo => Request::ServerInfo,
        Kind::PutTable => Request::PutTable {
            snapshot: snapshot::encode(&named(table(0, 64, version + 1), &name)),
        },
        Kind::UpdatePartitions => {
            // Split partition 3 in two.
            let p = current.partitions()[3];
            let end = current.end_inclusive(3);
            let spec = |id: u64, start: u64| PartitionSpec {
                id,
                start,
                epoch: p.epoch.get() + 1,
                replicas: p.replicas.as_slice().iter().map(|r| r.get()).collect(),
                leader: 0,
            };
            Request::UpdatePartitions(PartitionUpdate {
                table: name,
                base_version: version,
                version: version + 1,
                end_inclusive: end,
                nodes: vec![],
                partitions: vec![
                    spec(p.id.get(), p.start).into(),
                    spec(1_000_000 + version, p.start + (end - p.start) / 2).into(),
                ],
            })
        }
        Kind::UpdateBatch => {
            // Split partitions 5 and 10 in two, at one version.
            let mut batch = BatchUpdate::from(split_update(current, 5, 2_000_000 + 2 * version));
            batch.ranges.extend(
                BatchUpdate::from(split_update(current, 10, 2_000_001 + 2 * version)).ranges,
            );
            Request::UpdateBatch(batch)
        }
        Kind::DropTable => Request::DropTable {
            table: name,
            version: Some(version),
        },
    }
}

/// Whether `answer` is the successful answer to a request of `kind`.
fn succeeded(kind: Kind, answer: &Response) -> bool {
    match (kind, answer) {
        (Kind::Lookup | Kind::BatchLookup | Kind::Range, Response::Routes(routes)) => {
            !routes.routes.is_empty()
        }
        (Kind::GetNodes, Response::Nodes(nodes)) => !nodes.nodes.is_empty(),
        (Kind::GetDelta, Response::Delta(_) | Response::NoDelta { .. })
        | (Kind::TreeDigests, Response::TreeDigests(_))
        | (Kind::GetRanges, Response::Delta(_))
        | (Kind::GetTable, Response::Table { .. })
        | (Kind::ListTables, Response::Tables(_))
        | (Kind::Stats, Response::Stats(_))
        | (Kind::Summary, Response::Summary(_))
        | (Kind::ServerInfo, Response::ServerInfo(_))
        | (Kind::DropTable, Response::Dropped { .. }) => true,
        (Kind::PutTable | Kind::UpdatePartitions | Kind::UpdateBatch, Response::Written(ack)) => {
            ack.applied
        }
        _ => false,
    }
}

/// What a client presenting `tls` got for `request`, on a fresh connection.
#[derive(Debug)]
enum Got {
    Answer(Response),
    /// The handshake failed, or the connection closed before an answer (the reason).
    Nothing(String),
}

impl Got {
    /// For failure messages: the answer's start (a snapshot's bytes are not worth printing), or
    /// why there was none.
    fn describe(&self) -> String {
        match self {
            Got::Answer(answer) => format!("{answer:?}").chars().take(160).collect(),
            Got::Nothing(why) => format!("no answer: {why}"),
        }
    }
}

async fn attempt(tls: &ClientTls, addr: std::net::SocketAddr, request: &Request) -> Got {
    let connector = Connector::new(tls, ConnectOptions::default()).expect("endpoint");
    let got = match connector.connect(addr).await {
        Err(e) => Got::Nothing(e.to_string()),
        Ok(client) => match client.send(request).await {
            Err(e) => Got::Nothing(e.to_string()),
            Ok(pending) => match tokio::time::timeout(Duration::from_secs(10), pending).await {
                Ok(Ok(answer)) => Got::Answer(answer),
                Ok(Err(e @ ClientError::Closed(_))) => Got::Nothing(e.to_string()),
                Ok(Err(e)) => panic!("{request:?}: unexpected client error {e}"),
                Err(_) => panic!(
                    "{request:?}: neither answered nor closed within 10 s (a refused client \
                     must be told so, not left hanging)"
                ),
            },
        },
    };
    connector.close();
    got
}

/// The table the server holds under `name`, if any (read by the observer, outside the matrix).
async fn held(observer: &Client, name: &str) -> Option<TableMap> {
    match observer.get_table(name, None).await {
        Ok(map) => Some(map.expect("unconditional get")),
        Err(ClientError::Server(e)) if e.code == ErrorCode::UnknownTable => None,
        Err(e) => panic!("the observer reads {name}: {e}"),
    }
}

#[test]
fn every_request_kind_has_a_column() {
    let map = table_of(Identity::Admin);
    for (column, kind) in Kind::ALL.into_iter().enumerate() {
        assert_eq!(Kind::of(&request_for(kind, &map)), kind);
        assert_eq!(
            Kind::ALL.iter().position(|k| *k == kind),
            Some(column),
            "{kind:?} is listed twice"
        );
    }
    for (row, (identity, _)) in MATRIX.iter().enumerate() {
        assert_eq!(
            MATRIX.iter().position(|(i, _)| i == identity),
            Some(row),
            "{identity:?} has two rows"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_matrix_allows_is_answered() {
    let mut s = TestServer::start("authz").await;
    let identities = Identities::new(s.tls_dir());
    // An admin connection outside the matrix sets each identity's table up and checks it.
    let observer = s.client(Role::Admin).await;
    for (identity, _) in MATRIX {
        observer.put_table(&table_of(identity)).await.expect("seed");
    }

    let mut failures = Vec::new();
    for (identity, row) in MATRIX {
        let tls = identities.tls(identity);
        let name = table_of(identity).name().as_str().to_owned();
        for (kind, expected) in Kind::ALL.into_iter().zip(row) {
            let before = held(&observer, &name)
                .await
                .unwrap_or_else(|| panic!("{identity:?} {kind:?}: the table is gone"));
            let requests_before = observer.stats().await.expect("stats").requests_total;
            let request = request_for(kind, &before);
            let got = attempt(&tls, s.addr, &request).await;
            let after = held(&observer, &name).await;
            // Every frame the server answered since `requests_before`: the observer's two
            // reads (`held` and this `stats`) and the cell's request if it was answered.
            let answered_frames =
                observer.stats().await.expect("stats").requests_total - requests_before - 2;

            let outcome = match &got {
                Got::Answer(a) if succeeded(kind, a) => Outcome::Answered,
                Got::Answer(Response::Error(e)) if e.code == ErrorCode::Unauthorized => {
                    Outcome::Unauthorized
                }
                Got::Answer(_) => {
                    failures.push(format!(
                        "{identity:?} {kind:?}: unexpected answer {}",
                        got.describe()
                    ));
                    continue;
                }
                Got::Nothing(_) => Outcome::Nothing,
            };
            if outcome != expected {
                failures.push(format!(
                    "{identity:?} {kind:?}: expected {expected:?}, got {outcome:?} ({})",
                    got.describe()
                ));
                continue;
            }
            // The server's side of it: it answered the cell's frame, or none at all.
            let cell_frames = u64::from(outcome != Outcome::Nothing);
            if answered_frames != cell_frames {
                failures.push(format!(
                    "{identity:?} {kind:?} ({outcome:?}): the server answered {answered_frames} \
                     frames for it"
                ));
            }

            // What the table holds now: changed exactly as the write says if it was answered,
            // untouched otherwise.
            let changed_as_asked = match (&request, &after) {
                _ if !kind.is_write() || outcome != Outcome::Answered => {
                    after.as_ref() == Some(&before)
                }
                (Request::PutTable { snapshot }, Some(map)) => {
                    Some(map) == snapshot::decode(snapshot, u64::MAX).ok().as_ref()
                }
                (Request::UpdatePartitions(u), Some(map)) => {
                    map.version().get() == u.version
                        && map.partitions().len() == before.partitions().len() + 1
                        && map.route(u.partitions[1].start).partition.get() == u.partitions[1].id
                }
                (Request::UpdateBatch(u), Some(map)) => {
                    map.version().get() == u.version
                        && map.partitions().len() == before.partitions().len() + u.ranges.len()
                        && u.ranges.iter().all(|r| {
                            map.route(r.partitions[1].start).partition.get() == r.partitions[1].id
                        })
                }
                (Request::DropTable { .. }, None) => true,
                _ => false,
            };
            if !changed_as_asked {
                failures.push(format!(
                    "{identity:?} {kind:?} ({outcome:?}): the table went from version {} to {:?}",
                    before.version().get(),
                    after.map(|m| m.version().get())
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the authorization matrix does not hold:\n{}",
        failures.join("\n")
    );

    // Every refused table is still at the version it was seeded with; every writer's is
    // dropped; the server still serves.
    for (identity, row) in MATRIX {
        let name = table_of(identity).name().as_str().to_owned();
        let version = held(&observer, &name).await.map(|m| m.version().get());
        let want = (row[Kind::ALL.len() - 1] != OK).then_some(1);
        assert_eq!(version, want, "{identity:?}'s table");
    }
    s.stop().await;
}
