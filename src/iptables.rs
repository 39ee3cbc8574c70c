//! Does a pod's netns already hold istio-init's nat rules? (Issue 3,
//! coexistence: such a pod keeps them and gets splicing only.) Asked
//! without running any tool, from a thread inside the netns:
//!
//! - nf_tables (iptables-nft, nft): a netlink dump of every chain; a chain
//!   named `ISTIO_*` in a table named `nat` counts.
//! - legacy x_tables: only when /proc/thread-self/net/ip{,6}_tables_names
//!   lists `nat` (so asking never loads a table module), the nat table's
//!   entries are read with IPT_SO_GET_ENTRIES / IP6T_SO_GET_ENTRIES and a
//!   user chain (an ERROR target) named `ISTIO_*` counts.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::netns::{self, NetnsError};

#[derive(Debug, Error)]
pub enum IptablesError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("reading the netfilter rules of {netns}: {what}: {source}")]
    Read {
        netns: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// The istio-init chains found in one netns, as "<family> <table> <chain>".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IstioNat {
    pub chains: Vec<String>,
}

impl IstioNat {
    pub fn present(&self) -> bool {
        !self.chains.is_empty()
    }
}

const CHAIN_PREFIX: &str = "ISTIO_";

/// Looks for istio-init nat chains in the netns at `path`.
pub fn inspect(path: &Path) -> Result<IstioNat, IptablesError> {
    let p = path.to_path_buf();
    netns::in_netns(path, move || {
        let err = |what: &'static str| {
            let netns = p.clone();
            move |source| IptablesError::Read {
                netns,
                what,
                source,
            }
        };
        let mut chains = nft_istio_chains().map_err(err("nf_tables chain dump"))?;
        chains.extend(legacy_istio_chains(false).map_err(err("legacy iptables nat table"))?);
        chains.extend(legacy_istio_chains(true).map_err(err("legacy ip6tables nat table"))?);
        Ok(IstioNat { chains })
    })?
}

// ---- nf_tables over netlink -------------------------------------------

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        10 => "ip6",
        _ => "other",
    }
}

fn nl_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Chains named ISTIO_* in nf_tables tables named "nat".
fn nft_istio_chains() -> std::io::Result<Vec<String>> {
    let sock = match nl_socket() {
        Ok(s) => s,
        // No nfnetlink in this kernel: no nf_tables rules either.
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN;
    req[4..6].copy_from_slice(&ty.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    // seq 1, pid 0; nfgenmsg: family UNSPEC (all), version 0, res_id 0.
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: valid fd and buffer.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let data = &buf[..n as usize];
        let mut off = 0;
        while off + NLMSG_HDRLEN <= data.len() {
            let mlen =
                u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
            let mty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap_or_default());
            if mlen < NLMSG_HDRLEN || off + mlen > data.len() {
                return Err(std::io::Error::other("truncated netlink message"));
            }
            let msg = &data[off..off + mlen];
            match mty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(msg[16..20].try_into().unwrap_or_default());
                    if code == 0 {
                        return Ok(out);
                    }
                    // nf_tables not loaded in this kernel: nothing to find.
                    if -code == libc::EPROTONOSUPPORT || -code == libc::ENOENT {
                        return Ok(out);
                    }
                    return Err(std::io::Error::from_raw_os_error(-code));
                }
                _ => {
                    if let Some(c) = parse_chain(msg) {
                        out.push(c);
                    }
                }
            }
            off += (mlen + 3) & !3;
        }
    }
}

