//! charts/meshlane through Helm's own engine (tests/helm): every template
//! rendered with the defaults, with a values file that sets every option and
//! in cleanup mode; `helm lint --strict` finds nothing above info; each
//! rendered document deserialises as the Kubernetes kind it declares
//! (k8s-openapi types; unknown kinds and unknown fields fail); the DaemonSet
//! is what docs/install.md says; values.schema.json accepts the defaults
//! and rejects each file in tests/fixtures/chart/invalid; the ConfigMap's
//! agent config passes `meshlane agent --check-config`, and a broken one is
//! refused naming the field. No root needed.
mod helm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshlane");

/// The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), the
/// fields the chart uses; anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScrapeEndpoint {
    port: String,
    path: String,
    interval: String,
    scrape_timeout: String,
}

/// Every kind the chart may render, typed.
#[derive(Debug)]
enum Manifest {
    DaemonSet(Box<DaemonSet>),
    ConfigMap(Box<ConfigMap>),
    ServiceAccount(Box<ServiceAccount>),
    Service(Box<Service>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Job(Box<Job>),
    ServiceMonitor(Box<ServiceMonitor>),
}

/// Deserialises `doc` as `T`; a field `T` does not know is an error.
fn strictly<T: DeserializeOwned>(doc: &Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let t = serde_ignored::deserialize(doc.clone(), |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(t)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// The document as the kind it declares.
fn typed(doc: &Value) -> Result<Manifest, String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    Ok(match (api, kind) {
        ("apps/v1", "DaemonSet") => Manifest::DaemonSet(Box::new(strictly(doc)?)),
        ("v1", "ConfigMap") => Manifest::ConfigMap(Box::new(strictly(doc)?)),
        ("v1", "ServiceAccount") => Manifest::ServiceAccount(Box::new(strictly(doc)?)),
        ("v1", "Service") => Manifest::Service(Box::new(strictly(doc)?)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Manifest::ClusterRole(Box::new(strictly(doc)?))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Manifest::ClusterRoleBinding(Box::new(strictly(doc)?))
        }
        ("batch/v1", "Job") => Manifest::Job(Box::new(strictly(doc)?)),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            let m: ServiceMonitor = strictly(doc)?;
            assert_eq!((m.api_version.as_str(), m.kind.as_str()), (api, kind));
            Manifest::ServiceMonitor(Box::new(m))
        }
        _ => return Err(format!("unknown kind {api}/{kind}")),
    })
}

/// Renders with `values`, checks the schema passes, and types every
/// document (failing with the template path and the reason).
fn render_typed(values: Option<&Path>) -> (Vec<(String, Value)>, Vec<Manifest>) {
    let manifests = helm::render(values).unwrap_or_else(|e| panic!("render {values:?}: {e}"));
    assert!(
        manifests.keys().any(|k| k.ends_with("NOTES.txt")),
        "NOTES.txt not rendered"
    );
    let docs = helm::documents(&manifests);
    let typed_docs = docs
        .iter()
        .map(|(path, d)| typed(d).unwrap_or_else(|e| panic!("{path}: {e}\n{d:#}")))
        .collect();
    (docs, typed_docs)
}

fn fixture(name: &str) -> PathBuf {
    helm::repo_path("tests/fixtures/chart").join(name)
}

fn daemonset(typed: &[Manifest]) -> &DaemonSet {
    let ds: Vec<&DaemonSet> = typed
        .iter()
        .filter_map(|m| match m {
            Manifest::DaemonSet(d) => Some(d.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(ds.len(), 1, "one DaemonSet expected");
    ds[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet has a pod spec")
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn command(c: &Container) -> Vec<String> {
    let mut v = c.command.clone().unwrap_or_default();
    v.extend(c.args.clone().unwrap_or_default());
    v
}

fn init_containers(spec: &PodSpec) -> &[Container] {
    spec.init_containers.as_deref().unwrap_or_default()
}

/// What Kubernetes refuses in a container's securityContext:
/// allowPrivilegeEscalation false beside privileged or SYS_ADMIN.
fn security_contexts_are_admissible(spec: &PodSpec) {
    for c in spec.containers.iter().chain(init_containers(spec)) {
        let Some(sc) = &c.security_context else {
            continue;
        };
        if sc.allow_privilege_escalation != Some(false) {
            continue;
        }
        let adds = sc
            .capabilities
            .as_ref()
            .and_then(|k| k.add.clone())
            .unwrap_or_default();
        assert!(
            sc.privileged != Some(true)
                && !adds
                    .iter()
                    .any(|a| a.trim_start_matches("CAP_") == "SYS_ADMIN"),
            "{}: allowPrivilegeEscalation false with privileged or SYS_ADMIN",
            c.name
        );
    }
}

/// The node paths the pod mounts (hostPath volumes), and whether each
/// volume is mounted by some container (none unused).
fn host_paths(spec: &PodSpec) -> BTreeSet<String> {
    security_contexts_are_admissible(spec);
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mounted: BTreeSet<&str> = spec
        .containers
        .iter()
        .chain(init_containers(spec))
        .flat_map(|c| c.volume_mounts.as_deref().unwrap_or_default())
        .map(|m| m.name.as_str())
        .collect();
    for v in volumes {
        assert!(
            mounted.contains(v.name.as_str()),
            "volume {} is mounted by no container",
            v.name
        );
    }
    volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect()
}

#[test]
fn an_unknown_field_or_kind_is_caught() {
    let pod_ish: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "lables": {"a": "b"}}, "data": {}
    });
    let e = typed(&pod_ish).expect_err("a misspelt field must not pass");
    assert!(e.contains("lables"), "{e}");
    let e = typed(&serde_json::json!({"apiVersion": "v1", "kind": "Pdo"})).unwrap_err();
    assert!(e.contains("unknown kind"), "{e}");
    let e = typed(
        &serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "spec": {"selector": 3}}),
    )
    .unwrap_err();
    assert!(!e.is_empty());
}

#[test]
fn defaults_render_lint_and_type_check() {
    if !helm::available("defaults_render_lint_and_type_check") {
        return;
    }
    let (docs, typed) = render_typed(None);
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "Job",
    ]
    .into();
    assert_eq!(kinds, want, "kinds rendered with the defaults");
    for (_, d) in &docs {
        let labels = &d["metadata"]["labels"];
        for l in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(labels[l].is_string(), "{} lacks label {l}", d["kind"]);
        }
    }
    let ds = daemonset(&typed);
    agent_daemonset_is_as_documented(ds);
    config_service_and_account_fit_the_daemonset(&typed, ds);
    rbac_is_pods_only(&typed);
    uninstall_guard_is_a_pre_delete_hook(&typed);
}

