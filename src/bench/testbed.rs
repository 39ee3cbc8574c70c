//! The simulated cluster a run measures: node A (this process's private
//! cgroup, pin root and bridge, from `sim::Node`) and node B (`sim::PeerNode`:
//! own host netns, bridge and data path install, joined by a veth wire).
//! Each mode gets its own pods, so modes are interleaved without
//! reconfiguring anything between steps:
//! - a client pod on node A,
//! - a server pod on node A (same-node), and one on node B (cross-node),
//! - for modes with sidecars, HAProxy or Envoy (uid 1337, tcp mode, original-destination
//!   servers) in each of those pods, and (for the HTTP workloads) a second
//!   trio of pods whose sidecars run in http mode; `iptables`/`accelerate` pods get the exact
//!   istio-init rules (cni-plugin_basic golden); `accelerate`/`intercept` pods
//!   are registered with meshlane (in their own node's registry).
//!
//! The one-sidecar placement sends a mode's client to the `direct` mode's
//! node-A server pod (no sidecar, not registered).
//!
//! `bypass` pods: the client is registered (intercept) with its sidecar
//! running; its servers are plain backends (no sidecar, not registered).
//! The client dials a service VIP per placement, and the kernel's service
//! map (written through the agent's table core from the engine's decisions
//! on the control plane's config) sends it straight to the server. Everything is removed on
//! drop, in reverse order of creation, panics and Ctrl-C included.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::error::{BenchError, Result};
use super::options::{Mode, Placement, Workload};
use super::servers::ServerSet;
use super::{interrupt, net};
use crate::bypass::sync::PinnedMaps;
use crate::bypass::table::{wanted_for_pod, Table};
use crate::bypass::BypassMetrics;
use crate::datapath::{BypassClockMap, BypassEndpoint, ServiceKey};
use crate::pods::{PodMode, PodSpec};
use crate::sim::xds::{sidecar_snapshot, Protocol, Service};
use crate::sim::{
    self, Node, NodeOptions, PeerNode, Pod, SideInstall, Sidecar, SidecarMode, SidecarOptions,
    SidecarProxy,
};
use crate::xds::decide::{decide, BypassPolicy};

/// The golden istio-init rule set every iptables-mode pod gets.
pub const ISTIO_RULES: &str = "cni-plugin_basic.txt.golden";

/// The pods of one mode. Field order is drop order: processes and server
/// threads first, then the network namespaces.
pub struct ModePods {
    pub mode: Mode,
    /// Sidecars in http mode (L7, like Envoy's HTTP connection
    /// manager); used by the HTTP workloads. false: tcp mode.
    pub l7: bool,
    pub sidecars: Vec<Sidecar>,
    servers: Vec<ServerSet>,
    pub client: Pod,
    pub server: Pod,
    pub remote: Option<Pod>,
}

/// Node A, node B and every mode's pods. Field order is drop order.
pub struct Testbed {
    /// The bypass mode's service map entries (every set's), as the agent's
    /// table core wrote them.
    bypass: Option<(Table, BTreeMap<ServiceKey, Vec<BypassEndpoint>>)>,
    pub sets: Vec<ModePods>,
    /// The splice-less install of `intercept-nosplice` (node A only).
    pub side: Option<SideInstall>,
    pub peer: Option<PeerNode>,
    pub node: Node,
    pub cpu: Option<usize>,
    /// The proxy every sidecar runs.
    pub sidecar: SidecarProxy,
}

/// The service VIP the bypass mode's client dials for a placement (no
/// route exists for it: only the kernel's rewrite reaches the server).
fn bypass_vip(p: Placement) -> Ipv4Addr {
    match p {
        Placement::SameNode => Ipv4Addr::new(10, 96, 200, 1),
        Placement::CrossNode => Ipv4Addr::new(10, 96, 200, 2),
        Placement::OneSidecar => Ipv4Addr::new(10, 96, 200, 3),
    }
}

/// Runs `f` on a short-lived thread pinned to `cpu`, so processes it starts
/// (the sidecars) inherit the pinning.
fn pinned<T: Send>(cpu: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            net::pin_thread(cpu).map_err(BenchError::io("pinning the setup thread"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(BenchError::setup("a pod", "setup thread panicked")))
    })
}

