//! Issue 11: the agent's xDS client against the simulated node's ADS
//! server (tonic, unix socket), serving Istio-shaped resources for the
//! services of a real Istio config dump (the `outbound|<port>||<host>`
//! clusters of tests/fixtures/istio/configdumps/...bookinfo-details-v1).
//! Versions and nonces, ACK and NACK with detail, stream reset and resume,
//! resource removal, two pods with different configs on one node,
//! sharing of identical resources, and the TLS transport (a test CA, the
//! server requiring a bearer token). No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use meshlane::pods::source::{MeshDecision, PodInfo, PodKey};
use meshlane::pods::PodSpec;
use meshlane::sim::unique_tag;
use meshlane::sim::xds::stream::Verdict;
use meshlane::sim::xds::{
    sidecar_snapshot, AdsEvent, AdsServer, EventKind, Protocol, Service, Snapshot, TlsServing,
};
use meshlane::sim::SidecarMode;
use meshlane::xds::client::{
    Address, ClientSettings, MeshSettings, Transport, XdsClient, XdsMetrics, BYPASS_ANNOTATION,
    FIRST_SYNCS_AT_ONCE,
};
use meshlane::xds::ProxyResources;
use prost::Name;

const DUMP: &str =
    include_str!("fixtures/istio/configdumps/istio-1.10.0_sidecar_bookinfo-details-v1.json");
const LIMIT: Duration = Duration::from_secs(10);

/// The services behind the dump's outbound clusters: HTTP for the
/// bookinfo and plain-HTTP ports, TCP for the rest; VIPs and endpoints
/// are made up (the dump has no EDS).
fn dump_services() -> Vec<Service> {
    let dump: serde_json::Value = serde_json::from_str(DUMP).expect("fixture parses");
    let configs = dump["configs"].as_array().expect("configs");
    let clusters = configs
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("ClustersConfigDump"))
        })
        .and_then(|c| c["dynamicActiveClusters"].as_array())
        .expect("dynamic clusters");
    let mut out = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let name = c["cluster"]["name"].as_str().unwrap_or_default();
        let mut parts = name.split('|');
        let (Some("outbound"), Some(port), Some(""), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let port: u16 = port.parse().expect("port");
        let protocol = if [80, 9080, 15014, 15021].contains(&port) {
            Protocol::Http
        } else {
            Protocol::Tcp
        };
        out.push(Service {
            host: host.into(),
            vip: IpAddr::from([10, 96, 0, i as u8 + 1]),
            port,
            protocol,
            endpoints: vec![SocketAddr::from(([10, 244, 1, i as u8 + 1], port))],
        });
    }
    assert!(
        out.len() >= 15,
        "the dump's outbound clusters: {}",
        out.len()
    );
    out
}

fn snapshot(version: &str, services: &[Service]) -> Snapshot {
    sidecar_snapshot(version, SidecarMode::Http, false, services)
}

fn pod(name: &str, ip: [u8; 4]) -> PodInfo {
    PodInfo {
        key: PodKey {
            namespace: "default".into(),
            name: name.into(),
        },
        uid: format!("uid-{name}"),
        ips: vec![IpAddr::from(ip)],
        labels: [("app".to_string(), name.to_string())].into(),
        service_account: format!("bookinfo-{name}"),
        annotations: BTreeMap::new(),
        workload: Default::default(),
        mesh: MeshDecision::Meshed {
            spec: PodSpec::istio(name),
        },
    }
}

fn node_id(p: &PodInfo) -> String {
    format!(
        "sidecar~{}~{}.default~default.svc.cluster.local",
        p.ips[0], p.key.name
    )
}

struct World {
    server: AdsServer,
    client: Arc<XdsClient>,
    metrics: XdsMetrics,
}

fn world(snap: Snapshot) -> World {
    let dir = std::env::temp_dir().join(unique_tag("meshlane-xdsc-"));
    let server = AdsServer::start(&dir, snap).expect("ADS server");
    let metrics = XdsMetrics::default();
    let settings = ClientSettings {
        transport: Transport {
            address: Address::Unix(server.socket().to_path_buf()),
            tls_root_ca: None,
            token: None,
        },
        mesh: MeshSettings {
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            istio_version: "1.10.0".into(),
        },
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        stale_grace: Duration::from_secs(30),
    };
    let client = XdsClient::new(settings, metrics.clone());
    World {
        server,
        client,
        metrics,
    }
}

