//! The live decisions' Prometheus metrics: destinations by decision and
//! SIDECAR destinations by reason code, summed over the node's pods (no
//! per-pod or per-destination labels: cardinality is bounded by the
//! reason codes), and how long each re-decide took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::xds::decide::Summary;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `bypass` or `sidecar`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A blocking reason code (`explain --summary`'s names).
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `full` (Engine::new) or `clusters` (only changed clusters).
    pub kind: String,
}

/// Bucket bounds of the re-decide histogram: 100 µs to about 6.5 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 3.0, 11)
}

fn new_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// Cheap clones share the counters.
#[derive(Debug, Clone)]
pub struct DecisionMetrics {
    pub destinations: Family<ResultLabel, Gauge>,
    pub sidecar_reasons: Family<ReasonLabel, Gauge>,
    pub pods: Gauge,
    pub redecides: Family<KindLabel, Counter>,
    pub duration: Family<KindLabel, Histogram, fn() -> Histogram>,
}

impl Default for DecisionMetrics {
    fn default() -> Self {
        Self {
            destinations: Family::default(),
            sidecar_reasons: Family::default(),
            pods: Gauge::default(),
            redecides: Family::default(),
            duration: Family::new_with_constructor(new_histogram),
        }
    }
}

impl DecisionMetrics {
    /// Registers every family under `bypass_` (the registry adds
    /// `meshlane_`).
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("bypass");
        r.register(
            "pods_decided",
            "Pods whose destinations have been decided from their xDS resources",
            self.pods.clone(),
        );
        r.register(
            "destinations",
            "Destinations of the node's pods by decision (outbound: bypass, sidecar; inbound ports: passthrough, sidecar), summed over pods",
            self.destinations.clone(),
        );
        r.register(
            "sidecar_reasons",
            "Destinations kept on the sidecar by blocking reason code, summed over pods (one destination counts once per distinct reason)",
            self.sidecar_reasons.clone(),
        );
        r.register(
            "redecides",
            "Re-decides after an xDS change, by kind (full: listeners/routes/filters or the policy changed; clusters: only CDS/EDS of some clusters; shared: another pod with the same inputs had decided them already)",
            self.redecides.clone(),
        );
        r.register_with_unit(
            "redecide_duration",
            "Time one re-decide of one pod took, by kind",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// Moves one pod's contribution from `old` to `new`.
    pub fn replace(&self, old: Option<&Summary>, new: Option<&Summary>) {
        if let Some(s) = old {
            self.add(s, -1);
        }
        if let Some(s) = new {
            self.add(s, 1);
        }
        self.pods
            .inc_by(i64::from(new.is_some()) - i64::from(old.is_some()));
    }

    fn add(&self, s: &Summary, sign: i64) {
        for (result, n) in [
            ("bypass", s.bypass),
            ("sidecar", s.sidecar),
            ("passthrough", s.passthrough),
        ] {
            self.destinations
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc_by(sign * n as i64);
        }
        for (reason, n) in &s.sidecar_reasons {
            self.sidecar_reasons
                .get_or_create(&ReasonLabel {
                    reason: reason.clone(),
                })
                .inc_by(sign * *n as i64);
        }
    }

    /// Counts one re-decide of `kind` that took `seconds`.
    pub fn observe(&self, kind: &str, seconds: f64) {
        let l = KindLabel { kind: kind.into() };
        self.redecides.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(seconds);
    }
}
