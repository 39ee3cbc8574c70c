//! The agent's xDS client: state-of-the-world ADS to istiod as each meshed
//! pod's sidecar identity, so meshlane holds exactly the config istiod
//! gives that pod's Envoy.
//!
//! Synchronous cores (no I/O, unit-tested):
//! - [`identity`]: node id and node metadata from a pod;
//! - [`protocol`]: one identity's ADS state (subscription order, ACK/NACK,
//!   validation, removal, resume);
//! - [`request`]: the requests it sends, encoded from shared names;
//! - [`intern`]: identical resources shared between identities;
//! - [`wire`]: a response read in place from the received bytes;
//! - [`backoff`]: reconnect waits with jitter.
//!
//! Async shells (tokio): [`transport`] (plaintext, unix socket or TLS with
//! a bearer token), [`grpc`] (the ADS call's gRPC framing, each response
//! in a buffer of its own), [`stream`] (one identity's stream and
//! reconnects), [`trim`] (the allocator's free pages back to the kernel
//! after a burst of large responses),
//! [`node`] (one stream per identity, following the pod catalog).
//! [`metrics`] counts them.

pub mod backoff;
pub mod grpc;
pub mod identity;
pub mod intern;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod request;
pub mod stream;
pub mod transport;
pub mod trim;
pub mod wire;

pub use identity::{MeshSettings, ProxyIdentity, BYPASS_ANNOTATION};
pub use metrics::XdsMetrics;
pub use node::{ClientSettings, PodView, XdsClient, FIRST_SYNCS_AT_ONCE};
pub use protocol::{AdsCore, XdsType};
pub use transport::{Address, Transport};
