//! The inbound listener of a proxy that was already listening when its pod
//! was registered. The sockops listen callback only sees listeners opened
//! after registration; without this, sk_lookup would refuse every inbound
//! connection of such a pod until its proxy restarts. Finds the LISTEN
//! sockets on the pod's inbound port in its netns (/proc/thread-self/net/
//! tcp, tcp6), the process holding each (/proc/PID/fd), takes a copy of the
//! descriptor with pidfd_getfd and puts it in the listeners map
//! (`datapath::ListenersMap`) under the key the callback would have used.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use thiserror::Error;

use crate::datapath::{ListenersMap, MapError, PinLayout};
use crate::netns::{self, NetnsError};

#[derive(Debug, Error)]
pub enum ListenerError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("taking the proxy's listener on port {port} (pid {pid}, fd {fd}): {source}")]
    Take {
        port: u16,
        pid: u32,
        fd: u32,
        source: std::io::Error,
    },
    #[error("registering the proxy's listener: {0}")]
    Map(#[from] MapError),
}

/// One LISTEN socket of the netns: its inode and whether it is AF_INET6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listening {
    inode: u64,
    v6: bool,
}

/// LISTEN sockets on `port` in one /proc/net/tcp{,6} text.
fn parse_proc_tcp(text: &str, port: u16, v6: bool) -> Vec<Listening> {
    const TCP_LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let lport = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            (lport == port && *f.get(3)? == TCP_LISTEN && inode != 0)
                .then_some(Listening { inode, v6 })
        })
        .collect()
}

/// (pid, fd) of a process holding socket `inode`.
fn holder(inode: u64) -> Option<(u32, u32)> {
    let want = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for f in fds.flatten() {
            if std::fs::read_link(f.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                if let Some(fd) = f.file_name().to_str().and_then(|s| s.parse().ok()) {
                    return Some((pid, fd));
                }
            }
        }
    }
    None
}

/// A copy of `fd` of process `pid` (pidfd_open + pidfd_getfd).
fn take_fd(pid: u32, fd: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls; returned descriptors are owned at once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0);
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(got as i32))
    }
}

/// Puts every listener already open on `port` in the netns at `netns_path`
/// (cookie `netns_cookie`) into ml_listeners. Returns how many.
pub fn adopt(
    layout: &PinLayout,
    netns_path: &Path,
    netns_cookie: u64,
    port: u16,
) -> Result<usize, ListenerError> {
    let listening = netns::in_netns(netns_path, move || {
        let mut v = Vec::new();
        for (file, v6) in [
            ("/proc/thread-self/net/tcp", false),
            ("/proc/thread-self/net/tcp6", true),
        ] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            v.extend(parse_proc_tcp(&text, port, v6));
        }
        v
    })?;
    if listening.is_empty() {
        return Ok(0);
    }
    let map = ListenersMap::open(layout)?;
    let mut adopted = 0;
    for l in listening {
        // A socket nobody holds any more is closing: nothing to adopt.
        let Some((pid, fd)) = holder(l.inode) else {
            continue;
        };
        let sock = take_fd(pid, fd).map_err(|e| ListenerError::Take {
            port,
            pid,
            fd,
            source: e,
        })?;
        map.insert(netns_cookie, l.v6, port, sock.as_fd())?;
        tracing::info!(port, pid, v6 = l.v6, "adopted the proxy's inbound listener");
        adopted += 1;
    }
    Ok(adopted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listeners_on_the_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:3A9E 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_proc_tcp(text, 15006, false),
            vec![Listening {
                inode: 4242,
                v6: false
            }]
        );
        assert!(parse_proc_tcp(text, 15001, true).is_empty());
    }
}
