//! Judging a cluster and listing the endpoints a bypass may pick: plaintext
//! to every endpoint (per-endpoint transport socket matches, Istio's
//! `tlsMode: istio`), no outlier detection, health checks or connection
//! pool limits beyond Istio's unlimited defaults, an LB policy the kernel
//! can honour, IP endpoints known from EDS or a static assignment.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::filters::{self, Place};
use super::reason::{Loss, Reason, ReasonCode as R};
use super::BypassPolicy;
use crate::xds::assignment::{Assignment, Host};
use crate::xds::typeurl::{self as t};
use crate::xds::{dump, ProxyResources};

/// One endpoint a bypass may connect to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    /// Relative weight within the destination (cluster share x endpoint weight).
    pub weight: u64,
    /// Envoy priority (0 first; higher only when lower ones are unhealthy).
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Arc<str>>,
    /// Shared by every endpoint of the cluster.
    pub cluster: Arc<str>,
}

/// A cluster's judgement, independent of which listener reaches it.
#[derive(Debug, Clone, Default)]
pub struct ClusterJudged {
    pub reasons: Vec<Reason>,
    /// Reasons that apply only when the cluster is reached over HTTP.
    pub http_reasons: Vec<Reason>,
    pub losses: Vec<Loss>,
    /// Sorted; shared with the destinations that reach only this cluster.
    pub endpoints: Arc<[Endpoint]>,
    /// ORIGINAL_DST: the passthrough (connects where the app dialled).
    pub original_dst: bool,
    /// Service hostnames Istio records in the cluster's metadata.
    pub hosts: Vec<String>,
}

const DISCOVERY_STATIC: i32 = 0;
const DISCOVERY_EDS: i32 = 3;
const DISCOVERY_ORIGINAL_DST: i32 = 4;
const LB_ROUND_ROBIN: i32 = 0;
const LB_LEAST_REQUEST: i32 = 1;
const LB_RANDOM: i32 = 3;
const LB_CLUSTER_PROVIDED: i32 = 6;
const HEALTH_UNHEALTHY_OR_WORSE: [i32; 3] = [2, 3, 4];

pub fn judge(name: &str, res: &ProxyResources, policy: &BypassPolicy) -> ClusterJudged {
    let mut out = ClusterJudged::default();
    let Some(held) = res.clusters.get(name) else {
        out.reasons.push(Reason::new(
            R::ClusterMissing,
            format!("cluster {name} is not known"),
        ));
        return out;
    };
    let c = &held.decode();
    out.hosts = istio_hosts(c);
    if let Some(path) = dump::first_unparsed(c.metadata.as_ref()) {
        out.reasons.push(Reason::new(
            R::NotUnderstood,
            format!("cluster {name}: {path} not understood"),
        ));
    }
    let kind = match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => *t,
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            out.reasons.push(Reason::new(
                R::ClusterType,
                format!("cluster {name} is a custom cluster type {}", ct.name),
            ));
            return out;
        }
        None => DISCOVERY_STATIC,
    };
    if kind == DISCOVERY_ORIGINAL_DST {
        out.original_dst = true;
        if let Some(cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config {
            if o.use_http_header
                || !o.http_header_name.is_empty()
                || o.upstream_port_override.is_some()
                || o.metadata_key.is_some()
            {
                out.reasons.push(Reason::new(
                    R::LbPolicy,
                    format!("original-destination cluster {name} takes its address from a header or metadata, or overrides the port"),
                ));
            }
        }
        if c.lb_policy != LB_CLUSTER_PROVIDED && c.lb_policy != 4 {
            out.reasons.push(Reason::new(
                R::LbPolicy,
                format!(
                    "original-destination cluster {name} has LB policy {}",
                    c.lb_policy
                ),
            ));
        }
        settings(c, res, policy, &mut out);
        return out;
    }
    if kind != DISCOVERY_EDS && kind != DISCOVERY_STATIC {
        out.reasons.push(Reason::new(
            R::DnsCluster,
            format!("cluster {name} resolves DNS names itself"),
        ));
        return out;
    }
    settings(c, res, policy, &mut out);
    let static_assignment;
    let cla = if kind == DISCOVERY_STATIC {
        static_assignment = c.load_assignment.as_ref().map(Assignment::from_proto);
        static_assignment.as_ref()
    } else {
        let service = held.eds_service.as_deref().unwrap_or(name);
        if !res.has_eds {
            let may_tls = may_use_tls(c);
            if policy.assume_mtls_without_endpoints && may_tls {
                out.reasons.push(Reason::new(R::EndpointsUnknownAssumeMtls, format!("cluster {name} may use auto-mTLS and its endpoints are unknown (no EDS): assumed mTLS")));
            } else if policy.assume_mtls_without_endpoints {
                out.reasons.push(Reason::new(
                    R::NoEndpoints,
                    format!("cluster {name}: endpoints unknown (no EDS)"),
                ));
            }
            return out;
        }
        res.endpoints.get(service).map(|a| a.as_ref())
    };
    out.endpoints = endpoints(c, cla, &mut out.reasons).into();
    if out.endpoints.is_empty()
        && !out
            .reasons
            .iter()
            .any(|r| r.code == R::MtlsEndpoint || r.code == R::DnsCluster)
    {
        let code = if kind == DISCOVERY_STATIC {
            R::RegistryOnlyBlackhole
        } else {
            R::NoEndpoints
        };
        let text = if kind == DISCOVERY_STATIC {
            format!("cluster {name} has no endpoints: its traffic is dropped (blackhole)")
        } else {
            format!("cluster {name} has no endpoints that can be chosen (auto-mTLS unknown): assumed mTLS")
        };
        out.reasons.push(Reason::new(code, text));
    }
    out
}

