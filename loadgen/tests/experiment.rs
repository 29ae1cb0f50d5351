//! A short run of the real `loadgen experiment` (embedded fleet, real router caches, real QUIC)
//! checking the invariant the experiment is about, and its outputs.

use std::path::Path;
use std::process::Command;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("memds-exp-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 2_000,
        "{} is suspiciously small",
        path.display()
    );
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>"),
        "{} is not an SVG",
        path.display()
    );
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "{} draws nothing",
        path.display()
    );
}

#[test]
fn a_flush_amplifies_classic_load_but_not_constant_work() {
    let out = temp_dir("flush");
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "experiment",
            "--scenario",
            "flush",
            "--duration",
            "4",
            "--rate",
            "800",
            "--routers",
            "4",
            "--partitions",
            "3000",
            "--keys",
            "200000",
            "--churn",
            "2",
            "--sample-ms",
            "200",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("loadgen runs");
    assert!(status.success());
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let runs = results["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        for field in [
            "steady_lookups_per_s",
            "peak_lookups_per_s",
            "amplification",
            "hit_rate",
            "requests",
            "errors",
        ] {
            assert!(run[field].is_number(), "{field} missing from {run}");
        }
        for phase in ["latency_before_ms", "latency_after_ms"] {
            for p in ["p50", "p99", "p999"] {
                assert!(run[phase][p].is_number(), "{phase}.{p} missing");
            }
        }
        assert!(run["samples"].as_array().is_some_and(|s| s.len() >= 10));
        assert_eq!(run["errors"], 0);
        assert_eq!(run["scenario"], "flush");
    }
    let amp = |mode: &str| {
        runs.iter()
            .find(|r| r["mode"] == mode)
            .expect("both modes ran")["amplification"]
            .as_f64()
            .expect("a number")
    };
    assert!(
        amp("constant-work") < 1.5,
        "constant work amplified fleet load {:.2}x",
        amp("constant-work")
    );
    assert!(
        amp("classic") > 10.0,
        "classic amplified fleet load only {:.2}x",
        amp("classic")
    );
    let classic = runs
        .iter()
        .find(|r| r["mode"] == "classic")
        .expect("classic");
    assert!(classic["hit_rate"].as_f64().expect("number") > 0.95);

    for plot in ["flush-fleet-load", "flush-latency"] {
        assert_png(&out.join(format!("{plot}.png")));
        assert_svg(&out.join(format!("{plot}.svg")));
    }
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<svg") && html.contains("amplification"));
    let _ = std::fs::remove_dir_all(&out);
}