/// Sysctls every pod gets so the connection-rate workload never runs out of
/// ports (TIME_WAIT) in a long run; with two nodes, a route to the other
/// node's pods through the pod's own bridge gateway.
fn tune_pod(pod: &Pod, gateway: Option<Ipv4Addr>) -> Result<()> {
    if let Some(gw) = gateway {
        let gw = gw.to_string();
        pod.exec(&["ip", "route", "add", "10.201.0.0/16", "via", &gw])
            .map_err(BenchError::setup_anyhow(format!(
                "route to node B from {}",
                pod.name
            )))?;
    }
    for kv in [
        "net.ipv4.ip_local_port_range=10000 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        pod.exec(&["sysctl", "-qw", kv])
            .map_err(BenchError::setup_anyhow(format!(
                "sysctl {kv} in {}",
                pod.name
            )))?;
    }
    Ok(())
}

impl Testbed {
    /// Builds node A, node B (if `cross_node`) and the pods of `modes`.
    /// With `l7_http`, modes with sidecars get a second set of pods whose
    /// sidecars run in http mode, for the HTTP workloads.
    pub fn new(
        modes: &[Mode],
        cross_node: bool,
        cpu: Option<usize>,
        l7_http: bool,
        sidecar: SidecarProxy,
    ) -> Result<Self> {
        sim::can_run_root_tests().map_err(|e| {
            BenchError::setup(
                "the simulated node",
                format!("needs root, bpffs and cgroup v2: {e}"),
            )
        })?;
        let node = Node::new(NodeOptions::default()).map_err(BenchError::setup_anyhow(
            "node A (cgroup, pin root, data path)",
        ))?;
        let mut tb = Testbed {
            bypass: None,
            sets: Vec::new(),
            side: None,
            peer: None,
            node,
            cpu,
            sidecar,
        };
        if cross_node {
            tb.peer = Some(PeerNode::new(&tb.node).map_err(BenchError::setup_anyhow(
                "node B (host netns, veth wire, data path)",
            ))?);
        }
        for &m in modes {
            interrupt::check()?;
            let set = tb.mode_pods(m, false)?;
            tb.sets.push(set);
            if l7_http && m.has_sidecars() {
                interrupt::check()?;
                let set = tb.mode_pods(m, true)?;
                tb.sets.push(set);
            }
        }
        Ok(tb)
    }

