//! Istio's per-service shapes on top of [`sidecar_snapshot`]'s plain
//! services, each as istiod writes it for a sidecar:
//!
//! - [`mark_meshed`]: the service's pods run sidecars, so istiod's
//!   auto-mTLS applies: the cluster gets Istio's two
//!   `transport_socket_matches` (`tlsMode-istio` -> TLS, `tlsMode-disabled`
//!   -> plaintext) and every endpoint the `tlsMode: istio` label under
//!   `envoy.transport_socket_match`;
//! - [`add_rbac`]: a TCP service's listener gets an RBAC network filter
//!   before its tcp_proxy (an AuthorizationPolicy on the port; ALLOW any);
//! - [`set_weights`]: the endpoints' `load_balancing_weight`s;
//! - [`add_fault`]: a VirtualService fault on an HTTP service: the fault
//!   filter (empty, as istiod always adds it) ahead of the router in the
//!   port's connection manager, and the active delay on the service's
//!   route (`typed_per_filter_config`);
//! - [`registry_only`]: `outboundTrafficPolicy: REGISTRY_ONLY`: the
//!   `virtualOutbound` pass-through chain goes to `BlackHoleCluster` and
//!   each HTTP route's `allow_any` virtual host becomes `block_all` (a 502
//!   direct response), so a destination no service names is dropped.
//!
//! [`sidecar_snapshot`]: super::sidecar_snapshot

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::TransportSocketMatch, Cluster};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Metadata, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, Permission, Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_match::PathSpecifier, DirectResponseAction, Route, RouteConfiguration, RouteMatch,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{value::Kind, Duration, Struct, UInt32Value, Value};
use prost::{Message, Name};

use super::istio::{Protocol, Service};
use super::snapshot::Snapshot;
use crate::sim::sidecar::envoy_bootstrap::{
    any, BLACKHOLE_CLUSTER, OUTBOUND_LISTENER, PASSTHROUGH_CLUSTER,
};

/// What a shape needs and did not find in the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("snapshot has no {kind} {name:?} (add the service with sidecar_snapshot first)")]
    Missing { kind: &'static str, name: String },
    #[error("{0}: RBAC is added to TCP services' listeners only")]
    NotTcp(String),
    #[error("{0}: a fault is added to HTTP services' routes only")]
    NotHttp(String),
    #[error("{kind} {name:?} is not shaped as istiod writes it: {what}")]
    Unexpected {
        kind: &'static str,
        name: String,
        what: &'static str,
    },
    #[error("{service}: {given} weights for {endpoints} endpoints")]
    Weights {
        service: String,
        given: usize,
        endpoints: usize,
    },
}

pub(super) fn held<M: Message + Name + Default>(
    snap: &Snapshot,
    kind: &'static str,
    name: &str,
) -> Result<M, PolicyError> {
    let missing = || PolicyError::Missing {
        kind,
        name: name.into(),
    };
    let found = snap.select(&M::type_url(), &[name.to_string()]);
    let any = found.first().ok_or_else(missing)?;
    M::decode(any.value.as_slice()).map_err(|_| missing())
}

fn string_struct(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

fn socket<M: Message + Name>(name: &str, config: &M) -> TransportSocket {
    TransportSocket {
        name: name.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(config))),
    }
}

/// Istio's auto-mTLS for a service whose pods have sidecars.
pub fn mark_meshed(snap: &mut Snapshot, s: &Service) -> Result<(), PolicyError> {
    let mut cluster: Cluster = held(snap, "cluster", &s.cluster())?;
    cluster.transport_socket_matches = vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(string_struct(&[("tlsMode", "istio")])),
            transport_socket: Some(socket(
                "envoy.transport_sockets.tls",
                &UpstreamTlsContext::default(),
            )),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(socket(
                "envoy.transport_sockets.raw_buffer",
                &RawBuffer::default(),
            )),
        },
    ];
    snap.add(s.cluster(), &cluster);
    let mut cla: ClusterLoadAssignment = held(snap, "endpoints", &s.cluster())?;
    for e in cla
        .endpoints
        .iter_mut()
        .flat_map(|l| l.lb_endpoints.iter_mut())
    {
        let md = e.metadata.get_or_insert_with(Metadata::default);
        md.filter_metadata.insert(
            "envoy.transport_socket_match".into(),
            string_struct(&[("tlsMode", "istio")]),
        );
    }
    snap.add(s.cluster(), &cla);
    Ok(())
}

