//! Issue 13 item 4: adoption and garbage collection from the pod source.
//! Pods running before the agent starts are registered by the agent from
//! its static pod source (one by its listed netns, one found by its IP
//! through the netns scan) and their traffic is intercepted afterwards; a
//! pod removed from the source, or opted out, is released; a pod the
//! source lists without a proxy, and a pod registered by hand that the
//! source does not list, are never touched; an invalid file is one error
//! line and the last good listing stays in force.
mod common;
mod conformance;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::app::{self, As};
use conformance::native_sidecar::NativeSidecar;
use meshlane::pods::PodRecord;
use support::{admin_get, cli_ok, node_without_install, AgentProcess};

fn registered(root: &Path) -> Vec<PodRecord> {
    serde_json::from_str(&cli_ok(root, &["--json", "pod", "list"])).expect("pod list JSON")
}

fn names(root: &Path) -> Vec<String> {
    registered(root).into_iter().map(|p| p.name).collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the static pod file atomically (the agent may read it anytime).
fn write_pods(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing pod file");
    std::fs::rename(&tmp, path).expect("renaming pod file");
}

#[test]
fn static_source_adopts_running_pods_and_releases_removed_ones() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let web = node.pod("web").expect("pod");
    let api = node.pod("api").expect("pod");
    let plain = node.pod("plain").expect("pod");
    let manual = node.pod("manual").expect("pod");
    let server = node.pod("server").expect("pod");
    let _srv = app::http_server(&server, "0.0.0.0:8080".parse().unwrap());
    let target = SocketAddr::new(server.ip4.into(), 8080);
    let web_proxy = NativeSidecar::start_on(&web, 1337, 1337, 15001, 15006);
    let plain_proxy = NativeSidecar::start_on(&plain, 1337, 1337, 15001, 15006);

    // Before the agent: nothing is intercepted.
    app::probe(&web, target, As::default());
    assert_eq!(web_proxy.sessions("outbound"), 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let pods = dir.path().join("pods.yaml");
    let listing = |web_extra: &str, with_api: bool| {
        let mut t = format!(
            "pods:\n\
             - namespace: default\n  name: web\n  netns: {}\n{web_extra}\
             - namespace: default\n  name: plain\n  ips: [{}]\n  proxy: none\n",
            web.netns.display(),
            plain.ip4
        );
        if with_api {
            t += &format!(
                "- namespace: shop\n  name: api\n  ips: [{}]\n  annotations:\n    traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\"\n",
                api.ip4
            );
        }
        t
    };
    write_pods(&pods, &listing("", true));
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "podSource:\n  kind: static\n  staticFile: {}\n",
            pods.display()
        ),
    )
    .expect("writing agent config");

    // Install first (the agent installs too; registering by hand needs the
    // maps), then register a pod the source does not list.
    let mut agent = AgentProcess::start_with(
        &root,
        node.cgroup.path(),
        &["--config", &config.to_string_lossy()],
    )
    .expect("agent");
    cli_ok(
        &root,
        &[
            "pod",
            "add",
            "--name",
            "manual",
            "--netns",
            &manual.netns.to_string_lossy(),
        ],
    );

    wait_for("web and api adopted", || {
        let n = names(&root);
        n.contains(&"default/web".to_string()) && n.contains(&"shop/api".to_string())
    });
    let regs = registered(&root);
    let api_rec = regs.iter().find(|p| p.name == "shop/api").expect("api");
    assert_eq!(api_rec.ips, vec![std::net::IpAddr::V4(api.ip4)]);
    assert!(
        api_rec
            .exclude_outbound_ports
            .split(',')
            .any(|p| p == "5432"),
        "{api_rec:?}"
    );
    assert!(
        !names(&root).iter().any(|n| n.contains("plain")),
        "plain registered"
    );

    // web's traffic is intercepted now; plain's is not.
    app::probe(&web, target, As::default());
    assert_eq!(web_proxy.sessions("outbound"), 1, "web not intercepted");
    app::probe(&plain, target, As::default());
    assert_eq!(plain_proxy.sessions("outbound"), 0, "plain intercepted");

    // api leaves the source: released; the hand-made one stays.
    write_pods(&pods, &listing("", false));
    wait_for("api released", || {
        !names(&root).contains(&"shop/api".to_string())
    });
    let n = names(&root);
    assert!(
        n.contains(&"manual".to_string()) && n.contains(&"default/web".to_string()),
        "{n:?}"
    );

    // An invalid file: one error line naming it; the listing stays.
    write_pods(
        &pods,
        "pods:\n- namespace: default\n  name: web\n  proxy: envoy\n",
    );
    wait_for("the bad file is reported", || {
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("pods.yaml") && l.contains("envoy"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let errors = agent
        .log_lines()
        .iter()
        .filter(|l| l.contains("pods.yaml") && l.contains("envoy"))
        .count();
    assert_eq!(errors, 1, "{:?}", agent.log_lines());
    assert!(names(&root).contains(&"default/web".to_string()));

    // web opts out: released, and no longer intercepted.
    write_pods(
        &pods,
        &listing("  annotations: {meshlane.io/enabled: \"false\"}\n", false),
    );
    wait_for("web released", || {
        !names(&root).contains(&"default/web".to_string())
    });
    app::probe(&web, target, As::default());
    assert_eq!(web_proxy.sessions("outbound"), 1, "web still intercepted");
    assert_eq!(names(&root), vec!["manual".to_string()]);
    agent.kill9();
}

/// GET `path` on the admin server: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_get(addr, path).expect("admin server answers")
}

#[test]
fn readiness_waits_for_the_pod_source() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let pods = dir.path().join("pods.yaml");
    let config = dir.path().join("agent.yaml");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    std::fs::write(
        &config,
        format!(
            "adminAddr: {admin}\npodSource:\n  kind: static\n  staticFile: {}\n",
            pods.display()
        ),
    )
    .expect("writing agent config");
    let mut agent = AgentProcess::start_with(
        &root,
        node.cgroup.path(),
        &["--config", &config.to_string_lossy()],
    )
    .expect("agent");
    // No pod file yet: swept, but not ready, saying why; the missing file
    // is one error line.
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = http_get(admin, "/healthz/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pod source not synced"), "{body}");
    assert!(!body.contains("not swept"), "{body}");
    let missing = agent
        .log_lines()
        .iter()
        .filter(|l| l.contains("pods.yaml") && l.contains("No such file"))
        .count();
    assert_eq!(missing, 1, "{:?}", agent.log_lines());
    write_pods(&pods, "pods: []\n");
    wait_for("ready once the pod file is read", || {
        http_get(admin, "/healthz/ready").0 == 200
    });
    agent.kill9();
}

#[test]
fn kubernetes_source_outside_a_cluster_is_one_line_and_installs_nothing() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "podSource:\n  kind: kubernetes\n  nodeName: node-a\n",
    )
    .expect("writing agent config");
    let out = std::process::Command::new(support::BIN)
        .arg("--pin-root")
        .arg(&root)
        .args(["agent", "--config", &config.to_string_lossy(), "--cgroup"])
        .arg(node.cgroup.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("in-cluster"), "{stderr}");
    assert!(!node.layout.maps_dir().exists(), "installed anyway");
}
