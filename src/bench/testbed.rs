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
//! The modes without meshlane (`direct`, `iptables`) run beside it: their
//! pods' processes are started, and their steps run, with this process in
//! a cgroup next to node A's ([`Testbed::without_meshlane`]), so meshlane's
//! cgroup programs never run for their sockets. Node B's install is
//! attached to a cgroup of its own, where the other modes' node-B sidecars
//! and servers are started ([`Testbed::on_node_b`]): a socket runs its own
//! node's programs only, as on two real nodes. CPU totals sum the three
//! cgroups.
//!
//! `bypass` pods: the client is registered (intercept) with its sidecar
//! running; its servers are plain backends (no sidecar, not registered).
//! The client dials a service VIP per placement. The testbed's control
//! plane (the sim's ADS server) serves the client's Istio-shaped config
//! (a TCP service per VIP and port, its one endpoint that placement's
//! server) under the client's node id, and the agent's own bypass chain,
//! running in this process ([`super::live`]), streams it, decides and
//! writes the kernel's service map, which sends the client straight to
//! the server. Setup waits until the chain has every destination BYPASS
//! in the kernel, and fails with the reason otherwise.
//!
//! Envoy sidecars (every mode's) take their listeners and clusters over
//! ADS from the same control plane, each under its own node id (the
//! pass-through resources for its mode, plus the services for the bypass
//! client). HAProxy sidecars have a static original-destination config.
//! Everything is removed on drop, in reverse order of creation, panics
//! and Ctrl-C included.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::error::{BenchError, Result};
use super::live::{self, LiveAgent, LiveStatus, NAMESPACE};
use super::options::{Mode, Placement, Workload};
use super::servers::ServerSet;
use super::{interrupt, net};
use crate::pods::source::PodInfo;
use crate::pods::{PodMode, PodSpec};
use crate::sim::xds::{sidecar_snapshot, AdsServer, Protocol, Service, Snapshot};
use crate::sim::CpuSource;
use crate::sim::{
    self, Node, NodeOptions, PeerNode, Pod, SideInstall, Sidecar, SidecarMode, SidecarOptions,
    SidecarProxy, TestCgroup, Visit,
};

/// The golden istio-init rule set every iptables-mode pod gets.
pub const ISTIO_RULES: &str = "cni-plugin_basic.txt.golden";

/// How long the bypass mode's live path may take to stream, decide and
/// write a client's service map entries.
pub const LIVE_LIMIT: Duration = Duration::from_secs(30);

/// The bypass mode's client, as its live path is asked about it.
#[derive(Debug, Clone)]
pub struct BypassClient {
    /// Its pod catalog entry (what the agent's pod source would hold).
    pub info: PodInfo,
    /// Its registration's netns cookie (the service map's key).
    pub cookie: u64,
    /// The node ids its config is served under (the agent's stream, its
    /// Envoy sidecar's).
    pub node_ids: Vec<String>,
    /// The services served to it (one per placement VIP and port).
    pub services: Vec<Service>,
    /// Its sidecar's mode (the pass-through resources of its config).
    pub sidecar_mode: SidecarMode,
    pub ipv6: bool,
}

impl BypassClient {
    /// The VIP:port of every service: what must be bypassed.
    pub fn destinations(&self) -> Vec<SocketAddr> {
        self.services
            .iter()
            .map(|s| SocketAddr::new(s.vip, s.port))
            .collect()
    }

    /// The Istio-shaped config served to the client (version `version`).
    pub fn snapshot(&self, version: &str) -> Snapshot {
        sidecar_snapshot(version, self.sidecar_mode, self.ipv6, &self.services)
    }
}

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
    /// The bypass mode's client.
    pub bypass: Option<BypassClient>,
}

