//! Helpers for the tests that drive the `meshlane` binary (lifecycle,
//! cli_errors, accelerate): running the CLI, a long-running agent child that
//! is killed on drop, what bpftool sees (ids, cgroup attachments), the pins
//! under a pin root, a long-lived echo conversation, and the setup and
//! counter checks these tests share. Socket I/O, payloads, echo servers and
//! the environment check come from `tests/common`: a test that uses this
//! module declares `mod common;` next to `mod support;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshlane::sim::{Node, NodeOptions, Pod};
use serde_json::Value;

use crate::common::{
    echo_from, payload, require_root_env, set_io_slices, try_read_exact_by, write_all_by,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meshlane");

/// Environment every agent the tests start gets from this kernel: where
/// the psock does not count its queue (6.1), the agent starts only without
/// a splice queue limit (docs/kernels.md). The probe decides, as the
/// agent's does.
pub fn kernel_env() -> Vec<(&'static str, &'static str)> {
    if meshlane::probe::kernel_counts_psock_queue() {
        Vec::new()
    } else {
        vec![("MESHLANE_SPLICE_QUEUE_LIMIT", "0")]
    }
}

/// `meshlane --pin-root <root> <args...>` (quiet logs), run to completion.
pub fn cli(pin_root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--pin-root")
        .arg(pin_root)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(kernel_env())
        .output()
        .expect("running the meshlane binary")
}

/// Runs the CLI and fails with its stderr unless it exits 0; returns stdout.
pub fn cli_ok(pin_root: &Path, args: &[&str]) -> String {
    let out = cli(pin_root, args);
    assert!(
        out.status.success(),
        "meshlane {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `meshlane --json status`, parsed.
pub fn status_json(pin_root: &Path) -> Value {
    let out = cli_ok(pin_root, &["--json", "status"]);
    serde_json::from_str(&out).expect("status --json is JSON")
}

/// (pin file name, link id) of every node-wide link in a status document.
pub fn link_ids(status: &Value) -> BTreeSet<(String, u64)> {
    status["links"]
        .as_array()
        .expect("status has links")
        .iter()
        .map(|l| {
            (
                l["program"].as_str().unwrap_or_default().to_string(),
                l["link_id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A counter from a status document.
pub fn status_counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no counter {name}: {status}"))
}

/// `bpftool -j <args>`, parsed.
pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// `bpftool -j <args>`, or None when bpftool fails (e.g. the id is gone).
pub fn bpftool_json_opt(args: &[&str]) -> Option<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Ids of every object of `kind` ("prog", "map", "link") on the machine.
pub fn bpftool_ids(kind: &str) -> BTreeSet<u64> {
    bpftool_json(&[kind, "show"])
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// (link or program id, program name) of every program attached to the
/// cgroup at `path` whose name starts with "ml_", as bpftool shows them.
pub fn cgroup_ml_attachments(path: &Path) -> Vec<(u64, String)> {
    let v = bpftool_json(&["cgroup", "show", &path.to_string_lossy()]);
    let mut out: Vec<(u64, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let name = o["name"].as_str()?.to_string();
            name.starts_with("ml_")
                .then(|| (o["id"].as_u64().unwrap_or(0), name))
        })
        .collect();
    out.sort();
    out
}

/// Every file and directory under `root` (empty when it does not exist).
pub fn pins_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// Ids of the programs, maps and links one install consists of: every
/// pinned link and its program, every pinned program and map, and the
/// maps those programs use (.rodata and friends included).
#[derive(Debug, Default, Clone)]
pub struct InstallIds {
    pub progs: BTreeSet<u64>,
    pub maps: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
}

impl InstallIds {
    pub fn read(pin_root: &Path) -> Self {
        let mut ids = Self::default();
        for pin in pins_under(pin_root) {
            if pin.is_dir() {
                continue;
            }
            let rel = pin.strip_prefix(pin_root).unwrap_or(&pin);
            let kind = if rel.components().any(|c| c.as_os_str() == "links") {
                "link"
            } else if rel.components().any(|c| c.as_os_str() == "progs") {
                "prog"
            } else {
                "map"
            };
            let o = bpftool_json(&[kind, "show", "pinned", &pin.to_string_lossy()]);
            let id = o["id"].as_u64().expect("pinned object has an id");
            match kind {
                "link" => {
                    ids.links.insert(id);
                    if let Some(p) = o["prog_id"].as_u64() {
                        ids.progs.insert(p);
                    }
                }
                "prog" => {
                    ids.progs.insert(id);
                }
                _ => {
                    ids.maps.insert(id);
                }
            }
        }
        for p in ids.progs.clone() {
            let o = bpftool_json(&["prog", "show", "id", &p.to_string()]);
            for m in o["map_ids"].as_array().into_iter().flatten() {
                if let Some(m) = m.as_u64() {
                    ids.maps.insert(m);
                }
            }
        }
        ids
    }

    pub fn extend(&mut self, other: &InstallIds) {
        self.progs.extend(&other.progs);
        self.maps.extend(&other.maps);
        self.links.extend(&other.links);
    }

    /// The ids of this set that the kernel still has.
    pub fn still_alive(&self) -> InstallIds {
        let (p, m, l) = (bpftool_ids("prog"), bpftool_ids("map"), bpftool_ids("link"));
        InstallIds {
            progs: self.progs.intersection(&p).copied().collect(),
            maps: self.maps.intersection(&m).copied().collect(),
            links: self.links.intersection(&l).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }
}

/// A long-running `meshlane agent` child; SIGKILLed on drop.
pub struct AgentProcess {
    pub child: Child,
    /// Every stderr line the agent wrote so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Starts `meshlane --pin-root <root> agent --cgroup <cgroup> --log-interval 1`
    /// and waits until it logs that it is running.
    pub fn start(pin_root: &Path, cgroup: &Path) -> Result<Self> {
        Self::start_with(pin_root, cgroup, &[])
    }

    /// `start` with more agent flags.
    pub fn start_with(pin_root: &Path, cgroup: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(pin_root, cgroup, extra, &[])
    }

    /// `start_with`, with more environment variables for the agent.
    pub fn start_with_env(
        pin_root: &Path,
        cgroup: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let mut child = Command::new(BIN);
        for (k, v) in kernel_env() {
            child.env(k, v);
        }
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child
            .arg("--pin-root")
            .arg(pin_root)
            .args(["agent", "--log-interval", "1", "--cgroup"])
            .arg(cgroup)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting meshlane agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        Self::running(child, stderr)
    }

    /// Runs `cmd` (the binary, perhaps through a wrapper such as setpriv)
    /// as a long-running agent: the kernel's environment, info logs; once
    /// it logs that it is running.
    pub fn spawn_command(mut cmd: Command) -> Result<Self> {
        for (k, v) in kernel_env() {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting meshlane agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        Self::running(child, stderr)
    }

    /// Collects the agent's stderr lines and waits until it logs that it
    /// is running.
    fn running(child: Child, stderr: std::process::ChildStderr) -> Result<Self> {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("agent running") {
                        let _ = tx.send(());
                    }
                    log.lock().map(|mut l| l.push(line)).ok();
                }
            });
        }
        let agent = Self { child, log };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            bail!(
                "agent did not report running; its log: {:?}",
                agent.log_lines()
            );
        }
        Ok(agent)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.child.wait().expect("reaping the agent")
    }

    /// Sends the agent SIGTERM (a drain, as a kubelet stopping its pod).
    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the agent");
    }

    /// Waits up to `limit` for the agent to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One long-lived echo connection kept busy by a thread: it writes a
/// message, reads the echo back and compares it byte for byte, again and
/// again, until stopped. Any mismatch or error ends it with that error.
pub struct EchoConversation {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    /// Bytes echoed back and verified so far.
    pub verified: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl EchoConversation {
    /// `stream` must already be connected to an echo server.
    pub fn start(mut stream: TcpStream, seed: u8) -> Self {
        set_io_slices(&stream);
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let verified = Arc::new(AtomicU64::new(0));
        let (s2, v2) = (stop.clone(), verified.clone());
        let (p2, i2) = (pause.clone(), idle.clone());
        let handle = std::thread::spawn(move || -> Result<u64> {
            let sizes = [1usize, 64, 1024, 16 * 1024, 64 * 1024];
            let mut round = 0u64;
            while !s2.load(Ordering::Relaxed) {
                if p2.load(Ordering::SeqCst) {
                    i2.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                i2.store(false, Ordering::SeqCst);
                let len = sizes[(round as usize) % sizes.len()];
                let msg: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (round as u8))
                    .collect();
                let deadline = Instant::now() + Duration::from_secs(30);
                write_all_by(&mut stream, &msg, deadline)
                    .with_context(|| format!("conversation round {round}: write"))?;
                let mut back = vec![0u8; len];
                try_read_exact_by(&mut stream, &mut back, deadline)
                    .with_context(|| format!("conversation round {round}"))?;
                if back != msg {
                    bail!("round {round}: echo of {len} bytes differs from what was sent");
                }
                v2.fetch_add(len as u64, Ordering::Relaxed);
                round += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(round)
        });
        Self {
            stop,
            pause,
            idle,
            verified,
            handle: Some(handle),
        }
    }

    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// True while the thread runs (no error so far).
    pub fn alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Holds the conversation between two rounds (nothing in flight).
    pub fn pause(&self) -> Result<()> {
        self.pause.store(true, Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(60);
        while !self.idle.load(Ordering::SeqCst) {
            if !self.alive() {
                bail!("the echo conversation ended");
            }
            if Instant::now() > end {
                bail!("the echo conversation did not pause");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Waits until at least `more` further bytes were verified.
    pub fn wait_progress(&self, more: u64, limit: Duration) -> Result<()> {
        let target = self.verified() + more;
        let end = Instant::now() + limit;
        while self.verified() < target {
            if !self.alive() {
                bail!("the echo conversation ended");
            }
            if Instant::now() > end {
                bail!(
                    "the echo conversation made no progress ({} bytes verified)",
                    self.verified()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the thread; returns the number of rounds or its error.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("conversation thread panicked"))?,
            None => bail!("already finished"),
        }
    }
}

impl Drop for EchoConversation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A simulated node with nothing installed: the tests install through the
/// binary.
pub fn node_without_install() -> Node {
    require_root_env();
    Node::new(NodeOptions {
        install: false,
        ..Default::default()
    })
    .expect("node")
}

/// Registers `pod` in accelerate mode through the binary, under `name` when
/// given (the binary's default name otherwise), with Istio's proxy uid.
pub fn add_accelerated_pod(pin_root: &Path, pod: &Pod, name: Option<&str>) {
    add_accelerated_pod_as(pin_root, pod, name, None);
}

/// `add_accelerated_pod` with this test process as the pod's proxy, so the
/// connections the test makes there are spliced.
pub fn add_self_proxied_pod(pin_root: &Path, pod: &Pod, name: Option<&str>) {
    add_accelerated_pod_as(pin_root, pod, name, Some(nix::unistd::getuid().as_raw()));
}

fn add_accelerated_pod_as(pin_root: &Path, pod: &Pod, name: Option<&str>, uid: Option<u32>) {
    let netns = pod.netns.to_string_lossy();
    let uid = uid.map(|u| u.to_string());
    let mut args = vec!["pod", "add", "--netns", &netns];
    if let Some(name) = name {
        args.extend(["--name", name]);
    }
    if let Some(uid) = &uid {
        args.extend(["--proxy-uid", uid]);
    }
    args.extend(["--mode", "accelerate"]);
    cli_ok(pin_root, &args);
}

/// The counters of the install under `pin_root`.
pub fn counters(pin_root: &Path) -> BTreeMap<String, u64> {
    meshlane::status::read_counters(&meshlane::layout::PinLayout::new(pin_root))
}

/// How much counter `name` grew from `before` to `after`.
pub fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, name: &str) -> u64 {
    after[name] - before[name]
}

/// A fresh 1 MiB echo from `client` to `server` is byte-exact and spliced:
/// its two sockets enter the sockhash and at least its payload is spliced.
/// The caller keeps every other connection quiet meanwhile.
pub fn new_connection_is_spliced(root: &Path, client: &Pod, server: SocketAddr, seed: u8) {
    let before = counters(root);
    let data = payload(1 << 20, seed);
    assert_eq!(
        echo_from(client, server, data.clone(), 16 * 1024),
        data,
        "echo on a new connection is not byte-exact"
    );
    let after = counters(root);
    assert!(
        delta(&after, &before, "sockets_inserted") >= 2,
        "the new connection's sockets were not put in the sockhash: {before:?} -> {after:?}"
    );
    assert!(
        delta(&after, &before, "bytes_spliced") >= data.len() as u64,
        "the new connection was not spliced: {before:?} -> {after:?}"
    );
}

/// The established conversation keeps flowing, byte-exact, and every
/// message of it is spliced.
pub fn conversation_is_spliced(root: &Path, conv: &EchoConversation) {
    let before = counters(root);
    let v0 = conv.verified();
    conv.wait_progress(512 * 1024, Duration::from_secs(120))
        .expect("established connection keeps working");
    conv.pause().expect("pausing the conversation");
    let after = counters(root);
    let echoed = conv.verified() - v0;
    assert!(
        delta(&after, &before, "bytes_spliced") >= echoed,
        "the established connection is not spliced ({echoed} bytes echoed): {before:?} -> {after:?}"
    );
    assert_eq!(
        delta(&after, &before, "messages_fallback"),
        0,
        "messages of the established connection fell back to TCP: {before:?} -> {after:?}"
    );
}

/// GET `path` on an agent's admin server: (status code, body), or None
/// when it cannot be reached or answers something that is not HTTP.
pub fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}

impl AgentProcess {
    /// The admin address the agent logged (`admin server ... addr=`; it
    /// was started on port 0), waiting for the line up to 10 s.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log_lines().iter().find_map(|l| {
                l.contains("admin server")
                    .then(|| {
                        l.split("addr=")
                            .nth(1)?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()
                    })
                    .flatten()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no admin address logged: {:?}",
                self.log_lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The netns cookie the pod registry records for the pod named `name`.
pub fn registered_cookie(layout: &meshlane::datapath::PinLayout, name: &str) -> Option<u64> {
    meshlane::datapath::PodsMap::open(layout)
        .ok()?
        .iter()
        .find_map(|(c, p)| {
            let n: Vec<u8> = p
                .name
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| *b as u8)
                .collect();
            (n == name.as_bytes()).then_some(c)
        })
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
