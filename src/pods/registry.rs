//! The registry itself: pods in the pinned maps, the per-pod sk_lookup
//! link, adding (with rollback), removing and listing.

use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use super::spec::{list_cidrs, list_ports};
use super::{PodError, PodMode, PodSpec, Preset};
use crate::abi::{self, ml_pod, ml_pod_flag, Pod};
use crate::layout::PinLayout;
use crate::netns;

/// A registered pod, as `pod list` shows it.
#[derive(Debug, Clone, Serialize)]
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
    /// Whether the pod's sk_lookup link is pinned (intercept mode).
    pub inbound_link: bool,
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
        let cookie_bytes = info.cookie.to_ne_bytes();
        let mut undo = Rollback::new(&self.ips);

        for ip in &info.addrs {
            let key = abi::addr_from_ip(*ip);
            if let Ok(Some(owner)) = self.ips.lookup(key.as_bytes(), MapFlags::ANY) {
                let owner = u64::from_bytes(&owner).unwrap_or(0);
                if owner != info.cookie {
                    return Err(PodError::IpTaken {
                        pod: spec.name.clone(),
                        ip: *ip,
                        owner,
                    });
                }
                continue;
            }
            self.ips
                .update(key.as_bytes(), &cookie_bytes, MapFlags::ANY)
                .map_err(|e| self.map_err("ml_pod_ips", e))?;
            undo.ips.push(key);
        }

        let want_link = spec.mode == PodMode::Intercept;
        let link_path = self.layout.pod_link(info.cookie);
        if want_link {
            if !link_path.exists() {
                attach_sk_lookup(&self.layout, netns_path, &link_path)?;
                undo.link = Some(link_path.clone());
            }
            // A proxy listening already (pod registered after it started):
            // its listener must be known before sk_lookup starts steering.
            crate::pod_listener::adopt(&self.layout, netns_path, info.cookie, record.inbound_port)
                .map_err(|e| PodError::Listener {
                    pod: spec.name.clone(),
                    source: e,
                })?;
        } else if link_path.exists() {
            let _ = std::fs::remove_file(&link_path);
        }
        // Last: the record is what turns the hooks on.
        self.pods
            .update(&cookie_bytes, record.as_bytes(), MapFlags::ANY)
            .map_err(|e| self.map_err("ml_pods", e))?;
        undo.commit();
        tracing::info!(pod = %spec.name, netns = %netns_path.display(), cookie = info.cookie,
            ips = ?info.addrs, mode = ?spec.mode, "pod registered");
        Ok(self.record(info.cookie, &record))
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
        let key = cookie.to_ne_bytes();
        let existed = matches!(self.pods.lookup(&key, MapFlags::ANY), Ok(Some(_)));
        if existed {
            self.pods
                .delete(&key)
                .map_err(|e| self.map_err("ml_pods", e))?;
        }
        let link = self.layout.pod_link(cookie);
        let had_link = link.exists();
        if had_link {
            let _ = std::fs::remove_file(&link);
        }
        let mut had_ips = false;
        for k in self.ips.keys().collect::<Vec<_>>() {
            if let Ok(Some(v)) = self.ips.lookup(&k, MapFlags::ANY) {
                if u64::from_bytes(&v) == Some(cookie) {
                    had_ips = true;
                    let _ = self.ips.delete(&k);
                }
            }
        }
        if !existed && !had_link && !had_ips {
            return Err(PodError::NotRegistered {
                netns: what.to_string(),
            });
        }
        tracing::info!(cookie, pod = what, "pod removed");
        Ok(cookie)
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
        }
    }
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

/// Attaches the pinned sk_lookup program to the netns and pins the link.
fn attach_sk_lookup(
    layout: &PinLayout,
    netns_path: &Path,
    link_path: &Path,
) -> Result<(), PodError> {
    let err = |e: std::io::Error| PodError::Attach {
        netns: netns_path.to_path_buf(),
        source: e,
    };
    let prog_path = layout.prog("ml_inbound_lookup");
    let prog = libbpf_rs::ProgramImpl::<()>::fd_from_pinned_path(&prog_path).map_err(|e| {
        err(std::io::Error::other(format!(
            "{}: {e}",
            prog_path.display()
        )))
    })?;
    let ns = netns::open_netns(netns_path)?;
    // SAFETY: valid fds; NULL opts.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            ns.as_fd().as_raw_fd(),
            libbpf_sys::BPF_SK_LOOKUP,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::from_raw_os_error(-fd)));
    }
    // SAFETY: fd was just returned by the kernel and is ours.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = CString::new(link_path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::Error::other("pin path has a NUL byte")))?;
    // SAFETY: valid fd and C string.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
    if rc != 0 {
        return Err(err(std::io::Error::from_raw_os_error(-rc)));
    }
    Ok(())
}
