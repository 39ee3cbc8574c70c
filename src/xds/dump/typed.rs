//! Typed configs (`google.protobuf.Any` in JSON, keyed by `@type`) turned
//! into the Any the ADS stream would carry: the types the decision engine
//! reads inside (HTTP connection manager, TCP proxy, fault, Wasm,
//! TypedStruct) are converted and encoded; every other type is kept as an
//! opaque Any of that type (the engine judges those by type alone, and an
//! unknown type keeps the sidecar).

use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::wasm::v3::{PluginConfig, VmConfig};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::Value;

use super::json::{self, field};
use super::{route, DumpError};
use crate::xds::typeurl::{self, TypedStruct};

/// A typed config at `path`; `unparsed` collects keys not understood.
pub fn any(v: &Value, path: &str, unparsed: &mut Vec<String>) -> Result<Any, DumpError> {
    let url = v.get("@type").and_then(Value::as_str).unwrap_or_default();
    super::refuse_v2(url)?;
    let name = url.rsplit_once('/').map_or(url, |(_, n)| n);
    let value = match name {
        typeurl::HCM => http_connection_manager(v, path, unparsed)?.encode_to_vec(),
        typeurl::TCP_PROXY => tcp_proxy(v, path, unparsed).encode_to_vec(),
        typeurl::FAULT => fault(v, path, unparsed).encode_to_vec(),
        typeurl::HTTP_WASM | typeurl::NETWORK_WASM => wasm(v).encode_to_vec(),
        typeurl::TYPED_STRUCT_UDPA | typeurl::TYPED_STRUCT_XDS => TypedStruct {
            type_url: json::string(v, "type_url"),
            value: field(v, "value").map(json::to_struct),
        }
        .encode_to_vec(),
        typeurl::HTTP_PROTOCOL_OPTIONS => http_protocol_options(v).encode_to_vec(),
        _ => Vec::new(),
    };
    Ok(Any {
        type_url: url.to_string(),
        value,
    })
}

/// An optional typed config field.
pub fn any_field(
    v: &Value,
    name: &str,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<Option<Any>, DumpError> {
    field(v, name)
        .map(|t| any(t, &format!("{path}.{name}"), unparsed))
        .transpose()
}

fn http_connection_manager(
    v: &Value,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<hcm::HttpConnectionManager, DumpError> {
    json::note_unknown(
        v,
        path,
        &["rds", "route_config", "http_filters", "scoped_routes"],
        &[
            "stat_prefix",
            "codec_type",
            "tracing",
            "access_log",
            "use_remote_address",
            "forward_client_cert_details",
            "set_current_client_cert_details",
            "upgrade_configs",
            "stream_idle_timeout",
            "normalize_path",
            "path_with_escaped_slashes_action",
            "request_id_extension",
            "preserve_external_request_id",
            "generate_request_id",
            "server_name",
            "common_http_protocol_options",
            "http_protocol_options",
            "http2_protocol_options",
            "merge_slashes",
            "internal_address_config",
            "xff_num_trusted_hops",
            "add_user_agent",
            "delayed_close_timeout",
        ],
        unparsed,
    );
    let mut out = hcm::HttpConnectionManager::default();
    if let Some(rds) = field(v, "rds") {
        out.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: json::string(rds, "route_config_name"),
                ..Default::default()
            },
        ));
    } else if let Some(rc) = field(v, "route_config") {
        let rc = route::route_configuration(rc, &format!("{path}.route_config"))?;
        out.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rc,
        ));
    } else if field(v, "scoped_routes").is_some() {
        out.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::ScopedRoutes(
            Default::default(),
        ));
    }
    for (i, f) in json::items(v, "http_filters").enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let config_type = if let Some(tc) = field(f, "typed_config") {
            Some(hcm::http_filter::ConfigType::TypedConfig(any(
                tc, &fpath, unparsed,
            )?))
        } else if field(f, "config_discovery").is_some() {
            Some(hcm::http_filter::ConfigType::ConfigDiscovery(
                Default::default(),
            ))
        } else {
            None
        };
        out.http_filters.push(hcm::HttpFilter {
            name: json::string(f, "name"),
            is_optional: json::bool_field(f, "is_optional"),
            disabled: json::bool_field(f, "disabled"),
            config_type,
        });
    }
    Ok(out)
}

