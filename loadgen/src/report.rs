//! The experiment's outputs: `results.json`, plots as PNG and SVG, a self-contained
//! `report.html`, and the table on the terminal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::experiment::results::{Results, RunResult, Sample, Variant, WarmWith, by_variant};

/// The font every plot's text uses, shipped with the load generator (DejaVu Sans; its license
/// is in `loadgen/assets/DejaVuSans.LICENSE`), so plots render the same on any machine.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const WIDTH: u32 = 900;
const HEIGHT: u32 = 420;
/// The availability figure: two charts, one above the other.
const TALL: u32 = 760;
/// Constant work, classic (and any further run of a variant).
const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Writes every output file into `out`.
pub(crate) fn write(out: &Path, results: &Results) -> anyhow::Result<()> {
    register_font();
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(out.join("results.json"), json).context("writing results.json")?;
    let mut sections = String::new();
    for (variant, runs) in by_variant(&results.runs) {
        let name = variant.name();
        let availability = format!("{name}-availability");
        let load = format!("{name}-fleet-load");
        let latency = format!("{name}-latency");
        let figures = [
            (&availability, Kind::Availability, TALL),
            (&load, Kind::FleetLoad, HEIGHT),
            (&latency, Kind::Latency, HEIGHT),
        ];
        for (file, kind, height) in figures {
            let svg_path = out.join(format!("{file}.svg"));
            let png_path = out.join(format!("{file}.png"));
            draw(
                SVGBackend::new(&svg_path, (WIDTH, height)),
                variant,
                &runs,
                kind,
            )
            .with_context(|| format!("drawing {}", svg_path.display()))?;
            draw(
                BitMapBackend::new(&png_path, (WIDTH, height)),
                variant,
                &runs,
                kind,
            )
            .with_context(|| format!("drawing {}", png_path.display()))?;
        }
        let svg = |file: &str| std::fs::read_to_string(out.join(format!("{file}.svg")));
        let _ = write!(
            sections,
            "<h2>{}</h2>\n{}\n<div class=\"plots\">{}\n{}\n{}</div>\n",
            name,
            html_table(&runs),
            svg(&availability)?,
            svg(&load)?,
            svg(&latency)?
        );
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>MemDS bimodality experiment</title>\n\
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}.plots svg{{max-width:100%;height:auto}}</style>\n\
</head><body>\n<h1>MemDS: constant-work vs classic caching</h1>\n\
<p>Fleet load is read from the servers' own lookup counters: lookups offered, the served and the shed. <b>Amplification</b> = \
peak fleet lookups offered per second after the trigger (dashed line) / mean before it. A classic cache sends only its misses \
to the fleet, so when the caches go cold its load jumps by about 1/(1 - hit rate); a constant-work cache sends every lookup, \
hit or miss, so its load does not move. Each fleet is provisioned as operators do it: three eighths of the way into the run its \
servers' lookup limits are set to a headroom times the load that mode showed; what is over the limit is shed. \
<b>Availability</b> = requests that succeeded / requests offered; a request fails when its route cannot be had after the \
request layer's retries. Latency is of the requests that succeeded, measured from each request's scheduled time (open \
loop).</p>\n\
<p>Settings: <code>{}</code></p>\n{}\n</body></html>\n",
        html_escape(&results.settings.to_string()),
        sections
    );
    std::fs::write(out.join("report.html"), html).context("writing report.html")?;
    Ok(())
}

