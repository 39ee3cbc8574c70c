//! One minimal config per rule: the base config is BYPASS, and flipping
//! exactly that rule flips the decision to SIDECAR with that reason.

use serde_json::{json, Value};

use super::*;
use crate::xds::dump;

const VIP: &str = "10.0.0.10";

/// A TCP service listener VIP:5432 and an HTTP service on 0.0.0.0:8080
/// (domains name VIP 10.0.0.20), plain endpoints, Istio's defaults.
fn base() -> Value {
    let route = json!({"cluster": "outbound|8080||web", "timeout": "0s",
        "retryPolicy": {"retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "numRetries": 2, "retryHostPredicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
            "hostSelectionRetryMaxAttempts": "5", "retriableStatusCodes": [503]},
        "maxStreamDuration": {"maxStreamDuration": "0s", "grpcTimeoutHeaderMax": "0s"}});
    let cluster = |name: &str| {
        json!({"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "EDS", "edsClusterConfig": {"serviceName": name}, "lbPolicy": "LEAST_REQUEST",
        "circuitBreakers": {"thresholds": [{"maxConnections": 4294967295u32, "maxRetries": 4294967295u32}]},
        "transportSocketMatches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transportSocket": {"name": "envoy.transport_sockets.tls",
                "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}},
            {"name": "tlsMode-disabled", "match": {}, "transportSocket": {"name": "envoy.transport_sockets.raw_buffer"}}]}})
    };
    let cla = |name: &str, ip: &str| {
        json!({"endpointConfig": {"clusterName": name, "endpoints": [{"locality": {"region": "r", "zone": "z"},
        "lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": ip, "portValue": 9000}}}, "loadBalancingWeight": 3}]}]}})
    };
    let stats = json!({"name": "istio.stats", "typedConfig": {"@type": "type.googleapis.com/stats.PluginConfig"}});
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamicListeners": [
            {"name": "tcp", "activeState": {"listener": {"name": "10.0.0.10_5432", "trafficDirection": "OUTBOUND",
                "address": {"socketAddress": {"address": VIP, "portValue": 5432}},
                "filterChains": [{"filters": [stats, {"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "outbound|5432||db"}}]}]}}},
            {"name": "http", "activeState": {"listener": {"name": "0.0.0.0_8080", "trafficDirection": "OUTBOUND",
                "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 8080}},
                "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "rds": {"routeConfigName": "8080"}, "httpFilters": [
                        {"name": "envoy.filters.http.fault", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                        {"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                        stats,
                        {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamicRouteConfigs": [{"routeConfig": {"name": "8080", "virtualHosts": [
            {"name": "web:8080", "domains": ["web", "web:8080", "10.0.0.20", "10.0.0.20:8080"],
             "routes": [{"name": "default", "match": {"prefix": "/"}, "route": route}]}]}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamicActiveClusters": [cluster("outbound|5432||db"), cluster("outbound|8080||web")]},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamicEndpointConfigs": [cla("outbound|5432||db", "10.1.0.1"), cla("outbound|8080||web", "10.1.0.2")]}
    ]})
}

pub(super) fn decide_json(v: &Value, policy: &BypassPolicy) -> Decisions {
    let parsed = dump::parse(&v.to_string(), false).expect("test dump parses");
    decide(&parsed.resources, policy)
}

pub(super) fn of<'a>(d: &'a Decisions, addr: &str) -> &'a Destination {
    d.destinations
        .iter()
        .find(|x| x.destination.to_string() == addr)
        .unwrap_or_else(|| {
            panic!(
                "no destination {addr}: {:#?}",
                d.destinations
                    .iter()
                    .map(|x| x.destination.to_string())
                    .collect::<Vec<_>>()
            )
        })
}

pub(super) fn codes(d: &Destination) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}

#[test]
fn the_base_config_bypasses_both_services_with_their_endpoints() {
    let d = decide_json(&base(), &BypassPolicy::default());
    for addr in ["10.0.0.10:5432", "10.0.0.20:8080"] {
        let x = of(&d, addr);
        assert_eq!(x.decision, Verdict::Bypass, "{addr}: {:#?}", x.reasons);
        assert_eq!(x.endpoints.len(), 1);
        assert_eq!(x.endpoints[0].weight, 3);
        assert_eq!(x.endpoints[0].locality.as_deref(), Some("r/z/"));
    }
    let map = d.service_map();
    assert_eq!(map.len(), 2);
    assert!(codes(of(&d, "10.0.0.20:8080")).contains(&ReasonCode::IstioDefaultRetryIgnored));
    assert_eq!(of(&d, "10.0.0.20:8080").hostnames, vec!["web".to_string()]);
}

/// Applies `edit` to the base and expects `addr` SIDECAR with `code`.
fn flips(addr: &str, code: ReasonCode, edit: impl FnOnce(&mut Value)) {
    let mut v = base();
    edit(&mut v);
    let d = decide_json(&v, &BypassPolicy::default());
    let x = of(&d, addr);
    assert_eq!(
        x.decision,
        Verdict::Sidecar,
        "{addr} should keep the sidecar"
    );
    assert!(
        codes(x).contains(&code),
        "{addr}: {code:?} not in {:#?}",
        x.reasons
    );
    assert!(x.endpoints.is_empty());
}

fn http_filters(v: &mut Value) -> &mut Vec<Value> {
    v["configs"][0]["dynamicListeners"][1]["activeState"]["listener"]["filterChains"][0]["filters"]
        [0]["typedConfig"]["httpFilters"]
        .as_array_mut()
        .unwrap()
}

fn web_route(v: &mut Value) -> &mut Value {
    &mut v["configs"][1]["dynamicRouteConfigs"][0]["routeConfig"]["virtualHosts"][0]["routes"][0]
}

fn db_cluster(v: &mut Value) -> &mut Value {
    &mut v["configs"][2]["dynamicActiveClusters"][0]["cluster"]
}

#[test]
fn an_rbac_filter_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::HttpFilterNotAllowed, |v| {
        http_filters(v).insert(0, json!({"name": "x", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}}));
    });
}

