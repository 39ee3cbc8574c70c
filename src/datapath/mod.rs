//! The data path as user space sees it: the one owner of the kernel
//! objects. Only this module knows pin names, opens pinned maps and links,
//! loads and attaches programs, and uses libbpf-rs; the rest of the crate
//! (the pod registry, status, metrics, the agent, the simulated node) goes
//! through its typed handles.
//!
//! - [`abi`]: the structs shared with BPF (generated from bpf/meshlane.h)
//!   and the sizes read off them (list capacities, counter slots);
//! - [`skel`]: the generated skeletons, one per `bpf/*.bpf.c`;
//! - [`layout`]: the pin root, its layout version and its locks;
//! - [`names`]: every pinned map ([`MapId`]) and node-wide link ([`LinkId`]);
//! - [`maps`]: typed handles on the maps (pods, pod IPs, listeners,
//!   counters, the bypass maps) and map fill;
//! - [`links`]: pinned links read back (run stats, a pod link's netns);
//! - [`loader`]: load, attach or adopt, pin; uninstall;
//! - [`lru`]: how big the per-socket LRU maps must be so that no live
//!   entry is evicted;
//! - [`probe`]: kernel feature and behaviour checks.
//!
//! Synchronous throughout: callers in async code run it on tokio's
//! blocking pool.

pub mod abi;
pub mod layout;
pub mod links;
pub mod loader;
pub mod lru;
pub mod maps;
pub mod names;
pub mod probe;
pub mod skel;

/// Sends libbpf's own messages to tracing (target `libbpf`: warnings at
/// debug, the rest at trace; `RUST_LOG=libbpf=debug` shows them), so a
/// failure reaches the user as meshlane's one error line.
pub fn route_libbpf_log() {
    fn log(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
            _ => tracing::trace!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, log)));
}

pub use layout::PinLayout;
pub use maps::{
    BypassClockMap, BypassCountersMap, BypassEndpoint, BypassEndpointsMap, BypassServicesMap,
    BypassStats, BypassStatsMap, CountersMap, InboundPassKey, InboundPassMap, ListenersMap,
    MapError, MapFill, PodIpsMap, PodsMap, ServiceKey,
};
pub use names::{LinkId, MapId};
