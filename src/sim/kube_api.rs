//! A Kubernetes API server stand-in for the pod source's tests: pods only,
//! over plain HTTP on loopback, speaking the real list/watch protocol that
//! clients (kube-rs, client-go) use:
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3DN&limit=L&continue=C`:
//!   a `PodList` whose `metadata.resourceVersion` is the store's version
//!   (and a `continue` token while pages remain);
//! - `GET /api/v1/pods?watch=true&resourceVersion=V&allowWatchBookmarks=true
//!   &timeoutSeconds=T`: a stream of JSON lines `{"type":...,"object":...}`
//!   (ADDED, MODIFIED, DELETED, BOOKMARK) for every change after V, then
//!   live; a V older than the retained history (see [`KubeApi::compact`])
//!   gets 410 Gone, as an ERROR event carrying a `Status` with code 410 or
//!   as an HTTP 410 response ([`GoneAs`]); V = "0" or absent starts with
//!   synthetic ADDED events for the current objects.
//!
//! Every write bumps the store's resourceVersion and stamps it on the
//! object. The test drives the pods ([`KubeApi::apply`], [`KubeApi::delete`])
//! and the faults: [`KubeApi::drop_watches`] cuts every open watch
//! connection mid-stream, [`KubeApi::compact`] forgets history so resuming
//! watches get 410, [`KubeApi::bookmark`] sends a BOOKMARK to the open
//! watches. [`KubeApi::requests`] is the log of requests served.
//!
//! [`ApiState`] is the synchronous core (store, history, list and watch
//! semantics); the server around it is a hyper HTTP/1 shell on its own
//! thread and runtime, stopped on drop.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// How a watch from a compacted resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneAs {
    /// 200, then one ERROR event whose object is a Status with code 410
    /// (what the API server does for an expired watch).
    ErrorEvent,
    /// An HTTP 410 response with a Status body.
    Http,
}

/// One change in the store's history.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    pub object: Value,
}

/// A request's selection: `spec.nodeName=<node>` or everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub node: Option<String>,
}

impl Selector {
    /// Parses a fieldSelector; only `spec.nodeName=` (and `==`) is served.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return Ok(Self { node: None });
        };
        let value = s
            .strip_prefix("spec.nodeName==")
            .or_else(|| s.strip_prefix("spec.nodeName="));
        match value {
            Some(v) if !v.contains(',') => Ok(Self {
                node: Some(v.to_string()),
            }),
            _ => Err(format!(
                "field selector {s:?} is not supported by this stand-in"
            )),
        }
    }

    pub fn matches(&self, pod: &Value) -> bool {
        match &self.node {
            None => true,
            Some(n) => pod["spec"]["nodeName"].as_str() == Some(n.as_str()),
        }
    }
}

/// What a watch request gets: the backlog to send first, or Gone.
#[derive(Debug)]
pub enum WatchStart {
    Backlog(Vec<Change>),
    Gone { requested: u64, oldest: u64 },
}

/// The store: objects, history and the resourceVersion.
#[derive(Debug, Default)]
pub struct ApiState {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// Changes at or below this version are forgotten.
    compacted: u64,
}

fn key_of(pod: &Value) -> Option<(String, String)> {
    let m = &pod["metadata"];
    Some((
        m["namespace"].as_str()?.to_string(),
        m["name"].as_str()?.to_string(),
    ))
}

impl ApiState {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces a pod (ADDED or MODIFIED); None when it has no
    /// namespace or name.
    pub fn apply(&mut self, mut pod: Value) -> Option<Change> {
        let key = key_of(&pod)?;
        self.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        pod["kind"] = json!("Pod");
        pod["apiVersion"] = json!("v1");
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(key, pod.clone());
        Some(self.record(kind, pod))
    }

