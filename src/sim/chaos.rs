//! Provoked faults for soaks that must meet TCP retransmissions, and the
//! counter that shows what they did. Owns:
//!
//! - [`Loss`]: bpf/chaos.bpf.c's `ml_chaos_drop` on the clsact ingress (or
//!   egress) of an interface inside a pod's netns, dropping about one in N
//!   TCP packets that carry payload.
//! - [`Overlap`]: its `ml_chaos_overlap` on the clsact ingress of a pod's
//!   interface, turning about one in N payload packets into a trimmed head
//!   followed by the whole packet: an overlapping retransmission, with no
//!   byte lost or changed.
//! - [`overlap_events`]: how many segments that overlap bytes already
//!   received in order arrived in a pod's netns, from its TCP MIB counters
//!   ([`tcp_mib`]).
//!
//! Both faults are detached in `Drop`, panics included, and the clsact
//! qdisc they made is removed with the last of them on its interface. They
//! are loaded on their own, never through the loader: they share no map or
//! pin with the data path.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, TcHook, TC_EGRESS, TC_INGRESS};

use super::Pod;
use crate::skel::chaos::ChaosSkelBuilder;

/// Slots of `ml_chaos_stats` (enum ml_chaos_stat in bpf/chaos.bpf.c).
const STAT_SEEN: u32 = 0;
const STAT_DROPPED: u32 = 1;
const STAT_SEGS_DROPPED: u32 = 2;
const STAT_OVERLAPS: u32 = 3;
const STAT_FAILED: u32 = 4;

/// Which packets of an interface a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Arriving (clsact ingress): a drop here is lost after the sender let
    /// go of the packet, so TCP sees real loss and retransmits.
    Ingress,
    /// Leaving (clsact egress). The sender's own stack gets a drop back
    /// (NET_XMIT_DROP): TCP keeps the segment unsent, enters CWR and sends
    /// it again as new data, so this makes almost no retransmissions.
    Egress,
}

impl Direction {
    fn attach_point(self) -> libbpf_sys::bpf_tc_attach_point {
        match self {
            Direction::Ingress => TC_INGRESS,
            Direction::Egress => TC_EGRESS,
        }
    }
}

/// The programs of bpf/chaos.bpf.c.
#[derive(Debug, Clone, Copy)]
enum Prog {
    Drop,
    Overlap,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Drop => "ml_chaos_drop",
            Prog::Overlap => "ml_chaos_overlap",
        }
    }
}

/// `ml_chaos_drop` attached to one interface in one netns.
pub struct Loss {
    fault: Fault,
}

impl Loss {
    /// Drops about one in `one_in` payload-carrying TCP packets arriving at
    /// the pod's `eth0` (0: attached but dropping nothing). On both pods of
    /// a pair this loses packets of either direction.
    pub fn on(pod: &Pod, one_in: u32) -> Result<Loss> {
        Self::on_iface(pod, "eth0", Direction::Ingress, one_in)
    }

    /// Like [`Loss::on`] for the interface `iface` of the pod, either way.
    pub fn on_iface(pod: &Pod, iface: &str, dir: Direction, one_in: u32) -> Result<Loss> {
        let fault = Fault::attach(pod, iface, dir, Prog::Drop, one_in)?;
        Ok(Loss { fault })
    }

    /// Packets dropped so far.
    pub fn dropped(&self) -> u64 {
        self.fault.stat(STAT_DROPPED)
    }

    /// TCP segments in the dropped packets (a GSO packet carries several).
    pub fn segments_dropped(&self) -> u64 {
        self.fault.stat(STAT_SEGS_DROPPED)
    }

    /// Payload-carrying TCP packets the program looked at.
    pub fn seen(&self) -> u64 {
        self.fault.stat(STAT_SEEN)
    }

    /// The interface the program is on.
    pub fn iface(&self) -> &str {
        &self.fault.iface
    }
}

/// `ml_chaos_overlap` attached to the ingress of one interface in one netns.
pub struct Overlap {
    fault: Fault,
}

