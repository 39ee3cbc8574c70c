//! What the Helm chart does to a node, on the simulated node: the chart is
//! rendered with Helm's engine (tests/helm) and its containers' commands and
//! ConfigMap are run as the kubelet would run them, with the one
//! translation a pod's mounts make (the chart's container paths -> this
//! node's cgroup, CNI dirs and config file).
//!
//! Each container runs as root with exactly the capabilities its
//! securityContext adds (setpriv), so the narrowed set is proven enough.
//!
//! - Rolling update: the agent pod is replaced (SIGTERM to the old agent,
//!   the new pod's init `agent --once`, then the new agent) while a
//!   pod-to-pod conversation runs; it never stops, stays byte-exact and
//!   spliced, a connection opened while no agent runs is spliced too, the
//!   links are the same ones (adopted) and the new agent turns ready.
//! - Uninstall: the agent pod is replaced by a cleanup-mode pod whose init
//!   commands run; afterwards no pin, link, program or map of the install is
//!   left, nothing is attached to the cgroup, and the node's CNI directories
//!   (conflist and binaries) are as they were before meshlane.
mod common;
mod helm;
mod support;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use meshlane::sim::{Node, Pod};
use support::*;

/// Where the chart's containers see the node (templates/_helpers.tpl).
const CONFIG_MOUNT: &str = "/etc/meshlane/agent.yaml";
const CGROUP_MOUNT: &str = "/host/sys/fs/cgroup";
const CNI_BIN_MOUNT: &str = "/host/opt/cni/bin";
const CNI_CONF_MOUNT: &str = "/host/etc/cni/net.d";

/// The node's CNI directories: a bin dir and a conf dir holding the
/// primary network's conflist (the bridge plugin, as a node's CNI has it).
struct CniDirs {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    primary: PathBuf,
}

impl CniDirs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(&conf).expect("conf dir");
        let primary = conf.join("10-bridge.conflist");
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let text = serde_json::to_string_pretty(&list).expect("JSON");
        std::fs::write(&primary, text).expect("writing the primary conflist");
        Self {
            _dir: dir,
            bin,
            conf,
            primary,
        }
    }

    fn primary(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.primary).expect("reading the conflist");
        serde_json::from_str(&text).expect("the conflist is JSON")
    }

    /// The plugin types of the primary conflist, in order.
    fn chain(&self) -> Vec<String> {
        self.primary()["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn files(&self) -> std::collections::BTreeSet<PathBuf> {
        pins_under(&self.bin)
            .into_iter()
            .chain(pins_under(&self.conf))
            .collect()
    }
}

/// One node's view of a chart render: the agent config file as the pod
/// sees it and the DaemonSet's containers.
struct NodeRender {
    _dir: tempfile::TempDir,
    config: PathBuf,
    cni_bin: PathBuf,
    cni_conf: PathBuf,
    admin: SocketAddr,
    daemonset: DaemonSet,
}

/// Renders the chart for `node` (its pin root, the admin server on a free
/// loopback port, no API server or istiod to talk to) plus `extra` values.
fn render_for(node: &Node, cni: &CniDirs, extra: &str) -> NodeRender {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let values = format!(
        "agent:\n  pinRoot: {}\n  logIntervalSeconds: 1\n  podSource:\n    kind: none\n  xds:\n    enabled: false\nmetrics:\n  bindAddress: 127.0.0.1\n  port: {port}\n{extra}",
        node.layout.root().display()
    );
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values).expect("writing values");
    let manifests = helm::render(Some(&values_file)).unwrap_or_else(|e| panic!("render: {e}"));
    let docs = helm::documents(&manifests);
    let rendered = helm::agent_config(&docs);
    let cgroup_line = format!("cgroup: {CGROUP_MOUNT}\n");
    assert!(rendered.contains(&cgroup_line), "{rendered}");
    let config_text = rendered.replace(
        &cgroup_line,
        &format!("cgroup: {}\n", node.cgroup.path().display()),
    );
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, config_text).expect("writing the agent config");
    let ds = helm::of_kind(&docs, "DaemonSet");
    let daemonset: DaemonSet = serde_json::from_value(ds[0].clone()).expect("a DaemonSet");
    NodeRender {
        config,
        cni_bin: cni.bin.clone(),
        cni_conf: cni.conf.clone(),
        admin: ([127, 0, 0, 1], port).into(),
        daemonset,
        _dir: dir,
    }
}

