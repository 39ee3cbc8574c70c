//! One proxy's xDS resources as Envoy holds them: the input of the bypass
//! decision engine. Filled from a live ADS stream (the agent's xDS client)
//! or from an Envoy config dump (`meshlane explain --config-dump`).
//! Resources are shared (`Arc`) so that many proxy identities on one node
//! that receive identical resources hold them once, and held compactly:
//! clusters, listeners and routes as wire bytes decoded on demand
//! ([`crate::xds::held`]), endpoints as [`Assignment`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;

use super::assignment::Assignment;
use super::held::{HeldCluster, HeldListener, HeldRoute};

/// Resources of one type by name. The map itself is shared: identities
/// whose set of a type is the same hold one map (the client interns
/// them), and a change copies only the map of the type that changed.
pub type Named<T> = Arc<BTreeMap<Arc<str>, Arc<T>>>;

/// Every resource one proxy holds, keyed by resource name (listener name,
/// route configuration name, cluster name, EDS cluster/service name).
/// Clone is cheap (five `Arc`s).
#[derive(Debug, Clone, Default)]
pub struct ProxyResources {
    pub listeners: Named<HeldListener>,
    pub routes: Named<HeldRoute>,
    pub clusters: Named<HeldCluster>,
    /// ClusterLoadAssignments by their `cluster_name`; see `has_eds`.
    pub endpoints: Named<Assignment>,
    /// False when the source carried no EDS at all (a config dump without
    /// `?include_eds`): endpoints are unknown, not empty.
    pub has_eds: bool,
    /// Filters delivered by ECDS (`config_discovery`), by resource name.
    pub extension_configs: Named<TypedExtensionConfig>,
}

/// The map of `named` to change (copied first if shared).
pub fn named_mut<T>(named: &mut Named<T>) -> &mut BTreeMap<Arc<str>, Arc<T>> {
    Arc::make_mut(named)
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
