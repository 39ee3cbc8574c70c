//! Crafted TCP retransmissions that overlap bytes a receiver already has.
//!
//! Owns reading a connection's sequence numbers with TCP_REPAIR and
//! injecting hand-built IPv4 segments, through a raw socket, that look as if
//! the sender had retransmitted: a segment whose head is old and whose tail
//! is new, an out-of-order piece later overtaken by an in-order piece that
//! overlaps it, or a wholly old duplicate. A correct TCP receiver delivers
//! each byte once; the probes and tests use this to catch receive paths
//! that deliver an overlapping head twice.
//!
//! IPv4 only. Everything here needs CAP_NET_ADMIN (TCP_REPAIR) and
//! CAP_NET_RAW (the raw socket) in the sender's network namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};

/// Fills the bytes of an injection that the receiver already has, so that
/// a receiver delivering them a second time shows it as corruption.
pub const MARKER: u8 = 0xEE;

/// Upper bound on one crafted IPv4 packet (headers included), below the
/// 65,535-byte IPv4 limit and loopback's 65,536-byte MTU.
pub const MAX_PACKET: usize = 65_000;

const IP_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
/// The largest payload one crafted segment carries.
pub const MAX_SEGMENT_PAYLOAD: usize = MAX_PACKET - IP_HEADER_LEN - TCP_HEADER_LEN;

/// How long the out-of-order piece of [`OverlapKind::OutOfOrder`] is given
/// to reach the receiver's out-of-order queue before the in-order piece.
const OUT_OF_ORDER_GAP: Duration = Duration::from_millis(20);

// linux/tcp.h: the queue selected by TCP_REPAIR_QUEUE, and the value of
// TCP_REPAIR that leaves repair mode without sending a window probe.
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

const TCP_FLAG_SYN: u16 = 0x02;
const TCP_FLAG_PSH: u16 = 0x08;
const TCP_FLAG_ACK: u16 = 0x10;
const IP_FLAG_DF: u16 = 0x4000;
const TTL: u8 = 64;
const WINDOW: u16 = 65_535;

/// Send-side sequence state of an established socket, read with TCP_REPAIR (needs CAP_NET_ADMIN in the socket's netns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeqs {
    /// The sequence number after the last byte the application wrote
    /// (`tp->write_seq`); equals the peer's `rcv_nxt` once all is acknowledged.
    pub write_seq: u32,
    /// The next sequence number this socket expects from its peer
    /// (`tp->rcv_nxt`): the acknowledgement a retransmission would carry.
    pub rcv_nxt: u32,
}

/// Which already-received bytes an injection overlaps, relative to the
/// sender's `write_seq` (the receiver's `rcv_nxt` when the sender is idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapKind {
    /// one segment [write_seq-old, write_seq+new): its first `old` bytes were already received
    Prefix { old: u32, new: u32 },
    /// first an out-of-order piece [write_seq+old, write_seq+old+new) then an in-order piece [write_seq, write_seq+2*old) that overlaps it by `old` (needs new > old)
    OutOfOrder { old: u32, new: u32 },
    /// one segment [write_seq-old, write_seq): nothing new at all
    WhollyOld { old: u32 },
}

impl OverlapKind {
    /// How many bytes the receiver must get from this injection.
    pub fn new_bytes(&self) -> usize {
        match *self {
            Self::Prefix { new, .. } => new as usize,
            Self::OutOfOrder { old, new } => old as usize + new as usize,
            Self::WhollyOld { .. } => 0,
        }
    }
}

/// One crafted segment: its first sequence number and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    seq: u32,
    payload: Vec<u8>,
}

/// Leaves repair mode on drop, so an error half-way never leaves the
/// socket in it (a socket in repair mode sends nothing).
struct RepairMode<'a>(BorrowedFd<'a>);

impl<'a> RepairMode<'a> {
    fn enter(sock: BorrowedFd<'a>) -> io::Result<Self> {
        set_tcp_opt(sock, libc::TCP_REPAIR, TCP_REPAIR_ON)?;
        Ok(Self(sock))
    }

