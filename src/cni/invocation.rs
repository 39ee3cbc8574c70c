//! One plugin invocation as the runtime describes it in the environment:
//! `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`
//! (Kubernetes' `K8S_POD_NAMESPACE` and `K8S_POD_NAME`), `CNI_PATH`. What
//! each command requires is checked here; a missing or invalid variable
//! is code 4 naming it.

use std::path::PathBuf;

use super::error::{CniError, Code};
use crate::pods::source::PodKey;

/// The operations of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The variables this command cannot do without.
    fn required(self) -> &'static [&'static str] {
        match self {
            Self::Add | Self::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Self::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Self::Gc | Self::Status | Self::Version => &[],
        }
    }
}

/// The parsed environment of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Empty when not given (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` pairs in order.
    pub args: Vec<(String, String)>,
}

fn bad_env(vars: &str, why: impl Into<String>) -> CniError {
    CniError::new(
        Code::InvalidEnvironment,
        format!("invalid environment: {vars}"),
        why.into(),
    )
}

impl Invocation {
    /// Reads the variables through `var` (std::env::var in the plugin).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(bad_env(
                    "CNI_COMMAND",
                    "CNI_COMMAND is not set (ADD, DEL, CHECK, GC, STATUS or VERSION)",
                ))
            }
            Some(c) => Command::parse(&c).ok_or_else(|| {
                bad_env(
                    "CNI_COMMAND",
                    format!("CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
                )
            })?,
        };
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(bad_env(
                &missing.join(", "),
                format!("{} needs {} set", command_name(command), missing.join(", ")),
            ));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if !container_id.is_empty() {
            check_container_id(&container_id).map_err(|why| bad_env("CNI_CONTAINERID", why))?;
        }
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if !ifname.is_empty() {
            check_ifname(&ifname).map_err(|why| bad_env("CNI_IFNAME", why))?;
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())
            .map_err(|why| bad_env("CNI_ARGS", why))?;
        Ok(Self {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
        })
    }

    /// The value of one `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The Kubernetes pod, when CNI_ARGS names one.
    pub fn pod(&self) -> Option<PodKey> {
        Some(PodKey {
            namespace: self.arg("K8S_POD_NAMESPACE")?.to_string(),
            name: self.arg("K8S_POD_NAME")?.to_string(),
        })
    }

    /// How errors name the pod: `pod ns/name (container <id>)`.
    pub fn describe(&self) -> String {
        let short: String = self.container_id.chars().take(12).collect();
        match self.pod() {
            Some(p) => format!("pod {p} (container {short})"),
            None => format!("container {short}"),
        }
    }
}

fn command_name(c: Command) -> &'static str {
    match c {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Gc => "GC",
        Command::Status => "STATUS",
        Command::Version => "VERSION",
    }
}

/// A container id per the spec: alphanumeric first, then alphanumerics,
/// `_`, `.` or `-` (so it is also a safe file name).
pub fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        || id.len() > 255
    {
        return Err(format!(
            "container id {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(())
}

/// An interface name per the spec: not empty, not `.` or `..`, under 16
/// bytes, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() >= 16
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {name:?} must be 1-15 bytes without '/', ':' or whitespace, and not '.' or '..'"
        ));
    }
    Ok(())
}

/// `K=V;K2=V2` into pairs; an item without `=` is an error naming it.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("CNI_ARGS item {item:?} is not KEY=VALUE")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn add_reads_the_pod_from_cni_args() {
        let inv = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ])
        .unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.pod().unwrap().to_string(), "default/web-0");
        assert!(inv.describe().contains("pod default/web-0"));
    }

    #[test]
    fn missing_and_bad_variables_are_named() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_CONTAINERID, CNI_NETNS"), "{}", e.msg);
        assert!(env(&[]).unwrap_err().msg.contains("CNI_COMMAND"));
        assert!(env(&[("CNI_COMMAND", "EXPLODE")])
            .unwrap_err()
            .details
            .contains("EXPLODE"));
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "a/b"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        // DEL may come without a netns; VERSION needs nothing.
        assert!(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0")
        ])
        .is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
