//! Runs the real `loadgen bench-server-memory` binary against a real `memds-server` process
//! with tiny sizes and checks the shape of its report (no timing or memory targets here: those
//! depend on the machine).

mod common;

#[test]
fn bench_server_memory_reports_rss_per_round_and_after_a_restart() {
    let bin = common::server_bin();
    let r = common::run_json(&[
        "bench-server-memory",
        "--tables",
        "2",
        "--partitions",
        "2000",
        "--rounds",
        "2",
        "--nodes",
        "30",
        "--settle-secs",
        "0",
        "--restart",
        "--server-bin",
        bin.to_str().expect("a UTF-8 path"),
        "--json",
    ]);
    let num = |k: &str| common::num(&r, k);
    assert_eq!(num("partitions"), 4000.0);
    assert_eq!(num("rounds"), 2.0);
    assert!(num("baseline_rss_bytes") > 0.0);
    let rounds = r["per_round"].as_array().expect("per_round is a list");
    assert_eq!(rounds.len(), 2);
    for (i, round) in rounds.iter().enumerate() {
        let n = |k: &str| common::num(round, k);
        assert_eq!(n("round"), (i + 1) as f64);
        assert!(n("rss_bytes") > 0.0 && n("peak_rss_bytes") >= n("rss_bytes"));
        // Two tables of 2,000 partitions are resident: at least a byte per partition.
        assert!(n("resident_bytes") > 4000.0, "{round}");
        let growth = (n("rss_bytes") - num("baseline_rss_bytes")) / 4000.0;
        assert!((n("rss_growth_per_partition") - growth).abs() < 1e-6);
    }
    let first = common::num(&rounds[0], "rss_bytes");
    let last = common::num(&rounds[1], "rss_bytes");
    assert!((num("last_over_first") - last / first).abs() < 1e-9);
    assert!(r["growth_target_met"].is_boolean() && r["last_over_first_target_met"].is_boolean());
    // The restarted server recovered the same tables.
    assert!(num("restart_rss_bytes") > 0.0);
    assert_eq!(
        num("restart_resident_bytes"),
        common::num(&rounds[1], "resident_bytes")
    );
}
