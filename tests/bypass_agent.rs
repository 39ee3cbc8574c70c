//! Issue 12 end to end: a real agent (simulated node, static pod source,
//! bypass on) follows the sim's ADS server and writes the kernel's service
//! map; Envoy sidecars fed by the same server carry what is not bypassed.
//!
//! Services: `plain` (TCP, two plaintext endpoints), `secure` (its pods
//! meshed: `tlsMode: istio`, so mTLS) and `guarded` (an RBAC filter).
//! Pods: `web` (meshed, bypass allowed) and `opt` (meshed, opted out with
//! `meshlane.io/bypass: "false"`), each with its Envoy; backends `db1`,
//! `db2` (not meshed) answer their id byte, then echo.
//!
//! Checked: web -> plain goes straight to an endpoint (web's Envoy never
//! sees it, getpeername is the VIP, Istio's TCP metrics count it); secure,
//! guarded and anything from opt take the sidecar; an EDS update removing
//! an endpoint reaches every new connection while an open one keeps its
//! endpoint; a full service map keeps the new destination on the sidecar,
//! counted, with nothing refused, and so does a full endpoint-set map; a
//! fault on an HTTP service's route (`faulty`) keeps it on the sidecar;
//! under REGISTRY_ONLY an unknown destination is dropped by the sidecar,
//! never bypassed (TCP: accepted and closed; HTTP: istiod's `block_all`
//! 502), while `plain` still is; the agent killed: bypass until the grace,
//! then the sidecar, back: bypass; the xDS stream down past the grace:
//! the sidecar; bypass disabled: the sidecar at once. Needs root and
//! Envoy.
mod common;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::backend_id::{dial, id_server};
use common::{envoy_available, listen, require_root_env};
use meshlane::datapath::{
    BypassEndpoint, BypassEndpointsMap, BypassServicesMap, PinLayout, ServiceKey,
};
use meshlane::sim::xds::policy::{add_fault, add_rbac, mark_meshed, registry_only};
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, Protocol, Service, Snapshot};
use meshlane::sim::{unique_tag, Node, Pod, Sidecar, SidecarMode, SidecarOptions, SidecarProxy};
use support::{node_without_install, AgentProcess};

const PLAIN: &str = "plain.default.svc.cluster.local";
const GRACE_SECONDS: u64 = 2;

fn plain_vip() -> SocketAddr {
    "10.96.0.10:5432".parse().unwrap()
}
fn secure_vip() -> SocketAddr {
    "10.96.0.11:6379".parse().unwrap()
}
fn guarded_vip() -> SocketAddr {
    "10.96.0.12:7000".parse().unwrap()
}
fn extra_vip() -> SocketAddr {
    "10.96.0.13:5432".parse().unwrap()
}
fn faulty_vip() -> SocketAddr {
    "10.96.0.14:8000".parse().unwrap()
}
const FAULTY: &str = "faulty.default.svc.cluster.local";

fn service(host: &str, vip: SocketAddr, endpoints: Vec<SocketAddr>) -> Service {
    Service {
        host: format!("{host}.default.svc.cluster.local"),
        vip: vip.ip(),
        port: vip.port(),
        protocol: Protocol::Tcp,
        endpoints,
    }
}

/// The control plane's config: `plain` with `plain_eps`, `secure`,
/// `guarded`, and `extra` when asked.
fn snapshot(version: &str, plain_eps: &[SocketAddr], db1: IpAddr, extra: bool) -> Snapshot {
    let at = |port| SocketAddr::new(db1, port);
    let mut svcs = vec![
        service("plain", plain_vip(), plain_eps.to_vec()),
        service("secure", secure_vip(), vec![at(6379)]),
        service("guarded", guarded_vip(), vec![at(7000)]),
    ];
    if extra {
        svcs.push(service("extra", extra_vip(), vec![at(5432)]));
    }
    let mut snap = sidecar_snapshot(version, SidecarMode::Tcp, false, &svcs);
    mark_meshed(&mut snap, &svcs[1]).expect("secure is meshed");
    add_rbac(&mut snap, &svcs[2]).expect("guarded has RBAC");
    snap
}

