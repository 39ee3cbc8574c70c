//! Issue 16, part 4: Envoy sidecars that take their config over ADS from the
//! simulated node's control plane (Istio-shaped LDS, CDS, RDS, EDS) carry
//! pod-to-service traffic through meshlane's interception and splicing:
//! A's app connects to a service VIP no route knows, meshlane's connect
//! hook hands it to A's Envoy, whose ADS-delivered listener and EDS cluster
//! send it to B's pod, where sk_lookup steers it to B's Envoy and on to the
//! app. Then the control plane pushes a new version (the service's
//! endpoint moves) and the sidecars ACK it and follow it; a version with a
//! broken listener is NACKed and the sidecars keep the last good one.
mod common;

use std::io::Read;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    echo_from, echo_server_with_peers, envoy_available, listen, read_some, require_root_env,
    set_io_slices, write_all_by, SpliceCounters, LIMIT, MIB,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshlane::pods::PodSpec;
use meshlane::sim::pattern::payload;
use meshlane::sim::xds::istio::http_stat_prefix;
use meshlane::sim::xds::stream::Verdict;
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, EventKind, Protocol, Service};
use meshlane::sim::{
    unique_tag, Node, NodeOptions, Pod, Sidecar, SidecarMode, SidecarOptions, SidecarProxy,
};
use prost::Name;

const WEB_HOST: &str = "web.default.svc.cluster.local";
const ECHO_HOST: &str = "echo.default.svc.cluster.local";
const WEB_VIP: &str = "10.96.0.10";
const ECHO_VIP: &str = "10.96.0.20";

fn services(b: &Pod, web_port: u16) -> Vec<Service> {
    let b_ip = IpAddr::V4(b.ip4);
    vec![
        Service {
            host: WEB_HOST.into(),
            vip: WEB_VIP.parse().unwrap(),
            port: 8080,
            protocol: Protocol::Http,
            endpoints: vec![SocketAddr::new(b_ip, web_port)],
        },
        Service {
            host: ECHO_HOST.into(),
            vip: ECHO_VIP.parse().unwrap(),
            port: 9000,
            protocol: Protocol::Tcp,
            endpoints: vec![SocketAddr::new(b_ip, 9000)],
        },
    ]
}

/// Reads one HTTP/1.1 message head; None at EOF before one.
fn read_head(s: &mut TcpStream, deadline: Instant) -> Option<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return Some((head, got[end + 4..].to_vec()));
        }
        match read_some(s, &mut buf, deadline) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a body of `len` bytes, `start` of it already read.
fn read_body(s: &mut TcpStream, mut body: Vec<u8>, len: usize, deadline: Instant) -> Vec<u8> {
    let mut buf = vec![0u8; 256 * 1024];
    while body.len() < len {
        match read_some(s, &mut buf, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body
}

/// An HTTP server in `pod` on `port` that answers every request on a
/// connection with its body, plus `x-peer` (who connected) and `x-local`.
fn http_echo_server(pod: &Pod, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.thread(move || {
        let l = listen(SocketAddr::from(([0, 0, 0, 0], port)));
        tx.send(()).expect("report");
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || http_echo_connection(s));
        }
    })
    .expect("http server thread");
    rx.recv_timeout(Duration::from_secs(5))
        .expect("http server up");
}

