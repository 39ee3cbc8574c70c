//! IPv6 paths that have no iptables reference to compare with: HAProxy as
//! the inbound sidecar of an IPv6 pod (sk_lookup keeps the original
//! destination as the local address, which is all HAProxy reads for IPv6;
//! after an ip6tables REDIRECT it would forward to itself), and DNS capture
//! over IPv6 (no IPv6 DNS golden exists).
mod conformance;

use conformance::require_root_env;
use conformance::world::{Host, Interception, Meshing, PodName, Probe, World};
use meshlane::sim::{Node, NodeOptions, SidecarMode};

fn haproxy_inbound(mode: SidecarMode) {
    require_root_env();
    let mut node = Node::new(NodeOptions {
        ipv6: true,
        ..Default::default()
    })
    .unwrap();
    let b = Meshing::istio_default("b");
    let mut w = World::new(
        &mut node,
        Interception::Meshlane,
        None,
        Some(&b),
        mode.into(),
    );
    w.serve(PodName::B, 8080);
    w.serve(PodName::B, 15021);
    let seen: Vec<String> = [
        Probe::new(PodName::C, Host::Pod(PodName::B), 8080),
        Probe::new(PodName::A, Host::Pod(PodName::B), 8080),
        Probe::new(PodName::C, Host::Pod(PodName::B), 15021),
    ]
    .iter()
    .map(|p| {
        let o = w.observe(p);
        format!("{} [{}] {}", o.probe, o.hops.join(","), o.outcome)
    })
    .collect();
    assert_eq!(
        seen,
        vec![
            "C -> B:8080 [B.inbound] server peer ::6 local B6:8080, app getpeername B6:8080",
            "A -> B:8080 [B.inbound] server peer ::6 local B6:8080, app getpeername B6:8080",
            "C -> B:15021 [] server peer C6 local B6:15021, app getpeername B6:15021",
        ]
    );
}

#[test]
fn haproxy_ipv6_inbound_tcp() {
    haproxy_inbound(SidecarMode::Tcp);
}

#[test]
fn haproxy_ipv6_inbound_http() {
    haproxy_inbound(SidecarMode::Http);
}

#[test]
fn dns_capture_ipv6() {
    conformance::dns::run_meshlane_only(true);
}
