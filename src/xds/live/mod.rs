//! Live decisions: the async shell that keeps every pod's bypass
//! decisions current as its xDS resources change (and when the bypass
//! policy is replaced: [`LiveDecisions::set_policy`]). Per pod with an ADS
//! stream it follows the stream and, on each change, moves the pod to the
//! [`shared::Decided`] state for its new resources: one another pod with
//! the same inputs already has, or its own re-decided for only the
//! changed clusters (EDS, CDS) or everything (LDS, RDS, ECDS, policy).
//! The work runs on a blocking thread, one pod at a time (so twenty pods
//! of one config are decided once). The latest [`Decisions`] per pod is
//! kept for the kernel's service map and for `meshlane explain --pod`
//! (served through the local API).

pub mod metrics;
pub mod shared;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use metrics::DecisionMetrics;

use crate::pods::source::PodKey;
use crate::xds::client::trim::Trimmer;
use crate::xds::client::XdsClient;
use crate::xds::decide::{BypassPolicy, Decisions, Summary};
use crate::xds::ProxyResources;
use shared::{Decided, States};

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
    policy: watch::Sender<Arc<BypassPolicy>>,
    states: Arc<Mutex<States>>,
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
            policy: watch::Sender::new(Arc::new(policy)),
            states: Arc::new(Mutex::new(States::default())),
            metrics,
            pods: Mutex::new(BTreeMap::new()),
        })
    }

    /// Replaces the bypass policy: every pod is decided again under it.
    pub fn set_policy(&self, policy: BypassPolicy) {
        self.policy.send_if_modified(|p| {
            let changed = **p != policy;
            if changed {
                *p = Arc::new(policy);
            }
            changed
        });
    }

    /// The policy decisions are made under.
    pub fn policy(&self) -> BypassPolicy {
        (**self.policy.borrow()).clone()
    }

    /// Decision states alive on the node (pods with the same inputs share
    /// one).
    pub fn distinct_states(&self) -> usize {
        lock(&self.states).live()
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
                self.policy.subscribe(),
                Arc::clone(&self.states),
                self.metrics.clone(),
                Arc::clone(&latest),
                self.client.trimmer(),
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

/// Re-decides one pod on every change of its resources or of the policy,
/// until the stream goes away.
async fn follow(
    mut rx: watch::Receiver<Arc<ProxyResources>>,
    mut policy_rx: watch::Receiver<Arc<BypassPolicy>>,
    states: Arc<Mutex<States>>,
    metrics: DecisionMetrics,
    latest: Latest,
    trimmer: Arc<Trimmer>,
) {
    let mut current: Option<Arc<Decided>> = None;
    loop {
        let new = Arc::clone(&rx.borrow_and_update());
        let policy = Arc::clone(&policy_rx.borrow_and_update());
        if !new.is_empty() {
            let states = Arc::clone(&states);
            let from = Arc::clone(&new);
            // Taken, so that a state no other pod shares is changed in place.
            let before = current.take();
            let work = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                // One pod at a time: a pod whose inputs another pod has
                // just decided takes that state instead of deciding again.
                let mut states = lock(&states);
                let (state, work) = states.advance(before, &new, &policy);
                (state, work, started.elapsed())
            })
            .await;
            let Ok((state, work, took)) = work else {
                return; // aborted: the pod is gone
            };
            if work == shared::Work::Full {
                // A full decide frees about as much as it keeps.
                trimmer.note_work();
            }
            let mut slot = lock(&latest);
            match work.kind() {
                Some(kind) => {
                    metrics.observe(kind, took.as_secs_f64());
                    metrics.replace(slot.as_ref().map(|(_, s, _)| s), Some(&state.summary));
                    *slot = Some((Arc::clone(&state.decisions), state.summary.clone(), from));
                }
                // Nothing to re-decide: the decisions hold for `from` too.
                None => match slot.as_mut() {
                    Some(held) => held.2 = from,
                    None => {
                        metrics.replace(None, Some(&state.summary));
                        *slot = Some((Arc::clone(&state.decisions), state.summary.clone(), from));
                    }
                },
            }
            drop(slot);
            current = Some(state);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = policy_rx.changed() => if r.is_err() { return },
        }
    }
}
