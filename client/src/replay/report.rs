//! The replay report: one self-contained HTML page (inline CSS and SVG, no
//! script), so it can be mailed, archived or opened offline as it is.

use std::fmt::Write as _;

use super::stats::{Bucket, Summary, bucket_width, timeline};
use super::{Record, RunInfo};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line series.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, Option<f64>)>,
}

/// A line chart as an SVG element: axes with ticks, one polyline per series
/// (gaps where a slice had no value), a legend, and an optional dashed
/// reference line (the target rate).
pub fn line_chart(
    title: &str,
    y_label: &str,
    x_max: f64,
    series: &[Series],
    reference: Option<(&str, f64)>,
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 40.0;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(x_max, f64::max).max(1e-9);
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1));
    let mut y_max = ys.fold(0.0f64, f64::max);
    if let Some((_, r)) = reference {
        y_max = y_max.max(r);
    }
    let y_step = nice_step(y_max * 1.05);
    let y_top = (y_max * 1.05 / y_step).ceil().max(1.0) * y_step;
    let x_step = nice_step(x_max);
    let px = |x: f64| LEFT + x / x_max * pw;
    let py = |y: f64| TOP + ph - y / y_top * ph;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title>"##,
        t = esc(title)
    );
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="18" class="title">{}</text>"##,
        esc(title)
    );
    // Horizontal grid and y ticks.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let yy = py(y);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            fmt_tick(y)
        );
        y += y_step;
    }
    // X ticks (seconds).
    let mut x = 0.0;
    while x <= x_max + x_step / 100.0 {
        let xx = px(x);
        let _ = write!(
            svg,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" class="axis"/><text x="{xx:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 16.0,
            fmt_tick(x)
        );
        x += x_step;
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" class="axis"/><line x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" class="axis"/>"##,
        b = TOP + ph,
        r = LEFT + pw
    );
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">seconds since start</text><text x="14" y="{:.1}" class="label" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"##,
        LEFT + pw / 2.0,
        H - 4.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    if let Some((name, r)) = reference {
        let yy = py(r);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" class="reference"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT + pw - 4.0,
            yy - 4.0,
            esc(name)
        );
    }
    for s in series {
        // Split the line where a slice has no value rather than drawing
        // across the gap as if it had been measured.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (x, y) in &s.points {
            match (y, runs.last_mut()) {
                (Some(y), Some(run)) => run.push((px(*x), py(*y))),
                _ => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            if run.len() == 1 {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"##,
                    run[0].0, run[0].1, s.color
                );
            } else {
                let _ = write!(
                    svg,
                    r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"/>"##,
                    pts.join(" "),
                    s.color
                );
            }
        }
    }
    // Legend, top right.
    let mut lx = LEFT + pw - 110.0 * series.len() as f64;
    for s in series {
        let _ = write!(
            svg,
            r##"<rect x="{lx:.1}" y="8" width="12" height="12" fill="{}"/><text x="{:.1}" y="18" class="tick">{}</text>"##,
            s.color,
            lx + 16.0,
            esc(s.name)
        );
        lx += 110.0;
    }
    svg.push_str("</svg>");
    svg
}

