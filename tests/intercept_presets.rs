//! Issue 3 presets: Linkerd (4140/4143, uid 2102) and Kuma (15001/15006,
//! uid 5678) pods are intercepted on their mesh's ports and exempt their
//! mesh's proxy uid, with the Envoy-like sidecar listening where the preset
//! says.
mod common;
mod conformance;

use std::net::{IpAddr, SocketAddr};

use common::require_root_env;
use conformance::app::{self, As, Seen};
use conformance::native_sidecar::NativeSidecar;
use meshlane::pods::{PodSpec, Preset};
use meshlane::sim::{Node, NodeOptions};

fn peer(s: Seen) -> IpAddr {
    match s {
        Seen::Served { server_peer, .. } => server_peer,
        other => panic!("{other:?}"),
    }
}

fn preset_routes(preset: Preset) {
    require_root_env();
    let (uid, out_port, in_port, _) = preset.defaults();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let mut spec = PodSpec::istio("a");
    spec.preset = preset;
    let rec = node.register(&a, &spec).unwrap();
    assert_eq!(
        (rec.proxy_uid, rec.outbound_port, rec.inbound_port),
        (uid, out_port, in_port)
    );
    let sidecar = NativeSidecar::start_on(&a, uid, uid, out_port, in_port);
    let _srv_a = app::http_server(&a, "0.0.0.0:8080".parse().unwrap());
    let _srv_b = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);

    // Outbound through the preset's outbound port.
    assert_eq!(
        peer(app::probe(&a, b8080, As::default())),
        IpAddr::V4(a.ip4)
    );
    assert_eq!(
        sidecar.sessions("outbound"),
        1,
        "{preset}: not via {out_port}"
    );
    // The preset's proxy uid is exempt; Istio's 1337 is not.
    peer(app::probe(
        &a,
        b8080,
        As {
            ids: Some((uid, uid)),
            ..As::default()
        },
    ));
    assert_eq!(
        sidecar.sessions("outbound"),
        1,
        "{preset}: proxy uid redirected"
    );
    peer(app::probe(
        &a,
        b8080,
        As {
            ids: Some((1337, 1337)),
            ..As::default()
        },
    ));
    let want = if uid == 1337 { 1 } else { 2 };
    assert_eq!(sidecar.sessions("outbound"), want, "{preset}: uid 1337");
    // Inbound through the preset's inbound port.
    let a8080 = SocketAddr::new(a.ip4.into(), 8080);
    assert_eq!(
        peer(app::probe(&b, a8080, As::default())),
        IpAddr::V4("127.0.0.6".parse().unwrap())
    );
    assert_eq!(
        sidecar.sessions("inbound"),
        1,
        "{preset}: not via {in_port}"
    );
}

#[test]
fn linkerd_preset() {
    preset_routes(Preset::Linkerd);
}

#[test]
fn kuma_preset() {
    preset_routes(Preset::Kuma);
}