/// Polls `cond` (without blocking the runtime) up to LIMIT.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn resources(w: &World, p: &PodInfo) -> Arc<ProxyResources> {
    w.client.pod(&p.key).expect("pod has a stream").resources
}

fn node_events(w: &World, node: &str) -> Vec<AdsEvent> {
    w.server
        .events()
        .into_iter()
        .filter(|e| e.node == node)
        .collect()
}

fn short(url: &str) -> &'static str {
    match url {
        u if u == Cluster::type_url() => "CDS",
        u if u == ClusterLoadAssignment::type_url() => "EDS",
        u if u == Listener::type_url() => "LDS",
        u if u == RouteConfiguration::type_url() => "RDS",
        _ => "?",
    }
}

fn subscribes(events: &[AdsEvent]) -> Vec<(&'static str, String, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Request(Verdict::Subscribe { version, names }) => {
                Some((short(&e.type_url), version.clone(), names.clone()))
            }
            _ => None,
        })
        .collect()
}

fn acked(w: &World, node: &str, version: &str) -> bool {
    [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
    .iter()
    .all(|t| w.server.acked(node, t, version))
}

#[tokio::test]
async fn syncs_in_envoys_order_acks_versions_and_follows_an_eds_change() {
    let mut services = dump_services();
    let w = world(snapshot("1", &services));
    let a = pod("details-v1", [10, 244, 0, 7]);
    w.client.reconcile(std::slice::from_ref(&a));
    until("first snapshot", || {
        w.client.synced() && w.client.pod(&a.key).is_some_and(|v| v.synced)
    })
    .await;
    let node = node_id(&a);
    until("ACK of version 1 for all four types", || {
        acked(&w, &node, "1")
    })
    .await;
    let subs = subscribes(&node_events(&w, &node));
    let order: Vec<&str> = subs.iter().map(|s| s.0).collect();
    assert_eq!(order, ["CDS", "EDS", "LDS", "RDS"], "Envoy's order");
    assert!(
        subs[0].2.is_empty() && subs[2].2.is_empty(),
        "CDS, LDS wildcard"
    );
    assert_eq!(subs[1].2.len(), services.len(), "EDS for every EDS cluster");
    assert!(subs[3].2.contains(&"9080".to_string()), "{:?}", subs[3].2);
    let r = resources(&w, &a);
    let details = "outbound|9080||details.default.svc.cluster.local";
    assert!(r.clusters.contains_key(details));
    assert_eq!(r.endpoints.len(), services.len());
    assert!(r.listeners.contains_key("0.0.0.0_9080"));
    assert!(r.routes.contains_key("9080"));
    assert!(r.has_eds);

    // One service's endpoint moves: version 2 is applied and ACKed.
    let d = services
        .iter_mut()
        .find(|s| s.cluster() == details)
        .unwrap();
    d.endpoints = vec!["10.244.9.9:9080".parse().unwrap()];
    let before = Arc::clone(&r.clusters[details]);
    w.server.update(snapshot("2", &services));
    until("ACK of version 2", || acked(&w, &node, "2")).await;
    let r = resources(&w, &a);
    let cla = &r.endpoints[details];
    let text = format!("{cla:?}");
    assert!(text.contains("10.244.9.9"), "{text}");
    assert!(
        Arc::ptr_eq(&before, &r.clusters[details]),
        "an unchanged cluster keeps its copy"
    );
    // The responses' nonces were the ones ACKed.
    let sent: Vec<String> = node_events(&w, &node)
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Sent { nonce, .. } => Some(nonce.clone()),
            _ => None,
        })
        .collect();
    for e in node_events(&w, &node) {
        if let EventKind::Request(Verdict::Ack { nonce, .. }) = e.kind {
            assert!(sent.contains(&nonce));
        }
    }
    assert!(
        w.metrics
            .acks
            .get_or_create(&meshlane::xds::client::metrics::TypeLabel {
                r#type: "EDS".into()
            })
            .get()
            >= 2
    );
    w.client.stop_all().await;
    assert_eq!(w.metrics.connected.get(), 0);
}

