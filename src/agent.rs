//! The node agent: probe, install or adopt the data path, then watch it.
//! It holds no BPF object after install (everything lives in pins), so
//! killing it never touches traffic, and a restarted agent adopts the pins.
//! While it runs it keeps kernel BPF run-time stats on, logs counters,
//! serves Prometheus metrics and sweeps away registrations whose pod netns
//! is gone (every [`SWEEP_INTERVAL`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::layout::{PinLayout, PinRootLock};
use crate::loader::{self, Config, InstallReport, LoadError};
use crate::probe::{self, ProbeError};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("this kernel's psock does not count its queue (no sk_psock.msg_tot_len in its BTF), so splice backpressure cannot work: run with --splice-queue-limit 0 to splice without it (a reader that falls behind can then make the kernel queue without bound)")]
    NoBackpressure,
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often the agent looks for registrations whose netns is gone.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One sweep of the pod registry; failures are logged, never fatal.
fn sweep_pods(layout: &PinLayout) {
    let result = crate::pods::Registry::open(layout).and_then(|r| crate::pods::sweep(&r));
    if let Err(e) = result {
        tracing::warn!(error = %e, "pod sweep failed");
    }
}

/// Options of the agent process beyond what it installs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub install: Config,
    pub metrics_addr: Option<SocketAddr>,
    pub log_interval: Duration,
    /// Install, report and exit (for scripts and tests).
    pub once: bool,
}

/// Turns on the kernel's per-program run count/time while the fd lives.
fn enable_bpf_stats() -> Option<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    // SAFETY: a non-negative fd is ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Probes and installs; the part of `run` that tests and `--once` use.
pub fn start(opts: &AgentOptions) -> Result<InstallReport, AgentError> {
    Ok(start_holding(opts)?.0)
}

/// `start`, returning the pin root's lock: one agent per pin root, held
/// for as long as the agent runs.
fn start_holding(opts: &AgentOptions) -> Result<(InstallReport, PinRootLock), AgentError> {
    probe::require_all()?;
    if opts.install.splice_queue_limit > 0 && !probe::kernel_counts_psock_queue() {
        return Err(AgentError::NoBackpressure);
    }
    let layout = PinLayout::new(&opts.install.pin_root);
    layout.check_version().map_err(LoadError::from)?;
    loader::attach_cgroup(&opts.install)?;
    let lock = layout.lock().map_err(LoadError::from)?;
    let report = loader::install_holding(&opts.install, &lock)?;
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

fn serve_metrics(listener: TcpListener, layout: PinLayout, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let (code, body) = match crate::status::prometheus(&layout) {
                    Ok(b) => ("200 OK", b),
                    Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs until SIGINT/SIGTERM. Exiting leaves the data path pinned.
pub fn run(opts: AgentOptions) -> Result<(), AgentError> {
    // Bind before installing: a bad address must not leave a fresh install.
    let metrics = match opts.metrics_addr.filter(|_| !opts.once) {
        Some(addr) => Some((
            addr,
            TcpListener::bind(addr).map_err(|e| AgentError::Metrics { addr, source: e })?,
        )),
        None => None,
    };
    let (report, _lock) = start_holding(&opts)?;
    if opts.once {
        return Ok(());
    }
    let _stats = enable_bpf_stats();
    let layout = PinLayout::new(&report.pin_root);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed));
    }
    if let Some((addr, l)) = metrics {
        let (layout, stop) = (layout.clone(), stop.clone());
        std::thread::spawn(move || serve_metrics(l, layout, stop));
        tracing::info!(%addr, "serving metrics");
    }
    tracing::info!(pin_root = %report.pin_root.display(), cgroup = %report.cgroup.display(), "agent running");
    let mut waited = Duration::ZERO;
    let mut since_sweep = Duration::ZERO;
    sweep_pods(&layout);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        waited += Duration::from_millis(200);
        since_sweep += Duration::from_millis(200);
        if since_sweep >= SWEEP_INTERVAL {
            since_sweep = Duration::ZERO;
            sweep_pods(&layout);
        }
        if waited >= opts.log_interval {
            waited = Duration::ZERO;
            if !layout.maps_dir().exists() {
                tracing::warn!("pins were removed (uninstall?); agent exits");
                break;
            }
            let c = crate::status::read_counters(&layout);
            tracing::info!(counters = ?c, "data path counters");
        }
    }
    tracing::info!("agent exiting; the data path stays pinned");
    Ok(())
}