    /// Deletes a pod; None when there was none.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Option<Change> {
        let mut pod = self
            .objects
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Some(self.record("DELETED", pod))
    }

    fn record(&mut self, kind: &'static str, object: Value) -> Change {
        let c = Change {
            rv: self.rv,
            kind,
            object,
        };
        self.history.push(c.clone());
        c
    }

    /// Forgets the history: a watch from any version before now is Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// One page of the list. `cont` is a token this state handed out.
    pub fn list(
        &self,
        sel: &Selector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<Value, String> {
        let start: usize = match cont.filter(|c| !c.is_empty()) {
            Some(c) => c
                .parse()
                .map_err(|_| format!("continue token {c:?} is not valid"))?,
            None => 0,
        };
        let all: Vec<&Value> = self.objects.values().filter(|p| sel.matches(p)).collect();
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: Vec<Value> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|v| (*v).clone())
            .collect();
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if start.saturating_add(page.len()) < all.len() {
            meta["continue"] = json!((start + page.len()).to_string());
        }
        Ok(json!({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page}))
    }

    /// Where a watch from `from` (None or 0: now, with the current objects
    /// as ADDED) starts.
    pub fn watch_from(&self, sel: &Selector, from: Option<u64>) -> WatchStart {
        match from.filter(|v| *v > 0) {
            None => WatchStart::Backlog(
                self.objects
                    .values()
                    .filter(|p| sel.matches(p))
                    .map(|p| Change {
                        rv: self.rv,
                        kind: "ADDED",
                        object: p.clone(),
                    })
                    .collect(),
            ),
            Some(v) if v < self.compacted => WatchStart::Gone {
                requested: v,
                oldest: self.compacted,
            },
            Some(v) => WatchStart::Backlog(
                self.history
                    .iter()
                    .filter(|c| c.rv > v && sel.matches(&c.object))
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// The Status object of a 410.
pub fn gone_status(requested: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {requested} ({oldest})"),
        "reason": "Expired", "code": 410
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// What the server sends down one open watch.
#[derive(Debug)]
enum WatchMsg {
    Line(Bytes),
    /// Cut the connection without ending the chunked body.
    Abort,
}

struct Watcher {
    sel: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct Shared {
    state: Mutex<ApiState>,
    watchers: Mutex<Vec<Watcher>>,
    requests: Mutex<Vec<String>>,
    gone_as: Mutex<GoneAs>,
}

impl Shared {
    fn broadcast(&self, c: &Change) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|w| {
            !w.sel.matches(&c.object)
                || w.tx
                    .send(WatchMsg::Line(event_line(c.kind, &c.object)))
                    .is_ok()
        });
    }
}

/// The running stand-in.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeApi {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ApiState::default()),
            watchers: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            gone_as: Mutex::new(GoneAs::ErrorEvent),
        });
        let (stop, stopped) = oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("meshlane-kube-api".into())
            .spawn(move || serve(runtime, listener, s, stopped))?;
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or updates a pod object; returns the new resourceVersion.
    pub fn apply(&self, pod: Value) -> Option<u64> {
        let mut st = self.state();
        let c = st.apply(pod)?;
        self.shared.broadcast(&c);
        Some(c.rv)
    }

    pub fn delete(&self, namespace: &str, name: &str) -> Option<u64> {
        let mut st = self.state();
        let c = st.delete(namespace, name)?;
        self.shared.broadcast(&c);
        Some(c.rv)
    }

    pub fn resource_version(&self) -> u64 {
        self.state().resource_version()
    }

    /// Forgets history; `how` says how later stale watches are refused.
    pub fn compact(&self, how: GoneAs) {
        *self
            .shared
            .gone_as
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = how;
        self.state().compact();
    }

    /// While no watch is connected: cuts every open watch, makes the
    /// changes `f` makes, then compacts, all under the store's lock (no
    /// client can resume in between). A client resuming from before gets
    /// 410 Gone (as `how` says) and must relist to see the changes.
    pub fn change_while_away(&self, how: GoneAs, f: impl FnOnce(&mut ApiState)) {
        let mut st = self.state();
        self.drop_watches();
        *self
            .shared
            .gone_as
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = how;
        f(&mut st);
        st.compact();
    }

    /// Sends every open watch that asked for bookmarks a BOOKMARK at the
    /// current resourceVersion; returns how many got one.
    pub fn bookmark(&self) -> usize {
        let rv = self.state().resource_version();
        let line = event_line(
            "BOOKMARK",
            &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}),
        );
        let w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.iter()
            .filter(|w| w.bookmarks)
            .filter(|w| w.tx.send(WatchMsg::Line(line.clone())).is_ok())
            .count()
    }

    /// Cuts every open watch connection (no end of stream); returns how
    /// many were open.
    pub fn drop_watches(&self) -> usize {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = w
            .iter()
            .filter(|w| w.tx.send(WatchMsg::Abort).is_ok())
            .count();
        w.clear();
        n
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.retain(|w| !w.tx.is_closed());
        w.len()
    }

    /// "GET <path and query>" of every request served, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = stopped => {}
        }
    });
    runtime.shutdown_background();
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// `%XX` and `+` decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn handle(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    if let Ok(mut r) = shared.requests.lock() {
        r.push(line);
    }
    if req.method() != hyper::Method::GET || req.uri().path() != "/api/v1/pods" {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} is not served here", req.uri().path()),
        );
    }
    let q = query(&req);
    let sel = match Selector::parse(q.get("fieldSelector").map(String::as_str)) {
        Ok(s) => s,
        Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !is_watch {
        let limit = q.get("limit").and_then(|l| l.parse().ok());
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        return match st.list(&sel, limit, q.get("continue").map(String::as_str)) {
            Ok(v) => full(StatusCode::OK, v),
            Err(e) => status_error(StatusCode::GONE, "Expired", e),
        };
    }
    let from = match q.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("resourceVersion {v:?} is not valid"),
                )
            }
        },
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = mpsc::unbounded_channel();
    // Backlog and registration under the store's lock: no change is lost
    // or sent twice between them.
    let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    match st.watch_from(&sel, from) {
        WatchStart::Gone { requested, oldest } => {
            let how = *shared.gone_as.lock().unwrap_or_else(|e| e.into_inner());
            let status = gone_status(requested, oldest);
            if how == GoneAs::Http {
                return full(StatusCode::GONE, status);
            }
            let _ = tx.send(WatchMsg::Line(event_line("ERROR", &status)));
            drop(tx);
        }
        WatchStart::Backlog(changes) => {
            for c in changes {
                let _ = tx.send(WatchMsg::Line(event_line(c.kind, &c.object)));
            }
            shared
                .watchers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Watcher { sel, bookmarks, tx });
        }
    }
    drop(st);
    watch_response(rx, timeout)
}

