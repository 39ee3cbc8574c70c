//! The `podSource:` section of the agent's config: where the agent learns
//! which pods of its node are meshed.
//!
//! ```yaml
//! podSource:
//!   kind: kubernetes          # kubernetes | static | none
//!   nodeName: null            # null: env NODE_NAME (the downward API)
//!   staticFile: null          # the YAML file of `kind: static`
//!   excludedNamespaces: [kube-system]
//!   agentNamespace: null      # null: env POD_NAMESPACE; excluded too
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::classify::ClassifyConfig;

/// Which pod source feeds the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSourceKind {
    /// The API server's watch of this node's pods (in-cluster config).
    Kubernetes,
    /// A YAML file the agent watches (outside Kubernetes: tests, demo).
    Static,
    /// No pod source: pods are registered by hand or by the CNI plugin
    /// only; no adoption, no garbage collection.
    #[default]
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodSourceConfig {
    pub kind: PodSourceKind,
    /// This node's name (the watch's `spec.nodeName`); None: env NODE_NAME.
    pub node_name: Option<String>,
    /// The file of `kind: static`.
    pub static_file: Option<PathBuf>,
    /// Namespaces whose pods are never meshed (nor blocked).
    pub excluded_namespaces: Vec<String>,
    /// The agent's own namespace, excluded as well; None: env POD_NAMESPACE.
    pub agent_namespace: Option<String>,
}

impl Default for PodSourceConfig {
    fn default() -> Self {
        Self {
            kind: PodSourceKind::None,
            node_name: None,
            static_file: None,
            excluded_namespaces: vec!["kube-system".into()],
            agent_namespace: None,
        }
    }
}

impl PodSourceConfig {
    /// Fills the unset node name and agent namespace from the downward
    /// API's environment variables (NODE_NAME, POD_NAMESPACE).
    pub fn apply_env(&mut self) {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if self.node_name.is_none() {
            self.node_name = env("NODE_NAME");
        }
        if self.agent_namespace.is_none() {
            self.agent_namespace = env("POD_NAMESPACE");
        }
    }

    /// The first wrong field: (its name under podSource, why).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.kind {
            PodSourceKind::Kubernetes if self.node_name.as_deref().unwrap_or("").is_empty() => {
                return Err((
                    "podSource.nodeName",
                    "kind kubernetes needs this node's name (set nodeName or the NODE_NAME environment variable from the downward API, spec.nodeName)".into(),
                ))
            }
            PodSourceKind::Static => match &self.static_file {
                None => return Err(("podSource.staticFile", "kind static needs the pod file".into())),
                Some(f) if !f.is_absolute() => {
                    return Err(("podSource.staticFile", format!("{} is not an absolute path", f.display())))
                }
                Some(_) => {}
            },
            _ => {}
        }
        if let Some(ns) = self
            .excluded_namespaces
            .iter()
            .find(|n| n.trim().is_empty())
        {
            return Err((
                "podSource.excludedNamespaces",
                format!("{ns:?} is not a namespace name"),
            ));
        }
        Ok(())
    }

    /// What the classification excludes: the listed namespaces and the
    /// agent's own.
    pub fn classify_config(&self) -> ClassifyConfig {
        let mut excluded = self.excluded_namespaces.clone();
        if let Some(own) = &self.agent_namespace {
            if !excluded.contains(own) {
                excluded.push(own.clone());
            }
        }
        ClassifyConfig {
            excluded_namespaces: excluded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_what_it_lacks() {
        let mut c = PodSourceConfig {
            kind: PodSourceKind::Kubernetes,
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "podSource.nodeName");
        c.node_name = Some("node-1".into());
        c.check().unwrap();
        c.kind = PodSourceKind::Static;
        assert_eq!(c.check().unwrap_err().0, "podSource.staticFile");
        c.static_file = Some("pods.yaml".into());
        assert!(c.check().unwrap_err().1.contains("absolute"));
        c.static_file = Some("/etc/meshlane/pods.yaml".into());
        c.check().unwrap();
    }

    #[test]
    fn the_agents_namespace_is_excluded_too() {
        let c = PodSourceConfig {
            agent_namespace: Some("meshlane-system".into()),
            ..Default::default()
        };
        assert_eq!(
            c.classify_config().excluded_namespaces,
            vec!["kube-system".to_string(), "meshlane-system".to_string()]
        );
    }
}
