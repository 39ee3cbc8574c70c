//! `meshlane`: the node agent and operator CLI. Errors reach the user as one
//! line on stderr and a non-zero exit; `--json` gives machine output.
//! Pod registration lives in [`pod_cmd`], error rendering in [`errors`].

mod errors;
mod explain_cmd;
mod install_cni;
mod pod_cmd;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use errors::{error_line, usage_error_line};

use meshlane::agent;
use meshlane::config::{AgentConfig, LogFormat};
use meshlane::datapath::LinkId;
use meshlane::layout::{PinLayout, DEFAULT_PIN_ROOT};
use meshlane::loader::{self, VerdictRemedy};
use meshlane::{integrity, probe, status};

#[derive(Parser)]
#[command(
    name = "meshlane",
    version,
    about = "eBPF data path for sidecar service meshes: splice, intercept, bypass"
)]
struct Cli {
    /// Pin root in bpffs where meshlane keeps its maps, programs and links
    /// [default: /sys/fs/bpf/meshlane, or the agent config's pinRoot].
    #[arg(long, global = true, env = "MESHLANE_PIN_ROOT")]
    pin_root: Option<PathBuf>,
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
    /// Register, remove or list meshed pods by hand (in a cluster, meshlane-cni does it).
    #[command(subcommand)]
    Pod(pod_cmd::PodCmd),
    /// Check the kernel for every feature meshlane uses.
    Probe,
    /// Say, for every outbound destination of a proxy, BYPASS or SIDECAR and why.
    Explain(explain_cmd::ExplainArgs),
    /// Remove every link, program, map and pin meshlane created.
    Uninstall,
    /// Install the meshlane-cni plugin binary and its entry last in the
    /// node's CNI configuration (or --uninstall them).
    InstallCni(install_cni::InstallCniArgs),
    /// Benchmark direct vs iptables vs accelerate vs intercept on a simulated node.
    #[cfg(feature = "sim")]
    Bench(meshlane::bench::BenchArgs),
    /// `meshlane bench --quick`: about a minute, prints the table.
    #[cfg(feature = "sim")]
    Demo,
    /// The lab's commands in a node build: one line saying what build has them.
    #[cfg(not(feature = "sim"))]
    #[command(name = "bench", hide = true, disable_help_flag = true)]
    NoBench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    },
    #[cfg(not(feature = "sim"))]
    #[command(name = "demo", hide = true, disable_help_flag = true)]
    NoDemo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    },
}

/// What `meshlane bench`/`demo` say in a node build (no feature `sim`).
#[cfg(not(feature = "sim"))]
fn lab_only(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`meshlane {command}` needs a build with the simulated node: `cargo build --release --features sim` (or `make demo`); this is the node build"
    )
}

/// Agent flags. Each overrides the same field of the --config file (and
/// the environment variable named beside it overrides the file too);
/// unset flags keep the file's value or the default (see src/config.rs).
#[derive(Args)]
struct AgentArgs {
    /// YAML config file (every field optional; see docs/ARCHITECTURE.md).
    #[arg(long, env = "MESHLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Validate FILE, print the effective config (file + env + flags) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// cgroup v2 directory to attach to [default: the hierarchy's root, from /proc/mounts].
    #[arg(long, env = "MESHLANE_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Capacity of the socket map; connections beyond it use the TCP stack [default: 65536].
    #[arg(long, env = "MESHLANE_SOCKHASH_SIZE")]
    sockhash_size: Option<u32>,
    /// Bytes queued at a spliced reader before that direction uses TCP
    /// (with its flow control) until the reader catches up; 0 = no limit
    /// [default: a quarter of the node's largest TCP receive buffer,
    /// net.ipv4.tcp_rmem].
    #[arg(long, env = "MESHLANE_SPLICE_QUEUE_LIMIT")]
    splice_queue_limit: Option<u32>,
    /// A connection neither of whose ends sent this many messages is short;
    /// a destination whose recent spliced connections were all short is no
    /// longer spliced (but for a probe now and then); 0 = splice every
    /// connection [default: 8].
    #[arg(long, env = "MESHLANE_SPLICE_MIN_MESSAGES")]
    splice_min_messages: Option<u32>,
    /// Splice only: do not attach the interception hooks.
    #[arg(long)]
    no_intercept: bool,
    /// Keep the kernel's BPF run statistics on (per-program run time in
    /// /metrics and `meshlane status`); they cost every BPF program run on
    /// the node two clock reads [default: off].
    #[arg(long, env = "MESHLANE_BPF_RUN_STATS")]
    bpf_run_stats: bool,
    /// Stream verdict on the sockhash (cuts overlapping retransmissions,
    /// counts TCP-path bytes in FIONREAD): auto attaches it where it passes
    /// every byte exactly once (see `meshlane probe`) [default: auto].
    #[arg(long, value_enum, env = "MESHLANE_VERDICT_REMEDY")]
    verdict_remedy: Option<VerdictRemedy>,
    /// Admin server: /healthz/ready, /healthz/live, /metrics (e.g. 127.0.0.1:15098).
    #[arg(long, visible_alias = "metrics-addr", env = "MESHLANE_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Log line format on stderr [default: text].
    #[arg(long, value_enum, env = "MESHLANE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Seconds between counter log lines [default: 30].
    #[arg(long, env = "MESHLANE_LOG_INTERVAL")]
    log_interval: Option<u64>,
    /// Seconds to wait for the components after SIGTERM/SIGINT [default: 5].
    #[arg(long, env = "MESHLANE_DRAIN_SECONDS")]
    drain_seconds: Option<u64>,
    /// Install or adopt, print the result and exit.
    #[arg(long)]
    once: bool,
}

