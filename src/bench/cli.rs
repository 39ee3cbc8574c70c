//! `meshlane bench` and `meshlane demo`: arguments, the run, and what is
//! printed. Mode and workload lists are parsed here (not by clap) so a bad
//! one gives a single line naming the known values.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::error::{BenchError, Result};
use super::options::{parse_list, Options};
use crate::sim::SidecarProxy;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// About a minute: same node, RTT 64 B / 1 KiB, connection rate, fixed-rate HTTP.
    #[arg(long)]
    pub quick: bool,
    /// Comma-separated: direct,iptables,accelerate,intercept,intercept-nosplice,bypass.
    #[arg(long)]
    pub modes: Option<String>,
    /// Comma-separated: rtt-64,rtt-1k,rtt-16k,connect,http,http-max,bulk-1,bulk-4,
    /// http-2,http-16,http-64,http-close.
    #[arg(long)]
    pub workloads: Option<String>,
    /// Comma-separated: same-node,cross-node,one-sidecar.
    #[arg(long)]
    pub placements: Option<String>,
    /// Measured rounds (one warm-up round more is run and discarded).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Rounds after the measured ones, BPF statistics on, that give the
    /// BPF run-time columns (connection and HTTP workloads; default 2, 0:
    /// none). Measured rounds run with the statistics off.
    #[arg(long)]
    pub cost_rounds: Option<u32>,
    /// Base length of one step in milliseconds.
    #[arg(long)]
    pub step_ms: Option<u64>,
    /// Fixed request rate of the http workload (all connections).
    #[arg(long)]
    pub qps: Option<u32>,
    /// Connections of the HTTP workloads.
    #[arg(long)]
    pub connections: Option<u32>,
    /// CPU every process of a flow is pinned to (default: the last CPU).
    #[arg(long, conflicts_with = "no_pin")]
    pub cpu: Option<usize>,
    /// Do not pin to a CPU.
    #[arg(long)]
    pub no_pin: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// HTTP workloads through extra pods whose sidecars run in http mode (L7).
    #[arg(long)]
    pub http_l7: bool,
    /// Sidecar proxy: auto (Envoy where installed, else HAProxy), haproxy or envoy.
    #[arg(long, value_name = "PROXY")]
    pub sidecar: Option<String>,
    /// Fail (non-zero exit) when intercept is slower than iptables at p50 RTT,
    /// or a meshlane mode is below iptables on connection rate or bulk
    /// throughput by more than the run's noise (half the spread of the
    /// per-round ratios).
    #[arg(long)]
    pub check: bool,
    /// Results directory (report.json, report.md, *.svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl BenchArgs {
    pub fn options(&self) -> Result<Options> {
        let mut o = if self.quick {
            Options::quick()
        } else {
            Options::full()
        };
        if let Some(s) = &self.modes {
            o.modes = parse_list(s, "modes")?;
        }
        if let Some(s) = &self.workloads {
            o.workloads = parse_list(s, "workloads")?;
        }
        if let Some(s) = &self.placements {
            o.placements = parse_list(s, "placements")?;
        }
        if let Some(r) = self.rounds {
            o.rounds = r;
        }
        if let Some(r) = self.cost_rounds {
            o.cost_rounds = r;
        }
        if let Some(ms) = self.step_ms {
            o.step = Duration::from_millis(ms);
        }
        if let Some(q) = self.qps {
            o.qps = q;
        }
        if let Some(c) = self.connections {
            o.connections = c;
        }
        if self.no_pin {
            o.cpu = None;
        } else if let Some(c) = self.cpu {
            o.cpu = Some(c);
        }
        if self.http_l7 {
            o.http_l7 = true;
        }
        if let Some(s) = &self.sidecar {
            o.sidecar = SidecarProxy::choose(s)
                .map_err(|e| BenchError::Usage(format!("--sidecar {s}: {e}")))?;
        }
        if let Some(s) = self.seed {
            o.seed = s;
        }
        if let Some(d) = &self.out {
            o.out = d.clone();
        }
        o.check = self.check;
        o.validate()?;
        Ok(o)
    }
}

/// Runs `meshlane bench`; prints the markdown table (or the JSON report).
pub fn main(args: &BenchArgs, json: bool) -> Result<()> {
    let o = args.options()?;
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err(BenchError::Usage(
            "meshlane bench must run as root (it builds network namespaces, cgroups and BPF state)"
                .into(),
        ));
    }
    let report = super::run(&o, false)?;
    let files = super::write(&report, &o.out)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::workload("JSON", e))?
        );
    } else {
        print!("{}", super::markdown::render(&report));
        println!("\nresults: {}", o.out.display());
    }
    let _ = files;
    if o.check {
        match report.check() {
            Ok(msg) => eprintln!("check passed: {msg}"),
            Err(msg) => return Err(BenchError::Check(msg)),
        }
    }
    Ok(())
}

/// `meshlane demo`: `meshlane bench --quick`, printing the table.
pub fn demo(json: bool) -> Result<()> {
    let args = BenchArgs {
        quick: true,
        modes: None,
        workloads: None,
        placements: None,
        rounds: None,
        cost_rounds: None,
        step_ms: None,
        qps: None,
        connections: None,
        cpu: None,
        no_pin: false,
        seed: None,
        http_l7: false,
        sidecar: None,
        check: false,
        out: None,
    };
    main(&args, json)
}