impl NodeRender {
    fn pod(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn init(&self, name: &str) -> Command {
        let inits = self.pod().init_containers.as_deref().unwrap_or_default();
        self.command(inits.iter().find(|c| c.name == name).expect(name))
    }

    fn main(&self, name: &str) -> Command {
        self.command(
            self.pod()
                .containers
                .iter()
                .find(|c| c.name == name)
                .expect(name),
        )
    }

    /// The container as the kubelet would run it here: its command with
    /// this node's paths, its environment (downward API values filled in)
    /// and only the capabilities its securityContext grants (setpriv),
    /// as root.
    fn command(&self, c: &Container) -> Command {
        let mut argv = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        assert_eq!(
            argv.first().map(String::as_str),
            Some("meshlane"),
            "{argv:?}"
        );
        let args: Vec<OsString> = argv[1..]
            .iter()
            .map(|a| match a.as_str() {
                CONFIG_MOUNT => self.config.clone().into_os_string(),
                CNI_BIN_MOUNT => self.cni_bin.clone().into_os_string(),
                CNI_CONF_MOUNT => self.cni_conf.clone().into_os_string(),
                other => other.into(),
            })
            .collect();
        let sc = c.security_context.as_ref().expect("securityContext");
        let mut cmd = if sc.privileged == Some(true) {
            Command::new(BIN)
        } else {
            let drop = sc.capabilities.as_ref().and_then(|k| k.drop.clone());
            assert_eq!(
                drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{}",
                c.name
            );
            let add = sc.capabilities.as_ref().and_then(|k| k.add.clone());
            let bounding: String = std::iter::once("-all".to_string())
                .chain(
                    add.unwrap_or_default()
                        .iter()
                        .map(|k| format!("+{}", k.to_lowercase())),
                )
                .collect::<Vec<_>>()
                .join(",");
            let mut cmd = Command::new("setpriv");
            cmd.args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
                .arg(BIN);
            cmd
        };
        cmd.args(args);
        for e in c.env.as_deref().unwrap_or_default() {
            let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            let value = match field.map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => helm::NAMESPACE.to_string(),
                Some("spec.nodeName") => "sim-node".to_string(),
                Some(other) => panic!("{}: unexpected downward API field {other}", c.name),
                None => e.value.clone().unwrap_or_default(),
            };
            cmd.env(&e.name, value);
        }
        cmd
    }
}

