//! `cargo bench --bench xds_scale -- --services 10000 --endpoints-per-service 10`:
//! the xDS client at mesh scale. The sim's ADS server (this process)
//! serves a synthetic Istio-shaped mesh (`sim::xds::sidecar_snapshot`:
//! per service an EDS cluster and its endpoints, a listener per TCP
//! service, `0.0.0.0_<port>` + route per HTTP port) to a client process
//! (this bench re-executed in a hidden `--client` mode, running the agent's
//! `XdsClient` on a single-threaded tokio runtime as the agent does).
//!
//! Measured, each for one identity and for `--identities` identities that
//! get the same mesh plus one cluster of their own (so they share all but
//! one resource):
//! - time from the client's start to every identity synced (first complete
//!   snapshot: CDS, EDS, LDS, RDS received, validated and held);
//! - time from a single-service EDS change (`AdsServer::update` of a
//!   snapshot derived from the current one with one service's endpoints
//!   moved, so only EDS is pushed) to the client holding the new
//!   endpoints, over `--changes` changes: p50, p99, max (CLOCK_MONOTONIC in
//!   both processes);
//! - the client's CPU time for each such change (CLOCK_PROCESS_CPUTIME_ID
//!   of the client process: robust to other load on the machine);
//! - the client process's resident memory (VmRSS, VmHWM) before the client
//!   starts, once synced and after the changes, each read after the
//!   client was left idle `--settle-ms` (the agent trims its heap once a
//!   burst of responses is over), with glibc's live heap (mallinfo2) and
//!   the RSS `malloc_trim(0)` would leave;
//! - the decisions (the agent's `LiveDecisions` following identity 0): the
//!   full snapshot decided (wall time from following the synced pods to
//!   every identity's first complete decisions, and the CPU time of one `Engine::new`
//!   on the held resources), and per single-service EDS change the time
//!   from the update to the new decision holding the moved endpoint (the
//!   client polls the decisions every 0.5 ms, so up to that much is
//!   polling) with the `meshlane_bypass_redecide_duration_seconds` view of
//!   the same work (re-decide wall time inside the blocking thread);
//! - the decision state's memory: RSS, live heap and peak RSS right after
//!   every identity's first decisions (before the agent's heap trim), and
//!   the live heap one decision state holds (an `Engine::new` on identity
//!   0's resources, measured while it is alive, after those readings).
//!
//! Options: `-- --services N --endpoints-per-service N --identities N
//! --changes N --settle-ms N --json`. No root needed.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshlane::pods::source::{MemoryCatalog, MeshDecision, PodCatalog, PodInfo, PodKey};
use meshlane::pods::PodSpec;
use meshlane::sim::xds::{sidecar_snapshot, AdsServer, Protocol, Service, Snapshot};
use meshlane::sim::{unique_tag, SidecarMode};
use meshlane::xds::assignment::Host;
use meshlane::xds::client::{
    Address, ClientSettings, MeshSettings, Transport, XdsClient, XdsMetrics,
};
use meshlane::xds::decide::{BypassPolicy, DestKey, Engine};
use meshlane::xds::live::{DecisionMetrics, LiveDecisions};
use meshlane::xds::ProxyResources;
use prost::Name;
use serde::Serialize;

#[derive(Parser)]
#[command(name = "xds-scale")]
struct Cli {
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: u32,
    /// Identities of the shared-memory run.
    #[arg(long, default_value_t = 20)]
    identities: u32,
    /// Single-service EDS changes timed per run.
    #[arg(long, default_value_t = 200)]
    changes: u32,
    /// How long the client is left idle before its resident memory is
    /// read (synced, after the changes): the agent's heap trim runs once
    /// a burst of responses is over.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    #[arg(long)]
    json: bool,
    /// Hidden: run as the client process on this socket.
    #[arg(long, hide = true)]
    client: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 1)]
    client_identities: u32,
    /// cargo bench passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC, comparable between the two processes.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time this process used (all threads): what a change costs the
