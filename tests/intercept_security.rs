//! Issue 3 security: a pod that is not registered is never redirected or
//! steered; SO_ORIGINAL_DST is answered only on the registering pod's
//! sockets and only to its proxy uid/gid; one pod never reads another pod's
//! original destinations (same 4-tuple in two netns); every other
//! getsockopt passes through untouched.
mod common;
mod conformance;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::require_root_env;
use conformance::app::{self, become_thread, As, Seen};
use conformance::world::{mesh_istio, AnySidecar, Interception, SidecarKind};
use meshlane::sim::{Node, NodeOptions, SidecarMode};

const HAPROXY: SidecarKind = SidecarKind::Haproxy(SidecarMode::Tcp);

/// An unregistered pod with a sidecar listening on 15001/15006 (as if its
/// registration had not happened): nothing of it is intercepted, while a
/// registered pod on the same node is.
#[test]
fn unregistered_pod_is_never_intercepted() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let u = node.pod("u").unwrap();
    let b = node.pod("b").unwrap();
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    let sa = AnySidecar::start(&a, HAPROXY, 1337, 1337);
    let su = AnySidecar::start(&u, HAPROXY, 1337, 1337);
    let _sb = app::http_server(&b, "0.0.0.0:8080".parse().unwrap());
    let _su_app = app::http_server(&u, "0.0.0.0:8080".parse().unwrap());

    let redirected = node.counter("connects_redirected");
    let steered = node.counter("inbound_steered");
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);
    // From the unregistered pod, as root and as the proxy uid.
    for who in [
        As::default(),
        As {
            ids: Some((1337, 1337)),
            ..As::default()
        },
    ] {
        match app::probe(&u, b8080, who) {
            Seen::Served { server_peer, .. } => {
                assert_eq!(server_peer, std::net::IpAddr::V4(u.ip4), "{who:?}")
            }
            other => panic!("U -> B {who:?}: {other:?}"),
        }
    }
    // Into the unregistered pod.
    match app::probe(&b, SocketAddr::new(u.ip4.into(), 8080), As::default()) {
        Seen::Served { server_peer, .. } => {
            assert_eq!(server_peer, std::net::IpAddr::V4(b.ip4))
        }
        other => panic!("B -> U: {other:?}"),
    }
    assert_eq!((su.sessions("outbound"), su.sessions("inbound")), (0, 0));
    assert_eq!(node.counter("connects_redirected"), redirected);
    assert_eq!(node.counter("inbound_steered"), steered);

    // Positive control: the registered pod next to it is intercepted.
    match app::probe(&a, b8080, As::default()) {
        Seen::Served { .. } => {}
        other => panic!("A -> B: {other:?}"),
    }
    assert_eq!(sa.sessions("outbound"), 1);
    assert!(node.counter("connects_redirected") > redirected);
}

/// getsockopt(level, 80) as the given uid/gid on `fd`, from a fresh thread.
fn orig_dst_as(fd: i32, ids: Option<(u32, u32)>, v6: bool) -> Result<SocketAddr, i32> {
    std::thread::spawn(move || {
        if let Some((u, g)) = ids {
            become_thread(u, g);
        }
        orig_dst(fd, v6)
    })
    .join()
    .unwrap()
}

fn orig_dst(fd: i32, v6: bool) -> Result<SocketAddr, i32> {
    // SAFETY: zeroed sockaddr_storage is valid; buffer and length match.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            80,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
    // SAFETY: the kernel (or the hook) wrote a sockaddr_in.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    Ok(SocketAddr::new(
        std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into(),
        u16::from_be(sin.sin_port),
    ))
}

/// A pod-owned listener on 127.0.0.1:15001 (created by root in the pod)
/// and one accepted connection from `connect_to`, optionally from `bind`.
fn accept_one(
    pod: &meshlane::sim::Pod,
    connect_to: SocketAddr,
    bind: Option<SocketAddr>,
) -> (TcpStream, TcpStream) {
    pod.run(move || {
        let l = TcpListener::bind("127.0.0.1:15001").unwrap();
        let c = match bind {
            None => TcpStream::connect_timeout(&connect_to, Duration::from_secs(5)).unwrap(),
            Some(src) => {
                // SAFETY: plain socket calls on a fresh fd that std then owns.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    assert!(fd >= 0);
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        (&one as *const libc::c_int).cast(),
                        4,
                    );
                    let s = std::os::fd::FromRawFd::from_raw_fd(fd);
                    let s: TcpStream = s;
                    let sa = |a: SocketAddr| {
                        let SocketAddr::V4(a) = a else { unreachable!() };
                        libc::sockaddr_in {
                            sin_family: libc::AF_INET as u16,
                            sin_port: a.port().to_be(),
                            sin_addr: libc::in_addr {
                                s_addr: u32::from_ne_bytes(a.ip().octets()),
                            },
                            sin_zero: [0; 8],
                        }
                    };
                    let b = sa(src);
                    assert_eq!(
                        libc::bind(fd, (&b as *const libc::sockaddr_in).cast(), 16),
                        0,
                        "bind {src}: {}",
                        std::io::Error::last_os_error()
                    );
                    let t = sa(connect_to);
                    assert_eq!(
                        libc::connect(fd, (&t as *const libc::sockaddr_in).cast(), 16),
                        0,
                        "connect {connect_to}: {}",
                        std::io::Error::last_os_error()
                    );
                    s
                }
            }
        };
        let (acc, _) = l.accept().unwrap();
        (c, acc)
    })
    .unwrap()
}

