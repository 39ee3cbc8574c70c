//! The pin root: where meshlane keeps its maps, programs and links in bpffs,
//! and the layout version that guards it.
//!
//! ```text
//! <root>/v<N>/maps/<map name>          every shared map (`MapId`)
//! <root>/v<N>/links/<prog name>        node-wide attachments (cgroup, sockhash; `LinkId`)
//! <root>/v<N>/links/pods/<cookie>      per-pod attachments (sk_lookup in its netns)
//! <root>/v<N>/cni/<container id>/<ifname>/<cookie>   CNI attachments (directories)
//! ```
//! The pods directory is also the registry's lock: whoever adds, removes or
//! sweeps pods holds a flock on it ([`PinLayout::lock_registry`]).
//! `N` is `MESHLANE_LAYOUT_VERSION` from bpf/meshlane.h: a pin root that holds
//! another version belongs to an incompatible build and is never touched.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::names::{LinkId, MapId};

/// Kernel-visible layout version; must equal MESHLANE_LAYOUT_VERSION in
/// bpf/meshlane.h (checked against the object's .rodata at load).
pub const LAYOUT_VERSION: u32 = 8;

/// Default pin root on a node.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/meshlane";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("pin root {root}: {dir} is not on a bpf filesystem (use a path under a bpffs mount, e.g. /sys/fs/bpf; mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { root: PathBuf, dir: PathBuf },
    #[error("pin root {root} holds layout {found}, this build uses v{LAYOUT_VERSION}: run the matching `meshlane uninstall` first")]
    OtherVersion { root: PathBuf, found: String },
    #[error("pin root {0:?} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("meshlane is not installed at {0}: start `meshlane agent` first")]
    NotInstalled(PathBuf),
    #[error("pin root {0} is in use by another meshlane agent or install (one agent per pin root): stop it first, or use another --pin-root")]
    Busy(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive hold on a pin root (see [`PinLayout::lock`]).
#[derive(Debug)]
pub struct PinRootLock {
    _dir: std::fs::File,
}

/// An exclusive hold on the pod registry (see [`PinLayout::lock_registry`]).
#[derive(Debug)]
pub struct RegistryLock {
    _dir: std::fs::File,
}

/// Paths of one pin root at this build's layout version.
#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    /// Where the shared map `id` is pinned.
    pub fn map(&self, id: MapId) -> PathBuf {
        self.maps_dir().join(id.pin_name())
    }

    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join("links")
    }

    /// Where the node-wide link `id` is pinned.
    pub fn link(&self, id: LinkId) -> PathBuf {
        self.links_dir().join(id.pin_name())
    }

    pub fn pod_links_dir(&self) -> PathBuf {
        self.links_dir().join("pods")
    }

    pub fn pod_link(&self, netns_cookie: u64) -> PathBuf {
        self.pod_links_dir().join(netns_cookie.to_string())
    }

    /// The CNI attachments: `<cni>/<container id>/<ifname>/<netns cookie>`,
    /// empty directories (see `cni::attach`).
    pub fn cni_dir(&self) -> PathBuf {
        self.version_dir().join("cni")
    }

    /// Pins are shared by every meshlane process: the path must not depend
    /// on the working directory.
    fn check_absolute(&self) -> Result<(), LayoutError> {
        if self.root.is_relative() {
            return Err(LayoutError::NotAbsolute(self.root.clone()));
        }
        Ok(())
    }

    /// Takes the pin root for this process (an exclusive, non-blocking
    /// flock on its directory, created if missing): two installs at once
    /// would roll back each other's pins. Released when the guard drops or
    /// the process dies.
    pub fn lock(&self) -> Result<PinRootLock, LayoutError> {
        use std::os::fd::AsRawFd;
        self.check_bpffs()?;
        let io = |source| LayoutError::Io {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let dir = std::fs::File::open(&self.root).map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                LayoutError::Busy(self.root.clone())
            } else {
                io(e)
            });
        }
        Ok(PinRootLock { _dir: dir })
    }

    /// Takes the pod registry (a blocking flock on the pods directory), so
    /// that an add, a remove and the agent's sweep never interleave. A
    /// process killed while holding it releases it with its descriptors.
    pub fn lock_registry(&self) -> Result<RegistryLock, LayoutError> {
        self.lock_registry_with(libc::LOCK_EX)?
            .ok_or_else(|| LayoutError::Busy(self.pod_links_dir()))
    }

    /// [`Self::lock_registry`] without waiting: None while someone holds it.
    pub fn try_lock_registry(&self) -> Result<Option<RegistryLock>, LayoutError> {
        self.lock_registry_with(libc::LOCK_EX | libc::LOCK_NB)
    }

    fn lock_registry_with(&self, op: i32) -> Result<Option<RegistryLock>, LayoutError> {
        use std::os::fd::AsRawFd;
        let dir = self.pod_links_dir();
        let io = |source| LayoutError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let f = std::fs::File::open(&dir).map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(io(e));
        }
        Ok(Some(RegistryLock { _dir: f }))
    }

    /// The directory that holds the pin root must be bpffs.
    pub fn check_bpffs(&self) -> Result<(), LayoutError> {
        self.check_absolute()?;
        let mut probe = self.root.clone();
        while !probe.exists() {
            match probe.parent() {
                Some(p) => probe = p.to_path_buf(),
                None => break,
            }
        }
        let st = nix::sys::statfs::statfs(&probe).map_err(|e| LayoutError::Io {
            path: probe.clone(),
            source: e.into(),
        })?;
        if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(LayoutError::NotBpffs {
                root: self.root.clone(),
                dir: probe,
            });
        }
        Ok(())
    }

    /// Refuses a pin root that holds any other layout version.
    pub fn check_version(&self) -> Result<(), LayoutError> {
        self.check_absolute()?;
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        let mine = format!("v{LAYOUT_VERSION}");
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != mine {
                return Err(LayoutError::OtherVersion {
                    root: self.root.clone(),
                    found: name,
                });
            }
        }
        Ok(())
    }

    /// The installed layout must exist (for commands that need the agent).
    pub fn require_installed(&self) -> Result<(), LayoutError> {
        self.check_version()?;
        if !self.maps_dir().is_dir() {
            return Err(LayoutError::NotInstalled(self.root.clone()));
        }
        Ok(())
    }

    pub fn create_dirs(&self) -> Result<(), LayoutError> {
        for d in [self.maps_dir(), self.pod_links_dir()] {
            fs::create_dir_all(&d).map_err(|e| LayoutError::Io {
                path: d.clone(),
                source: e,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pin root of the layout before this one (no `ml_dest_profile`, no
    /// message count in `ml_sock_state`) is refused, never reused: an agent
    /// of v8 never reads or writes a v7 pin root.
    #[test]
    fn pin_root_of_the_previous_layout_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let previous = format!("v{}", LAYOUT_VERSION - 1);
        fs::create_dir(dir.path().join(&previous)).expect("making the old layout");
        match PinLayout::new(dir.path()).check_version() {
            Err(LayoutError::OtherVersion { found, .. }) => assert_eq!(found, previous),
            other => panic!("{previous} was not refused: {other:?}"),
        }
    }
}
