//! Bad input through the real binary: not root, a pin root outside bpffs,
//! a --cgroup that is not cgroup v2, a pin root of another layout version,
//! a netns path that is not a netns, an unknown preset, a port list over the
//! kernel limit. Each must give exactly one "meshlane: ..." line on stderr, a
//! non-zero exit, no panic, and leave nothing half-attached: no new link on
//! the cgroup, no new pin, no registry entry.
mod common;
mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshlane::sim::Node;
use support::*;

/// Checks the one-line error contract and that the line names `names`.
fn assert_one_line_error(what: &str, out: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{what}: exited 0; stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(
        out.status.code().is_some(),
        "{what}: killed by a signal ({}); stderr {stderr:?}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one stderr line, got {lines:?}"
    );
    assert!(
        lines[0].starts_with("meshlane: "),
        "{what}: error line does not start with \"meshlane: \": {:?}",
        lines[0]
    );
    for n in names {
        assert!(
            lines[0].contains(n),
            "{what}: error line does not name {n:?}: {:?}",
            lines[0]
        );
    }
    assert!(
        stdout.trim().is_empty(),
        "{what}: printed on stdout: {stdout:?}"
    );
}

/// What an error must not change: pins under the pin root and ml_*
/// programs on the cgroup.
#[derive(Debug, PartialEq)]
struct Snapshot {
    pins: std::collections::BTreeSet<PathBuf>,
    cgroup: Vec<(u64, String)>,
}

fn snapshot(root: &Path, cgroup: &Path) -> Snapshot {
    Snapshot {
        pins: pins_under(root),
        cgroup: cgroup_ml_attachments(cgroup),
    }
}

/// `meshlane <args>` with the given pin root, as uid/gid 65534 when `nobody`.
fn run(root: &Path, args: &[&str], nobody: bool) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--pin-root").arg(root).args(args);
    c.env("RUST_LOG", "info").env("NO_COLOR", "1");
    if nobody {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.output().expect("running the meshlane binary")
}

/// After a refused `pod add`/`pod rm` (`what`): pins and cgroup as in
/// `before`, and no pod registered.
fn assert_no_pod_registered(what: &str, node: &Node, before: &Snapshot) {
    assert_eq!(
        &snapshot(node.layout.root(), node.cgroup.path()),
        before,
        "{what}"
    );
    assert_eq!(node.map_entries("ml_pods"), 0, "{what}");
    assert_eq!(node.map_entries("ml_pod_ips"), 0, "{what}");
}

/// A node installed through the binary (`agent --once`).
fn installed_node() -> Node {
    let node = node_without_install();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    cli_ok(node.layout.root(), &["agent", "--once", "--cgroup", &cg]);
    assert!(!cgroup_ml_attachments(node.cgroup.path()).is_empty());
    node
}

#[test]
fn not_root_is_refused_and_changes_nothing() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let empty = snapshot(&root, node.cgroup.path());
    for args in [
        vec!["agent", "--once", "--cgroup", cg.as_str()],
        vec!["agent", "--cgroup", cg.as_str()],
        vec!["probe"],
    ] {
        let out = run(&root, &args, true);
        assert_one_line_error(&format!("{args:?} as uid 65534"), &out, &["root", "65534"]);
        assert_eq!(snapshot(&root, node.cgroup.path()), empty, "{args:?}");
    }
    assert!(!root.exists(), "the pin root was created");

    // Installed by root: an unprivileged user can neither read nor change it.
    cli_ok(&root, &["agent", "--once", "--cgroup", &cg]);
    let installed = snapshot(&root, node.cgroup.path());
    assert!(!installed.cgroup.is_empty());
    for args in [
        vec!["pod", "add", "--netns", "/proc/self/ns/net"],
        vec!["pod", "rm", "--netns", "/proc/self/ns/net"],
        vec!["pod", "list"],
        vec!["status"],
        vec!["uninstall"],
        vec!["agent", "--once", "--cgroup", cg.as_str()],
    ] {
        let out = run(&root, &args, true);
        assert_one_line_error(&format!("{args:?} as uid 65534"), &out, &["root", "65534"]);
        assert_eq!(
            snapshot(&root, node.cgroup.path()),
            installed,
            "{args:?} changed the install"
        );
    }
    assert_eq!(node.map_entries("ml_pods"), 0);
}

