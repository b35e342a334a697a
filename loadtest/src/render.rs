//! The human summary and the self-contained HTML report (inline SVG, no scripts, no network).

use std::fmt::Write as _;

use crate::stats::{Percentiles, Report, SeriesPoint};

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} µs  (n={})",
        p.p50, p.p90, p.p99, p.p999, p.max, p.count
    )
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let l = &r.load;
    let pace = match (l.pps_per_flow, l.window) {
        (Some(pps), _) => format!("{pps} pps per flow"),
        (None, Some(w)) => format!("flood, window {w} per flow"),
        _ => "flood".into(),
    };
    let _ = writeln!(
        s,
        "{} {} → {}: {} flows, {pace}, {} B payload, {} thread(s)",
        r.mode, r.protocol, r.target, l.flows, l.payload_bytes, l.threads
    );
    if let Some(setup) = &r.setup {
        let _ = writeln!(
            s,
            "setup      {}/{} ok in {:.2} s ({:.0}/s); {} latency {}",
            setup.succeeded,
            setup.requested,
            setup.seconds,
            setup.per_second,
            if r.mode == "signal" {
                "connect→welcome"
            } else {
                "allocate"
            },
            pct(&setup.latency_us)
        );
        for (k, v) in &setup.errors {
            let _ = writeln!(s, "           failed: {k} ×{v}");
        }
    }
    let t = &r.traffic;
    let _ = writeln!(
        s,
        "{}    sent {}  received {}  lost {} ({:.3} %)  send errors {}  over {:.2} s",
        if r.mode == "signal" {
            "messages"
        } else {
            "packets "
        },
        t.sent,
        t.received,
        t.lost,
        t.loss_ratio * 100.0,
        t.send_errors,
        t.seconds
    );
    let _ = writeln!(
        s,
        "rate       sent {}/s  received {}/s",
        si(t.sent_per_second),
        si(t.received_per_second)
    );
    if let (Some(to_peer), Some(to_client)) = (t.relayed_to_peer, t.relayed_to_client) {
        let _ = writeln!(
            s,
            "relayed    to peer {to_peer}  to client {to_client}  = {}/s",
            si(t.relayed_per_second.unwrap_or(0.0))
        );
    }
    let _ = writeln!(s, "latency    {}", pct(&t.latency_us));
    if let Some(c) = &t.control {
        let _ = writeln!(
            s,
            "control    {} refreshes ({} failed), churn: {} released ({} failed), {} re-allocated ({} failed)",
            c.refreshes,
            c.refresh_failures,
            c.released,
            c.release_failures,
            c.reopened,
            c.reopen_failures
        );
        for (k, v) in &c.errors {
            let _ = writeln!(s, "           error {k} ×{v}");
        }
    }
    if let Some(sig) = &r.signal {
        let _ = writeln!(
            s,
            "signal     {} pairs, {} negotiated, {} connections held; watch→answer {}",
            sig.pairs,
            sig.negotiated,
            sig.connections_held,
            pct(&sig.watch_to_answer_us)
        );
        for (k, v) in &sig.errors {
            let _ = writeln!(s, "           error {k} ×{v}");
        }
    }
    if let Some(sv) = &r.server {
        let per = match (sv.relayed_per_cpu_second, sv.responses_per_cpu_second) {
            (Some(x), _) if r.mode == "signal" => {
                format!("{} relayed messages per CPU-second", si(x))
            }
            (Some(x), _) => format!("{} relayed packets per CPU-second", si(x)),
            (None, Some(x)) => format!("{} responses per CPU-second", si(x)),
            _ => "no work per CPU-second (CPU time too small to measure)".into(),
        };
        let _ = writeln!(
            s,
            "server     pid {}: {:.2} CPU-s ({:.2} cores busy), {per}",
            sv.pid, sv.cpu_seconds, sv.cores_busy
        );
        if let (Some(b), Some(a)) = (sv.rss_kb_before, sv.rss_kb_after) {
            let per_flow = sv
                .rss_bytes_per_flow
                .map(|x| {
                    let per = if r.mode == "signal" {
                        "connection"
                    } else {
                        "allocation"
                    };
                    format!(", {x:.0} B per {per}")
                })
                .unwrap_or_default();
            let _ = writeln!(s, "           RSS {b} kB → {a} kB{per_flow}");
        }
    }
    if let Some(k) = &r.kernel_udp {
        let _ = writeln!(
            s,
            "kernel     UDP RcvbufErrors +{}  SndbufErrors +{}  InErrors +{}",
            k.rcvbuf_errors, k.sndbuf_errors, k.in_errors
        );
    }
    if let Some(c) = r.load_cpu_seconds {
        let _ = writeln!(
            s,
            "load tool  {c:.2} CPU-s ({:.2} cores busy)",
            c / t.seconds.max(1e-9)
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One plotted series: name, colour, points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of one or more series over a shared x axis.
fn svg_lines(title: &str, x_label: &str, y_label: &str, series: &[Line<'_>]) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 280.0, 70.0, 20.0, 30.0, 40.0);
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0_f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    if x0 > x1 {
        out.push_str(r#"<text x="320" y="140" text-anchor="middle">no data</text></svg>"#);
        return out;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.08;
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - y / y1 * (h - mt - mb);
    let _ = write!(
        out,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    for i in 0..=4 {
        let yv = y1 * i as f64 / 4.0;
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            w - mr,
            ml - 4.0,
            py(yv) + 4.0,
            fmt_num(yv),
            px(xv),
            h - mb + 14.0,
            fmt_num(xv),
            y = py(yv),
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        (ml + w - mr) / 2.0,
        h - 6.0,
        esc(x_label),
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    for (k, (name, color, data)) in series.iter().enumerate() {
        let path: Vec<String> = data
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/><text x="{}" y="{}" fill="{color}">{}</text>"#,
            path.join(" "),
            ml + 8.0,
            mt + 14.0 + 14.0 * k as f64,
            esc(name)
        );
    }
    out.push_str("</svg>");
    out
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn series_of(points: &[SeriesPoint], f: impl Fn(&SeriesPoint) -> Option<f64>) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|p| f(p).map(|y| (p.t_s, y)))
        .collect()
}

pub fn html(r: &Report) -> String {
    let json = serde_json::to_string_pretty(r).unwrap_or_default();
    let throughput = svg_lines(
        "Throughput",
        "seconds",
        "packets per second",
        &[
            (
                "sent",
                "#1f77b4",
                series_of(&r.series, |p| Some(p.sent_pps)),
            ),
            (
                "received",
                "#2ca02c",
                series_of(&r.series, |p| Some(p.received_pps)),
            ),
        ],
    );
    let latency_time = svg_lines(
        "Latency over time",
        "seconds",
        "µs",
        &[
            ("p50", "#1f77b4", series_of(&r.series, |p| p.p50_us)),
            ("p99", "#d62728", series_of(&r.series, |p| p.p99_us)),
        ],
    );
    // Percentile axis as "nines": x = -log10(1 - q), so p90 = 1, p99 = 2, p99.9 = 3.
    let curve: Vec<(f64, f64)> = r
        .latency_curve
        .iter()
        .filter(|(q, _)| *q < 100.0)
        .map(|(q, us)| (-(1.0 - q / 100.0).log10(), *us))
        .collect();
    let latency_dist = svg_lines(
        "Latency distribution (x: nines — 1 = p90, 2 = p99, 3 = p99.9)",
        "nines",
        "µs",
        &[("latency", "#9467bd", curve)],
    );
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>iceway-loadtest: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>
</head><body>
<h1>iceway-loadtest: {title}</h1>
<pre>{summary}</pre>
{throughput}
{latency_time}
{latency_dist}
<details><summary>Full report (JSON)</summary><pre>{json}</pre></details>
</body></html>
"#,
        title = esc(&format!("{} {} → {}", r.mode, r.protocol, r.target)),
        summary = esc(&human(r)),
        json = esc(&json),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_self_contained() {
        let mut r = Report {
            mode: "turn".into(),
            protocol: "turn-channel".into(),
            target: "127.0.0.1:3478".into(),
            ..Default::default()
        };
        r.series = vec![
            SeriesPoint {
                t_s: 0.1,
                sent_pps: 10.0,
                received_pps: 9.0,
                p50_us: Some(50.0),
                p99_us: Some(90.0),
            },
            SeriesPoint {
                t_s: 0.2,
                sent_pps: 12.0,
                received_pps: 12.0,
                p50_us: None,
                p99_us: None,
            },
        ];
        r.latency_curve = vec![(0.0, 10.0), (50.0, 20.0), (99.0, 80.0), (100.0, 100.0)];
        let page = html(&r);
        assert!(page.contains("<svg"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src="));
        assert!(!page.contains("href="));
        assert!(page.contains("polyline"));
        assert!(human(&r).contains("turn turn-channel"));
    }
}
