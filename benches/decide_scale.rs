//! Decision engine at mesh scale (engine only, no I/O): a synthetic proxy
//! with 10,000 TCP services (VIP listener + EDS cluster) and 100,000
//! plain endpoints built as envoy-types protos. Prints the time to decide
//! the full snapshot and the p50/p99 time to re-decide after a
//! single-cluster EDS change (`Engine::clusters_changed`).
//! Run: cargo bench --bench decide_scale

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use meshlane::xds::assignment::Assignment;
use meshlane::xds::decide::{BypassPolicy, Engine, Verdict};
use meshlane::xds::held::{HeldCluster, HeldListener};
use meshlane::xds::resources::named_mut;
use meshlane::xds::{typeurl, ProxyResources};

const SERVICES: u32 = 10_000;
const ENDPOINTS_PER_SERVICE: u32 = 10;
const CHANGES: usize = 500;

/// The bypass decision engine at mesh scale: 10,000 services, 100,000
/// endpoints; prints the full decision time and the p50/p99 re-decision
/// time after one EDS change.
#[derive(Parser)]
#[command(name = "decide-scale")]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn addr(ip: String, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip,
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn cla(name: &str, svc: u32, generation: u32) -> ClusterLoadAssignment {
    let lb_endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(addr(
                    format!(
                        "10.{}.{}.{}",
                        100 + svc / 65536 % 100,
                        svc / 256 % 256,
                        (svc + e) % 256
                    ),
                    8080 + generation,
                )),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn mesh() -> ProxyResources {
    let mut res = ProxyResources {
        has_eds: true,
        ..Default::default()
    };
    for s in 0..SERVICES {
        let name = format!("outbound|8080||svc{s}.ns.svc.cluster.local");
        let vip = format!("10.96.{}.{}", s / 256, s % 256);
        let tcp = TcpProxy {
            stat_prefix: name.clone(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name.clone())),
            ..Default::default()
        };
        let listener = Listener {
            name: format!("{vip}_8080"),
            address: Some(addr(vip, 8080)),
            traffic_direction: 2,
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: typeurl::url(typeurl::TCP_PROXY),
                        value: tcp.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let cluster = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(3)),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: name.clone(),
                eds_config: None,
            }),
            ..Default::default()
        };
        named_mut(&mut res.listeners).insert(
            listener.name.as_str().into(),
            Arc::new(HeldListener::new(&listener)),
        );
        named_mut(&mut res.endpoints).insert(
            name.as_str().into(),
            Arc::new(Assignment::from_proto(&cla(&name, s, 0))),
        );
        named_mut(&mut res.clusters).insert(name.into(), Arc::new(HeldCluster::new(&cluster)));
    }
    res
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let _ = Cli::parse();
    let mut res = mesh();
    let start = Instant::now();
    let mut engine = Engine::new(&res, BypassPolicy::default());
    let full = start.elapsed();
    let bypass = engine
        .decisions()
        .destinations
        .iter()
        .filter(|d| d.decision == Verdict::Bypass)
        .count();
    assert_eq!(
        bypass, SERVICES as usize,
        "every synthetic service is plain"
    );
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = (i as u32 * 7919) % SERVICES;
        let name = format!("outbound|8080||svc{s}.ns.svc.cluster.local");
        named_mut(&mut res.endpoints).insert(
            name.as_str().into(),
            Arc::new(Assignment::from_proto(&cla(&name, s, i as u32 + 1))),
        );
        let t = Instant::now();
        // The EDS resource name is the cluster name here.
        let changed = engine.changed(&res, &[], &[name]);
        times.push(t.elapsed());
        assert_eq!(changed.len(), 1);
    }
    times.sort();
    println!(
        "decide_scale: {SERVICES} services, {} endpoints: full decide {:.1} ms; single-cluster EDS change p50 {:.1} us, p99 {:.1} us ({CHANGES} changes)",
        SERVICES * ENDPOINTS_PER_SERVICE,
        full.as_secs_f64() * 1e3,
        pct(&times, 0.5).as_secs_f64() * 1e6,
        pct(&times, 0.99).as_secs_f64() * 1e6
    );
}
