//! Decision states shared between pods (pure, no I/O): a [`Decided`] is
//! an engine, its published decisions and summary, and the resources it
//! was decided from. Pods whose decisions depend on the same resources
//! (the same listener, route and filter `Arc`s, and the same cluster and
//! endpoint `Arc`s for every cluster the listeners reach) share one
//! `Decided`: Istio gives every pod of a namespace without its own
//! Sidecar scope the same config, so twenty such pods are decided once
//! and held once. Resources a pod holds that no listener reaches (a
//! cluster only it has) do not split the sharing.
//!
//! [`States::advance`] brings a pod from the state it has to one for its
//! new resources: an existing state that fits (checked by
//! [`plan`] against the state's own resources, so no hash is trusted),
//! else a copy of the pod's state with only the changed clusters
//! re-decided, else a full decide.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use crate::xds::decide::update::{plan, Recompute};
use crate::xds::decide::{BypassPolicy, Decisions, Engine, Summary};
use crate::xds::ProxyResources;

/// One decision state: immutable once built, shared by every pod whose
/// resources it fits.
pub struct Decided {
    engine: Engine,
    pub decisions: Arc<Decisions>,
    pub summary: Summary,
    /// The resources decided from (keeps them alive: the state's checks
    /// compare pointers into them).
    pub from: Arc<ProxyResources>,
    policy: Arc<BypassPolicy>,
    key: u64,
}

impl Decided {
    fn new(engine: Engine, from: Arc<ProxyResources>, policy: Arc<BypassPolicy>, key: u64) -> Self {
        Self {
            decisions: Arc::new(engine.decisions()),
            summary: engine.summary(),
            engine,
            from,
            policy,
            key,
        }
    }

    /// True when these decisions hold for `res` under `policy`: nothing
    /// the engine reads differs.
    fn fits(&self, res: &ProxyResources, policy: &Arc<BypassPolicy>) -> bool {
        if !(Arc::ptr_eq(&self.policy, policy) || *self.policy == **policy) {
            return false;
        }
        match plan(&self.from, res) {
            Recompute::Nothing => true,
            Recompute::Full => false,
            Recompute::Changed {
                clusters,
                assignments,
            } => !self.engine.reads_any(&clusters, &assignments),
        }
    }
}

/// What one advance did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The pod's state still fits.
    Nothing,
    /// Another pod's state fits.
    Shared,
    /// Only changed clusters re-decided.
    Clusters,
    Full,
}

impl Work {
    pub fn kind(self) -> Option<&'static str> {
        match self {
            Work::Nothing => None,
            Work::Shared => Some("shared"),
            Work::Clusters => Some("clusters"),
            Work::Full => Some("full"),
        }
    }
}

/// The node's live decision states, by the identity of their listeners,
/// routes and filters.
#[derive(Default)]
pub struct States {
    by_key: HashMap<u64, Vec<Weak<Decided>>>,
}

/// States kept per key to try (the newest first).
const TRIED_PER_KEY: usize = 4;

