//! Behavioural probes: where a TCP socket in a socket map (it gets a psock
//! and tcp_bpf's proto) behaves differently from plain TCP on the running
//! kernel. Each probe is an experiment, not a version check: it builds a
//! loopback connection in a throwaway network namespace, puts one end in a
//! throwaway sockhash or sockmap with tiny raw-instruction programs, and
//! watches what a reader sees. Owns the scratch-namespace helper, the
//! experiments and [`KernelBehaviour`], their summary.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    connect, recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn,
};
use serde::Serialize;

use super::bpf;
use crate::overlap::{self, OverlapKind};

/// What the running kernel does differently for sockets in a socket map.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct KernelBehaviour {
    /// FIONREAD reports 0 for bytes that reached a sockhash socket (sk_msg program only, no stream verdict) through TCP.
    pub fionread_hidden: bool,
    /// Edge-triggered epoll does not wake for TCP-path bytes of such a socket.
    pub epoll_wakeup_lost: bool,
    /// With a pass-through stream verdict on the map, a retransmitted segment that overlaps bytes already received is delivered with its old head a second time.
    pub overlap_duplicated: bool,
    /// splice(2) from a socket does not see bytes redirected into it (sk_msg redirect with BPF_F_INGRESS): poll says readable, splice says EAGAIN.
    pub splice_read_missing: bool,
    /// Bytes redirected into a socket and not read survive connect(AF_UNSPEC) and are read by the socket's next connection.
    pub disconnect_keeps_bytes: bool,
    /// send(MSG_OOB) redirected by sk_msg arrives in-band: the receiver sees no urgent mark (no POLLPRI) and
    /// recv(MSG_OOB) does not return the urgent byte. It does not fail either: while the psock's ingress queue
    /// holds data, tcp_bpf's recvmsg ignores MSG_OOB and returns (consumes) ordinary in-band bytes.
    pub urgent_inlined: bool,
}

/// Runs every probe, each in its own scratch netns (a few hundred ms in all).
pub fn kernel_behaviour() -> io::Result<KernelBehaviour> {
    Ok(KernelBehaviour {
        fionread_hidden: fionread_hidden_in_sockhash()?,
        epoll_wakeup_lost: epoll_wakeup_lost()?,
        overlap_duplicated: overlap_duplicated()?,
        splice_read_missing: splice_read_missing()?,
        disconnect_keeps_bytes: disconnect_keeps_bytes()?,
        urgent_inlined: urgent_inlined()?,
    })
}

// ---------------------------------------------------------------------------
// The scratch network namespace

/// Per-netns sysctl; a write through /proc/sys/net applies to the netns of
/// the writing thread.
const TCP_TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";

/// Runs `f` on a new thread that first moves into a new, empty network
/// namespace, brings its `lo` up and turns TCP timestamps off there (so
/// that [`overlap::inject`]'s segments are accepted). The calling thread's
/// namespace never changes; the namespace goes away once the thread has
/// ended and `f`'s sockets are closed. Needs CAP_SYS_ADMIN.
pub fn in_scratch_netns<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("ml-scratch-netns".into())
        .spawn(move || {
            enter_scratch_netns()?;
            f()
        })?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn enter_scratch_netns() -> io::Result<()> {
    // Namespaces are per task: unshare moves this thread only.
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("unshare(CLONE_NEWNET): {e}"),
        )
    })?;
    loopback_up()?;
    std::fs::write(TCP_TIMESTAMPS, "0")
        .map_err(|e| io::Error::new(e.kind(), format!("writing {TCP_TIMESTAMPS}: {e}")))
}

/// A zeroed `ifreq` naming `lo`.
fn lo_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers and
    // addresses); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    req
}

/// The current netns's `lo` flags (SIOCGIFFLAGS), with a socket to set
/// them through.
fn loopback_flags() -> io::Result<(OwnedFd, libc::ifreq)> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut req = lo_ifreq();
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((sock, req))
}

