//! What this build is and which versions it speaks and writes: the release, the build, the
//! protocol versions and the format versions, printed by every binary's `--version` and
//! answered by a server's `server-info` (memds/2).
//!
//! Releases follow semantic versioning (`CHANGELOG.md`). The formats each have their own
//! version, which changes only when their bytes do; the compatibility policy is README's
//! "Upgrading" section.

use crate::snapshot;
use crate::wire::{FormatVersions, Protocol, ServerInfo};

/// This build's release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// The commit this build was made from, when the build recorded it (`MEMDS_BUILD_COMMIT` set at
/// compile time, as the release and container builds do).
pub const COMMIT: Option<&str> = option_env!("MEMDS_BUILD_COMMIT");

/// The build: the release and, if recorded, the commit.
pub fn build() -> String {
    match COMMIT {
        Some(commit) if !commit.is_empty() => format!("{RELEASE} (commit {commit})"),
        _ => format!("{RELEASE} (commit not recorded)"),
    }
}

/// The snapshot format, which every binary that handles tables reads and writes.
pub fn snapshot_format() -> FormatVersions {
    FormatVersions {
        name: "snapshot".into(),
        writes: u32::from(snapshot::FORMAT_VERSION),
        reads_oldest: u32::from(snapshot::FORMAT_VERSION),
    }
}

/// This build's description with the given formats (the snapshot format and, for a server, its
/// log and checkpoint formats).
pub fn info(formats: Vec<FormatVersions>) -> ServerInfo {
    ServerInfo {
        release: RELEASE.into(),
        build: build(),
        protocols: Protocol::SPOKEN
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        formats,
    }
}

/// The text `--version` prints after the binary's name: the build, then the protocols and
/// formats, a line each.
pub fn version_text(info: &ServerInfo) -> String {
    let mut out = format!("{}\n", info.build);
    out.push_str(&format!("protocols: {}\n", info.protocols.join(", ")));
    for f in &info.formats {
        if f.reads_oldest == f.writes {
            out.push_str(&format!(
                "{} format: writes {}, reads {}\n",
                f.name, f.writes, f.writes
            ));
        } else {
            out.push_str(&format!(
                "{} format: writes {}, reads {} to {}\n",
                f.name, f.writes, f.reads_oldest, f.writes
            ));
        }
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_names_the_build_protocols_and_formats() {
        let text = version_text(&info(vec![
            snapshot_format(),
            FormatVersions {
                name: "log".into(),
                writes: 3,
                reads_oldest: 2,
            },
        ]));
        assert!(text.starts_with(&format!("{RELEASE} (commit ")), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "protocols: memds/2, memds/1",
                "snapshot format: writes 1, reads 1",
                "log format: writes 3, reads 2 to 3",
            ],
            "{text}"
        );
    }
}
