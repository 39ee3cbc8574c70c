//! Issue 8: a socket in a meshed pod behaves exactly like TCP, through
//! every API. Overlapping retransmissions are injected (TCP_REPAIR + raw
//! segments, `meshlane::overlap`) into spliced, throttled, never-paired
//! sockets and into sockets whose peer is off the pod, in accelerate and
//! intercept pods, with each --verdict-remedy setting; splice(2) through a
//! sidecar and between two apps, connect(AF_UNSPEC) + reconnect and
//! MSG_OOB behave as without meshlane.
mod common;
mod conformance;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use common::*;
use conformance::world::{mesh_istio, AnySidecar, Interception, SidecarKind};
use meshlane::loader::VerdictRemedy;
use meshlane::overlap::{inject, OverlapKind};
use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::{Node, NodeOptions, Pod, SidecarMode};

const HAPROXY: SidecarKind = SidecarKind::Haproxy(SidecarMode::Tcp);
/// Bytes sent normally before an injection.
const BEFORE: usize = 64 * 1024;

/// Each crafted segment fits the pod links' 1500-byte MTU.
const KINDS: [OverlapKind; 3] = [
    OverlapKind::Prefix { old: 724, new: 724 },
    OverlapKind::OutOfOrder { old: 512, new: 724 },
    OverlapKind::WhollyOld { old: 1448 },
];

/// The stream's bytes [offset, offset + len).
fn stream(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    meshlane::sim::pattern::Pattern::new(seed).fill(offset, &mut b);
    b
}

