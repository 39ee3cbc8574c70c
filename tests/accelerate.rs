//! "accelerate" mode: a pod keeps Istio's stock iptables (the exact rule set
//! of cni-plugin_basic.txt.golden) and an HAProxy sidecar (uid 1337, tcp
//! mode, original-destination server). Its app connects to an echo server in
//! a second pod; the connection really passes the sidecar, the sidecar still
//! finds the original destination through SO_ORIGINAL_DST (conntrack).
//! meshlane splices only proxy sockets: the app <-> sidecar hop stays
//! loopback TCP (an app socket in a sockhash would not behave like TCP),
//! and the sidecar <-> sidecar hop is spliced across the REDIRECT.
mod common;
mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::*;
use meshlane::sim::{iptables, Node, NodeOptions, Sidecar, SidecarMode};
use support::*;

const GOLDEN: &str = "cni-plugin_basic.txt.golden";

fn backend_sessions(sidecar: &Sidecar, backend: &str) -> u64 {
    sidecar
        .stats()
        .expect("haproxy stats")
        .iter()
        .find(|(p, s, _)| p == backend && s == "BACKEND")
        .map_or(0, |r| r.2)
}

/// Echoes `size` bytes (seeded by `seed`) over `s`, byte-exact, and
/// returns the peer address the echo server saw for the connection.
fn echo_checked(s: TcpStream, size: usize, seed: u8, peers: &Receiver<SocketAddr>) -> SocketAddr {
    let data = payload(size, seed);
    let got = echo_roundtrip(s, data.clone(), size.min(16 * 1024));
    assert!(
        got == data,
        "{size} B: echo is not byte-exact ({} B back)",
        got.len()
    );
    peers
        .recv_timeout(Duration::from_secs(10))
        .expect("the echo server was reached")
}

/// Logs what the splicing counters did for one transfer of `size` bytes.
fn log_splicing(size: usize, c0: &BTreeMap<String, u64>, c1: &BTreeMap<String, u64>) {
    eprintln!(
        "{size} B: paired_nat +{} spliced +{} msgs / +{} B, fallback +{} msgs / +{} B",
        delta(c1, c0, "sockets_paired_across_nat"),
        delta(c1, c0, "messages_spliced"),
        delta(c1, c0, "bytes_spliced"),
        delta(c1, c0, "messages_fallback"),
        delta(c1, c0, "bytes_fallback"),
    );
}

#[test]
fn istio_iptables_redirect_to_sidecar_keeps_the_app_hop_plain() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let root = node.layout.root().to_path_buf();
    let app = node.pod("app").expect("app pod");
    let svc = node.pod("svc").expect("service pod");

    // istio-init's rules, unchanged, in the app's pod.
    iptables::apply_golden(&app, GOLDEN).expect("applying the golden rules");
    let nat = iptables::nat_rules(&app).expect("iptables-save");
    for rule in [
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A OUTPUT -j ISTIO_OUTPUT",
    ] {
        assert!(
            nat.contains(rule),
            "rule {rule:?} missing in the pod: {nat}"
        );
    }
    let sidecar = Sidecar::start(&app, SidecarMode::Tcp, 1337).expect("haproxy sidecar");
    add_accelerated_pod(&root, &app, Some("app"));

    // status says the pod is in accelerate mode.
    let st = status_json(&root);
    let pods = st["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 1, "{st}");
    assert_eq!(pods[0]["name"], "app", "{st}");
    assert_eq!(pods[0]["mode"], "accelerate", "{st}");
    assert_eq!(pods[0]["netns_alive"], true, "{st}");
    let text = cli_ok(&root, &["status"]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("app "))
        .unwrap_or_else(|| panic!("status does not list the pod: {text}"));
    assert!(line.contains("accelerate"), "{line}");

    // The "VIP": the echo server's pod IP and port (not registered, no rules).
    let (bound, peers) = echo_server_with_peers(&svc, "0.0.0.0:0".parse().unwrap());
    let vip: SocketAddr = format!("{}:{}", svc.ip4, bound.port()).parse().unwrap();

    for (i, size) in [1usize, 64, 1024, 64 * 1024, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let c0 = counters(&root);
        let (out0, orig0) = (
            sidecar.sessions("outbound"),
            backend_sessions(&sidecar, "original_dst"),
        );
        let s = connect_from(&app, vip);
        let app_local = s.local_addr().expect("app local address");
        // iptables REDIRECT keeps the app's view of its peer.
        assert_eq!(s.peer_addr().expect("peer"), vip);
        let peer = echo_checked(s, size, i as u8, &peers);
        // The server got a connection from the sidecar, not from the app's
        // socket: HAProxy resolved the original destination.
        assert_eq!(peer.ip(), std::net::IpAddr::V4(app.ip4));
        assert_ne!(peer, app_local, "the app reached the server directly");
        assert_eq!(
            sidecar.sessions("outbound"),
            out0 + 1,
            "{size} B: sidecar not passed"
        );
        assert_eq!(
            backend_sessions(&sidecar, "original_dst"),
            orig0 + 1,
            "{size} B: sidecar did not connect to the original destination"
        );

        let c1 = counters(&root);
        log_splicing(size, &c0, &c1);
        // The app's socket stays out of the sockhash; the sidecar's
        // upstream socket has no local peer (the service is not meshed).
        assert_eq!(
            delta(&c1, &c0, "bytes_spliced"),
            0,
            "{size} B: an app hop was spliced: {c0:?} -> {c1:?}"
        );
        assert_eq!(delta(&c1, &c0, "sockets_paired_across_nat"), 0);
        assert!(
            delta(&c1, &c0, "sockets_not_spliced") >= 1,
            "{size} B: {c0:?} -> {c1:?}"
        );
        // The pod keeps iptables interception: meshlane's eBPF redirect and
        // SO_ORIGINAL_DST answers stay off for it (never intercepted twice).
        assert_eq!(delta(&c1, &c0, "connects_redirected"), 0);
        assert_eq!(delta(&c1, &c0, "original_dst_answered"), 0);
    }
}

