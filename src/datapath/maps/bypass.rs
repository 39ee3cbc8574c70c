//! Typed handles on the bypass maps (bpf/bypass.h):
//!
//! - [`BypassServicesMap`] (`ml_bypass_svc`): (source pod netns cookie,
//!   VIP:port) -> endpoint set id; written by the agent only;
//! - [`BypassEndpointsMap`] (`ml_bypass_eps`): set id -> weighted
//!   endpoints (running weight sums, as the connect hook draws);
//! - [`BypassClockMap`] (`ml_bypass_clock`): the agent's heartbeat and the
//!   stale grace;
//! - [`BypassStatsMap`] (`ml_bypass_stats`): connections and bytes per
//!   (source pod, service), written by sockops;
//! - [`BypassCountersMap`] (`ml_bypass_cnt`): the feature's counters;
//! - [`InboundPassMap`] (`ml_inbound_pass`): (destination pod netns
//!   cookie, port) whose own inbound config is plain pass-through;
//!   written by the agent only, read by the pod's sk_lookup program.

use std::net::SocketAddr;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags};

use super::{MapError, Pinned};
use crate::datapath::abi::{
    self, ml_bypass_clock, ml_bypass_key, ml_bypass_set, ml_bypass_stats, ml_inbound_key, Pod,
    BYPASS_COUNTER_COUNT, BYPASS_MAX_ENDPOINTS,
};
use crate::datapath::layout::PinLayout;
use crate::datapath::names::MapId;

/// The address of a kernel `ml_addr` (the intercept skeleton generates
/// its own copy of the struct; the words are the same).
fn ip_of(words: [u32; 4]) -> std::net::IpAddr {
    let mut a = abi::ml_addr::zeroed();
    a.a = words;
    abi::ip_from_addr(&a)
}

/// One BYPASS destination of one pod: what the connect hook looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The source pod's netns cookie.
    pub netns: u64,
    /// The address and port the app dials.
    pub dest: SocketAddr,
}

impl ServiceKey {
    fn to_abi(self) -> ml_bypass_key {
        let mut k = ml_bypass_key::zeroed();
        k.netns = self.netns;
        k.addr.a = abi::addr_from_ip(self.dest.ip()).a;
        k.port = self.dest.port();
        k
    }

    fn from_abi(k: &ml_bypass_key) -> Self {
        Self {
            netns: k.netns,
            dest: SocketAddr::new(ip_of(k.addr.a), k.port),
        }
    }
}

/// An endpoint a connection may be sent to, with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BypassEndpoint {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Connections and bytes of one (source pod, service), as sockops counted
/// them: `sent_bytes`/`received_bytes` are the app socket's own view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BypassStats {
    pub opened: u64,
    pub closed: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

/// `ml_bypass_svc`.
#[derive(Debug)]
pub struct BypassServicesMap(Pinned);

impl BypassServicesMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::BypassServices).map(Self)
    }

    pub fn insert(&self, key: ServiceKey, set: u32) -> Result<(), MapError> {
        self.0.put(key.to_abi().as_bytes(), &set.to_ne_bytes())
    }

    pub fn get(&self, key: ServiceKey) -> Result<Option<u32>, MapError> {
        Ok(self
            .0
            .get(key.to_abi().as_bytes())?
            .and_then(|v| u32::from_bytes(&v)))
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: ServiceKey) -> Result<bool, MapError> {
        self.0.delete(key.to_abi().as_bytes())
    }

    /// Every key present while walking.
    pub fn keys(&self) -> Vec<ServiceKey> {
        self.0
            .map
            .keys()
            .filter_map(|k| ml_bypass_key::from_bytes(&k).map(|k| ServiceKey::from_abi(&k)))
            .collect()
    }

    pub fn capacity(&self) -> u32 {
        self.0.map.max_entries()
    }
}

/// `ml_bypass_eps`.
#[derive(Debug)]
pub struct BypassEndpointsMap(Pinned);

