//! CNI spec versions: which ones the plugin speaks, what each allows
//! (CHECK and prevResult on DEL from 0.4.0, GC and STATUS from 1.1.0), and
//! the VERSION command's answer.

use serde_json::{json, Value};

use super::error::{CniError, Code};

/// The versions meshlane-cni accepts, oldest first.
pub const SUPPORTED: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: VERSION's default and errors' version
/// when the input had none.
pub const LATEST: &str = "1.1.0";

/// One supported spec version (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CniVersion(pub u16, pub u16, pub u16);

impl CniVersion {
    /// Parses `v` and accepts it only when it is one of [`SUPPORTED`]
    /// (code 1 otherwise, naming the versions spoken).
    pub fn supported(v: &str) -> Result<Self, CniError> {
        if !SUPPORTED.contains(&v) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {v:?} is not supported by meshlane-cni (it speaks {})",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let mut parts = v.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
        Ok(Self(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        ))
    }

    /// CHECK exists, and DEL gets prevResult (spec 0.4.0).
    pub fn has_check(self) -> bool {
        self >= Self(0, 4, 0)
    }

    /// GC and STATUS exist (spec 1.1.0).
    pub fn has_gc_and_status(self) -> bool {
        self >= Self(1, 1, 0)
    }
}

/// VERSION's answer: the version given on input (or the latest) and every
/// version spoken.
pub fn version_reply(input: Option<&str>) -> Value {
    json!({
        "cniVersion": input.unwrap_or(LATEST),
        "supportedVersions": SUPPORTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_versions_are_spoken() {
        for v in SUPPORTED {
            assert!(CniVersion::supported(v).is_ok(), "{v}");
        }
        for v in ["0.1.0", "0.2.0", "0.3.0", "1.2.0", "2.0.0", "", "one"] {
            let e = CniVersion::supported(v).unwrap_err();
            assert_eq!(e.code, Code::IncompatibleVersion, "{v}");
            assert!(e.details.contains("1.1.0"), "{}", e.details);
        }
    }

    #[test]
    fn features_follow_the_version() {
        let v = |s| CniVersion::supported(s).unwrap();
        assert!(!v("0.3.1").has_check());
        assert!(v("0.4.0").has_check() && !v("0.4.0").has_gc_and_status());
        assert!(!v("1.0.0").has_gc_and_status());
        assert!(v("1.1.0").has_gc_and_status());
        assert_eq!(version_reply(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_reply(None)["supportedVersions"][3], "1.1.0");
    }
}