    /// `tp->write_seq` or `tp->rcv_nxt`, picked with TCP_REPAIR_QUEUE.
    fn queue_seq(&self, queue: libc::c_int) -> io::Result<u32> {
        set_tcp_opt(self.0, libc::TCP_REPAIR_QUEUE, queue)?;
        // The kernel returns the u32 sequence number in an int.
        get_tcp_opt(self.0, libc::TCP_QUEUE_SEQ).map(|v| v as u32)
    }
}

impl Drop for RepairMode<'_> {
    fn drop(&mut self) {
        // TCP_REPAIR_OFF would send a window probe carrying the sender's
        // real sequence numbers; leave quietly instead.
        if let Err(e) = set_tcp_opt(self.0, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP) {
            tracing::warn!(error = %e, "leaving TCP repair mode failed");
        }
    }
}

fn set_tcp_opt(sock: BorrowedFd<'_>, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live int and its size is passed; the fd is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_tcp_opt(sock: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `write_seq` and `rcv_nxt` of an established TCP socket. Repair
/// mode is entered and left (without a window probe) around the reads; the
/// connection carries on unchanged.
pub fn read_seqs(sock: BorrowedFd<'_>) -> io::Result<TcpSeqs> {
    let repair = RepairMode::enter(sock)?;
    Ok(TcpSeqs {
        write_seq: repair.queue_seq(TCP_SEND_QUEUE)?,
        rcv_nxt: repair.queue_seq(TCP_RECV_QUEUE)?,
    })
}

/// Bytes written to `sock` that the peer has not acknowledged yet,
/// unsent ones included (SIOCOUTQ: `write_seq - snd_una`).
pub fn unacked_bytes(sock: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(n).map_err(|_| io::Error::other(format!("SIOCOUTQ returned {n}")))
}

/// Waits until everything written to `sender` is acknowledged, which
/// [`inject`] requires; fails with `TimedOut` after `limit`.
pub fn wait_acked(sender: &TcpStream, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let unacked = unacked_bytes(sender.as_fd())?;
        if unacked == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{unacked} bytes still unacknowledged after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Injects, from the sender's network namespace (the calling thread must be in it), segments as if `sender` had retransmitted.
/// `fresh` (len == kind.new_bytes()) is the content of the new bytes, in stream order; bytes that the receiver already has are filled with the marker 0xEE so that any duplicate delivery is visible as corruption.
/// The sender must be idle (everything it wrote acknowledged) before the call.
///
/// For [`OverlapKind::OutOfOrder`] the overlap is carried by both pieces.
/// The receiver queues the in-order piece whole and then moves the
/// out-of-order one behind it (`tcp_ofo_queue()`), so a correct reader takes
/// the overlap from the in-order piece and skips the out-of-order piece's
/// head (`offset = copied_seq - seq`): that head is the one filled with the
/// marker.
///
/// The segments carry no TCP options. The receiver's netns must have had
/// `net.ipv4.tcp_timestamps=0` when the connection was made: once
/// timestamps are negotiated, a segment without one is not accepted.
/// The receiver acknowledges new bytes the sender never sent, so the
/// connection is not usable for further data afterwards.
///
/// Errors: `Unsupported` for IPv6 sockets, `InvalidInput` for a kind that
/// cannot be built, a `fresh` of the wrong length or a sender with
/// unacknowledged bytes; otherwise the socket calls' errors.
pub fn inject(sender: &TcpStream, kind: OverlapKind, fresh: &[u8]) -> io::Result<()> {
    let (src, dst) = ipv4_ends(sender)?;
    let unacked = unacked_bytes(sender.as_fd())?;
    if unacked != 0 {
        return Err(invalid(format!(
            "the sender has {unacked} unacknowledged bytes; inject needs an idle sender"
        )));
    }
    let seqs = read_seqs(sender.as_fd())?;
    let pieces = plan(kind, seqs.write_seq, fresh)?;
    let raw = raw_socket()?;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(OUT_OF_ORDER_GAP);
        }
        let packet = tcp_ipv4_packet(src, dst, piece.seq, seqs.rcv_nxt, &piece.payload, DATA);
        send_raw(raw.as_fd(), &packet, *dst.ip())?;
    }
    Ok(())
}

