//! Issue 13: meshlane-cni in a real chain. The bridge + host-local plugins
//! then meshlane-cni, run as a container runtime runs a conflist, for
//! every supported cniVersion: prevResult passes through unchanged, the
//! pod is registered (netns cookie, addresses, pinned sk_lookup link)
//! before ADD returns, CHECK, GC and STATUS answer, DEL removes exactly
//! that registration and is idempotent (also once the netns is gone);
//! after ADD the pod's traffic is intercepted and spliced with no nat
//! rules in it; an agent restart keeps the attachment records; Istio's
//! `istio-validation` check passes in a pod registered this way.
mod common;
mod conformance;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use common::cni::{CniNode, VERSIONS};
use conformance::app::{self, As};
use conformance::golden;
use conformance::world::{AnySidecar, SidecarKind};
use meshlane::sim::SidecarMode;
use support::AgentProcess;

fn agent(cni: &CniNode) -> AgentProcess {
    AgentProcess::start_with_env(cni.root(), cni.node.cgroup.path(), &[], &cni.agent_env())
        .expect("starting the agent")
}

/// The agent's /metrics text.
fn scrape(agent: &AgentProcess) -> String {
    support::admin_get(agent.admin_addr(), "/metrics")
        .expect("admin server answers")
        .1
}

#[test]
fn every_version_registers_passes_prev_result_through_and_deletes_idempotently() {
    let cni = CniNode::new();
    let agent = AgentProcess::start_with_env(
        cni.root(),
        cni.node.cgroup.path(),
        &["--admin-addr", "127.0.0.1:0"],
        &cni.agent_env(),
    )
    .expect("agent");
    for version in VERSIONS {
        let net = cni.network(version, json!({}));
        let name = format!("web-{}", version.replace('.', "-"));
        cni.mesh("default", &name);
        let netns = cni.netns_name(&name);
        let pod = meshlane::sim::Pod::create_chained(
            &netns,
            &cni.node.subnet,
            &net,
            &common::cni::k8s_args("default", &name),
        );
        // Run ADD a second time by hand to see every plugin's result.
        let pod = pod.unwrap_or_else(|e| panic!("{version}: ADD: {e:#}"));
        let att = pod.attachment().expect("chained pod").clone();
        let cached = pod.cni_result().expect("cached result").clone();
        assert_eq!(cached["cniVersion"], version, "{version}: {cached}");

        // Registered before ADD returned, keyed by its netns cookie.
        let info = meshlane::netns::inspect(&pod.netns).expect("netns");
        let reg = cni.registered();
        let rec = reg
            .get(&format!("default/{name}"))
            .unwrap_or_else(|| panic!("{version}: not registered: {reg:?}"));
        assert_eq!(rec.netns_cookie, info.cookie);
        assert!(rec.ips.contains(&pod.ip4.into()), "{version}: {rec:?}");
        assert!(rec.inbound_link && rec.netns_alive, "{version}: {rec:?}");
        assert_eq!(rec.mode, meshlane::pods::PodMode::Intercept);

        if version != "0.3.1" {
            net.check(&att, &cached)
                .unwrap_or_else(|e| panic!("{version}: CHECK: {e:#}"));
        }
        if version == "1.1.0" {
            net.status().expect("STATUS");
            net.gc(&[(att.container_id.clone(), att.ifname.clone())])
                .expect("GC");
            assert!(
                cni.registered().contains_key(&format!("default/{name}")),
                "GC removed a valid attachment"
            );
        }

        // DEL, then DEL again (idempotent), then DEL once the netns is gone.
        net.del(&att, Some(&cached)).expect("DEL");
        assert!(!cni.registered().contains_key(&format!("default/{name}")));
        cni.assert_no_pod_state(&format!("{version}: after DEL"));
        net.del(&att, Some(&cached)).expect("second DEL");
        drop(pod); // its own DEL, then the netns goes
        net.del(&att, Some(&cached))
            .expect("DEL with the netns gone");
        net.del(&att, None).expect("DEL without prevResult");
        cni.assert_no_pod_state(&format!("{version}: after repeated DELs"));
    }
    // The agent counted what it did: 4 registrations, 4 removals.
    let metrics = scrape(&agent);
    for line in [
        "meshlane_cni_requests_total{op=\"add\",outcome=\"registered\"} 4",
        "meshlane_cni_requests_total{op=\"del\",outcome=\"removed\"} 4",
        "meshlane_cni_requests_total{op=\"check\",outcome=\"done\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
}

#[test]
fn prev_result_is_passed_through_unchanged() {
    let cni = CniNode::new();
    let _agent = agent(&cni);
    for version in VERSIONS {
        let net = cni.network(version, json!({}));
        cni.mesh("default", "pass");
        let netns = cni.netns_name("pass");
        let pod = meshlane::sim::Pod::create_chained(
            &netns,
            &cni.node.subnet,
            &meshlane::sim::cni_runtime::Network::new(
                json!({"cniVersion": version, "name": net.list["name"], "plugins": [net.list["plugins"][0]]}),
                net.bin_dirs.clone(),
            ),
            &common::cni::k8s_args("default", "pass"),
        )
        .expect("bridge-only pod");
        // meshlane-cni alone, given the bridge's result as prevResult.
        let bridge_result = pod.cni_result().expect("result").clone();
        let mut conf = cni.plugin_entry(json!({}));
        conf["cniVersion"] = json!(version);
        conf["name"] = net.list["name"].clone();
        conf["prevResult"] = bridge_result.clone();
        let out = net
            .exec("meshlane-cni", "ADD", pod.attachment(), &conf)
            .expect("running meshlane-cni");
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
        assert_eq!(printed, bridge_result, "{version}: prevResult changed");
        // Same bytes, key order included.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            serde_json::to_string(&bridge_result).unwrap(),
            "{version}"
        );
        let mut del = conf.clone();
        del.as_object_mut().unwrap().remove("prevResult");
        let out = net
            .exec("meshlane-cni", "DEL", pod.attachment(), &del)
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{version}: DEL printed {:?}",
            out.stdout
        );
        drop(pod);
        cni.assert_no_pod_state(version);
    }
}