/// client whatever else the machine runs.
fn cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// VmRSS after `malloc_trim(0)` returns the allocator's free memory to
/// the kernel: live data (plus what the allocator cannot return), where
/// VmRSS alone also counts freed-but-kept memory (fragmentation).
fn trimmed_rss_kib() -> u64 {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    rss_kib().0
}

/// glibc's view of the heap (KiB): bytes in use by live allocations, free
/// bytes malloc keeps (fragmentation, until trimmed) and bytes in their
/// own mappings (large allocations).
fn heap_kib() -> (u64, u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (
        m.uordblks as u64 / 1024,
        m.fordblks as u64 / 1024,
        m.hblkhd as u64 / 1024,
    )
}

/// What the held resources take, by kind (KiB, estimated from their
/// sizes: wire bytes kept, compact endpoints).
fn held_kib(r: &ProxyResources) -> (u64, u64, u64) {
    let wire: usize = r.clusters.values().map(|c| c.wire().len()).sum::<usize>()
        + r.listeners.values().map(|l| l.wire().len()).sum::<usize>()
        + r.routes.values().map(|x| x.wire().len()).sum::<usize>();
    let eds_wire: usize = r.endpoints.values().map(|a| a.wire().len()).sum();
    let endpoints: usize = r
        .endpoints
        .values()
        .map(|a| {
            a.groups.len() * std::mem::size_of::<meshlane::xds::assignment::LocalityGroup>()
                + a.endpoints().count()
                    * std::mem::size_of::<meshlane::xds::assignment::AssignedEndpoint>()
        })
        .sum();
    (
        wire as u64 / 1024,
        eds_wire as u64 / 1024,
        endpoints as u64 / 1024,
    )
}

fn ip(n: u32, base: [u8; 2]) -> IpAddr {
    IpAddr::from([base[0], base[1], (n >> 8) as u8, n as u8])
}

/// The synthetic mesh: one service in ten is HTTP (on ten ports), the
/// rest TCP; `per` endpoints each.
fn mesh(services: u32, per: u32) -> Vec<Service> {
    (0..services)
        .map(|i| {
            let http = i % 10 == 0;
            let port = if http {
                8000 + (i / 10 % 10) as u16
            } else {
                9000
            };
            Service {
                host: format!("svc-{i}.ns-{}.svc.cluster.local", i % 50),
                vip: ip(i, [10, 96]),
                port,
                protocol: if http { Protocol::Http } else { Protocol::Tcp },
                endpoints: (0..per)
                    .map(|e| SocketAddr::new(ip(i * per + e, [10, 0]), 8080 + (e % 4) as u16))
                    .collect(),
            }
        })
        .collect()
}

fn pod_info(n: u32) -> PodInfo {
    let name = format!("bench-{n}");
    PodInfo {
        key: PodKey {
            namespace: "bench".into(),
            name: name.clone(),
        },
        uid: String::new(),
        ips: vec![ip(n, [10, 250])],
        labels: [("app".to_string(), name.clone())].into(),
        service_account: "bench".into(),
        annotations: Default::default(),
        workload: Default::default(),
        mesh: MeshDecision::Meshed {
            spec: PodSpec::istio(name),
        },
    }
}

fn node_id(n: u32) -> String {
    let p = pod_info(n);
    format!(
        "sidecar~{}~{}.bench~bench.svc.cluster.local",
        p.ips[0], p.key.name
    )
}

// ---- the client process ---------------------------------------------------

