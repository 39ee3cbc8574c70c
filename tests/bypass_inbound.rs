//! Issue 12, item 3: inbound at a meshed destination. A real agent
//! (simulated node, static pod source, bypass on) follows the sim's ADS
//! server; each destination pod has an Envoy sidecar fed the same config
//! (its own inbound ports: `virtualInbound` chains per port).
//!
//! Pods: `dst` (meshed, bypass allowed: port 9000 plain pass-through,
//! 9001 with an AuthorizationPolicy (RBAC), 9002 PERMISSIVE (a TLS chain
//! beside the plaintext one)), `opt` (meshed, opted out with
//! `meshlane.io/bypass: "false"`, 9000 plain), `other` (meshed, bypass
//! allowed, its own config: 9000 with RBAC), and `cli`, an unmeshed
//! client: a flow from it arrives at a pod's IP exactly as a bypassed one
//! does. Each server reports the peer address it saw: the client's IP
//! when the flow reached the app directly, 127.0.0.6 when the sidecar
//! forwarded it.
//!
//! Checked, with `inboundPassthrough` on: dst:9000 reaches the app
//! directly (bytes exact, dst's Envoy counts nothing, the kernel counts
//! it), dst:9001, dst:9002, opt:9000 and other:9000 keep the sidecar;
//! the agent killed: steering again once the grace is over, back with the
//! agent; dst removed from the pod source: its entries go. With the
//! policy off (the default): everything keeps the sidecar and the map is
//! empty. Needs root and Envoy.
mod common;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::backend_id::{echo_until_eof, serve_each};
use common::{envoy_available, require_root_env};
use meshlane::datapath::{InboundPassKey, InboundPassMap, PinLayout};
use meshlane::sim::xds::inbound::{add_inbound_port, InboundShape};
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, Snapshot};
use meshlane::sim::{unique_tag, Node, Pod, Sidecar, SidecarMode, SidecarOptions, SidecarProxy};
use support::{node_without_install, AgentProcess};

const GRACE_SECONDS: u64 = 2;
const PAYLOAD: usize = 200_000;

/// The sidecar forwards to the app from here (Istio's inbound bind).
const SIDECAR_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

fn snapshot_of(ports: &[(u16, InboundShape)]) -> Snapshot {
    let mut snap = sidecar_snapshot("1", SidecarMode::Tcp, false, &[]);
    for (port, shape) in ports {
        add_inbound_port(&mut snap, *port, *shape).expect("inbound port");
    }
    snap
}

/// An echo server in `pod` on `port` that reports each peer address.
fn peer_server(pod: &Pod, port: u16) -> mpsc::Receiver<IpAddr> {
    let (tx, rx) = mpsc::channel();
    serve_each(pod, SocketAddr::from(([0, 0, 0, 0], port)), move |mut s| {
        if let Ok(peer) = s.peer_addr() {
            let _ = tx.send(peer.ip());
        }
        if echo_until_eof(&mut s) {
            let _ = s.shutdown(Shutdown::Write);
        }
    });
    rx
}

/// Sends `PAYLOAD` bytes from `cli` to `to`, half-closes, and checks the
/// echo byte for byte.
fn exchange(cli: &Pod, to: SocketAddr) {
    cli.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let sent: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
        let mut reader = s.try_clone().expect("clone");
        let back = std::thread::spawn(move || {
            let mut back = Vec::new();
            reader.read_to_end(&mut back).expect("echo");
            back
        });
        s.write_all(&sent).expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let back = back.join().expect("reader");
        assert_eq!(back.len(), PAYLOAD, "echo length via {to}");
        assert!(back == sent, "echo bytes via {to}");
    })
    .expect("entering the client pod");
}

struct Mesh {
    node: Node,
    dir: tempfile::TempDir,
    cli: Pod,
    dst: Pod,
    opt: Pod,
    other: Pod,
    dst_envoy: Sidecar,
    opt_envoy: Sidecar,
    other_envoy: Sidecar,
    /// Peer addresses per (pod, port) server.
    peers: Vec<((String, u16), mpsc::Receiver<IpAddr>)>,
    ads: AdsServer,
    pods_file: PathBuf,
    admin: SocketAddr,
}

