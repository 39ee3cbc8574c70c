//! The testbed's agent half for the `bypass` mode: the agent's own bypass
//! chain ([`BypassChain`]: xDS client -> live decisions -> service map and
//! heartbeat) on a thread with its own tokio runtime, streaming ADS from
//! the testbed's control plane for the pods of a catalog the testbed fills.
//! Nothing here decides or writes a map itself: [`LiveAgent::wait_bypassed`]
//! only watches until a pod's stream is synced, its destinations are
//! decided BYPASS from what the stream holds, and the kernel's service map
//! has their entries. Dropping it stops the components and joins the thread.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bypass::{BypassChain, ChainConfig};
use crate::config::{BypassConfig, XdsConfig};
use crate::datapath::{BypassServicesMap, PinLayout, ServiceKey};
use crate::metrics::AgentMetrics;
use crate::pods::source::{MemoryCatalog, MeshDecision, PodCatalog, PodInfo, PodKey};
use crate::pods::PodSpec;
use crate::sim::Pod;
use crate::xds::client::ProxyIdentity;
use crate::xds::decide::{DestKey, Verdict};
use crate::xds::live::PodExplained;

/// The namespace of the testbed's pods (the sim's Envoy sidecars name
/// themselves in it too, so both streams of a pod share one node id).
pub const NAMESPACE: &str = "default";

/// How long stopping the components may take before they are aborted.
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("control plane socket {0}: not an absolute path")]
    Address(String),
    #[error("pod {0}: no xDS identity ({1})")]
    Identity(PodKey, String),
    #[error("starting the in-process agent: {0}")]
    Start(std::io::Error),
    #[error("pod {pod}: the live decisions keep {dest} on the sidecar ({reasons})")]
    Sidecar {
        pod: PodKey,
        dest: SocketAddr,
        reasons: String,
    },
    #[error("pod {pod}: not bypassed within {limit:?}: {state}")]
    Timeout {
        pod: PodKey,
        limit: Duration,
        state: String,
    },
}

/// What the live path holds for one pod once its destinations are
/// bypassed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStatus {
    pub pod: PodKey,
    /// Service destinations decided BYPASS, of `services` decided.
    pub bypass: usize,
    pub services: usize,
    /// The pod's entries in the kernel's service map.
    pub kernel_entries: usize,
}

