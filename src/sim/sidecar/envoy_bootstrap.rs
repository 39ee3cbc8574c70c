//! The Envoy bootstrap of the simulated sidecar, built from envoy-types'
//! protobuf types and written as a binary `.pb` file (Envoy picks the format
//! by extension), so every field name and type is checked at compile time.
//!
//! It mirrors what istiod gives a sidecar for pass-through traffic (see the
//! `virtualOutbound`/`virtualInbound` listeners and `*Passthrough*` clusters
//! in the Istio config dump under tests/fixtures/istio/configdumps):
//!
//! - `virtualOutbound` on 0.0.0.0:15001 (+ [::]:15001): `use_original_dst`,
//!   one filter chain to `PassthroughCluster` (ORIGINAL_DST), and a
//!   black-hole chain for connections addressed to 15001 itself (no loop);
//! - `virtualInbound` on 0.0.0.0:15006 (+ [::]:15006): the original_dst
//!   listener filter, chains by destination family to
//!   `InboundPassthroughClusterIpv4/6`, which connect to the app from
//!   127.0.0.6 / ::6 like Istio, and a black-hole chain for 15006 itself;
//! - the admin API on a unix socket (no port in the pod), for stats.
//!
//! Tcp mode uses tcp_proxy; http mode an HTTP connection manager with one
//! catch-all route and the router filter (Envoy's L7 path).
//!
//! With [`BootstrapParams::ads`] set the bootstrap is Istio's instead: one
//! static cluster, `xds-grpc`, HTTP/2 to the control plane's unix socket
//! (pilot-agent's `./etc/istio/proxy/XDS`), and `dynamic_resources` taking
//! listeners and clusters over ADS ([`crate::sim::xds`] serves them, built
//! from [`pass_through`] plus the services it knows).

use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    bootstrap::{DynamicResources, StaticResources},
    Admin, Bootstrap,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
    CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service,
    socket_address::PortSpecifier, Address, AggregatedConfigSource, ApiConfigSource, ApiVersion,
    BindConfig, CidrRange, ConfigSource, GrpcService, Http2ProtocolOptions, Node, Pipe,
    SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, AdditionalAddress, Filter, FilterChain, FilterChainMatch, Listener,
    ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use prost::{Message, Name};

use super::SidecarMode;

/// Names Istio gives the pass-through resources (kept so stats and config
/// dumps read the same as a real sidecar's).
pub const OUTBOUND_LISTENER: &str = "virtualOutbound";
pub const INBOUND_LISTENER: &str = "virtualInbound";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const INBOUND_CLUSTER_V4: &str = "InboundPassthroughClusterIpv4";
pub const INBOUND_CLUSTER_V6: &str = "InboundPassthroughClusterIpv6";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Listener stat prefixes: `listener.outbound.*` / `listener.inbound.*`, the
/// same words as the HAProxy sidecar's frontends.
pub const OUTBOUND_STATS: &str = "outbound";
pub const INBOUND_STATS: &str = "inbound";
/// Istio's listener ports.
pub const ISTIO_OUTBOUND_PORT: u16 = 15001;
pub const ISTIO_INBOUND_PORT: u16 = 15006;
/// Istio's name for the static cluster that reaches the control plane.
pub const XDS_CLUSTER: &str = "xds-grpc";

/// What varies between sidecars.
#[derive(Debug, Clone)]
pub struct BootstrapParams<'a> {
    /// Envoy node id (Istio's `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    pub node_cluster: String,
    pub admin_socket: &'a Path,
    pub mode: SidecarMode,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Also listen on [::] (dual-stack pods).
    pub ipv6: bool,
    /// The ADS server's unix socket: listeners and clusters come from it
    /// (None: the pass-through resources are static).
    pub ads: Option<&'a Path>,
}

/// `message` packed as a `google.protobuf.Any`.
pub(crate) fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub(crate) fn socket_address(ip: &str, port: u16) -> SocketAddress {
    SocketAddress {
        address: ip.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(port.into())),
        ..Default::default()
    }
}

pub(crate) fn address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(socket_address(ip, port))),
    }
}

pub(crate) fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

fn cidr(prefix: &str) -> CidrRange {
    CidrRange {
        address_prefix: prefix.to_string(),
        prefix_len: Some(UInt32Value { value: 0 }),
    }
}

