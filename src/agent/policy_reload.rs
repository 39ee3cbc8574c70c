//! `bypass.policies` reloaded without a restart: on SIGHUP the agent
//! re-reads its config file, and if the whole file is valid and the
//! policies differ, every pod is decided again under the new ones
//! ([`LiveDecisions::set_policy`]). A file that does not read, parse or
//! validate changes nothing: one warning line names what is wrong and the
//! old policies stay. Only the policies are reloaded; every other field
//! needs a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{AgentConfig, ConfigError};
use crate::xds::decide::BypassPolicy;
use crate::xds::live::LiveDecisions;

/// What a reload found.
#[derive(Debug, PartialEq)]
pub enum Reloaded {
    Unchanged,
    Changed(BypassPolicy),
}

/// Reads `path` and returns its policies if they differ from `current`
/// (sync core: no signal, no agent state).
pub fn read_policies(path: &Path, current: &BypassPolicy) -> Result<Reloaded, ConfigError> {
    let cfg = AgentConfig::from_file(path)?;
    cfg.validate()?;
    let p = cfg.bypass.policies;
    Ok(if p == *current {
        Reloaded::Unchanged
    } else {
        Reloaded::Changed(p)
    })
}

/// Waits for SIGHUP and reloads the policies from `path`, until `stop`.
pub async fn run(path: PathBuf, live: Arc<LiveDecisions>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: bypass.policies reload only with a restart");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match read_policies(&path, &live.policy()) {
            Ok(Reloaded::Unchanged) => {
                tracing::info!(file = %path.display(), "SIGHUP: bypass.policies unchanged")
            }
            Ok(Reloaded::Changed(p)) => {
                tracing::info!(file = %path.display(), policies = ?p, "SIGHUP: bypass.policies reloaded; every pod is decided again");
                live.set_policy(p);
            }
            Err(e) => {
                tracing::warn!("SIGHUP: bypass.policies not reloaded, the old ones stay: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_reloads_and_a_bad_one_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let current = BypassPolicy::default();
        std::fs::write(&path, "bypass:\n  enabled: true\n").unwrap();
        assert_eq!(read_policies(&path, &current).unwrap(), Reloaded::Unchanged);
        std::fs::write(
            &path,
            "bypass:\n  enabled: true\n  policies:\n    bypassPassthrough: true\n",
        )
        .unwrap();
        let Reloaded::Changed(p) = read_policies(&path, &current).unwrap() else {
            panic!("changed policies not seen");
        };
        assert!(p.bypass_passthrough);
        std::fs::write(&path, "bypass:\n  policies:\n    bypassEverything: true\n").unwrap();
        let e = read_policies(&path, &current).unwrap_err().to_string();
        assert!(e.contains("bypassEverything"), "{e}");
        std::fs::write(&path, "pinRoot: relative\n").unwrap();
        let e = read_policies(&path, &current).unwrap_err().to_string();
        assert!(e.contains("pinRoot"), "{e}");
        let e = read_policies(&dir.path().join("gone.yaml"), &current).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