#[test]
fn original_dst_only_for_own_proxy_and_own_pod() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    let d = node.pod("d").unwrap();
    let b = node.pod("b").unwrap();
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    mesh_istio(&node, &d, "d", Interception::Meshlane);
    let b8080 = SocketAddr::new(b.ip4.into(), 8080);

    // The app in A connects to B:8080; meshlane sends it to A's 15001.
    let (app_sock, accepted) = accept_one(&a, b8080, None);
    assert_eq!(app_sock.peer_addr().unwrap(), b8080, "getpeername restored");
    let app_local = app_sock.local_addr().unwrap();
    let fd = accepted.as_raw_fd();
    let answered = node.counter("original_dst_answered");

    // Not the proxy: the kernel's own answer (no conntrack entry), untouched.
    let root = orig_dst_as(fd, None, false);
    assert!(root.is_err(), "root got an original destination: {root:?}");
    let other_uid = orig_dst_as(fd, Some((1000, 1000)), false);
    assert!(other_uid.is_err(), "uid 1000 got {other_uid:?}");
    assert_eq!(node.counter("original_dst_answered"), answered);
    // The proxy uid, or only its gid: answered.
    assert_eq!(orig_dst_as(fd, Some((1337, 1337)), false), Ok(b8080));
    assert_eq!(orig_dst_as(fd, Some((0, 1337)), false), Ok(b8080));
    assert_eq!(node.counter("original_dst_answered"), answered + 2);

    // Pod D builds a connection with the very same 4-tuple inside its own
    // netns; its proxy must not get A's original destination.
    let (_d_app, d_accepted) = accept_one(&d, "127.0.0.1:15001".parse().unwrap(), Some(app_local));
    assert_eq!(
        d_accepted.peer_addr().unwrap(),
        accepted.peer_addr().unwrap(),
        "not the same tuple"
    );
    let leaked = orig_dst_as(d_accepted.as_raw_fd(), Some((1337, 1337)), false);
    assert!(
        leaked.is_err(),
        "pod D read pod A's original destination: {leaked:?}"
    );
    // A's entry is still there (the refusal was not for lack of it).
    assert_eq!(orig_dst_as(fd, Some((1337, 1337)), false), Ok(b8080));

    // A socket of the pod that was never redirected: the proxy asks, the
    // kernel's error stays.
    let (_c, plain) = accept_one(&a, "127.0.0.1:15001".parse().unwrap(), None);
    assert!(orig_dst_as(plain.as_raw_fd(), Some((1337, 1337)), false).is_err());
    drop(app_sock);
}

/// Other getsockopt calls on meshed sockets: value and optlen as the
/// kernel gives them, including buffers larger than a page.
#[test]
fn other_getsockopt_calls_pass_through() {
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).unwrap();
    let a = node.pod("a").unwrap();
    mesh_istio(&node, &a, "a", Interception::Meshlane);
    let b = node.pod("b").unwrap();
    let (app_sock, accepted) = accept_one(&a, SocketAddr::new(b.ip4.into(), 8080), None);
    for fd in [app_sock.as_raw_fd(), accepted.as_raw_fd()] {
        let lens: Vec<(i32, libc::socklen_t)> = std::thread::spawn(move || {
            become_thread(1337, 1337);
            let mut out = Vec::new();
            for (level, opt, buf) in [
                (libc::SOL_SOCKET, libc::SO_TYPE, 4usize),
                (libc::SOL_SOCKET, libc::SO_TYPE, 64),
                (libc::IPPROTO_TCP, libc::TCP_INFO, 8192),
                (libc::IPPROTO_TCP, libc::TCP_INFO, 16),
                (libc::SOL_IP, libc::IP_TOS, 4),
            ] {
                let mut v = vec![0u8; buf];
                let mut len = buf as libc::socklen_t;
                // SAFETY: buffer of `len` bytes.
                let rc =
                    unsafe { libc::getsockopt(fd, level, opt, v.as_mut_ptr().cast(), &mut len) };
                assert_eq!(rc, 0, "getsockopt({level}, {opt})");
                if opt == libc::SO_TYPE {
                    assert_eq!(
                        i32::from_ne_bytes(v[..4].try_into().unwrap()),
                        libc::SOCK_STREAM
                    );
                }
                out.push((opt, len));
            }
            out
        })
        .join()
        .unwrap();
        let tcp_info = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        assert_eq!(lens[0], (libc::SO_TYPE, 4));
        assert_eq!(lens[1], (libc::SO_TYPE, 4));
        assert!(
            lens[2].1 >= tcp_info && lens[2].1 < 8192,
            "TCP_INFO len {}",
            lens[2].1
        );
        assert_eq!(lens[3], (libc::TCP_INFO, 16));
        assert_eq!(lens[4], (libc::IP_TOS, 4));
    }
}
