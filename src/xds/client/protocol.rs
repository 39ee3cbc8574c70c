//! One proxy identity's state-of-the-world ADS protocol, without I/O: what
//! it holds (last good [`ProxyResources`]), per type the accepted version,
//! the last nonce and the subscribed names; what to send when a stream
//! opens (resume) and in answer to each response (ACK, NACK, the next
//! subscription).
//!
//! Order, as Envoy: CDS (wildcard) first; once clusters are accepted, EDS
//! for their EDS service names; once EDS answered (or no cluster uses
//! EDS), LDS (wildcard); once listeners are accepted, RDS for the route
//! names their HTTP connection managers reference. A response is applied
//! whole or not at all: a resource that does not decode, or fails
//! validation (no name, a name twice, a resource of another type), makes
//! the response a NACK whose `error_detail` names it, and the last good
//! state is kept. CDS and LDS responses carry the whole set (a resource
//! missing from one is removed); EDS and RDS ones update the named
//! resources, and a name no longer subscribed is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::rpc::Status;
use prost::Name;

use super::intern::{Interner, Pool};
use super::request::{Names, Request};
use super::wire::ResponseView;
use crate::xds::assignment::Assignment;
use crate::xds::held::{peek_name, HeldCluster, HeldError, HeldListener, HeldRoute};
use crate::xds::resources::named_mut;
use crate::xds::ProxyResources;

/// The four resource types a sidecar takes, in Envoy's subscription order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl XdsType {
    pub const ALL: [XdsType; 4] = [Self::Cluster, Self::Endpoint, Self::Listener, Self::Route];

    pub fn type_url(self) -> String {
        match self {
            Self::Cluster => Cluster::type_url(),
            Self::Endpoint => ClusterLoadAssignment::type_url(),
            Self::Listener => Listener::type_url(),
            Self::Route => RouteConfiguration::type_url(),
        }
    }

    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// CDS, EDS, LDS, RDS.
    pub fn short(self) -> &'static str {
        match self {
            Self::Cluster => "CDS",
            Self::Endpoint => "EDS",
            Self::Listener => "LDS",
            Self::Route => "RDS",
        }
    }

    /// LDS and CDS subscribe to everything (no names).
    fn wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for XdsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[derive(Debug, Default, Clone)]
struct TypeState {
    subscribed: bool,
    /// Names asked for (empty for the wildcard types), shared with the
    /// requests that carry them; EDS names are the held clusters' own
    /// allocations.
    names: Names,
    /// Last accepted version ("" before any).
    version: String,
    /// Nonce of the last response seen.
    nonce: String,
    /// A response was accepted since the client started.
    answered: bool,
}

/// What a response led to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests to send, in order (the ACK/NACK first).
    pub requests: Vec<Request>,
    /// The held resources changed.
    pub changed: bool,
    /// The response was accepted (ACK) or rejected with this message (NACK).
    pub verdict: Option<Result<(), String>>,
    /// The response's type, when known.
    pub type_: Option<XdsType>,
}

/// One identity's protocol state across streams.
#[derive(Debug)]
pub struct AdsCore {
    node: Node,
    types: [TypeState; 4],
    /// Shared with whoever was given it: changed copy-on-write, so one
    /// copy of the maps lives between changes.
    held: Arc<ProxyResources>,
    /// The node was sent on the current stream.
    node_sent: bool,
}

impl AdsCore {
    pub fn new(node: Node) -> Self {
        let held = Arc::new(ProxyResources {
            has_eds: true,
            ..Default::default()
        });
        Self {
            node,
            types: Default::default(),
            held,
            node_sent: false,
        }
    }

    /// The last good resources (publish a clone of the `Arc`).
    pub fn resources(&self) -> &Arc<ProxyResources> {
        &self.held
    }

    fn held_mut(&mut self) -> &mut ProxyResources {
        Arc::make_mut(&mut self.held)
    }

