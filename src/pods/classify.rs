//! Which pods are meshed, and with what settings: a pure function of a
//! Kubernetes Pod object (and the agent's excluded namespaces). Both pod
//! sources (the Kubernetes watch and the static file) go through it.
//!
//! A pod is meshed when it carries its mesh's proxy and has not opted out:
//! - Istio: an `istio-proxy` container, or an `istio-proxy` init container
//!   with `restartPolicy: Always` (a native sidecar), injected (the
//!   `sidecar.istio.io/status` annotation present), a sidecar (its args are
//!   not `proxy router`), `DISABLE_ENVOY` not set, and
//!   `sidecar.istio.io/inject` not false (the label wins over the annotation);
//! - Linkerd: a `linkerd-proxy` container (or native sidecar);
//! - Kuma: a `kuma-sidecar` container (or native sidecar);
//! - never in an excluded namespace, never with `meshlane.io/enabled: "false"`,
//!   never a hostNetwork pod, never a finished pod (phase Succeeded or
//!   Failed: its address may already be another pod's).
//!
//! Settings follow Istio's CNI plugin: the `traffic.sidecar.istio.io/*`
//! annotations (defaults: every inbound port but the proxy's own 15020,
//! 15021, 15090; every outbound address; outbound port 15020 excluded),
//! the proxy's uid/gid from its container's securityContext, DNS capture
//! from `ISTIO_META_DNS_CAPTURE` (the proxy's env, else `proxyMetadata` of
//! the `proxy.istio.io/config` annotation or the `PROXY_CONFIG` env). A pod
//! that still has Istio's `istio-init` container is meshed in accelerate
//! mode (its nat rules redirect; meshlane splices). Annotation values are
//! copied as given: a bad one makes the registration fail naming the pod
//! and the annotation's list (fail closed, as istio-cni does), never a
//! silently unmeshed pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::source::{
    AppContainer, ContainerPort, MeshDecision, OwnerRef, PodInfo, PodKey, WorkloadFacts,
};
use super::{PodMode, PodSpec, Preset};

/// Istio's proxy container.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// Istio's iptables init container (absent with Istio's CNI option).
pub const ISTIO_INIT: &str = "istio-init";
pub const LINKERD_PROXY: &str = "linkerd-proxy";
pub const KUMA_SIDECAR: &str = "kuma-sidecar";

/// meshlane's own opt-out: `meshlane.io/enabled: "false"` (label or annotation).
pub const ENABLED_KEY: &str = "meshlane.io/enabled";
/// `meshlane.io/splice: "false"`: intercept but never splice the pod.
pub const SPLICE_KEY: &str = "meshlane.io/splice";
/// `meshlane.io/exclude-splice-ports: "5432,6379"`.
pub const EXCLUDE_SPLICE_PORTS_KEY: &str = "meshlane.io/exclude-splice-ports";
/// `meshlane.io/bypass`: read by the xDS side, kept in the pod's annotations.
pub const BYPASS_KEY: &str = "meshlane.io/bypass";

const ISTIO_INJECT: &str = "sidecar.istio.io/inject";
const ISTIO_STATUS: &str = "sidecar.istio.io/status";
const ISTIO_PROXY_CONFIG: &str = "proxy.istio.io/config";
const ISTIO_TRAFFIC: &str = "traffic.sidecar.istio.io/";
/// Ports of the Istio proxy itself that istio-cni never redirects inbound.
const ISTIO_PROXY_INBOUND_PORTS: [&str; 3] = ["15020", "15021", "15090"];
/// istio-cni's default for excludeInboundPorts and excludeOutboundPorts.
const ISTIO_STATUS_PORT: &str = "15020";

/// What the classification needs besides the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyConfig {
    /// Namespaces whose pods are never meshed.
    pub excluded_namespaces: Vec<String>,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self {
            excluded_namespaces: vec!["kube-system".into()],
        }
    }
}