impl Overlap {
    /// Turns about one in `one_in` payload-carrying TCP packets arriving at
    /// the pod's `eth0` into an overlapping retransmission (0: none).
    pub fn on(pod: &Pod, one_in: u32) -> Result<Overlap> {
        Self::on_iface(pod, "eth0", one_in)
    }

    /// Like [`Overlap::on`] for the interface `iface` of the pod.
    pub fn on_iface(pod: &Pod, iface: &str, one_in: u32) -> Result<Overlap> {
        let fault = Fault::attach(pod, iface, Direction::Ingress, Prog::Overlap, one_in)?;
        Ok(Overlap { fault })
    }

    /// Overlapping retransmissions made so far.
    pub fn made(&self) -> u64 {
        self.fault.stat(STAT_OVERLAPS)
    }

    /// Packets chosen but left whole because a helper refused (clone or
    /// trim); none is lost.
    pub fn failed(&self) -> u64 {
        self.fault.stat(STAT_FAILED)
    }

    /// Payload-carrying TCP packets the program looked at.
    pub fn seen(&self) -> u64 {
        self.fault.stat(STAT_SEEN)
    }
}

/// One chaos program on one interface in one netns; removed on drop.
struct Fault {
    netns: PathBuf,
    iface: String,
    filter: Filter,
    /// `ml_chaos_stats`; the filter keeps the program (and so the map)
    /// alive, this handle only reads it.
    stats: MapHandle,
}

/// Where the filter is: enough to remove it (libbpf's hook structs carry
/// pointers, so they stay on the netns thread that uses them).
#[derive(Debug, Clone, Copy)]
struct Filter {
    ifindex: i32,
    attach_point: libbpf_sys::bpf_tc_attach_point,
    /// Handle and priority as the kernel chose them at attach.
    handle: u32,
    priority: u32,
    prog: Prog,
}

/// The clsact qdiscs faults are on, by (netns, interface): how many faults
/// use each and whether one of them made it. Removing a qdisc removes every
/// filter on it, so it goes only with its last fault. Held across an
/// attach, so attaches to one interface do not race.
static CLSACT: Mutex<BTreeMap<(PathBuf, String), Clsact>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Default)]
struct Clsact {
    faults: u32,
    made: bool,
}

/// What the attach, run inside the netns, hands back.
struct Attached {
    filter: Filter,
    /// The attach made the clsact qdisc.
    made_qdisc: bool,
    stats: MapHandle,
}

impl Fault {
    fn attach(pod: &Pod, iface: &str, dir: Direction, prog: Prog, one_in: u32) -> Result<Fault> {
        let name = iface.to_string();
        let key = (pod.netns.clone(), iface.to_string());
        let mut qdiscs = CLSACT.lock().unwrap_or_else(|p| p.into_inner());
        // A qdisc a fault already uses is there: asking for it again only
        // makes the kernel (and libbpf's log) say so.
        let make_qdisc = !qdiscs.contains_key(&key);
        let a = pod
            .run(move || attach(&name, dir, prog, one_in, make_qdisc))
            .with_context(|| format!("entering pod {}", pod.name))?
            .with_context(|| format!("{} on {iface} ({dir:?}) of pod {}", prog.name(), pod.name))?;
        let q = qdiscs.entry(key).or_default();
        q.faults += 1;
        q.made |= a.made_qdisc;
        Ok(Fault {
            netns: pod.netns.clone(),
            iface: iface.to_string(),
            filter: a.filter,
            stats: a.stats,
        })
    }

    fn stat(&self, slot: u32) -> u64 {
        let Ok(Some(v)) = self.stats.lookup(&slot.to_ne_bytes(), MapFlags::ANY) else {
            return 0;
        };
        v.get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        let filter = self.filter;
        let destroy = last_on_qdisc(&self.netns, &self.iface);
        // tc filters are netlink objects of the netns: remove them from
        // inside it. A netns already gone took the interface and filter.
        let _ = crate::netns::in_netns(&self.netns, move || detach(filter, destroy));
    }
}

