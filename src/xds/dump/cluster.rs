//! Clusters and cluster load assignments (EDS) from a config dump.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster, Filter,
};
use envoy_types::pb::envoy::config::core::v3::{Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use serde_json::Value;

use super::json::{self, field};
use super::listener::{socket_address, transport_socket};
use super::{typed, DumpError};

pub const DISCOVERY_TYPES: &[&str] =
    &["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"];
pub const LB_POLICIES: &[&str] = &[
    "ROUND_ROBIN",
    "LEAST_REQUEST",
    "RING_HASH",
    "RANDOM",
    "ORIGINAL_DST_LB",
    "MAGLEV",
    "CLUSTER_PROVIDED",
    "LOAD_BALANCING_POLICY_CONFIG",
];

pub fn cluster(v: &Value) -> Result<Cluster, DumpError> {
    let name = json::string(v, "name");
    let path = format!("cluster {name}");
    let mut unparsed = Vec::new();
    json::note_unknown(
        v,
        &path,
        &[
            "name",
            "type",
            "cluster_type",
            "eds_cluster_config",
            "lb_policy",
            "load_assignment",
            "circuit_breakers",
            "outlier_detection",
            "transport_socket",
            "transport_socket_matches",
            "filters",
            "metadata",
            "lb_subset_config",
            "common_lb_config",
            "typed_extension_protocol_options",
            "load_balancing_policy",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "least_request_lb_config",
            "round_robin_lb_config",
            "original_dst_lb_config",
            "health_checks",
            "upstream_bind_config",
        ],
        &[
            "connect_timeout",
            "alt_stat_name",
            "per_connection_buffer_limit_bytes",
            "dns_refresh_rate",
            "dns_lookup_family",
            "respect_dns_ttl",
            "cleanup_interval",
            "upstream_connection_options",
            "http2_protocol_options",
            "http_protocol_options",
            "common_http_protocol_options",
            "max_requests_per_connection",
            "track_cluster_stats",
            "protocol_selection",
            "close_connections_on_host_health_failure",
        ],
        &mut unparsed,
    );
    let mut out = Cluster {
        name,
        lb_policy: json::enum_field(v, "lb_policy", LB_POLICIES),
        connect_timeout: json::duration(v, "connect_timeout"),
        outlier_detection: field(v, "outlier_detection").map(|_| Default::default()),
        lb_subset_config: field(v, "lb_subset_config").map(|_| Default::default()),
        load_balancing_policy: field(v, "load_balancing_policy").map(|_| Default::default()),
        health_checks: json::items(v, "health_checks")
            .map(|_| Default::default())
            .collect(),
        upstream_bind_config: field(v, "upstream_bind_config").map(|_| Default::default()),
        metadata: field(v, "metadata").map(metadata),
        ..Default::default()
    };
    if let Some(t) = field(v, "cluster_type") {
        out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: json::string(t, "name"),
                typed_config: None,
            },
        ));
    } else {
        out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(json::enum_field(
            v,
            "type",
            DISCOVERY_TYPES,
        )));
    }
    if let Some(e) = field(v, "eds_cluster_config") {
        out.eds_cluster_config = Some(cluster::EdsClusterConfig {
            service_name: json::string(e, "service_name"),
            eds_config: None,
        });
    }
    if let Some(la) = field(v, "load_assignment") {
        out.load_assignment = Some(load_assignment(la));
    }
    if let Some(cb) = field(v, "circuit_breakers") {
        let thresholds = |name| {
            json::items(cb, name)
                .map(|t| Thresholds {
                    priority: json::enum_field(t, "priority", &["DEFAULT", "HIGH"]),
                    max_connections: json::u32_wrapper(t, "max_connections"),
                    max_pending_requests: json::u32_wrapper(t, "max_pending_requests"),
                    max_requests: json::u32_wrapper(t, "max_requests"),
                    max_retries: json::u32_wrapper(t, "max_retries"),
                    retry_budget: field(t, "retry_budget").map(|_| Default::default()),
                    track_remaining: json::bool_field(t, "track_remaining"),
                    max_connection_pools: json::u32_wrapper(t, "max_connection_pools"),
                })
                .collect()
        };
        out.circuit_breakers = Some(CircuitBreakers {
            thresholds: thresholds("thresholds"),
            per_host_thresholds: thresholds("per_host_thresholds"),
        });
    }
    if let Some(ts) = field(v, "transport_socket") {
        out.transport_socket = Some(transport_socket(ts, &path, &mut unparsed)?);
    }
    for m in json::items(v, "transport_socket_matches") {
        out.transport_socket_matches
            .push(cluster::TransportSocketMatch {
                name: json::string(m, "name"),
                r#match: field(m, "match").map(json::to_struct),
                transport_socket: field(m, "transport_socket")
                    .map(|ts| transport_socket(ts, &path, &mut unparsed))
                    .transpose()?,
            });
    }
    for (i, f) in json::items(v, "filters").enumerate() {
        out.filters.push(Filter {
            name: json::string(f, "name"),
            typed_config: typed::any_field(
                f,
                "typed_config",
                &format!("{path}.filters[{i}]"),
                &mut unparsed,
            )?,
            config_discovery: field(f, "config_discovery").map(|_| Default::default()),
        });
    }
    if let Some(obj) = field(v, "typed_extension_protocol_options").and_then(Value::as_object) {
        for (k, x) in obj {
            out.typed_extension_protocol_options
                .insert(k.clone(), typed::any(x, &path, &mut unparsed)?);
        }
    }
    if let Some(c) = field(v, "common_lb_config") {
        if field(c, "locality_weighted_lb_config").is_some() {
            out.common_lb_config = Some(cluster::CommonLbConfig {
                locality_config_specifier: Some(
                    cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            });
        }
    }
    if let Some(o) = field(v, "original_dst_lb_config") {
        // What decides where an original-destination cluster connects.
        out.lb_config = Some(cluster::LbConfig::OriginalDstLbConfig(
            cluster::OriginalDstLbConfig {
                use_http_header: json::bool_field(o, "use_http_header"),
                http_header_name: json::string(o, "http_header_name"),
                upstream_port_override: json::u32_wrapper(o, "upstream_port_override"),
                metadata_key: field(o, "metadata_key").map(|_| Default::default()),
            },
        ));
    }
    let mut md = out.metadata.take().unwrap_or_default();
    if let Some(marker) = super::unparsed_marker(unparsed) {
        md.filter_metadata.extend(marker.filter_metadata);
    }
    out.metadata = (!md.filter_metadata.is_empty()).then_some(md);
    Ok(out)
}

