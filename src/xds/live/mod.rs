//! Live decisions: the async shell that keeps every pod's bypass
//! decisions current as its xDS resources change. Per pod with an ADS
//! stream it holds an [`Engine`] and, on each change the stream
//! publishes, asks [`update::plan`](crate::xds::decide::update::plan)
//! what to recompute: only the changed clusters (EDS, CDS) or everything
//! (LDS, RDS, ECDS). The work runs on a blocking thread; the latest
//! [`Decisions`] per pod is kept for the kernel's service map and for
//! `meshlane explain --pod` (served through the local API).

pub mod metrics;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use metrics::DecisionMetrics;

use crate::pods::source::PodKey;
use crate::xds::client::XdsClient;
use crate::xds::decide::update::{plan, Recompute};
use crate::xds::decide::{BypassPolicy, Decisions, Engine, Summary};
use crate::xds::ProxyResources;

/// What `explain --pod` shows: the pod's decisions and its stream state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodExplained {
    pub pod: PodKey,
    pub node_id: String,
    pub connected: bool,
    pub synced: bool,
    /// Disconnected for longer than the stale grace: decisions are from
    /// the last config held.
    pub stale: bool,
    pub last_error: Option<String>,
    pub decisions: Decisions,
}

/// Why a pod cannot be explained (one line each).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("pod {0} has no xDS stream on this node (unknown, not meshed, opted out of bypass, or no IP yet)")]
    UnknownPod(PodKey),
    #[error("pod {pod}: xDS not yet synced (stream {state}): no decisions yet")]
    NotSynced { pod: PodKey, state: &'static str },
}

/// A pod's latest decisions, their summary (counted in the metrics) and
/// the resources they were decided from.
type Latest = Arc<Mutex<Option<(Arc<Decisions>, Summary, Arc<ProxyResources>)>>>;

struct Tracked {
    node_id: String,
    latest: Latest,
    task: JoinHandle<()>,
}

/// Every pod's latest decisions, following an [`XdsClient`].
pub struct LiveDecisions {
    client: Arc<XdsClient>,
    policy: BypassPolicy,
    metrics: DecisionMetrics,
    pods: Mutex<BTreeMap<PodKey, Tracked>>,
}

impl LiveDecisions {
    pub fn new(
        client: Arc<XdsClient>,
        policy: BypassPolicy,
        metrics: DecisionMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            policy,
            metrics,
            pods: Mutex::new(BTreeMap::new()),
        })
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, BTreeMap<PodKey, Tracked>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows every pod the client has a stream for, and forgets pods
    /// whose stream is gone (or was replaced by a new identity). Must run
    /// inside a tokio runtime.
    pub fn reconcile(&self) {
        let mut tracked = self.tracked();
        let gone: Vec<PodKey> = tracked
            .iter()
            .filter(|(k, t)| self.client.pod(k).map_or(true, |v| v.node_id != t.node_id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(t) = tracked.remove(&k) {
                t.task.abort();
                let old = lock(&t.latest).take();
                self.metrics.replace(old.as_ref().map(|(_, s, _)| s), None);
            }
        }
        for k in self.client.pods() {
            if tracked.contains_key(&k) {
                continue;
            }
            let (Some(view), Some(rx)) = (self.client.pod(&k), self.client.watch(&k)) else {
                continue;
            };
            let latest = Arc::new(Mutex::new(None));
            let task = tokio::spawn(follow(
                rx,
                self.policy.clone(),
                self.metrics.clone(),
                Arc::clone(&latest),
            ));
            tracked.insert(
                k,
                Tracked {
                    node_id: view.node_id,
                    latest,
                    task,
                },
            );
        }
    }

    /// The latest decisions of `pod` (for the kernel's service map).
    pub fn decisions(&self, pod: &PodKey) -> Option<Arc<Decisions>> {
        let t = self.tracked();
        let latest = lock(&t.get(pod)?.latest);
        latest.as_ref().map(|(d, _, _)| Arc::clone(d))
    }

    /// The latest decisions of `pod` if they were decided from `current`.
    fn decided_from(&self, pod: &PodKey, current: &Arc<ProxyResources>) -> Option<Arc<Decisions>> {
        let t = self.tracked();
        let latest = lock(&t.get(pod)?.latest);
        latest
            .as_ref()
            .filter(|(_, _, from)| Arc::ptr_eq(from, current))
            .map(|(d, _, _)| Arc::clone(d))
    }

    /// `explain --pod`: the pod's decisions and its stream's state.
    pub fn explain(&self, pod: &PodKey) -> Result<PodExplained, ExplainError> {
        let view = self
            .client
            .pod(pod)
            .ok_or_else(|| ExplainError::UnknownPod(pod.clone()))?;
        let not_synced = || ExplainError::NotSynced {
            pod: pod.clone(),
            state: if view.connected {
                "connected"
            } else {
                "not connected"
            },
        };
        if !view.synced {
            return Err(not_synced());
        }
        // Decisions of an earlier (partial) snapshot are not the answer:
        // until the held resources are decided, the pod is not synced yet.
        let decisions = self
            .decided_from(pod, &view.resources)
            .ok_or_else(not_synced)?;
        Ok(PodExplained {
            pod: pod.clone(),
            node_id: view.node_id,
            connected: view.connected,
            synced: view.synced,
            stale: view.stale,
            last_error: view.last_error,
            decisions: (*decisions).clone(),
        })
    }

    /// The component: reconciles every `every` until `shutdown`.
    pub async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.reconcile(),
            }
        }
        self.stop();
    }

    /// Stops following every pod.
    pub fn stop(&self) {
        let all = std::mem::take(&mut *self.tracked());
        for t in all.into_values() {
            t.task.abort();
            let old = lock(&t.latest).take();
            self.metrics.replace(old.as_ref().map(|(_, s, _)| s), None);
        }
    }
}

