//! [`EndpointList`]: the endpoints a bypass may pick, held packed. A
//! decision state holds one list per judged cluster (shared with the
//! destinations that reach only that cluster), 100,000 endpoints at mesh
//! scale, so each is held in 36 bytes (address, port, weight, priority,
//! and indexes into the list's own table of cluster and locality names)
//! instead of as an [`Endpoint`] with two shared-name pointers (64
//! bytes). Read back as [`Endpoint`] values; serialised exactly as the
//! list of them it stands for.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::cluster::Endpoint;

/// `locality` of an endpoint without one.
const NO_LOCALITY: u32 = u32::MAX;

/// One endpoint, its names as indexes into [`Packed::names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedEndpoint {
    address: IpAddr,
    port: u16,
    /// Engine weights fit u32 (an endpoint's own, or its share scaled to
    /// at most 1,000,000); a larger one read from JSON saturates.
    weight: u32,
    priority: u32,
    locality: u32,
    cluster: u32,
}

#[derive(Debug)]
struct Packed {
    /// Cluster and locality names, each once.
    names: Box<[Arc<str>]>,
    endpoints: Box<[PackedEndpoint]>,
}

impl Packed {
    fn name(&self, i: u32) -> &Arc<str> {
        &self.names[i as usize]
    }

    fn unpack(&self, p: &PackedEndpoint) -> Endpoint {
        Endpoint {
            address: p.address,
            port: p.port,
            weight: u64::from(p.weight),
            priority: p.priority,
            locality: (p.locality != NO_LOCALITY).then(|| Arc::clone(self.name(p.locality))),
            cluster: Arc::clone(self.name(p.cluster)),
        }
    }
}

/// Endpoints in the order given (the engine gives them sorted). Cloning
/// shares the list; an empty list allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct EndpointList(Option<Arc<Packed>>);

impl EndpointList {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.endpoints.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoint at `i`.
    pub fn get(&self, i: usize) -> Option<Endpoint> {
        let p = self.0.as_ref()?;
        p.endpoints.get(i).map(|e| p.unpack(e))
    }

    /// Every endpoint, in order.
    pub fn iter(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.0
            .iter()
            .flat_map(|p| p.endpoints.iter().map(move |e| p.unpack(e)))
    }

    pub fn to_vec(&self) -> Vec<Endpoint> {
        self.iter().collect()
    }

    /// True when both are the same shared list (or both empty).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

/// Indexes of names, each kept once (a list has a few: its clusters and
/// their localities, mostly the same shared string over and over).
#[derive(Default)]
struct NameTable {
    names: Vec<Arc<str>>,
    last: u32,
}

impl NameTable {
    fn index(&mut self, name: &Arc<str>) -> u32 {
        let same = |n: &Arc<str>| Arc::ptr_eq(n, name) || **n == **name;
        if self.names.get(self.last as usize).is_some_and(same) {
            return self.last;
        }
        let i = match self.names.iter().position(same) {
            Some(i) => i,
            None => {
                self.names.push(Arc::clone(name));
                self.names.len() - 1
            }
        };
        self.last = u32::try_from(i).unwrap_or(u32::MAX - 1);
        self.last
    }
}

impl FromIterator<Endpoint> for EndpointList {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        let mut table = NameTable::default();
        let endpoints: Box<[PackedEndpoint]> = iter
            .into_iter()
            .map(|e| PackedEndpoint {
                address: e.address,
                port: e.port,
                weight: u32::try_from(e.weight).unwrap_or(u32::MAX),
                priority: e.priority,
                locality: e.locality.as_ref().map_or(NO_LOCALITY, |l| table.index(l)),
                cluster: table.index(&e.cluster),
            })
            .collect();
        if endpoints.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(Packed {
            names: table.names.into_boxed_slice(),
            endpoints,
        })))
    }
}

impl From<Vec<Endpoint>> for EndpointList {
    fn from(v: Vec<Endpoint>) -> Self {
        v.into_iter().collect()
    }
}

impl PartialEq for EndpointList {
    fn eq(&self, other: &Self) -> bool {
        if self.ptr_eq(other) {
            return true;
        }
        let (Some(a), Some(b)) = (&self.0, &other.0) else {
            return false; // one is empty, the other not (else ptr_eq)
        };
        fn locality(p: &Packed, i: u32) -> Option<&str> {
            (i != NO_LOCALITY).then(|| &**p.name(i))
        }
        a.endpoints.len() == b.endpoints.len()
            && a.endpoints.iter().zip(b.endpoints.iter()).all(|(x, y)| {
                (x.address, x.port, x.weight, x.priority)
                    == (y.address, y.port, y.weight, y.priority)
                    && locality(a, x.locality) == locality(b, y.locality)
                    && **a.name(x.cluster) == **b.name(y.cluster)
            })
    }
}

impl Serialize for EndpointList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for EndpointList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Endpoint>::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, weight: u64, locality: Option<&Arc<str>>, cluster: &Arc<str>) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            port: 8080,
            weight,
            priority: 1,
            locality: locality.cloned(),
            cluster: Arc::clone(cluster),
        }
    }

    #[test]
    fn reads_back_what_it_was_given_with_each_name_once() {
        let (a, b): (Arc<str>, Arc<str>) = ("outbound|80||a".into(), "outbound|80||b".into());
        let zone: Arc<str> = "r/z/".into();
        let given = vec![
            ep("10.0.0.1", 3, Some(&zone), &a),
            ep("10.0.0.2", 1, None, &b),
            ep("fd00::3", 7, Some(&zone), &a),
        ];
        let list = EndpointList::from(given.clone());
        assert_eq!(list.len(), 3);
        assert_eq!(list.to_vec(), given);
        assert_eq!(list.get(1), Some(given[1].clone()));
        assert_eq!(list.get(3), None);
        let packed = list.0.as_ref().unwrap();
        assert_eq!(packed.names.len(), 3, "a, r/z/, b");
        assert!(Arc::ptr_eq(&list.get(0).unwrap().cluster, &a));
        assert_eq!(std::mem::size_of::<PackedEndpoint>(), 36);
    }

    #[test]
    fn equal_by_content_and_serialised_as_the_endpoints() {
        let a: Arc<str> = "outbound|80||a".into();
        let other_copy: Arc<str> = "outbound|80||a".into();
        let x = EndpointList::from(vec![ep("10.0.0.1", 2, None, &a)]);
        let y = EndpointList::from(vec![ep("10.0.0.1", 2, None, &other_copy)]);
        let z = EndpointList::from(vec![ep("10.0.0.1", 3, None, &a)]);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, EndpointList::default());
        assert_eq!(EndpointList::default(), EndpointList::from(Vec::new()));
        let json = serde_json::to_value(&x).unwrap();
        assert_eq!(json, serde_json::to_value(x.to_vec()).unwrap());
        let back: EndpointList = serde_json::from_value(json).unwrap();
        assert_eq!(back, x);
        let empty = serde_json::to_string(&EndpointList::default()).unwrap();
        assert_eq!(empty, "[]");
    }
}
