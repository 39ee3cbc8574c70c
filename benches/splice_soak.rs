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
//! no sidecar: the data path without HAProxy), `raw` (the `acc` pods and
//! sidecars left out of meshlane: plain kernel TCP, the control for faults
//! the chaos options provoke).
//!
//! `--loss-one-in N` drops about one in N payload-carrying TCP packets
//! arriving at each pod's eth0 (sim::chaos::Loss; `--loss-at egress`: leaving
//! it instead, which TCP sees as local congestion, not loss). With SACK, loss
//! makes few overlapping retransmissions, so `--overlap-one-in N` makes them
//! directly: about one in N payload packets arriving at each pod's eth0 goes
//! on trimmed to a head and is followed by the whole packet
//! (sim::chaos::Overlap). Each pair type then reports how many overlap events
//! it absorbed (the receiving pods' TCP MIB, sim::chaos::overlap_events) next
//! to meshlane's trim counters.
//! `--verdict-remedy auto|on|off` is passed to the loader.
//!
//! Options: `-- --secs N --streams N --queue-limit-kib N --round-ms N --seed N
//! --pairs acc,int,pod --loss-one-in N --loss-at ingress|egress
//! --overlap-one-in N --verdict-remedy auto|on|off`.
//! A corrupted stream prints its first wrong offset, the 32 bytes expected
//! and received around it, and every data-path counter.
//! Needs root. Exit status: 0 clean, 1 corruption, 2 setup error.

use std::collections::BTreeMap;
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
use meshlane::loader::VerdictRemedy;
use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::chaos::{overlap_events, Direction, Loss, Overlap};
use meshlane::sim::pattern::{Mismatch, Pattern};
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
    /// Comma-separated: acc, int, pod, raw.
    #[arg(long, default_value = "acc,int")]
    pairs: String,
    /// Drop about one in N payload-carrying TCP packets at each pod's eth0
    /// (0: no loss).
    #[arg(long, default_value_t = 0)]
    loss_one_in: u32,
    /// Which packets of eth0 --loss-one-in drops: arriving or leaving.
    #[arg(long, value_enum, default_value_t = LossAt::Ingress)]
    loss_at: LossAt,
    /// Turn about one in N payload-carrying TCP packets arriving at each
    /// pod's eth0 into an overlapping retransmission (0: none).
    #[arg(long, default_value_t = 0)]
    overlap_one_in: u32,
    /// When the loader attaches the stream verdict.
    #[arg(long, value_enum, default_value_t = VerdictRemedy::Auto)]
    verdict_remedy: VerdictRemedy,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LossAt {
    Ingress,
    Egress,
}

impl LossAt {
    fn direction(self) -> Direction {
        match self {
            LossAt::Ingress => Direction::Ingress,
            LossAt::Egress => Direction::Egress,
        }
    }
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
    /// First, so the chaos programs go before the pods (fields drop in
    /// order).
    losses: Vec<Loss>,
    overlaps: Vec<Overlap>,
    name: &'static str,
    client: Pod,
    server: Pod,
    _sidecars: Vec<Sidecar>,
}

/// `sidecars` false: two pods registered in `mode`, spliced to each other.
/// `register` false: the pods are left out of meshlane (plain TCP).
fn meshed_pair(
    node: &mut Node,
    name: &'static str,
    mode: PodMode,
    with_sidecars: bool,
    register: bool,
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
        if !with_sidecars {
            // No sidecar: the soak's own sockets are the spliced ends.
            meshlane::sim::as_own_proxy(&mut spec);
        }
        if register {
            node.register(pod, &spec)?;
        }
        if with_sidecars {
            sidecars.push(Sidecar::start(pod, SidecarMode::Tcp, 1337)?);
        }
    }
    Ok(MeshedPair {
        losses: Vec::new(),
        overlaps: Vec::new(),
        name,
        client,
        server,
        _sidecars: sidecars,
    })
}

impl MeshedPair {
    /// Puts packet loss on both pods' eth0 (`one_in` 0: none).
    fn add_loss(&mut self, one_in: u32, at: LossAt) -> Result<()> {
        if one_in == 0 {
            return Ok(());
        }
        for pod in [&self.client, &self.server] {
            let loss = Loss::on_iface(pod, "eth0", at.direction(), one_in)?;
            self.losses.push(loss);
        }
        Ok(())
    }