/// `plain` and the HTTP service `faulty` (db1:8000) with a fault delay
/// on its route; `registry_only`: Istio's REGISTRY_ONLY outbound policy.
fn fault_snapshot(version: &str, m: &Mesh, registry: bool) -> Snapshot {
    let (db1, db2) = m.db(5432);
    let faulty = Service {
        protocol: Protocol::Http,
        ..service("faulty", faulty_vip(), vec![m.db(8000).0])
    };
    let svcs = [service("plain", plain_vip(), vec![db1, db2]), faulty];
    let mut snap = sidecar_snapshot(version, SidecarMode::Tcp, false, &svcs);
    add_fault(&mut snap, &svcs[1], 50).expect("faulty has a fault");
    if registry {
        registry_only(&mut snap).expect("REGISTRY_ONLY");
    }
    snap
}

/// An HTTP/1.1 server in `pod` on `port`: every request gets 200 and the
/// body `body`, then the connection closes.
fn http_server(pod: &Pod, port: u16, body: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.thread(move || {
        let l = listen(SocketAddr::from(([0, 0, 0, 0], port)));
        tx.send(()).expect("report");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    })
    .expect("server thread");
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// One GET from `pod` to `to` (Host `host`): the whole response.
fn get(pod: &Pod, to: SocketAddr, host: &'static str) -> String {
    pod.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(
            format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .expect("request");
        let mut back = String::new();
        s.read_to_string(&mut back).expect("response");
        back
    })
    .expect("entering the pod")
}

/// Connects from `pod` (the connect must succeed) and reads one byte:
/// None when the peer closes without a byte (Envoy's blackhole).
fn first_byte(pod: &Pod, to: SocketAddr) -> Option<u8> {
    pod.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {to} refused: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut id = [0u8; 1];
        match s.read(&mut id) {
            Ok(1) => Some(id[0]),
            _ => None,
        }
    })
    .expect("entering the pod")
}

/// One conversation from `pod`: the id that answered, getpeername, and
/// the echo of `payload` bytes checked.
fn talk(pod: &Pod, to: SocketAddr, payload: usize) -> (u8, SocketAddr) {
    pod.run(move || {
        let (mut s, id) = dial(to);
        let peer = s.peer_addr().expect("getpeername");
        s.write_all(&vec![3u8; payload]).expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("echo");
        assert_eq!(back.len(), payload, "echo via {id}");
        (id, peer)
    })
    .expect("entering the pod")
}

/// Upstream connections `envoy` opened for the TCP service `name` (its
/// cluster `outbound|<port>||<name>.default.svc.cluster.local`).
fn cluster_cx(envoy: &Sidecar, name: &str) -> u64 {
    let port = match name {
        "plain" | "extra" => 5432,
        "secure" => 6379,
        _ => 7000,
    };
    envoy
        .envoy_stat(&format!(
            "cluster.outbound|{port}||{name}.default.svc.cluster.local.upstream_cx_total"
        ))
        .unwrap_or(0)
}

