//! Runs the real `loadgen bench-server` binary (embedded server, real QUIC) briefly and checks
//! its report.

mod common;

#[test]
fn bench_server_reports_server_counted_lookups_per_cpu_second() {
    let r = common::run_json(&[
        "bench-server",
        "--partitions",
        "5000",
        "--duration",
        "1",
        "--concurrency",
        "4",
        "--batch",
        "64",
        "--json",
    ]);
    let num = |k: &str| common::num(&r, k);
    for k in [
        "lookups_per_s",
        "server_cpu_seconds",
        "lookups_per_server_cpu_s",
        "p50_us",
        "p99_us",
    ] {
        assert!(num(k) > 0.0, "{k} = {}", num(k));
    }
    // The server's own counter, not the client's: whole batches of 64.
    assert_eq!(num("lookups") as u64 % 64, 0);
    let per_cpu = num("lookups") / num("server_cpu_seconds");
    assert!((per_cpu - num("lookups_per_server_cpu_s")).abs() / per_cpu < 1e-6);
    assert!(r["vs_redis"].is_null(), "no Redis was asked for");
}
