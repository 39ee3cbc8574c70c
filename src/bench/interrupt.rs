//! Ctrl-C / SIGTERM: set a flag that every loop of the harness checks, so a
//! run unwinds through its destructors and removes everything it made.

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

/// Err(Interrupted) once a stop was requested.
pub fn check() -> super::error::Result<()> {
    if requested() {
        Err(super::BenchError::Interrupted)
    } else {
        Ok(())
    }
}
