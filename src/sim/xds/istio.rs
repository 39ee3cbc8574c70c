//! The config istiod gives a sidecar, shaped like its resources (names from
//! the real config dumps under tests/fixtures/istio), for the services the
//! simulated mesh knows:
//!
//! - the pass-through listeners and clusters every sidecar has
//!   (`virtualOutbound`, `virtualInbound`, `PassthroughCluster`, ...; see
//!   [`envoy_bootstrap::pass_through`]);
//! - per HTTP service port, listener `0.0.0.0_<port>` (not bound: reached
//!   from `virtualOutbound` through `use_original_dst`) whose connection
//!   manager takes route `<port>` over RDS: one virtual host per service
//!   (`<host>:<port>`, matching its names and VIP) and `allow_any` to
//!   `PassthroughCluster`;
//! - per TCP service, listener `<vip>_<port>` with tcp_proxy;
//! - per service, EDS cluster `outbound|<port>||<host>` and its endpoints.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::BoolValue;

use super::snapshot::Snapshot;
use crate::sim::sidecar::envoy_bootstrap::{
    address, ads_source, any, istio_pass_through, router_filter, seconds, PASSTHROUGH_CLUSTER,
};
use crate::sim::SidecarMode;

/// How a service's port speaks (Istio's port protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

/// One port of a Kubernetes service as istiod sees it.
#[derive(Debug, Clone)]
pub struct Service {
    /// `name.namespace.svc.cluster.local`.
    pub host: String,
    /// The ClusterIP.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Ready pod addresses (EDS).
    pub endpoints: Vec<SocketAddr>,
}

impl Service {
    /// Istio's outbound cluster name: `outbound|<port>||<host>`.
    pub fn cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host)
    }

    /// Istio's outbound listener name: `0.0.0.0_<port>` for HTTP (shared by
    /// the port's services), `<vip>_<port>` for TCP.
    pub fn listener(&self) -> String {
        match self.protocol {
            Protocol::Http => format!("0.0.0.0_{}", self.port),
            Protocol::Tcp => format!("{}_{}", self.vip, self.port),
        }
    }

    /// Names a client may use for it: host, `name`, `name.namespace`, the
    /// VIP, each also with `:port`.
    fn domains(&self) -> Vec<String> {
        let mut names = vec![self.host.clone(), self.vip.to_string()];
        let parts: Vec<&str> = self.host.split('.').collect();
        if parts.len() >= 2 {
            names.push(parts[0].to_string());
            names.push(format!("{}.{}", parts[0], parts[1]));
        }
        let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{}", self.port)).collect();
        names.extend(with_port);
        names
    }
}

/// The snapshot a sidecar gets for `services` (version `version`), its
/// pass-through resources forwarding in `mode`.
pub fn sidecar_snapshot(
    version: &str,
    mode: SidecarMode,
    ipv6: bool,
    services: &[Service],
) -> Snapshot {
    let mut snap = Snapshot::new(version);
    let (listeners, clusters) = istio_pass_through(mode, ipv6);
    for l in &listeners {
        snap.add(l.name.clone(), l);
    }
    for c in &clusters {
        snap.add(c.name.clone(), c);
    }
    for s in services {
        snap.add(s.cluster(), &eds_cluster(s));
        snap.add(s.cluster(), &endpoints(s));
        match s.protocol {
            Protocol::Tcp => snap.add(s.listener(), &tcp_listener(s)),
            Protocol::Http => {
                snap.add(s.listener(), &http_listener(s.port));
                let same_port: Vec<&Service> = services
                    .iter()
                    .filter(|o| o.protocol == Protocol::Http && o.port == s.port)
                    .collect();
                snap.add(s.port.to_string(), &route(s.port, &same_port));
            }
        }
    }
    snap
}

fn eds_cluster(s: &Service) -> Cluster {
    Cluster {
        name: s.cluster(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: s.cluster(),
        }),
        lb_policy: LbPolicy::LeastRequest as i32,
        connect_timeout: Some(seconds(10)),
        ..Default::default()
    }
}