/// The catalog entry for `pod`; None when the object has no namespace or
/// name (not a pod the API server would serve).
pub fn classify(pod: &Pod, cfg: &ClassifyConfig) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let key = PodKey {
        namespace: meta.namespace.clone().filter(|n| !n.is_empty())?,
        name: meta.name.clone().filter(|n| !n.is_empty())?,
    };
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    let mesh = decide(pod, &key, &labels, &annotations, cfg);
    let workload = workload_facts(pod);
    Some(PodInfo {
        workload,
        annotations,
        uid: meta.uid.clone().unwrap_or_default(),
        ips: pod_ips(pod),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        labels,
        key,
        mesh,
    })
}

/// Owner, app containers with their ports and node, for the node metadata.
fn workload_facts(pod: &Pod) -> WorkloadFacts {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    let spec = pod.spec.as_ref();
    let app_containers = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.name != ISTIO_PROXY)
        .map(|c| AppContainer {
            name: c.name.clone(),
            ports: c
                .ports
                .iter()
                .flatten()
                .map(|p| ContainerPort {
                    name: p.name.clone().unwrap_or_default(),
                    container_port: p.container_port,
                    protocol: p.protocol.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    WorkloadFacts {
        owner,
        app_containers,
        node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
    }
}

/// status.podIPs (or status.podIP), parsed; unparsable entries skipped.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

fn not_meshed(reason: impl Into<String>) -> MeshDecision {
    MeshDecision::NotMeshed {
        reason: reason.into(),
    }
}

/// "false", "False", "0", ... as Go's strconv.ParseBool reads false.
fn is_false(v: &str) -> bool {
    matches!(v.trim(), "0" | "f" | "F" | "false" | "FALSE" | "False")
}

fn is_true(v: &str) -> bool {
    matches!(v.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn decide(
    pod: &Pod,
    key: &PodKey,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    cfg: &ClassifyConfig,
) -> MeshDecision {
    if cfg.excluded_namespaces.contains(&key.namespace) {
        return not_meshed(format!("namespace {} is excluded", key.namespace));
    }
    let opted_out = labels
        .get(ENABLED_KEY)
        .or_else(|| annotations.get(ENABLED_KEY))
        .is_some_and(|v| is_false(v));
    if opted_out {
        return not_meshed(format!("{ENABLED_KEY} is false"));
    }
    let Some(spec) = &pod.spec else {
        return not_meshed("no pod spec");
    };
    if spec.host_network == Some(true) {
        return not_meshed("uses the node's network (hostNetwork)");
    }
    // A finished pod's address may already belong to a new pod.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if let Some(p @ ("Succeeded" | "Failed")) = phase {
        return not_meshed(format!("pod has finished ({p})"));
    }
    let proxy = |name: &str| find_proxy(&spec.containers, spec.init_containers.as_deref(), name);
    if let Some(c) = proxy(ISTIO_PROXY) {
        return istio(key, c, spec.init_containers.as_deref(), labels, annotations);
    }
    if let Some(c) = proxy(LINKERD_PROXY) {
        return other_mesh(key, c, Preset::Linkerd, annotations);
    }
    if let Some(c) = proxy(KUMA_SIDECAR) {
        return other_mesh(key, c, Preset::Kuma, annotations);
    }
    not_meshed("no proxy container (istio-proxy, linkerd-proxy or kuma-sidecar)")
}

/// The proxy container called `name`: a regular container, or an init
/// container that keeps running (restartPolicy Always, a native sidecar).
fn find_proxy<'p>(
    containers: &'p [Container],
    init: Option<&'p [Container]>,
    name: &str,
) -> Option<&'p Container> {
    containers.iter().find(|c| c.name == name).or_else(|| {
        init?
            .iter()
            .find(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    })
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn istio(
    key: &PodKey,
    proxy: &Container,
    init: Option<&[Container]>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> MeshDecision {
    let inject = labels
        .get(ISTIO_INJECT)
        .or_else(|| annotations.get(ISTIO_INJECT));
    if inject.is_some_and(|v| is_false(v)) {
        return not_meshed(format!("{ISTIO_INJECT} is false"));
    }
    if !annotations.contains_key(ISTIO_STATUS) {
        return not_meshed(format!(
            "not injected by Istio (no {ISTIO_STATUS} annotation)"
        ));
    }
    if env_of(proxy, "DISABLE_ENVOY").is_some_and(|v| is_true(&v)) {
        return not_meshed("DISABLE_ENVOY is set on istio-proxy");
    }
    let args = proxy.args.as_deref().unwrap_or_default();
    if args.first().map(String::as_str) == Some("proxy")
        && args.get(1).is_some_and(|t| t != "sidecar")
    {
        return not_meshed(format!("istio-proxy runs as {} (not a sidecar)", args[1]));
    }
    let mut spec = PodSpec::istio(display_name(key));
    let traffic = |name: &str| annotations.get(&format!("{ISTIO_TRAFFIC}{name}")).cloned();
    spec.include_inbound_ports = traffic("includeInboundPorts").unwrap_or_else(|| "*".into());
    let exclude_in = traffic("excludeInboundPorts").unwrap_or_else(|| ISTIO_STATUS_PORT.into());
    spec.exclude_inbound_ports = with_proxy_ports(&exclude_in);
    spec.include_outbound_ports = traffic("includeOutboundPorts").unwrap_or_default();
    spec.exclude_outbound_ports =
        traffic("excludeOutboundPorts").unwrap_or_else(|| ISTIO_STATUS_PORT.into());
    spec.include_outbound_ip_ranges =
        traffic("includeOutboundIPRanges").unwrap_or_else(|| "*".into());
    spec.exclude_outbound_ip_ranges = traffic("excludeOutboundIPRanges").unwrap_or_default();
    (spec.proxy_uid, spec.proxy_gid) = proxy_ids(proxy);
    spec.dns_capture = dns_capture(proxy, annotations);
    let has_init = init.is_some_and(|i| i.iter().any(|c| c.name == ISTIO_INIT));
    if has_init {
        spec.mode = PodMode::Accelerate;
    }
    meshlane_settings(&mut spec, annotations);
    MeshDecision::Meshed { spec }
}

/// `list` plus Istio's proxy ports, deduplicated, in first-seen order.
fn with_proxy_ports(list: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let items = list.split(',').map(str::trim).filter(|p| !p.is_empty());
    for p in items.chain(ISTIO_PROXY_INBOUND_PORTS) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.join(",")
}

/// runAsUser/runAsGroup of the proxy container; 0 or absent means the
/// preset's default (istio-cni does the same).
fn proxy_ids(proxy: &Container) -> (Option<u32>, Option<u32>) {
    let sc = proxy.security_context.as_ref();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v != 0);
    (
        id(sc.and_then(|s| s.run_as_user)),
        id(sc.and_then(|s| s.run_as_group)),
    )
}

/// ISTIO_META_DNS_CAPTURE from the proxy's env, else from proxyMetadata of
/// the proxy.istio.io/config annotation, else of the PROXY_CONFIG env.
fn dns_capture(proxy: &Container, annotations: &BTreeMap<String, String>) -> bool {
    const KEY: &str = "ISTIO_META_DNS_CAPTURE";
    if let Some(v) = env_of(proxy, KEY) {
        return is_true(&v);
    }
    let from_config = |text: &str| -> Option<bool> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
        let v = doc.get("proxyMetadata")?.get(KEY)?;
        Some(v.as_str().map(is_true).or(v.as_bool()).unwrap_or(false))
    };
    annotations
        .get(ISTIO_PROXY_CONFIG)
        .and_then(|t| from_config(t))
        .or_else(|| env_of(proxy, "PROXY_CONFIG").and_then(|t| from_config(&t)))
        .unwrap_or(false)
}

/// Linkerd or Kuma: the preset's ports and uid, the container's uid when
/// set, and the mesh's skip-port annotations.
fn other_mesh(
    key: &PodKey,
    proxy: &Container,
    preset: Preset,
    annotations: &BTreeMap<String, String>,
) -> MeshDecision {
    let mut spec = PodSpec::istio(display_name(key));
    spec.preset = preset;
    (spec.proxy_uid, spec.proxy_gid) = proxy_ids(proxy);
    let (skip_in, skip_out) = match preset {
        Preset::Linkerd => (
            "config.linkerd.io/skip-inbound-ports",
            "config.linkerd.io/skip-outbound-ports",
        ),
        _ => (
            "traffic.kuma.io/exclude-inbound-ports",
            "traffic.kuma.io/exclude-outbound-ports",
        ),
    };
    spec.exclude_inbound_ports = annotations.get(skip_in).cloned().unwrap_or_default();
    spec.exclude_outbound_ports = annotations.get(skip_out).cloned().unwrap_or_default();
    meshlane_settings(&mut spec, annotations);
    MeshDecision::Meshed { spec }
}

/// meshlane's own per-pod annotations.
fn meshlane_settings(spec: &mut PodSpec, annotations: &BTreeMap<String, String>) {
    if annotations.get(SPLICE_KEY).is_some_and(|v| is_false(v)) {
        spec.splice = false;
    }
    if let Some(p) = annotations.get(EXCLUDE_SPLICE_PORTS_KEY) {
        spec.exclude_splice_ports = p.clone();
    }
}

/// The registration's name: "namespace/name", cut to the kernel record's
/// 63 bytes on a character boundary.
pub fn display_name(key: &PodKey) -> String {
    let full = key.to_string();
    let mut end = full.len().min(63);
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    full[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = include_str!(
        "../../tests/fixtures/istio/iptables/REFERENCE_injected-pod_hello.yaml.injected"
    );

    /// The fixture's pod template as a Pod named default/hello-1 (the
    /// injector's output is a Deployment).
    fn hello_pod() -> Pod {
        use serde::Deserialize;
        let first = serde_yaml_ng::Deserializer::from_str(HELLO).next().unwrap();
        let doc = serde_yaml_ng::Value::deserialize(first).unwrap();
        let template = &doc["spec"]["template"];
        let mut pod: Pod = serde_yaml_ng::from_value(template.clone()).unwrap();
        pod.metadata.name = Some("hello-1".into());
        pod.metadata.namespace = Some("default".into());
        pod
    }

    /// hello_pod converted the way Istio's CNI option injects: no
    /// istio-init container.
    fn hello_cni_pod() -> Pod {
        let mut pod = hello_pod();
        if let Some(spec) = pod.spec.as_mut() {
            if let Some(init) = spec.init_containers.as_mut() {
                init.retain(|c| c.name != ISTIO_INIT);
            }
        }
        pod
    }

    fn annotate(pod: &mut Pod, k: &str, v: &str) {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
    }

    fn spec_of(pod: &Pod) -> PodSpec {
        match classify(pod, &ClassifyConfig::default()).unwrap().mesh {
            MeshDecision::Meshed { spec } => spec,
            MeshDecision::NotMeshed { reason } => panic!("not meshed: {reason}"),
        }
    }

    fn reason_of(pod: &Pod, cfg: &ClassifyConfig) -> String {
        match classify(pod, cfg).unwrap().mesh {
            MeshDecision::Meshed { spec } => panic!("meshed: {spec:?}"),
            MeshDecision::NotMeshed { reason } => reason,
        }
    }

    #[test]
    fn injected_native_sidecar_pod_is_meshed_with_istio_defaults() {
        let spec = spec_of(&hello_cni_pod());
        assert_eq!(spec.name, "default/hello-1");
        assert_eq!(spec.preset, Preset::Istio);
        assert_eq!(spec.mode, PodMode::Intercept);
        assert_eq!((spec.proxy_uid, spec.proxy_gid), (Some(1337), Some(1337)));
        assert_eq!(spec.include_inbound_ports, "*");
        assert_eq!(spec.exclude_inbound_ports, "15020,15021,15090");
        assert_eq!(spec.exclude_outbound_ports, "15020");
        assert_eq!(spec.include_outbound_ip_ranges, "*");
        assert!(!spec.dns_capture);
        assert!(spec.splice);
        spec.to_abi().expect("the defaults fit the kernel record");
    }

    #[test]
    fn a_pod_with_istio_init_is_meshed_in_accelerate_mode() {
        assert_eq!(spec_of(&hello_pod()).mode, PodMode::Accelerate);
    }

    #[test]
    fn labels_and_service_account_are_carried() {
        let mut pod = hello_cni_pod();
        if let Some(s) = pod.spec.as_mut() {
            s.service_account_name = Some("hello-sa".into());
        }
        let info = classify(&pod, &ClassifyConfig::default()).unwrap();
        assert_eq!(info.service_account, "hello-sa");
        assert_eq!(info.labels.get("app").map(String::as_str), Some("hello"));
        assert!(info.annotations.contains_key("sidecar.istio.io/status"));
    }

    #[test]
    fn owner_app_containers_ports_and_node_are_carried() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let mut pod = hello_cni_pod();
        pod.metadata.owner_references = Some(vec![
            OwnerReference {
                api_version: "v1".into(),
                kind: "Other".into(),
                name: "not-the-controller".into(),
                ..Default::default()
            },
            OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "hello-5d9c".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        if let Some(s) = pod.spec.as_mut() {
            s.node_name = Some("node-1".into());
            if let Some(app) = s.containers.iter_mut().find(|c| c.name != ISTIO_PROXY) {
                app.ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 8080,
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]);
            }
        }
        let w = classify(&pod, &ClassifyConfig::default()).unwrap().workload;
        assert_eq!(w.owner.map(|o| o.name).as_deref(), Some("hello-5d9c"));
        assert_eq!(w.node_name, "node-1");
        assert!(w.app_containers.iter().all(|c| c.name != ISTIO_PROXY));
        let ports: Vec<i32> = w
            .app_containers
            .iter()
            .flat_map(|c| c.ports.iter().map(|p| p.container_port))
            .collect();
        assert_eq!(ports, [8080]);
    }

    #[test]
    fn a_native_sidecar_needs_restart_policy_always() {
        let mut pod = hello_cni_pod();
        for c in pod
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .iter_mut()
            .flatten()
        {
            c.restart_policy = None;
        }
        let r = reason_of(&pod, &ClassifyConfig::default());
        assert!(r.contains("no proxy container"), "{r}");
    }

    #[test]
    fn opt_outs_and_excluded_namespaces() {
        let cfg = ClassifyConfig {
            excluded_namespaces: vec!["kube-system".into(), "meshlane-system".into()],
        };
        let mut pod = hello_cni_pod();
        annotate(&mut pod, "sidecar.istio.io/inject", "false");
        assert!(reason_of(&pod, &cfg).contains("inject"));
        // The label wins over the annotation.
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("sidecar.istio.io/inject".into(), "true".into());
        assert!(matches!(
            classify(&pod, &cfg).unwrap().mesh,
            MeshDecision::Meshed { .. }
        ));
        let mut pod = hello_cni_pod();
        annotate(&mut pod, ENABLED_KEY, "false");
        assert!(reason_of(&pod, &cfg).contains(ENABLED_KEY));
        let mut pod = hello_cni_pod();
        pod.metadata.namespace = Some("meshlane-system".into());
        assert!(reason_of(&pod, &cfg).contains("excluded"));
        let mut pod = hello_cni_pod();
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ISTIO_STATUS);
        assert!(reason_of(&pod, &cfg).contains("not injected"));
    }

    #[test]
    fn gateways_and_disabled_envoy_are_not_meshed() {
        let mut pod = hello_cni_pod();
        let init = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
        init[0].args = Some(vec!["proxy".into(), "router".into()]);
        assert!(reason_of(&pod, &ClassifyConfig::default()).contains("router"));
        let mut pod = hello_cni_pod();
        let init = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
        init[0]
            .env
            .get_or_insert_with(Vec::new)
            .push(k8s_openapi::api::core::v1::EnvVar {
                name: "DISABLE_ENVOY".into(),
                value: Some("true".into()),
                value_from: None,
            });
        assert!(reason_of(&pod, &ClassifyConfig::default()).contains("DISABLE_ENVOY"));
    }

    #[test]
    fn host_network_and_finished_pods_are_not_meshed() {
        let mut pod = hello_cni_pod();
        pod.spec.as_mut().unwrap().host_network = Some(true);
        assert!(reason_of(&pod, &ClassifyConfig::default()).contains("hostNetwork"));
        for phase in ["Succeeded", "Failed"] {
            let mut pod = hello_cni_pod();
            pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            assert!(reason_of(&pod, &ClassifyConfig::default()).contains(phase));
        }
    }

    #[test]
    fn a_pod_without_any_proxy_is_not_meshed() {
        let mut pod = hello_cni_pod();
        pod.spec.as_mut().unwrap().init_containers = None;
        assert!(reason_of(&pod, &ClassifyConfig::default()).contains("no proxy"));
    }

    #[test]
    fn istio_traffic_annotations_become_settings() {
        let mut pod = hello_cni_pod();
        for (k, v) in [
            ("includeInboundPorts", "8080,9090"),
            ("excludeInboundPorts", "9090,15021"),
            ("includeOutboundPorts", "443"),
            ("excludeOutboundPorts", "5432"),
            ("includeOutboundIPRanges", "10.0.0.0/8"),
            ("excludeOutboundIPRanges", "10.96.0.1/32"),
        ] {
            annotate(&mut pod, &format!("traffic.sidecar.istio.io/{k}"), v);
        }
        annotate(&mut pod, SPLICE_KEY, "false");
        annotate(&mut pod, EXCLUDE_SPLICE_PORTS_KEY, "6379");
        let spec = spec_of(&pod);
        assert_eq!(spec.include_inbound_ports, "8080,9090");
        assert_eq!(spec.exclude_inbound_ports, "9090,15021,15020,15090");
        assert_eq!(spec.include_outbound_ports, "443");
        assert_eq!(spec.exclude_outbound_ports, "5432");
        assert_eq!(spec.include_outbound_ip_ranges, "10.0.0.0/8");
        assert_eq!(spec.exclude_outbound_ip_ranges, "10.96.0.1/32");
        assert!(!spec.splice);
        assert_eq!(spec.exclude_splice_ports, "6379");
    }

    #[test]
    fn a_bad_annotation_fails_registration_naming_pod_and_list() {
        let mut pod = hello_cni_pod();
        annotate(
            &mut pod,
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "80,http",
        );
        let e = spec_of(&pod).to_abi().unwrap_err().to_string();
        assert!(
            e.contains("default/hello-1") && e.contains("excludeOutboundPorts"),
            "{e}"
        );
    }

    #[test]
    fn proxy_uid_gid_and_dns_capture() {
        let mut pod = hello_cni_pod();
        let init = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
        let sc = init[0].security_context.as_mut().unwrap();
        sc.run_as_user = Some(2000);
        sc.run_as_group = Some(3000);
        annotate(
            &mut pod,
            "proxy.istio.io/config",
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n",
        );
        let spec = spec_of(&pod);
        assert_eq!((spec.proxy_uid, spec.proxy_gid), (Some(2000), Some(3000)));
        assert!(spec.dns_capture);
        // The proxy's env wins over the annotation.
        let init = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
        init[0]
            .env
            .get_or_insert_with(Vec::new)
            .push(k8s_openapi::api::core::v1::EnvVar {
                name: "ISTIO_META_DNS_CAPTURE".into(),
                value: Some("false".into()),
                value_from: None,
            });
        assert!(!spec_of(&pod).dns_capture);
    }

    #[test]
    fn linkerd_and_kuma_presets() {
        for (name, preset, uid) in [
            (LINKERD_PROXY, Preset::Linkerd, 2102),
            (KUMA_SIDECAR, Preset::Kuma, 5678),
        ] {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "shop", "name": "cart-0",
                    "annotations": {"config.linkerd.io/skip-inbound-ports": "4444",
                                    "traffic.kuma.io/exclude-inbound-ports": "4444"}},
                "spec": {"containers": [{"name": "app"}, {"name": name}]},
                "status": {"podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}]}
            }))
            .unwrap();
            let info = classify(&pod, &ClassifyConfig::default()).unwrap();
            assert_eq!(info.ips.len(), 2);
            let MeshDecision::Meshed { spec } = info.mesh else {
                panic!("{name}: not meshed");
            };
            assert_eq!(spec.preset, preset);
            assert_eq!(spec.exclude_inbound_ports, "4444");
            assert_eq!(spec.to_abi().unwrap().proxy_uid, uid);
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let key = PodKey {
            namespace: "n".repeat(30),
            name: "é".repeat(30),
        };
        let n = display_name(&key);
        assert!(n.len() <= 63 && n.starts_with(&key.namespace));
        assert!(PodSpec::istio(n).to_abi().is_ok());
    }

    #[test]
    fn objects_without_a_name_are_skipped() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        assert!(classify(&pod, &ClassifyConfig::default()).is_none());
    }
}
