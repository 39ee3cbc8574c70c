//! Why a destination keeps its sidecar, or what a bypass relied on: typed
//! reasons with stable snake_case codes (metrics labels, `--json`) and a
//! human sentence naming the resource at fault.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    // Filters.
    HttpFilterNotAllowed,
    NetworkFilterNotAllowed,
    UnknownFilterType,
    EcdsUnresolved,
    // Routes.
    RouteMissing,
    NotCatchAllRoute,
    RouteNotForwarding,
    DynamicClusterChoice,
    RetryPolicy,
    RouteTimeout,
    Mirroring,
    Rewrite,
    HeaderMutation,
    HashPolicy,
    CorsPolicy,
    PerRouteFilterConfig,
    RouteFeature,
    // Listeners.
    DownstreamTls,
    ChainMatchNotKeyable,
    SniffedChainsDiffer,
    SniffedPortsPolicy,
    HostHeaderRouting,
    PassthroughPolicy,
    RegistryOnlyBlackhole,
    TcpProxyFeature,
    /// Inbound: only TLS chains serve the port (mTLS STRICT).
    InboundMtlsRequired,
    /// Inbound: a TLS chain also serves the port (mTLS PERMISSIVE): the
    /// kernel cannot tell a bypassed plaintext flow from an mTLS one.
    InboundMtlsPermissive,
    /// Inbound: the chain delivers to a cluster other than the original
    /// destination (the address the flow arrived at: the pod itself).
    InboundClusterNotOriginalDst,
    /// Inbound: plain pass-through, but `inboundPassthrough` is off.
    InboundPassthroughPolicy,
    // Clusters and endpoints.
    ClusterMissing,
    ClusterType,
    DnsCluster,
    MtlsEndpoint,
    TlsTransportSocket,
    EndpointsUnknownAssumeMtls,
    NoEndpoints,
    OutlierDetection,
    ConnectionPoolLimits,
    HealthChecks,
    LbPolicy,
    LbSubsets,
    LocalityWeightedLb,
    UpstreamFilter,
    UpstreamProtocolForced,
    // Input the engine could not read.
    NotUnderstood,
    // Notes on a bypass (never block): a named policy applied.
    IstioDefaultRetryIgnored,
    ZeroTimeoutIgnored,
    InertFilter,
    LeastRequestAsWeightedRandom,
    SniffedPassthroughFallback,
}

impl ReasonCode {
    /// True when this reason keeps the sidecar.
    pub fn blocks(self) -> bool {
        !matches!(
            self,
            ReasonCode::IstioDefaultRetryIgnored
                | ReasonCode::ZeroTimeoutIgnored
                | ReasonCode::InertFilter
                | ReasonCode::LeastRequestAsWeightedRandom
                | ReasonCode::SniffedPassthroughFallback
        )
    }

    /// The stable snake_case name.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One reason, with the sentence that names what was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub text: String,
}

impl Reason {
    pub fn new(code: ReasonCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }
}

/// What a bypassed flow no longer gets from its sidecar (told to the
/// operator by `explain` and the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Envoy's own and Istio's L7 stats (the kernel exports TCP metrics).
    EnvoyStats,
    AccessLogs,
    TraceSpans,
    /// Headers Envoy adds (x-request-id, x-forwarded-*, peer metadata).
    AddedHeaders,
    /// Istio's default retry on connect failure / 503.
    DefaultRetries,
    /// Envoy's connect timeout (the kernel's SYN retries apply).
    ConnectTimeout,
    /// The TCP proxy's idle timeout.
    IdleTimeout,
}
