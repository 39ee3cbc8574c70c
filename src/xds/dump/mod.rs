//! Envoy config dumps (`istioctl proxy-config all -o json`, or Envoy's
//! admin `/config_dump`, with or without `?include_eds`) read into
//! [`ProxyResources`], the decision engine's input.
//!
//! envoy-types has no protobuf-JSON support, so each resource is converted
//! from `serde_json::Value` by hand ([`listener`], [`route`], [`cluster`],
//! [`typed`]) for the fields the engine judges; keys a converter does not
//! understand never fail the dump: they are recorded in the resource's
//! metadata under [`UNPARSED_KEY`], and the engine keeps the sidecar for
//! anything that depends on them. Typed configs of unknown types are kept
//! as opaque `Any`s. v2-era dumps (`envoy.api.v2`) are refused.

mod cluster;
pub mod json;
mod listener;
mod route;
mod typed;

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Metadata, TypedExtensionConfig};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::assignment::Assignment;
use super::held::{HeldCluster, HeldListener, HeldRoute};
use super::resources::named_mut;
use super::ProxyResources;

/// `filter_metadata` key under which a dump-read resource lists the JSON
/// paths its converter did not understand (field `unparsed`).
pub const UNPARSED_KEY: &str = "meshlane.dump";

#[derive(Debug, Error)]
pub enum DumpError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not an Envoy config dump: {0}")]
    NotADump(String),
    #[error("the config dump is empty (no configs)")]
    Empty,
    #[error("v2-era config dump ({0}): Envoy's v2 xDS API is gone since Istio 1.8; dump a proxy that speaks v3")]
    V2(String),
    #[error("configs[{index}]: unknown @type {type_url}")]
    UnknownSection { index: usize, type_url: String },
    #[error("the config dump has no {0} section; pass --allow-partial to explain what it holds")]
    Missing(&'static str),
}

/// What one dump held.
#[derive(Debug, Default)]
pub struct ParsedDump {
    pub resources: ProxyResources,
    /// Which sections were present.
    pub sections: Sections,
    /// Things skipped (listeners in error state, ...), one line each.
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Sections {
    pub listeners: bool,
    pub routes: bool,
    pub clusters: bool,
    pub endpoints: bool,
}

/// Parses a config dump; with `allow_partial`, a dump missing its
/// listener or cluster section is explained from what it holds.
pub fn parse(text: &str, allow_partial: bool) -> Result<ParsedDump, DumpError> {
    let root: Value = serde_json::from_str(text).map_err(|e| DumpError::Json(e.to_string()))?;
    let configs = match json::field(&root, "configs") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(DumpError::NotADump("\"configs\" is not a list".into())),
        None if root.as_object().is_some_and(|o| o.is_empty()) => return Err(DumpError::Empty),
        None => return Err(DumpError::NotADump("no \"configs\" list at the top".into())),
    };
    if configs.is_empty() {
        return Err(DumpError::Empty);
    }
    let mut out = ParsedDump::default();
    for (index, section) in configs.iter().enumerate() {
        let type_url = section
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        refuse_v2(type_url)?;
        let name = type_url.rsplit_once('/').map_or(type_url, |(_, n)| n);
        match name {
            "envoy.admin.v3.ListenersConfigDump" => listeners(section, &mut out)?,
            "envoy.admin.v3.RoutesConfigDump" => routes(section, &mut out)?,
            "envoy.admin.v3.ClustersConfigDump" => clusters(section, &mut out)?,
            "envoy.admin.v3.EndpointsConfigDump" => endpoints(section, &mut out),
            "envoy.admin.v3.EcdsConfigDump" => ecds(section, &mut out)?,
            n if n.starts_with("envoy.admin.v3.") => {}
            _ => {
                return Err(DumpError::UnknownSection {
                    index,
                    type_url: type_url.to_string(),
                })
            }
        }
    }
    if !allow_partial {
        if !out.sections.listeners {
            return Err(DumpError::Missing("listeners (ListenersConfigDump)"));
        }
        if !out.sections.clusters || out.resources.clusters.is_empty() {
            return Err(DumpError::Missing("clusters (ClustersConfigDump)"));
        }
    }
    Ok(out)
}

/// Refuses any v2-era type (resources or admin sections).
pub(crate) fn refuse_v2(type_url: &str) -> Result<(), DumpError> {
    let name = type_url.rsplit_once('/').map_or(type_url, |(_, n)| n);
    let v2 = name.starts_with("envoy.api.v2.")
        || name.starts_with("envoy.admin.v2alpha.")
        || (name.starts_with("envoy.config.filter.") && name.contains(".v2."));
    if v2 {
        return Err(DumpError::V2(name.to_string()));
    }
    Ok(())
}

