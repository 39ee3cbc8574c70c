//! Issue 3 faults: a sidecar that is not listening yet (refused at once,
//! like iptables, and never around the proxy), a sidecar restart, the
//! agent SIGKILLed (the pinned links keep intercepting), uninstall while
//! traffic flows (established connections finish, new ones go direct).
mod common;
mod conformance;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::require_root_env;
use conformance::app::{self, As, Seen};
use conformance::world::{mesh_istio, AnySidecar, Interception, SidecarKind};
use conformance::{cli_ok, golden};
use meshlane::sim::{Node, NodeOptions, Pod, SidecarMode};

const HAPROXY: SidecarKind = SidecarKind::Haproxy(SidecarMode::Tcp);

fn show(pod_a: &Pod, pod_b: &Pod, s: &Seen) -> String {
    let name = |ip: std::net::IpAddr| {
        if ip == std::net::IpAddr::V4(pod_a.ip4) {
            "A".to_string()
        } else if ip == std::net::IpAddr::V4(pod_b.ip4) {
            "B".to_string()
        } else {
            ip.to_string()
        }
    };
    match s {
        Seen::Served {
            server_peer,
            server_local,
            ..
        } => format!(
            "served, server peer {} local {}:{}",
            name(*server_peer),
            name(server_local.ip()),
            server_local.port()
        ),
        Seen::Refused => "refused".into(),
        Seen::Failed(e) => format!("failed: {e}"),
    }
}

/// The fault sequence for one interception kind; returns what each step saw.
fn sidecar_late(node: &mut Node, how: Interception) -> Vec<String> {
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let c = node.pod("c").unwrap();
    mesh_istio(node, &a, "a", how);
    mesh_istio(node, &b, "b", how);
    let _srv_b = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);
    let mut out = Vec::new();
    let mut step = |what: &str, s: Seen| out.push(format!("{what}: {}", show(&a, &b, &s)));

    // No sidecar anywhere yet: outbound refused (nothing on 15001), inbound
    // refused (nothing on 15006), and the app on 8080 is never reached.
    step("A -> B no sidecars", app::probe(&a, b8080, As::default()));
    step("C -> B no sidecars", app::probe(&c, b8080, As::default()));
    // B's sidecar comes up after the app: inbound now goes through it.
    let sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    step("C -> B sidecar b up", app::probe(&c, b8080, As::default()));
    assert_eq!(
        sb.sessions("inbound"),
        1,
        "{how:?}: first inbound after listen"
    );
    // A's sidecar comes up: the first outbound connection goes through it.
    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    step("A -> B both up", app::probe(&a, b8080, As::default()));
    assert_eq!(
        sa.sessions("outbound"),
        1,
        "{how:?}: first outbound after listen"
    );
    // B's sidecar restarts: refused while down, through the new one after.
    drop(sb);
    step(
        "C -> B sidecar b down",
        app::probe(&c, b8080, As::default()),
    );
    let sb2 = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    step(
        "C -> B sidecar b restarted",
        app::probe(&c, b8080, As::default()),
    );
    assert_eq!(sb2.sessions("inbound"), 1, "{how:?}: inbound after restart");
    drop((sa, sb2));
    out
}

/// The app connects before its sidecar listens: refused at once (not a
/// hang, not the app reached around the proxy), as with iptables; the first
/// connection after the sidecar listens goes through it; a restarted
/// sidecar's listener is found again.
#[test]
fn sidecar_not_listening_yet_and_restart() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let reference = sidecar_late(&mut node, Interception::Iptables);
    let refused_before = node.counter("inbound_refused_no_listener");
    let meshlane = sidecar_late(&mut node, Interception::Meshlane);
    for l in &meshlane {
        eprintln!("  {l}");
    }
    let want = vec![
        "A -> B no sidecars: refused",
        "C -> B no sidecars: refused",
        "C -> B sidecar b up: served, server peer 127.0.0.6 local B:8080",
        "A -> B both up: served, server peer 127.0.0.6 local B:8080",
        "C -> B sidecar b down: refused",
        "C -> B sidecar b restarted: served, server peer 127.0.0.6 local B:8080",
    ];
    assert_eq!(reference, want, "reference run");
    assert_eq!(meshlane, want, "meshlane run");
    assert!(
        node.counter("inbound_refused_no_listener") >= refused_before + 2,
        "sk_lookup did not count the refusals"
    );
}

/// Pins, no agent: waits until the agent has installed the data path.
fn wait_installed(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if node.registry().is_ok()
            && node
                .layout
                .link(meshlane::datapath::LinkId::Connect4)
                .exists()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the agent did not install under {}",
        node.layout.root().display()
    );
}

