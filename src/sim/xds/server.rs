//! The ADS server: envoy-types' generated `AggregatedDiscoveryService` on
//! tonic, serving a unix socket (or, like istiod's :15012, TCP with TLS
//! and a required bearer token: [`AdsServer::start_tls`]) from a thread
//! with its own single-threaded tokio runtime (the rest of the sim is
//! synchronous). Each stream runs
//! [`StreamState`] against the current [`Snapshot`]; [`AdsServer::update`]
//! pushes a new one to every stream. What was sent and every ACK/NACK is
//! logged (tracing) and kept in [`AdsServer::events`] for tests. Dropping
//! the server stops it (streams are cut) and removes its socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::{short_type, Snapshot};
use super::stream::{StreamState, Verdict};
use super::XdsError;

/// What happened on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A request, classified.
    Request(Verdict),
    /// A response went out.
    Sent {
        version: String,
        nonce: String,
        resources: usize,
    },
}

/// One entry of the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsEvent {
    /// The client's node id (Istio's `sidecar~<ip>~<pod>...`).
    pub node: String,
    pub type_url: String,
    pub kind: EventKind,
}

/// The current snapshot, and per-node ones that replace it for a node id.
#[derive(Debug, Clone, Default)]
struct Snapshots {
    default: Arc<Snapshot>,
    nodes: BTreeMap<String, Arc<Snapshot>>,
}

impl Snapshots {
    fn for_node(&self, node: &str) -> Arc<Snapshot> {
        Arc::clone(self.nodes.get(node).unwrap_or(&self.default))
    }
}

struct Shared {
    /// Streams refused by the bearer check.
    refused: AtomicUsize,
    snapshot: watch::Sender<Snapshots>,
    /// Bumped to cut every open stream (a control-plane restart).
    resets: watch::Sender<u64>,
    events: Mutex<Vec<AdsEvent>>,
}

impl Shared {
    fn record(&self, node: &str, type_url: &str, kind: EventKind) {
        let t = short_type(type_url);
        match &kind {
            EventKind::Request(Verdict::Nack {
                version, message, ..
            }) => {
                tracing::warn!(node, "ADS {t} NACK (keeps version {version:?}): {message}")
            }
            EventKind::Request(Verdict::Ack { version, nonce }) => {
                tracing::info!(node, "ADS {t} ACK version {version} nonce {nonce}")
            }
            EventKind::Request(v) => tracing::debug!(node, "ADS {t} {v:?}"),
            EventKind::Sent {
                version,
                nonce,
                resources,
            } => tracing::debug!(
                node,
                "ADS {t} sent version {version} nonce {nonce}: {resources} resources"
            ),
        }
        if let Ok(mut ev) = self.events.lock() {
            ev.push(AdsEvent {
                node: node.to_string(),
                type_url: type_url.to_string(),
                kind,
            });
        }
    }
}

struct Ads {
    shared: Arc<Shared>,
}

type Out = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// Sends `r` on the stream and logs it; false when the client is gone.
async fn send(shared: &Shared, node: &str, out: &Out, r: DiscoveryResponse) -> bool {
    let kind = EventKind::Sent {
        version: r.version_info.clone(),
        nonce: r.nonce.clone(),
        resources: r.resources.len(),
    };
    shared.record(node, &r.type_url, kind);
    out.send(Ok(r)).await.is_ok()
}