fn agent_daemonset_is_as_documented(ds: &DaemonSet) {
    let spec = ds.spec.as_ref().expect("spec");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "template lacks selector label {k}");
    }
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        serde_json::to_value(&rolling.max_surge).unwrap(),
        serde_json::json!(0),
        "maxSurge must stay 0 (one agent per pin root)"
    );
    let pod = pod_spec(ds);
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "no toleration for every node"
    );
    assert_eq!((pod.host_network, pod.host_pid), (Some(true), Some(true)));

    let agent = container(&pod.containers, "agent");
    assert_eq!(
        command(agent),
        ["meshlane", "agent", "--config", "/etc/meshlane/agent.yaml"]
    );
    let env: BTreeMap<String, String> = agent
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let f = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.clone(), f.field_path.clone()))
        })
        .collect();
    assert_eq!(
        env.get("NODE_NAME").map(String::as_str),
        Some("spec.nodeName")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        (
            g.path.clone().unwrap_or_default(),
            serde_json::to_value(&g.port).unwrap(),
        )
    };
    assert_eq!(
        probe_path(&agent.readiness_probe),
        ("/healthz/ready".to_string(), serde_json::json!("admin"))
    );
    assert_eq!(
        probe_path(&agent.liveness_probe),
        ("/healthz/live".to_string(), serde_json::json!("admin"))
    );
    let port = &agent.ports.as_deref().unwrap_or_default()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("admin"), 15098)
    );
    let resources = agent.resources.as_ref().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());

    let sc = agent.security_context.as_ref().expect("securityContext");
    assert_eq!(
        sc.privileged,
        Some(false),
        "the agent must not be privileged"
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.clone().unwrap_or_default(),
        [
            "BPF",
            "PERFMON",
            "NET_ADMIN",
            "SYS_ADMIN",
            "NET_RAW",
            "SYS_PTRACE"
        ]
    );

    let inits: Vec<Vec<String>> = init_containers(pod).iter().map(command).collect();
    assert_eq!(inits.len(), 2, "{inits:?}");
    let install_mounts: Vec<&str> = init_containers(pod)[0]
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        install_mounts,
        ["config", "bpffs", "cgroup"],
        "install mounts"
    );
    assert_eq!(
        inits[0],
        [
            "meshlane",
            "agent",
            "--once",
            "--config",
            "/etc/meshlane/agent.yaml"
        ]
    );
    assert_eq!(inits[1][..2], ["meshlane", "install-cni"]);
    assert!(!inits[1].contains(&"--watch".to_string()));
    let watch = command(container(&pod.containers, "install-cni"));
    assert!(watch.contains(&"--watch".to_string()), "{watch:?}");
    for c in [&inits[1], &watch] {
        for pair in [
            ["--bin-dir", "/host/opt/cni/bin"],
            ["--conf-dir", "/host/etc/cni/net.d"],
            ["--pin-root", "/sys/fs/bpf/meshlane"],
            ["--exclude-namespaces", "kube-system"],
        ] {
            assert!(c.windows(2).any(|w| w == pair), "{pair:?} not in {c:?}");
        }
    }
    for name in ["agent", "install-cni"] {
        let env = container(&pod.containers, name)
            .env
            .as_deref()
            .unwrap_or_default();
        let ns = env.iter().find(|e| e.name == "POD_NAMESPACE");
        let field = ns.and_then(|e| e.value_from.as_ref()?.field_ref.as_ref());
        assert_eq!(
            field.map(|f| f.field_path.as_str()),
            Some("metadata.namespace"),
            "{name} lacks POD_NAMESPACE"
        );
    }
    let paths = host_paths(pod);
    let want: BTreeSet<String> = [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/run/meshlane",
        "/var/run/netns",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths, want, "hostPath mounts");
}

