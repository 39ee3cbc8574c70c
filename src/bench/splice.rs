//! Issue 2's benchmark: RTT of 64 B and 1 KiB ping-pong between two TCP
//! sockets in one pod (loopback) and between two pods on the node (bridge),
//! spliced (pods registered, sockmap redirect) vs not spliced (identical
//! pods, not registered), the two interleaved in one run, everything pinned
//! to one CPU. No sidecars: this isolates what splicing saves per hop.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::error::{BenchError, Result};
use super::options::online_cpus;
use super::progress::Progress;
use super::servers::{ServerSet, ECHO_PORT};
use super::stats::{Percentiles, Stat};
use super::{interrupt, load, report, svg};
use crate::pods::{PodMode, PodSpec};
use crate::sim::{Node, NodeOptions, Pod};

#[derive(Debug, Clone, Serialize)]
pub struct SpliceOptions {
    pub rounds: u32,
    pub warmup_rounds: u32,
    pub step_ms: u64,
    pub cpu: Option<usize>,
    pub out: PathBuf,
}

impl Default for SpliceOptions {
    fn default() -> Self {
        Self {
            rounds: 7,
            warmup_rounds: 1,
            step_ms: 1000,
            cpu: Some(online_cpus().saturating_sub(1)),
            out: PathBuf::from("target/meshlane-bench/splice"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path2 {
    /// Two sockets in one pod over 127.0.0.1.
    Loopback,
    /// Two pods on the node's bridge.
    PodToPod,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpliceRow {
    pub path: Path2,
    pub size: usize,
    pub spliced: bool,
    pub p50_us: Option<Stat>,
    pub p99_us: Option<Stat>,
    pub rounds: Vec<Percentiles>,
    pub messages_spliced: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpliceReport {
    pub date_utc: String,
    pub kernel: String,
    pub command: String,
    pub options: SpliceOptions,
    pub rows: Vec<SpliceRow>,
    /// (path, size, spliced p50 / unspliced p50, target met)
    pub ratios: Vec<(Path2, usize, Option<f64>, Option<bool>)>,
}

struct Bed {
    _servers: Vec<ServerSet>,
    spliced: (Pod, Pod),
    plain: (Pod, Pod),
    node: Node,
}

fn build(cpu: Option<usize>) -> Result<Bed> {
    let mut node = Node::new(NodeOptions {
        intercept: false,
        ..Default::default()
    })
    .map_err(BenchError::setup_anyhow(
        "node (cgroup, pin root, data path)",
    ))?;
    let mut pod = |n: &str| {
        node.pod(n)
            .map_err(BenchError::setup_anyhow(format!("pod {n}")))
    };
    let spliced = (pod("spl-a")?, pod("spl-b")?);
    let plain = (pod("tcp-a")?, pod("tcp-b")?);
    for p in [&spliced.0, &spliced.1] {
        let mut spec = PodSpec::istio(p.name.clone());
        spec.mode = PodMode::Accelerate;
        // The bench's own client and server are the spliced ends.
        crate::sim::as_own_proxy(&mut spec);
        node.register(p, &spec)
            .map_err(BenchError::setup_anyhow(format!("registering {}", p.name)))?;
    }
    let servers = vec![
        ServerSet::start(&spliced.0, cpu)?,
        ServerSet::start(&plain.0, cpu)?,
    ];
    Ok(Bed {
        _servers: servers,
        spliced,
        plain,
        node,
    })
}

fn route(bed: &Bed, path: Path2, spliced: bool) -> (&Pod, SocketAddr) {
    let (a, b) = if spliced { &bed.spliced } else { &bed.plain };
    match path {
        Path2::Loopback => (a, SocketAddr::from(([127, 0, 0, 1], ECHO_PORT))),
        Path2::PodToPod => (b, SocketAddr::from((a.ip4, ECHO_PORT))),
    }
}

/// Runs the benchmark; nothing it made is left when it returns.
pub fn run(o: &SpliceOptions) -> Result<SpliceReport> {
    if o.rounds == 0 {
        return Err(BenchError::Usage("rounds must be at least 1".into()));
    }
    interrupt::install();
    let cases: Vec<(Path2, usize)> = [Path2::Loopback, Path2::PodToPod]
        .into_iter()
        .flat_map(|p| [64usize, 1024].into_iter().map(move |s| (p, s)))
        .collect();
    let mut rows: Vec<SpliceRow> = cases
        .iter()
        .flat_map(|&(path, size)| {
            [false, true].into_iter().map(move |spliced| SpliceRow {
                path,
                size,
                spliced,
                p50_us: None,
                p99_us: None,
                rounds: Vec::new(),
                messages_spliced: 0,
                errors: Vec::new(),
            })
        })
        .collect();
    let bed = build(o.cpu)?;
    let total = u64::from(o.rounds + o.warmup_rounds) * rows.len() as u64;
    let mut progress = Progress::new(total, false);
    let dur = Duration::from_millis(o.step_ms);
    for round in 0..o.warmup_rounds + o.rounds {
        for row in rows.iter_mut() {
            interrupt::check()?;
            progress.step(&format!(
                "round {} {:?} {} B {}",
                round + 1,
                row.path,
                row.size,
                if row.spliced {
                    "spliced"
                } else {
                    "not spliced"
                }
            ));
            let (pod, addr) = route(&bed, row.path, row.spliced);
            let before = bed.node.counter("messages_spliced");
            let (size, cpu) = (row.size, o.cpu);
            let res = pod
                .run(move || load::rtt(addr, size, dur, cpu))
                .map_err(|e| BenchError::workload("entering pod", format!("{e:#}")))
                .and_then(|r| r);
            let spliced_now = bed.node.counter("messages_spliced") - before;
            interrupt::check()?;
            if round < o.warmup_rounds {
                continue;
            }
            row.messages_spliced += spliced_now;
            match res {
                Ok(m) => {
                    if let Some(h) = m.hist {
                        row.rounds.push(Percentiles::of(&h));
                    }
                }
                Err(e) => row.errors.push(e.to_string()),
            }
        }
    }
    progress.finish();
    drop(bed);
    for row in rows.iter_mut() {
        let p50: Vec<f64> = row.rounds.iter().map(|p| p.p50).collect();
        let p99: Vec<f64> = row.rounds.iter().map(|p| p.p99).collect();
        row.p50_us = Stat::of(&p50);
        row.p99_us = Stat::of(&p99);
    }
    let ratios = cases
        .iter()
        .map(|&(path, size)| {
            let p50 = |spliced: bool| {
                rows.iter()
                    .find(|r| r.path == path && r.size == size && r.spliced == spliced)
                    .and_then(|r| r.p50_us)
                    .map(|s| s.median)
            };
            let r = p50(true).zip(p50(false)).map(|(s, u)| s / u);
            (path, size, r, r.map(|r| r <= 0.8))
        })
        .collect();
    Ok(SpliceReport {
        date_utc: report::utc_now(),
        kernel: report::kernel(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        options: o.clone(),
        rows,
        ratios,
    })
}

fn st(s: Option<Stat>) -> String {
    s.map_or("-".into(), |s| {
        format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max)
    })
}

fn path_name(p: Path2) -> &'static str {
    match p {
        Path2::Loopback => "loopback (one pod)",
        Path2::PodToPod => "pod to pod (bridge)",
    }
}

pub fn markdown(r: &SpliceReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "## meshlane splice bench: {}\n", r.date_utc);
    let _ = writeln!(o, "- command: `{}`", r.command);
    let _ = writeln!(
        o,
        "- kernel {}; {} measured rounds after {} warm-up, {} ms per step, spliced and not spliced interleaved; {}",
        r.kernel,
        r.options.rounds,
        r.options.warmup_rounds,
        r.options.step_ms,
        match r.options.cpu {
            Some(c) => format!("client and server pinned to CPU {c}"),
            None => "no pinning".into(),
        }
    );
    let _ = writeln!(o, "- RTT in µs, median of rounds [min–max]\n");
    let _ = writeln!(
        o,
        "| path | size | spliced | p50 | p99 | messages spliced | errors |\n|---|---|---|---|---|---|---|"
    );
    for row in &r.rows {
        let _ = writeln!(
            o,
            "| {} | {} B | {} | {} | {} | {} | {} |",
            path_name(row.path),
            row.size,
            if row.spliced { "yes" } else { "no" },
            st(row.p50_us),
            st(row.p99_us),
            row.messages_spliced,
            row.errors.first().map_or("", String::as_str)
        );
    }
    let _ = writeln!(
        o,
        "\n| path | size | spliced p50 / not spliced p50 | target <= 0.80 |\n|---|---|---|---|"
    );
    for (p, s, ratio, met) in &r.ratios {
        let _ = writeln!(
            o,
            "| {} | {} B | {} | {} |",
            path_name(*p),
            s,
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            }
        );
    }
    o
}

/// p50 bars: spliced vs not, per path and size.
pub fn chart(r: &SpliceReport) -> Option<String> {
    use super::options::Mode;
    let groups: Vec<svg::Group> = r
        .ratios
        .iter()
        .map(|&(p, s, _, _)| {
            let bars = [false, true]
                .iter()
                .filter_map(|&sp| {
                    let row = r
                        .rows
                        .iter()
                        .find(|x| x.path == p && x.size == s && x.spliced == sp)?;
                    let st = row.p50_us?;
                    // Colours: not spliced as "direct" grey, spliced as "accelerate".
                    let m = if sp { Mode::Accelerate } else { Mode::Direct };
                    Some((m, st.median, st.min, st.max))
                })
                .collect();
            (
                format!(
                    "{} {} B",
                    if p == Path2::Loopback {
                        "loopback"
                    } else {
                        "pod-pod"
                    },
                    s
                ),
                bars,
            )
        })
        .collect();
    svg::bars(
        "Ping-pong p50 RTT: not spliced (grey) vs spliced (orange)",
        "µs",
        &groups,
    )
    .map(|s| {
        s.replace(">direct<", ">not spliced<")
            .replace(">accelerate<", ">spliced<")
    })
}

/// Writes splice.json, splice.md and splice-p50.svg into `dir`.
pub fn write(r: &SpliceReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(BenchError::io(format!("creating {}", dir.display())))?;
    let json = serde_json::to_string_pretty(r).map_err(|e| BenchError::workload("JSON", e))?;
    let files = [
        ("splice.json", Some(json)),
        ("splice.md", Some(markdown(r))),
        ("splice-p50.svg", chart(r)),
    ];
    for (name, text) in files {
        if let Some(text) = text {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(BenchError::io(format!("writing {}", p.display())))?;
        }
    }
    Ok(())
}