/// Sets IFF_UP on the current netns's `lo` (SIOCGIFFLAGS, SIOCSIFFLAGS).
fn loopback_up() -> io::Result<()> {
    let (sock, mut req) = loopback_flags()?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Plumbing shared by the experiments

/// A reader that got what it expected stops after this long without data,
/// so that bytes delivered twice are still counted.
const QUIET: Duration = Duration::from_millis(50);
/// How long any single wait of an experiment may take.
const LIMIT: Duration = Duration::from_secs(1);
/// Time for the rest of a burst to land after the first byte made a socket
/// readable (loopback delivers from a softirq on the sending CPU).
const SETTLE: Duration = Duration::from_millis(20);

/// A connected loopback pair: (client, accepted server side).
fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

/// Polls `sock` for `events`; the events seen, empty on timeout.
fn poll_events(sock: BorrowedFd<'_>, events: PollFlags, limit: Duration) -> io::Result<PollFlags> {
    let mut fds = [PollFd::new(sock, events)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    poll(&mut fds, ms)?;
    Ok(fds[0].revents().unwrap_or(PollFlags::empty()))
}

/// Fails unless `sock` becomes readable within [`LIMIT`], then lets the
/// burst settle.
fn await_readable(sock: BorrowedFd<'_>, what: &str) -> io::Result<()> {
    if poll_events(sock, PollFlags::POLLIN | PollFlags::POLLPRI, LIMIT)?.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: the receiver never became readable"),
        ));
    }
    std::thread::sleep(SETTLE);
    Ok(())
}

/// Reads what arrives on `sock` (switched to non-blocking) until it has at
/// least `want` bytes and nothing more came for [`QUIET`], EOF, or `limit`.
fn read_arrivals(sock: &TcpStream, want: usize, limit: Duration) -> io::Result<Vec<u8>> {
    sock.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_data = Instant::now();
    loop {
        match (&*sock).read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                last_data = Instant::now();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline || (got.len() >= want && now - last_data >= QUIET) {
            return Ok(got);
        }
        poll_events(
            sock.as_fd(),
            PollFlags::POLLIN,
            (deadline - now).min(QUIET / 5),
        )?;
    }
}

/// FIONREAD: the bytes the socket reports as readable.
fn fionread(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| io::Error::other(format!("FIONREAD returned {n}")))
}

/// A stream that shows shifts and duplicates: byte `i` of the stream is
/// `i mod 251` (a prime, so no power-of-two shift maps it onto itself).
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

fn experiment_failed(what: &str, detail: String) -> io::Error {
    io::Error::other(format!("{what}: the experiment did not work: {detail}"))
}

// ---------------------------------------------------------------------------
// Putting sockets into maps

/// Inserts `sock` into a new sockhash that has the pass sk_msg program and,
/// if given, `verdict` as its stream verdict. Bytes then reach `sock`
/// through TCP as before, but its receive path is tcp_bpf's. Dropping the
/// returned map takes the socket out again.
fn sockhash_with(sock: BorrowedFd<'_>, verdict: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    let map = bpf::sockhash(1)?;
    let msg = bpf::pass_msg_prog()?;
    bpf::attach(msg.as_fd(), map.as_fd(), libbpf_sys::BPF_SK_MSG_VERDICT)?;
    if let Some(verdict) = verdict {
        bpf::attach(verdict, map.as_fd(), libbpf_sys::BPF_SK_SKB_STREAM_VERDICT)?;
    }
    bpf::insert(map.as_fd(), 0, sock)?;
    Ok(map)
}

/// How the sender's bytes reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Plain TCP, no map: the control (run by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Tcp,
    /// The sender's sendmsg is redirected by sk_msg into the receiver's
    /// psock ingress queue (BPF_F_INGRESS), as meshlane's splice does.
    Redirected,
}

/// The maps of a redirection; dropping it undoes it.
struct Redirect {
    _source: OwnedFd,
    _target: OwnedFd,
}