    fn mode_pods(&mut self, mode: Mode, l7: bool) -> Result<ModePods> {
        let name = if l7 {
            format!("{}-h", mode.name())
        } else {
            mode.name().to_string()
        };
        let client = self
            .node
            .pod(&format!("{name}-c"))
            .map_err(BenchError::setup_anyhow(format!("{name} client pod")))?;
        let server = self
            .node
            .pod(&format!("{name}-s"))
            .map_err(BenchError::setup_anyhow(format!("{name} server pod")))?;
        if mode == Mode::InterceptNoSplice && self.side.is_none() {
            self.side = Some(
                SideInstall::new(&self.node, false)
                    .map_err(BenchError::setup_anyhow("the splice-less side install"))?,
            );
        }
        let remote = match self
            .peer
            .as_mut()
            .filter(|_| mode != Mode::InterceptNoSplice)
        {
            Some(p) => Some(
                p.pod(&format!("{name}-r"))
                    .map_err(BenchError::setup_anyhow(format!(
                        "{name} node-B server pod"
                    )))?,
            ),
            None => None,
        };
        let mut set = ModePods {
            mode,
            l7,
            sidecars: Vec::new(),
            servers: Vec::new(),
            client,
            server,
            remote,
        };
        let mut client_cookie = None;
        let pods: Vec<(&Pod, bool)> = std::iter::once((&set.client, false))
            .chain(std::iter::once((&set.server, false)))
            .chain(set.remote.iter().map(|p| (p, true)))
            .collect();
        for &(pod, on_b) in &pods {
            let gateway = match (&self.peer, on_b) {
                (None, _) => None,
                (Some(p), true) => Some(p.subnet.v4_gateway()),
                (Some(_), false) => Some(self.node.subnet.v4_gateway()),
            };
            tune_pod(pod, gateway)?;
            match mode {
                Mode::Iptables | Mode::Accelerate => {
                    sim::iptables::apply_golden(pod, ISTIO_RULES).map_err(
                        BenchError::setup_anyhow(format!("istio-init rules in {}", pod.name)),
                    )?
                }
                _ => {}
            }
            let is_client = std::ptr::eq(pod, &set.client);
            let pod_mode = match mode {
                Mode::Accelerate => Some(PodMode::Accelerate),
                Mode::Intercept | Mode::InterceptNoSplice => Some(PodMode::Intercept),
                Mode::Bypass if is_client => Some(PodMode::Intercept),
                _ => None,
            };
            if let Some(pm) = pod_mode {
                let mut spec = PodSpec::istio(pod.name.clone());
                spec.mode = pm;
                let reg = if mode == Mode::InterceptNoSplice {
                    self.side
                        .as_ref()
                        .map(|s| s.register(pod, &spec))
                        .unwrap_or_else(|| Err(anyhow::anyhow!("no side install")))
                } else if on_b {
                    self.peer
                        .as_ref()
                        .map(|p| p.register(pod, &spec))
                        .unwrap_or_else(|| Err(anyhow::anyhow!("no node B")))
                } else {
                    self.node.register(pod, &spec)
                };
                let rec = reg.map_err(BenchError::setup_anyhow(format!(
                    "registering {}",
                    pod.name
                )))?;
                if mode == Mode::Bypass {
                    client_cookie = Some(rec.netns_cookie);
                }
            }
        }
        let cpu = self.cpu;
        for &(pod, _) in &pods {
            let plain = mode.plain_servers() && !std::ptr::eq(pod, &set.client);
            if mode.has_sidecars() && !plain {
                let sidecar_mode = if l7 {
                    SidecarMode::Http
                } else {
                    SidecarMode::Tcp
                };
                let options = SidecarOptions::istio(self.sidecar, sidecar_mode);
                let sc = pinned(cpu, || Sidecar::launch(pod, &options))?.map_err(
                    BenchError::setup_anyhow(format!(
                        "{} sidecar in {}",
                        self.sidecar.name(),
                        pod.name
                    )),
                )?;
                set.sidecars.push(sc);
            }
        }
        for pod in [&set.server].into_iter().chain(set.remote.iter()) {
            set.servers.push(ServerSet::start(pod, cpu)?);
        }
        if let Some(cookie) = client_cookie {
            self.bypass_to(&set, cookie)?;
        }
        Ok(set)
    }

    /// The bypass mode's service map: for the client pod, a TCP service
    /// per placement VIP and workload port whose one endpoint is that
    /// placement's plain server; decided by the engine from the control
    /// plane's Istio-shaped config and written by the agent's table core
    /// (so every entry is one the agent would write). The heartbeat is
    /// written once with a week's grace: no agent runs during a benchmark.
    fn bypass_to(&mut self, set: &ModePods, cookie: u64) -> Result<()> {
        let direct = self
            .set(Mode::Direct, Workload::Rtt64)
            .map(|s| s.server.ip4);
        let targets = [
            (Placement::SameNode, Some(set.server.ip4)),
            (Placement::CrossNode, set.remote.as_ref().map(|p| p.ip4)),
            (Placement::OneSidecar, direct),
        ];
        let mut ports: Vec<u16> = Workload::ALL
            .iter()
            .map(|w| super::load::port_for(*w))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let services: Vec<Service> = targets
            .iter()
            .filter_map(|(p, ip)| Some((*p, (*ip)?)))
            .flat_map(|(p, ip)| {
                ports.iter().map(move |&port| Service {
                    host: format!("{}-{port}.bench.svc.cluster.local", p.name()),
                    vip: IpAddr::V4(bypass_vip(p)),
                    port,
                    protocol: Protocol::Tcp,
                    endpoints: vec![SocketAddr::new(IpAddr::V4(ip), port)],
                })
            })
            .collect();
        let snap = sidecar_snapshot("1", SidecarMode::Tcp, false, &services);
        let decisions = decide(&snap.proxy_resources(), &BypassPolicy::default());
        let entries = wanted_for_pod(cookie, &decisions);
        if entries.services.len() != services.len() {
            return Err(BenchError::setup(
                "bypass",
                format!(
                    "the decision engine bypasses {} of {} services",
                    entries.services.len(),
                    services.len()
                ),
            ));
        }
        let (table, wanted) = self.bypass.get_or_insert_with(Default::default);
        wanted.extend(entries.services);
        let metrics = BypassMetrics::default();
        let mut maps = PinnedMaps::open(&self.node.layout, &metrics)
            .map_err(|e| BenchError::setup("bypass", e.to_string()))?;
        let applied = table.apply(wanted, &mut maps);
        if let Some((key, e)) = applied.failed.first() {
            return Err(BenchError::setup("bypass", format!("{}: {e}", key.dest)));
        }
        BypassClockMap::open(&self.node.layout)
            .and_then(|c| c.beat(Duration::from_secs(7 * 24 * 3600)))
            .map_err(|e| BenchError::setup("bypass heartbeat", e.to_string()))
    }

