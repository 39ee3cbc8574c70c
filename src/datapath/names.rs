//! Every pinned object's name, in one place: the shared maps ([`MapId`])
//! and the node-wide links ([`LinkId`]). A pin's file name is the BPF
//! object's own name (the map's, or the attached program's), so these are
//! the names bpftool shows too. Nothing outside `datapath` spells them;
//! the rest of the crate says `MapId::Pods`, never `"ml_pods"`.
//!
//! Adding a map is a variant here, its name, and a typed handle in `maps`;
//! the unit test below fails until every `ml_` map of the objects has a
//! variant.

/// A shared map, pinned at `<pin root>/v<N>/maps/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapId {
    /// netns cookie -> `ml_pod`: the pod registry.
    Pods,
    /// pod address -> netns cookie of its pod.
    PodIps,
    /// The sockhash of spliced sockets.
    Socks,
    /// Splicing's state of each socket in the sockhash: its peer's key,
    /// both kernel addresses (backpressure), the direction's hold.
    SockState,
    /// Active ends that may be behind a NAT, waiting for their passive end.
    Active,
    /// Destinations whose recent spliced connections were short.
    DestProfile,
    /// Per-socket cursor of the stream verdict.
    RcvCursor,
    /// The per-CPU counter array.
    Counters,
    /// Proxy inbound listeners (a sockhash sk_lookup assigns from).
    Listeners,
    /// An app socket's original destination (socket storage).
    AppOrig,
    /// A proxy socket's original destination (socket storage).
    ProxyOrig,
    /// Original destinations waiting for the proxy's socket.
    OrigPending,
    /// Bypass: (source pod, VIP, port) -> endpoint set id.
    BypassServices,
    /// Bypass: endpoint set id -> weighted endpoints.
    BypassEndpoints,
    /// Bypass: the agent's heartbeat and the stale grace.
    BypassClock,
    /// Bypass: connections and bytes per (source pod, service).
    BypassStats,
    /// Bypass: the feature's per-CPU counters.
    BypassCounters,
    /// Inbound pass-through: (destination pod, port) whose own inbound
    /// config is plain pass-through; sk_lookup leaves those to the app.
    InboundPass,
}

impl MapId {
    /// Every shared map.
    pub const ALL: [MapId; 18] = [
        MapId::Pods,
        MapId::PodIps,
        MapId::Socks,
        MapId::SockState,
        MapId::Active,
        MapId::DestProfile,
        MapId::RcvCursor,
        MapId::Counters,
        MapId::Listeners,
        MapId::AppOrig,
        MapId::ProxyOrig,
        MapId::OrigPending,
        MapId::BypassServices,
        MapId::BypassEndpoints,
        MapId::BypassClock,
        MapId::BypassStats,
        MapId::BypassCounters,
        MapId::InboundPass,
    ];

    /// Maps whose entries can be counted by walking their keys (socket
    /// storage cannot be walked), in the order `status` lists them.
    pub const WALKABLE: [MapId; 13] = [
        MapId::RcvCursor,
        MapId::Pods,
        MapId::PodIps,
        MapId::Socks,
        MapId::SockState,
        MapId::Active,
        MapId::DestProfile,
        MapId::Listeners,
        MapId::OrigPending,
        MapId::BypassServices,
        MapId::BypassEndpoints,
        MapId::BypassStats,
        MapId::InboundPass,
    ];

    /// The map's name in the BPF objects, and its pin's file name.
    pub const fn pin_name(self) -> &'static str {
        match self {
            MapId::Pods => "ml_pods",
            MapId::PodIps => "ml_pod_ips",
            MapId::Socks => "ml_socks",
            MapId::SockState => "ml_sock_state",
            MapId::Active => "ml_active",
            MapId::DestProfile => "ml_dest_profile",
            MapId::RcvCursor => "ml_rcv_cursor",
            MapId::Counters => "ml_counters",
            MapId::Listeners => "ml_listeners",
            MapId::AppOrig => "ml_app_orig",
            MapId::ProxyOrig => "ml_proxy_orig",
            MapId::OrigPending => "ml_orig_pending",
            MapId::BypassServices => "ml_bypass_svc",
            MapId::BypassEndpoints => "ml_bypass_eps",
            MapId::BypassClock => "ml_bypass_clock",
            MapId::BypassStats => "ml_bypass_stats",
            MapId::BypassCounters => "ml_bypass_cnt",
            MapId::InboundPass => "ml_inbound_pass",
        }
    }

    /// The map named `name` in the BPF objects (None: not a shared map).
    pub fn from_pin_name(name: &str) -> Option<MapId> {
        MapId::ALL.into_iter().find(|m| m.pin_name() == name)
    }

    /// Whether it is an LRU hash that must never evict a live socket's entry
    /// (see [`super::lru`] for what that costs). `ml_dest_profile` is an LRU
    /// too, but losing an entry there only means splicing a destination
    /// again, so it keeps the object's size.
    pub const fn is_lru(self) -> bool {
        matches!(self, MapId::SockState | MapId::Active)
    }

    /// Whether the install sizes it with `sockhash_size` (one entry per
    /// socket at most), rather than the size the object gives it.
    pub const fn sized_by_sockhash(self) -> bool {
        matches!(
            self,
            MapId::Socks | MapId::RcvCursor | MapId::SockState | MapId::Active | MapId::OrigPending
        )
    }
}