impl BypassEndpointsMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::BypassEndpoints).map(Self)
    }

    /// Writes set `id`: `endpoints` in order, with running weight sums.
    /// Refused (nothing written): no endpoint, more than the kernel's
    /// set holds, a zero weight or port, or weights summing past u32.
    pub fn insert(&self, id: u32, endpoints: &[BypassEndpoint]) -> Result<(), MapError> {
        let set = build_set(endpoints).map_err(|what| MapError::Invalid {
            map: MapId::BypassEndpoints,
            what,
        })?;
        self.0.put(&id.to_ne_bytes(), set.as_bytes())
    }

    /// The endpoints of set `id` (weights recovered from the sums).
    pub fn get(&self, id: u32) -> Result<Option<Vec<BypassEndpoint>>, MapError> {
        let Some(v) = self.0.get(&id.to_ne_bytes())? else {
            return Ok(None);
        };
        let Some(set) = ml_bypass_set::from_bytes(&v) else {
            return Ok(None);
        };
        let mut prev = 0;
        let n = (set.count as usize).min(BYPASS_MAX_ENDPOINTS);
        Ok(Some(
            set.ep[..n]
                .iter()
                .map(|e| {
                    let weight = e.cum_weight.saturating_sub(prev);
                    prev = e.cum_weight;
                    BypassEndpoint {
                        addr: SocketAddr::new(ip_of(e.addr.a), e.port),
                        weight,
                    }
                })
                .collect(),
        ))
    }

    pub fn remove(&self, id: u32) -> Result<bool, MapError> {
        self.0.delete(&id.to_ne_bytes())
    }

    pub fn ids(&self) -> Vec<u32> {
        self.0
            .map
            .keys()
            .filter_map(|k| u32::from_bytes(&k))
            .collect()
    }
}

/// The kernel's form of an endpoint set, or what is wrong with it.
fn build_set(endpoints: &[BypassEndpoint]) -> Result<ml_bypass_set, String> {
    if endpoints.is_empty() {
        return Err("an endpoint set needs at least one endpoint".into());
    }
    if endpoints.len() > BYPASS_MAX_ENDPOINTS {
        return Err(format!(
            "{} endpoints, a set holds at most {BYPASS_MAX_ENDPOINTS}",
            endpoints.len()
        ));
    }
    let mut set = ml_bypass_set::zeroed();
    let mut sum: u32 = 0;
    for (slot, e) in set.ep.iter_mut().zip(endpoints) {
        if e.weight == 0 || e.addr.port() == 0 {
            return Err(format!("endpoint {} has weight 0 or port 0", e.addr));
        }
        sum = sum
            .checked_add(e.weight)
            .ok_or_else(|| "endpoint weights sum past 2^32".to_string())?;
        slot.addr.a = abi::addr_from_ip(e.addr.ip()).a;
        slot.port = e.addr.port();
        slot.cum_weight = sum;
    }
    set.count = endpoints.len() as u32;
    set.total_weight = sum;
    Ok(set)
}

/// `ml_bypass_clock`: the agent's heartbeat.
#[derive(Debug)]
pub struct BypassClockMap(Pinned);

impl BypassClockMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::BypassClock).map(Self)
    }

    /// Heartbeat now (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns):
    /// the kernel bypasses until `grace` after this.
    pub fn beat(&self, grace: Duration) -> Result<(), MapError> {
        let mut c = ml_bypass_clock::zeroed();
        c.heartbeat_ns = monotonic_ns();
        c.grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.0.put(&0u32.to_ne_bytes(), c.as_bytes())
    }

    /// Stops bypass at once (heartbeat 0).
    pub fn stop(&self) -> Result<(), MapError> {
        self.0
            .put(&0u32.to_ne_bytes(), ml_bypass_clock::zeroed().as_bytes())
    }

    /// (time since the last heartbeat, grace); None: never written.
    pub fn read(&self) -> Result<Option<(Duration, Duration)>, MapError> {
        let c = self
            .0
            .get(&0u32.to_ne_bytes())?
            .and_then(|v| ml_bypass_clock::from_bytes(&v));
        Ok(c.filter(|c| c.heartbeat_ns != 0).map(|c| {
            (
                Duration::from_nanos(monotonic_ns().saturating_sub(c.heartbeat_ns)),
                Duration::from_nanos(c.grace_ns),
            )
        }))
    }
}

/// CLOCK_MONOTONIC in nanoseconds (what bpf_ktime_get_ns reads).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `ml_bypass_stats`.
#[derive(Debug)]
pub struct BypassStatsMap(Pinned);