/// "<family> nat <chain>" for an ISTIO_* chain of a nat table.
fn parse_chain(msg: &[u8]) -> Option<String> {
    let family = *msg.get(NLMSG_HDRLEN)?;
    let mut off = NLMSG_HDRLEN + NFGENMSG_LEN;
    let (mut table, mut name) = (None, None);
    while off + 4 <= msg.len() {
        let alen = u16::from_ne_bytes(msg[off..off + 2].try_into().ok()?) as usize;
        let aty = u16::from_ne_bytes(msg[off + 2..off + 4].try_into().ok()?) & 0x3fff;
        if alen < 4 || off + alen > msg.len() {
            break;
        }
        let payload = &msg[off + 4..off + alen];
        match aty {
            NFTA_CHAIN_TABLE => table = Some(c_string(payload)),
            NFTA_CHAIN_NAME => name = Some(c_string(payload)),
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    let (table, name) = (table?, name?);
    (table == "nat" && name.starts_with(CHAIN_PREFIX))
        .then(|| format!("{} nat {name}", family_name(family)))
}

// ---- legacy x_tables ----------------------------------------------------

const IPT_SO_GET_INFO: libc::c_int = 64;
const IPT_SO_GET_ENTRIES: libc::c_int = 65;
const TABLE_NAME_LEN: usize = 32;
/// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5],
/// num_entries, size.
const GETINFO_LEN: usize = TABLE_NAME_LEN + 4 + 20 + 20 + 4 + 4;

/// Sizes of struct ipt_entry / ip6t_entry and where target_offset and
/// next_offset sit in them.
struct EntryLayout {
    target_offset_at: usize,
}

const IPT_ENTRY: EntryLayout = EntryLayout {
    target_offset_at: 84 + 4, // struct ipt_ip, nfcache
};
const IP6T_ENTRY: EntryLayout = EntryLayout {
    target_offset_at: 136 + 4, // struct ip6t_ip6, nfcache
};

fn legacy_istio_chains(v6: bool) -> std::io::Result<Vec<String>> {
    let names = if v6 {
        "/proc/thread-self/net/ip6_tables_names"
    } else {
        "/proc/thread-self/net/ip_tables_names"
    };
    let loaded = std::fs::read_to_string(names).unwrap_or_default();
    if !loaded.lines().any(|l| l.trim() == "nat") {
        return Ok(Vec::new());
    }
    let (domain, level) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_IPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_IP)
    };
    // SAFETY: plain socket(2); owned at once.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = [0u8; GETINFO_LEN];
    info[..3].copy_from_slice(b"nat");
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length (IP6T_SO_GET_INFO has the same value).
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            IPT_SO_GET_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let size = u32::from_ne_bytes(info[GETINFO_LEN - 4..].try_into().unwrap_or_default()) as usize;
    // struct ipt_get_entries: name[32], size, then the entries (8-aligned).
    let head = TABLE_NAME_LEN + 8;
    let mut entries = vec![0u8; head + size];
    entries[..3].copy_from_slice(b"nat");
    entries[TABLE_NAME_LEN..TABLE_NAME_LEN + 4].copy_from_slice(&(size as u32).to_ne_bytes());
    let mut len = entries.len() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            IPT_SO_GET_ENTRIES,
            entries.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let layout = if v6 { &IP6T_ENTRY } else { &IPT_ENTRY };
    let family = if v6 { "ip6" } else { "ip" };
    Ok(user_chains(&entries[head..], layout)
        .into_iter()
        .filter(|c| c.starts_with(CHAIN_PREFIX))
        .map(|c| format!("{family} nat {c} (legacy)"))
        .collect())
}

/// Names of the user chains: each starts with an entry whose target is
/// "ERROR" and whose target data is the chain name.
fn user_chains(table: &[u8], layout: &EntryLayout) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + layout.target_offset_at + 4 <= table.len() {
        let at = off + layout.target_offset_at;
        let target_offset = u16::from_ne_bytes([table[at], table[at + 1]]) as usize;
        let next_offset = u16::from_ne_bytes([table[at + 2], table[at + 3]]) as usize;
        if next_offset == 0 {
            break;
        }
        // struct xt_entry_target: u16 target_size, char name[29], u8 revision, data.
        let t = off + target_offset;
        if t + 32 + TABLE_NAME_LEN <= table.len() && c_string(&table[t + 2..t + 31]) == "ERROR" {
            let chain = c_string(&table[t + 32..t + 32 + TABLE_NAME_LEN]);
            if chain != "ERROR" {
                out.push(chain);
            }
        }
        off += next_offset;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_nft_chain_message() {
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m.extend_from_slice(&[2, 0, 0, 0]); // family ip
        for (ty, s) in [(NFTA_CHAIN_TABLE, "nat"), (NFTA_CHAIN_NAME, "ISTIO_OUTPUT")] {
            let mut p = s.as_bytes().to_vec();
            p.push(0);
            let alen = 4 + p.len();
            m.extend_from_slice(&(alen as u16).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(&p);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        }
        assert_eq!(parse_chain(&m).as_deref(), Some("ip nat ISTIO_OUTPUT"));
        // Same chain name in a filter table does not count.
        let i = m.windows(3).position(|w| w == b"nat").unwrap();
        let mut filter = m.clone();
        filter[i..i + 3].copy_from_slice(b"raw");
        assert_eq!(parse_chain(&filter), None);
    }
}
