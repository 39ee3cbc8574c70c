//! Finding and checking the cgroup v2 hierarchy the programs attach to.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (nothing of type cgroup2 in /proc/mounts); mount one or pass --cgroup")]
    NoCgroup2,
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts
/// (/sys/fs/cgroup on a unified node, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|e| CgroupError::Io {
        path: "/proc/mounts".into(),
        source: e,
    })?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Checks that `path` is a directory of a cgroup v2 hierarchy.
pub fn check_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| CgroupError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