    /// Puts made overlaps on both pods' eth0 (`one_in` 0: none).
    fn add_overlaps(&mut self, one_in: u32) -> Result<()> {
        if one_in == 0 {
            return Ok(());
        }
        for pod in [&self.client, &self.server] {
            self.overlaps.push(Overlap::on(pod, one_in)?);
        }
        Ok(())
    }

    /// (made, failed) overlapping retransmissions so far.
    fn overlaps_made(&self) -> (u64, u64) {
        self.overlaps
            .iter()
            .fold((0, 0), |(m, f), o| (m + o.made(), f + o.failed()))
    }

    /// Overlap events both pods have received so far (each receives: the
    /// server the streams, the client the byte counts).
    fn overlap_events(&self) -> Result<u64> {
        Ok(overlap_events(&self.client)? + overlap_events(&self.server)?)
    }

    /// (packets, segments) the loss programs dropped so far.
    fn dropped(&self) -> (u64, u64) {
        self.losses.iter().fold((0, 0), |(p, s), l| {
            (p + l.dropped(), s + l.segments_dropped())
        })
    }
}

/// meshlane's overlap counters (missing in a build: 0).
const TRIM_COUNTERS: [&str; 3] = [
    "overlaps_trimmed",
    "overlap_bytes_trimmed",
    "overlaps_untrimmed",
];

/// What one pair type went through over the run.
#[derive(Default)]
struct Tally {
    rounds: u64,
    bytes: u64,
    overlap_events: u64,
    /// Deltas of TRIM_COUNTERS, in that order.
    trims: [u64; 3],
    corrupted: usize,
}

/// The data-path counters, TRIM_COUNTERS among them.
fn counters(node: &Node) -> BTreeMap<String, u64> {
    meshlane::status::read_counters(&node.layout)
}

fn trim_counters(c: &BTreeMap<String, u64>) -> [u64; 3] {
    TRIM_COUNTERS.map(|n| c.get(n).copied().unwrap_or(0))
}

/// Problems the readers found (stream corruption), shared with main.
type Findings = Arc<Mutex<Vec<String>>>;

/// Bytes shown on each side of a stream's first wrong byte.
const AROUND_HALF: usize = 16;

/// The received bytes around a stream's first wrong byte: up to 16 before
/// it and 16 from it, gathered across reads.
struct Around {
    at: Mismatch,
    /// Stream offset of `got[0]`.
    start: u64,
    got: Vec<u8>,
}

impl Around {
    /// `recent` holds the bytes received just before `buf`, which starts
    /// at stream offset `offset` and holds the wrong byte `at`.
    fn new(at: Mismatch, recent: &[u8], offset: u64, buf: &[u8]) -> Self {
        let i = (at.offset - offset) as usize;
        let mut got: Vec<u8> = recent.iter().chain(&buf[..i]).copied().collect();
        let keep = got.len().min(AROUND_HALF);
        got.drain(..got.len() - keep);
        let start = at.offset - keep as u64;
        let mut a = Around { at, start, got };
        a.extend(&buf[i..]);
        a
    }

    fn done(&self) -> bool {
        self.got.len() >= (self.at.offset - self.start) as usize + AROUND_HALF
    }

    fn extend(&mut self, more: &[u8]) {
        let room =
            ((self.at.offset - self.start) as usize + AROUND_HALF).saturating_sub(self.got.len());
        self.got.extend_from_slice(&more[..room.min(more.len())]);
    }

    /// The wrong byte, then the expected and received bytes in hex.
    fn report(&self, pattern: &Pattern) -> String {
        let mut want = vec![0u8; self.got.len()];
        pattern.fill(self.start, &mut want);
        format!(
            "{}\n      expected from byte {}: {}\n      received from byte {}: {}\n      (the first wrong byte is at index {} of these)",
            self.at,
            self.start,
            hex(&want),
            self.start,
            hex(&self.got),
            self.at.offset - self.start
        )
    }
}

