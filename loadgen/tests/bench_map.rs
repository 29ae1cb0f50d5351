//! Runs the real `loadgen bench-map` binary on a small map and checks its report.

mod common;

use std::process::Command;

#[test]
fn bench_map_json_has_every_figure_and_consistent_values() {
    let report = common::run_json(&[
        "bench-map",
        "--partitions",
        "20000",
        "--tables",
        "2",
        "--lookups",
        "20000",
        "--updates",
        "200",
        "--json",
    ]);
    let num = |k: &str| common::num(&report, k);
    assert_eq!(num("partitions"), 20_000.0);
    assert_eq!(num("tables"), 2.0);
    for k in [
        "bytes_per_partition",
        "baseline_bytes_per_partition",
        "zstd_bytes_per_partition",
        "lookup_ns_p50",
        "lookup_ns_p99",
        "baseline_lookup_ns_p50",
        "update_us_p50",
        "update_us_p99",
        "rebuild_update_seconds",
        "table_build_seconds",
        "storm_splits",
        "storm_seconds",
        "storm_partitions_per_s",
        "scrub_seconds",
        "scrub_bytes",
        "scrub_ms_per_100_mb",
    ] {
        assert!(num(k) > 0.0, "{k} = {}", num(k));
    }
    assert!(num("lookup_ns_p99") >= num("lookup_ns_p50"));
    assert!(num("update_us_p99") >= num("update_us_p50"));
    assert_eq!(num("updates"), 200.0);
    // Memory is measured by the allocator, and the structure's own estimate must agree with it:
    // a gap would mean one of them misses something.
    let (measured, estimated) = (
        num("bytes_per_partition"),
        num("estimated_bytes_per_partition"),
    );
    assert!(
        (measured - estimated).abs() / measured < 0.1,
        "allocator says {measured}, estimate says {estimated}"
    );
    assert_eq!(num("lookups"), 20_000.0);
}

#[test]
fn bench_map_refuses_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["bench-map", "--partitions", "10", "--tables", "11"])
        .output()
        .expect("loadgen runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--tables must be between 1 and --partitions")
    );
}

#[test]
fn version_names_the_build_protocols_and_snapshot_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--version")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            format!("loadgen {}", memds_proto::versions::build()).as_str(),
            "protocols: memds/2, memds/1",
            "snapshot format: writes 1, reads 1",
        ],
        "{text}"
    );
}