#[test]
fn an_unknown_filter_type_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::UnknownFilterType, |v| {
        http_filters(v).insert(0, json!({"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/acme.Mystery"}}));
    });
}

#[test]
fn an_unresolved_ecds_filter_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::EcdsUnresolved, |v| {
        http_filters(v).insert(
            0,
            json!({"name": "plugin", "configDiscovery": {"configSource": {"ads": {}}}}),
        );
    });
}

#[test]
fn an_active_fault_filter_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::HttpFilterNotAllowed, |v| {
        http_filters(v)[0]["typedConfig"]["abort"] = json!({"httpStatus": 503});
    });
}

#[test]
fn a_custom_retry_policy_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::RetryPolicy, |v| {
        web_route(v)["route"]["retryPolicy"]["numRetries"] = json!(5);
    });
}

#[test]
fn a_route_timeout_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::RouteTimeout, |v| {
        web_route(v)["route"]["timeout"] = json!("3s");
    });
}

#[test]
fn a_second_route_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::NotCatchAllRoute, |v| {
        let r = web_route(v).clone();
        v["configs"][1]["dynamicRouteConfigs"][0]["routeConfig"]["virtualHosts"][0]["routes"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"match": {"prefix": "/api"}, "route": r["route"]}));
    });
}

#[test]
fn mirroring_and_rewrites_keep_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::Mirroring, |v| {
        web_route(v)["route"]["requestMirrorPolicies"] = json!([{"cluster": "x"}]);
    });
    flips("10.0.0.20:8080", ReasonCode::Rewrite, |v| {
        web_route(v)["route"]["prefixRewrite"] = json!("/v2");
    });
}

