//! Issue 12, the kernel half alone: the connect hook and the bypass maps
//! on a simulated node, with the maps written through the same typed
//! handles the agent uses (no agent: each rule is driven directly).
//!
//! Pod `a` is registered (Istio, intercept) and has service map entries;
//! `c` is registered with none; `d` is not registered. Each registered
//! pod has a stand-in sidecar on its outbound port that answers `S`;
//! backends `b1` and `b2` (not meshed) answer `1` and `2`, then echo.
//! Checked: a BYPASS destination of `a` goes straight to its endpoint and
//! getpeername shows the address dialled; nothing of `a`'s applies to `c`
//! or `d`; a stale or stopped heartbeat sends `a` to its sidecar again; a
//! changed set is used by every new connection while an open one keeps
//! its endpoint; weighted endpoints get their share over 10,000
//! connections; sockops counts connections and bytes per (pod, service);
//! IPv6 VIPs and endpoints bypass as IPv4 ones do, and an AF_INET socket
//! never gets an IPv6 endpoint (the sidecar, counted).
//! Needs root.
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::backend_id::{dial, echo_until_eof, id_server, serve_each};
use common::require_root_env;
use meshlane::datapath::{
    BypassClockMap, BypassCountersMap, BypassEndpoint, BypassEndpointsMap, BypassServicesMap,
    BypassStats, BypassStatsMap, ServiceKey,
};
use meshlane::pods::PodSpec;
use meshlane::sim::{Node, NodeOptions, PeerNode, Pod};

/// The Istio preset's outbound port (where the stand-in sidecars listen).
const OUTBOUND: u16 = 15001;
const GRACE: Duration = Duration::from_secs(30);

/// The kernel's bypass stats for `key` (zero until the first connection).
fn stats_of(node: &Node, key: ServiceKey) -> BypassStats {
    BypassStatsMap::open(&node.layout)
        .expect("stats map")
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// One short conversation from inside `pod`: who answered, what
/// getpeername said, and the echo of `payload` (a half-close: the app
/// shuts its sending side, reads to the end, then closes).
fn talk(pod: &Pod, to: SocketAddr, payload: usize) -> (u8, SocketAddr) {
    pod.run(move || {
        let (mut s, id) = dial(to);
        let peer = s.peer_addr().expect("getpeername");
        let data = vec![7u8; payload];
        s.write_all(&data).expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("echo");
        assert_eq!(back.len(), payload, "echo from {id}");
        (id, peer)
    })
    .expect("entering the pod")
}

/// An IPV6_V6ONLY socket's connect to `to` and the first byte read (the
/// connect's error if it fails).
fn v6only_first_byte(to: SocketAddr) -> Result<u8, String> {
    use nix::sys::socket::{connect, setsockopt, socket, sockopt};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn6};
    use std::os::fd::AsRawFd;
    let SocketAddr::V6(to) = to else {
        return Err(format!("{to} is not IPv6"));
    };
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| e.to_string())?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| e.to_string())?;
    connect(fd.as_raw_fd(), &SockaddrIn6::from(to)).map_err(|e| format!("connect: {e}"))?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut id = [0u8; 1];
    s.read_exact(&mut id).map_err(|e| e.to_string())?;
    Ok(id[0])
}

struct World {
    node: Node,
    a: Pod,
    c: Pod,
    d: Pod,
    b1: SocketAddr,
    b2: SocketAddr,
    a_cookie: u64,
    c_cookie: u64,
    backends: Vec<Pod>,
}

fn world() -> World {
    world_with(false)
}