/// Serves one stream until the client goes away.
async fn run_stream(shared: Arc<Shared>, mut requests: Streaming<DiscoveryRequest>, out: Out) {
    let mut snapshots = shared.snapshot.subscribe();
    let mut resets = shared.resets.subscribe();
    let mut state = StreamState::default();
    let mut node = String::new();
    loop {
        tokio::select! {
            msg = requests.message() => {
                let Ok(Some(req)) = msg else { return };
                if let (true, Some(n)) = (node.is_empty(), &req.node) {
                    node = n.id.clone();
                }
                let snap = snapshots.borrow().for_node(&node);
                let (verdict, response) = state.on_request(&req, &snap);
                shared.record(&node, &req.type_url, EventKind::Request(verdict));
                if let Some(r) = response {
                    if !send(&shared, &node, &out, r).await {
                        return;
                    }
                }
            }
            _ = resets.changed() => {
                tracing::info!(node, "ADS stream reset by the control plane");
                let _ = out.send(Err(Status::unavailable("stream reset"))).await;
                return;
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snap = snapshots.borrow_and_update().for_node(&node);
                for r in state.on_snapshot(&snap) {
                    if !send(&shared, &node, &out, r).await {
                        return;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream(
            Arc::clone(&self.shared),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this control plane serves state-of-the-world ADS only",
        ))
    }
}

/// TLS serving, as istiod's :15012: the server's certificate chain and
/// key (PEM), and the bearer token every stream must carry.
#[derive(Clone)]
pub struct TlsServing {
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

/// Where the server listens.
enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tls(std::net::TcpListener, ServerTlsConfig),
}

/// The generated service behind the bearer check.
type Service = InterceptedService<AggregatedDiscoveryServiceServer<Ads>, BearerCheck>;

/// Refuses a stream whose `authorization` is not `want` (None: no check).
#[derive(Clone)]
struct BearerCheck {
    want: Option<Arc<str>>,
    shared: Arc<Shared>,
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.want else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if got == Some(&**want) {
            Ok(req)
        } else {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// A running control plane.
pub struct AdsServer {
    dir: PathBuf,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdsServer {
    /// Serves `snapshot` on `<dir>/xds.sock` (`dir` is created, and
    /// removed on drop). The socket is open to every uid: sidecars run as
    /// the proxy uid.
    pub fn start(dir: &Path, snapshot: Snapshot) -> Result<Self, XdsError> {
        let socket = dir.join("xds.sock");
        let sock_err = |source| XdsError::Socket {
            path: socket.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(sock_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(sock_err)?;
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(sock_err)?;
        listener.set_nonblocking(true).map_err(sock_err)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(sock_err)?;
        Self::start_on(dir, socket, Listener::Unix(listener), None, snapshot)
    }

    /// Serves `snapshot` on 127.0.0.1 (a free port: [`Self::tcp_addr`])
    /// over TLS with `tls`'s certificate; a stream without
    /// `authorization: Bearer <tls.token>` is refused (UNAUTHENTICATED,
    /// counted by [`Self::refused_tokens`]). `dir` as for [`Self::start`].
    pub fn start_tls(dir: &Path, snapshot: Snapshot, tls: TlsServing) -> Result<Self, XdsError> {
        let sock_err = |source| XdsError::Socket {
            path: "127.0.0.1:0".into(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(sock_err)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(sock_err)?;
        listener.set_nonblocking(true).map_err(sock_err)?;
        let addr = listener.local_addr().map_err(sock_err)?;
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        Self::start_on(
            dir,
            dir.join("xds.sock"),
            Listener::Tls(listener, config),
            Some((addr, tls.token)),
            snapshot,
        )
    }

    fn start_on(
        dir: &Path,
        socket: PathBuf,
        listener: Listener,
        tcp: Option<(SocketAddr, String)>,
        snapshot: Snapshot,
    ) -> Result<Self, XdsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(XdsError::Runtime)?;
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(Snapshots {
                default: Arc::new(snapshot),
                nodes: BTreeMap::new(),
            }),
            resets: watch::Sender::new(0),
            events: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let check = BearerCheck {
            want: tcp
                .as_ref()
                .map(|(_, token)| format!("Bearer {token}").into()),
            shared: Arc::clone(&shared),
        };
        let service = InterceptedService::new(
            AggregatedDiscoveryServiceServer::new(Ads {
                shared: Arc::clone(&shared),
            }),
            check,
        );
        let thread = std::thread::Builder::new()
            .name("meshlane-ads".into())
            .spawn(move || serve(runtime, listener, service, stopped))
            .map_err(XdsError::Runtime)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            socket,
            tcp: tcp.map(|(addr, _)| addr),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The unix socket sidecars connect to (not served by a TLS server).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The TLS server's address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Streams refused for a missing or wrong bearer token.
    pub fn refused_tokens(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Makes `snapshot` current and pushes it to every stream.
    pub fn update(&self, snapshot: Snapshot) {
        self.shared
            .snapshot
            .send_modify(|s| s.default = Arc::new(snapshot));
    }

    /// Serves `snapshot` to the client whose node id is `node` instead of
    /// the common one (two pods with different Sidecar scopes), and pushes
    /// it to its streams.
    pub fn update_node(&self, node: &str, snapshot: Snapshot) {
        self.shared.snapshot.send_modify(|s| {
            s.nodes.insert(node.to_string(), Arc::new(snapshot));
        });
    }

    /// Cuts every open stream with UNAVAILABLE (clients reconnect).
    pub fn reset_streams(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Everything logged so far.
    pub fn events(&self) -> Vec<AdsEvent> {
        self.shared
            .events
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Whether `node` has acknowledged `version` of `type_url`.
    pub fn acked(&self, node: &str, type_url: &str, version: &str) -> bool {
        self.events().iter().any(|e| {
            e.node == node
                && e.type_url == type_url
                && matches!(&e.kind, EventKind::Request(Verdict::Ack { version: v, .. }) if v == version)
        })
    }

    /// Waits until `done` holds for the log, up to `limit`.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&[AdsEvent]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.events()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The server thread: runs until `stopped` fires (or the sender is
/// dropped); dropping the runtime then cuts every stream.
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: Listener,
    service: Service,
    stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        let server = match listener {
            Listener::Unix(l) => match tokio::net::UnixListener::from_std(l) {
                Ok(l) => tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(UnixListenerStream::new(l))
                    .boxed(),
                Err(e) => {
                    tracing::error!("ADS server: {e}");
                    return;
                }
            },
            Listener::Tls(l, config) => {
                let listener = match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("ADS server: {e}");
                        return;
                    }
                };
                let builder = match tonic::transport::Server::builder().tls_config(config) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("ADS server TLS: {e}");
                        return;
                    }
                };
                let mut builder = builder;
                builder
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .boxed()
            }
        };
        tokio::select! {
            r = server => {
                if let Err(e) = r {
                    tracing::error!("ADS server: {e}");
                }
            }
            _ = stopped => {}
        }
    });
    runtime.shutdown_background();
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