/// Runs a container's command to completion; fails with its stderr unless 0.
fn run_ok(mut cmd: Command) -> String {
    let out = cmd
        .envs(kernel_env())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running meshlane");
    assert!(
        out.status.success(),
        "{cmd:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kubelet's readiness probe until it passes (panics after a minute).
fn wait_ready(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = admin_get(addr, "/healthz/ready");
        if matches!(got, Some((200, _))) {
            return;
        }
        assert!(Instant::now() < end, "agent never ready: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pod's start as the kubelet runs it: the `install` init container,
/// then the agent container; ready when its readiness probe says so.
fn start_agent_pod(r: &NodeRender) -> AgentProcess {
    run_ok(r.init("install"));
    run_ok(r.init("install-cni"));
    let agent = AgentProcess::spawn_command(r.main("agent")).expect("the agent container starts");
    wait_ready(r.admin);
    assert!(matches!(
        admin_get(r.admin, "/healthz/live"),
        Some((200, _))
    ));
    agent
}

/// The pod's stop: SIGTERM, exit 0 within the grace period, pins kept.
fn stop_agent_pod(mut agent: AgentProcess, root: &Path) {
    agent.sigterm();
    let st = agent
        .wait_exit(Duration::from_secs(30))
        .expect("the agent exits within the grace period");
    assert!(st.success(), "agent exit: {st}");
    assert!(
        meshlane::layout::PinLayout::new(root).maps_dir().is_dir(),
        "SIGTERM removed the pins"
    );
}

/// The pod's `install-cni --watch` container, running.
fn spawn_cni_watch(r: &NodeRender) -> std::process::Child {
    r.main("install-cni")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting install-cni --watch")
}

/// SIGTERM to the watch; it exits 0 and leaves the entry in the chain.
fn stop_cni_watch(mut watch: std::process::Child, cni: &CniDirs) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to the watch");
    let st = watch.wait().expect("reaping the watch");
    assert!(st.success(), "install-cni --watch exit: {st}");
    assert!(
        cni.chain().contains(&"meshlane-cni".to_string()),
        "the watch took the entry out when it stopped"
    );
}

/// Two self-proxied accelerate pods and an echo server in the first.
fn two_pods(node: &mut Node) -> (Pod, Pod, SocketAddr) {
    let root = node.layout.root().to_path_buf();
    let server = node.pod("srv").expect("server pod");
    let client = node.pod("cli").expect("client pod");
    add_self_proxied_pod(&root, &server, None);
    add_self_proxied_pod(&root, &client, None);
    let srv = echo_server(&server, "0.0.0.0:0".parse().unwrap());
    let addr: SocketAddr = format!("{}:{}", server.ip4, srv.port()).parse().unwrap();
    (server, client, addr)
}

#[test]
fn rolling_update_replaces_the_agent_without_dropping_a_connection() {
    if !helm::available("rolling_update_replaces_the_agent_without_dropping_a_connection") {
        return;
    }
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cni = CniDirs::new();
    let r = render_for(&node, &cni, "");
    let agent = start_agent_pod(&r);
    let watch = spawn_cni_watch(&r);
    let (_server, client, srv_addr) = two_pods(&mut node);
    let links_before = link_ids(&status_json(&root));
    let chain = cni.chain();
    assert_eq!(
        chain,
        ["bridge", "portmap", "meshlane-cni"],
        "the CNI chain"
    );

    let conv = EchoConversation::start(connect_from(&client, srv_addr), 5);
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation starts");
    conversation_is_spliced(&root, &conv);
    conv.resume();

    // The old pod goes; traffic keeps flowing with no agent on the node.
    stop_agent_pod(agent, &root);
    stop_cni_watch(watch, &cni);
    conversation_is_spliced(&root, &conv);
    new_connection_is_spliced(&root, &client, srv_addr, 31);
    conv.resume();

    // The new pod: its init container adopts, then its agent runs.
    let agent = start_agent_pod(&r);
    assert_eq!(
        link_ids(&status_json(&root)),
        links_before,
        "the new pod replaced links instead of adopting them"
    );
    let log = agent.log_lines().join("\n");
    assert!(
        log.contains("adopted"),
        "the new agent did not adopt: {log}"
    );
    assert_eq!(cni.chain(), chain, "the update changed the CNI chain");
    conversation_is_spliced(&root, &conv);
    new_connection_is_spliced(&root, &client, srv_addr, 32);
    conv.resume();
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation after the update");
    assert!(
        conv.finish()
            .expect("no byte lost or doubled across the update")
            > 0,
        "the conversation made no round"
    );
    stop_agent_pod(agent, &root);
}

#[test]
fn cleanup_mode_leaves_no_pin_link_program_or_conflist_entry() {
    if !helm::available("cleanup_mode_leaves_no_pin_link_program_or_conflist_entry") {
        return;
    }
    let mut node = node_without_install();
    let root = node.layout.root().to_path_buf();
    let cg = node.cgroup.path().to_path_buf();
    let cni = CniDirs::new();
    let (conflist_before, files_before) = (cni.primary(), cni.files());
    let r = render_for(&node, &cni, "");
    let agent = start_agent_pod(&r);
    assert!(cni.chain().contains(&"meshlane-cni".to_string()));
    assert!(cni.bin.join("meshlane-cni").exists(), "the plugin binary");
    let (_server, client, srv_addr) = two_pods(&mut node);
    let conv = EchoConversation::start(connect_from(&client, srv_addr), 9);
    conv.wait_progress(64 * 1024, Duration::from_secs(60))
        .expect("conversation starts");
    let ids = InstallIds::read(&root);
    assert!(!ids.links.is_empty() && !ids.progs.is_empty(), "{ids:?}");
    assert!(!cgroup_ml_attachments(&cg).is_empty());

    // `helm upgrade --set cleanup.enabled=true`: the agent pod is replaced
    // by a cleanup pod, whose init containers run in order.
    let cleanup = render_for(&node, &cni, "cleanup:\n  enabled: true\n");
    let names: Vec<String> = cleanup
        .pod()
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(names, ["uninstall-cni", "uninstall"]);
    stop_agent_pod(agent, &root);
    run_ok(cleanup.init("uninstall-cni"));
    run_ok(cleanup.init("uninstall"));

    assert_eq!(
        cni.primary(),
        conflist_before,
        "the conflist differs from the node's own"
    );
    assert_eq!(cni.files(), files_before, "files left in the CNI dirs");

    assert!(!root.exists(), "pin root {} survives", root.display());
    assert!(
        cgroup_ml_attachments(&cg).is_empty(),
        "still attached: {:?}",
        cgroup_ml_attachments(&cg)
    );
    assert!(
        !meshlane::api::socket_path(&root).exists(),
        "the agent's API socket survives"
    );
    // The established connection finishes over TCP; once it is closed
    // nothing of the install is left in the kernel.
    conv.wait_progress(128 * 1024, Duration::from_secs(60))
        .expect("connection keeps working after the cleanup");
    conv.finish().expect("byte-exact through the cleanup");
    let end = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left = ids.still_alive();
        if left.is_empty() || Instant::now() > end {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "left in the kernel: {left:?}");
}