/// The world on a node whose pods also have IPv6 addresses (`ipv6`).
fn world_with(ipv6: bool) -> World {
    require_root_env();
    let mut node = Node::new(NodeOptions {
        ipv6,
        ..Default::default()
    })
    .expect("node");
    let a = node.pod("a").expect("pod a");
    let c = node.pod("c").expect("pod c");
    let d = node.pod("d").expect("pod d");
    let p1 = node.pod("b1").expect("pod b1");
    let p2 = node.pod("b2").expect("pod b2");
    let a_cookie = node
        .register(&a, &PodSpec::istio("default/a"))
        .expect("register a")
        .netns_cookie;
    let c_cookie = node
        .register(&c, &PodSpec::istio("default/c"))
        .expect("register c")
        .netns_cookie;
    id_server(&a, OUTBOUND, b'S');
    id_server(&c, OUTBOUND, b'S');
    id_server(&p1, 8080, b'1');
    id_server(&p2, 8080, b'2');
    let b1 = SocketAddr::new(IpAddr::V4(p1.ip4), 8080);
    let b2 = SocketAddr::new(IpAddr::V4(p2.ip4), 8080);
    World {
        backends: vec![p1, p2],
        node,
        a,
        c,
        d,
        b1,
        b2,
        a_cookie,
        c_cookie,
    }
}

impl World {
    fn maps(&self) -> (BypassServicesMap, BypassEndpointsMap, BypassClockMap) {
        let l = &self.node.layout;
        (
            BypassServicesMap::open(l).expect("svc map"),
            BypassEndpointsMap::open(l).expect("eps map"),
            BypassClockMap::open(l).expect("clock map"),
        )
    }

    /// Points (pod, dest) at set `id` holding `eps`.
    fn bypass(&self, netns: u64, dest: SocketAddr, id: u32, eps: &[(SocketAddr, u32)]) {
        let (svc, sets, _) = self.maps();
        let eps: Vec<BypassEndpoint> = eps
            .iter()
            .map(|(addr, weight)| BypassEndpoint {
                addr: *addr,
                weight: *weight,
            })
            .collect();
        sets.insert(id, &eps).expect("write set");
        svc.insert(ServiceKey { netns, dest }, id)
            .expect("write entry");
    }

    fn counters(&self) -> [u64; 5] {
        BypassCountersMap::open(&self.node.layout)
            .and_then(|m| m.sums())
            .expect("bypass counters")
    }
}

