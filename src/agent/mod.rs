//! The node agent: probe, install or adopt the data path (synchronous, the
//! loader), then run its components on a tokio runtime until SIGTERM or
//! SIGINT, and stop them in order within the drain deadline.
//!
//! Components, all started from [`serve`]:
//! - the admin server ([`admin`]): readiness, liveness, metrics;
//! - the local API ([`api_server`]): pod add/rm/list/sweep requests from
//!   the CLI and the CNI plugin's requests (answered from the pod
//!   catalog, see [`cni_catalog`]), so the agent is the registry's one
//!   writer while it runs;
//! - the pod source and its reconcile ([`pod_source`]): the catalog of
//!   this node's pods (which are meshed, with what settings), and the
//!   adoption of running meshed pods / release of registrations whose pod
//!   is gone;
//! - the pod sweep: every [`SWEEP_INTERVAL`], registrations whose netns is
//!   gone (and leftovers of killed adds) are removed;
//! - the counter log line, every `logIntervalSeconds`;
//! - the xDS client ([`crate::xds::client`]), when `bypass.enabled` and
//!   `xds.address` is set:
//!   one ADS stream per meshed pod of the pod catalog that allows bypass;
//!   readiness then waits for every stream's first complete snapshot;
//!   with it, the live decisions ([`crate::xds::live`]): each pod's bypass
//!   decisions re-decided on every xDS change, served to
//!   `meshlane explain --pod` through the local API, and the service-map
//!   sync that writes them into the kernel; the three are started together
//!   by [`crate::bypass::BypassChain`] (which the benchmark's testbed also
//!   runs, in process).
//!
//! The agent holds no BPF object after install (everything lives in pins),
//! so killing it never touches traffic, and a restarted agent adopts the
//! pins. Exiting, for any reason, leaves the data path pinned.

mod admin;
mod api_server;
mod pod_source;
pub mod policy_reload;
mod readiness;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cni::attach::CniService;
use crate::config::{AgentConfig, ConfigError};
use crate::layout::{PinLayout, PinRootLock};
use crate::loader::{self, InstallReport, LoadError};
use crate::metrics::{AgentMetrics, Metrics, ReasonLabel};
use crate::probe::{self, ProbeError};
use readiness::Readiness;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("this kernel's psock does not count its queue (no sk_psock.msg_tot_len in its BTF), so splice backpressure cannot work: run with --splice-queue-limit 0 to splice without it (a reader that falls behind can then make the kernel queue without bound)")]
    NoBackpressure,
    #[error("admin listener (readiness, liveness, metrics) on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("local API socket {path}: {source}")]
    Api {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    PodSource(#[from] crate::pods::kube_source::KubeSourceError),
    #[error("starting the agent's runtime: {0}")]
    Runtime(std::io::Error),
}

/// How often the agent looks for registrations whose netns is gone.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Probes and installs; the part of `run` that tests and `--once` use.
pub fn start(cfg: &AgentConfig) -> Result<InstallReport, AgentError> {
    Ok(start_holding(cfg)?.0)
}

/// `start`, returning the pin root's lock: one agent per pin root, held
/// for as long as the agent runs.
fn start_holding(cfg: &AgentConfig) -> Result<(InstallReport, PinRootLock), AgentError> {
    cfg.validate()?;
    let install = cfg.install();
    probe::require_all()?;
    if install.splice_queue_limit > 0 && !probe::kernel_counts_psock_queue() {
        return Err(AgentError::NoBackpressure);
    }
    let layout = PinLayout::new(&install.pin_root);
    layout.check_version().map_err(LoadError::from)?;
    loader::attach_cgroup(&install)?;
    let lock = layout.lock().map_err(LoadError::from)?;
    let report = loader::install_holding(&install, &lock)?;
    for a in &report.attachments {
        tracing::info!(program = %a.program, pin = %a.pin.display(), action = a.action, "data path");
    }
    tracing::info!(
        splice = report.plan.splice,
        stream_verdict = report.plan.verdict,
        "byte integrity"
    );
    for f in report.integrity.iter().filter(|f| f.present) {
        tracing::info!(behaviour = f.behaviour, meshlane = %f.meshlane, "kernel behaviour");
    }
    Ok((report, lock))
}

/// Installs, then runs until SIGTERM/SIGINT (or, with `once`, returns
/// right after installing). Exiting leaves the data path pinned.
pub fn run(cfg: AgentConfig, once: bool) -> Result<(), AgentError> {
    // Bind before installing: a bad address must not leave a fresh install.
    let admin = match cfg.admin_addr.filter(|_| !once) {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| AgentError::Admin { addr, source: e })?,
        ),
        None => None,
    };
    // A pod source that cannot start must not leave a fresh install either.
    if !once {
        pod_source::preflight(&cfg.pod_source)?;
    }
    let (report, _lock) = start_holding(&cfg)?;
    if once {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(serve(cfg, report, admin))
}

