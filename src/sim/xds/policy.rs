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
//! - [`set_weights`]: the endpoints' `load_balancing_weight`s.
//!
//! [`sidecar_snapshot`]: super::sidecar_snapshot

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::TransportSocketMatch, Cluster};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Metadata, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, Permission, Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, UInt32Value, Value};
use prost::{Message, Name};

use super::istio::{Protocol, Service};
use super::snapshot::Snapshot;
use crate::sim::sidecar::envoy_bootstrap::any;

/// What a shape needs and did not find in the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("snapshot has no {kind} {name:?} (add the service with sidecar_snapshot first)")]
    Missing { kind: &'static str, name: String },
    #[error("{0}: RBAC is added to TCP services' listeners only")]
    NotTcp(String),
    #[error("{service}: {given} weights for {endpoints} endpoints")]
    Weights {
        service: String,
        given: usize,
        endpoints: usize,
    },
}

fn held<M: Message + Name + Default>(
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
    let filter = Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&rbac))),
    };
    for chain in &mut listener.filter_chains {
        chain.filters.insert(0, filter.clone());
    }
    snap.add(s.listener(), &listener);
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
    use crate::xds::decide::{decide, BypassPolicy, DestKey, Verdict};

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
        let get = |s: &Service| {
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
        };
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
}