/// The sender's local and peer addresses, IPv4 only.
fn ipv4_ends(sender: &TcpStream) -> io::Result<(SocketAddrV4, SocketAddrV4)> {
    match (sender.local_addr()?, sender.peer_addr()?) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => Ok((src, dst)),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "overlap injection supports IPv4 sockets only",
        )),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The segments of an injection, in sending order.
fn plan(kind: OverlapKind, write_seq: u32, fresh: &[u8]) -> io::Result<Vec<Piece>> {
    if fresh.len() != kind.new_bytes() {
        return Err(invalid(format!(
            "{kind:?} needs {} fresh bytes, got {}",
            kind.new_bytes(),
            fresh.len()
        )));
    }
    let largest = largest_piece(kind);
    if largest > MAX_SEGMENT_PAYLOAD as u64 {
        return Err(invalid(format!(
            "{kind:?} needs a {largest}-byte segment; at most {MAX_SEGMENT_PAYLOAD} fit"
        )));
    }
    let pieces = match kind {
        OverlapKind::Prefix { old, .. } => vec![old_then_fresh(write_seq, old, fresh)],
        OverlapKind::WhollyOld { old: 0 } => {
            return Err(invalid("WhollyOld needs at least one old byte".into()))
        }
        OverlapKind::WhollyOld { old } => vec![old_then_fresh(write_seq, old, fresh)],
        OverlapKind::OutOfOrder { old, new } if new <= old => {
            return Err(invalid(format!(
                "OutOfOrder needs new > old (got old {old}, new {new})"
            )))
        }
        OverlapKind::OutOfOrder { old, .. } => out_of_order(write_seq, old as usize, fresh),
    };
    Ok(pieces)
}

/// The payload of the largest segment `kind` needs (checked before any
/// buffer is allocated).
fn largest_piece(kind: OverlapKind) -> u64 {
    match kind {
        OverlapKind::Prefix { old, new } => u64::from(old) + u64::from(new),
        OverlapKind::WhollyOld { old } => u64::from(old),
        OverlapKind::OutOfOrder { old, new } => u64::from(new).max(2 * u64::from(old)),
    }
}

/// One segment starting `old` bytes before `write_seq`: the old bytes as
/// markers, then the fresh ones.
fn old_then_fresh(write_seq: u32, old: u32, fresh: &[u8]) -> Piece {
    let mut payload = vec![MARKER; old as usize];
    payload.extend_from_slice(fresh);
    Piece {
        seq: write_seq.wrapping_sub(old),
        payload,
    }
}

/// The out-of-order piece [old, old+new) with its overlapping head
/// [old, 2*old) as markers, then the in-order piece [0, 2*old).
fn out_of_order(write_seq: u32, old: usize, fresh: &[u8]) -> Vec<Piece> {
    let mut ahead = vec![MARKER; old];
    ahead.extend_from_slice(&fresh[2 * old..]);
    vec![
        Piece {
            seq: write_seq.wrapping_add(old as u32),
            payload: ahead,
        },
        Piece {
            seq: write_seq,
            payload: fresh[..2 * old].to_vec(),
        },
    ]
}

/// The RFC 1071 checksum of `bytes` (an odd last byte is padded with zero).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Flags of a data segment.
const DATA: u16 = TCP_FLAG_ACK | TCP_FLAG_PSH;