/// The ConfigMap carries agent.yaml, the metrics Service is headless and
/// selects the agents on the admin port, the account is the pods'.
fn config_service_and_account_fit_the_daemonset(typed: &[Manifest], ds: &DaemonSet) {
    let pod = pod_spec(ds);
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone());
    for m in typed {
        match m {
            Manifest::ConfigMap(c) => {
                let data = c.data.clone().unwrap_or_default();
                assert!(data.contains_key("agent.yaml"), "{data:?}");
                let mounted = pod.volumes.as_deref().unwrap_or_default().iter().any(|v| {
                    v.config_map.as_ref().map(|c| c.name.as_str()) == c.metadata.name.as_deref()
                });
                assert!(mounted, "the agent ConfigMap is not mounted");
            }
            Manifest::Service(s) => {
                let spec = s.spec.as_ref().expect("service spec");
                assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
                assert_eq!(spec.selector, selector, "the Service selects other pods");
                let port = &spec.ports.as_deref().unwrap_or_default()[0];
                assert_eq!((port.port, port.name.as_deref()), (15098, Some("admin")));
            }
            Manifest::ServiceAccount(a) => {
                assert_eq!(a.metadata.name, pod.service_account_name);
            }
            _ => {}
        }
    }
}

fn rbac_is_pods_only(typed: &[Manifest]) {
    let role = typed
        .iter()
        .find_map(|m| match m {
            Manifest::ClusterRole(r) => Some(r),
            _ => None,
        })
        .expect("ClusterRole");
    let rules = role.rules.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    let binding = typed
        .iter()
        .find_map(|m| match m {
            Manifest::ClusterRoleBinding(b) => Some(b),
            _ => None,
        })
        .expect("ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_deref().unwrap_or_default()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.namespace.as_deref()),
        ("ServiceAccount", Some(helm::NAMESPACE))
    );
}

