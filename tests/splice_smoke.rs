//! Quick proof that splicing happens: loopback inside a pod and pod to pod.
//! `REMEDY=on|off` overrides the verdict remedy (default: the agent's Auto).
mod common;

use common::*;
use meshlane::loader::VerdictRemedy;
use meshlane::sim::NodeOptions;

#[test]
fn loopback_and_pod_to_pod_are_spliced() {
    let remedy = match std::env::var("REMEDY").as_deref() {
        Ok("on") => VerdictRemedy::On,
        Ok("off") => VerdictRemedy::Off,
        _ => VerdictRemedy::Auto,
    };
    let s = Setup::new(NodeOptions {
        verdict_remedy: remedy,
        ..Default::default()
    });
    let srv = echo_server(&s.a, s.any_port());
    let data = payload(64 * 1024, 1);
    for route in ROUTES {
        let before = SpliceCounters::read(&s.node);
        let (client, to) = s.client(route, srv.port());
        assert!(
            echo_from(client, to, data.clone(), 1024) == data,
            "{route:?}: echo differs"
        );
        let d = SpliceCounters::since(&s.node, &before);
        assert!(d.messages_spliced > 0, "{route:?}: nothing spliced: {d:?}");
    }
}
