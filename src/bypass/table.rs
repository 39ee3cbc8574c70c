//! The synchronous core of the kernel bypass: what the service map should
//! hold for each pod's [`Decisions`], and the smallest set of writes that
//! brings the kernel there.
//!
//! [`wanted_for_pod`] turns one pod's decisions into (pod, VIP:port) ->
//! endpoints: BYPASS service destinations only, the lowest priority that
//! has endpoints, endpoints of the VIP's family, weights merged per
//! address and scaled to 32 bits. [`Table`] remembers what it wrote
//! (service -> set id, sets shared by content) and [`Table::apply`] writes
//! only what changed, through a [`KernelMaps`]: new sets first, then the
//! service entries that point at them, then removals, then the sets
//! nobody points at. A write that fails leaves that destination with no
//! entry at all (the sidecar), never with an older endpoint set.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::datapath::abi::BYPASS_MAX_ENDPOINTS;
use crate::datapath::{BypassEndpoint, ServiceKey};
use crate::xds::decide::{Decisions, Endpoint};

/// Why a BYPASS destination gets no service map entry (it keeps the sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// No endpoint of the VIP's family with a non-zero weight and port.
    NoEndpoints,
    /// More endpoints than a kernel set holds.
    TooManyEndpoints,
}

impl Skip {
    pub fn code(self) -> &'static str {
        match self {
            Skip::NoEndpoints => "no_endpoints",
            Skip::TooManyEndpoints => "too_many_endpoints",
        }
    }
}

/// One pod's service map entries, and the BYPASS destinations left out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodEntries {
    pub services: BTreeMap<ServiceKey, Vec<BypassEndpoint>>,
    pub skipped: Vec<(ServiceKey, Skip)>,
}

/// The entries of the pod whose netns cookie is `netns`.
pub fn wanted_for_pod(netns: u64, decisions: &Decisions) -> PodEntries {
    let mut out = PodEntries::default();
    for (dest, endpoints) in decisions.service_map() {
        let key = ServiceKey { netns, dest };
        match endpoint_set(dest, endpoints.iter()) {
            Ok(set) => {
                out.services.insert(key, set);
            }
            Err(skip) => out.skipped.push((key, skip)),
        }
    }
    out
}

/// The kernel's endpoint set for a destination: Envoy uses the lowest
/// priority that has (healthy) endpoints; the kernel knows no health, so
/// that is the lowest priority present.
pub fn endpoint_set(
    dest: SocketAddr,
    endpoints: impl IntoIterator<Item = Endpoint>,
) -> Result<Vec<BypassEndpoint>, Skip> {
    let usable: Vec<Endpoint> = endpoints
        .into_iter()
        .filter(|e| e.weight > 0 && e.port != 0 && e.address.is_ipv4() == dest.is_ipv4())
        .collect();
    let Some(priority) = usable.iter().map(|e| e.priority).min() else {
        return Err(Skip::NoEndpoints);
    };
    let mut merged: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for e in usable.iter().filter(|e| e.priority == priority) {
        let w = merged
            .entry(SocketAddr::new(e.address, e.port))
            .or_default();
        *w = w.saturating_add(e.weight);
    }
    if merged.len() > BYPASS_MAX_ENDPOINTS {
        return Err(Skip::TooManyEndpoints);
    }
    Ok(scale_weights(merged))
}

