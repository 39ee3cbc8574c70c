//! [`Engine`]: one proxy's decisions, kept current cheaply. Listener and
//! route work (candidates per destination key) is done once per LDS/RDS/
//! CDS change; an EDS change re-judges only the changed clusters and
//! re-merges only the destinations that use them.
//!
//! Which call for which change: EDS, or a CDS change of clusters already
//! referenced (including one that was missing) -> `clusters_changed`;
//! LDS, RDS, ECDS or a policy change -> `Engine::new` (a full decide:
//! about 0.3 s for 10,000 services, see docs/benchmarks.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::cluster::{self, ClusterJudged, Endpoint};
use super::listeners::{self, Candidate};
use super::reason::{Reason, ReasonCode as R};
use super::{BypassPolicy, Decisions, DestKey, Destination, Verdict};
use crate::xds::ProxyResources;

pub struct Engine {
    policy: BypassPolicy,
    candidates: BTreeMap<DestKey, Vec<Candidate>>,
    clusters: HashMap<String, ClusterJudged>,
    keys_by_cluster: HashMap<String, Vec<DestKey>>,
    decided: BTreeMap<DestKey, Destination>,
}

impl Engine {
    /// Decides every destination from scratch.
    pub fn new(res: &ProxyResources, policy: BypassPolicy) -> Self {
        let candidates = listeners::candidates(res, &policy);
        let mut keys_by_cluster: HashMap<String, Vec<DestKey>> = HashMap::new();
        for (k, cands) in &candidates {
            let names: BTreeSet<&String> = cands
                .iter()
                .flat_map(|c| c.targets.iter().map(|(n, _)| n))
                .collect();
            for n in names {
                keys_by_cluster
                    .entry(n.clone())
                    .or_default()
                    .push(k.clone());
            }
        }
        let clusters = keys_by_cluster
            .keys()
            .map(|n| (n.clone(), cluster::judge(n, res, &policy)))
            .collect();
        let mut e = Self {
            policy,
            candidates,
            clusters,
            keys_by_cluster,
            decided: BTreeMap::new(),
        };
        let keys: Vec<DestKey> = e.candidates.keys().cloned().collect();
        for k in keys {
            e.redecide(&k);
        }
        e
    }

    /// After an EDS (or single-cluster CDS) change: re-judges `changed`
    /// clusters and re-decides the destinations that use them. Returns
    /// the destinations whose decision or endpoints changed.
    pub fn clusters_changed(&mut self, res: &ProxyResources, changed: &[String]) -> Vec<DestKey> {
        let mut touched = BTreeSet::new();
        for name in changed {
            let Some(keys) = self.keys_by_cluster.get(name) else {
                continue;
            };
            self.clusters
                .insert(name.clone(), cluster::judge(name, res, &self.policy));
            touched.extend(keys.iter().cloned());
        }
        touched.into_iter().filter(|k| self.redecide(k)).collect()
    }

    /// The decision for one destination.
    pub fn get(&self, key: &DestKey) -> Option<&Destination> {
        self.decided.get(key)
    }

    pub fn len(&self) -> usize {
        self.decided.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decided.is_empty()
    }

    /// Every decision, ordered by destination.
    pub fn decisions(&self) -> Decisions {
        Decisions {
            destinations: self.decided.values().cloned().collect(),
        }
    }

    /// Re-merges one key; true when its decision changed.
    fn redecide(&mut self, key: &DestKey) -> bool {
        let Some(cands) = self.candidates.get(key) else {
            return false;
        };
        let d = merge(key, cands, &self.clusters, &self.policy);
        let changed = self.decided.get(key) != Some(&d);
        self.decided.insert(key.clone(), d);
        changed
    }
}

/// One destination from its candidates (the most specific rank only) and
/// the judgements of the clusters they reach.
fn merge(
    key: &DestKey,
    all: &[Candidate],
    clusters: &HashMap<String, ClusterJudged>,
    policy: &BypassPolicy,
) -> Destination {
    let top = all.iter().map(|c| c.rank).max().unwrap_or(0);
    let cands: Vec<&Candidate> = all.iter().filter(|c| c.rank == top).collect();
    let mut reasons: BTreeSet<Reason> = BTreeSet::new();
    let mut losses = BTreeSet::new();
    let mut listeners = BTreeSet::new();
    let mut hostnames = BTreeSet::new();
    for c in &cands {
        reasons.extend(c.reasons.iter().cloned());
        losses.extend(c.losses.iter().copied());
        listeners.insert(c.listener.clone());
        hostnames.extend(c.hostnames.iter().cloned());
    }
    let is_passthrough = |c: &Candidate| {
        !c.targets.is_empty()
            && c.targets
                .iter()
                .all(|(n, _)| clusters.get(n).is_some_and(|j| j.original_dst))
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
                return vec![("original destination".to_string(), 1)];
            }
            let mut s: Vec<(String, u32)> = c.targets.clone();
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
    let targets: Vec<(String, u32)> = effective
        .first()
        .map(|c| c.targets.clone())
        .unwrap_or_default();
    let http = effective.iter().any(|c| c.http)
        || effective
            .iter()
            .any(|c| c.losses.contains(&super::Loss::AddedHeaders));
    let mut endpoints = Vec::new();
    let total_weight: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
    for (name, w) in &targets {
        let Some(j) = clusters.get(name) else {
            continue;
        };
        reasons.extend(j.reasons.iter().cloned());
        hostnames.extend(j.hosts.iter().cloned());
        if http {
            reasons.extend(j.http_reasons.iter().cloned());
        }
        losses.extend(j.losses.iter().copied());
        if j.original_dst && matches!(key, DestKey::Inbound { .. }) {
            continue; // inbound delivers to the address dialled: the app
        }
        if j.original_dst {
            if matches!(key, DestKey::Service { .. } | DestKey::Hostname { .. })
                || !policy.bypass_passthrough
            {
                reasons.insert(Reason::new(R::PassthroughPolicy, format!("{key}: passthrough cluster {name} (bypassPassthrough off, or not the complement of the port)")));
            }
            continue;
        }
        endpoints.extend(share(
            &j.endpoints,
            u64::from(*w),
            total_weight,
            targets.len(),
        ));
    }
    if targets.is_empty() && !reasons.iter().any(|r| r.code.blocks()) {
        reasons.insert(Reason::new(
            R::NotUnderstood,
            format!("{key}: no cluster reached"),
        ));
    }
    let blocked = reasons.iter().any(|r| r.code.blocks());
    let reasons: Vec<Reason> = if blocked {
        reasons.into_iter().filter(|r| r.code.blocks()).collect()
    } else {
        reasons.into_iter().collect()
    };
    endpoints.sort();
    Destination {
        destination: key.clone(),
        decision: if blocked {
            Verdict::Sidecar
        } else {
            Verdict::Bypass
        },
        listeners: listeners.into_iter().collect(),
        hostnames: hostnames.into_iter().collect(),
        clusters: targets,
        reasons,
        losses: losses.into_iter().collect(),
        endpoints: if blocked { Vec::new() } else { endpoints },
    }
}

/// A cluster's endpoints with weights scaled by its route weight share.
fn share(eps: &[Endpoint], weight: u64, total: u64, clusters: usize) -> Vec<Endpoint> {
    if clusters <= 1 {
        return eps.to_vec();
    }
    let sum: u64 = eps.iter().map(|e| e.weight).sum::<u64>().max(1);
    eps.iter()
        .map(|e| Endpoint {
            weight: (e.weight * weight * 1_000_000 / sum / total.max(1)).max(u64::from(weight > 0)),
            ..e.clone()
        })
        .collect()
}
