//! Runs the real `loadgen bench-fleet` binary (embedded peers, real QUIC) with tiny sizes and
//! checks its report.

mod common;

#[test]
fn bench_fleet_reports_write_to_all_latency_and_new_server_readiness() {
    let r = common::run_json(&[
        "bench-fleet",
        "--write-partitions",
        "5000",
        "--writes",
        "20",
        "--ready-partitions",
        "20000",
        "--runs",
        "1",
        "--json",
    ]);
    let num = |k: &str| common::num(&r, k);
    assert_eq!(num("write_to_all_count"), 20.0);
    assert_eq!(r["write_poll"], "lookup");
    let (p50, p99) = (num("write_to_all_ms_p50"), num("write_to_all_ms_p99"));
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} ms, p99 {p99} ms");
    assert!(p99 <= num("write_to_all_ms_max"));
    // A write is held by the others no sooner than server 0 acknowledged it.
    assert!(num("write_ack_ms_p50") <= p50);
    assert!(num("write_phase_server_cpu_seconds") >= 0.0);

    let ready = r["ready"].as_array().expect("ready figures");
    assert_eq!(ready.len(), 1);
    let f = &ready[0];
    let num = |k: &str| common::num(f, k);
    assert_eq!(num("partitions"), 20_000.0);
    assert_eq!(num("runs"), 1.0);
    assert!(num("ready_seconds") > 0.0, "{f}");
    assert_eq!(f["ready_seconds_runs"].as_array().map(Vec::len), Some(1));
    // The new server pulled the whole table: at least its compressed snapshot.
    let (pulled, snapshot) = (num("bytes_pulled"), num("snapshot_bytes"));
    assert!(
        snapshot > 0.0 && pulled >= snapshot,
        "pulled {pulled} B, snapshot {snapshot} B"
    );
    assert!(
        pulled < 2.0 * snapshot,
        "pulled {pulled} B, more than one table of {snapshot} B"
    );
    assert_eq!(num("tables_pulled"), 1.0, "{f}");
    assert_eq!(f["new_server_holds_table"], true, "{f}");
    assert!(num("table_version") >= 1.0);
    assert!(num("new_server_cpu_seconds") >= 0.0 && num("serving_cpu_seconds") >= 0.0);
    // The table reached B by A's forward, an anti-entropy pull, or both.
    assert!(
        num("put_phase_forwards_sent") + num("put_phase_tables_pulled") >= 1.0,
        "{f}"
    );
    assert!(num("put_phase_forwards_failed") >= 0.0);
}
