//! The benchmark harness (issue 4): no mesh vs Istio's iptables vs meshlane
//! accelerate vs meshlane intercept vs meshlane bypass (issue 12), side by side on a simulated two-node cluster, with
//! modes interleaved round-robin, medians with min-max, JSON + markdown +
//! SVG output, and a `--check` regression guard. Also issue 2's splice
//! benchmark ([`splice`]).
//!
//! Modules, one concern each:
//! - [`options`]: modes, workloads, placements, validation
//! - [`testbed`]: nodes, pods, sidecars, rules, registrations, the control
//!   plane (ADS)
//! - [`live`]: the agent's bypass chain in process, for the `bypass` mode
//! - [`servers`], [`load`], [`http`], [`net`]: apps and load generators
//! - [`runner`]: the interleaved plan, CPU accounting, path evidence
//! - [`stats`], [`report`], [`markdown`], [`svg`]: results
//! - [`guard`]: `--check`'s never-below-iptables arithmetic (pure)
//! - [`progress`], [`interrupt`]: progress bar, Ctrl-C
//! - [`cli`]: `meshlane bench` / `meshlane demo`

pub mod cli;
pub mod error;
pub mod guard;
pub mod http;
pub mod interrupt;
pub mod live;
pub mod load;
pub mod markdown;
pub mod net;
pub mod options;
pub mod progress;
pub mod report;
pub mod runner;
pub mod servers;
pub mod splice;
pub mod stats;
pub mod svg;
pub mod testbed;

use std::path::Path;

pub use cli::BenchArgs;
pub use error::BenchError;
pub use options::{Mode, Options, Placement, Workload};
pub use report::Report;

use error::Result;

/// Builds the testbed, runs every round and returns the report. Everything
/// made is removed before this returns, on success, error or Ctrl-C.
pub fn run(o: &Options, quiet: bool) -> Result<Report> {
    o.validate()?;
    interrupt::install();
    // Dropped last: the testbed's sockets are gone before SIGPIPE kills again.
    let _sigpipe = interrupt::SigpipeIgnored::new();
    let per_round: u64 = o
        .cells()
        .iter()
        .map(|&(w, p)| o.runnable_modes().iter().filter(|m| m.runs(w, p)).count() as u64)
        .sum();
    let per_cost_round: u64 = o
        .cells()
        .iter()
        .filter(|(w, _)| w.cpu_accounted() || w.hook_costed())
        .map(|&(w, p)| o.runnable_modes().iter().filter(|m| m.runs(w, p)).count() as u64)
        .sum();
    let steps = u64::from(o.warmup_rounds + o.rounds) * per_round
        + u64::from(o.cost_rounds) * per_cost_round;
    let mut progress = progress::Progress::new(steps, quiet);
    let mut build: Vec<Mode> = o.runnable_modes();
    if o.placements.contains(&Placement::OneSidecar) && !build.contains(&Mode::Direct) {
        build.insert(0, Mode::Direct);
    }
    progress.note(&format!(
        "meshlane bench: building {} pods for modes {} ...",
        build.len()
            * if o.placements.contains(&Placement::CrossNode) {
                3
            } else {
                2
            },
        build
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let l7 = o.http_l7 && o.workloads.iter().any(|w| w.is_http());
    let tb = testbed::Testbed::new(
        &build,
        o.placements.contains(&Placement::CrossNode),
        o.cpu,
        l7,
        o.sidecar,
    )?;
    let mut data = runner::run(&tb, o, &mut progress)?;
    data.bypass = tb.bypass_provenance();
    drop(tb);
    Ok(Report::build(o, data))
}

/// Writes report.json, report.md and the charts into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(error::BenchError::io(format!("creating {}", dir.display())))?;
    let mut files = Vec::new();
    let mut put = |name: &str, text: &str| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text)
            .map_err(error::BenchError::io(format!("writing {}", p.display())))?;
        files.push(p);
        Ok(())
    };
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| BenchError::workload("serializing the report", e))?;
    put("report.json", &json)?;
    put("report.md", &markdown::render(r))?;
    for (name, svg) in svg::charts(r) {
        put(&name, &svg)?;
    }
    Ok(files)
}
