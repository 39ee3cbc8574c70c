//! Inbound decisions, one minimal config per rule: the base (Istio's
//! `virtualInbound` with a plaintext TCP port 9000 and a plaintext HTTP
//! port 8080, both to their `inbound|PORT||` original-destination
//! clusters, Istio's telemetry filters) is PASSTHROUGH under the
//! `inboundPassthrough` policy, and flipping exactly one rule flips the
//! port to SIDECAR with that reason. Then the real fixture dumps.

use serde_json::{json, Value};

use super::tests::{codes, decide_json, of};
use super::*;
use crate::xds::dump;

fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "statPrefix": cluster, "cluster": cluster}})
}

fn stats() -> Value {
    json!({"name": "istio.stats", "typedConfig": {"@type": "type.googleapis.com/stats.PluginConfig"}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn http_chain() -> Value {
    json!({"name": "0.0.0.0_8080", "filterChainMatch": {"destinationPort": 8080, "transportProtocol": "raw_buffer"},
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "statPrefix": "inbound_0.0.0.0_8080",
            "routeConfig": {"name": "inbound|8080||", "virtualHosts": [{"name": "inbound|http|8080", "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||",
                    "timeout": "0s", "maxStreamDuration": {"maxStreamDuration": "0s", "grpcTimeoutHeaderMax": "0s"}}}]}]},
            "httpFilters": [
                {"name": "envoy.filters.http.fault", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                {"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                stats(), router()]}}]})
}

fn inbound_cluster(name: &str) -> Value {
    json!({"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED", "connectTimeout": "10s",
        "circuitBreakers": {"thresholds": [{"maxConnections": 4294967295u32, "maxRequests": 4294967295u32}]},
        "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}}})
}

/// Istio's `virtualInbound` for a pod with PeerAuthentication DISABLE:
/// TCP port 9000 and HTTP port 8080, plaintext chains only.
fn base() -> Value {
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamicListeners": [
            {"name": "virtualInbound", "activeState": {"listener": {"name": "virtualInbound",
                "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}}, "trafficDirection": "INBOUND",
                "filterChains": [
                    {"filterChainMatch": {"destinationPort": 15006}, "filters": [tcp_proxy("BlackHoleCluster")]},
                    {"name": "0.0.0.0_9000", "filterChainMatch": {"destinationPort": 9000, "transportProtocol": "raw_buffer"},
                        "filters": [stats(), tcp_proxy("inbound|9000||")]},
                    http_chain(),
                    {"name": "virtualInbound", "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                        "filters": [tcp_proxy("InboundPassthroughClusterIpv4")]}]}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamicActiveClusters": [
            inbound_cluster("inbound|9000||"), inbound_cluster("inbound|8080||"),
            inbound_cluster("InboundPassthroughClusterIpv4"),
            {"cluster": {"name": "BlackHoleCluster", "type": "STATIC"}}]}
    ]})
}

fn on() -> BypassPolicy {
    BypassPolicy {
        inbound_passthrough: true,
        ..Default::default()
    }
}

fn chains(v: &mut Value) -> &mut Vec<Value> {
    v["configs"][0]["dynamicListeners"][0]["activeState"]["listener"]["filterChains"]
        .as_array_mut()
        .unwrap()
}

fn tcp_filters(v: &mut Value) -> &mut Vec<Value> {
    chains(v)[1]["filters"].as_array_mut().unwrap()
}

fn http_filters(v: &mut Value) -> &mut Vec<Value> {
    chains(v)[2]["filters"][0]["typedConfig"]["httpFilters"]
        .as_array_mut()
        .unwrap()
}

/// Applies `edit` to the base and expects `port` SIDECAR with `code`.
fn flips(port: u16, code: ReasonCode, edit: impl FnOnce(&mut Value)) {
    let mut v = base();
    edit(&mut v);
    let d = decide_json(&v, &on());
    let x = of(&d, &format!("inbound:{port}"));
    assert_eq!(
        x.decision,
        Verdict::Sidecar,
        "inbound:{port} should keep the sidecar"
    );
    assert!(
        codes(x).contains(&code),
        "inbound:{port}: {code:?} not in {:#?}",
        x.reasons
    );
    assert!(!d.inbound_passthrough_ports().contains(&port));
}

#[test]
fn plain_pass_through_ports_are_passthrough_under_the_policy() {
    let d = decide_json(&base(), &on());
    for port in [9000, 8080] {
        let x = of(&d, &format!("inbound:{port}"));
        assert_eq!(x.decision, Verdict::Passthrough, "{port}: {:#?}", x.reasons);
        assert!(
            x.endpoints.is_empty(),
            "inbound decisions carry no endpoints"
        );
    }
    assert_eq!(d.inbound_passthrough_ports(), vec![8080, 9000]);
    // Outbound consumers never see inbound ports.
    assert!(d.service_map().is_empty());
    assert_eq!(d.summary().passthrough, 3, "8080, 9000 and inbound:*");
}

#[test]
fn the_policy_off_keeps_every_port_on_the_sidecar() {
    let d = decide_json(&base(), &BypassPolicy::default());
    for port in [9000, 8080] {
        let x = of(&d, &format!("inbound:{port}"));
        assert_eq!(x.decision, Verdict::Sidecar);
        assert_eq!(codes(x), vec![ReasonCode::InboundPassthroughPolicy]);
    }
    assert!(d.inbound_passthrough_ports().is_empty());
}

#[test]
fn a_tls_chain_beside_the_plaintext_one_keeps_the_sidecar() {
    // PeerAuthentication PERMISSIVE: Istio's mTLS chain for the port.
    flips(9000, ReasonCode::InboundMtlsPermissive, |v| {
        chains(v).push(json!({"filterChainMatch": {"destinationPort": 9000, "transportProtocol": "tls",
            "applicationProtocols": ["istio-peer-exchange", "istio"]},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"}},
            "filters": [tcp_proxy("inbound|9000||")]}));
    });
}

#[test]
fn a_port_served_only_over_tls_keeps_the_sidecar() {
    // STRICT: the plaintext chain is replaced by a TLS one.
    flips(9000, ReasonCode::InboundMtlsRequired, |v| {
        chains(v)[1]["filterChainMatch"]["transportProtocol"] = json!("tls");
    });
    // A TLS transport socket alone (no transport_protocol match) is TLS too.
    flips(9000, ReasonCode::InboundMtlsRequired, |v| {
        chains(v)[1]["filterChainMatch"] = json!({"destinationPort": 9000});
        chains(v)[1]["transportSocket"] = json!({"name": "envoy.transport_sockets.tls", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"}});
    });
}

#[test]
fn a_tls_default_chain_can_serve_every_port_and_keeps_the_sidecar() {
    for port in [9000, 8080] {
        flips(port, ReasonCode::InboundMtlsPermissive, |v| {
            v["configs"][0]["dynamicListeners"][0]["activeState"]["listener"]
                ["defaultFilterChain"] = json!({
                "filterChainMatch": {"transportProtocol": "tls"}, "filters": [tcp_proxy("InboundPassthroughClusterIpv4")]});
        });
    }
}

#[test]
fn a_plaintext_default_chain_to_another_cluster_keeps_the_sidecar() {
    flips(9000, ReasonCode::SniffedChainsDiffer, |v| {
        v["configs"][0]["dynamicListeners"][0]["activeState"]["listener"]["defaultFilterChain"] =
            json!({"filters": [tcp_proxy("BlackHoleCluster")]});
    });
}

#[test]
fn every_chain_of_a_port_is_judged_not_only_the_first() {
    // The default chain (also a candidate for 9000) reaches an
    // original-destination cluster that speaks TLS to the app.
    flips(9000, ReasonCode::TlsTransportSocket, |v| {
        v["configs"][0]["dynamicListeners"][0]["activeState"]["listener"]["defaultFilterChain"] =
            json!({"filters": [tcp_proxy("tls-to-app")]});
        let mut c = inbound_cluster("tls-to-app");
        c["cluster"]["transportSocket"] = json!({"name": "envoy.transport_sockets.tls", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}});
        v["configs"][1]["dynamicActiveClusters"]
            .as_array_mut()
            .unwrap()
            .push(c);
    });
}

#[test]
fn rbac_and_authz_keep_the_sidecar() {
    flips(9000, ReasonCode::NetworkFilterNotAllowed, |v| {
        tcp_filters(v).insert(0, json!({"name": "envoy.filters.network.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "statPrefix": "tcp."}}));
    });
    for ty in [
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "envoy.extensions.filters.http.lua.v3.Lua",
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig",
    ] {
        flips(8080, ReasonCode::HttpFilterNotAllowed, |v| {
            http_filters(v).insert(
                0,
                json!({"name": "x", "typedConfig": {"@type": format!("type.googleapis.com/{ty}")}}),
            );
        });
    }
}

#[test]
fn active_faults_other_wasm_ecds_and_unknown_filters_keep_the_sidecar() {
    flips(8080, ReasonCode::HttpFilterNotAllowed, |v| {
        http_filters(v)[0]["typedConfig"]["abort"] = json!({"httpStatus": 503});
    });
    flips(8080, ReasonCode::HttpFilterNotAllowed, |v| {
        http_filters(v).insert(
            0,
            json!({"name": "acme.plugin", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"vmConfig": {"runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"inlineString": "acme.authorize"}}}}}}),
        );
    });
    flips(8080, ReasonCode::EcdsUnresolved, |v| {
        http_filters(v).insert(
            0,
            json!({"name": "acme.ecds", "configDiscovery": {"configSource": {"ads": {}}}}),
        );
    });
    flips(9000, ReasonCode::UnknownFilterType, |v| {
        tcp_filters(v).insert(
            0,
            json!({"name": "x", "typedConfig": {"@type": "type.googleapis.com/acme.Mystery"}}),
        );
    });
}

#[test]
fn more_than_one_catch_all_route_keeps_the_sidecar() {
    flips(8080, ReasonCode::NotCatchAllRoute, |v| {
        let vh = &mut chains(v)[2]["filters"][0]["typedConfig"]["routeConfig"]["virtualHosts"][0];
        vh["routes"][0]["match"] = json!({"prefix": "/admin"});
    });
}

#[test]
fn a_cluster_that_is_not_the_original_destination_keeps_the_sidecar() {
    // A Sidecar ingress defaultEndpoint 127.0.0.1:9001: another address
    // and port than the flow dialled.
    flips(9000, ReasonCode::InboundClusterNotOriginalDst, |v| {
        v["configs"][1]["dynamicActiveClusters"][0] = json!({"cluster": {"name": "inbound|9000||", "type": "STATIC",
            "loadAssignment": {"clusterName": "inbound|9000||", "endpoints": [{"lbEndpoints": [{"endpoint": {
                "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 9001}}}}]}]}}});
    });
    // An original-destination cluster that overrides the port.
    flips(9000, ReasonCode::LbPolicy, |v| {
        v["configs"][1]["dynamicActiveClusters"][0]["cluster"]["originalDstLbConfig"] =
            json!({"upstreamPortOverride": 9001});
    });
    // A TLS transport socket towards the app.
    flips(9000, ReasonCode::TlsTransportSocket, |v| {
        v["configs"][1]["dynamicActiveClusters"][0]["cluster"]["transportSocket"] = json!({"name": "envoy.transport_sockets.tls", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}});
    });
}

#[test]
fn a_chain_chosen_by_source_keeps_the_sidecar() {
    flips(9000, ReasonCode::ChainMatchNotKeyable, |v| {
        chains(v)[1]["filterChainMatch"]["sourcePrefixRanges"] =
            json!([{"addressPrefix": "10.0.0.0", "prefixLen": 8}]);
    });
}

#[test]
fn a_port_some_plaintext_flows_match_no_chain_of_keeps_the_sidecar() {
    // Only HTTP (ALPN) flows match: the sidecar drops the others.
    flips(9000, ReasonCode::ChainMatchNotKeyable, |v| {
        chains(v)[1]["filterChainMatch"]["applicationProtocols"] = json!(["http/1.1", "h2c"]);
    });
    // Only IPv4 destinations: an IPv6 flow to the port matches nothing.
    flips(9000, ReasonCode::ChainMatchNotKeyable, |v| {
        chains(v)[1]["filterChainMatch"]["prefixRanges"] =
            json!([{"addressPrefix": "0.0.0.0", "prefixLen": 0}]);
    });
    // Both families' any-address ranges: every flow.
    let mut v = base();
    chains(&mut v)[1]["filterChainMatch"]["prefixRanges"] = json!([
        {"addressPrefix": "0.0.0.0", "prefixLen": 0}, {"addressPrefix": "::", "prefixLen": 0}]);
    let d = decide_json(&v, &on());
    assert_eq!(of(&d, "inbound:9000").decision, Verdict::Passthrough);
}

#[test]
fn a_port_without_a_chain_of_its_own_is_only_the_wildcard() {
    let d = decide_json(&base(), &on());
    assert!(d
        .destinations
        .iter()
        .all(|x| !matches!(x.destination, DestKey::Inbound { port: 7777 })));
    // inbound:* (the pass-through chain) is never a kernel entry.
    assert!(!d.inbound_passthrough_ports().contains(&0));
}

#[test]
fn the_real_istio_dumps_keep_their_inbound_ports_on_the_sidecar() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/istio/configdumps"
    );
    // istio 1.10, PERMISSIVE by default: an mTLS chain beside the
    // plaintext one, and Istio's authn filter.
    let text = std::fs::read_to_string(format!(
        "{dir}/istio-1.10.0_sidecar_bookinfo-details-v1.json"
    ))
    .unwrap();
    let parsed = dump::parse(&text, false).unwrap();
    let d = decide(&parsed.resources, &on());
    let x = of(&d, "inbound:9080");
    assert_eq!(x.decision, Verdict::Sidecar);
    assert!(
        codes(x).contains(&ReasonCode::InboundMtlsPermissive),
        "{:#?}",
        x.reasons
    );
    // istioctl's authz test data: RBAC and ext_authz on its inbound ports.
    let text = std::fs::read_to_string(format!(
        "{dir}/partial_listeners-only_istioctl-authz-testdata_sidecar_rbac-extauthz.json"
    ))
    .unwrap();
    let parsed = dump::parse(&text, true).unwrap();
    let d = decide(&parsed.resources, &on());
    let inbound: Vec<&Destination> = d
        .destinations
        .iter()
        .map(|x| x.as_ref())
        .filter(|x| matches!(x.destination, DestKey::Inbound { port } if port != 0))
        .collect();
    assert!(!inbound.is_empty());
    for x in inbound {
        assert_eq!(x.decision, Verdict::Sidecar, "{}", x.destination);
    }
    assert!(d.inbound_passthrough_ports().is_empty());
}
