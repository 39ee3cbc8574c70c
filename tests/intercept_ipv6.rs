//! IPv6 paths that have no iptables reference to compare with: HAProxy as
//! the sidecar of IPv6 pods (it reads the original destination of an
//! AF_INET6 socket with getsockname only: inbound, sk_lookup keeps it as the
//! local address; outbound, meshlane's getsockname6 hook shows it to the
//! proxy; after an ip6tables REDIRECT HAProxy would forward to itself), and
//! DNS capture over IPv6 (no IPv6 DNS golden exists).
mod common;
mod conformance;

use conformance::world::{Host, Interception, Meshing, PodName, Probe, World};
use meshlane::sim::SidecarMode;

fn haproxy_ipv6(mode: SidecarMode) {
    let mut node = conformance::node(true);
    let a = Meshing::istio_default("a");
    let b = Meshing::istio_default("b");
    let mut w = World::new(
        &mut node,
        Interception::Meshlane,
        Some(&a),
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
            "A -> B:8080 [A.outbound,B.inbound] server peer ::6 local B6:8080, app getpeername B6:8080",
            "C -> B:15021 [] server peer C6 local B6:15021, app getpeername B6:15021",
        ]
    );
}

#[test]
fn haproxy_ipv6_tcp() {
    haproxy_ipv6(SidecarMode::Tcp);
}

#[test]
fn haproxy_ipv6_http() {
    haproxy_ipv6(SidecarMode::Http);
}

#[test]
fn dns_capture_ipv6() {
    conformance::dns::run_meshlane_only(true);
}