#[test]
fn traffic_is_intercepted_and_spliced_and_nothing_is_left_after_del() {
    let cni = CniNode::new();
    let _agent = agent(&cni);
    let net = cni.network("1.0.0", json!({}));
    cni.mesh("shop", "a");
    cni.mesh("shop", "b");
    let a = cni.pod(&net, "shop", "a").expect("pod a");
    let b = cni.pod(&net, "shop", "b").expect("pod b");
    let pins = cni.pod_link_pins();
    assert_eq!(pins.len(), 2, "{pins:?}");
    let link_ids: Vec<u64> = pins
        .iter()
        .map(|p| {
            support::bpftool_json(&["link", "show", "pinned", &p.to_string_lossy()])["id"]
                .as_u64()
                .expect("link id")
        })
        .collect();

    for pod in [&a, &b] {
        let rules = golden::ruleset(pod).expect("ruleset");
        assert!(
            !golden::has_nat(&rules),
            "nat rules in a CNI-registered pod:\n{rules}"
        );
    }
    let haproxy = SidecarKind::Haproxy(SidecarMode::Tcp);
    let sa = AnySidecar::start(&a, haproxy, 1337, 1337);
    let sb = AnySidecar::start(&b, haproxy, 1337, 1337);
    let srv = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let spliced = cni.node.counter("messages_spliced");
    let seen = app::probe(&a, SocketAddr::new(b.ip4.into(), 8080), As::default());
    match &seen {
        app::Seen::Served { server_peer, .. } => {
            assert_eq!(
                server_peer.to_string(),
                "127.0.0.6",
                "not through B's sidecar: {seen:?}"
            )
        }
        other => panic!("A -> B:8080 not served: {other:?}"),
    }
    assert_eq!((sa.sessions("outbound"), sb.sessions("inbound")), (1, 1));
    assert!(
        cni.node.counter("messages_spliced") > spliced,
        "sidecar hop not spliced"
    );
    drop((srv, sa, sb));

    // DEL through the chain (the runtime's order), then nothing remains.
    for pod in [&a, &b] {
        net.del(pod.attachment().unwrap(), pod.cni_result())
            .expect("DEL");
    }
    cni.assert_no_pod_state("after DEL");
    let alive = support::bpftool_ids("link");
    for id in link_ids {
        assert!(
            !alive.contains(&id),
            "link {id} of a deleted pod still exists"
        );
    }
}

#[test]
fn attachments_survive_an_agent_restart_and_gc_drops_unlisted_ones() {
    let cni = CniNode::new();
    let mut first = agent(&cni);
    let net = cni.network("1.1.0", json!({}));
    for name in ["keep", "stale"] {
        cni.mesh("default", name);
    }
    let keep = cni.pod(&net, "default", "keep").expect("pod keep");
    let stale = cni.pod(&net, "default", "stale").expect("pod stale");
    first.kill9();
    drop(first);
    let _second = agent(&cni);
    // The records outlived the agent: CHECK and GC still know the pods.
    for pod in [&keep, &stale] {
        net.check(pod.attachment().unwrap(), pod.cni_result().unwrap())
            .expect("CHECK after restart");
    }
    let k = keep.attachment().unwrap();
    net.gc(&[(k.container_id.clone(), k.ifname.clone())])
        .expect("GC");
    let reg = cni.registered();
    assert!(
        reg.contains_key("default/keep") && !reg.contains_key("default/stale"),
        "{reg:?}"
    );
    let err = net
        .check(stale.attachment().unwrap(), stale.cni_result().unwrap())
        .expect_err("CHECK of a collected attachment");
    assert!(
        err.to_string().contains("meshed but has no registration"),
        "{err:#}"
    );
    net.del(k, keep.cni_result()).expect("DEL after restart");
    drop((keep, stale));
    cni.assert_no_pod_state("after GC and DEL");
}