/// Cluster-wide settings: LB, resilience, transport, upstream filters.
fn settings(c: &Cluster, res: &ProxyResources, policy: &BypassPolicy, out: &mut ClusterJudged) {
    let name = &c.name;
    match c.lb_policy {
        LB_ROUND_ROBIN | LB_RANDOM | LB_CLUSTER_PROVIDED | 4 => {}
        LB_LEAST_REQUEST if policy.least_request_as_weighted_random => out.reasons.push(Reason::new(
            R::LeastRequestAsWeightedRandom,
            format!("cluster {name}: least-request balancing done as weighted random per connection (leastRequestAsWeightedRandom)"),
        )),
        p => out.reasons.push(Reason::new(R::LbPolicy, format!("cluster {name} has LB policy {}", lb_name(p)))),
    }
    if c.load_balancing_policy.is_some() {
        out.reasons.push(Reason::new(
            R::LbPolicy,
            format!("cluster {name} has a typed load_balancing_policy"),
        ));
    }
    if c.lb_subset_config.is_some() {
        out.reasons.push(Reason::new(
            R::LbSubsets,
            format!("cluster {name} balances over subsets"),
        ));
    }
    if let Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.locality_config_specifier.as_ref())
    {
        out.reasons.push(Reason::new(
            R::LocalityWeightedLb,
            format!("cluster {name} weights localities"),
        ));
    }
    if c.outlier_detection.is_some() {
        out.reasons.push(Reason::new(
            R::OutlierDetection,
            format!("cluster {name} ejects outliers"),
        ));
    }
    if !c.health_checks.is_empty() {
        out.reasons.push(Reason::new(
            R::HealthChecks,
            format!("cluster {name} health-checks its endpoints"),
        ));
    }
    if let Some(cb) = &c.circuit_breakers {
        let limited = cb
            .thresholds
            .iter()
            .chain(&cb.per_host_thresholds)
            .any(|t| {
                [
                    t.max_connections,
                    t.max_pending_requests,
                    t.max_requests,
                    t.max_retries,
                    t.max_connection_pools,
                ]
                .iter()
                .any(|v| v.is_some_and(|v| v.value != u32::MAX))
                    || t.retry_budget.is_some()
            })
            || !cb.per_host_thresholds.is_empty();
        if limited {
            out.reasons.push(Reason::new(
                R::ConnectionPoolLimits,
                format!("cluster {name} limits connections or requests"),
            ));
        }
    }
    if let Some(ts) = &c.transport_socket {
        if is_tls(ts) {
            out.reasons.push(Reason::new(
                R::TlsTransportSocket,
                format!("cluster {name} originates TLS ({})", ts.name),
            ));
        }
    }
    for f in &c.filters {
        let j = filters::judge(
            &f.name,
            f.typed_config.as_ref(),
            f.config_discovery.is_some(),
            Place::Upstream,
            policy,
            &res.extension_configs,
        );
        out.reasons.extend(j.reasons);
        out.losses.extend(j.losses);
    }
    if let Some(o) = c
        .typed_extension_protocol_options
        .values()
        .find(|a| t::type_name(a) == t::HTTP_PROTOCOL_OPTIONS)
    {
        let forced = HttpProtocolOptions::decode(o.value.as_slice())
            .ok()
            .and_then(|p| p.upstream_protocol_options)
            .is_some_and(|u| {
                matches!(
                    u,
                    http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(_)
                )
            });
        if forced {
            out.http_reasons.push(Reason::new(
                R::UpstreamProtocolForced,
                format!("cluster {name} forces the upstream HTTP version (the app's may differ)"),
            ));
        }
    }
    if c.connect_timeout.is_some() {
        out.losses.push(Loss::ConnectTimeout);
    }
}

