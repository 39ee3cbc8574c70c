//! The harness's one error type: every failure reaches the user as one line.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    /// Bad arguments: the message says which and what is allowed.
    #[error("{0}")]
    Usage(String),
    /// The simulated node, a pod, a sidecar or a server could not be made.
    #[error("setting up {what}: {detail}")]
    Setup { what: String, detail: String },
    /// A measurement failed (connection refused, stalled, wrong reply).
    #[error("{what}: {detail}")]
    Workload { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Ctrl-C or SIGTERM; everything made so far has been removed.
    #[error("interrupted; everything the run made has been removed")]
    Interrupted,
    /// `--check` found a regression.
    #[error("check failed: {0}")]
    Check(String),
}

impl BenchError {
    pub fn setup(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        BenchError::Setup {
            what: what.into(),
            detail: format!("{e:#}"),
        }
    }

    pub fn setup_anyhow(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> Self {
        let what = what.into();
        move |e| BenchError::Setup {
            what,
            detail: format!("{e:#}"),
        }
    }

    pub fn workload(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        BenchError::Workload {
            what: what.into(),
            detail: e.to_string(),
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
