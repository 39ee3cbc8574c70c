//! A meshed pod's proxy identity as istiod knows its sidecar: the node id
//! `sidecar~<podIP>~<pod>.<ns>~<ns>.svc.cluster.local` and the node
//! metadata istiod reads to generate that sidecar's config (the keys and
//! encodings of Istio's `NodeMetadata`: strings, comma-joined lists, string
//! maps as structs, POD_PORTS as the JSON text of the app containers'
//! ports, OWNER as the controller's `kubernetes://apis/...` path, as the
//! injector writes them). Pure: built from a [`PodInfo`] and the mesh
//! settings.
//!
//! Not sent: PROXY_CONFIG. The injector sends the mesh's default proxy
//! config merged with the pod's `proxy.istio.io/config` annotation; the
//! agent does not know the mesh default, and a partial one would replace
//! it in istiod (which uses its own mesh default when none is sent: the
//! same config as the pod's unless the pod overrides it; see
//! docs/bypass.md).

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::pods::source::{MeshDecision, OwnerRef, PodInfo};

/// The annotation that opts a pod out of bypass (`"false"`).
pub const BYPASS_ANNOTATION: &str = "meshlane.io/bypass";

/// Mesh-wide settings every identity on the node shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// CLUSTER_ID (istiod's name for this Kubernetes cluster).
    pub cluster_id: String,
    /// MESH_ID (the trust domain by default).
    pub mesh_id: String,
    /// ISTIO_VERSION of the sidecars; empty: not sent (istiod then assumes
    /// its own version).
    pub istio_version: String,
}

/// One proxy identity: what the client sends as `node` on a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyIdentity {
    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub node_id: String,
    pub node: Node,
}

/// Why a pod gets no stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoStream {
    #[error("not meshed")]
    NotMeshed,
    #[error("bypass opted out (annotation {BYPASS_ANNOTATION})")]
    OptedOut,
    #[error("no pod IP yet")]
    NoAddress,
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    let fields: HashMap<String, Value> = m.iter().map(|(k, v)| (k.clone(), string(v))).collect();
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// The workload name Istio's injector would give: the canonical-name
/// label, else `app`, else the pod name.
pub(crate) fn workload_name(pod: &PodInfo) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|l| pod.labels.get(*l).cloned())
    .unwrap_or_else(|| pod.key.name.clone())
}

/// OWNER as Istio's injector writes it: the controller's API path, a
/// ReplicaSet made by a Deployment (it carries `pod-template-hash`) named
/// as that Deployment; a pod without controller names itself.
fn owner(pod: &PodInfo) -> String {
    let ns = &pod.key.namespace;
    let Some(o) = &pod.workload.owner else {
        return format!("kubernetes://apis/v1/namespaces/{ns}/pods/{}", pod.key.name);
    };
    let deployment = pod
        .labels
        .get("pod-template-hash")
        .filter(|_| o.kind == "ReplicaSet")
        .and_then(|hash| o.name.strip_suffix(&format!("-{hash}")));
    if let Some(name) = deployment {
        return format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}");
    }
    let OwnerRef {
        api_version,
        kind,
        name,
    } = o;
    let plural = format!("{}s", kind.to_ascii_lowercase());
    format!("kubernetes://apis/{api_version}/namespaces/{ns}/{plural}/{name}")
}

/// POD_PORTS: every app container's declared ports as a JSON list (empty
/// when none is declared: not sent).
fn pod_ports(pod: &PodInfo) -> Option<String> {
    let ports: Vec<_> = pod
        .workload
        .app_containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .collect();
    if ports.is_empty() {
        return None;
    }
    serde_json::to_string(&ports).ok()
}

