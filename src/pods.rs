//! The pod registry: which network namespaces are meshed and with what
//! settings. Lives entirely in pinned maps (ml_pods, ml_pod_ips) plus one
//! pinned sk_lookup link per intercepted pod, so it survives agent restarts
//! and has one source of truth. Written by `meshlane pod add/rm` today and by
//! the CNI plugin later; both go through [`Registry`].

use std::ffi::CString;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;
use thiserror::Error;

use crate::abi::{self, ml_cidr_list, ml_pod, ml_pod_flag, ml_port_list, Pod};
use crate::layout::{LayoutError, PinLayout};
use crate::netns::{self, NetnsError};

/// Most ports a per-pod port list holds (ML_MAX_PORTS).
pub const MAX_PORTS: usize = 32;
/// Most prefixes a per-pod CIDR list holds (ML_MAX_CIDRS).
pub const MAX_CIDRS: usize = 16;

#[derive(Debug, Error)]
pub enum PodError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod {pod}: {list} has {len} entries, at most {max} fit in the kernel table")]
    ListTooLong {
        pod: String,
        list: &'static str,
        len: usize,
        max: usize,
    },
    #[error("pod {pod}: {list}: {value:?} is not {what}")]
    BadValue {
        pod: String,
        list: &'static str,
        value: String,
        what: &'static str,
    },
    #[error(
        "pod {pod}: address {ip} already belongs to another registered pod (netns cookie {owner})"
    )]
    IpTaken { pod: String, ip: IpAddr, owner: u64 },
    #[error("pod {pod}: intercept mode needs the interception hooks, but this install is splice-only (agent --no-intercept): register it with --mode accelerate, or reinstall with interception")]
    InterceptNotInstalled { pod: String },
    #[error("pod {pod}: no pod is registered for netns {netns}")]
    NotRegistered { pod: String, netns: String },
    #[error("pod registry at {path}: {source}")]
    Map {
        path: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("pod {pod}: {source}")]
    Iptables {
        pod: String,
        source: crate::iptables::IptablesError,
    },
    #[error("pod {pod}: {source}")]
    Listener {
        pod: String,
        source: crate::pod_listener::ListenerError,
    },
    #[error("attaching the inbound sk_lookup program to {netns}: {source}")]
    Attach {
        netns: PathBuf,
        source: std::io::Error,
    },
}

/// The mesh a pod's proxy belongs to; fills ports and uid defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Istio,
    Linkerd,
    Kuma,
}

impl Preset {
    /// (proxy uid, outbound port, inbound port, dns port)
    pub fn defaults(self) -> (u32, u16, u16, u16) {
        match self {
            Preset::Istio => (1337, 15001, 15006, 15053),
            Preset::Linkerd => (2102, 4140, 4143, 0),
            Preset::Kuma => (5678, 15001, 15006, 15053),
        }
    }

    fn abi(self) -> u16 {
        (match self {
            Preset::Istio => abi::ml_preset::ML_PRESET_ISTIO,
            Preset::Linkerd => abi::ml_preset::ML_PRESET_LINKERD,
            Preset::Kuma => abi::ml_preset::ML_PRESET_KUMA,
        })
        .0 as u16
    }

    fn from_abi(v: u16) -> Option<Self> {
        [Preset::Istio, Preset::Linkerd, Preset::Kuma]
            .into_iter()
            .find(|p| p.abi() == v)
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Istio => "istio",
            Preset::Linkerd => "linkerd",
            Preset::Kuma => "kuma",
        })
    }
}

/// How a pod's traffic reaches its proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodMode {
    /// istio-init's iptables redirect; meshlane only splices.
    Accelerate,
    /// meshlane's eBPF hooks redirect; no nat rules in the pod.
    Intercept,
}

/// Everything that describes one meshed pod, as given by the operator or
/// the CNI plugin. Lists use Istio's annotation syntax ("*" = all).
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub preset: Preset,
    pub mode: PodMode,
    pub proxy_uid: Option<u32>,
    pub proxy_gid: Option<u32>,
    pub outbound_port: Option<u16>,
    pub inbound_port: Option<u16>,
    pub dns_port: Option<u16>,
    pub dns_capture: bool,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
}

