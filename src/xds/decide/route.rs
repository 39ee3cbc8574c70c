//! Judging one virtual host: BYPASS needs exactly one catch-all route that
//! forwards to one cluster (or weighted clusters) with nothing per route
//! beyond Istio's defaults (its default retry policy and `0s` timeouts,
//! each under a named policy).

// Deprecated fields (cors, max_grpc_timeout) are still what istiod sends.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, RetryPolicy, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::google::protobuf::Duration;

use super::reason::{Loss, Losses, Reason, ReasonCode as R};
use super::BypassPolicy;
use crate::xds::dump;

/// Clusters a destination reaches, with their weights.
pub type Targets = Vec<(String, u32)>;

#[derive(Debug, Default, Clone)]
pub struct VhostJudged {
    pub targets: Targets,
    pub reasons: Vec<Reason>,
    pub losses: Losses,
}

pub fn judge(rc: &RouteConfiguration, vh: &VirtualHost, policy: &BypassPolicy) -> VhostJudged {
    let mut out = VhostJudged::default();
    let at = format!("route {} vhost {}", rc.name, vh.name);
    let mut block =
        |code, what: String| out.reasons.push(Reason::new(code, format!("{at}: {what}")));
    if let Some(p) = dump::first_unparsed(rc.metadata.as_ref()) {
        block(R::NotUnderstood, format!("{p} not understood"));
    }
    if !rc.request_headers_to_add.is_empty()
        || !rc.response_headers_to_add.is_empty()
        || !rc.request_headers_to_remove.is_empty()
        || !rc.response_headers_to_remove.is_empty()
        || !vh.request_headers_to_add.is_empty()
        || !vh.response_headers_to_add.is_empty()
        || !vh.request_headers_to_remove.is_empty()
        || !vh.response_headers_to_remove.is_empty()
    {
        block(R::HeaderMutation, "adds or removes headers".into());
    }
    if vh.cors.is_some() {
        block(R::CorsPolicy, "has a CORS policy".into());
    }
    if !vh.typed_per_filter_config.is_empty() {
        block(
            R::PerRouteFilterConfig,
            format!(
                "configures filters {:?}",
                sorted_keys(&vh.typed_per_filter_config)
            ),
        );
    }
    if !vh.rate_limits.is_empty()
        || vh.hedge_policy.is_some()
        || vh.require_tls != 0
        || vh.matcher.is_some()
    {
        block(
            R::RouteFeature,
            "rate limits, hedging, require_tls or a matcher".into(),
        );
    }
    if let Some(rp) = &vh.retry_policy {
        retry(rp, policy, &mut out.reasons, &mut out.losses, &at);
    }
    let [only] = vh.routes.as_slice() else {
        out.reasons.push(Reason::new(
            R::NotCatchAllRoute,
            format!(
                "{at}: {} routes (one catch-all route needed)",
                vh.routes.len()
            ),
        ));
        return out;
    };
    let at = format!("{at} route {}", only.name);
    let mut block =
        |code, what: String| out.reasons.push(Reason::new(code, format!("{at}: {what}")));
    if !catch_all(only.r#match.as_ref()) {
        block(
            R::NotCatchAllRoute,
            "matches on more than every path".into(),
        );
    }
    if !only.typed_per_filter_config.is_empty() {
        block(
            R::PerRouteFilterConfig,
            format!(
                "configures filters {:?}",
                sorted_keys(&only.typed_per_filter_config)
            ),
        );
    }
    if !only.request_headers_to_add.is_empty()
        || !only.response_headers_to_add.is_empty()
        || !only.request_headers_to_remove.is_empty()
        || !only.response_headers_to_remove.is_empty()
    {
        block(R::HeaderMutation, "adds or removes headers".into());
    }
    match &only.action {
        Some(route::Action::Route(a)) => action(a, policy, &at, &mut out),
        _ => out.reasons.push(Reason::new(
            R::RouteNotForwarding,
            format!("{at}: redirects, answers directly or does not forward"),
        )),
    }
    out.losses.push(Loss::TraceSpans);
    out
}

