//! The registry itself: pods in the pinned maps, the per-pod sk_lookup
//! link, adding (with rollback), removing and listing. Every change holds
//! the registry lock (see `PinLayout::lock_registry`).

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::{Deserialize, Serialize};

use super::spec::{list_cidrs, list_ports};
use super::sweep::LinkState;
use super::{PodError, PodMode, PodSpec, Preset};
use crate::abi::{self, ml_pod, ml_pod_flag, Pod};
use crate::layout::PinLayout;
use crate::netns;

/// A registered pod, as `pod list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub netns_cookie: u64,
    pub preset: Option<Preset>,
    pub mode: PodMode,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub dns_port: u16,
    pub dns_capture: bool,
    pub ips: Vec<IpAddr>,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    /// Whether the pod's sk_lookup link is pinned.
    pub inbound_link: bool,
    /// Whether the pod's network namespace still exists (read from its
    /// link; false until the agent's sweep removes the registration).
    pub netns_alive: bool,
}

/// Handle on the pinned registry maps of one pin root.
pub struct Registry {
    layout: PinLayout,
    pods: MapHandle,
    ips: MapHandle,
}

impl Registry {
    pub fn open(layout: &PinLayout) -> Result<Self, PodError> {
        layout.require_installed()?;
        let open = |name: &str| {
            let path = layout.map(name);
            MapHandle::from_pinned_path(&path).map_err(|e| PodError::Map { path, source: e })
        };
        Ok(Self {
            layout: layout.clone(),
            pods: open("ml_pods")?,
            ips: open("ml_pod_ips")?,
        })
    }

    fn map_err(&self, name: &str, e: libbpf_rs::Error) -> PodError {
        PodError::Map {
            path: self.layout.map(name),
            source: e,
        }
    }