impl ProxyIdentity {
    /// The identity of `pod`'s sidecar, or why it gets no stream.
    pub fn for_pod(pod: &PodInfo, mesh: &MeshSettings) -> Result<Self, NoStream> {
        if !matches!(pod.mesh, MeshDecision::Meshed { .. }) {
            return Err(NoStream::NotMeshed);
        }
        if pod
            .annotations
            .get(BYPASS_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
        {
            return Err(NoStream::OptedOut);
        }
        let ip = pod.ips.first().ok_or(NoStream::NoAddress)?;
        let (ns, name) = (&pod.key.namespace, &pod.key.name);
        let node_id = format!("sidecar~{ip}~{name}.{ns}~{ns}.svc.cluster.local");
        let ips: Vec<String> = pod.ips.iter().map(|i| i.to_string()).collect();
        let workload = workload_name(pod);
        let mut md: HashMap<String, Value> = HashMap::new();
        md.insert("NAME".into(), string(name));
        md.insert("NAMESPACE".into(), string(ns));
        md.insert("INSTANCE_IPS".into(), string(ips.join(",")));
        md.insert("LABELS".into(), string_map(&pod.labels));
        md.insert("ANNOTATIONS".into(), string_map(&pod.annotations));
        md.insert("WORKLOAD_NAME".into(), string(&workload));
        md.insert("INTERCEPTION_MODE".into(), string("REDIRECT"));
        md.insert("CLUSTER_ID".into(), string(&mesh.cluster_id));
        md.insert("MESH_ID".into(), string(&mesh.mesh_id));
        if !pod.service_account.is_empty() {
            md.insert("SERVICE_ACCOUNT".into(), string(&pod.service_account));
        }
        if !mesh.istio_version.is_empty() {
            md.insert("ISTIO_VERSION".into(), string(&mesh.istio_version));
        }
        md.insert("OWNER".into(), string(owner(pod)));
        if let Some(ports) = pod_ports(pod) {
            md.insert("POD_PORTS".into(), string(ports));
        }
        let apps: Vec<&str> = pod
            .workload
            .app_containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if !apps.is_empty() {
            md.insert("APP_CONTAINERS".into(), string(apps.join(",")));
        }
        if !pod.workload.node_name.is_empty() {
            md.insert("NODE_NAME".into(), string(&pod.workload.node_name));
        }
        let node = Node {
            id: node_id.clone(),
            cluster: format!("{workload}.{ns}"),
            metadata: Some(Struct { fields: md }),
            user_agent_name: "meshlane".into(),
            ..Default::default()
        };
        Ok(Self { node_id, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::source::PodKey;
    use crate::pods::PodSpec;

    pub(crate) fn pod(name: &str, ip: &str) -> PodInfo {
        PodInfo {
            key: PodKey {
                namespace: "shop".into(),
                name: name.into(),
            },
            uid: String::new(),
            ips: vec![ip.parse().unwrap(), "fd00::5".parse().unwrap()],
            labels: [("app".to_string(), "cart".to_string())].into(),
            service_account: "cart-sa".into(),
            annotations: BTreeMap::new(),
            workload: Default::default(),
            mesh: MeshDecision::Meshed {
                spec: PodSpec::istio(name),
            },
        }
    }

    fn mesh() -> MeshSettings {
        MeshSettings {
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            istio_version: "1.24.2".into(),
        }
    }

    fn md(id: &ProxyIdentity, key: &str) -> Option<Kind> {
        id.node.metadata.as_ref()?.fields.get(key)?.kind.clone()
    }

    #[test]
    fn node_id_and_metadata_follow_istio() {
        let id = ProxyIdentity::for_pod(&pod("cart-1", "10.1.0.7"), &mesh()).unwrap();
        assert_eq!(
            id.node_id,
            "sidecar~10.1.0.7~cart-1.shop~shop.svc.cluster.local"
        );
        assert_eq!(id.node.id, id.node_id);
        assert_eq!(
            md(&id, "INSTANCE_IPS"),
            Some(Kind::StringValue("10.1.0.7,fd00::5".into()))
        );
        assert_eq!(
            md(&id, "SERVICE_ACCOUNT"),
            Some(Kind::StringValue("cart-sa".into()))
        );
        assert_eq!(
            md(&id, "WORKLOAD_NAME"),
            Some(Kind::StringValue("cart".into()))
        );
        let Some(Kind::StructValue(labels)) = md(&id, "LABELS") else {
            panic!("LABELS is a struct");
        };
        assert_eq!(
            labels.fields["app"].kind,
            Some(Kind::StringValue("cart".into()))
        );
        assert_eq!(id.node.cluster, "cart.shop");
    }

    #[test]
    fn owner_ports_containers_and_node_are_encoded_as_the_injector_does() {
        use crate::pods::source::{AppContainer, ContainerPort};
        let mut p = pod("cart-7d4f9-x2x", "10.1.0.7");
        let text = |id: &ProxyIdentity, key: &str| match md(id, key) {
            Some(Kind::StringValue(s)) => Some(s),
            _ => None,
        };
        let id = ProxyIdentity::for_pod(&p, &mesh()).unwrap();
        assert_eq!(
            text(&id, "OWNER").as_deref(),
            Some("kubernetes://apis/v1/namespaces/shop/pods/cart-7d4f9-x2x")
        );
        assert_eq!(text(&id, "POD_PORTS"), None);
        assert_eq!(text(&id, "APP_CONTAINERS"), None);
        p.labels.insert("pod-template-hash".into(), "7d4f9".into());
        p.workload.owner = Some(OwnerRef {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "cart-7d4f9".into(),
        });
        p.workload.node_name = "node-a".into();
        p.workload.app_containers = vec![
            AppContainer {
                name: "cart".into(),
                ports: vec![ContainerPort {
                    name: "http".into(),
                    container_port: 8080,
                    protocol: "TCP".into(),
                }],
            },
            AppContainer {
                name: "cache".into(),
                ports: vec![ContainerPort {
                    name: String::new(),
                    container_port: 6379,
                    protocol: String::new(),
                }],
            },
        ];
        let id = ProxyIdentity::for_pod(&p, &mesh()).unwrap();
        assert_eq!(
            text(&id, "OWNER").as_deref(),
            Some("kubernetes://apis/apps/v1/namespaces/shop/deployments/cart")
        );
        assert_eq!(
            text(&id, "POD_PORTS").as_deref(),
            Some(
                r#"[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":6379}]"#
            )
        );
        assert_eq!(text(&id, "APP_CONTAINERS").as_deref(), Some("cart,cache"));
        assert_eq!(text(&id, "NODE_NAME").as_deref(), Some("node-a"));
        p.workload.owner = Some(OwnerRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "db".into(),
        });
        let id = ProxyIdentity::for_pod(&p, &mesh()).unwrap();
        assert_eq!(
            text(&id, "OWNER").as_deref(),
            Some("kubernetes://apis/apps/v1/namespaces/shop/statefulsets/db")
        );
    }

    #[test]
    fn unmeshed_opted_out_and_addressless_pods_get_no_stream() {
        let mut p = pod("a", "10.1.0.8");
        p.annotations
            .insert(BYPASS_ANNOTATION.into(), "False".into());
        assert_eq!(ProxyIdentity::for_pod(&p, &mesh()), Err(NoStream::OptedOut));
        p.annotations.clear();
        p.ips.clear();
        assert_eq!(
            ProxyIdentity::for_pod(&p, &mesh()),
            Err(NoStream::NoAddress)
        );
        p.mesh = MeshDecision::NotMeshed {
            reason: "no proxy".into(),
        };
        assert_eq!(
            ProxyIdentity::for_pod(&p, &mesh()),
            Err(NoStream::NotMeshed)
        );
    }
}
