//! Quick proof that splicing happens: loopback inside a pod and pod to pod.
mod common;

use common::*;
use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::{Node, NodeOptions};

#[test]
fn loopback_and_pod_to_pod_are_spliced() {
    require_root_env();
    let remedy = match std::env::var("REMEDY").as_deref() {
        Ok("on") => meshlane::loader::VerdictRemedy::On,
        Ok("off") => meshlane::loader::VerdictRemedy::Off,
        _ => meshlane::loader::VerdictRemedy::Auto,
    };
    let mut node = Node::new(NodeOptions {
        verdict_remedy: remedy,
        ..Default::default()
    })
    .unwrap();
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let mut spec = PodSpec::istio("a");
    spec.mode = PodMode::Accelerate;
    node.register(&a, &spec).unwrap();
    spec.name = "b".into();
    node.register(&b, &spec).unwrap();

    let srv = echo_server(&a, "0.0.0.0:0".parse().unwrap());
    let lo = format!("127.0.0.1:{}", srv.port()).parse().unwrap();
    let data = payload(64 * 1024, 1);
    assert_eq!(echo_from(&a, lo, data.clone(), 1024), data);
    let loop_spliced = node.counter("messages_spliced");
    assert!(loop_spliced > 0, "no loopback message was spliced");

    let remote = format!("{}:{}", a.ip4, srv.port()).parse().unwrap();
    assert_eq!(echo_from(&b, remote, data.clone(), 1024), data);
    assert!(
        node.counter("messages_spliced") > loop_spliced,
        "pod-to-pod not spliced"
    );
}
