//! `meshlane explain`: the bypass decision for every outbound destination
//! of one proxy, offline from an Envoy config dump. Table by default,
//! `--json` (global flag) for machines, `--summary` for counts by reason.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use meshlane::config::AgentConfig;
use meshlane::xds::decide::{self, Decisions, Verdict};
use meshlane::xds::dump;

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Envoy config dump JSON (istioctl proxy-config all -o json, or /config_dump).
    #[arg(long, value_name = "FILE")]
    config_dump: PathBuf,
    /// Counts by decision and reason, and the share that can be bypassed.
    #[arg(long)]
    summary: bool,
    /// Explain a dump that lacks its listener or cluster section.
    #[arg(long)]
    allow_partial: bool,
    /// Agent config whose `bypass:` section sets the policies [default: the defaults].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(crate) fn run(a: &ExplainArgs, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(&a.config_dump)
        .with_context(|| format!("reading {}", a.config_dump.display()))?;
    let parsed = dump::parse(&text, a.allow_partial)
        .with_context(|| format!("config dump {}", a.config_dump.display()))?;
    let policy = match &a.config {
        Some(f) => AgentConfig::from_file(f)?.bypass.policies,
        None => decide::BypassPolicy::default(),
    };
    let decisions = decide::decide(&parsed.resources, &policy);
    for w in &parsed.warnings {
        eprintln!("meshlane: warning: {w}");
    }
    if a.summary {
        let s = decisions.summary();
        if json {
            return crate::print_json(&s);
        }
        println!(
            "{} destinations: {} BYPASS, {} SIDECAR ({:.1}% can be bypassed)",
            s.total,
            s.bypass,
            s.sidecar,
            s.bypass_share * 100.0
        );
        let mut reasons: Vec<_> = s.sidecar_reasons.iter().collect();
        reasons.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
        for (code, n) in reasons {
            println!("  {n:>5}  {code}");
        }
        return Ok(());
    }
    if json {
        return crate::print_json(&decisions);
    }
    print!("{}", table(&decisions));
    Ok(())
}

fn table(d: &Decisions) -> String {
    let mut out = String::new();
    for x in &d.destinations {
        let verdict = match x.decision {
            Verdict::Bypass => "BYPASS",
            Verdict::Sidecar => "SIDECAR",
        };
        let clusters: Vec<&str> = x.clusters.iter().map(|(c, _)| c.as_str()).collect();
        out.push_str(&format!(
            "{:<28} {:<8} {}\n",
            x.destination.to_string(),
            verdict,
            clusters.join(", ")
        ));
        if !x.hostnames.is_empty() {
            out.push_str(&format!("    hosts: {}\n", x.hostnames.join(", ")));
        }
        for r in &x.reasons {
            out.push_str(&format!("    {}: {}\n", r.code.name(), r.text));
        }
        for e in &x.endpoints {
            out.push_str(&format!(
                "    endpoint {}:{} weight {} priority {}{}\n",
                e.address,
                e.port,
                e.weight,
                e.priority,
                e.locality
                    .as_deref()
                    .map(|l| format!(" locality {l}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
