//! Listeners from a config dump: addresses, filter chains and their
//! matches, network filters (typed or delivered by ECDS), transport sockets.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, transport_socket, Address, CidrRange, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::google::protobuf::BoolValue;
use serde_json::Value;

use super::json::{self, field};
use super::{typed, DumpError};

pub fn listener(v: &Value) -> Result<Listener, DumpError> {
    let name = json::string(v, "name");
    let path = format!("listener {name}");
    let mut unparsed = Vec::new();
    let mut out = Listener {
        name: name.clone(),
        address: field(v, "address").map(socket_address),
        use_original_dst: json::bool_wrapper(v, "use_original_dst"),
        traffic_direction: json::enum_field(
            v,
            "traffic_direction",
            &["UNSPECIFIED", "INBOUND", "OUTBOUND"],
        ),
        ..Default::default()
    };
    out.bind_to_port = json::bool_wrapper(v, "bind_to_port").or_else(|| {
        field(v, "deprecated_v1")
            .and_then(|d| json::bool_wrapper(d, "bind_to_port"))
            .map(|b| BoolValue { value: b.value })
    });
    for (i, c) in json::items(v, "filter_chains").enumerate() {
        out.filter_chains.push(filter_chain(
            c,
            &format!("{path}.filter_chains[{i}]"),
            &mut unparsed,
        )?);
    }
    if let Some(c) = field(v, "default_filter_chain") {
        out.default_filter_chain = Some(filter_chain(
            c,
            &format!("{path}.default_filter_chain"),
            &mut unparsed,
        )?);
    }
    if field(v, "filter_chain_matcher").is_some() {
        unparsed.push(format!("{path}.filter_chain_matcher"));
    }
    out.metadata = super::unparsed_marker(unparsed);
    Ok(out)
}

/// A socket address (`{"socket_address": {"address", "port_value"}}`).
pub fn socket_address(v: &Value) -> Address {
    let sa = field(v, "socket_address").unwrap_or(&Value::Null);
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: json::string(sa, "address"),
            port_specifier: json::u32_field(sa, "port_value")
                .map(socket_address::PortSpecifier::PortValue),
            ..Default::default()
        })),
    }
}

fn filter_chain(
    v: &Value,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<FilterChain, DumpError> {
    let mut out = FilterChain {
        name: json::string(v, "name"),
        ..Default::default()
    };
    if let Some(m) = field(v, "filter_chain_match") {
        out.filter_chain_match = Some(chain_match(
            m,
            &format!("{path}.filter_chain_match"),
            unparsed,
        ));
    }
    for (i, f) in json::items(v, "filters").enumerate() {
        out.filters.push(network_filter(
            f,
            &format!("{path}.filters[{i}]"),
            unparsed,
        )?);
    }
    if let Some(ts) = field(v, "transport_socket") {
        out.transport_socket = Some(transport_socket(ts, path, unparsed)?);
    }
    Ok(out)
}

pub fn transport_socket(
    v: &Value,
    path: &str,
    unparsed: &mut Vec<String>,
) -> Result<TransportSocket, DumpError> {
    Ok(TransportSocket {
        name: json::string(v, "name"),
        config_type: typed::any_field(v, "typed_config", path, unparsed)?
            .map(transport_socket::ConfigType::TypedConfig),
    })
}

fn chain_match(v: &Value, path: &str, unparsed: &mut Vec<String>) -> FilterChainMatch {
    json::note_unknown(
        v,
        path,
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "source_prefix_ranges",
            "direct_source_prefix_ranges",
            "source_ports",
            "source_type",
        ],
        &[],
        unparsed,
    );
    FilterChainMatch {
        destination_port: json::u32_wrapper(v, "destination_port"),
        prefix_ranges: cidrs(v, "prefix_ranges"),
        server_names: json::strings(v, "server_names"),
        transport_protocol: json::string(v, "transport_protocol"),
        application_protocols: json::strings(v, "application_protocols"),
        source_prefix_ranges: cidrs(v, "source_prefix_ranges"),
        direct_source_prefix_ranges: cidrs(v, "direct_source_prefix_ranges"),
        source_ports: json::items(v, "source_ports")
            .filter_map(|p| json::uint(p).and_then(|n| u32::try_from(n).ok()))
            .collect(),
        source_type: json::enum_field(
            v,
            "source_type",
            &["ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"],
        ),
        ..Default::default()
    }
}

fn cidrs(v: &Value, name: &str) -> Vec<CidrRange> {
    json::items(v, name)
        .map(|c| CidrRange {
            address_prefix: json::string(c, "address_prefix"),
            prefix_len: json::u32_wrapper(c, "prefix_len"),
        })
        .collect()
}

fn network_filter(v: &Value, path: &str, unparsed: &mut Vec<String>) -> Result<Filter, DumpError> {
    let config_type = if let Some(tc) = field(v, "typed_config") {
        Some(filter::ConfigType::TypedConfig(typed::any(
            tc, path, unparsed,
        )?))
    } else if field(v, "config_discovery").is_some() {
        Some(filter::ConfigType::ConfigDiscovery(Default::default()))
    } else {
        None
    };
    Ok(Filter {
        name: json::string(v, "name"),
        config_type,
    })
}
