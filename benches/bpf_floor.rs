//! `cargo bench --bench bpf_floor`: what the kernel charges a TCP
//! connection for cgroup BPF programs that have nothing to do. Issue 14
//! asked for at most 1 µs of BPF run time (the kernel's own per-program
//! statistics) for all of meshlane's programs per application connection;
//! this bench measures the floor under that number, which no program logic
//! can go below, and what meshlane installed costs a socket it leaves
//! alone (a pod that is not registered, such as the benchmark's `iptables`
//! mode's).
//!
//! Three cgroups, and the process moves between them, so each step's
//! sockets (listener included: an accepted socket keeps its listener's
//! cgroup) run only that cgroup's programs:
//!
//! - `none`: nothing attached;
//! - `noop`: an empty `sockops` program and an empty `cgroup/connect4`
//!   program (`r0 = 1; exit`), attached by bpf_link;
//! - `meshlane`: meshlane's data path installed (interception included,
//!   a private pin root: `sim::Node`), no pod registered.
//!
//! Each round runs the three steps, interleaved. A step makes loopback TCP
//! connections in this process's network namespace for `--step-ms`, one at
//! a time: connect, accept, 64 bytes each way, close both ends. Reported:
//! connections per second and, per program, runs and run time per
//! connection; medians over rounds, rate ratios as medians of per-round
//! ratios to `none`. The kernel's run statistics (BPF_ENABLE_STATS) are on
//! in every step, so the rates compare like with like; with
//! `--without-stats` they stay off and only the rates are reported.
//!
//! Options: `-- --rounds N --step-ms MS --cpu N|--no-pin --without-stats
//! --json`.
//! Needs root, bpffs, cgroup v2 and BPF.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshlane::bench::net::pin_thread;
use meshlane::bench::stats::Stat;
use meshlane::datapath::links::{enable_run_stats, node_links, prog_fd_stats};
use meshlane::sim::{unique_tag, Node, NodeOptions, TestCgroup};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "bpf-floor",
    about = "Run time of empty cgroup BPF programs per TCP connection"
)]
struct Cli {
    /// Measured rounds (each runs both steps).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Length of one step.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    step_ms: u64,
    /// CPU to pin the run to.
    #[arg(long, default_value_t = 1, conflicts_with = "no_pin")]
    cpu: usize,
    #[arg(long)]
    no_pin: bool,
    /// Leave the kernel's BPF statistics off (rates only): they cost every
    /// program run two clock reads, and a node runs without them.
    #[arg(long)]
    without_stats: bool,
    /// One JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// An empty program of one type, loaded (not attached).
struct EmptyProgram {
    fd: OwnedFd,
    name: &'static str,
    attach: libbpf_sys::bpf_attach_type,
}

impl EmptyProgram {
    /// `r0 = 1; exit`: "allow" for both program types.
    fn load(
        name: &'static str,
        prog_type: libbpf_sys::bpf_prog_type,
        attach: libbpf_sys::bpf_attach_type,
    ) -> Result<Self> {
        let insn = |code: u8, imm: i32| libbpf_sys::bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm,
        };
        // BPF_ALU64 | BPF_MOV | BPF_K, then BPF_JMP | BPF_EXIT.
        let insns = [insn(0xb7, 1), insn(0x95, 0)];
        let opts = libbpf_sys::bpf_prog_load_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
            expected_attach_type: attach,
            ..Default::default()
        };
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: valid instruction array, NUL-terminated strings, sized opts.
        let fd = unsafe {
            libbpf_sys::bpf_prog_load(
                prog_type,
                cname.as_ptr(),
                c"Dual BSD/GPL".as_ptr(),
                insns.as_ptr(),
                insns.len() as _,
                &opts as *const _ as *mut _,
            )
        };
        if fd < 0 {
            bail!(
                "loading the empty {name} program: {}",
                std::io::Error::from_raw_os_error(-fd)
            );
        }
        // SAFETY: a non-negative fd is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, name, attach })
    }

    /// Attaches to `cgroup` while the returned link fd lives.
    fn attach(&self, cgroup: &File) -> Result<OwnedFd> {
        // SAFETY: both fds are open; no options.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(
                self.fd.as_raw_fd(),
                cgroup.as_raw_fd(),
                self.attach,
                std::ptr::null(),
            )
        };
        if fd < 0 {
            bail!(
                "attaching the empty {} program: {}",
                self.name,
                std::io::Error::from_raw_os_error(-fd)
            );
        }
        // SAFETY: a non-negative fd is ours.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// (run count, run time ns) so far.
    fn stats(&self) -> Result<(u64, u64)> {
        prog_fd_stats(self.fd.as_fd())
            .with_context(|| format!("reading the {} program's run statistics", self.name))
    }
}

