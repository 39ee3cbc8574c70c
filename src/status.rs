//! What is installed and what it is doing: links and their programs (with
//! the kernel's run count and time), pods, map fill and the data-path
//! counters. Reads pins only, so it works with or without a running agent.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use crate::abi::ml_counter;
use crate::layout::PinLayout;
use crate::pods::{PodError, PodRecord, Registry};

/// One data-path counter slot (enum ml_counter in bpf/meshlane.h): its
/// name in `status` and metrics, and what it counts.
pub struct CounterInfo {
    pub slot: ml_counter,
    pub name: &'static str,
    pub help: &'static str,
}

const fn c(slot: ml_counter, name: &'static str, help: &'static str) -> CounterInfo {
    CounterInfo { slot, name, help }
}

/// Every counter slot the BPF programs bump.
pub const COUNTERS: &[CounterInfo] = &[
    c(ml_counter::ML_CNT_MSG_SPLICED, "messages_spliced", "sk_msg sends redirected to the peer socket"),
    c(ml_counter::ML_CNT_BYTES_SPLICED, "bytes_spliced", "Bytes redirected to the peer socket"),
    c(ml_counter::ML_CNT_MSG_FALLBACK, "messages_fallback", "sk_msg sends passed to the TCP stack"),
    c(ml_counter::ML_CNT_BYTES_FALLBACK, "bytes_fallback", "Bytes passed to the TCP stack by sk_msg"),
    c(ml_counter::ML_CNT_SOCK_INSERTED, "sockets_inserted", "Sockets put in the splice map"),
    c(ml_counter::ML_CNT_SOCK_INSERT_FAILED, "sockets_insert_failed", "Sockets the splice map could not take (full): plain TCP"),
    c(ml_counter::ML_CNT_PAIRED_NAT, "sockets_paired_across_nat", "Sockets paired across an iptables REDIRECT"),
    c(ml_counter::ML_CNT_CONNECT_REDIRECTED, "connects_redirected", "Connects sent to the proxy"),
    c(ml_counter::ML_CNT_CONNECT_EXEMPT, "connects_exempt", "Connects of meshed pods left alone by the rules"),
    c(ml_counter::ML_CNT_ORIG_DST_ANSWERED, "original_dst_answered", "SO_ORIGINAL_DST answers given to proxies"),
    c(ml_counter::ML_CNT_INBOUND_STEERED, "inbound_steered", "Inbound connections assigned to a proxy's inbound listener"),
    c(ml_counter::ML_CNT_INBOUND_NO_LISTENER, "inbound_refused_no_listener", "Inbound connections refused: no proxy listening"),
    c(ml_counter::ML_CNT_DNS_REDIRECTED, "dns_redirected", "DNS queries sent to the proxy's DNS port"),
    c(ml_counter::ML_CNT_LISTENER_REGISTERED, "listeners_registered", "Proxy inbound listeners registered"),
    c(ml_counter::ML_CNT_STATE_FULL, "bookkeeping_insert_failed", "Connections whose interception state could not be kept (connect refused, or no original destination for the proxy)"),
    c(ml_counter::ML_CNT_SPLICE_THROTTLED, "splice_throttled", "Spliced directions handed to TCP because the reader fell behind"),
    c(ml_counter::ML_CNT_SPLICE_RESUMED, "splice_resumed", "Throttled directions spliced again"),
    c(ml_counter::ML_CNT_SOCK_NOT_SPLICED, "sockets_not_spliced", "Meshed sockets kept out of the splice map (app sockets, opted out, no local peer)"),
    c(ml_counter::ML_CNT_SOCK_EVICTED, "sockets_evicted", "Active sockets removed from the splice map"),
    c(ml_counter::ML_CNT_OVERLAP_TRIMMED, "overlaps_trimmed", "Overlapping retransmissions cut by the stream verdict"),
    c(ml_counter::ML_CNT_OVERLAP_BYTES, "overlap_bytes_trimmed", "Bytes cut from overlapping retransmissions"),
    c(ml_counter::ML_CNT_OVERLAP_UNTRIMMED, "overlaps_untrimmed", "Overlaps the stream verdict could not cut"),
    c(ml_counter::ML_CNT_DISCONNECT_PURGED, "sockets_purged_at_disconnect", "Sockets that left the splice map at disconnect"),
];

/// Maps whose entry count `status` reports.
const FILL_MAPS: [&str; 10] = [
    "ml_throttled",
    "ml_rcv_cursor",
    "ml_sock_addrs",
    "ml_pods",
    "ml_pod_ips",
    "ml_socks",
    "ml_peers",
    "ml_active",
    "ml_listeners",
    "ml_orig_pending",
];

#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub pin: PathBuf,
    pub link_id: u32,
    pub program: String,
    pub program_id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub pin_root: PathBuf,
    pub layout_version: u32,
    pub links: Vec<LinkStatus>,
    pub pods: Vec<PodRecord>,
    pub maps: Vec<MapFill>,
    pub counters: BTreeMap<String, u64>,
}

