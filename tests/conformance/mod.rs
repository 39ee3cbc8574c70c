//! Conformance suite helpers for iptables-free interception (issue 3):
//! every case runs twice on one simulated node, once with the golden
//! istio-iptables rules in the pods (the reference) and once with meshlane
//! intercept mode, and the two runs must look the same from outside the
//! kernel: sidecar hops, the server's view of its peer and local address,
//! the app's getpeername.
//!
//! Socket I/O helpers and the environment check come from `tests/common`: a
//! test that uses this module declares `mod common;` next to it.
#![allow(dead_code)]

pub mod app;
pub mod dns;
pub mod golden;
pub mod native_sidecar;
pub mod world;

use std::process::{Command, Output};

use meshlane::sim::{Node, NodeOptions};

use crate::common::require_root_env;
use world::{Interception, Meshing, Observation, PodName, Probe, SidecarKind, World};

/// `meshlane --pin-root <node's pin root> <args...>`, run to completion.
pub fn cli(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshlane"))
        .arg("--pin-root")
        .arg(node.layout.root())
        .args(args)
        .output()
        .expect("running meshlane")
}

/// `cli`, failing with its stderr unless it exits 0; returns stdout.
pub fn cli_ok(node: &Node, args: &[&str]) -> String {
    let out = cli(node, args);
    assert!(
        out.status.success(),
        "meshlane {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A simulated node (pods with IPv6 addresses too when `ipv6`); fails when
/// the machine cannot run root tests.
pub fn node(ipv6: bool) -> Node {
    require_root_env();
    Node::new(NodeOptions {
        ipv6,
        ..Default::default()
    })
    .expect("simulated node")
}

/// A probe and what the reference must show for it.
pub struct Expect {
    pub probe: Probe,
    /// Sidecar frontends passed, e.g. ["A.outbound", "B.inbound"].
    pub hops: &'static [&'static str],
    /// Start of the outcome text, e.g. "server peer 127.0.0.6".
    pub outcome: &'static str,
}

pub struct Case {
    pub name: &'static str,
    pub ipv6: bool,
    pub a: Option<Meshing>,
    pub b: Option<Meshing>,
    /// App servers to start: (pod, port).
    pub servers: Vec<(PodName, u16)>,
    pub expect: Vec<Expect>,
}

fn run_once(
    node: &mut Node,
    case: &Case,
    how: Interception,
    mode: SidecarKind,
) -> Vec<Observation> {
    let counters = ["messages_spliced", "connects_redirected", "inbound_steered"];
    let before: Vec<u64> = counters.iter().map(|c| node.counter(c)).collect();
    let mut w = World::new(node, how, case.a.as_ref(), case.b.as_ref(), mode);
    for (pod, port) in &case.servers {
        w.serve(*pod, *port);
    }
    // The pods' netfilter state: the golden rules, or nothing at all.
    for (pod, meshed) in [(&w.a, case.a.is_some()), (&w.b, case.b.is_some())] {
        let rules = golden::ruleset(pod).expect("reading the pod's rules");
        match how {
            Interception::Iptables if meshed => assert!(
                golden::has_nat(&rules),
                "{}: reference pod {} has no nat rules:\n{rules}",
                case.name,
                pod.name
            ),
            Interception::Meshlane => assert!(
                !golden::has_nat(&rules),
                "{}: meshlane pod {} has nat rules:\n{rules}",
                case.name,
                pod.name
            ),
            _ => {}
        }
    }
    let obs: Vec<Observation> = case.expect.iter().map(|e| w.observe(&e.probe)).collect();
    eprintln!("--- {} / {:?} / {:?}", case.name, how, mode);
    for o in &obs {
        eprintln!("  {o}");
    }
    // Intercepted by meshlane's hooks (not by something else), and spliced.
    let grew = |i: usize| node.counter(counters[i]) > before[i];
    let any_hop = |suffix: &str| {
        obs.iter()
            .any(|o| o.hops.iter().any(|h| h.contains(suffix)))
    };
    match how {
        Interception::Meshlane => {
            // Only proxy sockets are spliced: a flow through two sidecars
            // has its sidecar-to-sidecar hop spliced; app hops never are.
            let two_sidecars = obs.iter().any(|o| {
                o.hops.iter().any(|h| h.ends_with("outbound"))
                    && o.hops.iter().any(|h| h.ends_with("inbound"))
            });
            if two_sidecars {
                assert!(
                    grew(0),
                    "{}: sidecar-to-sidecar flows were not spliced",
                    case.name
                );
            } else {
                assert!(!grew(0), "{}: an application hop was spliced", case.name);
            }
            if any_hop("outbound") {
                assert!(
                    grew(1),
                    "{}: no connect was redirected by meshlane",
                    case.name
                );
            }
            if any_hop("inbound") {
                assert!(grew(2), "{}: no inbound connection was steered", case.name);
            }
        }
        Interception::Iptables => {
            assert!(
                !grew(1) && !grew(2),
                "{}: meshlane acted in the reference run",
                case.name
            );
        }
    }
    obs
}

/// Runs `case` with the reference rules and with meshlane; panics with both
/// tables when they differ or the reference is not what the case expects.
pub fn run(case: &Case, mode: impl Into<SidecarKind>) {
    let mode = mode.into();
    let mut node = node(case.ipv6);
    let reference = run_once(&mut node, case, Interception::Iptables, mode);
    let meshlane = run_once(&mut node, case, Interception::Meshlane, mode);
    let mut problems = Vec::new();
    for (e, r) in case.expect.iter().zip(&reference) {
        let hops: Vec<String> = e.hops.iter().map(|h| h.to_string()).collect();
        if r.hops != hops || !r.outcome.starts_with(e.outcome) {
            problems.push(format!(
                "reference {}: expected hops {:?} and \"{}..\", got {}",
                r.probe, e.hops, e.outcome, r
            ));
        }
    }
    for (r, m) in reference.iter().zip(&meshlane) {
        if r != m {
            problems.push(format!("differs:\n    iptables {r}\n    meshlane {m}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} ({:?}):\n  {}",
        case.name,
        mode,
        problems.join("\n  ")
    );
}
