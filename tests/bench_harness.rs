//! The benchmark harness through the real binary: a quick run (both nodes,
//! every mode) and a run interrupted with SIGINT leave nothing behind
//! (network namespaces, links, routes, cgroups, pins, BPF links, sidecar
//! processes, subnet claims), and bad arguments give one error line and a
//! non-zero exit. Other suites may run at the same time, so leftovers are
//! judged by ownership: nothing may carry the finished run's pid, and no
//! resource may be orphaned (owned by a dead process) that was not before.
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshlane");

fn out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid inside a sim tag like "meshlane-t1234x0-..." or "meshlane-p1234x1".
fn tag_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("meshlane-t")
        .or_else(|| name.strip_prefix("meshlane-p"))
        .or_else(|| name.strip_prefix("meshlane-s"))?;
    rest.split('x').next()?.parse().ok()
}

fn cgroup_root() -> std::path::PathBuf {
    meshlane::cgroup::cgroup2_mount().expect("cgroup v2 mount")
}

/// Everything of meshlane's sims on the machine, each entry named so that
/// its owner can be judged.
#[derive(Debug, Default)]
struct Inventory {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    routes: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    pins: BTreeSet<String>,
    sidecars: BTreeSet<String>,
    /// subnet index -> owner pid
    subnets: BTreeSet<(u32, u32)>,
    orphan_bpf_links: usize,
}

fn cgroup_inodes(dir: &Path, depth: u32, acc: &mut BTreeSet<u64>) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(dir) {
        acc.insert(m.ino());
    }
    if depth == 0 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            cgroup_inodes(&e.path(), depth - 1, acc);
        }
    }
}

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    for l in out("ip", &["netns", "list"]).lines() {
        if let Some(n) = l.split_whitespace().next() {
            if n.starts_with("meshlane-") {
                inv.netns.insert(n.to_string());
            }
        }
    }
    for l in out("ip", &["-o", "link"]).lines() {
        if let Some(n) = l.split(':').nth(1) {
            let n = n.trim().split('@').next().unwrap_or("").to_string();
            if n.starts_with("mlbr") || n.starts_with("mlw") {
                inv.links.insert(n);
            }
        }
    }
    for l in out("ip", &["route"]).lines() {
        if l.contains("10.202.") || l.contains("10.201.") {
            inv.routes.insert(l.trim().to_string());
        }
    }
    for e in std::fs::read_dir(cgroup_root())
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("meshlane-") {
            inv.cgroups.insert(n);
        }
    }
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("meshlane-") {
            inv.pins.insert(n);
        }
    }
    for l in out("pgrep", &["-a", "haproxy"]).lines() {
        inv.sidecars.insert(l.to_string());
    }
    let claims = Path::new("/run/meshlane-test/subnets");
    for e in std::fs::read_dir(claims).into_iter().flatten().flatten() {
        let k: Option<u32> = e.file_name().to_string_lossy().parse().ok();
        let owner: Option<u32> = std::fs::read_to_string(e.path().join("owner"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let (Some(k), Some(o)) = (k, owner) {
            inv.subnets.insert((k, o));
        }
    }
    let mut live_cgroups = BTreeSet::new();
    cgroup_inodes(&cgroup_root(), 3, &mut live_cgroups);
    let links: serde_json::Value =
        serde_json::from_str(&out("bpftool", &["link", "show", "-j"])).unwrap_or_default();
    inv.orphan_bpf_links = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "cgroup")
        .filter(|l| {
            let id = l["cgroup_id"].as_u64().unwrap_or(0);
            id == 0 || !live_cgroups.contains(&id)
        })
        .count();
    inv
}