/// The receiver goes into slot 0 of a SOCKMAP (a psock, no programs); the
/// sender into a sockhash whose sk_msg program redirects to that slot.
fn redirect_ingress(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<Redirect> {
    let target = bpf::sockmap(1)?;
    bpf::insert(target.as_fd(), 0, to)?;
    let source = bpf::sockhash(1)?;
    let prog = bpf::redirect_ingress_prog(target.as_fd())?;
    bpf::attach(prog.as_fd(), source.as_fd(), libbpf_sys::BPF_SK_MSG_VERDICT)?;
    bpf::insert(source.as_fd(), 0, from)?;
    Ok(Redirect {
        _source: source,
        _target: target,
    })
}

/// Sets up `delivery` from `sender` to `receiver`.
fn deliver(
    delivery: Delivery,
    sender: &TcpStream,
    receiver: &TcpStream,
) -> io::Result<Option<Redirect>> {
    match delivery {
        Delivery::Tcp => Ok(None),
        Delivery::Redirected => redirect_ingress(sender.as_fd(), receiver.as_fd()).map(Some),
    }
}

// ---------------------------------------------------------------------------
// FIONREAD

const FIONREAD_BYTES: usize = 4096;

/// What FIONREAD said about bytes that were then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FionreadOutcome {
    reported: usize,
    read: usize,
}

fn fionread_experiment(in_sockhash: bool) -> io::Result<FionreadOutcome> {
    let (mut client, server) = tcp_pair()?;
    let _map = in_sockhash
        .then(|| sockhash_with(server.as_fd(), None))
        .transpose()?;
    client.write_all(&[0x5a; FIONREAD_BYTES])?;
    await_readable(server.as_fd(), "FIONREAD probe")?;
    let reported = fionread(server.as_fd())?;
    let read = read_arrivals(&server, FIONREAD_BYTES, LIMIT)?.len();
    Ok(FionreadOutcome { reported, read })
}

/// True when FIONREAD reports 0 for bytes waiting on a sockhash socket
/// (pass sk_msg program, no stream verdict) that arrived through TCP.
/// tcp_bpf's FIONREAD counts the psock's ingress queue; without a stream
/// verdict TCP bytes stay on the socket's own receive queue, which a kernel
/// carrying the psock FIONREAD change (6.6.x, 6.12.x, 6.18.x stable) does
/// not count.
pub fn fionread_hidden_in_sockhash() -> io::Result<bool> {
    let o = in_scratch_netns(|| fionread_experiment(true))?;
    if o.read != FIONREAD_BYTES {
        return Err(experiment_failed(
            "FIONREAD probe",
            format!("read {} of {FIONREAD_BYTES} bytes", o.read),
        ));
    }
    Ok(o.reported == 0)
}

// ---------------------------------------------------------------------------
// Edge-triggered epoll

const EPOLL_CHUNK: usize = 4096;
const EPOLL_WAIT_MS: u16 = 200;

/// Whether each of three arrivals woke an edge-triggered epoll: a first
/// one, a second while the first is still unread, a third after draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EpollOutcome {
    woke: [bool; 3],
    read: usize,
}

/// Waits for one edge, then swallows further edges of the same arrival.
fn woke(epoll: &Epoll) -> io::Result<bool> {
    let mut events = [EpollEvent::empty(); 4];
    let n = epoll.wait(&mut events, EPOLL_WAIT_MS)?;
    std::thread::sleep(Duration::from_millis(5));
    epoll.wait(&mut events, 0u16)?;
    Ok(n > 0)
}

fn epoll_experiment(in_sockhash: bool) -> io::Result<EpollOutcome> {
    let (mut client, server) = tcp_pair()?;
    let _map = in_sockhash
        .then(|| sockhash_with(server.as_fd(), None))
        .transpose()?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        server.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    let chunk = [0x5a; EPOLL_CHUNK];
    client.write_all(&chunk)?;
    let first = woke(&epoll)?;
    client.write_all(&chunk)?;
    let second = woke(&epoll)?;
    let mut read = read_arrivals(&server, 2 * EPOLL_CHUNK, LIMIT)?.len();
    client.write_all(&chunk)?;
    let third = woke(&epoll)?;
    read += read_arrivals(&server, EPOLL_CHUNK, LIMIT)?.len();
    Ok(EpollOutcome {
        woke: [first, second, third],
        read,
    })
}

