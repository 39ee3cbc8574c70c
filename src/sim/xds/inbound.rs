//! A pod's own inbound ports as istiod writes them into that pod's
//! sidecar config: per port, chains of `virtualInbound` matched by
//! `destination_port`, each a tcp_proxy to the port's `inbound|<port>||`
//! cluster (ORIGINAL_DST, connecting to the app from 127.0.0.6), shaped by
//! the port's policies ([`InboundShape`]).
//!
//! The PERMISSIVE shape has Istio's two chains per port, one matched by
//! `transport_protocol: tls` and one plaintext, with the tls_inspector
//! listener filter that tells them apart. Its TLS chain proxies the TLS
//! bytes as they come (no certificate in the sim): what matters to
//! meshlane is that a TLS chain serves the port.

use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::policy::{allow_any_rbac, held, PolicyError};
use super::snapshot::Snapshot;
use crate::sim::sidecar::envoy_bootstrap::{any, passthrough_cluster, INBOUND_LISTENER};

/// How a pod's inbound port is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundShape {
    /// PeerAuthentication DISABLE, no AuthorizationPolicy: one plaintext
    /// chain straight to the app (plain pass-through).
    Plain,
    /// As `Plain`, with an AuthorizationPolicy: an RBAC network filter
    /// (ALLOW any) ahead of the tcp_proxy.
    Rbac,
    /// PeerAuthentication PERMISSIVE: a TLS chain and a plaintext chain.
    Permissive,
}

/// Istio's inbound cluster name for a port.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Adds `port`'s chains (shaped by `shape`) to the snapshot's
/// `virtualInbound` and its `inbound|<port>||` cluster.
pub fn add_inbound_port(
    snap: &mut Snapshot,
    port: u16,
    shape: InboundShape,
) -> Result<(), PolicyError> {
    let mut listener: Listener = held(snap, "listener", INBOUND_LISTENER)?;
    let cluster = inbound_cluster(port);
    let mut filters = vec![tcp_proxy_to(&cluster)];
    if shape == InboundShape::Rbac {
        filters.insert(0, allow_any_rbac());
    }
    let chain = |name: String, transport: &str| FilterChain {
        name,
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(port),
            }),
            transport_protocol: transport.into(),
            ..Default::default()
        }),
        filters: filters.clone(),
        ..Default::default()
    };
    if shape == InboundShape::Permissive {
        listener
            .filter_chains
            .insert(0, chain(format!("0.0.0.0_{port}-tls"), "tls"));
        listener
            .filter_chains
            .insert(0, chain(format!("0.0.0.0_{port}"), "raw_buffer"));
        if !listener
            .listener_filters
            .iter()
            .any(|f| f.name == TLS_INSPECTOR)
        {
            listener.listener_filters.push(ListenerFilter {
                name: TLS_INSPECTOR.into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            });
        }
    } else {
        listener
            .filter_chains
            .insert(0, chain(format!("0.0.0.0_{port}"), ""));
    }
    snap.add(INBOUND_LISTENER, &listener);
    snap.add(
        cluster.clone(),
        &passthrough_cluster(&cluster, Some("127.0.0.6")),
    );
    Ok(())
}

fn tcp_proxy_to(cluster: &str) -> Filter {
    let p = TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::xds::sidecar_snapshot;
    use crate::sim::SidecarMode;
    use crate::xds::decide::{decide, BypassPolicy, Verdict};

    /// The engine reads the sim's shapes as meshlane reads istiod's.
    #[test]
    fn each_shape_decides_as_istiods_would() {
        let mut snap = sidecar_snapshot("1", SidecarMode::Tcp, false, &[]);
        add_inbound_port(&mut snap, 9000, InboundShape::Plain).unwrap();
        add_inbound_port(&mut snap, 9001, InboundShape::Rbac).unwrap();
        add_inbound_port(&mut snap, 9002, InboundShape::Permissive).unwrap();
        let policy = BypassPolicy {
            inbound_passthrough: true,
            ..Default::default()
        };
        let d = decide(&snap.proxy_resources(), &policy);
        let verdict = |port: u16| {
            d.destinations
                .iter()
                .find(|x| x.destination.to_string() == format!("inbound:{port}"))
                .map(|x| (x.decision, x.reasons.clone()))
                .unwrap_or_else(|| panic!("no inbound:{port}"))
        };
        assert_eq!(
            verdict(9000).0,
            Verdict::Passthrough,
            "{:#?}",
            verdict(9000).1
        );
        assert_eq!(verdict(9001).0, Verdict::Sidecar);
        assert_eq!(verdict(9002).0, Verdict::Sidecar);
        assert_eq!(d.inbound_passthrough_ports(), vec![9000]);
    }
}
