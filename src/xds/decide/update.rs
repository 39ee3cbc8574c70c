//! What to recompute when one proxy's resources change (pure): compares
//! the resources held before and after an xDS update and says whether the
//! [`super::Engine`] must be rebuilt (listeners, routes, ECDS filters,
//! whether EDS is known at all, or the policy changed) or only the
//! clusters whose CDS or EDS resource changed need re-judging.
//!
//! Resources are shared `Arc`s (the client interns identical ones), so an
//! unchanged resource is almost always the same pointer; content equality
//! is the fallback.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::xds::resources::Named;
use crate::xds::ProxyResources;

/// The work one update needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recompute {
    /// Nothing the engine reads changed.
    Nothing,
    /// Re-judge these clusters (CDS changes, by cluster name) and the
    /// clusters reading these assignments (EDS changes, by EDS resource
    /// name), and the destinations that use them: `Engine::changed`.
    Changed {
        clusters: Vec<String>,
        assignments: Vec<String>,
    },
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
    let clusters = changed_keys(&old.clusters, &new.clusters);
    let assignments = changed_keys(&old.endpoints, &new.endpoints);
    if clusters.is_empty() && assignments.is_empty() {
        Recompute::Nothing
    } else {
        Recompute::Changed {
            clusters,
            assignments,
        }
    }
}

fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn same_map<T: PartialEq>(a: &Named<T>, b: &Named<T>) -> bool {
    Arc::ptr_eq(a, b)
        || a.len() == b.len()
            && a.iter()
                .zip(b.iter())
                .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
}

/// Names added, removed or whose resource differs, in order: one merged
/// walk of the two sorted maps.
fn changed_keys<T: PartialEq>(a: &Named<T>, b: &Named<T>) -> Vec<String> {
    let mut out = Vec::new();
    if Arc::ptr_eq(a, b) {
        return out;
    }
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let step = match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match step {
            Ordering::Less => out.extend(ia.next().map(|(k, _)| k.to_string())),
            Ordering::Greater => out.extend(ib.next().map(|(k, _)| k.to_string())),
            Ordering::Equal => {
                if let (Some((k, va)), Some((_, vb))) = (ia.next(), ib.next()) {
                    if !same(va, vb) {
                        out.push(k.to_string());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::assignment::Assignment;
    use crate::xds::held::{HeldCluster, HeldListener, HeldRoute};
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    fn cluster(name: &str, service: &str) -> Arc<HeldCluster> {
        Arc::new(HeldCluster::new(&Cluster {
            name: name.into(),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: None,
                service_name: service.into(),
            }),
            ..Default::default()
        }))
    }

    fn cla(name: &str, marker: u32) -> Arc<Assignment> {
        Arc::new(Assignment::from_proto(&ClusterLoadAssignment {
            cluster_name: name.into(),
            named_endpoints: Default::default(),
            endpoints: vec![Default::default(); marker as usize],
            policy: None,
        }))
    }

    fn changed(clusters: &[&str], assignments: &[&str]) -> Recompute {
        Recompute::Changed {
            clusters: clusters.iter().map(|s| s.to_string()).collect(),
            assignments: assignments.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn base() -> ProxyResources {
        let mut r = ProxyResources {
            has_eds: true,
            ..Default::default()
        };
        crate::xds::resources::named_mut(&mut r.clusters).insert("a".into(), cluster("a", ""));
        crate::xds::resources::named_mut(&mut r.clusters).insert("b".into(), cluster("b", "svc-b"));
        crate::xds::resources::named_mut(&mut r.endpoints).insert("a".into(), cla("a", 1));
        crate::xds::resources::named_mut(&mut r.endpoints).insert("svc-b".into(), cla("svc-b", 1));
        crate::xds::resources::named_mut(&mut r.listeners).insert(
            "l".into(),
            Arc::new(HeldListener::new(&Listener {
                name: "l".into(),
                ..Default::default()
            })),
        );
        crate::xds::resources::named_mut(&mut r.routes).insert(
            "80".into(),
            Arc::new(HeldRoute::new(&RouteConfiguration {
                name: "80".into(),
                ..Default::default()
            })),
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
    fn an_eds_change_names_the_assignment() {
        let old = base();
        let mut new = base();
        crate::xds::resources::named_mut(&mut new.endpoints)
            .insert("svc-b".into(), cla("svc-b", 2));
        assert_eq!(plan(&old, &new), changed(&[], &["svc-b"]));
        crate::xds::resources::named_mut(&mut new.endpoints).remove("a");
        crate::xds::resources::named_mut(&mut new.endpoints).insert("z".into(), cla("z", 1));
        assert_eq!(plan(&old, &new), changed(&[], &["a", "svc-b", "z"]));
    }

    #[test]
    fn a_cluster_added_removed_or_changed_is_re_judged() {
        let old = base();
        let mut new = base();
        crate::xds::resources::named_mut(&mut new.clusters).insert("c".into(), cluster("c", ""));
        crate::xds::resources::named_mut(&mut new.clusters).remove("a");
        crate::xds::resources::named_mut(&mut new.clusters)
            .insert("b".into(), cluster("b", "svc-b2"));
        assert_eq!(plan(&old, &new), changed(&["a", "b", "c"], &[]));
    }

    #[test]
    fn listener_route_ecds_and_eds_presence_changes_rebuild() {
        let old = base();
        let mut new = base();
        crate::xds::resources::named_mut(&mut new.listeners).insert(
            "l".into(),
            Arc::new(HeldListener::new(&Listener {
                name: "l".into(),
                stat_prefix: "x".into(),
                ..Default::default()
            })),
        );
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        crate::xds::resources::named_mut(&mut new.routes).remove("80");
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        crate::xds::resources::named_mut(&mut new.extension_configs)
            .insert("f".into(), Arc::new(TypedExtensionConfig::default()));
        assert_eq!(plan(&old, &new), Recompute::Full);
        let mut new = base();
        new.has_eds = false;
        assert_eq!(plan(&old, &new), Recompute::Full);
    }
}