fn uninstall_guard_is_a_pre_delete_hook(typed: &[Manifest]) {
    let job = typed
        .iter()
        .find_map(|m| match m {
            Manifest::Job(j) => Some(j),
            _ => None,
        })
        .expect("the uninstall guard Job");
    let ann = job.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("helm.sh/hook").map(String::as_str),
        Some("pre-delete")
    );
    let spec = job.spec.as_ref().expect("job spec");
    assert_eq!(spec.backoff_limit, Some(0));
    let c = &spec.template.spec.as_ref().expect("pod").containers[0];
    let script = command(c).join(" ");
    assert!(
        script.contains("cleanup.enabled=true") && script.contains("exit 1"),
        "{script}"
    );
}

#[test]
fn every_option_renders_lints_and_type_checks() {
    if !helm::available("every_option_renders_lints_and_type_checks") {
        return;
    }
    let values = fixture("all-options.yaml");
    every_default_key_is_set(&values);
    let (docs, typed) = render_typed(Some(&values));
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    assert!(kinds.contains("ServiceMonitor"), "{kinds:?}");
    assert!(!kinds.contains("Job"), "guard off: no hook Job");
    let ds = daemonset(&typed);
    assert_eq!(
        ds.metadata.name.as_deref(),
        Some("meshlane-node"),
        "fullnameOverride"
    );
    let pod = pod_spec(ds);
    let agent = container(&pod.containers, "agent");
    assert_eq!(
        agent.image.as_deref(),
        Some("registry.example.com/platform/meshlane@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        agent.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("meshlane-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("meshlane-agent"));
    let paths = host_paths(pod);
    for p in [
        "/run/bpffs",
        "/home/kubernetes/bin",
        "/etc/cni/conf.d",
        "/run/netns",
        "/etc/meshlane-pods",
    ] {
        assert!(paths.contains(p), "{p} not mounted: {paths:?}");
    }
    let monitor = typed
        .iter()
        .find_map(|m| match m {
            Manifest::ServiceMonitor(s) => Some(s),
            _ => None,
        })
        .expect("ServiceMonitor");
    let ep = &monitor.spec.endpoints[0];
    assert_eq!(
        (
            ep.port.as_str(),
            ep.path.as_str(),
            ep.interval.as_str(),
            ep.scrape_timeout.as_str()
        ),
        ("admin", "/metrics", "15s", "5s")
    );
    assert_eq!(
        monitor.spec.selector.match_labels,
        ds.spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
    );
    let monitor_labels = monitor.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        monitor_labels.get("release").map(String::as_str),
        Some("prometheus")
    );
    assert_eq!(
        monitor.spec.namespace_selector.match_names,
        [helm::NAMESPACE]
    );
    let cfg = helm::agent_config(&docs);
    assert!(cfg.contains("adminAddr: \"[::]:19098\""), "{cfg}");
    lint_is_clean(Some(&values));
}