/// Node A, node B and every mode's pods. Field order is drop order.
pub struct Testbed {
    /// The agent's bypass chain in process (bypass mode), stopped first.
    live: Option<LiveAgent>,
    pub sets: Vec<ModePods>,
    /// The control plane: the bypass client's config and every Envoy
    /// sidecar's, over ADS.
    pub control_plane: Option<AdsServer>,
    /// The splice-less install of `intercept-nosplice` (node A only).
    pub side: Option<SideInstall>,
    pub peer: Option<PeerNode>,
    /// Node B's cgroup (its install is attached there), dropped after it.
    node_b: Option<TestCgroup>,
    /// Where the modes without meshlane live: a cgroup beside node A's.
    without: TestCgroup,
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

/// The testbed's control plane, on a unix socket under /run/meshlane-test
/// (removed on drop); pods without a config of their own get the
/// pass-through resources only.
fn control_plane() -> Result<AdsServer> {
    let dir = PathBuf::from("/run/meshlane-test").join(sim::unique_tag("bench-ads-"));
    AdsServer::start(&dir, sidecar_snapshot("1", SidecarMode::Tcp, false, &[]))
        .map_err(|e| BenchError::setup("the control plane (ADS server)", e.to_string()))
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
        let without = TestCgroup::create(&format!("{}-plain", node.tag)).map_err(
            BenchError::setup_anyhow("the cgroup of the modes without meshlane"),
        )?;
        let needs_ads = modes.contains(&Mode::Bypass)
            || (sidecar == SidecarProxy::Envoy && modes.iter().any(|m| m.has_sidecars()));
        let control_plane = if needs_ads {
            Some(control_plane()?)
        } else {
            None
        };
        let mut tb = Testbed {
            live: None,
            sets: Vec::new(),
            control_plane,
            side: None,
            peer: None,
            node_b: None,
            without,
            node,
            cpu,
            sidecar,
        };
        if cross_node {
            let cg = TestCgroup::create(&format!("{}-b", tb.node.tag))
                .map_err(BenchError::setup_anyhow("node B's cgroup"))?;
            let peer = PeerNode::on_cgroup(&tb.node, cg.path());
            tb.node_b = Some(cg);
            tb.peer = Some(peer.map_err(BenchError::setup_anyhow(
                "node B (host netns, veth wire, data path)",
            ))?);
        }
        for &m in modes {
            interrupt::check()?;
            let _beside = tb.without_meshlane(m)?;
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

    /// For a mode without meshlane, this process in the cgroup beside node
    /// A's until the guard drops (what it starts meanwhile stays there).
    pub fn without_meshlane(&self, mode: Mode) -> Result<Option<Visit>> {
        if !mode.without_meshlane() {
            return Ok(None);
        }
        self.without
            .visit(self.node.cgroup.path())
            .map(Some)
            .map_err(BenchError::setup_anyhow(format!(
                "moving into the cgroup of mode {}",
                mode.name()
            )))
    }

    /// For a node-B pod of a mode with meshlane, this process in node B's
    /// cgroup until the guard drops: the sidecar and the server started
    /// meanwhile (and the sockets their listeners accept) run node B's
    /// programs. None for node A's pods and for the modes without meshlane
    /// (they stay beside).
    fn on_node_b(&self, mode: Mode, on_b: bool) -> Result<Option<Visit>> {
        let Some(cg) = self
            .node_b
            .as_ref()
            .filter(|_| on_b && !mode.without_meshlane())
        else {
            return Ok(None);
        };
        cg.visit(self.node.cgroup.path())
            .map(Some)
            .map_err(BenchError::setup_anyhow("moving into node B's cgroup"))
    }

    /// The CPU time of every process of the run: node A's cgroup, node
    /// B's and the one beside them.
    pub fn cpu_total(&self) -> CpuSource {
        let mut dirs = vec![
            self.node.cgroup.path().to_path_buf(),
            self.without.path().to_path_buf(),
        ];
        dirs.extend(self.node_b.as_ref().map(|c| c.path().to_path_buf()));
        CpuSource::Cgroups(dirs)
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
            bypass: None,
        };
        let sidecar_mode = if l7 {
            SidecarMode::Http
        } else {
            SidecarMode::Tcp
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
                // Named as the pod source names registrations.
                let mut spec = PodSpec::istio(format!("{NAMESPACE}/{}", pod.name));
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
                    client_cookie = Some((rec.netns_cookie, spec));
                }
            }
        }
        let bypass = match client_cookie {
            Some((cookie, spec)) => Some(self.bypass_client(&set, cookie, &spec, sidecar_mode)?),
            None => None,
        };
        let cpu = self.cpu;
        for &(pod, on_b) in &pods {
            let plain = mode.plain_servers() && !std::ptr::eq(pod, &set.client);
            if mode.has_sidecars() && !plain {
                let _b = self.on_node_b(mode, on_b)?;
                let options = SidecarOptions::istio(self.sidecar, sidecar_mode);
                let sc = match (self.sidecar, &self.control_plane) {
                    (SidecarProxy::Envoy, Some(ads)) => {
                        let id = sim::sidecar::node_id(pod);
                        let services = bypass
                            .as_ref()
                            .filter(|b| b.node_ids.contains(&id))
                            .map_or(&[][..], |b| &b.services[..]);
                        let snap = sidecar_snapshot("1", sidecar_mode, pod.ip6.is_some(), services);
                        ads.update_node(&id, snap);
                        let socket = ads.socket().to_path_buf();
                        pinned(cpu, || Sidecar::launch_ads(pod, &options, &socket))?
                    }
                    _ => pinned(cpu, || Sidecar::launch(pod, &options))?,
                }
                .map_err(BenchError::setup_anyhow(format!(
                    "{} sidecar in {}",
                    self.sidecar.name(),
                    pod.name
                )))?;
                set.sidecars.push(sc);
            }
        }
        for (pod, on_b) in [(&set.server, false)]
            .into_iter()
            .chain(set.remote.iter().map(|p| (p, true)))
        {
            let _b = self.on_node_b(mode, on_b)?;
            set.servers.push(ServerSet::start(pod, cpu)?);
        }
        if let Some(b) = bypass {
            self.go_live(&b)?;
            set.bypass = Some(b);
        }
        Ok(set)
    }

    /// The bypass mode's client: a TCP service per placement VIP and
    /// workload port whose one endpoint is that placement's plain server,
    /// served by the control plane under the client's node ids (before
    /// anything streams it).
    fn bypass_client(
        &self,
        set: &ModePods,
        cookie: u64,
        spec: &PodSpec,
        sidecar_mode: SidecarMode,
    ) -> Result<BypassClient> {
        let ads = self
            .control_plane
            .as_ref()
            .ok_or_else(|| BenchError::setup("bypass", "no control plane"))?;
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
        let info = live::pod_info(&set.client, spec);
        let agent_id = live::node_id(&info, ads.socket())
            .map_err(|e| BenchError::setup("bypass", e.to_string()))?;
        let mut node_ids = vec![agent_id, sim::sidecar::node_id(&set.client)];
        node_ids.dedup();
        let client = BypassClient {
            info,
            cookie,
            node_ids,
            services,
            sidecar_mode,
            ipv6: set.client.ip6.is_some(),
        };
        for id in &client.node_ids {
            ads.update_node(id, client.snapshot("1"));
        }
        Ok(client)
    }

    /// Starts the agent's bypass chain (once), gives it the client, and
    /// waits until every service is BYPASS in the kernel's service map.
    fn go_live(&mut self, b: &BypassClient) -> Result<LiveStatus> {
        let (Some(ads), layout) = (&self.control_plane, &self.node.layout) else {
            return Err(BenchError::setup("bypass", "no control plane"));
        };
        if self.live.is_none() {
            let agent = LiveAgent::start(layout, ads.socket())
                .map_err(|e| BenchError::setup("bypass", e.to_string()))?;
            self.live = Some(agent);
        }
        let agent = self
            .live
            .as_ref()
            .ok_or_else(|| BenchError::setup("bypass", "no in-process agent"))?;
        agent.add_pod(b.info.clone());
        agent
            .wait_bypassed(&b.info.key, b.cookie, &b.destinations(), LIVE_LIMIT)
            .map_err(|e| BenchError::setup("bypass", e.to_string()))
    }

    /// Whether every bypass client's destinations are BYPASS in the
    /// kernel now, as its live path decided them (the same check setup
    /// waits on, waiting at most `limit`).
    pub fn bypass_live(&self, limit: Duration) -> Result<Vec<LiveStatus>> {
        let agent = match &self.live {
            Some(a) => a,
            None => return Ok(Vec::new()),
        };
        self.sets
            .iter()
            .filter_map(|s| s.bypass.as_ref())
            .map(|b| {
                agent
                    .wait_bypassed(&b.info.key, b.cookie, &b.destinations(), limit)
                    .map_err(|e| BenchError::setup("bypass", e.to_string()))
            })
            .collect()
    }

    /// Where the bypass mode's decisions came from, for the report: None
    /// when the mode was not built.
    pub fn bypass_provenance(&self) -> Option<String> {
        self.live.as_ref()?;
        Some(match self.bypass_live(Duration::from_secs(5)) {
            Ok(all) => {
                let pods: Vec<String> = all
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} of {} service destinations BYPASS, {} in the kernel's service map",
                            s.pod, s.bypass, s.services, s.kernel_entries
                        )
                    })
                    .collect();
                format!(
                    "decided live over ADS by the agent's bypass chain (xDS client, live decisions, service map sync) from the testbed's control plane: {}",
                    pods.join("; ")
                )
            }
            Err(e) => format!("NOT live at the end of the run: {e}"),
        })
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

    /// Pin roots of the installs whose programs run for a placement's
    /// sockets (for BPF program run time): node A's, and node B's for the
    /// cross-node cells (its install is attached to node B's own cgroup, so
    /// it runs for node B's sockets only; same-node and one-sidecar cells
    /// would count nothing from it).
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
