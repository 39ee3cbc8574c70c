//! Istio's own interception for simulated pods: applies one of the golden
//! istio-init rule sets (iptables-save format, from the shared fixtures) to a
//! pod's netns with `iptables-restore`, and reads the pod's nat table back.
//! The rules live in the netns, so they go away with the pod.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::Pod;

/// Environment variable that overrides where the golden files are read from.
pub const FIXTURES_ENV: &str = "MESHLANE_ISTIO_IPTABLES_FIXTURES";

/// Directory of the golden istio-init rule sets: `$MESHLANE_ISTIO_IPTABLES_FIXTURES`,
/// else `../shared/fixtures/istio/iptables` next to the crate.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os(FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/istio/iptables")
        })
}

/// The text of golden file `name` (e.g. "cni-plugin_basic.txt.golden").
pub fn golden(name: &str) -> Result<String> {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading golden iptables rules {}", path.display()))
}

/// Applies golden file `name` unchanged inside `pod`'s netns.
pub fn apply_golden(pod: &Pod, name: &str) -> Result<()> {
    let rules = golden(name)?;
    let mut child = pod
        .command(&["iptables-restore"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting iptables-restore in pod {}", pod.name))?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore of {name} in pod {}: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `iptables-save -t nat` inside `pod`.
pub fn nat_rules(pod: &Pod) -> Result<String> {
    pod.exec(&["iptables-save", "-t", "nat"])
}