/// The report page.
pub fn render(info: &RunInfo, summary: &Summary, records: &[Record]) -> String {
    let width = bucket_width(summary.elapsed, records.len());
    let buckets: Vec<Bucket> = timeline(records, summary.elapsed, width);
    let mid = |b: &Bucket| b.start + width / 2.0;
    let throughput = line_chart(
        &format!("Throughput (operations ended per second, {width} s slices)"),
        "operations / s",
        summary.elapsed.as_secs_f64(),
        &[Series {
            name: "ended",
            color: "#2b6cb0",
            points: buckets
                .iter()
                .map(|b| (mid(b), Some(b.throughput)))
                .collect(),
        }],
        info.rate.map(|r| ("target rate", r)),
    );
    let latency = line_chart(
        &format!("Latency percentiles ({width} s slices)"),
        "milliseconds",
        summary.elapsed.as_secs_f64(),
        &[
            Series {
                name: "p50",
                color: "#38a169",
                points: buckets.iter().map(|b| (mid(b), b.p50)).collect(),
            },
            Series {
                name: "p95",
                color: "#d69e2e",
                points: buckets.iter().map(|b| (mid(b), b.p95)).collect(),
            },
            Series {
                name: "p99",
                color: "#c53030",
                points: buckets.iter().map(|b| (mid(b), b.p99)).collect(),
            },
        ],
        None,
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |x| format!("{x:.1}"));
    let mut rows = String::new();
    let mut row = |name: &str, t: &super::stats::Tally| {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            t.ok,
            t.rejected,
            t.failed,
            ms(t.p(50.0)),
            ms(t.p(95.0)),
            ms(t.p(99.0)),
            ms(t.max())
        );
    };
    for (k, t) in &summary.by_kind {
        row(k.as_str(), t);
    }
    row("total", &summary.total);
    let mut failures = String::new();
    for (line, text, error) in summary.failures.iter().take(200) {
        let _ = write!(
            failures,
            "<li><b>line {line}</b> <code>{}</code><br>{}</li>",
            esc(text),
            esc(error)
        );
    }
    if summary.failures.len() > 200 {
        let _ = write!(
            failures,
            "<li>… and {} more</li>",
            summary.failures.len() - 200
        );
    }
    let failures = if failures.is_empty() {
        "<p>None.</p>".to_owned()
    } else {
        format!("<ol class=\"failures\">{failures}</ol>")
    };
    let refused = if summary.rejections.is_empty() {
        "none".to_owned()
    } else {
        summary
            .rejections
            .iter()
            .map(|(k, n)| format!("{} ×{n}", esc(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = info.rate.map_or_else(
        || "as fast as possible".to_owned(),
        |r| format!("{r} ops/s"),
    );
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bibliomq replay — {file}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 820px; color: #1a202c; padding: 0 1rem; }}
h1 {{ font-size: 1.4rem; margin-bottom: .2rem; }}
.meta {{ color: #4a5568; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: .25rem .7rem; text-align: right; border-bottom: 1px solid #e2e8f0; }}
th:first-child {{ text-align: left; }}
thead th {{ border-bottom: 2px solid #a0aec0; }}
svg {{ width: 100%; height: auto; margin: .5rem 0 1rem; }}
svg .title {{ font-size: 13px; font-weight: 600; fill: #2d3748; }}
svg .tick {{ font-size: 11px; fill: #4a5568; }}
svg .label {{ font-size: 11px; fill: #4a5568; }}
svg .grid {{ stroke: #edf2f7; }}
svg .axis {{ stroke: #a0aec0; }}
svg .reference {{ stroke: #718096; stroke-dasharray: 5 4; }}
.failures li {{ margin-bottom: .4rem; }}
code {{ background: #f7fafc; padding: 0 .2rem; }}
</style></head>
<body>
<h1>Replay of <code>{file}</code></h1>
<p class="meta">{started} · API {api} · concurrency {concurrency} · rate {rate} · {wait}</p>
<p><b>{ops}</b> operations in <b>{elapsed:.2} s</b>: <b>{throughput:.1} ops/s</b>; {failed} failed; rejected: {refused}.</p>
<table>
<thead><tr><th>kind</th><th>ok</th><th>rejected</th><th>failed</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr></thead>
<tbody>{rows}</tbody>
</table>
{throughput_chart}
{latency_chart}
<p class="meta">Latency runs from sending a request to its answer{latency_note}. Rejected means a library rule or the catalogue said no (404, 409, a rejected renewal or return): the system worked. Failed means a line that did not parse, a transport error, a 5xx, or a 4xx that says the line itself is wrong.</p>
<h2>Failed lines</h2>
{failures}
</body></html>
"#,
        file = esc(&info.file),
        started = esc(&info.started),
        api = esc(&info.api),
        concurrency = info.concurrency,
        rate = rate,
        wait = if info.wait {
            "waiting for outcomes"
        } else {
            "not waiting for outcomes"
        },
        ops = summary.total.total(),
        elapsed = summary.elapsed.as_secs_f64(),
        throughput = summary.throughput(),
        failed = summary.failed(),
        refused = refused,
        rows = rows,
        throughput_chart = throughput,
        latency_chart = latency,
        latency_note = if info.wait {
            " (with --wait, to the applied or rejected outcome)"
        } else {
            ""
        },
        failures = failures,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.3), 0.1);
    }

    #[test]
    fn a_chart_is_an_svg_with_its_series_and_reference() {
        let svg = line_chart(
            "t<1>",
            "ops",
            4.0,
            &[Series {
                name: "a",
                color: "#000",
                points: vec![
                    (0.5, Some(1.0)),
                    (1.5, None),
                    (2.5, Some(3.0)),
                    (3.5, Some(2.0)),
                ],
            }],
            Some(("target", 4.0)),
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("t&lt;1&gt;"));
        assert!(svg.contains("<circle"), "a lone point is drawn as a dot");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("class=\"reference\""));
    }
}