impl AgentArgs {
    /// The effective config: file (or defaults), then env and flags.
    fn config(&self, pin_root: Option<&PathBuf>) -> Result<AgentConfig> {
        let file = self.check_config.as_ref().or(self.config.as_ref());
        let mut c = match file {
            Some(f) => AgentConfig::from_file(f)?,
            None => AgentConfig::default(),
        };
        if let Some(p) = pin_root {
            c.pin_root = p.clone();
        }
        if let Some(v) = &self.cgroup {
            c.cgroup = Some(v.clone());
        }
        if let Some(v) = self.sockhash_size {
            c.sockhash_size = v;
        }
        if let Some(v) = self.splice_queue_limit {
            c.splice_queue_limit = Some(v);
        }
        if let Some(v) = self.splice_min_messages {
            c.splice_min_messages = v;
        }
        if self.no_intercept {
            c.intercept = false;
        }
        if self.bpf_run_stats {
            c.bpf_run_stats = true;
        }
        if let Some(v) = self.verdict_remedy {
            c.verdict_remedy = v;
        }
        if let Some(v) = self.admin_addr {
            c.admin_addr = Some(v);
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        if let Some(v) = self.log_interval {
            c.log_interval_seconds = v;
        }
        if let Some(v) = self.drain_seconds {
            c.drain_seconds = v;
        }
        c.pod_source.apply_env();
        c.validate()?;
        Ok(c)
    }
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

fn run(cli: Cli, agent_config: Option<AgentConfig>) -> Result<()> {
    let pin_root = cli
        .pin_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT));
    let layout = PinLayout::new(&pin_root);
    match cli.cmd {
        Cmd::Agent(a) => {
            let cfg = agent_config.context("agent config")?;
            if a.check_config.is_some() {
                if cli.json {
                    return print_json(&cfg);
                }
                print!("{}", cfg.to_yaml());
                return Ok(());
            }
            if a.once && cli.json {
                let r = agent::start(&cfg)?;
                return print_json(&r);
            }
            agent::run(cfg, a.once)?;
        }
        Cmd::Status => {
            require_root()?;
            let s = status::collect(&layout)?;
            // Status of a running install must not fail because a probe
            // could not run: it then says so instead of the findings.
            let integrity = loader::kernel_facts().map(|facts| {
                let plan =
                    integrity::installed(&facts, layout.link(LinkId::SpliceVerdict).exists());
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
                    Err(e) => println!("{s}byte integrity: kernel probes could not run: {e}"),
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
        Cmd::InstallCni(a) => install_cni::run(&a, &pin_root, cli.json)?,
        #[cfg(feature = "sim")]
        Cmd::Bench(a) => meshlane::bench::cli::main(&a, cli.json)?,
        #[cfg(feature = "sim")]
        Cmd::Demo => meshlane::bench::cli::demo(cli.json)?,
        #[cfg(not(feature = "sim"))]
        Cmd::NoBench { .. } => return Err(lab_only("bench")),
        #[cfg(not(feature = "sim"))]
        Cmd::NoDemo { .. } => return Err(lab_only("demo")),
        Cmd::Explain(a) => explain_cmd::run(&a, &pin_root, cli.json)?,
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

/// Logs to stderr (RUST_LOG filters, default info): plain text without
/// colour codes unless stderr is a terminal, or one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // libbpf's own messages go through tracing (RUST_LOG=libbpf=debug), so
    // a failure reaches the user as meshlane's one error line.
    meshlane::datapath::route_libbpf_log();
}

fn main() -> ExitCode {
    // Behave like a Unix filter when stdout closes early (`| head`).
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
    // The agent's config decides its log format: read it first.
    let agent_config = match &cli.cmd {
        Cmd::Agent(a) => match a.config(cli.pin_root.as_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("meshlane: {}", error_line(&e));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(
        agent_config
            .as_ref()
            .map_or(LogFormat::Text, |c| c.log_format),
    );
    match run(cli, agent_config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshlane: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}