/// Bytes as hex pairs, a space between groups of four.
fn hex(b: &[u8]) -> String {
    b.chunks(4)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last AROUND_HALF bytes of `recent` followed by `buf`.
fn keep_recent(recent: &mut Vec<u8>, buf: &[u8]) {
    recent.extend_from_slice(&buf[buf.len().saturating_sub(AROUND_HALF)..]);
    let extra = recent.len().saturating_sub(AROUND_HALF);
    recent.drain(..extra);
}

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
    let mut recent = Vec::with_capacity(2 * AROUND_HALF);
    let mut around: Option<Around> = None;
    let mut bad = false;
    let report = |a: &Around| {
        findings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("stream from {peer}: {}", a.report(&pattern)));
    };
    loop {
        let want = 1 + rng.below(buf.len() as u64) as usize;
        match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(a) = around.as_mut() {
                    a.extend(&buf[..n]);
                } else if !bad {
                    if let Some(m) = pattern.mismatch(offset, &buf[..n]) {
                        bad = true;
                        around = Some(Around::new(m, &recent, offset, &buf[..n]));
                    } else {
                        keep_recent(&mut recent, &buf[..n]);
                    }
                }
                if around.as_ref().is_some_and(Around::done) {
                    if let Some(a) = around.take() {
                        report(&a);
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
                if let Some(a) = around.take() {
                    report(&a);
                }
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
    if let Some(a) = around.take() {
        report(&a);
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
        // Every byte the reader got was checked: fewer bytes and no
        // mismatch from the reader means the stream ended early.
        let note = if received < offset {
            format!(", the first missing byte is at offset {received}")
        } else {
            String::new()
        };
        return Err(format!(
            "wrote {offset} bytes, the reader received {received} ({:+}){note}",
            received as i128 - offset as i128
        ));
    }
    Ok(offset)
}

fn soak(cli: &Cli) -> Result<bool> {
    meshlane::sim::can_run_root_tests().map_err(|e| anyhow::anyhow!("needs root: {e}"))?;
    let mut node = Node::new(NodeOptions {
        splice_queue_limit: cli.queue_limit_kib * 1024,
        verdict_remedy: cli.verdict_remedy,
        ..NodeOptions::default()
    })?;
    let mut pairs = Vec::new();
    for name in cli.pairs.split(',').map(str::trim) {
        let mut pair = match name {
            "acc" => meshed_pair(&mut node, "acc", PodMode::Accelerate, true, true)?,
            "int" => meshed_pair(&mut node, "int", PodMode::Intercept, true, true)?,
            "pod" => meshed_pair(&mut node, "pod", PodMode::Accelerate, false, true)?,
            "raw" => meshed_pair(&mut node, "raw", PodMode::Accelerate, true, false)?,
            other => anyhow::bail!("--pairs: unknown pair `{other}` (known: acc, int, pod, raw)"),
        };
        pair.add_loss(cli.loss_one_in, cli.loss_at)?;
        pair.add_overlaps(cli.overlap_one_in)?;
        pairs.push(pair);
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
    let mut tallies: Vec<Tally> = pairs.iter().map(|_| Tally::default()).collect();
    let mut round = 0u64;
    let mut failures = Vec::new();
    let mut counters_at_failure = None;
    while Instant::now() < deadline && failures.is_empty() {
        let k = (round % pairs.len() as u64) as usize;
        let (pair, tally) = (&pairs[k], &mut tallies[k]);
        let events0 = pair.overlap_events()?;
        let trims0 = trim_counters(&counters(&node));
        let to = SocketAddr::from((pair.server.ip4, SINK_PORT));
        let dur = Duration::from_millis(cli.round_ms);
        let handles: Vec<_> = (0..cli.streams)
            .map(|i| {
                let seed = cli.seed ^ (round << 8) ^ u64::from(i);
                pair.client
                    .thread(move || write_stream(to, dur, seed, i % 2 == 1))
            })
            .collect::<Result<_>>()?;
        let mut writer_failures = 0;
        for (i, h) in handles.into_iter().enumerate() {
            let failure = match h.join() {
                Ok(Ok(n)) => {
                    tally.bytes += n;
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => "panicked".to_string(),
            };
            writer_failures += 1;
            failures.push(format!("round {round} {} stream {i}: {failure}", pair.name));
        }
        let found: Vec<String> = findings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        // A corrupted stream usually fails on both ends (wrong bytes at the
        // reader, a wrong count at the writer), and the reader behind a
        // sidecar cannot name the writer's stream: count the larger side.
        tally.corrupted += writer_failures.max(found.len());
        failures.extend(
            found
                .into_iter()
                .map(|f| format!("round {round} {}: {f}", pair.name)),
        );
        let c = counters(&node);
        if !failures.is_empty() {
            counters_at_failure = Some((c.clone(), pair_mib(pair)));
        }
        let trims1 = trim_counters(&c);
        for (t, (a, b)) in tally.trims.iter_mut().zip(trims0.iter().zip(trims1)) {
            *t += b.saturating_sub(*a);
        }
        tally.overlap_events += pair.overlap_events()?.saturating_sub(events0);
        tally.rounds += 1;
        round += 1;
        eprint!(
            "\rround {round}: {:.1} GiB checked, {} hand-overs to TCP, {} overlap events",
            gib(tallies.iter().map(|t| t.bytes).sum()),
            node.counter("splice_throttled") - t0,
            tallies.iter().map(|t| t.overlap_events).sum::<u64>()
        );
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    let bytes: u64 = tallies.iter().map(|t| t.bytes).sum();
    println!(
        "splice soak: {round} rounds x {} streams, {:.2} GiB checked byte by byte, queue limit {} KiB, {} hand-overs to TCP, {} resumptions, {} corrupted",
        cli.streams,
        gib(bytes),
        cli.queue_limit_kib,
        node.counter("splice_throttled") - t0,
        node.counter("splice_resumed") - r0,
        failures.len()
    );
    println!(
        "loss: {}, made overlaps: {}, verdict remedy: {:?}",
        describe_loss(cli),
        match cli.overlap_one_in {
            0 => "off".to_string(),
            n => format!("about 1 in {n} payload packets arriving at every pod's eth0"),
        },
        cli.verdict_remedy
    );
    for (pair, t) in pairs.iter().zip(&tallies) {
        print_tally(pair, t);
    }
    for f in &failures {
        println!("  FAIL {f}");
    }
    if let Some((c, mib)) = counters_at_failure {
        println!("  counters after the failed round:");
        for (name, v) in c {
            println!("    {name} {v}");
        }
        println!("  TCP counters of the failed pair's pods (non-zero):");
        for line in mib {
            println!("    {line}");
        }
    }
    // Readers exit on their own after EOF; give them a moment before the
    // pods go away.
    std::thread::sleep(Duration::from_millis(100));
    Ok(failures.is_empty())
}

/// The non-zero TCP MIB counters of both pods of `pair`, one line each.
fn pair_mib(pair: &MeshedPair) -> Vec<String> {
    let mut out = Vec::new();
    for pod in [&pair.client, &pair.server] {
        match meshlane::sim::chaos::tcp_mib(pod) {
            Ok(m) => out.extend(
                m.into_iter()
                    .filter(|(_, v)| *v != 0)
                    .map(|(n, v)| format!("{} {n} {v}", pod.name)),
            ),
            Err(e) => out.push(format!("{}: {e:#}", pod.name)),
        }
    }
    out
}

fn describe_loss(cli: &Cli) -> String {
    let at = match cli.loss_at {
        LossAt::Ingress => "arriving at",
        LossAt::Egress => "leaving",
    };
    match cli.loss_one_in {
        0 => "off".to_string(),
        n => format!("about 1 in {n} payload packets {at} every pod's eth0"),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// `PAIR: N overlap events absorbed, C corrupted (K rounds, X GiB)` and the
/// pair's trim counters and drops.
fn print_tally(pair: &MeshedPair, t: &Tally) {
    println!(
        "{}: {} overlap events absorbed, {} corrupted ({} rounds, {:.2} GiB)",
        pair.name,
        t.overlap_events,
        t.corrupted,
        t.rounds,
        gib(t.bytes)
    );
    let (packets, segments) = pair.dropped();
    let (made, failed) = pair.overlaps_made();
    println!(
        "  {} {}, {} {}, {} {}; dropped {packets} packets ({segments} segments); made {made} overlaps ({failed} left whole)",
        TRIM_COUNTERS[0], t.trims[0], TRIM_COUNTERS[1], t.trims[1], TRIM_COUNTERS[2], t.trims[2],
    );
}

fn main() -> ExitCode {
    // clap prints --help to stdout (exit 0) and a usage error to stderr
    // (exit 2).
    let cli = Cli::parse();
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("splice-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