    /// Accepted version of a type ("" before any).
    pub fn version(&self, t: XdsType) -> &str {
        &self.types[t.index()].version
    }

    /// Subscribed names of a type.
    pub fn names(&self, t: XdsType) -> Vec<String> {
        self.types[t.index()]
            .names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// True once every type the config needs has been answered: CDS and
    /// LDS, EDS when a cluster uses it, RDS when a listener names a route.
    pub fn synced(&self) -> bool {
        XdsType::ALL.into_iter().all(|t| {
            let ts = &self.types[t.index()];
            ts.answered || (!t.wildcard() && ts.names.is_empty())
        })
    }

    /// The requests that open a stream: every subscribed type with the
    /// version and names held (resume), or CDS alone on the first stream.
    pub fn start_stream(&mut self) -> Vec<Request> {
        self.node_sent = false;
        for ts in &mut self.types {
            ts.nonce.clear();
        }
        self.types[XdsType::Cluster.index()].subscribed = true;
        let open: Vec<XdsType> = XdsType::ALL
            .into_iter()
            .filter(|t| self.types[t.index()].subscribed)
            .collect();
        open.into_iter().map(|t| self.request(t, None)).collect()
    }

    fn request(&mut self, t: XdsType, error: Option<String>) -> Request {
        let ts = &self.types[t.index()];
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        Request {
            type_: t,
            version_info: ts.version.clone(),
            node,
            resource_names: Arc::clone(&ts.names),
            response_nonce: ts.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: 3, // INVALID_ARGUMENT, as Envoy sends
                message,
                details: vec![],
            }),
        }
    }

    /// Applies (or rejects) one response; returns what to send.
    pub fn on_response(&mut self, resp: &ResponseView<'_>, pools: &Interner) -> Outcome {
        let Some(t) = XdsType::from_url(resp.type_url) else {
            // Not a type this client asked for: nothing to answer.
            return Outcome::default();
        };
        let mut out = Outcome {
            type_: Some(t),
            ..Default::default()
        };
        resp.nonce.clone_into(&mut self.types[t.index()].nonce);
        let applied = match t {
            XdsType::Cluster => self.apply_clusters(resp, pools),
            XdsType::Endpoint => self.apply_endpoints(resp, pools),
            XdsType::Listener => self.apply_listeners(resp, pools),
            XdsType::Route => self.apply_routes(resp, pools),
        };
        match applied {
            Err(message) => {
                out.requests.push(self.request(t, Some(message.clone())));
                out.verdict = Some(Err(message));
            }
            Ok(changed) => {
                let ts = &mut self.types[t.index()];
                resp.version_info.clone_into(&mut ts.version);
                ts.answered = true;
                out.changed = changed;
                out.requests.push(self.request(t, None));
                out.verdict = Some(Ok(()));
                self.follow_up(t, &mut out, pools);
            }
        }
        out
    }

    /// The subscriptions an accepted response of `t` leads to.
    fn follow_up(&mut self, t: XdsType, out: &mut Outcome, pools: &Interner) {
        match t {
            XdsType::Cluster => {
                let names = eds_names(&self.held.clusters);
                self.resubscribe(XdsType::Endpoint, names, out, pools);
                if names_empty(&self.types[XdsType::Endpoint.index()]) {
                    self.subscribe_once(XdsType::Listener, out);
                }
            }
            XdsType::Endpoint => self.subscribe_once(XdsType::Listener, out),
            XdsType::Listener => {
                let names = route_names(&self.held.listeners);
                self.resubscribe(XdsType::Route, names, out, pools);
            }
            XdsType::Route => {}
        }
    }

    fn subscribe_once(&mut self, t: XdsType, out: &mut Outcome) {
        if !self.types[t.index()].subscribed {
            self.types[t.index()].subscribed = true;
            out.requests.push(self.request(t, None));
        }
    }

    /// Changes the names of a named type; a dropped name's resource goes.
    /// The names are shared with other identities that ask for the same.
    fn resubscribe(
        &mut self,
        t: XdsType,
        names: BTreeSet<Arc<str>>,
        out: &mut Outcome,
        pools: &Interner,
    ) {
        let ts = &mut self.types[t.index()];
        if *ts.names == names && (ts.subscribed || names.is_empty()) {
            return;
        }
        ts.names = pools.name_sets.share(names);
        ts.subscribed = true;
        let names = Arc::clone(&ts.names);
        let stale = match t {
            XdsType::Endpoint => self.held.endpoints.keys().any(|n| !names.contains(&**n)),
            XdsType::Route => self.held.routes.keys().any(|n| !names.contains(&**n)),
            _ => false,
        };
        if stale {
            let held = self.held_mut();
            match t {
                XdsType::Endpoint => {
                    named_mut(&mut held.endpoints).retain(|n, _| names.contains(&**n))
                }
                _ => named_mut(&mut held.routes).retain(|n, _| names.contains(&**n)),
            }
            out.changed = true;
        }
        out.requests.push(self.request(t, None));
    }

    fn apply_clusters(&mut self, r: &ResponseView<'_>, pools: &Interner) -> Result<bool, String> {
        let got = decode_all(r, &self.held.clusters, &pools.clusters)?;
        let Some(all) = new_set(&self.held.clusters, got) else {
            return Ok(false);
        };
        self.held_mut().clusters = pools.cluster_sets.share(Arc::new(all));
        Ok(true)
    }

    fn apply_listeners(&mut self, r: &ResponseView<'_>, pools: &Interner) -> Result<bool, String> {
        let got = decode_all(r, &self.held.listeners, &pools.listeners)?;
        let Some(all) = new_set(&self.held.listeners, got) else {
            return Ok(false);
        };
        self.held_mut().listeners = pools.listener_sets.share(Arc::new(all));
        Ok(true)
    }

    fn apply_endpoints(&mut self, r: &ResponseView<'_>, pools: &Interner) -> Result<bool, String> {
        let got = decode_all(r, &self.held.endpoints, &pools.endpoints)?;
        let names = &self.types[XdsType::Endpoint.index()].names;
        let new = changed_named(&self.held.endpoints, got, names);
        let changed = !new.is_empty();
        if changed {
            let held = self.held_mut();
            named_mut(&mut held.endpoints).extend(new);
            held.endpoints = pools.endpoint_sets.share(Arc::clone(&held.endpoints));
        }
        Ok(changed)
    }

    fn apply_routes(&mut self, r: &ResponseView<'_>, pools: &Interner) -> Result<bool, String> {
        let got = decode_all(r, &self.held.routes, &pools.routes)?;
        let names = &self.types[XdsType::Route.index()].names;
        let new = changed_named(&self.held.routes, got, names);
        let changed = !new.is_empty();
        if changed {
            let held = self.held_mut();
            named_mut(&mut held.routes).extend(new);
            held.routes = pools.route_sets.share(Arc::clone(&held.routes));
        }
        Ok(changed)
    }
}

