//! A pod's settings as given (Istio annotation syntax, presets) and their
//! validation into the kernel's `ml_pod` record. Every error names the pod
//! and the list; nothing is ever truncated to fit.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{PodError, MAX_CIDRS, MAX_PORTS};
use crate::abi::{self, ml_cidr_list, ml_pod, ml_pod_flag, ml_port_list, Pod};
/// Longest pod name in bytes: the kernel record's field less its NUL.
use crate::datapath::abi::POD_NAME_MAX as ML_POD_NAME_MAX;

// `check_name` says the number in its message.
const _: () = assert!(ML_POD_NAME_MAX == 63, "update check_name's message");

/// The mesh a pod's proxy belongs to; fills ports and uid defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
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

    pub(super) fn abi(self) -> u16 {
        (match self {
            Preset::Istio => abi::ml_preset::ML_PRESET_ISTIO,
            Preset::Linkerd => abi::ml_preset::ML_PRESET_LINKERD,
            Preset::Kuma => abi::ml_preset::ML_PRESET_KUMA,
        })
        .0 as u16
    }

    pub(super) fn from_abi(v: u16) -> Option<Self> {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodMode {
    /// istio-init's iptables redirect; meshlane only splices.
    Accelerate,
    /// meshlane's eBPF hooks redirect; no nat rules in the pod.
    Intercept,
}

/// Everything that describes one meshed pod, as given by the operator or
/// the CNI plugin. Lists use Istio's annotation syntax ("*" = all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Splice the pod's proxy sockets (default); false = plain TCP only
    /// (annotation `meshlane.io/splice: "false"`).
    pub splice: bool,
    /// Also splice the pod's application sockets. Only accepted where the
    /// kernel probes show an application cannot tell (src/integrity.rs).
    pub splice_apps: bool,
    /// Ports whose connections are never spliced
    /// (annotation `meshlane.io/exclude-splice-ports`).
    pub exclude_splice_ports: String,
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
            splice: true,
            splice_apps: false,
            exclude_splice_ports: String::new(),
        }
    }

    /// The kernel record, or an error naming the pod and the bad list.
    pub fn to_abi(&self) -> Result<ml_pod, PodError> {
        self.check_name()?;
        let (uid, out, inb, dns) = self.preset.defaults();
        let mut p = ml_pod::zeroed();
        p.proxy_uid = self.proxy_uid.unwrap_or(uid);
        p.proxy_gid = self.proxy_gid.unwrap_or(p.proxy_uid);
        p.outbound_port = self.nonzero_port("outbound-port", self.outbound_port.unwrap_or(out))?;
        p.inbound_port = self.nonzero_port("inbound-port", self.inbound_port.unwrap_or(inb))?;
        p.dns_port = self.dns_port.unwrap_or(dns);
        if self.dns_port == Some(0) {
            return Err(self.bad("dns-port", "0", "a port number 1-65535"));
        }
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
        if !self.splice {
            flags |= flag(ml_pod_flag::ML_POD_NO_SPLICE);
        }
        if self.splice_apps {
            flags |= flag(ml_pod_flag::ML_POD_SPLICE_APPS);
        }
        p.exclude_splice_ports = self.ports("excludeSplicePorts", &self.exclude_splice_ports)?;
        p.flags = flags;
        for (dst, src) in p
            .name
            .iter_mut()
            .zip(self.name.bytes().take(ML_POD_NAME_MAX))
        {
            *dst = src as i8;
        }
        Ok(p)
    }

    /// A proxy port of 0 would send connects nowhere (iptables' REDIRECT to
    /// port 0 fails closed; an eBPF rewrite to 0 would not): refused.
    fn nonzero_port(&self, flag: &'static str, port: u16) -> Result<u16, PodError> {
        if port == 0 {
            return Err(self.bad(flag, "0", "a port number 1-65535"));
        }
        Ok(port)
    }

    /// Names are shown in status and logs and kept in a 63-byte field:
    /// printable, not empty, and whole (never cut mid-character).
    fn check_name(&self) -> Result<(), PodError> {
        let why = if self.name.is_empty() {
            Some("is empty")
        } else if self.name.len() > ML_POD_NAME_MAX {
            Some("is longer than 63 bytes")
        } else if self.name.chars().any(char::is_control) {
            Some("contains control characters")
        } else {
            None
        };
        match why {
            Some(why) => Err(PodError::BadName {
                name: self.name.clone(),
                why,
            }),
            None => Ok(()),
        }
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

    /// The items of a comma-separated list, refused when more than `max`.
    fn bounded<'s>(
        &self,
        list: &'static str,
        s: &'s str,
        max: usize,
    ) -> Result<Vec<&'s str>, PodError> {
        let items: Vec<&str> = Self::items(s).collect();
        if items.len() > max {
            return Err(PodError::ListTooLong {
                pod: self.name.clone(),
                list,
                len: items.len(),
                max,
            });
        }
        Ok(items)
    }

    fn ports(&self, list: &'static str, s: &str) -> Result<ml_port_list, PodError> {
        let mut out = ml_port_list::default();
        let items = self.bounded(list, s, MAX_PORTS)?;
        for (slot, it) in out.port.iter_mut().zip(&items) {
            *slot = match it.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(self.bad(list, it, "a port number 1-65535")),
            };
        }
        out.len = items.len() as u32;
        Ok(out)
    }

    fn cidrs(&self, list: &'static str, s: &str) -> Result<ml_cidr_list, PodError> {
        let mut out = ml_cidr_list::default();
        let items = self.bounded(list, s, MAX_CIDRS)?;
        for (slot, it) in out.cidr.iter_mut().zip(&items) {
            *slot = parse_cidr(it).ok_or_else(|| self.bad(list, it, "an IP prefix"))?;
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

pub(super) fn list_ports(l: &ml_port_list) -> String {
    let n = (l.len as usize).min(MAX_PORTS);
    l.port[..n]
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn list_cidrs(l: &ml_cidr_list) -> String {
    let n = (l.len as usize).min(MAX_CIDRS);
    l.cidr[..n]
        .iter()
        .map(abi::cidr_to_string)
        .collect::<Vec<_>>()
        .join(",")
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
    fn port_zero_is_refused_for_every_port() {
        for f in [
            |s: &mut PodSpec| s.outbound_port = Some(0),
            |s: &mut PodSpec| s.inbound_port = Some(0),
            |s: &mut PodSpec| s.dns_port = Some(0),
        ] {
            let mut s = PodSpec::istio("p");
            f(&mut s);
            let e = s.to_abi().unwrap_err().to_string();
            assert!(e.contains("port") && e.contains("\"0\""), "{e}");
        }
    }

    #[test]
    fn names_are_printable_and_fit_whole() {
        for bad in ["", "web\n1", "web\u{1b}[31m", &"x".repeat(64)] {
            let e = PodSpec::istio(bad).to_abi().unwrap_err();
            assert!(matches!(e, PodError::BadName { .. }), "{bad:?}: {e}");
        }
        let ok = "é".repeat(31); // 62 bytes
        let p = PodSpec::istio(ok.clone()).to_abi().unwrap();
        let stored: Vec<u8> = p
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        assert_eq!(stored, ok.as_bytes());
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