fn endpoints(s: &Service) -> ClusterLoadAssignment {
    let lb_endpoints = s
        .endpoints
        .iter()
        .map(|ep| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(address(&ep.ip().to_string(), ep.port())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: s.cluster(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An outbound listener that only takes connections handed over by
/// `virtualOutbound` (Istio's `bind_to_port: false`).
fn unbound_listener(name: String, ip: &str, port: u16, filter: Filter) -> Listener {
    Listener {
        name,
        address: Some(address(ip, port)),
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_listener(s: &Service) -> Listener {
    let proxy = TcpProxy {
        stat_prefix: s.cluster(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(s.cluster())),
        ..Default::default()
    };
    let filter = Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    };
    unbound_listener(s.listener(), &s.vip.to_string(), s.port, filter)
}

/// The HCM stat prefix of `0.0.0.0_<port>` (`http.<prefix>.*`), as Istio
/// names it.
pub fn http_stat_prefix(port: u16) -> String {
    format!("outbound_0.0.0.0_{port}")
}

fn http_listener(port: u16) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: http_stat_prefix(port),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: port.to_string(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    let filter = Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    };
    unbound_listener(format!("0.0.0.0_{port}"), "0.0.0.0", port, filter)
}

fn to_cluster(name: &str, cluster: String) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(seconds(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Route `<port>`: a virtual host per service, then `allow_any`.
fn route(port: u16, services: &[&Service]) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = services
        .iter()
        .map(|s| VirtualHost {
            name: format!("{}:{port}", s.host),
            domains: s.domains(),
            routes: vec![to_cluster("default", s.cluster())],
            ..Default::default()
        })
        .collect();
    virtual_hosts.push(VirtualHost {
        name: "allow_any".into(),
        domains: vec!["*".into()],
        routes: vec![to_cluster("allow_any", PASSTHROUGH_CLUSTER.into())],
        ..Default::default()
    });
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::{Message, Name};

    use super::*;

    fn services() -> Vec<Service> {
        vec![
            Service {
                host: "web.default.svc.cluster.local".into(),
                vip: "10.96.0.10".parse().unwrap(),
                port: 8080,
                protocol: Protocol::Http,
                endpoints: vec!["10.201.3.5:8080".parse().unwrap()],
            },
            Service {
                host: "echo.default.svc.cluster.local".into(),
                vip: "10.96.0.20".parse().unwrap(),
                port: 9000,
                protocol: Protocol::Tcp,
                endpoints: vec!["10.201.3.5:9000".parse().unwrap()],
            },
        ]
    }

    #[test]
    fn names_follow_istio() {
        let s = &services();
        assert_eq!(
            s[0].cluster(),
            "outbound|8080||web.default.svc.cluster.local"
        );
        assert_eq!(s[0].listener(), "0.0.0.0_8080");
        assert_eq!(s[1].listener(), "10.96.0.20_9000");
        let d = s[0].domains();
        for want in [
            "web",
            "web.default",
            "10.96.0.10:8080",
            "web.default.svc.cluster.local:8080",
        ] {
            assert!(d.iter().any(|x| x == want), "{want} in {d:?}");
        }
    }

    #[test]
    fn every_reference_resolves_inside_the_snapshot() {
        let snap = sidecar_snapshot("1", SidecarMode::Tcp, false, &services());
        let (lds, cds) = (Listener::type_url(), Cluster::type_url());
        let (rds, eds) = (
            RouteConfiguration::type_url(),
            ClusterLoadAssignment::type_url(),
        );
        let clusters = snap.names(&cds);
        for want in [
            "virtualOutbound",
            "virtualInbound",
            "0.0.0.0_8080",
            "10.96.0.20_9000",
        ] {
            assert!(snap.names(&lds).contains(&want), "{want}");
        }
        // Every EDS cluster has its endpoints, every HTTP listener its route.
        for any in snap.select(&cds, &[]) {
            let c = Cluster::decode(any.value.as_slice()).unwrap();
            if let Some(eds_cfg) = c.eds_cluster_config {
                let cla = snap.select(&eds, std::slice::from_ref(&eds_cfg.service_name));
                let cla = ClusterLoadAssignment::decode(cla[0].value.as_slice()).unwrap();
                assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
            }
        }
        let routes = snap.select(&rds, &["8080".into()]);
        let rc = RouteConfiguration::decode(routes[0].value.as_slice()).unwrap();
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                let Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
                    ..
                })) = &r.action
                else {
                    panic!("route without a cluster");
                };
                assert!(clusters.contains(&c.as_str()), "{c} undefined");
            }
        }
        assert_eq!(rc.virtual_hosts.last().unwrap().domains, ["*"]);
    }
}
