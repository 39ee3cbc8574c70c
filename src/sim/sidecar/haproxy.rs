//! HAProxy from Debian as the sidecar, run as the options' `uid`/`gid` from
//! the start (through `setpriv`, like Istio's sidecar container, so its
//! listeners and every socket it opens belong to the proxy uid),
//! frontends `outbound` (15001) and `inbound` (15006), original-destination
//! servers (`server ... 0.0.0.0`, learnt from SO_ORIGINAL_DST after REDIRECT
//! or meshlane, or from the local address after sk_lookup). IPv4 and IPv6
//! get separate listeners: HAProxy asks SO_ORIGINAL_DST only on AF_INET
//! sockets (a dual-stack one would forward to itself after a REDIRECT).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{SidecarMode, SidecarOptions};
use crate::sim::{Pod, PodProcess};

/// Writes the config and starts HAProxy; returns it and its stats socket.
pub(super) fn spawn(pod: &Pod, o: &SidecarOptions, dir: &Path) -> Result<(PodProcess, PathBuf)> {
    let sock = dir.join("stats.sock");
    let mode = match o.mode {
        SidecarMode::Tcp => "tcp",
        SidecarMode::Http => "http",
    };
    let cfg = format!(
        "global\n  maxconn 8000\n  stats socket {sock} mode 600 level admin\n\
         defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n  option dontlognull\n\
         frontend outbound\n  bind 0.0.0.0:15001\n  bind :::15001 v6only\n  default_backend original_dst\n\
         frontend inbound\n  bind 0.0.0.0:15006\n  bind :::15006 v6only\n  use_backend inbound_app if {{ dst 0.0.0.0/0 }}\n  default_backend inbound_app6\n\
         backend original_dst\n  server orig 0.0.0.0\n\
         backend inbound_app\n  server app 0.0.0.0 source 127.0.0.6\n\
         backend inbound_app6\n  server app 0.0.0.0 source ::6:0\n",
        sock = sock.display()
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg)?;
    // It creates its stats socket in `dir`.
    let cfg = cfg_path.to_string_lossy();
    let process = super::spawn_as_proxy(pod, o, dir, &["haproxy", "-db", "-f", &cfg])?;
    Ok((process, sock))
}

/// `show stat` rows: (proxy name, service name, total sessions).
pub(super) fn stats(sock: &Path) -> Result<Vec<(String, String, u64)>> {
    let mut s = UnixStream::connect(sock).context("haproxy stats socket")?;
    s.write_all(b"show stat\n")?;
    let mut out = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line?;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 7 {
            out.push((
                f[0].to_string(),
                f[1].to_string(),
                f[7].parse().unwrap_or(0),
            ));
        }
    }
    Ok(out)
}

/// HTTP requests a frontend ("outbound" or "inbound") received (`req_tot`
/// of its FRONTEND row, found by the CSV header's column name); 0 when
/// unreadable.
pub(super) fn frontend_requests(sock: &Path, frontend: &str) -> u64 {
    show_stat(sock)
        .ok()
        .and_then(|csv| csv_field(&csv, frontend, "FRONTEND", "req_tot"))
        .unwrap_or(0)
}

/// The raw `show stat` CSV.
fn show_stat(sock: &Path) -> Result<String> {
    let mut s = UnixStream::connect(sock).context("haproxy stats socket")?;
    s.write_all(b"show stat\n")?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out)
}

/// Column `field` (named in the `# pxname,svname,...` header) of the row
/// for proxy `px`, service `sv`.
fn csv_field(csv: &str, px: &str, sv: &str, field: &str) -> Option<u64> {
    let header = csv.lines().find_map(|l| l.strip_prefix("# "))?;
    let col = header.split(',').position(|h| h == field)?;
    csv.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > col && f[0] == px && f[1] == sv)
        .and_then(|f| f[col].parse().ok())
}

/// Total sessions a frontend ("outbound" or "inbound") accepted.
pub(super) fn frontend_sessions(sock: &Path, frontend: &str) -> u64 {
    stats(sock)
        .unwrap_or_default()
        .iter()
        .find(|(p, s, _)| p == frontend && s == "FRONTEND")
        .map_or(0, |r| r.2)
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn finds_a_column_by_its_header_name() {
        let csv = "# pxname,svname,stot,req_tot,\noutbound,FRONTEND,4,7,\ninbound,FRONTEND,2,,\noriginal_dst,orig,4,,\n";
        assert_eq!(csv_field(csv, "outbound", "FRONTEND", "req_tot"), Some(7));
        assert_eq!(csv_field(csv, "outbound", "FRONTEND", "stot"), Some(4));
        assert_eq!(csv_field(csv, "inbound", "FRONTEND", "req_tot"), None);
        assert_eq!(csv_field(csv, "outbound", "FRONTEND", "nope"), None);
        assert_eq!(
            csv_field("no header\n", "outbound", "FRONTEND", "stot"),
            None
        );
    }
}