/// The TCP header (no options) for `payload`, checksummed over the IPv4
/// pseudo-header.
fn tcp_header(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    payload: &[u8],
    flags: u16,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(TCP_HEADER_LEN);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    let offset_flags = ((TCP_HEADER_LEN as u16 / 4) << 12) | flags;
    tcp.extend_from_slice(&offset_flags.to_be_bytes());
    tcp.extend_from_slice(&WINDOW.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer

    let tcp_len = (TCP_HEADER_LEN + payload.len()) as u16;
    let mut summed = Vec::with_capacity(12 + tcp_len as usize);
    summed.extend_from_slice(&src.ip().octets());
    summed.extend_from_slice(&dst.ip().octets());
    summed.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    summed.extend_from_slice(&tcp_len.to_be_bytes());
    summed.extend_from_slice(&tcp);
    summed.extend_from_slice(payload);
    tcp[16..18].copy_from_slice(&checksum(&summed).to_be_bytes());
    tcp
}

/// The IPv4 header (DF set, no options) of a TCP packet of `total_len` bytes.
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, total_len: u16) -> Vec<u8> {
    let mut ip = Vec::with_capacity(IP_HEADER_LEN);
    ip.push(0x40 | (IP_HEADER_LEN / 4) as u8); // version 4, header length
    ip.push(0); // DSCP/ECN
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0]); // identification: filled by the kernel when 0
    ip.extend_from_slice(&IP_FLAG_DF.to_be_bytes());
    ip.push(TTL);
    ip.push(libc::IPPROTO_TCP as u8);
    ip.extend_from_slice(&[0, 0]); // checksum, below
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// A whole IPv4 packet: headers and payload, ready for an IPPROTO_RAW socket.
/// The caller keeps it under [`MAX_PACKET`].
fn tcp_ipv4_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    payload: &[u8],
    flags: u16,
) -> Vec<u8> {
    let total = IP_HEADER_LEN + TCP_HEADER_LEN + payload.len();
    let mut packet = ipv4_header(*src.ip(), *dst.ip(), total as u16);
    packet.extend_from_slice(&tcp_header(src, dst, seq, ack, payload, flags));
    packet.extend_from_slice(payload);
    packet
}

/// An IPPROTO_RAW socket: IP_HDRINCL is implied, the packet goes out as
/// built (the kernel only fills a zero IP identification).
fn raw_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    )
    .map_err(io::Error::from)
}

fn send_raw(raw: BorrowedFd<'_>, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    // The port of the destination address is ignored by raw IPv4 sockets.
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let sent = sendto(raw.as_raw_fd(), packet, &to, MsgFlags::empty())?;
    if sent == packet.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "raw socket sent {sent} of {} bytes",
            packet.len()
        )))
    }
}

