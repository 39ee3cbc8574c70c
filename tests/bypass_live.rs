//! Issue 11: the agent's live bypass decisions, end to end. A real agent
//! (simulated node, static pod source, bypass enabled) runs its xDS
//! client against the in-process ADS server, which serves the pod a
//! plaintext service and an mTLS one; `meshlane explain --pod` shows
//! BYPASS for the first and SIDECAR for the second with the stream state,
//! an EDS change (an endpoint removed) shows up within a bounded time,
//! the metrics count the decisions, the errors (no agent, unknown pod)
//! are one line, and a SIGHUP re-reads `bypass.policies` (a bad file is
//! refused with one line, the old policies kept). Needs root (the agent installs the data path).
mod common;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::google::protobuf::Any;
use meshlane::sim::unique_tag;
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, Protocol, Service, Snapshot};
use meshlane::sim::SidecarMode;
use prost::{Message, Name};
use serde_json::Value;
use support::{cli, node_without_install, AgentProcess};

/// How long an EDS change may take to reach `explain --pod`.
const EDS_LIMIT: Duration = Duration::from_secs(5);

fn services(plain_endpoints: &[&str]) -> Vec<Service> {
    vec![
        Service {
            host: "plain.default.svc.cluster.local".into(),
            vip: IpAddr::from([10, 96, 0, 10]),
            port: 5432,
            protocol: Protocol::Tcp,
            endpoints: plain_endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        },
        Service {
            host: "secure.default.svc.cluster.local".into(),
            vip: IpAddr::from([10, 96, 0, 11]),
            port: 6379,
            protocol: Protocol::Tcp,
            endpoints: vec!["10.244.2.1:6379".parse().unwrap()],
        },
    ]
}

/// The snapshot, with `secure`'s cluster using TLS to its endpoints.
fn snapshot(version: &str, plain_endpoints: &[&str]) -> Snapshot {
    let svcs = services(plain_endpoints);
    let mut snap = sidecar_snapshot(version, SidecarMode::Http, false, &svcs);
    let secure = svcs[1].cluster();
    let held = snap.select(&Cluster::type_url(), std::slice::from_ref(&secure));
    let mut tls = Cluster::decode(held[0].value.as_slice()).expect("the sim's cluster");
    tls.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
                    .into(),
            value: Vec::new(),
        })),
    });
    snap.add(secure, &tls);
    snap
}

fn explain(root: &Path, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let out = cli(root, &all);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn destination<'a>(live: &'a Value, addr: &str) -> &'a Value {
    live["decisions"]["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| {
            format!(
                "{}:{}",
                d["destination"]["address"].as_str().unwrap_or_default(),
                d["destination"]["port"]
            ) == addr
        })
        .unwrap_or_else(|| panic!("no destination {addr}: {live}"))
}

