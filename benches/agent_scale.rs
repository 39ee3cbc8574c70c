//! `cargo bench --bench agent_scale -- --pods 1000`: the node agent at
//! scale. Measures the agent's resident memory (VmRSS and its peak, VmHWM,
//! from /proc/PID/status) and the time of a metrics scrape (one HTTP GET of
//! /metrics read to the end: median, p90, max over `--scrapes`) and the
//! scrape's body size, at these stages of one run:
//!
//! 1. `empty`: the agent just started on a fresh install, no pod, no socket;
//! 2. `sockets`: one self-proxied pod whose loopback connections, held by
//!    child processes, put `--sockets` spliced sockets in the sockhash;
//! 3. `pods N`: bare network namespaces registered through the agent's
//!    local API until N pods are registered (a quarter, half and all of
//!    `--pods`), the sockets still held; with `--pod-addresses` each has
//!    one address (so the pod IPs map holds one entry a pod);
//! 4. `no sockets`: all pods still registered, the sockets closed;
//! 5. then the idle agent's RSS once a second for `--idle-secs`;
//! 6. then the agent's own CPU time (user + system, every thread, from
//!    /proc/PID/stat) over two windows of `--cpu-secs`, all pods still
//!    registered: `idle` (only its sweep, every second) and `scraped` (one
//!    /metrics scrape a second besides). The sweeps counted by the agent's
//!    `meshlane_agent_sweeps_total` in each window are reported with it.
//!
//! The sockhash is made with room for twice `--sockets` (`--sockhash-size`
//! on install and agent), so no insert fails at exactly full. Each stage
//! checks the sockhash fill (`status::map_fill`, what `meshlane status
//! --json` reports) and the pod count; `meshlane status --json` is run once
//! at the fullest stage as a cross-check.
//!
//! RLIMIT_NOFILE is capped below 65,536, so the bench re-executes itself in
//! a hidden `--hold` mode: each child enters the pod, opens a listener and
//! holds at most `--conns-per-child` connections (both ends). Everything
//! the run makes (netns, pins, cgroup, child processes, the agent) is held
//! by a guard and removed on return, error, panic or Ctrl-C.
//!
//! Options: `-- --pods N --sockets N --scrapes N --conns-per-child N
//! --idle-secs N --cpu-secs N --pod-addresses --json`.
//! Needs root, bpffs and cgroup v2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshlane::api::{self, Request};
use meshlane::bench::interrupt;
use meshlane::datapath::MapId;
use meshlane::layout::PinLayout;
use meshlane::pods::{PodMode, PodSpec, Registry};
use meshlane::sim::{Node, NodeOptions, Pod};
use serde::Serialize;

