//! Issue 3 teardown and coexistence, through the CLI binary:
//! `meshlane pod rm` removes the pod's sk_lookup link and map entries while
//! established connections continue and new ones go direct; a pod whose
//! netns already has istio-init's nat rules is registered in accelerate
//! mode (no eBPF interception on top, splicing on) and status says so.
mod common;
mod conformance;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::require_root_env;
use conformance::app::{self, As, Seen};
use conformance::world::{mesh_istio, AnySidecar, Interception, SidecarKind};
use conformance::{cli, cli_ok, golden};
use meshlane::sim::{Node, NodeOptions, Pod, SidecarMode};

const HAPROXY: SidecarKind = SidecarKind::Haproxy(SidecarMode::Tcp);

fn netns_arg(pod: &Pod) -> String {
    pod.netns.display().to_string()
}

fn peer_of(seen: Seen) -> IpAddr {
    match seen {
        Seen::Served { server_peer, .. } => server_peer,
        other => panic!("probe: {other:?}"),
    }
}

/// The netns inode numbers that have an sk_lookup link attached.
fn netns_links() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "netns")
        .filter_map(|l| l["netns_ino"].as_u64())
        .collect()
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// Waits (bounded) for `cond`; the kernel frees links and closes sockets
/// asynchronously.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pod_rm_removes_link_and_entries_established_continue() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let c = node.pod("c").unwrap();
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        cli_ok(
            &node,
            &["pod", "add", "--name", name, "--netns", &netns_arg(pod)],
        );
    }
    let b_ino = ino(&b.netns);
    assert!(netns_links().contains(&b_ino), "no sk_lookup link on B");
    assert_eq!(node.map_entries("ml_pods"), 2);
    assert!(node.map_entries("ml_pod_ips") >= 2);
    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    let _srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());

    // A long connection A -> B:9000 through both sidecars.
    let echo = app::one_shot_echo_server(&b, 9000);
    let to = SocketAddr::new(b.ip4.into(), 9000);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let client = a
        .thread(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            first_tx
                .send(app::echo_once(&mut s, b"before pod rm"))
                .unwrap();
            go_rx.recv().unwrap();
            let again = app::echo_once(&mut s, b"after pod rm, same connection");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            again
        })
        .unwrap();
    assert_eq!(first_rx.recv().unwrap(), b"before pod rm");
    assert_eq!((sa.sessions("outbound"), sb.sessions("inbound")), (1, 1));

    for pod in [&a, &b] {
        cli_ok(&node, &["pod", "rm", "--netns", &netns_arg(pod)]);
    }
    assert_eq!(node.map_entries("ml_pods"), 0);
    assert_eq!(node.map_entries("ml_pod_ips"), 0);
    assert!(
        !node.layout.pod_links_dir().exists()
            || std::fs::read_dir(node.layout.pod_links_dir())
                .unwrap()
                .next()
                .is_none()
    );
    eventually("B's sk_lookup link detached", || {
        !netns_links().contains(&b_ino)
    });

    // The established connection finishes normally.
    go_tx.send(()).unwrap();
    assert_eq!(client.join().unwrap(), b"after pod rm, same connection");
    assert_eq!(
        echo.join().unwrap().ip(),
        IpAddr::V4("127.0.0.6".parse().unwrap())
    );

    // New connections go direct both ways.
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);
    assert_eq!(
        peer_of(app::probe(&a, b8080, As::default())),
        IpAddr::V4(a.ip4)
    );
    assert_eq!(
        peer_of(app::probe(&c, b8080, As::default())),
        IpAddr::V4(c.ip4)
    );
    assert_eq!((sa.sessions("outbound"), sb.sessions("inbound")), (1, 1));

    // Per-connection bookkeeping goes away with the connections.
    drop((sa, sb));
    eventually("no connection left pending", || {
        node.map_entries("ml_orig_pending") == 0
    });

    // Removing again is an error that names the netns, and changes nothing.
    let out = cli(&node, &["pod", "rm", "--netns", &netns_arg(&a)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&netns_arg(&a)), "{err}");
}

#[test]
fn istio_init_rules_mean_accelerate_mode() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let c = node.pod("c").unwrap();
    // istio-init already ran in A and B.
    for pod in [&a, &b] {
        mesh_istio(&node, pod, "x", Interception::Iptables);
    }
    // Asked for intercept mode (the default), like an operator would.
    for (pod, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        cli_ok(
            &node,
            &["pod", "add", "--name", name, "--netns", &netns_arg(pod)],
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&cli_ok(&node, &["--json", "pod", "list"])).unwrap();
    let mode = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| {
                (
                    p["mode"].as_str().unwrap_or("").to_string(),
                    p["inbound_link"].clone(),
                )
            })
            .unwrap()
    };
    // Every pod has its link (the agent reads from it whether the netns
    // still exists); in accelerate mode it steers nothing, which the
    // traffic below shows (each hop through a sidecar exactly once).
    assert_eq!(mode("a"), ("accelerate".into(), serde_json::json!(true)));
    assert_eq!(mode("b"), ("accelerate".into(), serde_json::json!(true)));
    assert_eq!(mode("c"), ("intercept".into(), serde_json::json!(true)));
    let status = cli_ok(&node, &["status"]);
    assert!(
        status.contains("accelerate (istio-init iptables"),
        "{status}"
    );

    // Traffic goes through the sidecars exactly once, by iptables, spliced.
    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    let _srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let (redirected, steered, spliced) = (
        node.counter("connects_redirected"),
        node.counter("inbound_steered"),
        node.counter("messages_spliced"),
    );
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);
    let seen = app::probe(&a, b8080, As::default());
    match &seen {
        Seen::Served {
            server_peer,
            app_peer,
            ..
        } => {
            assert_eq!(*server_peer, IpAddr::V4("127.0.0.6".parse().unwrap()));
            assert_eq!(*app_peer, b8080);
        }
        other => panic!("A -> B: {other:?}"),
    }
    assert_eq!((sa.sessions("outbound"), sb.sessions("inbound")), (1, 1));
    assert_eq!(
        node.counter("connects_redirected"),
        redirected,
        "intercepted twice"
    );
    assert_eq!(
        node.counter("inbound_steered"),
        steered,
        "steered on top of iptables"
    );
    assert!(
        node.counter("messages_spliced") > spliced,
        "accelerate mode did not splice"
    );
    let rules = golden::ruleset(&a).unwrap();
    assert!(golden::has_nat(&rules), "istio-init rules were touched");
}

/// istio-init run with iptables-legacy (x_tables, not nf_tables) is found
/// too, and a pod without rules is not mistaken for one.
#[test]
fn legacy_iptables_rules_are_detected() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let legacy = node.pod("legacy").unwrap();
    let clean = node.pod("clean").unwrap();
    let rules = std::fs::read(golden::golden_dir().join("cni-plugin_basic.txt.golden")).unwrap();
    let mut child = legacy
        .command(&["iptables-legacy-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&rules).unwrap();
    assert!(child.wait().unwrap().success(), "iptables-legacy-restore");
    let found = meshlane::iptables::inspect(&legacy.netns).unwrap();
    assert!(
        found
            .chains
            .iter()
            .any(|c| c == "ip nat ISTIO_OUTPUT (legacy)"),
        "{found:?}"
    );
    assert!(!meshlane::iptables::inspect(&clean.netns).unwrap().present());
    // Not a netns: one clear error.
    let e = meshlane::iptables::inspect(Path::new("/etc/hostname")).unwrap_err();
    assert!(e.to_string().contains("/etc/hostname"), "{e}");
}