/// True when an edge-triggered epoll misses an arrival of TCP bytes on a
/// sockhash socket (pass sk_msg program, no stream verdict).
pub fn epoll_wakeup_lost() -> io::Result<bool> {
    let o = in_scratch_netns(|| epoll_experiment(true))?;
    if o.read != 3 * EPOLL_CHUNK {
        return Err(experiment_failed(
            "epoll probe",
            format!("read {} of {} bytes", o.read, 3 * EPOLL_CHUNK),
        ));
    }
    Ok(o.woke.contains(&false))
}

// ---------------------------------------------------------------------------
// Overlapping retransmissions

/// Bytes sent normally before the injection.
const OVERLAP_BASE: usize = 8192;

/// The receiving end of an overlap experiment.
#[derive(Debug)]
pub(crate) enum ReceiverSetup {
    /// Not in any map: the kernel's own TCP receive path (the tests' control).
    #[cfg_attr(not(test), allow(dead_code))]
    Plain,
    /// In a sockhash with the pass sk_msg program and this stream verdict.
    Sockhash { verdict: Option<OwnedFd> },
}

/// What an overlap experiment's reader got against what it should have.
pub(crate) struct OverlapRun {
    pub(crate) expected: Vec<u8>,
    pub(crate) received: Vec<u8>,
}

impl OverlapRun {
    /// Bytes read beyond the expected stream (negative: missing).
    pub(crate) fn extra_bytes(&self) -> i64 {
        self.received.len() as i64 - self.expected.len() as i64
    }

    /// The reader got exactly the expected stream.
    pub(crate) fn exact(&self) -> bool {
        self.received == self.expected
    }

    fn first_mismatch(&self) -> Option<usize> {
        let common = self
            .expected
            .iter()
            .zip(&self.received)
            .position(|(a, b)| a != b);
        common.or_else(|| {
            (self.expected.len() != self.received.len())
                .then(|| self.expected.len().min(self.received.len()))
        })
    }
}

impl std::fmt::Debug for OverlapRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlapRun")
            .field("expected", &self.expected.len())
            .field("received", &self.received.len())
            .field("first_mismatch", &self.first_mismatch())
            .finish()
    }
}

fn overlap_experiment(setup: &ReceiverSetup, kind: OverlapKind) -> io::Result<OverlapRun> {
    let (mut client, server) = tcp_pair()?;
    let _map = match setup {
        ReceiverSetup::Plain => None,
        ReceiverSetup::Sockhash { verdict } => Some(sockhash_with(
            server.as_fd(),
            verdict.as_ref().map(AsFd::as_fd),
        )?),
    };
    let sent = pattern(0, OVERLAP_BASE);
    client.write_all(&sent)?;
    overlap::wait_acked(&client, LIMIT)?;
    let fresh = pattern(OVERLAP_BASE, kind.new_bytes());
    overlap::inject(&client, kind, &fresh)?;
    let expected = [sent, fresh].concat();
    let received = read_arrivals(&server, expected.len(), LIMIT)?;
    Ok(OverlapRun { expected, received })
}

/// Runs one overlap experiment in a scratch netns.
pub(crate) fn overlap_run(setup: ReceiverSetup, kind: OverlapKind) -> io::Result<OverlapRun> {
    in_scratch_netns(move || overlap_experiment(&setup, kind))
}

/// Runs the overlap experiment with the given stream-verdict program fd attached to the throwaway sockhash (None = no verdict program, Some(fd) = that program, e.g. meshlane's own verdict program loaded by the caller), for one OverlapKind; returns how many bytes the reader got beyond what it should (0 = exact; negative = missing), or an error.
///
/// The sockhash also has a pass sk_msg program. The caller keeps owning
/// `verdict`; a duplicate of the fd is attached. A reader that got the
/// right number of bytes with the wrong content is an error (`InvalidData`).
pub fn overlap_extra_bytes(verdict: Option<BorrowedFd<'_>>, kind: OverlapKind) -> io::Result<i64> {
    let verdict = verdict.map(|fd| fd.try_clone_to_owned()).transpose()?;
    let run = overlap_run(ReceiverSetup::Sockhash { verdict }, kind)?;
    if run.extra_bytes() == 0 && !run.exact() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{kind:?}: right length, wrong bytes: {run:?}"),
        ));
    }
    Ok(run.extra_bytes())
}

