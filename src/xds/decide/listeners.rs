//! Listeners and their filter chains turned into candidates (outbound
//! destinations, and this proxy's own inbound ports as
//! `inbound:<port>`): for each destination key a chain (or virtual host)
//! can serve, what it
//! reaches and every listener-, filter- and route-level reason. Cluster
//! judgements are joined later (see `engine`), so an EDS change never
//! walks listeners again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, CidrRange};
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use prost::Message;

use super::cluster;
use super::filters::{self, Place};
use super::reason::{Loss, Reason, ReasonCode as R};
use super::route::{self, Targets};
use super::{BypassPolicy, DestKey};
use crate::xds::typeurl::{self as t};
use crate::xds::{dump, ProxyResources};

/// One way a destination key is served: a chain, or a virtual host of it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub listener: String,
    /// Chain matched only for sniffed HTTP (application_protocols set).
    pub http: bool,
    /// Envoy's precedence: 2 address listener, 1 prefix-range chain,
    /// 0 wildcard chain / Host-routed virtual host.
    pub rank: u8,
    pub targets: Targets,
    pub reasons: Vec<Reason>,
    pub losses: Vec<Loss>,
    pub hostnames: Vec<String>,
}

const TRAFFIC_INBOUND: i32 = 1;
/// Istio's inbound capture port, then the ports Envoy serves itself
/// (agent health 15021, Envoy stats 15090: never destinations).
const NOT_OUTBOUND_PORTS: [u16; 3] = [15006, 15021, 15090];

