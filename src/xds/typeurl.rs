//! The typed-config type URLs meshlane recognises in Istio sidecar config,
//! and `TypedStruct`, the untyped wrapper (`udpa.type.v1` / `xds.type.v3`)
//! Istio uses for extensions Envoy's API does not define.

use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

const PREFIX: &str = "type.googleapis.com/";

pub const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
pub const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const CORS: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const GRPC_STATS: &str = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
pub const HTTP_WASM: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
pub const NETWORK_WASM: &str = "envoy.extensions.filters.network.wasm.v3.Wasm";
/// Istio's native stats filter (istio/proxy), HTTP and TCP.
pub const ISTIO_STATS: &str = "stats.PluginConfig";
/// Istio's TCP metadata exchange (only acts on ALPN `istio-peer-exchange`).
pub const METADATA_EXCHANGE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";
/// Istio's HTTP metadata exchange (native, newer proxies).
pub const HTTP_METADATA_EXCHANGE: &str = "io.istio.http.peer_metadata.Config";
/// Istio's upstream ALPN override (only acts on TLS upstreams).
pub const ISTIO_ALPN: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";
pub const TYPED_STRUCT_UDPA: &str = "udpa.type.v1.TypedStruct";
pub const TYPED_STRUCT_XDS: &str = "xds.type.v3.TypedStruct";
pub const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
pub const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The fully qualified type name of an Any (the URL without its host).
pub fn type_name(any: &Any) -> &str {
    any.type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, n)| n)
}

/// A type URL for a type name.
pub fn url(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (same wire form).
#[derive(Clone, PartialEq, Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// The effective type name and, for a TypedStruct, its value.
pub fn unwrap_typed_struct(any: &Any) -> (String, Option<Struct>) {
    let name = type_name(any);
    if name == TYPED_STRUCT_UDPA || name == TYPED_STRUCT_XDS {
        if let Ok(ts) = TypedStruct::decode(any.value.as_slice()) {
            let inner = ts
                .type_url
                .rsplit_once('/')
                .map_or(ts.type_url.as_str(), |(_, n)| n)
                .to_string();
            return (inner, ts.value);
        }
    }
    (name.to_string(), None)
}
