//! The agent's one configuration: every setting, its default and what it
//! does, read from a YAML file (`meshlane agent --config FILE`), then
//! overridden by environment variables and flags (the CLI applies those),
//! then validated as a whole before anything is installed.
//! `meshlane agent --check-config FILE` prints the effective result.
//!
//! docs/agent-config.yaml is the documented example: every field with
//! its default (a unit test keeps the two in step).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::loader::{self, VerdictRemedy};
use crate::xds::client::{Address, ClientSettings, MeshSettings, Transport};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours only when stderr is a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the agent can be told. Field docs are the reference; the
/// module doc shows the YAML form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentConfig {
    /// bpffs directory where the maps and links are pinned.
    pub pin_root: PathBuf,
    /// cgroup v2 directory the hooks attach to; None: the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// Capacity of the splice socket map (and the maps sized with it).
    pub sockhash_size: u32,
    /// Bytes queued at a spliced reader before its direction uses TCP until
    /// it drains; None: a quarter of the node's largest TCP receive buffer;
    /// 0: no limit.
    pub splice_queue_limit: Option<u32>,
    /// A connection neither of whose ends sent this many messages is short;
    /// a destination whose last 8 spliced connections were all short, the
    /// last within a second, is not spliced any more, but for every 16th
    /// new connection, which keeps learning (a psock's set-up and teardown
    /// cost more than splicing a few messages saves). 0: splice every
    /// connection.
    pub splice_min_messages: u32,
    /// Attach the interception hooks (false: splice only).
    pub intercept: bool,
    /// Keep the kernel's BPF run statistics on while the agent runs, for
    /// the per-program run count and time in /metrics and `meshlane
    /// status`. Off by default: they cost every BPF program run on the
    /// node (not only meshlane's) two clock reads, about as much again as
    /// meshlane's idle programs cost a loopback connection
    /// (docs/benchmarks.md).
    pub bpf_run_stats: bool,
    /// Stream verdict on the socket map (see `meshlane probe`).
    pub verdict_remedy: VerdictRemedy,
    /// Address of the admin server (readiness, liveness, metrics); None: off.
    pub admin_addr: Option<SocketAddr>,
    /// Log line format on stderr.
    pub log_format: LogFormat,
    /// Seconds between counter log lines.
    pub log_interval_seconds: u64,
    /// Seconds the agent waits for its components after SIGTERM/SIGINT.
    pub drain_seconds: u64,
    /// The file this config was read from (not a config field): the agent
    /// re-reads `bypass.policies` from it on SIGHUP.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Where the agent learns which pods are meshed (src/pods/source_config.rs).
    pub pod_source: crate::pods::source_config::PodSourceConfig,
    /// The kernel fast path past the sidecar (off unless enabled).
    pub bypass: BypassConfig,
    /// The xDS client (one ADS stream per meshed pod allowing bypass).
    pub xds: XdsConfig,
}

/// The `xds:` section: where istiod is and how the client talks to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct XdsConfig {
    /// istiod's ADS address, `host:port` or `unix:/path`; None: no client.
    pub address: Option<String>,
    /// TLS (istiod's :15012) checked against `rootCaPath`, with the token
    /// at `tokenPath` as Bearer; false: plaintext (:15010 or a socket).
    pub tls: bool,
    /// The projected service-account token (audience istio-ca).
    pub token_path: PathBuf,
    /// The mesh root CA (PEM) that signs istiod's serving certificate.
    pub root_ca_path: PathBuf,
    /// CLUSTER_ID node metadata: istiod's name for this cluster.
    pub cluster_id: String,
    /// MESH_ID node metadata.
    pub mesh_id: String,
    /// ISTIO_VERSION node metadata (the sidecars' version); empty: not sent.
    pub istio_version: String,
    /// First reconnect wait; it doubles (with jitter) up to the maximum.
    pub initial_backoff_millis: u64,
    /// Longest reconnect wait.
    pub max_backoff_seconds: u64,
    /// Seconds held config stays usable after the stream drops; then the
    /// pod's destinations go back to the sidecar until it reconnects. The
    /// kernel also stops bypassing this long after the agent's last
    /// heartbeat (agent gone).
    pub stale_grace_seconds: u64,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            address: None,
            tls: false,
            token_path: "/var/run/secrets/tokens/istio-token".into(),
            root_ca_path: "/var/run/secrets/istio/root-cert.pem".into(),
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            istio_version: String::new(),
            initial_backoff_millis: 500,
            max_backoff_seconds: 30,
            stale_grace_seconds: 30,
        }
    }
}