/// Counts a fault off its clsact qdisc; true when it was the last one and
/// a fault made the qdisc, so it is to be removed.
fn last_on_qdisc(netns: &std::path::Path, iface: &str) -> bool {
    let mut qdiscs = CLSACT.lock().unwrap_or_else(|p| p.into_inner());
    let key = (netns.to_path_buf(), iface.to_string());
    let Some(q) = qdiscs.get_mut(&key) else {
        return false;
    };
    q.faults = q.faults.saturating_sub(1);
    if q.faults > 0 {
        return false;
    }
    qdiscs.remove(&key).is_some_and(|q| q.made)
}

/// Loads bpf/chaos.bpf.c with `one_in` and attaches `prog` to `iface` in
/// direction `dir`, first making the clsact qdisc if `make_qdisc` and it is
/// not there. Runs on a thread inside the pod's netns.
fn attach(
    iface: &str,
    dir: Direction,
    prog: Prog,
    one_in: u32,
    make_qdisc: bool,
) -> Result<Attached> {
    let ifindex =
        nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface {iface}"))?;
    let ifindex = i32::try_from(ifindex).context("interface index out of range")?;
    let mut obj = MaybeUninit::uninit();
    let mut open = ChaosSkelBuilder::default()
        .open(&mut obj)
        .context("opening chaos.bpf.o")?;
    let Some(ro) = open.maps.rodata_data.as_deref_mut() else {
        bail!("chaos.bpf.o has no .rodata");
    };
    ro.ml_chaos_one_in = one_in;
    let skel = open.load().context("loading chaos.bpf.o")?;
    let stats =
        MapHandle::try_from(&skel.maps.ml_chaos_stats).context("a handle on ml_chaos_stats")?;
    let made_qdisc = make_qdisc && ensure_clsact(ifindex)?;
    let fd = match prog {
        Prog::Drop => skel.progs.ml_chaos_drop.as_fd(),
        Prog::Overlap => skel.progs.ml_chaos_overlap.as_fd(),
    };
    let mut hook = TcHook::new(fd);
    let attach_point = dir.attach_point();
    hook.ifindex(ifindex)
        .attach_point(attach_point)
        .replace(false);
    match hook.attach() {
        Ok(hook) => Ok(Attached {
            filter: Filter {
                ifindex,
                attach_point,
                handle: hook.get_handle(),
                priority: hook.get_priority(),
                prog,
            },
            made_qdisc,
            stats,
        }),
        Err(e) => {
            if made_qdisc {
                destroy_clsact(ifindex);
            }
            Err(e).context("attaching to clsact")
        }
    }
}

/// libbpf's description of the clsact hook point(s) `attach_point` names
/// on `ifindex`.
fn tc_hook(ifindex: i32, attach_point: libbpf_sys::bpf_tc_attach_point) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as libbpf_sys::size_t,
        ifindex,
        attach_point,
        ..Default::default()
    }
}

/// Makes the clsact qdisc on `ifindex`; true when this call made it,
/// false when it was there already.
fn ensure_clsact(ifindex: i32) -> Result<bool> {
    let mut hook = tc_hook(ifindex, TC_EGRESS);
    // SAFETY: `hook` is a sized bpf_tc_hook that lives across the call;
    // libbpf reads it only during the call.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_create(&mut hook) };
    match -rc {
        0 => Ok(true),
        libc::EEXIST => Ok(false),
        e => Err(std::io::Error::from_raw_os_error(e)).context("creating the clsact qdisc"),
    }
}

/// Removes the filter, then (`destroy`) the clsact qdisc. Runs on a thread
/// inside the netns.
fn detach(f: Filter, destroy: bool) {
    let hook = tc_hook(f.ifindex, f.attach_point);
    let opts = libbpf_sys::bpf_tc_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_opts>() as libbpf_sys::size_t,
        handle: f.handle,
        priority: f.priority,
        ..Default::default()
    };
    // SAFETY: both structs are sized, live across the call and are only
    // read by libbpf during it.
    let rc = unsafe { libbpf_sys::bpf_tc_detach(&hook, &opts) };
    if rc != 0 {
        let e = std::io::Error::from_raw_os_error(-rc);
        eprintln!("chaos: detaching {}: {e}", f.prog.name());
    }
    if destroy {
        destroy_clsact(f.ifindex);
    }
}