pub fn metadata(v: &Value) -> Metadata {
    let mut out = Metadata::default();
    if let Some(obj) = field(v, "filter_metadata").and_then(Value::as_object) {
        for (k, x) in obj {
            out.filter_metadata.insert(k.clone(), json::to_struct(x));
        }
    }
    out
}

pub fn load_assignment(v: &Value) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: json::string(v, "cluster_name"),
        endpoints: json::items(v, "endpoints")
            .map(locality_endpoints)
            .collect(),
        ..Default::default()
    }
}

fn locality_endpoints(v: &Value) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: field(v, "locality").map(|l| Locality {
            region: json::string(l, "region"),
            zone: json::string(l, "zone"),
            sub_zone: json::string(l, "sub_zone"),
        }),
        lb_endpoints: json::items(v, "lb_endpoints").map(lb_endpoint).collect(),
        load_balancing_weight: json::u32_wrapper(v, "load_balancing_weight"),
        priority: json::u32_field(v, "priority").unwrap_or(0),
        ..Default::default()
    }
}

fn lb_endpoint(v: &Value) -> LbEndpoint {
    let endpoint = field(v, "endpoint").map(|e| Endpoint {
        address: field(e, "address").map(socket_address),
        hostname: json::string(e, "hostname"),
        ..Default::default()
    });
    LbEndpoint {
        health_status: json::enum_field(
            v,
            "health_status",
            &[
                "UNKNOWN",
                "HEALTHY",
                "UNHEALTHY",
                "DRAINING",
                "TIMEOUT",
                "DEGRADED",
            ],
        ),
        metadata: field(v, "metadata").map(metadata),
        load_balancing_weight: json::u32_wrapper(v, "load_balancing_weight"),
        host_identifier: endpoint.map(lb_endpoint::HostIdentifier::Endpoint),
    }
}
