//! The benchmark's `bypass` mode takes its decisions from the live path:
//! the testbed's control plane (the sim's ADS server) serves the client's
//! config, and the agent's own bypass chain, run in process
//! (`meshlane::bench::live`), streams it, decides and writes the kernel's
//! service map; setup waits for that and fails with one clear reason when
//! the config keeps a destination on the sidecar or the stream never syncs.
//!
//! Checked: a testbed with the bypass mode reports its decisions as live,
//! the client reaches the server through the VIP with its sidecar unused;
//! the control plane then putting an RBAC filter on every service makes
//! the same check fail naming the filter, the chain remove the kernel's
//! entries, and (with Envoy, which takes the same config over ADS) the
//! sidecar carry the connection to the endpoint EDS gave it. The chain on
//! its own: a config with RBAC fails at once (SIDECAR, with the reason), a
//! control plane that never answers times out naming the stream's state.
//! Needs root.
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::require_root_env;
use meshlane::bench::live::{self, LiveAgent, LiveError};
use meshlane::bench::testbed::Testbed;
use meshlane::bench::{Mode, Placement, Workload};
use meshlane::datapath::BypassServicesMap;
use meshlane::pods::PodSpec;
use meshlane::sim::xds::policy::add_rbac;
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, Protocol, Service};
use meshlane::sim::{unique_tag, Node, NodeOptions, Sidecar, SidecarMode, SidecarProxy};

/// One echo of 64 bytes from the client to `to`; Err names what failed.
fn echo_once(tb: &Testbed, to: SocketAddr) -> Result<(), String> {
    let set = tb.set(Mode::Bypass, Workload::Rtt64).expect("bypass pods");
    set.client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            s.write_all(&[7u8; 64]).map_err(|e| format!("write: {e}"))?;
            let mut back = [0u8; 64];
            s.read_exact(&mut back).map_err(|e| format!("echo: {e}"))?;
            Ok(())
        })
        .map_err(|e| format!("entering the client pod: {e}"))?
}

/// Connections the client's sidecar carried to `svc`: Envoy's upstream
/// connections of the service's cluster, HAProxy's outbound sessions.
fn carried(sidecar: &Sidecar, svc: &Service) -> u64 {
    match sidecar.proxy {
        SidecarProxy::Envoy => sidecar
            .envoy_stat(&format!("cluster.{}.upstream_cx_total", svc.cluster()))
            .unwrap_or(0),
        SidecarProxy::Haproxy => sidecar.sessions("outbound"),
    }
}

