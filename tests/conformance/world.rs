//! One conformance run: pods A (client side, configured by the case),
//! B (server side, meshed with Istio's defaults) and C (not meshed) on one
//! simulated node, interception done either by the golden iptables rules
//! (reference) or by meshlane, sidecars (Envoy, HAProxy or the native one)
//! in A and B. Probes record what an observer outside the kernel can see
//! (hops: what each sidecar side forwarded, connections or requests), with pod addresses replaced
//! by the pod's letter so two runs (with different pod IPs) compare equal.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::xds::{self, AdsServer};
use meshlane::sim::{unique_tag, Node, Pod, Sidecar, SidecarMode, SidecarOptions, SidecarProxy};

use super::app::{self, As, Seen, Server};
use super::golden;
use super::native_sidecar::NativeSidecar;

/// Which proxy plays the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// HAProxy from Debian, tcp or http mode (IPv4: SO_ORIGINAL_DST).
    Haproxy(SidecarMode),
    /// Envoy with the Istio-like bootstrap (runs only where Envoy is
    /// installed; see [`envoy_available`]).
    Envoy(SidecarMode),
    /// Envoy with only Istio's `xds-grpc` bootstrap, taking the same
    /// pass-through listeners and clusters over ADS from the sim's control
    /// plane (one per world).
    EnvoyAds(SidecarMode),
    /// The Envoy-like original-destination proxy (IPv4 and IPv6).
    Native,
}

impl From<SidecarMode> for SidecarKind {
    fn from(m: SidecarMode) -> Self {
        SidecarKind::Haproxy(m)
    }
}

/// A running sidecar of either kind.
pub enum AnySidecar {
    /// HAProxy or Envoy.
    Real(Sidecar),
    Native(NativeSidecar),
}

impl AnySidecar {
    pub fn start(pod: &Pod, kind: SidecarKind, uid: u32, gid: u32) -> Self {
        Self::start_with(pod, kind, uid, gid, None)
    }

    /// `start`, an `EnvoyAds` sidecar fed by the control plane `ads`.
    pub fn start_with(
        pod: &Pod,
        kind: SidecarKind,
        uid: u32,
        gid: u32,
        ads: Option<&AdsServer>,
    ) -> Self {
        match kind {
            SidecarKind::Haproxy(mode) => AnySidecar::Real(
                Sidecar::start_as(pod, mode, uid, gid).expect("starting HAProxy sidecar"),
            ),
            SidecarKind::Envoy(mode) => {
                let options = SidecarOptions {
                    proxy: SidecarProxy::Envoy,
                    mode,
                    uid,
                    gid,
                };
                AnySidecar::Real(Sidecar::launch(pod, &options).expect("starting Envoy sidecar"))
            }
            SidecarKind::EnvoyAds(mode) => {
                let options = SidecarOptions {
                    proxy: SidecarProxy::Envoy,
                    mode,
                    uid,
                    gid,
                };
                let ads = ads.expect("an EnvoyAds sidecar needs the world's control plane");
                AnySidecar::Real(
                    Sidecar::launch_ads(pod, &options, ads.socket())
                        .expect("starting an ADS-fed Envoy sidecar"),
                )
            }
            SidecarKind::Native => AnySidecar::Native(NativeSidecar::start(pod, uid, gid)),
        }
    }

    /// Connections one side ("outbound"/"inbound") accepted.
    pub fn sessions(&self, frontend: &str) -> u64 {
        match self {
            AnySidecar::Real(s) => s.sessions(frontend),
            AnySidecar::Native(s) => s.sessions(frontend),
        }
    }

    /// What one side ("outbound"/"inbound") forwarded: connections in tcp
    /// mode, HTTP requests in http mode (see [`Sidecar::forwarded`]); the
    /// native sidecar forwards connections.
    pub fn forwarded(&self, side: &str) -> u64 {
        match self {
            AnySidecar::Real(s) => s.forwarded(side),
            AnySidecar::Native(s) => s.sessions(side),
        }
    }
}

/// Who redirects: the reference rules or meshlane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// The golden rules applied with iptables-restore; pod not registered.
    Iptables,
    /// meshlane intercept mode; no nat rules in the pod.
    Meshlane,
}

/// How one pod is meshed in a case.
#[derive(Clone)]
pub struct Meshing {
    /// Golden file for the reference run.
    pub golden: &'static str,
    /// meshlane settings equivalent to the golden's istio-iptables flags.
    pub spec: PodSpec,
    /// The proxy's uid/gid (HAProxy runs as them).
    pub uid: u32,
    pub gid: u32,
}

impl Meshing {
    pub fn istio_default(name: &str) -> Self {
        Self {
            golden: "cni-plugin_basic.txt.golden",
            spec: PodSpec::istio(name),
            uid: 1337,
            gid: 1337,
        }
    }
}

