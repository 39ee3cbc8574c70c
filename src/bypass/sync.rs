//! The async shell of the kernel bypass (one agent component): every
//! tick, on the blocking pool, it reads which pods are registered
//! (`ml_pods`, registrations named `namespace/name`), takes each one's
//! latest decisions from [`LiveDecisions::decisions`] unless its xDS
//! stream is stale, lets [`Table`] write the differences into the service
//! map and each pod's own PASSTHROUGH inbound ports into
//! `ml_inbound_pass` ([`super::inbound`]), beats the heartbeat, and
//! forgets the stats of pods that are gone.
//!
//! A pod is bypassed only while it is registered and has a stream (so a
//! pod that opted out with `meshlane.io/bypass: "false"`, or any pod when
//! bypass is disabled, has no entry), its stream is not stale, and the
//! heartbeat is within the grace. The same holds for a pod's inbound
//! pass-through entries, which come from that pod's own decisions only
//! and are keyed by its own netns cookie. The agent clears the maps when
//! it starts (and, with bypass disabled, stops the heartbeat).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::inbound::{self, InboundApplied, InboundMaps};
use super::metrics::{BypassMetrics, ReasonLabel, ResultLabel};
use super::table::{wanted_for_pod, Applied, KernelMaps, PodEntries, Table};
use super::telemetry::{LabelBook, Labels};
use crate::datapath::{
    BypassClockMap, BypassEndpoint, BypassEndpointsMap, BypassServicesMap, BypassStatsMap,
    InboundPassKey, InboundPassMap, MapError, PinLayout, PodsMap, ServiceKey,
};
use crate::pods::source::{PodCatalog, PodKey};
use crate::xds::client::XdsClient;
use crate::xds::decide::{Decisions, DestKey};
use crate::xds::live::LiveDecisions;

/// How often the service map follows the decisions and the heartbeat is
/// written.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Removes every service map entry, endpoint set and inbound
/// pass-through entry and stops the heartbeat: nothing is bypassed until
/// an agent writes them again.
pub fn clear_kernel_state(layout: &PinLayout) -> Result<(), MapError> {
    BypassClockMap::open(layout)?.stop()?;
    let inbound = InboundPassMap::open(layout)?;
    for k in inbound.keys() {
        inbound.remove(k)?;
    }
    let services = BypassServicesMap::open(layout)?;
    for k in services.keys() {
        services.remove(k)?;
    }
    let sets = BypassEndpointsMap::open(layout)?;
    for id in sets.ids() {
        sets.remove(id)?;
    }
    Ok(())
}

/// The component.
pub struct BypassSync {
    pub layout: PinLayout,
    pub live: Arc<LiveDecisions>,
    pub client: Arc<XdsClient>,
    pub catalog: Arc<dyn PodCatalog>,
    /// The kernel stops bypassing this long after the last heartbeat.
    pub grace: Duration,
    pub metrics: BypassMetrics,
    pub book: LabelBook,
}

/// What the shell keeps between rounds (on the blocking pool).
#[derive(Default)]
struct State {
    table: Table,
    /// Per pod cookie: the decisions last turned into entries, and them
    /// (service map entries, inbound pass-through entries).
    cache: HashMap<u64, (Arc<Decisions>, PodEntries, BTreeSet<InboundPassKey>)>,
}

/// What one round wants in the kernel.
#[derive(Default)]
struct WantedRound {
    services: Wanted,
    inbound: BTreeSet<InboundPassKey>,
    /// BYPASS destinations (and PASSTHROUGH ports) left out, by reason.
    kept: BTreeMap<&'static str, i64>,
}

