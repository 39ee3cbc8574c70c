//! Typed handles on the pinned maps: each opens its own pin and speaks in
//! the map's key and value types, so no caller builds keys from bytes or
//! knows a pin name. Opening is cheap (one `BPF_OBJ_GET`); a handle holds
//! its map until dropped, pins or not.
//!
//! - [`PodsMap`] (`ml_pods`): netns cookie -> `ml_pod`, the pod registry;
//! - [`PodIpsMap`] (`ml_pod_ips`): address -> the netns cookie of its pod;
//! - [`ListenersMap`] (`ml_listeners`): a proxy's inbound listeners;
//! - [`CountersMap`] (`ml_counters`): the per-CPU counter array;
//! - [`fill`]: entries and capacity of any walkable map (`status`);
//! - the bypass maps ([`bypass`]): services, endpoint sets, the
//!   heartbeat, per-service stats, the feature's counters and the
//!   inbound pass-through ports.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;
use thiserror::Error;

use super::abi::{self, ml_counter, ml_endpoint, ml_pod, Pod, COUNTER_COUNT};
use super::layout::PinLayout;
use super::names::MapId;

pub mod bypass;
pub use bypass::{
    BypassClockMap, BypassCountersMap, BypassEndpoint, BypassEndpointsMap, BypassServicesMap,
    BypassStats, BypassStatsMap, InboundPassKey, InboundPassMap, ServiceKey,
};

#[derive(Debug, Error)]
pub enum MapError {
    #[error("map {map} at {path}: {source}")]
    Open {
        map: MapId,
        path: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("map {map} at {path}: {op}: {source}")]
    Op {
        map: MapId,
        path: PathBuf,
        op: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("map {map}: {what}")]
    Invalid { map: MapId, what: String },
}

/// One opened pinned map and where it was found (for errors).
#[derive(Debug)]
pub(super) struct Pinned {
    id: MapId,
    path: PathBuf,
    pub(super) map: MapHandle,
}

impl Pinned {
    pub(super) fn open(layout: &PinLayout, id: MapId) -> Result<Self, MapError> {
        let path = layout.map(id);
        let map = MapHandle::from_pinned_path(&path).map_err(|source| MapError::Open {
            map: id,
            path: path.clone(),
            source,
        })?;
        Ok(Self { id, path, map })
    }

    pub(super) fn err(&self, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> MapError + '_ {
        move |source| MapError::Op {
            map: self.id,
            path: self.path.clone(),
            op,
            source,
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MapError> {
        self.map
            .lookup(key, MapFlags::ANY)
            .map_err(self.err("lookup"))
    }

    pub(super) fn put(&self, key: &[u8], value: &[u8]) -> Result<(), MapError> {
        self.map
            .update(key, value, MapFlags::ANY)
            .map_err(self.err("update"))
    }

    /// Deletes `key`; whether it was there.
    pub(super) fn delete(&self, key: &[u8]) -> Result<bool, MapError> {
        match self.map.delete(key) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("delete")(e)),
        }
    }

    /// Every (key, value) present while walking, one at a time (entries
    /// deleted meanwhile are skipped).
    pub(super) fn entries(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.map.keys().filter_map(|k| {
            let v = self.map.lookup(&k, MapFlags::ANY).ok().flatten()?;
            Some((k, v))
        })
    }
}

/// `ml_pods`: the pod registry, netns cookie -> `ml_pod`.
#[derive(Debug)]
pub struct PodsMap(Pinned);

impl PodsMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::Pods).map(Self)
    }

    pub fn get(&self, cookie: u64) -> Result<Option<ml_pod>, MapError> {
        Ok(self
            .0
            .get(&cookie.to_ne_bytes())?
            .and_then(|v| ml_pod::from_bytes(&v)))
    }

    pub fn insert(&self, cookie: u64, pod: &ml_pod) -> Result<(), MapError> {
        self.0.put(&cookie.to_ne_bytes(), pod.as_bytes())
    }

    /// Removes the pod's record; whether there was one.
    pub fn remove(&self, cookie: u64) -> Result<bool, MapError> {
        self.0.delete(&cookie.to_ne_bytes())
    }

    /// Every record, by netns cookie, read one at a time while walking.
    pub fn iter(&self) -> impl Iterator<Item = (u64, ml_pod)> + '_ {
        self.0
            .entries()
            .filter_map(|(k, v)| Some((u64::from_bytes(&k)?, ml_pod::from_bytes(&v)?)))
    }

    /// How many pods are recorded (walks the keys only: at most 4,096).
    pub fn count(&self) -> usize {
        self.0.map.keys().count()
    }
}