fn obj_get(path: &Path) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: valid C string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    // SAFETY: a non-negative fd from the kernel is ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
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
        let (id, run_count, run_time_ns) = prog_info(fd.as_fd())?;
        return Some(LinkStatus {
            pin: pin.into(),
            link_id: 0,
            program,
            program_id: id,
            run_count,
            run_time_ns,
        });
    }
    let mut li = libbpf_sys::bpf_link_info::default();
    let mut len = std::mem::size_of_val(&li) as u32;
    // SAFETY: info struct and its size.
    if unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut li, &mut len) } != 0 {
        return None;
    }
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
    let pi = prog_info_raw(fd.as_fd())?;
    let name: String = pi
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Some((name, pi.run_cnt, pi.run_time_ns))
}

fn prog_info_raw(fd: BorrowedFd<'_>) -> Option<libbpf_sys::bpf_prog_info> {
    let mut pi = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&pi) as u32;
    // SAFETY: info struct and its size.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut pi, &mut len) } != 0 {
        return None;
    }
    Some(pi)
}

/// (id, run count, run time ns) of a program fd.
fn prog_info(fd: BorrowedFd<'_>) -> Option<(u32, u64, u64)> {
    prog_info_raw(fd).map(|pi| (pi.id, pi.run_cnt, pi.run_time_ns))
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

/// Sums a per-CPU counter array; empty when it cannot be read (see
/// [`try_read_counters`] for the error).
pub fn read_counters(layout: &PinLayout) -> BTreeMap<String, u64> {
    try_read_counters(layout).unwrap_or_default()
}

/// [`read_counters`], or why the counters cannot be read.
pub fn try_read_counters(layout: &PinLayout) -> Result<BTreeMap<String, u64>, libbpf_rs::Error> {
    let mut out = BTreeMap::new();
    let m = MapHandle::from_pinned_path(layout.map("ml_counters"))?;
    for CounterInfo { slot, name, .. } in COUNTERS {
        let key = slot.0.to_ne_bytes();
        let total = match m.lookup_percpu(&key, MapFlags::ANY) {
            Ok(Some(per_cpu)) => per_cpu
                .iter()
                .map(|v| {
                    v.get(..8)
                        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                })
                .sum(),
            Ok(None) => 0,
            Err(e) => return Err(e),
        };
        out.insert((*name).to_string(), total);
    }
    Ok(out)
}

/// One counter by its display name (0 when unknown or not installed).
pub fn counter(layout: &PinLayout, name: &str) -> u64 {
    read_counters(layout).get(name).copied().unwrap_or(0)
}

/// Entries in a pinned map (by walking its keys).
pub fn map_fill(layout: &PinLayout, name: &str) -> Option<MapFill> {
    let m = MapHandle::from_pinned_path(layout.map(name)).ok()?;
    let capacity = m.max_entries();
    Some(MapFill {
        name: name.into(),
        entries: m.keys().count(),
        capacity,
    })
}

/// The node-wide links (cgroup hooks, socket-map programs) and their
/// programs' run stats; the per-pod links are left out.
pub fn node_links(layout: &PinLayout) -> Vec<LinkStatus> {
    pins_in(&layout.links_dir())
        .iter()
        .filter_map(|p| link_status(p))
        .collect()
}

pub fn collect(layout: &PinLayout) -> Result<Status, PodError> {
    layout.require_installed()?;
    let mut links = node_links(layout);
    links.extend(
        pins_in(&layout.pod_links_dir())
            .iter()
            .filter_map(|p| link_status(p)),
    );
    let pods = Registry::open(layout)?.list();
    let maps = FILL_MAPS
        .iter()
        .filter_map(|n| map_fill(layout, n))
        .collect();
    Ok(Status {
        pin_root: layout.root().into(),
        layout_version: crate::layout::LAYOUT_VERSION,
        links,
        pods,
        maps,
        counters: read_counters(layout),
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pin root: {} (layout v{})",
            self.pin_root.display(),
            self.layout_version
        )?;
        writeln!(f, "links:")?;
        for l in &self.links {
            let avg = if l.run_count > 0 {
                l.run_time_ns / l.run_count
            } else {
                0
            };
            writeln!(
                f,
                "  {:<22} link {:<5} prog {:<5} runs {:<10} avg {} ns  ({})",
                l.program,
                l.link_id,
                l.program_id,
                l.run_count,
                avg,
                l.pin.display()
            )?;
        }
        writeln!(f, "pods: {}", self.pods.len())?;
        for p in &self.pods {
            let mode = match p.mode {
                crate::pods::PodMode::Intercept => "intercept (eBPF)",
                crate::pods::PodMode::Accelerate => {
                    "accelerate (istio-init iptables; eBPF interception off)"
                }
            };
            let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
            let gone = if p.netns_alive {
                ""
            } else {
                " NETNS GONE (the agent removes it)"
            };
            writeln!(
                f,
                "  {:<20} cookie {:<8} {} uid {} ports out {} in {} ips [{}]{gone}",
                p.name,
                p.netns_cookie,
                mode,
                p.proxy_uid,
                p.outbound_port,
                p.inbound_port,
                ips.join(", ")
            )?;
        }
        writeln!(f, "maps:")?;
        for m in &self.maps {
            writeln!(f, "  {:<18} {:>8} / {}", m.name, m.entries, m.capacity)?;
        }
        writeln!(f, "counters:")?;
        for (k, v) in &self.counters {
            writeln!(f, "  {k:<30} {v}")?;
        }
        Ok(())
    }
}