/// One sweep of the pod registry, counted; failures are logged.
fn sweep_pods(layout: &PinLayout, metrics: &AgentMetrics) -> bool {
    if !layout.maps_dir().is_dir() {
        return false; // uninstalled under us: readiness says so
    }
    let result = crate::pods::Registry::open(layout).and_then(|r| crate::pods::sweep(&r));
    match result {
        Ok(Some(swept)) => {
            metrics.sweeps.inc();
            for s in swept {
                metrics
                    .swept
                    .get_or_create(&ReasonLabel { reason: s.reason })
                    .inc();
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "pod sweep failed");
            false
        }
    }
}

/// The catalog CNI ADD asks which pods are meshed: the pod source's.
/// Test-only (feature `sim`): with `MESHLANE_SIM_POD_CATALOG=DIR`, the
/// simulated node's directory of pod files ([`crate::sim::DirCatalog`])
/// instead.
fn cni_catalog(
    source: Arc<crate::pods::source::MemoryCatalog>,
) -> Arc<dyn crate::pods::source::PodCatalog> {
    #[cfg(feature = "sim")]
    if let Some(dir) = std::env::var_os(crate::sim::SIM_POD_CATALOG_ENV) {
        tracing::warn!(dir = ?dir, "test-only CNI pod catalog (a directory of pod files)");
        return Arc::new(crate::sim::DirCatalog::new(dir));
    }
    source
}

/// The sweep component: every SWEEP_INTERVAL until shutdown; the first
/// completed sweep marks the pod registry as in sync. After each sweep,
/// CNI attachment records whose registration is gone are dropped.
async fn sweeper(
    layout: PinLayout,
    cni: Arc<CniService>,
    metrics: AgentMetrics,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                let (l, m, c) = (layout.clone(), metrics.clone(), cni.clone());
                let swept = tokio::task::spawn_blocking(move || {
                    let done = sweep_pods(&l, &m);
                    if done {
                        c.sweep_records();
                    }
                    done
                });
                if let Ok(true) = swept.await {
                    readiness.set_synced();
                }
            }
        }
    }
}