/// The agent binary installs and is SIGKILLed; `pod add` runs as its own
/// short-lived process; with no meshlane process left, the pinned links
/// keep intercepting both ways (and splicing).
#[test]
fn agent_sigkilled_interception_keeps_working() {
    require_root_env();
    let mut node = Node::new(NodeOptions {
        install: false,
        ..Default::default()
    })
    .unwrap();
    let root = node.layout.root().to_path_buf();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_meshlane"))
        .arg("--pin-root")
        .arg(&root)
        .arg("agent")
        .arg("--cgroup")
        .arg(node.cgroup.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the agent");
    wait_installed(&node);
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        cli_ok(
            &node,
            &[
                "pod",
                "add",
                "--name",
                name,
                "--netns",
                &pod.netns.to_string_lossy(),
            ],
        );
    }
    // SIGKILL, then reap: no meshlane process remains.
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.wait().unwrap();

    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    let _srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let spliced = node.counter("messages_spliced");
    let rules = golden::ruleset(&a).unwrap();
    assert!(
        !golden::has_nat(&rules),
        "nat rules in a meshlane pod:\n{rules}"
    );
    let seen = app::probe(&a, SocketAddr::new(b.ip4.into(), 8080), As::default());
    assert_eq!(
        show(&a, &b, &seen),
        "served, server peer 127.0.0.6 local B:8080",
        "after the agent died"
    );
    assert_eq!((sa.sessions("outbound"), sb.sessions("inbound")), (1, 1));
    assert!(node.counter("messages_spliced") > spliced, "not spliced");
}

/// Unpinning a link detaches it when the kernel frees the pin's inode
/// (after an RCU grace period), not inside unlink(): waits until the test
/// cgroup has no program attached.
fn wait_cgroup_detached(cgroup: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup)
            .output()
            .expect("running bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        let attached = text
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count();
        if attached == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still attached after uninstall:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `meshlane uninstall` while a connection through the sidecar is open: it
/// keeps working to the end, and new connections go direct.
#[test]
fn uninstall_while_traffic_flows() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let b_echo = app::one_shot_echo_server(&b, 9000);
    let _srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let to = SocketAddr::new(b.ip4.into(), 9000);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let client = a
        .thread(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            let first = app::echo_once(&mut s, b"before uninstall");
            done_tx.send(first).unwrap();
            go_rx.recv().unwrap();
            let second = app::echo_once(&mut s, b"after uninstall, same connection");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            second
        })
        .unwrap();
    assert_eq!(done_rx.recv().unwrap(), b"before uninstall");
    assert_eq!(
        sa.sessions("outbound"),
        1,
        "the long connection is intercepted"
    );

    cli_ok(&node, &["uninstall"]);
    assert!(!node
        .layout
        .link(meshlane::datapath::LinkId::Connect4)
        .exists());
    assert!(!node.layout.map(meshlane::datapath::MapId::Pods).exists());
    wait_cgroup_detached(node.cgroup.path());
    go_tx.send(()).unwrap();
    assert_eq!(client.join().unwrap(), b"after uninstall, same connection");
    let peer = b_echo.join().unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.ip4),
        "B's peer was A's proxy"
    );

    // New connections: direct, no sidecar hop.
    let seen = app::probe(&a, SocketAddr::new(b.ip4.into(), 8080), As::default());
    assert_eq!(show(&a, &b, &seen), "served, server peer A local B:8080");
    assert_eq!(
        sa.sessions("outbound"),
        1,
        "a new connection still went to the sidecar"
    );
}

/// The pod is registered while its sidecar already listens (the listen
/// callback never saw it): inbound goes through the sidecar at once, as
/// with iptables rules added to a running pod, never refused.
#[test]
fn pod_registered_after_its_sidecar_listens() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    for how in [Interception::Iptables, Interception::Meshlane] {
        let b = node.pod("b").unwrap();
        let c = node.pod("c").unwrap();
        let sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
        let _srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
        let adopted = node.map_entries("ml_listeners");
        mesh_istio(&node, &b, "b", how);
        if how == Interception::Meshlane {
            // HAProxy's IPv4 and IPv6 inbound listeners.
            assert_eq!(node.map_entries("ml_listeners"), adopted + 2);
        }
        let seen = app::probe(&c, SocketAddr::new(b.ip4.into(), 8080), As::default());
        assert_eq!(
            show(&c, &b, &seen),
            "served, server peer 127.0.0.6 local B:8080",
            "{how:?}"
        );
        assert_eq!(sb.sessions("inbound"), 1, "{how:?}");
    }
}
