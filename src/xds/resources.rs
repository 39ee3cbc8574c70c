//! One proxy's xDS resources as Envoy holds them: the input of the bypass
//! decision engine. Filled from a live ADS stream (the agent's xDS client)
//! or from an Envoy config dump (`meshlane explain --config-dump`).
//! Resources are shared (`Arc`) so that many proxy identities on one node
//! that receive identical resources hold them once, and held compactly:
//! clusters and listeners as wire bytes decoded on demand
//! ([`crate::xds::held`]), endpoints as [`Assignment`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::assignment::Assignment;
use super::held::{HeldCluster, HeldListener};

/// Every resource one proxy holds, keyed by resource name (listener name,
/// route configuration name, cluster name, EDS cluster/service name).
#[derive(Debug, Clone, Default)]
pub struct ProxyResources {
    pub listeners: BTreeMap<String, Arc<HeldListener>>,
    pub routes: BTreeMap<String, Arc<RouteConfiguration>>,
    pub clusters: BTreeMap<String, Arc<HeldCluster>>,
    /// ClusterLoadAssignments by their `cluster_name`; see `has_eds`.
    pub endpoints: BTreeMap<String, Arc<Assignment>>,
    /// False when the source carried no EDS at all (a config dump without
    /// `?include_eds`): endpoints are unknown, not empty.
    pub has_eds: bool,
    /// Filters delivered by ECDS (`config_discovery`), by resource name.
    pub extension_configs: BTreeMap<String, Arc<TypedExtensionConfig>>,
}

impl ProxyResources {
    /// True when nothing at all is held.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.routes.is_empty()
            && self.clusters.is_empty()
            && self.endpoints.is_empty()
    }
}
