//! Issue 9: no registration outlives its pod. A pod whose netns vanishes
//! without `pod rm` is removed by the running agent within seconds (record,
//! addresses, link), a new pod can take its address, and `status` never
//! shows it healthy once the kernel has severed its link; a `pod add` or
//! `pod rm` SIGKILLed after any step leaves nothing once the agent runs.
mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{cli, cli_ok, node_without_install, status_json, AgentProcess};

/// The pod entry of `status --json` whose name is `name`.
fn pod_in_status(root: &Path, name: &str) -> Option<Value> {
    status_json(root)["pods"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

fn map_entries(root: &Path, map: &str) -> u64 {
    status_json(root)["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == map))
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or(0)
}

fn pod_links(root: &Path) -> usize {
    let dir = meshlane::layout::PinLayout::new(root).pod_links_dir();
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Nothing of any pod is left in the registry.
fn registry_is_empty(root: &Path) -> bool {
    map_entries(root, "ml_pods") == 0
        && map_entries(root, "ml_pod_ips") == 0
        && pod_links(root) == 0
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn vanished_netns_is_swept_and_its_address_reusable() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let _agent = AgentProcess::start(&root, node.cgroup.path()).expect("agent");
    let old = node.pod("old").expect("pod");
    let old_ip = old.ip4;
    cli_ok(
        &root,
        &[
            "pod",
            "add",
            "--name",
            "old",
            "--netns",
            &old.netns.to_string_lossy(),
        ],
    );
    let alive = pod_in_status(&root, "old").expect("registered pod in status");
    assert_eq!(alive["netns_alive"], true, "{alive}");

    // The runtime loses the pod: its netns goes away, no `pod rm`.
    drop(old);
    let mut seen_dead = false;
    let took = wait_for(
        "the agent removes the vanished pod",
        Duration::from_secs(10),
        || match pod_in_status(&root, "old") {
            Some(p) => {
                let dead = p["netns_alive"] == false;
                assert!(
                    !seen_dead || dead,
                    "status showed the pod healthy again: {p}"
                );
                seen_dead |= dead;
                false
            }
            None => true,
        },
    );
    eprintln!("vanished pod swept after {took:?} (seen as gone in status: {seen_dead})");
    assert!(registry_is_empty(&root), "{}", status_json(&root));

    // A new pod can take the old pod's address.
    let new = node.pod("new").expect("pod");
    let addr = format!("{old_ip}/32");
    new.exec(&["ip", "addr", "add", &addr, "dev", "eth0"])
        .expect("giving the new pod the old address");
    let out = cli_ok(
        &root,
        &[
            "--json",
            "pod",
            "add",
            "--name",
            "new",
            "--netns",
            &new.netns.to_string_lossy(),
        ],
    );
    let rec: Value = serde_json::from_str(&out).expect("pod add --json");
    let ips: Vec<String> = rec["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|i| i.as_str().map(String::from))
        .collect();
    assert!(ips.contains(&old_ip.to_string()), "{rec}");

    // Removal by name works without a netns path.
    cli_ok(&root, &["pod", "rm", "--name", "new"]);
    assert!(registry_is_empty(&root), "{}", status_json(&root));
}

/// Runs `meshlane pod <args>` directly (no agent runs, so the CLI writes
/// the registry itself) with a fail point that SIGKILLs it after `step`.
fn killed_cli(root: &Path, step: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshlane"))
        .envs(support::kernel_env())
        .args(["--pin-root", &root.to_string_lossy(), "pod"])
        .args(args)
        .env("MESHLANE_FAIL_POINT", step)
        .output()
        .expect("running meshlane pod");
    assert!(!out.status.success(), "{step}: the command was not killed");
}

/// Starts the agent, waits until its sweep has emptied the registry, and
/// stops it again (SIGTERM).
fn agent_cleans_up(root: &Path, cgroup: &Path, step: &str) {
    let mut agent = AgentProcess::start(root, cgroup).expect("agent");
    let took = wait_for(
        &format!("the agent sweeps what was killed after {step}"),
        Duration::from_secs(10),
        || registry_is_empty(root),
    );
    eprintln!("{step}: swept {took:?} after the agent started");
    agent.sigterm();
    assert!(agent
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

#[test]
fn killed_add_or_remove_leaves_nothing_once_the_agent_runs() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_path_buf();
    cli_ok(
        &root,
        &["agent", "--once", "--cgroup", &cg.to_string_lossy()],
    );
    let pod = node.pod("p").expect("pod");
    let netns = pod.netns.to_string_lossy().into_owned();
    for step in ["pod-add:link", "pod-add:ips", "pod-add:listener"] {
        killed_cli(&root, step, &["add", "--netns", &netns]);
        assert_eq!(
            map_entries(&root, "ml_pods"),
            0,
            "{step}: a record was written"
        );
        assert!(
            pod_links(&root) == 1,
            "{step}: the add did not get as far as its link"
        );
        agent_cleans_up(&root, &cg, step);
    }
    for step in ["pod-rm:record", "pod-rm:link"] {
        cli_ok(&root, &["pod", "add", "--netns", &netns]);
        killed_cli(&root, step, &["rm", "--netns", &netns]);
        agent_cleans_up(&root, &cg, step);
    }
    // And the pod registers normally afterwards, through the running agent.
    let _agent = AgentProcess::start(&root, &cg).expect("agent");
    cli_ok(&root, &["pod", "add", "--netns", &netns]);
    assert_eq!(map_entries(&root, "ml_pods"), 1);
    let out = cli(&root, &["pod", "rm", "--cookie", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("netns cookie 1"), "{err}");
}
