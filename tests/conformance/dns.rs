//! The DNS case (cni-plugin_dns golden, Istio DNS proxying): UDP and TCP to
//! port 53 from the app go to the proxy's DNS port on loopback, UDP replies
//! look like they come from the server the app asked, the proxy's own
//! queries and unmeshed pods reach the real server.

use std::net::SocketAddr;

use meshlane::sim::{Node, SidecarMode};

use super::app::{self, DnsProxy};
use super::world::{Interception, Meshing, World};

fn observe(w: &World, ipv6: bool) -> Vec<String> {
    let b: SocketAddr = if ipv6 {
        SocketAddr::new(w.b.ip6.expect("b has IPv6").into(), 53)
    } else {
        SocketAddr::new(w.b.ip4.into(), 53)
    };
    let show = |what: &str, r: Result<(String, SocketAddr), String>| match r {
        Ok((reply, from)) => format!("{what}: {reply:?} from {}", w.name_sa(from)),
        Err(e) => format!("{what}: error {e}"),
    };
    vec![
        show("A udp -> B:53", app::dns_udp(&w.a, b, None)),
        show("A tcp -> B:53", app::dns_tcp(&w.a, b)),
        show("A connected udp -> B:53", app::dns_udp_connected(&w.a, b)),
        show(
            "A udp -> B:53 as proxy",
            app::dns_udp(&w.a, b, Some((1337, 1337))),
        ),
        show("C udp -> B:53", app::dns_udp(&w.c, b, None)),
    ]
}

fn run_once(node: &mut Node, how: Interception, a: &Meshing) -> Vec<String> {
    let ipv6 = node.opts.ipv6;
    let w = World::new(node, how, Some(a), None, SidecarMode::Tcp.into());
    let any = if ipv6 { "[::]:53" } else { "0.0.0.0:53" };
    let _upstream: DnsProxy = app::dns_server(&w.b, vec![any.into()], "upstream", 0, 0);
    let _proxy = app::dns_proxy(&w.a, 15053, a.uid, a.gid);
    let before = node.counter("dns_redirected");
    let obs = observe(&w, ipv6);
    eprintln!("--- dns / {how:?}");
    for o in &obs {
        eprintln!("  {o}");
    }
    if how == Interception::Meshlane {
        // Every probe socket is closed: nothing of theirs waits in the
        // only keyed bookkeeping map (the rest is socket storage).
        assert_eq!(node.map_entries("ml_orig_pending"), 0);
    }
    let redirected = node.counter("dns_redirected") > before;
    assert_eq!(
        redirected,
        how == Interception::Meshlane,
        "dns_redirected counter moved in the wrong run"
    );
    obs
}

/// Pod A meshed with Istio's DNS capture (the golden for the reference).
fn dns_capture() -> Meshing {
    let mut a = Meshing::istio_default("a");
    a.golden = "cni-plugin_dns.txt.golden";
    a.spec.dns_capture = true;
    a
}

/// Runs the DNS case with the golden rules and with meshlane.
pub fn run(ipv6: bool) {
    let mut node = super::node(ipv6);
    let a = dns_capture();
    let reference = run_once(&mut node, Interception::Iptables, &a);
    let meshlane = run_once(&mut node, Interception::Meshlane, &a);
    assert_eq!(
        reference,
        expected(ipv6),
        "the reference run is not Istio's DNS capture"
    );
    assert_eq!(meshlane, reference, "meshlane differs from the reference");
}

/// IPv6 has no DNS golden (no istio-iptables golden writes ip6tables DNS
/// rules), so this checks meshlane alone against what the IPv4 reference
/// shows.
pub fn run_meshlane_only(ipv6: bool) {
    let mut node = super::node(ipv6);
    let meshlane = run_once(&mut node, Interception::Meshlane, &dns_capture());
    assert_eq!(meshlane, expected(ipv6));
}

fn expected(ipv6: bool) -> Vec<String> {
    let b = if ipv6 { "B6:53" } else { "B:53" };
    vec![
        format!("A udp -> B:53: \"dns-proxy:q\" from {b}"),
        format!("A tcp -> B:53: \"dns-proxy\" from {b}"),
        format!("A connected udp -> B:53: \"dns-proxy:c\" from {b}"),
        format!("A udp -> B:53 as proxy: \"upstream:q\" from {b}"),
        format!("C udp -> B:53: \"upstream:q\" from {b}"),
    ]
}
