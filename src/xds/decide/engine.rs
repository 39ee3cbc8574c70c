//! [`Engine`]: one proxy's decisions, kept current cheaply. Listener and
//! route work (candidates per destination key) is done once per LDS/RDS/
//! CDS change; an EDS change re-judges only the changed clusters and
//! re-merges only the destinations that use them.
//!
//! Which call for which change: EDS, or a CDS change of clusters already
//! referenced (including one that was missing) -> `changed`;
//! LDS, RDS, ECDS or a policy change -> `Engine::new` (a full decide:
//! about 0.2 s of CPU for 10,000 services, see docs/benchmarks.md).
//!
//! Decisions are held as `Arc<Destination>`s and handed out without
//! copying ([`Engine::decisions`] clones pointers); a destination that
//! reaches one cluster shares that cluster's endpoint list; the summary is
//! kept as destinations change.
//!
//! Held compactly (a state for 10,000 services lives as long as its pods):
//! cluster and listener names are the held resources' shared strings (one
//! allocation per name, whoever refers to it), reason sentences shared
//! between a cluster's judgement and its destinations, losses one byte,
//! endpoints packed ([`EndpointList`]), and every held list at its length.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::cluster::{self, ClusterJudged, Endpoint};
use super::endpoints::EndpointList;
use super::listeners::{self, Candidate};
use super::reason::{Losses, Reason, ReasonCode as R};
use super::{BypassPolicy, Decisions, DestKey, Destination, Summary, Verdict};
use crate::xds::ProxyResources;

/// The listener- and route-level half of a decide (candidates per
/// destination key, and which keys each cluster serves): rebuilt only on
/// an LDS, RDS or ECDS change, shared by every copy of the engine.
struct Outbound {
    candidates: BTreeMap<DestKey, Vec<Candidate>>,
    /// Keyed by the candidates' shared cluster names.
    keys_by_cluster: HashMap<Arc<str>, Vec<DestKey>>,
}

/// One proxy's decisions. Cloning is cheap (maps of `Arc`s): a copy is how
/// a decision state shared by several pods is changed for one of them.
#[derive(Clone)]
pub struct Engine {
    policy: BypassPolicy,
    outbound: Arc<Outbound>,
    /// Keyed by shared names: a copy of the engine copies pointers.
    clusters: HashMap<Arc<str>, Arc<ClusterJudged>>,
    /// EDS resource name -> the referenced clusters that read it; changed
    /// (copied first when shared) only by a CDS change. Shared names.
    by_eds: Arc<HashMap<Arc<str>, Vec<Arc<str>>>>,
    decided: BTreeMap<DestKey, Arc<Destination>>,
    /// Kept as destinations change (not re-counted per change).
    summary: Summary,
}

impl Engine {
    /// Decides every destination from scratch.
    pub fn new(res: &ProxyResources, policy: BypassPolicy) -> Self {
        let candidates = listeners::candidates(res, &policy);
        let mut keys_by_cluster: HashMap<Arc<str>, Vec<DestKey>> = HashMap::new();
        for (k, cands) in &candidates {
            let names: BTreeSet<&Arc<str>> = cands
                .iter()
                .flat_map(|c| c.targets.iter().map(|(n, _)| n))
                .collect();
            for n in names {
                keys_by_cluster
                    .entry(Arc::clone(n))
                    .or_default()
                    .push(k.clone());
            }
        }
        keys_by_cluster.values_mut().for_each(Vec::shrink_to_fit);
        let clusters = keys_by_cluster
            .keys()
            .map(|n| (Arc::clone(n), Arc::new(cluster::judge(n, res, &policy))))
            .collect();
        let mut by_eds: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        for n in keys_by_cluster.keys() {
            if let Some(service) = eds_name(res, n) {
                by_eds.entry(service).or_default().push(Arc::clone(n));
            }
        }
        by_eds.values_mut().for_each(Vec::shrink_to_fit);
        let mut e = Self {
            policy,
            outbound: Arc::new(Outbound {
                candidates,
                keys_by_cluster,
            }),
            clusters,
            by_eds: Arc::new(by_eds),
            decided: BTreeMap::new(),
            summary: Summary::default(),
        };
        let outbound = Arc::clone(&e.outbound);
        for k in outbound.candidates.keys() {
            e.redecide(k);
        }
        e
    }

