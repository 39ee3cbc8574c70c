//! The pod registry: which network namespaces are meshed and with what
//! settings. Lives entirely in pinned maps (the pods and pod IPs maps,
//! through `datapath::maps`) plus one pinned sk_lookup link per pod, so it
//! survives agent restarts and has one source of truth. Written by `meshlane pod add/rm` today and by
//! the CNI plugin later; both go through [`Registry`].
//!
//! - `spec`: what an operator (or the CNI plugin) asks for, validated into
//!   the kernel record;
//! - `registry`: writing, removing and listing pods in the pinned maps;
//! - `source`: the catalog of this node's pods a pod source fills (which
//!   are meshed, with what settings);
//! - `classify`: the pure decision whether a Kubernetes Pod is meshed and
//!   with which settings (its proxy container, opt-outs, annotations);
//! - `static_source` / `kube_source`: the pod sources that fill the
//!   catalog (a YAML file the agent watches; the API server's watch of
//!   this node's pods);
//! - `netns_finder`: locating a running pod's netns from its IPs;
//! - `reconcile`: adoption and garbage collection, the registry made to
//!   follow the catalog;
//! - `sweep`: removing registrations whose netns is gone, and what an
//!   add or remove killed half-way left behind.

pub mod classify;
pub mod kube_source;
pub mod netns_finder;
pub mod reconcile;
mod registry;
pub mod source;
pub mod source_config;
mod spec;
pub mod static_source;
mod sweep;

use std::net::IpAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::layout::LayoutError;
use crate::netns::NetnsError;

pub use crate::datapath::abi::{MAX_CIDRS, MAX_PORTS};
pub use crate::datapath::links::{link_state, LinkState};
pub use registry::{PodRecord, Registry};
pub use spec::{PodMode, PodSpec, Preset};
pub use sweep::{sweep, Swept};

#[derive(Debug, Error)]
pub enum PodError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod {pod}: {list} has {len} entries, at most {max} fit in the kernel table")]
    ListTooLong {
        pod: String,
        list: &'static str,
        len: usize,
        max: usize,
    },
    #[error("pod {pod}: {list}: {value:?} is not {what}")]
    BadValue {
        pod: String,
        list: &'static str,
        value: String,
        what: &'static str,
    },
    #[error(
        "pod {pod}: address {ip} already belongs to another registered pod (netns cookie {owner})"
    )]
    IpTaken { pod: String, ip: IpAddr, owner: u64 },
    #[error("pod {pod}: intercept mode needs the interception hooks, but this install is splice-only (agent --no-intercept): register it with --mode accelerate, or reinstall with interception")]
    InterceptNotInstalled { pod: String },
    #[error("pod {pod}: {netns} is the node's own network namespace (the one meshlane runs in): registering it would redirect every host connection to the proxy port; give the pod's netns")]
    HostNetns { pod: String, netns: PathBuf },
    #[error("pod name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("no pod is registered for {netns}")]
    NotRegistered { netns: String },
    #[error("more than one pod is named {name:?} (netns cookies {cookies:?}): remove by --cookie")]
    AmbiguousName { name: String, cookies: Vec<u64> },
    #[error("pod registry: {0}")]
    Map(#[from] crate::datapath::MapError),
    #[error("pod {pod}: {source}")]
    Iptables {
        pod: String,
        source: crate::iptables::IptablesError,
    },
    #[error("pod {pod}: {source}")]
    Listener {
        pod: String,
        source: crate::pod_listener::ListenerError,
    },
    #[error("attaching the inbound sk_lookup program to {netns}: {source}")]
    Attach {
        netns: PathBuf,
        source: std::io::Error,
    },
}
