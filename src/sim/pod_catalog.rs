//! Test-only pod source (feature `sim`): a directory of pod files,
//! `<dir>/<namespace>/<name>.json`, each one [`PodInfo`] as JSON, read on
//! every lookup. Tests write a pod's file before its CNI ADD; an agent
//! started with `MESHLANE_SIM_POD_CATALOG=<dir>` answers from it. Stands
//! in for the real pod sources (Kubernetes watch, static file) behind the
//! same [`PodCatalog`] trait.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::pods::source::{PodCatalog, PodInfo, PodKey};

/// The environment variable that points the agent at a directory catalog.
pub const SIM_POD_CATALOG_ENV: &str = "MESHLANE_SIM_POD_CATALOG";

/// A catalog read from a directory of pod files.
#[derive(Debug, Clone)]
pub struct DirCatalog {
    dir: PathBuf,
}

impl DirCatalog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, key: &PodKey) -> PathBuf {
        self.dir
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    /// Writes one pod's file (atomically: temp file + rename).
    pub fn put(&self, info: &PodInfo) -> Result<()> {
        let path = self.file(&info.key);
        let dir = path.parent().context("pod file directory")?;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp", info.key.name));
        std::fs::write(&tmp, serde_json::to_vec(info)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Forgets one pod.
    pub fn remove(&self, key: &PodKey) {
        let _ = std::fs::remove_file(self.file(key));
    }
}

impl PodCatalog for DirCatalog {
    fn get(&self, key: &PodKey) -> Option<PodInfo> {
        let bytes = std::fs::read(self.file(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn all(&self) -> Vec<PodInfo> {
        let mut out = Vec::new();
        for ns in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "json") {
                    if let Some(info) = std::fs::read(&p)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                    {
                        out.push(info);
                    }
                }
            }
        }
        out
    }

    fn synced(&self) -> bool {
        true
    }
}