fn sorted_keys<V>(m: &std::collections::HashMap<String, V>) -> Vec<&String> {
    let mut k: Vec<_> = m.keys().collect();
    k.sort();
    k
}

fn catch_all(m: Option<&envoy_types::pb::envoy::config::route::v3::RouteMatch>) -> bool {
    let Some(m) = m else { return false };
    let path_ok = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => p == "/" || p.is_empty(),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex == ".*" || r.regex == "/.*",
        _ => false,
    };
    path_ok
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.grpc.is_none()
        && m.tls_context.is_none()
        && m.runtime_fraction.is_none()
        && m.dynamic_metadata.is_empty()
        && m.cookies.is_empty()
        && m.filter_state.is_empty()
}

fn is_zero(d: Option<&Duration>) -> bool {
    d.is_some_and(|d| d.seconds == 0 && d.nanos == 0)
}

fn action(a: &RouteAction, policy: &BypassPolicy, at: &str, out: &mut VhostJudged) {
    let mut block = |code, what: &str| out.reasons.push(Reason::new(code, format!("{at}: {what}")));
    use route_action::ClusterSpecifier as C;
    match &a.cluster_specifier {
        Some(C::Cluster(c)) => out.targets.push((c.clone(), 1)),
        Some(C::WeightedClusters(w)) => {
            for c in &w.clusters {
                if !c.request_headers_to_add.is_empty()
                    || !c.response_headers_to_add.is_empty()
                    || !c.request_headers_to_remove.is_empty()
                    || !c.response_headers_to_remove.is_empty()
                    || !c.typed_per_filter_config.is_empty()
                    || c.host_rewrite_specifier.is_some()
                {
                    block(
                        R::HeaderMutation,
                        "a weighted cluster mutates headers or filters",
                    );
                }
                if c.metadata_match.is_some() || !c.cluster_header.is_empty() {
                    block(
                        R::DynamicClusterChoice,
                        "a weighted cluster selects by metadata or header",
                    );
                }
                out.targets
                    .push((c.name.clone(), c.weight.map_or(0, |w| w.value)));
            }
        }
        _ => block(
            R::DynamicClusterChoice,
            "picks its cluster from a header or plugin",
        ),
    }
    let zero_ok = policy.zero_timeouts_are_unset;
    // Envoy's route timeout defaults to 15 s when unset; Istio writes 0s.
    match &a.timeout {
        t if is_zero(t.as_ref()) => {
            if zero_ok {
                out.reasons.push(Reason::new(
                    R::ZeroTimeoutIgnored,
                    format!("{at}: timeout 0s (disabled) (zeroTimeoutsAreUnset)"),
                ));
            } else {
                out.reasons.push(Reason::new(
                    R::RouteTimeout,
                    format!("{at}: timeout 0s keeps the sidecar: zeroTimeoutsAreUnset is off"),
                ));
            }
        }
        None => out.reasons.push(Reason::new(
            R::RouteTimeout,
            format!("{at}: no timeout set: Envoy applies its 15 s default"),
        )),
        Some(t) => out.reasons.push(Reason::new(
            R::RouteTimeout,
            format!("{at}: timeout {}.{:03}s", t.seconds, t.nanos / 1_000_000),
        )),
    }
    let stream_zero = a.max_stream_duration.as_ref().map_or(true, |m| {
        (m.max_stream_duration.is_none() || is_zero(m.max_stream_duration.as_ref()))
            && (m.grpc_timeout_header_max.is_none() || is_zero(m.grpc_timeout_header_max.as_ref()))
            && m.grpc_timeout_header_offset.is_none()
    }) && (a.max_grpc_timeout.is_none() || is_zero(a.max_grpc_timeout.as_ref()))
        && a.grpc_timeout_offset.is_none();
    if !stream_zero
        || (!zero_ok && (a.max_stream_duration.is_some() || a.max_grpc_timeout.is_some()))
    {
        out.reasons.push(Reason::new(
            R::RouteTimeout,
            format!("{at}: stream duration or gRPC timeout set"),
        ));
    }
    if a.idle_timeout.is_some() {
        out.reasons.push(Reason::new(
            R::RouteTimeout,
            format!("{at}: idle timeout set"),
        ));
    }
    if let Some(rp) = &a.retry_policy {
        retry(rp, policy, &mut out.reasons, &mut out.losses, at);
    }
    if a.retry_policy_typed_config.is_some() || a.hedge_policy.is_some() {
        out.reasons.push(Reason::new(
            R::RetryPolicy,
            format!("{at}: typed retry or hedge policy"),
        ));
    }
    let mut block = |code, what: &str| out.reasons.push(Reason::new(code, format!("{at}: {what}")));
    if !a.request_mirror_policies.is_empty() {
        block(R::Mirroring, "mirrors requests");
    }
    if !a.prefix_rewrite.is_empty()
        || a.regex_rewrite.is_some()
        || a.path_rewrite_policy.is_some()
        || !a.path_rewrite.is_empty()
        || a.host_rewrite_specifier.is_some()
        || a.append_x_forwarded_host
    {
        block(R::Rewrite, "rewrites the path or host");
    }
    if !a.hash_policy.is_empty() {
        block(R::HashPolicy, "hashes requests to endpoints");
    }
    if a.cors.is_some() {
        block(R::CorsPolicy, "has a CORS policy");
    }
    if !a.rate_limits.is_empty()
        || a.internal_redirect_policy.is_some()
        || a.metadata_match.is_some()
        || a.early_data_policy.is_some()
    {
        block(
            R::RouteFeature,
            "rate limits, internal redirects or metadata match",
        );
    }
}