/// Prints the results tables.
pub(crate) fn print_table(results: &Results) {
    println!(
        "{:<30} {:<13} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "scenario",
        "mode",
        "steady/s",
        "capacity",
        "peak/s",
        "amplif",
        "avail <",
        "avail >",
        "shed/s >",
        "p50 ms",
        "p99 ms",
        "recover"
    );
    for r in &results.runs {
        println!(
            "{:<30} {:<13} {:>8.0} {:>8} {:>8.0} {:>7.2} {:>7.2}% {:>7.2}% {:>8.0} {:>7.2} {:>7.2} {:>8}",
            r.variant().name(),
            r.mode,
            r.steady_lookups_per_s,
            r.provisioned_lookups_per_s
                .map_or("-".into(), |c| format!("{c:.0}")),
            r.peak_lookups_per_s,
            r.amplification,
            100.0 * r.availability_before,
            100.0 * r.availability_after,
            r.shed_lookups_per_s,
            r.latency_after_ms.p50,
            r.latency_after_ms.p99,
            r.availability_recover_s
                .map_or("-".into(), |t| format!("{t:.2}s")),
        );
    }
    println!(
        "\n{:<30} {:<13} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "after the trigger",
        "mode",
        "hit%",
        "offered/s",
        "goodput/s",
        "fleet off",
        "served/s",
        "errors",
        "retries",
        "p999 ms",
        "stale rej",
        "corrected"
    );
    for r in &results.runs {
        let a = &r.phases.after;
        println!(
            "{:<30} {:<13} {:>6.2} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>8} {:>8.2} {:>9} {:>8}",
            r.variant().name(),
            r.mode,
            100.0 * a.hit_rate,
            a.offered_requests_per_s,
            a.goodput_per_s,
            a.fleet_offered_per_s,
            a.fleet_served_per_s,
            a.requests - a.ok,
            a.retries,
            a.latency_ms.p999,
            a.stale_rejections,
            a.corrections,
        );
    }
    println!(
        "\n{:<30} {:<13} {:<12} {:>9} {:>13} {:>10} {:>10}",
        "warm-up", "mode", "warm with", "seconds", "fleet lookups", "lookups/s", "x steady"
    );
    for r in &results.runs {
        let w = &r.warmup;
        println!(
            "{:<30} {:<13} {:<12} {:>9.2} {:>13} {:>10.0} {:>10.2}",
            r.variant().name(),
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
    /// Availability over time above, fleet offered load against capacity below.
    Availability,
    FleetLoad,
    Latency,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn draw<DB: DrawingBackend>(
    backend: DB,
    variant: Variant,
    runs: &[&RunResult],
    kind: Kind,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    let drawn: Result<(), Error> = (|| {
        root.fill(&WHITE)?;
        match kind {
            Kind::Availability => {
                let (top, bottom) = root.split_vertically(TALL / 2);
                availability_chart(&top, variant, runs)?;
                capacity_chart(&bottom, variant, runs)?;
            }
            Kind::FleetLoad | Kind::Latency => line_chart(&root, variant, runs, kind)?,
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The trigger as a dashed vertical line, and the moment the fleet was provisioned as a dotted
/// one, across `y`.
fn mark_times<'a, DB: DrawingBackend + 'a, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    variant: Variant,
    runs: &[&RunResult],
    y: (Y::ValueType, Y::ValueType),
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
    Y: Ranged,
    Y::ValueType: Clone + 'static,
{
    let Some(r) = runs.first() else {
        return Ok(());
    };
    let t = r.trigger_s;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(t, y.0.clone()), (t, y.1.clone())],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label(format!("trigger: {}", variant.scenario.name()))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some(p) = &r.provisioning {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(p.at_s, y.0.clone()), (p.at_s, y.1.clone())],
                2,
                3,
                grey.stroke_width(1),
            ))?
            .label("fleet provisioned")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    }
    Ok(())
}

fn t_max(runs: &[&RunResult]) -> f64 {
    runs.iter()
        .flat_map(|r| r.samples.iter().map(|s| s.t))
        .fold(1.0, f64::max)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .label_font(("sans-serif", 13))
        .position(position)
        .draw()?;
    Ok(())
}

/// Availability (successful / offered requests, by scheduled time) of each mode over time.
fn availability_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    variant: Variant,
    runs: &[&RunResult],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: availability (requests served / offered)",
                variant.name()
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max(runs), 0.0..105.0)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("availability, %")
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.availability.iter().map(|s| (s.t, 100.0 * s.availability)),
                color.stroke_width(2),
            ))?
            .label(format!(
                "{}: {:.2}% before, {:.2}% after",
                r.mode,
                100.0 * r.availability_before,
                100.0 * r.availability_after
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    mark_times(&mut chart, variant, runs, (0.0, 105.0))?;
    legend(&mut chart, SeriesLabelPosition::LowerLeft)
}

/// Fleet lookups offered (served and shed) by each mode against its capacity, on a log scale:
/// classic's capacity is a small fraction of constant work's.
fn capacity_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    variant: Variant,
    runs: &[&RunResult],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let y_max = runs
        .iter()
        .flat_map(|r| {
            r.samples.iter().flat_map(|s| {
                [
                    s.fleet_lookups_per_s,
                    s.capacity_lookups_per_s.unwrap_or(0.0),
                ]
            })
        })
        .fold(10.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: fleet lookups offered vs capacity", variant.name()),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max(runs), (1.0..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("lookups / s (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.samples
                    .iter()
                    .map(|s| (s.t, s.fleet_lookups_per_s.max(1.0))),
                color.stroke_width(2),
            ))?
            .label(format!("{}: offered (served + shed)", r.mode))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let capacity: Vec<(f64, f64)> = r
            .samples
            .iter()
            .filter_map(|s| s.capacity_lookups_per_s.map(|c| (s.t, c.max(1.0))))
            .collect();
        if !capacity.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(capacity, 8, 5, color.stroke_width(2)))?
                .label(format!(
                    "{}: capacity {:.0}/s",
                    r.mode,
                    r.provisioned_lookups_per_s.unwrap_or(0.0)
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(2))
                });
        }
    }
    mark_times(&mut chart, variant, runs, (1.0, y_max))?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    variant: Variant,
    runs: &[&RunResult],
    kind: Kind,
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let value = |s: &Sample| match kind {
        Kind::Latency => s.p99_ms,
        Kind::FleetLoad | Kind::Availability => s.fleet_lookups_per_s,
    };
    let y_max = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(value))
        .fold(1.0, f64::max)
        * 1.1;
    let (title, y_label) = match kind {
        Kind::Latency => (
            format!("{}: router latency p99", variant.name()),
            "p99 latency, ms",
        ),
        Kind::FleetLoad | Kind::Availability => (
            format!("{}: fleet load (lookups offered)", variant.name()),
            "fleet lookups / s",
        ),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max(runs), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.samples.iter().map(|s| (s.t, value(s))),
                color.stroke_width(2),
            ))?
            .label(format!("{} (amplification {:.2})", r.mode, r.amplification))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    mark_times(&mut chart, variant, runs, (0.0, y_max))?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn html_table(runs: &[&RunResult]) -> String {
    let mut t = String::from(
        "<table><tr><th>mode</th><th>steady lookups/s</th><th>capacity/s</th><th>peak offered/s</th><th>amplification</th>\
<th>availability before / after</th><th>shed/s after</th><th>goodput/s after</th><th>hit rate</th>\
<th>p50 / p99 / p999 ms after</th><th>failed requests</th><th>availability back after</th></tr>\n",
    );
    for r in runs {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td><b>{:.2}% / {:.2}%</b></td><td>{:.0}</td><td>{:.0}</td><td>{:.2}%</td><td>{:.2} / {:.2} / {:.2}</td><td>{}</td><td>{}</td></tr>",
            r.mode,
            r.steady_lookups_per_s,
            r.provisioned_lookups_per_s
                .map_or("-".into(), |c| format!("{c:.0}")),
            r.peak_lookups_per_s,
            r.amplification,
            100.0 * r.availability_before,
            100.0 * r.availability_after,
            r.shed_lookups_per_s,
            r.phases.after.goodput_per_s,
            100.0 * r.hit_rate,
            r.latency_after_ms.p50,
            r.latency_after_ms.p99,
            r.latency_after_ms.p999,
            r.errors,
            r.availability_recover_s
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