/// True when, with a pass-through stream verdict, a segment overlapping
/// already-received bytes is delivered with its old head again: the
/// verdict path (`tcp_read_skb()`) takes whole skbs off the receive queue
/// without skipping the part before `copied_seq`.
pub fn overlap_duplicated() -> io::Result<bool> {
    let verdict = bpf::pass_verdict_prog()?;
    let kind = OverlapKind::Prefix {
        old: 2896,
        new: 1448,
    };
    Ok(overlap_extra_bytes(Some(verdict.as_fd()), kind)? > 0)
}

// ---------------------------------------------------------------------------
// splice(2)

const SPLICE_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpliceOutcome {
    /// The result of one non-blocking splice into a pipe once poll said readable.
    spliced: Result<usize, Errno>,
    /// Bytes recv(2) got afterwards.
    read_after: usize,
}

/// One non-blocking splice(2) of up to 64 KiB from `sock` into `pipe`.
fn splice_once(sock: BorrowedFd<'_>, pipe: BorrowedFd<'_>) -> Result<usize, Errno> {
    // SAFETY: two borrowed fds, no offsets (NULL: both are streams).
    let n = unsafe {
        libc::splice(
            sock.as_raw_fd(),
            std::ptr::null_mut(),
            pipe.as_raw_fd(),
            std::ptr::null_mut(),
            64 * 1024,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| Errno::last())
}

fn splice_experiment(delivery: Delivery) -> io::Result<SpliceOutcome> {
    let (receiver, mut sender) = tcp_pair()?;
    let _redirect = deliver(delivery, &sender, &receiver)?;
    sender.write_all(&[0x5a; SPLICE_BYTES])?;
    await_readable(receiver.as_fd(), "splice probe")?;
    // tcp_splice_read() waits according to the socket's O_NONBLOCK, not
    // SPLICE_F_NONBLOCK (which only concerns the pipe).
    receiver.set_nonblocking(true)?;
    let (_pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let spliced = splice_once(receiver.as_fd(), pipe_w.as_fd());
    let rest = SPLICE_BYTES - spliced.unwrap_or(0).min(SPLICE_BYTES);
    let read_after = read_arrivals(&receiver, rest, LIMIT)?.len();
    Ok(SpliceOutcome {
        spliced,
        read_after,
    })
}

/// True when splice(2) cannot read bytes redirected into a socket: poll
/// says readable, splice returns EAGAIN, recv(2) gets the bytes.
/// tcp_splice_read() reads the TCP receive queue only; redirected bytes sit
/// on the psock's ingress queue, which only tcp_bpf's recvmsg reads.
pub fn splice_read_missing() -> io::Result<bool> {
    let o = in_scratch_netns(|| splice_experiment(Delivery::Redirected))?;
    match o.spliced {
        Ok(n) if n > 0 => Ok(false),
        Err(Errno::EAGAIN) if o.read_after == SPLICE_BYTES => Ok(true),
        _ => Err(experiment_failed("splice probe", format!("{o:?}"))),
    }
}

// ---------------------------------------------------------------------------
// connect(AF_UNSPEC)

const FIRST_CONNECTION: u8 = 0xA1;
const SECOND_CONNECTION: u8 = 0xB2;
const DISCONNECT_BYTES: usize = 1024;
const RECONNECT_BYTES: usize = 512;

/// Disconnects a TCP socket the way connect(2) with AF_UNSPEC does
/// (`tcp_disconnect()`): it is closed and may connect again.
fn disconnect(sock: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: sockaddr is plain data; all-zero with the family set is a
    // valid AF_UNSPEC address.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: a live sockaddr and its size.
    if unsafe { libc::connect(sock.as_raw_fd(), &addr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect_again(sock: BorrowedFd<'_>, to: SocketAddr) -> io::Result<()> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 only"));
    };
    connect(sock.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(())
}

/// What a socket read on its second connection after unread bytes of the
/// first were left behind by connect(AF_UNSPEC).
fn disconnect_experiment(delivery: Delivery) -> io::Result<Vec<u8>> {
    let (receiver, mut sender) = tcp_pair()?;
    let _redirect = deliver(delivery, &sender, &receiver)?;
    sender.write_all(&[FIRST_CONNECTION; DISCONNECT_BYTES])?;
    await_readable(receiver.as_fd(), "disconnect probe")?;
    disconnect(receiver.as_fd())?;
    let second = TcpListener::bind("127.0.0.1:0")?;
    connect_again(receiver.as_fd(), second.local_addr()?)?;
    let (mut peer, _) = second.accept()?;
    peer.write_all(&[SECOND_CONNECTION; RECONNECT_BYTES])?;
    read_arrivals(&receiver, RECONNECT_BYTES, LIMIT)
}

/// True when bytes redirected into a socket and not read survive
/// connect(AF_UNSPEC) and are read on the socket's next connection.
/// Plain TCP purges its receive queue in `tcp_disconnect()`; the psock's
/// ingress queue is not touched there, and a socket that stays in its map
/// keeps its psock (and tcp_bpf's recvmsg) into the next connection.
pub fn disconnect_keeps_bytes() -> io::Result<bool> {
    let got = in_scratch_netns(|| disconnect_experiment(Delivery::Redirected))?;
    let second = got.iter().filter(|&&b| b == SECOND_CONNECTION).count();
    if second != RECONNECT_BYTES {
        return Err(experiment_failed(
            "disconnect probe",
            format!("the second connection delivered {second} of {RECONNECT_BYTES} bytes"),
        ));
    }
    Ok(got.contains(&FIRST_CONNECTION))
}

// ---------------------------------------------------------------------------
// Urgent data

const IN_BAND: &[u8] = b"abc";
const URGENT: u8 = b'!';

#[derive(Debug, Clone, PartialEq, Eq)]
struct UrgentOutcome {
    /// poll(2) reported POLLPRI (urgent data pending).
    pri: bool,
    /// recv(MSG_OOB) of one byte (MSG_DONTWAIT), before any in-band read:
    /// the urgent byte, or why there was none.
    oob: Result<u8, Errno>,
    /// Everything read in-band afterwards.
    in_band: Vec<u8>,
}

impl UrgentOutcome {
    /// Every byte the reader got, in the order it got them.
    fn stream(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.oob.iter().copied().collect();
        all.extend_from_slice(&self.in_band);
        all
    }
}

fn urgent_experiment(delivery: Delivery) -> io::Result<UrgentOutcome> {
    let (receiver, sender) = tcp_pair()?;
    sender.set_nodelay(true)?;
    let _redirect = deliver(delivery, &sender, &receiver)?;
    send(sender.as_raw_fd(), IN_BAND, MsgFlags::empty())?;
    send(sender.as_raw_fd(), &[URGENT], MsgFlags::MSG_OOB)?;
    await_readable(receiver.as_fd(), "urgent probe")?;
    let pri = poll_events(receiver.as_fd(), PollFlags::POLLPRI, Duration::ZERO)?
        .contains(PollFlags::POLLPRI);
    let mut byte = [0u8; 1];
    let oob = recv(
        receiver.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_OOB | MsgFlags::MSG_DONTWAIT,
    )
    .map(|_| byte[0]);
    let in_band = read_arrivals(&receiver, IN_BAND.len(), LIMIT)?;
    Ok(UrgentOutcome { pri, oob, in_band })
}

/// True when a send(MSG_OOB) that sk_msg redirects arrives as ordinary
/// in-band data: no POLLPRI, and the reader gets the urgent byte in stream
/// order after the in-band bytes. tcp_bpf's sendmsg moves the payload into
/// the target psock's ingress queue and drops the flag (the urgent pointer
/// is a TCP header field; no header is built). On the receiving side
/// tcp_bpf's recvmsg ignores MSG_OOB while that queue holds data, so
/// recv(MSG_OOB) does not fail: it returns (and consumes) ordinary bytes.
pub fn urgent_inlined() -> io::Result<bool> {
    let o = in_scratch_netns(|| urgent_experiment(Delivery::Redirected))?;
    let sent = [IN_BAND, &[URGENT]].concat();
    if o.pri || o.oob == Ok(URGENT) {
        return Ok(false);
    }
    if o.stream() == sent {
        Ok(true)
    } else {
        Err(experiment_failed("urgent probe", format!("{o:?}")))
    }
}

#[cfg(test)]
/// The experiments unshare a network namespace: root only. Without
/// it a test says so and passes, so `cargo test` as a user runs the
/// rest (the root suites and the kernel matrix run these as root).
pub(crate) fn skip_without_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("meshlane-skip: needs root (the experiment unshares a network namespace)");
    }
    !root
}

#[cfg(test)]
mod tests {
    //! Root tests: every experiment runs against the running kernel. The
    //! controls prove an experiment can see the plain-TCP answer; the
    //! kernel-specific values are asserted on the kernel they were measured
    //! on and printed elsewhere.
    use super::*;

    /// The kernel the expected values below were measured on.
    const MEASURED_ON: &str = "6.18.44";

    fn on_measured_kernel() -> bool {
        crate::probe::kernel_release().starts_with(MEASURED_ON)
    }

    fn netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("own netns")
            .ino()
    }

    #[test]
    fn scratch_netns_is_private_and_ready() {
        if skip_without_root() {
            return;
        }
        let before = netns_inode();
        let host_ts = std::fs::read_to_string(TCP_TIMESTAMPS).expect("read sysctl");
        let (inner, ts, lo_flags) = in_scratch_netns(|| {
            let (_sock, req) = loopback_flags()?;
            // SAFETY: SIOCGIFFLAGS succeeded: the union holds the flags.
            let flags = unsafe { req.ifr_ifru.ifru_flags };
            Ok((
                netns_inode(),
                std::fs::read_to_string(TCP_TIMESTAMPS)?,
                flags,
            ))
        })
        .expect("scratch netns");
        assert_ne!(inner, before, "the closure ran in the caller's netns");
        assert_eq!(netns_inode(), before, "the caller's netns changed");
        assert_eq!(ts.trim(), "0");
        assert_ne!(lo_flags & libc::IFF_UP as libc::c_short, 0, "lo is down");
        assert_eq!(
            std::fs::read_to_string(TCP_TIMESTAMPS).expect("read sysctl"),
            host_ts
        );
    }

    #[test]
    fn scratch_netns_passes_errors_back() {
        if skip_without_root() {
            return;
        }
        let err =
            in_scratch_netns(|| -> io::Result<()> { Err(io::Error::other("boom")) }).unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn fionread_probe() {
        if skip_without_root() {
            return;
        }
        let plain = in_scratch_netns(|| fionread_experiment(false)).expect("control");
        assert_eq!(
            plain,
            FionreadOutcome {
                reported: FIONREAD_BYTES,
                read: FIONREAD_BYTES
            }
        );
        let hidden = fionread_hidden_in_sockhash().expect("FIONREAD probe");
        if on_measured_kernel() {
            assert!(hidden, "FIONREAD shows sockhash bytes on {MEASURED_ON}");
        }
    }

    #[test]
    fn epoll_probe() {
        if skip_without_root() {
            return;
        }
        let plain = in_scratch_netns(|| epoll_experiment(false)).expect("control");
        assert_eq!(
            plain,
            EpollOutcome {
                woke: [true; 3],
                read: 3 * EPOLL_CHUNK
            }
        );
        let lost = epoll_wakeup_lost().expect("epoll probe");
        if on_measured_kernel() {
            assert!(
                !lost,
                "edge-triggered epoll woke for every arrival on {MEASURED_ON}"
            );
        }
    }

    #[test]
    fn overlap_probe() {
        if skip_without_root() {
            return;
        }
        let duplicated = overlap_duplicated().expect("overlap probe");
        if on_measured_kernel() {
            assert!(
                duplicated,
                "the overlapping head was delivered once on {MEASURED_ON}"
            );
        }
        // The sk_msg program alone leaves TCP's receive path in charge.
        let prefix = OverlapKind::Prefix {
            old: 2896,
            new: 1448,
        };
        assert_eq!(overlap_extra_bytes(None, prefix).expect("sk_msg only"), 0);
    }

    #[test]
    fn overlap_wholly_old_is_dropped_even_with_a_verdict() {
        if skip_without_root() {
            return;
        }
        // tcp_data_queue() drops a segment that ends at or before rcv_nxt
        // before any data_ready: the verdict path never sees it.
        let verdict = bpf::pass_verdict_prog().expect("load");
        let extra =
            overlap_extra_bytes(Some(verdict.as_fd()), OverlapKind::WhollyOld { old: 2896 });
        assert_eq!(extra.expect("overlap experiment"), 0);
    }

    #[test]
    fn splice_probe() {
        if skip_without_root() {
            return;
        }
        let plain = in_scratch_netns(|| splice_experiment(Delivery::Tcp)).expect("control");
        let n = plain.spliced.expect("splice works on a plain TCP socket");
        assert_eq!(n + plain.read_after, SPLICE_BYTES);
        assert!(n > 0);
        let missing = splice_read_missing().expect("splice probe");
        if on_measured_kernel() {
            assert!(missing, "splice saw redirected bytes on {MEASURED_ON}");
        }
    }

    #[test]
    fn disconnect_probe() {
        if skip_without_root() {
            return;
        }
        // Plain TCP purges the receive queue on disconnect; the second
        // connection works and delivers only its own bytes.
        let plain = in_scratch_netns(|| disconnect_experiment(Delivery::Tcp)).expect("control");
        assert_eq!(plain, vec![SECOND_CONNECTION; RECONNECT_BYTES]);
        let redirected =
            in_scratch_netns(|| disconnect_experiment(Delivery::Redirected)).expect("redirected");
        let keeps = disconnect_keeps_bytes().expect("disconnect probe");
        if on_measured_kernel() {
            // tcp_disconnect() purges the TCP receive queue only; tcp_bpf's
            // proto takes a socket out of its maps on close, not on unhash,
            // so the socket stays in the sockmap with its psock, and the
            // psock's ingress queue is read first on the next connection.
            let first_then_second = [
                vec![FIRST_CONNECTION; DISCONNECT_BYTES],
                vec![SECOND_CONNECTION; RECONNECT_BYTES],
            ]
            .concat();
            assert!(
                redirected == first_then_second,
                "got {} bytes",
                redirected.len()
            );
            assert!(keeps, "redirected bytes were purged on {MEASURED_ON}");
        }
    }

    #[test]
    fn urgent_probe() {
        if skip_without_root() {
            return;
        }
        let plain = in_scratch_netns(|| urgent_experiment(Delivery::Tcp)).expect("control");
        assert_eq!(
            plain,
            UrgentOutcome {
                pri: true,
                oob: Ok(URGENT),
                in_band: IN_BAND.to_vec()
            },
            "plain TCP urgent data"
        );
        let redirected =
            in_scratch_netns(|| urgent_experiment(Delivery::Redirected)).expect("redirected");
        let inlined = urgent_inlined().expect("urgent probe");
        if on_measured_kernel() {
            // recv(MSG_OOB) takes the first in-band byte; the urgent byte
            // comes last, in band.
            let expected = UrgentOutcome {
                pri: false,
                oob: Ok(IN_BAND[0]),
                in_band: [&IN_BAND[1..], &[URGENT]].concat(),
            };
            assert_eq!(
                redirected, expected,
                "redirected urgent data on {MEASURED_ON}"
            );
            assert!(
                inlined,
                "redirected urgent data kept its mark on {MEASURED_ON}"
            );
        }
    }

    #[test]
    fn kernel_behaviour_runs_quickly() {
        if skip_without_root() {
            return;
        }
        let start = Instant::now();
        let b = kernel_behaviour().expect("kernel behaviour");
        let took = start.elapsed();
        eprintln!(
            "kernel {}: {b:?} in {took:?}",
            crate::probe::kernel_release()
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
