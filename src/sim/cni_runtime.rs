//! A container runtime's side of CNI, done as libcni does it, for tests
//! that run network configuration lists (the real bridge + host-local
//! plugins, then meshlane-cni): each plugin of the list gets its request
//! configuration on stdin (its own object plus `cniVersion`, `name` and,
//! after the first, `prevResult`) and the `CNI_*` environment; ADD chains
//! results and returns the last, which the caller caches for CHECK and
//! DEL (passed as `prevResult` from 0.4.0 on, as libcni does); DEL runs
//! the list in reverse; GC (with `cni.dev/valid-attachments`) and STATUS
//! run from 1.1.0 on.
//!
//! Versions: a plugin that does not speak the list's version (Debian's
//! plugins stop at 1.0.0) is run at the newest version it speaks with the
//! same major, and its result relabelled: 1.0.0 and 1.1.0 results have the
//! same format. GC and STATUS skip plugins that predate them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// One attachment's parameters.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS, e.g. `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web`.
    pub args: String,
}

/// A network configuration list and where its plugins are.
#[derive(Debug)]
pub struct Network {
    pub list: Value,
    /// Directories searched for plugins (CNI_PATH).
    pub bin_dirs: Vec<PathBuf>,
    versions: Mutex<HashMap<String, Vec<String>>>,
}

impl Clone for Network {
    fn clone(&self) -> Self {
        Self::new(self.list.clone(), self.bin_dirs.clone())
    }
}

fn semver(v: &str) -> (u32, u32, u32) {
    let mut p = v.split('.').map(|x| x.parse().unwrap_or(0));
    (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    )
}

