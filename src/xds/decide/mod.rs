//! The bypass decision engine (pure, no I/O): from one proxy's resources
//! and a [`BypassPolicy`], every outbound destination of that proxy (each
//! service VIP:port, each hostname-only virtual host, each wildcard
//! listener port's remainder, the passthrough) is BYPASS or SIDECAR, with
//! every reason and the endpoints a bypass may pick.
//!
//! Inbound decisions (`inbound:<port>`, from the proxy's own inbound
//! chains for each port) are PASSTHROUGH or SIDECAR: PASSTHROUGH only when
//! every chain that can match the port is plaintext (no TLS transport
//! socket, no `transport_protocol: tls` match: the destination's kernel
//! sees addresses and ports only, so it cannot tell a bypassed plaintext
//! flow from another sidecar's mTLS flow), ends in a TCP proxy or an HTTP
//! connection manager with only inert filters and one catch-all route,
//! and reaches an original-destination cluster (the pod itself), under
//! the `inboundPassthrough` policy (default off).
//!
//! - [`listeners`]: listeners and filter chains -> candidates per
//!   destination key (cluster-independent).
//! - [`route`], [`filters`], [`cluster`]: the rules for a virtual host, a
//!   filter, a cluster and its endpoints.
//! - [`engine`]: [`Engine`], which merges candidates per key (sniffed
//!   HTTP + TCP chains decided together) and re-decides only the keys that
//!   use a changed cluster on an EDS update.
//! - [`reason`]: typed reasons and what a bypass loses.
//!
//! The kernel consumes [`Decisions::service_map`]: (VIP or IP, port) ->
//! weighted endpoint set, BYPASS destinations only.

pub mod cluster;
pub mod engine;
pub mod filters;
pub mod listeners;
pub mod reason;
pub mod route;
pub mod update;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cluster::Endpoint;
pub use engine::Engine;
pub use reason::{Loss, Reason, ReasonCode};
pub use update::Recompute;

use super::ProxyResources;

/// The named policies real Istio configs force on the engine; each field
/// documents its default and why (docs/bypass.md says more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BypassPolicy {
    /// Istio's default route retry policy (2 retries on connect failure,
    /// refused stream, 503) counts as no retries. Default true: it is on
    /// every route without a VirtualService; a bypassed connect failure
    /// reaches the app instead of being retried.
    pub ignore_istio_default_retries: bool,
    /// Route timeouts of `0s` (Istio: disabled) count as unset. Default
    /// true: 0s means no timeout, which is what a direct connection has.
    pub zero_timeouts_are_unset: bool,
    /// Telemetry filters (Istio stats, metadata exchange, gRPC stats,
    /// judged by type and Wasm code, never by name) are inert. Default
    /// true: they only count; the kernel exports TCP metrics instead.
    pub telemetry_filters_inert: bool,
    /// A fault filter with no delay/abort configured is inert (per-route
    /// fault config still keeps the sidecar). Default true.
    pub empty_fault_filter_inert: bool,
    /// The CORS filter is inert when no route or virtual host has a CORS
    /// policy. Default true.
    pub cors_filter_inert: bool,
    /// A cluster that may use auto-mTLS and whose endpoints are unknown
    /// (no EDS in the dump or stream), or that has no endpoints, is
    /// assumed mTLS. Default true (safe); false judges config only (for
    /// offline coverage estimates: such a BYPASS has no endpoints).
    pub assume_mtls_without_endpoints: bool,
    /// Sniffed ports (HTTP and TCP chains on one IP:port) may be bypassed
    /// when every chain reaches the same cluster. Default true.
    pub bypass_sniffed_ports: bool,
    /// On a sniffed port, a TCP chain to the passthrough (which dials the
    /// VIP the app dialled: the same service) does not differ from the
    /// HTTP route to that service. Default true.
    pub sniffed_passthrough_fallback: bool,
    /// On 0.0.0.0:PORT HTTP listeners, the VIP the app dialled stands for
    /// the virtual host that lists it (Envoy routes by Host header; an app
    /// sending another service's Host would differ). Default true.
    pub bypass_host_routed_listeners: bool,
    /// LEAST_REQUEST clusters are balanced as weighted random per
    /// connection by the kernel. Default true (Istio's default LB).
    pub least_request_as_weighted_random: bool,
    /// The ALLOW_ANY passthrough (only as the complement of every other
    /// listener and virtual host on its port) may be bypassed. Default
    /// false: unknown destinations keep the sidecar.
    pub bypass_passthrough: bool,
    /// A flow arriving at this proxy's pod on a port whose inbound config
    /// is plain pass-through (no TLS chain, only inert filters, to the pod
    /// itself) may reach the app without this sidecar (PASSTHROUGH).
    /// Default false: the sidecar keeps every inbound flow, and loses
    /// nothing (its inbound telemetry and access logs stay).
    pub inbound_passthrough: bool,
}

impl Default for BypassPolicy {
    fn default() -> Self {
        Self {
            ignore_istio_default_retries: true,
            zero_timeouts_are_unset: true,
            telemetry_filters_inert: true,
            empty_fault_filter_inert: true,
            cors_filter_inert: true,
            assume_mtls_without_endpoints: true,
            bypass_sniffed_ports: true,
            sniffed_passthrough_fallback: true,
            bypass_host_routed_listeners: true,
            least_request_as_weighted_random: true,
            bypass_passthrough: false,
            inbound_passthrough: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Outbound: the kernel may connect straight to an endpoint.
    Bypass,
    Sidecar,
    /// Inbound (`inbound:<port>` only): a flow to this pod's port may
    /// reach the app without this sidecar.
    Passthrough,
}

impl Verdict {
    /// As `explain` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Bypass => "BYPASS",
            Verdict::Sidecar => "SIDECAR",
            Verdict::Passthrough => "PASSTHROUGH",
        }
    }
}