fn http_echo_connection(mut s: TcpStream) {
    set_io_slices(&s);
    let far = Instant::now() + Duration::from_secs(3600);
    let peer = s.peer_addr().map_or("?".into(), |a| a.ip().to_string());
    let local = s.local_addr().map_or("?".into(), |a| a.to_string());
    while let Some((head, rest)) = read_head(&mut s, far) {
        let len = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = read_body(&mut s, rest, len, far);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-peer: {peer}\r\nx-local: {local}\r\n\r\n",
            body.len()
        );
        if write_all_by(&mut s, resp.as_bytes(), far).is_err()
            || write_all_by(&mut s, &body, far).is_err()
        {
            return;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// What one POST through the mesh came back with.
struct Reply {
    status: String,
    peer: String,
    local: String,
    body: Vec<u8>,
}

/// POSTs `body` from `pod` to `to` with `Host: host` and reads the answer.
fn post_from(pod: &Pod, to: SocketAddr, host: &str, body: Vec<u8>) -> Reply {
    let host = host.to_string();
    pod.run(move || {
        let deadline = Instant::now() + LIMIT;
        let mut s = common::connect(to);
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut w = s.try_clone().expect("clone socket");
        let writer = std::thread::spawn(move || {
            write_all_by(&mut w, head.as_bytes(), deadline).expect("write head");
            write_all_by(&mut w, &body, deadline).expect("write body");
        });
        let (head, rest) = read_head(&mut s, deadline).expect("a response");
        writer.join().expect("writer");
        let len = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = read_body(&mut s, rest, len, deadline);
        let get = |n: &str| header(&head, n).unwrap_or("").to_string();
        let _ = s.shutdown(Shutdown::Both);
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink);
        Reply {
            status: head.lines().next().unwrap_or("").to_string(),
            peer: get("x-peer"),
            local: get("x-local"),
            body,
        }
    })
    .expect("entering pod a")
}

fn type_urls() -> [String; 4] {
    [
        Listener::type_url(),
        Cluster::type_url(),
        RouteConfiguration::type_url(),
        ClusterLoadAssignment::type_url(),
    ]
}

/// Waits until each of `pods`' sidecars ACKed `version` of all four types.
fn wait_for_acks(ads: &AdsServer, pods: &[&Pod], version: &str) {
    for pod in pods {
        let node = format!("sidecar~{}~{}", pod.ip4, pod.name);
        let acked = ads.wait_for(Duration::from_secs(15), |events| {
            type_urls().iter().all(|t| {
                events.iter().any(|e| {
                    e.node.starts_with(&node)
                        && &e.type_url == t
                        && matches!(&e.kind, EventKind::Request(Verdict::Ack { version: v, .. }) if v == version)
                })
            })
        });
        assert!(
            acked,
            "{node}: not every type ACKed at version {version}: {:#?}",
            ads.events()
        );
    }
    let nacks: Vec<_> = ads
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Request(Verdict::Nack { .. })))
        .collect();
    assert!(nacks.is_empty(), "config rejected: {nacks:#?}");
}

fn stat(sc: &Sidecar, name: &str) -> u64 {
    sc.envoy_stat(name)
        .unwrap_or_else(|| panic!("no Envoy stat {name}"))
}