impl Network {
    pub fn new(list: Value, bin_dirs: Vec<PathBuf>) -> Self {
        Self {
            list,
            bin_dirs,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The list's cniVersion.
    pub fn version(&self) -> String {
        self.list["cniVersion"]
            .as_str()
            .unwrap_or("1.0.0")
            .to_string()
    }

    fn at_least(&self, v: &str) -> bool {
        semver(&self.version()) >= semver(v)
    }

    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn binary(&self, ty: &str) -> Result<PathBuf> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .with_context(|| format!("CNI plugin {ty} not found in {}", self.cni_path()))
    }

    /// Runs plugin `ty` with `command`, `conf` on stdin; the raw output.
    pub fn exec(
        &self,
        ty: &str,
        command: &str,
        att: Option<&Attachment>,
        conf: &Value,
    ) -> Result<Output> {
        let mut c = Command::new(self.binary(ty)?);
        c.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = att {
            c.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", &a.args);
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("running CNI plugin {ty}"))?;
        // A plugin may exit without reading stdin (Debian's bridge does on
        // VERSION): its exit status and output tell, not the write's EPIPE.
        let wrote = child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(&serde_json::to_vec(conf)?);
        let out = child.wait_with_output()?;
        match wrote {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(out),
        }
    }

    /// The versions plugin `ty` speaks (asked once through VERSION).
    fn spoken(&self, ty: &str) -> Result<Vec<String>> {
        if let Some(v) = self.versions.lock().ok().and_then(|m| m.get(ty).cloned()) {
            return Ok(v);
        }
        let out = self
            .exec(ty, "VERSION", None, &json!({"cniVersion": self.version()}))
            .with_context(|| format!("CNI VERSION {ty}"))?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{ty} VERSION: {}", String::from_utf8_lossy(&out.stdout)))?;
        let list: Vec<String> = v["supportedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        if let Ok(mut m) = self.versions.lock() {
            m.insert(ty.to_string(), list.clone());
        }
        Ok(list)
    }

    /// The version plugin `ty` is run at (see the module doc).
    fn version_for(&self, ty: &str) -> Result<String> {
        let want = self.version();
        let spoken = self.spoken(ty)?;
        if spoken.contains(&want) {
            return Ok(want);
        }
        let major = semver(&want).0;
        spoken
            .iter()
            .filter(|v| semver(v).0 == major && semver(v) < semver(&want))
            .max_by_key(|v| semver(v))
            .cloned()
            .with_context(|| {
                format!("CNI plugin {ty} speaks none of {want}'s major version: {spoken:?}")
            })
    }

    fn request(&self, plugin: &Value, version: &str, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!(version);
        conf["name"] = self.list["name"].clone();
        if let Some(p) = prev {
            let mut p = p.clone();
            p["cniVersion"] = json!(version);
            conf["prevResult"] = p;
        }
        conf
    }

    fn run(
        &self,
        plugin: &Value,
        command: &str,
        att: Option<&Attachment>,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let ty = plugin["type"].as_str().context("plugin without a type")?;
        let version = self.version_for(ty)?;
        let conf = self.request(plugin, &version, prev);
        let out = self
            .exec(ty, command, att, &conf)
            .with_context(|| format!("CNI {command} {ty} at {version}"))?;
        if !out.status.success() {
            bail!(
                "CNI {command} {ty}: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// ADD through the list; the last plugin's result, in the list's
    /// version (cache it for CHECK and DEL).
    pub fn add(&self, att: &Attachment) -> Result<Value> {
        self.add_traced(att)?.pop().context("empty plugin list")
    }

    /// ADD, returning every plugin's result in order (each relabelled to
    /// the list's version, as the next plugin gets it).
    pub fn add_traced(&self, att: &Attachment) -> Result<Vec<Value>> {
        let mut results: Vec<Value> = Vec::new();
        for plugin in self.plugins() {
            let out = self.run(&plugin, "ADD", Some(att), results.last())?;
            let mut result: Value = serde_json::from_slice(&out)
                .with_context(|| format!("ADD result: {}", String::from_utf8_lossy(&out)))?;
            result["cniVersion"] = json!(self.version());
            results.push(result);
        }
        Ok(results)
    }

    /// DEL in reverse order, with the cached result from 0.4.0 on.
    pub fn del(&self, att: &Attachment, cached: Option<&Value>) -> Result<()> {
        let prev = cached.filter(|_| self.at_least("0.4.0"));
        for plugin in self.plugins().iter().rev() {
            self.run(plugin, "DEL", Some(att), prev)?;
        }
        Ok(())
    }

    /// CHECK (0.4.0 on) with the cached result.
    pub fn check(&self, att: &Attachment, cached: &Value) -> Result<()> {
        if !self.at_least("0.4.0") {
            bail!("CHECK needs cniVersion 0.4.0 or later");
        }
        for plugin in self.plugins() {
            self.run(&plugin, "CHECK", Some(att), Some(cached))?;
        }
        Ok(())
    }

    /// The plugins that speak GC and STATUS (1.1.0).
    fn plugins_1_1(&self) -> Result<Vec<Value>> {
        let mut v = Vec::new();
        for p in self.plugins() {
            let ty = p["type"].as_str().unwrap_or_default().to_string();
            if self.spoken(&ty)?.iter().any(|s| semver(s) >= (1, 1, 0)) {
                v.push(p);
            }
        }
        Ok(v)
    }

    /// GC with the attachments still valid: (container id, ifname).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<()> {
        if !self.at_least("1.1.0") {
            bail!("GC needs cniVersion 1.1.0");
        }
        let list: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        let mut errors = Vec::new();
        for mut plugin in self.plugins_1_1()? {
            plugin["cni.dev/valid-attachments"] = json!(list);
            if let Err(e) = self.run(&plugin, "GC", None, None) {
                errors.push(e.to_string());
            }
        }
        if !errors.is_empty() {
            bail!("GC: {}", errors.join("; "));
        }
        Ok(())
    }

    /// STATUS (1.1.0).
    pub fn status(&self) -> Result<()> {
        if !self.at_least("1.1.0") {
            bail!("STATUS needs cniVersion 1.1.0");
        }
        for plugin in self.plugins_1_1()? {
            self.run(&plugin, "STATUS", None, None)?;
        }
        Ok(())
    }
}

/// The directory of a built binary's siblings (cargo's target dir), for
/// CNI_PATH: where `meshlane-cni` is.
pub fn dir_of(binary: &Path) -> PathBuf {
    binary
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