impl Drop for LiveDecisions {
    fn drop(&mut self) {
        for t in self.tracked().values() {
            t.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One pod's engine and what it last decided from.
struct PodEngine {
    engine: Option<Engine>,
    held: Arc<ProxyResources>,
}

impl PodEngine {
    /// Brings the decisions up to `new`; the kind of work done, if any.
    fn update(&mut self, new: Arc<ProxyResources>, policy: &BypassPolicy) -> Option<&'static str> {
        let work = match &self.engine {
            None => Recompute::Full,
            Some(_) => plan(&self.held, &new),
        };
        let kind = match work {
            Recompute::Nothing => None,
            Recompute::Full => {
                self.engine = Some(Engine::new(&new, policy.clone()));
                Some("full")
            }
            Recompute::Clusters(names) => {
                if let Some(e) = self.engine.as_mut() {
                    e.clusters_changed(&new, &names);
                }
                Some("clusters")
            }
        };
        self.held = new;
        kind
    }
}

/// Re-decides one pod on every change of its resources, until the stream
/// goes away.
async fn follow(
    mut rx: watch::Receiver<Arc<ProxyResources>>,
    policy: BypassPolicy,
    metrics: DecisionMetrics,
    latest: Latest,
) {
    let mut pod = Some(PodEngine {
        engine: None,
        held: Arc::new(ProxyResources::default()),
    });
    loop {
        let new = Arc::clone(&rx.borrow_and_update());
        if !new.is_empty() {
            let Some(mut p) = pod.take() else { return };
            let policy = policy.clone();
            let from = Arc::clone(&new);
            let work = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let kind = p.update(new, &policy);
                let decided = kind.and(p.engine.as_ref()).map(|e| {
                    let d = e.decisions();
                    let s = d.summary();
                    (Arc::new(d), s)
                });
                (p, kind, decided, started.elapsed())
            })
            .await;
            let Ok((p, kind, decided, took)) = work else {
                return; // aborted: the pod is gone
            };
            pod = Some(p);
            let mut slot = lock(&latest);
            match (kind, decided) {
                (Some(kind), Some((decisions, summary))) => {
                    metrics.observe(kind, took.as_secs_f64());
                    metrics.replace(slot.as_ref().map(|(_, s, _)| s), Some(&summary));
                    *slot = Some((decisions, summary, from));
                }
                // Nothing to re-decide: the decisions hold for `from` too.
                _ => {
                    if let Some(held) = slot.as_mut() {
                        held.2 = from;
                    }
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
