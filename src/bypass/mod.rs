//! The kernel bypass's user-space half: keeps the service map
//! (`ml_bypass_svc` + `ml_bypass_eps`, bpf/bypass.h) equal to every
//! registered pod's live BYPASS decisions and `ml_inbound_pass`
//! (bpf/maps.h) to their PASSTHROUGH inbound ports, beats the heartbeat that keeps
//! the kernel bypassing, and exports the kernel's per-(pod, service)
//! counters as Istio's TCP metrics.
//!
//! - [`table`]: the synchronous core: decisions -> entries, and the
//!   minimal writes (new, changed, removed) with map-full handling;
//! - [`inbound`]: the synchronous core of inbound pass-through: a pod's
//!   own PASSTHROUGH inbound ports -> `ml_inbound_pass` entries;
//! - [`sync`]: the async shell (one agent component) that follows
//!   [`LiveDecisions`](crate::xds::live::LiveDecisions) and applies;
//! - [`chain`]: the xDS client, the live decisions and the sync started
//!   together (by the agent, and in process by the benchmark's testbed);
//! - [`telemetry`]: Istio's `istio_tcp_*` series from `ml_bypass_stats`
//!   and the labels the shell records per destination;
//! - [`metrics`]: `meshlane_bypass_*` of the map and the kernel counters.

pub mod chain;
pub mod inbound;
pub mod metrics;
pub mod sync;
pub mod table;
pub mod telemetry;

pub use chain::{BypassChain, ChainConfig};
pub use metrics::BypassMetrics;
pub use sync::{clear_kernel_state, BypassSync};
pub use telemetry::{IstioTcpCollector, LabelBook, Labels};