#[test]
fn an_mtls_endpoint_keeps_the_sidecar() {
    flips("10.0.0.10:5432", ReasonCode::MtlsEndpoint, |v| {
        v["configs"][3]["dynamicEndpointConfigs"][0]["endpointConfig"]["endpoints"][0]
            ["lbEndpoints"][0]["metadata"] =
            json!({"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
    });
}

#[test]
fn a_tls_cluster_keeps_the_sidecar() {
    flips("10.0.0.10:5432", ReasonCode::TlsTransportSocket, |v| {
        db_cluster(v)["transportSocket"] = json!({"name": "tls", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}});
    });
}

#[test]
fn outlier_detection_and_pool_limits_keep_the_sidecar() {
    flips("10.0.0.10:5432", ReasonCode::OutlierDetection, |v| {
        db_cluster(v)["outlierDetection"] = json!({"consecutive5xx": 5});
    });
    flips("10.0.0.10:5432", ReasonCode::ConnectionPoolLimits, |v| {
        db_cluster(v)["circuitBreakers"]["thresholds"][0]["maxConnections"] = json!(100);
    });
}

#[test]
fn an_lb_policy_the_kernel_cannot_honour_keeps_the_sidecar() {
    flips("10.0.0.10:5432", ReasonCode::LbPolicy, |v| {
        db_cluster(v)["lbPolicy"] = json!("RING_HASH");
    });
}

#[test]
fn no_eds_or_no_endpoints_assumes_mtls() {
    flips(
        "10.0.0.10:5432",
        ReasonCode::EndpointsUnknownAssumeMtls,
        |v| {
            v["configs"].as_array_mut().unwrap().pop();
        },
    );
    flips("10.0.0.10:5432", ReasonCode::NoEndpoints, |v| {
        v["configs"][3]["dynamicEndpointConfigs"][0]["endpointConfig"]["endpoints"] = json!([]);
    });
}

#[test]
fn sniffed_chains_to_different_clusters_keep_the_sidecar() {
    flips("10.0.0.10:5432", ReasonCode::SniffedChainsDiffer, |v| {
        let chains = v["configs"][0]["dynamicListeners"][0]["activeState"]["listener"]
            ["filterChains"]
            .as_array_mut()
            .unwrap();
        let mut http = chains[0].clone();
        http["filterChainMatch"] = json!({"applicationProtocols": ["http/1.1", "h2c"]});
        http["filters"][1]["typedConfig"]["cluster"] = json!("outbound|8080||web");
        chains.push(http);
    });
}

#[test]
fn a_virtual_host_without_an_address_keeps_the_sidecar() {
    flips("web:8080", ReasonCode::HostHeaderRouting, |v| {
        v["configs"][1]["dynamicRouteConfigs"][0]["routeConfig"]["virtualHosts"][0]["domains"] =
            json!(["web", "web:8080"]);
    });
}

#[test]
fn each_named_policy_switched_off_keeps_the_sidecar() {
    type Case = (fn(&mut BypassPolicy), &'static str, ReasonCode);
    let cases: [Case; 5] = [
        (
            |p| p.ignore_istio_default_retries = false,
            "10.0.0.20:8080",
            ReasonCode::RetryPolicy,
        ),
        (
            |p| p.zero_timeouts_are_unset = false,
            "10.0.0.20:8080",
            ReasonCode::RouteTimeout,
        ),
        (
            |p| p.telemetry_filters_inert = false,
            "10.0.0.10:5432",
            ReasonCode::NetworkFilterNotAllowed,
        ),
        (
            |p| p.empty_fault_filter_inert = false,
            "10.0.0.20:8080",
            ReasonCode::HttpFilterNotAllowed,
        ),
        (
            |p| p.least_request_as_weighted_random = false,
            "10.0.0.10:5432",
            ReasonCode::LbPolicy,
        ),
    ];
    for (switch, addr, code) in cases {
        let mut p = BypassPolicy::default();
        switch(&mut p);
        let d = decide_json(&base(), &p);
        let x = of(&d, addr);
        assert_eq!(x.decision, Verdict::Sidecar, "{addr} {code:?}");
        assert!(codes(x).contains(&code), "{code:?} not in {:#?}", x.reasons);
    }
}

#[test]
fn an_eds_change_re_decides_only_the_destinations_of_that_cluster() {
    let parsed = dump::parse(&base().to_string(), false).unwrap();
    let mut res = parsed.resources;
    let mut engine = Engine::new(&res, BypassPolicy::default());
    let key = DestKey::Service {
        address: VIP.parse().unwrap(),
        port: 5432,
    };
    assert_eq!(engine.get(&key).unwrap().decision, Verdict::Bypass);
    let mut cla = res.endpoints["outbound|5432||db"].as_ref().clone();
    cla.groups[0].endpoints[0].labels = Some(std::sync::Arc::new(
        crate::xds::dump::json::to_struct(&json!({"tlsMode": "istio"})),
    ));
    crate::xds::resources::named_mut(&mut res.endpoints)
        .insert(cla.cluster_name.clone(), std::sync::Arc::new(cla));
    let unrelated = engine.changed(&res, &[], &["no-such-assignment".to_string()]);
    assert!(unrelated.is_empty());
    let before = engine.summary();
    let changed = engine.changed(&res, &[], &["outbound|5432||db".to_string()]);
    assert_eq!(changed, vec![key.clone()]);
    assert_eq!(before.bypass, engine.summary().bypass + 1);
    assert_eq!(
        engine.summary(),
        engine.decisions().summary(),
        "kept = recounted"
    );
    assert_eq!(engine.get(&key).unwrap().decision, Verdict::Sidecar);
    let web = DestKey::Service {
        address: "10.0.0.20".parse().unwrap(),
        port: 8080,
    };
    assert_eq!(engine.get(&web).unwrap().decision, Verdict::Bypass);
}

#[test]
fn the_real_istio_dump_with_endpoints_splits_meshed_and_plain_backends() {
    let text = include_str!(
        "../../../tests/fixtures/istio/configdumps/istio-1.10.0_sidecar_bookinfo-details-v1.json"
    );
    let mut v: Value = serde_json::from_str(text).unwrap();
    let cla = |name: &str, ip: &str, port: u16, meshed: bool| {
        let md = if meshed {
            json!({"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}})
        } else {
            json!({})
        };
        json!({"endpointConfig": {"clusterName": name, "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": ip, "portValue": port}}}, "metadata": md}]}]}})
    };
    v["configs"].as_array_mut().unwrap().push(json!({"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamicEndpointConfigs": [
        cla("outbound|9080||reviews.default.svc.cluster.local", "10.244.0.20", 9080, true),
        cla("outbound|53||kube-dns.kube-system.svc.cluster.local", "10.244.0.2", 53, false),
    ]}));
    let d = decide_json(&v, &BypassPolicy::default());
    let reviews = of(&d, "10.96.36.43:9080");
    assert_eq!(reviews.decision, Verdict::Sidecar);
    assert!(
        codes(reviews).contains(&ReasonCode::MtlsEndpoint),
        "{:#?}",
        reviews.reasons
    );
    let dns = of(&d, "10.96.0.10:53");
    assert_eq!(dns.decision, Verdict::Bypass, "{:#?}", dns.reasons);
    assert_eq!(dns.endpoints[0].address.to_string(), "10.244.0.2");
    assert_eq!(of(&d, "passthrough").decision, Verdict::Sidecar);
}

