//! The simulated node's control plane: an ADS server (xDS v3, state of the
//! world, gRPC on a unix socket like the XDS socket pilot-agent gives
//! Envoy in an Istio pod) that feeds Envoy sidecars Istio-shaped
//! listeners, clusters, routes and endpoints, as istiod does.
//!
//! - [`snapshot`]: one version of every resource, by type and name;
//! - [`stream`]: one stream's protocol state (nonces, ACK/NACK), no I/O;
//! - [`istio`]: the resources istiod would generate for a set of services;
//! - [`policy`]: per-service shapes on top (auto-mTLS endpoints with
//!   `tlsMode: istio`, an RBAC filter, endpoint weights);
//! - [`inbound`]: a pod's own inbound ports (`virtualInbound` chains by
//!   port and `inbound|<port>||` clusters: plain, RBAC, PERMISSIVE);
//! - [`server`]: the tonic server, on its own thread and runtime, with a
//!   log of what it sent and what each sidecar acknowledged.

pub mod inbound;
pub mod istio;
pub mod policy;
pub mod server;
pub mod snapshot;
pub mod stream;

pub use istio::{sidecar_snapshot, Protocol, Service};
pub use server::{AdsEvent, AdsServer, EventKind, TlsServing};
pub use snapshot::Snapshot;

/// What can go wrong starting or running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("control plane socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("control plane runtime: {0}")]
    Runtime(std::io::Error),
}
