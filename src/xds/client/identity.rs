//! A meshed pod's proxy identity as istiod knows its sidecar: the node id
//! `sidecar~<podIP>~<pod>.<ns>~<ns>.svc.cluster.local` and the node
//! metadata istiod reads to generate that sidecar's config (the keys and
//! encodings of Istio's `NodeMetadata`: strings, comma-joined lists, string
//! maps as structs). Pure: built from a [`PodInfo`] and the mesh settings.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::pods::source::{MeshDecision, PodInfo};

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
