//! `cargo bench --bench splice`: issue 2's benchmark. RTT p50/p99 of 64 B
//! and 1 KiB ping-pong between two TCP sockets in one pod and between two
//! pods, spliced vs not spliced, interleaved in one run, pinned to one CPU.
//! Target: spliced p50 at most 0.8x the unspliced p50. Needs root.
//! Options: `-- --rounds N --step-ms MS --cpu N|--no-pin --out DIR`.
//! Results: target/meshlane-bench/splice/.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meshlane::bench::splice::{self, SpliceOptions};

#[derive(Parser)]
#[command(name = "splice-bench")]
struct Cli {
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    step_ms: u64,
    #[arg(long, conflicts_with = "no_pin")]
    cpu: Option<usize>,
    #[arg(long)]
    no_pin: bool,
    #[arg(long, default_value = "target/meshlane-bench/splice")]
    out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    // clap prints --help to stdout (exit 0) and a usage error to stderr
    // (exit 2).
    let cli = Cli::parse();
    let mut o = SpliceOptions {
        rounds: cli.rounds,
        step_ms: cli.step_ms,
        out: cli.out,
        ..Default::default()
    };
    if cli.no_pin {
        o.cpu = None;
    } else if let Some(c) = cli.cpu {
        o.cpu = Some(c);
    }
    let run = splice::run(&o).and_then(|r| {
        splice::write(&r, &o.out)?;
        Ok(r)
    });
    match run {
        Ok(r) => {
            print!("{}", splice::markdown(&r));
            println!("\nresults: {}", o.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("splice bench: {e}");
            ExitCode::FAILURE
        }
    }
}