/// What a destination is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DestKey {
    /// A service VIP (or pod IP) and port: what the kernel keys by.
    Service { address: IpAddr, port: u16 },
    /// A virtual host with no address among its domains (reporting only).
    Hostname { host: String, port: u16 },
    /// What a 0.0.0.0:PORT listener does with destinations nothing else on
    /// that port matches.
    ListenerPort { port: u16 },
    /// Destinations no listener knows (the virtual outbound catch-all).
    Passthrough,
    /// This proxy's own inbound side for a port (0: every port without a
    /// chain of its own), as a plaintext flow that skipped the source's
    /// sidecar would meet it: pass-through or not.
    Inbound { port: u16 },
}

impl std::fmt::Display for DestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestKey::Service { address, port } => write!(f, "{}", SocketAddr::new(*address, *port)),
            DestKey::Hostname { host, port } => write!(f, "{host}:{port}"),
            DestKey::ListenerPort { port } => write!(f, "*:{port}"),
            DestKey::Passthrough => write!(f, "passthrough"),
            DestKey::Inbound { port: 0 } => write!(f, "inbound:*"),
            DestKey::Inbound { port } => write!(f, "inbound:{port}"),
        }
    }
}

/// The decision for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub destination: DestKey,
    pub decision: Verdict,
    /// Listeners whose chains reach this destination.
    pub listeners: Vec<String>,
    pub hostnames: Vec<String>,
    /// Clusters and their route weights.
    pub clusters: Vec<(String, u32)>,
    /// Blocking reasons (SIDECAR) and the policies a BYPASS relied on.
    pub reasons: Vec<Reason>,
    /// What a bypass of this destination loses.
    pub losses: Vec<Loss>,
    /// Endpoints a bypass may pick (BYPASS only), sorted; shared with the
    /// cluster's judgement when the destination reaches one cluster.
    pub endpoints: Arc<[Endpoint]>,
}

/// Every destination of one proxy, ordered by destination. Destinations
/// are shared (`Arc`) between successive decisions and between pods whose
/// decisions are the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    pub destinations: Vec<Arc<Destination>>,
}

impl Decisions {
    /// What the kernel's service map holds for this proxy: (address, port)
    /// of every BYPASS service destination -> its endpoints.
    pub fn service_map(&self) -> BTreeMap<SocketAddr, &[Endpoint]> {
        self.destinations
            .iter()
            .filter(|d| d.decision == Verdict::Bypass)
            .filter_map(|d| match d.destination {
                DestKey::Service { address, port } => {
                    Some((SocketAddr::new(address, port), &d.endpoints[..]))
                }
                _ => None,
            })
            .collect()
    }

    /// The inbound ports (never the `inbound:*` remainder) decided
    /// PASSTHROUGH: what the kernel's `ml_inbound_pass` holds for this
    /// proxy's pod.
    pub fn inbound_passthrough_ports(&self) -> Vec<u16> {
        self.destinations
            .iter()
            .filter(|d| d.decision == Verdict::Passthrough)
            .filter_map(|d| match d.destination {
                DestKey::Inbound { port } if port != 0 => Some(port),
                _ => None,
            })
            .collect()
    }

    /// Counts by decision and by blocking reason code.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for d in &self.destinations {
            s.add(d);
        }
        s
    }
}

/// The distinct blocking reason codes of a destination.
fn blocking_codes(d: &Destination) -> Vec<ReasonCode> {
    let mut codes: Vec<ReasonCode> = d
        .reasons
        .iter()
        .map(|r| r.code)
        .filter(|c| c.blocks())
        .collect();
    codes.sort();
    codes.dedup();
    codes
}

/// `explain --summary`: counts and the share that can be bypassed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total: usize,
    pub bypass: usize,
    pub sidecar: usize,
    /// Inbound ports a flow may reach without this sidecar.
    #[serde(default)]
    pub passthrough: usize,
    pub bypass_share: f64,
    /// Destinations kept on the sidecar per reason (one destination counts
    /// once per distinct reason code).
    pub sidecar_reasons: BTreeMap<String, usize>,
}

impl Summary {
    /// Counts one more destination.
    pub fn add(&mut self, d: &Destination) {
        match d.decision {
            Verdict::Bypass => self.bypass += 1,
            Verdict::Sidecar => self.sidecar += 1,
            Verdict::Passthrough => self.passthrough += 1,
        }
        for c in blocking_codes(d) {
            *self.sidecar_reasons.entry(c.name()).or_default() += 1;
        }
        self.totals();
    }

    /// Stops counting a destination counted before.
    pub fn remove(&mut self, d: &Destination) {
        match d.decision {
            Verdict::Bypass => self.bypass = self.bypass.saturating_sub(1),
            Verdict::Sidecar => self.sidecar = self.sidecar.saturating_sub(1),
            Verdict::Passthrough => self.passthrough = self.passthrough.saturating_sub(1),
        }
        for c in blocking_codes(d) {
            if let Some(n) = self.sidecar_reasons.get_mut(&c.name()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.sidecar_reasons.remove(&c.name());
                }
            }
        }
        self.totals();
    }

    fn totals(&mut self) {
        self.total = self.bypass + self.sidecar + self.passthrough;
        self.bypass_share = if self.total == 0 {
            0.0
        } else {
            self.bypass as f64 / self.total as f64
        };
    }
}

/// Decides every destination of one proxy (see [`Engine`] for updates).
pub fn decide(res: &ProxyResources, policy: &BypassPolicy) -> Decisions {
    Engine::new(res, policy.clone()).decisions()
}

#[cfg(test)]
mod inbound_tests;
#[cfg(test)]
mod tests;
