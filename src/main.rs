//! `meshlane`: the node agent and operator CLI. Errors reach the user as one
//! line on stderr and a non-zero exit; `--json` gives machine output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use meshlane::agent::{self, AgentOptions};
use meshlane::layout::{PinLayout, DEFAULT_PIN_ROOT};
use meshlane::loader::{self, Config, VerdictRemedy};
use meshlane::pods::{PodMode, PodSpec, Preset, Registry};
use meshlane::{probe, status};

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
    Pod(PodCmd),
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
    /// Pass-through stream verdict for kernels that lose epoll wake-ups.
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

#[derive(Subcommand)]
enum PodCmd {
    /// Register the pod whose network namespace is at --netns.
    Add(PodAddArgs),
    /// Unregister a pod; its established connections continue.
    Rm {
        /// Path of the pod's netns (/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
    },
    /// List registered pods.
    List,
}

#[derive(Args)]
struct PodAddArgs {
    /// Path of the pod's netns (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    netns: PathBuf,
    /// Name shown by status and logs (default: the netns file name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum, default_value_t = Preset::Istio)]
    preset: Preset,
    /// intercept: eBPF redirects (no iptables in the pod); accelerate: istio-init iptables stay, splice only.
    #[arg(long, value_enum, default_value_t = PodMode::Intercept)]
    mode: PodMode,
    #[arg(long)]
    proxy_uid: Option<u32>,
    #[arg(long)]
    proxy_gid: Option<u32>,
    #[arg(long)]
    outbound_port: Option<u16>,
    #[arg(long)]
    inbound_port: Option<u16>,
    #[arg(long)]
    dns_port: Option<u16>,
    /// Send the pod's DNS (port 53) to the proxy's DNS port (Istio DNS proxying).
    #[arg(long)]
    dns_capture: bool,
    /// traffic.sidecar.istio.io/includeInboundPorts ("*" = all).
    #[arg(long, default_value = "*")]
    include_inbound_ports: String,
    /// traffic.sidecar.istio.io/excludeInboundPorts
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// traffic.sidecar.istio.io/includeOutboundPorts
    #[arg(long, default_value = "")]
    include_outbound_ports: String,
    /// traffic.sidecar.istio.io/excludeOutboundPorts
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// traffic.sidecar.istio.io/includeOutboundIPRanges ("*" = all)
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// traffic.sidecar.istio.io/excludeOutboundIPRanges
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
}

impl PodAddArgs {
    fn spec(&self) -> PodSpec {
        let name = self.name.clone().unwrap_or_else(|| {
            self.netns
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.netns.display().to_string())
        });
        PodSpec {
            name,
            preset: self.preset,
            mode: self.mode,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            dns_port: self.dns_port,
            dns_capture: self.dns_capture,
            include_inbound_ports: self.include_inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            include_outbound_ports: self.include_outbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            include_outbound_ip_ranges: self.include_outbound_ip_ranges.clone(),
            exclude_outbound_ip_ranges: self.exclude_outbound_ip_ranges.clone(),
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
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
            if cli.json {
                print_json(&s)?;
            } else {
                print!("{s}");
            }
        }
        Cmd::Pod(PodCmd::Add(a)) => {
            require_root()?;
            let rec = Registry::open(&layout)?.add(&a.netns, &a.spec())?;
            if cli.json {
                print_json(&rec)?;
            } else {
                println!(
                    "registered pod {} (netns cookie {}, ips {:?})",
                    rec.name, rec.netns_cookie, rec.ips
                );
            }
        }
        Cmd::Pod(PodCmd::Rm { netns }) => {
            require_root()?;
            let cookie = Registry::open(&layout)?.remove(&netns)?;
            if cli.json {
                print_json(&serde_json::json!({ "removed": cookie }))?;
            } else {
                println!("removed pod with netns cookie {cookie}");
            }
        }
        Cmd::Pod(PodCmd::List) => {
            require_root()?;
            let pods = Registry::open(&layout)?.list();
            if cli.json {
                print_json(&pods)?;
            } else {
                for p in pods {
                    println!(
                        "{:<20} cookie {:<8} {:?} ips {:?}",
                        p.name, p.netns_cookie, p.mode, p.ips
                    );
                }
            }
        }
        Cmd::Probe => {
            // Unprivileged probe loads fail and would look like missing features.
            require_root()?;
            let f = probe::features();
            if cli.json {
                print_json(&f)?;
            } else {
                println!("kernel {}", probe::kernel_release());
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

fn libbpf_log(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
        _ => tracing::trace!(target: "libbpf", "{msg}"),
    }
}

/// One line from clap's multi-line report: the message, plus the accepted
/// values when clap lists them.
fn usage_error_line(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let text = e.render().to_string();
        let usage = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage: "))
            .unwrap_or("meshlane <COMMAND>");
        return format!("a command is required ({usage}); see --help");
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    // "the following required arguments were not provided:" + the next line.
    if line.ends_with(':') {
        if let Some(next) = lines.next() {
            line.push(' ');
            line.push_str(next);
        }
    }
    if let Some(values) = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("[possible values: "))
    {
        line.push_str(&format!(
            " (possible values: {}",
            values.trim_end_matches(']')
        ));
        line.push(')');
    }
    line.push_str("; see --help");
    line
}

/// The error and its causes on one line, without repeating a cause that a
/// message already quotes.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