/// The counter log line, every `every`.
async fn counter_log(layout: PinLayout, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if !layout.maps_dir().exists() {
                    tracing::warn!(pin_root = %layout.root().display(), "pins are gone (uninstall?): not ready");
                    continue;
                }
                let c = crate::status::read_counters(&layout);
                tracing::info!(counters = ?c, "data path counters");
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        _ => {
            tracing::warn!("cannot watch SIGTERM/SIGINT; the agent stops only when killed");
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the components until a stop signal, then drains them.
async fn serve(
    cfg: AgentConfig,
    report: InstallReport,
    admin: Option<std::net::TcpListener>,
) -> Result<(), AgentError> {
    // The kernel's BPF run statistics cost every program run on the node
    // two clock reads: only when the operator asked for them.
    let _stats = if cfg.bpf_run_stats {
        let held = crate::datapath::links::enable_run_stats();
        if held.is_none() {
            tracing::warn!("bpfRunStats: the kernel refused to turn BPF run statistics on");
        }
        held
    } else {
        None
    };
    let layout = PinLayout::new(&report.pin_root);
    let readiness = Arc::new(Readiness::default());
    readiness.set_installed(cfg.intercept);
    let agent_metrics = AgentMetrics::default();
    let metrics = Arc::new(Metrics::new(&layout, &agent_metrics));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    if let Some(std_listener) = admin {
        let addr = std_listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(|e| AgentError::Admin {
                addr: cfg.admin_addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
                source: e,
            })?;
        let state = Arc::new(admin::AdminState {
            layout: layout.clone(),
            readiness: readiness.clone(),
            metrics,
        });
        tasks.spawn(admin::serve(listener, state, stop_rx.clone()));
        tracing::info!(%addr, "admin server: /healthz/ready /healthz/live /metrics");
    }
    let api_path = crate::api::socket_path(&report.pin_root);
    let api = api_server::bind(&api_path).map_err(|e| AgentError::Api {
        path: api_path.clone(),
        source: e,
    })?;
    // The catalog of this node's pods: for the CNI path and the xDS client.
    let catalog = pod_source::start(
        &cfg.pod_source,
        &layout,
        &agent_metrics,
        &readiness,
        &mut tasks,
        &stop_rx,
    )?;
    let cni = Arc::new(CniService::new(
        layout.clone(),
        cni_catalog(catalog.clone()),
        agent_metrics.cni.clone(),
    ));
    // The client runs only where bypass is enabled: nothing else uses what
    // it receives.
    let xds_settings = cfg.xds.client_settings().filter(|_| cfg.bypass.enabled);
    if cfg.bypass.enabled && xds_settings.is_none() {
        tracing::warn!("bypass.enabled without xds.address: no xDS client, nothing is bypassed");
    }
    let decisions = xds_settings.map(|settings| {
        readiness.require_xds();
        let r = readiness.clone();
        tracing::info!(address = ?cfg.xds.address, tls = cfg.xds.tls, "xDS client");
        let chain = crate::bypass::BypassChain::spawn(
            crate::bypass::ChainConfig {
                client: settings,
                policy: cfg.bypass.policies.clone(),
                layout: layout.clone(),
            },
            catalog.clone(),
            &agent_metrics,
            move |synced| r.set_xds_synced(synced),
            &mut tasks,
            &stop_rx,
        );
        if let Some(path) = cfg.source.clone() {
            tasks.spawn(policy_reload::run(
                path,
                chain.live.clone(),
                stop_rx.clone(),
            ));
        }
        chain.live
    });
    if decisions.is_none() {
        // Bypass off: nothing an earlier agent wrote may keep bypassing.
        if let Err(e) = crate::bypass::clear_kernel_state(&layout) {
            tracing::warn!(error = %e, "bypass off: clearing the service map");
        }
    }
    tasks.spawn(api_server::serve(
        api,
        api_path.clone(),
        layout.clone(),
        cni.clone(),
        decisions,
        stop_rx.clone(),
    ));
    tracing::info!(socket = %api_path.display(), "local API");
    tasks.spawn(sweeper(
        layout.clone(),
        cni,
        agent_metrics.clone(),
        readiness.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(counter_log(layout.clone(), cfg.log_interval(), stop_rx));
    tracing::info!(pin_root = %report.pin_root.display(), cgroup = %report.cgroup.display(), "agent running");

    stop_signal().await;
    readiness.set_draining();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(cfg.drain(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(deadline = ?cfg.drain(), "components did not stop in time; aborting them");
        tasks.abort_all();
    }
    tracing::info!("agent exiting; the data path stays pinned");
    Ok(())
}
