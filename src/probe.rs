//! Start-up checks: is this kernel and machine able to run the full data
//! path? Every program type, map type and helper meshlane uses is probed;
//! a missing piece is reported in one line with the kernel that brings it.
//! A node either runs everything or nothing: no pod is half-intercepted.

use libbpf_sys::{bpf_func_id, bpf_map_type, bpf_prog_type};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("meshlane must run as root (it loads BPF programs and attaches them to cgroups); effective uid is {0}")]
    NotRoot(u32),
    #[error("this kernel ({kernel}) lacks what meshlane needs: {missing}")]
    Missing { kernel: String, missing: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub what: String,
    pub since: &'static str,
    pub ok: bool,
}

const PROG_TYPES: &[(bpf_prog_type, &str, &str)] = &[
    (
        libbpf_sys::BPF_PROG_TYPE_SOCK_OPS,
        "sockops programs",
        "4.13",
    ),
    (libbpf_sys::BPF_PROG_TYPE_SK_MSG, "sk_msg programs", "4.17"),
    (libbpf_sys::BPF_PROG_TYPE_SK_SKB, "sk_skb programs", "4.14"),
    (
        libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        "cgroup sock_addr programs",
        "4.17",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCKOPT,
        "cgroup sockopt programs",
        "5.3",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_SK_LOOKUP,
        "sk_lookup programs",
        "5.9",
    ),
];

const MAP_TYPES: &[(bpf_map_type, &str, &str)] = &[
    (libbpf_sys::BPF_MAP_TYPE_SOCKHASH, "sockhash maps", "4.18"),
    (libbpf_sys::BPF_MAP_TYPE_LRU_HASH, "LRU hash maps", "4.10"),
    (
        libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY,
        "per-CPU arrays",
        "4.6",
    ),
    (libbpf_sys::BPF_MAP_TYPE_HASH, "hash maps", "3.19"),
];

const HELPERS: &[(bpf_prog_type, bpf_func_id, &str, &str)] = &[
    (
        libbpf_sys::BPF_PROG_TYPE_SOCK_OPS,
        libbpf_sys::BPF_FUNC_get_netns_cookie,
        "bpf_get_netns_cookie in sockops",
        "5.15",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_SK_MSG,
        libbpf_sys::BPF_FUNC_get_netns_cookie,
        "bpf_get_netns_cookie in sk_msg",
        "5.15",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_SK_MSG,
        libbpf_sys::BPF_FUNC_msg_redirect_hash,
        "bpf_msg_redirect_hash",
        "4.18",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_SOCK_OPS,
        libbpf_sys::BPF_FUNC_sock_hash_update,
        "bpf_sock_hash_update",
        "4.18",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        libbpf_sys::BPF_FUNC_get_netns_cookie,
        "bpf_get_netns_cookie in cgroup sock_addr",
        "5.7",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        libbpf_sys::BPF_FUNC_get_socket_cookie,
        "bpf_get_socket_cookie in cgroup sock_addr",
        "5.0",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCKOPT,
        libbpf_sys::BPF_FUNC_get_netns_cookie,
        "bpf_get_netns_cookie in cgroup sockopt",
        "5.15",
    ),
    (
        libbpf_sys::BPF_PROG_TYPE_SK_LOOKUP,
        libbpf_sys::BPF_FUNC_sk_assign,
        "bpf_sk_assign in sk_lookup",
        "5.9",
    ),
];

/// The running kernel's release string.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Probes every feature; no side effects beyond short-lived test loads.
pub fn features() -> Vec<Feature> {
    let mut out = Vec::new();
    for (ty, what, since) in PROG_TYPES {
        // SAFETY: plain probe call, NULL opts.
        let ok = unsafe { libbpf_sys::libbpf_probe_bpf_prog_type(*ty, std::ptr::null()) } == 1;
        out.push(Feature {
            what: (*what).into(),
            since,
            ok,
        });
    }
    for (ty, what, since) in MAP_TYPES {
        // SAFETY: as above.
        let ok = unsafe { libbpf_sys::libbpf_probe_bpf_map_type(*ty, std::ptr::null()) } == 1;
        out.push(Feature {
            what: (*what).into(),
            since,
            ok,
        });
    }
    for (prog, helper, what, since) in HELPERS {
        // SAFETY: as above.
        let ok =
            unsafe { libbpf_sys::libbpf_probe_bpf_helper(*prog, *helper, std::ptr::null()) } == 1;
        out.push(Feature {
            what: (*what).into(),
            since,
            ok,
        });
    }
    out
}

/// Fails with one line naming every missing piece and its kernel.
pub fn require_all() -> Result<Vec<Feature>, ProbeError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(ProbeError::NotRoot(uid));
    }
    let f = features();
    let missing: Vec<String> = f
        .iter()
        .filter(|x| !x.ok)
        .map(|x| format!("{} (Linux {})", x.what, x.since))
        .collect();
    if missing.is_empty() {
        Ok(f)
    } else {
        Err(ProbeError::Missing {
            kernel: kernel_release(),
            missing: missing.join(", "),
        })
    }
}

/// Kernels whose sockhash sockets can report FIONREAD 0 and miss epoll
/// wake-ups for bytes that arrived through the TCP stack while spliced
/// bytes are queued. The remedy is a pass-through stream verdict program.
/// Stable series known to carry the regression: 6.6.x, 6.12.x, 6.18.x.
pub fn kernel_needs_verdict_remedy() -> bool {
    needs_remedy(&kernel_release())
}

fn needs_remedy(release: &str) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    matches!((major, minor), (6, 6) | (6, 12) | (6, 18))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remedy_series() {
        assert!(needs_remedy("6.18.44-fc-v595"));
        assert!(needs_remedy("6.6.30"));
        assert!(needs_remedy("6.12.1-amd64"));
        assert!(!needs_remedy("6.1.0-13-amd64"));
        assert!(!needs_remedy("6.10.2"));
        assert!(!needs_remedy("garbage"));
    }
}
