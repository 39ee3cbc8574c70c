//! CNI error objects: the spec's well-known codes, plus meshlane's own
//! (100+), rendered as the JSON the runtime reads from stdout.

use serde_json::{json, Value};
use thiserror::Error;

/// Error codes (CNI spec, "Error"; 100 and up are meshlane's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's cniVersion is not spoken.
    IncompatibleVersion = 1,
    /// 3: the container (its netns) does not exist.
    UnknownContainer = 3,
    /// 4: a CNI_* environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// 5: reading stdin failed.
    Io = 5,
    /// 6: stdin is not valid JSON.
    Decode = 6,
    /// 7: the configuration is invalid (wrong field, no prevResult).
    InvalidConfig = 7,
    /// 11: transient (the agent is unreachable or slow): try again later.
    TryAgainLater = 11,
    /// 50: the plugin cannot serve ADD now (STATUS, CHECK).
    NotAvailable = 50,
    /// 100: the agent refused to register the pod (its reason follows).
    RegistrationRefused = 100,
    /// 101: CHECK found the pod's registration missing or broken.
    RegistrationBroken = 101,
}

/// One CNI error: code, short message, details.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object the spec defines, in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_spec_object() {
        let e = CniError::new(Code::TryAgainLater, "agent unreachable", "pod default/web");
        let v = e.to_json("0.4.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["msg"], "agent unreachable");
        assert_eq!(v["details"], "pod default/web");
    }
}