fn endpoints(d: &Value) -> Vec<String> {
    d["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}:{}",
                        e["address"].as_str().unwrap_or_default(),
                        e["port"]
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    resp
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[test]
fn explain_pod_shows_live_decisions_that_follow_eds() {
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let web = node.pod("web").expect("pod");
    let dir = tempfile::tempdir().expect("tempdir");
    let ads = AdsServer::start(
        &dir.path().join(unique_tag("ads-")),
        snapshot("1", &["10.244.1.1:5432", "10.244.1.2:5432"]),
    )
    .expect("ADS server");

    // No agent yet: one clear line.
    let err = explain(&root, &["--pod", "default/web"]).expect_err("no agent");
    assert!(err.contains("no agent listens"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let pods = dir.path().join("pods.yaml");
    std::fs::write(
        &pods,
        format!(
            "pods:\n- namespace: default\n  name: web\n  ips: [{}]\n",
            web.ip4
        ),
    )
    .expect("pod file");
    let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let config = dir.path().join("agent.yaml");
    // The agent's config with these lines under `bypass:`.
    let agent_yaml = |bypass: &str| {
        format!(
            "adminAddr: {admin}\npodSource:\n  kind: static\n  staticFile: {}\nbypass:\n  enabled: true\n{bypass}xds:\n  address: unix:{}\n  initialBackoffMillis: 50\n",
            pods.display(),
            ads.socket().display()
        )
    };
    std::fs::write(&config, agent_yaml("")).expect("agent config");
    let agent = AgentProcess::start_with(
        &root,
        node.cgroup.path(),
        &["--config", &config.to_string_lossy()],
    )
    .expect("agent");

    // Until the stream has synced and the pod is decided.
    let deadline = Instant::now() + Duration::from_secs(20);
    let live: Value = loop {
        match explain(&root, &["--json", "--pod", "default/web"]) {
            Ok(out) => break serde_json::from_str(&out).expect("explain JSON"),
            Err(e) => {
                assert!(
                    e.contains("has no xDS stream") || e.contains("not yet synced"),
                    "{e}"
                );
                assert!(Instant::now() < deadline, "never decided: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(live["connected"], true, "{live}");
    assert_eq!(live["synced"], true, "{live}");
    assert_eq!(live["stale"], false, "{live}");
    let plain = destination(&live, "10.96.0.10:5432");
    assert_eq!(plain["decision"], "BYPASS", "{plain}");
    assert_eq!(
        endpoints(plain),
        ["10.244.1.1:5432", "10.244.1.2:5432"],
        "{plain}"
    );
    let secure = destination(&live, "10.96.0.11:6379");
    assert_eq!(secure["decision"], "SIDECAR", "{secure}");
    assert!(secure["reasons"].to_string().contains("tls"), "{secure}");

    // The table says the same, with the stream state first.
    let table = explain(&root, &["--pod", "default/web"]).expect("table");
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("connected yes, synced yes"),
        "{table}"
    );
    assert!(
        table.contains("10.96.0.10:5432") && table.contains("BYPASS"),
        "{table}"
    );

    // One endpoint removed: the decision follows within EDS_LIMIT.
    let changed = Instant::now();
    ads.update(snapshot("2", &["10.244.1.2:5432"]));
    loop {
        let out = explain(&root, &["--json", "--pod", "default/web"]).expect("explain");
        let live: Value = serde_json::from_str(&out).expect("explain JSON");
        if endpoints(destination(&live, "10.96.0.10:5432")) == ["10.244.1.2:5432"] {
            break;
        }
        assert!(
            changed.elapsed() < EDS_LIMIT,
            "EDS change not decided: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "EDS change reached explain --pod in {:?}",
        changed.elapsed()
    );

    // Summary, unknown pod, metrics.
    let summary = explain(&root, &["--summary", "--pod", "default/web"]).expect("summary");
    assert!(
        summary.contains("BYPASS") && summary.contains("SIDECAR"),
        "{summary}"
    );
    let err = explain(&root, &["--pod", "default/nope"]).expect_err("unknown pod");
    assert!(err.contains("default/nope has no xDS stream"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = explain(&root, &["--pod", "nope"]).expect_err("bad pod");
    assert!(err.contains("NAMESPACE/NAME"), "{err}");

    let m = metrics(admin);
    assert!(
        metric(&m, "meshlane_bypass_destinations{result=\"bypass\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "meshlane_bypass_destinations{result=\"sidecar\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "meshlane_bypass_pods_decided"), 1.0, "{m}");
    assert!(
        metric(&m, "meshlane_bypass_redecides_total{kind=\"clusters\"}") >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("# HELP meshlane_bypass_redecide_duration_seconds"),
        "{m}"
    );
    assert!(m.contains("meshlane_bypass_sidecar_reasons{reason="), "{m}");

    // The policies change without a restart: SIGHUP re-reads them, and
    // every pod is decided again (the sim's clusters balance by least
    // request, which leastRequestAsWeightedRandom off keeps on the sidecar).
    let sighup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP to the agent")
    };
    std::fs::write(
        &config,
        agent_yaml("  policies:\n    leastRequestAsWeightedRandom: false\n"),
    )
    .expect("agent config");
    sighup();
    let changed = Instant::now();
    loop {
        let out = explain(&root, &["--json", "--pod", "default/web"]).expect("explain");
        let live: Value = serde_json::from_str(&out).expect("explain JSON");
        let plain = destination(&live, "10.96.0.10:5432");
        if plain["decision"] == "SIDECAR" {
            assert!(
                plain["reasons"].to_string().contains("lb_policy"),
                "{plain}"
            );
            break;
        }
        assert!(
            changed.elapsed() < EDS_LIMIT,
            "policy change not decided: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A bad file changes nothing: one warning, the old policies stay.
    std::fs::write(
        &config,
        agent_yaml("  policies:\n    bypassEverything: true\n"),
    )
    .expect("agent config");
    sighup();
    let refused = |l: &String| l.contains("not reloaded") && l.contains("bypassEverything");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log_lines().iter().any(refused) {
        assert!(Instant::now() < deadline, "{:#?}", agent.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.log_lines().iter().filter(|l| refused(l)).count(), 1);
    let out = explain(&root, &["--json", "--pod", "default/web"]).expect("explain");
    let live: Value = serde_json::from_str(&out).expect("explain JSON");
    assert_eq!(destination(&live, "10.96.0.10:5432")["decision"], "SIDECAR");
}