/// Every outbound candidate of this proxy, by destination key.
pub fn candidates(
    res: &ProxyResources,
    policy: &BypassPolicy,
) -> BTreeMap<DestKey, Vec<Candidate>> {
    let mut out: BTreeMap<DestKey, Vec<Candidate>> = BTreeMap::new();
    for held in res.listeners.values() {
        let l = &held.decode();
        let Some((ip, port)) = socket(l.address.as_ref()) else {
            continue;
        };
        if NOT_OUTBOUND_PORTS[1..].contains(&port) {
            continue;
        }
        let inbound = l.traffic_direction == TRAFFIC_INBOUND
            || port == NOT_OUTBOUND_PORTS[0]
            || l.name == "virtualInbound";
        // Inbound: ports with a TLS chain, and every port with chains of
        // its own (Envoy never falls back from a port's chains to the
        // wildcard ones, only to the default chain).
        let mut tls_ports = BTreeSet::new();
        let mut own_ports = BTreeSet::new();
        let mut default_tls = false;
        let mut default_plain = false;
        // Per port, the families (IPv4, IPv6) a plaintext chain takes
        // every flow of (no ALPN, SNI or source criteria).
        let mut catch_all: BTreeMap<u16, (bool, bool)> = BTreeMap::new();
        let original_dst = l.use_original_dst.is_some_and(|b| b.value);
        let mut listener_reasons = Vec::new();
        if let Some(p) = dump::first_unparsed(l.metadata.as_ref()) {
            listener_reasons.push(Reason::new(
                R::NotUnderstood,
                format!("listener {}: {p} not understood", l.name),
            ));
        }
        if l.filter_chain_matcher.is_some() {
            listener_reasons.push(Reason::new(
                R::NotUnderstood,
                format!("listener {} selects chains with a matcher", l.name),
            ));
        }
        let chains = l.filter_chains.iter().map(|c| (c, false));
        for (chain, is_default) in chains.chain(l.default_filter_chain.iter().map(|c| (c, true))) {
            let m = chain.filter_chain_match.clone().unwrap_or_default();
            let chain_port = m
                .destination_port
                .map_or(port, |p| u16::try_from(p.value).unwrap_or(0));
            if (original_dst || inbound) && chain_port == port && m.destination_port.is_some() {
                continue; // Istio's loop guard (traffic to 15001/15006 itself).
            }
            let inbound_port = m.destination_port.map_or(0, |_| chain_port);
            if inbound && !is_default && inbound_port != 0 {
                own_ports.insert(inbound_port);
            }
            let tls_chain = m.transport_protocol == "tls"
                || chain.transport_socket.as_ref().is_some_and(cluster::is_tls);
            if inbound && tls_chain {
                // Judged per port below: a TLS chain on a port keeps it on
                // the sidecar whatever its plaintext chains do.
                if is_default {
                    default_tls = true;
                } else {
                    tls_ports.insert(inbound_port);
                }
                continue;
            }
            if inbound && is_default {
                default_plain = true;
            } else if inbound && inbound_port != 0 {
                let (v4, v6) = plain_catch_all(&m);
                let c = catch_all.entry(inbound_port).or_default();
                *c = (c.0 || v4, c.1 || v6);
            }
            let mut base = Candidate {
                listener: l.name.clone(),
                http: !m.application_protocols.is_empty(),
                rank: 0,
                targets: Vec::new(),
                reasons: listener_reasons.clone(),
                losses: Vec::new(),
                hostnames: Vec::new(),
            };
            if !m.server_names.is_empty()
                || !m.source_prefix_ranges.is_empty()
                || !m.direct_source_prefix_ranges.is_empty()
                || !m.source_ports.is_empty()
                || m.source_type != 0
                || m.transport_protocol == "tls"
            {
                base.reasons.push(Reason::new(
                    R::ChainMatchNotKeyable,
                    format!(
                        "listener {}: chain {} matches on SNI, TLS or source",
                        l.name, chain.name
                    ),
                ));
            }
            if tls_chain {
                base.reasons.push(Reason::new(
                    R::DownstreamTls,
                    format!("listener {}: chain {} terminates TLS", l.name, chain.name),
                ));
            }
            let keys: Vec<(DestKey, u8)> = if inbound && is_default {
                // The default chain takes what no chain of a port (or no
                // wildcard chain) matches: it can serve every port.
                std::iter::once((DestKey::Inbound { port: 0 }, 0))
                    .chain(own_ports.iter().map(|p| (DestKey::Inbound { port: *p }, 1)))
                    .collect()
            } else if inbound {
                vec![(
                    DestKey::Inbound { port: inbound_port },
                    u8::from(inbound_port != 0),
                )]
            } else if !m.prefix_ranges.is_empty() {
                m.prefix_ranges
                    .iter()
                    .map(|c| cidr_key(c, chain_port, &mut base))
                    .collect()
            } else if !ip.is_unspecified() {
                vec![(
                    DestKey::Service {
                        address: ip,
                        port: chain_port,
                    },
                    2,
                )]
            } else if original_dst {
                vec![(DestKey::Passthrough, 0)]
            } else {
                Vec::new() // wildcard chain: keys come from the terminal filter
            };
            let wildcard = keys.is_empty();
            let Some((last, before)) = chain.filters.split_last() else {
                base.reasons.push(Reason::new(
                    R::NotUnderstood,
                    format!("listener {}: chain {} has no filters", l.name, chain.name),
                ));
                push_all(&mut out, keys, base);
                continue;
            };
            for f in before {
                let (cfg, ecds) = filter_config(f);
                let j = filters::judge(
                    &f.name,
                    cfg,
                    ecds,
                    Place::Network,
                    policy,
                    &res.extension_configs,
                );
                base.reasons.extend(j.reasons);
                base.losses.extend(j.losses);
            }
            let (cfg, ecds) = filter_config(last);
            let resolved = cfg.cloned().or_else(|| {
                ecds.then(|| {
                    res.extension_configs
                        .get(last.name.as_str())
                        .and_then(|c| c.typed_config.clone())
                })
                .flatten()
            });
            let ty = resolved
                .as_ref()
                .map(|a| t::type_name(a).to_string())
                .unwrap_or_default();
            match (ty.as_str(), resolved) {
                (t::TCP_PROXY, Some(a)) => {
                    tcp(
                        &TcpProxy::decode(a.value.as_slice()).unwrap_or_default(),
                        &l.name,
                        &mut base,
                    );
                    let keys = if wildcard {
                        vec![(DestKey::ListenerPort { port: chain_port }, 0)]
                    } else {
                        keys
                    };
                    push_all(&mut out, keys, base);
                }
                (t::HCM, Some(a)) => {
                    let hcm = HttpConnectionManager::decode(a.value.as_slice()).unwrap_or_default();
                    http(&hcm, res, policy, &l.name, chain_port, keys, base, &mut out);
                }
                _ => {
                    let j = filters::judge(
                        &last.name,
                        cfg,
                        ecds,
                        Place::Network,
                        policy,
                        &res.extension_configs,
                    );
                    base.reasons.extend(j.reasons);
                    base.reasons.push(Reason::new(R::NetworkFilterNotAllowed, format!("listener {}: chain ends in {} ({ty}), not a TCP proxy or HTTP connection manager", l.name, last.name)));
                    let keys = if wildcard {
                        vec![(DestKey::ListenerPort { port: chain_port }, 0)]
                    } else {
                        keys
                    };
                    push_all(&mut out, keys, base);
                }
            }
        }
        if !default_plain {
            for p in &own_ports {
                if catch_all.get(p) != Some(&(true, true)) {
                    inbound_partial_port(&mut out, &l.name, *p);
                }
            }
        }
        if default_tls {
            tls_ports.insert(0);
            tls_ports.extend(own_ports.iter().copied());
        }
        for p in tls_ports {
            inbound_tls_port(&mut out, &l.name, p);
        }
    }
    out
}

