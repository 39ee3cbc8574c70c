//! Issue 9: ways into a pod around its sidecar that Istio's iptables rules
//! close. Each scenario runs on one simulated node with the golden
//! istio-iptables rules in the pods (the reference) and with meshlane, and
//! the two runs must look the same: sidecar hops, the server's view of its
//! peer and local address. Inbound interception is steered by where a
//! connection arrives, not by a list of the pod's addresses taken at
//! registration, so addresses added later, the IPv6 link-local address and
//! an address that moved to another pod all behave as with iptables.
mod common;
mod conformance;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use conformance::world::{
    Host, Interception, Meshing, Observation, PodName::*, Probe, SidecarKind, World,
};
use meshlane::sim::{Node, Pod, SidecarMode};

/// Runs `scenario` once per interception on one node and returns both
/// runs' observations (reference first).
fn both(
    ipv6: bool,
    a: &Meshing,
    b: &Meshing,
    kind: SidecarKind,
    servers: &[(conformance::world::PodName, u16)],
    scenario: impl Fn(&Node, &World, Interception) -> Vec<Observation>,
) -> [Vec<Observation>; 2] {
    let mut node = conformance::node(ipv6);
    let mut run = |how| {
        let mut w = World::new(&mut node, how, Some(a), Some(b), kind);
        for (pod, port) in servers {
            w.serve(*pod, *port);
        }
        let obs = scenario(&node, &w, how);
        eprintln!("--- {how:?}");
        for o in &obs {
            eprintln!("  {o}");
        }
        obs
    };
    [run(Interception::Iptables), run(Interception::Meshlane)]
}

/// The reference must show `hops` for every probe, and meshlane the same
/// observations as the reference.
fn assert_same(runs: &[Vec<Observation>; 2], hops: &[&[&str]]) {
    let [reference, meshlane] = runs;
    for (r, want) in reference.iter().zip(hops) {
        assert_eq!(r.hops, *want, "reference: {r}");
    }
    for (r, m) in reference.iter().zip(meshlane) {
        assert_eq!(r, m, "\n    iptables {r}\n    meshlane {m}");
    }
}

fn sh(pod: &Pod, args: &[&str]) {
    if let Err(e) = pod.exec(args) {
        panic!("{args:?} in {}: {e:#}", pod.name);
    }
}

/// An unused address of the pods' /24 (host-local hands out the lowest).
fn spare_v4(pod: &Pod) -> Ipv4Addr {
    let o = pod.ip4.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 200)
}

fn probe_to(from: conformance::world::PodName, to: SocketAddr) -> Probe {
    Probe::new(from, Host::Addr(to), to.port())
}

/// An address given to pod B after it was registered is intercepted like
/// every other (Istio's PREROUTING matches every destination); once the
/// address moves to pod A, connections to it reach A through A's sidecar.
#[test]
fn inbound_to_an_address_added_after_registration_and_moved() {
    let a = Meshing::istio_default("a");
    let b = Meshing::istio_default("b");
    let runs = both(
        false,
        &a,
        &b,
        SidecarMode::Tcp.into(),
        &[(A, 8080), (B, 8080)],
        |node, w, how| {
            let x = spare_v4(&w.b);
            let xs = format!("{x}/32");
            let to = SocketAddr::new(IpAddr::V4(x), 8080);
            sh(&w.b, &["ip", "addr", "add", &xs, "dev", "eth0"]);
            let mut obs = vec![w.observe(&probe_to(C, to))];
            if how == Interception::Meshlane {
                // Registered again now that B has x: x is listed as B's.
                node.register(&w.b, &b.spec).expect("registering B again");
            }
            sh(&w.b, &["ip", "addr", "del", &xs, "dev", "eth0"]);
            sh(&w.a, &["ip", "addr", "add", &xs, "dev", "eth0"]);
            sh(&w.c, &["ip", "neigh", "flush", "dev", "eth0"]);
            obs.push(w.observe(&probe_to(C, to)));
            obs
        },
    );
    assert_same(&runs, &[&["B.inbound"], &["A.inbound"]]);
    for o in &runs[1] {
        assert!(
            o.outcome.starts_with("server peer 127.0.0.6"),
            "not served through the sidecar: {o}"
        );
    }
}

/// B's link-local address of a dual-stack pod, B capturing inbound 5000.
fn link_local_of(pod: &Pod) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = pod
            .exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
            ])
            .expect("ip addr");
        let addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok());
        match addr {
            Some(a) if !text.contains("tentative") => return a,
            _ if Instant::now() > deadline => panic!("{}: no link-local address: {text}", pod.name),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A peer on the same L2 connecting to the pod's IPv6 link-local address
/// goes through the sidecar, as with ip6tables.
#[test]
fn inbound_to_the_ipv6_link_local_address() {
    let (a, b) = conformance::world::ipv6_ports_meshing();
    let runs = both(
        true,
        &a,
        &b,
        SidecarKind::Native,
        &[(B, 5000), (B, 8080)],
        |_, w, _| {
            let (ll, c_ll) = (link_local_of(&w.b), link_local_of(&w.c));
            let scope =
                w.c.run(|| nix::net::if_::if_nametoindex("eth0").expect("eth0 index"))
                    .expect("entering C");
            let at = |port| SocketAddr::V6(SocketAddrV6::new(ll, port, 0, scope));
            // The addresses differ per run: name them.
            let named = |mut o: Observation| {
                for (addr, name) in [(ll, "B.ll"), (c_ll, "C.ll")] {
                    o.probe = o.probe.replace(&addr.to_string(), name);
                    o.outcome = o.outcome.replace(&addr.to_string(), name);
                }
                o
            };
            vec![
                named(w.observe(&probe_to(C, at(5000)))),
                named(w.observe(&probe_to(C, at(8080)))),
            ]
        },
    );
    assert_same(&runs, &[&["B.inbound"], &[]]);
}