    /// After an EDS (or single-cluster CDS) change: re-judges `changed`
    /// clusters and re-decides the destinations that use them. Returns
    /// the destinations whose decision or endpoints changed.
    pub fn clusters_changed(&mut self, res: &ProxyResources, changed: &[String]) -> Vec<DestKey> {
        self.changed(res, changed, &[])
    }

    /// After CDS changes of `clusters` and EDS changes of `assignments`
    /// (by EDS resource name): re-judges the clusters they concern and
    /// re-decides the destinations that use them. Returns the
    /// destinations whose decision or endpoints changed.
    pub fn changed(
        &mut self,
        res: &ProxyResources,
        clusters: &[String],
        assignments: &[String],
    ) -> Vec<DestKey> {
        let mut judge: BTreeSet<Arc<str>> = BTreeSet::new();
        for name in clusters {
            let Some((shared, _)) = self.outbound.keys_by_cluster.get_key_value(name.as_str())
            else {
                continue;
            };
            let shared = Arc::clone(shared);
            let by_eds = Arc::make_mut(&mut self.by_eds);
            for readers in by_eds.values_mut() {
                readers.retain(|n| *n != shared);
            }
            if let Some(service) = eds_name(res, &shared) {
                by_eds.entry(service).or_default().push(Arc::clone(&shared));
            }
            by_eds.retain(|_, readers| !readers.is_empty());
            judge.insert(shared);
        }
        for a in assignments {
            if let Some(readers) = self.by_eds.get(a.as_str()) {
                judge.extend(readers.iter().cloned());
            }
        }
        let outbound = Arc::clone(&self.outbound);
        let mut touched = BTreeSet::new();
        for name in judge {
            let Some(keys) = outbound.keys_by_cluster.get(&name) else {
                continue;
            };
            let judged = Arc::new(cluster::judge(&name, res, &self.policy));
            self.clusters.insert(name, judged);
            touched.extend(keys.iter());
        }
        touched
            .into_iter()
            .filter(|k| self.redecide(k))
            .cloned()
            .collect()
    }

    /// True when a change of these clusters (by name) or assignments (by
    /// EDS resource name) would touch a decision: a cluster the listeners
    /// reach, or the endpoints one of those reads.
    pub fn reads_any(&self, clusters: &[String], assignments: &[String]) -> bool {
        clusters
            .iter()
            .any(|c| self.outbound.keys_by_cluster.contains_key(c.as_str()))
            || assignments
                .iter()
                .any(|a| self.by_eds.contains_key(a.as_str()))
    }

    /// The decision for one destination.
    pub fn get(&self, key: &DestKey) -> Option<&Arc<Destination>> {
        self.decided.get(key)
    }

    pub fn len(&self) -> usize {
        self.decided.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decided.is_empty()
    }

    /// Every decision, ordered by destination (shared, not copied).
    pub fn decisions(&self) -> Decisions {
        Decisions {
            destinations: self.decided.values().cloned().collect(),
        }
    }

    /// Counts by decision and reason, kept current by every change.
    pub fn summary(&self) -> Summary {
        self.summary.clone()
    }

    /// Re-merges one key; true when its decision changed.
    fn redecide(&mut self, key: &DestKey) -> bool {
        let Some(cands) = self.outbound.candidates.get(key) else {
            return false;
        };
        let d = merge(key, cands, &self.clusters, &self.policy);
        if self.decided.get(key).is_some_and(|old| **old == d) {
            return false;
        }
        if let Some(old) = self.decided.get(key) {
            self.summary.remove(old);
        }
        self.summary.add(&d);
        self.decided.insert(key.clone(), Arc::new(d));
        true
    }
}