/// The families a plaintext inbound chain takes every flow of: none when
/// it also matches on ALPN, SNI or the source (the sidecar drops what
/// matches no chain), both without destination ranges, else those of its
/// zero-length (any address) ranges.
fn plain_catch_all(
    m: &envoy_types::pb::envoy::config::listener::v3::FilterChainMatch,
) -> (bool, bool) {
    if !m.application_protocols.is_empty()
        || !m.server_names.is_empty()
        || !m.source_prefix_ranges.is_empty()
        || !m.direct_source_prefix_ranges.is_empty()
        || !m.source_ports.is_empty()
        || m.source_type != 0
    {
        return (false, false);
    }
    if m.prefix_ranges.is_empty() {
        return (true, true);
    }
    let any = |c: &CidrRange| c.prefix_len.map_or(0, |l| l.value) == 0;
    let family = |v4: bool| {
        m.prefix_ranges.iter().any(|c| {
            any(c)
                && c.address_prefix
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_ipv4() == v4)
        })
    };
    (family(true), family(false))
}

/// An inbound port of `listener` some plaintext flows match no chain of
/// (the sidecar would drop them): its plaintext chains keep the sidecar.
fn inbound_partial_port(out: &mut BTreeMap<DestKey, Vec<Candidate>>, listener: &str, port: u16) {
    let key = DestKey::Inbound { port };
    let why = Reason::new(
        R::ChainMatchNotKeyable,
        format!("listener {listener}: no plaintext chain takes every flow to {key} (ALPN, SNI, source or address criteria): the sidecar drops what matches none"),
    );
    // A port with no plaintext chain at all is served by TLS chains only:
    // `inbound_tls_port` says so.
    for c in out.get_mut(&key).into_iter().flatten() {
        if c.listener == listener && c.rank == 1 {
            c.reasons.push(why.clone());
        }
    }
}

/// An inbound port one of `listener`'s chains serves over TLS: with
/// plaintext chains too (mTLS PERMISSIVE) each of them gets the reason,
/// else (STRICT) a candidate that says only TLS serves it. Either way the
/// port keeps the sidecar: its node's kernel sees addresses and ports, not
/// whether a flow is another sidecar's mTLS or a bypassed plaintext one.
fn inbound_tls_port(out: &mut BTreeMap<DestKey, Vec<Candidate>>, listener: &str, port: u16) {
    let key = DestKey::Inbound { port };
    let rank = u8::from(port != 0);
    let mine = |c: &Candidate| c.listener == listener && c.rank == rank;
    if out.get(&key).is_some_and(|cs| cs.iter().any(mine)) {
        let why = Reason::new(
            R::InboundMtlsPermissive,
            format!("listener {listener}: a TLS chain also serves {key} (mTLS PERMISSIVE): the kernel cannot tell a plaintext flow from an mTLS one"),
        );
        for c in out.get_mut(&key).into_iter().flatten() {
            if mine(&*c) {
                c.reasons.push(why.clone());
            }
        }
        return;
    }
    let why = Reason::new(
        R::InboundMtlsRequired,
        format!("listener {listener}: only TLS chains serve {key} (mTLS required)"),
    );
    out.entry(key).or_default().push(Candidate {
        listener: listener.to_string(),
        http: false,
        rank,
        targets: Vec::new(),
        reasons: vec![why],
        losses: Vec::new(),
        hostnames: Vec::new(),
    });
}

fn push_all(
    out: &mut BTreeMap<DestKey, Vec<Candidate>>,
    keys: Vec<(DestKey, u8)>,
    base: Candidate,
) {
    for (k, rank) in keys {
        let mut c = base.clone();
        c.rank = rank;
        out.entry(k).or_default().push(c);
    }
}

fn filter_config(
    f: &envoy_types::pb::envoy::config::listener::v3::Filter,
) -> (Option<&envoy_types::pb::google::protobuf::Any>, bool) {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => (Some(a), false),
        Some(filter::ConfigType::ConfigDiscovery(_)) => (None, true),
        None => (None, false),
    }
}

