//! SVG charts written by hand (no plotting crate): latency CDFs per mode,
//! grouped p50/p99 bars, throughput bars. Plain SVG 1.1 that browsers and
//! GitHub render.

use std::fmt::Write;

use super::options::{Mode, Placement, Workload};
use super::report::Report;

const W: f64 = 760.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// One bar: mode, median, min, max.
pub type Bar = (Mode, f64, f64, f64);
/// A labelled group of bars.
pub type Group = (String, Vec<Bar>);

pub fn color(m: Mode) -> &'static str {
    match m {
        Mode::Direct => "#555555",
        Mode::Iptables => "#d62728",
        Mode::Accelerate => "#ff7f0e",
        Mode::Intercept => "#2ca02c",
        Mode::InterceptNoSplice => "#9467bd",
        Mode::Bypass => "#1f77b4",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(o: &mut String, title: &str) {
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(title)
    );
}

fn legend(o: &mut String, entries: &[(String, &str)]) {
    for (i, (label, col)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let x = W - RIGHT + 15.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="{}" width="14" height="10" fill="{col}"/><text x="{}" y="{}">{}</text>"#,
            y - 9.0,
            x + 20.0,
            y,
            esc(label)
        );
    }
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Latency distribution per mode (the CDF with its axes swapped and the
/// tail stretched, as HdrHistogram plots it): x = percentile on a
/// log(1/(1-q)) scale (50, 90, 99, 99.9, 99.99), y = latency, log scale.
pub fn cdf(r: &Report, w: Workload, p: Placement) -> Option<String> {
    let curves: Vec<_> = r
        .cdfs
        .iter()
        .filter(|c| c.workload == w && c.placement == p && !c.points.is_empty())
        .collect();
    if curves.is_empty() {
        return None;
    }
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|pt| pt.0));
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let ly0 = lo.max(0.1).log10().floor();
    let ly1 = hi.max(1.0).log10().ceil().max(ly0 + 1.0);
    let qmax = 0.9999;
    let tx = |q: f64| (1.0 / (1.0 - q.min(qmax))).log10();
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |q: f64| LEFT + tx(q) / tx(qmax) * pw;
    let y = |v: f64| TOP + ph - (v.max(0.1).log10() - ly0) / (ly1 - ly0) * ph;
    let mut o = String::new();
    header(
        &mut o,
        &format!("Latency distribution: {w}, {p} (all measured rounds)"),
    );
    for (q, label) in [
        (0.0, "0"),
        (0.5, "50"),
        (0.9, "90"),
        (0.99, "99"),
        (0.999, "99.9"),
        (0.9999, "99.99"),
    ] {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(q),
            TOP + ph,
            TOP + ph + 16.0,
            label
        );
    }
    let mut e = ly0;
    while e <= ly1 + 1e-9 {
        let v = 10f64.powf(e);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            LEFT + pw,
            LEFT - 6.0,
            y(v) + 4.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        );
        e += 1.0;
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (tail stretched)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (µs, log scale)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let mut leg = Vec::new();
    for c in &curves {
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|pt| pt.1 <= qmax)
            .map(|&(v, q)| format!("{:.1},{:.1}", x(q), y(v)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            color(c.mode),
            pts.join(" ")
        );
        leg.push((c.mode.to_string(), color(c.mode)));
    }
    legend(&mut o, &leg);
    o.push_str("</svg>\n");
    Some(o)
}

