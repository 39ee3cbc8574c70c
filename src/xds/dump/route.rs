//! Route configurations from a config dump: virtual hosts, their domains,
//! routes (match, action) and every per-route setting the decision engine
//! judges. Settings it only needs to see present are kept as present.

// Deprecated fields (cors, max_grpc_timeout) are still what istiod sends.
#![allow(deprecated)]

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3::{
    retry_policy::RetryHostPredicate, route, route_action, route_match, weighted_cluster,
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::google::protobuf::Any;
use serde_json::Value;

use super::json::{self, field};
use super::{typed, DumpError};

/// A route configuration; keys it did not understand are marked in its
/// metadata (see `unparsed_marker`).
pub fn route_configuration(v: &Value, path: &str) -> Result<RouteConfiguration, DumpError> {
    let mut unparsed = Vec::new();
    let name = json::string(v, "name");
    let path = if path.is_empty() {
        format!("route {name}")
    } else {
        path.to_string()
    };
    json::note_unknown(
        v,
        &path,
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "vhds",
        ],
        &[
            "validate_clusters",
            "internal_only_headers",
            "max_direct_response_body_size_bytes",
            "ignore_port_in_host_matching",
        ],
        &mut unparsed,
    );
    let mut out = RouteConfiguration {
        name,
        request_headers_to_add: present_list(v, "request_headers_to_add"),
        request_headers_to_remove: json::strings(v, "request_headers_to_remove"),
        response_headers_to_add: present_list(v, "response_headers_to_add"),
        response_headers_to_remove: json::strings(v, "response_headers_to_remove"),
        vhds: field(v, "vhds").map(|_| Default::default()),
        ..Default::default()
    };
    for (i, vh) in json::items(v, "virtual_hosts").enumerate() {
        out.virtual_hosts.push(virtual_host(
            vh,
            &format!("{path}.virtual_hosts[{i}]"),
            &mut unparsed,
        )?);
    }
    out.metadata = super::unparsed_marker(unparsed);
    Ok(out)
}

/// A repeated message whose presence matters, not its content.
fn present_list<T: Default>(v: &Value, name: &str) -> Vec<T> {
    json::items(v, name).map(|_| T::default()).collect()
}