impl PodSpec {
    /// Istio's defaults for a pod called `name`.
    pub fn istio(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            preset: Preset::Istio,
            mode: PodMode::Intercept,
            proxy_uid: None,
            proxy_gid: None,
            outbound_port: None,
            inbound_port: None,
            dns_port: None,
            dns_capture: false,
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
        }
    }

    /// The kernel record, or an error naming the pod and the bad list.
    pub fn to_abi(&self) -> Result<ml_pod, PodError> {
        let (uid, out, inb, dns) = self.preset.defaults();
        let mut p = ml_pod::zeroed();
        p.proxy_uid = self.proxy_uid.unwrap_or(uid);
        p.proxy_gid = self.proxy_gid.unwrap_or(p.proxy_uid);
        p.outbound_port = self.outbound_port.unwrap_or(out);
        p.inbound_port = self.inbound_port.unwrap_or(inb);
        p.dns_port = self.dns_port.unwrap_or(dns);
        p.preset = self.preset.abi();
        let mut flags = 0u32;
        let flag = |f: ml_pod_flag| f.0;
        match self.mode {
            PodMode::Intercept => flags |= flag(ml_pod_flag::ML_POD_INTERCEPT),
            PodMode::Accelerate => flags |= flag(ml_pod_flag::ML_POD_IPTABLES),
        }
        if self.dns_capture {
            if p.dns_port == 0 {
                return Err(self.bad("dns-port", "0", "a DNS proxy port (this preset has none)"));
            }
            flags |= flag(ml_pod_flag::ML_POD_DNS_CAPTURE);
        }
        if self.include_inbound_ports.trim() == "*" {
            flags |= flag(ml_pod_flag::ML_POD_INBOUND_ALL);
        } else {
            p.include_inbound_ports =
                self.ports("includeInboundPorts", &self.include_inbound_ports)?;
        }
        p.exclude_inbound_ports = self.ports("excludeInboundPorts", &self.exclude_inbound_ports)?;
        if !self.include_outbound_ports.trim().is_empty() {
            flags |= flag(ml_pod_flag::ML_POD_OUTBOUND_PORTS_LISTED);
            p.include_outbound_ports =
                self.ports("includeOutboundPorts", &self.include_outbound_ports)?;
        }
        p.exclude_outbound_ports =
            self.ports("excludeOutboundPorts", &self.exclude_outbound_ports)?;
        if self.include_outbound_ip_ranges.trim() == "*" {
            flags |= flag(ml_pod_flag::ML_POD_OUTBOUND_ALL_IPS);
        } else {
            p.include_outbound_cidrs =
                self.cidrs("includeOutboundIPRanges", &self.include_outbound_ip_ranges)?;
        }
        p.exclude_outbound_cidrs =
            self.cidrs("excludeOutboundIPRanges", &self.exclude_outbound_ip_ranges)?;
        p.flags = flags;
        for (dst, src) in p.name.iter_mut().zip(self.name.bytes().take(63)) {
            *dst = src as i8;
        }
        Ok(p)
    }

    fn bad(&self, list: &'static str, value: &str, what: &'static str) -> PodError {
        PodError::BadValue {
            pod: self.name.clone(),
            list,
            value: value.into(),
            what,
        }
    }

    fn items(s: &str) -> impl Iterator<Item = &str> {
        s.split(',').map(str::trim).filter(|x| !x.is_empty())
    }

    fn ports(&self, list: &'static str, s: &str) -> Result<ml_port_list, PodError> {
        let mut out = ml_port_list::default();
        let items: Vec<&str> = Self::items(s).collect();
        if items.len() > MAX_PORTS {
            return Err(PodError::ListTooLong {
                pod: self.name.clone(),
                list,
                len: items.len(),
                max: MAX_PORTS,
            });
        }
        for (i, it) in items.iter().enumerate() {
            out.port[i] = match it.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(self.bad(list, it, "a port number 1-65535")),
            };
        }
        out.len = items.len() as u32;
        Ok(out)
    }

    fn cidrs(&self, list: &'static str, s: &str) -> Result<ml_cidr_list, PodError> {
        let mut out = ml_cidr_list::default();
        let items: Vec<&str> = Self::items(s).collect();
        if items.len() > MAX_CIDRS {
            return Err(PodError::ListTooLong {
                pod: self.name.clone(),
                list,
                len: items.len(),
                max: MAX_CIDRS,
            });
        }
        for (i, it) in items.iter().enumerate() {
            out.cidr[i] = parse_cidr(it).ok_or_else(|| self.bad(list, it, "an IP prefix"))?;
        }
        out.len = items.len() as u32;
        Ok(out)
    }
}

fn parse_cidr(s: &str) -> Option<abi::ml_cidr> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then(|| abi::cidr_from(ip, len))
}

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

