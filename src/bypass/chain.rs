//! The agent's live bypass path as one unit: the xDS client (one ADS
//! stream per meshed pod of a catalog that allows bypass), the live
//! decisions that follow its streams, and the service-map sync with its
//! heartbeat ([`BypassSync`]), wired the way the agent runs them.
//!
//! [`BypassChain::spawn`] starts the three components on the caller's
//! runtime. The agent calls it from its serve loop with the catalog its pod
//! source fills; the benchmark's testbed calls it on a thread of its own
//! with a catalog it fills itself (src/bench/live.rs), so both run the same
//! code from the ADS stream to the kernel's maps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::sync::{BypassSync, SYNC_INTERVAL};
use crate::datapath::PinLayout;
use crate::metrics::AgentMetrics;
use crate::pods::source::PodCatalog;
use crate::xds::client::{ClientSettings, XdsClient};
use crate::xds::decide::BypassPolicy;
use crate::xds::live::LiveDecisions;

/// How often the xDS client and the live decisions follow the pod catalog
/// (streams for new pods, none for pods gone).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// What the chain is configured with (the agent's `xds:` and `bypass:`).
#[derive(Debug, Clone)]
pub struct ChainConfig {
    pub client: ClientSettings,
    pub policy: BypassPolicy,
    /// The install whose service map, endpoint sets and heartbeat are
    /// written.
    pub layout: PinLayout,
}

/// The running chain's handles: what its components hold, to be asked.
#[derive(Clone)]
pub struct BypassChain {
    pub client: Arc<XdsClient>,
    pub live: Arc<LiveDecisions>,
}

impl BypassChain {
    /// Spawns the xDS client, the live decisions and the service-map sync
    /// on `tasks` (must run inside a tokio runtime); they stop when `stop`
    /// changes. `on_sync` hears, every reconcile, whether the catalog and
    /// every stream are synced. The kernel stops bypassing the client's
    /// stale grace after the sync's last heartbeat.
    pub fn spawn(
        cfg: ChainConfig,
        catalog: Arc<dyn PodCatalog>,
        metrics: &AgentMetrics,
        on_sync: impl Fn(bool) + Send + 'static,
        tasks: &mut JoinSet<()>,
        stop: &watch::Receiver<bool>,
    ) -> Self {
        let grace = cfg.client.stale_grace;
        let client = XdsClient::new(cfg.client, metrics.xds.clone());
        tasks.spawn(
            client
                .clone()
                .run(catalog.clone(), RECONCILE_INTERVAL, on_sync, stop.clone()),
        );
        let live = LiveDecisions::new(client.clone(), cfg.policy, metrics.decisions.clone());
        tasks.spawn(live.clone().run(RECONCILE_INTERVAL, stop.clone()));
        tasks.spawn(
            BypassSync {
                layout: cfg.layout,
                live: live.clone(),
                client: client.clone(),
                catalog,
                grace,
                metrics: metrics.bypass.clone(),
                book: metrics.bypass_labels.clone(),
            }
            .run(SYNC_INTERVAL, stop.clone()),
        );
        Self { client, live }
    }
}
