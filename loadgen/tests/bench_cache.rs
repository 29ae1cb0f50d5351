//! Runs the real `loadgen bench-cache` binary briefly and checks its report.

use std::process::Command;

#[test]
fn bench_cache_reports_hits_next_to_moka_and_quick_cache() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "bench-cache",
            "--entries",
            "2000",
            "--calls",
            "20000",
            "--rounds",
            "4",
            "--json",
        ])
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let num = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing from {r}"))
    };
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