impl Mesh {
    fn start() -> Option<Self> {
        require_root_env();
        if !envoy_available("bypass_inbound") {
            return None;
        }
        let mut node = node_without_install();
        let cli = node.pod("cli").expect("pod");
        let dst = node.pod("dst").expect("pod");
        let opt = node.pod("opt").expect("pod");
        let other = node.pod("other").expect("pod");
        let mut peers = Vec::new();
        for (pod, name, ports) in [
            (&dst, "dst", &[9000u16, 9001, 9002][..]),
            (&opt, "opt", &[9000][..]),
            (&other, "other", &[9000][..]),
        ] {
            for port in ports {
                peers.push(((name.to_string(), *port), peer_server(pod, *port)));
            }
        }
        let ads = AdsServer::start(
            &PathBuf::from("/run/meshlane-test").join(unique_tag("ads-")),
            snapshot_of(&[
                (9000, InboundShape::Plain),
                (9001, InboundShape::Rbac),
                (9002, InboundShape::Permissive),
            ]),
        )
        .expect("control plane");
        // other's own config (its Envoy's node id and the agent's for it).
        let scoped = snapshot_of(&[(9000, InboundShape::Rbac)]);
        for id in [
            format!(
                "sidecar~{}~{}.default~default.svc.cluster.local",
                other.ip4, other.name
            ),
            format!(
                "sidecar~{}~other.default~default.svc.cluster.local",
                other.ip4
            ),
        ] {
            ads.update_node(&id, scoped.clone());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pods_file = dir.path().join("pods.yaml");
        std::fs::write(&pods_file, pods_yaml(&dst, &opt, &other, true)).expect("pod file");
        let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let options = SidecarOptions::istio(SidecarProxy::Envoy, SidecarMode::Tcp);
        let dst_envoy = Sidecar::launch_ads(&dst, &options, ads.socket()).expect("Envoy in dst");
        let opt_envoy = Sidecar::launch_ads(&opt, &options, ads.socket()).expect("Envoy in opt");
        let other_envoy =
            Sidecar::launch_ads(&other, &options, ads.socket()).expect("Envoy in other");
        Some(Self {
            node,
            dir,
            cli,
            dst,
            opt,
            other,
            dst_envoy,
            opt_envoy,
            other_envoy,
            peers,
            ads,
            pods_file,
            admin,
        })
    }

    /// An agent config: bypass on, `inboundPassthrough` as given.
    fn config(&self, inbound_passthrough: bool) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("agent-{inbound_passthrough}.yaml"));
        std::fs::write(
            &path,
            format!(
                "adminAddr: {}\npodSource:\n  kind: static\n  staticFile: {}\nbypass:\n  enabled: true\n  policies:\n    inboundPassthrough: {inbound_passthrough}\nxds:\n  address: unix:{}\n  initialBackoffMillis: 50\n  maxBackoffSeconds: 1\n  staleGraceSeconds: {GRACE_SECONDS}\n",
                self.admin,
                self.pods_file.display(),
                self.ads.socket().display()
            ),
        )
        .expect("agent config");
        path
    }

    fn agent(&self, config: &Path) -> AgentProcess {
        AgentProcess::start_with(
            self.node.layout.root(),
            self.node.cgroup.path(),
            &["--config", &config.to_string_lossy()],
        )
        .expect("agent")
    }

    fn layout(&self) -> &PinLayout {
        &self.node.layout
    }

    fn cookie(&self, name: &str) -> Option<u64> {
        support::registered_cookie(self.layout(), name)
    }

    fn kernel_entries(&self) -> BTreeSet<InboundPassKey> {
        InboundPassMap::open(self.layout())
            .map(|m| m.keys().into_iter().collect())
            .unwrap_or_default()
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        match name {
            "dst" => &self.dst,
            "opt" => &self.opt,
            _ => &self.other,
        }
    }

    fn envoy(&self, name: &str) -> &Sidecar {
        match name {
            "dst" => &self.dst_envoy,
            "opt" => &self.opt_envoy,
            _ => &self.other_envoy,
        }
    }

    /// Connections the pod's Envoy opened to the app on `port`.
    fn sidecar_cx(&self, name: &str, port: u16) -> u64 {
        self.envoy(name)
            .envoy_stat(&format!("cluster.inbound|{port}||.upstream_cx_total"))
            .unwrap_or(0)
    }

    /// One exchange from cli to (pod, port); where it went: the peer the
    /// app saw, and whether the pod's Envoy carried it.
    fn route(&self, name: &str, port: u16) -> (IpAddr, bool) {
        let before = self.sidecar_cx(name, port);
        let to = SocketAddr::new(IpAddr::V4(self.pod(name).ip4), port);
        exchange(&self.cli, to);
        let rx = &self
            .peers
            .iter()
            .find(|(k, _)| k.0 == name && k.1 == port)
            .expect("a server there")
            .1;
        let peer = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the app saw the connection");
        (peer, self.sidecar_cx(name, port) > before)
    }

    /// The flow reached the app straight from the client.
    fn assert_direct(&self, name: &str, port: u16) {
        let passed = self.node.counter("inbound_passthrough");
        let listener_before = self.inbound_listener_cx(name);
        let (peer, via_sidecar) = self.route(name, port);
        assert_eq!(
            peer,
            IpAddr::V4(self.cli.ip4),
            "{name}:{port}: the app saw the client"
        );
        assert!(
            !via_sidecar,
            "{name}:{port}: the sidecar opened no connection"
        );
        assert_eq!(
            self.inbound_listener_cx(name),
            listener_before,
            "{name}:{port}: the sidecar's inbound listener took nothing"
        );
        assert_eq!(self.node.counter("inbound_passthrough"), passed + 1);
    }

    /// The flow went through the pod's sidecar.
    fn assert_sidecar(&self, name: &str, port: u16) {
        let (peer, via_sidecar) = self.route(name, port);
        assert_eq!(
            peer, SIDECAR_SOURCE,
            "{name}:{port}: forwarded by the sidecar"
        );
        assert!(via_sidecar, "{name}:{port}: counted by the sidecar");
    }

    fn inbound_listener_cx(&self, name: &str) -> u64 {
        self.envoy(name)
            .envoy_stat("listener.inbound.downstream_cx_total")
            .unwrap_or(0)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let body = support::admin_get(self.admin, "/metrics")?.1;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }
}