impl XdsConfig {
    /// Checks the section; the first wrong field is named.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why: String| Err(ConfigError::Invalid { field, why });
        if let Some(a) = &self.address {
            let parsed = Address::parse(a);
            if let Err(e) = &parsed {
                return bad("xds.address", e.to_string());
            }
            if self.tls && matches!(parsed, Ok(Address::Unix(_))) {
                return bad("xds.tls", "TLS needs a host:port address".into());
            }
        }
        if self.initial_backoff_millis == 0 {
            return bad("xds.initialBackoffMillis", "must be at least 1".into());
        }
        if self.max_backoff_seconds == 0 || self.max_backoff_seconds > 3600 {
            return bad(
                "xds.maxBackoffSeconds",
                format!("{} is outside 1..=3600", self.max_backoff_seconds),
            );
        }
        if self.cluster_id.is_empty() {
            return bad("xds.clusterId", "must not be empty".into());
        }
        if self.stale_grace_seconds == 0 {
            return bad("xds.staleGraceSeconds", "must be at least 1".into());
        }
        Ok(())
    }

    /// How long held config, and the agent's heartbeat, stay good.
    pub fn stale_grace(&self) -> Duration {
        Duration::from_secs(self.stale_grace_seconds)
    }

    /// The client's settings, or None when no address is configured.
    pub fn client_settings(&self) -> Option<ClientSettings> {
        let address = Address::parse(self.address.as_deref()?).ok()?;
        Some(ClientSettings {
            transport: Transport {
                address,
                tls_root_ca: self.tls.then(|| self.root_ca_path.clone()),
                token: self.tls.then(|| self.token_path.clone()),
            },
            mesh: MeshSettings {
                cluster_id: self.cluster_id.clone(),
                mesh_id: self.mesh_id.clone(),
                istio_version: self.istio_version.clone(),
            },
            initial_backoff: Duration::from_millis(self.initial_backoff_millis),
            max_backoff: Duration::from_secs(self.max_backoff_seconds),
            stale_grace: Duration::from_secs(self.stale_grace_seconds),
        })
    }
}

/// `bypass:`: whether the agent may bypass sidecars, and the named
/// policies of the decision engine (see docs/bypass.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BypassConfig {
    /// Bypass sidecars where the decision engine allows it (default false).
    pub enabled: bool,
    /// The engine's named policies, each with its default.
    pub policies: crate::xds::decide::BypassPolicy,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            pin_root: crate::layout::DEFAULT_PIN_ROOT.into(),
            cgroup: None,
            sockhash_size: 65536,
            splice_queue_limit: None,
            splice_min_messages: loader::DEFAULT_SPLICE_MIN_MESSAGES,
            intercept: true,
            bpf_run_stats: false,
            verdict_remedy: VerdictRemedy::Auto,
            admin_addr: None,
            log_format: LogFormat::Text,
            log_interval_seconds: 30,
            drain_seconds: 5,
            source: None,
            xds: XdsConfig::default(),
            pod_source: Default::default(),
            bypass: BypassConfig::default(),
        }
    }
}

/// Limits of `sockhash_size` (the kernel's sockhash takes any size; these
/// keep the maps sized with it within reason).
pub const SOCKHASH_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=4_194_304;

