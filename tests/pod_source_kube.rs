//! Issue 13 item 2: the Kubernetes pod source against an API server
//! stand-in speaking the real list/watch protocol (meshlane::sim::kube_api),
//! serving pods shaped like Istio's injected pods (the injector's output
//! for the hello Deployment, tests/fixtures/istio). kube-rs's watcher lists
//! this node's pods, watches with bookmarks, resumes after dropped
//! connections, relists after 410 Gone (as an ERROR event and as HTTP 410);
//! the catalog follows every change and the registry follows the catalog:
//! meshed pods running in the node's netns are registered, deleted ones
//! released, a pod without a proxy never registered, another node's pod
//! never seen.
mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlane::metrics::AgentMetrics;
use meshlane::pods::classify::ClassifyConfig;
use meshlane::pods::netns_finder::NodeScan;
use meshlane::pods::source::{MemoryCatalog, MeshDecision, PodCatalog, PodKey};
use meshlane::pods::{kube_source, reconcile, Registry};
use meshlane::sim::kube_api::{GoneAs, KubeApi};
use meshlane::sim::{Node, NodeOptions, Pod};
use serde::Deserialize;
use serde_json::{json, Value};

const NODE: &str = "node-a";
const INJECTED: &str =
    include_str!("fixtures/istio/iptables/REFERENCE_injected-pod_hello.yaml.injected");

/// The injector's pod template (first document of the fixture), as JSON.
fn injected_template() -> Value {
    let first = serde_yaml_ng::Deserializer::from_str(INJECTED)
        .next()
        .expect("a document");
    let doc = serde_yaml_ng::Value::deserialize(first).expect("fixture YAML");
    let doc: Value = serde_json::to_value(doc).expect("as JSON");
    doc["spec"]["template"].clone()
}