/// A resource type in the form it is held, as the client validates it.
trait Resource: Sized {
    /// How errors call it.
    const WHAT: &'static str;
    fn xds_name(&self) -> &str;
    /// The name as the key it is held under.
    fn key(&self) -> Arc<str>;
    /// The bytes it was received as, when kept.
    fn wire(&self) -> Option<&[u8]>;
    /// Decodes and validates (a name; what Envoy would refuse).
    fn from_wire(bytes: &[u8]) -> Result<Self, HeldError>;
}

impl Resource for HeldCluster {
    const WHAT: &'static str = "cluster";
    fn xds_name(&self) -> &str {
        &self.name
    }
    fn key(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
    fn wire(&self) -> Option<&[u8]> {
        Some(HeldCluster::wire(self))
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, HeldError> {
        HeldCluster::decode_checked(bytes, check_cluster)
    }
}

impl Resource for Assignment {
    const WHAT: &'static str = "endpoints";
    fn xds_name(&self) -> &str {
        &self.cluster_name
    }
    fn key(&self) -> Arc<str> {
        Arc::clone(&self.cluster_name)
    }
    fn wire(&self) -> Option<&[u8]> {
        Some(Assignment::wire(self))
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, HeldError> {
        let a = Assignment::decode(bytes).map_err(HeldError::Decode)?;
        if a.cluster_name.is_empty() {
            return Err(HeldError::NoName);
        }
        Ok(a)
    }
}

impl Resource for HeldListener {
    const WHAT: &'static str = "listener";
    fn xds_name(&self) -> &str {
        &self.name
    }
    fn key(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
    fn wire(&self) -> Option<&[u8]> {
        Some(HeldListener::wire(self))
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, HeldError> {
        HeldListener::decode_checked(bytes)
    }
}

impl Resource for HeldRoute {
    const WHAT: &'static str = "route configuration";
    fn xds_name(&self) -> &str {
        &self.name
    }
    fn key(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
    fn wire(&self) -> Option<&[u8]> {
        Some(HeldRoute::wire(self))
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, HeldError> {
        HeldRoute::decode_checked(bytes)
    }
}

fn names_empty(ts: &TypeState) -> bool {
    ts.names.is_empty()
}

/// A response's resources: those it repeats unchanged (the held copies)
/// and the others.
struct Got<M> {
    reused: Vec<Arc<M>>,
    fresh: Vec<Arc<M>>,
}

/// Takes every resource of a response: the copy held when its bytes are
/// the same (a state-of-the-world response repeats unchanged resources:
/// recognised by name and a byte compare, without hashing or decoding),
/// else the interned copy, decoded only when new. Checks each is of the
/// response's type, has a name, passes its check and appears once. The
/// error names every bad resource.
fn decode_all<M: Resource>(
    r: &ResponseView<'_>,
    held: &BTreeMap<Arc<str>, Arc<M>>,
    pool: &Pool<M>,
) -> Result<Got<M>, String> {
    let what = M::WHAT;
    let mut got = Got {
        reused: Vec::with_capacity(r.resources.len()),
        fresh: Vec::new(),
    };
    let mut bad = Vec::new();
    for (i, any) in r.resources.iter().enumerate() {
        if any.type_url != r.type_url {
            bad.push(format!(
                "{what} #{i} is a {} in a {} response",
                any.type_url, r.type_url
            ));
            continue;
        }
        let same = peek_name(any.value)
            .and_then(|n| held.get(n))
            .filter(|h| h.wire() == Some(any.value));
        if let Some(h) = same {
            got.reused.push(Arc::clone(h));
            continue;
        }
        match pool.intern(any.value, M::from_wire) {
            Ok(m) => got.fresh.push(m),
            Err(HeldError::Decode(e)) => bad.push(format!("{what} #{i} does not decode: {e}")),
            Err(HeldError::NoName) => bad.push(format!("{what} #{i} has no name")),
            Err(HeldError::Invalid(name, why)) => bad.push(format!("{what} {name}: {why}")),
        }
    }
    for name in twice(&got, held) {
        bad.push(format!("{what} {name} appears twice"));
    }
    if bad.is_empty() {
        Ok(got)
    } else {
        Err(bad.join("; "))
    }
}

/// Names that appear more than once. Repeated held resources are one
/// pointer per name (compared as sorted pointers, no string hashing);
/// only the fresh ones' names are hashed.
fn twice<M: Resource>(got: &Got<M>, held: &BTreeMap<Arc<str>, Arc<M>>) -> Vec<String> {
    let mut ptrs: Vec<*const M> = got.reused.iter().map(Arc::as_ptr).collect();
    ptrs.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    for w in ptrs.windows(2) {
        if w[0] == w[1] {
            out.extend(
                got.reused
                    .iter()
                    .find(|r| Arc::as_ptr(r) == w[0])
                    .map(|r| r.xds_name().to_string()),
            );
        }
    }
    let mut fresh = std::collections::HashSet::with_capacity(got.fresh.len());
    for m in &got.fresh {
        let name = m.xds_name();
        let also_reused = held
            .get(name)
            .is_some_and(|h| ptrs.binary_search(&Arc::as_ptr(h)).is_ok());
        if !fresh.insert(name) || also_reused {
            out.push(name.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

const EDS: i32 = envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32;

fn is_eds(c: &Cluster) -> bool {
    matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(EDS))
    )
}

/// What Envoy itself refuses in a cluster that matters here: an EDS
/// cluster with no EDS config source.
fn check_cluster(c: &Cluster) -> Result<(), String> {
    let has_source = c
        .eds_cluster_config
        .as_ref()
        .is_some_and(|e| e.eds_config.is_some());
    if is_eds(c) && !has_source {
        return Err("EDS cluster without an EDS config source".into());
    }
    Ok(())
}

/// A wildcard type's new set, or None when it is the one held (same
/// names, same shared copies).
fn new_set<M: Resource>(
    held: &BTreeMap<Arc<str>, Arc<M>>,
    got: Got<M>,
) -> Option<BTreeMap<Arc<str>, Arc<M>>> {
    // The repeated ones are distinct held resources (checked): the same
    // set when they are all of them and nothing else came.
    let same = got.fresh.is_empty() && got.reused.len() == held.len();
    (!same).then(|| {
        got.reused
            .into_iter()
            .chain(got.fresh)
            .map(|r| (r.key(), r))
            .collect()
    })
}

/// The resources of a response that are asked for and differ from those
/// held.
fn changed_named<M: Resource>(
    held: &BTreeMap<Arc<str>, Arc<M>>,
    got: Got<M>,
    names: &Names,
) -> Vec<(Arc<str>, Arc<M>)> {
    got.fresh
        .into_iter()
        .filter(|r| {
            let n = r.xds_name();
            names.contains(n) && !held.get(n).is_some_and(|h| Arc::ptr_eq(h, r))
        })
        .map(|r| (r.key(), r))
        .collect()
}

/// The EDS names of the clusters that take endpoints over EDS.
fn eds_names(clusters: &BTreeMap<Arc<str>, Arc<HeldCluster>>) -> BTreeSet<Arc<str>> {
    clusters
        .values()
        .filter_map(|c| c.eds_service.clone())
        .collect()
}

/// The route configuration names the listeners' HTTP connection managers
/// take over RDS.
fn route_names(listeners: &BTreeMap<Arc<str>, Arc<HeldListener>>) -> BTreeSet<Arc<str>> {
    listeners
        .values()
        .flat_map(|l| l.rds_names.iter().map(|n| Arc::from(n.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{DiscoveryType, EdsClusterConfig};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;

    fn any<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(Default::default()),
                service_name: String::new(),
            }),
            ..Default::default()
        }
    }

    fn resp(t: XdsType, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: t.type_url(),
            nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn on(core: &mut AdsCore, r: DiscoveryResponse, pools: &Interner) -> Outcome {
        core.on_response(&ResponseView::of(&r), pools)
    }

    fn types(reqs: &[Request]) -> Vec<XdsType> {
        reqs.iter().map(|r| r.type_).collect()
    }

    #[test]
    fn subscribes_in_envoys_order_and_syncs_after_all_four() {
        let pools = Interner::default();
        let mut core = AdsCore::new(Node {
            id: "n".into(),
            ..Default::default()
        });
        let first = core.start_stream();
        assert_eq!(types(&first), [XdsType::Cluster]);
        assert!(first[0].node.is_some() && first[0].resource_names.is_empty());
        let out = on(
            &mut core,
            resp(XdsType::Cluster, "1", "a", vec![any(&eds_cluster("c1"))]),
            &pools,
        );
        assert_eq!(types(&out.requests), [XdsType::Cluster, XdsType::Endpoint]);
        assert_eq!(out.requests[0].response_nonce, "a");
        assert!(out.requests[0].error_detail.is_none());
        assert!(
            out.requests[0].node.is_none(),
            "node goes on the first request only"
        );
        assert_eq!(out.requests[1].names(), ["c1"]);
        let cla = ClusterLoadAssignment {
            cluster_name: "c1".into(),
            ..Default::default()
        };
        let out = on(
            &mut core,
            resp(XdsType::Endpoint, "1", "b", vec![any(&cla)]),
            &pools,
        );
        assert_eq!(types(&out.requests), [XdsType::Endpoint, XdsType::Listener]);
        assert!(!core.synced());
        let out = on(&mut core, resp(XdsType::Listener, "1", "c", vec![]), &pools);
        assert_eq!(types(&out.requests), [XdsType::Listener]);
        assert!(core.synced(), "no listener names a route: RDS not needed");
        // Resume: every subscribed type with its version and names.
        let again = core.start_stream();
        assert_eq!(
            types(&again),
            [XdsType::Cluster, XdsType::Endpoint, XdsType::Listener]
        );
        assert_eq!(again[1].version_info, "1");
        assert_eq!(again[1].names(), ["c1"]);
        assert!(again.iter().all(|r| r.response_nonce.is_empty()));
    }

    #[test]
    fn a_bad_resource_is_nacked_by_name_and_the_last_good_state_kept() {
        let pools = Interner::default();
        let mut core = AdsCore::new(Node::default());
        core.start_stream();
        on(
            &mut core,
            resp(XdsType::Cluster, "1", "a", vec![any(&eds_cluster("c1"))]),
            &pools,
        );
        let nameless = Cluster::default();
        let out = on(
            &mut core,
            resp(
                XdsType::Cluster,
                "2",
                "b",
                vec![any(&eds_cluster("c2")), any(&nameless)],
            ),
            &pools,
        );
        let nack = &out.requests[0];
        assert_eq!(nack.version_info, "1");
        assert_eq!(nack.response_nonce, "b");
        let msg = &nack.error_detail.as_ref().unwrap().message;
        assert!(msg.contains("cluster #1 has no name"), "{msg}");
        assert_eq!(
            core.resources()
                .clusters
                .keys()
                .map(|k| &**k)
                .collect::<Vec<_>>(),
            ["c1"]
        );
        let garbage = Any {
            type_url: Cluster::type_url(),
            value: vec![0xff, 0xff, 0xff],
        };
        let out = on(
            &mut core,
            resp(XdsType::Cluster, "3", "c", vec![garbage]),
            &pools,
        );
        assert!(matches!(&out.verdict, Some(Err(m)) if m.contains("does not decode")));
        // A name twice: repeated unchanged, or repeated and changed.
        let c1 = any(&eds_cluster("c1"));
        let mut c1_changed = eds_cluster("c1");
        c1_changed.connect_timeout = Some(Default::default());
        for twice in [
            vec![c1.clone(), c1.clone()],
            vec![c1.clone(), any(&c1_changed)],
        ] {
            let out = on(&mut core, resp(XdsType::Cluster, "3b", "c2", twice), &pools);
            assert!(
                matches!(&out.verdict, Some(Err(m)) if m == "cluster c1 appears twice"),
                "{:?}",
                out.verdict
            );
        }
        assert_eq!(core.version(XdsType::Cluster), "1");
        // Removal: a CDS response without c1 removes it and its endpoints.
        let out = on(
            &mut core,
            resp(XdsType::Cluster, "4", "d", vec![any(&eds_cluster("c2"))]),
            &pools,
        );
        assert!(out.changed);
        assert_eq!(
            core.resources()
                .clusters
                .keys()
                .map(|k| &**k)
                .collect::<Vec<_>>(),
            ["c2"]
        );
        assert_eq!(core.names(XdsType::Endpoint), ["c2"]);
    }
}
