//! `meshlane pod add|rm|list|sweep`: registering meshed pods by hand (until
//! the CNI plugin does it): the arguments, mirroring Istio's sidecar
//! annotations, and what each prints. Requests go to the running agent over
//! its local API; with no agent, the CLI writes the registry itself under
//! the registry lock.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use meshlane::api::{self, ApiError, PodRef, Reply, Request};
use meshlane::layout::PinLayout;
use meshlane::pods::{PodMode, PodSpec, Preset};

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

/// Sends `req` to the running agent, or, when none listens, does it here
/// under the registry lock (the same code path the agent runs).
fn request(layout: &PinLayout, req: Request) -> Result<Reply> {
    let socket = api::socket_path(layout.root());
    match api::call(&socket, &req, Duration::from_secs(60)) {
        Ok(reply) => Ok(reply),
        Err(ApiError::NoAgent(_)) => {
            tracing::debug!(socket = %socket.display(), "no agent listening: writing the registry directly");
            api::handle(layout, req).map_err(|e| anyhow::anyhow!(e))
        }
        Err(ApiError::Refused(e)) => Err(anyhow::anyhow!(e)),
        Err(e) => Err(e.into()),
    }
}

/// Runs one pod subcommand against the registry under `layout`.
pub(crate) fn run(cmd: PodCmd, layout: &PinLayout, json: bool) -> Result<()> {
    let req = match cmd {
        PodCmd::Add(a) => Request::Add {
            spec: a.spec(),
            netns: a.netns,
        },
        PodCmd::Rm(rm) => Request::Rm {
            pod: match (rm.netns, rm.cookie, rm.name) {
                (Some(netns), _, _) => PodRef::Netns(netns),
                (_, Some(cookie), _) => PodRef::Cookie(cookie),
                (_, _, Some(name)) => PodRef::Name(name),
                (None, None, None) => anyhow::bail!("pod rm: give --netns, --cookie or --name"),
            },
        },
        PodCmd::List => Request::List,
        PodCmd::Sweep => Request::Sweep,
    };
    match request(layout, req)? {
        Reply::Added(rec) if json => print_json(&rec)?,
        Reply::Added(rec) => println!(
            "registered pod {} (netns cookie {}, ips {:?})",
            rec.name, rec.netns_cookie, rec.ips
        ),
        Reply::Removed(cookie) if json => print_json(&serde_json::json!({ "removed": cookie }))?,
        Reply::Removed(cookie) => println!("removed pod with netns cookie {cookie}"),
        Reply::Pods(pods) if json => print_json(&pods)?,
        Reply::Pods(pods) => {
            for p in pods {
                let gone = if p.netns_alive { "" } else { " (netns gone)" };
                println!(
                    "{:<20} cookie {:<8} {:?} ips {:?}{gone}",
                    p.name, p.netns_cookie, p.mode, p.ips
                );
            }
        }
        Reply::Swept(swept) if json => print_json(&swept)?,
        Reply::Swept(swept) => {
            for s in &swept {
                println!(
                    "removed netns cookie {} {:?}: {}",
                    s.netns_cookie, s.name, s.reason
                );
            }
            println!("{} registration(s) swept", swept.len());
        }
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
    Ok(())
}