pub fn socket(a: Option<&Address>) -> Option<(IpAddr, u16)> {
    let Some(address::Address::SocketAddress(sa)) = a?.address.as_ref() else {
        return None;
    };
    let ip = sa.address.parse().ok()?;
    let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
        return None;
    };
    Some((ip, u16::try_from(p).ok()?))
}

fn cidr_key(c: &CidrRange, port: u16, base: &mut Candidate) -> (DestKey, u8) {
    let len = c.prefix_len.map_or(0, |l| l.value);
    match c.address_prefix.parse::<IpAddr>() {
        Ok(ip) if (ip.is_ipv4() && len == 32) || (ip.is_ipv6() && len == 128) => {
            (DestKey::Service { address: ip, port }, 1)
        }
        _ => {
            base.reasons.push(Reason::new(
                R::ChainMatchNotKeyable,
                format!(
                    "listener {}: chain matches the range {}/{len}",
                    base.listener, c.address_prefix
                ),
            ));
            (DestKey::ListenerPort { port }, 1)
        }
    }
}

fn tcp(p: &TcpProxy, listener: &str, c: &mut Candidate) {
    match &p.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => c.targets.push((name.clone(), 1)),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            for x in &w.clusters {
                if x.metadata_match.is_some() {
                    c.reasons.push(Reason::new(
                        R::TcpProxyFeature,
                        format!(
                            "listener {listener}: weighted cluster {} selects by metadata",
                            x.name
                        ),
                    ));
                }
                c.targets.push((x.name.clone(), x.weight));
            }
        }
        None => c.reasons.push(Reason::new(
            R::TcpProxyFeature,
            format!("listener {listener}: TCP proxy names no cluster"),
        )),
    }
    let istio_idle = p.idle_timeout.map_or(true, |d| {
        d.nanos == 0 && (d.seconds == 3600 || d.seconds == 0)
    });
    let mut feature = |what: &str| {
        c.reasons.push(Reason::new(
            R::TcpProxyFeature,
            format!("listener {listener}: TCP proxy {what}"),
        ))
    };
    if !istio_idle {
        feature("has a non-default idle timeout");
    }
    if p.max_connect_attempts.is_some_and(|n| n.value > 1) {
        feature("retries connects");
    }
    if !p.hash_policy.is_empty() {
        feature("hashes to endpoints");
    }
    if p.tunneling_config.is_some() {
        feature("tunnels over HTTP");
    }
    if p.metadata_match.is_some()
        || p.on_demand.is_some()
        || p.max_downstream_connection_duration.is_some()
    {
        feature("has metadata match, on-demand clusters or a connection duration limit");
    }
    if p.idle_timeout.is_some() {
        c.losses.push(Loss::IdleTimeout);
    }
    if !p.access_log.is_empty() {
        c.losses.push(Loss::AccessLogs);
    }
    c.losses.push(Loss::EnvoyStats);
}

