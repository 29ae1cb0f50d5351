//! Runs the real `loadgen bench-cache` binary briefly and checks its report.

mod common;

#[test]
fn bench_cache_reports_hits_next_to_moka_and_quick_cache() {
    let r = common::run_json(&[
        "bench-cache",
        "--entries",
        "2000",
        "--calls",
        "20000",
        "--rounds",
        "4",
        "--json",
    ]);
    let num = |k: &str| common::num(&r, k);
    for k in [
        "hit_ns_p50",
        "hit_ns_p99",
        "moka_get_ns_p50",
        "quick_cache_get_ns_p50",
        "hit_ns_mean",
    ] {
        assert!(num(k) > 0.0, "{k} = {}", num(k));
    }
    assert_eq!(num("calls"), 20_000.0);
    // Constant work: every timed hit (and every mean-timing hit) sent one refresh lookup.
    assert_eq!(num("refresh_lookups_sent"), 40_000.0);
    assert_eq!(num("refreshes_dropped"), 0.0);
}