/// A pod object as the API server shows it once scheduled and started:
/// Istio CNI-mode injection (no istio-init; istio-proxy a native sidecar)
/// or, with `proxy` false, the app container alone.
fn pod_object(name: &str, node: &str, ip: IpAddr, proxy: bool) -> Value {
    let mut p = injected_template();
    let init = p["spec"]["initContainers"]
        .as_array_mut()
        .expect("init containers");
    init.retain(|c| c["name"] != "istio-init");
    if !proxy {
        p["spec"]["initContainers"] = json!([]);
        p["metadata"]["annotations"] = json!({});
    }
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!("default");
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["spec"]["nodeName"] = json!(node);
    p["spec"]["serviceAccountName"] = json!("hello");
    p["status"] =
        json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    p
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn registered(node: &Node) -> Vec<String> {
    Registry::open(&node.layout)
        .expect("registry")
        .list()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// The pod source and the reconcile, as the agent runs them, on a runtime
/// of their own.
struct Agent {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(node: &Node, api: &KubeApi, catalog: Arc<MemoryCatalog>) -> Self {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let url: http::Uri = api.url().parse().expect("url");
        let layout = node.layout.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // Tests point kube-rs at the stand-in; the agent uses the
                // in-cluster config (kube_source::incluster_client).
                let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
                let metrics = AgentMetrics::default();
                let source = kube_source::run(
                    client,
                    NODE.into(),
                    ClassifyConfig::default(),
                    catalog.clone(),
                    metrics.clone(),
                    stop_rx.clone(),
                );
                let rec = reconcile::run(
                    layout,
                    catalog,
                    Arc::new(NodeScan::default()),
                    metrics,
                    Box::new(|| {}),
                    stop_rx,
                );
                tokio::join!(source, rec);
            });
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spec_of(catalog: &MemoryCatalog, name: &str) -> Option<meshlane::pods::PodSpec> {
    match catalog.get(&key(name))?.mesh {
        MeshDecision::Meshed { spec } => Some(spec),
        MeshDecision::NotMeshed { .. } => None,
    }
}

fn create(node: &mut Node, name: &str) -> Pod {
    node.pod(name).expect("pod")
}

#[test]
fn the_catalog_and_registry_follow_the_api_server() {
    common::require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let web = create(&mut node, "web");
    let plain = create(&mut node, "plain");
    let late = create(&mut node, "late");
    let api = KubeApi::start().expect("API stand-in");
    api.apply(pod_object("web", NODE, web.ip4.into(), true));
    api.apply(pod_object("plain", NODE, plain.ip4.into(), false));
    // Another node's pod, meshed: this node never sees it.
    api.apply(pod_object(
        "far",
        "node-b",
        "10.255.0.9".parse().unwrap(),
        true,
    ));

    let catalog = Arc::new(MemoryCatalog::new());
    let _agent = Agent::start(&node, &api, catalog.clone());

    // The listing: synced, this node's pods only, classified.
    wait_for("catalog synced", || catalog.synced());
    let names: Vec<String> = catalog.all().into_iter().map(|p| p.key.name).collect();
    assert_eq!(names, vec!["plain".to_string(), "web".to_string()]);
    let web_info = catalog.get(&key("web")).expect("web");
    assert_eq!(web_info.service_account, "hello");
    assert_eq!(web_info.uid, "uid-web");
    assert!(spec_of(&catalog, "plain").is_none());
    assert!(api
        .requests()
        .iter()
        .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")
            || r.contains("fieldSelector=spec.nodeName=node-a")));

    // The registry follows: web registered, plain never.
    wait_for("web registered", || {
        registered(&node).contains(&"default/web".to_string())
    });
    assert!(!registered(&node).iter().any(|n| n.contains("plain")));
    wait_for("a watch is open", || api.open_watches() == 1);
    let first_watch = api
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert!(api
        .requests()
        .iter()
        .any(|r| r.contains("allowWatchBookmarks=true")));

    // An annotation changes: the catalog follows (MODIFIED).
    let mut changed = pod_object("web", NODE, web.ip4.into(), true);
    changed["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"] =
        json!("5432");
    api.apply(changed);
    wait_for("annotation seen", || {
        spec_of(&catalog, "web").is_some_and(|s| s.exclude_outbound_ports == "5432")
    });

    // Another node's pod changes (the version moves on, this watch gets no
    // event), a bookmark tells the client, then the connection drops: the
    // watch resumes from the bookmark's version (no relist), and changes
    // made meanwhile arrive.
    let last_event = api.resource_version();
    api.apply(pod_object(
        "far",
        "node-b",
        "10.255.0.10".parse().unwrap(),
        true,
    ));
    assert!(api.resource_version() > last_event);
    assert_eq!(api.bookmark(), 1);
    std::thread::sleep(Duration::from_millis(200));
    let bookmarked = api.resource_version();
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(api.drop_watches(), 1);
    api.apply(pod_object("late", NODE, late.ip4.into(), true));
    wait_for("late seen after the drop", || {
        catalog.get(&key("late")).is_some()
    });
    let watches: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(watches.len() > first_watch);
    assert!(
        watches
            .last()
            .is_some_and(|w| w.contains(&format!("resourceVersion={bookmarked}"))),
        "resumed from {watches:?}, bookmark at {bookmarked}"
    );
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(lists_before, lists_after, "a dropped connection relisted");
    wait_for("late adopted", || {
        registered(&node).contains(&"default/late".to_string())
    });

    // History compacted and the watch cut: the resumed watch gets an ERROR
    // event with a 410 Status; the watcher relists, and a pod deleted while
    // it was away disappears (released from the registry).
    wait_for("watch reopened", || api.open_watches() == 1);
    api.change_while_away(GoneAs::ErrorEvent, |st| {
        st.delete("default", "late");
    });
    wait_for("late gone after the relist", || {
        catalog.get(&key("late")).is_none()
    });
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(lists > lists_after, "no relist after 410");
    wait_for("late released", || {
        !registered(&node).contains(&"default/late".to_string())
    });

    // The same with HTTP 410.
    wait_for("watch reopened", || api.open_watches() == 1);
    let lists_410 = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    api.change_while_away(GoneAs::Http, |st| {
        let mut p = pod_object("plain", NODE, plain.ip4.into(), false);
        p["metadata"]["labels"]["relisted"] = json!("yes");
        st.apply(p);
    });
    wait_for("relist after HTTP 410", || {
        catalog
            .get(&key("plain"))
            .is_some_and(|p| p.labels.get("relisted").is_some_and(|v| v == "yes"))
    });
    assert!(
        api.requests()
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count()
            > lists_410,
        "no relist after HTTP 410"
    );
    assert!(!registered(&node).iter().any(|n| n.contains("plain")));

    // Deleted (a DELETED event on the open watch): released.
    wait_for("watch reopened", || api.open_watches() == 1);
    api.delete("default", "web");
    wait_for("web gone", || catalog.get(&key("web")).is_none());
    wait_for("web released", || {
        !registered(&node).contains(&"default/web".to_string())
    });
    assert!(registered(&node).is_empty(), "{:?}", registered(&node));
    assert!(catalog.get(&key("far")).is_none());
}
