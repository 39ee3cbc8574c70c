//! Ctrl-C / SIGTERM: set a flag that every loop of the harness checks, so a
//! run unwinds through its destructors and removes everything it made.
//! SIGPIPE: ignored while a run lasts ([`SigpipeIgnored`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the handler once per process (later calls are no-ops).
pub fn install() {
    INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                // Second Ctrl-C while cleaning up: say so, keep cleaning.
                eprintln!("\nmeshlane bench: still cleaning up");
            }
        })
        .is_ok()
    });
}

pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// While alive, SIGPIPE is ignored (the disposition before is restored on
/// drop). A run's own sockets must fail a write with EPIPE instead of
/// killing the harness before it cleans up: the control plane's ADS
/// streams to sidecars that exit, the in-process agent's stream, load
/// connections. The binary's `main` sets the default disposition (a Unix
/// filter's, for `| head`), which the report printed after the run keeps.
pub struct SigpipeIgnored(libc::sighandler_t);

impl SigpipeIgnored {
    pub fn new() -> Self {
        // SAFETY: changes a process-wide disposition; no handler code runs.
        Self(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) })
    }
}

impl Default for SigpipeIgnored {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SigpipeIgnored {
    fn drop(&mut self) {
        if self.0 != libc::SIG_ERR {
            // SAFETY: as in `new`, restoring what was there.
            unsafe {
                libc::signal(libc::SIGPIPE, self.0);
            }
        }
    }
}

/// Err(Interrupted) once a stop was requested.
pub fn check() -> super::error::Result<()> {
    if requested() {
        Err(super::BenchError::Interrupted)
    } else {
        Ok(())
    }
}