#[tokio::test]
async fn a_malformed_cluster_is_nacked_by_name_and_the_last_good_state_kept() {
    let services = dump_services();
    let w = world(snapshot("1", &services));
    let a = pod("details-v1", [10, 244, 0, 7]);
    w.client.reconcile(std::slice::from_ref(&a));
    let node = node_id(&a);
    until("ACK of version 1", || acked(&w, &node, "1")).await;
    let good = resources(&w, &a);

    let mut bad = snapshot("2", &services);
    let broken = Cluster {
        name: "outbound|9080||broken.default.svc.cluster.local".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    bad.add(broken.name.clone(), &broken);
    w.server.update(bad);
    let nacked = || {
        node_events(&w, &node).iter().find_map(|e| match &e.kind {
            EventKind::Request(Verdict::Nack {
                version, message, ..
            }) => Some((version.clone(), message.clone())),
            _ => None,
        })
    };
    until("NACK of version 2", || nacked().is_some()).await;
    let (kept, message) = nacked().unwrap();
    assert_eq!(kept, "1", "the NACK carries the version still held");
    assert!(
        message.contains("broken.default.svc.cluster.local"),
        "{message}"
    );
    assert!(message.contains("EDS"), "{message}");
    let r = resources(&w, &a);
    assert_eq!(r.clusters.len(), good.clusters.len());
    assert!(!r.clusters.contains_key(broken.name.as_str()));

    // Bytes that do not decode are NACKed too.
    let mut garbage = snapshot("3", &services);
    garbage.add_raw(
        "junk",
        Any {
            type_url: Cluster::type_url(),
            value: vec![0x0a, 0xff, 0xff, 0xff],
        },
    );
    w.server.update(garbage);
    until("NACK of version 3", || {
        node_events(&w, &node).iter().any(|e| matches!(&e.kind,
            EventKind::Request(Verdict::Nack { message, .. }) if message.contains("does not decode")))
    })
    .await;
    assert_eq!(resources(&w, &a).clusters.len(), good.clusters.len());
    let nacks = w
        .metrics
        .nacks
        .get_or_create(&meshlane::xds::client::metrics::TypeLabel {
            r#type: "CDS".into(),
        })
        .get();
    assert_eq!(nacks, 2);

    // A good version after the bad ones is taken.
    w.server.update(snapshot("4", &services));
    until("ACK of version 4", || acked(&w, &node, "4")).await;
    w.client.stop_all().await;
}

#[tokio::test]
async fn a_reset_stream_reconnects_and_resumes_with_versions_and_names() {
    let services = dump_services();
    let w = world(snapshot("1", &services));
    let a = pod("details-v1", [10, 244, 0, 7]);
    w.client.reconcile(std::slice::from_ref(&a));
    let node = node_id(&a);
    until("ACK of version 1", || acked(&w, &node, "1")).await;
    let held = resources(&w, &a);
    w.server.reset_streams();
    until("a second stream", || {
        subscribes(&node_events(&w, &node))
            .iter()
            .filter(|s| s.0 == "CDS")
            .count()
            >= 2
    })
    .await;
    let subs = subscribes(&node_events(&w, &node));
    let resumed: Vec<_> = subs[4..].to_vec();
    let order: Vec<&str> = resumed.iter().map(|s| s.0).collect();
    assert_eq!(
        order,
        ["CDS", "EDS", "LDS", "RDS"],
        "all four resumed at once"
    );
    assert!(
        resumed.iter().all(|s| s.1 == "1"),
        "held versions: {resumed:?}"
    );
    assert_eq!(resumed[1].2, subs[1].2, "EDS names held");
    assert_eq!(resumed[3].2, subs[3].2, "RDS names held");
    let still = resources(&w, &a);
    assert_eq!(
        still.clusters.len(),
        held.clusters.len(),
        "state kept across the reset"
    );
    until("connected again", || {
        w.client.pod(&a.key).is_some_and(|v| v.connected)
    })
    .await;
    assert!(w.metrics.reconnects.get() >= 1);
    w.client.stop_all().await;
}

#[tokio::test]
async fn removed_resources_go_and_their_endpoints_with_them() {
    let services = dump_services();
    let w = world(snapshot("1", &services));
    let a = pod("details-v1", [10, 244, 0, 7]);
    w.client.reconcile(std::slice::from_ref(&a));
    let node = node_id(&a);
    until("ACK of version 1", || acked(&w, &node, "1")).await;
    let dns = services
        .iter()
        .find(|s| s.host.starts_with("kube-dns") && s.port == 53)
        .expect("kube-dns in the dump")
        .clone();
    assert!(resources(&w, &a)
        .listeners
        .contains_key(dns.listener().as_str()));
    let fewer: Vec<Service> = services
        .iter()
        .filter(|s| s.cluster() != dns.cluster())
        .cloned()
        .collect();
    w.server.update(snapshot("2", &fewer));
    until("ACK of version 2", || acked(&w, &node, "2")).await;
    let r = resources(&w, &a);
    assert!(!r.clusters.contains_key(dns.cluster().as_str()));
    assert!(!r.endpoints.contains_key(dns.cluster().as_str()));
    assert!(!r.listeners.contains_key(dns.listener().as_str()));
    assert_eq!(r.endpoints.len(), fewer.len());
    w.client.stop_all().await;
}

#[tokio::test]
async fn two_pods_get_their_own_config_and_share_identical_resources() {
    let services = dump_services();
    let w = world(snapshot("1", &services));
    let a = pod("details-v1", [10, 244, 0, 7]);
    let b = pod("reviews-v1", [10, 244, 0, 8]);
    let mut opted_out = pod("ratings-v1", [10, 244, 0, 9]);
    opted_out
        .annotations
        .insert(BYPASS_ANNOTATION.into(), "false".into());
    // B's Sidecar scope sees only the bookinfo services.
    let scoped: Vec<Service> = services
        .iter()
        .filter(|s| s.host.ends_with(".default.svc.cluster.local"))
        .cloned()
        .collect();
    w.server.update_node(&node_id(&b), snapshot("1-b", &scoped));
    w.client
        .reconcile(&[a.clone(), b.clone(), opted_out.clone()]);
    until("both synced", || {
        w.client.synced() && w.client.pods().len() == 2
    })
    .await;
    until("ACKs", || {
        acked(&w, &node_id(&a), "1") && acked(&w, &node_id(&b), "1-b")
    })
    .await;
    assert!(
        w.client.pod(&opted_out.key).is_none(),
        "opted out: no stream"
    );
    assert_eq!(w.metrics.streams.get(), 2);
    let (ra, rb) = (resources(&w, &a), resources(&w, &b));
    let served = snapshot("1", &services);
    assert_eq!(ra.clusters.len(), served.names(&Cluster::type_url()).len());
    assert!(rb.clusters.len() < ra.clusters.len());
    let istiod = "outbound|15010||istiod.istio-system.svc.cluster.local";
    assert!(ra.clusters.contains_key(istiod) && !rb.clusters.contains_key(istiod));
    // Identical resources are one copy in memory.
    let details = "outbound|9080||details.default.svc.cluster.local";
    assert!(Arc::ptr_eq(&ra.clusters[details], &rb.clusters[details]));
    assert!(Arc::ptr_eq(&ra.endpoints[details], &rb.endpoints[details]));
    let cds = meshlane::xds::client::metrics::TypeLabel {
        r#type: "CDS".into(),
    };
    let held = w.metrics.held.get_or_create(&cds).get();
    let distinct = w.metrics.distinct.get_or_create(&cds).get();
    assert_eq!(held as usize, ra.clusters.len() + rb.clusters.len());
    assert_eq!(
        distinct as usize,
        ra.clusters.len(),
        "B's clusters are all shared with A's"
    );
    // The pod going away stops its stream; the other keeps going.
    w.client.reconcile(std::slice::from_ref(&a));
    assert!(w.client.pod(&b.key).is_none());
    until("B's gauges gone", || w.metrics.streams.get() == 1).await;
    assert!(w.client.pod(&a.key).is_some_and(|v| v.connected));
    w.client.stop_all().await;
    assert_eq!(w.metrics.held.get_or_create(&cds).get(), 0);
    assert_eq!(w.metrics.streams.get(), 0);
}

/// Identities starting together take their first snapshot a few at a
/// time: in the server's log, no node sends its first request while
/// FIRST_SYNCS_AT_ONCE others have theirs open (first request in, the
/// first response of the last of the four types not yet out).
#[tokio::test]
async fn identities_starting_together_take_their_first_snapshot_a_few_at_a_time() {
    let w = world(snapshot("1", &dump_services()));
    let pods: Vec<PodInfo> = (0..10u8)
        .map(|i| pod(&format!("app-{i}"), [10, 244, 1, 10 + i]))
        .collect();
    w.client.reconcile(&pods);
    until("all synced", || {
        w.client.synced() && w.client.pods().len() == pods.len()
    })
    .await;
    let events = w.server.events();
    // Per node: (its first request, the response completing its snapshot).
    let mut window: BTreeMap<&str, (usize, Option<usize>)> = BTreeMap::new();
    let mut types_sent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match &e.kind {
            EventKind::Request(_) => {
                window.entry(&e.node).or_insert((i, None));
            }
            EventKind::Sent { .. } => {
                let sent = types_sent.entry(&e.node).or_default();
                sent.insert(&e.type_url);
                if let Some(w) = window.get_mut(e.node.as_str()).filter(|_| sent.len() == 4) {
                    w.1.get_or_insert(i);
                }
            }
        }
    }
    assert_eq!(window.len(), pods.len(), "{window:?}");
    let most = window
        .values()
        .map(|(start, _)| {
            window
                .values()
                .filter(|(s, end)| s <= start && end.is_none_or(|e| e > *start))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        (1..=FIRST_SYNCS_AT_ONCE).contains(&most),
        "{most} first snapshots open at once (at most {FIRST_SYNCS_AT_ONCE}): {window:?}"
    );
    w.client.stop_all().await;
}

/// A CA and a server certificate for `localhost` signed by it (PEM).
fn test_pki() -> (String, TlsServing) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let serving = TlsServing {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        token: "projected-sa-token".into(),
    };
    (ca_cert.pem(), serving)
}

