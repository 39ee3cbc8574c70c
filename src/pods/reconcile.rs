//! Adoption and garbage collection: the pod registry made to follow the
//! pod catalog. The CNI plugin registers pods as they start; this covers
//! the rest:
//! - adoption: a meshed pod of the catalog that is running (it has IPs and
//!   its netns is found) but not registered (no registration holds its
//!   name or one of its IPs) is registered, e.g. pods started before the
//!   agent;
//! - garbage collection: once the catalog is synced, a registration made
//!   for a pod (its name is the pod's "namespace/name") whose pod is gone
//!   from the catalog, or is no longer meshed, is removed.
//!
//! Registrations without a "namespace/name" name (made by hand with
//! `meshlane pod add`) are never touched, nor is any pod that is not
//! meshed. Settings of a registered pod are not changed when its
//! annotations change (as with Istio, they apply from the pod's next
//! start).
//!
//! [`plan`] is the synchronous core (catalog, registry list and a netns
//! finder in, actions out); [`apply`] carries the actions out through the
//! agent's request handler (the registry lock, as the local API does);
//! [`run`] is the agent's async shell.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::classify::display_name;
use super::netns_finder::NetnsFinder;
use super::source::{MemoryCatalog, MeshDecision, PodCatalog, PodInfo, PodKey};
use super::{PodRecord, PodSpec};
use crate::api::{self, PodRef, Request};
use crate::layout::PinLayout;
use crate::metrics::{AgentMetrics, ReasonLabel};

/// How often the reconcile runs without a catalog change (a pod whose
/// netns was not found yet is looked for again).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// One change to the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Register a running meshed pod that is not registered.
    Adopt {
        key: PodKey,
        netns: PathBuf,
        spec: Box<PodSpec>,
    },
    /// Remove the registration of a pod that is gone or no longer meshed.
    Release {
        cookie: u64,
        name: String,
        reason: String,
    },
}

/// What one reconcile decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Releases first (they may free addresses an adoption needs).
    pub actions: Vec<Action>,
    /// Meshed, unregistered pods whose netns was not found (not running
    /// on this node yet, or their sandbox is gone).
    pub unlocated: Vec<PodKey>,
}

/// Whether a registration was made for a pod by a pod source or the CNI
/// plugin (named "namespace/name") rather than by hand.
fn is_pod_registration(r: &PodRecord) -> bool {
    r.name
        .split_once('/')
        .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty())
}

/// The actions that make `registered` follow `pods`.
pub fn plan(
    pods: &[PodInfo],
    synced: bool,
    registered: &[PodRecord],
    finder: &dyn NetnsFinder,
) -> Plan {
    let mut out = Plan::default();
    let by_name: HashMap<String, &PodInfo> =
        pods.iter().map(|p| (display_name(&p.key), p)).collect();
    if synced {
        for r in registered.iter().filter(|r| is_pod_registration(r)) {
            let reason = match by_name.get(&r.name).map(|p| &p.mesh) {
                None => "pod no longer exists".to_string(),
                Some(MeshDecision::NotMeshed { reason }) => {
                    format!("pod no longer meshed: {reason}")
                }
                Some(MeshDecision::Meshed { .. }) => continue,
            };
            out.actions.push(Action::Release {
                cookie: r.netns_cookie,
                name: r.name.clone(),
                reason,
            });
        }
    }
    let released: HashSet<u64> = out
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Release { cookie, .. } => Some(*cookie),
            Action::Adopt { .. } => None,
        })
        .collect();
    let kept = registered
        .iter()
        .filter(|r| !released.contains(&r.netns_cookie));
    let mut names: HashSet<&str> = HashSet::new();
    let mut ips: HashSet<IpAddr> = HashSet::new();
    for r in kept {
        names.insert(&r.name);
        ips.extend(r.ips.iter().copied());
    }
    let to_adopt: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| matches!(p.mesh, MeshDecision::Meshed { .. }) && !p.ips.is_empty())
        .filter(|p| !names.contains(display_name(&p.key).as_str()))
        .filter(|p| !p.ips.iter().any(|ip| ips.contains(ip)))
        .collect();
    let found = finder.locate(&to_adopt);
    for p in to_adopt {
        let MeshDecision::Meshed { spec } = &p.mesh else {
            continue;
        };
        match found.get(&p.key) {
            Some(netns) => out.actions.push(Action::Adopt {
                key: p.key.clone(),
                netns: netns.clone(),
                spec: Box::new(spec.clone()),
            }),
            None => out.unlocated.push(p.key.clone()),
        }
    }
    out
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub adopted: usize,
    pub released: usize,
    /// One line per action that failed (it is tried again next round).
    pub failed: Vec<String>,
}

