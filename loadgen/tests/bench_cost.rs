//! Runs the real `loadgen bench-cost` binary against a real `memds-server` process with tiny
//! settings and checks its report: every figure present, ConstantWork sending one server lookup
//! per call and Classic (almost) none in steady state, CPU figures positive, datagrams per
//! lookup counted both ways, and Redis measured at the same load. No timing target:
//! the figures depend on the machine. It runs Redis too (`redis-server`, `redis-benchmark`:
//! scripts/test.sh installs them); a missing tool fails the test.

mod common;

#[test]
fn bench_cost_reports_every_figure_for_both_modes_and_the_references() {
    let bin = common::server_bin();
    let r = common::run_json(&[
        "bench-cost",
        "--points",
        "4x250",
        "--seconds",
        "2",
        "--warmup",
        "0.5",
        "--partitions",
        "2000",
        "--keys",
        "50",
        "--miss-rate",
        "10",
        "--server-bin",
        bin.to_str().expect("a UTF-8 path"),
        "--json",
    ]);
    let num = |v: &serde_json::Value, k: &str| common::num(v, k);

    let batched = &r["batched"];
    assert_eq!(num(batched, "batch"), 64.0);
    for k in [
        "lookups",
        "server_cpu_seconds",
        "server_cpu_per_lookup_us",
        "lookups_per_server_cpu_s",
    ] {
        assert!(num(batched, k) > 0.0, "batched {k} = {}", num(batched, k));
    }
    let redis = &r["redis"];
    assert_eq!(num(redis, "pipeline"), 1.0);
    for k in [
        "gets_per_s",
        "server_cpu_seconds",
        "gets_per_server_cpu_s",
        "server_cpu_per_get_us",
    ] {
        assert!(num(redis, k) > 0.0, "redis {k} = {}", num(redis, k));
    }

    let points = r["points"].as_array().expect("points is an array");
    assert_eq!(points.len(), 1);
    let p = &points[0];
    assert_eq!(num(p, "routers"), 4.0);
    assert_eq!(num(p, "rate_per_router"), 250.0);
    for k in [
        "router_cpu_per_refresh_us",
        "server_cpu_per_lookup_vs_batched",
        "server_cpu_per_lookup_vs_redis",
        "server_cpu_per_lookup_vs_redis_paced",
    ] {
        assert!(num(p, k).is_finite(), "{k} = {}", num(p, k));
    }
    // Redis at the point's own load: 4 connections x 250/s for 2 s.
    let paced = &p["redis_paced"];
    assert!(
        (1000.0..=2200.0).contains(&num(paced, "gets")),
        "paced Redis GETs: {paced}"
    );
    for k in [
        "server_cpu_seconds",
        "server_cpu_per_get_us",
        "server_switches_per_get",
    ] {
        assert!(num(paced, k) > 0.0, "paced redis {k} = {}", num(paced, k));
    }
    for mode in ["constant_work", "classic"] {
        let f = &p[mode];
        for k in ["window_seconds", "requests"] {
            assert!(num(f, k) > 0.0, "{mode} {k} = {}", num(f, k));
        }
        // The routers' process runs its load loops in both modes.
        for k in ["router_cpu_seconds", "router_cpu_per_request_us"] {
            assert!(num(f, k) > 0.0, "{mode} {k} = {}", num(f, k));
        }
        for k in [
            "hit_stream_misses",
            "misses",
            "server_lookups",
            "lookups_per_request",
            "server_cpu_seconds",
            "server_frames",
            "lookups_per_frame",
            "router_lookups_sent",
            "router_dropped",
            "server_cpu_per_lookup_us",
            "server_cpu_per_request_us",
            "miss_p50_us",
            "miss_p99_us",
            "datagrams",
            "datagrams_per_lookup",
            "datagrams_sent_per_lookup",
            "router_send_calls_per_lookup",
            "acks_per_lookup",
            "server_switches_per_lookup",
        ] {
            assert!(num(f, k) >= 0.0, "{mode} {k} = {}", num(f, k));
        }
        // The keys fit the caches, warmed before the window: the hit stream only hits.
        assert_eq!(num(f, "hit_stream_misses"), 0.0, "{mode}: {f}");
        assert!(num(f, "misses") > 0.0, "{mode}: the miss stream ran: {f}");
        assert!(num(f, "miss_p99_us") >= num(f, "miss_p50_us"), "{f}");
    }
    let cw = &p["constant_work"];
    let classic = &p["classic"];
    // ConstantWork: one server lookup per call, hit or miss (a few may straddle the window's
    // edges, and a hedged miss counts twice).
    let calls = num(cw, "requests") + num(cw, "misses");
    let ratio = num(cw, "server_lookups") / calls;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "constant-work lookups/calls {ratio}: {cw}"
    );
    assert!(num(cw, "server_cpu_seconds") > 0.0, "{cw}");
    assert!(num(cw, "server_cpu_per_lookup_us") > 0.0, "{cw}");
    assert!(num(cw, "lookups_per_frame") > 0.0, "{cw}");
    assert!(num(cw, "server_switches_per_lookup") > 0.0, "{cw}");
    // Every lookup travels in a datagram each way at most (a frame carries one or more), and
    // the server's answers come back: both directions are counted.
    let datagrams = num(cw, "datagrams_per_lookup");
    assert!(
        datagrams > 0.0 && datagrams <= 3.0,
        "constant-work datagrams per lookup {datagrams}: {cw}"
    );
    assert!(num(cw, "datagrams_sent_per_lookup") > 0.0, "{cw}");
    assert!(num(cw, "datagrams_sent_per_lookup") < datagrams, "{cw}");
    // Classic: only the misses reach the server.
    let classic_calls = num(classic, "requests") + num(classic, "misses");
    assert!(
        num(classic, "server_lookups") <= 2.0 * num(classic, "misses") + 5.0,
        "classic sent more than its misses: {classic}"
    );
    assert!(
        num(classic, "server_lookups") < 0.2 * classic_calls,
        "classic: {classic}"
    );
}