/// The base plus a virtual outbound catch-all and an inbound listener for
/// port 9000 (plaintext chain to an original-destination cluster).
fn with_passthrough_and_inbound(v: &mut Value) {
    let tcp = |cluster: &str| {
        json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": cluster}})
    };
    let listeners = v["configs"][0]["dynamicListeners"].as_array_mut().unwrap();
    listeners.push(json!({"name": "virtualOutbound", "activeState": {"listener": {"name": "virtualOutbound",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}}, "useOriginalDst": true, "trafficDirection": "OUTBOUND",
        "filterChains": [{"filterChainMatch": {"destinationPort": 15001}, "filters": [tcp("BlackHoleCluster")]},
                         {"name": "virtualOutbound-catchall-tcp", "filters": [tcp("PassthroughCluster")]}]}}}));
    listeners.push(json!({"name": "virtualInbound", "activeState": {"listener": {"name": "virtualInbound",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}}, "trafficDirection": "INBOUND",
        "filterChains": [
            {"filterChainMatch": {"destinationPort": 9000, "transportProtocol": "tls"}, "filters": [tcp("inbound|9000||")]},
            {"filterChainMatch": {"destinationPort": 9000, "transportProtocol": "raw_buffer"}, "filters": [tcp("inbound|9000||")]},
            {"filterChainMatch": {"destinationPort": 9001, "transportProtocol": "tls"}, "filters": [tcp("inbound|9001||")]}]}}}));
    let clusters = v["configs"][2]["dynamicActiveClusters"]
        .as_array_mut()
        .unwrap();
    for name in ["PassthroughCluster", "inbound|9000||", "inbound|9001||"] {
        clusters.push(json!({"cluster": {"name": name, "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}}));
    }
    clusters.push(json!({"cluster": {"name": "BlackHoleCluster", "type": "STATIC"}}));
}

#[test]
fn the_passthrough_is_bypassed_only_when_the_policy_says_so_and_the_blackhole_never() {
    let mut v = base();
    with_passthrough_and_inbound(&mut v);
    let d = decide_json(&v, &BypassPolicy::default());
    let p = of(&d, "passthrough");
    assert_eq!(p.decision, Verdict::Sidecar);
    assert!(codes(p).contains(&ReasonCode::PassthroughPolicy));
    let allow = BypassPolicy {
        bypass_passthrough: true,
        ..Default::default()
    };
    assert_eq!(
        of(&decide_json(&v, &allow), "passthrough").decision,
        Verdict::Bypass
    );
    // REGISTRY_ONLY: the catch-all goes to the blackhole.
    v["configs"][0]["dynamicListeners"][2]["activeState"]["listener"]["filterChains"][1]
        ["filters"][0]["typedConfig"]["cluster"] = json!("BlackHoleCluster");
    let p = of(&decide_json(&v, &allow), "passthrough").clone();
    assert_eq!(p.decision, Verdict::Sidecar);
    assert!(
        codes(&p).contains(&ReasonCode::RegistryOnlyBlackhole),
        "{:#?}",
        p.reasons
    );
}

/// Rewrites every object key of a camelCase dump to snake_case.
fn to_snake(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    // Struct contents (metadata, matches) keep their keys.
                    let keep = k == "match" || k == "filterMetadata" || k == "value";
                    (
                        dump::json::snake(k),
                        if keep { x.clone() } else { to_snake(x) },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(to_snake).collect()),
        x => x.clone(),
    }
}

#[test]
fn snake_case_and_camel_case_dumps_decide_the_same() {
    let camel = base();
    let snake = to_snake(&camel);
    assert!(snake.to_string().contains("dynamic_listeners"));
    assert_eq!(
        decide_json(&camel, &BypassPolicy::default()),
        decide_json(&snake, &BypassPolicy::default())
    );
}

#[test]
fn a_listener_in_error_state_is_skipped_with_a_warning() {
    let mut v = base();
    v["configs"][0]["dynamicListeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "bad", "errorState": {"details": "invalid port"}}));
    let parsed = dump::parse(&v.to_string(), false).unwrap();
    assert_eq!(
        parsed.warnings,
        vec!["listener bad skipped: invalid port".to_string()]
    );
    assert_eq!(parsed.resources.listeners.len(), 2);
}

#[test]
fn a_field_the_dump_reader_does_not_understand_keeps_the_sidecar() {
    flips("10.0.0.20:8080", ReasonCode::NotUnderstood, |v| {
        web_route(v)["route"]["someFutureKnob"] = json!(true);
    });
    flips("10.0.0.10:5432", ReasonCode::NotUnderstood, |v| {
        db_cluster(v)["someFutureKnob"] = json!(true);
    });
}

#[test]
fn weighted_clusters_share_the_endpoints_by_route_weight() {
    let mut v = base();
    web_route(&mut v)["route"] = json!({"weightedClusters": {"clusters": [
        {"name": "outbound|8080||web", "weight": 90}, {"name": "outbound|5432||db", "weight": 10}]},
        "timeout": "0s"});
    let d = decide_json(&v, &BypassPolicy::default());
    let x = of(&d, "10.0.0.20:8080");
    assert_eq!(x.decision, Verdict::Bypass, "{:#?}", x.reasons);
    let w: Vec<u64> = x.endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(w.iter().sum::<u64>(), 1_000_000);
    assert!(w.contains(&900_000) && w.contains(&100_000), "{w:?}");
}

#[test]
fn an_ecds_filter_is_judged_by_the_config_it_resolves_to() {
    let mut v = base();
    http_filters(&mut v).insert(
        0,
        json!({"name": "ns.plugin", "configDiscovery": {"configSource": {"ads": {}}}}),
    );
    let ecds = |ty: &str| {
        json!({"@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump", "ecdsFilters": [
        {"ecdsFilter": {"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "ns.plugin",
            "typedConfig": {"@type": ty}}}]})
    };
    let mut telemetry = v.clone();
    telemetry["configs"]
        .as_array_mut()
        .unwrap()
        .push(ecds("type.googleapis.com/stats.PluginConfig"));
    assert_eq!(
        of(
            &decide_json(&telemetry, &BypassPolicy::default()),
            "10.0.0.20:8080"
        )
        .decision,
        Verdict::Bypass
    );
    let mut lua = v;
    lua["configs"].as_array_mut().unwrap().push(ecds(
        "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
    ));
    let x = of(
        &decide_json(&lua, &BypassPolicy::default()),
        "10.0.0.20:8080",
    )
    .clone();
    assert_eq!(x.decision, Verdict::Sidecar);
    assert!(codes(&x).contains(&ReasonCode::HttpFilterNotAllowed));
}

/// Every node of the test dump replaced, one at a time, by a value of the
/// wrong type: the reader and the engine answer (an error or decisions),
/// never panic.
#[test]
fn wrongly_typed_values_anywhere_never_panic() {
    fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                at.push(k.clone());
                paths(x, at, out);
                at.pop();
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| {
                at.push(i.to_string());
                paths(x, at, out);
                at.pop();
            }),
            _ => {}
        }
    }
    let mut v = base();
    with_passthrough_and_inbound(&mut v);
    let mut all = Vec::new();
    paths(&v, &mut Vec::new(), &mut all);
    assert!(all.len() > 200);
    for path in all {
        for bad in [json!("x"), json!(-1), json!({"@type": 7})] {
            let mut w = v.clone();
            let mut node = &mut w;
            for k in &path {
                node = match node {
                    Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    x => &mut x[k.as_str()],
                };
            }
            *node = bad;
            if let Ok(parsed) = dump::parse(&w.to_string(), true) {
                let _ = decide(&parsed.resources, &BypassPolicy::default());
            }
        }
    }
}
