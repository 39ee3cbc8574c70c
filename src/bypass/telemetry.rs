//! Istio's TCP metrics for bypassed flows, so dashboards keep their
//! series when a flow skips the sidecar that would have counted it.
//!
//! The kernel counts per (source pod, VIP:port) in `ml_bypass_stats`
//! (connections at establish and close, the app socket's bytes at close:
//! no per-packet work). The shell records, for each service map entry,
//! the labels Istio's source reporter would give ([`LabelBook`]); a scrape
//! reads the map and sums the entries that share a label set.
//!
//! Names and labels as Istio's `reporter="source"` series:
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total` (bytes towards the app: the response
//! direction, the app socket's `bytes_received`) and
//! `istio_tcp_received_bytes_total` (bytes from the app: the request
//! direction, its `bytes_acked`), labelled `reporter`, `source_workload`,
//! `source_workload_namespace`, `source_principal` (`unknown`: plaintext),
//! `destination_service`, `destination_service_name`,
//! `destination_service_namespace`, `destination_workload` (`unknown`: the
//! kernel aggregates per service, not per endpoint), `request_protocol`
//! (`tcp`), `connection_security_policy` (`none`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use crate::datapath::{BypassStats, BypassStatsMap, PinLayout, ServiceKey};
use crate::xds::decide::Destination;

/// What is known about one service map entry, for Istio's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

impl Labels {
    /// From the source pod's workload and the destination's first
    /// cluster (`outbound|<port>|<subset>|<host>`) or hostname.
    pub fn new(workload: &str, namespace: &str, dest: &Destination) -> Self {
        let host = dest
            .clusters
            .iter()
            .find_map(|(c, _)| c.split('|').nth(3).filter(|h| !h.is_empty()))
            .or_else(|| dest.hostnames.first().map(|h| &**h))
            .unwrap_or("unknown");
        let mut parts = host.split('.');
        let name = parts.next().filter(|n| !n.is_empty()).unwrap_or("unknown");
        let ns = match (parts.next(), parts.next()) {
            (Some(ns), Some("svc")) => ns,
            _ => "unknown",
        };
        Self {
            source_workload: workload.into(),
            source_workload_namespace: namespace.into(),
            destination_service: host.into(),
            destination_service_name: name.into(),
            destination_service_namespace: ns.into(),
        }
    }

    fn unknown() -> Self {
        let u = || "unknown".to_string();
        Self {
            source_workload: u(),
            source_workload_namespace: u(),
            destination_service: u(),
            destination_service_name: u(),
            destination_service_namespace: u(),
        }
    }
}

/// Labels per service map entry, shared by the shell (writer) and the
/// collector (reader). Entries stay after their destination leaves the
/// map: its counted connections keep their labels.
#[derive(Debug, Clone, Default)]
pub struct LabelBook(Arc<Mutex<HashMap<ServiceKey, Labels>>>);

impl LabelBook {
    pub fn set(&self, key: ServiceKey, labels: Labels) {
        self.lock().insert(key, labels);
    }

    /// Forgets the entries of pods for which `keep` is false.
    pub fn retain_pods(&self, keep: impl Fn(u64) -> bool) {
        self.lock().retain(|k, _| keep(k.netns));
    }

    pub fn get(&self, key: &ServiceKey) -> Option<Labels> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceKey, Labels>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IstioLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: &'static str,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_workload: &'static str,
    request_protocol: &'static str,
    connection_security_policy: &'static str,
}

impl From<Labels> for IstioLabels {
    fn from(l: Labels) -> Self {
        Self {
            reporter: "source",
            source_workload: l.source_workload,
            source_workload_namespace: l.source_workload_namespace,
            source_principal: "unknown",
            destination_service: l.destination_service,
            destination_service_name: l.destination_service_name,
            destination_service_namespace: l.destination_service_namespace,
            destination_workload: "unknown",
            request_protocol: "tcp",
            connection_security_policy: "none",
        }
    }
}

/// Sums the kernel's entries per label set (pure).
pub fn aggregate(
    entries: impl IntoIterator<Item = (ServiceKey, BypassStats)>,
    book: &LabelBook,
) -> BTreeMap<Labels, BypassStats> {
    let mut out: BTreeMap<Labels, BypassStats> = BTreeMap::new();
    for (k, s) in entries {
        let t = out
            .entry(book.get(&k).unwrap_or_else(Labels::unknown))
            .or_default();
        t.opened += s.opened;
        t.closed += s.closed;
        t.sent_bytes += s.sent_bytes;
        t.received_bytes += s.received_bytes;
    }
    out
}

/// The `istio_tcp_*` families, read from `ml_bypass_stats` per scrape.
/// Registered on a registry without the `meshlane_` prefix.
#[derive(Debug)]
pub struct IstioTcpCollector {
    pub layout: PinLayout,
    pub book: LabelBook,
}

type Pick = fn(&BypassStats) -> u64;

const FAMILIES: [(&str, &str, Pick); 4] = [
    (
        "istio_tcp_connections_opened",
        "Bypassed TCP connections opened (meshlane, from kernel counters; Istio's source-reporter series)",
        |s| s.opened,
    ),
    (
        "istio_tcp_connections_closed",
        "Bypassed TCP connections closed (meshlane, from kernel counters)",
        |s| s.closed,
    ),
    (
        "istio_tcp_sent_bytes",
        "Bytes sent to the app during response on bypassed TCP connections (meshlane, counted at close)",
        |s| s.received_bytes,
    ),
    (
        "istio_tcp_received_bytes",
        "Bytes received from the app during request on bypassed TCP connections (meshlane, counted at close)",
        |s| s.sent_bytes,
    ),
];

impl Collector for IstioTcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = BypassStatsMap::open(&self.layout) else {
            return Ok(());
        };
        let sums = aggregate(map.iter(), &self.book);
        if sums.is_empty() {
            return Ok(());
        }
        for (name, help, pick) in FAMILIES {
            let proto = ConstCounter::new(0u64);
            let mut fam = encoder.encode_descriptor(name, help, None, proto.metric_type())?;
            for (labels, s) in &sums {
                let l = IstioLabels::from(labels.clone());
                ConstCounter::new(pick(s)).encode(fam.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::decide::{DestKey, Verdict};

    fn dest(clusters: &[&str], hostnames: &[&str]) -> Destination {
        Destination {
            destination: DestKey::Service {
                address: [10, 96, 0, 1].into(),
                port: 80,
            },
            decision: Verdict::Bypass,
            listeners: vec![],
            hostnames: hostnames.iter().map(|s| Arc::from(*s)).collect(),
            clusters: clusters.iter().map(|s| (Arc::from(*s), 100)).collect(),
            reasons: vec![],
            losses: Default::default(),
            endpoints: Default::default(),
        }
    }

    #[test]
    fn labels_come_from_the_cluster_host() {
        let l = Labels::new(
            "web",
            "shop",
            &dest(&["outbound|5432||db.data.svc.cluster.local"], &[]),
        );
        assert_eq!(l.destination_service, "db.data.svc.cluster.local");
        assert_eq!(l.destination_service_name, "db");
        assert_eq!(l.destination_service_namespace, "data");
        assert_eq!(
            (
                l.source_workload.as_str(),
                l.source_workload_namespace.as_str()
            ),
            ("web", "shop")
        );
        let l = Labels::new("web", "shop", &dest(&[], &["api.example.com"]));
        assert_eq!(l.destination_service, "api.example.com");
        assert_eq!(l.destination_service_namespace, "unknown");
        let l = Labels::new("web", "shop", &dest(&[], &[]));
        assert_eq!(l.destination_service_name, "unknown");
    }

    #[test]
    fn entries_with_the_same_labels_sum() {
        let book = LabelBook::default();
        let d = dest(&["outbound|80||b.default.svc.cluster.local"], &[]);
        let k = |netns| ServiceKey {
            netns,
            dest: "10.96.0.1:80".parse().unwrap(),
        };
        book.set(k(1), Labels::new("web", "default", &d));
        book.set(k(2), Labels::new("web", "default", &d));
        let s = |n| BypassStats {
            opened: n,
            closed: n,
            sent_bytes: 10 * n,
            received_bytes: 100 * n,
        };
        let out = aggregate([(k(1), s(1)), (k(2), s(2)), (k(3), s(4))], &book);
        assert_eq!(out.len(), 2);
        let web = &out[&Labels::new("web", "default", &d)];
        assert_eq!(
            (web.opened, web.sent_bytes, web.received_bytes),
            (3, 30, 300)
        );
        assert_eq!(out[&Labels::unknown()].opened, 4);
    }
}
