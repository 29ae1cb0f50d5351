//! The experiment's outputs: `results.json`, plots as PNG and SVG, a self-contained
//! `report.html`, and the table on the terminal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::experiment::results::{Results, RunResult, Sample, Scenario, WarmWith, by_scenario};

/// The font every plot's text uses, shipped with the load generator (DejaVu Sans; its license
/// is in `loadgen/assets/DejaVuSans.LICENSE`), so plots render the same on any machine.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const WIDTH: u32 = 900;
const HEIGHT: u32 = 420;

/// Writes every output file into `out`.
pub(crate) fn write(out: &Path, results: &Results) -> anyhow::Result<()> {
    register_font();
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(out.join("results.json"), json).context("writing results.json")?;
    let mut sections = String::new();
    for (scenario, runs) in by_scenario(&results.runs) {
        let load = format!("{}-fleet-load", scenario.name());
        let latency = format!("{}-latency", scenario.name());
        for (name, kind) in [(&load, Kind::FleetLoad), (&latency, Kind::Latency)] {
            let svg_path = out.join(format!("{name}.svg"));
            let png_path = out.join(format!("{name}.png"));
            plot(
                SVGBackend::new(&svg_path, (WIDTH, HEIGHT)),
                scenario,
                &runs,
                kind,
            )
            .with_context(|| format!("drawing {}", svg_path.display()))?;
            plot(
                BitMapBackend::new(&png_path, (WIDTH, HEIGHT)),
                scenario,
                &runs,
                kind,
            )
            .with_context(|| format!("drawing {}", png_path.display()))?;
        }
        let svg_load = std::fs::read_to_string(out.join(format!("{load}.svg")))?;
        let svg_latency = std::fs::read_to_string(out.join(format!("{latency}.svg")))?;
        let _ = write!(
            sections,
            "<h2>{}</h2>\n{}\n<div class=\"plots\">{}\n{}</div>\n",
            scenario.name(),
            html_table(&runs),
            svg_load,
            svg_latency
        );
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>MemDS bimodality experiment</title>\n\
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}.plots svg{{max-width:100%;height:auto}}</style>\n\
</head><body>\n<h1>MemDS: constant-work vs classic caching</h1>\n\
<p>Fleet load is read from the servers' own lookup counters. <b>Amplification</b> = peak fleet lookups per second after the \
trigger (dashed line) / mean fleet lookups per second before it. A classic cache sends only its misses to the fleet, so when \
the caches go cold its load jumps by about 1/(1 - hit rate); a constant-work cache sends every lookup, hit or miss, so its \
load does not move. Latency is measured from each request's scheduled time (open loop).</p>\n\
<p>Settings: <code>{}</code></p>\n{}\n</body></html>\n",
        html_escape(&results.settings.to_string()),
        sections
    );
    std::fs::write(out.join("report.html"), html).context("writing report.html")?;
    Ok(())
}

/// Prints the results table.
pub(crate) fn print_table(results: &Results) {
    println!(
        "{:<19} {:<13} {:>10} {:>10} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
        "scenario",
        "mode",
        "steady/s",
        "peak/s",
        "amplif",
        "hit%",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "errors",
        "recover"
    );
    for r in &results.runs {
        println!(
            "{:<19} {:<13} {:>10.0} {:>10.0} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>8}",
            r.scenario.name(),
            r.mode,
            r.steady_lookups_per_s,
            r.peak_lookups_per_s,
            r.amplification,
            100.0 * r.hit_rate,
            r.latency_after_ms.p50,
            r.latency_after_ms.p99,
            r.latency_after_ms.p999,
            r.errors,
            r.time_to_recover_s
                .map_or("-".into(), |t| format!("{t:.2}s")),
        );
    }
    println!(
        "\n{:<19} {:<13} {:<12} {:>9} {:>13} {:>10} {:>10}",
        "warm-up", "mode", "warm with", "seconds", "fleet lookups", "lookups/s", "x steady"
    );
    for r in &results.runs {
        let w = &r.warmup;
        println!(
            "{:<19} {:<13} {:<12} {:>9.2} {:>13} {:>10.0} {:>10.2}",
            r.scenario.name(),
            r.mode,
            match w.method {
                WarmWith::Table => "table",
                WarmWith::Lookups => "lookups",
            },
            w.seconds,
            w.fleet_lookups,
            w.fleet_lookups_per_s,
            w.versus_steady,
        );
    }
}

fn register_font() {
    // Registering twice is harmless; a bad font would only lose the plots' text.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
}

#[derive(Clone, Copy)]
enum Kind {
    FleetLoad,
    Latency,
}

fn plot<DB: DrawingBackend>(
    backend: DB,
    scenario: Scenario,
    runs: &[&RunResult],
    kind: Kind,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let value = |s: &Sample| match kind {
        Kind::FleetLoad => s.fleet_lookups_per_s,
        Kind::Latency => s.p99_ms,
    };
    let t_max = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.t))
        .fold(1.0, f64::max);
    let y_max = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(value))
        .fold(1.0, f64::max)
        * 1.1;
    let (title, y_label) = match kind {
        Kind::FleetLoad => (
            format!("{}: fleet load", scenario.name()),
            "fleet lookups / s",
        ),
        Kind::Latency => (
            format!("{}: router latency p99", scenario.name()),
            "p99 latency, ms",
        ),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (i, r) in runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                r.samples.iter().map(|s| (s.t, value(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{} (amplification {:.2})", r.mode, r.amplification))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some(r) = runs.first() {
        let t = r.trigger_s;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(t, 0.0), (t, y_max)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("trigger: {}", scenario.name()))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn html_table(runs: &[&RunResult]) -> String {
    let mut t = String::from(
        "<table><tr><th>mode</th><th>steady lookups/s</th><th>peak lookups/s</th><th>amplification</th><th>hit rate</th>\
<th>p50 / p99 / p999 ms after</th><th>errors</th><th>recovered after</th></tr>\n",
    );
    for r in runs {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{:.0}</td><td>{:.0}</td><td><b>{:.2}</b></td><td>{:.2}%</td><td>{:.2} / {:.2} / {:.2}</td><td>{}</td><td>{}</td></tr>",
            r.mode,
            r.steady_lookups_per_s,
            r.peak_lookups_per_s,
            r.amplification,
            100.0 * r.hit_rate,
            r.latency_after_ms.p50,
            r.latency_after_ms.p99,
            r.latency_after_ms.p999,
            r.errors,
            r.time_to_recover_s
                .map_or("-".into(), |s| format!("{s:.2} s")),
        );
    }
    t.push_str("</table>");
    t
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
