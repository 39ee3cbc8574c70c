//! HAProxy from Debian as an Istio-like sidecar: runs as uid/gid 1337,
//! listens on 15001 (outbound) and 15006 (inbound), and forwards to the
//! original destination (`server ... 0.0.0.0`), which it learns from
//! SO_ORIGINAL_DST (REDIRECT or meshlane) or the local address (sk_lookup).
//! Inbound it connects to the app from 127.0.0.6 like Envoy does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Pod, PodProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    Tcp,
    Http,
}

pub struct Sidecar {
    pub process: PodProcess,
    dir: PathBuf,
}

impl Sidecar {
    /// Starts HAProxy in `pod` and waits until both listeners accept.
    pub fn start(pod: &Pod, mode: SidecarMode, uid: u32) -> Result<Self> {
        Self::start_as(pod, mode, uid, uid)
    }

    /// Like [`Sidecar::start`] with a proxy gid that differs from the uid.
    /// IPv4 and IPv6 get separate listeners: HAProxy asks SO_ORIGINAL_DST
    /// only on AF_INET sockets (a dual-stack one would forward to itself
    /// after an iptables REDIRECT).
    pub fn start_as(pod: &Pod, mode: SidecarMode, uid: u32, gid: u32) -> Result<Self> {
        let dir = PathBuf::from("/run/meshlane-test").join(format!("sidecar-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("stats.sock");
        let m = match mode {
            SidecarMode::Tcp => "tcp",
            SidecarMode::Http => "http",
        };
        let cfg = format!(
            "global\n  uid {uid}\n  gid {gid}\n  maxconn 8000\n  stats socket {sock} mode 600 level admin\n\
             defaults\n  mode {m}\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n  option dontlognull\n\
             frontend outbound\n  bind 0.0.0.0:15001\n  bind :::15001 v6only\n  default_backend original_dst\n\
             frontend inbound\n  bind 0.0.0.0:15006\n  bind :::15006 v6only\n  use_backend inbound_app if {{ dst 0.0.0.0/0 }}\n  default_backend inbound_app6\n\
             backend original_dst\n  server orig 0.0.0.0\n\
             backend inbound_app\n  server app 0.0.0.0 source 127.0.0.6\n\
             backend inbound_app6\n  server app 0.0.0.0 source ::6:0\n",
            sock = sock.display()
        );
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let process = pod.spawn(&["haproxy", "-db", "-f", &cfg_path.to_string_lossy()])?;
        let sc = Self { process, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if sc.stats().is_ok() {
                return Ok(sc);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("haproxy in pod {} did not come up", pod.name)
    }

    /// `show stat` rows: (proxy name, service name) -> total sessions.
    pub fn stats(&self) -> Result<Vec<(String, String, u64)>> {
        let mut s =
            UnixStream::connect(self.dir.join("stats.sock")).context("haproxy stats socket")?;
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

    /// Total sessions a frontend ("outbound" or "inbound") accepted.
    pub fn sessions(&self, frontend: &str) -> u64 {
        self.stats()
            .unwrap_or_default()
            .iter()
            .find(|(p, s, _)| p == frontend && s == "FRONTEND")
            .map_or(0, |r| r.2)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
