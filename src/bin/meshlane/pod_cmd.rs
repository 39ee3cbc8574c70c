//! `meshlane pod add|rm|list`: registering meshed pods by hand (until the
//! CNI plugin does it): the arguments, mirroring Istio's sidecar
//! annotations, and what each prints.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use meshlane::integrity;
use meshlane::layout::PinLayout;
use meshlane::loader;
use meshlane::pods::{PodMode, PodSpec, Preset, Registry};

use crate::print_json;

#[derive(Subcommand)]
pub(crate) enum PodCmd {
    /// Register the pod whose network namespace is at --netns.
    Add(PodAddArgs),
    /// Unregister a pod; its established connections continue. Give
    /// exactly one of --netns, --cookie, --name (the last two work after
    /// the netns is gone).
    Rm(PodRmArgs),
    /// List registered pods.
    List,
    /// Remove registrations whose netns is gone, and what an add or
    /// remove killed half-way left behind (the agent does this every
    /// second while it runs).
    Sweep,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct PodRmArgs {
    /// Path of the pod's netns (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The pod's netns cookie (as `pod list` and `status` show it).
    #[arg(long)]
    cookie: Option<u64>,
    /// The pod's name (as `pod list` shows it).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
pub(crate) struct PodAddArgs {
    /// Path of the pod's netns (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    netns: PathBuf,
    /// Name shown by status and logs (default: the netns file name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum, default_value_t = Preset::Istio)]
    preset: Preset,
    /// intercept: eBPF redirects (no iptables in the pod); accelerate: istio-init iptables stay, splice only.
    #[arg(long, value_enum, default_value_t = PodMode::Intercept)]
    mode: PodMode,
    #[arg(long)]
    proxy_uid: Option<u32>,
    #[arg(long)]
    proxy_gid: Option<u32>,
    #[arg(long)]
    outbound_port: Option<u16>,
    #[arg(long)]
    inbound_port: Option<u16>,
    #[arg(long)]
    dns_port: Option<u16>,
    /// Send the pod's DNS (port 53) to the proxy's DNS port (Istio DNS proxying).
    #[arg(long)]
    dns_capture: bool,
    /// traffic.sidecar.istio.io/includeInboundPorts ("*" = all).
    #[arg(long, default_value = "*")]
    include_inbound_ports: String,
    /// traffic.sidecar.istio.io/excludeInboundPorts
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// traffic.sidecar.istio.io/includeOutboundPorts
    #[arg(long, default_value = "")]
    include_outbound_ports: String,
    /// traffic.sidecar.istio.io/excludeOutboundPorts
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// traffic.sidecar.istio.io/includeOutboundIPRanges ("*" = all)
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// traffic.sidecar.istio.io/excludeOutboundIPRanges
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
    /// Never splice this pod's sockets: plain TCP everywhere
    /// (annotation meshlane.io/splice: "false").
    #[arg(long)]
    no_splice: bool,
    /// Ports whose connections are never spliced, comma-separated
    /// (annotation meshlane.io/exclude-splice-ports).
    #[arg(long, default_value = "")]
    exclude_splice_ports: String,
    /// Splice the pod's application sockets too, not only its proxy's.
    /// Refused unless this kernel's probes show an application cannot tell
    /// (see `meshlane probe`).
    #[arg(long, conflicts_with = "no_splice")]
    splice_apps: bool,
}

impl PodAddArgs {
    fn spec(&self) -> PodSpec {
        let name = self.name.clone().unwrap_or_else(|| {
            self.netns
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.netns.display().to_string())
        });
        PodSpec {
            name,
            preset: self.preset,
            mode: self.mode,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            dns_port: self.dns_port,
            dns_capture: self.dns_capture,
            include_inbound_ports: self.include_inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            include_outbound_ports: self.include_outbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            include_outbound_ip_ranges: self.include_outbound_ip_ranges.clone(),
            exclude_outbound_ip_ranges: self.exclude_outbound_ip_ranges.clone(),
            splice: !self.no_splice,
            splice_apps: self.splice_apps,
            exclude_splice_ports: self.exclude_splice_ports.clone(),
        }
    }
}

/// `--splice-apps` only where the kernel probes allow it, given whether the
/// installed data path has the stream verdict attached.
fn require_safe_app_hops(layout: &PinLayout) -> Result<()> {
    let facts = loader::kernel_facts().context("probing the kernel for --splice-apps")?;
    let plan = integrity::Plan {
        verdict: layout.link("ml_splice_verdict").exists(),
        splice: true,
        warnings: Vec::new(),
    };
    integrity::app_hops_allowed(&facts, &plan).context("--splice-apps")?;
    Ok(())
}

/// Runs one pod subcommand against the registry under `layout`.
pub(crate) fn run(cmd: PodCmd, layout: &PinLayout, json: bool) -> Result<()> {
    match cmd {
        PodCmd::Add(a) => {
            if a.splice_apps {
                require_safe_app_hops(layout)?;
            }
            let rec = Registry::open(layout)?.add(&a.netns, &a.spec())?;
            if json {
                print_json(&rec)?;
            } else {
                println!(
                    "registered pod {} (netns cookie {}, ips {:?})",
                    rec.name, rec.netns_cookie, rec.ips
                );
            }
        }
        PodCmd::Rm(rm) => {
            let reg = Registry::open(layout)?;
            let cookie = match (rm.netns, rm.cookie, rm.name) {
                (Some(netns), _, _) => reg.remove(&netns)?,
                (_, Some(cookie), _) => {
                    reg.remove_cookie(cookie, &format!("netns cookie {cookie}"))?
                }
                (_, _, Some(name)) => reg.remove_named(&name)?,
                (None, None, None) => anyhow::bail!("pod rm: give --netns, --cookie or --name"),
            };
            if json {
                print_json(&serde_json::json!({ "removed": cookie }))?;
            } else {
                println!("removed pod with netns cookie {cookie}");
            }
        }
        PodCmd::List => {
            let pods = Registry::open(layout)?.list();
            if json {
                print_json(&pods)?;
            } else {
                for p in pods {
                    let gone = if p.netns_alive { "" } else { " (netns gone)" };
                    println!(
                        "{:<20} cookie {:<8} {:?} ips {:?}{gone}",
                        p.name, p.netns_cookie, p.mode, p.ips
                    );
                }
            }
        }
        PodCmd::Sweep => {
            let swept = meshlane::pods::sweep(&Registry::open(layout)?)?
                .context("the pod registry is busy (an add or remove is running): try again")?;
            if json {
                print_json(&swept)?;
            } else {
                for s in &swept {
                    println!(
                        "removed netns cookie {} {:?}: {}",
                        s.netns_cookie, s.name, s.reason
                    );
                }
                println!("{} registration(s) swept", swept.len());
            }
        }
    }
    Ok(())
}