#[test]
fn pin_root_outside_bpffs_is_refused() {
    let node = node_without_install();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pins");
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let out = run(&root, &["agent", "--once", "--cgroup", &cg], false);
    assert_one_line_error(
        "agent with a pin root under /tmp",
        &out,
        &["bpf filesystem", &root.to_string_lossy()],
    );
    assert!(
        pins_under(tmp.path()).is_empty(),
        "something was created under {}",
        tmp.path().display()
    );
    assert!(cgroup_ml_attachments(node.cgroup.path()).is_empty());
}

#[test]
fn cgroup_that_is_not_cgroup2_is_refused() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let tmp = tempfile::tempdir().expect("tempdir");
    let not_cg = tmp.path().to_string_lossy().into_owned();
    let missing = tmp.path().join("no-such-cgroup");
    let missing = missing.to_string_lossy().into_owned();
    for (dir, names) in [
        (not_cg.as_str(), vec![not_cg.as_str(), "not a cgroup v2"]),
        (missing.as_str(), vec![missing.as_str()]),
    ] {
        let out = run(&root, &["agent", "--once", "--cgroup", dir], false);
        assert_one_line_error(&format!("agent --cgroup {dir}"), &out, &names);
        assert!(!root.exists(), "pin root created for a bad cgroup");
        assert!(cgroup_ml_attachments(node.cgroup.path()).is_empty());
    }
    assert!(pins_under(tmp.path()).is_empty());
}

/// Removes a hand-made foreign layout directory, panics included.
struct ForeignLayout {
    root: PathBuf,
}

impl Drop for ForeignLayout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.root.join("v999"));
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[test]
fn pin_root_of_another_layout_version_is_never_touched() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let foreign = ForeignLayout { root: root.clone() };
    std::fs::create_dir_all(foreign.root.join("v999")).expect("making <pin root>/v999");
    let before = snapshot(&root, node.cgroup.path());
    for args in [
        vec!["agent", "--once", "--cgroup", cg.as_str()],
        vec!["pod", "add", "--netns", "/proc/self/ns/net"],
        vec!["status"],
        vec!["uninstall"],
    ] {
        let out = run(&root, &args, false);
        assert_one_line_error(&format!("{args:?} on a v999 pin root"), &out, &["v999"]);
        assert_eq!(
            snapshot(&root, node.cgroup.path()),
            before,
            "{args:?} changed a foreign pin root"
        );
    }
    assert!(root.join("v999").is_dir());
}

#[test]
fn netns_path_that_is_not_a_netns_is_refused() {
    let node = installed_node();
    let root = node.layout.root().to_path_buf();
    let tmp = tempfile::tempdir().expect("tempdir");
    let regular = tmp.path().join("not-a-netns");
    std::fs::write(&regular, b"x").expect("regular file");
    let regular = regular.to_string_lossy().into_owned();
    let missing = tmp.path().join("missing").to_string_lossy().into_owned();
    let dir = tmp.path().to_string_lossy().into_owned();
    let before = snapshot(&root, node.cgroup.path());
    for (path, names) in [
        (regular.as_str(), vec!["not a network namespace"]),
        ("/proc/self/ns/mnt", vec!["not a network namespace"]),
        (dir.as_str(), vec!["not a network namespace"]),
        (missing.as_str(), vec!["No such file"]),
    ] {
        for cmd in ["add", "rm"] {
            let out = run(&root, &["pod", cmd, "--netns", path], false);
            let mut names = names.clone();
            names.push(path);
            let what = format!("pod {cmd} --netns {path}");
            assert_one_line_error(&what, &out, &names);
            assert_no_pod_registered(&what, &node, &before);
        }
    }
}

