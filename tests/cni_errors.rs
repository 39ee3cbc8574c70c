//! Issue 13: meshlane-cni given bad input, run as a runtime runs it: each
//! case gets the CNI error object on stdout with the spec's code and a
//! message naming what was wrong (and the pod), a non-zero exit, and
//! leaves the registry as it was. Malformed JSON, missing or invalid
//! `CNI_*` variables, an unknown cniVersion, no prevResult, a netns path
//! that does not exist, no agent socket, a slow (stopped) agent.
mod common;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cni::{k8s_args, CniNode, PLUGIN};
use support::AgentProcess;

/// What one run of the plugin printed.
struct Ran {
    ok: bool,
    stdout: Value,
    raw: String,
    stderr: String,
}

fn run(env: &[(&str, &str)], stdin: &str) -> Ran {
    use std::io::Write;
    let mut c = Command::new(PLUGIN);
    c.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running meshlane-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    Ran {
        ok: out.status.success(),
        stdout: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts a CNI error with `code` whose msg + details hold every `want`.
fn assert_error(r: &Ran, code: u64, want: &[&str], case: &str) {
    assert!(!r.ok, "{case}: succeeded: {}", r.raw);
    assert_eq!(
        r.stdout["code"].as_u64(),
        Some(code),
        "{case}: {} / {}",
        r.raw,
        r.stderr
    );
    let text = format!("{} {}", r.stdout["msg"], r.stdout["details"]);
    for w in want {
        assert!(text.contains(w), "{case}: {w:?} not in {text}");
    }
    assert!(r.stdout["cniVersion"].is_string(), "{case}: {}", r.raw);
}

/// A node, its agent, and one bridge-wired pod (netns + prevResult) that
/// the catalog says is meshed.
struct World {
    cni: CniNode,
    agent: AgentProcess,
    pod: meshlane::sim::Pod,
    prev: Value,
}

impl World {
    fn new() -> Self {
        let cni = CniNode::new();
        let agent =
            AgentProcess::start_with_env(cni.root(), cni.node.cgroup.path(), &[], &cni.agent_env())
                .expect("agent");
        cni.mesh("default", "web");
        let pod = cni
            .pod(&cni.bridge_only("1.0.0"), "default", "web")
            .expect("pod");
        let prev = pod.cni_result().unwrap().clone();
        Self {
            cni,
            agent,
            pod,
            prev,
        }
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = self.cni.plugin_entry(json!({}));
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!("net");
        c["prevResult"] = self.prev.clone();
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    fn env<'a>(
        &'a self,
        command: &'a str,
        netns: &'a str,
        args: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", self.pod.name.as_str()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    }

    fn netns(&self) -> String {
        self.pod.netns.to_string_lossy().into_owned()
    }

    fn assert_unchanged(&self, case: &str) {
        let reg = self.cni.registered();
        assert!(reg.is_empty(), "{case}: registered {reg:?}");
        self.cni.assert_no_pod_state(case);
    }
}

#[test]
fn bad_input_gets_the_right_code_and_changes_nothing() {
    let w = World::new();
    let netns = w.netns();
    let args = k8s_args("default", "web");
    let conf = w.conf(json!({})).to_string();
    let add = w.env("ADD", &netns, &args);

    let r = run(&add, "{\"cniVersion\": \"1.0.0\", ");
    assert_error(&r, 6, &["not valid JSON"], "malformed JSON");
    w.assert_unchanged("malformed JSON");

    let r = run(&[("CNI_IFNAME", "eth0")], &conf);
    assert_error(&r, 4, &["CNI_COMMAND"], "no CNI_COMMAND");
    let r = run(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], &conf);
    assert_error(
        &r,
        4,
        &["CNI_CONTAINERID", "CNI_NETNS"],
        "ADD without its variables",
    );
    let mut bad_args = add.clone();
    bad_args[4] = ("CNI_ARGS", "K8S_POD_NAME");
    assert_error(
        &run(&bad_args, &conf),
        4,
        &["CNI_ARGS"],
        "malformed CNI_ARGS",
    );
    let mut bad_id = add.clone();
    bad_id[1] = ("CNI_CONTAINERID", "../../etc");
    assert_error(
        &run(&bad_id, &conf),
        4,
        &["CNI_CONTAINERID"],
        "container id with a path",
    );
    w.assert_unchanged("bad environment");

    for v in ["0.2.0", "2.0.0"] {
        let r = run(&add, &w.conf(json!({"cniVersion": v})).to_string());
        assert_error(
            &r,
            1,
            &[v, "0.3.1, 0.4.0, 1.0.0, 1.1.0"],
            "unknown cniVersion",
        );
    }
    let mut no_prev = w.conf(json!({}));
    no_prev.as_object_mut().unwrap().remove("prevResult");
    let r = run(&add, &no_prev.to_string());
    assert_error(
        &r,
        7,
        &["pod default/web", "prevResult", "chained"],
        "no prevResult",
    );
    let r = run(
        &add,
        &w.conf(json!({"excludeNamespaces": "kube-system"}))
            .to_string(),
    );
    assert_error(&r, 7, &["excludeNamespaces"], "a field of the wrong type");
    let r = run(
        &add,
        &w.conf(json!({"prevResult": {"ips": [{"address": "not-an-ip/24"}]}}))
            .to_string(),
    );
    assert_error(&r, 7, &["not-an-ip"], "a prevResult address that is no IP");
    w.assert_unchanged("bad configuration");

    let gone = w.env("ADD", "/run/netns/meshlane-no-such-netns", &args);
    let r = run(&gone, &conf);
    assert_error(
        &r,
        3,
        &["pod default/web", "meshlane-no-such-netns"],
        "netns missing",
    );
    w.assert_unchanged("netns missing");

    let r = run(
        &add,
        &w.conf(json!({"agentSocket": "/run/meshlane/no-agent-here.sock"}))
            .to_string(),
    );
    assert_error(
        &r,
        11,
        &["pod default/web", "unreachable", "failing closed"],
        "no agent socket",
    );
    w.assert_unchanged("no agent socket");

    // GC and STATUS are 1.1.0 commands.
    let r = run(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf,
    );
    assert_error(&r, 1, &["GC", "1.1.0"], "GC at 1.0.0");
    let status_down =
        w.conf(json!({"cniVersion": "1.1.0", "agentSocket": "/run/meshlane/no-agent-here.sock"}));
    let r = run(&[("CNI_COMMAND", "STATUS")], &status_down.to_string());
    assert_error(&r, 50, &["cannot serve ADD"], "STATUS without agent");
    let r = run(
        &[("CNI_COMMAND", "STATUS")],
        &w.conf(json!({"cniVersion": "1.1.0"})).to_string(),
    );
    assert!(
        r.ok && r.raw.is_empty(),
        "STATUS with the agent: {} {}",
        r.raw,
        r.stderr
    );
    let r = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert!(r.ok, "{}", r.raw);
    assert_eq!(
        r.stdout,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );

    // DEL never fails for want of an agent.
    let del = w.env("DEL", &netns, &args);
    let r = run(
        &del,
        &w.conf(json!({"agentSocket": "/run/meshlane/no-agent-here.sock"}))
            .to_string(),
    );
    assert!(
        r.ok && r.raw.is_empty(),
        "DEL without an agent: {} {}",
        r.raw,
        r.stderr
    );

    // After all that, a good ADD works: nothing was wedged.
    let r = run(&add, &conf);
    assert!(r.ok, "good ADD: {} {}", r.raw, r.stderr);
    assert!(w.cni.registered().contains_key("default/web"));
    let r = run(&del, &conf);
    assert!(r.ok, "DEL: {}", r.raw);
    w.assert_unchanged("after the good ADD and its DEL");
    drop(w.agent);
}

#[test]
fn a_slow_agent_times_out_and_registers_nothing_later() {
    let w = World::new();
    let netns = w.netns();
    let args = k8s_args("default", "web");
    let add = w.env("ADD", &netns, &args);
    let pid = nix::unistd::Pid::from_raw(w.agent.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let r = run(&add, &w.conf(json!({"agentTimeoutSeconds": 1})).to_string());
    let took = started.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_error(
        &r,
        11,
        &[
            "pod default/web",
            "did not answer within 1.0s",
            "nothing was registered",
        ],
        "slow agent",
    );
    assert!(took < Duration::from_secs(3), "the plugin waited {took:?}");
    // The agent reads the request once it runs again: past its deadline,
    // it registers nothing.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        w.assert_unchanged("after the agent resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = run(&add, &w.conf(json!({})).to_string());
    assert!(r.ok, "ADD once the agent runs: {} {}", r.raw, r.stderr);
    let r = run(&w.env("DEL", &netns, &args), &w.conf(json!({})).to_string());
    assert!(r.ok, "{}", r.raw);
    w.assert_unchanged("after DEL");
}
