//! Registrations that outlive their pod. A pod's netns can vanish without
//! a `pod rm` (runtime crash, node reboot race); the kernel then severs the
//! pod's pinned sk_lookup link (its netns inode reads 0). The agent's sweep
//! removes such registrations, and the leftovers of an add or remove killed
//! half-way: a link without a record, or addresses with neither.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PodError, Registry};

/// What a pod's pinned link says about its netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Attached to a netns that exists.
    Alive,
    /// Pinned, but its netns is gone.
    Severed,
    /// No link pinned there (or not a netns link).
    Missing,
}

/// Reads the netns a pinned netns link is attached to.
pub fn link_state(pin: &Path) -> LinkState {
    let Ok(c) = CString::new(pin.as_os_str().as_encoded_bytes()) else {
        return LinkState::Missing;
    };
    // SAFETY: valid C string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return LinkState::Missing;
    }
    // SAFETY: a non-negative fd from the kernel is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = libbpf_sys::bpf_link_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: info struct and its size.
    if unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) } != 0
        || info.type_ != libbpf_sys::BPF_LINK_TYPE_NETNS
    {
        return LinkState::Missing;
    }
    // SAFETY: the netns member is the one the kernel fills for netns links.
    match unsafe { info.__bindgen_anon_1.netns.netns_ino } {
        0 => LinkState::Severed,
        _ => LinkState::Alive,
    }
}

/// One registration the sweep removed, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Swept {
    pub netns_cookie: u64,
    pub name: String,
    pub reason: String,
}

/// Cookies of the pinned pod links.
fn linked_cookies(reg: &Registry) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(reg.layout().pod_links_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .collect()
}

/// One pass. Returns None without doing anything while an add or remove
/// holds the registry (its half-written state is not a leftover yet).
pub fn sweep(reg: &Registry) -> Result<Option<Vec<Swept>>, PodError> {
    let Some(_held) = reg.layout().try_lock_registry()? else {
        return Ok(None);
    };
    // Every recorded pod, by cookie.
    let names: std::collections::HashMap<u64, String> = reg
        .list()
        .into_iter()
        .map(|p| (p.netns_cookie, p.name))
        .collect();
    let linked = linked_cookies(reg);
    let mut out = Vec::new();
    for cookie in &linked {
        let reason = match link_state(&reg.layout().pod_link(*cookie)) {
            LinkState::Severed => "netns gone",
            LinkState::Alive if !names.contains_key(cookie) => "registration never completed",
            _ => continue,
        };
        reg.remove_unlocked(*cookie, &format!("netns cookie {cookie}"))?;
        out.push(Swept {
            netns_cookie: *cookie,
            name: names.get(cookie).cloned().unwrap_or_default(),
            reason: reason.to_string(),
        });
    }
    for cookie in reg.ip_owners() {
        if names.contains_key(&cookie) || linked.contains(&cookie) {
            continue;
        }
        reg.remove_ips_of(cookie);
        out.push(Swept {
            netns_cookie: cookie,
            name: String::new(),
            reason: "addresses without a registration".to_string(),
        });
    }
    for s in &out {
        tracing::warn!(cookie = s.netns_cookie, pod = %s.name, reason = s.reason, "pod registration swept");
    }
    Ok(Some(out))
}
