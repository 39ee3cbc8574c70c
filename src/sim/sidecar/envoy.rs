//! Envoy as the sidecar, the default where installed (see
//! [`super::binary`]): runs as the proxy uid/gid through `setpriv`, one
//! worker thread (`--concurrency 1`, like the HAProxy sidecar pinned to one
//! CPU), no hot restart, the bootstrap from [`super::envoy_bootstrap`] and its admin API
//! on a unix socket, which answers readiness and listener counters.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::envoy_bootstrap::{self, BootstrapParams};
use super::{SidecarOptions, SidecarProxy};
use crate::sim::{Pod, PodProcess};

pub(super) fn log_path(dir: &Path) -> PathBuf {
    dir.join("envoy.log")
}

/// Writes the bootstrap and starts Envoy; returns it and its admin socket.
/// `ads`: the control plane's socket, for a sidecar configured over ADS.
pub(super) fn spawn(
    pod: &Pod,
    o: &SidecarOptions,
    dir: &Path,
    ads: Option<&Path>,
) -> Result<(PodProcess, PathBuf)> {
    let envoy = SidecarProxy::Envoy.locate()?;
    let admin = dir.join("admin.sock");
    let bootstrap = dir.join("bootstrap.pb");
    let params = BootstrapParams {
        node_id: super::node_id(pod),
        node_cluster: format!("{}.default", pod.name),
        admin_socket: &admin,
        mode: o.mode,
        outbound_port: envoy_bootstrap::ISTIO_OUTBOUND_PORT,
        inbound_port: envoy_bootstrap::ISTIO_INBOUND_PORT,
        ipv6: pod.ip6.is_some(),
        ads,
    };
    std::fs::write(&bootstrap, envoy_bootstrap::encode(&params))
        .with_context(|| format!("writing {}", bootstrap.display()))?;
    let (envoy, bootstrap, log) = (
        envoy.to_string_lossy().into_owned(),
        bootstrap.to_string_lossy().into_owned(),
        log_path(dir).to_string_lossy().into_owned(),
    );
    // It creates its admin socket and log in `dir`.
    let process = super::spawn_as_proxy(
        pod,
        o,
        dir,
        &[
            &envoy,
            "-c",
            &bootstrap,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "--log-path",
            &log,
        ],
    )?;
    Ok((process, admin))
}

/// True once the admin API says the server is LIVE (listeners bound).
pub(super) fn ready(admin: &Path) -> bool {
    matches!(admin_get(admin, "/ready"), Ok((200, body)) if body.trim() == "LIVE")
}

/// `listener.<stats>.downstream_cx_total`: connections the outbound or
/// inbound listener accepted; 0 when unreadable.
pub(super) fn listener_connections(admin: &Path, stats: &str) -> u64 {
    let name = format!("listener.{stats}.downstream_cx_total");
    admin_get(admin, "/stats?filter=downstream_cx_total")
        .ok()
        .and_then(|(_, body)| stat_value(&body, &name))
        .unwrap_or(0)
}

/// `http.<side>.downstream_rq_total`: HTTP requests the outbound or inbound
/// side's connection managers received (their stat prefix is the side's
/// word); 0 when unreadable.
pub(super) fn http_requests(admin: &Path, side: &str) -> u64 {
    let name = format!("http.{side}.downstream_rq_total");
    admin_get(admin, "/stats?filter=downstream_rq_total")
        .ok()
        .and_then(|(_, body)| stat_value(&body, &name))
        .unwrap_or(0)
}

/// Any counter or gauge by exact name, from the admin API.
pub(super) fn stat(admin: &Path, name: &str) -> Option<u64> {
    let (_, body) = admin_get(admin, "/stats").ok()?;
    stat_value(&body, name)
}

/// The value of `name` in Envoy's plain-text `/stats` output
/// (`name: value` per line).
pub(super) fn stat_value(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One GET on the admin API over its unix socket: (status, body).
fn admin_get(admin: &Path, path: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(admin).context("envoy admin socket")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: envoy-admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Status and body of an HTTP/1.1 response (identity or chunked).
pub(super) fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("envoy admin: truncated response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("envoy admin: no status code")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            bail!("envoy admin: bad chunk header");
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("envoy admin: bad chunk size")?;
        if size == 0 {
            return Ok((status, out));
        }
        let Some(chunk) = after.get(..size) else {
            bail!("envoy admin: short chunk");
        };
        out.push_str(chunk);
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_identity_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nLIVE\n";
        assert_eq!(parse_response(plain).unwrap(), (200, "LIVE\n".to_string()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, "hello world".to_string())
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn finds_one_stat_by_exact_name() {
        let body = "listener.outbound.downstream_cx_total: 7\nlistener.inbound.downstream_cx_total: 3\nlistener.outbound.downstream_cx_total_x: 9\n";
        assert_eq!(
            stat_value(body, "listener.outbound.downstream_cx_total"),
            Some(7)
        );
        assert_eq!(
            stat_value(body, "listener.inbound.downstream_cx_total"),
            Some(3)
        );
        assert_eq!(stat_value(body, "listener.other.downstream_cx_total"), None);
    }
}
