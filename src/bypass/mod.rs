//! The kernel bypass's user-space half: keeps the service map
//! (`ml_bypass_svc` + `ml_bypass_eps`, bpf/bypass.h) equal to every
//! registered pod's live BYPASS decisions, beats the heartbeat that keeps
//! the kernel bypassing, and exports the kernel's per-(pod, service)
//! counters as Istio's TCP metrics.
//!
//! - [`table`]: the synchronous core: decisions -> entries, and the
//!   minimal writes (new, changed, removed) with map-full handling;
//! - [`sync`]: the async shell (one agent component) that follows
//!   [`LiveDecisions`](crate::xds::live::LiveDecisions) and applies;
//! - [`chain`]: the xDS client, the live decisions and the sync started
//!   together (by the agent, and in process by the benchmark's testbed);
//! - [`telemetry`]: Istio's `istio_tcp_*` series from `ml_bypass_stats`
//!   and the labels the shell records per destination;
//! - [`metrics`]: `meshlane_bypass_*` of the map and the kernel counters.

pub mod chain;
pub mod metrics;
pub mod sync;
pub mod table;
pub mod telemetry;

pub use chain::{BypassChain, ChainConfig};
pub use metrics::BypassMetrics;
pub use sync::{clear_kernel_state, BypassSync};
pub use telemetry::{IstioTcpCollector, LabelBook, Labels};