impl BypassSync {
    pub async fn run(self, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        let state = Arc::new(Mutex::new(State::default()));
        {
            let l = me.layout.clone();
            match tokio::task::spawn_blocking(move || clear_kernel_state(&l)).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "bypass: clearing the service map"),
                Err(e) => tracing::warn!(error = %e, "bypass: clearing the service map"),
                Ok(Ok(())) => {}
            }
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    let (m, s) = (me.clone(), state.clone());
                    let done = tokio::task::spawn_blocking(move || {
                        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                        m.round(&mut s)
                    })
                    .await;
                    match done {
                        Ok(Err(e)) => tracing::warn!(error = %e, "bypass: service map round"),
                        Err(e) => tracing::warn!(error = %e, "bypass: service map round"),
                        Ok(Ok(())) => {}
                    }
                }
            }
        }
        // Exiting leaves the maps: the kernel keeps bypassing with what
        // was written until the grace after the last heartbeat. A new
        // agent clears them when it starts (new connections take the
        // sidecar) and writes them again once its streams are synced.
    }

    /// One round: decisions -> service map, heartbeat, stats cleanup.
    fn round(&self, state: &mut State) -> Result<(), MapError> {
        if !self.layout.maps_dir().is_dir() {
            return Ok(()); // uninstalled under us
        }
        let pods: Vec<(u64, String)> = PodsMap::open(&self.layout)?
            .iter()
            .map(|(cookie, p)| (cookie, pod_name(&p.name)))
            .collect();
        let registered: HashSet<u64> = pods.iter().map(|(c, _)| *c).collect();
        state.cache.retain(|c, _| registered.contains(c));

        let WantedRound {
            services,
            inbound,
            mut kept,
        } = self.wanted(state, &pods);
        let mut maps = PinnedMaps::open(&self.layout, &self.metrics)?;
        let applied = state.table.apply(&services, &mut maps);
        log_applied(&applied);
        *kept.entry("map_write_failed").or_default() += applied.failed.len() as i64;
        let inbound = self.apply_inbound(&inbound)?;
        *kept.entry("inbound_map_write_failed").or_default() += inbound.add_failed.len() as i64;
        self.metrics.inbound_ports.set(inbound.held as i64);
        self.publish(&state.table, &kept);

        BypassClockMap::open(&self.layout)?.beat(self.grace)?;
        self.metrics.heartbeats.inc();
        self.forget_gone_pods(&registered)
    }

    /// Brings `ml_inbound_pass` to `wanted` (walking what it holds, so
    /// entries of pods gone while no agent ran go too).
    fn apply_inbound(&self, wanted: &BTreeSet<InboundPassKey>) -> Result<InboundApplied, MapError> {
        let map = InboundPassMap::open(&self.layout)?;
        let present: BTreeSet<InboundPassKey> = map.keys().into_iter().collect();
        let mut pinned = PinnedInbound {
            map,
            metrics: &self.metrics,
        };
        let applied = inbound::apply(wanted, &present, &mut pinned);
        for (key, e) in &applied.add_failed {
            tracing::debug!(pod = key.netns, port = key.port, error = %e, "inbound pass-through: kept on the sidecar");
        }
        for (key, e) in &applied.remove_failed {
            tracing::warn!(pod = key.netns, port = key.port, error = %e, "inbound pass-through: an entry that should go could not be removed (retried)");
        }
        if applied.added + applied.removed > 0 || !applied.add_failed.is_empty() {
            tracing::info!(
                added = applied.added,
                removed = applied.removed,
                failed = applied.add_failed.len(),
                held = applied.held,
                "bypass: inbound pass-through ports updated"
            );
        }
        Ok(applied)
    }

    /// Every registered pod's entries (from synced, fresh streams), and
    /// the BYPASS destinations left out, by reason.
    fn wanted(&self, state: &mut State, pods: &[(u64, String)]) -> WantedRound {
        let mut round = WantedRound::default();
        for (cookie, name) in pods {
            let Some(key) = pod_key(name) else { continue };
            let (Some(decisions), Some(view)) = (self.live.decisions(&key), self.client.pod(&key))
            else {
                state.cache.remove(cookie);
                continue;
            };
            // Decisions of a partial first snapshot are not written.
            if !view.synced {
                continue;
            }
            let (entries, inbound) = match state.cache.get(cookie) {
                Some((d, e, i)) if Arc::ptr_eq(d, &decisions) => (e.clone(), i.clone()),
                _ => {
                    let e = wanted_for_pod(*cookie, &decisions);
                    let i = inbound::wanted_for_pod(*cookie, &decisions);
                    self.record_labels(&key, *cookie, &decisions);
                    state
                        .cache
                        .insert(*cookie, (decisions, e.clone(), i.clone()));
                    (e, i)
                }
            };
            if view.stale {
                *round.kept.entry("stream_stale").or_default() +=
                    (entries.services.len() + inbound.len()) as i64;
                continue;
            }
            for (_, skip) in &entries.skipped {
                *round.kept.entry(skip.code()).or_default() += 1;
            }
            round.services.extend(entries.services);
            round.inbound.extend(inbound);
        }
        round
    }

    /// The map's gauges.
    fn publish(&self, table: &Table, kept: &BTreeMap<&'static str, i64>) {
        for reason in [
            "map_write_failed",
            "no_endpoints",
            "too_many_endpoints",
            "stream_stale",
            "inbound_map_write_failed",
        ] {
            self.metrics
                .kept_sidecar
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .set(kept.get(reason).copied().unwrap_or(0));
        }
        let (entries, sets) = table.len();
        self.metrics.entries.set(entries as i64);
        self.metrics.endpoint_sets.set(sets as i64);
    }

    /// Stats (and their labels) of pods no longer registered.
    fn forget_gone_pods(&self, registered: &HashSet<u64>) -> Result<(), MapError> {
        let stats = BypassStatsMap::open(&self.layout)?;
        let gone: Vec<ServiceKey> = stats
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !registered.contains(&k.netns))
            .collect();
        for k in gone {
            stats.remove(k)?;
        }
        self.book.retain_pods(|c| registered.contains(&c));
        Ok(())
    }

    /// Istio's labels for every BYPASS service of a pod.
    fn record_labels(&self, pod: &PodKey, cookie: u64, decisions: &Decisions) {
        let workload = self.catalog.get(pod).map_or_else(
            || pod.name.clone(),
            |p| crate::xds::client::identity::workload_name(&p),
        );
        for d in &decisions.destinations {
            if let DestKey::Service { address, port } = d.destination {
                let key = ServiceKey {
                    netns: cookie,
                    dest: std::net::SocketAddr::new(address, port),
                };
                self.book
                    .set(key, Labels::new(&workload, &pod.namespace, d));
            }
        }
    }
}