#[test]
fn bypass_is_per_pod_keeps_the_dialled_address_and_follows_the_heartbeat() {
    let w = world();
    let vip: SocketAddr = "10.96.7.1:80".parse().unwrap();
    // b2's own address as a destination of `a` that bypasses to b1: the
    // other pods reach b2 itself if nothing rewrites them.
    w.bypass(w.a_cookie, vip, 1, &[(w.b1, 1)]);
    w.bypass(w.a_cookie, w.b2, 1, &[(w.b1, 1)]);

    // No heartbeat yet: the sidecar.
    let before = w.counters();
    assert_eq!(talk(&w.a, vip, 10).0, b'S');
    assert_eq!(w.counters()[1], before[1] + 1, "counted stale");

    let (_, _, clock) = w.maps();
    clock.beat(GRACE).expect("heartbeat");
    let before = w.counters();
    let (id, peer) = talk(&w.a, vip, 100);
    assert_eq!(id, b'1', "bypassed to b1");
    assert_eq!(peer, vip, "getpeername shows the VIP the app dialled");
    assert_eq!(talk(&w.a, w.b2, 10), (b'1', w.b2));
    assert_eq!(w.counters()[0], before[0] + 2, "counted rewritten");
    // A destination without an entry: the sidecar, as before.
    assert_eq!(talk(&w.a, "10.96.7.2:80".parse().unwrap(), 10).0, b'S');

    // a's entries never apply to c (registered) or d (not registered).
    assert_eq!(talk(&w.c, vip, 10).0, b'S');
    assert_eq!(talk(&w.c, w.b2, 10).0, b'S');
    assert_eq!(talk(&w.d, w.b2, 10), (b'2', w.b2), "d reaches b2 itself");
    assert_eq!(w.counters()[0], before[0] + 2, "nothing else rewritten");

    // The heartbeat grows stale: the sidecar; a fresh one: bypass again.
    clock.beat(Duration::from_millis(300)).expect("short grace");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(talk(&w.a, vip, 10).0, b'S', "stale heartbeat");
    clock.beat(GRACE).expect("heartbeat");
    assert_eq!(talk(&w.a, vip, 10).0, b'1', "fresh again");
    clock.stop().expect("stop");
    assert_eq!(talk(&w.a, vip, 10).0, b'S', "stopped");

    // Stats for (a, vip): every bypassed connection opened and closed,
    // bytes as the app socket saw them (1 id byte + the echo back).
    let deadline = Instant::now() + Duration::from_secs(5);
    let key = ServiceKey {
        netns: w.a_cookie,
        dest: vip,
    };
    let stats = loop {
        let s = stats_of(&w.node, key);
        if s.closed == s.opened || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((stats.opened, stats.closed), (2, 2), "{stats:?}");
    assert_eq!(stats.sent_bytes, 110, "{stats:?}");
    assert_eq!(stats.received_bytes, 112, "{stats:?}");
    let all = BypassStatsMap::open(&w.node.layout)
        .expect("stats")
        .iter()
        .count();
    assert_eq!(all, 2, "only a's two destinations are counted");
    let _ = w.c_cookie;
}

#[test]
fn an_update_reaches_new_connections_while_open_ones_keep_their_endpoint() {
    let w = world();
    let vip: SocketAddr = "10.96.7.3:80".parse().unwrap();
    w.bypass(w.a_cookie, vip, 10, &[(w.b1, 1)]);
    w.maps().2.beat(GRACE).expect("heartbeat");
    let (mut old, id) = w.a.run(move || dial(vip)).expect("pod a");
    assert_eq!(id, b'1');

    // The agent's order: the new set first, then the entry, then the old
    // set goes.
    w.bypass(w.a_cookie, vip, 11, &[(w.b2, 1)]);
    w.maps().1.remove(10).expect("old set");
    for _ in 0..200 {
        assert_eq!(talk(&w.a, vip, 1).0, b'2', "the removed endpoint chosen");
    }
    old.write_all(b"still here").expect("old connection writes");
    let mut back = [0u8; 10];
    old.read_exact(&mut back).expect("old connection reads");
    assert_eq!(&back, b"still here");
    assert_eq!(old.peer_addr().expect("peer"), vip);

    // The entry removed: the sidecar.
    w.maps()
        .0
        .remove(ServiceKey {
            netns: w.a_cookie,
            dest: vip,
        })
        .expect("remove entry");
    assert_eq!(talk(&w.a, vip, 1).0, b'S');
}

/// Share of b2 for weights 1:3 over 10,000 connections: binomial standard
/// deviation 0.43 points; the tolerance is 2 points (4.6 sigma).
#[test]
fn weighted_endpoints_get_their_share_over_ten_thousand_connections() {
    const N: usize = 10_000;
    const TOLERANCE: f64 = 0.02;
    let w = world();
    let vip: SocketAddr = "10.96.7.4:80".parse().unwrap();
    w.bypass(w.a_cookie, vip, 20, &[(w.b1, 1), (w.b2, 3)]);
    // One beat for the whole run (an emulated guest takes minutes).
    w.maps()
        .2
        .beat(Duration::from_secs(3600))
        .expect("heartbeat");
    let started = Instant::now();
    let counts =
        w.a.run(move || {
            let mut counts = [0usize; 3];
            for _ in 0..N {
                let (s, id) = dial(vip);
                counts[match id {
                    b'1' => 0,
                    b'2' => 1,
                    _ => 2,
                }] += 1;
                drop(s);
            }
            counts
        })
        .expect("pod a");
    let share = counts[1] as f64 / N as f64;
    eprintln!(
        "b1 {} b2 {} sidecar {} (b2 share {share:.4}, want 0.75 +- {TOLERANCE}) in {:?}",
        counts[0],
        counts[1],
        counts[2],
        started.elapsed()
    );
    assert_eq!(counts[2], 0, "no connection took the sidecar");
    assert!((share - 0.75).abs() <= TOLERANCE, "share {share}");
}

/// Issue 12 item 3, the default: a bypassed flow to a meshed pod arrives
/// at that pod's IP and is steered to its inbound sidecar, never straight
/// to its app.
#[test]
fn a_bypassed_flow_to_a_meshed_pod_still_meets_its_inbound_sidecar() {
    let w = world();
    // c's app on 8080 answers 'C'; its stand-in inbound sidecar 'I'.
    id_server(&w.c, 8080, b'C');
    id_server(&w.c, 15006, b'I');
    let c_app = SocketAddr::new(IpAddr::V4(w.c.ip4), 8080);
    let vip: SocketAddr = "10.96.7.5:80".parse().unwrap();
    w.bypass(w.a_cookie, vip, 30, &[(c_app, 1)]);
    w.maps().2.beat(GRACE).expect("heartbeat");
    let before = w.counters()[0];
    let (id, peer) = talk(&w.a, vip, 10);
    assert_eq!(w.counters()[0], before + 1, "bypassed at a's connect");
    assert_eq!(peer, vip);
    assert_eq!(id, b'I', "steered to c's inbound sidecar");
}

/// Cross node: `a` bypasses to a backend on node B (its own host netns and
/// data path, behind a veth "wire"); getpeername still shows the VIP.
#[test]
fn bypass_reaches_an_endpoint_on_another_node() {
    let w = world();
    let mut peer = PeerNode::new(&w.node).expect("node B");
    let remote = peer.pod("r").expect("pod on node B");
    id_server(&remote, 8080, b'R');
    // As the benchmark's pods: each side reaches the other through its
    // own bridge gateway.
    let gw = w.node.subnet.v4_gateway().to_string();
    w.a.exec(&["ip", "route", "add", "10.201.0.0/16", "via", &gw])
        .expect("route to node B");
    let gw_b = peer.subnet.v4_gateway().to_string();
    remote
        .exec(&["ip", "route", "add", "10.201.0.0/16", "via", &gw_b])
        .expect("route back to node A");
    let far = SocketAddr::new(IpAddr::V4(remote.ip4), 8080);
    let vip: SocketAddr = "10.96.7.6:80".parse().unwrap();
    w.bypass(w.a_cookie, vip, 40, &[(far, 1)]);
    w.maps().2.beat(GRACE).expect("heartbeat");
    let before = w.counters()[0];
    assert_eq!(talk(&w.a, vip, 1000), (b'R', vip));
    assert_eq!(w.counters()[0], before + 1);
    drop(remote);
    drop(peer);
}

/// The sim's Services without a mesh: an unregistered pod reaches a
/// ClusterIP through kube-proxy-style DNAT rules in its own netns, both
/// endpoints in turn; the bypass maps play no part.
#[test]
fn an_unmeshed_pod_reaches_a_cluster_ip_through_kube_proxy_rules() {
    let w = world();
    let vip: SocketAddr = "10.96.7.7:80".parse().unwrap();
    let svc = meshlane::sim::xds::Service {
        host: "both.default.svc.cluster.local".into(),
        vip: vip.ip(),
        port: vip.port(),
        protocol: meshlane::sim::xds::Protocol::Tcp,
        endpoints: vec![w.b1, w.b2],
    };
    meshlane::sim::kube_proxy::install(&w.d, &[svc]).expect("kube-proxy rules in d");
    let before = w.counters()[0];
    let mut seen = [0usize; 2];
    for _ in 0..40 {
        let (id, peer) = talk(&w.d, vip, 10);
        assert_eq!(peer, vip, "conntrack shows the ClusterIP");
        seen[usize::from(id == b'2')] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    assert_eq!(w.counters()[0], before, "not the bypass");
}

/// IPv6: an AF_INET6 connect to a v6 VIP goes straight to a v6 endpoint
/// and getpeername shows the v6 VIP; an AF_INET socket to a v4 VIP whose
/// endpoints are all v6 keeps the sidecar (counted as a family mismatch),
/// and so does an AF_INET6 one to a v6 VIP whose endpoints are all v4
/// (an IPV6_V6ONLY socket would be refused there).
#[test]
fn ipv6_vips_bypass_to_ipv6_endpoints_and_a_family_mismatch_keeps_the_sidecar() {
    let w = world_with(true);
    let v6 = |p: &Pod| IpAddr::V6(p.ip6.expect("the pod's IPv6 address"));
    let (b1, b2) = (
        SocketAddr::new(v6(&w.backends[0]), 8080),
        SocketAddr::new(v6(&w.backends[1]), 8080),
    );
    let vip6: SocketAddr = "[fd00:96::7]:80".parse().unwrap();
    w.bypass(w.a_cookie, vip6, 50, &[(b1, 1)]);
    w.maps().2.beat(GRACE).expect("heartbeat");
    let before = w.counters();
    assert_eq!(talk(&w.a, vip6, 100), (b'1', vip6), "bypassed over IPv6");
    assert_eq!(w.counters()[0], before[0] + 1, "counted rewritten");
    // Another pod's v6 socket: nothing of a's.
    assert_eq!(talk(&w.c, vip6, 10).0, b'S');

    // v4 VIP, v6 endpoints only: the sidecar, counted as family.
    let vip4: SocketAddr = "10.96.7.8:80".parse().unwrap();
    w.bypass(w.a_cookie, vip4, 51, &[(b1, 1), (b2, 1)]);
    let before = w.counters();
    for _ in 0..5 {
        assert_eq!(talk(&w.a, vip4, 10), (b'S', vip4), "v4 socket, v6 set");
    }
    let after = w.counters();
    assert_eq!(after[0], before[0], "nothing rewritten");
    assert_eq!(after[3], before[3] + 5, "counted as a family mismatch");

    // v6 VIP, v4 endpoints only: an IPV6_V6ONLY socket could not reach
    // them (ENETUNREACH), so the sidecar, counted as family; not refused.
    let vip6_to_v4: SocketAddr = "[fd00:96::8]:80".parse().unwrap();
    w.bypass(w.a_cookie, vip6_to_v4, 52, &[(w.b1, 1)]);
    let before = w.counters();
    let id =
        w.a.run(move || v6only_first_byte(vip6_to_v4))
            .expect("pod a");
    assert_eq!(id, Ok(b'S'), "a V6ONLY socket with a v4 set: the sidecar");
    assert_eq!(talk(&w.a, vip6_to_v4, 10).0, b'S', "dual stack: the same");
    let after = w.counters();
    assert_eq!(after[0], before[0], "nothing rewritten");
    assert_eq!(after[3], before[3] + 2, "counted as a family mismatch");

    // The stats count only the bypassed v6 connection.
    let key = ServiceKey {
        netns: w.a_cookie,
        dest: vip6,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = stats_of(&w.node, key);
        if s.closed == 1 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((stats.opened, stats.closed), (1, 1), "{stats:?}");
    assert_eq!(stats.sent_bytes, 100, "{stats:?}");
}

/// A server in `pod` on `port` that closes first: each connection gets
/// `id` and `reply` more bytes, then its FIN; it then reads until the
/// client's.
fn closing_server(pod: &Pod, port: u16, id: u8, reply: usize) {
    serve_each(pod, any_v4(port), move |mut s| {
        let mut out = vec![7u8; reply + 1];
        out[0] = id;
        if s.write_all(&out).is_ok() && s.shutdown(Shutdown::Write).is_ok() {
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
    });
}

/// A server in `pod` on `port` that never closes first: each connection
/// gets `id`, then an echo until EOF, and its FIN only 3 s after that. A
/// client that closes first is then counted before the server's FIN could
/// arrive (as an orphan, its socket leaves for TIME_WAIT once its own FIN
/// is acked).
fn slow_closing_echo_server(pod: &Pod, port: u16, id: u8) {
    serve_each(pod, any_v4(port), move |mut s| {
        if s.write_all(&[id]).is_ok() && echo_until_eof(&mut s) {
            std::thread::sleep(Duration::from_secs(3));
        }
    });
}

fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4([0, 0, 0, 0].into()), port)
}

/// (opened, closed, sent, received) of `key` once every opened
/// connection is closed (or after 5 s).
fn settled(node: &Node, key: ServiceKey) -> (u64, u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats_of(node, key);
        if (s.opened > 0 && s.closed == s.opened) || Instant::now() > deadline {
            return (s.opened, s.closed, s.sent_bytes, s.received_bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_close_order_counts_a_connection_once_with_its_exact_bytes() {
    let mut w = world();
    let (_, _, clock) = w.maps();
    clock.beat(GRACE).expect("heartbeat");
    closing_server(&w.backends[1], 9090, b'2', 20);
    slow_closing_echo_server(&w.backends[0], 9091, b'1');
    let closer = SocketAddr::new(w.b2.ip(), 9090);
    let echo = SocketAddr::new(w.b1.ip(), 9091);
    let echo_vip: SocketAddr = "10.96.8.1:80".parse().unwrap();
    let closer_vip: SocketAddr = "10.96.8.2:80".parse().unwrap();
    w.bypass(w.a_cookie, echo_vip, 1, &[(echo, 1)]);
    w.bypass(w.a_cookie, closer_vip, 2, &[(closer, 1)]);

    // The app closes first, with close() (counted when its FIN is
    // queued), and its socket is gone before the server's FIN: 40 bytes
    // each way after the id byte.
    for _ in 0..3 {
        let got = w.a.run(move || {
            let (mut s, id) = dial(echo_vip);
            s.write_all(&[5u8; 40]).expect("write");
            let mut back = [0u8; 40];
            s.read_exact(&mut back).expect("echo");
            id
        });
        assert_eq!(got.expect("pod a"), b'1');
    }
    let key = |netns, dest| ServiceKey { netns, dest };
    assert_eq!(
        settled(&w.node, key(w.a_cookie, echo_vip)),
        (3, 3, 120, 123),
        "app closed first: (opened, closed, sent, received)"
    );

    // The server closes first (counted when the app's close follows its
    // FIN): the id and 20 bytes in, 30 bytes out after their FIN.
    for _ in 0..3 {
        let got = w.a.run(move || {
            let (mut s, id) = dial(closer_vip);
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("their bytes and FIN");
            s.write_all(&[5u8; 30]).expect("write after their FIN");
            (id, rest.len())
        });
        assert_eq!(got.expect("pod a"), (b'2', 20));
    }
    assert_eq!(
        settled(&w.node, key(w.a_cookie, closer_vip)),
        (3, 3, 90, 63),
        "server closed first: (opened, closed, sent, received)"
    );

    // A pod that splices app sockets keeps its state callbacks to CLOSE
    // (splicing may hold the socket); its connections still count once.
    let e = w.node.pod("e").expect("pod e");
    let mut spec = PodSpec::istio("default/e");
    spec.splice_apps = true;
    let e_cookie = w.node.register(&e, &spec).expect("register e").netns_cookie;
    id_server(&e, OUTBOUND, b'S');
    w.bypass(e_cookie, echo_vip, 1, &[(echo, 1)]);
    for _ in 0..2 {
        let got = e.run(move || {
            let (mut s, id) = dial(echo_vip);
            s.write_all(&[5u8; 40]).expect("write");
            let mut back = [0u8; 40];
            s.read_exact(&mut back).expect("echo");
            id
        });
        assert_eq!(got.expect("pod e"), b'1');
    }
    assert_eq!(
        settled(&w.node, key(e_cookie, echo_vip)),
        (2, 2, 80, 82),
        "a pod splicing app sockets: (opened, closed, sent, received)"
    );
}