/// The static pod source's file: opt opted out; dst only when asked.
fn pods_yaml(dst: &Pod, opt: &Pod, other: &Pod, with_dst: bool) -> String {
    let entry = |name: &str, p: &Pod, extra: &str| {
        format!(
            "- namespace: default\n  name: {name}\n  netns: {}\n  ips: [{}]\n{extra}",
            p.netns.display(),
            p.ip4
        )
    };
    let mut out = String::from("pods:\n");
    if with_dst {
        out.push_str(&entry("dst", dst, ""));
    }
    out.push_str(&entry(
        "opt",
        opt,
        "  annotations:\n    meshlane.io/bypass: \"false\"\n",
    ));
    out.push_str(&entry("other", other, ""));
    out
}

#[test]
fn only_a_pods_own_plain_pass_through_ports_skip_its_sidecar() {
    let Some(m) = Mesh::start() else { return };
    let mut agent = m.agent(&m.config(true));
    m.wait("dst's registration", Duration::from_secs(30), || {
        m.cookie("default/dst").is_some()
    });
    let dst = m.cookie("default/dst").expect("dst registered");
    let want: BTreeSet<InboundPassKey> = [InboundPassKey {
        netns: dst,
        port: 9000,
    }]
    .into();
    m.wait("dst:9000's entry", Duration::from_secs(30), || {
        m.kernel_entries() == want
    });
    // Give the agent a few more rounds: still only dst:9000 (opt opted
    // out, other's 9000 has RBAC in its own config).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(m.kernel_entries(), want);
    assert_eq!(
        m.metric("meshlane_bypass_inbound_passthrough_ports "),
        Some(1.0)
    );

    m.assert_direct("dst", 9000);
    m.assert_sidecar("dst", 9001); // RBAC
    m.assert_sidecar("dst", 9002); // PERMISSIVE: a TLS chain
    m.assert_sidecar("opt", 9000); // opted out
    m.assert_sidecar("other", 9000); // dst's entry is not other's
    m.assert_direct("dst", 9000);

    // The agent killed: pass-through until the grace, then the sidecar.
    agent.kill9();
    std::thread::sleep(Duration::from_millis(GRACE_SECONDS * 1000 + 500));
    m.assert_sidecar("dst", 9000);
    // Back: the new agent clears the map (the old entry goes at its
    // start) and writes it again once dst's stream is synced; its own
    // gauge says when.
    let _agent = m.agent(&m.config(true));
    m.wait(
        "dst:9000's entry from the new agent",
        Duration::from_secs(30),
        || m.metric("meshlane_bypass_inbound_passthrough_ports ") == Some(1.0),
    );
    assert_eq!(m.kernel_entries(), want);
    m.assert_direct("dst", 9000);

    // dst leaves the pod source: its registration and its entries go.
    let without_dst = pods_yaml(&m.dst, &m.opt, &m.other, false);
    std::fs::write(&m.pods_file, without_dst).expect("pod file");
    m.wait("dst released", Duration::from_secs(30), || {
        m.cookie("default/dst").is_none()
    });
    m.wait("dst's entries gone", Duration::from_secs(5), || {
        m.kernel_entries().is_empty()
    });
}

#[test]
fn with_the_policy_off_every_inbound_flow_keeps_the_sidecar() {
    let Some(m) = Mesh::start() else { return };
    let _agent = m.agent(&m.config(false));
    m.wait("every stream synced", Duration::from_secs(30), || {
        m.metric("meshlane_xds_synced_streams ")
            .is_some_and(|n| n >= 2.0)
    });
    // Several sync rounds with dst's decisions known.
    std::thread::sleep(Duration::from_secs(1));
    assert!(m.kernel_entries().is_empty());
    assert_eq!(
        m.metric("meshlane_bypass_inbound_passthrough_ports "),
        Some(0.0)
    );
    let passed = m.node.counter("inbound_passthrough");
    m.assert_sidecar("dst", 9000);
    m.assert_sidecar("dst", 9001);
    assert_eq!(m.node.counter("inbound_passthrough"), passed);
}