/// Both pods meshed the stock Istio way (golden rules + sidecar each): the
/// app's connection crosses the outbound REDIRECT to sidecar A, sidecar A's
/// connection crosses pod B's inbound REDIRECT to sidecar B, and sidecar B
/// reaches the app from 127.0.0.6. The sidecar <-> sidecar hop is spliced
/// (paired across pod B's REDIRECT); the two app hops stay TCP.
#[test]
fn sidecar_to_sidecar_under_istio_iptables_is_spliced() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let root = node.layout.root().to_path_buf();
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    let mut sidecars = Vec::new();
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        iptables::apply_golden(pod, GOLDEN).expect("applying the golden rules");
        sidecars.push(Sidecar::start(pod, SidecarMode::Tcp, 1337).expect("haproxy sidecar"));
        add_accelerated_pod(&root, pod, Some(name));
    }
    let (sc_a, sc_b) = (&sidecars[0], &sidecars[1]);
    let (bound, peers) = echo_server_with_peers(&b, "0.0.0.0:0".parse().unwrap());
    let dst: SocketAddr = format!("{}:{}", b.ip4, bound.port()).parse().unwrap();

    for (i, size) in [1usize, 1024, 64 * 1024, 1 << 20].into_iter().enumerate() {
        let c0 = counters(&root);
        let (out_a, in_b) = (sc_a.sessions("outbound"), sc_b.sessions("inbound"));
        let peer = echo_checked(connect_from(&a, dst), size, 40 + i as u8, &peers);
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6)),
            "{size} B: the app in pod b was not reached through its sidecar"
        );
        assert_eq!(sc_a.sessions("outbound"), out_a + 1, "{size} B: sidecar a");
        assert_eq!(sc_b.sessions("inbound"), in_b + 1, "{size} B: sidecar b");

        let c1 = counters(&root);
        log_splicing(size, &c0, &c1);
        // sidecar a <-> sidecar b is paired across B's inbound REDIRECT.
        assert_eq!(
            delta(&c1, &c0, "sockets_paired_across_nat"),
            1,
            "{size} B: {c0:?} -> {c1:?}"
        );
        // That hop, crossed both ways, and nothing else.
        let spliced = delta(&c1, &c0, "bytes_spliced");
        assert!(
            spliced >= 2 * size as u64 && spliced <= 3 * size as u64 + 64,
            "{size} B: {spliced} bytes spliced: {c0:?} -> {c1:?}"
        );
        assert_eq!(delta(&c1, &c0, "connects_redirected"), 0);
    }
}

/// A socket bound to `port` on `pod`'s address (the port may still hold an
/// earlier connection in TIME_WAIT), connected to `to`.
fn connect_from_port(pod: &meshlane::sim::Pod, port: u16, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::SockaddrStorage;
    let local = SocketAddr::new(std::net::IpAddr::V4(pod.ip4), port);
    pod.run(move || {
        let fd = bound_socket(local);
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(to),
        )
        .unwrap_or_else(|e| panic!("connect {local} -> {to}: {e}"));
        let s = TcpStream::from(fd);
        set_io_slices(&s);
        s
    })
    .expect("entering pod")
}

/// Proxy connections, one after the other, from the same source port to
/// three ports of a pod under istio-init's inbound REDIRECT: all are
/// redirected to the same 15006, so a later one's reply tuple is an earlier
/// one's (still in conntrack, TIME_WAIT) and conntrack gives it another
/// source port. The
/// passive end then sees a port its active end never had; the pair must
/// still form (it is found by its handshake, which NAT leaves alone), and
/// every byte must still be exact.
#[test]
fn pairing_survives_a_source_port_remapped_by_conntrack() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let root = node.layout.root().to_path_buf();
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    iptables::apply_golden(&b, GOLDEN).expect("applying the golden rules");
    // This test process is both pods' proxy: its sockets are spliceable.
    add_self_proxied_pod(&root, &a, Some("a"));
    add_self_proxied_pod(&root, &b, Some("b"));
    let (_, peers) = echo_server_with_peers(&b, "0.0.0.0:15006".parse().unwrap());
    let port = free_port();

    let mut remapped = false;
    for (i, to_port) in [8081u16, 8082, 8083].into_iter().enumerate() {
        let to: SocketAddr = format!("{}:{to_port}", b.ip4).parse().unwrap();
        let c0 = counters(&root);
        let peer = echo_checked(
            connect_from_port(&a, port, to),
            64 * 1024,
            70 + i as u8,
            &peers,
        );
        let c1 = counters(&root);
        log_splicing(64 * 1024, &c0, &c1);
        eprintln!("connection {i}: source port {port}, the passive end saw {peer}");
        remapped |= peer.port() != port;
        assert_eq!(
            delta(&c1, &c0, "sockets_paired_across_nat"),
            1,
            "connection {i} (seen from {peer}) did not pair: {c0:?} -> {c1:?}"
        );
        assert!(
            delta(&c1, &c0, "bytes_spliced") >= 2 * 64 * 1024,
            "connection {i}: {c0:?} -> {c1:?}"
        );
    }
    assert!(
        remapped,
        "conntrack never remapped the source port: the test proves nothing here"
    );
    // Every pairing consumed its ml_active entry; every close removed the rest.
    assert_no_leak(&node);
    drop(node);
}
