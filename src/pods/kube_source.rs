//! The Kubernetes pod source: a watch of this node's pods
//! (`spec.nodeName=<node>`, the node name from the downward API), through
//! kube-rs's watcher with the in-cluster service-account config. The
//! watcher lists, then watches from the list's resourceVersion with
//! bookmarks; on 410 Gone it lists again, and on a dropped connection it
//! resumes after a backoff. kube-rs relists on a 410 ERROR event in the
//! watch stream, but keeps retrying the same resourceVersion when the watch
//! request itself is answered with HTTP 410: [`run`] starts the watcher
//! over (a relist) in that case. Every pod goes through [`classify`] into the
//! catalog: a complete listing replaces it (and marks it synced), later
//! events patch it.
//!
//! [`WatchCore`] is the synchronous core (watch events in, catalog
//! changes out); [`run`] is the async shell.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::watch;

use super::classify::{classify, ClassifyConfig};
use super::source::{MemoryCatalog, PodInfo, PodKey};
use crate::metrics::AgentMetrics;

#[derive(Debug, Error)]
pub enum KubeSourceError {
    #[error("Kubernetes pod source: in-cluster config (service account token and KUBERNETES_SERVICE_HOST/PORT): {0}")]
    InCluster(String),
    #[error("Kubernetes pod source: building the API client: {0}")]
    Client(String),
}

/// The client of the API server the agent's pod runs under (its service
/// account token and CA; never a kubeconfig). Needs a tokio runtime.
pub fn incluster_client() -> Result<Client, KubeSourceError> {
    Client::try_from(incluster_config()?).map_err(|e| KubeSourceError::Client(e.to_string()))
}

/// The in-cluster config alone (no runtime needed): the agent checks it
/// before installing anything.
pub fn incluster_config() -> Result<kube::Config, KubeSourceError> {
    kube::Config::incluster().map_err(|e| KubeSourceError::InCluster(e.to_string()))
}

/// The watch of `node`'s pods.
pub fn watch_config(node: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("spec.nodeName={node}"))
}

/// Applies watch events to a catalog, buffering a (re)listing until it is
/// complete so the catalog never shows half a listing.
#[derive(Debug)]
pub struct WatchCore {
    cfg: ClassifyConfig,
    listing: Option<Vec<PodInfo>>,
}

impl WatchCore {
    pub fn new(cfg: ClassifyConfig) -> Self {
        Self { cfg, listing: None }
    }

    pub fn apply(&mut self, event: Event<Pod>, catalog: &MemoryCatalog) {
        match event {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(pod) => {
                if let (Some(list), Some(info)) = (self.listing.as_mut(), classify(&pod, &self.cfg))
                {
                    list.push(info);
                }
            }
            Event::InitDone => {
                let list = self.listing.take().unwrap_or_default();
                tracing::info!(
                    pods = list.len(),
                    "Kubernetes pod source: listed this node's pods"
                );
                catalog.replace_all(list);
            }
            Event::Apply(pod) => {
                if let Some(info) = classify(&pod, &self.cfg) {
                    catalog.upsert(info);
                }
            }
            Event::Delete(pod) => {
                let key = pod
                    .metadata
                    .namespace
                    .zip(pod.metadata.name)
                    .map(|(namespace, name)| PodKey { namespace, name });
                if let Some(key) = key {
                    catalog.remove(&key);
                }
            }
        }
    }
}

/// Watches `node`'s pods through `client` into `catalog` until shutdown.
/// Errors (a dropped connection, an unreachable API server) are logged
/// and counted; the watcher retries with exponential backoff.
pub async fn run(
    client: Client,
    node: String,
    cfg: ClassifyConfig,
    catalog: Arc<MemoryCatalog>,
    metrics: AgentMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let start = || {
        watcher::watcher(api.clone(), watch_config(&node))
            .default_backoff()
            .boxed()
    };
    let mut events = start();
    let mut core = WatchCore::new(cfg);
    tracing::info!(%node, "Kubernetes pod source: watching this node's pods");
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            ev = events.next() => match ev {
                Some(Ok(ev)) => core.apply(ev, &catalog),
                Some(Err(e)) => {
                    metrics.pod_source_errors.inc();
                    if is_gone_at_watch_start(&e) {
                        tracing::warn!(error = %e, "Kubernetes pod source: resourceVersion expired (HTTP 410): listing again");
                        events = start();
                    } else {
                        tracing::warn!(error = %e, "Kubernetes pod source: watch failed, retrying");
                    }
                }
                None => break,
            },
        }
    }
}

/// A watch request answered with HTTP 410 Gone.
fn is_gone_at_watch_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::source::{MeshDecision, PodCatalog};

    fn pod(name: &str, proxy: bool) -> Pod {
        let mut containers = vec![serde_json::json!({"name": "app"})];
        if proxy {
            containers.push(serde_json::json!({"name": "istio-proxy"}));
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name,
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    #[test]
    fn a_listing_shows_only_when_complete_and_events_patch_it() {
        let c = MemoryCatalog::new();
        let mut core = WatchCore::new(ClassifyConfig::default());
        core.apply(Event::Init, &c);
        core.apply(Event::InitApply(pod("a", true)), &c);
        assert!(!c.synced() && c.all().is_empty());
        core.apply(Event::InitApply(pod("b", false)), &c);
        core.apply(Event::InitDone, &c);
        assert!(c.synced());
        assert_eq!(c.all().len(), 2);
        assert!(matches!(c.all()[1].mesh, MeshDecision::NotMeshed { .. }));
        core.apply(Event::Apply(pod("b", true)), &c);
        assert!(matches!(c.all()[1].mesh, MeshDecision::Meshed { .. }));
        core.apply(Event::Delete(pod("a", true)), &c);
        assert_eq!(c.all().len(), 1);
        // A relist replaces: pods not listed again are gone.
        core.apply(Event::Init, &c);
        core.apply(Event::InitApply(pod("c", true)), &c);
        core.apply(Event::InitDone, &c);
        let names: Vec<String> = c.all().into_iter().map(|p| p.key.name).collect();
        assert_eq!(names, vec!["c".to_string()]);
    }

    #[test]
    fn the_watch_selects_this_nodes_pods() {
        let cfg = watch_config("node-1");
        assert_eq!(cfg.field_selector.as_deref(), Some("spec.nodeName=node-1"));
        assert!(cfg.bookmarks);
    }
}