/// Every key of values.yaml appears in `values` (the all-options file).
fn every_default_key_is_set(values: &Path) {
    fn leaves(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, v) in m {
                    leaves(v, &format!("{prefix}.{k}"), out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let read = |p: &Path| -> Value {
        let text = std::fs::read_to_string(p).expect("reading values");
        serde_yaml_ng::from_str(&text).expect("values are YAML")
    };
    let (mut defaults, mut set) = (BTreeSet::new(), BTreeSet::new());
    leaves(
        &read(&helm::chart_dir().join("values.yaml")),
        "",
        &mut defaults,
    );
    leaves(&read(values), "", &mut set);
    let missing: Vec<&String> = defaults
        .iter()
        .filter(|k| {
            !set.iter()
                .any(|s| s == *k || s.starts_with(&format!("{k}.")))
        })
        .collect();
    assert!(missing.is_empty(), "{values:?} does not set {missing:?}");
}

fn lint_is_clean(values: Option<&Path>) {
    let report = helm::lint(values);
    let above_info: Vec<&helm::LintMessage> =
        report.messages.iter().filter(|m| m.severity > 1).collect();
    assert!(
        above_info.is_empty(),
        "helm lint --strict {values:?}: {above_info:?}"
    );
    assert!(
        report.errors.unwrap_or_default().is_empty(),
        "helm lint errors"
    );
}

#[test]
fn lint_strict_finds_nothing_above_info() {
    if !helm::available("lint_strict_finds_nothing_above_info") {
        return;
    }
    lint_is_clean(None);
    lint_is_clean(Some(&fixture("cleanup.yaml")));
}

#[test]
fn cleanup_mode_runs_the_uninstall_commands_and_no_agent() {
    if !helm::available("cleanup_mode_runs_the_uninstall_commands_and_no_agent") {
        return;
    }
    let (docs, typed) = render_typed(Some(&fixture("cleanup.yaml")));
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains("Job") && !kinds.contains("Service"),
        "{kinds:?}"
    );
    let pod = pod_spec(daemonset(&typed));
    let inits: Vec<Vec<String>> = init_containers(pod).iter().map(command).collect();
    assert_eq!(
        inits,
        [
            vec![
                "meshlane",
                "install-cni",
                "--uninstall",
                "--bin-dir",
                "/host/opt/cni/bin",
                "--conf-dir",
                "/host/etc/cni/net.d"
            ],
            vec![
                "meshlane",
                "--pin-root",
                "/sys/fs/bpf/meshlane",
                "uninstall"
            ],
        ]
    );
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(command(&pod.containers[0]), ["sleep", "infinity"]);
    let want: BTreeSet<String> = ["/etc/cni/net.d", "/opt/cni/bin", "/sys/fs/bpf"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(host_paths(pod), want, "cleanup mode mounts");
}

#[test]
fn only_istio_gets_an_xds_client_and_bypass() {
    if !helm::available("only_istio_gets_an_xds_client_and_bypass") {
        return;
    }
    let (docs, typed) = render_typed(Some(&fixture("other-mesh.yaml")));
    let cfg: Value = serde_yaml_ng::from_str(&helm::agent_config(&docs)).expect("YAML");
    assert!(cfg["xds"]["address"].is_null(), "{cfg:#}");
    assert_eq!(cfg["bypass"]["enabled"], false);
    let volumes = pod_spec(daemonset(&typed))
        .volumes
        .clone()
        .unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.projected.is_none()),
        "an istiod token without istiod"
    );
    let e = helm::render(Some(&fixture("bypass-without-istio.yaml")))
        .expect_err("bypass without istiod must be refused");
    assert!(
        e.contains("agent.bypass.enabled needs the xDS client") && e.lines().count() == 1,
        "{e}"
    );
    let (docs, _) = render_typed(None);
    let cfg: Value = serde_yaml_ng::from_str(&helm::agent_config(&docs)).expect("YAML");
    assert_eq!(cfg["xds"]["address"], "istiod.istio-system.svc:15012");
    assert_eq!(cfg["xds"]["tls"], true);
}

#[test]
fn schema_accepts_the_defaults_and_refuses_invalid_values() {
    if !helm::available("schema_accepts_the_defaults_and_refuses_invalid_values") {
        return;
    }
    helm::validate(&helm::chart_dir().join("values.yaml")).expect("defaults pass the schema");
    let dir = fixture("invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("invalid values dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("reading");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{f:?} has no '# expect: ' line"));
        match helm::validate(&f) {
            Ok(()) => panic!("{f:?} passed the schema"),
            Err(e) => assert!(e.contains(expect) && e.lines().count() == 1, "{f:?}: {e}"),
        }
        let e = helm::render(Some(&f)).expect_err("rendering invalid values must fail");
        assert!(e.contains(expect), "{f:?}: {e}");
    }
}

/// `meshlane agent --check-config FILE` with `text` as the file.
fn check_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, text).expect("writing the config");
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESHLANE_") {
            cmd.env_remove(k);
        }
    }
    // What the DaemonSet sets from the downward API.
    cmd.env("NODE_NAME", "node-1")
        .env("POD_NAMESPACE", helm::NAMESPACE);
    cmd.args(["agent", "--check-config"])
        .arg(&file)
        .output()
        .expect("running meshlane")
}

