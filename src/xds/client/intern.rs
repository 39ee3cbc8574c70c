//! Sharing of identical resources between the node's proxy identities:
//! a resource is interned by (type, 128-bit hash of its encoded bytes), so
//! twenty identities that receive the same cluster hold one copy (`Arc`,
//! in its held form: see [`crate::xds::held`] and
//! [`crate::xds::assignment`]), and a resource already held is not
//! decoded again (a state-of-the-world response repeats every unchanged
//! resource). Entries are weak: a resource no stream holds any more is
//! freed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use crate::xds::assignment::Assignment;
use crate::xds::held::{HeldCluster, HeldListener, HeldRoute};
use crate::xds::resources::Named;

/// A 128-bit content hash (two SipHash passes with different prefixes).
fn content_hash(bytes: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        bytes.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Interned resources of one type.
#[derive(Debug)]
pub struct Pool<M> {
    entries: Mutex<PoolEntries<M>>,
}

#[derive(Debug)]
struct PoolEntries<M> {
    map: HashMap<u128, Weak<M>>,
    /// Size after the last purge of dead entries.
    purged_at: usize,
}

impl<M> Default for Pool<M> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(PoolEntries {
                map: HashMap::new(),
                purged_at: 0,
            }),
        }
    }
}

impl<M> Pool<M> {
    /// The shared copy of the resource encoded as `bytes`, made by
    /// `decode` only when no live copy exists (errors are not kept).
    pub fn intern<E>(
        &self,
        bytes: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<M, E>,
    ) -> Result<Arc<M>, E> {
        let key = content_hash(bytes);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = e.map.get(&key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let fresh = Arc::new(decode(bytes)?);
        e.map.insert(key, Arc::downgrade(&fresh));
        if e.map.len() > 2 * e.purged_at.max(64) {
            e.map.retain(|_, w| w.strong_count() > 0);
            e.purged_at = e.map.len();
        }
        Ok(fresh)
    }

    /// Distinct live copies held by anyone (drops dead entries).
    pub fn live(&self) -> usize {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.map.retain(|_, w| w.strong_count() > 0);
        e.purged_at = e.map.len();
        e.map.len()
    }
}

/// Interned maps of one type: identities whose whole set of a type is
/// the same (same names, same shared resources) hold one map. Keyed by a
/// hash of the resource pointers, confirmed by comparing entries
/// (pointers of live resources: the map holds them, so none is reused).
#[derive(Debug)]
pub struct SetPool<T> {
    entries: Mutex<HashMap<u64, Vec<WeakSet<T>>>>,
}

type WeakSet<T> = Weak<BTreeMap<Arc<str>, Arc<T>>>;

impl<T> Default for SetPool<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> SetPool<T> {
    /// The shared map equal to `m` (`m` itself when it is the first).
    pub fn share(&self, m: Named<T>) -> Named<T> {
        let mut h = DefaultHasher::new();
        for v in m.values() {
            // A resource determines its name: its pointer suffices.
            (Arc::as_ptr(v) as usize).hash(&mut h);
        }
        let key = h.finish();
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let slot = e.entry(key).or_default();
        slot.retain(|w| w.strong_count() > 0);
        let same = |o: &Named<T>| {
            Arc::ptr_eq(o, &m)
                || (o.len() == m.len()
                    && o.iter()
                        .zip(m.iter())
                        .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb)))
        };
        if let Some(found) = slot.iter().filter_map(Weak::upgrade).find(same) {
            return found;
        }
        slot.push(Arc::downgrade(&m));
        if e.len() > 64 {
            e.retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        m
    }
}

/// Interned subscriptions: identities that ask for the same names (the
/// EDS names of the same clusters: twenty pods of one namespace, 10,000
/// names each) hold one set. Keyed by a hash of the names, confirmed by
/// comparing the sets.
#[derive(Debug, Default)]
pub struct NameSetPool {
    entries: Mutex<HashMap<u64, Vec<WeakNames>>>,
}

type WeakNames = Weak<BTreeSet<Arc<str>>>;

impl NameSetPool {
    /// The shared set equal to `names` (a new one when it is the first).
    pub fn share(&self, names: BTreeSet<Arc<str>>) -> Arc<BTreeSet<Arc<str>>> {
        let mut h = DefaultHasher::new();
        for n in &names {
            n.hash(&mut h);
        }
        let key = h.finish();
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let slot = e.entry(key).or_default();
        slot.retain(|w| w.strong_count() > 0);
        if let Some(found) = slot.iter().filter_map(Weak::upgrade).find(|o| **o == names) {
            return found;
        }
        let fresh = Arc::new(names);
        slot.push(Arc::downgrade(&fresh));
        if e.len() > 64 {
            e.retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        fresh
    }
}

/// The node's pools, one per resource type (resources and whole sets),
/// shared by every stream.
#[derive(Debug, Default)]
pub struct Interner {
    pub clusters: Pool<HeldCluster>,
    pub endpoints: Pool<Assignment>,
    pub listeners: Pool<HeldListener>,
    pub routes: Pool<HeldRoute>,
    pub cluster_sets: SetPool<HeldCluster>,
    pub endpoint_sets: SetPool<Assignment>,
    pub listener_sets: SetPool<HeldListener>,
    pub route_sets: SetPool<HeldRoute>,
    /// Subscribed names (EDS, RDS).
    pub name_sets: NameSetPool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    fn bytes(name: &str, timeout: i64) -> Vec<u8> {
        Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout,
                nanos: 0,
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn identical_name_sets_are_held_once() {
        let pool = NameSetPool::default();
        let set = |names: &[&str]| -> BTreeSet<Arc<str>> {
            names.iter().map(|n| Arc::from(*n)).collect()
        };
        let a = pool.share(set(&["x", "y"]));
        let b = pool.share(set(&["x", "y"]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = pool.share(set(&["x"]));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let d = pool.share(set(&["x", "y"]));
        assert_eq!(*d, set(&["x", "y"]), "a new set once the old one is gone");
    }

    #[test]
    fn identical_resources_share_one_copy_until_dropped() {
        let pool: Pool<Cluster> = Pool::default();
        let decode = |b: &[u8]| Cluster::decode(b);
        let a = pool.intern(&bytes("c", 1), decode).unwrap();
        let b = pool.intern(&bytes("c", 1), decode).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = pool.intern(&bytes("c", 2), decode).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(pool.live(), 2);
        drop((a, b));
        assert_eq!(pool.live(), 1);
        assert!(pool.intern(b"\xff\xff", decode).is_err());
    }
}