/// An RBAC network filter (ALLOW any principal any permission, as an
/// AuthorizationPolicy with an empty rule) in front of a TCP service.
pub fn add_rbac(snap: &mut Snapshot, s: &Service) -> Result<(), PolicyError> {
    if s.protocol != Protocol::Tcp {
        return Err(PolicyError::NotTcp(s.host.clone()));
    }
    let mut listener: Listener = held(snap, "listener", &s.listener())?;
    let filter = allow_any_rbac();
    for chain in &mut listener.filter_chains {
        chain.filters.insert(0, filter.clone());
    }
    snap.add(s.listener(), &listener);
    Ok(())
}

/// Istio's network RBAC filter for an AuthorizationPolicy with one empty
/// rule (ALLOW any): a filter the bypass engine must never pass, whatever
/// it allows.
pub(crate) fn allow_any_rbac() -> Filter {
    let policy = Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }],
        ..Default::default()
    };
    let rbac = Rbac {
        rules: Some(RbacRules {
            action: 0, // ALLOW
            policies: HashMap::from([("ns[default]-policy[allow-all]-rule[0]".into(), policy)]),
            ..Default::default()
        }),
        stat_prefix: "tcp.".into(),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&rbac))),
    }
}

const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A VirtualService fault on HTTP service `s`: every request delayed by
/// `delay_ms` (100%). istiod's form: the fault filter with an empty config
/// ahead of the router in `0.0.0.0_<port>`'s connection manager, the
/// active fault in the service's route's `typed_per_filter_config`.
pub fn add_fault(snap: &mut Snapshot, s: &Service, delay_ms: u32) -> Result<(), PolicyError> {
    if s.protocol != Protocol::Http {
        return Err(PolicyError::NotHttp(s.host.clone()));
    }
    let unexpected = |kind, name: String, what| PolicyError::Unexpected { kind, name, what };
    let mut listener: Listener = held(snap, "listener", &s.listener())?;
    for chain in &mut listener.filter_chains {
        for f in &mut chain.filters {
            let Some(ConfigType::TypedConfig(cfg)) = &f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(cfg.value.as_slice()) else {
                continue;
            };
            if hcm.http_filters.iter().any(|h| h.name == FAULT_FILTER) {
                continue;
            }
            hcm.http_filters.insert(
                0,
                HttpFilter {
                    name: FAULT_FILTER.into(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(any(
                        &HttpFault::default(),
                    ))),
                    ..Default::default()
                },
            );
            f.config_type = Some(ConfigType::TypedConfig(any(&hcm)));
        }
    }
    snap.add(s.listener(), &listener);
    let route_name = s.port.to_string();
    let mut routes: RouteConfiguration = held(snap, "route", &route_name)?;
    let vhost = format!("{}:{}", s.host, s.port);
    let route = routes
        .virtual_hosts
        .iter_mut()
        .find(|v| v.name == vhost)
        .and_then(|v| v.routes.first_mut())
        .ok_or_else(|| unexpected("route", route_name.clone(), "no route for the service"))?;
    let fault = HttpFault {
        delay: Some(FaultDelay {
            percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0, // HUNDRED
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                seconds: i64::from(delay_ms / 1000),
                nanos: (delay_ms % 1000) as i32 * 1_000_000,
            })),
        }),
        ..Default::default()
    };
    route
        .typed_per_filter_config
        .insert(FAULT_FILTER.into(), any(&fault));
    snap.add(route_name, &routes);
    Ok(())
}

