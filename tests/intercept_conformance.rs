//! Issue 3 conformance: for each istio-iptables golden (default, include/
//! exclude ports, include/exclude IP ranges, custom uid), IPv4, HAProxy
//! sidecars in tcp and in http mode, meshlane's eBPF interception routes
//! every probe connection exactly like the golden rules do.
mod conformance;

use conformance::world::{Host, Meshing, PodName::*, Probe};
use conformance::{run, Case, Expect};
use meshlane::sim::SidecarMode;

fn e(probe: Probe, hops: &'static [&'static str], outcome: &'static str) -> Expect {
    Expect {
        probe,
        hops,
        outcome,
    }
}

const VIA_BOTH: &[&str] = &["A.outbound", "B.inbound"];

/// cni-plugin_basic: Istio's defaults on both pods.
fn basic() -> Case {
    Case {
        name: "basic",
        ipv6: false,
        a: Some(Meshing::istio_default("a")),
        b: Some(Meshing::istio_default("b")),
        servers: vec![(B, 8080), (B, 15008), (B, 15020), (B, 15021), (B, 15090), (A, 8080)],
        expect: vec![
            e(
                Probe::new(A, Host::Pod(B), 8080),
                VIA_BOTH,
                "server peer 127.0.0.6 local B:8080, app getpeername B:8080",
            ),
            // outbound 15020 is never captured, inbound neither
            e(Probe::new(A, Host::Pod(B), 15020), &[], "server peer A local B:15020"),
            // 15021/15090/15008: captured outbound, never inbound
            e(Probe::new(A, Host::Pod(B), 15021), &["A.outbound"], "server peer A local B:15021"),
            e(Probe::new(A, Host::Pod(B), 15090), &["A.outbound"], "server peer A local B:15090"),
            e(Probe::new(A, Host::Pod(B), 15008), &["A.outbound"], "server peer A local B:15008"),
            // the app to itself, by pod IP and by localhost
            e(Probe::new(A, Host::Pod(A), 8080), &[], "server peer A local A:8080"),
            e(Probe::new(A, Host::Ip("127.0.0.1"), 8080), &[], "server peer 127.0.0.1"),
            // a process running as the proxy uid is not captured
            e(
                Probe::new(A, Host::Pod(B), 8080).as_ids(1337, 1337),
                &["B.inbound"],
                "server peer 127.0.0.6 local B:8080",
            ),
            // from a pod without a mesh: inbound capture only
            e(
                Probe::new(C, Host::Pod(B), 8080),
                &["B.inbound"],
                "server peer 127.0.0.6 local B:8080, app getpeername B:8080",
            ),
        ],
    }
}

#[test]
fn basic_tcp() {
    run(&basic(), SidecarMode::Tcp);
}

#[test]
fn basic_http() {
    run(&basic(), SidecarMode::Http);
}