/// Grouped bars: one group per label, one bar per mode, with the min-max
/// range of the rounds as a whisker.
pub fn bars(title: &str, unit: &str, groups: &[Group]) -> Option<String> {
    let groups: Vec<_> = groups.iter().filter(|g| !g.1.is_empty()).collect();
    if groups.is_empty() {
        return None;
    }
    let vmax = nice_max(
        groups
            .iter()
            .flat_map(|g| g.1.iter().map(|b| b.3))
            .fold(0.0, f64::max),
    );
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let y = |v: f64| TOP + ph - v / vmax * ph;
    let mut o = String::new();
    header(&mut o, title);
    for i in 0..=5 {
        let v = vmax * f64::from(i) / 5.0;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            y(v),
            LEFT + pw,
            LEFT - 6.0,
            y(v) + 4.0,
            if vmax >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(unit)
    );
    let gw = pw / groups.len() as f64;
    let mut modes: Vec<Mode> = Vec::new();
    for (gi, (label, bars)) in groups.iter().map(|g| (&g.0, &g.1)).enumerate() {
        let bw = (gw * 0.8) / bars.len() as f64;
        let x0 = LEFT + gi as f64 * gw + gw * 0.1;
        for (bi, &(m, med, lo, hi)) in bars.iter().enumerate() {
            if !modes.contains(&m) {
                modes.push(m);
            }
            let bx = x0 + bi as f64 * bw;
            let _ = writeln!(
                o,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{m}: {med:.2} {}</title></rect>"#,
                y(med),
                bw * 0.9,
                (TOP + ph - y(med)).max(0.0),
                color(m),
                esc(unit)
            );
            let cx = bx + bw * 0.45;
            let _ = writeln!(
                o,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                y(lo),
                y(hi)
            );
        }
        // One word per line under the group.
        for (li, word) in label.split(' ').enumerate() {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x0 + gw * 0.4,
                TOP + ph + 16.0 + li as f64 * 14.0,
                esc(word)
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#,
        TOP + ph,
        LEFT + pw
    );
    let _ = writeln!(
        o,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">bars: median of rounds; whiskers: min–max</text>"##,
        LEFT + pw / 2.0,
        H - 8.0
    );
    let leg: Vec<(String, &str)> = modes.iter().map(|m| (m.to_string(), color(*m))).collect();
    legend(&mut o, &leg);
    o.push_str("</svg>\n");
    Some(o)
}

/// Every chart of a report: (file name, SVG text).
pub fn charts(r: &Report) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in &r.cdfs {
        let name = format!("cdf-{}-{}.svg", c.workload, c.placement);
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Some(svg) = cdf(r, c.workload, c.placement) {
            out.push((name, svg));
        }
    }
    for p in Placement::ALL {
        for (q, name, f) in [
            (
                "p50",
                "p50",
                (|s: &super::report::Summary| s.p50_us)
                    as fn(&super::report::Summary) -> Option<super::stats::Stat>,
            ),
            ("p99", "p99", |s: &super::report::Summary| s.p99_us),
        ] {
            let g: Vec<Group> = [
                Workload::Rtt64,
                Workload::Rtt1k,
                Workload::Rtt16k,
                Workload::Http,
            ]
            .into_iter()
            .map(|w| {
                let bars = r
                    .summaries
                    .iter()
                    .filter(|s| s.workload == w && s.placement == p && s.rounds_ok > 0)
                    .filter_map(|s| f(s).map(|st| (s.mode, st.median, st.min, st.max)))
                    .collect();
                (w.to_string(), bars)
            })
            .collect();
            if let Some(svg) = bars(&format!("{q} latency per mode, {p}"), "µs", &g) {
                out.push((format!("latency-{name}-{p}.svg"), svg));
            }
        }
    }
    let pick = |ws: &[Workload], q: fn(&super::report::Summary) -> Option<super::stats::Stat>| {
        let mut g = Vec::new();
        for p in Placement::ALL {
            for &w in ws {
                let bars: Vec<_> = r
                    .summaries
                    .iter()
                    .filter(|s| s.workload == w && s.placement == p && s.rounds_ok > 0)
                    .filter_map(|s| q(s).map(|st| (s.mode, st.median, st.min, st.max)))
                    .collect();
                if !bars.is_empty() {
                    g.push((format!("{w} {}", p.name().replace("-node", "")), bars));
                }
            }
        }
        g
    };
    if let Some(s) = bars(
        "Bulk throughput (one and four streams)",
        "Gbit/s",
        &pick(&[Workload::Bulk1, Workload::Bulk4], |s| s.gbit_per_s),
    ) {
        out.push(("throughput.svg".into(), s));
    }
    if let Some(s) = bars(
        "Maximum HTTP request rate (closed loop)",
        "requests/s",
        &pick(&[Workload::HttpMax], |s| s.ops_per_s),
    ) {
        out.push(("rate-http-max.svg".into(), s));
    }
    if let Some(s) = bars(
        "Connection rate (connect + 64 B exchange + close)",
        "connections/s",
        &pick(&[Workload::Connect], |s| s.ops_per_s),
    ) {
        out.push(("rate-connect.svg".into(), s));
    }
    out
}
