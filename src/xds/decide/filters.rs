//! Judging filters by their type and config, never by their name: the
//! HTTP and network filters of a chain and a cluster's upstream filters.
//! A filter is either the terminal one (router, TCP proxy, HTTP connection
//! manager: judged by the caller), inert under a named policy (a note and
//! what a bypass loses), or a reason to keep the sidecar.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct};
use prost::Message;

use super::reason::{Loss, Losses, Reason, ReasonCode as R};
use super::BypassPolicy;
use crate::xds::typeurl::{self as t, unwrap_typed_struct};

/// Where a filter sits (for the reason text and the allow-list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Http,
    Network,
    Upstream,
}

/// The outcome for one filter.
#[derive(Debug, Default)]
pub struct Judged {
    pub reasons: Vec<Reason>,
    pub losses: Losses,
}

/// Wasm plugins Istio builds in (null VM, inline code name) that only
/// count or exchange peer metadata.
const ISTIO_TELEMETRY_WASM: &[&str] = &["envoy.wasm.stats", "envoy.wasm.metadata_exchange"];

/// Judges a filter's config: `Some(any)` typed, `None` with `ecds` true a
/// config_discovery filter (resolved by `name` from `ecds_configs`).
pub fn judge(
    name: &str,
    config: Option<&Any>,
    ecds: bool,
    place: Place,
    policy: &BypassPolicy,
    ecds_configs: &BTreeMap<Arc<str>, Arc<TypedExtensionConfig>>,
) -> Judged {
    let mut out = Judged::default();
    let resolved;
    let any = match (config, ecds) {
        (Some(a), _) => a,
        (None, true) => match ecds_configs.get(name).and_then(|c| c.typed_config.as_ref()) {
            Some(a) => {
                resolved = a.clone();
                &resolved
            }
            None => {
                out.reasons.push(Reason::new(
                    R::EcdsUnresolved,
                    format!(
                        "{} filter {name} comes by ECDS and its config is not known",
                        place_name(place)
                    ),
                ));
                return out;
            }
        },
        (None, false) => {
            out.reasons.push(Reason::new(
                R::UnknownFilterType,
                format!("{} filter {name} has no typed config", place_name(place)),
            ));
            return out;
        }
    };
    let (ty, typed_struct) = unwrap_typed_struct(any);
    let telemetry = |out: &mut Judged, what: &str| {
        if policy.telemetry_filters_inert {
            out.reasons.push(Reason::new(
                R::InertFilter,
                format!("{what} {name} only counts or tags traffic (telemetryFiltersInert)"),
            ));
            out.losses.push(Loss::EnvoyStats);
            out.losses.push(Loss::AddedHeaders);
        } else {
            out.reasons.push(Reason::new(
                not_allowed(place),
                format!("{what} {name} ({ty}) keeps the sidecar: telemetryFiltersInert is off"),
            ));
        }
    };
    match ty.as_str() {
        t::FAULT if place == Place::Http => {
            let active = HttpFault::decode(any.value.as_slice())
                .map(|f| f.delay.is_some() || f.abort.is_some() || f.response_rate_limit.is_some())
                .unwrap_or(true);
            if active {
                out.reasons.push(Reason::new(
                    R::HttpFilterNotAllowed,
                    format!("fault filter {name} injects delays or aborts"),
                ));
            } else if policy.empty_fault_filter_inert {
                out.reasons.push(Reason::new(
                    R::InertFilter,
                    format!("fault filter {name} has no fault configured (emptyFaultFilterInert)"),
                ));
            } else {
                out.reasons.push(Reason::new(
                    R::HttpFilterNotAllowed,
                    format!("fault filter {name} keeps the sidecar: emptyFaultFilterInert is off"),
                ));
            }
        }
        t::CORS if place == Place::Http => {
            if policy.cors_filter_inert {
                out.reasons.push(Reason::new(
                    R::InertFilter,
                    format!(
                        "CORS filter {name} acts only with a route CORS policy (corsFilterInert)"
                    ),
                ));
            } else {
                out.reasons.push(Reason::new(
                    R::HttpFilterNotAllowed,
                    format!("CORS filter {name} keeps the sidecar: corsFilterInert is off"),
                ));
            }
        }
        t::ISTIO_ALPN if place == Place::Http => {
            out.reasons.push(Reason::new(
                R::InertFilter,
                format!("ALPN override {name} only affects TLS upstreams"),
            ));
        }
        t::GRPC_STATS | t::ISTIO_STATS | t::HTTP_METADATA_EXCHANGE => {
            telemetry(&mut out, "telemetry filter")
        }
        t::METADATA_EXCHANGE if place != Place::Http => telemetry(&mut out, "metadata exchange"),
        t::HTTP_WASM | t::NETWORK_WASM => match wasm_code(any, typed_struct.as_ref()) {
            Some(code) if ISTIO_TELEMETRY_WASM.contains(&code.as_str()) => {
                telemetry(&mut out, "built-in Wasm telemetry")
            }
            code => out.reasons.push(Reason::new(
                not_allowed(place),
                format!(
                    "Wasm filter {name} runs plugin {}",
                    code.unwrap_or_else(|| "from remote code".into())
                ),
            )),
        },
        other if is_known_blocking(other) => out.reasons.push(Reason::new(
            not_allowed(place),
            format!("{} filter {name} is {other}", place_name(place)),
        )),
        other => out.reasons.push(Reason::new(
            R::UnknownFilterType,
            format!("unknown {} filter type {other} ({name})", place_name(place)),
        )),
    }
    out
}