impl BypassStatsMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::BypassStats).map(Self)
    }

    /// Every (key, stats) present while walking.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceKey, BypassStats)> + '_ {
        self.0.entries().filter_map(|(k, v)| {
            let k = ml_bypass_key::from_bytes(&k)?;
            let v = ml_bypass_stats::from_bytes(&v)?;
            Some((
                ServiceKey::from_abi(&k),
                BypassStats {
                    opened: v.opened,
                    closed: v.closed,
                    sent_bytes: v.sent_bytes,
                    received_bytes: v.received_bytes,
                },
            ))
        })
    }

    pub fn remove(&self, key: ServiceKey) -> Result<bool, MapError> {
        self.0.delete(key.to_abi().as_bytes())
    }
}

/// `ml_bypass_cnt`: the feature's per-CPU counters.
#[derive(Debug)]
pub struct BypassCountersMap(Pinned);

impl BypassCountersMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::BypassCounters).map(Self)
    }

    /// Every slot (index = `ml_bypass_counter` value), summed over CPUs.
    pub fn sums(&self) -> Result<[u64; BYPASS_COUNTER_COUNT], MapError> {
        let mut out = [0; BYPASS_COUNTER_COUNT];
        for (i, v) in out.iter_mut().enumerate() {
            let per_cpu = self
                .0
                .map
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(self.0.err("per-CPU lookup"))?;
            *v = per_cpu
                .unwrap_or_default()
                .iter()
                .filter_map(|b| Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?)))
                .sum();
        }
        Ok(out)
    }
}

/// One inbound port of one destination pod that sk_lookup leaves to the
/// app's own listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InboundPassKey {
    /// The destination pod's netns cookie (its sk_lookup instance's).
    pub netns: u64,
    /// The port a flow arrives at.
    pub port: u16,
}

impl InboundPassKey {
    fn to_abi(self) -> ml_inbound_key {
        let mut k = ml_inbound_key::zeroed();
        k.netns = self.netns;
        k.port = self.port;
        k
    }
}

/// `ml_inbound_pass`.
#[derive(Debug)]
pub struct InboundPassMap(Pinned);

impl InboundPassMap {
    pub fn open(layout: &PinLayout) -> Result<Self, MapError> {
        Pinned::open(layout, MapId::InboundPass).map(Self)
    }

    pub fn insert(&self, key: InboundPassKey) -> Result<(), MapError> {
        self.0.put(key.to_abi().as_bytes(), &1u32.to_ne_bytes())
    }

    pub fn contains(&self, key: InboundPassKey) -> Result<bool, MapError> {
        Ok(self.0.get(key.to_abi().as_bytes())?.is_some())
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: InboundPassKey) -> Result<bool, MapError> {
        self.0.delete(key.to_abi().as_bytes())
    }

    /// Every key present while walking.
    pub fn keys(&self) -> Vec<InboundPassKey> {
        self.0
            .map
            .keys()
            .filter_map(|k| {
                let k = ml_inbound_key::from_bytes(&k)?;
                Some(InboundPassKey {
                    netns: k.netns,
                    port: k.port,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: &str, weight: u32) -> BypassEndpoint {
        BypassEndpoint {
            addr: a.parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn sets_carry_running_sums_and_refuse_what_the_kernel_cannot_draw() {
        let s = build_set(&[ep("10.0.0.1:80", 3), ep("10.0.0.2:80", 1)]).unwrap();
        assert_eq!((s.count, s.total_weight), (2, 4));
        assert_eq!((s.ep[0].cum_weight, s.ep[1].cum_weight), (3, 4));
        assert_eq!(s.ep[1].port, 80);
        assert!(build_set(&[]).is_err());
        assert!(build_set(&[ep("10.0.0.1:80", 0)]).is_err());
        assert!(build_set(&[ep("10.0.0.1:0", 1)]).is_err());
        assert!(build_set(&[ep("10.0.0.1:80", u32::MAX), ep("10.0.0.2:80", 1)]).is_err());
        let many: Vec<_> = (0..=BYPASS_MAX_ENDPOINTS)
            .map(|i| ep(&format!("10.0.1.{}:80", i % 250 + 1), 1))
            .collect();
        assert!(build_set(&many).is_err());
        assert!(build_set(&many[..BYPASS_MAX_ENDPOINTS]).is_ok());
    }

    #[test]
    fn the_endpoint_capacity_matches_the_header() {
        let h = include_str!("../../../bpf/bypass.h");
        assert!(h.contains(&format!(
            "#define ML_BYPASS_MAX_EPS {BYPASS_MAX_ENDPOINTS}\n"
        )));
    }
}