/// The streaming body of a watch: lines until the server ends it (its
/// sender dropped), the timeout passes (a clean end), or an abort (the
/// connection is cut).
fn watch_response(
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
    let stream = futures::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match msg {
            Some(WatchMsg::Line(b)) => Some((Ok(Frame::data(b)), Some(rx))),
            Some(WatchMsg::Abort) => Some((
                Err(std::io::Error::other("watch connection cut by the test")),
                None,
            )),
            None => None,
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str) -> Value {
        json!({"metadata": {"namespace": "default", "name": name}, "spec": {"nodeName": node}})
    }

    #[test]
    fn versions_history_and_gone() {
        let mut st = ApiState::default();
        let sel = Selector::parse(Some("spec.nodeName=n1")).unwrap();
        st.apply(pod("a", "n1"));
        st.apply(pod("b", "n2"));
        let list = st.list(&sel, None, None).unwrap();
        assert_eq!(list["metadata"]["resourceVersion"], "2");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(st.apply(pod("a", "n1")).unwrap().kind, "MODIFIED");
        st.delete("default", "a");
        let WatchStart::Backlog(b) = st.watch_from(&sel, Some(2)) else {
            panic!("gone");
        };
        let kinds: Vec<&str> = b.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, vec!["MODIFIED", "DELETED"]);
        st.compact();
        assert!(matches!(
            st.watch_from(&sel, Some(2)),
            WatchStart::Gone { .. }
        ));
        assert!(matches!(st.watch_from(&sel, Some(4)), WatchStart::Backlog(b) if b.is_empty()));
        assert!(Selector::parse(Some("metadata.name=x")).is_err());
    }

    #[test]
    fn pages_continue_until_done() {
        let mut st = ApiState::default();
        for n in ["a", "b", "c"] {
            st.apply(pod(n, "n1"));
        }
        let sel = Selector { node: None };
        let p1 = st.list(&sel, Some(2), None).unwrap();
        assert_eq!(p1["items"].as_array().unwrap().len(), 2);
        let c = p1["metadata"]["continue"].as_str().unwrap().to_string();
        let p2 = st.list(&sel, Some(2), Some(&c)).unwrap();
        assert_eq!(p2["items"].as_array().unwrap().len(), 1);
        assert!(p2["metadata"].get("continue").is_none());
        assert_eq!(percent_decode("spec.nodeName%3Dn1"), "spec.nodeName=n1");
    }
}
