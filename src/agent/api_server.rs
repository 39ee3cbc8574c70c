//! The async shell of the local API ([`crate::api`]): a unix socket (mode
//! 0600, root only) at the pin root's socket path; each connection sends
//! one request line and gets one reply line, done on a blocking thread by
//! the synchronous core (CNI requests by the agent's [`CniService`]). The
//! socket file goes away when the agent stops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::cni::attach::CniService;
use crate::layout::PinLayout;

/// Longest request line accepted (a CNI GC lists every valid attachment
/// of the node: thousands of ids fit).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Binds the socket; a stale file (no agent behind it: this agent holds
/// the pin root) is replaced.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

async fn one(
    stream: tokio::net::UnixStream,
    layout: PinLayout,
    cni: Arc<CniService>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no request within 10 s"))??;
    let reply = tokio::task::spawn_blocking(move || {
        crate::api::serve_line_with(&layout, Some(&cni), &line)
    })
    .await
    .map_err(std::io::Error::other)?;
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

/// Serves until `shutdown`; then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    layout: PinLayout,
    cni: Arc<CniService>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (layout, cni) = (layout.clone(), cni.clone());
                tokio::spawn(async move {
                    if let Err(e) = one(stream, layout, cni).await {
                        tracing::warn!(error = %e, "API connection");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}
