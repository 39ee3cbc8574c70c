//! Why a destination keeps its sidecar, or what a bypass relied on: typed
//! reasons with stable snake_case codes (metrics labels, `--json`) and a
//! human sentence naming the resource at fault.

use std::sync::Arc;

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

/// One reason, with the sentence that names what was found. The sentence
/// is shared: a cluster's reasons are copied into every destination that
/// reaches it as pointers, not as new strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub text: Arc<str>,
}

impl Reason {
    pub fn new(code: ReasonCode, text: impl Into<Arc<str>>) -> Self {
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

impl Loss {
    /// Every loss, in declaration (and so sort) order.
    pub const ALL: [Loss; 7] = [
        Loss::EnvoyStats,
        Loss::AccessLogs,
        Loss::TraceSpans,
        Loss::AddedHeaders,
        Loss::DefaultRetries,
        Loss::ConnectTimeout,
        Loss::IdleTimeout,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Loss`]es in one byte (held per destination, candidate and
/// cluster: a list would be an allocation each). Iterates and serialises
/// in sort order, as the sorted list it stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Losses(u8);

impl Losses {
    pub fn push(&mut self, l: Loss) {
        self.0 |= l.bit();
    }

    pub fn contains(&self, l: &Loss) -> bool {
        self.0 & l.bit() != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn iter(&self) -> impl Iterator<Item = Loss> {
        let bits = self.0;
        Loss::ALL.into_iter().filter(move |l| bits & l.bit() != 0)
    }
}

impl Extend<Loss> for Losses {
    fn extend<I: IntoIterator<Item = Loss>>(&mut self, iter: I) {
        iter.into_iter().for_each(|l| self.push(l));
    }
}

impl FromIterator<Loss> for Losses {
    fn from_iter<I: IntoIterator<Item = Loss>>(iter: I) -> Self {
        let mut s = Self::default();
        s.extend(iter);
        s
    }
}

impl IntoIterator for Losses {
    type Item = Loss;
    type IntoIter = std::vec::IntoIter<Loss>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter().collect::<Vec<_>>().into_iter()
    }
}

impl Serialize for Losses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Losses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Loss>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_hold_each_loss_once_in_sort_order() {
        for (i, l) in Loss::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "ALL is in declaration order");
        }
        let mut sorted = Loss::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, Loss::ALL);
        let mut s: Losses = [Loss::IdleTimeout, Loss::EnvoyStats].into_iter().collect();
        s.push(Loss::EnvoyStats);
        assert!(s.contains(&Loss::IdleTimeout) && !s.contains(&Loss::TraceSpans));
        assert_eq!(s.len(), 2);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["envoy_stats","idle_timeout"]"#);
        let back: Losses = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(Losses::default().is_empty());
    }
}