    /// Registers the pod whose netns is at `netns_path`. Validates first,
    /// then writes IPs, the sk_lookup link and finally the pod record (which
    /// is what turns the hooks on); any failure undoes what was written.
    ///
    /// A pod asked for in intercept mode whose netns already holds
    /// istio-init's nat chains is registered in accelerate mode instead
    /// (splicing only): intercepting it with eBPF too would intercept twice.
    pub fn add(&self, netns_path: &Path, spec: &PodSpec) -> Result<PodRecord, PodError> {
        spec.to_abi()?;
        let spec = &self.coexisting(netns_path, spec)?;
        let record = spec.to_abi()?;
        // Inbound steering without the outbound hooks would half-intercept.
        if spec.mode == PodMode::Intercept && !self.layout.link("ml_connect4").exists() {
            return Err(PodError::InterceptNotInstalled {
                pod: spec.name.clone(),
            });
        }
        if netns::is_host_netns(netns_path)? {
            return Err(PodError::HostNetns {
                pod: spec.name.clone(),
                netns: netns_path.to_path_buf(),
            });
        }
        let info = netns::inspect(netns_path)?;
        let _held = self.layout.lock_registry()?;
        let cookie_bytes = info.cookie.to_ne_bytes();
        let mut undo = Rollback::new(&self.ips);

        // First the pod's link: it marks the registration as begun and
        // tells the agent's sweep when the netns is gone. A `pod add` killed
        // after this leaves a link without a record, which the sweep removes.
        let link_path = self.layout.pod_link(info.cookie);
        if !link_path.exists() {
            let ns = netns::open_netns(netns_path)?;
            crate::loader::attach_pod_inbound(&self.layout, ns.as_fd(), info.cookie, &link_path)
                .map_err(|e| PodError::Attach {
                    netns: netns_path.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            undo.link = Some(link_path.clone());
        }
        fail_point("pod-add:link");
        for ip in &info.addrs {
            self.claim_ip(&spec.name, *ip, info.cookie, &mut undo)?;
        }
        fail_point("pod-add:ips");
        if spec.mode == PodMode::Intercept {
            // A proxy listening already (pod registered after it started):
            // its listener must be known before sk_lookup starts steering.
            crate::pod_listener::adopt(&self.layout, netns_path, info.cookie, record.inbound_port)
                .map_err(|e| PodError::Listener {
                    pod: spec.name.clone(),
                    source: e,
                })?;
        }
        fail_point("pod-add:listener");
        // Last: the record is what turns the hooks on.
        self.pods
            .update(&cookie_bytes, record.as_bytes(), MapFlags::ANY)
            .map_err(|e| self.map_err("ml_pods", e))?;
        undo.commit();
        tracing::info!(pod = %spec.name, netns = %netns_path.display(), cookie = info.cookie,
            ips = ?info.addrs, mode = ?spec.mode, "pod registered");
        Ok(self.record(info.cookie, &record))
    }

    /// Records `ip` as the pod's. An address still listed for a pod whose
    /// netns is gone is taken over (its registration is swept first); one
    /// listed for a live pod is refused.
    fn claim_ip(
        &self,
        pod: &str,
        ip: IpAddr,
        cookie: u64,
        undo: &mut Rollback<'_>,
    ) -> Result<(), PodError> {
        let key = abi::addr_from_ip(ip);
        if let Ok(Some(owner)) = self.ips.lookup(key.as_bytes(), MapFlags::ANY) {
            let owner = u64::from_bytes(&owner).unwrap_or(0);
            if owner == cookie {
                return Ok(());
            }
            if super::sweep::link_state(&self.layout.pod_link(owner)) == LinkState::Alive {
                return Err(PodError::IpTaken {
                    pod: pod.to_string(),
                    ip,
                    owner,
                });
            }
            tracing::warn!(pod, %ip, owner, "address listed for a pod whose netns is gone: removing that pod first");
            self.remove_unlocked(owner, &format!("netns cookie {owner}"))?;
        }
        self.ips
            .update(key.as_bytes(), &cookie.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| self.map_err("ml_pod_ips", e))?;
        undo.ips.push(key);
        Ok(())
    }

    /// `spec`, switched to accelerate mode when the netns has istio-init's
    /// nat chains and intercept mode was asked for.
    fn coexisting(&self, netns_path: &Path, spec: &PodSpec) -> Result<PodSpec, PodError> {
        let mut spec = spec.clone();
        if spec.mode != PodMode::Intercept {
            return Ok(spec);
        }
        let found = crate::iptables::inspect(netns_path).map_err(|e| PodError::Iptables {
            pod: spec.name.clone(),
            source: e,
        })?;
        if found.present() {
            tracing::warn!(pod = %spec.name, chains = ?found.chains,
                "istio-init nat rules found: registering in accelerate mode (no eBPF interception)");
            spec.mode = PodMode::Accelerate;
        }
        Ok(spec)
    }

    /// Removes a pod by its netns path.
    pub fn remove(&self, netns_path: &Path) -> Result<u64, PodError> {
        let info = netns::inspect(netns_path)?;
        self.remove_cookie(info.cookie, &netns_path.display().to_string())
    }

    /// Removes a pod by cookie: record first (hooks stop acting), then the
    /// link and IPs. Established connections keep their rewritten addresses.
    pub fn remove_cookie(&self, cookie: u64, what: &str) -> Result<u64, PodError> {
        let _held = self.layout.lock_registry()?;
        self.remove_unlocked(cookie, what)
    }

    /// Removes the pod registered under `name` (names are not unique keys:
    /// more than one match is an error naming the cookies).
    pub fn remove_named(&self, name: &str) -> Result<u64, PodError> {
        let _held = self.layout.lock_registry()?;
        let found: Vec<u64> = self
            .list()
            .into_iter()
            .filter(|p| p.name == name)
            .map(|p| p.netns_cookie)
            .collect();
        match found.as_slice() {
            [one] => self.remove_unlocked(*one, name),
            [] => Err(PodError::NotRegistered {
                netns: format!("name {name:?}"),
            }),
            many => Err(PodError::AmbiguousName {
                name: name.to_string(),
                cookies: many.to_vec(),
            }),
        }
    }

    /// [`Self::remove_cookie`] for a caller that holds the registry lock.
    pub(super) fn remove_unlocked(&self, cookie: u64, what: &str) -> Result<u64, PodError> {
        let key = cookie.to_ne_bytes();
        let existed = matches!(self.pods.lookup(&key, MapFlags::ANY), Ok(Some(_)));
        if existed {
            self.pods
                .delete(&key)
                .map_err(|e| self.map_err("ml_pods", e))?;
        }
        fail_point("pod-rm:record");
        let link = self.layout.pod_link(cookie);
        let had_link = link.exists();
        if had_link {
            let _ = std::fs::remove_file(&link);
        }
        fail_point("pod-rm:link");
        let had_ips = self.remove_ips_of(cookie);
        if !existed && !had_link && !had_ips {
            return Err(PodError::NotRegistered {
                netns: what.to_string(),
            });
        }
        tracing::info!(cookie, pod = what, "pod removed");
        Ok(cookie)
    }

    /// Deletes every address listed for `cookie`; whether there was one.
    pub(super) fn remove_ips_of(&self, cookie: u64) -> bool {
        let mut had = false;
        for k in self.ips.keys().collect::<Vec<_>>() {
            if let Ok(Some(v)) = self.ips.lookup(&k, MapFlags::ANY) {
                if u64::from_bytes(&v) == Some(cookie) {
                    had = true;
                    let _ = self.ips.delete(&k);
                }
            }
        }
        had
    }

    /// The pod registered under `cookie`, if any.
    pub fn get(&self, cookie: u64) -> Option<PodRecord> {
        let v = self
            .pods
            .lookup(&cookie.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()?;
        let p = ml_pod::from_bytes(&v)?;
        Some(self.record(cookie, &p))
    }

    /// How many pods are registered (walks ml_pods: at most 4096 keys).
    pub fn count(&self) -> usize {
        self.pods.keys().count()
    }

    /// Cookies that own at least one address in ml_pod_ips.
    pub(super) fn ip_owners(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .ips
            .keys()
            .filter_map(|k| self.ips.lookup(&k, MapFlags::ANY).ok().flatten())
            .filter_map(|v| u64::from_bytes(&v))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(super) fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn list(&self) -> Vec<PodRecord> {
        let mut out = Vec::new();
        for k in self.pods.keys() {
            let Some(cookie) = u64::from_bytes(&k) else {
                continue;
            };
            if let Ok(Some(v)) = self.pods.lookup(&k, MapFlags::ANY) {
                if let Some(p) = ml_pod::from_bytes(&v) {
                    out.push(self.record(cookie, &p));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn ips_of(&self, cookie: u64) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .ips
            .keys()
            .filter(|k| {
                matches!(self.ips.lookup(k, MapFlags::ANY), Ok(Some(v)) if u64::from_bytes(&v) == Some(cookie))
            })
            .filter_map(|k| abi::ml_addr::from_bytes(&k).map(|a| abi::ip_from_addr(&a)))
            .collect();
        v.sort();
        v
    }

    fn record(&self, cookie: u64, p: &ml_pod) -> PodRecord {
        let name_bytes: Vec<u8> = p
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        let has = |f: ml_pod_flag| p.flags & f.0 != 0;
        PodRecord {
            name: String::from_utf8_lossy(&name_bytes).into_owned(),
            netns_cookie: cookie,
            preset: Preset::from_abi(p.preset),
            mode: if has(ml_pod_flag::ML_POD_IPTABLES) {
                PodMode::Accelerate
            } else {
                PodMode::Intercept
            },
            proxy_uid: p.proxy_uid,
            proxy_gid: p.proxy_gid,
            outbound_port: p.outbound_port,
            inbound_port: p.inbound_port,
            dns_port: p.dns_port,
            dns_capture: has(ml_pod_flag::ML_POD_DNS_CAPTURE),
            ips: self.ips_of(cookie),
            include_inbound_ports: if has(ml_pod_flag::ML_POD_INBOUND_ALL) {
                "*".into()
            } else {
                list_ports(&p.include_inbound_ports)
            },
            exclude_inbound_ports: list_ports(&p.exclude_inbound_ports),
            include_outbound_ports: list_ports(&p.include_outbound_ports),
            exclude_outbound_ports: list_ports(&p.exclude_outbound_ports),
            include_outbound_ip_ranges: if has(ml_pod_flag::ML_POD_OUTBOUND_ALL_IPS) {
                "*".into()
            } else {
                list_cidrs(&p.include_outbound_cidrs)
            },
            exclude_outbound_ip_ranges: list_cidrs(&p.exclude_outbound_cidrs),
            inbound_link: self.layout.pod_link(cookie).exists(),
            netns_alive: super::sweep::link_state(&self.layout.pod_link(cookie))
                == LinkState::Alive,
        }
    }
}

/// Test hook of the simulated node's tests (feature `sim`): with
/// `MESHLANE_FAIL_POINT=<step>` set, the process SIGKILLs itself right after
/// that step of an add or remove, so a test can check what is left behind.
fn fail_point(step: &str) {
    #[cfg(feature = "sim")]
    if std::env::var("MESHLANE_FAIL_POINT").is_ok_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "sim"))]
    let _ = step;
}

/// What `Registry::add` has written so far; removed again on drop unless
/// the registration completed, so a failed add leaves nothing behind.
struct Rollback<'a> {
    ip_map: &'a MapHandle,
    ips: Vec<abi::ml_addr>,
    link: Option<PathBuf>,
    committed: bool,
}

impl<'a> Rollback<'a> {
    fn new(ip_map: &'a MapHandle) -> Self {
        Self {
            ip_map,
            ips: Vec::new(),
            link: None,
            committed: false,
        }
    }

    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for a in &self.ips {
            let _ = self.ip_map.delete(a.as_bytes());
        }
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}
