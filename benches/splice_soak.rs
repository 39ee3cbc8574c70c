//! `cargo bench --bench splice_soak`: a correctness soak for splicing under
//! backpressure, the way a mesh pod meets it. Rounds alternate between
//! accelerate pods (Istio's golden iptables + HAProxy sidecars, spliced
//! across the REDIRECTs) and intercept pods (meshlane interception + the same
//! sidecars); in each, several streams write a deterministic pattern in
//! random-sized writes (partial writes honoured) while the reader pauses at
//! random, so the small splice queue limit hands directions to TCP and back
//! many times. The reader checks every byte and the writer compares the
//! reader's count with what it wrote: a lost, doubled or reordered byte
//! fails the run naming the stream, offset and round.
//!
//! `--pairs` picks the pairs: `acc` (accelerate + sidecars), `int`
//! (intercept + sidecars), `pod` (two accelerate pods spliced to each other,
//! no sidecar: the data path without HAProxy).
//!
//! Options: `-- --secs N --streams N --queue-limit-kib N --round-ms N --seed N
//! --pairs acc,int,pod`.
//! Needs root. Exit status: 0 clean, 1 corruption, 2 setup error.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use meshlane::bench::net::poll_fd;
use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::pattern::Pattern;
use meshlane::sim::{iptables, Node, NodeOptions, Pod, Sidecar, SidecarMode};

const SINK_PORT: u16 = 9100;
const GOLDEN: &str = "cni-plugin_basic.txt.golden";

#[derive(Parser)]
#[command(name = "splice-soak")]
struct Cli {
    /// How long to soak.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// Concurrent streams per round.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    streams: u32,
    /// Splice queue limit (small: many hand-overs to TCP and back).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    queue_limit_kib: u32,
    /// Length of one round's writing.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    round_ms: u64,
    #[arg(long, default_value_t = 0x736f_616b)]
    seed: u64,
    /// Comma-separated: acc, int, pod.
    #[arg(long, default_value = "acc,int")]
    pairs: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// xorshift64*: deterministic sizes and pauses from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One meshed client/server pair with sidecars, in `mode`.
struct MeshedPair {
    name: &'static str,
    client: Pod,
    server: Pod,
    _sidecars: Vec<Sidecar>,
}

/// `sidecars` false: two pods registered in `mode`, spliced to each other.
fn meshed_pair(
    node: &mut Node,
    name: &'static str,
    mode: PodMode,
    with_sidecars: bool,
) -> Result<MeshedPair> {
    let client = node.pod(&format!("{name}c"))?;
    let server = node.pod(&format!("{name}s"))?;
    let mut sidecars = Vec::new();
    for pod in [&client, &server] {
        if mode == PodMode::Accelerate && with_sidecars {
            iptables::apply_golden(pod, GOLDEN)?;
        }
        let mut spec = PodSpec::istio(pod.name.clone());
        spec.mode = mode;
        node.register(pod, &spec)?;
        if with_sidecars {
            sidecars.push(Sidecar::start(pod, SidecarMode::Tcp, 1337)?);
        }
    }
    Ok(MeshedPair {
        name,
        client,
        server,
        _sidecars: sidecars,
    })
}

/// Problems the readers found (stream corruption), shared with main.
type Findings = Arc<Mutex<Vec<String>>>;

/// Accepts streams on the server pod until `stop`; each is read to EOF
/// with random pauses, checked byte by byte, and answered with its length.
fn start_sink(pod: &Pod, seed: u64, stop: Arc<AtomicBool>, findings: Findings) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.thread(move || {
        let l = match TcpListener::bind(("0.0.0.0", SINK_PORT)) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = l.set_nonblocking(true);
        let _ = tx.send(Ok(()));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, peer)) => {
                    n += 1;
                    let findings = findings.clone();
                    let seed = seed ^ n.wrapping_mul(0x9e37_79b9);
                    std::thread::spawn(move || read_stream(s, peer, seed, findings));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("sink did not start")?
        .context("binding the sink")
}

fn read_stream(mut s: TcpStream, peer: SocketAddr, seed: u64, findings: Findings) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let pattern = Pattern::new(7);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    let mut bad = false;
    loop {
        let want = 1 + rng.below(buf.len() as u64) as usize;
        match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if !bad {
                    if let Some(m) = pattern.mismatch(offset, &buf[..n]) {
                        bad = true;
                        findings
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("stream from {peer}: {m}"));
                    }
                }
                offset += n as u64;
                if rng.below(16) == 0 {
                    std::thread::sleep(Duration::from_micros(200 + rng.below(3000)));
                }
            }
            // Spurious EAGAIN on a sockhash socket (docs/ARCHITECTURE.md).
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                continue
            }
            Err(e) => {
                findings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "stream from {peer}: read failed after {offset} bytes: {e}"
                    ));
                return;
            }
        }
    }
    let _ = s.write_all(&offset.to_le_bytes());
}

