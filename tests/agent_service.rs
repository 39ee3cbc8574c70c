//! Issue 10: the agent as a service. Readiness is true only once the data
//! path is installed and the pod registry swept, and false after an
//! uninstall; the metrics endpoint parses as Prometheus text with HELP and
//! TYPE for every family; a wrong config field is one line naming it.
mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{admin_get, cli_ok, node_without_install, AgentProcess};

/// GET `path` on the admin server: (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_get(addr, path).expect("admin server answers")
}

fn wait_code(addr: SocketAddr, path: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(addr, path);
        if code == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every family in `text` has HELP and TYPE, names carry the prefix, and
/// the whole parses as Prometheus text.
fn check_exposition(text: &str) {
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).expect("Prometheus text parser");
    assert!(!scrape.samples.is_empty(), "no samples: {text}");
    for s in &scrape.samples {
        assert!(s.metric.starts_with("meshlane_"), "{}", s.metric);
        let family = s.metric.trim_end_matches("_total");
        let has = |kind: &str| {
            text.lines()
                .any(|l| l.starts_with(&format!("# {kind} {family} ")))
        };
        assert!(
            has("HELP") && has("TYPE"),
            "{} lacks HELP or TYPE",
            s.metric
        );
    }
    for name in [
        "meshlane_datapath_bytes_spliced_total",
        "meshlane_pods",
        "meshlane_agent_sweeps_total",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing: {text}"
        );
    }
}

#[test]
fn readiness_follows_the_install_and_metrics_parse() {
    let node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let agent =
        AgentProcess::start_with(&root, node.cgroup.path(), &["--admin-addr", "127.0.0.1:0"])
            .expect("agent");
    let addr = agent.admin_addr();
    assert_eq!(get(addr, "/healthz/live").0, 200);
    wait_code(addr, "/healthz/ready", 200);
    let (code, metrics) = get(addr, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    check_exposition(&metrics);
    assert_eq!(get(addr, "/nothing").0, 404);

    cli_ok(&root, &["uninstall"]);
    let why = wait_code(addr, "/healthz/ready", 503);
    assert!(why.contains("pins missing"), "{why}");
    // A broken data path is an error on the metrics endpoint, not zeros.
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ml_counters"), "{body}");
}

#[test]
fn check_config_accepts_the_example_and_names_each_wrong_field() {
    // No --pin-root: the file's pinRoot counts (a flag would override it).
    let check = |file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshlane"))
            .args(["agent", "--check-config", file])
            .env_remove("MESHLANE_PIN_ROOT")
            .output()
            .expect("running meshlane")
    };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agent-config.yaml");
    let out = check(example);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sockhashSize: 65536"), "{text}");
    // The kernel's BPF run statistics stay off unless asked for (flag or
    // environment).
    assert!(text.contains("bpfRunStats: false"), "{text}");
    for (flag, env) in [(true, None), (false, Some("true"))] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshlane"));
        cmd.args(["agent", "--check-config", example])
            .env_remove("MESHLANE_PIN_ROOT")
            .env_remove("MESHLANE_BPF_RUN_STATS");
        if flag {
            cmd.arg("--bpf-run-stats");
        }
        if let Some(v) = env {
            cmd.env("MESHLANE_BPF_RUN_STATS", v);
        }
        let out = cmd.output().expect("running meshlane");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bpfRunStats: true"),
            "flag {flag}, env {env:?}: {text}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (yaml, field) in [
        ("sockhashSiz: 10", "sockhashSiz"),
        ("sockhashSize: 8", "sockhashSize"),
        ("sockhashSize: lots", "sockhashSize"),
        ("pinRoot: relative", "pinRoot"),
        ("cgroup: rel/cg", "cgroup"),
        ("verdictRemedy: maybe", "maybe"),
        ("adminAddr: localhost", "adminAddr"),
        ("logFormat: xml", "xml"),
        ("logIntervalSeconds: 0", "logIntervalSeconds"),
        ("drainSeconds: 0", "drainSeconds"),
        ("intercept: perhaps", "intercept"),
        ("bpfRunStats: sometimes", "bpfRunStats"),
    ] {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, format!("{yaml}\n")).expect("writing config");
        let out = check(&f.to_string_lossy());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}: accepted");
        assert_eq!(err.trim().lines().count(), 1, "{yaml}: {err}");
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

/// 50 concurrent `pod add`/`pod rm` through the agent's socket (10 pods,
/// each added and removed by racing commands) leave a consistent registry:
/// every address and link belongs to a recorded pod, every recorded pod's
/// addresses are its own, and a sweep finds nothing to remove.
#[test]
fn concurrent_requests_through_the_socket_keep_the_registry_consistent() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let agent = AgentProcess::start(&root, node.cgroup.path()).expect("agent");
    let socket = meshlane::api::socket_path(&root);
    assert!(socket.exists(), "no API socket at {}", socket.display());
    let pods: Vec<_> = (0..10)
        .map(|i| node.pod(&format!("p{i}")).expect("pod"))
        .collect();
    let netns: Vec<String> = pods
        .iter()
        .map(|p| p.netns.to_string_lossy().into_owned())
        .collect();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let (root, ns) = (root.clone(), netns[i % 10].clone());
            std::thread::spawn(move || {
                let op = if i % 5 == 4 { "rm" } else { "add" };
                let out = support::cli(&root, &["pod", op, "--netns", &ns]);
                (
                    op,
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        })
        .collect();
    for t in threads {
        let (op, ok, err) = t.join().expect("client thread");
        // An rm may find nothing to remove; an add never fails.
        assert!(
            ok || (op == "rm" && err.contains("no pod is registered")),
            "{op}: {err}"
        );
        assert!(err.trim().lines().count() <= 1, "{op}: {err}");
    }
    assert!(
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("pod registered")),
        "the adds did not go through the agent: {:?}",
        agent.log_lines()
    );
    let list: serde_json::Value =
        serde_json::from_str(&cli_ok(&root, &["--json", "pod", "list"])).expect("pod list");
    let recorded = list.as_array().expect("pods");
    for p in recorded {
        // `pod add` names a pod after its netns file.
        let pod = pods
            .iter()
            .find(|x| {
                x.netns
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    == p["name"].as_str().map(String::from)
            })
            .unwrap_or_else(|| panic!("unknown pod recorded: {p}"));
        let ips: Vec<String> = p["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect();
        assert_eq!(ips, vec![pod.ip4.to_string()], "{p}");
        assert_eq!(p["netns_alive"], true, "{p}");
    }
    let status = support::status_json(&root);
    let entries = |map: &str| {
        status["maps"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == map))
            .and_then(|m| m["entries"].as_u64())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(entries("ml_pods"), recorded.len() as u64, "{status}");
    assert_eq!(entries("ml_pod_ips"), recorded.len() as u64, "{status}");
    let links = std::fs::read_dir(node.layout.pod_links_dir()).map_or(0, |d| d.count());
    assert_eq!(links, recorded.len(), "pod links");
    let swept: serde_json::Value =
        serde_json::from_str(&cli_ok(&root, &["--json", "pod", "sweep"])).expect("sweep");
    assert_eq!(swept, serde_json::json!([]), "leftovers: {swept}");
}