/// Fields drop in order: servers and sidecars before their pods.
pub struct World {
    pub servers: Vec<Server>,
    pub sidecar_a: Option<AnySidecar>,
    pub sidecar_b: Option<AnySidecar>,
    /// The control plane of `EnvoyAds` sidecars (dropped after them).
    pub ads: Option<AdsServer>,
    pub how: Interception,
    pub a: Pod,
    pub b: Pod,
    pub c: Pod,
    pub ipv6: bool,
}

/// Adds ::6 on lo (Istio's IPv6 inbound passthrough source).
fn add_v6_passthrough(pod: &Pod) {
    let _ = pod.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
}

/// Meshes `pod` the way `how` says.
pub fn mesh(node: &Node, pod: &Pod, m: &Meshing, how: Interception, ipv6: bool) {
    match how {
        Interception::Iptables => golden::apply(pod, m.golden, ipv6).expect("applying golden"),
        Interception::Meshlane => {
            let mut spec = m.spec.clone();
            spec.mode = PodMode::Intercept;
            node.register(pod, &spec).expect("registering pod");
        }
    }
}

/// istio-iptables_capture_ipv6-outbound-ports on A (outbound 31000,32000
/// only) and _ipv6-inbound-ports on B (inbound 4000,5000 only).
pub fn ipv6_ports_meshing() -> (Meshing, Meshing) {
    let mut a = Meshing::istio_default("a");
    a.golden = "istio-iptables_capture_ipv6-outbound-ports.golden";
    a.spec.include_outbound_ip_ranges = String::new();
    a.spec.include_outbound_ports = "32000,31000".into();
    a.spec.include_inbound_ports = String::new();
    let mut b = Meshing::istio_default("b");
    b.golden = "istio-iptables_capture_ipv6-inbound-ports.golden";
    b.spec.include_outbound_ip_ranges = String::new();
    b.spec.include_inbound_ports = "4000,5000".into();
    (a, b)
}

/// Meshes `pod` (IPv4) with Istio's defaults, registered as `name`.
pub fn mesh_istio(node: &Node, pod: &Pod, name: &str, how: Interception) {
    mesh(node, pod, &Meshing::istio_default(name), how, false);
}

impl World {
    /// Pods A, B, C; A meshed with `a_mesh` (None: not meshed), B with
    /// `b_mesh`; sidecars started after meshing (so listeners register).
    pub fn new(
        node: &mut Node,
        how: Interception,
        a_mesh: Option<&Meshing>,
        b_mesh: Option<&Meshing>,
        kind: SidecarKind,
    ) -> Self {
        let ipv6 = node.opts.ipv6;
        let a = node.pod("a").expect("pod a");
        let b = node.pod("b").expect("pod b");
        let c = node.pod("c").expect("pod c");
        if ipv6 {
            for p in [&a, &b, &c] {
                add_v6_passthrough(p);
            }
        }
        let ads = match kind {
            SidecarKind::EnvoyAds(mode) => {
                let dir = PathBuf::from("/run/meshlane-test").join(unique_tag("ads-"));
                let snap = xds::sidecar_snapshot("1", mode, ipv6, &[]);
                Some(AdsServer::start(&dir, snap).expect("control plane"))
            }
            _ => None,
        };
        let mut sidecar_a = None;
        if let Some(m) = a_mesh {
            mesh(node, &a, m, how, ipv6);
            sidecar_a = Some(AnySidecar::start_with(&a, kind, m.uid, m.gid, ads.as_ref()));
        }
        let mut sidecar_b = None;
        if let Some(m) = b_mesh {
            mesh(node, &b, m, how, ipv6);
            sidecar_b = Some(AnySidecar::start_with(&b, kind, m.uid, m.gid, ads.as_ref()));
        }
        World {
            how,
            a,
            b,
            c,
            sidecar_a,
            sidecar_b,
            ads,
            servers: Vec::new(),
            ipv6,
        }
    }

    pub fn pod(&self, p: PodName) -> &Pod {
        match p {
            PodName::A => &self.a,
            PodName::B => &self.b,
            PodName::C => &self.c,
        }
    }

    /// Starts an app server in `pod` on the wildcard address, `port`.
    pub fn serve(&mut self, pod: PodName, port: u16) {
        let any: SocketAddr = if self.ipv6 {
            format!("[::]:{port}").parse().unwrap()
        } else {
            format!("0.0.0.0:{port}").parse().unwrap()
        };
        let s = app::http_server(self.pod(pod), any);
        self.servers.push(s);
    }

