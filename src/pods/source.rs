//! Where the agent learns which pods are meshed and with what settings: a
//! pod source (the Kubernetes watch of this node's pods, or a static YAML
//! file outside Kubernetes) keeps a [`PodCatalog`] up to date, and every
//! registration path (the CNI plugin's ADD, adoption at agent start) asks
//! the catalog before it touches a pod. Pure data here; the sources that
//! fill it are async shells elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::PodSpec;

/// A Kubernetes pod's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a pod source knows about one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    pub key: PodKey,
    /// The pod's UID (Kubernetes metadata.uid), empty when unknown.
    pub uid: String,
    /// status.podIPs as last seen (empty before the pod has an address).
    pub ips: Vec<IpAddr>,
    /// metadata.labels (the xDS client's LABELS node metadata).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// spec.serviceAccountName, empty when unknown (the xDS identity).
    #[serde(default)]
    pub service_account: String,
    /// metadata.annotations (`meshlane.io/bypass: "false"` opts the pod out
    /// of bypass; the xDS client's ANNOTATIONS node metadata).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Whether and how the pod is meshed.
    pub mesh: MeshDecision,
    /// What else the pod object says that the sidecar's node metadata
    /// carries (owner, app containers and their ports, node).
    #[serde(default)]
    pub workload: WorkloadFacts,
}

/// Facts from the pod object that Istio's injector puts into the sidecar's
/// node metadata (OWNER, APP_CONTAINERS, POD_PORTS, NODE_NAME).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadFacts {
    /// The controller owner reference (apiVersion, kind, name), if any.
    #[serde(default)]
    pub owner: Option<OwnerRef>,
    /// The containers other than the proxy, with their declared ports.
    #[serde(default)]
    pub app_containers: Vec<AppContainer>,
    /// spec.nodeName, empty when unknown.
    #[serde(default)]
    pub node_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppContainer {
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// A container port as the pod spec declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// Whether a pod is meshed, decided from its containers, annotations and
/// labels (a proxy container present, no opt-out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
// One decision per pod event, never in a hot path or a large collection:
// boxing the spec would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum MeshDecision {
    /// Meshed with these settings.
    Meshed { spec: PodSpec },
    /// Never touched; the reason says why (no proxy, opted out, excluded
    /// namespace, ...).
    NotMeshed { reason: String },
}

/// The agent's current view of the pods of its node.
pub trait PodCatalog: Send + Sync {
    /// What is known about `key` now; None when the source has never seen it.
    fn get(&self, key: &PodKey) -> Option<PodInfo>;
    /// Every pod known now.
    fn all(&self) -> Vec<PodInfo>;
    /// True once the source has delivered its first complete listing.
    fn synced(&self) -> bool;
}

/// A catalog held in memory, replaced or patched by whichever source feeds
/// it (and directly by tests).
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    pods: RwLock<HashMap<PodKey, PodInfo>>,
    synced: RwLock<bool>,
    /// Woken at every change (one stored wake-up: none is lost).
    changes: tokio::sync::Notify,
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one pod.
    pub fn upsert(&self, info: PodInfo) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        if pods.get(&info.key) != Some(&info) {
            pods.insert(info.key.clone(), info);
            self.changes.notify_one();
        }
    }

    /// Forgets one pod; returns what was held.
    pub fn remove(&self, key: &PodKey) -> Option<PodInfo> {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        let held = pods.remove(key);
        if held.is_some() {
            self.changes.notify_one();
        }
        held
    }

    /// Replaces the whole listing (a relist) and marks the catalog synced.
    pub fn replace_all(&self, all: Vec<PodInfo>) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        *pods = all.into_iter().map(|p| (p.key.clone(), p)).collect();
        *self.synced.write().unwrap_or_else(|e| e.into_inner()) = true;
        self.changes.notify_one();
    }

    /// Completes after the next change (or at once if one happened since
    /// the last call returned).
    pub async fn changed(&self) {
        self.changes.notified().await;
    }
}

impl PodCatalog for MemoryCatalog {
    fn get(&self, key: &PodKey) -> Option<PodInfo> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        pods.get(key).cloned()
    }

    fn all(&self) -> Vec<PodInfo> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<PodInfo> = pods.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    fn synced(&self) -> bool {
        *self.synced.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> PodInfo {
        PodInfo {
            key: PodKey {
                namespace: "default".into(),
                name: name.into(),
            },
            uid: String::new(),
            ips: vec![],
            labels: BTreeMap::new(),
            service_account: String::new(),
            annotations: BTreeMap::new(),
            mesh: MeshDecision::NotMeshed {
                reason: "no proxy container".into(),
            },
            workload: Default::default(),
        }
    }

    #[test]
    fn relist_replaces_and_syncs() {
        let c = MemoryCatalog::new();
        assert!(!c.synced());
        c.upsert(info("a"));
        c.replace_all(vec![info("b")]);
        assert!(c.synced());
        assert_eq!(c.all().len(), 1);
        assert!(c.get(&info("a").key).is_none());
        assert_eq!(
            c.remove(&info("b").key).map(|p| p.key.name),
            Some("b".into())
        );
    }
}
