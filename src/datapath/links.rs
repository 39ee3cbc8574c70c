//! The pinned attachments, read back: node-wide links (and, before Linux
//! 6.10, the socket-map programs pinned in their place) with their
//! programs' run stats, each pod's sk_lookup link and whether its netns
//! still exists, and removing a pod's link. Attaching is the loader's.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::layout::PinLayout;
use super::names::LinkId;

/// A pinned object, opened (None: nothing pinned there).
pub(crate) fn obj_get(path: &Path) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: valid C string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    // SAFETY: a non-negative fd from the kernel is ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel's info on a link fd (None: not a link).
pub(crate) fn link_info(fd: BorrowedFd<'_>) -> Option<libbpf_sys::bpf_link_info> {
    let mut li = libbpf_sys::bpf_link_info::default();
    let mut len = std::mem::size_of_val(&li) as u32;
    // SAFETY: info struct and its size.
    if unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut li, &mut len) } != 0 {
        return None;
    }
    Some(li)
}

/// Whether the node-wide link (or program) `id` is pinned.
pub fn is_pinned(layout: &PinLayout, id: LinkId) -> bool {
    layout.link(id).exists()
}

/// One pinned attachment and its program's run stats.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub pin: PathBuf,
    pub link_id: u32,
    pub program: String,
    pub program_id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Whether a pinned object is a program rather than a link: before Linux
/// 6.10 the programs of ml_socks are attached to the map and pinned as
/// programs where their links would be.
fn is_prog(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.to_string_lossy().contains("bpf-prog"))
}

fn link_status(pin: &Path) -> Option<LinkStatus> {
    let fd = obj_get(pin)?;
    // The kernel keeps 15 characters of a name; the pin has all of it.
    let program = pin.file_name()?.to_string_lossy().into_owned();
    if is_prog(&fd) {
        let pi = prog_info(fd.as_fd())?;
        return Some(LinkStatus {
            pin: pin.into(),
            link_id: 0,
            program,
            program_id: pi.id,
            run_count: pi.run_cnt,
            run_time_ns: pi.run_time_ns,
        });
    }
    let li = link_info(fd.as_fd())?;
    let (_, run_count, run_time_ns) = prog_stats(li.prog_id).unwrap_or_default();
    Some(LinkStatus {
        pin: pin.into(),
        link_id: li.id,
        program,
        program_id: li.prog_id,
        run_count,
        run_time_ns,
    })
}

/// (name, run count, run time ns) of a program, from the kernel.
pub fn prog_stats(prog_id: u32) -> Option<(String, u64, u64)> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let pi = prog_info(fd.as_fd())?;
    let name: String = pi
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Some((name, pi.run_cnt, pi.run_time_ns))
}

/// (run count, run time ns) of the program behind `fd`, from the kernel.
pub fn prog_fd_stats(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    prog_info(fd).map(|pi| (pi.run_cnt, pi.run_time_ns))
}

fn prog_info(fd: BorrowedFd<'_>) -> Option<libbpf_sys::bpf_prog_info> {
    let mut pi = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&pi) as u32;
    // SAFETY: info struct and its size.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut pi, &mut len) } != 0 {
        return None;
    }
    Some(pi)
}

fn pins_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The node-wide links (cgroup hooks, socket-map programs) and their
/// programs' run stats; the per-pod links are left out.
pub fn node_links(layout: &PinLayout) -> Vec<LinkStatus> {
    pins_in(&layout.links_dir())
        .iter()
        .filter_map(|p| link_status(p))
        .collect()
}

/// Every pod's sk_lookup link and its program's run stats.
pub fn pod_links(layout: &PinLayout) -> Vec<LinkStatus> {
    pins_in(&layout.pod_links_dir())
        .iter()
        .filter_map(|p| link_status(p))
        .collect()
}

/// Netns cookies of the pinned pod links.
pub fn pod_link_cookies(layout: &PinLayout) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(layout.pod_links_dir()) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    v.sort_unstable();
    v
}

/// Unpins a pod's link (the kernel detaches it with its last reference);
/// whether there was one.
pub fn remove_pod_link(layout: &PinLayout, cookie: u64) -> bool {
    std::fs::remove_file(layout.pod_link(cookie)).is_ok()
}

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
    let Some(fd) = obj_get(pin) else {
        return LinkState::Missing;
    };
    let Some(info) = link_info(fd.as_fd()) else {
        return LinkState::Missing;
    };
    if info.type_ != libbpf_sys::BPF_LINK_TYPE_NETNS {
        return LinkState::Missing;
    }
    // SAFETY: the netns member is the one the kernel fills for netns links.
    match unsafe { info.__bindgen_anon_1.netns.netns_ino } {
        0 => LinkState::Severed,
        _ => LinkState::Alive,
    }
}

/// [`link_state`] of the pod `cookie`'s link.
pub fn pod_link_state(layout: &PinLayout, cookie: u64) -> LinkState {
    link_state(&layout.pod_link(cookie))
}

/// Turns on the kernel's per-program run count and time while the
/// returned fd lives (None: the kernel refused).
pub fn enable_run_stats() -> Option<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    // SAFETY: a non-negative fd is ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