fn per_filter(
    v: &Value,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<HashMap<String, Any>, DumpError> {
    let mut out = HashMap::new();
    if let Some(obj) = field(v, "typed_per_filter_config").and_then(Value::as_object) {
        for (k, x) in obj {
            out.insert(
                k.clone(),
                typed::any(x, &format!("{path}.typed_per_filter_config.{k}"), unparsed)?,
            );
        }
    }
    Ok(out)
}

fn virtual_host(
    v: &Value,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<VirtualHost, DumpError> {
    json::note_unknown(
        v,
        path,
        &[
            "name",
            "domains",
            "routes",
            "retry_policy",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "cors",
            "typed_per_filter_config",
            "rate_limits",
            "hedge_policy",
            "require_tls",
            "matcher",
        ],
        &[
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "virtual_clusters",
            "metadata",
        ],
        unparsed,
    );
    let mut out = VirtualHost {
        name: json::string(v, "name"),
        domains: json::strings(v, "domains"),
        retry_policy: field(v, "retry_policy")
            .map(|r| retry_policy(r, &format!("{path}.retry_policy"), unparsed)),
        request_headers_to_add: present_list(v, "request_headers_to_add"),
        request_headers_to_remove: json::strings(v, "request_headers_to_remove"),
        response_headers_to_add: present_list(v, "response_headers_to_add"),
        response_headers_to_remove: json::strings(v, "response_headers_to_remove"),
        cors: field(v, "cors").map(|_| Default::default()),
        typed_per_filter_config: per_filter(v, path, unparsed)?,
        rate_limits: present_list(v, "rate_limits"),
        hedge_policy: field(v, "hedge_policy").map(|_| Default::default()),
        require_tls: json::enum_field(v, "require_tls", &["NONE", "EXTERNAL_ONLY", "ALL"]),
        matcher: field(v, "matcher").map(|_| Default::default()),
        ..Default::default()
    };
    for (i, r) in json::items(v, "routes").enumerate() {
        out.routes
            .push(route(r, &format!("{path}.routes[{i}]"), unparsed)?);
    }
    Ok(out)
}

fn route(v: &Value, path: &str, unparsed: &mut Vec<String>) -> Result<Route, DumpError> {
    json::note_unknown(
        v,
        path,
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "filter_action",
            "non_forwarding_action",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
        &["decorator", "metadata", "tracing", "stat_prefix"],
        unparsed,
    );
    let action = if let Some(a) = field(v, "route") {
        Some(route::Action::Route(route_action(
            a,
            &format!("{path}.route"),
            unparsed,
        )))
    } else if field(v, "redirect").is_some() {
        Some(route::Action::Redirect(Default::default()))
    } else if field(v, "direct_response").is_some() {
        Some(route::Action::DirectResponse(Default::default()))
    } else if field(v, "filter_action").is_some() {
        Some(route::Action::FilterAction(Default::default()))
    } else if field(v, "non_forwarding_action").is_some() {
        Some(route::Action::NonForwardingAction(Default::default()))
    } else {
        None
    };
    Ok(Route {
        name: json::string(v, "name"),
        r#match: field(v, "match").map(|m| route_match(m, &format!("{path}.match"), unparsed)),
        action,
        typed_per_filter_config: per_filter(v, path, unparsed)?,
        request_headers_to_add: present_list(v, "request_headers_to_add"),
        request_headers_to_remove: json::strings(v, "request_headers_to_remove"),
        response_headers_to_add: present_list(v, "response_headers_to_add"),
        response_headers_to_remove: json::strings(v, "response_headers_to_remove"),
        ..Default::default()
    })
}

fn route_match(v: &Value, path: &str, unparsed: &mut Vec<String>) -> RouteMatch {
    json::note_unknown(
        v,
        path,
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "connect_matcher",
            "path_match_policy",
            "headers",
            "query_parameters",
            "grpc",
            "tls_context",
            "runtime_fraction",
            "dynamic_metadata",
            "cookies",
            "filter_state",
        ],
        &["case_sensitive"],
        unparsed,
    );
    use route_match::PathSpecifier as P;
    let path_specifier = if let Some(p) = field(v, "prefix").and_then(Value::as_str) {
        Some(P::Prefix(p.into()))
    } else if let Some(p) = field(v, "path").and_then(Value::as_str) {
        Some(P::Path(p.into()))
    } else if let Some(p) = field(v, "path_separated_prefix").and_then(Value::as_str) {
        Some(P::PathSeparatedPrefix(p.into()))
    } else if let Some(r) = field(v, "safe_regex") {
        Some(P::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: json::string(r, "regex"),
                ..Default::default()
            },
        ))
    } else if field(v, "connect_matcher").is_some() {
        Some(P::ConnectMatcher(Default::default()))
    } else if field(v, "path_match_policy").is_some() {
        Some(P::PathMatchPolicy(Default::default()))
    } else {
        None
    };
    RouteMatch {
        path_specifier,
        headers: present_list(v, "headers"),
        query_parameters: present_list(v, "query_parameters"),
        grpc: field(v, "grpc").map(|_| Default::default()),
        tls_context: field(v, "tls_context").map(|_| Default::default()),
        runtime_fraction: field(v, "runtime_fraction").map(|_| Default::default()),
        dynamic_metadata: present_list(v, "dynamic_metadata"),
        cookies: present_list(v, "cookies"),
        filter_state: present_list(v, "filter_state"),
        ..Default::default()
    }
}

