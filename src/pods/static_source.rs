//! The static pod source, for nodes outside Kubernetes (tests, the demo):
//! a YAML file listing the node's pods, which the agent re-reads when it
//! changes. Each entry becomes a Kubernetes Pod object (the proxy container
//! its `proxy` field names, the annotations and labels as given) and goes
//! through the same classification as the Kubernetes source's pods.
//!
//! ```yaml
//! pods:
//!   - namespace: default
//!     name: web-1
//!     netns: /run/netns/web-1      # optional: else found by the pod's IPs
//!     ips: [10.0.0.2]              # optional with netns: read from it
//!     proxy: istio                 # istio (default) | linkerd | kuma | none
//!     proxyUid: 1337               # optional: the proxy's runAsUser
//!     serviceAccount: web
//!     labels: {app: web}
//!     annotations:
//!       traffic.sidecar.istio.io/excludeOutboundPorts: "5432"
//! ```
//!
//! An unreadable or invalid file is one error line naming the file and what
//! is wrong; the last good listing stays in force.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, Pod, PodIP, PodSpec as K8sPodSpec, PodStatus, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;

use super::classify::{self, ClassifyConfig};
use super::source::{MemoryCatalog, PodInfo, PodKey};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum StaticSourceError {
    #[error("static pod file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("static pod file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("static pod file {path}: pod {pod}: {why}")]
    Pod {
        path: PathBuf,
        pod: String,
        why: String,
    },
}

/// The file's document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    #[serde(default)]
    pods: Vec<StaticPod>,
}

/// Which proxy a static pod runs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Proxy {
    #[default]
    Istio,
    Linkerd,
    Kuma,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticPod {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    netns: Option<PathBuf>,
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default)]
    proxy: Proxy,
    proxy_uid: Option<u32>,
    proxy_gid: Option<u32>,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One parsed listing: the catalog entries and the netns paths given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub pods: Vec<PodInfo>,
    pub netns: HashMap<PodKey, PathBuf>,
}

/// Parses the file's text; `ips_of` reads a netns's addresses for entries
/// that give a netns and no IPs. Pure but for that callback.
pub fn parse(
    path: &Path,
    text: &str,
    cfg: &ClassifyConfig,
    ips_of: &dyn Fn(&Path) -> Result<Vec<IpAddr>, String>,
) -> Result<Listing, StaticSourceError> {
    let doc: StaticFile = if text.trim().is_empty() {
        StaticFile { pods: Vec::new() }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| StaticSourceError::Parse {
            path: path.into(),
            message: e.to_string().replace('\n', " "),
        })?
    };
    let mut out = Listing::default();
    for sp in doc.pods {
        let label = format!("{}/{}", sp.namespace, sp.name);
        let bad = |why: String| StaticSourceError::Pod {
            path: path.into(),
            pod: label.clone(),
            why,
        };
        let mut ips = sp.ips.clone();
        if ips.is_empty() {
            if let Some(ns) = &sp.netns {
                ips = ips_of(ns).map_err(&bad)?;
            }
        }
        let info = classify::classify(&to_pod(&sp, &ips), cfg)
            .ok_or_else(|| bad("namespace and name must not be empty".into()))?;
        if out.pods.iter().any(|p| p.key == info.key) {
            return Err(bad("listed twice".into()));
        }
        if let Some(ns) = &sp.netns {
            out.netns.insert(info.key.clone(), ns.clone());
        }
        out.pods.push(info);
    }
    Ok(out)
}

