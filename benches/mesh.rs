//! `cargo bench --bench mesh`: the full harness run (issue 4): direct,
//! iptables, accelerate, intercept, intercept-nosplice, bypass,
//! same-node, cross-node and one-sidecar, every workload, modes interleaved.
//! Takes the same options as `meshlane bench` (`cargo bench --bench mesh --
//! --quick`). Needs root. Results: target/meshlane-bench/mesh/.

use std::process::ExitCode;

use clap::Parser;
use meshlane::bench::{self, BenchArgs};

#[derive(Parser)]
#[command(name = "mesh-bench")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// Print the JSON report instead of the markdown tables.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    // clap prints --help to stdout (exit 0) and a usage error to stderr
    // (exit 2).
    let mut cli = Cli::parse();
    if cli.args.out.is_none() {
        cli.args.out = Some("target/meshlane-bench/mesh".into());
    }
    match bench::cli::main(&cli.args, cli.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh bench: {e}");
            ExitCode::FAILURE
        }
    }
}