fn list_ports(l: &ml_port_list) -> String {
    let n = (l.len as usize).min(MAX_PORTS);
    l.port[..n]
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn list_cidrs(l: &ml_cidr_list) -> String {
    let n = (l.len as usize).min(MAX_CIDRS);
    l.cidr[..n]
        .iter()
        .map(abi::cidr_to_string)
        .collect::<Vec<_>>()
        .join(",")
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
        let info = netns::inspect(netns_path)?;
        let cookie_bytes = info.cookie.to_ne_bytes();

        let mut written_ips = Vec::new();
        let undo_ips = |ips: &[abi::ml_addr]| {
            for a in ips {
                let _ = self.ips.delete(a.as_bytes());
            }
        };
        for ip in &info.addrs {
            let key = abi::addr_from_ip(*ip);
            if let Ok(Some(owner)) = self.ips.lookup(key.as_bytes(), MapFlags::ANY) {
                let owner = u64::from_bytes(&owner).unwrap_or(0);
                if owner != info.cookie {
                    undo_ips(&written_ips);
                    return Err(PodError::IpTaken {
                        pod: spec.name.clone(),
                        ip: *ip,
                        owner,
                    });
                }
                continue;
            }
            if let Err(e) = self
                .ips
                .update(key.as_bytes(), &cookie_bytes, MapFlags::ANY)
            {
                undo_ips(&written_ips);
                return Err(self.map_err("ml_pod_ips", e));
            }
            written_ips.push(key);
        }

        let want_link = spec.mode == PodMode::Intercept;
        let link_path = self.layout.pod_link(info.cookie);
        let made_link = want_link && !link_path.exists();
        if made_link {
            if let Err(e) = attach_sk_lookup(&self.layout, netns_path, &link_path) {
                undo_ips(&written_ips);
                return Err(e);
            }
        }
        if !want_link && link_path.exists() {
            let _ = std::fs::remove_file(&link_path);
        }
        // A proxy listening already (pod registered after it started): its
        // listener must be known before sk_lookup starts steering.
        if want_link {
            if let Err(e) = crate::pod_listener::adopt(
                &self.layout,
                netns_path,
                info.cookie,
                record.inbound_port,
            ) {
                undo_ips(&written_ips);
                if made_link {
                    let _ = std::fs::remove_file(&link_path);
                }
                return Err(PodError::Listener {
                    pod: spec.name.clone(),
                    source: e,
                });
            }
        }
        if let Err(e) = self
            .pods
            .update(&cookie_bytes, record.as_bytes(), MapFlags::ANY)
        {
            undo_ips(&written_ips);
            if made_link {
                let _ = std::fs::remove_file(&link_path);
            }
            return Err(self.map_err("ml_pods", e));
        }
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
                pod: what.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_defaults() {
        let p = PodSpec::istio("a").to_abi().unwrap();
        assert_eq!((p.proxy_uid, p.proxy_gid), (1337, 1337));
        assert_eq!(
            (p.outbound_port, p.inbound_port, p.dns_port),
            (15001, 15006, 15053)
        );
        assert_ne!(p.flags & ml_pod_flag::ML_POD_INBOUND_ALL.0, 0);
        assert_ne!(p.flags & ml_pod_flag::ML_POD_OUTBOUND_ALL_IPS.0, 0);
    }

    #[test]
    fn presets_fill_ports() {
        let mut s = PodSpec::istio("l");
        s.preset = Preset::Linkerd;
        let p = s.to_abi().unwrap();
        assert_eq!(
            (p.proxy_uid, p.outbound_port, p.inbound_port),
            (2102, 4140, 4143)
        );
        s.preset = Preset::Kuma;
        let p = s.to_abi().unwrap();
        assert_eq!(
            (p.proxy_uid, p.outbound_port, p.inbound_port),
            (5678, 15001, 15006)
        );
    }

    #[test]
    fn too_long_lists_name_pod_and_list() {
        let mut s = PodSpec::istio("web-1");
        s.exclude_outbound_ports = (1..=33)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = s.to_abi().unwrap_err().to_string();
        assert!(
            e.contains("web-1") && e.contains("excludeOutboundPorts") && e.contains("33"),
            "{e}"
        );
        let mut s = PodSpec::istio("web-2");
        s.exclude_outbound_ip_ranges = (0..17)
            .map(|i| format!("10.{i}.0.0/16"))
            .collect::<Vec<_>>()
            .join(",");
        let e = s.to_abi().unwrap_err().to_string();
        assert!(
            e.contains("web-2") && e.contains("excludeOutboundIPRanges"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut s = PodSpec::istio("p");
        s.exclude_inbound_ports = "80,http".into();
        assert!(s.to_abi().unwrap_err().to_string().contains("\"http\""));
        let mut s = PodSpec::istio("p");
        s.include_outbound_ip_ranges = "10.0.0.0/33".into();
        assert!(s.to_abi().is_err());
        let mut s = PodSpec::istio("p");
        s.include_outbound_ip_ranges = "10.0.0.0/8, fd00::/64".into();
        let p = s.to_abi().unwrap();
        assert_eq!(p.include_outbound_cidrs.len, 2);
        assert_eq!(
            list_cidrs(&p.include_outbound_cidrs),
            "10.0.0.0/8,fd00::/64"
        );
    }
}
