//! CPU accounting for the benchmark harness: where the CPU time of a run
//! goes. Sources, each read as nanoseconds so samples can be subtracted:
//! cgroups' `cpu.stat` (every process of the simulated nodes, kernel work in
//! their context included), a process's tasks (`/proc/PID/task/*/schedstat`,
//! nanosecond run time of every thread), and one CPU's softirq time from
//! `/proc/stat` (USER_HZ ticks, so coarse: 10 ms).

use std::path::{Path, PathBuf};

/// Something whose CPU time can be sampled.
#[derive(Debug, Clone)]
pub enum CpuSource {
    /// The sum of `usage_usec` of cgroup v2 directories.
    Cgroups(Vec<PathBuf>),
    /// All threads of a process.
    Process(u32),
    /// Softirq time of one CPU (system-wide, every process).
    Softirq(usize),
}

/// One reading of a [`CpuSource`], in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample(pub u64);

impl CpuSample {
    /// Nanoseconds used since `earlier` (0 if the counter went backwards,
    /// e.g. a process that restarted).
    pub fn since(self, earlier: CpuSample) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

fn user_hz() -> u64 {
    // SAFETY: plain libc query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// A cgroup's CPU time (`usage_usec` of its `cpu.stat`) in nanoseconds; 0
/// when it cannot be read.
fn cgroup_usage_ns(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map_or(0, |us| us * 1000)
}

impl CpuSource {
    /// Reads the source; a source that vanished reads as 0.
    pub fn sample(&self) -> CpuSample {
        CpuSample(match self {
            CpuSource::Cgroups(dirs) => dirs.iter().map(|d| cgroup_usage_ns(d)).sum(),
            CpuSource::Process(pid) => {
                let dir = PathBuf::from(format!("/proc/{pid}/task"));
                std::fs::read_dir(dir)
                    .map(|it| {
                        it.flatten()
                            .filter_map(|t| {
                                std::fs::read_to_string(t.path().join("schedstat")).ok()
                            })
                            .filter_map(|s| {
                                s.split_whitespace()
                                    .next()
                                    .and_then(|v| v.parse::<u64>().ok())
                            })
                            .sum()
                    })
                    .unwrap_or(0)
            }
            CpuSource::Softirq(cpu) => {
                let name = format!("cpu{cpu}");
                std::fs::read_to_string("/proc/stat")
                    .ok()
                    .and_then(|s| {
                        s.lines().find_map(|l| {
                            let mut f = l.split_whitespace();
                            (f.next() == Some(name.as_str()))
                                .then(|| f.nth(6).and_then(|v| v.parse::<u64>().ok()))
                                .flatten()
                        })
                    })
                    .map_or(0, |ticks| ticks * 1_000_000_000 / user_hz())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_uses_cpu() {
        let src = CpuSource::Process(std::process::id());
        let a = src.sample();
        // Busy for 100 ms of wall time (a fixed loop finishes within one
        // clock tick when optimised): several ticks of CPU time.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(src.sample().since(a) > 0);
    }

    #[test]
    fn softirq_of_cpu0_reads() {
        // Counter exists on every Linux machine; the value may be 0.
        let _ = CpuSource::Softirq(0).sample();
        assert_eq!(CpuSource::Softirq(100_000).sample(), CpuSample(0));
    }
}
