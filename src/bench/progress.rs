//! A progress bar with ETA on stderr. On a terminal it redraws one line;
//! otherwise (logs, CI, tests) it prints a line at every 10 %.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    total: u64,
    done: u64,
    start: Instant,
    tty: bool,
    last_decile: u64,
    quiet: bool,
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        Self {
            total: total.max(1),
            done: 0,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_decile: 0,
            quiet,
        }
    }

    /// Marks the start of step `label` (the previous one is done).
    pub fn step(&mut self, label: &str) {
        if self.quiet {
            return;
        }
        let frac = self.done as f64 / self.total as f64;
        let elapsed = self.start.elapsed();
        let eta = if self.done == 0 {
            "?".to_string()
        } else {
            hms(elapsed.mul_f64((1.0 - frac) / frac))
        };
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        let line = format!(
            "[{}{}] {:>3}% {}/{} elapsed {} eta {} {}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            (frac * 100.0) as u32,
            self.done,
            self.total,
            hms(elapsed),
            eta,
            label
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            let decile = self.done * 10 / self.total;
            if self.done == 0 || decile > self.last_decile {
                self.last_decile = decile;
                let _ = writeln!(err, "{line}");
            }
        }
        self.done += 1;
    }

    pub fn finish(&mut self) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let msg = format!("done: {} steps in {}", self.done, hms(self.start.elapsed()));
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K{msg}");
        } else {
            let _ = writeln!(err, "{msg}");
        }
    }

    /// A message that does not break the bar.
    pub fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K{msg}");
        } else {
            let _ = writeln!(err, "{msg}");
        }
    }
}
