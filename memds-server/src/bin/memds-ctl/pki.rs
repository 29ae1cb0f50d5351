//! `memds-ctl pki`: a fleet's certificates issued without talking to any server.

use std::io::Write as _;

use anyhow::Context as _;
use memds_server::tls::{self as pki, ClientRole, IfExists, Issued};

use crate::PkiCommand;

/// Issues certificates and prints the files written as one JSON object.
pub(crate) fn run_pki(command: &PkiCommand) -> anyhow::Result<()> {
    let if_exists = |overwrite: bool| {
        if overwrite {
            IfExists::Overwrite
        } else {
            IfExists::Refuse
        }
    };
    let hint = |e: pki::PkiError| match e {
        pki::PkiError::Exists(_) => anyhow::anyhow!("{e} (pass --overwrite to replace it)"),
        e => e.into(),
    };
    let json = match command {
        PkiCommand::Ca {
            dir,
            name,
            overwrite,
        } => {
            let issued = pki::create_ca(dir, name, if_exists(*overwrite))
                .map_err(hint)
                .context("creating the CA")?;
            issued_json(&issued, serde_json::json!({"kind": "ca", "name": name}))
        }
        PkiCommand::Server {
            dir,
            hosts,
            overwrite,
        } => {
            let issued = pki::create_server_cert(dir, hosts, if_exists(*overwrite))
                .map_err(hint)
                .context("creating the server certificate")?;
            issued_json(
                &issued,
                serde_json::json!({
                    "kind": "server", "hosts": hosts, "role": ClientRole::Peer.as_str(),
                }),
            )
        }
        PkiCommand::Client {
            dir,
            role,
            name,
            overwrite,
        } => {
            let role = role.server();
            let issued = pki::create_client_cert(dir, role, name.as_deref(), if_exists(*overwrite))
                .map_err(hint)
                .with_context(|| format!("creating the {} certificate", role.as_str()))?;
            issued_json(
                &issued,
                serde_json::json!({"kind": "client", "role": role.as_str()}),
            )
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")?;
    out.flush()?;
    Ok(())
}

/// `fields` with the written files added.
fn issued_json(issued: &Issued, mut fields: serde_json::Value) -> serde_json::Value {
    fields["cert"] = issued.cert.display().to_string().into();
    fields["key"] = issued.key.display().to_string().into();
    fields
}
