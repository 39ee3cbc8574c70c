//! Starting the configured pod source and the reconcile that makes the
//! pod registry follow it (src/pods/{static_source,kube_source,reconcile}.rs).
//! The catalog they fill is what the CNI path and the xDS client read.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::readiness::Readiness;
use super::AgentError;
use crate::layout::PinLayout;
use crate::metrics::AgentMetrics;
use crate::pods::netns_finder::{HintedFinder, NetnsFinder, NodeScan};
use crate::pods::source::MemoryCatalog;
use crate::pods::source_config::{PodSourceConfig, PodSourceKind};
use crate::pods::{kube_source, reconcile, static_source};

/// What can be checked before anything is installed: the in-cluster
/// config of kind kubernetes (service account token, API server address).
pub fn preflight(cfg: &PodSourceConfig) -> Result<(), AgentError> {
    if cfg.kind == PodSourceKind::Kubernetes {
        kube_source::incluster_config().map_err(AgentError::PodSource)?;
    }
    Ok(())
}

/// Spawns the source and the reconcile on `tasks`; returns the catalog
/// (empty and never synced with kind none).
pub fn start(
    cfg: &PodSourceConfig,
    layout: &PinLayout,
    metrics: &AgentMetrics,
    readiness: &Arc<Readiness>,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) -> Result<Arc<MemoryCatalog>, AgentError> {
    let catalog = Arc::new(MemoryCatalog::new());
    let classify = cfg.classify_config();
    let finder: Arc<dyn NetnsFinder> = match cfg.kind {
        PodSourceKind::None => return Ok(catalog),
        PodSourceKind::Static => {
            let finder = HintedFinder::default();
            let file = cfg.static_file.clone().unwrap_or_default();
            tracing::info!(file = %file.display(), "static pod source");
            tasks.spawn(static_source::run(
                file,
                classify,
                catalog.clone(),
                finder.hints.clone(),
                stop.clone(),
            ));
            Arc::new(finder)
        }
        PodSourceKind::Kubernetes => {
            let client = kube_source::incluster_client().map_err(AgentError::PodSource)?;
            tasks.spawn(kube_source::run(
                client,
                cfg.node_name.clone().unwrap_or_default(),
                classify,
                catalog.clone(),
                metrics.clone(),
                stop.clone(),
            ));
            Arc::new(NodeScan::default())
        }
    };
    readiness.require_pod_source();
    let r = readiness.clone();
    tasks.spawn(reconcile::run(
        layout.clone(),
        catalog.clone(),
        finder,
        metrics.clone(),
        Box::new(move || r.set_pod_source_synced()),
        stop.clone(),
    ));
    Ok(catalog)
}
