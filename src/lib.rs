//! meshlane: an eBPF add-on for sidecar service meshes.
//!
//! Modules, one concern each:
//! - [`abi`]: the structs shared with BPF (generated from bpf/meshlane.h)
//! - [`layout`]: the pin root and its layout version
//! - [`cgroup`], [`netns`]: the kernel objects programs attach to / pods are
//! - [`probe`]: kernel feature checks at start
//! - [`overlap`]: crafted TCP retransmissions that overlap received bytes
//! - [`integrity`]: what the data path does about kernel behaviours that
//!   would make a spliced socket differ from TCP
//! - [`loader`]: load, attach or adopt, pin; uninstall
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
pub mod abi;
pub mod agent;
pub mod api;
#[cfg(feature = "sim")]
pub mod bench;
pub mod cgroup;
pub mod cni;
pub mod config;
pub mod integrity;
pub mod iptables;
pub mod layout;
pub mod loader;
pub mod metrics;
pub mod netns;
pub mod overlap;
pub mod pod_listener;
pub mod pods;
pub mod probe;
#[cfg(feature = "sim")]
pub mod sim;
pub mod skel;
pub mod status;
pub mod xds;