/// Sends one bare SYN from each of `sources` to `dst` through a raw socket
/// of the calling thread's netns (spoofed sources: nothing answers the
/// SYN-ACKs, so each leaves a half-open connection or a SYN cookie).
/// Returns how many were sent.
pub fn send_syns(
    dst: SocketAddrV4,
    sources: impl IntoIterator<Item = SocketAddrV4>,
) -> io::Result<usize> {
    let raw = raw_socket()?;
    let mut sent = 0;
    for src in sources {
        let seq = u32::from(src.port()).wrapping_mul(2_654_435_761);
        let packet = tcp_ipv4_packet(src, dst, seq, 0, &[], TCP_FLAG_SYN);
        send_raw(raw.as_fd(), &packet, *dst.ip())?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::behaviour::{overlap_run, ReceiverSetup};
    use crate::probe::bpf::pass_verdict_prog;

    const PREFIX: OverlapKind = OverlapKind::Prefix {
        old: 2896,
        new: 1448,
    };
    const OUT_OF_ORDER: OverlapKind = OverlapKind::OutOfOrder {
        old: 2896,
        new: 4344,
    };
    const WHOLLY_OLD: OverlapKind = OverlapKind::WhollyOld { old: 2896 };

    #[test]
    fn new_bytes_per_kind() {
        assert_eq!(PREFIX.new_bytes(), 1448);
        assert_eq!(OUT_OF_ORDER.new_bytes(), 2896 + 4344);
        assert_eq!(WHOLLY_OLD.new_bytes(), 0);
    }

    #[test]
    fn plan_places_markers_on_the_bytes_a_reader_must_skip() {
        let fresh: Vec<u8> = (0..7u8).collect();
        let p = plan(OverlapKind::Prefix { old: 3, new: 7 }, 100, &fresh).expect("plan");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].seq, 97);
        assert_eq!(&p[0].payload[..3], &[MARKER; 3]);
        assert_eq!(&p[0].payload[3..], &fresh[..]);

        let fresh: Vec<u8> = (0..8u8).collect(); // old 3 + new 5
        let p = plan(OverlapKind::OutOfOrder { old: 3, new: 5 }, 100, &fresh).expect("plan");
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].seq, p[0].payload.as_slice()),
            (103, &[MARKER, MARKER, MARKER, 6, 7][..])
        );
        assert_eq!(
            (p[1].seq, p[1].payload.as_slice()),
            (100, &[0, 1, 2, 3, 4, 5][..])
        );

        let p = plan(OverlapKind::WhollyOld { old: 4 }, 2, &[]).expect("plan");
        assert_eq!((p[0].seq, p[0].payload.len()), (u32::MAX - 1, 4));
    }

    #[test]
    fn plan_rejects_what_cannot_be_built() {
        let bad = |kind, n: usize| plan(kind, 0, &vec![0; n]).unwrap_err().kind();
        assert_eq!(bad(PREFIX, 10), io::ErrorKind::InvalidInput);
        assert_eq!(
            bad(OverlapKind::OutOfOrder { old: 5, new: 5 }, 10),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            bad(OverlapKind::WhollyOld { old: 0 }, 0),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            bad(
                OverlapKind::Prefix {
                    old: 1,
                    new: 65_000
                },
                65_000
            ),
            io::ErrorKind::InvalidInput
        );
        // Checked before the marker buffer is allocated.
        assert_eq!(
            bad(OverlapKind::WhollyOld { old: u32::MAX }, 0),
            io::ErrorKind::InvalidInput
        );
        let largest = OverlapKind::WhollyOld {
            old: MAX_SEGMENT_PAYLOAD as u32,
        };
        assert!(plan(largest, 0, &[]).is_ok());
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // A header carrying its own checksum sums to zero.
        let ip = ipv4_header(Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 1, 2, 3), 1500);
        assert_eq!(checksum(&ip), 0);
    }

    #[test]
    fn ipv6_is_unsupported() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback here: nothing to check
        };
        let addr = listener.local_addr().expect("addr");
        let sender = TcpStream::connect(addr).expect("connect");
        let err = inject(&sender, PREFIX, &[0; 1448]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// Without a sockhash every kind reads exactly the expected stream: the
    /// injection was accepted (the new bytes arrived) and the old bytes were
    /// not delivered again.
    #[test]
    fn plain_socket_reads_every_overlap_exactly_once() {
        if crate::probe::behaviour::skip_without_root() {
            return;
        }
        for kind in [PREFIX, OUT_OF_ORDER, WHOLLY_OLD] {
            let run = overlap_run(ReceiverSetup::Plain, kind).expect("overlap experiment");
            assert_eq!(run.extra_bytes(), 0, "{kind:?}: {run:?}");
            assert!(
                run.exact(),
                "{kind:?}: the new bytes did not arrive intact: {run:?}"
            );
        }
    }

    /// The negative control: with a pass-through stream verdict this kernel
    /// delivers the marker-filled old bytes again, where a correct reader
    /// skips them, and the check sees it.
    #[test]
    fn pass_verdict_reads_the_old_head_twice() {
        if crate::probe::behaviour::skip_without_root() {
            return;
        }
        if !crate::probe::kernel_release().starts_with("6.18.44") {
            return; // measured there; a fixed kernel has no negative control
        }
        let verdict = pass_verdict_prog().expect("load pass verdict");
        let base = 8192;
        // Where the marker bytes land in the stream the reader gets.
        for (kind, at) in [(PREFIX, base), (OUT_OF_ORDER, base + 2 * 2896)] {
            let extra = crate::probe::behaviour::overlap_extra_bytes(Some(verdict.as_fd()), kind)
                .expect("overlap experiment");
            assert_eq!(extra, 2896, "{kind:?}");
            let setup = ReceiverSetup::Sockhash {
                verdict: Some(verdict.try_clone().expect("dup")),
            };
            let run = overlap_run(setup, kind).expect("overlap experiment");
            let mut doubled = run.expected.clone();
            doubled.splice(at..at, [MARKER; 2896]);
            assert!(run.received == doubled, "{kind:?}: {run:?}");
        }
    }
}
