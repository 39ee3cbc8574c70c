use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::*;
use crate::xds::decide::{DestKey, Destination, Verdict};

/// The kernel maps in memory, with a capacity to inject map-full.
#[derive(Default)]
struct Mem {
    sets: HashMap<u32, Vec<BypassEndpoint>>,
    services: HashMap<ServiceKey, u32>,
    service_capacity: Option<usize>,
    writes: usize,
}

impl KernelMaps for Mem {
    fn put_set(&mut self, id: u32, e: &[BypassEndpoint]) -> Result<(), String> {
        self.writes += 1;
        self.sets.insert(id, e.to_vec());
        Ok(())
    }
    fn delete_set(&mut self, id: u32) -> Result<(), String> {
        self.writes += 1;
        self.sets.remove(&id);
        Ok(())
    }
    fn put_service(&mut self, k: ServiceKey, id: u32) -> Result<(), String> {
        self.writes += 1;
        let full = self
            .service_capacity
            .is_some_and(|c| self.services.len() >= c && !self.services.contains_key(&k));
        if full {
            return Err("map full".into());
        }
        self.services.insert(k, id);
        Ok(())
    }
    fn delete_service(&mut self, k: ServiceKey) -> Result<(), String> {
        self.writes += 1;
        self.services.remove(&k);
        Ok(())
    }
}

impl Mem {
    /// What the connect hook would find for `k`.
    fn lookup(&self, k: &ServiceKey) -> Option<&Vec<BypassEndpoint>> {
        self.sets.get(self.services.get(k)?)
    }
}

fn ep(addr: &str, weight: u64, priority: u32) -> Endpoint {
    let a: SocketAddr = addr.parse().unwrap();
    Endpoint {
        address: a.ip(),
        port: a.port(),
        weight,
        priority,
        locality: None,
        cluster: "outbound|80||svc.default.svc.cluster.local".into(),
    }
}

fn dest(vip: &str, verdict: Verdict, endpoints: Vec<Endpoint>) -> Arc<Destination> {
    let a: SocketAddr = vip.parse().unwrap();
    Arc::new(Destination {
        destination: DestKey::Service {
            address: a.ip(),
            port: a.port(),
        },
        decision: verdict,
        listeners: vec![],
        hostnames: vec![],
        clusters: vec![],
        reasons: vec![],
        losses: Default::default(),
        endpoints: endpoints.into(),
    })
}

fn key(netns: u64, vip: &str) -> ServiceKey {
    ServiceKey {
        netns,
        dest: vip.parse().unwrap(),
    }
}

fn wanted(pods: &[(u64, &Decisions)]) -> BTreeMap<ServiceKey, Vec<BypassEndpoint>> {
    pods.iter()
        .flat_map(|(n, d)| wanted_for_pod(*n, d).services)
        .collect()
}

#[test]
fn only_bypass_services_of_the_lowest_priority_and_the_vip_family() {
    let d = Decisions {
        destinations: vec![
            dest(
                "10.96.0.1:80",
                Verdict::Bypass,
                vec![
                    ep("10.1.0.1:80", 2, 1),
                    ep("10.1.0.2:80", 4, 0),
                    ep("10.1.0.3:80", 6, 0),
                    ep("[fd00::1]:80", 1, 0),
                ],
            ),
            dest(
                "10.96.0.2:80",
                Verdict::Sidecar,
                vec![ep("10.1.0.9:80", 1, 0)],
            ),
            dest(
                "10.96.0.3:80",
                Verdict::Bypass,
                vec![ep("10.1.0.9:80", 0, 0)],
            ),
        ],
    };
    let e = wanted_for_pod(7, &d);
    let set = &e.services[&key(7, "10.96.0.1:80")];
    let got: Vec<(String, u32)> = set.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
    // Priority 1 dropped, the IPv6 endpoint dropped, weights 4:6 -> 2:3.
    assert_eq!(got, [("10.1.0.2:80".into(), 2), ("10.1.0.3:80".into(), 3)]);
    assert_eq!(e.services.len(), 1);
    assert_eq!(e.skipped, [(key(7, "10.96.0.3:80"), Skip::NoEndpoints)]);
}

#[test]
fn the_same_address_twice_merges_and_huge_weights_keep_their_ratio() {
    let set = endpoint_set(
        "10.96.0.1:80".parse().unwrap(),
        [
            ep("10.1.0.1:80", 3 << 40, 0),
            ep("10.1.0.2:80", (1 << 40) + 1, 0),
            ep("10.1.0.1:80", 1 << 40, 0),
        ],
    )
    .unwrap();
    assert_eq!(set.len(), 2);
    let ratio = f64::from(set[0].weight) / f64::from(set[1].weight);
    assert!((ratio - 4.0).abs() < 1e-3, "{set:?}");
    let total: u64 = set.iter().map(|e| u64::from(e.weight)).sum();
    assert!(total <= u64::from(u32::MAX), "{set:?}");
    let many: Vec<Endpoint> = (0..=BYPASS_MAX_ENDPOINTS)
        .map(|i| ep(&format!("10.1.{}.{}:80", i / 200, i % 200 + 1), 1, 0))
        .collect();
    assert_eq!(
        endpoint_set("10.96.0.1:80".parse().unwrap(), many),
        Err(Skip::TooManyEndpoints)
    );
}