impl AgentConfig {
    /// Reads a YAML file (unknown fields are errors naming them).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            source: e,
        })?;
        let mut cfg = Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        cfg.source = Some(path.into());
        Ok(cfg)
    }

    /// Parses YAML text; an empty document is the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string().replace('\n', " "))
    }

    /// Checks every field; the first wrong one is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why: String| Err(ConfigError::Invalid { field, why });
        if !self.pin_root.is_absolute() {
            return bad(
                "pinRoot",
                format!("{} is not an absolute path", self.pin_root.display()),
            );
        }
        if let Some(cg) = &self.cgroup {
            if !cg.is_absolute() {
                return bad(
                    "cgroup",
                    format!("{} is not an absolute path", cg.display()),
                );
            }
        }
        if !SOCKHASH_SIZE_RANGE.contains(&self.sockhash_size) {
            return bad(
                "sockhashSize",
                format!(
                    "{} is outside {}..={}",
                    self.sockhash_size,
                    SOCKHASH_SIZE_RANGE.start(),
                    SOCKHASH_SIZE_RANGE.end()
                ),
            );
        }
        if self.log_interval_seconds == 0 {
            return bad("logIntervalSeconds", "must be at least 1".into());
        }
        if self.drain_seconds == 0 || self.drain_seconds > 600 {
            return bad(
                "drainSeconds",
                format!("{} is outside 1..=600", self.drain_seconds),
            );
        }
        if let Err((field, why)) = self.pod_source.check() {
            return bad(field, why);
        }
        self.xds.validate()
    }

    /// The effective config as YAML (what `--check-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// What the loader installs.
    pub fn install(&self) -> loader::Config {
        loader::Config {
            pin_root: self.pin_root.clone(),
            cgroup: self.cgroup.clone(),
            sockhash_size: self.sockhash_size,
            splice_queue_limit: self
                .splice_queue_limit
                .unwrap_or_else(loader::default_splice_queue_limit),
            splice_min_messages: self.splice_min_messages,
            intercept: self.intercept,
            verdict_remedy: self.verdict_remedy,
        }
    }

    pub fn log_interval(&self) -> Duration {
        Duration::from_secs(self.log_interval_seconds)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let doc = include_str!("../docs/agent-config.yaml");
        let parsed = AgentConfig::from_yaml(doc).expect("the documented example parses");
        assert_eq!(parsed, AgentConfig::default());
        parsed.validate().expect("the defaults are valid");
        // Every key, nested ones at their indentation (list items are values).
        for line in AgentConfig::default().to_yaml().lines() {
            if line.trim_start().starts_with("- ") {
                continue;
            }
            let key = line.split(':').next().unwrap_or_default();
            assert!(
                doc.lines().any(|l| l.starts_with(&format!("{key}:"))),
                "docs/agent-config.yaml does not document {key}"
            );
        }
        assert!(parsed.xds.client_settings().is_none(), "no xDS by default");
    }

    #[test]
    fn unknown_and_wrong_fields_are_named() {
        let e = AgentConfig::from_yaml("sockhashSiz: 10\n").unwrap_err();
        assert!(e.contains("sockhashSiz"), "{e}");
        let e = AgentConfig::from_yaml("verdictRemedy: maybe\n").unwrap_err();
        assert!(e.contains("maybe"), "{e}");
        let c = AgentConfig::from_yaml("sockhashSize: 8\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sockhashSize"), "{e}");
        let c = AgentConfig::from_yaml("pinRoot: relative/dir\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("pinRoot"));
        let c = AgentConfig::from_yaml("xds:\n  address: istiod\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("xds.address") && e.contains("istiod"), "{e}");
        let c = AgentConfig::from_yaml("xds:\n  address: unix:/x.sock\n  tls: true\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("xds.tls"));
        let e = AgentConfig::from_yaml("xds:\n  adress: a:1\n").unwrap_err();
        assert!(e.contains("adress"), "{e}");
        let c =
            AgentConfig::from_yaml("xds:\n  address: istiod.istio-system.svc:15012\n  tls: true\n")
                .unwrap();
        c.validate().unwrap();
        let s = c.xds.client_settings().unwrap();
        assert!(s.transport.tls_root_ca.is_some() && s.transport.token.is_some());
        let e = AgentConfig::from_yaml("bypass:\n  policies:\n    bypassEverything: true\n")
            .unwrap_err();
        assert!(e.contains("bypassEverything"), "{e}");
        let c = AgentConfig::from_yaml(
            "bypass:\n  enabled: true\n  policies:\n    bypassPassthrough: true\n",
        )
        .unwrap();
        assert!(c.bypass.enabled && c.bypass.policies.bypass_passthrough);
        assert!(
            c.bypass.policies.ignore_istio_default_retries,
            "unset policies keep their defaults"
        );
        let c = AgentConfig::from_yaml("drainSeconds: 0\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("drainSeconds"));
        let c = AgentConfig::from_yaml("podSource:\n  kind: kubernetes\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("podSource.nodeName") && e.contains("NODE_NAME"),
            "{e}"
        );
        let e = AgentConfig::from_yaml("podSource:\n  kind: etcd\n").unwrap_err();
        assert!(e.contains("etcd"), "{e}");
    }

    #[test]
    fn yaml_round_trips() {
        let c = AgentConfig {
            admin_addr: Some("127.0.0.1:15098".parse().unwrap()),
            sockhash_size: 1024,
            ..Default::default()
        };
        assert_eq!(AgentConfig::from_yaml(&c.to_yaml()).unwrap(), c);
    }
}