/// Asserts that nothing of run `pid` is left and nothing new is orphaned.
fn assert_clean(before: &Inventory, pid: u32) {
    // Give the kernel a moment to free what the last references held.
    std::thread::sleep(Duration::from_millis(500));
    let after = inventory();
    let mine = |n: &String| tag_pid(n) == Some(pid);
    let left: Vec<&String> = after
        .netns
        .iter()
        .chain(&after.cgroups)
        .chain(&after.pins)
        .filter(|n| mine(n))
        .collect();
    assert!(left.is_empty(), "the run left these behind: {left:?}");
    let sidecars: Vec<&String> = after
        .sidecars
        .iter()
        .filter(|l| {
            l.contains(&format!("meshlane-t{pid}x")) || l.contains(&format!("meshlane-p{pid}x"))
        })
        .collect();
    assert!(sidecars.is_empty(), "sidecar processes left: {sidecars:?}");
    let claims: Vec<_> = after.subnets.iter().filter(|(_, o)| *o == pid).collect();
    assert!(claims.is_empty(), "subnet claims left: {claims:?}");
    // Bridges and wires belong to a live subnet claim; routes too.
    let live: BTreeSet<u32> = after
        .subnets
        .iter()
        .filter(|(_, o)| alive(*o))
        .map(|(k, _)| *k)
        .collect();
    let orphan_link = |n: &String| {
        let k: Option<u32> = n
            .trim_start_matches("mlbr")
            .trim_start_matches("mlw")
            .trim_end_matches(['a', 'b'])
            .parse()
            .ok();
        k.is_some_and(|k| !live.contains(&k))
    };
    let new_orphans: Vec<&String> = after
        .links
        .iter()
        .filter(|n| orphan_link(n) && !before.links.contains(*n))
        .collect();
    assert!(
        new_orphans.is_empty(),
        "links without an owner: {new_orphans:?}"
    );
    let new_routes: Vec<&String> = after
        .routes
        .iter()
        .filter(|r| r.contains("10.202.") && !before.routes.contains(*r))
        .filter(|r| {
            // "10.201.K.0/24 via 10.202.K.2" and "10.202.K.0/30 dev mlwKa":
            // owned by subnet K.
            let k: Option<u32> = r.split('.').nth(2).and_then(|x| x.parse().ok());
            k.map_or(true, |k| !live.contains(&k))
        })
        .collect();
    assert!(new_routes.is_empty(), "routes left: {new_routes:?}");
    assert!(
        after.orphan_bpf_links <= before.orphan_bpf_links,
        "cgroup BPF links without a cgroup: {} before, {} after",
        before.orphan_bpf_links,
        after.orphan_bpf_links
    );
}