fn not_allowed(place: Place) -> R {
    match place {
        Place::Http => R::HttpFilterNotAllowed,
        Place::Network => R::NetworkFilterNotAllowed,
        Place::Upstream => R::UpstreamFilter,
    }
}

fn place_name(place: Place) -> &'static str {
    match place {
        Place::Http => "HTTP",
        Place::Network => "network",
        Place::Upstream => "upstream",
    }
}

/// Types Envoy defines that change or police traffic (kept by the sidecar).
fn is_known_blocking(ty: &str) -> bool {
    const FAMILIES: &[&str] = &[
        ".rbac.",
        ".ext_authz.",
        ".lua.",
        ".ratelimit.",
        ".local_ratelimit.",
        ".ext_proc.",
        ".jwt_authn.",
        ".oauth2.",
        ".header_to_metadata.",
        ".compressor.",
        ".buffer.",
        ".grpc_web.",
        ".grpc_json_transcoder.",
        ".csrf.",
        ".tap.",
        ".connection_limit.",
        ".sni_cluster.",
        ".mongo_proxy.",
        ".redis_proxy.",
        ".mysql_proxy.",
        ".thrift_proxy.",
        ".dubbo_proxy.",
        ".kafka_broker.",
        ".set_filter_state.",
        "authn.",
    ];
    FAMILIES.iter().any(|f| ty.contains(f)) || ty.starts_with("istio.")
}

/// The inline code name of a Wasm filter's VM (null-VM built-ins).
fn wasm_code(any: &Any, typed_struct: Option<&Struct>) -> Option<String> {
    if let Some(s) = typed_struct {
        let path = ["config", "vm_config", "code", "local", "inline_string"];
        return struct_path(s, &path);
    }
    let w = Wasm::decode(any.value.as_slice()).ok()?;
    let Some(Vm::VmConfig(vm)) = w.config?.vm else {
        return None;
    };
    match vm.code?.specifier? {
        async_data_source::Specifier::Local(d) => match d.specifier? {
            data_source::Specifier::InlineString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn struct_path(s: &Struct, path: &[&str]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    match s.fields.get(*first)?.kind.as_ref()? {
        Kind::StructValue(inner) if !rest.is_empty() => struct_path(inner, rest),
        Kind::StringValue(v) if rest.is_empty() => Some(v.clone()),
        _ => None,
    }
}