#[test]
fn the_rendered_agent_config_passes_check_config() {
    if !helm::available("the_rendered_agent_config_passes_check_config") {
        return;
    }
    for values in [None, Some(fixture("all-options.yaml"))] {
        let (docs, _) = render_typed(values.as_deref());
        let cfg = helm::agent_config(&docs);
        let out = check_config(&cfg);
        assert!(
            out.status.success(),
            "{values:?}: check-config refused the chart's config: {}\n{cfg}",
            String::from_utf8_lossy(&out.stderr)
        );
        let effective: Value =
            serde_yaml_ng::from_slice(&out.stdout).expect("check-config prints YAML");
        let rendered: Value = serde_yaml_ng::from_str(&cfg).expect("config is YAML");
        for key in [
            "pinRoot",
            "sockhashSize",
            "intercept",
            "drainSeconds",
            "adminAddr",
        ] {
            assert_eq!(effective[key], rendered[key], "{key} not taken as rendered");
        }
    }
}

#[test]
fn a_broken_agent_config_is_refused_naming_the_field() {
    if !helm::available("a_broken_agent_config_is_refused_naming_the_field") {
        return;
    }
    let (docs, _) = render_typed(None);
    let cfg = helm::agent_config(&docs);
    let cases = [
        (
            cfg.replace("drainSeconds: 5", "drainSeconds: 0"),
            "drainSeconds",
        ),
        (cfg.replace("sockhashSize:", "sockhashSiz:"), "sockhashSiz"),
        (
            cfg.replace("verdictRemedy: auto", "verdictRemedy: maybe"),
            "maybe",
        ),
        (
            cfg.replace("pinRoot: /sys/fs/bpf/meshlane", "pinRoot: pins"),
            "pinRoot",
        ),
    ];
    for (broken, field) in cases {
        assert_ne!(broken, cfg, "the case for {field} changed nothing");
        let out = check_config(&broken);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.lines().count() == 1 && err.contains(field),
            "{field}: {} {err}",
            out.status
        );
    }
}

/// The image's builder runs the cargo command `make node-build` runs (so
/// CI, which has no container engine, builds the image's binaries), and
/// the runtime stage ships both binaries the chart calls.
#[test]
fn the_image_builds_what_node_build_builds() {
    let read = |rel: &str| std::fs::read_to_string(helm::repo_path(rel)).expect(rel);
    let dockerfile = read("Dockerfile");
    let makefile = read("Makefile");
    let docker_cargo = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("RUN cargo build "))
        .expect("the Dockerfile builds with cargo")
        .trim_end_matches(" \\")
        .to_string();
    let recipe = makefile
        .split("\nnode-build:")
        .nth(1)
        .and_then(|r| r.lines().nth(1))
        .and_then(|l| l.trim().strip_prefix("$(CARGO) build "))
        .expect("make node-build runs $(CARGO) build")
        .to_string();
    assert_eq!(docker_cargo, recipe);
    assert!(recipe.contains("--locked") && recipe.contains("--no-default-features"));
    assert!(
        dockerfile.contains("COPY --from=builder /out/meshlane /out/meshlane-cni /usr/local/bin/")
    );
    let chart = helm::chart_dir().join("templates/daemonset.yaml");
    let chart = std::fs::read_to_string(chart).expect("daemonset.yaml");
    for cmd in [
        "\"meshlane\", \"agent\"",
        "\"meshlane\", \"install-cni\"",
        "\"sleep\"",
    ] {
        assert!(chart.contains(cmd), "the chart no longer runs {cmd}");
    }
}

/// values.yaml is documented line by line: every key has a comment right
/// above it (list items belong to the key above them).
#[test]
fn every_value_is_documented() {
    let path = helm::chart_dir().join("values.yaml");
    let text = std::fs::read_to_string(&path).expect("values.yaml");
    let mut previous = "";
    let mut undocumented = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let s = line.trim();
        if s.is_empty() {
            continue;
        }
        let is_key = !s.starts_with('#') && !s.starts_with("- ") && s.contains(':');
        if is_key && !previous.starts_with('#') {
            undocumented.push(format!("{}: {line}", n + 1));
        }
        previous = s;
    }
    assert!(
        undocumented.is_empty(),
        "keys without a comment above: {undocumented:#?}"
    );
}
