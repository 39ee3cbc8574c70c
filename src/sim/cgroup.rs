//! A private cgroup v2 child that the test process lives in while it runs,
//! or one beside it that the process visits (the benchmark's modes without
//! meshlane: a sibling, so no program attached to the node's cgroup runs
//! for their sockets).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct TestCgroup {
    path: PathBuf,
    parent_procs: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/<name>` and moves this process into it.
    pub fn enter(name: &str) -> Result<Self> {
        let cg = Self::create(name)?;
        move_into(&cg.path)?;
        Ok(cg)
    }

    /// Creates `<cgroup2 mount>/<name>`; this process stays where it is.
    pub fn create(name: &str) -> Result<Self> {
        let root = crate::cgroup::cgroup2_mount()?;
        let path = root.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self {
            parent_procs: root.join("cgroup.procs"),
            path,
        })
    }

    /// Moves this process (every thread; what it spawns meanwhile is born
    /// here) into this cgroup until the guard drops, then back to `back`.
    pub fn visit(&self, back: &Path) -> Result<Visit> {
        move_into(&self.path)?;
        Ok(Visit { back: back.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// PIDs in the cgroup (ours included).
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

fn move_into(dir: &Path) -> Result<()> {
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("moving into cgroup {}", dir.display()))
}

/// This process inside a cgroup it visits ([`TestCgroup::visit`]).
pub struct Visit {
    back: PathBuf,
}

impl Drop for Visit {
    fn drop(&mut self) {
        if let Err(e) = move_into(&self.back) {
            eprintln!("sim: {e:#}");
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let me = std::process::id();
        let pids = self.pids();
        for &pid in &pids {
            if pid != me {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if pids.contains(&me) {
            let _ = fs::write(&self.parent_procs, me.to_string());
        }
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("sim: could not remove cgroup {}", self.path.display());
    }
}