/// The EDS resource a held EDS cluster reads (None: not EDS, or not
/// held), as the held cluster's shared name.
fn eds_name(res: &ProxyResources, cluster: &str) -> Option<Arc<str>> {
    res.clusters.get(cluster)?.eds_service.clone()
}

/// One destination from its candidates (the most specific rank only) and
/// the judgements of the clusters they reach.
/// What reaching judged cluster `j` adds to a destination: its reasons
/// (with the HTTP-only ones when reached over HTTP), hostnames and losses.
fn absorb(
    j: &ClusterJudged,
    http: bool,
    reasons: &mut BTreeSet<Reason>,
    hostnames: &mut BTreeSet<Arc<str>>,
    losses: &mut Losses,
) {
    reasons.extend(j.reasons.iter().cloned());
    hostnames.extend(j.hosts.iter().cloned());
    if http {
        reasons.extend(j.http_reasons.iter().cloned());
    }
    losses.extend(j.losses);
}

fn merge(
    key: &DestKey,
    all: &[Candidate],
    clusters: &HashMap<Arc<str>, Arc<ClusterJudged>>,
    policy: &BypassPolicy,
) -> Destination {
    let top = all.iter().map(|c| c.rank).max().unwrap_or(0);
    let cands: Vec<&Candidate> = all.iter().filter(|c| c.rank == top).collect();
    let mut reasons: BTreeSet<Reason> = BTreeSet::new();
    let mut losses = Losses::default();
    let mut listeners = BTreeSet::new();
    let mut hostnames = BTreeSet::new();
    for c in &cands {
        reasons.extend(c.reasons.iter().cloned());
        losses.extend(c.losses);
        listeners.insert(Arc::clone(&c.listener));
        hostnames.extend(c.hostnames.iter().cloned());
    }
    let is_passthrough = |c: &Candidate| {
        !c.targets.is_empty()
            && c.targets
                .iter()
                .all(|(n, _)| clusters.get(&**n).is_some_and(|j| j.original_dst))
    };
    // Sniffed ports: every chain serving the key must reach the same clusters.
    let mut effective: Vec<&Candidate> = cands.clone();
    if cands.len() > 1 {
        if !policy.bypass_sniffed_ports {
            reasons.insert(Reason::new(
                R::SniffedPortsPolicy,
                format!(
                    "{key}: {} chains share it (bypassSniffedPorts off)",
                    cands.len()
                ),
            ));
        }
        let service = matches!(key, DestKey::Service { .. });
        if service && policy.sniffed_passthrough_fallback {
            let (pass, rest): (Vec<&Candidate>, Vec<&Candidate>) =
                cands.iter().partition(|c| is_passthrough(c));
            if !pass.is_empty() && !rest.is_empty() {
                reasons.insert(Reason::new(R::SniffedPassthroughFallback, format!("{key}: non-HTTP traffic takes the passthrough to the address dialled (sniffedPassthroughFallback)")));
                effective = rest;
            }
        }
        // Inbound, every original-destination cluster delivers to the
        // address dialled (IPv4 and IPv6 passthrough are one target).
        let inbound = matches!(key, DestKey::Inbound { .. });
        let mut sets = effective.iter().map(|c| {
            if inbound && is_passthrough(c) {
                return vec![(Arc::<str>::from("original destination"), 1)];
            }
            let mut s: Vec<(Arc<str>, u32)> = c.targets.clone();
            s.sort();
            s
        });
        let first = sets.next().unwrap_or_default();
        if sets.any(|s| s != first) {
            reasons.insert(Reason::new(
                R::SniffedChainsDiffer,
                format!("{key}: HTTP and TCP chains reach different clusters"),
            ));
        }
    }
    let targets: Vec<(Arc<str>, u32)> = effective
        .first()
        .map(|c| c.targets.clone())
        .unwrap_or_default();
    let http = effective.iter().any(|c| c.http)
        || effective
            .iter()
            .any(|c| c.losses.contains(&super::Loss::AddedHeaders));
    let mut endpoints = Vec::new();
    // One cluster reached: its (sorted) endpoint list, shared.
    let mut only: Option<EndpointList> = None;
    let total_weight: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
    if matches!(key, DestKey::Inbound { .. }) {
        // Every chain that can take the flow counts, not the first one's
        // clusters only: each must deliver to the address dialled.
        let all: BTreeSet<&Arc<str>> = effective
            .iter()
            .flat_map(|c| c.targets.iter().map(|(n, _)| n))
            .collect();
        for name in all {
            let Some(j) = clusters.get(&**name) else {
                continue;
            };
            absorb(j, http, &mut reasons, &mut hostnames, &mut losses);
            let missing = j.reasons.iter().any(|r| r.code == R::ClusterMissing);
            if !j.original_dst && !missing {
                // A fixed endpoint (a Sidecar ingress defaultEndpoint,
                // 127.0.0.1 or another port): the flow as dialled would
                // not reach what the sidecar reaches.
                reasons.insert(Reason::new(
                    R::InboundClusterNotOriginalDst,
                    format!("{key}: cluster {name} is not the original destination (the pod at the address dialled)"),
                ));
            }
        }
    }
    for (name, w) in targets
        .iter()
        .filter(|_| !matches!(key, DestKey::Inbound { .. }))
    {
        let Some(j) = clusters.get(&**name) else {
            continue;
        };
        absorb(j, http, &mut reasons, &mut hostnames, &mut losses);
        if j.original_dst {
            if matches!(key, DestKey::Service { .. } | DestKey::Hostname { .. })
                || !policy.bypass_passthrough
            {
                reasons.insert(Reason::new(R::PassthroughPolicy, format!("{key}: passthrough cluster {name} (bypassPassthrough off, or not the complement of the port)")));
            }
            continue;
        }
        if targets.len() == 1 {
            only = Some(j.endpoints.clone());
        } else {
            endpoints.extend(share(&j.endpoints, u64::from(*w), total_weight));
        }
    }
    if targets.is_empty() && !reasons.iter().any(|r| r.code.blocks()) {
        reasons.insert(Reason::new(
            R::NotUnderstood,
            format!("{key}: no cluster reached"),
        ));
    }
    let inbound = matches!(key, DestKey::Inbound { .. });
    if inbound && !policy.inbound_passthrough && !reasons.iter().any(|r| r.code.blocks()) {
        reasons.insert(Reason::new(
            R::InboundPassthroughPolicy,
            format!("{key}: plain pass-through, but inboundPassthrough is off"),
        ));
    }
    let blocked = reasons.iter().any(|r| r.code.blocks());
    let mut reasons: Vec<Reason> = if blocked {
        reasons.into_iter().filter(|r| r.code.blocks()).collect()
    } else {
        reasons.into_iter().collect()
    };
    reasons.shrink_to_fit();
    let endpoints = match only {
        _ if blocked => EndpointList::default(),
        Some(shared) => shared,
        None => {
            endpoints.sort();
            endpoints.into()
        }
    };
    Destination {
        destination: key.clone(),
        decision: match (blocked, inbound) {
            (true, _) => Verdict::Sidecar,
            (false, true) => Verdict::Passthrough,
            (false, false) => Verdict::Bypass,
        },
        listeners: listeners.into_iter().collect(),
        hostnames: hostnames.into_iter().collect(),
        clusters: targets,
        reasons,
        losses,
        endpoints,
    }
}

/// A cluster's endpoints with weights scaled by its route weight share
/// (one of several weighted clusters).
fn share(eps: &EndpointList, weight: u64, total: u64) -> Vec<Endpoint> {
    let sum: u64 = eps.iter().map(|e| e.weight).sum::<u64>().max(1);
    eps.iter()
        .map(|e| Endpoint {
            weight: (e.weight * weight * 1_000_000 / sum / total.max(1)).max(u64::from(weight > 0)),
            ..e
        })
        .collect()
}
