//! Runs the measurement plan: warm-up rounds (discarded) then measured
//! rounds; inside a round every (workload, placement) cell runs each mode
//! back to back in round-robin order (A B C D, A B C D, ...), so slow drifts
//! of a noisy machine hit every mode alike. Each step records latency
//! percentiles, rates, CPU per 1,000 requests (HTTP steps) and counter
//! deltas that prove which path the traffic took (sidecar sessions, spliced
//! messages, redirected connects, steered inbound connections).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::error::{BenchError, Result};
use super::interrupt;
use super::load::{self, Measured};
use super::options::{Mode, Options, Placement, Workload};
use super::progress::Progress;
use super::stats::Percentiles;
use super::testbed::Testbed;
use crate::sim::{CpuSample, CpuSource};

/// CPU time per 1,000 requests, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct CpuPer1k {
    /// Every process of the simulated nodes (cgroup cpu.stat): load
    /// generator, servers, sidecars, and kernel work done in their context.
    pub total_ms: f64,
    /// The sidecar proxies of the mode (user + kernel time of their threads).
    pub sidecars_ms: f64,
    /// total minus sidecars: client, server and their kernel time.
    pub apps_ms: f64,
    /// meshlane's BPF programs (kernel BPF stats run time, both nodes).
    pub bpf_ms: f64,
    /// Softirq time of the pinned CPU (whole machine, 10 ms ticks).
    pub softirq_ms: Option<f64>,
}

/// One step: one mode, one cell, one round.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub round: u32,
    pub warmup: bool,
    /// A costing round's step (BPF statistics on): only its BPF columns
    /// are reported.
    pub costing: bool,
    pub workload: Workload,
    pub placement: Placement,
    pub mode: Mode,
    pub error: Option<String>,
    pub latency_us: Option<Percentiles>,
    pub ops: u64,
    pub ops_per_s: f64,
    pub gbit_per_s: Option<f64>,
    pub missed_slots: u64,
    pub cpu_per_1k: Option<CpuPer1k>,
    /// Deltas of data-path counters and sidecar sessions during the step.
    pub counters: BTreeMap<String, u64>,
    /// Connection steps: what meshlane's programs cost per operation, from
    /// the kernel's BPF run-time statistics (both nodes).
    pub hooks: Option<HookCost>,
}

impl StepRecord {
    /// A measured round's step: its rates, latencies and CPU are reported.
    pub fn is_measured(&self) -> bool {
        !self.warmup && !self.costing
    }
}

/// Run count and run time of meshlane's programs per operation of a step
/// (per application connection in the `connect` workload).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HookCost {
    /// Every program together: ns per operation.
    pub total_ns: f64,
    /// Every program together: runs per operation.
    pub total_runs: f64,
    /// Per program name: (runs, ns) per operation.
    pub programs: BTreeMap<String, (f64, f64)>,
}

impl HookCost {
    fn between(before: &ProgramTimes, after: &ProgramTimes, ops: u64) -> Self {
        let per = ops.max(1) as f64;
        let mut c = Self::default();
        for (name, (runs, ns)) in after {
            let (r0, n0) = before.get(name).copied().unwrap_or_default();
            let (runs, ns) = (runs.saturating_sub(r0), ns.saturating_sub(n0));
            if runs == 0 {
                continue;
            }
            c.total_runs += runs as f64 / per;
            c.total_ns += ns as f64 / per;
            c.programs
                .insert(name.clone(), (runs as f64 / per, ns as f64 / per));
        }
        c
    }
}

/// Everything a run measured.
pub struct RunData {
    pub steps: Vec<StepRecord>,
    /// Merged latency histograms of the measured rounds per cell and mode.
    pub hists: BTreeMap<(Workload, Placement, Mode), Histogram<u64>>,
    /// Where the bypass mode's decisions came from, checked at the end
    /// of the run (None: the mode was not built).
    pub bypass: Option<String>,
}

const COUNTERS: [&str; 14] = [
    "messages_spliced",
    "connects_redirected",
    "inbound_steered",
    "sockets_paired_across_nat",
    "splice_throttled",
    "splice_resumed",
    "bytes_spliced",
    "bytes_fallback",
    "sockets_inserted",
    "sockets_insert_failed",
    "sockets_not_spliced",
    "sockets_short_not_spliced",
    "sockets_evicted",
    "bookkeeping_insert_failed",
];

/// Run count and run time (ns) of every program by name, summed over the
/// installs that serve the cell's placement (`Testbed::layouts`; the same
/// program of both nodes counts once, together).
type ProgramTimes = BTreeMap<String, (u64, u64)>;

struct Snapshot {
    counters: Vec<u64>,
    sessions: u64,
    total: CpuSample,
    sidecars: Vec<CpuSample>,
    softirq: Option<CpuSample>,
    /// Read in the costing rounds only (the statistics are off otherwise).
    programs: ProgramTimes,
}