/// Metadata that marks JSON paths a converter did not understand.
pub(crate) fn unparsed_marker(unparsed: Vec<String>) -> Option<Metadata> {
    if unparsed.is_empty() {
        return None;
    }
    let list = ListValue {
        values: unparsed
            .into_iter()
            .map(|p| PbValue {
                kind: Some(Kind::StringValue(p)),
            })
            .collect(),
    };
    let mut s = Struct::default();
    s.fields.insert(
        "unparsed".into(),
        PbValue {
            kind: Some(Kind::ListValue(list)),
        },
    );
    let mut md = Metadata::default();
    md.filter_metadata.insert(UNPARSED_KEY.into(), s);
    Some(md)
}

/// The first JSON path a dump-read resource's converter did not understand.
pub fn first_unparsed(md: Option<&Metadata>) -> Option<&str> {
    let s = md?.filter_metadata.get(UNPARSED_KEY)?;
    match s.fields.get("unparsed")?.kind.as_ref()? {
        Kind::ListValue(l) => match l.values.first()?.kind.as_ref()? {
            Kind::StringValue(p) => Some(p.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn listeners(section: &Value, out: &mut ParsedDump) -> Result<(), DumpError> {
    out.sections.listeners = true;
    for s in json::items(section, "static_listeners") {
        if let Some(l) = json::field(s, "listener") {
            add_listener(l, out)?;
        }
    }
    for d in json::items(section, "dynamic_listeners") {
        let name = json::string(d, "name");
        match json::field(d, "active_state").and_then(|a| json::field(a, "listener")) {
            Some(l) => add_listener(l, out)?,
            None => {
                let why = json::field(d, "error_state")
                    .map(|e| json::string(e, "details"))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "not active (warming or draining)".into());
                out.warnings.push(format!("listener {name} skipped: {why}"));
            }
        }
    }
    Ok(())
}

fn add_listener(v: &Value, out: &mut ParsedDump) -> Result<(), DumpError> {
    refuse_v2(v.get("@type").and_then(Value::as_str).unwrap_or_default())?;
    let l = listener::listener(v)?;
    let held = HeldListener::new(&l);
    named_mut(&mut out.resources.listeners).insert(Arc::clone(&held.name), Arc::new(held));
    Ok(())
}

fn routes(section: &Value, out: &mut ParsedDump) -> Result<(), DumpError> {
    out.sections.routes = true;
    let all = json::items(section, "static_route_configs")
        .chain(json::items(section, "dynamic_route_configs"));
    for r in all {
        if let Some(rc) = json::field(r, "route_config") {
            refuse_v2(rc.get("@type").and_then(Value::as_str).unwrap_or_default())?;
            let rc = route::route_configuration(rc, "")?;
            named_mut(&mut out.resources.routes)
                .insert(rc.name.as_str().into(), Arc::new(HeldRoute::new(&rc)));
        }
    }
    Ok(())
}

fn clusters(section: &Value, out: &mut ParsedDump) -> Result<(), DumpError> {
    out.sections.clusters = true;
    let all = json::items(section, "static_clusters")
        .chain(json::items(section, "dynamic_active_clusters"))
        .chain(json::items(section, "dynamic_warming_clusters"));
    for c in all {
        if let Some(v) = json::field(c, "cluster") {
            refuse_v2(v.get("@type").and_then(Value::as_str).unwrap_or_default())?;
            let c = cluster::cluster(v)?;
            let held = HeldCluster::new(&c);
            named_mut(&mut out.resources.clusters).insert(Arc::clone(&held.name), Arc::new(held));
        }
    }
    Ok(())
}

fn endpoints(section: &Value, out: &mut ParsedDump) {
    out.sections.endpoints = true;
    out.resources.has_eds = true;
    let all = json::items(section, "static_endpoint_configs")
        .chain(json::items(section, "dynamic_endpoint_configs"));
    for e in all {
        if let Some(v) = json::field(e, "endpoint_config") {
            let cla = cluster::load_assignment(v);
            let a = Assignment::from_proto(&cla);
            named_mut(&mut out.resources.endpoints)
                .insert(Arc::clone(&a.cluster_name), Arc::new(a));
        }
    }
}

fn ecds(section: &Value, out: &mut ParsedDump) -> Result<(), DumpError> {
    for e in json::items(section, "ecds_filters") {
        if let Some(v) = json::field(e, "ecds_filter") {
            let name = json::string(v, "name");
            let mut ignored = Vec::new();
            let typed_config = typed::any_field(v, "typed_config", &name, &mut ignored)?;
            named_mut(&mut out.resources.extension_configs).insert(
                name.as_str().into(),
                Arc::new(TypedExtensionConfig { name, typed_config }),
            );
        }
    }
    Ok(())
}
