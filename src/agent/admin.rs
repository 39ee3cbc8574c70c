//! The admin server (hyper, HTTP/1.1): `/healthz/ready` (200 or 503 with
//! what is missing), `/healthz/live`, and `/metrics` (OpenMetrics text, or
//! 503 with the reason when the data path cannot be read).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::readiness::Readiness;
use crate::layout::PinLayout;
use crate::metrics::Metrics;

/// What the admin endpoints read.
pub struct AdminState {
    pub layout: PinLayout,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(code, "text/plain; charset=utf-8", body)
}

async fn route(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz/live" => text(StatusCode::OK, "alive\n".into()),
        "/healthz/ready" => {
            let st = state.clone();
            let missing = tokio::task::spawn_blocking(move || st.readiness.missing(&st.layout))
                .await
                .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")]);
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, missing.join("\n") + "\n")
            }
        }
        "/metrics" => {
            let st = state.clone();
            match tokio::task::spawn_blocking(move || st.metrics.encode()).await {
                Ok(Ok(body)) => reply(StatusCode::OK, OPENMETRICS, body),
                Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {other}\n"),
        ),
    }
}

/// Serves until `shutdown` turns true; connections in flight finish on
/// their own tasks.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(state, req).await) }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "admin connection");
                    }
                });
            }
        }
    }
}
