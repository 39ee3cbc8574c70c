//! The kernel-visible structs, as libbpf-cargo generated them from
//! bpf/meshlane.h, plus conversions between them and Rust values.
//! There is no second definition of any of these in Rust: the sizes user
//! space checks against (list capacities, the name field, the counter
//! slots) are read off the generated types, and the `#define`s that BTF
//! does not carry are checked against the header by the unit tests below.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::skel::intercept::types::{
    ml_bypass_clock, ml_bypass_counter, ml_bypass_ep, ml_bypass_key, ml_bypass_set,
    ml_bypass_stats, ml_inbound_key, ml_orig_dst, ml_orig_flag,
};
pub use crate::skel::splice::types::{
    ml_addr, ml_cidr, ml_cidr_list, ml_counter, ml_endpoint, ml_pod, ml_pod_flag, ml_port_list,
    ml_preset, ml_sock_key,
};

/// Most ports a per-pod port list holds (ML_MAX_PORTS).
pub const MAX_PORTS: usize = {
    // SAFETY: a generated struct of integers; all zeroes is valid.
    let l: ml_port_list = unsafe { std::mem::zeroed() };
    l.port.len()
};

/// Most prefixes a per-pod CIDR list holds (ML_MAX_CIDRS).
pub const MAX_CIDRS: usize = {
    // SAFETY: as above.
    let l: ml_cidr_list = unsafe { std::mem::zeroed() };
    l.cidr.len()
};

/// Bytes of `ml_pod.name` (ML_POD_NAME_LEN), the terminating NUL included.
pub const POD_NAME_LEN: usize = {
    // SAFETY: as above.
    let p: ml_pod = unsafe { std::mem::zeroed() };
    p.name.len()
};

/// Longest pod name the kernel record keeps (the NUL takes one byte).
pub const POD_NAME_MAX: usize = POD_NAME_LEN - 1;

/// Counter slots the programs use (ML_CNT__MAX).
pub const COUNTER_COUNT: usize = ml_counter::ML_CNT__MAX.0 as usize;

/// Slots of the per-CPU counter array (ML_COUNTER_SLOTS): room for
/// counters added later without a layout change.
pub const COUNTER_SLOTS: usize = 32;

const _: () = assert!(COUNTER_COUNT <= COUNTER_SLOTS);

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
unsafe impl Pod for u32 {}
unsafe impl Pod for ml_bypass_key {}
unsafe impl Pod for ml_bypass_set {}
unsafe impl Pod for ml_bypass_clock {}
unsafe impl Pod for ml_bypass_stats {}
unsafe impl Pod for ml_inbound_key {}

/// Most endpoints one bypass endpoint set holds (ML_BYPASS_MAX_EPS).
pub const BYPASS_MAX_ENDPOINTS: usize = {
    // SAFETY: a generated struct of integers; all zeroes is valid.
    let s: ml_bypass_set = unsafe { std::mem::zeroed() };
    s.ep.len()
};

/// Bypass counter slots the programs use (ML_BYP__MAX).
pub const BYPASS_COUNTER_COUNT: usize = ml_bypass_counter::ML_BYP__MAX.0 as usize;

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
    ml_cidr {
        addr: addr_from_ip(ip),
        prefix_len: match ip {
            IpAddr::V4(_) => u32::from(prefix) + 96,
            IpAddr::V6(_) => u32::from(prefix),
        },
    }
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

    /// The value of `#define NAME value` in bpf/meshlane.h.
    fn header_define(name: &str) -> usize {
        include_str!("../../bpf/meshlane.h")
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some(name))
                    .then(|| w.next())
                    .flatten()
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bpf/meshlane.h defines no number {name}"))
    }

    #[test]
    fn constants_match_the_header() {
        assert_eq!(MAX_PORTS, header_define("ML_MAX_PORTS"));
        assert_eq!(MAX_CIDRS, header_define("ML_MAX_CIDRS"));
        assert_eq!(POD_NAME_LEN, header_define("ML_POD_NAME_LEN"));
        assert_eq!(COUNTER_SLOTS, header_define("ML_COUNTER_SLOTS"));
        assert_eq!(
            crate::datapath::layout::LAYOUT_VERSION as usize,
            header_define("MESHLANE_LAYOUT_VERSION")
        );
    }

    #[test]
    fn objects_carry_the_header_values() {
        use libbpf_rs::skel::SkelBuilder;
        let mut obj = std::mem::MaybeUninit::uninit();
        let open = crate::datapath::skel::splice::SpliceSkelBuilder::default()
            .open(&mut obj)
            .unwrap();
        let ro = open.maps.rodata_data.as_deref().unwrap();
        assert_eq!(
            ro.ml_layout_version,
            crate::datapath::layout::LAYOUT_VERSION
        );
        assert_eq!(open.maps.ml_counters.max_entries() as usize, COUNTER_SLOTS);
    }

    #[test]
    fn cidr_prefix_is_over_128_bits() {
        let c = cidr_from("10.0.0.0".parse().unwrap(), 8);
        assert_eq!(c.prefix_len, 104);
        assert_eq!(cidr_to_string(&c), "10.0.0.0/8");
    }
}
