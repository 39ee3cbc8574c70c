//! CNI test helpers: a simulated node whose pods are wired by a
//! configuration list (the real bridge + host-local plugins, then
//! meshlane-cni) run as a container runtime runs it
//! (`meshlane::sim::cni_runtime`), a directory pod catalog the agent reads
//! (test-only, `meshlane::sim::DirCatalog`), and the checks that nothing
//! of a pod is left in the registry.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use meshlane::pods::source::{MeshDecision, PodInfo, PodKey};
use meshlane::pods::PodSpec;
use meshlane::sim::cni_runtime::{self, Network};
use meshlane::sim::{DirCatalog, Node, NodeOptions, Pod, SIM_POD_CATALOG_ENV};

use super::require_root_env;

/// The plugin under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_meshlane-cni");

/// Every spec version the plugin speaks.
pub const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A node (nothing installed: its agent installs) plus a pod catalog.
pub struct CniNode {
    pub node: Node,
    pub catalog: DirCatalog,
    _catalog_dir: tempfile::TempDir,
    made: AtomicU32,
}

impl CniNode {
    pub fn new() -> Self {
        require_root_env();
        let node = Node::new(NodeOptions {
            install: false,
            ..Default::default()
        })
        .expect("simulated node");
        let dir = tempfile::tempdir().expect("catalog dir");
        Self {
            catalog: DirCatalog::new(dir.path()),
            _catalog_dir: dir,
            node,
            made: AtomicU32::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        self.node.layout.root()
    }

    /// The environment an agent of this node gets: the catalog.
    pub fn agent_env(&self) -> Vec<(&'static str, &OsStr)> {
        vec![(SIM_POD_CATALOG_ENV, self.catalog.dir().as_os_str())]
    }

    /// The agent's API socket.
    pub fn socket(&self) -> PathBuf {
        meshlane::api::socket_path(self.root())
    }

    /// meshlane-cni's entry for this node, with `extra` keys.
    pub fn plugin_entry(&self, extra: Value) -> Value {
        let mut e = json!({"type": "meshlane-cni", "agentSocket": self.socket()});
        for (k, v) in extra.as_object().into_iter().flatten() {
            e[k] = v.clone();
        }
        e
    }

    /// bridge + host-local, then meshlane-cni, at `version`.
    pub fn network(&self, version: &str, extra: Value) -> Network {
        let list = json!({
            "cniVersion": version,
            "name": format!("meshlane-cni-{}", self.node.subnet.index),
            "plugins": [self.node.subnet.bridge_plugin(false), self.plugin_entry(extra)],
        });
        Network::new(list, bin_dirs())
    }

    /// The bridge + host-local plugins alone, at `version` (a pod wired
    /// by it has a real netns and a real prevResult for meshlane-cni).
    pub fn bridge_only(&self, version: &str) -> Network {
        let list = json!({
            "cniVersion": version,
            "name": format!("meshlane-cni-{}", self.node.subnet.index),
            "plugins": [self.node.subnet.bridge_plugin(false)],
        });
        Network::new(list, bin_dirs())
    }

    /// Marks `ns/name` meshed (Istio defaults, intercept mode).
    pub fn mesh(&self, ns: &str, name: &str) {
        self.catalog
            .put(&pod_info(
                ns,
                name,
                MeshDecision::Meshed {
                    spec: PodSpec::istio(name),
                },
            ))
            .expect("writing the pod catalog");
    }

    /// Marks `ns/name` not meshed.
    pub fn unmesh(&self, ns: &str, name: &str) {
        self.catalog
            .put(&pod_info(
                ns,
                name,
                MeshDecision::NotMeshed {
                    reason: "no proxy container".into(),
                },
            ))
            .expect("writing the pod catalog");
    }

    /// A unique netns (and container id) name for pod `name`.
    pub fn netns_name(&self, name: &str) -> String {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        format!("{}-{name}{n}", self.node.tag)
    }

    /// A pod wired by `network`, as Kubernetes pod `ns/name`.
    pub fn pod(&self, network: &Network, ns: &str, name: &str) -> anyhow::Result<Pod> {
        let netns = self.netns_name(name);
        Pod::create_chained(&netns, &self.node.subnet, network, &k8s_args(ns, name))
    }

    /// Registered pods by name.
    pub fn registered(&self) -> BTreeMap<String, meshlane::pods::PodRecord> {
        match meshlane::pods::Registry::open(&self.node.layout) {
            Ok(r) => r.list().into_iter().map(|p| (p.name.clone(), p)).collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Attachment records (container id/ifname/cookie) under the pin root.
    pub fn attachment_records(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.node.layout.cni_dir();
        for id in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for ifname in std::fs::read_dir(id.path()).into_iter().flatten().flatten() {
                for c in std::fs::read_dir(ifname.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    out.push(c.path());
                }
            }
            out.push(id.path());
        }
        out
    }

    /// Pinned per-pod links.
    pub fn pod_link_pins(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.node.layout.pod_links_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// Panics unless no pod state is left: no ml_pods or ml_pod_ips
    /// entry, no pod link pin, no attachment record.
    pub fn assert_no_pod_state(&self, when: &str) {
        let pods = self.node.map_entries("ml_pods");
        let ips = self.node.map_entries("ml_pod_ips");
        let pins = self.pod_link_pins();
        let records = self.attachment_records();
        assert!(
            pods == 0 && ips == 0 && pins.is_empty() && records.is_empty(),
            "{when}: left behind: ml_pods {pods}, ml_pod_ips {ips}, link pins {pins:?}, attachment records {records:?}"
        );
    }
}

/// CNI_ARGS of a Kubernetes pod.
pub fn k8s_args(ns: &str, name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x"
    )
}

pub fn pod_info(ns: &str, name: &str, mesh: MeshDecision) -> PodInfo {
    PodInfo {
        key: PodKey {
            namespace: ns.into(),
            name: name.into(),
        },
        uid: String::new(),
        ips: vec![],
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        workload: Default::default(),
        service_account: String::new(),
        mesh,
    }
}

/// CNI_PATH: Debian's plugins, then meshlane-cni's build directory.
pub fn bin_dirs() -> Vec<PathBuf> {
    vec![
        meshlane::sim::cni_bin_dir().expect("CNI plugins"),
        cni_runtime::dir_of(Path::new(PLUGIN)),
    ]
}
