//! An Envoy-like TCP sidecar for the IPv6 runs. HAProxy 2.6 asks
//! SO_ORIGINAL_DST only on AF_INET sockets and never IP6T_SO_ORIGINAL_DST,
//! so after an ip6tables REDIRECT (the reference run) it forwards to itself;
//! Envoy asks IP6T_SO_ORIGINAL_DST. This proxy does what Envoy's
//! original-destination listeners do: outbound (15001) and inbound (15006)
//! listeners per family, the original destination from the getsockopt
//! matching the socket's family, inbound connections to the app from
//! 127.0.0.6 / ::6, running as the proxy uid/gid. Counts sessions per
//! listener like HAProxy's frontend counters.

use std::io::{ErrorKind, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use meshlane::sim::Pod;

use super::app::become_thread;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

pub struct NativeSidecar {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    outbound: Arc<AtomicU64>,
    inbound: Arc<AtomicU64>,
}

impl Drop for NativeSidecar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl NativeSidecar {
    /// Sessions accepted by "outbound" or "inbound".
    pub fn sessions(&self, frontend: &str) -> u64 {
        match frontend {
            "outbound" => self.outbound.load(Ordering::SeqCst),
            "inbound" => self.inbound.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// Starts the four listeners in `pod` as `uid`/`gid` on Istio's ports.
    pub fn start(pod: &Pod, uid: u32, gid: u32) -> Self {
        Self::start_on(pod, uid, gid, 15001, 15006)
    }

    /// Starts the listeners on `outbound_port` and `inbound_port`.
    pub fn start_on(pod: &Pod, uid: u32, gid: u32, outbound_port: u16, inbound_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outbound = Arc::new(AtomicU64::new(0));
        let inbound = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        for (port, is_inbound) in [(outbound_port, false), (inbound_port, true)] {
            for v6 in [false, true] {
                let (stop, tx) = (stop.clone(), tx.clone());
                let count = if is_inbound {
                    inbound.clone()
                } else {
                    outbound.clone()
                };
                threads.push(
                    pod.thread(move || {
                        become_thread(uid, gid);
                        let l = match listen(port, v6) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = tx.send(Err(format!("listen {port} v6={v6}: {e}")));
                                return;
                            }
                        };
                        let _ = tx.send(Ok(()));
                        while !stop.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((s, _)) => {
                                    count.fetch_add(1, Ordering::SeqCst);
                                    // The thread inherits this one's uid/gid.
                                    std::thread::spawn(move || serve(s, v6, is_inbound));
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(2)),
                            }
                        }
                    })
                    .expect("sidecar thread"),
                );
            }
        }
        for _ in 0..4 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("native sidecar in {}: {e}", pod.name),
                Err(e) => panic!("native sidecar in {} did not start: {e}", pod.name),
            }
        }
        Self {
            stop,
            threads,
            outbound,
            inbound,
        }
    }
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A non-blocking listener on the wildcard address; IPv6 ones are v6only.
fn listen(port: u16, v6: bool) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = if v6 {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
    } else {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    };
    let fd = socket_for(&addr)?;
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option buffers.
    unsafe {
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            sz,
        ))?;
        if v6 {
            check(libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                sz,
            ))?;
        }
    }
    bind(&fd, &addr)?;
    // SAFETY: valid fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    let l = TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

fn socket_for(addr: &SocketAddr) -> std::io::Result<std::os::fd::OwnedFd> {
    let fam = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = check(unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by the kernel.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn bind(fd: &std::os::fd::OwnedFd, addr: &SocketAddr) -> std::io::Result<()> {
    let (ss, len) = raw_addr(addr);
    // SAFETY: valid fd and address buffer of `len` bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(())
}

/// The original destination as Envoy asks for it.
fn original_dst(s: &TcpStream, v6: bool) -> std::io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let (level, opt) = if v6 {
        (libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, SO_ORIGINAL_DST)
    };
    // SAFETY: valid fd, buffer and length.
    check(unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in.
            let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6.
            let sin6 = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            )))
        }
        f => Err(std::io::Error::other(format!(
            "original destination of family {f}"
        ))),
    }
}

/// Connects to `to`, from 127.0.0.6 / ::6 when `inbound`.
fn upstream(to: SocketAddr, inbound: bool) -> std::io::Result<TcpStream> {
    if !inbound {
        return TcpStream::connect_timeout(&to, Duration::from_secs(5));
    }
    let src: SocketAddr = if to.is_ipv6() {
        "[::6]:0".parse().unwrap()
    } else {
        "127.0.0.6:0".parse().unwrap()
    };
    let fd = socket_for(&to)?;
    bind(&fd, &src)?;
    let (ss, len) = raw_addr(&to);
    // SAFETY: valid fd and address buffer.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(TcpStream::from(fd))
}

/// Copies until EOF, treating a spurious EAGAIN (sockhash sockets) as
/// "read again", then half-closes the destination.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(client: TcpStream, v6: bool, inbound: bool) {
    let _ = client.set_nonblocking(false);
    let Ok(orig) = original_dst(&client, v6) else {
        return; // like Envoy: no original destination, no connection
    };
    let Ok(up) = upstream(orig, inbound) else {
        return;
    };
    let (Ok(c2), Ok(u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || pump(c2, u2));
    pump(up, client);
    let _ = t.join();
}