#[test]
fn unknown_preset_is_refused() {
    let mut node = installed_node();
    let pod = node.pod("p").expect("pod");
    let root = node.layout.root().to_path_buf();
    let netns = pod.netns.to_string_lossy().into_owned();
    let before = snapshot(&root, node.cgroup.path());
    let out = run(
        &root,
        &["pod", "add", "--netns", &netns, "--preset", "consul"],
        false,
    );
    assert_one_line_error("--preset consul", &out, &["consul", "--preset", "istio"]);
    assert_no_pod_registered("--preset consul", &node, &before);
    // The same pod registers with a known preset.
    cli_ok(
        &root,
        &["pod", "add", "--netns", &netns, "--preset", "linkerd"],
    );
    assert_eq!(node.map_entries("ml_pods"), 1);
}

#[test]
fn port_list_over_the_kernel_limit_names_pod_and_list() {
    let mut node = installed_node();
    let pod = node.pod("p").expect("pod");
    let root = node.layout.root().to_path_buf();
    let netns = pod.netns.to_string_lossy().into_owned();
    let ports = |n: u16| {
        (1..=n)
            .map(|p| (8000 + p).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (p33, p40) = (ports(33), ports(40));
    let cidrs17 = (0..17)
        .map(|i| format!("10.{i}.0.0/16"))
        .collect::<Vec<_>>()
        .join(",");
    let before = snapshot(&root, node.cgroup.path());
    for (flag, list, value, len) in [
        (
            "--exclude-inbound-ports",
            "excludeInboundPorts",
            p33.as_str(),
            "33",
        ),
        (
            "--include-outbound-ports",
            "includeOutboundPorts",
            p40.as_str(),
            "40",
        ),
        (
            "--exclude-outbound-ip-ranges",
            "excludeOutboundIPRanges",
            cidrs17.as_str(),
            "17",
        ),
    ] {
        let out = run(
            &root,
            &[
                "pod", "add", "--netns", &netns, "--name", "web-1", flag, value,
            ],
            false,
        );
        assert_one_line_error(flag, &out, &["web-1", list, len]);
        assert_no_pod_registered(flag, &node, &before);
    }
    // Exactly at the limit is accepted and kept whole.
    let p32 = ports(32);
    cli_ok(
        &root,
        &[
            "pod",
            "add",
            "--netns",
            &netns,
            "--name",
            "web-1",
            "--exclude-inbound-ports",
            &p32,
        ],
    );
    let list: serde_json::Value =
        serde_json::from_str(&cli_ok(&root, &["--json", "pod", "list"])).expect("pod list JSON");
    assert_eq!(list[0]["name"], "web-1", "{list}");
    assert_eq!(list[0]["exclude_inbound_ports"], p32.as_str(), "{list}");
}

/// An empty cgroup below the test's own; removed on drop.
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn new(parent: &Path, name: &str) -> Self {
        let p = parent.join(name);
        std::fs::create_dir(&p).expect("creating a child cgroup");
        Self(p)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn agent_restart_with_conflicting_flags_changes_nothing() {
    let node = installed_node();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let other = ChildCgroup::new(node.cgroup.path(), "other");
    let other_path = other.0.to_string_lossy().into_owned();
    let before = snapshot(&root, node.cgroup.path());
    let links = link_ids(&status_json(&root));
    for (args, names) in [
        (
            vec!["agent", "--once", "--cgroup", other_path.as_str()],
            vec![cg.as_str(), other_path.as_str(), "uninstall"],
        ),
        (
            vec![
                "agent",
                "--once",
                "--cgroup",
                cg.as_str(),
                "--sockhash-size",
                "1024",
            ],
            vec!["ml_socks", "65536", "1024"],
        ),
        (
            vec!["agent", "--once", "--cgroup", cg.as_str(), "--no-intercept"],
            vec!["interception is installed", "uninstall"],
        ),
    ] {
        let out = run(&root, &args, false);
        assert_one_line_error(&format!("{args:?}"), &out, &names);
        assert_eq!(snapshot(&root, node.cgroup.path()), before, "{args:?}");
        assert_eq!(link_ids(&status_json(&root)), links, "{args:?}");
        assert!(cgroup_ml_attachments(&other.0).is_empty(), "{args:?}");
    }
    // The same flags as the install adopt.
    cli_ok(&root, &["agent", "--once", "--cgroup", &cg]);
    assert_eq!(link_ids(&status_json(&root)), links);
}

#[test]
fn relative_pin_root_is_refused() {
    let node = node_without_install();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    // Relative to bpffs, where it would otherwise land.
    let name = format!("{}-rel", node.tag);
    let landed = Path::new("/sys/fs/bpf").join(&name);
    for args in [
        vec!["agent", "--once", "--cgroup", cg.as_str()],
        vec!["status"],
        vec!["uninstall"],
    ] {
        let out = Command::new(BIN)
            .current_dir("/sys/fs/bpf")
            .arg("--pin-root")
            .arg(&name)
            .args(&args)
            .output()
            .expect("running the meshlane binary");
        assert_one_line_error(&format!("{args:?}"), &out, &["absolute", &name]);
        assert!(!landed.exists(), "{args:?} created {}", landed.display());
        assert!(cgroup_ml_attachments(node.cgroup.path()).is_empty());
    }
}

#[test]
fn metrics_address_in_use_installs_nothing() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(
        &root,
        &["agent", "--cgroup", &cg, "--metrics-addr", &addr],
        false,
    );
    assert_one_line_error("--metrics-addr in use", &out, &[&addr, "metrics"]);
    assert!(!root.exists(), "the agent installed before failing");
    assert!(cgroup_ml_attachments(node.cgroup.path()).is_empty());
}

#[test]
fn intercept_pod_on_a_splice_only_install_is_refused() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    cli_ok(
        &root,
        &["agent", "--once", "--cgroup", &cg, "--no-intercept"],
    );
    let pod = node.pod("p").expect("pod");
    let netns = pod.netns.to_string_lossy().into_owned();
    let before = snapshot(&root, node.cgroup.path());
    let out = run(
        &root,
        &["pod", "add", "--netns", &netns, "--name", "web-2"],
        false,
    );
    let what = "intercept pod, splice-only install";
    assert_one_line_error(what, &out, &["web-2", "accelerate"]);
    assert_no_pod_registered(&format!("{what}: half-registered"), &node, &before);
    add_accelerated_pod(&root, &pod, Some("web-2"));
    assert_eq!(node.map_entries("ml_pods"), 1);
}

/// Registrations that would fail open are refused with one line naming
/// what was wrong, and nothing is registered: the node's own netns, a proxy
/// port of 0, names that are empty, too long or hold control characters.
/// `--splice-apps` is refused where the kernel probes show an application
/// could tell a spliced socket from TCP (every kernel so far).
#[test]
fn registrations_that_would_fail_open_are_refused() {
    let mut node = installed_node();
    let pod = node.pod("p").expect("pod");
    let root = node.layout.root().to_path_buf();
    let netns = pod.netns.to_string_lossy().into_owned();
    let before = snapshot(&root, node.cgroup.path());
    let long = "n".repeat(64);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--netns", "/proc/self/ns/net", "--name", "host"],
            vec!["host", "node's own network namespace"],
        ),
        (
            vec!["--netns", &netns, "--name", "w", "--outbound-port", "0"],
            vec!["w", "outbound-port", "\"0\""],
        ),
        (
            vec!["--netns", &netns, "--name", "w", "--inbound-port", "0"],
            vec!["w", "inbound-port", "\"0\""],
        ),
        (
            vec!["--netns", &netns, "--name", "w", "--dns-port", "0"],
            vec!["w", "dns-port", "\"0\""],
        ),
        (
            vec!["--netns", &netns, "--name", "web\u{1b}[31m"],
            vec!["control characters"],
        ),
        (vec!["--netns", &netns, "--name", &long], vec!["63 bytes"]),
        (vec!["--netns", &netns, "--name", ""], vec!["empty"]),
        (
            vec!["--netns", &netns, "--name", "w", "--splice-apps"],
            vec!["--splice-apps", "splice(2)"],
        ),
    ];
    for (extra, names) in cases {
        let mut args = vec!["pod", "add"];
        args.extend(extra.iter().copied());
        let out = run(&root, &args, false);
        let what = format!("{extra:?}");
        assert_one_line_error(&what, &out, &names);
        assert_no_pod_registered(&what, &node, &before);
    }
}