fn kernel_entries(tb: &Testbed, cookie: u64) -> usize {
    BypassServicesMap::open(&tb.node.layout)
        .map(|m| m.keys())
        .unwrap_or_default()
        .iter()
        .filter(|k| k.netns == cookie)
        .count()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bypass_mode_is_decided_live_and_follows_the_control_plane() {
    require_root_env();
    let proxy = SidecarProxy::detect();
    let tb = Testbed::new(&[Mode::Bypass], false, None, false, proxy).expect("testbed");
    let provenance = tb.bypass_provenance().expect("bypass built");
    assert!(
        provenance.starts_with("decided live over ADS"),
        "{provenance}"
    );
    let set = tb.set(Mode::Bypass, Workload::Rtt64).expect("bypass pods");
    let client = set.bypass.clone().expect("the bypass client");
    let n = client.services.len();
    assert!(n >= 3, "a service per workload port: {n}");
    assert!(
        provenance.contains(&format!(
            "{n} of {n} service destinations BYPASS, {n} in the kernel"
        )),
        "{provenance}"
    );
    assert_eq!(kernel_entries(&tb, client.cookie), n);

    // Bypassed: the VIP has no route, only the kernel's rewrite reaches
    // the server; the client's sidecar sees nothing.
    let (_, vip) = tb
        .route(Mode::Bypass, Workload::Rtt64, Placement::SameNode)
        .expect("route");
    let svc = client
        .services
        .iter()
        .find(|s| SocketAddr::new(s.vip, s.port) == vip)
        .expect("the same-node service")
        .clone();
    echo_once(&tb, vip).expect("bypassed echo");
    let sidecar = &set.sidecars[0];
    assert_eq!(carried(sidecar, &svc), 0, "bypassed flows skip the sidecar");

    // The control plane puts RBAC on every service: the live path keeps
    // them on the sidecar and the setup check says why.
    let ads = tb.control_plane.as_ref().expect("control plane");
    let mut snap = client.snapshot("2");
    for s in &client.services {
        add_rbac(&mut snap, s).expect("RBAC");
    }
    for id in &client.node_ids {
        ads.update_node(id, snap.clone());
    }
    let mut err = String::new();
    wait_until("the live check fails", Duration::from_secs(15), || match tb
        .bypass_live(Duration::from_millis(100))
    {
        Ok(_) => false,
        Err(e) => {
            err = e.to_string();
            true
        }
    });
    assert!(err.contains("on the sidecar"), "{err}");
    assert!(err.contains("rbac"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    wait_until("the kernel entries removed", Duration::from_secs(5), || {
        kernel_entries(&tb, client.cookie) == 0
    });
    let provenance = tb.bypass_provenance().expect("bypass built");
    assert!(provenance.starts_with("NOT live"), "{provenance}");
    if proxy == SidecarProxy::Envoy {
        // Envoy has the same config: it resolves the VIP through EDS.
        echo_once(&tb, vip).expect("echo through Envoy");
        assert_eq!(carried(sidecar, &svc), 1, "the sidecar carried it");
    }
}

/// A node, one registered client pod and a control plane serving it one
/// TCP service (RBAC'd when `rbac`); the chain started on it.
struct Alone {
    agent: LiveAgent,
    _ads: Option<AdsServer>,
    _dir: tempfile::TempDir,
    _pod: meshlane::sim::Pod,
    node: Node,
    key: meshlane::pods::source::PodKey,
    cookie: u64,
}

const VIP: &str = "10.96.201.1:7000";

fn alone(serve: Option<bool>) -> Alone {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let pod = node.pod("solo").expect("pod");
    // Intercept (PodSpec::istio's mode), named as the pod source names it.
    let spec = PodSpec::istio(format!("{}/{}", live::NAMESPACE, pod.name));
    let cookie = node.register(&pod, &spec).expect("register").netns_cookie;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_dir = PathBuf::from("/run/meshlane-test").join(unique_tag("alone-ads-"));
    let info = live::pod_info(&pod, &spec);
    let vip: SocketAddr = VIP.parse().unwrap();
    let svc = Service {
        host: "solo.bench.svc.cluster.local".into(),
        vip: vip.ip(),
        port: vip.port(),
        protocol: Protocol::Tcp,
        endpoints: vec![SocketAddr::new(IpAddr::from([10, 244, 9, 9]), 7000)],
    };
    let (ads, socket) = match serve {
        Some(rbac) => {
            let mut snap =
                sidecar_snapshot("1", SidecarMode::Tcp, false, std::slice::from_ref(&svc));
            if rbac {
                add_rbac(&mut snap, &svc).expect("RBAC");
            }
            let ads = AdsServer::start(&socket_dir, snap).expect("control plane");
            let socket = ads.socket().to_path_buf();
            (Some(ads), socket)
        }
        // Nothing listens there.
        None => (None, dir.path().join("nobody.sock")),
    };
    let agent = LiveAgent::start(&node.layout, &socket).expect("in-process agent");
    agent.add_pod(info.clone());
    Alone {
        agent,
        _ads: ads,
        _dir: dir,
        _pod: pod,
        node,
        key: info.key,
        cookie,
    }
}

#[test]
fn the_live_wait_bypasses_a_plain_service_and_refuses_an_rbac_one() {
    let a = alone(Some(false));
    let vip: SocketAddr = VIP.parse().unwrap();
    let status = a
        .agent
        .wait_bypassed(&a.key, a.cookie, &[vip], Duration::from_secs(20))
        .expect("bypassed");
    assert_eq!((status.bypass, status.kernel_entries), (1, 1), "{status:?}");
    drop(a);

    let a = alone(Some(true));
    let started = Instant::now();
    let err = a
        .agent
        .wait_bypassed(&a.key, a.cookie, &[vip], Duration::from_secs(20))
        .expect_err("RBAC keeps the sidecar");
    assert!(matches!(err, LiveError::Sidecar { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(VIP) && text.contains("rbac"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "fails once decided"
    );
    // A few sync rounds later, still nothing written for it.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        BypassServicesMap::open(&a.node.layout)
            .expect("service map")
            .keys()
            .is_empty(),
        "nothing written for a SIDECAR destination"
    );
}

#[test]
fn the_live_wait_times_out_naming_the_stream_when_nothing_answers() {
    let a = alone(None);
    let vip: SocketAddr = VIP.parse().unwrap();
    let err = a
        .agent
        .wait_bypassed(&a.key, a.cookie, &[vip], Duration::from_secs(3))
        .expect_err("no control plane");
    assert!(matches!(err, LiveError::Timeout { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("connected false"), "{text}");
    assert!(text.contains("nobody.sock"), "{text}");
}