/// Crafted segments carry no timestamp option: connections they are
/// injected into must not negotiate timestamps.
fn no_timestamps(pod: &Pod) {
    pod.exec(&["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
        .expect("sysctl in the pod");
}

/// A pod whose sockets made by this test process count as its proxy's
/// (proxy uid = ours), so they are spliced.
fn register(node: &Node, pod: &Pod, name: &str, mode: PodMode) {
    let mut spec = PodSpec::istio(name);
    spec.mode = mode;
    meshlane::sim::as_own_proxy(&mut spec);
    node.register(pod, &spec).expect("registering a pod");
}

/// Reads exactly `want` bytes within the limit, then checks that nothing
/// more arrives for a while: duplicated bytes would.
fn read_exactly(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let deadline = Instant::now() + LIMIT;
    let mut got = vec![0u8; want];
    let mut off = 0;
    while off < want {
        match read_some(s, &mut got[off..], deadline) {
            Ok(0) => panic!("EOF after {off} of {want} bytes"),
            Ok(n) => off += n,
            Err(e) => panic!("read after {off} of {want} bytes: {e}"),
        }
    }
    s.set_nonblocking(true).expect("nonblocking");
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = [0u8; 65536];
    match s.read(&mut extra) {
        Ok(0) => {} // EOF: the peer closed, nothing more
        Ok(n) => panic!(
            "{n} bytes more than were sent (first {:02x?})",
            &extra[..n.min(16)]
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    s.set_nonblocking(false).expect("blocking");
    got
}

/// Where the two ends of the connection under test live.
#[derive(Debug, Clone, Copy)]
enum Sockets {
    /// Both ends in a registered pod over loopback: spliced.
    Spliced,
    /// As above, but the direction was handed to TCP by backpressure.
    Throttled,
    /// Registered pod -> unmeshed pod: never paired (peer off the pod).
    OffPod,
}

struct Bed {
    node: Node,
    a: Pod,
    c: Pod,
}

impl Bed {
    fn new(mode: PodMode, remedy: VerdictRemedy, queue_limit: u32) -> Self {
        require_root_env();
        let mut node = Node::new(NodeOptions {
            verdict_remedy: remedy,
            splice_queue_limit: queue_limit,
            ..NodeOptions::default()
        })
        .expect("node");
        let a = node.pod("a").expect("pod a");
        let c = node.pod("c").expect("unmeshed pod c");
        no_timestamps(&a);
        no_timestamps(&c);
        register(&node, &a, "a", mode);
        Self { node, a, c }
    }

    /// (sender, receiver, netns of the sender) for one kind of socket.
    fn pair(&self, which: Sockets) -> (TcpStream, TcpStream, &Pod) {
        let (server_pod, to) = match which {
            Sockets::Spliced | Sockets::Throttled => {
                (&self.a, SocketAddr::from(([127, 0, 0, 1], 0)))
            }
            Sockets::OffPod => (&self.c, SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        let (bound, accepted) = serve_one(server_pod, to, |s| s);
        let dial = match which {
            Sockets::OffPod => SocketAddr::new(self.c.ip4.into(), bound.port()),
            _ => bound,
        };
        let client = connect_from(&self.a, dial);
        let server = accepted.join().expect("server thread");
        match which {
            // The receiver is the registered pod's socket.
            Sockets::OffPod => (server, client, &self.c),
            _ => (client, server, &self.a),
        }
    }
}

/// Sends BEFORE bytes, injects `kind`, and checks the reader's stream.
fn injected_stream_is_exact(bed: &Bed, which: Sockets, kind: OverlapKind) {
    let (mut tx, mut rx, tx_pod) = bed.pair(which);
    let spliced_before = bed.node.counter("bytes_spliced");
    let data = stream(7, 0, BEFORE);
    if matches!(which, Sockets::Throttled) {
        // Two writes before any read: the second finds the reader behind
        // the (tiny) queue limit and goes through TCP.
        tx.write_all(&data[..BEFORE / 2]).expect("write");
        std::thread::sleep(Duration::from_millis(50));
        tx.write_all(&data[BEFORE / 2..]).expect("write");
    } else {
        tx.write_all(&data).expect("write");
    }
    assert_eq!(read_exactly(&mut rx, BEFORE), data, "{which:?}: before");
    let spliced = bed.node.counter("bytes_spliced") - spliced_before;
    match which {
        Sockets::Spliced => assert!(spliced >= BEFORE as u64 / 2, "not spliced: {spliced}"),
        Sockets::Throttled => assert!(bed.node.counter("splice_throttled") > 0, "never throttled"),
        Sockets::OffPod => assert_eq!(spliced, 0, "spliced to an unmeshed pod"),
    }
    // Everything acknowledged before the sequence numbers are read.
    std::thread::sleep(Duration::from_millis(100));
    let fresh = stream(7, BEFORE as u64, kind.new_bytes());
    let fresh_in = fresh.clone();
    let tx = tx_pod
        .run(move || inject(&tx, kind, &fresh_in).map(|()| tx))
        .expect("entering the sender's pod")
        .unwrap_or_else(|e| panic!("{which:?} {kind:?}: injecting: {e}"));
    let got = read_exactly(&mut rx, fresh.len());
    assert!(
        got == fresh,
        "{which:?} {kind:?}: the reader got other bytes than the new ones"
    );
    drop((tx, rx));
}

fn overlap_matrix(mode: PodMode, remedy: VerdictRemedy) {
    if remedy == VerdictRemedy::On && skip_if_verdict_on_refused() {
        return;
    }
    for which in [Sockets::Spliced, Sockets::OffPod] {
        let bed = Bed::new(mode, remedy, meshlane::loader::default_splice_queue_limit());
        for kind in KINDS {
            injected_stream_is_exact(&bed, which, kind);
        }
    }
    // Throttled sockets exist only where the psock counts its queue.
    if meshlane::probe::kernel_counts_psock_queue() {
        let bed = Bed::new(mode, remedy, 4096);
        for kind in KINDS {
            injected_stream_is_exact(&bed, Sockets::Throttled, kind);
        }
    }
}

#[test]
fn overlaps_accelerate_default() {
    overlap_matrix(PodMode::Accelerate, VerdictRemedy::Auto);
}

#[test]
fn overlaps_accelerate_verdict_on() {
    overlap_matrix(PodMode::Accelerate, VerdictRemedy::On);
}

#[test]
fn overlaps_accelerate_verdict_off() {
    overlap_matrix(PodMode::Accelerate, VerdictRemedy::Off);
}

#[test]
fn overlaps_intercept_default() {
    overlap_matrix(PodMode::Intercept, VerdictRemedy::Auto);
}

#[test]
fn overlaps_intercept_verdict_on() {
    overlap_matrix(PodMode::Intercept, VerdictRemedy::On);
}

#[test]
fn overlaps_intercept_verdict_off() {
    overlap_matrix(PodMode::Intercept, VerdictRemedy::Off);
}

/// Reads `want` bytes from `s` with splice(2) through a pipe, as Go's
/// TCPConn.WriteTo and HAProxy's splice options do.
fn splice_read(s: &TcpStream, want: usize) -> Vec<u8> {
    let (pr, pw) = nix::unistd::pipe().expect("pipe");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 65536];
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "splice(2) got {} of {want} bytes",
            got.len()
        );
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 200) };
        // SAFETY: fds we own; null offsets for sockets and pipes.
        let n = unsafe {
            libc::splice(
                s.as_raw_fd(),
                std::ptr::null_mut(),
                pw.as_raw_fd(),
                std::ptr::null_mut(),
                65536,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n == 0 {
            panic!("EOF after {} of {want} bytes", got.len());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "splice: {e}");
            continue;
        }
        let m = nix::unistd::read(pr.as_fd(), &mut buf[..n as usize]).expect("pipe read");
        got.extend_from_slice(&buf[..m]);
    }
    got
}

/// An app reads its peer's bytes with splice(2) through both sidecars
/// (intercept mode, HAProxy, same node): exactly what was sent.
#[test]
fn splice_syscall_through_sidecars() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    mesh_istio(&node, &b, "b", Interception::Meshlane);
    let _sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let _sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    const LEN: usize = 4 * MIB;
    let data = stream(3, 0, LEN);
    let sent = data.clone();
    let (bound, server) = serve_one(&b, "0.0.0.0:8080".parse().unwrap(), move |mut s| {
        // The server reads the request with splice(2) too.
        let req = splice_read(&s, 5);
        s.write_all(&sent).expect("write");
        req
    });
    let mut c = connect_from(&a, SocketAddr::new(b.ip4.into(), bound.port()));
    c.write_all(b"hello").expect("request");
    let got = splice_read(&c, LEN);
    assert_eq!(server.join().expect("server"), b"hello");
    assert!(got == data, "splice(2) read other bytes");
    assert!(
        node.counter("connects_redirected") >= 1 && node.counter("inbound_steered") >= 1,
        "the connection did not pass the sidecars"
    );
}

/// Two apps of one pod over loopback, both reading with splice(2).
#[test]
fn splice_syscall_app_to_app_loopback() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    node.register(&a, &PodSpec::istio("a")).expect("register");
    let data = stream(5, 0, MIB);
    let sent = data.clone();
    let (bound, server) = serve_one(&a, "127.0.0.1:0".parse().unwrap(), move |mut s| {
        let req = splice_read(&s, 3);
        s.write_all(&sent).expect("write");
        req
    });
    let mut c = connect_from(&a, bound);
    c.write_all(b"get").expect("request");
    assert!(splice_read(&c, MIB) == data, "splice(2) read other bytes");
    assert_eq!(server.join().expect("server"), b"get");
}