/// Every pod's service map entries.
type Wanted = BTreeMap<ServiceKey, Vec<BypassEndpoint>>;

/// One line when the service map changed; each failure at debug.
fn log_applied(applied: &Applied) {
    for (key, e) in &applied.failed {
        tracing::debug!(pod = key.netns, dest = %key.dest, error = %e, "bypass: kept on the sidecar");
    }
    if applied.added + applied.changed + applied.removed > 0 || !applied.failed.is_empty() {
        tracing::info!(
            added = applied.added,
            changed = applied.changed,
            removed = applied.removed,
            failed = applied.failed.len(),
            "bypass: service map updated"
        );
    }
}

/// The registration's name (NUL-terminated bytes) as text.
fn pod_name(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `namespace/name` registrations are the pod source's (the reconcile and
/// the CNI path name them so); others have no xDS stream.
fn pod_key(name: &str) -> Option<PodKey> {
    let (namespace, name) = name.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| PodKey {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// The core's writes on the pinned maps, counted in `metrics`.
pub struct PinnedMaps<'a> {
    services: BypassServicesMap,
    sets: BypassEndpointsMap,
    metrics: &'a BypassMetrics,
}

/// Counts one kernel map write in `meshlane_bypass_map_writes_total` by
/// result and turns its error into the core's text.
fn count_write<T>(metrics: &BypassMetrics, r: Result<T, MapError>) -> Result<(), String> {
    let result = if r.is_ok() { "ok" } else { "failed" };
    metrics
        .writes
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .inc();
    r.map(|_| ()).map_err(|e| e.to_string())
}

impl<'a> PinnedMaps<'a> {
    pub fn open(layout: &PinLayout, metrics: &'a BypassMetrics) -> Result<Self, MapError> {
        Ok(Self {
            services: BypassServicesMap::open(layout)?,
            sets: BypassEndpointsMap::open(layout)?,
            metrics,
        })
    }

    fn count<T>(&self, r: Result<T, MapError>) -> Result<(), String> {
        count_write(self.metrics, r)
    }
}

impl KernelMaps for PinnedMaps<'_> {
    fn put_set(&mut self, id: u32, endpoints: &[BypassEndpoint]) -> Result<(), String> {
        self.count(self.sets.insert(id, endpoints))
    }
    fn delete_set(&mut self, id: u32) -> Result<(), String> {
        self.count(self.sets.remove(id))
    }
    fn put_service(&mut self, key: ServiceKey, set: u32) -> Result<(), String> {
        self.count(self.services.insert(key, set))
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), String> {
        self.count(self.services.remove(key))
    }
}

/// The inbound core's writes on `ml_inbound_pass`, counted in `metrics`.
struct PinnedInbound<'a> {
    map: InboundPassMap,
    metrics: &'a BypassMetrics,
}

impl PinnedInbound<'_> {
    fn count<T>(&self, r: Result<T, MapError>) -> Result<(), String> {
        count_write(self.metrics, r)
    }
}

impl InboundMaps for PinnedInbound<'_> {
    fn put(&mut self, key: InboundPassKey) -> Result<(), String> {
        self.count(self.map.insert(key))
    }
    fn delete(&mut self, key: InboundPassKey) -> Result<(), String> {
        self.count(self.map.remove(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespace_slash_name_registrations_are_pods() {
        let k = pod_key("shop/cart-1").unwrap();
        assert_eq!((k.namespace.as_str(), k.name.as_str()), ("shop", "cart-1"));
        assert!(pod_key("/netns/path").is_none());
        assert!(pod_key("plain").is_none());
        assert!(pod_key("a/b/c").is_none());
    }
}