    /// Symbolic name of an address: a pod letter or the literal address.
    pub fn name_ip(&self, ip: IpAddr) -> String {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        for (letter, pod) in [("A", &self.a), ("B", &self.b), ("C", &self.c)] {
            if ip == IpAddr::V4(pod.ip4) {
                return letter.into();
            }
            if Some(ip) == pod.ip6.map(IpAddr::V6) {
                return format!("{letter}6");
            }
        }
        ip.to_string()
    }

    pub fn name_sa(&self, sa: SocketAddr) -> String {
        format!("{}:{}", self.name_ip(sa.ip()), sa.port())
    }

    /// The address `target` resolves to in this world.
    pub fn addr(&self, t: Target) -> SocketAddr {
        let ip: IpAddr = match t.host {
            Host::Pod(p) if self.ipv6 => IpAddr::V6(self.pod(p).ip6.expect("pod has IPv6")),
            Host::Pod(p) => IpAddr::V4(self.pod(p).ip4),
            Host::PodV4Mapped(p) => IpAddr::V6(self.pod(p).ip4.to_ipv6_mapped()),
            Host::Ip(s) => s.parse().expect("literal address"),
            Host::Addr(sa) => return sa,
        };
        SocketAddr::new(ip, t.port)
    }

    /// Hops are counted in what each sidecar side forwarded: one connection
    /// (tcp mode) or one request (http mode) per probe it carried, the
    /// same measure in the reference run and the meshlane run.
    fn forwarded(&self) -> [u64; 4] {
        let s = |sc: &Option<AnySidecar>, f: &str| sc.as_ref().map_or(0, |s| s.forwarded(f));
        [
            s(&self.sidecar_a, "outbound"),
            s(&self.sidecar_a, "inbound"),
            s(&self.sidecar_b, "outbound"),
            s(&self.sidecar_b, "inbound"),
        ]
    }

    /// Runs one probe and describes what happened.
    pub fn observe(&self, p: &Probe) -> Observation {
        let before = self.forwarded();
        let seen = app::probe(self.pod(p.from), self.addr(p.to), p.who);
        let after = self.forwarded();
        let names = ["A.outbound", "A.inbound", "B.outbound", "B.inbound"];
        let mut hops = Vec::new();
        for i in 0..4 {
            let d = after[i].saturating_sub(before[i]);
            if d == 1 {
                hops.push(names[i].to_string());
            } else if d > 1 {
                hops.push(format!("{}x{d}", names[i]));
            }
        }
        let outcome = match seen {
            Seen::Served {
                server_peer,
                server_local,
                app_peer,
            } => format!(
                "server peer {} local {}, app getpeername {}",
                self.name_ip(server_peer),
                self.name_sa(server_local),
                self.name_sa(app_peer)
            ),
            Seen::Refused => "refused".into(),
            Seen::Failed(e) => format!("failed: {e}"),
        };
        Observation {
            probe: p.label.clone(),
            hops,
            outcome,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodName {
    A,
    B,
    C,
}

#[derive(Debug, Clone, Copy)]
pub enum Host {
    Pod(PodName),
    /// The pod's IPv4 address as ::ffff:a.b.c.d (an AF_INET6 socket).
    PodV4Mapped(PodName),
    Ip(&'static str),
    /// Any address, with an IPv6 scope (link-local) where it has one.
    Addr(SocketAddr),
}

#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// One connection to make.
#[derive(Debug, Clone)]
pub struct Probe {
    pub label: String,
    pub from: PodName,
    pub to: Target,
    pub who: As,
}

impl Probe {
    pub fn new(from: PodName, host: Host, port: u16) -> Self {
        let label = format!(
            "{from:?} -> {}:{port}",
            match host {
                Host::Pod(p) => format!("{p:?}"),
                Host::PodV4Mapped(p) => format!("::ffff:{p:?}"),
                Host::Ip(s) => s.to_string(),
                Host::Addr(sa) => sa.ip().to_string(),
            }
        );
        Self {
            label,
            from,
            to: Target { host, port },
            who: As::default(),
        }
    }

    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.who.ids = Some((uid, gid));
        self.label = format!("{} as {uid}:{gid}", self.label);
        self
    }

    /// Connects over MPTCP.
    pub fn mptcp(mut self) -> Self {
        self.who.mptcp = true;
        self.label = format!("{} mptcp", self.label);
        self
    }

    /// Runs the client with real and effective ids that differ.
    pub fn run_as_split(mut self, ruid: u32, euid: u32, rgid: u32, egid: u32) -> Self {
        self.who.split_ids = Some(((ruid, euid), (rgid, egid)));
        self.label = format!("{} as r{ruid}/e{euid}:r{rgid}/e{egid}", self.label);
        self
    }
}

/// What one probe looked like from outside the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub probe: String,
    pub hops: Vec<String>,
    pub outcome: String,
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<34} hops [{}] {}",
            self.probe,
            self.hops.join(", "),
            self.outcome
        )
    }
}
