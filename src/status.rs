//! What is installed and what it is doing: links and their programs (with
//! the kernel's run count and time), pods, map fill and the data-path
//! counters. Reads the pins through `datapath`, so it works with or
//! without a running agent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::abi::ml_counter;
use crate::datapath::{links, maps, CountersMap, MapError, MapId, PinLayout};
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
    c(ml_counter::ML_CNT_INBOUND_PASSTHROUGH, "inbound_passthrough", "Inbound connections left to the app's own listener: the pod's inbound config for the port is pass-through"),
    c(ml_counter::ML_CNT_SPLICE_SHORT_SKIPPED, "sockets_short_not_spliced", "Active sockets kept out of the splice map because their destination's recent connections were short (fewer messages than splice_min_messages)"),
];

pub use crate::datapath::links::{node_links, prog_stats, LinkStatus};
pub use crate::datapath::MapFill;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub pin_root: PathBuf,
    pub layout_version: u32,
    pub links: Vec<LinkStatus>,
    pub pods: Vec<PodRecord>,
    pub maps: Vec<MapFill>,
    pub counters: BTreeMap<String, u64>,
}

/// Sums a per-CPU counter array; empty when it cannot be read (see
/// [`try_read_counters`] for the error).
pub fn read_counters(layout: &PinLayout) -> BTreeMap<String, u64> {
    try_read_counters(layout).unwrap_or_default()
}

/// [`read_counters`], or why the counters cannot be read.
pub fn try_read_counters(layout: &PinLayout) -> Result<BTreeMap<String, u64>, MapError> {
    let sums = CountersMap::open(layout)?.sums()?;
    Ok(COUNTERS
        .iter()
        .map(|c| (c.name.to_string(), sums[c.slot.0 as usize]))
        .collect())
}

/// One counter by its display name (0 when unknown or not installed).
pub fn counter(layout: &PinLayout, name: &str) -> u64 {
    read_counters(layout).get(name).copied().unwrap_or(0)
}

/// Entries in a pinned map (by walking its keys); None when it cannot be
/// opened.
pub fn map_fill(layout: &PinLayout, map: MapId) -> Option<MapFill> {
    maps::fill(layout, map).ok()
}

pub fn collect(layout: &PinLayout) -> Result<Status, PodError> {
    layout.require_installed()?;
    let mut links = node_links(layout);
    links.extend(links::pod_links(layout));
    let pods = Registry::open(layout)?.list();
    let maps = MapId::WALKABLE
        .into_iter()
        .filter_map(|m| map_fill(layout, m))
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
        writeln!(
            f,
            "links (runs and time: kernel BPF stats, counted only while they are on, e.g. agent --bpf-run-stats):"
        )?;
        for l in &self.links {
            let avg = l.run_time_ns.checked_div(l.run_count).unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::COUNTER_COUNT;

    #[test]
    fn every_counter_slot_has_one_name() {
        let mut slots: Vec<u32> = COUNTERS.iter().map(|c| c.slot.0).collect();
        slots.sort_unstable();
        let want: Vec<u32> = (0..COUNTER_COUNT as u32).collect();
        assert_eq!(slots, want);
        let mut names: Vec<&str> = COUNTERS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNTERS.len());
    }
}
