//! The agent's side of the CNI plugin: CNI attachments (container id +
//! interface) to pod registrations. ADD asks the pod catalog whether the
//! pod is meshed (waiting a bounded time for a pod source that lags the
//! runtime), registers it through the [`Registry`] (netns cookie, IPs,
//! settings, the pinned sk_lookup link) and records the attachment; DEL
//! removes exactly what that attachment keyed; CHECK verifies it; GC drops
//! attachments the runtime no longer lists.
//!
//! The attachment record lives in the pin root as empty directories,
//! `<pin root>/v<N>/cni/<container id>/<ifname>/<netns cookie>`, so it has
//! the registry's lifetime: it survives agent restarts, goes at reboot and
//! with `meshlane uninstall`, and holds no kernel object. A registration
//! is removed only when no attachment refers to its netns any more (a pod
//! with two CNI networks has two). One mutex serialises CNI changes in the
//! agent; the registry's own lock orders them with `pod` commands and the
//! sweep.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::conf::ValidAttachment;
use super::invocation::{check_container_id, check_ifname};
use crate::layout::PinLayout;
use crate::netns;
use crate::pods::source::{MeshDecision, PodCatalog, PodInfo, PodKey};
use crate::pods::{link_state, LinkState, PodError, PodSpec, Registry};

/// Longest the agent waits for its pod source to learn of a pod that a
/// CNI ADD names (the Kubernetes watch can lag the runtime).
pub const POD_WAIT: Duration = Duration::from_secs(10);

/// Time kept back from the plugin's deadline for the registration itself.
const REGISTER_MARGIN: Duration = Duration::from_millis(500);

/// ADD: register the pod of this attachment if it is meshed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAdd {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub pod: PodKey,
    /// The pod's addresses from prevResult (checked against the netns).
    pub ips: Vec<IpAddr>,
    /// CLOCK_MONOTONIC milliseconds after which the plugin has given up:
    /// the agent then registers nothing (or undoes what it did).
    pub expires_at_ms: u64,
}

/// DEL: remove what ADD did for this attachment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniDel {
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
}

/// CHECK: is this attachment's registration in place?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniCheck {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub pod: Option<PodKey>,
}

/// GC: every attachment still valid; the others are removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniGc {
    pub valid: Vec<ValidAttachment>,
}

/// What ADD did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CniAdded {
    Registered {
        netns_cookie: u64,
        name: String,
        ips: Vec<IpAddr>,
    },
    NotMeshed {
        reason: String,
    },
}

/// What DEL did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniRemoved {
    pub netns_cookie: Option<u64>,
    pub registration_removed: bool,
}

/// STATUS: whether ADD can be served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniStatus {
    pub pods: usize,
    pub catalog_synced: bool,
}

/// CLOCK_MONOTONIC in milliseconds (one clock for every process of the
/// node: the plugin's deadline means the same to the agent).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The registry name of a Kubernetes pod: `namespace/name` cut to the
/// kernel field's 63 bytes, the name the pod source's reconcile matches
/// registrations by (`pods::classify::display_name`).
pub fn registry_name(pod: &PodKey) -> String {
    crate::pods::classify::display_name(pod)
}

/// What the agent counts of CNI requests (registered as
/// `meshlane_cni_requests_total{op, outcome}` by `metrics::Metrics`).
#[derive(Debug, Default, Clone)]
pub struct CniMetrics {
    pub requests: Family<CniRequestLabel, Counter>,
}

/// One CNI request's kind and how it ended: `registered`, `not_meshed`,
/// `removed` (a registration went), `done` (nothing to remove, a check or
/// a collection that passed) or `error`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniRequestLabel {
    pub op: String,
    pub outcome: String,
}

