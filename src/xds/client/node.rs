//! The node's xDS client: one ADS stream per proxy identity (each
//! registered meshed pod that allows bypass), started and stopped as the
//! pod catalog changes, all sharing one [`Interner`] so identical
//! resources are held once. Asked per pod for the resources held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::identity::{MeshSettings, ProxyIdentity};
use super::intern::Interner;
use super::metrics::XdsMetrics;
use super::stream::{run_identity, IdentityState, StreamContext};
use super::transport::Transport;
use super::trim::Trimmer;
use crate::pods::source::{PodCatalog, PodInfo, PodKey};
use crate::xds::ProxyResources;

/// Streams that may take their session's first snapshot at the same time.
/// Each holds its responses' buffers until applied (a 10,000-service mesh's
/// CDS and EDS are a few MB): twenty identities starting together held
/// twenty snapshots at once, and the agent's RSS peaked at 92 MiB.
pub const FIRST_SYNCS_AT_ONCE: usize = 4;

/// Longest a stream that has not synced keeps others from starting theirs.
pub const FIRST_SYNC_HOLD: Duration = Duration::from_secs(10);

/// Everything the client is configured with.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub transport: Transport,
    pub mesh: MeshSettings,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long held resources count as current after the stream drops.
    pub stale_grace: Duration,
}

struct Entry {
    identity: ProxyIdentity,
    state: Arc<IdentityState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the client holds for one pod.
#[derive(Debug, Clone)]
pub struct PodView {
    pub node_id: String,
    pub resources: Arc<ProxyResources>,
    pub connected: bool,
    pub synced: bool,
    /// Disconnected for longer than the stale grace.
    pub stale: bool,
    pub last_error: Option<String>,
}

pub struct XdsClient {
    settings: ClientSettings,
    pools: Arc<Interner>,
    trimmer: Arc<Trimmer>,
    /// The trimmer's task, started with the first stream.
    trim_task: Mutex<Option<JoinHandle<()>>>,
    metrics: XdsMetrics,
    streams: Mutex<BTreeMap<PodKey, Entry>>,
    first_syncs: Arc<Semaphore>,
}

impl XdsClient {
    pub fn new(settings: ClientSettings, metrics: XdsMetrics) -> Arc<Self> {
        Arc::new(Self {
            settings,
            pools: Arc::new(Interner::default()),
            trimmer: Arc::new(Trimmer::new(metrics.heap_trims.clone())),
            trim_task: Mutex::new(None),
            metrics,
            streams: Mutex::new(BTreeMap::new()),
            first_syncs: Arc::new(Semaphore::new(FIRST_SYNCS_AT_ONCE)),
        })
    }

    fn context(&self) -> StreamContext {
        StreamContext {
            transport: self.settings.transport.clone(),
            pools: Arc::clone(&self.pools),
            trimmer: Arc::clone(&self.trimmer),
            metrics: self.metrics.clone(),
            initial_backoff: self.settings.initial_backoff,
            max_backoff: self.settings.max_backoff,
            first_syncs: Arc::clone(&self.first_syncs),
            first_sync_hold: FIRST_SYNC_HOLD,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<PodKey, Entry>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a stream for each pod that should have one and has none (or
    /// whose identity changed), stops those of pods gone or opted out.
    /// Must run inside a tokio runtime.
    pub fn reconcile(&self, pods: &[PodInfo]) {
        let wanted: BTreeMap<PodKey, ProxyIdentity> = pods
            .iter()
            .filter_map(|p| {
                ProxyIdentity::for_pod(p, &self.settings.mesh)
                    .ok()
                    .map(|id| (p.key.clone(), id))
            })
            .collect();
        self.trim_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| tokio::spawn(Arc::clone(&self.trimmer).run()));
        let mut streams = self.entries();
        let gone: Vec<PodKey> = streams
            .iter()
            .filter(|(k, e)| wanted.get(*k) != Some(&e.identity))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(e) = streams.remove(&k) {
                tracing::info!(pod = %k, node = %e.state.node_id, "ADS stream stopped");
                let _ = e.stop.send(true);
                self.metrics.streams.dec();
            }
        }
        for (k, identity) in wanted {
            if streams.contains_key(&k) {
                continue;
            }
            let state = Arc::new(IdentityState::new(identity.node_id.clone()));
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run_identity(
                Arc::clone(&state),
                identity.node.clone(),
                self.context(),
                stopped,
            ));
            tracing::info!(pod = %k, node = %identity.node_id, "ADS stream started");
            self.metrics.streams.inc();
            streams.insert(
                k,
                Entry {
                    identity,
                    state,
                    stop,
                    task,
                },
            );
        }
    }

    /// The node's heap trimmer (told of other bursts of work, e.g. a
    /// full decide).
    pub fn trimmer(&self) -> Arc<Trimmer> {
        Arc::clone(&self.trimmer)
    }

    /// What is held for `pod`; None when it has no stream.
    pub fn pod(&self, pod: &PodKey) -> Option<PodView> {
        let streams = self.entries();
        let s = &streams.get(pod)?.state;
        Some(PodView {
            node_id: s.node_id.clone(),
            resources: s.resources(),
            connected: s.connected(),
            synced: s.synced(),
            stale: s.stale(self.settings.stale_grace),
            last_error: s.last_error(),
        })
    }

    /// Changes of `pod`'s resources.
    pub fn watch(&self, pod: &PodKey) -> Option<watch::Receiver<Arc<ProxyResources>>> {
        self.entries().get(pod).map(|e| e.state.watch())
    }

    /// Pods with a stream.
    pub fn pods(&self) -> Vec<PodKey> {
        self.entries().keys().cloned().collect()
    }

    /// Every stream has had its first complete snapshot.
    pub fn synced(&self) -> bool {
        self.entries().values().all(|e| e.state.synced())
    }

    /// Stops every stream and waits for them.
    pub async fn stop_all(&self) {
        let entries: Vec<Entry> = std::mem::take(&mut *self.entries()).into_values().collect();
        if let Some(t) = self
            .trim_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
        for e in &entries {
            let _ = e.stop.send(true);
        }
        for e in entries {
            let _ = e.task.await;
            self.metrics.streams.dec();
        }
    }

    /// The component: reconciles with `catalog` every `every` (reporting
    /// sync through `on_sync`) until `shutdown`, then stops every stream.
    pub async fn run(
        self: Arc<Self>,
        catalog: Arc<dyn PodCatalog>,
        every: Duration,
        on_sync: impl Fn(bool) + Send,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.reconcile(&catalog.all());
                    on_sync(catalog.synced() && self.synced());
                }
            }
        }
        self.stop_all().await;
        tracing::info!("xDS client stopped");
    }
}
