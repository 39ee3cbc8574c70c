//! A snapshot: one version of every resource the control plane serves,
//! by xDS type URL and resource name (state of the world: a response for a
//! type carries all of its resources the client asked for). A snapshot
//! derived from another ([`Snapshot::derive`]) keeps the versions of the
//! types it does not change, so, as istiod's incremental pushes, an
//! endpoint change is pushed as EDS alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::sim::sidecar::envoy_bootstrap::any;

/// Short names of the four types a sidecar takes over ADS, for logs.
pub fn short_type(type_url: &str) -> &str {
    match type_url {
        t if t == Listener::type_url() => "LDS",
        t if t == Cluster::type_url() => "CDS",
        t if t == RouteConfiguration::type_url() => "RDS",
        t if t == ClusterLoadAssignment::type_url() => "EDS",
        other => other,
    }
}

/// Whether a type is wildcard by default (LDS, CDS: an empty name list
/// means "all"); for the others the client names what it wants.
fn wildcard(type_url: &str) -> bool {
    type_url == Listener::type_url() || type_url == Cluster::type_url()
}

/// One resource, packed, with its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub body: Any,
}

/// Every resource of one config version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: String,
    by_type: BTreeMap<String, Vec<Resource>>,
    /// Types whose version is not `version` (unchanged since an earlier
    /// snapshot).
    type_versions: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            by_type: BTreeMap::new(),
            type_versions: BTreeMap::new(),
        }
    }

    /// A copy at `version` in which every type keeps its current version
    /// until it is changed (add, add_raw, remove).
    pub fn derive(&self, version: impl Into<String>) -> Self {
        let mut next = self.clone();
        for t in self.by_type.keys() {
            next.type_versions
                .insert(t.clone(), self.version_of(t).to_string());
        }
        next.version = version.into();
        next
    }

    /// The version of one type's resources.
    pub fn version_of(&self, type_url: &str) -> &str {
        self.type_versions
            .get(type_url)
            .map_or(self.version.as_str(), |v| v.as_str())
    }

    /// Adds `message` under `name` (replacing one of the same type and
    /// name).
    pub fn add<M: Message + Name>(&mut self, name: impl Into<String>, message: &M) {
        let name = name.into();
        self.type_versions.remove(&M::type_url());
        let list = self.by_type.entry(M::type_url()).or_default();
        list.retain(|r| r.name != name);
        list.push(Resource {
            name,
            body: any(message),
        });
    }

    /// Adds an already packed resource under `name` (a test's malformed
    /// one: bytes that do not decode, or a message missing its name).
    pub fn add_raw(&mut self, name: impl Into<String>, body: Any) {
        let name = name.into();
        self.type_versions.remove(&body.type_url);
        let list = self.by_type.entry(body.type_url.clone()).or_default();
        list.retain(|r| r.name != name);
        list.push(Resource { name, body });
    }

    /// Removes the resource `name` of `type_url`; true if it was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        let Some(list) = self.by_type.get_mut(type_url) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.name != name);
        let removed = list.len() != before;
        if removed {
            self.type_versions.remove(type_url);
        }
        removed
    }

    /// Resource names of one type, in insertion order.
    pub fn names(&self, type_url: &str) -> Vec<&str> {
        self.by_type
            .get(type_url)
            .map(|l| l.iter().map(|r| r.name.as_str()).collect())
            .unwrap_or_default()
    }

    /// What a response for `type_url` carries when the client asked for
    /// `names`: all of a wildcard type when it named none, else those of
    /// the named that exist.
    pub fn select(&self, type_url: &str, names: &[String]) -> Vec<Any> {
        let Some(list) = self.by_type.get(type_url) else {
            return Vec::new();
        };
        let all = names.is_empty() && wildcard(type_url);
        let named: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        list.iter()
            .filter(|r| all || named.contains(r.name.as_str()))
            .map(|r| r.body.clone())
            .collect()
    }

    /// What a sidecar that accepted this snapshot holds (every listener,
    /// route, cluster and endpoint assignment that decodes): the decision
    /// engine's input, without a stream.
    pub fn proxy_resources(&self) -> crate::xds::ProxyResources {
        use crate::xds::{
            assignment::Assignment, held::HeldCluster, held::HeldListener, held::HeldRoute,
        };
        fn all<M: Message + Name + Default, H>(
            snap: &Snapshot,
            hold: impl Fn(&M) -> H,
        ) -> Arc<BTreeMap<Arc<str>, Arc<H>>> {
            let held = snap
                .by_type
                .get(&M::type_url())
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let m = M::decode(r.body.value.as_slice()).ok()?;
                    Some((Arc::from(r.name.as_str()), Arc::new(hold(&m))))
                })
                .collect();
            Arc::new(held)
        }
        crate::xds::ProxyResources {
            listeners: all(self, HeldListener::new),
            routes: all(self, HeldRoute::new),
            clusters: all(self, HeldCluster::new),
            endpoints: all(self, Assignment::from_proto),
            has_eds: true,
            extension_configs: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn selects_all_of_a_wildcard_type_or_only_what_was_named() {
        let mut s = Snapshot::new("1");
        s.add("a", &cluster("a"));
        s.add("b", &cluster("b"));
        s.add("a", &cluster("a"));
        let cds = Cluster::type_url();
        assert_eq!(s.names(&cds), ["b", "a"]);
        assert_eq!(s.select(&cds, &[]).len(), 2);
        let picked = s.select(&cds, &["a".into(), "zz".into()]);
        assert_eq!(picked.len(), 1);
        assert_eq!(
            Cluster::decode(picked[0].value.as_slice()).unwrap().name,
            "a"
        );
        let eds = ClusterLoadAssignment::type_url();
        s.add(
            "a",
            &ClusterLoadAssignment {
                cluster_name: "a".into(),
                ..Default::default()
            },
        );
        assert!(s.select(&eds, &[]).is_empty(), "EDS is not wildcard");
        assert_eq!(s.select(&eds, &["a".into()]).len(), 1);
        assert_eq!(short_type(&eds), "EDS");
        assert!(s.select("type.googleapis.com/unknown", &[]).is_empty());
        // A derived snapshot changes the version of what it changes only.
        let mut next = s.derive("2");
        assert_eq!(next.version_of(&cds), "1");
        next.add(
            "b",
            &ClusterLoadAssignment {
                cluster_name: "b".into(),
                ..Default::default()
            },
        );
        assert_eq!((next.version_of(&cds), next.version_of(&eds)), ("1", "2"));
        assert!(next.remove(&cds, "a"));
        assert_eq!(next.version_of(&cds), "2");
    }
}