/// Carries out `actions` through the agent's request handler.
pub fn apply(layout: &PinLayout, actions: &[Action], metrics: &AgentMetrics) -> Applied {
    let mut done = Applied::default();
    for a in actions {
        let result = match a {
            Action::Release {
                cookie,
                name,
                reason,
            } => api::handle(
                layout,
                Request::Rm {
                    pod: PodRef::Cookie(*cookie),
                },
            )
            .map(|_| {
                tracing::info!(pod = %name, cookie, reason = %reason, "pod registration released");
                metrics
                    .released
                    .get_or_create(&ReasonLabel {
                        reason: release_kind(reason).into(),
                    })
                    .inc();
                done.released += 1;
            }),
            Action::Adopt { key, netns, spec } => api::handle(
                layout,
                Request::Add {
                    netns: netns.clone(),
                    spec: (**spec).clone(),
                },
            )
            .map(|_| {
                tracing::info!(pod = %key, netns = %netns.display(), "running pod adopted");
                metrics.adopted.inc();
                done.adopted += 1;
            }),
        };
        if let Err(e) = result {
            let what = match a {
                Action::Adopt { key, .. } => format!("adopting {key}"),
                Action::Release { name, .. } => format!("releasing {name}"),
            };
            tracing::warn!(error = %e, "{what} failed");
            done.failed.push(format!("{what}: {e}"));
        }
    }
    done
}

/// The metric label of a release reason (bounded set).
fn release_kind(reason: &str) -> &'static str {
    if reason.starts_with("pod no longer meshed") {
        "not meshed"
    } else {
        "pod gone"
    }
}

/// One round: list, plan, apply. False when the registry cannot be read.
pub fn reconcile_once(
    layout: &PinLayout,
    catalog: &dyn PodCatalog,
    finder: &dyn NetnsFinder,
    metrics: &AgentMetrics,
) -> bool {
    if !layout.maps_dir().is_dir() {
        return false;
    }
    let registered = match super::Registry::open(layout) {
        Ok(r) => r.list(),
        Err(e) => {
            tracing::warn!(error = %e, "reconcile: cannot read the pod registry");
            return false;
        }
    };
    let p = plan(&catalog.all(), catalog.synced(), &registered, finder);
    if !p.unlocated.is_empty() {
        tracing::debug!(pods = ?p.unlocated, "meshed pods whose netns is not found yet");
    }
    apply(layout, &p.actions, metrics);
    true
}