#[test]
fn envoy_sidecars_configured_over_ads_carry_pod_to_service_traffic() {
    require_root_env();
    if !envoy_available("envoy_ads") {
        return;
    }
    let mut node = Node::new(NodeOptions::default()).expect("simulated node");
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        node.register(pod, &PodSpec::istio(name))
            .expect("registering (intercept mode)");
    }
    http_echo_server(&b, 8080);
    http_echo_server(&b, 8081);
    let (_, echo_peers) = echo_server_with_peers(&b, SocketAddr::from(([0, 0, 0, 0], 9000)));

    let dir = std::path::PathBuf::from("/run/meshlane-test").join(unique_tag("ads-"));
    let snap = sidecar_snapshot("1", SidecarMode::Tcp, false, &services(&b, 8080));
    let ads = AdsServer::start(&dir, snap).expect("control plane");
    let options = SidecarOptions::istio(SidecarProxy::Envoy, SidecarMode::Tcp);
    let sa = Sidecar::launch_ads(&a, &options, ads.socket()).expect("Envoy in a");
    let sb = Sidecar::launch_ads(&b, &options, ads.socket()).expect("Envoy in b");
    wait_for_acks(&ads, &[&a, &b], "1");

    let counters = ["connects_redirected", "inbound_steered"];
    let before: Vec<u64> = counters.iter().map(|c| node.counter(c)).collect();
    let spliced = SpliceCounters::read(&node);

    // TCP service: 4 MiB echoed through both sidecars, every byte checked.
    let data = payload(4 * MIB, 0x5a);
    let echo = SocketAddr::new(ECHO_VIP.parse().unwrap(), 9000);
    let back = echo_from(&a, echo, data.clone(), 64 * 1024);
    assert!(back == data, "echo through the mesh changed the bytes");
    let peer = echo_peers
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server saw a connection");
    assert_eq!(
        peer.ip().to_string(),
        "127.0.0.6",
        "inbound Envoy connects from 127.0.0.6"
    );

    // HTTP service, routed by the RDS route: 1 MiB body both ways.
    let body = payload(MIB, 0x17);
    let web = SocketAddr::new(WEB_VIP.parse().unwrap(), 8080);
    let r = post_from(&a, web, &format!("{WEB_HOST}:8080"), body.clone());
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert!(
        r.body == body,
        "HTTP echo through the mesh changed the body"
    );
    assert_eq!(r.peer, "127.0.0.6");
    assert_eq!(r.local, format!("{}:8080", b.ip4));

    // It went through the ADS-delivered listeners and clusters.
    let echo_cluster = format!("outbound|9000||{ECHO_HOST}");
    let web_cluster = format!("outbound|8080||{WEB_HOST}");
    assert_eq!(
        stat(&sa, &format!("cluster.{echo_cluster}.upstream_cx_total")),
        1
    );
    assert_eq!(
        stat(&sa, &format!("cluster.{web_cluster}.upstream_rq_total")),
        1
    );
    let rq = format!("http.{}.downstream_rq_total", http_stat_prefix(8080));
    assert_eq!(stat(&sa, &rq), 1);
    assert_eq!(stat(&sa, "cluster.PassthroughCluster.upstream_cx_total"), 0);
    assert_eq!(
        stat(
            &sb,
            "cluster.InboundPassthroughClusterIpv4.upstream_cx_total"
        ),
        2
    );
    // Through meshlane: both connects redirected by its hook, both inbound
    // connections steered, the sidecar-to-sidecar hop spliced.
    let grew: Vec<u64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| node.counter(c) - b)
        .collect();
    assert!(grew[0] >= 2, "connects redirected: {}", grew[0]);
    assert!(grew[1] >= 2, "inbound connections steered: {}", grew[1]);
    let d = SpliceCounters::since(&node, &spliced);
    assert!(
        d.bytes_spliced >= (2 * data.len() + 2 * body.len()) as u64,
        "sidecar-to-sidecar bytes not spliced: {d:?}"
    );

    // A new version moves the web service's endpoint to port 8081: pushed
    // on the open streams, ACKed, followed.
    ads.update(sidecar_snapshot(
        "2",
        SidecarMode::Tcp,
        false,
        &services(&b, 8081),
    ));
    wait_for_acks(&ads, &[&a, &b], "2");
    let r = post_from(&a, web, WEB_HOST, body.clone());
    assert!(r.body == body, "after the update");
    assert_eq!(r.local, format!("{}:8081", b.ip4));
    assert_eq!(
        stat(&sa, &format!("cluster.{web_cluster}.upstream_rq_total")),
        2
    );

    // A version Envoy must reject (a listener without an address): both
    // NACK it, keep running version 2, and traffic still flows.
    let mut bad = sidecar_snapshot("3", SidecarMode::Tcp, false, &services(&b, 8081));
    let broken = Listener {
        name: "broken".into(),
        ..Default::default()
    };
    bad.add("broken", &broken);
    ads.update(bad);
    for pod in [&a, &b] {
        let node = format!("sidecar~{}~{}", pod.ip4, pod.name);
        let nacked = ads.wait_for(Duration::from_secs(15), |events| {
            events.iter().any(|e| {
                e.node.starts_with(&node)
                    && e.type_url == Listener::type_url()
                    && matches!(&e.kind, EventKind::Request(Verdict::Nack { version, .. }) if version == "2")
            })
        });
        assert!(
            nacked,
            "{node}: no NACK of the broken listener: {:#?}",
            ads.events()
        );
    }
    let r = post_from(&a, web, WEB_HOST, body.clone());
    assert!(r.body == body, "after the rejected version");
    assert_eq!(r.local, format!("{}:8081", b.ip4));
    drop((sa, sb));
    drop(ads);
    assert!(!dir.exists(), "control plane left {}", dir.display());
}
