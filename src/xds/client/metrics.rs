//! The xDS client's Prometheus metrics: streams (identities, connected,
//! synced), responses accepted and rejected per type, when each type was
//! last ACKed or NACKed, resources held (summed over identities) and
//! distinct copies in memory per type, reconnects, heap trims.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::protocol::XdsType;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// CDS, EDS, LDS or RDS.
    pub r#type: String,
}

impl TypeLabel {
    pub fn of(t: XdsType) -> Self {
        Self {
            r#type: t.short().to_string(),
        }
    }
}

/// Counters and gauges the client keeps (cheap clones share them).
#[derive(Debug, Clone, Default)]
pub struct XdsMetrics {
    pub streams: Gauge,
    pub connected: Gauge,
    pub synced: Gauge,
    pub acks: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub last_ack: Family<TypeLabel, Gauge>,
    pub last_nack: Family<TypeLabel, Gauge>,
    pub held: Family<TypeLabel, Gauge>,
    pub distinct: Family<TypeLabel, Gauge>,
    pub reconnects: Counter,
    pub heap_trims: Counter,
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl XdsMetrics {
    /// Registers every family under `xds_` (the registry adds `meshlane_`).
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("xds");
        r.register(
            "streams",
            "Proxy identities with an ADS stream (one per meshed pod allowing bypass)",
            self.streams.clone(),
        );
        r.register(
            "connected_streams",
            "ADS streams currently connected to the control plane",
            self.connected.clone(),
        );
        r.register(
            "synced_streams",
            "ADS streams that have received a first complete snapshot (CDS, EDS, LDS, RDS)",
            self.synced.clone(),
        );
        r.register(
            "acks",
            "ADS responses accepted (ACKed), by resource type",
            self.acks.clone(),
        );
        r.register(
            "nacks",
            "ADS responses rejected (NACKed, last good state kept), by resource type",
            self.nacks.clone(),
        );
        r.register_with_unit(
            "last_ack_timestamp",
            "Unix time of the last ACK sent, by resource type",
            Unit::Seconds,
            self.last_ack.clone(),
        );
        r.register_with_unit(
            "last_nack_timestamp",
            "Unix time of the last NACK sent, by resource type",
            Unit::Seconds,
            self.last_nack.clone(),
        );
        r.register(
            "resources",
            "xDS resources held, summed over proxy identities, by resource type",
            self.held.clone(),
        );
        r.register(
            "distinct_resources",
            "Distinct decoded xDS resources in memory (shared between identities), by resource type",
            self.distinct.clone(),
        );
        r.register(
            "reconnects",
            "ADS streams re-opened after an error or a closed stream",
            self.reconnects.clone(),
        );
        r.register(
            "heap_trims",
            "Times the allocator's free memory was given back to the kernel after a burst of large ADS responses",
            self.heap_trims.clone(),
        );
    }

    /// Counts an accepted or rejected response of `t`.
    pub fn verdict(&self, t: XdsType, accepted: bool) {
        let l = TypeLabel::of(t);
        let (count, last) = if accepted {
            (&self.acks, &self.last_ack)
        } else {
            (&self.nacks, &self.last_nack)
        };
        count.get_or_create(&l).inc();
        last.get_or_create(&l).set(now_seconds());
    }
}
