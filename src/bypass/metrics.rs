//! `meshlane_bypass_*` metrics of the kernel half: the service map's
//! fill, its writes, the destinations kept on the sidecar by the map (not
//! by a decision) and the kernel's own counters (read per scrape).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::datapath::{BypassCountersMap, PinLayout};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `map_write_failed`, `no_endpoints`, `too_many_endpoints`,
    /// `stream_stale`, `inbound_map_write_failed`.
    pub reason: String,
}

/// Cheap clones share the series.
#[derive(Debug, Clone, Default)]
pub struct BypassMetrics {
    /// Service map entries (pod, VIP:port) written now.
    pub entries: Gauge,
    /// Distinct endpoint sets written now.
    pub endpoint_sets: Gauge,
    /// Service map writes (entries and sets, puts and deletes) by result.
    pub writes: Family<ResultLabel, Counter>,
    /// BYPASS destinations without an entry now (so on the sidecar), by why.
    pub kept_sidecar: Family<ReasonLabel, Gauge>,
    /// Heartbeats written.
    pub heartbeats: Counter,
    /// Inbound ports (destination pod, port) the kernel leaves to the
    /// app's own listener now (`ml_inbound_pass` entries).
    pub inbound_ports: Gauge,
}

impl BypassMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "bypass_map_entries",
            "Service map entries (source pod, VIP:port) the kernel may bypass to",
            self.entries.clone(),
        );
        r.register(
            "bypass_endpoint_sets",
            "Distinct endpoint sets in the service map (shared by content)",
            self.endpoint_sets.clone(),
        );
        r.register(
            "bypass_map_writes",
            "Service map writes (entries and endpoint sets, updates and deletes) and inbound pass-through map writes, by result",
            self.writes.clone(),
        );
        r.register(
            "bypass_kept_sidecar",
            "BYPASS destinations with no service map entry, and PASSTHROUGH inbound ports with no entry (inbound_map_write_failed): they take the sidecar, by reason",
            self.kept_sidecar.clone(),
        );
        r.register(
            "bypass_inbound_passthrough_ports",
            "Inbound ports (destination pod, port) whose own inbound config is plain pass-through and that the kernel leaves to the app's own listener, not the pod's sidecar (inboundPassthrough policy)",
            self.inbound_ports.clone(),
        );
        r.register(
            "bypass_heartbeats",
            "Heartbeats the agent wrote (the kernel bypasses only while the last is within the grace)",
            self.heartbeats.clone(),
        );
    }
}

/// The kernel's bypass counters (`ml_bypass_cnt`), read per scrape.
#[derive(Debug)]
pub struct KernelCountersCollector {
    pub layout: PinLayout,
}

/// (series name, help) per `ml_bypass_counter` slot, in slot order.
pub const KERNEL_COUNTERS: [(&str, &str); 5] = [
    (
        "bypass_connections_rewritten",
        "Connects the kernel sent straight to an endpoint (bypassing the sidecar)",
    ),
    (
        "bypass_connections_stale",
        "Connects to a BYPASS destination sent to the sidecar because the agent's heartbeat was older than the grace",
    ),
    (
        "bypass_connections_no_set",
        "Connects to a BYPASS destination sent to the sidecar because its endpoint set was gone (an update in between)",
    ),
    (
        "bypass_connections_family",
        "Connects sent to the sidecar because the chosen endpoint's address family differs from the socket's",
    ),
    (
        "bypass_connections_uncounted",
        "Bypassed connections not counted in the per-service stats (map full)",
    ),
];

impl Collector for KernelCountersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // No bypass maps pinned (an older install): nothing to say.
        let Ok(sums) = BypassCountersMap::open(&self.layout).and_then(|m| m.sums()) else {
            return Ok(());
        };
        for ((name, help), v) in KERNEL_COUNTERS.iter().zip(sums) {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_series_per_kernel_counter() {
        assert_eq!(
            super::KERNEL_COUNTERS.len(),
            crate::datapath::abi::BYPASS_COUNTER_COUNT
        );
    }
}