/// connect(AF_UNSPEC) on a socket with unread bytes, then a connect
/// elsewhere: the new connection reads only its own bytes, as in TCP.
fn reconnect_reads_only_new_bytes(spliced: bool) {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    if spliced {
        register(&node, &a, "a", PodMode::Intercept);
    } else {
        node.register(&a, &PodSpec::istio("a")).expect("register");
    }
    let (first, old) = serve_one(&a, "127.0.0.1:0".parse().unwrap(), |mut s| {
        s.write_all(b"stale bytes of the first connection")
            .expect("write");
        std::thread::sleep(Duration::from_millis(500));
    });
    let (second, new) = serve_one(&a, "127.0.0.1:0".parse().unwrap(), |mut s| {
        s.write_all(b"fresh").expect("write");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let spliced_before = node.counter("bytes_spliced");
    let mut c = connect_from(&a, first);
    std::thread::sleep(Duration::from_millis(200));
    if spliced {
        assert!(
            node.counter("bytes_spliced") > spliced_before,
            "the first connection was not spliced"
        );
    }
    // SAFETY: an AF_UNSPEC sockaddr disconnects the socket.
    let rc = unsafe {
        let sa = libc::sockaddr {
            sa_family: libc::AF_UNSPEC as u16,
            sa_data: [0; 14],
        };
        libc::connect(
            c.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    old.join().expect("first server");
    let fd = c.as_raw_fd();
    a.run(move || {
        let sa = nix::sys::socket::SockaddrIn::from(match second {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => unreachable!("IPv4 listener"),
        });
        nix::sys::socket::connect(fd, &sa)
    })
    .expect("entering the pod")
    .expect("second connect");
    let got = read_exactly(&mut c, 5);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "fresh",
        "the second connection read other bytes"
    );
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    new.join().expect("second server");
}

#[test]
fn reconnect_after_disconnect_app_socket() {
    reconnect_reads_only_new_bytes(false);
}

#[test]
fn reconnect_after_disconnect_spliced_socket() {
    reconnect_reads_only_new_bytes(true);
}

/// send(MSG_OOB) from an app in a meshed pod: the urgent byte arrives as
/// urgent data, the rest in band, as in TCP.
#[test]
fn urgent_data_stays_urgent() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    node.register(&a, &PodSpec::istio("a")).expect("register");
    let (bound, server) = serve_one(&a, "127.0.0.1:0".parse().unwrap(), |s| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let fd = s.as_raw_fd();
        let mut inband = Vec::new();
        let mut urgent = None;
        while Instant::now() < deadline && (urgent.is_none() || inband.len() < 4) {
            let mut b = [0u8; 1];
            // SAFETY: one-byte buffer we own.
            let n = unsafe {
                libc::recv(
                    fd,
                    b.as_mut_ptr().cast(),
                    1,
                    libc::MSG_OOB | libc::MSG_DONTWAIT,
                )
            };
            if n == 1 {
                urgent = Some(b[0]);
            }
            let mut buf = [0u8; 64];
            // SAFETY: buffer we own.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                inband.extend_from_slice(&buf[..n as usize]);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (inband, urgent)
    });
    let c = connect_from(&a, bound);
    // SAFETY: buffers we own.
    unsafe {
        assert_eq!(libc::send(c.as_raw_fd(), b"ab".as_ptr().cast(), 2, 0), 2);
        assert_eq!(
            libc::send(c.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB),
            1
        );
        assert_eq!(libc::send(c.as_raw_fd(), b"cd".as_ptr().cast(), 2, 0), 2);
    }
    let (inband, urgent) = server.join().expect("server");
    assert_eq!(
        urgent,
        Some(b'!'),
        "the urgent byte did not arrive as urgent"
    );
    assert_eq!(inband, b"abcd", "in-band bytes");
}

/// The data path's own scope: an app<->sidecar connection is not spliced,
/// a sidecar<->sidecar connection is.
#[test]
fn only_proxy_sockets_are_spliced() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    mesh_istio(&node, &b, "b", Interception::Meshlane);
    let _sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let _sb = AnySidecar::start(&b, HAPROXY, 1337, 1337);
    let _srv = echo_server(&b, "0.0.0.0:8080".parse().unwrap());
    let before = node.counter("bytes_spliced");
    let data = stream(9, 0, MIB);
    let got = echo_from(
        &a,
        SocketAddr::new(b.ip4.into(), 8080),
        data.clone(),
        64 * 1024,
    );
    assert!(got == data, "echo not byte-exact");
    let spliced = node.counter("bytes_spliced") - before;
    // Sidecar A -> sidecar B and back: twice the payload; the app hops
    // (app -> sidecar A, sidecar B -> app) take loopback TCP.
    assert!(
        spliced >= 2 * MIB as u64 && spliced < 3 * MIB as u64,
        "spliced {spliced} bytes for a {MIB}-byte echo: {:?}",
        meshlane::status::read_counters(&node.layout)
    );
    assert!(node.counter("sockets_not_spliced") >= 2);
}