/// Reads commands on stdin: `watch <cluster> <ip> <vip> <port>` (answers
/// `ready`, then `seen <ns> <cpu ns>` once identity 0 holds that endpoint
/// and `decided <ns> <cpu ns>` once its decision for vip:port lists it),
/// `rss`, `quit`. Once synced it says `synced ...`, then `full <wall ns>
/// <engine cpu ns> <destinations>`.
fn client_main(socket: PathBuf, identities: u32, settle: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (rss0, _) = rss_kib();
    rt.block_on(async move {
        let settings = ClientSettings {
            transport: Transport {
                address: Address::Unix(socket),
                tls_root_ca: None,
                token: None,
            },
            mesh: MeshSettings {
                cluster_id: "Kubernetes".into(),
                mesh_id: "cluster.local".into(),
                istio_version: String::new(),
            },
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            stale_grace: Duration::from_secs(30),
        };
        let client = XdsClient::new(settings, XdsMetrics::default());
        let catalog = MemoryCatalog::new();
        catalog.replace_all((0..identities).map(pod_info).collect());
        let start = monotonic_ns();
        client.reconcile(&catalog.all());
        while !(client.synced() && client.pods().len() == identities as usize) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let synced = monotonic_ns();
        tokio::time::sleep(settle).await;
        let (rss, hwm) = rss_kib();
        let (inuse, free, mapped) = heap_kib();
        let trimmed = trimmed_rss_kib();
        let view = client.pod(&pod_info(0).key).context("identity 0 has a stream")?;
        let (wire, eds_wire, endpoints) = held_kib(&view.resources);
        drop(view);
        eprintln!(
            "client synced: heap in use {inuse} KiB, free {free} KiB, own mappings {mapped} KiB; identity 0 holds {wire} KiB of cluster/listener/route bytes, {eds_wire} KiB of EDS bytes, {endpoints} KiB of compact endpoints"
        );
        println!(
            "synced {} {rss0} {rss} {hwm} {trimmed} {inuse}",
            synced - start
        );
        let key = pod_info(0).key;
        let live = LiveDecisions::new(
            Arc::clone(&client),
            BypassPolicy::default(),
            DecisionMetrics::default(),
        );
        let t0 = monotonic_ns();
        live.reconcile();
        // Every identity decided (pods with the same reached inputs share
        // one decision state).
        let keys: Vec<PodKey> = (0..identities).map(|n| pod_info(n).key).collect();
        let full = loop {
            if keys.iter().all(|k| live.decisions(k).is_some()) {
                if let Some(d) = live.decisions(&key) {
                    break d;
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let full_wall = monotonic_ns() - t0;
        eprintln!(
            "client: {} identities decided, {} distinct decision states",
            keys.len(),
            live.distinct_states()
        );
        let held = client
            .pod(&key)
            .context("identity 0 has a stream")?
            .resources;
        let destinations = full.destinations.len();
        drop(full);
        // Read before the bench's own engine below (which is not the
        // agent's: its freed temporaries would count as the agent's).
        let (decided_rss, decided_hwm) = rss_kib();
        let (decided_inuse, _, _) = heap_kib();
        let heap0 = heap_kib().0;
        let cpu0 = cpu_ns();
        let engine = Engine::new(&held, BypassPolicy::default());
        let engine_cpu = cpu_ns() - cpu0;
        let engine_heap = heap_kib().0.saturating_sub(heap0);
        drop(engine);
        eprintln!("client: one decision state (Engine::new on identity 0's resources) holds {engine_heap} KiB of live heap");
        println!("full {full_wall} {engine_cpu} {destinations} {decided_rss} {decided_inuse} {decided_hwm} {engine_heap}");
        let mut watch = client.watch(&key).context("identity 0 has a stream")?;
        let mut stdin = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(line)) = stdin.next() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["watch", cluster, ip, vip, port] => {
                    watch.borrow_and_update();
                    let cpu0 = cpu_ns();
                    println!("ready");
                    loop {
                        let want = Host::Ip(ip.parse()?);
                        let has = {
                            let r = watch.borrow_and_update();
                            r.endpoints
                                .get(*cluster)
                                .is_some_and(|c| c.endpoints().any(|(_, e)| e.host == want))
                        };
                        if has {
                            println!("seen {} {}", monotonic_ns(), cpu_ns() - cpu0);
                            break;
                        }
                        watch.changed().await?;
                    }
                    let dest = DestKey::Service {
                        address: vip.parse()?,
                        port: port.parse()?,
                    };
                    let want: IpAddr = ip.parse()?;
                    loop {
                        let decided = live.decisions(&key).is_some_and(|d| {
                            d.destinations
                                .iter()
                                .find(|x| x.destination == dest)
                                .is_some_and(|x| x.endpoints.iter().any(|e| e.address == want))
                        });
                        if decided {
                            println!("decided {} {}", monotonic_ns(), cpu_ns() - cpu0);
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                }
                ["rss"] => {
                    tokio::time::sleep(settle).await;
                    let (rss, hwm) = rss_kib();
                    let (inuse, free, mapped) = heap_kib();
                    eprintln!("client after changes: heap in use {inuse} KiB, free {free} KiB, own mappings {mapped} KiB");
                    println!("rss {rss} {hwm} {} {inuse}", trimmed_rss_kib());
                }
                _ => break,
            }
        }
        live.stop();
        client.stop_all().await;
        anyhow::Ok(())
    })
}

// ---- the orchestrating process -------------------------------------------

struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<BufReader<ChildStdout>>,
}

impl ClientProc {
    fn spawn(socket: &std::path::Path, identities: u32, settle_ms: u64) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--client")
            .arg(socket)
            .arg("--settle-ms")
            .arg(settle_ms.to_string())
            .arg("--client-identities")
            .arg(identities.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the client process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Result<Vec<String>> {
        let l = self.stdout.next().context("client process ended")??;
        Ok(l.split_whitespace().map(String::from).collect())
    }

    fn say(&mut self, s: &str) -> Result<()> {
        writeln!(self.stdin, "{s}")?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Serialize)]
struct RunResult {
    identities: u32,
    sync_ms: f64,
    rss_before_kib: u64,
    rss_synced_kib: u64,
    hwm_synced_kib: u64,
    /// VmRSS after malloc_trim(0) (live data without freed-but-kept memory).
    rss_synced_trimmed_kib: u64,
    /// Bytes of live heap allocations (mallinfo2 `uordblks`), synced.
    heap_synced_kib: u64,
    /// VmRSS and live heap once every identity is decided (before the
    /// agent's heap trim), and the process's peak RSS until then.
    rss_decided_kib: u64,
    heap_decided_kib: u64,
    hwm_decided_kib: u64,
    /// Live heap of one decision state (an `Engine::new` on identity 0's
    /// resources, measured while it is alive).
    engine_heap_kib: u64,
    heap_after_changes_kib: u64,
    rss_after_changes_kib: u64,
    rss_after_changes_trimmed_kib: u64,
    eds_change_p50_ms: f64,
    eds_change_p99_ms: f64,
    eds_change_max_ms: f64,
    /// Client CPU time per change (from its `watch` to the update held).
    eds_change_cpu_p50_ms: f64,
    eds_change_cpu_p99_ms: f64,
    /// Every identity's first complete decisions, from following them synced.
    full_decide_ms: f64,
    /// CPU time of one `Engine::new` on the synced resources.
    full_decide_cpu_ms: f64,
    destinations: u64,
    /// From the EDS update to the new decision (includes the client's
    /// part above and up to 0.5 ms of polling).
    eds_decision_p50_ms: f64,
    eds_decision_p99_ms: f64,
    eds_decision_max_ms: f64,
    /// Client CPU time from its `watch` to the new decision.
    eds_decision_cpu_p50_ms: f64,
    eds_decision_cpu_p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn run(cli: &Cli, base: &Snapshot, services: &[Service], identities: u32) -> Result<RunResult> {
    let dir = std::env::temp_dir().join(unique_tag("meshlane-xds-scale-"));
    let server = AdsServer::start(&dir, base.clone())?;
    for n in 1..identities {
        // All but one resource shared: each identity has one cluster of
        // its own.
        let mut own = base.derive(base.version.clone());
        let c = Cluster {
            name: format!("outbound|80||own-{n}.bench.svc.cluster.local"),
            ..Default::default()
        };
        own.add(c.name.clone(), &c);
        server.update_node(&node_id(n), own);
    }
    let mut client = ClientProc::spawn(server.socket(), identities, cli.settle_ms)?;
    let synced = client.line()?;
    let [tag, ns, rss0, rss, hwm, trimmed, inuse] = synced.as_slice() else {
        bail!("client said {synced:?}");
    };
    if tag != "synced" {
        bail!("client said {synced:?}");
    }
    let full = client.line()?;
    let [ftag, full_wall, full_cpu, dests, decided_rss, decided_inuse, decided_hwm, engine_heap] =
        full.as_slice()
    else {
        bail!("client said {full:?}");
    };
    if ftag != "full" {
        bail!("client said {full:?}");
    }
    let (full_wall, full_cpu, dests) = (full_wall.clone(), full_cpu.clone(), dests.clone());
    let (decided_rss, decided_inuse) = (decided_rss.clone(), decided_inuse.clone());
    let (decided_hwm, engine_heap) = (decided_hwm.clone(), engine_heap.clone());
    let mut dlat = Vec::new();
    let mut dcpu = Vec::new();
    let mut current = base.clone();
    let mut lat = Vec::new();
    let mut cpu_ms = Vec::new();
    for k in 0..cli.changes {
        let s = &services[(k as usize * 7919) % services.len()];
        let mut moved = s.clone();
        let new_ip = ip(k, [10, 200]);
        moved.endpoints[0] = SocketAddr::new(new_ip, 8080);
        let mut next = current.derive(format!("{}-{k}", base.version));
        let one = sidecar_snapshot("x", SidecarMode::Http, false, std::slice::from_ref(&moved));
        let cla = one.select(&ClusterLoadAssignment::type_url(), &[s.cluster()]);
        let body = cla
            .into_iter()
            .next()
            .context("endpoints of the moved service")?;
        next.add_raw(s.cluster(), body);
        client.say(&format!(
            "watch {} {new_ip} {} {}",
            s.cluster(),
            s.vip,
            s.port
        ))?;
        let ready = client.line()?;
        if ready.first().map(String::as_str) != Some("ready") {
            bail!("client said {ready:?}");
        }
        let pushed = next.clone();
        let t0 = monotonic_ns();
        server.update(pushed);
        let seen = client.line()?;
        let t1: u64 = seen
            .get(1)
            .and_then(|v| v.parse().ok())
            .context("seen <ns>")?;
        lat.push((t1.saturating_sub(t0)) as f64 / 1e6);
        let cpu: u64 = seen
            .get(2)
            .and_then(|v| v.parse().ok())
            .context("seen <ns> <cpu>")?;
        cpu_ms.push(cpu as f64 / 1e6);
        let decided = client.line()?;
        if decided.first().map(String::as_str) != Some("decided") {
            bail!("client said {decided:?}");
        }
        let field = |i: usize| -> Result<u64> {
            decided
                .get(i)
                .and_then(|v| v.parse().ok())
                .context("decided <ns> <cpu>")
        };
        dlat.push(field(1)?.saturating_sub(t0) as f64 / 1e6);
        dcpu.push(field(2)? as f64 / 1e6);
        current = next;
    }
    client.say("rss")?;
    let after = client.line()?;
    lat.sort_by(|a, b| a.total_cmp(b));
    cpu_ms.sort_by(|a, b| a.total_cmp(b));
    dlat.sort_by(|a, b| a.total_cmp(b));
    dcpu.sort_by(|a, b| a.total_cmp(b));
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    Ok(RunResult {
        identities,
        sync_ms: num(ns) as f64 / 1e6,
        rss_before_kib: num(rss0),
        rss_synced_kib: num(rss),
        hwm_synced_kib: num(hwm),
        rss_after_changes_kib: after.get(1).map_or(0, |v| num(v)),
        rss_synced_trimmed_kib: num(trimmed),
        heap_synced_kib: num(inuse),
        rss_decided_kib: num(&decided_rss),
        heap_decided_kib: num(&decided_inuse),
        hwm_decided_kib: num(&decided_hwm),
        engine_heap_kib: num(&engine_heap),
        heap_after_changes_kib: after.get(4).map_or(0, |v| num(v)),
        rss_after_changes_trimmed_kib: after.get(3).map_or(0, |v| num(v)),
        eds_change_p50_ms: percentile(&lat, 0.5),
        eds_change_p99_ms: percentile(&lat, 0.99),
        eds_change_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        eds_change_cpu_p50_ms: percentile(&cpu_ms, 0.5),
        eds_change_cpu_p99_ms: percentile(&cpu_ms, 0.99),
        full_decide_ms: num(&full_wall) as f64 / 1e6,
        full_decide_cpu_ms: num(&full_cpu) as f64 / 1e6,
        destinations: num(&dests),
        eds_decision_p50_ms: percentile(&dlat, 0.5),
        eds_decision_p99_ms: percentile(&dlat, 0.99),
        eds_decision_max_ms: dlat.last().copied().unwrap_or(f64::NAN),
        eds_decision_cpu_p50_ms: percentile(&dcpu, 0.5),
        eds_decision_cpu_p99_ms: percentile(&dcpu, 0.99),
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(socket) = cli.client.clone() {
        return match client_main(
            socket,
            cli.client_identities,
            Duration::from_millis(cli.settle_ms),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xds-scale client: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xds-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: &Cli) -> Result<()> {
    let t = Instant::now();
    let services = mesh(cli.services, cli.endpoints_per_service);
    let base = sidecar_snapshot("1", SidecarMode::Http, false, &services);
    eprintln!(
        "mesh: {} services, {} endpoints, built in {:?}",
        services.len(),
        services.iter().map(|s| s.endpoints.len()).sum::<usize>(),
        t.elapsed()
    );
    let base = Arc::new(base);
    let mut results = Vec::new();
    for n in [1, cli.identities] {
        let r = run(cli, &base, &services, n)?;
        eprintln!(
            "{n} identities: synced in {:.0} ms, RSS {} -> {} KiB (peak {}, trimmed {}, heap in use {}), decided {} KiB (heap in use {}, peak so far {}, one decision state {}), after changes {} KiB (trimmed {}, heap in use {}); EDS change p50 {:.2} ms p99 {:.2} ms max {:.2} ms, client CPU p50 {:.2} ms p99 {:.2} ms",
            r.sync_ms, r.rss_before_kib, r.rss_synced_kib, r.hwm_synced_kib, r.rss_synced_trimmed_kib, r.heap_synced_kib,
            r.rss_decided_kib, r.heap_decided_kib, r.hwm_decided_kib, r.engine_heap_kib,
            r.rss_after_changes_kib, r.rss_after_changes_trimmed_kib, r.heap_after_changes_kib,
            r.eds_change_p50_ms, r.eds_change_p99_ms, r.eds_change_max_ms,
            r.eds_change_cpu_p50_ms, r.eds_change_cpu_p99_ms
        );
        eprintln!(
            "{n} identities: {} destinations decided in {:.0} ms (Engine::new CPU {:.0} ms); EDS change to new decision p50 {:.2} ms p99 {:.2} ms max {:.2} ms, client CPU p50 {:.2} ms p99 {:.2} ms",
            r.destinations, r.full_decide_ms, r.full_decide_cpu_ms,
            r.eds_decision_p50_ms, r.eds_decision_p99_ms, r.eds_decision_max_ms,
            r.eds_decision_cpu_p50_ms, r.eds_decision_cpu_p99_ms
        );
        results.push(r);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
