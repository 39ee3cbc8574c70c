//! What a run measures: modes (data paths), workloads, placements, and the
//! knobs of the method (rounds, step length, rate, connections, seed, CPU
//! pinning). Parsing and validation live here so every entry point (CLI,
//! `cargo bench`, tests) rejects bad input with the same one-line message.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::error::{BenchError, Result};
use crate::sim::SidecarProxy;

/// A data path under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// No mesh: the app talks to the server pod directly.
    Direct,
    /// Istio's istio-init rules (cni-plugin_basic golden) + sidecars.
    Iptables,
    /// Same iptables + sidecars, pods registered in accelerate mode (splicing).
    Accelerate,
    /// Pods registered in intercept mode: eBPF interception + splicing.
    Intercept,
    /// Issue 3's middle variant: eBPF interception with splicing detached
    /// (a side install whose sk_msg link is unpinned). Only the one-sidecar
    /// and same-node RTT and connection-rate cells.
    InterceptNoSplice,
    /// Kernel bypass: the client pod is meshed (intercept, its sidecar
    /// running) and its service map sends every connection to a service
    /// VIP straight to the plain (unmeshed) server pod; the sidecar is
    /// never on the path.
    Bypass,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Iptables,
        Mode::Accelerate,
        Mode::Intercept,
        Mode::InterceptNoSplice,
        Mode::Bypass,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::Accelerate => "accelerate",
            Mode::Intercept => "intercept",
            Mode::InterceptNoSplice => "intercept-nosplice",
            Mode::Bypass => "bypass",
        }
    }

    /// Why a mode cannot run in this build, if it cannot (every mode can
    /// now; kept for modes added before they are built).
    pub fn unavailable(self) -> Option<&'static str> {
        None
    }

    /// Pods of this mode run sidecars.
    pub fn has_sidecars(self) -> bool {
        !matches!(self, Mode::Direct)
    }

    /// The world without meshlane: no pod registered, and the mode's
    /// processes live in a cgroup beside the node's, so none of meshlane's
    /// programs runs for their sockets (on a node they would run, find no
    /// registered pod and return: a cost of having meshlane installed that
    /// the baseline must not pay).
    pub fn without_meshlane(self) -> bool {
        matches!(self, Mode::Direct | Mode::Iptables)
    }

    /// The mode's server pods are plain backends (no sidecar, not
    /// registered): only its client is meshed.
    pub fn plain_servers(self) -> bool {
        matches!(self, Mode::Bypass)
    }

    /// Whether this mode runs the (workload, placement) cell.
    pub fn runs(self, w: Workload, p: Placement) -> bool {
        match self {
            Mode::InterceptNoSplice => w.one_sidecar() && p != Placement::CrossNode,
            _ => true,
        }
    }
}

/// A traffic pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// TCP ping-pong on one connection, 64 B / 1 KiB / 16 KiB messages.
    Rtt64,
    Rtt1k,
    Rtt16k,
    /// connect + 64 B exchange + close, back to back.
    Connect,
    /// HTTP/1.1 POST 1 KiB at a fixed rate (fortio-like).
    Http,
    /// HTTP/1.1 closed loop: the most requests per second.
    HttpMax,
    /// Bulk transfer, one and four streams.
    Bulk1,
    Bulk4,
    /// The fixed-rate HTTP workload at 2, 16 and 64 connections (Istio
    /// publishes its sidecar overhead this way), whatever --connections says.
    Http2,
    Http16,
    Http64,
    /// Fixed-rate HTTP with a new connection per request (no keep-alive):
    /// connect, request, response, close.
    HttpClose,
}