#[test]
fn unmeshed_and_excluded_pods_pass_and_unknown_ones_fail_closed() {
    let cni = CniNode::new();
    let net = cni.network("1.0.0", json!({"agentTimeoutSeconds": 2}));
    // No agent at all: a kube-system pod still starts, a default one fails.
    let sys = cni
        .pod(&net, "kube-system", "coredns")
        .expect("excluded pod blocked");
    cni.mesh("default", "web");
    let Err(err) = cni.pod(&net, "default", "web") else {
        panic!("a meshed pod started without the agent")
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("\"code\":11")
            && msg.contains("pod default/web")
            && msg.contains("unreachable"),
        "{msg}"
    );

    let _agent = agent(&cni);
    cni.unmesh("default", "plain");
    let plain = cni.pod(&net, "default", "plain").expect("unmeshed pod");
    assert!(cni.registered().is_empty(), "{:?}", cni.registered());

    // Unknown to the pod source: the agent waits (bounded), then refuses.
    let started = Instant::now();
    let Err(err) = cni.pod(&net, "default", "ghost") else {
        panic!("a pod unknown to the pod source started")
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("\"code\":100")
            && msg.contains("pod default/ghost")
            && msg.contains("not known"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    // The runtime retries once the pod source knows it.
    cni.mesh("default", "ghost");
    let ghost = cni.pod(&net, "default", "ghost").expect("retried ADD");
    assert!(cni.registered().contains_key("default/ghost"));
    drop((sys, plain, ghost));
    cni.assert_no_pod_state("after the pods went");
}

/// Istio's `istio-validation` init container (pilot's injection template
/// with `values.istio_cni.enabled`, istio-iptables `--run-validation`),
/// redone in Rust: as the proxy uid/gid it listens on 127.0.0.1:15001 and
/// 127.0.0.1:15006, dials 127.0.0.6:15002 from 127.0.0.1 every second and
/// passes once an accepted connection's SO_ORIGINAL_DST port is 15002; it
/// fails after the probe timeout (5 s by default).
mod istio_validation {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use nix::sys::socket::{getsockopt, sockopt};

    const PROBE_PORT: u16 = 15002;
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn listener(port: u16) -> std::io::Result<TcpListener> {
        use nix::sys::socket::{
            bind, listen, setsockopt, socket, AddressFamily, Backlog, SockFlag, SockType,
            SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::ReusePort, &true)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, port),
        )?;
        listen(&fd, Backlog::new(16).expect("backlog"))?;
        Ok(TcpListener::from(fd))
    }

    /// Runs the check on the calling thread (in the pod's netns, as the
    /// proxy's uid/gid): Ok(original port seen) or the reason it failed.
    pub fn run() -> Result<u16, String> {
        let (tx, rx) = mpsc::channel();
        let mut listening = 0;
        for port in [15001u16, 15006] {
            let Ok(l) = listener(port) else { continue };
            listening += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    let Ok(conn) = conn else { continue };
                    let port = getsockopt(&conn, sockopt::OriginalDst)
                        .map(|a| u16::from_be(a.sin_port))
                        .unwrap_or(0);
                    if tx.send(port).is_err() {
                        return;
                    }
                }
            });
        }
        if listening == 0 {
            return Err("no listener available".into());
        }
        let deadline = Instant::now() + TIMEOUT;
        let target = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 6), PROBE_PORT));
        while Instant::now() < deadline {
            let _ = dial_from_localhost(target);
            if let Ok(port) = rx.recv_timeout(Duration::from_secs(1)) {
                if port == PROBE_PORT {
                    return Ok(port);
                }
            }
        }
        Err("validation timeout".into())
    }

    fn dial_from_localhost(to: SocketAddr) -> std::io::Result<()> {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrStorage,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(to),
        )?;
        drop(TcpStream::from(fd));
        Ok(())
    }
}

#[test]
fn istio_validation_passes_in_a_cni_registered_pod() {
    let cni = CniNode::new();
    let _agent = agent(&cni);
    let net = cni.network("1.0.0", json!({}));
    cni.mesh("default", "validated");
    let pod = cni.pod(&net, "default", "validated").expect("pod");
    let seen = pod
        .run(|| {
            conformance::app::become_thread(1337, 1337);
            istio_validation::run()
        })
        .expect("entering the pod");
    assert_eq!(seen, Ok(15002), "istio-validation in a meshlane pod");

    // The same check fails where nothing redirects (an unregistered pod),
    // so it is not passing by accident.
    cni.unmesh("default", "bare");
    let bare = cni.pod(&net, "default", "bare").expect("unmeshed pod");
    let seen = bare
        .run(|| {
            conformance::app::become_thread(1337, 1337);
            istio_validation::run()
        })
        .expect("entering the pod");
    assert_eq!(seen, Err("validation timeout".to_string()));
    drop((pod, bare));
    cni.assert_no_pod_state("after the pods went");
}