/// Istio's default route retry policy (pilot's DefaultRetryPolicy): two
/// retries on connect-failure, refused-stream, unavailable, cancelled and
/// 503, previous-hosts predicate, 5 host selection attempts.
fn is_istio_default_retry(r: &RetryPolicy) -> bool {
    let mut on: Vec<&str> = r.retry_on.split(',').map(str::trim).collect();
    on.sort_unstable();
    on == [
        "cancelled",
        "connect-failure",
        "refused-stream",
        "retriable-status-codes",
        "unavailable",
    ] && r.num_retries.is_some_and(|n| n.value == 2)
        && r.retriable_status_codes == [503]
        && r.retry_host_predicate.len() == 1
        && r.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"
        && r.host_selection_retry_max_attempts == 5
        && r.per_try_timeout.is_none()
        && r.per_try_idle_timeout.is_none()
        && r.retry_priority.is_none()
        && r.retry_back_off.is_none()
        && r.rate_limited_retry_back_off.is_none()
        && r.retriable_headers.is_empty()
        && r.retriable_request_headers.is_empty()
        && r.retry_options_predicates.is_empty()
}

fn retry(
    r: &RetryPolicy,
    policy: &BypassPolicy,
    reasons: &mut Vec<Reason>,
    losses: &mut Losses,
    at: &str,
) {
    let none = r.num_retries.is_some_and(|n| n.value == 0) || r.retry_on.is_empty();
    if none {
        return;
    }
    if is_istio_default_retry(r) {
        if policy.ignore_istio_default_retries {
            reasons.push(Reason::new(
                R::IstioDefaultRetryIgnored,
                format!("{at}: Istio's default retry policy (ignoreIstioDefaultRetries)"),
            ));
            losses.push(Loss::DefaultRetries);
        } else {
            reasons.push(Reason::new(R::RetryPolicy, format!("{at}: Istio's default retry policy keeps the sidecar: ignoreIstioDefaultRetries is off")));
        }
    } else {
        reasons.push(Reason::new(
            R::RetryPolicy,
            format!(
                "{at}: retries on {} ({} times)",
                r.retry_on,
                r.num_retries.map_or(1, |n| n.value)
            ),
        ));
    }
}