#[allow(clippy::too_many_arguments)]
fn http(
    hcm: &HttpConnectionManager,
    res: &ProxyResources,
    policy: &BypassPolicy,
    listener: &str,
    port: u16,
    keys: Vec<(DestKey, u8)>,
    mut base: Candidate,
    out: &mut BTreeMap<DestKey, Vec<Candidate>>,
) {
    base.losses
        .extend([Loss::EnvoyStats, Loss::AccessLogs, Loss::AddedHeaders]);
    match hcm.http_filters.split_last() {
        Some((router, rest)) => {
            let router_ok = matches!(&router.config_type, Some(http_filter::ConfigType::TypedConfig(a)) if t::type_name(a) == t::ROUTER);
            if !router_ok {
                base.reasons.push(Reason::new(
                    R::HttpFilterNotAllowed,
                    format!(
                        "listener {listener}: last HTTP filter {} is not the router",
                        router.name
                    ),
                ));
            }
            for f in rest.iter().filter(|f| !f.disabled) {
                let (cfg, ecds) = match &f.config_type {
                    Some(http_filter::ConfigType::TypedConfig(a)) => (Some(a), false),
                    Some(http_filter::ConfigType::ConfigDiscovery(_)) => (None, true),
                    None => (None, false),
                };
                let j = filters::judge(
                    &f.name,
                    cfg,
                    ecds,
                    Place::Http,
                    policy,
                    &res.extension_configs,
                );
                base.reasons.extend(j.reasons);
                base.losses.extend(j.losses);
            }
        }
        None => base.reasons.push(Reason::new(
            R::HttpFilterNotAllowed,
            format!("listener {listener}: HTTP connection manager without filters"),
        )),
    }
    let rc: Option<RouteConfiguration> = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(r)) => match res.routes.get(r.route_config_name.as_str()) {
            Some(held) => Some(held.decode()),
            None => {
                base.reasons.push(Reason::new(
                    R::RouteMissing,
                    format!(
                        "listener {listener}: route {} is not known",
                        r.route_config_name
                    ),
                ));
                None
            }
        },
        Some(RouteSpecifier::RouteConfig(rc)) => Some(rc.clone()),
        _ => {
            base.reasons.push(Reason::new(
                R::RouteFeature,
                format!("listener {listener}: scoped or missing routes"),
            ));
            None
        }
    };
    let Some(rc) = rc else {
        let keys = if keys.is_empty() {
            vec![(DestKey::ListenerPort { port }, 0)]
        } else {
            keys
        };
        push_all(out, keys, base);
        return;
    };
    if !keys.is_empty() {
        // An address-keyed chain: the virtual hosts that name the address,
        // else every one (then Envoy picks by Host header).
        for (key, rank) in keys {
            let named: Vec<&VirtualHost> = match &key {
                DestKey::Service { address, .. } => rc
                    .virtual_hosts
                    .iter()
                    .filter(|v| vhost_ips(v, port).contains(address))
                    .collect(),
                DestKey::Inbound { .. } => Vec::new(),
                _ => {
                    push_all(out, vec![(key, rank)], base.clone());
                    continue;
                }
            };
            let chosen: Vec<&VirtualHost> = if named.is_empty() {
                rc.virtual_hosts.iter().collect()
            } else {
                named
            };
            let mut c = base.clone();
            c.rank = rank;
            if chosen.len() != 1 {
                c.reasons.push(Reason::new(
                    R::HostHeaderRouting,
                    format!(
                        "listener {listener}: {} virtual hosts, chosen by Host header",
                        chosen.len()
                    ),
                ));
            }
            for vh in chosen {
                add_vhost(&mut c, &rc, vh, policy);
            }
            out.entry(key).or_default().push(c);
        }
        return;
    }
    for vh in &rc.virtual_hosts {
        let ips = vhost_ips(vh, port);
        let names: Vec<String> = vh
            .domains
            .iter()
            .filter(|d| domain_ip(d, port).is_none())
            .cloned()
            .collect();
        let mut c = base.clone();
        add_vhost(&mut c, &rc, vh, policy);
        c.hostnames = names
            .iter()
            .filter(|d| !d.contains(':') && *d != "*")
            .cloned()
            .collect();
        if !ips.is_empty() {
            if !policy.bypass_host_routed_listeners {
                c.reasons.push(Reason::new(
                    R::HostHeaderRouting,
                    format!(
                        "listener {listener} routes by Host header (bypassHostRoutedListeners off)"
                    ),
                ));
            }
            push_all(
                out,
                ips.into_iter()
                    .map(|a| (DestKey::Service { address: a, port }, 0))
                    .collect(),
                c,
            );
        } else if vh.domains.iter().any(|d| d == "*") {
            push_all(out, vec![(DestKey::ListenerPort { port }, 0)], c);
        } else {
            c.reasons.push(Reason::new(
                R::HostHeaderRouting,
                format!(
                    "route {} vhost {}: no address among its domains; the kernel keys by address",
                    rc.name, vh.name
                ),
            ));
            let host = names.first().cloned().unwrap_or_else(|| vh.name.clone());
            push_all(out, vec![(DestKey::Hostname { host, port }, 0)], c);
        }
    }
}

fn add_vhost(c: &mut Candidate, rc: &RouteConfiguration, vh: &VirtualHost, policy: &BypassPolicy) {
    let j = route::judge(rc, vh, policy);
    c.targets.extend(j.targets);
    c.reasons.extend(j.reasons);
    c.losses.extend(j.losses);
}

fn vhost_ips(vh: &VirtualHost, port: u16) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = vh
        .domains
        .iter()
        .filter_map(|d| domain_ip(d, port))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The address in a domain `ip`, `ip:port` or `[v6]:port` (port must match).
fn domain_ip(d: &str, port: u16) -> Option<IpAddr> {
    if let Ok(ip) = d.parse() {
        return Some(ip);
    }
    if let Ok(sa) = d.parse::<std::net::SocketAddr>() {
        return (sa.port() == port).then_some(sa.ip());
    }
    let (host, p) = d.rsplit_once(':')?;
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    (p.parse::<u16>().ok()? == port).then_some(ip)
}