/// Connections made one at a time for `step`, from a listener made now
/// (in the cgroup the process is in): (count, elapsed).
fn connect_loop(step: Duration) -> Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let (mut buf, msg) = ([0u8; 64], [7u8; 64]);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < step {
        let mut c = TcpStream::connect(addr).context("connecting over loopback")?;
        let (mut a, _) = listener.accept().context("accepting")?;
        c.write_all(&msg)?;
        a.read_exact(&mut buf)?;
        a.write_all(&msg)?;
        c.read_exact(&mut buf)?;
        n += 1;
    }
    Ok((n, start.elapsed()))
}

/// Run count and run time (ns) per program name.
type ProgramStats = BTreeMap<String, (u64, u64)>;

/// One step of a round: where its sockets live and whose programs run.
struct Step<'a> {
    name: &'static str,
    cgroup: &'a TestCgroup,
    stats: Box<dyn Fn() -> Result<ProgramStats> + 'a>,
}

#[derive(Serialize)]
struct ProgramCost {
    program: String,
    runs_per_connection: f64,
    ns_per_run: f64,
    ns_per_connection: f64,
}

#[derive(Serialize)]
struct StepReport {
    step: &'static str,
    /// Median over rounds.
    connections_per_sec: f64,
    /// Median of the per-round ratios to `none`.
    rate_ratio_to_none: f64,
    /// Median over rounds of all programs' run time per connection.
    bpf_ns_per_connection: f64,
    programs: Vec<ProgramCost>,
}

#[derive(Serialize)]
struct Report {
    rounds: u32,
    step_ms: u64,
    cpu: Option<usize>,
    bpf_stats: bool,
    steps: Vec<StepReport>,
}

fn median(v: Vec<f64>) -> f64 {
    Stat::of(&v).map_or(0.0, |s| s.median)
}

/// What one step measured in one round.
#[derive(Default)]
struct StepSamples {
    rate: Vec<f64>,
    bpf_ns: Vec<f64>,
    /// Per program: runs and ns per connection, one entry per round.
    programs: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
}

/// One step: this process visits the step's cgroup for it, then goes back
/// `home`.
fn measure(step: &Step<'_>, home: &Path, dur: Duration, into: &mut StepSamples) -> Result<()> {
    let _in = step.cgroup.visit(home)?;
    let before = (step.stats)()?;
    let (n, t) = connect_loop(dur)?;
    let after = (step.stats)()?;
    let n = n.max(1) as f64;
    into.rate.push(n / t.as_secs_f64());
    let mut total = 0.0;
    for (name, (runs, ns)) in &after {
        let (r0, t0) = before.get(name).copied().unwrap_or_default();
        let (runs, ns) = ((runs - r0) as f64, (ns - t0) as f64);
        let e = into.programs.entry(name.clone()).or_default();
        e.0.push(runs / n);
        e.1.push(ns / n);
        total += ns / n;
    }
    into.bpf_ns.push(total);
    Ok(())
}

fn summarize(step: &Step<'_>, s: StepSamples, none_rates: &[f64]) -> StepReport {
    let ratios = s.rate.iter().zip(none_rates).map(|(a, b)| a / b).collect();
    let programs = s
        .programs
        .into_iter()
        .map(|(program, (runs, ns))| {
            let (runs, ns) = (median(runs), median(ns));
            ProgramCost {
                program,
                runs_per_connection: runs,
                ns_per_run: if runs > 0.0 { ns / runs } else { 0.0 },
                ns_per_connection: ns,
            }
        })
        .filter(|p| p.runs_per_connection > 0.0)
        .collect();
    StepReport {
        step: step.name,
        connections_per_sec: median(s.rate),
        rate_ratio_to_none: median(ratios),
        bpf_ns_per_connection: median(s.bpf_ns),
        programs,
    }
}