/// `ml_pod_ips`: each pod address -> the netns cookie of its pod.
#[derive(Debug)]
pub struct PodIpsMap(Pinned);

impl PodIpsMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::PodIps).map(Self)
    }

    /// The cookie of the pod `ip` is listed for.
    pub fn owner(&self, ip: IpAddr) -> Result<Option<u64>, MapError> {
        let key = abi::addr_from_ip(ip);
        Ok(self
            .0
            .get(key.as_bytes())?
            .and_then(|v| u64::from_bytes(&v)))
    }

    pub fn insert(&self, ip: IpAddr, cookie: u64) -> Result<(), MapError> {
        let key = abi::addr_from_ip(ip);
        self.0.put(key.as_bytes(), &cookie.to_ne_bytes())
    }

    /// Removes `ip`; whether it was listed.
    pub fn remove(&self, ip: IpAddr) -> Result<bool, MapError> {
        self.0.delete(abi::addr_from_ip(ip).as_bytes())
    }

    /// Every (address, owner cookie), read one at a time while walking.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u64)> + '_ {
        self.0.entries().filter_map(|(k, v)| {
            let addr = abi::ml_addr::from_bytes(&k)?;
            Some((abi::ip_from_addr(&addr), u64::from_bytes(&v)?))
        })
    }
}

/// `ml_listeners`: a sockhash of proxy inbound listeners, keyed by
/// (netns cookie, family, port) as the sockops listen callback keys them.
#[derive(Debug)]
pub struct ListenersMap(Pinned);

impl ListenersMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::Listeners).map(Self)
    }

    /// Puts the listening socket `sock` under the key of the pod's
    /// (`netns_cookie`) inbound listener on `port`, IPv6 or not.
    pub fn insert(
        &self,
        netns_cookie: u64,
        v6: bool,
        port: u16,
        sock: BorrowedFd<'_>,
    ) -> Result<(), MapError> {
        let mut key = ml_endpoint::zeroed();
        key.netns = netns_cookie;
        key.addr.a[0] = u32::from(v6);
        key.port = port;
        let value = (sock.as_raw_fd() as u64).to_ne_bytes();
        self.0.put(key.as_bytes(), &value)
    }
}

/// `ml_counters`: the per-CPU counter array the programs bump.
#[derive(Debug)]
pub struct CountersMap(Pinned);

impl CountersMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::Counters).map(Self)
    }

    /// One slot summed over the CPUs.
    pub fn sum(&self, slot: ml_counter) -> Result<u64, MapError> {
        let per_cpu = self
            .0
            .map
            .lookup_percpu(&slot.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(self.0.err("per-CPU lookup"))?;
        Ok(per_cpu
            .unwrap_or_default()
            .iter()
            .filter_map(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
            .sum())
    }

    /// Every slot the programs use (index = `ml_counter` value), summed.
    pub fn sums(&self) -> Result<[u64; COUNTER_COUNT], MapError> {
        let mut out = [0; COUNTER_COUNT];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.sum(ml_counter(i as u32))?;
        }
        Ok(out)
    }
}

/// How full a map is.
#[derive(Debug, Clone, Serialize)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

/// Entries (by walking the keys: one syscall a key) and capacity of `id`.
pub fn fill(layout: &PinLayout, id: MapId) -> Result<MapFill, MapError> {
    let m = Pinned::open(layout, id)?;
    Ok(MapFill {
        name: id.pin_name().into(),
        entries: m.map.keys().count(),
        capacity: m.map.max_entries(),
    })
}

/// The capacity of a pinned map (None: not pinned).
pub fn pinned_capacity(layout: &PinLayout, id: MapId) -> Result<Option<u32>, MapError> {
    if !layout.map(id).exists() {
        return Ok(None);
    }
    Ok(Some(Pinned::open(layout, id)?.map.max_entries()))
}