impl CniMetrics {
    fn count(&self, op: &str, outcome: &str) {
        self.requests
            .get_or_create(&CniRequestLabel {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// The CNI requests' handler in the agent.
pub struct CniService {
    layout: PinLayout,
    catalog: Arc<dyn PodCatalog>,
    lock: Mutex<()>,
    pod_wait: Duration,
    metrics: CniMetrics,
}

impl CniService {
    pub fn new(layout: PinLayout, catalog: Arc<dyn PodCatalog>, metrics: CniMetrics) -> Self {
        Self {
            layout,
            catalog,
            lock: Mutex::new(()),
            pod_wait: POD_WAIT,
            metrics,
        }
    }

    /// ADD, counted.
    pub fn add(&self, req: &CniAdd) -> Result<CniAdded, String> {
        let r = self.add_uncounted(req);
        self.metrics.count(
            "add",
            match &r {
                Ok(CniAdded::Registered { .. }) => "registered",
                Ok(CniAdded::NotMeshed { .. }) => "not_meshed",
                Err(_) => "error",
            },
        );
        if let Err(e) = &r {
            tracing::warn!(error = %e, "CNI ADD refused");
        }
        r
    }

    /// DEL, counted.
    pub fn del(&self, req: &CniDel) -> Result<CniRemoved, String> {
        let r = self.del_uncounted(req);
        let outcome = match &r {
            Ok(x) if x.registration_removed => "removed",
            Ok(_) => "done",
            Err(_) => "error",
        };
        self.metrics.count("del", outcome);
        r
    }

    /// CHECK, counted.
    pub fn check(&self, req: &CniCheck) -> Result<(), String> {
        let r = self.check_uncounted(req);
        self.metrics
            .count("check", if r.is_ok() { "done" } else { "error" });
        r
    }

    /// GC, counted.
    pub fn gc(&self, req: &CniGc) -> Result<Vec<ValidAttachment>, String> {
        let r = self.gc_uncounted(req);
        self.metrics
            .count("gc", if r.is_ok() { "done" } else { "error" });
        r
    }

    fn held(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// ADD. Errors are one line naming the pod.
    fn add_uncounted(&self, req: &CniAdd) -> Result<CniAdded, String> {
        let who = format!("pod {}", req.pod);
        check_ids(&req.container_id, &req.ifname).map_err(|e| format!("{who}: {e}"))?;
        let now_ms = monotonic_ms();
        if now_ms >= req.expires_at_ms {
            return Err(format!(
                "{who}: the request expired before the agent read it (the plugin had given up): nothing registered"
            ));
        }
        let deadline = Instant::now() + Duration::from_millis(req.expires_at_ms - now_ms);
        let Some(info) = self.wait_for_pod(&req.pod, deadline) else {
            return Err(format!(
                "{who} is not known to the agent's pod source (synced: {}): failing closed until it is",
                self.catalog.synced()
            ));
        };
        let mut spec = match info.mesh {
            MeshDecision::NotMeshed { reason } => return Ok(CniAdded::NotMeshed { reason }),
            MeshDecision::Meshed { spec } => spec,
        };
        spec.name = registry_name(&req.pod);
        let _held = self.held();
        self.register(req, &spec, deadline)
            .map_err(|e| format!("{who}: {e}"))
    }

    /// Polls the catalog until the pod appears, the agent's own limit or
    /// the plugin's deadline (less the registration's margin).
    fn wait_for_pod(&self, pod: &PodKey, deadline: Instant) -> Option<PodInfo> {
        let now = Instant::now();
        let until = (now + self.pod_wait).min(
            deadline
                .checked_sub(REGISTER_MARGIN)
                .unwrap_or(now)
                .max(now),
        );
        loop {
            if let Some(info) = self.catalog.get(pod) {
                return Some(info);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn register(
        &self,
        req: &CniAdd,
        spec: &PodSpec,
        deadline: Instant,
    ) -> Result<CniAdded, String> {
        let info = netns::inspect(&req.netns).map_err(|e| e.to_string())?;
        let missing: Vec<&IpAddr> = req
            .ips
            .iter()
            .filter(|ip| !info.addrs.contains(ip))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "prevResult gives the pod {missing:?}, but its netns {} holds {:?}",
                req.netns.display(),
                info.addrs
            ));
        }
        let reg = Registry::open(&self.layout).map_err(|e| e.to_string())?;
        let existed = reg.get(info.cookie).is_some();
        let record = reg.add(&req.netns, spec).map_err(|e| e.to_string())?;
        let undo = |reg: &Registry| {
            if !existed {
                let _ = reg.remove_cookie(record.netns_cookie, &spec.name);
            }
        };
        let store = Mappings(&self.layout);
        if let Err(e) = store.write(&req.container_id, &req.ifname, record.netns_cookie) {
            undo(&reg);
            return Err(format!(
                "recording the attachment in {}: {e}",
                self.layout.cni_dir().display()
            ));
        }
        if Instant::now() > deadline {
            store.remove(&req.container_id, &req.ifname);
            undo(&reg);
            return Err("the registration finished after the plugin's deadline: undone".into());
        }
        tracing::info!(pod = %req.pod, container = %req.container_id, ifname = %req.ifname,
            cookie = record.netns_cookie, "CNI ADD: pod registered");
        Ok(CniAdded::Registered {
            netns_cookie: record.netns_cookie,
            name: record.name,
            ips: record.ips,
        })
    }

    /// DEL: idempotent; succeeds when the netns is gone or ADD never ran.
    fn del_uncounted(&self, req: &CniDel) -> Result<CniRemoved, String> {
        check_ids(&req.container_id, &req.ifname)?;
        let _held = self.held();
        let store = Mappings(&self.layout);
        let mapped = store.read(&req.container_id, &req.ifname);
        if mapped.is_some() {
            store.remove(&req.container_id, &req.ifname);
        }
        // No record (a pod registered before its attachment was, or by
        // adoption): the netns names the registration, if it still exists.
        let Some(cookie) = mapped.or_else(|| netns_cookie(req.netns.as_deref())) else {
            return Ok(CniRemoved {
                netns_cookie: None,
                registration_removed: false,
            });
        };
        let removed = if store.refs(cookie) > 0 {
            false
        } else {
            remove_registration(&self.layout, cookie)?
        };
        if removed {
            tracing::info!(container = %req.container_id, ifname = %req.ifname, cookie, "CNI DEL: pod removed");
        }
        Ok(CniRemoved {
            netns_cookie: Some(cookie),
            registration_removed: removed,
        })
    }

    /// CHECK: the attachment's registration, its link and its netns agree.
    fn check_uncounted(&self, req: &CniCheck) -> Result<(), String> {
        check_ids(&req.container_id, &req.ifname)?;
        let _held = self.held();
        let Some(cookie) = Mappings(&self.layout).read(&req.container_id, &req.ifname) else {
            return self.check_unregistered(req.pod.as_ref());
        };
        let reg = Registry::open(&self.layout).map_err(|e| e.to_string())?;
        if reg.get(cookie).is_none() {
            return Err(format!("its registration (netns cookie {cookie}) is gone"));
        }
        if link_state(&self.layout.pod_link(cookie)) != LinkState::Alive {
            return Err(format!(
                "its sk_lookup link (netns cookie {cookie}) is missing or its netns is gone"
            ));
        }
        let now = netns::inspect(&req.netns).map_err(|e| e.to_string())?;
        if now.cookie != cookie {
            return Err(format!(
                "{} is netns cookie {}, the registration is for {cookie}",
                req.netns.display(),
                now.cookie
            ));
        }
        Ok(())
    }

    fn check_unregistered(&self, pod: Option<&PodKey>) -> Result<(), String> {
        let Some(pod) = pod else { return Ok(()) };
        match self.catalog.get(pod).map(|i| i.mesh) {
            Some(MeshDecision::NotMeshed { .. }) => Ok(()),
            Some(MeshDecision::Meshed { .. }) => Err("it is meshed but has no registration".into()),
            None => Err("it is not known to the agent's pod source".into()),
        }
    }

    /// GC: removes every attachment not in `valid`, and the registrations
    /// no attachment refers to any more. Returns what was removed.
    fn gc_uncounted(&self, req: &CniGc) -> Result<Vec<ValidAttachment>, String> {
        let valid: HashSet<&ValidAttachment> = req.valid.iter().collect();
        let _held = self.held();
        let store = Mappings(&self.layout);
        let mut removed = Vec::new();
        let mut cookies = Vec::new();
        for (att, cookie) in store.all() {
            if !valid.contains(&att) {
                store.remove(&att.container_id, &att.ifname);
                cookies.push(cookie);
                removed.push(att);
            }
        }
        cookies.sort_unstable();
        cookies.dedup();
        let mut errors = Vec::new();
        for c in cookies {
            if store.refs(c) == 0 {
                if let Err(e) = remove_registration(&self.layout, c) {
                    errors.push(e);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if !removed.is_empty() {
            tracing::info!(
                attachments = removed.len(),
                "CNI GC: stale attachments removed"
            );
        }
        Ok(removed)
    }

    /// STATUS: the registry is installed and the pod source has synced.
    pub fn status(&self) -> Result<CniStatus, String> {
        let reg = Registry::open(&self.layout).map_err(|e| e.to_string())?;
        Ok(CniStatus {
            pods: reg.count(),
            catalog_synced: self.catalog.synced(),
        })
    }

    /// Drops attachment records whose registration is gone (the sweep
    /// removed a pod whose netns vanished before its DEL). Skipped while
    /// a CNI request runs.
    pub fn sweep_records(&self) -> usize {
        let Ok(_held) = self.lock.try_lock() else {
            return 0;
        };
        let Ok(reg) = Registry::open(&self.layout) else {
            return 0;
        };
        let store = Mappings(&self.layout);
        let mut n = 0;
        for (att, cookie) in store.all() {
            if reg.get(cookie).is_none() && !self.layout.pod_link(cookie).exists() {
                store.remove(&att.container_id, &att.ifname);
                n += 1;
            }
        }
        n
    }
}

fn check_ids(container_id: &str, ifname: &str) -> Result<(), String> {
    check_container_id(container_id)?;
    check_ifname(ifname)
}

/// The cookie of the netns at `path`, if it is still a pod's netns.
fn netns_cookie(path: Option<&Path>) -> Option<u64> {
    let p = path?;
    if !p.exists() || netns::is_host_netns(p).unwrap_or(true) {
        return None;
    }
    netns::inspect(p).ok().map(|i| i.cookie)
}

/// Removes the registration of `cookie`; false when there was none.
fn remove_registration(layout: &PinLayout, cookie: u64) -> Result<bool, String> {
    if !layout.maps_dir().is_dir() {
        return Ok(false); // uninstalled: nothing is registered
    }
    let reg = Registry::open(layout).map_err(|e| e.to_string())?;
    match reg.remove_cookie(cookie, &format!("netns cookie {cookie}")) {
        Ok(_) => Ok(true),
        Err(PodError::NotRegistered { .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The attachment records under the pin root.
struct Mappings<'a>(&'a PinLayout);

impl Mappings<'_> {
    fn dir(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.0.cni_dir().join(container_id).join(ifname)
    }

    fn read(&self, container_id: &str, ifname: &str) -> Option<u64> {
        std::fs::read_dir(self.dir(container_id, ifname))
            .ok()?
            .flatten()
            .find_map(|e| e.file_name().to_str()?.parse().ok())
    }

    fn write(&self, container_id: &str, ifname: &str, cookie: u64) -> std::io::Result<()> {
        let dir = self.dir(container_id, ifname);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        std::fs::create_dir_all(dir.join(cookie.to_string()))
    }

    fn remove(&self, container_id: &str, ifname: &str) {
        let dir = self.dir(container_id, ifname);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(self.0.cni_dir().join(container_id));
    }

    /// Every record: (attachment, netns cookie).
    fn all(&self) -> Vec<(ValidAttachment, u64)> {
        let mut out = Vec::new();
        let Ok(ids) = std::fs::read_dir(self.0.cni_dir()) else {
            return out;
        };
        for id in ids.flatten() {
            let Some(container_id) = id.file_name().to_str().map(String::from) else {
                continue;
            };
            for ifname in std::fs::read_dir(id.path()).into_iter().flatten().flatten() {
                let Some(ifname) = ifname.file_name().to_str().map(String::from) else {
                    continue;
                };
                if let Some(cookie) = self.read(&container_id, &ifname) {
                    out.push((
                        ValidAttachment {
                            container_id: container_id.clone(),
                            ifname,
                        },
                        cookie,
                    ));
                }
            }
        }
        out
    }

    /// How many attachments refer to `cookie`.
    fn refs(&self, cookie: u64) -> usize {
        self.all().iter().filter(|(_, c)| *c == cookie).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_fit_the_kernel_field() {
        let short = PodKey {
            namespace: "default".into(),
            name: "web-0".into(),
        };
        assert_eq!(registry_name(&short), "default/web-0");
        let long = PodKey {
            namespace: "a-rather-long-namespace-name".into(),
            name: "x".repeat(200),
        };
        let n = registry_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert!(n.starts_with("a-rather-long-namespace-name/xxx"));
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(monotonic_ms() >= a + 5);
    }
}
