//! istio-iptables golden rule files (fixtures/istio/iptables) for the
//! reference ("what istio-init does") runs: the implementation lives in
//! meshlane::sim::iptables, shared with the accelerate tests and the bench.

#[allow(unused_imports)] // each test binary uses a different part
pub use meshlane::sim::iptables::{
    apply_golden_family as apply, fixtures_dir as golden_dir, has_nat, ruleset,
};