/// The Pod object a static entry stands for: an app container, the
/// proxy (a container), the injector's status annotation for Istio.
fn to_pod(sp: &StaticPod, ips: &[IpAddr]) -> Pod {
    let mut annotations = sp.annotations.clone();
    let proxy = match sp.proxy {
        Proxy::Istio => {
            annotations
                .entry("sidecar.istio.io/status".into())
                .or_insert_with(|| "{}".into());
            Some(classify::ISTIO_PROXY)
        }
        Proxy::Linkerd => Some(classify::LINKERD_PROXY),
        Proxy::Kuma => Some(classify::KUMA_SIDECAR),
        Proxy::None => None,
    };
    let mut containers = vec![Container {
        name: "app".into(),
        ..Default::default()
    }];
    if let Some(name) = proxy {
        containers.push(Container {
            name: name.into(),
            args: (sp.proxy == Proxy::Istio).then(|| vec!["proxy".into(), "sidecar".into()]),
            security_context: Some(SecurityContext {
                run_as_user: sp.proxy_uid.map(i64::from),
                run_as_group: sp.proxy_gid.map(i64::from),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            namespace: Some(sp.namespace.clone()),
            name: Some(sp.name.clone()),
            uid: Some(sp.uid.clone()).filter(|u| !u.is_empty()),
            labels: Some(sp.labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(K8sPodSpec {
            containers,
            service_account_name: Some(sp.service_account.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            ..Default::default()
        }),
    }
}

/// Reads and parses the file, reading netns addresses where needed.
pub fn load(path: &Path, cfg: &ClassifyConfig) -> Result<Listing, StaticSourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| StaticSourceError::Read {
        path: path.into(),
        source: e,
    })?;
    parse(path, &text, cfg, &|ns| {
        crate::netns::inspect(ns)
            .map(|i| i.addrs)
            .map_err(|e| e.to_string())
    })
}

/// The source's async shell: polls the file, and on each change (of its
/// bytes, or of a listed netns's addresses) replaces the catalog and the
/// netns hints. Errors are logged once per distinct message.
pub async fn run(
    path: PathBuf,
    cfg: ClassifyConfig,
    catalog: Arc<MemoryCatalog>,
    hints: Arc<std::sync::RwLock<HashMap<PodKey, PathBuf>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut last_good: Option<Listing> = None;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let (p, c) = (path.clone(), cfg.clone());
        let Ok(result) = tokio::task::spawn_blocking(move || load(&p, &c)).await else {
            continue;
        };
        match result {
            Ok(listing) => {
                last_error.clear();
                if last_good.as_ref() == Some(&listing) {
                    continue;
                }
                tracing::info!(file = %path.display(), pods = listing.pods.len(), "static pod source loaded");
                *hints.write().unwrap_or_else(|e| e.into_inner()) = listing.netns.clone();
                catalog.replace_all(listing.pods.clone());
                last_good = Some(listing);
            }
            Err(e) => {
                let line = e.to_string();
                if line != last_error {
                    tracing::error!(kept = last_good.is_some(), "{line}");
                    last_error = line;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::source::MeshDecision;
    use crate::pods::Preset;

    fn parse_text(text: &str) -> Result<Listing, StaticSourceError> {
        parse(
            Path::new("/etc/pods.yaml"),
            text,
            &ClassifyConfig::default(),
            &|ns| {
                if ns == Path::new("/run/netns/a") {
                    Ok(vec!["10.0.0.2".parse().unwrap()])
                } else {
                    Err(format!("cannot open netns {}", ns.display()))
                }
            },
        )
    }

    #[test]
    fn entries_are_classified_like_kubernetes_pods() {
        let l = parse_text(
            "pods:\n\
             - {namespace: default, name: a, netns: /run/netns/a, serviceAccount: sa,\n\
                annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\"}}\n\
             - {namespace: default, name: l, ips: [10.0.0.3], proxy: linkerd}\n\
             - {namespace: default, name: plain, ips: [10.0.0.4], proxy: none}\n\
             - {namespace: kube-system, name: dns, ips: [10.0.0.5]}\n",
        )
        .unwrap();
        assert_eq!(l.pods.len(), 4);
        let a = &l.pods[0];
        assert_eq!(a.ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.service_account, "sa");
        match &a.mesh {
            MeshDecision::Meshed { spec } => {
                assert_eq!(spec.exclude_outbound_ports, "5432");
                assert_eq!(spec.name, "default/a");
            }
            m => panic!("{m:?}"),
        }
        assert!(
            matches!(&l.pods[1].mesh, MeshDecision::Meshed { spec } if spec.preset == Preset::Linkerd)
        );
        assert!(matches!(l.pods[2].mesh, MeshDecision::NotMeshed { .. }));
        assert!(matches!(l.pods[3].mesh, MeshDecision::NotMeshed { .. }));
        assert_eq!(l.netns.len(), 1);
    }

    #[test]
    fn bad_files_are_one_line_naming_file_and_problem() {
        for (text, want) in [
            ("pods: [{namespace: default}]", "name"),
            ("pods: [{namespace: d, name: a, colour: red}]", "colour"),
            ("pods: [{namespace: d, name: a, proxy: envoy}]", "envoy"),
            ("pods: [{namespace: d, name: a, ips: [10.0.0.300]}]", "ips"),
            (
                "pods: [{namespace: d, name: a, netns: /run/netns/gone}]",
                "d/a",
            ),
            (
                "pods: [{namespace: d, name: a}, {namespace: d, name: a}]",
                "twice",
            ),
            ("pods: [{namespace: '', name: a}]", "empty"),
        ] {
            let e = parse_text(text).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(
                e.contains("/etc/pods.yaml") && e.contains(want),
                "{text}: {e}"
            );
        }
        assert!(parse_text("").unwrap().pods.is_empty());
    }
}
