//! The synchronous core of inbound pass-through: which (destination pod,
//! port) entries `ml_inbound_pass` should hold, and the writes that bring
//! the kernel there.
//!
//! A registered pod's entries come from its own decisions only: the
//! `inbound:<port>` destinations its engine decided PASSTHROUGH (its own
//! inbound chains for the port are plain pass-through and the
//! `inboundPassthrough` policy is on), keyed by that pod's netns cookie,
//! which is what its own sk_lookup instance looks up. [`plan`] compares
//! what is wanted with what the kernel holds (walked each round, so an
//! entry nobody wants, e.g. of a pod gone while no agent ran, goes too)
//! and [`apply`] writes: additions, then removals. A failed addition
//! leaves the port without an entry (the sidecar keeps steering it); a
//! failed removal is retried next round and reported.

use std::collections::BTreeSet;

use crate::datapath::InboundPassKey;
use crate::xds::decide::Decisions;

/// The entries of the pod whose netns cookie is `netns`.
pub fn wanted_for_pod(netns: u64, decisions: &Decisions) -> BTreeSet<InboundPassKey> {
    decisions
        .inbound_passthrough_ports()
        .into_iter()
        .map(|port| InboundPassKey { netns, port })
        .collect()
}

/// The writes [`apply`] does on the kernel map; implemented over the
/// pinned map by the shell (and in memory by the unit tests).
pub trait InboundMaps {
    fn put(&mut self, key: InboundPassKey) -> Result<(), String>;
    fn delete(&mut self, key: InboundPassKey) -> Result<(), String>;
}

/// What to write: keys to add and keys to delete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<InboundPassKey>,
    pub delete: Vec<InboundPassKey>,
}

/// From what the kernel holds (`present`) to `wanted`.
pub fn plan(wanted: &BTreeSet<InboundPassKey>, present: &BTreeSet<InboundPassKey>) -> Plan {
    Plan {
        add: wanted.difference(present).copied().collect(),
        delete: present.difference(wanted).copied().collect(),
    }
}

/// What one [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InboundApplied {
    pub added: usize,
    pub removed: usize,
    /// Ports left steered to the sidecar because their entry could not
    /// be written.
    pub add_failed: Vec<(InboundPassKey, String)>,
    /// Entries that should have gone and are still there (retried next
    /// round).
    pub remove_failed: Vec<(InboundPassKey, String)>,
    /// Entries held after the writes.
    pub held: usize,
}

/// Brings the kernel from `present` to `wanted`.
pub fn apply(
    wanted: &BTreeSet<InboundPassKey>,
    present: &BTreeSet<InboundPassKey>,
    kernel: &mut impl InboundMaps,
) -> InboundApplied {
    let p = plan(wanted, present);
    let mut done = InboundApplied {
        held: present.len(),
        ..Default::default()
    };
    for key in p.add {
        match kernel.put(key) {
            Ok(()) => {
                done.added += 1;
                done.held += 1;
            }
            Err(e) => done.add_failed.push((key, e)),
        }
    }
    for key in p.delete {
        match kernel.delete(key) {
            Ok(()) => {
                done.removed += 1;
                done.held -= 1;
            }
            Err(e) => done.remove_failed.push((key, e)),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::xds::decide::{DestKey, Destination, Verdict};

    fn dest(port: u16, decision: Verdict) -> Arc<Destination> {
        Arc::new(Destination {
            destination: DestKey::Inbound { port },
            decision,
            listeners: vec!["virtualInbound".into()],
            hostnames: Vec::new(),
            clusters: Vec::new(),
            reasons: Vec::new(),
            losses: Vec::new(),
            endpoints: Arc::default(),
        })
    }

    fn key(netns: u64, port: u16) -> InboundPassKey {
        InboundPassKey { netns, port }
    }

    /// An in-memory map that refuses the keys in `refuse`.
    #[derive(Default)]
    struct Mem {
        held: BTreeSet<InboundPassKey>,
        refuse: BTreeSet<InboundPassKey>,
        writes: BTreeMap<&'static str, usize>,
    }

    impl InboundMaps for Mem {
        fn put(&mut self, k: InboundPassKey) -> Result<(), String> {
            *self.writes.entry("put").or_default() += 1;
            if self.refuse.contains(&k) {
                return Err("map full".into());
            }
            self.held.insert(k);
            Ok(())
        }
        fn delete(&mut self, k: InboundPassKey) -> Result<(), String> {
            *self.writes.entry("delete").or_default() += 1;
            if self.refuse.contains(&k) {
                return Err("refused".into());
            }
            self.held.remove(&k);
            Ok(())
        }
    }

    #[test]
    fn only_passthrough_ports_of_the_pod_itself_are_wanted() {
        let d = Decisions {
            destinations: vec![
                dest(0, Verdict::Passthrough), // inbound:* is never keyed
                dest(8080, Verdict::Passthrough),
                dest(9090, Verdict::Sidecar),
                Arc::new(Destination {
                    destination: DestKey::Service {
                        address: "10.0.0.1".parse().unwrap(),
                        port: 80,
                    },
                    ..(*dest(80, Verdict::Bypass)).clone()
                }),
            ],
        };
        let w = wanted_for_pod(7, &d);
        assert_eq!(w, BTreeSet::from([key(7, 8080)]));
        assert!(wanted_for_pod(8, &d).iter().all(|k| k.netns == 8));
    }

    #[test]
    fn the_kernel_follows_wanted_and_strays_go() {
        let mut m = Mem::default();
        let wanted: BTreeSet<_> = [key(1, 80), key(1, 81)].into();
        // A stray entry (a pod gone while no agent ran) is deleted.
        m.held.insert(key(9, 80));
        let present = m.held.clone();
        let a = apply(&wanted, &present, &mut m);
        assert_eq!((a.added, a.removed, a.held), (2, 1, 2));
        assert_eq!(m.held, wanted);
        // Nothing changed: no write at all.
        let before = m.writes.clone();
        let present = m.held.clone();
        let a = apply(&wanted, &present, &mut m);
        assert_eq!((a.added, a.removed, a.held), (0, 0, 2));
        assert_eq!(m.writes, before);
        // The pod's decision changes: its entry goes.
        let wanted: BTreeSet<_> = [key(1, 80)].into();
        let present = m.held.clone();
        apply(&wanted, &present, &mut m);
        assert_eq!(m.held, wanted);
    }

    #[test]
    fn a_failed_write_leaves_the_port_steered_and_is_reported() {
        let mut m = Mem::default();
        m.refuse.insert(key(1, 81));
        let wanted: BTreeSet<_> = [key(1, 80), key(1, 81)].into();
        let a = apply(&wanted, &BTreeSet::new(), &mut m);
        assert_eq!(a.add_failed.len(), 1);
        assert_eq!(a.add_failed[0].0, key(1, 81));
        assert_eq!(m.held, BTreeSet::from([key(1, 80)]));
        assert_eq!(a.held, 1);
        // A removal that fails stays held and is retried next round.
        m.held.insert(key(1, 81));
        let present = m.held.clone();
        let a = apply(&BTreeSet::new(), &present, &mut m);
        assert_eq!(a.remove_failed.len(), 1);
        assert_eq!(a.held, 1);
        m.refuse.clear();
        let present = m.held.clone();
        let a = apply(&BTreeSet::new(), &present, &mut m);
        assert_eq!((a.removed, a.held), (1, 0));
        assert!(m.held.is_empty());
    }
}