impl Snapshot {
    /// Run time of every program together.
    fn bpf_ns(&self) -> u64 {
        self.programs.values().map(|(_, ns)| ns).sum()
    }
}

fn program_times(tb: &Testbed, p: Placement) -> ProgramTimes {
    let mut t = ProgramTimes::new();
    for l in tb
        .layouts(p)
        .iter()
        .filter_map(|l| crate::status::collect(l).ok())
        .flat_map(|s| s.links)
    {
        // Per-pod sk_lookup links are pinned by netns cookie: one name.
        let name = if l.program.chars().all(|c| c.is_ascii_digit()) {
            "ml_inbound_lookup".to_string()
        } else {
            l.program
        };
        let e = t.entry(name).or_default();
        e.0 += l.run_count;
        e.1 += l.run_time_ns;
    }
    t
}

fn snapshot(
    tb: &Testbed,
    cell: (Mode, Workload, Placement),
    with_cpu: bool,
    costing: bool,
) -> Snapshot {
    let (mode, w, p) = cell;
    let sessions = tb.set(mode, w).map_or(0, |s| {
        s.sidecars
            .iter()
            .map(|sc| sc.sessions("outbound") + sc.sessions("inbound"))
            .sum()
    });
    Snapshot {
        counters: COUNTERS.iter().map(|c| tb.counter(c)).collect(),
        sessions,
        total: if with_cpu {
            tb.cpu_total().sample()
        } else {
            CpuSample(0)
        },
        sidecars: if with_cpu {
            tb.sidecar_pids(mode, w)
                .into_iter()
                .map(|p| CpuSource::Process(p).sample())
                .collect()
        } else {
            Vec::new()
        },
        softirq: tb
            .cpu
            .filter(|_| with_cpu)
            .map(|c| CpuSource::Softirq(c).sample()),
        programs: if costing {
            program_times(tb, p)
        } else {
            ProgramTimes::new()
        },
    }
}

/// Holds the kernel's BPF run-time statistics on while alive (the kernel
/// turns them off again when the last holder closes its fd).
pub struct BpfStats(#[allow(dead_code)] Option<OwnedFd>);

impl BpfStats {
    pub fn enable() -> Self {
        Self(crate::datapath::links::enable_run_stats())
    }
}

fn run_step(tb: &Testbed, o: &Options, w: Workload, p: Placement, m: Mode) -> Result<Measured> {
    let (pod, addr) = tb.route(m, w, p)?;
    let dur = o.step * w.step_factor();
    let (cpu, qps, conns) = (o.cpu, o.qps, o.connections_of(w));
    let _beside = tb.without_meshlane(m)?;
    let r = pod.run(move || match w {
        Workload::Rtt64 | Workload::Rtt1k | Workload::Rtt16k => {
            load::rtt(addr, w.rtt_size().unwrap_or(64), dur, cpu)
        }
        Workload::Connect => load::connect_rate(addr, dur, cpu),
        Workload::Http | Workload::Http2 | Workload::Http16 | Workload::Http64 => {
            load::http_load(addr, Some(qps), conns, dur, cpu)
        }
        Workload::HttpMax => load::http_load(addr, None, conns, dur, cpu),
        Workload::HttpClose => load::http_close_load(addr, qps, conns, dur, cpu),
        Workload::Bulk1 => load::bulk(addr, 1, dur, cpu),
        Workload::Bulk4 => load::bulk(addr, 4, dur, cpu),
    });
    match r {
        Ok(inner) => inner,
        Err(e) => Err(BenchError::workload(
            format!("entering pod {}", pod.name),
            format!("{e:#}"),
        )),
    }
}

/// Waits (up to 3 s) until the nodes are idle: less than 5 ms of CPU in a
/// 100 ms window across every process of the run. A step that failed can
/// leave a sidecar draining buffers; the next step must not pay for it.
fn settle(tb: &Testbed) {
    let cg = tb.cpu_total();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline && !interrupt::requested() {
        let a = cg.sample();
        std::thread::sleep(std::time::Duration::from_millis(100));
        if cg.sample().since(a) < 5_000_000 {
            return;
        }
    }
}

fn ms(ns: u64, per: f64) -> f64 {
    ns as f64 / 1e6 / per
}

/// What a step is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    /// Discarded.
    Warmup,
    /// Rates, latencies and CPU: BPF statistics off, as on a node.
    Measured,
    /// BPF run time (connection and HTTP workloads): statistics on.
    Costing,
}