/// Writes the pattern for `dur` in random-sized writes, closes the write
/// side and compares the reader's count with what was written. A
/// `nonblocking` writer waits in poll() on EAGAIN like an event loop (the
/// bench harness's and proxies' way); a blocking one sleeps in write().
fn write_stream(
    to: SocketAddr,
    dur: Duration,
    seed: u64,
    nonblocking: bool,
) -> Result<u64, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_nonblocking(nonblocking)
        .map_err(|e| format!("O_NONBLOCK: {e}"))?;
    let pattern = Pattern::new(7);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        let len = 1 + rng.below(buf.len() as u64) as usize;
        pattern.fill(offset, &mut buf[..len]);
        match s.write(&buf[..len]) {
            Ok(n) => offset += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                poll_fd(s.as_raw_fd(), libc::POLLOUT, 20)
            }
            Err(e) => return Err(format!("write after {offset} bytes: {e}")),
        }
    }
    s.set_nonblocking(false)
        .map_err(|e| format!("O_NONBLOCK off: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut count = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match s.read(&mut count[got..]) {
            Ok(0) => return Err(format!("no byte count after writing {offset}")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the count after {offset} bytes: {e}")),
        }
    }
    let received = u64::from_le_bytes(count);
    if received != offset {
        return Err(format!(
            "wrote {offset} bytes, the reader received {received} ({:+})",
            received as i128 - offset as i128
        ));
    }
    Ok(offset)
}

fn soak(cli: &Cli) -> Result<bool> {
    meshlane::sim::can_run_root_tests().map_err(|e| anyhow::anyhow!("needs root: {e}"))?;
    let mut node = Node::new(NodeOptions {
        splice_queue_limit: cli.queue_limit_kib * 1024,
        ..NodeOptions::default()
    })?;
    let mut pairs = Vec::new();
    for name in cli.pairs.split(',').map(str::trim) {
        pairs.push(match name {
            "acc" => meshed_pair(&mut node, "acc", PodMode::Accelerate, true)?,
            "int" => meshed_pair(&mut node, "int", PodMode::Intercept, true)?,
            "pod" => meshed_pair(&mut node, "pod", PodMode::Accelerate, false)?,
            other => anyhow::bail!("--pairs: unknown pair `{other}` (known: acc, int, pod)"),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let findings: Findings = Arc::default();
    for p in &pairs {
        start_sink(&p.server, cli.seed, stop.clone(), findings.clone())?;
    }
    let deadline = Instant::now() + Duration::from_secs(cli.secs);
    let (t0, r0) = (
        node.counter("splice_throttled"),
        node.counter("splice_resumed"),
    );
    let mut round = 0u64;
    let mut bytes = 0u64;
    let mut failures = Vec::new();
    while Instant::now() < deadline && failures.is_empty() {
        let pair = &pairs[(round % pairs.len() as u64) as usize];
        let to = SocketAddr::from((pair.server.ip4, SINK_PORT));
        let dur = Duration::from_millis(cli.round_ms);
        let handles: Vec<_> = (0..cli.streams)
            .map(|i| {
                let seed = cli.seed ^ (round << 8) ^ u64::from(i);
                pair.client
                    .thread(move || write_stream(to, dur, seed, i % 2 == 1))
            })
            .collect::<Result<_>>()?;
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(n)) => bytes += n,
                Ok(Err(e)) => failures.push(format!("round {round} {} stream {i}: {e}", pair.name)),
                Err(_) => {
                    failures.push(format!("round {round} {} stream {i}: panicked", pair.name))
                }
            }
        }
        failures.extend(findings.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
        round += 1;
        eprint!(
            "\rround {round}: {:.1} GiB checked, {} hand-overs to TCP",
            bytes as f64 / (1u64 << 30) as f64,
            node.counter("splice_throttled") - t0
        );
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    println!(
        "splice soak: {round} rounds x {} streams, {:.2} GiB checked byte by byte, queue limit {} KiB, {} hand-overs to TCP, {} resumptions, {} corrupted",
        cli.streams,
        bytes as f64 / (1u64 << 30) as f64,
        cli.queue_limit_kib,
        node.counter("splice_throttled") - t0,
        node.counter("splice_resumed") - r0,
        failures.len()
    );
    for f in &failures {
        println!("  FAIL {f}");
    }
    // Readers exit on their own after EOF; give them a moment before the
    // pods go away.
    std::thread::sleep(Duration::from_millis(100));
    Ok(failures.is_empty())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("splice-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