/// The router, an HTTP connection manager's last (here: only) filter.
pub(crate) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// A network filter that sends the connection (tcp mode) or each request
/// (http mode) to `cluster`.
fn forward_to(cluster: &str, stat_prefix: &str, mode: SidecarMode) -> Filter {
    let (name, config) = match mode {
        SidecarMode::Tcp => (
            "envoy.filters.network.tcp_proxy",
            any(&TcpProxy {
                stat_prefix: stat_prefix.to_string(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            }),
        ),
        SidecarMode::Http => (
            "envoy.filters.network.http_connection_manager",
            any(&HttpConnectionManager {
                stat_prefix: stat_prefix.to_string(),
                codec_type: CodecType::Auto as i32,
                route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                    name: stat_prefix.to_string(),
                    virtual_hosts: vec![VirtualHost {
                        name: "allow_any".into(),
                        domains: vec!["*".into()],
                        routes: vec![Route {
                            name: "allow_any".into(),
                            r#match: Some(RouteMatch {
                                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                                ..Default::default()
                            }),
                            action: Some(route::Action::Route(RouteAction {
                                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                    cluster.into(),
                                )),
                                // No route timeout: long responses are not cut.
                                timeout: Some(seconds(0)),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                http_filters: vec![router_filter()],
                ..Default::default()
            }),
        ),
    };
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

/// A chain for connections addressed to the listener's own port: dropped,
/// like Istio's `virtualInbound-blackhole` (a proxy forwarding to itself
/// would loop).
fn blackhole_chain(port: u16) -> FilterChain {
    FilterChain {
        name: format!("blackhole-{port}"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port.into() }),
            ..Default::default()
        }),
        filters: vec![forward_to(
            BLACKHOLE_CLUSTER,
            "BlackHoleCluster",
            SidecarMode::Tcp,
        )],
        ..Default::default()
    }
}

/// A chain to `cluster` whose tcp_proxy / connection manager counts under
/// `stats` (`tcp.<stats>.*` / `http.<stats>.*`: the side's word, so a side's
/// forwarded requests are one counter).
fn chain(
    name: &str,
    prefix: Option<&str>,
    cluster: &str,
    stats: &str,
    mode: SidecarMode,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match: prefix.map(|p| FilterChainMatch {
            prefix_ranges: vec![cidr(p)],
            ..Default::default()
        }),
        filters: vec![forward_to(cluster, stats, mode)],
        ..Default::default()
    }
}

fn listener(name: &str, stats: &str, port: u16, ipv6: bool) -> Listener {
    Listener {
        name: name.into(),
        stat_prefix: stats.into(),
        address: Some(address("0.0.0.0", port)),
        additional_addresses: if ipv6 {
            vec![AdditionalAddress {
                address: Some(address("::", port)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

fn outbound_listener(p: &BootstrapParams<'_>) -> Listener {
    Listener {
        // Hands the connection the original destination (SO_ORIGINAL_DST
        // after REDIRECT or meshlane's connect hook) as its local address.
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        // A chain without match criteria takes what the more specific
        // black-hole chain does not.
        filter_chains: vec![
            blackhole_chain(p.outbound_port),
            chain(
                "PassthroughFilterChain",
                None,
                PASSTHROUGH_CLUSTER,
                OUTBOUND_STATS,
                p.mode,
            ),
        ],
        ..listener(OUTBOUND_LISTENER, OUTBOUND_STATS, p.outbound_port, p.ipv6)
    }
}

fn inbound_listener(p: &BootstrapParams<'_>) -> Listener {
    let mut chains = vec![
        blackhole_chain(p.inbound_port),
        chain(
            "virtualInbound-ipv4",
            Some("0.0.0.0"),
            INBOUND_CLUSTER_V4,
            INBOUND_STATS,
            p.mode,
        ),
    ];
    if p.ipv6 {
        chains.push(chain(
            "virtualInbound-ipv6",
            Some("::"),
            INBOUND_CLUSTER_V6,
            INBOUND_STATS,
            p.mode,
        ));
    }
    Listener {
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &OriginalDst::default(),
            ))),
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: chains,
        ..listener(INBOUND_LISTENER, INBOUND_STATS, p.inbound_port, p.ipv6)
    }
}

/// An ORIGINAL_DST cluster (upstream = the connection's original
/// destination), with Istio's unlimited circuit breakers.
pub(crate) fn passthrough_cluster(name: &str, bind: Option<&str>) -> Cluster {
    let unlimited = Some(UInt32Value { value: u32::MAX });
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(seconds(10)),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: unlimited,
                max_pending_requests: unlimited,
                max_requests: unlimited,
                max_retries: unlimited,
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        upstream_bind_config: bind.map(|ip| BindConfig {
            source_address: Some(socket_address(ip, 0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A STATIC cluster with no endpoints: connections to it are closed.
fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(10)),
        ..Default::default()
    }
}

/// A config source meaning "over the ADS stream" (xDS v3).
pub(crate) fn ads_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Istio's `xds-grpc`: a STATIC cluster, HTTP/2, one endpoint, the control
/// plane's unix socket.
fn xds_cluster(socket: &Path) -> Cluster {
    let h2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    let pipe = Address {
        address: Some(address::Address::Pipe(Pipe {
            path: socket.to_string_lossy().into_owned(),
            mode: 0,
        })),
    };
    Cluster {
        name: XDS_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(1)),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), any(&h2))].into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(pipe),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Listeners and clusters from the ADS server behind `socket`.
fn dynamic_resources() -> DynamicResources {
    DynamicResources {
        ads_config: Some(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: XDS_CLUSTER.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            set_node_on_first_message_only: true,
            ..Default::default()
        }),
        lds_config: Some(ads_source()),
        cds_config: Some(ads_source()),
        ..Default::default()
    }
}

/// The pass-through listeners (`virtualOutbound`, `virtualInbound`) and
/// clusters every sidecar has, statically or over ADS.
pub fn pass_through(p: &BootstrapParams<'_>) -> (Vec<Listener>, Vec<Cluster>) {
    let mut clusters = vec![
        passthrough_cluster(PASSTHROUGH_CLUSTER, None),
        passthrough_cluster(INBOUND_CLUSTER_V4, Some("127.0.0.6")),
        blackhole_cluster(),
    ];
    if p.ipv6 {
        clusters.push(passthrough_cluster(INBOUND_CLUSTER_V6, Some("::6")));
    }
    (vec![outbound_listener(p), inbound_listener(p)], clusters)
}

/// [`pass_through`] for a sidecar on Istio's ports (15001, 15006), as the
/// simulated node runs them.
pub fn istio_pass_through(mode: SidecarMode, ipv6: bool) -> (Vec<Listener>, Vec<Cluster>) {
    pass_through(&BootstrapParams {
        node_id: String::new(),
        node_cluster: String::new(),
        admin_socket: Path::new(""),
        mode,
        outbound_port: ISTIO_OUTBOUND_PORT,
        inbound_port: ISTIO_INBOUND_PORT,
        ipv6,
        ads: None,
    })
}

/// The whole bootstrap.
pub fn bootstrap(p: &BootstrapParams<'_>) -> Bootstrap {
    let (static_resources, dynamic_resources) = match p.ads {
        None => {
            let (listeners, clusters) = pass_through(p);
            let sr = StaticResources {
                listeners,
                clusters,
                ..Default::default()
            };
            (sr, None)
        }
        Some(socket) => {
            let sr = StaticResources {
                clusters: vec![xds_cluster(socket)],
                ..Default::default()
            };
            (sr, Some(dynamic_resources()))
        }
    };
    Bootstrap {
        node: Some(Node {
            id: p.node_id.clone(),
            cluster: p.node_cluster.clone(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(Address {
                address: Some(address::Address::Pipe(Pipe {
                    path: p.admin_socket.to_string_lossy().into_owned(),
                    mode: 0o600,
                })),
            }),
            ..Default::default()
        }),
        static_resources: Some(static_resources),
        dynamic_resources,
        ..Default::default()
    }
}

/// The bootstrap as Envoy's binary `.pb` format.
pub fn encode(p: &BootstrapParams<'_>) -> Vec<u8> {
    bootstrap(p).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use serde_json::Value;

    use super::*;

    fn params(mode: SidecarMode, ipv6: bool) -> BootstrapParams<'static> {
        BootstrapParams {
            node_id: "sidecar~10.1.0.2~app.default~default.svc.cluster.local".into(),
            node_cluster: "app.default".into(),
            admin_socket: Path::new("/run/meshlane-test/sidecar-app/admin.sock"),
            mode,
            outbound_port: 15001,
            inbound_port: 15006,
            ipv6,
            ads: None,
        }
    }

    fn all_params() -> Vec<BootstrapParams<'static>> {
        let mut v = Vec::new();
        for mode in [SidecarMode::Tcp, SidecarMode::Http] {
            for ipv6 in [false, true] {
                v.push(params(mode, ipv6));
            }
        }
        v
    }

    /// A typed config must carry the message its URL names: decoding it as
    /// that type gives back the same bytes.
    fn unpack<M: Message + Name + Default>(a: &Any) -> M {
        assert_eq!(a.type_url, M::type_url());
        let m = M::decode(a.value.as_slice()).expect("typed config decodes");
        assert_eq!(m.encode_to_vec(), a.value);
        m
    }

    fn typed(f: &Filter) -> &Any {
        match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => a,
            other => panic!("filter {} has no typed config: {other:?}", f.name),
        }
    }

    /// The cluster names a network filter forwards to.
    fn targets(f: &Filter) -> Vec<String> {
        match f.name.as_str() {
            "envoy.filters.network.tcp_proxy" => {
                match unpack::<TcpProxy>(typed(f)).cluster_specifier {
                    Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![c],
                    other => panic!("tcp_proxy without a cluster: {other:?}"),
                }
            }
            "envoy.filters.network.http_connection_manager" => {
                let hcm = unpack::<HttpConnectionManager>(typed(f));
                let names: Vec<&str> = hcm.http_filters.iter().map(|h| h.name.as_str()).collect();
                assert_eq!(
                    names,
                    ["envoy.filters.http.router"],
                    "router is last and only"
                );
                match &hcm.http_filters[0].config_type {
                    Some(http_filter::ConfigType::TypedConfig(a)) => {
                        unpack::<Router>(a);
                    }
                    other => panic!("router without typed config: {other:?}"),
                }
                let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
                    panic!("HCM without an inline route config");
                };
                rc.virtual_hosts
                    .iter()
                    .flat_map(|vh| &vh.routes)
                    .map(|r| match &r.action {
                        Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
                            ..
                        })) => c.clone(),
                        other => panic!("route without a cluster: {other:?}"),
                    })
                    .collect()
            }
            other => panic!("unexpected network filter {other}"),
        }
    }

    fn port_of(a: &Option<Address>) -> (String, u32) {
        match a.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(SocketAddress {
                address,
                port_specifier: Some(PortSpecifier::PortValue(p)),
                ..
            })) => (address.clone(), *p),
            other => panic!("not a socket address: {other:?}"),
        }
    }

    #[test]
    fn binary_bootstrap_decodes_back_to_the_same_config() {
        for p in all_params() {
            let bytes = encode(&p);
            let back = Bootstrap::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(back, bootstrap(&p));
        }
    }

    #[test]
    fn every_chain_forwards_to_a_defined_cluster_with_typed_configs_that_decode() {
        for p in all_params() {
            let b = bootstrap(&p);
            let sr = b.static_resources.expect("static resources");
            let clusters: HashSet<&str> = sr.clusters.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(clusters.len(), sr.clusters.len(), "cluster names unique");
            for l in &sr.listeners {
                let mut chain_names = HashSet::new();
                for fc in &l.filter_chains {
                    assert!(
                        chain_names.insert(fc.name.clone()),
                        "chain names unique in {}",
                        l.name
                    );
                    assert_eq!(fc.filters.len(), 1);
                    for t in targets(&fc.filters[0]) {
                        assert!(
                            clusters.contains(t.as_str()),
                            "{} -> {t} undefined",
                            fc.name
                        );
                    }
                }
                for lf in &l.listener_filters {
                    match &lf.config_type {
                        Some(listener_filter::ConfigType::TypedConfig(a)) => {
                            unpack::<OriginalDst>(a);
                        }
                        other => panic!("listener filter without typed config: {other:?}"),
                    }
                }
                let want_addresses = if p.ipv6 { 1 } else { 0 };
                assert_eq!(l.additional_addresses.len(), want_addresses);
            }
        }
    }

    #[test]
    fn listeners_take_the_istio_ports_and_never_forward_to_themselves() {
        let p = params(SidecarMode::Tcp, true);
        let sr = bootstrap(&p).static_resources.expect("static resources");
        let by_name = |n: &str| sr.listeners.iter().find(|l| l.name == n).expect(n);
        for (name, port, stats) in [
            (OUTBOUND_LISTENER, 15001, OUTBOUND_STATS),
            (INBOUND_LISTENER, 15006, INBOUND_STATS),
        ] {
            let l = by_name(name);
            assert_eq!(port_of(&l.address), ("0.0.0.0".into(), port));
            assert_eq!(
                port_of(&l.additional_addresses[0].address),
                ("::".into(), port)
            );
            assert_eq!(l.stat_prefix, stats);
            // The chain for the listener's own port goes nowhere.
            let own: Vec<&FilterChain> = l
                .filter_chains
                .iter()
                .filter(|fc| {
                    fc.filter_chain_match
                        .as_ref()
                        .and_then(|m| m.destination_port)
                        .map(|v| v.value)
                        == Some(port)
                })
                .collect();
            assert_eq!(own.len(), 1, "{name}: one black-hole chain for {port}");
            assert_eq!(targets(&own[0].filters[0]), [BLACKHOLE_CLUSTER]);
        }
        let out = by_name(OUTBOUND_LISTENER);
        assert_eq!(out.use_original_dst, Some(BoolValue { value: true }));
        let inbound = by_name(INBOUND_LISTENER);
        // Inbound: by destination family to the cluster binding 127.0.0.6 / ::6.
        for (prefix, cluster) in [("0.0.0.0", INBOUND_CLUSTER_V4), ("::", INBOUND_CLUSTER_V6)] {
            let fc = inbound
                .filter_chains
                .iter()
                .find(|fc| {
                    fc.filter_chain_match
                        .as_ref()
                        .is_some_and(|m| m.prefix_ranges.iter().any(|r| r.address_prefix == prefix))
                })
                .expect(prefix);
            assert_eq!(targets(&fc.filters[0]), [cluster]);
        }
        let bh = sr
            .clusters
            .iter()
            .find(|c| c.name == BLACKHOLE_CLUSTER)
            .expect("black hole");
        assert!(bh.load_assignment.is_none(), "black hole has no endpoints");
    }

    #[test]
    fn ads_bootstrap_has_only_the_xds_cluster_and_takes_lds_cds_over_ads() {
        let socket = Path::new("/run/meshlane-test/ads/xds.sock");
        let p = BootstrapParams {
            ads: Some(socket),
            ..params(SidecarMode::Http, false)
        };
        let b = Bootstrap::decode(encode(&p).as_slice()).expect("decodes");
        let sr = b.static_resources.expect("static resources");
        assert!(sr.listeners.is_empty(), "listeners come over ADS");
        assert_eq!(sr.clusters.len(), 1);
        let xds = &sr.clusters[0];
        assert_eq!(xds.name, XDS_CLUSTER);
        let h2 = xds
            .typed_extension_protocol_options
            .get(&HttpProtocolOptions::full_name())
            .expect("HTTP/2 protocol options");
        let h2 = unpack::<HttpProtocolOptions>(h2);
        assert!(matches!(
            h2.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(
                        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                    )
                }
            ))
        ));
        let ep = &xds.load_assignment.as_ref().expect("endpoint").endpoints[0].lb_endpoints[0];
        let Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address:
                Some(Address {
                    address: Some(address::Address::Pipe(pipe)),
                }),
            ..
        })) = &ep.host_identifier
        else {
            panic!("xds-grpc is not a unix socket endpoint: {ep:?}");
        };
        assert_eq!(Path::new(&pipe.path), socket);
        let dr = b.dynamic_resources.expect("dynamic resources");
        assert_eq!(dr.lds_config, Some(ads_source()));
        assert_eq!(dr.cds_config, Some(ads_source()));
        let ads = dr.ads_config.expect("ads config");
        assert_eq!(ads.api_type, ApiType::Grpc as i32);
        assert_eq!(ads.transport_api_version, ApiVersion::V3 as i32);
        match &ads.grpc_services[0].target_specifier {
            Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) => {
                assert_eq!(g.cluster_name, XDS_CLUSTER)
            }
            other => panic!("ADS not through xds-grpc: {other:?}"),
        }
        // Static and ADS sidecars get the same pass-through resources.
        let (listeners, clusters) = istio_pass_through(SidecarMode::Http, false);
        let static_sr = bootstrap(&params(SidecarMode::Http, false))
            .static_resources
            .expect("static");
        assert_eq!(static_sr.listeners, listeners);
        assert_eq!(static_sr.clusters, clusters);
    }

    fn configdump() -> Value {
        let dir = std::env::var_os("MESHLANE_ISTIO_CONFIGDUMP_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio/configdumps")
            });
        let path = dir.join("istio-1.10.0_sidecar_bookinfo-details-v1.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).expect("config dump is JSON")
    }

    /// Resources of one kind in the dump (`key`: "cluster" or "listener").
    fn dumped<'a>(dump: &'a Value, key: &str, name: &str) -> &'a Value {
        dump["configs"]
            .as_array()
            .expect("configs")
            .iter()
            .flat_map(|c| {
                [
                    "staticClusters",
                    "dynamicActiveClusters",
                    "dynamicListeners",
                ]
                .iter()
                .filter_map(move |k| c.get(*k).and_then(Value::as_array))
                .flatten()
            })
            .filter_map(|r| {
                r.get(key)
                    .or_else(|| r.pointer(&format!("/activeState/{key}")))
            })
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{key} {name} not in the config dump"))
    }

    fn cluster<'a>(sr: &'a StaticResources, name: &str) -> &'a Cluster {
        sr.clusters.iter().find(|c| c.name == name).expect(name)
    }

    /// Our pass-through resources agree with what istiod 1.10 gave a real
    /// sidecar (bookinfo details-v1) on every field the data path depends on.
    #[test]
    fn passthrough_resources_match_a_real_istio_sidecar() {
        let dump = configdump();
        let sr = bootstrap(&params(SidecarMode::Tcp, true))
            .static_resources
            .expect("static resources");
        for (name, bind) in [
            (PASSTHROUGH_CLUSTER, None),
            (INBOUND_CLUSTER_V4, Some("127.0.0.6")),
            (INBOUND_CLUSTER_V6, Some("::6")),
        ] {
            let real = dumped(&dump, "cluster", name);
            let ours = cluster(&sr, name);
            assert_eq!(real["type"], "ORIGINAL_DST");
            assert_eq!(
                ours.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(
                    DiscoveryType::OriginalDst as i32
                ))
            );
            assert_eq!(real["lbPolicy"], "CLUSTER_PROVIDED");
            assert_eq!(ours.lb_policy, LbPolicy::ClusterProvided as i32);
            assert_eq!(real["connectTimeout"], "10s");
            assert_eq!(ours.connect_timeout, Some(seconds(10)));
            let real_bind = real.pointer("/upstreamBindConfig/sourceAddress/address");
            let our_bind = ours
                .upstream_bind_config
                .as_ref()
                .and_then(|b| b.source_address.as_ref())
                .map(|a| a.address.as_str());
            assert_eq!(real_bind.and_then(Value::as_str), our_bind, "{name} source");
            assert_eq!(our_bind, bind);
            let real_max = real.pointer("/circuitBreakers/thresholds/0/maxConnections");
            assert_eq!(real_max.and_then(Value::as_u64), Some(u32::MAX.into()));
        }
        let out = dumped(&dump, "listener", OUTBOUND_LISTENER);
        assert_eq!(out["useOriginalDst"], true);
        assert_eq!(out["trafficDirection"], "OUTBOUND");
        assert_eq!(
            out.pointer("/address/socketAddress/portValue"),
            Some(&15001.into())
        );
        let inb = dumped(&dump, "listener", INBOUND_LISTENER);
        assert_eq!(inb["trafficDirection"], "INBOUND");
        assert_eq!(
            inb.pointer("/address/socketAddress/portValue"),
            Some(&15006.into())
        );
        assert_eq!(
            inb.pointer("/listenerFilters/0/typedConfig/@type")
                .and_then(Value::as_str),
            Some(OriginalDst::type_url().as_str())
        );
        let ours = sr
            .listeners
            .iter()
            .find(|l| l.name == INBOUND_LISTENER)
            .expect("inbound");
        assert_eq!(
            ours.listener_filters[0].name,
            inb["listenerFilters"][0]["name"]
        );
        assert_eq!(ours.traffic_direction, TrafficDirection::Inbound as i32);
    }
}
