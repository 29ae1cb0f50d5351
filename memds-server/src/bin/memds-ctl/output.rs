//! Output shared by several commands: one JSON line per server, and columns aligned for the
//! text formats.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;

use crate::servers::Target;

/// Prints one line per server, `{"server": ADDR, "ok": true, FIELD: value}` or `{"server":
/// ADDR, "ok": false, "error": "..."}`; the exit status is 1 if any failed.
pub(crate) fn print_lines<T: Serialize>(
    out: &mut impl std::io::Write,
    targets: &[Target],
    results: Vec<anyhow::Result<T>>,
    field: &str,
) -> anyhow::Result<ExitCode> {
    /// One server's line. The answer is a one-entry map flattened into the line, so it is
    /// serialized as itself (its fields in their own order, as one server's output has them).
    #[derive(Serialize)]
    struct Line<'a, T> {
        server: String,
        ok: bool,
        #[serde(flatten)]
        answer: BTreeMap<&'a str, T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    let mut code = ExitCode::SUCCESS;
    for (target, result) in targets.iter().zip(results) {
        let server = target.addr.to_string();
        let line = match result {
            Ok(value) => Line {
                server,
                ok: true,
                answer: BTreeMap::from([(field, value)]),
                error: None,
            },
            Err(e) => {
                code = ExitCode::FAILURE;
                Line {
                    server,
                    ok: false,
                    answer: BTreeMap::new(),
                    error: Some(format!("{e:#}")),
                }
            }
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(code)
}

/// Rows as columns padded to their widest cell, two spaces apart.
pub(crate) fn aligned(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line += &format!("{cell:<w$}  ");
        }
        text += line.trim_end();
        text += "\n";
    }
    text
}