    /// The pods of `mode` that `w` uses: the http-mode set for the HTTP
    /// workloads when there is one.
    pub fn set(&self, mode: Mode, w: Workload) -> Option<&ModePods> {
        let want_l7 = w.is_http();
        self.sets
            .iter()
            .find(|s| s.mode == mode && s.l7 == want_l7)
            .or_else(|| self.sets.iter().find(|s| s.mode == mode && !s.l7))
    }

    /// (client pod, server address) of a mode, workload and placement.
    pub fn route(
        &self,
        mode: Mode,
        w: Workload,
        placement: Placement,
    ) -> Result<(&Pod, SocketAddr)> {
        let port = super::load::port_for(w);
        let set = self
            .set(mode, w)
            .ok_or_else(|| BenchError::setup(mode.name(), "no pods for this mode"))?;
        if mode == Mode::Bypass {
            if placement == Placement::CrossNode && set.remote.is_none() {
                return Err(BenchError::setup("cross-node", "node B was not built"));
            }
            return Ok((&set.client, SocketAddr::from((bypass_vip(placement), port))));
        }
        let ip: Ipv4Addr = match placement {
            Placement::SameNode => set.server.ip4,
            Placement::CrossNode => {
                set.remote
                    .as_ref()
                    .ok_or_else(|| BenchError::setup("cross-node", "node B was not built"))?
                    .ip4
            }
            Placement::OneSidecar => {
                self.set(Mode::Direct, w)
                    .ok_or_else(|| {
                        BenchError::setup("one-sidecar", "needs the direct mode's plain server pod")
                    })?
                    .server
                    .ip4
            }
        };
        Ok((&set.client, SocketAddr::from((ip, port))))
    }

    /// Sidecar processes a mode's workload goes through (CPU accounting).
    pub fn sidecar_pids(&self, mode: Mode, w: Workload) -> Vec<u32> {
        self.set(mode, w)
            .map(|s| s.sidecars.iter().map(|sc| sc.process.pid()).collect())
            .unwrap_or_default()
    }

    /// A data-path counter summed over every install.
    pub fn counter(&self, name: &str) -> u64 {
        self.node.counter(name)
            + self.peer.as_ref().map_or(0, |p| p.counter(name))
            + self.side.as_ref().map_or(0, |s| s.counter(name))
    }

    /// Pin roots of the installs whose programs a real node would run for
    /// a placement's sockets (for BPF program run time). Node B's install
    /// is attached to node A's cgroup too (the simulation has one cgroup),
    /// so it runs a pod-lookup miss on every socket of node A: a node of
    /// its own would never run it, so same-node and one-sidecar cells
    /// leave it out. Cross-node cells count both installs, each of which
    /// also runs that miss on the other node's sockets.
    pub fn layouts(&self, placement: Placement) -> Vec<crate::layout::PinLayout> {
        let mut v = vec![self.node.layout.clone()];
        if let Some(p) = self
            .peer
            .as_ref()
            .filter(|_| placement == Placement::CrossNode)
        {
            v.push(p.layout.clone());
        }
        if let Some(s) = &self.side {
            v.push(s.layout.clone());
        }
        v
    }
}
