//! Clusters, listeners and route configurations held as their wire bytes
//! plus the few fields the client itself needs (name; a cluster's EDS
//! service name; the route names a listener's HTTP connection managers
//! take over RDS). A decoded `Cluster` is ~3 KB before its heap fields and
//! a listener or a route configuration more, about 30 times the wire size,
//! while the decision engine reads each one only when it (re-)judges it:
//! [`HeldCluster::decode`], [`HeldListener::decode`] and
//! [`HeldRoute::decode`] decode on demand.

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::{Message, Name};
use std::sync::Arc;

const EDS: i32 = envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32;

/// A cluster: wire bytes, name and (EDS clusters) the EDS resource name.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCluster {
    /// Also the key it is held under (one allocation for every holder).
    pub name: Arc<str>,
    /// The EDS resource it takes (`service_name`, else its name); None
    /// when it does not take endpoints over EDS. Shared with the EDS
    /// subscription's names.
    pub eds_service: Option<Arc<str>>,
    wire: Box<[u8]>,
}

impl HeldCluster {
    /// From a decoded cluster (config dumps, tests).
    pub fn new(c: &Cluster) -> Self {
        Self::with_wire(c, c.encode_to_vec().into())
    }

    fn with_wire(c: &Cluster, wire: Box<[u8]>) -> Self {
        let is_eds = matches!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(EDS))
        );
        let name: Arc<str> = Arc::from(c.name.as_str());
        let eds_service = is_eds.then(|| match &c.eds_cluster_config {
            Some(e) if !e.service_name.is_empty() => Arc::from(e.service_name.as_str()),
            _ => Arc::clone(&name),
        });
        Self {
            name,
            eds_service,
            wire,
        }
    }

    /// Decodes `wire` and checks it with `check` (what Envoy would refuse)
    /// before keeping only its bytes and fields.
    pub fn decode_checked(
        wire: &[u8],
        check: impl FnOnce(&Cluster) -> Result<(), String>,
    ) -> Result<Self, HeldError> {
        let c = Cluster::decode(wire).map_err(HeldError::Decode)?;
        if c.name.is_empty() {
            return Err(HeldError::NoName);
        }
        check(&c).map_err(|why| HeldError::Invalid(c.name.clone(), why))?;
        Ok(Self::with_wire(&c, wire.into()))
    }

    /// The cluster (its bytes decoded when held, so this cannot fail; an
    /// empty cluster if it somehow did).
    pub fn decode(&self) -> Cluster {
        Cluster::decode(&*self.wire).unwrap_or_default()
    }

    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// A listener: wire bytes, name and the RDS route names it references.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldListener {
    pub name: Arc<str>,
    pub rds_names: Vec<String>,
    wire: Box<[u8]>,
}

impl HeldListener {
    /// From a decoded listener (config dumps, tests).
    pub fn new(l: &Listener) -> Self {
        Self::with_wire(l, l.encode_to_vec().into())
    }

    fn with_wire(l: &Listener, wire: Box<[u8]>) -> Self {
        Self {
            name: Arc::from(l.name.as_str()),
            rds_names: route_names(l),
            wire,
        }
    }

    pub fn decode_checked(wire: &[u8]) -> Result<Self, HeldError> {
        let l = Listener::decode(wire).map_err(HeldError::Decode)?;
        if l.name.is_empty() {
            return Err(HeldError::NoName);
        }
        Ok(Self::with_wire(&l, wire.into()))
    }

    pub fn decode(&self) -> Listener {
        Listener::decode(&*self.wire).unwrap_or_default()
    }

    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// A route configuration: wire bytes and name.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldRoute {
    pub name: Arc<str>,
    wire: Box<[u8]>,
}

impl HeldRoute {
    /// From a decoded route configuration (config dumps, tests).
    pub fn new(rc: &RouteConfiguration) -> Self {
        Self {
            name: Arc::from(rc.name.as_str()),
            wire: rc.encode_to_vec().into(),
        }
    }

    pub fn decode_checked(wire: &[u8]) -> Result<Self, HeldError> {
        let rc = RouteConfiguration::decode(wire).map_err(HeldError::Decode)?;
        if rc.name.is_empty() {
            return Err(HeldError::NoName);
        }
        Ok(Self {
            name: Arc::from(rc.name.as_str()),
            wire: wire.into(),
        })
    }

    pub fn decode(&self) -> RouteConfiguration {
        RouteConfiguration::decode(&*self.wire).unwrap_or_default()
    }

    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// Why received bytes are not held.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeldError {
    #[error("does not decode: {0}")]
    Decode(prost::DecodeError),
    #[error("has no name")]
    NoName,
    #[error("{1}")]
    Invalid(String, String),
}

/// The route configuration names the listener's HTTP connection managers
/// take over RDS (a connection manager that does not decode names none;
/// the decision engine judges that listener).
fn route_names(l: &Listener) -> Vec<String> {
    let hcm_url = HttpConnectionManager::type_url();
    let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
    let mut names: Vec<String> = chains
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == hcm_url => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `name` of a resource whose field 1 is its name (Cluster, Listener,
/// RouteConfiguration, ClusterLoadAssignment's `cluster_name`), read
/// without decoding when it is encoded first (as every encoder does);
/// None otherwise.
pub fn peek_name(wire: &[u8]) -> Option<&str> {
    let (&tag, rest) = wire.split_first()?;
    if tag != 0x0a {
        return None;
    }
    let mut len: usize = 0;
    for (i, b) in rest.iter().enumerate().take(5) {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let body = rest.get(i + 1..i + 1 + len)?;
            return std::str::from_utf8(body).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{DiscoveryType, EdsClusterConfig};

    #[test]
    fn a_cluster_keeps_its_bytes_and_eds_name() {
        let mut c = Cluster {
            name: "outbound|80||a".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: None,
                service_name: String::new(),
            }),
            ..Default::default()
        };
        let h = HeldCluster::new(&c);
        assert_eq!(h.eds_service.as_deref(), Some("outbound|80||a"));
        assert_eq!(h.decode(), c);
        c.cluster_discovery_type = None;
        assert_eq!(HeldCluster::new(&c).eds_service, None);
        let wire = c.encode_to_vec();
        assert_eq!(peek_name(&wire), Some("outbound|80||a"));
        let refused = HeldCluster::decode_checked(&wire, |_| Err("no".into()));
        assert_eq!(
            refused,
            Err(HeldError::Invalid("outbound|80||a".into(), "no".into()))
        );
        assert_eq!(
            HeldCluster::decode_checked(&Cluster::default().encode_to_vec(), |_| Ok(())),
            Err(HeldError::NoName)
        );
        assert!(matches!(
            HeldCluster::decode_checked(b"\xff\xff", |_| Ok(())),
            Err(HeldError::Decode(_))
        ));
    }

    #[test]
    fn peek_name_reads_field_one_only_when_first() {
        assert_eq!(peek_name(b"\x0a\x03abc\x10\x01"), Some("abc"));
        assert_eq!(peek_name(b"\x10\x01\x0a\x03abc"), None);
        assert_eq!(peek_name(b"\x0a\x09ab"), None, "truncated");
        assert_eq!(peek_name(b""), None);
    }
}