/// The agent's reconcile component: a round at start, after each catalog
/// change and every [`RECONCILE_INTERVAL`], until shutdown. `on_synced`
/// runs after each round done with a synced catalog.
pub async fn run(
    layout: PinLayout,
    catalog: Arc<MemoryCatalog>,
    finder: Arc<dyn NetnsFinder>,
    metrics: AgentMetrics,
    on_synced: Box<dyn Fn() + Send>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        let (l, c, f, m) = (
            layout.clone(),
            catalog.clone(),
            finder.clone(),
            metrics.clone(),
        );
        let synced = catalog.synced();
        let round =
            tokio::task::spawn_blocking(move || reconcile_once(&l, c.as_ref(), f.as_ref(), &m));
        if let (Ok(true), true) = (round.await, synced) {
            on_synced();
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
            _ = catalog.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pods::{PodMode, Preset};

    /// A finder that knows netns paths by pod name.
    struct Known(HashMap<String, PathBuf>);

    impl NetnsFinder for Known {
        fn locate(&self, pods: &[&PodInfo]) -> HashMap<PodKey, PathBuf> {
            pods.iter()
                .filter_map(|p| Some((p.key.clone(), self.0.get(&p.key.name)?.clone())))
                .collect()
        }
    }

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn pod(name: &str, ip: &str, meshed: bool) -> PodInfo {
        let k = key(name);
        PodInfo {
            mesh: if meshed {
                MeshDecision::Meshed {
                    spec: PodSpec::istio(display_name(&k)),
                }
            } else {
                MeshDecision::NotMeshed {
                    reason: "no proxy container".into(),
                }
            },
            key: k,
            uid: String::new(),
            ips: vec![ip.parse().unwrap()],
            labels: BTreeMap::new(),
            service_account: String::new(),
            annotations: BTreeMap::new(),
            workload: Default::default(),
        }
    }

    fn record(name: &str, cookie: u64, ip: &str) -> PodRecord {
        PodRecord {
            name: name.into(),
            netns_cookie: cookie,
            preset: Some(Preset::Istio),
            mode: PodMode::Intercept,
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            dns_port: 15053,
            dns_capture: false,
            ips: vec![ip.parse().unwrap()],
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            inbound_link: true,
            netns_alive: true,
        }
    }

    fn finder() -> Known {
        Known(
            [
                ("web", "/run/netns/web"),
                ("db", "/run/netns/db"),
                ("plain", "/run/netns/plain"),
            ]
            .into_iter()
            .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
            .collect(),
        )
    }

    #[test]
    fn running_meshed_unregistered_pods_are_adopted_and_nothing_else() {
        let pods = [
            pod("web", "10.0.0.2", true),
            pod("db", "10.0.0.3", true),
            pod("plain", "10.0.0.4", false),
            pod("pending", "10.0.0.5", true),
        ];
        let registered = [record("default/db", 7, "10.0.0.3")];
        let p = plan(&pods, true, &registered, &finder());
        assert_eq!(
            p.actions,
            vec![Action::Adopt {
                key: key("web"),
                netns: "/run/netns/web".into(),
                spec: Box::new(PodSpec::istio("default/web")),
            }]
        );
        assert_eq!(p.unlocated, vec![key("pending")]);
    }

    #[test]
    fn a_pod_registered_under_another_name_with_its_ip_is_not_adopted_twice() {
        let pods = [pod("web", "10.0.0.2", true)];
        let registered = [record("web-by-hand", 3, "10.0.0.2")];
        assert!(plan(&pods, true, &registered, &finder()).actions.is_empty());
    }

    #[test]
    fn gone_and_unmeshed_pods_are_released_only_once_synced() {
        let pods = [pod("db", "10.0.0.3", false)];
        let registered = [
            record("default/web", 5, "10.0.0.2"),
            record("default/db", 7, "10.0.0.3"),
            record("by-hand", 9, "10.0.0.9"),
        ];
        assert!(plan(&pods, false, &registered, &finder())
            .actions
            .is_empty());
        let p = plan(&pods, true, &registered, &finder());
        let released: Vec<(u64, &str)> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Release { cookie, reason, .. } => (*cookie, release_kind(reason)),
                Action::Adopt { .. } => panic!("adopted: {a:?}"),
            })
            .collect();
        assert_eq!(released, vec![(5, "pod gone"), (7, "not meshed")]);
    }

    #[test]
    fn an_address_freed_by_a_release_can_be_adopted_in_the_same_round() {
        // default/old is gone; default/web now holds its address.
        let pods = [pod("web", "10.0.0.2", true)];
        let registered = [record("default/old", 5, "10.0.0.2")];
        let p = plan(&pods, true, &registered, &finder());
        assert!(matches!(p.actions[0], Action::Release { cookie: 5, .. }));
        assert!(matches!(&p.actions[1], Action::Adopt { key: k, .. } if k == &key("web")));
    }
}