/// `outboundTrafficPolicy: REGISTRY_ONLY`: `virtualOutbound`'s tcp_proxy
/// chains that went to `PassthroughCluster` go to `BlackHoleCluster`, and
/// every route's `allow_any` virtual host is istiod's `block_all` (any
/// path answered 502 by the sidecar itself).
pub fn registry_only(snap: &mut Snapshot) -> Result<(), PolicyError> {
    blackhole_outbound_chain(snap)?;
    let names: Vec<String> = snap
        .names(&RouteConfiguration::type_url())
        .into_iter()
        .map(String::from)
        .collect();
    for name in names {
        let mut routes: RouteConfiguration = held(snap, "route", &name)?;
        for vh in routes
            .virtual_hosts
            .iter_mut()
            .filter(|v| v.name == "allow_any")
        {
            vh.name = "block_all".into();
            vh.routes = vec![block_all_route()];
        }
        snap.add(name, &routes);
    }
    Ok(())
}

fn block_all_route() -> Route {
    Route {
        name: "block_all".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 502,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn blackhole_outbound_chain(snap: &mut Snapshot) -> Result<(), PolicyError> {
    let mut listener: Listener = held(snap, "listener", OUTBOUND_LISTENER)?;
    let mut changed = 0;
    for chain in &mut listener.filter_chains {
        for f in &mut chain.filters {
            let Some(ConfigType::TypedConfig(cfg)) = &f.config_type else {
                continue;
            };
            let Ok(mut proxy) = TcpProxy::decode(cfg.value.as_slice()) else {
                continue;
            };
            let to_passthrough = matches!(&proxy.cluster_specifier,
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if c == PASSTHROUGH_CLUSTER);
            if f.name != "envoy.filters.network.tcp_proxy" || !to_passthrough {
                continue;
            }
            proxy.cluster_specifier = Some(tcp_proxy::ClusterSpecifier::Cluster(
                BLACKHOLE_CLUSTER.into(),
            ));
            proxy.stat_prefix = BLACKHOLE_CLUSTER.into();
            f.config_type = Some(ConfigType::TypedConfig(any(&proxy)));
            changed += 1;
        }
    }
    if changed == 0 {
        return Err(PolicyError::Unexpected {
            kind: "listener",
            name: OUTBOUND_LISTENER.into(),
            what: "no tcp_proxy chain to PassthroughCluster (an HTTP-mode sidecar?)",
        });
    }
    snap.add(OUTBOUND_LISTENER, &listener);
    Ok(())
}

/// Endpoint weights, in the order of `s.endpoints`.
pub fn set_weights(snap: &mut Snapshot, s: &Service, weights: &[u32]) -> Result<(), PolicyError> {
    let mut cla: ClusterLoadAssignment = held(snap, "endpoints", &s.cluster())?;
    let eps: Vec<_> = cla
        .endpoints
        .iter_mut()
        .flat_map(|l| l.lb_endpoints.iter_mut())
        .collect();
    if eps.len() != weights.len() {
        return Err(PolicyError::Weights {
            service: s.host.clone(),
            given: weights.len(),
            endpoints: eps.len(),
        });
    }
    for (e, w) in eps.into_iter().zip(weights) {
        e.load_balancing_weight = Some(UInt32Value { value: *w });
    }
    snap.add(s.cluster(), &cla);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::xds::sidecar_snapshot;
    use crate::sim::SidecarMode;
    use crate::xds::decide::{decide, BypassPolicy, Decisions, DestKey, Destination, Verdict};

    fn svc(vip: [u8; 4], port: u16) -> Service {
        Service {
            host: format!("s{port}.default.svc.cluster.local"),
            vip: vip.into(),
            port,
            protocol: Protocol::Tcp,
            endpoints: vec![
                format!("10.244.1.1:{port}").parse().unwrap(),
                format!("10.244.1.2:{port}").parse().unwrap(),
            ],
        }
    }

    /// The decision for `s`'s VIP and port in `d`.
    fn decided<'a>(d: &'a Decisions, s: &Service) -> &'a Destination {
        d.destinations
            .iter()
            .find(|x| {
                x.destination
                    == DestKey::Service {
                        address: s.vip,
                        port: s.port,
                    }
            })
            .unwrap_or_else(|| panic!("{} not decided", s.host))
    }

    /// The engine reads the shapes as it reads istiod's.
    #[test]
    fn the_engine_keeps_meshed_and_rbac_services_on_the_sidecar_and_reads_weights() {
        let (plain, meshed, rbac) = (
            svc([10, 96, 0, 1], 81),
            svc([10, 96, 0, 2], 82),
            svc([10, 96, 0, 3], 83),
        );
        let mut snap = sidecar_snapshot(
            "1",
            SidecarMode::Tcp,
            false,
            &[plain.clone(), meshed.clone(), rbac.clone()],
        );
        mark_meshed(&mut snap, &meshed).unwrap();
        add_rbac(&mut snap, &rbac).unwrap();
        set_weights(&mut snap, &plain, &[1, 3]).unwrap();
        assert!(set_weights(&mut snap, &plain, &[1]).is_err());
        assert!(mark_meshed(&mut snap, &svc([10, 96, 0, 9], 99)).is_err());
        let res = snap.proxy_resources();
        let d = decide(&res, &BypassPolicy::default());
        let get = |s: &Service| decided(&d, s);
        assert_eq!(get(&plain).decision, Verdict::Bypass);
        let weights: Vec<u64> = get(&plain).endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights[1], 3 * weights[0], "{weights:?}");
        let m = get(&meshed);
        assert_eq!(m.decision, Verdict::Sidecar);
        assert!(
            m.reasons.iter().any(|r| r.code.name() == "mtls_endpoint"),
            "{:?}",
            m.reasons
        );
        let r = get(&rbac);
        assert_eq!(r.decision, Verdict::Sidecar);
        assert!(
            r.reasons
                .iter()
                .any(|r| r.code.name() == "network_filter_not_allowed"),
            "{:?}",
            r.reasons
        );
    }

    /// A fault on an HTTP service keeps it on the sidecar (its neighbour
    /// on the same port stays BYPASS); REGISTRY_ONLY makes nothing else
    /// BYPASS among the services and leaves the plain ones as they were.
    #[test]
    fn a_fault_keeps_its_service_on_the_sidecar_and_registry_only_adds_no_bypass() {
        let http = |vip: [u8; 4], name: &str| Service {
            host: format!("{name}.default.svc.cluster.local"),
            protocol: Protocol::Http,
            ..svc(vip, 8000)
        };
        let (faulty, calm, tcp) = (
            http([10, 96, 0, 4], "faulty"),
            http([10, 96, 0, 5], "calm"),
            svc([10, 96, 0, 6], 84),
        );
        let mut snap = sidecar_snapshot(
            "1",
            SidecarMode::Tcp,
            false,
            &[faulty.clone(), calm.clone(), tcp.clone()],
        );
        add_fault(&mut snap, &faulty, 50).unwrap();
        assert!(add_fault(&mut snap, &tcp, 50).is_err(), "TCP has no route");
        registry_only(&mut snap).unwrap();
        let d = decide(&snap.proxy_resources(), &BypassPolicy::default());
        let get = |s: &Service| decided(&d, s);
        let f = get(&faulty);
        assert_eq!(f.decision, Verdict::Sidecar, "{:?}", f.reasons);
        assert!(
            f.reasons.iter().any(|r| r.text.contains(FAULT_FILTER)),
            "{:?}",
            f.reasons
        );
        assert_eq!(
            get(&calm).decision,
            Verdict::Bypass,
            "{:?}",
            get(&calm).reasons
        );
        assert_eq!(get(&tcp).decision, Verdict::Bypass);
        let bypassed: Vec<_> = d
            .destinations
            .iter()
            .filter(|x| x.decision == Verdict::Bypass)
            .filter(|x| matches!(x.destination, DestKey::Service { .. }))
            .collect();
        assert_eq!(bypassed.len(), 2, "only calm and tcp: {bypassed:?}");
    }
}
