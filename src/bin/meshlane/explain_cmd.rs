//! `meshlane explain`: the bypass decision for every outbound destination
//! of one proxy, offline from an Envoy config dump (`--config-dump`) or
//! live from the running agent (`--pod ns/name`, through the local API,
//! with the pod's xDS stream state). Table by default, `--json` (global
//! flag) for machines, `--summary` for counts by reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use meshlane::api::{self, ApiError, Reply, Request};
use meshlane::config::AgentConfig;
use meshlane::pods::source::PodKey;
use meshlane::xds::decide::{self, Decisions};
use meshlane::xds::dump;
use meshlane::xds::live::PodExplained;

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Envoy config dump JSON (istioctl proxy-config all -o json, or /config_dump).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "pod",
        conflicts_with = "pod"
    )]
    config_dump: Option<PathBuf>,
    /// A pod on this node, live from the running agent: NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pod: Option<String>,
    /// Counts by decision and reason, and the share that can be bypassed.
    #[arg(long)]
    summary: bool,
    /// Explain a dump that lacks its listener or cluster section.
    #[arg(long, requires = "config_dump")]
    allow_partial: bool,
    /// Agent config whose `bypass:` section sets the policies [default: the defaults].
    #[arg(long, value_name = "FILE", requires = "config_dump")]
    config: Option<PathBuf>,
}

pub(crate) fn run(a: &ExplainArgs, pin_root: &Path, json: bool) -> Result<()> {
    let decisions = match (&a.config_dump, &a.pod) {
        (Some(file), _) => from_dump(a, file)?,
        (None, Some(pod)) => {
            let live = from_agent(pin_root, pod)?;
            if json && !a.summary {
                return crate::print_json(&live);
            }
            if !json {
                println!("{}", stream_line(&live));
            }
            live.decisions
        }
        (None, None) => bail!("explain: give --config-dump FILE or --pod NS/NAME"),
    };
    print_decisions(&decisions, a.summary, json)
}

/// `NS/NAME` as a pod key.
fn parse_pod(s: &str) -> Result<PodKey> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(PodKey {
                namespace: ns.into(),
                name: name.into(),
            })
        }
        _ => bail!("--pod {s:?}: expected NAMESPACE/NAME"),
    }
}

/// The pod's live decisions from the agent on `pin_root`.
fn from_agent(pin_root: &Path, pod: &str) -> Result<PodExplained> {
    let pod = parse_pod(pod)?;
    let socket = api::socket_path(pin_root);
    match api::call(&socket, &Request::Explain { pod }, Duration::from_secs(60)) {
        Ok(Reply::Explained(e)) => Ok(*e),
        Ok(other) => bail!("agent answered explain with {other:?}"),
        Err(ApiError::NoAgent(s)) => bail!(
            "no agent listens on {}: explain --pod needs a running agent (or use --config-dump)",
            s.display()
        ),
        Err(ApiError::Refused(e)) => bail!("{e}"),
        Err(e) => Err(e.into()),
    }
}

/// The stream state line shown above a live table.
fn stream_line(e: &PodExplained) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut line = format!(
        "pod {} ({}): connected {}, synced {}, stale {}",
        e.pod,
        e.node_id,
        yes(e.connected),
        yes(e.synced),
        yes(e.stale)
    );
    if let Some(err) = e.last_error.as_deref().filter(|_| !e.connected) {
        line.push_str(&format!(", last error: {err}"));
    }
    line
}

fn from_dump(a: &ExplainArgs, file: &Path) -> Result<Decisions> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = dump::parse(&text, a.allow_partial)
        .with_context(|| format!("config dump {}", file.display()))?;
    let policy = match &a.config {
        Some(f) => AgentConfig::from_file(f)?.bypass.policies,
        None => decide::BypassPolicy::default(),
    };
    let decisions = decide::decide(&parsed.resources, &policy);
    for w in &parsed.warnings {
        eprintln!("meshlane: warning: {w}");
    }
    Ok(decisions)
}

fn print_decisions(decisions: &Decisions, summary: bool, json: bool) -> Result<()> {
    if summary {
        let s = decisions.summary();
        if json {
            return crate::print_json(&s);
        }
        println!(
            "{} destinations: {} BYPASS, {} SIDECAR, {} PASSTHROUGH ({:.1}% can be bypassed)",
            s.total,
            s.bypass,
            s.sidecar,
            s.passthrough,
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
        return crate::print_json(decisions);
    }
    print!("{}", table(decisions));
    Ok(())
}

fn table(d: &Decisions) -> String {
    let mut out = String::new();
    for x in &d.destinations {
        let verdict = x.decision.as_str();
        let clusters: Vec<&str> = x.clusters.iter().map(|(c, _)| c.as_str()).collect();
        out.push_str(&format!(
            "{:<28} {:<11} {}\n",
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
        for e in x.endpoints.iter() {
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
