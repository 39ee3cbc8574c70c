//! How big the per-socket LRU maps must be so the kernel never evicts an
//! entry of a live socket.
//!
//! `ml_sock_state` and `ml_active` hold at most one entry per socket in
//! `ml_socks`, so `sockhash_size` entries would be
//! enough for a plain hash. They are LRU hashes (a missed delete ages out
//! instead of filling the map), and the kernel's LRU does not wait for the
//! map to be full before it evicts. Each CPU keeps a local list of free
//! nodes; when it runs out, it takes a batch (128 nodes before Linux 6.16,
//! at most 128 since) from the global free list and, if that list holds
//! fewer, evicts the difference from the inactive list — while other CPUs'
//! local lists may still hold free nodes. With exactly `sockhash_size`
//! entries, a small map or one close to full loses entries of live
//! connections: a lost `ml_sock_state` entry stops a pair splicing, or
//! drops the hold of a direction, which would then splice while its bytes
//! are still on the TCP path, out of order (and splicing's close path,
//! which trusts the entry's presence, would skip the socket).
//!
//! The remedy is room the batches can never exhaust: one batch per possible
//! CPU (the most that can sit in local lists) plus one for the CPU taking
//! its batch. Then the global free list always holds a whole batch while
//! at most `sockhash_size` entries are live, and the LRU never evicts.

use super::names::MapId;

/// The most free nodes one CPU takes from an LRU map's global free list at
/// a time (the kernel's LOCAL_FREE_TARGET; 6.16 and later take fewer).
pub const LOCAL_FREE_BATCH: u32 = 128;

/// The entries an LRU map needs so that `live` entries are never evicted on
/// a machine with `cpus` possible CPUs.
pub const fn lru_capacity(live: u32, cpus: u32) -> u32 {
    live.saturating_add(cpus.saturating_add(1).saturating_mul(LOCAL_FREE_BATCH))
}

/// The number of possible CPUs (what the kernel sizes per-CPU lists by),
/// or 1 if libbpf cannot tell.
pub fn possible_cpus() -> u32 {
    libbpf_rs::num_possible_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The max_entries the install gives map `id` for a sockhash of `size`
/// (None: the object's own size stands).
pub fn install_capacity(id: MapId, size: u32, cpus: u32) -> Option<u32> {
    if !id.sized_by_sockhash() {
        return None;
    }
    Some(if id.is_lru() {
        lru_capacity(size, cpus)
    } else {
        size
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_maps_get_one_batch_per_cpu_and_one_more() {
        assert_eq!(lru_capacity(17, 2), 17 + 3 * 128);
        assert_eq!(install_capacity(MapId::SockState, 17, 2), Some(17 + 384));
        assert_eq!(install_capacity(MapId::Active, 65536, 1), Some(65536 + 256));
    }

    #[test]
    fn plain_maps_keep_the_sockhash_size_and_others_their_own() {
        assert_eq!(install_capacity(MapId::Socks, 17, 64), Some(17));
        assert_eq!(install_capacity(MapId::RcvCursor, 17, 64), Some(17));
        assert_eq!(install_capacity(MapId::OrigPending, 17, 64), Some(17));
        assert_eq!(install_capacity(MapId::Pods, 17, 64), None);
    }

    #[test]
    fn capacity_saturates_instead_of_wrapping() {
        assert_eq!(lru_capacity(u32::MAX - 10, 4), u32::MAX);
    }

    /// The sizing against the running kernel: `live` entries written from
    /// alternating CPUs (so each CPU keeps taking batches) all stay. With
    /// exactly `live` entries, kernels before 6.16 evict some of them.
    #[test]
    fn no_live_entry_is_evicted_when_cpus_take_turns() {
        if crate::datapath::probe::behaviour::skip_without_root() {
            return;
        }
        let cpus = possible_cpus();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let live = 17u32;
        let entries = lru_capacity(live, cpus);
        let map = kernel::lru_map(entries);
        for round in 0..4u32 {
            for k in 0..live {
                let cpu = (k as usize + round as usize) % online;
                kernel::on_cpu(cpu, || kernel::put(&map, k, round));
            }
        }
        for k in 0..live {
            assert_eq!(
                kernel::get(&map, k),
                Some(3),
                "entry {k} of {live} was evicted from an LRU map of {entries}"
            );
        }
    }

    mod kernel {
        use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

        pub fn lru_map(entries: u32) -> MapHandle {
            let opts = libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            MapHandle::create(MapType::LruHash, Some("ml_lru_test"), 4, 4, entries, &opts)
                .expect("creating an LRU hash")
        }

        pub fn put(map: &MapHandle, k: u32, v: u32) {
            map.update(&k.to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)
                .expect("LRU update");
        }

        pub fn get(map: &MapHandle, k: u32) -> Option<u32> {
            let v = map
                .lookup(&k.to_ne_bytes(), MapFlags::ANY)
                .expect("LRU lookup")?;
            Some(u32::from_ne_bytes(v.try_into().ok()?))
        }

        /// Runs `f` on a thread pinned to `cpu`.
        pub fn on_cpu(cpu: usize, f: impl FnOnce() + Send) {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu).expect("cpu index");
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .expect("pinning the writer to one CPU");
                    f();
                });
            });
        }
    }
}
