//! Issue 15: on every kernel of the matrix, the data path's byte-integrity
//! choice (stream verdict attached or not, splicing on or off) is the one
//! the kernel's own behaviour calls for. The expectation is computed from
//! the experiments' raw results (`measured_kernel_facts`, never
//! overridden); the choice is what an install on this kernel actually did.
//! A probe that lies (`MESHLANE_PROBE_FAULT`) makes the two disagree, and
//! this test fails: the kernel matrix shows that row as failing.
mod common;

use common::require_root_env;
use meshlane::integrity::{self, VerdictRemedy};
use meshlane::loader;
use meshlane::sim::{Node, NodeOptions};

#[test]
fn installed_plan_follows_the_measured_kernel() {
    require_root_env();
    let measured = loader::measured_kernel_facts().expect("kernel probes");
    let expected = integrity::plan(&measured, VerdictRemedy::Auto).expect("auto always plans");
    let node = Node::new(NodeOptions {
        install: false,
        ..NodeOptions::default()
    })
    .expect("node");
    let report = node.install().expect("installing the data path");
    eprintln!(
        "kernel {}: measured {measured:?}; expected verdict={} splice={}; installed verdict={} splice={}",
        meshlane::probe::kernel_release(),
        expected.verdict,
        expected.splice,
        report.plan.verdict,
        report.plan.splice
    );
    assert_eq!(
        (report.plan.verdict, report.plan.splice),
        (expected.verdict, expected.splice),
        "the installed plan (verdict, splice) does not follow from what this kernel does"
    );
    assert_eq!(
        node.layout
            .link(meshlane::datapath::LinkId::SpliceVerdict)
            .exists(),
        report.plan.verdict,
        "the pinned stream verdict disagrees with the plan"
    );
}

#[test]
fn every_byte_once_under_the_installed_plan() {
    // The two rules the plan must keep, checked against raw measurements.
    require_root_env();
    let measured = loader::measured_kernel_facts().expect("kernel probes");
    let node = Node::new(NodeOptions::default()).expect("node");
    let plan = node.install().expect("re-install (adopt)").plan;
    let b = &measured.behaviour;
    if plan.verdict {
        assert!(
            !b.overlap_duplicated || measured.verdict_trims_overlaps,
            "a stream verdict is attached on a kernel where it delivers overlapping \
             retransmissions twice and meshlane's verdict cannot cut them"
        );
    }
    if plan.splice && !plan.verdict {
        assert!(
            !b.epoll_wakeup_lost,
            "splicing without a stream verdict on a kernel that loses epoll wake-ups"
        );
    }
}