impl Workload {
    pub const ALL: [Workload; 12] = [
        Workload::Rtt64,
        Workload::Rtt1k,
        Workload::Rtt16k,
        Workload::Connect,
        Workload::Http,
        Workload::HttpMax,
        Workload::Bulk1,
        Workload::Bulk4,
        Workload::Http2,
        Workload::Http16,
        Workload::Http64,
        Workload::HttpClose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt64 => "rtt-64",
            Workload::Rtt1k => "rtt-1k",
            Workload::Rtt16k => "rtt-16k",
            Workload::Connect => "connect",
            Workload::Http => "http",
            Workload::HttpMax => "http-max",
            Workload::Bulk1 => "bulk-1",
            Workload::Bulk4 => "bulk-4",
            Workload::Http2 => "http-2",
            Workload::Http16 => "http-16",
            Workload::Http64 => "http-64",
            Workload::HttpClose => "http-close",
        }
    }

    /// The HTTP workloads (the http server, the HTTP sidecar set).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Workload::Http
                | Workload::HttpMax
                | Workload::Http2
                | Workload::Http16
                | Workload::Http64
                | Workload::HttpClose
        )
    }

    /// Fixed-rate HTTP workloads: latency from the intended send time.
    pub fn fixed_rate(self) -> bool {
        self.is_http() && self != Workload::HttpMax
    }

    /// Connections of a fixed-rate HTTP workload that sets its own.
    pub fn own_connections(self) -> Option<u32> {
        match self {
            Workload::Http2 => Some(2),
            Workload::Http16 => Some(16),
            Workload::Http64 => Some(64),
            _ => None,
        }
    }

    /// Steps whose CPU per 1,000 requests is reported.
    pub fn cpu_accounted(self) -> bool {
        self.is_http()
    }

    /// Steps whose BPF run time per operation (per new connection) is
    /// reported, from the kernel's run-time statistics.
    pub fn hook_costed(self) -> bool {
        matches!(self, Workload::Connect | Workload::HttpClose)
    }

    /// Message size of the ping-pong workloads.
    pub fn rtt_size(self) -> Option<usize> {
        match self {
            Workload::Rtt64 => Some(64),
            Workload::Rtt1k => Some(1024),
            Workload::Rtt16k => Some(16 * 1024),
            _ => None,
        }
    }

    /// Length of one step relative to the base step.
    pub fn step_factor(self) -> u32 {
        if self.fixed_rate() {
            3
        } else {
            1
        }
    }

    /// Whether the one-sidecar placement (issue 3) runs this workload.
    pub fn one_sidecar(self) -> bool {
        matches!(self, Workload::Rtt64 | Workload::Rtt1k | Workload::Connect)
    }
}

/// Where the server is relative to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placement {
    /// Client and server pods on one node, a sidecar in each.
    SameNode,
    /// Server pod on the second node (other bridge, over the veth wire).
    CrossNode,
    /// Same node, a sidecar only in the client pod (issue 3's benchmark).
    OneSidecar,
}

impl Placement {
    pub const ALL: [Placement; 3] = [
        Placement::SameNode,
        Placement::CrossNode,
        Placement::OneSidecar,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::SameNode => "same-node",
            Placement::CrossNode => "cross-node",
            Placement::OneSidecar => "one-sidecar",
        }
    }
}