impl States {
    /// The state for `res` under `policy`, starting from the pod's
    /// `current` (taken: when no other pod shares it, its engine is
    /// changed in place instead of copied).
    pub fn advance(
        &mut self,
        current: Option<Arc<Decided>>,
        res: &Arc<ProxyResources>,
        policy: &Arc<BypassPolicy>,
    ) -> (Arc<Decided>, Work) {
        // What changed since the pod's state, when only clusters did.
        let mut since_current = None;
        if let Some(cur) = &current {
            if Arc::ptr_eq(&cur.policy, policy) || *cur.policy == **policy {
                match plan(&cur.from, res) {
                    Recompute::Nothing => return (Arc::clone(cur), Work::Nothing),
                    Recompute::Changed {
                        clusters,
                        assignments,
                    } => {
                        if !cur.engine.reads_any(&clusters, &assignments) {
                            return (Arc::clone(cur), Work::Nothing);
                        }
                        since_current = Some((clusters, assignments));
                    }
                    Recompute::Full => {}
                }
            }
        }
        // Listeners, routes and filters unchanged: the same key.
        let key = match (&current, &since_current) {
            (Some(cur), Some(_)) => cur.key,
            _ => listener_key(res, policy),
        };
        let live: Vec<Arc<Decided>> = self
            .by_key
            .get(&key)
            .map(|v| {
                v.iter()
                    .rev()
                    .filter_map(Weak::upgrade)
                    .filter(|d| !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, d)))
                    .take(TRIED_PER_KEY)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(hit) = live.iter().find(|d| d.fits(res, policy)) {
            return (Arc::clone(hit), Work::Shared);
        }
        drop(live);
        let (engine, work) = match (current, since_current) {
            (Some(cur), Some((clusters, assignments))) => {
                let mut e = match Arc::try_unwrap(cur) {
                    Ok(only_mine) => only_mine.engine,
                    Err(shared) => shared.engine.clone(),
                };
                e.changed(res, &clusters, &assignments);
                (e, Work::Clusters)
            }
            _ => (Engine::new(res, (**policy).clone()), Work::Full),
        };
        let state = Arc::new(Decided::new(
            engine,
            Arc::clone(res),
            Arc::clone(policy),
            key,
        ));
        let slot = self.by_key.entry(key).or_default();
        slot.retain(|w| w.strong_count() > 0);
        slot.push(Arc::downgrade(&state));
        self.by_key
            .retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        (state, work)
    }

    /// Live states (for tests and metrics).
    pub fn live(&self) -> usize {
        self.by_key
            .values()
            .flat_map(|v| v.iter())
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// A hash of what the engine's listener half reads: policy, whether EDS
/// is known, and every listener, route and filter (name and `Arc`). Only a
/// hint: a state found by it is used only if [`Decided::fits`].
fn listener_key(res: &ProxyResources, policy: &BypassPolicy) -> u64 {
    let mut h = DefaultHasher::new();
    format!("{policy:?}").hash(&mut h);
    res.has_eds.hash(&mut h);
    for (n, l) in res.listeners.iter() {
        (n, Arc::as_ptr(l) as usize).hash(&mut h);
    }
    for (n, r) in res.routes.iter() {
        (n, Arc::as_ptr(r) as usize).hash(&mut h);
    }
    for (n, e) in res.extension_configs.iter() {
        (n, Arc::as_ptr(e) as usize).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::dump;

    fn fixture() -> ProxyResources {
        let text = include_str!(
            "../../../tests/fixtures/istio/configdumps/istio-1.10.0_sidecar_bookinfo-details-v1.json"
        );
        dump::parse(text, false).unwrap().resources
    }

    #[test]
    fn pods_with_the_same_reached_resources_share_one_state() {
        let policy = Arc::new(BypassPolicy::default());
        let a = Arc::new(fixture());
        let mut states = States::default();
        let (sa, work) = states.advance(None, &a, &policy);
        assert_eq!(work, Work::Full);
        // Another pod: the same resources plus a cluster no listener reaches.
        let mut b = (*a).clone();
        let extra = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "only-b".into(),
            ..Default::default()
        };
        crate::xds::resources::named_mut(&mut b.clusters).insert(
            "only-b".into(),
            Arc::new(crate::xds::held::HeldCluster::new(&extra)),
        );
        let b = Arc::new(b);
        let (sb, work) = states.advance(None, &b, &policy);
        assert_eq!(work, Work::Shared);
        assert!(Arc::ptr_eq(&sa, &sb));
        // Still fits: nothing to do.
        let (again, work) = states.advance(Some(Arc::clone(&sb)), &b, &policy);
        assert_eq!(work, Work::Nothing);
        assert!(Arc::ptr_eq(&again, &sb));
        // Another policy: decided again, not shared.
        let other = Arc::new(BypassPolicy {
            bypass_passthrough: true,
            ..Default::default()
        });
        let (sc, work) = states.advance(Some(Arc::clone(&sa)), &a, &other);
        assert_eq!(work, Work::Full);
        assert!(!Arc::ptr_eq(&sc, &sa));
        assert_eq!(states.live(), 2);
        drop((sa, sb, again));
        assert_eq!(states.live(), 1);
    }
}
