//! Locating the network namespace of a pod that is already running, from
//! the IPs the pod source reports: every network namespace on the node is
//! reachable through a bind mount (/run/netns/*, where container runtimes
//! keep pod sandboxes) or a process (/proc/PID/ns/net); the one whose
//! interfaces hold the pod's IP is the pod's. The agent's own (the node's)
//! netns is never a candidate.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::source::{PodInfo, PodKey};

/// Finds the netns of running pods.
pub trait NetnsFinder: Send + Sync {
    /// The netns path of each of `pods` that could be located.
    fn locate(&self, pods: &[&PodInfo]) -> HashMap<PodKey, PathBuf>;
}

/// The scan of bind-mounted netns directories and /proc.
#[derive(Debug, Clone)]
pub struct NodeScan {
    /// Directories of bind-mounted netns files, searched first.
    pub netns_dirs: Vec<PathBuf>,
    /// The proc filesystem.
    pub proc: PathBuf,
}

impl Default for NodeScan {
    fn default() -> Self {
        Self {
            netns_dirs: vec!["/run/netns".into(), "/var/run/netns".into()],
            proc: "/proc".into(),
        }
    }
}

impl NodeScan {
    /// One path per distinct netns on the node, bind mounts before
    /// processes, the node's own netns left out.
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        if let Ok(host) = std::fs::metadata("/proc/self/ns/net") {
            seen.insert((host.dev(), host.ino()));
        }
        let mut out = Vec::new();
        let mut consider = |p: PathBuf| {
            if let Ok(m) = std::fs::metadata(&p) {
                if seen.insert((m.dev(), m.ino())) {
                    out.push(p);
                }
            }
        };
        for dir in &self.netns_dirs {
            for e in read_dir_sorted(dir) {
                consider(e);
            }
        }
        for e in read_dir_sorted(&self.proc) {
            let is_pid = e
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if is_pid {
                consider(e.join("ns/net"));
            }
        }
        out
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

impl NetnsFinder for NodeScan {
    fn locate(&self, pods: &[&PodInfo]) -> HashMap<PodKey, PathBuf> {
        let mut wanted: HashMap<IpAddr, &PodKey> = HashMap::new();
        for p in pods {
            for ip in &p.ips {
                wanted.insert(*ip, &p.key);
            }
        }
        let mut found = HashMap::new();
        if wanted.is_empty() {
            return found;
        }
        for path in self.candidates() {
            // A process may exit or a mount vanish between listing and
            // entering: skip it.
            let Ok(info) = crate::netns::inspect(&path) else {
                continue;
            };
            for ip in info.addrs {
                if let Some(key) = wanted.remove(&ip) {
                    found.entry(key.clone()).or_insert_with(|| path.clone());
                }
            }
            if wanted.is_empty() {
                break;
            }
        }
        found
    }
}

/// A finder that knows some pods' netns paths outright (the static pod
/// source lists them) and scans for the others.
#[derive(Debug, Clone, Default)]
pub struct HintedFinder {
    pub hints: Arc<RwLock<HashMap<PodKey, PathBuf>>>,
    pub scan: NodeScan,
}

impl NetnsFinder for HintedFinder {
    fn locate(&self, pods: &[&PodInfo]) -> HashMap<PodKey, PathBuf> {
        let hints = self.hints.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (known, unknown): (Vec<&PodInfo>, Vec<&PodInfo>) =
            pods.iter().partition(|p| hints.contains_key(&p.key));
        let mut out: HashMap<PodKey, PathBuf> = known
            .into_iter()
            .filter_map(|p| Some((p.key.clone(), hints.get(&p.key)?.clone())))
            .collect();
        out.extend(self.scan.locate(&unknown));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_netns_is_never_a_candidate() {
        let scan = NodeScan::default();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        for c in scan.candidates() {
            if let Ok(m) = std::fs::metadata(&c) {
                assert_ne!(
                    (m.dev(), m.ino()),
                    (own.dev(), own.ino()),
                    "{} is the node's netns",
                    c.display()
                );
            }
        }
    }
}