fn lb_name(p: i32) -> String {
    cluster::LbPolicy::try_from(p).map_or_else(|_| p.to_string(), |l| l.as_str_name().to_string())
}

/// True when the transport socket is anything but plaintext (raw_buffer).
pub fn is_tls(ts: &TransportSocket) -> bool {
    let ty = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => t::type_name(a).to_string(),
        None => String::new(),
    };
    !(ty == t::RAW_BUFFER || (ty.is_empty() && ts.name == "envoy.transport_sockets.raw_buffer"))
}

/// True when any transport socket of the cluster originates TLS.
fn may_use_tls(c: &Cluster) -> bool {
    c.transport_socket.as_ref().is_some_and(is_tls)
        || c.transport_socket_matches
            .iter()
            .any(|m| m.transport_socket.as_ref().is_some_and(is_tls))
}

/// The transport socket Envoy uses for an endpoint with these
/// `envoy.transport_socket_match` labels: the first match whose labels
/// are all present, else the cluster's.
fn socket_for<'a>(c: &'a Cluster, labels: Option<&Struct>) -> Option<&'a TransportSocket> {
    for m in &c.transport_socket_matches {
        let wanted = m.r#match.as_ref().map(|s| &s.fields);
        let all = wanted.map_or(true, |w| {
            w.iter()
                .all(|(k, v)| labels.and_then(|l| l.fields.get(k)).is_some_and(|x| x == v))
        });
        if all {
            return m.transport_socket.as_ref();
        }
    }
    c.transport_socket.as_ref()
}

/// The endpoints a bypass may pick, sorted; an endpoint that gets TLS or
/// is no IP address adds its reason.
fn endpoints(c: &Cluster, cla: Option<&Assignment>, reasons: &mut Vec<Reason>) -> Vec<Endpoint> {
    let Some(cla) = cla else {
        return Vec::new();
    };
    let cluster: Arc<str> = Arc::from(c.name.as_str());
    let mut out = Vec::new();
    let mut tls_noted = false;
    for (group, e) in cla.endpoints() {
        if HEALTH_UNHEALTHY_OR_WORSE.contains(&e.health) {
            continue;
        }
        let labels = e.labels.as_deref();
        if socket_for(c, labels).is_some_and(is_tls) {
            if !tls_noted {
                let mode = labels
                    .and_then(|l| l.fields.get("tlsMode"))
                    .and_then(|v| match &v.kind {
                        Some(Kind::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                reasons.push(Reason::new(
                    R::MtlsEndpoint,
                    format!(
                        "cluster {}: endpoint {} gets TLS (tlsMode: {mode})",
                        c.name, e.host
                    ),
                ));
                tls_noted = true;
            }
            continue;
        }
        let Host::Ip(ip) = e.host else {
            reasons.push(Reason::new(
                R::DnsCluster,
                format!(
                    "cluster {}: endpoint {} is not an IP address",
                    c.name, e.host
                ),
            ));
            continue;
        };
        out.push(Endpoint {
            address: ip,
            port: e.port,
            weight: u64::from(e.weight),
            priority: group.priority,
            locality: group.locality.clone(),
            cluster: Arc::clone(&cluster),
        });
    }
    out.sort();
    out
}

/// `metadata.filter_metadata.istio.services[].host` (what istiod writes).
fn istio_hosts(c: &Cluster) -> Vec<String> {
    let Some(istio) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
    else {
        return Vec::new();
    };
    let Some(Kind::ListValue(services)) =
        istio.fields.get("services").and_then(|v| v.kind.as_ref())
    else {
        return Vec::new();
    };
    services
        .values
        .iter()
        .filter_map(|s| match s.kind.as_ref()? {
            Kind::StructValue(st) => match st.fields.get("host")?.kind.as_ref()? {
                Kind::StringValue(h) => Some(h.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
