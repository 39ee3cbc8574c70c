//! The plugin's network configuration, as the runtime gives it on stdin:
//! the spec's fields (cniVersion, name, type, prevResult, GC's valid
//! attachments) and meshlane's own keys, each with its default.
//!
//! meshlane keys (all optional):
//! - `pinRoot`: the agent's pin root (its socket path follows from it);
//! - `agentSocket`: the agent's API socket, overriding `pinRoot`'s;
//! - `agentNamespace`: the namespace the agent runs in (never blocked);
//! - `excludeNamespaces`: namespaces whose pods are never blocked or
//!   registered (default `kube-system` and `agentNamespace`);
//! - `agentTimeoutSeconds`: how long the plugin waits for the agent.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{CniError, Code};
use super::version::CniVersion;

/// The agent's namespace when the configuration names none.
pub const DEFAULT_AGENT_NAMESPACE: &str = "meshlane-system";

/// How long the plugin waits for the agent by default.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait a configuration may ask for.
const MAX_AGENT_TIMEOUT_SECONDS: f64 = 600.0;

/// One attachment GC's list names as still valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The configuration's fields as given, each read on its own so a wrong
/// one is named.
#[derive(Debug)]
struct RawConf {
    name: String,
    plugin_type: String,
    prev_result: Option<Value>,
    pin_root: Option<PathBuf>,
    agent_socket: Option<PathBuf>,
    agent_namespace: Option<String>,
    exclude_namespaces: Option<Vec<String>>,
    agent_timeout_seconds: Option<f64>,
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Field `key` of `doc` as a `T`; absent or null is None; a wrong type is
/// code 7 naming the key.
fn field<T: serde::de::DeserializeOwned>(doc: &Value, key: &str) -> Result<Option<T>, CniError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                format!("{key}: {e} (got {v})"),
            )
        }),
    }
}

impl RawConf {
    fn read(doc: &Value) -> Result<Self, CniError> {
        Ok(Self {
            name: field(doc, "name")?.unwrap_or_default(),
            plugin_type: field(doc, "type")?.unwrap_or_default(),
            prev_result: doc.get("prevResult").filter(|v| !v.is_null()).cloned(),
            pin_root: field(doc, "pinRoot")?,
            agent_socket: field(doc, "agentSocket")?,
            agent_namespace: field(doc, "agentNamespace")?,
            exclude_namespaces: field(doc, "excludeNamespaces")?,
            agent_timeout_seconds: field(doc, "agentTimeoutSeconds")?,
            valid_attachments: field(doc, "cni.dev/valid-attachments")?,
        })
    }
}

