//! The agent's Prometheus metrics, on prometheus-client: every family has
//! HELP and TYPE, names carry the `meshlane_` prefix and base units.
//!
//! Data-path counters are read from the per-CPU counter array at scrape
//! time (one small array; no big map is walked per scrape), with the
//! programs' run count and time from the kernel's BPF stats. A counter map
//! that cannot be read makes the scrape fail with the reason, never report
//! zeros. The agent's own counters live with the code that counts them
//! (see [`AgentMetrics`]).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use thiserror::Error;

use crate::datapath::{links, MapError, PinLayout, PodsMap};
use crate::status;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("data-path counters: {0}")]
    Counters(#[from] MapError),
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Counters the agent itself keeps.
#[derive(Debug, Default, Clone)]
pub struct AgentMetrics {
    /// Sweeps of the pod registry that ran.
    pub sweeps: Counter,
    /// Registrations the sweep removed, by reason.
    pub swept: Family<ReasonLabel, Counter>,
    /// The xDS client's streams and resources.
    pub xds: crate::xds::client::XdsMetrics,
    /// The bypass decisions kept from the xDS resources (src/xds/live).
    pub decisions: crate::xds::live::DecisionMetrics,
    /// CNI plugin requests, by operation and outcome.
    pub cni: crate::cni::attach::CniMetrics,
    /// Running pods the reconcile registered (src/pods/reconcile.rs).
    pub adopted: Counter,
    /// Registrations the reconcile removed, by reason.
    pub released: Family<ReasonLabel, Counter>,
    /// Failed watches of the Kubernetes pod source (src/pods/kube_source.rs).
    pub pod_source_errors: Counter,
    /// The kernel bypass's service map (src/bypass).
    pub bypass: crate::bypass::BypassMetrics,
    /// Istio labels of bypassed destinations (src/bypass/telemetry.rs).
    pub bypass_labels: crate::bypass::LabelBook,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The data path as seen through its pins, read at each scrape.
#[derive(Debug)]
struct DataPathCollector {
    layout: PinLayout,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

impl Collector for DataPathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Checked by Metrics::encode before the registry is encoded.
        let counters = status::try_read_counters(&self.layout).map_err(|_| std::fmt::Error)?;
        for info in status::COUNTERS {
            let v = counters.get(info.name).copied().unwrap_or(0);
            let c = ConstCounter::new(v);
            let name = format!("datapath_{}", info.name);
            c.encode(encoder.encode_descriptor(&name, info.help, None, c.metric_type())?)?;
        }
        let links = links::node_links(&self.layout);
        let runs = ConstCounter::new(0u64);
        let mut fam = encoder.encode_descriptor(
            "program_runs",
            "Runs of each node-wide BPF program (kernel BPF stats: counted only while they are on, e.g. with the agent's bpfRunStats)",
            None,
            runs.metric_type(),
        )?;
        for l in &links {
            let label = ProgramLabel {
                program: l.program.clone(),
            };
            ConstCounter::new(l.run_count).encode(fam.encode_family(&label)?)?;
        }
        let mut fam = encoder.encode_descriptor(
            "program_run",
            "Time spent in each node-wide BPF program (kernel BPF stats: counted only while they are on)",
            Some(&Unit::Seconds),
            runs.metric_type(),
        )?;
        for l in &links {
            let label = ProgramLabel {
                program: l.program.clone(),
            };
            ConstCounter::new(l.run_time_ns as f64 / 1e9).encode(fam.encode_family(&label)?)?;
        }
        let pods = PodsMap::open(&self.layout)
            .map(|m| m.count() as i64)
            .map_err(|_| std::fmt::Error)?;
        let g = ConstGauge::new(pods);
        g.encode(encoder.encode_descriptor(
            "pods",
            "Pods registered in the data path",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The registry the admin server encodes, and Istio's series for
/// bypassed flows (a registry without the `meshlane_` prefix).
pub struct Metrics {
    registry: Registry,
    istio: Registry,
    layout: PinLayout,
}

impl Metrics {
    pub fn new(layout: &PinLayout, agent: &AgentMetrics) -> Self {
        let mut registry = Registry::with_prefix("meshlane");
        registry.register(
            "agent_sweeps",
            "Sweeps of the pod registry for registrations whose netns is gone",
            agent.sweeps.clone(),
        );
        registry.register(
            "agent_swept_registrations",
            "Pod registrations the sweep removed, by reason",
            agent.swept.clone(),
        );
        agent.xds.register(&mut registry);
        agent.decisions.register(&mut registry);
        registry.register(
            "cni_requests",
            "CNI plugin requests the agent served, by operation (add, del, check, gc) and outcome",
            agent.cni.requests.clone(),
        );
        registry.register(
            "agent_adopted_pods",
            "Running meshed pods the agent registered from its pod source (adoption)",
            agent.adopted.clone(),
        );
        registry.register(
            "agent_released_registrations",
            "Pod registrations removed because the pod source no longer lists the pod as meshed, by reason",
            agent.released.clone(),
        );
        registry.register(
            "agent_pod_source_errors",
            "Failed list or watch calls of the Kubernetes pod source (each is retried with backoff)",
            agent.pod_source_errors.clone(),
        );
        registry.register_collector(Box::new(DataPathCollector {
            layout: layout.clone(),
        }));
        agent.bypass.register(&mut registry);
        registry.register_collector(Box::new(crate::bypass::metrics::KernelCountersCollector {
            layout: layout.clone(),
        }));
        let mut istio = Registry::default();
        istio.register_collector(Box::new(crate::bypass::IstioTcpCollector {
            layout: layout.clone(),
            book: agent.bypass_labels.clone(),
        }));
        Self {
            registry,
            istio,
            layout: layout.clone(),
        }
    }

    /// The text exposition format, or why the data path cannot be read.
    pub fn encode(&self) -> Result<String, MetricsError> {
        status::try_read_counters(&self.layout)?;
        use prometheus_client::encoding::text;
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)?;
        text::encode_registry(&mut out, &self.istio)?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Shared by the admin server and the components that count.
pub type SharedMetrics = Arc<Metrics>;