fn tcp_proxy(v: &Value, path: &str, unparsed: &mut Vec<String>) -> tcp::TcpProxy {
    json::note_unknown(
        v,
        path,
        &[
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "max_connect_attempts",
            "hash_policy",
            "tunneling_config",
            "metadata_match",
            "max_downstream_connection_duration",
            "on_demand",
        ],
        &["stat_prefix", "access_log"],
        unparsed,
    );
    let mut out = tcp::TcpProxy {
        stat_prefix: json::string(v, "stat_prefix"),
        idle_timeout: json::duration(v, "idle_timeout"),
        max_connect_attempts: json::u32_wrapper(v, "max_connect_attempts"),
        max_downstream_connection_duration: json::duration(v, "max_downstream_connection_duration"),
        ..Default::default()
    };
    if field(v, "tunneling_config").is_some() {
        out.tunneling_config = Some(Default::default());
    }
    if field(v, "metadata_match").is_some() {
        out.metadata_match = Some(Default::default());
    }
    if field(v, "on_demand").is_some() {
        out.on_demand = Some(Default::default());
    }
    out.hash_policy = json::items(v, "hash_policy")
        .map(|_| Default::default())
        .collect();
    out.access_log = json::items(v, "access_log")
        .map(|_| Default::default())
        .collect();
    if let Some(c) = field(v, "cluster").and_then(Value::as_str) {
        out.cluster_specifier = Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c.to_string()));
    } else if let Some(w) = field(v, "weighted_clusters") {
        let clusters = json::items(w, "clusters")
            .map(|c| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                name: json::string(c, "name"),
                weight: json::u32_field(c, "weight").unwrap_or(0),
                metadata_match: field(c, "metadata_match").map(|_| Default::default()),
            })
            .collect();
        out.cluster_specifier = Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp::tcp_proxy::WeightedCluster { clusters },
        ));
    }
    out
}

fn fault(v: &Value, path: &str, unparsed: &mut Vec<String>) -> HttpFault {
    json::note_unknown(
        v,
        path,
        &["delay", "abort", "response_rate_limit", "max_active_faults"],
        &[
            "upstream_cluster",
            "headers",
            "downstream_nodes",
            "delay_percent_runtime",
            "abort_percent_runtime",
            "delay_duration_runtime",
            "abort_http_status_runtime",
            "max_active_faults_runtime",
            "response_rate_limit_percent_runtime",
            "abort_grpc_status_runtime",
            "disable_downstream_cluster_stats",
        ],
        unparsed,
    );
    HttpFault {
        delay: field(v, "delay").map(|_| Default::default()),
        abort: field(v, "abort").map(|_| Default::default()),
        response_rate_limit: field(v, "response_rate_limit").map(|_| Default::default()),
        max_active_faults: json::u32_wrapper(v, "max_active_faults"),
        ..Default::default()
    }
}

/// The parts of a Wasm filter that say which plugin it is.
fn wasm(v: &Value) -> envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm {
    use envoy_types::pb::envoy::config::core::v3::{
        async_data_source, data_source, AsyncDataSource, DataSource,
    };
    let config = field(v, "config");
    let vm = config.and_then(|c| field(c, "vm_config"));
    let inline = vm
        .and_then(|m| field(m, "code"))
        .and_then(|c| field(c, "local"))
        .and_then(|l| field(l, "inline_string"))
        .and_then(Value::as_str);
    let vm_config = vm.map(|m| VmConfig {
        vm_id: json::string(m, "vm_id"),
        runtime: json::string(m, "runtime"),
        code: Some(AsyncDataSource {
            specifier: Some(match inline {
                Some(s) => async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(s.to_string())),
                    ..Default::default()
                }),
                None => async_data_source::Specifier::Remote(Default::default()),
            }),
        }),
        ..Default::default()
    });
    let plugin = config.map(|c| PluginConfig {
        name: json::string(c, "name"),
        root_id: json::string(c, "root_id"),
        vm: vm_config
            .map(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig),
        ..Default::default()
    });
    envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm { config: plugin }
}

/// Whether the upstream HTTP version is forced (explicit_http_config).
fn http_protocol_options(
    v: &Value,
) -> envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::UpstreamProtocolOptions, HttpProtocolOptions,
    };
    HttpProtocolOptions {
        upstream_protocol_options: field(v, "explicit_http_config")
            .map(|_| UpstreamProtocolOptions::ExplicitHttpConfig(Default::default())),
        ..Default::default()
    }
}