fn scrape(addr: SocketAddr) -> String {
    support::admin_get(addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The value of the first series starting with `prefix` (labels included).
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

struct Mesh {
    node: Node,
    dir: tempfile::TempDir,
    web: Pod,
    opt: Pod,
    db1: Pod,
    db2: Pod,
    web_envoy: Sidecar,
    opt_envoy: Sidecar,
    ads: Option<AdsServer>,
    admin: SocketAddr,
    config: PathBuf,
}

impl Mesh {
    /// After a map had no room: `extra` gets its entry and is bypassed.
    fn extra_bypassed_once_there_is_room(&self) {
        self.wait("retried once there is room", Duration::from_secs(5), || {
            self.kernel_endpoints("default/web", extra_vip()).is_some()
        });
        let before = self.web_cx("extra");
        assert_eq!(talk(&self.web, extra_vip(), 10), (b'1', extra_vip()));
        assert_eq!(self.web_cx("extra"), before, "bypassed once written");
    }

    fn start() -> Option<Self> {
        require_root_env();
        if !envoy_available("bypass_agent") {
            return None;
        }
        let mut node = node_without_install();
        let web = node.pod("web").expect("pod");
        let opt = node.pod("opt").expect("pod");
        let db1 = node.pod("db1").expect("pod");
        let db2 = node.pod("db2").expect("pod");
        for port in [5432, 6379, 7000] {
            id_server(&db1, port, b'1');
        }
        id_server(&db2, 5432, b'2');
        let dir = tempfile::tempdir().expect("tempdir");
        let eps = [
            SocketAddr::new(IpAddr::V4(db1.ip4), 5432),
            SocketAddr::new(IpAddr::V4(db2.ip4), 5432),
        ];
        let ads = AdsServer::start(
            &PathBuf::from("/run/meshlane-test").join(unique_tag("ads-")),
            snapshot("1", &eps, IpAddr::V4(db1.ip4), false),
        )
        .expect("control plane");
        let pods = dir.path().join("pods.yaml");
        std::fs::write(
            &pods,
            format!(
                "pods:\n- namespace: default\n  name: web\n  netns: {}\n  ips: [{}]\n- namespace: default\n  name: opt\n  netns: {}\n  ips: [{}]\n  annotations:\n    meshlane.io/bypass: \"false\"\n",
                web.netns.display(),
                web.ip4,
                opt.netns.display(),
                opt.ip4
            ),
        )
        .expect("pod file");
        let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let config = dir.path().join("agent.yaml");
        let mesh_config = |bypass: bool| {
            format!(
                "adminAddr: {admin}\npodSource:\n  kind: static\n  staticFile: {}\nbypass:\n  enabled: {bypass}\nxds:\n  address: unix:{}\n  initialBackoffMillis: 50\n  maxBackoffSeconds: 1\n  staleGraceSeconds: {GRACE_SECONDS}\n",
                pods.display(),
                ads.socket().display()
            )
        };
        std::fs::write(&config, mesh_config(true)).expect("agent config");
        std::fs::write(dir.path().join("agent-off.yaml"), mesh_config(false)).expect("config");
        let options = SidecarOptions::istio(SidecarProxy::Envoy, SidecarMode::Tcp);
        let web_envoy = Sidecar::launch_ads(&web, &options, ads.socket()).expect("Envoy in web");
        let opt_envoy = Sidecar::launch_ads(&opt, &options, ads.socket()).expect("Envoy in opt");
        Some(Self {
            node,
            dir,
            web,
            opt,
            db1,
            db2,
            web_envoy,
            opt_envoy,
            ads: Some(ads),
            admin,
            config,
        })
    }

    fn root(&self) -> &Path {
        self.node.layout.root()
    }

    fn agent(&self, config: &Path) -> AgentProcess {
        AgentProcess::start_with(
            self.root(),
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

    /// The endpoints the kernel holds for (pod, dest); None: no entry.
    fn kernel_endpoints(&self, pod: &str, dest: SocketAddr) -> Option<Vec<SocketAddr>> {
        let netns = self.cookie(pod)?;
        let svc = BypassServicesMap::open(self.layout()).ok()?;
        let id = svc.get(ServiceKey { netns, dest }).ok()??;
        let eps = BypassEndpointsMap::open(self.layout())
            .ok()?
            .get(id)
            .ok()??;
        Some(eps.iter().map(|e| e.addr).collect())
    }

    /// Waits until `f` holds (or panics naming `what`).
    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        t.elapsed()
    }

    /// The destinations web has entries for in the service map.
    fn web_keys(&self) -> Vec<SocketAddr> {
        let web = self.cookie("default/web").expect("web registered");
        BypassServicesMap::open(self.layout())
            .expect("svc map")
            .keys()
            .into_iter()
            .filter(|k| k.netns == web)
            .map(|k| k.dest)
            .collect()
    }

    fn web_stat(&self, name: &str) -> u64 {
        self.web_envoy.envoy_stat(name).unwrap_or(0)
    }

    /// Upstream connections web's Envoy opened for service `name`.
    fn web_cx(&self, name: &str) -> u64 {
        cluster_cx(&self.web_envoy, name)
    }

    fn db(&self, port: u16) -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::new(IpAddr::V4(self.db1.ip4), port),
            SocketAddr::new(IpAddr::V4(self.db2.ip4), port),
        )
    }

    fn ads(&self) -> &AdsServer {
        self.ads.as_ref().expect("control plane running")
    }
}

#[test]
fn plain_services_bypass_the_sidecar_and_the_rest_keep_it() {
    let Some(m) = Mesh::start() else { return };
    let _agent = m.agent(&m.config);
    let (db1, db2) = m.db(5432);
    m.wait("web's service map entry", Duration::from_secs(30), || {
        m.kernel_endpoints("default/web", plain_vip()).is_some()
    });
    assert_eq!(
        m.kernel_endpoints("default/web", plain_vip()).unwrap(),
        [db1, db2]
    );
    // Only plain is BYPASS, and opt has no stream, so no entry.
    assert!(m.kernel_endpoints("default/web", secure_vip()).is_none());
    assert!(m.kernel_endpoints("default/web", guarded_vip()).is_none());
    // Nothing else of web's is keyed: not the passthrough (or a
    // REGISTRY_ONLY blackhole), not the mTLS or RBAC services.
    let web = m.cookie("default/web").expect("web registered");
    let keyed: Vec<SocketAddr> = BypassServicesMap::open(m.layout())
        .expect("svc map")
        .keys()
        .into_iter()
        .filter(|k| k.netns == web)
        .map(|k| k.dest)
        .collect();
    assert_eq!(keyed, [plain_vip()]);
    assert!(m.cookie("default/opt").is_some(), "opt is registered");
    assert!(m.kernel_endpoints("default/opt", plain_vip()).is_none());

    // web -> plain: straight to an endpoint, 20 times.
    let before = m.web_cx("plain");
    let mut seen = [0usize; 2];
    for _ in 0..20 {
        let (id, peer) = talk(&m.web, plain_vip(), 100);
        assert_eq!(peer, plain_vip(), "getpeername is the VIP");
        seen[usize::from(id == b'2')] += 1;
    }
    assert_eq!(m.web_cx("plain"), before, "web's sidecar saw nothing");
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both endpoints chosen: {seen:?}"
    );

    // SIDECAR destinations: through web's Envoy.
    let before = m.web_cx("guarded");
    assert_eq!(talk(&m.web, guarded_vip(), 10).0, b'1');
    assert_eq!(m.web_cx("guarded"), before + 1, "RBAC: the sidecar");
    let conn = m
        .web
        .run(move || TcpStream::connect_timeout(&secure_vip(), Duration::from_secs(5)))
        .expect("pod");
    let _conn = conn.expect("connect to secure");
    m.wait("mTLS: the sidecar dials it", Duration::from_secs(5), || {
        m.web_cx("secure") >= 1
    });
    // The opted-out pod: its own sidecar.
    let before = cluster_cx(&m.opt_envoy, "plain");
    let (id, peer) = talk(&m.opt, plain_vip(), 10);
    assert!(id == b'1' || id == b'2');
    assert_eq!(peer, plain_vip());
    assert_eq!(
        cluster_cx(&m.opt_envoy, "plain"),
        before + 1,
        "opt: the sidecar"
    );

    // Istio's TCP metrics for web's 20 bypassed connections.
    let labels = format!(
        "{{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"default\",source_principal=\"unknown\",destination_service=\"{PLAIN}\",destination_service_name=\"plain\",destination_service_namespace=\"default\",destination_workload=\"unknown\",request_protocol=\"tcp\",connection_security_policy=\"none\"}}"
    );
    let mut text = String::new();
    m.wait("closes counted", Duration::from_secs(5), || {
        text = scrape(m.admin);
        series(
            &text,
            &format!("istio_tcp_connections_closed_total{labels}"),
        ) == Some(20.0)
    });
    assert_eq!(
        series(
            &text,
            &format!("istio_tcp_connections_opened_total{labels}")
        ),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        series(&text, &format!("istio_tcp_received_bytes_total{labels}")),
        Some(2000.0),
        "{text}"
    );
    assert_eq!(
        series(&text, &format!("istio_tcp_sent_bytes_total{labels}")),
        Some(2020.0),
        "{text}"
    );
    assert!(text.contains("# HELP istio_tcp_sent_bytes "), "{text}");
    assert!(
        series(&text, "meshlane_bypass_connections_rewritten_total").unwrap_or(0.0) >= 20.0,
        "{text}"
    );
    assert!(
        series(&text, "meshlane_bypass_map_entries").unwrap_or(0.0) >= 1.0,
        "{text}"
    );

    // EDS removes db2. An open connection to db2 keeps it; every new one
    // after the update is applied reaches db1 only.
    let (mut old, _) = m
        .web
        .run(move || loop {
            let (s, id) = dial(plain_vip());
            if id == b'2' {
                break (s, id);
            }
        })
        .expect("pod");
    let changed = Instant::now();
    m.ads()
        .update(snapshot("2", &[db1], IpAddr::V4(m.db1.ip4), false));
    let took = m.wait("the update applied", Duration::from_secs(10), || {
        m.kernel_endpoints("default/web", plain_vip()) == Some(vec![db1])
    });
    eprintln!(
        "EDS update reached the kernel in {took:?} ({:?} since the push)",
        changed.elapsed()
    );
    for _ in 0..200 {
        assert_eq!(
            talk(&m.web, plain_vip(), 1).0,
            b'1',
            "removed endpoint chosen"
        );
    }
    old.write_all(b"old").expect("old connection");
    let mut back = [0u8; 3];
    old.read_exact(&mut back).expect("old connection echoes");
    assert_eq!(&back, b"old");

    // A full service map: the new destination keeps the sidecar, counted;
    // nothing is refused. Room back: it is bypassed.
    let svc = BypassServicesMap::open(m.layout()).expect("svc map");
    let mut fillers = Vec::new();
    for i in 0.. {
        let k = ServiceKey {
            netns: u64::MAX - i,
            dest: "192.0.2.1:1".parse().unwrap(),
        };
        if svc.insert(k, 1).is_err() {
            break;
        }
        fillers.push(k);
    }
    assert!(fillers.len() < svc.capacity() as usize);
    m.ads()
        .update(snapshot("3", &[db1], IpAddr::V4(m.db1.ip4), true));
    m.wait("the write failure counted", Duration::from_secs(10), || {
        series(
            &scrape(m.admin),
            "meshlane_bypass_kept_sidecar{reason=\"map_write_failed\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    let before = m.web_cx("extra");
    assert_eq!(talk(&m.web, extra_vip(), 10).0, b'1', "not refused");
    assert_eq!(m.web_cx("extra"), before + 1, "the sidecar carried it");
    assert!(
        m.kernel_endpoints("default/web", plain_vip()).is_some(),
        "others kept"
    );
    for k in fillers {
        svc.remove(k).expect("room");
    }
    m.extra_bypassed_once_there_is_room();
}

#[test]
fn bypass_stops_when_the_agent_or_its_stream_is_gone_and_when_disabled() {
    let Some(mut m) = Mesh::start() else { return };
    let mut agent = m.agent(&m.config);
    m.wait("web's service map entry", Duration::from_secs(30), || {
        m.kernel_endpoints("default/web", plain_vip()).is_some()
    });
    let bypassed = |m: &Mesh| {
        let before = m.web_cx("plain");
        let (_, peer) = talk(&m.web, plain_vip(), 10);
        assert_eq!(peer, plain_vip());
        m.web_cx("plain") == before
    };
    assert!(bypassed(&m));

    // Killed: bypass goes on within the grace, then the sidecar.
    agent.kill9();
    let killed = Instant::now();
    assert!(bypassed(&m), "within the grace");
    let until = m.wait(
        "the sidecar after the grace",
        Duration::from_secs(GRACE_SECONDS + 5),
        || !bypassed(&m),
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(GRACE_SECONDS) - Duration::from_millis(300),
        "stopped bypassing before the grace: {until:?}"
    );
    // Back: bypass resumes.
    let agent = m.agent(&m.config);
    m.wait("bypass resumes", Duration::from_secs(30), || bypassed(&m));

    // The stream down past the grace: the sidecar (the agent is alive).
    drop(m.ads.take());
    m.wait(
        "the sidecar once the stream is stale",
        Duration::from_secs(GRACE_SECONDS + 10),
        || !bypassed(&m),
    );
    let text = scrape(m.admin);
    assert!(
        series(
            &text,
            "meshlane_bypass_kept_sidecar{reason=\"stream_stale\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );

    // Bypass disabled: the next agent clears the map at once.
    drop(agent);
    let off = m.dir.path().join("agent-off.yaml");
    let _agent = m.agent(&off);
    m.wait("the map cleared", Duration::from_secs(10), || {
        BypassServicesMap::open(m.layout()).is_ok_and(|s| s.keys().is_empty())
    });
    assert!(!bypassed(&m), "bypass disabled");
    let _ = &m.db2;
}

/// A fault on `faulty`'s route keeps it on the sidecar (not in web's map;
/// web's Envoy delays and forwards each request); REGISTRY_ONLY then
/// blackholes an unknown destination in the sidecar (never bypassed),
/// while `plain` is still bypassed.
#[test]
fn a_fault_route_and_a_registry_only_blackhole_keep_the_sidecar() {
    let Some(m) = Mesh::start() else { return };
    http_server(&m.db1, 8000, "1");
    m.ads().update(fault_snapshot("2", &m, false));
    let cluster = format!("cluster.outbound|8000||{FAULTY}.upstream_cx_total");
    let delays = "http.outbound_0.0.0.0_8000.fault.delays_injected";
    m.wait("web's Envoy has faulty", Duration::from_secs(10), || {
        m.web_envoy.envoy_stat(&cluster).is_some()
            && m.web_envoy.envoy_stat(delays).is_some()
            && m.web_envoy
                .envoy_stat("listener_manager.total_listeners_warming")
                == Some(0)
    });
    let _agent = m.agent(&m.config);
    m.wait("web's service map entry", Duration::from_secs(30), || {
        m.kernel_endpoints("default/web", plain_vip()).is_some()
    });
    assert_eq!(m.web_keys(), [plain_vip()], "faulty is not keyed");

    // web -> faulty: through web's Envoy, delayed by the fault.
    let (before_cx, before_delays) = (m.web_stat(&cluster), m.web_stat(delays));
    let started = Instant::now();
    let response = get(&m.web, faulty_vip(), FAULTY);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\n1"), "{response}");
    // 50 ms configured; Envoy's timers run on its cached loop time, a few
    // ms early at worst (18 ms seen for 20).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(40),
        "not delayed ({took:?}): cx {before_cx} -> {}, delays {before_delays} -> {}, keys {:?}, response {response:?}",
        m.web_stat(&cluster),
        m.web_stat(delays),
        m.web_keys()
    );
    assert_eq!(
        m.web_stat(&cluster),
        before_cx + 1,
        "the sidecar carried it"
    );
    assert_eq!(
        m.web_stat(delays),
        before_delays + 1,
        "the fault delayed it"
    );

    // ALLOW_ANY: an unknown destination (db2's own address) passes through
    // web's Envoy to db2.
    let unknown = m.db(5432).1;
    let passthrough = "cluster.PassthroughCluster.upstream_cx_total";
    let before = m.web_stat(passthrough);
    assert_eq!(first_byte(&m.web, unknown), Some(b'2'));
    assert_eq!(m.web_stat(passthrough), before + 1, "passed through");
    // The same on an HTTP port: allow_any sends it on (nothing listens on
    // db2:8000, so Envoy answers 503).
    let r = get(
        &m.web,
        SocketAddr::new(unknown.ip(), 8000),
        "unknown.example",
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");

    // REGISTRY_ONLY: the sidecar drops it (connect accepted, no byte),
    // nothing new is keyed, and plain still bypasses.
    m.ads().update(fault_snapshot("3", &m, true));
    let unknown_http = SocketAddr::new(unknown.ip(), 8000);
    m.wait(
        "the blackhole and block_all",
        Duration::from_secs(10),
        || {
            first_byte(&m.web, unknown).is_none()
                && get(&m.web, unknown_http, "unknown.example").starts_with("HTTP/1.1 502")
        },
    );
    let blackholed = "cluster.BlackHoleCluster.upstream_cx_none_healthy";
    let before = m.web_stat(blackholed);
    assert_eq!(first_byte(&m.web, unknown), None, "never bypassed to db2");
    assert_eq!(m.web_stat(blackholed), before + 1, "Envoy's blackhole");
    let r = get(&m.web, unknown_http, "unknown.example");
    assert!(r.starts_with("HTTP/1.1 502"), "block_all: {r}");
    assert_eq!(m.web_keys(), [plain_vip()], "nothing else keyed");
    let before = m.web_cx("plain");
    assert_eq!(talk(&m.web, plain_vip(), 10).1, plain_vip());
    assert_eq!(m.web_cx("plain"), before, "plain still bypassed");
}

/// A full endpoint-set map: a destination that needs a new set keeps the
/// sidecar, counted, with nothing refused; once there is room it is
/// bypassed.
#[test]
fn a_full_endpoint_set_map_keeps_the_sidecar_until_there_is_room() {
    let Some(m) = Mesh::start() else { return };
    let _agent = m.agent(&m.config);
    m.wait("web's service map entry", Duration::from_secs(30), || {
        m.kernel_endpoints("default/web", plain_vip()).is_some()
    });
    let sets = BypassEndpointsMap::open(m.layout()).expect("eps map");
    let filler = [BypassEndpoint {
        addr: "192.0.2.1:1".parse().unwrap(),
        weight: 1,
    }];
    let mut fillers = Vec::new();
    for id in (1..=u32::MAX).rev() {
        if sets.insert(id, &filler).is_err() {
            break;
        }
        fillers.push(id);
    }
    assert!(
        !fillers.is_empty() && fillers.len() < 16384,
        "{}",
        fillers.len()
    );
    let (db1, db2) = m.db(5432);
    m.ads()
        .update(snapshot("2", &[db1, db2], IpAddr::V4(m.db1.ip4), true));
    m.wait("the write failure counted", Duration::from_secs(10), || {
        series(
            &scrape(m.admin),
            "meshlane_bypass_kept_sidecar{reason=\"map_write_failed\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    assert!(m.kernel_endpoints("default/web", extra_vip()).is_none());
    let before = m.web_cx("extra");
    assert_eq!(talk(&m.web, extra_vip(), 10).0, b'1', "not refused");
    assert_eq!(m.web_cx("extra"), before + 1, "the sidecar carried it");
    let before = m.web_cx("plain");
    talk(&m.web, plain_vip(), 10);
    assert_eq!(m.web_cx("plain"), before, "plain still bypassed");
    for id in fillers {
        sets.remove(id).expect("room");
    }
    m.extra_bypassed_once_there_is_room();
}