#[test]
fn quick_run_on_two_nodes_leaves_nothing_behind() {
    common::require_root_env();
    let dir = tempfile::tempdir().unwrap();
    let before = inventory();
    let child = Command::new(BIN)
        .args([
            "bench",
            "--quick",
            "--rounds",
            "1",
            "--step-ms",
            "100",
            "--modes",
            "direct,iptables,accelerate,intercept,intercept-nosplice,bypass",
            "--workloads",
            "rtt-64,http,connect",
            "--placements",
            "same-node,cross-node",
            "--out",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench failed:\n{stderr}");
    assert!(stdout.contains("| bypass | measured"), "{stdout}");
    // The bypass mode's entries came from the live path (ADS, the agent's
    // chain), still live at the end of the run.
    assert!(
        stdout.contains("- bypass: decided live over ADS"),
        "{stdout}"
    );
    for f in [
        "report.json",
        "report.md",
        "latency-p50-same-node.svg",
        "cdf-rtt-64-same-node.svg",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    // Every mode really measured, and cross-node traffic went through both
    // sidecars (sessions counted by HAProxy).
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    for m in r["modes"].as_array().unwrap() {
        let status = m["status"].as_str().unwrap();
        assert_eq!(status, "measured", "mode {}", m["mode"]);
    }
    // Bypass went past the sidecar: no session, no redirected connect.
    for placement in ["same-node", "cross-node"] {
        let bypass = r["summaries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["workload"] == "rtt-64" && s["placement"] == placement && s["mode"] == "bypass"
            })
            .expect("bypass summary");
        assert_eq!(bypass["counters"]["sidecar_sessions"], 0, "{bypass}");
        assert_eq!(bypass["counters"]["connects_redirected"], 0, "{bypass}");
        assert!(bypass["rounds_ok"].as_u64().unwrap() >= 1, "{bypass}");
    }
    let cross_iptables = r["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["workload"] == "rtt-64" && s["placement"] == "cross-node" && s["mode"] == "iptables"
        })
        .expect("cross-node iptables summary");
    assert!(
        cross_iptables["counters"]["sidecar_sessions"]
            .as_u64()
            .unwrap()
            >= 2
    );
    modes_without_meshlane_run_none_of_its_programs(&r);
    assert_clean(&before, pid);
}

/// `direct` and `iptables` live beside meshlane's cgroup, so its programs
/// never run for their connections, while they run for every connection
/// of a registered pod, each node's for its own sockets; and the BPF
/// columns come from the costing rounds only, which run only the
/// connection and HTTP workloads.
fn modes_without_meshlane_run_none_of_its_programs(r: &serde_json::Value) {
    let summaries = r["summaries"].as_array().unwrap();
    let runs_per_connection = |placement: &str, mode: &str| {
        let s = summaries
            .iter()
            .find(|s| {
                s["workload"] == "connect" && s["placement"] == placement && s["mode"] == mode
            })
            .unwrap_or_else(|| panic!("no connect {placement} {mode} summary"));
        s["hook_runs_per_op"]["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("no BPF runs for connect {placement} {mode}: {s}"))
    };
    for placement in ["same-node", "cross-node"] {
        for mode in ["direct", "iptables"] {
            let runs = runs_per_connection(placement, mode);
            assert!(
                runs < 0.5,
                "{mode} {placement}: {runs} meshlane program runs per connection"
            );
        }
        let runs = runs_per_connection(placement, "intercept");
        assert!(
            runs >= 10.0,
            "intercept {placement}: only {runs} program runs per connection"
        );
    }
    // Node B's install is attached to node B's cgroup: a cross-node
    // connection's sockets run their own node's programs, not both nodes'
    // (which would double the runs).
    let (same, cross) = (
        runs_per_connection("same-node", "intercept"),
        runs_per_connection("cross-node", "intercept"),
    );
    assert!(
        cross < same * 1.5,
        "cross-node {cross} runs per connection against same-node {same}: both installs ran"
    );
    let steps = r["steps"].as_array().unwrap();
    let costing: Vec<&serde_json::Value> = steps.iter().filter(|s| s["costing"] == true).collect();
    assert!(!costing.is_empty(), "no costing round ran");
    assert!(
        costing.iter().all(|s| s["workload"] != "rtt-64"),
        "a costing round ran rtt-64"
    );
    assert!(
        steps
            .iter()
            .filter(|s| s["costing"] == false)
            .all(|s| s["hooks"].is_null()),
        "a measured step recorded BPF costs (statistics on while measuring)"
    );
}

#[test]
fn interrupted_run_cleans_up() {
    common::require_root_env();
    let dir = tempfile::tempdir().unwrap();
    let before = inventory();
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--quick",
            "--rounds",
            "20",
            "--modes",
            "direct,iptables,intercept",
            "--placements",
            "same-node,cross-node",
            "--out",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until measuring has started (pods, sidecars and both nodes exist).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut line = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 || line.contains("round 1") {
            break;
        }
    }
    assert!(
        line.contains("round 1"),
        "run did not start measuring: {line}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(tag_pid(&format!("meshlane-t{pid}x0")).is_some());
    assert!(
        inventory().netns.iter().any(|n| tag_pid(n) == Some(pid)),
        "the run's pods should exist while it measures"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run must exit non-zero");
    assert!(rest.contains("interrupted"), "stderr: {rest}");
    assert_clean(&before, pid);
}

/// Runs the binary with `args`; returns (exit ok, stderr).
fn bad(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_give_one_clear_line() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["bench", "--modes", "direct,warp"],
            "unknown mode \"warp\"",
        ),
        (&["bench", "--workloads", "rtt-2"], "unknown workload"),
        (
            &["bench", "--connections", "0"],
            "--connections must be at least 1",
        ),
        (&["bench", "--qps", "5000000"], "too high for this machine"),
        (
            &["bench", "--qps", "30000", "--connections", "1"],
            "per connection",
        ),
        (&["bench", "--rounds", "0"], "--rounds must be at least 1"),
        (
            &["bench", "--sidecar", "nginx"],
            "--sidecar nginx: unknown sidecar `nginx` (known: auto, haproxy, envoy)",
        ),
    ];
    for (args, want) in cases {
        let (ok, stderr) = bad(args);
        assert!(!ok, "{args:?} should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: expected one line, got:\n{stderr}"
        );
        assert!(lines[0].contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Envoy asked for where there is none: named, before anything is built.
    let o = Command::new(BIN)
        .args(["bench", "--sidecar", "envoy"])
        .env("MESHLANE_ENVOY", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(
        stderr.trim(),
        "meshlane: --sidecar envoy: MESHLANE_ENVOY=/nonexistent is not an executable file"
    );
    // --check without both modes it compares.
    let (ok, stderr) = bad(&["bench", "--check", "--modes", "direct,intercept"]);
    assert!(
        !ok && stderr.trim().lines().count() == 1 && stderr.contains("--check"),
        "{stderr}"
    );
}