/// Removes the clsact qdisc of `ifindex` and every filter on it.
fn destroy_clsact(ifindex: i32) {
    // Both attach points at once name the qdisc itself.
    let mut hook = tc_hook(ifindex, TC_EGRESS | TC_INGRESS);
    // SAFETY: as in ensure_clsact.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_destroy(&mut hook) };
    if rc != 0 {
        let e = std::io::Error::from_raw_os_error(-rc);
        eprintln!("chaos: removing the clsact qdisc: {e}");
    }
}

/// Segments that overlapped bytes already received in order, as the pod's
/// netns counted them since it was made: `TcpExtTCPDSACKOldSent -
/// TcpExtDelayedACKLost` (a D-SACK for old data is sent both for a wholly
/// old duplicate, which also counts DelayedACKLost, and for a segment whose
/// head is old and tail new, which does not). A proxy: it can undercount
/// (one D-SACK for several segments) and counts every socket of the netns.
pub fn overlap_events(pod: &Pod) -> Result<u64> {
    let mib = tcp_mib(pod)?;
    let get = |name: &str| {
        mib.get(name)
            .copied()
            .with_context(|| format!("no {name} in the TCP MIB of pod {}", pod.name))
    };
    Ok(get("TcpExtTCPDSACKOldSent")?.saturating_sub(get("TcpExtDelayedACKLost")?))
}

/// The pod's netns's TCP counters (groups `Tcp` of /proc/net/snmp and
/// `TcpExt` of /proc/net/netstat), named as nstat names them:
/// `TcpExtDelayedACKLost`, `TcpRetransSegs`.
pub fn tcp_mib(pod: &Pod) -> Result<BTreeMap<String, u64>> {
    // /proc/net is the netns of the process's main thread; thread-self is
    // this thread's, the one inside the pod.
    let read = |file: &'static str| {
        pod.run(move || std::fs::read_to_string(format!("/proc/thread-self/net/{file}")))
            .with_context(|| format!("entering pod {}", pod.name))?
            .with_context(|| format!("reading /proc/net/{file} of pod {}", pod.name))
    };
    let mut mib = parse_mib(&read("snmp")?, "Tcp");
    mib.extend(parse_mib(&read("netstat")?, "TcpExt"));
    Ok(mib)
}

/// The counters of `group` in a /proc/net/netstat or /proc/net/snmp text
/// (a `group:` line of names followed by a `group:` line of values), keyed
/// `<group><name>`. Values that are not counters (Tcp MaxConn is -1) are
/// left out.
fn parse_mib(text: &str, group: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{group}:");
    let mut out = BTreeMap::new();
    let mut lines = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{group}{n}"), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    const NETSTAT: &str = "TcpExt: SyncookiesSent DelayedACKLost TCPDSACKOldSent\n\
                           TcpExt: 0 7 12\n\
                           IpExt: InNoRoutes InOctets\n\
                           IpExt: 0 99\n";

    #[test]
    fn reads_the_counters_of_a_group() {
        let m = parse_mib(NETSTAT, "TcpExt");
        assert_eq!(m.get("TcpExtTCPDSACKOldSent"), Some(&12));
        assert_eq!(m.get("TcpExtDelayedACKLost"), Some(&7));
        assert_eq!(m.len(), 3);
        assert_eq!(parse_mib(NETSTAT, "IpExt").get("IpExtInOctets"), Some(&99));
    }

    #[test]
    fn a_missing_group_or_value_or_a_non_counter_is_left_out() {
        assert!(parse_mib(NETSTAT, "MPTcpExt").is_empty());
        assert!(parse_mib(NETSTAT, "Tcp").is_empty(), "TcpExt is not Tcp");
        let m = parse_mib("Tcp: RtoMin MaxConn X\nTcp: 200 -1\n", "Tcp");
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            [("TcpRtoMin".into(), 200)]
        );
    }
}
