//! Pod networking through the real CNI plugins from /usr/lib/cni: one bridge
//! per simulated node, host-local IPAM, IPv4 and IPv6 (fd00:0:0:K::/64).

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const CNI_BIN_DIRS: [&str; 3] = ["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];
const STATE_DIR: &str = "/run/meshlane-test";

/// Directory holding the CNI plugin binaries.
pub fn cni_bin_dir() -> Result<PathBuf> {
    CNI_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").exists())
        .context("CNI plugins not found (apt-get install containernetworking-plugins)")
}

/// A claimed subnet index K: 10.201.K.0/24 and fd00:0:0:K::/64, bridge mlbrK.
/// Claimed by creating a directory (atomic), released on drop.
pub struct Subnet {
    pub index: u8,
    claim: PathBuf,
}

impl Subnet {
    /// Claims a free index. The claim starts from an empty IPAM directory:
    /// a pod deleted after its subnet was released leaves host-local's lock
    /// directory behind, and stale reservations must not leak into a new node.
    pub fn claim() -> Result<Self> {
        let s = Self::claim_index()?;
        let _ = fs::remove_dir_all(s.ipam_dir());
        Ok(s)
    }

    fn claim_index() -> Result<Self> {
        let dir = Path::new(STATE_DIR).join("subnets");
        fs::create_dir_all(&dir)?;
        for index in 1..=250u8 {
            let claim = dir.join(index.to_string());
            if fs::create_dir(&claim).is_ok() {
                fs::write(claim.join("owner"), std::process::id().to_string())?;
                return Ok(Self { index, claim });
            }
            // Reclaim subnets whose owner process is gone.
            let owner: Option<i32> = fs::read_to_string(claim.join("owner"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = owner {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(&claim);
                    if fs::create_dir(&claim).is_ok() {
                        fs::write(claim.join("owner"), std::process::id().to_string())?;
                        return Ok(Self { index, claim });
                    }
                }
            }
        }
        bail!("no free test subnet under {}", dir.display())
    }

    pub fn bridge(&self) -> String {
        format!("mlbr{}", self.index)
    }

    pub fn v4_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.index, 1)
    }

    pub fn v6_gateway(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, u16::from(self.index), 0, 0, 0, 1)
    }

    /// The claim marker: present while this subnet is held.
    pub fn claim_path(&self) -> &Path {
        &self.claim
    }

    pub fn ipam_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join(format!("ipam-{}", self.index))
    }

    /// The bridge plugin's object (host-local IPAM) for a conflist of
    /// this subnet: `conf` without the list-level cniVersion and name.
    pub fn bridge_plugin(&self, ipv6: bool) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&self.conf(ipv6)).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("cniVersion");
            o.remove("name");
        }
        v
    }

    /// The CNI network configuration for pods of this subnet.
    pub fn conf(&self, ipv6: bool) -> String {
        let k = self.index;
        let v6 = if ipv6 {
            format!(r#",[{{"subnet":"fd00:0:0:{k:x}::/64","gateway":"fd00:0:0:{k:x}::1"}}]"#)
        } else {
            String::new()
        };
        format!(
            r#"{{"cniVersion":"1.0.0","name":"meshlane-test-{k}","type":"bridge","bridge":"{br}","isGateway":true,"ipMasq":false,"hairpinMode":false,"ipam":{{"type":"host-local","dataDir":"{ipam}","ranges":[[{{"subnet":"10.201.{k}.0/24","gateway":"10.201.{k}.1"}}]{v6}]}}}}"#,
            br = self.bridge(),
            ipam = self.ipam_dir().display(),
        )
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(self.ipam_dir());
        let _ = fs::remove_dir_all(&self.claim);
    }
}

/// Runs the bridge plugin. ADD returns the result JSON.
pub fn invoke(
    command: &str,
    conf: &str,
    netns: &Path,
    container_id: &str,
) -> Result<serde_json::Value> {
    let bin = cni_bin_dir()?;
    let mut child = Command::new(bin.join("bridge"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the CNI bridge plugin")?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "CNI {command} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if out.stdout.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
