//! Istio's own interception for simulated pods: applies one of the golden
//! istio-init rule sets (iptables-save format, Istio's own goldens in tests/fixtures) to a
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
/// else the copies in the crate's `tests/fixtures/istio/iptables`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os(FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio/iptables")
        })
}

/// The text of golden file `name` (e.g. "cni-plugin_basic.txt.golden").
pub fn golden(name: &str) -> Result<String> {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading golden iptables rules {}", path.display()))
}

/// One `*table ... COMMIT` block of a golden file and its address family.
#[derive(Debug, Clone)]
pub struct RuleBlock {
    pub ipv6: bool,
    pub text: String,
}

/// The rule blocks of golden file `name`. istio-iptables goldens hold the
/// IPv4 blocks and then the IPv6 ones; a block is IPv6 when it names an
/// IPv6 address (every ip6tables nat block has `-d ::1/128`).
pub fn blocks(name: &str) -> Result<Vec<RuleBlock>> {
    let text = golden(name)?;
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with('*') {
            cur = Some(format!("{line}\n"));
            continue;
        }
        // Lines outside a block are "iptables-save"/"ip6tables-save" markers.
        let Some(block) = cur.as_mut() else { continue };
        block.push_str(line);
        block.push('\n');
        if line == "COMMIT" {
            let text = cur.take().unwrap_or_default();
            out.push(RuleBlock {
                ipv6: text.contains("::"),
                text,
            });
        }
    }
    if out.is_empty() {
        bail!("golden {name}: no rule block");
    }
    Ok(out)
}

/// Applies the IPv4 blocks of golden file `name` unchanged inside `pod`.
pub fn apply_golden(pod: &Pod, name: &str) -> Result<()> {
    apply_golden_family(pod, name, false)
}

/// Applies golden file `name` unchanged inside `pod`'s netns: the IPv4
/// blocks with iptables-restore, and the IPv6 ones with ip6tables-restore
/// when `ipv6`. Fails with the tool's message.
pub fn apply_golden_family(pod: &Pod, name: &str, ipv6: bool) -> Result<()> {
    for b in blocks(name)? {
        if b.ipv6 && !ipv6 {
            continue;
        }
        let tool = if b.ipv6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        let mut child = pod
            .command(&[tool, "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {tool} in pod {}", pod.name))?;
        child
            .stdin
            .take()
            .context("restore stdin")?
            .write_all(b.text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{tool} of {name} in pod {}: {}",
                pod.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The pod's whole netfilter state as `iptables-save`, `ip6tables-save`
/// and `nft list ruleset` print it.
pub fn ruleset(pod: &Pod) -> Result<String> {
    let mut all = String::new();
    for argv in [
        &["iptables-save"][..],
        &["ip6tables-save"][..],
        &["nft", "list", "ruleset"][..],
    ] {
        all.push_str(&pod.exec(argv)?);
    }
    Ok(all)
}

/// True when a ruleset text has any nat table or REDIRECT/DNAT rule.
pub fn has_nat(ruleset: &str) -> bool {
    ruleset.lines().any(|l| {
        let l = l.trim();
        l == "*nat"
            || l.starts_with("table ip nat")
            || l.starts_with("table ip6 nat")
            || l.starts_with("table inet nat")
            || l.contains("REDIRECT")
            || l.contains("redirect to")
            || l.contains("dnat to")
    })
}

/// `iptables-save -t nat` inside `pod`.
pub fn nat_rules(pod: &Pod) -> Result<String> {
    pod.exec(&["iptables-save", "-t", "nat"])
}
