//! The report as markdown tables (what `meshlane bench` prints and writes
//! to `report.md`).

use std::fmt::Write;

use super::options::{Mode, Placement, Workload};
use super::report::{Report, Summary};
use super::stats::Stat;

fn st(s: Option<Stat>, digits: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.*}", digits, s.median),
        Some(s) => format!(
            "{:.*} [{:.*}–{:.*}]",
            digits, s.median, digits, s.min, digits, s.max
        ),
    }
}

fn signed(s: Option<Stat>) -> String {
    match s {
        None => "-".into(),
        Some(s) => format!("{:+.1} [{:+.1}–{:+.1}]", s.median, s.min, s.max),
    }
}

/// The share of sk_msg's bytes it redirected, as a percentage; "-" when
/// no byte went through sk_msg (nothing spliceable in the cell).
fn spliced_share(spliced: u64, fallback: u64) -> String {
    let total = spliced as f64 + fallback as f64;
    if total == 0.0 {
        return "-".into();
    }
    format!("{:.1}%", spliced as f64 * 100.0 / total)
}

fn is_latency(w: Workload) -> bool {
    w.rtt_size().is_some() || w == Workload::Connect || w.fixed_rate()
}

fn row_ok(s: &Summary) -> bool {
    s.rounds_ok > 0
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.meta;
    let _ = writeln!(o, "## meshlane bench: {}\n", m.date_utc);
    let _ = writeln!(o, "- command: `{}`", m.command);
    let _ = writeln!(
        o,
        "- kernel {}, {} CPUs ({}), {}",
        m.kernel,
        m.cpus,
        m.cpu_model,
        match m.options.cpu {
            Some(c) => format!("every process of a flow pinned to CPU {c}"),
            None => "no CPU pinning".into(),
        }
    );
    let _ = writeln!(
        o,
        "- {} measured rounds after {} warm-up round(s), then {} costing round(s) for the BPF columns; modes interleaved round-robin; step {:.2} s; http: {} req/s over {} connections, 1 KiB POST, 1 KiB response; seed {:#x}",
        m.options.rounds,
        m.options.warmup_rounds,
        m.options.cost_rounds,
        m.options.step.as_secs_f64(),
        m.options.qps,
        m.options.connections,
        m.options.seed
    );
    let _ = writeln!(
        o,
        "- sidecar: {}; iptables: Istio `{}`",
        m.sidecar, m.istio_rules
    );
    if let Some(b) = &m.bypass {
        let _ = writeln!(o, "- bypass: {b}");
    }
    let _ = writeln!(o, "- cells: median over rounds [min–max]\n");

    let _ = writeln!(o, "### Modes\n\n| mode | status |\n|---|---|");
    for s in &r.modes {
        let _ = writeln!(o, "| {} | {} |", s.mode, s.status);
    }

    let _ = writeln!(
        o,
        "\n### Latency added over `direct` (µs, per-round difference, median [min–max])\n"
    );
    let _ = writeln!(
        o,
        "| workload | placement | mode | +p50 | +p99 |\n|---|---|---|---|---|"
    );
    for s in r
        .summaries
        .iter()
        .filter(|s| row_ok(s) && s.mode != Mode::Direct)
    {
        if s.workload.rtt_size().is_some() || s.workload.fixed_rate() {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.workload,
                s.placement,
                s.mode,
                signed(s.added_p50_us),
                signed(s.added_p99_us)
            );
        }
    }

    let _ = writeln!(o, "\n### Ratios\n\n| ratio | value | note |\n|---|---|---|");
    for x in &r.ratios {
        let v = x.value.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(o, "| {} | {} | {} |", x.what, v, x.note);
    }

    let _ = writeln!(o, "\n### Latency (µs)\n");
    let _ = writeln!(
        o,
        "| workload | placement | mode | p50 | p90 | p99 | p99.9 | ops/s |\n|---|---|---|---|---|---|---|---|"
    );
    for s in r.summaries.iter().filter(|s| is_latency(s.workload)) {
        if !row_ok(s) {
            failed_row(&mut o, s, 4);
            continue;
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.workload,
            s.placement,
            s.mode,
            st(s.p50_us, 1),
            st(s.p90_us, 1),
            st(s.p99_us, 1),
            st(s.p999_us, 1),
            st(s.ops_per_s, 0)
        );
    }

    let thr: Vec<&Summary> = r
        .summaries
        .iter()
        .filter(|s| {
            matches!(
                s.workload,
                Workload::HttpMax | Workload::Bulk1 | Workload::Bulk4
            )
        })
        .collect();
    if !thr.is_empty() {
        let _ = writeln!(
            o,
            "\n### Throughput\n\n`throttled / resumed`: how often the splice backpressure handed a direction to TCP and spliced it again; `spliced`: the share of the bytes sent on spliceable sockets that sk_msg redirected (the rest took TCP: not paired yet, held after a throttle or at start); both summed over rounds.\n\n| workload | placement | mode | requests/s | Gbit/s | throttled / resumed | spliced |\n|---|---|---|---|---|---|---|"
        );
        for s in thr {
            if !row_ok(s) {
                failed_row(&mut o, s, 1);
                continue;
            }
            let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} / {} | {} |",
                s.workload,
                s.placement,
                s.mode,
                if s.workload == Workload::HttpMax {
                    st(s.ops_per_s, 0)
                } else {
                    "-".into()
                },
                st(s.gbit_per_s, 2),
                c("splice_throttled"),
                c("splice_resumed"),
                spliced_share(c("bytes_spliced"), c("bytes_fallback"))
            );
        }
    }

    let cpu: Vec<&Summary> = r
        .summaries
        .iter()
        .filter(|s| row_ok(s) && s.cpu_total_ms_per_1k.is_some())
        .collect();
    if !cpu.is_empty() {
        let _ = writeln!(
            o,
            "\n### CPU per 1,000 requests (ms)\n\n`total` is every process of the simulated nodes (cgroup cpu.stat, kernel work in their context included); `sidecars` the sidecar proxy threads; `apps` = total - sidecars (load generator, server, their kernel time); `BPF` meshlane's programs (kernel BPF stats, from the costing rounds: the measured rounds run with the statistics off, as a node does); `softirq` the pinned CPU's softirq time (whole machine, 10 ms ticks). No agent process runs during a bench: the data path is pinned programs. The `direct` and `iptables` modes run in a cgroup beside the nodes', so none of meshlane's programs runs for their sockets.\n"
        );
        let _ = writeln!(
            o,
            "| workload | placement | mode | total | sidecars | apps | BPF | softirq |\n|---|---|---|---|---|---|---|---|"
        );
        for s in cpu {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.workload,
                s.placement,
                s.mode,
                st(s.cpu_total_ms_per_1k, 1),
                st(s.cpu_sidecars_ms_per_1k, 1),
                st(s.cpu_apps_ms_per_1k, 1),
                st(s.cpu_bpf_ms_per_1k, 2),
                st(s.cpu_softirq_ms_per_1k, 1)
            );
        }
    }

    hook_table(&mut o, r);

    let _ = writeln!(
        o,
        "\n### Targets\n\n| issue | target | goal | measured | verdict |\n|---|---|---|---|---|"
    );
    for t in &r.targets {
        let verdict = match (t.met, t.limit) {
            (Some(true), _) => "met".to_string(),
            (Some(false), Some(why)) => format!("MISSED: {why}"),
            (Some(false), None) => "MISSED".to_string(),
            (None, _) => "not measured".to_string(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            t.issue, t.what, t.goal, t.measured, verdict
        );
    }

    let ev_w = r.summaries.first().map_or(Workload::Rtt64, |f| f.workload);
    let _ = writeln!(
        o,
        "\n### Path evidence (counter deltas summed over measured rounds, {ev_w} {})\n",
        Placement::SameNode
    );
    let _ = writeln!(
        o,
        "| mode | sidecar sessions | messages spliced | connects redirected | inbound steered | paired across NAT |\n|---|---|---|---|---|---|"
    );
    for s in r
        .summaries
        .iter()
        .filter(|s| row_ok(s) && s.placement == Placement::SameNode && s.workload == ev_w)
    {
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            s.mode,
            c("sidecar_sessions"),
            c("messages_spliced"),
            c("connects_redirected"),
            c("inbound_steered"),
            c("sockets_paired_across_nat")
        );
    }
    o
}