/// Weights as u32 whose sum fits u32, keeping their ratios (each at
/// least 1), divided by their common divisor.
fn scale_weights(merged: BTreeMap<SocketAddr, u64>) -> Vec<BypassEndpoint> {
    let g = merged.values().copied().fold(0, gcd).max(1);
    let total: u64 = merged.values().map(|w| w / g).sum();
    // At most 64 endpoints: a sum below 2^31 leaves room for rounding up.
    let limit = 1u64 << 31;
    let div = if total > limit {
        total.div_ceil(limit)
    } else {
        1
    };
    merged
        .into_iter()
        .map(|(addr, w)| BypassEndpoint {
            addr,
            weight: u32::try_from((w / g / div).max(1)).unwrap_or(u32::MAX / 64),
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The writes the core asks for; implemented over the pinned maps by the
/// shell (and in memory by the unit tests, to inject failures).
pub trait KernelMaps {
    fn put_set(&mut self, id: u32, endpoints: &[BypassEndpoint]) -> Result<(), String>;
    fn delete_set(&mut self, id: u32) -> Result<(), String>;
    fn put_service(&mut self, key: ServiceKey, set: u32) -> Result<(), String>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), String>;
}

/// What one [`Table::apply`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Destinations left without an entry (the sidecar) by a failed write.
    pub failed: Vec<(ServiceKey, String)>,
}

/// What the kernel holds, as this core wrote it.
#[derive(Debug, Default)]
pub struct Table {
    services: BTreeMap<ServiceKey, u32>,
    sets: HashMap<u32, (Vec<BypassEndpoint>, usize)>,
    by_content: HashMap<Vec<BypassEndpoint>, u32>,
    next_id: u32,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// The endpoints the kernel holds for `key` (None: the sidecar).
    pub fn endpoints(&self, key: &ServiceKey) -> Option<&[BypassEndpoint]> {
        let id = self.services.get(key)?;
        self.sets.get(id).map(|(e, _)| e.as_slice())
    }

    /// Entries and distinct endpoint sets held.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.sets.len())
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Brings the kernel from what it holds to `wanted` (every pod's
    /// entries), writing only the differences.
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<ServiceKey, Vec<BypassEndpoint>>,
        kernel: &mut impl KernelMaps,
    ) -> Applied {
        let mut done = Applied::default();
        for (key, endpoints) in wanted {
            let old = self.services.get(key).copied();
            if old.is_some_and(|id| self.sets.get(&id).is_some_and(|(e, _)| e == endpoints)) {
                continue;
            }
            match self.point(*key, endpoints, kernel) {
                Ok(()) if old.is_some() => done.changed += 1,
                Ok(()) => done.added += 1,
                Err(e) => done.failed.push((*key, e)),
            }
        }
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match kernel.delete_service(key) {
                Ok(()) => {
                    if let Some(id) = self.services.remove(&key) {
                        self.release(id);
                    }
                    done.removed += 1;
                }
                Err(e) => done.failed.push((key, e)),
            }
        }
        self.drop_unused_sets(kernel);
        done
    }

    /// Points `key` at the set holding `endpoints` (written first if new).
    /// On failure the key has no entry (removed if it had one).
    fn point(
        &mut self,
        key: ServiceKey,
        endpoints: &[BypassEndpoint],
        kernel: &mut impl KernelMaps,
    ) -> Result<(), String> {
        let result = self
            .set_for(endpoints, kernel)
            .and_then(|id| kernel.put_service(key, id).map(|()| id));
        match result {
            Ok(id) => {
                self.sets
                    .entry(id)
                    .or_insert_with(|| (endpoints.to_vec(), 0))
                    .1 += 1;
                if let Some(old) = self.services.insert(key, id) {
                    self.release(old);
                }
                Ok(())
            }
            Err(e) => {
                // Never leave the older set in place: the sidecar instead.
                if self.services.contains_key(&key) && kernel.delete_service(key).is_ok() {
                    if let Some(old) = self.services.remove(&key) {
                        self.release(old);
                    }
                }
                Err(e)
            }
        }
    }

    /// The id of the set with this content, written now if there is none.
    fn set_for(
        &mut self,
        endpoints: &[BypassEndpoint],
        kernel: &mut impl KernelMaps,
    ) -> Result<u32, String> {
        if let Some(id) = self.by_content.get(endpoints) {
            return Ok(*id);
        }
        let id = self.fresh_id();
        kernel.put_set(id, endpoints)?;
        self.by_content.insert(endpoints.to_vec(), id);
        self.sets.insert(id, (endpoints.to_vec(), 0));
        Ok(id)
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.sets.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    fn release(&mut self, id: u32) {
        if let Some((_, refs)) = self.sets.get_mut(&id) {
            *refs = refs.saturating_sub(1);
        }
    }

    /// Deletes sets no entry points at (after the entries moved away, so
    /// the connect hook never finds an entry whose set is gone, except in
    /// the instant between its two lookups: then it takes the sidecar).
    fn drop_unused_sets(&mut self, kernel: &mut impl KernelMaps) {
        let unused: Vec<u32> = self
            .sets
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in unused {
            if kernel.delete_set(id).is_ok() {
                if let Some((content, _)) = self.sets.remove(&id) {
                    self.by_content.remove(&content);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