macro_rules! parse_by_name {
    ($t:ty, $what:literal) => {
        impl FromStr for $t {
            type Err = BenchError;
            fn from_str(s: &str) -> Result<Self> {
                let s = s.trim();
                <$t>::ALL
                    .iter()
                    .copied()
                    .find(|x| x.name() == s)
                    .ok_or_else(|| {
                        let known: Vec<&str> = <$t>::ALL.iter().map(|x| x.name()).collect();
                        BenchError::Usage(format!(
                            concat!("unknown ", $what, " {:?} (known: {})"),
                            s,
                            known.join(", ")
                        ))
                    })
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
parse_by_name!(Mode, "mode");
parse_by_name!(Workload, "workload");
parse_by_name!(Placement, "placement");

/// Parses a comma-separated list; empty or duplicate entries are errors.
pub fn parse_list<T: FromStr<Err = BenchError> + PartialEq + fmt::Display>(
    s: &str,
    what: &str,
) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for item in s.split(',') {
        if item.trim().is_empty() {
            return Err(BenchError::Usage(format!("empty entry in --{what} {s:?}")));
        }
        let v: T = item.parse()?;
        if out.contains(&v) {
            return Err(BenchError::Usage(format!(
                "{v} is listed twice in --{what}"
            )));
        }
        out.push(v);
    }
    Ok(out)
}

/// Most connections the HTTP workloads open.
pub const MAX_CONNECTIONS: u32 = 256;
/// Pacing ceiling per connection: one request every 50 µs. Timer wake-ups
/// on this kind of VM are 50-100 µs apart at best, so a faster schedule
/// could not be kept and the latency numbers would be meaningless.
pub const MAX_QPS_PER_CONNECTION: u32 = 20_000;
/// Pacing ceiling for the whole run, per CPU of the machine.
pub const MAX_QPS_PER_CPU: u32 = 25_000;

/// Everything a run needs.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub modes: Vec<Mode>,
    pub workloads: Vec<Workload>,
    pub placements: Vec<Placement>,
    /// Measured rounds (after the warm-up rounds).
    pub rounds: u32,
    pub warmup_rounds: u32,
    /// Costing rounds, after the measured ones: the steps whose BPF run
    /// time is reported (connection and HTTP workloads) run again with the
    /// kernel's BPF statistics on, which cost every program run two clock
    /// reads. The measured rounds run with them off, as a node does; only
    /// the costing rounds give the BPF columns. 0: no BPF costs reported.
    pub cost_rounds: u32,
    /// Base length of one measurement step.
    #[serde(serialize_with = "ser_secs")]
    pub step: Duration,
    /// Fixed rate of the `http` workload (requests/s, all connections).
    pub qps: u32,
    /// Connections of the HTTP workloads.
    pub connections: u32,
    pub seed: u64,
    /// HTTP workloads go through sidecars in http mode (L7, as
    /// Envoy's HTTP connection manager would); false: the tcp-mode sidecars.
    pub http_l7: bool,
    /// The sidecar proxy: Envoy where installed, else HAProxy.
    pub sidecar: SidecarProxy,
    /// CPU every process of the flow is pinned to (None: no pinning).
    pub cpu: Option<usize>,
    pub out: PathBuf,
    pub check: bool,
    pub quick: bool,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Options {
    /// The full run (`cargo bench --bench mesh`).
    pub fn full() -> Self {
        Self {
            modes: Mode::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            placements: Placement::ALL.to_vec(),
            rounds: 5,
            warmup_rounds: 1,
            cost_rounds: 2,
            step: Duration::from_millis(1000),
            qps: 1000,
            connections: 4,
            seed: 0x6d65_7368,
            http_l7: false,
            sidecar: SidecarProxy::detect(),
            cpu: Some(online_cpus().saturating_sub(1)),
            out: PathBuf::from("target/meshlane-bench"),
            check: false,
            quick: false,
        }
    }

    /// About a minute: same-node RTT, connection rate and fixed-rate HTTP.
    pub fn quick() -> Self {
        Self {
            modes: vec![
                Mode::Direct,
                Mode::Iptables,
                Mode::Accelerate,
                Mode::Intercept,
                Mode::Bypass,
            ],
            workloads: vec![
                Workload::Rtt64,
                Workload::Rtt1k,
                Workload::Connect,
                Workload::Http,
            ],
            placements: vec![Placement::SameNode],
            step: Duration::from_millis(300),
            cost_rounds: 1,
            quick: true,
            ..Self::full()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(BenchError::Usage(m));
        if self.modes.is_empty() {
            return usage("--modes lists no mode".into());
        }
        if self.workloads.is_empty() {
            return usage("--workloads lists no workload".into());
        }
        if self.placements.is_empty() {
            return usage("--placements lists no placement".into());
        }
        if self.rounds == 0 {
            return usage("--rounds must be at least 1".into());
        }
        if self.rounds > 1000 {
            return usage(format!("--rounds {} is more than 1000", self.rounds));
        }
        if self.cost_rounds > 100 {
            return usage(format!(
                "--cost-rounds {} is more than 100",
                self.cost_rounds
            ));
        }
        if self.step < Duration::from_millis(50) || self.step > Duration::from_secs(600) {
            return usage("--step-ms must be between 50 and 600000".into());
        }
        if self.connections == 0 {
            return usage("--connections must be at least 1".into());
        }
        if self.connections > MAX_CONNECTIONS {
            return usage(format!(
                "--connections {} is more than {MAX_CONNECTIONS}",
                self.connections
            ));
        }
        if self.qps == 0 {
            return usage("--qps must be at least 1".into());
        }
        let cpus = online_cpus() as u64;
        let ceiling = u64::from(MAX_QPS_PER_CPU) * cpus;
        if u64::from(self.qps) > ceiling {
            return usage(format!(
                "--qps {} is too high for this machine: at most {ceiling} requests/s can be paced on {cpus} CPUs",
                self.qps
            ));
        }
        // The fixed-rate workload with the fewest connections paces fastest.
        let fewest = self
            .workloads
            .iter()
            .filter(|w| w.fixed_rate())
            .map(|w| self.connections_of(*w))
            .min()
            .unwrap_or(self.connections);
        let per_conn = self.qps.div_ceil(fewest);
        if per_conn > MAX_QPS_PER_CONNECTION {
            return usage(format!(
                "--qps {} over {fewest} connections is {per_conn} requests/s per connection, more than the {MAX_QPS_PER_CONNECTION} this machine can pace; add connections",
                self.qps
            ));
        }
        if let Some(cpu) = self.cpu {
            if cpu >= online_cpus() {
                return usage(format!(
                    "--cpu {cpu}: this machine has CPUs 0-{}",
                    online_cpus() - 1
                ));
            }
        }
        if self.check
            && !(self.modes.contains(&Mode::Iptables)
                && (self.modes.contains(&Mode::Intercept)
                    || self.modes.contains(&Mode::Accelerate)))
        {
            return usage(
                "--check compares meshlane with iptables: list iptables and intercept or accelerate in --modes"
                    .into(),
            );
        }
        if self.check
            && !self.workloads.iter().any(|w| {
                matches!(
                    w,
                    Workload::Rtt64 | Workload::Connect | Workload::Bulk1 | Workload::Bulk4
                )
            })
        {
            return usage(
                "--check needs a checked workload: rtt-64 (same-node p50), connect, bulk-1 or bulk-4"
                    .into(),
            );
        }
        Ok(())
    }

    /// Connections a fixed-rate or closed-loop HTTP workload opens.
    pub fn connections_of(&self, w: Workload) -> u32 {
        w.own_connections().unwrap_or(self.connections)
    }

    /// Modes that actually run (available ones), in the order given.
    pub fn runnable_modes(&self) -> Vec<Mode> {
        self.modes
            .iter()
            .copied()
            .filter(|m| m.unavailable().is_none())
            .collect()
    }

    /// The (workload, placement) steps of one round, in order.
    pub fn cells(&self) -> Vec<(Workload, Placement)> {
        let mut v = Vec::new();
        for &w in &self.workloads {
            for &p in &self.placements {
                if p != Placement::OneSidecar || w.one_sidecar() {
                    v.push((w, p));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_unknown() {
        let m: Vec<Mode> = parse_list("direct,intercept", "modes").unwrap();
        assert_eq!(m, vec![Mode::Direct, Mode::Intercept]);
        let e = parse_list::<Mode>("direct,nope", "modes").unwrap_err();
        assert!(e.to_string().contains("unknown mode \"nope\""), "{e}");
        assert!(parse_list::<Mode>("direct,direct", "modes").is_err());
        assert!(parse_list::<Workload>("rtt-64,", "workloads").is_err());
    }

    #[test]
    fn validation() {
        assert!(Options::full().validate().is_ok());
        assert!(Options::quick().validate().is_ok());
        let o = Options {
            connections: 0,
            ..Options::quick()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connections"));
        let o = Options {
            qps: 100_000_000,
            ..Options::quick()
        };
        assert!(o.validate().unwrap_err().to_string().contains("too high"));
        let o = Options {
            qps: 30_000,
            connections: 1,
            ..Options::quick()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("per connection"));
    }

    #[test]
    fn one_sidecar_only_for_issue3_workloads() {
        let cells = Options::full().cells();
        assert!(cells.contains(&(Workload::Connect, Placement::OneSidecar)));
        assert!(!cells.contains(&(Workload::Bulk1, Placement::OneSidecar)));
    }
}
