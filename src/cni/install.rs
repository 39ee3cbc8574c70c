//! `meshlane install-cni`: puts the plugin binary into the node's CNI bin
//! directory and its entry last in the node's primary network
//! configuration (the first `.conf`, `.conflist` or `.json` file by name,
//! the one runtimes use), converting a single-plugin `.conf` into a
//! `.conflist`. Every write is a temp file + rename in the same
//! directory; a file already as wanted is not written, so re-running (or
//! watching) is idempotent; every other plugin and key is kept as it was
//! (key order included). Uninstalling removes exactly meshlane's entry
//! (from every configuration that has one) and its binary.
//!
//! The JSON transformations are pure ([`with_entry`], [`without_entry`]);
//! [`Installer`] does the file work.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

use super::PLUGIN_TYPE;

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a CNI network configuration: {why}")]
    BadConf { path: PathBuf, why: String },
    #[error("no CNI network configuration (*.conf, *.conflist, *.json) in {0}: install the node's primary CNI first (or use --watch to wait for it)")]
    NoPrimary(PathBuf),
    #[error("plugin binary {0} not found (build or ship meshlane-cni beside meshlane, or give --plugin-binary)")]
    NoBinary(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a plugin entry is meshlane's.
fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `doc` (a conflist, or a single-plugin conf) with `entry` as its last
/// plugin; None when it already is exactly that. A conf becomes a
/// conflist: its cniVersion and name move to the list.
pub fn with_entry(doc: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let Some(obj) = doc.as_object() else {
        return Err("the document is not a JSON object".into());
    };
    let mut list = match obj.get("plugins") {
        Some(Value::Array(_)) => obj.clone(),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => conf_to_list(obj)?,
    };
    let Some(Value::Array(plugins)) = list.get_mut("plugins") else {
        return Err("\"plugins\" is not a list".into());
    };
    if plugins.last() == Some(entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(None);
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    Ok(Some(Value::Object(list)))
}

/// A single-plugin conf as a conflist of that one plugin.
fn conf_to_list(conf: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    if conf.get("type").and_then(Value::as_str).is_none() {
        return Err("neither \"plugins\" nor a plugin \"type\"".into());
    }
    let mut plugin = conf.clone();
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.remove(key) {
            list.insert(key.into(), v);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    Ok(list)
}

/// `doc` without meshlane's entry; None when it has none.
pub fn without_entry(doc: &Value) -> Option<Value> {
    let mut doc = doc.clone();
    let plugins = doc.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    (plugins.len() != before).then_some(doc)
}

/// Whether the file name is one runtimes load as network configuration.
fn is_conf_name(name: &str) -> bool {
    !name.starts_with('.')
        && [".conf", ".conflist", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// What one run changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Files written (or rewritten).
    pub written: Vec<PathBuf>,
    /// Files removed.
    pub removed: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.removed.is_empty()
    }
}

/// The directories and what goes into them.
#[derive(Debug, Clone)]
pub struct Installer {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The meshlane-cni binary to copy.
    pub plugin_binary: PathBuf,
    /// meshlane's entry in the conflist.
    pub entry: Value,
}

impl Installer {
    /// The network configuration files in `conf_dir`, sorted by name.
    fn conf_files(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(io(&self.conf_dir))?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_conf_name))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        Ok(v)
    }

    fn read(path: &Path) -> Result<Value, InstallError> {
        let text = std::fs::read(path).map_err(io(path))?;
        serde_json::from_slice(&text).map_err(|e| InstallError::BadConf {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }

    /// Puts the binary and the entry in place; changes only what differs.
    pub fn install(&self) -> Result<Changes, InstallError> {
        let mut changes = Changes::default();
        self.install_binary(&mut changes)?;
        let primary = self
            .conf_files()?
            .into_iter()
            .next()
            .ok_or_else(|| InstallError::NoPrimary(self.conf_dir.clone()))?;
        let doc = Self::read(&primary)?;
        let updated = with_entry(&doc, &self.entry).map_err(|why| InstallError::BadConf {
            path: primary.clone(),
            why,
        })?;
        let Some(updated) = updated else {
            return Ok(changes);
        };
        let is_list = doc.get("plugins").is_some();
        let target = if is_list {
            primary.clone()
        } else {
            primary.with_extension("conflist")
        };
        write_atomic(&target, &pretty(&updated))?;
        changes.written.push(target.clone());
        if target != primary {
            std::fs::remove_file(&primary).map_err(io(&primary))?;
            changes.removed.push(primary);
        }
        Ok(changes)
    }

    fn install_binary(&self, changes: &mut Changes) -> Result<(), InstallError> {
        let want = std::fs::read(&self.plugin_binary).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                InstallError::NoBinary(self.plugin_binary.clone())
            } else {
                io(&self.plugin_binary)(e)
            }
        })?;
        let dest = self.bin_dir.join(PLUGIN_TYPE);
        if std::fs::read(&dest).is_ok_and(|have| have == want) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.bin_dir).map_err(io(&self.bin_dir))?;
        write_atomic_mode(&dest, &want, 0o755)?;
        changes.written.push(dest);
        Ok(())
    }

    /// Removes meshlane's entry from every configuration and its binary.
    pub fn uninstall(&self) -> Result<Changes, InstallError> {
        let mut changes = Changes::default();
        if self.conf_dir.is_dir() {
            for path in self.conf_files()? {
                let Ok(doc) = Self::read(&path) else { continue };
                if let Some(updated) = without_entry(&doc) {
                    write_atomic(&path, &pretty(&updated))?;
                    changes.written.push(path);
                }
            }
        }
        let bin = self.bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&bin) {
            Ok(()) => changes.removed.push(bin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&bin)(e)),
        }
        Ok(changes)
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// Writes `bytes` to a hidden temp file beside `path` (runtimes ignore
/// it), syncs it and renames it over `path`.
fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.meshlane-tmp"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({"type": "meshlane-cni", "agentNamespace": "meshlane-system"})
    }

    #[test]
    fn inserted_last_once_and_removed() {
        let doc = json!({"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]});
        let with = with_entry(&doc, &entry()).unwrap().unwrap();
        assert_eq!(with["plugins"][2], entry());
        assert_eq!(with["plugins"][0], doc["plugins"][0]);
        assert!(with_entry(&with, &entry()).unwrap().is_none(), "idempotent");
        // An entry no longer last (the primary appended one) moves last.
        let mut moved = with.clone();
        moved["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bandwidth"}));
        let fixed = with_entry(&moved, &entry()).unwrap().unwrap();
        assert_eq!(fixed["plugins"].as_array().unwrap().len(), 4);
        assert_eq!(fixed["plugins"][3], entry());
        assert_eq!(without_entry(&with).unwrap(), doc);
        assert!(without_entry(&doc).is_none());
    }

    #[test]
    fn a_single_conf_becomes_a_list() {
        let conf =
            json!({"cniVersion": "0.4.0", "name": "bridge", "type": "bridge", "bridge": "cni0"});
        let list = with_entry(&conf, &entry()).unwrap().unwrap();
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["name"], "bridge");
        assert_eq!(
            list["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(list["plugins"][1], entry());
        assert!(with_entry(&json!({"name": "x"}), &entry()).is_err());
        assert!(with_entry(&json!([1]), &entry()).is_err());
    }

    #[test]
    fn only_configuration_names_count() {
        assert!(
            is_conf_name("10-calico.conflist")
                && is_conf_name("99-x.conf")
                && is_conf_name("a.json")
        );
        assert!(
            !is_conf_name(".10-calico.conflist.meshlane-tmp") && !is_conf_name("calico-kubeconfig")
        );
    }
}