/// The agent's bypass chain, running in this process.
pub struct LiveAgent {
    catalog: Arc<MemoryCatalog>,
    chain: BypassChain,
    layout: PinLayout,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The catalog entry of a testbed pod registered with `spec`: meshed, in
/// [`NAMESPACE`], its addresses as the pod source would see them.
pub fn pod_info(pod: &Pod, spec: &PodSpec) -> PodInfo {
    let mut ips = vec![IpAddr::V4(pod.ip4)];
    ips.extend(pod.ip6.map(IpAddr::V6));
    PodInfo {
        key: PodKey {
            namespace: NAMESPACE.into(),
            name: pod.name.clone(),
        },
        uid: String::new(),
        ips,
        labels: BTreeMap::from([("app".to_string(), pod.name.clone())]),
        service_account: "default".into(),
        annotations: BTreeMap::new(),
        mesh: MeshDecision::Meshed { spec: spec.clone() },
        workload: Default::default(),
    }
}

/// The agent's `xds:` settings for a plaintext control plane on `socket`
/// (reconnecting quickly: a benchmark has no time to lose).
fn xds_config(socket: &Path) -> XdsConfig {
    XdsConfig {
        address: Some(format!("unix:{}", socket.display())),
        initial_backoff_millis: 100,
        max_backoff_seconds: 1,
        ..XdsConfig::default()
    }
}

/// The node id the agent's stream for `info` announces.
pub fn node_id(info: &PodInfo, socket: &Path) -> Result<String, LiveError> {
    let settings = xds_config(socket)
        .client_settings()
        .ok_or_else(|| LiveError::Address(socket.display().to_string()))?;
    ProxyIdentity::for_pod(info, &settings.mesh)
        .map(|id| id.node_id)
        .map_err(|e| LiveError::Identity(info.key.clone(), e.to_string()))
}

impl LiveAgent {
    /// Starts the chain on `layout`'s install, with the control plane on
    /// the unix socket `socket` and the default bypass policy; no pod yet.
    pub fn start(layout: &PinLayout, socket: &Path) -> Result<Self, LiveError> {
        let client = xds_config(socket)
            .client_settings()
            .ok_or_else(|| LiveError::Address(socket.display().to_string()))?;
        let cfg = ChainConfig {
            client,
            policy: BypassConfig::default().policies,
            layout: layout.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LiveError::Start)?;
        let catalog = Arc::new(MemoryCatalog::new());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let chain = {
            let _in_runtime = runtime.enter();
            let source: Arc<dyn PodCatalog> = catalog.clone();
            BypassChain::spawn(
                cfg,
                source,
                &AgentMetrics::default(),
                |_| {},
                &mut tasks,
                &stopped,
            )
        };
        let thread = std::thread::Builder::new()
            .name("meshlane-live".into())
            .spawn(move || run(runtime, tasks, stopped))
            .map_err(LiveError::Start)?;
        Ok(Self {
            catalog,
            chain,
            layout: layout.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// Adds a pod to the catalog: its stream starts at the next reconcile.
    pub fn add_pod(&self, info: PodInfo) {
        let mut all = self.catalog.all();
        all.retain(|p| p.key != info.key);
        all.push(info);
        self.catalog.replace_all(all);
    }

    /// Waits until `pod` (registered with netns cookie `cookie`) has a
    /// synced, fresh stream, every one of `dests` is decided BYPASS from
    /// what it holds, and the kernel's service map has an entry for each.
    /// A destination decided SIDECAR fails at once, naming why.
    pub fn wait_bypassed(
        &self,
        pod: &PodKey,
        cookie: u64,
        dests: &[SocketAddr],
        limit: Duration,
    ) -> Result<LiveStatus, LiveError> {
        let deadline = Instant::now() + limit;
        loop {
            let state = match self.chain.live.explain(pod) {
                Err(e) => e.to_string(),
                Ok(ex) => match self.check(&ex, cookie, dests)? {
                    Ok(status) => return Ok(status),
                    Err(waiting) => waiting,
                },
            };
            if Instant::now() >= deadline {
                let stream = self.chain.client.pod(pod).map_or_else(
                    || "no stream".to_string(),
                    |v| {
                        format!(
                            "stream connected {}, synced {}, last error {}",
                            v.connected,
                            v.synced,
                            v.last_error.as_deref().unwrap_or("none")
                        )
                    },
                );
                return Err(LiveError::Timeout {
                    pod: pod.clone(),
                    limit,
                    state: format!("{state}; {stream}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ok(Ok(status)) when every destination is bypassed in the kernel,
    /// Ok(Err(what is awaited)) while waiting, Err on a SIDECAR decision.
    fn check(
        &self,
        ex: &PodExplained,
        cookie: u64,
        dests: &[SocketAddr],
    ) -> Result<Result<LiveStatus, String>, LiveError> {
        if ex.stale {
            return Ok(Err("the stream is stale".into()));
        }
        let services: Vec<_> = ex
            .decisions
            .destinations
            .iter()
            .filter_map(|d| match d.destination {
                DestKey::Service { address, port } => Some((SocketAddr::new(address, port), d)),
                _ => None,
            })
            .collect();
        for dest in dests {
            let Some((_, d)) = services.iter().find(|(a, _)| a == dest) else {
                return Ok(Err(format!("{dest} is not among the decisions")));
            };
            if d.decision != Verdict::Bypass {
                let reasons: Vec<String> = d.reasons.iter().map(|r| r.text.to_string()).collect();
                return Err(LiveError::Sidecar {
                    pod: ex.pod.clone(),
                    dest: *dest,
                    reasons: reasons.join("; "),
                });
            }
        }
        let kernel: Vec<ServiceKey> = BypassServicesMap::open(&self.layout)
            .map(|m| m.keys())
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.netns == cookie)
            .collect();
        if let Some(missing) = dests.iter().find(|d| !kernel.iter().any(|k| k.dest == **d)) {
            return Ok(Err(format!(
                "{missing} is not in the kernel's service map yet"
            )));
        }
        Ok(Ok(LiveStatus {
            pod: ex.pod.clone(),
            bypass: services
                .iter()
                .filter(|(_, d)| d.decision == Verdict::Bypass)
                .count(),
            services: services.len(),
            kernel_entries: kernel.len(),
        }))
    }
}

/// The thread: drives the components until they stop, then the runtime.
fn run(
    runtime: tokio::runtime::Runtime,
    mut tasks: JoinSet<()>,
    mut stopped: watch::Receiver<bool>,
) {
    runtime.block_on(async move {
        let _ = stopped.changed().await;
        let drained = tokio::time::timeout(STOP_LIMIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-process agent: components did not stop in time; aborting them");
            tasks.abort_all();
        }
    });
    runtime.shutdown_timeout(STOP_LIMIT);
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
