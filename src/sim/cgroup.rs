//! A private cgroup v2 child that the test process lives in while it runs.

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
        let root = crate::cgroup::cgroup2_mount()?;
        let path = root.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let cg = Self {
            parent_procs: root.join("cgroup.procs"),
            path,
        };
        fs::write(cg.path.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving into cgroup {}", cg.path.display()))?;
        Ok(cg)
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

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let me = std::process::id();
        for pid in self.pids() {
            if pid != me {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = fs::write(&self.parent_procs, me.to_string());
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("sim: could not remove cgroup {}", self.path.display());
    }
}
