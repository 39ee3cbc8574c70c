//! The kernel-visible structs, as libbpf-cargo generated them from
//! bpf/meshlane.h, plus conversions between them and Rust values.
//! There is no second definition of any of these in Rust.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::skel::intercept::types::{ml_orig_dst, ml_orig_flag};
pub use crate::skel::splice::types::{
    ml_addr, ml_cidr, ml_cidr_list, ml_counter, ml_endpoint, ml_pod, ml_pod_flag, ml_port_list,
    ml_preset, ml_sock_key,
};

/// Plain-old-data structs shared with BPF: safe to view as bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, `Copy`, contain no pointers and are valid
/// for any bit pattern.
pub unsafe trait Pod: Copy + 'static {
    fn zeroed() -> Self {
        // SAFETY: valid for any bit pattern (trait contract).
        unsafe { std::mem::zeroed() }
    }
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) POD, reading its bytes is fine.
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }
    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; any bit pattern is valid.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) })
    }
}

// SAFETY: generated #[repr(C)] structs of integers only.
unsafe impl Pod for ml_pod {}
unsafe impl Pod for ml_addr {}
unsafe impl Pod for ml_sock_key {}
unsafe impl Pod for ml_endpoint {}
unsafe impl Pod for ml_orig_dst {}
unsafe impl Pod for u64 {}

/// An IP as the kernel stores it (IPv4 v4-mapped, network order).
pub fn addr_from_ip(ip: IpAddr) -> ml_addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let mut a = ml_addr::zeroed();
    for (i, w) in a.a.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
    }
    a
}

/// Back to an IpAddr; v4-mapped addresses come back as IPv4.
pub fn ip_from_addr(a: &ml_addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in a.a.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A CIDR in the kernel's 128-bit form (IPv4 prefixes get +96).
pub fn cidr_from(ip: IpAddr, prefix: u8) -> ml_cidr {
    let mut c = ml_cidr::default();
    c.addr = addr_from_ip(ip);
    c.prefix_len = match ip {
        IpAddr::V4(_) => u32::from(prefix) + 96,
        IpAddr::V6(_) => u32::from(prefix),
    };
    c
}

pub fn cidr_to_string(c: &ml_cidr) -> String {
    let ip = ip_from_addr(&c.addr);
    let p = match ip {
        IpAddr::V4(_) => c.prefix_len.saturating_sub(96),
        IpAddr::V6(_) => c.prefix_len,
    };
    format!("{ip}/{p}")
}

pub fn unspecified_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_mapped_and_round_trips() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = addr_from_ip(ip);
        assert_eq!(a.a[0], 0);
        assert_eq!(a.a[2], 0xffffu32.to_be());
        assert_eq!(a.a[3], u32::from_be_bytes([10, 1, 2, 3]).to_be());
        assert_eq!(ip_from_addr(&a), ip);
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(ip_from_addr(&addr_from_ip(v6)), v6);
    }

    #[test]
    fn cidr_prefix_is_over_128_bits() {
        let c = cidr_from("10.0.0.0".parse().unwrap(), 8);
        assert_eq!(c.prefix_len, 104);
        assert_eq!(cidr_to_string(&c), "10.0.0.0/8");
    }
}
