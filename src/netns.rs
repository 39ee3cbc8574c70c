//! Network namespaces: a pod is its netns. Reads a netns's cookie (the key
//! every BPF hook uses) and the pod IPs configured in it, without moving the
//! calling thread: the work runs on a short-lived thread that enters the netns.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use thiserror::Error;

const NSFS_MAGIC: i64 = 0x6e73_6673;
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("cannot open netns {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is not a network namespace (expected a file like /proc/PID/ns/net or /run/netns/NAME)"
    )]
    NotNetns(PathBuf),
    #[error("cannot enter netns {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("reading the netns cookie of {path}: {source}")]
    Cookie { path: PathBuf, source: nix::Error },
}

/// What meshlane needs to know about a pod's network namespace.
#[derive(Debug, Clone)]
pub struct NetnsInfo {
    pub cookie: u64,
    /// Global and unique-local addresses on non-loopback interfaces.
    pub addrs: Vec<IpAddr>,
}

/// Opens `path` and checks that it is a network namespace.
pub fn open_netns(path: &Path) -> Result<File, NetnsError> {
    let f = File::open(path).map_err(|e| NetnsError::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    let st = nix::sys::statfs::fstatfs(f.as_fd()).map_err(|e| NetnsError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if st.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(NetnsError::NotNetns(path.to_path_buf()));
    }
    // NS_GET_NSTYPE tells a netns from the other namespace kinds.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: ioctl on an fd we own, no argument.
    let ty = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ty != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns(path.to_path_buf()));
    }
    Ok(f)
}

/// Runs `f` on a thread that has entered the netns at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = open_netns(path)?;
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::Enter { path: p, source: e })?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The netns cookie and pod IPs of the netns at `path`.
pub fn inspect(path: &Path) -> Result<NetnsInfo, NetnsError> {
    let p = path.to_path_buf();
    in_netns(path, move || {
        let cookie = current_cookie().map_err(|e| NetnsError::Cookie {
            path: p.clone(),
            source: e,
        })?;
        Ok(NetnsInfo {
            cookie,
            addrs: current_pod_addrs(),
        })
    })?
}

/// Cookie of the calling thread's netns, read through SO_NETNS_COOKIE.
pub fn current_cookie() -> Result<u64, nix::Error> {
    let s = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .or_else(|_| {
        socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
    })?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, out-pointer and length of a u64.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(nix::Error::last());
    }
    Ok(cookie)
}

fn current_pod_addrs() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if a.interface_name == "lo" {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            // Link-local addresses are not pod IPs.
            if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            IpAddr::V6(ip)
        } else {
            continue;
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Whether `path` is the node's own network namespace: the one this
/// process (the agent, the CLI or the CNI plugin, which run in the node's
/// network) lives in.
pub fn is_host_netns(path: &Path) -> Result<bool, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let host = std::fs::metadata("/proc/self/ns/net").map_err(|source| NetnsError::Open {
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    Ok((ns.dev(), ns.ino()) == (host.dev(), host.ino()))
}
