//! `meshlane`: the node agent and operator CLI. Errors reach the user as one
//! line on stderr and a non-zero exit; `--json` gives machine output.
//! Pod registration lives in [`pod_cmd`], error rendering in [`errors`].

mod errors;
mod pod_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use errors::{error_line, libbpf_log, usage_error_line};

use meshlane::agent::{self, AgentOptions};
use meshlane::layout::{PinLayout, DEFAULT_PIN_ROOT};
use meshlane::loader::{self, Config, VerdictRemedy};
use meshlane::{integrity, probe, status};

#[derive(Parser)]
#[command(
    name = "meshlane",
    version,
    about = "eBPF data path for sidecar service meshes: splice, intercept, bypass"
)]
struct Cli {
    /// Pin root in bpffs where meshlane keeps its maps, programs and links.
    #[arg(long, global = true, env = "MESHLANE_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe the kernel, install (or adopt) the data path and watch it.
    Agent(AgentArgs),
    /// Show programs, links, pods, map fill and counters.
    Status,
    /// Register, remove or list meshed pods (until the CNI plugin does it).
    #[command(subcommand)]
    Pod(pod_cmd::PodCmd),
    /// Check the kernel for every feature meshlane uses.
    Probe,
    /// Remove every link, program, map and pin meshlane created.
    Uninstall,
    /// Benchmark direct vs iptables vs accelerate vs intercept on a simulated node.
    #[cfg(feature = "sim")]
    Bench(meshlane::bench::BenchArgs),
    /// `meshlane bench --quick`: about a minute, prints the table.
    #[cfg(feature = "sim")]
    Demo,
}

#[derive(Args)]
struct AgentArgs {
    /// cgroup v2 directory to attach to (default: the hierarchy's root, from /proc/mounts).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Capacity of the socket map; connections beyond it use the TCP stack.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    sockhash_size: u32,
    /// Bytes queued at a spliced reader before that direction uses TCP
    /// (with its flow control) until the reader catches up; 0 = no limit.
    /// Default: the node's largest TCP receive buffer (net.ipv4.tcp_rmem).
    #[arg(long, default_value_t = meshlane::loader::default_splice_queue_limit())]
    splice_queue_limit: u32,
    /// Splice only: do not attach the interception hooks.
    #[arg(long)]
    no_intercept: bool,
    /// Stream verdict on the sockhash (cuts overlapping retransmissions,
    /// counts TCP-path bytes in FIONREAD): auto attaches it where it passes
    /// every byte exactly once (see `meshlane probe`).
    #[arg(long, value_enum, default_value_t = VerdictRemedy::Auto)]
    verdict_remedy: VerdictRemedy,
    /// Serve Prometheus metrics here (e.g. 127.0.0.1:15099).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Seconds between counter log lines.
    #[arg(long, default_value_t = 30)]
    log_interval: u64,
    /// Install or adopt, print the result and exit.
    #[arg(long)]
    once: bool,
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn require_root() -> Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        anyhow::bail!(
            "meshlane must run as root to read and change BPF state; effective uid is {uid}"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let layout = PinLayout::new(&cli.pin_root);
    match cli.cmd {
        Cmd::Agent(a) => {
            let opts = AgentOptions {
                install: Config {
                    pin_root: cli.pin_root.clone(),
                    cgroup: a.cgroup,
                    sockhash_size: a.sockhash_size,
                    splice_queue_limit: a.splice_queue_limit,
                    intercept: !a.no_intercept,
                    verdict_remedy: a.verdict_remedy,
                },
                metrics_addr: a.metrics_addr,
                log_interval: Duration::from_secs(a.log_interval.max(1)),
                once: a.once,
            };
            if a.once && cli.json {
                let r = agent::start(&opts)?;
                return print_json(&r);
            }
            agent::run(opts)?;
        }
        Cmd::Status => {
            require_root()?;
            let s = status::collect(&layout)?;
            // Status of a running install must not fail because a probe
            // could not run: it then says so instead of the findings.
            let integrity = loader::kernel_facts().map(|facts| {
                let plan = integrity::installed(&facts, layout.link("ml_splice_verdict").exists());
                integrity::Report::new(&facts, &plan)
            });
            if cli.json {
                let mut v = serde_json::to_value(&s)?;
                v["integrity"] = match &integrity {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                };
                print_json(&v)?;
            } else {
                match &integrity {
                    Ok(r) => print!("{s}{r}"),
                    Err(e) => print!("{s}byte integrity: kernel probes could not run: {e}\n"),
                }
            }
        }
        Cmd::Pod(p) => {
            require_root()?;
            pod_cmd::run(p, &layout, cli.json)?;
        }
        Cmd::Probe => {
            // Unprivileged probe loads fail and would look like missing features.
            require_root()?;
            let f = probe::features();
            let integrity = integrity_report()?;
            if cli.json {
                print_json(&serde_json::json!({
                    "kernel": probe::kernel_release(),
                    "minimum_kernel": probe::minimum_kernel(),
                    "features": f,
                    "integrity": integrity
                }))?;
            } else {
                println!(
                    "kernel {} (meshlane needs Linux {} or later)",
                    probe::kernel_release(),
                    probe::minimum_kernel()
                );
                for x in &f {
                    println!(
                        "  {:<45} {}  (Linux {})",
                        x.what,
                        match (x.ok, x.required) {
                            (true, _) => "ok",
                            (false, true) => "MISSING",
                            (false, false) => "missing (optional)",
                        },
                        x.since
                    );
                }
                print!("{integrity}");
            }
            if f.iter().any(|x| !x.ok && x.required) {
                anyhow::bail!("some features are missing");
            }
        }
        #[cfg(feature = "sim")]
        Cmd::Bench(a) => meshlane::bench::cli::main(&a, cli.json)?,
        #[cfg(feature = "sim")]
        Cmd::Demo => meshlane::bench::cli::demo(cli.json)?,
        Cmd::Uninstall => {
            require_root()?;
            layout.check_version()?;
            let n = loader::remove_pins(&layout)
                .with_context(|| format!("removing pins under {}", layout.root().display()))?;
            if cli.json {
                print_json(&serde_json::json!({ "removed_pins": n }))?;
            } else if n == 0 {
                println!(
                    "nothing of meshlane's is installed at {}",
                    layout.root().display()
                );
            } else {
                println!("removed {n} pins under {}", layout.root().display());
            }
        }
    }
    Ok(())
}

/// Kernel behaviours and what the data path does about each, for the
/// default --verdict-remedy auto.
fn integrity_report() -> Result<integrity::Report> {
    let facts = loader::kernel_facts().context("probing how sockhash sockets behave")?;
    let plan = integrity::plan(&facts, loader::VerdictRemedy::Auto)?;
    Ok(integrity::Report::new(&facts, &plan))
}

fn main() -> ExitCode {
    // Behave like a Unix filter when stdout closes early (`| head`).
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // libbpf's own messages go through tracing (RUST_LOG=libbpf=debug), so
    // a failure reaches the user as meshlane's one error line.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_log)));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version go to stdout as clap renders them.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meshlane: {}", usage_error_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshlane: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}
