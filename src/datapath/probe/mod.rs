//! Start-up checks: is this kernel and machine able to run the full data
//! path? Every program type, map type and helper meshlane uses is probed;
//! a missing piece is reported in one line with the kernel that brings it.
//! A node either runs everything or nothing: no pod is half-intercepted.
//! [`behaviour`] goes further: experiments that show where a socket in a
//! socket map behaves differently from plain TCP on the running kernel.

pub mod behaviour;
pub(crate) mod bpf;

pub use behaviour::{kernel_behaviour, overlap_extra_bytes, KernelBehaviour};

use libbpf_sys::{bpf_func_id, bpf_map_type, bpf_prog_type};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("meshlane must run as root (it loads BPF programs and attaches them to cgroups); effective uid is {0}")]
    NotRoot(u32),
    #[error(
        "this kernel ({kernel}) is below meshlane's minimum, Linux {minimum}: it lacks {missing}"
    )]
    Missing {
        kernel: String,
        minimum: String,
        missing: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub what: String,
    pub since: &'static str,
    pub ok: bool,
    /// Missing it stops the agent; an optional feature is checked where it
    /// is used (backpressure: by the splice queue limit).
    pub required: bool,
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

/// The oldest kernel that has every required feature: the newest "since"
/// of the tables above (the optional psock queue length is not counted).
pub fn minimum_kernel() -> String {
    let required = PROG_TYPES
        .iter()
        .map(|(_, _, since)| *since)
        .chain(MAP_TYPES.iter().map(|(_, _, since)| *since))
        .chain(HELPERS.iter().map(|(_, _, _, since)| *since));
    required
        .max_by_key(|since| version_key(since))
        .unwrap_or("0")
        .to_string()
}

/// "5.15" -> (5, 15); anything unparsable sorts first.
fn version_key(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
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
            required: true,
        });
    }
    for (ty, what, since) in MAP_TYPES {
        // SAFETY: as above.
        let ok = unsafe { libbpf_sys::libbpf_probe_bpf_map_type(*ty, std::ptr::null()) } == 1;
        out.push(Feature {
            what: (*what).into(),
            since,
            ok,
            required: true,
        });
    }
    out.push(Feature {
        what: "psock queue length in BTF (splice backpressure)".into(),
        since: "6.x (sk_psock.msg_tot_len)",
        ok: kernel_counts_psock_queue(),
        required: false,
    });
    out.push(Feature {
        what: "bpf_link for sockmap programs (else attached to the pinned map)".into(),
        since: "6.10",
        ok: sockmap_links(),
        required: false,
    });
    for (prog, helper, what, since) in HELPERS {
        // SAFETY: as above.
        let ok =
            unsafe { libbpf_sys::libbpf_probe_bpf_helper(*prog, *helper, std::ptr::null()) } == 1;
        out.push(Feature {
            what: (*what).into(),
            since,
            ok,
            required: true,
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
        .filter(|x| !x.ok && x.required)
        .map(|x| format!("{} (Linux {})", x.what, x.since))
        .collect();
    if missing.is_empty() {
        Ok(f)
    } else {
        Err(ProbeError::Missing {
            kernel: kernel_release(),
            minimum: minimum_kernel(),
            missing: missing.join(", "),
        })
    }
}

/// Whether sk_msg and sk_skb programs attach to a socket map through a
/// bpf_link (Linux 6.10). Before that they attach to the map itself and
/// stay attached while the (pinned) map lives.
pub fn sockmap_links() -> bool {
    use std::os::fd::AsFd;
    let (Ok(map), Ok(prog)) = (bpf::sockmap(1), bpf::pass_msg_prog()) else {
        return false;
    };
    bpf::link(prog.as_fd(), map.as_fd(), libbpf_sys::BPF_SK_MSG_VERDICT).is_ok()
}

/// Whether the kernel's psock counts the bytes queued on it
/// (`struct sk_psock.msg_tot_len`, read from the kernel's BTF). Without it
/// the splice backpressure cannot see a reader falling behind.
pub fn kernel_counts_psock_queue() -> bool {
    use libbpf_rs::btf::{types::Struct, Btf};
    let Ok(btf) = Btf::from_vmlinux() else {
        return false;
    };
    btf.type_by_name::<Struct<'_>>("sk_psock")
        .is_some_and(|s| s.iter().any(|m| m.name.is_some_and(|n| n == "msg_tot_len")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_kernel_is_the_newest_required_feature() {
        assert_eq!(version_key("5.15"), (5, 15));
        assert!(version_key("5.15") > version_key("5.9"));
        assert_eq!(minimum_kernel(), "5.15");
    }

    #[test]
    fn a_missing_feature_names_the_minimum() {
        let e = ProbeError::Missing {
            kernel: "5.10.0-30-amd64".into(),
            minimum: minimum_kernel(),
            missing: "bpf_get_netns_cookie in sockops (Linux 5.15)".into(),
        };
        assert_eq!(
            e.to_string(),
            "this kernel (5.10.0-30-amd64) is below meshlane's minimum, Linux 5.15: \
             it lacks bpf_get_netns_cookie in sockops (Linux 5.15)"
        );
    }
}
