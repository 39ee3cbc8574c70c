//! meshlane: an eBPF add-on for sidecar service meshes.
//!
//! Modules, one concern each:
//! - [`datapath`]: the one owner of the kernel objects: pin names, typed
//!   map handles, links, the loader, probes, the generated structs
//!   ([`abi`], [`layout`], [`loader`], [`probe`] and [`skel`] are its
//!   modules, re-exported here under their old paths)
//! - [`cgroup`], [`netns`]: the kernel objects programs attach to / pods are
//! - [`overlap`]: crafted TCP retransmissions that overlap received bytes
//! - [`integrity`]: what the data path does about kernel behaviours that
//!   would make a spliced socket differ from TCP
//! - [`pods`]: the pod registry (netns cookie -> settings)
//! - [`iptables`]: finds istio-init nat rules in a pod's netns
//! - [`pod_listener`]: adopts a proxy listener opened before its pod was registered
//! - [`status`]: programs, links, pods, map fill and counters
//! - [`config`]: the agent's one configuration (YAML, defaults, validation)
//! - [`metrics`]: Prometheus metrics (prometheus-client)
//! - [`api`]: the agent's local API (pod requests over a unix socket)
//! - [`cni`]: the CNI plugin's shared code (config, results, errors,
//!   versions), the agent's handling of its requests, `install-cni`
//! - [`agent`]: the long-running node agent (tokio): admin server, sweep, drain
//! - `sim`, `bench` (feature `sim`): the simulated node and the benchmark harness
pub mod agent;
pub mod api;
#[cfg(feature = "sim")]
pub mod bench;
pub mod bypass;
pub mod cgroup;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod integrity;
pub mod iptables;
pub mod metrics;
pub mod netns;
pub mod overlap;
pub mod pod_listener;
pub mod pods;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
pub mod xds;

// The data path's modules under their old paths.
pub use datapath::{abi, layout, loader, probe, skel};