#[test]
fn apply_writes_only_differences_and_shares_sets() {
    let d = Decisions {
        destinations: vec![
            dest(
                "10.96.0.1:80",
                Verdict::Bypass,
                vec![ep("10.1.0.1:80", 1, 0)],
            ),
            dest(
                "10.96.0.2:80",
                Verdict::Bypass,
                vec![ep("10.1.0.2:80", 1, 0)],
            ),
        ],
    };
    let mut t = Table::new();
    let mut k = Mem::default();
    let r = t.apply(&wanted(&[(1, &d), (2, &d)]), &mut k);
    assert_eq!(
        (r.added, r.changed, r.removed, r.failed.len()),
        (4, 0, 0, 0)
    );
    // Two pods, two destinations, but only two distinct sets.
    assert_eq!(k.sets.len(), 2);
    assert_eq!(t.len(), (4, 2));

    // The same again writes nothing.
    let before = k.writes;
    let r = t.apply(&wanted(&[(1, &d), (2, &d)]), &mut k);
    assert_eq!((r.added, r.changed, r.removed), (0, 0, 0));
    assert_eq!(k.writes, before);

    // Pod 1 sees an endpoint change; pod 2 is gone.
    let d2 = Decisions {
        destinations: vec![
            dest(
                "10.96.0.1:80",
                Verdict::Bypass,
                vec![ep("10.1.0.3:80", 1, 0)],
            ),
            dest(
                "10.96.0.2:80",
                Verdict::Bypass,
                vec![ep("10.1.0.2:80", 1, 0)],
            ),
        ],
    };
    let r = t.apply(&wanted(&[(1, &d2)]), &mut k);
    assert_eq!((r.added, r.changed, r.removed), (0, 1, 2));
    assert_eq!(k.services.len(), 2);
    assert_eq!(
        k.lookup(&key(1, "10.96.0.1:80")).unwrap()[0].addr,
        "10.1.0.3:80".parse::<SocketAddr>().unwrap()
    );
    // The old set (10.1.0.1) is nobody's any more: deleted.
    assert_eq!(k.sets.len(), 2);
    assert!(k
        .sets
        .values()
        .all(|s| s[0].addr.ip() != IpAddr::from([10, 1, 0, 1])));
    assert!(k.lookup(&key(2, "10.96.0.1:80")).is_none());
}

/// Every write but put_service goes through; put_service fails.
struct FailService<'a>(&'a mut Mem);

impl KernelMaps for FailService<'_> {
    fn put_set(&mut self, id: u32, e: &[BypassEndpoint]) -> Result<(), String> {
        self.0.put_set(id, e)
    }
    fn delete_set(&mut self, id: u32) -> Result<(), String> {
        self.0.delete_set(id)
    }
    fn put_service(&mut self, _: ServiceKey, _: u32) -> Result<(), String> {
        Err("injected".into())
    }
    fn delete_service(&mut self, k: ServiceKey) -> Result<(), String> {
        self.0.delete_service(k)
    }
}

#[test]
fn a_failed_write_leaves_the_sidecar_never_an_older_set() {
    let d = Decisions {
        destinations: vec![dest(
            "10.96.0.1:80",
            Verdict::Bypass,
            vec![ep("10.1.0.1:80", 1, 0)],
        )],
    };
    let mut t = Table::new();
    let mut k = Mem {
        service_capacity: Some(1),
        ..Default::default()
    };
    t.apply(&wanted(&[(1, &d)]), &mut k);
    // A second pod does not fit: it keeps the sidecar, reported.
    let r = t.apply(&wanted(&[(1, &d), (2, &d)]), &mut k);
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].0, key(2, "10.96.0.1:80"));
    assert!(k.lookup(&key(2, "10.96.0.1:80")).is_none());
    assert!(t.endpoints(&key(2, "10.96.0.1:80")).is_none());

    // A changed set whose service write fails: the entry goes, the old
    // endpoints are never chosen again, no set is left behind.
    let d2 = Decisions {
        destinations: vec![dest(
            "10.96.0.1:80",
            Verdict::Bypass,
            vec![ep("10.1.0.2:80", 1, 0)],
        )],
    };
    let r = t.apply(&wanted(&[(1, &d2)]), &mut FailService(&mut k));
    assert_eq!(r.failed.len(), 1);
    assert!(k.lookup(&key(1, "10.96.0.1:80")).is_none());
    assert!(k.sets.is_empty(), "{:?}", k.sets);
    // The next round retries and succeeds.
    let r = t.apply(&wanted(&[(1, &d2)]), &mut k);
    assert_eq!((r.added, r.failed.len()), (1, 0));
    assert!(k.lookup(&key(1, "10.96.0.1:80")).is_some());
}