/// The parsed, checked configuration.
#[derive(Debug, Clone)]
pub struct PluginConf {
    /// The version string as given (results are written in it).
    pub cni_version: String,
    pub version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<Value>,
    /// The agent's API socket.
    pub agent_socket: PathBuf,
    pub agent_namespace: String,
    pub exclude_namespaces: Vec<String>,
    pub agent_timeout: Duration,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The `cniVersion` of a stdin document, if it has a readable one (for
/// rendering errors in the caller's version).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    CniVersion::supported(s).ok().map(|_| s.to_string())
}

impl PluginConf {
    /// Parses stdin: malformed JSON is code 6, an unsupported or missing
    /// cniVersion code 1, a wrong field code 7 naming it.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let doc: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "network configuration is not valid JSON",
                e.to_string(),
            )
        })?;
        let version = match doc.get("cniVersion") {
            Some(Value::String(s)) => CniVersion::supported(s)?,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    "invalid network configuration",
                    format!("cniVersion must be a string, got {other}"),
                ))
            }
            None => return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                "the network configuration has no cniVersion (meshlane-cni speaks 0.3.1 and later)",
            )),
        };
        Self::from_raw(RawConf::read(&doc)?, version)
    }

    fn from_raw(raw: RawConf, version: CniVersion) -> Result<Self, CniError> {
        let invalid = |details: String| {
            CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                details,
            )
        };
        let agent_namespace = raw
            .agent_namespace
            .unwrap_or_else(|| DEFAULT_AGENT_NAMESPACE.to_string());
        let exclude_namespaces = raw
            .exclude_namespaces
            .unwrap_or_else(|| vec!["kube-system".to_string(), agent_namespace.clone()]);
        let agent_timeout = match raw.agent_timeout_seconds {
            None => DEFAULT_AGENT_TIMEOUT,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_AGENT_TIMEOUT_SECONDS => {
                Duration::from_secs_f64(s)
            }
            Some(s) => {
                return Err(invalid(format!(
                "agentTimeoutSeconds {s} must be above 0 and at most {MAX_AGENT_TIMEOUT_SECONDS}"
            )))
            }
        };
        let agent_socket = match (raw.agent_socket, raw.pin_root) {
            (Some(s), _) => s,
            (None, Some(root)) => crate::api::socket_path(&root),
            (None, None) => {
                crate::api::socket_path(std::path::Path::new(crate::layout::DEFAULT_PIN_ROOT))
            }
        };
        if !agent_socket.is_absolute() {
            return Err(invalid(format!(
                "agentSocket {} is not an absolute path",
                agent_socket.display()
            )));
        }
        Ok(Self {
            cni_version: format!("{}.{}.{}", version.0, version.1, version.2),
            version,
            name: raw.name,
            plugin_type: raw.plugin_type,
            prev_result: raw.prev_result,
            agent_socket,
            agent_namespace,
            exclude_namespaces,
            agent_timeout,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// Whether pods of `namespace` are left alone (never blocked).
    pub fn excluded(&self, namespace: &str) -> bool {
        namespace == self.agent_namespace || self.exclude_namespaces.iter().any(|n| n == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_exclude_kube_system_and_the_agent_namespace() {
        let c = PluginConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"meshlane-cni"}"#)
            .unwrap();
        assert!(c.excluded("kube-system") && c.excluded("meshlane-system"));
        assert!(!c.excluded("default"));
        assert_eq!(c.agent_timeout, DEFAULT_AGENT_TIMEOUT);
        assert_eq!(
            c.agent_socket,
            PathBuf::from("/run/meshlane/sys-fs-bpf-meshlane.sock")
        );
        let c = PluginConf::parse(
            br#"{"cniVersion":"0.3.1","type":"meshlane-cni","pinRoot":"/sys/fs/bpf/x",
                 "agentNamespace":"mesh","excludeNamespaces":["infra"],"agentTimeoutSeconds":1.5}"#,
        )
        .unwrap();
        assert!(c.excluded("mesh") && c.excluded("infra") && !c.excluded("kube-system"));
        assert_eq!(
            c.agent_socket,
            PathBuf::from("/run/meshlane/sys-fs-bpf-x.sock")
        );
        assert_eq!(c.agent_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_documents_get_the_right_code() {
        let code = |doc: &str| PluginConf::parse(doc.as_bytes()).unwrap_err().code;
        assert_eq!(code("{not json"), Code::Decode);
        assert_eq!(
            code(r#"{"type":"meshlane-cni"}"#),
            Code::IncompatibleVersion
        );
        assert_eq!(code(r#"{"cniVersion":"9.9.9"}"#), Code::IncompatibleVersion);
        assert_eq!(code(r#"{"cniVersion":1}"#), Code::InvalidConfig);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","agentTimeoutSeconds":-1}"#),
            Code::InvalidConfig
        );
        let e = PluginConf::parse(br#"{"cniVersion":"1.0.0","excludeNamespaces":"kube-system"}"#)
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.details.contains("excludeNamespaces") && e.details.contains("sequence"),
            "{}",
            e.details
        );
    }

    #[test]
    fn gc_attachments_parse() {
        let c = PluginConf::parse(
            br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
