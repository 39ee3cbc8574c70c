//! istio-iptables golden rule files (fixtures/istio/iptables): reading them
//! and applying them unchanged inside a pod's netns with iptables-restore /
//! ip6tables-restore, as the reference ("what istio-init does") run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use meshlane::sim::Pod;

/// Where the golden files live (override with MESHLANE_ISTIO_GOLDENS).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("MESHLANE_ISTIO_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/fixtures/istio/iptables"))
}

/// One `* table ... COMMIT` block and the tool that takes it.
#[derive(Debug, Clone)]
pub struct RuleBlock {
    pub ipv6: bool,
    pub text: String,
}

/// The rule blocks of golden file `name`. istio-iptables goldens hold the
/// IPv4 blocks and then the IPv6 ones; a block is IPv6 when it names an
/// IPv6 address (every ip6tables nat block has `-d ::1/128`).
pub fn blocks(name: &str) -> Result<Vec<RuleBlock>> {
    let path = golden_dir().join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with('*') {
            cur = Some(format!("{line}\n"));
            continue;
        }
        let Some(block) = cur.as_mut() else {
            continue; // "iptables-save" / "ip6tables-save" markers
        };
        block.push_str(line);
        block.push('\n');
        if line == "COMMIT" {
            let text = cur.take().unwrap_or_default();
            let ipv6 = text.contains("::");
            out.push(RuleBlock { ipv6, text });
        }
    }
    if out.is_empty() {
        bail!("{}: no rule block", path.display());
    }
    Ok(out)
}

/// Applies every block of golden `name` in `pod` (IPv6 blocks only when
/// `ipv6`). Fails with the tool's message.
pub fn apply(pod: &Pod, name: &str, ipv6: bool) -> Result<()> {
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
            .with_context(|| format!("starting {tool}"))?;
        child
            .stdin
            .take()
            .context("restore stdin")?
            .write_all(b.text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{tool} of {name} in {}: {}",
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
        let out = pod.command(argv).output()?;
        if !out.status.success() {
            bail!(
                "{} in {}: {}",
                argv.join(" "),
                pod.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(all)
}

/// True when the ruleset text has any nat table or REDIRECT/DNAT rule.
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

/// Runs `argv` in the pod without caring about its output.
pub fn run_quiet(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