const BIN: &str = env!("CARGO_BIN_EXE_meshlane");
const API_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(name = "agent-scale")]
struct Cli {
    /// Pods registered at the end (the socket pod included).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pods: u32,
    /// Spliced sockets in the sockhash (two per loopback connection).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    sockets: u32,
    /// Scrapes measured per stage (after 2 unmeasured warm-up scrapes).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    scrapes: u32,
    /// Connections each socket-holding child keeps (two fds each).
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u32).range(1..=9000))]
    conns_per_child: u32,
    /// At the end, sample the idle agent's RSS once a second this long.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    idle_secs: u64,
    /// Then measure the agent's CPU time over two windows this long: idle,
    /// and with one scrape a second (0: skip).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    cpu_secs: u64,
    /// Give each bare pod one address (10.253.x.y/32 on a veth pair inside
    /// its netns), so the pod IPs map holds one entry a pod as on a real
    /// node; without it the bare pods have none.
    #[arg(long)]
    pod_addresses: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: hold this many loopback connections in --netns.
    #[arg(long, hide = true, requires = "netns")]
    hold: Option<u32>,
    #[arg(long, hide = true)]
    netns: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match (cli.hold, &cli.netns) {
        (Some(n), Some(ns)) => hold(n, ns),
        _ => run(&cli).and_then(|r| print_report(&cli, &r)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_scale: {e:#}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- report

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    cpus: usize,
    sockhash_size: u32,
    scrapes_per_stage: u32,
    /// Seconds to create and register the bare pods through the agent.
    register_secs: f64,
    /// Seconds to open the loopback connections.
    connect_secs: f64,
    /// `meshlane status --json` at the fullest stage: ml_socks entries and
    /// how long the command took (it walks the sockhash).
    status_socks_entries: usize,
    status_ms: f64,
    stages: Vec<Stage>,
    /// VmRSS (KiB) of the idle agent, all pods registered, no scrapes, once
    /// a second for `--idle-secs` after the last stage: its sweep walks the
    /// pods every second.
    idle_rss_kib: Vec<u64>,
    /// The agent's CPU time with all pods registered, per window.
    cpu: Vec<CpuWindow>,
}

#[derive(Debug, Serialize)]
struct CpuWindow {
    name: String,
    pods: usize,
    wall_secs: f64,
    /// User + system CPU seconds of the agent (every thread) in the window.
    cpu_secs: f64,
    /// `cpu_secs` over the wall time, in percent of one CPU.
    cpu_percent: f64,
    /// Registry sweeps the agent counted in the window.
    sweeps: u64,
    /// /metrics scrapes made in the window.
    scrapes: u32,
}

#[derive(Debug, Serialize)]
struct Stage {
    name: String,
    pods: usize,
    sockets: usize,
    /// Before this stage's scrapes.
    rss_kib: u64,
    /// After them.
    rss_after_kib: u64,
    hwm_kib: u64,
    scrape: ScrapeStats,
}

#[derive(Debug, Serialize)]
struct ScrapeStats {
    median_ms: f64,
    p90_ms: f64,
    max_ms: f64,
    body_bytes: usize,
}

fn print_report(cli: &Cli, r: &Report) -> Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "kernel {} | {} CPUs | sockhash size {} | {} scrapes per stage",
        r.kernel, r.cpus, r.sockhash_size, r.scrapes_per_stage
    );
    println!(
        "registering the bare pods: {:.1} s; connecting: {:.1} s; `meshlane status --json`: {} ml_socks entries in {:.0} ms",
        r.register_secs, r.connect_secs, r.status_socks_entries, r.status_ms
    );
    println!(
        "{:<12} {:>5} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7}",
        "stage",
        "pods",
        "sockets",
        "rss KiB",
        "after",
        "hwm KiB",
        "med ms",
        "p90 ms",
        "max ms",
        "bytes"
    );
    for s in &r.stages {
        println!(
            "{:<12} {:>5} {:>8} {:>9} {:>9} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            s.name,
            s.pods,
            s.sockets,
            s.rss_kib,
            s.rss_after_kib,
            s.hwm_kib,
            s.scrape.median_ms,
            s.scrape.p90_ms,
            s.scrape.max_ms,
            s.scrape.body_bytes
        );
    }
    if let (Some(first), Some(last)) = (r.idle_rss_kib.first(), r.idle_rss_kib.last()) {
        println!(
            "idle agent RSS over {} s: {first} KiB -> {last} KiB",
            r.idle_rss_kib.len()
        );
    }
    for w in &r.cpu {
        println!(
            "agent CPU, {} ({} pods, {} sweeps, {} scrapes in {:.0} s): {:.3} CPU s = {:.3} % of a CPU",
            w.name, w.pods, w.sweeps, w.scrapes, w.wall_secs, w.cpu_secs, w.cpu_percent
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- the run

fn run(cli: &Cli) -> Result<Report> {
    meshlane::sim::can_run_root_tests().map_err(|e| anyhow::anyhow!("needs root: {e}"))?;
    interrupt::install();
    let sockhash_size = (cli.sockets.max(1) * 2).next_power_of_two().max(65536);
    // Drop order is the reverse of declaration: holders, agent, pods, node.
    let mut node = Node::new(NodeOptions {
        sockhash_size,
        ..Default::default()
    })?;
    let mut bare: Vec<BareNetns> = Vec::new();
    let sock_pod = socket_pod(&mut node)?;
    let agent = Agent::start(&node, sockhash_size)?;
    let mut stages = Vec::new();
    stages.push(measure(cli, "empty", &node, &agent)?);

    register(&agent, &sock_pod.netns, sock_pod_spec(&sock_pod))?;
    let t = Instant::now();
    let holders = Holders::start(&sock_pod, cli.sockets / 2, cli.conns_per_child)?;
    let connect_secs = t.elapsed().as_secs_f64();
    let want = (cli.sockets / 2 * 2) as usize;
    wait_socks(&node.layout, &format!("at least {want}"), |n| n >= want)?;
    stages.push(measure(cli, "sockets", &node, &agent)?);

    let mut register_secs = 0.0;
    for target in pod_steps(cli.pods) {
        let t = Instant::now();
        grow_pods(
            &node,
            &agent,
            &mut bare,
            target as usize - 1,
            cli.pod_addresses,
        )?;
        register_secs += t.elapsed().as_secs_f64();
        stages.push(measure(cli, &format!("pods {target}"), &node, &agent)?);
    }
    let (status_socks_entries, status_ms) = status_socks(&node.layout)?;

    drop(holders);
    wait_socks(&node.layout, "0", |n| n == 0)?;
    stages.push(measure(cli, "no sockets", &node, &agent)?);
    let idle_rss_kib = idle_rss(&agent, cli.idle_secs)?;
    let mut cpu = Vec::new();
    if cli.cpu_secs > 0 {
        let pods = Registry::open(&node.layout)?.count();
        cpu.push(cpu_window(&agent, "idle", pods, cli.cpu_secs, false)?);
        cpu.push(cpu_window(&agent, "scraped", pods, cli.cpu_secs, true)?);
    }
    agent.stop();
    Ok(Report {
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        sockhash_size,
        scrapes_per_stage: cli.scrapes,
        register_secs,
        connect_secs,
        status_socks_entries,
        status_ms,
        stages,
        idle_rss_kib,
        cpu,
    })
}

/// The agent's CPU time over `secs` of wall time, scraping /metrics once
/// a second when `scraped`. The sweep counter is read (one scrape each)
/// just outside the measured interval.
fn cpu_window(
    agent: &Agent,
    name: &str,
    pods: usize,
    secs: u64,
    scraped: bool,
) -> Result<CpuWindow> {
    interrupt_check()?;
    let sweeps_before = sweeps(agent.admin)?;
    let cpu_before = agent.cpu_secs()?;
    let start = Instant::now();
    let mut scrapes = 0;
    for i in 1..=secs {
        if scraped {
            scrape(agent.admin)?;
            scrapes += 1;
        }
        interrupt_check()?;
        // Paced on the window's start, so scrape time does not add up.
        let next = start + Duration::from_secs(i);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall_secs = start.elapsed().as_secs_f64();
    let cpu_secs = agent.cpu_secs()? - cpu_before;
    let sweeps = sweeps(agent.admin)?.saturating_sub(sweeps_before);
    eprintln!("agent_scale: cpu {name}: {cpu_secs:.3} CPU s in {wall_secs:.1} s, {sweeps} sweeps, {scrapes} scrapes");
    Ok(CpuWindow {
        name: name.into(),
        pods,
        wall_secs,
        cpu_secs,
        cpu_percent: cpu_secs / wall_secs * 100.0,
        sweeps,
        scrapes,
    })
}

/// `meshlane_agent_sweeps_total` from one scrape.
fn sweeps(addr: SocketAddr) -> Result<u64> {
    let (_, body) = scrape_body(addr)?;
    body.lines()
        .find_map(|l| l.strip_prefix("meshlane_agent_sweeps_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("/metrics has no meshlane_agent_sweeps_total")
}

fn idle_rss(agent: &Agent, secs: u64) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    for _ in 0..secs {
        interrupt_check()?;
        v.push(agent.memory()?.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(v)
}

/// Pod counts at which a stage is measured: a quarter, half and all.
fn pod_steps(pods: u32) -> Vec<u32> {
    let mut v = vec![(pods / 4).max(1), (pods / 2).max(1), pods];
    v.dedup();
    v
}

fn interrupt_check() -> Result<()> {
    if interrupt::requested() {
        bail!("interrupted");
    }
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The pod whose proxy is this bench (and its children): its loopback
/// connections are spliced, both ends in the sockhash. Its ephemeral port
/// range is widened (that netns only) so 32,768 connections fit easily.
fn socket_pod(node: &mut Node) -> Result<Pod> {
    let pod = node.pod("socks")?;
    pod.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"])?;
    Ok(pod)
}

fn sock_pod_spec(pod: &Pod) -> PodSpec {
    let mut spec = PodSpec::istio(pod.name.clone());
    spec.mode = PodMode::Accelerate;
    meshlane::sim::as_own_proxy(&mut spec);
    spec
}

/// Registers through the agent's local API, as the CNI plugin would.
fn register(agent: &Agent, netns: &Path, spec: PodSpec) -> Result<()> {
    let name = spec.name.clone();
    let req = Request::Add {
        netns: netns.to_path_buf(),
        spec,
    };
    api::call(&agent.api_socket, &req, API_TIMEOUT)
        .with_context(|| format!("registering pod {name} through the agent"))?;
    Ok(())
}

/// Creates and registers bare network namespaces until there are `want`.
fn grow_pods(
    node: &Node,
    agent: &Agent,
    bare: &mut Vec<BareNetns>,
    want: usize,
    pod_addresses: bool,
) -> Result<()> {
    while bare.len() < want {
        interrupt_check()?;
        let ns = BareNetns::create(&node.tag, bare.len(), pod_addresses)?;
        let spec = PodSpec::istio(format!("scale-{}", bare.len()));
        // Pushed first: the guard removes the netns even if this fails.
        bare.push(ns);
        register(agent, &bare[bare.len() - 1].path, spec)?;
    }
    Ok(())
}

fn socks_in_map(layout: &PinLayout) -> usize {
    meshlane::status::map_fill(layout, MapId::Socks).map_or(0, |m| m.entries)
}

/// Waits (up to 60 s) until the sockhash fill satisfies `ok`.
fn wait_socks(layout: &PinLayout, what: &str, ok: impl Fn(usize) -> bool) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = socks_in_map(layout);
        if ok(n) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("{} holds {n} entries, expected {what}", MapId::Socks);
        }
        interrupt_check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `meshlane status --json`: the ml_socks entries it reports, and how long
/// it took (milliseconds).
fn status_socks(layout: &PinLayout) -> Result<(usize, f64)> {
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("--pin-root")
        .arg(layout.root())
        .args(["--json", "status"])
        .stdin(Stdio::null())
        .output()
        .context("running meshlane status --json")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "meshlane status --json: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing meshlane status --json")?;
    let entries = v["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == MapId::Socks.pin_name())
        .and_then(|m| m["entries"].as_u64())
        .context("status --json lists no ml_socks entries")?;
    Ok((entries as usize, ms))
}

/// One stage: memory before and after `--scrapes` scrapes, and the scrapes.
fn measure(cli: &Cli, name: &str, node: &Node, agent: &Agent) -> Result<Stage> {
    interrupt_check()?;
    let pods = Registry::open(&node.layout)?.count();
    let sockets = socks_in_map(&node.layout);
    // Let the agent finish what the last change gave it (sweep, API).
    std::thread::sleep(Duration::from_secs(2));
    let (rss_kib, _) = agent.memory()?;
    let scrape = scrape_stats(agent.admin, cli.scrapes)?;
    let (rss_after_kib, hwm_kib) = agent.memory()?;
    eprintln!("agent_scale: stage {name}: {pods} pods, {sockets} sockets, rss {rss_kib} KiB, scrape median {:.2} ms", scrape.median_ms);
    Ok(Stage {
        name: name.into(),
        pods,
        sockets,
        rss_kib,
        rss_after_kib,
        hwm_kib,
        scrape,
    })
}

// ---------------------------------------------------------------- scrapes

/// One scrape: connect, GET /metrics, read to the end. Returns its time and
/// the body's size.
fn scrape(addr: SocketAddr) -> Result<(Duration, usize)> {
    scrape_body(addr).map(|(took, body)| (took, body.len()))
}

/// [`scrape`], with the body.
fn scrape_body(addr: SocketAddr) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: meshlane\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).context("reading /metrics")?;
    let took = t.elapsed();
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("/metrics reply has no header end")?;
    let status = String::from_utf8_lossy(&buf[..head_end.min(64)]).into_owned();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("/metrics: {}", status.lines().next().unwrap_or_default());
    }
    Ok((
        took,
        String::from_utf8_lossy(&buf[head_end + 4..]).into_owned(),
    ))
}

fn scrape_stats(addr: SocketAddr, n: u32) -> Result<ScrapeStats> {
    for _ in 0..2 {
        scrape(addr)?;
    }
    let mut times = Vec::with_capacity(n as usize);
    let mut body_bytes = 0;
    for _ in 0..n {
        let (t, b) = scrape(addr)?;
        times.push(t);
        body_bytes = b;
    }
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
    Ok(ScrapeStats {
        median_ms: ms(at(50)),
        p90_ms: ms(at(90)),
        max_ms: ms(times[times.len() - 1]),
        body_bytes,
    })
}

// ---------------------------------------------------------------- guards

/// A bare network namespace (`ip netns add`), deleted on drop.
struct BareNetns {
    name: String,
    path: PathBuf,
}

impl BareNetns {
    fn create(tag: &str, i: usize, address: bool) -> Result<Self> {
        let name = format!("{tag}-b{i}");
        ip(&["netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        if address {
            // From here the guard deletes the netns, interface included.
            let addr = format!("10.253.{}.{}/32", i / 250, i % 250 + 1);
            ip(&[
                "-n", &ns.name, "link", "add", "ml0", "type", "veth", "peer", "name", "ml1",
            ])?;
            ip(&["-n", &ns.name, "addr", "add", &addr, "dev", "ml0"])?;
            ip(&["-n", &ns.name, "link", "set", "ml0", "up"])?;
        }
        Ok(ns)
    }
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for BareNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `meshlane agent` on the node's pin root with an admin server; stopped
/// with SIGTERM (then SIGKILL) on drop.
struct Agent {
    child: Child,
    admin: SocketAddr,
    api_socket: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Agent {
    fn start(node: &Node, sockhash_size: u32) -> Result<Self> {
        let mut child = Command::new(BIN)
            .arg("--pin-root")
            .arg(node.layout.root())
            .args([
                "agent",
                "--admin-addr",
                "127.0.0.1:0",
                "--log-interval",
                "3600",
            ])
            .arg("--sockhash-size")
            .arg(sockhash_size.to_string())
            .arg("--cgroup")
            .arg(node.cgroup.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting meshlane agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || follow_log(stderr, &log2, &tx));
        let mut agent = Self {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_socket: api::socket_path(node.layout.root()),
            log,
        };
        agent.admin = agent.wait_running(&rx)?;
        Ok(agent)
    }

    /// The admin address once the agent logs both it and "agent running".
    fn wait_running(&self, rx: &mpsc::Receiver<LogEvent>) -> Result<SocketAddr> {
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(LogEvent::Admin(a)) => admin = Some(a),
                Ok(LogEvent::Running) => {
                    return admin.context("the agent runs without an admin address")
                }
                Err(_) => break,
            }
        }
        let tail = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
        bail!("the agent did not report running; its log:\n{tail}")
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |key: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{path} has no {key}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU seconds of every thread, from /proc/PID/stat
    /// (clock ticks: 10 ms steps; exited threads included).
    fn cpu_secs(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.child.id());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name, which may hold spaces: state is
        // the first, utime the 12th, stime the 13th.
        let after = text.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{path}: no CPU time field"))
        };
        // SAFETY: plain libc query.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok((ticks(11)? + ticks(12)?) as f64 / hz)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        self.wait_exit();
        // Ours alone (named after our pin root); a killed agent leaves it.
        let _ = std::fs::remove_file(&self.api_socket);
    }

    fn wait_exit(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

enum LogEvent {
    Admin(SocketAddr),
    Running,
}

/// Keeps the agent's stderr drained, the last lines kept for errors.
fn follow_log(
    stderr: std::process::ChildStderr,
    log: &std::sync::Mutex<Vec<String>>,
    tx: &mpsc::Sender<LogEvent>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.contains("admin server") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
            if let Some(a) = addr {
                let _ = tx.send(LogEvent::Admin(a));
            }
        }
        if line.contains("agent running") {
            let _ = tx.send(LogEvent::Running);
        }
        if let Ok(mut l) = log.lock() {
            if l.len() >= 50 {
                l.remove(0);
            }
            l.push(line);
        }
    }
}

/// Child processes (this bench in `--hold` mode) holding the loopback
/// connections; killed on drop (they also exit when their stdin closes).
struct Holders {
    children: Vec<(Child, Option<ChildStdin>)>,
}

impl Holders {
    fn start(pod: &Pod, conns: u32, per_child: u32) -> Result<Self> {
        let exe = std::env::current_exe().context("this bench's own path")?;
        let n = conns.div_ceil(per_child.max(1));
        let mut holders = Self {
            children: Vec::new(),
        };
        for i in 0..n {
            let share = conns / n + u32::from(i < conns % n);
            let mut child = Command::new(&exe)
                .args(["--hold", &share.to_string(), "--netns"])
                .arg(&pod.netns)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a socket-holding child")?;
            let stdin = child.stdin.take();
            holders.children.push((child, stdin));
        }
        for (child, _) in &mut holders.children {
            wait_ready(child)?;
        }
        Ok(holders)
    }
}

/// Reads the child's "ready N" line.
fn wait_ready(child: &mut Child) -> Result<()> {
    let out = child.stdout.take().context("holder stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if !line.starts_with("ready") {
        let status = child.try_wait().ok().flatten();
        bail!("a socket-holding child failed (exit {status:?})");
    }
    Ok(())
}

impl Drop for Holders {
    fn drop(&mut self) {
        for (child, stdin) in &mut self.children {
            drop(stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------- --hold

/// Child mode: enters `netns`, opens `conns` loopback connections to its
/// own listener and holds both ends until stdin closes.
fn hold(conns: u32, netns: &Path) -> Result<()> {
    raise_nofile(u64::from(conns) * 2 + 64)?;
    let ns = meshlane::netns::open_netns(netns)?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", netns.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the listener")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(conns as usize * 2);
    for i in 0..conns {
        let c = TcpStream::connect(addr).with_context(|| format!("connection {i} to {addr}"))?;
        let (s, _) = listener.accept().context("accepting")?;
        held.push(c);
        held.push(s);
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready {conns}")?;
    out.flush()?;
    // Until the parent closes our stdin (or dies).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to `want`; the hard limit cannot be.
fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        bail!(
            "need {want} open files, hard limit is {}: lower --conns-per-child",
            lim.rlim_max
        );
    }
    lim.rlim_cur = want;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
