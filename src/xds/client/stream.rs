//! The async shell of one proxy identity: opens an ADS stream, feeds each
//! response to the identity's [`AdsCore`], sends what it returns and
//! publishes the resources it holds; on any error (connect, stream reset,
//! closed stream) waits with backoff and jitter and resumes on a new
//! stream with the versions and names held. Runs until stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch, Semaphore};

use super::backoff::Backoff;
use super::grpc;
use super::intern::Interner;
use super::metrics::{TypeLabel, XdsMetrics};
use super::protocol::{AdsCore, Outcome, XdsType};
use super::transport::{Transport, TransportError};
use super::trim::Trimmer;
use super::wire::{ResponseView, WireError};
use crate::xds::ProxyResources;

/// Largest response accepted (a whole mesh's clusters or endpoints).
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("ADS stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("ADS stream closed by the control plane")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] WireError),
}

/// What one identity's stream shows the rest of the agent.
#[derive(Debug)]
pub struct IdentityState {
    pub node_id: String,
    resources: watch::Sender<Arc<ProxyResources>>,
    connected: AtomicBool,
    synced: AtomicBool,
    /// When the last stream ended (None while connected or never).
    down_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl IdentityState {
    pub fn new(node_id: String) -> Self {
        Self {
            node_id,
            resources: watch::Sender::new(Arc::new(ProxyResources::default())),
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            last_error: Mutex::new(None),
        }
    }

    /// The last good resources.
    pub fn resources(&self) -> Arc<ProxyResources> {
        self.resources.borrow().clone()
    }

    /// Changes of the resources, for whoever decides from them.
    pub fn watch(&self) -> watch::Receiver<Arc<ProxyResources>> {
        self.resources.subscribe()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A first complete snapshot was received.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Disconnected for longer than `grace` (held config may be stale).
    pub fn stale(&self, grace: Duration) -> bool {
        let since = *self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        since.is_some_and(|t| t.elapsed() > grace)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_connected(&self, up: bool, metrics: &XdsMetrics) {
        if self.connected.swap(up, Ordering::Relaxed) != up {
            metrics.connected.inc_by(if up { 1 } else { -1 });
            *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = (!up).then(Instant::now);
        }
    }

    fn set_synced(&self, metrics: &XdsMetrics) {
        if !self.synced.swap(true, Ordering::Relaxed) {
            metrics.synced.inc();
        }
    }
}

/// Backoff limits and what the stream shares with the node.
#[derive(Clone)]
pub struct StreamContext {
    pub transport: Transport,
    pub pools: Arc<Interner>,
    pub trimmer: Arc<Trimmer>,
    pub metrics: XdsMetrics,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Permits for a session's first snapshot: a stream holds one from
    /// its first request until it is synced (or `first_sync_hold` has
    /// passed), so identities starting together (agent start, istiod
    /// restart) do not all hold their snapshot's responses at once.
    pub first_syncs: Arc<Semaphore>,
    /// Longest a stream keeps its permit waiting to sync.
    pub first_sync_hold: Duration,
}

/// Resources this identity counts in the `held` gauges.
#[derive(Default)]
struct Counted([i64; 4]);

impl Counted {
    fn update(&mut self, r: &ProxyResources, m: &XdsMetrics) {
        let now = [
            r.clusters.len(),
            r.endpoints.len(),
            r.listeners.len(),
            r.routes.len(),
        ];
        for (i, t) in XdsType::ALL.into_iter().enumerate() {
            let n = now[i] as i64;
            m.held
                .get_or_create(&TypeLabel::of(t))
                .inc_by(n - self.0[i]);
            self.0[i] = n;
        }
    }

    fn clear(&mut self, m: &XdsMetrics) {
        self.update(&ProxyResources::default(), m);
    }
}

/// Runs one identity's streams until `stop` turns true (or its sender is
/// dropped).
pub async fn run_identity(
    state: Arc<IdentityState>,
    node: Node,
    ctx: StreamContext,
    mut stop: watch::Receiver<bool>,
) {
    let mut core = AdsCore::new(node);
    let mut backoff = Backoff::new(ctx.initial_backoff, ctx.max_backoff);
    let mut counted = Counted::default();
    loop {
        let ended = session(
            &mut core,
            &state,
            &ctx,
            &mut backoff,
            &mut counted,
            &mut stop,
        )
        .await;
        state.set_connected(false, &ctx.metrics);
        match ended {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(node = %state.node_id, error = %e, "ADS stream ended; reconnecting");
                *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        let wait = backoff.next_wait();
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if *stop.borrow() {
            break;
        }
        ctx.metrics.reconnects.inc();
    }
    counted.clear(&ctx.metrics);
    if state.synced() {
        ctx.metrics.synced.dec();
    }
}

/// One stream, from connect to its end; Ok when stopped.
async fn session(
    core: &mut AdsCore,
    state: &IdentityState,
    ctx: &StreamContext,
    backoff: &mut Backoff,
    counted: &mut Counted,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let channel = tokio::select! {
        c = ctx.transport.connect() => c?,
        _ = stop.changed() => return Ok(()),
    };
    let mut permit = tokio::select! {
        p = Arc::clone(&ctx.first_syncs).acquire_owned() => p.ok(),
        _ = stop.changed() => return Ok(()),
    };
    let hold_until = tokio::time::Instant::now() + ctx.first_sync_hold;
    let (tx, rx) = mpsc::channel(16);
    for r in core.start_stream() {
        tx.send(grpc::frame(r.encoded_len(), |b| r.encode(b)))
            .await
            .map_err(|_| StreamError::Closed)?;
    }
    let bearer = ctx.transport.bearer()?;
    let mut inbound = tokio::select! {
        r = grpc::open(channel, rx, bearer, MAX_MESSAGE) => r?,
        _ = stop.changed() => return Ok(()),
    };
    state.set_connected(true, &ctx.metrics);
    tracing::info!(node = %state.node_id, address = %ctx.transport.address, "ADS stream open");
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep_until(hold_until), if permit.is_some() => {
                permit = None; // not synced in time: let the next one start
                continue;
            }
            msg = inbound.next() => msg?.ok_or(StreamError::Closed)?,
        };
        backoff.reset();
        // The response is read in place and its bytes dropped once
        // applied (before anything is sent).
        let out = {
            let resp = ResponseView::parse(&msg)?;
            let out = core.on_response(&resp, &ctx.pools);
            log_verdict(&state.node_id, core, &resp, &out);
            out
        };
        ctx.trimmer.note(msg.len());
        drop(msg);
        if let (Some(t), Some(verdict)) = (out.type_, &out.verdict) {
            ctx.metrics.verdict(t, verdict.is_ok());
            let distinct = match t {
                XdsType::Cluster => ctx.pools.clusters.live(),
                XdsType::Endpoint => ctx.pools.endpoints.live(),
                XdsType::Listener => ctx.pools.listeners.live(),
                XdsType::Route => ctx.pools.routes.live(),
            };
            ctx.metrics
                .distinct
                .get_or_create(&TypeLabel::of(t))
                .set(distinct as i64);
        }
        for r in out.requests {
            tx.send(grpc::frame(r.encoded_len(), |b| r.encode(b)))
                .await
                .map_err(|_| StreamError::Closed)?;
        }
        if out.changed {
            let held = Arc::clone(core.resources());
            counted.update(&held, &ctx.metrics);
            state.resources.send_replace(held);
        }
        if core.synced() {
            state.set_synced(&ctx.metrics);
            permit = None;
        }
    }
}

fn log_verdict(node: &str, core: &AdsCore, resp: &ResponseView<'_>, out: &Outcome) {
    let (Some(t), Some(verdict)) = (out.type_, &out.verdict) else {
        return;
    };
    match verdict {
        Ok(()) => tracing::debug!(node, "ADS {t} ACK version {}", resp.version_info),
        Err(e) => tracing::warn!(
            node,
            "ADS {t} NACK version {} (keeps {:?}): {e}",
            resp.version_info,
            core.version(t)
        ),
    }
}
