//! A simulated node for root integration tests, the demo and the benchmark
//! harness (feature `sim`). Everything it makes has a unique name and
//! is removed in `Drop`, panics included:
//!
//! - [`TestCgroup`]: a private cgroup v2 child; the calling process moves in
//!   (so every pod process it spawns is in it) and back out on drop, or
//!   visits one beside it ([`Visit`]).
//! - [`Node`]: a private pin root with the data path installed on that
//!   cgroup, plus pods.
//! - [`Pod`]: a network namespace wired by the real CNI bridge + host-local
//!   plugins, with `lo` up, and the processes started in it.
//! - [`chaos::Loss`], [`chaos::Overlap`]: provoked packet loss and
//!   overlapping retransmissions on a pod's interface (tc programs,
//!   detached on drop), and [`chaos::overlap_events`], the pod's count of
//!   overlapping retransmissions received.
//!
//! - [`kube_api::KubeApi`]: a Kubernetes API server stand-in (pods, list
//!   and watch) for the Kubernetes pod source's tests.
//! - [`xds`]: the control plane (an ADS server with Istio-shaped config
//!   for the node's Services) and [`kube_proxy`]: ClusterIP DNAT rules in
//!   unmeshed pods' own netns, as kube-proxy's iptables mode writes them.
//!
//! Each test process owns one cgroup, so run root tests one per process
//! (cargo-nextest) or with `--test-threads=1`.

mod cgroup;
mod cni;
pub mod cni_runtime;
mod node;
mod pod;
mod pod_catalog;

pub use cgroup::{TestCgroup, Visit};
pub use cni::{cni_bin_dir, Subnet};
pub use node::{Node, NodeOptions};
pub use pod::{Pod, PodProcess};
pub use pod_catalog::{DirCatalog, SIM_POD_CATALOG_ENV};

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique on this machine for this process and call.
pub fn unique_tag(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Makes this process the proxy of the pod `spec` describes (its uid and
/// gid), so the sockets it opens in the pod are the proxy's: spliced with a
/// local peer, never redirected. For tests and benches that drive both ends
/// of a spliced hop themselves (real sidecars run as 1337 instead).
pub fn as_own_proxy(spec: &mut crate::pods::PodSpec) {
    spec.proxy_uid = Some(nix::unistd::getuid().as_raw());
    spec.proxy_gid = Some(nix::unistd::getgid().as_raw());
}

/// True when the machine can run root tests (root, bpffs, cgroup v2).
pub fn can_run_root_tests() -> Result<(), String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err("not root".into());
    }
    crate::cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
    crate::layout::PinLayout::new("/sys/fs/bpf/meshlane-probe")
        .check_bpffs()
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub mod kube_api;
pub mod kube_proxy;
pub mod sidecar;
pub mod xds;
pub use sidecar::{Sidecar, SidecarMode, SidecarOptions, SidecarProxy};

pub mod chaos;
pub mod iptables;
mod nginx;
pub mod pattern;
pub use nginx::{Nginx, NginxSend};
mod peer_node;
pub use peer_node::PeerNode;
mod cpu;
pub use cpu::{CpuSample, CpuSource};
mod side_install;
pub use side_install::SideInstall;
