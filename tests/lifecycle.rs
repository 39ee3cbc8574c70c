//! Agent lifecycle through the real binary: the long-running agent installs
//! on a private cgroup and pin root, is SIGKILLed while pod-to-pod traffic
//! flows (established and new connections stay spliced), is restarted and
//! adopts the pinned links (same link ids, no second attachment), and
//! `meshlane uninstall` leaves no program, map, link or pin of the install.
mod common;
mod support;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;
use support::*;

/// The programs in `ids` that are not sockhash (sk_msg, sk_skb) programs.
fn not_sockmap_programs(ids: &InstallIds) -> Vec<serde_json::Value> {
    ids.progs
        .iter()
        .filter_map(|id| bpftool_json_opt(&["prog", "show", "id", &id.to_string()]))
        .filter(|p| p["type"] != "sk_msg" && p["type"] != "sk_skb")
        .collect()
}

fn wait_until_gone(ids: &InstallIds, limit: Duration) -> InstallIds {
    let end = Instant::now() + limit;
    loop {
        let alive = ids.still_alive();
        if alive.is_empty() || Instant::now() > end {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_sigkill_restart_adopts_and_uninstall_removes_everything() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_path_buf();
    assert!(
        cgroup_ml_attachments(&cg).is_empty(),
        "fresh test cgroup already has programs"
    );

    // --- the long-running agent installs ---
    let mut agent = AgentProcess::start(&root, &cg).expect("agent starts");
    let server = node.pod("srv").expect("server pod");
    let client = node.pod("cli").expect("client pod");
    add_self_proxied_pod(&root, &server, None);
    add_self_proxied_pod(&root, &client, None);

    let st = status_json(&root);
    let pods = st["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 2, "{st}");
    assert!(pods.iter().all(|p| p["mode"] == "accelerate"), "{st}");
    let links_before = link_ids(&st);
    assert!(
        links_before.iter().any(|(p, _)| p == "ml_sockops")
            && links_before.iter().any(|(p, _)| p == "ml_splice_msg"),
        "status lacks the splice links: {links_before:?}"
    );
    let attached_before = cgroup_ml_attachments(&cg);
    assert!(
        !attached_before.is_empty(),
        "nothing attached to the cgroup"
    );
    for (_, name) in &attached_before {
        assert!(
            links_before.iter().any(|(p, _)| p == name),
            "{name} is attached to the cgroup but not pinned by meshlane"
        );
    }
    let mut all_ids = InstallIds::read(&root);
    let gen1_progs = all_ids.progs.clone();

    // --- traffic: one long-lived pod-to-pod echo conversation ---
    let srv = echo_server(&server, "0.0.0.0:0".parse().unwrap());
    let srv_addr: SocketAddr = format!("{}:{}", server.ip4, srv.port()).parse().unwrap();
    let conv = EchoConversation::start(connect_from(&client, srv_addr), 7);
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation starts");
    assert!(
        counters(&root)["messages_spliced"] > 0,
        "conversation not spliced before the kill"
    );

    // --- SIGKILL while the conversation runs ---
    let st = agent.kill9();
    assert_eq!(st.signal(), Some(9), "agent did not die of SIGKILL: {st}");
    assert_eq!(
        link_ids(&status_json(&root)),
        links_before,
        "links changed when the agent died"
    );
    conversation_is_spliced(&root, &conv);
    new_connection_is_spliced(&root, &client, srv_addr, 11);
    conv.resume();

    // --- restart: adopt, never attach twice ---
    let agent2 = AgentProcess::start(&root, &cg).expect("agent restarts");
    let log = agent2.log_lines().join("\n");
    assert!(
        log.contains("adopted"),
        "restarted agent did not adopt: {log}"
    );
    assert!(
        !log.contains("\"attached\""),
        "restarted agent attached anew: {log}"
    );
    let st = status_json(&root);
    assert_eq!(
        link_ids(&st),
        links_before,
        "link ids differ after the restart"
    );
    let attached_after = cgroup_ml_attachments(&cg);
    let names = |v: &[(u64, String)]| {
        let mut n: Vec<String> = v.iter().map(|x| x.1.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(
        attached_after.len(),
        attached_before.len(),
        "attachments on the cgroup: before {attached_before:?}, after {attached_after:?}"
    );
    assert_eq!(names(&attached_after), names(&attached_before));
    let gen2 = InstallIds::read(&root);
    all_ids.extend(&gen2);
    // The programs the first agent loaded were swapped out, not kept beside.
    let old_only = InstallIds {
        progs: gen1_progs.difference(&gen2.progs).copied().collect(),
        ..Default::default()
    };
    assert!(
        !old_only.progs.is_empty(),
        "restart did not load new programs"
    );
    // Sockets already in the sockhash hold their own reference to the
    // sockhash programs of the time they joined (kernel psock semantics), so
    // those stay until the conversation closes; everything else must go.
    let end = Instant::now() + Duration::from_secs(20);
    let kept = loop {
        let kept = not_sockmap_programs(&old_only.still_alive());
        if kept.is_empty() || Instant::now() > end {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        kept.is_empty(),
        "programs of the first agent still loaded after adoption: {kept:?}"
    );
    conversation_is_spliced(&root, &conv);
    new_connection_is_spliced(&root, &client, srv_addr, 13);
    conv.resume();
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation after restart");

    // --- uninstall while the conversation still flows ---
    let mut agent2 = agent2;
    cli_ok(&root, &["uninstall"]);
    assert!(!root.exists(), "pin root {} still exists", root.display());
    assert!(
        cgroup_ml_attachments(&cg).is_empty(),
        "programs still attached to the cgroup: {:?}",
        cgroup_ml_attachments(&cg)
    );
    // The agent stays up, unready, saying why; SIGTERM stops it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent2
        .log_lines()
        .iter()
        .any(|l| l.contains("pins are gone"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not notice the uninstall: {:?}",
            agent2.log_lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent2.sigterm();
    let st = agent2
        .wait_exit(Duration::from_secs(30))
        .expect("agent exits on SIGTERM after uninstall");
    assert!(st.success(), "{st}");
    // The established connection finishes its work, byte-exact.
    conv.wait_progress(256 * 1024, Duration::from_secs(120))
        .expect("established connection keeps working after uninstall");
    let rounds = conv.finish().expect("conversation stayed byte-exact");
    assert!(rounds > 0);
    // New connections take plain TCP.
    let data = payload(256 * 1024, 3);
    assert_eq!(echo_from(&client, srv_addr, data.clone(), 4096), data);
    // Sockets that were spliced hold the sockhash programs (and through them
    // the maps) until they close; with every connection closed, nothing of
    // the install is left in the kernel.
    let left = wait_until_gone(&all_ids, Duration::from_secs(30));
    assert!(
        left.is_empty(),
        "objects of the install survive uninstall: {left:?} (install was {all_ids:?})"
    );
}

/// No agent needs to run for the data path: `agent --once` installs and
/// exits, pods registered afterwards are spliced, and a long-running agent
/// stopped with SIGTERM exits 0 and leaves everything pinned and working.
#[test]
fn data_path_needs_no_running_agent_and_sigterm_keeps_it() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();

    let report: serde_json::Value = serde_json::from_str(&cli_ok(
        &root,
        &["--json", "agent", "--once", "--cgroup", &cg],
    ))
    .expect("agent --once --json");
    let actions: Vec<&str> = report["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(
        !actions.is_empty() && actions.iter().all(|a| *a == "attached"),
        "{report}"
    );
    // Registered after the installing process is gone.
    let server = node.pod("srv").expect("server pod");
    let client = node.pod("cli").expect("client pod");
    add_self_proxied_pod(&root, &server, None);
    add_self_proxied_pod(&root, &client, None);
    let links = link_ids(&status_json(&root));
    let srv = echo_server(&server, "0.0.0.0:0".parse().unwrap());
    let srv_addr: SocketAddr = format!("{}:{}", server.ip4, srv.port()).parse().unwrap();
    new_connection_is_spliced(&root, &client, srv_addr, 21);

    let mut agent = AgentProcess::start(&root, node.cgroup.path()).expect("agent starts");
    // Traffic flows while the agent drains.
    let conv = EchoConversation::start(connect_from(&client, srv_addr), 9);
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation before SIGTERM");
    agent.sigterm();
    let st = agent
        .wait_exit(Duration::from_secs(30))
        .expect("agent exits on SIGTERM");
    assert!(st.success(), "agent exit on SIGTERM: {st}");
    assert!(
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("data path stays pinned")),
        "{:?}",
        agent.log_lines()
    );
    assert_eq!(link_ids(&status_json(&root)), links, "links changed");
    conv.wait_progress(256 * 1024, Duration::from_secs(60))
        .expect("conversation after the agent drained");
    conversation_is_spliced(&root, &conv);
    assert!(conv.finish().expect("byte-exact through the drain") > 0);
    new_connection_is_spliced(&root, &client, srv_addr, 22);
}

/// One agent per pin root. While an agent runs, a second one exits with
/// one line naming the pin root and changes nothing. Then three agents
/// started at once on a fresh pin root, 20 times: each time the pin root
/// ends holding exactly a full install (the pins of a reference install),
/// at least one agent succeeded, and any other exited with that line
/// (before the lock, one agent's rollback could delete the others' pins;
/// here the agents' start-up probes usually serialize them anyway).
#[test]
fn concurrent_agents_leave_exactly_one_full_install() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_string_lossy().into_owned();
    let mut running = AgentProcess::start(&root, node.cgroup.path()).expect("agent starts");
    let reference = pins_under(&root);
    let out = cli(&root, &["agent", "--once", "--cgroup", &cg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.lines().count() == 1
            && err.contains("in use by another meshlane agent")
            && err.contains(&*root.to_string_lossy()),
        "a second agent on a held pin root: {} {err}",
        out.status
    );
    assert_eq!(
        pins_under(&root),
        reference,
        "the second agent changed pins"
    );
    running.kill9();
    cli_ok(&root, &["uninstall"]);
    for round in 0..20 {
        let agents: Vec<std::process::Child> = (0..3)
            .map(|_| {
                std::process::Command::new(BIN)
                    .arg("--pin-root")
                    .arg(&root)
                    .args(["agent", "--once", "--cgroup", &cg])
                    .env("RUST_LOG", "warn")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("starting an agent")
            })
            .collect();
        let mut installed = 0;
        for a in agents {
            let out = a.wait_with_output().expect("agent exit");
            if out.status.success() {
                installed += 1;
                continue;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.lines().count() == 1 && err.contains("in use by another meshlane agent"),
                "round {round}: an agent failed otherwise: {err}"
            );
        }
        assert!(installed >= 1, "round {round}: no agent installed");
        assert_eq!(
            pins_under(&root),
            reference,
            "round {round}: not one full install"
        );
        cli_ok(&root, &["uninstall"]);
    }
}