impl std::fmt::Display for MapId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pin_name())
    }
}

/// A node-wide attachment, pinned at `<pin root>/v<N>/links/<program>`
/// (a bpf_link; before Linux 6.10 the socket-map programs are pinned
/// there themselves, see `loader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkId {
    /// The one sockops program on the cgroup: splice.bpf.o's in a
    /// splice-only install, intercept.bpf.o's (both features) otherwise.
    Sockops,
    /// sk_msg on the sockhash.
    SpliceMsg,
    /// The stream verdict on the sockhash (when the plan attaches it).
    SpliceVerdict,
    Connect4,
    Connect6,
    Getsockopt,
    Getpeername4,
    Getpeername6,
    Getsockname6,
    Sendmsg4,
    Sendmsg6,
    Recvmsg4,
    Recvmsg6,
}

impl LinkId {
    /// The interception hooks on the cgroup (its sockops work rides in the
    /// one sockops program, [`LinkId::Sockops`]).
    pub const INTERCEPT: [LinkId; 10] = [
        LinkId::Connect4,
        LinkId::Connect6,
        LinkId::Getsockopt,
        LinkId::Getpeername4,
        LinkId::Getpeername6,
        LinkId::Getsockname6,
        LinkId::Sendmsg4,
        LinkId::Sendmsg6,
        LinkId::Recvmsg4,
        LinkId::Recvmsg6,
    ];

    /// The attached program's name, and the pin's file name.
    pub const fn pin_name(self) -> &'static str {
        match self {
            LinkId::Sockops => "ml_sockops",
            LinkId::SpliceMsg => "ml_splice_msg",
            LinkId::SpliceVerdict => "ml_splice_verdict",
            LinkId::Connect4 => "ml_connect4",
            LinkId::Connect6 => "ml_connect6",
            LinkId::Getsockopt => "ml_getsockopt",
            LinkId::Getpeername4 => "ml_getpeername4",
            LinkId::Getpeername6 => "ml_getpeername6",
            LinkId::Getsockname6 => "ml_getsockname6",
            LinkId::Sendmsg4 => "ml_sendmsg4",
            LinkId::Sendmsg6 => "ml_sendmsg6",
            LinkId::Recvmsg4 => "ml_recvmsg4",
            LinkId::Recvmsg6 => "ml_recvmsg6",
        }
    }
}

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pin_name())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use libbpf_rs::OpenObject;

    use super::*;
    use crate::datapath::skel::{inbound, intercept, splice};

    /// Names of the `ml_` maps and programs of one opened (not loaded) object.
    fn names(obj: &OpenObject) -> (BTreeSet<String>, BTreeSet<String>) {
        let maps = obj
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ml_"))
            .collect();
        let progs = obj
            .progs()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        (maps, progs)
    }

    fn object_names() -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut maps, mut progs) = (BTreeSet::new(), BTreeSet::new());
        let mut a = MaybeUninit::uninit();
        let s = splice::SpliceSkelBuilder::default().open(&mut a).unwrap();
        let (m, p) = names(s.open_object());
        maps.extend(m);
        progs.extend(p);
        let mut b = MaybeUninit::uninit();
        let s = intercept::InterceptSkelBuilder::default()
            .open(&mut b)
            .unwrap();
        let (m, p) = names(s.open_object());
        maps.extend(m);
        progs.extend(p);
        let mut c = MaybeUninit::uninit();
        let s = inbound::InboundSkelBuilder::default().open(&mut c).unwrap();
        maps.extend(names(s.open_object()).0);
        (maps, progs)
    }

    #[test]
    fn every_shared_map_of_the_objects_has_an_id_and_back() {
        let (maps, _) = object_names();
        let ids: BTreeSet<String> = MapId::ALL.iter().map(|m| m.pin_name().into()).collect();
        assert_eq!(maps, ids);
        for m in MapId::ALL {
            assert_eq!(MapId::from_pin_name(m.pin_name()), Some(m));
        }
        assert_eq!(MapId::from_pin_name("ml_nope"), None);
    }

    #[test]
    fn every_link_names_a_program_of_the_objects() {
        let (_, progs) = object_names();
        let all = [LinkId::Sockops, LinkId::SpliceMsg, LinkId::SpliceVerdict];
        for l in all.iter().chain(LinkId::INTERCEPT.iter()) {
            assert!(progs.contains(l.pin_name()), "{l} is no program: {progs:?}");
        }
    }
}
