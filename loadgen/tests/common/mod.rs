//! Running the real `loadgen` binary from tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::process::Command;

/// Runs `loadgen` with `args` (which must ask for `--json`) and parses its one JSON object.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// A numeric field of a report, failing the test if it is missing.
pub fn num(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing from {report}"))
}

/// The `memds-server` binary of the same profile as this test's `loadgen`, built now so it
/// matches the sources (a package's tests only get its own binaries built).
pub fn server_bin() -> std::path::PathBuf {
    let loadgen = std::path::PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen.parent().expect("the binary is in a directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        "memds-server",
        "--bin",
        "memds-server",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building memds-server failed");
    dir.join("memds-server")
}