/// What meshlane's programs cost per new connection, from the kernel's BPF
/// run-time statistics (every program of both installs, all runs during
/// the step, divided by the connections the step made).
fn hook_table(o: &mut String, r: &Report) {
    let rows: Vec<&Summary> = r
        .summaries
        .iter()
        .filter(|s| row_ok(s) && s.hook_ns_per_op.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n### BPF programs per connection (kernel BPF stats)\n\nFrom the costing rounds (`--cost-rounds`, after the measured rounds; the kernel's statistics cost every program run two clock reads, so they are off while rates are measured). All runs of meshlane's programs during the step divided by the application connections it made (one application connection is up to three TCP connections through the sidecars: app-sidecar, sidecar-sidecar, sidecar-app). Same-node and one-sidecar cells count node A's install only; cross-node cells count both nodes' installs, each attached to its own node's cgroup, so a socket runs its own node's programs only. `direct` and `iptables` run beside both (no program runs for them). Median over rounds [min–max]; per program: median runs x ns per connection.\n"
    );
    let _ = writeln!(
        o,
        "| workload | placement | mode | ns / connection | runs / connection | per program (runs, ns) |\n|---|---|---|---|---|---|"
    );
    for s in rows {
        let progs: Vec<String> = s
            .hook_programs
            .iter()
            .filter(|(_, (runs, _))| *runs > 0.0)
            .map(|(n, (runs, ns))| format!("{n} {runs:.1}, {ns:.0}"))
            .collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            s.workload,
            s.placement,
            s.mode,
            st(s.hook_ns_per_op, 0),
            st(s.hook_runs_per_op, 1),
            progs.join("; ")
        );
    }
}

/// A table row for a cell that failed: its first error, then `blanks`
/// empty cells for the remaining columns.
fn failed_row(o: &mut String, s: &Summary, blanks: usize) {
    let _ = writeln!(
        o,
        "| {} | {} | {} | failed: {} |{}",
        s.workload,
        s.placement,
        s.mode,
        s.errors.first().map_or("", String::as_str),
        " |".repeat(blanks)
    );
}

#[cfg(test)]
mod tests {
    use super::spliced_share;

    #[test]
    fn spliced_share_is_a_percentage_of_sk_msg_bytes() {
        assert_eq!(spliced_share(0, 0), "-");
        assert_eq!(spliced_share(3, 1), "75.0%");
        assert_eq!(spliced_share(0, 10), "0.0%");
        assert_eq!(spliced_share(u64::MAX, u64::MAX), "50.0%");
    }
}
