//! The registry itself: pods in the pinned maps, the per-pod sk_lookup
//! link, adding (with rollback), removing and listing. Every change holds
//! the registry lock (see `PinLayout::lock_registry`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{list_cidrs, list_ports};
use super::{PodError, PodMode, PodSpec, Preset};
use crate::abi::{ml_pod, ml_pod_flag};
use crate::datapath::links::{self, LinkState};
use crate::datapath::{LinkId, PinLayout, PodIpsMap, PodsMap};
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
    pods: PodsMap,
    ips: PodIpsMap,
}

impl Registry {
    pub fn open(layout: &PinLayout) -> Result<Self, PodError> {
        layout.require_installed()?;
        Ok(Self {
            layout: layout.clone(),
            pods: PodsMap::open(layout)?,
            ips: PodIpsMap::open(layout)?,
        })
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
        if spec.mode == PodMode::Intercept && !links::is_pinned(&self.layout, LinkId::Connect4) {
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
        self.pods.insert(info.cookie, &record)?;
        undo.commit();
        tracing::info!(pod = %spec.name, netns = %netns_path.display(), cookie = info.cookie,
            ips = ?info.addrs, mode = ?spec.mode, "pod registered");
        Ok(self.record(info.cookie, &record, info.addrs.clone()))
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
        if let Some(owner) = self.ips.owner(ip)? {
            if owner == cookie {
                return Ok(());
            }
            if links::pod_link_state(&self.layout, owner) == LinkState::Alive {
                return Err(PodError::IpTaken {
                    pod: pod.to_string(),
                    ip,
                    owner,
                });
            }
            tracing::warn!(pod, %ip, owner, "address listed for a pod whose netns is gone: removing that pod first");
            self.remove_unlocked(owner, &format!("netns cookie {owner}"))?;
        }
        self.ips.insert(ip, cookie)?;
        undo.ips.push(ip);
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
        let existed = self.pods.remove(cookie)?;
        fail_point("pod-rm:record");
        let had_link = links::remove_pod_link(&self.layout, cookie);
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
        // Collected first: deleting while walking would restart the walk.
        let owned: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|(_, owner)| *owner == cookie)
            .map(|(ip, _)| ip)
            .collect();
        for ip in owned {
            had = true;
            let _ = self.ips.remove(ip);
        }
        had
    }

    /// The pod registered under `cookie`, if any.
    pub fn get(&self, cookie: u64) -> Option<PodRecord> {
        let p = self.pods.get(cookie).ok().flatten()?;
        let ips = self
            .ips
            .iter()
            .filter(|(_, owner)| *owner == cookie)
            .map(|(ip, _)| ip)
            .collect();
        Some(self.record(cookie, &p, ips))
    }

    /// How many pods are registered (walks the records' keys: at most 4096).
    pub fn count(&self) -> usize {
        self.pods.count()
    }

    /// Cookies that own at least one pod address.
    pub(super) fn ip_owners(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.ips.iter().map(|(_, c)| c).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(super) fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn list(&self) -> Vec<PodRecord> {
        // One walk of the addresses for every pod.
        let mut ips: HashMap<u64, Vec<IpAddr>> = HashMap::new();
        for (ip, owner) in self.ips.iter() {
            ips.entry(owner).or_default().push(ip);
        }
        let mut out: Vec<PodRecord> = self
            .pods
            .iter()
            .map(|(cookie, p)| self.record(cookie, &p, ips.remove(&cookie).unwrap_or_default()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The recorded pods' names by netns cookie: one walk of the records,
    /// nothing else read (the sweep's view).
    pub(super) fn names(&self) -> HashMap<u64, String> {
        self.pods
            .iter()
            .map(|(cookie, p)| (cookie, pod_name(&p)))
            .collect()
    }

    fn record(&self, cookie: u64, p: &ml_pod, mut ips: Vec<IpAddr>) -> PodRecord {
        ips.sort();
        let has = |f: ml_pod_flag| p.flags & f.0 != 0;
        PodRecord {
            name: pod_name(p),
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
            ips,
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
            netns_alive: links::pod_link_state(&self.layout, cookie) == LinkState::Alive,
        }
    }
}

/// The name a record carries (up to its NUL).
fn pod_name(p: &ml_pod) -> String {
    let bytes: Vec<u8> = p
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
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
    ip_map: &'a PodIpsMap,
    ips: Vec<IpAddr>,
    link: Option<PathBuf>,
    committed: bool,
}

impl<'a> Rollback<'a> {
    fn new(ip_map: &'a PodIpsMap) -> Self {
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
        for ip in &self.ips {
            let _ = self.ip_map.remove(*ip);
        }
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}