fn tls_client(addr: SocketAddr, ca: &std::path::Path, token: &std::path::Path) -> Arc<XdsClient> {
    let settings = ClientSettings {
        transport: Transport {
            address: Address::Tcp(format!("localhost:{}", addr.port())),
            tls_root_ca: Some(ca.to_path_buf()),
            token: Some(token.to_path_buf()),
        },
        mesh: MeshSettings {
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            istio_version: "1.10.0".into(),
        },
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        stale_grace: Duration::from_secs(30),
    };
    XdsClient::new(settings, XdsMetrics::default())
}

#[tokio::test]
async fn tls_with_the_mesh_ca_and_a_bearer_token_syncs_and_a_wrong_token_or_ca_does_not() {
    let services = dump_services();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, serving) = test_pki();
    let server = AdsServer::start_tls(
        &dir.path().join(unique_tag("ads-")),
        snapshot("1", &services),
        serving.clone(),
    )
    .expect("TLS ADS server");
    let addr = server.tcp_addr().expect("TLS address");
    let ca = dir.path().join("root-cert.pem");
    std::fs::write(&ca, &ca_pem).expect("CA file");
    let token = dir.path().join("token");
    std::fs::write(&token, "wrong-token\n").expect("token file");
    let a = pod("productpage", [10, 244, 1, 10]);

    // A wrong token: refused by the server, never synced.
    let client = tls_client(addr, &ca, &token);
    client.reconcile(std::slice::from_ref(&a));
    until("a refused stream", || {
        server.refused_tokens() >= 1 && client.pod(&a.key).is_some_and(|v| v.last_error.is_some())
    })
    .await;
    let view = client.pod(&a.key).expect("stream");
    assert!(!view.synced, "synced with a wrong token");
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("token")
            || view
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("nauthenticated"),
        "{:?}",
        view.last_error
    );
    // The kubelet rotates the token: the next stream reads the new one.
    std::fs::write(&token, format!("{}\n", serving.token)).expect("token file");
    until("synced over TLS", || client.synced()).await;
    let r = client.pod(&a.key).expect("stream").resources;
    assert!(r
        .clusters
        .contains_key("outbound|9080||details.default.svc.cluster.local"));
    assert!(server.acked(&node_id(&a), &Cluster::type_url(), "1"));
    client.stop_all().await;

    // Another CA: the server's certificate is not trusted, nothing flows.
    let (other_ca, _) = test_pki();
    let other = dir.path().join("other-root.pem");
    std::fs::write(&other, other_ca).expect("CA file");
    let refused_before = server.refused_tokens();
    let untrusting = tls_client(addr, &other, &token);
    untrusting.reconcile(std::slice::from_ref(&a));
    until("a TLS failure", || {
        untrusting
            .pod(&a.key)
            .is_some_and(|v| v.last_error.is_some())
    })
    .await;
    let view = untrusting.pod(&a.key).expect("stream");
    assert!(!view.connected && !view.synced, "{view:?}");
    assert!(view.last_error.is_some());
    assert_eq!(
        server.refused_tokens(),
        refused_before,
        "no request got through"
    );
    untrusting.stop_all().await;
}