fn route_action(v: &Value, path: &str, unparsed: &mut Vec<String>) -> RouteAction {
    json::note_unknown(
        v,
        path,
        &[
            "cluster",
            "cluster_header",
            "weighted_clusters",
            "cluster_specifier_plugin",
            "inline_cluster_specifier_plugin",
            "timeout",
            "idle_timeout",
            "retry_policy",
            "request_mirror_policies",
            "prefix_rewrite",
            "regex_rewrite",
            "path_rewrite_policy",
            "host_rewrite_literal",
            "host_rewrite_header",
            "auto_host_rewrite",
            "host_rewrite_path_regex",
            "hash_policy",
            "cors",
            "max_grpc_timeout",
            "grpc_timeout_offset",
            "max_stream_duration",
            "internal_redirect_policy",
            "hedge_policy",
            "rate_limits",
            "metadata_match",
            "append_x_forwarded_host",
        ],
        &[
            "upgrade_configs",
            "priority",
            "cluster_not_found_response_code",
            "include_vh_rate_limits",
        ],
        unparsed,
    );
    use route_action::ClusterSpecifier as C;
    use route_action::HostRewriteSpecifier as H;
    let cluster_specifier = if let Some(c) = field(v, "cluster").and_then(Value::as_str) {
        Some(C::Cluster(c.into()))
    } else if let Some(c) = field(v, "cluster_header").and_then(Value::as_str) {
        Some(C::ClusterHeader(c.into()))
    } else if let Some(w) = field(v, "weighted_clusters") {
        Some(C::WeightedClusters(WeightedCluster {
            clusters: json::items(w, "clusters")
                .map(|c| weighted_cluster::ClusterWeight {
                    name: json::string(c, "name"),
                    weight: json::u32_wrapper(c, "weight"),
                    request_headers_to_add: present_list(c, "request_headers_to_add"),
                    response_headers_to_add: present_list(c, "response_headers_to_add"),
                    request_headers_to_remove: json::strings(c, "request_headers_to_remove"),
                    response_headers_to_remove: json::strings(c, "response_headers_to_remove"),
                    metadata_match: field(c, "metadata_match").map(|_| Default::default()),
                    ..Default::default()
                })
                .collect(),
            total_weight: json::u32_wrapper(w, "total_weight"),
            ..Default::default()
        }))
    } else if let Some(p) = field(v, "cluster_specifier_plugin").and_then(Value::as_str) {
        Some(C::ClusterSpecifierPlugin(p.into()))
    } else if field(v, "inline_cluster_specifier_plugin").is_some() {
        Some(C::InlineClusterSpecifierPlugin(Default::default()))
    } else {
        None
    };
    let host_rewrite_specifier =
        if let Some(h) = field(v, "host_rewrite_literal").and_then(Value::as_str) {
            Some(H::HostRewriteLiteral(h.into()))
        } else if let Some(h) = field(v, "host_rewrite_header").and_then(Value::as_str) {
            Some(H::HostRewriteHeader(h.into()))
        } else if let Some(b) = json::bool_wrapper(v, "auto_host_rewrite") {
            Some(H::AutoHostRewrite(b))
        } else if field(v, "host_rewrite_path_regex").is_some() {
            Some(H::HostRewritePathRegex(Default::default()))
        } else {
            None
        };
    let mut out = RouteAction {
        cluster_specifier,
        host_rewrite_specifier,
        timeout: json::duration(v, "timeout"),
        idle_timeout: json::duration(v, "idle_timeout"),
        retry_policy: field(v, "retry_policy")
            .map(|r| retry_policy(r, &format!("{path}.retry_policy"), unparsed)),
        request_mirror_policies: present_list(v, "request_mirror_policies"),
        prefix_rewrite: json::string(v, "prefix_rewrite"),
        regex_rewrite: field(v, "regex_rewrite").map(|_| Default::default()),
        path_rewrite_policy: field(v, "path_rewrite_policy").map(|_| Default::default()),
        hash_policy: present_list(v, "hash_policy"),
        cors: field(v, "cors").map(|_| Default::default()),
        max_grpc_timeout: json::duration(v, "max_grpc_timeout"),
        grpc_timeout_offset: json::duration(v, "grpc_timeout_offset"),
        internal_redirect_policy: field(v, "internal_redirect_policy").map(|_| Default::default()),
        hedge_policy: field(v, "hedge_policy").map(|_| Default::default()),
        rate_limits: present_list(v, "rate_limits"),
        metadata_match: field(v, "metadata_match").map(|_| Default::default()),
        append_x_forwarded_host: json::bool_field(v, "append_x_forwarded_host"),
        ..Default::default()
    };
    if let Some(m) = field(v, "max_stream_duration") {
        out.max_stream_duration = Some(route_action::MaxStreamDuration {
            max_stream_duration: json::duration(m, "max_stream_duration"),
            grpc_timeout_header_max: json::duration(m, "grpc_timeout_header_max"),
            grpc_timeout_header_offset: json::duration(m, "grpc_timeout_header_offset"),
        });
    }
    out
}

fn retry_policy(v: &Value, path: &str, unparsed: &mut Vec<String>) -> RetryPolicy {
    json::note_unknown(
        v,
        path,
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retry_priority",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "retriable_status_codes",
            "retry_back_off",
            "rate_limited_retry_back_off",
            "retriable_headers",
            "retriable_request_headers",
            "retry_options_predicates",
        ],
        &[],
        unparsed,
    );
    RetryPolicy {
        retry_on: json::string(v, "retry_on"),
        num_retries: json::u32_wrapper(v, "num_retries"),
        per_try_timeout: json::duration(v, "per_try_timeout"),
        per_try_idle_timeout: json::duration(v, "per_try_idle_timeout"),
        retry_priority: field(v, "retry_priority").map(|_| Default::default()),
        retry_host_predicate: json::items(v, "retry_host_predicate")
            .map(|p| RetryHostPredicate {
                name: json::string(p, "name"),
                config_type: None,
            })
            .collect(),
        host_selection_retry_max_attempts: field(v, "host_selection_retry_max_attempts")
            .and_then(json::uint)
            .and_then(|n| i64::try_from(n).ok())
            .unwrap_or(0),
        retriable_status_codes: json::items(v, "retriable_status_codes")
            .filter_map(|c| json::uint(c).and_then(|n| u32::try_from(n).ok()))
            .collect(),
        retry_back_off: field(v, "retry_back_off").map(|_| Default::default()),
        rate_limited_retry_back_off: field(v, "rate_limited_retry_back_off")
            .map(|_| Default::default()),
        retriable_headers: present_list(v, "retriable_headers"),
        retriable_request_headers: present_list(v, "retriable_request_headers"),
        retry_options_predicates: present_list(v, "retry_options_predicates"),
        ..Default::default()
    }
}
