//! What to recompute when one proxy's resources change (pure): compares
//! the resources held before and after an xDS update and says whether the
//! [`super::Engine`] must be rebuilt (listeners, routes, ECDS filters,
//! whether EDS is known at all, or the policy changed) or only the
//! clusters whose CDS or EDS resource changed need re-judging.
//!
//! Resources are shared `Arc`s (the client interns identical ones), so an
//! unchanged resource is almost always the same pointer; content equality
//! is the fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;

use crate::xds::ProxyResources;

/// The work one update needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recompute {
    /// Nothing the engine reads changed.
    Nothing,
    /// Re-judge these clusters (by cluster name) and the destinations
    /// that use them: `Engine::clusters_changed`.
    Clusters(Vec<String>),
    /// Decide everything again: `Engine::new`.
    Full,
}

/// The work to go from `old` to `new` (same policy).
pub fn plan(old: &ProxyResources, new: &ProxyResources) -> Recompute {
    if old.has_eds != new.has_eds
        || !same_map(&old.listeners, &new.listeners)
        || !same_map(&old.routes, &new.routes)
        || !same_map(&old.extension_configs, &new.extension_configs)
    {
        return Recompute::Full;
    }
    let mut changed: BTreeSet<String> = changed_keys(&old.clusters, &new.clusters);
    let eds = changed_keys(&old.endpoints, &new.endpoints);
    if !eds.is_empty() {
        let mut claimed = BTreeSet::new();
        for clusters in [&old.clusters, &new.clusters] {
            for (name, c) in clusters {
                let service = eds_service(name, c);
                if eds.contains(service) {
                    changed.insert(name.clone());
                    claimed.insert(service.to_string());
                }
            }
        }
        // An assignment no held cluster reads: by its own name (a cluster
        // referenced but not held).
        changed.extend(eds.into_iter().filter(|n| !claimed.contains(n)));
    }
    if changed.is_empty() {
        Recompute::Nothing
    } else {
        Recompute::Clusters(changed.into_iter().collect())
    }
}

/// The EDS resource name a cluster reads: its `service_name`, else its
/// own name.
fn eds_service<'a>(name: &'a str, c: &'a Cluster) -> &'a str {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(name)
}

fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn same_map<T: PartialEq>(a: &BTreeMap<String, Arc<T>>, b: &BTreeMap<String, Arc<T>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
}

/// Names added, removed or whose resource differs.
fn changed_keys<T: PartialEq>(
    a: &BTreeMap<String, Arc<T>>,
    b: &BTreeMap<String, Arc<T>>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).map_or(true, |w| !same(v, w)))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    fn cluster(name: &str, service: &str) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: None,
                service_name: service.into(),
            }),
            ..Default::default()
        })
    }

    fn cla(name: &str, marker: u32) -> Arc<ClusterLoadAssignment> {
        Arc::new(ClusterLoadAssignment {
            cluster_name: name.into(),
            named_endpoints: Default::default(),
            endpoints: vec![Default::default(); marker as usize],
            policy: None,
        })
    }

    fn base() -> ProxyResources {
        let mut r = ProxyResources {
            has_eds: true,
            ..Default::default()
        };
        r.clusters.insert("a".into(), cluster("a", ""));
        r.clusters.insert("b".into(), cluster("b", "svc-b"));
        r.endpoints.insert("a".into(), cla("a", 1));
        r.endpoints.insert("svc-b".into(), cla("svc-b", 1));
        r.listeners.insert(
            "l".into(),
            Arc::new(Listener {
                name: "l".into(),
                ..Default::default()
            }),
        );
        r.routes.insert(
            "80".into(),
            Arc::new(RouteConfiguration {
                name: "80".into(),
                ..Default::default()
            }),
        );
        r
    }

    #[test]
    fn an_identical_update_needs_nothing_even_as_new_copies() {
        let old = base();
        let mut new = base(); // equal content, other pointers
        assert_eq!(plan(&old, &new), Recompute::Nothing);
        new.clusters = old.clusters.clone();
        assert_eq!(plan(&old, &new), Recompute::Nothing);
    }

    #[test]
    fn an_eds_change_re_judges_the_cluster_reading_it() {
        let old = base();
        let mut new = base();
        new.endpoints.insert("svc-b".into(), cla("svc-b", 2));
        assert_eq!(plan(&old, &new), Recompute::Clusters(vec!["b".into()]));
        new.endpoints.remove("a");
        assert_eq!(
            plan(&old, &new),
            Recompute::Clusters(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn a_cluster_added_removed_or_changed_is_re_judged() {
        let old = base();
        let mut new = base();
        new.clusters.insert("c".into(), cluster("c", ""));
        new.clusters.remove("a");
        new.clusters.insert("b".into(), cluster("b", "svc-b2"));
        assert_eq!(
            plan(&old, &new),
            Recompute::Clusters(vec!["a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn listener_route_ecds_and_eds_presence_changes_rebuild() {
        let old = base();
        let mut new = base();
        new.listeners.insert(
            "l".into(),
            Arc::new(Listener {
                name: "l".into(),
                stat_prefix: "x".into(),
                ..Default::default()
            }),
        );
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        new.routes.remove("80");
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        new.extension_configs
            .insert("f".into(), Arc::new(TypedExtensionConfig::default()));
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        new.has_eds = false;
        assert_eq!(plan(&old, &new), Recompute::Full);
    }
}