/// Runs every round of `o` on `tb`: the warm-up and measured rounds, then
/// the costing rounds.
pub fn run(tb: &Testbed, o: &Options, progress: &mut Progress) -> Result<RunData> {
    let modes = o.runnable_modes();
    let cells = o.cells();
    let mut data = RunData {
        steps: Vec::new(),
        hists: BTreeMap::new(),
        bypass: None,
    };
    let rounds = (0..o.warmup_rounds + o.rounds)
        .map(|r| {
            let kind = if r < o.warmup_rounds {
                StepKind::Warmup
            } else {
                StepKind::Measured
            };
            (r, kind)
        })
        .chain((0..o.cost_rounds).map(|r| (o.warmup_rounds + o.rounds + r, StepKind::Costing)));
    for (round, kind) in rounds {
        for &(w, p) in &cells {
            if kind == StepKind::Costing && !(w.cpu_accounted() || w.hook_costed()) {
                continue;
            }
            for &m in modes.iter().filter(|m| m.runs(w, p)) {
                interrupt::check()?;
                progress.step(&format!(
                    "round {}{} {w} {p} {m}",
                    round + 1,
                    match kind {
                        StepKind::Warmup => " (warm-up)",
                        StepKind::Measured => "",
                        StepKind::Costing => " (BPF costs)",
                    }
                ));
                let rec = run_recorded(tb, o, (m, w, p), (round, kind), &mut data, progress)?;
                data.steps.push(rec);
            }
        }
    }
    progress.finish();
    Ok(data)
}

/// Runs one step of `cell` and records it.
fn run_recorded(
    tb: &Testbed,
    o: &Options,
    cell: (Mode, Workload, Placement),
    (round, kind): (u32, StepKind),
    data: &mut RunData,
    progress: &mut Progress,
) -> Result<StepRecord> {
    let (m, w, p) = cell;
    let with_cpu = w.cpu_accounted();
    let costing = kind == StepKind::Costing;
    let hooks = costing && w.hook_costed();
    // BPF run-time stats cost two clock reads per program run: on only
    // in the costing rounds.
    let stats = costing.then(BpfStats::enable);
    let before = snapshot(tb, (m, w, p), with_cpu, costing);
    let res = run_step(tb, o, w, p, m);
    let after = snapshot(tb, (m, w, p), with_cpu, costing);
    drop(stats);
    settle(tb);
    if matches!(res, Err(BenchError::Interrupted)) || interrupt::requested() {
        return Err(BenchError::Interrupted);
    }
    let warmup = kind == StepKind::Warmup;
    let mut rec = StepRecord {
        round,
        warmup,
        costing,
        workload: w,
        placement: p,
        mode: m,
        error: None,
        latency_us: None,
        ops: 0,
        ops_per_s: 0.0,
        gbit_per_s: None,
        missed_slots: 0,
        cpu_per_1k: None,
        hooks: None,
        counters: COUNTERS
            .iter()
            .zip(after.counters.iter().zip(&before.counters))
            .map(|(n, (a, b))| ((*n).to_string(), a.saturating_sub(*b)))
            .collect(),
    };
    rec.counters.insert(
        "sidecar_sessions".into(),
        after.sessions.saturating_sub(before.sessions),
    );
    match res {
        Err(e) => {
            progress.note(&format!("  {w} {p} {m}: {e}"));
            rec.error = Some(e.to_string());
        }
        Ok(meas) => {
            let secs = meas.elapsed.as_secs_f64().max(1e-9);
            rec.ops = meas.ops;
            rec.ops_per_s = meas.ops as f64 / secs;
            rec.missed_slots = meas.missed;
            if meas.bytes > 0 {
                rec.gbit_per_s = Some(meas.bytes as f64 * 8.0 / secs / 1e9);
            }
            if let Some(h) = &meas.hist {
                rec.latency_us = Some(Percentiles::of(h));
                if kind == StepKind::Measured {
                    let e = data.hists.entry((w, p, m)).or_insert_with(load::histogram);
                    let _ = e.add(h);
                }
            }
            if hooks && meas.ops > 0 {
                rec.hooks = Some(HookCost::between(
                    &before.programs,
                    &after.programs,
                    meas.ops,
                ));
            }
            if with_cpu && meas.ops > 0 {
                let per = meas.ops as f64 / 1000.0;
                let total = after.total.since(before.total);
                let sidecars: u64 = after
                    .sidecars
                    .iter()
                    .zip(&before.sidecars)
                    .map(|(a, b)| a.since(*b))
                    .sum();
                rec.cpu_per_1k = Some(CpuPer1k {
                    total_ms: ms(total, per),
                    sidecars_ms: ms(sidecars, per),
                    apps_ms: ms(total.saturating_sub(sidecars), per),
                    bpf_ms: ms(after.bpf_ns().saturating_sub(before.bpf_ns()), per),
                    softirq_ms: after
                        .softirq
                        .zip(before.softirq)
                        .map(|(a, b)| ms(a.since(b), per)),
                });
            }
        }
    }
    Ok(rec)
}
