//! Issue 13: many pods through the CNI chain. 200 pods added and deleted
//! one after another, then 50 at once, leave no registry state behind
//! (map entries, link pins, attachment records) and the agent no more
//! file descriptors and no more than a few MiB of resident memory than
//! after the same work done once as a warm-up.
mod common;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use common::cni::CniNode;
use meshlane::sim::cni_runtime::Network;
use support::AgentProcess;

/// Resident memory the agent may gain over the measured rounds (the
/// allocator keeps some of what the concurrent round used).
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Adds and deletes `n` pods one after another, each checked registered.
fn one_by_one(cni: &CniNode, net: &Network, n: usize, tag: &str) {
    for i in 0..n {
        let name = format!("{tag}-{i}");
        cni.mesh("load", &name);
        let pod = cni
            .pod(net, "load", &name)
            .unwrap_or_else(|e| panic!("ADD {name}: {e:#}"));
        assert_eq!(cni.node.map_entries("ml_pods"), 1, "{name} not registered");
        drop(pod); // DEL with the cached result, then the netns goes
        cni.catalog.remove(
            &common::cni::pod_info(
                "load",
                &name,
                meshlane::pods::source::MeshDecision::NotMeshed {
                    reason: String::new(),
                },
            )
            .key,
        );
    }
}

/// Adds `n` pods at once, checks them all registered, deletes them at once.
fn all_at_once(cni: &CniNode, net: &Network, n: usize, tag: &str) {
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    for name in &names {
        cni.mesh("load", name);
    }
    let pods: Vec<meshlane::sim::Pod> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| s.spawn(move || cni.pod(net, "load", name)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("ADD thread")
                    .unwrap_or_else(|e| panic!("concurrent ADD: {e:#}"))
            })
            .collect()
    });
    assert_eq!(
        cni.node.map_entries("ml_pods"),
        n,
        "not every pod registered"
    );
    std::thread::scope(|s| {
        for pod in pods {
            s.spawn(move || drop(pod));
        }
    });
}

#[test]
fn two_hundred_in_a_loop_and_fifty_at_once_leave_nothing() {
    let cni = CniNode::new();
    let agent =
        AgentProcess::start_with_env(cni.root(), cni.node.cgroup.path(), &[], &cni.agent_env())
            .expect("agent");
    let pid = agent.pid();
    let net = cni.network("1.0.0", json!({}));

    // Warm-up: the same shapes of work once.
    one_by_one(&cni, &net, 20, "warm");
    all_at_once(&cni, &net, 50, "warmc");
    cni.assert_no_pod_state("after the warm-up");
    std::thread::sleep(Duration::from_secs(2));
    let (fds0, rss0) = (fds(pid), rss_kib(pid));

    let started = Instant::now();
    one_by_one(&cni, &net, 200, "seq");
    let seq = started.elapsed();
    cni.assert_no_pod_state("after 200 pods one by one");
    let started = Instant::now();
    all_at_once(&cni, &net, 50, "conc");
    let conc = started.elapsed();
    cni.assert_no_pod_state("after 50 pods at once");

    std::thread::sleep(Duration::from_secs(2));
    let (fds1, rss1) = (fds(pid), rss_kib(pid));
    println!(
        "200 pods one by one in {seq:.1?} ({:.0} ms per ADD+DEL), 50 at once in {conc:.1?}; \
         agent fds {fds0} -> {fds1}, VmRSS {rss0} -> {rss1} KiB",
        seq.as_secs_f64() * 1000.0 / 200.0
    );
    assert!(fds1 <= fds0, "agent fds grew: {fds0} -> {fds1}");
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "agent VmRSS grew by {} KiB (more than {RSS_SLACK_KIB})",
        rss1.saturating_sub(rss0)
    );
    assert!(
        agent.log_lines().iter().all(|l| !l.contains("panicked")),
        "{:?}",
        agent.log_lines()
    );
}