fn no_programs() -> Result<ProgramStats> {
    Ok(ProgramStats::new())
}

fn run(cli: &Cli) -> Result<Report> {
    let cpu = (!cli.no_pin).then_some(cli.cpu);
    pin_thread(cpu).context("pinning to the CPU")?;
    let _stats = if cli.without_stats {
        None
    } else {
        Some(enable_run_stats().context("the kernel refused BPF run statistics")?)
    };
    // The node moves this process into its cgroup (home); `measure` visits
    // each step's cgroup from there.
    let node = Node::new(NodeOptions::default()).context("installing meshlane on a test cgroup")?;
    let noop_cg = TestCgroup::create(&unique_tag("ml-floor-noop"))?;
    let none_cg = TestCgroup::create(&unique_tag("ml-floor-none"))?;
    let noop_dir = File::open(noop_cg.path()).context("opening the cgroup")?;
    let empty = [
        EmptyProgram::load(
            "ml_noop_sockops",
            libbpf_sys::BPF_PROG_TYPE_SOCK_OPS,
            libbpf_sys::BPF_CGROUP_SOCK_OPS,
        )?,
        EmptyProgram::load(
            "ml_noop_connect",
            libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            libbpf_sys::BPF_CGROUP_INET4_CONNECT,
        )?,
    ];
    let _links: Vec<OwnedFd> = empty
        .iter()
        .map(|p| p.attach(&noop_dir))
        .collect::<Result<_>>()?;
    let steps = [
        Step {
            name: "none",
            cgroup: &none_cg,
            stats: Box::new(no_programs),
        },
        Step {
            name: "noop",
            cgroup: &noop_cg,
            stats: Box::new(|| {
                empty
                    .iter()
                    .map(|p| Ok((p.name.to_string(), p.stats()?)))
                    .collect()
            }),
        },
        Step {
            name: "meshlane",
            cgroup: &node.cgroup,
            stats: Box::new(|| {
                Ok(node_links(&node.layout)
                    .into_iter()
                    .map(|l| (l.program, (l.run_count, l.run_time_ns)))
                    .collect())
            }),
        },
    ];
    let dur = Duration::from_millis(cli.step_ms);
    let mut samples: Vec<StepSamples> = steps.iter().map(|_| StepSamples::default()).collect();
    // A warm-up round, discarded.
    for step in &steps {
        measure(
            step,
            node.cgroup.path(),
            dur / 4,
            &mut StepSamples::default(),
        )?;
    }
    for _ in 0..cli.rounds {
        for (step, into) in steps.iter().zip(samples.iter_mut()) {
            measure(step, node.cgroup.path(), dur, into)?;
        }
    }
    let none_rates = samples[0].rate.clone();
    let steps = steps
        .iter()
        .zip(samples)
        .map(|(step, s)| summarize(step, s, &none_rates))
        .collect();
    Ok(Report {
        rounds: cli.rounds,
        step_ms: cli.step_ms,
        cpu,
        bpf_stats: !cli.without_stats,
        steps,
    })
}

fn print_table(r: &Report) {
    let cpu = r
        .cpu
        .map_or("not pinned".to_string(), |c| format!("CPU {c}"));
    println!(
        "### Cgroup programs with nothing to do, per TCP connection ({} rounds, {} ms steps, {cpu}, BPF statistics {})\n",
        r.rounds,
        r.step_ms,
        if r.bpf_stats { "on" } else { "off" }
    );
    println!("| step | connections/s | rate / none | BPF ns / connection | per program (runs, ns per run) |");
    println!("|---|---|---|---|---|");
    for s in &r.steps {
        let progs: Vec<String> = s
            .programs
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} x {:.0}",
                    p.program, p.runs_per_connection, p.ns_per_run
                )
            })
            .collect();
        println!(
            "| {} | {:.0} | {:.3} | {:.0} | {} |",
            s.step,
            s.connections_per_sec,
            s.rate_ratio_to_none,
            s.bpf_ns_per_connection,
            progs.join("; ")
        );
    }
}

fn main() -> ExitCode {
    // clap prints --help to stdout (exit 0) and a usage error to stderr
    // (exit 2).
    let cli = Cli::parse();
    match run(&cli) {
        Ok(r) if cli.json => match serde_json::to_string_pretty(&r) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bpf-floor: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            print_table(&r);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpf-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
