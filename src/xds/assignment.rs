//! EDS endpoints held compactly: what the decision engine reads from a
//! `ClusterLoadAssignment` (per locality: priority and locality name; per
//! endpoint: address, port, weight, health, transport-socket-match labels)
//! instead of the decoded protobuf, which costs about 30 times its wire
//! size (an `LbEndpoint` is over 400 bytes before its heap fields; an
//! [`AssignedEndpoint`] is 48). The wire bytes are kept beside it so that a
//! state-of-the-world response repeating an unchanged assignment is
//! recognised by a byte compare, without hashing or decoding.
//!
//! Endpoints that can never be chosen by address (an `endpoint_name`
//! reference, a pipe or internal address) are dropped here: the engine
//! skipped them anyway.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::google::protobuf::Struct;
use prost::Message;

/// The `filter_metadata` key Envoy matches transport sockets on.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// One EDS resource (or a static cluster's `load_assignment`), compact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Also the key it is held under.
    pub cluster_name: Arc<str>,
    pub groups: Vec<LocalityGroup>,
    /// The encoded resource as received (empty when built from a decoded
    /// or dump-read assignment).
    wire: Box<[u8]>,
}

/// The endpoints of one locality and priority.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalityGroup {
    /// `region/zone/sub_zone`, when the locality is set.
    pub locality: Option<Arc<str>>,
    pub priority: u32,
    pub endpoints: Vec<AssignedEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssignedEndpoint {
    pub host: Host,
    /// 0 for a named port or one out of range.
    pub port: u16,
    /// `load_balancing_weight`, 1 when unset or 0.
    pub weight: u32,
    /// Envoy's `HealthStatus` number.
    pub health: i32,
    /// `metadata.filter_metadata["envoy.transport_socket_match"]`, shared
    /// by the endpoints of one assignment that carry the same labels.
    pub labels: Option<Arc<Struct>>,
}

/// A socket address's host part.
#[derive(Debug, Clone, PartialEq)]
pub enum Host {
    Ip(IpAddr),
    /// Not an IP address (a DNS name Envoy would resolve).
    Name(Box<str>),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl Assignment {
    /// Decodes an EDS resource and keeps its compact form and its bytes.
    pub fn decode(wire: &[u8]) -> Result<Self, prost::DecodeError> {
        let cla = ClusterLoadAssignment::decode(wire)?;
        let mut a = Self::from_proto(&cla);
        a.wire = wire.into();
        Ok(a)
    }

    /// The compact form of a decoded assignment.
    pub fn from_proto(cla: &ClusterLoadAssignment) -> Self {
        let mut labels_seen: Option<Arc<Struct>> = None;
        let groups = cla
            .endpoints
            .iter()
            .map(|loc| LocalityGroup {
                locality: loc
                    .locality
                    .as_ref()
                    .map(|l| Arc::from(format!("{}/{}/{}", l.region, l.zone, l.sub_zone))),
                priority: loc.priority,
                endpoints: loc
                    .lb_endpoints
                    .iter()
                    .filter_map(|lb| endpoint(lb, &mut labels_seen))
                    .collect(),
            })
            .collect();
        Self {
            cluster_name: Arc::from(cla.cluster_name.as_str()),
            groups,
            wire: Box::default(),
        }
    }

    /// The bytes it was decoded from (empty if not decoded from bytes).
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Every endpoint, with its group.
    pub fn endpoints(&self) -> impl Iterator<Item = (&LocalityGroup, &AssignedEndpoint)> {
        self.groups
            .iter()
            .flat_map(|g| g.endpoints.iter().map(move |e| (g, e)))
    }
}

fn endpoint(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
    labels_seen: &mut Option<Arc<Struct>>,
) -> Option<AssignedEndpoint> {
    let lb_endpoint::HostIdentifier::Endpoint(e) = lb.host_identifier.as_ref()? else {
        return None;
    };
    let address::Address::SocketAddress(sa) = e.address.as_ref()?.address.as_ref()? else {
        return None;
    };
    let host = match sa.address.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(sa.address.as_str().into()),
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
        _ => 0,
    };
    let labels = lb
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .map(|l| match labels_seen {
            Some(seen) if **seen == *l => Arc::clone(seen),
            _ => {
                let fresh = Arc::new(l.clone());
                *labels_seen = Some(Arc::clone(&fresh));
                fresh
            }
        });
    Some(AssignedEndpoint {
        host,
        port,
        weight: lb.load_balancing_weight.map_or(1, |w| w.value.max(1)),
        health: lb.health_status,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, Locality, Metadata, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::google::protobuf::{value::Kind, UInt32Value, Value};

    fn lb(addr: &str, port: u32, tls: bool) -> LbEndpoint {
        let mut md = Metadata::default();
        if tls {
            let mut s = Struct::default();
            s.fields.insert(
                "tlsMode".into(),
                Value {
                    kind: Some(Kind::StringValue("istio".into())),
                },
            );
            md.filter_metadata.insert(TRANSPORT_SOCKET_MATCH.into(), s);
        }
        LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: addr.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            metadata: Some(md),
            load_balancing_weight: Some(UInt32Value { value: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_what_the_engine_reads_and_shares_labels() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a".into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    region: "r".into(),
                    zone: "z".into(),
                    sub_zone: String::new(),
                }),
                priority: 1,
                lb_endpoints: vec![
                    lb("10.0.0.1", 8080, true),
                    lb("10.0.0.2", 70000, true),
                    lb("db.example", 5432, false),
                    LbEndpoint::default(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let wire = cla.encode_to_vec();
        let a = Assignment::decode(&wire).unwrap();
        assert_eq!(a.wire(), wire.as_slice());
        assert_eq!(&*a.cluster_name, "outbound|80||a");
        let g = &a.groups[0];
        assert_eq!((g.locality.as_deref(), g.priority), (Some("r/z/"), 1));
        assert_eq!(g.endpoints.len(), 3, "the endpoint without address goes");
        let e = &g.endpoints;
        assert_eq!(e[0].host, Host::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!((e[0].port, e[0].weight), (8080, 1));
        assert_eq!(e[1].port, 0, "port out of range");
        assert!(Arc::ptr_eq(
            e[0].labels.as_ref().unwrap(),
            e[1].labels.as_ref().unwrap()
        ));
        assert_eq!(e[2].host, Host::Name("db.example".into()));
        assert!(e[2].labels.is_none());
        assert!(Assignment::decode(b"\xff\xff").is_err());
    }
}
